"""Workflow files as the queue command reads them: a regular file of bounded size holding JSON of bounded depth, in
the UI format or the API format, with the shapes ComfyUI writes. Anything else is a WorkflowError saying what is
wrong, before the server is asked anything."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..engine.files import NotRegularFile, open_regular
from .workflow_graph import WorkflowError, check_depth, is_ui_format

MAX_BYTES = 32 * 2**20  # far above any real workflow (ours are 5 to 25 kB): a bound on what a mistake costs


def read_workflow(path: Path) -> dict:
    """A workflow file's JSON, or a WorkflowError saying why it cannot be one."""
    workflow = _parse(_read_bytes(path), path)
    if not isinstance(workflow, dict):
        raise WorkflowError(f"'{path}' is neither a UI-format workflow nor an API-format graph.")
    if is_ui_format(workflow):
        _check_ui_shape(workflow, path)
    else:
        _check_api_shape(workflow, path)
    return workflow


def _read_bytes(path: Path) -> bytes:
    """The file's bytes: a regular file only (a FIFO or /dev/zero would block or never end), up to MAX_BYTES."""
    where = f"Workflow file '{path}'"
    try:
        with open_regular(path) as file:
            if os.fstat(file.fileno()).st_size > MAX_BYTES:
                raise WorkflowError(f"{where} is over {MAX_BYTES // 2**20} MiB: that is no workflow.")
            data = file.read(MAX_BYTES + 1)  # it may have grown since
    except FileNotFoundError:
        raise WorkflowError(f"{where} does not exist.") from None
    except IsADirectoryError:
        raise WorkflowError(f"{where} is a folder: give a .json file.") from None
    except NotRegularFile as error:
        raise WorkflowError(f"{where} is {error.kind}, not a file: save the workflow to a .json file.") from None
    except OSError as error:  # no permission, a symbolic-link loop, an I/O error …
        raise WorkflowError(f"{where} cannot be read ({error.strerror or error}).") from None
    if len(data) > MAX_BYTES:
        raise WorkflowError(f"{where} is over {MAX_BYTES // 2**20} MiB: that is no workflow.")
    return data


def _parse(data: bytes, path: Path) -> object:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise WorkflowError(f"'{path}' is not UTF-8 text (byte {error.start}): is it a workflow file?") from None
    try:
        workflow = json.loads(text)
    except json.JSONDecodeError as error:
        raise WorkflowError(f"'{path}' is not valid JSON (line {error.lineno}: {error.msg}).") from None
    except (ValueError, RecursionError):  # a number of thousands of digits; arrays nested a thousand deep
        raise WorkflowError(f"'{path}' holds JSON too large to read (huge numbers or deep nesting).") from None
    check_depth(workflow, f"'{path}'")
    return workflow


def _check_api_shape(graph: dict, path: Path) -> None:
    """Each node {"class_type": text, "inputs": {…}, "_meta": {"title": text}} (_meta optional), as ComfyUI's
    Export (API) writes them."""
    if not graph or not all(isinstance(node, dict) and "class_type" in node for node in graph.values()):
        raise WorkflowError(f"'{path}' is neither a UI-format workflow nor an API-format graph.")
    for node_id, node in graph.items():
        where = f"'{path}': node {_shown(node_id)}"
        if not isinstance(node["class_type"], str) or not node["class_type"]:
            raise WorkflowError(f"{where} has a class_type that is not a node type's name: the file is damaged.")
        if not isinstance(node.get("inputs"), dict):
            raise WorkflowError(
                f'{where} ({_shown(node["class_type"])}) has no inputs object ({{"name": value, …}}): the file is '
                "damaged; export it again (Workflow → Export (API))."
            )
        meta = node.get("_meta", {})
        if not isinstance(meta, dict) or not isinstance(meta.get("title", ""), str):
            raise WorkflowError(f'{where} has a _meta that is not {{"title": text}}: the file is damaged.')


def _check_ui_shape(ui: dict, path: Path) -> None:
    """The parts of a UI-format file the conversion reads, in the shapes the frontend saves."""
    for node in ui["nodes"]:
        problem = _ui_node_problem(node)
        if problem:
            raise WorkflowError(f"'{path}': a node {problem}: the file is damaged; save it again from ComfyUI.")
    for link in ui["links"]:
        if not (isinstance(link, list) and len(link) == 6 and all(_is_id(part) for part in link[:5])):
            raise WorkflowError(
                f"'{path}': the link {_shown(link)} is not [id, from node, slot, to node, slot, type]: save the file "
                "again from ComfyUI, or export it in API format (Workflow → Export (API))."
            )
    if not isinstance(ui.get("definitions", {}), dict):
        raise WorkflowError(f"'{path}': definitions is not an object: the file is damaged.")


def _ui_node_problem(node: object) -> str | None:
    """What is wrong with one node of a UI-format file, or None."""
    if not isinstance(node, dict) or not _is_id(node.get("id")) or not isinstance(node.get("type"), str):
        return f"({_shown(node)}) has no id or no type"
    sockets = node.get("inputs", [])
    if not isinstance(sockets, list) or not all(
        isinstance(s, dict) and isinstance(s.get("name"), str) and (s.get("link") is None or _is_id(s["link"]))
        for s in sockets
    ):
        return f"{node['id']} ({_shown(node['type'])}) has inputs that are not [{{name, type, link}}, …]"
    if not isinstance(node.get("widgets_values", []), list | dict):
        return f"{node['id']} ({_shown(node['type'])}) has widgets_values that are neither a list nor an object"
    return None


def _is_id(value: object) -> bool:
    """A node, link or slot id as the frontend writes them: an int, or a str (newer frontends' node ids)."""
    return isinstance(value, int | str) and not isinstance(value, bool)


def _shown(value: object) -> str:
    """A value from the file, in one short line (repr escapes control characters)."""
    text = value if isinstance(value, str) and value.isprintable() else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
