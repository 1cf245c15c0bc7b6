"""DALL·E Mini / Mega (kuprel/min-dalle): the BART text encoder, the image-token decoder and their sampling.

Parameter names are min-dalle's (DalleBartEncoder, DalleBartDecoder), so the Hub's pickled state dicts load as
they are. `sample_image_tokens` draws the same tokens as min-dalle's `generate_raw_image_stream` on the CPU for
the same seed, and spends far less work per step on a GPU: the cross-attention keys and values of the text are
computed once instead of at every step, the noise is drawn on the device, and each step is replayed as one CUDA
graph instead of ~1000 separate kernel launches.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.cuda_graph import GraphedCall, can_capture, capture_or_fallback
from ..engine.hub import CheckpointError, Source, fetch_file, file_on_disk, load_strict, read_state_dict
from .bart_tokenizer import BartTokenizer

REPO = "kuprel/min-dalle"
HYPERPARAMETERS_FILE = "hyperparameters.json"  # optional, for other sizes: see folder_hyperparameters
TEXT_TOKENS = 64  # text positions; longer prompts are cut
PAD_TOKEN = 1  # BART's <pad>: masked out of every attention over the text
IMAGE_SIDE = 16  # an image is 16 × 16 VQGAN codes …
IMAGE_TOKENS = IMAGE_SIDE**2  # … generated one after another
IMAGE_CODES = 2**14  # the VQGAN codebook; the decoder's larger vocabulary beyond it is never sampled
START_TOKEN = IMAGE_CODES - 1  # what min-dalle feeds the decoder before the first code
STEPS_AHEAD = 8  # on a GPU, sampling steps the host may queue before the device has run them
GRAPH_WARMUP_STEPS = 2  # eager runs of a sampling step before it is captured as a CUDA graph


@dataclass(frozen=True)
class Hyperparameters:
    """min-dalle's constructor arguments (head counts cannot be read from the weights' shapes)."""

    layer_count: int
    embed_count: int
    attention_head_count: int
    glu_embed_count: int
    text_vocab_count: int
    image_vocab_count: int


HYPERPARAMETERS = {
    "mega": Hyperparameters(24, 2048, 32, 4096, 50272, 16415),
    "mini": Hyperparameters(12, 1024, 16, 2730, 50264, 16384),
}


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


class GLU(nn.Module):
    """Gated GELU feed-forward with a LayerNorm before and inside it, no biases."""

    def __init__(self, embed_count: int, glu_embed_count: int):
        super().__init__()
        self.ln0 = nn.LayerNorm(embed_count)
        self.ln1 = nn.LayerNorm(glu_embed_count)
        self.fc0 = nn.Linear(embed_count, glu_embed_count, bias=False)
        self.fc1 = nn.Linear(embed_count, glu_embed_count, bias=False)
        self.fc2 = nn.Linear(glu_embed_count, embed_count, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln0(x)
        return self.fc2(self.ln1(F.gelu(self.fc0(x)) * self.fc1(x)))


class Attention(nn.Module):
    """Multi-head attention without biases."""

    def __init__(self, embed_count: int, head_count: int):
        super().__init__()
        self.head_count = head_count
        self.k_proj = nn.Linear(embed_count, embed_count, bias=False)
        self.v_proj = nn.Linear(embed_count, embed_count, bias=False)
        self.q_proj = nn.Linear(embed_count, embed_count, bias=False)
        self.out_proj = nn.Linear(embed_count, embed_count, bias=False)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, S, E] → [B, heads, S, E / heads]"""
        return x.unflatten(-1, (self.head_count, -1)).transpose(1, 2)

    def keys_values(self, x: torch.Tensor) -> torch.Tensor:
        """[B, S, E] → [2 (keys, values), B, heads, S, E / heads]"""
        return torch.stack([self.heads(self.k_proj(x)), self.heads(self.v_proj(x))])

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-head q [B, h, S, d] over k, v [B, h, T, d] where the bool `mask` (→ [B, h, S, T]) is True → [B, S, E]."""
        return self.out_proj(F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).flatten(2))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Self-attention of x [B, S, E]."""
        return self.attend(self.heads(self.q_proj(x)), self.heads(self.k_proj(x)), self.heads(self.v_proj(x)), mask)


