"""`generate` used as a careless or hostile user would: every mistake ends as one line and a documented exit code,
before any model loads where it can be known then, and no file that was there before is ever changed."""

from __future__ import annotations

import io
import os
import resource
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

from dalle_nodes import cli
from dalle_nodes.nodes import NODE_CLASS_MAPPINGS
from dalle_nodes.pipelines import DalleMini, Kandinsky22, Upscaler, dalle_mini, kandinsky22

OLD = b"the user's earlier picture"


@pytest.fixture
def no_loading(monkeypatch) -> None:
    """Proves a mistake was caught before any model loaded: a loader that runs fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model loaded before the input was checked")

    for pipeline in (Kandinsky22, DalleMini, Upscaler):
        monkeypatch.setattr(pipeline, "load", classmethod(refuse))


def generate(*args: str, output: Path) -> list[str]:
    return ["generate", "a red fox", "-o", str(output), *args]


def tiny_kandinsky(prior: Path, decoder: Path) -> list[str]:
    size = ["--width", "64", "--height", "64", "--steps", "2", "--prior-steps", "2"]
    return ["--prior", str(prior), "--decoder", str(decoder), *size]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "\x1b[" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    return err


NOT_FINITE = ["nan", "inf", "-inf"]
FLOATS = [("--guidance", "guidance"), ("--prior-guidance", "prior_guidance")]
MINI_FLOATS = [("--temperature", "temperature"), ("--supercondition", "supercondition")]


@pytest.mark.parametrize("value", NOT_FINITE)
@pytest.mark.parametrize(("flag", "name"), FLOATS + MINI_FLOATS)
def test_non_finite_numbers_are_refused(flag, name, value, no_loading, tmp_path, capsys) -> None:
    model = ["--model", "mini"] if (flag, name) in MINI_FLOATS else []
    assert run(generate(*model, f"{flag}={value}", output=tmp_path / "o.png")) == 2
    assert f"{name} must be between" in one_line_error(capsys)


OUT_OF_RANGE = [
    ("--seed", "-1", "seed must be between 0 and 18446744073709551615"),
    ("--seed", str(2**64), "seed must be between 0 and 18446744073709551615"),
    ("--steps", "0", "steps must be between 1 and 999"),
    ("--steps", "1000", "steps must be between 1 and 999"),
    ("--prior-steps", "1", "prior steps must be between 2 and 1000"),
    ("--prior-steps", "1001", "prior steps must be between 2 and 1000"),
    ("--width", "100", "width 100 is not supported"),
    ("--width", "0", "width 0 is not supported"),
    ("--height", "8192", "height 8192 is not supported"),
    ("--batch-size", "0", "batch_size must be between 1 and 64"),
    ("--batch-size", "65", "batch_size must be between 1 and 64"),
    ("--guidance", "101", "guidance must be between 0.0 and 100.0"),
    ("--guidance", "-1", "guidance must be between 0.0 and 100.0"),
]
MINI_OUT_OF_RANGE = [
    ("--top-k", "0", "top_k must be between 1 and 16384"),
    ("--top-k", "16385", "top_k must be between 1 and 16384"),
    ("--temperature", "0", "temperature must be between 0.01 and 10.0"),
    ("--temperature", "11", "temperature must be between 0.01 and 10.0"),
    ("--supercondition", "-1", "supercondition must be between 0.0 and 100.0"),
]


@pytest.mark.parametrize(("flag", "value", "message"), OUT_OF_RANGE)
def test_kandinsky_settings_out_of_range(flag, value, message, no_loading, tmp_path, capsys) -> None:
    assert run(generate(flag, value, output=tmp_path / "o.png")) == 2
    assert message in one_line_error(capsys)


@pytest.mark.parametrize(("flag", "value", "message"), MINI_OUT_OF_RANGE)
def test_mini_settings_out_of_range(flag, value, message, no_loading, tmp_path, capsys) -> None:
    assert run(generate("--model", "mega", flag, value, output=tmp_path / "o.png")) == 2
    assert message in one_line_error(capsys)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--upscale", "RealESRGAN_x5"], "argument --upscale: invalid choice: 'RealESRGAN_x5'"),
        (["--seed", "forty-two"], "argument --seed: invalid int value: 'forty-two'"),
        (["--sampler", "plms"], "argument --sampler: invalid choice: 'plms'"),
        (["--dtype", "fp8"], "argument --dtype: invalid choice: 'fp8'"),
        (["--prior", "not a repo id"], "is neither a local folder nor a Hub repo id"),
        (["--decoder", " "], "repo_id is empty"),
        (["--model", "mini", "--repo", "../missing/folder"], "Local folder '../missing/folder' does not exist"),
    ],
)
def test_unknown_choices_and_repo_ids(args, message, no_loading, tmp_path, capsys) -> None:
    assert run(generate(*args, output=tmp_path / "o.png")) == 2
    assert message in one_line_error(capsys)


def run(argv: list[str]) -> int:
    """main's exit code, whether it returns it or argparse exits with it."""
    try:
        return cli.main(argv)
    except SystemExit as exit:
        return exit.code


