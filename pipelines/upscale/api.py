"""GAN upscaling as plain Python: PIL images in and out, through the same stages the nodes run."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from spandrel import ImageModelDescriptor

from ...engine.device import PLAIN, console_progress, default_device
from ...engine.hub import ConsoleDownload, default_store
from ...engine.images import from_pil, to_pil
from .loading import load_upscaler, locate
from .stages import UpscaleSettings, upscale


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
