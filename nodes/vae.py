"""MoVQ: latents ↔ images (ComfyUI IMAGE: [B, H, W, 3] floats in 0..1).

Decoding asks ComfyUI for room for one image's activations and decodes whole where they fit; where they do not
(on a GPU), it decodes in overlapping latent tiles sized to the free memory, which is close to the whole decode but
not exact. A whole decode that runs out of memory anyway is retried in tiles, smaller after each further failure.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from ..engine import memory, tiling
from ..models.movq import MoVQ
from ..pipelines import kandinsky22, kandinsky22_memory
from . import runtime
from .loaders import CATEGORY, VQModel

OVERLAP = 8  # latent pixels neighbouring tiles share (64 image pixels); seams are cross-faded inside it


def activation_room(device: torch.device) -> int | None:
    """Bytes free for the decode's activations on `device`; None where they are not budgeted: on the CPU (RAM)
    the decode always runs whole."""
    return runtime.free_memory(device) if device.type == "cuda" else None


def tile_plan(movq: MoVQ, height: int, width: int, needed: int, room: int | None) -> tiling.TilePlan:
    """The least-work tiling of an h × w latent into tiles of at most half its area (the whole does not fit),
    whose activations (`needed` bytes for the whole image, in proportion to area) fit in `room` bytes beside the
    two full-size float32 images the tiled decode holds (the canvas and the output)."""
    area = height * width
    max_pixels = area // 2
    if room is not None:
        held = 2 * 4 * movq.config.out_channels * area * movq.scale**2
        max_pixels = min(max_pixels, int((room - held) / max(needed / area, 1.0)))
    return tiling.plan_tiles(height, width, max(max_pixels, 1), OVERLAP)


def decode_whole(decode: Callable[[torch.Tensor], torch.Tensor], latent: torch.Tensor) -> torch.Tensor | None:
    """decode(latent), or None if that ran out of memory (its tensors are free again by then)."""
    try:
        return decode(latent)
    except Exception as error:
        if not runtime.is_out_of_memory(error):
            raise
    return None


def decode_in_tiles(movq: MoVQ, latent: torch.Tensor, plan: tiling.TilePlan) -> tuple[torch.Tensor, tiling.TilePlan]:
    """movq.decode_tiled(latent) under `plan`, shrunk after each out-of-memory error; the pixels and the plan that
    worked. If even the smallest tiles run out of memory, an error says what to do."""
    tried = [plan]

    def retry(failed: tiling.TilePlan, smaller: tiling.TilePlan) -> None:
        logging.warning("DalleVQDecode: out of memory with %s; retrying with %s", failed, smaller)
        tried.append(smaller)
        runtime.free_cache()

    def attempt(plan: tiling.TilePlan) -> torch.Tensor:
        return movq.decode_tiled(latent, plan, on_batch=runtime.check_interrupt)

    try:
        return tiling.shrink_on_oom(attempt, plan, runtime.is_out_of_memory, retry)
    except Exception as error:
        if not runtime.is_out_of_memory(error):
            raise
        (height, width), smallest = latent.shape[-2:], tried[-1]
        tile_h, tile_w = min(height, smallest.height), min(width, smallest.width)
        raise torch.OutOfMemoryError(
            f"DalleVQDecode: out of memory decoding a {width * movq.scale}×{height * movq.scale} image even in "
            f"{tile_w * movq.scale}×{tile_h * movq.scale} pixel tiles, the smallest it tries. "
            "Free GPU memory (close other programs using it), load the decoder in fp16 or bf16 "
            "if it is fp32, or decode a smaller latent."
        ) from error


class DalleVQDecode:
    DESCRIPTION = (
        "Decodes Kandinsky 2.2 latents to images with MoVQ: whole where the GPU has room, else in overlapping "
        "tiles (cross-faded, close to the whole decode)."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"vq_vae": ("DALLE_VQ_VAE",), "latent": ("LATENT",)}}

    def decode(self, vq_vae: VQModel, latent: dict) -> tuple[torch.Tensor]:
        samples = latent["samples"]
        if samples.ndim != 4 or samples.shape[1] != kandinsky22.LATENT_CHANNELS:
            raise ValueError(f"Expected a MoVQ latent [B, 4, h, w], got shape {tuple(samples.shape)}.")
        height, width = samples.shape[-2:]
        config, scale = vq_vae.movq.module.config, vq_vae.movq.module.scale
        fused = memory.fused_attention_on(runtime.compute_device())
        needed = kandinsky22_memory.movq_decode_bytes(
            config, height * scale, width * scale, vq_vae.movq.dtype, fused_attention=fused
        )
        movq = vq_vae.movq.load(memory_required=needed)  # ComfyUI offloads other models to make this room
        param, decode = next(movq.parameters()), vq_vae.decode_fn(movq)  # the compiled decode, if asked for
        room = activation_room(param.device)
        plan = None if room is None or needed <= room else tile_plan(movq, height, width, needed, room)
        if plan is not None:
            logging.info(
                "DalleVQDecode: needs %.2f GiB, %.2f free; decoding in tiles: %s", needed / 2**30, room / 2**30, plan
            )
        images = []
        with torch.inference_mode():
            for one in samples.split(1):  # one image at a time bounds the decoder's (large) activation memory
                runtime.check_interrupt()
                one = one.to(param.device, param.dtype)
                pixels = decode_whole(decode, one) if plan is None else None
                if pixels is None:
                    if plan is None:  # the whole decode ran out of memory
                        runtime.free_cache()
                        plan = tile_plan(movq, height, width, needed, activation_room(param.device))
                        logging.warning("DalleVQDecode: out of memory decoding whole; decoding in tiles: %s", plan)
                    pixels, plan = decode_in_tiles(movq, one, plan)
                images.append((pixels.float() * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).to(runtime.output_device()))
        return (torch.cat(images),)


class DalleVQEncode:
    DESCRIPTION = (
        "Encodes images to Kandinsky 2.2 latents with MoVQ (for image-to-image). Sides must be multiples of 8."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"vq_vae": ("DALLE_VQ_VAE",), "image": ("IMAGE",)}}

    def encode(self, vq_vae: VQModel, image: torch.Tensor) -> tuple[dict]:
        height, width = image.shape[1:3]
        if height % 8 or width % 8:
            raise ValueError(
                f"Image size {width}x{height} is not a multiple of 8: resize or crop it first (e.g. Upscale Image)."
            )
        fused = memory.fused_attention_on(runtime.compute_device())
        needed = kandinsky22_memory.movq_encode_bytes(
            vq_vae.movq.module.config, height, width, vq_vae.movq.dtype, fused_attention=fused
        )
        movq = vq_vae.movq.load(memory_required=needed)
        param = next(movq.parameters())
        pixels = image[..., :3].permute(0, 3, 1, 2) * 2 - 1  # drop alpha; MoVQ works in [-1, 1]
        with torch.inference_mode():
            # contiguous: a channels-last MoVQ (compile) would hand the sampler, and so the compiled UNet, that layout
            latents = [movq.encode(one.to(param.device, param.dtype)).float().contiguous() for one in pixels.split(1)]
        return ({"samples": torch.cat(latents).to(runtime.output_device())},)
