"""The node help pages (web/docs) and UI translations (locales) held to the node specs.

Each page carries a table of its node's inputs and outputs drawn from the spec (types, defaults, ranges, choices) and
from the locale (names, tooltips), between two marker lines; the prose around it is written by hand. The tests
regenerate the table and compare; `python tests/help_pages.py` rewrites the tables of every page after a spec or a
locale changed.

Locale format (what ComfyUI's frontend reads, from locales/<lang>/nodeDefs.json and main.json, served at /i18n):
nodeDefs[<NodeId>] = {display_name, description, inputs: {<input>: {name, tooltip}}, outputs: {"<index>": {name,
tooltip}}}; main.json's nodeCategories translates each segment of a category path. The frontend looks a segment up
as a vue-i18n key path, so a segment with a dot ("Kandinsky 2.2 (DALL·E 2)") is nested at its dots.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "web" / "docs"
LOCALES = ROOT / "locales"
LANGUAGES = ("en", "zh")
BEGIN = "<!-- spec table: generated from the node's spec and locale by `python tests/help_pages.py`; do not edit -->"
END = "<!-- end of spec table -->"

WORDS = {
    "en": {
        "input": "Input",
        "output": "Output",
        "type": "Type",
        "default": "Default",
        "range": "Range / choices",
        "about": "What it is",
        "optional": "optional",
        "empty": "(empty)",
        "step": "step",
        "choice": "choice",
    },
    "zh": {
        "input": "输入",
        "output": "输出",
        "type": "类型",
        "default": "默认值",
        "range": "范围 / 选项",
        "about": "说明",
        "optional": "可选",
        "empty": "（空）",
        "step": "步长",
        "choice": "选项",
    },
}


def page_path(node_id: str, language: str) -> Path:
    """Where ComfyUI's frontend looks: docs/<NodeId>/<lang>.md, then docs/<NodeId>.md (our English page)."""
    return DOCS / f"{node_id}.md" if language == "en" else DOCS / node_id / f"{language}.md"


def node_defs(language: str) -> dict:
    return json.loads((LOCALES / language / "nodeDefs.json").read_text(encoding="utf-8"))


def main_locale(language: str) -> dict:
    return json.loads((LOCALES / language / "main.json").read_text(encoding="utf-8"))


def category_translation(main: dict, segment: str) -> object:
    """The entry the frontend finds for one category segment (None if none): nodeCategories, then the segment's
    parts between dots."""
    entry: object = main.get("nodeCategories", {})
    for part in segment.split("."):
        entry = entry.get(part) if isinstance(entry, dict) else None
    return entry


def inputs(node_class: type) -> list[tuple[str, object, dict, bool]]:
    """(name, type or list of choices, options, optional) of each input the UI shows, in the spec's order."""
    spec = node_class.INPUT_TYPES()
    return [
        (name, entry[0], entry[1] if len(entry) > 1 else {}, section == "optional")
        for section in ("required", "optional")
        for name, entry in spec.get(section, {}).items()
    ]


def output_names(node_class: type) -> list[str]:
    """The names the UI gives the outputs: RETURN_NAMES, or the types where there are none."""
    return list(getattr(node_class, "RETURN_NAMES", None) or node_class.RETURN_TYPES)


def _value(value: object, words: dict) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f"`{value}`" if value else words["empty"]
    return repr(value)


def _range(kind: object, options: dict, words: dict) -> str:
    if isinstance(kind, list):
        return ", ".join(f"`{choice}`" for choice in kind)
    if "min" not in options and "max" not in options:
        return ""
    span = f"{_value(options.get('min'), words)} – {_value(options.get('max'), words)}"
    return f"{span}, {words['step']} {_value(options['step'], words)}" if "step" in options else span


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _shown_name(name: str, localized: str, language: str, optional: bool = False) -> str:
    """`name`, with the localized name and "optional" after it in brackets where there are."""
    notes = [
        note
        for note in (localized if localized != name else "", WORDS[language]["optional"] if optional else "")
        if note
    ]
    if not notes:
        return f"`{name}`"
    return f"`{name}`（{'，'.join(notes)}）" if language == "zh" else f"`{name}` ({', '.join(notes)})"


def spec_table(node_id: str, node_class: type, language: str, defs: dict) -> str:
    """The generated part of a page: inputs (type, default, range or choices, tooltip) and outputs."""
    words, entry = WORDS[language], defs[node_id]
    rows = [
        BEGIN,
        f"| {words['input']} | {words['type']} | {words['default']} | {words['range']} | {words['about']} |",
        "|---|---|---|---|---|",
    ]
    for name, kind, options, optional in inputs(node_class):
        localized = entry["inputs"][name]
        shown = _shown_name(name, localized["name"], language, optional)
        type_name = words["choice"] if isinstance(kind, list) else kind
        default = _value(options["default"], words) if "default" in options else ""
        cells = [shown, type_name, default, _range(kind, options, words), localized["tooltip"]]
        rows.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    rows += ["", f"| {words['output']} | {words['type']} | {words['about']} |", "|---|---|---|"]
    for index, (name, type_name) in enumerate(zip(output_names(node_class), node_class.RETURN_TYPES, strict=True)):
        localized = entry["outputs"][str(index)]
        cells = [_shown_name(name, localized["name"], language), type_name, localized["tooltip"]]
        rows.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return "\n".join([*rows, END])


def table_in(page: str) -> str | None:
    """The generated table of a page, markers included (None if the page has none)."""
    start, end = page.find(BEGIN), page.find(END)
    return page[start : end + len(END)] if start >= 0 and end > start else None


def rewrite_tables() -> list[Path]:
    """Regenerate the table of every existing page; the pages that are missing come back."""
    from dalle_nodes import NODE_CLASS_MAPPINGS

    missing = []
    for language in LANGUAGES:
        defs = node_defs(language)
        for node_id, node_class in NODE_CLASS_MAPPINGS.items():
            path = page_path(node_id, language)
            if not path.exists():
                missing.append(path)
                continue
            page = path.read_text(encoding="utf-8")
            old = table_in(page) or BEGIN + "\n" + END
            path.write_text(page.replace(old, spec_table(node_id, node_class, language, defs)), encoding="utf-8")
    return missing


if __name__ == "__main__":
    for path in rewrite_tables():
        print(f"missing: {path.relative_to(ROOT)}")
