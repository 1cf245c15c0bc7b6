"""openai_api/model_templates.py: model descriptions (`<id>.model.json`) naming API-format workflow templates and
which node inputs each request field fills; the catalogue of them, the variant a request runs, and its filling.

The shipped descriptions are checked against their workflow files as read here, independently of the module: a
filled graph differs from the template (with the description's fixed "set" values) exactly at the bound inputs.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import socket
import tempfile
import threading
from pathlib import Path

import pytest

from dalle_nodes.openai_api.errors import ApiError
from dalle_nodes.openai_api.model_templates import (
    DEFAULT_SIZES,
    MAX_DESCRIPTION_BYTES,
    SHIPPED_MODELS,
    Catalogue,
    Model,
    Variant,
    fill,
    load_catalogue,
    request_values,
)
from dalle_nodes.openai_api.requests import MAX_N, MAX_PROMPT, MAX_SEED, ImageRequest, parse
from dalle_nodes.openai_api.workflow_bindings import SHIPPED_WORKFLOWS

SHIPPED_IDS = ("dall-e-2", "dall-e-mega", "dall-e-mini", "karlo")
SIZES = ("256x256", "512x512", "1024x1024")
ENDPOINTS_OF = {
    "dall-e-2": ("generations", "edits", "variations"),
    "dall-e-mega": ("generations",),
    "dall-e-mini": ("generations",),
    "karlo": ("generations", "variations"),
}
CASES = [(model, endpoint, size) for model in SHIPPED_IDS for endpoint in ENDPOINTS_OF[model] for size in SIZES]
PROMPT = "a corgi astronaut, photograph"
NEGATIVE = "blurry, deformed"
SEED = 1234567890123456789
UPLOAD = "openai/upload-0123abcd.png"
TEXT2IMAGE = "kandinsky22_text2image.api.json"
# A minimal valid generations entry on a shipped workflow.
GENERATIONS = {"workflow": TEXT2IMAGE, "inputs": {"prompt": [["2", "text"]], "seed": [["4", "seed"], ["6", "seed"]]}}


@pytest.fixture(scope="module")
def shipped() -> Catalogue:
    return load_catalogue([SHIPPED_MODELS])


def read(path: Path) -> object:
    return json.loads(path.read_text(encoding="utf-8"))


def write(folder: Path, name: str, content: object) -> Path:
    path = folder / name
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def shipped_entry(model_id: str, endpoint: str, size: str) -> dict:
    """The description's entry for this endpoint and size, as the file says (the first entry listing the size)."""
    description = read(SHIPPED_MODELS / f"{model_id}.model.json")
    entries = description[endpoint] if isinstance(description[endpoint], list) else [description[endpoint]]
    return next(entry for entry in entries if size in entry.get("sizes", description.get("sizes", DEFAULT_SIZES)))


def template(entry: dict) -> dict:
    """The workflow file with the entry's "set" values written in."""
    graph = read(SHIPPED_WORKFLOWS / entry["workflow"])
    for node, values in entry.get("set", {}).items():
        graph[node]["inputs"].update(values)
    return graph


def request_for(
    model_id: str, endpoint: str, size: str, variant_inputs: set[str] | None = None, **extra
) -> ImageRequest:
    fields = {"model": model_id, "size": size, "n": 3, "seed": SEED, **extra}
    if endpoint != "variations":
        fields["prompt"] = PROMPT
        if variant_inputs is not None and "negative" in variant_inputs:
            fields["negative_prompt"] = NEGATIVE
    return parse(endpoint, fields, endpoint != "generations")


def filled(
    catalogue: Catalogue, model_id: str, endpoint: str, size: str, **extra
) -> tuple[ImageRequest, Variant, dict, dict]:
    model = catalogue.get(model_id)
    variant = model.variant(request_for(model_id, endpoint, size, **extra))
    request = request_for(model_id, endpoint, size, set(variant.inputs), **extra)
    assert model.variant(request) is variant
    values = request_values(request, variant, request.seed, None if endpoint == "generations" else UPLOAD)
    return request, variant, values, fill(variant, values)


def literals(graph: dict, class_type: str | None, name: str) -> list:
    """The literal (non-link) values of one input name across the graph's nodes (of one class_type if given)."""
    return [
        node["inputs"][name]
        for node in graph.values()
        if (class_type is None or node["class_type"] == class_type)
        and name in node["inputs"]
        and not isinstance(node["inputs"][name], list)
    ]


# the shipped catalogue


def test_shipped_catalogue_loads_every_model(shipped: Catalogue) -> None:
    assert shipped.problems == {}
    assert sorted(shipped.models) == list(SHIPPED_IDS)
    for model_id, model in shipped.models.items():
        assert isinstance(model, Model)
        assert (model.id, model.source) == (model_id, SHIPPED_MODELS / f"{model_id}.model.json")
        assert model.sizes == SIZES and model.description.strip()
        assert tuple(model.endpoints) == ENDPOINTS_OF[model_id]


