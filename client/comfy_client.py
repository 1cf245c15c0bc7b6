"""A small client for a running ComfyUI server: queue a prompt, follow it over the websocket, fetch its images."""

from __future__ import annotations

import json
import math
import reprlib
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePath

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import ClientConnection, connect

from .http_transport import (
    BROKEN_OFF,
    AnswerTooLarge,
    ServerError,
    UnexpectedAnswer,
    make_opener,
    one_line,
    send,
    server_url,
)

QUIET_CHECK_S = 10.0  # seconds without events after which follow() asks whether the prompt still exists
REQUEST_TIMEOUT_S = 30.0  # ComfyUI answers every request at once (POST /prompt validates the graph, it runs nothing)
CLOSE_TIMEOUT_S = 2.0  # for the websocket's closing handshake, which ComfyUI answers at once
MAX_ANSWER_BYTES = 64 * 2**20  # a JSON answer: /object_info with many node packs is a few MB
MAX_IMAGE_BYTES = 2**30  # one image from /view
MAX_RUN_IMAGE_BYTES = 2 * 2**30  # all the images of one run, held in memory until all have come
MAX_REFUSAL_LINES = 20  # node errors shown of a 400 answer
SAVED_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")  # what image nodes save
MAX_NAME_BYTES = 255 - len("_9999")  # NAME_MAX, with room for the number added beside a taken name
MAX_EVENT_BYTES = 64 * 2**20  # one websocket message: preview images are the largest
PROGRESS_EVENTS = {"executing", "progress", "execution_error", "execution_interrupted"}  # the events follow() reads


class PromptRefused(RuntimeError):
    """POST /prompt answered 400: the graph did not pass ComfyUI's validation."""

    def __init__(self, answer: object):
        self.answer = answer
        super().__init__(describe_refusal(answer))


class ExecutionFailed(RuntimeError):
    """A node raised while the prompt ran (an execution_error event)."""


class Interrupted(RuntimeError):
    """The prompt was interrupted (from this client or the ComfyUI window)."""


class PromptLost(RuntimeError):
    """The prompt vanished from the server: taken off the queue by someone else, its history cleared, or ComfyUI
    restarted meanwhile."""


@dataclass(frozen=True)
class OutputFile:
    node: str
    filename: str
    subfolder: str
    type: str


def exception_name(exception_type: object) -> str:
    """The class name in ComfyUI's `exception_type`, which is `module.QualifiedName` (bare for builtins). A custom
    node's module is named after its install folder (dots written as _x_), e.g.
    `/home/me/ComfyUI/custom_nodes/dalle-nodes.engine.hub.NotDownloaded`: only the last part means anything."""
    text = exception_type if isinstance(exception_type, str) else ""
    return one_line(text.strip().rsplit(".", 1)[-1], 100) or "error"


