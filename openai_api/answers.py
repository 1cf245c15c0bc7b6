"""The answers' bodies: a model's entry in /v1/models, and a finished job's images as OpenAI's data list (links to
ComfyUI's /view, or the pictures themselves, in the requested output format), or the job's failure as an
ApiError."""

from __future__ import annotations

import base64
import io
import re
import urllib.parse

from aiohttp import web
from PIL import Image

from . import comfy_server
from .errors import ApiError, bad_request
from .image_options import ImageOptions
from .model_templates import Model, Variant
from .requests import ImageRequest

_HOST = re.compile(r"[A-Za-z0-9.\-]{1,253}(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?")


def model_entry(model: Model, alias: str | None = None) -> dict:
    """A model's entry in /v1/models, or an alias's (the model's, under the alias's id, with alias_of)."""
    sizes = [*model.sizes, *(size for variants in model.endpoints.values() for v in variants for size in v.sizes)]
    return {
        "id": alias or model.id,
        "object": "model",
        "created": model.created,
        "owned_by": "dalle-nodes",
        "description": model.description,
        "endpoints": sorted(model.endpoints),
        "sizes": list(dict.fromkeys(sizes)),
    } | ({"alias_of": model.id} if alias else {})


def image_data(link: str | None, variant: Variant, entry: dict, request: ImageRequest) -> list[dict]:
    """The finished job's images as OpenAI's data list, in the request's output_format: /view links after `link`
    (a PNG the workflow saved, or its conversion written beside it), or the bytes themselves where `link` is None;
    each with the prompt used as revised_prompt. A failed job → ApiError 500 with ComfyUI's error."""
    data, prompt = [], revised_prompt(request, variant, entry)
    for image in saved_images(variant, entry):
        if link is None:
            item = {"b64_json": base64.b64encode(encoded(image_bytes(image), request.options)).decode("ascii")}
        else:
            image = _converted(image, request.options)
            keys = ("filename", "subfolder", "type")
            item = {"url": link + urllib.parse.urlencode({key: image.get(key, "") for key in keys})}
        data.append(item | ({"revised_prompt": prompt} if prompt is not None else {}))
    return data


def revised_prompt(request: ImageRequest, variant: Variant, entry: dict) -> str | None:
    """The prompt the model read: the English of a translate node the prompt went through (its shown text in the
    job's outputs), else the prompt as sent."""
    for node, _ in variant.inputs.get("prompt", ()):
        shown = entry.get("outputs", {}).get(node, {}).get("text")
        if isinstance(shown, list) and shown and isinstance(shown[0], str):
            return shown[0]
    return request.prompt


def saved_images(variant: Variant, entry: dict) -> list[dict]:
    """The images (filename, subfolder, type) the finished job saved for the answer; a failed job, or one that
    saved none → ApiError 500."""
    status = entry.get("status") or {}
    if status.get("status_str") != "success":
        raise ApiError(500, f"The model's workflow failed: {_failure(status)}", code="workflow_failed")
    found = [
        image
        for node_id, output in entry.get("outputs", {}).items()
        if variant.output in (None, node_id)
        for image in output.get("images", [])
        if image.get("type") in ("output", "temp")
    ]
    if not found:
        raise ApiError(500, "The model's workflow saved no images: end it with a Save Image node.", code="no_images")
    return found


def encoded(png: bytes, options: ImageOptions) -> bytes:
    """A saved PNG's bytes in the requested output_format (JPEG and WebP at output_compression's quality)."""
    if options.output_format == "png":
        return png
    with Image.open(io.BytesIO(png)) as picture:
        keeps_alpha = options.output_format == "webp" and "A" in picture.getbands()
        converted = picture.convert("RGBA" if keeps_alpha else "RGB")
    out = io.BytesIO()
    converted.save(out, format=options.output_format.upper(), quality=options.output_compression)
    return out.getvalue()


def response_fields(request: ImageRequest, quality: str | None) -> dict:
    """What OpenAI's ImagesResponse (and each stream event) says of the pictures beside them."""
    fields = {"output_format": request.options.output_format, "size": request.size}
    fields["background"] = "transparent" if request.options.background == "transparent" else "opaque"
    return fields | ({"quality": quality} if quality is not None else {})


def _converted(image: dict, options: ImageOptions) -> dict:
    """The image as the output_format asks: the saved PNG, or its conversion written beside it (same name, the
    format's suffix; the PNG stays, as the job's history names it)."""
    if options.output_format == "png":
        return image
    path = comfy_server.output_file(image)
    if path is None:
        raise ApiError(500, f"The image {image.get('filename')!r} the workflow saved is gone.", code="no_images")
    target = path.with_suffix(f".{options.output_format}")
    target.write_bytes(encoded(path.read_bytes(), options))
    return image | {"filename": target.name}


def view_link(request: web.Request, public_url: str) -> str:
    """Where this client reaches ComfyUI's /view: `public_url`'s (DALLE_NODES_API_PUBLIC_URL), else the address it
    called (with the /api prefix if it used it)."""
    prefix = "/api" if request.path.startswith("/api/") else ""
    return f"{public_url or _origin(request) + prefix}/view?"


def _origin(request: web.Request) -> str:
    """scheme://host the client used: behind a reverse proxy, as its X-Forwarded-Proto and X-Forwarded-Host say (they
    only shape the links this same client gets back)."""
    scheme = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    host = request.headers.get("X-Forwarded-Host", "").split(",")[0].strip()
    scheme = scheme if scheme in ("http", "https") else request.scheme
    host = host if _HOST.fullmatch(host) else request.host
    if not _HOST.fullmatch(host):
        raise bad_request(
            f"The Host header {host[:100]!r} is not a host name, so no link can be made: send a valid "
            "one, or ask for response_format b64_json."
        )
    return f"{scheme}://{host}"


def image_bytes(image: dict) -> bytes:
    path = comfy_server.output_file(image)
    if path is None:
        raise ApiError(500, f"The image {image.get('filename')!r} the workflow saved is gone.", code="no_images")
    return path.read_bytes()


def _failure(status: dict) -> str:
    """ComfyUI's execution error (node, exception, message) from a history status, in one line."""
    for kind, details in status.get("messages", []):
        if kind == "execution_error":
            message = str(details.get("exception_message", "")).strip()
            return f"{details.get('node_type')} (node {details.get('node_id')}): {message}"
        if kind == "execution_interrupted":
            return "it was interrupted (from the ComfyUI window or /interrupt)."
    return status.get("status_str") or "unknown error"