@pytest.mark.parametrize(("model_id", "endpoint", "size"), CASES)
def test_filling_changes_exactly_the_bound_inputs(shipped: Catalogue, model_id: str, endpoint: str, size: str) -> None:
    entry = shipped_entry(model_id, endpoint, size)
    expected = template(entry)
    request, variant, values, graph = filled(shipped, model_id, endpoint, size)

    bindings = {name: tuple(tuple(target) for target in targets) for name, targets in entry["inputs"].items()}
    assert variant.inputs == bindings
    assert variant.graph == expected, "the variant is the template with the description's set values, unfilled"
    bound = {target: name for name, targets in bindings.items() for target in targets}
    assert graph.keys() == expected.keys()
    for node_id, node in graph.items():
        assert node.keys() == expected[node_id].keys()
        assert node["class_type"] == expected[node_id]["class_type"]
        assert node["inputs"].keys() == expected[node_id]["inputs"].keys()
        for input_name, value in node["inputs"].items():
            target = (node_id, input_name)
            want = values[bound[target]] if target in bound else expected[node_id]["inputs"][input_name]
            assert value == want, f"node {node_id}.{input_name}"
    assert set(bound.values()) <= set(values)


@pytest.mark.parametrize(("model_id", "endpoint", "size"), CASES)
def test_filled_graph_carries_the_request(shipped: Catalogue, model_id: str, endpoint: str, size: str) -> None:
    """What each kind of node ends up with, whichever node ids the description names."""
    request, variant, values, graph = filled(shipped, model_id, endpoint, size)
    assert literals(graph, None, "seed") == [SEED] * len(literals(graph, None, "seed")) != []
    assert set(literals(graph, None, "batch_size") + literals(graph, None, "amount")) == {3}
    # Kandinsky's decoder and picture scaling take the size; DALL·E Mini's is fixed by the variant
    assert set(literals(graph, None, "width")) <= {request.width}
    assert set(literals(graph, None, "height")) <= {request.height}
    assert literals(graph, "LoadImage", "image") == ([] if endpoint == "generations" else [UPLOAD])
    saves = literals(graph, "SaveImage", "filename_prefix")
    assert len(saves) == 1 and saves[0].startswith("openai/") and model_id in saves[0]
    if model_id == "dall-e-2":
        prompts = {
            node["_meta"]["title"]: node["inputs"]["text"]
            for node in graph.values()
            if node["class_type"] == "DalleTextEncode"
        }
        expected = {
            "generations": {"Prompt": PROMPT, "Negative prompt": NEGATIVE},
            "edits": {"Prompt": PROMPT},
            "variations": {},
        }
        assert prompts == expected[endpoint]
        assert (
            literals(graph, "DalleDecoderSample", "width")
            == literals(graph, "DalleDecoderSample", "height")
            == [request.width]
        )
    elif model_id == "karlo":  # the variations' decoder reads the empty prompt
        assert literals(graph, "DalleTextEncode", "text") == ([PROMPT] if endpoint == "generations" else [])
    else:
        assert literals(graph, "DalleTokenSample", "text") == [PROMPT]
        assert literals(graph, "DalleLoadMini", "variant") == [model_id.removeprefix("dall-e-")]


@pytest.mark.parametrize(
    ("model_id", "endpoint"),
    [("dall-e-mega", "generations"), ("dall-e-mini", "generations"), ("karlo", "generations"), ("karlo", "variations")],
)
def test_sizes_above_256_come_from_the_upscaler(shipped: Catalogue, model_id: str, endpoint: str) -> None:
    scale = {}
    for size in SIZES:
        graph = filled(shipped, model_id, endpoint, size)[3]
        scale[size] = literals(graph, "DalleGANUpscale", "scale_to")
    assert scale == {"256x256": [], "512x512": [2.0], "1024x1024": [0.0]}  # 256 px as sampled, ×2, the model's ×4
    graph = filled(shipped, model_id, endpoint, "1024x1024")[3]
    assert literals(graph, "DalleLoadUpscaler", "model") == ["RealESRGAN_x4plus"]


@pytest.mark.parametrize(("model_id", "endpoint", "size"), CASES)
def test_every_bound_target_is_a_literal_input(shipped: Catalogue, model_id: str, endpoint: str, size: str) -> None:
    raw = read(SHIPPED_WORKFLOWS / shipped_entry(model_id, endpoint, size)["workflow"])
    variant = shipped.get(model_id).variant(request_for(model_id, endpoint, size))
    for name, targets in variant.inputs.items():
        for node, input_name in targets:
            assert input_name in raw[node]["inputs"], f"{name} → {node}.{input_name}"
            assert not isinstance(raw[node]["inputs"][input_name], list), f"{name} → {node}.{input_name} is a link"


def literal_problems(graph: dict, specs: dict) -> list[str]:
    """Literal inputs a node does not declare, or whose value its declaration refuses (type, range, step)."""
    from dalle_nodes.client.workflow_graph import input_type

    problems = []
    for node_id, node in graph.items():
        declared = specs[node["class_type"]].declared()
        for name, value in node["inputs"].items():
            where = f"node {node_id} ({node['class_type']}).{name} = {value!r}"
            if isinstance(value, list):
                continue
            if name not in declared:
                problems.append(f"{where}: no such input")
                continue
            kind, options = input_type(declared[name]), (declared[name][1] if len(declared[name]) > 1 else {})
            if isinstance(declared[name][0], (list, tuple)):
                problems += [] if value in declared[name][0] else [f"{where}: not a choice"]
                continue
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            ok = {"INT": number and isinstance(value, int), "FLOAT": number, "STRING": isinstance(value, str)}
            ok |= {"BOOLEAN": isinstance(value, bool), "COMBO": isinstance(value, str)}
            if not ok.get(kind, False):
                problems.append(f"{where}: not a {kind}")
            elif kind in ("INT", "FLOAT") and not options.get("min", -float("inf")) <= value <= options.get(
                "max", float("inf")
            ):
                problems.append(f"{where}: outside [{options.get('min')}, {options.get('max')}]")
            elif kind == "INT" and options.get("step", 1) > 1 and value % options["step"]:
                problems.append(f"{where}: not a multiple of {options['step']}")
    return problems


