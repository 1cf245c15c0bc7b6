"""How a stage gets its model: the one holder every family's stages take, so the nodes (ComfyUI's memory manager),
the Python API (models kept on their device) and the tests hand models to the same stage functions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StageModel:
    """A model a stage readies once its inputs are checked: its config, the device and dtype it computes in, and
    `load(rows, *latent_sides)`, which places it there (in ComfyUI: making room for one forward over `rows` rows of
    latents that size) and returns the call to make of it (the module, or its compiled call)."""

    config: object
    device: torch.device
    dtype: torch.dtype
    load: Callable[..., Callable]

    @classmethod
    def held(cls, module: torch.nn.Module, call: Callable | None = None) -> StageModel:
        """A model that stays where it is (the Python API keeps every model on its device): `call` or the module."""
        param = next(module.parameters())
        return cls(module.config, param.device, param.dtype, lambda *shape: call or module)
