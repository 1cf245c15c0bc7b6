"""Diffusion timestep → embedding, shared by the prior and the UNet (diffusers' Timesteps + TimestepEmbedding)."""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """[B] → [B, dim] float32 sinusoids, cosines first (diffusers' flip_sin_to_cos=True, freq_shift=0).

    Float32 because fp16 cannot resolve timesteps near 1000.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    angles = timesteps.float()[:, None] * freqs  # [B, half]
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class TimestepMLP(nn.Module):
    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))