@pytest.mark.parametrize(("model_id", "endpoint", "size"), CASES)
def test_extreme_requests_give_values_the_nodes_accept(
    shipped: Catalogue, model_id: str, endpoint: str, size: str
) -> None:
    """seed 2^64 − 1, n 10 and a 1000-character prompt at every size: each literal, bound or set, is declared by its
    node and inside its declared range (what ComfyUI's POST /prompt validates)."""
    from dalle_nodes.client.workflow_graph import local_specs
    from dalle_nodes.nodes import NODE_CLASS_MAPPINGS

    model = shipped.get(model_id)
    fields = {"model": model_id, "size": size, "n": MAX_N, "seed": MAX_SEED}
    if endpoint != "variations":
        fields |= {"prompt": "p" * MAX_PROMPT}
    request = parse(endpoint, fields, False)
    variant = model.variant(request)
    graph = fill(variant, request_values(request, variant, MAX_SEED, None if endpoint == "generations" else UPLOAD))
    assert literal_problems(graph, local_specs(NODE_CLASS_MAPPINGS)) == []


# variants: which workflow a request runs


def test_endpoint_the_model_does_not_serve(shipped: Catalogue) -> None:
    request = parse("edits", {"model": "dall-e-mega", "prompt": "p"}, True)
    with pytest.raises(ApiError) as caught:
        shipped.get("dall-e-mega").variant(request)
    assert (caught.value.status, caught.value.param) == (400, "model")
    assert "does not serve images/edits" in caught.value.message and "(it serves generations)" in caught.value.message


WIDE_SIZES = "1792x1024, 1024x1792, 1536x1024, 1024x1536"


@pytest.mark.parametrize(
    ("model_id", "size"),
    [
        (model_id, size)
        for model_id in SHIPPED_IDS
        for size in ("300x300", "128x128", "2048x2048", "512x256", "1792x1024")
        if (model_id, size) != ("dall-e-2", "1792x1024")  # Kandinsky 2.2 samples DALL·E 3's wide size
    ],
)
def test_size_the_model_does_not_make(shipped: Catalogue, model_id: str, size: str) -> None:
    request = parse("generations", {"model": model_id, "prompt": "p", "size": size}, False)
    with pytest.raises(ApiError) as caught:
        shipped.get(model_id).variant(request)
    assert (caught.value.status, caught.value.param, caught.value.code) == (400, "size", None)
    sizes = "256x256, 512x512, 1024x1024" + (f", {WIDE_SIZES}" if model_id == "dall-e-2" else "")
    assert f"size '{size}' is not one of {sizes} for the model '{model_id}'" in caught.value.message


def test_first_entry_listing_the_size_runs(tmp_path: Path) -> None:
    first = {**GENERATIONS, "sizes": ["256x256", "512x512"], "set": {"8": {"filename_prefix": "first"}}}
    second = {**GENERATIONS, "sizes": ["512x512", "768x768"], "set": {"8": {"filename_prefix": "second"}}}
    write(tmp_path, "two.model.json", {"sizes": ["64x64"], "generations": [first, second]})
    model = load_catalogue([tmp_path]).get("two")
    prefix = {}
    for size in ("256x256", "512x512", "768x768"):
        variant = model.variant(parse("generations", {"model": "two", "prompt": "p", "size": size}, False))
        prefix[size] = variant.graph["8"]["inputs"]["filename_prefix"]
    assert prefix == {"256x256": "first", "512x512": "first", "768x768": "second"}
    with pytest.raises(ApiError) as caught:
        model.variant(parse("generations", {"model": "two", "prompt": "p", "size": "64x64"}, False))
    assert caught.value.param == "size" and "'64x64'" in caught.value.message
    assert all(size in caught.value.message for size in ("256x256", "512x512", "768x768"))


def test_model_sizes_apply_to_entries_without_their_own(tmp_path: Path) -> None:
    write(tmp_path, "small.model.json", {"sizes": ["128x128"], "generations": GENERATIONS})
    model = load_catalogue([tmp_path]).get("small")
    assert model.sizes == ("128x128",)
    assert model.variant(parse("generations", {"prompt": "p", "size": "128x128"}, False)).sizes == ("128x128",)
    with pytest.raises(ApiError) as caught:
        model.variant(parse("generations", {"prompt": "p"}, False))  # 1024x1024 by default
    assert caught.value.param == "size"


# filling


