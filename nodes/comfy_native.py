"""Kandinsky 2.2 as ComfyUI's own types: the UNet as a MODEL, MoVQ as a VAE, the prior repo's image tower as a
CLIP_VISION. The one module beside runtime.py that touches ComfyUI's model classes (model_base, supported_models_base,
latent_formats, sd.VAE, clip_vision, model_patcher); imported only inside ComfyUI.

The MODEL and VAE wrap the very modules DALLE_DECODER and DALLE_VQ_VAE hold, under one ModelPatcher each, so the
weights exist once and ComfyUI's memory manager moves them once. ComfyUI's internals are no stable API: what we use
of them is checked on first use, and a mismatch names the ComfyUI version instead of failing deep in a sampler.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch

from ..engine.memory import fused_attention_on
from ..models.movq import MoVQ
from ..models.unet import KandinskyUNet
from ..pipelines import checks
from ..pipelines.kandinsky22 import memory
from ..pipelines.kandinsky22.loading import DECODER_REPO, DECODER_SCHEDULER
from ..pipelines.kandinsky22.starts import LATENT_CHANNELS, LATENT_SCALE, MAX_SIZE
from ..pipelines.previews import RGBFactors
from .conditioning import EMBEDS_KEY

TESTED_WITH = "0.33"
ENCODERS = "Empty Latent Image, VAE Encode with this VAE, or DALL·E VQ Encode"
NO_EMBEDS = (
    "This CONDITIONING carries no CLIP image embeddings for the Kandinsky 2.2 decoder (is it from a CLIP Text "
    "Encode?). Make it with 'DALL·E Image Embeds To Conditioning', or add an image with unCLIPConditioning."
)
NO_HINT = (
    "This MODEL is the depth ControlNet decoder, which reads a hint (a depth map) that KSampler cannot give it: use "
    f"DALL·E Decoder Sample with a hint (e.g. from DALL·E Depth Map), or load {DECODER_REPO} for KSampler."
)


def comfyui_version() -> str:
    try:
        from comfyui_version import __version__
    except ImportError:
        return "of unknown version"
    return __version__


@contextmanager
def comfyui_internals(what: str):
    """Turn a missing or changed ComfyUI internal into one clear error naming the version."""
    try:
        yield
    except (ImportError, AttributeError, TypeError) as error:
        raise RuntimeError(
            f"ComfyUI {comfyui_version()} differs from the ComfyUI {TESTED_WITH} dalle-nodes builds its {what} on "
            f"({type(error).__name__}: {error}). Use our own DALL·E nodes, or update dalle-nodes."
        ) from error


with comfyui_internals("MODEL, VAE and CLIP_VISION"):
    import comfy.clip_vision
    import comfy.conds
    import comfy.latent_formats
    import comfy.ldm.common_dit
    import comfy.model_base
    import comfy.model_management
    import comfy.model_patcher
    import comfy.sd
    import comfy.supported_models_base
    import comfy.utils


class MoVQLatent(comfy.latent_formats.LatentFormat):
    """MoVQ latents: 4 channels, used unscaled (Kandinsky never applies MoVQ's scaling_factor)."""

    scale_factor = 1.0
    latent_channels = LATENT_CHANNELS

    def __init__(self, rgb: RGBFactors | None = None):
        if rgb is not None:
            self.latent_rgb_factors, self.latent_rgb_factors_bias = rgb.factors, rgb.bias


class Kandinsky22Config(comfy.supported_models_base.BASE):
    """Kandinsky 2.2's decoder as a ComfyUI model config: epsilon prediction on the training betas, which are plain
    linear (diffusers' "linear" is ComfyUI's "sqrt_linear"; ComfyUI's "linear" spaces the square roots)."""

    unet_config = {"disable_unet_model_creation": True}  # the UNet is ours, built by our loader
    unet_extra_config = {}
    sampling_settings = {
        "beta_schedule": "sqrt_linear",
        "linear_start": DECODER_SCHEDULER["beta_start"],
        "linear_end": DECODER_SCHEDULER["beta_end"],
        "timesteps": DECODER_SCHEDULER["num_train_timesteps"],
    }
    latent_format = MoVQLatent
    supported_inference_dtypes = [torch.bfloat16, torch.float16, torch.float32]

    def inpaint_model(self) -> bool:
        """ComfyUI's own test (in_channels > 4) would take the depth ControlNet (8 channels: 4 of them from its hint
        encoder) for an inpainting model: the UNet's kind says it."""
        return self.unet_config["kind"] == "inpaint"


class Kandinsky22(comfy.model_base.BaseModel):
    """ComfyUI's view of our KandinskyUNet: reads the image embeddings from the conditioning (ours, or core unCLIP
    entries) and returns the noise prediction without the learned-variance channels."""

    def __init__(self, config: Kandinsky22Config, unet: KandinskyUNet):
        super().__init__(config, comfy.model_base.ModelType.EPS)
        self.diffusion_model = unet
        if config.inpaint_model():
            # Kandinsky's inpaint UNet reads latents, masked-image latents, mask (ComfyUI puts c_concat after x), and
            # its mask is 1 where the picture is kept: the inverse of ComfyUI's denoise mask.
            self.concat_keys = ("masked_image", "mask_inverted")
            self.blank_inpaint_image_like = torch.zeros_like

    def concat_cond(self, **kwargs) -> torch.Tensor | None:
        """The inpaint UNet's extra channels: the picture's latents zeroed where repainted, then the keep-mask.

        What ComfyUI hands us is core's, not the reference pipeline's (KandinskyV22InpaintPipeline, and our
        kandinsky22.starts.keep_mask / masks.keep_mask), in three ways. The mask: core downsamples it to latent size
        bilinearly and rounds at 0.5; the reference binarises it at 0.5 at pixel size, samples it (nearest) at latent
        size and then grows the repainted region by one latent pixel (6 of 8 directions), so core keeps a ring the
        reference repaints. The picture: core's InpaintModelConditioning (and VAE Encode (for Inpainting)) encode it
        with the repainted region filled grey, the reference encodes it whole; zeroed here where repainted, the two
        agree exactly there, and in the kept region they differ by what MoVQ's encoder sees across the border.
        Without a mask (plain KSampler) everything is repainted: zero latents and keep 0, as the reference reads a
        mask that repaints all. tests/comfyui/native_checks.py measures both differences."""
        cond = super().concat_cond(**kwargs)
        if cond is None:
            return None
        image, keep = cond[:, :LATENT_CHANNELS], cond[:, LATENT_CHANNELS:]
        return torch.cat([image * keep, keep], dim=1)

    def get_dtype(self) -> torch.dtype:
        return self.diffusion_model.conv_in.weight.dtype

    def extra_conds(self, **kwargs) -> dict:
        if self.diffusion_model.config.kind == "controlnet":
            raise ValueError(NO_HINT)
        noise = checks.check_latent({"samples": kwargs["noise"]}, LATENT_CHANNELS, "Kandinsky 2.2 (MoVQ)", ENCODERS)
        check_model_size(noise)
        out = super().extra_conds(**kwargs)
        out["image_embeds"] = comfy.conds.CONDRegular(self.image_embeds(kwargs))
        return out

    def image_embeds(self, conditioning: dict) -> torch.Tensor:
        """[B, D] embeddings of one conditioning entry. unCLIP entries (core unCLIPConditioning) replace the entry's own
        embedding: every image of every entry times its strength, summed, as core does for SD unCLIP. Their
        noise_augmentation is ignored: Kandinsky's decoder has no noise augmentor and was trained on clean ones."""
        unclip = conditioning.get("unclip_conditioning")
        if unclip:
            images = [(e["strength"], e["clip_vision_output"].image_embeds.float()) for e in unclip]
            embeds = sum(strength * rows.sum(0, keepdim=True) for strength, rows in images)
        elif conditioning.get(EMBEDS_KEY) is not None:
            embeds = conditioning[EMBEDS_KEY]
        else:
            raise ValueError(NO_EMBEDS)
        checks.check_embeds(embeds, self.diffusion_model.config.image_embed_dim)
        return embeds

    def _apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None, **kwargs):
        sampling = self.model_sampling
        model_in = sampling.calculate_input(t, x)
        if c_concat is not None:
            model_in = torch.cat([model_in, c_concat.to(model_in)], dim=1)
        dtype = self.get_dtype()
        timestep = sampling.timestep(t).float()
        model_in = padded(model_in, self.size_multiple())  # the latent with its concat channels
        out = self.diffusion_model(model_in.to(dtype), timestep, kwargs["image_embeds"].to(x.device, dtype))
        eps = out[:, :LATENT_CHANNELS, : x.shape[2], : x.shape[3]]  # drop the variance half and the padding
        return sampling.calculate_denoised(t, eps.float(), x)

    def size_multiple(self) -> int:
        """The UNet halves the latent at each level but the last: its sides must be multiples of this."""
        return 2 ** (len(self.diffusion_model.config.block_out_channels) - 1)

    def memory_required(self, input_shape, cond_shapes=None) -> float:
        device = comfy.model_management.get_torch_device()
        config = self.diffusion_model.config
        rows, _, height, width = input_shape
        multiple = self.size_multiple()
        height, width = (-(-side // multiple) * multiple for side in (height, width))  # as padded
        return memory.unet_step_bytes(
            config, rows, height, width, self.get_dtype(), fused_attention=fused_attention_on(device)
        )


def check_model_size(noise: torch.Tensor) -> None:
    """Any latent size ComfyUI's own models take (padded to the UNet's multiple by `padded`), up to MAX_SIZE px a
    side, as DALL·E Decoder Sample."""
    height, width = noise.shape[2:]
    if max(height, width) * LATENT_SCALE > MAX_SIZE:
        raise ValueError(
            f"The latent is {width}x{height}, an image of {width * LATENT_SCALE}x{height * LATENT_SCALE} px: this "
            f"MODEL samples up to {MAX_SIZE} px a side. Make a smaller latent, and upscale the image after decoding."
        )


def padded(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """x [B, C, h, w] padded at the bottom and right to multiples of `multiple`, as core pads latents for its DiTs
    (which crop the output back, as _apply_model does). Reflected, not circular as most DiTs pad: a conv UNet sees the
    pad through its 3x3 kernels right at the crop line, and a mirror continues the picture there with noise of the
    latent's own level, where wrapping would put the opposite edge beside it (and zeros a noise-free band the UNet
    never saw in training). When a side is too short to mirror (half the multiple or less: 32 px or less for
    Kandinsky's UNet), both sides repeat their edge instead (one tensor pads in one mode)."""
    too_short = any(-side % multiple >= side for side in x.shape[2:])
    mode = "replicate" if too_short else "reflect"
    return comfy.ldm.common_dit.pad_to_patch_size(x, (multiple, multiple), padding_mode=mode)


def model_patcher(unet: KandinskyUNet, rgb: RGBFactors) -> comfy.model_patcher.ModelPatcher:
    """MODEL over `unet` itself (no copy). A plain ModelPatcher: our layers are torch's own, not the comfy.ops
    layers ComfyUI's dynamic-VRAM patcher streams weights through."""
    with comfyui_internals("MODEL output"):
        unet_config = {"in_channels": unet.config.in_channels, "kind": unet.config.kind}
        config = Kandinsky22Config({**Kandinsky22Config.unet_config, **unet_config})
        config.latent_format = MoVQLatent(rgb)
        model = Kandinsky22(config, unet)
        return comfy.model_patcher.ModelPatcher(
            model,
            load_device=comfy.model_management.get_torch_device(),
            offload_device=comfy.model_management.unet_offload_device(),
        )


class MoVQVAE(comfy.sd.VAE):
    """VAE over our MoVQ (no copy): ComfyUI's VAE with MoVQ as its first stage model. MoVQ.decode and .encode speak
    the [-1, 1] pixels and unscaled latents ComfyUI's VAE expects."""

    def __init__(self, movq: MoVQ):
        # ComfyUI's constructor sets every default of this ComfyUI version, then finds no weights it knows in the
        # empty dict and warns about it: silence that one warning, then hand it our MoVQ.
        quiet = _Without("No VAE weights detected")
        logging.root.addFilter(quiet)
        try:
            super().__init__(sd={})
        finally:
            logging.root.removeFilter(quiet)
        param = next(movq.parameters())
        self.first_stage_model = movq.eval()
        self.latent_channels = movq.config.latent_channels
        self.downscale_ratio = self.upscale_ratio = movq.scale
        self.device = comfy.model_management.vae_device()
        self.vae_dtype = param.dtype
        self.output_device = comfy.model_management.intermediate_device()
        self.memory_used_decode = self._activation_bytes(memory.movq_decode_bytes, movq.scale)
        self.memory_used_encode = self._activation_bytes(memory.movq_encode_bytes, 1)
        self.patcher = comfy.model_patcher.ModelPatcher(
            movq, load_device=self.device, offload_device=comfy.model_management.vae_offload_device()
        )
        self.size = None
        self.model_size()

    def _activation_bytes(self, estimate: Callable, pixels_per_unit: int) -> Callable:
        """ComfyUI's per-image memory estimate from our own: shape is [B, C, h, w] latents or pixels."""
        config, fused = self.first_stage_model.config, fused_attention_on(self.device)
        return lambda shape, dtype: estimate(
            config, shape[2] * pixels_per_unit, shape[3] * pixels_per_unit, dtype, fused_attention=fused
        )

    def _check_latent(self, samples: torch.Tensor) -> None:
        checks.check_latent({"samples": samples}, self.latent_channels, "Kandinsky 2.2 (MoVQ)", "this VAE's encode")

    def decode(self, samples_in, vae_options=None):
        self._check_latent(samples_in)
        return super().decode(samples_in, vae_options or {})

    def decode_tiled(self, samples, *args, **kwargs):
        self._check_latent(samples)
        return super().decode_tiled(samples, *args, **kwargs)


class _Without(logging.Filter):
    """Drops the log records that carry one message, and only those."""

    def __init__(self, message: str):
        super().__init__()
        self.message = message

    def filter(self, record: logging.LogRecord) -> bool:
        return self.message not in str(record.msg)


def vae(movq: MoVQ) -> MoVQVAE:
    with comfyui_internals("VAE output"):
        return MoVQVAE(movq)


def clip_vision(weights: Path) -> comfy.clip_vision.ClipVisionModel:
    """CLIP_VISION from the prior repo's image tower (`weights`, its config.json beside it), at any size. Core's Load
    CLIP Vision takes the real file too, but picks its config by layer count: the full-size tower only."""
    with comfyui_internals("CLIP_VISION output"):
        config = json.loads((weights.parent / "config.json").read_text(encoding="utf-8"))
        model = comfy.clip_vision.ClipVisionModel(config)
        missing, _ = model.load_sd(comfy.utils.load_torch_file(str(weights), safe_load=True))
    if missing:
        raise RuntimeError(f"The CLIP image encoder '{weights}' lacks {len(missing)} tensors, e.g. {missing[:3]}.")
    return model


def zero_image_embed(model: comfy.clip_vision.ClipVisionModel) -> torch.Tensor:
    """[1, D] embedding of the all-zero (normalized) image: the decoder's negative in the reference pipeline."""
    comfy.model_management.load_model_gpu(model.patcher)
    pixels = torch.zeros(1, 3, model.image_size, model.image_size, device=model.load_device)
    with torch.inference_mode():
        return model.model(pixel_values=pixels)[2].float().to(comfy.model_management.intermediate_device())
