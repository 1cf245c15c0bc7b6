"""Karlo's sampler: diffusers' UnCLIPScheduler as UnCLIPPipeline drives it, for each of Karlo's three stages.

An ancestral DDPM over a subset of the 1000 squaredcos_cap_v2 steps (sampling.prior_schedule's timesteps and
posterior coefficients), with per stage what the model predicts, how far its clean estimate is clipped and the step
noise's size:

    prior      predicts the clean embedding   clip 5    noise std "fixed_small_log" (the posterior's)
    decoder    predicts ε (+ variance)        clip 1    "learned_range": the model picks, per pixel, a log variance
                                                        between the posterior's and beta's
    super-res  predicts ε                     clip 1    "fixed_small_log"

Noise is drawn after every model call whose timestep is above 0 (all but the last), as the reference draws it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .. import sampling
from ..checks import check_range

MAX_STEPS = sampling.TRAIN_TIMESTEPS


@dataclass(frozen=True)
class Stage:
    """One stage's scheduler config (its scheduler_config.json)."""

    prediction: str  # "sample" (the clean value) or "epsilon" (the noise)
    clip_range: float
    learned_variance: bool  # "learned_range" (the model outputs variance channels) or "fixed_small_log"


PRIOR = Stage("sample", 5.0, learned_variance=False)
DECODER = Stage("epsilon", 1.0, learned_variance=True)
SUPER_RES = Stage("epsilon", 1.0, learned_variance=False)


@dataclass(frozen=True)
class UnclipSchedule:
    """The steps one stage takes: UnCLIPScheduler after set_timesteps(steps), per-step values as lists."""

    stage: Stage
    timesteps: Tensor  # int64, CPU
    coef_x0: list[float]  # x_prev = coef_x0 * x0 + coef_x * x_t + std * noise
    coef_x: list[float]
    noise_std: list[float]  # fixed_small_log
    sqrt_alpha: list[float]  # epsilon → x0: (x - sqrt_one_minus_alpha * ε) / sqrt_alpha
    sqrt_one_minus_alpha: list[float]
    log_variance: Tensor  # learned_range's ends, per step: the posterior's log variance …
    log_beta: Tensor  # … and log beta

    @property
    def steps(self) -> int:
        return len(self.timesteps)


def unclip_schedule(steps: int, stage: Stage, name: str = "steps") -> UnclipSchedule:
    """The schedule of `steps` steps (2 to 1000; `name` is the argument's, for the error)."""
    check_range(name, steps, 2, MAX_STEPS)
    base = sampling.prior_schedule(steps)
    timesteps = base.timesteps
    betas = sampling.unclip_betas()
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    prev = torch.cat([timesteps[1:], timesteps[-1:] - 1])
    a_t = alphas_cumprod[timesteps]
    a_prev = torch.where(prev >= 0, alphas_cumprod[prev.clamp(min=0)], torch.ones(()))
    beta = torch.where(prev == timesteps - 1, betas[timesteps], 1 - a_t / a_prev)  # skipped steps: from the products
    variance = (1 - a_prev) / (1 - a_t) * beta
    return UnclipSchedule(
        stage,
        timesteps,
        base.coef_x0.tolist(),
        base.coef_x.tolist(),
        base.noise_std.tolist(),
        (a_t**0.5).tolist(),
        ((1 - a_t) ** 0.5).tolist(),
        variance.log(),
        beta.log(),
    )


def sample_unclip(
    denoise: sampling.Denoise,
    x: Tensor,
    schedule: UnclipSchedule,
    generator: torch.Generator | None,
    callback: sampling.Callback | None = None,
    steps: range | None = None,
) -> Tensor:
    """Run the schedule's `steps` (all by default) from float32 `x`. denoise(x, t) returns the guided prediction:
    the clean value or ε, followed by the variance channels for a learned variance. callback(i, total, x, x0)."""
    steps = range(schedule.steps) if steps is None else steps
    stage, channels = schedule.stage, x.shape[1]
    timesteps_on_device, ts = schedule.timesteps.to(x.device), schedule.timesteps.tolist()
    for i in steps:
        out = denoise(x, timesteps_on_device[i]).float()
        prediction = out[:, :channels]
        if stage.prediction == "epsilon":
            prediction = (x - schedule.sqrt_one_minus_alpha[i] * prediction) / schedule.sqrt_alpha[i]
        x0 = prediction.clamp(-stage.clip_range, stage.clip_range)
        x = schedule.coef_x0[i] * x0 + schedule.coef_x[i] * x
        if ts[i] > 0:
            noise = sampling.randn(x.shape, generator, x.device, torch.float32)
            x = x + _noise_std(out[:, channels:], schedule, i) * noise
        if callback is not None:
            callback(i, schedule.steps, x, x0)
    return x


def _noise_std(variance: Tensor, schedule: UnclipSchedule, i: int) -> Tensor | float:
    """The step noise's std: the schedule's, or the one the model chose between the posterior's and beta's."""
    if not schedule.stage.learned_variance:
        return schedule.noise_std[i]
    low, high = (t[i].to(variance.device) for t in (schedule.log_variance, schedule.log_beta))
    fraction = (variance + 1) / 2
    return torch.exp(0.5 * (fraction * high + (1 - fraction) * low))
