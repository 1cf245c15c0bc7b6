"""Our package inside a real ComfyUI: registration, every shipped workflow end to end, and error reporting.

Runs when COMFYUI_PATH points at a ComfyUI checkout (interpreter: COMFYUI_PYTHON, default this one); skips
without it, and fails instead of skipping where DALLE_NODES_REQUIRE_COMFYUI=1 (CI). The server and tiny
checkpoints are set up once per module by conftest.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dalle_nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from dalle_nodes.client.workflow_graph import CORE_NODES
from dalle_nodes.pipelines import kandinsky22
from shipped_workflows import NAMES, api_file, ui_file

pytestmark = pytest.mark.skipif(
    not os.environ.get("COMFYUI_PATH"),
    reason="set COMFYUI_PATH to a ComfyUI checkout (and COMFYUI_PYTHON to its interpreter) to run",
)

TEXT2IMAGE = "kandinsky22_text2image"
PUBLIC_URL = "https://gpu0.example.com/comfy"
COMFYUI_ENV = {"DALLE_NODES_API_PUBLIC_URL": PUBLIC_URL + "/"}  # url answers of the images API start there
WIDTH, HEIGHT = 128, 192  # the tiny models run this size in well under a second per step
TIMEOUT_S = 300  # for one tiny prompt (about a second): the margin is for two busy cores


def node_id(graph: dict, class_type: str) -> str:
    (found,) = [key for key, node in graph.items() if node["class_type"] == class_type]
    return found


def shrunk(name: str, **decoder_inputs) -> dict:
    """A shipped API workflow, shrunk for the tiny checkpoints: 3 prior steps, 4 decoder (or KSampler) steps, and
    WIDTH x HEIGHT images, set on the decoder, on Empty Latent Image or, where a latent from a picture fixes the size,
    on Upscale Image; one DALL·E Mega image (the best of two where the workflow reranks); 2 steps of Karlo's decoder
    and super-resolution.
    `decoder_inputs` override more of the decoder's inputs."""
    graph = json.loads((api_file(name)).read_text(encoding="utf-8"))
    reranked = any(node["class_type"] == "DalleCLIPRerank" for node in graph.values())
    for node in graph.values():
        inputs = node["inputs"]
        if node["class_type"] == "DallePriorSample":
            inputs["steps"] = 3
        elif node["class_type"] in ("ImageScale", "EmptyLatentImage"):
            inputs.update(width=WIDTH, height=HEIGHT)
        elif node["class_type"] == "KSampler":
            inputs["steps"] = 4
        elif node["class_type"] == "DalleTokenSample":
            inputs["batch_size"] = 2 if reranked else 1
        elif node["class_type"] == "DalleCLIPRerank":
            inputs["keep"] = 1
        elif node["class_type"] in ("DalleKarloDecoderSample", "DalleKarloSuperRes"):
            inputs["steps"] = 2
        elif node["class_type"] == "DalleDecoderSample":
            size = {} if "latent" in inputs else {"width": WIDTH, "height": HEIGHT}
            inputs.update({**size, "steps": 4, **decoder_inputs})
    return graph


def text2image(**decoder_inputs) -> dict:
    return shrunk(TEXT2IMAGE, **decoder_inputs)


def errors(entry: dict) -> list[dict]:
    return [details for kind, details in entry["status"]["messages"] if kind == "execution_error"]


def why(entry: dict) -> str:
    """A finished prompt's execution errors in one line (pytest would cut the raw status messages short)."""
    return (
        "; ".join(
            f"{e['node_type']} (node {e['node_id']}): {e['exception_type']}: {e['exception_message']}"
            for e in errors(entry)
        )
        or entry["status"]["status_str"]
    )


def names(inputs: dict, section: str) -> set[str]:
    return set(inputs.get(section, {}))


def same_declaration(ours: tuple, theirs: list) -> bool:
    """Whether a CORE_NODES stand-in input says what /object_info says: the same type or combo choices ("COMBO"
    stands for choices only ComfyUI knows, such as input files), and the same value for each option it gives."""
    if ours[0] == "COMBO":
        same_type = isinstance(theirs[0], list) or theirs[0] == "COMBO"  # classic nodes list choices, V3 ones say COMBO
    else:
        same_type = (list(ours[0]) if isinstance(ours[0], (list, tuple)) else ours[0]) == theirs[0]
    options = ours[1] if len(ours) > 1 else {}
    their_options = theirs[1] if len(theirs) > 1 else {}
    return same_type and all(their_options.get(key) == value for key, value in options.items())


