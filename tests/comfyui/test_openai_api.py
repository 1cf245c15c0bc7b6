"""The OpenAI-compatible /v1 routes on a real ComfyUI, called through the official `openai` client.

The server here requires an API key (two keys set) and takes at most MAX_JOBS API jobs at once. Its user folder
replaces the shipped dall-e-2 description by the same description with fewer sampling steps (the tiny checkpoints
need no more), which also exercises the user-folder override; dall-e-mega and dall-e-mini run as shipped. A `slow`
model (the text-to-image workflow with 999 decoder steps) is there to be interrupted.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

import tiny_repos
from api_models import shrunk_description
from shipped_workflows import api_file

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.skipif(
    not os.environ.get("COMFYUI_PATH"),
    reason="set COMFYUI_PATH to a ComfyUI checkout (and COMFYUI_PYTHON to its interpreter) to run",
)

KEYS = ("sk-test-one", "sk-test-two")
MAX_JOBS = 8
TIMEOUT_S = 300  # one tiny job takes a few seconds; the margin is for two busy cores
SIDE = 256  # the edit and variation pictures
HOLE = (96, 64, 176, 160)  # the edit's transparent rectangle (left, top, right, bottom)
STEPS = {"DallePriorSample": 3, "DalleDecoderSample": 4}
KARLO_STEPS = {"DallePriorSample": 3, "DalleKarloDecoderSample": 2, "DalleKarloSuperRes": 2}


COMFYUI_ENV = {"DALLE_NODES_API_KEY": " , ".join(KEYS), "DALLE_NODES_API_MAX_JOBS": str(MAX_JOBS)}


def prepare_comfyui(base: Path) -> None:
    """The user's models (dall-e-2 shrunk, slow) and dall-e-mini beside the tiny Mega conftest writes."""
    models = base / "user" / "dalle-nodes" / "openai-models"
    models.mkdir(parents=True)
    (models / "dall-e-2.model.json").write_text(json.dumps(shrunk_description("dall-e-2", STEPS)))
    slow = shrunk_description("dall-e-2", {"DallePriorSample": 3, "DalleDecoderSample": 999})
    (models / "slow.model.json").write_text(json.dumps({"generations": slow["generations"]}))
    (models / "karlo.model.json").write_text(json.dumps(shrunk_description("karlo", KARLO_STEPS)))
    (models / "broken.model.json").write_text('{"generations": {"workflow": "missing.api.json", "inputs": {}}}')
    tiny_repos.write_min_dalle_repo(base / "models" / "dalle" / "kuprel--min-dalle", "mini", tiny_repos.TINY_MIN_DALLE)


@pytest.fixture(scope="module")
def server(comfyui):
    """The server; its hyperparameters file (written by conftest for Mega alone) also gives dall-e-mini's toy size."""
    hyperparameters = comfyui.base / "models" / "dalle" / "kuprel--min-dalle" / "hyperparameters.json"
    hyperparameters.write_text(json.dumps(dict.fromkeys(("mega", "mini"), tiny_repos.TINY_MIN_DALLE)))
    return comfyui


def client(server, key: str = KEYS[1], prefix: str = "/v1", timeout: float = TIMEOUT_S) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + prefix, api_key=key, max_retries=0, timeout=timeout)


def png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    image.load()
    return image


