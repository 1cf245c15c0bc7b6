"""Karlo's pixel-space networks (kakaobrain/karlo-v1-alpha, DALL·E 2 as the paper drew it): the text projection, the
64 px decoder and the 64 → 256 super-resolution UNets. Parameter names follow diffusers' UnCLIPTextProjModel,
UNet2DConditionModel and UNet2DModel as Karlo configures them, so its checkpoints load with strict=True.

    image embedding ─┬─ Linear ─────────────────────┐
    pooled text ─────┼─ Linear ─────────────────────┴─ sum: added to the time embedding (class_embed_type identity)
                     └─ Linear → 4 context tokens ──┐
    text states ────── Linear + LayerNorm ──────────┴─ 4 + 77 context tokens for every attention layer (with a
                                                       padding mask over the text tokens)
    decoder:   noisy 64 px image (3) → trunk (unet_blocks, scale-shift resnets) → ε (3) and variance (3)
    super-res: noisy 256 px image (3) + bicubic upscale of the 64 px image (3) → trunk (resnets only, no context,
               additive time conditioning) → ε (3)
"""

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..engine.checkpoints import config_settings
from .unet_blocks import CrossAttentionTrunk, Trunk, UNetTrunk
from .unet_settings import (
    ABSENT_FEATURES,
    CONDITION_UNET_DEFAULTS,
    PLAIN_UNET_DEFAULTS,
    attention_levels,
    check_settings,
    unsupported,
)

_TEXT_PROJ_DEFAULTS = dict(
    clip_extra_context_tokens=4, clip_embeddings_dim=768, time_embed_dim=0, cross_attention_dim=0
)  # UnCLIPTextProjModel's; it has no default for the two widths (0 here: refused)


@dataclass
class TextProjConfig:
    embed_dim: int = 768  # CLIP ViT-L/14's image and text embeddings
    time_embed_dim: int = 1280  # the decoder's
    cross_attention_dim: int = 1536  # the decoder's context width
    extra_tokens: int = 4  # context tokens made from the image embedding

    @classmethod
    def from_diffusers(cls, config: dict[str, Any]) -> "TextProjConfig":
        settings = config_settings(config, _TEXT_PROJ_DEFAULTS, "text projection")
        for key in ("time_embed_dim", "cross_attention_dim"):
            if settings[key] <= 0:
                raise ValueError(f"text projection setting {key} is missing or not positive")
        return cls(
            settings["clip_embeddings_dim"],
            settings["time_embed_dim"],
            settings["cross_attention_dim"],
            settings["clip_extra_context_tokens"],
        )


class TextProjection(nn.Module):
    """CLIP image embedding + the prompt's CLIP text → the decoder's class embedding and context tokens."""

    def __init__(self, config: TextProjConfig):
        super().__init__()
        self.config = cfg = config
        # the image embedding of the unconditional rows of classifier-free guidance
        self.learned_classifier_free_guidance_embeddings = nn.Parameter(torch.zeros(cfg.embed_dim))
        self.embedding_proj = nn.Linear(cfg.embed_dim, cfg.time_embed_dim)
        self.clip_image_embeddings_project_to_time_embeddings = nn.Linear(cfg.embed_dim, cfg.time_embed_dim)
        self.clip_extra_context_tokens_proj = nn.Linear(cfg.embed_dim, cfg.extra_tokens * cfg.cross_attention_dim)
        self.encoder_hidden_states_proj = nn.Linear(cfg.embed_dim, cfg.cross_attention_dim)
        self.text_encoder_hidden_states_norm = nn.LayerNorm(cfg.cross_attention_dim)

    def unconditional(self, rows: int) -> Tensor:
        """[rows, D]: the image embedding the unguided rows see."""
        return self.learned_classifier_free_guidance_embeddings.expand(rows, -1)

    def forward(self, image_embeds: Tensor, text_pooled: Tensor, text_states: Tensor) -> tuple[Tensor, Tensor]:
        """image_embeds [B, D], text_pooled [B, D], text_states [B, T, D] → class embedding [B, time_embed_dim] and
        context [B, extra_tokens + T, cross_attention_dim]."""
        class_embed = self.clip_image_embeddings_project_to_time_embeddings(image_embeds)
        class_embed = class_embed + self.embedding_proj(text_pooled)
        # the Linear's output is laid out (width, token), as Karlo's original reshape reads it
        extra = self.clip_extra_context_tokens_proj(image_embeds).unflatten(1, (-1, self.config.extra_tokens))
        text = self.text_encoder_hidden_states_norm(self.encoder_hidden_states_proj(text_states))
        return class_embed, torch.cat([extra.transpose(1, 2), text], dim=1)


