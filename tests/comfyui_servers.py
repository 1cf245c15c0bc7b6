"""Real ComfyUI servers for the tests: ComfyUI from $COMFYUI_PATH (run by $COMFYUI_PYTHON) with our package in
custom_nodes and tiny checkpoints in models/dalle, each in a base directory of its own.

The tiny checkpoints sit where the loaders download the real repos to, so the shipped workflows run unchanged
with HF_HUB_OFFLINE=1, and a random picture sits in the input folder under each name their Load Image nodes ask
for. Everything ComfyUI writes goes to the temp base directory, never into the checkout.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pytest
from PIL import Image

import tiny_karlo
import tiny_repos
import tiny_translation
import tiny_upscalers
from dalle_nodes.client.comfy_client import ComfyClient, OutputFile, ServerError
from dalle_nodes.pipelines import depth, kandinsky22, karlo
from dalle_nodes.pipelines.rerank import CLIP_REPO
from dalle_nodes.pipelines.translation import TRANSLATION_REPO
from dalle_nodes.pipelines.upscale import PRESETS

ROOT = Path(__file__).resolve().parents[1]
INPUT_SIZE = (160, 120)  # width, height of the input pictures: neither the workflows' size nor its aspect ratio
HOLE = (50, 30, 110, 90)  # the input pictures' transparent rectangle (left, top, right, bottom), inside any crop
# Generous for two busy cores: importing torch and ComfyUI cold, right after CI's installs, takes 30 s or more.
STARTUP_TIMEOUT_S = 300
PROMPT_TIMEOUT_S = 300  # the tiny prompts take about a second; the margin is for a loaded machine


@dataclass
class ComfyUI:
    url: str
    base: Path
    log: Path
    process: subprocess.Popen

    @cached_property
    def client(self) -> ComfyClient:
        return ComfyClient(self.url)

    def request(self, path: str, payload: dict | None = None) -> tuple[int, bytes]:
        """GET (or POST JSON) one endpoint; HTTP errors come back as (status, body) like successes."""
        return self.client.request(path, payload)

    def get_json(self, path: str) -> dict:
        return self.client.get_json(path)

    def queue(self, graph: dict) -> tuple[int, dict]:
        status, body = self.request("/prompt", {"prompt": graph, "client_id": self.client.client_id})
        return status, json.loads(body)

    def run(self, graph: dict, timeout_s: float = PROMPT_TIMEOUT_S) -> dict:
        """Queue a prompt and wait for its /history entry (written once it has finished, well or not)."""
        status, answer = self.queue(graph)
        assert status == 200, f"POST /prompt refused the graph: {answer}"
        return self.finished(answer["prompt_id"], timeout_s)

    def finished(self, prompt_id: str, timeout_s: float = PROMPT_TIMEOUT_S) -> dict:
        """The prompt's /history entry, once ComfyUI has written it (after the prompt ended, well or not)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            history = self.get_json(f"/history/{prompt_id}")
            if prompt_id in history:
                return history[prompt_id]
            assert self.process.poll() is None, "the ComfyUI server exited while running the prompt"
            time.sleep(0.2)  # polling: /history has no way to wait
        raise AssertionError(f"prompt {prompt_id} did not finish in {timeout_s} s")

    def view(self, image: dict) -> bytes:
        """The file behind one entry of a SaveImage node's history output, as the frontend fetches it."""
        return self.client.view(OutputFile("", image["filename"], image["subfolder"], image["type"]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _optional_flags(checkout: Path) -> list[str]:
    """Flags only newer checkouts know (older ones reject unknown flags): keep the database out of the checkout
    and skip the cloud API nodes, which we do not need."""
    cli = (checkout / "comfy" / "cli_args.py").read_text()
    flags = [["--database-url", "sqlite:///:memory:"], ["--disable-api-nodes"]]
    return [part for flag in flags if f'"{flag[0]}"' in cli for part in flag]


def input_image_names() -> set[str]:
    """The files the shipped API workflows' Load Image nodes read from ComfyUI's input folder."""
    return {
        node["inputs"]["image"]
        for path in sorted((ROOT / "workflows" / "api").glob("*.api.json"))
        for node in json.loads(path.read_text(encoding="utf-8")).values()
        if node["class_type"] == "LoadImage"
    }


def _write_input_images(folder: Path) -> None:
    """Random pictures with a transparent rectangle: Load Image's MASK, which the inpainting workflows repaint (IMAGE
    keeps the colours under it)."""
    folder.mkdir(parents=True, exist_ok=True)
    noise = random.Random(0).randbytes(INPUT_SIZE[0] * INPUT_SIZE[1] * 3)
    picture = Image.frombytes("RGB", INPUT_SIZE, noise)
    alpha = Image.new("L", INPUT_SIZE, 255)
    alpha.paste(0, HOLE)
    picture.putalpha(alpha)
    for name in input_image_names():
        picture.save(folder / name)


def wait_until_serving(server: ComfyUI) -> None:
    """ComfyUI loads the custom nodes before it listens: once /system_stats answers, our nodes are in."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        try:
            if server.request("/system_stats")[0] == 200:
                return
        except ServerError:  # not listening yet
            pass
        time.sleep(0.5)  # polling: nothing tells us when it starts listening
    log = server.log.read_text(errors="replace")[-20000:]
    pytest.fail(f"ComfyUI did not start within {STARTUP_TIMEOUT_S} s (exit code {server.process.poll()}). Log:\n{log}")


def _checkout() -> Path:
    """$COMFYUI_PATH, which must be a ComfyUI checkout, and $COMFYUI_PYTHON, which must run: otherwise fail (a
    wrong path set on purpose is an error, not a reason to skip)."""
    checkout = Path(os.environ["COMFYUI_PATH"]).expanduser().resolve()
    if not (checkout / "main.py").is_file():
        pytest.fail(f"COMFYUI_PATH={os.environ['COMFYUI_PATH']} is not a ComfyUI checkout (no main.py there).")
    python = os.environ.get("COMFYUI_PYTHON")
    if python and not shutil.which(python):
        pytest.fail(f"COMFYUI_PYTHON={python} is not an executable Python.")
    return checkout


def prepare_base(base: Path) -> None:
    """A base directory with this pack in custom_nodes, the tiny checkpoints where the loaders look, and the input
    pictures the shipped workflows load."""
    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    (base / "custom_nodes" / "dalle-nodes").symlink_to(ROOT, target_is_directory=True)
    store = base / "models" / "dalle"  # nodes/runtime.py model_store(): <ComfyUI models dir>/dalle
    tiny_repos.write_prior_repo(store / "kandinsky-community--kandinsky-2-2-prior")
    tiny_repos.write_decoder_repo(store / kandinsky22.DECODER_REPO.replace("/", "--"))
    tiny_repos.write_inpaint_repo(store / kandinsky22.INPAINT_REPO.replace("/", "--"))
    tiny_repos.write_controlnet_repo(store / kandinsky22.CONTROLNET_REPO.replace("/", "--"))
    tiny_repos.write_depth_repo(store / depth.DEPTH_REPO.replace("/", "--"))  # DALL·E Depth Map's default model
    mega = tiny_repos.write_min_dalle_repo(store / "kuprel--min-dalle", "mega", tiny_repos.TINY_MIN_DALLE)
    (mega / "hyperparameters.json").write_text(json.dumps({"mega": tiny_repos.TINY_MIN_DALLE}))  # the toy size
    tiny_repos.write_clip_repo(store / CLIP_REPO.replace("/", "--"))  # the best-of workflow's reranker
    tiny_karlo.write_karlo_repo(store / karlo.REPO.replace("/", "--"))
    tiny_karlo.write_variations_repo(store / karlo.VARIATIONS_REPO.replace("/", "--"))
    tiny_translation.write_translation_repo(store / TRANSLATION_REPO.replace("/", "--"))  # the *_zh workflows'
    preset = PRESETS["RealESRGAN_x4plus"]  # the shipped upscaled workflow's model, as a tiny file in its place
    tiny_upscalers.write_upscaler(
        store / preset.repo.replace("/", "--") / preset.filename, tiny_upscalers.rrdbnet_state()
    )
    # for ComfyUI's own Load Upscale Model, which lists models/upscale_models
    tiny_upscalers.write_upscaler(base / "models" / "upscale_models" / "tiny_x2.pth", tiny_upscalers.rrdbnet_state(2))
    _write_input_images(base / "input")


@contextlib.contextmanager
def start_comfyui(base: Path, extra_env: dict[str, str] | None = None, port: int | None = None) -> Iterator[ComfyUI]:
    """A ComfyUI server serving, with `base` as its base directory, stopped on exit (see launch)."""
    server = launch(base, extra_env, port)
    try:
        wait_until_serving(server)
        yield server
    finally:
        stop(server.process)


def launch(base: Path, extra_env: dict[str, str] | None = None, port: int | None = None) -> ComfyUI:
    """Start a ComfyUI server with `base` as its base directory (prepared first unless it was), on `port` or a free
    one; it serves once wait_until_serving returns. `extra_env` adds environment variables (e.g. the API key)."""
    checkout = _checkout()
    if not (base / "custom_nodes" / "dalle-nodes").exists():
        prepare_base(base)
    port = port or free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(base / "hf-home"),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",  # every line in the log file as it is written: tests read it
        **(extra_env or {}),
    }
    command = [
        os.environ.get("COMFYUI_PYTHON", sys.executable),
        "main.py",
        "--cpu",
        "--listen",
        "127.0.0.1",
        "--port",
        str(port),
        "--base-directory",
        str(base),
        "--disable-auto-launch",
        *_optional_flags(checkout),
    ]
    log = base / "server.log"
    with log.open("ab") as out:  # a restarted server adds to its log
        process = subprocess.Popen(command, cwd=checkout, env=env, stdout=out, stderr=subprocess.STDOUT)
    return ComfyUI(f"http://127.0.0.1:{port}", base, log, process)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if the server has not stopped within 15 s (it drains the API's jobs first)."""
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
