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

The fields of today's clients (image_options.py) map through more keys. An entry's `"quality": {"auto": "medium",
"low": {"6": {"steps": 20}}, "medium": {}, "high": {"6": {"steps": 100}}}` sets node inputs per quality level ("auto"
names the default level; DALL·E 3's "standard" and "hd" are "medium" and "high"); without it quality is accepted
and ignored. `"style": {"vivid": {…}, "natural": {…}}` does the same for style. `"transparent_background": true` says
the model's workflows make transparent pictures (else background "transparent" is refused). `"aliases": ["dall-e-3"]`
serves the model under more names: always in a user's description, and in a shipped one only where the operator
names the alias in DALLE_NODES_API_ALIASES.
"""

from __future__ import annotations

import copy
import os
import re
import secrets
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import prompt_translation
from .errors import ApiError, bad_request
from .image_options import QUALITIES, STYLES
from .json_files import ModelError, read_json
from .requests import AUTO_SIZE, CHARSETS, DEFAULT_SIZE, ENDPOINTS, ImageRequest, check_charset
from .settings import ALIASES_VARIABLE
from .workflow_bindings import mapping, settings_table, targets, workflow

SHIPPED_MODELS = Path(__file__).resolve().parent / "models"
SUFFIX = ".model.json"
DEFAULT_SIZES = ("256x256", "512x512", "1024x1024")
# What a request can fill. "image" and "mask" receive the same uploaded file's name: an RGBA PNG whose alpha marks
# what to repaint (Load Image's MASK output, or Load Image (as Mask) on its alpha channel).
INPUT_NAMES = ("prompt", "negative", "seed", "width", "height", "n", "image", "mask")
REQUIRED = {"generations": {"prompt"}, "edits": {"prompt", "image"}, "variations": {"image"}}
_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_SIZE = re.compile(r"[1-9][0-9]{0,4}x[1-9][0-9]{0,4}")
QUALITY_NAMES = {"standard": "medium", "hd": "high"}  # DALL·E 3's names of the levels
QUALITY_LEVELS = tuple(q for q in QUALITIES if q not in ("auto", *QUALITY_NAMES))
DESCRIPTION_KEYS = ("description", "sizes", "prompt", "aliases", "transparent_background")
MAX_DESCRIPTION_BYTES = 1024 * 1024  # a description is a few KB


@dataclass(frozen=True)
class Variant:
    """One workflow of a model's endpoint: the graph (with the description's fixed values set), what the request
    fills in it, the sizes it makes, and optionally the one node whose images are the answer."""

    graph: dict
    inputs: dict[str, tuple[tuple[str, str], ...]]
    sizes: tuple[str, ...]
    output: str | None = None
    quality: dict[str, dict] = field(default_factory=dict)  # level → {node: {input: value}}
    default_quality: str | None = None
    style: dict[str, dict] = field(default_factory=dict)

    def quality_level(self, quality: str, model_id: str) -> str | None:
        """The description's level for a request's quality (None where it maps none: quality is ignored), or
        ApiError 400 naming the levels it has."""
        if not self.quality:
            return None
        level = self.default_quality if quality == "auto" else QUALITY_NAMES.get(quality, quality)
        if level not in self.quality:
            offered = [*self.quality, "auto", *(name for name, same in QUALITY_NAMES.items() if same in self.quality)]
            raise bad_request(
                f"quality '{quality}' is not offered by the model '{model_id}': send {', '.join(offered)}.", "quality"
            )
        return level

    def settings(self, level: str | None, style: str | None) -> dict[str, dict]:
        """The node inputs a quality level and a style set, {node: {input: value}} (style last)."""
        merged: dict[str, dict] = {}
        for values in (self.quality.get(level, {}), self.style.get(style, {})):
            for node, inputs in values.items():
                merged.setdefault(node, {}).update(inputs)
        return merged


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
    aliases: tuple[str, ...] = ()
    transparent: bool = False  # its workflows make transparent pictures

    def resolved(self, request: ImageRequest) -> ImageRequest:
        """The request with size "auto" made this model's default size; a transparent background it cannot make →
        ApiError 400."""
        if request.options.background == "transparent" and not self.transparent:
            raise bad_request(
                f"The model '{self.id}' makes opaque pictures: send background auto or opaque (a description with "
                '"transparent_background": true serves transparent ones).',
                "background",
            )
        if request.size != AUTO_SIZE:
            return request
        sizes = [size for variant in self.endpoints.get(request.endpoint, ()) for size in variant.sizes]
        return replace(request, size=DEFAULT_SIZE if DEFAULT_SIZE in sizes or not sizes else sizes[0])

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
    aliases: dict[str, str] = field(default_factory=dict)  # alias → model id

    def get(self, model_id: str) -> Model:
        if model_id in self.models:
            return self.models[model_id]
        if model_id in self.aliases:
            return self.models[self.aliases[model_id]]
        problem = self.problems.get(model_id + SUFFIX)
        if problem is not None:
            raise ApiError(500, f"The model '{model_id}' cannot run: {problem}", "model")
        known = ", ".join(sorted(self.models)) or "none"
        raise ApiError(
            404, f"The model '{model_id}' does not exist (models here: {known}).", "model", "model_not_found"
        )


def load_catalogue(folders: Iterable[Path], shipped_aliases: Collection[str] = ()) -> Catalogue:
    """The descriptions in each folder (later folders replace earlier ones' models of the same id); a broken one is
    listed among the problems instead of stopping the rest. The first folder holds the shipped descriptions, whose
    aliases serve only where named in `shipped_aliases` (the operator's opt-in)."""
    catalogue = Catalogue()
    for number, folder in enumerate(folders):
        for path in _descriptions(folder, catalogue):
            try:
                model = load_model(path)
            except ModelError as error:
                catalogue.problems[path.name] = str(error)
                catalogue.models.pop(path.name.removesuffix(SUFFIX), None)
                continue
            catalogue.problems.pop(path.name, None)
            if number == 0:
                model = replace(model, aliases=tuple(a for a in model.aliases if a in shipped_aliases))
            catalogue.models[model.id] = model
    _add_aliases(catalogue, shipped_aliases)
    return catalogue


def _add_aliases(catalogue: Catalogue, shipped_aliases: Collection[str]) -> None:
    """Each model's aliases that name no model (a real model of that id wins); an opted-in alias no shipped
    description offers is a problem."""
    for model in catalogue.models.values():
        for alias in model.aliases:
            if alias in catalogue.models:
                catalogue.problems[f"{model.id}{SUFFIX}"] = (
                    f"{model.id}{SUFFIX}: its alias '{alias}' is the id of another model, which keeps it."
                )
                continue
            if alias in catalogue.aliases:  # the later description (a user's over a shipped one) serves it
                other = catalogue.aliases[alias]
                catalogue.problems[f"{model.id}{SUFFIX}"] = (
                    f"{model.id}{SUFFIX}: its alias '{alias}' is also {other}'s; {model.id} serves it."
                )
            catalogue.aliases[alias] = model.id
    unknown = sorted(set(shipped_aliases) - set(catalogue.aliases) - set(catalogue.models))
    if unknown:
        catalogue.problems[ALIASES_VARIABLE] = (
            f"{ALIASES_VARIABLE} names {', '.join(unknown)}, which no shipped description offers as an alias."
        )


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
    spec, modified = read_json(path, MAX_DESCRIPTION_BYTES)
    if not isinstance(spec, dict):
        raise ModelError(f"{path.name}: a description is a JSON object.")
    unknown = set(spec) - {*DESCRIPTION_KEYS, *ENDPOINTS}
    if unknown:
        raise ModelError(
            f"{path.name}: unknown keys {sorted(unknown)}; a description has {', '.join(DESCRIPTION_KEYS)}, "
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
    aliases = spec.get("aliases", [])
    if not (isinstance(aliases, list) and all(isinstance(a, str) and _MODEL_ID.fullmatch(a) for a in aliases)):
        raise ModelError(f'{path.name}: aliases is a list of model names such as ["dall-e-3", "gpt-image-1"].')
    transparent = spec.get("transparent_background", False)
    if not isinstance(transparent, bool):
        raise ModelError(f"{path.name}: transparent_background is true or false.")
    model = Model(model_id, description, sizes, endpoints, path, modified, charset, translate)
    return replace(model, aliases=tuple(a for a in aliases if a != model_id), transparent=transparent)


def _translated(variant: Variant, model: str) -> Variant:
    graph, inputs = prompt_translation.with_translation(variant.graph, variant.inputs, model)
    return replace(variant, graph=graph, inputs=inputs)


def fill(variant: Variant, values: dict[str, object], settings: dict[str, dict] | None = None) -> dict:
    """A copy of the variant's graph with `settings` ({node: {input: value}}, a quality level's and a style's) set,
    then each value written into every node input the description binds it to."""
    graph = copy.deepcopy(variant.graph)
    for node, inputs in (settings or {}).items():
        graph[node]["inputs"].update(copy.deepcopy(inputs))
    for name, value in values.items():
        for node, input_name in variant.inputs.get(name, ()):
            graph[node]["inputs"][input_name] = value
    return graph


def unguessable(graph: dict) -> dict:
    """Each saved file's name gets a random part, so that its /view link cannot be guessed from another one (names
    are otherwise numbered in sequence) and processes sharing an output folder never pick the same name."""
    token = secrets.token_hex(8)
    for node in graph.values():
        prefix = node["inputs"].get("filename_prefix")
        if isinstance(prefix, str):
            node["inputs"]["filename_prefix"] = f"{prefix}_{token}"
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
    unknown = set(entry) - {"workflow", "inputs", "set", "sizes", "output", "quality", "style"}
    if unknown:
        raise ModelError(
            f"{where}: unknown keys {sorted(unknown)}; an entry has workflow, inputs, set, sizes, output, quality, "
            "style."
        )
    graph = workflow(entry.get("workflow"), path.parent, where)
    for node, values in mapping(entry.get("set", {}), where, "set").items():
        if node not in graph or not isinstance(values, dict):
            raise ModelError(f"{where}: set names node {node!r}, which the workflow does not have (or no inputs).")
        graph[node]["inputs"].update(copy.deepcopy(values))
    inputs = {
        name: targets(bound, graph, where, name)
        for name, bound in mapping(entry.get("inputs"), where, "inputs").items()
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
    quality = mapping(entry.get("quality", {}), where, "quality")
    default_quality = quality.pop("auto", None)
    if quality and not (isinstance(default_quality, str) and default_quality in quality):
        raise ModelError(f'{where}: quality names its default level, e.g. "auto": "medium", one of its levels.')
    return Variant(
        graph,
        inputs,
        sizes,
        output,
        settings_table(quality, QUALITY_LEVELS, graph, f"{where}: quality"),
        default_quality,
        settings_table(mapping(entry.get("style", {}), where, "style"), STYLES, graph, f"{where}: style"),
    )
