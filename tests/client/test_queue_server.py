"""`python -m dalle_nodes queue` against a stand-in ComfyUI that goes wrong in one way at a time. Every answer ComfyUI
would not give ends as one line on stderr and exit code 3 (2 where the server refused the request, 1 where the run
failed), within --timeout: never a traceback, never a hang.

The stand-in serves the HTTP routes and the websocket the client uses, answering as ComfyUI does until a test
replaces one answer: plain http.server, with websockets' own protocol code for /ws (the client's library, on the
server side)."""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from websockets.server import ServerProtocol

from dalle_nodes.cli import main
from dalle_nodes.client import comfy_client, queue_workflow
from shipped_workflows import api_file, load, ui_file

PROMPT_ID = "p1"
IMAGE = b"\x89PNG\r\n\x1a\n the picture"
STALL = object()  # an answer that never comes (until the test ends)
RESET = object()  # the connection reset at once (TCP RST), before any answer


class Trickle:
    """An answer sent a byte every `every` seconds after its headers, as a server too slow to serve would."""

    def __init__(self, status: int, body: bytes, every: float = 0.1):
        self.status, self.body, self.every = status, body, every


def event(kind: str, **data: object) -> str:
    return json.dumps({"type": kind, "data": {"prompt_id": PROMPT_ID, **data}})


def json_answer(value: object, status: int = 200) -> tuple[int, bytes]:
    return status, json.dumps(value).encode()


def history(outputs: object) -> tuple[int, bytes]:
    return json_answer({PROMPT_ID: {"outputs": outputs, "status": {"status_str": "success", "completed": True}}})


class StandIn:
    """The server's state: `answers` maps "METHOD /path" to (status, body), (status, body, headers), STALL, RESET, a
    Trickle or raw bytes (not HTTP); `events` are the websocket's messages once the prompt is queued (text or
    binary); `close_socket` ends the websocket after them, else it stays open. `prefix` is the path it serves under
    (as behind a proxy), %-escaped as it arrives."""

    def __init__(self) -> None:
        self.answers: dict[str, object] = {
            "POST /prompt": json_answer({"prompt_id": PROMPT_ID, "number": 0, "node_errors": {}}),
            f"GET /history/{PROMPT_ID}": history({"8": {"images": [{"filename": "fox.png", "subfolder": ""}]}}),
            "GET /view": (200, IMAGE),
            "GET /queue": json_answer({"queue_running": [], "queue_pending": []}),
            "GET /object_info": json_answer({}),
            "POST /queue": json_answer({}),
            "POST /interrupt": json_answer({}),
        }
        self.events: Iterable[str | bytes] = [
            event("execution_start"),
            event("executing", node="6"),
            event("progress", node="6", value=1, max=2),
            event("executing", node=None),
        ]
        self.close_socket = False
        self.prefix = ""
        self.reset_at_once = False  # each connection, before its request is read
        self.queued = threading.Event()
        self.stopped = threading.Event()
        self.asked: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler(self))
        self.server.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


