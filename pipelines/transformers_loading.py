"""transformers models and image processors from checkpoint files, under our loading rules: the settings of every
config checked (engine.checkpoints.config_settings), weights safetensors first and pickles only through torch's
weights_only path, every key and tensor type checked, every problem a CheckpointError naming the folder. CLIP's parts
(clip_loading.py) and the depth estimator (depth.py) load through here."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import torch

from ..engine.checkpoints import (
    CheckpointError,
    check_tensor_types,
    config_settings,
    error_summary,
    read_json,
    stored_dtypes,
    verify_safetensors,
)
from ..engine.hub import TRANSFORMERS_WEIGHTS

T = TypeVar("T")


# Settings transformers 4.x wrote into configs (generation and training options, CLIP's dropout) that build no part
# of a network at inference; transformers 5 keeps them as plain attributes.
_TRANSFORMERS_GENERIC = frozenset(
    "add_cross_attention bad_words_ids begin_suppress_tokens bos_token_id chunk_size_feed_forward "
    "cross_attention_hidden_size decoder_start_token_id diversity_penalty do_sample dropout early_stopping "
    "encoder_no_repeat_ngram_size eos_token_id exponential_decay_length_penalty finetuning_task forced_bos_token_id "
    "forced_eos_token_id id2label is_decoder is_encoder_decoder label2id length_penalty max_length min_length "
    "no_repeat_ngram_size num_beam_groups num_beams num_return_sequences output_attentions output_hidden_states "
    "output_scores pad_token_id prefix problem_type pruned_heads remove_invalid_values repetition_penalty return_dict "
    "return_dict_in_generate sep_token_id suppress_tokens task_specific_params temperature tf_legacy_loss "
    "tie_encoder_decoder tie_word_embeddings tokenizer_class top_k top_p torchscript typical_p use_bfloat16".split()
)

# How transformers 4.x configs of models built on a backbone (DPT, Depth Anything …) name it; transformers 5 takes
# them as plain keyword arguments. Known to transformers, which builds the backbone from them.
_BACKBONE_SETTINGS = frozenset({"backbone", "backbone_kwargs", "use_pretrained_backbone", "use_timm_backbone"})


def transformers_settings(config_cls: type, path: Path, what: str, legacy: Mapping[str, object] | None = None) -> dict:
    """A transformers config or preprocessor file under engine.checkpoints.config_settings's rule, with the class's own
    defaults (its constructor's settings, type-checked against a default instance). transformers 5's image
    processors take their settings as typed **kwargs (`valid_kwargs`): those are known too. `legacy`: settings older
    transformers wrote that today's ignores, each taken at the value that describes the network it builds (None:
    any value; they build nothing). The class's aliases (attribute_map) are taken at the values of their settings."""
    aliases = getattr(config_cls, "attribute_map", {})  # e.g. num_hidden_layers for encoder_layers
    if legacy or aliases:
        _check_legacy(read_json(path), legacy or {}, aliases, path, what)
    # OpenAI's own preprocessor configs give size and crop_size as one int, newer ones as a dict: transformers
    # reads both, so neither form is held to the other's type.
    defaults = {k: v for k, v in config_cls().to_dict().items() if k not in ("size", "crop_size")}
    known = set(inspect.signature(config_cls.__init__).parameters) | _TRANSFORMERS_GENERIC | _BACKBONE_SETTINGS
    known |= {"size", "crop_size"}
    known |= set(getattr(getattr(config_cls, "valid_kwargs", None), "__annotations__", {})) | set(legacy or {})
    known |= set(aliases)
    try:  # settings with a default are type-checked against it; the other known ones are transformers' business
        return config_settings(read_json(path), defaults, what, known - defaults.keys() - {"self", "kwargs"})
    except ValueError as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"'{path}': {error}. Delete it and download it again.") from error


def _check_legacy(
    config: object, legacy: Mapping[str, object], aliases: Mapping[str, str], path: Path, what: str
) -> None:
    """A legacy setting at another value than the one transformers builds, or an alias at another value than the
    setting it names, would describe a network transformers does not build."""
    if not isinstance(config, dict):
        return  # config_settings names that problem
    wanted_values = {**legacy, **{alias: config.get(key) for alias, key in aliases.items()}}
    for key, wanted in wanted_values.items():
        if key in config and wanted is not None and config[key] != wanted:
            raise CheckpointError(
                f"'{path}': {what} setting {key}={config[key]!r} asks for a network transformers does not build (it "
                f"builds {key}={wanted!r}): this checkpoint needs other code."
            )


def from_transformers(what: str, folder: Path, load: Callable[[], T]) -> T:
    """`load()` a part through transformers; whatever it raises (damaged or mistyped files surface as KeyError,
    TypeError, AttributeError … from deep inside) becomes one CheckpointError naming the folder."""
    try:
        return load()
    except CheckpointError:
        raise
    except Exception as error:
        raise CheckpointError(
            f"The {what} in '{folder}' could not be loaded ({type(error).__name__}: {error_summary(error)}). Its files "
            "are damaged or of another kind: delete them and download them again, or check the folder."
        ) from error


def transformers_model(
    class_name: str, folder: Path, dtype: torch.dtype, what: str, legacy: Mapping[str, object] | None = None
) -> torch.nn.Module:
    """A transformers model (`class_name`, e.g. CLIPModel or DPTForDepthEstimation) from its folder, every setting,
    key and tensor type checked (`legacy`: transformers_settings's); problems become CheckpointErrors."""
    import transformers
    from transformers.utils import logging as transformers_logging

    cls = getattr(transformers, class_name)
    transformers_settings(cls.config_class, folder / "config.json", what, legacy)
    for weights in folder.glob("*.safetensors"):
        verify_safetensors(weights)
    # What transformers will read (safetensors first), looked at before it does: int-typed weights would be cast
    # silently, and a pickle that runs code is refused here with our message.
    weights = next(folder / name for name in TRANSFORMERS_WEIGHTS if (folder / name).is_file())
    stored = stored_dtypes(weights)
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # we report key problems ourselves, as errors
    try:
        model, info = from_transformers(
            what,
            folder,
            lambda: cls.from_pretrained(folder, torch_dtype=dtype, output_loading_info=True, use_safetensors=None),
        )
    finally:
        transformers_logging.set_verbosity(verbosity)
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if problems:
        listed = "; ".join(f"{k.replace('_', ' ')}: {', '.join(map(str, list(v)[:3]))}" for k, v in problems.items())
        raise CheckpointError(f"The {what} in '{folder}' does not match its config ({listed}).")
    check_tensor_types(stored, {**dict(model.named_parameters()), **dict(model.named_buffers())}, f"{what} '{weights}'")
    return model.eval().requires_grad_(False)
