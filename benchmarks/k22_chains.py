"""The Kandinsky 2.2 chains bench_k22.py times on a GPU: ours through the node classes, diffusers' two pipelines,
with marks at stage boundaries; and each module alone, with its rate and memory."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from unittest import mock

import torch
from common import import_checkout, sync, time_call
from k22_models import module_calls, resident_bytes

import_checkout()
from dalle_nodes.engine.hub import Source  # noqa: E402
from dalle_nodes.nodes import NODE_CLASS_MAPPINGS as NODES  # noqa: E402
from dalle_nodes.nodes import runtime, sockets  # noqa: E402

PROMPT = "a cat and a dog in the garden, oil painting"
GIB = 2**30


class Stages:
    """Marks at stage boundaries, each after a device sync, with the peak memory allocated since the last mark."""

    def __init__(self, device: torch.device):
        self.device = device
        self.active: str | None = None  # the side being timed: hooks on shared modules mark for it only
        self.runs: list[list[tuple[str, float, int, int]]] = []  # (name, time, peak since last mark, allocated)

    def start(self, side: str) -> None:
        self.active = side
        self.runs.append([])
        self.mark("start")

    def mark(self, name: str, side: str | None = None) -> None:
        if side is not None and side != self.active:
            return
        sync(self.device)
        now = time.perf_counter()
        peak = allocated = 0
        if self.device.type == "cuda":
            peak, allocated = torch.cuda.max_memory_allocated(self.device), torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.runs[-1].append((name, now, peak, allocated))

    def hook(self, module: torch.nn.Module, side: str, before: str | None = None, after: str | None = None) -> None:
        if before:
            module.register_forward_pre_hook(lambda *_: self.mark(before, side))
        if after:
            module.register_forward_hook(lambda *_: self.mark(after, side))

    @staticmethod
    def span(run: list, a: str, b: str) -> tuple[float, float]:
        """Seconds from the last mark `a` to the last mark `b`, and the most memory (GiB) allocated in between beyond
        what was allocated at `a`; (0, 0) when a mark is missing."""
        names = [mark[0] for mark in run]
        if a not in names or b not in names:
            return 0.0, 0.0
        ia, ib = len(names) - 1 - names[::-1].index(a), len(names) - 1 - names[::-1].index(b)
        peak = max(mark[2] for mark in run[ia + 1 : ib + 1])
        return run[ib][1] - run[ia][1], (peak - run[ia][3]) / GIB

    def summary(self, count: int, bounds: dict[str, tuple[str, str]], cuda: bool) -> dict:
        """Median seconds of the whole run and of each stage over the last `count` runs, and working memory."""
        runs = self.runs[-count:]
        out = {}
        for name, (a, b) in {"total": ("start", "end"), **bounds}.items():
            spans = [self.span(run, a, b) for run in runs]
            out[f"{name}_s"] = statistics.median(s for s, _ in spans)
            out[f"{name}_working_gib"] = max(m for _, m in spans) if cuda else float("nan")
        totals = [self.span(run, "start", "end")[0] for run in runs]
        out["min_s"], out["max_s"] = min(totals), max(totals)
        return out


class QuietProgress:
    """runtime.Progress without a terminal bar (ComfyUI shows its own); still an interrupt checkpoint."""

    def __init__(self, total: int, desc: str = ""):
        self.total = total

    def update(self, n: int = 1) -> None:
        runtime.check_interrupt()

    def close(self) -> None:
        pass


@contextlib.contextmanager
def on_device(device: torch.device) -> Iterator[None]:
    """Our nodes compute where the benchmark says (in --tiny mode the CPU, even on a GPU machine), quietly."""
    with (
        mock.patch.object(runtime, "compute_device", lambda: device),
        mock.patch.object(runtime, "Progress", QuietProgress),
    ):
        yield


def run_timed(stages: Stages, run: Callable[[], torch.Tensor], repeat: int, warmup: int) -> tuple:
    """`warmup` then `repeat` calls of `run` (which marks its own stages and "end"); the first call's time and the
    last output."""
    first = None
    for i in range(warmup + repeat):
        start = time.perf_counter()
        output = run()
        if i == 0 and warmup:
            first = time.perf_counter() - start
    stages.active = None
    return first, output


def ours_chain(
    modules: dict, tokenizer, zero: torch.Tensor, dtype: torch.dtype, stages: Stages, args, compile: bool = False
):
    """Our four nodes on the models as the loaders hand them over (the zero-image embedding already cached);
    `compile` as the decoder loader's input of that name."""
    text_encoder = sockets.TextEncoder(tokenizer, runtime.ManagedModule(modules["text"]))
    prior = sockets.PriorModel(
        runtime.ManagedModule(modules["prior"]), Source("benchmark/random"), dtype, _zero_embed=zero
    )
    decoder = sockets.DecoderModel(runtime.ManagedModule(modules["unet"]), compile)
    vq_vae = sockets.MoVQModel(runtime.ManagedModule(modules["movq"]), compile)
    encode, sample_prior = NODES["DalleTextEncode"]().encode, NODES["DallePriorSample"]().sample
    sample_decoder, decode = NODES["DalleDecoderSample"]().sample, NODES["DalleVQDecode"]().decode

    def make(batch: int) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            stages.start("ours")
            (positive,) = encode(text_encoder, PROMPT)
            stages.mark("text_end")
            (embeds,) = sample_prior(prior, positive, args.seed, args.prior_steps, args.guidance, batch)
            stages.mark("prior_end")
            (latent,) = sample_decoder(
                decoder, embeds, args.size, args.size, args.decoder_steps, args.guidance, "ddpm", False, args.seed
            )
            stages.mark("decoder_end")
            (image,) = decode(vq_vae, latent)
            stages.mark("end")
            return image

        return run

    return make


