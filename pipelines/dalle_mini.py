"""DALL·E Mini / Mega, the open DALL·E 1: load kuprel/min-dalle, sample image tokens from text, decode them.

`sample_image_tokens` draws the same tokens as min-dalle's `generate_raw_image_stream` on the CPU for the same
seed, and spends far less work per step on a GPU: the cross-attention keys and values of the text are computed once
instead of at every step, the noise is drawn on the device, and each step is replayed as one CUDA graph instead of
~1000 separate kernel launches.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import partial

import torch
from einops import rearrange
from PIL import Image
from torch import nn

from ..engine import cuda_graph
from ..engine.cuda_graph import GraphedCall, capture_or_fallback
from ..engine.device import console_progress, default_device, resolve_dtype
from ..engine.hub import (
    CheckpointError,
    ConsoleDownload,
    Source,
    config_settings,
    default_store,
    error_summary,
    fetch_file,
    file_on_disk,
    load_strict,
    read_json,
    read_state_dict,
    source_from_input,
)
from ..engine.images import to_pil
from ..models.bart_tokenizer import BartTokenizer
from ..models.dalle_bart import (
    HYPERPARAMETERS,
    IMAGE_CODES,
    IMAGE_SIDE,
    IMAGE_TOKENS,
    PAD_TOKEN,
    START_TOKEN,
    TEXT_TOKENS,
    DalleBart,
    DalleBartDecoder,
    DalleBartEncoder,
    DecoderCache,
    Hyperparameters,
)
from ..models.vqgan import DETOKER_FILE, VQGAN
from . import rerank
from .checks import MAX_SEED, check_prompt, check_range, check_tokens
from .rerank import Ranker

REPO = "kuprel/min-dalle"
HYPERPARAMETERS_FILE = "hyperparameters.json"  # optional, for other sizes: see folder_hyperparameters
STEPS_AHEAD = 8  # on a GPU, sampling steps the host may queue before the device has run them
GRAPH_WARMUP_STEPS = 2  # eager runs of a sampling step before it is captured as a CUDA graph
MAX_SUPERCONDITION = 100.0
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 10.0  # below: argmax in all but name; above: noise
FETCHES = 5  # files a load asks for (vocabulary, merges, encoder, decoder, VQGAN): "file k of n" in download bars


@dataclass(frozen=True)
class VariantFiles:
    encoder: str
    decoder: str
    vocab: str
    merges: str


FILES = {  # at the root of kuprel/min-dalle; both variants share detoker.pt (models/vqgan.py)
    "mega": VariantFiles("encoder.pt", "decoder.pt", "vocab.json", "merges.txt"),
    "mini": VariantFiles("encoder_mini.pt", "decoder_mini.pt", "vocab_mini.json", "merges_mini.txt"),
}


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


def _load_part(
    source: Source, filename: str, build: Callable[[], nn.Module], dtype: torch.dtype, what: str
) -> nn.Module:
    """Every parameter of `build()` from the file with its shape; tensors the module has no use for are ignored with a
    warning, as min-dalle (which loads non-strictly) ignores them."""
    path = fetch_file(source, "", filename)
    state = read_state_dict(path, dtype)
    with torch.device("meta"):
        expected = build().state_dict().keys()
    module = load_strict(build, {k: v for k, v in state.items() if k in expected}, f"{what} '{path}'")
    unused = sorted(state.keys() - expected)
    if unused:
        more = " …" if len(unused) > 3 else ""
        warnings.warn(
            f"'{path}' holds {len(unused)} tensors the {what} does not use ({', '.join(unused[:3])}{more}).",
            stacklevel=3,
        )
    return module


def check_variant(variant: str) -> None:
    if variant not in FILES:
        raise ValueError(f"variant must be one of {', '.join(FILES)}, not '{variant}'.")


def folder_hyperparameters(source: Source, variant: str) -> Hyperparameters | None:
    """Sizes from a `hyperparameters.json` beside the weights, for checkpoints of other sizes than the Hub's (no
    Hub repo has this file): {"mega": {"layer_count": …, "embed_count": …, …}, "mini": {…}}."""
    path = file_on_disk(source, HYPERPARAMETERS_FILE)
    if path is None:
        return None
    names = ", ".join(field.name for field in fields(Hyperparameters))
    entry = read_json(path).get(variant)
    if not isinstance(entry, dict):
        raise CheckpointError(f"'{path}' needs a \"{variant}\" entry with {names}.")
    defaults = {field.name: 0 for field in fields(Hyperparameters)}  # all sizes: integers
    try:
        settings = config_settings(entry, defaults, f"DALL·E {variant}")
    except ValueError as error:
        raise CheckpointError(f"'{path}': {error}. It needs a \"{variant}\" entry with {names}.") from error
    missing = sorted(defaults.keys() - entry.keys())
    if missing:
        raise CheckpointError(f"'{path}' needs a \"{variant}\" entry with {names} (missing: {', '.join(missing)}).")
    return Hyperparameters(**settings)


def load_bart(source: Source, variant: str, dtype: torch.dtype, hparams: Hyperparameters | None = None) -> DalleBart:
    """The encoder and decoder of a variant ("mega" or "mini"), sized by `hparams`, else by the folder's
    hyperparameters.json, else as min-dalle's Hub checkpoints."""
    check_variant(variant)
    hp = hparams or folder_hyperparameters(source, variant) or HYPERPARAMETERS[variant]
    files = FILES[variant]
    encoder = _load_part(source, files.encoder, lambda: DalleBartEncoder(hp), dtype, f"DALL·E {variant} encoder")
    decoder = _load_part(source, files.decoder, lambda: DalleBartDecoder(hp), dtype, f"DALL·E {variant} decoder")
    return DalleBart(encoder, decoder)


