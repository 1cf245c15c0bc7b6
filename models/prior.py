"""unCLIP diffusion prior (DALL·E 2 / Kandinsky 2.2): text embeddings -> CLIP image embedding.

A causal transformer over 81 tokens: 77 projected text states, then the pooled text embedding, the timestep,
the noisy image embedding and a learned "prd" token whose output is the predicted clean image embedding.
Module names mirror diffusers' `PriorTransformer`, so its safetensors load with `strict=True`.

The 78 text tokens come first and attention is causal, so their keys and values in every layer are the same at
every sampling step: `encode_text` computes them once per generation and `step` runs only the 3 step tokens
(timestep, noisy embedding, prd) through the layers, against that cache.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..engine.checkpoints import config_settings
from .timestep import TimestepMLP, timestep_embedding

# diffusers' PriorTransformer defaults, used for keys a config.json leaves out.
_DIFFUSERS_DEFAULTS = dict(
    num_attention_heads=32,
    attention_head_dim=64,
    num_layers=20,
    embedding_dim=768,
    num_embeddings=77,
    additional_embeddings=4,
    dropout=0.0,
    time_embed_act_fn="silu",
    norm_in_type=None,
    embedding_proj_norm_type=None,
    encoder_hid_proj_type="linear",
    added_emb_type="prd",
    time_embed_dim=None,
    embedding_proj_dim=None,
    clip_embed_dim=None,
)


@dataclass
class PriorConfig:
    heads: int = 32
    head_dim: int = 64
    layers: int = 20
    embedding_dim: int = 1280  # CLIP embedding size: 1280 for Kandinsky 2.2 (ViT-bigG), 768 for Karlo (ViT-L)
    num_embeddings: int = 77  # text tokens
    additional_embeddings: int = 4  # pooled text, timestep, noisy embedding, prd token

    @property
    def width(self) -> int:
        return self.heads * self.head_dim

    @property
    def text_tokens(self) -> int:
        """Tokens whose keys and values encode_text caches: the text states and the pooled text embedding."""
        return self.num_embeddings + 1

    @classmethod
    def from_diffusers(cls, config: dict) -> "PriorConfig":
        """Build from a diffusers `prior/config.json` dict; settings Kandinsky 2.2 and Karlo don't use are rejected."""
        settings = config_settings(config, _DIFFUSERS_DEFAULTS, "prior")
        cfg = cls(
            heads=settings["num_attention_heads"],
            head_dim=settings["attention_head_dim"],
            layers=settings["num_layers"],
            embedding_dim=settings["embedding_dim"],
            num_embeddings=settings["num_embeddings"],
            additional_embeddings=settings["additional_embeddings"],
        )
        supported = {  # other values only appear in Shap-E style priors, which we do not implement
            "additional_embeddings": (4,),  # diffusers only lines up positions and mask with 4 non-text tokens
            "dropout": (0.0,),  # inference only
            "time_embed_act_fn": ("silu",),
            "norm_in_type": (None,),
            "embedding_proj_norm_type": (None,),
            "encoder_hid_proj_type": ("linear",),
            "added_emb_type": ("prd",),
            "time_embed_dim": (None, cfg.width),
            "embedding_proj_dim": (None, cfg.embedding_dim),
            "clip_embed_dim": (None, cfg.embedding_dim),
        }
        for key, allowed in supported.items():
            if settings[key] not in allowed:
                raise ValueError(f"unsupported prior setting {key}={settings[key]!r}; supported: {allowed}")
        return cfg


def attention_bias(text_mask: Tensor, num_extra: int, dtype: torch.dtype) -> Tensor:
    """[B, T] text mask (True = real token) -> additive bias [B, 1, T + num_extra, T + num_extra].

    Causal and padding penalties are each -10000 and add up, as in diffusers. The finite penalty (not -inf) keeps
    softmax defined for padded query rows that see only padding, e.g. row 0 when the first token is padding.
    """
    seq_len = text_mask.shape[1] + num_extra
    key_is_pad = F.pad(text_mask.logical_not(), (0, num_extra), value=False)  # [B, L]; extra tokens always visible
    is_future = torch.ones(seq_len, seq_len, dtype=torch.bool, device=text_mask.device).triu(1)  # [L, L]
    penalties = key_is_pad[:, None, None, :].float() + is_future.float()  # [B, 1, L, L], each 0, 1 or 2
    return (penalties * -10000.0).to(dtype)


KeysValues = tuple[Tensor, Tensor]  # one attention layer's keys and values, each [B, heads, tokens, head_dim]


@dataclass(frozen=True)
class PriorText:
    """The text's part of a prior step, the same at every step of a generation (PriorTransformer.encode_text)."""

    keys_values: tuple[KeysValues, ...]  # per layer, the 78 text tokens' keys and values
    step_bias: Tensor  # [B, 1, 3, 81]: the step tokens' attention bias rows (padding and causal penalties)


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = (nn.Linear(width, width) for _ in range(3))
        self.to_out = nn.ModuleList([nn.Linear(width, width)])  # diffusers' [Linear, Dropout]: key "to_out.0"

    def forward(self, x: Tensor, bias: Tensor, earlier: KeysValues | None = None) -> tuple[Tensor, KeysValues]:
        """x [B, L, W] attends to the cached keys and values of `earlier` tokens, then to its own; bias covers both.
        Returns the output [B, L, W] and x's own keys and values [B, H, L, D], for later tokens to attend to."""
        split_heads = "b l (h d) -> b h l d"
        q, k, v = (rearrange(proj(x), split_heads, h=self.heads) for proj in (self.to_q, self.to_k, self.to_v))
        keys, values = (k, v) if earlier is None else (torch.cat([earlier[0], k], 2), torch.cat([earlier[1], v], 2))
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=bias)  # [B, H, L, D]
        return self.to_out[0](rearrange(out, "b h l d -> b l (h d)")), (k, v)


