"""An edit's picture, mask and outpaint borders as users give them → the IMAGE canvas and MASK (1 = repaint) that
the inpainting path reads: the mask conventions, the resizing to multiples of 64, the borders, and the mistakes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dalle_nodes.engine.images import from_pil
from dalle_nodes.pipelines.edit_pictures import prepare

STEP, MAX_SIDE = 64, 4096


def photo(width: int, height: int, mode: str = "RGB") -> Image.Image:
    pixels = np.random.default_rng(width * height).integers(0, 256, (height, width, len(mode)), dtype=np.uint8)
    return Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode)


def box_mask(width: int, height: int, box: tuple[int, int, int, int], inside: int = 255, outside: int = 0):
    mask = Image.new("L", (width, height), outside)
    mask.paste(inside, box)
    return mask


def edit(image, mask=None, outpaint=None) -> tuple[torch.Tensor, torch.Tensor]:
    return prepare(image, mask, outpaint, STEP, MAX_SIDE)


def test_a_mask_repaints_where_it_is_white() -> None:
    picture, mask = photo(128, 64), box_mask(128, 64, (10, 20, 50, 40), inside=255)
    mask.putpixel((0, 0), 100)  # soft values stay soft here: the reference binarises them at 0.5 later
    pixels, repaint = edit(picture, mask)
    assert torch.equal(pixels, from_pil(picture))
    assert torch.equal(repaint, torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255)[None])
    assert repaint.shape == (1, 64, 128)


def test_transparent_repaints_in_a_mask_or_a_picture_without_one() -> None:
    """OpenAI's convention (and ComfyUI's Load Image MASK = 1 − alpha); an RGBA mask that is opaque everywhere is read
    by its luminance instead, as a mask exported with an alpha channel is meant."""
    hole = box_mask(128, 64, (10, 20, 50, 40), inside=0, outside=255)  # alpha: 0 in the hole
    expected = 1 - torch.from_numpy(np.asarray(hole, dtype=np.float32) / 255)[None]
    rgba = photo(128, 64)
    rgba.putalpha(hole)
    pixels, from_picture = edit(rgba)
    assert torch.equal(pixels, from_pil(rgba.convert("RGB")))
    assert torch.equal(from_picture, expected)
    mask = Image.new("RGBA", (128, 64), (0, 0, 0, 255))
    mask.putalpha(hole)
    assert torch.equal(edit(photo(128, 64), mask)[1], expected)
    opaque = box_mask(128, 64, (10, 20, 50, 40)).convert("RGBA")
    assert torch.equal(edit(photo(128, 64), opaque)[1], expected)
    palette = rgba.convert("RGB").quantize(16)
    palette.info["transparency"] = palette.getpixel((20, 30))  # the colour at the hole is transparent everywhere
    assert edit(palette)[1][0, 30, 20] == 1


def test_the_mask_decides_over_the_pictures_transparency() -> None:
    rgba = photo(64, 64)
    rgba.putalpha(0)
    assert edit(rgba, box_mask(64, 64, (0, 0, 8, 8)))[1].sum() == 64


def test_nothing_to_edit_is_refused() -> None:
    opaque = photo(64, 64, "RGBA")
    opaque.putalpha(255)
    for picture in (photo(64, 64), opaque):
        with pytest.raises(ValueError, match="no transparent pixels, and no mask or outpaint was given: there is"):
            edit(picture)


def test_sides_off_the_64_grid_are_resized_to_the_nearest_multiples(caplog) -> None:
    picture, mask = photo(500, 333), box_mask(500, 333, (0, 0, 250, 333))
    with caplog.at_level("WARNING"):
        pixels, repaint = edit(picture, mask)
    assert pixels.shape == (1, 320, 512, 3) and repaint.shape == (1, 320, 512)
    assert "The picture is 500x333 px" in caplog.text and "resized to 512x320" in caplog.text
    assert repaint[0, :, :250].min() > 0.99 and repaint[0, :, 262:].max() < 0.01  # the mask went along
    assert 0 <= pixels.min() and pixels.max() <= 1
    assert edit(photo(40, 96), box_mask(40, 96, (0, 0, 8, 8)))[0].shape == (1, 128, 64, 3)  # at least 64, halves up


def test_a_mask_must_have_the_pictures_aspect_ratio() -> None:
    big = box_mask(256, 128, (20, 40, 100, 80))  # drawn on the picture at twice the size: resized
    resized = edit(photo(128, 64), big)[1]
    assert torch.equal(resized >= 0.5, edit(photo(128, 64), box_mask(128, 64, (10, 20, 50, 40)))[1] == 1)
    with pytest.raises(ValueError, match="The mask is 128x128, the picture 128x64: a mask must cover the picture"):
        edit(photo(128, 64), box_mask(128, 128, (0, 0, 8, 8)))


@pytest.mark.parametrize(
    "outpaint, sides",
    [(64, (64, 64, 64, 64)), ({"left": 128, "bottom": 64}, (128, 0, 0, 64)), ((0, 64, 192, 0), (0, 64, 192, 0))],
)
def test_outpaint_paints_new_borders(outpaint, sides) -> None:
    left, top, right, bottom = sides
    picture, mask = photo(128, 64), box_mask(128, 64, (10, 20, 50, 40))
    pixels, repaint = edit(picture, mask, outpaint)
    assert pixels.shape == (1, 64 + top + bottom, 128 + left + right, 3)
    inside = (slice(None), slice(top, top + 64), slice(left, left + 128))
    assert torch.equal(pixels[inside], from_pil(picture))
    assert torch.equal(repaint[inside], edit(picture, mask)[1])  # the picture's own mask inside the borders
    assert repaint.sum() == repaint[inside].sum() + repaint.numel() - 64 * 128  # 1 all over the borders
    assert torch.all(pixels[0, :top] == 0.5) and torch.all(pixels[0, :, :left] == 0.5)  # grey, as core pads


def test_outpaint_alone_keeps_the_whole_picture_and_adds_its_transparency() -> None:
    _, repaint = edit(photo(64, 64), outpaint={"right": 64})
    assert repaint[0, :, :64].max() == 0 and repaint[0, :, 64:].min() == 1
    rgba = photo(64, 64)
    rgba.putalpha(box_mask(64, 64, (0, 0, 8, 8), inside=0, outside=255))
    _, repaint = edit(rgba, outpaint={"right": 64})
    assert repaint.sum() == 64 + 64 * 64


@pytest.mark.parametrize(
    "outpaint, message",
    [
        ({"up": 64}, "outpaint has no side 'up': the sides are left, top, right, bottom"),
        ({"left": -64}, "The outpaint left must be a whole number of pixels, 0 to 4096 \\(got -64\\)"),
        ((0, 0, 64.0, 0), "The outpaint right must be a whole number of pixels"),
        ({"top": True}, "The outpaint top must be a whole number of pixels"),
        ("left=64", "outpaint takes pixels for every side \\(256\\), some sides"),
        ((64, 64), "outpaint takes pixels for every side"),
        (
            {"left": 100, "right": 100},
            "The outpaint left \\+ right adds 200 px: it must add a multiple of 64 \\(e.g. 192\\)",
        ),
        ({"top": 32}, "The outpaint top \\+ bottom adds 32 px: it must add a multiple of 64 \\(e.g. 64\\)"),
        ({"left": 4096}, "With its outpaint borders the picture would be 4224x64 px: up to 4096 px a side"),
    ],
)
def test_bad_outpaint_borders_are_refused(outpaint, message) -> None:
    with pytest.raises(ValueError, match=message):
        edit(photo(128, 64), outpaint=outpaint)


def test_pictures_are_pil_images_or_files(tmp_path) -> None:
    picture, mask = photo(64, 64), box_mask(64, 64, (0, 0, 8, 8))
    picture.save(tmp_path / "in.png")
    mask.save(tmp_path / "mask.png")
    from_files = edit(str(tmp_path / "in.png"), tmp_path / "mask.png")
    assert all(torch.equal(a, b) for a, b in zip(from_files, edit(picture, mask), strict=True))
    with pytest.raises(ValueError, match="The image must be a PIL image or an image file's path; got a ndarray"):
        edit(np.zeros((64, 64, 3)))
    with pytest.raises(ValueError, match="The mask is 64x5000 px: up to 4096 px a side is taken; downscale it first"):
        edit(picture, Image.new("L", (64, 5000)))


def test_files_are_turned_upright_as_their_exif_says(tmp_path) -> None:
    """A phone's photo is stored sideways with an orientation tag; viewers (and mask editors) show it upright."""
    picture = photo(128, 64)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    picture.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "phone.jpg", exif=exif, quality=100)
    pixels = edit(tmp_path / "phone.jpg", outpaint=64)[0]
    assert pixels.shape == (1, 64 + 128, 128 + 128, 3)


