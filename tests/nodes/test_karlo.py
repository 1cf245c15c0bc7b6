"""Karlo's nodes: the node chain equals the Python API (Karlo) pixel for pixel, and the sockets keep Karlo's and
Kandinsky 2.2's embeddings apart with errors that say which input to connect."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from dalle_nodes.engine import checkpoints
from dalle_nodes.models.clip import TextEmbeds
from dalle_nodes.nodes import loaders
from dalle_nodes.nodes.sockets import ImageEmbeds, KarloEmbeds
from dalle_nodes.pipelines import Karlo
from dalle_nodes.pipelines.clip_text import PromptEmbeds
from dalle_nodes.pipelines.karlo import Request, VariationRequest
from node_calls import call

STEPS = dict(prior_steps=3, decoder_steps=4, super_res_steps=3)


@pytest.fixture(scope="module")
def karlo_nodes(tiny_karlo_repo) -> tuple:
    prior, text_encoder = call("DalleLoadPrior", repo_id=str(tiny_karlo_repo), dtype="fp32")
    decoder, super_res = call("DalleLoadKarloDecoder", repo_id=str(tiny_karlo_repo), dtype="fp32")
    return prior, text_encoder, decoder, super_res


def text_chain(nodes: tuple, prompt: str, seed: int, batch_size: int, guidance: dict) -> torch.Tensor:
    prior, text_encoder, decoder, super_res = nodes
    (text,) = call("DalleTextEncode", text_encoder=text_encoder, text=prompt)
    (embeds,) = call(
        "DallePriorSample",
        prior=prior,
        positive=text,
        seed=seed,
        steps=STEPS["prior_steps"],
        guidance=guidance["prior_guidance"],
        batch_size=batch_size,
    )
    small, stream = call(
        "DalleKarloDecoderSample",
        decoder=decoder,
        image_embeds=embeds,
        text=text,
        seed=12345,  # not used: the prior's embeddings carry its stream on
        steps=STEPS["decoder_steps"],
        guidance=guidance["decoder_guidance"],
    )
    (image,) = call(
        "DalleKarloSuperRes", super_res=super_res, image=small, stream=stream, seed=999, steps=STEPS["super_res_steps"]
    )
    return image


@pytest.mark.parametrize(
    "batch_size, guidance",
    [
        (2, {"prior_guidance": 4.0, "decoder_guidance": 8.0}),
        (1, {"prior_guidance": 1.0, "decoder_guidance": 1.0}),
    ],
    ids=["guided-batch2", "unguided"],
)
def test_text_to_image_chain_equals_the_python_api(karlo_nodes, tiny_karlo_repo, batch_size, guidance) -> None:
    karlo = Karlo.load(str(tiny_karlo_repo), dtype="fp32", device="cpu")
    expected = karlo.sample(Request("a red fox", seed=7, batch_size=batch_size, **STEPS, **guidance))
    ours = text_chain(karlo_nodes, "a red fox", 7, batch_size, guidance)
    assert ours.shape == (batch_size, 256, 256, 3)
    assert torch.equal(ours, expected)


def test_variation_chain_equals_the_python_api(tiny_karlo_variations_repo) -> None:
    repo = str(tiny_karlo_variations_repo)
    pixels = np.random.default_rng(3).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    request = VariationRequest(Image.fromarray(pixels), seed=5, decoder_steps=4, super_res_steps=3)
    expected = Karlo.load(repo, dtype="fp32", device="cpu").sample_variations(request)

    (encoder,) = call("DalleLoadImageEncoder", repo_id=repo, dtype="fp32")
    decoder, super_res = call("DalleLoadKarloDecoder", repo_id=repo, dtype="fp32")
    (embeds,) = call("DalleImageEncode", image_encoder=encoder, image=torch.from_numpy(pixels).float()[None] / 255)
    small, stream = call("DalleKarloDecoderSample", decoder=decoder, image_embeds=embeds, seed=5, steps=4)
    (image,) = call("DalleKarloSuperRes", super_res=super_res, image=small, stream=stream, seed=0, steps=3)
    assert torch.equal(image, expected)


def test_super_res_without_a_stream_draws_from_its_seed(karlo_nodes) -> None:
    small = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    runs = [call("DalleKarloSuperRes", super_res=karlo_nodes[3], image=small, seed=s, steps=2)[0] for s in (1, 1, 2)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_own_seed_mode_re_rolls_a_stage_on_the_same_stream(karlo_nodes) -> None:
    """Continuing the stream, the seed is not used (the reference's pixels); in 'own seed' mode it decides."""
    prior, text_encoder, decoder, super_res = karlo_nodes
    (text,) = call("DalleTextEncode", text_encoder=text_encoder, text="a red fox")
    (embeds,) = call("DallePriorSample", prior=prior, positive=text, seed=7, steps=3)

    def decode(seed: int, noise: str) -> tuple:
        return call(
            "DalleKarloDecoderSample", decoder=decoder, image_embeds=embeds, text=text, seed=seed, steps=2, noise=noise
        )

    def upscale(small: torch.Tensor, stream: torch.Tensor, seed: int, noise: str) -> torch.Tensor:
        return call(
            "DalleKarloSuperRes", super_res=super_res, image=small, stream=stream, seed=seed, steps=2, noise=noise
        )[0]

    continued = [decode(seed, "continue the prior's stream") for seed in (1, 2)]
    own = [decode(seed, "own seed") for seed in (1, 1, 2)]
    assert torch.equal(continued[0][0], continued[1][0])
    assert torch.equal(own[0][0], own[1][0]) and not torch.equal(own[0][0], own[2][0])
    assert not torch.equal(own[0][0], continued[0][0])
    small, stream = continued[0]
    follow = [upscale(small, stream, seed, "continue the decoder's stream") for seed in (1, 2)]
    reroll = [upscale(small, stream, seed, "own seed") for seed in (1, 2)]
    assert torch.equal(follow[0], follow[1]) and not torch.equal(reroll[0], reroll[1])


def test_a_negative_prompt_replaces_the_unguided_prompt(karlo_nodes) -> None:
    prior, text_encoder = karlo_nodes[:2]
    (cat,) = call("DalleTextEncode", text_encoder=text_encoder, text="a cat")
    (blurry,) = call("DalleTextEncode", text_encoder=text_encoder, text="blurry")
    (plain,) = call("DallePriorSample", prior=prior, positive=cat, steps=3, seed=1)
    (negative,) = call("DallePriorSample", prior=prior, positive=cat, negative=blurry, steps=3, seed=1)
    assert isinstance(negative, KarloEmbeds) and negative.positive.shape == (1, 16)
    assert not torch.allclose(plain.positive, negative.positive)


def kandinsky_embeds() -> ImageEmbeds:
    return ImageEmbeds(torch.zeros(1, 16), torch.zeros(1, 16))  # the tiny repos' widths match: only the type tells


def wide_text(width: int) -> PromptEmbeds:
    embeds = TextEmbeds(torch.zeros(1, width), torch.zeros(1, 77, width), torch.ones(1, 77, dtype=torch.bool))
    return PromptEmbeds("x", embeds, embeds)


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"image_embeds": kandinsky_embeds()}, "These image embeddings come from Kandinsky 2.2.*load kakaobrain/karlo"),
        ({"text": wide_text(1280)}, "The text embeddings are 1280 wide, but Karlo's decoder reads 16: encode"),
        ({"guidance": math.nan}, "guidance must be between 0.0 and 100.0"),
        ({"image_embeds": torch.zeros(1, 16)}, "image_embeds got a Tensor, not CLIP image embeddings: connect DALL"),
        ({"steps": 1}, "steps must be between 2 and 1000"),
    ],
)
def test_decoder_input_errors(karlo_nodes, inputs, message) -> None:
    embeds = KarloEmbeds(torch.zeros(1, 16))
    with pytest.raises(ValueError, match=message):
        call("DalleKarloDecoderSample", decoder=karlo_nodes[2], **{"image_embeds": embeds, "seed": 0, **inputs})


