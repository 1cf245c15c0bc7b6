"""What flows between our nodes: the custom socket types (the values of DALLE_* sockets) and the input specs
several nodes share (seed, guidance, revision, dtype), with their tooltips."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from ..engine import compiled
from ..engine.compiled import Compiled
from ..engine.hub import Source
from ..models.bart_tokenizer import BartTokenizer
from ..models.movq import MoVQ
from ..pipelines.checks import MAX_SEED, check_latent
from ..pipelines.clip_text import encode_empty
from ..pipelines.kandinsky22.embeds import ImageEmbeds, PromptEmbeds
from ..pipelines.kandinsky22.loading import FETCHES, zero_image_embed
from ..pipelines.kandinsky22.stages import MAX_GUIDANCE, StageModel
from ..pipelines.kandinsky22.starts import LATENT_CHANNELS
from ..pipelines.karlo import loading as karlo_loading
from ..pipelines.karlo.loading import FETCHES as KARLO_FETCHES
from ..pipelines.previews import RGBFactors
from . import runtime

__all__ = ["ImageEmbeds", "PromptEmbeds"]  # DALLE_IMAGE_EMBEDS and DALLE_TEXT_EMBEDS are the pipeline's own types

KANDINSKY_CATEGORY = "DALL·E/Kandinsky 2.2 (DALL·E 2)"
KARLO_CATEGORY = "DALL·E/Karlo (DALL·E 2, unCLIP)"
MINI_CATEGORY = "DALL·E/DALL·E Mini (DALL·E 1)"
UPSCALE_CATEGORY = "DALL·E/upscaling"
RERANK_CATEGORY = "DALL·E/reranking"

DTYPE_TOOLTIP = "Weights and compute precision. auto: bf16 on GPUs that support it, else fp16; fp32 on the CPU."
REVISION_TOOLTIP = "Branch, tag or commit of the Hub repo (ignored for a local folder)."
GUIDANCE_TOOLTIP = "Classifier-free guidance; 1 or less turns it off."
GUIDANCE_INPUT = (
    "FLOAT",
    {"default": 4.0, "min": 0.0, "max": MAX_GUIDANCE, "step": 0.1, "tooltip": GUIDANCE_TOOLTIP},
)
COMPILE_TOOLTIP = (
    "torch.compile the UNet and MoVQ: faster steps after a one-off compile of a minute or two per image size "
    "(kept on disk for later runs). Falls back to normal speed where compiling is unavailable."
)


def movq_samples(latent: object) -> torch.Tensor:
    """The samples of a MoVQ LATENT, checked."""
    return check_latent(latent, LATENT_CHANNELS, "Kandinsky 2.2 (MoVQ)", "DALL·E VQ Encode")


def stage_model(
    model: runtime.ManagedModule,
    estimate: Callable[..., Callable[[bool], int]],
    call: Callable[[torch.nn.Module], Callable] = lambda module: module,
) -> StageModel:
    """A ComfyUI-managed model for a stage: loading it asks ComfyUI to make room for `estimate(rows, *sides)`, the
    activation bytes of one forward (with or without fused attention), offloading other models as needed; the stage
    then calls `call(module)` (the module, or its compiled call)."""
    load = lambda *shape: call(model.load_for(estimate(*shape)))  # noqa: E731
    return StageModel(model.module.config, runtime.compute_device(), model.dtype, load)


def seed_input(tooltip: str) -> tuple:
    return ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True, "tooltip": tooltip})


def step_callback(progress: runtime.Progress, to_rgb: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Callable:
    """The sampler's callback(step index, total, x, x0): the progress bar, and with `to_rgb` (latents → [B, 3, h, w]
    in [-1, 1]) the partial images the images API's streams ask for, of the step's predicted clean x0 (the noisy x
    would show mostly noise early on)."""

    def callback(step: int, total: int, x: torch.Tensor, x0: torch.Tensor) -> None:
        progress.update(1)
        if to_rgb is not None:
            runtime.offer_preview(step + 1, total, lambda: to_rgb(x0))

    return callback


@dataclass
class PriorModel:
    """DALLE_PRIOR: the diffusion prior, and where to find the image tower for the unconditional embedding."""

    prior: runtime.ManagedModule
    source: Source
    dtype: torch.dtype
    _zero_embed: torch.Tensor | None = field(default=None, repr=False)

    def zero_image_embed(self) -> torch.Tensor:
        """[1, D] image embedding of an all-zero image (kandinsky22.loading.zero_image_embed), kept once read."""
        if self._zero_embed is None:

            def place(encoder: torch.nn.Module) -> torch.nn.Module:
                return runtime.ManagedModule(encoder).load()

            source = replace(self.source, progress=runtime.DownloadBar(FETCHES["zero_image_embed"]))
            self._zero_embed = zero_image_embed(source, self.dtype, runtime.cache_dir(), place)
            runtime.free_cache()
        return self._zero_embed


@dataclass
class TextEncoder:
    """DALLE_TEXT_ENCODER: CLIP tokenizer + text tower."""

    tokenizer: object
    encoder: runtime.ManagedModule


@dataclass
class ClipModel:
    """DALLE_CLIP: a whole CLIP model (both towers and the logit scale) with its tokenizer and preprocessing."""

    tokenizer: object
    processor: object
    model: runtime.ManagedModule

    def __repr__(self) -> str:  # ComfyUI puts node inputs into error reports: keep tensors out of them
        return f"ClipModel({self.model.dtype})"


@dataclass
class DepthModel:
    """DALLE_DEPTH_MODEL: a transformers depth-estimation model with its image processor (pre- and post-processing)."""

    processor: object
    model: runtime.ManagedModule

    def __repr__(self) -> str:  # ComfyUI puts node inputs into error reports: keep tensors out of them
        return f"DepthModel({self.model.dtype})"


@dataclass
class ImageEncoder:
    """DALLE_IMAGE_ENCODER: a CLIP image tower with its preprocessing: Kandinsky 2.2's ViT-bigG, or (`karlo`) the
    ViT-L/14 of Karlo's image-variations repo, whose embeddings only Karlo's decoder reads."""

    processor: object
    encoder: runtime.ManagedModule
    karlo: bool = False


@dataclass
class KarloPrior:
    """DALLE_PRIOR from Karlo's repo: the unCLIP prior over CLIP ViT-L/14 embeddings (no zero-image negative: Karlo's
    decoder guides with its own learned unconditional embedding)."""

    prior: runtime.ManagedModule


@dataclass
class KarloEmbeds:
    """DALLE_IMAGE_EMBEDS for Karlo's decoder: [B, D] CLIP ViT-L image embeddings, and the random stream where the
    prior left it (its generator's state; None from an image or a mix), which the decoder continues, as the
    reference's one generator runs through prior, decoder and super-resolution."""

    positive: torch.Tensor
    stream: torch.Tensor | None = None

    def __repr__(self) -> str:  # ComfyUI puts node inputs into error reports: keep tensors out of them
        return f"KarloEmbeds({' x '.join(map(str, self.positive.shape))})"


def continued(stream: torch.Tensor | None, seed: int) -> torch.Generator:
    """The generator a Karlo stage draws from: the previous stage's stream where one is connected, else the seed."""
    generator = torch.Generator()
    if stream is None:
        return generator.manual_seed(seed)
    generator.set_state(stream)
    return generator


def kandinsky_embeds(embeds: object, node: str) -> ImageEmbeds:
    """The embeddings a Kandinsky 2.2 node reads; Karlo's (768-wide ViT-L, without a negative) are refused by name."""
    if isinstance(embeds, KarloEmbeds):
        raise ValueError(
            f"These image embeddings come from Karlo (its prior or image encoder), which {node} cannot read: connect "
            "them to DALL·E Karlo Decoder Sample, or make Kandinsky 2.2 ones (Load DALL·E 2 Prior with "
            "kandinsky-community/kandinsky-2-2-prior)."
        )
    return embeds


@dataclass
class KarloDecoderModel:
    """DALLE_KARLO_DECODER: the 64 px decoder and its text projection, and where the empty prompt's embeddings come
    from (the repo's own text tower, read once and let go) for decoding without text, as image variations do."""

    decoder: runtime.ManagedModule
    text_proj: runtime.ManagedModule
    source: Source
    dtype: torch.dtype
    _empty: PromptEmbeds | None = field(default=None, repr=False)

    def empty_prompt(self) -> PromptEmbeds:
        if self._empty is None:
            source = replace(self.source, progress=runtime.DownloadBar(KARLO_FETCHES["text_encoder"]))
            tokenizer, encoder = karlo_loading.load_text_encoder(source, self.dtype)
            self._empty = encode_empty(tokenizer, runtime.ManagedModule(encoder).load, runtime.offload_device())
            runtime.free_cache()
        return self._empty


@dataclass
class KarloSuperRes:
    """DALLE_KARLO_SUPER_RES: the UNet of every super-resolution step but the last, and the last step's."""

    first: runtime.ManagedModule
    last: runtime.ManagedModule


def compile_call(fn: Callable, what: str, module: torch.nn.Module) -> Compiled:
    """`fn` (a call of `module`) compiled; should compiling fail, `module` goes back to the eager layout."""
    compiled.use_cache_dir(runtime.cache_dir() / "torch_compile")
    return Compiled(
        fn, what, runtime.is_out_of_memory, on_fallback=lambda: module.to(memory_format=torch.contiguous_format)
    )


@dataclass
class DecoderModel:
    """DALLE_DECODER: the latent diffusion UNet conditioned on image embeddings; with `compile`, sampling calls
    it through torch.compile (compiled on first use for each image size, then reused). `previews`: its MoVQ's
    latent → RGB map (inside ComfyUI), for the partial images of the images API's streams."""

    unet: runtime.ManagedModule
    compile: bool = False
    previews: RGBFactors | None = None
    _compiled: Compiled | None = field(default=None, repr=False)

    def unet_call(self, unet: torch.nn.Module) -> Callable:
        """The call sampling makes of `unet` (the loaded module): the module, or its compiled call."""
        if not self.compile:
            return unet
        if self._compiled is None:
            self._compiled = compile_call(unet, "DALL·E Decoder Sample", unet)
        return self._compiled


@dataclass
class MoVQModel:
    """DALLE_VQ_VAE: MoVQ, between latents and pixels; with `compile`, decoding goes through torch.compile."""

    movq: runtime.ManagedModule
    compile: bool = False
    _compiled: Compiled | None = field(default=None, repr=False)

    def decode_call(self, movq: MoVQ) -> Callable[[torch.Tensor], torch.Tensor]:
        """The whole-image decode of `movq` (the loaded module): movq.decode, or its compiled call."""
        if not self.compile:
            return movq.decode
        if self._compiled is None:
            self._compiled = compile_call(movq.decode, "DALL·E VQ Decode", movq)
        return self._compiled


@dataclass
class BartModel:
    """DALLE_BART: the tokenizer and the text encoder + image-token decoder of one variant."""

    tokenizer: BartTokenizer
    bart: runtime.ManagedModule
    variant: str

    def __repr__(self) -> str:  # ComfyUI puts node inputs into error reports: keep tensors out of them
        return f"BartModel({self.variant}, {self.bart.dtype})"


@dataclass
class VQGANModel:
    """DALLE_VQGAN: the VQGAN detokenizer, codes → pixels."""

    vqgan: runtime.ManagedModule

    def __repr__(self) -> str:
        return f"VQGANModel({self.vqgan.dtype})"
