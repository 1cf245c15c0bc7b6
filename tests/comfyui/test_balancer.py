"""The images API of two ComfyUI workers behind a real HAProxy with the shipped deploy/haproxy.cfg, driven by the
official openai client through the balancer: spreading a load, url answers, keys, metrics, a worker killed with
SIGKILL mid-load and restarted, saturation, and SIGTERM's drain. The tests run in file order on one cluster (the kill
and the drain come last); each prints its figures (README "Scale out" quotes them).
"""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import os
import signal
import socket
import time
import urllib.parse

import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from balancer_cluster import JOBS, KEY, Cluster, http_get, start_cluster

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.skipif(
    not os.environ.get("COMFYUI_PATH"),
    reason="set COMFYUI_PATH to a ComfyUI checkout (and COMFYUI_PYTHON to its interpreter) to run",
)

TIMEOUT_S = 180  # a request's own timeout in the client: none may take longer (two busy cores, tiny models)
CHECK_WINDOW_S = 2 * 2 + 1  # deploy/haproxy.cfg: fall 2 checks, inter 2 s (fastinter 0.5 s once one failed)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Cluster:
    cluster = start_cluster(tmp_path_factory.mktemp("balancer"))
    yield cluster
    cluster.stop()


class Attempts:
    """Counts the HTTP requests the openai client sends (beyond one per call, its retries) and the statuses of the
    answers it retried."""

    def __init__(self) -> None:
        self.count = 0
        self.retried: list[tuple[int, str | None]] = []

    def request(self, request: object) -> None:
        self.count += 1

    def response(self, response) -> None:
        """An error answer's status and OpenAI error code (None where its body is not OpenAI's shape)."""
        if response.status_code >= 400:
            response.read()
            try:
                code = response.json()["error"]["code"]
            except (ValueError, KeyError, TypeError):
                code = None
            self.retried.append((response.status_code, code))


def client(cluster: Cluster, key: str = KEY, attempts: Attempts | None = None, retries: int = 2) -> openai.OpenAI:
    hooks = {"request": [attempts.request], "response": [attempts.response]} if attempts else {}
    http_client = openai.DefaultHttpxClient(event_hooks=hooks)
    return openai.OpenAI(
        base_url=cluster.url + "/v1", api_key=key, max_retries=retries, timeout=TIMEOUT_S, http_client=http_client
    )


def png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    image.load()
    return image


def api_jobs_in_history(worker) -> int:
    return sum(1 for entry in worker.get_json("/history").values() if entry["prompt"][3].get("dalle_nodes_api"))


def health(worker) -> tuple[int, dict]:
    status, body, _ = http_get(worker.url + "/v1/health")
    return status, json.loads(body)


def metric_samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a Prometheus text page, parsed by prometheus_client's own parser: (name, labels) → value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def worker_metrics(cluster: Cluster, number: int) -> dict[tuple[str, tuple], float]:
    status, body, _ = http_get(f"{cluster.url}/w/{number}/v1/metrics")  # through the balancer, without a key
    assert status == 200, body[:300]
    return metric_samples(body.decode())


def requests_counted(cluster: Cluster, route: str, status: int) -> float:
    key = ("dalle_nodes_api_requests_total", (("route", route), ("status", str(status))))
    return sum(worker_metrics(cluster, number).get(key, 0.0) for number in (1, 2))


def generate(api: openai.OpenAI, index: int, model: str = "dall-e-2") -> tuple[str, object, float]:
    """One generation: ("ok", its answer, seconds) or ("error", the exception, seconds); never raises."""
    start = time.monotonic()
    response_format = "url" if index % 2 else "b64_json"
    try:
        answer = api.images.generate(
            model=model, prompt=f"a fox number {index}", size="256x256", response_format=response_format
        )
        return "ok", answer, time.monotonic() - start
    except openai.APIError as error:
        return "error", error, time.monotonic() - start


def in_parallel(count: int, call) -> list:
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        return list(pool.map(call, range(count)))


def assert_openai_shaped(error: Exception) -> None:
    """An error the balancer or a worker answered in OpenAI's shape (never HAProxy's HTML page, never a hang)."""
    assert isinstance(error, openai.APIStatusError), repr(error)
    body = error.body if isinstance(error.body, dict) else {}
    assert {"message", "type", "code"} <= set(body), error.response.text[:300]


