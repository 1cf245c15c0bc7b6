"""GAN upscalers (Real-ESRGAN and every other single-image architecture spandrel knows): safe loading, and what
the tiled upscale (engine/tiling.py) needs of a model: its tile plan on the model's grid, a half-precision
forward, and its measured activation memory per pixel.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError, canonicalize_state_dict

from ..engine import tiling
from ..engine.compiled import Compiled
from ..engine.device import PLAIN, Host, Progress, console_progress, default_device, is_out_of_memory
from ..engine.hub import (
    CheckpointError,
    ConsoleDownload,
    DownloadProgress,
    Source,
    check_tensor_types,
    default_store,
    error_summary,
    fetch_file,
    read_pickle,
    read_state_dict,
    readable_file,
    source_from_input,
)
from ..engine.images import from_pil, to_pil
from .checks import check_choice, check_image, check_range

PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
CUSTOM = "custom"
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
        state = read_state_dict(readable_file(path))
    elif path.suffix in PICKLE_SUFFIXES:
        state = read_pickle(readable_file(path))  # Real-ESRGAN nests the weights under params_ema / params
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
        raise CheckpointError(
            f"'{path.name}' looks like an upscaler but its tensors do not fit the architecture spandrel detected "
            f"({error_summary(error)}); the file is damaged or a variant spandrel does not know."
        ) from error
    # spandrel casts what it loads into the network's floats: integer tensors must be its integer buffers (under the
    # names spandrel gives them: prefixes such as "module." dropped)
    canonical = canonicalize_state_dict(state)
    stored = {key: value.dtype for key, value in canonical.items() if isinstance(value, torch.Tensor)}
    check_tensor_types(stored, _expected_tensors(descriptor.model, stored), f"upscaler '{path}'")
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


def _expected_tensors(model: torch.nn.Module, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """The network's tensor for each name of the file, a float stand-in where the network has no such name: spandrel
    renames the keys of some formats (old ESRGAN files), and an integer tensor the network does not hold under its
    own name cannot be one of its integer buffers."""
    tensors = model.state_dict()
    return {name: tensors.get(name, _FLOAT) for name in names}


_FLOAT = torch.empty(0)


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
        _compiled[descriptor] = Compiled(descriptor.model, "DalleGANUpscale", is_oom)

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


def locate(
    preset: str, repo_id: str, filename: str, revision: str, store: Path | None, progress: DownloadProgress
) -> Path:
    """The weight file of a preset, or of `custom`: repo_id + filename (a Hub repo or local folder), or an empty
    repo_id and a local file's full path. `progress` hears about its download."""
    if preset in PRESETS:
        known = PRESETS[preset]
        return fetch_file(Source(known.repo, None, store, progress), *_split(known.filename))
    if preset != CUSTOM:
        raise ValueError(f"Unknown upscaler preset '{preset}': choose one of {', '.join(PRESETS)} or custom.")
    if not filename.strip():
        raise ValueError("custom upscaler: give the filename of the weight file (and the repo_id it is in).")
    if not repo_id.strip():
        path = Path(filename.strip()).expanduser()
        if not path.is_file():
            raise CheckpointError(
                f"Upscaler file '{path}' does not exist. Give a full path to a local file, or a repo_id."
            )
        return path
    return fetch_file(source_from_input(repo_id, revision, store, progress), *_split(filename))


def _split(filename: str) -> tuple[str, str]:
    folder, _, name = filename.strip().strip("/").rpartition("/")
    return folder, name


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
    scale, scale_to = descriptor.scale, settings.scale_to
    size = (round(height * scale_to), round(width * scale_to)) if scale_to else (height * scale, width * scale)
    if min(size) < 1:
        raise ValueError(f"scale_to {scale_to} makes the image smaller than one pixel.")
    load()
    device = next(descriptor.model.parameters()).device
    dtype = compute_dtype(settings.precision, descriptor, device)
    eager = forward_fn(descriptor, dtype, device)  # probes memory: compiling for probes wastes minutes
    forward = forward_fn(descriptor, dtype, device, True, host.is_out_of_memory) if settings.compile else eager

    x = images.movedim(-1, 1).to(device, torch.float32)
    if channels == 4:  # alpha goes through the model as a grey image and comes back as the channel mean
        x = torch.cat([x[:, :3], x[:, 3:].expand(-1, 3, -1, -1)])
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
        logging.warning("DalleGANUpscale: out of memory with %s; retrying with %s", tiles, smaller)
        host.free_cache()

    tiling.shrink_on_oom(attempt, plan(descriptor, x, settings, eager, dtype, host), host.is_out_of_memory, retry)
    return result


@dataclass
class Upscaler:
    """GAN upscaling in plain Python: the same tiled upscale the DALL·E GAN Upscale node runs, PIL in, PIL out.

    ```python
    big = Upscaler.load("RealESRGAN_x4plus").upscale(images)
    ```
    """

    descriptor: ImageModelDescriptor

    @classmethod
    def load(
        cls, preset: str = "RealESRGAN_x4plus", repo_id: str = "", filename: str = "", revision: str = "main"
    ) -> Upscaler:
        """A preset (see PRESETS), or `custom` with repo_id + filename (Hub repo or local folder), or an empty
        repo_id and a local file's full path."""
        path = locate(preset, repo_id, filename, revision, default_store(), ConsoleDownload(1))
        descriptor = load_upscaler(path)
        descriptor.model.to(default_device())
        return cls(descriptor)

    def upscale(
        self,
        images: Image.Image | list[Image.Image],
        *,
        tile: int = 0,
        overlap: int = 32,
        precision: str = "auto",
        scale_to: float = 0.0,
        compile: bool = False,
    ) -> list[Image.Image]:
        """Images of one size (RGB or RGBA) → upscaled images, scale × (or scale_to ×) the size."""
        settings = UpscaleSettings(tile, overlap, precision, scale_to, compile)
        progress = lambda total: console_progress(total, "upscale")  # noqa: E731
        return to_pil(upscale(self.descriptor, from_pil(images), settings, PLAIN, torch.device("cpu"), progress))
