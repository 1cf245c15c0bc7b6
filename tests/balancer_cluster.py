"""Two ComfyUI workers behind a real HAProxy run with the shipped deploy/haproxy.cfg, for test_balancer.py.

Each worker is a ComfyUI with this pack and the tiny checkpoints (conftest's launch), its own base directory and
port, the API key, DALLE_NODES_API_MAX_JOBS = JOBS = the balancer's DALLE_WORKER_JOBS, and the public URL of its /w/N
prefix on the balancer. HAProxy's stats CSV (on the exporter's port) tells each server's state and its queue.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from api_models import shrunk_description
from comfyui_servers import ROOT, ComfyUI, free_port, launch, stop, wait_until_serving

KEY = "sk-balancer-test"
JOBS = 2  # each worker's job limit and HAProxy's maxconn per worker
STEPS = {"DallePriorSample": 3, "DalleDecoderSample": 4}
SLOWER_STEPS = {"DallePriorSample": 3, "DalleDecoderSample": 60}  # a job that lasts seconds: in flight when we act
CONFIG = ROOT / "deploy" / "haproxy.cfg"
STARTUP_TIMEOUT_S = 60


def haproxy() -> str:
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        pytest.skip("HAProxy is not installed (Debian: apt-get install haproxy; .ci/run installs it)")
    return found


def http_get(url: str, key: str | None = None, timeout: float = 30) -> tuple[int, bytes, dict]:
    """(status, body, headers) of a GET; HTTP errors come back like successes."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.read(), dict(answer.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


def write_models(base: Path) -> None:
    """dall-e-2 with the few steps the tiny checkpoints need, and `slower`, the same with 60 decoder steps."""
    models = base / "user" / "dalle-nodes" / "openai-models"
    models.mkdir(parents=True)
    (models / "dall-e-2.model.json").write_text(json.dumps(shrunk_description("dall-e-2", STEPS)))
    slower = shrunk_description("dall-e-2", SLOWER_STEPS)
    (models / "slower.model.json").write_text(json.dumps({"generations": slower["generations"]}))


@dataclass
class Cluster:
    bases: list[Path]
    ports: list[int]
    balancer_port: int
    exporter_port: int
    log: Path
    workers: list[ComfyUI] = field(default_factory=list)
    balancer: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.balancer_port}"

    @property
    def exporter(self) -> str:
        return f"http://127.0.0.1:{self.exporter_port}"

    def worker_env(self, number: int) -> dict[str, str]:
        return {
            "DALLE_NODES_API_KEY": KEY,
            "DALLE_NODES_API_MAX_JOBS": str(JOBS),
            "DALLE_NODES_API_PUBLIC_URL": f"{self.url}/w/{number}",
            "OMP_NUM_THREADS": "1",  # two workers share two cores
        }

    def start_worker(self, index: int) -> ComfyUI:
        """Launch worker index+1 (not yet serving: see wait_until_serving)."""
        return launch(self.bases[index], self.worker_env(index + 1), self.ports[index])

    def restart(self, index: int) -> ComfyUI:
        """Start worker index+1 again (after it was killed) on its port and base directory; serving on return."""
        stop(self.workers[index].process)
        self.workers[index] = self.start_worker(index)
        wait_until_serving(self.workers[index])
        return self.workers[index]

    def start_balancer(self) -> None:
        env = {
            **os.environ,
            "DALLE_LB_BIND": f"127.0.0.1:{self.balancer_port}",
            "DALLE_LB_METRICS_BIND": f"127.0.0.1:{self.exporter_port}",
            "DALLE_WORKER_JOBS": str(JOBS),
        }
        for number, port in enumerate(self.ports, 1):
            env[f"DALLE_WORKER_{number}"] = f"127.0.0.1:{port}"
        with self.log.open("ab") as out:
            self.balancer = subprocess.Popen([haproxy(), "-db", "-f", str(CONFIG)], env=env, stdout=out, stderr=out)

    def servers(self, backend: str = "jobs") -> dict[str, dict[str, str]]:
        """HAProxy's stats rows of `backend`'s servers (status, qcur, scur, …) and of the backend itself."""
        status, body, _ = http_get(f"{self.exporter}/stats;csv")
        assert status == 200, body[:300]
        rows = csv.DictReader(io.StringIO(body.decode().removeprefix("# ")))
        return {row["svname"]: row for row in rows if row["pxname"] == backend}

    def wait_for_state(self, server: str, state: str, timeout_s: float) -> float:
        """Seconds until HAProxy shows `server` of the jobs backend as `state` (UP or DOWN)."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            assert self.balancer.poll() is None, f"HAProxy exited:\n{self.log.read_text(errors='replace')[-3000:]}"
            with _no_connection_error():
                if self.servers()[server]["status"].split(" ")[0] == state:
                    return time.monotonic() - start
            time.sleep(0.1)  # polling HAProxy's stats: it has no way to wait for a change
        raise AssertionError(f"HAProxy did not show {server} {state} within {timeout_s} s: {self.servers()[server]}")

    def failure_logs(self) -> list[tuple[str, str]]:
        logs = [(f"worker {n} log (tail)", w.log.read_text(errors="replace")[-8000:]) for n, w in enumerate(self, 1)]
        return [*logs, ("HAProxy log (tail)", self.log.read_text(errors="replace")[-8000:])]

    def __iter__(self):
        return iter(self.workers)

    def stop(self) -> None:
        for worker in self.workers:
            stop(worker.process)
        if self.balancer is not None:
            self.balancer.terminate()
            self.balancer.wait(timeout=15)


class _no_connection_error:
    """Ignore a refused connection (HAProxy's exporter not listening yet) for one look."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, trace) -> bool:
        return kind is not None and issubclass(kind, (ConnectionError, urllib.error.URLError))


def start_cluster(folder: Path, workers: int = 2) -> Cluster:
    """`workers` ComfyUI workers (launched together, so their slow start overlaps) and HAProxy in front, every
    worker UP in HAProxy on return."""
    bases = [folder / f"worker{number}" for number in range(1, workers + 1)]
    for base in bases:
        write_models(base)
    ports = [free_port() for _ in bases]
    cluster = Cluster(bases, ports, free_port(), free_port(), folder / "haproxy.log")
    try:
        cluster.workers = [cluster.start_worker(index) for index in range(workers)]
        for worker in cluster.workers:
            wait_until_serving(worker)
        cluster.start_balancer()
        for number in range(1, workers + 1):
            cluster.wait_for_state(f"w{number}", "UP", STARTUP_TIMEOUT_S)
    except BaseException:
        cluster.stop()
        raise
    return cluster
