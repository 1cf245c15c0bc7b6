"""Prompts in other languages → English, for text towers trained on English captions (Kandinsky 2.2's CLIP, DALL·E
Mini's BART), by a transformers translation model from the Hub: MarianMT's Helsinki-NLP/opus-mt-zh-en by default, or
another of its opus-mt-*-en models (ja, ko, ru, ar, mul …), or a T5 model that writes English (FAMILIES: the
families tested; others, speech models among them, are refused).

Each part of the prompt is translated as transformers 4.57's `pipeline("translation")` translates a text
(transformers 5 dropped that pipeline): tokenized without truncation, `generate` with the pipeline's generation
config (generation_config), decoded without special tokens and without clean-up of spaces.

Prompt syntax survives: the text is split at line breaks, commas (also Chinese ，、；) and the brackets and `:1.2`
weights of `(word:1.2)`; the pieces that hold letters of a non-Latin script are translated one by one, the rest (English
tags such as "4k", the brackets, weights and separators, written in ASCII) is kept. Text without such letters is
returned as it is, without loading the model: script detection, which cannot tell German from English, so Latin-script
languages are not translated.
"""

from __future__ import annotations

import copy
import re
import threading
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import torch

from ..engine.checkpoints import CheckpointError, read_json
from ..engine.device import PLAIN, Host, default_device
from ..engine.hub import (
    TRANSFORMERS_WEIGHTS,
    ConsoleDownload,
    MissingFile,
    NotDownloaded,
    Source,
    default_store,
    fetch_config,
    fetch_file,
    fetch_weights,
    source_from_input,
)
from .checks import REPO_OR_FOLDER, check_device, described, path_text
from .transformers_loading import from_transformers, transformers_model

if TYPE_CHECKING:  # transformers takes seconds to import: ComfyUI's start-up should not pay for it
    from transformers import GenerationConfig, PreTrainedTokenizerBase

R = TypeVar("R")
TRANSLATION_REPO = "Helsinki-NLP/opus-mt-zh-en"
AUTO = "auto"  # generate's translate="auto": TRANSLATION_REPO, for prompts in a non-Latin script
MAX_CHARACTERS = 10_000
# model_type → transformers class: the families whose loading and translation are tested
FAMILIES = {"marian": "MarianMTModel", "t5": "T5ForConditionalGeneration"}
# TranslationPipeline._default_generation_config in transformers 4.57 (text2text_generation.py), and
# GenerationConfig's own max_length
PIPELINE_GENERATION = {"max_new_tokens": 256, "num_beams": 4}
DEFAULT_MAX_LENGTH = 20
# Languages other opus-mt models read, named when a model does not know a prompt's script
OTHER_MODELS = "Helsinki-NLP/opus-mt-ja-en (Japanese), -ko-en (Korean), -ru-en (Russian) or -mul-en (many languages)"
# MarianMT reads vocab.json and the two sentencepiece models; other families their tokenizer.json
MARIAN_TOKENIZER = ("vocab.json", "source.spm", "target.spm")
OTHER_TOKENIZER = ("tokenizer.json",)
OPTIONAL_FILES = ("generation_config.json", "tokenizer_config.json", "special_tokens_map.json")
FETCHES = 3 + len(MARIAN_TOKENIZER) + len(OPTIONAL_FILES)  # + config, weights
# Settings the 2020 conversion of the opus-mt models wrote (MarianConfig was BART's then), which transformers
# ignores today: each at the value that describes the network it builds (None: any value, they build nothing).
MARIAN_LEGACY = {
    "static_position_embeddings": True,
    "normalize_embedding": False,
    "normalize_before": False,
    "add_final_layer_norm": False,
    "add_bias_logits": False,
    "do_blenderbot_90_layernorm": False,
    "extra_pos_embeddings": None,
    "classif_dropout": None,
    "classifier_dropout": None,
    "gradient_checkpointing": None,
    "force_bos_token_to_be_generated": None,
}

