"""Kandinsky 2.2, the open DALL·E 2, stage by stage: text encoding, prior sampling, decoder sampling and MoVQ
encoding as plain functions over tensors; MoVQ decoding is vq_decode.movq_decode.

These are the one implementation: the nodes, the Python API (api.Kandinsky22), the command line and the images API
all run them. They mirror diffusers' KandinskyV22PriorPipeline, KandinskyV22Pipeline, its img2img, inpaint and
ControlNet twins step for step, so the same seed gives the same image. A stage checks its inputs first, then readies
its model through a StageModel, so a mistake costs no loading and no memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ...engine import cuda_graph
from ...models import clip
from ...models.clip import TextEmbeds
from ...models.movq import MoVQ
from ...models.prior import PriorTransformer
from .. import sampling
from ..checks import check_embeds, check_image, check_range
from ..clip_text import PromptEmbeds, encode_prompt  # noqa: F401  (encode_prompt: where the nodes call it)
from ..stage_model import StageModel
from .embeds import ImageEmbeds
from .starts import DecoderStart, Edit, check_start, initial_latents, keep_mask, latent_size, unchanged_latents

if TYPE_CHECKING:  # transformers takes seconds to import: ComfyUI's start-up should not pay for it
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

MAX_BATCH = 64
MAX_GUIDANCE = 100.0


def is_guided(guidance: float) -> bool:
    """Classifier-free guidance runs (the unconditional rows join the batch) above a scale of 1."""
    return guidance > 1


def prior_rows(batch_size: int, guidance: float, negative: bool) -> int:
    """Rows of each prior forward: the prompt's, the unconditional ones with guidance, the negative prompt's."""
    return batch_size * (1 + is_guided(guidance) + negative)


def decoder_rows(batch_size: int, guidance: float) -> int:
    """Rows of each UNet forward: the embeddings', and with guidance the negative embeddings' beside them."""
    return batch_size * (1 + is_guided(guidance))


def encode_images(
    processor: CLIPImageProcessor, encoder: CLIPVisionModelWithProjection, images: torch.Tensor, store: torch.device
) -> ImageEmbeds:
    """IMAGE [B, H, W, 3|4] in 0..1 → their CLIP image embeddings, guided away from the all-zero image's."""
    images = check_image(images)
    with torch.inference_mode():
        embeds = clip.encode_images(processor, encoder, images)
        zero = clip.zero_image_embed(encoder).expand_as(embeds)
    return ImageEmbeds(embeds.float().to(store), zero.float().to(store))


@dataclass(frozen=True)
class PriorRun:
    """How one prior run samples: embeddings per prompt, the guidance scale and the schedule."""

    batch_size: int
    guidance: float
    schedule: sampling.PriorSchedule


def prior_stage(
    prior: StageModel,
    zero_image: Callable[[], torch.Tensor],
    prompt: PromptEmbeds,
    negative: PromptEmbeds | None,
    run: PriorRun,
    generator: torch.Generator,
    callback: sampling.Callback | None = None,
) -> ImageEmbeds:
    """Sample CLIP image embeddings for one prompt, with the negative ones the decoder guides away from: the
    negative prompt's (sampled alongside, as the reference does), or without one the all-zero image's embedding,
    which `zero_image()` gives ([1, D]; read before the prior takes the device). Float32, on the prior's device.

    Without a negative prompt the empty prompt is the prior's unconditional input. With one, the reference samples
    its image embedding guided against itself, which is just its conditional prediction, so noise is drawn for 2B
    rows; we skip the redundant unconditional half of those rows (3B model rows instead of 4B). On a CUDA device the
    guided model call is recorded once as a CUDA graph and replayed at every step, unless DALLE_NODES_CUDA_GRAPHS=0
    (same embeddings, slower); see _graphed_denoise.
    """
    check_range("batch_size", run.batch_size, 1, MAX_BATCH)
    check_range("guidance", run.guidance, 0.0, MAX_GUIDANCE)
    zero = zero_image() if negative is None else None
    module = prior.load(prior_rows(run.batch_size, run.guidance, negative is not None))
    rows = run.batch_size * (1 + (negative is not None))
    with torch.inference_mode():
        denoise = _prior_denoise(module, prompt, negative, run, prior.device, prior.dtype)
        x = sampling.randn((rows, module.config.embedding_dim), generator, prior.device, prior.dtype)
        if cuda_graph.wanted() and cuda_graph.can_capture(x.device):
            denoise = _graphed_denoise(denoise, x)
        embeds = module.unnormalize(sampling.sample_prior(denoise, x, run.schedule, generator, callback)).float()
    if negative is None:
        return ImageEmbeds(embeds, zero.float().to(embeds.device).expand(run.batch_size, -1))
    return ImageEmbeds(embeds[: run.batch_size], embeds[run.batch_size :])


