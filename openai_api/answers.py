"""The answers' bodies: a model's entry in /v1/models, and a finished job's images as OpenAI's data list (links to
ComfyUI's /view, or the PNGs themselves), or the job's failure as an ApiError."""

from __future__ import annotations

import base64
import re
import urllib.parse

from aiohttp import web

from . import comfy_server
from .errors import ApiError, bad_request
from .model_templates import Model, Variant

_HOST = re.compile(r"[A-Za-z0-9.\-]{1,253}(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?")


def model_entry(model: Model) -> dict:
    endpoints = sorted(model.endpoints)
    return {
        "id": model.id,
        "object": "model",
        "created": model.created,
        "owned_by": "dalle-nodes",
        "description": model.description,
        "endpoints": endpoints,
        "sizes": list(model.sizes),
    }


def image_data(link: str | None, variant: Variant, entry: dict) -> list[dict]:
    """The finished job's images as OpenAI's data list: /view links after `link`, or the PNGs themselves where
    `link` is None; a failed job → ApiError 500 with ComfyUI's error."""
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
    if link is not None:
        keys = ("filename", "subfolder", "type")
        return [{"url": link + urllib.parse.urlencode({key: image.get(key, "") for key in keys})} for image in found]
    return [{"b64_json": base64.b64encode(_image_bytes(image)).decode("ascii")} for image in found]


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


def _image_bytes(image: dict) -> bytes:
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