# Where a prompt is cut into pieces: line breaks and commas (with the spaces around them), brackets, and the
# weight of a "(word:1.2)" group; full-width forms (Chinese input methods type them) are written in ASCII.
_SYNTAX = re.compile(
    r"(\s*[,，、;；\n]\s*|[()\[\]（）【】]|[:：]\s*[-+＋－]?(?:\d+(?:[.．]\d+)?|[.．]\d+)(?=\s*[)）\]】]))",
)
_ASCII_SYNTAX = str.maketrans({"，": ",", "、": ",", "；": ";", "（": "(", "）": ")", "【": "[", "】": "]", "：": ":"})


def needs_translation(text: str) -> bool:
    """Whether `text` holds a letter of a non-Latin script (Chinese, Japanese, Cyrillic, Arabic …)."""
    return any(
        char.isalpha()
        and not char.isascii()
        and not unicodedata.name(char, "").startswith(("LATIN", "FULLWIDTH LATIN"))
        for char in text
    )


def check_text(text: object) -> str:
    """Text a translation can take: a str with something in it, at most MAX_CHARACTERS long."""
    if not isinstance(text, str):
        raise TypeError(f"The text to translate must be text (a str); got {described(text)}.")
    if not text.strip():
        raise ValueError("The text to translate is empty: write the prompt, in any language.")
    try:
        text.encode()
    except UnicodeEncodeError as error:  # a lone surrogate: the tokenizer would fail with an unrelated error
        raise ValueError(
            f"The text to translate holds {text[error.start]!r} at character {error.start}, half of a UTF-16 pair and "
            "not text (bytes decoded with errors='surrogateescape', or JSON's \\ud800 escapes): remove it, or decode "
            "the text as UTF-8."
        ) from None
    return text


def check_length(text: str) -> str:
    """A text to translate of at most MAX_CHARACTERS (English text that passes through has no such limit)."""
    if len(text) > MAX_CHARACTERS:
        raise ValueError(
            f"The text to translate is {len(text):,} characters long, more than the {MAX_CHARACTERS:,} a prompt may "
            "have: shorten it (CLIP reads about 75 words of English)."
        )
    return text


def load_translation_model(source: Source) -> tuple[PreTrainedTokenizerBase, torch.nn.Module]:
    """A translation repo's tokenizer and model (FAMILIES: MarianMT, T5), files at the repo's root; only those files
    are fetched, safetensors first (a pickled .bin only without them). The model is fp32 on the CPU."""
    config = fetch_config(source, "")
    class_name = FAMILIES.get(config.get("model_type"))
    if class_name is None:
        kind = (config.get("architectures") or [config.get("model_type") or "model of unknown kind"])[0]
        raise CheckpointError(
            f"{source.describe()} holds a {kind}, which prompt translation does not run: it runs MarianMT models "
            f"(such as {TRANSLATION_REPO} and the other Helsinki-NLP/opus-mt-*-en) and T5 models that write English."
        )
    folder = fetch_weights(source, "", TRANSFORMERS_WEIGHTS).parent
    marian = config.get("model_type") == "marian"
    for name in MARIAN_TOKENIZER if marian else OTHER_TOKENIZER:
        fetch_file(source, "", name)
    for name in OPTIONAL_FILES:
        try:
            fetch_file(source, "", name)
        except (MissingFile, NotDownloaded):  # a repo may lack them: transformers has defaults
            pass
    what = f"translation model of {source.describe()}"
    model = transformers_model(class_name, folder, torch.float32, what, MARIAN_LEGACY if marian else None)
    return translation_tokenizer(folder, marian), model


