"""MoVQ: latents ↔ images (ComfyUI IMAGE: [B, H, W, 3] floats in 0..1)."""

from __future__ import annotations

import torch

from ..models import kandinsky22
from . import runtime
from .loaders import CATEGORY, VQModel


class DalleVQDecode:
    DESCRIPTION = "Decodes Kandinsky 2.2 latents to images with MoVQ."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"vq_vae": ("DALLE_VQ_VAE",), "latent": ("LATENT",)}}

    def decode(self, vq_vae: VQModel, latent: dict) -> tuple[torch.Tensor]:
        samples = latent["samples"]
        if samples.ndim != 4 or samples.shape[1] != kandinsky22.LATENT_CHANNELS:
            raise ValueError(f"Expected a MoVQ latent [B, 4, h, w], got shape {tuple(samples.shape)}.")
        movq = vq_vae.movq.load()
        param = next(movq.parameters())
        images = []
        with torch.inference_mode():
            for one in samples.split(1):  # one image at a time bounds the decoder's (large) activation memory
                runtime.check_interrupt()
                pixels = movq.decode(one.to(param.device, param.dtype))
                images.append((pixels.float() * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).to(runtime.output_device()))
        return (torch.cat(images),)


class DalleVQEncode:
    DESCRIPTION = (
        "Encodes images to Kandinsky 2.2 latents with MoVQ (for image-to-image). Sides must be multiples of 8."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"vq_vae": ("DALLE_VQ_VAE",), "image": ("IMAGE",)}}

    def encode(self, vq_vae: VQModel, image: torch.Tensor) -> tuple[dict]:
        height, width = image.shape[1:3]
        if height % 8 or width % 8:
            raise ValueError(
                f"Image size {width}x{height} is not a multiple of 8: resize or crop it first (e.g. Upscale Image)."
            )
        movq = vq_vae.movq.load()
        param = next(movq.parameters())
        pixels = image[..., :3].permute(0, 3, 1, 2) * 2 - 1  # drop alpha; MoVQ works in [-1, 1]
        with torch.inference_mode():
            latents = [movq.encode(one.to(param.device, param.dtype)).float() for one in pixels.split(1)]
        return ({"samples": torch.cat(latents).to(runtime.output_device())},)
