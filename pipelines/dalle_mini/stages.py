"""The stages of DALL·E Mini / Mega as plain functions over tensors: a prompt's tokens, image tokens sampled from them
one code at a time, and the VQGAN decode of those codes into pixels.

`sample_image_tokens` draws the same tokens as min-dalle's `generate_raw_image_stream` on the CPU for the same
seed, and spends far less work per step on a GPU: the cross-attention keys and values of the text are computed once
instead of at every step, the noise is drawn on the device, and each step is replayed as one CUDA graph instead of
~1000 separate kernel launches.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from einops import rearrange

from ...engine import cuda_graph
from ...engine.cuda_graph import GraphedCall, capture_or_fallback
from ...models.bart_tokenizer import BartTokenizer
from ...models.dalle_bart import (
    IMAGE_CODES,
    IMAGE_SIDE,
    IMAGE_TOKENS,
    PAD_TOKEN,
    START_TOKEN,
    TEXT_TOKENS,
    DalleBart,
    DalleBartDecoder,
    DecoderCache,
)
from ...models.vqgan import VQGAN
from ..checks import check_prompt, check_range, check_tokens
from ..rerank import batches

STEPS_AHEAD = 8  # on a GPU, sampling steps the host may queue before the device has run them
GRAPH_WARMUP_STEPS = 2  # eager runs of a sampling step before it is captured as a CUDA graph
MAX_SUPERCONDITION = 100.0
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 10.0  # below: argmax in all but name; above: noise
MAX_BATCH = 64  # the Mega key/value cache for 64 images is 6.4 GB in fp16
DECODE_BATCH = 4  # images per VQGAN pass: bounds its activation memory (~0.1 GB an image in fp32)


def text_tokens(ids: list[int]) -> torch.Tensor:
    """A prompt's token ids → the [2, 64] decoder text: the unconditional row, then the prompt, padded.

    As in min-dalle, the prompt is cut to 64 tokens and the unconditional row is its first and last token:
    [<s>, </s>], except for a cut prompt, whose 64th token stands in for </s> (kept: same seed, same images).
    """
    ids = ids[:TEXT_TOKENS]
    tokens = torch.full((2, TEXT_TOKENS), PAD_TOKEN, dtype=torch.long)
    tokens[0, :2] = torch.tensor([ids[0], ids[-1]])
    tokens[1, : len(ids)] = torch.tensor(ids)
    return tokens


def prompt_tokens(tokenizer: BartTokenizer, text: str) -> torch.Tensor:
    """The [2, 64] decoder text of a prompt (text_tokens), or an error if DALL·E Mini can read none of it."""
    check_prompt(text, "what the images should show")
    ids = tokenizer.encode(text)
    if len(ids) <= 2:  # only <s> and </s>
        raise ValueError(
            "The prompt has no words DALL·E Mini can read: it keeps only ASCII letters, digits and punctuation "
            "(emoji become their names). Write it in English, or have it translated: the DALL·E Translate Prompt "
            'node, generate(..., translate="auto") in Python, --translate on the command line.'
        )
    return text_tokens(ids)


def check_sampling(batch_size: int, top_k: int, temperature: float, supercondition: float) -> None:
    check_range("batch_size", batch_size, 1, MAX_BATCH)
    check_range("top_k", top_k, 1, IMAGE_CODES)
    check_range("temperature", temperature, MIN_TEMPERATURE, MAX_TEMPERATURE)
    check_range("supercondition", supercondition, 0.0, MAX_SUPERCONDITION)


@dataclass(frozen=True)
class TokenSettings:
    """How sample_tokens draws: `batch_size` images at a time, each code from the `top_k` likeliest at
    `temperature`, the prompt weighted by `supercondition` against no prompt; checked when made, before any model
    loads."""

    batch_size: int = 4
    top_k: int = 256
    temperature: float = 1.0
    supercondition: float = 16.0

    def __post_init__(self) -> None:
        check_sampling(self.batch_size, self.top_k, self.temperature, self.supercondition)


def choose_tokens(
    logits: torch.Tensor, noise: torch.Tensor, top_k: int, temperature: torch.Tensor, supercondition: torch.Tensor
) -> torch.Tensor:
    """One code per image from float32 logits [2n, 16384] (unconditional rows first) and Exp(1) noise [n, 16384].

    min-dalle's arithmetic, op for op, so that CPU results are bit-identical: supercondition (guidance) on the
    logits, keep the top k (ties included), temperature, exp. `temperature` and `supercondition` are float32
    tensors of shape [1], as min-dalle's settings are: a Python float would be rounded differently.
    """
    uncond, cond = logits.chunk(2)
    logits = uncond * (1 - supercondition) + cond * supercondition
    top = logits.topk(top_k).values  # [n, k], largest first
    kept = logits >= top[:, -1:]
    weights = ((logits - top[:, :1]) / temperature).exp() * kept
    # torch.multinomial(weights, 1) on the CPU is argmax(weights / q) with q = torch.empty_like(weights).exponential_():
    # with q drawn from a CPU generator (draw_noise) this is the same draw, done on the weights' device. (Taking the
    # weights to the CPU for torch.multinomial instead would make every step wait for the device.)
    return (weights / noise).argmax(-1)


def sampling_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """The generator for `seed` that sample_image_tokens draws from on `device`: a CUDA device's own, else the CPU's.

    On the CPU the draws are min-dalle's (torch.manual_seed(seed), then torch.multinomial at every step): its
    tokens come out bit for bit. On a CUDA GPU the noise is drawn on the device: no host work, nothing to wait for.
    Drawing it on the CPU there (as min-dalle does) would buy no reproducibility across devices, since sampling on
    a GPU parts from the CPU's tokens within a few dozen steps from float rounding alone, and would cost ~7 ms a
    step, ~2 s for 16 Mega images. The same seed still gives the same tokens on the same kind of GPU.
    """
    device = torch.device(device)
    return torch.Generator(device if device.type == "cuda" else "cpu").manual_seed(seed)


def draw_noise(noise: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Fill `noise` with the Exp(1) draws of one step (see choose_tokens), drawn where `generator` lives.

    A CPU generator on the CPU draws exactly what torch.multinomial would; CUDA's draws are never 0, so the
    division in choose_tokens stays finite.
    """
    if generator.device == noise.device:
        return noise.exponential_(generator=generator)
    # A CPU generator for a GPU buffer: drawn on the host (slow, see sampling_generator), handed over without waiting.
    return noise.copy_(torch.empty(noise.shape).exponential_(generator=generator), non_blocking=True)


