"""kandinsky22/vq_decode.py, MoVQ's memory policy, through DalleVQDecode on the tiny decoder repo's MoVQ: whole
where one image's activations fit, tiles where they do not or where the whole decode runs out of memory anyway,
smaller tiles after each further failure.

There is no GPU here: the activation estimate, the free memory and the out-of-memory errors are patched in.
"""

from __future__ import annotations

import logging

import pytest
import torch

from dalle_nodes.engine import tiling
from dalle_nodes.models.movq import MoVQ
from dalle_nodes.nodes import runtime, vae
from dalle_nodes.nodes.loaders import DalleLoadDecoder
from dalle_nodes.pipelines.kandinsky22 import memory as kandinsky22_memory
from dalle_nodes.pipelines.kandinsky22 import vq_decode

NEEDED = 10**9  # the patched activation estimate of one image, in bytes
DECODE, DECODE_TILED = MoVQ.decode, MoVQ.decode_tiled  # the real ones, whatever a test patches


@pytest.fixture()
def vq_vae(tiny_decoder_repo, monkeypatch):
    monkeypatch.setattr(
        kandinsky22_memory, "movq_decode_bytes", lambda config, height, width, dtype, fused_attention: NEEDED
    )
    monkeypatch.setattr(vq_decode, "OVERLAP", 2)  # so that tiles of a few latent pixels can split these small latents
    return DalleLoadDecoder().load(repo_id=str(tiny_decoder_repo), revision="main", dtype="fp32")[1]


@pytest.fixture()
def calls(monkeypatch) -> dict[str, list]:
    """Spies on MoVQ: the latent shapes decode() sees, the plans decode_tiled() gets, what load() is asked for."""
    seen = {"decode": [], "tiled": [], "load": []}
    decode, load = MoVQ.decode, runtime.ManagedModule.load

    def spy_decode(self, latents, quantize=False):
        seen["decode"].append(tuple(latents.shape))
        return decode(self, latents, quantize)

    def spy_tiled(self, latents, plan, on_batch=lambda: None):
        seen["tiled"].append(plan)
        return DECODE_TILED(self, latents, plan, on_batch)

    def spy_load(self, memory_required=0):
        seen["load"].append(memory_required)
        return load(self, memory_required)

    monkeypatch.setattr(MoVQ, "decode", spy_decode)
    monkeypatch.setattr(MoVQ, "decode_tiled", spy_tiled)
    monkeypatch.setattr(runtime.ManagedModule, "load", spy_load)
    return seen


def latent(*shape: int) -> dict:
    # the tiny repo's MoVQ reads latents of a random UNet's size, tens (tests/tiny_repos.py)
    return {"samples": 30 * torch.randn(*shape, generator=torch.Generator().manual_seed(1))}


def run(vq_vae, latent: dict) -> torch.Tensor:
    return vae.DalleVQDecode().decode(vq_vae, latent)[0]


def as_image(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels.float() * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)


def fail_when(condition, monkeypatch) -> list[tuple]:
    """Make MoVQ.decode raise a (simulated) CUDA out-of-memory error on the latent shapes `condition` picks."""
    decode, failed = MoVQ.decode, []

    def decode_or_fail(self, latents, quantize=False):
        if condition(tuple(latents.shape)):
            failed.append(tuple(latents.shape))
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return decode(self, latents, quantize)

    monkeypatch.setattr(MoVQ, "decode", decode_or_fail)
    return failed


@pytest.mark.parametrize("room", [None, NEEDED])  # the CPU (never budgeted), a GPU with just enough free
def test_whole_where_it_fits(vq_vae, calls, monkeypatch, room) -> None:
    monkeypatch.setattr(vq_decode, "activation_room", lambda host, device: room)
    estimates = []
    monkeypatch.setattr(
        kandinsky22_memory, "movq_decode_bytes", lambda *args, **kwargs: estimates.append(args) or NEEDED
    )
    samples = latent(2, 4, 16, 24)
    image = run(vq_vae, samples)
    movq = vq_vae.movq.module
    # one image of the output's size, in pixels: the room asked of ComfyUI, then the decode's own check of it
    assert estimates == [(movq.config, 128, 192, torch.float32)] * 2
    assert calls["load"] == [NEEDED] and calls["tiled"] == [] and calls["decode"] == [(1, 4, 16, 24)] * 2
    assert image.shape == (2, 128, 192, 3) and image.dtype == torch.float32
    with torch.inference_mode():
        expected = torch.cat([as_image(DECODE(movq, one)) for one in samples["samples"].split(1)])
    assert torch.equal(image, expected)


