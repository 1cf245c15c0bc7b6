"""Loader nodes for Kandinsky 2.2, and for Karlo's prior and image encoder, which share their sockets: Hub repo id
or local folder → models kept under ComfyUI's memory manager."""

from __future__ import annotations

import logging

import torch

from ..engine import compiled
from ..engine.hub import Source, source_from_input
from ..pipelines import previews
from ..pipelines.kandinsky22 import loading
from ..pipelines.karlo import loading as karlo_loading
from . import runtime
from .conditioning import image_embeds_conditioning
from .sockets import (
    COMPILE_TOOLTIP,
    DTYPE_TOOLTIP,
    KANDINSKY_CATEGORY,
    REVISION_TOOLTIP,
    DecoderModel,
    ImageEncoder,
    KarloPrior,
    MoVQModel,
    PriorModel,
    TextEncoder,
)


def speed_layout(module: torch.nn.Module, compile: bool) -> None:
    """Switch a convolutional net to the memory layout it runs fastest in (see engine/compiled.py), once."""
    layout = compiled.memory_format(runtime.compute_device(), compile)
    if layout != torch.contiguous_format:
        module.to(memory_format=layout)


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


def source_from_inputs(repo_id: str, revision: str, files: int | None = None) -> Source:
    """The checkpoint a loader's inputs name; its downloads show on the node's progress bar as "file k of `files`"."""
    return source_from_input(repo_id, revision, runtime.model_store(), runtime.DownloadBar(files))


class HubLoader:
    """Shared body of the loader nodes: repo id, revision and dtype in; the models of `build` out, reused while
    those inputs stay the same."""

    CATEGORY = KANDINSKY_CATEGORY
    FUNCTION = "load"
    DEFAULT_REPO = ""
    CONTENTS = ""  # what the repo must hold, for the tooltip
    FILES = 0  # files the loader asks for, for "file k of n" on the progress bar

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
        source = source_from_inputs(repo_id, revision, self.FILES)
        torch_dtype = runtime.resolve_dtype(dtype)
        key = (source, torch_dtype, *options.values())
        return reuse(type(self).__name__, key, lambda: self.build(source, torch_dtype, **options))

    def build(self, source: Source, dtype: torch.dtype, **options) -> tuple:
        raise NotImplementedError


class DalleLoadPrior(HubLoader):
    DESCRIPTION = (
        "Loads a diffusion prior and its CLIP text encoder (DALL·E 2's first stage): Kandinsky 2.2's (CLIP ViT-bigG), "
        f"or Karlo's ({karlo_loading.REPO}: CLIP ViT-L/14, for DALL·E Karlo Decoder Sample)."
    )
    RETURN_TYPES = ("DALLE_PRIOR", "DALLE_TEXT_ENCODER")
    RETURN_NAMES = ("prior", "text_encoder")
    DEFAULT_REPO = loading.PRIOR_REPO
    CONTENTS = f"prior (with prior/, text_encoder/, tokenizer/, image_encoder/), or {karlo_loading.REPO}"
    FILES = 1 + loading.FETCHES["prior"] + loading.FETCHES["text_encoder"]  # 1: model_index.json, for the family

    def build(self, source: Source, dtype: torch.dtype) -> tuple[PriorModel | KarloPrior, TextEncoder]:
        kind = karlo_loading.karlo_kind(source)
        if kind == karlo_loading.VARIATIONS:
            raise ValueError(
                f"{source.describe()} is Karlo's image-variations repo, which has no prior: load {karlo_loading.REPO} "
                "here, and give the variations repo to Load DALL·E 2 Image Encoder and Load DALL·E 2 Decoder (Karlo)."
            )
        if kind == karlo_loading.TEXT2IMAGE:
            tokenizer, text_encoder = karlo_loading.load_text_encoder(source, dtype)
            prior = KarloPrior(runtime.ManagedModule(karlo_loading.load_prior(source, dtype)))
            return prior, TextEncoder(tokenizer, runtime.ManagedModule(text_encoder))
        prior = loading.load_prior(source, dtype)
        tokenizer, text_encoder = loading.load_text_encoder(source, dtype)
        return (
            PriorModel(runtime.ManagedModule(prior), source, dtype),
            TextEncoder(tokenizer, runtime.ManagedModule(text_encoder)),
        )


class DalleLoadImageEncoder(HubLoader):
    DESCRIPTION = (
        "Loads a CLIP image encoder that embeds images for variations and for mixing images with prompts: the "
        f"ViT-bigG of the Kandinsky 2.2 prior repo, or the ViT-L/14 of {karlo_loading.VARIATIONS_REPO} (for Karlo)."
    )
    RETURN_TYPES = ("DALLE_IMAGE_ENCODER",)
    RETURN_NAMES = ("image_encoder",)
    DEFAULT_REPO = loading.PRIOR_REPO
    CONTENTS = f"prior (its image_encoder/ and image_processor/), or {karlo_loading.VARIATIONS_REPO}"
    FILES = 1 + loading.FETCHES["image_encoder"]  # 1: model_index.json, for the family

    def build(self, source: Source, dtype: torch.dtype) -> tuple[ImageEncoder]:
        if karlo_loading.karlo_kind(source) is not None:
            processor, encoder = karlo_loading.load_image_encoder(source, dtype)
            return (ImageEncoder(processor, runtime.ManagedModule(encoder), karlo=True),)
        processor, encoder = loading.load_image_encoder(source, dtype)
        return (ImageEncoder(processor, runtime.ManagedModule(encoder)),)


