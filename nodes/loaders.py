"""Loader nodes for Kandinsky 2.2: Hub repo id or local folder → models kept under ComfyUI's memory manager."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..engine import compiled
from ..engine.compiled import Compiled
from ..engine.hub import TRANSFORMERS_WEIGHTS, Source, fetch_config, fetch_file, fetch_weights
from ..models import clip
from ..models.movq import MoVQ
from ..pipelines import kandinsky22
from . import runtime

CATEGORY = "DALL·E/Kandinsky 2.2 (DALL·E 2)"
DTYPE_TOOLTIP = "Weights and compute precision. auto: bf16 on GPUs that support it, else fp16; fp32 on the CPU."
REVISION_TOOLTIP = "Branch, tag or commit of the Hub repo (ignored for a local folder)."
COMPILE_TOOLTIP = (
    "torch.compile the UNet and MoVQ: faster steps after a one-off compile of a minute or two per image size "
    "(kept on disk for later runs). Falls back to normal speed where compiling is unavailable."
)
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


@dataclass
class PriorModel:
    """DALLE_PRIOR: the diffusion prior, and where to find the image tower for the unconditional embedding."""

    prior: runtime.ManagedModule
    source: Source
    dtype: torch.dtype
    _zero_embed: torch.Tensor | None = field(default=None, repr=False)

    def zero_image_embed(self) -> torch.Tensor:
        """[1, D] image embedding of an all-zero image, computed once per checkpoint and dtype, then read from disk.

        It stands in for "no negative prompt" in the decoder; caching it means text-to-image never needs the
        3.7 GB image encoder in memory again after the first run.
        """
        if self._zero_embed is None:
            self._zero_embed = _cached_zero_embed(self.source, self.dtype)
        return self._zero_embed


@dataclass
class TextEncoder:
    """DALLE_TEXT_ENCODER: CLIP tokenizer + text tower."""

    tokenizer: object
    encoder: runtime.ManagedModule


@dataclass
class ImageEncoder:
    """DALLE_IMAGE_ENCODER: CLIP ViT-bigG image tower with its preprocessing."""

    processor: object
    encoder: runtime.ManagedModule


def compile_call(fn: Callable, what: str, module: torch.nn.Module) -> Compiled:
    """`fn` (a call of `module`) compiled; should compiling fail, `module` goes back to the eager layout."""
    compiled.use_cache_dir(runtime.cache_dir() / "torch_compile")
    return Compiled(
        fn, what, runtime.is_out_of_memory, on_fallback=lambda: module.to(memory_format=torch.contiguous_format)
    )


def speed_layout(module: torch.nn.Module, compile: bool) -> None:
    """Switch a convolutional net to the memory layout it runs fastest in (see engine/compiled.py), once."""
    layout = compiled.memory_format(runtime.compute_device(), compile)
    if layout != torch.contiguous_format:
        module.to(memory_format=layout)


@dataclass
class DecoderModel:
    """DALLE_DECODER: the latent diffusion UNet conditioned on image embeddings; with `compile`, sampling calls
    it through torch.compile (compiled on first use for each image size, then reused)."""

    unet: runtime.ManagedModule
    compile: bool = False
    _forward: Compiled | None = field(default=None, repr=False)

    def forward(self, unet: torch.nn.Module) -> Callable:
        """The call sampling makes of `unet` (the loaded module)."""
        if not self.compile:
            return unet
        if self._forward is None:
            self._forward = compile_call(unet, "DALL·E Decoder Sample", unet)
        return self._forward


@dataclass
class VQModel:
    """DALLE_VQ_VAE: MoVQ, between latents and pixels; with `compile`, decoding goes through torch.compile."""

    movq: runtime.ManagedModule
    compile: bool = False
    _decode: Compiled | None = field(default=None, repr=False)

    def decode_fn(self, movq: MoVQ) -> Callable[[torch.Tensor], torch.Tensor]:
        """The whole-image decode of `movq` (the loaded module)."""
        if not self.compile:
            return movq.decode
        if self._decode is None:
            self._decode = compile_call(movq.decode, "DALL·E VQ Decode", movq)
        return self._decode


def _cache_key(weights: Path, dtype: torch.dtype) -> str:
    """Names the weight file's content: the HF cache stores blobs under their hash, and a file replaced in a
    folder changes size or mtime, so new weights never meet an old embedding."""
    stat = weights.stat()
    identity = f"{weights.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{dtype}"
    return hashlib.sha256(identity.encode()).hexdigest()[:24]


def _cached_zero_embed(source: Source, dtype: torch.dtype) -> torch.Tensor:
    fetch_config(source, "image_encoder", expect="CLIPVisionModelWithProjection")
    weights = fetch_weights(source, "image_encoder", TRANSFORMERS_WEIGHTS)  # on disk after the first time
    path = runtime.cache_dir() / "zero_image_embeds" / f"{_cache_key(weights, dtype)}.safetensors"
    if path.is_file():
        return load_file(path)["embed"]
    managed = runtime.ManagedModule(clip.load_image_encoder(weights.parent, dtype))
    with torch.inference_mode():
        embed = clip.zero_image_embed(managed.load()).float().cpu()
    del managed
    runtime.free_cache()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"embed": embed.contiguous()}, tmp)
    tmp.replace(path)  # atomic: a crash never leaves a half-written cache entry
    return embed


_loaded: dict[str, tuple[tuple, object]] = {}


def reuse(kind: str, key: tuple, build):
    """Keep the last model of each kind outside ComfyUI: loading the same repo, revision and dtype again costs
    nothing. Inside ComfyUI its own cache of node outputs does this, and holding models here as well would keep
    them alive after "Free model and node cache"."""
    if kind in _loaded and _loaded[kind][0] == key:
        return _loaded[kind][1]
    _loaded.pop(kind, None)  # drop the old one before building the new, to not hold both
    logging.info("%s: loading %s", kind, ", ".join(map(str, key)))
    value = build()
    if not runtime.IN_COMFYUI:
        _loaded[kind] = (key, value)
    return value


def source_from_inputs(repo_id: str, revision: str) -> Source:
    repo_id = repo_id.strip()
    if not repo_id:
        raise ValueError(
            "repo_id is empty: give a Hub repo id (e.g. kandinsky-community/kandinsky-2-2-prior) or a local folder."
        )
    return Source(repo_id, revision.strip() or None, runtime.model_store())


class HubLoader:
    """Shared body of the loader nodes: repo id, revision and dtype in; the models of `build` out, reused while
    those inputs stay the same."""

    CATEGORY = CATEGORY
    FUNCTION = "load"
    DEFAULT_REPO = ""
    CONTENTS = ""  # what the repo must hold, for the tooltip

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        tooltip = f"Hub repo id of the {cls.CONTENTS}, or a local folder in the same layout."
        return {
            "required": {
                "repo_id": ("STRING", {"default": cls.DEFAULT_REPO, "tooltip": tooltip}),
                "revision": ("STRING", {"default": "main", "tooltip": REVISION_TOOLTIP}),
                "dtype": (list(runtime.DTYPES), {"default": "auto", "tooltip": DTYPE_TOOLTIP}),
            }
        }

    def load(self, repo_id: str, revision: str, dtype: str, **options) -> tuple:
        source = source_from_inputs(repo_id, revision)
        torch_dtype = runtime.resolve_dtype(dtype)
        key = (source, torch_dtype, *options.values())
        return reuse(type(self).__name__, key, lambda: self.build(source, torch_dtype, **options))

    def build(self, source: Source, dtype: torch.dtype, **options) -> tuple:
        raise NotImplementedError


class DalleLoadPrior(HubLoader):
    DESCRIPTION = "Loads the Kandinsky 2.2 diffusion prior and its CLIP ViT-bigG text encoder (DALL·E 2's first stage)."
    RETURN_TYPES = ("DALLE_PRIOR", "DALLE_TEXT_ENCODER")
    RETURN_NAMES = ("prior", "text_encoder")
    DEFAULT_REPO = kandinsky22.PRIOR_REPO
    CONTENTS = "prior (with prior/, text_encoder/, tokenizer/, image_encoder/)"

    def build(self, source: Source, dtype: torch.dtype) -> tuple[PriorModel, TextEncoder]:
        prior = kandinsky22.load_prior(source, dtype)
        fetch_config(source, "text_encoder", expect="CLIPTextModelWithProjection")
        text_folder = fetch_weights(source, "text_encoder", TRANSFORMERS_WEIGHTS).parent
        for name in TOKENIZER_FILES:  # the tokenizer reads its whole folder: fetch every file it needs first
            tokenizer_file = fetch_file(source, "tokenizer", name)
        tokenizer = clip.load_tokenizer(tokenizer_file.parent)
        text_encoder = clip.load_text_encoder(text_folder, dtype)
        return (
            PriorModel(runtime.ManagedModule(prior), source, dtype),
            TextEncoder(tokenizer, runtime.ManagedModule(text_encoder)),
        )


class DalleLoadImageEncoder(HubLoader):
    DESCRIPTION = (
        "Loads the CLIP ViT-bigG image encoder of the Kandinsky 2.2 prior repo: embeds images for "
        "variations and for mixing images with prompts."
    )
    RETURN_TYPES = ("DALLE_IMAGE_ENCODER",)
    RETURN_NAMES = ("image_encoder",)
    DEFAULT_REPO = kandinsky22.PRIOR_REPO
    CONTENTS = "prior (its image_encoder/ and image_processor/)"

    def build(self, source: Source, dtype: torch.dtype) -> tuple[ImageEncoder]:
        fetch_config(source, "image_encoder", expect="CLIPVisionModelWithProjection")
        folder = fetch_weights(source, "image_encoder", TRANSFORMERS_WEIGHTS).parent
        processor = clip.load_image_processor(fetch_file(source, "image_processor", "preprocessor_config.json").parent)
        return (ImageEncoder(processor, runtime.ManagedModule(clip.load_image_encoder(folder, dtype))),)


class DalleLoadDecoder(HubLoader):
    DESCRIPTION = (
        "Loads the Kandinsky 2.2 latent decoder UNet and its MoVQ image autoencoder (DALL·E 2's second stage)."
    )
    RETURN_TYPES = ("DALLE_DECODER", "DALLE_VQ_VAE")
    RETURN_NAMES = ("decoder", "vq_vae")
    DEFAULT_REPO = kandinsky22.DECODER_REPO
    CONTENTS = "decoder (with unet/, movq/, scheduler/)"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        inputs = super().INPUT_TYPES()
        inputs["optional"] = {"compile": ("BOOLEAN", {"default": False, "tooltip": COMPILE_TOOLTIP})}
        return inputs

    def load(self, repo_id: str, revision: str, dtype: str, compile: bool = False) -> tuple:
        return super().load(repo_id, revision, dtype, compile=compile)

    def build(self, source: Source, dtype: torch.dtype, compile: bool = False) -> tuple[DecoderModel, VQModel]:
        unet = kandinsky22.load_unet(source, dtype)
        movq = kandinsky22.load_movq(source, dtype)
        speed_layout(unet, compile)
        speed_layout(movq, compile)
        return (
            DecoderModel(runtime.ManagedModule(unet), compile),
            VQModel(runtime.ManagedModule(movq), compile),
        )
