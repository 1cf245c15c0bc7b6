"""Run by test_native.py in ComfyUI's Python: our MODEL, VAE and CLIP_VISION against ComfyUI's own machinery.

argv: ComfyUI checkout, tiny decoder repo, tiny prior repo, output JSON path, the real image_encoder/config.json.
Measures and writes numbers; the test asserts on them (this Python may lack pytest and diffusers).
"""

from __future__ import annotations

import json
import sys
import time

checkout, decoder_repo, prior_repo, out_path = sys.argv[1:5]
sys.path.insert(0, checkout)

from comfy.cli_args import args  # noqa: E402

args.cpu = True  # before model_management reads it

import comfy.clip_model  # noqa: E402
import comfy.clip_vision  # noqa: E402
import comfy.ops  # noqa: E402
import comfy.sample  # noqa: E402
import comfy.samplers  # noqa: E402
import torch  # noqa: E402

from dalle_nodes.nodes.conditioning import image_embeds_conditioning  # noqa: E402
from dalle_nodes.nodes.decoder import DalleDecoderSample  # noqa: E402
from dalle_nodes.nodes.loaders import DalleLoadCLIPVision, DalleLoadDecoder  # noqa: E402
from dalle_nodes.nodes.vae import DalleVQDecode, DalleVQEncode  # noqa: E402
from dalle_nodes.pipelines.kandinsky22 import ImageEmbeds  # noqa: E402

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


def reference(embeds_positive, embeds_negative, cfg: float) -> list[torch.Tensor]:
    """x − σ·ε with ε from our UNet directly (guided on ε as the reference pipeline guides)."""
    out = []
    with torch.inference_mode():
        for sigma in probe_sigmas:
            t = sampling.timestep(torch.tensor(sigma)).float()
            model_in = x / (sigma**2 + 1) ** 0.5
            eps = unet(model_in, t, embeds_positive)[:, :4]
            if cfg != 1:
                uncond = unet(model_in, t, embeds_negative)[:, :4]
                eps = uncond + cfg * (eps - uncond)
            out.append(x - sigma * eps)
    return out


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

# Inpaint-ready: a 9-channel UNet reads latents, masked-image latents, mask (Kandinsky's order and polarity: 1 = keep,
# the masked latent zero where it is repainted) from the concat_latent_image / concat_mask entries core
# InpaintModelConditioning adds (its mask: 1 = repaint).
from dalle_nodes.models.unet import KandinskyUNet, UNetConfig  # noqa: E402
from dalle_nodes.nodes import comfy_native  # noqa: E402
from dalle_nodes.pipelines.previews import RGBFactors  # noqa: E402

small = UNetConfig(9, 8, (16, 32), (False, True), 1, 8, 16, width, 32, 8)
inpaint_unet = KandinskyUNet(small).eval()
seen_inputs = []
inpaint_unet.register_forward_pre_hook(lambda module, inputs: seen_inputs.append(inputs[0].clone()))
inpaint_model = comfy_native.model_patcher(inpaint_unet, RGBFactors([[0.0] * 3] * 4, [0.0] * 3))
masked_latent, mask = torch.randn(1, 4, 8, 8), (torch.rand(1, 8, 8) > 0.5).float()
inpaint_cond = [[pos_cond[0][0], {**pos_cond[0][1], "concat_latent_image": masked_latent, "concat_mask": mask}]]
model, saved_model = inpaint_model, model
probe(inpaint_cond, inpaint_cond, 1.0, torch.randn(1, 4, 8, 8))
model = saved_model
extra = seen_inputs[0][:, 4:]
results["inpaint_concat"] = {
    "channels": int(seen_inputs[0].shape[1]),
    "masked_latent_error": float((extra[:, :4] - masked_latent * (1 - mask[:, None])).abs().max()),
    "mask_error": float((extra[:, 4:] - (1 - mask[:, None])).abs().max()),
}

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
