"""Today's `openai` client against a real ComfyUI: streamed partial images, output formats, quality levels, and
DALL·E 3-shaped requests through an alias (tiny checkpoints; the official client is the test client).

The user folder holds the dall-e-2 description with few sampling steps (6 decoder steps, so 2 partial images come
after steps 2 and 4), a `slow` model to hang up on, and a `failing` one whose loader names a repo that is not there.
"""

from __future__ import annotations

import base64
import io
import json
import os
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tiny_repos  # noqa: F401  (conftest's tiny checkpoints)
from api_models import shrunk_description

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.skipif(
    not os.environ.get("COMFYUI_PATH"),
    reason="set COMFYUI_PATH to a ComfyUI checkout (and COMFYUI_PYTHON to its interpreter) to run",
)

TIMEOUT_S = 300
STEPS = {"DallePriorSample": 3, "DalleDecoderSample": 6}
PROMPT = "a red fox in the snow"


def user_models(base: Path) -> Path:
    return base / "user" / "dalle-nodes" / "openai-models"


def prepare_comfyui(base: Path) -> None:
    models = user_models(base)
    models.mkdir(parents=True)
    (models / "dall-e-2.model.json").write_text(json.dumps(shrunk_description("dall-e-2", STEPS)))
    slow = shrunk_description("dall-e-2", {"DallePriorSample": 3, "DalleDecoderSample": 999})
    (models / "slow.model.json").write_text(json.dumps({"generations": slow["generations"]}))
    failing = shrunk_description("dall-e-2", STEPS)["generations"]
    failing["set"]["5"] = {"repo_id": "nobody/no-such-decoder"}
    (models / "failing.model.json").write_text(json.dumps({"generations": failing}))
    refused = shrunk_description("dall-e-2", STEPS)["generations"]
    refused["set"]["6"] = {"sampler": "no-such-sampler"}  # ComfyUI's validation refuses the graph
    (models / "refused.model.json").write_text(json.dumps({"generations": refused}))


@pytest.fixture(scope="module")
def server(comfyui):
    return comfyui


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=TIMEOUT_S)


def opened(b64: str, format: str = "PNG") -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert image.format == format
    image.load()
    return image


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def api_entries(server) -> list[dict]:
    return [e for e in server.get_json("/history").values() if e["prompt"][3].get("dalle_nodes_api")]


def steps_run(entry: dict) -> dict[str, int]:
    graph = entry["prompt"][2]
    return {node["class_type"]: node["inputs"]["steps"] for node in graph.values() if "steps" in node["inputs"]}


def entry_of_seed(server, seed: int) -> dict:
    (entry,) = [e for e in api_entries(server) if e["prompt"][3]["dalle_nodes_api"]["seed"] == seed]
    return entry


