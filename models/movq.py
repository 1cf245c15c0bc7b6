"""MoVQ, the Kandinsky 2.2 image autoencoder: 3 x H x W pixels <-> 4 x H/8 x W/8 latents.

A VQGAN-style convolutional encoder/decoder whose decoder norms are SpatialNorms: GroupNorms whose scale and shift
are computed from the latents themselves (MoVQ, arXiv 2209.09002). Kandinsky 2.2 never quantizes: the UNet's
latents go straight to the decoder, and img2img encodes without a codebook lookup. The codebook is still in the
checkpoint, so we hold it (and offer the lookup). Images too large to decode whole decode in overlapping latent
tiles (`decode_tiled`), close to but not exactly the whole decode.
Module names mirror diffusers' `VQModel`, so its safetensors load with `strict=True`.
"""

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..engine import tiling
from ..engine.checkpoints import config_settings

# diffusers' VQModel defaults, used for keys a config.json leaves out.
_DIFFUSERS_DEFAULTS = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",),
    up_block_types=("UpDecoderBlock2D",),
    block_out_channels=(64,),
    layers_per_block=1,
    act_fn="silu",
    latent_channels=3,
    sample_size=32,
    num_vq_embeddings=256,
    norm_num_groups=32,
    vq_embed_dim=None,
    scaling_factor=0.18215,
    norm_type="group",
    mid_block_add_attention=True,
    lookup_from_codebook=False,
    force_upcast=False,
)
# diffusers block type -> whether that level has attention after each resnet
_DOWN_BLOCKS = {"DownEncoderBlock2D": False, "AttnDownEncoderBlock2D": True}
_UP_BLOCKS = {"UpDecoderBlock2D": False, "AttnUpDecoderBlock2D": True}


