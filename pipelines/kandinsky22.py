"""Kandinsky 2.2, the open DALL·E 2, stage by stage: checkpoint loading, text encoding, prior sampling, decoder
sampling and MoVQ coding as plain functions over our own modules.

Mirrors diffusers' KandinskyV22PriorPipeline, KandinskyV22Pipeline and KandinskyV22Img2ImgPipeline step for step,
so that the same seed gives the same image. The nodes call these functions one stage each; `Kandinsky22` in
this module runs them in a row, the Python API.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy
import torch
from PIL import Image
from safetensors.torch import save_file

from ..engine import cuda_graph
from ..engine.device import PLAIN, console_progress, default_device, resolve_dtype
from ..engine.hub import (
    TRANSFORMERS_WEIGHTS,
    CheckpointError,
    ConsoleDownload,
    Source,
    cache_folder,
    default_store,
    fetch_config,
    fetch_file,
    fetch_weights,
    load_strict,
    read_cache_file,
    read_state_dict,
    source_from_input,
    verify_safetensors,
    write_cache_file,
)
from ..engine.images import to_pil
from ..models import clip
from ..models.clip import TextEmbeds
from ..models.movq import MoVQ, MoVQConfig
from ..models.prior import PriorConfig, PriorTransformer
from ..models.unet import KandinskyUNet, UNetConfig
from . import edit_pictures, masks, rerank, sampling
from .checks import MAX_SEED, check_image, check_latent, check_prompt, check_range
from .clip_loading import clip_model, clip_processor, clip_tokenizer, fetch_tokenizer
from .rerank import Ranker
from .vq_decode import movq_decode

if TYPE_CHECKING:  # transformers takes seconds to import: ComfyUI's start-up should not pay for it
    from transformers import (
        CLIPImageProcessor,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        CLIPVisionModelWithProjection,
    )

LATENT_CHANNELS = 4
LATENT_SCALE = 8  # MoVQ's downsampling
MIN_SIZE, MAX_SIZE, SIZE_STEP = 64, 4096, 64  # pixels; MoVQ downsamples by 8 and the UNet by 8 more
DEFAULT_SIZE = 768
MAX_BATCH = 64
MAX_GUIDANCE = 100.0
# Files each loader asks the Hub for (configs counted each time they are read), for "file k of n" in download bars;
# tests/pipelines/test_api.py holds them to the loaders.
NO_NEGATIVE_HINT = " (For no negative prompt, leave the prior's negative input unconnected.)"
FETCHES = {"prior": 3, "text_encoder": 6, "image_encoder": 3, "zero_image_embed": 2, "unet": 3, "movq": 2}
log = logging.getLogger(__name__)
PRIOR_REPO = "kandinsky-community/kandinsky-2-2-prior"
DECODER_REPO = "kandinsky-community/kandinsky-2-2-decoder"
INPAINT_REPO = "kandinsky-community/kandinsky-2-2-decoder-inpaint"
CONTROLNET_REPO = "kandinsky-community/kandinsky-2-2-controlnet-depth"

# The schedules our samplers implement; a repo whose scheduler config asks for anything else is refused.
PRIOR_SCHEDULER = {
    "_class_name": "UnCLIPScheduler",
    "clip_sample": True,
    "clip_sample_range": 10.0,
    "num_train_timesteps": 1000,
    "prediction_type": "sample",
    "variance_type": "fixed_small_log",
    "beta_schedule": "squaredcos_cap_v2",
}
DECODER_SCHEDULER = {
    "_class_name": "DDPMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "thresholding": False,
    "variance_type": "fixed_small",
    "timestep_spacing": "leading",
    "rescale_betas_zero_snr": False,
}


def check_scheduler(source: Source, expected: dict) -> None:
    config = fetch_config(source, "scheduler", "scheduler_config.json", expect=expected["_class_name"])
    different = {k: config[k] for k, v in expected.items() if k in config and config[k] != v}
    if different:
        raise CheckpointError(
            f"{source.describe()}/scheduler asks for {different}; only the Kandinsky 2.2 schedule "
            f"({expected}) is supported."
        )


# Attention parameter names of diffusers before 0.14; older VQ/VAE checkpoints still carry them.
_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def modern_attention_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename `…attentions.N.query.weight` style keys to today's `…to_q.weight` (what diffusers does on load)."""

    def rename(key: str) -> str:
        module, _, param = key.rpartition(".")
        owner, _, name = module.rpartition(".")
        return f"{owner}.{_LEGACY_ATTENTION[name]}.{param}" if owner and name in _LEGACY_ATTENTION else key

    return {rename(key): value for key, value in state.items()}