def test_tiles_where_the_estimate_exceeds_free_memory(vq_vae, calls, monkeypatch) -> None:
    movq = vq_vae.movq.module
    canvas = 2 * 4 * 3 * 128 * 192  # the tiled decode's float32 canvas and output
    room = canvas + NEEDED // 3  # room for a third of the image's activations: 128 of its 384 latent pixels
    monkeypatch.setattr(vq_decode, "activation_room", lambda host, device: room)
    samples = latent(2, 4, 16, 24)
    image = run(vq_vae, samples)
    assert calls["load"] == [NEEDED]
    assert (1, 4, 16, 24) not in calls["decode"]  # never whole
    plan = calls["tiled"][0]
    assert calls["tiled"] == [plan, plan]  # one plan, one image at a time
    assert plan.height * plan.width * plan.batch <= 128 and tiling.tile_count(16, 24, plan) > 1
    assert image.shape == (2, 128, 192, 3) and torch.isfinite(image).all()
    with torch.inference_mode():
        expected = as_image(DECODE_TILED(movq, samples["samples"], plan))
    assert torch.equal(image, expected)


def test_whole_decode_out_of_memory_goes_to_tiles(vq_vae, calls, monkeypatch, caplog) -> None:
    failed = fail_when(lambda shape: shape[-2:] == (16, 24), monkeypatch)  # the whole latent: out of memory
    samples = latent(2, 4, 16, 24)
    with caplog.at_level(logging.WARNING):
        image = run(vq_vae, samples)  # on the CPU: no budget, so the whole decode is tried first
    assert failed == [(1, 4, 16, 24)]  # once: the second image goes straight to tiles
    assert "out of memory decoding whole; decoding in tiles" in caplog.text
    movq = vq_vae.movq.module
    plan = vq_decode.tile_plan(movq, 16, 24, NEEDED, None)  # without a budget: tiles of at most half the latent
    assert calls["tiled"] == [plan, plan] and tiling.tile_count(16, 24, plan) > 1
    with torch.inference_mode():
        expected = as_image(DECODE_TILED(movq, samples["samples"], plan))
    assert torch.equal(image, expected)


def test_tiles_shrink_after_out_of_memory(vq_vae, monkeypatch, caplog) -> None:
    movq = vq_vae.movq.module
    failed = fail_when(lambda shape: shape[0] * shape[2] * shape[3] > 32 * 24, monkeypatch)
    samples = latent(1, 4, 40, 24)["samples"]
    with caplog.at_level(logging.WARNING), torch.inference_mode():
        pixels, plan = vq_decode.decode_in_tiles(movq, samples, tiling.TilePlan(64, 64, 2, 2), runtime.HOST)
    # 64² tiles, two at a time (only one: the latent is 40 × 24), then one at a time: too large; then 32² tiles
    assert failed == [(1, 4, 40, 24)] * 2 and plan == tiling.TilePlan(32, 32, 2, 1)
    assert caplog.text.count("MoVQ decode: out of memory with") == 2
    with torch.inference_mode():
        assert torch.equal(pixels, DECODE_TILED(movq, samples, plan))


def test_out_of_memory_in_the_smallest_tiles_says_what_to_do(vq_vae, monkeypatch, caplog) -> None:
    failed = fail_when(lambda shape: True, monkeypatch)
    with caplog.at_level(logging.WARNING), pytest.raises(torch.OutOfMemoryError) as error:
        run(vq_vae, latent(2, 4, 40, 40))
    # whole, then tiles of at most half the latent: under 32 latent pixels a side already, so nothing smaller
    assert failed == [(1, 4, 40, 40), (1, 4, 21, 21)]
    assert caplog.text.count("out of memory decoding whole") == 1
    assert str(error.value).startswith(
        "MoVQ decode: out of memory decoding a 320×320 image even in 168×168 pixel tiles, the smallest it tries. "
        "Free GPU memory"
    )
