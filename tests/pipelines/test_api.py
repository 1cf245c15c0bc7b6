"""The Python API (dalle_nodes.pipelines: Kandinsky22, DalleMini, Upscaler) gives the node chains' pictures.

Same tiny checkpoints, same seed, same settings: the API's PIL images are the nodes' IMAGE tensors rounded to
8 bits, exactly as the command line saves them. Mistakes are reported before any model loads.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dalle_nodes.engine import hub
from dalle_nodes.engine.hub import Source
from dalle_nodes.engine.images import from_pil, to_pil
from dalle_nodes.models import dalle_bart
from dalle_nodes.models.dalle_bart import Hyperparameters
from dalle_nodes.nodes import NODE_CLASS_MAPPINGS as NODES
from dalle_nodes.nodes import loaders
from dalle_nodes.pipelines import DalleMini, Kandinsky22, Upscaler, dalle_mini, edit_pictures, kandinsky22
from dalle_nodes.pipelines.dalle_mini import loading as mini_loading
from dalle_nodes.pipelines.kandinsky22 import loading
from dalle_nodes.pipelines.kandinsky22.embeds import ImageEmbeds
from edit_inputs import picture, rectangle_mask
from tiny_repos import TINY_MIN_DALLE, write_min_dalle_repo
from tiny_upscalers import compact_state, write_upscaler


def pixels(images: list[Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(image) for image in images])


@pytest.fixture(autouse=True)
def no_kept_models(monkeypatch) -> None:
    monkeypatch.setattr(loaders, "_loaded", {})


def node_embeds(prior_repo, negative: str | None, batch: int) -> ImageEmbeds:
    """Text Encode → Prior Sample for "a red fox", seed 11, 3 steps, guidance 4."""
    prior, text_encoder = NODES["DalleLoadPrior"]().load(str(prior_repo), "main", "fp32")
    encode = NODES["DalleTextEncode"]().encode
    extra = {"negative": encode(text_encoder, negative)[0]} if negative else {}
    return NODES["DallePriorSample"]().sample(prior, encode(text_encoder, "a red fox")[0], 11, 3, 4.0, batch, **extra)[
        0
    ]


@pytest.mark.parametrize("negative, batch, sampler", [(None, 1, "ddpm"), ("a dog", 2, "dpmpp_2m")])
def test_kandinsky22_generate_is_the_node_chain(tiny_prior_repo, tiny_decoder_repo, negative, batch, sampler) -> None:
    settings = dict(seed=11, steps=3, prior_steps=3, guidance=4.0, width=128, height=64, batch_size=batch)
    model = Kandinsky22.load(prior=str(tiny_prior_repo), decoder=str(tiny_decoder_repo), dtype="fp32", device="cpu")
    images = model.generate("a red fox", negative=negative, sampler=sampler, **settings)

    embeds = node_embeds(tiny_prior_repo, negative, batch)
    decoder, vq_vae, _, _ = NODES["DalleLoadDecoder"]().load(str(tiny_decoder_repo), "main", "fp32")
    (latent,) = NODES["DalleDecoderSample"]().sample(decoder, embeds, 128, 64, 3, 4.0, sampler, False, 11)
    (image,) = NODES["DalleVQDecode"]().decode(vq_vae, latent)

    assert len(images) == batch and images[0].size == (128, 64)
    assert pixels(images).std() > 1  # a picture, not a flat colour
    assert np.array_equal(pixels(images), pixels(to_pil(image)))


EDIT_SETTINGS = dict(seed=11, steps=3, prior_steps=3, guidance=4.0)


@pytest.fixture(scope="module")
def editor(tiny_prior_repo, tiny_inpaint_repo) -> Kandinsky22:
    return Kandinsky22.load(prior=str(tiny_prior_repo), decoder=str(tiny_inpaint_repo), dtype="fp32", device="cpu")


def mask_image(mask: torch.Tensor) -> Image.Image:
    """A MASK [1, H, W] of 0 and 1 as the black and white picture a user draws."""
    return Image.fromarray((mask[0].numpy() * 255).astype(np.uint8), "L")


@pytest.mark.parametrize(
    "outpaint, negative, batch, sampler", [(None, None, 1, "ddpm"), ({"left": 64, "top": 64}, "a dog", 2, "dpmpp_2m")]
)
def test_kandinsky22_edit_is_the_node_chain(
    editor, tiny_prior_repo, tiny_inpaint_repo, outpaint, negative, batch, sampler
) -> None:
    """Inpainting: VQ Encode → Decoder Sample with the mask → VQ Decode; outpainting: the picture padded (as core Pad
    Image for Outpainting pads it, grey under a mask of 1) and then the same."""
    source = to_pil(picture(64, 128))[0]
    mask = rectangle_mask(64, 128)
    images = editor.edit(
        "a red fox", source, mask_image(mask), outpaint, negative=negative, batch_size=batch, sampler=sampler,
        **EDIT_SETTINGS,
    )  # fmt: skip

    image = from_pil(source)
    if outpaint is not None:
        image, border = edit_pictures.pad_for_outpaint(image, (64, 64, 0, 0))
        border[:, 64:, 64:] = mask
        mask = border
    decoder, vq_vae, _, _ = NODES["DalleLoadDecoder"]().load(str(tiny_inpaint_repo), "main", "fp32")
    (latent,) = NODES["DalleVQEncode"]().encode(vq_vae, image)
    height, width = image.shape[1:3]
    (sampled,) = NODES["DalleDecoderSample"]().sample(
        decoder, node_embeds(tiny_prior_repo, negative, batch), width, height, 3, 4.0, sampler, False, 11,
        latent=latent, mask=mask,
    )  # fmt: skip
    (expected,) = NODES["DalleVQDecode"]().decode(vq_vae, sampled)

    assert len(images) == batch and images[0].size == (width, height) == ((128, 64) if outpaint is None else (192, 128))
    assert np.array_equal(pixels(images), pixels(to_pil(expected)))


def test_a_mask_that_repaints_nothing_gives_the_picture(editor, caplog) -> None:
    source = to_pil(picture(64, 128))[0]
    with caplog.at_level("INFO"):
        images = editor.edit("a red fox", source, Image.new("L", (128, 64), 120), batch_size=2, **EDIT_SETTINGS)
    assert "repaints nothing" in caplog.text
    assert np.array_equal(pixels(images), pixels([source, source]))


def test_best_of_ranks_edits(editor) -> None:
    source = to_pil(picture(64, 64))[0]
    mask = mask_image(rectangle_mask(64, 64))
    best = editor.edit("a red fox", source, mask, best_of=3, batch_size=1, **EDIT_SETTINGS)
    assert len(best) == 1 and best[0].size == (64, 64) and "clip_score" in best[0].info


def test_each_decoder_does_its_own_job(editor, tiny_prior_repo, tiny_decoder_repo) -> None:
    with pytest.raises(ValueError, match="This is the inpainting decoder: give a picture to edit, or load .*-decoder "):
        editor.generate("a red fox", **EDIT_SETTINGS)
    text2image = Kandinsky22.load(
        prior=str(tiny_prior_repo), decoder=str(tiny_decoder_repo), dtype="fp32", device="cpu"
    )
    source = to_pil(picture(64, 64))[0]
    with pytest.raises(
        ValueError, match=f"Editing a picture needs the inpainting decoder: load {kandinsky22.INPAINT_REPO}"
    ):
        text2image.edit("a red fox", source, outpaint=64, **EDIT_SETTINGS)


@pytest.fixture()
def tiny_min_dalle(tmp_path, monkeypatch):
    for variant in dalle_bart.HYPERPARAMETERS:  # the toy size for both variants, as a hyperparameters.json would
        monkeypatch.setitem(dalle_bart.HYPERPARAMETERS, variant, Hyperparameters(**TINY_MIN_DALLE))
    return write_min_dalle_repo(tmp_path, "mini", TINY_MIN_DALLE)


def test_dalle_mini_generate_is_the_node_chain(tiny_min_dalle) -> None:
    images = DalleMini.load(repo=str(tiny_min_dalle), variant="mini", dtype="fp32", device="cpu").generate(
        "a lighthouse", seed=7, batch_size=2, top_k=64, temperature=1.3, supercondition=8.0
    )
    bart, vqgan = NODES["DalleLoadMini"]().load(str(tiny_min_dalle), "main", "mini", "fp32")
    (tokens,) = NODES["DalleTokenSample"]().sample(bart, "a lighthouse", 7, 2, 64, 1.3, 8.0)
    (image,) = NODES["DalleVQGANDecode"]().decode(vqgan, tokens)
    assert [one.size for one in images] == [(256, 256)] * 2
    assert np.array_equal(pixels(images), pixels(to_pil(image)))


def test_upscaler_is_the_upscale_node(tmp_path) -> None:
    path = write_upscaler(tmp_path / "x4.safetensors", compact_state(4))
    source = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 4), dtype=np.uint8), "RGBA")
    upscaler = Upscaler.load("custom", filename=str(path))
    big = upscaler.upscale(source, tile=32, overlap=8)
    (model,) = NODES["DalleLoadUpscaler"]().load("custom", "", str(path), "main")
    (image,) = NODES["DalleGANUpscale"]().upscale(model, from_pil(source), 32, 8, "auto")
    assert big[0].size == (224, 160) and big[0].mode == "RGBA"
    assert np.array_equal(pixels(big), pixels(to_pil(image)))


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"prompt": " "}, "The prompt is empty: write what the image should show"),
        ({"negative": ""}, "The negative prompt is empty: write what the image should not show. Or pass None"),
        ({"width": 100}, "width 100 is not supported"),
        ({"steps": 0}, "steps must be between 1 and 999"),
        ({"prior_steps": 1}, "prior steps must be between 2 and 1000"),
        ({"sampler": "heun"}, "sampler must be one of"),
        ({"guidance": float("nan")}, "guidance must be between 0.0 and 100.0"),
        ({"batch_size": 65}, "batch_size must be between 1 and 64"),
        ({"seed": -1}, "seed must be between 0 and"),
        ({"mask": Image.new("L", (64, 64))}, "A mask or outpaint edits a picture: give the picture to edit too"),
        ({"image": Image.new("RGBA", (64, 64)), "width": 64}, "An edit keeps the picture's size"),
        ({"image": "missing.png", "outpaint": 64}, "The image 'missing.png' does not exist"),
    ],
)
def test_kandinsky22_requests_are_checked_before_loading(settings, message) -> None:
    with pytest.raises(ValueError, match=message):
        kandinsky22.Request(**{"prompt": "a cat", **settings})


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"prompt": ""}, "The prompt is empty"),
        ({"top_k": 0}, "top_k must be between 1 and 16384"),
        ({"temperature": 0.0}, "temperature must be between 0.01 and 10.0"),
        ({"batch_size": 0}, "batch_size must be between 1 and 64"),
    ],
)
def test_dalle_mini_requests_are_checked_before_loading(settings, message) -> None:
    with pytest.raises(ValueError, match=message):
        dalle_mini.Request(**{"prompt": "a cat", **settings})


class Counting(hub.DownloadProgress):
    """Counts the files a loader asks for, as the download bars number them."""


def test_download_bars_know_how_many_files_each_loader_fetches(tiny_prior_repo, tiny_decoder_repo, tmp_path) -> None:
    """ "file k of n": n (the FETCHES tables) is the number of files each loader asks for."""

    def fetched(load, repo, *args) -> int:
        counting = Counting()
        load(Source(str(repo), None, None, counting), *args)
        return counting.index

    dtype, place = torch.float32, lambda module: module
    assert fetched(loading.load_prior, tiny_prior_repo, dtype) == loading.FETCHES["prior"]
    assert fetched(loading.load_text_encoder, tiny_prior_repo, dtype) == loading.FETCHES["text_encoder"]
    assert fetched(loading.load_image_encoder, tiny_prior_repo, dtype) == loading.FETCHES["image_encoder"]
    zero = fetched(loading.zero_image_embed, tiny_prior_repo, dtype, tmp_path, place)
    assert zero == loading.FETCHES["zero_image_embed"]
    assert fetched(loading.load_unet, tiny_decoder_repo, dtype) == loading.FETCHES["unet"]
    assert fetched(loading.load_movq, tiny_decoder_repo, dtype) == loading.FETCHES["movq"]
    repo = write_min_dalle_repo(tmp_path / "min-dalle", "mini", TINY_MIN_DALLE)

    def mini(source: Source) -> None:
        mini_loading.load_tokenizer(source, "mini")
        mini_loading.load_bart(source, "mini", dtype, Hyperparameters(**TINY_MIN_DALLE))
        mini_loading.load_vqgan(source, dtype)

    assert fetched(mini, repo) == mini_loading.FETCHES


def test_repo_arguments_are_read_as_the_nodes_read_them(tiny_min_dalle) -> None:
    with pytest.raises(ValueError, match="repo_id is empty"):
        Kandinsky22.load(prior="  ", device="cpu")
    model = DalleMini.load(repo=f"  {tiny_min_dalle}  ", variant="mini", dtype="fp32", device="cpu")
    assert model.variant == "mini"
