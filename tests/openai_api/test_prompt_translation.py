"""A model description's "prompt": {"translate": …}: the translate node put before the workflow's prompt inputs, the
request's prompt filled into it, the charset check left to the model; shipped *_zh workflows left as they are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dalle_nodes.openai_api.errors import ApiError
from dalle_nodes.openai_api.model_templates import fill, load_catalogue, request_values
from dalle_nodes.openai_api.prompt_translation import DEFAULT_MODEL, TRANSLATE_NODE
from dalle_nodes.openai_api.requests import non_latin_letter, parse
from dalle_nodes.pipelines.translation import TRANSLATION_REPO, needs_translation

TEXT2IMAGE = {
    "workflow": "kandinsky22_text2image.api.json",
    "inputs": {"prompt": [["2", "text"]], "negative": [["3", "text"]], "seed": [["4", "seed"], ["6", "seed"]]},
}
MEGA = {
    "workflow": "dalle_mega_text2image.api.json",
    "inputs": {"prompt": [["2", "text"]], "seed": [["2", "seed"]], "n": [["2", "batch_size"]]},
}
MEGA_ZH = {**MEGA, "workflow": "dalle_mega_text2image_zh.api.json", "inputs": {"prompt": [["5", "text"]]}}
PROMPT = "雪林中的一只红狐狸，油画"


def catalogue(tmp_path: Path, **descriptions: dict):
    for name, description in descriptions.items():
        (tmp_path / f"{name}.model.json").write_text(json.dumps(description), encoding="utf-8")
    return load_catalogue([tmp_path])


def test_the_default_model_is_the_pipelines() -> None:
    assert DEFAULT_MODEL == TRANSLATION_REPO


def test_translate_puts_a_translate_node_before_each_prompt_input(tmp_path) -> None:
    models = catalogue(tmp_path, k=({"prompt": {"translate": "auto"}, "generations": TEXT2IMAGE}))
    request = parse("generations", {"model": "k", "prompt": PROMPT, "negative_prompt": "模糊", "seed": 5}, False)
    variant = models.get("k").variant(request)
    graph = fill(variant, request_values(request, variant, 5, None))
    translators = {node_id: node for node_id, node in graph.items() if node["class_type"] == TRANSLATE_NODE}
    assert sorted(translators) == ["10", "9"]  # one above the workflow's highest id (8)
    assert graph["2"]["inputs"]["text"] == ["9", 0] and graph["3"]["inputs"]["text"] == ["10", 0]
    assert translators["9"]["inputs"] == {"text": PROMPT, "model": TRANSLATION_REPO, "device": "auto"}
    assert translators["10"]["inputs"]["text"] == "模糊"
    assert graph["4"]["inputs"]["seed"] == 5


def test_a_model_that_reads_ascii_takes_chinese_once_translated(tmp_path) -> None:
    models = catalogue(
        tmp_path,
        plain=({"prompt": {"charset": "ascii"}, "generations": MEGA}),
        translated=({"prompt": {"charset": "ascii", "translate": "someone/opus-mt-ja-en"}, "generations": MEGA}),
    )
    request = parse("generations", {"model": "plain", "prompt": PROMPT}, False)
    with pytest.raises(ApiError) as caught:
        models.get("plain").variant(request)
    assert '"prompt": {"translate": "auto"} in its description' in caught.value.message
    variant = models.get("translated").variant(request)
    graph = fill(variant, request_values(request, variant, 1, None))
    assert graph["5"]["inputs"] == {"text": PROMPT, "model": "someone/opus-mt-ja-en", "device": "auto"}
    assert graph["2"]["inputs"]["text"] == ["5", 0]


@pytest.mark.parametrize(
    "prompt, refused",
    [
        ("Straße in München", "'ß', 'ü'"),
        ("雪林中的 café", "'é'"),
        ("ｆｏｘ in snow", "'ｆ', 'ｏ', 'ｘ'"),
        ("雪林中的一只红狐狸", None),
        ("a red fox, кошка, 狐狸 🦊", None),
    ],
    ids=["German", "accent beside Chinese", "full-width Latin", "Chinese", "mixed scripts"],
)
def test_translation_lets_only_non_latin_scripts_through_the_charset_check(tmp_path, prompt, refused) -> None:
    models = catalogue(tmp_path, t=({"prompt": {"charset": "ascii", "translate": "auto"}, "generations": MEGA}))
    request = parse("generations", {"model": "t", "prompt": prompt}, False)
    if refused is None:
        assert models.get("t").variant(request).graph
        return
    with pytest.raises(ApiError) as caught:
        models.get("t").variant(request)
    assert f"cannot read ({refused})" in caught.value.message
    assert "its translation takes letters of non-Latin scripts" in caught.value.message


def test_the_exemption_is_the_pipelines_rule() -> None:
    sample = "Straße Zürich ｆｏｘ 雪林狐狸 кошка ねこ 고양이 عربي ελληνικά 4k !"
    assert [non_latin_letter(c) for c in sample] == [needs_translation(c) for c in sample]


def test_a_workflow_that_translates_already_is_left_as_it_is(tmp_path) -> None:
    models = catalogue(tmp_path, zh=({"prompt": {"translate": "auto"}, "generations": MEGA_ZH}))
    request = parse("generations", {"model": "zh", "prompt": PROMPT}, False)
    variant = models.get("zh").variant(request)
    assert [node["class_type"] for node in variant.graph.values()].count(TRANSLATE_NODE) == 1
    assert fill(variant, request_values(request, variant, 1, None))["5"]["inputs"]["text"] == PROMPT


@pytest.mark.parametrize(
    "prompt, message",
    [
        ({"translate": ""}, 'translate is "auto"'),
        ({"translate": 3}, 'translate is "auto"'),
        ({"translate": "x" * 2000}, 'translate is "auto"'),
        ({"translate": "auto", "language": "zh"}, '{"translate": "auto"}'),
    ],
    ids=["empty", "number", "too long", "unknown key"],
)
def test_bad_translate_settings_name_the_fix(tmp_path, prompt: dict, message: str) -> None:
    models = catalogue(tmp_path, bad=({"prompt": prompt, "generations": MEGA}))
    assert "bad" not in models.models and message in models.problems["bad.model.json"]
