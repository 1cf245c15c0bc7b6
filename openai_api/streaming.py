"""stream=true answers: server-sent events as OpenAI's images API sends them.

`image_generation.partial_image` events (edits: `image_edit.partial_image`) carry the previews the sampler nodes
hand the job's watch (engine/partial_images.py), scaled to the requested size, in the requested format; then one
`image_generation.completed` event per image carries the final picture, the same bytes as a b64_json answer. An
error after the stream began arrives as an `error` event, which the `openai` client raises as an APIError.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from PIL import Image

from ..engine import partial_images
from .answers import encoded, image_bytes, response_fields, saved_images
from .errors import ApiError
from .model_templates import Variant
from .requests import ImageRequest

EVENT_PREFIX = {"generations": "image_generation", "edits": "image_edit"}
# Token usage is metered for OpenAI's GPT image models only; nothing is metered here
NO_USAGE = {"input_tokens": 0, "input_tokens_details": {"image_tokens": 0, "text_tokens": 0}}
NO_USAGE |= {"output_tokens": 0, "total_tokens": 0}
log = logging.getLogger("dalle_nodes.openai_api")
RunJob = Callable[[str], Awaitable[dict | None]]  # prompt id → its history entry, None if the client left


@dataclass(frozen=True)
class Stream:
    """One streamed request: what it asked for, the workflow that answers it and the quality it ran at."""

    request: ImageRequest
    variant: Variant
    quality: str | None

    def fields(self) -> dict:
        return response_fields(self.request, self.quality) | {"quality": self.quality or "auto"}

    def event(self, kind: str) -> str:
        return f"{EVENT_PREFIX[self.request.endpoint]}.{kind}"


async def answer(request: web.Request, stream: Stream, prompt_id: str, run: RunJob) -> web.StreamResponse | None:
    """Run the job (`run(prompt_id)`) and stream its partial and final images; None when the client left. Once the
    stream has begun, any failure (the workflow refused or failed, a picture that cannot be encoded) is sent as an
    error event."""
    loop = asyncio.get_running_loop()
    partials: asyncio.Queue = asyncio.Queue()
    count = stream.request.options.partial_images
    if count:
        partial_images.watch(prompt_id, count, lambda *item: loop.call_soon_threadsafe(partials.put_nowait, item))
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    try:
        await response.prepare(request)
        forwarding = loop.create_task(_forward(response, stream, partials))
        try:
            entry = await run(prompt_id)
        except BaseException:
            forwarding.cancel()
            raise
        if entry is None:
            forwarding.cancel()
            return None
        partials.put_nowait(None)  # the job has ended: send what it handed over, then the pictures
        await forwarding
        await _finish(response, stream, entry)
    except ConnectionError:  # the client left mid-stream (run() has taken its job away already, if it ran)
        if not response.prepared:
            raise
        return None
    except Exception as error:
        if not response.prepared:
            raise
        await _send_error(response, error)
    finally:
        partial_images.unwatch(prompt_id)
    return response


async def _send_error(response: web.StreamResponse, error: Exception) -> None:
    if not isinstance(error, ApiError):
        log.exception("dalle-nodes: the images API failed while streaming")
        error = ApiError(500, "The server failed on this request (an internal error; its log has the details).")
    with contextlib.suppress(ConnectionError):
        await _send(response, {"type": "error"} | error.body(), "error")
        await response.write_eof()


async def _finish(response: web.StreamResponse, stream: Stream, entry: dict) -> None:
    """The completed events, then the end of the stream; the job's failure → ApiError."""
    if not entry:
        raise ApiError(500, "The job was taken out of ComfyUI's queue (or its history cleared) before it finished.")
    pictures = await asyncio.to_thread(_final_pictures, stream, entry)
    for picture in pictures:
        body = {"type": stream.event("completed"), "b64_json": picture, "created_at": int(time.time())}
        await _send(response, body | stream.fields() | {"usage": NO_USAGE})
    await response.write_eof()


def _final_pictures(stream: Stream, entry: dict) -> list[str]:
    images = saved_images(stream.variant, entry)
    return [base64.b64encode(encoded(image_bytes(i), stream.request.options)).decode("ascii") for i in images]


async def _forward(response: web.StreamResponse, stream: Stream, partials: asyncio.Queue) -> None:
    """Send each partial image as it comes, until the None that follows the last."""
    while (item := await partials.get()) is not None:
        await _send_partial(response, stream, *item)


async def _send_partial(response: web.StreamResponse, stream: Stream, index: int, pictures: list) -> None:
    for picture in pictures:
        b64 = await asyncio.to_thread(_partial_b64, picture, stream.request)
        body = {"type": stream.event("partial_image"), "b64_json": b64, "created_at": int(time.time())}
        await _send(response, body | stream.fields() | {"partial_image_index": index})


def _partial_b64(picture: Image.Image, request: ImageRequest) -> str:
    """A preview scaled to the requested size, in the requested format."""
    scaled = picture.resize((request.width, request.height), Image.Resampling.BICUBIC)
    png = io.BytesIO()
    scaled.save(png, format="PNG", compress_level=1)
    return base64.b64encode(encoded(png.getvalue(), request.options)).decode("ascii")


async def _send(response: web.StreamResponse, body: dict, event: str | None = None) -> None:
    text = f"event: {event or body['type']}\ndata: {json.dumps(body)}\n\n"
    await response.write(text.encode("utf-8"))
