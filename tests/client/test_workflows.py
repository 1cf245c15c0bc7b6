"""The shipped workflows only use nodes, inputs, links and values that exist, and each UI file matches its API twin.

Checked against NODE_CLASS_MAPPINGS (plus stand-ins for the few ComfyUI core nodes we use), without ComfyUI;
tests/comfyui runs the API files in a real ComfyUI.
"""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path

import pytest

from dalle_nodes.client.workflow_graph import (
    WIDGET_TYPES,
    FrontendWidget,
    NodeSpec,
    input_type,
    local_specs,
    ui_to_api,
    widget_names,
)
from dalle_nodes.nodes import NODE_CLASS_MAPPINGS
from shipped_workflows import API_FILES, NAMES, UI_FILES, WORKFLOWS, api_file, load, ui_file

SPECS = local_specs(NODE_CLASS_MAPPINGS)


def node_spec(class_type: str) -> NodeSpec | None:
    return SPECS.get(class_type)


def literal_errors(where: str, declared: tuple, value) -> list[str]:
    kind, options = input_type(declared), (declared[1] if len(declared) > 1 else {})
    if kind not in WIDGET_TYPES:
        return [f"{where}: {kind} is a socket type; connect it instead of giving {value!r}"]
    if isinstance(declared[0], (list, tuple)):
        return [] if value in declared[0] else [f"{where}: {value!r} is not one of {list(declared[0])}"]
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = {
        "INT": isinstance(value, int) and is_number,
        "FLOAT": is_number,
        "STRING": isinstance(value, str),
        "BOOLEAN": isinstance(value, bool),
        "COMBO": isinstance(value, str),
    }[kind]
    if not ok:
        return [f"{where}: {value!r} is not a {kind}"]
    if kind in ("INT", "FLOAT"):
        low, high = options.get("min", float("-inf")), options.get("max", float("inf"))
        if not low <= value <= high:
            return [f"{where}: {value} is outside [{low}, {high}]"]
    return []


def api_errors(graph: dict) -> list[str]:
    """What ComfyUI's POST /prompt would refuse (or our nodes would never accept) in an API-format graph."""
    errors = []
    if not any((spec := node_spec(node["class_type"])) and spec.output_node for node in graph.values()):
        errors.append("no output node (SaveImage, PreviewImage …): ComfyUI refuses a prompt without one")
    for node_id, node in graph.items():
        spec = node_spec(node["class_type"])
        if spec is None:
            errors.append(f"node {node_id}: unknown class_type {node['class_type']!r}")
            continue
        declared = spec.declared()
        missing = set(spec.inputs.get("required", {})) - set(node["inputs"])
        errors += [
            f"node {node_id} ({node['class_type']}): required input {name!r} missing" for name in sorted(missing)
        ]
        for name, value in node["inputs"].items():
            where = f"node {node_id} ({node['class_type']}).{name}"
            if name not in declared:
                errors.append(f"{where}: no such input")
            elif isinstance(value, list):
                errors += link_errors(where, graph, value, input_type(declared[name]))
            else:
                errors += literal_errors(where, declared[name], value)
    return errors


def link_errors(where: str, graph: dict, link: list, expected: str) -> list[str]:
    if len(link) != 2 or link[0] not in graph or not isinstance(link[1], int):
        return [f"{where}: link {link} does not name an existing node and output slot"]
    source = node_spec(graph[link[0]]["class_type"])
    if source is None:
        return []  # reported as an unknown class_type
    if not 0 <= link[1] < len(source.outputs):
        return [f"{where}: {graph[link[0]]['class_type']} has no output slot {link[1]}"]
    got = source.outputs[link[1]]
    return [] if got == expected or "*" in (got, expected) else [f"{where}: gets {got}, expects {expected}"]


def ui_mismatches(ui: dict, api: dict) -> list[str]:
    """Differences between a UI-format workflow and the API graph it should export to, plus broken UI wiring."""
    errors = []
    nodes = {str(node["id"]): node for node in ui["nodes"]}
    if Counter(n["type"] for n in nodes.values()) != Counter(n["class_type"] for n in api.values()):
        errors.append("node types differ between the UI and API files")
    last_link = max((link[0] for link in ui["links"]), default=0)
    if max(map(int, nodes)) > ui["last_node_id"] or last_link > ui["last_link_id"]:
        errors.append("last_node_id / last_link_id below the ids in use: the frontend would reuse ids")

    ui_links = set()
    for link_id, source, slot, target, target_slot, kind in ui["links"]:
        output, socket = nodes[str(source)]["outputs"][slot], nodes[str(target)]["inputs"][target_slot]
        if link_id not in (output["links"] or []) or socket["link"] != link_id:
            errors.append(f"link {link_id} is not recorded on both of its ends")
        if not kind == output["type"] == socket["type"]:
            errors.append(f"link {link_id}: types {output['type']} → {kind} → {socket['type']} differ")
        ui_links.add((str(source), slot, str(target), socket["name"]))
    api_links = {
        (value[0], value[1], node_id, name)
        for node_id, node in api.items()
        for name, value in node["inputs"].items()
        if isinstance(value, list)
    }
    if ui_links != api_links:
        errors.append(
            f"links only in the UI file: {sorted(ui_links - api_links)}; "
            f"only in the API file: {sorted(api_links - ui_links)}"
        )

    for node_id, node in nodes.items():
        if node_id not in api or api[node_id]["class_type"] != node["type"]:
            errors.append(f"UI node {node_id} ({node['type']}) has no API node of that id and type")
            continue
        names = widget_names(node_spec(node["type"]))
        values = node["widgets_values"]
        if len(values) != len(names):
            errors.append(f"node {node_id} ({node['type']}): {len(values)} widget values for widgets {names}")
            continue
        inputs = api[node_id]["inputs"]
        for name, value in zip(names, values, strict=True):
            if isinstance(name, FrontendWidget):
                if value not in name.allowed:
                    errors.append(f"node {node_id}: {name.name} {value!r} not in {sorted(name.allowed)}")
            elif not isinstance(inputs.get(name), list) and inputs.get(name) != value:
                errors.append(f"node {node_id}.{name}: UI {value!r} ≠ API {inputs.get(name)!r}")
    return errors


