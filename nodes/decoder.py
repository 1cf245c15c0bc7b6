"""Decoder sampling: CLIP image embeddings → MoVQ latents (DALL·E 2's second stage)."""

from __future__ import annotations

import torch

from ..pipelines import checks, sampling
from ..pipelines.kandinsky22 import memory, stages, starts
from ..pipelines.kandinsky22.loading import CONTROLNET_REPO, DECODER_REPO, INPAINT_REPO
from ..pipelines.kandinsky22.starts import KIND_NAMES, DecoderStart
from . import runtime
from .sockets import (
    GUIDANCE_INPUT,
    KANDINSKY_CATEGORY,
    DecoderModel,
    ImageEmbeds,
    kandinsky_embeds,
    movq_samples,
    seed_input,
    stage_model,
    step_callback,
)


class DalleDecoderSample:
    DESCRIPTION = (
        "Samples image latents from CLIP image embeddings with the Kandinsky 2.2 UNet. Connect a latent "
        "(e.g. from DALL·E VQ Encode) and lower denoise for image-to-image."
    )
    CATEGORY = KANDINSKY_CATEGORY
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "decoder": ("DALLE_DECODER",),
                "image_embeds": (
                    "DALLE_IMAGE_EMBEDS",
                    {"tooltip": "From DALL·E Prior Sample (or mixed/encoded embeddings)."},
                ),
                "width": (
                    "INT",
                    {
                        "default": 768,
                        "min": starts.MIN_SIZE,
                        "max": starts.MAX_SIZE,
                        "step": starts.SIZE_STEP,
                        "tooltip": "Image width in pixels, a multiple of 64. Ignored when a latent is connected.",
                    },
                ),
                "height": (
                    "INT",
                    {
                        "default": 768,
                        "min": starts.MIN_SIZE,
                        "max": starts.MAX_SIZE,
                        "step": starts.SIZE_STEP,
                        "tooltip": "Image height in pixels, a multiple of 64. Ignored when a latent is connected.",
                    },
                ),
                "steps": (
                    "INT",
                    {"default": 50, "min": 1, "max": sampling.MAX_DECODER_STEPS, "tooltip": "Decoder denoising steps."},
                ),
                "guidance": GUIDANCE_INPUT,
                "sampler": (
                    list(sampling.DECODER_SAMPLERS),
                    {
                        "default": "ddpm",
                        "tooltip": "ddpm is the reference pipeline's; the others reach similar quality in fewer steps.",
                    },
                ),
                "karras": ("BOOLEAN", {"default": False, "tooltip": "Karras sigma spacing (dpmpp_2m only)."}),
                "seed": seed_input("Same seed, same image, on any device."),
            },
            "optional": {
                "latent": (
                    "LATENT",
                    {
                        "tooltip": "Start from this latent (image-to-image) instead of pure noise; with an inpainting "
                        "decoder, the picture to edit."
                    },
                ),
                "mask": (
                    "MASK",
                    {
                        "tooltip": "Inpainting decoder only: 1 = repaint (ComfyUI's convention: Load Image's MASK is "
                        "1 where the picture is transparent). Binarised at 0.5. Unconnected: the latent's noise mask."
                    },
                ),
                "hint": (
                    "IMAGE",
                    {
                        "tooltip": "Depth ControlNet decoder only: a depth map of the picture (DALL·E Depth Map, or "
                        "any depth preprocessor), near white = near. Resized to the image if its shape matches."
                    },
                ),
                "denoise": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": sampling.MIN_DENOISE,
                        "max": 1.0,
                        "step": 0.01,
                        "tooltip": "With a latent: how much of the schedule to run (1 = ignore the image, or "
                        "repaint the masked region from scratch).",
                    },
                ),
            },
        }

    def sample(
        self,
        decoder: DecoderModel,
        image_embeds: ImageEmbeds,
        width: int,
        height: int,
        steps: int,
        guidance: float,
        sampler: str,
        karras: bool,
        seed: int,
        latent: dict | None = None,
        denoise: float = 1.0,
        mask: torch.Tensor | None = None,
        hint: torch.Tensor | None = None,
    ) -> tuple[dict]:
        run = stages.DecoderRun(sampling.decoder_schedule(sampler, steps, karras, denoise), guidance)
        size = starts.latent_size(width, height) if latent is None else None
        config, dtype = decoder.unet.module.config, decoder.unet.dtype
        image_embeds = kandinsky_embeds(image_embeds, "DALL·E Decoder Sample (Kandinsky 2.2)")
        checks.check_embeds(image_embeds.positive, config.image_embed_dim)
        checks.check_embeds(image_embeds.negative, config.image_embed_dim, "negative image embeddings")
        check_sockets(config.kind, latent, mask, hint, denoise)
        start = decoder_start(size, latent, mask, hint)
        model = stage_model(
            decoder.unet,
            lambda rows, h, w: lambda fused: memory.unet_step_bytes(config, rows, h, w, dtype, fused_attention=fused),
            decoder.unet_call,
        )
        progress = runtime.Progress(run.schedule.steps_run, "decoder")
        try:
            samples = stages.decoder_stage(
                model,
                image_embeds,
                start,
                run,
                torch.Generator().manual_seed(seed),
                step_callback(progress, decoder.previews and decoder.previews.apply),
            )
        finally:
            progress.close()
        return ({"samples": samples.to(runtime.output_device())},)