def test_fill_leaves_the_variant_untouched(shipped: Catalogue) -> None:
    variant = shipped.get("dall-e-2").variant(request_for("dall-e-2", "generations", "512x512"))
    before = copy.deepcopy(variant.graph)
    first = fill(variant, {"prompt": "one", "seed": 1})
    second = fill(variant, {"prompt": "two"})
    assert variant.graph == before
    assert (first["2"]["inputs"]["text"], first["4"]["inputs"]["seed"], first["6"]["inputs"]["seed"]) == ("one", 1, 1)
    assert second["2"]["inputs"]["text"] == "two" and second["4"]["inputs"]["seed"] == before["4"]["inputs"]["seed"]
    assert first["2"]["inputs"]["text_encoder"] is not variant.graph["2"]["inputs"]["text_encoder"]  # a deep copy


def test_fill_ignores_values_the_variant_does_not_bind(shipped: Catalogue) -> None:
    variant = shipped.get("dall-e-mega").variant(request_for("dall-e-mega", "generations", "256x256"))
    assert "width" not in variant.inputs and "image" not in variant.inputs
    assert fill(variant, {"width": 999, "height": 999, "image": "x.png", "negative": "n", "mask": "m"}) == variant.graph


def test_request_values(shipped: Catalogue) -> None:
    for endpoint, upload in (("generations", None), ("edits", UPLOAD), ("variations", UPLOAD)):
        extra = {"negative_prompt": NEGATIVE} if endpoint == "generations" else {}
        request = request_for("dall-e-2", endpoint, "512x512", **extra)
        variant = shipped.get("dall-e-2").variant(request)
        values = request_values(request, variant, 77, upload)
        expected = {"seed": 77, "width": 512, "height": 512, "n": 3}
        expected |= {
            "generations": {"prompt": PROMPT, "negative": NEGATIVE},
            "edits": {"prompt": PROMPT, "image": UPLOAD, "mask": UPLOAD},
            "variations": {"image": UPLOAD, "mask": UPLOAD},
        }[endpoint]
        assert values == expected


@pytest.mark.parametrize(
    ("model_id", "endpoint"), [("dall-e-mega", "generations"), ("dall-e-mini", "generations"), ("dall-e-2", "edits")]
)
def test_negative_prompt_the_workflow_cannot_take(shipped: Catalogue, model_id: str, endpoint: str) -> None:
    request = request_for(model_id, endpoint, "256x256", negative_prompt="blurry")
    variant = shipped.get(model_id).variant(request)
    with pytest.raises(ApiError) as caught:
        request_values(request, variant, 1, UPLOAD)
    assert (caught.value.status, caught.value.param) == (400, "negative_prompt")
    assert "not taken by this model's workflow" in caught.value.message


def test_n_the_workflow_cannot_take(tmp_path: Path) -> None:
    write(tmp_path, "single.model.json", {"generations": GENERATIONS})
    model = load_catalogue([tmp_path]).get("single")
    one = parse("generations", {"model": "single", "prompt": "p", "n": 1}, False)
    assert request_values(one, model.variant(one), 5, None)["n"] == 1
    two = parse("generations", {"model": "single", "prompt": "p", "n": 2}, False)
    with pytest.raises(ApiError) as caught:
        request_values(two, model.variant(two), 5, None)
    assert (caught.value.status, caught.value.param) == (400, "n")
    assert "n must be 1" in caught.value.message


# user folders


def test_user_description_on_a_shipped_workflow(tmp_path: Path) -> None:
    path = write(tmp_path, "my-model.model.json", {"description": "mine", "generations": GENERATIONS})
    catalogue = load_catalogue([SHIPPED_MODELS, tmp_path])
    assert catalogue.problems == {}
    assert sorted(catalogue.models) == sorted([*SHIPPED_IDS, "my-model"])
    model = catalogue.get("my-model")
    assert (model.source, model.description, model.sizes) == (path, "mine", DEFAULT_SIZES)
    variant = model.variant(parse("generations", {"model": "my-model", "prompt": "p"}, False))
    assert variant.graph == read(SHIPPED_WORKFLOWS / TEXT2IMAGE)
    assert variant.inputs == {"prompt": (("2", "text"),), "seed": (("4", "seed"), ("6", "seed"))}


def test_user_description_overrides_a_shipped_model(tmp_path: Path) -> None:
    path = write(tmp_path, "dall-e-2.model.json", {"description": "my dall-e-2", "generations": GENERATIONS})
    catalogue = load_catalogue([SHIPPED_MODELS, tmp_path])
    assert catalogue.problems == {}
    model = catalogue.get("dall-e-2")
    assert (model.source, model.description, tuple(model.endpoints)) == (path, "my dall-e-2", ("generations",))
    with pytest.raises(ApiError) as caught:
        model.variant(parse("variations", {}, True))
    assert caught.value.param == "model"
    assert load_catalogue([tmp_path, SHIPPED_MODELS]).get("dall-e-2").source == SHIPPED_MODELS / "dall-e-2.model.json"