class DalleLoadDecoder(HubLoader):
    DESCRIPTION = (
        "Loads the Kandinsky 2.2 latent decoder UNet and its MoVQ image autoencoder (DALL·E 2's second stage): the "
        "text-to-image decoder, the inpainting one (kandinsky-community/kandinsky-2-2-decoder-inpaint: give Decoder "
        "Sample a mask) or the depth ControlNet (kandinsky-community/kandinsky-2-2-controlnet-depth: give it a hint). "
        "MODEL and VAE are the same weights as ComfyUI types, for KSampler, VAE Decode and the other core nodes."
    )
    RETURN_TYPES = ("DALLE_DECODER", "DALLE_VQ_VAE", "MODEL", "VAE")  # appended outputs keep old links' slots
    RETURN_NAMES = ("decoder", "vq_vae", "model", "vae")
    OUTPUT_TOOLTIPS = (
        "For DALL·E Decoder Sample.",
        "For DALL·E VQ Decode / Encode.",
        "The same UNet for KSampler and the other core sampling nodes (condition it with DALL·E Image Embeds To "
        "Conditioning or unCLIPConditioning). Only inside ComfyUI.",
        "The same MoVQ for VAE Decode / Encode and the core inpainting nodes. Only inside ComfyUI.",
    )
    DEFAULT_REPO = loading.DECODER_REPO
    CONTENTS = "decoder (with unet/, movq/, scheduler/)"
    FILES = loading.FETCHES["decoder_kind"] + loading.FETCHES["unet"] + loading.FETCHES["movq"]

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        inputs = super().INPUT_TYPES()
        inputs["optional"] = {"compile": ("BOOLEAN", {"default": False, "tooltip": COMPILE_TOOLTIP})}
        return inputs

    def load(self, repo_id: str, revision: str, dtype: str, compile: bool = False) -> tuple:
        return super().load(repo_id, revision, dtype, compile=compile)

    def build(self, source: Source, dtype: torch.dtype, compile: bool = False) -> tuple:
        """Outside ComfyUI (the CLI, the Python API, tests) MODEL and VAE are None: no ComfyUI node could take them."""
        if karlo_loading.karlo_kind(source) is not None:
            raise ValueError(
                f"{source.describe()} is Karlo, not a Kandinsky 2.2 decoder: load it with Load DALL·E 2 Decoder "
                "(Karlo), which makes DALL·E Karlo Decoder Sample's and Karlo Super-Resolution's models."
            )
        unet = loading.load_unet(source, dtype)
        movq = loading.load_movq(source, dtype)
        speed_layout(unet, compile)
        speed_layout(movq, compile)
        model = vae = factors = None
        if runtime.IN_COMFYUI:
            from . import comfy_native

            factors = previews.cached_rgb_factors(movq, runtime.cache_dir())
            model = comfy_native.model_patcher(unet, factors)
            vae = comfy_native.vae(movq)
        return (
            DecoderModel(runtime.ManagedModule(unet, model), compile, factors),
            MoVQModel(runtime.ManagedModule(movq, vae and vae.patcher), compile),
            model,
            vae,
        )


class DalleLoadCLIPVision(HubLoader):
    DESCRIPTION = (
        "Loads the CLIP ViT-bigG image tower of the Kandinsky 2.2 prior repo as ComfyUI's CLIP_VISION, for core "
        "CLIP Vision Encode → unCLIPConditioning → KSampler with the decoder's MODEL. zero_image is the reference's "
        "negative (the embedding of an all-zero image), and a base for unCLIPConditioning."
    )
    RETURN_TYPES = ("CLIP_VISION", "CONDITIONING")
    RETURN_NAMES = ("clip_vision", "zero_image")
    DEFAULT_REPO = loading.PRIOR_REPO
    CONTENTS = "prior (its image_encoder/)"
    FILES = loading.FETCHES["zero_image_embed"]

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        inputs = super().INPUT_TYPES()
        del inputs["required"]["dtype"]  # ComfyUI picks the dtype of its CLIP vision models itself
        return inputs

    def load(self, repo_id: str, revision: str) -> tuple:
        return super().load(repo_id, revision, "auto")

    def build(self, source: Source, dtype: torch.dtype) -> tuple:
        if not runtime.IN_COMFYUI:
            raise RuntimeError("CLIP_VISION is a ComfyUI type: this node runs only inside ComfyUI.")
        from . import comfy_native

        model = comfy_native.clip_vision(loading.image_encoder_weights(source))
        return model, image_embeds_conditioning(comfy_native.zero_image_embed(model))
