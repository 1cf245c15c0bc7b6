"""openai_api/readiness.py: the worker's state for /v1/health, the drain time, and SIGTERM's drain."""

from __future__ import annotations

import asyncio
import logging

import pytest

from dalle_nodes.openai_api import readiness
from dalle_nodes.openai_api.model_templates import Catalogue

MODELS = Catalogue(models={"dall-e-2": object()})


@pytest.mark.parametrize(
    ("catalogue", "jobs", "draining", "state"),
    [
        (MODELS, 0, False, readiness.READY),
        (MODELS, 3, False, readiness.READY),
        (MODELS, 4, False, readiness.FULL),
        (MODELS, 0, True, readiness.SHUTTING_DOWN),
        (Catalogue(), 0, False, readiness.NO_MODELS),
        (Catalogue(models=MODELS.models, unreadable=True), 0, False, readiness.UNREADABLE),
        (Catalogue(unreadable=True), 4, True, readiness.SHUTTING_DOWN),  # the strongest reason first
    ],
)
def test_status(catalogue: Catalogue, jobs: int, draining: bool, state: str) -> None:
    assert readiness.status(catalogue, jobs, 4, draining) == state


@pytest.mark.parametrize(("raw", "seconds"), [("", 60.0), ("0", 0.0), ("12.5", 12.5), ("3600", 3600.0)])
def test_drain_seconds(monkeypatch: pytest.MonkeyPatch, raw: str, seconds: float) -> None:
    monkeypatch.setenv(readiness.DRAIN_VARIABLE, raw)
    assert readiness.drain_seconds() == seconds


@pytest.mark.parametrize("raw", ["-1", "soon", "nan", "1e9"])
def test_a_bad_drain_time_is_named_and_the_default_used(monkeypatch, caplog, raw: str) -> None:
    monkeypatch.setenv(readiness.DRAIN_VARIABLE, raw)
    with caplog.at_level(logging.WARNING):
        assert readiness.drain_seconds() == readiness.DEFAULT_DRAIN_S
    assert readiness.DRAIN_VARIABLE in caplog.text and repr(raw) in caplog.text


class Stopped(Exception):
    """Stands for ComfyUI's stop (a KeyboardInterrupt that ends its event loop)."""


def drain(jobs: list[int], limit_s: float, monkeypatch) -> tuple[list[str], float]:
    """Run a Drain on a fresh loop: SIGTERM, then jobs[0] falls to 0 after 0.3 s; (what happened, seconds)."""
    events: list[str] = []

    def stop() -> None:
        events.append(f"stopped with {jobs[0]} jobs")
        raise Stopped

    monkeypatch.setattr(readiness.comfy_server, "stop", stop)
    draining = readiness.Drain(lambda: events.append("no new jobs"), lambda: jobs[0], limit_s)

    async def scenario() -> None:
        asyncio.get_running_loop().call_later(0.3, jobs.__setitem__, 0, 0)
        draining.signalled()
        await draining.task

    loop = asyncio.new_event_loop()
    start = loop.time()
    with pytest.raises(Stopped):
        loop.run_until_complete(scenario())
    took = loop.time() - start
    loop.close()
    return events, took


def test_sigterm_waits_for_the_jobs_then_stops(monkeypatch) -> None:
    events, took = drain([2], 10, monkeypatch)
    assert events == ["no new jobs", "stopped with 0 jobs"] and 0.3 <= took < 2


def test_sigterm_stops_after_the_drain_time_whatever_runs(monkeypatch) -> None:
    events, took = drain([2], 0.1, monkeypatch)
    assert events == ["no new jobs", "stopped with 2 jobs"] and took < 0.3


def test_a_second_sigterm_stops_at_once(monkeypatch) -> None:
    monkeypatch.setattr(readiness.comfy_server, "stop", lambda: (_ for _ in ()).throw(Stopped))
    draining = readiness.Drain(lambda: None, lambda: 1, 60)

    async def twice() -> None:
        draining.signalled()
        draining.signalled()

    loop = asyncio.new_event_loop()
    with pytest.raises(Stopped):
        loop.run_until_complete(twice())
    draining.task.cancel()
    loop.close()
