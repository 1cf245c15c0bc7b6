"""Disk caches: small files derived from checkpoints (the zero-image embedding, compiled kernels) that can always
be made again, so a cache that cannot be read or written is a warning, never a failure.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

log = logging.getLogger(__name__)


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


def cache_folder(store: Path | None) -> Path:
    """Small files derived from checkpoints (the zero-image embedding, compiled kernels): beside the downloads,
    else ~/.cache/dalle-nodes."""
    return store / ".cache" if store is not None else Path.home() / ".cache" / "dalle-nodes"
