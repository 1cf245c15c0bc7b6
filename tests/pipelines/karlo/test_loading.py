"""Karlo's repos load in their real layout, reading only what they need; mistakes are one-line errors, before any
model loads where they can be."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub.errors import EntryNotFoundError

from dalle_nodes.engine import checkpoints, hub
from dalle_nodes.engine.checkpoints import CheckpointError
from dalle_nodes.engine.hub import Source
from dalle_nodes.engine.images import to_pil
from dalle_nodes.pipelines import Kandinsky22, Karlo, Upscaler
from dalle_nodes.pipelines.karlo import REPO, Request, loading, stages
from dalle_nodes.pipelines.stage_model import StageModel
from dalle_nodes.pipelines.upscale import PRESETS
from tiny_karlo import model_index
from tiny_upscalers import rrdbnet_state, write_upscaler

STEPS = dict(prior_steps=2, decoder_steps=2, super_res_steps=2)


def test_the_real_layout(tiny_karlo_repo) -> None:
    """The premises of the tests below: the layout diffusers 0.42 cannot load, the `.bin` twins."""
    assert model_index(tiny_karlo_repo)["text_proj"] == ["unclip", "UnCLIPTextProjModel"]
    assert not (tiny_karlo_repo / "tokenizer" / "tokenizer.json").exists()
    for folder in ("prior", "decoder", "text_proj", "super_res_first", "super_res_last"):
        assert (tiny_karlo_repo / folder / "diffusion_pytorch_model.bin").is_file()
    assert (tiny_karlo_repo / "text_encoder" / "pytorch_model.bin").is_file()


def test_a_local_folder_reads_only_the_safetensors(tiny_karlo_repo, tmp_path, monkeypatch) -> None:
    repo = shutil.copytree(tiny_karlo_repo, tmp_path / "karlo")
    for twin in repo.rglob("*.bin"):
        twin.write_bytes(b"not a pickle")  # read, it would fail to load
    monkeypatch.setattr(checkpoints, "read_pickle", lambda *a, **k: pytest.fail("a pickle was read"))
    opened = []
    real_open = open

    def watched_open(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", watched_open)
    karlo = Karlo.load(str(repo), dtype="fp32", device="cpu")
    assert karlo.prior is not None and karlo.image_encoder is None
    assert not [path for path in opened if path.endswith(".bin")]


def serve_from(folder: Path, fetched: list[str]):
    """hf_hub_download from a folder standing in for the Hub, recording every file asked for."""

    def download(repo_id, filename, subfolder=None, revision=None, local_dir=None, **kwargs):
        rel = f"{subfolder}/{filename}" if subfolder else filename
        fetched.append(rel)
        if not (folder / rel).is_file():
            raise EntryNotFoundError(rel)
        target = Path(local_dir) / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(folder / rel, target)
        return str(target)

    return download


def test_a_hub_repo_downloads_only_the_safetensors(tiny_karlo_repo, monkeypatch) -> None:
    fetched: list[str] = []
    monkeypatch.setattr(hub, "hf_hub_download", serve_from(tiny_karlo_repo, fetched))
    Karlo.load(REPO, dtype="fp32", device="cpu")
    weights = [name for name in fetched if name.endswith((".bin", ".safetensors"))]
    assert not [name for name in weights if name.endswith(".bin")]
    folders = ("prior", "text_proj", "decoder", "super_res_first", "super_res_last")
    expected = [f"{folder}/diffusion_pytorch_model.safetensors" for folder in folders]
    assert sorted(weights) == sorted([*expected, "text_encoder/model.safetensors"])
    stored = Path(os.environ["DALLE_NODES_HOME"]) / REPO.replace("/", "--")
    assert not list(stored.rglob("*.bin"))


def test_download_bars_count_every_file(tiny_karlo_repo, monkeypatch) -> None:
    counted = []

    def progress(files: int) -> hub.DownloadProgress:
        counted.append(hub.DownloadProgress(files))
        return counted[-1]

    monkeypatch.setattr("dalle_nodes.pipelines.karlo.api.ConsoleDownload", progress)
    Karlo.load(str(tiny_karlo_repo), dtype="fp32", device="cpu")
    assert counted[0].index == counted[0].files


@pytest.fixture
def no_index(tiny_karlo_repo, tmp_path) -> Path:
    """Karlo's layout but for its model_index.json: a folder whose kind nothing says."""
    folder = shutil.copytree(tiny_karlo_repo, tmp_path / "copy")
    (folder / "model_index.json").unlink()
    return folder


