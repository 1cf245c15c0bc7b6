"""Our MODEL, VAE and CLIP_VISION inside ComfyUI's own machinery (CFGGuider, KSampler's samplers, sd.VAE, clip_vision),
checked by native_checks.py in ComfyUI's Python: skips without COMFYUI_PATH, fails instead where
DALLE_NODES_REQUIRE_COMFYUI=1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tiny_repos

pytestmark = pytest.mark.skipif(
    not os.environ.get("COMFYUI_PATH"),
    reason="set COMFYUI_PATH to a ComfyUI checkout (and COMFYUI_PYTHON to its interpreter) to run",
)
ROOT = Path(__file__).resolve().parents[2]
# Kept latents go through float blends (x * keep + picture * (1 - keep)) and kernels that round differently by memory
# layout and batch: equal to about 1e-8, not bit for bit.
KEPT_TOLERANCE = 1e-6
REAL_IMAGE_ENCODER = tiny_repos.PRIOR_CONFIGS / "image_encoder" / "config.json"


@pytest.fixture(scope="module")
def checks(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("native")
    tiny_repos.write_prior_repo(base / "prior")
    tiny_repos.write_decoder_repo(base / "decoder")
    tiny_repos.write_inpaint_repo(base / "inpaint")
    tiny_repos.write_controlnet_repo(base / "controlnet")
    package = base / "path"
    package.mkdir()
    (package / "dalle_nodes").symlink_to(ROOT, target_is_directory=True)  # this checkout, whatever is installed
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "DALLE_NODES_HOME": str(base / "home"),
        "PYTHONPATH": os.pathsep.join([str(package), os.environ.get("PYTHONPATH", "")]),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    out = base / "checks.json"
    command = [os.environ.get("COMFYUI_PYTHON", sys.executable), str(Path(__file__).with_name("native_checks.py"))]
    args = [os.environ["COMFYUI_PATH"], base / "decoder", base / "prior", out, REAL_IMAGE_ENCODER]
    args += [base / "inpaint", base / "controlnet"]
    done = subprocess.run([*command, *map(str, args)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-10000:]
    return json.loads(out.read_text())


def test_one_set_of_weights_for_both_paths(checks) -> None:
    assert checks["shared"] == dict.fromkeys(checks["shared"], True)


def test_beta_schedule_is_diffusers_ddpm_config(checks) -> None:
    from diffusers import DDPMScheduler

    config = json.loads((tiny_repos.DECODER_CONFIGS / "scheduler" / "scheduler_config.json").read_text())
    alphas = torch.cumprod(1 - DDPMScheduler.from_config(config).betas.double(), 0)  # diffusers' own: float32 cumprod
    expected = ((1 - alphas) / alphas).sqrt()
    assert torch.allclose(torch.tensor(checks["sigmas"], dtype=torch.float64), expected, rtol=1e-6, atol=0)


def test_denoised_is_x_minus_sigma_eps_with_and_without_cfg(checks) -> None:
    # relative to the largest value: a random UNet's σ·ε reaches ~10³ at the highest σ
    assert checks["denoised_error"]["1.0"] <= 1e-5
    assert checks["denoised_error"]["4.0"] <= 1e-5
    assert checks["unclip_error"] <= 1e-5


def test_vae_is_our_movq(checks) -> None:
    assert checks["vae_decode_error"] <= 1e-5
    assert checks["vae_encode_error"] <= 1e-5
    assert checks["tiled_shape"] == [2, 64, 96, 3]


def test_ksampler_ddim_uniform_is_our_ddim_up_to_the_last_step(checks) -> None:
    """Same timesteps (1, 1 + 1000/steps, …) and the same noise draw; ComfyUI's last step goes to σ = 0, diffusers'
    DDIM (ours) to the noise level of t = 0 (σ ≈ 0.029): that alone differs, by well under 0.02 of 1 in the image."""
    measured = checks["ksampler"]["ddim/ddim_uniform"]
    assert measured["image_max_abs"] <= 0.02, measured
    assert measured["latent_max_abs"] <= 0.02 * measured["latent_std"], measured


# The padded KSampler run against the reference loop, relative to the largest latent value: the same float32 operations
# in another order (ComfyUI batches cond and uncond in one call); measured 1.2e-6 over 6 steps, single predictions
# 3e-6 (as for sizes that need no padding).
PADDED_RUN_TOLERANCE = 1e-5


def test_ksampler_takes_sizes_that_are_not_multiples_of_64(checks) -> None:
    """72 x 40 px (latent 9 x 5, mirrored to the UNet's 16 x 8) and 24 x 16 px (latent 3 x 2, edge repeated): each
    denoised prediction is the UNet's on the padded latent, cropped; a whole euler run gives the requested size and
    the reference loop's latents. DALL·E Decoder Sample keeps to multiples of 64, as the reference pipeline samples."""
    assert checks["odd_sizes"]["72x40"] <= 1e-5 and checks["odd_sizes"]["24x16"] <= 1e-5
    run = checks["odd_size_ksampler"]
    assert run["shape"] == [1, 4, 5, 9] and run["image_shape"] == [1, 40, 72, 3]
    assert run["error"] <= PADDED_RUN_TOLERANCE
    assert checks["decoder_node_odd_size_error"].startswith(
        "ValueError: width 72 is not supported: use a multiple of 64"
    )
    assert checks["too_large_error"].startswith("ValueError: The latent is 520x8, an image of 4160x64 px: this MODEL")


def test_inpaint_model_pads_its_picture_and_mask_with_the_latent(checks) -> None:
    odd = checks["inpaint_odd_size"]
    assert odd["shape"] == [1, 4, 5, 9] and odd["unet_input_shape"] == [2, 9, 8, 16]
    assert odd["kept_region_error"] <= KEPT_TOLERANCE and odd["repainted_change"] > 0.1


def test_inpaint_model_reads_kandinsky_channel_order(checks) -> None:
    """The inpaint repo's MODEL: latents (4), masked-image latents (4), keep-mask (1), from core's concat entries."""
    assert checks["inpaint_channels"] == 9
    assert checks["inpaint_concat_keys"] == ["masked_image", "mask_inverted"]


def test_ksampler_keeps_the_unmasked_region_with_inpaint_model_conditioning(checks) -> None:
    """InpaintModelConditioning's latent is the whole picture's; with noise_mask on, KSampler's kept latents are the
    picture's (it blends each denoised prediction with them: exact but for float rounding in the blend, a few 1e-9)
    and the masked region is repainted. With noise_mask off
    the whole latent is sampled (a random UNet drifts far from the picture everywhere)."""
    on, off = (checks[f"inpaint_model_conditioning/noise_mask={flag}"] for flag in (True, False))
    assert on["latent_is_picture"] <= KEPT_TOLERANCE and off["latent_is_picture"] <= KEPT_TOLERANCE
    assert on["kept_region_error"] <= KEPT_TOLERANCE and on["repainted_change"] > 0.1
    assert off["kept_region_error"] > 0.1


def test_inpaint_model_conditioning_feeds_what_our_pipeline_feeds(checks) -> None:
    """Core's concat against ours (KandinskyV22InpaintPipeline's) for a mask on the latent grid. The keep-masks differ
    by exactly the reference's growth of the repainted region (one latent pixel): core keeps that ring. Repainted
    latents are zero in both. Kept latents differ because core encodes the picture with the hole filled grey, the
    reference encodes it whole: measured on the tiny random MoVQ (whose mid-block attention spreads the grey
    everywhere), at most 0.28 and on average 0.05 of the latents' largest value. A mask that repaints nothing gives
    exactly our concat."""
    compared = checks["inpaint_concat_vs_ours"]
    assert compared["ours_is_theirs_grown"] and compared["ours_keeps_where_theirs_repaints"] == 0
    assert compared["ring_theirs_keeps_ours_repaints"] > 0 and compared["kept_latents"] > 0
    assert compared["repainted_latents_error"] == 0.0
    assert compared["kept_latents_error"] <= 0.4 and compared["kept_latents_mean_error"] <= 0.1
    assert checks["inpaint_empty_mask"] == {"masked_latent_error": 0.0, "keep_equal": True}


def test_vae_encode_for_inpainting_then_ksampler(checks) -> None:
    """Without concat entries the MODEL reads the LATENT (picture encoded with the hole grey) and its grown noise mask,
    rounded at latent size; KSampler keeps that latent outside the mask."""
    measured = checks["vae_encode_for_inpaint"]
    assert measured["shape"] == [1, 4, 8, 16]
    assert measured["keep_error"] == 0.0 and measured["masked_latent_error"] == 0.0  # masks of 0 and 1: exact
    assert measured["kept_region_error"] <= KEPT_TOLERANCE


def test_controlnet_model_in_ksampler_says_what_to_use(checks) -> None:
    """The depth ControlNet (8 input channels) is no inpainting model, and without a hint KSampler cannot run it."""
    assert checks["controlnet_concat_keys"] == []
    assert checks["controlnet_ksampler_error"].startswith("ValueError: This MODEL is the depth ControlNet decoder")
    assert "use DALL·E Decoder Sample with a hint" in checks["controlnet_ksampler_error"]


def test_bad_inputs_give_clear_errors(checks) -> None:
    assert "carries no CLIP image embeddings" in checks["text_conditioning_error"]
    assert "The latent has 16 channels" in checks["channels_error"]
    assert "The latent has 16 channels, but Kandinsky 2.2 (MoVQ) latents have 4" in checks["vae_channels_error"]


def test_clip_vision(checks) -> None:
    """Core's Load CLIP Vision takes the real file: detected as ViT-bigG by its 48th layer, and every tensor of
    ComfyUI's bigG model is in the file, same shape. It picks the config by layer count, so it refuses the tiny
    one; our loader builds ComfyUI's model from the repo's own config instead."""
    real = checks["clip_vision_real"]
    assert real == {"detected_as_g": True, "missing_in_file": [], "unused_in_file": [], "shape_mismatches": []}
    assert checks["core_loader_on_tiny"].startswith("None")
    assert checks["clip_vision_embeds_shape"] == [1, tiny_repos.WIDTH]
    assert checks["zero_image_shape"] == [1, tiny_repos.WIDTH]