def _load(
    source: Source,
    subfolder: str,
    expect: str,
    config_cls,
    module_cls,
    dtype: torch.dtype,
    what: str,
    scheduler: dict | None = None,
):
    config = fetch_config(source, subfolder, expect=expect)
    if scheduler is not None:
        check_scheduler(source, scheduler)
    try:
        parsed = config_cls.from_diffusers(config)
    except ValueError as error:
        raise CheckpointError(
            f"{source.describe()}/{subfolder}/config.json: {error}. Delete it and download it again, or check that "
            f"this is a Kandinsky 2.2 {what}."
        ) from error
    weights = fetch_weights(source, subfolder)
    state = modern_attention_keys(read_state_dict(weights, dtype))
    what = f"{what} of {source.describe()} ('{subfolder}/{weights.name}')"
    return load_strict(lambda: module_cls(parsed), state, what)


def load_prior(source: Source, dtype: torch.dtype) -> PriorTransformer:
    return _load(source, "prior", "PriorTransformer", PriorConfig, PriorTransformer, dtype, "prior", PRIOR_SCHEDULER)


def load_unet(source: Source, dtype: torch.dtype) -> KandinskyUNet:
    """The UNet of any Kandinsky 2.2 decoder repo: text-to-image, inpainting (9 input channels) or depth ControlNet
    (an image hint); its `config.kind` says which."""
    return _load(
        source, "unet", "UNet2DConditionModel", UNetConfig, KandinskyUNet, dtype, "decoder UNet", DECODER_SCHEDULER
    )


def load_movq(source: Source, dtype: torch.dtype) -> MoVQ:
    return _load(source, "movq", "VQModel", MoVQConfig, MoVQ, dtype, "MoVQ")


TEXT_TOWER, IMAGE_TOWER = "CLIP text encoder", "CLIP image encoder"


def load_text_encoder(source: Source, dtype: torch.dtype) -> tuple[CLIPTokenizer, CLIPTextModelWithProjection]:
    """The prior repo's CLIP tokenizer and text tower."""
    fetch_config(source, "text_encoder", expect="CLIPTextModelWithProjection")
    folder = fetch_weights(source, "text_encoder", TRANSFORMERS_WEIGHTS).parent
    tokenizer_folder = fetch_tokenizer(source, "tokenizer")
    tokenizer = clip_tokenizer(tokenizer_folder)
    encoder = clip_model("CLIPTextModelWithProjection", folder, dtype, TEXT_TOWER)
    if len(tokenizer) > encoder.config.vocab_size:  # ids past the embedding table would fail at the first prompt
        raise CheckpointError(
            f"The CLIP tokenizer in '{tokenizer_folder}' has {len(tokenizer)} tokens, more than the text encoder's "
            f"{encoder.config.vocab_size}: the tokenizer/ and text_encoder/ folders do not belong together."
        )
    return tokenizer, encoder


def load_image_encoder(source: Source, dtype: torch.dtype) -> tuple[CLIPImageProcessor, CLIPVisionModelWithProjection]:
    """The prior repo's CLIP image preprocessing and ViT-bigG image tower."""
    fetch_config(source, "image_encoder", expect="CLIPVisionModelWithProjection")
    folder = fetch_weights(source, "image_encoder", TRANSFORMERS_WEIGHTS).parent
    processor = clip_processor(fetch_file(source, "image_processor", "preprocessor_config.json").parent)
    encoder = clip_model("CLIPVisionModelWithProjection", folder, dtype, IMAGE_TOWER)
    side = processor(images=[numpy.zeros((8, 8, 3), numpy.uint8)], return_tensors="pt").pixel_values.shape[-2:]
    if tuple(side) != (encoder.config.image_size,) * 2:  # the tower has position embeddings for one size only
        raise CheckpointError(
            f"The CLIP image processor of {source.describe()} makes {side[1]}x{side[0]} px images, but the image "
            f"encoder takes {encoder.config.image_size} px: image_processor/ and image_encoder/ do not belong together."
        )
    return processor, encoder


def image_encoder_weights(source: Source) -> Path:
    """The prior repo's image tower weights (config.json beside them), checked complete: for ComfyUI's CLIP_VISION."""
    fetch_config(source, "image_encoder", expect="CLIPVisionModelWithProjection")
    weights = fetch_weights(source, "image_encoder", TRANSFORMERS_WEIGHTS)
    if weights.suffix == ".safetensors":
        verify_safetensors(weights)
    return weights


def _zero_embed_key(weights: Path, dtype: torch.dtype) -> str:
    """Names the weight file's content: the HF cache stores blobs under their hash, and a file replaced in a
    folder changes size or mtime, so new weights never meet an old embedding."""
    stat = weights.stat()
    identity = f"{weights.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{dtype}"
    return hashlib.sha256(identity.encode()).hexdigest()[:24]


