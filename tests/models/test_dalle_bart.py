"""models/dalle_bart.py against min-dalle: the full-size layout, the encoder's outputs and the decoder's per-step
logits."""

import json

import pytest
import torch

from dalle_nodes.models.dalle_bart import HYPERPARAMETERS, DalleBartDecoder, DalleBartEncoder, Hyperparameters
from dalle_nodes.pipelines.dalle_mini import loading, stages
from tiny_repos import (
    MIN_DALLE_CONFIG,
    MIN_DALLE_FILES,
    TINY_MIN_DALLE,
    min_dalle_modules,
)

TINY = Hyperparameters(**TINY_MIN_DALLE)
PROMPT = "An astronaut riding a horse on the moon 🐴, oil painting"
LONG_PROMPT = " ".join(["a teddy bear swimming in the ocean"] * 12)


def max_errors(ours: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(max abs error, max abs error / max abs reference value)"""
    error = (ours.float() - reference.float()).abs().max().item()
    return error, error / reference.float().abs().max().item()


def shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in module.state_dict().items()}


def test_tables_match_the_hub_config() -> None:
    config = json.loads(MIN_DALLE_CONFIG.read_text())
    for variant, hp in HYPERPARAMETERS.items():
        assert {k: v for k, v in config[variant].items() if k in TINY_MIN_DALLE} == vars(hp)
        assert (config[variant]["text_token_count"], config[variant]["image_token_count"]) == (64, 256)
        files = loading.FILES[variant]
        assert (files.encoder, files.decoder, files.vocab, files.merges) == MIN_DALLE_FILES[variant]
        assert set(config[variant]["files"]) == {*MIN_DALLE_FILES[variant], "detoker.pt"}


@pytest.mark.parametrize("variant", ["mega", "mini"])
def test_full_size_names_and_shapes_are_min_dalles(variant: str) -> None:
    hp = HYPERPARAMETERS[variant]
    with torch.device("meta"):
        reference_encoder, reference_decoder = min_dalle_modules(hp)
        encoder, decoder = DalleBartEncoder(hp), DalleBartDecoder(hp)
    assert shapes(encoder) == shapes(reference_encoder)
    assert shapes(decoder) == shapes(reference_decoder)


@torch.no_grad()
def test_encoder_matches_min_dalle(min_dalle_pair) -> None:
    ours, encoder, _, tokenizer = min_dalle_pair
    tokens = stages.text_tokens(tokenizer.encode(PROMPT))  # a padded prompt row and the unconditional one
    expected = encoder(tokens)
    abs_error, rel_error = max_errors(ours.encoder(tokens), expected)
    assert abs_error < 1e-4 and rel_error < 1e-5, (abs_error, rel_error)


@torch.no_grad()
def test_decoder_steps_match_min_dalle(min_dalle_pair) -> None:
    """Logits of 12 steps with both key/value caches carried along, for 3 images on arbitrary previous codes."""
    ours, encoder, decoder, tokenizer = min_dalle_pair
    images, steps = 3, 12
    tokens = stages.text_tokens(tokenizer.encode(PROMPT))
    states = encoder(tokens)
    rows = [0] * images + [1] * images  # min-dalle's expansion: unconditional rows, then the prompt's
    mask = tokens[rows].ne(1)[:, None, None, :]
    attention_state = torch.zeros(TINY.layer_count, 4 * images, 256, TINY.embed_count)
    cache = ours.decoder.start(ours.encoder(tokens), tokens, images)
    assert ours.decoder.cache_bytes(images) == cache.self_kv.numel() * cache.self_kv.element_size()
    codes = torch.randint(0, 2**14, (images, steps), generator=torch.Generator().manual_seed(0))
    worst = (0.0, 0.0)
    for i in range(steps):
        expected, attention_state = decoder(mask, states[rows], attention_state, codes[:, [i]], torch.tensor([i]))
        got = ours.decoder(codes[:, i], cache.positions[i : i + 1], cache)
        worst = max(worst, max_errors(got, expected[:, -1, : 2**14]))
    assert worst[0] < 1e-4 and worst[1] < 1e-5, worst