def sampling_step(
    decoder: DalleBartDecoder,
    cache: DecoderCache,
    top_k: int,
    settings: torch.Tensor,
    prev_codes: torch.Tensor,
    index: torch.Tensor,
    noise: torch.Tensor,
) -> torch.Tensor:
    """The codes [n] at position `index` [1] after `prev_codes` [n], drawn with `noise` [n, 16384]; `settings` is
    [[temperature], [supercondition]] (float32, see choose_tokens).

    What changes from step to step comes in as tensors, never as Python numbers, so every step runs the same
    kernels on the same memory: GraphStep records this function once as a CUDA graph and replays it.
    """
    logits = decoder(prev_codes, index, cache).float()
    return choose_tokens(logits, noise, top_k, *settings)


Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (prev codes, index, noise) → codes


class GraphStep(GraphedCall):
    """A step function `step(prev_codes, index, noise) → codes` run on fixed buffers and replayed as a CUDA graph:
    a GraphedCall of `step` with the noise buffer bound.

    A Mega step is ~1000 small kernels for a few dozen rows: launched one by one from Python, they leave the GPU
    mostly idle. capture() records them once; each call then copies `prev_codes` and `index` into the recorded
    buffers and replays the recording. `noise` is the caller's buffer, refilled before each call and read in place
    (never copied); the codes returned are overwritten by the next call. capture()'s warm-up writes the first
    step's keys and values at its position: the first real step writes the same ones again. Until capture() (and so
    on the CPU, where the tests run this class), a call runs `step` itself on the same buffers.
    """

    def __init__(self, step: Step, prev_codes: torch.Tensor, index: torch.Tensor, noise: torch.Tensor):
        """`prev_codes` and `index` are the first step's: the warm-up runs of capture() use them."""

        def bound(prev_codes: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            return step(prev_codes, index, noise)

        super().__init__(bound, prev_codes, index, warmup=GRAPH_WARMUP_STEPS)
        self.step, self.noise = step, noise

    def __call__(self, prev_codes: torch.Tensor, index: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        if noise is not self.noise:
            raise ValueError("GraphStep draws from the noise buffer it was made with.")
        return super().__call__(prev_codes, index)


def graph_step(step: Step, prev_codes: torch.Tensor, index: torch.Tensor, noise: torch.Tensor) -> Step:
    """`step` captured as a CUDA graph (GraphStep), or `step` itself, with a logged warning, if capture fails."""
    return capture_or_fallback(GraphStep(step, prev_codes, index, noise), step, "DALL·E Mini")


@torch.inference_mode()
def sample_image_tokens(
    bart: DalleBart,
    tokens: torch.Tensor,
    image_count: int,
    generator: torch.Generator | int,
    top_k: int = 256,
    temperature: float = 1.0,
    supercondition: float = 16.0,
    callback: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """[image_count, 16, 16] codes for the [2, 64] `tokens` of text_tokens(), one step per code.

    `generator` draws the noise, or is a seed for sampling_generator(): a CPU generator seeded as min-dalle seeds
    torch.manual_seed draws min-dalle's tokens on the CPU. Each step runs the unconditional and conditional rows
    in one batch, then calls `callback(step)`. On a CUDA device the step is replayed as a CUDA graph (GraphStep;
    DALLE_NODES_CUDA_GRAPHS=0: launched kernel by kernel, same tokens, slower), and the host queues the steps without
    waiting for them, at most STEPS_AHEAD ahead so that progress and interrupts follow the device.
    """
    device = next(bart.parameters()).device
    if isinstance(generator, int):
        generator = sampling_generator(generator, device)
    tokens = tokens.to(device)
    cache = bart.decoder.start(bart.encoder(tokens), tokens, image_count)
    settings = torch.tensor([[temperature], [supercondition]], dtype=torch.float32, device=device)  # see choose_tokens
    codes = torch.full((image_count, IMAGE_TOKENS + 1), START_TOKEN, dtype=torch.long, device=device)
    noise = torch.ones(image_count, IMAGE_CODES, device=device)  # refilled by draw_noise before every step
    step = partial(sampling_step, bart.decoder, cache, top_k, settings)
    if cuda_graph.wanted() and cuda_graph.can_capture(device):
        step = graph_step(step, codes[:, 0], cache.positions[:1], noise)
    # Ring of events marking queued steps: waiting on the one STEPS_AHEAD back never lets the device run dry.
    queued = [torch.cuda.Event() for _ in range(STEPS_AHEAD)] if device.type == "cuda" else []
    for i in range(IMAGE_TOKENS):
        draw_noise(noise, generator)
        codes[:, i + 1] = step(codes[:, i], cache.positions[i : i + 1], noise)
        if queued:
            event = queued[i % STEPS_AHEAD]
            event.synchronize()  # step i - STEPS_AHEAD has run (a no-op before it is recorded)
            event.record(torch.cuda.current_stream(device))
        if callback is not None:
            callback(i)
    return codes[:, 1:].view(image_count, IMAGE_SIDE, IMAGE_SIDE)


def sample_tokens(
    bart: DalleBart,
    tokens: torch.Tensor,
    seed: int,
    settings: TokenSettings,
    image_count: int | None = None,
    callback: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """[image_count, 16, 16] codes (default: one batch) for the [2, 64] `tokens` of prompt_tokens(), in batches of
    settings.batch_size, `callback(step)` after each step of each batch.

    One generator for `seed`, on the model's device (sampling_generator), runs on through the batches: the first
    batch is the same images whatever `image_count` is. Unlike min-dalle, which seeds only above 0, 0 is a seed like
    any other.
    """
    generator = sampling_generator(seed, next(bart.parameters()).device)
    sizes = batches(image_count or settings.batch_size, settings.batch_size)
    top_k, temperature, supercondition = settings.top_k, settings.temperature, settings.supercondition
    return torch.cat(
        [
            sample_image_tokens(bart, tokens, size, generator, top_k, temperature, supercondition, callback)
            for size in sizes
        ]
    )


def seamless_grid(codes: torch.Tensor) -> torch.Tensor:
    """A square batch [g², h, w] → one [1, g·h, g·w] code map, decoded as one picture that blends across seams.

    Image a·g + b lands in block row b, block column a: min-dalle's placement (it fills its grids column-wise),
    so the picture is the one min-dalle's seamless mode gives.
    """
    side = math.isqrt(codes.shape[0])
    if side * side != codes.shape[0]:
        raise ValueError(f"a seamless grid needs a square number of images (4, 9, 16 …), not {codes.shape[0]}.")
    return rearrange(codes, "(a b) h w -> 1 (b h) (a w)", a=side)


def vqgan_decode(
    load: Callable[[], VQGAN],
    codes: torch.Tensor,
    out_device: torch.device,
    check_interrupt: Callable[[], None],
    seamless: bool = False,
) -> torch.Tensor:
    """[B, h, w] codes → images [B, 16h, 16w, 3] in 0…1 on `out_device`, DECODE_BATCH images a pass, by the VQGAN
    `load()` readies once the codes are checked. `seamless` decodes a square batch as one picture (seamless_grid)."""
    check_tokens(codes, IMAGE_CODES)
    if seamless:
        codes = seamless_grid(codes)
    vqgan = load()
    device = next(vqgan.parameters()).device
    images = []
    with torch.inference_mode():
        for chunk in codes.split(DECODE_BATCH):
            check_interrupt()
            images.append(vqgan(chunk.to(device)).float().permute(0, 2, 3, 1).to(out_device))
    return torch.cat(images)
