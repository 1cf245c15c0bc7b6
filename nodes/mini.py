"""DALL·E Mini / Mega, the open DALL·E 1: load kuprel/min-dalle, sample image tokens from text, decode them."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ..engine import cuda_graph
from ..engine.hub import Source
from ..models import dalle_bart
from ..models.bart_tokenizer import BartTokenizer
from ..models.vqgan import load_vqgan, seamless_grid
from . import runtime
from .loaders import REVISION_TOOLTIP, reuse, source_from_inputs
from .prior import seed_input

CATEGORY = "DALL·E/DALL·E Mini (DALL·E 1)"
MAX_BATCH = 64  # the Mega key/value cache for 64 images is 6.4 GB in fp16
DECODE_BATCH = 4  # images per VQGAN pass: bounds its activation memory (~0.1 GB an image in fp32)


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


def _dtypes(choice: str) -> tuple[torch.dtype, torch.dtype]:
    """(BART, VQGAN) dtypes for the loader's dtype input. auto: on GPUs BART in fp16, the precision Mega's weights
    ship in (bf16 would drop three bits of each), unless the device (or ComfyUI's --force-fp32) rules fp16 out,
    and the VQGAN in fp32 as min-dalle runs it (its file is fp32 and it costs a few hundredths of a second); fp32
    on the CPU."""
    if choice != "auto":
        dtype = runtime.resolve_dtype(choice)
        return dtype, dtype
    device = runtime.compute_device()
    if device.type == "cpu":
        return torch.float32, torch.float32
    return (torch.float16 if runtime.fp16_ok(device) else torch.float32), torch.float32


def _load(source: Source, variant: str, dtypes: tuple[torch.dtype, torch.dtype]) -> tuple[BartModel, VQGANModel]:
    tokenizer = dalle_bart.load_tokenizer(source, variant)
    bart = runtime.ManagedModule(dalle_bart.load_bart(source, variant, dtypes[0]))
    return BartModel(tokenizer, bart, variant), VQGANModel(runtime.ManagedModule(load_vqgan(source, dtypes[1])))


class DalleLoadMini:
    DESCRIPTION = (
        "Loads DALL·E Mega or Mini (kuprel/min-dalle): the BART text encoder and image-token decoder, and the "
        "VQGAN that turns image tokens into pixels. Downloads only the chosen variant's files."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("DALLE_BART", "DALLE_VQGAN")
    RETURN_NAMES = ("bart", "vqgan")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        repo_tooltip = "Hub repo id of min-dalle's checkpoints, or a local folder holding the same files."
        variant_tooltip = "mega: 2.6B parameters, better images. mini: 0.4B parameters, faster and smaller."
        return {
            "required": {
                "repo_id": ("STRING", {"default": dalle_bart.REPO, "tooltip": repo_tooltip}),
                "revision": ("STRING", {"default": "main", "tooltip": REVISION_TOOLTIP}),
                "variant": (list(dalle_bart.FILES), {"default": "mega", "tooltip": variant_tooltip}),
                "dtype": (
                    list(runtime.DTYPES),
                    {
                        "default": "auto",
                        "tooltip": "auto: on GPUs fp16 for BART (Mega's weights are fp16) and fp32 for the VQGAN; "
                        "fp32 on the CPU. Other choices apply to both.",
                    },
                ),
            }
        }

    def load(self, repo_id: str, revision: str, variant: str, dtype: str) -> tuple[BartModel, VQGANModel]:
        dalle_bart.check_variant(variant)
        source = source_from_inputs(repo_id, revision)
        dtypes = _dtypes(dtype)
        return reuse(type(self).__name__, (source, variant, dtypes), lambda: _load(source, variant, dtypes))


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high} (got {value}).")


class DalleTokenSample:
    DESCRIPTION = (
        "Samples DALL·E Mini/Mega image tokens for a prompt, one of 256 tokens (16 × 16) per step, guided by "
        "'supercondition'. With the same seed, on the CPU, the tokens are min-dalle's."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("DALLE_IMAGE_TOKENS",)
    RETURN_NAMES = ("tokens",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        text_tooltip = (
            "The prompt, in English. Emoji become their names; other non-ASCII characters (accents, other "
            "scripts) are dropped; at most 64 tokens are read."
        )
        return {
            "required": {
                "bart": ("DALLE_BART", {"tooltip": "From Load DALL·E Mini."}),
                "text": ("STRING", {"multiline": True, "dynamicPrompts": True, "tooltip": text_tooltip}),
                "seed": seed_input(
                    "Same seed, same images on the same kind of device: on the CPU min-dalle's own (seeds above 0)."
                ),
                "batch_size": (
                    "INT",
                    {"default": 4, "min": 1, "max": MAX_BATCH, "tooltip": "Images to sample for the prompt."},
                ),
                "top_k": (
                    "INT",
                    {
                        "default": 256,
                        "min": 1,
                        "max": dalle_bart.IMAGE_CODES,
                        "tooltip": "Each token is drawn from the k likeliest; fewer: safer, plainer images.",
                    },
                ),
                "temperature": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": 0.01,
                        "max": 10.0,
                        "step": 0.05,
                        "tooltip": "Above 1: more varied tokens; below 1: more predictable ones.",
                    },
                ),
                "supercondition": (
                    "FLOAT",
                    {
                        "default": 16.0,
                        "min": 0.0,
                        "max": 100.0,
                        "step": 0.5,
                        "tooltip": "Guidance: how much the prompt outweighs no prompt (1: plain sampling).",
                    },
                ),
            }
        }

    def sample(
        self,
        bart: BartModel,
        text: str,
        seed: int,
        batch_size: int,
        top_k: int,
        temperature: float,
        supercondition: float,
    ) -> tuple[torch.Tensor]:
        _check_range("batch_size", batch_size, 1, MAX_BATCH)
        _check_range("top_k", top_k, 1, dalle_bart.IMAGE_CODES)
        if temperature <= 0:
            raise ValueError(f"temperature must be above 0 (got {temperature}).")
        if not text.strip():
            raise ValueError("The prompt is empty: write what the images should show.")
        ids = bart.tokenizer.encode(text)
        if len(ids) <= 2:  # only <s> and </s>
            raise ValueError(
                "The prompt has no words DALL·E Mini can read: it keeps only ASCII letters, digits and punctuation "
                "(emoji become their names). Write it in English."
            )
        model = bart.bart.load(memory_required=bart.bart.module.decoder.cache_bytes(batch_size))
        progress = runtime.Progress(dalle_bart.IMAGE_TOKENS, f"DALL·E {bart.variant}")
        with torch.inference_mode(), contextlib.closing(progress):
            tokens = dalle_bart.sample_image_tokens(
                model,
                dalle_bart.text_tokens(ids),
                batch_size,
                # the compute device's generator (see sampling_generator); min-dalle seeds only above 0, here 0 is
                # a seed like any other
                dalle_bart.sampling_generator(seed, bart.bart.device()),
                top_k,
                temperature,
                supercondition,
                callback=lambda step: progress.update(1),
                cuda_graph=cuda_graph.wanted(),
            )
        return (tokens.cpu(),)


class DalleVQGANDecode:
    DESCRIPTION = "Decodes DALL·E Mini/Mega image tokens to 256 × 256 images with the VQGAN."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        seamless_tooltip = (
            "Decode a square batch (4, 9, 16 … images) as one big picture whose tiles blend into each other."
        )
        return {
            "required": {
                "vqgan": ("DALLE_VQGAN", {"tooltip": "From Load DALL·E Mini."}),
                "tokens": ("DALLE_IMAGE_TOKENS", {"tooltip": "From DALL·E Mini Token Sample."}),
            },
            "optional": {
                "seamless": ("BOOLEAN", {"default": False, "tooltip": seamless_tooltip}),
            },
        }

    def decode(self, vqgan: VQGANModel, tokens: torch.Tensor, seamless: bool = False) -> tuple[torch.Tensor]:
        if tokens.ndim != 3 or tokens.dtype != torch.long:
            raise ValueError(f"Expected image tokens [B, 16, 16] of int64, got {tuple(tokens.shape)} {tokens.dtype}.")
        if seamless:
            tokens = seamless_grid(tokens)
        model = vqgan.vqgan.load()
        device = next(model.parameters()).device
        images = []
        with torch.inference_mode():
            for chunk in tokens.split(DECODE_BATCH):
                runtime.check_interrupt()
                pixels = model(chunk.to(device)).float()
                images.append(pixels.permute(0, 2, 3, 1).to(runtime.output_device()))
        return (torch.cat(images),)
