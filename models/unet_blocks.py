"""The UNet trunk DALL·E 2's decoders share: Kandinsky 2.2's decoder (models/unet.py), Karlo's 64 px decoder and its
super-resolution UNets (models/karlo_unets.py). Parameter names follow diffusers' ResnetDownsampleBlock2D,
SimpleCrossAttnDownBlock2D, UNetMidBlock2DSimpleCrossAttn and their up twins, so checkpoints load with strict=True.

    conv_in → down levels (ResnetBlocks [+ attention], then a downsampling ResnetBlock)
            → mid (ResnetBlock, [attention,] ResnetBlock)
            → up levels (ResnetBlocks on [h, skip] [+ attention], then an upsampling ResnetBlock)
            → GroupNorm, SiLU, conv_out

Each family's module builds the embedding every resnet is modulated by and the context tokens the attention layers
read (none for the super-resolution UNets), then runs `UNetTrunk.trunk`.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .timestep import TimestepMLP, timestep_embedding


@dataclass(frozen=True)
class Trunk:
    """What every block of the trunk reads, whichever config describes the UNet."""

    block_out_channels: tuple[int, ...]
    attention_levels: tuple[bool, ...]  # which levels have attention after each resnet
    layers_per_block: int
    groups: int
    eps: float
    head_dim: int = 64
    cross_attention_dim: int = 0  # width of the context tokens (0: no attention anywhere)
    scale_shift: bool = True  # time conditioning scales and shifts the second norm; else it is added before it
    mid_attention: bool = True

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.block_out_channels[0]


class CrossAttentionTrunk:
    """For a UNet config dataclass whose trunk attends to context tokens (Kandinsky 2.2's UNet, Karlo's decoder): its
    Trunk from its own fields (block_out_channels, attention_levels, layers_per_block, groups, eps, head_dim,
    cross_attention_dim), and the time embedding width."""

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.block_out_channels[0]

    @property
    def trunk(self) -> Trunk:
        return Trunk(
            self.block_out_channels,
            self.attention_levels,
            self.layers_per_block,
            self.groups,
            self.eps,
            self.head_dim,
            self.cross_attention_dim,
        )


def downsample(x: Tensor) -> Tensor:
    return F.avg_pool2d(x, kernel_size=2)


def upsample(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, modulated by the embedding (scale-shift of the second norm, or added before it);
    optional resampling."""

    def __init__(self, cfg: Trunk, in_ch: int, out_ch: int, resample: Callable[[Tensor], Tensor] | None = None):
        super().__init__()
        self.resample, self.scale_shift = resample, cfg.scale_shift
        self.norm1 = nn.GroupNorm(cfg.groups, in_ch, eps=cfg.eps)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_emb_proj = nn.Linear(cfg.time_embed_dim, (2 if cfg.scale_shift else 1) * out_ch)
        self.norm2 = nn.GroupNorm(cfg.groups, out_ch, eps=cfg.eps)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """`emb` is the already SiLU-activated embedding [B, time_embed_dim]."""
        h = F.silu(self.norm1(x))
        if self.resample is not None:
            x, h = self.resample(x), self.resample(h)
        h = self.conv1(h)
        time = rearrange(self.time_emb_proj(emb), "b c -> b c 1 1")
        if self.scale_shift:
            scale, shift = time.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + time)
        h = self.conv2(F.silu(h))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class AddedKVAttention(nn.Module):
    """Self-attention over the pixels whose keys/values also include the context tokens (diffusers' added-KV
    attention); group norm before, residual after."""

    def __init__(self, cfg: Trunk, dim: int):
        super().__init__()
        self.heads = dim // cfg.head_dim
        self.group_norm = nn.GroupNorm(cfg.groups, dim, eps=1e-5)  # diffusers' Attention ignores norm_eps here
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.add_k_proj = nn.Linear(cfg.cross_attention_dim, dim)
        self.add_v_proj = nn.Linear(cfg.cross_attention_dim, dim)
        self.to_out = nn.Sequential(nn.Linear(dim, dim))  # Sequential only to keep diffusers' key "to_out.0"

    def forward(self, x: Tensor, context: Tensor, context_bias: Tensor | None = None) -> Tensor:
        """`context_bias` [B, 1, 1, tokens]: added to the scores of the context keys (-10000 hides padding)."""
        height, width = x.shape[2:]
        pixels = rearrange(self.group_norm(x), "b c h w -> b (h w) c")
        # Context first, as diffusers orders them (softmax does not care, but summation order does, slightly).
        k = torch.cat([self.add_k_proj(context), self.to_k(pixels)], dim=1)
        v = torch.cat([self.add_v_proj(context), self.to_v(pixels)], dim=1)
        q, k, v = (rearrange(t, "b n (heads d) -> b heads n d", heads=self.heads) for t in (self.to_q(pixels), k, v))
        bias = None if context_bias is None else F.pad(context_bias, (0, height * width)).to(q.dtype)
        out = rearrange(F.scaled_dot_product_attention(q, k, v, attn_mask=bias), "b heads n d -> b n (heads d)")
        return x + rearrange(self.to_out(out), "b (h w) c -> b c h w", h=height)