def test_nodes_registered(comfyui) -> None:
    info = comfyui.get_json("/object_info")
    missing = sorted(set(NODE_CLASS_MAPPINGS) - set(info))
    assert not missing, f"not registered (import failed? see the log): {missing}"
    for name, cls in NODE_CLASS_MAPPINGS.items():
        ours, theirs = cls.INPUT_TYPES(), info[name]["input"]
        for section in ("required", "optional"):
            assert names(theirs, section) == names(ours, section), f"{name} {section} inputs"
        assert info[name]["output"] == list(cls.RETURN_TYPES), name
        assert info[name]["display_name"] == NODE_DISPLAY_NAME_MAPPINGS[name]
    for name, spec in CORE_NODES.items():  # test_workflows.py's stand-ins stay true to ComfyUI
        for section in ("required", "optional"):
            assert names(info[name]["input"], section) == names(spec.inputs, section), f"{name} {section} inputs"
            for input_name, ours in spec.inputs.get(section, {}).items():
                theirs = info[name]["input"][section][input_name]
                assert same_declaration(ours, theirs), f"{name}.{input_name}: we say {ours}, ComfyUI {theirs}"
        assert info[name]["output"][: len(spec.outputs)] == list(spec.outputs), name
        assert info[name]["output_node"] == spec.output_node, name


@pytest.mark.parametrize("name", NAMES)
def test_ui_workflow_offered_as_template(comfyui, name: str) -> None:
    assert name in comfyui.get_json("/workflow_templates").get("dalle-nodes", [])
    served = comfyui.get_json(f"/api/workflow_templates/dalle-nodes/{name}.json")
    assert served == json.loads((ui_file(name)).read_text(encoding="utf-8"))


def shrinking_settings(name: str) -> list[str]:
    """shrunk()'s changes to a shipped workflow as the queue command's --set arguments (they work on UI files too)."""
    original = json.loads((api_file(name)).read_text(encoding="utf-8"))
    small = shrunk(name)
    return [
        f"{node_id}.{key}={json.dumps(value)}"
        for node_id, node in small.items()
        for key, value in node["inputs"].items()
        if original[node_id]["inputs"][key] != value
    ]


def expected_size(graph: dict) -> tuple[int, int]:
    classes = {node["class_type"] for node in graph.values()}
    fixed = {"DalleTokenSample", "DalleKarloSuperRes"}  # DALL·E Mega's and Karlo's images are 256 px
    width, height = (256, 256) if classes & fixed else (WIDTH, HEIGHT)
    for node in graph.values():  # outpainting: the picture at WIDTH x HEIGHT, plus the padding
        if node["class_type"] == "ImagePadForOutpaint":
            width += node["inputs"]["left"] + node["inputs"]["right"]
            height += node["inputs"]["top"] + node["inputs"]["bottom"]
    scale = 4 if "DalleGANUpscale" in classes else 1  # the tiny x4 preset
    return width * scale, height * scale


def queue(comfyui, *args: str) -> tuple[int, str, str]:
    """`python -m dalle_nodes queue …` against the server, in this process: exit code, stdout, stderr."""
    from dalle_nodes.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["queue", *args, "--server", comfyui.url, "--timeout", str(TIMEOUT_S)])
    return code, stdout.getvalue(), stderr.getvalue()


@pytest.mark.parametrize("kind", ["api", "ui"])
@pytest.mark.parametrize("name", NAMES)
def test_shipped_workflow_runs_through_queue(comfyui, tmp_path, name: str, kind: str) -> None:
    sets = [arg for setting in shrinking_settings(name) for arg in ("--set", setting)]
    code, out, err = queue(
        comfyui, str(api_file(name) if kind == "api" else ui_file(name)), *sets, "--out", str(tmp_path), "--json"
    )
    assert code == 0, err
    summary = json.loads(out)
    (saved,) = summary["outputs"]
    path = Path(saved["path"])
    assert path.parent == tmp_path and path.is_file() and not list(tmp_path.glob(".*.partial"))
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size == expected_size(shrunk(name))
    assert summary["prompt_id"] in comfyui.get_json(f"/history/{summary['prompt_id']}")


