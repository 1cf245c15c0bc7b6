"""CLIP's parts from checkpoint files through transformers (a well-kept implementation): models, tokenizer and image
preprocessing, every key checked and every problem a CheckpointError. The Kandinsky 2.2 prior's towers
(pipelines/kandinsky22.py) and the reranker's CLIPModel (pipelines/rerank.py) load through here."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy
import torch

from ..engine.hub import (
    TRANSFORMERS_WEIGHTS,
    CheckpointError,
    MissingFile,
    Source,
    check_tensor_types,
    config_settings,
    error_summary,
    fetch_file,
    read_json,
    stored_dtypes,
    verify_safetensors,
)

if TYPE_CHECKING:  # transformers takes seconds to import: ComfyUI's start-up should not pay for it
    from transformers import CLIPImageProcessor, CLIPTokenizer

# The CLIP tokenizer reads vocab.json and merges.txt; the other two hold settings it otherwise takes as defaults
# (transformers 5's save_pretrained no longer writes special_tokens_map.json).
TOKENIZER_FILES = ("vocab.json", "merges.txt")
OPTIONAL_TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json")
T = TypeVar("T")


# Settings transformers 4.x wrote into configs (generation and training options, CLIP's dropout) that build no part
# of a CLIP tower at inference; transformers 5 keeps them as plain attributes.
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


def _transformers_settings(config_cls: type, path: Path, what: str) -> dict:
    """A transformers config or preprocessor file under engine.hub.config_settings's rule, with the class's own
    defaults (its constructor's settings, type-checked against a default instance)."""
    # OpenAI's own preprocessor configs give size and crop_size as one int, newer ones as a dict: transformers
    # reads both, so neither form is held to the other's type.
    defaults = {k: v for k, v in config_cls().to_dict().items() if k not in ("size", "crop_size")}
    known = set(inspect.signature(config_cls.__init__).parameters) | _TRANSFORMERS_GENERIC | {"size", "crop_size"}
    try:  # settings with a default are type-checked against it; the other known ones are transformers' business
        return config_settings(read_json(path), defaults, what, known - defaults.keys() - {"self", "kwargs"})
    except ValueError as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"'{path}': {error}. Delete it and download it again.") from error


def _from_transformers(what: str, folder: Path, load: Callable[[], T]) -> T:
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


def clip_model(class_name: str, folder: Path, dtype: torch.dtype, what: str) -> torch.nn.Module:
    """A transformers CLIP model (`class_name`: CLIPModel, or one tower) from its folder, every key and tensor type
    checked; problems become CheckpointErrors."""
    import transformers
    from transformers.utils import logging as transformers_logging

    cls = getattr(transformers, class_name)
    _transformers_settings(cls.config_class, folder / "config.json", what)
    for weights in folder.glob("*.safetensors"):
        verify_safetensors(weights)
    # What transformers will read (safetensors first), looked at before it does: int-typed weights would be cast
    # silently, and a pickle that runs code is refused here with our message.
    weights = next(folder / name for name in TRANSFORMERS_WEIGHTS if (folder / name).is_file())
    stored = stored_dtypes(weights)
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # we report key problems ourselves, as errors
    try:
        model, info = _from_transformers(
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


def clip_tokenizer(folder: Path) -> CLIPTokenizer:
    from transformers import CLIPTokenizer

    for name in ("vocab.json", *OPTIONAL_TOKENIZER_FILES, "tokenizer.json"):
        if (folder / name).is_file():
            read_json(folder / name)  # a damaged file is named, not met as a KeyError inside transformers

    def load() -> CLIPTokenizer:
        tokenizer = CLIPTokenizer.from_pretrained(folder)
        tokenizer(["a cat", ""], padding="max_length", max_length=77, truncation=True)  # as encode_text calls it
        return tokenizer

    return _from_transformers("CLIP tokenizer", folder, load)


def clip_processor(folder: Path) -> CLIPImageProcessor:
    """CLIP's own preprocessing (resize the short side to 224, center crop, normalize) from preprocessor_config.json."""
    from transformers import CLIPImageProcessor

    _transformers_settings(CLIPImageProcessor, folder / "preprocessor_config.json", "CLIP image processor")

    def load() -> CLIPImageProcessor:
        processor = CLIPImageProcessor.from_pretrained(folder)
        processor(images=[numpy.zeros((8, 8, 3), numpy.uint8)], return_tensors="pt")  # unworkable settings fail now
        return processor

    return _from_transformers("CLIP image processor", folder, load)


def fetch_tokenizer(source: Source, subfolder: str) -> Path:
    """The folder of the checkpoint's CLIP tokenizer files, fetched (the tokenizer reads its whole folder)."""
    for name in TOKENIZER_FILES:
        folder = fetch_file(source, subfolder, name).parent
    for name in OPTIONAL_TOKENIZER_FILES:
        try:
            fetch_file(source, subfolder, name)
        except MissingFile:
            pass
    return folder
