"""karlo/sampling.py against diffusers' UnCLIPScheduler.step, bit for bit, with a cheap deterministic stand-in for
the model: each stage's configuration, at few and at all training steps."""

from __future__ import annotations

import pytest
import torch
from diffusers import UnCLIPScheduler

from dalle_nodes.pipelines.karlo.sampling import DECODER, PRIOR, SUPER_RES, sample_unclip, unclip_schedule

# stage → (its scheduler settings in the Karlo repo, whether the model also predicts a variance, sample shape)
STAGES = {
    "prior": (
        PRIOR,
        dict(variance_type="fixed_small_log", prediction_type="sample", clip_sample_range=5.0),
        False,
        (2, 8),
    ),
    "decoder": (
        DECODER,
        dict(variance_type="learned_range", prediction_type="epsilon", clip_sample_range=1.0),
        True,
        (2, 3, 8, 8),
    ),
    "super_res": (
        SUPER_RES,
        dict(variance_type="fixed_small_log", prediction_type="epsilon", clip_sample_range=1.0),
        False,
        (2, 3, 8, 8),
    ),
}


def model(x: torch.Tensor, t: torch.Tensor, learned: bool) -> torch.Tensor:
    """A stand-in that depends on x and t, with full-scale outputs (twice the channels with a learned variance)."""
    weights = torch.randn(x.shape[1] * (1 + learned), x.shape[1], generator=torch.Generator().manual_seed(int(t)))
    return torch.tanh(x.movedim(1, -1) @ (0.5 * weights).T).movedim(-1, 1)


def reference(settings: dict, steps: int, x: torch.Tensor, learned: bool) -> torch.Tensor:
    scheduler = UnCLIPScheduler(**settings)
    scheduler.set_timesteps(steps)
    generator, timesteps = torch.Generator().manual_seed(3), scheduler.timesteps
    for i, t in enumerate(timesteps):
        previous = None if i + 1 == len(timesteps) else timesteps[i + 1]
        out = model(x, t, learned)
        x = scheduler.step(out, t, x, prev_timestep=previous, generator=generator).prev_sample
    return x


@pytest.mark.parametrize("steps", [2, 7, 25, 1000])
@pytest.mark.parametrize("stage", list(STAGES))
def test_sample_unclip_equals_unclip_scheduler(stage, steps) -> None:
    schedule_of, settings, learned, shape = STAGES[stage]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    ours = sample_unclip(
        lambda x, t: model(x, t, learned),
        x.clone(),
        unclip_schedule(steps, schedule_of),
        torch.Generator().manual_seed(3),
    )
    assert torch.equal(ours, reference(settings, steps, x.clone(), learned))
