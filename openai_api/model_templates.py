"""Models are workflows: a model's description file names, for each endpoint, an API-format workflow and which of
its node inputs each request field fills. Shipped descriptions live in openai_api/models/; users add their own (or
replace a shipped one) in a folder under ComfyUI's user directory. Everything here is plain Python: loading,
checking, choosing the workflow for a request, and filling it in.

A description, `<model id>.model.json`:

    {"description": "…",
     "sizes": ["256x256", "512x512", "1024x1024"],            optional: these three by default
     "generations": {"workflow": "kandinsky22_text2image.api.json",
                     "inputs": {"prompt": [["2", "text"]], "seed": [["4", "seed"], ["6", "seed"]], …},
                     "set": {"8": {"filename_prefix": "openai/dall-e-2"}}},      optional fixed values
     "edits": …, "variations": …}

An endpoint may instead hold a list of such entries, each with its own "sizes": the first that lists the request's
size runs (e.g. 256 px as sampled, larger sizes through an upscaler). A workflow file is looked up beside the
description, then among the shipped API workflows (workflows/api/). `"prompt": {"charset": "ascii"}` says the model
reads English alone (requests.check_charset refuses other letters); "unicode" is the default. `"prompt": {"translate":
"auto"}` (or a translation model's repo id) puts the DALL·E Translate Prompt node before the workflow's prompt inputs
(prompt_translation.py): prompts in Chinese are translated to English, and the charset check lets letters of
non-Latin scripts through (accented Latin letters, which are not translated, are still refused).

The files are read as the server reads them, from any thread but never waiting on one: regular files only (a FIFO or
a device would block the reader or never end), of bounded size, each parsed once per version (path, modification
time, size, inode) and taken from the cache after that.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import prompt_translation
from .errors import ApiError, bad_request
from .requests import CHARSETS, ENDPOINTS, ImageRequest, check_charset

SHIPPED_MODELS = Path(__file__).resolve().parent / "models"
SHIPPED_WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows" / "api"
SUFFIX = ".model.json"
DEFAULT_SIZES = ("256x256", "512x512", "1024x1024")
# What a request can fill. "image" and "mask" receive the same uploaded file's name: an RGBA PNG whose alpha marks
# what to repaint (Load Image's MASK output, or Load Image (as Mask) on its alpha channel).
INPUT_NAMES = ("prompt", "negative", "seed", "width", "height", "n", "image", "mask")
REQUIRED = {"generations": {"prompt"}, "edits": {"prompt", "image"}, "variations": {"image"}}
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\.json")
_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_SIZE = re.compile(r"[1-9][0-9]{0,4}x[1-9][0-9]{0,4}")
MAX_DESCRIPTION_BYTES = 1024 * 1024  # a description is a few KB
MAX_WORKFLOW_BYTES = 8 * 1024 * 1024  # an API workflow is tens of KB; room for literal values such as embedded text
# O_NONBLOCK: a FIFO put in a file's place between its stat and its opening still opens at once (POSIX); O_BINARY:
# Windows would otherwise translate line ends and stop at a Ctrl-Z
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
_FILE_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a folder",
}
log = logging.getLogger("dalle_nodes.openai_api")


class ModelError(ValueError):
    """A description or workflow file that cannot serve: the message names the file and what to change."""


@dataclass(frozen=True)
class Variant:
    """One workflow of a model's endpoint: the graph (with the description's fixed values set), what the request
    fills in it, the sizes it makes, and optionally the one node whose images are the answer."""

    graph: dict
    inputs: dict[str, tuple[tuple[str, str], ...]]
    sizes: tuple[str, ...]
    output: str | None = None


@dataclass(frozen=True)
class Model:
    id: str
    description: str
    sizes: tuple[str, ...]
    endpoints: dict[str, tuple[Variant, ...]]
    source: Path
    created: int = 0
    charset: str = "unicode"  # what its prompts may be written in (requests.CHARSETS)
    translate: str | None = None  # the translation model its workflows' prompts pass through, if any

    def variant(self, request: ImageRequest) -> Variant:
        """The workflow for this request, or ApiError 400 naming what the model does not do (or cannot read)."""
        variants = self.endpoints.get(request.endpoint)
        if not variants:
            served = ", ".join(sorted(self.endpoints)) or "nothing"
            raise bad_request(
                f"The model '{self.id}' does not serve images/{request.endpoint} (it serves {served}).", "model"
            )
        check_charset(request, self.charset, self.id, translated=self.translate is not None)
        for variant in variants:
            if request.size in variant.sizes:
                return variant
        sizes = ", ".join(dict.fromkeys(size for variant in variants for size in variant.sizes))
        raise bad_request(f"size '{request.size}' is not one of {sizes} for the model '{self.id}'.", "size")


@dataclass
class Catalogue:
    """Every model that loaded, by id, and each description that did not, by file name."""

    models: dict[str, Model] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    unreadable: bool = False  # a models folder is there but cannot be listed

    def get(self, model_id: str) -> Model:
        if model_id in self.models:
            return self.models[model_id]
        problem = self.problems.get(model_id + SUFFIX)
        if problem is not None:
            raise ApiError(500, f"The model '{model_id}' cannot run: {problem}", "model")
        known = ", ".join(sorted(self.models)) or "none"
        raise ApiError(
            404, f"The model '{model_id}' does not exist (models here: {known}).", "model", "model_not_found"
        )


def load_catalogue(folders: Iterable[Path]) -> Catalogue:
    """The descriptions in each folder (later folders replace earlier ones' models of the same id); a broken one is
    listed among the problems instead of stopping the rest."""
    catalogue = Catalogue()
    for folder in folders:
        for path in _descriptions(folder, catalogue):
            try:
                model = load_model(path)
            except ModelError as error:
                catalogue.problems[path.name] = str(error)
                catalogue.models.pop(path.name.removesuffix(SUFFIX), None)
                continue
            catalogue.problems.pop(path.name, None)
            catalogue.models[model.id] = model
    return catalogue


def _descriptions(folder: Path, catalogue: Catalogue) -> list[Path]:
    """The description files in `folder`, by name; none if there is no such folder. A folder that is there but
    cannot be listed (permissions, a file or a dangling link in its place) is a problem, and makes the catalogue
    unreadable: its models would be missing without a word."""
    try:
        names = os.listdir(folder)
    except OSError as error:
        if isinstance(error, FileNotFoundError) and not os.path.lexists(folder):
            return []
        reason = error.strerror or type(error).__name__
        catalogue.problems[f"{folder.name}/"] = f"{folder.name}/: the models folder cannot be listed ({reason})."
        catalogue.unreadable = True
        return []
    return [folder / name for name in sorted(names) if name.endswith(SUFFIX) and not name.startswith(".")]


def load_model(path: Path) -> Model:
    model_id = path.name.removesuffix(SUFFIX)
    if not _MODEL_ID.fullmatch(model_id):
        raise ModelError(
            f"{path.name}: a model id is letters, digits and _ . : - (up to 64), starting with one of the first two."
        )
    spec, modified = _read_json(path, MAX_DESCRIPTION_BYTES)
    if not isinstance(spec, dict):
        raise ModelError(f"{path.name}: a description is a JSON object.")
    unknown = set(spec) - {"description", "sizes", "prompt", *ENDPOINTS}
    if unknown:
        raise ModelError(
            f"{path.name}: unknown keys {sorted(unknown)}; a description has description, sizes, prompt, "
            f"{', '.join(ENDPOINTS)}."
        )
    sizes = _sizes(spec.get("sizes", list(DEFAULT_SIZES)), path.name)
    endpoints = {
        endpoint: tuple(
            _variant(entry, path, sizes, endpoint) for entry in _entries(spec[endpoint], path.name, endpoint)
        )
        for endpoint in ENDPOINTS
        if endpoint in spec
    }
    if not endpoints:
        raise ModelError(f"{path.name}: it serves no endpoint: add generations, edits or variations.")
    description = spec.get("description", "")
    if not isinstance(description, str):
        raise ModelError(f"{path.name}: description is a string.")
    charset, translate = _prompt_settings(spec.get("prompt", {}), path.name)
    if translate is not None:
        endpoints = {name: tuple(_translated(v, translate) for v in variants) for name, variants in endpoints.items()}
    return Model(model_id, description, sizes, endpoints, path, modified, charset, translate)


def _translated(variant: Variant, model: str) -> Variant:
    graph, inputs = prompt_translation.with_translation(variant.graph, variant.inputs, model)
    return replace(variant, graph=graph, inputs=inputs)


def fill(variant: Variant, values: dict[str, object]) -> dict:
    """A copy of the variant's graph with each value written into every node input the description binds it to."""
    graph = copy.deepcopy(variant.graph)
    for name, value in values.items():
        for node, input_name in variant.inputs.get(name, ()):
            graph[node]["inputs"][input_name] = value
    return graph


def check_fits(request: ImageRequest, variant: Variant) -> None:
    """A field the variant's workflow cannot take → ApiError 400."""
    if request.negative_prompt is not None and "negative" not in variant.inputs:
        raise bad_request("negative_prompt is not taken by this model's workflow: leave it out.", "negative_prompt")
    if request.seed is not None and "seed" not in variant.inputs:
        raise bad_request("seed is not taken by this model's workflow (its seed is fixed): leave it out.", "seed")
    if request.n > 1 and "n" not in variant.inputs:
        raise bad_request("This model's workflow makes one image per request: n must be 1.", "n")


def request_values(request: ImageRequest, variant: Variant, seed: int, upload: str | None) -> dict[str, object]:
    """What the request fills, by input name (check_fits first: a field the workflow cannot take → ApiError 400)."""
    check_fits(request, variant)
    values = {"seed": seed, "width": request.width, "height": request.height, "n": request.n}
    optional = {"prompt": request.prompt, "negative": request.negative_prompt, "image": upload, "mask": upload}
    values.update({name: value for name, value in optional.items() if value is not None})
    return values


def _prompt_settings(value: object, where: str) -> tuple[str, str | None]:
    """The description's prompt: its charset, and the translation model its prompts pass through (or None)."""
    if not (isinstance(value, dict) and set(value) <= {"charset", "translate"}):
        raise ModelError(f'{where}: prompt is an object such as {{"charset": "ascii"}} or {{"translate": "auto"}}.')
    if value.get("charset", "unicode") not in CHARSETS:
        raise ModelError(f'{where}: prompt is {{"charset": "unicode"}} (the default) or {{"charset": "ascii"}}.')
    try:
        return value.get("charset", "unicode"), prompt_translation.translation_model(value.get("translate"))
    except ValueError as error:
        raise ModelError(f"{where}: {error}.") from None


def _read_json(path: Path, limit: int) -> tuple[object, int]:
    """The file's JSON (a copy of the cached one: callers may change it) and its modification time in seconds."""
    try:
        info = os.stat(path)
    except OSError as error:
        raise ModelError(f"{path.name}: cannot be read ({error.strerror or type(error).__name__}).") from None
    version = (info.st_mode, info.st_mtime_ns, info.st_size, info.st_ino)
    try:
        parsed, problem = _parsed(str(path), version, limit)
    except OSError as error:  # not cached: a full file table or a permission put right is not the file's fault
        raise ModelError(f"{path.name}: cannot be read ({error.strerror or type(error).__name__}).") from None
    if problem:
        raise ModelError(problem)
    return copy.deepcopy(parsed), int(info.st_mtime)


@functools.lru_cache(maxsize=128)
def _parsed(path: str, version: tuple[int, int, int, int], limit: int) -> tuple[object, str]:
    """(JSON, "") or (None, the problem) of one version of a file; a file that is not a regular one, or is over
    `limit` bytes, is never read (and the warning is logged once per version)."""
    name = os.path.basename(path)
    mode, _, size, _ = version
    try:
        if not stat.S_ISREG(mode):
            raise ModelError(f"{name}: {_FILE_KINDS.get(stat.S_IFMT(mode), 'not a file')}, not a regular file")
        if size > limit:
            raise ModelError(f"{name}: {size} bytes, over the {limit // 1024} KB such a file may have")
        return json.loads(_read_regular(path, limit).decode("utf-8")), ""
    except ModelError as error:
        log.warning("dalle-nodes: %s: skipped, not read (%s). Put a regular JSON file there instead.", error, path)
        return None, f"{error}: skipped, not read. Put a regular JSON file there instead."
    except (ValueError, RecursionError) as error:  # bad UTF-8 or JSON, too deep, a number too long for Python
        return None, f"{name}: not valid JSON ({str(error)[:200]})."


def _read_regular(path: str, limit: int) -> bytes:
    """A regular file's bytes, opened without blocking (were it swapped for a FIFO since its stat) and checked again
    once open."""
    with open(path, "rb", opener=lambda name, flags: os.open(name, _READ_FLAGS)) as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            raise ModelError(f"{os.path.basename(path)}: not a regular file")
        data = file.read(limit + 1)
    if len(data) > limit:
        raise ModelError(f"{os.path.basename(path)}: over the {limit // 1024} KB such a file may have")
    return data


def _sizes(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(s, str) and _SIZE.fullmatch(s) for s in value):
        raise ModelError(f'{where}: sizes is a list of sizes such as "512x512".')
    return tuple(value)


def _entries(value: object, where: str, endpoint: str) -> list[dict]:
    entries = value if isinstance(value, list) else [value]
    if not entries or not all(isinstance(entry, dict) for entry in entries):
        raise ModelError(f"{where}: {endpoint} is an object (or a list of them) with workflow and inputs.")
    return entries


def _variant(entry: dict, path: Path, model_sizes: tuple[str, ...], endpoint: str) -> Variant:
    where = f"{path.name} ({endpoint})"
    unknown = set(entry) - {"workflow", "inputs", "set", "sizes", "output"}
    if unknown:
        raise ModelError(f"{where}: unknown keys {sorted(unknown)}; an entry has workflow, inputs, set, sizes, output.")
    graph = _workflow(entry.get("workflow"), path.parent, where)
    for node, values in _mapping(entry.get("set", {}), where, "set").items():
        if node not in graph or not isinstance(values, dict):
            raise ModelError(f"{where}: set names node {node!r}, which the workflow does not have (or no inputs).")
        graph[node]["inputs"].update(copy.deepcopy(values))
    inputs = {
        name: _targets(targets, graph, where, name)
        for name, targets in _mapping(entry.get("inputs"), where, "inputs").items()
    }
    unknown = set(inputs) - set(INPUT_NAMES)
    if unknown:
        raise ModelError(
            f"{where}: inputs {sorted(unknown)} are not request fields; they are {', '.join(INPUT_NAMES)}."
        )
    missing = REQUIRED[endpoint] - set(inputs)
    if missing:
        raise ModelError(f"{where}: inputs must bind {sorted(missing)}.")
    sizes = _sizes(entry["sizes"], where) if "sizes" in entry else model_sizes
    output = entry.get("output")
    if output is not None and output not in graph:
        raise ModelError(f"{where}: output names node {output!r}, which the workflow does not have.")
    return Variant(graph, inputs, sizes, output)


def _mapping(value: object, where: str, key: str) -> dict:
    if not isinstance(value, dict):
        raise ModelError(f"{where}: {key} is a JSON object.")
    return value


def _workflow(name: object, folder: Path, where: str) -> dict:
    """The API-format workflow a description names: a plain file name, beside it or among the shipped ones."""
    if not isinstance(name, str) or not _FILE_NAME.fullmatch(name) or ".." in name:
        raise ModelError(f'{where}: workflow is a file name such as "my_graph.api.json" (no folders).')
    for candidate in (folder / name, SHIPPED_WORKFLOWS / name):
        if os.path.lexists(candidate):
            graph = _read_json(candidate, MAX_WORKFLOW_BYTES)[0]
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


def _targets(value: object, graph: dict, where: str, name: str) -> tuple[tuple[str, str], ...]:
    """[[node id, input name], …] of one request field, each an input the graph has and no link."""
    if not isinstance(value, list) or not value:
        raise ModelError(f"{where}: inputs.{name} is a list of [node id, input name] pairs.")
    targets = []
    for target in value:
        if not (isinstance(target, list) and len(target) == 2 and all(isinstance(part, str) for part in target)):
            raise ModelError(f"{where}: inputs.{name} has {target!r}, not a [node id, input name] pair.")
        node, input_name = target
        if node not in graph:
            raise ModelError(f"{where}: inputs.{name} names node {node!r}, which the workflow does not have.")
        current = graph[node]["inputs"].get(input_name)
        if input_name not in graph[node]["inputs"] or isinstance(current, list):
            kind = graph[node]["class_type"]
            problem = "is a link" if isinstance(current, list) else "is not among its inputs"
            raise ModelError(f"{where}: inputs.{name}: {input_name} of node {node} ({kind}) {problem}.")
        targets.append((node, input_name))
    return tuple(targets)
