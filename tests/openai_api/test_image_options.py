"""openai_api/image_options.py: the GPT image and DALL·E 3 fields of today's `openai` client, each value inside
OpenAI's enums accepted (or refused naming the field where these models cannot honour it), each outside refused."""

from __future__ import annotations

import pytest

from dalle_nodes.openai_api.errors import ApiError
from dalle_nodes.openai_api.image_options import ImageOptions
from dalle_nodes.openai_api.requests import parse


def options(endpoint: str = "generations", from_form: bool = False, **fields) -> ImageOptions:
    return parse(endpoint, {"prompt": "p", **fields} if endpoint != "variations" else fields, from_form).options


def refused(endpoint: str = "generations", from_form: bool = False, **fields) -> ApiError:
    with pytest.raises(ApiError) as caught:
        options(endpoint, from_form, **fields)
    assert caught.value.status == 400
    return caught.value


def test_defaults_are_dall_e_2s_answer() -> None:
    assert options() == ImageOptions("png", 100, "auto", "auto", None, False, 0)


@pytest.mark.parametrize("value", ["png", "jpeg", "webp"])
def test_output_formats(value: str) -> None:
    assert options(output_format=value).output_format == value


@pytest.mark.parametrize("value", ["gif", "svg"])
def test_openais_formats_these_models_do_not_make(value: str) -> None:
    error = refused(output_format=value)
    assert error.param == "output_format" and "not made by these models" in error.message


@pytest.mark.parametrize("value", ["PNG", "jpg", "tiff", 3, ["png"]])
def test_output_format_outside_the_enum(value: object) -> None:
    assert refused(output_format=value).param == "output_format"


@pytest.mark.parametrize(("value", "from_form", "kept"), [(0, False, 0), (55, False, 55), ("80", True, 80)])
def test_output_compression(value: object, from_form: bool, kept: int) -> None:
    assert options("edits", from_form, output_compression=value).output_compression == kept


@pytest.mark.parametrize("value", [-1, 101, 5.5, "50", True])
def test_output_compression_outside_0_to_100(value: object) -> None:
    assert refused(output_compression=value).param == "output_compression"


@pytest.mark.parametrize("value", ["auto", "low", "medium", "high", "xhigh", "max", "standard", "hd"])
def test_every_quality_of_the_enum_is_taken_here_and_mapped_by_the_model(value: str) -> None:
    assert options(quality=value).quality == value


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("quality", "ultra"),
        ("background", "clear"),
        ("style", "bold"),
        ("moderation", "strict"),
        ("complexity", "extreme"),
        ("input_fidelity", "medium"),
        ("stream", "yes"),
        ("stream", 2),
        ("partial_images", 4),
        ("partial_images", -1),
        ("user", 5),
        ("safety_identifier", "x" * 257),
    ],
)
def test_values_outside_openais_enums_name_the_field(name: str, value: object) -> None:
    assert refused(**{name: value}).param == name


@pytest.mark.parametrize(("name", "value"), [("frame_count", 4), ("frame_duration_ms", 100), ("svg", {"model": "x"})])
def test_gif_and_svg_settings_are_refused(name: str, value: object) -> None:
    error = refused(**{name: value})
    assert error.param == name and "SVG or GIF output" in error.message


@pytest.mark.parametrize(
    ("value", "from_form", "stream"), [(True, False, True), ("true", True, True), ("false", True, False)]
)
def test_stream_from_json_and_forms(value: object, from_form: bool, stream: bool) -> None:
    assert options("edits", from_form, stream=value).stream is stream


def test_a_stream_answers_b64_json_and_refuses_url() -> None:
    assert parse("generations", {"prompt": "p", "stream": True}, False).response_format == "b64_json"
    error = refused(stream=True, response_format="url")
    assert error.param == "response_format" and "b64_json" in error.message


@pytest.mark.parametrize(
    ("endpoint", "name", "value"),
    [
        ("variations", "stream", "true"),
        ("variations", "quality", "high"),
        ("variations", "output_format", "png"),
        ("edits", "style", "vivid"),
        ("edits", "moderation", "low"),
        ("generations", "input_fidelity", "high"),
    ],
)
def test_fields_openai_does_not_take_on_the_endpoint(endpoint: str, name: str, value: str) -> None:
    error = refused(endpoint, True, **{name: value})
    assert (error.param, error.message) == (name, f"Unrecognized request argument supplied: {name}")


def test_dall_e_3s_hd_is_no_edit_quality() -> None:
    assert options("edits", True, quality="standard").quality == "standard"
    assert refused("edits", True, quality="hd").param == "quality"


def test_svg_settings_from_a_form_name_svg() -> None:
    error = refused("edits", True, **{"svg[model]": "x"})
    assert error.param == "svg" and "SVG or GIF output" in error.message


def test_a_transparent_jpeg_is_refused() -> None:
    error = refused(background="transparent", output_format="jpeg")
    assert error.param == "background" and "JPEG has no transparency" in error.message


@pytest.mark.parametrize(("model", "answer"), [("dall-e-2", "url"), ("dall-e-3", "url"), ("gpt-image-1", "b64_json")])
def test_gpt_image_model_names_answer_b64_json_by_default(model: str, answer: str) -> None:
    assert parse("generations", {"prompt": "p", "model": model}, False).response_format == answer
    assert (
        parse("generations", {"prompt": "p", "model": model, "response_format": "url"}, False).response_format == "url"
    )


def test_size_auto_is_kept_for_the_model_to_resolve() -> None:
    assert parse("generations", {"prompt": "p", "size": "auto"}, False).size == "auto"
