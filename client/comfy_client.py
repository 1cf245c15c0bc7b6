"""A small client for a running ComfyUI server: queue a prompt, follow it over the websocket, fetch its images."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.sync.client import ClientConnection, connect

QUIET_CHECK_S = 10.0  # seconds without events after which follow() asks whether the prompt still exists


class ServerError(RuntimeError):
    """The server cannot be reached, or answered something a ComfyUI server would not."""


class PromptRefused(RuntimeError):
    """POST /prompt answered 400: the graph did not pass ComfyUI's validation."""

    def __init__(self, answer: dict):
        self.answer = answer
        super().__init__(describe_refusal(answer))


class ExecutionFailed(RuntimeError):
    """A node raised while the prompt ran (an execution_error event)."""


class Interrupted(RuntimeError):
    """The prompt was interrupted (from this client or the ComfyUI window)."""


@dataclass(frozen=True)
class OutputFile:
    node: str
    filename: str
    subfolder: str
    type: str


def exception_name(exception_type: str | None) -> str:
    """The class name in ComfyUI's `exception_type`, which is `module.QualifiedName` (bare for builtins). A custom
    node's module is named after its install folder (dots written as _x_), e.g.
    `/home/me/ComfyUI/custom_nodes/dalle-nodes.engine.hub.NotDownloaded`: only the last part means anything."""
    return (exception_type or "").strip().rsplit(".", 1)[-1] or "error"


def describe_refusal(answer: dict) -> str:
    """ComfyUI's 400 answer in plain words: the error, then each node's errors."""
    error = answer.get("error", {})
    lines = [error.get("message", "the prompt was refused") + (f": {error['details']}" if error.get("details") else "")]
    for node_id, node in answer.get("node_errors", {}).items():
        for problem in node.get("errors", []):
            name = problem.get("extra_info", {}).get("input_name")
            where = f"node {node_id} ({node.get('class_type', '?')})" + (f", input '{name}'" if name else "")
            lines.append(f"{where}: {problem.get('message', '')} {problem.get('details', '')}".rstrip())
    return "\n".join(lines)


