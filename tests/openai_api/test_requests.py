"""openai_api/requests.py: the fields of an images request, checked as OpenAI documents them for dall-e-2.

Each refusal is a 400 naming the field (param) and saying what to send instead; the sizes a model makes and whether
the model exists are the catalogue's to say (model_templates.py), checked here once end to end.
"""

from __future__ import annotations

import json
import math

import pytest

from dalle_nodes.models.bart_tokenizer import BartTokenizer
from dalle_nodes.openai_api.errors import ApiError
from dalle_nodes.openai_api.model_templates import SHIPPED_MODELS, load_catalogue
from dalle_nodes.openai_api.requests import MAX_N, MAX_PROMPT, MAX_SEED, ImageRequest, check_charset, parse

FORM = ("edits", "variations")


def refused(endpoint: str, fields: object, from_form: bool = False) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse(endpoint, fields, from_form)
    assert caught.value.status == 400
    return caught.value


def generation(**fields) -> ImageRequest:
    return parse("generations", {"prompt": "a red fox", **fields}, False)


def generation_refused(**fields) -> ApiError:
    return refused("generations", {"prompt": "a red fox", **fields})


# defaults and the accepted values


def test_generation_defaults() -> None:
    assert generation() == ImageRequest(
        endpoint="generations",
        model="dall-e-2",
        n=1,
        size="1024x1024",
        response_format="url",
        prompt="a red fox",
        negative_prompt=None,
        seed=None,
    )


def test_explicit_nulls_are_the_defaults() -> None:
    fields = {"model": None, "n": None, "size": None, "response_format": None, "seed": None, "negative_prompt": None}
    assert generation(**fields) == generation()


def test_every_field_is_kept() -> None:
    request = generation(
        model="dall-e-mini", n=3, size="256x512", response_format="b64_json", seed=7, negative_prompt="blurry"
    )
    assert (request.model, request.n, request.size, request.response_format) == (
        "dall-e-mini",
        3,
        "256x512",
        "b64_json",
    )
    assert (request.seed, request.negative_prompt, request.prompt) == (7, "blurry", "a red fox")
    assert (request.width, request.height) == (256, 512)


def test_edit_form_with_strings() -> None:
    fields = {"prompt": "a hat", "n": "2", "size": "512x512", "response_format": "b64_json", "seed": "42"}
    request = parse("edits", {**fields, "image": "<file>", "mask": "<file>"}, True)
    assert request == ImageRequest("edits", "dall-e-2", 2, "512x512", "b64_json", "a hat", None, 42)


def test_variation_has_no_prompt() -> None:
    request = parse("variations", {"n": "4", "size": "256x256", "image": "<file>"}, True)
    assert request == ImageRequest("variations", "dall-e-2", 4, "256x256", "url", None, None, None)


@pytest.mark.parametrize(("size", "normal"), [(" 512x512 ", "512x512"), ("0256x0256", "256x256"), ("4096x1", "4096x1")])
def test_size_is_normalised(size: str, normal: str) -> None:
    assert generation(size=size).size == normal


def test_model_is_stripped() -> None:
    assert generation(model=" dall-e-mega ").model == "dall-e-mega"


# n


@pytest.mark.parametrize("n", [1, 5, MAX_N])
def test_n_in_range(n: int) -> None:
    assert generation(n=n).n == n


@pytest.mark.parametrize(
    ("n", "code"), [(11, "integer_above_max_value"), (0, "integer_below_min_value"), (-1, "integer_below_min_value")]
)
def test_n_out_of_range(n: int, code: str) -> None:
    error = generation_refused(n=n)
    assert (error.param, error.code) == ("n", code)
    assert f"n is {n}" in error.message and "1 to 10" in error.message


@pytest.mark.parametrize("n", [True, False, "2", 2.5, math.nan, math.inf, [2], {"n": 2}])
def test_n_that_is_not_a_whole_number(n: object) -> None:
    error = generation_refused(n=n)
    assert error.param == "n"
    assert "whole number from 1 to 10" in error.message


def test_n_as_a_whole_float_from_json() -> None:
    n = generation(n=2.0).n
    assert n == 2 and type(n) is int