@pytest.mark.parametrize(
    "fixture, message",
    [
        (
            "tiny_prior_repo",
            "is the Kandinsky 2.2 prior: load it as one \\(Kandinsky22.load\\(prior=…\\), --prior, or Lo",
        ),
        ("tiny_decoder_repo", "is a Kandinsky 2.2 decoder: load it as one \\(Kandinsky22.load\\(decoder=…\\), --deco"),
        ("no_index", "is no Karlo repo \\(it has no model_index.json\\), not Karlo: give kakaobrain/karlo-v1-alpha "),
    ],
)
def test_a_kandinsky_repo_is_refused_before_any_model_loads(request, fixture, message, monkeypatch) -> None:
    monkeypatch.setattr(checkpoints, "load_strict", lambda *a: pytest.fail("a model was loaded"))
    with pytest.raises(CheckpointError, match=message) as error:
        Karlo.load(str(request.getfixturevalue(fixture)), dtype="fp32", device="cpu")
    assert "\n" not in str(error.value)


KARLO_AS = "is Karlo \\(DALL·E 2 as the paper drew it\\): load it with Karlo.load\\(…\\) or --model karlo; it is not"


@pytest.mark.parametrize(
    "role, given, message",
    [
        ("prior", "tiny_karlo_repo", f"{KARLO_AS} a Kandinsky 2.2 prior \\(prior=…\\)"),
        ("prior", "tiny_karlo_variations_repo", "is Karlo's image-variations repo: .* not a Kandinsky 2.2 prior"),
        ("prior", "tiny_decoder_repo", "is a Kandinsky 2.2 decoder: give it as decoder=…; it is not a Kandinsky 2.2 p"),
        ("decoder", "tiny_karlo_repo", f"{KARLO_AS} a Kandinsky 2.2 decoder"),
    ],
)
def test_another_repo_given_to_kandinsky_is_refused_by_name(
    request, tiny_prior_repo, tiny_decoder_repo, role, given, message, monkeypatch
):
    """As the prior or as the decoder, before any model loads (the repos' model_index.json is read first)."""
    monkeypatch.setattr("dalle_nodes.pipelines.kandinsky22.loading.load_strict", lambda *a: pytest.fail("loaded"))
    monkeypatch.setattr("dalle_nodes.pipelines.kandinsky22.loading.clip_model", lambda *a: pytest.fail("loaded"))
    repos = {"prior": str(tiny_prior_repo), "decoder": str(tiny_decoder_repo)}
    repos[role] = str(request.getfixturevalue(given))
    with pytest.raises(CheckpointError, match=message) as error:
        Kandinsky22.load(**repos, dtype="fp32", device="cpu")
    assert "\n" not in str(error.value)


@pytest.fixture(scope="module")
def karlo(tiny_karlo_repo) -> Karlo:
    return Karlo.load(str(tiny_karlo_repo), dtype="fp32", device="cpu")


@pytest.mark.parametrize(
    "settings, error, message",
    [
        ({"prior_guidance": math.nan}, ValueError, "prior_guidance must be between 0.0 and 100.0 \\(got nan\\)"),
        ({"decoder_guidance": math.inf}, ValueError, "decoder_guidance must be between 0.0 and 100.0"),
        ({"decoder_steps": 1}, ValueError, "decoder_steps must be between 2 and 1000"),
        ({"super_res_steps": 2.5}, TypeError, "super_res_steps must be a whole number"),
        ({"batch_size": 0}, ValueError, "batch_size must be between 1 and 64"),
        ({"upscale": "RealESRGAN_x8"}, ValueError, "upscale must be None, an Upscaler or one of RealESRGAN_x4plus"),
        ({"width": 512}, TypeError, "unexpected keyword argument 'width'"),
    ],
)
def test_bad_settings_are_refused_before_sampling(karlo, settings, error, message, monkeypatch) -> None:
    monkeypatch.setattr("dalle_nodes.pipelines.karlo.api.prior_stage", lambda *a: pytest.fail("sampled"))
    with pytest.raises(error, match=message):
        karlo.generate("a red fox", **settings)


