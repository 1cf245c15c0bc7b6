"""GAN upscaling as plain Python: PIL images in and out, through the same stages the nodes run."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from spandrel import ImageModelDescriptor

from ...engine.device import PLAIN, console_progress, default_device
from ...engine.hub import ConsoleDownload, default_store
from ...engine.images import eight_bit, from_pil, to_pil
from ..checks import REPO_OR_FOLDER, check_flag, check_text, described, path_text, whole_number
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
        check_text("preset", preset, "a preset's name or custom")
        repo_id = path_text("repo_id", repo_id, REPO_OR_FOLDER + " (or empty)")
        filename = path_text("filename", filename, "the weight file's name (or full path)")
        check_text("revision", revision, "a branch, tag or commit")
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
        pictures = checked_pictures(images)
        check_flag("compile", compile)
        settings = UpscaleSettings(
            whole_number("tile", tile), whole_number("overlap", overlap), precision, scale_to, compile
        )
        progress = lambda total: console_progress(total, "upscale")  # noqa: E731
        return to_pil(upscale(self.descriptor, from_pil(pictures), settings, PLAIN, torch.device("cpu"), progress))


def checked_pictures(images: object) -> list[Image.Image]:
    """One PIL image or a list of them, each with pixels; 16-bit and float grey ones scaled to 8 bits (converting
    them to RGB as they are would clip them to white)."""
    pictures = [images] if isinstance(images, Image.Image) else images
    if not (isinstance(pictures, list | tuple) and all(isinstance(one, Image.Image) for one in pictures)):
        if isinstance(pictures, list | tuple):
            given = f"a {type(pictures).__name__} holding {', '.join(sorted({type(one).__name__ for one in pictures}))}"
        else:
            given = described(images)
        raise TypeError(f"images must be a PIL image or a list of them (Image.open reads a file); got {given}.")
    if not pictures:
        raise ValueError("images is an empty list: give at least one picture.")
    for index, picture in enumerate(pictures):
        if 0 in picture.size:
            raise ValueError(f"images[{index}] is {picture.width}x{picture.height} px: it has no pixels to upscale.")
    return [eight_bit(picture) for picture in pictures]