def fetched(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return answer.read()


def encoded(image: Image.Image, format: str = "PNG") -> bytes:
    out = io.BytesIO()
    image.save(out, format=format)
    return out.getvalue()


def picture(side: int = SIDE) -> Image.Image:
    """A smooth RGB picture (gradients and a disc): something the VQ autoencoder reproduces closely."""
    y, x = np.mgrid[0:side, 0:side] / side
    disc = ((x - 0.3) ** 2 + (y - 0.6) ** 2 < 0.05).astype(float)
    rgb = np.stack([x, y, 0.5 * disc + 0.25 * (1 - x)], axis=-1)
    return Image.fromarray((rgb * 255).round().astype(np.uint8))


def with_hole(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    alpha = Image.new("L", image.size, 255)
    alpha.paste(0, HOLE)
    rgba.putalpha(alpha)
    return rgba


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64)


def queue_items(server) -> list:
    state = server.get_json("/queue")
    return state["queue_running"] + state["queue_pending"]


def api_tag(item_or_entry) -> dict | None:
    """The dalle_nodes_api tag of a queue item or history entry's prompt (number, id, graph, extra_data, …)."""
    prompt = item_or_entry["prompt"] if isinstance(item_or_entry, dict) else item_or_entry
    return prompt[3].get("dalle_nodes_api")


def history_seeds(server) -> list[int]:
    return [api_tag(entry)["seed"] for entry in server.get_json("/history").values() if api_tag(entry)]


def queued_seeds(server) -> list[int]:
    return [api_tag(item)["seed"] for item in queue_items(server) if api_tag(item)]


def wait_for(condition, timeout_s: float = TIMEOUT_S, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout_s} s"
        time.sleep(0.2)  # polling the server's state: it has no way to wait for it


def canvas_graph(steps: int, seed: int) -> dict:
    """The shipped text-to-image workflow, small, as a canvas user queues it with POST /prompt."""
    graph = json.loads(api_file("kandinsky22_text2image").read_text())
    graph["4"]["inputs"]["steps"] = 3
    graph["6"]["inputs"].update(width=128, height=128, steps=steps, seed=seed)
    return graph


def test_models_are_listed_and_retrieved(server) -> None:
    api = client(server)
    listed = {model.id: model for model in api.models.list().data}
    assert {"dall-e-2", "dall-e-mega", "dall-e-mini", "slow"} <= set(listed)
    assert listed["dall-e-2"].owned_by == "dalle-nodes"
    assert api.models.retrieve("dall-e-mini").id == "dall-e-mini"
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        api.models.retrieve("dall-e-9")
    health = json.loads(fetched_with_key(server, "/v1/health"))
    assert health["status"] == "ok" and health["limit"] == MAX_JOBS
    assert (
        list(health["problems"]) == ["broken.model.json"]
        and "missing.api.json" in health["problems"]["broken.model.json"]
    )
    assert {"dall-e-2", "slow"} <= set(health["models"])
    assert all(isinstance(health[count], int) for count in ("queue", "running", "api_jobs"))


@pytest.mark.parametrize("key", [None, "sk-wrong"])
def test_health_live_and_metrics_need_no_key_and_tell_no_secret(server, key: str | None) -> None:
    """A balancer's probe and Prometheus need no key; without one (or with a wrong one) they get the load alone: no
    model file, problem, key or path (nor the prompt of a request answered before)."""
    client(server).images.generate(
        model="dall-e-2", prompt="a secret orchard", size="256x256", response_format="b64_json"
    )
    health_bytes = fetched_with_key(server, "/v1/health", key)
    health = json.loads(health_bytes)
    assert set(health) == {"status", "queue", "running", "api_jobs", "limit"} and health["status"] == "ok"
    assert json.loads(fetched_with_key(server, "/v1/live", key)) == {"status": "live"}
    scraped = fetched_with_key(server, "/v1/metrics", key).decode()
    families = {family.name: family for family in text_string_to_metric_families(scraped)}
    assert families["dalle_nodes_api_job_limit"].samples[0].value == MAX_JOBS
    for text in (health_bytes.decode(), scraped):
        for secret in (*KEYS, "broken", str(server.base), "/tmp", "orchard"):
            assert secret not in text, secret


def fetched_with_key(server, path: str, key: str | None = KEYS[0]) -> bytes:
    request = urllib.request.Request(server.url + path, headers={"Authorization": f"Bearer {key}"} if key else {})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.read()


def test_generate_n2_b64_and_url_at_two_sizes(server) -> None:
    api = client(server)
    answer = api.images.generate(model="dall-e-2", prompt="a red fox", n=2, size="256x256", response_format="b64_json")
    assert abs(answer.created - time.time()) < TIMEOUT_S
    first, second = (png(base64.b64decode(item.b64_json)) for item in answer.data)
    assert first.size == second.size == (256, 256)
    assert np.abs(pixels(first) - pixels(second)).mean() > 1  # two images, not one twice

    answer = client(server, prefix="/api/v1").images.generate(prompt="a red fox", size="512x512")  # url by default
    (item,) = answer.data
    assert item.url.startswith(server.url + "/api/view?") and item.b64_json is None
    assert png(fetched(item.url)).size == (512, 512)

    proxied = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "images.example.com"}  # as a TLS proxy passes it
    answer = api.images.generate(prompt="a red fox", size="256x256", extra_headers=proxied)
    assert answer.data[0].url.startswith("https://images.example.com/view?filename=")