def test_workflow_beside_the_description_comes_first(tmp_path: Path) -> None:
    own = read(SHIPPED_WORKFLOWS / TEXT2IMAGE)
    own["6"]["inputs"]["steps"] = 7
    write(tmp_path, TEXT2IMAGE, own)  # shadows the shipped file of the same name, for this folder's descriptions
    graph = {
        "1": {"class_type": "DalleLoadMini", "inputs": {"variant": "mini"}},
        "2": {"class_type": "DalleTokenSample", "inputs": {"bart": ["1", 0], "text": ""}},
    }
    write(tmp_path, "own.api.json", graph)
    write(tmp_path, "shadow.model.json", {"generations": GENERATIONS})
    write(
        tmp_path,
        "own.model.json",
        {"generations": {"workflow": "own.api.json", "inputs": {"prompt": [["2", "text"]]}, "output": "2"}},
    )
    catalogue = load_catalogue([SHIPPED_MODELS, tmp_path])
    assert catalogue.problems == {}
    request = parse("generations", {"prompt": "p"}, False)
    assert catalogue.get("shadow").variant(request).graph == own
    assert catalogue.get("dall-e-2").variant(request).graph["6"]["inputs"]["steps"] == 50  # shipped, unshadowed
    variant = catalogue.get("own").variant(request)
    assert (variant.graph, variant.output) == (graph, "2")
    assert fill(variant, {"prompt": "q"})["2"]["inputs"] == {"bart": ["1", 0], "text": "q"}


def test_missing_or_empty_folders_are_skipped(tmp_path: Path) -> None:
    catalogue = load_catalogue([tmp_path / "absent", tmp_path, SHIPPED_MODELS])
    assert sorted(catalogue.models) == list(SHIPPED_IDS) and catalogue.problems == {}
    assert load_catalogue([]).models == {}


def ui_workflow(folder: Path) -> str:
    shutil.copy(SHIPPED_WORKFLOWS.parent / "kandinsky22_text2image.json", folder / "canvas.json")
    return "canvas.json"


def inputs(**changes) -> dict:
    return {**GENERATIONS, "inputs": {**GENERATIONS["inputs"], **changes}}


# (file name, content, words its problem names); content may be a function of the folder writing what it needs (and
# returning None where it made the description itself)
BROKEN = {
    "bad JSON": ("bad-json.model.json", '{"generations": {"workflow": ', ["not valid JSON"]),
    "not an object": ("list.model.json", [GENERATIONS], ["a description is a JSON object"]),
    "UI workflow": (
        "ui.model.json",
        lambda folder: {"generations": {**GENERATIONS, "workflow": ui_workflow(folder)}},
        ["canvas (UI) file", "Export (API)"],
    ),
    "not API format": (
        "nodes.model.json",
        lambda folder: {
            "generations": {**GENERATIONS, "workflow": write(folder, "x.api.json", {"2": {"inputs": {}}}).name}
        },
        ["x.api.json is not an API-format workflow"],
    ),
    "missing workflow": (
        "missing.model.json",
        {"generations": {**GENERATIONS, "workflow": "nowhere.api.json"}},
        ["nowhere.api.json is neither beside"],
    ),
    "unknown node": (
        "node.model.json",
        {"generations": inputs(prompt=[["99", "text"]])},
        ["(generations)", "inputs.prompt names node '99'"],
    ),
    "link target": (
        "link.model.json",
        {"generations": inputs(prompt=[["2", "text_encoder"]])},
        ["text_encoder of node 2 (DalleTextEncode) is a link"],
    ),
    "absent input": (
        "absent.model.json",
        {"generations": inputs(seed=[["4", "sed"]])},
        ["sed of node 4 (DallePriorSample) is not among its inputs"],
    ),
    "not a pair": (
        "pair.model.json",
        {"generations": inputs(prompt=[["2"]])},
        ["inputs.prompt has ['2'], not a [node id, input name] pair"],
    ),
    "not a list": (
        "flat.model.json",
        {"generations": inputs(prompt="2.text")},
        ["inputs.prompt is a list of [node id, input name] pairs"],
    ),
    "slash": ("slash.model.json", {"generations": {**GENERATIONS, "workflow": "api/" + TEXT2IMAGE}}, ["no folders"]),
    "dot dot": (
        "dots.model.json",
        {"generations": {**GENERATIONS, "workflow": "../api/" + TEXT2IMAGE}},
        ["no folders"],
    ),
    "dot dot name": ("dotname.model.json", {"generations": {**GENERATIONS, "workflow": "x..json"}}, ["no folders"]),
    "absolute": (
        "absolute.model.json",
        {"generations": {**GENERATIONS, "workflow": str(SHIPPED_WORKFLOWS / TEXT2IMAGE)}},
        ["no folders"],
    ),
    "backslash": (
        "backslash.model.json",
        {"generations": {**GENERATIONS, "workflow": "..\\" + TEXT2IMAGE}},
        ["no folders"],
    ),
    "unknown key": ("key.model.json", {"generations": GENERATIONS, "edit": GENERATIONS}, ["unknown keys ['edit']"]),
    "unknown entry key": (
        "entry.model.json",
        {"generations": {**GENERATIONS, "negative": [["3", "text"]]}},
        ["(generations): unknown keys ['negative']"],
    ),
    "unknown input name": (
        "field.model.json",
        {"generations": inputs(negative_prompt=[["3", "text"]])},
        ["inputs ['negative_prompt'] are not request fields"],
    ),
    "no prompt": (
        "noprompt.model.json",
        {"generations": {**GENERATIONS, "inputs": {"seed": [["4", "seed"]]}}},
        ["(generations): inputs must bind ['prompt']"],
    ),
    "edit without image": ("noimage.model.json", {"edits": GENERATIONS}, ["(edits): inputs must bind ['image']"]),
    "variation without image": (
        "novariation.model.json",
        {"variations": {**GENERATIONS, "inputs": {"seed": [["4", "seed"]]}}},
        ["(variations): inputs must bind ['image']"],
    ),
    "set unknown node": (
        "set.model.json",
        {"generations": {**GENERATIONS, "set": {"42": {"x": 1}}}},
        ["set names node '42'"],
    ),
    "output unknown node": (
        "output.model.json",
        {"generations": {**GENERATIONS, "output": "42"}},
        ["output names node '42'"],
    ),
    "bad sizes": ("sizes.model.json", {"sizes": ["512"], "generations": GENERATIONS}, ["sizes is a list of sizes"]),
    "empty sizes": ("nosizes.model.json", {"generations": {**GENERATIONS, "sizes": []}}, ["sizes is a list of sizes"]),
    "no endpoint": ("nothing.model.json", {"description": "x"}, ["serves no endpoint"]),
    "empty entries": ("entries.model.json", {"generations": []}, ["generations is an object (or a list of them)"]),
    "description type": (
        "described.model.json",
        {"description": 3, "generations": GENERATIONS},
        ["description is a string"],
    ),
    "bad id": ("_hidden.model.json", {"generations": GENERATIONS}, ["a model id is letters, digits"]),
    "long id": ("m" * 65 + ".model.json", {"generations": GENERATIONS}, ["up to 64"]),
    "charset": (
        "charset.model.json",
        {"prompt": {"charset": "latin-1"}, "generations": GENERATIONS},
        ['prompt is {"charset": "unicode"} (the default) or {"charset": "ascii"}'],
    ),
    "prompt rule": ("rule.model.json", {"prompt": "ascii", "generations": GENERATIONS}, ['{"charset": "ascii"}']),
    "folder": ("folder.model.json", lambda folder: (folder / "folder.model.json").mkdir() or None, ["a folder"]),
    "deep JSON": ("deep.model.json", "[" * 100_000, []),
    "huge number": ("huge.model.json", '{"sizes": ' + "9" * 5000 + "}", []),
}


