"""An edit as a user gives it (a picture, a mask and outpaint borders: PIL images or image files, from the Python API
or the command line) → the IMAGE canvas and the MASK (1 = repaint) the inpainting path reads, checked before any
model loads.

Mask conventions: a mask's white repaints and its black keeps (diffusers' and ComfyUI's convention; soft values are
binarised at 0.5 later, as the reference does). Where a mask, or a picture given without one, is transparent, that
is repainted (OpenAI's images API; ComfyUI's Load Image gives MASK = 1 − alpha).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..engine.images import check_sides, eight_bit, from_pil, open_image
from . import masks

log = logging.getLogger(__name__)

SIDES = ("left", "top", "right", "bottom")
Picture = Image.Image | str | Path  # a PIL image, or an image file's path
Outpaint = int | tuple[int, int, int, int] | Mapping[str, int]  # every side; (left, top, right, bottom); some sides
OUTPAINT_FILL = 0.5  # grey under the borders, as core Pad Image for Outpainting fills it (the UNet never sees it)


def prepare(
    image: Picture, mask: Picture | None, outpaint: Outpaint | None, step: int, max_side: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The picture as IMAGE [1, H, W, 3] and what to repaint as MASK [1, H, W], H and W multiples of `step` up to
    `max_side`. A picture whose sides are not multiples of `step` is resized to the nearest ones (with a warning:
    the result has that size); the mask must have the picture's aspect ratio and is resized with it. Outpaint
    borders (in pixels of the resized picture) are added around it and repainted; grey fills them, as core Pad
    Image for Outpainting fills them."""
    sides = outpaint_sides(outpaint, max_side) if outpaint is not None else None
    picture = open_picture(image, "image", max_side)
    pixels, repaint = from_pil(eight_bit(picture).convert("RGB")), transparent(picture)
    height, width = pixels.shape[1:3]
    if mask is not None:  # it decides alone: the picture's transparency, if any, is ignored
        repaint = masks.fit_mask(mask_pixels(open_picture(mask, "mask", max_side))[None], height, width)[0]
    if repaint is None and sides is None:
        raise ValueError(
            "The picture has no transparent pixels, and no mask or outpaint was given: there is nothing to edit. Give "
            "a mask (white = repaint), outpaint borders, or make the part to repaint transparent."
        )
    if repaint is None:
        repaint = torch.zeros(1, height, width)
    pixels, repaint = to_multiples(pixels, repaint, step)
    if sides is None:
        return pixels, repaint
    check_canvas(tuple(pixels.shape[1:3]), sides, step, max_side)
    left, top = sides[:2]
    canvas, border = pad_for_outpaint(pixels, sides)
    border[:, top : top + pixels.shape[1], left : left + pixels.shape[2]] = repaint  # the picture's own mask inside
    return canvas, border


def open_picture(picture: object, name: str, max_side: int) -> Image.Image:
    """A PIL image as it is, or an image file read safely (engine.images.open_image); at most `max_side` px a side."""
    if isinstance(picture, str | Path):
        return open_image(picture, name, max_side)
    if not isinstance(picture, Image.Image):
        raise ValueError(f"The {name} must be a PIL image or an image file's path; got a {type(picture).__name__}.")
    check_sides(picture, f"The {name}", max_side)
    if 0 in picture.size:  # PIL makes such images; numpy and the resizing refuse them with unrelated errors
        raise ValueError(f"The {name} is {picture.width}x{picture.height} px: it has no pixels to edit.")
    return picture


def transparent(picture: Image.Image) -> torch.Tensor | None:
    """MASK [1, H, W] = 1 − alpha where the picture has transparent pixels; None where it has none."""
    if "A" not in picture.getbands() and "transparency" not in picture.info:  # palette images keep it in info
        return None
    alpha = np.asarray(picture.convert("RGBA"), dtype=np.float32)[..., 3] / 255
    return torch.from_numpy(1 - alpha)[None] if alpha.min() < 1 else None


def mask_pixels(mask: Image.Image) -> torch.Tensor:
    """A mask image → MASK [1, H, W]: 1 − alpha where it has transparent pixels, else its luminance (white = 1)."""
    repaint = transparent(mask)
    if repaint is not None:
        return repaint
    return torch.from_numpy(np.asarray(eight_bit(mask).convert("L"), dtype=np.float32) / 255)[None]


