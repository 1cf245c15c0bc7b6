"""The fields of an images API request, checked as OpenAI documents them, into one ImageRequest.

Generations arrive as JSON, edits and variations as multipart forms (every field a string there); both go through
`parse`. Two fields go beyond OpenAI's: `seed` (reproducible images) and `negative_prompt`. The GPT image fields
(output_format, quality, stream …) are image_options.py's; the picture files of a form are checked in uploads.py;
the size the model supports in model_templates.py, which also applies the model's charset (check_charset) to its
prompts.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field

from emoji import replace_emoji

from .errors import bad_request
from .image_options import FIELDS as OPTION_FIELDS
from .image_options import ImageOptions, integer, parse_options

ENDPOINTS = ("generations", "edits", "variations")
DEFAULT_MODEL = "dall-e-2"
DEFAULT_SIZE = "1024x1024"
AUTO_SIZE = "auto"  # the model's own default size (model_templates.Model.resolve)
RESPONSE_FORMATS = ("url", "b64_json")
# Names of OpenAI's GPT image models: like OpenAI, answer them with b64_json unless the request asks for url
B64_MODELS = ("gpt-image", "chatgpt-image")
MAX_PROMPT = 4000  # characters, as for dall-e-3 (the text encoders read the first 77 tokens, Mini's BART 64)
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
_SIZE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})")
# What a model's prompts may be written in (its description's "prompt": {"charset": …}): any text, or English alone
# for a model whose tokenizer drops every character outside ASCII but emoji, which it spells out (DALL·E Mini's)
CHARSETS = ("unicode", "ascii")
SHOWN_CHARACTERS = 5


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
    options: ImageOptions = field(default_factory=ImageOptions)

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
    known = FIELDS[endpoint] | set(FILE_FIELDS[endpoint]) | OPTION_FIELDS[endpoint]
    for name in fields:
        if name not in known and not name.startswith("svg["):  # image_options refuses SVG settings by name
            raise bad_request(f"Unrecognized request argument supplied: {name}", name)
    _check_encodable(fields)
    options = parse_options(endpoint, fields, from_form)
    model = _model(fields.get("model"))
    needs_prompt = "prompt" in FIELDS[endpoint]
    return ImageRequest(
        endpoint=endpoint,
        model=model,
        n=integer(fields, "n", 1, (1, MAX_N), from_form),
        size=_size(fields.get("size")),
        response_format=_response_format(fields.get("response_format"), model, options.stream),
        prompt=_text(fields, "prompt", required=True) if needs_prompt else None,
        negative_prompt=_text(fields, "negative_prompt", required=False) if needs_prompt else None,
        seed=integer(fields, "seed", None, (0, MAX_SEED), from_form),
        options=options,
    )


def _response_format(value: object, model: str, stream: bool) -> str:
    """url by default, as DALL·E answered; b64_json for a stream (its events carry the images) and for GPT image
    model names, as OpenAI answers them."""
    if value is None:
        return "b64_json" if stream or model.startswith(B64_MODELS) else "url"
    if value not in RESPONSE_FORMATS:
        raise bad_request(f"response_format {value!r} is not one of {', '.join(RESPONSE_FORMATS)}.", "response_format")
    return value


_TRANSLATION_HINT = {
    False: '(or the server may translate for this model: "prompt": {"translate": "auto"} in its description, for '
    "Chinese).",
    True: "(its translation takes letters of non-Latin scripts, such as Chinese, not accented Latin ones).",
}


def non_latin_letter(char: str) -> bool:
    """A letter of a non-Latin script (Chinese, Cyrillic …): what a translated model's prompt may hold, as
    pipelines/translation.py's needs_translation decides (a test holds them together)."""
    return (
        char.isalpha()
        and not char.isascii()
        and not unicodedata.name(char, "").startswith(("LATIN", "FULLWIDTH LATIN"))
    )


def check_charset(request: ImageRequest, charset: str, model_id: str, translated: bool = False) -> None:
    """For a model that reads English alone (charset "ascii"): a prompt with letters or digits outside ASCII, which it
    would drop without a word, or with nothing it reads → ApiError 400 naming the field. `translated`: the prompt
    passes through a translation first, which turns letters of non-Latin scripts into English (and leaves accented
    Latin letters as they are, for the model to drop)."""
    if charset != "ascii":
        return
    for name in ("prompt", "negative_prompt"):
        text = getattr(request, name)
        if text is None:
            continue
        words = replace_emoji(text, replace=" ")  # emoji are read: spelled out by name
        english_later = translated and any(non_latin_letter(c) for c in words)  # the translation writes English
        if english_later:
            words = "".join(" " if non_latin_letter(c) else c for c in words)
        # the tokenizer lower-cases before it drops what is not ASCII: "İ" is read as "i"
        foreign = list(dict.fromkeys(c for c in words if any(x.isalnum() and not x.isascii() for x in c.lower())))
        if foreign:
            shown = ", ".join(repr(c) for c in foreign[:SHOWN_CHARACTERS]) + (
                ", …" if foreign[SHOWN_CHARACTERS:] else ""
            )
            raise bad_request(
                f"{name} has letters the model '{model_id}' cannot read ({shown}): it reads English in ASCII letters "
                "and digits and drops any other letter. Write it in English, without accents "
                + _TRANSLATION_HINT[translated],
                name,
                "unreadable_text",
            )
        if not english_later and words == text and not any(c.isascii() and not c.isspace() for c in text):
            raise bad_request(
                f"{name} has nothing the model '{model_id}' can read: it reads ASCII letters, digits and punctuation, "
                "and emoji. Write it in English.",
                name,
                "unreadable_text",
            )


def _check_encodable(fields: Mapping[str, object]) -> None:
    """JSON can spell half a UTF-16 pair ("\\ud800"), which is no character and cannot be written as UTF-8 (to the
    workflow, the history, the log): refused here, naming the field."""
    for name, value in fields.items():
        if not isinstance(value, str):
            continue
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            raise bad_request(
                f"{name} holds a lone surrogate ({value[error.start]!r} at character {error.start}), half of a UTF-16 "
                "pair and no character: send valid Unicode (a character beyond U+FFFF as its whole pair, e.g. "
                "\\ud83e\\udd8a, or as itself).",
                name,
            ) from None


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


def _size(value: object) -> str:
    if value is None:
        return DEFAULT_SIZE
    if value == AUTO_SIZE:
        return AUTO_SIZE
    match = _SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise bad_request(f"size {value!r} is not a size: write it as WIDTHxHEIGHT, e.g. '512x512'.", "size")
    width, height = int(match[1]), int(match[2])
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        raise bad_request(f"size {value!r} is outside 1..{MAX_SIDE} px a side.", "size")
    return f"{width}x{height}"