@pytest.mark.parametrize("case", BROKEN)
def test_broken_description_is_listed_and_the_others_load(tmp_path: Path, case: str) -> None:
    name, content, words = BROKEN[case]
    write(tmp_path, "fine.model.json", {"generations": GENERATIONS})
    content = content(tmp_path) if callable(content) else content
    if content is not None:  # else the case made its file itself
        write(tmp_path, name, content)
    catalogue = load_catalogue([SHIPPED_MODELS, tmp_path])
    assert list(catalogue.problems) == [name]
    problem = catalogue.problems[name]
    assert problem.startswith((f"{name}: ", f"{name} ("))
    for word in words:
        assert word in problem
    assert sorted(catalogue.models) == sorted([*SHIPPED_IDS, "fine"])

    model_id = name.removesuffix(".model.json")
    with pytest.raises(ApiError) as caught:
        catalogue.get(model_id)
    assert (caught.value.status, caught.value.param) == (500, "model")
    assert caught.value.message == f"The model '{model_id}' cannot run: {problem}"
    assert caught.value.body()["error"]["type"] == "server_error"


def test_broken_workflow_file_is_named(tmp_path: Path) -> None:
    write(tmp_path, "graph.api.json", "{oops")
    write(tmp_path, "uses.model.json", {"generations": {**GENERATIONS, "workflow": "graph.api.json"}})
    problem = load_catalogue([tmp_path]).problems["uses.model.json"]
    assert "graph.api.json" in problem and "not valid JSON" in problem


def test_broken_override_hides_the_shipped_model(tmp_path: Path) -> None:
    write(tmp_path, "dall-e-2.model.json", {"generations": {**GENERATIONS, "workflow": "gone.api.json"}})
    catalogue = load_catalogue([SHIPPED_MODELS, tmp_path])
    assert "dall-e-2" not in catalogue.models and list(catalogue.problems) == ["dall-e-2.model.json"]
    with pytest.raises(ApiError) as caught:
        catalogue.get("dall-e-2")
    assert caught.value.status == 500 and "gone.api.json" in caught.value.message


