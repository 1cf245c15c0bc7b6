"""The command line's prompt translation: `--translate` (a flag: the default model, Chinese) and `--translate-model
REPO` (another translation model; implies --translate). A flag rather than an option with an optional value, which
would take the prompt that follows it for a model's name."""

from __future__ import annotations

import argparse
import sys
from typing import TypeVar

from .pipelines.translation import TRANSLATION_REPO

R = TypeVar("R")


def add_translate_options(gen: argparse.ArgumentParser) -> None:
    gen.add_argument(
        "--translate",
        action="store_true",
        help=f"translate a prompt in a non-Latin script to English first, with {TRANSLATION_REPO} (Chinese) unless "
        "--translate-model names another",
    )
    gen.add_argument(
        "--translate-model",
        metavar="REPO",
        default=None,
        help="the translation model's repo id or local folder for --translate (e.g. Helsinki-NLP/opus-mt-ja-en); "
        "implies --translate",
    )


def translate_value(args: argparse.Namespace) -> str | None:
    """generate's translate argument: None, "auto", or the model --translate-model names."""
    if args.translate_model is not None:
        return args.translate_model
    return "auto" if args.translate else None


def translated_request(args: argparse.Namespace, request: R) -> R:
    """The request with its prompts in English where --translate asks for it and they are in a non-Latin script."""
    from .engine.device import default_device
    from .pipelines import translation

    fields = ("prompt", "negative") if args.model == "kandinsky22" else ("prompt",)
    english = translation.translated(request, translate_value(args), default_device, fields)
    if english is not request:
        print(f"Translated the prompt to: {english.prompt}", file=sys.stderr)
    return english
