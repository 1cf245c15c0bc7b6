"""ComfyUI's IMAGE tensors ([B, H, W, C] floats in 0..1) ↔ PIL images, for the command line and the Python API."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


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