def test_workflows_are_shipped() -> None:
    assert API_FILES and UI_FILES, f"no workflows in {WORKFLOWS}"
    api_names = [path.name.removesuffix(".api.json") for path in API_FILES]
    assert api_names == NAMES, "every workflow comes as workflows/<name>.json and workflows/api/<name>.api.json"
    assert not list(WORKFLOWS.glob("*.api.json")), "API files in workflows/ would show in ComfyUI's template browser"


@pytest.mark.parametrize("path", API_FILES, ids=lambda p: p.name)
def test_api_workflow_is_valid(path: Path) -> None:
    errors = api_errors(load(path))
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_ui_workflow_matches_api_twin(path: Path) -> None:
    twin = api_file(path.stem)
    assert twin.is_file(), f"{path.name} has no API-format twin {twin.name}"
    ui = load(path)
    assert ui.get("version") == 0.4 and isinstance(ui.get("nodes"), list) and isinstance(ui.get("links"), list)
    errors = ui_mismatches(ui, load(twin))
    assert not errors, "\n".join(errors)


def without_titles(graph: dict) -> dict:
    return {node_id: {k: v for k, v in node.items() if k != "_meta"} for node_id, node in graph.items()}


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_ui_workflow_converts_to_its_api_twin(path: Path) -> None:
    """What `python -m dalle_nodes queue` sends for a UI file is exactly the API file we ship beside it."""
    converted = ui_to_api(load(path), SPECS)
    assert without_titles(converted) == without_titles(load(api_file(path.stem)))


def _break_api(graph: dict, how: str) -> str:
    """Damage a copy of the text-to-image graph one way; return what the error must mention."""
    decoder = next(n for n in graph.values() if n["class_type"] == "DalleDecoderSample")
    if how == "unknown node":
        decoder["class_type"] = "DalleNoSuchNode"
        return "unknown class_type"
    if how == "unknown input":
        decoder["inputs"]["cfg"] = 4.0
        return "no such input"
    if how == "missing input":
        del decoder["inputs"]["steps"]
        return "'steps' missing"
    if how == "wrong link type":
        decoder["inputs"]["image_embeds"] = decoder["inputs"]["decoder"]
        return "gets DALLE_DECODER, expects DALLE_IMAGE_EMBEDS"
    if how == "dangling link":
        decoder["inputs"]["image_embeds"] = ["999", 0]
        return "does not name an existing node"
    if how == "above max":
        decoder["inputs"]["width"] = 8192
        return "outside"
    if how == "not in combo":
        decoder["inputs"]["sampler"] = "euler"
        return "not one of"
    if how == "literal for a socket":
        decoder["inputs"]["decoder"] = "kandinsky"
        return "socket type"
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how",
    [
        "unknown node",
        "unknown input",
        "missing input",
        "wrong link type",
        "dangling link",
        "above max",
        "not in combo",
        "literal for a socket",
    ],
)
def test_api_check_catches(how: str) -> None:
    graph = load(api_file("kandinsky22_text2image"))
    expected = _break_api(graph, how)
    assert any(expected in error for error in api_errors(graph)), api_errors(graph)


@pytest.mark.parametrize(
    "how, expected",
    [
        ("widget value", "UI 512 ≠ API 768"),
        ("missing seed control", "widget values for"),
        ("unlinked negative", "only in the API file: [('3', 0, '4', 'negative')]"),
    ],
)
def test_ui_check_catches(how: str, expected: str) -> None:
    ui, api = load(ui_file("kandinsky22_text2image")), load(api_file("kandinsky22_text2image"))
    broken = copy.deepcopy(ui)
    nodes = {node["id"]: node for node in broken["nodes"]}
    decoder = next(n for n in broken["nodes"] if n["type"] == "DalleDecoderSample")
    if how == "widget value":
        decoder["widgets_values"][0] = 512
    elif how == "missing seed control":
        decoder["widgets_values"].remove("fixed")
    else:  # disconnected cleanly on both ends: only the comparison with the API file can notice
        link = next(ln for ln in broken["links"] if nodes[ln[3]]["inputs"][ln[4]]["name"] == "negative")
        broken["links"].remove(link)
        nodes[link[3]]["inputs"][link[4]]["link"] = None
        nodes[link[1]]["outputs"][link[2]]["links"].remove(link[0])
    assert not ui_mismatches(ui, api)
    assert any(expected in error for error in ui_mismatches(broken, api)), ui_mismatches(broken, api)


@pytest.mark.parametrize("value, expected", [(None, "1 widget values for"), ("mask", "upload 'mask' not in ['image']")])
def test_ui_check_knows_the_upload_button(value: str | None, expected: str) -> None:
    """The frontend saves Load Image's upload button as a widget value after the file name: expected, and checked."""
    ui, api = load(ui_file("kandinsky22_img2img")), load(api_file("kandinsky22_img2img"))
    broken = copy.deepcopy(ui)
    loader = next(n for n in broken["nodes"] if n["type"] == "LoadImage")
    assert loader["widgets_values"] == ["example.png", "image"]
    if value is None:  # a file written by hand, without the button
        loader["widgets_values"].pop()
    else:
        loader["widgets_values"][1] = value
    assert not ui_mismatches(ui, api)
    assert any(expected in error for error in ui_mismatches(broken, api)), ui_mismatches(broken, api)