def diffusers_chain(prior_pipe, decoder_pipe, stages: Stages, args):
    """The two pipelines chained as diffusers' docs do, with stage marks from hooks: after its (last) text encoder
    call, around its zero-image embedding (after the prior loop, on every call) and where its MoVQ decode begins."""
    stages.hook(prior_pipe.text_encoder, "diffusers", after="text_end")
    stages.hook(prior_pipe.image_encoder, "diffusers", before="zero_start", after="zero_end")
    stages.hook(decoder_pipe.movq.post_quant_conv, "diffusers", before="decoder_end")

    def make(batch: int) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            stages.start("diffusers")
            embeds = prior_pipe(
                PROMPT,
                num_images_per_prompt=batch,
                num_inference_steps=args.prior_steps,
                guidance_scale=args.guidance,
                generator=torch.Generator("cpu").manual_seed(args.seed),
            )
            stages.mark("prior_end")
            images = decoder_pipe(
                image_embeds=embeds.image_embeds,
                negative_image_embeds=embeds.negative_image_embeds,
                width=args.size,
                height=args.size,
                num_inference_steps=args.decoder_steps,
                guidance_scale=args.guidance,
                generator=torch.Generator("cpu").manual_seed(args.seed),
                output_type="pt",
            ).images
            image = (images * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu()  # what DalleVQDecode gives
            stages.mark("end")
            return image

        return run

    return make


def time_alone(
    fn: Callable[[], object], device: torch.device, repeat: int, warmup: int, flop: int, module: torch.nn.Module
) -> dict:
    """common.time_call, with the rate of `flop` per call and the memory beyond what was resident before; peak_gib
    is the module's own weights plus that (the process-wide peak, which counts every module, is kept apart)."""
    sync(device)
    resident = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    result = time_call(fn, device, repeat, warmup)
    result["process_peak_gib"] = result["peak_gib"]
    result["working_gib"] = result["peak_gib"] - resident / GIB
    result["peak_gib"] = resident_bytes(module) / GIB + result["working_gib"]
    result["tflops"] = flop / result["median_s"] / 1e12
    return result


def modules_alone(sides: dict, device: torch.device, args, flop: dict, repeat: int, warmup: int) -> dict:
    """Each side's UNet step and prior step at batch 2B (guided), and one MoVQ decode, on random inputs; our prior's
    step runs on the text encoded once (as our sampler runs it), and that encode_text is timed as its own row."""
    alone = {}
    latent = args.size // 8
    t = torch.tensor(500, device=device)
    for side, (modules, dtype) in sides.items():
        generator = torch.Generator(device).manual_seed(args.seed)
        dim = modules["text"].config.projection_dim
        z = torch.randn(1, 4, latent, latent, device=device, dtype=dtype, generator=generator)
        for i, batch in enumerate(args.batch):
            rows = 2 * batch
            x = torch.randn(rows, 4, latent, latent, device=device, dtype=dtype, generator=generator)
            embeds = torch.randn(rows, dim, device=device, dtype=dtype, generator=generator)
            states = torch.randn(rows, 77, dim, device=device, dtype=dtype, generator=generator)
            mask = torch.ones(rows, 77, dtype=torch.bool, device=device)
            inputs = {"t": t, "x": x, "embeds": embeds, "states": states, "mask": mask, "z": z}
            calls = module_calls(side, modules, inputs)
            for what, module in (("unet", modules["unet"]), ("prior", modules["prior"])):
                work = flop["prior_ours_step" if what == "prior" and side != "diffusers" else what]
                result = time_alone(calls[f"{what}_step"], device, repeat, warmup, batch * work, module)
                alone[f"{side}_{what}_step_b{rows}"] = result
            if "prior_encode_text" in calls:  # ours, once per generation: timed too, so nothing is left out
                work = batch * flop["prior_encode_text"]
                encode = time_alone(calls["prior_encode_text"], device, repeat, warmup, work, modules["prior"])
                alone[f"{side}_prior_encode_text_b{rows}"] = encode
            if i == 0:
                decode = time_alone(calls["movq_decode"], device, repeat, warmup, flop["movq"], modules["movq"])
                alone[f"{side}_movq_decode_b1"] = decode
    return alone


def split_side(key: str) -> tuple[str, str]:
    """ "ours_compiled_unet_step_b2" → ("ours_compiled", "unet_step_b2")."""
    side = next(side for side in ("ours_compiled", "ours", "diffusers") if key.startswith(side + "_"))
    return side, key.removeprefix(side + "_")
