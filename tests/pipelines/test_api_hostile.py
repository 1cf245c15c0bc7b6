"""The Python API refuses every wrong argument with a ValueError or TypeError that names it, before any model loads
or any file is read: Request is checked when made, `.load` checks its arguments before it looks for a file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dalle_nodes.pipelines import DalleMini, Kandinsky22, Upscaler, dalle_mini, kandinsky22
from dalle_nodes.pipelines.dalle_mini import api as mini_api
from dalle_nodes.pipelines.kandinsky22 import api as kandinsky_api
from dalle_nodes.pipelines.upscale import api as upscale_api
from tiny_upscalers import compact_state, write_upscaler

PICTURE = Image.new("RGBA", (64, 64))  # fully transparent: all of it is repainted
SURROGATE = "a \ud800 fox"  # half of a UTF-16 pair: Python holds it, UTF-8 (and every tokenizer) refuses it


class Untouchable:
    """A model stand-in that fails the test when anything reads it: the checks ran before any model work."""

    def __getattr__(self, name: str):
        raise AssertionError(f"a model was used ({name}) before the arguments were checked")


def untouchable(cls):
    """A Kandinsky22 or DalleMini whose every model is Untouchable."""
    return cls(*(Untouchable() for field in dataclasses.fields(cls) if field.default is dataclasses.MISSING))


KANDINSKY_SETTINGS = [
    ({"prompt": None}, TypeError, "The prompt must be text \\(a str\\); got None"),
    ({"prompt": 5}, TypeError, "The prompt must be text"),
    ({"prompt": b"a fox"}, TypeError, "The prompt must be text"),
    ({"prompt": SURROGATE}, ValueError, "The prompt holds '\\\\ud800' at character 2, half of a UTF-16 pair"),
    ({"negative": "\udcff"}, ValueError, "The negative prompt holds '\\\\udcff' at character 0"),
    ({"negative": 3}, TypeError, "The negative prompt must be text"),
    ({"seed": 1.5}, TypeError, "seed must be a whole number \\(an int\\); got 1.5 \\(type float\\)"),
    ({"seed": "3"}, TypeError, "seed must be a whole number \\(an int\\); got '3' \\(type str\\)"),
    ({"steps": True}, TypeError, "steps must be a whole number .*got True \\(type bool\\)"),
    ({"steps": 2.5}, TypeError, "steps must be a whole number"),
    ({"steps": None}, TypeError, "steps must be a number between 1 and 999; got None"),
    ({"prior_steps": 3.5}, TypeError, "prior_steps must be a whole number"),
    ({"batch_size": "2"}, TypeError, "batch_size must be a whole number .*got '2' \\(type str\\)"),
    ({"batch_size": 1.5}, TypeError, "batch_size must be a whole number"),
    ({"best_of": 2.5}, TypeError, "best_of must be a whole number"),
    ({"width": 64.0}, TypeError, "width must be a whole number"),
    ({"height": "64"}, TypeError, "height must be a whole number"),
    ({"guidance": float("nan")}, ValueError, "guidance must be between 0.0 and 100.0 \\(got nan\\)"),
    ({"prior_guidance": float("inf")}, ValueError, "prior_guidance must be between 0.0 and 100.0"),
    ({"guidance": "4"}, TypeError, "guidance must be a number between 0.0 and 100.0; got '4' \\(type str\\)"),
    ({"guidance": torch.tensor(4.0)}, TypeError, "guidance must be a number .*type Tensor"),
    ({"karras": "no"}, TypeError, "karras must be True or False; got 'no'"),
    ({"karras": None}, TypeError, "karras must be True or False; got None"),
    ({"image": Image.new("RGBA", (0, 0))}, ValueError, "The image is 0x0 px: it has no pixels"),
    ({"image": Image.new("RGBA", (0, 64))}, ValueError, "The image is 0x64 px"),
    ({"image": PICTURE, "mask": Image.new("L", (0, 0))}, ValueError, "The mask is 0x0 px"),
    ({"image": 5}, ValueError, "The image must be a PIL image or an image file's path"),
    ({"image": PICTURE, "mask": torch.ones(1, 64, 64)}, ValueError, "The mask must be a PIL image"),
    ({"image": PICTURE, "outpaint": 64.0}, ValueError, "outpaint takes pixels for every side"),
    ({"image": PICTURE, "outpaint": {"left": "a"}}, ValueError, "The outpaint left must be a whole number"),
]


@pytest.mark.parametrize("settings, error, message", KANDINSKY_SETTINGS)
def test_kandinsky22_refuses_wrong_settings_before_any_model_work(settings, error, message) -> None:
    with pytest.raises(error, match=message):
        kandinsky22.Request(**{"prompt": "a red fox", **settings})
    prompt = settings.pop("prompt", "a red fox")
    with pytest.raises(error, match=message):  # generate builds the Request before it touches a model
        untouchable(Kandinsky22).generate(prompt, **settings)


def test_numpy_integers_are_taken_as_python_ints() -> None:
    """torch's generators refuse numpy integers: the Request stores Python ints."""
    request = kandinsky22.Request("a red fox", seed=np.int64(3), steps=np.int32(4), width=np.int64(128))
    assert [type(value) for value in (request.seed, request.steps, request.width)] == [int, int, int]
    assert torch.Generator().manual_seed(request.seed).initial_seed() == 3
    assert type(dalle_mini.Request("a fox", seed=np.uint64(7), top_k=np.int16(5)).seed) is int


