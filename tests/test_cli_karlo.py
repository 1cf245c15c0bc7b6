"""`python -m dalle_nodes generate --model karlo` on tiny local checkpoints: the Python API's images, ranked and
upscaled as for the other families, and bad input refused in one line before any model loads."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from dalle_nodes.cli import main
from dalle_nodes.engine.images import from_pil
from dalle_nodes.pipelines import Karlo
from dalle_nodes.pipelines.rerank import Ranker
from dalle_nodes.pipelines.upscale import PRESETS
from tiny_upscalers import rrdbnet_state, write_upscaler

STEPS = ["--prior-steps", "3", "--decoder-steps", "4", "--super-res-steps", "3"]


def run_cli(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "dalle_nodes", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_generate_karlo_best_of_upscaled_equals_the_python_api(tiny_karlo_repo, tiny_clip_repo, tmp_path, capsys):
    preset = PRESETS["RealESRGAN_x4plus"]
    write_upscaler(
        Path(os.environ["DALLE_NODES_HOME"]) / preset.repo.replace("/", "--") / preset.filename, rrdbnet_state(4)
    )
    shutil.copytree(tiny_clip_repo, Path(os.environ["DALLE_NODES_HOME"]) / "openai--clip-vit-base-patch32")
    out = tmp_path / "fox.png"
    args = ["generate", "a red fox", "-o", str(out), "--model", "karlo", "--karlo-repo", str(tiny_karlo_repo)]
    extra = [
        "--seed",
        "4",
        "--best-of",
        "2",
        "--upscale",
        "RealESRGAN_x4plus",
        "--dtype",
        "fp32",
        "--decoder-guidance",
        "5",
    ]
    assert main([*args, *STEPS, *extra]) == 0
    path, score = capsys.readouterr().out.strip().split("\t")
    assert path == str(out) and float(score)

    karlo = Karlo.load(str(tiny_karlo_repo), dtype="fp32", device="cpu")
    ranker = Ranker.load(str(tiny_clip_repo), dtype="fp32", device="cpu")
    settings = dict(seed=4, best_of=2, prior_steps=3, decoder_steps=4, super_res_steps=3, decoder_guidance=5.0)
    (expected,) = karlo.generate("a red fox", ranker, upscale="RealESRGAN_x4plus", **settings)
    with Image.open(out) as written:
        assert written.size == (1024, 1024)
        assert torch.equal(from_pil(written), from_pil(expected))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--decoder-guidance", "nan"], "error: decoder_guidance must be between 0.0 and 100.0 (got nan)"),
        (["--super-res-steps", "1"], "error: super_res_steps must be between 2 and 1000 (got 1)"),
        (["--image", "in.png"], "error: --image, --mask and --outpaint need --model kandinsky22: Karlo cannot edit."),
        (["--negative", "blurry"], "error: --negative needs --model kandinsky22"),
    ],
)
def test_generate_karlo_refuses_bad_settings_before_loading(tmp_path, extra, message) -> None:
    missing = str(tmp_path / "missing")  # never reached: the settings are checked first
    result = run_cli("generate", "a cat", "--model", "karlo", "--karlo-repo", missing, *extra, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(message)


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--width", "512"],
            "error: --width is for --model kandinsky22, and Karlo would ignore it: Karlo draws 256x256",
        ),
        (["--height", "768"], "error: --height is for --model kandinsky22, and Karlo would ignore it: Karlo draws"),
        (
            ["--steps", "50"],
            "error: --steps is for --model kandinsky22, and Karlo would ignore it: use --decoder-steps",
        ),
        (["--guid", "4"], "error: --guidance is for --model kandinsky22, and Karlo would ignore it: use --decoder-gu"),
        (["--sampler", "ddpm"], "error: --sampler is for --model kandinsky22, and Karlo would ignore it: Karlo sam"),
        (["--prior", "x/y"], "error: --prior is for --model kandinsky22, and Karlo would ignore it: use --karlo-repo"),
        (["--decoder", "x/y"], "error: --decoder is for --model kandinsky22, and Karlo would ignore it: use --karlo-"),
    ],
    ids=["width", "height", "steps-at-its-default", "guidance-abbreviated", "sampler-at-its-default", "prior", "dec"],
)
def test_generate_karlo_refuses_kandinsky_options(tmp_path, extra, message) -> None:
    """Each would be silently ignored: refused in one line, even with the value Kandinsky's default has."""
    missing = str(tmp_path / "missing")
    result = run_cli("generate", "a cat", "--model", "karlo", "--karlo-repo", missing, *extra, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.strip().startswith(message)


def test_kandinsky_keeps_its_defaults() -> None:
    from dalle_nodes.cli import kandinsky22_request, parse_args

    request, repos = kandinsky22_request(parse_args(["generate", "a cat"]))
    assert (request.steps, request.guidance, request.sampler, request.width) == (50, 4.0, "ddpm", None)
    assert repos == ["kandinsky-community/kandinsky-2-2-prior", "kandinsky-community/kandinsky-2-2-decoder"]


def test_generate_karlo_refuses_a_kandinsky_repo(tiny_prior_repo, tmp_path) -> None:
    result = run_cli("generate", "a cat", "--model", "karlo", "--karlo-repo", str(tiny_prior_repo), cwd=tmp_path)
    assert result.returncode == 2
    assert (
        "is the Kandinsky 2.2 prior: load it as one (Kandinsky22.load(prior=…), --prior, or Load DALL·E 2 Prior)"
        in result.stderr
    )
    assert not list(tmp_path.glob("*.png"))


def test_help_lists_karlos_options() -> None:
    result = run_cli("generate", "--help", cwd=Path.cwd())
    assert result.returncode == 0
    assert "karlo (also --prior-steps, --prior-guidance):" in result.stdout
    for option in ("--decoder-steps", "--decoder-guidance", "--super-res-steps", "--karlo-repo"):
        assert option in result.stdout
