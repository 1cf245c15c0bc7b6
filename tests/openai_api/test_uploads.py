"""openai_api/uploads.py: an edit's or variation's picture, checked as OpenAI documents it for dall-e-2 (a square PNG
under 4 MB, an edit's mask a PNG of the same size whose transparent pixels mark what to repaint) and written again
as the PNG ComfyUI's Load Image reads: RGB as sent, alpha = what to repaint."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from dalle_nodes.openai_api.errors import ApiError
from dalle_nodes.openai_api.uploads import (
    MAX_UPLOAD,
    PNG_SIGNATURE,
    check_upload_size,
    edit_picture,
    read_png,
    variation_picture,
)

SIDE = 32


def png(image: Image.Image, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", **options)
    return out.getvalue()


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def handmade_png(width: int, height: int, depth: int, color_type: int, rows: bytes, extra: bytes = b"") -> bytes:
    """A PNG written chunk by chunk: any header, whatever pixel data follows it."""
    header = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", header) + extra + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def noise(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def rgb(side: int = SIDE, seed: int = 0) -> Image.Image:
    return Image.fromarray(noise((side, side, 3), seed), "RGB")


def repaint_alpha(side: int = SIDE) -> np.ndarray:
    """Alpha with every kind of value: 0 (repaint), 1..254 on both sides of the threshold, and 255 (keep)."""
    alpha = np.full((side, side), 255, dtype=np.uint8)
    alpha[4:12, 6:20] = 0
    alpha[20, :] = np.arange(side, dtype=np.uint8) * 8
    alpha[24:26, 2:5] = 127
    alpha[27:29, 2:5] = 128
    return alpha


def rgba(alpha: np.ndarray, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.dstack([noise((*alpha.shape, 3), seed), alpha]), "RGBA")


def decoded(data: bytes) -> Image.Image:
    assert data.startswith(PNG_SIGNATURE)
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    image.load()
    return image


def refused(call, *args) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call(*args)
    return caught.value


@pytest.fixture
def no_decoding(monkeypatch):
    """Any pixel decoding fails the test: a refusal must come from the header alone."""

    def decode(self, *args, **kwargs):
        raise AssertionError(f"{self.size} pixels decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", decode)


# the file itself


def jpeg() -> bytes:
    out = io.BytesIO()
    rgb().save(out, format="JPEG")
    return out.getvalue()


@pytest.mark.parametrize(
    "data", [jpeg(), b"", b"GIF89a" + b"\0" * 64, b"\x89PNG\r\n"], ids=["jpeg", "empty", "gif", "cut"]
)
def test_not_a_png(data: bytes) -> None:
    error = refused(read_png, data, "image")
    assert (error.status, error.param, error.code) == (400, "image", "invalid_image_format")
    assert "not a PNG" in error.message


def test_jpeg_image_or_mask_in_an_edit() -> None:
    assert refused(variation_picture, jpeg()).param == "image"
    assert refused(edit_picture, jpeg(), png(rgba(repaint_alpha()))).param == "image"
    error = refused(edit_picture, png(rgba(repaint_alpha())), jpeg())
    assert (error.status, error.param, error.code) == (400, "mask", "invalid_image_format")


@pytest.mark.parametrize(("width", "height"), [(64, 32), (32, 64), (33, 32)])
def test_not_square(width: int, height: int) -> None:
    data = png(Image.new("RGBA", (width, height)))
    error = refused(read_png, data, "image")
    assert (error.status, error.param, error.code) == (400, "image", "invalid_image_size")
    assert f"{width}x{height} px" in error.message and "square" in error.message
    assert refused(edit_picture, png(rgba(repaint_alpha())), png(Image.new("RGBA", (width, height)))).param == "mask"


def test_square_png_is_decoded() -> None:
    image = read_png(png(rgb()), "image")
    assert image.size == (SIDE, SIDE)
    assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(rgb()))


def test_damaged_png() -> None:
    data = png(rgb(64))
    error = refused(read_png, data[: len(data) // 2], "mask")
    assert (error.status, error.param, error.code) == (400, "mask", "invalid_image")
    assert "damaged" in error.message


@pytest.mark.parametrize("side", [4097, 20_000, 100_000])
def test_huge_header_small_file_is_refused_undecoded(no_decoding, side: int) -> None:
    """A decompression bomb: a header claiming side × side pixels over a few bytes of data."""
    data = handmade_png(side, side, 8, 6, b"\0" * 64)
    assert len(data) < 200
    error = refused(read_png, data, "image")
    assert (error.status, error.param, error.code) == (400, "image", "invalid_image")
    assert "4096 px a side" in error.message


def test_largest_side_header_with_missing_data_is_damaged() -> None:
    error = refused(read_png, handmade_png(4096, 4096, 8, 2, b"\0" * 10), "image")
    assert (error.status, error.code) == (400, "invalid_image") and "damaged" in error.message


# the 4 MB limit


def test_check_upload_size_limit() -> None:
    assert MAX_UPLOAD == 4 * 2**20
    check_upload_size(MAX_UPLOAD - 1, "image")
    for size in (MAX_UPLOAD, MAX_UPLOAD + 1, 50 * 2**20):
        error = refused(check_upload_size, size, "mask")
        assert (error.status, error.param, error.code) == (413, "mask", "file_too_large")
        assert "under 4 MB" in error.message


@pytest.fixture(scope="module")
def big_png() -> bytes:
    """A valid square PNG over 4 MiB: noise does not compress."""
    data = png(Image.fromarray(noise((1200, 1200, 3), 9), "RGB"), compress_level=0)
    assert len(data) >= MAX_UPLOAD
    return data


def test_oversize_png_is_413_before_decoding(big_png: bytes, no_decoding) -> None:
    error = refused(read_png, big_png, "image")
    assert (error.status, error.param, error.code) == (413, "image", "file_too_large")
    assert f"{len(big_png) / 2**20:.1f} MB" in error.message
    assert refused(variation_picture, big_png).status == 413
    assert refused(edit_picture, big_png, None).param == "image"


def test_oversize_mask_is_413(big_png: bytes) -> None:
    picture = Image.new("RGBA", (1200, 1200), (9, 99, 199, 255))
    picture.putpixel((0, 0), (0, 0, 0, 0))
    error = refused(edit_picture, png(picture), big_png)
    assert (error.status, error.param) == (413, "mask")


# edits: what to repaint


def check_edit(output: bytes, picture: np.ndarray, alpha: np.ndarray) -> None:
    image = decoded(output)
    assert image.mode == "RGBA"
    pixels = np.asarray(image)
    assert np.array_equal(pixels[..., :3], picture), "the RGB sent must reach the workflow unchanged"
    assert np.array_equal(pixels[..., 3], alpha), "the alpha must be the one that marks what to repaint"


def test_edit_with_the_pictures_own_alpha() -> None:
    alpha = repaint_alpha()
    picture = rgba(alpha)
    check_edit(edit_picture(png(picture), None), np.asarray(picture)[..., :3], alpha)


def test_edit_with_an_la_picture() -> None:
    grey, alpha = noise((SIDE, SIDE), 1), repaint_alpha()
    output = edit_picture(png(Image.fromarray(np.dstack([grey, alpha]), "LA")), None)
    check_edit(output, np.repeat(grey[..., None], 3, axis=2), alpha)


def test_edit_with_a_palette_picture_and_trns() -> None:
    indices = noise((SIDE, SIDE), 2) % 16
    indices[3:9, 3:9] = 5
    palette = noise((256, 3), 3)
    picture = Image.fromarray(indices, "P")
    picture.putpalette(palette.flatten().tolist())
    output = edit_picture(png(picture, transparency=5), None)
    check_edit(output, palette[indices], np.where(indices == 5, 0, 255).astype(np.uint8))


def test_edit_with_an_rgb_picture_and_a_trns_colour_key() -> None:
    pixels = noise((SIDE, SIDE, 3), 4)
    pixels[pixels[..., 0] == 1] = (2, 0, 0)  # nothing else is (1, 2, 3)
    pixels[10:20, 5:9] = (1, 2, 3)
    output = edit_picture(png(Image.fromarray(pixels, "RGB"), transparency=(1, 2, 3)), None)
    keyed = np.all(pixels == (1, 2, 3), axis=2)
    check_edit(output, pixels, np.where(keyed, 0, 255).astype(np.uint8))


def test_edit_with_a_grey_picture_and_a_trns_grey_key() -> None:
    grey = noise((SIDE, SIDE), 5) | 1  # odd values only
    grey[0:4, :] = 8
    output = edit_picture(png(Image.fromarray(grey, "L"), transparency=8), None)
    check_edit(output, np.repeat(grey[..., None], 3, axis=2), np.where(grey == 8, 0, 255).astype(np.uint8))


def test_edit_with_a_mask_takes_the_masks_alpha() -> None:
    picture = rgb()
    alpha = repaint_alpha()
    mask = rgba(alpha, seed=7)  # the mask's colours play no part
    check_edit(edit_picture(png(picture), png(mask)), np.asarray(picture), alpha)


def test_mask_wins_over_the_pictures_own_alpha() -> None:
    picture = rgba(np.where(repaint_alpha() == 0, 255, 0).astype(np.uint8), seed=8)
    alpha = repaint_alpha()
    output = edit_picture(png(picture), png(rgba(alpha, seed=9)))
    check_edit(output, np.asarray(picture)[..., :3], alpha)  # RGB under the picture's transparency kept too


def test_mask_as_a_palette_png_with_trns() -> None:
    indices = np.zeros((SIDE, SIDE), dtype=np.uint8)
    indices[:8] = 1
    mask = Image.fromarray(indices, "P")
    mask.putpalette([0, 0, 0, 255, 255, 255])
    picture = rgb()
    output = edit_picture(png(picture), png(mask, transparency=1))
    check_edit(output, np.asarray(picture), np.where(indices == 1, 0, 255).astype(np.uint8))


def test_one_pixel_below_the_threshold_is_enough() -> None:
    alpha = np.full((SIDE, SIDE), 255, dtype=np.uint8)
    alpha[0, 0] = 127
    check_edit(edit_picture(png(rgb()), png(rgba(alpha))), np.asarray(rgb()), alpha)


@pytest.mark.parametrize(
    "mask",
    [rgb(), Image.new("L", (SIDE, SIDE), 0), Image.new("P", (SIDE, SIDE), 0), Image.new("1", (SIDE, SIDE), 0)],
    ids=["RGB", "L", "P", "1"],
)
def test_mask_without_alpha(mask: Image.Image) -> None:
    error = refused(edit_picture, png(rgba(repaint_alpha())), png(mask))
    assert (error.status, error.param, error.code) == (400, "mask", "invalid_image_format")
    assert "no alpha channel" in error.message


@pytest.mark.parametrize("value", [255, 128])
def test_mask_without_transparent_pixels(value: int) -> None:
    mask = rgba(np.full((SIDE, SIDE), value, dtype=np.uint8))
    error = refused(edit_picture, png(rgba(repaint_alpha())), png(mask))
    assert (error.status, error.param) == (400, "mask")
    assert "no transparent pixels" in error.message and "nothing to edit" in error.message


@pytest.mark.parametrize("lowest", [128, 200, 254])
def test_a_mask_whose_transparent_pixels_are_all_at_least_half_opaque(lowest: int) -> None:
    """Transparent pixels that repaint nothing (alpha 128 and up: Load Image's MASK, 1 − alpha, below 0.5) leave
    nothing to edit: refused with what was found, before anything is queued."""
    alpha = np.full((SIDE, SIDE), 255, dtype=np.uint8)
    alpha[8:24, 8:24] = lowest
    error = refused(edit_picture, png(rgb()), png(rgba(alpha)))
    assert (error.status, error.param) == (400, "mask")
    assert "nothing to edit" in error.message and f"its most transparent pixel has alpha {lowest}" in error.message
    error = refused(edit_picture, png(rgba(alpha)), None)
    assert (error.status, error.param) == (400, "image")
    assert f"its most transparent pixel has alpha {lowest}" in error.message


def test_the_repaint_rule_is_the_pipelines_threshold() -> None:
    """An alpha repaints exactly where Load Image's MASK (1 − alpha / 255, in float32) reaches the threshold the
    inpainting pipeline binarises at."""
    from dalle_nodes.openai_api.uploads import REPAINT_BELOW
    from dalle_nodes.pipelines.masks import REPAINT_THRESHOLD

    alphas = np.arange(256)
    load_image_mask = 1.0 - alphas.astype(np.float32) / 255.0
    assert np.array_equal(alphas < REPAINT_BELOW, load_image_mask >= REPAINT_THRESHOLD)


def test_mask_of_another_size() -> None:
    error = refused(edit_picture, png(rgb(64)), png(rgba(repaint_alpha(32))))
    assert (error.status, error.param, error.code) == (400, "mask", "invalid_image_size")
    assert "32x32" in error.message and "64x64" in error.message and "same size" in error.message


@pytest.mark.parametrize(
    "picture", [rgb(), Image.new("L", (SIDE, SIDE), 3), Image.new("P", (SIDE, SIDE), 0)], ids=["RGB", "L", "P"]
)
def test_opaque_picture_without_a_mask(picture: Image.Image) -> None:
    error = refused(edit_picture, png(picture), None)
    assert (error.status, error.param, error.code) == (400, "image", "invalid_image_format")
    assert "no transparent pixels" in error.message and "no mask" in error.message


def test_picture_with_an_alpha_channel_all_opaque_and_no_mask() -> None:
    for alpha in (255, 200):
        error = refused(edit_picture, png(rgba(np.full((SIDE, SIDE), alpha, dtype=np.uint8))), None)
        assert (error.status, error.param) == (400, "image")
        assert "no transparent pixels" in error.message


# variations


@pytest.mark.parametrize("alpha", [None, repaint_alpha()], ids=["RGB", "RGBA"])
def test_variation_picture_is_rgb_as_sent(alpha: np.ndarray | None) -> None:
    picture = rgb() if alpha is None else rgba(alpha)
    image = decoded(variation_picture(png(picture)))
    assert image.mode == "RGB" and image.size == (SIDE, SIDE)
    assert np.array_equal(np.asarray(image), np.asarray(picture)[..., :3])


def test_variation_picture_from_a_palette_png() -> None:
    indices = noise((SIDE, SIDE), 6) % 4
    picture = Image.fromarray(indices, "P")
    picture.putpalette([10, 20, 30, 40, 50, 60, 70, 80, 90, 200, 210, 220])
    image = decoded(variation_picture(png(picture)))
    assert image.mode == "RGB"
    assert np.array_equal(np.asarray(image), np.asarray(picture.convert("RGB")))


# 16-bit PNGs: valid PNGs that PIL opens in modes of its own


def grey16(values: np.ndarray, extra: bytes = b"") -> bytes:
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in values)
    return handmade_png(values.shape[1], values.shape[0], 16, 0, rows, extra)


def test_variation_of_a_16_bit_grey_png_keeps_its_tones() -> None:
    """A 16-bit grey PNG opens as PIL mode I;16, whose plain convert("RGB") clips each value at 255 instead of scaling
    it: mid-grey (32768) would become white."""
    values = (np.arange(SIDE * SIDE).reshape(SIDE, SIDE) * 64).astype(np.uint16)
    image = decoded(variation_picture(grey16(values)))
    assert image.mode == "RGB"
    expected = np.repeat((values >> 8).astype(np.int16)[..., None], 3, axis=2)
    assert np.abs(np.asarray(image).astype(np.int16) - expected).max() <= 1


def test_edit_of_a_16_bit_grey_png_with_a_trns_key() -> None:
    values = np.full((SIDE, SIDE), 0x8000, dtype=np.uint16)
    values[:4] = 0x1234
    output = decoded(edit_picture(grey16(values, chunk(b"tRNS", struct.pack(">H", 0x1234))), None))
    assert np.array_equal(np.asarray(output)[..., 3], np.where(values == 0x1234, 0, 255))


@pytest.mark.parametrize("side", [256, 512, 1000])
def test_thin_strokes_survive_the_workflows_downscale(side) -> None:
    """The edit workflow shrinks the upload with Upscale Image (bilinear, no antialiasing, as torch interpolates):
    a 1 px transparent stroke in a 1024 px upload must still mark answer pixels to repaint (MASK = 1 − alpha at
    least 0.5, the pipeline's threshold), and the rest stays opaque."""
    import torch
    import torch.nn.functional as F

    alpha = np.full((1024, 1024), 255, np.uint8)
    alpha[:, 303] = 0  # one column and one row, between the sample points at 256 px (4j + 1.5)
    alpha[700, 100:900] = 0
    picture = rgba(alpha)

    def repainted(data: bytes) -> torch.Tensor:
        mask = 1 - torch.from_numpy(np.asarray(decoded(data))[..., 3].astype(np.float32) / 255)
        shrunk = F.interpolate(mask[None, None], size=(side, side), mode="bilinear", align_corners=False)[0, 0]
        return shrunk >= 0.5

    if side == 256:  # the premise: shrunk 4 times, unwidened 1 px strokes fall between the samples and vanish
        assert not repainted(edit_picture(png(picture), None, 1024)).any()
    widened = repainted(edit_picture(png(picture), None, side))
    column, row, start, end = (at * side // 1024 for at in (303, 700, 100, 900))
    assert widened[:, column - 1 : column + 2].any(dim=1).all()
    assert widened[row - 1 : row + 2, start + 1 : end - 1].any(dim=0).all()
    assert widened.float().mean() < 0.02  # the strokes, not the picture


def test_masks_whose_strokes_survive_the_downscale_are_kept_as_sent() -> None:
    """Parity: a transparent block, even with a soft edge, is read by the workflow as it is; nothing is added."""
    alpha = np.full((1024, 1024), 255, np.uint8)
    alpha[200:600, 300:700] = 0
    alpha[200:600, 700:704] = 100  # a faint edge beside it
    output = decoded(edit_picture(png(rgba(alpha)), None, 256))
    assert np.array_equal(np.asarray(output)[..., 3], alpha)


def test_a_faint_stroke_survives_the_upscale() -> None:
    """Enlarged 4 times, a 1 px stroke of alpha 120 (repainted as sent) is diluted below the threshold by its opaque
    neighbours: its pixels are made transparent, nothing else changes."""
    import torch
    import torch.nn.functional as F

    alpha = np.full((256, 256), 255, np.uint8)
    alpha[100, 20:200] = 120
    kept = np.asarray(decoded(edit_picture(png(rgba(alpha)), None, 1024)))[..., 3]
    assert (kept[100, 20:200] == 0).all() and np.array_equal(np.delete(kept, 100, 0), np.delete(alpha, 100, 0))

    def repainted(values: np.ndarray) -> bool:
        mask = 1 - torch.from_numpy(values.astype(np.float32) / 255)[None, None]
        return bool((F.interpolate(mask, size=(1024, 1024), mode="bilinear")[0, 0] >= 0.5).any())

    assert not repainted(alpha) and repainted(kept)  # the premise, and the fix
