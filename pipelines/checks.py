"""Input checks shared by the pipelines, the nodes and the CLI: one wording for each kind of mistake.

Every public pipeline function checks its inputs here once, before any work; node classes and the CLI rely on it
instead of checking again.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from pathlib import PurePath

import torch

MAX_SEED = 2**64 - 1  # torch's CPU generator takes seeds up to this
ACCELERATORS = ("cuda", "mps", "xpu")  # torch modules with is_available() and device_count()
REPO_OR_FOLDER = "a Hub repo id or a local folder"
DTYPE_CHOICES = "auto, fp32, fp16 or bf16"


def check_range(name: str, value: float, low: float, high: float) -> None:
    """`value` lies in [low, high] and is a finite number."""
    if not _is_number(value):
        raise TypeError(f"{name} must be a number between {low} and {high}; got {described(value)}.")
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{name} must be between {low} and {high} (got {value}).")


def whole_number(name: str, value: object) -> int:
    """An integer argument (Python's or numpy's, not a bool or a float) as a Python int, which torch's generators and
    range() need; its range is checked where it is used."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{name} must be a whole number (an int); got {described(value)}.")
    return int(value)


def whole_numbers(settings: object, names: Iterable[str]) -> None:
    """The named fields of a (frozen) dataclass that are not None checked whole_number and stored as Python ints; None
    is left to the range checks, which refuse it where a number is needed."""
    for name in names:
        value = getattr(settings, name)
        if value is not None:
            object.__setattr__(settings, name, whole_number(name, value))  # as a frozen dataclass sets its own fields


def check_text(name: str, value: object, what: str) -> None:
    """A str argument; `what` says what it holds ("a Hub repo id or a local folder")."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be {what} (a str); got {described(value)}.")


def path_text(name: str, value: object, what: str) -> str:
    """A str argument that may name a file or folder, also given as a Path: the str the loaders read."""
    if isinstance(value, PurePath):
        return str(value)
    check_text(name, value, what)
    return value


def check_flag(name: str, value: object) -> None:
    """A switch: True or False, not a value that merely looks true ("no" would switch it on)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False; got {described(value)}.")


def check_device(device: object) -> torch.device:
    """A device this machine can run models on: cpu, or an accelerator torch sees (cuda, cuda:1, mps, xpu)."""
    if not isinstance(device, str | torch.device):
        raise TypeError(
            f"device must be a str such as 'cuda', 'cuda:1' or 'cpu', or a torch.device; got {described(device)}."
        )
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device '{device}' is not a device name torch knows: use cpu, cuda, cuda:1, mps …") from None
    if device.type == "cpu":
        return device
    backend = getattr(torch, device.type) if device.type in ACCELERATORS else None
    if backend is None:
        raise ValueError(f"device '{device}' cannot run models: use cpu or one of {', '.join(ACCELERATORS)}.")
    count = backend.device_count() if backend.is_available() else 0
    if (device.index or 0) >= count:
        raise ValueError(
            f"device '{device}' is not on this machine: torch sees {count} {device.type} device(s). Use cpu, or leave "
            "device out for the best one there is."
        )
    return device


def check_choice(name: str, value: str, choices: Iterable[str]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)} (got '{value}').")


def check_prompt(text: str, wanted: str = "what the image should show", name: str = "prompt", hint: str = "") -> None:
    """A prompt with something in it; what it should say (`wanted`) and a `hint` for the caller's case complete the
    message."""
    if not isinstance(text, str):
        raise TypeError(f"The {name} must be text (a str); got {described(text)}.")
    if not text.strip():
        raise ValueError(f"The {name} is empty: write {wanted}.{hint}")
    try:
        text.encode()
    except UnicodeEncodeError as error:  # a lone surrogate: tokenizers refuse it with an unrelated TypeError
        raise ValueError(
            f"The {name} holds {text[error.start]!r} at character {error.start}, half of a UTF-16 pair and not text "
            "(bytes decoded with errors='surrogateescape', or JSON's \\ud800 escapes): remove it, or decode the "
            "text as UTF-8."
        ) from None


