"""Prior sampling: text embeddings → CLIP image embeddings (DALL·E 2's first stage)."""

from __future__ import annotations

import torch

from ..pipelines import kandinsky22, kandinsky22_memory, sampling
from . import runtime
from .sockets import (
    GUIDANCE_INPUT,
    KANDINSKY_CATEGORY,
    ImageEmbeds,
    PriorModel,
    PromptEmbeds,
    seed_input,
    step_callback,
)


class DallePriorSample:
    """On a CUDA device each prior step is replayed as a CUDA graph (kandinsky22.prior_sample). Setting the
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
                        "max": kandinsky22.MAX_BATCH,
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
        schedule = sampling.prior_schedule(steps)
        rows = kandinsky22.prior_rows(batch_size, guidance, negative is not None)
        config, dtype = prior.prior.module.config, prior.prior.dtype

        def load() -> torch.nn.Module:
            if negative is None:  # the decoder's negative: read (or computed, once) before the prior takes the GPU
                prior.zero_image_embed()
            return prior.prior.load_for(
                lambda fused: kandinsky22_memory.prior_step_bytes(config, rows, dtype, fused_attention=fused)
            )

        progress = runtime.Progress(steps, "prior")
        try:
            embeds, negative_embeds = kandinsky22.prior_sample(
                load,
                positive,
                negative,
                batch_size,
                guidance,
                schedule,
                torch.Generator().manual_seed(seed),
                step_callback(progress),
            )
        finally:
            progress.close()
        if negative_embeds is None:
            negative_embeds = prior.zero_image_embed().expand(batch_size, -1)  # kept since load()
        store = runtime.offload_device()
        return (ImageEmbeds(embeds.float().to(store), negative_embeds.float().to(store)),)
