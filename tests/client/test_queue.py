"""`python -m dalle_nodes queue`, the parts that need no server: reading files, UI → API conversion, --set /
--prompt / --seed targeting, and the errors. The server side runs against a real ComfyUI in tests/comfyui."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from dalle_nodes.cli import main
from dalle_nodes.client import queue_workflow
from dalle_nodes.client.comfy_client import ComfyClient, OutputFile, exception_name
from dalle_nodes.client.workflow_file import read_workflow
from dalle_nodes.client.workflow_graph import (
    WorkflowError,
    check_has_output,
    local_specs,
    set_input,
    set_prompt,
    set_seed,
    ui_to_api,
)
from dalle_nodes.nodes import NODE_CLASS_MAPPINGS
from shipped_workflows import UI_FILES, api_file, load, ui_file

SPECS = local_specs(NODE_CLASS_MAPPINGS)


def text2image() -> dict:
    return load(api_file("kandinsky22_text2image"))


def test_set_targets_a_node_by_id_title_or_type() -> None:
    graph = text2image()
    set_input(graph, "6.steps=30")
    set_input(graph, "DalleDecoderSample.sampler=ddim")  # a class type
    set_input(graph, "Negative prompt.text=ugly, blurry")  # a title; plain text needs no quotes
    set_input(graph, 'Prompt.text="42"')  # JSON: a string that looks like a number
    set_input(graph, "DalleDecoderSample.karras=true")
    decoder = graph["6"]["inputs"]
    assert (decoder["steps"], decoder["sampler"], decoder["karras"]) == (30, "ddim", True)
    assert graph["3"]["inputs"]["text"] == "ugly, blurry" and graph["2"]["inputs"]["text"] == "42"


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("steps=30", "write NODE.INPUT=VALUE"),
        ("DalleDecoderSample.steps", "write NODE.INPUT=VALUE"),
        ("KSampler.steps=30", "no node has the id, title or type 'KSampler'"),
        ("DalleTextEncode.text=x", "names nodes 2, 3; use one node id"),
        ("6.cfg=4", "has no input 'cfg'; it has decoder, image_embeds, width"),
        ("6.decoder=x", "'decoder' is connected to another node"),
    ],
)
def test_set_errors_say_what_to_write(assignment: str, message: str) -> None:
    with pytest.raises(WorkflowError, match=message):
        set_input(text2image(), assignment)


def test_prompt_and_seed_find_our_nodes() -> None:
    graph = text2image()
    assert set_prompt(graph, "a lighthouse") == ["2"]  # the positive prompt only
    assert graph["3"]["inputs"]["text"] == "blurry, low quality"
    assert sorted(set_seed(graph, 7)) == ["4", "6"]
    assert graph["4"]["inputs"]["seed"] == graph["6"]["inputs"]["seed"] == 7

    mega = load(api_file("dalle_mega_text2image_upscaled"))
    assert set_prompt(mega, "a cat") == ["2"] and set_seed(mega, 3) == ["2"]
    assert mega["2"]["inputs"]["text"] == "a cat" and mega["2"]["inputs"]["seed"] == 3


def test_prompt_and_seed_need_our_nodes() -> None:
    graph = {"1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}}}
    with pytest.raises(WorkflowError, match="no DALL·E prompt"):
        set_prompt(graph, "x")
    with pytest.raises(WorkflowError, match="no DALL·E sampler"):
        set_seed(graph, 1)


def test_output_node_is_required() -> None:
    graph = text2image()
    check_has_output(graph, SPECS)
    del graph["8"]
    with pytest.raises(WorkflowError, match="no output node"):
        check_has_output(graph, SPECS)


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_ui_files_convert(path: Path) -> None:
    graph = ui_to_api(load(path), SPECS)
    check_has_output(graph, SPECS)


def ui_text2image() -> dict:
    return load(ui_file("kandinsky22_text2image"))


def test_conversion_follows_reroutes_primitives_and_bypassed_nodes() -> None:
    ui = ui_text2image()
    nodes = {node["id"]: node for node in ui["nodes"]}
    # A reroute on the prior → decoder link (link 6: node 4 slot 0 → node 6 slot 1).
    ui["nodes"].append({"id": 20, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": 6}]})
    ui["links"] = [ln for ln in ui["links"] if ln[0] != 6] + [
        [6, 4, 0, 20, 0, "DALLE_IMAGE_EMBEDS"],
        [30, 20, 0, 6, 1, "DALLE_IMAGE_EMBEDS"],
    ]
    nodes[6]["inputs"][1]["link"] = 30
    # A primitive node driving the decoder's steps widget.
    ui["nodes"].append({"id": 21, "type": "PrimitiveNode", "mode": 0, "widgets_values": [12, "fixed"]})
    ui["links"].append([31, 21, 0, 6, 4, "INT"])
    steps = next(socket for socket in nodes[6]["inputs"] if socket["name"] == "steps")
    steps["link"] = 31
    # The negative prompt muted: the prior then runs without it.
    nodes[3]["mode"] = 2
    graph = ui_to_api(ui, SPECS)
    assert graph["6"]["inputs"]["image_embeds"] == ["4", 0]
    assert graph["6"]["inputs"]["steps"] == 12
    assert "3" not in graph and "negative" not in graph["4"]["inputs"]

    nodes[3]["mode"] = 0
    nodes[7]["mode"] = 4  # bypass VQ decode: nothing of its input type feeds Save Image, so the link is dropped
    assert "images" not in ui_to_api(ui, SPECS)["8"]["inputs"]


def test_conversion_refuses_a_link_to_nowhere() -> None:
    ui = ui_text2image()
    next(link for link in ui["links"] if link[0] == 6)[1] = 999  # the prior's output link now starts nowhere
    with pytest.raises(WorkflowError, match="Link 6 of the workflow leads to no node"):
        ui_to_api(ui, SPECS)


def test_conversion_names_nodes_it_does_not_know() -> None:
    ui = ui_text2image()
    ui["nodes"].append({"id": 40, "type": "SomeoneElsesNode", "mode": 0, "inputs": [], "widgets_values": []})
    with pytest.raises(WorkflowError, match=r"cannot convert: SomeoneElsesNode \(node 40\).*Export \(API\)"):
        ui_to_api(ui, SPECS)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("{not json", "is not valid JSON \\(line 1"),
        ('{"1": {"inputs": {}}}', "neither a UI-format workflow nor an API-format graph"),
        ("[]", "neither a UI-format workflow nor an API-format graph"),
    ],
)
def test_unreadable_files(tmp_path, content, message) -> None:
    path = tmp_path / "workflow.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(WorkflowError, match=message):
        read_workflow(path)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # free once closed: nothing listens there


BAD_SERVERS = {  # --server: what the message says about it
    "http://127.0.0.1:99999": "is not a URL like http://127.0.0.1:8188 (Port out of range 0-65535)",
    "http://127.0.0.1:abc": "(Port could not be cast to integer value as 'abc')",
    "http://127.0.0.1:0": "a port from 1 to 65535",
    "http://[::1": "(Invalid IPv6 URL)",
    "http://local host:8188": "(it holds spaces or control characters)",
    "http://127.0.0.1:8188\n": "(it holds spaces or control characters)",
    "http://:8188": "(write http:// or https://, then the host)",
    "http://127.0.0.1:8188/?client=me": "without ?query, #fragment or user@",
    "http://127.0.0.1:8188/#top": "without ?query, #fragment or user@",
    "http://me:secret@127.0.0.1:8188": "(give the host and port only, without user@",
    "http://me:sec/ret@127.0.0.1:8188": "without user@: ComfyUI takes no credentials",  # no port 'sec' in the text
    f"http://{'a' * 64}.example:8188": "label empty or too long",
}


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("missing", [], "does not exist"),
        ("invalid", [], "is not valid JSON"),
        ("text2image", ["--set", "Nothing.steps=3"], "no node has the id, title or type 'Nothing'"),
        ("no output", [], "no output node"),
        ("text2image", [], "cannot be reached"),
        ("text2image", ["--server", "localhost:8188"], "is not a URL like http://127.0.0.1:8188"),
        *[("text2image", ["--server", server], message) for server, message in BAD_SERVERS.items()],
    ],
)
def test_queue_bad_input_is_one_line_and_exit_2(tmp_path, capsys, setup, args, message) -> None:
    path = tmp_path / "workflow.json"
    graph = text2image()
    if setup == "invalid":
        path.write_text("{")
    elif setup == "no output":
        del graph["8"]
    if setup in ("text2image", "no output"):
        path.write_text(json.dumps(graph))
    out = tmp_path / "out"
    server = ["--server", f"http://127.0.0.1:{closed_port()}"] if "--server" not in args else []
    code = main(["queue", str(path), "--out", str(out), *server, *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err
    assert not any(word in err for word in ("secret", "sec/ret", "'sec'")), err  # a password is never echoed
    assert not out.exists()  # nothing half-written


def test_ui_file_with_unknown_nodes_and_no_server(tmp_path, capsys) -> None:
    ui = copy.deepcopy(ui_text2image())
    ui["nodes"].append({"id": 40, "type": "SomeoneElsesNode", "mode": 0, "inputs": [], "widgets_values": []})
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(ui))
    code = main(["queue", str(path), "--server", f"http://127.0.0.1:{closed_port()}"])
    assert code == 2 and "cannot be reached" in capsys.readouterr().err


def test_timeout_is_exit_1(tmp_path, capsys, monkeypatch) -> None:
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(text2image()))

    def never_finishes(graph, client):
        raise TimeoutError("timed out")

    monkeypatch.setattr(queue_workflow, "run", never_finishes)
    code = main(["queue", str(path), "--timeout", "5"])
    assert code == 1 and "did not finish within 5 s" in capsys.readouterr().err


class Events:
    """A websocket that hands over ComfyUI's events for one prompt, as JSON text like the server sends them."""

    def __init__(self, *events: dict):
        self.messages = [json.dumps(event) for event in events]

    def __enter__(self) -> Events:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def recv(self, timeout: float | None = None) -> str:
        return self.messages.pop(0)


