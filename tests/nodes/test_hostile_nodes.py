"""Nodes given what a careless graph (or a hostile API client) can send, called as ComfyUI calls them: every float
input refuses NaN and ±inf by name, and tensors of the wrong kind are refused with what the node needs and where
such an input comes from. ComfyUI's own min/max checks let NaN through (every comparison with NaN is false)."""

from __future__ import annotations

import pytest
import torch

from dalle_nodes.models import dalle_bart
from dalle_nodes.models.dalle_bart import Hyperparameters
from dalle_nodes.nodes import NODE_CLASS_MAPPINGS, loaders
from dalle_nodes.pipelines.kandinsky22.embeds import ImageEmbeds
from node_calls import call
from tiny_repos import TINY_MIN_DALLE
from tiny_upscalers import compact_state, write_upscaler

NOT_FINITE = [float("nan"), float("inf"), float("-inf")]


@pytest.fixture(scope="module")
def kandinsky(tiny_prior_repo, tiny_decoder_repo) -> dict:
    prior, text_encoder = call("DalleLoadPrior", repo_id=str(tiny_prior_repo), dtype="fp32")
    decoder, vq_vae, *_ = call("DalleLoadDecoder", repo_id=str(tiny_decoder_repo), dtype="fp32")
    (image_encoder,) = call("DalleLoadImageEncoder", repo_id=str(tiny_prior_repo), dtype="fp32")
    (positive,) = call("DalleTextEncode", text_encoder=text_encoder, text="a red fox")
    width = decoder.unet.module.config.image_embed_dim
    embeds = ImageEmbeds(torch.randn(1, width), torch.randn(1, width))
    return {
        "prior": prior,
        "positive": positive,
        "decoder": decoder,
        "vq_vae": vq_vae,
        "image_encoder": image_encoder,
        "embeds": embeds,
    }


@pytest.fixture(scope="module")
def mini(tiny_min_dalle_repo) -> dict:
    with pytest.MonkeyPatch.context() as patch:
        for variant in dalle_bart.HYPERPARAMETERS:
            patch.setitem(dalle_bart.HYPERPARAMETERS, variant, Hyperparameters(**TINY_MIN_DALLE))
        patch.setattr(loaders, "_loaded", {})
        bart, vqgan = call("DalleLoadMini", repo_id=str(tiny_min_dalle_repo), variant="mini", dtype="fp32")
    return {"bart": bart, "vqgan": vqgan}


@pytest.fixture(scope="module")
def upscaler(tmp_path_factory):
    path = write_upscaler(tmp_path_factory.mktemp("up") / "realesr-general-x4v3.safetensors", compact_state(4))
    return call("DalleLoadUpscaler", model="custom", filename=str(path))[0]


@pytest.fixture(scope="module")
def depth_model(tiny_depth_repo):
    return call("DalleLoadDepthModel", repo_id=str(tiny_depth_repo), dtype="fp32")[0]


def latent(*shape: int, fill: float | None = None) -> dict:
    samples = torch.randn(*shape)
    if fill is not None:
        samples[0, 0, 0, 0] = fill
    return {"samples": samples}


def image(*shape: int, scale: float = 1.0, fill: float | None = None) -> torch.Tensor:
    pixels = torch.rand(*shape) * scale
    if fill is not None:
        pixels[0, 0, 0, 0] = fill
    return pixels