def test_karlo_embeddings_are_refused_by_kandinsky_nodes(tiny_decoder_repo) -> None:
    decoder = call("DalleLoadDecoder", repo_id=str(tiny_decoder_repo), dtype="fp32")[0]
    karlo = KarloEmbeds(torch.zeros(1, 16))
    with pytest.raises(ValueError, match="come from Karlo .* connect them to DALL·E Karlo Decoder Sample"):
        call("DalleDecoderSample", decoder=decoder, image_embeds=karlo, width=64, height=64)
    with pytest.raises(ValueError, match="come from Karlo"):
        call("DalleImageEmbedsToConditioning", image_embeds=karlo)
    with pytest.raises(ValueError, match="come from different models .* make both with the same family"):
        call("DalleMixEmbeds", embeds_a=karlo, embeds_b=kandinsky_embeds())
    (mixed,) = call("DalleMixEmbeds", embeds_a=karlo, embeds_b=KarloEmbeds(torch.ones(1, 16)))
    assert isinstance(mixed, KarloEmbeds) and mixed.stream is None


def test_prior_refuses_text_of_another_tower(karlo_nodes) -> None:
    with pytest.raises(ValueError, match="The positive text embeddings are 1280 wide, but this prior reads 16"):
        call("DallePriorSample", prior=karlo_nodes[0], positive=wide_text(1280))


