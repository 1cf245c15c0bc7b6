"""pipelines/upscale/loading.py: safe loading of Hub-format upscaler files; engine/tiling.py: the tiling arithmetic."""

from __future__ import annotations

import pickle

import pytest
import torch
from spandrel import ModelLoader

from dalle_nodes.engine import tiling
from dalle_nodes.engine.checkpoints import CheckpointError
from dalle_nodes.pipelines import upscale as upscaler
from tiny_upscalers import compact_state, rrdbnet_state, write_malicious_pickle, write_upscaler


@pytest.mark.parametrize(
    ("filename", "state", "wrap", "arch", "scale", "align"),
    [
        ("RealESRGAN_x4plus.pth", rrdbnet_state(4), "params_ema", "ESRGAN", 4, 1),
        ("RealESRGAN_x4plus.safetensors", rrdbnet_state(4), None, "ESRGAN", 4, 1),
        ("RealESRGAN_x2plus.pth", rrdbnet_state(2), None, "ESRGAN", 2, 4),
        ("realesr-general-x4v3.pth", compact_state(4), "params", "RealESRGAN Compact", 4, 1),
        ("realesr-general-x4v3.safetensors", compact_state(4), None, "RealESRGAN Compact", 4, 1),
    ],
)
def test_hub_formats_load(tmp_path, filename, state, wrap, arch, scale, align) -> None:
    descriptor = upscaler.load_upscaler(write_upscaler(tmp_path / filename, state, wrap))
    assert descriptor.architecture.name == arch
    assert descriptor.scale == scale
    assert descriptor.size_requirements.multiple_of == align
    assert next(descriptor.model.parameters()).dtype == torch.float32


def test_spandrel_sees_the_same_weights(tmp_path) -> None:
    """Our safe reader and spandrel's own file loader give the same model."""
    path = write_upscaler(tmp_path / "x4.pth", rrdbnet_state(4), "params_ema")
    ours = upscaler.load_upscaler(path).model.state_dict()
    theirs = ModelLoader().load_from_file(path).model.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_not_an_upscaler_is_named(tiny_decoder_repo) -> None:
    unet = tiny_decoder_repo / "unet" / "diffusion_pytorch_model.safetensors"
    with pytest.raises(CheckpointError, match="'diffusion_pytorch_model.safetensors' is not a supported upscaler"):
        upscaler.load_upscaler(unet)


def test_pickle_that_runs_code_is_refused(tmp_path) -> None:
    marker = tmp_path / "pwned"
    path = write_malicious_pickle(tmp_path / "evil.pth", marker)
    with pytest.raises(CheckpointError, match="refused"):
        upscaler.load_upscaler(path)
    assert not marker.exists()
    with path.open("rb") as f:
        pickle.load(f)  # the payload is real: a permissive loader runs it
    assert marker.exists()


