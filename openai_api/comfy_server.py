"""The one place that touches ComfyUI's server internals (PromptServer, its prompt queue, execution's validation,
folder_paths), which are not a stable API. Everything the /v1 routes need from ComfyUI is a function here.

A job is queued exactly as POST /prompt queues one: the on-prompt handlers, node replacements, execution's
validation, the next queue number, then PromptQueue.put; so it shares the queue in order with canvas runs and the UI
lists it.
"""

from __future__ import annotations

import inspect
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

try:
    import comfy.model_management
    import execution
    import folder_paths
    from server import PromptServer
except ImportError:
    PromptServer = None


class Refused(Exception):
    """ComfyUI's validation refused a graph: its error and each node's errors, as POST /prompt reports them."""

    def __init__(self, error: dict, node_errors: dict):
        self.error = error
        self.node_errors = node_errors
        details = [error.get("message", "refused"), error.get("details", "")]
        for node_id, node in node_errors.items():
            details += [
                f"node {node_id} ({node.get('class_type', '?')}): {e.get('details') or e.get('message')}"
                for e in node.get("errors", [])
            ]
        super().__init__("; ".join(part for part in details if part))


def running() -> bool:
    """Whether a ComfyUI server is up in this process (so its route table takes routes)."""
    return PromptServer is not None and getattr(PromptServer, "instance", None) is not None


def _server():
    return PromptServer.instance


def route_table():
    """The aiohttp RouteTableDef ComfyUI serves; what is added before it starts is served under /api as well."""
    return _server().routes


async def queue_prompt(graph: dict, extra_data: dict, prompt_id: str | None = None) -> str:
    """Validate and queue an API-format graph as POST /prompt does, as `prompt_id` (a fresh one by default); its
    prompt id. A refused graph → Refused."""
    server = _server()
    payload = server.trigger_on_prompt({"prompt": graph, "extra_data": extra_data})
    graph, extra_data = payload["prompt"], dict(payload.get("extra_data", extra_data))
    replacements = getattr(server, "node_replace_manager", None)
    if replacements is not None:
        replacements.apply_replacements(graph)
    number = server.number  # taken on arrival, as POST /prompt does, so jobs queue in the order they came
    server.number += 1
    prompt_id = prompt_id or str(uuid.uuid4())
    valid = execution.validate_prompt(prompt_id, graph, None)
    if inspect.isawaitable(valid):
        valid = await valid
    if not valid[0]:
        raise Refused(valid[1], valid[3])
    extra_data["create_time"] = int(time.time() * 1000)
    server.prompt_queue.put((number, prompt_id, graph, extra_data, valid[2], {}))
    return prompt_id


def history(prompt_id: str) -> dict | None:
    """The prompt's history entry, once it has finished (well or not); None before."""
    return _server().prompt_queue.get_history(prompt_id=prompt_id).get(prompt_id)


def in_queue(prompt_id: str) -> bool:
    """Whether the prompt waits or runs. A prompt leaves the queue and gets its history entry in one step (under the
    queue's lock), so once this is False, history() has the entry unless someone deleted it."""
    running_items, pending = _server().prompt_queue.get_current_queue_volatile()
    return any(item[1] == prompt_id for item in (*running_items, *pending))


def forget(prompt_id: str) -> None:
    """Delete the prompt's history entry."""
    _server().prompt_queue.delete_history_item(prompt_id)


def cancel(prompt_id: str) -> str:
    """Take the prompt out of the queue ("removed"), or interrupt it if it runs ("interrupted"); "ended" if it is
    neither (finished, or never queued)."""
    queue = _server().prompt_queue
    if queue.delete_queue_item(lambda item: item[1] == prompt_id):
        return "removed"
    if hasattr(queue, "interrupt_if_running"):
        return "interrupted" if queue.interrupt_if_running(prompt_id) else "ended"
    # an older ComfyUI without the atomic call: the prompt could end between this look and the interrupt
    running_ids = [item[1] for item in queue.get_current_queue_volatile()[0]]
    if prompt_id in running_ids:
        comfy.model_management.interrupt_current_processing()
        return "interrupted"
    return "ended"


def queue_lengths() -> tuple[int, int]:
    """(running, pending) prompts in ComfyUI's queue, canvas runs included."""
    running_items, pending = _server().prompt_queue.get_current_queue_volatile()
    return len(running_items), len(pending)


def on_queue_change(callback: Callable[[], None]) -> None:
    """Call `callback` on the server's event loop whenever the queue changes (a prompt queued, started, finished or
    removed; the history entry is written before the "finished" change). It hooks the server's queue_updated, which
    the queue calls from the worker thread."""
    server = _server()
    original = server.queue_updated

    def queue_updated() -> None:
        original()
        server.loop.call_soon_threadsafe(callback)

    server.queue_updated = queue_updated


def input_folder() -> Path:
    return Path(folder_paths.get_input_directory())


def user_folder() -> Path:
    return Path(folder_paths.get_user_directory())


def output_file(image: dict) -> Path | None:
    """The file behind one image of a history entry's outputs (filename, subfolder, type), if it lies inside its
    folder; None otherwise."""
    base = folder_paths.get_directory_by_type(image.get("type", ""))
    if base is None:
        return None
    # the same containment check as ComfyUI's /view (abspath, not resolve: a symlinked subfolder is served there too)
    base = os.path.abspath(base)
    path = os.path.abspath(os.path.join(base, image.get("subfolder", ""), image.get("filename", "")))
    inside = os.path.commonpath((base, path)) == base
    return Path(path) if inside and os.path.isfile(path) else None


def on_terminate(callback: Callable[[], None]) -> bool:
    """Call `callback` on the server's event loop when the process gets SIGTERM, instead of dying at once; False
    where that cannot be hooked: Windows, a call from another thread than the main one, or a server loop that the
    main thread does not run (ComfyUI's main.py runs it there and loads custom nodes from it)."""
    if threading.current_thread() is not threading.main_thread() or not _server().loop.is_running():
        return False
    try:
        _server().loop.add_signal_handler(signal.SIGTERM, callback)
    except (NotImplementedError, RuntimeError, ValueError):
        return False
    return True


def stop() -> None:
    """Stop ComfyUI as Ctrl-C does: main.py catches the KeyboardInterrupt that leaves its event loop, logs "Stopped
    server" and cleans up its temp folder. Call it on the server's loop."""
    raise KeyboardInterrupt
