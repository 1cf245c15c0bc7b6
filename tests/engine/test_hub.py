"""engine/hub.py: repo ids and local folders resolve to verified files; every user mistake is a clear error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from dalle_nodes.engine import checkpoints, hub
from dalle_nodes.engine.checkpoints import CheckpointError
from dalle_nodes.engine.hub import Source
from dalle_nodes.pipelines.kandinsky22 import loading

PRIOR_ID = "kandinsky-community/kandinsky-2-2-prior"


def copy_repo(repo: Path, to: Path) -> Path:
    shutil.copytree(repo, to)
    return to


def load_prior(repo: str | Path, **source) -> torch.nn.Module:
    return loading.load_prior(Source(str(repo), **source), torch.float32)


def test_local_folder_loads(tiny_prior_repo) -> None:
    prior = load_prior(tiny_prior_repo)
    assert prior.config.embedding_dim == 16
    assert not any(t.is_meta for t in prior.state_dict().values())


def test_repo_id_resolves_from_store_offline(tiny_prior_repo, tmp_path, monkeypatch) -> None:
    """Files downloaded earlier into the models folder (`<store>/org--name/…`) are used with HF_HUB_OFFLINE=1."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    store = tmp_path / "store"
    copy_repo(tiny_prior_repo, store / "kandinsky-community--kandinsky-2-2-prior")
    assert load_prior(PRIOR_ID, store=store).config.layers == 2


def test_repo_id_resolves_from_hf_cache_offline(tiny_prior_repo, tmp_path, monkeypatch) -> None:
    """Without a store, downloads live in the Hugging Face cache (snapshots/<commit>/ and refs/main)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    repo = tmp_path / "hf" / "models--kandinsky-community--kandinsky-2-2-prior"
    commit = "0123456789abcdef0123456789abcdef01234567"
    copy_repo(tiny_prior_repo, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    assert load_prior(PRIOR_ID).config.layers == 2


def test_repo_not_downloaded_while_offline(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="not downloaded yet.*HF_HUB_OFFLINE"):
        load_prior("someone/no-such-repo", store=tmp_path)


def test_unknown_repo_on_the_hub(monkeypatch) -> None:
    """The Hub's 404 for a repo becomes advice, not a traceback (simulated: no network here)."""
    from huggingface_hub.errors import RepositoryNotFoundError

    def not_found(*args, **kwargs):
        error = RepositoryNotFoundError.__new__(RepositoryNotFoundError)  # its constructor wants an HTTP response
        Exception.__init__(error, "404 Client Error: Repository Not Found")
        raise error

    monkeypatch.setattr(hub, "hf_hub_download", not_found)
    with pytest.raises(CheckpointError, match="'someone/no-such-repo' was not found.*Check the spelling"):
        load_prior("someone/no-such-repo")


@pytest.mark.parametrize(
    "repo, message",
    [
        ("/no/such/folder", "Local folder '/no/such/folder' does not exist"),
        ("./relative/missing", "does not exist"),
        ("not a repo id", "neither a local folder nor a Hub repo id"),
    ],
)
def test_bad_repo_strings(repo, message) -> None:
    with pytest.raises(CheckpointError, match=message):
        load_prior(repo)


def test_missing_weight_file(tiny_prior_repo, tmp_path) -> None:
    repo = copy_repo(tiny_prior_repo, tmp_path / "prior")
    (repo / "prior" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="has no weights in 'prior/'"):
        load_prior(repo)


def test_interrupted_download_is_not_taken_for_complete(tiny_prior_repo, tmp_path, monkeypatch) -> None:
    """huggingface_hub writes `<file>.incomplete` and renames at the end; an interrupted file is never used."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    store = tmp_path / "store"
    repo = copy_repo(tiny_prior_repo, store / "kandinsky-community--kandinsky-2-2-prior")
    weights = repo / "prior" / "diffusion_pytorch_model.safetensors"
    partial = repo / ".cache" / "huggingface" / "download" / "prior" / "x.incomplete"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(weights.read_bytes()[:1000])
    weights.unlink()
    with pytest.raises(CheckpointError, match="not downloaded yet"):
        load_prior(PRIOR_ID, store=store)


def test_wrong_repo_for_the_loader(tiny_decoder_repo) -> None:
    with pytest.raises(CheckpointError, match="has no 'prior/config.json'.*not a checkpoint of the expected kind"):
        load_prior(tiny_decoder_repo)


def test_config_of_another_class(tiny_prior_repo, tmp_path) -> None:
    repo = copy_repo(tiny_prior_repo, tmp_path / "prior")
    config = json.loads((repo / "prior" / "config.json").read_text())
    (repo / "prior" / "config.json").write_text(json.dumps({**config, "_class_name": "UNet2DConditionModel"}))
    with pytest.raises(CheckpointError, match="describes a UNet2DConditionModel, not a PriorTransformer"):
        load_prior(repo)


def test_unsupported_scheduler(tiny_prior_repo, tmp_path) -> None:
    repo = copy_repo(tiny_prior_repo, tmp_path / "prior")
    path = repo / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "prediction_type": "epsilon"}))
    with pytest.raises(CheckpointError, match="prediction_type.*only the Kandinsky 2.2 schedule"):
        load_prior(repo)


def test_decoder_of_unknown_input_channels_is_refused_before_loading(tiny_decoder_repo, tmp_path) -> None:
    repo = copy_repo(tiny_decoder_repo, tmp_path / "decoder")
    path = repo / "unet" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "in_channels": 5}))
    (repo / "unet" / "diffusion_pytorch_model.safetensors").unlink()  # refused from the config alone
    with pytest.raises(CheckpointError, match="unsupported UNet setting in_channels=5"):
        loading.load_unet(Source(str(repo)), torch.float32)


def test_movq_with_legacy_attention_names_loads(tiny_decoder_repo, tmp_path) -> None:
    """Checkpoints saved before diffusers 0.14 name attention layers query/key/value/proj_attn."""
    from safetensors.torch import save_file

    repo = copy_repo(tiny_decoder_repo, tmp_path / "decoder")
    weights = repo / "movq" / "diffusion_pytorch_model.safetensors"
    modern = checkpoints.read_state_dict(weights)
    legacy_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    legacy = {}
    for key, value in modern.items():
        for new, old in legacy_names.items():
            if "attentions" in key and f".{new}." in key:
                key = key.replace(f".{new}.", f".{old}.")
        legacy[key] = value
    assert any(".query." in key for key in legacy)
    save_file(legacy, weights)
    movq = loading.load_movq(Source(str(repo)), torch.float32)
    assert all(torch.equal(movq.state_dict()[k], v) for k, v in modern.items())