def test_generate_with_dall_e_mega_and_mini(server) -> None:
    api = client(server)
    answer = api.images.generate(model="dall-e-mega", prompt="a lighthouse", size="256x256", response_format="b64_json")
    assert png(base64.b64decode(answer.data[0].b64_json)).size == (256, 256)
    answer = api.images.generate(model="dall-e-mini", prompt="a lighthouse", n=2, size="512x512")  # upscaled ×2
    assert [png(fetched(item.url)).size for item in answer.data] == [(512, 512)] * 2


def test_karlo_generates_at_256_and_1024_and_makes_variations(server) -> None:
    api = client(server)
    answer = api.images.generate(model="karlo", prompt="a red fox", n=2, size="256x256", response_format="b64_json")
    first, second = (png(base64.b64decode(item.b64_json)) for item in answer.data)
    assert first.size == second.size == (256, 256)
    assert np.abs(pixels(first) - pixels(second)).mean() > 1  # two images, not one twice
    answer = api.images.generate(model="karlo", prompt="a red fox", size="1024x1024")  # Real-ESRGAN x4
    assert png(fetched(answer.data[0].url)).size == (1024, 1024)
    answer = api.images.create_variation(model="karlo", image=("in.png", encoded(picture())), n=2, size="256x256")
    assert [png(fetched(item.url)).size for item in answer.data] == [(256, 256)] * 2
    answer = api.images.create_variation(model="karlo", image=("in.png", encoded(picture())), size="1024x1024")
    assert png(fetched(answer.data[0].url)).size == (1024, 1024)  # Real-ESRGAN x4


def roundtrip(server, name: str) -> Image.Image:
    """The input picture VQ-encoded and decoded by the edit's own decoder, through the same resize as the edit."""
    edit = json.loads(api_file("kandinsky22_inpaint").read_text())
    graph = {key: edit[key] for key in ("4", "5", "6", "10")}
    graph["5"]["inputs"]["image"] = name
    graph["6"]["inputs"].update(width=SIDE, height=SIDE)
    graph["20"] = {"class_type": "DalleVQDecode", "inputs": {"vq_vae": ["4", 1], "latent": ["10", 0]}}
    graph["21"] = {"class_type": "SaveImage", "inputs": {"images": ["20", 0], "filename_prefix": "roundtrip"}}
    entry = server.run(graph)
    assert entry["status"]["status_str"] == "success", entry["status"]
    return png(server.view(entry["outputs"]["21"]["images"][0]))


def kept(values: np.ndarray, margin: int = 8) -> np.ndarray:
    """The pixels at least `margin` px away from the hole."""
    keep = np.ones(values.shape[:2], dtype=bool)
    left, top, right, bottom = HOLE
    keep[max(top - margin, 0) : bottom + margin, max(left - margin, 0) : right + margin] = False
    return values[keep]


@pytest.mark.parametrize("how", ["mask", "transparent image"])
def test_edit_repaints_only_the_transparent_part(server, how: str) -> None:
    source = picture()
    (server.base / "input" / "edit-source.png").write_bytes(encoded(source))
    if how == "mask":
        mask = with_hole(Image.new("RGB", source.size, "white"))
        request = {"image": ("in.png", encoded(source)), "mask": ("mask.png", encoded(mask))}
    else:
        request = {"image": ("in.png", encoded(with_hole(source)))}
    answer = client(server).images.edit(
        prompt="a red fox", size=f"{SIDE}x{SIDE}", response_format="b64_json", **request
    )
    result = png(base64.b64decode(answer.data[0].b64_json))
    assert result.size == (SIDE, SIDE)
    ours, original, reference = pixels(result), pixels(source), pixels(roundtrip(server, "edit-source.png"))
    outside = np.abs(kept(ours) - kept(reference)).mean()
    roundtrip_error = np.abs(kept(reference) - kept(original)).mean()
    left, top, right, bottom = HOLE
    inside = np.abs(ours[top:bottom, left:right] - reference[top:bottom, left:right]).mean()
    # of 255, measured: 0.14 from the round trip outside the hole, 8 to 10 inside it (the tiny random MoVQ's round
    # trip itself is 77 from the input: the comparison that means something is with the round trip)
    assert outside < 2.0, (outside, roundtrip_error)
    assert np.abs(kept(ours) - kept(original)).mean() <= roundtrip_error + 2.0
    assert inside > 5 * outside, (inside, outside)  # the hole was repainted
    assert not list((server.base / "input" / "dalle-nodes-api").iterdir())  # the upload is gone