def test_twelve_generations_spread_over_both_workers(cluster: Cluster) -> None:
    results = in_parallel(12, lambda index: generate(client(cluster), index))
    assert [outcome for outcome, *_ in results] == ["ok"] * 12, [result[1] for result in results if result[0] != "ok"]
    per_worker = [api_jobs_in_history(worker) for worker in cluster]
    assert all(jobs > 0 for jobs in per_worker) and sum(per_worker) == 12, per_worker
    links = [answer.data[0].url for outcome, answer, _ in results if answer.data[0].url]
    assert len(links) == 6
    for link in links:  # each through the balancer's /w/N prefix, to the worker that holds the file
        assert link.startswith(f"{cluster.url}/w/"), link
        status, body, _ = http_get(link)
        assert status == 200 and png(body).size == (256, 256)
    print(f"\n12 concurrent generations: jobs per worker {per_worker}, worst {max(r[2] for r in results):.1f} s")


def test_a_stream_and_a_jpeg_link_pass_the_balancer(cluster: Cluster) -> None:
    """Server-sent events reach the client through HAProxy as the worker sends them; a converted picture's link
    goes to the worker that wrote it."""
    events = list(client(cluster).images.generate(prompt="a fox", size="256x256", stream=True, partial_images=1))
    assert [event.type for event in events] == ["image_generation.partial_image", "image_generation.completed"]
    answer = client(cluster).images.generate(prompt="a fox", size="256x256", output_format="jpeg")
    status, body, _ = http_get(answer.data[0].url)
    assert status == 200 and Image.open(io.BytesIO(body)).format == "JPEG"


def test_only_the_api_and_answer_links_pass_the_balancer(cluster: Cluster) -> None:
    link = urllib.parse.urlparse(client(cluster).images.generate(prompt="a fox", size="256x256").data[0].url)
    number = link.path.split("/")[2]
    query = urllib.parse.parse_qs(link.query)
    refused = {
        "/prompt": 404,  # ComfyUI's own routes stay private
        "/view?" + link.query: 404,  # /view only under a worker's prefix
        f"/w/{number}/view?" + link.query.replace("type=output", "type=input"): 403,
        f"/w/{number}/view?filename=x.png&subfolder=openai%2F..&type=output": 403,
        f"/w/{number}/view?filename={query['filename'][0]}&subfolder=&type=output": 403,  # outside output/openai
        f"/w/{number}/prompt": 404,
        "/w/7/v1/health": 404,  # no seventh worker
        "/v1/../index.html": 404,  # ComfyUI's frontend, had the path not been checked whole
        "/v1/%2e%2e/prompt": 404,
        "/api/v1/../../prompt": 404,
        f"/w/{number}/v1/../index.html": 404,
    }
    for path, status in refused.items():
        got, body, _ = http_get(cluster.url + path)
        assert got == status, (path, got, body[:200])
        assert "error" in json.loads(body), body[:200]


def test_keys_are_enforced_through_the_balancer_and_probes_tell_no_secret(cluster: Cluster) -> None:
    with pytest.raises(openai.AuthenticationError, match="Incorrect API key"):
        client(cluster, key="sk-wrong", retries=0).images.generate(prompt="a fox", size="256x256")
    status, body, _ = http_get(cluster.url + "/v1/models")
    assert status == 401 and json.loads(body)["error"]["code"] == "missing_api_key"
    for path in ("/v1/health", "/v1/live", "/w/1/v1/health", "/w/2/v1/metrics", "/v1/metrics"):
        status, body, _ = http_get(cluster.url + path)
        assert status == 200, (path, body[:200])
        for secret in (KEY, "fox", str(cluster.bases[0].parent), "/tmp"):
            assert secret not in body.decode(), (path, secret)


def test_metrics_count_the_requests_sent(cluster: Cluster) -> None:
    """Counters on both workers, scraped through the balancer, move by exactly what this test sent."""
    before = {
        (route, status): requests_counted(cluster, route, status)
        for route, status in (("generations", 200), ("generations", 400), ("generations", 401), ("models", 200))
    }
    jobs_before = sum(
        worker_metrics(cluster, n).get(("dalle_nodes_api_job_seconds_count", (("model", "dall-e-2"),)), 0.0)
        for n in (1, 2)
    )
    api = client(cluster, retries=0)
    assert [r[0] for r in in_parallel(5, lambda index: generate(api, index))] == ["ok"] * 5
    for _ in range(3):
        with pytest.raises(openai.BadRequestError):
            api.images.generate(prompt="a fox", size="300x300")
    with pytest.raises(openai.AuthenticationError):
        client(cluster, key="sk-wrong", retries=0).images.generate(prompt="a fox", size="256x256")
    api.models.list()
    sent = {("generations", 200): 5, ("generations", 400): 3, ("generations", 401): 1, ("models", 200): 1}
    for (route, status), count in sent.items():
        assert requests_counted(cluster, route, status) - before[route, status] == count, (route, status)
    jobs_after = sum(
        worker_metrics(cluster, n).get(("dalle_nodes_api_job_seconds_count", (("model", "dall-e-2"),)), 0.0)
        for n in (1, 2)
    )
    assert jobs_after - jobs_before == 5


