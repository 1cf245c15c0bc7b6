"""DALL·E Mini / Mega, the open DALL·E 1: load kuprel/min-dalle, sample image tokens from text, decode them."""

from __future__ import annotations

import torch

from ..models.dalle_bart import IMAGE_CODES, IMAGE_TOKENS
from ..pipelines.dalle_mini import loading, stages
from . import runtime
from .loaders import reuse, source_from_inputs
from .sockets import MINI_CATEGORY, REVISION_TOOLTIP, BartModel, VQGANModel, seed_input


def _load(source, variant: str, dtypes: tuple[torch.dtype, torch.dtype]) -> tuple[BartModel, VQGANModel]:
    tokenizer, bart, vqgan = loading.load_variant(source, variant, dtypes)
    return BartModel(tokenizer, runtime.ManagedModule(bart), variant), VQGANModel(runtime.ManagedModule(vqgan))


class DalleLoadMini:
    DESCRIPTION = (
        "Loads DALL·E Mega or Mini (kuprel/min-dalle): the BART text encoder and image-token decoder, and the "
        "VQGAN that turns image tokens into pixels. Downloads only the chosen variant's files."
    )
    CATEGORY = MINI_CATEGORY
    RETURN_TYPES = ("DALLE_BART", "DALLE_VQGAN")
    RETURN_NAMES = ("bart", "vqgan")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        repo_tooltip = "Hub repo id of min-dalle's checkpoints, or a local folder holding the same files."
        variant_tooltip = "mega: 2.6B parameters, better images. mini: 0.4B parameters, faster and smaller."
        return {
            "required": {
                "repo_id": ("STRING", {"default": loading.REPO, "tooltip": repo_tooltip}),
                "revision": ("STRING", {"default": "main", "tooltip": REVISION_TOOLTIP}),
                "variant": (list(loading.FILES), {"default": "mega", "tooltip": variant_tooltip}),
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
        loading.check_variant(variant)
        source = source_from_inputs(repo_id, revision, loading.FETCHES)
        dtypes = loading.dtypes(dtype, runtime.compute_device(), runtime.fp16_ok)
        return reuse(type(self).__name__, (source, variant, dtypes), lambda: _load(source, variant, dtypes))


class DalleTokenSample:
    DESCRIPTION = (
        "Samples DALL·E Mini/Mega image tokens for a prompt, one of 256 tokens (16 × 16) per step, guided by "
        "'supercondition'. With the same seed, on the CPU, the tokens are min-dalle's."
    )
    CATEGORY = MINI_CATEGORY
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
                    {
                        "default": 4,
                        "min": 1,
                        "max": stages.MAX_BATCH,
                        "tooltip": "Images to sample for the prompt.",
                    },
                ),
                "top_k": (
                    "INT",
                    {
                        "default": 256,
                        "min": 1,
                        "max": IMAGE_CODES,
                        "tooltip": "Each token is drawn from the k likeliest; fewer: safer, plainer images.",
                    },
                ),
                "temperature": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": stages.MIN_TEMPERATURE,
                        "max": stages.MAX_TEMPERATURE,
                        "step": 0.05,
                        "tooltip": "Above 1: more varied tokens; below 1: more predictable ones.",
                    },
                ),
                "supercondition": (
                    "FLOAT",
                    {
                        "default": 16.0,
                        "min": 0.0,
                        "max": stages.MAX_SUPERCONDITION,
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
        settings = stages.TokenSettings(batch_size, top_k, temperature, supercondition)
        tokens = stages.prompt_tokens(bart.tokenizer, text)
        # ComfyUI makes room for the key/value cache of the batch beside the weights
        model = bart.bart.load(memory_required=bart.bart.module.decoder.cache_bytes(batch_size))
        progress = runtime.Progress(IMAGE_TOKENS, f"DALL·E {bart.variant}")
        try:
            codes = stages.sample_tokens(model, tokens, seed, settings, callback=lambda step: progress.update(1))
        finally:
            progress.close()
        return (codes.cpu(),)


class DalleVQGANDecode:
    DESCRIPTION = "Decodes DALL·E Mini/Mega image tokens to 256 × 256 images with the VQGAN."
    CATEGORY = MINI_CATEGORY
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
        out = runtime.output_device()
        return (stages.vqgan_decode(vqgan.vqgan.load, tokens, out, runtime.check_interrupt, seamless),)
