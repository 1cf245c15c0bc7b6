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


def fit_mask(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A MASK [B, 1, h, w] (1 = repaint) fitted to height x width as `fit` does, keeping every marked pixel: where
    the smoothing resize drops a thin stroke below the threshold, the pixels it covers are set to the threshold, so
    a line drawn on a larger photo still repaints."""
    fitted = fit(mask, height, width, "mask")
    return fitted if fitted.shape == mask.shape else keep_marks(mask, fitted)


def keep_marks(mask: torch.Tensor, resized: torch.Tensor) -> torch.Tensor:
    """`resized`, a smoothing resize of the MASK [B, 1, h, w], with each pixel that covers a marked pixel of `mask`
    raised to the threshold (a resize averages a stroke thinner than its scale below it)."""
    touched = F.adaptive_max_pool2d((mask >= REPAINT_THRESHOLD).float(), tuple(resized.shape[-2:])) > 0
    return torch.where(touched & (resized < REPAINT_THRESHOLD), REPAINT_THRESHOLD, resized)


def keep_mask(mask: torch.Tensor, height: int, width: int, latent_size: tuple[int, int]) -> torch.Tensor:
    """MASK (1 = repaint) for a height x width picture → the inpainting UNet's mask [B, 1, h, w]: 1 where the
    picture is kept. As the reference: binarised at 0.5, sampled (nearest) at latent size, the repainted region
    then grown by a latent pixel so that its border is repainted too. One deliberate difference: the reference's
    samples (every 8 px) miss a thinner stroke between them, and it returns the picture unchanged; here the latent
    cells of marked pixels it does not repaint are added before the growth, so a mask that marks pixels repaints
    them. A mask whose marked pixels the reference repaints gets the reference's keep-mask exactly."""
    mask = check_mask(mask)[:, None]
    if marks_nothing(mask):  # e.g. Load Image's 64x64 placeholder for an opaque picture
        return mask.new_ones((mask.shape[0], 1, *latent_size))
    marked = (fit_mask(mask, height, width) >= REPAINT_THRESHOLD).float()
    repaint = F.interpolate(marked, latent_size, mode="nearest")
    missed = (F.adaptive_max_pool2d(marked, latent_size) > 0) & ~_grown(repaint)
    if bool(missed.any()):
        log.info(
            "Thin strokes of the mask that the decoder's %d px grid misses were widened to the grid's cells they "
            "touch, so that they are repainted.",
            height // latent_size[0],
        )
        repaint = repaint.logical_or(missed).float()
    return (~_grown(repaint)).float()


def _grown(repaint: torch.Tensor) -> torch.Tensor:
    """The repainted latent pixels [B, 1, h, w] (1 = repaint) grown as the reference grows them (_GROW), as bools."""
    return F.conv2d(repaint, _GROW.to(repaint)[None, None], padding=1) > 0


def marks_nothing(mask: torch.Tensor) -> bool:
    """No pixel of the MASK (1 = repaint) reaches the threshold: an edit with it repaints nothing."""
    return bool(mask.max() < REPAINT_THRESHOLD)


def repaints_nothing(keep: torch.Tensor) -> bool:
    return bool(keep.min() == 1)


def hint_pixels(hint: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A hint IMAGE (a depth map from DALL·E Depth Map or any preprocessor) → [B, 3, height, width] in 0..1, the
    layout the ControlNet UNet reads; alpha is dropped."""
    pixels = check_image(hint, "hint")[..., :3].permute(0, 3, 1, 2)
    return fit(pixels, height, width, "hint").clamp(0, 1)
