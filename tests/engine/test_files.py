"""Output files: written whole or not at all, never over a file that was there unless asked, never interleaved."""

from __future__ import annotations

import errno
import os
import re
import threading
from pathlib import Path

import pytest

from dalle_nodes.engine import files


def test_a_taken_name_moves_the_new_file_to_a_free_one(tmp_path) -> None:
    (tmp_path / "fox.png").write_bytes(b"old")
    (tmp_path / "fox_1.png").write_bytes(b"old 1")
    assert files.write_file(tmp_path / "fox.png", b"new", overwrite=False) == tmp_path / "fox_2.png"
    assert [(tmp_path / n).read_bytes() for n in ("fox.png", "fox_1.png", "fox_2.png")] == [b"old", b"old 1", b"new"]
    assert files.write_file(tmp_path / "fox.png", b"newer", overwrite=True) == tmp_path / "fox.png"
    assert (tmp_path / "fox.png").read_bytes() == b"newer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fox.png", "fox_1.png", "fox_2.png"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_concurrent_writers_never_interleave(tmp_path, overwrite) -> None:
    contents = [bytes([i]) * 200_000 for i in range(8)]
    barrier = threading.Barrier(len(contents))
    written = [None] * len(contents)

    def writer(i: int) -> None:
        barrier.wait()
        written[i] = files.write_file(tmp_path / "fox.png", contents[i], overwrite)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(len(contents))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    on_disk = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    if overwrite:  # the last rename wins, whole
        assert list(on_disk) == ["fox.png"] and on_disk["fox.png"] in contents
    else:  # every writer keeps its own file
        assert len(set(written)) == len(contents) == len(on_disk)
        assert all(path.read_bytes() == content for path, content in zip(written, contents, strict=True))


def test_without_hard_links_an_exclusive_create_still_keeps_existing_files(tmp_path, monkeypatch) -> None:
    def no_links(source, target):
        raise OSError(errno.EPERM, "hard links are not supported here")

    monkeypatch.setattr(os, "link", no_links)
    (tmp_path / "fox.png").write_bytes(b"old")
    assert files.write_file(tmp_path / "fox.png", b"new", overwrite=False) == tmp_path / "fox_1.png"
    assert (tmp_path / "fox.png").read_bytes() == b"old" and (tmp_path / "fox_1.png").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fox.png", "fox_1.png"]


@pytest.mark.parametrize("failure", [KeyboardInterrupt, lambda: OSError(errno.ENOSPC, "No space left on device")])
def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, failure) -> None:
    (tmp_path / "fox.png").write_bytes(b"old")

    def fail(fd: int) -> None:
        raise failure()

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises((KeyboardInterrupt, OSError)) as caught:
        files.write_file(tmp_path / "fox.png", b"new", overwrite=True)
    if isinstance(caught.value, OSError):
        assert caught.value.filename == str(tmp_path / "fox.png")  # the message names the file, not a descriptor
    assert [p.name for p in tmp_path.iterdir()] == ["fox.png"] and (tmp_path / "fox.png").read_bytes() == b"old"


def test_numbered_names() -> None:
    assert files.numbered(Path("a/fox.png"), 1) == [Path("a/fox.png")]
    assert files.numbered(Path("a/fox.png"), 2) == [Path("a/fox_1.png"), Path("a/fox_2.png")]


def test_files_get_the_usual_mode_not_a_private_one(tmp_path) -> None:
    old = os.umask(0o022)
    try:
        path = files.write_file(tmp_path / "fox.png", b"new", overwrite=False)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_a_name_near_the_file_systems_limit_is_written(tmp_path) -> None:
    """The temporary file beside it takes only the start of the name: the whole name would pass the limit."""
    name = "f" * (os.pathconf(tmp_path, "PC_NAME_MAX") - 14) + ".png"  # 245 bytes: room left for _1
    files.check_image_outputs([tmp_path / name], overwrite=False)
    assert files.write_file(tmp_path / name, b"new", overwrite=False) == tmp_path / name
    assert files.write_file(tmp_path / name, b"newer", overwrite=False) == tmp_path / (name[:-4] + "_1.png")


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (
            "f" * 300 + ".png",
            "the name 'ffffffffffffffffffffffffffffffffffffffff…' is 304 bytes long, and this file system",
        ),
        ("é" * 126 + ".png", "is 256 bytes long"),  # bytes count, not characters
        ("f" * 300 + "/fox.png", "the name 'ffff"),  # a folder still to be made
        ("f" * 251 + ".png", "takes names up to 250 bytes here"),  # room for the _1 … beside a taken name
        ("loop/fox.png", "it is a symbolic link that leads nowhere (or in a loop)"),
        ("dangling/fox.png", "it is a symbolic link that leads nowhere (or in a loop)"),
    ],
)
def test_outputs_that_cannot_be_written_are_found_before_any_work(tmp_path, output, message) -> None:
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    with pytest.raises(files.OutputError, match=re.escape(message)):
        files.check_image_outputs([tmp_path / output], overwrite=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "loop"]  # no probe left behind


@pytest.mark.parametrize("output", ["/proc/fox.png", "/proc/new/fox.png"])
def test_folders_that_hold_no_files(output) -> None:
    """/proc takes no new file, even from root (whom permissions let through): a non-root user is told it is not
    writable, root that it holds no files."""
    with pytest.raises(files.OutputError, match="the folder '/proc' (is not writable|cannot hold new files)"):
        files.check_image_outputs([Path(output)], overwrite=False)


def test_the_folder_probe_leaves_nothing(tmp_path) -> None:
    files.check_image_outputs([tmp_path / "new" / "fox.png"], overwrite=False)
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_during_the_folder_probe_leaves_nothing(tmp_path, monkeypatch) -> None:
    close = os.close

    def interrupted(handle: int) -> None:
        close(handle)
        raise KeyboardInterrupt  # between creating the probe and removing it

    monkeypatch.setattr(files.os, "close", interrupted)
    with pytest.raises(KeyboardInterrupt):
        files.check_image_outputs([tmp_path / "out.png"], overwrite=False)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_open_regular_reads_files_only_and_never_waits(tmp_path) -> None:
    (tmp_path / "fox.png").write_bytes(b"picture")
    with files.open_regular(tmp_path / "fox.png") as file:
        assert file.read() == b"picture"
    os.mkfifo(tmp_path / "pipe")  # no writer: a plain open() would wait for one forever
    with pytest.raises(files.NotRegularFile) as caught:
        files.open_regular(tmp_path / "pipe")
    assert caught.value.kind == "a FIFO (named pipe)"
    with pytest.raises(files.NotRegularFile) as caught:
        files.open_regular(Path("/dev/zero"))
    assert caught.value.kind == "a device"
    with pytest.raises(IsADirectoryError):
        files.open_regular(tmp_path)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        files.open_regular(tmp_path / "loop")
