"""The VQGAN f16 detokenizer of DALL·E Mini / Mega (detoker.pt of kuprel/min-dalle): codes → pixels.

A taming-transformers decoder in min-dalle's layout (its parameter names, so detoker.pt loads as it is): codebook
lookup (16384 × 256), post_quant_conv, conv_in, a middle with attention, then five up levels run from up[4] to
up[0], each 3 ResNet blocks (+ attention at the lowest resolution) and a 2× nearest upsample but the last.
One code covers 16 × 16 pixels: 16 × 16 codes → 256² px.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DETOKER_FILE = "detoker.pt"  # shared by the Mega and Mini variants
CODEBOOK_SIZE = 2**14
CODE_WIDTH = 256
# decoder.up[i]: (channels in, channels out, attention, upsample)
UP_LEVELS = (
    (128, 128, False, False),
    (256, 128, False, True),
    (256, 256, False, True),
    (512, 256, False, True),
    (512, 512, True, True),
)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels)


class ResnetBlock(nn.Module):
    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        self.norm1 = group_norm(channels_in)
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, padding=1)
        self.norm2 = group_norm(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(channels_in, channels_out, 1) if channels_in != channels_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttentionBlock(nn.Module):
    """One-head self-attention between all positions of the feature map."""

    def __init__(self, channels: int = 512):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (conv(y).view(b, 1, c, h * w).transpose(2, 3) for conv in (self.q, self.k, self.v))  # [B,1,HW,C]
        y = F.scaled_dot_product_attention(q, k, v).transpose(2, 3).reshape(b, c, h, w)
        return x + self.proj_out(y)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UpLevel(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, attention: bool, upsample: bool):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(c, channels_out) for c in (channels_in, channels_out, channels_out))
        self.attn = nn.ModuleList(AttentionBlock(channels_out) for _ in range(3)) if attention else None
        self.upsample = Upsample(channels_out) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for j, block in enumerate(self.block):
            x = block(x)
            if self.attn is not None:
                x = self.attn[j](x)
        return x if self.upsample is None else self.upsample(x)


class MiddleLayer(nn.Module):
    def __init__(self, channels: int = 512):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttentionBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv_in = nn.Conv2d(CODE_WIDTH, 512, 3, padding=1)
        self.mid = MiddleLayer(512)
        self.up = nn.ModuleList(UpLevel(*level) for level in UP_LEVELS)
        self.norm_out = group_norm(128)
        self.conv_out = nn.Conv2d(128, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """[B, 256, h, w] code vectors → [B, 3, 16h, 16w]"""
        x = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            x = level(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class VQGAN(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(CODEBOOK_SIZE, CODE_WIDTH)
        self.post_quant_conv = nn.Conv2d(CODE_WIDTH, CODE_WIDTH, 1)
        self.decoder = Decoder()

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """[B, h, w] codes → [B, 3, 16h, 16w] images in 0…1 (channels-last on the CPU)."""
        z = self.embedding(codes).permute(0, 3, 1, 2)  # [B, 256, h, w], already laid out channels-last
        # oneDNN's convolutions run 1.1× faster channels-last on the CPU (benchmarks/RESULTS.md)
        layout = torch.channels_last if z.device.type == "cpu" else torch.contiguous_format
        return self.decoder(self.post_quant_conv(z.contiguous(memory_format=layout))).clamp(0, 1)