class EncoderLayer(nn.Module):
    def __init__(self, hp: Hyperparameters):
        super().__init__()
        self.pre_self_attn_layer_norm = nn.LayerNorm(hp.embed_count)
        self.self_attn = Attention(hp.embed_count, hp.attention_head_count)
        self.self_attn_layer_norm = nn.LayerNorm(hp.embed_count)
        self.glu = GLU(hp.embed_count, hp.glu_embed_count)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn_layer_norm(self.self_attn(self.pre_self_attn_layer_norm(x), mask))
        return x + self.glu(x)


class DalleBartEncoder(nn.Module):
    def __init__(self, hp: Hyperparameters):
        super().__init__()
        self.embed_tokens = nn.Embedding(hp.text_vocab_count, hp.embed_count)
        self.embed_positions = nn.Embedding(TEXT_TOKENS, hp.embed_count)
        self.layers = nn.ModuleList(EncoderLayer(hp) for _ in range(hp.layer_count))
        self.layernorm_embedding = nn.LayerNorm(hp.embed_count)
        self.final_ln = nn.LayerNorm(hp.embed_count)

    def forward(self, text_tokens: torch.Tensor) -> torch.Tensor:
        """[B, 64] token ids → [B, 64, E] text states."""
        mask = text_tokens.ne(PAD_TOKEN)[:, None, None, :]
        x = self.layernorm_embedding(self.embed_tokens(text_tokens) + self.embed_positions.weight)
        for layer in self.layers:
            x = layer(x, mask)
        return self.final_ln(x)


@dataclass
class DecoderCache:
    """What the decoder keeps between steps for 2n rows (n unconditional, then the same n images conditioned)."""

    self_kv: torch.Tensor  # [layers, 2 (keys, values), 2n, heads, 256, head width]: allocated once, a step fills one
    cross_kv: torch.Tensor  # [layers, 2 (keys, values), 2 texts, heads, 64, head width]: the text's, computed once
    text_mask: torch.Tensor  # [2, 1, 1, 64] bool: True at real text tokens
    positions: torch.Tensor  # [256] image token positions 0…255


class DecoderLayer(nn.Module):
    def __init__(self, hp: Hyperparameters):
        super().__init__()
        self.pre_self_attn_layer_norm = nn.LayerNorm(hp.embed_count)
        self.self_attn = Attention(hp.embed_count, hp.attention_head_count)
        self.self_attn_layer_norm = nn.LayerNorm(hp.embed_count)
        self.pre_encoder_attn_layer_norm = nn.LayerNorm(hp.embed_count)
        self.encoder_attn = Attention(hp.embed_count, hp.attention_head_count)
        self.encoder_attn_layer_norm = nn.LayerNorm(hp.embed_count)
        self.glu = GLU(hp.embed_count, hp.glu_embed_count)

    def forward(
        self,
        x: torch.Tensor,
        index: torch.Tensor,
        self_kv: torch.Tensor,
        causal: torch.Tensor,
        cross_kv: torch.Tensor,
        text_mask: torch.Tensor,
    ) -> torch.Tensor:
        """One position: x [2n, 1, E] at `index` [1]; this layer's caches; causal [1, 1, 1, 256] → [2n, 1, E]."""
        attn = self.self_attn
        h = self.pre_self_attn_layer_norm(x)
        keys, values = self_kv
        keys.index_copy_(2, index, attn.heads(attn.k_proj(h)))
        values.index_copy_(2, index, attn.heads(attn.v_proj(h)))
        h = attn.attend(attn.heads(attn.q_proj(h)), keys, values, causal)
        x = x + self.self_attn_layer_norm(h)

        # The n image rows of each half share one text, so they attend as the n queries of one sequence against
        # that text's keys: the text's keys and values are never copied n times.
        attn = self.encoder_attn
        h = attn.q_proj(self.pre_encoder_attn_layer_norm(x)).view(2, -1, x.shape[-1])  # [2 texts, n, E]
        h = attn.attend(attn.heads(h), *cross_kv, text_mask).view_as(x)
        x = x + self.encoder_attn_layer_norm(h)
        return x + self.glu(x)


