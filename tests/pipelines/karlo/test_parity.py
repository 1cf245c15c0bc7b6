"""Karlo equals diffusers' UnCLIPPipeline and UnCLIPImageVariationPipeline for the same seed, stage by stage.

The reference pipelines are assembled from the tiny repo's components, each loaded on its own (diffusers 0.42 cannot
load the repo whole). Each stage's output is compared on its own — the prior's image embeddings, the 64 px decoder
image, the 256 px super-resolution image — in float, before any 8-bit rounding, so a mismatch names its stage.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers.pipelines.deprecated.unclip import pipeline_unclip, pipeline_unclip_image_variation
from diffusers.pipelines.deprecated.unclip.pipeline_unclip import UnCLIPPipeline
from diffusers.pipelines.deprecated.unclip.pipeline_unclip_image_variation import UnCLIPImageVariationPipeline
from PIL import Image

from dalle_nodes.engine.images import to_pil
from dalle_nodes.models.prior import PriorTransformer
from dalle_nodes.pipelines import Karlo
from dalle_nodes.pipelines.karlo import Request, VariationRequest, api, stages
from tiny_karlo import reference_components

TOLERANCE = 1e-4  # max abs difference, images in 0..1 and embeddings in CLIP units
STEPS = dict(prior_steps=3, decoder_steps=4, super_res_steps=3)  # super-res: two steps of the first UNet, one last


class Recorder:
    """What the reference computes between its stages: the prior's image embeddings (text_proj's input) and the
    64 px image (the input of the bicubic upscale the super-resolution reads)."""

    def __init__(self, monkeypatch, module, text_proj) -> None:
        self.embeds, self.small = [], []
        forward = text_proj.forward

        def text_proj_spy(**kwargs):
            self.embeds.append(kwargs["image_embeddings"].clone())
            return forward(**kwargs)

        monkeypatch.setattr(text_proj, "forward", text_proj_spy)
        functional = torch.nn.functional

        @functools.wraps(functional.interpolate)  # the pipeline reads its signature (to pass antialias)
        def interpolate(image, *args, **kwargs):
            self.small.append(image.clone())
            return functional.interpolate(image, *args, **kwargs)

        class Functional:
            def __getattr__(self, name):
                return interpolate if name == "interpolate" else getattr(functional, name)

        monkeypatch.setattr(module, "F", Functional())


def ours_by_stage(monkeypatch) -> dict[str, list]:
    """The outputs of the stages the API runs, recorded as it calls them, and each super-resolution call's arguments
    with its generator's state (to run it again on the reference's 64 px image)."""
    seen = {"embeds": [], "small": [], "super_res": []}
    for name, key in (("prior_stage", "embeds"), ("decoder_stage", "small")):
        stage = getattr(api, name)

        def spy(*args, _stage=stage, _key=key, **kwargs):
            out = _stage(*args, **kwargs)
            seen[_key].append(out)
            return out

        monkeypatch.setattr(api, name, spy)

    def super_res_spy(first, last, images, schedule, generator, *rest):
        seen["super_res"].append((first, last, schedule, generator.get_state()))
        return stages.super_res_stage(first, last, images, schedule, generator, *rest)

    monkeypatch.setattr(api, "super_res_stage", super_res_spy)
    return seen


def record_prior_calls(monkeypatch) -> list[str]:
    """The names of the prior's methods the stages call, in order."""
    calls = []
    for name in ("encode_text", "step"):
        method = getattr(PriorTransformer, name)
        monkeypatch.setattr(
            PriorTransformer, name, lambda self, *a, _m=method, _n=name: calls.append(_n) or _m(self, *a)
        )
    return calls


def stage_errors(seen: dict, recorded: Recorder, images: torch.Tensor, expected: np.ndarray) -> dict[str, float]:
    """Max abs error of each stage on its own (the super-resolution run again from the reference's 64 px image and
    generator state), and of the whole chain."""
    first, last, schedule, state = seen["super_res"][0]
    generator = torch.Generator()
    generator.set_state(state)
    super_res = stages.super_res_stage(first, last, image_of(recorded.small[0]), schedule, generator)
    errors = {"prior": max_error(seen["embeds"][0], recorded.embeds[0])} if seen["embeds"] else {}
    errors["decoder"] = max_error(seen["small"][0], image_of(recorded.small[0]))
    errors["super-res"] = max_error(super_res, torch.from_numpy(expected))
    errors["chain"] = max_error(images, torch.from_numpy(expected))
    print(f"max abs error by stage: {errors}")
    return errors


