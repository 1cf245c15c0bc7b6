"""Prior sampling: text embeddings → CLIP image embeddings (DALL·E 2's first stage)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..engine import cuda_graph, memory
from ..pipelines import kandinsky22, kandinsky22_memory
from . import runtime
from .loaders import CATEGORY, PriorModel
from .text import PromptEmbeds

MAX_SEED = 0xFFFFFFFFFFFFFFFF
GUIDANCE_TOOLTIP = "Classifier-free guidance; 1 or less turns it off."
GUIDANCE_INPUT = ("FLOAT", {"default": 4.0, "min": 0.0, "max": 100.0, "step": 0.1, "tooltip": GUIDANCE_TOOLTIP})


def seed_input(tooltip: str) -> tuple:
    return ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True, "tooltip": tooltip})


@dataclass
class ImageEmbeds:
    """DALLE_IMAGE_EMBEDS: [B, D] CLIP image embeddings and the [B, D] negative ones the decoder guides away from."""

    positive: torch.Tensor
    negative: torch.Tensor

    def __repr__(self) -> str:  # ComfyUI puts node inputs into error reports: keep tensors out of them
        return f"ImageEmbeds({' x '.join(map(str, self.positive.shape))}, {self.positive.dtype})"


def step_callback(progress: runtime.Progress):
    return lambda step, total, x: progress.update(1)


class DallePriorSample:
    """On a CUDA device each prior step is replayed as a CUDA graph (kandinsky22.prior_sample). Setting the
    environment variable DALLE_NODES_CUDA_GRAPHS=0 before sampling launches the steps kernel by kernel instead:
    the same embeddings, slower; a way to rule graphs out when something goes wrong on a GPU."""

    DESCRIPTION = "Samples CLIP image embeddings from text with the unCLIP diffusion prior."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("DALLE_IMAGE_EMBEDS",)
    RETURN_NAMES = ("image_embeds",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "prior": ("DALLE_PRIOR",),
                "positive": ("DALLE_TEXT_EMBEDS", {"tooltip": "The prompt, from DALL·E Text Encode."}),
                "seed": seed_input("Same seed, same embeddings, on any device."),
                "steps": (
                    "INT",
                    {"default": 25, "min": 2, "max": 1000, "tooltip": "Prior denoising steps (reference: 25)."},
                ),
                "guidance": GUIDANCE_INPUT,
                "batch_size": (
                    "INT",
                    {"default": 1, "min": 1, "max": 64, "tooltip": "Embeddings to sample for the prompt."},
                ),
            },
            "optional": {
                "negative": (
                    "DALLE_TEXT_EMBEDS",
                    {
                        "tooltip": "A negative prompt. Unconnected: the empty prompt guides "
                        "the prior and a zero-image embedding guides the decoder."
                    },
                ),
            },
        }

    def sample(
        self,
        prior: PriorModel,
        positive: PromptEmbeds,
        seed: int,
        steps: int,
        guidance: float,
        batch_size: int,
        negative: PromptEmbeds | None = None,
    ) -> tuple[ImageEmbeds]:
        if steps < 2:
            raise ValueError(f"steps must be at least 2 for the prior (got {steps}).")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1 (got {batch_size}).")
        zero = prior.zero_image_embed() if negative is None else None
        rows = batch_size * (1 + (guidance > 1) + (negative is not None))  # model rows: prompt, unconditional, negative
        fused = memory.fused_attention_on(runtime.compute_device())
        needed = kandinsky22_memory.prior_step_bytes(
            prior.prior.module.config, rows, prior.prior.dtype, fused_attention=fused
        )
        model = prior.prior.load(memory_required=needed)
        param = next(model.parameters())
        place = lambda e: e.to(param.device, param.dtype)  # noqa: E731
        progress = runtime.Progress(steps, "prior")
        with torch.inference_mode():
            embeds, negative_embeds = kandinsky22.prior_sample(
                model,
                place(positive.prompt),
                place(positive.empty),
                place(negative.prompt) if negative else None,
                batch_size,
                steps,
                guidance,
                torch.Generator().manual_seed(seed),
                step_callback(progress),
                cuda_graph=cuda_graph.wanted(),
            )
        progress.close()
        if negative_embeds is None:
            negative_embeds = zero.expand(batch_size, -1)
        store = runtime.offload_device()
        return (ImageEmbeds(embeds.float().to(store), negative_embeds.float().to(store)),)
