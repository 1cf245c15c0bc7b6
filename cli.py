"""`python -m dalle_nodes generate "a prompt" -o out.png`: the node chain without a ComfyUI server.
`python -m dalle_nodes queue WORKFLOW.json`: run a workflow on a ComfyUI server and save its images."""

from __future__ import annotations

import argparse
import io
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from .cli_karlo import add_karlo_options, given_kandinsky_options, karlo_request, load_karlo
from .cli_translation import add_translate_options, translated_request
from .engine import files
from .engine.checkpoints import error_summary
from .engine.hub import source_from_input
from .pipelines import sampling
from .pipelines.dalle_mini import REPO as MINI_REPO
from .pipelines.kandinsky22 import DECODER_REPO, INPAINT_REPO, PRIOR_REPO
from .pipelines.rerank import CLIP_REPO
from .pipelines.upscale import PRESETS

if TYPE_CHECKING:
    from PIL import Image

    from .pipelines import DalleMini, Kandinsky22, dalle_mini, kandinsky22
    from .pipelines.rerank import Ranker

MODELS = ("kandinsky22", "karlo", "mega", "mini")
NOTHING_TO_REPAINT = (
    "note: the mask repaints nothing (no pixel of it is at least half white or half transparent; without --mask, "
    "no pixel of the picture is at least half transparent): the picture will be written unchanged."
)


class Parser(argparse.ArgumentParser):
    """Usage mistakes end as one line and exit code 2, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def outpaint_arg(text: str) -> int | dict[str, int]:
    """`--outpaint 128` (every side) or `--outpaint left=256,right=256` (pixels); the sides' names and the values are
    checked with the other settings (kandinsky22.Request)."""
    try:
        if "=" not in text:
            return int(text)
        pairs = [item.split("=") for item in text.split(",")]
        sides = {key.strip(): int(value) for key, value in pairs}
    except ValueError:  # not a number, or an item that is not one SIDE=PIXELS
        sides = None
    if sides is None or len(sides) != len(pairs):
        raise argparse.ArgumentTypeError(
            f"'{text}' is not SIDE=PIXELS,… (e.g. left=256,right=256; sides left, top, right, bottom, each once) or "
            "one number of pixels for every side"
        )
    return sides


def text_arg(text: str) -> str:
    """Text for a prompt or a setting, as Unicode. Bytes that are not UTF-8 (typed in a Latin-1 terminal, say) reach
    Python as lone surrogates (PEP 383), which no tokenizer and no JSON reader takes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        code = ord(text[error.start])
        byte = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"U+{code:04X}"
        raise argparse.ArgumentTypeError(
            f"the text holds {byte} at character {error.start}, which is not UTF-8: write it in UTF-8 (is the "
            "terminal set to another encoding?)"
        ) from None
    return text