def _mapping(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def describe_refusal(answer: object) -> str:
    """ComfyUI's 400 answer in plain words: the error, then each node's errors; from a server that answers in
    another shape, what it said."""
    if not isinstance(answer, dict) or not isinstance(answer.get("error", {}), dict):
        return f"HTTP 400: {one_line(answer)}"
    error = answer.get("error", {})
    details = f": {one_line(error['details'])}" if error.get("details") else ""
    lines = [one_line(error.get("message") or "the prompt was refused") + details]
    for node_id, node in _mapping(answer.get("node_errors")).items():
        node = _mapping(node)
        problems = node.get("errors") if isinstance(node.get("errors"), list) else []
        for problem in map(_mapping, problems):
            name = _mapping(problem.get("extra_info")).get("input_name")
            where = f"node {one_line(node_id)} ({one_line(node.get('class_type', '?'))})"
            where += f", input '{one_line(name)}'" if name else ""
            lines.append(f"{where}: {one_line(problem.get('message', ''))} {one_line(problem.get('details', ''))}")
    if len(lines) > MAX_REFUSAL_LINES + 1:  # a graph of thousands of nodes, or a server that lists endless errors
        lines[MAX_REFUSAL_LINES + 1 :] = [f"… {len(lines) - MAX_REFUSAL_LINES - 1} more"]
    return "\n".join(line.rstrip() for line in lines)


def _json_or_text(body: bytes) -> object:
    """An error answer's JSON, or its start as text where it is none."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return body[:300].decode(errors="replace")


class ComfyClient:
    def __init__(self, server: str, timeout: float = REQUEST_TIMEOUT_S, finish_by: float | None = None):
        self.server = server_url(server)
        self.timeout = timeout  # for each request, and for opening the websocket
        self.finish_by = finish_by  # the end of the whole run (a time.monotonic() value), if it has one
        self.client_id = uuid.uuid4().hex
        self.opener = make_opener(
            local=urllib.parse.urlsplit(self.server).hostname in ("127.0.0.1", "localhost", "::1")
        )

    def time_limit(self) -> tuple[float, bool]:
        """Seconds the next request may take in all, and whether the run's end (not the request limit) sets them;
        TimeoutError where the run has no time left."""
        left = math.inf if self.finish_by is None else self.finish_by - time.monotonic()
        if left <= 0:
            raise TimeoutError("no time was left for the next request")
        return min(self.timeout, left), left < self.timeout

    def request(self, path: str, payload: dict | None = None, limit: int | None = None) -> tuple[int, bytes]:
        """GET `path`, or POST `payload` as JSON: the status and the body, HTTP errors included. ServerError where
        nothing answers at the address; UnexpectedAnswer where the server breaks off, redirects, does not answer
        within the request time limit, or sends more than `limit` bytes (default MAX_ANSWER_BYTES); TimeoutError
        where the run's time ends first."""
        data = json.dumps(payload).encode() if payload is not None else None
        req = urllib.request.Request(self.server + path, data=data, headers={"Content-Type": "application/json"})
        seconds, run_ends_first = self.time_limit()
        try:
            return send(self.opener, req, MAX_ANSWER_BYTES if limit is None else limit, seconds)
        except TimeoutError as error:
            if run_ends_first:
                raise
            raise UnexpectedAnswer(f"{error} within {seconds:g} s from {self.server}: is it ComfyUI?") from None

    def _json(self, body: bytes, what: str) -> object:
        try:
            return json.loads(body)
        except (ValueError, RecursionError):  # not JSON; or numbers of thousands of digits, nesting a thousand deep
            raise UnexpectedAnswer(
                f"{what} answered {one_line(body[:100].decode(errors='replace'), 100)!r}, not JSON: is {self.server} "
                "a ComfyUI server?"
            ) from None

    def get_json(self, path: str) -> dict:
        """A GET whose answer is a JSON object, as every ComfyUI route we read answers."""
        status, body = self.request(path)
        if status != 200:
            text = one_line(body[:200].decode(errors="replace"))
            raise UnexpectedAnswer(f"GET {path} answered HTTP {status}: {text}")
        answer = self._json(body, f"GET {path}")
        if not isinstance(answer, dict):
            raise UnexpectedAnswer(f"GET {path} answered {one_line(answer, 100)}, not a JSON object: is it ComfyUI?")
        return answer

    def object_info(self) -> dict:
        """Every node the server knows, in the shape the conversion of UI files reads (workflow_graph.NodeSpec)."""
        info = self.get_json("/object_info")
        for name, node in info.items():
            if not node_info_readable(node):
                raise UnexpectedAnswer(f"GET /object_info describes {one_line(name, 60)} in a shape ComfyUI never has.")
        return info

    def queue(self, graph: dict) -> str:
        """POST /prompt; the prompt id, or PromptRefused with ComfyUI's validation errors."""
        status, body = self.request("/prompt", {"prompt": graph, "client_id": self.client_id})
        if status == 400:
            raise PromptRefused(_json_or_text(body))
        if status != 200:
            raise UnexpectedAnswer(f"POST /prompt answered HTTP {status}: {one_line(_json_or_text(body))}")
        answer = self._json(body, "POST /prompt")
        prompt_id = answer.get("prompt_id") if isinstance(answer, dict) else None
        if not isinstance(prompt_id, str) or not prompt_id or not prompt_id.isprintable():
            raise UnexpectedAnswer(f"POST /prompt answered {one_line(answer, 100)}, with no prompt id: is it ComfyUI?")
        return prompt_id

    def cancel(self, prompt_id: str) -> None:
        """Stop this prompt only: interrupt it if it is running, take it off the queue if it is waiting."""
        self.request("/queue", {"delete": [prompt_id]})  # first: once running, a delete would do nothing
        self.request("/interrupt", {"prompt_id": prompt_id})

    def listen(self) -> ClientConnection:
        """The websocket for this client's events, open before the prompt is queued so that none is missed."""
        parts = urllib.parse.urlsplit(self.server)
        scheme = "wss" if parts.scheme == "https" else "ws"
        url = f"{scheme}://{parts.netloc}{parts.path}/ws?clientId={self.client_id}"
        seconds, run_ends_first = self.time_limit()
        try:
            return connect(
                url, open_timeout=seconds, close_timeout=CLOSE_TIMEOUT_S, max_size=MAX_EVENT_BYTES, proxy=None
            )
        except InvalidURI as error:
            raise ServerError(f"--server '{self.server}' gives no websocket URL ({error}).") from None
        except TimeoutError:
            if run_ends_first:
                raise
            raise UnexpectedAnswer(f"ComfyUI's websocket at {url} did not open (timed out): is it ComfyUI?") from None
        except (InvalidHandshake, ConnectionClosed, *BROKEN_OFF) as error:  # reached, but no ComfyUI websocket
            reason = one_line(str(error) or type(error).__name__, 200)
            raise UnexpectedAnswer(f"ComfyUI's websocket at {url} did not open ({reason}): is it ComfyUI?") from None
        except OSError as error:
            raise ServerError(f"ComfyUI's websocket at {url} cannot be reached ({error}). Is it running?") from None

    def _check_alive(self, prompt_id: str) -> None:
        """Raise if the prompt has vanished: deleted from the queue by someone else, or the worker died."""
        if prompt_id in self.get_json(f"/history/{urllib.parse.quote(prompt_id, safe='')}"):
            return  # finished: its closing event is on the way
        queue = self.get_json("/queue")
        items = [queue.get(key, []) for key in ("queue_running", "queue_pending")]
        items = [item for part in items if isinstance(part, list) for item in part]
        if not all(isinstance(item, list) and len(item) > 1 for item in items):
            raise UnexpectedAnswer(f"GET /queue answered {one_line(queue, 100)}: not ComfyUI's queue.")
        if not any(item[1] == prompt_id for item in items):
            raise PromptLost(f"prompt {prompt_id} is no longer queued or running, and has no history: deleted?")

    def follow(
        self,
        socket: ClientConnection,
        prompt_id: str,
        deadline: float,
        on_node: Callable[[str], None] = lambda node: None,
        on_progress: Callable[[str, float, float], None] = lambda node, value, total: None,
    ) -> None:
        """Read events until the prompt ends; raises ExecutionFailed, Interrupted, UnexpectedAnswer or TimeoutError
        (at `deadline`, a time.monotonic() value, however many events arrive). The end is `executing` with no
        node, which ComfyUI sends once the prompt's history is written (execution_success comes before that)."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"prompt {prompt_id} did not finish in time")
            try:
                message = socket.recv(timeout=min(remaining, QUIET_CHECK_S))
            except ConnectionClosed as error:
                raise UnexpectedAnswer(f"ComfyUI closed the websocket before the prompt ended ({error}).") from None
            except TimeoutError:
                if time.monotonic() < deadline:
                    self._check_alive(prompt_id)  # quiet for a while: is the prompt still queued, running or done?
                continue
            if isinstance(message, str):  # else binary: preview images
                kind, data = read_event(message)
                if data.get("prompt_id") in (None, prompt_id) and on_event(kind, data, on_node, on_progress):
                    return

    def outputs(self, prompt_id: str) -> list[OutputFile]:
        """The images the prompt's output nodes saved, from its /history entry."""
        path = f"/history/{urllib.parse.quote(prompt_id, safe='')}"
        entry = self.get_json(path).get(prompt_id)
        if entry is None:
            raise PromptLost(f"ComfyUI has no history for prompt {prompt_id}: was it deleted meanwhile?")
        outputs = entry.get("outputs", {}) if isinstance(entry, dict) else None
        if not isinstance(outputs, dict):
            raise UnexpectedAnswer(f"GET {path} answered {one_line(entry, 100)}: not a history entry with outputs.")
        return [output_file(node_id, image) for node_id, output in outputs.items() for image in images_of(output)]

    def view(self, file: OutputFile, limit: int = MAX_IMAGE_BYTES) -> bytes:
        query = urllib.parse.urlencode({"filename": file.filename, "subfolder": file.subfolder, "type": file.type})
        status, body = self.request("/view?" + query, limit=limit)
        if status != 200:
            raise UnexpectedAnswer(f"GET /view?{one_line(query)} answered HTTP {status}.")
        return body

    def download(self, files: list[OutputFile]) -> list[bytes]:
        """Every file's bytes, at most MAX_RUN_IMAGE_BYTES in all: they are held in memory until all have come."""
        contents, left = [], MAX_RUN_IMAGE_BYTES
        for file in files:
            try:
                contents.append(self.view(file, min(MAX_IMAGE_BYTES, left)))
            except AnswerTooLarge:
                if left >= MAX_IMAGE_BYTES:
                    raise
                raise UnexpectedAnswer(
                    f"The images of this run come to over {MAX_RUN_IMAGE_BYTES // 2**20} MiB, more than the queue "
                    "command downloads: save fewer or smaller images per run, or copy them from ComfyUI's output."
                ) from None
            left -= len(contents[-1])
        return contents


def read_event(message: str) -> tuple[object, dict]:
    """A websocket text message, {"type": …, "data": {…}} as ComfyUI sends them. Other packs' events may carry
    other data: those are passed on as empty."""
    try:
        event = json.loads(message)
    except (ValueError, RecursionError):
        raise UnexpectedAnswer(f"ComfyUI's websocket sent {one_line(message, 80)!r}, which is not JSON.") from None
    kind, data = (event.get("type"), event.get("data", {})) if isinstance(event, dict) else (None, None)
    ours = isinstance(kind, str) and kind in PROGRESS_EVENTS
    if not isinstance(event, dict) or (ours and not isinstance(data, dict)):
        raise UnexpectedAnswer(f"ComfyUI's websocket sent {one_line(message, 80)}, not {{type, data: {{…}}}}.")
    return kind, data if isinstance(data, dict) else {}


def on_event(
    kind: object, data: dict, on_node: Callable[[str], None], on_progress: Callable[[str, float, float], None]
) -> bool:
    """Act on one event of our prompt: True where it is the end; ExecutionFailed or Interrupted where it failed."""
    if kind == "executing":
        if data.get("node") is None:
            return True  # the prompt has finished
        on_node(node_id(data, "node"))
    elif kind == "progress":
        on_progress(node_id(data, "node"), count(data, "value"), count(data, "max"))
    elif kind == "execution_error":
        raise ExecutionFailed(
            f"node {one_line(data.get('node_id'), 60)} ({one_line(data.get('node_type'), 60)}) failed: "
            f"{exception_name(data.get('exception_type'))}: {one_line(data.get('exception_message') or '', 2000)}"
        )
    elif kind == "execution_interrupted":
        node = f"{one_line(data.get('node_id'), 60)} ({one_line(data.get('node_type'), 60)})"
        raise Interrupted(f"the prompt was interrupted at node {node}")
    return False


def node_id(data: dict, key: str) -> str:
    value = data.get(key, "")
    if not isinstance(value, str):
        raise UnexpectedAnswer(f"ComfyUI's websocket sent a node id that is not text: {one_line(reprlib.repr(value))}.")
    return value


def count(data: dict, key: str) -> float:
    """A progress event's value or max: a finite number, at least 0."""
    value = data.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value) and value >= 0):
        raise UnexpectedAnswer(f"ComfyUI's websocket sent progress {key} {one_line(reprlib.repr(value))}, not a count.")
    return value


