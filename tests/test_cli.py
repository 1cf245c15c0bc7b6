"""`python -m dalle_nodes generate` end to end on tiny local checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dalle_nodes import cli
from dalle_nodes.cli import main
from dalle_nodes.engine.images import from_pil, to_pil
from dalle_nodes.nodes import NODE_CLASS_MAPPINGS as NODES
from dalle_nodes.pipelines import edit_pictures, rerank
from dalle_nodes.pipelines.rerank import Ranker
from dalle_nodes.pipelines.upscale import PRESETS
from edit_inputs import kept_region, picture, rectangle_mask
from tiny_repos import TINY_MIN_DALLE, write_min_dalle_repo
from tiny_upscalers import compact_state, write_upscaler


def run_cli(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "dalle_nodes", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_generate_writes_a_png(tiny_prior_repo, tiny_decoder_repo, tmp_path) -> None:
    out = tmp_path / "images" / "fox.png"
    result = run_cli(
        "generate",
        "a red fox",
        "-o",
        str(out),
        "--prior",
        str(tiny_prior_repo),
        "--decoder",
        str(tiny_decoder_repo),
        "--width",
        "128",
        "--height",
        "64",
        "--steps",
        "3",
        "--prior-steps",
        "2",
        "--seed",
        "1",
        "--negative",
        "blurry",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    with Image.open(out) as image:
        assert image.size == (128, 64) and image.mode == "RGB"


def test_generate_batch_names_each_image(tiny_prior_repo, tiny_decoder_repo, tmp_path, capsys) -> None:
    code = main(
        [
            "generate",
            "a cat",
            "-o",
            str(tmp_path / "cat.png"),
            "--prior",
            str(tiny_prior_repo),
            "--decoder",
            str(tiny_decoder_repo),
            "--width",
            "64",
            "--height",
            "64",
            "--steps",
            "2",
            "--prior-steps",
            "2",
            "--batch-size",
            "2",
            "--sampler",
            "ddim",
        ]
    )
    assert code == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "cat_1.png"), str(tmp_path / "cat_2.png")]


def test_generate_reports_bad_input_in_one_line(tiny_prior_repo, tmp_path) -> None:
    result = run_cli("generate", " ", "--prior", str(tiny_prior_repo), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: The prompt is empty")
    result = run_cli("generate", "a cat", "--prior", str(tmp_path / "missing"), cwd=tmp_path)
    assert result.returncode == 2 and "does not exist" in result.stderr
    assert not list(tmp_path.glob("*.png"))


def test_generate_mega_upscaled(tmp_path) -> None:
    repo = tmp_path / "min-dalle"
    write_min_dalle_repo(repo, "mega", TINY_MIN_DALLE)
    (repo / "hyperparameters.json").write_text(json.dumps({"mega": TINY_MIN_DALLE}))  # the toy size
    preset = PRESETS["realesr-general-x4v3"]  # in the model store, as a finished download would leave it
    store = Path(os.environ["DALLE_NODES_HOME"]) / preset.repo.replace("/", "--")
    write_upscaler(store / preset.filename, compact_state(4), "params")
    out = tmp_path / "lighthouse.png"
    args = ["generate", "a lighthouse", "-o", str(out), "--model", "mega", "--repo", str(repo)]
    result = run_cli(*args, "--seed", "3", "--upscale", "realesr-general-x4v3", "--dtype", "fp32", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with Image.open(out) as image:
        assert image.size == (1024, 1024)


def test_generate_best_of_writes_the_best_and_their_scores(tiny_clip_repo, tmp_path) -> None:
    repo = tmp_path / "min-dalle"
    write_min_dalle_repo(repo, "mini", TINY_MIN_DALLE)
    (repo / "hyperparameters.json").write_text(json.dumps({"mini": TINY_MIN_DALLE}))
    shutil.copytree(tiny_clip_repo, Path(os.environ["DALLE_NODES_HOME"]) / "openai--clip-vit-base-patch32")
    out = tmp_path / "best.png"
    args = ["generate", "a lighthouse", "-o", str(out), "--model", "mini", "--repo", str(repo), "--dtype", "fp32"]
    result = run_cli(*args, "--best-of", "8", "--batch-size", "2", "--top-k", "32", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [line.split("\t") for line in result.stdout.strip().splitlines()]
    assert [path for path, _ in lines] == [str(tmp_path / "best_1.png"), str(tmp_path / "best_2.png")]
    printed = [float(score) for _, score in lines]
    assert printed[0] >= printed[1]
    ranker = Ranker.load(str(tiny_clip_repo), dtype="fp32", device="cpu")  # the saved files score what was printed
    with Image.open(tmp_path / "best_1.png") as first, Image.open(tmp_path / "best_2.png") as second:
        scores = rerank.score(ranker, from_pil([first, second]), "a lighthouse")
    assert scores.tolist() == pytest.approx(printed, abs=1e-3)


def test_generate_best_of_is_checked_before_loading(tmp_path) -> None:
    args = ["generate", "a cat", "--model", "mega", "--repo", str(tmp_path / "missing")]
    result = run_cli(*args, "--best-of", "3", "--batch-size", "4", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: best_of (3) must be at least batch_size (4): best_of images are drawn and the batch_size best kept."
    )


def edit_files(folder: Path, height: int, width: int) -> tuple[Path, Path]:
    """A smooth picture and a rectangle mask (white = repaint) as the PNG files a user gives."""
    image, mask = folder / "in.png", folder / "mask.png"
    to_pil(picture(height, width))[0].save(image)
    Image.fromarray((rectangle_mask(height, width)[0].numpy() * 255).astype(np.uint8), "L").save(mask)
    return image, mask


def differences(saved: Path, repo: Path, image: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """The mean difference between the saved picture and `image`'s MoVQ round trip: 8 px and more from what `mask`
    repaints (tests/test_inpaint.py measures this for the node chain; the PNG's 8 bits add 1/510 a pixel), and
    where it repaints."""
    _, vq_vae, _, _ = NODES["DalleLoadDecoder"]().load(str(repo), "main", "fp32")
    (latent,) = NODES["DalleVQEncode"]().encode(vq_vae, image)
    (round_trip,) = NODES["DalleVQDecode"]().decode(vq_vae, latent)
    with Image.open(saved) as written:
        difference = (from_pil(written) - round_trip).abs()
    kept, repainted = (difference[where].mean().item() for where in (kept_region(mask, margin=8), mask.bool()))
    print(f"vs the VQ round trip: kept pixels {kept:.1e}, repainted ones {repainted:.1e}")
    return kept, repainted


def test_generate_inpaints_a_picture(tiny_prior_repo, tiny_inpaint_repo, tmp_path) -> None:
    image, mask = edit_files(tmp_path, 128, 192)
    out = tmp_path / "edited.png"
    model = ["--prior", str(tiny_prior_repo), "--decoder", str(tiny_inpaint_repo), "--steps", "3", "--prior-steps", "2"]
    args = ["generate", "a red fox", "-o", str(out), "--image", str(image), "--mask", str(mask), *model]
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    with Image.open(out) as saved, Image.open(image) as given:
        assert saved.size == (192, 128) and saved.mode == "RGB"
        given = from_pil(given)
    kept, repainted = differences(out, tiny_inpaint_repo, given, rectangle_mask(128, 192))
    assert kept < 4e-3 and repainted > 5 * kept


def test_generate_outpaints_to_the_padded_size(tiny_prior_repo, tiny_inpaint_repo, tmp_path) -> None:
    image, _ = edit_files(tmp_path, 64, 128)
    out = tmp_path / "wide.png"
    model = ["--prior", str(tiny_prior_repo), "--decoder", str(tiny_inpaint_repo), "--steps", "2", "--prior-steps", "2"]
    assert (
        main(["generate", "a fox", "-o", str(out), "--image", str(image), "--outpaint", "left=64,right=128", *model])
        == 0
    )
    with Image.open(out) as saved, Image.open(image) as given:
        assert saved.size == (320, 64)
        canvas, border = edit_pictures.pad_for_outpaint(from_pil(given), (64, 0, 128, 0))
    assert differences(out, tiny_inpaint_repo, canvas, border)[0] < 4e-3


@pytest.mark.parametrize("how", ["black mask", "half-opaque mask", "half-opaque picture"])
def test_an_edit_that_repaints_nothing_says_so_and_writes_the_picture(
    tiny_prior_repo, tiny_inpaint_repo, tmp_path, how
) -> None:
    """Every pixel of the mask below 0.5 (black, or transparent pixels all at least half opaque; without --mask, the
    picture's own): a note on stderr, exit 0, and the picture written as it came."""
    image, mask = edit_files(tmp_path, 64, 128)
    source = Image.open(image).convert("RGB")
    half_opaque = np.full((64, 128), 200, dtype=np.uint8)
    if how == "black mask":
        Image.new("L", (128, 64), 0).save(mask)
    elif how == "half-opaque mask":
        Image.fromarray(np.dstack([np.full((64, 128, 3), 255, np.uint8), half_opaque]), "RGBA").save(mask)
    else:
        Image.fromarray(np.dstack([np.asarray(source), half_opaque]), "RGBA").save(image)
    out = tmp_path / "same.png"
    model = ["--prior", str(tiny_prior_repo), "--decoder", str(tiny_inpaint_repo), "--steps", "2", "--prior-steps", "2"]
    with_mask = [] if how == "half-opaque picture" else ["--mask", str(mask)]
    result = run_cli("generate", "a fox", "-o", str(out), "--image", str(image), *with_mask, *model, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if "repaints nothing" in line]
    assert notes == [cli.NOTHING_TO_REPAINT], result.stderr
    assert result.stdout.strip() == str(out)
    with Image.open(out) as written:
        assert np.array_equal(np.asarray(written.convert("RGB")), np.asarray(source))


def test_a_thin_stroke_is_repainted_without_a_note(tiny_prior_repo, tiny_inpaint_repo, tmp_path, capsys) -> None:
    image, mask = edit_files(tmp_path, 64, 128)
    stroke = torch.zeros(1, 64, 128)
    stroke[:, 20:23, 10:100] = 1  # 3 px, between the reference's samples every 8 px: repainted all the same
    to_pil(stroke[..., None].expand(-1, -1, -1, 3))[0].save(mask)
    out = tmp_path / "fox.png"
    model = ["--prior", str(tiny_prior_repo), "--decoder", str(tiny_inpaint_repo), "--steps", "2", "--prior-steps", "2"]
    assert main(["generate", "a fox", "-o", str(out), "--image", str(image), "--mask", str(mask), *model]) == 0
    assert "repaints nothing" not in capsys.readouterr().err
    cells = F.interpolate(F.max_pool2d(stroke[:, None], 8), scale_factor=8.0)[:, 0]  # the 8 px cells it touches
    with Image.open(image) as given:
        kept, repainted = differences(out, tiny_inpaint_repo, from_pil(given), cells)
    # decoded, not the picture given back (that is 0.15 from the round trip); the cells changed most (measured 3x)
    assert kept < 4e-3 and repainted > 2 * kept


def test_generate_translates_a_chinese_prompt(tiny_prior_repo, tiny_decoder_repo, tmp_path) -> None:
    from dalle_nodes.engine.hub import default_store
    from dalle_nodes.pipelines.translation import TRANSLATION_REPO, Translator
    from tiny_translation import write_translation_repo

    write_translation_repo(default_store() / TRANSLATION_REPO.replace("/", "--"))  # a finished download, offline
    prompt, negative = "雪林中的一只红狐狸，油画", "雨天"  # words the tiny model knows
    common = ["--prior", str(tiny_prior_repo), "--decoder", str(tiny_decoder_repo), "--width", "64", "--height", "64"]
    common += ["--steps", "2", "--prior-steps", "2", "--seed", "3"]
    out, by_hand = tmp_path / "zh.png", tmp_path / "en.png"
    result = run_cli("generate", prompt, "--negative", negative, "-o", str(out), "--translate", *common, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    english = Translator.load(device="cpu")
    assert f"Translated the prompt to: {english(prompt)}" in result.stderr
    args = ["generate", english(prompt), "--negative", english(negative), "-o", str(by_hand), *common]
    assert main(args) == 0
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(by_hand)))


def test_generate_checks_the_translation_model_before_loading(tmp_path) -> None:
    result = run_cli("generate", "雪林中的狐狸", "--translate-model", str(tmp_path / "missing"), cwd=tmp_path)
    assert result.returncode == 2 and "does not exist" in result.stderr
    result = run_cli("generate", "--translate-model", "someone/opus-mt-xx-en", "雪林中的狐狸", cwd=tmp_path)
    assert result.returncode == 2 and "someone/opus-mt-xx-en" in result.stderr and "not downloaded" in result.stderr


@pytest.mark.parametrize(
    "argv, translate",
    [
        (["generate", "--translate", "雪林中的狐狸"], "auto"),
        (["generate", "雪林中的狐狸", "--translate"], "auto"),
        (["generate", "--translate-model", "someone/opus-mt-ja-en", "雪の森の狐"], "someone/opus-mt-ja-en"),
        (["generate", "雪林中的狐狸"], None),
    ],
    ids=["flag before the prompt", "flag after", "another model", "off"],
)
def test_translate_never_takes_the_prompt(argv: list[str], translate: str | None) -> None:
    from dalle_nodes.cli import parse_args
    from dalle_nodes.cli_translation import translate_value

    args = parse_args(argv)
    assert args.prompt == next(arg for arg in argv[1:] if not arg.startswith("-") and "/" not in arg)
    assert translate_value(args) == translate
