"""DALL·E Mega, 16 images from text: our token sampling and VQGAN decode against min-dalle's own pipeline.

Full-size Mega (24 layers, 2048 wide) and the VQGAN with random weights (the work does not depend on the values),
one prompt, 16 images, top-k 256, temperature 1, supercondition 16, in one process on one GPU. Ours runs in fp16
and bf16: `sample_image_tokens` (each step replayed as a CUDA graph, and once more kernel by kernel to show what
the graph gains), then our VQGAN in the same dtype, 4 images a pass, as the DALL·E VQGAN Decode node does.
min-dalle (the pip package, v0.4.11) reads our fp16 weights from files in its own layout and runs
`MinDalle.generate_images` as its README does, in fp16. Stage times come from device syncs at stage boundaries only.
Checks: the graph's tokens are the kernel-by-kernel tokens (same seed and dtype); in --tiny mode (CPU, fp32) ours
are min-dalle's, token for token.

    cd benchmarks && python3 bench_dalle_mega.py     # on the GPU machine: needs min_dalle (and its emoji)
    python3 bench_dalle_mega.py --tiny               # seconds on a CPU: checks that the script still runs

With `--device cpu` it compares on the CPU instead, fp32, at the real sizes with small work (dalle_cpu.py): DALL·E
Mini's 256 tokens at batch 1 and 4 (tokens identical, checked), a few of Mega's decoder steps, and the VQGAN decode
of one 256² image, ours and min-dalle's interleaved round by round; medians of wall and CPU time.

    python3 bench_dalle_mega.py --device cpu --threads 1 --repeat 5
    python3 bench_dalle_mega.py --device cpu --tiny                  # seconds: the toy BART sizes
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import math
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import dalle_cpu
import torch
from common import environment, import_checkout, report, sync, time_call
from dalle_models import PROMPT, SETTINGS, random_bart

import_checkout()
from dalle_nodes.engine.cuda_graph import SWITCH as CUDA_GRAPH_SWITCH  # noqa: E402
from dalle_nodes.engine.hub import Source  # noqa: E402
from dalle_nodes.models import dalle_bart, vqgan  # noqa: E402
from dalle_nodes.models.dalle_bart import HYPERPARAMETERS, DalleBart, Hyperparameters  # noqa: E402
from dalle_nodes.pipelines.dalle_mini import loading as mini_loading  # noqa: E402
from dalle_nodes.pipelines.dalle_mini import stages as mini_stages  # noqa: E402
from dalle_nodes.pipelines.dalle_mini.stages import DECODE_BATCH  # noqa: E402
from tiny_repos import TINY_MIN_DALLE, import_min_dalle, write_min_dalle_tokenizer  # noqa: E402


class Stages:
    """Wall-clock marks at stage boundaries, each taken after a device sync; one dict of marks per run."""

    def __init__(self, device: torch.device):
        self.device = device
        self.runs: list[dict[str, float]] = []

    def start(self) -> None:
        self.runs.append({})
        self.mark("start")

    def mark(self, name: str) -> None:
        sync(self.device)
        self.runs[-1][name] = time.perf_counter()

    def medians(self, count: int) -> dict[str, float]:
        """Median seconds of each stage over the last `count` runs."""
        runs = self.runs[-count:]

        def span(a: str, b: str) -> float:
            return statistics.median(run[b] - run[a] if a in run else 0.0 for run in runs)

        stages = {
            "encode_s": span("encode_start", "encode_end"),
            "sampling_s": span("encode_end", "sampling_end"),
            "graph_capture_s": span("capture_start", "capture_end"),
            "decode_s": span("sampling_end", "decode_end"),
        }
        stages["step_ms"] = (stages["sampling_s"] - stages["graph_capture_s"]) / dalle_bart.IMAGE_TOKENS * 1e3
        return stages


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().cpu() for name, tensor in module.state_dict().items()}


def write_min_dalle_files(root: Path, bart: DalleBart, detokenizer: vqgan.VQGAN) -> Path:
    """The weights in min-dalle's models_root layout (dalle_bart_mega/, vqgan/), with a small BPE vocabulary;
    returns the Mega folder, which is also a local repo in kuprel/min-dalle's layout for our loaders."""
    folder = root / "dalle_bart_mega"
    folder.mkdir()
    (root / "vqgan").mkdir()
    torch.save(cpu_state(bart.encoder), folder / "encoder.pt")
    torch.save(cpu_state(bart.decoder), folder / "decoder.pt")
    torch.save(cpu_state(detokenizer), root / "vqgan" / "detoker.pt")
    write_min_dalle_tokenizer(folder, "vocab.json", "merges.txt")
    return folder