def images_of(output: object) -> list:
    """An output node's history: {"images": […], …} (other keys are other kinds of output)."""
    images = output.get("images", []) if isinstance(output, dict) else None
    if not isinstance(images, list):
        raise UnexpectedAnswer(f'The history holds the output {one_line(output, 100)}, not {{"images": […]}}.')
    return images


def output_file(node: str, image: object) -> OutputFile:
    """One image of an output node's history, checked: a file name that can be written here (printable UTF-8, not
    hidden, an image suffix, short enough for `_N` to be added), and a subfolder and type that are text. A server
    chooses the name: it must not plant conftest.py, .bashrc or sitecustomize.py in --out."""
    image = image if isinstance(image, dict) else {}
    name, subfolder, kind = image.get("filename"), image.get("subfolder", ""), image.get("type", "output")
    if not (_saveable(name) and isinstance(subfolder, str) and isinstance(kind, str)):
        raise UnexpectedAnswer(
            f"The history of node {one_line(node, 60)} lists {one_line(image, 100)}: not {{filename, subfolder, type}} "
            f"with a file name that can be saved (an image: {', '.join(SAVED_SUFFIXES)}; not hidden; at most "
            f"{MAX_NAME_BYTES} bytes)."
        )
    return OutputFile(node, name, subfolder, kind)