def test_metrics_count_rejections_and_hangups(cluster: Cluster) -> None:
    """Straight at one worker (not through the balancer, whose maxconn would queue them): more requests than its job
    limit get 429s, each counted; a client that hangs up is counted once."""
    worker = cluster.workers[0]
    direct = openai.OpenAI(base_url=worker.url + "/v1", api_key=KEY, max_retries=0, timeout=TIMEOUT_S)
    samples = worker_metrics(cluster, 1)
    rejections, hangups = (
        samples[("dalle_nodes_api_rejections_total", ())],
        samples[("dalle_nodes_api_client_hangups_total", ())],
    )
    results = in_parallel(JOBS + 3, lambda index: generate(direct, index, model="slower"))
    refused = [error for outcome, error, _ in results if outcome == "error"]
    assert refused and all(isinstance(error, openai.RateLimitError) for error in refused), refused
    assert worker_metrics(cluster, 1)[("dalle_nodes_api_rejections_total", ())] - rejections == len(refused)
    body = json.dumps({"model": "slower", "prompt": "a fox", "size": "256x256"}).encode()
    with socket.create_connection(("127.0.0.1", cluster.ports[0])) as raw:
        raw.sendall(
            b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        deadline = time.monotonic() + 60
        while health(worker)[1]["api_jobs"] == 0:  # queued: now hang up
            assert time.monotonic() < deadline
            time.sleep(0.1)
    deadline = time.monotonic() + 30
    while worker_metrics(cluster, 1)[("dalle_nodes_api_client_hangups_total", ())] - hangups != 1:
        assert time.monotonic() < deadline, "the hang-up was not counted"
        time.sleep(0.2)


def test_a_client_that_hangs_up_at_the_balancer_has_its_job_cancelled(cluster: Cluster) -> None:
    """Behind HAProxy too (option abortonclose): the worker sees the hang-up, interrupts the job, counts it."""
    hangups = sum(worker_metrics(cluster, n)[("dalle_nodes_api_client_hangups_total", ())] for n in (1, 2))
    body = json.dumps({"model": "slower", "prompt": "a fox", "size": "256x256"}).encode()
    with socket.create_connection(("127.0.0.1", cluster.balancer_port)) as raw:
        raw.sendall(
            b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        deadline = time.monotonic() + 60
        while not any(health(worker)[1]["running"] for worker in cluster):  # its job runs: now hang up
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.1)
    deadline = time.monotonic() + 10  # counted as a hang-up below: a job that ran to its end would not be
    while any(health(worker)[1]["api_jobs"] or health(worker)[1]["running"] for worker in cluster):
        assert time.monotonic() < deadline, "the job of a client that hung up went on"
        time.sleep(0.1)
    assert sum(worker_metrics(cluster, n)[("dalle_nodes_api_client_hangups_total", ())] for n in (1, 2)) == hangups + 1


def test_saturation_waits_in_the_balancers_queue(cluster: Cluster) -> None:
    """Twelve slow requests on two workers of two jobs each: both workers full (their health 503 "full", still UP in
    HAProxy), the rest waiting in HAProxy's queue; every request ends with an image, none hangs."""
    attempts = Attempts()
    api = client(cluster, attempts=attempts)
    seen = {"full": set(), "queued": 0, "down": set()}
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(generate, api, index, "slower") for index in range(12)]
        while not all(future.done() for future in futures):
            for number, worker in enumerate(cluster, 1):
                status, body = health(worker)
                if status == 503 and body["status"] == "full":
                    seen["full"].add(number)
            servers = cluster.servers()
            seen["queued"] = max(seen["queued"], int(servers["BACKEND"]["qcur"] or 0))
            seen["down"] |= {name for name in ("w1", "w2") if servers[name]["status"].startswith("DOWN")}
            time.sleep(0.2)
        results = [future.result() for future in futures]
    outcomes = [outcome for outcome, *_ in results]
    worst = max(seconds for *_, seconds in results)
    print(
        f"\nsaturation: 12 requests, {outcomes.count('ok')} images, {attempts.count - 12} client retries, "
        f"up to {seen['queued']} waiting in HAProxy, worst latency {worst:.1f} s"
    )
    assert outcomes == ["ok"] * 12, [error for outcome, error, _ in results if outcome != "ok"]
    assert seen["full"] == {1, 2} and seen["queued"] > 0 and not seen["down"], seen
    assert worst < TIMEOUT_S


