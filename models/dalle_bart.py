"""DALL·E Mini / Mega (kuprel/min-dalle): the BART text encoder and the image-token decoder with its key/value cache.

Parameter names are min-dalle's (DalleBartEncoder, DalleBartDecoder), so the Hub's pickled state dicts load as
they are. Sampling and loading are in pipelines/dalle_mini/ (stages.py, loading.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

TEXT_TOKENS = 64  # text positions; longer prompts are cut
PAD_TOKEN = 1  # BART's <pad>: masked out of every attention over the text
IMAGE_SIDE = 16  # an image is 16 × 16 VQGAN codes …
IMAGE_TOKENS = IMAGE_SIDE**2  # … generated one after another
IMAGE_CODES = 2**14  # the VQGAN codebook; the decoder's larger vocabulary beyond it is never sampled
START_TOKEN = IMAGE_CODES - 1  # what min-dalle feeds the decoder before the first code


@dataclass(frozen=True)
class Hyperparameters:
    """min-dalle's constructor arguments (head counts cannot be read from the weights' shapes)."""

    layer_count: int
    embed_count: int
    attention_head_count: int
    glu_embed_count: int
    text_vocab_count: int
    image_vocab_count: int


HYPERPARAMETERS = {
    "mega": Hyperparameters(24, 2048, 32, 4096, 50272, 16415),
    "mini": Hyperparameters(12, 1024, 16, 2730, 50264, 16384),
}


class GLU(nn.Module):
    """Gated GELU feed-forward with a LayerNorm before and inside it, no biases."""

    def __init__(self, embed_count: int, glu_embed_count: int):
        super().__init__()
        self.ln0 = nn.LayerNorm(embed_count)
        self.ln1 = nn.LayerNorm(glu_embed_count)
        self.fc0 = nn.Linear(embed_count, glu_embed_count, bias=False)
        self.fc1 = nn.Linear(embed_count, glu_embed_count, bias=False)
        self.fc2 = nn.Linear(glu_embed_count, embed_count, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln0(x)
        return self.fc2(self.ln1(F.gelu(self.fc0(x)) * self.fc1(x)))


class Attention(nn.Module):
    """Multi-head attention without biases."""

    def __init__(self, embed_count: int, head_count: int):
        super().__init__()
        self.head_count = head_count
        self.k_proj = nn.Linear(embed_count, embed_count, bias=False)
        self.v_proj = nn.Linear(embed_count, embed_count, bias=False)
        self.q_proj = nn.Linear(embed_count, embed_count, bias=False)
        self.out_proj = nn.Linear(embed_count, embed_count, bias=False)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, S, E] → [B, heads, S, E / heads]"""
        return x.unflatten(-1, (self.head_count, -1)).transpose(1, 2)

    def keys_values(self, x: torch.Tensor) -> torch.Tensor:
        """[B, S, E] → [2 (keys, values), B, heads, S, E / heads]"""
        return torch.stack([self.heads(self.k_proj(x)), self.heads(self.v_proj(x))])

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-head q [B, h, S, d] over k, v [B, h, T, d] where the bool `mask` (→ [B, h, S, T]) is True → [B, S, E]."""
        return self.out_proj(F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).flatten(2))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Self-attention of x [B, S, E]."""
        return self.attend(self.heads(self.q_proj(x)), self.heads(self.k_proj(x)), self.heads(self.v_proj(x)), mask)


class EncoderLayer(nn.Module):
    def __init__(self, hp: Hyperparameters):
        super().__init__()
        self.pre_self_attn_layer_norm = nn.LayerNorm(hp.embed_count)
        self.self_attn = Attention(hp.embed_count, hp.attention_head_count)
        self.self_attn_layer_norm = nn.LayerNorm(hp.embed_count)
        self.glu = GLU(hp.embed_count, hp.glu_embed_count)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn_layer_norm(self.self_attn(self.pre_self_attn_layer_norm(x), mask))
        return x + self.glu(x)


class DalleBartEncoder(nn.Module):
    def __init__(self, hp: Hyperparameters):
        super().__init__()
        self.embed_tokens = nn.Embedding(hp.text_vocab_count, hp.embed_count)
        self.embed_positions = nn.Embedding(TEXT_TOKENS, hp.embed_count)
        self.layers = nn.ModuleList(EncoderLayer(hp) for _ in range(hp.layer_count))
        self.layernorm_embedding = nn.LayerNorm(hp.embed_count)
        self.final_ln = nn.LayerNorm(hp.embed_count)

    def forward(self, text_tokens: torch.Tensor) -> torch.Tensor:
        """[B, 64] token ids → [B, 64, E] text states."""
        mask = text_tokens.ne(PAD_TOKEN)[:, None, None, :]
        x = self.layernorm_embedding(self.embed_tokens(text_tokens) + self.embed_positions.weight)
        for layer in self.layers:
            x = layer(x, mask)
        return self.final_ln(x)


@dataclass
class DecoderCache:
    """What the decoder keeps between steps for 2n rows (n unconditional, then the same n images conditioned)."""

    self_kv: torch.Tensor  # [layers, 2 (keys, values), 2n, heads, 256, head width]: allocated once, a step fills one
    cross_kv: torch.Tensor  # [layers, 2 (keys, values), 2 texts, heads, 64, head width]: the text's, computed once
    text_mask: torch.Tensor  # [2, 1, 1, 64] bool: True at real text tokens
    positions: torch.Tensor  # [256] image token positions 0…255