def existing(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(OLD)
    return path


@pytest.mark.parametrize(
    ("output", "extra", "message"),
    [
        ("fox.txt", [], "has no image suffix"),
        ("fox", [], "has no image suffix"),
        ("folder.png/", [], "is a folder"),
        ("afile/fox.png", [], "is a file, not a folder"),
        ("taken.png", [], "already exists: choose another name, or pass --overwrite"),
        ("batch.png", ["--batch-size", "3"], "batch_2.png' already exists"),
    ],
)
def test_bad_output_paths_fail_before_loading(output, extra, message, no_loading, tmp_path, capsys) -> None:
    (tmp_path / "folder.png").mkdir()
    existing(tmp_path / "afile")
    taken = [existing(tmp_path / "taken.png"), existing(tmp_path / "batch_2.png")]
    assert run(generate(*extra, output=tmp_path / output)) == 2
    assert message in one_line_error(capsys)
    assert all(path.read_bytes() == OLD for path in taken)


def test_an_unwritable_folder_fails_before_loading(no_loading, tmp_path, capsys, monkeypatch) -> None:
    """The tests run as root, where permissions do not stop writes: the folder's access answer is set instead."""
    folder = tmp_path / "locked"
    folder.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != folder and real_access(path, mode))
    assert run(generate(output=folder / "new" / "fox.png")) == 2
    assert f"the folder '{folder}' is not writable" in one_line_error(capsys)


def test_a_path_not_in_stdouts_encoding_still_prints(tiny_prior_repo, tiny_decoder_repo, tmp_path, monkeypatch):
    """-o with a byte undecodable as UTF-8 (a surrogate escape in Python) and a strict ASCII stdout: the path written
    is printed as the file system's bytes, not lost to a UnicodeEncodeError after the file was written."""
    out = Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9.png"))
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="ascii", errors="strict")
    monkeypatch.setattr(sys, "stdout", stdout)
    assert run(generate(*tiny_kandinsky(tiny_prior_repo, tiny_decoder_repo), output=out)) == 0
    stdout.flush()
    assert stdout.buffer.getvalue() == os.fsencode(out) + b"\n" and out.is_file()


def test_existing_files_are_kept_or_replaced_only_when_asked(tiny_prior_repo, tiny_decoder_repo, tmp_path, capsys):
    model = tiny_kandinsky(tiny_prior_repo, tiny_decoder_repo)
    out = existing(tmp_path / "out" / "fox.png")
    assert run(generate(*model, output=out)) == 2
    assert out.read_bytes() == OLD
    capsys.readouterr()
    assert run(generate(*model, "--overwrite", output=out)) == 0
    assert capsys.readouterr().out.split() == [str(out)]
    with Image.open(out) as image:
        assert image.size == (64, 64)
    assert sorted(p.name for p in out.parent.iterdir()) == ["fox.png"]  # no temporary file left behind


def test_missing_folders_are_made(tiny_prior_repo, tiny_decoder_repo, tmp_path, capsys) -> None:
    out = tmp_path / "new" / "deeper" / "fox.jpg"
    assert run(generate(*tiny_kandinsky(tiny_prior_repo, tiny_decoder_repo), output=out)) == 0
    with Image.open(out) as image:
        assert image.format == "JPEG"


