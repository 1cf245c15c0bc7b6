"""How much memory Karlo's UNets need beside their weights, known without a GPU.

`decoder_step_bytes` and `super_res_step_bytes` are closed forms the nodes hand ComfyUI's memory manager at run time
(no tracing): feature maps of the finest level, counts calibrated from full-size traces on the meta device (the
`traced_*` functions below, with engine/memory.py's tracer; benchmarks/vram_karlo.py prints each estimate beside
its trace, which is how they were checked), times HEADROOM. Karlo
samples at one size per stage (64 px decoder, 256 px super-resolution), so only the rows vary. The prior is
models/prior.py, the module Kandinsky 2.2's prior runs: its estimate is that family's prior_step_bytes.

Attention: only the decoder has any (at 32² and below). With fused kernels no attention matrix is held; on torch's
math path the weights of the 32² level's 1 024 tokens more than triple the decoder's peak.
"""

from __future__ import annotations

import math

import torch

from ...engine.memory import peak_live_bytes
from ...models.karlo_unets import KarloDecoder, KarloDecoderConfig, SuperResConfig, SuperResUNet, TextProjConfig
from .loading import DECODER_SIZE, SUPER_RES_SIZE

HEADROOM = 1.25
# Peak activations in feature maps of the finest level (rows × pixels × first level's channels), as traced in bf16.
DECODER_FEATURE_MAPS = 14.1  # 14.0: the down path's skip tensors plus the working set at 64²
DECODER_MATH_FEATURE_MAPS = 47.4  # 47.3: on the math path, the 32² level's attention weights on top
SUPER_RES_FEATURE_MAPS = 14.1  # 14.0: no attention, the same trunk at 256²


def _feature_map(channels: int, rows: int, side: int, dtype: torch.dtype) -> int:
    return rows * side * side * channels * dtype.itemsize


def decoder_step_bytes(
    config: KarloDecoderConfig, rows: int, dtype: torch.dtype, *, fused_attention: bool = True
) -> int:
    """Activation bytes of one 64 px decoder forward (KarloDecoderConfig `config`) over `rows` rows (2 per image with
    guidance), beside the weights."""
    maps = DECODER_FEATURE_MAPS if fused_attention else DECODER_MATH_FEATURE_MAPS
    return math.ceil(HEADROOM * maps * _feature_map(config.block_out_channels[0], rows, DECODER_SIZE, dtype))


def super_res_step_bytes(config: SuperResConfig, rows: int, dtype: torch.dtype) -> int:
    """Activation bytes of one 256 px super-resolution forward (SuperResConfig `config`) over `rows` rows."""
    maps = SUPER_RES_FEATURE_MAPS
    return math.ceil(HEADROOM * maps * _feature_map(config.block_out_channels[0], rows, SUPER_RES_SIZE, dtype))


def traced_decoder_step(
    decoder: KarloDecoder, text_proj: TextProjConfig, rows: int, fused_attention: bool = True
) -> int:
    """Peak activation bytes of one forward of `decoder` (any device, meta for full size) over `rows` rows, with
    all 77 text tokens and the text projection's extra tokens as context."""
    param = next(decoder.parameters())
    tokens = 77 + text_proj.extra_tokens

    def empty(*shape: int) -> torch.Tensor:
        return torch.empty(*shape, device=param.device, dtype=param.dtype)

    x, class_embed = empty(rows, 3, DECODER_SIZE, DECODER_SIZE), empty(rows, decoder.config.time_embed_dim)
    context, mask = empty(rows, tokens, text_proj.cross_attention_dim), torch.ones(rows, tokens, device=param.device)
    timestep = torch.tensor(500, device=param.device)
    return peak_live_bytes(decoder, x, timestep, class_embed, context, mask.bool(), fused_attention=fused_attention)[1]


def traced_super_res_step(unet: SuperResUNet, rows: int) -> int:
    """Peak activation bytes of one forward of a super-resolution UNet over `rows` rows at 256²."""
    param = next(unet.parameters())
    x = torch.empty(rows, unet.config.in_channels, SUPER_RES_SIZE, SUPER_RES_SIZE, device=param.device)
    return peak_live_bytes(unet, x.to(param.dtype), torch.tensor(500, device=param.device))[1]
