"""torch.compile for our models: compiled once per model and reused, a persistent kernel cache, and the eager
function whenever compiling is not possible (no C++/Triton toolchain, an unsupported op, an old GPU).

Compilation is lazy: torch.compile returns at once and the first call traces and builds kernels (a minute or two
for the Kandinsky UNet, per input shape). Inductor's kernel cache makes later processes skip most of that; by
default it lives under /tmp, which containers and reboots wipe, so we point it beside our model downloads.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch

INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
# torch.compile's options for our models (the default mode until a GPU measurement favours another; the benchmark
# tries others with --compile-mode).
OPTIONS: dict = {}


def use_cache_dir(folder: Path) -> None:
    """Keep inductor's compiled kernels in `folder`, unless the user chose a place ($TORCHINDUCTOR_CACHE_DIR)."""
    if INDUCTOR_CACHE_ENV not in os.environ:
        folder.mkdir(parents=True, exist_ok=True)
        os.environ[INDUCTOR_CACHE_ENV] = str(folder)


class Compiled:
    """`fn` compiled with static shapes (each new shape compiles once, then is reused); `fn` itself, with one
    warning, from the first failure on. An out-of-memory error is raised instead: it is not the compiler's fault,
    and the caller may retry with less work."""

    def __init__(self, fn: Callable, what: str, is_oom: Callable[[BaseException], bool], **options):
        self.fn, self.what, self.is_oom = fn, what, is_oom
        self.compiled: Callable | None = torch.compile(fn, dynamic=False, **{**OPTIONS, **options})

    def __call__(self, *args, **kwargs):
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as error:
                if self.is_oom(error):
                    raise
                logging.warning("%s: torch.compile failed (%s); running uncompiled", self.what, error)
                self.compiled = None
        return self.fn(*args, **kwargs)

    @property
    def ok(self) -> bool:
        """Whether the compiled function is (still) in use."""
        return self.compiled is not None


def memory_format(device: torch.device, compiled: bool) -> torch.memory_format:
    """The layout our convolutional nets run in: channels-last where the compiled graph fuses the norms around
    the convolutions (cuDNN's fast layout); eager GroupNorm is slower in channels-last, which made diffusers'
    eager UNet slower overall (REFERENCE.md), so eager stays contiguous."""
    return torch.channels_last if compiled and device.type == "cuda" else torch.contiguous_format
