"""engine/hub.py: repo ids and local folders resolve to verified files; every user mistake is a clear error."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from dalle_nodes.engine import hub
from dalle_nodes.engine.hub import CheckpointError, Source
from dalle_nodes.pipelines import kandinsky22

PRIOR_ID = "kandinsky-community/kandinsky-2-2-prior"


def copy_repo(repo: Path, to: Path) -> Path:
    shutil.copytree(repo, to)
    return to


def load_prior(repo: str | Path, **source) -> torch.nn.Module:
    return kandinsky22.load_prior(Source(str(repo), **source), torch.float32)


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


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_safetensors(tiny_prior_repo, tmp_path, damage) -> None:
    repo = copy_repo(tiny_prior_repo, tmp_path / "prior")
    weights = repo / "prior" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage" * 100)
    with pytest.raises(CheckpointError, match="corrupt or only partly downloaded.*download it again"):
        load_prior(repo)


def test_pickled_bin_loads_with_weights_only(tiny_prior_repo, tmp_path) -> None:
    repo = copy_repo(tiny_prior_repo, tmp_path / "prior")
    weights = repo / "prior" / "diffusion_pytorch_model.safetensors"
    torch.save(hub.read_state_dict(weights), repo / "prior" / "diffusion_pytorch_model.bin")
    weights.unlink()
    reference = load_prior(tiny_prior_repo)
    loaded = load_prior(repo)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in reference.state_dict().items())


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickle_that_runs_code_is_refused(tiny_prior_repo, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    repo = copy_repo(tiny_prior_repo, tmp_path / "prior")
    (repo / "prior" / "diffusion_pytorch_model.safetensors").unlink()
    (repo / "prior" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps({"x": _RunsCode()}))
    with pytest.raises(CheckpointError, match="pickle that would run code, which is refused"):
        load_prior(repo)
    assert not (tmp_path / "pwned").exists()


def test_wrong_repo_for_the_loader(tiny_decoder_repo) -> None:
    with pytest.raises(CheckpointError, match="has no 'prior/config.json'.*not a checkpoint of the expected kind"):
        load_prior(tiny_decoder_repo)


def test_config_of_another_class(tiny_prior_repo, tmp_path) -> None:
    repo = copy_repo(tiny_prior_repo, tmp_path / "prior")
    config = json.loads((repo / "prior" / "config.json").read_text())
    (repo / "prior" / "config.json").write_text(json.dumps({**config, "_class_name": "UNet2DConditionModel"}))
    with pytest.raises(CheckpointError, match="describes a UNet2DConditionModel, not a PriorTransformer"):
        load_prior(repo)


def test_weights_of_another_architecture(tiny_prior_repo, tiny_decoder_repo, tmp_path) -> None:
    repo = copy_repo(tiny_prior_repo, tmp_path / "prior")
    shutil.copy(tiny_decoder_repo / "unet" / "diffusion_pytorch_model.safetensors", repo / "prior")
    with pytest.raises(
        CheckpointError, match=r"prior of .* does not match its config or is the wrong architecture: \d+ missing"
    ):
        load_prior(repo)


def test_weights_of_another_size(tiny_prior_repo, tmp_path) -> None:
    repo = copy_repo(tiny_prior_repo, tmp_path / "prior")
    config = json.loads((repo / "prior" / "config.json").read_text())
    (repo / "prior" / "config.json").write_text(json.dumps({**config, "num_layers": 3}))
    with pytest.raises(CheckpointError, match=r"\d+ missing \(transformer_blocks\.2\."):
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
        kandinsky22.load_unet(Source(str(repo)), torch.float32)


def test_corrupt_text_encoder(tiny_prior_repo, tmp_path) -> None:
    from dalle_nodes.nodes.loaders import DalleLoadPrior

    repo = copy_repo(tiny_prior_repo, tmp_path / "prior")
    weights = repo / "text_encoder" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="model.safetensors' is corrupt"):
        DalleLoadPrior().load(str(repo), "main", "fp32")


def test_movq_with_legacy_attention_names_loads(tiny_decoder_repo, tmp_path) -> None:
    """Checkpoints saved before diffusers 0.14 name attention layers query/key/value/proj_attn."""
    from safetensors.torch import save_file

    repo = copy_repo(tiny_decoder_repo, tmp_path / "decoder")
    weights = repo / "movq" / "diffusion_pytorch_model.safetensors"
    modern = hub.read_state_dict(weights)
    legacy_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    legacy = {}
    for key, value in modern.items():
        for new, old in legacy_names.items():
            if "attentions" in key and f".{new}." in key:
                key = key.replace(f".{new}.", f".{old}.")
        legacy[key] = value
    assert any(".query." in key for key in legacy)
    save_file(legacy, weights)
    movq = kandinsky22.load_movq(Source(str(repo)), torch.float32)
    assert all(torch.equal(movq.state_dict()[k], v) for k, v in modern.items())


@pytest.mark.parametrize(
    "default, value, ok",
    [
        ([4, 2, 1, 0.5], [1, 1, 1, 0.5], True),  # DPT's reassemble_factors: numbers, whole or not
        ([4, 2, 1, 0.5], [1, "2"], False),
        ([4, 2, 1, 0.5], [True, 1], False),
        ([1, 2], [1.5, 2], False),  # a list of whole numbers stays one
        ([], ["anything"], True),
    ],
)
def test_list_settings_take_the_kind_of_their_widest_default(default, value, ok: bool) -> None:
    settings = {"factors": value}
    if ok:
        assert hub.config_settings(settings, {"factors": default}, "test")["factors"] == value
    else:
        with pytest.raises(ValueError, match="factors=.* has the wrong type"):
            hub.config_settings(settings, {"factors": default}, "test")