def cli_process(args: list[str], cwd: Path, **popen) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "dalle_nodes", *args]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def test_a_write_failing_mid_file_leaves_the_old_file_whole(tiny_prior_repo, tiny_decoder_repo, tmp_path) -> None:
    """The file-size limit stops the PNG part way (as a full disk would): exit 3, the old file as it was."""
    out = existing(tmp_path / "out" / "fox.bmp")
    limit = 4096  # the zero-image-embedding cache fits; a 64 x 64 BMP (12 kB, uncompressed) does not

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    args = generate(*tiny_kandinsky(tiny_prior_repo, tiny_decoder_repo), "--overwrite", output=out)
    process = cli_process(args, tmp_path, preexec_fn=limit_file_size)
    stdout, stderr = process.communicate(timeout=300)
    lines = stderr.decode().strip().splitlines()
    assert process.returncode == 3, stderr.decode()
    assert lines[-1] == f"error: File too large ({out})" and "Traceback" not in stderr.decode()
    assert out.read_bytes() == OLD and stdout == b""
    assert sorted(p.name for p in out.parent.iterdir()) == ["fox.bmp"]


def test_ctrl_c_while_sampling_exits_130_and_writes_nothing(tiny_prior_repo, tiny_decoder_repo, tmp_path) -> None:
    out = existing(tmp_path / "out" / "fox.png")
    model = tiny_kandinsky(tiny_prior_repo, tiny_decoder_repo)
    model[model.index("--steps") + 1] = "999"  # long enough to be stopped in the middle
    process = cli_process(generate(*model, "--overwrite", output=out), tmp_path)
    stderr = b""
    deadline = time.monotonic() + 240
    while b"Kandinsky 2.2:" not in stderr:  # the sampling bar: models are loaded, sampling runs
        assert time.monotonic() < deadline and process.poll() is None, stderr.decode()
        stderr += process.stderr.read1(4096)
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    stdout, rest = process.communicate(timeout=60)
    stderr = (stderr + rest).decode()
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1].endswith("interrupted: stopped with Ctrl-C; no file was left half-written.")
    assert "Traceback" not in stderr and stdout == b""
    assert out.read_bytes() == OLD
    assert sorted(p.name for p in out.parent.iterdir()) == ["fox.png"]


def test_seeds_above_32_bits_are_taken_and_read_as_torch_reads_them(tiny_prior_repo, tiny_decoder_repo, tmp_path):
    """README: torch's CPU generator reads the low 32 bits of a seed, so seeds 2**32 apart give the same picture."""
    model = tiny_kandinsky(tiny_prior_repo, tiny_decoder_repo)
    for seed in (7, 7 + 2**32, 2**64 - 1):
        assert run(generate(*model, "--seed", str(seed), output=tmp_path / f"{seed}.png")) == 0
    pictures = [Image.open(tmp_path / f"{seed}.png").tobytes() for seed in (7, 7 + 2**32, 2**64 - 1)]
    assert pictures[0] == pictures[1] != pictures[2]


LIMITS = [  # (Request class, its field, the node input it mirrors)
    (kandinsky22.Request, "steps", "DalleDecoderSample", "steps"),
    (kandinsky22.Request, "prior_steps", "DallePriorSample", "steps"),
    (kandinsky22.Request, "guidance", "DalleDecoderSample", "guidance"),
    (kandinsky22.Request, "prior_guidance", "DallePriorSample", "guidance"),
    (kandinsky22.Request, "width", "DalleDecoderSample", "width"),
    (kandinsky22.Request, "height", "DalleDecoderSample", "height"),
    (kandinsky22.Request, "batch_size", "DallePriorSample", "batch_size"),
    (kandinsky22.Request, "seed", "DalleDecoderSample", "seed"),
    (dalle_mini.Request, "batch_size", "DalleTokenSample", "batch_size"),
    (dalle_mini.Request, "top_k", "DalleTokenSample", "top_k"),
    (dalle_mini.Request, "temperature", "DalleTokenSample", "temperature"),
    (dalle_mini.Request, "supercondition", "DalleTokenSample", "supercondition"),
    (dalle_mini.Request, "seed", "DalleTokenSample", "seed"),
]