def test_queue_reports_refusals_and_failures(comfyui, tmp_path) -> None:
    workflow = str(api_file(TEXT2IMAGE))
    sets = [arg for setting in shrinking_settings(TEXT2IMAGE) for arg in ("--set", setting)]
    code, _, err = queue(comfyui, workflow, *sets, "--set", "6.width=32", "--out", str(tmp_path))
    assert code == 2
    assert "node 6 (DalleDecoderSample), input 'width'" in err and "Value 32 smaller than min of 64" in err
    code, _, err = queue(comfyui, workflow, *sets, "--set", "6.width=100", "--out", str(tmp_path))
    assert code == 1
    assert "node 6 (DalleDecoderSample) failed: ValueError: width 100 is not supported" in err
    code, _, err = queue(comfyui, workflow, *sets, "--set", "5.repo_id=someone/not-downloaded", "--out", str(tmp_path))
    assert code == 1
    # our own exception by its class name: ComfyUI's type name for it is a path into custom_nodes
    assert "node 5 (DalleLoadDecoder) failed: NotDownloaded: " in err and "is not downloaded yet" in err, err
    assert "custom_nodes" not in err and "dalle_nodes" not in err and "engine.hub" not in err
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # nothing written
    code, _, err = queue(comfyui, workflow, *sets, "--out", str(tmp_path))
    assert code == 0, err  # the server still serves
    blocked = tmp_path / "a-file"
    blocked.write_text("mine")
    code, _, err = queue(comfyui, workflow, *sets, "--set", "6.seed=5", "--out", str(blocked))
    # found before anything is queued
    assert code == 2 and f"'{blocked}' is a file, not a folder" in err and blocked.read_text() == "mine"


def loads_in_log(comfyui) -> int:
    return comfyui.log.read_text(errors="replace").count(": loading ")


