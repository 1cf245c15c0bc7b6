"""Partial images of running jobs, for the images API's streams (stream=true, partial_images=k).

The API asks for k partial images of a job before it queues it (`watch`); each sampler node that makes pictures
offers a preview after every step (`offer`) and the board renders only the k steps evenly spaced over the first
such node's steps, so a job nobody watches renders nothing. The watcher's `deliver` gets each rendered batch from
the job's thread (it hands them on to its event loop).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from PIL import Image

MAX_PARTIALS = 3  # OpenAI's bound on partial_images
Deliver = Callable[[int, list[Image.Image]], None]  # (partial index, one picture per image of the batch)
Render = Callable[[], torch.Tensor]  # -> [B, 3, h, w] in [-1, 1]


@dataclass
class _Watch:
    count: int
    deliver: Deliver
    node: str | None = None  # the sampler node whose steps the partials are spread over (the first to offer)
    sent: set[int] = field(default_factory=set)


_watches: dict[str, _Watch] = {}
_lock = threading.Lock()


def watch(job: str, count: int, deliver: Deliver) -> None:
    """Ask for `count` (1 to MAX_PARTIALS) partial images of `job` (a prompt id, before it is queued)."""
    if not 1 <= count <= MAX_PARTIALS:
        raise ValueError(f"count is 1 to {MAX_PARTIALS}, not {count}")
    with _lock:
        _watches[job] = _Watch(count, deliver)


def unwatch(job: str) -> None:
    with _lock:
        _watches.pop(job, None)


def watched(job: str | None) -> bool:
    return job is not None and job in _watches


def partial_steps(count: int, total: int) -> list[int]:
    """The steps (1 to `total`, the last excluded: its picture is the final one) after which the `count` partial
    images are taken, evenly spaced; fewer where the node runs fewer steps than that (OpenAI's clients are told a
    stream may end before all partials came)."""
    return sorted({round(total * (i + 1) / (count + 1)) for i in range(count)} - {0, total})


def offer(job: str | None, node: str, step: int, total: int, render: Render) -> None:
    """A sampler node of `job` finished `step` of `total` (1-based): render and deliver a partial image if this is
    one of the watched steps of the watching node."""
    with _lock:
        entry = _watches.get(job) if job is not None else None
        if entry is None:
            return
        if entry.node is None:
            entry.node = node
        steps = partial_steps(entry.count, total) if entry.node == node else []
        if step not in steps or step in entry.sent:
            return
        entry.sent.add(step)
        index = steps.index(step)
    entry.deliver(index, to_pictures(render()))


def to_pictures(images: torch.Tensor) -> list[Image.Image]:
    """[B, 3, h, w] in [-1, 1] → RGB pictures."""
    pixels = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(picture.permute(1, 2, 0).cpu().numpy()) for picture in pixels]
