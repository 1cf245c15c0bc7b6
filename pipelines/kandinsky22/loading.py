"""Kandinsky 2.2's checkpoints → our modules: the prior, the decoder UNet (text-to-image, inpainting, depth
ControlNet) and MoVQ in our own PyTorch, the CLIP towers through transformers, and the all-zero image's CLIP
embedding cached on disk (the decoder's "no negative prompt").

The repos are diffusers' layout (kandinsky-community/kandinsky-2-2-prior, -decoder, -decoder-inpaint,
-controlnet-depth); a local folder of that layout works as well. Loading is strict: every tensor of a checkpoint
has a home in our module, and the other way round.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy
import torch
from safetensors.torch import save_file

from ...engine.caches import read_cache_file, write_cache_file
from ...engine.checkpoints import CheckpointError, load_strict, read_state_dict, verify_safetensors
from ...engine.hub import TRANSFORMERS_WEIGHTS, MissingFile, Source, fetch_config, fetch_file, fetch_weights
from ...models import clip
from ...models.movq import MoVQ, MoVQConfig
from ...models.prior import PriorConfig, PriorTransformer
from ...models.unet import KandinskyUNet, UNetConfig
from ..clip_loading import clip_model, clip_processor, clip_tokenizer, fetch_tokenizer

if TYPE_CHECKING:  # transformers takes seconds to import: ComfyUI's start-up should not pay for it
    from transformers import (
        CLIPImageProcessor,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        CLIPVisionModelWithProjection,
    )

PRIOR_REPO = "kandinsky-community/kandinsky-2-2-prior"
DECODER_REPO = "kandinsky-community/kandinsky-2-2-decoder"
INPAINT_REPO = "kandinsky-community/kandinsky-2-2-decoder-inpaint"
CONTROLNET_REPO = "kandinsky-community/kandinsky-2-2-controlnet-depth"
# Files each loader asks the Hub for (configs counted each time they are read), for "file k of n" in download bars;
# tests/pipelines/test_api.py holds them to the loaders.
FETCHES = {
    "prior": 3,
    "text_encoder": 6,
    "image_encoder": 3,
    "zero_image_embed": 2,
    "decoder_kind": 1,  # model_index.json, read for what the repo is
    "prior_kind": 1,  # the same for the prior
    "unet": 3,
    "movq": 2,
}
# What a decoder or prior repo must not be, by its model_index.json's _class_name: refused before anything loads.
_KARLO = {
    "UnCLIPPipeline": "Karlo (DALL·E 2 as the paper drew it): load it with Karlo.load(…) or --model karlo",
    "UnCLIPImageVariationPipeline": "Karlo's image-variations repo: load it with Karlo.load(…)",
}
_NOT_DECODERS = {**_KARLO, "KandinskyV22PriorPipeline": "the Kandinsky 2.2 prior: give it as prior=…"}
_NOT_PRIORS = {
    **_KARLO,
    **dict.fromkeys(
        ("KandinskyV22Pipeline", "KandinskyV22InpaintPipeline", "KandinskyV22ControlnetPipeline"),
        "a Kandinsky 2.2 decoder: give it as decoder=…",
    ),
}

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


def _refuse_by_index(source: Source, refused: dict[str, str], role: str) -> None:
    """Refuse, in one line and before any model loads, a repo whose model_index.json says it is no Kandinsky 2.2
    `role`; a folder without the index is judged by its configs when they load."""
    try:
        index = json.loads(fetch_file(source, "", "model_index.json").read_text(encoding="utf-8"))
    except (MissingFile, ValueError, OSError):
        return
    other = refused.get(index.get("_class_name") if isinstance(index, dict) else None)
    if other is not None:
        raise CheckpointError(f"{source.describe()} is {other}; it is not a Kandinsky 2.2 {role} ({role}=…).")


def check_decoder_repo(source: Source) -> None:
    _refuse_by_index(source, _NOT_DECODERS, "decoder")


def check_prior_repo(source: Source) -> None:
    _refuse_by_index(source, _NOT_PRIORS, "prior")


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
