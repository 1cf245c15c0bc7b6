"""How much memory each Kandinsky 2.2 stage needs beside its weights, known without a GPU.

`unet_step_bytes`, `movq_decode_bytes`, `movq_encode_bytes` and `prior_step_bytes` are closed forms the nodes
hand ComfyUI's memory manager at run time (no tracing): a few feature maps' worth of bytes, with counts calibrated
from full-size traces on the meta device (the `traced_*` functions below, with engine/memory.py's tracer;
`benchmarks/vram_k22.py` prints the calibration and tests/pipelines/kandinsky22/test_memory.py holds the estimates
between 1x and 1.5x the traces), times HEADROOM. The CLIP towers need no estimate: 5 MiB for the text node's two
prompts and 11 MiB for one 224² image in bf16, well inside the room ComfyUI always keeps free.

Attention: with fused kernels (NVIDIA CUDA: flash attention for the UNet's 64-wide heads, memory-efficient attention
for MoVQ's single 512-wide head and the prior's masked attention) no attention matrix is held. On torch's math path
the estimates add the attention weights, which grow with the square of the pixels: 3.3 GiB for one 1024² UNet step
with guidance instead of 0.33 GiB.
"""

from __future__ import annotations

import math

import torch

from ...engine.memory import peak_live_bytes
from ...models.movq import MoVQ, MoVQConfig
from ...models.prior import PriorConfig, PriorTransformer
from ...models.unet import KandinskyUNet, UNetConfig


def traced_unet_step(
    unet: KandinskyUNet, batch_rows: int, latent_h: int, latent_w: int, fused_attention: bool = True
) -> int:
    """Peak activation bytes of one forward of `unet` (any device, meta for full size) over `batch_rows` rows."""
    param = next(unet.parameters())
    x = torch.empty(batch_rows, unet.config.in_channels, latent_h, latent_w, device=param.device, dtype=param.dtype)
    embeds = torch.empty(batch_rows, unet.config.image_embed_dim, device=param.device, dtype=param.dtype)
    timestep = torch.tensor(500, device=param.device)
    return peak_live_bytes(unet, x, timestep, embeds, fused_attention=fused_attention)[1]


def traced_movq_decode(movq: MoVQ, height: int, width: int, fused_attention: bool = True) -> int:
    """Peak activation bytes of decoding one height × width pixel image with `movq`."""
    param, factor = next(movq.parameters()), _movq_factor(movq.config)
    latents = torch.empty(
        1, movq.config.latent_channels, height // factor, width // factor, device=param.device, dtype=param.dtype
    )
    return peak_live_bytes(movq.decode, latents, fused_attention=fused_attention)[1]


def traced_movq_encode(movq: MoVQ, height: int, width: int, fused_attention: bool = True) -> int:
    """Peak activation bytes of encoding one height × width pixel image with `movq`."""
    param = next(movq.parameters())
    pixels = torch.empty(1, movq.config.in_channels, height, width, device=param.device, dtype=param.dtype)
    return peak_live_bytes(movq.encode, pixels, fused_attention=fused_attention)[1]


def traced_prior_step(prior: PriorTransformer, batch_rows: int, fused_attention: bool = True) -> int:
    """Peak activation bytes of one forward of `prior` over `batch_rows` rows (all 77 text tokens real): encoding
    the text's cache, which sampling keeps for the whole run, then one step."""
    param, cfg = next(prior.parameters()), prior.config

    def empty(*shape: int) -> torch.Tensor:
        return torch.empty(*shape, device=param.device, dtype=param.dtype)

    mask = torch.ones(batch_rows, cfg.num_embeddings, device=param.device, dtype=torch.bool)
    timestep = torch.tensor(500, device=param.device)
    embeds = empty(batch_rows, cfg.embedding_dim)
    states = empty(batch_rows, cfg.num_embeddings, cfg.embedding_dim)
    return peak_live_bytes(prior, embeds, timestep, embeds, states, mask, fused_attention=fused_attention)[1]


# ---------------------------------------------------------------------------------------------------------------
# Closed forms for the nodes (calibrated from the traces above)

# Multiplies every estimate, for what the eager live set leaves out: the CUDA caching allocator rounds each block
# up (to 512 B, large ones to 2 MiB) and fragments when freed blocks do not fit later requests. Not measured on a
# GPU yet: bench_k22's peak memory is the check. (Fixed workspaces are ComfyUI's own reserve, see above.)
HEADROOM = 1.25
# Bytes per attention weight on the math path: the fp32 scores and their fp32 softmax are alive together (torch
# upcasts half precision there), whatever the model's dtype.
MATH_ATTENTION_BYTES = 8

