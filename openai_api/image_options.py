"""The fields today's `openai` client sends for GPT image and DALL·E 3 models (output_format, output_compression,
quality, background, style, stream, partial_images …), checked against OpenAI's enums into one ImageOptions.

A value outside OpenAI's enum, or one of its values these models cannot honour (GIF or SVG output, a transparent
JPEG), is a 400 naming the field. What each model makes of quality, style and a transparent background is its
description's to say (model_templates.py); moderation, user, safety_identifier, complexity and input_fidelity are
accepted and ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import bad_request

OUTPUT_FORMATS = ("png", "jpeg", "webp")
QUALITIES = ("auto", "low", "medium", "high", "xhigh", "max", "standard", "hd")
BACKGROUNDS = ("auto", "opaque", "transparent")
STYLES = ("vivid", "natural")
MAX_PARTIAL_IMAGES = 3
MAX_IDENTIFIER = 256  # user, safety_identifier: bookkeeping strings, bounded
# OpenAI's values for fields that change nothing here: checked, then ignored
IGNORED_CHOICES = {
    "moderation": ("auto", "low"),
    "complexity": ("low", "medium", "high"),
    "input_fidelity": ("high", "low"),
}
IGNORED_TEXT = ("user", "safety_identifier")
_IMAGE_FIELDS = {"output_format", "output_compression", "quality", "background", "stream", "partial_images"}
_IMAGE_FIELDS |= {"frame_count", "frame_duration_ms", "svg", "complexity", *IGNORED_TEXT}
# The fields OpenAI takes on each endpoint (its image_*_params)
FIELDS = {
    "generations": _IMAGE_FIELDS | {"style", "moderation"},
    "edits": _IMAGE_FIELDS | {"input_fidelity"},
    "variations": {"user"},
}
EDIT_QUALITIES = tuple(q for q in QUALITIES if q != "hd")  # DALL·E 3 made no edits
_TRUE, _FALSE = ("true", "1"), ("false", "0")


@dataclass(frozen=True)
class ImageOptions:
    output_format: str = "png"
    output_compression: int = 100  # JPEG and WebP quality, as OpenAI's default
    quality: str = "auto"
    background: str = "auto"
    style: str | None = None
    stream: bool = False
    partial_images: int = 0


def parse_options(endpoint: str, fields: Mapping[str, object], from_form: bool) -> ImageOptions:
    """The GPT image fields of one request (a form's arrive as strings; requests.parse has refused the fields its
    endpoint does not take) → ImageOptions; the first problem → ApiError 400 naming the field."""
    for name in ("svg", "frame_count", "frame_duration_ms"):
        if fields.get(name) is not None or any(key.startswith(f"{name}[") for key in fields):  # forms: svg[model]
            raise bad_request(
                f"{name} is for SVG or GIF output, which these models do not make: leave it out (output_format png, "
                "jpeg or webp).",
                name,
            )
    for name, choices in IGNORED_CHOICES.items():
        _choice(fields, name, choices)
    for name in IGNORED_TEXT:
        value = fields.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > MAX_IDENTIFIER):
            raise bad_request(f"{name} must be a string of at most {MAX_IDENTIFIER} characters.", name)
    options = ImageOptions(
        output_format=_output_format(fields.get("output_format")),
        output_compression=integer(fields, "output_compression", 100, (0, 100), from_form),
        quality=_choice(fields, "quality", EDIT_QUALITIES if endpoint == "edits" else QUALITIES) or "auto",
        background=_choice(fields, "background", BACKGROUNDS) or "auto",
        style=_choice(fields, "style", STYLES),
        stream=_flag(fields.get("stream")),
        partial_images=integer(fields, "partial_images", 0, (0, MAX_PARTIAL_IMAGES), from_form),
    )
    _check_together(options, fields)
    return options


def _check_together(options: ImageOptions, fields: Mapping[str, object]) -> None:
    if options.stream and fields.get("response_format") == "url":
        raise bad_request(
            "A stream's events carry the images as b64_json: leave response_format out (or send b64_json), or ask "
            "for url without stream.",
            "response_format",
        )
    if options.background == "transparent" and options.output_format == "jpeg":
        raise bad_request(
            "JPEG has no transparency: ask for output_format png or webp, or background auto.", "background"
        )


def _output_format(value: object) -> str:
    if value is None:
        return "png"
    if value in ("gif", "svg"):
        raise bad_request(
            f"output_format {value!r} is not made by these models: send png, jpeg or webp.", "output_format"
        )
    if value not in OUTPUT_FORMATS:
        raise bad_request(f"output_format {value!r} is not one of png, jpeg, webp.", "output_format")
    return value


def _choice(fields: Mapping[str, object], name: str, choices: tuple[str, ...]) -> str | None:
    value = fields.get(name)
    if value is not None and value not in choices:
        raise bad_request(f"{name} {value!r} is not one of {', '.join(choices)}.", name)
    return value


def _flag(value: object) -> bool:
    """stream: JSON's true/false, or a form's text."""
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() in _FALSE):
        return False
    if value is True or (isinstance(value, str) and value.strip().lower() in _TRUE):
        return True
    raise bad_request(f"stream must be true or false, not {value!r}.", "stream")


def integer(
    fields: Mapping[str, object], name: str, default: int | None, bounds: tuple[int, int], from_form: bool
) -> int | None:
    """A whole-number field within `bounds` (a form's arrives as digits; JSON may say 2.0), `default` where it is
    absent; anything else → ApiError 400 naming it."""
    value = fields.get(name)
    if value is None:
        return default
    if from_form and isinstance(value, str) and re.fullmatch(r"\s*[0-9]{1,20}\s*", value):
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise bad_request(f"{name} must be a whole number from {bounds[0]} to {bounds[1]}, not {value!r}.", name)
    if not bounds[0] <= value <= bounds[1]:
        kind = "integer_above_max_value" if value > bounds[1] else "integer_below_min_value"
        raise bad_request(f"{name} is {value}: it must be from {bounds[0]} to {bounds[1]}.", name, kind)
    return value
