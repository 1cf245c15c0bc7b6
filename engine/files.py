"""Output files that are never destroyed: written beside the target under a temporary name, then moved into place
in one step, so a failed or interrupted write leaves any earlier file whole, and two writers never interleave.

Plain Python (no torch): the queue client uses it too.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

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
        if path.is_dir():
            raise OutputError(f"'{path}' is a folder: give a file name in it, e.g. '{path / 'out.png'}'.")
        if path.exists() and not overwrite:
            raise OutputError(f"'{path}' already exists: choose another name, or pass --overwrite to replace it.")
        folder = _nearest_existing(path.parent)
        if not folder.is_dir():
            raise OutputError(f"Cannot write '{path}': '{folder}' is a file, not a folder.")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OutputError(f"Cannot write '{path}': the folder '{folder}' is not writable.")


def write_file(path: Path, content: bytes, overwrite: bool) -> Path:
    """Write `content` to a temporary file beside `path`, then move it into place: over an existing file only with
    `overwrite`; else under the first free name among `path`, `stem_1.suffix`, `stem_2.suffix` … (another run may
    have taken the name meanwhile). Missing folders are created. The path written is returned."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
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
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder
