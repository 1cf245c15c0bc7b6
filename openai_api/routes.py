"""The /v1 routes on ComfyUI's own aiohttp server (also under /api/v1): images/generations, images/edits,
images/variations, models, and for operators health (readiness), live and metrics (Prometheus).

A request is checked, its model's workflow filled in, and the job queued through ComfyUI's prompt queue; the handler
then waits for the job's history entry, woken by each queue change (with a short tick to notice a client that has
gone), and answers with the images. A client that disconnects has its job taken out of the queue, or interrupted,
and its history entry deleted. At most DALLE_NODES_API_MAX_JOBS API jobs wait at once; more get 429. The routes keep
nothing between requests but that count, so one ComfyUI per GPU behind any load balancer serves them
(deploy/haproxy.cfg). Health, live and metrics need no key: they tell no prompt, key or path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from . import access, answers, bodies, comfy_server, model_templates, readiness, settings, streaming, uploads
from . import metrics as api_metrics
from .errors import ApiError
from .metrics import HUNG_UP, Load
from .requests import ImageRequest, parse

UPLOAD_SUBFOLDER = "dalle-nodes-api"  # in ComfyUI's input folder; each upload is deleted when its job ends
USER_MODELS = Path("dalle-nodes") / "openai-models"  # under ComfyUI's user directory
TICK_S = 0.5  # how soon a client that disconnected while its job waits is noticed
FLUSH_LIMIT_S = 60  # how long an answer may take to leave for a client that reads slowly
log = logging.getLogger("dalle_nodes.openai_api")


class _State:
    """This process's settings and the jobs its API requests wait on."""

    def __init__(self, keys: tuple[bytes, ...], max_jobs: int, public_url: str = ""):
        self.keys = keys
        self.max_jobs = max_jobs
        self.public_url = public_url
        self.jobs: set[str] = set()
        self.wakeups: set[asyncio.Event] = set()
        self.cleanups: set[asyncio.Task] = set()
        self.decoding = asyncio.Semaphore(2)
        self.registered = False
        self.draining = False  # SIGTERM came: no new jobs
        self.answering = 0  # image requests between arrival and their answer's last byte handed to the socket
        self.metrics = api_metrics.create()

    def wake(self) -> None:
        for event in self.wakeups:
            event.set()


_state = _State((), settings.DEFAULT_MAX_JOBS)


def register() -> None:
    """Add the routes to ComfyUI's route table (before it starts serving) and hook its queue's changes; once."""
    global _state
    if _state.registered:
        return
    _state = _State(access.keys_from(os.environ), settings.max_jobs(), settings.public_url())
    _state.registered = True
    comfy_server.on_queue_change(_state.wake)
    readiness.Drain(_stop_taking_jobs, lambda: _state.answering, readiness.drain_seconds()).install()
    table = comfy_server.route_table()
    for endpoint in ("generations", "edits", "variations"):
        table.post(f"/v1/images/{endpoint}")(_endpoint(endpoint))
    table.get("/v1/models")(_guarded("models", list_models))
    table.get("/v1/models/{model}")(_guarded("model", get_model))
    table.get("/v1/health")(_guarded("health", health, keyed=False))
    table.get("/v1/live")(_guarded("live", live, keyed=False))
    table.get("/v1/metrics")(_guarded("metrics", metrics, keyed=False))
    if access.set_but_empty(os.environ):
        log.error(
            "dalle-nodes: %s is set but holds no key: every /v1 request is refused until it does.", access.KEY_VARIABLE
        )
    elif _state.keys:
        log.info("dalle-nodes: OpenAI images API at /v1 (and /api/v1); %d API key(s) required.", len(_state.keys))
    else:
        log.warning(
            "dalle-nodes: OpenAI images API at /v1 (and /api/v1) is open to anyone who can reach this server, like "
            "the rest of ComfyUI: set %s to require a key.",
            access.KEY_VARIABLE,
        )


def _stop_taking_jobs() -> None:
    _state.draining = True


