"""engine/memory.py + pipelines/kandinsky22/memory.py: the live-tensor tracer counts exactly, and the closed forms
hold the full-size traces.

The closed forms must never promise less than the trace (ComfyUI would make too little room) and should not ask for
much more (it would offload other models for nothing). Bound: 1.5× the trace wherever the trace is at least
10 MiB. That is the 1.25 HEADROOM times 1.2 for the forms themselves, which leave out per-call terms (the
timestep and context embeddings) and, on the math path, take one shape of peak for bf16 and fp32 alike. Below
10 MiB (64–128 px images) those left-out terms dominate, so only the lower bound is checked: the few MiB of
slack there are far below ComfyUI's own reserve.
"""

import functools
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dalle_nodes.engine import memory
from dalle_nodes.models.movq import MoVQ, MoVQConfig
from dalle_nodes.models.prior import PriorConfig, PriorTransformer
from dalle_nodes.models.unet import KandinskyUNet, UNetConfig
from dalle_nodes.pipelines import sampling
from dalle_nodes.pipelines.kandinsky22 import memory as kandinsky22_memory
from dalle_nodes.pipelines.kandinsky22 import stages, starts
from dalle_nodes.pipelines.kandinsky22.embeds import ImageEmbeds

HUB_CONFIGS = Path(__file__).parents[2] / "hub_configs"
DECODER = HUB_CONFIGS / "kandinsky-community--kandinsky-2-2-decoder"
PRIOR = HUB_CONFIGS / "kandinsky-community--kandinsky-2-2-prior"
MIB = 2**20
BOUND = 1.5


def read(path: Path) -> dict:
    return json.loads(path.read_text())


UNET_CONFIG = UNetConfig.from_diffusers(read(DECODER / "unet" / "config.json"))
MOVQ_CONFIG = MoVQConfig.from_diffusers(read(DECODER / "movq" / "config.json"))
PRIOR_CONFIG = PriorConfig.from_diffusers(read(PRIOR / "prior" / "config.json"))


@functools.cache
def on_meta(build, dtype: torch.dtype) -> torch.nn.Module:
    """A full-size module of the real config on the meta device (free), shared by the tests."""
    with torch.device("meta"):
        return build().to(dtype).eval().requires_grad_(False)


def unet(dtype):
    return on_meta(lambda: KandinskyUNet(UNET_CONFIG), dtype)


def movq(dtype):
    return on_meta(lambda: MoVQ(MOVQ_CONFIG), dtype)


def prior(dtype):
    return on_meta(lambda: PriorTransformer(PRIOR_CONFIG), dtype)


def assert_holds(estimate: int, traced: int) -> None:
    assert estimate >= traced, f"estimate {estimate / MIB:.1f} MiB is below the trace {traced / MIB:.1f} MiB"
    if traced >= 10 * MIB:
        assert estimate <= BOUND * traced, f"estimate {estimate / MIB:.1f} MiB > {BOUND} × {traced / MIB:.1f} MiB"


# ---------------------------------------------------------------------------------------------------------------
# The tracer


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_counts_a_known_allocation_pattern_exactly(device):
    def pattern():
        a = torch.empty(MIB, dtype=torch.uint8, device=device)
        b = torch.empty(MIB, dtype=torch.uint8, device=device)
        del a
        c = torch.empty(MIB, dtype=torch.uint8, device=device)  # 2 MiB alive again, never 3
        b.view(2, -1).add_(1)  # views and in-place results hold no new storage
        return b[:10], c

    (_, c), peak = memory.peak_live_bytes(pattern)
    assert peak == 2 * MIB
    assert c.device.type == device


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_ignores_tensors_from_before_the_call(device):
    big = torch.zeros(8 * MIB, dtype=torch.uint8, device=device)

    def uses_big():
        big.mul_(2)
        view = big.view(2, -1)[0]  # 4 MiB of big, still big's storage
        return view[:MIB].clone()  # the only new storage: 1 MiB

    _, peak = memory.peak_live_bytes(uses_big)
    assert peak == MIB


def test_counts_storage_that_grows_in_place():
    def grows():
        t = torch.empty(0, dtype=torch.uint8, device="meta")
        t.resize_(3 * MIB)
        return t

    assert memory.peak_live_bytes(grows)[1] == 3 * MIB


def test_counts_the_intermediates_of_composite_operators():
    """layer_norm runs native_layer_norm, whose per-row mean and 1/std live until layer_norm returns: they count."""
    x = torch.empty(4, 1024, 256, device="meta")
    _, peak = memory.peak_live_bytes(F.layer_norm, x, (256,))
    assert peak == x.numel() * 4 + 2 * (4 * 1024 * 4)


def test_attention_as_the_fused_kernels_and_on_the_math_path():
    q = torch.empty(2, 8, 1024, 64, device="meta", dtype=torch.bfloat16)
    output, lse = q.numel() * 2, 2 * 8 * 1024 * 4
    _, fused = memory.peak_live_bytes(F.scaled_dot_product_attention, q, q, q)
    assert fused == output + lse
    wide = torch.empty(1, 1, 1024, 512, device="meta", dtype=torch.bfloat16)  # MoVQ's head: an fp32 accumulator too
    _, fused_wide = memory.peak_live_bytes(F.scaled_dot_product_attention, wide, wide, wide)
    assert fused_wide == wide.numel() * (2 + 4) + 1024 * 4
    _, math = memory.peak_live_bytes(F.scaled_dot_product_attention, q, q, q, fused_attention=False)
    weights = 2 * 8 * 1024 * 1024
    assert (
        kandinsky22_memory.MATH_ATTENTION_BYTES * weights
        <= math
        <= kandinsky22_memory.MATH_ATTENTION_BYTES * weights + 8 * output
    )


