"""Prior sampling: text embeddings → CLIP image embeddings (DALL·E 2's first stage), with Kandinsky 2.2's prior or
Karlo's."""

from __future__ import annotations

from dataclasses import replace

import torch

from ..pipelines import sampling
from ..pipelines.kandinsky22 import memory, stages
from ..pipelines.karlo import stages as karlo_stages
from ..pipelines.karlo.sampling import PRIOR, unclip_schedule
from ..pipelines.stage_model import StageModel
from . import runtime
from .sockets import (
    GUIDANCE_INPUT,
    KANDINSKY_CATEGORY,
    ImageEmbeds,
    KarloEmbeds,
    KarloPrior,
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
        prior: PriorModel | KarloPrior,
        positive: PromptEmbeds,
        seed: int,
        steps: int,
        guidance: float,
        batch_size: int,
        negative: PromptEmbeds | None = None,
    ) -> tuple[ImageEmbeds | KarloEmbeds]:
        config, dtype = prior.prior.module.config, prior.prior.dtype
        check_text_width(positive, config.embedding_dim, "positive")
        if negative is not None:
            check_text_width(negative, config.embedding_dim, "negative")
        # Karlo's prior is the same module (models/prior.py): Kandinsky's estimate holds it as well.
        model = stage_model(
            prior.prior, lambda rows: lambda fused: memory.prior_step_bytes(config, rows, dtype, fused_attention=fused)
        )
        if isinstance(prior, KarloPrior):
            return (karlo_prior(model, positive, negative, seed, steps, guidance, batch_size),)
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


def check_text_width(embeds: PromptEmbeds, width: int, socket: str) -> None:
    """The prompt was encoded by the text tower of this prior's repo (Kandinsky 2.2's ViT-bigG and Karlo's ViT-L
    differ in width)."""
    found = embeds.prompt.pooled.shape[-1]
    if found != width:
        raise ValueError(
            f"The {socket} text embeddings are {found} wide, but this prior reads {width}: encode the prompt with the "
            "text_encoder output of the Load DALL·E 2 Prior node that loaded this prior."
        )


def karlo_prior(
    model: StageModel,
    positive: PromptEmbeds,
    negative: PromptEmbeds | None,
    seed: int,
    steps: int,
    guidance: float,
    batch_size: int,
) -> KarloEmbeds:
    """Karlo's prior (karlo.stages.prior_stage): a negative prompt takes the empty prompt's place as the unguided
    input. The embeddings carry the random stream on to the decoder, as the reference's one generator runs on."""
    prompt = positive if negative is None else replace(positive, empty=negative.prompt)
    run = karlo_stages.StageRun(unclip_schedule(steps, PRIOR), guidance)
    generator = torch.Generator().manual_seed(seed)
    progress = runtime.Progress(steps, "prior")
    try:
        embeds = karlo_stages.prior_stage(model, prompt, batch_size, run, generator, step_callback(progress))
    finally:
        progress.close()
    return KarloEmbeds(embeds.to(runtime.offload_device()), generator.get_state())
