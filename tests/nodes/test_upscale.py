"""DalleLoadUpscaler and DalleGANUpscale as ComfyUI calls them, on tiny Real-ESRGAN-format checkpoints."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

from dalle_nodes.engine import tiling
from dalle_nodes.engine.checkpoints import CheckpointError
from dalle_nodes.engine.hub import NotDownloaded
from dalle_nodes.nodes import runtime
from dalle_nodes.nodes.upscale import DalleGANUpscale, DalleLoadUpscaler
from dalle_nodes.pipelines.upscale import loading, stages
from tiny_upscalers import compact_state, rrdbnet_state, write_upscaler


def load(model: str = "custom", repo_id: str = "", filename: str = "", revision: str = "main"):
    return DalleLoadUpscaler().load(model=model, repo_id=repo_id, filename=filename, revision=revision)[0]


def run(model, image, tile=0, overlap=32, precision="fp32", **optional) -> torch.Tensor:
    return DalleGANUpscale().upscale(model, image, tile=tile, overlap=overlap, precision=precision, **optional)[0]


def reference(model, image: torch.Tensor) -> torch.Tensor:
    """spandrel's own forward on the whole image, [B, H, W, C] in and out."""
    return model(image.movedim(-1, 1)).movedim(1, -1)


@pytest.fixture(scope="module")
def upscalers(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("upscalers")
    return {
        "x4": write_upscaler(folder / "RealESRGAN_x4plus.pth", rrdbnet_state(4), "params_ema"),
        "x2": write_upscaler(folder / "RealESRGAN_x2plus.pth", rrdbnet_state(2)),
        "compact": write_upscaler(folder / "realesr-general-x4v3.safetensors", compact_state(4)),
    }


def test_preset_loads_offline_from_the_hub_layout_store(upscalers) -> None:
    preset = loading.PRESETS["RealESRGAN_x4plus"]
    store = Path(os.environ["DALLE_NODES_HOME"]) / preset.repo.replace("/", "--")
    write_upscaler(store / preset.filename, rrdbnet_state(4))
    model = load("RealESRGAN_x4plus")
    assert model.scale == 4 and model.architecture.name == "ESRGAN"
    assert model.patcher is None  # outside ComfyUI; inside, a ModelPatcher (tests/comfyui use it in ComfyUI's node)
    assert load("RealESRGAN_x4plus") is model  # loaded once


def test_preset_in_a_subfolder_not_downloaded_offline() -> None:
    with pytest.raises(NotDownloaded, match="RealESRGAN_x4plus_anime_6B.safetensors"):
        load("RealESRGAN_x4plus_anime_6B")


def test_custom_repo_folder_and_local_file(upscalers) -> None:
    folder = upscalers["x2"].parent
    assert load(repo_id=str(folder), filename="RealESRGAN_x2plus.pth").scale == 2
    assert load(filename=str(upscalers["compact"])).architecture.name == "RealESRGAN Compact"


@pytest.mark.parametrize(
    ("inputs", "error", "message"),
    [
        ({"model": "RealESRGAN_x5"}, ValueError, "Unknown upscaler preset 'RealESRGAN_x5'"),
        ({"filename": ""}, ValueError, "give the filename"),
        ({"filename": "/nowhere/model.pth"}, CheckpointError, "'/nowhere/model.pth' does not exist"),
        ({"repo_id": "/nowhere", "filename": "x.pth"}, CheckpointError, "Local folder '/nowhere' does not exist"),
    ],
)
def test_loader_errors(inputs, error, message) -> None:
    with pytest.raises(error, match=message):
        load(**inputs)


def test_missing_file_in_folder_is_named(upscalers) -> None:
    with pytest.raises(CheckpointError, match="4x-Nothing.pth' is missing"):
        load(repo_id=str(upscalers["x4"].parent), filename="4x-Nothing.pth")


@pytest.mark.parametrize("kind", ["x4", "x2", "compact"])
def test_whole_image_matches_spandrel(upscalers, kind) -> None:
    model = load(filename=str(upscalers[kind]))
    image = torch.rand(3, 37, 53, 3, generator=torch.Generator().manual_seed(1))
    out = run(model, image)
    assert out.shape == (3, 37 * model.scale, 53 * model.scale, 3)
    expected = reference(model, image)
    assert 0.2 < ((expected > 0) & (expected < 1)).float().mean()  # outputs are not just clamped extremes
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_cpu_convolutions_run_channels_last(upscalers) -> None:
    # oneDNN's convolutions run about 1.25× faster channels-last (benchmarks/RESULTS.md); ComfyUI's node hands
    # the model that layout too
    model = load(filename=str(upscalers["x4"]))
    layouts = []
    hook = model.model.register_forward_pre_hook(
        lambda _, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    try:
        run(model, torch.rand(1, 40, 30, 3), tile=32, overlap=8)
    finally:
        hook.remove()
    assert layouts and all(layouts)


@pytest.mark.parametrize(
    ("kind", "size", "tile", "overlap"),
    [("x4", (150, 75), 64, 28), ("x2", (101, 77), 80, 36), ("compact", (150, 75), 64, 28)],
)
def test_tiles_blend_to_the_whole_image(upscalers, kind, size, tile, overlap) -> None:
    model = load(filename=str(upscalers[kind]))
    image = torch.rand(3, *size, 3, generator=torch.Generator().manual_seed(2))  # sizes no multiple of the tile
    out = run(model, image, tile=tile, overlap=overlap)
    assert out.shape == (3, size[0] * model.scale, size[1] * model.scale, 3)
    assert (out - reference(model, image)).abs().max() < 1e-3


def test_automatic_tiles_on_an_image_larger_than_one_tile(upscalers, monkeypatch) -> None:
    monkeypatch.setattr(stages, "CPU_TILE_PIXELS", 100 * 100)  # as if memory allowed only small tiles
    model = load(filename=str(upscalers["x4"]))
    image = torch.rand(2, 200, 150, 3, generator=torch.Generator().manual_seed(5))
    plans = []
    tiled = tiling.run_tiled
    monkeypatch.setattr(tiling, "run_tiled", lambda *args, **kw: plans.append(args[3]) or tiled(*args, **kw))
    out = run(model, image, overlap=16)
    assert (plans[0].height, plans[0].width, plans[0].overlap) == (108, 83, 16)  # 2 × 2 tiles, not the fallback
    assert out.shape == (2, 800, 600, 3)
    assert (out - reference(model, image)).abs().max() < 1e-3


def test_rgba_keeps_its_alpha(upscalers) -> None:
    model = load(filename=str(upscalers["x4"]))
    image = torch.rand(2, 20, 24, 4, generator=torch.Generator().manual_seed(3))
    out = run(model, image)
    assert out.shape == (2, 80, 96, 4)
    torch.testing.assert_close(out[..., :3], reference(model, image[..., :3]), atol=1e-5, rtol=0)
    grey_alpha = image[..., 3:].expand(-1, -1, -1, 3)
    torch.testing.assert_close(out[..., 3], reference(model, grey_alpha).mean(-1), atol=1e-5, rtol=0)


def test_scale_to_resizes_the_model_output(upscalers) -> None:
    model = load(filename=str(upscalers["x4"]))
    image = torch.rand(1, 30, 41, 3)
    out = run(model, image, scale_to=2.0)
    assert out.shape == (1, 60, 82, 3)
    assert out.min() >= 0 and out.max() <= 1
    big = reference(model, image).movedim(-1, 1)
    expected = torch.nn.functional.interpolate(big, size=(60, 82), mode="bicubic", antialias=True).clamp(0, 1)
    torch.testing.assert_close(out, expected.movedim(1, -1), atol=1e-5, rtol=0)


def test_out_of_memory_retries_with_smaller_tiles(upscalers, monkeypatch, caplog) -> None:
    model = load(filename=str(upscalers["x4"]))
    forward = stages.forward_fn
    sizes = []

    def small_memory_forward(descriptor, dtype, device, compile=False):
        inner = forward(descriptor, dtype, device, compile)

        def run_or_fail(tiles: torch.Tensor) -> torch.Tensor:
            sizes.append(tuple(tiles.shape))
            if tiles.shape[0] * tiles.shape[2] * tiles.shape[3] > 64 * 64:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return inner(tiles)

        return run_or_fail

    monkeypatch.setattr(stages, "forward_fn", small_memory_forward)
    image = torch.rand(1, 150, 75, 3, generator=torch.Generator().manual_seed(4))
    with caplog.at_level(logging.WARNING):
        out = run(model, image, tile=128, overlap=56)
    assert "out of memory" in caplog.text
    assert sizes[0][2:] == (128, 75) and sizes[-1][0] == 1 and sizes[-1][2] * sizes[-1][3] <= 64 * 64
    assert (out - reference(model, image)).abs().max() < 1e-3


def test_compile_is_used_and_falls_back_cleanly(upscalers, monkeypatch, caplog) -> None:
    model = load(filename=str(upscalers["compact"]))
    image = torch.rand(2, 40, 30, 3)
    expected = reference(model, image)
    calls = []

    def fake_compile(module, dynamic):  # stands in for inductor, which needs a C++ toolchain CI may lack
        def compiled(tiles):
            calls.append(tiles.shape)
            return module(tiles)

        return compiled

    monkeypatch.setattr(stages, "_compiled", type(stages._compiled)())
    monkeypatch.setattr(torch, "compile", fake_compile)
    torch.testing.assert_close(run(model, image, compile=True), expected, atol=1e-5, rtol=0)
    assert calls

    def broken_compile(module, dynamic):
        def compiled(tiles):
            raise RuntimeError("no C++ compiler found")

        return compiled

    monkeypatch.setattr(stages, "_compiled", type(stages._compiled)())
    monkeypatch.setattr(torch, "compile", broken_compile)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):  # the second run knows compiling failed and does not try again
            torch.testing.assert_close(run(model, image, compile=True), expected, atol=1e-5, rtol=0)
    assert caplog.text.count("torch.compile failed (no C++ compiler found); running uncompiled") == 1


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"tile": 64, "overlap": 32}, "overlap \\(32\\) must be less than half the tile \\(64\\)"),
        ({"precision": "fp16", "image": torch.rand(1, 8, 8, 2)}, "an IMAGE \\[batch, height, width, 3 or 4\\]"),
        ({"scale_to": 0.01}, "smaller than one pixel"),
    ],
)
def test_upscale_input_errors(upscalers, inputs, message) -> None:
    model = load(filename=str(upscalers["compact"]))
    with pytest.raises(ValueError, match=message):
        run(model, **{"image": torch.rand(1, 8, 8, 3), **inputs})


