"""Upscaler checkpoints: the presets known to work, where a preset's (or a custom) file is, and reading it safely
(safetensors, or pickles without running code) into a spandrel descriptor whose tensors are checked."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError, canonicalize_state_dict

from ...engine.checkpoints import (
    CheckpointError,
    check_tensor_types,
    error_summary,
    read_pickle,
    read_state_dict,
    readable_file,
)
from ...engine.hub import DownloadProgress, Source, fetch_file, source_from_input

PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
CUSTOM = "custom"


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
            f"'{path.name}' is not a weight file the upscaler reads: use .safetensors (preferred) or "
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
