"""GAN upscaling: DalleGANUpscale against ComfyUI's own tiling (Upscale Image (using Model)) on the same GPU.

Full-size Real-ESRGAN x4plus (RRDBNet, 23 blocks, 64 features) with random weights, a 768² image → 3072².
The baseline reproduces ComfyUI's ImageUpscaleWithModel: fp32 weights and input, 512 px tiles one at a time,
32 px overlap with a linear feather, each tile's output moved to the intermediate device (the CPU) and blended
there. We also time it blending on the GPU, the kinder baseline, and take the ratio against that one.

    python benchmarks/bench_upscale.py            # on the GPU machine
    python benchmarks/bench_upscale.py --tiny     # seconds on a CPU: checks that the script still runs

With `--device cpu` it compares on the CPU instead, where ComfyUI's loop has no GPU blend to choose: our node and
our Python API against the ComfyUI-style loop, fp32, at each of `--sizes` (128² and 512² inputs), the three
interleaved round by round so that the machine's load hits them alike; medians of wall and CPU time.

    python benchmarks/bench_upscale.py --device cpu --threads 1 --repeat 5
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path

import torch
from common import (
    cpu_environment,
    environment,
    flops,
    import_package,
    report,
    time_call,
    time_interleaved,
    torch_threads,
)
from safetensors.torch import save_file
from spandrel.architectures.ESRGAN import ESRGAN

import_package()
from dalle_nodes.engine import tiling  # noqa: E402
from dalle_nodes.engine.images import to_pil  # noqa: E402
from dalle_nodes.nodes import upscale  # noqa: E402
from dalle_nodes.pipelines import upscale as upscaler  # noqa: E402


def comfyui_upscale(model, image: torch.Tensor, device, output_device, tile: int = 512, overlap: int = 32):
    """ComfyUI's ImageUpscaleWithModel + comfy.utils.tiled_scale (v0.33), for one or more [B, H, W, C] images."""
    x = image.movedim(-1, -3).to(device)
    scale = model.scale
    b, c, h, w = x.shape
    output = torch.empty(b, 3, h * scale, w * scale, device=output_device)
    for i in range(b):
        s = x[i : i + 1]
        if h <= tile and w <= tile:
            output[i : i + 1] = model(s.float()).to(output_device)
            continue
        out = output[i : i + 1].zero_()
        weight = torch.zeros(1, 1, h * scale, w * scale, device=output_device)
        rows = range(0, h - overlap, tile - overlap) if h > tile else [0]
        cols = range(0, w - overlap, tile - overlap) if w > tile else [0]
        for y, x0 in itertools.product(rows, cols):
            y, x0 = min(h - overlap, y), min(w - overlap, x0)
            th, tw = min(tile, h - y), min(tile, w - x0)
            part = model(s[:, :, y : y + th, x0 : x0 + tw].float()).to(output_device)
            mask = torch.ones(1, 1, th * scale, tw * scale, device=output_device)
            feather = overlap * scale
            for d in (2, 3):
                if feather < mask.shape[d]:
                    for t in range(feather):
                        mask.narrow(d, t, 1).mul_((t + 1) / feather)
                        mask.narrow(d, mask.shape[d] - 1 - t, 1).mul_((t + 1) / feather)
            ys, xs = slice(y * scale, (y + th) * scale), slice(x0 * scale, (x0 + tw) * scale)
            out[:, :, ys, xs] += part * mask
            weight[:, :, ys, xs] += mask
        out.div_(weight)
    return torch.clamp(output.movedim(-3, -1), 0, 1)


def build(features: int, blocks: int, folder: Path):
    """Random RRDBNet x4 weights written to a file and read back through our loader, as a user's file would be."""
    net = ESRGAN(in_nc=3, out_nc=3, num_filters=features, num_blocks=blocks, scale=4)
    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, value in net.state_dict().items():  # scaled so that outputs stay mid-range, not clamped to 0 or 1
        fan_in = value[0].numel() if value.ndim == 4 else 1
        state[key] = torch.randn(value.shape, generator=gen) * (0.2 / fan_in) ** 0.5 if value.ndim == 4 else value * 0
    state["model.10.bias"] += 0.5  # the last convolution of a x4 RRDBNet (spandrel's layout): mid-grey output
    path = folder / "RealESRGAN_x4plus.safetensors"
    save_file(state, path)
    return upscaler.load_upscaler(path)


def cpu_comparison(model, sizes: list[int], repeat: int) -> tuple[dict, list[tuple]]:
    """Per input size: the ComfyUI-style loop, our node (auto tiles) and our Python API, interleaved, fp32; and our
    node in bf16, which `auto` picks on CPUs that compute bf16 in hardware (AMX or AVX512-BF16)."""
    results: dict = {}
    table = [("input", "run", "median s", "CPU s", "x vs ComfyUI (wall)", "x vs ComfyUI (CPU time)")]
    for size in sizes:
        timed = results[f"{size}"] = cpu_runs(model, size, repeat)
        for name in ("comfyui_loop", "ours_node", "ours_api", "ours_node_bf16"):
            r = timed[name]
            cells = (
                f"{r['median_s']:.3f}",
                f"{r['cpu_median_s']:.3f}",
                f"{r['speedup']:.2f}",
                f"{r['cpu_speedup']:.2f}",
            )
            table.append((f"{size}²", name, *cells))
    return results, table