@pytest.mark.parametrize(("text", "n"), [("2", 2), (" 3 ", 3), ("10", 10), ("01", 1)])
def test_n_from_a_form(text: str, n: int) -> None:
    request = parse("variations", {"n": text}, True)
    assert request.n == n and type(request.n) is int


@pytest.mark.parametrize(("text", "code"), [("11", "integer_above_max_value"), ("0", "integer_below_min_value")])
def test_n_from_a_form_out_of_range(text: str, code: str) -> None:
    error = refused("variations", {"n": text}, True)
    assert (error.param, error.code) == ("n", code)


@pytest.mark.parametrize("text", ["2.0", "-1", "two", "", "1e1", "true"])
def test_n_from_a_form_that_is_not_a_whole_number(text: str) -> None:
    error = refused("variations", {"n": text}, True)
    assert error.param == "n" and "whole number" in error.message


# prompt and negative_prompt


@pytest.mark.parametrize("endpoint", ["generations", "edits"])
def test_prompt_is_required(endpoint: str) -> None:
    error = refused(endpoint, {"n": 1})
    assert (error.param, error.code) == ("prompt", "missing_required_parameter")
    assert error.message == "Missing required parameter: 'prompt'."


@pytest.mark.parametrize("endpoint", ["generations", "edits"])
@pytest.mark.parametrize("prompt", ["", " ", "\n\t  "])
def test_prompt_is_not_empty(endpoint: str, prompt: str) -> None:
    error = refused(endpoint, {"prompt": prompt})
    assert error.param == "prompt" and "empty" in error.message


def test_prompt_of_4000_characters_as_dall_e_3_takes() -> None:
    prompt = "x" * MAX_PROMPT
    assert MAX_PROMPT == 4000
    assert generation(prompt=prompt).prompt == prompt


@pytest.mark.parametrize("endpoint", ["generations", "edits"])
def test_prompt_of_4001_characters(endpoint: str) -> None:
    error = refused(endpoint, {"prompt": "é" * 4001})
    assert (error.param, error.code) == ("prompt", "string_above_max_length")
    assert "4001 characters" in error.message and "maximum is 4000" in error.message


@pytest.mark.parametrize("prompt", [5, ["a fox"], {"text": "a fox"}, True])
def test_prompt_is_text(prompt: object) -> None:
    error = generation_refused(prompt=prompt)
    assert error.param == "prompt" and "must be a string" in error.message


def test_negative_prompt_may_be_empty_or_4000_characters() -> None:
    assert generation(negative_prompt="").negative_prompt == ""
    assert generation(negative_prompt="n" * 4000).negative_prompt == "n" * 4000


def test_negative_prompt_too_long() -> None:
    error = generation_refused(negative_prompt="n" * 4001)
    assert (error.param, error.code) == ("negative_prompt", "string_above_max_length")
    assert "4001 characters" in error.message


def test_negative_prompt_is_text() -> None:
    error = generation_refused(negative_prompt=["blurry"])
    assert error.param == "negative_prompt" and "must be a string" in error.message


# seed


@pytest.mark.parametrize("seed", [0, 1, 2**63, MAX_SEED])
def test_seed_bounds_inside(seed: int) -> None:
    assert MAX_SEED == 2**64 - 1
    assert generation(seed=seed).seed == seed


@pytest.mark.parametrize(("seed", "code"), [(-1, "integer_below_min_value"), (2**64, "integer_above_max_value")])
def test_seed_bounds_outside(seed: int, code: str) -> None:
    error = generation_refused(seed=seed)
    assert (error.param, error.code) == ("seed", code)
    assert str(seed) in error.message and str(MAX_SEED) in error.message


def test_seed_from_a_form() -> None:
    assert parse("edits", {"prompt": "p", "seed": str(MAX_SEED)}, True).seed == MAX_SEED
    error = refused("edits", {"prompt": "p", "seed": str(2**64)}, True)
    assert (error.param, error.code) == ("seed", "integer_above_max_value")


@pytest.mark.parametrize("seed", ["42", True, 4.5, [1]])
def test_seed_from_json_is_a_number(seed: object) -> None:
    error = generation_refused(seed=seed)
    assert error.param == "seed" and "whole number" in error.message


