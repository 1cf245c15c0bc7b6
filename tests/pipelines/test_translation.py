"""Prompt translation against transformers' own translation pipeline, on a tiny random MarianMT in the layout of
Helsinki-NLP/opus-mt-zh-en loaded offline through our loader; English passing through untouched; the prompt's
syntax kept; clear errors; generate's translate argument."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dalle_nodes.engine import hub
from dalle_nodes.engine.checkpoints import CheckpointError
from dalle_nodes.engine.hub import default_store
from dalle_nodes.models import dalle_bart
from dalle_nodes.models.dalle_bart import Hyperparameters
from dalle_nodes.pipelines import DalleMini, Kandinsky22, Karlo, translation
from dalle_nodes.pipelines.dalle_mini import Request as MiniRequest
from dalle_nodes.pipelines.translation import MAX_CHARACTERS, TRANSLATION_REPO, Translator
from tiny_repos import TINY_MIN_DALLE, write_min_dalle_repo
from tiny_translation import DECOYS, NUM_BEAMS, SOURCE_SENTENCES, write_t5_repo, write_translation_repo

CHINESE = "一只戴着帽子的猫，油画风格, 4k, (城市夜景:1.2)\n可爱的小狗"


@pytest.fixture(scope="module")
def opus_repo(tmp_path_factory) -> Path:
    return write_translation_repo(tmp_path_factory.mktemp("opus-mt-zh-en"))


@pytest.fixture(autouse=True)
def no_kept_translator(monkeypatch) -> None:
    monkeypatch.setattr(translation, "_loaded", {})


def in_store(repo: Path) -> str:
    """The tiny repo where a finished download of Helsinki-NLP/opus-mt-zh-en lies: loaded by its Hub id, offline."""
    shutil.copytree(repo, default_store() / TRANSLATION_REPO.replace("/", "--"))
    return TRANSLATION_REPO


@pytest.fixture()
def translator(opus_repo) -> Translator:
    return Translator.load(in_store(opus_repo), device="cpu")


def reference(folder: Path):
    """transformers' own loading and translation: pipeline("translation") where this transformers has it (4.x);
    transformers 5 dropped it, and its steps are taken here as 4.57's TranslationPipeline takes them (tokenize without
    padding or truncation, generate with pipeline_generation_config, decode with skip_special_tokens=True and
    clean_up_tokenization_spaces=False). Returns text → (token ids, text)."""
    import transformers
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
    from transformers.pipelines import SUPPORTED_TASKS

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    if "translation" in SUPPORTED_TASKS:
        pipe = transformers.pipeline("translation", model=model, tokenizer=tokenizer, device="cpu")
        return lambda text: (
            pipe(text, return_tensors=True, return_text=False)[0]["translation_token_ids"],
            pipe(text)[0]["translation_text"],
        )

    def steps(text: str) -> tuple[torch.Tensor, str]:
        inputs = tokenizer(text, padding=False, return_tensors="pt")
        with torch.inference_mode():
            ids = model.generate(**inputs, generation_config=pipeline_generation_config(model.generation_config))[0]
        return ids, tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    return steps


def pipeline_generation_config(model_config):
    """transformers 4.57's Pipeline.__init__ for TranslationPipeline, step by step: its _default_generation_config
    (max_new_tokens=256, num_beams=4), each of its values still at GenerationConfig's default taken from the model's
    config (_prepare_generation_config with use_model_defaults=True), then max_new_tokens dropped where max_length is
    not the default 20."""
    from transformers import GenerationConfig

    config, defaults = GenerationConfig(max_new_tokens=256, num_beams=4), GenerationConfig()
    for key, value in model_config.to_dict().items():
        if not key.startswith("_") and key != "transformers_version":
            if getattr(config, key, None) == getattr(defaults, key, None) and value != getattr(defaults, key, None):
                setattr(config, key, value)
    if config.max_new_tokens == 256 and config.max_length is not None and config.max_length != 20:
        config.max_new_tokens = None
    return config


@pytest.mark.parametrize(
    "settings",
    [{}, {"num_beams": 6, "max_length": 12}, {"max_new_tokens": 100}, {"max_length": 50, "max_new_tokens": 30}],
    ids=["none", "beams and length", "new tokens", "both lengths"],
)
def test_generation_settings_are_the_pipelines(settings: dict) -> None:
    from transformers import GenerationConfig

    model_config = GenerationConfig(**settings, pad_token_id=5, decoder_start_token_id=5, do_sample=True)
    model = type("Model", (), {"generation_config": model_config})()
    ours = translation.generation_config(model, tokenizer=None)
    theirs = pipeline_generation_config(model_config)
    for key in ("num_beams", "max_new_tokens", "max_length", "pad_token_id", "decoder_start_token_id"):
        assert getattr(ours, key) == getattr(theirs, key), key
    assert ours.do_sample is False  # deterministic, whatever the model's config asks


@pytest.mark.parametrize(
    "variant",
    [{}, {"limits": False}, {"weights": "bin"}],
    ids=["safetensors", "pipeline defaults", "pytorch_model.bin"],
)
def test_equals_transformers_translation_token_for_token(tmp_path, variant: dict) -> None:
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    repo = write_translation_repo(tmp_path / "opus-mt-zh-en", **variant)
    translator = Translator.load(str(repo), device="cpu")
    model = translator.model()
    assert type(model).__name__ == "MarianMTModel"
    assert model.generation_config.num_beams == (None if variant.get("limits") is False else NUM_BEAMS)
    theirs = reference(repo)
    texts = [*(s for s in SOURCE_SENTENCES if "，" not in s), "雪林中的一只红狐狸", "古老的城堡"]  # one piece each
    outputs = set()
    for text in texts if variant.get("limits", True) else texts[:3]:  # 256 new tokens each: slow
        ids, english = theirs(text)
        assert torch.equal(translation.piece_ids(translator.tokenizer, model, text), ids.cpu()), text
        assert translator(text) == english, text
        outputs.add(english)
    # the tiny model's translations depend on the text (256 new tokens of it repeat one word: their ids are compared)
    assert len(outputs) > 1 or variant.get("limits") is False


class FileWatch:
    """Every file Python opens while `active` (an audit hook: they cannot be removed, so it is switched off)."""

    def __init__(self) -> None:
        self.active, self.opened = False, []
        sys.addaudithook(self.hook)

    def hook(self, event: str, args: tuple) -> None:
        if self.active and event == "open" and isinstance(args[0], str | bytes | os.PathLike):
            self.opened.append(os.fsdecode(args[0]))


WATCH = FileWatch()


@pytest.mark.parametrize("text", ["a cat in a hat, 4k, (masterpiece:1.2)\nsunset", "crème brûlée, Zürich, ｆｏｘ"])
def test_english_passes_through_without_loading_the_model(opus_repo, text: str) -> None:
    readied = []
    lazy = Translator(tokenizer=None, model=lambda: readied.append(1))
    request = MiniRequest(text)
    WATCH.active = True
    try:
        assert translation.translate(lazy, text) == text
        assert translation.translated(request, "auto", lambda: torch.device("cpu")) is request
        assert translation.translated(request, str(opus_repo), lambda: torch.device("cpu")) is request
    finally:
        WATCH.active = False
    assert not readied and not WATCH.opened and not translation._loaded


def test_the_prompts_syntax_is_kept(translator, opus_repo) -> None:
    theirs = reference(opus_repo)
    t = {piece: theirs(piece)[1] for piece in ("一只戴着帽子的猫", "油画风格", "城市夜景", "可爱的小狗")}
    expected = f"{t['一只戴着帽子的猫']}, {t['油画风格']}, 4k, ({t['城市夜景']}:1.2)\n{t['可爱的小狗']}"
    assert translator(CHINESE) == expected
    assert (
        translator("（城市夜景：1.3）、【油画风格】；可爱的小狗")
        == f"({t['城市夜景']}:1.3), [{t['油画风格']}]; {t['可爱的小狗']}"
    )


@pytest.mark.parametrize(
    "text, error, message",
    [
        ("", ValueError, "The text to translate is empty"),
        (" \n\t", ValueError, "The text to translate is empty"),
        (None, TypeError, "must be text (a str); got None"),
        (float("nan"), TypeError, "must be text (a str); got nan (type float)"),
        ("猫" * (MAX_CHARACTERS + 1), ValueError, "10,001 characters long, more than the 10,000"),
        ("一只戴着帽子的猫坐在桌子上油画风格" * 8, ValueError, "the translation model reads at once: break it up"),
        ("猫\ud800", ValueError, r"holds '\\ud800' at character 1, half of a UTF-16 pair"),
        ("고양이와 강아지", ValueError, "reads the language 'zho'.*Helsinki-NLP/opus-mt-ja-en.*-ko-en.*-ru-en"),
        ("ふわふわのねこ", ValueError, "reads the language 'zho'.*-mul-en"),
        ("пушистая кошка", ValueError, "does not know most of 'пушистая кошка'"),
    ],
    ids=["empty", "blank", "None", "NaN", "too long", "piece too long", "surrogate", "Korean", "kana", "Cyrillic"],
)
def test_unworkable_text_is_refused_clearly(translator, text, error, message) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        translator(text)


def test_a_piece_translated_to_nothing_is_named(translator, monkeypatch) -> None:
    end = torch.tensor([translator.tokenizer.pad_token_id, translator.tokenizer.eos_token_id])
    monkeypatch.setattr(translation, "piece_ids", lambda tokenizer, model, text: end)
    with pytest.raises(ValueError, match="wrote nothing for the part of the prompt '油画'"):
        translator("a fox, 油画")


def test_a_long_english_prompt_is_taken() -> None:
    text = "a fox, " * (MAX_CHARACTERS // 7 + 10)
    assert len(text) > MAX_CHARACTERS
    assert translation.translate(Translator(None, lambda: None), text) == text
    request = MiniRequest(text[:-2])
    assert translation.translated(request, "auto", lambda: torch.device("cpu")) is request


def test_full_width_weights_and_leading_dots(translator, opus_repo) -> None:
    theirs = reference(opus_repo)
    cat, night = theirs("猫")[1], theirs("城市夜景")[1]
    assert translator("（城市夜景：１．２）, (猫:.5)") == f"({night}:1.2), ({cat}:.5)"


def test_two_threads_load_the_model_once(opus_repo, monkeypatch) -> None:
    loads, results, errors = [], [], []
    real = Translator.load.__func__

    def slow_load(cls, repo, device=None):
        loads.append(repo)
        time.sleep(0.3)  # the second thread arrives while the first loads
        return real(cls, repo, device)

    monkeypatch.setattr(Translator, "load", classmethod(slow_load))

    def run(repo: str) -> None:
        try:
            results.append(translation.translated(MiniRequest("猫"), repo, lambda: torch.device("cpu")).prompt)
        except Exception as error:  # noqa: BLE001  (the test reports it)
            errors.append(error)

    threads = [threading.Thread(target=run, args=(str(opus_repo),)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(loads) == 1 and len(set(results)) == 1
    translation.translated(MiniRequest("油画"), str(opus_repo), lambda: torch.device("cpu"))
    assert len(loads) == 1  # kept for the next call


def test_a_t5_model_translates(opus_repo, tmp_path) -> None:
    repo = write_t5_repo(tmp_path / "t5", opus_repo / "source.spm")
    translator = Translator.load(str(repo), device="cpu")
    assert not hasattr(translator.model().config, "max_position_embeddings")
    for text in ("一只戴着帽子的猫", "油画风格的山水"):  # (the random T5 writes blanks: the ids are compared)
        assert torch.equal(
            translation.piece_ids(translator.tokenizer, translator.model(), text), reference(repo)(text)[0]
        )
    with pytest.raises(ValueError, match="more than the 16 the translation model reads at once"):
        translator("一只戴着帽子的猫坐在桌子上油画风格" * 3)


class RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def damaged(repo: Path, tmp_path: Path, config: dict | None = None, missing: str | None = None) -> Path:
    copy = Path(shutil.copytree(repo, tmp_path / "repo"))
    if config:
        settings = json.loads((copy / "config.json").read_text())
        (copy / "config.json").write_text(json.dumps({**settings, **config}))
    if missing:
        (copy / missing).unlink()
    return copy


@pytest.mark.parametrize(
    "change, message",
    [
        ({"config": {"model_type": "clip", "architectures": ["CLIPModel"]}}, "holds a CLIPModel, which prompt"),
        ({"config": {"model_type": "bart", "architectures": ["BartForConditionalGeneration"]}}, "runs MarianMT"),
        ({"config": {"model_type": "whisper", "architectures": ["WhisperForConditionalGeneration"]}}, "and T5"),
        ({"config": {"normalize_before": True}}, "normalize_before=True asks for a network transformers does not"),
        ({"config": {"hidden_size": 32}}, "hidden_size=32 asks for a network"),
        ({"config": {"d_model": "16"}}, "has the wrong type"),
        ({"missing": "target.spm"}, "target.spm' is missing"),
        ({"missing": "model.safetensors"}, "has no weights"),
    ],
    ids=[
        "not a translation model",
        "BART",
        "speech",
        "legacy setting",
        "alias",
        "wrong type",
        "no target.spm",
        "no weights",
    ],
)
def test_wrong_repos_are_refused_clearly(opus_repo, tmp_path, change: dict, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        Translator.load(str(damaged(opus_repo, tmp_path, **change)), device="cpu")


def test_a_pickle_that_runs_code_is_refused(opus_repo, tmp_path) -> None:
    repo = damaged(opus_repo, tmp_path, missing="model.safetensors")
    with open(repo / "pytorch_model.bin", "wb") as file:
        pickle.dump({"model.shared.weight": RunsCode(tmp_path / "ran")}, file)
    with pytest.raises(CheckpointError):
        Translator.load(str(repo), device="cpu")
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_only_the_needed_files_are_fetched(tmp_path, monkeypatch, weights: str) -> None:
    from huggingface_hub import constants as hf_constants
    from huggingface_hub.errors import EntryNotFoundError

    served = write_translation_repo(tmp_path / "served", weights=weights)
    asked = []

    def recording_download(repo_id, filename, subfolder=None, local_dir=None, **options):
        asked.append(filename)
        if not (served / filename).is_file():
            raise EntryNotFoundError(f"404 {filename}")
        Path(local_dir).mkdir(parents=True, exist_ok=True)
        shutil.copy(served / filename, Path(local_dir) / filename)
        return str(Path(local_dir) / filename)

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "hf_hub_download", recording_download)
    Translator.load(device="cpu")("猫")
    weight_files = ["model.safetensors"] if weights == "safetensors" else ["model.safetensors", "pytorch_model.bin"]
    assert asked[: 1 + len(weight_files)] == ["config.json", *weight_files]
    assert set(asked) <= {"config.json", *weight_files, *translation.MARIAN_TOKENIZER, *translation.OPTIONAL_FILES}
    assert set(translation.MARIAN_TOKENIZER) <= set(asked) and not set(DECOYS) & set(asked)


def test_offline_without_the_download_says_so() -> None:
    with pytest.raises(CheckpointError, match="is not downloaded yet and the Hub cannot be reached"):
        Translator.load(device="cpu")


@pytest.mark.parametrize(
    "value, expected",
    [(None, None), ("auto", TRANSLATION_REPO), (" someone/opus-mt-ja-en ", "someone/opus-mt-ja-en")],
)
def test_translate_argument(value, expected) -> None:
    assert translation.check_translate(value) == expected


@pytest.mark.parametrize("value, error", [(3, TypeError), ("  ", ValueError), (True, TypeError)])
def test_translate_argument_refused(value, error) -> None:
    with pytest.raises(error, match="translate"):
        translation.check_translate(value)


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(image) for image in images])


def test_kandinsky22_generate_translates(tiny_prior_repo, tiny_decoder_repo, opus_repo) -> None:
    in_store(opus_repo)
    model = Kandinsky22.load(prior=str(tiny_prior_repo), decoder=str(tiny_decoder_repo), dtype="fp32", device="cpu")
    settings = dict(negative="雨天，霓虹灯", seed=3, steps=2, prior_steps=2, width=64, height=64)
    english = Translator.load(device="cpu")
    translated = model.generate(CHINESE, translate="auto", **settings)
    by_hand = model.generate(english(CHINESE), **{**settings, "negative": english("雨天，霓虹灯")})
    untranslated = model.generate(CHINESE, **settings)
    assert np.array_equal(pixels(translated), pixels(by_hand))
    assert not np.array_equal(pixels(translated), pixels(untranslated))
    with pytest.raises(ValueError, match="steps"):  # settings are checked before the translation model loads
        model.generate(CHINESE, translate="someone/not-downloaded", steps=0)


def test_karlo_generate_translates(opus_repo) -> None:
    model = SimpleNamespace(
        text_encoder=SimpleNamespace(device=torch.device("cpu")), run=lambda request, ranker: request
    )
    request = Karlo.generate(model, "雪林中的狐狸", translate=str(opus_repo), seed=4)
    assert request.prompt == Translator.load(str(opus_repo), device="cpu")("雪林中的狐狸") and request.seed == 4


def test_dalle_mini_generate_translates_and_its_refusal_names_the_option(tmp_path, opus_repo, monkeypatch) -> None:
    in_store(opus_repo)
    for variant in dalle_bart.HYPERPARAMETERS:  # the toy size, as a hyperparameters.json would give it
        monkeypatch.setitem(dalle_bart.HYPERPARAMETERS, variant, Hyperparameters(**TINY_MIN_DALLE))
    repo = write_min_dalle_repo(tmp_path / "min-dalle", "mini", TINY_MIN_DALLE)
    model = DalleMini.load(repo=str(repo), variant="mini", dtype="fp32", device="cpu")
    prompt = "日落时悬崖上灯塔的水彩画"
    with pytest.raises(ValueError, match=r'translate="auto"\) in Python, --translate on the command line'):
        model.generate(prompt, seed=1, batch_size=1)
    english = Translator.load(device="cpu")(prompt)
    translated = model.generate(prompt, translate="auto", seed=1, batch_size=1)
    assert np.array_equal(pixels(translated), pixels(model.generate(english, seed=1, batch_size=1)))
