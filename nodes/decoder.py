"""Decoder sampling: CLIP image embeddings → MoVQ latents (DALL·E 2's second stage)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..pipelines import checks, kandinsky22, kandinsky22_memory, sampling
from . import runtime
from .sockets import GUIDANCE_INPUT, KANDINSKY_CATEGORY, DecoderModel, ImageEmbeds, seed_input, step_callback


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
                        "min": kandinsky22.MIN_SIZE,
                        "max": kandinsky22.MAX_SIZE,
                        "step": kandinsky22.SIZE_STEP,
                        "tooltip": "Image width in pixels, a multiple of 64. Ignored when a latent is connected.",
                    },
                ),
                "height": (
                    "INT",
                    {
                        "default": 768,
                        "min": kandinsky22.MIN_SIZE,
                        "max": kandinsky22.MAX_SIZE,
                        "step": kandinsky22.SIZE_STEP,
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
        schedule = sampling.decoder_schedule(sampler, steps, karras, denoise)
        size = kandinsky22.latent_size(width, height) if latent is None else None
        generator = torch.Generator().manual_seed(seed)
        config, dtype = decoder.unet.module.config, decoder.unet.dtype
        checks.check_embeds(image_embeds.positive, config.image_embed_dim)
        checks.check_embeds(image_embeds.negative, config.image_embed_dim, "negative image embeddings")
        kind, rows, device = config.kind, image_embeds.positive.shape[0], runtime.compute_device()
        kandinsky22.check_edit_inputs(kind, latent, mask, hint)
        edit = None
        if kind == "inpaint":
            edit = kandinsky22.inpaint_edit(latent, mask, rows)
            if (picture := kandinsky22.unchanged_latents(edit, rows)) is not None:
                return ({"samples": picture.to(runtime.output_device())},)
            x, edit = kandinsky22.inpaint_start(edit, schedule, rows, generator, device, dtype)
        else:
            x = kandinsky22.decoder_start(image_embeds, schedule, size, latent, generator, device, dtype)
        if kind == "controlnet":
            edit = kandinsky22.hint_edit(hint, tuple(x.shape[2:]), rows)
        rows = x.shape[0] * (2 if guidance > 1 else 1)

        def load() -> Callable:
            unet = decoder.unet.load_for(  # ComfyUI offloads other models to make this room
                lambda fused: kandinsky22_memory.unet_step_bytes(
                    config, rows, *x.shape[2:], dtype, fused_attention=fused
                )
            )
            return decoder.unet_call(unet)

        progress = runtime.Progress(schedule.steps_run, "decoder")
        try:
            samples = kandinsky22.decoder_sample(
                load,
                image_embeds,
                x,
                schedule,
                guidance,
                generator,
                step_callback(progress),
                edit,
            )
        finally:
            progress.close()
        return ({"samples": samples.float().to(runtime.output_device())},)