# Calibrated from the traces at full size (bf16 and fp32, 256² to 1536², 1 to 8 rows), rounded up: the peak in
# units of one feature map of the finest level (rows × pixels × its channels × dtype size).
UNET_FEATURE_MAPS = 14.1  # 14.0 from 512² up: the down path's skip tensors plus the working set at full resolution
MOVQ_DECODE_FEATURE_MAPS = 7.1  # 7.00: the last level's resnets (SpatialNorm's scale and shift stay latent-sized)
MOVQ_ENCODE_FEATURE_MAPS = 5.1  # 5.00
PRIOR_TOKEN_MAPS = 12.1  # 12.04 beside the cache, in rows × text tokens × width: the 4× wide feed-forward leads
# Math path only: what is alive beside the attention weights, in fp32 feature maps of the attention's level
# (half-precision q, k, v are upcast there) ...
MOVQ_ATTENTION_FP32_MAPS = 7.1  # 7.01
PRIOR_ATTENTION_FP32_MAPS = 7.4  # 7.30
# ... and for the UNet, whose attention sits among the skip tensors of the down path: those (in feature maps of
# the finest level, model dtype), the fp32 copies of q, k, v at the attention's level, and per row fp32 copies of
# the 32 context tokens at the widest level (every attention layer's context keys and values; they do not shrink
# with the image and matter only below 256² px).
UNET_ATTENTION_FEATURE_MAPS = 8.0
UNET_ATTENTION_FP32_MAPS = 7.5
UNET_CONTEXT_FP32_COPIES = 3


def _movq_factor(config: MoVQConfig) -> int:
    """Pixels per latent pixel along a side (8 for Kandinsky 2.2's four levels)."""
    return 2 ** (len(config.block_out_channels) - 1)


def _with_headroom(nbytes: float) -> int:
    return math.ceil(HEADROOM * nbytes)


def unet_step_bytes(
    config: UNetConfig,
    batch_rows: int,
    latent_h: int,
    latent_w: int,
    dtype: torch.dtype,
    *,
    fused_attention: bool = True,
) -> int:
    """Activation bytes of one UNet forward over `batch_rows` rows (2 per image with guidance) of a latent_h ×
    latent_w latent, beside the weights. The sampler's own tensors (a few latents) add well under 1%."""
    pixels = latent_h * latent_w
    feature_map = batch_rows * pixels * config.block_out_channels[0] * dtype.itemsize  # finest level, all rows
    live = UNET_FEATURE_MAPS * feature_map
    if not fused_attention and any(config.attention_levels):
        # The finest level with attention holds the largest weights, while the skips above it are held.
        level = config.attention_levels.index(True)
        tokens, channels = pixels // 4**level, config.block_out_channels[level]
        heads = channels // config.head_dim
        at_attention = (
            UNET_ATTENTION_FEATURE_MAPS * feature_map
            + UNET_ATTENTION_FP32_MAPS * batch_rows * tokens * channels * 4
            + UNET_CONTEXT_FP32_COPIES * batch_rows * config.image_tokens * config.block_out_channels[-1] * 4
            + MATH_ATTENTION_BYTES * batch_rows * heads * tokens * (tokens + config.image_tokens)
        )
        live = max(live, at_attention)
    return _with_headroom(live)


def _movq_attention_bytes(config: MoVQConfig, pixels: int) -> int:
    """The math path's peak in MoVQ's single-head attention over every latent position (weights: tokens²)."""
    tokens = pixels // _movq_factor(config) ** 2
    fp32_maps = MOVQ_ATTENTION_FP32_MAPS * tokens * config.block_out_channels[-1] * 4
    return fp32_maps + MATH_ATTENTION_BYTES * tokens**2


def movq_decode_bytes(
    config: MoVQConfig, height: int, width: int, dtype: torch.dtype, *, fused_attention: bool = True
) -> int:
    """Activation bytes of decoding ONE height × width pixel image, beside the weights. With fused attention the
    peak is at full resolution and grows with the pixels; the math path's attention weights grow with their square
    and pass it from about 1024² up (bf16)."""
    pixels = height * width
    live = MOVQ_DECODE_FEATURE_MAPS * pixels * config.block_out_channels[0] * dtype.itemsize
    if not fused_attention:
        live = max(live, _movq_attention_bytes(config, pixels))
    return _with_headroom(live)


def movq_encode_bytes(
    config: MoVQConfig, height: int, width: int, dtype: torch.dtype, *, fused_attention: bool = True
) -> int:
    """Activation bytes of encoding ONE height × width pixel image, beside the weights."""
    pixels = height * width
    live = MOVQ_ENCODE_FEATURE_MAPS * pixels * config.block_out_channels[0] * dtype.itemsize
    if not fused_attention:
        live = max(live, _movq_attention_bytes(config, pixels))
    return _with_headroom(live)


def prior_step_bytes(config: PriorConfig, batch_rows: int, dtype: torch.dtype, *, fused_attention: bool = True) -> int:
    """Activation bytes of prior sampling over `batch_rows` rows (2 per embedding with guidance, 3 with a negative
    prompt): the text's keys and values in every layer, kept for the whole run (PriorTransformer.encode_text), and
    the working set of computing them, the peak (a step runs 3 tokens, not 78). 16 MiB a row in bf16, 12 of them
    the cache, next to 2 GB of weights."""
    tokens = config.text_tokens
    token_maps = batch_rows * tokens * config.width
    cache = 2 * config.layers * token_maps * dtype.itemsize
    live = PRIOR_TOKEN_MAPS * token_maps * dtype.itemsize
    if not fused_attention:
        attention = MATH_ATTENTION_BYTES * batch_rows * config.heads * tokens**2
        live = max(live, PRIOR_ATTENTION_FP32_MAPS * token_maps * 4 + attention)
    return _with_headroom(cache + live)
