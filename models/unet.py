"""Kandinsky 2.2 decoder UNet: DALL·E 2's image decoder, conditioned on a CLIP image embedding.

Parameter names follow diffusers' `UNet2DConditionModel` (as configured by the Kandinsky 2.2 checkpoints), so its
safetensors load with strict=True. The layout, from the top:

    image embedding ─┬─ Linear + LayerNorm ──────────────── added to the sinusoidal time embedding → emb
                     └─ Linear + LayerNorm → 32 tokens ──── context for every attention layer
    [depth ControlNet: hint image (pixels) → conv stack, /8 → 4 feature maps, concatenated to the latent]
    conv_in → down levels (ResnetBlocks [+ attention], then a downsampling ResnetBlock)
            → mid (ResnetBlock, attention, ResnetBlock)
            → up levels (ResnetBlocks on [h, skip] [+ attention], then an upsampling ResnetBlock)
            → GroupNorm, SiLU, conv_out (epsilon and variance channels)

The trunk (levels, resnets, attention) is unet_blocks.py's, shared with Karlo's decoder and super-resolution UNets.
"""

from dataclasses import dataclass
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

from ..engine.checkpoints import config_settings
from .unet_blocks import CrossAttentionTrunk, UNetTrunk
from .unet_settings import ABSENT_FEATURES, CONDITION_UNET_DEFAULTS, attention_levels, check_settings, unsupported

HINT_FEATURES = 4  # channels the hint encoder adds to the latent (fixed in diffusers' ImageHintTimeEmbedding)
# The Kandinsky 2.2 decoders we build, by (in_channels, image_hint): conv_in reads the noisy latent (4 channels)
# plus, for inpainting, the masked image's latent (4) and the mask (1), or, for the depth ControlNet, the hint
# encoder's 4 feature maps.
_KINDS = {(4, False): "text2image", (9, False): "inpaint", (4 + HINT_FEATURES, True): "controlnet"}


@dataclass
class UNetConfig(CrossAttentionTrunk):
    in_channels: int = 4  # conv_in's input: 9 for inpainting, 8 for the ControlNet (see _KINDS)
    out_channels: int = 8  # epsilon and the learned-variance interpolation
    block_out_channels: tuple[int, ...] = (384, 768, 1152, 1536)
    attention_levels: tuple[bool, ...] = (False, True, True, True)  # which levels have attention after each resnet
    layers_per_block: int = 3
    head_dim: int = 64
    cross_attention_dim: int = 768  # width of the image context tokens
    image_embed_dim: int = 1280  # the prior's CLIP image embedding (diffusers: encoder_hid_dim)
    image_tokens: int = 32  # fixed by diffusers' ImageProjection
    groups: int = 32
    eps: float = 1e-5
    image_hint: bool = False  # reads a hint image, e.g. a depth map (diffusers' addition_embed_type "image_hint")

    @property
    def kind(self) -> str:
        """Which decoder this is: "text2image", "inpaint" (forward's x carries the latent, the masked image's latent
        and the mask) or "controlnet" (forward needs a hint)."""
        return _KINDS[self.in_channels, self.image_hint]

    @property
    def sample_channels(self) -> int:
        """Channels of forward's `x`: in_channels less the hint features the UNet makes and concatenates itself
        (4 for text2image and controlnet, 9 for inpaint)."""
        return self.in_channels - HINT_FEATURES if self.image_hint else self.in_channels

    @classmethod
    def from_diffusers(cls, config: dict[str, Any]) -> "UNetConfig":
        """Map a diffusers UNet2DConditionModel config.json dict; raise ValueError on settings we do not build.

        Keys that the blocks used here never read (use_linear_projection, upcast_attention, downsample_padding,
        transformer_layers_per_block, addition_embed_type_num_heads, ...) are ignored; keys diffusers does not
        know are refused (engine.checkpoints.config_settings).
        """
        config = config_settings(config, CONDITION_UNET_DEFAULTS, "UNet")
        check_settings(config, _REQUIRED_SETTINGS, (*ABSENT_FEATURES, "class_embed_type"), _WHOLE_NUMBERS)
        levels = attention_levels(config)
        image_hint = _image_hint(config)
        return cls(
            in_channels=config["in_channels"],
            out_channels=config["out_channels"],
            block_out_channels=tuple(config["block_out_channels"]),
            attention_levels=levels,
            layers_per_block=config["layers_per_block"],
            head_dim=config["attention_head_dim"],
            cross_attention_dim=config["cross_attention_dim"],
            image_embed_dim=config["encoder_hid_dim"],
            groups=config["norm_num_groups"],
            eps=config["norm_eps"],
            image_hint=image_hint,
        )


# Kandinsky 2.2's choices where diffusers' default differs, so the key must be present.
_REQUIRED_SETTINGS = {
    "encoder_hid_dim_type": "image_proj",
    "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
    "resnet_time_scale_shift": "scale_shift",
}
_WHOLE_NUMBERS = ("layers_per_block", "attention_head_dim", "cross_attention_dim", "encoder_hid_dim", "norm_num_groups")


