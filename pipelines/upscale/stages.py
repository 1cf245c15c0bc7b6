"""The tiled upscale (engine/tiling.py) and what it needs of a model: its tile plan on the model's grid, a
half-precision (optionally compiled) forward, and its measured activation memory per pixel."""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from spandrel import ImageModelDescriptor

from ...engine import tiling
from ...engine.compiled import Compiled
from ...engine.device import Host, Progress, cpu_has_bf16, is_out_of_memory
from ..checks import check_choice, check_image, check_range

PROBE_SIZE = 128  # pixels a side of the smaller tile that measures a model's activation memory
ACTIVATION_CAP = 2 << 30  # bytes of activations per forward: more does not run faster, and leaves VRAM to others
CPU_TILE_PIXELS = 512 * 512  # on the CPU tiles only bound memory and pace the progress bar
MAX_TILE, MAX_OVERLAP, MAX_SCALE_TO = 8192, 512, 16.0
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


@dataclass(frozen=True)
class UpscaleSettings:
    """How to upscale, checked when made: `tile` input pixels a side (0: the least-work tiles that fit in memory),
    `overlap` pixels shared by neighbouring tiles, `scale_to` the final size as a multiple of the input (0: the
    model's own scale), `compile` through torch.compile."""

    tile: int = 0
    overlap: int = 32
    precision: str = "auto"
    scale_to: float = 0.0
    compile: bool = False

    def __post_init__(self) -> None:
        check_range("tile", self.tile, 0, MAX_TILE)
        check_range("overlap", self.overlap, 0, MAX_OVERLAP)
        check_range("scale_to", self.scale_to, 0.0, MAX_SCALE_TO)
        check_choice("precision", self.precision, PRECISIONS)
        if self.tile and self.overlap * 2 >= self.tile:
            raise ValueError(
                f"overlap ({self.overlap}) must be less than half the tile ({self.tile}); lower it or tile=0."
            )


