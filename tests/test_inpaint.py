"""Inpainting through our nodes (VQ Encode → Decoder Sample with a mask → VQ Decode) against diffusers'
KandinskyV22InpaintPipeline on the same tiny kandinsky-2-2-decoder-inpaint checkpoint."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dalle_nodes.nodes import NODE_CLASS_MAPPINGS as NODES
from edit_inputs import embeds, kept_region, picture, rectangle_mask, soft_mask

STEPS, GUIDANCE = 5, 4.0


def ours(repo, image: torch.Tensor, mask: torch.Tensor, seed: int, sampler: str = "ddpm", **inputs) -> tuple:
    decoder, vq_vae, _, _ = NODES["DalleLoadDecoder"]().load(str(repo), "main", "fp32")
    (latent,) = NODES["DalleVQEncode"]().encode(vq_vae, image)
    height, width = image.shape[1:3]
    (sampled,) = NODES["DalleDecoderSample"]().sample(
        decoder, inputs.pop("image_embeds", embeds()), width, height, STEPS, GUIDANCE, sampler, False, seed,
        latent=latent, mask=mask, **inputs,
    )  # fmt: skip
    (decoded,) = NODES["DalleVQDecode"]().decode(vq_vae, sampled)
    (round_trip,) = NODES["DalleVQDecode"]().decode(vq_vae, latent)
    return decoded, round_trip, latent["samples"], sampled["samples"]


def reference(repo, image: torch.Tensor, mask: torch.Tensor, seed: int, sampler: str = "ddpm") -> torch.Tensor:
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, KandinskyV22InpaintPipeline

    pipe = KandinskyV22InpaintPipeline.from_pretrained(repo, dtype=torch.float32)
    if sampler != "ddpm":
        scheduler = {"ddim": DDIMScheduler, "dpmpp_2m": DPMSolverMultistepScheduler}[sampler]
        pipe.scheduler = scheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    e = embeds()
    height, width = image.shape[1:3]
    out = pipe(
        image_embeds=e.positive,
        negative_image_embeds=e.negative,
        image=image.permute(0, 3, 1, 2) * 2 - 1,  # tensors are taken as they are: no resizing
        mask_image=mask.clone(),  # binarised in place
        height=height,
        width=width,
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    )
    return torch.from_numpy(out.images)


@pytest.mark.parametrize(
    "make_mask, sampler",
    [(rectangle_mask, "ddpm"), (soft_mask, "ddpm"), (rectangle_mask, "ddim"), (soft_mask, "dpmpp_2m")],
    ids=["rectangle", "soft", "rectangle-ddim", "soft-dpmpp_2m"],
)
def test_inpaint_matches_diffusers(tiny_inpaint_repo, make_mask, sampler) -> None:
    """ddpm is the pipeline's own scheduler; the reference also runs DDIM and DPM-Solver++ given them. (Not
    euler_ancestral: there the reference noises the kept picture with its starting latent, which is scaled by
    sigma_max, so it over-noises; ours uses unit noise.)"""
    image, mask = picture(128, 128), make_mask(128, 128)
    if make_mask is soft_mask:
        assert ((mask > 0.05) & (mask < 0.95)).sum() > 1000  # really soft
    actual = ours(tiny_inpaint_repo, image, mask, 11, sampler)[0]
    expected = reference(tiny_inpaint_repo, image, mask, 11, sampler)
    assert expected.std() > 0.01  # a real picture, not a flat one
    error = (actual - expected).abs().max().item()
    print(f"{make_mask.__name__} {sampler}: max abs difference {error:.2e}")
    assert error < 1e-4


@pytest.mark.parametrize("height, width", [(128, 128), (128, 192), (192, 128)])
def test_kept_pixels_stay_within_the_vq_round_trip(tiny_inpaint_repo, height, width) -> None:
    """Non-square sizes too (the reference pipeline cannot take them from PIL images: it swaps the sides).

    The kept latents are the picture's exactly. Their pixels are the VQ round trip's up to MoVQ's decoder, whose
    mid-block attention lets every latent touch every pixel: measured on the tiny checkpoint, 8 px and more from
    the mask, a mean difference of 6e-4 (max 0.17 next to the mask), against the round trip's own 0.15 from the
    input."""
    image, mask = picture(height, width), rectangle_mask(height, width)
    actual, round_trip, picture_latent, sampled = ours(tiny_inpaint_repo, image, mask, seed=2)
    assert actual.shape == (1, height, width, 3)
    repaint = F.max_pool2d(rectangle_mask(height, width)[:, None], 8)[:, 0] > 0
    kept_latents = ~F.max_pool2d(repaint[:, None].float(), 3, stride=1, padding=1)[:, 0].bool()  # the grown border
    assert torch.equal(sampled.permute(0, 2, 3, 1)[kept_latents], picture_latent.permute(0, 2, 3, 1)[kept_latents])
    assert (sampled - picture_latent).abs().amax(1)[repaint].min() > 0.01  # every repainted latent changed

    far = kept_region(mask, margin=8)
    kept_error = (actual - round_trip).abs()[far].mean().item()
    round_trip_error = (round_trip - image).abs()[far].mean().item()
    print(f"{width}x{height}: kept pixels vs VQ round trip {kept_error:.1e}; vs input {round_trip_error:.2f}")
    assert kept_error < 2e-3 and kept_error < 0.02 * round_trip_error


def test_non_square_equals_reference_given_tensors(tiny_inpaint_repo) -> None:
    """Given tensors (no PIL resizing, where it swaps width and height) the reference runs at 128x192 too."""
    image, mask = picture(128, 192), soft_mask(128, 192)
    actual = ours(tiny_inpaint_repo, image, mask, seed=4)[0]
    expected = reference(tiny_inpaint_repo, image, mask, seed=4)
    assert (actual - expected).abs().max().item() < 1e-4


def test_a_batch_takes_one_mask_for_all_or_one_each(tiny_inpaint_repo) -> None:
    """With a mask per row, each row is what that mask gives when it serves the whole batch (same seed, so the
    same noise): rows take their own mask and nothing leaks between them."""
    image = picture(128, 128)
    each_mask = torch.cat([rectangle_mask(128, 128), soft_mask(128, 128)])
    both = embeds(batch=2)
    each = ours(tiny_inpaint_repo, image, each_mask, 9, image_embeds=both)[3]
    assert each.shape[0] == 2
    for row in range(2):
        shared = ours(tiny_inpaint_repo, image, each_mask[row][None], 9, image_embeds=both)[3]
        assert torch.equal(each[row], shared[row])


def sample(decoder, latent: dict | None, mask: torch.Tensor | None, steps: int = 2, **inputs) -> dict:
    return NODES["DalleDecoderSample"]().sample(
        decoder, embeds(), 128, 128, steps, GUIDANCE, "ddpm", False, 0, latent=latent, mask=mask, **inputs
    )[0]


@pytest.fixture(scope="module")
def inpainter(tiny_inpaint_repo) -> tuple:
    decoder, vq_vae, _, _ = NODES["DalleLoadDecoder"]().load(str(tiny_inpaint_repo), "main", "fp32")
    (latent,) = NODES["DalleVQEncode"]().encode(vq_vae, picture(128, 128))
    return decoder, latent


def test_a_mask_that_repaints_nothing_returns_the_picture(inpainter, caplog) -> None:
    decoder, latent = inpainter
    with caplog.at_level("INFO"):
        out = sample(decoder, latent, torch.full((1, 128, 128), 0.49))
    assert torch.equal(out["samples"], latent["samples"])
    assert "repaints nothing" in caplog.text


def test_load_images_placeholder_mask_repaints_nothing_at_any_size(tiny_inpaint_repo, caplog) -> None:
    """Load Image gives an opaque picture a 64x64 MASK of zeros: an empty mask, whatever the picture's shape."""
    decoder, vq_vae, _, _ = NODES["DalleLoadDecoder"]().load(str(tiny_inpaint_repo), "main", "fp32")
    (latent,) = NODES["DalleVQEncode"]().encode(vq_vae, picture(128, 192))
    with caplog.at_level("INFO"):
        out = sample(decoder, latent, torch.zeros(1, 64, 64))
    assert torch.equal(out["samples"], latent["samples"])
    assert "repaints nothing" in caplog.text