def _saveable(name: object) -> bool:
    if not (isinstance(name, str) and name.isprintable() and _is_utf8(name)):
        return False
    saved = PurePath(name).name  # the name the file gets in --out
    return (
        not saved.startswith(".")
        and PurePath(saved).suffix.lower() in SAVED_SUFFIXES
        and len(saved.encode()) <= MAX_NAME_BYTES
    )


def _is_utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate, from a JSON escape such as \ud800
        return False
    return True


def node_info_readable(node: object) -> bool:
    """One node of /object_info in the shape workflow_graph.specs_from_object_info reads: {"input": {"required":
    {name: [type or choices, options?]}, "optional": …}, "input_order": {section: [names]}, "output": […]}."""
    if not isinstance(node, dict):
        return False
    declared, order = node.get("input", {}), node.get("input_order", {})
    if not (isinstance(declared, dict) and isinstance(order, dict) and isinstance(node.get("output", []), list)):
        return False
    sections = [declared.get(section, {}) for section in ("required", "optional")]
    orders = [order.get(section, []) for section in ("required", "optional")]
    if not all(isinstance(section, dict) for section in sections):
        return False
    entries = [entry for section in sections for entry in section.values()]
    return all(isinstance(e, list) and e and isinstance(e[0], str | list) for e in entries) and all(
        isinstance(names, list) and all(isinstance(name, str) for name in names) for names in orders
    )