def load_min_dalle(root: Path, dtype: torch.dtype, device: torch.device, tiny: bool):
    """MinDalle on our files, offline (its constructor pings the Hub even when the files are there)."""
    min_dalle = import_min_dalle()
    with mock.patch.object(importlib.import_module("min_dalle.min_dalle").requests, "get"):
        model = min_dalle.MinDalle(str(root), dtype, device.type, is_mega=True, is_reusable=False, is_verbose=False)
    if tiny:
        vars(model).update(TINY_MIN_DALLE)  # the sizes MinDalle sets for the real Mega
    model.init_encoder()
    model.init_decoder()
    model.init_detokenizer()
    model.is_reusable = True  # what is_reusable=True does in the constructor, with the sizes above
    return model


def instrument_min_dalle(model, stages: Stages, tokens_seen: list) -> None:
    """Stage marks around min-dalle's encoder and detokenizer calls (syncs only at those boundaries)."""
    encode, decode = model.encoder.forward, model.image_grid_from_tokens

    def timed_encode(*args, **kwargs):
        stages.mark("encode_start")
        states = encode(*args, **kwargs)
        stages.mark("encode_end")
        return states

    def timed_decode(image_tokens, *args, **kwargs):
        stages.mark("sampling_end")
        tokens_seen.append(image_tokens.clone())
        images = decode(image_tokens, *args, **kwargs)
        stages.mark("decode_end")
        return images

    model.encoder.forward = timed_encode
    model.image_grid_from_tokens = timed_decode


