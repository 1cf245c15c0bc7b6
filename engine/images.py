"""ComfyUI's IMAGE tensors ([B, H, W, C] floats in 0..1) ↔ PIL images, and image files read safely, for the command
line and the Python API."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps

from . import files
from .checkpoints import error_summary


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Each image rounded to 8 bits (RGB, or RGBA with a 4th channel)."""
    pixels = np.clip(images.float().cpu().numpy() * 255 + 0.5, 0, 255).astype(np.uint8)
    return [Image.fromarray(one) for one in pixels]


def from_pil(images: Image.Image | list[Image.Image]) -> torch.Tensor:
    """One image or a list of same-size images → IMAGE; RGBA keeps its alpha, anything else becomes RGB."""
    images = [images] if isinstance(images, Image.Image) else list(images)
    if not images:
        raise ValueError("No images given.")
    mode = "RGBA" if all(image.mode == "RGBA" for image in images) else "RGB"
    arrays = [np.asarray(image.convert(mode), dtype=np.float32) / 255 for image in images]
    if len({array.shape for array in arrays}) > 1:
        raise ValueError(f"The images differ in size ({sorted({a.shape[:2] for a in arrays})}): pass one size a call.")
    return torch.from_numpy(np.stack(arrays))


def open_image(path: str | Path | BinaryIO, name: str, max_side: int) -> Image.Image:
    """A user's image file (a path, or an open binary file such as an upload), decoded whole and turned upright as its
    EXIF orientation says (as viewers show it). A missing file, a folder, a FIFO or device, a file that is not an
    image or is damaged, or one over `max_side` px a side → ValueError in one line naming the file (`name` says which
    input it is). The size is read from the header before any pixel is decoded, and PIL's limits (pixels, and the
    decompressed size of PNG text and ICC profile chunks) are errors too, so a hostile file costs no memory."""
    if not isinstance(path, str | Path):
        return _decode(path, f"The {name}", max_side)
    where = f"The {name} '{path}'"
    with _open_file(Path(path), where) as file:
        return _decode(file, where, max_side)


def _open_file(path: Path, where: str) -> BinaryIO:
    """The image file opened for reading (files.open_regular: never a FIFO or device), or ValueError saying why not."""
    try:
        return files.open_regular(path)
    except FileNotFoundError:
        raise ValueError(f"{where} does not exist.") from None
    except IsADirectoryError:
        raise ValueError(f"{where} is a folder: give an image file (e.g. a .png).") from None
    except files.NotRegularFile as error:
        raise ValueError(f"{where} is {error.kind}, not an image file: give a PNG, JPEG, WebP, BMP or TIFF.") from None
    except OSError as error:  # no permission, a symbolic-link loop, a name too long, an I/O error …
        raise ValueError(f"{where} cannot be read ({error.strerror or error}).") from None


def _decode(file: BinaryIO, where: str, max_side: int) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(file)
        except Image.UnidentifiedImageError:
            raise ValueError(f"{where} is not an image PIL can read: give a PNG, JPEG, WebP, BMP or TIFF.") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):  # past PIL's pixel limits
            raise ValueError(f"{where} is too large: {side_limit(max_side)}") from None
        except Exception as error:  # a header PIL reads but refuses: an oversized text or ICC chunk, a bad field …
            raise ValueError(f"{where} is damaged or incomplete ({error_summary(error)}): save it again.") from None
    with image:
        check_sides(image, where, max_side)
        try:
            image.load()
            return ImageOps.exif_transpose(image)
        except Exception as error:  # PIL's decoders report damage in many types (OSError, SyntaxError, struct.error …)
            raise ValueError(f"{where} is damaged or incomplete ({error_summary(error)}): save it again.") from None


def check_sides(image: Image.Image, where: str, max_side: int) -> None:
    """`where` ("The image 'in.png'") is at most `max_side` px a side."""
    if max(image.size) > max_side:
        raise ValueError(f"{where} is {image.width}x{image.height} px: {side_limit(max_side)}")


def side_limit(max_side: int) -> str:
    return f"up to {max_side} px a side is taken; downscale it first."


# PIL's convert("RGB"/"L") clips 16- and 32-bit grey values at 255, which would turn almost any such picture white.
WIDE_GREY = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I": 65535, "F": 1.0}


def eight_bit(picture: Image.Image) -> Image.Image:
    """A 16-bit (I;16, or I as PNG readers give it) or float (F, 0..1) grey picture scaled to 8-bit grey; other
    modes as they are."""
    full_scale = WIDE_GREY.get(picture.mode)
    if full_scale is None:
        return picture
    grey = np.asarray(picture, dtype=np.float64) / full_scale
    return Image.fromarray(np.round(np.clip(grey, 0, 1) * 255).astype(np.uint8), mode="L")