def decoder_start(
    size: tuple[int, int] | None, latent: dict | None, mask: torch.Tensor | None, hint: torch.Tensor | None
) -> DecoderStart:
    """The sockets as the decoder stage's start: the latent wins over width and height (`size`); without a mask
    socket the latent's noise mask (VAE Encode (for Inpainting), Set Latent Noise Mask) marks what to repaint."""
    if latent is None:
        return DecoderStart(size, hint=hint)
    samples = movq_samples(latent)
    if mask is None:
        mask = latent.get("noise_mask")
    return DecoderStart(latent=samples, repaint=mask, hint=hint)


def check_sockets(kind: str, latent: object, mask: object, hint: object, denoise: float) -> None:
    """The inputs a decoder of this kind (UNetConfig.kind) needs are connected, and none it would ignore."""
    if kind == "controlnet" and hint is None:
        raise ValueError(
            "This is a depth ControlNet decoder: connect a hint (a depth map of the picture's size, e.g. from "
            f"DALL·E Depth Map). For text-to-image without one load {DECODER_REPO}."
        )
    if kind != "controlnet" and hint is not None:
        raise ValueError(
            f"A hint needs the depth ControlNet decoder: load {CONTROLNET_REPO} (this one is {KIND_NAMES[kind]})."
        )
    noise_mask = isinstance(latent, dict) and latent.get("noise_mask") is not None
    if kind == "inpaint" and latent is None:
        raise ValueError(
            "This is an inpainting decoder: connect the picture's latent (DALL·E VQ Encode of it) and a mask (1 = "
            f"repaint). For text-to-image load {DECODER_REPO}."
        )
    if kind != "inpaint" and mask is not None:
        raise ValueError(
            f"A mask needs an inpainting decoder: load {INPAINT_REPO} (this one is {KIND_NAMES[kind]}), or sample "
            "with KSampler and Set Latent Noise Mask."
        )
    if kind == "inpaint" and mask is None and not noise_mask:
        raise ValueError(
            "This is an inpainting decoder: connect a mask (1 = repaint; e.g. Load Image's MASK) beside the "
            f"picture's latent. For text-to-image load {DECODER_REPO}."
        )
    if kind != "inpaint" and noise_mask:  # not sampled whole without a word
        raise ValueError(
            "This LATENT carries a noise mask, which only an inpainting decoder reads: load "
            f"{INPAINT_REPO}, or sample it with KSampler and the loader's MODEL, or remove Set Latent Noise Mask."
        )
    if latent is None and denoise < 1:
        raise ValueError("denoise below 1 needs a starting latent: connect one (e.g. from DALL·E VQ Encode).")