def test_later_folder_repairs_an_earlier_problem(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write(tmp_path / "a", "x.model.json", "{")
    write(tmp_path / "b", "x.model.json", {"generations": GENERATIONS})
    catalogue = load_catalogue([tmp_path / "a", tmp_path / "b"])
    assert catalogue.problems == {} and catalogue.get("x").source == tmp_path / "b" / "x.model.json"


def test_unknown_model_is_404(shipped: Catalogue) -> None:
    for model_id in ("dall-e-3", "gpt-image-1", "DALL-E-2", ""):
        with pytest.raises(ApiError) as caught:
            shipped.get(model_id)
        error = caught.value
        assert (error.status, error.param, error.code) == (404, "model", "model_not_found")
        assert f"'{model_id}' does not exist" in error.message and "dall-e-2, dall-e-mega, dall-e-mini" in error.message


# the files themselves: read from any thread without ever blocking, bounded, once per version


def catalogue_within(folders: list[Path], seconds: float) -> Catalogue:
    """load_catalogue in a thread that must be done within `seconds` (a reader blocked on a FIFO never is)."""
    done: list[Catalogue] = []
    thread = threading.Thread(target=lambda: done.append(load_catalogue(folders)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert done, f"load_catalogue did not return within {seconds} s: it is blocked on a file"
    return done[0]


def release_readers(fifo: Path) -> None:
    """Let a reader blocked on the FIFO go (it sees an empty file), so that no thread stays stuck after the test."""
    with contextlib.suppress(OSError):  # ENXIO: nobody is reading it, as it should be
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths os.open opens for reading from here on."""
    paths: list[str] = []
    real_open = os.open

    def spy(path, flags, *args, **kwargs):
        if not flags & (os.O_WRONLY | os.O_RDWR):
            paths.append(os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    return paths


def make_fifo(path: Path) -> None:
    os.mkfifo(path)


def make_fifo_link(path: Path) -> None:
    os.mkfifo(path.with_name("pipe"))
    path.symlink_to(path.with_name("pipe"))


def make_device_link(path: Path) -> None:
    path.symlink_to("/dev/zero")  # endless: a reader would fill the memory


def make_socket(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))


# how to make each kind of file that is not a regular one, and what its problem calls it
NOT_REGULAR = {
    "FIFO": (make_fifo, "a FIFO"),
    "symlink to a FIFO": (make_fifo_link, "a FIFO"),
    "symlink to a device": (make_device_link, "a character device"),
    "socket": (make_socket, "a socket"),
}
SKIPPED = "not a regular file: skipped, not read. Put a regular JSON file there instead."


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs, devices and sockets in folders are POSIX files")
@pytest.mark.parametrize("kind", NOT_REGULAR)
def test_a_file_that_is_not_regular_is_listed_never_opened(
    kind: str, opened: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    make, called = NOT_REGULAR[kind]
    folder = Path(tempfile.mkdtemp(prefix="models", dir="/tmp"))  # short: a socket's path has at most 107 bytes
    path = folder / "odd.model.json"
    write(folder, "fine.model.json", {"generations": GENERATIONS})
    make(path)
    try:
        catalogue = catalogue_within([folder], 1.0)
        again = catalogue_within([folder], 1.0)
    finally:
        release_readers(path)
        shutil.rmtree(folder)
    assert catalogue.problems == again.problems == {"odd.model.json": f"odd.model.json: {called}, {SKIPPED}"}
    assert sorted(catalogue.models) == ["fine"]
    assert not [name for name in opened if name.endswith(("odd.model.json", "pipe"))]
    warnings = [record for record in caplog.records if "odd.model.json" in record.getMessage()]
    assert [record.levelname for record in warnings] == ["WARNING"]  # once, not once per request


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX files")
def test_a_fifo_workflow_beside_a_description_is_named_never_opened(tmp_path: Path, opened: list[str]) -> None:
    os.mkfifo(tmp_path / "graph.api.json")
    write(tmp_path, "uses.model.json", {"generations": {**GENERATIONS, "workflow": "graph.api.json"}})
    try:
        catalogue = catalogue_within([tmp_path], 1.0)
    finally:
        release_readers(tmp_path / "graph.api.json")
    assert catalogue.problems["uses.model.json"].startswith("graph.api.json: a FIFO, not a regular file: skipped")
    assert not [name for name in opened if name.endswith("graph.api.json")]


def test_a_huge_description_is_skipped_unread(tmp_path: Path, opened: list[str]) -> None:
    huge = tmp_path / "huge.model.json"
    with huge.open("wb") as file:
        file.truncate(2**30)  # 1 GiB, sparse: no disk used, but a reader would go through all of it
    write(tmp_path, "fine.model.json", {"generations": GENERATIONS})
    catalogue = catalogue_within([tmp_path], 1.0)
    assert catalogue.problems == {
        "huge.model.json": f"huge.model.json: {2**30} bytes, over the {MAX_DESCRIPTION_BYTES // 1024} KB such a file "
        "may have: skipped, not read. Put a regular JSON file there instead."
    }
    assert sorted(catalogue.models) == ["fine"] and str(huge) not in opened


def test_a_description_at_the_limit_is_read(tmp_path: Path) -> None:
    text = json.dumps({"description": "", "generations": GENERATIONS})
    padded = text[:-1] + " " * (MAX_DESCRIPTION_BYTES - len(text)) + "}"
    write(tmp_path, "full.model.json", padded)
    write(tmp_path, "over.model.json", padded + " ")
    catalogue = load_catalogue([tmp_path])
    assert sorted(catalogue.models) == ["full"] and "over the 1024 KB" in catalogue.problems["over.model.json"]


def test_each_version_of_a_file_is_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Read again when its modification time or size changes; a deleted one drops out."""
    parsed: list[str] = []
    real_loads = json.loads

    def counting(text, *args, **kwargs):
        parsed.append(text if isinstance(text, str) else text.decode("utf-8"))
        return real_loads(text, *args, **kwargs)

    monkeypatch.setattr(json, "loads", counting)
    path = write(tmp_path, "cached.model.json", {"description": "first", "generations": GENERATIONS})
    reads = lambda: sum('"description": "' in text for text in parsed)  # noqa: E731
    assert [load_catalogue([tmp_path]).get("cached").description for _ in range(3)] == ["first"] * 3
    assert reads() == 1
    write(tmp_path, "cached.model.json", {"description": "other", "generations": GENERATIONS})  # same size
    stamp = path.stat().st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(stamp, stamp))
    assert [load_catalogue([tmp_path]).get("cached").description for _ in range(3)] == ["other"] * 3
    assert reads() == 2
    path.unlink()
    assert "cached" not in load_catalogue([tmp_path]).models


def test_a_cached_workflow_is_not_changed_by_its_users(tmp_path: Path) -> None:
    """Two descriptions set different values on one workflow file, read once: neither sees the other's."""
    write(tmp_path, "a.model.json", {"generations": {**GENERATIONS, "set": {"8": {"filename_prefix": "a"}}}})
    write(tmp_path, "b.model.json", {"generations": {**GENERATIONS, "set": {"8": {"filename_prefix": "b"}}}})
    request = parse("generations", {"prompt": "p"}, False)
    for _ in range(2):
        catalogue = load_catalogue([tmp_path, SHIPPED_MODELS])
        prefixes = {key: catalogue.get(key).variant(request).graph["8"]["inputs"]["filename_prefix"] for key in "ab"}
        assert prefixes == {"a": "a", "b": "b"}
        assert catalogue.get("dall-e-2").variant(request).graph["8"]["inputs"]["filename_prefix"] == "openai/dall-e-2"


# what a model reads: its description's "prompt": {"charset": …}


def test_shipped_charsets(shipped: Catalogue) -> None:
    assert {key: model.charset for key, model in shipped.models.items()} == {
        "dall-e-2": "unicode",
        "dall-e-mega": "ascii",
        "dall-e-mini": "ascii",
        "karlo": "unicode",
    }


@pytest.mark.parametrize("model_id", SHIPPED_IDS)
def test_a_non_english_prompt_is_refused_by_the_models_that_drop_it(shipped: Catalogue, model_id: str) -> None:
    request = parse("generations", {"model": model_id, "prompt": "un renard roux à Zürich", "size": "256x256"}, False)
    if model_id in ("dall-e-2", "karlo"):  # their CLIP tokenizers read any text
        assert "256x256" in shipped.get(model_id).variant(request).sizes
        return
    with pytest.raises(ApiError) as caught:
        shipped.get(model_id).variant(request)
    assert (caught.value.status, caught.value.param, caught.value.code) == (400, "prompt", "unreadable_text")
    assert f"the model '{model_id}' cannot read ('à', 'ü')" in caught.value.message


def test_a_user_model_declares_its_charset(tmp_path: Path) -> None:
    write(tmp_path, "english.model.json", {"prompt": {"charset": "ascii"}, "generations": GENERATIONS})
    write(tmp_path, "any.model.json", {"prompt": {}, "generations": GENERATIONS})
    catalogue = load_catalogue([tmp_path])
    fields = {"prompt": "a fox", "negative_prompt": "наброски"}
    assert catalogue.get("any").variant(parse("generations", fields, False)).inputs == variant_inputs()
    with pytest.raises(ApiError) as caught:
        catalogue.get("english").variant(parse("generations", fields, False))
    assert caught.value.param == "negative_prompt"


def variant_inputs() -> dict:
    return {name: tuple(tuple(target) for target in targets) for name, targets in GENERATIONS["inputs"].items()}


def test_a_read_that_fails_for_a_moment_is_not_remembered(tmp_path: Path, monkeypatch) -> None:
    """An OSError while reading (a full file table, a permission being fixed) names the file, and the next request
    reads it again: only what the file itself holds is cached with its version."""
    from dalle_nodes.openai_api import json_files

    write(tmp_path, "my-model.model.json", {"description": "mine", "generations": GENERATIONS})
    read_regular = json_files._read_regular

    def fails_once(path: str, limit: int) -> bytes:
        monkeypatch.setattr(json_files, "_read_regular", read_regular)
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(json_files, "_read_regular", fails_once)
    first = load_catalogue([tmp_path])
    assert "my-model" not in first.models and "Too many open files" in str(first.problems)
    assert load_catalogue([tmp_path]).get("my-model").description == "mine"


@pytest.mark.parametrize("case", ["a file", "a dangling link", "a link loop"])
def test_a_models_folder_that_cannot_be_listed_makes_the_catalogue_unreadable(tmp_path: Path, case: str) -> None:
    """The user's folder is there but cannot be listed: its models would be missing without a word, so the catalogue
    says so (health answers 503) and names the folder, never its path."""
    folder = tmp_path / "openai-models"
    if case == "a file":
        folder.write_text("not a folder")
    elif case == "a dangling link":
        folder.symlink_to(tmp_path / "unmounted")
    else:
        folder.symlink_to(folder)
    catalogue = load_catalogue([SHIPPED_MODELS, folder])
    assert catalogue.unreadable and set(catalogue.models) == set(SHIPPED_IDS)
    assert catalogue.problems["openai-models/"].startswith("openai-models/: the models folder cannot be listed (")
    assert str(tmp_path) not in catalogue.problems["openai-models/"]


def test_a_missing_models_folder_is_no_problem(tmp_path: Path) -> None:
    catalogue = load_catalogue([SHIPPED_MODELS, tmp_path / "openai-models"])
    assert not catalogue.unreadable and not catalogue.problems and set(catalogue.models) == set(SHIPPED_IDS)
