"""Output files: written whole or not at all, never over a file that was there unless asked, never interleaved."""

from __future__ import annotations

import errno
import os
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
