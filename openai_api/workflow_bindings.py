"""An API workflow a model description names, and the node inputs the description binds in it: each binding names
an input the workflow's node has, and no link (a request's value would cut the graph)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .json_files import MAX_WORKFLOW_BYTES, ModelError, read_json

SHIPPED_WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows" / "api"
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\.json")


def settings_table(table: dict, names: tuple[str, ...], graph: dict, where: str) -> dict[str, dict]:
    """{name: {node: {input: value}}} of quality levels or styles, each input one the graph has and no link."""
    for name, values in table.items():
        if name not in names:
            raise ModelError(f"{where}: {name!r} is not one of {', '.join(names)}.")
        for node, inputs in mapping(values, where, name).items():
            for input_name in mapping(inputs, where, f"{name}.{node}"):
                bound_input([node, input_name], graph, f"{where}.{name}")
    return table


def mapping(value: object, where: str, key: str) -> dict:
    if not isinstance(value, dict):
        raise ModelError(f"{where}: {key} is a JSON object.")
    return value


def workflow(name: object, folder: Path, where: str) -> dict:
    """The API-format workflow a description names: a plain file name, beside it or among the shipped ones."""
    if not isinstance(name, str) or not _FILE_NAME.fullmatch(name) or ".." in name:
        raise ModelError(f'{where}: workflow is a file name such as "my_graph.api.json" (no folders).')
    for candidate in (folder / name, SHIPPED_WORKFLOWS / name):
        if os.path.lexists(candidate):
            graph = read_json(candidate, MAX_WORKFLOW_BYTES)[0]
            break
    else:
        raise ModelError(f"{where}: the workflow {name} is neither beside the description nor shipped.")
    if isinstance(graph, dict) and isinstance(graph.get("nodes"), list):
        raise ModelError(f"{where}: {name} is a canvas (UI) file: save the graph with Export (API) instead.")
    good = (
        isinstance(graph, dict)
        and graph
        and all(
            isinstance(node, dict) and isinstance(node.get("class_type"), str) and isinstance(node.get("inputs"), dict)
            for node in graph.values()
        )
    )
    if not good:
        raise ModelError(f"{where}: {name} is not an API-format workflow (node id → class_type and inputs).")
    return graph


def targets(value: object, graph: dict, where: str, name: str) -> tuple[tuple[str, str], ...]:
    """[[node id, input name], …] of one request field, each an input the graph has and no link."""
    if not isinstance(value, list) or not value:
        raise ModelError(f"{where}: inputs.{name} is a list of [node id, input name] pairs.")
    return tuple(bound_input(pair, graph, f"{where}: inputs.{name}") for pair in value)


def bound_input(pair: object, graph: dict, where: str) -> tuple[str, str]:
    """One [node id, input name] pair: an input the graph has, and no link."""
    if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(part, str) for part in pair)):
        raise ModelError(f"{where} has {pair!r}, not a [node id, input name] pair.")
    node, input_name = pair
    if node not in graph:
        raise ModelError(f"{where} names node {node!r}, which the workflow does not have.")
    current = graph[node]["inputs"].get(input_name)
    if input_name not in graph[node]["inputs"] or isinstance(current, list):
        kind = graph[node]["class_type"]
        problem = "is a link" if isinstance(current, list) else "is not among its inputs"
        raise ModelError(f"{where}: {input_name} of node {node} ({kind}) {problem}.")
    return node, input_name
