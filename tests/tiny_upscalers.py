"""Tiny random GAN upscaler checkpoints in the key layouts and file formats found on the Hub.

Real-ESRGAN's RRDBNet (x4plus; x2plus feeds it pixel-unshuffled input) and SRVGGNetCompact
(realesr-general-x4v3), written as the original `.pth` files (weights under `params_ema` or `params`), as plain
`.pth` state dicts, or as the `.safetensors` conversions.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors.torch import save_file

FEATURES, GROWTH = 8, 32  # spandrel reads the feature count from the file; the growth is fixed at 32


def _conv(state: dict, name: str, cin: int, cout: int, gen: torch.Generator, gain: float = 1.0) -> None:
    # He-style scale keeps activations in range through the stack, so outputs are not all clamped.
    state[f"{name}.weight"] = torch.randn(cout, cin, 3, 3, generator=gen) * gain * (2 / (9 * cin)) ** 0.5
    state[f"{name}.bias"] = torch.randn(cout, generator=gen) * 0.02


def rrdbnet_state(scale: int = 4, blocks: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """basicsr's RRDBNet keys (conv_first, body.N.rdbK.convJ, conv_body, conv_up1/2, conv_hr, conv_last)."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    _conv(state, "conv_first", 3 * {4: 1, 2: 4, 1: 16}[scale], FEATURES, gen)
    for b in range(blocks):
        for r in (1, 2, 3):
            for j in range(1, 5):
                _conv(state, f"body.{b}.rdb{r}.conv{j}", FEATURES + (j - 1) * GROWTH, GROWTH, gen)
            _conv(state, f"body.{b}.rdb{r}.conv5", FEATURES + 4 * GROWTH, FEATURES, gen, gain=0.2)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        _conv(state, name, FEATURES, FEATURES, gen)
    _conv(state, "conv_last", FEATURES, 3, gen, gain=0.5)
    state["conv_last.bias"] += 0.5  # centre the output in 0..1
    return state


def compact_state(scale: int = 4, convs: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """SRVGGNetCompact keys: body.0 conv, then PReLU / conv pairs, the last conv feeding a pixel shuffle."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    _conv(state, "body.0", 3, FEATURES, gen)
    for i in range(convs + 1):
        state[f"body.{2 * i + 1}.weight"] = torch.full((FEATURES,), 0.25)
        if i < convs:
            _conv(state, f"body.{2 * i + 2}", FEATURES, FEATURES, gen)
    _conv(state, f"body.{2 * convs + 2}", FEATURES, 3 * scale * scale, gen, gain=0.5)
    return state


def write_upscaler(path: Path, state: dict[str, torch.Tensor], wrap: str | None = None) -> Path:
    """Write `state` as `.safetensors`, or as a `.pth` pickle optionally nested under `wrap` (params_ema …)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:
        torch.save({wrap: state} if wrap else state, path)
    return path


class _RunsCode:
    """Unpickling this object would run a shell command: the attack a weights-only reader must refuse."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def write_malicious_pickle(path: Path, marker: Path) -> Path:
    """A `.pth` that creates `marker` when unpickled by a permissive loader."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump({"params_ema": {"conv_first.weight": torch.zeros(1)}, "payload": _RunsCode(marker)}, f, protocol=2)
    return path