def seconds_arg(text: str) -> float:
    """A wait in seconds: finite and above 0 (NaN, 0 or less would end the wait before it began, with the prompt
    queued all the same)."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds above 0 (e.g. 600)")
    return seconds


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = Parser(prog="python -m dalle_nodes", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser(
        "generate",
        help="text → image with Kandinsky 2.2 (the open DALL·E 2) or DALL·E Mega/Mini (the open DALL·E 1); edits "
        "(inpainting, outpainting) with Kandinsky 2.2",
    )
    # the order of these calls is the order of --help's sections
    add_generate_options(gen)
    add_kandinsky22_options(gen)
    add_edit_options(gen)
    add_karlo_options(gen)
    add_dalle_mini_options(gen)
    add_queue_command(commands)
    args = parser.parse_args(argv)
    if args.command == "generate" and args.model == "karlo":  # what Karlo would ignore is refused (karlo_request)
        args.kandinsky_options = given_kandinsky_options(parser, gen, argv)
    return args


def add_generate_options(gen: argparse.ArgumentParser) -> None:
    """What every model family takes: the prompt, where the images go, seed, batch, dtype, upscaling, ranking."""
    gen.add_argument("prompt", type=text_arg)
    gen.add_argument(
        "-o", "--output", type=Path, default=Path("out.png"), help="image path, e.g. .png (batches add _1, _2 …)"
    )
    gen.add_argument("--overwrite", action="store_true", help="replace existing files (else they are never touched)")
    gen.add_argument(
        "--model",
        choices=MODELS,
        default="kandinsky22",
        help="DALL·E 2 (kandinsky22; karlo: as the paper drew it, 256 px) or DALL·E 1 (mega, mini: 256 px)",
    )
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--batch-size", type=int, default=1)
    gen.add_argument("--dtype", choices=("auto", "fp32", "fp16", "bf16"), default="auto")
    gen.add_argument("--upscale", choices=list(PRESETS), default=None, help="GAN-upscale the result with this preset")
    gen.add_argument(
        "--best-of",
        type=int,
        default=None,
        metavar="N",
        help="sample N images, keep the --batch-size best by CLIP score",
    )
    gen.add_argument(
        "--clip",
        default=None,
        help=f"CLIP repo id or local folder for --best-of (default: {CLIP_REPO}; Kandinsky: the prior's own towers)",
    )
    add_translate_options(gen)


def add_kandinsky22_options(gen: argparse.ArgumentParser) -> None:
    k22 = gen.add_argument_group("kandinsky22")
    k22.add_argument("--negative", type=text_arg, default=None, help="negative prompt")
    k22.add_argument("--steps", type=int, default=50, help="decoder steps")
    k22.add_argument("--prior-steps", type=int, default=25)
    k22.add_argument("--guidance", type=float, default=4.0, help="decoder guidance")
    k22.add_argument("--prior-guidance", type=float, default=4.0)
    k22.add_argument("--width", type=int, default=None, help="default 768; an edit has its picture's size")
    k22.add_argument("--height", type=int, default=None, help="default 768; an edit has its picture's size")
    k22.add_argument("--sampler", choices=sampling.DECODER_SAMPLERS, default="ddpm")
    k22.add_argument("--prior", default=PRIOR_REPO, help="prior repo id or local folder")
    k22.add_argument(
        "--decoder",
        default=None,
        help=f"decoder repo id or local folder (default: {DECODER_REPO}; with --image {INPAINT_REPO})",
    )


def add_edit_options(gen: argparse.ArgumentParser) -> None:
    edits = gen.add_argument_group("edits (kandinsky22): repaint part of a picture, or paint beyond its borders")
    edits.add_argument("--image", type=Path, default=None, help="the picture to edit")
    edits.add_argument(
        "--mask",
        type=Path,
        default=None,
        help="white (or transparent) = repaint, black = keep; else: the picture's transparency",
    )
    edits.add_argument(
        "--outpaint",
        type=outpaint_arg,
        default=None,
        metavar="SIDE=PX,…",
        help="borders to paint, e.g. left=256,right=256 (sides left, top, right, bottom) or 128 for every side",
    )


def add_dalle_mini_options(gen: argparse.ArgumentParser) -> None:
    mini = gen.add_argument_group("mega / mini")
    mini.add_argument("--repo", default=MINI_REPO, help="min-dalle repo id or local folder")
    mini.add_argument("--top-k", type=int, default=256)
    mini.add_argument("--temperature", type=float, default=1.0)
    mini.add_argument("--supercondition", type=float, default=16.0)


def add_queue_command(commands: argparse._SubParsersAction) -> None:
    queue = commands.add_parser("queue", help="run a workflow (UI or API format) on a ComfyUI server")
    queue.add_argument("workflow", type=Path, help="a .json (UI) or .api.json (API) workflow file")
    queue.add_argument("--server", default="http://127.0.0.1:8188", help="ComfyUI's address")
    queue.add_argument(
        "--set",
        action="append",
        type=text_arg,
        default=[],
        metavar="NODE.INPUT=VALUE",
        help="NODE: id, title or type; repeatable",
    )
    queue.add_argument("--prompt", type=text_arg, help="the text of every DALL·E prompt (not the negative ones)")
    queue.add_argument("--seed", type=int, help="the seed of every DALL·E sampler")
    queue.add_argument("--out", type=Path, default=Path("."), help="folder for the images")
    queue.add_argument("--timeout", type=seconds_arg, default=3600, help="seconds to wait for the prompt to finish")
    queue.add_argument("--json", action="store_true", help="print a JSON summary instead of one path per line")


def generate(args: argparse.Namespace) -> list[Path]:
    """Every setting, the output paths and an edit's picture and mask files are checked, and the upscaler is ready,
    before the first model loads: a mistake costs no sampling and no download."""
    from .pipelines import Upscaler
    from .pipelines.rerank import SCORE_KEY

    paths = files.numbered(args.output, args.batch_size)
    files.check_image_outputs(paths, args.overwrite)
    kandinsky = args.model == "kandinsky22"
    make_request, load_model = FAMILIES.get(args.model, (dalle_mini_request, load_dalle_mini))
    request, repos = make_request(args)
    if kandinsky and request.repaints_nothing:
        print(NOTHING_TO_REPAINT, file=sys.stderr)
    translate = [args.translate_model] if args.translate_model is not None else []
    for repo in repos + ([args.clip] if args.clip else []) + translate:  # a malformed id or missing folder fails now
        source_from_input(repo, None, None).local_folder  # noqa: B018  (checks the path or repo id)
    request = translated_request(args, request)  # first: the smallest model
    ranker = load_ranker(args)  # first: smaller, fails sooner
    upscaler = Upscaler.load(args.upscale) if args.upscale else None
    model = load_model(args)
    images = model.run(request, ranker)
    scores = [image.info.get(SCORE_KEY) for image in images]  # read before upscaling makes new images
    if upscaler is not None:
        print(f"Upscaling with {args.upscale} …", file=sys.stderr)
        images = upscaler.upscale(images)
    return write_images(paths, images, scores, args.overwrite)


def decoder_repo(args: argparse.Namespace) -> str:
    """--decoder, else the inpainting decoder for an edit, else the text-to-image one."""
    return args.decoder if args.decoder is not None else INPAINT_REPO if args.image is not None else DECODER_REPO


def kandinsky22_request(args: argparse.Namespace) -> tuple[kandinsky22.Request, list[str]]:
    """The checked Kandinsky 2.2 settings, and the prior and decoder repos they run on."""
    from .pipelines import kandinsky22

    request = kandinsky22.Request(
        args.prompt,
        negative=args.negative,
        seed=args.seed,
        steps=args.steps,
        prior_steps=args.prior_steps,
        guidance=args.guidance,
        prior_guidance=args.prior_guidance,
        width=args.width,
        height=args.height,
        batch_size=args.batch_size,
        sampler=args.sampler,
        best_of=args.best_of,
        image=args.image,
        mask=args.mask,
        outpaint=args.outpaint,
    )
    return request, [args.prior, decoder_repo(args)]


def load_kandinsky22(args: argparse.Namespace) -> Kandinsky22:
    from .pipelines import Kandinsky22

    decoder = decoder_repo(args)
    print(f"Loading {args.prior} and {decoder} …", file=sys.stderr)
    return Kandinsky22.load(prior=args.prior, decoder=decoder, dtype=args.dtype)


def dalle_mini_request(args: argparse.Namespace) -> tuple[dalle_mini.Request, list[str]]:
    """The checked DALL·E Mega / Mini settings, and the repo they run on."""
    from .pipelines import dalle_mini

    if args.image is not None or args.mask is not None or args.outpaint is not None:
        raise ValueError("--image, --mask and --outpaint need --model kandinsky22: DALL·E Mega and Mini cannot edit.")
    request = dalle_mini.Request(
        args.prompt,
        seed=args.seed,
        batch_size=args.batch_size,
        top_k=args.top_k,
        temperature=args.temperature,
        supercondition=args.supercondition,
        best_of=args.best_of,
    )
    return request, [args.repo]


def load_dalle_mini(args: argparse.Namespace) -> DalleMini:
    from .pipelines import DalleMini

    print(f"Loading DALL·E {args.model} from {args.repo} …", file=sys.stderr)
    return DalleMini.load(repo=args.repo, variant=args.model, dtype=args.dtype)


# --model → its checked request and its loader (mega and mini: dalle_mini's)
FAMILIES = {"kandinsky22": (kandinsky22_request, load_kandinsky22), "karlo": (karlo_request, load_karlo)}


def load_ranker(args: argparse.Namespace) -> Ranker | None:
    """The CLIP model that ranks --best-of's samples; None where nothing is ranked, or where Kandinsky ranks with its
    prior's own CLIP towers (unless --clip says otherwise)."""
    from .pipelines.rerank import Ranker

    if args.best_of is None or not (args.clip or args.model != "kandinsky22"):
        return None
    print(f"Loading CLIP from {args.clip or CLIP_REPO} …", file=sys.stderr)
    return Ranker.load(args.clip or CLIP_REPO, dtype=args.dtype)