def _prior_denoise(
    prior: PriorTransformer, prompt: PromptEmbeds, negative: PromptEmbeds | None, run: PriorRun, device, dtype
) -> sampling.Denoise:
    """The prior's guided prediction for x: the prompt's rows (and the negative prompt's, unguided) in one step.
    The text of every model row is encoded here, once for the whole run; the steps reuse it."""
    batch_size, guidance = run.batch_size, run.guidance
    place = lambda e: _repeat(e.to(device, dtype), batch_size)  # noqa: E731
    pos = place(prompt.prompt)
    guided = is_guided(guidance)
    if negative is None:
        text = _cat(place(prompt.empty), pos) if guided else pos
    else:
        neg = place(negative.prompt)
        text = _cat(neg, pos, neg) if guided else _cat(pos, neg)
    encoded = prior.encode_text(text.pooled, text.states, text.mask)

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not guided:
            return prior.step(x, t, encoded)
        model_x = torch.cat([x, x]) if negative is None else torch.cat([x[:batch_size], x])
        out = prior.step(model_x, t, encoded)
        uncond, cond, rest = out[:batch_size], out[batch_size : 2 * batch_size], out[2 * batch_size :]
        return torch.cat([uncond + guidance * (cond - uncond), rest])

    return denoise


def _repeat(embeds: TextEmbeds, n: int) -> TextEmbeds:
    return TextEmbeds(*(t.repeat_interleave(n, dim=0) for t in (embeds.pooled, embeds.states, embeds.mask)))


def _cat(*parts: TextEmbeds) -> TextEmbeds:
    return TextEmbeds(*(torch.cat(ts) for ts in zip(*((p.pooled, p.states, p.mask) for p in parts), strict=True)))


def _graphed_denoise(denoise: sampling.Denoise, x: torch.Tensor) -> sampling.Denoise:
    """The prior's guided `denoise(x, t)` as a CUDA graph for one sampling run (see cuda_graph.GraphedCall).

    A prior step is ~300 small kernels (20 layers over its 3 step tokens): launched from Python they leave the GPU
    idle. Everything but x [rows, D] and the 0-d int64 timestep on the device is fixed for the run (the text's keys
    and values, encoded before recording, and the guidance scale), so the recording replays each step with the
    same kernels, and the same numbers as eager calls. The warm-up and recording calls run the model only: they
    draw no noise from the sampling generator. The graph returns its output buffer, overwritten by the next step's
    replay; the prior sampler only reads it before that (sampling._posterior_loop: clamped into a new x0 tensor
    right away, on the same stream as the next replay), so no copy is needed.
    """
    timestep = torch.zeros((), dtype=torch.long, device=x.device)  # any value: the warm-up only needs the shape
    return cuda_graph.graphed(denoise, x, timestep, what="Kandinsky 2.2 prior")


@dataclass(frozen=True)
class DecoderRun:
    """How one decoder run samples: the schedule (sampler, steps, denoise) and the guidance scale."""

    schedule: sampling.DecoderSchedule
    guidance: float