def test_models_stay_loaded_until_comfyui_frees_them(comfyui) -> None:
    graph = text2image(seed=101)
    entry = comfyui.run(graph)
    assert entry["status"]["status_str"] == "success", why(entry)
    loads = loads_in_log(comfyui)
    assert comfyui.run(graph)["status"]["status_str"] == "success"  # identical: served from ComfyUI's cache
    assert comfyui.run(text2image(seed=102))["status"]["status_str"] == "success"  # re-samples …
    assert loads_in_log(comfyui) == loads  # … without loading anything again

    status, _ = comfyui.request("/free", {"unload_models": True, "free_memory": True})
    assert status == 200
    # ComfyUI's prompt worker applies these flags when it wakes to an empty queue or after the prompt it takes
    # then, and in both cases before it takes another: once a prompt queued now has run, the unload is done.
    picture, _ = input_picture(comfyui)
    barrier = {
        "1": {"class_type": "LoadImage", "inputs": {"image": picture}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    assert comfyui.run(barrier)["status"]["status_str"] == "success"
    assert loads_in_log(comfyui) == loads
    assert comfyui.run(text2image(seed=102))["status"]["status_str"] == "success"
    assert loads_in_log(comfyui) == loads + 2  # prior and decoder: we kept no copy ComfyUI could not free


def test_interrupt_stops_sampling_mid_run(comfyui) -> None:
    """Cancel while the decoder samples: the decoder itself stops (it checks at every step), long before its last
    step, and the prompt ends interrupted there. How many steps ran after the interrupt cannot be read from the
    outside: ComfyUI sends progress at most every 100 ms, and stops sending once interrupted."""
    from dalle_nodes.client.comfy_client import ComfyClient, Interrupted

    client = ComfyClient(comfyui.url)
    steps = 999  # the most the decoder takes, as a margin for a slow cancel on a busy machine
    graph = text2image(steps=steps, seed=103)
    decoder = node_id(graph, "DalleDecoderSample")
    seen: list[int] = []

    def on_progress(node: str, value: int, total: int) -> None:
        if node == decoder:
            seen.append(value)
            if len(seen) == 3:
                client.cancel(prompt_id)

    with client.listen() as socket:
        prompt_id = client.queue(graph)
        with pytest.raises(Interrupted, match=rf"at node {decoder} \(DalleDecoderSample\)"):
            client.follow(socket, prompt_id, time.monotonic() + TIMEOUT_S, on_progress=on_progress)
    assert len(seen) >= 3 and seen[-1] < steps, seen
    entry = comfyui.finished(prompt_id)
    assert [kind for kind, _ in entry["status"]["messages"]][-1] == "execution_interrupted"


def test_ctrl_c_cancels_the_prompt_and_exits_130(comfyui, tmp_path, monkeypatch) -> None:
    from dalle_nodes.client.comfy_client import ComfyClient

    queued, follow = [], ComfyClient.follow
    queue_prompt = ComfyClient.queue

    def remember(self, graph):
        queued.append(queue_prompt(self, graph))
        return queued[-1]

    def press_ctrl_c_at_step_2(self, socket, prompt_id, deadline, on_node=None, on_progress=None):
        def progress(node, value, total):
            if value >= 2:
                raise KeyboardInterrupt

        follow(self, socket, prompt_id, deadline, on_progress=progress)

    monkeypatch.setattr(ComfyClient, "queue", remember)
    monkeypatch.setattr(ComfyClient, "follow", press_ctrl_c_at_step_2)
    path = tmp_path / "graph.api.json"
    path.write_text(json.dumps(text2image(steps=999, seed=104)))
    code, _, err = queue(comfyui, str(path), "--out", str(tmp_path / "out"))
    assert code == 130 and "asked ComfyUI to stop" in err
    entry = comfyui.finished(queued[0])
    assert [kind for kind, _ in entry["status"]["messages"]][-1] == "execution_interrupted"
    assert not (tmp_path / "out").exists()


def test_ui_files_convert_the_same_with_the_servers_node_info(comfyui) -> None:
    from dalle_nodes.client.workflow_graph import local_specs, specs_from_object_info, ui_to_api

    server = specs_from_object_info(comfyui.get_json("/object_info"))
    for name in NAMES:
        ui = json.loads((ui_file(name)).read_text(encoding="utf-8"))
        assert ui_to_api(ui, server) == ui_to_api(ui, local_specs(NODE_CLASS_MAPPINGS)), name


def test_queue_returns_only_once_the_history_is_written(comfyui, tmp_path) -> None:
    """Cached prompts finish at once: the command must still find their images (ComfyUI writes the history after
    execution_success, so reading it on that event would race)."""
    sets = [arg for setting in shrinking_settings(TEXT2IMAGE) for arg in ("--set", setting)]
    workflow = str(api_file(TEXT2IMAGE))
    for round in range(6):
        code, out, err = queue(comfyui, workflow, *sets, "--out", str(tmp_path))
        assert code == 0, f"round {round}: {err}"
    assert len(list(tmp_path.glob("*.png"))) == 6


def saved_size(comfyui, graph: dict) -> tuple[int, int]:
    entry = comfyui.run(graph)
    assert entry["status"]["status_str"] == "success", why(entry)
    (image,) = entry["outputs"][node_id(graph, "SaveImage")]["images"]
    return Image.open(io.BytesIO(comfyui.view(image))).size


@pytest.mark.parametrize("name, english_name", [("kandinsky22_text2image_zh", TEXT2IMAGE)])
def test_translate_prompt_shows_and_passes_on_its_english(comfyui, name: str, english_name: str) -> None:
    """A Chinese workflow on ComfyUI: each translate node's English is its node text (in the history's ui outputs)
    and is what the text encoders get: the English workflow given that text draws the same image."""
    graph = shrunk(name)
    for node in graph.values():  # new texts: a node served from ComfyUI's cache shows no text in the history
        if node["class_type"] == "DalleTranslatePrompt":
            node["inputs"]["text"] = "古老的城堡，" + node["inputs"]["text"]
    entry = comfyui.run(graph)
    assert entry["status"]["status_str"] == "success", why(entry)
    english = shrunk(english_name)
    for key, node in graph.items():
        if node["class_type"] == "DalleTranslatePrompt":
            (text,) = entry["outputs"][key]["text"]
            assert text.isascii() and text.strip() and text != node["inputs"]["text"]
            (target,) = [n for n, v in graph.items() if v["inputs"].get("text") == [key, 0]]
            english[target]["inputs"]["text"] = text
    assert english != shrunk(english_name)
    translated = comfyui.run(english)
    assert translated["status"]["status_str"] == "success", why(translated)
    saved = node_id(graph, "SaveImage")
    assert np.array_equal(saved_pixels(comfyui, entry, saved), saved_pixels(comfyui, translated, saved))


def input_picture(comfyui) -> tuple[str, tuple[int, int]]:
    """One of the pictures conftest put in ComfyUI's input folder: its name and size."""
    path = sorted(path for path in (comfyui.base / "input").iterdir() if path.is_file())[0]
    return path.name, Image.open(path).size


def upscale_graph(picture: str, loader: dict, upscaler: dict) -> dict:
    """Load Image → (loader → upscaler) → Save Image."""
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": picture}},
        "2": loader,
        "3": {**upscaler, "inputs": {**upscaler["inputs"], "upscale_model": ["2", 0], "image": ["1", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "upscaled"}},
    }


def test_our_upscaler_runs_in_comfyuis_upscale_node(comfyui) -> None:
    loader = {
        "class_type": "DalleLoadUpscaler",
        "inputs": {"model": "RealESRGAN_x4plus", "repo_id": "", "filename": "", "revision": "main"},
    }
    picture, (width, height) = input_picture(comfyui)
    graph = upscale_graph(picture, loader, {"class_type": "ImageUpscaleWithModel", "inputs": {}})
    assert saved_size(comfyui, graph) == (width * 4, height * 4)


def test_comfyuis_upscale_model_runs_in_our_node(comfyui) -> None:
    loader = {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "tiny_x2.pth"}}
    upscaler = {
        "class_type": "DalleGANUpscale",
        "inputs": {"tile": 64, "overlap": 16, "precision": "auto", "scale_to": 1.5},
    }
    picture, (width, height) = input_picture(comfyui)
    graph = upscale_graph(picture, loader, upscaler)
    assert saved_size(comfyui, graph) == (round(width * 1.5), round(height * 1.5))


def test_out_of_range_input_refused_before_running(comfyui) -> None:
    graph = text2image(width=32)  # below the declared min of 64: ComfyUI's own validation catches it
    status, answer = comfyui.queue(graph)
    assert status == 400
    refused = answer["node_errors"][node_id(graph, "DalleDecoderSample")]
    assert refused["class_type"] == "DalleDecoderSample"
    assert [error["type"] for error in refused["errors"]] == ["value_smaller_than_min"]


def test_bad_width_is_reported_and_server_recovers(comfyui) -> None:
    graph = text2image(width=100)  # within min/max, so it passes validation; our node refuses it when it runs
    entry = comfyui.run(graph)
    assert entry["status"]["status_str"] == "error"
    (error,) = errors(entry)
    decoder = ("DalleDecoderSample", node_id(graph, "DalleDecoderSample"))
    assert (error["node_type"], error["node_id"]) == decoder, why(entry)
    assert error["exception_type"].endswith("ValueError")
    assert "width 100 is not supported: use a multiple of 64" in error["exception_message"]

    entry = comfyui.run(text2image(seed=7))  # a new seed, so the decoder really runs again (not from cache)
    assert entry["status"]["status_str"] == "success", why(entry)
    (image,) = entry["outputs"][node_id(graph, "SaveImage")]["images"]
    assert Image.open(io.BytesIO(comfyui.view(image))).size == (WIDTH, HEIGHT)


def test_a_nan_input_is_refused_by_the_node_and_the_server_serves_on(comfyui) -> None:
    """JSON from an API client may carry NaN, which ComfyUI's min/max validation lets through (every comparison
    with NaN is false): the node refuses it by name, ComfyUI shows that error, and the next prompt runs."""
    graph = text2image(guidance=float("nan"))
    status, answer = comfyui.queue(graph)
    assert status == 200, answer  # past ComfyUI's own validation
    entry = comfyui.finished(answer["prompt_id"])
    (error,) = errors(entry)
    assert error["node_type"] == "DalleDecoderSample", why(entry)
    assert error["exception_message"].strip() == "guidance must be between 0.0 and 100.0 (got nan)."

    entry = comfyui.run(text2image(seed=11))
    assert entry["status"]["status_str"] == "success", why(entry)


def test_compiled_decoder_gives_the_eager_picture(comfyui) -> None:
    """The decoder loader's compile input inside ComfyUI (its torch, its memory manager): inductor compiles the UNet
    and MoVQ on this CPU (minutes, the first time), keeps its kernels beside the models, and the picture is the
    eager one up to rounding."""

    def picture(compile: bool) -> np.ndarray:
        graph = text2image(seed=303)
        graph[node_id(graph, "DalleLoadDecoder")]["inputs"]["compile"] = compile
        entry = comfyui.run(graph, timeout_s=900)  # compiling on 2 CPU cores, without a kernel cache
        assert entry["status"]["status_str"] == "success", why(entry)
        (image,) = entry["outputs"][node_id(graph, "SaveImage")]["images"]
        return np.asarray(Image.open(io.BytesIO(comfyui.view(image))), dtype=np.int16)

    eager, compiled = picture(False), picture(True)
    assert np.abs(eager - compiled).max() <= 2  # of 255: the compiled kernels round a little differently
    assert "torch.compile failed" not in comfyui.log.read_text(errors="replace")
    kernels = comfyui.base / "models" / "dalle" / ".cache" / "torch_compile"
    assert kernels.is_dir() and any(kernels.iterdir())


def saved_pixels(comfyui, entry: dict, node: str) -> np.ndarray:
    (image,) = entry["outputs"][node]["images"]
    return np.asarray(Image.open(io.BytesIO(comfyui.view(image))), dtype=np.int16)


@pytest.mark.parametrize("sampler, scheduler", [("euler", "normal"), ("dpmpp_2m", "karras"), ("ddim", "ddim_uniform")])
def test_ksampler_runs_our_model(comfyui, sampler: str, scheduler: str) -> None:
    graph = shrunk("kandinsky22_ksampler")
    graph[node_id(graph, "KSampler")]["inputs"].update(sampler_name=sampler, scheduler=scheduler, seed=11)
    assert saved_size(comfyui, graph) == (WIDTH, HEIGHT)


def test_ksampler_ddim_uniform_gives_our_ddim_picture(comfyui) -> None:
    """The same prior output sampled by KSampler (ddim / ddim_uniform) and by our decoder (ddim), same seed and steps:
    same timesteps and noise; only the last step differs (ComfyUI ends at σ = 0, diffusers' DDIM at t = 0's noise)."""
    graph = shrunk("kandinsky22_ksampler")
    saved = node_id(graph, "SaveImage")
    sampler = graph[node_id(graph, "KSampler")]["inputs"]
    sampler.update(sampler_name="ddim", scheduler="ddim_uniform", seed=12)
    graph["20"] = {
        "class_type": "DalleDecoderSample",
        "inputs": {
            "decoder": ["5", 0],
            "image_embeds": ["3", 0],
            "width": WIDTH,
            "height": HEIGHT,
            "steps": sampler["steps"],
            "guidance": sampler["cfg"],
            "sampler": "ddim",
            "karras": False,
            "seed": 12,
        },
    }
    graph["21"] = {"class_type": "DalleVQDecode", "inputs": {"vq_vae": ["5", 1], "latent": ["20", 0]}}
    graph["22"] = {"class_type": "SaveImage", "inputs": {"images": ["21", 0], "filename_prefix": "ours"}}
    entry = comfyui.run(graph)
    assert entry["status"]["status_str"] == "success", why(entry)
    difference = np.abs(saved_pixels(comfyui, entry, saved) - saved_pixels(comfyui, entry, "22"))
    print(f"ddim/ddim_uniform vs our ddim: max {difference.max()}, mean {difference.mean():.4f} of 255")
    assert difference.max() <= 4, difference.max()  # of 255; measured 2 (mean 0.04) at 128 x 192, 4 steps


def test_vae_decode_of_another_models_latent_is_a_clear_error(comfyui) -> None:
    graph = {
        "1": {"class_type": "DalleLoadDecoder", "inputs": shrunk("kandinsky22_ksampler")["5"]["inputs"]},
        "2": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 3]}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }
    entry = comfyui.run(graph)
    (error,) = errors(entry)
    assert error["node_type"] == "VAEDecode" and error["exception_type"].endswith("ValueError"), why(entry)
    assert "The latent has 16 channels, but Kandinsky 2.2 (MoVQ) latents have 4" in error["exception_message"]


