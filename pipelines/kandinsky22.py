"""Kandinsky 2.2, the open DALL·E 2: checkpoint loading and the two sampling procedures (prior, decoder).

Mirrors diffusers' KandinskyV22PriorPipeline and KandinskyV22Pipeline step for step, so that the same seed
gives the same image, but as plain functions over our own modules.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..engine.cuda_graph import can_capture, graphed
from ..engine.hub import CheckpointError, Source, fetch_config, fetch_weights, load_strict, read_state_dict
from ..models.clip import TextEmbeds
from ..models.movq import MoVQ, MoVQConfig
from ..models.prior import PriorConfig, PriorTransformer
from ..models.unet import KandinskyUNet, UNetConfig
from . import sampling

LATENT_CHANNELS = 4
PRIOR_REPO = "kandinsky-community/kandinsky-2-2-prior"
DECODER_REPO = "kandinsky-community/kandinsky-2-2-decoder"

# The schedules our samplers implement; a repo whose scheduler config asks for anything else is refused.
PRIOR_SCHEDULER = {
    "_class_name": "UnCLIPScheduler",
    "clip_sample": True,
    "clip_sample_range": 10.0,
    "num_train_timesteps": 1000,
    "prediction_type": "sample",
    "variance_type": "fixed_small_log",
    "beta_schedule": "squaredcos_cap_v2",
}
DECODER_SCHEDULER = {
    "_class_name": "DDPMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "thresholding": False,
    "variance_type": "fixed_small",
    "timestep_spacing": "leading",
    "rescale_betas_zero_snr": False,
}


def check_scheduler(source: Source, expected: dict) -> None:
    config = fetch_config(source, "scheduler", "scheduler_config.json", expect=expected["_class_name"])
    different = {k: config[k] for k, v in expected.items() if k in config and config[k] != v}
    if different:
        raise CheckpointError(
            f"{source.describe()}/scheduler asks for {different}; only the Kandinsky 2.2 schedule "
            f"({expected}) is supported."
        )


# Attention parameter names of diffusers before 0.14; older VQ/VAE checkpoints still carry them.
_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def modern_attention_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename `…attentions.N.query.weight` style keys to today's `…to_q.weight` (what diffusers does on load)."""

    def rename(key: str) -> str:
        module, _, param = key.rpartition(".")
        owner, _, name = module.rpartition(".")
        return f"{owner}.{_LEGACY_ATTENTION[name]}.{param}" if owner and name in _LEGACY_ATTENTION else key

    return {rename(key): value for key, value in state.items()}


def _load(
    source: Source,
    subfolder: str,
    expect: str,
    config_cls,
    module_cls,
    dtype: torch.dtype,
    what: str,
    scheduler: dict | None = None,
):
    config = fetch_config(source, subfolder, expect=expect)
    if scheduler is not None:
        check_scheduler(source, scheduler)
    try:
        parsed = config_cls.from_diffusers(config)
    except ValueError as error:
        raise CheckpointError(f"{source.describe()}/{subfolder}: {error}") from error
    state = modern_attention_keys(read_state_dict(fetch_weights(source, subfolder), dtype))
    return load_strict(lambda: module_cls(parsed), state, f"{what} of {source.describe()}")


def load_prior(source: Source, dtype: torch.dtype) -> PriorTransformer:
    return _load(source, "prior", "PriorTransformer", PriorConfig, PriorTransformer, dtype, "prior", PRIOR_SCHEDULER)


def load_unet(source: Source, dtype: torch.dtype) -> KandinskyUNet:
    in_channels = fetch_config(source, "unet", expect="UNet2DConditionModel").get("in_channels")
    if in_channels != LATENT_CHANNELS:
        raise CheckpointError(
            f"{source.describe()} is not a text-to-image decoder ({in_channels} input channels, e.g. an inpainting "
            f"one): use {DECODER_REPO}."
        )
    return _load(
        source, "unet", "UNet2DConditionModel", UNetConfig, KandinskyUNet, dtype, "decoder UNet", DECODER_SCHEDULER
    )


def load_movq(source: Source, dtype: torch.dtype) -> MoVQ:
    return _load(source, "movq", "VQModel", MoVQConfig, MoVQ, dtype, "MoVQ")


def _repeat(embeds: TextEmbeds, n: int) -> TextEmbeds:
    return TextEmbeds(*(t.repeat_interleave(n, dim=0) for t in (embeds.pooled, embeds.states, embeds.mask)))


def _cat(*parts: TextEmbeds) -> TextEmbeds:
    return TextEmbeds(*(torch.cat(ts) for ts in zip(*((p.pooled, p.states, p.mask) for p in parts), strict=True)))


