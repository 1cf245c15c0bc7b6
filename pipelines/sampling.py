"""Noise schedules and samplers for Kandinsky 2.2, reproducing the diffusers pipelines step for step.

k-diffusion's contract: a schedule is built once per run, as a value, and every sampler is a function of
(denoise, x, schedule, generator, callback).

Prior:   schedule = prior_schedule(steps)
         emb = sample_prior(denoise, randn(shape, gen, device, dtype), schedule, gen)  # denoise -> guided clean emb
Decoder: schedule = decoder_schedule(sampler, steps, karras, denoise_strength)
         x = initial_noise(shape, schedule, gen, device, dtype)       # text-to-image
     or  x = noise_latent(image_latent, schedule, gen)                # image-to-image: from schedule.start
         x = sample_decoder(denoise, x, schedule, gen, callback)      # denoise -> guided eps
`denoise(x, t)` receives exactly the model input and timestep the diffusers pipeline would feed the prior / UNet.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .checks import check_choice, check_range

DECODER_SAMPLERS = ("ddpm", "ddim", "dpmpp_2m", "euler_ancestral")

Denoise = Callable[[Tensor, Tensor], Tensor]
Callback = Callable[[int, int, Tensor, Tensor], None]  # (step index, steps, x after it, its predicted clean x0)
AfterStep = Callable[[int, Tensor], Tensor]  # (index of the step just taken, x) -> the x the next step starts from

TRAIN_TIMESTEPS = 1000
PRIOR_CLIP_RANGE = 10.0  # prior scheduler config: clip_sample with clip_sample_range 10
DECODER_BETA_START, DECODER_BETA_END = 0.00085, 0.012  # decoder scheduler config: linear betas
KARRAS_RHO = 7.0
MAX_DECODER_STEPS = TRAIN_TIMESTEPS - 1  # "leading" spacing with offset 1 would index past the table at 1000
MIN_DENOISE = 0.01


def randn(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str, dtype: torch.dtype
) -> Tensor:
    """Standard normal noise drawn on the CPU in float32 (so a seed is device independent), then moved."""
    noise = torch.randn(shape, generator=generator, dtype=torch.float32, device="cpu")
    if torch.device(device).type == "cuda":
        noise = noise.pin_memory()  # a pinned source lets the copy run without blocking the host on the GPU
    return noise.to(device=device, dtype=dtype, non_blocking=True)


@dataclass(frozen=True)
class DecoderSchedule:
    """A decoder sampler's discretisation: what the diffusers scheduler holds after set_timesteps."""

    sampler: str
    timesteps: Tensor  # t fed to the UNet at each step (int64; float32 for euler_ancestral), CPU
    alphas_cumprod: Tensor  # training schedule, float32 [1000]
    sigmas: Tensor | None  # dpmpp_2m / euler_ancestral: noise level per step plus a final 0, float32
    init_noise_sigma: float  # txt2img: the initial N(0, 1) noise is scaled by this
    start: int = 0  # image-to-image: index of the first step run (KandinskyV22Img2ImgPipeline.get_timesteps)

    @property
    def steps_run(self) -> int:
        return len(self.timesteps) - self.start


@dataclass(frozen=True)
class PriorSchedule:
    """The unCLIP prior's ancestral DDPM steps: timesteps and the posterior's coefficients per step."""

    timesteps: Tensor  # int64, CPU
    coef_x0: Tensor  # x_prev = coef_x0 * x0 + coef_x * x_t + noise_std * noise
    coef_x: Tensor
    noise_std: Tensor


def _numpy_linspace(stop: float, num: int) -> Tensor:
    """numpy.linspace(0, stop, num) bit for bit in float64: diffusers rounds these grids, so .5 ties must agree."""
    grid = torch.arange(num, dtype=torch.float64)
    if num > 1:
        grid = grid * (stop / (num - 1))
        grid[-1] = stop
    return grid


def unclip_betas() -> Tensor:
    """squaredcos_cap_v2 betas, evaluated in float64 and stored in float32 like diffusers."""

    def alpha_bar(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    n = TRAIN_TIMESTEPS
    return torch.tensor(
        [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)], dtype=torch.float32
    )


def _decoder_alphas_cumprod() -> Tensor:
    betas = torch.linspace(DECODER_BETA_START, DECODER_BETA_END, TRAIN_TIMESTEPS, dtype=torch.float32)
    return torch.cumprod(1 - betas, dim=0)


