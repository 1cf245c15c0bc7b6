"""engine/checkpoints.py: damaged, mismatched or code-running weight files and settings of the wrong kind are clear
errors; pickles load with weights_only."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from dalle_nodes.engine import checkpoints
from dalle_nodes.engine.checkpoints import CheckpointError
from dalle_nodes.engine.hub import Source
from dalle_nodes.pipelines.kandinsky22 import loading


def copy_repo(repo: Path, to: Path) -> Path:
    shutil.copytree(repo, to)
    return to


def load_prior(repo: str | Path, **source) -> torch.nn.Module:
    return loading.load_prior(Source(str(repo), **source), torch.float32)


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
    torch.save(checkpoints.read_state_dict(weights), repo / "prior" / "diffusion_pytorch_model.bin")
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


def test_corrupt_text_encoder(tiny_prior_repo, tmp_path) -> None:
    from dalle_nodes.nodes.loaders import DalleLoadPrior

    repo = copy_repo(tiny_prior_repo, tmp_path / "prior")
    weights = repo / "text_encoder" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="model.safetensors' is corrupt"):
        DalleLoadPrior().load(str(repo), "main", "fp32")


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
        assert checkpoints.config_settings(settings, {"factors": default}, "test")["factors"] == value
    else:
        with pytest.raises(ValueError, match="factors=.* has the wrong type"):
            checkpoints.config_settings(settings, {"factors": default}, "test")