def test_edit_needs_a_picture_and_a_ranker_must_be_one() -> None:
    model = untouchable(Kandinsky22)
    with pytest.raises(TypeError, match="edit needs the picture to edit: image is a PIL image"):
        model.edit("a red fox", None, outpaint=64)
    with pytest.raises(TypeError, match="ranker must be a rerank.Ranker.*got 5 \\(type int\\)"):
        model.generate("a red fox", ranker=5, best_of=2, width=64, height=64)
    with pytest.raises(TypeError, match="ranker must be a rerank.Ranker"):
        untouchable(DalleMini).generate("a fox", ranker="clip", best_of=4)


MINI_SETTINGS = [
    ({"prompt": None}, TypeError, "The prompt must be text"),
    ({"prompt": SURROGATE}, ValueError, "The prompt holds '\\\\ud800'"),
    ({"seed": 1.5}, TypeError, "seed must be a whole number"),
    ({"batch_size": "2"}, TypeError, "batch_size must be a whole number"),
    ({"top_k": 2.5}, TypeError, "top_k must be a whole number"),
    ({"best_of": 4.5}, TypeError, "best_of must be a whole number"),
    ({"temperature": float("nan")}, ValueError, "temperature must be between"),
    ({"supercondition": "16"}, TypeError, "supercondition must be a number .*got '16'"),
]


@pytest.mark.parametrize("settings, error, message", MINI_SETTINGS)
def test_dalle_mini_refuses_wrong_settings_before_any_model_work(settings, error, message) -> None:
    with pytest.raises(error, match=message):
        dalle_mini.Request(**{"prompt": "a lighthouse", **settings})
    prompt = settings.pop("prompt", "a lighthouse")
    with pytest.raises(error, match=message):
        untouchable(DalleMini).generate(prompt, **settings)


class ReadAFile(Exception):
    """Raised by the stand-in for the loaders' first file look-up."""


@pytest.fixture()
def no_file_reads(monkeypatch) -> list:
    """The loaders' first look-up for a file raises ReadAFile, with what it was asked for: a check that comes after
    it would never be reached."""
    asked = []

    def look_up(*args, **kwargs):
        asked.append(args)
        raise ReadAFile

    for module in (kandinsky_api, mini_api):
        monkeypatch.setattr(module, "source_from_input", look_up)
    monkeypatch.setattr(upscale_api, "locate", look_up)
    return asked


LOAD_ARGUMENTS = [
    ({"prior": None}, TypeError, "prior must be a Hub repo id or a local folder \\(a str\\); got None"),
    ({"decoder": 5}, TypeError, "decoder must be a Hub repo id or a local folder"),
    ({"dtype": "float32"}, ValueError, "dtype must be one of auto, fp32, fp16, bf16 \\(got 'float32'\\)"),
    ({"dtype": torch.float32}, TypeError, "dtype must be auto, fp32, fp16 or bf16 \\(a str\\); got torch.float32"),
    ({"dtype": ["fp32"]}, TypeError, "dtype must be auto, fp32, fp16 or bf16"),
    ({"device": "gpu"}, ValueError, "device 'gpu' is not a device name torch knows: use cpu, cuda"),
    ({"device": 3.5}, TypeError, "device must be a str such as 'cuda'.*got 3.5"),
    ({"device": "meta"}, ValueError, "device 'meta' cannot run models: use cpu or one of cuda, mps, xpu"),
]


@pytest.mark.parametrize("arguments, error, message", LOAD_ARGUMENTS)
@pytest.mark.parametrize("cls", [Kandinsky22, DalleMini])
def test_load_checks_its_arguments_before_reading_a_file(no_file_reads, cls, arguments, error, message) -> None:
    if cls is DalleMini:
        arguments = {("repo" if name in ("prior", "decoder") else name): value for name, value in arguments.items()}
        message = message.replace("prior must", "repo must").replace("decoder must", "repo must")
    with pytest.raises(error, match=message):
        cls.load(**{"device": "cpu", **arguments})
    assert not no_file_reads


