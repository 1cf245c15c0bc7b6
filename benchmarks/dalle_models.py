"""DALL·E Mini / Mega for the benchmarks: the prompt and sampling settings, our BART with random weights, and
min-dalle's own modules holding our modules' tensors (no copy), for timing both sides on the same weights."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from common import import_checkout, randomize_

import_checkout()
from dalle_nodes.models import dalle_bart  # noqa: E402
from dalle_nodes.models.dalle_bart import DalleBart, Hyperparameters  # noqa: E402
from tiny_repos import MIN_DALLE_CONFIG, TINY_MIN_DALLE, import_min_dalle, real_config  # noqa: E402

PROMPT = "an astronaut riding a horse on the moon, oil painting"
SETTINGS = {"top_k": 256, "temperature": 1.0, "supercondition": 16.0}  # min-dalle's defaults


def hyperparameters(variant: str, tiny: bool = False) -> Hyperparameters:
    """A variant's sizes from the real config (tests/hub_configs/kuprel--min-dalle), or the tests' toy sizes."""
    if tiny:
        return Hyperparameters(**TINY_MIN_DALLE)
    config = real_config(MIN_DALLE_CONFIG)[variant]
    return Hyperparameters(**{field.name: config[field.name] for field in dataclasses.fields(Hyperparameters)})


def random_bart(hp: Hyperparameters, device: torch.device, dtype: torch.dtype, seed: int = 0) -> DalleBart:
    """The encoder and decoder made on the device, weights normal(0, 0.02) (finite logits), LayerNorms at identity."""
    with torch.device("meta"):
        bart = DalleBart(dalle_bart.DalleBartEncoder(hp), dalle_bart.DalleBartDecoder(hp)).to(dtype)
    return randomize_(bart.to_empty(device=device), torch.Generator(device).manual_seed(seed))


def random_decoder(hp: Hyperparameters, seed: int = 0) -> dalle_bart.DalleBartDecoder:
    """The decoder alone, on the CPU in fp32, as random_bart draws it (Mega's encoder would add 4 GB)."""
    with torch.device("meta"):
        decoder = dalle_bart.DalleBartDecoder(hp)
    return randomize_(decoder.to_empty(device="cpu"), torch.Generator().manual_seed(seed))


def sharing_weights(ours: torch.nn.Module, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """min-dalle's module `build()` (made on the meta device) holding the very tensors of ours: the same parameter
    names, every one of them, and no second copy in memory. Its own plain tensors (position indices) stay real."""
    with torch.device("meta"):
        theirs = build()
    missing, unexpected = theirs.load_state_dict(ours.state_dict(), strict=False, assign=True)
    if missing or unexpected:
        raise AssertionError(f"min-dalle's {type(theirs).__name__}: missing {missing}, unexpected {unexpected}")
    return theirs.eval().requires_grad_(False)


def min_dalle_encoder(encoder: dalle_bart.DalleBartEncoder, hp: Hyperparameters) -> torch.nn.Module:
    models = import_min_dalle().models
    sizes = {key: getattr(hp, key) for key in ("layer_count", "embed_count", "attention_head_count")}
    return sharing_weights(
        encoder,
        lambda: models.DalleBartEncoder(
            **sizes,
            glu_embed_count=hp.glu_embed_count,
            text_token_count=dalle_bart.TEXT_TOKENS,
            text_vocab_count=hp.text_vocab_count,
            device="cpu",
        ),
    )


def min_dalle_decoder(decoder: dalle_bart.DalleBartDecoder, hp: Hyperparameters) -> torch.nn.Module:
    models = import_min_dalle().models
    sizes = {key: getattr(hp, key) for key in ("layer_count", "embed_count", "attention_head_count")}
    return sharing_weights(
        decoder,
        lambda: models.DalleBartDecoder(
            **sizes, glu_embed_count=hp.glu_embed_count, image_vocab_count=hp.image_vocab_count, device="cpu"
        ),
    )


def min_dalle_detokenizer(vqgan: torch.nn.Module) -> torch.nn.Module:
    return sharing_weights(vqgan, import_min_dalle().models.VQGanDetokenizer)
