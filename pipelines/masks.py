"""The inputs of DALL·E 2's edits, from ComfyUI's MASK and IMAGE to what the Kandinsky 2.2 decoders read: the
inpainting keep-mask at latent size (as KandinskyV22InpaintPipeline makes it) and depth hints at the image's size."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from .checks import check_image, check_mask

log = logging.getLogger(__name__)

REPAINT_THRESHOLD = 0.5  # the reference binarises masks here: a soft edge repaints where it is at least half on
ASPECT_TOLERANCE = 0.02  # a mask or hint this close to the picture's aspect ratio is resized to it; else refused
# The reference grows the repainted region by one latent pixel in 6 of 8 directions (not along the anti-diagonal).
_GROW = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 1.0]])


def fit(pixels: torch.Tensor, height: int, width: int, name: str) -> torch.Tensor:
    """[B, C, h, w] resized to height x width when it has (nearly) that aspect ratio, e.g. a mask drawn on the
    full-size photo of a downscaled picture; another aspect ratio would shift what it marks, so it is refused."""
    got_height, got_width = pixels.shape[-2:]
    if (got_height, got_width) == (height, width):
        return pixels
    if abs(got_width / got_height - width / height) > ASPECT_TOLERANCE * width / height:
        raise ValueError(
            f"The {name} is {got_width}x{got_height}, the picture {width}x{height}: a {name} must cover the picture. "
            f"Make it from the same picture (e.g. Load Image's MASK, or after the same Pad or Upscale Image), or "
            f"resize it to {width}x{height}."
        )
    log.info("Resizing the %s from %dx%d to the picture's %dx%d.", name, got_width, got_height, width, height)
    return F.interpolate(pixels.float(), (height, width), mode="bilinear", antialias=True, align_corners=False)


def keep_mask(mask: torch.Tensor, height: int, width: int, latent_size: tuple[int, int]) -> torch.Tensor:
    """MASK (1 = repaint) for a height x width picture → the inpainting UNet's mask [B, 1, h, w]: 1 where the
    picture is kept. As the reference: binarised at 0.5, sampled (nearest) at latent size, the repainted region
    then grown by a latent pixel so that its border is repainted too."""
    mask = check_mask(mask)[:, None]
    if bool(mask.max() < REPAINT_THRESHOLD):  # e.g. Load Image's 64x64 placeholder for an opaque picture
        return mask.new_ones((mask.shape[0], 1, *latent_size))
    keep = (fit(mask, height, width, "mask") < REPAINT_THRESHOLD).float()
    repaint = 1 - F.interpolate(keep, latent_size, mode="nearest")
    grown = F.conv2d(repaint, _GROW.to(repaint)[None, None], padding=1) > 0
    return (~grown).float()


def repaints_nothing(keep: torch.Tensor) -> bool:
    return bool(keep.min() == 1)


def hint_pixels(hint: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A hint IMAGE (a depth map from DALL·E Depth Map or any preprocessor) → [B, 3, height, width] in 0..1, the
    layout the ControlNet UNet reads; alpha is dropped."""
    pixels = check_image(hint, "hint")[..., :3].permute(0, 3, 1, 2)
    return fit(pixels, height, width, "hint").clamp(0, 1)