def _karras_sigmas(sigma_table: Tensor, steps: int) -> Tensor:
    """Karras et al. (2022) rho=7 spacing between the table's extremes, float64."""
    sigma_min, sigma_max = float(sigma_table[0]), float(sigma_table[-1])
    ramp = _numpy_linspace(1.0, steps)
    max_inv, min_inv = sigma_max ** (1 / KARRAS_RHO), sigma_min ** (1 / KARRAS_RHO)
    return (max_inv + ramp * (min_inv - max_inv)) ** KARRAS_RHO


def _sigma_to_t(sigmas: Tensor, sigma_table: Tensor) -> Tensor:
    """Fractional timestep of each sigma: linear interpolation of log sigma over the (increasing) table."""
    log_table = sigma_table.log().double()  # diffusers takes the log in float32, interpolates in float64
    log_sigma = sigmas.clamp(min=1e-10).log()
    low = (torch.searchsorted(log_table, log_sigma, right=True) - 1).clamp(0, len(log_table) - 2)
    weight = ((log_table[low] - log_sigma) / (log_table[low] - log_table[low + 1])).clamp(0, 1)
    return (1 - weight) * low + weight * (low + 1)


def _interp_table(timesteps: Tensor, table: Tensor) -> Tensor:
    """numpy.interp(timesteps, arange(len(table)), table) in float64."""
    low = timesteps.floor().long().clamp(max=len(table) - 2)
    table = table.double()
    return (table[low + 1] - table[low]) * (timesteps - low) + table[low]