@pytest.mark.parametrize(("request_class", "field", "node", "name"), LIMITS, ids=lambda v: getattr(v, "__module__", v))
def test_the_cli_and_api_take_exactly_the_nodes_ranges(request_class, field, node, name) -> None:
    """generate builds these Requests, so a value a node refuses is refused on the command line too, and the other
    way round."""
    kind, spec = NODE_CLASS_MAPPINGS[node].INPUT_TYPES()["required"][name]
    low, high = spec["min"], spec["max"]
    step = spec.get("step", 1) if kind == "INT" else 1e-3
    for value in (low, high):
        request_class("a fox", **{field: value})
    for value in (low - step, high + step):
        with pytest.raises(ValueError, match=f"{field.replace('_', ' ')}|{field}"):
            request_class("a fox", **{field: value})


def claimed_png(width: int, height: int) -> bytes:
    """A small PNG file that claims width x height pixels (its pixel data is a few bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def edit_inputs(folder: Path) -> dict[str, Path]:
    """Picture and mask files, good and bad, as careless or hostile users give them."""
    (folder / "a folder.png").mkdir()
    Image.new("RGB", (64, 64), "red").save(folder / "in.png")
    Image.new("L", (64, 64), 255).save(folder / "mask.png")
    Image.new("L", (64, 128), 255).save(folder / "tall mask.png")
    Image.new("RGB", (5000, 8)).save(folder / "wide.png")
    (folder / "notes.png").write_text("not a picture")
    Image.effect_noise((64, 64), 60).save(folder / "noise.png")
    (folder / "truncated.png").write_bytes((folder / "noise.png").read_bytes()[:2000])
    (folder / "bomb.png").write_bytes(claimed_png(20000, 20000))  # 400 M pixels: past PIL's decompression-bomb limit
    return {path.name: path for path in folder.iterdir()}


EDIT_MISTAKES = [
    (["--image", "missing.png"], "The image 'missing.png' does not exist."),
    (["--image", "a folder.png"], "The image 'a folder.png' is a folder: give an image file"),
    (["--image", "notes.png"], "The image 'notes.png' is not an image PIL can read"),
    (["--image", "truncated.png"], "The image 'truncated.png' is damaged or incomplete"),
    (["--image", "bomb.png"], "The image 'bomb.png' is too large: up to 4096 px a side is taken"),
    (
        ["--image", "wide.png"],
        "The image 'wide.png' is 5000x8 px: up to 4096 px a side is taken; downscale it first.",
    ),
    (["--image", "in.png", "--mask", "notes.png"], "The mask 'notes.png' is not an image PIL can read"),
    (["--image", "in.png", "--mask", "tall mask.png"], "The mask is 64x128, the picture 64x64: a mask must cover"),
    (["--image", "in.png"], "The picture has no transparent pixels, and no mask or outpaint was given"),
    (["--image", "in.png", "--outpaint", "left=100"], "The outpaint left + right adds 100 px: it must add a multiple"),
    (
        ["--image", "in.png", "--outpaint", "up=64"],
        "outpaint has no side 'up': the sides are left, top, right, bottom.",
    ),
    (["--image", "in.png", "--outpaint", "left=-64"], "The outpaint left must be a whole number of pixels, 0 to 4096"),
    (["--image", "in.png", "--outpaint", "4096"], "With its outpaint borders the picture would be 8256x8256 px"),
    (["--image", "in.png", "--outpaint", "left=64,top"], "argument --outpaint: 'left=64,top' is not SIDE=PIXELS"),
    (["--image", "in.png", "--outpaint", "left=64,left=64"], "argument --outpaint: 'left=64,left=64' is not"),
    (["--image", "in.png", "--outpaint", "wide"], "argument --outpaint: 'wide' is not SIDE=PIXELS"),
    (["--image", "in.png", "--mask", "mask.png", "--width", "512"], "An edit keeps the picture's size"),
    (["--mask", "mask.png"], "A mask or outpaint edits a picture: give the picture to edit too"),
    (["--outpaint", "64"], "A mask or outpaint edits a picture"),
    (["--image", "in.png", "--mask", "mask.png", "--model", "mega"], "--image, --mask and --outpaint need --model"),
]


@pytest.mark.parametrize(("args", "message"), EDIT_MISTAKES, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_edit_mistakes_fail_before_loading(args, message, no_loading, tmp_path, capsys) -> None:
    files = edit_inputs(tmp_path)
    given = [str(tmp_path / arg) if arg.endswith(".png") else arg for arg in args]
    expected = message
    for name in [*files, "missing.png"]:
        expected = expected.replace(f"'{name}'", f"'{tmp_path / name}'")
    assert run(generate(*given, output=tmp_path / "out.png")) == 2
    assert expected in one_line_error(capsys)
    assert not (tmp_path / "out.png").exists()


def test_edits_default_to_the_inpainting_decoder(monkeypatch, tmp_path, capsys) -> None:
    loaded = []

    def record(cls, **repos):
        loaded.append(repos["decoder"])
        raise ValueError("stop here")

    monkeypatch.setattr(Kandinsky22, "load", classmethod(record))
    files = edit_inputs(tmp_path)
    assert (
        run(generate("--image", str(files["in.png"]), "--mask", str(files["mask.png"]), output=tmp_path / "o.png")) == 2
    )
    assert run(generate(output=tmp_path / "o.png")) == 2
    assert loaded == [kandinsky22.INPAINT_REPO, kandinsky22.DECODER_REPO]


def test_a_text_to_image_decoder_refuses_an_edit(tiny_prior_repo, tiny_decoder_repo, tmp_path, capsys) -> None:
    files = edit_inputs(tmp_path)
    model = tiny_kandinsky(tiny_prior_repo, tiny_decoder_repo)[:4]  # the repos; an edit has its picture's size
    args = generate(
        *model, "--image", str(files["in.png"]), "--mask", str(files["mask.png"]), output=tmp_path / "o.png"
    )
    assert run(args) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the loading lines
    assert error == (
        f"error: Editing a picture needs the inpainting decoder: load {kandinsky22.INPAINT_REPO} (this one is "
        "text-to-image)."
    )


def png_with_chunks(*chunks: tuple[bytes, bytes], after_pixels: bool = False) -> bytes:
    """A 64 x 64 PNG with more chunks (kind, data), before its pixel data (read when the file is opened) or after it
    (read with the pixels)."""
    encoded = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(encoded, "PNG")
    png = encoded.getvalue()
    extra = b"".join(struct.pack(">I", len(d)) + k + d + struct.pack(">I", zlib.crc32(k + d)) for k, d in chunks)
    at = png.rindex(b"IEND") - 4 if after_pixels else 33  # after the signature and IHDR
    return png[:at] + extra + png[at:]


BOMB = zlib.compress(b"a" * 50_000_000, 9)  # 50 kB that decompress to 50 MB
MEGABYTE = zlib.compress(b"a" * 1_000_000, 9)
PNG_BOMBS = {  # file name: (its bytes, PIL's limit it passes)
    "ztxt.png": (png_with_chunks((b"zTXt", b"comment\0\0" + BOMB)), "MAX_TEXT_CHUNK"),
    "itxt.png": (png_with_chunks((b"iTXt", b"comment\0\1\0\0\0" + BOMB)), "MAX_TEXT_CHUNK"),
    "iccp.png": (png_with_chunks((b"iCCP", b"profile\0\0" + BOMB)), "MAX_TEXT_CHUNK"),
    "late ztxt.png": (png_with_chunks((b"zTXt", b"comment\0\0" + BOMB), after_pixels=True), "MAX_TEXT_CHUNK"),
    # 70 text chunks of 1 MB: each within PIL's limit for one chunk, together past its limit for all
    "many texts.png": (png_with_chunks(*[(b"zTXt", b"c%d\0\0" % i + MEGABYTE) for i in range(70)]), "MAX_TEXT_MEMORY"),
}


@pytest.mark.parametrize("input_name", ["image", "mask"])
@pytest.mark.parametrize("bomb", PNG_BOMBS)
def test_png_chunk_bombs_are_refused_by_name(bomb, input_name, no_loading, tmp_path, capsys) -> None:
    """PIL stops decompressing past its limits; the message names the file and the input it was given as."""
    content, limit = PNG_BOMBS[bomb]
    (tmp_path / bomb).write_bytes(content)
    Image.new("RGB", (64, 64), "red").save(tmp_path / "in.png")
    picture = tmp_path / (bomb if input_name == "image" else "in.png")
    args = ["--image", str(picture)] + (["--mask", str(tmp_path / bomb)] if input_name == "mask" else [])
    assert run(generate(*args, output=tmp_path / "out.png")) == 2
    error = one_line_error(capsys)
    assert (
        error.startswith(f"error: The {input_name} '{tmp_path / bomb}' is damaged or incomplete (") and limit in error
    )


def loop(folder: Path) -> Path:
    (folder / "loop.png").symlink_to(folder / "loop.png")
    return folder / "loop.png"


SPECIAL_FILES = [
    (lambda folder: Path("/dev/zero"), "is a device, not an image file: give a PNG, JPEG, WebP, BMP or TIFF."),
    (loop, "cannot be read (Too many levels of symbolic links)."),
]


@pytest.mark.parametrize("input_name", ["image", "mask"])
@pytest.mark.parametrize(("make", "message"), SPECIAL_FILES, ids=["/dev/zero", "link loop"])
def test_devices_and_link_loops_are_no_pictures(make, message, input_name, no_loading, tmp_path, capsys) -> None:
    path = make(tmp_path)
    Image.new("RGB", (64, 64), "red").save(tmp_path / "in.png")
    args = (
        ["--image", str(path)] if input_name == "image" else ["--image", str(tmp_path / "in.png"), "--mask", str(path)]
    )
    assert run(generate(*args, output=tmp_path / "out.png")) == 2
    assert one_line_error(capsys) == f"error: The {input_name} '{path}' {message}"


@pytest.mark.parametrize("input_name", ["image", "mask"])
def test_fifos_are_refused_at_once(input_name, tmp_path) -> None:
    """A FIFO without a writer: opening it to read would wait forever. Failing before any model loads, the default
    repos need not be downloaded."""
    os.mkfifo(tmp_path / "pipe.png")
    Image.new("RGB", (64, 64), "red").save(tmp_path / "in.png")
    picture = "pipe.png" if input_name == "image" else "in.png"
    args = ["--image", picture] + (["--mask", "pipe.png"] if input_name == "mask" else [])
    process = cli_process(generate(*args, output=tmp_path / "out.png"), tmp_path)
    try:
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()  # where it hangs after all
    assert stderr.decode() == (
        f"error: The {input_name} 'pipe.png' is a FIFO (named pipe), not an image file: give a PNG, JPEG, WebP, BMP or "
        "TIFF.\n"
    )


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("f" * 300 + ".png", "is 304 bytes long, and this file system takes names up to 250 bytes here"),
        ("f" * 300 + "/fox.png", "is 300 bytes long, and this file system takes names up to 255 bytes here"),
        ("loop/fox.png", "it is a symbolic link that leads nowhere (or in a loop)"),
    ],
    ids=["a name too long", "a folder name too long", "a folder that is a link loop"],
)
def test_outputs_the_file_system_refuses_fail_before_loading(output, message, no_loading, tmp_path, capsys) -> None:
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    assert run(generate(output=tmp_path / output)) == 2
    assert message in one_line_error(capsys)


def test_an_output_in_a_folder_that_holds_no_files_fails_before_loading(no_loading, capsys) -> None:
    """/proc: root passes the permission check, but no file can be made there."""
    assert run(generate(output=Path("/proc/fox.png"))) == 2
    error = one_line_error(capsys)
    assert "Cannot write '/proc/fox.png': the folder '/proc' " in error
    assert "cannot hold new files (" in error or "is not writable" in error  # (not root)


@pytest.mark.parametrize("flag", ["prompt", "--negative"])
def test_text_that_is_not_utf8_fails_before_loading(flag, no_loading, tmp_path, capsys) -> None:
    """A Latin-1 terminal's é reaches Python as a lone surrogate (PEP 383): no tokenizer takes it."""
    args = ["generate", "a caf\udce9 fox"] if flag == "prompt" else ["generate", "a fox", "--negative", "caf\udce9"]
    assert run([*args, "-o", str(tmp_path / "out.png")]) == 2
    name = "prompt" if flag == "prompt" else "--negative"
    byte = "0xe9 at character 5" if flag == "prompt" else "0xe9 at character 3"
    assert f"error: argument {name}: the text holds byte {byte}, which is not UTF-8" in one_line_error(capsys)


def test_a_prompt_in_another_encoding_on_the_command_line(tmp_path) -> None:
    """The bytes as a shell passes them: $'a caf\\xe9 fox' (Latin-1), where Python reads arguments as UTF-8."""
    process = cli_process([b"generate", b"a caf\xe9 fox", b"-o", b"out.png"], tmp_path)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 2 and b"Traceback" not in stderr
    assert stderr.startswith(b"error: argument prompt: the text holds byte 0xe9 at character 5, which is not UTF-8")