@dataclass
class KarloDecoderConfig(CrossAttentionTrunk):
    in_channels: int = 3
    out_channels: int = 6  # ε and the learned-variance interpolation
    block_out_channels: tuple[int, ...] = (320, 640, 960, 1280)
    attention_levels: tuple[bool, ...] = (False, True, True, True)
    layers_per_block: int = 3
    head_dim: int = 64
    cross_attention_dim: int = 1536
    groups: int = 32
    eps: float = 1e-5

    @classmethod
    def from_diffusers(cls, config: dict[str, Any]) -> "KarloDecoderConfig":
        """Map Karlo's decoder/config.json; ValueError on settings we do not build (Kandinsky 2.2's image-projection
        decoder among them)."""
        config = config_settings(config, CONDITION_UNET_DEFAULTS, "UNet")
        required = {
            "class_embed_type": "identity",
            "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
            "resnet_time_scale_shift": "scale_shift",
        }
        absent = (*ABSENT_FEATURES, "encoder_hid_dim", "encoder_hid_dim_type", "addition_embed_type")
        numbers = ("layers_per_block", "attention_head_dim", "cross_attention_dim", "norm_num_groups")
        check_settings(config, required, absent, numbers)
        return cls(
            in_channels=config["in_channels"],
            out_channels=config["out_channels"],
            block_out_channels=tuple(config["block_out_channels"]),
            attention_levels=attention_levels(config),
            layers_per_block=config["layers_per_block"],
            head_dim=config["attention_head_dim"],
            cross_attention_dim=config["cross_attention_dim"],
            groups=config["norm_num_groups"],
            eps=config["norm_eps"],
        )


class KarloDecoder(UNetTrunk):
    """The 64 px decoder: a noisy image → its ε and variance, conditioned through TextProjection's outputs."""

    def __init__(self, config: KarloDecoderConfig):
        super().__init__(config.trunk, config.in_channels, config.out_channels)
        self.config = config

    def forward(
        self, x: Tensor, timestep: Tensor, class_embed: Tensor, context: Tensor, context_mask: Tensor
    ) -> Tensor:
        """x [B, 3, H, W]; timestep [B] or 0-d; class_embed [B, time_embed_dim] and context [B, L, width] from
        TextProjection; context_mask [B, L] bool, True for the tokens to attend to → [B, 6, H, W]."""
        self.check_size(x)
        dtype = self.conv_in.weight.dtype
        emb = self.time_embed(timestep, x.shape[0], x.device) + class_embed.to(dtype)
        bias = ((1 - context_mask.to(dtype)) * -10000.0)[:, None, None, :]  # [B, 1, 1, L]
        return self.trunk(x.to(dtype), emb, (context.to(dtype), bias))


# UNet2DModel settings the super-resolution UNets fix; the other keys (attention_head_dim, downsample_type …) are
# read only by blocks they do not have.
_SUPER_RES_REQUIRED = {"add_attention": False, "mid_block_type": "UNetMidBlock2D", "time_embedding_type": "positional"}
_SUPER_RES_ABSENT = ("center_input_sample", "class_embed_type", "num_class_embeds", "time_embedding_dim", "dropout")


@dataclass
class SuperResConfig:
    in_channels: int = 6  # the noisy image and the upscaled low-resolution one
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (320, 640, 960, 1280)
    layers_per_block: int = 3
    groups: int = 32
    eps: float = 1e-5
    scale_shift: bool = False  # Karlo's resnet_time_scale_shift is "default": the time embedding is added

    @property
    def trunk(self) -> Trunk:
        levels = len(self.block_out_channels)
        return Trunk(
            self.block_out_channels,
            (False,) * levels,
            self.layers_per_block,
            self.groups,
            self.eps,
            scale_shift=self.scale_shift,
            mid_attention=False,
        )

    @classmethod
    def from_diffusers(cls, config: dict[str, Any]) -> "SuperResConfig":
        config = config_settings(config, PLAIN_UNET_DEFAULTS, "UNet")
        check_settings(config, _SUPER_RES_REQUIRED, _SUPER_RES_ABSENT, ("layers_per_block", "norm_num_groups"))
        if any(attention_levels(config)):
            raise unsupported(config, "down_block_types")
        if config["resnet_time_scale_shift"] not in ("default", "scale_shift"):
            raise unsupported(config, "resnet_time_scale_shift")
        return cls(
            in_channels=config["in_channels"],
            out_channels=config["out_channels"],
            block_out_channels=tuple(config["block_out_channels"]),
            layers_per_block=config["layers_per_block"],
            groups=config["norm_num_groups"],
            eps=config["norm_eps"],
            scale_shift=config["resnet_time_scale_shift"] == "scale_shift",
        )


class SuperResUNet(UNetTrunk):
    """One super-resolution UNet: [noisy image, upscaled low-resolution image] → ε."""

    def __init__(self, config: SuperResConfig):
        super().__init__(config.trunk, config.in_channels, config.out_channels)
        self.config = config

    def forward(self, x: Tensor, timestep: Tensor) -> Tensor:
        """x [B, 6, H, W] (H, W multiples of 2^(levels-1)); timestep [B] or 0-d → [B, 3, H, W]."""
        self.check_size(x)
        emb = self.time_embed(timestep, x.shape[0], x.device)
        return self.trunk(x.to(self.conv_in.weight.dtype), emb)
