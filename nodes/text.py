"""Text encoding: a prompt → CLIP embeddings for the prior."""

from __future__ import annotations

from ..pipelines.checks import check_prompt
from ..pipelines.kandinsky22 import stages
from . import runtime
from .sockets import KANDINSKY_CATEGORY, PromptEmbeds, TextEncoder

NO_NEGATIVE_HINT = " (For no negative prompt, leave the prior's negative input unconnected.)"


class DalleTextEncode:
    DESCRIPTION = (
        "Encodes a prompt with the CLIP text tower of Load DALL·E 2 Prior (ViT-bigG for Kandinsky 2.2, ViT-L for "
        "Karlo), for the prior and Karlo's decoder. Also use it for a negative prompt."
    )
    CATEGORY = KANDINSKY_CATEGORY
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
        store = runtime.offload_device()
        check_prompt(text, hint=NO_NEGATIVE_HINT)
        return (stages.encode_prompt(text_encoder.tokenizer, text_encoder.encoder.load, text, store),)