def _guarded(route: str, handler: Callable[[web.Request], Awaitable[web.Response]], keyed: bool = True) -> Callable:
    """The handler behind the key check (unless not `keyed`), with every error answered in OpenAI's shape (the server
    keeps serving) and every answer counted in the metrics under `route`."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        response = await _answer(request, handler, keyed)
        _state.metrics.answered(route, response.status)
        return response

    return guarded


def _answered_in_full(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Callable:
    """An image route's handler counted in `_state.answering` while it runs, and while the server drains, until its
    answer has left for the client, so that SIGTERM's drain never stops the server with a finished image unsent.
    Otherwise aiohttp sends the answer after ComfyUI's middlewares (CORS headers, compression) have seen it."""

    async def answering(request: web.Request) -> web.StreamResponse:
        _state.answering += 1
        try:
            response = await handler(request)
            if _state.draining and response.status != HUNG_UP:
                with contextlib.suppress(ConnectionError):  # the client left meanwhile: nothing more to send
                    await response.prepare(request)
                    await response.write_eof()
                    await _flushed(request)
            return response
        finally:
            _state.answering -= 1

    return answering


async def _flushed(request: web.Request) -> None:
    """Wait until the transport has handed every byte to the socket, the client has gone, or FLUSH_LIMIT_S passed
    (a client that stops reading holds no drain longer)."""
    deadline = time.monotonic() + FLUSH_LIMIT_S
    while (transport := request.transport) is not None and transport.get_write_buffer_size():
        if time.monotonic() > deadline:
            return
        await asyncio.sleep(0.05)


async def _answer(request: web.Request, handler: Callable, keyed: bool) -> web.StreamResponse:
    try:
        if keyed:
            access.check(request.headers.get("Authorization"), _state.keys)
        return await handler(request)
    except ApiError as error:
        return web.json_response(error.body(), status=error.status, headers=error.headers())
    except ConnectionResetError:  # the client left while its request was read: nobody to answer
        return web.Response(status=HUNG_UP)
    except Exception:
        log.exception("dalle-nodes: the images API failed on %s %s", request.method, request.path)
        error = ApiError(500, "The server failed on this request (an internal error; its log has the details).")
        return web.json_response(error.body(), status=500, headers=error.headers())


def _endpoint(endpoint: str) -> Callable:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await images(request, endpoint)

    return _answered_in_full(_guarded(endpoint, handler))


async def catalogue() -> model_templates.Catalogue:
    """The shipped models, then the user's, looked at anew for each request (a dropped-in or changed file needs no
    restart; each version of a file is read once), in a worker thread: a slow disk never holds up the server."""
    user = comfy_server.user_folder() / USER_MODELS
    folders = [model_templates.SHIPPED_MODELS, user]
    return await asyncio.to_thread(model_templates.load_catalogue, folders, settings.shipped_aliases())


async def list_models(request: web.Request) -> web.Response:
    """The models, then their aliases (each listed as a model of its own, with alias_of)."""
    models = await catalogue()
    data = [answers.model_entry(model) for model in models.models.values()]
    data += [answers.model_entry(models.get(alias), alias) for alias in models.aliases]
    return web.json_response({"object": "list", "data": data})


async def get_model(request: web.Request) -> web.Response:
    models, name = await catalogue(), request.match_info["model"]
    return web.json_response(answers.model_entry(models.get(name), name if name in models.aliases else None))


async def _load() -> tuple[Load, str, model_templates.Catalogue]:
    """The worker's load, its readiness state and its models, as they are now."""
    models = await catalogue()
    state = readiness.status(models, len(_state.jobs), _state.max_jobs, _state.draining)
    running, queued = comfy_server.queue_lengths()
    return Load(running, queued, len(_state.jobs), _state.max_jobs, state == readiness.READY), state, models


