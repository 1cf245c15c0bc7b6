"""The Hugging Face Hub, as checkpoints see it: a repo id (at a revision) or a local folder → local files, each
downloaded only when needed.

Every failure a user can cause (a typo in a repo id, a missing file, no network for a file not downloaded yet)
becomes a `CheckpointError` that says what is wrong and how to fix it. Downloads report their bytes to the
`DownloadProgress` a caller puts on the `Source`, which may also stop them (a Cancel). Reading and verifying what
was fetched is engine/checkpoints.py's job.
"""

from __future__ import annotations

import inspect
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import constants as hf_constants
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from .checkpoints import CheckpointError, read_json, readable_file

# Preferred first: safetensors cannot execute code; pickles are read with weights_only=True only.
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin")

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


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


def default_store() -> Path | None:
    """Where downloads land outside ComfyUI: $DALLE_NODES_HOME when set, else None (the Hugging Face cache)."""
    home = os.environ.get("DALLE_NODES_HOME")
    return Path(home).expanduser() if home else None