# size, response_format, model


@pytest.mark.parametrize(
    "size", ["512", "512x", "x512", "512X512", "512*512", "512 x 512", "-1x-1", "", 512, [512, 512]]
)
def test_size_that_is_not_a_size(size: object) -> None:
    error = generation_refused(size=size)
    assert error.param == "size" and "WIDTHxHEIGHT" in error.message


@pytest.mark.parametrize("size", ["0x0", "0x512", "4097x4097", "512x99999"])
def test_size_outside_the_sides(size: str) -> None:
    error = generation_refused(size=size)
    assert error.param == "size" and "outside 1..4096" in error.message


@pytest.mark.parametrize("value", ["png", "URL", "", "b64", 1])
def test_response_format_choices(value: object) -> None:
    error = generation_refused(response_format=value)
    assert error.param == "response_format" and "url, b64_json" in error.message


@pytest.mark.parametrize("model", ["", "   ", 2, ["dall-e-2"]])
def test_model_is_a_name(model: object) -> None:
    error = generation_refused(model=model)
    assert error.param == "model" and "GET /v1/models" in error.message


# which fields each endpoint takes


@pytest.mark.parametrize(
    ("endpoint", "name"),
    [
        ("generations", "foo"),
        ("generations", "image"),
        ("generations", "mask"),
        ("generations", "prompt_2"),
        ("edits", "guidance"),
        ("variations", "prompt"),
        ("variations", "negative_prompt"),
        ("variations", "mask"),
    ],
)
def test_unknown_field(endpoint: str, name: str) -> None:
    fields = {"prompt": "p"} if endpoint != "variations" else {}
    error = refused(endpoint, {**fields, name: "x"}, endpoint in FORM)
    assert error.message == f"Unrecognized request argument supplied: {name}"
    assert error.param == name


def test_unknown_field_is_reported_before_other_problems() -> None:
    assert generation_refused(n=11, size="1x", extra=1).param == "extra"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("user", "user-1234"),
        ("safety_identifier", "x"),
        ("moderation", "low"),
        ("complexity", "high"),
    ],
)
def test_ignored_openai_fields(name: str, value: str) -> None:
    assert generation(**{name: value}) == generation()


def test_input_fidelity_is_an_edit_field() -> None:
    assert parse("edits", {"prompt": "p", "input_fidelity": "high"}, True) == parse("edits", {"prompt": "p"}, True)
    assert generation_refused(input_fidelity="high").message == "Unrecognized request argument supplied: input_fidelity"


@pytest.mark.parametrize("body", [[], "prompt", None, 3])
def test_body_is_an_object(body: object) -> None:
    error = refused("generations", body)
    assert error.param is None and "JSON object" in error.message


# the acceptance errors end to end: parse, then the shipped catalogue


@pytest.fixture(scope="module")
def catalogue():
    return load_catalogue([SHIPPED_MODELS])


@pytest.mark.parametrize("size", ["300x300", "1792x1792", "768x768"])
def test_size_the_model_does_not_make(catalogue, size: str) -> None:
    request = generation(size=size)
    with pytest.raises(ApiError) as caught:
        catalogue.get(request.model).variant(request)
    error = caught.value
    assert (error.status, error.param) == (400, "size")
    assert f"'{size}'" in error.message and "256x256, 512x512, 1024x1024" in error.message


def test_unknown_model(catalogue) -> None:
    request = generation(model="dall-e-3")
    with pytest.raises(ApiError) as caught:
        catalogue.get(request.model)
    error = caught.value
    assert (error.status, error.param, error.code) == (404, "model", "model_not_found")
    assert "'dall-e-3'" in error.message and "dall-e-2, dall-e-mega, dall-e-mini" in error.message


# text the models cannot take: half a UTF-16 pair, and letters a model that reads English alone would drop

LONE_SURROGATE = json.loads('"a red \\ud800 fox"')  # as the JSON body spells it: valid JSON, no valid text