def test_a_thin_transparent_stroke_is_repainted(server) -> None:
    """3 px between the rows the reference pipeline samples the mask at (every 8 px): repainted in the 8 px cells it
    touches, not returned unchanged with a 200."""
    source = picture()
    (server.base / "input" / "stroke-source.png").write_bytes(encoded(source))
    alpha = np.full((SIDE, SIDE), 255, dtype=np.uint8)
    alpha[101:104, 40:200] = 0  # rows 96 and 104 are sampled
    stroked = source.convert("RGBA")
    stroked.putalpha(Image.fromarray(alpha))
    answer = client(server).images.edit(
        image=("in.png", encoded(stroked)), prompt="a red fox", size=f"{SIDE}x{SIDE}", response_format="b64_json"
    )
    ours = pixels(png(base64.b64decode(answer.data[0].b64_json)))
    difference = np.abs(ours - pixels(roundtrip(server, "stroke-source.png"))).mean(2)
    cells, far = difference[96:104, 40:200].mean(), np.concatenate([difference[:72], difference[128:]]).mean()
    print(f"vs the VQ round trip, of 255: {cells:.2f} in the stroke's cells, {far:.3f} 24 px and more away")
    assert cells > 1.0 and cells > 5 * far, (cells, far)  # of 255; the picture given back would be the round trip


def test_a_one_pixel_stroke_survives_the_downscale_to_the_answer(server) -> None:
    """A 1 px transparent stroke in an upload 4 times the answer's size: the workflow's Upscale Image (bilinear, no
    antialiasing) samples every 4th pixel and would miss it; the API widens it first, so it is repainted."""
    source = picture()
    (server.base / "input" / "thin-source.png").write_bytes(encoded(source))
    big = source.resize((4 * SIDE, 4 * SIDE), Image.LANCZOS).convert("RGBA")
    alpha = np.full((4 * SIDE, 4 * SIDE), 255, dtype=np.uint8)
    alpha[4 * 101 + 3, 160:800] = 0  # between the rows the downscale reads (4j + 1.5)
    big.putalpha(Image.fromarray(alpha))
    answer = client(server).images.edit(
        image=("in.png", encoded(big)), prompt="a red fox", size=f"{SIDE}x{SIDE}", response_format="b64_json"
    )
    ours = pixels(png(base64.b64decode(answer.data[0].b64_json)))
    difference = np.abs(ours - pixels(roundtrip(server, "thin-source.png"))).mean(2)
    cells, far = difference[96:112, 40:200].mean(), np.concatenate([difference[:72], difference[136:]]).mean()
    print(f"vs the VQ round trip, of 255: {cells:.2f} in the stroke's cells, {far:.3f} 24 px and more away")
    assert cells > 1.0 and cells > 5 * far, (cells, far)


