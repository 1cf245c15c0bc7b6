"""Live previews for MoVQ latents: the linear map latent → RGB that ComfyUI's previewer applies at every step.

Nobody ships such factors for Kandinsky 2.2's MoVQ, so they are fitted to the loaded MoVQ itself: decode random
latents, shrink the pixels to the latent grid, and solve least squares for RGB ≈ latent · factors + bias. The fit
runs once per checkpoint (a fraction of a second on a GPU) and is cached beside the zero-image embeddings.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..engine.caches import read_cache_file, write_cache_file
from ..models.movq import MoVQ

SAMPLES, SIDE = 8, 8  # random latents of SIDE × SIDE (64 px images): enough rows for 4 × 3 unknowns, cheap to decode


@dataclass(frozen=True)
class RGBFactors:
    """ComfyUI's latent_rgb_factors ([channels][3], R G B per latent channel) and latent_rgb_factors_bias ([3])."""

    factors: list[list[float]]
    bias: list[float]

    def apply(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, C, h, w] latents → [B, 3, h, w] preview in [-1, 1] (before clamping), as ComfyUI's previewer does."""
        weight = torch.tensor(self.factors, dtype=latents.dtype, device=latents.device)
        bias = torch.tensor(self.bias, dtype=latents.dtype, device=latents.device)
        return torch.einsum("bchw,cr->brhw", latents, weight) + bias[:, None, None]


def fit_rgb_factors(movq: MoVQ, seed: int = 0) -> RGBFactors:
    """Least-squares RGB factors of `movq` (on its own device and dtype) from SAMPLES random latents."""
    param = next(movq.parameters())
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(SAMPLES, movq.config.latent_channels, SIDE, SIDE, generator=generator)
    with torch.inference_mode():
        pixels = movq.decode(latents.to(param.device, param.dtype)).float().cpu().clamp(-1, 1)
    targets = torch.nn.functional.avg_pool2d(pixels, movq.scale)  # one RGB value per latent pixel
    inputs = torch.cat([latents, torch.ones_like(latents[:, :1])], dim=1)  # a constant channel for the bias
    rows = lambda t: t.permute(0, 2, 3, 1).reshape(-1, t.shape[1]).double()  # noqa: E731
    solution = torch.linalg.lstsq(rows(inputs), rows(targets)).solution.float()  # [C + 1, 3]
    return RGBFactors(solution[:-1].tolist(), solution[-1].tolist())


def _movq_key(movq: MoVQ) -> str:
    """Names a MoVQ by the content of a few of its small tensors: other weights never meet a stale entry."""
    digest = hashlib.sha256()
    for name in ("post_quant_conv.weight", "decoder.conv_in.weight", "decoder.conv_out.weight"):
        digest.update(movq.get_parameter(name).detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:24]


def cached_rgb_factors(movq: MoVQ, cache: Path) -> RGBFactors:
    """fit_rgb_factors(movq), computed once per MoVQ checkpoint and then read from `cache`. The cache follows the
    rule of every cache here: a damaged entry is fitted again, one that cannot be written is a warning."""
    path = cache / "latent_rgb_factors" / f"{_movq_key(movq)}.safetensors"
    channels = movq.config.latent_channels
    valid = lambda factors, bias: factors.shape == (channels, 3) and bias.shape == (3,)  # noqa: E731
    stored = read_cache_file(path, ("factors", "bias"), valid, "preview factors", "fitting them again")
    if stored is not None:
        return RGBFactors(stored[0].tolist(), stored[1].tolist())
    fitted = fit_rgb_factors(movq)
    tensors = {"factors": torch.tensor(fitted.factors), "bias": torch.tensor(fitted.bias)}
    write_cache_file(path, lambda tmp: save_file(tensors, tmp))
    return fitted