def _graphed_denoise(denoise: sampling.Denoise, x: torch.Tensor) -> sampling.Denoise:
    """The prior's guided `denoise(x, t)` as a CUDA graph for one sampling run (see cuda_graph.GraphedCall).

    A prior step is ~300 small kernels (20 layers over 81 tokens): launched from Python they leave the GPU idle.
    Everything but x [rows, D] and the 0-d int64 timestep on the device is fixed for the run (the text
    conditioning, the guidance scale), so the recording replays each step with the same kernels, and the same
    numbers as eager calls. The warm-up and recording calls run the model only: they draw no noise from the
    sampling generator. The graph returns its output buffer, overwritten by the next step's replay; the prior
    sampler only reads it before that (sampling._posterior_loop: clamped into a new x0 tensor right away, on the
    same stream as the next replay), so no copy is needed.
    """
    timestep = torch.zeros((), dtype=torch.long, device=x.device)  # any value: the warm-up only needs the shape
    return graphed(denoise, x, timestep, what="Kandinsky 2.2 prior")


def prior_sample(
    prior: PriorTransformer,
    prompt: TextEmbeds,
    empty: TextEmbeds,
    negative: TextEmbeds | None,
    batch_size: int,
    steps: int,
    guidance: float,
    generator: torch.Generator,
    callback: sampling.Callback | None = None,
    cuda_graph: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sample CLIP image embeddings for one prompt: ([B, D] embeddings, [B, D] negative embeddings or None).

    Each TextEmbeds holds one prompt on the prior's device and dtype; `empty` is the encoded "" prompt, the
    unconditional input when there is no negative prompt. With a negative prompt the reference samples its
    image embedding alongside (guided against itself, which is just its conditional prediction), so noise is
    drawn for 2B rows; we skip the redundant unconditional half of those rows (3B model rows instead of 4B).

    On a CUDA device the guided model call is recorded once as a CUDA graph and replayed at every step
    (`cuda_graph=False`: launched kernel by kernel, same embeddings, slower); see _graphed_denoise.
    """
    param = next(prior.parameters())
    pos, rows = _repeat(prompt, batch_size), batch_size
    if negative is not None:
        neg, rows = _repeat(negative, batch_size), 2 * batch_size
    guided = guidance > 1
    if negative is None:
        text = _cat(_repeat(empty, batch_size), pos) if guided else pos
    else:
        text = _cat(neg, pos, neg) if guided else _cat(pos, neg)

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not guided:
            return prior(x, t, text.pooled, text.states, text.mask)
        model_x = torch.cat([x, x]) if negative is None else torch.cat([x[:batch_size], x])
        out = prior(model_x, t, text.pooled, text.states, text.mask)
        uncond, cond, rest = out[:batch_size], out[batch_size : 2 * batch_size], out[2 * batch_size :]
        return torch.cat([uncond + guidance * (cond - uncond), rest])

    x = sampling.randn((rows, prior.config.embedding_dim), generator, param.device, param.dtype)
    if cuda_graph and can_capture(x.device):
        denoise = _graphed_denoise(denoise, x)
    embeds = prior.unnormalize(sampling.sample_prior(denoise, x, steps, generator, callback))
    return embeds[:batch_size], (embeds[batch_size:] if negative is not None else None)


def latent_size(width: int, height: int) -> tuple[int, int]:
    """Latent (height, width) for an image size: MoVQ downsamples by 8, and sizes must be multiples of 64."""
    for name, value in (("width", width), ("height", height)):
        if value % 64 or not 64 <= value <= 4096:
            nearest = max(64, min(4096, round(value / 64) * 64))
            raise ValueError(
                f"{name} {value} is not supported: use a multiple of 64 between 64 and 4096 (e.g. {nearest})."
            )
    return height // 8, width // 8


def decoder_sample(
    unet: KandinskyUNet,
    embeds: torch.Tensor,
    negative_embeds: torch.Tensor,
    size: tuple[int, int],
    steps: int,
    guidance: float,
    sampler: str,
    generator: torch.Generator,
    karras: bool = False,
    latent: torch.Tensor | None = None,
    denoise_strength: float = 1.0,
    callback: sampling.Callback | None = None,
    forward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Sample MoVQ latents [B, 4, h, w] conditioned on image embeddings, as KandinskyV22Pipeline does.

    With `latent` (an encoded image) this is img2img: only the last `denoise_strength` of the schedule runs,
    starting from the latent noised to that level (KandinskyV22Img2ImgPipeline). `forward` replaces the call of
    `unet` (its compiled version).
    """
    forward = unet if forward is None else forward
    param = next(unet.parameters())
    guided = guidance > 1
    cond = torch.cat([negative_embeds, embeds]) if guided else embeds
    cond = cond.to(param.device, param.dtype)

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = forward(torch.cat([x, x]) if guided else x, t, cond)[:, : x.shape[1]]  # drop the learned-variance half
        if not guided:
            return eps
        uncond, text = eps.chunk(2)
        return uncond + guidance * (text - uncond)

    if latent is None:
        schedule = sampling.decoder_schedule(sampler, steps, karras)
        x = sampling.randn((embeds.shape[0], LATENT_CHANNELS, *size), generator, param.device, param.dtype)
        x = x * schedule.init_noise_sigma
    else:
        x = sampling.noise_latent(
            latent.to(param.device, param.dtype), generator, steps, sampler, karras, denoise_strength
        )
    return sampling.sample_decoder(denoise, x, steps, sampler, generator, karras, denoise_strength, callback)
