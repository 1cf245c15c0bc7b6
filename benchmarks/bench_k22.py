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
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import torch
from common import ROOT, environment, flops, import_package, matmul_tflops, randomize_, report, sync, time_call

import_package()
sys.path.insert(0, str(ROOT / "tests"))  # tiny_repos: the real configs' folders, tiny repos and a CLIP tokenizer
from dalle_nodes.engine import compiled  # noqa: E402
from dalle_nodes.engine.checkpoints import load_strict  # noqa: E402
from dalle_nodes.engine.hub import Source  # noqa: E402
from dalle_nodes.models import clip  # noqa: E402
from dalle_nodes.models.movq import MoVQ, MoVQConfig  # noqa: E402
from dalle_nodes.models.prior import PriorConfig, PriorTransformer  # noqa: E402
from dalle_nodes.models.unet import KandinskyUNet, UNetConfig  # noqa: E402
from dalle_nodes.nodes import NODE_CLASS_MAPPINGS as NODES  # noqa: E402
from dalle_nodes.nodes import loaders, runtime, sockets  # noqa: E402
from dalle_nodes.pipelines.kandinsky22 import loading  # noqa: E402
from tiny_repos import (  # noqa: E402
    DECODER_CONFIGS,
    PRIOR_CONFIGS,
    real_config,
    write_decoder_repo,
    write_prior_repo,
    write_tokenizer,
)

PROMPT = "a cat and a dog in the garden, oil painting"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
GIB = 2**30
STAGES = ("text", "prior", "decoder", "movq")


# ---------------------------------------------------------------------------------------------------------------
# Models


def diffusers_config(path: Path) -> dict:
    return {k: v for k, v in real_config(path).items() if not k.startswith("_")}


def random_module(build: Callable[[], torch.nn.Module], device, dtype, generator) -> torch.nn.Module:
    """Made on the device (no full-size weights ever touch the disk or the host), then cast and randomized."""
    with torch.device(device):
        module = build()
    return randomize_(module.to(dtype), generator)


def full_size_pipelines(folder: Path, device: torch.device, dtype: torch.dtype, seed: int) -> tuple:
    """diffusers' two pipelines around random full-size modules of the real configs; returns them with the configs."""
    from diffusers import (
        DDPMScheduler,
        KandinskyV22Pipeline,
        KandinskyV22PriorPipeline,
        UnCLIPScheduler,
        UNet2DConditionModel,
        VQModel,
    )
    from diffusers import PriorTransformer as DiffusersPrior
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    generator = torch.Generator(device).manual_seed(seed)
    configs = {
        "prior": diffusers_config(PRIOR_CONFIGS / "prior" / "config.json"),
        "unet": diffusers_config(DECODER_CONFIGS / "unet" / "config.json"),
        "movq": diffusers_config(DECODER_CONFIGS / "movq" / "config.json"),
    }
    vocab = write_tokenizer(folder / "tokenizer")  # a tiny BPE table: every id is far below the real vocabulary
    text_config = CLIPTextConfig(**real_config(PRIOR_CONFIGS / "text_encoder" / "config.json"))
    assert vocab <= text_config.vocab_size
    vision_config = CLIPVisionConfig(**real_config(PRIOR_CONFIGS / "image_encoder" / "config.json"))
    prior_pipe = KandinskyV22PriorPipeline(
        prior=random_module(lambda: DiffusersPrior(**configs["prior"]), device, dtype, generator),
        image_encoder=random_module(lambda: CLIPVisionModelWithProjection(vision_config), device, dtype, generator),
        text_encoder=random_module(lambda: CLIPTextModelWithProjection(text_config), device, dtype, generator),
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        scheduler=UnCLIPScheduler.from_config(real_config(PRIOR_CONFIGS / "scheduler" / "scheduler_config.json")),
        image_processor=CLIPImageProcessor.from_pretrained(PRIOR_CONFIGS / "image_processor"),
    )
    decoder_pipe = KandinskyV22Pipeline(
        unet=random_module(lambda: UNet2DConditionModel(**configs["unet"]), device, dtype, generator),
        scheduler=DDPMScheduler.from_config(real_config(DECODER_CONFIGS / "scheduler" / "scheduler_config.json")),
        movq=random_module(lambda: VQModel(**configs["movq"]), device, dtype, generator),
    )
    return prior_pipe, decoder_pipe, configs


def tiny_pipelines(folder: Path) -> tuple:
    """The tiny repos the tests use (weights scaled for a real, unclamped picture), loaded by diffusers in fp32."""
    from diffusers import KandinskyV22Pipeline, KandinskyV22PriorPipeline

    prior_repo = write_prior_repo(folder / "prior")
    decoder_repo = write_decoder_repo(folder / "decoder")
    prior_pipe = KandinskyV22PriorPipeline.from_pretrained(prior_repo, dtype=torch.float32)
    decoder_pipe = KandinskyV22Pipeline.from_pretrained(decoder_repo, dtype=torch.float32)
    configs = {
        "prior": real_config(prior_repo / "prior" / "config.json"),
        "unet": real_config(decoder_repo / "unet" / "config.json"),
        "movq": real_config(decoder_repo / "movq" / "config.json"),
    }
    return prior_pipe, decoder_pipe, configs