def translation_tokenizer(folder: Path, marian: bool) -> PreTrainedTokenizerBase:
    """The repo's own tokenizer (AutoTokenizer), tried on a word before it is used."""
    import importlib.util

    from transformers import AutoTokenizer

    if marian and importlib.util.find_spec("sentencepiece") is None:
        raise CheckpointError(
            "MarianMT's tokenizer needs the sentencepiece package: `pip install sentencepiece` in ComfyUI's Python."
        )
    for name in ("vocab.json", *OPTIONAL_FILES):
        if (folder / name).is_file():
            read_json(folder / name)  # a damaged file is named, not met deep inside transformers

    def load() -> PreTrainedTokenizerBase:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        tokenizer("猫")
        return tokenizer

    return from_transformers("translation tokenizer", folder, load)


@dataclass
class Translator:
    """A translation model's tokenizer, and a call that readies the model on its compute device and returns it.

    ```python
    translator = Translator.load()  # Helsinki-NLP/opus-mt-zh-en
    translator("一只戴着帽子的猫, 油画")  # 'A cat in a hat, oil painting' (English text comes back as it is)
    ```
    """

    tokenizer: PreTrainedTokenizerBase
    model: Callable[[], torch.nn.Module]

    @classmethod
    def load(cls, repo: str = TRANSLATION_REPO, device: str | torch.device | None = None) -> Translator:
        """A translation repo id or local folder (the same store, download bars and errors as the other loaders)."""
        repo = path_text("repo", repo, REPO_OR_FOLDER)
        device = check_device(device) if device is not None else default_device()
        source = source_from_input(repo, None, default_store(), ConsoleDownload(FETCHES))
        tokenizer, model = load_translation_model(source)
        model.to(device)
        return cls(tokenizer, lambda: model)

    def __call__(self, text: str, host: Host = PLAIN) -> str:
        return translate(self, text, host)


def translate(translator: Translator, text: str, host: Host = PLAIN) -> str:
    """`text` in English, its prompt syntax kept (see the module's doc); text without letters of a non-Latin script
    comes back as it is and the model is not readied."""
    if not needs_translation(check_text(text)):
        return text
    check_length(text)
    model = translator.model()
    done: dict[str, str] = {}
    parts = []
    for index, part in enumerate(_SYNTAX.split(text)):
        if index % 2:  # the syntax between the pieces
            parts.append(_ascii_syntax(part))
        elif needs_translation(part):
            host.check_interrupt()  # between pieces: a long prompt can be cancelled
            if part.strip() not in done:
                done[part.strip()] = translate_piece(translator.tokenizer, model, part.strip())
            parts.append(_keep_spaces(part, done[part.strip()]))
        else:
            parts.append(part)
    return "".join(parts).strip()


def translate_piece(tokenizer: PreTrainedTokenizerBase, model: torch.nn.Module, text: str) -> str:
    """One piece, as transformers 4.57's TranslationPipeline translates it (see the module's doc)."""
    english = tokenizer.decode(
        piece_ids(tokenizer, model, text), skip_special_tokens=True, clean_up_tokenization_spaces=False
    )
    if not english.strip():
        raise ValueError(
            f"The translation model wrote nothing for the part of the prompt {text[:30]!r}: write that part another "
            "way, or in English."
        )
    return english


