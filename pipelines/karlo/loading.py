"""Karlo's checkpoints → our modules: the prior (models/prior.py at 768 wide), the text projection, the 64 px decoder
and the two super-resolution UNets in our own PyTorch, CLIP ViT-L/14's towers and tokenizer through transformers.

The repos are diffusers' layout (kakaobrain/karlo-v1-alpha, and -image-variations, which has an image encoder instead
of the prior); a local folder of that layout works as well. Only the files a loader needs are fetched, safetensors
first: the repos hold a pickled `.bin` twin of every weight file, never fetched when a safetensors one exists.
diffusers 0.42 no longer loads these repos whole (their model_index.json names text_proj's library "unclip"); we
read each component on its own, so that does not matter here.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import torch

from ...engine.checkpoints import CheckpointError, load_strict, read_json, read_state_dict
from ...engine.hub import TRANSFORMERS_WEIGHTS, MissingFile, Source, fetch_config, fetch_file, fetch_weights
from ...models.karlo_unets import (
    KarloDecoder,
    KarloDecoderConfig,
    SuperResConfig,
    SuperResUNet,
    TextProjConfig,
    TextProjection,
)
from ...models.prior import PriorConfig, PriorTransformer
from ..clip_loading import clip_model, clip_processor, clip_tokenizer, fetch_tokenizer

if TYPE_CHECKING:  # transformers takes seconds to import: ComfyUI's start-up should not pay for it
    from transformers import (
        CLIPImageProcessor,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        CLIPVisionModelWithProjection,
    )

REPO = "kakaobrain/karlo-v1-alpha"
VARIATIONS_REPO = "kakaobrain/karlo-v1-alpha-image-variations"
TEXT2IMAGE, VARIATIONS = "UnCLIPPipeline", "UnCLIPImageVariationPipeline"  # model_index.json's _class_name
DECODER_SIZE, SUPER_RES_SIZE = 64, 256  # pixels a side: the decoder's images, and the super-resolution's
# Files each loader asks the Hub for (configs counted each time they are read), for "file k of n" in download bars.
FETCHES = {"kind": 1, "prior": 3, "text_encoder": 6, "text_proj": 2, "decoder": 3, "super_res": 5, "image_encoder": 3}

# The schedules karlo/sampling.py implements, by scheduler folder; a repo asking for anything else is refused.
_SCHEDULERS = {
    "prior_scheduler": {"prediction_type": "sample", "variance_type": "fixed_small_log", "clip_sample_range": 5.0},
    "decoder_scheduler": {"prediction_type": "epsilon", "variance_type": "learned_range", "clip_sample_range": 1.0},
    "super_res_scheduler": {"prediction_type": "epsilon", "variance_type": "fixed_small_log", "clip_sample_range": 1.0},
}
_SHARED_SCHEDULE = {"clip_sample": True, "num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2"}
# UnCLIPScheduler.__init__'s defaults (diffusers 0.42): what a scheduler config that leaves a key out asks for
_UNCLIP_DEFAULTS = {
    "num_train_timesteps": 1000,
    "variance_type": "fixed_small_log",
    "clip_sample": True,
    "clip_sample_range": 1.0,
    "prediction_type": "epsilon",
    "beta_schedule": "squaredcos_cap_v2",
}
# What other repos' model_index.json says they are, for the error that points the user to the right loader.
_KANDINSKY_DECODER = (
    "a Kandinsky 2.2 decoder: load it as one (Kandinsky22.load(decoder=…), --decoder, or Load DALL·E 2 Decoder "
    "(Kandinsky 2.2))"
)
_OTHER_KINDS = {
    "KandinskyV22PriorPipeline": "the Kandinsky 2.2 prior: load it as one (Kandinsky22.load(prior=…), --prior, or "
    "Load DALL·E 2 Prior)",
    **dict.fromkeys(
        ("KandinskyV22Pipeline", "KandinskyV22InpaintPipeline", "KandinskyV22ControlnetPipeline"), _KANDINSKY_DECODER
    ),
}


def repo_kind(source: Source) -> str:
    """TEXT2IMAGE or VARIATIONS, from the repo's model_index.json; another kind of repo is refused in one line, before
    any model loads."""
    try:
        kind = read_json(fetch_file(source, "", "model_index.json")).get("_class_name")
    except MissingFile:
        kind = None
    if kind in (TEXT2IMAGE, VARIATIONS):
        return kind
    other = _OTHER_KINDS.get(kind, f"a {kind} checkpoint" if kind else "no Karlo repo (it has no model_index.json)")
    raise CheckpointError(
        f"{source.describe()} is {other}, not Karlo: give {REPO} (text-to-image) or {VARIATIONS_REPO} (image "
        "variations), or a local folder of their layout."
    )


def karlo_kind(source: Source) -> str | None:
    """TEXT2IMAGE or VARIATIONS when the repo's model_index.json names one of Karlo's pipelines, else None: for
    loaders that take either family (a folder without the index, or with an unreadable one, is not Karlo; the other
    family's loading judges it)."""
    try:
        index = json.loads(fetch_file(source, "", "model_index.json").read_text(encoding="utf-8"))
    except (MissingFile, ValueError, OSError):
        return None
    kind = index.get("_class_name") if isinstance(index, dict) else None
    return kind if kind in (TEXT2IMAGE, VARIATIONS) else None


def check_scheduler(source: Source, subfolder: str) -> None:
    config = fetch_config(source, subfolder, "scheduler_config.json", expect="UnCLIPScheduler")
    expected = {**_SHARED_SCHEDULE, **_SCHEDULERS[subfolder]}
    settings = {**_UNCLIP_DEFAULTS, **config}
    different = {k: settings[k] for k, v in expected.items() if settings[k] != v}
    if different:
        raise CheckpointError(
            f"{source.describe()}/{subfolder} asks for {different}; only Karlo's schedule ({expected}) is supported."
        )


def _load(source: Source, subfolder: str, expect: str, config_cls, module_cls, dtype: torch.dtype, what: str):
    """A diffusers component of ours: its config checked and mapped, its weights (safetensors first) loaded strictly."""
    config = fetch_config(source, subfolder, expect=expect)
    try:
        parsed = config_cls.from_diffusers(config)
    except ValueError as error:
        raise CheckpointError(
            f"{source.describe()}/{subfolder}/config.json: {error}. Delete it and download it again, or check that "
            f"this is Karlo's {what}."
        ) from error
    _check_size(source, subfolder, config)
    weights = fetch_weights(source, subfolder)
    state = read_state_dict(weights, dtype)
    what = f"{what} of {source.describe()} ('{subfolder}/{weights.name}')"
    return load_strict(lambda: module_cls(parsed), state, what)


_SIZES = {"decoder": DECODER_SIZE, "super_res_first": SUPER_RES_SIZE}


def _check_size(source: Source, subfolder: str, config: dict) -> None:
    """The pipeline samples at the sizes Karlo was trained at: a config saying otherwise is another model."""
    size = config.get("sample_size")
    if subfolder in _SIZES and size is not None and size != _SIZES[subfolder]:
        raise CheckpointError(
            f"{source.describe()}/{subfolder}/config.json makes {size} px images; Karlo's {subfolder} makes "
            f"{_SIZES[subfolder]} px ones, the only size supported."
        )


def load_prior(source: Source, dtype: torch.dtype) -> PriorTransformer:
    check_scheduler(source, "prior_scheduler")
    return _load(source, "prior", "PriorTransformer", PriorConfig, PriorTransformer, dtype, "prior")


def load_text_proj(source: Source, dtype: torch.dtype) -> TextProjection:
    return _load(source, "text_proj", "UnCLIPTextProjModel", TextProjConfig, TextProjection, dtype, "text projection")


def load_decoder(source: Source, dtype: torch.dtype) -> KarloDecoder:
    check_scheduler(source, "decoder_scheduler")
    return _load(source, "decoder", "UNet2DConditionModel", KarloDecoderConfig, KarloDecoder, dtype, "64 px decoder")


def load_super_res(source: Source, dtype: torch.dtype) -> tuple[SuperResUNet, SuperResUNet]:
    """The UNet of every super-resolution step but the last, and the last step's."""
    check_scheduler(source, "super_res_scheduler")
    return tuple(
        _load(source, name, "UNet2DModel", SuperResConfig, SuperResUNet, dtype, "super-resolution UNet")
        for name in ("super_res_first", "super_res_last")
    )


def load_text_encoder(source: Source, dtype: torch.dtype) -> tuple[CLIPTokenizer, CLIPTextModelWithProjection]:
    """CLIP ViT-L/14's tokenizer and text tower."""
    fetch_config(source, "text_encoder", expect="CLIPTextModelWithProjection")
    folder = fetch_weights(source, "text_encoder", TRANSFORMERS_WEIGHTS).parent
    tokenizer_folder = fetch_tokenizer(source, "tokenizer")
    tokenizer = clip_tokenizer(tokenizer_folder)
    encoder = clip_model("CLIPTextModelWithProjection", folder, dtype, "CLIP text encoder")
    if len(tokenizer) > encoder.config.vocab_size:  # ids past the embedding table would fail at the first prompt
        raise CheckpointError(
            f"The CLIP tokenizer in '{tokenizer_folder}' has {len(tokenizer)} tokens, more than the text encoder's "
            f"{encoder.config.vocab_size}: the tokenizer/ and text_encoder/ folders do not belong together."
        )
    return tokenizer, encoder


def load_image_encoder(source: Source, dtype: torch.dtype) -> tuple[CLIPImageProcessor, CLIPVisionModelWithProjection]:
    """The variations repo's CLIP image preprocessing (feature_extractor/) and ViT-L/14 image tower."""
    try:
        processor_folder = fetch_file(source, "feature_extractor", "preprocessor_config.json").parent
    except MissingFile as error:
        raise CheckpointError(
            f"{source.describe()} has no image encoder: image variations need {VARIATIONS_REPO}."
        ) from error
    fetch_config(source, "image_encoder", expect="CLIPVisionModelWithProjection")
    folder = fetch_weights(source, "image_encoder", TRANSFORMERS_WEIGHTS).parent
    encoder = clip_model("CLIPVisionModelWithProjection", folder, dtype, "CLIP image encoder")
    return clip_processor(processor_folder), encoder