def test_bad_images_are_refused_before_the_model_loads(upscalers, monkeypatch) -> None:
    model = load(filename=str(upscalers["compact"]))
    loaded = []
    monkeypatch.setattr(runtime.ManagedModule, "load", lambda self, memory_required=0: loaded.append(self))
    with pytest.raises(ValueError, match="an IMAGE \\[batch, height, width, 3 or 4\\]"):
        run(model, torch.rand(1, 8, 8, 2))
    with pytest.raises(ValueError, match="smaller than one pixel"):
        run(model, torch.rand(1, 8, 8, 3), scale_to=0.01)
    assert loaded == []


@pytest.mark.parametrize(("has_bf16", "dtype"), [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_on_the_cpu_is_bf16_where_the_cpu_computes_it(upscalers, monkeypatch, has_bf16, dtype) -> None:
    """auto = bf16 on a CPU with bf16 in hardware (AMX, AVX512-BF16: 4.2x fp32 for Real-ESRGAN), else fp32."""
    monkeypatch.setattr(stages, "cpu_has_bf16", lambda: has_bf16)
    model = load(filename=str(upscalers["x2"]))
    assert stages.compute_dtype("auto", model, torch.device("cpu")) == dtype
    assert stages.compute_dtype("fp32", model, torch.device("cpu")) == torch.float32
    image = torch.rand(1, 24, 24, 3, generator=torch.Generator().manual_seed(3))
    near = (run(model, image, precision="auto") - run(model, image)).abs().mean().item()
    assert (near == 0) is (dtype == torch.float32) and near < 0.02
