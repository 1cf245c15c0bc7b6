"""Run by test_native.py in ComfyUI's Python: our MODEL, VAE and CLIP_VISION against ComfyUI's own machinery.

argv: ComfyUI checkout, tiny decoder repo, tiny prior repo, output JSON path, the real image_encoder/config.json, tiny
inpaint decoder repo, tiny depth ControlNet repo.
Measures and writes numbers; the test asserts on them (this Python may lack pytest and diffusers).
"""

from __future__ import annotations

import json
import sys
import time

checkout, decoder_repo, prior_repo, out_path, _, inpaint_repo, controlnet_repo = sys.argv[1:8]
sys.path.insert(0, checkout)

from comfy.cli_args import args  # noqa: E402

args.cpu = True  # before model_management reads it

import comfy.clip_model  # noqa: E402
import comfy.clip_vision  # noqa: E402
import comfy.ops  # noqa: E402
import comfy.sample  # noqa: E402
import comfy.samplers  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dalle_nodes.nodes.conditioning import image_embeds_conditioning  # noqa: E402
from dalle_nodes.nodes.decoder import DalleDecoderSample  # noqa: E402
from dalle_nodes.nodes.loaders import DalleLoadCLIPVision, DalleLoadDecoder  # noqa: E402
from dalle_nodes.nodes.vae import DalleVQDecode, DalleVQEncode  # noqa: E402
from dalle_nodes.pipelines.kandinsky22.embeds import ImageEmbeds  # noqa: E402

torch.manual_seed(0)
results: dict = {}
started = time.monotonic()
decoder, vq_vae, model, vae = DalleLoadDecoder().load(decoder_repo, "main", "fp32")
unet, movq = decoder.unet.module, vq_vae.movq.module
results["load_s"] = time.monotonic() - started

# One set of weights: the MODEL's diffusion model and the VAE's first stage are our modules, under one patcher each.
ours = {p.data_ptr() for p in unet.parameters()}
theirs = {p.data_ptr() for p in model.model.diffusion_model.parameters()}
results["shared"] = {
    "unet_is_model": model.model.diffusion_model is unet,
    "same_unet_tensors": ours == theirs,
    "movq_is_vae": vae.first_stage_model is movq,
    "one_unet_patcher": decoder.unet.patcher is model,
    "one_movq_patcher": vq_vae.movq.patcher is vae.patcher,
}
sampling = model.model.model_sampling
results["sigmas"] = sampling.sigmas.double().tolist()
results["rgb_factors"] = model.model.latent_format.latent_rgb_factors

width = unet.config.image_embed_dim
positive, negative = torch.randn(1, width), torch.randn(1, width)
x = torch.randn(1, 4, 16, 16)
probe_sigmas = [float(sampling.sigmas[i]) for i in (0, 100, 400, 750, 999)]


def probe(conds_positive, conds_negative, cfg: float, latent: torch.Tensor = x) -> list[torch.Tensor]:
    """The guided denoised prediction at each probe sigma, through ComfyUI's CFGGuider (cond processing, extra_conds,
    sampling_function) with a 'sampler' that only records."""
    seen = []

    def record(model_k, x_in, sigmas, extra_args=None, callback=None, disable=None):
        for sigma in probe_sigmas:
            seen.append(model_k(x_in, torch.full((x_in.shape[0],), sigma), **extra_args))
        return x_in

    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(conds_positive, conds_negative)
    guider.set_cfg(cfg)
    sigmas = torch.tensor([probe_sigmas[-1], 0.0])
    guider.sample(torch.zeros_like(latent), latent, comfy.samplers.KSAMPLER(record), sigmas, disable_pbar=True, seed=0)
    return seen


def reference_denoised(latent, sigma, embeds_positive, embeds_negative, cfg: float, pad: str) -> torch.Tensor:
    """x − σ·ε with ε from our UNet directly (guided on ε as the reference pipeline guides), the UNet's input padded
    at the bottom and right to multiples of 8 (the tiny UNet's 4 levels) in mode `pad` and its output cropped back."""
    height, width = latent.shape[2:]
    t = sampling.timestep(torch.as_tensor(sigma)).float()
    model_in = F.pad(latent / (sigma**2 + 1) ** 0.5, (0, -width % 8, 0, -height % 8), mode=pad)
    with torch.inference_mode():
        eps = unet(model_in, t, embeds_positive)[:, :4, :height, :width]
        if cfg != 1:
            uncond = unet(model_in, t, embeds_negative)[:, :4, :height, :width]
            eps = uncond + cfg * (eps - uncond)
    return latent - sigma * eps


