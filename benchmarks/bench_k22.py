"""Kandinsky 2.2 text to image: our node chain against diffusers' KandinskyV22PriorPipeline + KandinskyV22Pipeline.

Full-size modules built from the real configs (tests/hub_configs) with random weights, normal(0, 0.02) with norm
scales at 1 (the work does not depend on the values), made directly on the device in the reference dtype (fp16, as
the H100 speed anchors we compare against; --dtype bf16 also). Our prior, UNet and MoVQ take the diffusers modules'
state dicts (strict), converted to our dtype (auto: bf16 on GPUs that have it); the CLIP text and image towers are the
same transformers objects (copied when our dtype differs). One process, one GPU: 768², prior 25 + decoder 50 steps,
guidance 4, no negative prompt, batch 1 and 4, the same seed on both sides.

Ours runs through the node classes (DalleTextEncode → DallePriorSample → DalleDecoderSample → DalleVQDecode), as a
workflow does, with the zero-image embedding (the decoder's negative) computed once beforehand as the prior
loader's cache does; that one-off cost is reported on its own. Diffusers runs with output_type="pt", then the same
post-processing as ours (* 0.5 + 0.5, clamp, channels last, to the CPU). Stage times come from device syncs at
stage boundaries only (for diffusers: hooks on its text encoder, image encoder and MoVQ). Peak memory per
pipeline = its own resident weights + the most memory it allocated beyond what was resident when it started (both
sides' weights stay resident, so the process-wide peak would count the other side's too). Alone, the UNet step
(batch 2B, 96² latent), the prior step (batch 2B) and the MoVQ decode (one 768² image) for both sides, with FLOPs
counted on the meta device and the UNet's rate set against the device's measured bf16 matmul rate.

Two chains of ours: eager ("ours") and with the decoder loader's compile input ("ours_compiled": its own copies of
the UNet and MoVQ, channels-last; its first call, which compiles, is reported as first_call_s).

    python benchmarks/bench_k22.py               # on the GPU machine (diffusers, transformers)
    python benchmarks/bench_k22.py --tiny        # a minute on a CPU: tiny repos, fp32, and ours == diffusers

With `--device cpu` it times the modules alone instead, at full size in fp32 (a chain would take hours): a prior
step (ours on the text encoded once, as our sampler runs it, and that encode_text on its own) and a UNet step at
batch 2 (one guided image) and a MoVQ decode of one --size² image, ours and diffusers' interleaved round by round so
that the machine's load hits both alike, one module pair in memory at a time (k22_cpu.py).

    python benchmarks/bench_k22.py --device cpu --size 256 --threads 1 --step-repeat 5
    python benchmarks/bench_k22.py --device cpu --tiny     # seconds: the tests' toy widths

The pieces: k22_models.py (diffusers' pipelines, ours adopted from them, each module's call), k22_chains.py (the
chains with stage marks, the modules alone on a GPU), k22_cpu.py (--device cpu).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import k22_cpu
import torch
from common import environment, import_checkout, matmul_tflops, report, sync
from k22_chains import (
    GIB,
    Stages,
    diffusers_chain,
    modules_alone,
    on_device,
    ours_chain,
    run_timed,
    split_side,
)
from k22_models import adopt, count_flops, full_size_pipelines, in_dtype, resident_bytes, tiny_pipelines

import_checkout()
from dalle_nodes.engine import compiled  # noqa: E402
from dalle_nodes.models import clip  # noqa: E402
from dalle_nodes.models.movq import MoVQ, MoVQConfig  # noqa: E402
from dalle_nodes.models.prior import PriorConfig, PriorTransformer  # noqa: E402
from dalle_nodes.models.unet import KandinskyUNet, UNetConfig  # noqa: E402
from dalle_nodes.nodes import loaders, runtime  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
BOUNDS = {  # each stage's marks
    "text": ("start", "text_end"),
    "prior": ("text_end", "prior_end"),
    "decoder": ("prior_end", "decoder_end"),
    "movq": ("decoder_end", "end"),
}
OUR_STAGES = {"text": ["text"], "prior": ["prior"], "decoder": ["unet"], "movq": ["movq"]}  # each stage's modules
STAGE_MODULES = {
    "ours": OUR_STAGES,
    "ours_compiled": OUR_STAGES,
    "diffusers": {"text": ["text"], "prior": ["prior", "image"], "decoder": ["unet"], "movq": ["movq"]},
}


@dataclass
class Plan:
    """What one run of the script measures, and how."""

    args: argparse.Namespace
    device: torch.device
    reference_dtype: torch.dtype
    ours_dtype: torch.dtype
    repeat: int
    warmup: int

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny repos, 64², 2 + 2 steps, batch 1, fp32, CPU")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each whole chain (after one warm-up)")
    parser.add_argument("--step-repeat", type=int, default=10, help="timed calls of each module alone")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--size", type=int, default=768)
    parser.add_argument("--prior-steps", type=int, default=25)
    parser.add_argument("--decoder-steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="fp16", help="diffusers' dtype")
    parser.add_argument("--ours-dtype", choices=tuple(runtime.DTYPES), default="auto", help="our loaders' dtype")
    parser.add_argument("--no-compile", action="store_true", help="leave out our compiled chain")
    parser.add_argument(
        "--compile-mode", default=None, help="torch.compile mode for the compiled chain, e.g. max-autotune"
    )
    parser.add_argument(
        "--compiled-layout",
        choices=("channels_last", "contiguous"),
        default="channels_last",
        help="memory layout of the compiled chain's UNet and MoVQ (what engine/compiled.memory_format picks)",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="cpu: modules alone")
    parser.add_argument("--modules", nargs="+", choices=tuple(k22_cpu.CPU_MODULES), default=list(k22_cpu.CPU_MODULES))
    parser.add_argument("--threads", type=int, default=0, help="--device cpu: torch's threads (0: its default)")
    args = parser.parse_args(argv)
    if args.tiny and args.device != "cpu":
        args.size, args.prior_steps, args.decoder_steps, args.batch = 64, 2, 2, [1]
        args.dtype, args.ours_dtype = "fp32", "fp32"
    return args


def make_plan(args: argparse.Namespace) -> Plan:
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available() and not args.tiny)
    device = torch.device("cuda" if cuda else "cpu")
    repeat, warmup = (1, 0) if args.tiny else (args.repeat, 1)
    return Plan(args, device, DTYPES[args.dtype], runtime.resolve_dtype(args.ours_dtype, device), repeat, warmup)


def build_sides(plan: Plan, folder: Path, stack: contextlib.ExitStack) -> tuple:
    """diffusers' pipelines, and each side's modules: ours, ours_compiled (unless --no-compile) and diffusers'."""
    args, device, dtype = plan.args, plan.device, plan.ours_dtype
    if args.tiny:
        prior_pipe, decoder_pipe, configs = tiny_pipelines(folder)
    else:
        prior_pipe, decoder_pipe, configs = full_size_pipelines(folder, device, plan.reference_dtype, args.seed)
    for pipe in (prior_pipe, decoder_pipe):
        pipe.set_progress_bar_config(disable=True)
    theirs = {"text": prior_pipe.text_encoder, "image": prior_pipe.image_encoder, "prior": prior_pipe.prior}
    theirs |= {"unet": decoder_pipe.unet, "movq": decoder_pipe.movq}
    ours = {
        "text": in_dtype(theirs["text"], dtype),
        "prior": adopt(theirs["prior"], configs["prior"], PriorConfig, PriorTransformer, dtype, "prior"),
        "unet": adopt(theirs["unet"], configs["unet"], UNetConfig, KandinskyUNet, dtype, "UNet"),
        "movq": adopt(theirs["movq"], configs["movq"], MoVQConfig, MoVQ, dtype, "MoVQ"),
    }
    if args.no_compile:
        return prior_pipe, decoder_pipe, configs, {"ours": ours, "diffusers": theirs}
    # its own UNet and MoVQ: compiling switches their memory layout
    ours_compiled = {**ours, "unet": copy.deepcopy(ours["unet"]), "movq": copy.deepcopy(ours["movq"])}
    if args.compiled_layout == "channels_last":
        with on_device(device):
            loaders.speed_layout(ours_compiled["unet"], compile=True)
            loaders.speed_layout(ours_compiled["movq"], compile=True)
    if args.compile_mode:
        stack.enter_context(mock.patch.dict(compiled.OPTIONS, mode=args.compile_mode))
    if args.tiny:  # dynamo traces as on a GPU, the traced graph runs as is: inductor would take minutes
        stack.enter_context(mock.patch.dict(compiled.OPTIONS, backend="eager"))
    sides = {"ours": ours, "ours_compiled": ours_compiled, "diffusers": theirs}
    return prior_pipe, decoder_pipe, configs, sides


