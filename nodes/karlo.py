"""Karlo's own stages (DALL·E 2 as the paper drew it): its decoder loader, the 64 px decoder (image embeddings + text
→ IMAGE) and the diffusion super-resolution (IMAGE 64 → IMAGE 256). Its prior, text encoder and image encoder load
through the Kandinsky nodes' loaders, whose sockets they share."""

from __future__ import annotations

import torch

from ..engine.hub import Source
from ..pipelines import checks
from ..pipelines.clip_text import PromptEmbeds
from ..pipelines.karlo import loading, memory, stages
from ..pipelines.karlo.sampling import DECODER, MAX_STEPS, SUPER_RES, unclip_schedule
from . import runtime
from .loaders import HubLoader
from .sockets import (
    KARLO_CATEGORY,
    ImageEmbeds,
    KarloDecoderModel,
    KarloEmbeds,
    KarloSuperRes,
    continued,
    seed_input,
    stage_model,
    step_callback,
)

CONTINUE_PRIOR, CONTINUE_DECODER, OWN_SEED = "continue the prior's stream", "continue the decoder's stream", "own seed"
DECODER_SEED = (
    f"Used in '{OWN_SEED}' mode, and for embeddings without a random stream (DALL·E Image Encode, Mix Image Embeds). "
    f"In '{CONTINUE_PRIOR}' mode DALL·E Prior Sample's stream decides and this is not used."
)
DECODER_NOISE = (
    f"'{CONTINUE_PRIOR}' (the reference's pixels): the decoder draws on from where DALL·E Prior Sample left its "
    f"random stream, as the reference's one generator runs through all stages, and the seed is not used. '{OWN_SEED}': "
    "the decoder draws from its seed, to re-roll the image while keeping the prior's embeddings."
)
SUPER_RES_SEED = (
    f"Used in '{OWN_SEED}' mode, and when no stream is connected. In '{CONTINUE_DECODER}' mode with the decoder's "
    "stream connected, that stream decides and this is not used."
)
SUPER_RES_NOISE = (
    f"'{CONTINUE_DECODER}' (the reference's pixels): super-resolution draws on from where DALL·E Karlo Decoder Sample "
    f"left its random stream, and the seed is not used. '{OWN_SEED}': it draws from its seed, to re-roll the details."
)


def _noise_input(follow: str, tooltip: str) -> tuple:
    return ([follow, OWN_SEED], {"default": follow, "tooltip": tooltip})


def _steps_input(default: int, tooltip: str) -> tuple:
    return ("INT", {"default": default, "min": 2, "max": MAX_STEPS, "tooltip": tooltip})


class DalleLoadKarloDecoder(HubLoader):
    DESCRIPTION = (
        "Loads Karlo's 64 px decoder with its text projection, and its two super-resolution UNets (64 → 256 px). "
        f"{loading.REPO} for text-to-image, {loading.VARIATIONS_REPO} for image variations."
    )
    CATEGORY = KARLO_CATEGORY
    RETURN_TYPES = ("DALLE_KARLO_DECODER", "DALLE_KARLO_SUPER_RES")
    RETURN_NAMES = ("decoder", "super_res")
    DEFAULT_REPO = loading.REPO
    CONTENTS = "Karlo repo (with decoder/, text_proj/, super_res_first/, super_res_last/)"
    FILES = sum(loading.FETCHES[k] for k in ("kind", "text_proj", "decoder", "super_res"))

    def build(self, source: Source, dtype: torch.dtype) -> tuple[KarloDecoderModel, KarloSuperRes]:
        loading.repo_kind(source)  # another family's repo: one line, before anything loads
        text_proj = runtime.ManagedModule(loading.load_text_proj(source, dtype))
        decoder = runtime.ManagedModule(loading.load_decoder(source, dtype))
        first, last = (runtime.ManagedModule(unet) for unet in loading.load_super_res(source, dtype))
        return KarloDecoderModel(decoder, text_proj, source, dtype), KarloSuperRes(first, last)


def _pixels(x: torch.Tensor) -> torch.Tensor:
    """Karlo samples in pixel space ([-1, 1]): a step's sample is its own preview."""
    return x


def karlo_embeds(embeds: object) -> KarloEmbeds:
    """Karlo's decoder reads Karlo's embeddings; Kandinsky 2.2's are refused by name (their widths may match)."""
    if isinstance(embeds, ImageEmbeds):
        raise ValueError(
            "These image embeddings come from Kandinsky 2.2, whose CLIP Karlo's decoder cannot read: load "
            f"{loading.REPO} in Load DALL·E 2 Prior (or {loading.VARIATIONS_REPO} in Load DALL·E 2 Image Encoder) "
            "and connect its embeddings."
        )
    if not isinstance(embeds, KarloEmbeds):
        raise ValueError(
            f"image_embeds got a {type(embeds).__name__}, not CLIP image embeddings: connect DALL·E Prior Sample, "
            "DALL·E Image Encode or DALL·E Mix Image Embeds made with Karlo's models."
        )
    return embeds


def check_text(text: PromptEmbeds | None, width: int) -> None:
    if text is not None and text.prompt.pooled.shape[-1] != width:
        raise ValueError(
            f"The text embeddings are {text.prompt.pooled.shape[-1]} wide, but Karlo's decoder reads {width}: encode "
            f"the prompt with the text_encoder of Load DALL·E 2 Prior loaded with {loading.REPO}."
        )