def load_tokenizer(source: Source, variant: str) -> BartTokenizer:
    check_variant(variant)
    vocab, merges = (fetch_file(source, "", name) for name in (FILES[variant].vocab, FILES[variant].merges))
    words = read_json(vocab)
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in words.values()):
        raise CheckpointError(f"'{vocab}' is not a vocabulary (token → id); delete it and download it again.")
    try:
        return BartTokenizer.from_files(vocab, merges)
    except Exception as error:  # a missing special token, undecodable merges, tokenizers' own (plain Exception) ones
        raise CheckpointError(
            f"'{vocab}' and '{merges}' are not a BART tokenizer ({type(error).__name__}: {error_summary(error)}); "
            "delete them and download them again."
        ) from error


def load_vqgan(source: Source, dtype: torch.dtype) -> VQGAN:
    """The detokenizer, loaded strictly (min-dalle loads detoker.pt strictly too)."""
    path = fetch_file(source, "", DETOKER_FILE)
    return load_strict(VQGAN, read_state_dict(path, dtype), f"VQGAN detokenizer '{path}'")


MAX_BATCH = 64  # the Mega key/value cache for 64 images is 6.4 GB in fp16
DECODE_BATCH = 4  # images per VQGAN pass: bounds its activation memory (~0.1 GB an image in fp32)


def dtypes(
    choice: str, device: torch.device, fp16_ok: Callable[[torch.device], bool]
) -> tuple[torch.dtype, torch.dtype]:
    """(BART, VQGAN) dtypes for a dtype input. auto: on GPUs BART in fp16, the precision Mega's weights ship in (bf16
    would drop three bits of each), unless `fp16_ok` rules fp16 out on `device`, and the VQGAN in fp32 as min-dalle
    runs it (its file is fp32 and it costs a few hundredths of a second); fp32 on the CPU. Other choices apply to
    both."""
    if choice != "auto":
        dtype = resolve_dtype(choice, device)
        return dtype, dtype
    if device.type == "cpu":
        return torch.float32, torch.float32
    return (torch.float16 if fp16_ok(device) else torch.float32), torch.float32


def prompt_tokens(tokenizer: BartTokenizer, text: str) -> torch.Tensor:
    """The [2, 64] decoder text of a prompt (text_tokens), or an error if DALL·E Mini can read none of it."""
    check_prompt(text, "what the images should show")
    ids = tokenizer.encode(text)
    if len(ids) <= 2:  # only <s> and </s>
        raise ValueError(
            "The prompt has no words DALL·E Mini can read: it keeps only ASCII letters, digits and punctuation "
            "(emoji become their names). Write it in English."
        )
    return text_tokens(ids)


def check_sampling(batch_size: int, top_k: int, temperature: float, supercondition: float) -> None:
    check_range("batch_size", batch_size, 1, MAX_BATCH)
    check_range("top_k", top_k, 1, IMAGE_CODES)
    check_range("temperature", temperature, MIN_TEMPERATURE, MAX_TEMPERATURE)
    check_range("supercondition", supercondition, 0.0, MAX_SUPERCONDITION)


def vqgan_decode(
    load: Callable[[], VQGAN],
    codes: torch.Tensor,
    out_device: torch.device,
    check_interrupt: Callable[[], None],
    seamless: bool = False,
) -> torch.Tensor:
    """[B, h, w] codes → IMAGE [B, 16h, 16w, 3] on `out_device`, DECODE_BATCH images a pass, by the VQGAN `load()`
    readies once the codes are checked. `seamless` decodes a square batch as one picture (seamless_grid)."""
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


