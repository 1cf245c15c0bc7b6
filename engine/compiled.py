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

from .caches import usable_cache_folder

INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
# torch.compile's options for our models (the default mode until a GPU measurement favours another; the benchmark
# tries others with --compile-mode).
OPTIONS: dict = {}


def use_cache_dir(folder: Path) -> None:
    """Keep inductor's compiled kernels in `folder`, unless the user chose a place ($TORCHINDUCTOR_CACHE_DIR).

    Importing torch._dynamo (which ComfyUI and torchvision do early) sets that variable to torch's default, so the
    default counts as not chosen. Inductor reads the variable whenever it opens its cache, so setting it late works.
    """
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    chosen = os.environ.get(INDUCTOR_CACHE_ENV)
    if chosen is None or os.path.abspath(chosen) == os.path.abspath(default_cache_dir()):
        if usable_cache_folder(folder):  # a read-only model store leaves inductor's own default
            os.environ[INDUCTOR_CACHE_ENV] = str(folder)


class Compiled:
    """`fn` compiled with static shapes (each new shape compiles once, then is reused, up to torch's recompile limit
    of 8 shapes, beyond which dynamo runs new ones uncompiled).

    An out-of-memory error (as `is_oom` tells) is raised: the caller may retry with less work. After any other
    error `fn` itself runs: if it raises as well, the error is the caller's (bad input) and is raised, and the
    compiled function stays; if it works, compiling is what failed, and `fn` is used from then on, with one
    warning and `on_fallback()` (e.g. back to the eager layout).
    """

    def __init__(
        self,
        fn: Callable,
        what: str,
        is_oom: Callable[[BaseException], bool],
        on_fallback: Callable[[], None] = lambda: None,
        **options,
    ):
        self.fn, self.what, self.is_oom, self.on_fallback = fn, what, is_oom, on_fallback
        self.compiled: Callable | None = torch.compile(fn, dynamic=False, **{**OPTIONS, **options})

    def __call__(self, *args, **kwargs):
        if self.compiled is None:
            return self.fn(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
        except Exception as error:
            if self.is_oom(error):
                raise
            failure = str(error)  # not the error itself: its traceback would keep the failed call's tensors alive
        result = self.fn(*args, **kwargs)  # raises the caller's own error, if that is what it was
        logging.warning("%s: torch.compile failed (%s); running uncompiled", self.what, failure)
        self.compiled = None
        self.on_fallback()
        return result

    @property
    def ok(self) -> bool:
        """Whether the compiled function is (still) in use."""
        return self.compiled is not None


def memory_format(device: torch.device, compiled: bool) -> torch.memory_format:
    """The layout our convolutional nets run in: channels-last where the compiled graph fuses the norms around
    the convolutions (cuDNN's fast layout); eager GroupNorm is slower in channels-last, which made diffusers'
    eager UNet slower overall (46.9 ms a step against 43.7 ms on an H100, fp16), so eager stays contiguous."""
    return torch.channels_last if compiled and device.type == "cuda" else torch.contiguous_format
