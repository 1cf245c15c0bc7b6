"""CLIP's parts from checkpoint files through transformers (a well-kept implementation): models, tokenizer and image
preprocessing, every key checked and every problem a CheckpointError (the rules are transformers_loading.py's). The
Kandinsky 2.2 prior's towers (pipelines/kandinsky22/loading.py) and the reranker's CLIPModel (pipelines/rerank.py) load
through here."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy
import torch

from ..engine.checkpoints import read_json
from ..engine.hub import MissingFile, Source, fetch_file
from .transformers_loading import from_transformers, transformers_model, transformers_settings

if TYPE_CHECKING:  # transformers takes seconds to import: ComfyUI's start-up should not pay for it
    from transformers import CLIPImageProcessor, CLIPTokenizer

# The CLIP tokenizer reads vocab.json and merges.txt; the other two hold settings it otherwise takes as defaults
# (transformers 5's save_pretrained no longer writes special_tokens_map.json).
TOKENIZER_FILES = ("vocab.json", "merges.txt")
OPTIONAL_TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json")


def clip_model(class_name: str, folder: Path, dtype: torch.dtype, what: str) -> torch.nn.Module:
    """A transformers CLIP model (`class_name`: CLIPModel, or one tower) from its folder, every key and tensor type
    checked; problems become CheckpointErrors."""
    return transformers_model(class_name, folder, dtype, what)


def clip_tokenizer(folder: Path) -> CLIPTokenizer:
    from transformers import CLIPTokenizer

    for name in ("vocab.json", *OPTIONAL_TOKENIZER_FILES, "tokenizer.json"):
        if (folder / name).is_file():
            read_json(folder / name)  # a damaged file is named, not met as a KeyError inside transformers

    def load() -> CLIPTokenizer:
        tokenizer = CLIPTokenizer.from_pretrained(folder)
        tokenizer(["a cat", ""], padding="max_length", max_length=77, truncation=True)  # as encode_text calls it
        return tokenizer

    return from_transformers("CLIP tokenizer", folder, load)


def clip_processor(folder: Path) -> CLIPImageProcessor:
    """CLIP's own preprocessing (resize the short side to 224, center crop, normalize) from preprocessor_config.json."""
    from transformers import CLIPImageProcessor

    transformers_settings(CLIPImageProcessor, folder / "preprocessor_config.json", "CLIP image processor")

    def load() -> CLIPImageProcessor:
        processor = CLIPImageProcessor.from_pretrained(folder)
        processor(images=[numpy.zeros((8, 8, 3), numpy.uint8)], return_tensors="pt")  # unworkable settings fail now
        return processor

    return from_transformers("CLIP image processor", folder, load)


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
