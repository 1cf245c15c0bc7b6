"""The real-ComfyUI tests' fixtures: a server per module (tests/comfyui_servers.py starts it: ComfyUI from $COMFYUI_PATH
with our package in custom_nodes and tiny checkpoints in models/dalle).

Without COMFYUI_PATH the tests skip. With DALLE_NODES_REQUIRE_COMFYUI=1 (as CI sets) every test must run: a skip
fails instead. COMFYUI_PATH set to something that is not a checkout fails either way.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from comfyui_servers import ComfyUI, start_comfyui

REQUIRE = "DALLE_NODES_REQUIRE_COMFYUI"


def required() -> bool:
    """Whether the real-ComfyUI tests must run (CI): then a skipped test is a failed one."""
    return os.environ.get(REQUIRE, "").strip() not in ("", "0")


@pytest.fixture(scope="module")
def comfyui(request, tmp_path_factory) -> Iterator[ComfyUI]:
    """One server per test module; a module may set COMFYUI_ENV (more environment variables) and define
    prepare_comfyui(base) (called on the base directory before the server starts)."""
    base = tmp_path_factory.mktemp("comfyui-base")
    prepare = getattr(request.module, "prepare_comfyui", None)
    if prepare is not None:
        prepare(base)
    with start_comfyui(base, getattr(request.module, "COMFYUI_ENV", None)) as server:
        yield server


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    """Attach the servers' logs to every failing test that used them; with DALLE_NODES_REQUIRE_COMFYUI set,
    turn a skip into a failure."""
    report = yield
    if report.skipped and required() and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        report.outcome = "failed"
        report.longrepr = f"{REQUIRE}=1: the real-ComfyUI tests must run, but this one was skipped: {reason}"
    if report.failed:
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, ComfyUI):
                report.sections.append(("ComfyUI server log (tail)", value.log.read_text(errors="replace")[-20000:]))
            elif hasattr(value, "failure_logs"):  # several servers (test_balancer's cluster)
                report.sections.extend(value.failure_logs())
    return report
