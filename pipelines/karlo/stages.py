"""Karlo (DALL·E 2 as the paper drew it), stage by stage, as plain functions over tensors:

    text (clip_text.encode_prompt) → prior_stage → image embeddings [B, 768]
    image (encode_images, the variations repo's CLIP image tower) → image embeddings [B, 768]
    image embeddings + text → decoder_stage → IMAGE [B, 64, 64, 3]
    IMAGE 64 px → super_res_stage → IMAGE [B, 256, 256, 3]  (then a GAN upscaler for 1024)

These are the one implementation: the Python API (api.Karlo) and the nodes run them. They mirror diffusers'
UnCLIPPipeline and UnCLIPImageVariationPipeline step for step: one generator runs through the stages in that order,
so the same seed gives the same image. Images between stages are IMAGEs (ComfyUI's [B, H, W, 3] floats in 0..1, on
the CPU), so the nodes pass them on as they are. A stage checks its inputs first, then readies its models through
StageModels, so a mistake costs no loading and no memory.

Classifier-free guidance runs where a scale is above 1. diffusers' UnCLIPPipeline guides both the prior and the
decoder as soon as either scale is above 1; with the other at 1 that is the same computation, but a scale below 1
there would mix towards the unconditional: here a scale of 1 or less always means unguided.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ...models import clip
from ...models.clip import TextEmbeds
from .. import sampling
from ..checks import check_embeds, check_image, check_range
from ..clip_text import PromptEmbeds
from ..stage_model import StageModel
from .loading import DECODER_SIZE, SUPER_RES_SIZE
from .sampling import UnclipSchedule, sample_unclip

if TYPE_CHECKING:  # transformers takes seconds to import: ComfyUI's start-up should not pay for it
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

MAX_BATCH = 64
MAX_GUIDANCE = 100.0
CHANNELS = 3


@dataclass(frozen=True)
class StageRun:
    """How one stage samples: its schedule (karlo.sampling.unclip_schedule) and guidance scale (1 or less: none)."""

    schedule: UnclipSchedule
    guidance: float = 1.0

    @property
    def guided(self) -> bool:
        return self.guidance > 1


def _place(embeds: TextEmbeds, rows: int, device: torch.device, dtype: torch.dtype) -> TextEmbeds:
    """One prompt's embeddings repeated for `rows` rows, on the model's device and dtype."""
    return TextEmbeds(*(t.repeat_interleave(rows, dim=0) for t in (embeds.pooled, embeds.states, embeds.mask))).to(
        device, dtype
    )


def _text_rows(prompt: PromptEmbeds, rows: int, guided: bool, device: torch.device, dtype: torch.dtype) -> TextEmbeds:
    """The text of each model row: with guidance the empty prompt's rows first, then the prompt's."""
    text = _place(prompt.prompt, rows, device, dtype)
    if not guided:
        return text
    empty = _place(prompt.empty, rows, device, dtype)
    return TextEmbeds(*(torch.cat([getattr(empty, k), getattr(text, k)]) for k in ("pooled", "states", "mask")))


def _guide(out: torch.Tensor, run: StageRun, channels: int) -> torch.Tensor:
    """Guided prediction of the unconditional and conditional halves' first `channels`; the conditional half's other
    channels (a learned variance) follow unchanged."""
    uncond, cond = out.chunk(2)
    guided = uncond[:, :channels] + run.guidance * (cond[:, :channels] - uncond[:, :channels])
    return torch.cat([guided, cond[:, channels:]], dim=1)


def prior_stage(
    prior: StageModel,
    prompt: PromptEmbeds,
    batch_size: int,
    run: StageRun,
    generator: torch.Generator,
    callback: sampling.Callback | None = None,
) -> torch.Tensor:
    """Sample batch_size CLIP image embeddings [B, D] (float32, on the prior's device) for one prompt; the empty
    prompt is the unguided input."""
    check_range("batch_size", batch_size, 1, MAX_BATCH)
    check_range("prior_guidance", run.guidance, 0.0, MAX_GUIDANCE)
    module = prior.load(batch_size * (1 + run.guided))
    text = _text_rows(prompt, batch_size, run.guided, prior.device, prior.dtype)
    with torch.inference_mode():  # the text's part of every step, computed once
        encoded = module.encode_text(text.pooled, text.states, text.mask)

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        model_x = (torch.cat([x, x]) if run.guided else x).to(prior.dtype)
        out = module.step(model_x, t, encoded).float()
        return _guide(out, run, out.shape[1]) if run.guided else out

    with torch.inference_mode():
        x = sampling.randn((batch_size, module.config.embedding_dim), generator, prior.device, torch.float32)
        x = sample_unclip(denoise, x, run.schedule, generator, callback)
        return module.unnormalize(x.to(prior.dtype)).float()


def encode_images(
    processor: CLIPImageProcessor, encoder: CLIPVisionModelWithProjection, images: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """IMAGE [N, H, W, 3|4] in 0..1 → their CLIP image embeddings [N * batch_size, D], float32, each repeated
    batch_size times (image variations)."""
    images = check_image(images)
    check_range("batch_size", batch_size, 1, MAX_BATCH)
    with torch.inference_mode():
        embeds = clip.encode_images(processor, encoder, images).float()
    return embeds.repeat_interleave(batch_size, dim=0)


def decoder_stage(
    decoder: StageModel,
    text_proj: StageModel,
    image_embeds: torch.Tensor,
    prompt: PromptEmbeds,
    run: StageRun,
    generator: torch.Generator,
    callback: sampling.Callback | None = None,
) -> torch.Tensor:
    """CLIP image embeddings [B, D] and the prompt's text → IMAGE [B, 64, 64, 3] (float32 in 0..1, on the CPU): the
    64 px decoder, guided away from the text projection's learned unconditional embedding with the empty prompt."""
    check_range("decoder_guidance", run.guidance, 0.0, MAX_GUIDANCE)
    check_embeds(image_embeds, text_proj.config.embed_dim)
    rows = image_embeds.shape[0]
    check_range("batch of image embeddings", rows, 1, MAX_BATCH)
    class_embed, context, mask = _conditioning(text_proj, image_embeds, prompt, run.guided)
    unet = decoder.load(rows * (1 + run.guided), DECODER_SIZE, DECODER_SIZE)

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = unet(torch.cat([x, x]) if run.guided else x, t, class_embed, context, mask).float()
        return _guide(out, run, CHANNELS) if run.guided else out

    with torch.inference_mode():
        x = sampling.randn((rows, CHANNELS, DECODER_SIZE, DECODER_SIZE), generator, decoder.device, torch.float32)
        return to_image(sample_unclip(denoise, x, run.schedule, generator, callback))


def _conditioning(
    text_proj: StageModel, image_embeds: torch.Tensor, prompt: PromptEmbeds, guided: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The decoder's class embedding, context tokens and their mask (the image tokens always visible), for the
    unguided rows (the learned unconditional embedding, the empty prompt) and then the embeddings' rows."""
    module, device, dtype = text_proj.load(), text_proj.device, text_proj.dtype
    rows = image_embeds.shape[0]
    image = image_embeds.to(device, dtype)
    with torch.inference_mode():
        image = torch.cat([module.unconditional(rows), image]) if guided else image
        text = _text_rows(prompt, rows, guided, device, dtype)
        class_embed, context = module(image, text.pooled, text.states)
    mask = F.pad(text.mask, (module.config.extra_tokens, 0), value=True)
    return class_embed, context, mask


def super_res_stage(
    first: StageModel,
    last: StageModel,
    images: torch.Tensor,
    schedule: UnclipSchedule,
    generator: torch.Generator,
    callback: sampling.Callback | None = None,
) -> torch.Tensor:
    """IMAGE [B, 64, 64, 3|4] in 0..1 (the decoder's) → IMAGE [B, 256, 256, 3] (float32, on the CPU): diffusion
    super-resolution conditioned on the bicubic upscale, `first` for every step but the last, `last` for that one.
    Unguided, as the reference."""
    images = check_super_res_input(images)
    rows = images.shape[0]
    check_range("batch of images", rows, 1, MAX_BATCH)
    size = (SUPER_RES_SIZE, SUPER_RES_SIZE)
    low = images[..., :CHANNELS].permute(0, 3, 1, 2).to(first.device, torch.float32) * 2 - 1
    upscaled = F.interpolate(low, size=size, mode="bicubic", align_corners=False, antialias=True)

    def denoise_with(unet: Callable) -> sampling.Denoise:
        return lambda x, t: unet(torch.cat([x, upscaled.to(x.device)], dim=1), t)

    with torch.inference_mode():
        x = sampling.randn((rows, CHANNELS, *size), generator, first.device, torch.float32)
        steps = schedule.steps
        x = sample_unclip(denoise_with(first.load(rows, *size)), x, schedule, generator, callback, range(steps - 1))
        x, last_unet = x.to(last.device), denoise_with(last.load(rows, *size))
        return to_image(sample_unclip(last_unet, x, schedule, generator, callback, range(steps - 1, steps)))


def check_super_res_input(images: object) -> torch.Tensor:
    """An IMAGE of Karlo's decoder size; other sizes are refused (resize first), not silently resampled."""
    images = check_image(images)
    height, width = images.shape[1:3]
    if (height, width) != (DECODER_SIZE, DECODER_SIZE):
        raise ValueError(
            f"The image is {width}x{height}: Karlo's super-resolution takes the decoder's {DECODER_SIZE}x"
            f"{DECODER_SIZE} images (to {SUPER_RES_SIZE}x{SUPER_RES_SIZE}). Resize it first, or use a GAN upscaler."
        )
    return images


def to_image(pixels: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in -1..1 → IMAGE [B, H, W, 3] in 0..1, float32 on the CPU (clipped, as the reference)."""
    return (pixels.float() * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu()
