"""Reading and verifying checkpoint files: configs under one rule, weights safetensors first and pickles only
through torch's weights_only, modules loaded strictly.

Every failure a user can cause (a damaged or half-downloaded file, an unknown setting, the wrong kind of checkpoint)
becomes a `CheckpointError` that says what is wrong and how to fix it. Finding and downloading the files is
engine/hub.py's job.
"""

from __future__ import annotations

import json
import logging
import math
import re
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint cannot be found or used; the message tells the user what to do."""


def readable_file(path: Path) -> Path:
    """`path`, once it is known to open for reading: every file we read passes here first, so a file without read
    permission is named in one clear error instead of failing deep inside a library that reads it."""
    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        raise CheckpointError(
            f"'{path}' cannot be read ({error.strerror or error}): check its permissions (the user running this "
            "needs read access), or delete it and download it again."
        ) from error
    return path


def read_json(path: Path) -> dict:
    """A JSON object (settings, a vocabulary) from a file; anything else is a CheckpointError naming the file."""
    try:
        data = json.loads(Path(path).read_bytes().decode("utf8"))
    except OSError as error:
        raise CheckpointError(f"'{path}' cannot be read ({error.strerror or error}): check its permissions.") from error
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise CheckpointError(
            f"'{path}' is not valid JSON ({error_summary(error)}); delete it and download it again."
        ) from error
    if not isinstance(data, dict):
        raise CheckpointError(
            f"'{path}' holds a JSON {type(data).__name__}, not an object of settings; delete it and download it again."
        )
    return data


# Keys a config file carries about where and how it was written, never about the network: ignored. Other keys
# starting with "_" are metadata by diffusers' and transformers' convention: ignored with a note.
METADATA_KEYS = frozenset(
    {
        "_class_name",
        "_diffusers_version",
        "_name_or_path",
        "_commit_hash",
        "_use_default_values",
        "transformers_version",
        "torch_dtype",
        "dtype",
        "architectures",
        "model_type",
        "image_processor_type",
        "feature_extractor_type",
        "processor_class",
    }
)
_noted: set[tuple[str, str]] = set()


def config_settings(config: dict, defaults: Mapping, what: str, known: Iterable[str] = ()) -> dict:
    """One rule for every component's config: its settings with `defaults` filled in for omitted keys.

    Metadata (METADATA_KEYS, or any key starting with "_") is dropped, with a note once for keys not in the list.
    Any other key outside `defaults` and `known` (keys we read elsewhere, or know change nothing we build) is
    refused: a setting we do not know could change the architecture, and loading would then build the wrong network.
    A value of another type than its default (text where a number belongs, a list for a number, null) is refused.
    ValueErrors name the key; callers add the file.
    """
    settings, known = {}, set(known)
    for key, value in config.items():
        if key in METADATA_KEYS or key in known:
            continue
        if key.startswith("_"):
            if (what, key) not in _noted:
                _noted.add((what, key))
                log.info("Ignoring the %s config's metadata key %r, which we do not know.", what, key)
            continue
        if key not in defaults:
            raise ValueError(
                f"unknown {what} setting {key!r}: it may change the architecture, which we could not then build"
            )
        if not _same_kind(value, defaults[key]):
            raise ValueError(f"{what} setting {key}={value!r} has the wrong type ({_kind(defaults[key])} expected)")
        settings[key] = value
    return {**defaults, **settings}


def _kind(default: object) -> str:
    """What a setting's value must be, in JSON's words."""
    for kind, name in ((bool, "true or false"), (int, "a whole number"), (float, "a number"), (str, "text")):
        if isinstance(default, kind):
            return name
    return "a list" if isinstance(default, (list, tuple)) else "an object"


def _same_kind(value: object, default: object) -> bool:
    """`value` has the JSON type of `default` (a None default takes anything: the caller checks such keys)."""
    if default is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if isinstance(default, (list, tuple)):
        # Elements are held to the widest kind among the default's: [4, 2, 1, 0.5] (DPT's) takes any numbers.
        element = next((d for d in default if isinstance(d, float)), default[0]) if default else None
        return isinstance(value, (list, tuple)) and all(_same_kind(v, element) for v in value)
    if isinstance(default, dict):
        first = next(iter(default.values()), None)
        return isinstance(value, dict) and all(_same_kind(v, first) for v in value.values())
    return isinstance(value, type(default))


_TERMINAL_CODES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def error_summary(error: BaseException) -> str:
    """Another library's error as one plain line for our messages: its first line, terminal colour codes removed
    (torch's unpickling errors carry some), or its class name."""
    line = _TERMINAL_CODES.sub("", str(error)).strip().split("\n")[0].strip()
    return line or type(error).__name__


def _corrupt(path: Path, error: Exception) -> CheckpointError:
    return CheckpointError(
        f"'{path}' is corrupt or only partly downloaded ({error_summary(error)}). Delete it and download it again."
    )


def verify_safetensors(path: Path) -> None:
    """Cheap integrity check: the header must parse and cover the whole file (catches truncated downloads)."""
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except SafetensorError as error:
        raise _corrupt(path, error) from error


def read_state_dict(path: Path, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a weight file on the CPU, floats cast to `dtype`; refuses corrupt files and unsafe pickles."""

    def cast(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor

    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                return {key: cast(f.get_tensor(key)) for key in f.keys()}
        except SafetensorError as error:
            raise _corrupt(path, error) from error
    return {key: cast(value) for key, value in _tensor_dict(read_pickle(path), path).items()}


def _tensor_dict(state: object, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"'{path}' does not hold a flat state dict of tensors.")
    return state


def stored_dtypes(path: Path) -> dict[str, torch.dtype]:
    """The dtype each tensor of a weight file is stored in, without reading the tensors' data (the safetensors
    header; a pickle's storages memory-mapped): for files another library loads (transformers)."""
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                return {key: f.get_slice(key).get_dtype() for key in f.keys()}
        except SafetensorError as error:
            raise _corrupt(path, error) from error
    state = read_pickle(path, mmap=zipfile.is_zipfile(path))  # only torch.save's zip format maps
    return {key: tensor.dtype for key, tensor in _tensor_dict(state, path).items()}


def _is_float(dtype: torch.dtype | str) -> bool:
    """torch dtypes, and safetensors' header names of them (F16, BF16, F32, F8_E4M3 …)."""
    return dtype.is_floating_point if isinstance(dtype, torch.dtype) else dtype.startswith(("F", "BF"))


def check_tensor_types(
    stored: Mapping[str, torch.dtype | str], expected: Mapping[str, torch.Tensor], what: str
) -> None:
    """Weights stored as integers or bools where the network holds floats (or the other way round) are refused:
    loading would cast them silently, and the network would run on truncated numbers. `expected` maps the
    network's tensor names to its tensors (meta ones will do); names it lacks are the caller's concern."""
    wrong = [
        f"{key} is {str(stored[key]).removeprefix('torch.')}"
        for key, tensor in expected.items()
        if key in stored and _is_float(stored[key]) != tensor.is_floating_point()
    ]
    if wrong:
        more = " …" if len(wrong) > 3 else ""
        raise CheckpointError(
            f"The {what} holds {len(wrong)} tensors of the wrong type ({', '.join(wrong[:3])}{more}) where the "
            "network has floating-point weights (or integer buffers): the file is damaged or was converted wrongly. "
            "Delete it and download it again."
        )


# torch.load(weights_only=True) could be made to run code before torch 2.6 (CVE-2025-32434).
SAFE_UNPICKLING = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 6)


def read_pickle(path: Path, mmap: bool = False) -> object:
    """A pickled checkpoint read with `weights_only=True`: tensors and plain containers only, never code."""
    if not SAFE_UNPICKLING:
        raise CheckpointError(
            f"'{path}' is a pickle, which is read safely only with torch 2.6 or newer (this is {torch.__version__}): "
            "upgrade torch, or use a .safetensors file."
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except OSError as error:
        raise CheckpointError(f"'{path}' cannot be read ({error.strerror or error}): check its permissions.") from error
    except Exception as error:  # UnpicklingError, RuntimeError or EOFError, depending on the damage
        raise CheckpointError(
            f"'{path}' could not be read safely ({error_summary(error)}). It is damaged, or it is a pickle that would "
            "run code, which is refused: use a .safetensors file."
        ) from error


def load_strict(build: Callable[[], torch.nn.Module], state: dict[str, torch.Tensor], what: str) -> torch.nn.Module:
    """Build a module without allocating weights, then adopt the checkpoint's tensors; every key must match, and
    every tensor must be of the module's kind (floats for weights: see check_tensor_types).

    `what` names the checkpoint in errors (e.g. "prior of kandinsky-community/kandinsky-2-2-prior").
    """
    try:
        with torch.device("meta"):
            module = build()
    except Exception as error:  # a config that passed its checks can still describe no network (0 groups …)
        raise CheckpointError(
            f"The {what} cannot be built from its config ({type(error).__name__}: {error_summary(error)}): the "
            "config is damaged or not one we support. Delete it and download it again."
        ) from error
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:

        def sample(keys: list[str]) -> str:
            return ", ".join(keys[:3]) + (" …" if len(keys) > 3 else "")

        reshaped = [f"{k} {tuple(state[k].shape)} ≠ {tuple(expected[k].shape)}" for k in wrong]
        details = [
            f"{len(keys)} {kind} ({sample(keys)})"
            for kind, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped))
            if keys
        ]
        raise CheckpointError(
            f"The {what} does not match its config or is the wrong architecture: " + "; ".join(details) + " tensors."
        )
    check_tensor_types({k: v.dtype for k, v in state.items()}, expected, what)
    module.load_state_dict(state, strict=True, assign=True)
    return module.eval().requires_grad_(False)