def test_an_edit_with_nothing_to_repaint_is_refused_before_it_is_queued(server) -> None:
    """Transparent pixels that are all at least half opaque repaint nothing (the pipeline binarises at 0.5): a 400
    naming the file, and nothing queued or written."""
    uploads = server.base / "input" / "dalle-nodes-api"
    before = set(uploads.iterdir()) if uploads.is_dir() else set()
    history = set(server.get_json("/history"))
    faint = picture().convert("RGBA")
    faint.putalpha(200)
    cases = [
        ({"image": ("in.png", encoded(picture())), "mask": ("m.png", encoded(faint))}, "mask"),
        ({"image": ("in.png", encoded(faint))}, "image"),
    ]
    for files, param in cases:
        with pytest.raises(openai.BadRequestError) as raised:
            client(server).images.edit(prompt="a red fox", size=f"{SIDE}x{SIDE}", **files)
        body = raised.value.body
        assert raised.value.status_code == 400 and body["param"] == param, body
        assert "nothing to edit" in body["message"] and "most transparent pixel has alpha 200" in body["message"]
    assert set(server.get_json("/history")) == history and not queue_items(server)
    assert (set(uploads.iterdir()) if uploads.is_dir() else set()) == before


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the client marks variations deprecated
def test_variation_makes_n_pictures_of_the_size(server) -> None:
    answer = client(server).images.create_variation(image=("in.png", encoded(picture())), n=2, size="512x512")
    images = [png(fetched(item.url)) for item in answer.data]
    assert [image.size for image in images] == [(512, 512)] * 2
    assert np.abs(pixels(images[0]) - pixels(images[1])).mean() > 1
    assert not list((server.base / "input" / "dalle-nodes-api").iterdir())  # the upload is gone


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the client marks variations deprecated
def test_errors_reach_the_client_in_openais_shape(server) -> None:
    api = client(server)
    square, opaque = encoded(picture()), encoded(picture())
    cases = [
        (lambda: api.images.generate(prompt="a fox", size="300x300"), openai.BadRequestError, "size '300x300'"),
        (lambda: api.images.generate(prompt="a fox", n=11), openai.BadRequestError, "n is 11"),
        (lambda: api.images.generate(prompt=""), openai.BadRequestError, "prompt is empty"),
        (lambda: api.images.generate(prompt="x" * 4001), openai.BadRequestError, "4001 characters"),
        (lambda: api.images.generate(prompt="a fox", model="dall-e-9"), openai.NotFoundError, "does not exist"),
        (
            lambda: api.images.edit(image=("a.jpg", encoded(picture(), "JPEG")), prompt="a fox"),
            openai.BadRequestError,
            "not a PNG",
        ),
        (
            lambda: api.images.create_variation(image=("a.png", encoded(picture().crop((0, 0, 200, 256))))),
            openai.BadRequestError,
            "must be square",
        ),
        (
            lambda: api.images.edit(
                image=("a.png", square), mask=("m.png", encoded(with_hole(picture(128)))), prompt="a fox"
            ),
            openai.BadRequestError,
            "mask is 128x128 px but image is 256x256",
        ),
        (lambda: api.images.edit(image=("a.png", opaque), prompt="a fox"), openai.BadRequestError, "no transparent"),
        (lambda: client(server, key="sk-wrong").models.list(), openai.AuthenticationError, "Incorrect API key"),
        (
            lambda: client(server, key="sk-wrong").images.generate(prompt="a fox"),
            openai.AuthenticationError,
            "Incorrect API key",
        ),
    ]
    for call, error, words in cases:
        with pytest.raises(error) as raised:
            call()
        body = raised.value.body
        assert words in body["message"], (words, body)
        assert set(body) == {"message", "type", "param", "code"}
        assert client(server).models.list().data  # the server serves on
    request = urllib.request.Request(server.url + "/v1/models")  # no key at all
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 401
    assert "didn't provide an API key" in json.loads(refused.value.read())["error"]["message"]
    assert client(server, key=KEYS[0]).models.list().data  # either key opens


def test_concurrent_requests_share_the_queue_with_a_canvas_run(server) -> None:
    """8 API generations (the most this server lets wait) queue behind a long canvas prompt; a 9th gets 429; a second
    canvas prompt queues after them. The long one is then interrupted, and the 8 and the second canvas prompt all
    finish, each API job with its own seed's picture."""
    status, long_run = server.queue(canvas_graph(steps=999, seed=7))
    assert status == 200, long_run
    wait_for(lambda: [item[1] for item in server.get_json("/queue")["queue_running"]] == [long_run["prompt_id"]])
    answers: dict[int, object] = {}

    def generate(index: int) -> None:
        answers[index] = client(server).images.generate(
            prompt=f"a fox, number {index}", size="256x256", response_format="b64_json"
        )

    threads = [threading.Thread(target=generate, args=(index,)) for index in range(MAX_JOBS)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(queued_seeds(server)) == MAX_JOBS, 60, "8 API jobs in the queue")
    with pytest.raises(openai.RateLimitError, match="retry shortly") as refused:
        client(server).images.generate(prompt="one too many", size="256x256")
    assert refused.value.response.headers["retry-after"] == "2"
    status, after = server.queue(canvas_graph(steps=4, seed=9))
    assert status == 200, after
    assert server.request("/interrupt", {"prompt_id": long_run["prompt_id"]})[0] == 200
    for thread in threads:
        thread.join(TIMEOUT_S)
    assert sorted(answers) == list(range(MAX_JOBS))
    images = [base64.b64decode(answer.data[0].b64_json) for answer in answers.values()]
    assert len(set(images)) == MAX_JOBS
    assert server.finished(after["prompt_id"])["status"]["status_str"] == "success"
    seeds = history_seeds(server)
    assert len(set(seeds)) == len(seeds)


