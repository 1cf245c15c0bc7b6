"""Inputs of the edit tests: smooth pictures the MoVQ round trip keeps close, masks (1 = repaint), depth maps, image
embeddings at the tiny checkpoints' width, and where a decoded picture may be compared with the VQ round trip."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dalle_nodes.pipelines.kandinsky22.embeds import ImageEmbeds
from tiny_repos import WIDTH


def picture(height: int, width: int, seed: int = 3) -> torch.Tensor:
    """A smooth IMAGE [1, H, W, 3] (an image the MoVQ round trip keeps close), values well inside 0..1."""
    coarse = torch.rand(1, 3, height // 16, width // 16, generator=torch.Generator().manual_seed(seed))
    return (0.1 + 0.8 * F.interpolate(coarse, (height, width), mode="bilinear")).permute(0, 2, 3, 1)


def rectangle_mask(height: int, width: int) -> torch.Tensor:
    mask = torch.zeros(1, height, width)
    mask[:, height // 4 : height // 2 + 8, width // 3 : 3 * width // 4] = 1
    return mask


def soft_mask(height: int, width: int) -> torch.Tensor:
    """A soft disc: 1 at its centre, falling off over 40 px, which the reference binarises at 0.5 (a circle)."""
    y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    distance = ((y - 0.4 * height) ** 2 + (x - 0.6 * width) ** 2).sqrt()
    return (1.5 - distance / 40).clamp(0, 1)[None]


def depth_map(height: int, width: int, batch: int = 1) -> torch.Tensor:
    """A depth-like IMAGE [B, H, W, 3]: a smooth ramp with a nearer blob, the same on its three channels."""
    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    depth = 0.3 * y + 0.6 * torch.exp(-((x - 0.6) ** 2 + (y - 0.4) ** 2) / 0.05)
    return depth[None, ..., None].expand(batch, -1, -1, 3).contiguous()


def embeds(batch: int = 1, seed: int = 5) -> ImageEmbeds:
    generator = torch.Generator().manual_seed(seed)
    return ImageEmbeds(torch.randn(batch, WIDTH, generator=generator), torch.randn(batch, WIDTH, generator=generator))


def kept_region(mask: torch.Tensor, margin: int) -> torch.Tensor:
    """Pixels at least `margin` px from anything the mask repaints (MoVQ's decoder mixes neighbouring latents)."""
    repaint = (mask >= 0.5).float()[:, None]
    grown = F.max_pool2d(repaint, 2 * margin + 1, stride=1, padding=margin)
    return grown[:, 0] == 0
