"""Where the decoder starts: the latent sampling begins from, and what an edit decoder reads beside it.

Four starts, one per kind of decoding: text-to-image (noise of a size), image-to-image (a picture's MoVQ latents
noised to the schedule's start), inpainting (the picture's latents with a mask of what to repaint: the inpainting
UNet reads them beside the noise, as KandinskyV22InpaintPipeline does) and the depth ControlNet's hint. Sizes are
multiples of 64 pixels: MoVQ downsamples by 8 and the UNet by 8 more.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import torch

from .. import masks, sampling

LATENT_CHANNELS = 4
LATENT_SCALE = 8  # MoVQ's downsampling
MIN_SIZE, MAX_SIZE, SIZE_STEP = 64, 4096, 64  # pixels
DEFAULT_SIZE = 768
# UNetConfig.kind → how messages name it
KIND_NAMES = {"text2image": "text-to-image", "inpaint": "an inpainting one", "controlnet": "a depth ControlNet"}
log = logging.getLogger(__name__)


def latent_size(width: int, height: int) -> tuple[int, int]:
    """Latent (height, width) for an image size: MoVQ downsamples by 8, and sizes must be multiples of 64."""
    for name, value in (("width", width), ("height", height)):
        if not (_is_int(value) and value % SIZE_STEP == 0 and MIN_SIZE <= value <= MAX_SIZE):
            finite = isinstance(value, (int, float)) and math.isfinite(value)
            nearest = max(MIN_SIZE, min(MAX_SIZE, round(value / SIZE_STEP) * SIZE_STEP)) if finite else 768
            raise ValueError(
                f"{name} {value} is not supported: use a multiple of {SIZE_STEP} between {MIN_SIZE} and "
                f"{MAX_SIZE} (e.g. {nearest})."
            )
    return height // LATENT_SCALE, width // LATENT_SCALE


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_sampled_size(samples: torch.Tensor) -> None:
    """Latents [B, C, h, w] of a size the decoder samples (that of an image latent_size takes)."""
    height, width = samples.shape[2:]
    try:
        latent_size(width * LATENT_SCALE, height * LATENT_SCALE)
    except ValueError as error:
        raise ValueError(
            f"The latent is {width}x{height}, an image of {width * LATENT_SCALE}x{height * LATENT_SCALE} px: the "
            f"decoder cannot sample that size. {error}"
        ) from None


@dataclass(frozen=True)
class DecoderStart:
    """What decoding starts from. `size`: the latent (h, w) of text-to-image; `latent`: MoVQ latents [1|B, 4, h, w]
    (float, checked with check_sampled_size), the image-to-image start or the picture to inpaint; `repaint`: a MASK
    [1|B, H, W] (1 = repaint) for the inpainting decoder; `hint`: an IMAGE [1|B, H, W, 3] for the depth ControlNet."""

    size: tuple[int, int] | None = None
    latent: torch.Tensor | None = None
    repaint: torch.Tensor | None = None
    hint: torch.Tensor | None = None

    def __repr__(self) -> str:  # ComfyUI puts stage arguments into error reports: keep tensors out of them
        given = [name for name in ("latent", "repaint", "hint") if getattr(self, name) is not None]
        return f"DecoderStart({self.size or 'latent'}{', ' if given else ''}{', '.join(given)})"

    @property
    def latent_hw(self) -> tuple[int, int]:
        return tuple(self.latent.shape[2:]) if self.latent is not None else self.size


def check_start(start: DecoderStart, kind: str, denoise_start: int) -> None:
    """The start fits a decoder of this kind (UNetConfig.kind) and a schedule that starts at `denoise_start`."""
    if (start.latent is None) == (start.size is None):
        raise ValueError("Give the decoder a latent size (text-to-image) or a latent to start from, not both.")
    if start.latent is None and denoise_start:
        raise ValueError("denoise below 1 needs a latent to start from (the picture's, from movq_encode).")
    wants = {"inpaint": "repaint", "controlnet": "hint"}
    for name in ("repaint", "hint"):
        if (getattr(start, name) is not None) != (wants.get(kind) == name):
            verb = "needs" if wants.get(kind) == name else "cannot read"
            raise ValueError(f"A decoder of kind '{kind}' {verb} a {name} start.")
    if kind == "inpaint" and start.latent is None:
        raise ValueError("The inpainting decoder needs the picture's latent to repaint.")


@dataclass(frozen=True)
class Edit:
    """What an edit decoder reads beside the noisy latent, for every row (batches of 1 serve them all). Inpainting:
    the picture's latents [B, 4, h, w], the keep-mask [B, 1, h, w] (1 = kept) and the unit noise the picture is
    noised with between steps. Depth ControlNet: the hint [B, 3, 8h, 8w] in 0..1."""

    picture: torch.Tensor | None = None
    keep: torch.Tensor | None = None
    noise: torch.Tensor | None = None
    hint: torch.Tensor | None = None

    def __repr__(self) -> str:
        return f"Edit({', '.join(name for name in ('picture', 'hint') if getattr(self, name) is not None)})"


def _check_batch(name: str, batch: int, rows: int) -> None:
    if batch not in (1, rows):
        raise ValueError(f"The {name} batch ({batch}) must be 1 or match the embeddings ({rows}).")


def keep_mask(start: DecoderStart, rows: int) -> torch.Tensor | None:
    """An inpainting start's keep-mask [1|B, 1, h, w] (1 = kept) on the latent grid (masks.keep_mask); None for
    the other starts."""
    if start.repaint is None:
        return None
    check_sampled_size(start.latent)
    height, width = (side * LATENT_SCALE for side in start.latent_hw)
    keep = masks.keep_mask(start.repaint, height, width, start.latent_hw)
    for name, batch in (("picture latent", start.latent.shape[0]), ("mask", keep.shape[0])):
        _check_batch(name, batch, rows)
    return keep


def unchanged_latents(start: DecoderStart, keep: torch.Tensor | None, rows: int) -> torch.Tensor | None:
    """The picture's latents for every row when an inpainting start's keep-mask (keep_mask's) repaints nothing
    (there is nothing to sample), else None."""
    if keep is None or not masks.repaints_nothing(keep):
        return None
    log_repaints_nothing()
    return start.latent.float().expand(rows, -1, -1, -1).clone()


def log_repaints_nothing() -> None:
    log.info(
        "The mask repaints nothing: it is below 0.5 everywhere (no pixel is at least half white, or half "
        "transparent). The picture is returned unchanged."
    )


def initial_latents(
    start: DecoderStart,
    keep: torch.Tensor | None,
    rows: int,
    schedule: sampling.DecoderSchedule,
    generator: torch.Generator,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, Edit | None]:
    """The latent sampling starts from, on `device` in `dtype`, and the Edit the UNet reads beside it (None for
    text-to-image and image-to-image); `keep` is an inpainting start's keep_mask. The noise is drawn on the CPU in
    float32 and rounded as diffusers' pipelines round it (cast, then scaled), so a seed gives the same image on any
    device."""
    if keep is not None:
        return _inpaint_start(Edit(start.latent, keep), schedule, rows, generator, device, dtype)
    if start.latent is None:
        x = sampling.initial_noise((rows, LATENT_CHANNELS, *start.size), schedule, generator, device, dtype)
    else:
        check_sampled_size(start.latent)
        _check_batch("latent", start.latent.shape[0], rows)
        x = sampling.noise_latent(start.latent.to(device, dtype).expand(rows, -1, -1, -1), schedule, generator)
    if start.hint is None:
        return x, None
    height, width = (side * LATENT_SCALE for side in x.shape[2:])
    pixels = masks.hint_pixels(start.hint, height, width)
    _check_batch("hint", pixels.shape[0], rows)
    return x, Edit(hint=pixels)


def _inpaint_start(
    edit: Edit, schedule: sampling.DecoderSchedule, rows: int, generator: torch.Generator, device, dtype
) -> tuple[torch.Tensor, Edit]:
    """Inpainting starts from noise (denoise 1, the reference's only mode), or with denoise below 1 from the picture
    noised to the schedule's start, so the repainted region keeps some of what was there. The Edit returned holds
    the noise, which noises the kept picture between steps: unit noise (the reference reuses its scaled starting
    latent, the same for every sampler but euler_ancestral, where it would over-noise)."""
    picture = edit.picture.to(device, dtype).expand(rows, -1, -1, -1)
    noise = sampling.randn(picture.shape, generator, device, dtype)
    if schedule.start:
        x = sampling.noise_to(picture, noise, schedule, schedule.start)
    else:
        x = noise * schedule.init_noise_sigma
    return x, replace(edit, noise=noise)
