"""Whether this worker takes new jobs (what GET /v1/health tells a load balancer), and SIGTERM's drain.

A worker is ready when its models load and its API job limit has room. It is not while the limit is full (a
balancer that only reads the status code, such as Kubernetes' readiness probe, sends the next job elsewhere), while
its models folder cannot be read or no model loads (it would serve other models than its peers, or none), and while
it shuts down. SIGTERM starts that shutdown: new image requests get 503 (a balancer or the client retries them
elsewhere), the jobs already taken run to their end, at most DALLE_NODES_API_DRAIN_S seconds, then ComfyUI stops as
on Ctrl-C. A second SIGTERM stops it at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable

from . import comfy_server
from .model_templates import Catalogue

READY = "ok"
FULL = "full"  # the one not-ready state deploy/haproxy.cfg keeps in rotation: its maxconn already holds work back
SHUTTING_DOWN = "shutting down"
NO_MODELS = "no models"
UNREADABLE = "models folder unreadable"

DRAIN_VARIABLE = "DALLE_NODES_API_DRAIN_S"
DEFAULT_DRAIN_S = 60.0
DRAIN_TICK_S = 0.2
log = logging.getLogger("dalle_nodes.openai_api")


def status(catalogue: Catalogue, api_jobs: int, limit: int, draining: bool) -> str:
    """The worker's state, READY or the reason it takes no job now."""
    if draining:
        return SHUTTING_DOWN
    if catalogue.unreadable:
        return UNREADABLE
    if not catalogue.models:
        return NO_MODELS
    return FULL if api_jobs >= limit else READY


def drain_seconds() -> float:
    raw = os.environ.get(DRAIN_VARIABLE, "").strip()
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if raw and not 0 <= seconds <= 3600:
        log.warning("dalle-nodes: %s=%r is not 0 to 3600 seconds; using %g.", DRAIN_VARIABLE, raw, DEFAULT_DRAIN_S)
    return seconds if raw and 0 <= seconds <= 3600 else DEFAULT_DRAIN_S


class Drain:
    """SIGTERM's handler: `begin()` marks the worker as shutting down (through `on_begin`), waits while `busy()`
    counts jobs (at most `limit_s`), then stops ComfyUI."""

    def __init__(self, on_begin: Callable[[], None], busy: Callable[[], int], limit_s: float):
        self.on_begin = on_begin
        self.busy = busy
        self.limit_s = limit_s
        self.task: asyncio.Task | None = None

    def install(self) -> None:
        if not comfy_server.on_terminate(self.signalled):
            log.info("dalle-nodes: SIGTERM cannot be hooked here; it stops the server without draining.")

    def signalled(self) -> None:
        if self.task is not None:  # the second SIGTERM: the operator wants it gone now
            log.warning("dalle-nodes: SIGTERM again: stopping now, %d API job(s) unfinished.", self.busy())
            comfy_server.stop()
        self.on_begin()
        self.task = asyncio.get_running_loop().create_task(self._finish_jobs())

    async def _finish_jobs(self) -> None:
        log.info(
            "dalle-nodes: SIGTERM: taking no new API jobs; finishing %d (at most %g s, %s), then stopping.",
            self.busy(),
            self.limit_s,
            DRAIN_VARIABLE,
        )
        deadline = time.monotonic() + self.limit_s
        while self.busy() and time.monotonic() < deadline:
            await asyncio.sleep(DRAIN_TICK_S)
        if self.busy():
            log.warning("dalle-nodes: %g s passed; stopping with %d API job(s) unfinished.", self.limit_s, self.busy())
        comfy_server.stop()