def cpu_runs(model, size: int, repeat: int) -> dict:
    """One input size's interleaved timings, each with its ratio to the ComfyUI-style loop, and how far our node's
    output is from the loop's."""
    cpu = torch.device("cpu")
    node, api = upscale.DalleGANUpscale(), upscaler.Upscaler(model)
    image = torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(size))
    pictures = to_pil(image)
    runs = {
        "comfyui_loop": lambda: comfyui_upscale(model, image, cpu, cpu),
        "ours_node": lambda: node.upscale(model, image, 0, 32, "fp32"),
        "ours_api": lambda: api.upscale(pictures, precision="fp32"),
        "ours_node_bf16": lambda: node.upscale(model, image, 0, 32, "bf16"),
    }
    timed = time_interleaved(runs, repeat)
    for r in timed.values():
        r["speedup"] = timed["comfyui_loop"]["median_s"] / r["median_s"]
        r["cpu_speedup"] = timed["comfyui_loop"]["cpu_median_s"] / r["cpu_median_s"]
    (ours,), (ours_bf16,), reference = runs["ours_node"](), runs["ours_node_bf16"](), runs["comfyui_loop"]()
    timed["max_abs_node_vs_comfyui"] = (ours - reference).abs().max().item()
    timed["bf16_vs_comfyui"] = {"max_abs": (ours_bf16 - reference).abs().max().item()}
    timed["bf16_vs_comfyui"]["mean_abs"] = (ours_bf16 - reference).abs().mean().item()
    return timed


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="small model and image on the CPU")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="cpu: the CPU comparison")
    parser.add_argument("--size", type=int, default=768)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 512], help="--device cpu: input sizes")
    parser.add_argument("--threads", type=int, default=0, help="--device cpu: torch's threads (0: its default)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also time compile=True (compiles for minutes)")
    parser.add_argument("--profile", action="store_true", help="print where one ours_auto call spends its time")
    args = parser.parse_args(argv)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available() and not args.tiny)
    device = torch.device("cuda" if cuda else "cpu")
    features, blocks, size = (8, 1, 48) if args.tiny else (64, 23, args.size)
    repeat = 1 if args.tiny else args.repeat

    with tempfile.TemporaryDirectory() as folder:
        model = build(features, blocks, Path(folder))
    model.to(device)
    if args.device == "cpu":
        results = {"work": f"RRDBNet x4 ({blocks} blocks, {features} features), fp32, inputs {args.sizes}"}
        with torch_threads(args.threads):
            results |= environment(device) | cpu_environment()
            comparison, table = cpu_comparison(model, [48] if args.tiny else args.sizes, repeat)
        results |= comparison | {"load_average_after": cpu_environment()["load_average"]}
        report(results, table)
        return results
    image = torch.rand(1, size, size, 3)
    whole = image.movedim(-1, 1).to(device)
    node = upscale.DalleGANUpscale()
    half = "bf16" if device.type == "cuda" else "fp32"
    plans = []  # the tilings the node chose, for the record
    tiled = tiling.run_tiled
    tiling.run_tiled = lambda *a, **k: plans.append(a[3]) or tiled(*a, **k)

    runs = {
        "comfyui_fp32_512_cpu_blend": lambda: comfyui_upscale(model, image, device, torch.device("cpu")),
        "comfyui_fp32_512_gpu_blend": lambda: comfyui_upscale(model, image, device, device).cpu(),
        "ours_auto": lambda: node.upscale(model, image, 0, 32, "auto"),
        "ours_bf16": lambda: node.upscale(model, image, 0, 32, half),
        "ours_fp32": lambda: node.upscale(model, image, 0, 32, "fp32"),
    }
    if args.compile:
        runs["ours_auto_compiled"] = lambda: node.upscale(model, image, 0, 32, "auto", compile=True)
    results = {"work": f"RRDBNet x4 ({blocks} blocks, {features} features), {size}² → {size * 4}²"}
    results |= environment(device)
    flop = flops(lambda: model(whole))
    results["model_tflop_per_image"] = flop / 1e12
    for name, run in runs.items():
        plans.clear()
        results[name] = time_call(run, device, repeat)
        if plans:
            results[name]["plan"] = repr(plans[-1])
    if args.profile:
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=activities[: 1 + (device.type == "cuda")]) as profile:
            node.upscale(model, image, 0, 32, "auto")
        for key in ("self_cpu_time_total", "self_device_time_total"):
            print(profile.key_averages().table(sort_by=key, row_limit=12))
    reference = model(whole).movedim(1, -1).cpu()
    results["reference_unclamped_fraction"] = ((reference > 0) & (reference < 1)).float().mean().item()
    for precision in ("fp32", "auto"):
        (ours,) = node.upscale(model, image, 0, 32, precision)
        results[f"ours_{precision}_max_abs_vs_whole_image"] = (ours - reference).abs().max().item()

    baseline = results["comfyui_fp32_512_gpu_blend"]["median_s"]
    results["speedup_auto_vs_comfyui_gpu_blend"] = baseline / results["ours_auto"]["median_s"]
    results["speedup_auto_vs_comfyui_cpu_blend"] = (
        results["comfyui_fp32_512_cpu_blend"]["median_s"] / results["ours_auto"]["median_s"]
    )
    table = [("run", "median s", "peak GiB", "x vs ComfyUI (GPU blend)", "TFLOP/s")]
    for name in runs:
        r = results[name]
        rate = f"{flop / r['median_s'] / 1e12:.0f}"
        table.append((name, f"{r['median_s']:.4f}", f"{r['peak_gib']:.2f}", f"{baseline / r['median_s']:.2f}", rate))
    report(results, table)
    return results


if __name__ == "__main__":
    main()