def zero_embed_once(image_encoder: torch.nn.Module, plan: Plan) -> tuple[torch.Tensor, float]:
    """The zero-image embedding, once, as the prior loader computes it before caching it on disk; and its time."""
    image_encoder = in_dtype(image_encoder, plan.ours_dtype)
    sync(plan.device)
    start = time.perf_counter()
    with torch.inference_mode():
        zero = clip.zero_image_embed(image_encoder).float().cpu()
    seconds = time.perf_counter() - start
    del image_encoder
    runtime.free_cache()
    return zero, seconds


def chain_figures(stages: Stages, plan: Plan, side: str, batch: int, flop: dict, rate: float, sides: dict) -> dict:
    """One side's stage medians at `batch`, per-step times, the UNet's rate, and the memory of each stage."""
    args, repeat = plan.args, plan.repeat
    r = stages.summary(repeat, BOUNDS, plan.cuda)
    if side == "diffusers":  # its prior stage also embeds the zero image, on every call
        spans = (stages.span(run, "zero_start", "zero_end")[0] for run in stages.runs[-repeat:])
        r["zero_embed_s"] = statistics.median(spans)
    r["prior_step_ms"] = (r["prior_s"] - r.get("zero_embed_s", 0.0)) / args.prior_steps * 1e3
    r["decoder_step_ms"] = r["decoder_s"] / args.decoder_steps * 1e3
    r["unet_tflops_in_pipeline"] = batch * flop["unet"] / (r["decoder_step_ms"] / 1e3) / 1e12
    r["unet_fraction_of_matmul"] = r["unet_tflops_in_pipeline"] / rate
    r["weights_gib"] = resident_bytes(*sides[side].values()) / GIB
    r["peak_gib"] = r["weights_gib"] + r["total_working_gib"]  # NaN on the CPU
    for stage, names in STAGE_MODULES[side].items():  # what the stage needs with the others offloaded
        own = resident_bytes(*(sides[side][name] for name in names)) / GIB
        r[f"{stage}_peak_gib"] = own + r[f"{stage}_working_gib"]
    return r