def max_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours.float().cpu() - reference.float().cpu()).abs().max())


def pixels(images: list[Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(image) for image in images])


def image_of(pixels: torch.Tensor) -> torch.Tensor:
    """The reference's [-1, 1] pixels [B, 3, H, W] as an IMAGE [B, H, W, 3] in 0..1."""
    return (pixels * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)


@functools.cache
def text_reference(repo: str) -> UnCLIPPipeline:
    return UnCLIPPipeline(**reference_components(repo)).to("cpu")


@pytest.fixture(scope="module")
def karlo(tiny_karlo_repo) -> Karlo:
    return Karlo.load(str(tiny_karlo_repo), dtype="fp32", device="cpu")


@pytest.mark.parametrize(
    "batch_size, prior_guidance, decoder_guidance",
    [(1, 4.0, 8.0), (2, 4.0, 8.0), (2, 1.0, 1.0), (1, 0.5, 0.0)],
    ids=["guided-1", "guided-2", "unguided-2", "below-1"],
)
def test_generate_equals_unclip_pipeline(
    karlo, tiny_karlo_repo, monkeypatch, batch_size, prior_guidance, decoder_guidance
) -> None:
    settings = dict(seed=5, batch_size=batch_size, prior_guidance=prior_guidance, decoder_guidance=decoder_guidance)
    reference = text_reference(tiny_karlo_repo)
    recorded = Recorder(monkeypatch, pipeline_unclip, reference.text_proj)
    with torch.no_grad():
        expected = reference(
            "a red fox",
            num_images_per_prompt=batch_size,
            prior_num_inference_steps=STEPS["prior_steps"],
            decoder_num_inference_steps=STEPS["decoder_steps"],
            super_res_num_inference_steps=STEPS["super_res_steps"],
            generator=torch.Generator().manual_seed(5),
            prior_guidance_scale=prior_guidance,
            decoder_guidance_scale=decoder_guidance,
            output_type="np",
        ).images
    seen = ours_by_stage(monkeypatch)
    prior_calls = record_prior_calls(monkeypatch)
    images = karlo.sample(Request("a red fox", **settings, **STEPS))

    errors = stage_errors(seen, recorded, images, expected)
    assert prior_calls == ["encode_text"] + ["step"] * STEPS["prior_steps"]  # the text encoded once per run
    assert images.shape == (batch_size, 256, 256, 3) and images.std() > 0.05  # a picture, not a flat colour
    assert all(error < TOLERANCE for error in errors.values()), errors
    generated = karlo.generate("a red fox", **settings, **STEPS)
    assert np.array_equal(
        np.stack([np.asarray(i) for i in generated]), np.stack([np.asarray(i) for i in to_pil(images)])
    )


@pytest.mark.parametrize(
    "batch_size, guidance", [(1, 8.0), (2, 8.0), (2, 1.0)], ids=["guided-1", "guided-2", "unguided"]
)
def test_variations_equal_unclip_image_variation_pipeline(
    tiny_karlo_variations_repo, monkeypatch, batch_size, guidance
) -> None:
    karlo = Karlo.load(str(tiny_karlo_variations_repo), dtype="fp32", device="cpu")
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 80, 3), dtype=np.uint8))
    reference = UnCLIPImageVariationPipeline(**reference_components(tiny_karlo_variations_repo))
    recorded = Recorder(monkeypatch, pipeline_unclip_image_variation, reference.text_proj)
    steps = dict(decoder_num_inference_steps=4, super_res_num_inference_steps=3)
    with torch.no_grad():
        expected = reference(
            picture,
            num_images_per_prompt=batch_size,
            generator=torch.Generator().manual_seed(9),
            decoder_guidance_scale=guidance,
            output_type="np",
            **steps,
        ).images
    seen = ours_by_stage(monkeypatch)
    request = VariationRequest(picture, seed=9, batch_size=batch_size, decoder_steps=4, super_res_steps=3)
    images = karlo.sample_variations(replace(request, decoder_guidance=guidance))

    errors = stage_errors(seen, recorded, images, expected)
    assert images.shape == (batch_size, 256, 256, 3) and images.std() > 0.05
    assert all(error < TOLERANCE for error in errors.values()), errors
