"""Depth ControlNet through our nodes (Decoder Sample with a hint, text-to-image and image-to-image) against
diffusers' KandinskyV22ControlnetPipeline and KandinskyV22ControlnetImg2ImgPipeline on the same tiny
kandinsky-2-2-controlnet-depth checkpoint (its UNet config derived from the decoder's: tiny_repos)."""

from __future__ import annotations

import pytest
import torch

from dalle_nodes.nodes import NODE_CLASS_MAPPINGS as NODES
from dalle_nodes.pipelines import masks
from edit_inputs import depth_map, embeds, picture

STEPS, GUIDANCE = 5, 4.0


@pytest.fixture(scope="module")
def controlnet(tiny_controlnet_repo) -> tuple:
    decoder, vq_vae, _, _ = NODES["DalleLoadDecoder"]().load(str(tiny_controlnet_repo), "main", "fp32")
    return decoder, vq_vae


def ours(controlnet, hint: torch.Tensor, size: tuple[int, int], seed: int, **inputs) -> torch.Tensor:
    decoder, vq_vae = controlnet
    (latent,) = NODES["DalleDecoderSample"]().sample(
        decoder, inputs.pop("image_embeds", embeds()), size[1], size[0], STEPS, GUIDANCE, "ddpm", False, seed,
        hint=hint, **inputs,
    )  # fmt: skip
    return NODES["DalleVQDecode"]().decode(vq_vae, latent)[0]


def run_reference(pipeline_class, repo, hint: torch.Tensor, size: tuple[int, int], seed: int, **inputs):
    pipe = pipeline_class.from_pretrained(repo, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    e = inputs.pop("image_embeds", embeds())
    out = pipe(
        image_embeds=e.positive,
        negative_image_embeds=e.negative,
        hint=hint.permute(0, 3, 1, 2),  # [B, 3, H, W] in 0..1, as diffusers' docs make it from a depth map
        height=size[0],
        width=size[1],
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
        **inputs,
    )
    return torch.from_numpy(out.images)


@pytest.mark.parametrize("size, batch", [((128, 192), 1), ((128, 128), 2)], ids=["non-square", "batch-2"])
def test_text_to_image_matches_diffusers(controlnet, tiny_controlnet_repo, size, batch) -> None:
    from diffusers import KandinskyV22ControlnetPipeline

    hint, e = depth_map(*size, batch), embeds(batch)
    actual = ours(controlnet, hint, size, 8, image_embeds=e)
    expected = run_reference(KandinskyV22ControlnetPipeline, tiny_controlnet_repo, hint, size, 8, image_embeds=e)
    assert actual.shape == (batch, *size, 3)
    assert expected.std() > 0.01
    error = (actual - expected).abs().max().item()
    print(f"{size} x{batch}: max abs difference {error:.2e}")
    assert error < 1e-4


def test_image_to_image_matches_diffusers(controlnet, tiny_controlnet_repo) -> None:
    """Square: the reference's image_processor.preprocess(image, width, height) swaps the two sides."""
    from diffusers import KandinskyV22ControlnetImg2ImgPipeline

    size, image = (128, 128), picture(128, 128)
    (latent,) = NODES["DalleVQEncode"]().encode(controlnet[1], image)
    actual = ours(controlnet, depth_map(*size), size, 6, latent=latent, denoise=0.6)
    expected = run_reference(
        KandinskyV22ControlnetImg2ImgPipeline,
        tiny_controlnet_repo,
        depth_map(*size),
        size,
        6,
        image=image.permute(0, 3, 1, 2),
        strength=0.6,
    )
    error = (actual - expected).abs().max().item()
    print(f"img2img: max abs difference {error:.2e}")
    assert error < 1e-4


def test_the_hint_steers_the_picture(controlnet) -> None:
    """Another hint changes the picture by far more than the parity tolerance, so parity proves the hint is read
    as the reference reads it (on the tiny random checkpoint its effect is small: 2e-3, against errors of 3e-6)."""
    flat = torch.full((1, 128, 128, 3), 0.5)
    change = (ours(controlnet, depth_map(128, 128), (128, 128), 1) - ours(controlnet, flat, (128, 128), 1)).abs()
    assert change.max() > 1e-3


def test_a_hint_of_the_same_shape_is_resized(controlnet, caplog) -> None:
    small, large = depth_map(128, 192), depth_map(256, 384)
    with caplog.at_level("INFO"):
        resized = masks.hint_pixels(large, 128, 192)
        ours(controlnet, large, (128, 192), 3)
    assert "Resizing the hint from 384x256 to the picture's 192x128" in caplog.text
    assert resized.shape == (1, 3, 128, 192)
    assert (resized - small.permute(0, 3, 1, 2)).abs().max() < 0.01  # two renderings of one smooth ramp


@pytest.mark.parametrize(
    "hint, message",
    [
        (depth_map(128, 128), "The hint is 128x128, the picture 192x128: a hint must cover the picture"),
        (depth_map(128, 192) * 255, "hint has values from 0.* to 184, but an IMAGE holds 0..1"),
        (depth_map(128, 192, batch=3), "The hint batch \\(3\\) must be 1 or match the embeddings \\(1\\)"),
        (None, "This is a depth ControlNet decoder: connect a hint"),
    ],
)
def test_bad_hints_are_refused(controlnet, hint, message) -> None:
    with pytest.raises(ValueError, match=message):
        ours(controlnet, hint, (128, 192), 0)


def test_other_decoders_refuse_a_hint(tiny_decoder_repo) -> None:
    decoder = NODES["DalleLoadDecoder"]().load(str(tiny_decoder_repo), "main", "fp32")[0]
    with pytest.raises(ValueError, match="A hint needs the depth ControlNet decoder: load .*controlnet-depth"):
        NODES["DalleDecoderSample"]().sample(
            decoder, embeds(), 128, 128, 2, GUIDANCE, "ddpm", False, 0, hint=depth_map(128, 128)
        )
