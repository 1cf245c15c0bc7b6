"""Output files that are never destroyed: written beside the target under a temporary name, then moved into place
in one step, so a failed or interrupted write leaves any earlier file whole, and two writers never interleave.

Plain Python (no torch): the queue client uses it too.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO

# The suffixes PIL writes and the format each means.
IMAGE_FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}


class OutputError(ValueError):
    """An output path that cannot be written: found before any work, so nothing is thrown away."""


def numbered(path: Path, count: int) -> list[Path]:
    """`path` for one file; for a batch, `stem_1.suffix`, `stem_2.suffix` …"""
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}_{i + 1}{path.suffix}") for i in range(count)]


def check_image_outputs(paths: list[Path], overwrite: bool) -> None:
    """Each path names an image format, lies in a folder we can create or write, and (unless `overwrite`) is free."""
    for path in paths:
        if path.suffix.lower() not in IMAGE_FORMATS:
            raise OutputError(
                f"'{path}' has no image suffix: end it in {', '.join(sorted(set(IMAGE_FORMATS)))} (e.g. .png)."
            )
        _check_name_lengths(path)  # first: a name too long makes even exists() fail
        if path.is_dir():
            raise OutputError(f"'{path}' is a folder: give a file name in it, e.g. '{path / 'out.png'}'.")
        if path.exists() and not overwrite:
            raise OutputError(f"'{path}' already exists: choose another name, or pass --overwrite to replace it.")
        folder = _nearest_existing(path.parent)
        if not folder.is_dir():
            raise OutputError(f"Cannot write '{path}': '{folder}' is a file, not a folder.")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OutputError(f"Cannot write '{path}': the folder '{folder}' is not writable.")
        _check_holds_files(path, folder)


# Room left in a file name for the "_1" … "_9999" that write_file adds beside a taken name.
FREE_NAME_ROOM = len("_9999")


def _check_name_lengths(path: Path) -> None:
    """Each name still to be made (missing folders, then the file) fits the file system's limit."""
    folder = next((p for p in (path.parent, *path.parent.parents) if os.path.isdir(p)), Path("."))
    name_max = _path_limit(folder, "PC_NAME_MAX", 255)
    for part in path.relative_to(folder).parts:
        limit = name_max - (FREE_NAME_ROOM if part == path.name else 0)
        if len(os.fsencode(part)) > limit:
            raise OutputError(
                f"Cannot write '{path}': the name '{part[:40]}…' is {len(os.fsencode(part))} bytes long, and this "
                f"file system takes names up to {limit} bytes here: choose a shorter one."
            )
    path_max = _path_limit(folder, "PC_PATH_MAX", 4096)
    if len(os.fsencode(path.absolute())) >= path_max:
        raise OutputError(f"Cannot write '{path}': the path is longer than this file system takes ({path_max} bytes).")


def _path_limit(folder: Path, name: str, default: int) -> int:
    try:
        return os.pathconf(folder, name)
    except (AttributeError, OSError, ValueError):  # no pathconf (Windows), or the file system does not say
        return default


def _check_holds_files(path: Path, folder: Path) -> None:
    """Create and remove an empty file in `folder`: permissions alone do not tell (root passes every check, and
    /proc, /sys or a read-only mount refuse new files all the same)."""
    try:
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".", suffix=".probe")
    except OSError as error:
        raise OutputError(
            f"Cannot write '{path}': the folder '{folder}' cannot hold new files ({error.strerror or error})."
        ) from None
    try:
        os.close(handle)
    finally:  # even after Ctrl-C: no probe is left behind
        os.unlink(probe)


def check_output_folder(folder: Path) -> None:
    """`folder` is a folder that can hold new files, or one that can be made (it is not made here, so a run that
    fails leaves nothing behind): checked before any work, as check_image_outputs does for a file."""
    _check_name_lengths(folder / "x")  # its missing parts; the short "x" stands for the files to come
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"'{folder}' is a file, not a folder: give a folder for the images.")
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise OutputError(f"Cannot make the folder '{folder}': '{existing}' is a file, not a folder.")
    _check_holds_files(folder, existing)


