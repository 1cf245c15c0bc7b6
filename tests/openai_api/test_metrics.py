"""openai_api/metrics.py: the /v1/metrics page, read back with prometheus_client's own parser."""

from __future__ import annotations

import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dalle_nodes.openai_api import metrics
from dalle_nodes.openai_api.errors import ApiError
from dalle_nodes.openai_api.metrics import HUNG_UP, Load, Metrics


def samples(page: bytes) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(page.decode())
        for sample in family.samples
    }


def test_answers_are_counted_by_route_and_status_with_rejections_and_hangups_apart() -> None:
    metrics = Metrics()
    for route, status in (
        [("generations", 200)] * 3 + [("generations", 429)] * 2 + [("edits", HUNG_UP), ("health", 503)]
    ):
        metrics.answered(route, status)
    page = samples(metrics.text(Load(running=1, queued=4, api_jobs=2, limit=8, ready=True)))
    assert page[("dalle_nodes_api_requests_total", (("route", "generations"), ("status", "200")))] == 3
    assert page[("dalle_nodes_api_requests_total", (("route", "generations"), ("status", "429")))] == 2
    assert page[("dalle_nodes_api_requests_total", (("route", "health"), ("status", "503")))] == 1
    assert page[("dalle_nodes_api_rejections_total", ())] == 2
    assert page[("dalle_nodes_api_client_hangups_total", ())] == 1
    gauges = {name: page[(f"dalle_nodes_api_{name}", ())] for name in ("running_jobs", "queue_depth", "jobs")}
    assert gauges == {"running_jobs": 1, "queue_depth": 4, "jobs": 2}
    assert page[("dalle_nodes_api_job_limit", ())] == 8 and page[("dalle_nodes_api_ready", ())] == 1


def test_job_seconds_is_a_histogram_by_model() -> None:
    metrics = Metrics()
    for seconds in (0.2, 3.0, 700.0):
        metrics.job_seconds.labels(model="dall-e-2").observe(seconds)
    page = samples(metrics.text(Load(0, 0, 0, 32, ready=False)))
    assert page[("dalle_nodes_api_job_seconds_count", (("model", "dall-e-2"),))] == 3
    assert page[("dalle_nodes_api_job_seconds_bucket", (("le", "0.5"), ("model", "dall-e-2")))] == 1
    assert page[("dalle_nodes_api_job_seconds_bucket", (("le", "600.0"), ("model", "dall-e-2")))] == 2
    assert page[("dalle_nodes_api_job_seconds_sum", (("model", "dall-e-2"),))] == 703.2
    assert page[("dalle_nodes_api_ready", ())] == 0


def test_each_metrics_object_has_its_own_registry() -> None:
    """Two registrations (a reloaded pack, another custom node's metrics) never clash or mix counts."""
    first, second = Metrics(), Metrics()
    first.answered("models", 200)
    load = Load(0, 0, 0, 1, ready=True)
    assert ("dalle_nodes_api_requests_total", (("route", "models"), ("status", "200"))) not in samples(
        second.text(load)
    )


def test_without_prometheus_client_the_pack_loads_and_metrics_say_what_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import prometheus_client → ImportError
    missing = metrics.create()
    missing.answered("generations", 200)
    missing.finished("dall-e-2", 1.0)
    with pytest.raises(ApiError, match=r"prometheus_client.*pip install -r") as raised:
        missing.text(Load(0, 0, 0, 1, ready=True))
    assert raised.value.status == 500
