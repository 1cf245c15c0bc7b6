"""Every node has an English and a Chinese help page (web/docs) and UI translation (locales), and the numbers in
the pages are the specs' (tests/help_pages.py draws the pages' tables from the specs)."""

from __future__ import annotations

import re

import pytest

from dalle_nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from help_pages import (
    DOCS,
    LANGUAGES,
    category_translation,
    inputs,
    main_locale,
    node_defs,
    output_names,
    page_path,
    spec_table,
    table_in,
)

NODE_IDS = sorted(NODE_CLASS_MAPPINGS)
PROSE_CHARACTERS = {
    "en": 400,
    "zh": 200,
}  # what it does, a wiring, errors: at least a few sentences (Chinese is denser)
CHINESE = re.compile(r"[\u4e00-\u9fff]")
REGENERATE = "the spec or locale changed: run `python tests/help_pages.py` and check the prose around the table"


def expected_keys(node_id: str) -> tuple[set[str], set[str]]:
    node_class = NODE_CLASS_MAPPINGS[node_id]
    return {name for name, *_ in inputs(node_class)}, {str(index) for index in range(len(output_names(node_class)))}


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("node_id", NODE_IDS)
def test_every_node_has_a_page_with_its_spec_table(node_id, language):
    path = page_path(node_id, language)
    assert path.is_file(), f"{node_id} has no {language} help page: write {path.relative_to(DOCS.parent.parent)}"
    page = path.read_text(encoding="utf-8")
    table = table_in(page)
    assert table is not None, f"{path.name}: the generated spec table is missing ({REGENERATE})"
    expected = spec_table(node_id, NODE_CLASS_MAPPINGS[node_id], language, node_defs(language))
    assert table == expected, f"{path}: {REGENERATE}"
    prose = page.replace(table, "")
    assert prose.startswith(f"# {node_defs(language)[node_id]['display_name']}\n"), "the title is the display name"
    assert len(prose) > PROSE_CHARACTERS[language], f"{path}: the page says too little around its table"
    if language == "zh":
        assert len(CHINESE.findall(prose)) > 100, f"{path}: the Chinese page is not written in Chinese"


def test_no_page_or_locale_entry_for_a_node_that_does_not_exist():
    pages = {path.stem for path in DOCS.glob("*.md")} | {path.name for path in DOCS.iterdir() if path.is_dir()}
    assert pages <= set(NODE_IDS), f"pages for unknown nodes (renamed?): {sorted(pages - set(NODE_IDS))}"
    for language in LANGUAGES:
        extra = set(node_defs(language)) - set(NODE_IDS)
        assert not extra, f"locales/{language}/nodeDefs.json has entries for unknown nodes: {sorted(extra)}"


@pytest.mark.parametrize("node_id", NODE_IDS)
def test_english_locale_is_the_spec(node_id):
    """The English entry says what the spec says; where the spec has no tooltip, the entry adds one."""
    node_class, entry = NODE_CLASS_MAPPINGS[node_id], node_defs("en").get(node_id)
    assert entry is not None, f"locales/en/nodeDefs.json has no {node_id}"
    assert entry["display_name"] == NODE_DISPLAY_NAME_MAPPINGS[node_id]
    assert entry["description"] == node_class.DESCRIPTION
    input_names, output_keys = expected_keys(node_id)
    assert set(entry["inputs"]) == input_names and set(entry["outputs"]) == output_keys
    for name, _, options, _ in inputs(node_class):
        assert entry["inputs"][name]["name"] == name and entry["inputs"][name]["tooltip"], f"{node_id}.{name}"
        if options.get("tooltip"):
            assert entry["inputs"][name]["tooltip"] == options["tooltip"], f"{node_id}.{name}'s tooltip changed"
    tooltips = getattr(node_class, "OUTPUT_TOOLTIPS", None) or ()
    for index, name in enumerate(output_names(node_class)):
        output = entry["outputs"][str(index)]
        assert output["name"] == name and output["tooltip"], f"{node_id} output {index}"
        if index < len(tooltips) and tooltips[index]:
            assert output["tooltip"] == tooltips[index], f"{node_id} output {index}'s tooltip changed"


@pytest.mark.parametrize("node_id", NODE_IDS)
def test_chinese_locale_covers_every_input_and_output(node_id):
    entry = node_defs("zh").get(node_id)
    assert entry is not None, f"locales/zh/nodeDefs.json has no {node_id}"
    input_names, output_keys = expected_keys(node_id)
    assert set(entry["inputs"]) == input_names, "every input, and no other, has a Chinese entry"
    assert set(entry["outputs"]) == output_keys, "every output, and no other, has a Chinese entry"
    texts = [entry["display_name"], entry["description"]]
    texts += [item["tooltip"] for item in [*entry["inputs"].values(), *entry["outputs"].values()]]
    assert all(CHINESE.search(text) for text in texts), f"{node_id}: an untranslated text in {texts}"
    assert all(item["name"].strip() for item in [*entry["inputs"].values(), *entry["outputs"].values()])


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_category_segment_is_translated(language):
    main = main_locale(language)
    segments = {part for node_class in NODE_CLASS_MAPPINGS.values() for part in node_class.CATEGORY.split("/")}
    missing = sorted(part for part in segments if not isinstance(category_translation(main, part), str))
    assert not missing, f"locales/{language}/main.json: nodeCategories lacks {missing} (a dot nests the key)"
