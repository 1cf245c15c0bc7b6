"""Image embeddings from pictures and mixing, against diffusers' KandinskyV22PriorPipeline.interpolate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dalle_nodes.nodes import NODE_CLASS_MAPPINGS as NODES
from dalle_nodes.nodes.embeds import slerp
from dalle_nodes.nodes.prior import ImageEmbeds


def picture(seed: int, size=(300, 200)) -> tuple[Image.Image, torch.Tensor]:
    """The same picture as PIL (what the reference takes) and as a ComfyUI IMAGE [1, H, W, 3]."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels), torch.from_numpy(pixels).float()[None] / 255


def test_image_mix_matches_reference_interpolate(tiny_prior_repo) -> None:
    from diffusers import KandinskyV22PriorPipeline

    (encoder,) = NODES["DalleLoadImageEncoder"]().load(str(tiny_prior_repo), "main", "fp32")
    (pil_a, image_a), (pil_b, image_b) = picture(0), picture(1, (160, 240))
    (embeds_a,) = NODES["DalleImageEncode"]().encode(encoder, image_a)
    (embeds_b,) = NODES["DalleImageEncode"]().encode(encoder, image_b)
    (ours,) = NODES["DalleMixEmbeds"]().mix(embeds_a, embeds_b, 0.7, "lerp")

    pipe = KandinskyV22PriorPipeline.from_pretrained(tiny_prior_repo)
    pipe.set_progress_bar_config(disable=True)
    reference = pipe.interpolate([pil_a, pil_b], [0.3, 0.7], num_inference_steps=2)
    assert torch.allclose(ours.positive, reference.image_embeds, atol=1e-5, rtol=1e-5)
    assert torch.allclose(ours.negative, reference.negative_image_embeds, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(embeds_a.positive, embeds_b.positive, atol=1e-3)


def test_image_variation_runs_through_the_decoder(tiny_prior_repo, tiny_decoder_repo) -> None:
    (encoder,) = NODES["DalleLoadImageEncoder"]().load(str(tiny_prior_repo), "main", "fp32")
    decoder, vq_vae, _, _ = NODES["DalleLoadDecoder"]().load(str(tiny_decoder_repo), "main", "fp32")
    batch = torch.cat([picture(2)[1], picture(3)[1]])
    (embeds,) = NODES["DalleImageEncode"]().encode(encoder, batch)
    assert embeds.positive.shape == embeds.negative.shape == (2, 16)
    (latent,) = NODES["DalleDecoderSample"]().sample(decoder, embeds, 64, 64, 2, 4.0, "ddim", False, 0)
    (image,) = NODES["DalleVQDecode"]().decode(vq_vae, latent)
    assert image.shape == (2, 64, 64, 3)


def test_slerp_endpoints_and_norm() -> None:
    a, b = torch.randn(3, 8), torch.randn(3, 8)
    b = b / b.norm(dim=-1, keepdim=True) * a.norm(dim=-1, keepdim=True)  # equal lengths
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-6) and torch.allclose(slerp(a, b, 1.0), b, atol=1e-5)
    middle = slerp(a, b, 0.5)
    assert torch.allclose(middle.norm(dim=-1), a.norm(dim=-1), rtol=1e-5)  # stays on the sphere, unlike lerp
    assert torch.allclose(slerp(a, 2 * a, 0.25), a * 1.25, atol=1e-6)  # parallel rows: lerp


def test_mix_broadcasts_a_single_row_and_refuses_mismatched_batches() -> None:
    one = ImageEmbeds(torch.ones(1, 4), torch.zeros(1, 4))
    three = ImageEmbeds(torch.randn(3, 4), torch.zeros(3, 4))
    (mixed,) = NODES["DalleMixEmbeds"]().mix(one, three, 0.5, "slerp")
    assert mixed.positive.shape == (3, 4)
    with pytest.raises(ValueError, match="Cannot mix batches of 2 and 3"):
        NODES["DalleMixEmbeds"]().mix(ImageEmbeds(torch.ones(2, 4), torch.zeros(2, 4)), three, 0.5, "lerp")