def thin_stroke(kind: str) -> torch.Tensor:
    """A 3 px stroke (or dot) on a 128x128 MASK that misses every pixel the reference samples (every 8 px)."""
    mask = torch.zeros(1, 128, 128)
    if kind == "horizontal":
        mask[:, 41:44, 20:100] = 1
    elif kind == "vertical":
        mask[:, 30:110, 83:86] = 1
    elif kind == "diagonal":
        y, x = torch.meshgrid(torch.arange(128), torch.arange(128), indexing="ij")
        mask[0] = ((x - y >= 3) & (x - y <= 5) & (y > 24) & (y < 100)).float()
    else:
        mask[:, 58:61, 66:69] = 1
    return mask


@pytest.mark.parametrize("kind", ["horizontal", "vertical", "diagonal", "dot"])
def test_a_thin_stroke_between_the_sample_points_is_repainted(inpainter, kind, caplog) -> None:
    """The reference samples the mask every 8 px and would return the picture unchanged: the cells the stroke
    touches are repainted (with the reference's one-latent-pixel border), the rest kept exactly."""
    decoder, latent = inpainter
    mask = thin_stroke(kind)
    touched = F.max_pool2d(mask[:, None], 8).expand(1, 4, -1, -1) > 0
    grown = F.max_pool2d(touched.float(), 3, stride=1, padding=1).bool()
    with caplog.at_level("INFO"):
        out = sample(decoder, latent, mask)["samples"]
    picture_latent = latent["samples"]
    assert (out - picture_latent).abs().amax(1)[touched[:, 0]].min() > 0.01  # every touched cell repainted
    assert torch.equal(out[~grown], picture_latent[~grown])
    assert "widened to the grid's cells" in caplog.text and "repaints nothing" not in caplog.text