def write_images(
    paths: list[Path], images: list[Image.Image], scores: list[float | None], overwrite: bool
) -> list[Path]:
    """Each image to its path, printed as it is written (with its CLIP score where it was ranked)."""
    written = []
    for path, image, score in zip(paths, images, scores, strict=True):
        encoded = io.BytesIO()
        image.save(encoded, files.IMAGE_FORMATS[path.suffix.lower()])
        written.append(files.write_file(path, encoded.getvalue(), overwrite))
        files.print_path(str(written[-1]) if score is None else f"{written[-1]}\t{score:.4f}")
    return written


def main(argv: list[str] | None = None) -> int:
    """Exit codes of generate: 0 done; 2 bad input (a setting, the output path, a repo or checkpoint: not found, not
    downloaded, damaged or unreadable); 3 a file error while running (disk full, a file that cannot be written);
    1 out of memory, or an internal error (with its traceback); 130 stopped with Ctrl-C (no file is left
    half-written). The queue command documents its own."""
    args = parse_args(argv)
    if args.command == "queue":
        from .client.queue_workflow import queue_workflow
        from .nodes import NODE_CLASS_MAPPINGS

        return queue_workflow(args, NODE_CLASS_MAPPINGS)
    from .engine.device import is_out_of_memory

    try:
        generate(args)
    except KeyboardInterrupt:
        print("interrupted: stopped with Ctrl-C; no file was left half-written.", file=sys.stderr)
        return 130
    except ValueError as error:  # our checks, CheckpointError and OutputError
        print(f"error: {error_summary(error)}", file=sys.stderr)
        return 2
    except OSError as error:
        where = f" ({error.filename})" if error.filename else ""
        print(f"error: {error_summary(error) if not error.strerror else error.strerror}{where}", file=sys.stderr)
        return 3
    except (RuntimeError, MemoryError) as error:
        if not (isinstance(error, MemoryError) or is_out_of_memory(error)):
            raise  # a bug: its traceback is what a report needs
        print("error: out of memory: try a smaller --batch-size, --width/--height, or --dtype fp16.", file=sys.stderr)
        return 1
    return 0