def choose_plan(
    height: int, width: int, tile: int, overlap: int, max_pixels: int, descriptor: ImageModelDescriptor
) -> tiling.TilePlan:
    """The user's square tiles (tile > 0) or the least-work tiling under `max_pixels`, on the model's grid.

    The overlap is widened to at least one grid step: tile corners on the grid could otherwise meet edge to edge.
    """
    align = descriptor.size_requirements.multiple_of
    overlap = tiling.round_up(overlap, align) if overlap else 0
    if not tile:
        return tiling.plan_tiles(height, width, max_pixels, overlap, align)
    tile = tiling.round_up(max(tile, 2 * overlap + align), align)
    area = min(tile, tiling.round_up(height, align)) * min(tile, tiling.round_up(width, align))
    return tiling.TilePlan(tile, tile, overlap, max(1, max_pixels // area), align)


def compute_dtype(precision: str, descriptor: ImageModelDescriptor, device: torch.device) -> torch.dtype:
    """The precision input → a dtype: auto is fp16 on GPUs where the architecture allows it (as Real-ESRGAN's own
    inference runs), else bf16, else fp32; on the CPU bf16 where it computes bf16 in hardware (4.2x fp32 for
    Real-ESRGAN, 0.3 of 255 apart on average: benchmarks/RESULTS.md), else fp32."""
    if precision == "fp32":
        return torch.float32
    if precision == "auto" and device.type == "cpu":
        return torch.bfloat16 if descriptor.supports_bfloat16 and cpu_has_bf16() else torch.float32
    if precision == "auto":
        if descriptor.supports_half:
            return torch.float16
        return torch.bfloat16 if descriptor.supports_bfloat16 else torch.float32
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    supported = descriptor.supports_half if dtype == torch.float16 else descriptor.supports_bfloat16
    if not supported:
        raise ValueError(f"{descriptor.architecture.name} does not run in {precision}; use auto or fp32.")
    return dtype


# The compiled forward of each descriptor's model. Keyed by the descriptor, whose wrapper refers only to the model:
# the entry goes with the descriptor.
_compiled: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def forward_fn(
    descriptor: ImageModelDescriptor,
    dtype: torch.dtype,
    device: torch.device,
    compile: bool = False,
    is_oom: Callable[[BaseException], bool] = is_out_of_memory,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """[N, 3, h, w] float32 → [N, 3, h·s, w·s] float32 in 0..1, computed in `dtype` under autocast (the stored
    weights stay fp32, which ComfyUI's own upscale node needs), in the layout `memory_format` picks for the device.

    With `compile`, torch.compile fuses the model's concatenations and activations around its convolutions. Shapes
    are static: each tile shape compiles once, then is reused. If compiling fails the eager forward takes over,
    with a warning (an out-of-memory error, as `is_oom` tells, is raised instead: smaller tiles will do).
    """
    layout = memory_format(device)
    if device.type == "cuda":
        descriptor.model.to(memory_format=layout)
    if compile and descriptor not in _compiled:
        _compiled[descriptor] = Compiled(descriptor.model, "GAN upscale", is_oom)

    @torch.inference_mode()  # as inside ComfyUI; outside it (CLI, scripts) autograd would keep every activation
    def forward(tiles: torch.Tensor) -> torch.Tensor:
        tiles = tiles.contiguous(memory_format=layout)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            width, height = tiles.shape[-1], tiles.shape[-2]
            if compile and compiled_ready(descriptor) and descriptor.size_requirements.check(width, height):
                # The descriptor's own call function wraps the model (input scaling for some architectures);
                # spandrel offers no public way to call it with another module.
                return descriptor._call_fn(_compiled[descriptor], tiles).float().clamp_(0, 1)
            return descriptor(tiles).float()

    return forward


def memory_format(device: torch.device) -> torch.memory_format:
    """Channels-last on GPUs and on the CPU, where convolutions run faster in it (on the CPU oneDNN's run 1.25×
    faster, as inside ComfyUI, whose movedim hands the model that layout: benchmarks/RESULTS.md); contiguous
    elsewhere (MPS: not measured). On the CPU the input's layout alone picks the convolutions', so the weights
    are switched only on GPUs."""
    return torch.channels_last if device.type in ("cuda", "cpu") else torch.contiguous_format


def compiled_ready(descriptor: ImageModelDescriptor) -> bool:
    """Whether a compiled forward of this model exists (and has not failed)."""
    return descriptor in _compiled and _compiled[descriptor].ok


_bytes_per_pixel: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def bytes_per_pixel(
    descriptor: ImageModelDescriptor, forward: Callable, device: torch.device, dtype: torch.dtype
) -> float:
    """Peak CUDA memory of a forward per input pixel, measured once per model and dtype: the slope between two
    tile sizes, so fixed costs (weights cast to half precision) do not count per pixel; at least half the larger
    tile's average, in case a workspace makes the smaller one look dearer."""
    measured = _bytes_per_pixel.setdefault(descriptor.model, {})
    if dtype not in measured:
        sizes = [tiling.round_up(max(PROBE_SIZE, descriptor.size_requirements.minimum), 16) * k for k in (1, 2)]
        peaks = []
        for size in sizes:
            probe = torch.rand(1, 3, size, size, device=device)
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            forward(probe)
            peaks.append(torch.cuda.max_memory_allocated(device) - before)
            del probe
        slope = (peaks[1] - peaks[0]) / (sizes[1] ** 2 - sizes[0] ** 2)
        measured[dtype] = 1.25 * max(slope, peaks[1] / sizes[1] ** 2 / 2, 1.0)  # 25% headroom
    return measured[dtype]


def plan(
    descriptor: ImageModelDescriptor,
    x: torch.Tensor,
    settings: UpscaleSettings,
    forward: Callable,
    dtype: torch.dtype,
    host: Host,
) -> tiling.TilePlan:
    """Tiles from the user's size, or the least-work tiling whose activations (of `forward` in `dtype`) fit the
    memory budget."""
    if x.device.type != "cuda":
        max_pixels = CPU_TILE_PIXELS
    else:
        budget = min(ACTIVATION_CAP, host.free_memory(x.device) // 2)
        max_pixels = max(int(budget / bytes_per_pixel(descriptor, forward, x.device, dtype)), 64 * 64)
    return choose_plan(x.shape[2], x.shape[3], settings.tile, settings.overlap, max_pixels, descriptor)


def output_size(height: int, width: int, scale: int, scale_to: float) -> tuple[int, int]:
    """The upscaled (height, width): scale_to × the input's when given, else the model's scale ×."""
    size = (round(height * scale_to), round(width * scale_to)) if scale_to else (height * scale, width * scale)
    if min(size) < 1:
        raise ValueError(f"scale_to {scale_to} makes the image smaller than one pixel.")
    return size


def model_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """IMAGE [B, H, W, 3|4] → [B, 3, H, W] float32 on `device`; with alpha, [2B, 3, H, W]: the alpha channels follow
    as grey images, to come back as the channel mean."""
    x = images.movedim(-1, 1).to(device, torch.float32)
    if images.shape[-1] == 4:
        x = torch.cat([x[:, :3], x[:, 3:].expand(-1, 3, -1, -1)])
    return x


def upscale(
    descriptor: ImageModelDescriptor,
    images: torch.Tensor,
    settings: UpscaleSettings,
    host: Host,
    out_device: torch.device,
    progress: Callable[[int], Progress],
    load: Callable[[], object] = lambda: None,
) -> torch.Tensor:
    """IMAGE [B, H, W, 3|4] in 0..1 → IMAGE of scale × the size (or scale_to ×), on `out_device`, by the model on
    the device `load()` readies it on once the images are checked. Alpha goes through the model as a grey image and
    comes back as its own channel. On out of memory it retries with one tile at a time, then halved tiles.
    `progress(total)` gives the bar of each try."""
    images = check_image(images)
    count, height, width, channels = images.shape
    scale = descriptor.scale
    size = output_size(height, width, scale, settings.scale_to)
    load()
    device = next(descriptor.model.parameters()).device
    dtype = compute_dtype(settings.precision, descriptor, device)
    eager = forward_fn(descriptor, dtype, device)  # probes memory: compiling for probes wastes minutes
    forward = forward_fn(descriptor, dtype, device, True, host.is_out_of_memory) if settings.compile else eager

    x = model_input(images, device)
    result = torch.empty(count, *size, channels, device=out_device)

    def finish(index: int, out: torch.Tensor) -> None:
        if tuple(out.shape[-2:]) != size:
            out = torch.nn.functional.interpolate(out[None], size=size, mode="bicubic", antialias=True)[0]
        out = out.clamp_(0, 1).movedim(0, -1)  # to ComfyUI's channels-last layout before leaving the GPU
        if index < count:
            result[index, ..., :3] = out
        else:
            result[index - count, ..., 3] = out.mean(-1)

    def attempt(tiles: tiling.TilePlan) -> None:
        bar = progress(math.ceil(tiling.tile_count(height, width, tiles) * len(x) / tiles.batch))
        try:
            tiling.run_tiled(forward, x, scale, tiles, finish, bar.update, fixed_batch=compiled_ready(descriptor))
        finally:
            bar.close()

    def retry(tiles: tiling.TilePlan, smaller: tiling.TilePlan) -> None:
        logging.warning("GAN upscale: out of memory with %s; retrying with %s", tiles, smaller)
        host.free_cache()

    tiling.shrink_on_oom(attempt, plan(descriptor, x, settings, eager, dtype, host), host.is_out_of_memory, retry)
    return result