def node_failure(prompt_id: str, exception_type: str, message: str) -> dict:
    """An execution_error event as ComfyUI's PromptExecutor sends it (execution.py, handle_execution_error)."""
    return {
        "type": "execution_error",
        "data": {
            "prompt_id": prompt_id,
            "node_id": "5",
            "node_type": "DalleLoadDecoder",
            "executed": ["1", "2", "3"],
            "exception_message": f"{message}\n",  # ComfyUI appends its tips, empty here, after a newline
            "exception_type": exception_type,
            "traceback": ['  File "/ComfyUI/execution.py", line 300, in execute\n'],
            "current_inputs": {"repo_id": ["someone/not-downloaded"]},
            "current_outputs": ["1", "2", "3"],
            "timestamp": 1767225600000,
        },
    }


# ComfyUI names the type module.QualifiedName; a custom node's module is its install folder, dots written as _x_.
MANGLED = "/home/me/ComfyUI_x_0/custom_nodes/dalle-nodes.engine.hub.NotDownloaded"


def test_node_failure_names_the_exception_class_only(tmp_path, capsys, monkeypatch) -> None:
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(text2image()))
    message = "'unet/config.json' of someone/not-downloaded is not downloaded yet"
    events = Events(
        {"type": "execution_start", "data": {"prompt_id": "p1", "timestamp": 1767225600000}},
        {"type": "executing", "data": {"node": "5", "display_node": "5", "prompt_id": "p1"}},
        node_failure("p1", MANGLED, message),
    )
    monkeypatch.setattr(ComfyClient, "listen", lambda self: events)
    monkeypatch.setattr(ComfyClient, "queue", lambda self, graph: "p1")
    code = main(["queue", str(path), "--server", "http://127.0.0.1:8188", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1
    assert f"error: node 5 (DalleLoadDecoder) failed: NotDownloaded: {message}\n" in err, err
    assert "custom_nodes" not in err and "_x_" not in err


@pytest.mark.parametrize(
    ("exception_type", "name"),
    [
        (MANGLED, "NotDownloaded"),
        ("C:\\ComfyUI_x_1\\custom_nodes\\dalle-nodes.engine.hub.MissingFile", "MissingFile"),
        ("ValueError", "ValueError"),  # builtins come bare
        ("torch.OutOfMemoryError", "OutOfMemoryError"),
        ("comfy.model_management.InterruptProcessingException", "InterruptProcessingException"),
        ("", "error"),
        (None, "error"),
    ],
)
def test_exception_name(exception_type: str | None, name: str) -> None:
    assert exception_name(exception_type) == name


class Images:
    """What save() asks of the client: the bytes of each output file."""

    def download(self, files: list[OutputFile]) -> list[bytes]:
        return [file.filename.encode() for file in files]


def test_saved_names_stay_in_the_folder_and_never_overwrite(tmp_path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"mine")
    files = [OutputFile("9", name, "", "output") for name in ("a.png", "../../escape.png", "sub/b.png")]
    paths = queue_workflow.save(files, Images(), folder)
    assert [p.name for p in paths] == ["a_1.png", "escape.png", "b.png"]
    assert all(p.parent == folder for p in paths) and (folder / "a.png").read_bytes() == b"mine"
    assert not list(tmp_path.glob("escape.png")) and not list(folder.glob(".*.partial"))


def test_seed_wired_from_another_node_is_left_alone() -> None:
    graph = text2image()
    graph["6"]["inputs"]["seed"] = ["99", 0]
    assert set_seed(graph, 5) == ["4"] and graph["6"]["inputs"]["seed"] == ["99", 0]


def reroute_loop(ui: dict) -> None:
    """Two reroutes feeding each other, one of them the decoder's image_embeds."""
    ui["nodes"] += [
        {"id": 20, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": 30}]},
        {"id": 21, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": 31}]},
    ]
    ui["links"] += [[30, 21, 0, 20, 0, "*"], [31, 20, 0, 21, 0, "*"], [32, 20, 0, 6, 1, "DALLE_IMAGE_EMBEDS"]]
    next(node for node in ui["nodes"] if node["id"] == 6)["inputs"][1]["link"] = 32


def empty_primitive(ui: dict) -> None:
    ui["nodes"].append({"id": 21, "type": "PrimitiveNode", "mode": 0, "widgets_values": []})
    ui["links"].append([31, 21, 0, 6, 5, "INT"])
    next(node for node in ui["nodes"] if node["id"] == 6)["inputs"][5]["link"] = 31


def ui_node(key: str, value: object) -> Callable[[dict], None]:
    return lambda ui: ui["nodes"][0].__setitem__(key, value)


DAMAGED_UI = {
    "node without a type": (lambda ui: ui["nodes"][0].pop("type"), "json': a node ({'id': 1, 'pos': [40, 160]"),
    "node that is a list": (lambda ui: ui["nodes"].append([1, 2]), "a node ([1, 2]) has no id or no type"),
    "inputs an object": (ui_node("inputs", {}), "a node 1 (DalleLoadPrior) has inputs that are not [{name, type"),
    "input link text": (ui_node("inputs", [{"name": "x", "link": [1]}]), "has inputs that are not [{name, type, link}"),
    "widgets_values text": (ui_node("widgets_values", "x"), "has widgets_values that are neither a list nor"),
    "link an object": (lambda ui: ui["links"].append({"id": 40}), "the link {'id': 40} is not [id, from node, slot"),
    "link too short": (lambda ui: ui["links"].append([40, 1]), "the link [40, 1] is not [id, from node, slot"),
    "definitions a list": (lambda ui: ui.__setitem__("definitions", []), "definitions is not an object"),
    "reroutes in a loop": (reroute_loop, "Link 32 of the workflow runs in a loop through reroutes"),
    "primitive without a value": (empty_primitive, "Primitive node 21 of the workflow holds no value"),
}


@pytest.mark.parametrize(("damage", "message"), DAMAGED_UI.values(), ids=DAMAGED_UI.keys())
def test_damaged_ui_files_are_one_line_and_exit_2(tmp_path, capsys, damage, message) -> None:
    ui = ui_text2image()
    damage(ui)
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(ui))
    assert main(["queue", str(path), "--server", f"http://127.0.0.1:{closed_port()}"]) == 2
    assert message in one_line_error(capsys)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def api_text(change: Callable[[dict], None]) -> str:
    graph = text2image()
    change(graph)
    return json.dumps(graph)


DAMAGED_FILES = {  # id: (the file's text, extra arguments, the message)
    "arrays nested 100 000 deep": (nested(100_000), [], "holds JSON too large to read (huge numbers or deep"),
    "an input nested 100 000 deep": (  # beyond any recursion limit, whatever the stack holds already
        api_text(lambda graph: graph["6"]["inputs"].__setitem__("steps", "NESTED")).replace(
            '"NESTED"', nested(100_000)
        ),
        [],
        "holds JSON too large to read",
    ),
    "an input nested 100 deep": (
        api_text(lambda graph: graph["6"]["inputs"].__setitem__("steps", "NESTED")).replace('"NESTED"', nested(100)),
        [],
        "nests arrays or objects more than 64 deep: no workflow does.",
    ),
    "a number of 5000 digits": ('{"1": ' + "1" * 5000 + "}", [], "holds JSON too large to read"),
    "not UTF-8": ('{"1": "caf\xe9"}'.encode("latin-1"), [], "is not UTF-8 text (byte 10)"),
    "node without inputs": (api_text(lambda graph: graph["6"].pop("inputs")), [], "node 6 (DalleDecoderSample) has no"),
    "node without inputs, --set": (
        api_text(lambda graph: graph["6"].pop("inputs")),
        ["--set", "6.steps=3"],
        "inputs object",
    ),
    "node without inputs, --seed": (api_text(lambda graph: graph["4"].pop("inputs")), ["--seed", "3"], "has no inputs"),
    "inputs a list": (api_text(lambda graph: graph["6"].__setitem__("inputs", [])), [], "has no inputs object"),
    "class_type a list": (
        api_text(lambda graph: graph["6"].__setitem__("class_type", ["x"])),
        [],
        "node 6 has a class_type that is not a node type's name",
    ),
    "_meta text": (api_text(lambda graph: graph["6"].__setitem__("_meta", "x")), [], 'has a _meta that is not {"title'),
    "an empty positive link, --prompt": (
        api_text(lambda graph: graph["4"]["inputs"].__setitem__("positive", [])),
        ["--prompt", "a fox"],
        "--prompt: the workflow has no DALL·E prompt",
    ),
    "--set a number of 5000 digits": (
        api_text(lambda graph: None),
        ["--set", "6.steps=" + "1" * 5000],
        "--set: VALUE is JSON too large to read",
    ),
    "--set nested 100 000 deep": (
        api_text(lambda graph: None),
        ["--set", "6.steps=" + nested(100_000)],
        "--set: VALUE is JSON too large to read",
    ),
    "--set nested 100 deep": (
        api_text(lambda graph: None),
        ["--set", "6.steps=" + nested(100)],
        "--set's VALUE nests arrays or objects more than 64 deep",
    ),
    "over 32 MiB": (api_text(lambda graph: None) + " " * 32 * 2**20, [], "is over 32 MiB: that is no workflow."),
}


@pytest.mark.parametrize(("content", "args", "message"), DAMAGED_FILES.values(), ids=DAMAGED_FILES.keys())
def test_damaged_files_are_one_line_and_exit_2(tmp_path, capsys, content, args, message) -> None:
    path = tmp_path / "workflow.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main(["queue", str(path), "--server", f"http://127.0.0.1:{closed_port()}", *args]) == 2
    assert message in one_line_error(capsys)


def test_folders_and_link_loops_are_no_workflow(tmp_path, capsys) -> None:
    (tmp_path / "loop.json").symlink_to(tmp_path / "loop.json")
    for name, message in [("loop.json", "cannot be read (Too many levels of symbolic links)."), ("", "is a folder")]:
        assert main(["queue", str(tmp_path / name), "--server", f"http://127.0.0.1:{closed_port()}"]) == 2
        assert f"Workflow file '{tmp_path / name}' {message}" in one_line_error(capsys)


def fifo(folder: Path) -> Path:
    os.mkfifo(folder / "workflow.json")  # no writer: opening it to read would wait for one forever
    return folder / "workflow.json"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (fifo, "is a FIFO (named pipe), not a file: save the workflow to a .json file."),
        (
            lambda folder: Path("/dev/zero"),
            "is a device, not a file: save the workflow to a .json file.",
        ),  # endless: reading it would never stop
    ],
    ids=["FIFO", "/dev/zero"],
)
def test_fifos_and_devices_are_refused_at_once(tmp_path, make, message) -> None:
    path = make(tmp_path)
    command = [sys.executable, "-m", "dalle_nodes", "queue", str(path), "--server", "http://127.0.0.1:1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr == f"error: Workflow file '{path}' {message}\n", result.stderr
