"""How close two tensors are, one definition for every parity test."""

import torch


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """The largest absolute difference relative to the largest magnitude of `expected` (both taken in float32)."""
    return ((actual.float() - expected.float()).abs().max() / expected.float().abs().max()).item()
