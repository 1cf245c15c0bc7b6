"""Checkpoint files: a Hub repo id or a local folder → verified files → strictly loaded modules.

Every failure a user can cause (a typo in a repo id, a missing or half-downloaded file, the wrong kind of
checkpoint) becomes a `CheckpointError` that says what is wrong and how to fix it. Downloads report their bytes to
the `DownloadProgress` a caller puts on the `Source`, which may also stop them (a Cancel).
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import re
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
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
from safetensors.torch import load_file

log = logging.getLogger(__name__)

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


class DownloadProgress:
    """Told how the files of a checkpoint download; put one on `Source(progress=...)`. These methods do nothing.

    fetch_file counts every file it is asked for in `index` (files already on disk too), so a caller that sets
    `files` to the number of files it fetches can say "file k of n" (`position()`). Only a file that is really
    downloaded gets start → update… → close. `update` may raise (a Cancel): the download stops, its partial file
    is deleted, nothing is left under the file's name, and the exception reaches fetch_file's caller unchanged.
    """

    def __init__(self, files: int | None = None) -> None:
        self.files = files
        self.index = 0

    def position(self) -> str:
        return f"file {self.index} of {self.files}" if self.files else f"file {self.index}"

    def start(self, filename: str, total: int | None) -> None:
        """Bytes of `filename` (path in the repo) start to arrive; `total` is its size when known."""

    def update(self, done: int) -> None:
        """`done` bytes of the current file have arrived (may be called from a download thread)."""

    def close(self) -> None:
        """The current file is complete, or its download failed or was stopped."""


class ConsoleDownload(DownloadProgress):
    """A tqdm bar on stderr in bytes for each file downloaded, labelled with the file and "file k of n"."""

    def __init__(self, files: int | None = None) -> None:
        super().__init__(files)
        self.bar = None

    def label(self, filename: str) -> str:
        return f"Downloading {filename} ({self.position()})"

    def start(self, filename: str, total: int | None) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=self.label(filename), unit="B", unit_scale=True, unit_divisor=1024)

    def update(self, done: int) -> None:
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        self.bar.close()


@dataclass(frozen=True)
class Source:
    """Where a checkpoint comes from: a Hub repo id (at a revision) or a local folder in the repo's layout.

    `store` is the folder downloads land in (ComfyUI's models/dalle or $DALLE_NODES_HOME); None means the
    Hugging Face cache. `progress` hears about downloads; it is not part of the identity (loaders key caches on
    sources).
    """

    repo: str
    revision: str | None = None
    store: Path | None = None
    progress: DownloadProgress | None = field(default=None, compare=False, repr=False)

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


def source_from_input(
    repo_id: str, revision: str | None, store: Path | None, progress: DownloadProgress | None = None
) -> Source:
    """The checkpoint a user named (a loader node's inputs, a Python API argument): surrounding spaces dropped."""
    repo_id = repo_id.strip()
    if not repo_id:
        raise ValueError(
            "repo_id is empty: give a Hub repo id (e.g. kandinsky-community/kandinsky-2-2-prior) or a local folder."
        )
    return Source(repo_id, (revision or "").strip() or None, store, progress)


def fetch_file(source: Source, subfolder: str, filename: str) -> Path:
    """Return the local path of one file of the checkpoint, downloading only that file if needed."""
    _count_file(source)
    return _fetch(source, subfolder, filename)


def _count_file(source: Source) -> None:
    if source.progress is not None:
        source.progress.index += 1


def _fetch(source: Source, subfolder: str, filename: str) -> Path:
    local = source.local_folder
    if local is not None:
        path = local / subfolder / filename
        if not path.is_file():
            raise MissingFile(
                f"'{path}' is missing. A local folder must have the layout of the Hub repo ({subfolder}/{filename})."
            )
        return readable_file(path)
    rel = f"{subfolder}/{filename}" if subfolder else filename
    local_dir = _store_folder(source)
    if local_dir is not None and hf_constants.HF_HUB_OFFLINE and (local_dir / rel).is_file():
        return readable_file(local_dir / rel)  # huggingface_hub would warn once per file that it cannot check for
        # updates
    try:
        path = _download(source, subfolder, filename, local_dir)
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
    return readable_file(Path(path))


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


# huggingface_hub takes a progress-bar class from 1.20 on; older ones (transformers 4.x needs one) show their own bars.
_PROGRESS_HOOK = "tqdm_class" in inspect.signature(hf_hub_download).parameters


def _download(source: Source, subfolder: str, filename: str, local_dir: Path | None) -> str:
    """hf_hub_download, its progress going to `source.progress`; an exception raised there stops the download and
    reaches the caller as it is."""
    options = dict(
        subfolder=subfolder or None,
        revision=source.revision,
        local_dir=local_dir,
        local_files_only=hf_constants.HF_HUB_OFFLINE,  # offline: do not even try the network
    )
    if source.progress is None or not _PROGRESS_HOOK:
        return hf_hub_download(source.repo, filename, **options)
    watch = _Watch(source.progress, f"{subfolder}/{filename}" if subfolder else filename)
    try:
        path = hf_hub_download(source.repo, filename, tqdm_class=watch.bar_class(), **options)
    except BaseException as error:
        if watch.stopped is None or watch.stopped is error:
            raise
        raise watch.stopped from error  # an aborted Xet transfer fails with an error of its own
    if watch.stopped is not None:
        raise watch.stopped  # the transfer ended before the abort landed: the file is whole, but the user said stop
    return path


class _Watch:
    """Turns huggingface_hub's progress-bar calls for one file (its public `tqdm_class` hook) into calls of a
    DownloadProgress, and keeps the exception that progress raised.

    Plain HTTP downloads call the bar in the caller's thread, so the exception simply stops the transfer there.
    Xet downloads call it from a Rust progress thread that only logs exceptions: that transfer is aborted instead,
    and `_download` raises the kept exception.
    """

    def __init__(self, progress: DownloadProgress, filename: str):
        self.progress = progress
        self.filename = filename
        self.thread = threading.get_ident()
        self.stopped: BaseException | None = None

    def report(self, done: int) -> None:
        if self.stopped is not None:
            return  # a Xet transfer reports on until the abort lands
        try:
            self.progress.update(done)
        except BaseException as error:
            self.stopped = error
            if threading.get_ident() != self.thread:
                _abort_xet_transfers()
            raise

    def bar_class(self) -> type:
        watch = self

        class Bar:
            """The part of tqdm huggingface_hub uses, like its own snapshot_download's `_AggregatedTqdm`."""

            def __init__(self, *args: object, total: int | None = None, initial: int = 0, **kwargs: object):
                self.total, self.n, self.closed = total, initial, False
                watch.progress.start(watch.filename, total)

            def update(self, n: int = 1) -> None:
                self.n += n  # negative when a retried transfer starts over
                watch.report(self.n)

            def update_transfer(self, n: int = 1) -> None:
                """Network bytes of a Xet transfer: having this method makes huggingface_hub report a Xet download
                through this one bar (bytes written) instead of opening a second bar per file."""

            def set_postfix_str(self, *args: object, **kwargs: object) -> None:
                pass

            set_transfer_postfix_str = set_postfix_str
            refresh = set_postfix_str

            def close(self) -> None:
                if not self.closed:
                    self.closed = True
                    watch.progress.close()

            def __enter__(self) -> Bar:
                return self

            def __exit__(self, *exc: object) -> None:
                self.close()

        return Bar


def _abort_xet_transfers() -> None:
    """Abort running Xet transfers the way huggingface_hub does on Ctrl-C. Private API (huggingface_hub 2.x):
    hf_xet offers no public cancel that reaches a single hf_hub_download."""
    from huggingface_hub.utils._xet import abort_xet_session

    abort_xet_session()


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
    config = read_json(path)
    declared = config.get("_class_name") or (config.get("architectures") or [None])[0]
    if expect and declared != expect:
        raise CheckpointError(
            f"'{path}' describes a {declared}, not a {expect}: {source.describe()} is the wrong kind of checkpoint "
            f"for this loader."
        )
    return config


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


def fetch_weights(source: Source, subfolder: str, names: tuple[str, ...] = DIFFUSERS_WEIGHTS) -> Path:
    """The component's weight file, safetensors first, pickled `.bin` only when no safetensors exists."""
    _count_file(source)  # one file of the checkpoint, whichever name it has
    offline: NotDownloaded | None = None
    for name in names:
        try:
            return _fetch(source, subfolder, name)
        except NotDownloaded as error:  # a .bin twin may still be on disk
            offline = offline or error
        except MissingFile:
            pass
    if offline is not None:
        raise offline
    raise CheckpointError(f"{source.describe()} has no weights in '{subfolder}/' (looked for {', '.join(names)}).")


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


def read_cache_file(
    path: Path, keys: tuple[str, ...], valid: Callable[..., bool], what: str, again: str
) -> tuple[torch.Tensor, ...] | None:
    """The tensors `keys` of a safetensors cache file of `what`, or None: when there is none, or it is unreadable,
    lacks a key, holds NaN or fails `valid(*tensors)` (a damaged cache is only a cache: a warning says what is done
    `again`)."""
    if not path.is_file():
        return None
    try:
        stored = load_file(path)
        tensors = tuple(stored[key] for key in keys)
    except Exception as error:  # SafetensorError, OSError, KeyError
        log.warning("The cache of %s '%s' is unreadable (%s); %s.", what, path, error, again)
        return None
    if not valid(*tensors) or not all(torch.isfinite(t).all() for t in tensors):
        log.warning("The cache of %s '%s' is damaged; %s.", what, path, again)
        return None
    return tensors


def write_cache_file(path: Path, write: Callable[[Path], None]) -> bool:
    """Write a cache file (something derived that can be made again) with `write(temporary path)`, then rename it
    into place atomically. Each writer has its own temporary name, so concurrent writers never collide and a reader
    sees a whole file or none. A cache that cannot be written (a read-only model store, a full disk) is a warning,
    not a failure; returns whether the file was written."""
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        write(tmp)
        os.replace(tmp, path)
        return True
    except (OSError, SafetensorError) as error:
        log.warning("Could not write the cache file '%s' (%s); going on without it.", path, error)
        return False
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink(missing_ok=True)


def usable_cache_folder(folder: Path) -> bool:
    """Whether files can be written in a cache folder (made if need be); where not, a warning, not a failure."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        log.warning("Cannot write in the cache folder '%s' (%s); going on without it.", folder, error)
        return False
    return True


def default_store() -> Path | None:
    """Where downloads land outside ComfyUI: $DALLE_NODES_HOME when set, else None (the Hugging Face cache)."""
    home = os.environ.get("DALLE_NODES_HOME")
    return Path(home).expanduser() if home else None


def cache_folder(store: Path | None) -> Path:
    """Small files derived from checkpoints (the zero-image embedding, compiled kernels): beside the downloads,
    else ~/.cache/dalle-nodes."""
    return store / ".cache" if store is not None else Path.home() / ".cache" / "dalle-nodes"
