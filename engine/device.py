"""The compute device and its memory in plain torch: what a pipeline asks of the program that runs it.

A `Host` answers those questions. Outside ComfyUI it is `PLAIN` (torch's own view of the device); inside ComfyUI
nodes/runtime.py hands the pipelines one that asks ComfyUI's memory manager and honours its Cancel button.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

DTYPES = {"auto": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AMX-BF16 or AVX512-BF16, as Linux lists them): there oneDNN's bf16
    convolutions run about 5x as fast as fp32 ones; elsewhere bf16 is emulated and slower (benchmarks/RESULTS.md)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:  # not Linux: no way to tell here, so no bf16
        return False
    return re.search(r"\b(amx_bf16|avx512_bf16)\b", flags) is not None


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(
    choice: str, device: torch.device, bf16_ok: Callable[[torch.device], bool] | None = None
) -> torch.dtype:
    """A dtype input ("auto", "fp32", "fp16", "bf16") → a torch dtype; "auto" is fp32 on the CPU, bf16 on GPUs that
    support it (`bf16_ok`, default torch's own test for CUDA), else fp16."""
    if choice not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)} (got '{choice}').")
    if DTYPES[choice] is not None:
        return DTYPES[choice]
    if device.type == "cpu":
        return torch.float32
    if bf16_ok is None:
        bf16_ok = lambda d: d.type == "cuda" and torch.cuda.is_bf16_supported()  # noqa: E731
    return torch.bfloat16 if bf16_ok(device) else torch.float16


def free_memory(device: torch.device) -> int:
    """Bytes `device` can still allocate, counting what torch's caching allocator holds unused; 0 off CUDA."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return 0


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError)


def free_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Progress(Protocol):
    """A progress bar the pipelines advance: ComfyUI's on the node (nodes/runtime.Progress), or tqdm."""

    def update(self, n: int = 1) -> None: ...

    def close(self) -> None: ...


def console_progress(total: int, desc: str = "") -> Progress:
    """A tqdm bar on stderr: the progress of the command line and the Python API."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False)


@dataclass(frozen=True)
class Host:
    """The device services a pipeline uses while it runs."""

    free_memory: Callable[[torch.device], int]
    is_out_of_memory: Callable[[BaseException], bool]
    free_cache: Callable[[], None]
    check_interrupt: Callable[[], None]  # raises when the user asked to stop


PLAIN = Host(free_memory, is_out_of_memory, free_cache, lambda: None)