def _is_number(value: object) -> bool:
    """A real number (Python's, numpy's …), not a bool, which would pass for 0 or 1."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


# Tensors that arrive from other nodes (or a user's script) are checked here, where they enter a pipeline function:
# a wrong one fails with what the input needs and where such an input usually comes from, not deep in a model.
IMAGE_SOURCES = "Load Image, VAE Decode and the DALL·E decode nodes give one"
IMAGE_OVERSHOOT = 0.1  # bicubic resizing and sharpening overshoot 0..1 a little: clipped; further out is wrong


def check_image(image: object, name: str = "image") -> torch.Tensor:
    """An IMAGE [B, H, W, 3|4] of finite floats in 0..1, clipped to 0..1."""
    if not (isinstance(image, torch.Tensor) and image.ndim == 4 and image.shape[-1] in (3, 4) and image.numel()):
        raise ValueError(
            f"The {name} must be an IMAGE [batch, height, width, 3 or 4] ({IMAGE_SOURCES}); got {_shape(image)}."
        )
    if not image.is_floating_point():
        raise ValueError(f"The {name} holds {image.dtype} values; an IMAGE holds floats in 0..1 ({IMAGE_SOURCES}).")
    return _unit_range(image, name, "an IMAGE holds 0..1", "0..255 or -1..1")


MASK_SOURCES = "Load Image's MASK output, or a mask editor's"


def check_mask(mask: object, name: str = "mask") -> torch.Tensor:
    """A MASK [B, H, W] (or [H, W], or a LATENT's noise_mask [B, 1, H, W]) of finite floats in 0..1, as [B, H, W];
    1 marks what is repainted, ComfyUI's convention."""
    if isinstance(mask, torch.Tensor) and mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if isinstance(mask, torch.Tensor) and mask.ndim == 2:
        mask = mask[None]
    if not (isinstance(mask, torch.Tensor) and mask.ndim == 3 and mask.numel()):
        raise ValueError(f"The {name} must be a MASK [batch, height, width] ({MASK_SOURCES}); got {_shape(mask)}.")
    if not mask.is_floating_point():
        raise ValueError(f"The {name} holds {mask.dtype} values; a MASK holds floats in 0..1 (1 = repaint).")
    return _unit_range(mask, name, "a MASK holds 0..1 (1 = repaint)", "0..255")


def _unit_range(tensor: torch.Tensor, name: str, holds: str, likely: str) -> torch.Tensor:
    """Finite values in 0..1, up to IMAGE_OVERSHOOT outside (clipped); `holds` and `likely` (the range it may be in
    instead) word the refusal."""
    _check_finite(tensor, name)
    low, high = (float(v) for v in tensor.aminmax()) if not tensor.is_meta else (0.0, 1.0)
    if low < -IMAGE_OVERSHOOT or high > 1 + IMAGE_OVERSHOOT:
        raise ValueError(
            f"The {name} has values from {low:.4g} to {high:.4g}, but {holds}: rescale it first (it may be in "
            f"{likely})."
        )
    return tensor.clamp(0, 1)


def check_latent(latent: object, channels: int, model: str, encoder: str) -> torch.Tensor:
    """A LATENT's samples [B, channels, h, w] of finite floats; `model` and `encoder` name where a right one comes
    from."""
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not (
        isinstance(samples, torch.Tensor) and samples.ndim == 4 and samples.numel() and samples.is_floating_point()
    ):
        raise ValueError(f"The latent must be a LATENT with samples [batch, {channels}, h, w]; got {_shape(samples)}.")
    if samples.shape[1] != channels:
        raise ValueError(
            f"The latent has {samples.shape[1]} channels, but {model} latents have {channels}: it comes from another "
            f"model's VAE. Encode the picture with {encoder} instead."
        )
    _check_finite(samples, "latent")
    return samples


def check_tokens(tokens: object, codes: int) -> torch.Tensor:
    """Image tokens [B, h, w] of int64 ids below `codes`."""
    if not (isinstance(tokens, torch.Tensor) and tokens.ndim == 3 and tokens.numel() and tokens.dtype == torch.long):
        raise ValueError(
            f"The tokens must be image tokens [batch, 16, 16] of int64 (from DALL·E Mini Token Sample); got "
            f"{_shape(tokens)}."
        )
    low, high = (int(v) for v in tokens.aminmax())
    if low < 0 or high >= codes:
        raise ValueError(f"The image tokens range from {low} to {high}; the VQGAN has codes 0 to {codes - 1}.")
    return tokens


def check_embeds(embeds: torch.Tensor, width: int, name: str = "image embeddings") -> None:
    """CLIP embeddings [B, width] of finite values: `width` is what the model that reads them was trained on."""
    if embeds.ndim != 2 or embeds.shape[1] != width:
        raise ValueError(
            f"The {name} are {_shape(embeds)}, but this model reads [batch, {width}]: they come from another "
            "model's CLIP (use the prior or image encoder of this decoder's family: Kandinsky 2.2's for its decoder, "
            "Karlo's for Karlo's)."
        )
    _check_finite(embeds, name)


def _check_finite(tensor: torch.Tensor, name: str) -> None:
    if tensor.is_meta:  # shapes only (memory traces, tests that prove no value is read): nothing to check
        return
    if not torch.isfinite(tensor).all():
        raise ValueError(f"The {name} contains NaN or infinite values: the node that made it failed; check its inputs.")


def described(value: object) -> str:
    """What a caller passed, as an error shows it: the value and its type ("'2' (type str)", "1.5 (type float)"), or
    a tensor's shape."""
    if isinstance(value, torch.Tensor) and value.ndim:
        return _shape(value)
    shown = repr(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return f"{shown} (type {type(value).__name__})"


def _shape(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {list(value.shape)}"
    return f"a {type(value).__name__}"