class DalleKarloDecoderSample:
    DESCRIPTION = (
        "Karlo's 64 px decoder: CLIP image embeddings (from DALL·E Prior Sample with Karlo's prior, DALL·E Image "
        "Encode with its image-variations encoder, or a mix) and the prompt → 64 px images, for DALL·E Karlo "
        "Super-Resolution."
    )
    CATEGORY = KARLO_CATEGORY
    RETURN_TYPES = ("IMAGE", "DALLE_KARLO_STREAM")
    RETURN_NAMES = ("image", "stream")
    OUTPUT_TOOLTIPS = ("64 px images.", "The random stream where the decoder left it: for Karlo Super-Resolution.")
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "decoder": ("DALLE_KARLO_DECODER", {"tooltip": "From Load DALL·E 2 Decoder (Karlo)."}),
                "image_embeds": ("DALLE_IMAGE_EMBEDS", {"tooltip": "Karlo's CLIP ViT-L image embeddings."}),
                "seed": seed_input(DECODER_SEED),
                "steps": _steps_input(25, "Decoder denoising steps (reference: 25)."),
                "guidance": (
                    "FLOAT",
                    {
                        "default": 8.0,
                        "min": 0.0,
                        "max": stages.MAX_GUIDANCE,
                        "step": 0.1,
                        "tooltip": "Classifier-free guidance (reference: 8); 1 or less turns it off.",
                    },
                ),
            },
            "optional": {
                "noise": _noise_input(CONTINUE_PRIOR, DECODER_NOISE),
                "text": (
                    "DALLE_TEXT_EMBEDS",
                    {"tooltip": "The prompt (DALL·E Text Encode). Unconnected: the empty prompt, as image variations."},
                ),
            },
        }

    def sample(
        self,
        decoder: KarloDecoderModel,
        image_embeds: KarloEmbeds,
        seed: int,
        steps: int,
        guidance: float,
        text: PromptEmbeds | None = None,
        noise: str = CONTINUE_PRIOR,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image_embeds = karlo_embeds(image_embeds)
        run = stages.StageRun(unclip_schedule(steps, DECODER), guidance)
        text_proj_config, config = decoder.text_proj.module.config, decoder.decoder.module.config
        check_text(text, text_proj_config.embed_dim)
        checks.check_range("guidance", guidance, 0.0, stages.MAX_GUIDANCE)
        dtype = decoder.decoder.dtype
        unet = stage_model(
            decoder.decoder,
            lambda rows, h, w: lambda fused: memory.decoder_step_bytes(config, rows, dtype, fused_attention=fused),
        )
        text_proj = stage_model(decoder.text_proj, lambda: lambda fused: 0)
        prompt = text if text is not None else decoder.empty_prompt()
        generator = continued(None if noise == OWN_SEED else image_embeds.stream, seed)
        progress = runtime.Progress(steps, "Karlo decoder")
        try:
            images = stages.decoder_stage(
                unet, text_proj, image_embeds.positive, prompt, run, generator, step_callback(progress, _pixels)
            )
        finally:
            progress.close()
        return images.to(runtime.output_device()), generator.get_state()


class DalleKarloSuperRes:
    DESCRIPTION = (
        "Karlo's diffusion super-resolution: 64 px images (DALL·E Karlo Decoder Sample's) → 256 px, unguided as "
        "in the reference. DALL·E GAN Upscale takes them on to 1024 px."
    )
    CATEGORY = KARLO_CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    FUNCTION = "upscale"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "super_res": ("DALLE_KARLO_SUPER_RES", {"tooltip": "From Load DALL·E 2 Decoder (Karlo)."}),
                "image": ("IMAGE", {"tooltip": "64x64 images, from DALL·E Karlo Decoder Sample."}),
                "seed": seed_input(SUPER_RES_SEED),
                "steps": _steps_input(
                    7, "Super-resolution steps (reference: 7): all but the last with the first UNet."
                ),
            },
            "optional": {
                "noise": _noise_input(CONTINUE_DECODER, SUPER_RES_NOISE),
                "stream": ("DALLE_KARLO_STREAM", {"tooltip": "DALL·E Karlo Decoder Sample's stream output."}),
            },
        }

    def upscale(
        self,
        super_res: KarloSuperRes,
        image: torch.Tensor,
        seed: int,
        steps: int,
        stream: torch.Tensor | None = None,
        noise: str = CONTINUE_DECODER,
    ) -> tuple[torch.Tensor]:
        schedule = unclip_schedule(steps, SUPER_RES)
        stages.check_super_res_input(image)
        config, dtype = super_res.first.module.config, super_res.first.dtype

        def model(managed: runtime.ManagedModule):
            return stage_model(
                managed, lambda rows, h, w: lambda fused: memory.super_res_step_bytes(config, rows, dtype)
            )

        progress = runtime.Progress(steps, "Karlo super-resolution")
        try:
            images = stages.super_res_stage(
                model(super_res.first),
                model(super_res.last),
                image,
                schedule,
                continued(None if noise == OWN_SEED else stream, seed),
                step_callback(progress, _pixels),
            )
        finally:
            progress.close()
        return (images.to(runtime.output_device()),)
