"""The images API's settings from the environment, read when the routes are registered (or, for the aliases, with
each request's catalogue): a bad value is a warning and the default, never a server that does not start."""

from __future__ import annotations

import logging
import os
import re

MAX_JOBS_VARIABLE = "DALLE_NODES_API_MAX_JOBS"
PUBLIC_URL_VARIABLE = "DALLE_NODES_API_PUBLIC_URL"  # this process's address as clients reach it (for url answers)
ALIASES_VARIABLE = "DALLE_NODES_API_ALIASES"  # the shipped descriptions' aliases to serve, e.g. "dall-e-3,gpt-image-1"
DEFAULT_MAX_JOBS = 32
log = logging.getLogger("dalle_nodes.openai_api")


def max_jobs() -> int:
    raw = os.environ.get(MAX_JOBS_VARIABLE, "").strip()
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    if raw:
        log.warning(
            "dalle-nodes: %s=%r is not a whole number above 0; using %d.", MAX_JOBS_VARIABLE, raw, DEFAULT_MAX_JOBS
        )
    return DEFAULT_MAX_JOBS


def public_url() -> str:
    raw = os.environ.get(PUBLIC_URL_VARIABLE, "").strip().rstrip("/")
    if raw and not re.fullmatch(r"https?://[^\s?#]+", raw):
        log.warning(
            "dalle-nodes: %s=%r is not an http(s) address; url answers use the request's host.",
            PUBLIC_URL_VARIABLE,
            raw,
        )
        return ""
    return raw


def shipped_aliases() -> frozenset[str]:
    """The aliases of the shipped descriptions the operator opted in to, e.g. DALLE_NODES_API_ALIASES=dall-e-3,
    gpt-image-1 (commas or spaces between names)."""
    return frozenset(name for name in re.split(r"[\s,]+", os.environ.get(ALIASES_VARIABLE, "")) if name)