def compare_images(results: dict, images: dict[str, torch.Tensor], batch: int) -> None:
    """Each chain of ours against diffusers' at `batch`: speed, memory and how far its pictures are."""
    theirs_b = results[f"diffusers_b{batch}"]
    for side in images:
        if side == "diffusers":
            continue
        ours_b, suffix = results[f"{side}_b{batch}"], side.removeprefix("ours")
        results[f"speedup{suffix}_b{batch}"] = theirs_b["total_s"] / ours_b["total_s"]
        results[f"memory_ratio{suffix}_b{batch}"] = ours_b["peak_gib"] / theirs_b["peak_gib"]
        difference = (images[side] - images["diffusers"]).abs()
        results[f"max_abs_image_diff{suffix}_b{batch}"] = difference.max().item()
        results[f"mean_abs_image_diff{suffix}_b{batch}"] = difference.mean().item()
    results[f"images_finite_b{batch}"] = all(image.isfinite().all().item() for image in images.values())
    reference = images["diffusers"]
    results[f"diffusers_image_std_b{batch}"] = reference.std().item()  # a picture, not a flat field
    results[f"diffusers_image_unclamped_b{batch}"] = ((reference > 0) & (reference < 1)).float().mean().item()


def time_chains(results: dict, plan: Plan, pipes: tuple, sides: dict, flop: dict, rate: float) -> None:
    """Every chain at every batch, one after another; the figures into `results`."""
    prior_pipe, decoder_pipe = pipes
    zero, results["ours_zero_embed_once_s"] = zero_embed_once(prior_pipe.image_encoder, plan)
    stages = Stages(plan.device)
    chains = {
        side: ours_chain(
            modules, prior_pipe.tokenizer, zero, plan.ours_dtype, stages, plan.args, side == "ours_compiled"
        )
        for side, modules in sides.items()
        if side != "diffusers"
    }
    chains["diffusers"] = diffusers_chain(prior_pipe, decoder_pipe, stages, plan.args)
    for batch in plan.args.batch:
        images = {}
        for side, make in chains.items():
            first, images[side] = run_timed(stages, make(batch), plan.repeat, plan.warmup)
            results[f"{side}_b{batch}"] = chain_figures(stages, plan, side, batch, flop, rate, sides)
            results[f"{side}_b{batch}"]["first_call_s"] = first
        compare_images(results, images, batch)


