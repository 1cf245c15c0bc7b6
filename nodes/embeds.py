"""CLIP image embeddings from pictures, and mixing embeddings (DALL·E 2's variations and interpolations)."""

from __future__ import annotations

import torch

from ..pipelines import checks
from ..pipelines.kandinsky22 import stages
from ..pipelines.karlo import stages as karlo_stages
from . import runtime
from .sockets import KANDINSKY_CATEGORY, ImageEmbeds, ImageEncoder, KarloEmbeds


class DalleImageEncode:
    DESCRIPTION = (
        "Embeds images with CLIP for the decoder: variations of a picture, or one side of a mix with a "
        "prompt. Kandinsky 2.2: the negative is the embedding of an all-zero image, as in the reference; Karlo's "
        "encoder (its image-variations repo) makes embeddings for DALL·E Karlo Decoder Sample."
    )
    CATEGORY = KANDINSKY_CATEGORY
    RETURN_TYPES = ("DALLE_IMAGE_EMBEDS",)
    RETURN_NAMES = ("image_embeds",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "image_encoder": ("DALLE_IMAGE_ENCODER",),
                "image": (
                    "IMAGE",
                    {"tooltip": "Resized (short side 224) and center-cropped by CLIP's own preprocessing."},
                ),
            }
        }

    def encode(self, image_encoder: ImageEncoder, image: torch.Tensor) -> tuple[ImageEmbeds | KarloEmbeds]:
        if image_encoder.karlo:
            checks.check_image(image)  # before the encoder loads
            encoder = image_encoder.encoder.load()
            embeds = karlo_stages.encode_images(image_encoder.processor, encoder, image, batch_size=1)
            return (KarloEmbeds(embeds.to(runtime.offload_device())),)
        encoder = image_encoder.encoder.load()
        return (stages.encode_images(image_encoder.processor, encoder, image, runtime.offload_device()),)


def slerp(a: torch.Tensor, b: torch.Tensor, weight: float) -> torch.Tensor:
    """Spherical interpolation between rows of a and b; nearly parallel rows fall back to lerp."""
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1).clamp(-1, 1)[:, None]
    angle = torch.arccos(cos)
    sin = torch.sin(angle)
    parallel = sin.abs() < 1e-6
    safe_sin = torch.where(parallel, torch.ones_like(sin), sin)
    curved = (torch.sin((1 - weight) * angle) * a + torch.sin(weight * angle) * b) / safe_sin
    return torch.where(parallel, torch.lerp(a, b, weight), curved)


class DalleMixEmbeds:
    DESCRIPTION = "Blends two sets of image embeddings (from prompts or images): 0 gives a, 1 gives b."
    CATEGORY = KANDINSKY_CATEGORY
    RETURN_TYPES = ("DALLE_IMAGE_EMBEDS",)
    RETURN_NAMES = ("image_embeds",)
    FUNCTION = "mix"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "embeds_a": ("DALLE_IMAGE_EMBEDS",),
                "embeds_b": ("DALLE_IMAGE_EMBEDS",),
                "weight": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "Share of b."}),
                "method": (
                    ["slerp", "lerp"],
                    {
                        "default": "slerp",
                        "tooltip": "slerp keeps the embedding's length along the way; lerp is the reference "
                        "pipeline's weighted sum.",
                    },
                ),
            }
        }

    def mix(
        self, embeds_a: ImageEmbeds | KarloEmbeds, embeds_b: ImageEmbeds | KarloEmbeds, weight: float, method: str
    ) -> tuple[ImageEmbeds | KarloEmbeds]:
        checks.check_choice("method", method, ("slerp", "lerp"))
        checks.check_range("weight", weight, 0.0, 1.0)
        karlo = isinstance(embeds_a, KarloEmbeds)
        if karlo != isinstance(embeds_b, KarloEmbeds):
            raise ValueError(
                "embeds_a and embeds_b come from different models (one from Karlo, one from Kandinsky 2.2), whose "
                "CLIP spaces do not mix: make both with the same family's prior or image encoder."
            )
        size_a, size_b = embeds_a.positive.shape[0], embeds_b.positive.shape[0]
        if size_a != size_b and 1 not in (size_a, size_b):
            raise ValueError(f"Cannot mix batches of {size_a} and {size_b} embeddings: make one of them 1, or equal.")
        blend = slerp if method == "slerp" else lambda a, b, w: a * (1 - w) + b * w
        rows = max(size_a, size_b)

        def mixed(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return blend(a.expand(rows, -1), b.expand(rows, -1), weight)

        if karlo:  # no stream: the decoder draws from its own seed
            return (KarloEmbeds(mixed(embeds_a.positive, embeds_b.positive)),)
        return (ImageEmbeds(mixed(embeds_a.positive, embeds_b.positive), mixed(embeds_a.negative, embeds_b.negative)),)
