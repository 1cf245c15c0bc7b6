"""Peak activation memory of any call, known without a GPU: a live-tensor tracer.

`peak_live_bytes(fn, ...)` runs a call under a TorchDispatchMode that counts every tensor storage the call creates
until it is freed, and returns the peak. On the meta device a full-size model costs no memory and no compute: a
UNet step at any size traces in under a second on a CPU. pipelines/kandinsky22/memory.py calibrates its per-stage
estimates from such traces.

What the tracer counts is the eager live-tensor set: the bytes of the storages alive at once (on any device),
what `torch.cuda.max_memory_allocated` reports for the same eager run but for the allocator's rounding of each
block. Not counted: that rounding and the fragmentation of the caching allocator, cuDNN/cuBLAS workspaces, and
temporaries an operator allocates inside its own kernel (ComfyUI keeps `extra_reserved_memory()` plus 0.8 GiB
free on every load for those). Composite operators are decomposed into what they run, so their intermediate
tensors count.

Attention is the one operator whose memory depends on the kernel torch picks. On NVIDIA CUDA every attention in
our models has a fused kernel (flash or memory-efficient attention), which holds no attention matrix: the tracer
counts its output, its fp32 log-sum-exp and, for heads wider than 128 in half precision, an fp32 output
accumulator (`fused_attention=True`, the default). Where no fused kernel runs (some MPS, ROCm and DirectML setups)
torch's math path materialises the weights in fp32, scores and softmax together: `fused_attention=False` traces
that path (on meta it is exactly the decomposition torch runs).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

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


def fused_attention_on(device: torch.device) -> bool:
    """Whether attention runs flash / memory-efficient kernels on `device` (NVIDIA CUDA), which hold no attention
    weights; elsewhere (CPU, MPS, and ROCm, whose kernels may not take MoVQ's 512-wide head) the estimates count
    torch's math path, which may overestimate."""
    return device.type == "cuda" and torch.version.hip is None