class DecoderLayer(nn.Module):
    def __init__(self, hp: Hyperparameters):
        super().__init__()
        self.pre_self_attn_layer_norm = nn.LayerNorm(hp.embed_count)
        self.self_attn = Attention(hp.embed_count, hp.attention_head_count)
        self.self_attn_layer_norm = nn.LayerNorm(hp.embed_count)
        self.pre_encoder_attn_layer_norm = nn.LayerNorm(hp.embed_count)
        self.encoder_attn = Attention(hp.embed_count, hp.attention_head_count)
        self.encoder_attn_layer_norm = nn.LayerNorm(hp.embed_count)
        self.glu = GLU(hp.embed_count, hp.glu_embed_count)

    def forward(
        self,
        x: torch.Tensor,
        index: torch.Tensor,
        self_kv: torch.Tensor,
        causal: torch.Tensor,
        cross_kv: torch.Tensor,
        text_mask: torch.Tensor,
    ) -> torch.Tensor:
        """One position: x [2n, 1, E] at `index` [1]; this layer's caches; causal [1, 1, 1, 256] → [2n, 1, E]."""
        attn = self.self_attn
        h = self.pre_self_attn_layer_norm(x)
        keys, values = self_kv
        keys.index_copy_(2, index, attn.heads(attn.k_proj(h)))
        values.index_copy_(2, index, attn.heads(attn.v_proj(h)))
        h = attn.attend(attn.heads(attn.q_proj(h)), keys, values, causal)
        x = x + self.self_attn_layer_norm(h)

        # The n image rows of each half share one text, so they attend as the n queries of one sequence against
        # that text's keys: the text's keys and values are never copied n times.
        attn = self.encoder_attn
        h = attn.q_proj(self.pre_encoder_attn_layer_norm(x)).view(2, -1, x.shape[-1])  # [2 texts, n, E]
        h = attn.attend(attn.heads(h), *cross_kv, text_mask).view_as(x)
        x = x + self.encoder_attn_layer_norm(h)
        return x + self.glu(x)


class DalleBartDecoder(nn.Module):
    def __init__(self, hp: Hyperparameters):
        super().__init__()
        self.embed_tokens = nn.Embedding(hp.image_vocab_count + 1, hp.embed_count)
        self.embed_positions = nn.Embedding(IMAGE_TOKENS, hp.embed_count)
        self.layers = nn.ModuleList(DecoderLayer(hp) for _ in range(hp.layer_count))
        self.layernorm_embedding = nn.LayerNorm(hp.embed_count)
        self.final_ln = nn.LayerNorm(hp.embed_count)
        self.lm_head = nn.Linear(hp.embed_count, hp.image_vocab_count + 1, bias=False)

    def start(self, text_states: torch.Tensor, text_tokens: torch.Tensor, image_count: int) -> DecoderCache:
        """Caches for sampling `image_count` images from the encoder's [2, 64, E] states of [2, 64] tokens."""
        heads = self.layers[0].self_attn.head_count
        rows, width = 2 * image_count, text_states.shape[-1] // heads
        self_kv = text_states.new_zeros(len(self.layers), 2, rows, heads, IMAGE_TOKENS, width)
        cross_kv = torch.stack([layer.encoder_attn.keys_values(text_states) for layer in self.layers])
        positions = torch.arange(IMAGE_TOKENS, device=text_states.device)
        return DecoderCache(self_kv, cross_kv, text_tokens.ne(PAD_TOKEN)[:, None, None, :], positions)

    def cache_bytes(self, image_count: int) -> int:
        """Memory of start()'s self-attention cache, most of what sampling needs beside the weights."""
        width, itemsize = self.embed_positions.embedding_dim, self.lm_head.weight.element_size()
        return len(self.layers) * 2 * 2 * image_count * IMAGE_TOKENS * width * itemsize

    def forward(self, prev_tokens: torch.Tensor, index: torch.Tensor, cache: DecoderCache) -> torch.Tensor:
        """The n previous codes [n] at position `index` [1] → logits [2n, 16384] (unconditional rows first)."""
        tokens = prev_tokens.repeat(2)  # both halves continue the same images
        x = self.embed_tokens(tokens)[:, None] + self.embed_positions(index)
        x = self.layernorm_embedding(x)
        causal = (cache.positions <= index).view(1, 1, 1, -1)  # later positions still hold zeros
        for layer, self_kv, cross_kv in zip(self.layers, cache.self_kv, cache.cross_kv, strict=True):
            x = layer(x, index, self_kv, causal, cross_kv, cache.text_mask)
        return F.linear(self.final_ln(x[:, 0]), self.lm_head.weight[:IMAGE_CODES])  # only codes are ever sampled


class DalleBart(nn.Module):
    """DALL·E Mini or Mega: the text encoder and the image-token decoder, moved and offloaded together."""

    def __init__(self, encoder: DalleBartEncoder, decoder: DalleBartDecoder):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
