"""Text encoding: a prompt → CLIP embeddings for the prior."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.clip import TextEmbeds, encode_text
from . import runtime
from .loaders import CATEGORY, TextEncoder


@dataclass
class PromptEmbeds:
    """DALLE_TEXT_EMBEDS: one prompt's embeddings, with the empty prompt's (the prior's unconditional input)."""

    text: str
    prompt: TextEmbeds
    empty: TextEmbeds

    def __repr__(self) -> str:  # ComfyUI puts node inputs into error reports: keep tensors out of them
        return f"PromptEmbeds({self.text!r})"


class DalleTextEncode:
    DESCRIPTION = "Encodes a prompt with CLIP ViT-bigG for the Kandinsky 2.2 prior. Also use it for a negative prompt."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("DALLE_TEXT_EMBEDS",)
    RETURN_NAMES = ("embeds",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "text_encoder": ("DALLE_TEXT_ENCODER", {"tooltip": "From Load DALL·E 2 Prior."}),
                "text": (
                    "STRING",
                    {
                        "multiline": True,
                        "dynamicPrompts": True,
                        "tooltip": "The prompt. CLIP reads at most 75 tokens; the rest is cut.",
                    },
                ),
            }
        }

    def encode(self, text_encoder: TextEncoder, text: str) -> tuple[PromptEmbeds]:
        if not text.strip():
            raise ValueError(
                "The prompt is empty: write what the image should show. (For no negative prompt, leave the "
                "prior's negative input unconnected.)"
            )
        encoder = text_encoder.encoder.load()
        with torch.inference_mode():
            both = encode_text(text_encoder.tokenizer, encoder, [text, ""])
        store = runtime.offload_device()
        rows = [
            TextEmbeds(both.pooled[i : i + 1], both.states[i : i + 1], both.mask[i : i + 1]).to(
                store, both.pooled.dtype
            )
            for i in range(2)
        ]
        return (PromptEmbeds(text, rows[0], rows[1]),)