def handler(stand_in: StandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass  # quiet: pytest shows the client's side

        def handle(self) -> None:
            if stand_in.reset_at_once:
                reset(self.connection)
            else:
                super().handle()

        def do_GET(self) -> None:
            self.answer()

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.answer()

        def answer(self) -> None:
            path = urlsplit(self.path).path
            route = f"{self.command} {path.removeprefix(stand_in.prefix) if stand_in.prefix else path}"
            stand_in.asked.append(route)
            answer = stand_in.answers.get(route, (404, b"404: Not Found"))
            if route == "GET /ws" and route not in stand_in.answers:
                self.websocket()
            elif answer is STALL:
                stand_in.stopped.wait()
            elif answer is RESET:
                reset(self.connection)
            elif isinstance(answer, bytes):
                self.wfile.write(answer)  # not HTTP at all
            elif isinstance(answer, Trickle):
                self.trickle(answer)
            else:
                self.headers_of(*answer[:2], {"Content-Type": "application/json", **(answer[2:] or [{}])[0]})
                self.wfile.write(answer[1])
                if route == "POST /prompt" and answer[0] == 200:
                    stand_in.queued.set()

        def headers_of(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(name, value)
            self.end_headers()

        def trickle(self, answer: Trickle) -> None:
            self.headers_of(answer.status, answer.body, {"Content-Type": "application/json"})
            for byte in answer.body:
                if stand_in.stopped.wait(answer.every):
                    return
                try:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                except OSError:  # the client gave up
                    return

        def websocket(self) -> None:
            protocol = ServerProtocol(max_size=None)
            headers = "".join(f"{name}: {value}\r\n" for name, value in self.headers.items())
            protocol.receive_data(f"GET {self.path} HTTP/1.1\r\n{headers}\r\n".encode())  # the request http.server read
            (request,) = protocol.events_received()
            protocol.send_response(protocol.accept(request))
            self.send(protocol)
            while not stand_in.queued.wait(0.05):  # the events follow the prompt …
                if select.select([self.connection], [], [], 0)[0] or stand_in.stopped.is_set():
                    break  # … unless the client closes first (its prompt refused, say)
            try:
                if stand_in.queued.is_set():
                    self.send_events(protocol)
            except OSError:  # the client has gone (a flood of events outlasts it)
                return
            while not protocol.close_expected() and (data := self.rfile.read1(4096)):  # until the client closes
                protocol.receive_data(data)
                self.send(protocol)  # the answer to its close frame

        def send_events(self, protocol: ServerProtocol) -> None:
            for message in stand_in.events:
                if stand_in.stopped.is_set():
                    return
                if isinstance(message, str):
                    protocol.send_text(message.encode())
                else:
                    protocol.send_binary(message)
                self.send(protocol)
            if stand_in.close_socket:
                protocol.send_close(1000)
                self.send(protocol)

        def send(self, protocol: ServerProtocol) -> None:
            self.wfile.write(b"".join(protocol.data_to_send()))
            self.wfile.flush()

    return Handler


def reset(connection: socket.socket) -> None:
    """Close with a TCP reset, as a crashing server or a firewall does."""
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.close()


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    """The stand-in ComfyUI, serving on a free port for one test."""
    server = StandIn()
    thread = threading.Thread(target=server.server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.stopped.set()
    server.server.shutdown()
    server.server.server_close()


PROMPT, HISTORY = "POST /prompt", f"GET /history/{PROMPT_ID}"


def answer(route: str, value: object) -> Callable[[StandIn], None]:
    return lambda server: server.answers.__setitem__(route, value)


def events(*messages: str) -> Callable[[StandIn], None]:
    return lambda server: setattr(server, "events", list(messages))


def images(*entries: object) -> Callable[[StandIn], None]:
    return answer(HISTORY, history({"8": {"images": list(entries)}}))


def closed_early(server: StandIn) -> None:
    server.events, server.close_socket = [event("executing", node="6")], True


def run(*args: str) -> int:
    """main's exit code, whether it returns it or argparse exits with it."""
    try:
        return main(list(args))
    except SystemExit as exit:
        return exit.code


def queue(server: StandIn, folder: Path, *args: str, workflow: dict | None = None) -> int:
    path = folder / "workflow.json"
    path.write_text(json.dumps(workflow or load(api_file("kandinsky22_text2image"))))
    return run("queue", str(path), "--server", server.url, "--out", str(folder / "out"), *args)


def one_line_error(capsys, out: list[str] | None = None) -> str:
    """stderr after the progress bar (which redraws itself with carriage returns): one line starting with error:;
    stdout: the paths `out` (none by default)."""
    captured = capsys.readouterr()
    assert captured.out.split() == (out or []), captured.out
    err = captured.err
    assert "Traceback" not in err and "\x1b" not in err, err
    assert err.count("\n") == 1 and err.rsplit("\r", 1)[-1].startswith("error: "), err
    return err.rsplit("\r", 1)[-1].strip()


BROKEN = {  # id: (what goes wrong, exit code, the message)
    "400 whose body is a list": (answer(PROMPT, json_answer([1, 2], 400)), 2, "refused the workflow: HTTP 400: [1, 2]"),
    "400 whose body is a string": (answer(PROMPT, json_answer("no such node", 400)), 2, "HTTP 400: no such node"),
    "400 whose error is a string": (
        answer(PROMPT, json_answer({"error": "bad graph", "node_errors": []}, 400)),
        2,
        "HTTP 400: {'error': 'bad graph', 'node_errors': []}",
    ),
    "400 in plain text": (answer(PROMPT, (400, b"Bad Request\n")), 2, "refused the workflow: HTTP 400: Bad Request"),
    "200 that is a list": (answer(PROMPT, json_answer([PROMPT_ID])), 3, "POST /prompt answered ['p1'], with no prompt"),
    "prompt id not text": (answer(PROMPT, json_answer({"prompt_id": 5})), 3, "answered {'prompt_id': 5}, with no"),
    "500 in plain text": (answer(PROMPT, (500, b"Internal Server Error")), 3, "answered HTTP 500: Internal Server"),
    "an answer not in HTTP": (answer(PROMPT, b"hello\r\n"), 3, "answered not in HTTP ("),
    "no answer, connection closed": (answer(PROMPT, b""), 3, "broke off, or answered not in HTTP"),
    "websocket refused": (
        answer("GET /ws", (404, b"404: Not Found")),
        3,
        "did not open (did not receive a valid HTTP response)",
    ),
    "websocket text not JSON": (events("hello"), 3, "ComfyUI's websocket sent 'hello', which is not JSON."),
    "websocket event a list": (events("[1, 2]"), 3, "ComfyUI's websocket sent [1, 2], not {type, data: {…}}."),
    "event data a list": (events('{"type": "executing", "data": ["6"]}'), 3, "not {type, data: {…}}"),
    "node id a list": (events(event("executing", node=["6"])), 3, "sent a node id that is not text: ['6']"),
    "progress value text": (
        events(event("progress", node="6", value="half", max=2)),
        3,
        "value 'half', not a count",
    ),
    "progress max NaN": (
        events('{"type": "progress", "data": {"prompt_id": "p1", "node": "6", "value": 1, "max": NaN}}'),
        3,
        "sent progress max nan, not a count",
    ),
    "websocket closed mid-run": (closed_early, 3, "ComfyUI closed the websocket before the prompt ended"),
    "history not JSON": (answer(HISTORY, (200, b"<html>")), 3, "GET /history/p1 answered '<html>', not JSON"),
    "history nested too deep": (answer(HISTORY, (200, b"[" * 100_000)), 3, "not JSON"),
    "history a list": (answer(HISTORY, json_answer([])), 3, "GET /history/p1 answered [], not a JSON object"),
    "history entry a list": (answer(HISTORY, json_answer({PROMPT_ID: []})), 3, "not a history entry with outputs"),
    "outputs a list": (answer(HISTORY, history([])), 3, "not a history entry with outputs"),
    "images an object": (answer(HISTORY, history({"8": {"images": {}}})), 3, 'not {"images": […]}'),
    "image without a filename": (
        images({"subfolder": ""}),
        3,
        "lists {'subfolder': ''}: not {filename, subfolder",
    ),
    "image name a number": (images({"filename": 5}), 3, "with a file name that can be saved"),
    "image name ..": (images({"filename": ".."}), 3, "with a file name that can be saved"),
    "image name with a newline": (images({"filename": "fox\n.png"}), 3, "with a file name that can be saved"),
    "image name half a surrogate": (
        answer(HISTORY, (200, b'{"p1": {"outputs": {"8": {"images": [{"filename": "\\ud800.png"}]}}}}')),
        3,
        "with a file name that can be saved",
    ),
    "subfolder a list": (images({"filename": "fox.png", "subfolder": ["a"]}), 3, "with a file name that can be saved"),
    # A name chosen by the server must not plant what Python, pytest or a shell would run from --out.
    "image named conftest.py": (images({"filename": "conftest.py"}), 3, "(an image: .png, .jpg"),
    "image named sitecustomize.py": (images({"filename": "sitecustomize.py"}), 3, "with a file name that can be"),
    "image named .bashrc": (images({"filename": ".bashrc"}), 3, "not hidden"),
    "image hidden": (images({"filename": ".fox.png"}), 3, "not hidden"),
    "image hidden in a subfolder": (images({"filename": "a/.fox.png"}), 3, "not hidden"),
    "image without a suffix": (images({"filename": "fox"}), 3, "with a file name that can be saved"),
    "image name 251 bytes": (images({"filename": "f" * 247 + ".png"}), 3, "at most 250 bytes"),
    "redirected": (
        answer(HISTORY, (302, b"", {"Location": "http://elsewhere.example/history/p1"})),
        3,
        "GET /history/p1 answered HTTP 302, a redirect to http://elsewhere.example/history/p1: ComfyUI sends none",
    ),
    "websocket reset": (answer("GET /ws", RESET), 3, "did not open (did not receive a valid HTTP response)"),
    "connection reset at once": (
        lambda server: setattr(server, "reset_at_once", True),
        3,
        "ComfyUI's websocket at ws://127.0.0.1:",  # ConnectionResetError, or no close frame: whichever comes first
    ),
    "image not served": (answer("GET /view", (404, b"")), 3, "GET /view?filename=fox.png&subfolder=&type=output"),
}


@pytest.mark.parametrize(("breakage", "code", "message"), BROKEN.values(), ids=BROKEN.keys())
def test_unexpected_answers_end_in_one_line(stand_in, tmp_path, capsys, breakage, code, message) -> None:
    breakage(stand_in)
    assert queue(stand_in, tmp_path) == code
    assert message in one_line_error(capsys)
    assert not (tmp_path / "out").exists()  # nothing written


def test_the_stand_in_serves_like_comfyui(stand_in, tmp_path, capsys) -> None:
    """The breakages above are the only difference from a run that works."""
    assert queue(stand_in, tmp_path) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "out" / "fox.png")]
    assert (tmp_path / "out" / "fox.png").read_bytes() == IMAGE
    assert stand_in.asked == ["GET /ws", PROMPT, HISTORY, "GET /view"]


@pytest.mark.parametrize(
    ("failure", "message"),
    [
        ({"exception_type": ["x"], "exception_message": 5}, "error: node 5 (X) failed: error: 5"),
        ({"exception_type": "ValueError", "exception_message": "\x1b[31mred\nlines\x1b[0m"}, "ValueError: [31mred"),
    ],
)
def test_node_failures_of_any_shape_are_one_line(stand_in, tmp_path, capsys, failure, message) -> None:
    events(event("execution_error", node_id="5", node_type="X", **failure))(stand_in)
    assert queue(stand_in, tmp_path) == 1
    assert message in one_line_error(capsys)


def ui_with_a_foreign_node() -> dict:
    """A UI-format file with a node of another pack: converting it asks the server's /object_info."""
    ui = load(ui_file("kandinsky22_text2image"))
    ui["nodes"].append({"id": 40, "type": "SomeoneElsesNode", "mode": 0, "inputs": [], "widgets_values": []})
    return ui


@pytest.mark.parametrize(
    ("info", "message"),
    [
        ([], "GET /object_info answered [], not a JSON object"),
        ({"SomeoneElsesNode": []}, "describes SomeoneElsesNode in a shape ComfyUI never has"),
        ({"SomeoneElsesNode": {"input": {"required": {"x": "INT"}}}}, "in a shape ComfyUI never has"),
        ({"SomeoneElsesNode": {"input": {}, "input_order": {"required": [["x"]]}}}, "in a shape ComfyUI never has"),
    ],
)
def test_node_descriptions_of_the_wrong_shape(stand_in, tmp_path, capsys, info, message) -> None:
    stand_in.answers["GET /object_info"] = json_answer(info)
    assert queue(stand_in, tmp_path, workflow=ui_with_a_foreign_node()) == 3
    assert message in one_line_error(capsys)


def test_a_queue_of_the_wrong_shape(stand_in, tmp_path, capsys, monkeypatch) -> None:
    """A quiet websocket makes the client ask whether the prompt is still queued."""
    monkeypatch.setattr(comfy_client, "QUIET_CHECK_S", 0.2)
    stand_in.events = []
    stand_in.answers[HISTORY] = json_answer({})
    stand_in.answers["GET /queue"] = json_answer({"queue_running": [5], "queue_pending": []})
    assert queue(stand_in, tmp_path) == 3
    assert "GET /queue answered {'queue_pending': [], 'queue_running': [5]}: not ComfyUI's queue" in one_line_error(
        capsys
    )


def test_an_answer_over_the_limit(stand_in, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(comfy_client, "MAX_ANSWER_BYTES", 1000)
    stand_in.answers[HISTORY] = history({"8": {"images": [{"filename": "fox.png"}] * 100}})
    assert queue(stand_in, tmp_path) == 3
    assert "GET /history/p1: http://127.0.0.1:" in (err := one_line_error(capsys)) and "answered over 1000 bytes" in err


@pytest.mark.parametrize(
    ("route", "message"),
    [(PROMPT, "POST /prompt had no answer within 1 s from http"), ("GET /ws", "did not open (timed out)")],
)
def test_a_server_that_never_answers_ends_at_the_request_limit(
    stand_in, tmp_path, capsys, monkeypatch, route, message
) -> None:
    monkeypatch.setattr(queue_workflow, "REQUEST_TIMEOUT_S", 1.0)
    stand_in.answers[route] = STALL
    start = time.monotonic()
    assert queue(stand_in, tmp_path, "--timeout", "60") == 3
    assert time.monotonic() - start < 1 + 5  # the margin: a busy machine
    assert message in one_line_error(capsys)


@pytest.mark.parametrize("route", [PROMPT, "GET /ws"])
def test_a_server_that_never_answers_ends_within_the_timeout(stand_in, tmp_path, capsys, route) -> None:
    """--timeout bounds the whole run: where it ends first, that is exit 1, as for a run that takes too long."""
    stand_in.answers[route] = STALL
    start = time.monotonic()
    assert queue(stand_in, tmp_path, "--timeout", "2") == 1
    assert time.monotonic() - start < 2 + 5
    assert "error: the run did not finish within 2 s (" in one_line_error(capsys)


SLOW_ROUTES = {  # id: (route, what the stand-in answers there, slowly)
    "POST /prompt": (PROMPT, json.dumps({"prompt_id": PROMPT_ID}).encode().ljust(100)),
    "GET /history": (HISTORY, history({"8": {"images": [{"filename": "fox.png"}]}})[1].ljust(100)),
    "GET /view": ("GET /view", IMAGE.ljust(100)),
}


@pytest.mark.parametrize(("route", "body"), SLOW_ROUTES.values(), ids=SLOW_ROUTES.keys())
def test_a_server_that_trickles_is_cut_off_at_the_request_limit(
    stand_in, tmp_path, capsys, monkeypatch, route, body
) -> None:
    """A byte every 0.1 s never lets a read time out: the limit holds for the whole request all the same."""
    monkeypatch.setattr(queue_workflow, "REQUEST_TIMEOUT_S", 1.0)
    stand_in.answers[route] = Trickle(200, body)  # 10 s in all
    start = time.monotonic()
    assert queue(stand_in, tmp_path, "--timeout", "60") == 3
    assert time.monotonic() - start < 1 + 5
    assert f"{route.partition(' /')[0]} /{route.partition(' /')[2]} had no answer within 1 s" in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_a_trickle_while_checking_on_a_quiet_prompt(stand_in, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(comfy_client, "QUIET_CHECK_S", 0.2)
    monkeypatch.setattr(queue_workflow, "REQUEST_TIMEOUT_S", 1.0)
    stand_in.events = []
    stand_in.answers[HISTORY] = Trickle(200, b"{}".ljust(100))
    start = time.monotonic()
    assert queue(stand_in, tmp_path, "--timeout", "60") == 3
    assert time.monotonic() - start < 1 + 5
    assert "GET /history/p1 had no answer within 1 s" in one_line_error(capsys)


def test_a_trickle_ends_with_the_runs_timeout(stand_in, tmp_path, capsys) -> None:
    """The request limit (30 s) is longer than what is left of --timeout: the run's end comes first (exit 1)."""
    stand_in.answers[HISTORY] = Trickle(200, SLOW_ROUTES["GET /history"][1])
    start = time.monotonic()
    assert queue(stand_in, tmp_path, "--timeout", "3") == 1
    assert time.monotonic() - start < 3 + 5
    assert "did not finish within 3 s (GET /history/p1 had no answer)" in one_line_error(capsys)


def test_a_prompt_deleted_meanwhile_is_a_failed_run(stand_in, tmp_path, capsys, monkeypatch) -> None:
    """ComfyUI lost the job (someone deleted it, or cleared the history): the run failed, exit 1."""
    stand_in.answers[HISTORY] = json_answer({})
    assert queue(stand_in, tmp_path) == 1
    assert "ComfyUI has no history for prompt p1: was it deleted meanwhile?" in one_line_error(capsys)
    monkeypatch.setattr(comfy_client, "QUIET_CHECK_S", 0.2)
    stand_in.events = []
    assert queue(stand_in, tmp_path) == 1
    assert "prompt p1 is no longer queued or running, and has no history: deleted?" in one_line_error(capsys)


def test_a_400_lists_at_most_20_node_errors(stand_in, tmp_path, capsys) -> None:
    errors = {str(n): {"class_type": "X", "errors": [{"message": "bad", "details": str(n)}]} for n in range(30)}
    stand_in.answers[PROMPT] = json_answer({"error": {"message": "invalid"}, "node_errors": errors}, 400)
    assert queue(stand_in, tmp_path) == 2
    lines = capsys.readouterr().err.rsplit("\r", 1)[-1].strip().splitlines()
    assert lines[0] == "error: ComfyUI refused the workflow: invalid" and len(lines) == 22, lines
    assert lines[-2] == "node 19 (X): bad 19" and lines[-1] == "… 10 more"


def test_a_server_path_that_is_not_ascii(stand_in, tmp_path, capsys) -> None:
    """A path is %-escaped (as a browser does): http.client sends ASCII only."""
    stand_in.prefix = "/%C3%A9"
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(load(api_file("kandinsky22_text2image"))))
    out = tmp_path / "out"
    assert run("queue", str(path), "--server", stand_in.url + "/é", "--out", str(out)) == 0
    assert capsys.readouterr().out.split() == [str(out / "fox.png")]
    assert stand_in.asked == ["GET /ws", PROMPT, HISTORY, "GET /view"]  # all under the prefix


def test_the_images_of_a_run_are_capped_in_all(stand_in, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(comfy_client, "MAX_RUN_IMAGE_BYTES", len(IMAGE) + 5)
    images({"filename": "fox.png"}, {"filename": "cub.png"})(stand_in)
    assert queue(stand_in, tmp_path) == 3
    assert "The images of this run come to over" in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_out_of_memory_is_one_line(stand_in, tmp_path, capsys, monkeypatch) -> None:
    def no_memory(self, file, limit=None):
        raise MemoryError

    monkeypatch.setattr(comfy_client.ComfyClient, "view", no_memory)
    assert queue(stand_in, tmp_path) == 1
    assert "out of memory here" in one_line_error(capsys)


def test_no_free_name_left_is_one_line(stand_in, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for n in range(10_000):
        (out / ("fox.png" if n == 0 else f"fox_{n}.png")).touch()
    assert queue(stand_in, tmp_path) == 2
    assert "No free name left beside" in one_line_error(capsys)


def test_the_paths_written_before_a_write_failed_are_printed(stand_in, tmp_path, capsys, monkeypatch) -> None:
    images({"filename": "fox.png"}, {"filename": "cub.png"})(stand_in)
    write_file = queue_workflow.write_file

    def disk_full_at_the_second(path, content, overwrite):
        if path.name == "cub.png":
            raise OSError(28, "No space left on device")
        return write_file(path, content, overwrite)

    monkeypatch.setattr(queue_workflow, "write_file", disk_full_at_the_second)
    assert queue(stand_in, tmp_path) == 2
    assert "No space left on device" in one_line_error(capsys, out=[str(tmp_path / "out" / "fox.png")])


@pytest.mark.parametrize(
    ("out", "message"),
    [
        (lambda folder: folder / "workflow.json", "is a file, not a folder"),
        (lambda folder: folder / "workflow.json" / "out", "is a file, not a folder"),
        (lambda folder: Path("/proc/dalle-nodes-out"), "the folder '/proc' cannot hold new files"),
        (lambda folder: folder / ("o" * 300), "bytes long, and this file system takes names up to"),
    ],
    ids=["a file", "in a file", "/proc", "a name too long"],
)
def test_out_is_checked_before_the_prompt_is_queued(stand_in, tmp_path, capsys, out, message) -> None:
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(load(api_file("kandinsky22_text2image"))))
    assert run("queue", str(path), "--server", stand_in.url, "--out", str(out(tmp_path))) == 2
    assert message in one_line_error(capsys)
    assert PROMPT not in stand_in.asked


def test_a_name_not_in_stdouts_encoding_still_prints(stand_in, tmp_path) -> None:
    """--out with bytes undecodable as UTF-8 (surrogate escapes in Python) and an ASCII stdout: the path is printed
    as the file system's bytes."""
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(load(api_file("kandinsky22_text2image"))))
    out = os.fsencode(tmp_path) + b"/caf\xe9-\xff"
    command = [sys.executable, "-m", "dalle_nodes", "queue", str(path), "--server", stand_in.url, "--out", out]
    env = {**os.environ, "PYTHONIOENCODING": "ascii:strict"}
    result = subprocess.run(command, capture_output=True, timeout=300, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == out + b"/fox.png\n" and Path(os.fsdecode(out + b"/fox.png")).read_bytes() == IMAGE


@pytest.mark.parametrize("timeout", ["nan", "0", "-1", "inf", "soon"])
def test_timeouts_that_end_before_they_begin_are_refused(stand_in, tmp_path, capsys, timeout) -> None:
    assert queue(stand_in, tmp_path, f"--timeout={timeout}") == 2
    assert f"argument --timeout: '{timeout}' is not a number of seconds above 0" in one_line_error(capsys)
    assert stand_in.asked == []  # nothing was queued


def test_texts_that_are_not_utf8_are_refused(stand_in, tmp_path, capsys) -> None:
    """A non-UTF-8 byte in argv (a Latin-1 terminal's é) arrives as a lone surrogate: JSON would send it escaped."""
    assert queue(stand_in, tmp_path, "--prompt", "caf\udce9") == 2
    assert "argument --prompt: the text holds byte 0xe9 at character 3, which is not UTF-8" in one_line_error(capsys)
    assert queue(stand_in, tmp_path, "--set", "Prompt.text=caf\udce9") == 2
    assert "argument --set: the text holds byte 0xe9" in one_line_error(capsys)
    assert stand_in.asked == []


class Flood:
    """A websocket that always has another client's event waiting: reading it never times out."""

    def __init__(self, give_up_at: float):
        self.give_up_at = give_up_at

    def recv(self, timeout: float | None = None) -> str:
        if time.monotonic() > self.give_up_at:
            raise AssertionError("follow() read on long past its deadline")
        return json.dumps({"type": "progress", "data": {"prompt_id": "someone else's", "value": 1, "max": 9}})


def test_a_flood_of_events_cannot_outlast_the_deadline() -> None:
    client = comfy_client.ComfyClient("http://127.0.0.1:8188")
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        client.follow(Flood(give_up_at=start + 10), PROMPT_ID, deadline=start + 0.5)
    assert time.monotonic() - start < 5