class DownLevel(nn.Module):
    def __init__(self, cfg: Trunk, in_ch: int, out_ch: int, attention: bool, last: bool):
        super().__init__()
        n = cfg.layers_per_block
        self.resnets = nn.ModuleList(ResnetBlock(cfg, in_ch if i == 0 else out_ch, out_ch) for i in range(n))
        self.attentions = nn.ModuleList(AddedKVAttention(cfg, out_ch) for _ in range(n) if attention)
        self.downsamplers = None if last else nn.ModuleList([ResnetBlock(cfg, out_ch, out_ch, downsample)])

    def forward(self, h: Tensor, emb: Tensor, context: Any, skips: list[Tensor]) -> Tensor:
        for i, resnet in enumerate(self.resnets):
            h = resnet(h, emb)
            if self.attentions:
                h = self.attentions[i](h, *context)
            skips.append(h)
        if self.downsamplers is not None:
            h = self.downsamplers[0](h, emb)
            skips.append(h)
        return h


class MidBlock(nn.Module):
    def __init__(self, cfg: Trunk, ch: int):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(cfg, ch, ch), ResnetBlock(cfg, ch, ch)])
        self.attentions = nn.ModuleList([AddedKVAttention(cfg, ch)] if cfg.mid_attention else [])

    def forward(self, h: Tensor, emb: Tensor, context: Any) -> Tensor:
        h = self.resnets[0](h, emb)
        if self.attentions:
            h = self.attentions[0](h, *context)
        return self.resnets[1](h, emb)


class UpLevel(nn.Module):
    """One resnet per skip connection it consumes: layers_per_block + 1 of them."""

    def __init__(self, cfg: Trunk, in_ch: int, skip_chs: list[int], out_ch: int, attention: bool, last: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(cfg, (in_ch if i == 0 else out_ch) + skip_ch, out_ch) for i, skip_ch in enumerate(skip_chs)
        )
        self.attentions = nn.ModuleList(AddedKVAttention(cfg, out_ch) for _ in skip_chs if attention)
        self.upsamplers = None if last else nn.ModuleList([ResnetBlock(cfg, out_ch, out_ch, upsample)])

    def forward(self, h: Tensor, emb: Tensor, context: Any, skips: list[Tensor]) -> Tensor:
        for i, resnet in enumerate(self.resnets):
            h = resnet(torch.cat([h, skips.pop()], dim=1), emb)
            if self.attentions:
                h = self.attentions[i](h, *context)
        if self.upsamplers is not None:
            h = self.upsamplers[0](h, emb)
        return h


class UNetTrunk(nn.Module):
    """conv_in, the timestep MLP, the levels and conv_out, under diffusers' key names; subclasses add what their
    UNet is conditioned on."""

    def __init__(self, trunk: Trunk, in_channels: int, out_channels: int):
        super().__init__()
        chs, last = trunk.block_out_channels, len(trunk.block_out_channels) - 1
        self.conv_in = nn.Conv2d(in_channels, chs[0], 3, padding=1)
        self.time_embedding = TimestepMLP(chs[0], trunk.time_embed_dim)
        skip_chs = [chs[0]]  # channels of each skip tensor, in the order the down path stores them
        self.down_blocks = nn.ModuleList()
        for level, (ch, attention) in enumerate(zip(chs, trunk.attention_levels, strict=True)):
            self.down_blocks.append(DownLevel(trunk, skip_chs[-1], ch, attention, last=level == last))
            skip_chs += [ch] * (trunk.layers_per_block + (level != last))
        self.mid_block = MidBlock(trunk, chs[-1])
        self.up_blocks = nn.ModuleList()
        for level in reversed(range(len(chs))):
            level_skips = [skip_chs.pop() for _ in range(trunk.layers_per_block + 1)]
            in_ch = chs[min(level + 1, last)]  # output of the level below (the mid block for the deepest)
            attention = trunk.attention_levels[level]
            self.up_blocks.append(UpLevel(trunk, in_ch, level_skips, chs[level], attention, last=level == 0))
        self.conv_norm_out = nn.GroupNorm(trunk.groups, chs[0], eps=trunk.eps)
        self.conv_out = nn.Conv2d(chs[0], out_channels, 3, padding=1)

    def time_embed(self, timestep: Tensor, batch: int, device: torch.device) -> Tensor:
        """[B, time_embed_dim] in the weights' dtype; sinusoids in float32 (fp16 cannot resolve timesteps near
        1000)."""
        timestep = torch.as_tensor(timestep, device=device).reshape(-1).expand(batch)
        sinusoids = timestep_embedding(timestep, self.time_embedding.linear_1.in_features)
        return self.time_embedding(sinusoids.to(self.conv_in.weight.dtype))

    def check_size(self, x: Tensor) -> None:
        factor = 2 ** (len(self.down_blocks) - 1)
        if x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"latent size {tuple(x.shape[2:])} must be a multiple of {factor}")

    def trunk(self, x: Tensor, emb: Tensor, context: tuple[Tensor, ...] = ()) -> Tensor:
        """conv_in's input x → conv_out's output; `emb` [B, time_embed_dim] before SiLU, `context` what each
        attention layer takes beside h (the tokens, and optionally their bias)."""
        emb = F.silu(emb)  # every consumer (each resnet's time_emb_proj) applies SiLU first: do it once
        h = self.conv_in(x)
        skips = [h]
        for level in self.down_blocks:
            h = level(h, emb, context, skips)
        h = self.mid_block(h, emb, context)
        for level in self.up_blocks:
            h = level(h, emb, context, skips)
        return self.conv_out(F.silu(self.conv_norm_out(h)))