def zero_image_embed(
    source: Source, dtype: torch.dtype, cache: Path, place: Callable[[torch.nn.Module], torch.nn.Module]
) -> torch.Tensor:
    """[1, D] image embedding of an all-zero image, computed once per checkpoint and dtype, then read from `cache`.

    It stands in for "no negative prompt" in the decoder; caching it means text-to-image never needs the 3.7 GB
    image encoder in memory again after the first run. `place` readies the encoder on the compute device.
    """
    config = fetch_config(source, "image_encoder", expect="CLIPVisionModelWithProjection")
    weights = fetch_weights(source, "image_encoder", TRANSFORMERS_WEIGHTS)  # on disk after the first time
    path = cache / "zero_image_embeds" / f"{_zero_embed_key(weights, dtype)}.safetensors"
    width = config.get("projection_dim")

    def valid(embed: torch.Tensor) -> bool:
        return (
            embed.dtype == torch.float32
            and embed.ndim == 2
            and embed.shape[0] == 1
            and (not isinstance(width, int) or embed.shape[1] == width)
        )

    stored = read_cache_file(path, ("embed",), valid, "the zero-image embedding", "computing it again")
    if stored is not None:
        return stored[0]
    with torch.inference_mode():
        encoder = clip_model("CLIPVisionModelWithProjection", weights.parent, dtype, IMAGE_TOWER)
        embed = clip.zero_image_embed(place(encoder)).float().cpu()
    write_cache_file(path, lambda tmp: save_file({"embed": embed.contiguous()}, tmp))
    return embed


@dataclass
class PromptEmbeds:
    """DALLE_TEXT_EMBEDS: one prompt's embeddings, with the empty prompt's (the prior's unconditional input)."""

    text: str
    prompt: TextEmbeds
    empty: TextEmbeds

    def __repr__(self) -> str:  # ComfyUI puts node inputs into error reports: keep tensors out of them
        return f"PromptEmbeds({self.text!r})"


@dataclass
class ImageEmbeds:
    """DALLE_IMAGE_EMBEDS: [B, D] CLIP image embeddings and the [B, D] negative ones the decoder guides away from."""

    positive: torch.Tensor
    negative: torch.Tensor

    def __repr__(self) -> str:
        return f"ImageEmbeds({' x '.join(map(str, self.positive.shape))}, {self.positive.dtype})"


def encode_prompt(
    tokenizer: CLIPTokenizer, load: Callable[[], CLIPTextModelWithProjection], text: str, store: torch.device
) -> PromptEmbeds:
    """The prompt's CLIP embeddings, and the empty prompt's, kept on `store` between stages. The text is checked
    before `load()` readies the text tower (as every stage function here does with its inputs and its model)."""
    check_prompt(text, hint=NO_NEGATIVE_HINT)
    encoder = load()
    with torch.inference_mode():
        both = clip.encode_text(tokenizer, encoder, [text, ""])
    rows = [
        TextEmbeds(both.pooled[i : i + 1], both.states[i : i + 1], both.mask[i : i + 1]).to(store, both.pooled.dtype)
        for i in range(2)
    ]
    return PromptEmbeds(text, rows[0], rows[1])


def encode_images(
    processor: CLIPImageProcessor, encoder: CLIPVisionModelWithProjection, images: torch.Tensor, store: torch.device
) -> ImageEmbeds:
    """IMAGE [B, H, W, 3|4] in 0..1 → their CLIP image embeddings, guided away from the all-zero image's."""
    images = check_image(images)
    with torch.inference_mode():
        embeds = clip.encode_images(processor, encoder, images)
        zero = clip.zero_image_embed(encoder).expand_as(embeds)
    return ImageEmbeds(embeds.float().to(store), zero.float().to(store))


def _repeat(embeds: TextEmbeds, n: int) -> TextEmbeds:
    return TextEmbeds(*(t.repeat_interleave(n, dim=0) for t in (embeds.pooled, embeds.states, embeds.mask)))


def _cat(*parts: TextEmbeds) -> TextEmbeds:
    return TextEmbeds(*(torch.cat(ts) for ts in zip(*((p.pooled, p.states, p.mask) for p in parts), strict=True)))


def _graphed_denoise(denoise: sampling.Denoise, x: torch.Tensor) -> sampling.Denoise:
    """The prior's guided `denoise(x, t)` as a CUDA graph for one sampling run (see cuda_graph.GraphedCall).

    A prior step is ~300 small kernels (20 layers over 81 tokens): launched from Python they leave the GPU idle.
    Everything but x [rows, D] and the 0-d int64 timestep on the device is fixed for the run (the text
    conditioning, the guidance scale), so the recording replays each step with the same kernels, and the same
    numbers as eager calls. The warm-up and recording calls run the model only: they draw no noise from the
    sampling generator. The graph returns its output buffer, overwritten by the next step's replay; the prior
    sampler only reads it before that (sampling._posterior_loop: clamped into a new x0 tensor right away, on the
    same stream as the next replay), so no copy is needed.
    """
    timestep = torch.zeros((), dtype=torch.long, device=x.device)  # any value: the warm-up only needs the shape
    return cuda_graph.graphed(denoise, x, timestep, what="Kandinsky 2.2 prior")