class DalleBartDecoder(nn.Module):
    def __init__(self, hp: Hyperparameters):
        super().__init__()
        self.embed_tokens = nn.Embedding(hp.image_vocab_count + 1, hp.embed_count)
        self.embed_positions = nn.Embedding(IMAGE_TOKENS, hp.embed_count)
        self.layers = nn.ModuleList(DecoderLayer(hp) for _ in range(hp.layer_count))
        self.layernorm_embedding = nn.LayerNorm(hp.embed_count)
        self.final_ln = nn.LayerNorm(hp.embed_count)
        self.lm_head = nn.Linear(hp.embed_count, hp.image_vocab_count + 1, bias=False)

    def start(self, text_states: torch.Tensor, text_tokens: torch.Tensor, image_count: int) -> DecoderCache:
        """Caches for sampling `image_count` images from the encoder's [2, 64, E] states of [2, 64] tokens."""
        heads = self.layers[0].self_attn.head_count
        rows, width = 2 * image_count, text_states.shape[-1] // heads
        self_kv = text_states.new_zeros(len(self.layers), 2, rows, heads, IMAGE_TOKENS, width)
        cross_kv = torch.stack([layer.encoder_attn.keys_values(text_states) for layer in self.layers])
        positions = torch.arange(IMAGE_TOKENS, device=text_states.device)
        return DecoderCache(self_kv, cross_kv, text_tokens.ne(PAD_TOKEN)[:, None, None, :], positions)

    def cache_bytes(self, image_count: int) -> int:
        """Memory of start()'s self-attention cache, most of what sampling needs beside the weights."""
        width, itemsize = self.embed_positions.embedding_dim, self.lm_head.weight.element_size()
        return len(self.layers) * 2 * 2 * image_count * IMAGE_TOKENS * width * itemsize

    def forward(self, prev_tokens: torch.Tensor, index: torch.Tensor, cache: DecoderCache) -> torch.Tensor:
        """The n previous codes [n] at position `index` [1] → logits [2n, 16384] (unconditional rows first)."""
        tokens = prev_tokens.repeat(2)  # both halves continue the same images
        x = self.embed_tokens(tokens)[:, None] + self.embed_positions(index)
        x = self.layernorm_embedding(x)
        causal = (cache.positions <= index).view(1, 1, 1, -1)  # later positions still hold zeros
        for layer, self_kv, cross_kv in zip(self.layers, cache.self_kv, cache.cross_kv, strict=True):
            x = layer(x, index, self_kv, causal, cross_kv, cache.text_mask)
        return F.linear(self.final_ln(x[:, 0]), self.lm_head.weight[:IMAGE_CODES])  # only codes are ever sampled


class DalleBart(nn.Module):
    """DALL·E Mini or Mega: the text encoder and the image-token decoder, moved and offloaded together."""

    def __init__(self, encoder: DalleBartEncoder, decoder: DalleBartDecoder):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder


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


@torch.no_grad()
def sample_image_tokens(
    bart: DalleBart,
    tokens: torch.Tensor,
    image_count: int,
    generator: torch.Generator | int,
    top_k: int = 256,
    temperature: float = 1.0,
    supercondition: float = 16.0,
    callback: Callable[[int], None] | None = None,
    cuda_graph: bool = True,
) -> torch.Tensor:
    """[image_count, 16, 16] codes for the [2, 64] `tokens` of text_tokens(), one step per code.

    `generator` draws the noise, or is a seed for sampling_generator(): a CPU generator seeded as min-dalle seeds
    torch.manual_seed draws min-dalle's tokens on the CPU. Each step runs the unconditional and conditional rows
    in one batch, then calls `callback(step)`. On a CUDA device the step is replayed as a CUDA graph (GraphStep;
    `cuda_graph=False`: launched kernel by kernel, same tokens, slower), and the host queues the steps without
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
    if cuda_graph and can_capture(device):
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
    try:
        entry = json.loads(path.read_text())[variant]
        return Hyperparameters(**{field.name: int(entry[field.name]) for field in fields(Hyperparameters)})
    except (ValueError, KeyError, TypeError) as error:
        names = ", ".join(field.name for field in fields(Hyperparameters))
        raise CheckpointError(f"'{path}' needs a \"{variant}\" entry with {names} ({error!r}).") from error


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
    try:
        return BartTokenizer.from_files(vocab, merges)
    except Exception as error:  # json, a missing special token, or tokenizers' own (plain Exception) complaints
        raise CheckpointError(f"'{vocab}' and '{merges}' are not a BART tokenizer ({error}).") from error
