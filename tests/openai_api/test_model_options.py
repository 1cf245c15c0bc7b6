"""The description keys that map today's fields (model_templates.py): quality levels and styles as node inputs, size
"auto", transparent backgrounds, and aliases (a user's at once, a shipped description's on the operator's opt-in)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dalle_nodes.openai_api.errors import ApiError
from dalle_nodes.openai_api.model_templates import SHIPPED_MODELS, fill, load_catalogue, request_values
from dalle_nodes.openai_api.requests import parse
from dalle_nodes.openai_api.settings import shipped_aliases

TEXT2IMAGE = "kandinsky22_text2image.api.json"
QUALITY = {"auto": "medium", "low": {"6": {"steps": 20}}, "medium": {}, "high": {"6": {"steps": 100}}}
GENERATIONS = {"workflow": TEXT2IMAGE, "inputs": {"prompt": [["2", "text"]]}, "quality": QUALITY}


def write(folder: Path, name: str, spec: dict) -> None:
    (folder / f"{name}.model.json").write_text(json.dumps(spec))


def request(**fields):
    return parse("generations", {"prompt": "a fox", **fields}, False)


def graph_for(model, **fields) -> dict:
    asked = model.resolved(request(model=model.id, **fields))
    variant = model.variant(asked)
    level = variant.quality_level(asked.options.quality, model.id)
    return fill(variant, request_values(asked, variant, 1, None), variant.settings(level, asked.options.style))


@pytest.mark.parametrize(
    ("quality", "steps"), [("low", 20), ("high", 100), ("hd", 100), ("standard", 50), ("auto", 50)]
)
def test_quality_levels_set_their_node_inputs(tmp_path: Path, quality: str, steps: int) -> None:
    write(tmp_path, "mine", {"generations": GENERATIONS})
    assert graph_for(load_catalogue([tmp_path]).get("mine"), quality=quality)["6"]["inputs"]["steps"] == steps


@pytest.mark.parametrize("quality", ["xhigh", "max"])
def test_a_level_the_description_lacks_is_a_400_listing_the_offered_ones(tmp_path: Path, quality: str) -> None:
    write(tmp_path, "mine", {"generations": GENERATIONS})
    with pytest.raises(ApiError) as caught:
        graph_for(load_catalogue([tmp_path]).get("mine"), quality=quality)
    assert caught.value.param == "quality"
    assert "send low, medium, high, auto, standard, hd" in caught.value.message


def test_without_a_quality_table_quality_is_ignored(tmp_path: Path) -> None:
    write(tmp_path, "plain", {"generations": {**GENERATIONS, "quality": {}}})
    model = load_catalogue([tmp_path]).get("plain")
    assert graph_for(model, quality="max") == graph_for(model)
    assert model.variant(request(model="plain")).quality_level("max", "plain") is None


def test_style_sets_its_inputs_after_the_quality_level(tmp_path: Path) -> None:
    style = {"vivid": {"6": {"guidance": 7.0, "steps": 30}}, "natural": {}}
    write(tmp_path, "styled", {"generations": {**GENERATIONS, "style": style}})
    inputs = graph_for(load_catalogue([tmp_path]).get("styled"), quality="high", style="vivid")["6"]["inputs"]
    assert (inputs["guidance"], inputs["steps"]) == (7.0, 30)


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"quality": {"low": {}}}, "names its default level"),
        ({"quality": {"auto": ["low"], "low": {}}}, "names its default level"),
        ({"quality": {"auto": "ultra", "ultra": {}}}, "'ultra' is not one of"),
        ({"quality": {"auto": "low", "low": {"99": {"steps": 1}}}}, "names node '99'"),
        ({"quality": {"auto": "low", "low": {"6": {"nothing": 1}}}}, "nothing of node 6"),
        ({"quality": {"auto": "low", "low": {"6": {"decoder": 1}}}}, "is a link"),
        ({"style": {"bold": {}}}, "'bold' is not one of vivid, natural"),
    ],
)
def test_bad_quality_and_style_tables_name_the_fix(tmp_path: Path, entry: dict, problem: str) -> None:
    write(tmp_path, "bad", {"generations": {**GENERATIONS, **entry}})
    catalogue = load_catalogue([tmp_path])
    assert "bad" not in catalogue.models and problem in catalogue.problems["bad.model.json"]


def test_size_auto_is_the_models_default_size(tmp_path: Path) -> None:
    write(tmp_path, "square", {"generations": GENERATIONS})
    write(tmp_path, "small", {"sizes": ["256x256", "512x512"], "generations": GENERATIONS})
    models = load_catalogue([tmp_path])
    assert models.get("square").resolved(request(size="auto")).size == "1024x1024"
    assert models.get("small").resolved(request(size="auto")).size == "256x256"


def test_a_transparent_background_needs_a_description_that_makes_one(tmp_path: Path) -> None:
    write(tmp_path, "opaque", {"generations": GENERATIONS})
    write(tmp_path, "cutout", {"transparent_background": True, "generations": GENERATIONS})
    models = load_catalogue([tmp_path])
    with pytest.raises(ApiError) as caught:
        models.get("opaque").resolved(request(background="transparent"))
    assert caught.value.param == "background" and "transparent_background" in caught.value.message
    assert models.get("cutout").resolved(request(background="transparent")).options.background == "transparent"


def test_a_users_aliases_serve_at_once(tmp_path: Path) -> None:
    write(tmp_path, "mine", {"aliases": ["dall-e-3"], "generations": GENERATIONS})
    models = load_catalogue([SHIPPED_MODELS, tmp_path])
    assert models.get("dall-e-3").id == "mine" and models.aliases == {"dall-e-3": "mine"}


def test_shipped_aliases_serve_only_where_the_operator_names_them(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ApiError) as caught:
        load_catalogue([SHIPPED_MODELS]).get("dall-e-3")
    assert caught.value.status == 404 and caught.value.code == "model_not_found"
    monkeypatch.setenv("DALLE_NODES_API_ALIASES", "dall-e-3, gpt-image-1")
    models = load_catalogue([SHIPPED_MODELS], shipped_aliases())
    assert models.get("dall-e-3").id == models.get("gpt-image-1").id == "dall-e-2"
    assert not models.problems
    only = load_catalogue([SHIPPED_MODELS], {"dall-e-3"})
    assert set(only.aliases) == {"dall-e-3"}


def test_an_opt_in_no_description_offers_is_a_problem() -> None:
    models = load_catalogue([SHIPPED_MODELS], {"dall-e-4"})
    assert "dall-e-4" in models.problems["DALLE_NODES_API_ALIASES"]


def test_an_alias_that_is_a_models_id_leaves_the_model(tmp_path: Path) -> None:
    write(tmp_path, "mine", {"aliases": ["dall-e-2"], "generations": GENERATIONS})
    models = load_catalogue([SHIPPED_MODELS, tmp_path])
    assert models.get("dall-e-2").source.parent == SHIPPED_MODELS
    assert "is the id of another model" in models.problems["mine.model.json"]


@pytest.mark.parametrize("aliases", ["dall-e-3", [3], ["bad name"]])
def test_bad_aliases_name_the_fix(tmp_path: Path, aliases: object) -> None:
    write(tmp_path, "mine", {"aliases": aliases, "generations": GENERATIONS})
    assert "aliases is a list of model names" in load_catalogue([tmp_path]).problems["mine.model.json"]


@pytest.mark.parametrize("size", ["1792x1024", "1024x1792", "1536x1024", "1024x1536"])
def test_kandinsky_generates_dall_e_3s_and_gpt_images_sizes(size: str) -> None:
    model = load_catalogue([SHIPPED_MODELS]).get("dall-e-2")
    graph = graph_for(model, size=size, quality="hd")
    width, height = map(int, size.split("x"))
    assert (graph["6"]["inputs"]["width"], graph["6"]["inputs"]["height"]) == (width, height)
    assert (graph["4"]["inputs"]["steps"], graph["6"]["inputs"]["steps"]) == (50, 100)


def test_an_alias_two_descriptions_claim_is_served_by_the_later_one(tmp_path: Path) -> None:
    write(tmp_path, "mine", {"aliases": ["dall-e-3"], "generations": GENERATIONS})
    models = load_catalogue([SHIPPED_MODELS, tmp_path], {"dall-e-3"})
    assert models.get("dall-e-3").id == "mine"
    assert "also dall-e-2's; mine serves it" in models.problems["mine.model.json"]


def test_revised_prompt_is_the_english_a_translated_model_read(tmp_path: Path) -> None:
    from dalle_nodes.openai_api.answers import revised_prompt

    write(tmp_path, "zh", {"prompt": {"translate": "auto"}, "generations": GENERATIONS})
    model = load_catalogue([tmp_path]).get("zh")
    asked = request(model="zh", prompt="雪中的红狐狸")
    variant = model.variant(asked)
    (translate_node,) = [node for node, _ in variant.inputs["prompt"]]
    entry = {"outputs": {translate_node: {"text": ["a red fox in the snow"]}}}
    assert revised_prompt(asked, variant, entry) == "a red fox in the snow"
    assert revised_prompt(asked, variant, {"outputs": {}}) == "雪中的红狐狸"