def test_each_repo_does_its_own_job(karlo, tiny_karlo_variations_repo) -> None:
    picture = to_pil(torch.rand(1, 32, 32, 3))[0]
    with pytest.raises(ValueError, match="Image variations need the CLIP image encoder of .*-image-variations"):
        karlo.variations(picture, **{k: v for k, v in STEPS.items() if k != "prior_steps"})
    variations = Karlo.load(str(tiny_karlo_variations_repo), dtype="fp32", device="cpu")
    with pytest.raises(ValueError, match="image-variations repo, which has no prior: load kakaobrain/karlo-v1-alpha"):
        variations.generate("a red fox", **STEPS)


@pytest.mark.parametrize("side", [128, 63])
def test_super_res_takes_only_the_decoders_size(karlo, side) -> None:
    first, last = StageModel.held(karlo.super_res_first), StageModel.held(karlo.super_res_last)
    schedule = Request("x", **STEPS).super_res_schedule
    with pytest.raises(ValueError, match=f"The image is {side}x64: Karlo's super-resolution takes the decoder's 64x64"):
        stages.super_res_stage(first, last, torch.rand(1, 64, side, 3), schedule, torch.Generator())


def test_decoder_refuses_embeddings_of_another_clip(karlo) -> None:
    decoder, text_proj = StageModel.held(karlo.decoder), StageModel.held(karlo.text_proj)
    run = stages.StageRun(Request("x", **STEPS).decoder_schedule, 8.0)
    message = "but this model reads \\[batch, 16\\]: .* this decoder's family: Kandinsky 2.2's for its decoder, Karlo's"
    with pytest.raises(ValueError, match=message):
        stages.decoder_stage(decoder, text_proj, torch.zeros(1, 1280), None, run, torch.Generator())


def test_upscale_takes_generate_to_1024(karlo, monkeypatch) -> None:
    preset = PRESETS["RealESRGAN_x4plus"]
    store = Path(os.environ["DALLE_NODES_HOME"]) / preset.repo.replace("/", "--")
    write_upscaler(store / preset.filename, rrdbnet_state(4))
    big = karlo.generate("a red fox", seed=1, upscale="RealESRGAN_x4plus", **STEPS)
    small = karlo.generate("a red fox", seed=1, **STEPS)
    expected = Upscaler.load("RealESRGAN_x4plus").upscale(small)
    assert big[0].size == (1024, 1024)
    assert np.array_equal(np.asarray(big[0]), np.asarray(expected[0]))


@pytest.mark.parametrize(
    "folder, key, refused",
    [
        (
            "prior_scheduler",
            "clip_sample_range",
            "{'clip_sample_range': 1.0}",
        ),  # the default isn't the prior's
        ("decoder_scheduler", "variance_type", "{'variance_type': 'fixed_small_log'}"),
        ("super_res_scheduler", "clip_sample_range", None),  # its default is the super-resolution's own
    ],
)
def test_a_scheduler_key_left_out_means_unclips_default(tiny_karlo_repo, tmp_path, folder, key, refused) -> None:
    """A key missing from scheduler_config.json is what UnCLIPScheduler defaults it to, and is judged as such."""
    repo = shutil.copytree(tiny_karlo_repo, tmp_path / "repo")
    path = repo / folder / "scheduler_config.json"
    config = json.loads(path.read_text())
    assert key in config
    path.write_text(json.dumps({k: v for k, v in config.items() if k != key}))
    if refused is None:
        loading.check_scheduler(Source(str(repo)), folder)
        return
    with pytest.raises(CheckpointError, match=re.escape(f"/{folder} asks for {refused}; only Karlo's schedule")):
        loading.check_scheduler(Source(str(repo)), folder)
