"""Shared benchmark plumbing: import the checkout as `dalle_nodes`, time GPU work honestly, count FLOPs.

Benchmarks run from a plain checkout (no `pip install`), on the GPU machine as on a CPU for `--tiny`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def import_package():
    """The checkout as the package `dalle_nodes` (its root is the package, as ComfyUI loads it)."""
    if "dalle_nodes" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "dalle_nodes", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["dalle_nodes"] = module
        spec.loader.exec_module(module)
    return sys.modules["dalle_nodes"]


def import_checkout() -> None:
    """import_package(), and tests/ on the path: tiny_repos has the real configs' folders, the tiny repos, the
    tokenizers and min-dalle's import."""
    import_package()
    if str(ROOT / "tests") not in sys.path:
        sys.path.insert(0, str(ROOT / "tests"))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, repeat: int, warmup: int = 1) -> dict:
    """Median and spread of wall time (seconds) over `repeat` calls after `warmup`, with peak memory (GiB), and the
    first call's time (compilation, autotuning and allocation show there)."""
    start = time.perf_counter()
    for i in range(warmup):
        fn()
        if i == 0:
            sync(device)
            first = time.perf_counter() - start
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    spread = {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}
    return {**spread, "first_call_s": first if warmup else None, "peak_gib": peak}


def time_interleaved(runs: dict[str, Callable[[], object]], repeat: int, warmup: int = 1) -> dict[str, dict]:
    """CPU timings that other processes' load cannot skew one way: every run once per round (after `warmup` rounds),
    so load spikes hit all of them alike. Per run the medians of wall time and of this process's CPU time (with one
    thread, the work itself, whatever else the machine runs) and the spread, in seconds."""
    for _ in range(warmup):
        for fn in runs.values():
            fn()
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, fn in runs.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {
        name: {
            "median_s": statistics.median(wall[name]),
            "min_s": min(wall[name]),
            "max_s": max(wall[name]),
            "cpu_median_s": statistics.median(cpu[name]),
            "cpu_min_s": min(cpu[name]),
        }
        for name in runs
    }


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's CPU threads set to `count` (0: left as they are) for the block, then back as they were."""
    before = torch.get_num_threads()
    torch.set_num_threads(count or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cpu_environment() -> dict:
    """What a CPU figure depends on: the CPU model, the threads torch uses and how loaded the machine was."""
    cpuinfo = Path("/proc/cpuinfo")
    names = [line for line in cpuinfo.read_text().splitlines() if "model name" in line] if cpuinfo.exists() else []
    model = names[0].split(":", 1)[1].strip() if names else platform.processor()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": model, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "load_average": load}


def flops(fn: Callable[[], object]) -> int:
    """Floating-point operations of one call, counted by torch's FlopCounterMode (matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matmul_tflops(device: torch.device, dtype: torch.dtype = torch.bfloat16, n: int = 8192) -> float:
    """The device's measured dense matmul rate, the ceiling that model TFLOP/s are compared against."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    result = time_call(lambda: a @ b, device, repeat=10, warmup=3)
    return 2 * n**3 / result["median_s"] / 1e12


def environment(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def report(results: dict, table: list[tuple]) -> None:
    """JSON first (for RESULTS.md and scripts), then a short table last, where a terminal tail shows it."""
    print(json.dumps(results, indent=2))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))


def randomize_(module: torch.nn.Module, generator: torch.Generator) -> torch.nn.Module:
    """normal(0, 0.02) for matrices, convolutions and embeddings; 1-D weights (LayerNorm / GroupNorm scales) at 1,
    biases at 0: activations stay finite in fp16 through every layer, whatever the depth."""
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if parameter.ndim >= 2:
                parameter.normal_(0, 0.02, generator=generator)
            else:
                parameter.fill_(1.0 if name.endswith("weight") else 0.0)
    return module.eval().requires_grad_(False)


def random_module(
    build: Callable[[], torch.nn.Module], device: torch.device | str, dtype: torch.dtype, generator: torch.Generator
) -> torch.nn.Module:
    """Made on the device (no full-size weights ever touch the disk or the host), then cast and randomized."""
    with torch.device(device):
        module = build()
    return randomize_(module.to(dtype), generator)


def mib(nbytes: int | None) -> str:
    return "–" if nbytes is None else f"{nbytes / 2**20:,.0f}"


def memory_tables(results: dict, stages: tuple[str, ...], header: str, chain_rows: dict[str, str]) -> str:
    """The vram_* scripts' three tables: weights; activation peaks per run (`header`: the runs' column titles); the
    whole chain's peak per run, one row per `chain_rows` label → results["chain"] key."""
    gib, columns = 2**30, len(results["activations"])
    lines = [f"| stage ({results['dtype']}) | params | weights GiB |", "|---|---|---|"]
    for stage in stages:
        w = results["weights"][stage]
        lines.append(f"| {stage} | {w['params'] / 1e6:,.1f} M | {w['bytes'] / gib:.2f} |")
    lines += ["", f"| activations MiB, traced / estimate (math-path attention) | {header} |"]
    lines.append("|---|" + "---|" * columns)
    for stage in stages:
        cells = []
        for act in (run[stage] for run in results["activations"].values()):
            estimate = "" if act["estimate"] is None else f" / {mib(act['estimate'])}"
            cells.append(f"{mib(act['traced'])}{estimate} ({mib(act['traced_math'])})")
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    lines += ["", f"| whole chain GiB, traced / estimate | {header} |", "|---|" + "---|" * columns]
    for label, key in chain_rows.items():
        cells = [f"{c['traced'][key] / gib:.2f} / {c['estimate'][key] / gib:.2f}" for c in results["chain"].values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
