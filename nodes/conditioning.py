"""DALLE_IMAGE_EMBEDS as ComfyUI CONDITIONING, for KSampler and the other core sampling nodes with our MODEL."""

from __future__ import annotations

import torch

from .sockets import KANDINSKY_CATEGORY, ImageEmbeds, kandinsky_embeds

EMBEDS_KEY = "dalle_image_embeds"  # read by comfy_native.Kandinsky22.extra_conds


def image_embeds_conditioning(embeds: torch.Tensor) -> list:
    """CONDITIONING for [B, D] embeddings: ComfyUI's [tensor, options] pairs. The tensor (the embeddings as one
    token each) only gives ComfyUI a shape to batch by; the model reads the options' entry."""
    embeds = embeds.float()
    return [[embeds[:, None, :], {EMBEDS_KEY: embeds}]]


class DalleImageEmbedsToConditioning:
    DESCRIPTION = (
        "Turns CLIP image embeddings (from DALL·E Prior Sample, Image Encode or Mix) into positive and negative "
        "CONDITIONING for KSampler with the MODEL of Load DALL·E 2 Decoder."
    )
    CATEGORY = KANDINSKY_CATEGORY
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    FUNCTION = "convert"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"image_embeds": ("DALLE_IMAGE_EMBEDS",)}}

    def convert(self, image_embeds: ImageEmbeds) -> tuple[list, list]:
        image_embeds = kandinsky_embeds(image_embeds, "DALL·E Image Embeds To Conditioning (Kandinsky 2.2's MODEL)")
        return image_embeds_conditioning(image_embeds.positive), image_embeds_conditioning(image_embeds.negative)
