"""OpenAI's images API (generations, edits, variations, models) served by ComfyUI itself: each request fills a
model's workflow template and runs through ComfyUI's own prompt queue.

The parsing, checking and template filling are plain modules (requests, uploads, model_templates, access); the
aiohttp routes live in routes.py, which reads bodies through bodies.py and builds answers in answers.py, and
ComfyUI's server internals only in comfy_server.py.
"""

from __future__ import annotations


def register() -> None:
    """Add the /v1 routes to ComfyUI's server, when the pack loads inside one (nothing happens elsewhere)."""
    from . import comfy_server

    if comfy_server.running():
        from . import routes

        routes.register()