def test_super_res_takes_the_decoders_size(karlo_nodes) -> None:
    with pytest.raises(ValueError, match="The image is 256x256: Karlo's super-resolution takes the decoder's 64x64"):
        call("DalleKarloSuperRes", super_res=karlo_nodes[3], image=torch.rand(1, 256, 256, 3))


@pytest.fixture
def nothing_loads(monkeypatch) -> None:
    for module in ("kandinsky22", "karlo"):
        monkeypatch.setattr(f"dalle_nodes.pipelines.{module}.loading.load_strict", lambda *a: pytest.fail("loaded"))
        monkeypatch.setattr(f"dalle_nodes.pipelines.{module}.loading.clip_model", lambda *a: pytest.fail("loaded"))
    monkeypatch.setattr(checkpoints, "load_strict", lambda *a: pytest.fail("loaded"))
    loaders._loaded.clear()


@pytest.mark.parametrize(
    "node, repo, message",
    [
        ("DalleLoadDecoder", "tiny_karlo_repo", "is Karlo, not a Kandinsky 2.2 decoder: load it with Load DALL·E 2 "),
        ("DalleLoadPrior", "tiny_karlo_variations_repo", "is Karlo's image-variations repo, which has no prior"),
        ("DalleLoadKarloDecoder", "tiny_decoder_repo", "is a Kandinsky 2.2 decoder: .* not Karlo"),
        ("DalleLoadKarloDecoder", "tiny_prior_repo", "is the Kandinsky 2.2 prior: .* not Karlo"),
    ],
)
def test_loaders_refuse_the_other_family_before_loading(request, nothing_loads, node, repo, message) -> None:
    with pytest.raises((ValueError, checkpoints.CheckpointError), match=message) as error:
        call(node, repo_id=str(request.getfixturevalue(repo)), dtype="fp32")
    assert "\n" not in str(error.value)


def test_each_stage_asks_comfyui_for_room(karlo_nodes, monkeypatch) -> None:
    """The decoder and super-resolution UNets load with their activation estimates (pipelines/karlo/memory)."""
    from dalle_nodes.nodes import runtime
    from dalle_nodes.pipelines.karlo import memory

    asked, load_for = [], runtime.ManagedModule.load_for

    def spy(self, estimate):
        asked.append((type(self.module).__name__, estimate(True)))
        return load_for(self, estimate)

    monkeypatch.setattr(runtime.ManagedModule, "load_for", spy)
    decoder, super_res = karlo_nodes[2:]
    embeds = KarloEmbeds(torch.zeros(2, 16))
    small, _ = call("DalleKarloDecoderSample", decoder=decoder, image_embeds=embeds, seed=0, steps=2)
    call("DalleKarloSuperRes", super_res=super_res, image=small, steps=2)
    unet, first = decoder.decoder.module.config, super_res.first.module.config
    assert asked == [
        ("TextProjection", 0),
        ("KarloDecoder", memory.decoder_step_bytes(unet, 4, torch.float32)),  # 2 images, guided: 4 rows
        ("SuperResUNet", memory.super_res_step_bytes(first, 2, torch.float32)),
        ("SuperResUNet", memory.super_res_step_bytes(first, 2, torch.float32)),
    ]