def time_modules_alone(plan: Plan, sides: dict, flop: dict, rate: float) -> dict:
    """Each side's modules alone (k22_chains.modules_alone), with their ratios to diffusers'."""
    step_repeat = 1 if plan.args.tiny else plan.args.step_repeat
    with torch.inference_mode():
        dtypes = {side: plan.reference_dtype if side == "diffusers" else plan.ours_dtype for side in sides}
        sides_alone = {side: (modules, dtypes[side]) for side, modules in sides.items()}
        alone = modules_alone(sides_alone, plan.device, plan.args, flop, step_repeat, plan.warmup)
    for key, r in alone.items():
        side, what = split_side(key)
        reference = what.replace("prior_encode_text", "prior_step")  # encode_text: against one step, for scale
        r["speedup"] = alone[f"diffusers_{reference}"]["median_s"] / r["median_s"]
        if "unet" in what:
            r["fraction_of_matmul"] = r["tflops"] / rate
    return alone


def summary_table(results: dict, plan: Plan, sides: dict) -> list[tuple]:
    header = ("run", "total s", "text s", "prior s", "dec ms/step", "MoVQ s", "peak GiB", "UNet TFLOP/s", "of mm", "x")
    table = [header]
    for batch in plan.args.batch:
        baseline = results[f"diffusers_b{batch}"]["total_s"]
        for side in ("diffusers", *(side for side in sides if side != "diffusers")):
            r = results[f"{side}_b{batch}"]
            times = (f"{r['total_s']:.3f}", f"{r['text_s']:.4f}", f"{r['prior_s']:.3f}", f"{r['decoder_step_ms']:.2f}")
            rate = (f"{r['unet_tflops_in_pipeline']:.1f}", f"{r['unet_fraction_of_matmul']:.1%}")
            speed = f"{baseline / r['total_s']:.2f}"
            table.append((f"{side} batch {batch}", *times, f"{r['movq_s']:.3f}", f"{r['peak_gib']:.2f}", *rate, speed))
    alone = results["alone"]
    for key, r in alone.items():
        side, what = split_side(key)
        rate_cells = (f"{r['tflops']:.1f}", f"{r['fraction_of_matmul']:.1%}") if "unet" in what else ("-", "-")
        cells = (f"{r['median_s'] * 1e3:.2f} ms", "-", "-", "-", "-", f"{r['peak_gib']:.2f}", *rate_cells)
        table.append((f"{side} {what} alone", *cells, f"{r['speedup']:.2f}"))
    return table


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.device == "cpu":
        return k22_cpu.cpu_main(args)
    plan = make_plan(args)

    import diffusers
    import transformers

    results = {
        "work": (
            f"Kandinsky 2.2, {args.size}², prior {args.prior_steps} + decoder {args.decoder_steps} steps, "
            f"guidance {args.guidance}, no negative prompt, batch {args.batch}, "
            f"{'tiny repos' if args.tiny else 'random weights of the real configs'}"
        ),
        **environment(plan.device),
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "diffusers_dtype": str(plan.reference_dtype).removeprefix("torch."),
        "ours_dtype": str(plan.ours_dtype).removeprefix("torch."),
    }
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        stack.enter_context(on_device(plan.device))
        stack.enter_context(torch.no_grad())
        start = time.perf_counter()
        prior_pipe, decoder_pipe, configs, sides = build_sides(plan, folder, stack)
        results["compile_mode"] = compiled.OPTIONS.get("mode", compiled.OPTIONS.get("backend", "default"))
        results["compiled_layout"] = args.compiled_layout
        results["build_s"] = time.perf_counter() - start
        flop = count_flops(configs, args.size)
        results["unet_tflop_per_step_batch2"] = flop["unet"] / 1e12
        results["prior_tflop_per_step_batch2"] = flop["prior"] / 1e12
        results["movq_tflop_per_image"] = flop["movq"] / 1e12
        if plan.cuda:  # (also the GPU libraries' warm-up, before the one-off zero-image embedding)
            rate = results["matmul_bf16_tflops"] = matmul_tflops(plan.device)
        else:  # the CPU's fp32 rate, at a size that takes milliseconds
            rate = results["matmul_fp32_tflops"] = matmul_tflops(plan.device, torch.float32, 256)
        time_chains(results, plan, (prior_pipe, decoder_pipe), sides, flop, rate)
        results["alone"] = time_modules_alone(plan, sides, flop, rate)
    report(results, summary_table(results, plan, sides))
    return results


if __name__ == "__main__":
    main()
