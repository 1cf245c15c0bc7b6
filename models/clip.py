"""CLIP text and image towers, through transformers (a well-kept implementation): the Kandinsky 2.2 prior repo's,
and whole CLIP models for reranking; loading them is pipelines/clip_loading.py's.

The prior is conditioned on the projected pooled text embedding, the per-token hidden states and their padding
mask; when no negative prompt is given the decoder's unconditional input is the image tower's embedding of an
all-zero image, which `zero_image_embed` computes. The reranker compares `text_features` with `image_features`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # transformers takes seconds to import: ComfyUI's start-up should not pay for it
    from transformers import (
        CLIPImageProcessor,
        CLIPModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        CLIPVisionModelWithProjection,
    )


@dataclass
class TextEmbeds:
    """Output of the text encoder for a batch of prompts (all on one device)."""

    pooled: torch.Tensor  # [B, D] projected embedding at the first end-of-text token
    states: torch.Tensor  # [B, 77, D] last hidden states
    mask: torch.Tensor  # [B, 77] bool, True where a real token is

    def to(self, device: torch.device, dtype: torch.dtype) -> TextEmbeds:
        return TextEmbeds(self.pooled.to(device, dtype), self.states.to(device, dtype), self.mask.to(device))


def encode_text(tokenizer: CLIPTokenizer, encoder: CLIPTextModelWithProjection, prompts: list[str]) -> TextEmbeds:
    """Tokenize to 77 tokens (cut longer prompts) and encode, as the reference prior pipeline does.

    The encoder itself sees no padding mask (causal attention only); the mask is for the prior.
    """
    tokens = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    device = encoder.device
    out = encoder(tokens.input_ids.to(device))
    return TextEmbeds(out.text_embeds, out.last_hidden_state, tokens.attention_mask.bool().to(device))


def zero_image_embed(encoder: CLIPVisionModelWithProjection) -> torch.Tensor:
    """[1, D] embedding of an all-zero image: the unconditional image embedding for the decoder."""
    size = encoder.config.image_size
    zeros = torch.zeros(1, 3, size, size, device=encoder.device, dtype=encoder.dtype)
    return encoder(zeros).image_embeds


def pixel_values(processor: CLIPImageProcessor, images: torch.Tensor) -> torch.Tensor:
    """[B, H, W, 3|4] floats in 0..1 → CLIP's [B, 3, 224, 224] input (alpha dropped).

    Images go in as 8-bit arrays, exactly what the reference gets from a PIL image, so a PNG loaded in ComfyUI
    embeds identically.
    """
    pixels = (images[..., :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return processor(images=list(pixels), return_tensors="pt").pixel_values


def encode_images(processor, encoder: CLIPVisionModelWithProjection, images: torch.Tensor) -> torch.Tensor:
    """[B, H, W, 3] floats in 0..1 → [B, D] CLIP image embeddings."""
    return encoder(pixel_values(processor, images).to(encoder.device, encoder.dtype)).image_embeds


# CLIPModel and the towers WithProjection name their parts alike: text_model + text_projection, vision_model +
# visual_projection. Calling the parts (rather than get_text_features, whose return type transformers 5 changed)
# serves both.
def text_features(model: CLIPModel | CLIPTextModelWithProjection, input_ids: torch.Tensor) -> torch.Tensor:
    """[N, D] projected text embeddings (transformers' text_embeds) of token ids [N, T]."""
    return model.text_projection(model.text_model(input_ids=input_ids.to(model.device)).pooler_output)


def image_features(model: CLIPModel | CLIPVisionModelWithProjection, pixels: torch.Tensor) -> torch.Tensor:
    """[N, D] projected image embeddings (transformers' image_embeds) of CLIP's input [N, 3, 224, 224]."""
    pixels = pixels.to(model.device, model.dtype)
    return model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
