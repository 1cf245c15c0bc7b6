"""The images API's Prometheus metrics, served at GET /v1/metrics in Prometheus' text format.

They live in a registry of their own, not prometheus_client's global one, so another custom node's metrics never
clash with ours and ours list only the API. Labels take bounded values only (our route names, HTTP statuses, the ids
of models that ran): nothing from a request's text, no key, no path. prometheus_client is imported only here, when
the routes start: a ComfyUI whose Python lacks it (the pack updated without its requirements) still loads the pack,
and /v1/metrics says what to install.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .errors import ApiError

PREFIX = "dalle_nodes_api"
log = logging.getLogger("dalle_nodes.openai_api")
HUNG_UP = 499  # the status our routes log for a client that went away before its answer (nginx's convention)
# A tiny model's job takes under a second on a GPU, a 50-step 1024² DALL·E 2 batch of 10 minutes.
JOB_SECONDS_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, float("inf"))


@dataclass(frozen=True)
class Load:
    """What the worker holds at one moment: ComfyUI's queue and the API's own jobs."""

    running: int
    queued: int
    api_jobs: int
    limit: int
    ready: bool


_LOAD_GAUGES = {  # Load's field: (the gauge's name, what it counts)
    "running": ("running_jobs", "Prompts ComfyUI runs now (canvas runs included)"),
    "queued": ("queue_depth", "Prompts waiting in ComfyUI's queue (canvas runs included)"),
    "api_jobs": ("jobs", "API requests holding a job, waiting or running"),
    "limit": ("job_limit", "The most API jobs this worker holds (DALLE_NODES_API_MAX_JOBS)"),
    "ready": ("ready", "1 while /v1/health answers 200 (the worker takes jobs), 0 while it answers 503"),
}


def create() -> Metrics | MissingMetrics:
    """The API's metrics, or a stand-in that counts nothing where prometheus_client is not installed."""
    try:
        return Metrics()
    except ImportError:
        log.warning("dalle-nodes: prometheus_client is not installed: /v1/metrics answers 500 until it is.")
        return MissingMetrics()


class Metrics:
    """The counters the routes feed, and the load as it is when Prometheus scrapes."""

    def __init__(self) -> None:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram

        self.content_type = CONTENT_TYPE_LATEST
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            f"{PREFIX}_requests",
            "Requests answered, by route and HTTP status",
            ["route", "status"],
            registry=self.registry,
        )
        self.job_seconds = Histogram(
            f"{PREFIX}_job_seconds",
            "Seconds from queueing an API job to its end (waiting in ComfyUI's queue included), by model",
            ["model"],
            buckets=JOB_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.rejections = Counter(
            f"{PREFIX}_rejections", "Requests refused with 429: the API job limit was full", registry=self.registry
        )
        self.hangups = Counter(
            f"{PREFIX}_client_hangups", "Clients that went away before their answer", registry=self.registry
        )
        self.load = {
            field: Gauge(f"{PREFIX}_{name}", documentation, registry=self.registry)
            for field, (name, documentation) in _LOAD_GAUGES.items()
        }

    def finished(self, model: str, seconds: float) -> None:
        self.job_seconds.labels(model=model).observe(seconds)

    def answered(self, route: str, status: int) -> None:
        self.requests.labels(route=route, status=str(status)).inc()
        if status == 429:
            self.rejections.inc()
        elif status == HUNG_UP:
            self.hangups.inc()

    def text(self, load: Load) -> bytes:
        """The metrics in Prometheus' text format, with the load gauges set to `load` (read just before)."""
        from prometheus_client import generate_latest

        for field, gauge in self.load.items():
            gauge.set(int(getattr(load, field)))
        return generate_latest(self.registry)


class MissingMetrics:
    """Metrics without prometheus_client: nothing counted, and /v1/metrics says how to get them."""

    content_type = "application/json"

    def finished(self, model: str, seconds: float) -> None:
        pass

    def answered(self, route: str, status: int) -> None:
        pass

    def text(self, load: Load) -> bytes:
        raise ApiError(
            500,
            "The metrics need the prometheus_client package, which this ComfyUI's Python lacks: install the pack's "
            "requirements (pip install -r custom_nodes/dalle-nodes/requirements.txt) and restart.",
            code="metrics_unavailable",
        )