class ComfyClient:
    def __init__(self, server: str, timeout: float = 30.0):
        self.server = server.rstrip("/")
        parts = urllib.parse.urlsplit(self.server)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ServerError(f"--server '{server}' is not a URL like http://127.0.0.1:8188.")
        self.timeout = timeout
        self.client_id = uuid.uuid4().hex
        local = parts.hostname in ("127.0.0.1", "localhost", "::1")
        # A proxy set for the internet must not catch this machine's own server.
        self.opener = urllib.request.build_opener(*([urllib.request.ProxyHandler({})] if local else []))

    def request(self, path: str, payload: dict | None = None) -> tuple[int, bytes]:
        data = json.dumps(payload).encode() if payload is not None else None
        req = urllib.request.Request(self.server + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with self.opener.open(req, timeout=self.timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ServerError(f"ComfyUI at {self.server} cannot be reached ({reason}). Is it running?") from error

    def get_json(self, path: str) -> dict:
        status, body = self.request(path)
        if status != 200:
            raise ServerError(f"GET {path} answered HTTP {status}: {body[:200]!r}")
        try:
            return json.loads(body)
        except json.JSONDecodeError as error:
            raise ServerError(f"GET {path} did not answer JSON: is {self.server} a ComfyUI server?") from error

    def object_info(self) -> dict:
        return self.get_json("/object_info")

    def queue(self, graph: dict) -> str:
        """POST /prompt; the prompt id, or PromptRefused with ComfyUI's validation errors."""
        status, body = self.request("/prompt", {"prompt": graph, "client_id": self.client_id})
        try:
            answer = json.loads(body)
        except json.JSONDecodeError as error:
            raise ServerError(f"POST /prompt answered HTTP {status} without JSON: {body[:200]!r}") from error
        if status == 400:
            raise PromptRefused(answer)
        if status != 200 or "prompt_id" not in answer:
            raise ServerError(f"POST /prompt answered HTTP {status}: {answer}")
        return answer["prompt_id"]

    def cancel(self, prompt_id: str) -> None:
        """Stop this prompt only: interrupt it if it is running, take it off the queue if it is waiting."""
        self.request("/queue", {"delete": [prompt_id]})  # first: once running, a delete would do nothing
        self.request("/interrupt", {"prompt_id": prompt_id})

    def listen(self) -> ClientConnection:
        """The websocket for this client's events, open before the prompt is queued so that none is missed."""
        parts = urllib.parse.urlsplit(self.server)
        scheme = "wss" if parts.scheme == "https" else "ws"
        url = f"{scheme}://{parts.netloc}{parts.path}/ws?clientId={self.client_id}"
        try:
            return connect(url, open_timeout=self.timeout, max_size=None, proxy=None)
        except (OSError, TimeoutError, InvalidHandshake) as error:
            raise ServerError(f"ComfyUI's websocket at {url} cannot be reached ({error}).") from error

    def _check_alive(self, prompt_id: str) -> None:
        """Raise if the prompt has vanished: deleted from the queue by someone else, or the worker died."""
        if prompt_id in self.get_json(f"/history/{prompt_id}"):
            return  # finished: its closing event is on the way
        queue = self.get_json("/queue")
        if not any(item[1] == prompt_id for key in ("queue_running", "queue_pending") for item in queue.get(key, [])):
            raise ServerError(f"prompt {prompt_id} is no longer queued or running, and has no history: deleted?")

    def follow(
        self,
        socket: ClientConnection,
        prompt_id: str,
        deadline: float,
        on_node: Callable[[str], None] = lambda node: None,
        on_progress: Callable[[str, int, int], None] = lambda node, value, total: None,
    ) -> None:
        """Read events until the prompt ends; raises ExecutionFailed, Interrupted or TimeoutError (at `deadline`,
        a time.monotonic() value). The end is `executing` with no node, which ComfyUI sends once the prompt's
        history is written (execution_success comes before that)."""
        while True:
            try:
                message = socket.recv(timeout=max(min(deadline - time.monotonic(), QUIET_CHECK_S), 0))
            except ConnectionClosed as error:
                raise ServerError(f"ComfyUI closed the websocket ({error}).") from error
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise
                self._check_alive(prompt_id)  # quiet for a while: is the prompt still queued, running or done?
                continue
            if not isinstance(message, str):
                continue  # binary: preview images
            event = json.loads(message)
            kind, data = event.get("type"), event.get("data", {})
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            if kind == "executing":
                if data.get("node") is None:
                    return  # the prompt has finished
                on_node(data["node"])
            elif kind == "progress":
                on_progress(data.get("node"), data.get("value", 0), data.get("max", 0))
            elif kind == "execution_error":
                raise ExecutionFailed(
                    f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                    f"{exception_name(data.get('exception_type'))}: {(data.get('exception_message') or '').strip()}"
                )
            elif kind == "execution_interrupted":
                raise Interrupted(f"the prompt was interrupted at node {data.get('node_id')} ({data.get('node_type')})")

    def outputs(self, prompt_id: str) -> list[OutputFile]:
        """The images the prompt's output nodes saved, from its /history entry."""
        entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
        if entry is None:
            raise ServerError(f"ComfyUI has no history for prompt {prompt_id}: was it deleted meanwhile?")
        return [
            OutputFile(node_id, image["filename"], image.get("subfolder", ""), image.get("type", "output"))
            for node_id, output in entry.get("outputs", {}).items()
            for image in output.get("images", [])
        ]

    def view(self, file: OutputFile) -> bytes:
        query = urllib.parse.urlencode({"filename": file.filename, "subfolder": file.subfolder, "type": file.type})
        status, body = self.request("/view?" + query)
        if status != 200:
            raise ServerError(f"GET /view?{query} answered HTTP {status}.")
        return body
