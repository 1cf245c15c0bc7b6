"""Our tokenizer gives min-dalle's TextTokenizer ids, on a BPE vocabulary learned from a small corpus."""

import json
from pathlib import Path

import pytest

from dalle_nodes.models import dalle_bart
from dalle_nodes.models.bart_tokenizer import BartTokenizer
from dalle_nodes.pipelines.dalle_mini import stages
from tiny_repos import import_min_dalle, write_min_dalle_tokenizer

PROMPTS = [
    "an astronaut riding a horse on the moon",
    "A PHOTO of a Cat, sitting... on a TABLE!!!",
    "(an armchair) in the shape of an avocado: 3d-render; #trending @artstation 100% [4k]",
    "don't stop believing -- it's 3.14 o'clock, isn't it?",
    "a cat 🐱 in a top hat 🎩, thumbs up 👍🏽 ❤️",
    "café crème brûlée à la mode, naïve Zoë",
    "東京の夜景 at night, Москва зимой, שלום, ελληνικά",
    "tabs\tand\nnew lines\r\nstay inside words",
    "  double  spaces   and trailing spaces  ",
    "unseen words: xylophone quizzically jabberwocky",
    "control\x07characters and ~`^|\\ symbols",
    "",
    "日本語だけ",
    " ".join(["a teddy bear swimming in the ocean"] * 12),  # far over 64 tokens
]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tokenizer")
    write_min_dalle_tokenizer(folder, "vocab.json", "merges.txt")
    return folder / "vocab.json", folder / "merges.txt"


@pytest.fixture(scope="module")
def reference(files):
    vocab_path, merges_path = files
    vocab = json.loads(vocab_path.read_text(encoding="utf8"))
    merges = merges_path.read_text(encoding="utf8").split("\n")[1:-1]  # as MinDalle.init_tokenizer reads them
    return import_min_dalle().text_tokenizer.TextTokenizer(vocab, merges)


@pytest.mark.parametrize("text", PROMPTS)
def test_ids_match_min_dalle(files, reference, text: str) -> None:
    assert BartTokenizer.from_files(*files).encode(text) == reference.tokenize(text)


def test_merges_are_exercised(files) -> None:
    tokenizer = BartTokenizer.from_files(*files)
    assert len(tokenizer.encode("astronaut riding")) == 4  # <s> Ġastronaut Ġriding </s>: whole-word merges
    assert len(tokenizer.encode("jabberwocky")) > 4  # an unseen word: several pieces


def test_long_prompt_is_cut_to_64_tokens_as_min_dalle_does(files) -> None:
    ids = BartTokenizer.from_files(*files).encode(PROMPTS[-1])
    assert len(ids) > 64
    tokens = stages.text_tokens(ids)
    assert tokens.shape == (2, 64)
    assert tokens[1].tolist() == ids[:64]  # the cut drops </s>, as min-dalle's does …
    assert tokens[0, :2].tolist() == [ids[0], ids[63]]  # … and the unconditional row ends with the 64th token
    assert (tokens[0, 2:] == dalle_bart.PAD_TOKEN).all()


def test_short_prompt_is_padded(files) -> None:
    ids = BartTokenizer.from_files(*files).encode("a cat")
    tokens = stages.text_tokens(ids)
    assert tokens[0, :2].tolist() == [ids[0], ids[-1]]
    assert tokens[1, : len(ids)].tolist() == ids
    assert (tokens[:, len(ids) :] == dalle_bart.PAD_TOKEN).all()
