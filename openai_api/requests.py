"""The fields of an images API request, checked as OpenAI documents them for dall-e-2, into one ImageRequest.

Generations arrive as JSON, edits and variations as multipart forms (every field a string there); both go through
`parse`. Two fields go beyond OpenAI's: `seed` (reproducible images) and `negative_prompt`. The picture files of a
form are checked in uploads.py; the size the model supports in model_templates.py.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import bad_request

ENDPOINTS = ("generations", "edits", "variations")
DEFAULT_MODEL = "dall-e-2"
DEFAULT_SIZE = "1024x1024"
RESPONSE_FORMATS = ("url", "b64_json")
MAX_PROMPT = 1000  # characters, as for dall-e-2
MAX_N = 10
MAX_SEED = 2**64 - 1
MAX_SIDE = 4096
FILE_FIELDS = {"generations": (), "edits": ("image", "mask"), "variations": ("image",)}
_TEXT = {"model", "n", "size", "response_format", "seed"}
FIELDS = {
    "generations": _TEXT | {"prompt", "negative_prompt"},
    "edits": _TEXT | {"prompt", "negative_prompt"},
    "variations": _TEXT,
}
# OpenAI fields that change nothing for a dall-e-2 picture (or only its bookkeeping): accepted and ignored
IGNORED = {"user", "safety_identifier", "quality", "style", "moderation", "input_fidelity", "output_compression"}
# OpenAI fields for other models: accepted only with the value that asks for what dall-e-2 does anyway
NEUTRAL = {
    "output_format": ({"png"}, "'png'"),
    "background": ({"auto", "opaque"}, "'auto' or 'opaque'"),
    "stream": ({False, "false"}, "false"),
    "partial_images": ({0, "0"}, "0"),
}
_SIZE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})")


@dataclass(frozen=True)
class ImageRequest:
    endpoint: str
    model: str
    n: int
    size: str
    response_format: str
    prompt: str | None = None
    negative_prompt: str | None = None
    seed: int | None = None

    @property
    def width(self) -> int:
        return int(self.size.split("x")[0])

    @property
    def height(self) -> int:
        return int(self.size.split("x")[1])


def parse(endpoint: str, fields: Mapping[str, object], from_form: bool) -> ImageRequest:
    """One request's fields (a JSON object, or a form's text fields with `from_form`) → ImageRequest; the first
    problem → ApiError 400 naming the field."""
    if not isinstance(fields, Mapping):
        raise bad_request('The request body must be a JSON object, e.g. {"prompt": "a red fox"}.')
    known = FIELDS[endpoint] | set(FILE_FIELDS[endpoint]) | IGNORED | set(NEUTRAL)
    for name in fields:
        if name not in known:
            raise bad_request(f"Unrecognized request argument supplied: {name}", name)
    for name, (values, hint) in NEUTRAL.items():
        value = fields.get(name)
        if value is not None and (isinstance(value, (dict, list)) or value not in values):
            raise bad_request(f"{name} {value!r} is not supported by these models: leave it out or send {hint}.", name)
    needs_prompt = "prompt" in FIELDS[endpoint]
    return ImageRequest(
        endpoint=endpoint,
        model=_model(fields.get("model")),
        n=_integer(fields, "n", 1, (1, MAX_N), from_form),
        size=_size(fields.get("size")),
        response_format=_choice(fields, "response_format", RESPONSE_FORMATS),
        prompt=_text(fields, "prompt", required=True) if needs_prompt else None,
        negative_prompt=_text(fields, "negative_prompt", required=False) if needs_prompt else None,
        seed=_integer(fields, "seed", None, (0, MAX_SEED), from_form),
    )


def _model(value: object) -> str:
    if value is None:
        return DEFAULT_MODEL
    if not isinstance(value, str) or not value.strip():
        raise bad_request("model must be a model name such as 'dall-e-2' (GET /v1/models lists them).", "model")
    return value.strip()


def _text(fields: Mapping[str, object], name: str, required: bool) -> str | None:
    value = fields.get(name)
    if value is None and not required:
        return None
    if value is None:
        raise bad_request(f"Missing required parameter: '{name}'.", name, "missing_required_parameter")
    if not isinstance(value, str):
        raise bad_request(f"{name} must be a string, not {type(value).__name__}.", name)
    if required and not value.strip():
        raise bad_request(f"{name} is empty: describe the image you want.", name)
    if len(value) > MAX_PROMPT:
        raise bad_request(
            f"{name} is {len(value)} characters long; the maximum is {MAX_PROMPT}: shorten it.",
            name,
            "string_above_max_length",
        )
    return value


def _integer(
    fields: Mapping[str, object], name: str, default: int | None, bounds: tuple[int, int], from_form: bool
) -> int | None:
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


def _size(value: object) -> str:
    if value is None:
        return DEFAULT_SIZE
    match = _SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise bad_request(f"size {value!r} is not a size: write it as WIDTHxHEIGHT, e.g. '512x512'.", "size")
    width, height = int(match[1]), int(match[2])
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        raise bad_request(f"size {value!r} is outside 1..{MAX_SIDE} px a side.", "size")
    return f"{width}x{height}"


def _choice(fields: Mapping[str, object], name: str, choices: tuple[str, ...]) -> str:
    value = fields.get(name)
    if value is None:
        return choices[0]
    if value not in choices:
        raise bad_request(f"{name} {value!r} is not one of {', '.join(choices)}.", name)
    return value