def test_a_stream_sends_the_partial_images_then_the_same_picture_as_a_plain_answer(server) -> None:
    api = client(server)
    stream = api.images.generate(prompt=PROMPT, size="256x256", stream=True, partial_images=2, extra_body={"seed": 11})
    events = list(stream)
    assert [e.type for e in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    for event in events:
        assert opened(event.b64_json).size == (256, 256)
        assert (event.output_format, event.size, event.background, event.quality) == (
            "png",
            "256x256",
            "opaque",
            "medium",
        )
    plain = api.images.generate(prompt=PROMPT, size="256x256", response_format="b64_json", extra_body={"seed": 11})
    final = pixels(opened(events[-1].b64_json))
    assert np.array_equal(final, pixels(opened(plain.data[0].b64_json)))
    assert not np.array_equal(pixels(opened(events[0].b64_json)), final)  # a preview, not the picture
    assert plain.data[0].revised_prompt == PROMPT
    assert (plain.output_format, plain.quality, plain.size, plain.background) == ("png", "medium", "256x256", "opaque")


def test_a_stream_of_two_images_and_an_edit_stream(server) -> None:
    events = list(
        client(server).images.generate(
            prompt=PROMPT, size="256x256", n=2, stream=True, partial_images=1, output_format="jpeg"
        )
    )
    assert [e.type for e in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"] * 2
    assert all(opened(e.b64_json, "JPEG").size == (256, 256) for e in events)
    picture = Image.new("RGBA", (256, 256), (40, 120, 200, 255))
    picture.paste((0, 0, 0, 0), (64, 64, 192, 192))
    png = io.BytesIO()
    picture.save(png, format="PNG")
    edits = list(
        client(server).images.edit(
            image=("in.png", png.getvalue()), prompt=PROMPT, size="256x256", stream=True, partial_images=2
        )
    )
    assert [e.type for e in edits] == ["image_edit.partial_image"] * 2 + ["image_edit.completed"]


@pytest.mark.parametrize(("format", "pil"), [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
def test_each_output_format_round_trips_as_b64_and_url(server, format: str, pil: str) -> None:
    api = client(server)
    answer = api.images.generate(prompt=PROMPT, size="256x256", output_format=format, response_format="b64_json")
    assert opened(answer.data[0].b64_json, pil).size == (256, 256) and answer.output_format == format
    linked = api.images.generate(prompt=PROMPT, size="256x256", output_format=format, response_format="url")
    with urllib.request.urlopen(linked.data[0].url, timeout=30) as reply:
        assert Image.open(io.BytesIO(reply.read())).format == pil


def test_jpeg_quality_follows_output_compression(server) -> None:
    sizes = {}
    for compression in (10, 95):
        answer = client(server).images.generate(
            prompt=PROMPT,
            size="256x256",
            output_format="jpeg",
            output_compression=compression,
            response_format="b64_json",
            extra_body={"seed": 5},
        )
        data = base64.b64decode(answer.data[0].b64_json)
        table = Image.open(io.BytesIO(data)).quantization[0]
        sizes[compression] = (len(data), sum(table) / len(table))
    assert sizes[10][0] < sizes[95][0] and sizes[10][1] > 4 * sizes[95][1], sizes  # coarser quantisation at 10


def test_quality_levels_change_the_steps_the_job_ran(server) -> None:
    for seed, quality in ((21, "low"), (22, "high"), (23, "auto"), (24, "hd")):
        answer = client(server).images.generate(
            prompt=PROMPT, size="256x256", quality=quality, response_format="b64_json", extra_body={"seed": seed}
        )
        assert answer.quality == {"auto": "medium", "hd": "high"}.get(quality, quality)
    ran = {seed: steps_run(entry_of_seed(server, seed)) for seed in (21, 22, 23, 24)}
    assert ran[21] == {"DallePriorSample": 10, "DalleDecoderSample": 20}
    assert ran[22] == ran[24] == {"DallePriorSample": 50, "DalleDecoderSample": 100}
    assert ran[23] == STEPS  # auto: the description's own default level, which keeps its steps


def test_a_dall_e_3_request_needs_the_alias(server) -> None:
    request = dict(model="dall-e-3", prompt=PROMPT, size="1792x1024", quality="hd", style="vivid", n=1)
    with pytest.raises(openai.NotFoundError) as missing:
        client(server).images.generate(**request)
    assert missing.value.body["code"] == "model_not_found" and "dall-e-3" in missing.value.body["message"]
    spec = shrunk_description("dall-e-2", STEPS) | {"aliases": ["dall-e-3", "gpt-image-1"]}
    for entry in (spec["generations"],):
        entry["quality"]["high"] = {"6": {"steps": 8}}  # DALL·E 3's hd, kept short for the toy model
    description = user_models(server.base) / "dall-e-2.model.json"
    original = description.read_text()
    description.write_text(json.dumps(spec))
    try:
        answer = client(server).images.generate(**request, response_format="b64_json")
        assert opened(answer.data[0].b64_json).size == (1792, 1024)
        assert (answer.size, answer.quality, answer.data[0].revised_prompt) == ("1792x1024", "high", PROMPT)
        listed = {m.id: m for m in client(server).models.list()}
        assert listed["dall-e-3"].alias_of == "dall-e-2" and "gpt-image-1" in listed
        gpt = client(server).images.generate(model="gpt-image-1", prompt=PROMPT, size="auto")
        assert gpt.data[0].b64_json and gpt.data[0].url is None and gpt.size == "1024x1024"  # b64 by default
    finally:
        description.write_text(original)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("output_format", "gif"),
        ("output_format", "tiff"),
        ("output_compression", 101),
        ("quality", "ultra"),
        ("quality", "xhigh"),
        ("background", "transparent"),
        ("background", "clear"),
        ("moderation", "strict"),
        ("style", "bold"),
        ("partial_images", 4),
        ("stream", "yes"),
        ("size", "1792x1792"),
        ("frame_count", 4),
    ],
)
def test_values_outside_the_enums_or_the_model_get_a_400_naming_the_field(server, field: str, value) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client(server).images.generate(prompt=PROMPT, extra_body={field: value})
    assert refused.value.body["param"] == field, refused.value.body
    assert "dall-e-2" in {m.id for m in client(server).models.list()}  # still serving


def test_an_error_after_the_stream_began_arrives_as_an_error_event(server) -> None:
    with pytest.raises(openai.APIError) as failed:
        list(client(server).images.generate(model="failing", prompt=PROMPT, size="256x256", stream=True))
    assert "nobody/no-such-decoder" in str(failed.value)


def test_a_workflow_comfyui_refuses_arrives_as_an_error_event(server) -> None:
    with pytest.raises(openai.APIError) as failed:
        list(client(server).images.generate(model="refused", prompt=PROMPT, size="256x256", stream=True))
    assert "ComfyUI refused the model's workflow" in str(failed.value)
    assert "dall-e-2" in {m.id for m in client(server).models.list()}  # still serving


def test_a_hang_up_mid_stream_leaves_no_job(server) -> None:
    stream = client(server).images.generate(
        model="slow", prompt=PROMPT, size="256x256", stream=True, partial_images=3, extra_body={"seed": 777}
    )
    deadline = time.monotonic() + 60
    while not any(item[3].get("dalle_nodes_api", {}).get("seed") == 777 for item in running(server)):
        assert time.monotonic() < deadline, "the slow job never started"
        time.sleep(0.2)
    stream.close()
    deadline = time.monotonic() + 60
    while running(server) or any(e["prompt"][3]["dalle_nodes_api"]["seed"] == 777 for e in api_entries(server)):
        assert time.monotonic() < deadline, "the job outlived its client"
        time.sleep(0.2)


def running(server) -> list:
    state = server.get_json("/queue")
    return state["queue_running"] + state["queue_pending"]
