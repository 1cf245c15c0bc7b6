"""DALL·E Translate Prompt called as ComfyUI calls it, without ComfyUI (nodes/runtime.py's fallbacks)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dalle_nodes.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, runtime, translate
from dalle_nodes.openai_api import prompt_translation
from dalle_nodes.pipelines import translation
from dalle_nodes.pipelines.translation import TRANSLATION_REPO, Translator
from node_calls import call
from tiny_translation import write_translation_repo

CHINESE = "雪林中的一只红狐狸，油画"


@pytest.fixture(scope="module")
def opus_repo(tmp_path_factory) -> Path:
    return write_translation_repo(tmp_path_factory.mktemp("opus-mt-zh-en"))


@pytest.fixture(autouse=True)
def nothing_kept(monkeypatch) -> None:
    monkeypatch.setattr(translate, "_kept", {})


def test_registered_with_the_default_model() -> None:
    assert NODE_DISPLAY_NAME_MAPPINGS["DalleTranslatePrompt"] == "DALL·E Translate Prompt"
    spec = NODE_CLASS_MAPPINGS["DalleTranslatePrompt"].INPUT_TYPES()["required"]
    assert spec["model"][1]["default"] == TRANSLATION_REPO == prompt_translation.DEFAULT_MODEL
    assert spec["device"][0] == ["auto", "cpu"] and spec["text"][1]["multiline"]


@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_translates_and_shows_the_translation(opus_repo, device: str) -> None:
    result = call("DalleTranslatePrompt", text=CHINESE, model=str(opus_repo), device=device)
    english = Translator.load(str(opus_repo), device="cpu")(CHINESE)
    assert result == {"ui": {"text": [english]}, "result": (english,)}
    assert english.isascii() and ", " in english  # the tiny model writes English pieces; the comma is kept


@pytest.mark.parametrize("text", [CHINESE, "a red fox, (snow:1.2)"], ids=["translated", "English"])
def test_the_result_is_shown_on_the_node(opus_repo, monkeypatch, text: str) -> None:
    shown = []
    monkeypatch.setattr(runtime, "show_text", shown.append)
    result = call("DalleTranslatePrompt", text=text, model=str(opus_repo), device="cpu")
    assert shown == list(result["result"])


@pytest.mark.parametrize("device, managed", [("auto", 1), ("cpu", 0)])
def test_auto_hands_the_model_to_the_memory_manager(opus_repo, monkeypatch, device: str, managed: int) -> None:
    handed = []

    class RecordingManagedModule:
        def __init__(self, module) -> None:
            handed.append(module)
            self.load = lambda: module

    monkeypatch.setattr(runtime, "ManagedModule", RecordingManagedModule)
    call("DalleTranslatePrompt", text=CHINESE, model=str(opus_repo), device=device)
    assert len(handed) == managed


def test_cancel_is_checked_between_pieces(opus_repo, monkeypatch) -> None:
    checks, translated = [], []
    real = translation.translate_piece

    def interrupt() -> None:
        checks.append(1)
        if len(checks) == 2:
            raise InterruptedError("Cancel")

    monkeypatch.setattr(runtime, "check_interrupt", interrupt)
    monkeypatch.setattr(translation, "translate_piece", lambda *a: translated.append(a[2]) or real(*a))
    with pytest.raises(InterruptedError):
        call("DalleTranslatePrompt", text="雪林中的狐狸，油画，城市夜景", model=str(opus_repo), device="cpu")
    assert translated == ["雪林中的狐狸"]  # stopped before the second piece


def test_the_model_is_loaded_once(opus_repo, monkeypatch) -> None:
    loads = []
    real = translation.load_translation_model
    monkeypatch.setattr(translation, "load_translation_model", lambda source: loads.append(source) or real(source))
    first = call("DalleTranslatePrompt", text=CHINESE, model=str(opus_repo))
    second = call("DalleTranslatePrompt", text="油画", model=str(opus_repo))
    assert len(loads) == 1 and first != second


def test_english_passes_without_loading(monkeypatch) -> None:
    monkeypatch.setattr(translation, "load_translation_model", lambda source: pytest.fail("loaded a model"))
    text = "a red fox, (snow:1.2)"
    assert call("DalleTranslatePrompt", text=text, model="someone/not-downloaded") == {
        "ui": {"text": [text]},
        "result": (text,),
    }


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"text": ""}, "The text to translate is empty"),
        ({"text": CHINESE, "model": "  "}, "model is empty: give a translation model's Hub repo id"),
        ({"text": CHINESE, "device": "gpu"}, "device must be one of auto, cpu"),
        ({"text": CHINESE, "model": "someone/not-downloaded"}, "is not downloaded yet"),
    ],
    ids=["empty text", "empty model", "unknown device", "not downloaded"],
)
def test_errors_say_what_to_do(inputs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call("DalleTranslatePrompt", **inputs)
