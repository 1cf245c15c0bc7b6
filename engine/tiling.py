"""Overlapping tiles for image models whose activations do not fit at full size: planning, seam-free blending,
and shrinking the plan after running out of memory.

A model maps a tile of `H × W` input pixels to `H·s × W·s` output pixels (a GAN upscaler: RGB to RGB, s = 4; the
MoVQ decoder: 4 latent channels to RGB, s = 8). Tiles overlap; each pair of neighbours is cross-faded over a band
in the middle of their overlap, so every output pixel comes from tiles that saw at least a quarter of the overlap
of context on that side, and the blend weights sum to exactly one everywhere. A model whose output pixel depends
only on nearby input (convolutions) is then reproduced without seams; one with global operations (GroupNorm
statistics, attention over all positions) is approximated.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch

Result = TypeVar("Result")


@dataclass(frozen=True)
class TilePlan:
    """Tile height and width in input pixels, overlap between neighbours, tiles per forward pass, and the grid
    that tile corners and the image size must sit on (2 or 4 for pixel-unshuffle models, whose output depends on
    how the input lines up with the unshuffle grid)."""

    height: int
    width: int
    overlap: int
    batch: int
    align: int = 1

    def shrunk(self) -> TilePlan | None:
        """The next plan to try after running out of memory: one tile at a time, then halved tiles, down to 32
        pixels a side (tiles already smaller stay as they are; None once nothing shrinks)."""
        if self.batch > 1:
            return TilePlan(self.height, self.width, self.overlap, 1, self.align)
        height, width = (min(side, max(round_up(side // 2, self.align), 32)) for side in (self.height, self.width))
        if (height, width) == (self.height, self.width):
            return None
        return TilePlan(height, width, min(self.overlap, min(height, width) // 4), 1, self.align)


def round_up(value: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is at least `value`."""
    return -(-value // multiple) * multiple


def plan_tiles(height: int, width: int, max_pixels: int, overlap: int, align: int = 1) -> TilePlan:
    """The tiling of an image with the least total tile area whose tiles hold at most `max_pixels` each.

    Tiles need not be square: a 768 × 768 image under a 400k-pixel limit becomes two 768 × 400 tiles (4% extra
    work) rather than four 512² ones (78%).
    """
    height, width = round_up(height, align), round_up(width, align)

    def tile_length(size: int, parts: int) -> int:
        return size if parts == 1 else round_up(math.ceil((size + (parts - 1) * overlap) / parts), align)

    best: tuple[int, int, int] | None = None
    for rows in range(1, 65):
        tile_h = tile_length(height, rows)
        if rows > 1 and tile_h < 4 * overlap:  # the cross-fade bands of a tile's two sides would meet
            break
        for cols in range(1, 65):
            tile_w = tile_length(width, cols)
            if cols > 1 and tile_w < 4 * overlap:
                break
            if tile_h * tile_w <= max_pixels:
                area = len(axis_starts(height, tile_h, overlap, align)) * len(
                    axis_starts(width, tile_w, overlap, align)
                )
                area *= tile_h * tile_w
                if best is None or area < best[0]:
                    best = (area, tile_h, tile_w)
                break  # more columns only add overlap for this row count
    if best is None:  # nothing fits: the smallest sensible tiles
        return TilePlan(min(height, 64), min(width, 64), min(overlap, 16), 1, align)
    _, tile_h, tile_w = best
    return TilePlan(tile_h, tile_w, overlap, max(1, max_pixels // (tile_h * tile_w)), align)


def axis_starts(size: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Evenly spread tile starts along one axis, on the `align` grid (size and tile are multiples of it);
    neighbours overlap by at least `overlap`.

    Starts are rounded down to the grid; with a stride bound that is itself on the grid, no stride grows by it.
    """
    if size <= tile:
        return [0]
    step = max((tile - overlap) // align * align, align)  # on the grid, so rounding down never widens a stride
    count = math.ceil((size - tile) / step) + 1
    return [math.floor(i * (size - tile) / (count - 1) / align) * align for i in range(count)]


def axis_weights(size: int, tile: int, overlap: int, scale: int, align: int = 1) -> list[torch.Tensor]:
    """Per tile, its blend weight at each output pixel of the tile along one axis; they sum to one per pixel.

    Between neighbours the cross-fade band is half the nominal overlap wide and centred in their actual
    overlap, so each tile contributes only where it had a quarter of the overlap of context beyond the pixel.
    """
    starts = axis_starts(size, tile, overlap, align)
    length = min(size, tile)
    x = (torch.arange(size * scale, dtype=torch.float64) + 0.5) / scale  # output pixel centres, input units
    seams = [(nxt + start + length) / 2 for start, nxt in zip(starts, starts[1:], strict=False)]
    half_band = overlap / 4

    def fade_in(seam: float) -> torch.Tensor:
        if half_band == 0:
            return (x >= seam).double()
        return ((x - seam + half_band) / (2 * half_band)).clamp(0, 1)

    weights = []
    for i in range(len(starts)):
        w = torch.ones_like(x)
        if i > 0:
            w = w * fade_in(seams[i - 1])
        if i < len(starts) - 1:
            w = w * (1 - fade_in(seams[i]))
        weights.append(w)
    total = torch.stack(weights).sum(0)  # one, except where a small tile's two bands meet: normalise there
    return [
        (w / total)[start * scale : (start + length) * scale].float() for w, start in zip(weights, starts, strict=True)
    ]


def pad_to_grid(images: torch.Tensor, align: int) -> torch.Tensor:
    """Pad the bottom and right edges to a multiple of `align` the way spandrel does: mirrored where the image is
    large enough, repeated edge pixels beyond that."""
    height, width = images.shape[-2:]
    pad_h = round_up(height, align) - height
    pad_w = round_up(width, align) - width
    mirror_h, mirror_w = min(pad_h, height - 1), min(pad_w, width - 1)
    if mirror_h or mirror_w:
        images = torch.nn.functional.pad(images, (0, mirror_w, 0, mirror_h), mode="reflect")
    if pad_h > mirror_h or pad_w > mirror_w:
        images = torch.nn.functional.pad(images, (0, pad_w - mirror_w, 0, pad_h - mirror_h), mode="replicate")
    return images


def run_tiled(
    forward: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    scale: int,
    plan: TilePlan,
    finish: Callable[[int, torch.Tensor], None],
    on_batch: Callable[[], None] = lambda: None,
    fixed_batch: bool = False,
) -> None:
    """Run `forward` ([N, C, h, w] → [N, C', h·s, w·s]) over [B, C, H, W] images in tiles, `plan.batch` at a time.

    Each image is assembled in float32 on the images' device, with the channels the forward gives, and handed to
    `finish(index, [C', H·s, W·s])` as soon as its last tile is in, so only the images in flight are held at full
    size. `fixed_batch` pads the last batch to full size, so that a compiled forward sees one shape only.
    """
    count, _, height, width = images.shape
    images = pad_to_grid(images, plan.align)
    padded_h, padded_w = images.shape[-2:]
    tile_h, tile_w = min(padded_h, plan.height), min(padded_w, plan.width)
    ys = axis_starts(padded_h, tile_h, plan.overlap, plan.align)
    xs = axis_starts(padded_w, tile_w, plan.overlap, plan.align)
    wy = [w.to(images.device) for w in axis_weights(padded_h, tile_h, plan.overlap, scale, plan.align)]
    wx = [w.to(images.device) for w in axis_weights(padded_w, tile_w, plan.overlap, scale, plan.align)]
    tiles = [(b, i, j) for b in range(count) for i in range(len(ys)) for j in range(len(xs))]
    batch_size = min(plan.batch, len(tiles))

    canvases: dict[int, torch.Tensor] = {}
    for first in range(0, len(tiles), batch_size):
        chunk = tiles[first : first + batch_size]
        batch = torch.stack([images[b, :, ys[i] : ys[i] + tile_h, xs[j] : xs[j] + tile_w] for b, i, j in chunk])
        if fixed_batch and len(chunk) < batch_size:
            batch = torch.cat([batch, batch[-1:].expand(batch_size - len(chunk), -1, -1, -1)])
        out = forward(batch)
        for (b, i, j), tile in zip(chunk, out[: len(chunk)], strict=True):
            if b not in canvases:
                canvases[b] = images.new_zeros(tile.shape[0], padded_h * scale, padded_w * scale, dtype=torch.float32)
            region = canvases[b][:, ys[i] * scale : (ys[i] + tile_h) * scale, xs[j] * scale : (xs[j] + tile_w) * scale]
            region.addcmul_(tile, wy[i][:, None] * wx[j][None, :])
            if (i, j) == (len(ys) - 1, len(xs) - 1):
                finish(b, canvases.pop(b)[:, : height * scale, : width * scale])
        on_batch()


def tile_count(height: int, width: int, plan: TilePlan) -> int:
    """Tiles per image under `plan` (for progress bars)."""
    height, width = round_up(height, plan.align), round_up(width, plan.align)
    rows = axis_starts(height, min(height, plan.height), plan.overlap, plan.align)
    return len(rows) * len(axis_starts(width, min(width, plan.width), plan.overlap, plan.align))


def shrink_on_oom(
    attempt: Callable[[TilePlan], Result],
    plan: TilePlan,
    is_oom: Callable[[BaseException], bool],
    on_retry: Callable[[TilePlan, TilePlan], None],
) -> tuple[Result, TilePlan]:
    """`attempt(plan)`, retried with ever smaller plans (TilePlan.shrunk) while it runs out of memory, as `is_oom`
    tells; returns its result and the plan that worked, so later images can start there.

    `on_retry(failed, next)` runs between tries, outside the exception handler, so the failed attempt's tensors
    (held by the traceback until then) are already free: the place to empty allocator caches. Once no smaller plan
    is left, or on any other error, the error propagates.
    """
    while True:
        try:
            return attempt(plan), plan
        except Exception as error:
            if not is_oom(error) or (smaller := plan.shrunk()) is None:
                raise
        on_retry(plan, smaller)
        plan = smaller
