"""MoVQ: latents ↔ images (ComfyUI IMAGE: [B, H, W, 3] floats in 0..1); the decode policy: kandinsky22/vq_decode.py."""

from __future__ import annotations

import torch

from ..pipelines.kandinsky22 import memory, stages, vq_decode
from . import runtime
from .sockets import KANDINSKY_CATEGORY, MoVQModel, movq_samples


class DalleVQDecode:
    DESCRIPTION = (
        "Decodes Kandinsky 2.2 latents to images with MoVQ: whole where the GPU has room, else in overlapping "
        "tiles (cross-faded, close to the whole decode)."
    )
    CATEGORY = KANDINSKY_CATEGORY
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"vq_vae": ("DALLE_VQ_VAE",), "latent": ("LATENT",)}}

    def decode(self, vq_vae: MoVQModel, latent: dict) -> tuple[torch.Tensor]:
        samples, module = movq_samples(latent), vq_vae.movq.module
        movq = vq_vae.movq.load_for(lambda fused: vq_decode.decode_bytes(module, samples, fused))
        return (vq_decode.movq_decode(movq, samples, runtime.HOST, runtime.output_device(), vq_vae.decode_call(movq)),)


class DalleVQEncode:
    DESCRIPTION = (
        "Encodes images to Kandinsky 2.2 latents with MoVQ (for image-to-image). Sides must be multiples of 64, "
        "as the decoder samples them."
    )
    CATEGORY = KANDINSKY_CATEGORY
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"vq_vae": ("DALLE_VQ_VAE",), "image": ("IMAGE",)}}

    def encode(self, vq_vae: MoVQModel, image: torch.Tensor) -> tuple[dict]:
        height, width = image.shape[1:3]
        config, dtype = vq_vae.movq.module.config, vq_vae.movq.dtype

        def load() -> torch.nn.Module:
            return vq_vae.movq.load_for(
                lambda fused: memory.movq_encode_bytes(config, height, width, dtype, fused_attention=fused)
            )

        return ({"samples": stages.movq_encode(load, image).to(runtime.output_device())},)
