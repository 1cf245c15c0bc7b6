"""Reading request bodies within limits: a JSON body, or a multipart form's text fields and files, each refused (413)
as soon as it passes its size instead of being read to its end."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.helpers import parse_mimetype
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong

from . import uploads
from .errors import ApiError, bad_request
from .requests import FILE_FIELDS

MAX_JSON_BYTES = 64 * 1024
MAX_FIELD_BYTES = 16 * 1024
MAX_PARTS = 32
MAX_BOUNDARY = 70  # characters, as RFC 2046 allows
# aiohttp's MultipartReader's messages (the start of each) → what they mean for the sender
_READER_WORDS = (
    ("Could not find starting boundary", "no line of the body is the boundary its Content-Type names"),
    ("Reading after EOF", "the body ends inside a part, before the closing boundary"),
    ("Invalid boundary", "a part is not followed by the boundary"),
    ("Reader did not read all the data", "a part is not followed by the boundary"),
    ("Invalid default charset", "its _charset_ part names no charset"),
)
FORM_SHAPE = (
    "Send the form as multipart/form-data with a boundary of 1 to 70 characters, each part opened by --BOUNDARY and "
    "the body closed by --BOUNDARY-- (as the openai client and curl -F do)."
)


async def read_json(request: web.Request) -> object:
    if request.content_type != "application/json":
        raise bad_request(f"Send the request as JSON (Content-Type: application/json), not {request.content_type}.")
    data = await _bounded(request.content.read, MAX_JSON_BYTES, "body")
    try:
        return json.loads(data)
    except (ValueError, RecursionError):  # bad UTF-8 or JSON, or nested too deep
        raise bad_request("The request body is not valid JSON.") from None


async def read_form(request: web.Request, endpoint: str) -> tuple[dict[str, str], dict[str, bytes]]:
    """A multipart form's text fields and files, each read only up to its limit; a malformed form → ApiError 400."""
    if request.content_type != "multipart/form-data":
        raise bad_request(
            f"Send images/{endpoint} as multipart/form-data (as the openai client does), not {request.content_type}."
        )
    _check_boundary(request.headers.get("Content-Type", ""))
    try:
        return await _read_parts(await request.multipart(), endpoint)
    except (ValueError, RuntimeError, HttpProcessingError) as error:  # what aiohttp's reader raises on a broken body
        raise bad_request(f"The multipart form cannot be read: {_malformation(error)}. {FORM_SHAPE}") from None


def _check_boundary(content_type: str) -> None:
    boundary = parse_mimetype(content_type).parameters.get("boundary")
    if boundary is None:
        raise bad_request(f"The Content-Type multipart/form-data names no boundary. {FORM_SHAPE}")
    if not 1 <= len(boundary) <= MAX_BOUNDARY:
        raise bad_request(f"The form's boundary is {len(boundary)} characters long. {FORM_SHAPE}")


def _malformation(error: Exception) -> str:
    """What is wrong with the body, in words: ours for what aiohttp's reader says, else its own first line."""
    if isinstance(error, LineTooLong):
        return "a part's header line is too long"
    if isinstance(error, HttpProcessingError):
        return "a part's headers are not 'Name: value' lines, or too many of them"
    reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
    return next((words for start, words in _READER_WORDS if reason.startswith(start)), reason)


async def _read_parts(reader: MultipartReader, endpoint: str) -> tuple[dict[str, str], dict[str, bytes]]:
    fields: dict[str, str] = {}
    files: dict[str, bytes] = {}
    for _ in range(MAX_PARTS + 1):
        part = await reader.next()
        if part is None:
            return fields, files
        if not isinstance(part, BodyPartReader):
            raise bad_request("The form holds a nested multipart part: send each field as its own part.")
        if not part.name:
            raise bad_request('A form part has no name: give each one Content-Disposition: form-data; name="…".')
        name = part.name.removesuffix("[]")
        if part.filename is not None and name not in FILE_FIELDS[endpoint]:
            raise bad_request(f"Unrecognized request argument supplied: {name}", name)
        if name in FILE_FIELDS[endpoint]:
            if name in files:
                raise bad_request(f"Send one {name}: these models edit one picture per request.", name)
            files[name] = await _bounded(part.read_chunk, uploads.MAX_UPLOAD, name)
        else:
            raw = await _bounded(part.read_chunk, MAX_FIELD_BYTES, name)
            try:
                fields[name] = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise bad_request(f"{name} is not UTF-8 text.", name) from None
    raise bad_request(f"The form has more than {MAX_PARTS} parts.")


async def _bounded(read: Callable[[int], Awaitable[bytes]], limit: int, param: str) -> bytes:
    """Read a stream to its end, refusing it (413) past `limit` bytes without reading further."""
    data = bytearray()
    while chunk := await read(64 * 1024):
        data += chunk
        if len(data) > limit:
            if param in ("image", "mask"):
                uploads.check_upload_size(len(data), param)
            raise ApiError(413, f"{param} is over {limit // 1024} KB, the most this server reads.", param, "too_large")
    return bytes(data)
