"""A prompt's CLIP text embeddings, as the unCLIP priors and Karlo's decoder read them: the prompt's and the empty
prompt's (the unconditional input of classifier-free guidance). The Kandinsky 2.2 and Karlo stages share them, so
one text-encode node feeds either family (the DALLE_TEXT_EMBEDS socket)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..models import clip
from ..models.clip import TextEmbeds
from .checks import check_prompt

if TYPE_CHECKING:  # transformers takes seconds to import: ComfyUI's start-up should not pay for it
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer


@dataclass
class PromptEmbeds:
    """One prompt's embeddings, with the empty prompt's (the prior's unconditional input)."""

    text: str
    prompt: TextEmbeds
    empty: TextEmbeds

    def __repr__(self) -> str:  # ComfyUI puts node inputs into error reports: keep tensors out of them
        return f"PromptEmbeds({self.text!r})"


def encode_prompt(
    tokenizer: CLIPTokenizer, load: Callable[[], CLIPTextModelWithProjection], text: str, store: torch.device
) -> PromptEmbeds:
    """The prompt's CLIP embeddings, and the empty prompt's (the prior's unconditional input), kept on `store`
    between stages; `load()` readies the text tower once the text is checked."""
    check_prompt(text)
    return _encode(tokenizer, load(), [text, ""], store)


def encode_empty(
    tokenizer: CLIPTokenizer, load: Callable[[], CLIPTextModelWithProjection], store: torch.device
) -> PromptEmbeds:
    """The empty prompt's embeddings as both the prompt and the unconditional input: the text Karlo's image
    variations are decoded with."""
    return _encode(tokenizer, load(), [""], store)


def _encode(
    tokenizer: CLIPTokenizer, encoder: CLIPTextModelWithProjection, texts: list[str], store: torch.device
) -> PromptEmbeds:
    with torch.inference_mode():
        both = clip.encode_text(tokenizer, encoder, texts)
    rows = [
        TextEmbeds(both.pooled[i : i + 1], both.states[i : i + 1], both.mask[i : i + 1]).to(store, both.pooled.dtype)
        for i in range(len(texts))
    ]
    return PromptEmbeds(texts[0], rows[0], rows[-1])
