"""pipelines/masks.py's keep_mask against diffusers' own mask preparation (KandinskyV22InpaintPipeline's
prepare_mask_and_masked_image, nearest sampling at latent size, prepare_mask): the reference's keep-mask exactly
wherever it repaints every marked pixel, and a thin stroke between its sample points widened to the cells it
touches instead of dropped."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dalle_nodes.pipelines import masks
from edit_inputs import rectangle_mask, soft_mask

HEIGHT, WIDTH = 64, 128
LATENT = (HEIGHT // 8, WIDTH // 8)


def reference_keep(mask: torch.Tensor) -> torch.Tensor:
    """The keep-mask [B, 1, h, w] KandinskyV22InpaintPipeline feeds its UNet for a MASK [B, H, W] (1 = repaint)."""
    from diffusers.pipelines.kandinsky2_2.pipeline_kandinsky2_2_inpainting import (
        prepare_mask,
        prepare_mask_and_masked_image,
    )

    image = torch.zeros(mask.shape[0], 3, *mask.shape[1:])
    keep, _ = prepare_mask_and_masked_image(image, mask.clone()[:, None], *mask.shape[1:])
    return prepare_mask(F.interpolate(keep, LATENT, mode="nearest"))


def touched_cells(mask: torch.Tensor) -> torch.Tensor:
    """The 8x8 cells [B, 1, h, w] holding a pixel at least half on."""
    return F.max_pool2d((mask >= 0.5).float()[:, None], 8)


def stroke(kind: str) -> torch.Tensor:
    """A 3 px stroke (or dot) that misses every pixel the reference samples (rows and columns 0, 8, 16, …)."""
    mask = torch.zeros(1, HEIGHT, WIDTH)
    if kind == "horizontal":
        mask[:, 9:12, 20:100] = 1
    elif kind == "vertical":
        mask[:, 3:60, 41:44] = 1
    elif kind == "diagonal":
        y, x = torch.meshgrid(torch.arange(HEIGHT), torch.arange(WIDTH), indexing="ij")
        mask[0] = ((x - y >= 3) & (x - y <= 5)).float()  # x − y is a multiple of 8 at every sample point
    else:
        mask[:, 26:29, 50:53] = 1
    return mask


STROKES = ("horizontal", "vertical", "diagonal", "dot")


@pytest.mark.parametrize("kind", STROKES)
def test_a_thin_stroke_between_the_sample_points_is_repainted(kind, caplog) -> None:
    mask = stroke(kind)
    assert torch.equal(reference_keep(mask), torch.ones(1, 1, *LATENT))  # the reference repaints nothing
    with caplog.at_level("INFO"):
        keep = masks.keep_mask(mask, HEIGHT, WIDTH, LATENT)
    cells = touched_cells(mask)
    assert not keep[cells.bool()].any(), "every cell the stroke touches is repainted"
    # ... and grown as the reference grows a mask that marks those whole cells
    assert torch.equal(keep, reference_keep(cells.repeat_interleave(8, 2).repeat_interleave(8, 3)[:, 0]))
    assert "widened to the grid's cells" in caplog.text and "8 px grid" in caplog.text


def honoured_masks() -> dict[str, torch.Tensor]:
    """Masks whose every marked pixel the reference repaints: blocks, a soft disc, a rectangle off the grid, a
    stroke 8 px wide, and a batch of two of them."""
    wide = torch.zeros(1, HEIGHT, WIDTH)
    wide[:, 20:28, 5:120] = 1
    return {
        "rectangle": rectangle_mask(HEIGHT, WIDTH),
        "soft": soft_mask(HEIGHT, WIDTH),
        "8 px stroke": wide,
        "everything": torch.ones(1, HEIGHT, WIDTH),
        "batch": torch.cat([soft_mask(HEIGHT, WIDTH), wide]),
    }


@pytest.mark.parametrize("name", list(honoured_masks()))
def test_a_mask_the_reference_honours_gets_its_keep_mask_exactly(name, caplog) -> None:
    mask = honoured_masks()[name]
    expected = reference_keep(mask)
    assert not expected[touched_cells(mask).bool()].any()  # the reference repaints every marked pixel
    with caplog.at_level("INFO"):
        assert torch.equal(masks.keep_mask(mask, HEIGHT, WIDTH, LATENT), expected)
    assert "widened" not in caplog.text


def test_a_stroke_beside_a_block_adds_its_cells_and_keeps_the_rest_as_the_reference() -> None:
    """Only the cells the reference misses are added: its keep-mask stays wherever the stroke's grown cells are
    not, row by row in a batch."""
    block = rectangle_mask(HEIGHT, WIDTH)
    line = torch.zeros(1, HEIGHT, WIDTH)
    line[:, 50:53, 10:13] = 1  # a dot below and left of the block
    both = torch.cat([block, block.maximum(line)])
    keep = masks.keep_mask(both, HEIGHT, WIDTH, LATENT)
    assert torch.equal(keep[:1], reference_keep(block))
    dot_alone = reference_keep(touched_cells(line).repeat_interleave(8, 2).repeat_interleave(8, 3)[:, 0])
    assert torch.equal(keep[1:], reference_keep(block) * dot_alone)
    assert (keep[1:] != reference_keep(both[1:])).any()  # the reference drops the dot


def test_soft_strokes_count_from_half_on() -> None:
    faint, half = stroke("dot") * 0.49, stroke("dot") * 0.5
    assert torch.equal(masks.keep_mask(faint, HEIGHT, WIDTH, LATENT), torch.ones(1, 1, *LATENT))
    assert not masks.keep_mask(half, HEIGHT, WIDTH, LATENT).all()


def test_a_larger_mask_is_widened_after_it_is_fitted_to_the_picture() -> None:
    """A mask drawn on the full-size photo: resized to the picture first, then its strokes widened there."""
    large = F.interpolate(stroke("vertical")[:, None], scale_factor=2, mode="nearest")[:, 0]
    keep = masks.keep_mask(large, HEIGHT, WIDTH, LATENT)
    fitted = masks.fit(large[:, None], HEIGHT, WIDTH, "mask")[:, 0]
    assert not keep[touched_cells(fitted).bool()].any() and keep.any()


@pytest.mark.parametrize("mask", [torch.zeros(1, HEIGHT, WIDTH), torch.full((1, HEIGHT, WIDTH), 0.49)])
def test_a_mask_below_the_threshold_everywhere_marks_nothing(mask) -> None:
    assert masks.marks_nothing(mask)
    assert masks.repaints_nothing(masks.keep_mask(mask, HEIGHT, WIDTH, LATENT))
    assert not masks.marks_nothing(stroke("dot"))


def test_a_one_pixel_line_in_a_larger_mask_is_not_averaged_away() -> None:
    """A 1 px line drawn on a photo twice the picture's size: resizing the mask averages it to 0.375, below the
    threshold, so its cells are found at the mask's own resolution."""
    large = torch.zeros(1, 2 * HEIGHT, 2 * WIDTH)
    large[0, 2 * 8 * 2 + 5, :] = 1  # one row of the large mask, inside latent row 2
    assert masks.fit(large[:, None], HEIGHT, WIDTH, "mask").max() < 0.5  # the premise: the resize loses it
    keep = masks.keep_mask(large, HEIGHT, WIDTH, LATENT)
    assert not keep[0, 0, 2].any() and keep[0, 0, 5:].all()