def test_dalle_mini_load_checks_the_variant_first(no_file_reads) -> None:
    with pytest.raises(TypeError, match="variant must be mega or mini \\(a str\\); got None"):
        DalleMini.load(variant=None, device="cpu")
    with pytest.raises(TypeError, match="variant must be mega or mini"):
        DalleMini.load(variant=["mini"], device="cpu")
    assert not no_file_reads


@pytest.mark.parametrize("cls", [Kandinsky22, DalleMini])
def test_a_device_the_machine_lacks_is_refused_before_loading(no_file_reads, monkeypatch, cls) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device 'cuda' is not on this machine: torch sees 0 cuda device\\(s\\)"):
        cls.load(device="cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="device 'cuda:7' is not on this machine: torch sees 1 cuda device"):
        cls.load(device="cuda:7")
    assert not no_file_reads
    with pytest.raises(ReadAFile):  # the one there is passes
        cls.load(device=torch.device("cuda:0"), dtype="fp32")


def test_folders_given_as_paths_are_read_as_their_names(no_file_reads) -> None:
    with pytest.raises(ReadAFile):
        Kandinsky22.load(prior=Path("/models/prior"), device="cpu")
    with pytest.raises(ReadAFile):
        DalleMini.load(repo=Path("/models/min-dalle"), device="cpu")
    with pytest.raises(ReadAFile):
        Upscaler.load("custom", filename=Path("/models/x4.pth"))
    assert [asked[0] for asked in no_file_reads] == ["/models/prior", "/models/min-dalle", "custom"]
    assert no_file_reads[2][2] == "/models/x4.pth"


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"preset": None}, "preset must be a preset's name or custom \\(a str\\); got None"),
        ({"preset": "custom", "filename": None}, "filename must be the weight file's name"),
        ({"preset": "custom", "repo_id": None, "filename": "x4.pth"}, "repo_id must be a Hub repo id"),
        ({"preset": "custom", "repo_id": "a/b", "filename": "x4.pth", "revision": None}, "revision must be a branch"),
    ],
)
def test_upscaler_load_checks_its_arguments_before_reading_a_file(no_file_reads, arguments, message) -> None:
    with pytest.raises(TypeError, match=message):
        Upscaler.load(**arguments)
    assert not no_file_reads


SMALL = Image.new("RGB", (16, 16))


@pytest.mark.parametrize(
    "images, settings, error, message",
    [
        (None, {}, TypeError, "images must be a PIL image or a list of them .*got None"),
        (
            torch.zeros(1, 16, 16, 3),
            {},
            TypeError,
            "images must be a PIL image .*got a torch.float32 tensor of shape \\[1, 16, 16, 3\\]",
        ),
        ("photo.png", {}, TypeError, "images must be a PIL image or a list of them \\(Image.open reads a file\\)"),
        ([SMALL, None], {}, TypeError, "images must be a PIL image .*got a list holding Image, NoneType"),
        ([], {}, ValueError, "images is an empty list"),
        (Image.new("RGB", (0, 0)), {}, ValueError, "images\\[0\\] is 0x0 px: it has no pixels"),
        (SMALL, {"tile": 1.5}, TypeError, "tile must be a whole number"),
        (SMALL, {"tile": "64"}, TypeError, "tile must be a whole number"),
        (SMALL, {"overlap": True}, TypeError, "overlap must be a whole number"),
        (SMALL, {"scale_to": float("nan")}, ValueError, "scale_to must be between"),
        (SMALL, {"compile": "yes"}, TypeError, "compile must be True or False; got 'yes'"),
        (SMALL, {"precision": None}, ValueError, "precision must be one of auto"),
    ],
)
def test_upscale_refuses_wrong_arguments_before_any_model_work(images, settings, error, message) -> None:
    with pytest.raises(error, match=message):
        Upscaler(Untouchable()).upscale(images, **settings)


def test_sixteen_bit_grey_pictures_are_upscaled_as_they_look(tmp_path) -> None:
    """PIL's convert("RGB") clips 16-bit grey at 255 (nearly white); the picture is scaled to 8 bits first."""
    upscaler = Upscaler.load("custom", filename=str(write_upscaler(tmp_path / "x4.safetensors", compact_state(4))))
    grey = np.random.default_rng(0).integers(0, 256, (12, 20), dtype=np.uint8)
    wide = Image.fromarray(grey.astype(np.uint16) * 257)  # the same picture in 16 bits
    assert wide.mode == "I;16"
    (big,) = upscaler.upscale(wide)
    (expected,) = upscaler.upscale(Image.fromarray(grey, "L"))
    assert big.size == (80, 48) and np.array_equal(np.asarray(big), np.asarray(expected))
