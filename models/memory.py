"""How much memory each Kandinsky 2.2 stage needs beside its weights, known without a GPU.

Two halves:

- `peak_live_bytes(fn, ...)` runs a call under a TorchDispatchMode that counts every tensor storage the call creates
  until it is freed, and returns the peak. On the meta device a full-size model costs no memory and no compute:
  a UNet step at any size traces in under a second on a CPU. The `traced_*` functions run one stage that way.
- `unet_step_bytes`, `movq_decode_bytes`, `movq_encode_bytes` and `prior_step_bytes` are closed forms the nodes
  call at run time (no tracing): a few feature maps' worth of bytes, with counts calibrated from those traces at
  full size (`benchmarks/vram_k22.py` prints the calibration; tests/models/test_memory.py holds the estimates
  between 1× and 1.5× the traces), times HEADROOM. The CLIP towers need no estimate: 5 MiB for the text node's
  two prompts and 11 MiB for one 224² image in bf16, well inside the room ComfyUI always keeps free.

What the tracer counts is the eager live-tensor set: the bytes of the storages alive at once (on any device),
what `torch.cuda.max_memory_allocated` reports for the same eager run but for the allocator's rounding of each
block. Not counted: that rounding and the fragmentation of the caching allocator, cuDNN/cuBLAS workspaces, and
temporaries an operator allocates inside its own kernel (ComfyUI keeps `extra_reserved_memory()` plus 0.8 GiB
free on every load for those). Composite operators are decomposed into what they run, so their intermediate
tensors count.

Attention is the one operator whose memory depends on the kernel torch picks. On CUDA every attention here has a
fused kernel (flash attention for the UNet's 64-wide heads, memory-efficient attention for MoVQ's single
512-wide head and the prior's masked attention), which holds no attention matrix: the tracer counts its output,
its fp32 log-sum-exp and, for heads wider than 128 in half precision, an fp32 output accumulator
(`fused_attention=True`, the default). Where no fused kernel runs (some MPS, ROCm and DirectML setups) torch's
math path materialises the weights in fp32, scores and softmax together: `fused_attention=False` traces that path
(on meta it is exactly the decomposition torch runs) and the estimates add its term, which grows with the square
of the pixels: 3.3 GiB for one 1024² UNet step with guidance instead of 0.33 GiB.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .movq import MoVQ, MoVQConfig
from .prior import PriorConfig, PriorTransformer
from .unet import KandinskyUNet, UNetConfig

T = TypeVar("T")

# ---------------------------------------------------------------------------------------------------------------
# The tracer

_ATTENTION = torch.ops.aten.scaled_dot_product_attention.default
_COMPOSITE = torch._C.DispatchKey.CompositeImplicitAutograd


class _LiveStorages(TorchDispatchMode):
    """Counts the bytes of every storage an operator creates, until Python frees it; keeps the peak."""

    def __init__(self, fused_attention: bool):
        super().__init__()
        self.fused_attention = fused_attention
        self.live = 0
        self.peak = 0
        self._nbytes: dict[int, int] = {}  # id(storage) -> bytes counted for it
        self._refs: dict[int, weakref.ref] = {}  # id(storage) -> weak reference whose callback uncounts it

    def _freed(self, key: int) -> None:
        self.live -= self._nbytes.pop(key)
        del self._refs[key]

    def _count(self, out: Any, inputs: set[int]) -> None:
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()  # one Python object per storage (meta ones too: data_ptr is 0 there)
            key, nbytes = id(storage), storage.nbytes()
            if key in self._nbytes:  # counted already; an in-place resize_ may have grown it
                self.live += nbytes - self._nbytes[key]
                self._nbytes[key] = nbytes
            elif key in inputs:  # a view or an in-place result of a tensor from before the call
                continue
            else:
                self._nbytes[key] = nbytes
                self._refs[key] = weakref.ref(storage, lambda _, key=key: self._freed(key))
                self.live += nbytes
            self.peak = max(self.peak, self.live)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        workspace = None
        if func is _ATTENTION and self.fused_attention:
            with self:
                workspace = _fused_attention_workspace(*args[:3])
            out = func(*args, **kwargs)  # unobserved: on meta this is the math path, whose temporaries don't count
        elif torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), _COMPOSITE):
            with self:  # what it runs, operator by operator (the math path, for attention)
                return func.decompose(*args, **kwargs)
        else:
            out = func(*args, **kwargs)
        inputs = {id(t.untyped_storage()) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        self._count(out, inputs)
        del workspace
        return out


def _fused_attention_workspace(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> list[torch.Tensor]:
    """What flash / memory-efficient attention allocate beside the output: the fp32 log-sum-exp of every query, and
    for value heads wider than 128 in half precision an fp32 output accumulator."""
    rows = q.shape[:-1]
    workspace = [q.new_empty(rows, dtype=torch.float32)]
    if v.shape[-1] > 128 and q.dtype != torch.float32:
        workspace.append(q.new_empty((*rows, v.shape[-1]), dtype=torch.float32))
    return workspace


def peak_live_bytes(fn: Callable[..., T], *args: Any, fused_attention: bool = True, **kwargs: Any) -> tuple[T, int]:
    """Run `fn(*args, **kwargs)` under inference mode (as ComfyUI runs nodes) and return its result and the peak
    bytes of tensor storage alive at once that the call created.

    Tensors from before the call (inputs, parameters) are not counted, nor are views or in-place results of them.
    A storage counts from the operator that creates it until Python frees it (tensors in reference cycles wait for
    the garbage collector, as they would on a GPU). Works on any device; on meta it is free of compute and memory.
    `fused_attention` picks the attention kernel modelled: see the module docstring.
    """
    mode = _LiveStorages(fused_attention)
    with torch.inference_mode(), mode:
        result = fn(*args, **kwargs)
    return result, mode.peak


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
    """Peak activation bytes of one forward of `prior` over `batch_rows` rows (all 77 text tokens real)."""
    param, cfg = next(prior.parameters()), prior.config

    def empty(*shape: int) -> torch.Tensor:
        return torch.empty(*shape, device=param.device, dtype=param.dtype)

    mask = torch.ones(batch_rows, cfg.num_embeddings, device=param.device, dtype=torch.bool)
    timestep = torch.tensor(500, device=param.device)
    embeds = empty(batch_rows, cfg.embedding_dim)
    states = empty(batch_rows, cfg.num_embeddings, cfg.embedding_dim)
    return peak_live_bytes(prior, embeds, timestep, embeds, states, mask, fused_attention=fused_attention)[1]


# ---------------------------------------------------------------------------------------------------------------
# Closed forms for the nodes

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
MOVQ_DECODE_FEATURE_MAPS = 8.1  # 8.03: the last level's resnets, SpatialNorm's scale and shift maps among them
MOVQ_ENCODE_FEATURE_MAPS = 5.1  # 5.00
PRIOR_TOKEN_MAPS = 11.1  # 11.05, in units of rows × tokens × width: the 4× wide feed-forward dominates
# Math path only: what is alive beside the attention weights, in fp32 feature maps of the attention's level
# (half-precision q, k, v are upcast there) ...
MOVQ_ATTENTION_FP32_MAPS = 7.1  # 7.01
PRIOR_ATTENTION_FP32_MAPS = 8.6  # 8.52
# ... and for the UNet, whose attention sits among the skip tensors of the down path: those (in feature maps of
# the finest level, model dtype), the fp32 copies of q, k, v at the attention's level, and per row fp32 copies of
# the 32 context tokens at the widest level (every attention layer's context keys and values; they do not shrink
# with the image and matter only below 256² px).
UNET_ATTENTION_FEATURE_MAPS = 8.0
UNET_ATTENTION_FP32_MAPS = 7.5
UNET_CONTEXT_FP32_COPIES = 3


def fused_attention_on(device: torch.device) -> bool:
    """Whether attention runs flash / memory-efficient kernels on `device` (NVIDIA CUDA), which hold no attention
    weights; elsewhere (CPU, MPS, and ROCm, whose kernels may not take MoVQ's 512-wide head) the estimates count
    torch's math path, which may overestimate."""
    return device.type == "cuda" and torch.version.hip is None


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
    """Activation bytes of one prior forward over `batch_rows` rows (2 per embedding with guidance, 3 with a
    negative prompt). Small: 3.5 MiB a row in bf16, next to 2 GB of weights."""
    tokens = config.num_embeddings + config.additional_embeddings
    token_maps = batch_rows * tokens * config.width
    live = PRIOR_TOKEN_MAPS * token_maps * dtype.itemsize
    if not fused_attention:
        attention = MATH_ATTENTION_BYTES * batch_rows * config.heads * tokens**2
        live = max(live, PRIOR_ATTENTION_FP32_MAPS * token_maps * 4 + attention)
    return _with_headroom(live)
