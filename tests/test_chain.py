"""The whole Kandinsky 2.2 chain through our nodes equals diffusers' pipelines on the same tiny checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dalle_nodes.nodes import NODE_CLASS_MAPPINGS as NODES
from numerics import relative_error

PROMPT, NEGATIVE = "the cat and a dog", "the dog"
WIDTH, HEIGHT = 128, 192  # non-square: 16 x 24 latents
PRIOR_STEPS, DECODER_STEPS, GUIDANCE = 5, 6, 4.0


def reference(prior_repo, decoder_repo, negative: str | None, batch: int, seed: int, output_type: str):
    from diffusers import KandinskyV22Pipeline, KandinskyV22PriorPipeline

    prior_pipe = KandinskyV22PriorPipeline.from_pretrained(prior_repo, dtype=torch.float32)
    decoder_pipe = KandinskyV22Pipeline.from_pretrained(decoder_repo, dtype=torch.float32)
    for pipe in (prior_pipe, decoder_pipe):
        pipe.set_progress_bar_config(disable=True)
    embeds = prior_pipe(
        PROMPT,
        negative_prompt=negative,
        num_images_per_prompt=batch,
        num_inference_steps=PRIOR_STEPS,
        guidance_scale=GUIDANCE,
        generator=torch.Generator("cpu").manual_seed(seed),
    )
    out = decoder_pipe(
        image_embeds=embeds.image_embeds,
        negative_image_embeds=embeds.negative_image_embeds,
        width=WIDTH,
        height=HEIGHT,
        num_inference_steps=DECODER_STEPS,
        guidance_scale=GUIDANCE,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type=output_type,
    )
    return embeds, out.images


def ours(prior_repo, decoder_repo, negative: str | None, batch: int, seed: int):
    prior, text_encoder = NODES["DalleLoadPrior"]().load(str(prior_repo), "main", "fp32")
    decoder, vq_vae, _, _ = NODES["DalleLoadDecoder"]().load(str(decoder_repo), "main", "fp32")
    encode = NODES["DalleTextEncode"]().encode
    (positive,) = encode(text_encoder, PROMPT)
    extra = {"negative": encode(text_encoder, negative)[0]} if negative else {}
    (embeds,) = NODES["DallePriorSample"]().sample(prior, positive, seed, PRIOR_STEPS, GUIDANCE, batch, **extra)
    (latent,) = NODES["DalleDecoderSample"]().sample(
        decoder, embeds, WIDTH, HEIGHT, DECODER_STEPS, GUIDANCE, "ddpm", False, seed
    )
    (image,) = NODES["DalleVQDecode"]().decode(vq_vae, latent)
    return embeds, latent["samples"], image


@pytest.mark.parametrize("negative, batch, seed", [(None, 1, 7), (NEGATIVE, 2, 123)])
def test_chain_matches_diffusers(tiny_prior_repo, tiny_decoder_repo, negative, batch, seed) -> None:
    embeds, latents, image = ours(tiny_prior_repo, tiny_decoder_repo, negative, batch, seed)
    ref_embeds, ref_latents = reference(tiny_prior_repo, tiny_decoder_repo, negative, batch, seed, "latent")
    _, ref_image = reference(tiny_prior_repo, tiny_decoder_repo, negative, batch, seed, "np")

    assert relative_error(embeds.positive, ref_embeds.image_embeds) < 1e-5
    assert relative_error(embeds.negative, ref_embeds.negative_image_embeds) < 1e-5
    assert latents.shape == (batch, 4, HEIGHT // 8, WIDTH // 8)
    assert relative_error(latents, ref_latents) < 1e-4
    assert image.shape == (batch, HEIGHT, WIDTH, 3)
    ref_image = torch.from_numpy(np.asarray(ref_image))
    assert ref_image.std() > 0.01 and 0 < ref_image.mean() < 1  # a real, non-constant, unclamped picture
    assert (image - ref_image).abs().max().item() < 1e-4
