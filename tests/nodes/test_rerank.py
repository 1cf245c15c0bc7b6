"""Load CLIP and DALL·E CLIP Rerank called as ComfyUI calls them: the pipeline's ranking, with either ranker."""

from __future__ import annotations

import shutil

import pytest
import torch

from dalle_nodes.engine.checkpoints import CheckpointError
from dalle_nodes.engine.hub import NotDownloaded, default_store
from dalle_nodes.nodes import NODE_CLASS_MAPPINGS, loaders
from dalle_nodes.pipelines import rerank

RERANK = NODE_CLASS_MAPPINGS["DalleCLIPRerank"]


@pytest.fixture(autouse=True)
def no_kept_models(monkeypatch) -> None:
    monkeypatch.setattr(loaders, "_loaded", {})


def load_clip(repo_id: str):
    (clip,) = NODE_CLASS_MAPPINGS["DalleLoadCLIP"]().load(repo_id, "main", "fp32")
    return clip


def batch(count: int, seed: int = 0) -> torch.Tensor:
    return (torch.rand(count, 72, 88, 3, generator=torch.Generator().manual_seed(seed)) * 255).round() / 255


def test_rerank_keeps_the_best_by_clip_score(tiny_clip_repo) -> None:
    shutil.copytree(tiny_clip_repo, default_store() / "openai--clip-vit-base-patch32")  # as downloaded
    clip = load_clip("openai/clip-vit-base-patch32")  # the default repo id, offline
    images = batch(6)
    assert RERANK.OUTPUT_IS_LIST == (False, True, False, True)
    kept, scores, table, indices = RERANK().rerank(images, "a cat", 3, clip=clip)

    expected = rerank.score(
        rerank.Ranker(clip.tokenizer, clip.processor, clip.model.load, clip.model.load), images, "a cat"
    )
    order = torch.sort(expected, descending=True, stable=True).indices[:3]
    assert indices == order.tolist() and torch.equal(kept, images[order])
    assert scores == pytest.approx(expected[order].tolist(), abs=1e-6)
    assert isinstance(table, str) and table.splitlines()[0].split() == ["rank", "image", "score"]
    assert table.splitlines()[1].split()[:2] == ["1", str(indices[0])]


def test_rerank_with_the_kandinsky_towers(tiny_prior_repo) -> None:
    _, text_encoder = NODE_CLASS_MAPPINGS["DalleLoadPrior"]().load(str(tiny_prior_repo), "main", "fp32")
    (image_encoder,) = NODE_CLASS_MAPPINGS["DalleLoadImageEncoder"]().load(str(tiny_prior_repo), "main", "fp32")
    images = batch(4, seed=1)
    kept, scores, _, indices = RERANK().rerank(
        images, "a cat", 2, text_encoder=text_encoder, image_encoder=image_encoder
    )
    assert kept.shape == (2, 72, 88, 3) and len(scores) == len(indices) == 2
    assert scores[0] >= scores[1] and all(-1 <= s <= 1 for s in scores)  # cosine similarity: no logit scale


def test_rerank_with_karlos_towers(tiny_karlo_repo, tiny_karlo_variations_repo) -> None:
    """Karlo's prior repo's text tower with its variations repo's image tower: one CLIP ViT-L, as the tooltips say."""
    _, text_encoder = NODE_CLASS_MAPPINGS["DalleLoadPrior"]().load(str(tiny_karlo_repo), "main", "fp32")
    (image_encoder,) = NODE_CLASS_MAPPINGS["DalleLoadImageEncoder"]().load(
        str(tiny_karlo_variations_repo), "main", "fp32"
    )
    kept, scores, _, _ = RERANK().rerank(batch(3), "a cat", 2, text_encoder=text_encoder, image_encoder=image_encoder)
    assert kept.shape == (2, 72, 88, 3) and scores[0] >= scores[1]


def test_exactly_one_ranker(tiny_clip_repo, tiny_prior_repo) -> None:
    clip = load_clip(str(tiny_clip_repo))
    _, text_encoder = NODE_CLASS_MAPPINGS["DalleLoadPrior"]().load(str(tiny_prior_repo), "main", "fp32")
    images = batch(2)
    with pytest.raises(ValueError, match="Connect a ranker: clip"):
        RERANK().rerank(images, "a cat", 1)
    with pytest.raises(ValueError, match="Connect a ranker: clip"):
        RERANK().rerank(images, "a cat", 1, text_encoder=text_encoder)  # its image tower is missing
    with pytest.raises(ValueError, match="Connect one ranker"):
        RERANK().rerank(images, "a cat", 1, clip=clip, text_encoder=text_encoder)
    with pytest.raises(ValueError, match=r"keep \(3\) is more than the 2 images"):
        RERANK().rerank(images, "a cat", 3, clip=clip)


def test_load_clip_errors(tiny_prior_repo) -> None:
    with pytest.raises(CheckpointError, match="not a CLIP model repo like openai/clip-vit-base-patch32"):
        load_clip(str(tiny_prior_repo))
    with pytest.raises(NotDownloaded, match="'config.json' of openai/clip-vit-base-patch32@main is not downloaded"):
        load_clip("openai/clip-vit-base-patch32")  # offline, not in the store