@pytest.mark.parametrize(
    ("endpoint", "name"),
    [
        ("generations", "prompt"),
        ("generations", "negative_prompt"),
        ("generations", "model"),
        ("generations", "size"),
        ("generations", "user"),
        ("edits", "prompt"),
        ("variations", "response_format"),
    ],
)
def test_lone_surrogate_is_refused_naming_the_field(endpoint: str, name: str) -> None:
    fields = {"prompt": "a red fox"} if endpoint != "variations" else {}
    error = refused(endpoint, {**fields, name: LONE_SURROGATE}, from_form=endpoint != "generations")
    assert error.param == name
    assert f"{name} holds a lone surrogate ('\\ud800' at character 6)" in error.message
    assert "send valid Unicode" in error.message
    error.message.encode("utf-8")  # the answer itself can be sent


def test_a_whole_surrogate_pair_is_its_character() -> None:
    assert generation(prompt=json.loads('"a \\ud83e\\udd8a"')).prompt == "a 🦊"


def mini_request(prompt: str, negative: str | None = None) -> ImageRequest:
    return ImageRequest("generations", "dall-e-mini", 1, "256x256", "url", prompt, negative)


@pytest.mark.parametrize(
    ("prompt", "shown"),
    [
        ("un renard roux, façon aquarelle", "'ç'"),
        ("a fox in Zürich", "'ü'"),
        ("一只红色的狐狸", "'一', '只', '红', '色', '的', …"),
        ("рыжая лиса", "'р', 'ы', 'ж', 'а', 'я', …"),
        ("a fox, 2² foxes", "'²'"),
    ],
)
def test_ascii_charset_refuses_letters_it_would_drop(prompt: str, shown: str) -> None:
    with pytest.raises(ApiError) as caught:
        check_charset(mini_request(prompt), "ascii", "dall-e-mini")
    error = caught.value
    assert (error.status, error.param, error.code) == (400, "prompt", "unreadable_text")
    assert f"prompt has letters the model 'dall-e-mini' cannot read ({shown}): it reads English" in error.message
    check_charset(mini_request(prompt), "unicode", "dall-e-2")  # a model that reads any text takes it


@pytest.mark.parametrize("prompt", ["。。。", "’", "— ・ —"])
def test_ascii_charset_refuses_a_prompt_with_nothing_it_reads(prompt: str) -> None:
    with pytest.raises(ApiError) as caught:
        check_charset(mini_request(prompt), "ascii", "dall-e-mini")
    assert (caught.value.param, caught.value.code) == ("prompt", "unreadable_text")
    assert "prompt has nothing the model 'dall-e-mini' can read" in caught.value.message


@pytest.mark.parametrize("prompt", ["a red fox", "a 🦊 in the snow", "🦊", "ℹ️", "a fox — “quoted”’s", "!!!", "a\u0301"])
def test_ascii_charset_takes_english_punctuation_and_emoji(prompt: str) -> None:
    check_charset(mini_request(prompt), "ascii", "dall-e-mini")


def test_ascii_charset_checks_the_negative_prompt_too() -> None:
    with pytest.raises(ApiError) as caught:
        check_charset(mini_request("a red fox", "verschwommen, unschärfe"), "ascii", "dall-e-mini")
    assert caught.value.param == "negative_prompt" and "('ä')" in caught.value.message


def test_ascii_charset_is_dalle_minis_tokenizer() -> None:
    """The rule refuses exactly the letters and digits DALL·E Mini's tokenizer drops (not those it spells out, as ℹ,
    nor the punctuation it drops): it says in words what the model would do in silence."""
    tokenizer = BartTokenizer({"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "Ġ": 4}, [])  # every symbol its own token
    samples = [chr(code) for code in range(0x20, 0x3000)] + ["狐", "狸", "キ", "여", "🦊", "👍🏽", "🇫🇷"]
    for character in samples:
        dropped = tokenizer.encode("a" + character) == tokenizer.encode("a")
        try:
            check_charset(mini_request("a" + character), "ascii", "dall-e-mini")
            refused = False
        except ApiError:
            refused = True
        assert refused == (dropped and character.isalnum()), f"{character!r} ({ord(character[0]):#x})"
    assert not tokenizer.encode("a🦊") == tokenizer.encode("a")  # emoji are read, by name
