"""Checkpoint files: a Hub repo id or a local folder → verified files → strictly loaded modules.

Every failure a user can cause (a typo in a repo id, a missing or half-downloaded file, the wrong kind of
checkpoint) becomes a `CheckpointError` that says what is wrong and how to fix it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors import SafetensorError, safe_open

# Preferred first: safetensors cannot execute code; pickles are read with weights_only=True only.
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin")

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class CheckpointError(ValueError):
    """A checkpoint cannot be found or used; the message tells the user what to do."""


class MissingFile(CheckpointError):
    """The checkpoint has no such file (locally, or on the Hub)."""


class NotDownloaded(CheckpointError):
    """The file is not on disk and the Hub cannot be reached."""


@dataclass(frozen=True)
class Source:
    """Where a checkpoint comes from: a Hub repo id (at a revision) or a local folder in the repo's layout.

    `store` is the folder downloads land in (ComfyUI's models/dalle or $DALLE_NODES_HOME); None means the
    Hugging Face cache.
    """

    repo: str
    revision: str | None = None
    store: Path | None = None

    @property
    def local_folder(self) -> Path | None:
        path = Path(self.repo).expanduser()
        if path.is_dir():
            return path
        if path.is_absolute() or self.repo.startswith((".", "~")) or "\\" in self.repo or self.repo.count("/") > 1:
            raise CheckpointError(f"Local folder '{self.repo}' does not exist. Check the path, or give a Hub repo id.")
        if not _REPO_ID.match(self.repo):
            raise CheckpointError(
                f"'{self.repo}' is neither a local folder nor a Hub repo id "
                "like 'kandinsky-community/kandinsky-2-2-prior'."
            )
        return None

    def describe(self) -> str:
        return self.repo if not self.revision else f"{self.repo}@{self.revision}"


def fetch_file(source: Source, subfolder: str, filename: str) -> Path:
    """Return the local path of one file of the checkpoint, downloading only that file if needed."""
    local = source.local_folder
    if local is not None:
        path = local / subfolder / filename
        if not path.is_file():
            raise MissingFile(
                f"'{path}' is missing. A local folder must have the layout of the Hub repo ({subfolder}/{filename})."
            )
        return path
    rel = f"{subfolder}/{filename}" if subfolder else filename
    local_dir = _store_folder(source)
    if local_dir is not None and hf_constants.HF_HUB_OFFLINE and (local_dir / rel).is_file():
        return local_dir / rel  # huggingface_hub would warn once per file that it cannot check for updates
    try:
        path = hf_hub_download(
            source.repo,
            filename,
            subfolder=subfolder or None,
            revision=source.revision,
            local_dir=local_dir,
            local_files_only=hf_constants.HF_HUB_OFFLINE,  # offline: do not even try the network
        )
    except RepositoryNotFoundError as error:
        raise CheckpointError(
            f"Hub repo '{source.repo}' was not found (or it is private or gated: log in with `hf auth login`). "
            "Check the spelling, or give a local folder."
        ) from error
    except RevisionNotFoundError as error:
        raise CheckpointError(f"Revision '{source.revision}' does not exist in Hub repo '{source.repo}'.") from error
    except LocalEntryNotFoundError as error:
        raise NotDownloaded(
            f"'{rel}' of {source.describe()} is not downloaded yet and the Hub cannot be reached "
            "(offline, or HF_HUB_OFFLINE=1). Run once with network access, or point repo_id at a local folder."
        ) from error
    except EntryNotFoundError as error:
        raise MissingFile(f"{source.describe()} has no file '{rel}'.") from error
    except HfHubHTTPError as error:
        raise CheckpointError(f"Downloading '{rel}' from {source.describe()} failed: {error}") from error
    return Path(path)


def _store_folder(source: Source) -> Path | None:
    if source.store is None:
        return None
    suffix = f"@{source.revision}" if source.revision not in (None, "main") else ""
    return source.store / (source.repo.replace("/", "--") + suffix)


def file_on_disk(source: Source, filename: str) -> Path | None:
    """A file the user put beside the checkpoint (in the local folder, or the repo's folder in the model store),
    without asking the Hub: for optional files no Hub repo has."""
    folder = source.local_folder or _store_folder(source)
    path = folder / filename if folder is not None else None
    return path if path is not None and path.is_file() else None


def fetch_config(source: Source, subfolder: str, filename: str = "config.json", expect: str | None = None) -> dict:
    """Read a component's JSON config; `expect` is the class name it must declare (guards the wrong repo)."""
    try:
        path = fetch_file(source, subfolder, filename)
    except MissingFile as error:
        raise CheckpointError(
            f"{source.describe()} has no '{subfolder}/{filename}': it is not a checkpoint of the expected kind "
            f"(a '{subfolder}' component{f' of class {expect}' if expect else ''})."
        ) from error
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"'{path}' is not valid JSON ({error}); delete it and download it again.") from error
    declared = config.get("_class_name") or (config.get("architectures") or [None])[0]
    if expect and declared != expect:
        raise CheckpointError(
            f"'{path}' describes a {declared}, not a {expect}: {source.describe()} is the wrong kind of checkpoint "
            f"for this loader."
        )
    return config


def diffusers_settings(config: dict, defaults: dict, what: str) -> dict:
    """A diffusers config.json with the class defaults filled in for omitted keys; unknown keys are refused."""
    settings = {k: v for k, v in config.items() if not k.startswith("_")}  # _class_name, _diffusers_version
    unknown = sorted(settings.keys() - defaults.keys())
    if unknown:
        raise ValueError(f"unsupported {what} config keys: {unknown}")
    return {**defaults, **settings}


def fetch_weights(source: Source, subfolder: str, names: tuple[str, ...] = DIFFUSERS_WEIGHTS) -> Path:
    """The component's weight file, safetensors first, pickled `.bin` only when no safetensors exists."""
    offline: NotDownloaded | None = None
    for name in names:
        try:
            return fetch_file(source, subfolder, name)
        except NotDownloaded as error:  # a .bin twin may still be on disk
            offline = offline or error
        except MissingFile:
            pass
    if offline is not None:
        raise offline
    raise CheckpointError(f"{source.describe()} has no weights in '{subfolder}/' (looked for {', '.join(names)}).")


def _corrupt(path: Path, error: Exception) -> CheckpointError:
    return CheckpointError(f"'{path}' is corrupt or only partly downloaded ({error}). Delete it and download it again.")


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
    state = read_pickle(path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"'{path}' does not hold a flat state dict of tensors.")
    return {key: cast(value) for key, value in state.items()}


def read_pickle(path: Path) -> object:
    """A pickled checkpoint read with `weights_only=True`: tensors and plain containers only, never code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError, RuntimeError or EOFError, depending on the damage
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(
            f"'{path}' could not be read safely ({first_line}). It is damaged, or it is a pickle that would run "
            "code, which is refused: use a .safetensors file."
        ) from error


def load_strict(build: Callable[[], torch.nn.Module], state: dict[str, torch.Tensor], what: str) -> torch.nn.Module:
    """Build a module without allocating weights, then adopt the checkpoint's tensors; every key must match.

    `what` names the checkpoint in errors (e.g. "prior of kandinsky-community/kandinsky-2-2-prior").
    """
    with torch.device("meta"):
        module = build()
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
    module.load_state_dict(state, strict=True, assign=True)
    return module.eval().requires_grad_(False)


def default_store() -> Path | None:
    """Where downloads land outside ComfyUI: $DALLE_NODES_HOME when set, else None (the Hugging Face cache)."""
    home = os.environ.get("DALLE_NODES_HOME")
    return Path(home).expanduser() if home else None


def cache_folder(store: Path | None) -> Path:
    """Small files derived from checkpoints (the zero-image embedding, compiled kernels): beside the downloads,
    else ~/.cache/dalle-nodes."""
    return store / ".cache" if store is not None else Path.home() / ".cache" / "dalle-nodes"
