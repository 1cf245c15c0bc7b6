"""Prompts in other languages: translated to English for the text encoders, which read English only."""

from __future__ import annotations

from ..pipelines import translation
from ..pipelines.translation import Translator
from . import runtime
from .loaders import source_from_inputs

PROMPT_CATEGORY = "DALL·E/prompts"
DEVICES = ("auto", "cpu")

# The last translation model, kept also inside ComfyUI: this node's output is text, so ComfyUI's cache of node outputs
# holds no model, and a new prompt would load it again. Inside ComfyUI its memory manager moves it off the GPU when
# others need the room.
_kept: dict[tuple, Translator] = {}


def translator(model: str, device: str) -> Translator:
    """The translation model the node's inputs name, loaded once: on ComfyUI's compute device under its memory
    manager ("auto"), or kept on the CPU ("cpu")."""
    if not model.strip():
        raise ValueError(
            f"model is empty: give a translation model's Hub repo id (default {translation.TRANSLATION_REPO}) or a "
            "local folder."
        )
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)} (got {device!r}).")
    source = source_from_inputs(model, "", translation.FETCHES)
    key = (source, device)
    if key not in _kept:
        _kept.clear()  # drop the old one before loading the new, to not hold both
        tokenizer, module = translation.load_translation_model(source)
        ready = runtime.ManagedModule(module).load if device == "auto" else lambda: module
        _kept[key] = Translator(tokenizer, ready)
    return _kept[key]


class DalleTranslatePrompt:
    DESCRIPTION = (
        "Translates a prompt to English for the text encoders, which were trained on English captions (Kandinsky "
        "2.2's CLIP, DALL·E Mini's BART), with a translation model from the Hub (default "
        f"{translation.TRANSLATION_REPO}, Chinese → English; e.g. Helsinki-NLP/opus-mt-ja-en, -ko-en, -ru-en or "
        "-mul-en for other languages). "
        "Text without letters of a non-Latin script passes unchanged, without loading the model; commas, line breaks "
        "and (word:1.2) weights are kept. Runs offline once downloaded."
    )
    CATEGORY = PROMPT_CATEGORY
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("english",)
    OUTPUT_TOOLTIPS = ("The prompt in English: connect it to the text input of DALL·E Text Encode or Token Sample.",)
    FUNCTION = "translate"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "text": (
                    "STRING",
                    {
                        "multiline": True,
                        "dynamicPrompts": True,
                        "tooltip": f"The prompt, in any language (at most {translation.MAX_CHARACTERS:,} characters).",
                    },
                ),
                "model": (
                    "STRING",
                    {
                        "default": translation.TRANSLATION_REPO,
                        "tooltip": "Hub repo id of a transformers translation model into English (MarianMT's "
                        "Helsinki-NLP/opus-mt-<language>-en), or a local folder in the same layout.",
                    },
                ),
                "device": (
                    list(DEVICES),
                    {
                        "default": "auto",
                        "tooltip": "auto: ComfyUI's GPU, freed by its memory manager when other models need room; "
                        "cpu: uses no GPU memory (opus-mt is about 300 MB).",
                    },
                ),
            }
        }

    def translate(self, text: str, model: str, device: str) -> dict:
        text = translation.check_text(text)
        if translation.needs_translation(text):
            english = translation.translate(translator(model, device), text, runtime.HOST)
        else:
            english = text
        runtime.show_text(english)
        return {"ui": {"text": [english]}, "result": (english,)}