def test_a_full_size_unet_step_traces_on_meta_for_free():
    peak = kandinsky22_memory.traced_unet_step(unet(torch.bfloat16), 2, 96, 96)
    assert 150 * MIB < peak < 250 * MIB  # 189 MiB for 768² with guidance
    assert kandinsky22_memory.traced_unet_step(unet(torch.bfloat16), 8, 96, 96) == pytest.approx(4 * peak, rel=1e-3)


# ---------------------------------------------------------------------------------------------------------------
# The closed forms against full-size traces

UNET_CASES = [  # (dtype, fused attention, rows, latent h, latent w)
    *((torch.bfloat16, True, rows, h, w) for rows, h, w in [(2, 8, 8), (2, 32, 32), (2, 64, 96), (8, 96, 96)]),
    (torch.bfloat16, True, 2, 128, 128),
    (torch.float32, True, 2, 96, 96),
    *((torch.bfloat16, False, rows, h, w) for rows, h, w in [(2, 8, 8), (2, 32, 32), (2, 96, 96), (8, 128, 128)]),
    (torch.float32, False, 2, 32, 32),
    (torch.float32, False, 1, 64, 64),
]


@pytest.mark.parametrize(("dtype", "fused", "rows", "height", "width"), UNET_CASES)
def test_unet_step_estimate_holds_the_trace(dtype, fused, rows, height, width):
    traced = kandinsky22_memory.traced_unet_step(unet(dtype), rows, height, width, fused)
    estimate = kandinsky22_memory.unet_step_bytes(UNET_CONFIG, rows, height, width, dtype, fused_attention=fused)
    assert_holds(estimate, traced)


MOVQ_CASES = [  # (dtype, fused attention, height, width): math past ~1024² is where the attention weights lead
    *((torch.bfloat16, True, h, w) for h, w in [(64, 64), (512, 768), (1024, 1024)]),
    *((torch.bfloat16, False, h, w) for h, w in [(768, 768), (1024, 1024), (1536, 1536)]),
    (torch.float32, True, 768, 768),
    (torch.float32, False, 1536, 1536),
]


@pytest.mark.parametrize(("dtype", "fused", "height", "width"), MOVQ_CASES)
def test_movq_decode_estimate_holds_the_trace(dtype, fused, height, width):
    traced = kandinsky22_memory.traced_movq_decode(movq(dtype), height, width, fused)
    assert_holds(kandinsky22_memory.movq_decode_bytes(MOVQ_CONFIG, height, width, dtype, fused_attention=fused), traced)


@pytest.mark.parametrize(("dtype", "fused", "height", "width"), [(torch.bfloat16, True, 512, 512)] + MOVQ_CASES[3:6])
def test_movq_encode_estimate_holds_the_trace(dtype, fused, height, width):
    traced = kandinsky22_memory.traced_movq_encode(movq(dtype), height, width, fused)
    assert_holds(kandinsky22_memory.movq_encode_bytes(MOVQ_CONFIG, height, width, dtype, fused_attention=fused), traced)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("rows", [2, 8])
def test_prior_step_estimate_holds_the_trace(dtype, fused, rows):
    traced = kandinsky22_memory.traced_prior_step(prior(dtype), rows, fused)
    assert_holds(kandinsky22_memory.prior_step_bytes(PRIOR_CONFIG, rows, dtype, fused_attention=fused), traced)


def test_unet_step_estimate_covers_a_whole_sampler_step():
    """The sampler's own tensors (noise, the guided latent pair, its history) fit in the headroom."""
    model, dtype = unet(torch.bfloat16), torch.bfloat16
    embeds = torch.empty(2, 1280, device="meta", dtype=dtype)
    embeds = ImageEmbeds(embeds, embeds)
    schedule = sampling.decoder_schedule("dpmpp_2m", 2)

    def sample():
        run = stages.DecoderRun(schedule, 4.0)
        start = starts.DecoderStart((96, 96))
        return stages.decoder_stage(stages.StageModel.held(model), embeds, start, run, torch.Generator().manual_seed(0))

    _, traced = memory.peak_live_bytes(sample)
    assert traced > kandinsky22_memory.traced_unet_step(model, 4, 96, 96)
    assert kandinsky22_memory.unet_step_bytes(UNET_CONFIG, 4, 96, 96, dtype) >= traced


def test_movq_decode_estimate_is_linear_in_pixels_with_fused_attention():
    """kandinsky22/vq_decode.py sizes its tiles by the estimate per pixel: that holds with fused attention."""
    whole = kandinsky22_memory.movq_decode_bytes(MOVQ_CONFIG, 1024, 1024, torch.bfloat16)
    quarter = kandinsky22_memory.movq_decode_bytes(MOVQ_CONFIG, 512, 512, torch.bfloat16)
    assert whole == pytest.approx(4 * quarter, abs=4)
    fp32 = kandinsky22_memory.movq_decode_bytes(MOVQ_CONFIG, 1024, 1024, torch.float32)
    assert fp32 == pytest.approx(2 * whole, abs=2)
