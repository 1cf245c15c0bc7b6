"""pipelines/rerank.py: CLIP scores are transformers' own (CLIPModel's logits_per_image; the Kandinsky towers' cosine
similarity), the order is theirs with stable ties, and every mistake is refused before a model loads."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dalle_nodes.engine.checkpoints import CheckpointError
from dalle_nodes.engine.device import PLAIN, Host
from dalle_nodes.engine.hub import NotDownloaded, Source, default_store
from dalle_nodes.engine.images import from_pil
from dalle_nodes.models import clip
from dalle_nodes.pipelines import dalle_mini, kandinsky22, rerank
from dalle_nodes.pipelines.kandinsky22 import loading
from dalle_nodes.pipelines.rerank import Ranker

PROMPT = "the cat and a dog"


def pictures(count: int, seed: int = 0, size: tuple[int, int] = (96, 80)) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)) for _ in range(count)]


def in_store(repo: Path) -> str:
    """The tiny repo where a finished download of openai/clip-vit-base-patch32 lies: loaded by its Hub id, offline."""
    shutil.copytree(repo, default_store() / rerank.CLIP_REPO.replace("/", "--"))
    return rerank.CLIP_REPO


@pytest.fixture()
def clip_ranker(tiny_clip_repo) -> Ranker:
    return Ranker.load(in_store(tiny_clip_repo), dtype="fp32", device="cpu")


def test_scores_are_clips_logits_per_image(clip_ranker, tiny_clip_repo, monkeypatch) -> None:
    from transformers import CLIPModel, CLIPProcessor

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    monkeypatch.setattr(rerank, "IMAGE_CHUNK", 3)  # 7 images: three passes through the image tower
    images = pictures(7)
    ours = rerank.score(clip_ranker, from_pil(images), PROMPT)

    model = CLIPModel.from_pretrained(tiny_clip_repo).eval()
    inputs = CLIPProcessor.from_pretrained(tiny_clip_repo)(text=[PROMPT], images=images, return_tensors="pt")
    with torch.inference_mode():
        reference = model(**inputs).logits_per_image[:, 0]
    assert model.logit_scale.exp().item() == pytest.approx(100, rel=1e-4)
    assert (ours - reference).abs().max() < 1e-5, (ours, reference)
    ranked = rerank.rerank(clip_ranker, from_pil(images), PROMPT, 7)
    assert ranked.indices == torch.argsort(reference, descending=True).tolist()
    assert ranked.scores == sorted(ranked.scores, reverse=True)


def test_equal_scores_keep_their_order_in_the_batch(clip_ranker) -> None:
    a, b, c = pictures(3, seed=1)
    batch = from_pil([a, b, a, c, b, a])  # duplicates score the same
    scores = rerank.score(clip_ranker, batch, PROMPT)
    assert scores[0] == scores[2] == scores[5] and scores[1] == scores[4]
    ranked = rerank.rerank(clip_ranker, batch, PROMPT, 6)
    groups = {0: 0, 2: 0, 5: 0, 1: 1, 4: 1, 3: 3}
    for group in set(groups.values()):
        members = [i for i in ranked.indices if groups[i] == group]
        assert members == sorted(members)  # stable: earlier in the batch, earlier in the ranking
    assert torch.equal(ranked.images, batch[ranked.indices])
    assert rerank.best_first(torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0]), 4).tolist() == [1, 2, 4, 3]


def test_towers_of_two_families_are_refused_by_width(tiny_prior_repo, tiny_clip_repo) -> None:
    """Kandinsky's text tower (16 wide here) with another CLIP's image tower (8): one line, not a shape error."""
    tokenizer, text_encoder = loading.load_text_encoder(Source(str(tiny_prior_repo)), torch.float32)
    other = Ranker.load(str(tiny_clip_repo), dtype="fp32", device="cpu")
    ranker = Ranker(tokenizer, other.processor, lambda: text_encoder, other.image_tower)
    with pytest.raises(ValueError, match="^The text tower's embeddings are 16 wide but the image tower's 8: connect"):
        rerank.score(ranker, from_pil(pictures(2)), PROMPT)


def test_kandinsky_towers_score_the_cosine_similarity_of_their_embeddings(tiny_prior_repo) -> None:
    from transformers import (
        CLIPImageProcessor,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        CLIPVisionModelWithProjection,
    )

    source = Source(str(tiny_prior_repo))
    tokenizer, text_encoder = loading.load_text_encoder(source, torch.float32)
    processor, image_encoder = loading.load_image_encoder(source, torch.float32)
    ranker = Ranker(tokenizer, processor, lambda: text_encoder, lambda: image_encoder)
    images = pictures(5, seed=2, size=(64, 128))
    ours = rerank.score(ranker, from_pil(images), PROMPT)

    # the reference prior pipeline's tokenization (padded to 77) and transformers' own models and preprocessing
    ids = CLIPTokenizer.from_pretrained(tiny_prior_repo / "tokenizer")(
        [PROMPT], padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    pixels = CLIPImageProcessor.from_pretrained(tiny_prior_repo / "image_processor")(images, return_tensors="pt")
    with torch.inference_mode():
        text = CLIPTextModelWithProjection.from_pretrained(tiny_prior_repo / "text_encoder")(ids).text_embeds
        image = CLIPVisionModelWithProjection.from_pretrained(tiny_prior_repo / "image_encoder")(
            pixels.pixel_values
        ).image_embeds
    reference = torch.nn.functional.cosine_similarity(image, text)
    assert (ours - reference).abs().max() < 1e-5, (ours, reference)
    assert ours.abs().max() <= 1


def never(*args) -> torch.nn.Module:
    raise AssertionError("a tower loaded before the inputs were checked")


@pytest.mark.parametrize(
    "count, text, keep, message",
    [
        (3, PROMPT, 4, r"keep \(4\) is more than the 3 images in the batch"),
        (3, PROMPT, 0, r"keep must be between 1 and 3 \(got 0\)"),
        (3, "  ", 1, "The prompt is empty"),
        (0, PROMPT, 1, "The images must be an IMAGE"),
    ],
)
def test_bad_inputs_are_refused_before_loading(tiny_clip_repo, count, text, keep, message) -> None:
    ranker = Ranker(None, None, never, never)
    with pytest.raises(ValueError, match=message):
        rerank.rerank(ranker, torch.rand(count, 32, 32, 3), text, keep)


def test_non_clip_repos_are_named_as_such(tiny_prior_repo, tmp_path) -> None:
    with pytest.raises(CheckpointError, match="has no config.json at its root: it is not a CLIP model repo"):
        rerank.load_clip(Source(str(tiny_prior_repo)), torch.float32)  # the Kandinsky prior: towers in subfolders
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    with pytest.raises(CheckpointError, match="holds a BertModel, not a CLIP model"):
        rerank.load_clip(Source(str(other)), torch.float32)
    with pytest.raises(NotDownloaded, match="is not downloaded yet"):  # offline: said as the other loaders say it
        Ranker.load("someone/never-downloaded", dtype="fp32", device="cpu")


def test_out_of_memory_halves_the_chunk(clip_ranker, monkeypatch) -> None:
    images = from_pil(pictures(5, seed=3))
    expected = rerank.score(clip_ranker, images, PROMPT)
    features, seen, freed = clip.image_features, [], []

    def small_only(model, pixels):
        seen.append(pixels.shape[0])
        if pixels.shape[0] > 2:
            raise RuntimeError("out of memory (simulated)")
        return features(model, pixels)

    monkeypatch.setattr(clip, "image_features", small_only)
    host = Host(PLAIN.free_memory, lambda error: "out of memory" in str(error), lambda: freed.append(1), lambda: None)
    assert torch.allclose(rerank.score(clip_ranker, images, PROMPT, host), expected, atol=1e-5)
    assert seen == [5, 2, 2, 1], seen  # all 5 in one pass fail; then 2 a pass
    assert freed


@pytest.mark.parametrize("request_class", [dalle_mini.Request, kandinsky22.Request])
def test_best_of_is_checked_with_the_other_settings(request_class) -> None:
    with pytest.raises(ValueError, match=r"best_of \(2\) must be at least batch_size \(4\)"):
        request_class("a cat", batch_size=4, best_of=2)
    with pytest.raises(ValueError, match="best_of must be between 1 and 512"):
        request_class("a cat", batch_size=1, best_of=513)
    assert request_class("a cat", batch_size=2, best_of=3).best_of == 3
    assert rerank.batches(7, 3) == [3, 3, 1]


def test_download_bars_count_the_clip_files(tiny_clip_repo) -> None:
    from dalle_nodes.engine.hub import DownloadProgress

    counting = DownloadProgress()
    rerank.load_clip(Source(str(tiny_clip_repo), None, None, counting), torch.float32)
    assert counting.index == rerank.FETCHES


def test_dalle_mini_best_of_keeps_the_best_samples(tiny_min_dalle_repo, clip_ranker, monkeypatch) -> None:
    from dalle_nodes.models import dalle_bart
    from dalle_nodes.models.dalle_bart import Hyperparameters
    from tiny_repos import TINY_MIN_DALLE

    monkeypatch.setitem(dalle_bart.HYPERPARAMETERS, "mini", Hyperparameters(**TINY_MIN_DALLE))
    model = dalle_mini.DalleMini.load(repo=str(tiny_min_dalle_repo), variant="mini", dtype="fp32", device="cpu")
    sample, drawn = model.sample, []
    monkeypatch.setattr(model, "sample", lambda request: drawn.append(sample(request)) or drawn[-1])
    best = model.generate("a lighthouse", ranker=clip_ranker, best_of=3, seed=5, batch_size=2, top_k=32)
    (images,) = drawn
    assert images.shape[0] == 3 and len(best) == 2  # drawn in batches of 2 and 1
    scores = rerank.score(clip_ranker, images, "a lighthouse")
    top = torch.sort(scores, descending=True, stable=True)
    assert [image.info["clip_score"] for image in best] == pytest.approx(top.values[:2].tolist())
    assert np.array_equal(np.stack([np.asarray(i) for i in best]), (images[top.indices[:2]] * 255 + 0.5).byte().numpy())


def test_kandinsky22_best_of_ranks_with_its_own_towers(tiny_prior_repo, tiny_decoder_repo) -> None:
    model = kandinsky22.Kandinsky22.load(str(tiny_prior_repo), str(tiny_decoder_repo), dtype="fp32", device="cpu")
    settings = dict(seed=3, steps=2, prior_steps=2, width=64, height=64, batch_size=1)
    (best,) = model.generate("a red fox", best_of=3, **settings)
    drawn = model.sample(kandinsky22.Request("a red fox", best_of=3, **settings))
    assert drawn.shape[0] == 3
    scores = rerank.score(model.prior_ranker(), drawn, "a red fox")
    assert best.info["clip_score"] == pytest.approx(scores.max().item()) and -1 <= best.info["clip_score"] <= 1
    assert torch.equal(drawn[:1], model.sample(kandinsky22.Request("a red fox", **settings)))