def hole_in_output(picture: Path) -> tuple[slice, slice]:
    """Where the transparent rectangle of an input picture lands in a WIDTH x HEIGHT output of Upscale Image (crop
    center): rows, columns."""
    with Image.open(picture) as image:
        transparent = image.getchannel("A").point(lambda alpha: 255 - alpha)
        (width, height), (left, top, right, bottom) = image.size, transparent.getbbox()
    crop_width = height * WIDTH / HEIGHT  # the pictures are wider than WIDTH:HEIGHT: their sides are cropped
    offset, scale = (width - crop_width) / 2, HEIGHT / height
    return slice(round(top * scale), round(bottom * scale)), slice(
        round((left - offset) * scale), round((right - offset) * scale)
    )


@pytest.mark.parametrize("name", ["kandinsky22_inpaint", "kandinsky22_inpaint_core"])
def test_inpaint_workflows_repaint_where_the_picture_is_transparent(comfyui, name: str) -> None:
    """Load Image's MASK follows the picture through the same Upscale Image: the repainted region is the transparent
    one. Against the same picture without transparency (an empty MASK: our decoder returns the picture unchanged, and
    says so in the log), the output changes inside the hole and far less outside (MoVQ decodes the whole latent
    together, so kept pixels move a little)."""
    graph = shrunk(name)
    loader, saved = node_id(graph, "LoadImage"), node_id(graph, "SaveImage")
    graph[node_id(graph, "DalleDecoderSample" if name == "kandinsky22_inpaint" else "KSampler")]["inputs"]["seed"] = 21
    picture = comfyui.base / "input" / graph[loader]["inputs"]["image"]
    with Image.open(picture) as image:
        assert image.mode == "RGBA"
        image.convert("RGB").save(comfyui.base / "input" / f"opaque_{name}.png")
    opaque = json.loads(json.dumps(graph))
    opaque[loader]["inputs"]["image"] = f"opaque_{name}.png"
    results = []
    for run in (graph, opaque):
        entry = comfyui.run(run)
        assert entry["status"]["status_str"] == "success", why(entry)
        results.append(saved_pixels(comfyui, entry, saved))
    edited, unedited = results
    if name == "kandinsky22_inpaint":
        assert "The mask repaints nothing" in comfyui.log.read_text(errors="replace")
    change = np.abs(edited - unedited).mean(axis=2)
    rows, columns = hole_in_output(picture)
    inside = change[rows, columns].mean()
    outside = (change.sum() - change[rows, columns].sum()) / (change.size - change[rows, columns].size)
    print(f"{name}: mean change {inside:.1f} of 255 inside the hole, {outside:.1f} outside")
    assert inside > 3 * outside, (inside, outside)