def prior_sample(
    load: Callable[[], PriorTransformer],
    prompt: PromptEmbeds,
    negative: PromptEmbeds | None,
    batch_size: int,
    guidance: float,
    schedule: sampling.PriorSchedule,
    generator: torch.Generator,
    callback: sampling.Callback | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sample CLIP image embeddings for one prompt: ([B, D] embeddings, [B, D] negative embeddings or None).

    Without a negative prompt the empty prompt is the prior's unconditional input. With one, the reference samples
    its image embedding alongside (guided against itself, which is just its conditional prediction), so noise is
    drawn for 2B rows; we skip the redundant unconditional half of those rows (3B model rows instead of 4B).

    On a CUDA device the guided model call is recorded once as a CUDA graph and replayed at every step, unless
    DALLE_NODES_CUDA_GRAPHS=0 (same embeddings, slower); see _graphed_denoise.
    """
    check_range("batch_size", batch_size, 1, MAX_BATCH)
    check_range("guidance", guidance, 0.0, MAX_GUIDANCE)
    prior = load()
    param = next(prior.parameters())
    place = lambda e: _repeat(e.to(param.device, param.dtype), batch_size)  # noqa: E731
    pos, rows = place(prompt.prompt), batch_size
    if negative is not None:
        neg, rows = place(negative.prompt), 2 * batch_size
    guided = guidance > 1
    if negative is None:
        text = _cat(place(prompt.empty), pos) if guided else pos
    else:
        text = _cat(neg, pos, neg) if guided else _cat(pos, neg)

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not guided:
            return prior(x, t, text.pooled, text.states, text.mask)
        model_x = torch.cat([x, x]) if negative is None else torch.cat([x[:batch_size], x])
        out = prior(model_x, t, text.pooled, text.states, text.mask)
        uncond, cond, rest = out[:batch_size], out[batch_size : 2 * batch_size], out[2 * batch_size :]
        return torch.cat([uncond + guidance * (cond - uncond), rest])

    with torch.inference_mode():
        x = sampling.randn((rows, prior.config.embedding_dim), generator, param.device, param.dtype)
        if cuda_graph.wanted() and cuda_graph.can_capture(x.device):
            denoise = _graphed_denoise(denoise, x)
        embeds = prior.unnormalize(sampling.sample_prior(denoise, x, schedule, generator, callback))
    return embeds[:batch_size], (embeds[batch_size:] if negative is not None else None)


def prior_rows(batch_size: int, guidance: float, negative: bool) -> int:
    """Rows of each prior forward: the prompt's, the unconditional ones with guidance, the negative prompt's."""
    return batch_size * (1 + (guidance > 1) + negative)


def latent_size(width: int, height: int) -> tuple[int, int]:
    """Latent (height, width) for an image size: MoVQ downsamples by 8, and sizes must be multiples of 64."""
    for name, value in (("width", width), ("height", height)):
        if not (_is_int(value) and value % SIZE_STEP == 0 and MIN_SIZE <= value <= MAX_SIZE):
            finite = isinstance(value, (int, float)) and math.isfinite(value)
            nearest = max(MIN_SIZE, min(MAX_SIZE, round(value / SIZE_STEP) * SIZE_STEP)) if finite else 768
            raise ValueError(
                f"{name} {value} is not supported: use a multiple of {SIZE_STEP} between {MIN_SIZE} and "
                f"{MAX_SIZE} (e.g. {nearest})."
            )
    return height // LATENT_SCALE, width // LATENT_SCALE


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def decoder_start(
    embeds: ImageEmbeds,
    schedule: sampling.DecoderSchedule,
    size: tuple[int, int] | None,
    latent: dict | None,
    generator: torch.Generator,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The latent sampling starts from, on the UNet's `device` in its `dtype`: noise of latent `size` (h, w) for
    text-to-image, or a LATENT (an encoded image, batch 1 or the embeddings') noised to the schedule's start for
    image-to-image. The noise is drawn on the CPU in float32 and rounded as diffusers' pipelines round it (cast, then
    scaled), so a seed gives the same image on any device."""
    rows = embeds.positive.shape[0]
    if latent is None:
        if schedule.start:
            raise ValueError("denoise below 1 needs a starting latent: connect one (e.g. from DALL·E VQ Encode).")
        return sampling.initial_noise((rows, LATENT_CHANNELS, *size), schedule, generator, device, dtype)
    if isinstance(latent, dict) and latent.get("noise_mask") is not None:  # not sampled whole without a word
        raise ValueError(
            "This LATENT carries a noise mask, which only an inpainting decoder reads: load "
            f"{INPAINT_REPO}, or sample it with KSampler and the loader's MODEL, or remove Set Latent Noise Mask."
        )
    samples = movq_latents(latent)
    check_sampled_size(samples)
    if samples.shape[0] not in (1, rows):
        raise ValueError(f"The latent batch ({samples.shape[0]}) must be 1 or match the embeddings ({rows}).")
    return sampling.noise_latent(samples.to(device, dtype).expand(rows, -1, -1, -1), schedule, generator)


def check_sampled_size(samples: torch.Tensor) -> None:
    """Latents [B, C, h, w] of a size the decoder samples (that of an image latent_size takes)."""
    height, width = samples.shape[2:]
    try:
        latent_size(width * LATENT_SCALE, height * LATENT_SCALE)
    except ValueError as error:
        raise ValueError(
            f"The latent is {width}x{height}, an image of {width * LATENT_SCALE}x{height * LATENT_SCALE} px: the "
            f"decoder cannot sample that size. {error}"
        ) from None


def movq_latents(latent: object) -> torch.Tensor:
    """The samples of a MoVQ LATENT, checked."""
    return check_latent(latent, LATENT_CHANNELS, "Kandinsky 2.2 (MoVQ)", "DALL·E VQ Encode")


@dataclass(frozen=True)
class Edit:
    """What an edit decoder reads beside the noisy latent, for every row (batches of 1 serve them all). Inpainting:
    the picture's latents [B, 4, h, w], the keep-mask [B, 1, h, w] (1 = kept) and the unit noise the picture is
    noised with between steps (inpaint_start draws it). Depth ControlNet: the hint [B, 3, 8h, 8w] in 0..1."""

    picture: torch.Tensor | None = None
    keep: torch.Tensor | None = None
    noise: torch.Tensor | None = None
    hint: torch.Tensor | None = None

    def __repr__(self) -> str:
        return f"Edit({', '.join(name for name in ('picture', 'hint') if getattr(self, name) is not None)})"


KIND_NAMES = {"text2image": "text-to-image", "inpaint": "an inpainting one", "controlnet": "a depth ControlNet"}


def check_edit_inputs(kind: str, latent: object, mask: object, hint: object = None) -> None:
    """The inputs a decoder of this kind (UNetConfig.kind) needs are there, and none it would ignore."""
    if kind == "controlnet" and hint is None:
        raise ValueError(
            "This is a depth ControlNet decoder: connect a hint (a depth map of the picture's size, e.g. from "
            f"DALL·E Depth Map). For text-to-image without one load {DECODER_REPO}."
        )
    if kind != "controlnet" and hint is not None:
        raise ValueError(
            f"A hint needs the depth ControlNet decoder: load {CONTROLNET_REPO} (this one is {KIND_NAMES[kind]})."
        )
    has_mask = mask is not None or (isinstance(latent, dict) and latent.get("noise_mask") is not None)
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
    if kind == "inpaint" and not has_mask:
        raise ValueError(
            "This is an inpainting decoder: connect a mask (1 = repaint; e.g. Load Image's MASK) beside the "
            f"picture's latent. For text-to-image load {DECODER_REPO}."
        )


def check_decoder_for(kind: str, editing: bool) -> None:
    """Kandinsky22 (the Python API and the command line) draws text-to-image with the text-to-image decoder and
    edits pictures with the inpainting one; `kind` is the loaded UNet's (UNetConfig.kind)."""
    if editing and kind != "inpaint":
        raise ValueError(
            f"Editing a picture needs the inpainting decoder: load {INPAINT_REPO} (this one is {KIND_NAMES[kind]})."
        )
    if not editing and kind == "inpaint":
        raise ValueError(
            f"This is the inpainting decoder: give a picture to edit, or load {DECODER_REPO} for text-to-image."
        )
    if kind == "controlnet":
        raise ValueError(
            "This is the depth ControlNet decoder, which needs a depth hint: use it through the nodes (DALL·E Decoder "
            f"Sample's hint input), or load {DECODER_REPO} for text-to-image."
        )


def inpaint_edit(latent: object, mask: object, rows: int) -> Edit:
    """The picture's LATENT (from DALL·E VQ Encode) and a MASK (1 = repaint, at the picture's size) → an inpainting
    Edit; the mask may also come as the LATENT's noise_mask (VAE Encode (for Inpainting), Set Latent Noise Mask).
    check_edit_inputs says first, in the user's terms, when neither is there."""
    picture = movq_latents(latent)
    check_sampled_size(picture)
    if mask is None:
        mask = latent.get("noise_mask")
    height, width = (side * LATENT_SCALE for side in picture.shape[2:])
    keep = masks.keep_mask(mask, height, width, tuple(picture.shape[2:]))
    for name, batch in (("picture latent", picture.shape[0]), ("mask", keep.shape[0])):
        if batch not in (1, rows):
            raise ValueError(f"The {name} batch ({batch}) must be 1 or match the embeddings ({rows}).")
    return Edit(picture, keep)


def hint_edit(hint: object, latent_size: tuple[int, int], rows: int) -> Edit:
    """A hint IMAGE (a depth map; 1 or `rows` of them) → the ControlNet's Edit for latents of `latent_size`."""
    height, width = (side * LATENT_SCALE for side in latent_size)
    pixels = masks.hint_pixels(hint, height, width)
    if pixels.shape[0] not in (1, rows):
        raise ValueError(f"The hint batch ({pixels.shape[0]}) must be 1 or match the embeddings ({rows}).")
    return Edit(hint=pixels)


def inpaint_start(
    edit: Edit, schedule: sampling.DecoderSchedule, rows: int, generator: torch.Generator, device, dtype
) -> tuple[torch.Tensor, Edit]:
    """The latent inpainting starts from: noise (denoise 1, the reference's only mode), or with denoise below 1
    the picture noised to the schedule's start, so the repainted region keeps some of what was there. The Edit
    returned holds the noise, which noises the kept picture between steps: unit noise (the reference reuses its
    scaled starting latent, the same for every sampler but euler_ancestral, where it would over-noise)."""
    picture = edit.picture.to(device, dtype).expand(rows, -1, -1, -1)
    noise = sampling.randn(picture.shape, generator, device, dtype)
    if schedule.start:
        x = sampling.noise_to(picture, noise, schedule, schedule.start)
    else:
        x = noise * schedule.init_noise_sigma
    return x, replace(edit, noise=noise)


def decoder_sample(
    load: Callable[[], Callable[..., torch.Tensor]],
    embeds: ImageEmbeds,
    x: torch.Tensor,
    schedule: sampling.DecoderSchedule,
    guidance: float,
    generator: torch.Generator,
    callback: sampling.Callback | None = None,
    edit: Edit | None = None,
) -> torch.Tensor:
    """Sample MoVQ latents [B, 4, h, w] from `x` (decoder_start's or inpaint_start's, on the UNet's device and
    dtype), conditioned on image embeddings, as KandinskyV22Pipeline (and its img2img twin) does; with an inpainting
    `edit`, as KandinskyV22InpaintPipeline does: the UNet also reads the picture's latents (zero where repainted) and
    the keep-mask, and after every step the kept region is the picture noised to the next step's level (the clean
    picture after the last); with a hint, as KandinskyV22ControlnetPipeline (and its img2img twin) does. `load()`
    readies the UNet and returns the call to make of it: the module, or its compiled call.
    """
    check_range("guidance", guidance, 0.0, MAX_GUIDANCE)
    unet = load()
    guided = guidance > 1
    cond = torch.cat([embeds.negative, embeds.positive]) if guided else embeds.positive
    cond = cond.to(x.device, x.dtype)
    rows = x.shape[0]
    after_step = extra = hint = None
    if edit is not None and edit.keep is not None:
        if edit.noise is None:
            raise ValueError("Start inpainting with inpaint_start: it draws the noise the kept picture is noised with.")
        edit_inputs = (edit.picture, edit.keep, edit.noise)
        picture, keep, noise = (t.to(x.device, x.dtype).expand(rows, -1, -1, -1) for t in edit_inputs)
        extra = torch.cat([picture * keep, keep], dim=1)

        def after_step(i: int, x: torch.Tensor) -> torch.Tensor:
            kept = sampling.noise_to(picture, noise, schedule, i + 1)
            return (keep * kept + (1 - keep) * x).to(x.dtype)

    if edit is not None and edit.hint is not None:
        hint = edit.hint.to(x.device, x.dtype).expand(rows, -1, -1, -1)
        hint = torch.cat([hint, hint]) if guided else hint
    extras = {} if hint is None else {"hint": hint}

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        model_in = x if extra is None else torch.cat([x, extra], dim=1)
        model_in = torch.cat([model_in, model_in]) if guided else model_in
        eps = unet(model_in, t, cond, **extras)[:, : x.shape[1]]  # ε only: drop the learned-variance half
        if not guided:
            return eps
        uncond, text = eps.chunk(2)
        return uncond + guidance * (text - uncond)

    with torch.inference_mode():
        return sampling.sample_decoder(denoise, x, schedule, generator, callback, after_step)


def unchanged_latents(edit: Edit, rows: int) -> torch.Tensor | None:
    """The picture's latents for every row when the mask repaints nothing (there is nothing to sample), else None."""
    if not masks.repaints_nothing(edit.keep):
        return None
    log.info(
        "The mask repaints nothing: it is below 0.5 wherever the decoder samples it (every 8 px; thinner strokes "
        "between those points are missed). The picture is returned unchanged."
    )
    return edit.picture.float().expand(rows, -1, -1, -1).clone()


def movq_encode(load: Callable[[], MoVQ], images: torch.Tensor) -> torch.Tensor:
    """IMAGE [B, H, W, 3|4] in 0..1 → MoVQ latents [B, 4, H/8, W/8], float32, one at a time; `load()` readies MoVQ
    once the images are checked. Sides must be sizes the decoder samples (multiples of 64), so the latent can go
    on to DALL·E Decoder Sample."""
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


@dataclass
class Kandinsky22:
    """DALL·E 2 on Kandinsky 2.2 in plain Python, no ComfyUI needed: the same stage functions the nodes run.

    ```python
    k = Kandinsky22.load(prior="kandinsky-community/kandinsky-2-2-prior",
                         decoder="kandinsky-community/kandinsky-2-2-decoder", dtype="auto")
    images = k.generate("a red fox", seed=42)  # list of PIL images
    ```
    Edits (inpainting, outpainting) need the inpainting decoder: `Kandinsky22.load(decoder=INPAINT_REPO)`, then
    `k.edit("a red fox", "photo.png", mask="mask.png")`. Every model stays on `device` (about 5.7 GiB in bf16); the
    image encoder is loaded only on the first run of a checkpoint, for the zero-image embedding, which is then cached
    on disk.
    """

    prior: PriorTransformer
    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModelWithProjection
    unet: KandinskyUNet
    movq: MoVQ
    zero_embed: torch.Tensor
    prior_source: Source | None = None  # for the image tower, which best_of ranks with (loaded on its first use)
    default_ranker: Ranker | None = field(default=None, repr=False)

    @classmethod
    def load(
        cls,
        prior: str = PRIOR_REPO,
        decoder: str = DECODER_REPO,
        dtype: str = "auto",
        device: str | torch.device | None = None,
    ) -> Kandinsky22:
        """Hub repo ids or local folders in the repos' layout; downloads go to $DALLE_NODES_HOME or the Hugging
        Face cache. dtype: auto (bf16 on GPUs that support it, else fp16; fp32 on the CPU), fp32, fp16 or bf16."""
        device = torch.device(device) if device is not None else default_device()
        torch_dtype = resolve_dtype(dtype, device)
        store = default_store()
        prior_files = FETCHES["zero_image_embed"] + FETCHES["text_encoder"] + FETCHES["prior"]
        prior_source = source_from_input(prior, None, store, ConsoleDownload(prior_files))
        decoder_source = source_from_input(decoder, None, store, ConsoleDownload(FETCHES["unet"] + FETCHES["movq"]))
        placed = lambda module: module.to(device)  # noqa: E731
        zero = zero_image_embed(prior_source, torch_dtype, cache_folder(store), placed)
        tokenizer, text_encoder = load_text_encoder(prior_source, torch_dtype)
        return cls(
            placed(load_prior(prior_source, torch_dtype)),
            tokenizer,
            placed(text_encoder),
            placed(load_unet(decoder_source, torch_dtype)),
            placed(load_movq(decoder_source, torch_dtype)),
            zero,
            prior_source,
        )

    def generate(self, prompt: str, ranker: Ranker | None = None, **settings) -> list[Image.Image]:
        """Text → images; `settings` are those of `Request` (negative, seed, steps, prior_steps, guidance,
        prior_guidance, width, height, batch_size, sampler, karras, best_of), all checked before any work.

        With best_of, the batch_size images CLIP ranks highest of best_of samples, best first, each with its score in
        `image.info["clip_score"]`; `ranker` (rerank.Ranker) defaults to the prior repo's own CLIP towers (no other
        download; the image tower, 3.4 GiB in bf16, stays loaded beside the others)."""
        return self.run(Request(prompt, **settings), ranker)

    def edit(
        self,
        prompt: str,
        image: edit_pictures.Picture,
        mask: edit_pictures.Picture | None = None,
        outpaint: edit_pictures.Outpaint | None = None,
        ranker: Ranker | None = None,
        **settings,
    ) -> list[Image.Image]:
        """Repaint part of a picture (a PIL image or an image file) from the prompt: where `mask` is white (or
        transparent), or, without a mask, where the picture is transparent; `outpaint` adds borders to paint, in
        pixels: 256 (every side), {"left": 256, "right": 256}, or (left, top, right, bottom). The result has the
        picture's size with the borders (sides not multiples of 64 are resized to the nearest ones first). Needs
        the inpainting decoder (INPAINT_REPO). `settings` and `ranker` are generate's, but width and height."""
        return self.run(Request(prompt, image=image, mask=mask, outpaint=outpaint, **settings), ranker)

    def run(self, request: Request, ranker: Ranker | None = None) -> list[Image.Image]:
        """The node chain Text Encode → Prior Sample → Decoder Sample → VQ Decode (→ CLIP Rerank with best_of), as it
        runs for the same seed; for an edit, with VQ Encode of the picture and the mask into Decoder Sample."""
        images = self.sample(request)
        if request.best_of is None:
            return to_pil(images)
        ranker = ranker or self.prior_ranker()
        return rerank.scored_pil(rerank.rerank(ranker, images, request.prompt, request.batch_size))

    def prior_ranker(self) -> Ranker:
        """The prior repo's CLIP text and image towers as a ranker; the image tower loads on the first call."""
        if self.default_ranker is None:
            if self.prior_source is None:
                raise ValueError(
                    "best_of needs a ranker: pass one (rerank.Ranker), or make this with Kandinsky22.load."
                )
            processor, image_encoder = load_image_encoder(self.prior_source, self.text_encoder.dtype)
            image_encoder.to(self.text_encoder.device)
            self.default_ranker = Ranker(self.tokenizer, processor, lambda: self.text_encoder, lambda: image_encoder)
        return self.default_ranker

    def sample(self, request: Request) -> torch.Tensor:
        """Every image the request draws, as IMAGE [N, H, W, 3] on the CPU: best_of of them in batches of batch_size
        (the prior's and the decoder's generators run on through the batches: the first batch is the one without
        best_of), else batch_size. A mask that repaints nothing gives the picture itself, with a log line."""
        check_decoder_for(self.unet.config.kind, request.edit is not None)
        count = request.best_of or request.batch_size
        edit = self.inpainting(request)
        if edit is not None and unchanged_latents(edit, 1) is not None:
            return request.edit[0].expand(count, -1, -1, -1).clone()
        store = torch.device("cpu")
        text_encoder = lambda: self.text_encoder  # noqa: E731
        positive = encode_prompt(self.tokenizer, text_encoder, request.prompt, store)
        negative = encode_prompt(self.tokenizer, text_encoder, request.negative, store) if request.negative else None
        sizes = rerank.batches(count, request.batch_size)
        bar = console_progress((request.prior_steps + request.steps) * len(sizes), "Kandinsky 2.2")
        step = lambda i, total, x: bar.update()  # noqa: E731
        prior_generator = torch.Generator().manual_seed(request.seed)
        decoder_generator = torch.Generator().manual_seed(request.seed)
        param = next(self.unet.parameters())
        schedule = request.decoder_schedule
        images = []
        try:
            for size in sizes:
                embeds, negative_image = prior_sample(
                    lambda: self.prior,
                    positive,
                    negative,
                    size,
                    request.prior_guidance,
                    request.prior_schedule,
                    prior_generator,
                    step,
                )
                if negative_image is None:
                    negative_image = self.zero_embed.expand(size, -1)
                image_embeds = ImageEmbeds(embeds.float(), negative_image.float().to(embeds.device))
                if edit is None:
                    x = decoder_start(
                        image_embeds, schedule, request.latent_size, None, decoder_generator, param.device, param.dtype
                    )
                    batch_edit = None
                else:
                    x, batch_edit = inpaint_start(edit, schedule, size, decoder_generator, param.device, param.dtype)
                latents = decoder_sample(
                    lambda: self.unet, image_embeds, x, schedule, request.guidance, decoder_generator, step, batch_edit
                )
                images.append(movq_decode(self.movq, latents, PLAIN, store))
        finally:
            bar.close()
        return torch.cat(images)

    def inpainting(self, request: Request) -> Edit | None:
        """An edit request's picture, VQ-encoded once for every batch, with its mask; None for text-to-image."""
        if request.edit is None:
            return None
        image, mask = request.edit
        return inpaint_edit({"samples": movq_encode(lambda: self.movq, image)}, mask, 1)


@dataclass(frozen=True)
class Request:
    """The settings of one run, checked when made: before any model loads, a mistake is reported.

    Text-to-image draws width x height (default 768 x 768). An edit repaints part of `image` (a PIL image or an
    image file): where `mask` is white or transparent, or, without a mask, where the picture is transparent, and
    `outpaint`'s borders (edit_pictures.prepare); its size is the picture's, so width and height are left out."""

    prompt: str
    negative: str | None = None
    seed: int = 0
    steps: int = 50
    prior_steps: int = 25
    guidance: float = 4.0
    prior_guidance: float = 4.0
    width: int | None = None
    height: int | None = None
    batch_size: int = 1
    sampler: str = "ddpm"
    karras: bool = False
    best_of: int | None = None  # sample this many, keep the batch_size best by CLIP score
    image: edit_pictures.Picture | None = None
    mask: edit_pictures.Picture | None = None
    outpaint: edit_pictures.Outpaint | None = None

    def __post_init__(self) -> None:
        check_prompt(self.prompt)
        if self.negative is not None:
            check_prompt(self.negative, "what the image should not show", "negative prompt", " Or pass None for none.")
        check_range("seed", self.seed, 0, MAX_SEED)
        for name in ("guidance", "prior_guidance"):
            check_range(name, getattr(self, name), 0.0, MAX_GUIDANCE)
        check_range("batch_size", self.batch_size, 1, MAX_BATCH)
        rerank.check_best_of(self.best_of, self.batch_size)
        if self.image is None and (self.mask is not None or self.outpaint is not None):
            raise ValueError("A mask or outpaint edits a picture: give the picture to edit too (image, --image).")
        if self.image is not None and (self.width is not None or self.height is not None):
            raise ValueError(
                "An edit keeps the picture's size (with its outpaint borders): leave width and height out, or resize "
                "the picture first."
            )
        self.prior_schedule, self.decoder_schedule, self.latent_size  # noqa: B018  (built now: they check the rest)

    @cached_property
    def prior_schedule(self) -> sampling.PriorSchedule:
        return sampling.prior_schedule(self.prior_steps)

    @cached_property
    def decoder_schedule(self) -> sampling.DecoderSchedule:
        return sampling.decoder_schedule(self.sampler, self.steps, self.karras)

    @cached_property
    def edit(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """An edit's picture as IMAGE [1, H, W, 3] and MASK [1, H, W] (1 = repaint); None for text-to-image."""
        if self.image is None:
            return None
        return edit_pictures.prepare(self.image, self.mask, self.outpaint, SIZE_STEP, MAX_SIZE)

    @cached_property
    def latent_size(self) -> tuple[int, int]:
        if self.edit is not None:
            height, width = self.edit[0].shape[1:3]
            return latent_size(width, height)
        width, height = (DEFAULT_SIZE if side is None else side for side in (self.width, self.height))
        return latent_size(width, height)
