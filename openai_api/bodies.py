"""Reading request bodies within limits: a JSON body, or a multipart form's text fields and files, each refused (413)
as soon as it passes its size instead of being read to its end."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from aiohttp import BodyPartReader, web

from . import uploads
from .errors import ApiError, bad_request
from .requests import FILE_FIELDS

MAX_JSON_BYTES = 64 * 1024
MAX_FIELD_BYTES = 16 * 1024
MAX_PARTS = 32


async def read_json(request: web.Request) -> object:
    if request.content_type != "application/json":
        raise bad_request(f"Send the request as JSON (Content-Type: application/json), not {request.content_type}.")
    data = await _bounded(request.content.read, MAX_JSON_BYTES, "body")
    try:
        return json.loads(data)
    except (ValueError, RecursionError):  # bad UTF-8 or JSON, or nested too deep
        raise bad_request("The request body is not valid JSON.") from None


async def read_form(request: web.Request, endpoint: str) -> tuple[dict[str, str], dict[str, bytes]]:
    """A multipart form's text fields and files, each read only up to its limit."""
    if request.content_type != "multipart/form-data":
        raise bad_request(
            f"Send images/{endpoint} as multipart/form-data (as the openai client does), not {request.content_type}."
        )
    fields: dict[str, str] = {}
    files: dict[str, bytes] = {}
    reader = await request.multipart()
    for _ in range(MAX_PARTS + 1):
        part = await reader.next()
        if part is None:
            return fields, files
        if not isinstance(part, BodyPartReader):
            raise bad_request("The form holds a nested multipart part: send each field as its own part.")
        name = (part.name or "").removesuffix("[]")
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
