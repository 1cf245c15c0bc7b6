"""GAN upscaling: a Hub (or local) upscaler checkpoint → UPSCALE_MODEL → a tiled, half-precision upscale."""

from __future__ import annotations

from pathlib import Path

import torch
from spandrel import ImageModelDescriptor

from ..pipelines.upscale import loading, stages
from . import runtime
from .loaders import reuse
from .sockets import REVISION_TOOLTIP, UPSCALE_CATEGORY


class DalleLoadUpscaler:
    DESCRIPTION = (
        "Loads a GAN upscaler (Real-ESRGAN, ESRGAN, SwinIR … anything spandrel recognises) from the Hugging Face "
        "Hub or a local file. Works with DALL·E GAN Upscale and with ComfyUI's own Upscale Image (using Model)."
    )
    CATEGORY = UPSCALE_CATEGORY
    RETURN_TYPES = ("UPSCALE_MODEL",)
    RETURN_NAMES = ("upscale_model",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        presets = "; ".join(
            f"{name}: {p.scale}×, {p.use}" + ("" if p.license == "BSD-3-Clause" else f", licence {p.license}")
            for name, p in loading.PRESETS.items()
        )
        return {
            "required": {
                "model": (
                    [*loading.PRESETS, loading.CUSTOM],
                    {"default": "RealESRGAN_x4plus", "tooltip": f"A known-good checkpoint, or custom. {presets}."},
                ),
                "repo_id": (
                    "STRING",
                    {"default": "", "tooltip": "custom: Hub repo id or local folder holding the file."},
                ),
                "filename": (
                    "STRING",
                    {
                        "default": "",
                        "tooltip": "custom: path of the weight file inside the repo or folder (.safetensors "
                        "preferred; .pth is read without running code), or a full path to a local file.",
                    },
                ),
                "revision": ("STRING", {"default": "main", "tooltip": "custom: " + REVISION_TOOLTIP}),
            }
        }

    def load(self, model: str, repo_id: str, filename: str, revision: str) -> tuple[ImageModelDescriptor]:
        path = loading.locate(model, repo_id, filename, revision, runtime.model_store(), runtime.DownloadBar(1))
        return (reuse(type(self).__name__, (path, path.stat().st_mtime_ns), lambda: self.build(path)),)

    @staticmethod
    def build(path: Path) -> ImageModelDescriptor:
        descriptor = loading.load_upscaler(path)
        # ComfyUI's Upscale Image (using Model) loads the model through this attribute.
        descriptor.patcher = runtime.ManagedModule(descriptor.model).patcher
        return descriptor


class DalleGANUpscale:
    DESCRIPTION = (
        "Upscales images with a GAN upscaler: large batched tiles sized to free memory, cross-faded so no seam "
        "shows, half precision where the model allows it; alpha is upscaled too."
    )
    CATEGORY = UPSCALE_CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    FUNCTION = "upscale"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "upscale_model": ("UPSCALE_MODEL", {"tooltip": "From Load GAN Upscaler or ComfyUI's own loader."}),
                "image": ("IMAGE",),
                "tile": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": stages.MAX_TILE,
                        "step": 16,
                        "tooltip": "Tile side in input pixels; 0 picks the largest tiles that fit in free memory "
                        "with the least overlap work. Lower it only if another program needs the VRAM.",
                    },
                ),
                "overlap": (
                    "INT",
                    {
                        "default": 32,
                        "min": 0,
                        "max": stages.MAX_OVERLAP,
                        "step": 4,
                        "tooltip": "Input pixels neighbouring tiles share; seams are cross-faded inside it.",
                    },
                ),
                "precision": (
                    list(stages.PRECISIONS),
                    {"default": "auto", "tooltip": "auto: fp16 on GPUs where the architecture allows it, else fp32."},
                ),
            },
            "optional": {
                "scale_to": (
                    "FLOAT",
                    {
                        "default": 0.0,
                        "min": 0.0,
                        "max": stages.MAX_SCALE_TO,
                        "step": 0.05,
                        "tooltip": "Final size as a multiple of the input (e.g. 2 with a 4× model); "
                        "0 keeps the model's own scale. Resized with antialiased bicubic.",
                    },
                ),
                "compile": (
                    "BOOLEAN",
                    {
                        "default": False,
                        "tooltip": "torch.compile the model: faster on Real-ESRGAN-style models, after a one-off "
                        "compile of a minute or more per tile shape. Falls back to normal running if it fails.",
                    },
                ),
            },
        }

    def upscale(
        self,
        upscale_model: ImageModelDescriptor,
        image: torch.Tensor,
        tile: int,
        overlap: int,
        precision: str,
        scale_to: float = 0.0,
        compile: bool = False,
    ) -> tuple[torch.Tensor]:
        settings = stages.UpscaleSettings(tile, overlap, precision, scale_to, compile)
        managed = runtime.ManagedModule(upscale_model.model, getattr(upscale_model, "patcher", None))
        room = stages.ACTIVATION_CAP if runtime.compute_device().type != "cpu" else 0
        return (
            stages.upscale(
                upscale_model,
                image,
                settings,
                runtime.HOST,
                runtime.output_device(),
                lambda total: runtime.Progress(total, "upscale"),
                lambda: managed.load(memory_required=room),
            ),
        )