def print_path(line: str) -> None:
    """A line naming a written file on stdout as the file system's bytes: a name undecodable there (held as
    surrogate escapes) or outside stdout's encoding prints all the same, and a script reading it gets the name."""
    data = os.fsencode(line) + b"\n"
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:  # a text stream only (an embedding program's)
        sys.stdout.write(data.decode(errors="backslashreplace"))
        return
    sys.stdout.flush()  # what was printed before comes first
    buffer.write(data)
    buffer.flush()


def write_file(path: Path, content: bytes, overwrite: bool) -> Path:
    """Write `content` to a temporary file beside `path`, then move it into place: over an existing file only with
    `overwrite`; else under the first free name among `path`, `stem_1.suffix`, `stem_2.suffix` … (another run may
    have taken the name meanwhile). Missing folders are created. The path written is returned."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # The start of the name only: a name near the file system's limit leaves no room for the temporary's additions.
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:40]}.", suffix=".partial")
    try:
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it private; an output file gets the usual mode
        # Whole bytes through Python's file object: a short write (full disk, file-size limit) raises there, where
        # an encoder writing to the descriptor itself (PIL's) may stop short without a word.
        with os.fdopen(handle, "wb") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        if overwrite:
            os.replace(temporary, path)
            return path
        return _move_to_free_name(Path(temporary), path)
    except OSError as error:
        error.filename = error.filename or str(path)  # a full disk fails on the file handle: name the target
        raise
    finally:
        Path(temporary).unlink(missing_ok=True)


def _move_to_free_name(temporary: Path, path: Path) -> Path:
    """Give `temporary` the first free name: a hard link claims a name atomically and fails if it is taken, so no
    existing file is ever replaced; where links are not supported, an exclusive create reserves the name first."""
    for n in range(10_000):
        target = path if n == 0 else path.with_name(f"{path.stem}_{n}{path.suffix}")
        try:
            os.link(temporary, target)
            return target
        except FileExistsError:
            continue
        except OSError as error:
            if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
        try:
            os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue
        try:
            os.replace(temporary, target)  # over our own empty reservation
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        return target
    raise OutputError(f"No free name left beside '{path}'.")


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def _nearest_existing(folder: Path) -> Path:
    """The deepest folder of `folder`'s path that exists; a symbolic link on the way that leads nowhere (or in a
    loop) is an OutputError, as making a folder there would fail."""
    while not folder.exists() and folder != folder.parent:
        if os.path.lexists(folder):
            raise OutputError(f"Cannot write into '{folder}': it is a symbolic link that leads nowhere (or in a loop).")
        folder = folder.parent
    return folder


class NotRegularFile(OSError):
    """A path that names a FIFO, a socket or a device: reading it could block, or never end."""

    def __init__(self, path: Path, kind: str):
        super().__init__(errno.EINVAL, f"is {kind}, not a regular file", str(path))
        self.kind = kind


def open_regular(path: Path) -> BinaryIO:
    """`path` opened for binary reading, only if it is a regular file, and without ever waiting: a FIFO without a
    writer would block open() forever, and /dev/zero never ends. A folder → IsADirectoryError; a FIFO, socket or
    device → NotRegularFile; anything else as open() raises it (FileNotFoundError, PermissionError, a link loop …)."""
    _check_regular(path, os.stat(path).st_mode)  # first: a device is never even opened
    handle = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        _check_regular(path, os.fstat(handle).st_mode)  # what was opened, in case the path changed meanwhile
        return os.fdopen(handle, "rb")
    except BaseException:
        os.close(handle)
        raise


def _check_regular(path: Path, mode: int) -> None:
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    if not stat.S_ISREG(mode):
        kinds = [(stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device")]
        raise NotRegularFile(path, next((kind for test, kind in kinds if test(mode)), "a device"))
