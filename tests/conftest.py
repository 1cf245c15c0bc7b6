"""Make the repo root importable as the package `dalle_nodes`, as an editable install would.

The repo root *is* the ComfyUI package, so it cannot sit on sys.path itself (ComfyUI owns a top-level
`nodes`). Registering it under its package name lets tests use `dalle_nodes.models…` with or without
`pip install -e .`.
"""

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

if "dalle_nodes" not in sys.modules:
    spec = importlib.util.spec_from_file_location(
        "dalle_nodes", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["dalle_nodes"] = module
    spec.loader.exec_module(module)

import tiny_repos  # noqa: E402  (tests/ is on sys.path: pyproject's pythonpath)


@pytest.fixture(scope="session")
def tiny_prior_repo(tmp_path_factory) -> Path:
    return tiny_repos.write_prior_repo(tmp_path_factory.mktemp("kandinsky-2-2-prior"))


@pytest.fixture(scope="session")
def tiny_decoder_repo(tmp_path_factory) -> Path:
    return tiny_repos.write_decoder_repo(tmp_path_factory.mktemp("kandinsky-2-2-decoder"))


@pytest.fixture(scope="session")
def tiny_inpaint_repo(tmp_path_factory) -> Path:
    return tiny_repos.write_inpaint_repo(tmp_path_factory.mktemp("kandinsky-2-2-decoder-inpaint"))


@pytest.fixture(scope="session")
def tiny_controlnet_repo(tmp_path_factory) -> Path:
    return tiny_repos.write_controlnet_repo(tmp_path_factory.mktemp("kandinsky-2-2-controlnet-depth"))


@pytest.fixture(scope="session")
def tiny_clip_repo(tmp_path_factory) -> Path:
    """openai/clip-vit-base-patch32 in miniature (CLIPModel, tokenizer and preprocessing files at the root)."""
    return tiny_repos.write_clip_repo(tmp_path_factory.mktemp("clip-vit-base-patch32"))


@pytest.fixture(scope="session")
def tiny_depth_repo(tmp_path_factory) -> Path:
    """Intel/dpt-hybrid-midas in miniature (DPT with a BiT backbone; config, weights and preprocessing at the root)."""
    return tiny_repos.write_depth_repo(tmp_path_factory.mktemp("dpt-hybrid-midas"))


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch) -> None:
    """Downloads and caches go to a per-test folder, never the user's home."""
    monkeypatch.setenv("DALLE_NODES_HOME", str(tmp_path / "dalle-home"))


@pytest.fixture(scope="session")
def tiny_min_dalle_repo(tmp_path_factory) -> Path:
    """kuprel/min-dalle in miniature: both variants' files at toy width (Mega fp16, Mini fp32), the VQGAN at its
    real (only) size."""
    root = tmp_path_factory.mktemp("min-dalle")
    tiny_repos.write_min_dalle_repo(root, "mega", tiny_repos.TINY_MIN_DALLE, seed=20)
    return tiny_repos.write_min_dalle_repo(root, "mini", tiny_repos.TINY_MIN_DALLE, seed=30)


@pytest.fixture(params=[(None, True), ("1", True), ("0", False)], ids=["unset", "on", "off"])
def cuda_graph_switch(request, monkeypatch) -> bool:
    """DALLE_NODES_CUDA_GRAPHS unset, 1 or 0; the value is whether the sampling nodes should then use CUDA graphs."""
    from dalle_nodes.engine import cuda_graph

    switch, graphs = request.param
    if switch is None:
        monkeypatch.delenv(cuda_graph.SWITCH, raising=False)
    else:
        monkeypatch.setenv(cuda_graph.SWITCH, switch)
    return graphs


@pytest.fixture(scope="session")
def min_dalle_pair(tiny_min_dalle_repo):
    """Ours and min-dalle's tiny Mega modules holding the same (fp16-stored) weights, in fp32."""
    from dalle_nodes.engine.hub import Source
    from dalle_nodes.models.dalle_bart import Hyperparameters
    from dalle_nodes.pipelines.dalle_mini.loading import load_bart, load_tokenizer

    tiny = Hyperparameters(**tiny_repos.TINY_MIN_DALLE)
    ours = load_bart(Source(str(tiny_min_dalle_repo)), "mega", torch.float32, tiny)
    encoder, decoder = tiny_repos.min_dalle_modules(tiny)
    encoder.load_state_dict(torch.load(tiny_min_dalle_repo / "encoder.pt", weights_only=True))
    decoder.load_state_dict(torch.load(tiny_min_dalle_repo / "decoder.pt", weights_only=True))
    tokenizer = load_tokenizer(Source(str(tiny_min_dalle_repo)), "mega")
    return ours, encoder.eval(), decoder.eval(), tokenizer


@pytest.fixture(scope="session")
def tiny_karlo_repo(tmp_path_factory) -> Path:
    """kakaobrain/karlo-v1-alpha in miniature (tiny_karlo: safetensors with `.bin` twins, the real model_index)."""
    import tiny_karlo

    return tiny_karlo.write_karlo_repo(tmp_path_factory.mktemp("karlo-v1-alpha"))


@pytest.fixture(scope="session")
def tiny_karlo_variations_repo(tmp_path_factory) -> Path:
    """kakaobrain/karlo-v1-alpha-image-variations in miniature (`.bin` weights only, as its main branch)."""
    import tiny_karlo

    return tiny_karlo.write_variations_repo(tmp_path_factory.mktemp("karlo-v1-alpha-image-variations"))