@pytest.mark.parametrize("value", NOT_FINITE, ids=str)
@pytest.mark.parametrize(
    ("node", "name", "inputs"),
    [
        ("DallePriorSample", "guidance", {"steps": 2}),
        ("DalleDecoderSample", "guidance", {"width": 64, "height": 64, "steps": 2}),
        ("DalleDecoderSample", "denoise", {"steps": 2, "latent": latent(1, 4, 8, 8)}),
        ("DalleMixEmbeds", "weight", {}),
        ("DalleTokenSample", "temperature", {"text": "a fox"}),
        ("DalleTokenSample", "supercondition", {"text": "a fox"}),
        ("DalleGANUpscale", "scale_to", {"image": image(1, 8, 8, 3)}),
    ],
)
def test_every_float_input_refuses_non_finite_numbers(node, name, inputs, value, kandinsky, mini, upscaler) -> None:
    models = {
        "prior": kandinsky["prior"],
        "positive": kandinsky["positive"],
        "decoder": kandinsky["decoder"],
        "image_embeds": kandinsky["embeds"],
        "embeds_a": kandinsky["embeds"],
        "embeds_b": kandinsky["embeds"],
        "bart": mini["bart"],
        "upscale_model": upscaler,
    }
    wanted = set(NODE_CLASS_MAPPINGS[node].INPUT_TYPES()["required"])
    given = {key: model for key, model in models.items() if key in wanted}
    with pytest.raises(ValueError, match=f"^{name} must be between"):
        call(node, **given, **inputs, **{name: value})


BAD_LATENTS = [
    (latent(1, 16, 8, 8), "has 16 channels, but Kandinsky 2.2 \\(MoVQ\\) latents have 4: it comes from another"),
    (latent(1, 4, 8, 8, fill=float("nan")), "latent contains NaN or infinite values"),
    ({"samples": torch.randn(4, 8, 8)}, "must be a LATENT with samples \\[batch, 4, h, w\\]"),
    (torch.randn(1, 4, 8, 8), "must be a LATENT with samples"),
    ({"samples": torch.zeros(1, 4, 8, 8, dtype=torch.long)}, "must be a LATENT"),
]


@pytest.mark.parametrize(("bad", "message"), BAD_LATENTS)
@pytest.mark.parametrize("node", ["DalleDecoderSample", "DalleVQDecode"])
def test_wrong_latents_are_refused(node, bad, message, kandinsky) -> None:
    inputs = {"vq_vae": kandinsky["vq_vae"]} if node == "DalleVQDecode" else sampler_inputs(kandinsky)
    with pytest.raises(ValueError, match=message):
        call(node, **inputs, latent=bad)


def sampler_inputs(kandinsky: dict) -> dict:
    return {"decoder": kandinsky["decoder"], "image_embeds": kandinsky["embeds"], "steps": 2, "denoise": 0.5}


def test_a_latent_with_a_noise_mask_is_refused_by_a_text_to_image_decoder_and_decoded_by_vq_decode(kandinsky) -> None:
    masked = {**latent(1, 4, 8, 8), "noise_mask": torch.ones(1, 64, 64)}
    with pytest.raises(ValueError, match="carries a noise mask, which only an inpainting decoder reads"):
        call("DalleDecoderSample", **sampler_inputs(kandinsky), latent=masked)
    (pixels,) = call("DalleVQDecode", vq_vae=kandinsky["vq_vae"], latent=masked)
    assert pixels.shape == (1, 64, 64, 3)


def test_a_latent_the_decoder_cannot_sample_is_refused(kandinsky) -> None:
    with pytest.raises(ValueError, match="The latent is 5x5, an image of 40x40 px: the decoder cannot sample"):
        call("DalleDecoderSample", **sampler_inputs(kandinsky), latent=latent(1, 4, 5, 5))


@pytest.mark.parametrize(
    ("embeds", "message"),
    [
        (lambda w: ImageEmbeds(torch.randn(1, w + 1), torch.randn(1, w + 1)), "this model reads \\[batch, "),
        (lambda w: ImageEmbeds(torch.full((1, w), float("nan")), torch.randn(1, w)), "contains NaN"),
        (lambda w: ImageEmbeds(torch.randn(1, w), torch.full((1, w), float("inf"))), "negative image embeddings"),
    ],
)
def test_embeddings_of_another_width_or_not_finite_are_refused(embeds, message, kandinsky) -> None:
    width = kandinsky["decoder"].unet.module.config.image_embed_dim
    inputs = {**sampler_inputs(kandinsky), "denoise": 1.0, "width": 64, "height": 64}
    with pytest.raises(ValueError, match=message):
        call("DalleDecoderSample", **{**inputs, "image_embeds": embeds(width)})


