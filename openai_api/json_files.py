"""Reading the images API's JSON files (model descriptions, API workflows) as the server reads them, from any thread
but never waiting on one: regular files only (a FIFO or a device would block the reader or never end), of bounded
size, each parsed once per version (path, modification time, size, inode) and taken from the cache after that."""

from __future__ import annotations

import copy
import functools
import json
import logging
import os
import stat
from pathlib import Path

# O_NONBLOCK: a FIFO put in a file's place between its stat and its opening still opens at once (POSIX); O_BINARY:
# Windows would otherwise translate line ends and stop at a Ctrl-Z
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
_FILE_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a folder",
}
MAX_WORKFLOW_BYTES = 8 * 1024 * 1024  # an API workflow is tens of KB; room for literal values such as embedded text
log = logging.getLogger("dalle_nodes.openai_api")


class ModelError(ValueError):
    """A description or workflow file that cannot serve: the message names the file and what to change."""


def read_json(path: Path, limit: int) -> tuple[object, int]:
    """The file's JSON (a copy of the cached one: callers may change it) and its modification time in seconds."""
    try:
        info = os.stat(path)
    except OSError as error:
        raise ModelError(f"{path.name}: cannot be read ({error.strerror or type(error).__name__}).") from None
    version = (info.st_mode, info.st_mtime_ns, info.st_size, info.st_ino)
    try:
        parsed, problem = _parsed(str(path), version, limit)
    except OSError as error:  # not cached: a full file table or a permission put right is not the file's fault
        raise ModelError(f"{path.name}: cannot be read ({error.strerror or type(error).__name__}).") from None
    if problem:
        raise ModelError(problem)
    return copy.deepcopy(parsed), int(info.st_mtime)


@functools.lru_cache(maxsize=128)
def _parsed(path: str, version: tuple[int, int, int, int], limit: int) -> tuple[object, str]:
    """(JSON, "") or (None, the problem) of one version of a file; a file that is not a regular one, or is over
    `limit` bytes, is never read (and the warning is logged once per version)."""
    name = os.path.basename(path)
    mode, _, size, _ = version
    try:
        if not stat.S_ISREG(mode):
            raise ModelError(f"{name}: {_FILE_KINDS.get(stat.S_IFMT(mode), 'not a file')}, not a regular file")
        if size > limit:
            raise ModelError(f"{name}: {size} bytes, over the {limit // 1024} KB such a file may have")
        return json.loads(_read_regular(path, limit).decode("utf-8")), ""
    except ModelError as error:
        log.warning("dalle-nodes: %s: skipped, not read (%s). Put a regular JSON file there instead.", error, path)
        return None, f"{error}: skipped, not read. Put a regular JSON file there instead."
    except (ValueError, RecursionError) as error:  # bad UTF-8 or JSON, too deep, a number too long for Python
        return None, f"{name}: not valid JSON ({str(error)[:200]})."


def _read_regular(path: str, limit: int) -> bytes:
    """A regular file's bytes, opened without blocking (were it swapped for a FIFO since its stat) and checked again
    once open."""
    with open(path, "rb", opener=lambda name, flags: os.open(name, _READ_FLAGS)) as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            raise ModelError(f"{os.path.basename(path)}: not a regular file")
        data = file.read(limit + 1)
    if len(data) > limit:
        raise ModelError(f"{os.path.basename(path)}: over the {limit // 1024} KB such a file may have")
    return data
