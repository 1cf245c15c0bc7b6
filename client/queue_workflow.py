"""`python -m dalle_nodes queue`: a workflow file → a ComfyUI server → its images in a folder.

Exit codes: 0 done; 1 the run failed (a node raised, interrupted, the prompt vanished from the server, --timeout
passed, no images, out of memory); 2 the request was bad (file, settings, --out, a graph the server refused, no
server); 3 the server answered what ComfyUI would not, redirected, broke off or stalled; 130 stopped with Ctrl-C (the
server is told to stop too).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

from ..engine.files import OutputError, check_output_folder, print_path, write_file
from .comfy_client import (
    REQUEST_TIMEOUT_S,
    ComfyClient,
    ExecutionFailed,
    Interrupted,
    OutputFile,
    PromptLost,
    PromptRefused,
    ServerError,
    UnexpectedAnswer,
    one_line,
)
from .workflow_file import read_workflow
from .workflow_graph import (
    NodeSpec,
    UnknownNodes,
    WorkflowError,
    check_has_output,
    is_ui_format,
    local_specs,
    set_input,
    set_prompt,
    set_seed,
    specs_from_object_info,
    ui_to_api,
)


def api_graph(workflow: dict, client: ComfyClient, local: dict[str, NodeSpec]) -> dict:
    """The API graph of a workflow file: as it is, or converted from the UI format with the `local` node specs
    (asking the server about nodes that are not among them)."""
    if not is_ui_format(workflow):
        return workflow
    try:
        return ui_to_api(workflow, local)
    except UnknownNodes:
        return ui_to_api(workflow, specs_from_object_info(client.object_info()))


def prepare(args: argparse.Namespace, client: ComfyClient, local: dict[str, NodeSpec]) -> dict:
    graph = api_graph(read_workflow(args.workflow), client, local)
    for assignment in args.set:
        set_input(graph, assignment)
    if args.prompt is not None:
        set_prompt(graph, args.prompt)
    if args.seed is not None:
        set_seed(graph, args.seed)
    if all(node["class_type"] in local for node in graph.values()):  # else the server judges (it knows them)
        check_has_output(graph, local)
    return graph


def run(graph: dict, client: ComfyClient) -> str:
    """Queue the graph and follow it to the end (client.finish_by) with a progress bar; the prompt id."""
    from tqdm.auto import tqdm

    titles = {node_id: node.get("_meta", {}).get("title") or node["class_type"] for node_id, node in graph.items()}
    with client.listen() as socket, tqdm(total=0, unit="step", file=sys.stderr, leave=False) as bar:
        prompt_id = client.queue(graph)

        def on_node(node: str) -> None:
            bar.set_description(titles.get(node) or one_line(node, 40))

        def on_progress(node: str, value: float, total: float) -> None:
            bar.set_description(titles.get(node) or one_line(node, 40))
            bar.total, bar.n = total, value
            bar.refresh()

        try:
            client.follow(socket, prompt_id, client.finish_by, on_node, on_progress)
        except KeyboardInterrupt:
            with contextlib.suppress(ServerError):  # stopping locally matters more than telling the server
                client.cancel(prompt_id)
            raise
    return prompt_id


class PartlySaved(WorkflowError):
    """Writing the images failed after `written` were saved."""

    def __init__(self, message: str, written: list[Path]):
        super().__init__(message)
        self.written = written


def save(files: list[OutputFile], client: ComfyClient, folder: Path) -> list[Path]:
    """Download every image first, then write them, each under a free name (never over a file already there) and
    whole or not at all; PartlySaved where a write fails."""
    contents = client.download(files)
    written: list[Path] = []
    try:
        for file, content in zip(files, contents, strict=True):  # a name from the server never leaves the folder
            written.append(write_file(folder / Path(file.filename).name, content, overwrite=False))
    except OSError as error:  # --out is not writable after all, or the disk is full
        raise PartlySaved(f"cannot write the images to '{folder}' ({error.strerror or error}).", written) from error
    except OutputError as error:  # every free name beside it taken
        raise PartlySaved(f"cannot write the images to '{folder}': {error}", written) from error
    return written


def print_result(prompt_id: str, files: list[OutputFile], paths: list[Path], as_json: bool) -> None:
    """The paths written (`files`' first ones), one a line or as JSON."""
    if as_json:  # JSON escapes what is not text (undecodable bytes of a name)
        outputs = [{"node": f.node, "path": str(p), "filename": f.filename} for f, p in zip(files, paths, strict=False)]
        print(json.dumps({"prompt_id": prompt_id, "outputs": outputs}, indent=2))
    else:
        for path in paths:
            print_path(str(path))


def queue_workflow(args: argparse.Namespace, node_classes: dict[str, type]) -> int:
    """The queue command; `node_classes` are our nodes (NODE_CLASS_MAPPINGS), for converting UI files offline."""
    try:
        queue_and_save(args, node_classes)
    except UnexpectedAnswer as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    except (WorkflowError, ServerError, OutputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except PromptRefused as error:  # one line, then a line for each node's error
        print(f"error: ComfyUI refused the workflow: {error}", file=sys.stderr)
        return 2
    except (ExecutionFailed, Interrupted, PromptLost) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except TimeoutError as error:
        message = f"the run did not finish within {args.timeout:g} s ({error}); the prompt may still be running."
        print(f"error: {message}", file=sys.stderr)
        return 1
    except MemoryError:
        print("error: out of memory here (the images are held in memory until all have come).", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: asked ComfyUI to stop the prompt.", file=sys.stderr)
        return 130
    return 0


def queue_and_save(args: argparse.Namespace, node_classes: dict[str, type]) -> None:
    """Everything the queue command does, within --timeout in all; prints the paths written (also where writing
    fails part of the way: before the error)."""
    client = ComfyClient(args.server, min(REQUEST_TIMEOUT_S, args.timeout), time.monotonic() + args.timeout)
    graph = prepare(args, client, local_specs(node_classes))
    check_output_folder(args.out)  # before the server spends any time on the run
    prompt_id = run(graph, client)
    files = client.outputs(prompt_id)
    if not files:
        raise ExecutionFailed("the prompt finished but saved no images.")
    try:
        paths = save(files, client, args.out)
    except PartlySaved as error:
        print_result(prompt_id, files, error.written, args.json)
        raise
    print_result(prompt_id, files, paths, args.json)