def hang_up_once_queued(server, body: dict, where: str) -> None:
    """POST a generation, wait until its job (found by its seed) is in the queue's `where` list ("queue_pending" or
    "queue_running"), then close the connection, as a client that gives up does."""
    connection = http.client.HTTPConnection(urllib.parse.urlsplit(server.url).netloc, timeout=TIMEOUT_S)
    headers = {"Authorization": f"Bearer {KEYS[0]}", "Content-Type": "application/json"}
    connection.request("POST", "/v1/images/generations", json.dumps(body), headers)
    seeds = lambda: [api_tag(item)["seed"] for item in server.get_json("/queue")[where] if api_tag(item)]  # noqa: E731
    wait_for(lambda: body["seed"] in seeds(), 60, f"the job in {where}")
    connection.close()


def test_a_client_that_hangs_up_while_waiting_leaves_no_job(server) -> None:
    status, queued = server.queue(canvas_graph(steps=999, seed=8))
    assert status == 200, queued
    seed = 424242
    hang_up_once_queued(server, {"prompt": "a fox", "size": "256x256", "seed": seed}, "queue_pending")
    wait_for(lambda: seed not in queued_seeds(server), 10, "the waiting job's removal")
    assert [item[1] for item in server.get_json("/queue")["queue_running"]] == [queued["prompt_id"]]
    assert server.request("/interrupt", {"prompt_id": queued["prompt_id"]})[0] == 200
    server.finished(queued["prompt_id"])
    wait_for(lambda: json.loads(fetched_with_key(server, "/v1/health"))["api_jobs"] == 0, 10, "the cleanup")
    assert seed not in history_seeds(server)
    assert " was removed and forgotten" in server.log.read_text(errors="replace")


def test_a_client_that_hangs_up_while_its_job_runs_has_it_interrupted(server) -> None:
    seed = 434343
    hang_up_once_queued(server, {"model": "slow", "prompt": "a fox", "size": "256x256", "seed": seed}, "queue_running")
    wait_for(lambda: not queue_items(server), 60, "the interrupt")  # 999 steps would take far longer
    wait_for(lambda: json.loads(fetched_with_key(server, "/v1/health"))["api_jobs"] == 0, 10, "the cleanup")
    assert seed not in history_seeds(server)
    assert " was interrupted and forgotten" in server.log.read_text(errors="replace")


def raw(server, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, dict, dict]:
    """One request as a hostile client might send it: (status, JSON body, headers)."""
    connection = http.client.HTTPConnection(urllib.parse.urlsplit(server.url).netloc, timeout=60)
    connection.putrequest(method, path, skip_host="Host" in (headers or {}), skip_accept_encoding=True)
    for name, value in {"Authorization": f"Bearer {KEYS[0]}", **(headers or {})}.items():
        connection.putheader(name, value)
    connection.putheader("Content-Length", str(len(body)))
    connection.endheaders(body)
    answer = connection.getresponse()
    status, content, answer_headers = answer.status, answer.read(), dict(answer.getheaders())
    connection.close()
    return status, json.loads(content) if content else {}, answer_headers


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "b0und4ry") -> tuple[bytes, dict]:
    """(name, filename or None, content) parts as one multipart/form-data body, and its Content-Type header."""
    chunks = []
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        chunks.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n")
    return b"".join(chunks) + f"--{boundary}--\r\n".encode(), {
        "Content-Type": f"multipart/form-data; boundary={boundary}"
    }


