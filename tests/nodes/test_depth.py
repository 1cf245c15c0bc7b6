"""Load Depth Model and DALL·E Depth Map called as ComfyUI calls them (bad IMAGEs: test_hostile_nodes.py)."""

from __future__ import annotations

import shutil

import pytest
import torch

from dalle_nodes.engine.hub import NotDownloaded, default_store
from dalle_nodes.nodes import NODE_CLASS_MAPPINGS, loaders
from dalle_nodes.pipelines import depth
from node_calls import call


@pytest.fixture(autouse=True)
def no_kept_models(monkeypatch) -> None:
    monkeypatch.setattr(loaders, "_loaded", {})


def test_depth_map_from_the_default_repo(tiny_depth_repo) -> None:
    shutil.copytree(tiny_depth_repo, default_store() / "Intel--dpt-hybrid-midas")  # as downloaded
    (depth_model,) = call("DalleLoadDepthModel", dtype="fp32")  # the default repo id, offline
    assert repr(depth_model) == "DepthModel(torch.float32)"
    generator = torch.Generator().manual_seed(0)
    image = (torch.rand(2, 40, 72, 3, generator=generator) * 255).round() / 255  # non-square, as Load Image gives

    (hint,) = call("DalleDepthMap", depth_model=depth_model, image=image)

    assert hint.shape == (2, 40, 72, 3) and hint.dtype == torch.float32
    assert torch.equal(hint[..., 0], hint[..., 2])
    assert hint.amin(dim=(1, 2, 3)).tolist() == [0, 0] and hint.amax(dim=(1, 2, 3)).tolist() == [1, 1]
    expected = depth.depth_map(depth_model.processor, depth_model.model.load, image)
    assert torch.equal(hint, expected)


def test_load_depth_model_offline_without_files() -> None:
    with pytest.raises(NotDownloaded, match="'config.json' of Intel/dpt-hybrid-midas@main is not downloaded"):
        call("DalleLoadDepthModel", dtype="fp32")


def test_loader_inputs() -> None:
    required = NODE_CLASS_MAPPINGS["DalleLoadDepthModel"].INPUT_TYPES()["required"]
    assert required["repo_id"][1]["default"] == "Intel/dpt-hybrid-midas"
    assert NODE_CLASS_MAPPINGS["DalleDepthMap"].RETURN_NAMES == ("hint",)
