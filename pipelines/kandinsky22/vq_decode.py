"""MoVQ decoding within the memory there is: latents → IMAGE ([B, H, W, 3] floats in 0..1).

It decodes whole where one image's activations fit beside what is free and otherwise (on a GPU) in overlapping
latent tiles sized to the free memory, which is close to the whole decode but not exact (MoVQ's norms and attention
see a tile, not the image). A whole decode that runs out of memory anyway is retried in tiles, smaller after each
further failure.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from ...engine import tiling
from ...engine.device import Host
from ...engine.memory import fused_attention_on
from ...models.movq import MoVQ
from . import memory

OVERLAP = 8  # latent pixels neighbouring tiles share (64 image pixels); seams are cross-faded inside it


def decode_bytes(movq: MoVQ, latents: torch.Tensor, fused_attention: bool) -> int:
    """Activation bytes of decoding one image of these latents (the estimate ComfyUI is asked to make room for)."""
    channels = movq.config.latent_channels
    if latents.ndim != 4 or latents.shape[1] != channels:
        raise ValueError(f"Expected a MoVQ latent [B, {channels}, h, w], got shape {tuple(latents.shape)}.")
    height, width = (side * movq.scale for side in latents.shape[-2:])
    dtype = next(movq.parameters()).dtype
    return memory.movq_decode_bytes(movq.config, height, width, dtype, fused_attention=fused_attention)


def activation_room(host: Host, device: torch.device) -> int | None:
    """Bytes free for the decode's activations on `device`; None where they are not budgeted: on the CPU (RAM)
    the decode always runs whole."""
    return host.free_memory(device) if device.type == "cuda" else None


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


def decode_whole(
    decode: Callable[[torch.Tensor], torch.Tensor], latent: torch.Tensor, host: Host
) -> torch.Tensor | None:
    """decode(latent), or None if that ran out of memory (its tensors are free again by then)."""
    try:
        return decode(latent)
    except Exception as error:
        if not host.is_out_of_memory(error):
            raise
    return None


def decode_in_tiles(
    movq: MoVQ, latent: torch.Tensor, plan: tiling.TilePlan, host: Host
) -> tuple[torch.Tensor, tiling.TilePlan]:
    """movq.decode_tiled(latent) under `plan`, shrunk after each out-of-memory error; the pixels and the plan that
    worked. If even the smallest tiles run out of memory, an error says what to do."""
    tried = [plan]

    def retry(failed: tiling.TilePlan, smaller: tiling.TilePlan) -> None:
        logging.warning("MoVQ decode: out of memory with %s; retrying with %s", failed, smaller)
        tried.append(smaller)
        host.free_cache()

    def attempt(plan: tiling.TilePlan) -> torch.Tensor:
        return movq.decode_tiled(latent, plan, on_batch=host.check_interrupt)

    try:
        return tiling.shrink_on_oom(attempt, plan, host.is_out_of_memory, retry)
    except Exception as error:
        if not host.is_out_of_memory(error):
            raise
        (height, width), smallest = latent.shape[-2:], tried[-1]
        tile_h, tile_w = min(height, smallest.height), min(width, smallest.width)
        raise torch.OutOfMemoryError(
            f"MoVQ decode: out of memory decoding a {width * movq.scale}×{height * movq.scale} image even in "
            f"{tile_w * movq.scale}×{tile_h * movq.scale} pixel tiles, the smallest it tries. "
            "Free GPU memory (close other programs using it), load the decoder in fp16 or bf16 "
            "if it is fp32, or decode a smaller latent."
        ) from error


def movq_decode(
    movq: MoVQ,
    latents: torch.Tensor,
    host: Host,
    out_device: torch.device,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Decode [B, 4, h, w] latents to IMAGE on `out_device`, one image at a time, with `decode` as the whole-image
    decode (movq.decode, or its compiled call)."""
    decode = decode or movq.decode
    height, width = latents.shape[-2:]
    param = next(movq.parameters())
    needed = decode_bytes(movq, latents, fused_attention_on(param.device))
    room = activation_room(host, param.device)
    plan = None if room is None or needed <= room else tile_plan(movq, height, width, needed, room)
    if plan is not None:
        logging.info(
            "MoVQ decode: needs %.2f GiB, %.2f free; decoding in tiles: %s", needed / 2**30, room / 2**30, plan
        )
    images = []
    with torch.inference_mode():
        for one in latents.split(1):  # one image at a time bounds the decoder's (large) activation memory
            host.check_interrupt()
            one = one.to(param.device, param.dtype)
            pixels = decode_whole(decode, one, host) if plan is None else None
            if pixels is None:
                if plan is None:  # the whole decode ran out of memory
                    host.free_cache()
                    plan = tile_plan(movq, height, width, needed, activation_room(host, param.device))
                    logging.warning("MoVQ decode: out of memory decoding whole; decoding in tiles: %s", plan)
                pixels, plan = decode_in_tiles(movq, one, plan, host)
            images.append((pixels.float() * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).to(out_device))
    return torch.cat(images)