def test_hostile_requests_get_clear_errors_and_leave_nothing_behind(server) -> None:
    uploads = server.base / "input" / "dalle-nodes-api"
    before = set(uploads.iterdir()) if uploads.is_dir() else set()
    json_type = {"Content-Type": "application/json"}
    status, body, _ = raw(server, "POST", "/v1/images/generations", b'{"prompt": "' + b"x" * 70000 + b'"}', json_type)
    assert status == 413, body
    status, body, _ = raw(server, "POST", "/v1/images/generations", b"[" * 60000, json_type)
    assert status == 400 and "not valid JSON" in body["error"]["message"]
    headers = {**json_type, "Authorization": "Bearer \xff\xfe"}
    status, body, _ = raw(server, "POST", "/v1/images/generations", b'{"prompt": "a fox"}', headers)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    headers = {**json_type, "Host": 'evil"><x'}
    status, body, _ = raw(server, "POST", "/v1/images/generations", b'{"prompt": "a fox", "size": "256x256"}', headers)
    assert status == 400 and "Host header" in body["error"]["message"]
    form, form_type = multipart([("image", "a.png", encoded(picture())), ("mask", "m.png", encoded(picture()))])
    status, body, _ = raw(server, "POST", "/v1/images/variations", form, form_type)
    assert status == 400 and body["error"]["message"] == "Unrecognized request argument supplied: mask"
    inner, inner_type = multipart([("prompt", None, b"a fox")], "inner")
    nested = f"--outer\r\nContent-Type: {inner_type['Content-Type']}\r\n\r\n".encode() + inner + b"\r\n--outer--\r\n"
    status, body, _ = raw(
        server, "POST", "/v1/images/edits", nested, {"Content-Type": "multipart/form-data; boundary=outer"}
    )
    assert status == 400 and "nested multipart" in body["error"]["message"]
    form, form_type = multipart(
        [
            ("image", "a.png", encoded(with_hole(picture()))),
            ("prompt", None, b"a fox"),
            ("negative_prompt", None, b"dogs"),
        ]
    )
    status, body, _ = raw(server, "POST", "/v1/images/edits", form, form_type)
    assert status == 400 and body["error"]["param"] == "negative_prompt"
    status, body, answer_headers = raw(
        server, "POST", "/v1/images/generations", b'{"model": "broken", "prompt": "a fox"}', json_type
    )
    assert status == 500 and "missing.api.json" in body["error"]["message"]
    assert answer_headers.get("x-should-retry") == "false"  # the openai client must not run it again
    assert (set(uploads.iterdir()) if uploads.is_dir() else set()) == before  # no upload left behind
    assert client(server).models.list().data  # the server serves on


def test_the_key_is_logged_once_without_the_key_itself(server) -> None:
    log = server.log.read_text(errors="replace")
    assert log.count("2 API key(s) required") == 1
    assert not any(key in log for key in KEYS)


def log_offset(server) -> int:
    return len(server.log.read_bytes())


def log_since(server, offset: int) -> str:
    return server.log.read_bytes()[offset:].decode(errors="replace")


def test_a_fifo_among_the_user_models_blocks_nothing(server) -> None:
    """A FIFO named like a description (nobody ever writes to it) is listed among /v1/health's problems and never
    opened: /v1/models, /v1/health and a generation answer as before."""
    fifo = server.base / "user" / "dalle-nodes" / "openai-models" / "fifo.model.json"
    os.mkfifo(fifo)
    offset = log_offset(server)
    try:
        api = client(server, timeout=TIMEOUT_S)
        assert "fifo" not in {model.id for model in client(server, timeout=30).models.list().data}
        health = json.loads(fetched_with_key(server, "/v1/health"))
        assert health["status"] == "ok"
        assert health["problems"]["fifo.model.json"].startswith("fifo.model.json: a FIFO, not a regular file: skipped")
        answer = api.images.generate(prompt="a red fox", size="256x256", response_format="b64_json")
        assert png(base64.b64decode(answer.data[0].b64_json)).size == (256, 256)
    finally:
        with contextlib.suppress(OSError):  # a server blocked on it gets an empty file and goes on (ENXIO: none is)
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        fifo.unlink()
    log = log_since(server, offset)
    assert log.count("fifo.model.json: a FIFO, not a regular file") == 1  # warned once, not once per request
    assert "fifo.model.json" not in json.loads(fetched_with_key(server, "/v1/health"))["problems"]  # gone with it