def decoder_schedule(sampler: str, steps: int, karras: bool = False, denoise_strength: float = 1.0) -> DecoderSchedule:
    """The schedule diffusers' scheduler for `sampler` (built with from_config of the decoder DDPM config) sets up;
    with denoise_strength < 1 (image-to-image) only its last int(steps * denoise_strength) steps run."""
    check_choice("sampler", sampler, DECODER_SAMPLERS)
    if karras and sampler != "dpmpp_2m":
        raise ValueError("karras sigmas apply to the dpmpp_2m sampler only: switch karras off or pick dpmpp_2m.")
    check_range("steps", steps, 1, MAX_DECODER_STEPS)
    check_range("denoise", denoise_strength, MIN_DENOISE, 1.0)
    start = img2img_start(steps, denoise_strength)
    alphas_cumprod = _decoder_alphas_cumprod()
    if sampler in ("ddpm", "ddim"):
        # "leading" spacing with the config's steps_offset 1
        timesteps = torch.arange(steps - 1, -1, -1) * (TRAIN_TIMESTEPS // steps) + 1
        return DecoderSchedule(sampler, timesteps, alphas_cumprod, None, 1.0, start)
    sigma_table = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
    final_zero = torch.zeros(1)
    if sampler == "dpmpp_2m":
        if karras:
            sigmas = _karras_sigmas(sigma_table, steps)
            timesteps = _sigma_to_t(sigmas, sigma_table).round().long()
        else:
            # from_config drops the DDPM's default "leading", so DPM-Solver uses its own "linspace"
            timesteps = _numpy_linspace(TRAIN_TIMESTEPS - 1, steps + 1).round().flip(0)[:-1].long()
            sigmas = sigma_table[timesteps]
        return DecoderSchedule(sampler, timesteps, alphas_cumprod, torch.cat([sigmas.float(), final_zero]), 1.0, start)
    # euler_ancestral, "linspace" spacing too: fractional timesteps and sigmas interpolated between table entries
    timesteps = _numpy_linspace(TRAIN_TIMESTEPS - 1, steps).float().flip(0)
    sigmas = torch.cat([_interp_table(timesteps.double(), sigma_table).float(), final_zero])
    return DecoderSchedule(sampler, timesteps, alphas_cumprod, sigmas, float(sigmas.max()), start)


def img2img_start(steps: int, denoise_strength: float) -> int:
    """Index of the first step run at this strength (KandinskyV22Img2ImgPipeline.get_timesteps)."""
    start = steps - min(int(steps * denoise_strength), steps)
    if start >= steps:
        raise ValueError(
            f"denoise {denoise_strength} leaves no step to run out of {steps}: raise denoise or steps "
            f"(at least {1 / steps:.2f} for {steps} steps)."
        )
    return start


def initial_noise(
    shape: tuple[int, ...], schedule: DecoderSchedule, generator: torch.Generator | None, device, dtype
) -> Tensor:
    """Text-to-image's starting latent: N(0, 1) noise scaled to the schedule's first noise level."""
    return randn(shape, generator, device, dtype) * schedule.init_noise_sigma


def noise_latent(latent: Tensor, schedule: DecoderSchedule, generator: torch.Generator | None) -> Tensor:
    """Noise a clean latent to the schedule's first step run (the img2img pipeline's add_noise)."""
    noise = randn(latent.shape, generator, latent.device, torch.float32)
    return noise_to(latent, noise, schedule, schedule.start)


def noise_to(latent: Tensor, noise: Tensor, schedule: DecoderSchedule, index: int) -> Tensor:
    """`latent` noised with unit `noise` to the level step `index` starts from (the scheduler's add_noise at its
    timestep); past the last step, the clean latent."""
    sampler = schedule.sampler
    if index >= len(schedule.timesteps):
        return latent
    if sampler in ("ddpm", "ddim"):
        alpha_cumprod = schedule.alphas_cumprod[schedule.timesteps[index]]
        signal_scale, noise_scale = float(alpha_cumprod**0.5), float((1 - alpha_cumprod) ** 0.5)
    elif sampler == "dpmpp_2m":
        sigma = schedule.sigmas[index]
        signal_scale = float(1 / (sigma**2 + 1) ** 0.5)
        noise_scale = float(sigma * signal_scale)
    else:
        signal_scale, noise_scale = 1.0, float(schedule.sigmas[index])
    return (signal_scale * latent.float() + noise_scale * noise.float()).to(latent.dtype)


def _posterior(a_t: Tensor, a_prev: Tensor, alpha: Tensor, beta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """DDPM posterior q(x_prev | x_t, x0) per step: the coefficients of x0 and x_t, and its variance."""
    b_t, b_prev = 1 - a_t, 1 - a_prev
    return a_prev**0.5 * beta / b_t, alpha**0.5 * b_prev / b_t, b_prev / b_t * beta


def _end_step(
    x32: Tensor,
    dtype: torch.dtype,
    i: int,
    steps: range,
    after_step: AfterStep | None,
    callback: Callback | None,
    x0: Tensor,
) -> Tensor:
    """Every sampler's step tail: back to the working dtype, then after_step's edit, then the callback sees it and
    the step's prediction of the clean x0 (what previews show)."""
    x = x32.to(dtype)
    if after_step is not None:
        x = after_step(i, x)
    if callback is not None:
        callback(i - steps.start, len(steps), x, x0)
    return x


def _posterior_loop(
    denoise: Denoise,
    to_x0: Callable[[Tensor, Tensor, int], Tensor],
    x: Tensor,
    steps: PriorSchedule,
    start: int,
    generator: torch.Generator | None,
    callback: Callback | None,
    after_step: AfterStep | None = None,
) -> Tensor:
    """Ancestral DDPM: x <- coef_x0 * x0 + coef_x * x + noise_std * noise, noise drawn only while t > 0."""
    timesteps_on_device, run = steps.timesteps.to(x.device), range(start, len(steps.timesteps))
    ts, c_x0, c_x, std = (t.tolist() for t in (steps.timesteps, steps.coef_x0, steps.coef_x, steps.noise_std))
    for i in run:
        x32 = x.float()
        x0 = to_x0(x32, denoise(x, timesteps_on_device[i]).float(), i)
        x32 = c_x0[i] * x0 + c_x[i] * x32
        if ts[i] > 0:
            x32 = x32 + std[i] * randn(x.shape, generator, x.device, torch.float32)
        x = _end_step(x32, x.dtype, i, run, after_step, callback, x0)
    return x


def prior_schedule(steps: int) -> PriorSchedule:
    """The steps UnCLIPScheduler takes when the Kandinsky 2.2 prior pipeline sets `steps` timesteps."""
    check_range("prior steps", steps, 2, TRAIN_TIMESTEPS)
    betas = unclip_betas()
    alphas = 1 - betas
    alphas_cumprod = torch.cumprod(alphas, dim=0)
    timesteps = (torch.arange(steps, dtype=torch.float64) * ((TRAIN_TIMESTEPS - 1) / (steps - 1))).round()
    timesteps = timesteps.flip(0).long()
    prev = torch.cat([timesteps[1:], timesteps[-1:] - 1])
    a_t = alphas_cumprod[timesteps]
    a_prev = torch.where(prev >= 0, alphas_cumprod[prev.clamp(min=0)], torch.ones(()))
    # skipped steps recompute beta from the cumulative products; adjacent ones use the table like the scheduler
    adjacent = prev == timesteps - 1
    beta = torch.where(adjacent, betas[timesteps], 1 - a_t / a_prev)
    alpha = torch.where(adjacent, alphas[timesteps], 1 - beta)
    coef_x0, coef_x, variance = _posterior(a_t, a_prev, alpha, beta)
    noise_std = torch.exp(0.5 * torch.log(torch.clamp(variance, min=1e-20)))  # "fixed_small_log"
    return PriorSchedule(timesteps, coef_x0, coef_x, noise_std)


def sample_prior(
    denoise: Denoise,
    x: Tensor,
    schedule: PriorSchedule,
    generator: torch.Generator | None,
    callback: Callback | None = None,
) -> Tensor:
    """unCLIP prior sampling (UnCLIPScheduler as the Kandinsky 2.2 prior pipeline drives it).

    `x` is N(0, 1) noise (the scheduler's init_noise_sigma is 1). denoise(x, t) returns the guided predicted clean
    embedding for int64 timestep `t`; it is clipped to +-10 and the step noise is drawn after each call but the last.
    """
    clip = lambda x32, out, i: out.clamp(-PRIOR_CLIP_RANGE, PRIOR_CLIP_RANGE)  # noqa: E731
    return _posterior_loop(denoise, clip, x, schedule, 0, generator, callback)


def _sample_ddpm(
    denoise: Denoise,
    x: Tensor,
    schedule: DecoderSchedule,
    generator: torch.Generator | None,
    callback: Callback | None,
    after_step: AfterStep | None,
) -> Tensor:
    """DDPMScheduler, variance "fixed_small": step noise drawn after every model call (all t >= 1)."""
    timesteps, alphas_cumprod = schedule.timesteps, schedule.alphas_cumprod
    prev = torch.cat([timesteps[1:], timesteps.new_tensor([-1])])
    a_t = alphas_cumprod[timesteps]
    a_prev = torch.where(prev >= 0, alphas_cumprod[prev.clamp(min=0)], torch.ones(()))
    alpha = a_t / a_prev
    coef_x0, coef_x, variance = _posterior(a_t, a_prev, alpha, 1 - alpha)
    noise_std = torch.clamp(variance, min=1e-20) ** 0.5
    sqrt_a, sqrt_b = (a_t**0.5).tolist(), ((1 - a_t) ** 0.5).tolist()
    to_x0 = lambda x32, eps, i: (x32 - sqrt_b[i] * eps) / sqrt_a[i]  # noqa: E731
    steps = PriorSchedule(timesteps, coef_x0, coef_x, noise_std)
    return _posterior_loop(denoise, to_x0, x, steps, schedule.start, generator, callback, after_step)


def _sample_ddim(
    denoise: Denoise,
    x: Tensor,
    schedule: DecoderSchedule,
    generator: torch.Generator | None,
    callback: Callback | None,
    after_step: AfterStep | None,
) -> Tensor:
    """DDIMScheduler with eta 0 (as the pipeline calls it): deterministic, draws no noise."""
    timesteps, alphas_cumprod = schedule.timesteps, schedule.alphas_cumprod
    prev = timesteps - TRAIN_TIMESTEPS // len(timesteps)
    a_t = alphas_cumprod[timesteps]
    a_prev = torch.where(prev >= 0, alphas_cumprod[prev.clamp(min=0)], alphas_cumprod[0])  # set_alpha_to_one False
    sqrt_a, sqrt_b = (a_t**0.5).tolist(), ((1 - a_t) ** 0.5).tolist()
    sqrt_a_prev, sqrt_b_prev = (a_prev**0.5).tolist(), ((1 - a_prev) ** 0.5).tolist()
    timesteps_on_device, run = timesteps.to(x.device), range(schedule.start, len(timesteps))
    for i in run:
        eps = denoise(x, timesteps_on_device[i]).float()
        x0 = (x.float() - sqrt_b[i] * eps) / sqrt_a[i]
        x = _end_step(sqrt_a_prev[i] * x0 + sqrt_b_prev[i] * eps, x.dtype, i, run, after_step, callback, x0)
    return x


def _sample_dpmpp_2m(
    denoise: Denoise,
    x: Tensor,
    schedule: DecoderSchedule,
    generator: torch.Generator | None,
    callback: Callback | None,
    after_step: AfterStep | None,
) -> Tensor:
    """DPMSolverMultistepScheduler: dpmsolver++, order 2, midpoint; first order on the first step run and on the
    last (final sigma 0). Deterministic, draws no noise."""
    sigmas = schedule.sigmas
    alpha = 1 / (sigmas**2 + 1) ** 0.5
    sigma = sigmas * alpha
    lambdas = torch.log(alpha) - torch.log(sigma)  # +inf at the final sigma 0, which makes the last step return x0
    h = lambdas[1:] - lambdas[:-1]
    sigma_ratio = (sigma[1:] / sigma[:-1]).tolist()
    phi = alpha[1:] * (torch.exp(-h) - 1)
    half_phi = (0.5 * phi).tolist()
    inv_r = torch.cat([torch.zeros(1), 1.0 / (h[:-1] / h[1:])]).tolist()  # step size ratio to the previous step
    phi, alpha, sigma = phi.tolist(), alpha.tolist(), sigma.tolist()
    timesteps_on_device, run = schedule.timesteps.to(x.device), range(schedule.start, len(schedule.timesteps))
    previous_x0 = None
    for i in run:
        eps = denoise(x, timesteps_on_device[i]).float()
        x32 = x.float()
        x0 = (x32 - sigma[i] * eps) / alpha[i]
        x32 = sigma_ratio[i] * x32 - phi[i] * x0
        if previous_x0 is not None and i != run[-1]:
            x32 = x32 - half_phi[i] * (inv_r[i] * (x0 - previous_x0))
        previous_x0 = x0
        x = _end_step(x32, x.dtype, i, run, after_step, callback, x0)
    return x


def _sample_euler_ancestral(
    denoise: Denoise,
    x: Tensor,
    schedule: DecoderSchedule,
    generator: torch.Generator | None,
    callback: Callback | None,
    after_step: AfterStep | None,
) -> Tensor:
    """EulerAncestralDiscreteScheduler: the model sees x / sqrt(sigma^2 + 1) (scale_model_input); step noise is
    drawn after every model call, the last one included (where it is scaled by 0)."""
    sigma_from, sigma_to = schedule.sigmas[:-1], schedule.sigmas[1:]
    sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    input_scale = ((sigma_from**2 + 1) ** 0.5).tolist()
    dt, sigma_up, sigma = (sigma_down - sigma_from).tolist(), sigma_up.tolist(), sigma_from.tolist()
    timesteps_on_device, run = schedule.timesteps.to(x.device), range(schedule.start, len(dt))
    for i in run:
        eps = denoise(x / input_scale[i], timesteps_on_device[i]).float()
        x0 = x.float() - sigma[i] * eps
        x32 = x.float() + eps * dt[i]
        x32 = x32 + randn(x.shape, generator, x.device, torch.float32) * sigma_up[i]
        x = _end_step(x32, x.dtype, i, run, after_step, callback, x0)
    return x


_DECODER_LOOPS = {
    "ddpm": _sample_ddpm,
    "ddim": _sample_ddim,
    "dpmpp_2m": _sample_dpmpp_2m,
    "euler_ancestral": _sample_euler_ancestral,
}


def sample_decoder(
    denoise: Denoise,
    x: Tensor,
    schedule: DecoderSchedule,
    generator: torch.Generator | None,
    callback: Callback | None = None,
    after_step: AfterStep | None = None,
) -> Tensor:
    """Run the schedule's sampler from latent `x` (txt2img: `initial_noise`; img2img: `noise_latent`'s output).

    denoise(x, t) returns the guided 4-channel epsilon. Steps run from schedule.start; after_step(i, x) may replace
    the latent after step i (inpainting pastes the kept picture back), then callback(step_index, total, x, x0) sees it.
    """
    return _DECODER_LOOPS[schedule.sampler](denoise, x, schedule, generator, callback, after_step)