def test_wrong_suffix_and_broken_tensors(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not a weight file"):
        upscaler.load_upscaler(tmp_path / "model.onnx")
    state = rrdbnet_state(4)
    state["conv_body.weight"] = state["conv_body.weight"][:4]
    with pytest.raises(CheckpointError, match="do not fit the architecture"):
        upscaler.load_upscaler(write_upscaler(tmp_path / "bad.safetensors", state))


@pytest.mark.parametrize(
    ("size", "tile", "overlap", "scale", "align"),
    [(100, 40, 8, 4, 1), (1000, 512, 32, 1, 1), (768, 400, 32, 4, 1), (97, 33, 16, 3, 1), (1000, 64, 0, 2, 1)]
    + [(200, 64, 16, 2, 4), (50, 64, 32, 2, 1), (176, 64, 8, 4, 16), (176, 64, 16, 1, 16), (304, 96, 8, 2, 8)]
    + [(100, 20, 16, 1, 1)],  # tiles under two overlaps: the two fade bands of one tile meet
)
def test_blend_weights_are_a_partition_of_unity(size, tile, overlap, scale, align) -> None:
    starts = tiling.axis_starts(size, tile, overlap, align)
    weights = tiling.axis_weights(size, tile, overlap, scale, align)
    total = torch.zeros(size * scale, dtype=torch.float64)
    length = min(size, tile)
    for start, weight in zip(starts, weights, strict=True):
        assert start % align == 0 and start + length <= size
        total[start * scale : (start + length) * scale] += weight
    assert torch.allclose(total, torch.ones_like(total), atol=1e-6)
    if len(starts) > 1:  # each tile fades out before its own edge
        assert all(w[0] == 0 or i == 0 for i, w in enumerate(weights))
        assert weights[0][-1] == 0
        assert all(nxt - start <= min(size, tile) - overlap for start, nxt in zip(starts, starts[1:], strict=False))
        assert len(set(starts)) == len(starts)
        step = max((tile - overlap) // align * align, align)  # the largest stride the grid allows
        assert len(starts) == -(-(size - tile) // step) + 1  # no more tiles than needed


def test_plan_prefers_few_uneven_tiles() -> None:
    plan = tiling.plan_tiles(768, 768, 400_000, 32)
    assert (plan.height, plan.width, plan.batch) == (768, 400, 1)  # 2 tiles: 4% extra work, not 4 × 512²
    assert tiling.plan_tiles(256, 256, 10**6, 32).batch == 15  # small images go whole, many per forward
    for height, width, budget in [(1536, 1024, 300_000), (3000, 200, 100_000), (333, 777, 50_000)]:
        plan = tiling.plan_tiles(height, width, budget, 32, align=4)
        assert plan.height * plan.width <= budget
        assert plan.height % 4 == 0 and plan.width % 4 == 0


def test_shrunk_plans_end() -> None:
    plan, seen = tiling.TilePlan(512, 512, 32, 4, 4), []
    while plan is not None:
        seen.append(plan)
        plan = plan.shrunk()
    assert seen[1].batch == 1 and seen[-1].height == 32 and len(seen) < 8


def test_shrunk_plans_never_grow() -> None:
    """Tiles under the 32-pixel floor are not 'shrunk' to larger ones: there is nothing smaller to try."""
    assert tiling.TilePlan(24, 16, 4, 1).shrunk() is None
    assert tiling.TilePlan(48, 16, 4, 1).shrunk() == tiling.TilePlan(32, 16, 4, 1)


def test_run_tiled_takes_its_channels_from_the_forward() -> None:
    """A pointwise 4 → 3 channel map with 8× nearest upsampling (MoVQ's shapes): tiles blend to the whole output."""
    mix = torch.randn(3, 4, generator=torch.Generator().manual_seed(6))

    def forward(x: torch.Tensor) -> torch.Tensor:
        pixels = torch.einsum("oc,nchw->nohw", mix, x)
        return torch.nn.functional.interpolate(pixels, scale_factor=8, mode="nearest")

    latents = torch.randn(2, 4, 21, 30, generator=torch.Generator().manual_seed(7))
    plan = tiling.TilePlan(12, 16, 4, 4)
    assert tiling.tile_count(21, 30, plan) == 9  # 3 × 3 per image; batches of 4, one with tiles of both
    out = torch.full((2, 3, 168, 240), float("nan"))
    tiling.run_tiled(forward, latents, 8, plan, lambda index, image: out[index].copy_(image))
    torch.testing.assert_close(out, forward(latents), atol=1e-5, rtol=0)


def test_shrink_on_oom_retries_smaller_then_gives_up() -> None:
    tried, retries = [], []

    def attempt(plan: tiling.TilePlan) -> str:
        tried.append(plan)
        if plan.height * plan.width * plan.batch > 64 * 64:
            raise torch.OutOfMemoryError("simulated")
        return "done"

    def is_oom(error: BaseException) -> bool:
        return isinstance(error, torch.OutOfMemoryError)

    plan = tiling.TilePlan(128, 128, 16, 2)
    result, used = tiling.shrink_on_oom(attempt, plan, is_oom, lambda failed, smaller: retries.append(smaller))
    assert (result, used) == ("done", tiling.TilePlan(64, 64, 16, 1))
    assert tried == [plan, tiling.TilePlan(128, 128, 16, 1), used] and retries == tried[1:]

    def never_fits(plan: tiling.TilePlan) -> None:
        tried.append(plan)
        raise torch.OutOfMemoryError("simulated")

    tried.clear()
    with pytest.raises(torch.OutOfMemoryError, match="simulated"):
        tiling.shrink_on_oom(never_fits, plan, is_oom, lambda *_: None)
    assert [(p.height, p.batch) for p in tried] == [(128, 2), (128, 1), (64, 1), (32, 1)]  # then the error

    def broken(plan: tiling.TilePlan) -> None:
        tried.append(plan)
        raise ValueError("not a memory problem")

    tried.clear()
    with pytest.raises(ValueError, match="not a memory problem"):
        tiling.shrink_on_oom(broken, plan, is_oom, lambda *_: None)
    assert len(tried) == 1
