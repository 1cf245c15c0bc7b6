"""Input checks shared by the pipelines, the nodes and the CLI: one wording for each kind of mistake.

Every public pipeline function checks its inputs here once, before any work; node classes and the CLI rely on it
instead of checking again.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

MAX_SEED = 2**64 - 1  # torch's CPU generator takes seeds up to this


def check_range(name: str, value: float, low: float, high: float) -> None:
    """`value` lies in [low, high] and is a finite number."""
    if not (_is_number(value) and math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{name} must be between {low} and {high} (got {value}).")


def check_above(name: str, value: float, low: float) -> None:
    """`value` is a finite number above `low`."""
    if not (_is_number(value) and math.isfinite(value) and value > low):
        raise ValueError(f"{name} must be above {low} (got {value}).")


def check_choice(name: str, value: str, choices: Iterable[str]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)} (got '{value}').")


def check_prompt(text: str, wanted: str = "what the image should show", name: str = "prompt", hint: str = "") -> None:
    """A prompt with something in it; what it should say (`wanted`) and a `hint` for the caller's case complete the
    message."""
    if not text.strip():
        raise ValueError(f"The {name} is empty: write {wanted}.{hint}")


def _is_number(value: object) -> bool:
    """A real number (Python's, numpy's …), not a bool, which would pass for 0 or 1."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