BAD_IMAGES = [
    (image(1, 64, 64, 3, fill=float("nan")), "contains NaN or infinite values"),
    (image(1, 64, 64, 3, scale=255), "has values from .* to .*, but an IMAGE holds 0..1: rescale it first"),
    (image(1, 64, 64, 3) * 2 - 1, "has values from -"),
    (torch.randint(0, 255, (1, 64, 64, 3), dtype=torch.uint8), "holds torch.uint8 values"),
    (image(1, 3, 64, 64), "must be an IMAGE \\[batch, height, width, 3 or 4\\]"),
    (image(0, 64, 64, 3), "must be an IMAGE"),
    (image(64, 64, 3), "must be an IMAGE"),
]


@pytest.mark.parametrize(("bad", "message"), BAD_IMAGES)
@pytest.mark.parametrize("node", ["DalleVQEncode", "DalleImageEncode", "DalleGANUpscale", "DalleDepthMap"])
def test_wrong_images_are_refused(node, bad, message, kandinsky, upscaler, depth_model) -> None:
    inputs = {
        "DalleVQEncode": {"vq_vae": kandinsky["vq_vae"]},
        "DalleImageEncode": {"image_encoder": kandinsky["image_encoder"]},
        "DalleGANUpscale": {"upscale_model": upscaler},
        "DalleDepthMap": {"depth_model": depth_model},
    }[node]
    with pytest.raises(ValueError, match=message):
        call(node, **inputs, image=bad)


def test_small_overshoots_are_clipped_not_refused(kandinsky) -> None:
    """Rounding and sharpening leave values a little outside 0..1: those encode as the clipped picture."""
    pixels = image(1, 64, 64, 3)
    overshoot = pixels.clone()
    overshoot[0, 0, 0] = torch.tensor([1.03, -0.02, 0.5])
    clipped = overshoot.clamp(0, 1)
    (a,) = call("DalleVQEncode", vq_vae=kandinsky["vq_vae"], image=overshoot)
    (b,) = call("DalleVQEncode", vq_vae=kandinsky["vq_vae"], image=clipped)
    assert torch.equal(a["samples"], b["samples"])


def test_vq_encode_refuses_a_size_the_decoder_cannot_sample(kandinsky) -> None:
    with pytest.raises(ValueError, match="The image is 96x64: the decoder cannot sample a latent of that size"):
        call("DalleVQEncode", vq_vae=kandinsky["vq_vae"], image=image(1, 64, 96, 3))


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        (torch.full((1, 16, 16), 2**14), "range from 16384 to 16384; the VQGAN has codes 0 to 16383"),
        (torch.full((1, 16, 16), -1), "range from -1 to -1"),
        (torch.zeros(1, 16, 16), "must be image tokens \\[batch, 16, 16\\] of int64"),
        (torch.zeros(0, 16, 16, dtype=torch.long), "must be image tokens"),
    ],
)
def test_tokens_out_of_range_are_refused(tokens, message, mini) -> None:
    with pytest.raises(ValueError, match=message):
        call("DalleVQGANDecode", vqgan=mini["vqgan"], tokens=tokens)


def test_the_strongest_settings_give_finite_pictures(kandinsky) -> None:
    """No NaN in any output: the limits themselves (guidance 100 on both stages) sample finite images."""
    (embeds,) = call(
        "DallePriorSample", prior=kandinsky["prior"], positive=kandinsky["positive"], steps=2, guidance=100
    )
    (samples,) = call(
        "DalleDecoderSample",
        decoder=kandinsky["decoder"],
        image_embeds=embeds,
        width=64,
        height=64,
        steps=2,
        guidance=100.0,
    )
    (pixels,) = call("DalleVQDecode", vq_vae=kandinsky["vq_vae"], latent=samples)
    assert torch.isfinite(pixels).all() and 0 <= pixels.min() and pixels.max() <= 1
