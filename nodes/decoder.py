"""Decoder sampling: CLIP image embeddings → MoVQ latents (DALL·E 2's second stage)."""

from __future__ import annotations

import torch

from ..engine import memory
from ..pipelines import kandinsky22, kandinsky22_memory, sampling
from . import runtime
from .loaders import CATEGORY, DecoderModel
from .prior import GUIDANCE_INPUT, ImageEmbeds, seed_input, step_callback


class DalleDecoderSample:
    DESCRIPTION = (
        "Samples image latents from CLIP image embeddings with the Kandinsky 2.2 UNet. Connect a latent "
        "(e.g. from DALL·E VQ Encode) and lower denoise for image-to-image."
    )
    CATEGORY = CATEGORY
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
                        "min": 64,
                        "max": 4096,
                        "step": 64,
                        "tooltip": "Image width in pixels, a multiple of 64. Ignored when a latent is connected.",
                    },
                ),
                "height": (
                    "INT",
                    {
                        "default": 768,
                        "min": 64,
                        "max": 4096,
                        "step": 64,
                        "tooltip": "Image height in pixels, a multiple of 64. Ignored when a latent is connected.",
                    },
                ),
                "steps": ("INT", {"default": 50, "min": 1, "max": 999, "tooltip": "Decoder denoising steps."}),
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
                "latent": ("LATENT", {"tooltip": "Start from this latent (image-to-image) instead of pure noise."}),
                "denoise": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": 0.01,
                        "max": 1.0,
                        "step": 0.01,
                        "tooltip": "With a latent: how much of the schedule to run (1 = ignore the image).",
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
    ) -> tuple[dict]:
        if steps < 1:
            raise ValueError(f"steps must be at least 1 (got {steps}).")
        if sampler not in sampling.DECODER_SAMPLERS:
            raise ValueError(f"Unknown sampler '{sampler}': choose one of {', '.join(sampling.DECODER_SAMPLERS)}.")
        if karras and sampler != "dpmpp_2m":
            raise ValueError("karras sigmas apply to the dpmpp_2m sampler only: switch karras off or pick dpmpp_2m.")
        embeds, negative = image_embeds.positive, image_embeds.negative
        start = None
        if latent is not None:
            start = latent["samples"]
            if start.shape[1] != kandinsky22.LATENT_CHANNELS:
                raise ValueError(f"The latent has {start.shape[1]} channels; connect a MoVQ latent (DALL·E VQ Encode).")
            if start.shape[0] not in (1, embeds.shape[0]):
                raise ValueError(
                    f"The latent batch ({start.shape[0]}) must be 1 or match the embeddings ({embeds.shape[0]})."
                )
            start = start.expand(embeds.shape[0], -1, -1, -1)
            size = tuple(start.shape[2:])
        else:
            if denoise < 1:
                raise ValueError("denoise below 1 needs a starting latent: connect one (e.g. from DALL·E VQ Encode).")
            size = kandinsky22.latent_size(width, height)
        rows = embeds.shape[0] * (2 if guidance > 1 else 1)
        fused = memory.fused_attention_on(runtime.compute_device())
        needed = kandinsky22_memory.unet_step_bytes(
            decoder.unet.module.config, rows, *size, decoder.unet.dtype, fused_attention=fused
        )
        unet = decoder.unet.load(memory_required=needed)  # ComfyUI offloads other models to make this room
        run = sampling.img2img_start(steps, denoise)
        progress = runtime.Progress(steps - run, "decoder")
        with torch.inference_mode():
            samples = kandinsky22.decoder_sample(
                unet,
                embeds,
                negative,
                size,
                steps,
                guidance,
                sampler,
                torch.Generator().manual_seed(seed),
                karras,
                start,
                denoise,
                step_callback(progress),
                forward=decoder.forward(unet),
            )
        progress.close()
        return ({"samples": samples.float().to(runtime.output_device())},)