def test_a_worker_killed_mid_load_fails_over_and_rejoins(cluster: Cluster) -> None:
    attempts = Attempts()
    api = client(cluster, attempts=attempts)
    victim = cluster.workers[1]
    redispatched_before = int(cluster.servers()["BACKEND"]["wredis"])
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(generate, api, index, "slower") for index in range(8)]
        deadline = time.monotonic() + 60
        while health(victim)[1]["running"] == 0:  # a job of ours runs on it: kill it now
            assert time.monotonic() < deadline, "no job reached the second worker"
            time.sleep(0.1)
        victim.process.send_signal(signal.SIGKILL)
        marked_down_s = cluster.wait_for_state("w2", "DOWN", CHECK_WINDOW_S)
        results = [future.result(timeout=TIMEOUT_S * 3) for future in futures]  # the client's retries included
    failures = [error for outcome, error, _ in results if outcome != "ok"]
    for error in failures:
        assert_openai_shaped(error)
    worst = max(seconds for *_, seconds in results)
    resent = int(cluster.servers()["BACKEND"]["wredis"]) - redispatched_before
    print(
        f"\nSIGKILL mid-load: 8 requests, {8 - len(failures)} images, {len(failures)} errors, "
        f"{resent} sent again by HAProxy, {attempts.count - 8} client retries (after {attempts.retried}), "
        f"marked down after {marked_down_s:.1f} s, worst latency {worst:.1f} s"
    )
    assert resent >= 1, "HAProxy sent no request of the dead worker to the live one"
    assert all(code is not None for _, code in attempts.retried), attempts.retried  # HAProxy's 502 in OpenAI's shape
    after = in_parallel(10, lambda index: generate(client(cluster), index))
    assert [outcome for outcome, *_ in after] == ["ok"] * 10, [r[1] for r in after if r[0] != "ok"]

    restarted = cluster.restart(1)
    rejoined_s = cluster.wait_for_state("w2", "UP", CHECK_WINDOW_S + 5)
    more = in_parallel(4, lambda index: generate(client(cluster), index))
    assert [outcome for outcome, *_ in more] == ["ok"] * 4
    assert api_jobs_in_history(restarted) > 0, "the restarted worker got no work"
    print(f"restarted worker back in rotation {rejoined_s:.1f} s after it served")


def test_sigterm_drains_a_worker_before_it_stops(cluster: Cluster) -> None:
    """SIGTERM: health turns 503 "shutting down", HAProxy takes the worker out, new requests go to the other worker,
    the job it holds runs to its end, then the process stops as on Ctrl-C."""
    worker = cluster.workers[0]
    direct = openai.OpenAI(base_url=worker.url + "/v1", api_key=KEY, max_retries=0, timeout=TIMEOUT_S)
    attempts = Attempts()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        held = pool.submit(generate, direct, 0, "slower")
        deadline = time.monotonic() + 60
        while health(worker)[1]["api_jobs"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while (answer := health(worker))[0] != 503:
            assert time.monotonic() < deadline, answer
            time.sleep(0.1)
        assert answer[1]["status"] == "shutting down"
        results = in_parallel(4, lambda index: generate(client(cluster, attempts=attempts), index))
        assert [outcome for outcome, *_ in results] == ["ok"] * 4, [r[1] for r in results if r[0] != "ok"]
        outcome, answer, _ = held.result(timeout=TIMEOUT_S)
    print(f"\nSIGTERM: 4 requests during the drain, {attempts.count - 4} client retries (after {attempts.retried})")
    assert outcome == "ok" and png(base64.b64decode(answer.data[0].b64_json)).size == (256, 256)
    assert worker.process.wait(timeout=30) == 0
    assert "Stopped server" in worker.log.read_text(errors="replace")
    cluster.wait_for_state("w1", "DOWN", CHECK_WINDOW_S)


def test_with_every_worker_down_the_balancer_answers_503_in_openais_shape(cluster: Cluster) -> None:
    for worker in cluster:
        worker.process.send_signal(signal.SIGKILL)
        worker.process.wait(timeout=30)
    cluster.wait_for_state("w2", "DOWN", CHECK_WINDOW_S)
    with pytest.raises(openai.InternalServerError) as raised:
        client(cluster, retries=0).images.generate(prompt="a fox", size="256x256")
    assert raised.value.status_code == 503 and raised.value.code == "no_worker_available"
    assert raised.value.response.headers["Retry-After"] == "2"
