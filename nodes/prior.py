"""Prior sampling: text embeddings → CLIP image embeddings (DALL·E 2's first stage)."""

from __future__ import annotations

import torch

from ..pipelines import sampling
from ..pipelines.kandinsky22 import memory, stages
from . import runtime
from .sockets import (
    GUIDANCE_INPUT,
    KANDINSKY_CATEGORY,
    ImageEmbeds,
    PriorModel,
    PromptEmbeds,
    seed_input,
    stage_model,
    step_callback,
)


class DallePriorSample:
    """On a CUDA device each prior step is replayed as a CUDA graph (kandinsky22.stages.prior_stage). Setting the
    environment variable DALLE_NODES_CUDA_GRAPHS=0 before sampling launches the steps kernel by kernel instead:
    the same embeddings, slower; a way to rule graphs out when something goes wrong on a GPU."""

    DESCRIPTION = "Samples CLIP image embeddings from text with the unCLIP diffusion prior."
    CATEGORY = KANDINSKY_CATEGORY
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
                    {
                        "default": 25,
                        "min": 2,
                        "max": sampling.TRAIN_TIMESTEPS,
                        "tooltip": "Prior denoising steps (reference: 25).",
                    },
                ),
                "guidance": GUIDANCE_INPUT,
                "batch_size": (
                    "INT",
                    {
                        "default": 1,
                        "min": 1,
                        "max": stages.MAX_BATCH,
                        "tooltip": "Embeddings to sample for the prompt.",
                    },
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
        config, dtype = prior.prior.module.config, prior.prior.dtype
        model = stage_model(
            prior.prior, lambda rows: lambda fused: memory.prior_step_bytes(config, rows, dtype, fused_attention=fused)
        )
        run = stages.PriorRun(batch_size, guidance, sampling.prior_schedule(steps))
        progress = runtime.Progress(steps, "prior")
        try:
            embeds = stages.prior_stage(
                model,
                prior.zero_image_embed,
                positive,
                negative,
                run,
                torch.Generator().manual_seed(seed),
                step_callback(progress),
            )
        finally:
            progress.close()
        return (embeds.to(runtime.offload_device()),)