def test_controlnet_model_in_ksampler_says_what_to_use(comfyui) -> None:
    """The depth ControlNet's MODEL reads a hint KSampler cannot give: one clear error, no shape mismatch."""
    graph = shrunk("kandinsky22_ksampler")
    graph[node_id(graph, "DalleLoadDecoder")]["inputs"]["repo_id"] = kandinsky22.CONTROLNET_REPO
    entry = comfyui.run(graph)
    (error,) = errors(entry)
    assert error["node_type"] == "KSampler" and error["exception_type"].endswith("ValueError"), why(entry)
    assert "use DALL·E Decoder Sample with a hint" in error["exception_message"]


def test_images_api_is_open_without_a_key_and_says_so_once(comfyui) -> None:
    """Without DALLE_NODES_API_KEY the /v1 routes answer without Authorization, like the rest of ComfyUI, and the
    start-up log says so once; both prefixes exist."""
    for prefix in ("/v1", "/api/v1"):
        status, body = comfyui.request(f"{prefix}/models")
        assert status == 200, body
        assert {"dall-e-2", "dall-e-mega", "dall-e-mini"} <= {model["id"] for model in json.loads(body)["data"]}
    status, body = comfyui.request("/v1/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    log = comfyui.log.read_text(errors="replace")
    assert log.count("is open to anyone who can reach this server") == 1
    status, body = comfyui.request("/v1/images/generations", {"prompt": "a fox", "size": "300x300"})
    assert status == 400 and json.loads(body)["error"]["param"] == "size"
    status, body = comfyui.request(
        "/v1/images/generations", {"model": "dall-e-mega", "prompt": "a fox", "size": "256x256"}
    )
    assert status == 200, body
    (url,) = [item["url"] for item in json.loads(body)["data"]]
    assert url.startswith(PUBLIC_URL + "/view?filename=dall-e-mega_") and "&subfolder=openai&type=output" in url