def adopt(module: torch.nn.Module, config: dict, config_cls, module_cls, dtype: torch.dtype, what: str):
    """Our module of the same config with the diffusers module's weights (strict), converted to our dtype: the
    loaders' own path (modern_attention_keys, load_strict), from memory instead of a file."""
    state = loading.modern_attention_keys(module.state_dict())
    state = {key: value.to(dtype, copy=True) for key, value in state.items()}
    return load_strict(lambda: module_cls(config_cls.from_diffusers(config)), state, f"our {what}")


def in_dtype(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """The shared transformers tower itself, or a copy of it in our dtype."""
    current = next(module.parameters()).dtype
    return module if current == dtype else copy.deepcopy(module).to(dtype)


def resident_bytes(*modules: torch.nn.Module) -> int:
    tensors = itertools.chain.from_iterable(itertools.chain(m.parameters(), m.buffers()) for m in modules)
    return sum(t.numel() * t.element_size() for t in {id(t): t for t in tensors}.values())


# ---------------------------------------------------------------------------------------------------------------
# Timing


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


def run_timed(stages: Stages, side: str, run: Callable[[], torch.Tensor], repeat: int, warmup: int) -> tuple:
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


# ---------------------------------------------------------------------------------------------------------------
# The benchmark


@contextlib.contextmanager
def on_device(device: torch.device) -> Iterator[None]:
    """Our nodes compute where the benchmark says (in --tiny mode the CPU, even on a GPU machine), quietly."""
    with (
        mock.patch.object(runtime, "compute_device", lambda: device),
        mock.patch.object(runtime, "Progress", QuietProgress),
    ):
        yield


def count_flops(configs: dict, size: int) -> dict[str, int]:
    """FLOPs from shapes alone, on the meta device: a UNet step and a prior step at batch 2 (one image, guided),
    one MoVQ decode."""
    latent = size // 8
    with torch.device("meta"):
        unet = KandinskyUNet(UNetConfig.from_diffusers(configs["unet"]))
        movq = MoVQ(MoVQConfig.from_diffusers(configs["movq"]))
        prior = PriorTransformer(PriorConfig.from_diffusers(configs["prior"]))
        dim, t = prior.config.embedding_dim, torch.tensor(500)
        embeds, states, mask = torch.empty(2, dim), torch.empty(2, 77, dim), torch.ones(2, 77, dtype=torch.bool)
        return {
            "unet": flops(lambda: unet(torch.empty(2, 4, latent, latent), t, embeds)),
            "prior": flops(lambda: prior(embeds, t, embeds, states, mask)),
            "movq": flops(lambda: movq.decode(torch.empty(1, 4, latent, latent))),
        }


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


def module_calls(side: str, modules: dict, t, x, embeds, states, mask, z) -> dict[str, Callable[[], object]]:
    """One UNet step, one prior step and one MoVQ decode, called as each side's pipeline calls them."""
    unet, prior, movq = modules["unet"], modules["prior"], modules["movq"]
    if side.startswith("ours"):
        compile = side == "ours_compiled"
        unet_call = sockets.DecoderModel(runtime.ManagedModule(unet), compile).unet_call(unet)
        decode = sockets.MoVQModel(runtime.ManagedModule(movq), compile).decode_call(movq)
        return {
            "unet_step": lambda: unet_call(x, t, embeds),
            "prior_step": lambda: prior(embeds, t, embeds, states, mask),
            "movq_decode": lambda: decode(z),
        }
    return {
        "unet_step": lambda: unet(x, t, None, added_cond_kwargs={"image_embeds": embeds}, return_dict=False),
        "prior_step": lambda: prior(
            embeds, t, proj_embedding=embeds, encoder_hidden_states=states, attention_mask=mask
        ),
        "movq_decode": lambda: movq.decode(z, force_not_quantize=True),
    }


def modules_alone(sides: dict, device: torch.device, args, flop: dict, repeat: int, warmup: int) -> dict:
    """Each side's UNet step and prior step at batch 2B (guided), and one MoVQ decode, on random inputs."""
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
            calls = module_calls(side, modules, t, x, embeds, states, mask, z)
            for what, module in (("unet", modules["unet"]), ("prior", modules["prior"])):
                result = time_alone(calls[f"{what}_step"], device, repeat, warmup, batch * flop[what], module)
                alone[f"{side}_{what}_step_b{rows}"] = result
            if i == 0:
                decode = time_alone(calls["movq_decode"], device, repeat, warmup, flop["movq"], modules["movq"])
                alone[f"{side}_movq_decode_b1"] = decode
    return alone


def split_side(key: str) -> tuple[str, str]:
    """ "ours_compiled_unet_step_b2" → ("ours_compiled", "unet_step_b2")."""
    side = next(side for side in ("ours_compiled", "ours", "diffusers") if key.startswith(side + "_"))
    return side, key.removeprefix(side + "_")


def main(argv: list[str] | None = None) -> dict:
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
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    cuda = device.type == "cuda"
    if args.tiny:
        args.size, args.prior_steps, args.decoder_steps, args.batch = 64, 2, 2, [1]
        args.dtype, args.ours_dtype = "fp32", "fp32"
    reference_dtype = DTYPES[args.dtype]
    ours_dtype = runtime.resolve_dtype(args.ours_dtype, device)
    repeat, warmup = (1, 0) if args.tiny else (args.repeat, 1)
    step_repeat = 1 if args.tiny else args.step_repeat

    import diffusers
    import transformers

    results = {
        "work": (
            f"Kandinsky 2.2, {args.size}², prior {args.prior_steps} + decoder {args.decoder_steps} steps, "
            f"guidance {args.guidance}, no negative prompt, batch {args.batch}, "
            f"{'tiny repos' if args.tiny else 'random weights of the real configs'}"
        ),
        **environment(device),
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "diffusers_dtype": str(reference_dtype).removeprefix("torch."),
        "ours_dtype": str(ours_dtype).removeprefix("torch."),
    }
    stages = Stages(device)
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        stack.enter_context(on_device(device))
        stack.enter_context(torch.no_grad())
        start = time.perf_counter()
        if args.tiny:
            prior_pipe, decoder_pipe, configs = tiny_pipelines(folder)
        else:
            prior_pipe, decoder_pipe, configs = full_size_pipelines(folder, device, reference_dtype, args.seed)
        for pipe in (prior_pipe, decoder_pipe):
            pipe.set_progress_bar_config(disable=True)
        theirs = {
            "text": prior_pipe.text_encoder,
            "image": prior_pipe.image_encoder,
            "prior": prior_pipe.prior,
            "unet": decoder_pipe.unet,
            "movq": decoder_pipe.movq,
        }
        ours = {
            "text": in_dtype(theirs["text"], ours_dtype),
            "prior": adopt(theirs["prior"], configs["prior"], PriorConfig, PriorTransformer, ours_dtype, "prior"),
            "unet": adopt(theirs["unet"], configs["unet"], UNetConfig, KandinskyUNet, ours_dtype, "UNet"),
            "movq": adopt(theirs["movq"], configs["movq"], MoVQConfig, MoVQ, ours_dtype, "MoVQ"),
        }
        if not args.no_compile:  # its own UNet and MoVQ: compiling switches their memory layout
            ours_compiled = {**ours, "unet": copy.deepcopy(ours["unet"]), "movq": copy.deepcopy(ours["movq"])}
            if args.compiled_layout == "channels_last":
                with on_device(device):
                    loaders.speed_layout(ours_compiled["unet"], compile=True)
                    loaders.speed_layout(ours_compiled["movq"], compile=True)
            if args.compile_mode:
                stack.enter_context(mock.patch.dict(compiled.OPTIONS, mode=args.compile_mode))
            if args.tiny:  # dynamo traces as on a GPU, the traced graph runs as is: inductor would take minutes
                stack.enter_context(mock.patch.dict(compiled.OPTIONS, backend="eager"))
        results["compile_mode"] = compiled.OPTIONS.get("mode", compiled.OPTIONS.get("backend", "default"))
        results["compiled_layout"] = args.compiled_layout
        results["build_s"] = time.perf_counter() - start
        flop = count_flops(configs, args.size)
        results["unet_tflop_per_step_batch2"] = flop["unet"] / 1e12
        results["prior_tflop_per_step_batch2"] = flop["prior"] / 1e12
        results["movq_tflop_per_image"] = flop["movq"] / 1e12
        if cuda:  # (also the GPU libraries' warm-up, before the one-off zero-image embedding below)
            rate = results["matmul_bf16_tflops"] = matmul_tflops(device)
        else:  # the CPU's fp32 rate, at a size that takes milliseconds
            rate = results["matmul_fp32_tflops"] = matmul_tflops(device, torch.float32, 256)

        # The zero-image embedding, once, as the prior loader computes it before caching it on disk.
        image_encoder = in_dtype(theirs["image"], ours_dtype)
        sync(device)
        start = time.perf_counter()
        with torch.inference_mode():
            zero = clip.zero_image_embed(image_encoder).float().cpu()
        results["ours_zero_embed_once_s"] = time.perf_counter() - start
        del image_encoder
        runtime.free_cache()

        sides = {"ours": ours, "diffusers": theirs}
        if not args.no_compile:
            sides = {"ours": ours, "ours_compiled": ours_compiled, "diffusers": theirs}
        weights = {side: resident_bytes(*modules.values()) / GIB for side, modules in sides.items()}
        ours_stages = {"text": ["text"], "prior": ["prior"], "decoder": ["unet"], "movq": ["movq"]}
        stage_modules = {
            "ours": ours_stages,
            "ours_compiled": ours_stages,
            "diffusers": {"text": ["text"], "prior": ["prior", "image"], "decoder": ["unet"], "movq": ["movq"]},
        }
        chains = {
            side: ours_chain(sides[side], prior_pipe.tokenizer, zero, ours_dtype, stages, args, side == "ours_compiled")
            for side in sides
            if side != "diffusers"
        }
        chains["diffusers"] = diffusers_chain(prior_pipe, decoder_pipe, stages, args)
        bounds = {
            "text": ("start", "text_end"),
            "prior": ("text_end", "prior_end"),
            "decoder": ("prior_end", "decoder_end"),
            "movq": ("decoder_end", "end"),
        }
        for batch in args.batch:
            images = {}
            for side, make in chains.items():
                first, images[side] = run_timed(stages, side, make(batch), repeat, warmup)
                r = results[f"{side}_b{batch}"] = stages.summary(repeat, bounds, cuda)
                r["first_call_s"] = first
                if side == "diffusers":  # its prior stage also embeds the zero image, on every call
                    spans = (stages.span(run, "zero_start", "zero_end")[0] for run in stages.runs[-repeat:])
                    r["zero_embed_s"] = statistics.median(spans)
                r["prior_step_ms"] = (r["prior_s"] - r.get("zero_embed_s", 0.0)) / args.prior_steps * 1e3
                r["decoder_step_ms"] = r["decoder_s"] / args.decoder_steps * 1e3
                r["unet_tflops_in_pipeline"] = batch * flop["unet"] / (r["decoder_step_ms"] / 1e3) / 1e12
                r["unet_fraction_of_matmul"] = r["unet_tflops_in_pipeline"] / rate
                r["weights_gib"] = weights[side]
                r["peak_gib"] = weights[side] + r["total_working_gib"]  # NaN on the CPU
                for stage, names in stage_modules[side].items():  # what the stage needs with the others offloaded
                    own = resident_bytes(*(sides[side][name] for name in names)) / GIB
                    r[f"{stage}_peak_gib"] = own + r[f"{stage}_working_gib"]
            theirs_b = results[f"diffusers_b{batch}"]
            for side in chains:
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

        with torch.inference_mode():
            dtypes = {side: reference_dtype if side == "diffusers" else ours_dtype for side in sides}
            sides_alone = {side: (modules, dtypes[side]) for side, modules in sides.items()}
            alone = results["alone"] = modules_alone(sides_alone, device, args, flop, step_repeat, warmup)
        for key, r in alone.items():
            side, what = split_side(key)
            r["speedup"] = alone[f"diffusers_{what}"]["median_s"] / r["median_s"]
            if "unet" in what:
                r["fraction_of_matmul"] = r["tflops"] / rate

    header = ("run", "total s", "text s", "prior s", "dec ms/step", "MoVQ s", "peak GiB", "UNet TFLOP/s", "of mm", "x")
    table = [header]
    for batch in args.batch:
        baseline = results[f"diffusers_b{batch}"]["total_s"]
        for side in ("diffusers", *(side for side in sides if side != "diffusers")):
            r = results[f"{side}_b{batch}"]
            table.append(
                (
                    f"{side} batch {batch}",
                    f"{r['total_s']:.3f}",
                    f"{r['text_s']:.4f}",
                    f"{r['prior_s']:.3f}",
                    f"{r['decoder_step_ms']:.2f}",
                    f"{r['movq_s']:.3f}",
                    f"{r['peak_gib']:.2f}",
                    f"{r['unet_tflops_in_pipeline']:.1f}",
                    f"{r['unet_fraction_of_matmul']:.1%}",
                    f"{baseline / r['total_s']:.2f}",
                )
            )
    for key, r in alone.items():
        side, what = split_side(key)
        rate_cells = (f"{r['tflops']:.1f}", f"{r['fraction_of_matmul']:.1%}") if "unet" in what else ("-", "-")
        speedup = f"{alone[f'diffusers_{what}']['median_s'] / r['median_s']:.2f}"
        cells = (f"{r['median_s'] * 1e3:.2f} ms", "-", "-", "-", "-", f"{r['peak_gib']:.2f}", *rate_cells, speedup)
        table.append((f"{side} {what} alone", *cells))
    report(results, table)
    return results


if __name__ == "__main__":
    main()