@dataclass
class MoVQConfig:
    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 256, 512)  # per level, finest first
    down_attention: tuple[bool, ...] = (False, False, False, True)  # encoder levels, finest first
    up_attention: tuple[bool, ...] = (True, False, False, False)  # decoder levels, coarsest first
    layers_per_block: int = 2  # resnets per encoder level; decoder levels have one more
    latent_channels: int = 4
    num_vq_embeddings: int = 16384
    norm_num_groups: int = 32  # encoder GroupNorms; the decoder's SpatialNorms always use 32

    @classmethod
    def from_diffusers(cls, config: dict) -> "MoVQConfig":
        """Build from a diffusers `movq/config.json` dict; settings Kandinsky 2.2 does not use are rejected."""
        settings = config_settings(config, _DIFFUSERS_DEFAULTS, "MoVQ")
        levels = len(settings["block_out_channels"])
        for key, known in (("down_block_types", _DOWN_BLOCKS), ("up_block_types", _UP_BLOCKS)):
            types = tuple(settings[key])
            if len(types) != levels or any(t not in known for t in types):
                raise ValueError(
                    f"unsupported MoVQ setting {key}={types!r}; supported: {levels} of {tuple(known)} "
                    f"(one per block_out_channels entry)"
                )
        supported = {
            "norm_type": ("spatial",),  # the MoVQ decoder; "group" is a plain VQGAN
            "act_fn": ("silu",),
            "mid_block_add_attention": (True,),
            "lookup_from_codebook": (False,),  # True makes decode() take codebook indices
            "vq_embed_dim": (None, settings["latent_channels"]),  # SpatialNorm sees the pre-post_quant_conv latents
        }
        for key, allowed in supported.items():
            if settings[key] not in allowed:
                raise ValueError(f"unsupported MoVQ setting {key}={settings[key]!r}; supported: {allowed}")
        return cls(
            in_channels=settings["in_channels"],
            out_channels=settings["out_channels"],
            block_out_channels=tuple(settings["block_out_channels"]),
            down_attention=tuple(_DOWN_BLOCKS[t] for t in settings["down_block_types"]),
            up_attention=tuple(_UP_BLOCKS[t] for t in settings["up_block_types"]),
            layers_per_block=settings["layers_per_block"],
            latent_channels=settings["latent_channels"],
            num_vq_embeddings=settings["num_vq_embeddings"],
            norm_num_groups=settings["norm_num_groups"],
        )


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm (eps 1e-6) that accepts and ignores the latents, so encoder and decoder blocks share code."""

    def __init__(self, groups: int, channels: int):
        super().__init__(groups, channels, eps=1e-6)

    def forward(self, x: Tensor, zq: Tensor | None = None) -> Tensor:
        return super().forward(x)


class SpatialNorm(nn.Module):
    """GroupNorm whose per-pixel scale and shift are 1x1 convs of the latents, resized to the feature map."""

    def __init__(self, channels: int, latent_channels: int):
        super().__init__()
        self.norm_layer = nn.GroupNorm(32, channels, eps=1e-6)  # diffusers fixes 32 groups here
        self.conv_y = nn.Conv2d(latent_channels, channels, 1)
        self.conv_b = nn.Conv2d(latent_channels, channels, 1)

    def forward(self, x: Tensor, zq: Tensor) -> Tensor:
        (height, width), (h, w) = x.shape[-2:], zq.shape[-2:]
        if height % h or width % w:
            zq = F.interpolate(zq, size=(height, width), mode="nearest")
            return self.norm_layer(x) * self.conv_y(zq) + self.conv_b(zq)
        # A whole-number resize copies each latent pixel to a block: the 1x1 convs commute with it, so they run at
        # the latents' size and the blocks are broadcast views, not resized copies (diffusers' result; decodes
        # 1.14× faster on the CPU, with two full-size maps less at the peak).
        n, c = x.shape[:2]
        blocks = (n, c, h, height // h, w, width // w)
        scale, shift = (conv(zq)[:, :, :, None, :, None] for conv in (self.conv_y, self.conv_b))
        return torch.addcmul(shift, self.norm_layer(x).view(blocks), scale).reshape(n, c, height, width)


Norm = Callable[[int], nn.Module]  # channels -> GroupNorm (encoder) or SpatialNorm (decoder)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, norm: Norm):
        super().__init__()
        self.norm1, self.conv1 = norm(in_channels), nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2, self.conv2 = norm(out_channels), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor, zq: Tensor | None = None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x, zq)))
        h = self.conv2(F.silu(self.norm2(h, zq)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class Attention(nn.Module):
    """Single-head self-attention over all pixels, with a residual."""

    def __init__(self, channels: int, norm: Norm):
        super().__init__()
        norm_layer = norm(channels)
        # checkpoint keys name this norm after its kind
        self.group_norm = norm_layer if isinstance(norm_layer, GroupNorm) else None
        self.spatial_norm = norm_layer if isinstance(norm_layer, SpatialNorm) else None
        self.to_q, self.to_k, self.to_v = (nn.Linear(channels, channels) for _ in range(3))
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])  # diffusers' [Linear, Dropout]: key "to_out.0"

    def forward(self, x: Tensor, zq: Tensor | None = None) -> Tensor:
        norm = self.group_norm if self.spatial_norm is None else self.spatial_norm
        tokens = rearrange(norm(x, zq), "b c h w -> b 1 (h w) c")  # one head as wide as the channels
        out = F.scaled_dot_product_attention(self.to_q(tokens), self.to_k(tokens), self.to_v(tokens))
        return x + rearrange(self.to_out[0](out), "b 1 (h w) c -> b c h w", h=x.shape[-2])


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # pad right/bottom only: H x W -> H/2 x W/2, as taming's VQGAN


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution: resnets, each followed by attention if `attention`, then an optional down/up sampling."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        layers: int,
        attention: bool,
        norm: Norm,
        resample: Literal["down", "up"] | None,
    ):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(in_channels if i == 0 else out_channels, out_channels, norm) for i in range(layers)
        )
        self.attentions = nn.ModuleList(Attention(out_channels, norm) for _ in range(layers) if attention)
        # diffusers keeps the resampler in a one-element list named by direction; empty lists add no keys
        self.downsamplers = nn.ModuleList([Downsample(out_channels)] if resample == "down" else [])
        self.upsamplers = nn.ModuleList([Upsample(out_channels)] if resample == "up" else [])

    def forward(self, x: Tensor, zq: Tensor | None = None) -> Tensor:
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, zq)
            if self.attentions:
                x = self.attentions[i](x, zq)
        for resample in (*self.downsamplers, *self.upsamplers):
            x = resample(x)
        return x


class MidBlock(nn.Module):
    """resnet -> attention -> resnet at the coarsest resolution."""

    def __init__(self, channels: int, norm: Norm):
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock(channels, channels, norm) for _ in range(2))
        self.attentions = nn.ModuleList([Attention(channels, norm)])

    def forward(self, x: Tensor, zq: Tensor | None = None) -> Tensor:
        x = self.resnets[0](x, zq)
        x = self.attentions[0](x, zq)
        return self.resnets[1](x, zq)


class Encoder(nn.Module):
    def __init__(self, cfg: MoVQConfig):
        super().__init__()
        channels, norm = cfg.block_out_channels, partial(GroupNorm, cfg.norm_num_groups)
        last = len(channels) - 1
        self.conv_in = nn.Conv2d(cfg.in_channels, channels[0], 3, padding=1)
        # level i goes from level i-1's width (level 0: conv_in's) to its own
        self.down_blocks = nn.ModuleList(
            Level(
                channels[max(i - 1, 0)],
                channels[i],
                cfg.layers_per_block,
                cfg.down_attention[i],
                norm,
                resample="down" if i < last else None,
            )
            for i in range(len(channels))
        )
        self.mid_block = MidBlock(channels[-1], norm)
        self.conv_norm_out = norm(channels[-1])
        self.conv_out = nn.Conv2d(channels[-1], cfg.latent_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)
        for level in self.down_blocks:
            x = level(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Decoder(nn.Module):
    def __init__(self, cfg: MoVQConfig):
        super().__init__()
        channels = cfg.block_out_channels[::-1]  # coarsest first
        norm = partial(SpatialNorm, latent_channels=cfg.latent_channels)
        last = len(channels) - 1
        self.conv_in = nn.Conv2d(cfg.latent_channels, channels[0], 3, padding=1)
        self.mid_block = MidBlock(channels[0], norm)
        self.up_blocks = nn.ModuleList(
            Level(
                channels[max(i - 1, 0)],
                channels[i],
                cfg.layers_per_block + 1,
                cfg.up_attention[i],
                norm,
                resample="up" if i < last else None,
            )
            for i in range(len(channels))
        )
        self.conv_norm_out = norm(channels[-1])
        self.conv_out = nn.Conv2d(channels[-1], cfg.out_channels, 3, padding=1)

    def forward(self, x: Tensor, zq: Tensor) -> Tensor:
        """x: post_quant_conv output; zq: the latents every SpatialNorm is conditioned on."""
        x = self.conv_in(x)
        x = self.mid_block(x, zq)
        for level in self.up_blocks:
            x = level(x, zq)
        return self.conv_out(F.silu(self.conv_norm_out(x, zq)))


class Codebook(nn.Module):
    def __init__(self, size: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(size, dim)

    def forward(self, z: Tensor) -> Tensor:
        """[B, C, h, w] -> the nearest codebook vector at each position (distances: B*h*w x codebook floats)."""
        b, _, h, w = z.shape
        vectors = rearrange(z, "b c h w -> (b h w) c").float()
        indices = torch.cdist(vectors, self.embedding.weight.float()).argmin(dim=1)
        return rearrange(self.embedding(indices), "(b h w) c -> b c h w", b=b, h=h, w=w).to(z.dtype)


class MoVQ(nn.Module):
    def __init__(self, config: MoVQConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quant_conv = nn.Conv2d(config.latent_channels, config.latent_channels, 1)
        self.quantize = Codebook(config.num_vq_embeddings, config.latent_channels)
        self.post_quant_conv = nn.Conv2d(config.latent_channels, config.latent_channels, 1)
        self.decoder = Decoder(config)

    def encode(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] in [-1, 1] -> latents [B, 4, H/8, W/8], unquantized (diffusers `encode(x).latents`)."""
        return self.quant_conv(self.encoder(images))

    def decode(self, latents: Tensor, quantize: bool = False) -> Tensor:
        """[B, 4, h, w] -> images [B, 3, 8h, 8w], nominally in [-1, 1].

        quantize=False is Kandinsky's `decode(latents, force_not_quantize=True)`; True snaps the latents to the
        codebook first, as diffusers' default `decode(latents)`.
        """
        if quantize:
            latents = self.quantize(latents)
        if latents.device.type == "cpu":  # oneDNN's convolutions run 1.1× faster channels-last (benchmarks/RESULTS.md)
            latents = latents.contiguous(memory_format=torch.channels_last)
        return self.decoder(self.post_quant_conv(latents), latents)

    @property
    def scale(self) -> int:
        """Image pixels per latent pixel along a side: 8 for Kandinsky 2.2's four levels."""
        return 2 ** (len(self.config.block_out_channels) - 1)

    def decode_tiled(
        self, latents: Tensor, plan: tiling.TilePlan, on_batch: Callable[[], None] = lambda: None
    ) -> Tensor:
        """decode() in overlapping tiles of `plan` (sizes in latent pixels), cross-faded in pixel space:
        [B, 4, h, w] -> [B, 3, 8h, 8w] float32 on the latents' device, for latents too large to decode whole.

        One image at a time, so only one full-size float32 canvas is alive beside the output. Not exact: each
        tile's GroupNorms take their statistics, and its attentions their keys, from the tile instead of the whole
        latent; only a plan whose one tile covers the latent gives decode() exactly.
        """
        count, _, height, width = latents.shape
        size = (height * self.scale, width * self.scale)
        images = latents.new_empty(count, self.config.out_channels, *size, dtype=torch.float32)
        for one, out in zip(latents.split(1), images, strict=True):
            finish = lambda _, pixels, out=out: out.copy_(pixels)  # noqa: E731 (`out` bound per image)
            tiling.run_tiled(lambda tiles: self.decode(tiles).float(), one, self.scale, plan, finish, on_batch)
        return images