class FeedForward(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        # diffusers' layout [GELU(.proj), Dropout, Linear]; the Identity keeps the output layer at key "net.2"
        hidden = 4 * width
        up = nn.ModuleDict({"proj": nn.Linear(width, hidden)})
        self.net = nn.Sequential(up, nn.Identity(), nn.Linear(hidden, width))

    def forward(self, x: Tensor) -> Tensor:
        return self.net[2](F.gelu(self.net[0]["proj"](x)))


class TransformerBlock(nn.Module):
    """Pre-norm self-attention + MLP (diffusers' BasicTransformerBlock without cross-attention, hence no norm2)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norm1, self.attn1 = nn.LayerNorm(width), SelfAttention(width, heads)
        self.norm3, self.ff = nn.LayerNorm(width), FeedForward(width)

    def forward(self, x: Tensor, bias: Tensor, earlier: KeysValues | None = None) -> tuple[Tensor, KeysValues]:
        attended, keys_values = self.attn1(self.norm1(x), bias, earlier)
        x = x + attended
        return x + self.ff(self.norm3(x)), keys_values


class PriorTransformer(nn.Module):
    def __init__(self, config: PriorConfig):
        super().__init__()
        self.config = config
        width, dim = config.width, config.embedding_dim
        self.time_embedding = TimestepMLP(width, width)
        self.proj_in = nn.Linear(dim, width)
        self.embedding_proj = nn.Linear(dim, width)
        self.encoder_hidden_states_proj = nn.Linear(dim, width)
        seq_len = config.num_embeddings + config.additional_embeddings
        self.positional_embedding = nn.Parameter(torch.zeros(1, seq_len, width))
        self.prd_embedding = nn.Parameter(torch.zeros(1, 1, width))
        self.transformer_blocks = nn.ModuleList(TransformerBlock(width, config.heads) for _ in range(config.layers))
        self.norm_out = nn.LayerNorm(width)
        self.proj_to_clip_embeddings = nn.Linear(width, dim)
        # statistics of the CLIP image embeddings the prior was trained on, see unnormalize()
        self.clip_mean = nn.Parameter(torch.zeros(1, dim))
        self.clip_std = nn.Parameter(torch.zeros(1, dim))

    def forward(
        self, noisy_embeds: Tensor, timestep: Tensor, text_embeds: Tensor, text_states: Tensor, text_mask: Tensor
    ) -> Tensor:
        """noisy_embeds [B, D], timestep [B] or 0-d, text_embeds [B, D], text_states [B, 77, D], text_mask [B, 77]
        (True = real token) -> predicted clean image embedding [B, D], still normalized. Samplers call
        encode_text once and step at every step instead."""
        return self.step(noisy_embeds, timestep, self.encode_text(text_embeds, text_states, text_mask))

    def encode_text(self, text_embeds: Tensor, text_states: Tensor, text_mask: Tensor) -> PriorText:
        """The text tokens' part of every step (arguments as forward's), for inference: run it under no_grad or
        inference_mode, or the cache keeps the text's whole autograd graph alive across the sampling loop.

        Text rows that see only padding (leading padding) attend to the step tokens in diffusers' full pass, so
        their hidden states here differ from it; every later token gives them zero weight (their -10000 padding
        penalty underflows in softmax beside the always-visible pooled token), so the predictions do not."""
        x = torch.cat([self.encoder_hidden_states_proj(text_states), self.embedding_proj(text_embeds)[:, None]], dim=1)
        text_len = self.config.text_tokens
        x = x + self.positional_embedding[:, :text_len].to(x.dtype)
        bias = attention_bias(text_mask.to(x.device), self.config.additional_embeddings, x.dtype)  # [B, 1, 81, 81]
        keys_values = []
        for block in self.transformer_blocks:
            x, block_keys_values = block(x, bias[:, :, :text_len, :text_len])
            keys_values.append(block_keys_values)
        return PriorText(tuple(keys_values), bias[:, :, text_len:])

    def step(self, noisy_embeds: Tensor, timestep: Tensor, text: PriorText) -> Tensor:
        """forward's prediction for noisy_embeds [B, D] at timestep ([B] or 0-d), with the text already encoded:
        only the 3 step tokens go through the layers, each attending to the text's cached keys and values."""
        batch = noisy_embeds.shape[0]
        timesteps = timestep.to(noisy_embeds.device).reshape(-1).expand(batch)  # [B]
        time = timestep_embedding(timesteps, self.config.width).to(noisy_embeds.dtype)  # [B, W]
        time = self.time_embedding(time)

        x = torch.cat(
            [
                time[:, None],  # [B, 1, W]
                self.proj_in(noisy_embeds)[:, None],  # [B, 1, W]
                self.prd_embedding.to(time.dtype).expand(batch, -1, -1),  # [B, 1, W]
            ],
            dim=1,
        )  # [B, 3, W]
        x = x + self.positional_embedding[:, -x.shape[1] :].to(x.dtype)
        for block, earlier in zip(self.transformer_blocks, text.keys_values, strict=True):
            x, _ = block(x, text.step_bias, earlier)
        # LayerNorm is per token, so normalizing only the prd token (the read-out) matches diffusers
        return self.proj_to_clip_embeddings(self.norm_out(x[:, -1]))  # [B, D]

    def unnormalize(self, embeds: Tensor) -> Tensor:
        """Map a normalized prediction to CLIP image-embedding space (diffusers' post_process_latents)."""
        return embeds * self.clip_std + self.clip_mean
