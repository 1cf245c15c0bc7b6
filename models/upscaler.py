"""GAN upscalers (Real-ESRGAN and every other single-image architecture spandrel knows): safe loading, and a
tiled forward that is seam-free, batched and memory-bounded.

Tiles overlap; each pair of neighbours is cross-faded over a band in the middle of their overlap, so every
output pixel comes from tiles that saw at least a quarter of the overlap of context on that side, and the
blend weights sum to exactly one everywhere.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError, canonicalize_state_dict

from .hub import CheckpointError, read_pickle, read_state_dict

PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
PROBE_SIZE = 128  # pixels a side of the smaller tile that measures a model's activation memory


@dataclass(frozen=True)
class Preset:
    """A known-good checkpoint: where it lives on the Hub and what it is for."""

    repo: str
    filename: str
    scale: int
    use: str
    license: str = "BSD-3-Clause"


# Repos and files as Hub file listings show them; safetensors conversions where a trustworthy one exists,
# otherwise the original pickles (read with weights_only=True).
PRESETS = {
    "RealESRGAN_x4plus": Preset(
        "Comfy-Org/Real-ESRGAN_repackaged", "RealESRGAN_x4plus.safetensors", 4, "photos, general (RRDBNet, 23 blocks)"
    ),
    "RealESRGAN_x2plus": Preset(
        "nateraw/real-esrgan", "RealESRGAN_x2plus.pth", 2, "photos, general (RRDBNet, pixel-unshuffle)"
    ),
    "realesr-general-x4v3": Preset(
        "jhj0517/realesr-general-x4v3", "realesr-general-x4v3.pth", 4, "general, fast (SRVGGNetCompact)"
    ),
    "RealESRGAN_x4plus_anime_6B": Preset(
        "halffried/gyre_upscalers",
        "realesrgan_x4plus_anime/RealESRGAN_x4plus_anime_6B.safetensors",
        4,
        "anime and illustrations (RRDBNet, 6 blocks)",
    ),
    "realesr-animevideov3": Preset(
        "leonelhs/realesrgan", "realesr-animevideov3.pth", 4, "anime, fastest (SRVGGNetCompact, 16 convs)"
    ),
    "4x-UltraSharp": Preset(
        "Kim2091/UltraSharp", "4x-UltraSharp.safetensors", 4, "sharp detail (ESRGAN)", "CC-BY-NC-SA-4.0"
    ),
    "SwinIR-L_x4_GAN": Preset(
        "halffried/gyre_upscalers",
        "swin_lx4/003_realSR_BSRGAN_DFOWMFC_s64w8_SwinIR-L_x4_GAN.safetensors",
        4,
        "real-world photos, slow (SwinIR-L)",
        "Apache-2.0",
    ),
}


def load_upscaler(path: Path) -> ImageModelDescriptor:
    """A weight file → a spandrel descriptor in fp32 on the CPU, or a CheckpointError naming the file."""
    if path.suffix == ".safetensors":
        state = read_state_dict(path)
    elif path.suffix in PICKLE_SUFFIXES:
        state = read_pickle(path)  # Real-ESRGAN nests the weights under params_ema / params
        if not isinstance(state, dict):
            raise CheckpointError(f"'{path.name}' holds no state dict, so it is not a supported upscaler.")
        state = canonicalize_state_dict(state)
    else:
        raise CheckpointError(
            f"'{path.name}' is not a weight file this node reads: use .safetensors (preferred) or "
            f"{', '.join(PICKLE_SUFFIXES)}."
        )
    try:
        descriptor = ModelLoader().load_from_state_dict(state)
    except UnsupportedModelError as error:
        raise CheckpointError(
            f"'{path.name}' is not a supported upscaler: spandrel recognises no upscaling architecture in its "
            "tensors (is it a diffusion or text model?). Pick a Real-ESRGAN, ESRGAN, SwinIR … file."
        ) from error
    except (KeyError, IndexError, TypeError, RuntimeError, ValueError, AssertionError) as error:
        first_line = (str(error).splitlines() or [type(error).__name__])[0]
        raise CheckpointError(
            f"'{path.name}' looks like an upscaler but its tensors do not fit the architecture spandrel detected "
            f"({first_line}); the file is damaged or a variant spandrel does not know."
        ) from error
    if not isinstance(descriptor, ImageModelDescriptor):
        raise CheckpointError(
            f"'{path.name}' is a {descriptor.architecture.name} model for {descriptor.purpose}, not a single-image "
            "upscaler."
        )
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise CheckpointError(
            f"'{path.name}' maps {descriptor.input_channels} to {descriptor.output_channels} channels; "
            "only RGB → RGB upscalers are supported."
        )
    descriptor.model.requires_grad_(False)
    return descriptor.eval()


@dataclass(frozen=True)
class TilePlan:
    """Tile height and width in input pixels, overlap between neighbours, tiles per forward pass, and the grid
    that tile corners and the image size must sit on (2 or 4 for pixel-unshuffle models, whose output depends on
    how the input lines up with the unshuffle grid)."""

    height: int
    width: int
    overlap: int
    batch: int
    align: int = 1

    def shrunk(self) -> TilePlan | None:
        """The next plan to try after running out of memory: one tile at a time, then halved tiles."""
        if self.batch > 1:
            return TilePlan(self.height, self.width, self.overlap, 1, self.align)
        height, width = (max(_round_up(side // 2, self.align), 32) for side in (self.height, self.width))
        if (height, width) == (self.height, self.width):
            return None
        return TilePlan(height, width, min(self.overlap, min(height, width) // 4), 1, self.align)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def plan_tiles(height: int, width: int, max_pixels: int, overlap: int, align: int = 1) -> TilePlan:
    """The tiling of an image with the least total tile area whose tiles hold at most `max_pixels` each.

    Tiles need not be square: a 768 × 768 image under a 400k-pixel limit becomes two 768 × 400 tiles (4% extra
    work) rather than four 512² ones (78%).
    """
    height, width = _round_up(height, align), _round_up(width, align)

    def tile_length(size: int, parts: int) -> int:
        return size if parts == 1 else _round_up(math.ceil((size + (parts - 1) * overlap) / parts), align)

    best: tuple[int, int, int] | None = None
    for rows in range(1, 65):
        tile_h = tile_length(height, rows)
        if rows > 1 and tile_h < 4 * overlap:  # the cross-fade bands of a tile's two sides would meet
            break
        for cols in range(1, 65):
            tile_w = tile_length(width, cols)
            if cols > 1 and tile_w < 4 * overlap:
                break
            if tile_h * tile_w <= max_pixels:
                area = len(axis_starts(height, tile_h, overlap, align)) * len(
                    axis_starts(width, tile_w, overlap, align)
                )
                area *= tile_h * tile_w
                if best is None or area < best[0]:
                    best = (area, tile_h, tile_w)
                break  # more columns only add overlap for this row count
    if best is None:  # nothing fits: the smallest sensible tiles
        return TilePlan(min(height, 64), min(width, 64), min(overlap, 16), 1, align)
    _, tile_h, tile_w = best
    return TilePlan(tile_h, tile_w, overlap, max(1, max_pixels // (tile_h * tile_w)), align)


def axis_starts(size: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Evenly spread tile starts along one axis, on the `align` grid (size and tile are multiples of it);
    neighbours overlap by at least `overlap`.

    Starts are rounded down to the grid; with a stride bound that is itself on the grid, no stride grows by it.
    """
    if size <= tile:
        return [0]
    step = max((tile - overlap) // align * align, align)  # on the grid, so rounding down never widens a stride
    count = math.ceil((size - tile) / step) + 1
    return [math.floor(i * (size - tile) / (count - 1) / align) * align for i in range(count)]


def axis_weights(size: int, tile: int, overlap: int, scale: int, align: int = 1) -> list[torch.Tensor]:
    """Per tile, its blend weight at each output pixel of the tile along one axis; they sum to one per pixel.

    Between neighbours the cross-fade band is half the nominal overlap wide and centred in their actual
    overlap, so each tile contributes only where it had a quarter of the overlap of context beyond the pixel.
    """
    starts = axis_starts(size, tile, overlap, align)
    length = min(size, tile)
    x = (torch.arange(size * scale, dtype=torch.float64) + 0.5) / scale  # output pixel centres, input units
    seams = [(nxt + start + length) / 2 for start, nxt in zip(starts, starts[1:], strict=False)]
    half_band = overlap / 4

    def fade_in(seam: float) -> torch.Tensor:
        if half_band == 0:
            return (x >= seam).double()
        return ((x - seam + half_band) / (2 * half_band)).clamp(0, 1)

    weights = []
    for i in range(len(starts)):
        w = torch.ones_like(x)
        if i > 0:
            w = w * fade_in(seams[i - 1])
        if i < len(starts) - 1:
            w = w * (1 - fade_in(seams[i]))
        weights.append(w)
    total = torch.stack(weights).sum(0)  # one, except where a small tile's two bands meet: normalise there
    return [
        (w / total)[start * scale : (start + length) * scale].float() for w, start in zip(weights, starts, strict=True)
    ]


def pad_to_grid(images: torch.Tensor, align: int) -> torch.Tensor:
    """Pad the bottom and right edges to a multiple of `align` the way spandrel does: mirrored where the image is
    large enough, repeated edge pixels beyond that."""
    height, width = images.shape[-2:]
    pad_h = _round_up(height, align) - height
    pad_w = _round_up(width, align) - width
    mirror_h, mirror_w = min(pad_h, height - 1), min(pad_w, width - 1)
    if mirror_h or mirror_w:
        images = torch.nn.functional.pad(images, (0, mirror_w, 0, mirror_h), mode="reflect")
    if pad_h > mirror_h or pad_w > mirror_w:
        images = torch.nn.functional.pad(images, (0, pad_w - mirror_w, 0, pad_h - mirror_h), mode="replicate")
    return images


def upscale_tiled(
    forward: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    scale: int,
    plan: TilePlan,
    finish: Callable[[int, torch.Tensor], None],
    on_batch: Callable[[], None] = lambda: None,
    fixed_batch: bool = False,
) -> None:
    """Upscale [B, C, H, W] images by `scale`, tiles batched `plan.batch` at a time through `forward`.

    Each image is assembled in float32 on the images' device and handed to `finish(index, [C, H·s, W·s])` as
    soon as its last tile is in, so only the images in flight are held at full size. `fixed_batch` pads the last
    batch to full size, so that a compiled forward sees one shape only.
    """
    count, channels, height, width = images.shape
    images = pad_to_grid(images, plan.align)
    padded_h, padded_w = images.shape[-2:]
    tile_h, tile_w = min(padded_h, plan.height), min(padded_w, plan.width)
    ys = axis_starts(padded_h, tile_h, plan.overlap, plan.align)
    xs = axis_starts(padded_w, tile_w, plan.overlap, plan.align)
    wy = [w.to(images.device) for w in axis_weights(padded_h, tile_h, plan.overlap, scale, plan.align)]
    wx = [w.to(images.device) for w in axis_weights(padded_w, tile_w, plan.overlap, scale, plan.align)]
    tiles = [(b, i, j) for b in range(count) for i in range(len(ys)) for j in range(len(xs))]
    batch_size = min(plan.batch, len(tiles))

    canvases: dict[int, torch.Tensor] = {}
    for first in range(0, len(tiles), batch_size):
        chunk = tiles[first : first + batch_size]
        batch = torch.stack([images[b, :, ys[i] : ys[i] + tile_h, xs[j] : xs[j] + tile_w] for b, i, j in chunk])
        if fixed_batch and len(chunk) < batch_size:
            batch = torch.cat([batch, batch[-1:].expand(batch_size - len(chunk), -1, -1, -1)])
        out = forward(batch)
        for (b, i, j), tile in zip(chunk, out[: len(chunk)], strict=True):
            if b not in canvases:
                canvases[b] = images.new_zeros(channels, padded_h * scale, padded_w * scale, dtype=torch.float32)
            region = canvases[b][:, ys[i] * scale : (ys[i] + tile_h) * scale, xs[j] * scale : (xs[j] + tile_w) * scale]
            region.addcmul_(tile, wy[i][:, None] * wx[j][None, :])
            if (i, j) == (len(ys) - 1, len(xs) - 1):
                finish(b, canvases.pop(b)[:, : height * scale, : width * scale])
        on_batch()


def tile_count(height: int, width: int, plan: TilePlan) -> int:
    """Tiles per image under `plan` (for progress bars)."""
    height, width = _round_up(height, plan.align), _round_up(width, plan.align)
    rows = axis_starts(height, min(height, plan.height), plan.overlap, plan.align)
    return len(rows) * len(axis_starts(width, min(width, plan.width), plan.overlap, plan.align))


def choose_plan(
    height: int, width: int, tile: int, overlap: int, max_pixels: int, descriptor: ImageModelDescriptor
) -> TilePlan:
    """The user's square tiles (tile > 0) or the least-work tiling under `max_pixels`, on the model's grid.

    The overlap is widened to at least one grid step: tile corners on the grid could otherwise meet edge to edge.
    """
    align = descriptor.size_requirements.multiple_of
    overlap = _round_up(overlap, align) if overlap else 0
    if not tile:
        return plan_tiles(height, width, max_pixels, overlap, align)
    tile = _round_up(max(tile, 2 * overlap + align), align)
    area = min(tile, _round_up(height, align)) * min(tile, _round_up(width, align))
    return TilePlan(tile, tile, overlap, max(1, max_pixels // area), align)


def compute_dtype(precision: str, descriptor: ImageModelDescriptor, device: torch.device) -> torch.dtype:
    """The precision input → a dtype: auto is fp16 on GPUs where the architecture allows it (as Real-ESRGAN's own
    inference runs), else bf16, else fp32; fp32 on the CPU."""
    if precision == "fp32" or (precision == "auto" and device.type == "cpu"):
        return torch.float32
    if precision == "auto":
        if descriptor.supports_half:
            return torch.float16
        return torch.bfloat16 if descriptor.supports_bfloat16 else torch.float32
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    supported = descriptor.supports_half if dtype == torch.float16 else descriptor.supports_bfloat16
    if not supported:
        raise ValueError(f"{descriptor.architecture.name} does not run in {precision}; use auto or fp32.")
    return dtype


# torch.compile's wrapper of each descriptor's model (None once compiling failed). Keyed by the descriptor, whose
# wrapper refers only to the model: the entry goes with the descriptor.
_compiled: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def forward_fn(
    descriptor: ImageModelDescriptor,
    dtype: torch.dtype,
    device: torch.device,
    compile: bool = False,
    is_oom: Callable[[BaseException], bool] = lambda error: isinstance(error, torch.OutOfMemoryError),
) -> Callable[[torch.Tensor], torch.Tensor]:
    """[N, 3, h, w] float32 → [N, 3, h·s, w·s] float32 in 0..1, computed in `dtype` under autocast (the stored
    weights stay fp32, which ComfyUI's own upscale node needs), channels-last on GPUs, where convolutions run
    faster (the model's weights are switched to that layout here, once).

    With `compile`, torch.compile fuses the model's concatenations and activations around its convolutions. Shapes
    are static: each tile shape compiles once, then is reused. If compiling fails the eager forward takes over,
    with a warning (an out-of-memory error, as `is_oom` tells, is raised instead: smaller tiles will do).
    """
    layout = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    if device.type == "cuda":
        descriptor.model.to(memory_format=layout)
    if compile and descriptor not in _compiled:
        _compiled[descriptor] = torch.compile(descriptor.model, dynamic=False)

    @torch.inference_mode()  # as inside ComfyUI; outside it (CLI, scripts) autograd would keep every activation
    def forward(tiles: torch.Tensor) -> torch.Tensor:
        tiles = tiles.contiguous(memory_format=layout)
        compiled = _compiled.get(descriptor) if compile else None
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            if compiled is not None and descriptor.size_requirements.check(tiles.shape[-1], tiles.shape[-2]):
                try:
                    # The descriptor's own call function wraps the model (input scaling for some architectures);
                    # spandrel offers no public way to call it with another module.
                    return descriptor._call_fn(compiled, tiles).float().clamp_(0, 1)
                except Exception as error:  # no compiler toolchain, an unsupported op …: eager still works
                    if is_oom(error):
                        raise
                    logging.warning("DalleGANUpscale: torch.compile failed (%s); running uncompiled", error)
                    _compiled[descriptor] = None
            return descriptor(tiles).float()

    return forward


def compiled_ready(descriptor: ImageModelDescriptor) -> bool:
    """Whether a compiled forward of this model exists (and has not failed)."""
    return _compiled.get(descriptor) is not None


_bytes_per_pixel: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def bytes_per_pixel(
    descriptor: ImageModelDescriptor, forward: Callable, device: torch.device, dtype: torch.dtype
) -> float:
    """Peak CUDA memory of a forward per input pixel, measured once per model and dtype: the slope between two
    tile sizes, so fixed costs (weights cast to half precision) do not count per pixel; at least half the larger
    tile's average, in case a workspace makes the smaller one look dearer."""
    measured = _bytes_per_pixel.setdefault(descriptor.model, {})
    if dtype not in measured:
        sizes = [_round_up(max(PROBE_SIZE, descriptor.size_requirements.minimum), 16) * k for k in (1, 2)]
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