async def health(request: web.Request) -> web.Response:
    """Readiness for a load balancer: 200 while this worker takes a job, 503 while it is full, shutting down or has
    no models to serve, with its load; a request with a valid key also gets the models and the descriptions' problems
    (file names, never paths)."""
    load, state, models = await _load()
    body = {"status": state, "queue": load.queued, "running": load.running, "api_jobs": load.api_jobs}
    body["limit"] = load.limit
    if access.allows(request.headers.get("Authorization"), _state.keys):
        body |= {"models": sorted(models.models), "problems": models.problems}
    return web.json_response(body, status=200 if load.ready else 503)


async def live(request: web.Request) -> web.Response:
    """Liveness: 200 while the process serves, whatever its state."""
    return web.json_response({"status": "live"})


async def metrics(request: web.Request) -> web.Response:
    load = (await _load())[0]
    return web.Response(body=_state.metrics.text(load), headers={"Content-Type": _state.metrics.content_type})


async def images(request: web.Request, endpoint: str) -> web.StreamResponse:
    _check_room()  # before reading and decoding anything
    if endpoint == "generations":
        fields, files = await bodies.read_json(request), {}
    else:
        fields, files = await bodies.read_form(request, endpoint)
    image_request = parse(endpoint, fields, from_form=endpoint != "generations")
    model = (await catalogue()).get(image_request.model)
    image_request = model.resolved(image_request)
    variant = model.variant(image_request)
    model_templates.check_fits(image_request, variant)
    options = image_request.options
    quality = variant.quality_level(options.quality, model.id)
    url = image_request.response_format == "url"
    link = answers.view_link(request, _state.public_url) if url else None  # a bad Host: refused now
    async with _state.decoding:  # a few at a time: a 4096 px picture takes about 250 MB to decode
        picture = await asyncio.to_thread(
            uploads.picture_for, endpoint, files, image_request.width
        )  # off the event loop: it takes a second or two
    _check_room()
    job = _Job(request, image_request, variant, variant.settings(quality, options.style), picture, model.id)
    if options.stream:
        stream = streaming.Stream(image_request, variant, quality)
        answer = await streaming.answer(request, stream, str(uuid.uuid4()), job.run)
        return answer or web.Response(status=HUNG_UP)
    entry = await job.run(str(uuid.uuid4()))
    if entry is None:
        return web.Response(status=HUNG_UP)  # nobody reads it
    if not entry:
        raise ApiError(500, "The job was taken out of ComfyUI's queue (or its history cleared) before it finished.")
    data = await asyncio.to_thread(answers.image_data, link, variant, entry, image_request)  # reads up to 10 files
    body = {"created": int(time.time()), "data": data} | answers.response_fields(image_request, quality)
    return web.json_response(body)


class _Job:
    """One request's job: its workflow filled in, queued, waited for until it ends or its client leaves."""

    def __init__(
        self,
        client: web.Request,
        request: ImageRequest,
        variant: model_templates.Variant,
        settings: dict,
        picture: bytes | None,
        model: str,
    ):
        self.client, self.request, self.variant, self.settings = client, request, variant, settings
        self.picture, self.model = picture, model

    async def run(self, prompt_id: str) -> dict | None:
        """Queue the job as `prompt_id`, hold its place, wait: its history entry ({} if none was kept), or None once
        its client is seen gone, its job then taken away."""
        request = self.request
        seed = request.seed if request.seed is not None else secrets.randbits(63)
        slot = uuid.uuid4().hex  # held from here until the job has left the queue
        _state.jobs.add(slot)
        upload = None
        try:
            if self.picture is not None:  # named first, so that a cancelled write is still cleaned up by _release
                upload = f"{UPLOAD_SUBFOLDER}/{uuid.uuid4().hex}.png"
                await asyncio.to_thread(_save_upload, upload, self.picture)  # off the event loop
            values = model_templates.request_values(request, self.variant, seed, upload)
            graph = model_templates.unguessable(model_templates.fill(self.variant, values, self.settings))
            await comfy_server.queue_prompt(graph, _tag(request, self.model, seed), prompt_id)
        except BaseException as error:
            _release(slot, upload)
            if isinstance(error, comfy_server.Refused):
                raise ApiError(
                    500, f"ComfyUI refused the model's workflow: {error}", "model", "workflow_refused"
                ) from None
            raise
        log.info("dalle-nodes: API %s (%s) queued as %s", request.endpoint, self.model, prompt_id)
        queued = time.monotonic()
        entry = None
        try:
            entry = await _finished(self.client, prompt_id)
        finally:
            if entry is None:  # the client went away (or the handler was cancelled): leave no job behind
                _abandon(prompt_id, slot, upload)
            else:
                _release(slot, upload)
        if entry is not None:
            _state.metrics.finished(self.model, time.monotonic() - queued)
        return entry