@dataclass
class DalleMini:
    """DALL·E 1 on DALL·E Mega or Mini in plain Python, no ComfyUI needed: the same functions the nodes run.

    ```python
    m = DalleMini.load(repo="kuprel/min-dalle", variant="mega", dtype="auto")
    images = m.generate("a lighthouse", seed=7, batch_size=4)  # list of 256 px PIL images
    ```
    """

    tokenizer: BartTokenizer
    bart: DalleBart
    vqgan: VQGAN
    variant: str
    default_ranker: Ranker | None = field(default=None, repr=False)  # CLIP_REPO's, loaded on the first best_of

    @classmethod
    def load(
        cls, repo: str = REPO, variant: str = "mega", dtype: str = "auto", device: str | torch.device | None = None
    ) -> DalleMini:
        """A Hub repo id or a local folder with min-dalle's files; dtype: auto (on GPUs fp16 BART and fp32 VQGAN,
        fp32 on the CPU), fp32, fp16 or bf16."""
        check_variant(variant)
        device = torch.device(device) if device is not None else default_device()
        bart_dtype, vqgan_dtype = dtypes(dtype, device, lambda d: d.type in ("cuda", "mps"))
        source = source_from_input(repo, None, default_store(), ConsoleDownload(FETCHES))
        tokenizer = load_tokenizer(source, variant)
        bart = load_bart(source, variant, bart_dtype).to(device)
        return cls(tokenizer, bart, load_vqgan(source, vqgan_dtype).to(device), variant)

    def generate(self, prompt: str, ranker: Ranker | None = None, **settings) -> list[Image.Image]:
        """Text → 256 px images; `settings` are those of `Request` (seed, batch_size, top_k, temperature,
        supercondition, best_of), checked before any work. On the CPU the tokens are min-dalle's for the seed.

        With best_of, the batch_size images CLIP ranks highest of best_of samples, best first, each with its score in
        `image.info["clip_score"]`; `ranker` (rerank.Ranker) defaults to openai/clip-vit-base-patch32."""
        return self.run(Request(prompt, **settings), ranker)

    def run(self, request: Request, ranker: Ranker | None = None) -> list[Image.Image]:
        """The node chain Token Sample → VQGAN Decode (→ CLIP Rerank with best_of), as it runs for the same seed."""
        images = self.sample(request)
        if request.best_of is None:
            return to_pil(images)
        if ranker is None:
            if self.default_ranker is None:
                self.default_ranker = Ranker.load(device=next(self.bart.parameters()).device)
            ranker = self.default_ranker
        return rerank.scored_pil(rerank.rerank(ranker, images, request.prompt, request.batch_size))

    def sample(self, request: Request) -> torch.Tensor:
        """Every image the request draws, as IMAGE [N, 256, 256, 3] on the CPU: best_of of them in batches of
        batch_size (one generator running on through the batches: the first batch is the one without best_of),
        else batch_size."""
        tokens = prompt_tokens(self.tokenizer, request.prompt)
        device = next(self.bart.parameters()).device
        generator = sampling_generator(request.seed, device)
        sizes = rerank.batches(request.best_of or request.batch_size, request.batch_size)
        bar = console_progress(IMAGE_TOKENS * len(sizes), f"DALL·E {self.variant}")
        try:
            codes = [
                sample_image_tokens(
                    self.bart,
                    tokens,
                    size,
                    generator,
                    request.top_k,
                    request.temperature,
                    request.supercondition,
                    lambda step: bar.update(),
                )
                for size in sizes
            ]
        finally:
            bar.close()
        return vqgan_decode(lambda: self.vqgan, torch.cat(codes), torch.device("cpu"), lambda: None)


@dataclass(frozen=True)
class Request:
    """The settings of one DALL·E Mini/Mega run, checked when made: before any model loads."""

    prompt: str
    seed: int = 0
    batch_size: int = 4
    top_k: int = 256
    temperature: float = 1.0
    supercondition: float = 16.0
    best_of: int | None = None  # sample this many, keep the batch_size best by CLIP score

    def __post_init__(self) -> None:
        check_prompt(self.prompt, "what the images should show")
        check_range("seed", self.seed, 0, MAX_SEED)
        check_sampling(self.batch_size, self.top_k, self.temperature, self.supercondition)
        rerank.check_best_of(self.best_of, self.batch_size)


def seamless_grid(codes: torch.Tensor) -> torch.Tensor:
    """A square batch [g², h, w] → one [1, g·h, g·w] code map, decoded as one picture that blends across seams.

    Image a·g + b lands in block row b, block column a: min-dalle's placement (it fills its grids column-wise),
    so the picture is the one min-dalle's seamless mode gives.
    """
    side = math.isqrt(codes.shape[0])
    if side * side != codes.shape[0]:
        raise ValueError(f"a seamless grid needs a square number of images (4, 9, 16 …), not {codes.shape[0]}.")
    return rearrange(codes, "(a b) h w -> 1 (b h) (a w)", a=side)
