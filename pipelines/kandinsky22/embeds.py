"""The values that flow between Kandinsky 2.2's stages: a prompt's CLIP text embeddings (clip_text.PromptEmbeds,
shared with Karlo) and CLIP image embeddings. The nodes pass them as they are (the DALLE_TEXT_EMBEDS and
DALLE_IMAGE_EMBEDS sockets)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..clip_text import PromptEmbeds

__all__ = ["ImageEmbeds", "PromptEmbeds"]


@dataclass
class ImageEmbeds:
    """[B, D] CLIP image embeddings and the [B, D] negative ones the decoder guides away from."""

    positive: torch.Tensor
    negative: torch.Tensor

    def __repr__(self) -> str:
        return f"ImageEmbeds({' x '.join(map(str, self.positive.shape))}, {self.positive.dtype})"

    def to(self, device: torch.device) -> ImageEmbeds:
        return ImageEmbeds(self.positive.to(device), self.negative.to(device))