@contextlib.contextmanager
def instrument_ours(barts: list[DalleBart], stages: Stages, captures: list[bool]) -> Iterator[None]:
    """Stage marks around our encoder (hooks) and around CUDA graph capture; `captures` records each capture."""
    hooks = []
    for bart in barts:
        hooks.append(bart.encoder.register_forward_pre_hook(lambda *_: stages.mark("encode_start")))
        hooks.append(bart.encoder.register_forward_hook(lambda *_: stages.mark("encode_end")))
    capture = mini_stages.GraphStep.capture

    def timed_capture(self) -> None:
        stages.mark("capture_start")
        try:
            capture(self)
        except Exception:
            captures.append(False)
            raise
        stages.mark("capture_end")
        captures.append(True)

    try:
        with mock.patch.object(mini_stages.GraphStep, "capture", timed_capture):
            yield
    finally:
        for hook in hooks:
            hook.remove()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model, one image, on the CPU in fp32")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)  # min-dalle seeds only above 0
    parser.add_argument("--skip-min-dalle", action="store_true", help="time ours only")
    parser.add_argument("--device", choices=("auto", "cpu"), default="auto", help="cpu: the CPU comparison")
    parser.add_argument("--threads", type=int, default=0, help="--device cpu: torch's threads (0: its default)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4], help="--device cpu: images (squares)")
    parser.add_argument("--steps", type=int, default=4, help="--device cpu: Mega decoder steps timed per round")
    parts = ("mini", "mega", "vqgan")
    parser.add_argument("--parts", nargs="+", choices=parts, default=list(parts), help="--device cpu: what to time")
    args = parser.parse_args(argv)
    if args.device == "cpu" and any(math.isqrt(count) ** 2 != count for count in args.batches):
        parser.error("--batches: min-dalle draws square grids, so 1, 4, 9, 16 … images")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.device == "cpu":
        return dalle_cpu.cpu_main(args)
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    hp = Hyperparameters(**TINY_MIN_DALLE) if args.tiny else HYPERPARAMETERS["mega"]
    grid = 1 if args.tiny else 4
    images = grid**2
    dtypes = {"fp32": torch.float32} if args.tiny else {"fp16": torch.float16, "bf16": torch.bfloat16}
    reference_dtype = "fp32" if args.tiny else "fp16"  # min-dalle's Mega weights are fp16; its VQGAN runs in fp32
    repeat, warmup = (1, 0) if args.tiny else (args.repeat, 1)
    # --tiny decodes a 4 × 4 corner of our codes (a 16th of the VQGAN's work); min-dalle can only decode 16 × 16
    side = 4 if args.tiny else dalle_bart.IMAGE_SIDE

    results = {
        "work": f"DALL·E Mega ({hp.layer_count} layers, {hp.embed_count} wide), {images} images, {SETTINGS}",
        **environment(device),
    }
    stages = Stages(device)
    captures: list[bool] = []
    codes_seen: dict[str, list[torch.Tensor]] = {}
    runs = {}
    with contextlib.ExitStack() as stack:
        folder = stack.enter_context(tempfile.TemporaryDirectory())
        stack.enter_context(torch.inference_mode())
        barts = {name: random_bart(hp, device, dtype) for name, dtype in dtypes.items()}
        with torch.device(device):
            detokenizer = vqgan.VQGAN().eval()  # PyTorch's default initialisation
        mega_folder = write_min_dalle_files(Path(folder), barts[reference_dtype], detokenizer)
        tokenizer = mini_loading.load_tokenizer(Source(str(mega_folder)), "mega")
        stack.enter_context(instrument_ours(list(barts.values()), stages, captures))

        def ours(name: str, bart: DalleBart, decoder: vqgan.VQGAN, cuda_graph: bool):
            def run() -> None:
                stages.start()
                text = mini_stages.text_tokens(tokenizer.encode(PROMPT))
                switch = {CUDA_GRAPH_SWITCH: "1" if cuda_graph else "0"}  # read by sample_image_tokens
                with mock.patch.dict(os.environ, switch):
                    codes = mini_stages.sample_image_tokens(bart, text, images, args.seed, **SETTINGS)
                stages.mark("sampling_end")
                codes_seen.setdefault(name, []).append(codes.clone())
                chunks = codes[:, :side, :side].split(DECODE_BATCH)  # as DalleVQGANDecode decodes them
                torch.cat([decoder(chunk).float().permute(0, 2, 3, 1) for chunk in chunks])
                stages.mark("decode_end")

            return run

        for name, dtype in dtypes.items():
            decoder = copy.deepcopy(detokenizer).to(dtype)
            runs[f"ours_{name}"] = ours(f"ours_{name}", barts[name], decoder, cuda_graph=True)
            runs[f"ours_{name}_eager"] = ours(f"ours_{name}_eager", barts[name], decoder, cuda_graph=False)
        if not args.skip_min_dalle:
            reference = load_min_dalle(Path(folder), dtypes[reference_dtype], device, args.tiny)
            results["same_prompt_tokens"] = reference.tokenizer.tokenize(PROMPT) == tokenizer.encode(PROMPT)
            reference_tokens: list[torch.Tensor] = []
            instrument_min_dalle(reference, stages, reference_tokens)

            def min_dalle_run() -> None:
                stages.start()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # its torch.cuda.amp.autocast is deprecated
                    reference.generate_images(
                        text=PROMPT,
                        seed=args.seed,
                        grid_size=grid,
                        is_seamless=False,
                        temperature=SETTINGS["temperature"],
                        top_k=SETTINGS["top_k"],
                        supercondition_factor=SETTINGS["supercondition"],
                        is_verbose=False,
                    )
                stages.mark("decode_end")

            runs[f"min_dalle_{reference_dtype}"] = min_dalle_run

        for name, run in runs.items():
            resident = torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
            first_capture = len(captures)
            timing = time_call(run, device, repeat, warmup)
            results[name] = {
                "total_s": timing["median_s"],
                **stages.medians(repeat),
                "min_s": timing["min_s"],
                "max_s": timing["max_s"],
                "first_call_s": timing["first_call_s"],
                "peak_gib": timing["peak_gib"],
                "working_gib": timing["peak_gib"] - resident,  # beyond the weights already resident
            }
            if name.startswith("ours") and not name.endswith("eager") and device.type == "cuda":
                captured = captures[first_capture:]  # one per call; False: it fell back to kernel by kernel
                results[name]["graph_captured"] = bool(captured) and all(captured)

    # Checks: graph == kernel by kernel (same seed, same dtype), runs repeat; on the CPU, ours == min-dalle.
    for name in dtypes:
        graph, eager = codes_seen[f"ours_{name}"], codes_seen[f"ours_{name}_eager"]
        results[f"ours_{name}_graph_equals_eager"] = (graph[-1] == eager[-1]).float().mean().item()
        repeats = (torch.equal(seen[0], codes) for seen in (graph, eager) for codes in seen)
        results[f"ours_{name}_repeatable"] = all(repeats)
        results[f"ours_{name}_distinct_codes"] = len(graph[-1].unique())
        steps = results[f"ours_{name}_eager"]["step_ms"], results[f"ours_{name}"]["step_ms"]
        results[f"ours_{name}_step_speedup_graph_vs_eager"] = steps[0] / steps[1]
    if not args.skip_min_dalle:
        reference_name = f"min_dalle_{reference_dtype}"
        if device.type == "cpu":  # bit for bit; on a GPU the noise streams differ (sampling_generator)
            reference_codes = reference_tokens[-1].view(images, dalle_bart.IMAGE_SIDE, dalle_bart.IMAGE_SIDE)
            same = codes_seen[f"ours_{reference_dtype}"][-1] == reference_codes
            results[f"ours_{reference_dtype}_fraction_equal_to_min_dalle"] = same.float().mean().item()
        baseline = results[reference_name]["total_s"]
        for name in dtypes:
            results[f"speedup_{name}_vs_{reference_name}"] = baseline / results[f"ours_{name}"]["total_s"]
            results[f"speedup_{name}_eager_vs_{reference_name}"] = baseline / results[f"ours_{name}_eager"]["total_s"]
    else:
        baseline = None

    table = [("run", "total s", "encode s", "sampling s", "step ms", "decode s", "working GiB", "x vs min-dalle")]
    for name in runs:
        r = results[name]
        speedup = f"{baseline / r['total_s']:.2f}" if baseline else "-"
        table.append(
            (
                name,
                f"{r['total_s']:.3f}",
                f"{r['encode_s']:.4f}",
                f"{r['sampling_s']:.3f}",
                f"{r['step_ms']:.2f}",
                f"{r['decode_s']:.3f}",
                f"{r['working_gib']:.2f}",
                speedup,
            )
        )
    report(results, table)
    return results


if __name__ == "__main__":
    main()
