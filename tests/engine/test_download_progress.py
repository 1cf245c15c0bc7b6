"""Download progress and Cancel, against huggingface_hub's real download code and a Hub stand-in on 127.0.0.1.

The stand-in serves the Hub's resolve endpoint for one file and sends it a chunk at a time; when paced, each chunk
only after the client reported the one before, so "mid-file" is exact and nothing depends on timing.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import threading
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import huggingface_hub.constants as hf_constants
import pytest

from dalle_nodes.engine import hub
from dalle_nodes.engine.checkpoints import CheckpointError
from dalle_nodes.engine.hub import DownloadProgress, Source, fetch_file
from dalle_nodes.nodes import runtime

REPO = "someone/big-model"
FILE = "unet/diffusion_pytorch_model.safetensors"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
CHUNK = 1024
CHUNKS = 6
PAYLOAD = bytes(range(256)) * (CHUNK * CHUNKS // 256)


class Cancelled(BaseException):
    """Stands in for ComfyUI's InterruptProcessingException (a BaseException too)."""


@dataclass
class Transfer:
    """One GET of the file: how many chunks went out, and the gate the next chunk waits at when paced."""

    gate: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    sent: int = 0
    abandoned: bool = False


class LocalHub:
    def __init__(self) -> None:
        self.paced = False
        self.transfers: list[Transfer] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:
                self.headers_for_file()

            def do_GET(self) -> None:
                if self.headers_for_file():
                    hub.send(self.wfile)

            def headers_for_file(self) -> bool:
                found = self.path == f"/{REPO}/resolve/main/{FILE}"
                self.send_response(200 if found else 404)
                self.send_header("X-Repo-Commit", COMMIT)
                if found:
                    self.send_header("ETag", f'"{hashlib.sha256(PAYLOAD).hexdigest()}"')
                    self.send_header("Content-Length", str(len(PAYLOAD)))
                else:
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                self.end_headers()
                return found

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def send(self, out) -> None:
        transfer = Transfer()
        self.transfers.append(transfer)
        try:
            for i in range(CHUNKS):
                if i and self.paced and not transfer.gate.acquire(timeout=10):
                    return  # the client went away
                if transfer.abandoned:
                    return
                transfer.sent += 1  # counted before the client can see it
                out.write(PAYLOAD[i * CHUNK : (i + 1) * CHUNK])
                out.flush()
        except OSError:
            pass  # the client closed the connection

    def allow_next_chunk(self) -> None:
        if self.transfers:
            self.transfers[-1].gate.release()

    def close(self) -> None:
        for transfer in self.transfers:
            transfer.abandoned = True
            transfer.gate.release()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def local_hub(monkeypatch) -> Iterator[LocalHub]:
    hub = LocalHub()
    threading.Thread(target=hub.server.serve_forever, args=(0.01,), daemon=True).start()  # quick shutdown
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(
        hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", True)  # send no token to the stand-in
    monkeypatch.setattr(hf_constants, "DOWNLOAD_CHUNK_SIZE", CHUNK)  # one update per chunk (the Hub's is 10 MB)
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    yield hub
    hub.close()


@pytest.fixture(params=["store", "hf-cache"])
def store(request, tmp_path, monkeypatch) -> Path | None:
    """Both download layouts: the models folder (local_dir) and the Hugging Face cache."""
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path / "store" if request.param == "store" else None


class Recorder(DownloadProgress):
    """Records what a DownloadProgress hears; lets the stand-in send the next chunk; raises at `cancel_at`."""

    def __init__(self, hub: LocalHub, files: int | None = None, cancel_at: int | None = None):
        super().__init__(files)
        self.hub, self.cancel_at = hub, cancel_at
        self.events: list[tuple] = []
        self.updates: list[int] = []

    def start(self, filename: str, total: int | None) -> None:
        self.events.append(("start", filename, total, self.position()))

    def update(self, done: int) -> None:
        self.updates.append(done)
        if len(self.updates) == self.cancel_at:
            raise Cancelled
        self.hub.allow_next_chunk()

    def close(self) -> None:
        self.events.append(("close",))


def complete_looking_files(*roots: Path) -> list[str]:
    """Files holding the download's bytes under a name a later fetch could take for the file (all but partial
    `*.incomplete` downloads)."""
    return sorted(
        str(path)
        for root in roots
        if root.exists()
        for path in root.rglob("*")
        if path.is_file()
        and not path.name.endswith(".incomplete")
        and path.stat().st_size > 0
        and PAYLOAD.startswith(path.read_bytes())
    )


def fetch(hub: LocalHub, store: Path | None, progress: DownloadProgress) -> Path:
    subfolder, filename = FILE.split("/")
    return fetch_file(Source(REPO, store=store, progress=progress), subfolder, filename)


def test_progress_sees_growing_byte_counts(local_hub, store) -> None:
    local_hub.paced = True
    progress = Recorder(local_hub, files=3)
    path = fetch(local_hub, store, progress)
    assert path.read_bytes() == PAYLOAD
    assert progress.updates == [CHUNK * k for k in range(1, CHUNKS + 1)]
    assert progress.events == [("start", FILE, len(PAYLOAD), "file 1 of 3"), ("close",)]


def test_interrupt_mid_file_leaves_no_complete_looking_file(local_hub, store, tmp_path) -> None:
    """A Cancel raised by the progress hook stops the transfer (the rest is never sent), propagates as it is
    (not as a CheckpointError), and leaves nothing under the file's name; the next fetch downloads anew."""
    local_hub.paced = True
    progress = Recorder(local_hub, cancel_at=2)
    with pytest.raises(Cancelled):
        fetch(local_hub, store, progress)
    assert progress.updates == [CHUNK, 2 * CHUNK]
    assert progress.events[-1] == ("close",)
    assert local_hub.transfers[0].sent == 2
    assert complete_looking_files(tmp_path / "store", tmp_path / "hf") == []

    again = Recorder(local_hub)
    assert fetch(local_hub, store, again).read_bytes() == PAYLOAD
    assert again.updates == [CHUNK * k for k in range(1, CHUNKS + 1)]


def test_files_on_disk_show_no_progress(local_hub, store) -> None:
    fetch(local_hub, store, Recorder(local_hub))
    progress = Recorder(local_hub, files=2)
    assert fetch(local_hub, store, progress).read_bytes() == PAYLOAD
    assert (progress.index, progress.events, progress.updates) == (1, [], [])


def test_a_huggingface_hub_without_the_progress_hook_still_downloads(local_hub, store, monkeypatch) -> None:
    """huggingface_hub before 1.20 (which transformers 4.x requires) takes no tqdm_class: the file still comes, with
    huggingface_hub's own console bar instead of ours."""
    monkeypatch.setattr(hub, "_PROGRESS_HOOK", False)
    progress = Recorder(local_hub, files=1)
    assert fetch(local_hub, store, progress).read_bytes() == PAYLOAD
    assert (progress.index, progress.events, progress.updates) == (1, [], [])


def test_missing_file_is_still_a_checkpoint_error(local_hub, tmp_path) -> None:
    progress = Recorder(local_hub)
    with pytest.raises(CheckpointError, match="has no file 'unet/nothing.bin'"):
        fetch_file(Source(REPO, store=tmp_path, progress=progress), "unet", "nothing.bin")
    assert progress.events == []


def test_progress_is_not_part_of_the_source_identity() -> None:
    assert Source(REPO, progress=DownloadProgress()) == Source(REPO)
    assert hash(Source(REPO, progress=DownloadProgress())) == hash(Source(REPO))


def test_xet_thread_cancel_aborts_the_transfer_and_reaches_the_caller(local_hub, tmp_path, monkeypatch) -> None:
    """Xet downloads report through huggingface_hub's XetDownloadProgressReporter, called from a progress thread
    that only logs exceptions: there is one bar per file, and the hook's Cancel aborts the transfer and still
    reaches fetch_file's caller. No Xet server here: the reporter is fed from a thread the way hf_xet does."""
    from huggingface_hub.utils._xet_progress_reporting import XetDownloadProgressReporter

    from dalle_nodes.engine import hub

    aborted = []
    monkeypatch.setattr(hub, "_abort_xet_transfers", lambda: aborted.append(True))

    def xet_like_download(repo_id, filename, tqdm_class, **options):
        def progress_thread() -> None:
            for k in range(1, CHUNKS + 1):
                done = k * CHUNK
                report = types.SimpleNamespace(
                    total_bytes=len(PAYLOAD),
                    total_bytes_completed=done,
                    total_transfer_bytes_completed=done,
                    total_bytes_completion_rate=None,
                    total_transfer_bytes_completion_rate=None,
                )
                try:
                    reporter.update_progress(report)
                except BaseException:
                    pass  # hf_xet logs "Python exception updating progress" and reports on

        with XetDownloadProgressReporter(
            reconstruction_desc=filename, total=len(PAYLOAD), log_level=logging.INFO, tqdm_class=tqdm_class
        ) as reporter:
            worker = threading.Thread(target=progress_thread)
            worker.start()
            worker.join()
        raise RuntimeError("xet session aborted")  # how the aborted transfer ends in the caller's thread

    monkeypatch.setattr(hub, "hf_hub_download", xet_like_download)
    progress = Recorder(local_hub, cancel_at=2)
    with pytest.raises(Cancelled):
        fetch(local_hub, tmp_path, progress)
    assert aborted == [True]
    assert progress.updates == [CHUNK, 2 * CHUNK]  # nothing reported after the Cancel
    assert progress.events == [("start", FILE, len(PAYLOAD), "file 1"), ("close",)]


def test_runtime_bar_outside_comfyui_is_tqdm_in_bytes(local_hub, store, capsys) -> None:
    bar = runtime.DownloadBar(files=2)
    assert fetch(local_hub, store, bar).read_bytes() == PAYLOAD
    err = capsys.readouterr().err
    assert f"Downloading {FILE} (file 1 of 2)" in err
    assert "100%" in err and "6.00k/6.00k" in err
    assert bar.bar.n == len(PAYLOAD) and bar.bar.unit == "B"


def test_runtime_bar_stops_on_interrupt(local_hub, store, tmp_path, monkeypatch) -> None:
    """runtime.check_interrupt (ComfyUI's Cancel) raising mid-file stops the download."""
    local_hub.paced = True
    calls = []

    def interrupt_on_second_chunk() -> None:
        calls.append(1)
        if len(calls) == 2:
            raise Cancelled
        local_hub.allow_next_chunk()

    monkeypatch.setattr(runtime, "check_interrupt", interrupt_on_second_chunk)
    with pytest.raises(Cancelled):
        fetch(local_hub, store, runtime.DownloadBar())
    assert local_hub.transfers[0].sent == 2
    assert complete_looking_files(tmp_path / "store", tmp_path / "hf") == []


def test_runtime_bar_inside_comfyui_drives_the_node_bar(local_hub, tmp_path, monkeypatch) -> None:
    """ComfyUI stand-ins: the node's ProgressBar gets bytes of the file, the node's text says file k of n."""
    absolute, texts = [], []

    class ProgressBar:
        def __init__(self, total: int):
            self.total = total

        def update_absolute(self, value: int, total: int | None = None, preview: object = None) -> None:
            absolute.append((value, total))

    class PromptServer:
        instance = types.SimpleNamespace(send_progress_text=lambda text, node_id: texts.append((text, node_id)))

    context = types.SimpleNamespace(node_id="7")
    monkeypatch.setattr(runtime, "IN_COMFYUI", True)
    monkeypatch.setattr(
        runtime,
        "comfy",
        raising=False,
        value=types.SimpleNamespace(utils=types.SimpleNamespace(ProgressBar=ProgressBar)),
    )
    monkeypatch.setattr(runtime, "comfy_mm", types.SimpleNamespace(throw_exception_if_processing_interrupted=lambda: 0))
    monkeypatch.setitem(sys.modules, "server", types.SimpleNamespace(PromptServer=PromptServer))
    monkeypatch.setitem(
        sys.modules, "comfy_execution.utils", types.SimpleNamespace(get_executing_context=lambda: context)
    )
    monkeypatch.setitem(sys.modules, "comfy_execution", types.SimpleNamespace())

    fetch(local_hub, tmp_path, runtime.DownloadBar(files=4))
    assert absolute == [(CHUNK * k, len(PAYLOAD)) for k in range(1, CHUNKS + 1)]
    assert texts == [(f"Downloading {FILE} (file 1 of 4)", "7"), ("", "7")]
