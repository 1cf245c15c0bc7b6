"""Who may call the /v1 routes: with DALLE_NODES_API_KEY set (one key, or several separated by commas), a request
needs `Authorization: Bearer <key>`; without it the routes are open, like the rest of ComfyUI."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping

from .errors import ApiError

KEY_VARIABLE = "DALLE_NODES_API_KEY"


def keys_from(environment: Mapping[str, str]) -> tuple[bytes, ...]:
    """The accepted keys; none means the routes are open. Each is kept as its SHA-256, so every comparison below
    takes the same time whatever the keys' lengths."""
    raw = environment.get(KEY_VARIABLE, "")
    keys = tuple(hashlib.sha256(key.strip().encode()).digest() for key in raw.split(",") if key.strip())
    if raw.strip() and not keys:  # set to commas alone: a mistake, read the safe way (no key opens the routes)
        keys = (hashlib.sha256(secrets.token_bytes(32)).digest(),)
    return keys


def set_but_empty(environment: Mapping[str, str]) -> bool:
    raw = environment.get(KEY_VARIABLE, "")
    return bool(raw.strip()) and not any(key.strip() for key in raw.split(","))


def check(authorization: str | None, keys: tuple[bytes, ...]) -> None:
    """Pass if the routes are open or the header carries one of the keys; else ApiError 401. Every key is compared,
    in constant time, so the answer's timing does not tell how close a guess came or which key it matched."""
    if not keys:
        return
    scheme, _, token = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            401,
            "You didn't provide an API key: send it as 'Authorization: Bearer <key>' (the openai client's api_key); "
            f"this server's keys are set in {KEY_VARIABLE}.",
            code="missing_api_key",
        )
    offered = hashlib.sha256(token.strip().encode("utf-8", "surrogateescape")).digest()  # any bytes a header holds
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(offered, key)
    if not matched:
        raise ApiError(401, f"Incorrect API key provided: it is not among {KEY_VARIABLE}.", code="invalid_api_key")


def allows(authorization: str | None, keys: tuple[bytes, ...]) -> bool:
    """Whether `check` passes: the routes are open or the header carries one of the keys."""
    try:
        check(authorization, keys)
    except ApiError:
        return False
    return True
