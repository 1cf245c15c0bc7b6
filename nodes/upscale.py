"""GAN upscaling: a Hub (or local) upscaler checkpoint → UPSCALE_MODEL → a tiled, half-precision upscale."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from spandrel import ImageModelDescriptor

from ..engine import tiling
from ..engine.hub import CheckpointError, Source, fetch_file
from ..pipelines import upscale as upscaler
from . import runtime
from .loaders import REVISION_TOOLTIP, reuse

CATEGORY = "DALL·E/upscaling"
CUSTOM = "custom"
ACTIVATION_CAP = 2 << 30  # bytes of activations per forward: more does not run faster, and leaves VRAM to others
CPU_TILE_PIXELS = 512 * 512  # on the CPU tiles only bound memory and pace the progress bar


def _split(filename: str) -> tuple[str, str]:
    folder, _, name = filename.strip().strip("/").rpartition("/")
    return folder, name


class DalleLoadUpscaler:
    DESCRIPTION = (
        "Loads a GAN upscaler (Real-ESRGAN, ESRGAN, SwinIR … anything spandrel recognises) from the Hugging Face "
        "Hub or a local file. Works with DALL·E GAN Upscale and with ComfyUI's own Upscale Image (using Model)."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("UPSCALE_MODEL",)
    RETURN_NAMES = ("upscale_model",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        presets = "; ".join(
            f"{name}: {p.scale}×, {p.use}" + ("" if p.license == "BSD-3-Clause" else f", licence {p.license}")
            for name, p in upscaler.PRESETS.items()
        )
        return {
            "required": {
                "model": (
                    [*upscaler.PRESETS, CUSTOM],
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
        path = self.locate(model, repo_id, filename, revision)
        return (reuse(type(self).__name__, (path, path.stat().st_mtime_ns), lambda: self.build(path)),)

    @staticmethod
    def locate(model: str, repo_id: str, filename: str, revision: str) -> Path:
        store = runtime.model_store()
        if model in upscaler.PRESETS:
            preset = upscaler.PRESETS[model]
            return fetch_file(Source(preset.repo, None, store), *_split(preset.filename))
        if model != CUSTOM:
            raise ValueError(
                f"Unknown upscaler preset '{model}': choose one of {', '.join(upscaler.PRESETS)} or custom."
            )
        if not filename.strip():
            raise ValueError("custom upscaler: give the filename of the weight file (and the repo_id it is in).")
        if not repo_id.strip():
            path = Path(filename.strip()).expanduser()
            if not path.is_file():
                raise CheckpointError(
                    f"Upscaler file '{path}' does not exist. Give a full path to a local file, or a repo_id."
                )
            return path
        return fetch_file(Source(repo_id.strip(), revision.strip() or None, store), *_split(filename))

    @staticmethod
    def build(path: Path) -> ImageModelDescriptor:
        descriptor = upscaler.load_upscaler(path)
        # ComfyUI's Upscale Image (using Model) loads the model through this attribute.
        descriptor.patcher = runtime.ManagedModule(descriptor.model).patcher
        return descriptor


class DalleGANUpscale:
    DESCRIPTION = (
        "Upscales images with a GAN upscaler: large batched tiles sized to free memory, cross-faded so no seam "
        "shows, half precision where the model allows it; alpha is upscaled too."
    )
    CATEGORY = CATEGORY
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
                        "max": 8192,
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
                        "max": 512,
                        "step": 4,
                        "tooltip": "Input pixels neighbouring tiles share; seams are cross-faded inside it.",
                    },
                ),
                "precision": (
                    ["auto", "fp32", "fp16", "bf16"],
                    {"default": "auto", "tooltip": "auto: fp16 on GPUs where the architecture allows it, else fp32."},
                ),
            },
            "optional": {
                "scale_to": (
                    "FLOAT",
                    {
                        "default": 0.0,
                        "min": 0.0,
                        "max": 16.0,
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
        count, height, width, channels = image.shape
        if channels not in (3, 4):
            raise ValueError(f"The image has {channels} channels; GAN upscaling takes RGB or RGBA images.")
        if tile and overlap * 2 >= tile:
            raise ValueError(f"overlap ({overlap}) must be less than half the tile ({tile}); lower it or tile=0.")
        scale = upscale_model.scale
        size = (round(height * scale_to), round(width * scale_to)) if scale_to else (height * scale, width * scale)
        if min(size) < 1:
            raise ValueError(f"scale_to {scale_to} makes the image smaller than one pixel.")
        managed = runtime.ManagedModule(upscale_model.model, getattr(upscale_model, "patcher", None))
        device = runtime.compute_device()
        dtype = upscaler.compute_dtype(precision, upscale_model, device)
        managed.load(memory_required=ACTIVATION_CAP if device.type != "cpu" else 0)
        eager = upscaler.forward_fn(upscale_model, dtype, device)  # probes memory: compiling for probes wastes minutes
        forward = (
            upscaler.forward_fn(upscale_model, dtype, device, compile=True, is_oom=runtime.is_out_of_memory)
            if compile
            else eager
        )

        x = image.movedim(-1, 1).to(device, torch.float32)
        if channels == 4:  # alpha goes through the model as a grey image and comes back as the channel mean
            x = torch.cat([x[:, :3], x[:, 3:].expand(-1, 3, -1, -1)])
        result = torch.empty(count, *size, channels, device=runtime.output_device())

        def finish(index: int, out: torch.Tensor) -> None:
            if tuple(out.shape[-2:]) != size:
                out = torch.nn.functional.interpolate(out[None], size=size, mode="bicubic", antialias=True)[0]
            out = out.clamp_(0, 1).movedim(0, -1)  # to ComfyUI's channels-last layout before leaving the GPU
            if index < count:
                result[index, ..., :3] = out
            else:
                result[index - count, ..., 3] = out.mean(-1)

        def attempt(plan: tiling.TilePlan) -> None:
            tiles = tiling.tile_count(height, width, plan) * len(x)
            progress = runtime.Progress(math.ceil(tiles / plan.batch), "upscale")
            try:
                tiling.run_tiled(
                    forward, x, scale, plan, finish, progress.update, fixed_batch=upscaler.compiled_ready(upscale_model)
                )
            finally:
                progress.close()

        def retry(plan: tiling.TilePlan, smaller: tiling.TilePlan) -> None:
            logging.warning("DalleGANUpscale: out of memory with %s; retrying with %s", plan, smaller)
            runtime.free_cache()

        plan = self.plan(tile, overlap, upscale_model, eager, x, dtype)
        tiling.shrink_on_oom(attempt, plan, runtime.is_out_of_memory, retry)
        return (result,)

    @staticmethod
    def plan(
        tile: int, overlap: int, descriptor: ImageModelDescriptor, forward, x: torch.Tensor, dtype: torch.dtype
    ) -> tiling.TilePlan:
        """Tiles from the user's size, or the least-work tiling whose activations fit the memory budget."""
        if x.device.type != "cuda":
            max_pixels = CPU_TILE_PIXELS
        else:
            budget = min(ACTIVATION_CAP, runtime.free_memory(x.device) // 2)
            max_pixels = max(int(budget / upscaler.bytes_per_pixel(descriptor, forward, x.device, dtype)), 64 * 64)
        return upscaler.choose_plan(x.shape[2], x.shape[3], tile, overlap, max_pixels, descriptor)