def reference(embeds_positive, embeds_negative, cfg: float, latent=x, pad: str = "reflect") -> list[torch.Tensor]:
    return [reference_denoised(latent, s, embeds_positive, embeds_negative, cfg, pad) for s in probe_sigmas]


def max_error(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Largest difference relative to the largest value (σ·ε reaches ~10³ with a random UNet's ε at σ = 14.6)."""
    return max(float((p - q).abs().max() / q.abs().max()) for p, q in zip(a, b, strict=True))


pos_cond, neg_cond = image_embeds_conditioning(positive), image_embeds_conditioning(negative)
results["denoised_error"] = {
    str(cfg): max_error(probe(pos_cond, neg_cond, cfg), reference(positive, negative, cfg)) for cfg in (1.0, 4.0)
}


def vision_output(embeds: torch.Tensor) -> comfy.clip_vision.Output:
    out = comfy.clip_vision.Output()
    out["image_embeds"] = embeds
    return out


# Core unCLIP entries: every image of every entry times its strength, summed; they replace the base's embedding.
a, b = torch.randn(2, width), torch.randn(1, width)
unclip = [
    [
        neg_cond[0][0],
        {
            **neg_cond[0][1],
            "unclip_conditioning": [
                {"clip_vision_output": vision_output(a), "strength": 0.7, "noise_augmentation": 0.0},
                {"clip_vision_output": vision_output(b), "strength": 0.5, "noise_augmentation": 0.0},
            ],
        },
    ]
]
summed = 0.7 * a.sum(0, keepdim=True) + 0.5 * b
results["unclip_error"] = max_error(probe(unclip, neg_cond, 4.0), reference(summed, negative, 4.0))


def error_of(call) -> str:
    try:
        call()
    except Exception as error:  # the message a user would read
        return f"{type(error).__name__}: {error}"
    return ""


sd_text = [[torch.zeros(1, 77, 768), {"pooled_output": torch.zeros(1, 768)}]]
results["text_conditioning_error"] = error_of(lambda: probe(sd_text, neg_cond, 4.0))
results["channels_error"] = error_of(lambda: probe(pos_cond, neg_cond, 4.0, torch.randn(1, 16, 16, 16)))
results["vae_channels_error"] = error_of(lambda: vae.decode(torch.randn(1, 16, 8, 8)))

# VAE: ComfyUI's decode / encode of our VAE against our nodes.
latent = torch.randn(2, 4, 8, 12)
started = time.monotonic()
comfy_pixels = vae.decode(latent)
results["vae_decode_s"] = time.monotonic() - started
our_pixels = DalleVQDecode().decode(vq_vae, {"samples": latent})[0]
results["vae_decode_error"] = float((comfy_pixels - our_pixels).abs().max())
tiled = vae.decode_tiled(latent, tile_x=8, tile_y=8, overlap=2)
results["tiled_shape"] = list(tiled.shape)
results["tiled_vs_whole"] = float((tiled - comfy_pixels).abs().max())
image = torch.rand(1, 64, 128, 3)
results["vae_encode_error"] = float(
    (vae.encode(image) - DalleVQEncode().encode(vq_vae, image)[0]["samples"]).abs().max()
)

# Our ddim against KSampler's ddim / ddim_uniform, same seed and steps.
steps, seed, guidance = 10, 5, 4.0
started = time.monotonic()
ours_latent = DalleDecoderSample().sample(
    decoder, ImageEmbeds(positive, negative), 64, 64, steps, guidance, "ddim", False, seed
)[0]["samples"]
results["ours_ddim_s"] = time.monotonic() - started
empty = torch.zeros(1, 4, 8, 8)
noise = comfy.sample.prepare_noise(empty, seed)
results["ksampler"] = {}
for sampler_name, scheduler in [("ddim", "ddim_uniform")]:
    started = time.monotonic()
    theirs = comfy.sample.sample(
        model, noise, steps, guidance, sampler_name, scheduler, pos_cond, neg_cond, empty, disable_pbar=True, seed=seed
    )
    seconds = time.monotonic() - started
    pixels_ours = DalleVQDecode().decode(vq_vae, {"samples": ours_latent})[0]
    pixels_theirs = vae.decode(theirs)
    results["ksampler"][f"{sampler_name}/{scheduler}"] = {
        "latent_max_abs": float((theirs - ours_latent).abs().max()),
        "latent_std": float(ours_latent.std()),
        "image_max_abs": float((pixels_theirs - pixels_ours).abs().max()),
        "image_mean_abs": float((pixels_theirs - pixels_ours).abs().mean()),
        "seconds": seconds,
    }


# Sizes that are not multiples of 64 px: 72 x 40 (latent 9 x 5) padded to the UNet's 16 x 8 by reflection, 24 x 16
# (latent 3 x 2, too short to mirror) by repeating the edge; and a whole KSampler run (euler) against the same padded
# latent sampled by the UNet directly, each step cropped back. Our decoder node keeps to multiples of 64.
def euler_reference(noise: torch.Tensor, steps: int, cfg: float) -> torch.Tensor:
    sigmas = comfy.samplers.calculate_sigmas(sampling, "normal", steps)
    latent = sampling.noise_scaling(sigmas[0], noise, torch.zeros_like(noise), max_denoise=True)
    for sigma, next_sigma in zip(sigmas[:-1], sigmas[1:], strict=True):
        denoised = reference_denoised(latent, sigma, positive, negative, cfg, "reflect")
        latent = latent + (latent - denoised) / sigma * (next_sigma - sigma)
    return latent


results["odd_sizes"] = {}
for (h, w), pad in (((5, 9), "reflect"), ((2, 3), "replicate")):
    odd = torch.randn(1, 4, h, w)
    odd_error = max_error(probe(pos_cond, neg_cond, 4.0, odd), reference(positive, negative, 4.0, odd, pad))
    results["odd_sizes"][f"{w * 8}x{h * 8}"] = odd_error
empty = torch.zeros(1, 4, 5, 9)
noise = comfy.sample.prepare_noise(empty, seed)
theirs = comfy.sample.sample(
    model, noise, 6, 4.0, "euler", "normal", pos_cond, neg_cond, empty, disable_pbar=True, seed=seed
)
expected = euler_reference(noise, 6, 4.0)
results["odd_size_ksampler"] = {
    "shape": list(theirs.shape),
    "image_shape": list(vae.decode(theirs).shape),
    "error": float((theirs - expected).abs().max() / expected.abs().max()),
}
results["too_large_error"] = error_of(lambda: probe(pos_cond, neg_cond, 4.0, torch.randn(1, 4, 8, 520)))
results["decoder_node_odd_size_error"] = error_of(
    lambda: DalleDecoderSample().sample(decoder, ImageEmbeds(positive, negative), 72, 40, 2, 4.0, "ddim", False, 0)
)

# Inpainting through core nodes with the inpaint decoder's MODEL and VAE (kandinsky-2-2-decoder-inpaint in miniature).
import nodes as core  # noqa: E402  ComfyUI's nodes.py: InpaintModelConditioning, VAEEncodeForInpaint
from dalle_nodes.pipelines import masks  # noqa: E402
from dalle_nodes.pipelines.kandinsky22 import starts  # noqa: E402
from dalle_nodes.pipelines.kandinsky22.starts import LATENT_CHANNELS  # noqa: E402

inpaint_decoder, inpaint_vq, inpaint_model, inpaint_vae = DalleLoadDecoder().load(inpaint_repo, "main", "fp32")
unet_inputs = []
inpaint_decoder.unet.module.register_forward_pre_hook(lambda module, inputs: unet_inputs.append(inputs[0].clone()))
picture = torch.rand(1, 64, 128, 3)
block = torch.zeros(1, 64, 128)  # 1 = repaint, on the 8-pixel latent grid: latent rows 2..5, columns 5..10
block[:, 16:48, 40:88] = 1
picture_latent = DalleVQEncode().encode(inpaint_vq, picture)[0]


def ours_fed(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What our pipeline (KandinskyV22InpaintPipeline's way) feeds the UNet beside x: masked latents, keep-mask."""
    keep = starts.keep_mask(starts.DecoderStart(latent=picture_latent["samples"], repaint=mask), 1)
    return picture_latent["samples"] * keep, keep


def ksampler_fed(positive, negative, latent: dict, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """KSampler (euler / normal, 4 steps, cfg 4) on the inpaint MODEL: the sampled latents, and the masked latents
    and keep-mask the UNet read at the first step."""
    unet_inputs.clear()
    samples = latent["samples"]
    noise = comfy.sample.prepare_noise(samples, seed)
    out = comfy.sample.sample(
        inpaint_model,
        noise,
        4,
        4.0,
        "euler",
        "normal",
        positive,
        negative,
        samples,
        noise_mask=latent.get("noise_mask"),
        disable_pbar=True,
        seed=seed,
    )
    extra = unet_inputs[0][:1, LATENT_CHANNELS:]
    return out, extra[:, :LATENT_CHANNELS], extra[:, LATENT_CHANNELS:]


results["inpaint_channels"] = int(inpaint_decoder.unet.module.config.in_channels)
results["inpaint_concat_keys"] = list(inpaint_model.model.concat_keys)
for noise_mask in (True, False):
    positive, negative, latent = core.InpaintModelConditioning().encode(
        pos_cond, neg_cond, picture, inpaint_vae, block, noise_mask
    )
    sampled, theirs_masked, theirs_keep = ksampler_fed(positive, negative, latent)
    kept = 1 - comfy.utils.reshape_mask(block, sampled.shape)[:, :1]  # KSampler's own keep, at latent size
    key = f"inpaint_model_conditioning/noise_mask={noise_mask}"
    results[key] = {
        "latent_is_picture": float((latent["samples"] - picture_latent["samples"]).abs().max()),
        "kept_region_error": float(((sampled - picture_latent["samples"]) * kept).abs().max()),
        "repainted_change": float(((sampled - picture_latent["samples"]) * (1 - kept)).abs().mean()),
    }
    if noise_mask:
        ours_masked, ours_keep = ours_fed(block)
        # Ours is core's keep-mask with the repainted region grown by one latent pixel, and nothing else:
        pixel_repaint = (1 - theirs_keep).repeat_interleave(8, 2).repeat_interleave(8, 3)[:, 0]
        both_keep = ours_keep * theirs_keep
        scale = float(picture_latent["samples"].abs().max())
        results["inpaint_concat_vs_ours"] = {
            "ours_is_theirs_grown": torch.equal(ours_keep, masks.keep_mask(pixel_repaint, 64, 128, (8, 16))),
            "ours_keeps_where_theirs_repaints": int((ours_keep * (1 - theirs_keep)).sum()),
            "ring_theirs_keeps_ours_repaints": int((theirs_keep * (1 - ours_keep)).sum()),
            "kept_latents": int(both_keep.sum()),
            "repainted_latents_error": float(((theirs_masked - ours_masked) * (1 - theirs_keep)).abs().max()),
            "kept_latents_error": float(((theirs_masked - ours_masked) * both_keep).abs().max()) / scale,
            "kept_latents_mean_error": float(((theirs_masked - ours_masked) * both_keep).abs().sum())
            / (4 * float(both_keep.sum()))
            / scale,
        }

# A mask that repaints nothing: core's masked picture is the picture, so its concat is exactly ours.
positive, negative, latent = core.InpaintModelConditioning().encode(
    pos_cond, neg_cond, picture, inpaint_vae, torch.zeros(1, 64, 128), True
)
_, theirs_masked, theirs_keep = ksampler_fed(positive, negative, latent)
ours_masked, ours_keep = ours_fed(torch.zeros(1, 64, 128))
results["inpaint_empty_mask"] = {
    "masked_latent_error": float((theirs_masked - ours_masked).abs().max()),
    "keep_equal": torch.equal(theirs_keep, ours_keep),
}

# The inpaint MODEL at 72 x 40 px: its concat channels (masked picture, keep-mask) are padded with the latent.
odd_picture, odd_block = torch.rand(1, 40, 72, 3), torch.zeros(1, 40, 72)
odd_block[:, 8:32, 16:48] = 1
positive, negative, latent = core.InpaintModelConditioning().encode(
    pos_cond, neg_cond, odd_picture, inpaint_vae, odd_block, True
)
sampled, _, _ = ksampler_fed(positive, negative, latent)
kept = 1 - comfy.utils.reshape_mask(odd_block, sampled.shape)[:, :1]
results["inpaint_odd_size"] = {
    "shape": list(sampled.shape),
    "unet_input_shape": list(unet_inputs[0].shape),
    "kept_region_error": float(((sampled - latent["samples"]) * kept).abs().max()),
    "repainted_change": float(((sampled - latent["samples"]) * (1 - kept)).abs().mean()),
}

# VAE Encode (for Inpainting) → KSampler: no concat entries, so the MODEL reads the LATENT itself (the picture encoded
# with the repainted region grey) and its noise mask (grown by grow_mask_by pixels).
latent = core.VAEEncodeForInpaint().encode(inpaint_vae, picture, block, 6)[0]
sampled, theirs_masked, theirs_keep = ksampler_fed(pos_cond, neg_cond, latent)
expected_keep = 1 - comfy.utils.reshape_mask(latent["noise_mask"], sampled.shape)[:, :1].round()
kept = 1 - comfy.utils.reshape_mask(latent["noise_mask"], sampled.shape)[:, :1]
results["vae_encode_for_inpaint"] = {
    "shape": list(sampled.shape),
    "keep_error": float((theirs_keep - expected_keep).abs().max()),
    "masked_latent_error": float((theirs_masked - latent["samples"] * expected_keep).abs().max()),
    "kept_region_error": float(((sampled - latent["samples"]) * kept).abs().max()),
}

# The depth ControlNet's MODEL: KSampler has no hint to give it.
controlnet_model = DalleLoadDecoder().load(controlnet_repo, "main", "fp32")[2]
results["controlnet_concat_keys"] = list(controlnet_model.model.concat_keys)
empty = torch.zeros(1, 4, 8, 8)
results["controlnet_ksampler_error"] = error_of(
    lambda: comfy.sample.sample(
        controlnet_model,
        torch.randn(1, 4, 8, 8),
        2,
        4.0,
        "euler",
        "normal",
        pos_cond,
        neg_cond,
        empty,
        disable_pbar=True,
        seed=0,
    )
)

# CLIP vision: core's loader on the real file's layout (meta tensors), and ours on the tiny file.
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection  # noqa: E402

with open(f"{checkout}/comfy/clip_vision_config_g.json") as f:
    config_g = json.load(f)
with open(sys.argv[5]) as f:  # the real prior repo's image_encoder/config.json
    real = json.load(f)
with torch.device("meta"):
    reference_model = CLIPVisionModelWithProjection(CLIPVisionConfig(**real))
    core_model = comfy.clip_model.CLIPVisionModelProjection(config_g, torch.float32, "meta", comfy.ops.manual_cast)
hf_keys = {k: tuple(v.shape) for k, v in reference_model.state_dict().items()}
core_keys = {k: tuple(v.shape) for k, v in core_model.state_dict().items()}
results["clip_vision_real"] = {
    "detected_as_g": "vision_model.encoder.layers.47.layer_norm1.weight" in hf_keys,
    "missing_in_file": sorted(set(core_keys) - set(hf_keys)),
    "unused_in_file": sorted(k for k in set(hf_keys) - set(core_keys) if not k.endswith("position_ids")),
    "shape_mismatches": sorted(k for k in set(hf_keys) & set(core_keys) if hf_keys[k] != core_keys[k]),
}
tiny_file = f"{prior_repo}/image_encoder/model.safetensors"
results["core_loader_on_tiny"] = error_of(lambda: comfy.clip_vision.load(tiny_file)) or (
    "loaded" if comfy.clip_vision.load(tiny_file) is not None else "None: no CLIP vision layout it knows"
)
clip_vision, zero_image = DalleLoadCLIPVision().load(prior_repo, "main")
encoded = clip_vision.encode_image(torch.rand(1, 80, 96, 3))
results["clip_vision_embeds_shape"] = list(encoded.image_embeds.shape)
results["zero_image_shape"] = list(zero_image[0][1]["dalle_image_embeds"].shape)

with open(out_path, "w") as f:
    json.dump(results, f, indent=1, default=str)