def _image_hint(config: dict[str, Any]) -> bool:
    """Whether the decoder reads a hint image: addition_embed_type "image" is the plain and inpainting decoders,
    "image_hint" the depth ControlNet; in_channels must be one of theirs (see _KINDS)."""
    if config.get("addition_embed_type") not in ("image", "image_hint"):
        raise unsupported(config, "addition_embed_type")
    image_hint = config["addition_embed_type"] == "image_hint"
    if (config["in_channels"], image_hint) not in _KINDS:
        raise unsupported(config, "in_channels")
    return image_hint


class ImageContext(nn.Module):
    """Image embedding → `tokens` context tokens (diffusers' ImageProjection)."""

    def __init__(self, embed_dim: int, dim: int, tokens: int):
        super().__init__()
        self.tokens = tokens
        self.image_embeds = nn.Linear(embed_dim, tokens * dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, image_embeds: Tensor) -> Tensor:
        return self.norm(rearrange(self.image_embeds(image_embeds), "b (n d) -> b n d", n=self.tokens))


class ImageTimeEmbedding(nn.Module):
    def __init__(self, embed_dim: int, time_embed_dim: int):
        super().__init__()
        self.image_proj = nn.Linear(embed_dim, time_embed_dim)
        self.image_norm = nn.LayerNorm(time_embed_dim)

    def forward(self, image_embeds: Tensor) -> Tensor:
        return self.image_norm(self.image_proj(image_embeds))


# The hint encoder's convolutions (in, out, stride), SiLU between them: three stride-2 steps bring pixels to
# latent size (/8). The widths are fixed in diffusers, not read from the config.
_HINT_CONVS = ((3, 16, 1), (16, 16, 1), (16, 32, 2), (32, 32, 1), (32, 96, 2), (96, 96, 1), (96, 256, 2), (256, 4, 1))


class ImageHintTimeEmbedding(ImageTimeEmbedding):
    """The depth ControlNet's add_embedding: the image-time embedding plus a hint encoder (diffusers'
    ImageHintTimeEmbedding; the Sequential keeps its keys, input_hint_block.0, .2, … .14)."""

    def __init__(self, embed_dim: int, time_embed_dim: int):
        super().__init__(embed_dim, time_embed_dim)
        layers: list[nn.Module] = []
        for cin, cout, stride in _HINT_CONVS:
            layers += [nn.SiLU()] if layers else []
            layers.append(nn.Conv2d(cin, cout, 3, stride=stride, padding=1))
        self.input_hint_block = nn.Sequential(*layers)

    def encode_hint(self, hint: Tensor) -> Tensor:
        """hint [B, 3, 8h, 8w] → [B, HINT_FEATURES, h, w]."""
        return self.input_hint_block(hint)


class KandinskyUNet(UNetTrunk):
    def __init__(self, config: UNetConfig):
        super().__init__(config.trunk, config.in_channels, config.out_channels)
        self.config = cfg = config
        self.encoder_hid_proj = ImageContext(cfg.image_embed_dim, cfg.cross_attention_dim, cfg.image_tokens)
        embedding = ImageHintTimeEmbedding if cfg.image_hint else ImageTimeEmbedding
        self.add_embedding = embedding(cfg.image_embed_dim, cfg.time_embed_dim)

    def conditioning(self, timestep: Tensor, image_embeds: Tensor, batch: int) -> tuple[Tensor, Tensor]:
        """The embedding every resnet is modulated by, and the context tokens every attention layer attends to."""
        emb = self.time_embed(timestep, batch, image_embeds.device)
        image_embeds = image_embeds.to(self.conv_in.weight.dtype)
        return emb + self.add_embedding(image_embeds), self.encoder_hid_proj(image_embeds)

    def with_hint(self, x: Tensor, hint: Tensor | None) -> Tensor:
        """conv_in's input: x, followed by the hint's features for the ControlNet."""
        if not self.config.image_hint:
            if hint is not None:
                raise ValueError("this decoder takes no hint: only the depth ControlNet decoder reads one")
            return x
        if hint is None:
            raise ValueError("this decoder reads a hint image (depth ControlNet): connect one")
        batch, _, height, width = x.shape
        if tuple(hint.shape) != (batch, 3, 8 * height, 8 * width):
            raise ValueError(
                f"the hint is {' × '.join(map(str, hint.shape))}, but the latent "
                f"{' × '.join(map(str, x.shape))} needs a hint of {batch} × 3 × {8 * height} × {8 * width}"
            )
        features = self.add_embedding.encode_hint(hint.to(self.conv_in.weight.dtype))
        return torch.cat([x, features], dim=1)

    def forward(self, x: Tensor, timestep: Tensor, image_embeds: Tensor, hint: Tensor | None = None) -> Tensor:
        """x [B, sample_channels, H, W] with H, W multiples of 2^(levels-1); timestep [B] or 0-d; image_embeds
        [B, D]; hint [B, 3, 8H, 8W] for the ControlNet only (pixels, as the pipeline passes them: a depth map in
        0..1 on each channel), None otherwise."""
        self.check_size(x)
        emb, context = self.conditioning(timestep, image_embeds, x.shape[0])
        return self.trunk(self.with_hint(x, hint), emb, (context,))
