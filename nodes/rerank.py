"""DALL·E 1's reranker: load CLIP, and keep the images of a batch CLIP ranks highest for their prompt."""

from __future__ import annotations

import torch

from ..engine.hub import Source
from ..pipelines import rerank
from ..pipelines.rerank import Ranker
from . import runtime
from .loaders import HubLoader
from .sockets import RERANK_CATEGORY, ClipModel, ImageEncoder, TextEncoder

TOWER = (
    "A CLIP {} tower ({}), with {} of the same family: Kandinsky 2.2's pair, or Karlo's (kakaobrain/karlo-v1-alpha's "
    "text tower with kakaobrain/karlo-v1-alpha-image-variations' image tower)."
)


class DalleLoadCLIP(HubLoader):
    DESCRIPTION = (
        "Loads a CLIP model (text and image towers) to rank images by how well they match a prompt, as DALL·E 1 "
        "ranked its samples. Any CLIP repo on the Hub (transformers' CLIPModel layout) or a local folder."
    )
    CATEGORY = RERANK_CATEGORY
    RETURN_TYPES = ("DALLE_CLIP",)
    RETURN_NAMES = ("clip",)
    DEFAULT_REPO = rerank.CLIP_REPO
    CONTENTS = "CLIP model (config.json, model.safetensors, tokenizer and preprocessor files at its root)"
    FILES = rerank.FETCHES

    def build(self, source: Source, dtype: torch.dtype) -> tuple[ClipModel]:
        tokenizer, processor, model = rerank.load_clip(source, dtype)
        return (ClipModel(tokenizer, processor, runtime.ManagedModule(model)),)


def _ranker(clip: ClipModel | None, text_encoder: TextEncoder | None, image_encoder: ImageEncoder | None) -> Ranker:
    """The one ranker connected: a CLIP model, or the Kandinsky 2.2 prior's text and image towers together."""
    towers = (text_encoder, image_encoder)
    if clip is not None and any(tower is not None for tower in towers):
        raise ValueError("Connect one ranker: either clip, or text_encoder and image_encoder, not both.")
    if clip is not None:
        return Ranker(clip.tokenizer, clip.processor, clip.model.load, clip.model.load)
    if text_encoder is None or image_encoder is None:
        raise ValueError(
            "Connect a ranker: clip (from Load CLIP), or both text_encoder (Load DALL·E 2 Prior) and image_encoder "
            "(Load DALL·E 2 Image Encoder)."
        )
    text, image = text_encoder, image_encoder
    return Ranker(text.tokenizer, image.processor, text.encoder.load, image.encoder.load)


class DalleCLIPRerank:
    DESCRIPTION = (
        "Ranks a batch of images by CLIP score for the prompt and keeps the best, as DALL·E 1 showed the samples "
        "CLIP ranked highest. Score: cosine similarity of the CLIP embeddings × CLIP's logit scale (plain cosine "
        "similarity with the Kandinsky towers, which have no scale)."
    )
    CATEGORY = RERANK_CATEGORY
    RETURN_TYPES = ("IMAGE", "FLOAT", "STRING", "INT")
    RETURN_NAMES = ("images", "scores", "table", "indices")
    OUTPUT_IS_LIST = (False, True, False, True)
    OUTPUT_TOOLTIPS = (
        "The kept images, best first.",
        "Their scores, best first (a list).",
        "The ranking as text: rank, place in the input batch (from 0), score.",
        "Their places in the input batch (from 0), best first (a list).",
    )
    FUNCTION = "rerank"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The batch to rank (e.g. 16 samples of one prompt)."}),
                "text": ("STRING", {"multiline": True, "tooltip": "The prompt to rank the images against."}),
                "keep": ("INT", {"default": 4, "min": 1, "max": 4096, "tooltip": "How many of the best to keep."}),
            },
            "optional": {
                "clip": ("DALLE_CLIP", {"tooltip": "From Load CLIP. Or connect a prior's two CLIP towers instead."}),
                "text_encoder": (
                    "DALLE_TEXT_ENCODER",
                    {"tooltip": TOWER.format("text", "Load DALL·E 2 Prior", "image_encoder")},
                ),
                "image_encoder": (
                    "DALLE_IMAGE_ENCODER",
                    {"tooltip": TOWER.format("image", "Load DALL·E 2 Image Encoder", "text_encoder")},
                ),
            },
        }

    def rerank(
        self,
        images: torch.Tensor,
        text: str,
        keep: int,
        clip: ClipModel | None = None,
        text_encoder: TextEncoder | None = None,
        image_encoder: ImageEncoder | None = None,
    ) -> tuple[torch.Tensor, list[float], str, list[int]]:
        ranked = rerank.rerank(_ranker(clip, text_encoder, image_encoder), images, text, keep, runtime.HOST)
        return ranked.images.to(runtime.output_device()), ranked.scores, ranked.table(), ranked.indices