def _check_room() -> None:
    if _state.draining:
        raise ApiError(
            503,
            "This server is shutting down and takes no new job: retry, and another server takes it.",
            code="shutting_down",
        )
    if len(_state.jobs) >= _state.max_jobs:
        raise ApiError(
            429,
            f"{len(_state.jobs)} API jobs are already waiting here, the most this server takes "
            f"({settings.MAX_JOBS_VARIABLE}): retry shortly.",
            code="rate_limit_exceeded",
        )


def _tag(request: ImageRequest, model: str, seed: int) -> dict:
    """Marks the job in the queue and history as an API job (what the UI and GET /queue show beside the graph): the
    model as requested (maybe an alias) and the model that ran."""
    tag = {"endpoint": request.endpoint, "model": request.model, "seed": seed}
    return {"dalle_nodes_api": tag | ({"runs": model} if model != request.model else {})}


def _save_upload(upload: str, picture: bytes) -> None:
    """Write the checked picture in the input folder as `upload` (its fresh random name in the upload subfolder, the
    name Load Image takes: "subfolder/file.png")."""
    path = comfy_server.input_folder() / upload
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(picture)


def _release(slot: str, upload: str | None) -> None:
    """The job has left the queue: free its place and delete its upload."""
    _state.jobs.discard(slot)
    if upload is not None:
        with contextlib.suppress(FileNotFoundError):
            (comfy_server.input_folder() / upload).unlink()


async def _finished(request: web.Request, prompt_id: str) -> dict | None:
    """The job's history entry once it has ended ({} if none was kept); None as soon as the client is seen gone."""
    return await _ended(prompt_id, lambda: request.transport is None or request.transport.is_closing())


async def _ended(prompt_id: str, give_up: Callable[[], bool]) -> dict | None:
    """Wait, woken by each change of ComfyUI's queue (and at least every TICK_S), until the job has left the queue:
    its history entry then, or {} if none was kept (history cleared); None once `give_up()` says so."""
    event = asyncio.Event()
    _state.wakeups.add(event)
    try:
        while True:
            event.clear()
            waiting = comfy_server.in_queue(prompt_id)  # before the history: a job leaves the queue with its entry
            entry = comfy_server.history(prompt_id)
            if entry is not None or not waiting:
                return entry or {}
            if give_up():
                return None
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), TICK_S)
    finally:
        _state.wakeups.discard(event)


def _abandon(prompt_id: str, slot: str, upload: str | None) -> None:
    """Free the place of a job whose client has gone, take the job out of the queue (or interrupt it), then, once
    it has ended, delete its history entry and upload. The place is free at once: a balancer sends the next request
    as soon as this one's connection closes, and it should not get a 429 while the old job is being interrupted."""
    _state.jobs.discard(slot)

    async def clean_up() -> None:
        try:
            outcome = comfy_server.cancel(prompt_id)
            if outcome != "removed":
                await _ended(prompt_id, lambda: False)
                comfy_server.forget(prompt_id)
            log.info("dalle-nodes: an API client went away; its job %s was %s and forgotten.", prompt_id, outcome)
        finally:
            _release(slot, upload)

    task = asyncio.get_running_loop().create_task(clean_up())
    _state.cleanups.add(task)
    task.add_done_callback(_state.cleanups.discard)
