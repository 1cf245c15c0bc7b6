"""CLIP's parts from checkpoint files through transformers (a well-kept implementation): models, tokenizer and image
preprocessing, every key checked and every problem a CheckpointError. The Kandinsky 2.2 prior's towers
(pipelines/kandinsky22.py) and the reranker's CLIPModel (pipelines/rerank.py) load through here."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..engine.hub import CheckpointError, MissingFile, Source, fetch_file, verify_safetensors

if TYPE_CHECKING:  # transformers takes seconds to import: ComfyUI's start-up should not pay for it
    from transformers import CLIPImageProcessor, CLIPTokenizer

# The CLIP tokenizer reads vocab.json and merges.txt; the other two hold settings it otherwise takes as defaults
# (transformers 5's save_pretrained no longer writes special_tokens_map.json).
TOKENIZER_FILES = ("vocab.json", "merges.txt")
OPTIONAL_TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json")


def clip_model(class_name: str, folder: Path, dtype: torch.dtype, what: str) -> torch.nn.Module:
    """A transformers CLIP model (`class_name`: CLIPModel, or one tower) from its folder, every key checked."""
    import transformers
    from transformers.utils import logging as transformers_logging

    cls = getattr(transformers, class_name)
    for weights in folder.glob("*.safetensors"):
        verify_safetensors(weights)
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # we report key problems ourselves, as errors
    try:
        model, info = cls.from_pretrained(folder, torch_dtype=dtype, output_loading_info=True, use_safetensors=None)
    except (OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"The {what} in '{folder}' could not be loaded: {error}") from error
    finally:
        transformers_logging.set_verbosity(verbosity)
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if problems:
        listed = "; ".join(f"{k.replace('_', ' ')}: {', '.join(map(str, list(v)[:3]))}" for k, v in problems.items())
        raise CheckpointError(f"The {what} in '{folder}' does not match its config ({listed}).")
    return model.eval().requires_grad_(False)


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


def clip_tokenizer(folder: Path) -> CLIPTokenizer:
    from transformers import CLIPTokenizer

    try:
        return CLIPTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"The CLIP tokenizer in '{folder}' could not be loaded: {error}") from error


def clip_processor(folder: Path) -> CLIPImageProcessor:
    """CLIP's own preprocessing (resize the short side to 224, center crop, normalize) from preprocessor_config.json."""
    from transformers import CLIPImageProcessor

    try:
        return CLIPImageProcessor.from_pretrained(folder)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"The CLIP image processor in '{folder}' could not be loaded: {error}") from error