def test_a_models_folder_that_cannot_be_read_takes_the_worker_out_of_rotation(server) -> None:
    """The user's models folder replaced by a file (as an unmounted volume or a bad permission leaves it): health is
    503 "models folder unreadable" (this worker would serve other models than its peers), and the problem is named
    to a caller with a key; the folder back, the worker is ready again."""
    folder = server.base / "user" / "dalle-nodes" / "openai-models"
    aside = folder.with_name("openai-models.aside")
    folder.rename(aside)
    try:
        folder.write_text("not a folder")
        with pytest.raises(urllib.error.HTTPError) as answer:
            fetched_with_key(server, "/v1/health", key=None)
        assert answer.value.code == 503 and json.loads(answer.value.read())["status"] == "models folder unreadable"
        with pytest.raises(urllib.error.HTTPError) as answer:
            fetched_with_key(server, "/v1/health")
        assert "the models folder cannot be listed" in json.loads(answer.value.read())["problems"]["openai-models/"]
    finally:
        folder.unlink()
        aside.rename(folder)
    assert json.loads(fetched_with_key(server, "/v1/health", key=None))["status"] == "ok"


def form_part(name: str, content: bytes, boundary: str, headers: str = "") -> bytes:
    return (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n{headers}\r\n'.encode() + content + b"\r\n"
    )


MALFORMED_FORMS = {
    "no boundary": (lambda image: multipart(image)[0], "multipart/form-data", "names no boundary"),
    "another boundary": (
        lambda image: multipart(image, "other")[0],
        "multipart/form-data; boundary=b0und4ry",
        "no line of the body is the boundary",
    ),
    "no closing boundary": (
        lambda image: multipart(image)[0].removesuffix(b"--b0und4ry--\r\n"),
        "multipart/form-data; boundary=b0und4ry",
        "before the closing boundary",
    ),
    "part headers of 64 KB": (
        lambda image: form_part("prompt", b"a fox", "b0und4ry", f"X-Padding: {'x' * 65536}\r\n") + b"--b0und4ry--\r\n",
        "multipart/form-data; boundary=b0und4ry",
        "a part's header line is too long",
    ),
    "a boundary of 71 characters": (
        lambda image: multipart(image, "b" * 71)[0],
        f"multipart/form-data; boundary={'b' * 71}",
        "boundary is 71 characters long",
    ),
}


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the client marks variations deprecated
@pytest.mark.parametrize("endpoint", ["edits", "variations"])
def test_malformed_forms_get_a_400_and_no_traceback(server, endpoint: str) -> None:
    image = [("image", "a.png", encoded(with_hole(picture())))]
    offset = log_offset(server)
    for case, (make, content_type, words) in MALFORMED_FORMS.items():
        status, body, _ = raw(server, "POST", f"/v1/images/{endpoint}", make(image), {"Content-Type": content_type})
        assert status == 400, (case, body)
        assert set(body["error"]) == {"message", "type", "param", "code"}, case
        assert body["error"]["type"] == "invalid_request_error" and body["error"]["param"] is None, case
        assert words in body["error"]["message"] and "(as the openai client and curl -F do)" in body["error"]["message"]
    assert "Traceback" not in log_since(server, offset)
    answer = client(server).images.create_variation(image=("in.png", encoded(picture())), size="256x256")
    assert answer.data  # the server serves on


def test_prompts_a_model_cannot_read_get_a_400_naming_the_field(server) -> None:
    api = client(server)
    offset = log_offset(server)
    # the first read silently without its accents before; the second stopped the workflow (a 500)
    for model, prompt, shown in [
        ("dall-e-mini", "un renard roux à Zürich", "('à', 'ü')"),
        ("dall-e-mega", "红狐狸", "('红', '狐', '狸')"),
    ]:
        with pytest.raises(openai.BadRequestError) as refused:
            api.images.generate(model=model, prompt=prompt, size="256x256")
        assert refused.value.body["param"] == "prompt" and refused.value.body["code"] == "unreadable_text"
        assert f"the model '{model}' cannot read {shown}" in refused.value.body["message"]
    json_type = {"Content-Type": "application/json"}
    for name in ("prompt", "negative_prompt"):
        fields = {"prompt": "a red fox", "size": "256x256"} | {name: "a \\ud800 fox"}  # JSON's escape, sent as is
        body = ("{" + ", ".join(f'"{key}": "{value}"' for key, value in fields.items()) + "}").encode()
        status, answer, _ = raw(server, "POST", "/v1/images/generations", body, json_type)
        assert status == 400 and answer["error"]["param"] == name, answer
        assert "lone surrogate" in answer["error"]["message"]
    assert "Traceback" not in log_since(server, offset) and not queued_seeds(server)
    answer = api.images.generate(model="dall-e-2", prompt="un renard roux à Zürich", size="256x256")
    assert answer.data  # a model that reads any text takes it; the server serves on