def decoder_stage(
    unet: StageModel,
    embeds: ImageEmbeds,
    start: DecoderStart,
    run: DecoderRun,
    generator: torch.Generator,
    callback: sampling.Callback | None = None,
) -> torch.Tensor:
    """Sample MoVQ latents [B, 4, h, w] (float32, on the UNet's device) conditioned on image embeddings, from
    `start`: as KandinskyV22Pipeline does for text-to-image, its img2img twin from a latent, KandinskyV22InpaintPipeline
    with a mask (the UNet also reads the picture's latents, zero where repainted, and the keep-mask; after every step
    the kept region is the picture noised to the next step's level, the clean picture after the last), and
    KandinskyV22ControlnetPipeline (and its img2img twin) with a hint. An inpainting start that repaints nothing
    gives the picture's latents without sampling.
    """
    check_range("guidance", run.guidance, 0.0, MAX_GUIDANCE)
    check_embeds(embeds.positive, unet.config.image_embed_dim)
    check_embeds(embeds.negative, unet.config.image_embed_dim, "negative image embeddings")
    check_start(start, unet.config.kind, run.schedule.start)
    rows = embeds.positive.shape[0]
    keep = keep_mask(start, rows)
    if (picture := unchanged_latents(start, keep, rows)) is not None:
        return picture
    x, edit = initial_latents(start, keep, rows, run.schedule, generator, unet.device, unet.dtype)
    call = unet.load(decoder_rows(rows, run.guidance), *x.shape[2:])
    denoise, after_step = _decoder_denoise(call, embeds, x, run, edit)
    with torch.inference_mode():
        return sampling.sample_decoder(denoise, x, run.schedule, generator, callback, after_step).float()


def _decoder_denoise(
    unet: Callable, embeds: ImageEmbeds, x: torch.Tensor, run: DecoderRun, edit: Edit | None
) -> tuple[sampling.Denoise, Callable | None]:
    """The UNet's guided ε for x, and for inpainting the step that puts the kept picture back after each step."""
    guidance, schedule = run.guidance, run.schedule
    guided, rows = is_guided(guidance), x.shape[0]
    cond = torch.cat([embeds.negative, embeds.positive]) if guided else embeds.positive
    cond = cond.to(x.device, x.dtype)
    after_step = extra = None
    if edit is not None and edit.keep is not None:
        picture, keep, noise = (
            t.to(x.device, x.dtype).expand(rows, -1, -1, -1) for t in (edit.picture, edit.keep, edit.noise)
        )
        extra = torch.cat([picture * keep, keep], dim=1)

        def after_step(i: int, x: torch.Tensor) -> torch.Tensor:
            kept = sampling.noise_to(picture, noise, schedule, i + 1)
            return (keep * kept + (1 - keep) * x).to(x.dtype)

    extras = {}
    if edit is not None and edit.hint is not None:
        hint = edit.hint.to(x.device, x.dtype).expand(rows, -1, -1, -1)
        extras["hint"] = torch.cat([hint, hint]) if guided else hint

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        model_in = x if extra is None else torch.cat([x, extra], dim=1)
        model_in = torch.cat([model_in, model_in]) if guided else model_in
        eps = unet(model_in, t, cond, **extras)[:, : x.shape[1]]  # ε only: drop the learned-variance half
        if not guided:
            return eps
        uncond, text = eps.chunk(2)
        return uncond + guidance * (text - uncond)

    return denoise, after_step


def movq_encode(load: Callable[[], MoVQ], images: torch.Tensor) -> torch.Tensor:
    """IMAGE [B, H, W, 3|4] in 0..1 → MoVQ latents [B, 4, H/8, W/8], float32, one at a time; `load()` readies MoVQ
    once the images are checked. Sides must be sizes the decoder samples (multiples of 64), so the latent can go
    on to the decoder."""
    images = check_image(images)
    height, width = images.shape[1:3]
    try:
        latent_size(width, height)
    except ValueError as error:
        raise ValueError(
            f"The image is {width}x{height}: the decoder cannot sample a latent of that size. {error} Resize or "
            "crop it first (e.g. Upscale Image)."
        ) from None
    movq = load()
    param = next(movq.parameters())
    pixels = images[..., :3].permute(0, 3, 1, 2) * 2 - 1  # drop alpha; MoVQ works in [-1, 1]
    with torch.inference_mode():
        # contiguous: a channels-last MoVQ (compile) would hand the sampler, and so the compiled UNet, that layout
        return torch.cat(
            [movq.encode(one.to(param.device, param.dtype)).float().contiguous() for one in pixels.split(1)]
        )