def test_the_latents_noise_mask_is_the_mask(inpainter) -> None:
    """VAE Encode (for Inpainting) and Set Latent Noise Mask hand the mask over inside the LATENT."""
    decoder, latent = inpainter
    mask = rectangle_mask(128, 128)
    given = sample(decoder, latent, mask)
    carried = sample(decoder, {**latent, "noise_mask": mask[:, None]}, None)
    assert torch.equal(given["samples"], carried["samples"])


def test_a_larger_mask_of_the_same_shape_is_resized(inpainter, caplog) -> None:
    decoder, latent = inpainter
    small = rectangle_mask(128, 128)
    large = F.interpolate(small[:, None], scale_factor=3, mode="nearest")[:, 0]
    with caplog.at_level("INFO"):
        resized = sample(decoder, latent, large)
    assert "Resizing the mask from 384x384" in caplog.text
    assert torch.equal(resized["samples"], sample(decoder, latent, small)["samples"])


@pytest.mark.parametrize(
    "mask, message",
    [
        (torch.ones(1, 128, 96), "The mask is 96x128, the picture 128x128: a mask must cover the picture"),
        (torch.full((1, 128, 128), float("nan")), "The mask contains NaN"),
        (torch.ones(1, 128, 128, dtype=torch.uint8), "holds torch.uint8 values; a MASK holds floats"),
        (torch.full((1, 128, 128), 255.0), "values from 255 to 255, but a MASK holds 0..1"),
        (torch.ones(3, 128, 128), "The mask batch \\(3\\) must be 1 or match the embeddings \\(1\\)"),
        (torch.ones(1, 3, 128, 128), "must be a MASK \\[batch, height, width\\]"),
    ],
)
def test_bad_masks_are_refused(inpainter, mask, message) -> None:
    decoder, latent = inpainter
    with pytest.raises(ValueError, match=message):
        sample(decoder, latent, mask)


def test_an_inpainting_decoder_needs_a_mask_and_a_picture(inpainter) -> None:
    decoder, latent = inpainter
    with pytest.raises(ValueError, match="inpainting decoder: connect a mask"):
        sample(decoder, latent, None)
    with pytest.raises(ValueError, match="inpainting decoder: connect the picture's latent"):
        sample(decoder, None, rectangle_mask(128, 128))


def test_a_text_to_image_decoder_refuses_a_mask(tiny_decoder_repo, inpainter) -> None:
    decoder = NODES["DalleLoadDecoder"]().load(str(tiny_decoder_repo), "main", "fp32")[0]
    with pytest.raises(ValueError, match="A mask needs an inpainting decoder: load .*decoder-inpaint"):
        sample(decoder, inpainter[1], rectangle_mask(128, 128))
    with pytest.raises(ValueError, match="noise mask, which only an inpainting decoder reads"):
        sample(decoder, {**inpainter[1], "noise_mask": rectangle_mask(128, 128)}, None, denoise=0.5)


def test_denoise_below_1_starts_the_repainted_region_from_the_picture(inpainter) -> None:
    """The reference only repaints from noise; with denoise < 1 the masked region starts from the noised picture,
    as image-to-image does, and the kept region is still the picture's exactly."""
    decoder, latent = inpainter
    mask = rectangle_mask(128, 128)
    repaint = F.max_pool2d(mask[:, None], 8).expand(1, 4, -1, -1) > 0
    kept = ~F.max_pool2d(repaint.float(), 3, stride=1, padding=1).bool()  # beyond the grown border
    picture_latent = latent["samples"]
    distances = {}
    for denoise in (1.0, 0.3):
        out = sample(decoder, latent, mask, steps=10, denoise=denoise)["samples"]
        distances[denoise] = (out - picture_latent)[repaint].abs().mean().item()
        assert torch.equal(out[kept], picture_latent[kept])
    assert distances[0.3] < 0.5 * distances[1.0]