def wide_grey(values: np.ndarray, mode: str) -> Image.Image:
    """Grey values in 0..1 as a 16-bit (I;16), 32-bit integer (I, as PNG readers give 16-bit files) or float (F)
    picture."""
    if mode == "F":
        return Image.fromarray(values.astype(np.float32))
    stored = np.round(values * 65535)
    return Image.fromarray(stored.astype(np.uint16 if mode == "I;16" else np.int32))


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_16_bit_and_float_grey_files_keep_their_values(mode) -> None:
    """PIL's own conversion would clip these at 255 (almost all white); they are scaled to 8 bits instead."""
    ramp = np.linspace(0, 1, 64 * 128).reshape(64, 128)
    picture, mask = wide_grey(ramp, mode), wide_grey(np.full((64, 128), 0.46), mode)
    assert (picture.mode, mask.mode) == (mode, mode)
    pixels, repaint = edit(picture, mask)
    assert torch.allclose(pixels[0, ..., 0], torch.from_numpy(ramp).float(), atol=0.5 / 255 + 1e-6)
    assert torch.allclose(repaint, torch.full_like(repaint, 0.46), atol=0.5 / 255 + 1e-6)  # below 0.5: keeps all


def test_a_one_pixel_line_survives_the_masks_resizes() -> None:
    """A white 1 px line on a mask twice the picture's size, and on a picture off the 64 grid: each resize would
    average it below 0.5 (an edit that silently repaints nothing); the prepared MASK still marks it."""
    line = np.zeros((128, 256), np.uint8)
    line[61, 10:240] = 255
    repaint = edit(photo(128, 64), Image.fromarray(line))[1]
    assert (repaint[0, 30] >= 0.5).sum() > 100 and (repaint >= 0.5).float().mean() < 0.03
    line = np.zeros((100, 90), np.uint8)
    line[:, 45] = 255
    repaint = edit(photo(90, 100), Image.fromarray(line))[1]  # resized to 64 x 128 with the picture
    assert repaint.shape == (1, 128, 64) and ((repaint >= 0.5).sum(dim=2) > 0).all()
