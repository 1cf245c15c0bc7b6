"""The pictures of edit and variation requests: checked as OpenAI documents them for dall-e-2 (a square PNG under
4 MB; an edit's mask a PNG of the same size whose transparent pixels mark what to repaint, else the picture's own
transparency), and written again as the PNG that ComfyUI's Load Image reads: RGB, plus the alpha that says what to
repaint for an edit (Load Image's MASK is 1 − alpha)."""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..engine.images import WIDE_GREY, eight_bit, open_image
from .errors import ApiError, bad_request
from .requests import MAX_SIDE

MAX_UPLOAD = 4 * 1024 * 1024  # bytes: "less than 4 MB"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPAINT_BELOW = 128  # alpha below this repaints: Load Image's MASK (1 − alpha) above 0.5, where inpainting binarises


def check_upload_size(size: int, param: str) -> None:
    if size >= MAX_UPLOAD:
        raise ApiError(413, f"{param} is {size / 2**20:.1f} MB: it must be a PNG under 4 MB.", param, "file_too_large")


def read_png(data: bytes, param: str) -> Image.Image:
    """An uploaded file → the decoded picture, if it is a square PNG under 4 MB of at most MAX_SIDE px a side."""
    check_upload_size(len(data), param)
    if not data.startswith(PNG_SIGNATURE):
        raise bad_request(f"{param} is not a PNG file: send the picture as PNG.", param, "invalid_image_format")
    try:
        image = open_image(io.BytesIO(data), param, MAX_SIDE)
    except ValueError as error:
        raise bad_request(str(error), param, "invalid_image") from None
    if image.width != image.height:
        raise bad_request(
            f"{param} is {image.width}x{image.height} px: it must be square; crop or pad it first.",
            param,
            "invalid_image_size",
        )
    return image


def edit_picture(image_data: bytes, mask_data: bytes | None, side: int | None = None) -> bytes:
    """An edit's picture and optional mask → one RGBA PNG whose transparent pixels are the ones to repaint, for an
    answer of `side` px (default: the picture's own): the workflow scales the picture to it, so strokes its resize
    would lose are kept (_kept_strokes)."""
    image = read_png(image_data, "image")
    if mask_data is None:
        param, alpha = "image", _alpha(image)
        if alpha is None:
            raise bad_request(
                "image has no transparent pixels to repaint and no mask was sent: erase the part to edit (make it "
                "transparent), or send a mask PNG whose transparent pixels mark it.",
                "image",
                "invalid_image_format",
            )
    else:
        mask = read_png(mask_data, "mask")
        if mask.size != image.size:
            raise bad_request(
                f"mask is {mask.width}x{mask.height} px but image is {image.width}x{image.height}: they must be the "
                "same size.",
                "mask",
                "invalid_image_size",
            )
        param, alpha = "mask", _alpha(mask)
        if alpha is None:
            raise bad_request(
                "mask has no alpha channel: its transparent pixels mark what to repaint (OpenAI's convention), so "
                "save it as an RGBA PNG, transparent where the image should change.",
                "mask",
                "invalid_image_format",
            )
    _check_repaints(alpha, param)
    picture = eight_bit(image).convert("RGB")
    picture.putalpha(_kept_strokes(alpha, side or image.width))
    return _png(picture)


def _kept_strokes(alpha: Image.Image, side: int) -> Image.Image:
    """The alpha with every stroke that the edit workflow's resize to `side` px would lose made to survive it.

    The shipped workflow scales the upload with Upscale Image (bilinear, without antialiasing): shrunk, it reads two
    source pixels per answer pixel, so a 1 px stroke between them vanishes; enlarged, a faint pixel (alpha just below
    128) is diluted by its opaque neighbours. Either way the edit would silently change nothing there. Where marked
    pixels leave no repainted answer pixel near them, the pixels that answer pixel reads are made transparent (its
    marked ones, else all of them). Masks whose strokes survive come back unchanged."""
    if side == alpha.width:
        return alpha
    values = np.asarray(alpha)
    repaint = torch.from_numpy(values < REPAINT_BELOW)[None, None].float()
    read = F.interpolate(1 - torch.from_numpy(values / 255.0)[None, None], (side, side), mode="bilinear")
    repainted_near = F.max_pool2d((read >= 0.5).float(), 3, stride=1, padding=1) > 0
    lost = ((F.adaptive_max_pool2d(repaint, (side, side)) > 0) & ~repainted_near)[0, 0]
    if not bool(lost.any()):
        return alpha
    rows, columns = (_read_pixels(index.numpy(), alpha.width / side, alpha.width) for index in lost.nonzero().T)
    corners = [(row, column) for row in rows for column in columns]
    marked = values < REPAINT_BELOW
    any_marked = np.logical_or.reduce([marked[row, column] for row, column in corners])
    kept = values.copy()
    for row, column in corners:
        take = marked[row, column] | ~any_marked
        kept[row[take], column[take]] = 0
    return Image.fromarray(kept)


def _read_pixels(index: np.ndarray, scale: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The two source pixels that answer pixel `index` interpolates between (torch's align_corners=False)."""
    source = np.maximum((index + 0.5) * scale - 0.5, 0)
    low = np.minimum(np.floor(source).astype(np.int64), size - 1)
    return low, np.minimum(low + 1, size - 1)


def _check_repaints(alpha: Image.Image, param: str) -> None:
    """Some pixel is transparent enough to repaint: the pipeline binarises Load Image's MASK (1 − alpha) at 0.5, so an
    alpha of 128 or more everywhere repaints nothing and the edit would silently return the picture."""
    lowest = alpha.getextrema()[0]
    if lowest >= REPAINT_BELOW:
        most = "it is opaque everywhere" if lowest == 255 else f"its most transparent pixel has alpha {lowest}"
        raise bad_request(
            f"{param} has no transparent pixels to repaint (alpha below {REPAINT_BELOW} of 255, at least half "
            f"transparent; {most}), so there is nothing to edit: make the part to change transparent.",
            param,
        )


def variation_picture(image_data: bytes) -> bytes:
    """A variation's picture → an RGB PNG (its transparency, if any, plays no part)."""
    return _png(eight_bit(read_png(image_data, "image")).convert("RGB"))


def _alpha(image: Image.Image) -> Image.Image | None:
    """The picture's alpha channel, or None where it has no transparency at all."""
    key = image.info.get("transparency")
    if image.mode in WIDE_GREY and isinstance(key, int):  # a 16-bit grey PNG's colour key is 16-bit too
        return Image.fromarray(np.where(np.asarray(image) == key, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "RGB" and isinstance(key, tuple) and max(key) > 255:
        # PIL reads 16-bit RGB as 8-bit (the high bytes) but keeps the 16-bit key: compare the high bytes alike
        image.info["transparency"] = tuple(value >> 8 for value in key)
    if not image.has_transparency_data:
        return None
    return image.convert("RGBA").getchannel("A")


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)  # a temporary file read once: speed over size
    return out.getvalue()


def picture_for(endpoint: str, files: dict[str, bytes], side: int) -> bytes | None:
    """The checked picture of an edit or variation request's files (None for a generation)."""
    if endpoint == "generations":
        return None
    if "image" not in files:
        raise bad_request(
            "Missing required parameter: 'image' (a square PNG file).", "image", "missing_required_parameter"
        )
    if endpoint == "edits":
        return edit_picture(files["image"], files.get("mask"), side)
    return variation_picture(files["image"])