def to_multiples(pixels: torch.Tensor, repaint: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """IMAGE and MASK resized together to the nearest multiples of `step` a side (halves round up; at least one
    step), when they are not already: the decoder samples only those sizes."""
    height, width = pixels.shape[1:3]
    new_height, new_width = (max(step, (side + step // 2) // step * step) for side in (height, width))
    if (new_height, new_width) == (height, width):
        return pixels, repaint
    log.warning(
        "The picture is %dx%d px; the decoder takes sides that are multiples of %d: editing it resized to %dx%d "
        "(the result has that size).",
        width,
        height,
        step,
        new_width,
        new_height,
    )
    size = (new_height, new_width)
    pixels = F.interpolate(pixels.permute(0, 3, 1, 2), size, mode="bicubic", antialias=True, align_corners=False)
    resized = F.interpolate(repaint[:, None], size, mode="bilinear", antialias=True, align_corners=False)
    return pixels.permute(0, 2, 3, 1).clamp(0, 1), masks.keep_marks(repaint[:, None], resized)[:, 0].clamp(0, 1)


def pad_for_outpaint(image: torch.Tensor, sides: tuple[int, int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """IMAGE [B, H, W, C] on a larger canvas with borders of `sides` (left, top, right, bottom, as outpaint_sides
    gives them), and the MASK [B, H', W'] that repaints the new border (1) and keeps the picture (0)."""
    left, top, right, bottom = sides
    batch, height, width, channels = image.shape
    canvas = image.new_full((batch, top + height + bottom, left + width + right, channels), OUTPAINT_FILL)
    canvas[:, top : top + height, left : left + width] = image
    mask = image.new_ones(canvas.shape[:3])
    mask[:, top : top + height, left : left + width] = 0
    return canvas, mask


def outpaint_sides(outpaint: object, max_side: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) in pixels from one number for every side, a mapping of some of the sides (the
    others 0), or a (left, top, right, bottom) tuple."""
    if isinstance(outpaint, Mapping):
        unknown = [str(key) for key in outpaint if key not in SIDES]
        if unknown:
            raise ValueError(f"outpaint has no side '{unknown[0]}': the sides are {', '.join(SIDES)}.")
        sides = tuple(outpaint.get(side, 0) for side in SIDES)
    elif isinstance(outpaint, tuple | list) and len(outpaint) == len(SIDES):
        sides = tuple(outpaint)
    elif isinstance(outpaint, int) and not isinstance(outpaint, bool):
        sides = (outpaint,) * len(SIDES)
    else:
        raise ValueError(
            "outpaint takes pixels for every side (256), some sides ({'left': 256, 'right': 256}) or all four "
            f"(left, top, right, bottom); got {outpaint!r}."
        )
    for side, value in zip(SIDES, sides, strict=True):
        if not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= max_side):
            raise ValueError(f"The outpaint {side} must be a whole number of pixels, 0 to {max_side} (got {value}).")
    return sides


def check_canvas(size: tuple[int, int], sides: tuple[int, int, int, int], step: int, max_side: int) -> None:
    """The picture of `size` (height, width; multiples of `step`) with its outpaint borders is a size the decoder
    samples: each pair of borders adds a multiple of `step`, and no side outgrows `max_side`. Checked before the
    canvas is allocated."""
    left, top, right, bottom = sides
    height, width = size
    for pair, added in (("left + right", left + right), ("top + bottom", top + bottom)):
        if added % step:
            nearest = max(step, (added + step // 2) // step * step)
            raise ValueError(
                f"The outpaint {pair} adds {added} px: it must add a multiple of {step} (e.g. {nearest}), so that the "
                f"picture's sides stay multiples of {step}."
            )
    canvas_height, canvas_width = height + top + bottom, width + left + right
    if max(canvas_height, canvas_width) > max_side:
        raise ValueError(
            f"With its outpaint borders the picture would be {canvas_width}x{canvas_height} px: up to {max_side} px a "
            "side is taken; pad less, or downscale the picture first."
        )
