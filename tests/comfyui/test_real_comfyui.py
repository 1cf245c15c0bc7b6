"""Our package inside a real ComfyUI: registration, the shipped workflow end to end, and error reporting.

Runs when COMFYUI_PATH points at a ComfyUI checkout (interpreter: COMFYUI_PYTHON, default this one); skips
otherwise. The server and tiny checkpoints are set up once per module by conftest.py.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from dalle_nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from test_workflows import CORE_NODES, WORKFLOWS

COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
pytestmark = pytest.mark.skipif(
    not COMFYUI_PATH or not (Path(COMFYUI_PATH) / "main.py").is_file(),
    reason="set COMFYUI_PATH to a ComfyUI checkout (and COMFYUI_PYTHON to its interpreter) to run",
)

TEXT2IMAGE = "kandinsky22_text2image"
WIDTH, HEIGHT = 128, 192  # the tiny models run this size in well under a second per step


def node_id(graph: dict, class_type: str) -> str:
    (found,) = [key for key, node in graph.items() if node["class_type"] == class_type]
    return found


def text2image(**decoder_inputs) -> dict:
    """The shipped API workflow, shrunk (size, steps) for the tiny checkpoints; `decoder_inputs` override more."""
    graph = json.loads((WORKFLOWS / f"{TEXT2IMAGE}.api.json").read_text(encoding="utf-8"))
    graph[node_id(graph, "DallePriorSample")]["inputs"]["steps"] = 3
    decoder = graph[node_id(graph, "DalleDecoderSample")]["inputs"]
    decoder.update({"width": WIDTH, "height": HEIGHT, "steps": 4, **decoder_inputs})
    return graph


def errors(entry: dict) -> list[dict]:
    return [details for kind, details in entry["status"]["messages"] if kind == "execution_error"]


def why(entry: dict) -> str:
    """A finished prompt's execution errors in one line (pytest would cut the raw status messages short)."""
    return "; ".join(f"{e['node_type']} (node {e['node_id']}): {e['exception_type']}: {e['exception_message']}"
                     for e in errors(entry)) or entry["status"]["status_str"]


def names(inputs: dict, section: str) -> set[str]:
    return set(inputs.get(section, {}))


def test_nodes_registered(comfyui) -> None:
    info = comfyui.get_json("/object_info")
    missing = sorted(set(NODE_CLASS_MAPPINGS) - set(info))
    assert not missing, f"not registered (import failed? see the log): {missing}"
    for name, cls in NODE_CLASS_MAPPINGS.items():
        ours, theirs = cls.INPUT_TYPES(), info[name]["input"]
        for section in ("required", "optional"):
            assert names(theirs, section) == names(ours, section), f"{name} {section} inputs"
        assert info[name]["output"] == list(cls.RETURN_TYPES), name
        assert info[name]["display_name"] == NODE_DISPLAY_NAME_MAPPINGS[name]
    for name, spec in CORE_NODES.items():  # test_workflows.py's stand-ins stay true to ComfyUI
        for section in ("required", "optional"):
            assert names(info[name]["input"], section) == names(spec.inputs, section), f"{name} {section} inputs"
        assert info[name]["output_node"] == spec.output_node, name


def test_ui_workflow_offered_as_template(comfyui) -> None:
    assert TEXT2IMAGE in comfyui.get_json("/workflow_templates").get("dalle-nodes", [])
    served = comfyui.get_json(f"/api/workflow_templates/dalle-nodes/{TEXT2IMAGE}.json")
    assert served == json.loads((WORKFLOWS / f"{TEXT2IMAGE}.json").read_text(encoding="utf-8"))


def test_shipped_workflow_runs(comfyui) -> None:
    graph = text2image()
    entry = comfyui.run(graph)
    assert entry["status"]["status_str"] == "success", why(entry)
    (image,) = entry["outputs"][node_id(graph, "SaveImage")]["images"]
    assert image["type"] == "output" and image["filename"].startswith("kandinsky22")
    assert (comfyui.base / "output" / image["subfolder"] / image["filename"]).is_file()
    png = Image.open(io.BytesIO(comfyui.view(image)))
    assert png.format == "PNG" and png.size == (WIDTH, HEIGHT)


def test_out_of_range_input_refused_before_running(comfyui) -> None:
    graph = text2image(width=32)  # below the declared min of 64: ComfyUI's own validation catches it
    status, answer = comfyui.queue(graph)
    assert status == 400
    refused = answer["node_errors"][node_id(graph, "DalleDecoderSample")]
    assert refused["class_type"] == "DalleDecoderSample"
    assert [error["type"] for error in refused["errors"]] == ["value_smaller_than_min"]


def test_bad_width_is_reported_and_server_recovers(comfyui) -> None:
    graph = text2image(width=100)  # within min/max, so it passes validation; our node refuses it when it runs
    entry = comfyui.run(graph)
    assert entry["status"]["status_str"] == "error"
    (error,) = errors(entry)
    decoder = ("DalleDecoderSample", node_id(graph, "DalleDecoderSample"))
    assert (error["node_type"], error["node_id"]) == decoder, why(entry)
    assert error["exception_type"].endswith("ValueError")
    assert "width 100 is not supported: use a multiple of 64" in error["exception_message"]

    entry = comfyui.run(text2image(seed=7))  # a new seed, so the decoder really runs again (not from cache)
    assert entry["status"]["status_str"] == "success", why(entry)
    (image,) = entry["outputs"][node_id(graph, "SaveImage")]["images"]
    assert Image.open(io.BytesIO(comfyui.view(image))).size == (WIDTH, HEIGHT)