def generation_config(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> GenerationConfig:
    """The settings transformers 4.57's TranslationPipeline generates with: its PIPELINE_GENERATION, which the
    model's generation config cannot override (they differ from GenerationConfig's defaults); the rest from the
    model's; the model's max_length in place of max_new_tokens where it sets one of its own. Sampling is off,
    whatever the model's config asks: the same prompt gives the same English."""
    config = copy.deepcopy(model.generation_config)
    for name, value in PIPELINE_GENERATION.items():
        setattr(config, name, value)
    if config.max_length is not None and config.max_length != DEFAULT_MAX_LENGTH:
        config.max_new_tokens = None
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id
    config.do_sample = False
    return config


def piece_ids(tokenizer: PreTrainedTokenizerBase, model: torch.nn.Module, text: str) -> torch.Tensor:
    """The token ids the model writes for one piece (decoder start and end tokens included), on the CPU."""
    inputs = tokenizer(text, return_tensors="pt")
    inputs.pop("token_type_ids", None)
    check_known(tokenizer, inputs["input_ids"][0], text)
    # T5's relative positions have no table size: its tokenizer's model_max_length says what it was trained on
    limit = getattr(model.config, "max_position_embeddings", None) or tokenizer.model_max_length
    length = inputs["input_ids"].shape[1]
    if length > limit:
        raise ValueError(
            f"The part of the prompt {text[:30]!r}… is {length} tokens, more than the {limit} the translation model "
            "reads at once: break it up with commas or line breaks."
        )
    with torch.inference_mode():
        output = model.generate(**inputs.to(model.device), generation_config=generation_config(model, tokenizer))
    return output[0].cpu()


def check_known(tokenizer: PreTrainedTokenizerBase, ids: torch.Tensor, text: str) -> None:
    """A piece mostly in tokens the model does not know (<unk>: another script than its language's) is refused
    with the model's language and the models for others: it would translate to nonsense."""
    unknown = ids.tolist().count(tokenizer.unk_token_id)
    # the tokens that hold letters, <unk> among them (not the word-start marks, nor </s>)
    letters = unknown + sum(
        any(char.isalnum() for char in token)
        for token in tokenizer.convert_ids_to_tokens(ids.tolist(), skip_special_tokens=True)
    )
    if letters and unknown * 2 > letters:
        language = getattr(tokenizer, "source_lang", None) or tokenizer.init_kwargs.get("source_lang") or "its own"
        raise ValueError(
            f"The translation model does not know most of {text[:30]!r}: it reads the language {language!r} "
            f"({tokenizer.name_or_path}). Use a model for the prompt's language: {OTHER_MODELS}."
        )


def _ascii_syntax(syntax: str) -> str:
    """A separator, bracket or weight in ASCII; a comma or semicolon is followed by one space, or by the line break
    that followed it."""
    ascii_form = unicodedata.normalize("NFKC", syntax).translate(_ASCII_SYNTAX)  # full-width digits too
    mark = ascii_form.strip()
    if mark in (",", ";"):
        tail = ascii_form[ascii_form.index(mark) + 1 :]
        return mark + (tail if "\n" in tail else " ")
    return ascii_form  # brackets, weights and line breaks as they are


def _keep_spaces(original: str, translated: str) -> str:
    """The translation with the spaces that stood around the original piece."""
    lead = original[: len(original) - len(original.lstrip())]
    return lead + translated + original[len(original.rstrip()) :]


def check_translate(translate: object) -> str | None:
    """generate's `translate`: "auto" (TRANSLATION_REPO), a repo id or local folder, or None → the repo or None."""
    if translate is None:
        return None
    translate = path_text("translate", translate, f'"{AUTO}", {REPO_OR_FOLDER} of a translation model, or None')
    if not translate.strip():
        raise ValueError(f'translate is empty: give "{AUTO}", a translation model\'s repo id or folder, or None.')
    return TRANSLATION_REPO if translate.strip() == AUTO else translate.strip()


_loaded: dict[tuple[str, str], Translator] = {}
_loading = threading.Lock()  # two threads generating at once load the model once, and never drop each other's


def translated(
    request: R, translate: str | None, device: Callable[[], torch.device], fields: tuple[str, ...] = ("prompt",)
) -> R:
    """A copy of a family's Request (a dataclass) with its prompt `fields` in English, by the model `translate`
    names (check_translate); loaded on `device()` (asked only then) on the first prompt that needs it and kept for
    the next (the last one only)."""
    repo = check_translate(translate)
    texts = {name: getattr(request, name) for name in fields if getattr(request, name) is not None}
    if repo is None or not any(needs_translation(check_text(text)) for text in texts.values()):
        return request
    key = (repo, str(device()))
    with _loading:
        translator = _loaded.get(key)
        if translator is None:
            _loaded.clear()  # one translation model at a time
            translator = _loaded[key] = Translator.load(repo, key[1])
    return replace(request, **{name: translator(text) for name, text in texts.items()})
