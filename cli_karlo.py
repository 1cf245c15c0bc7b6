"""The command line's Karlo part (`generate --model karlo`): its options, its checked request and its loader. The
Kandinsky 2.2 options Karlo has no use for are refused by name when given, rather than ignored."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from .pipelines.karlo import REPO as KARLO_REPO

if TYPE_CHECKING:
    from .pipelines import Karlo, karlo

_REPO = "use --karlo-repo: Karlo's one repo holds its prior, decoder and super-resolution"
# Kandinsky 2.2's option (by its dest) → what Karlo takes instead
KANDINSKY_ONLY = {
    "width": "Karlo draws 256x256 (--upscale RealESRGAN_x4plus for 1024x1024)",
    "height": "Karlo draws 256x256 (--upscale RealESRGAN_x4plus for 1024x1024)",
    "steps": "use --decoder-steps (and --super-res-steps)",
    "guidance": "use --decoder-guidance",
    "sampler": "Karlo samples as its reference does (unCLIP's scheduler); set --decoder-steps",
    "prior": _REPO,
    "decoder": _REPO,
}
_UNSET = object()


def add_karlo_options(gen: argparse.ArgumentParser) -> None:
    """Karlo's own settings; it shares --prior-steps and --prior-guidance (same defaults) with kandinsky22."""
    karlo = gen.add_argument_group("karlo (also --prior-steps, --prior-guidance)")
    karlo.add_argument("--decoder-steps", type=int, default=25, help="64 px decoder steps")
    karlo.add_argument("--decoder-guidance", type=float, default=8.0)
    karlo.add_argument("--super-res-steps", type=int, default=7, help="64 → 256 px super-resolution steps")
    karlo.add_argument("--karlo-repo", default=KARLO_REPO, help="Karlo repo id or local folder")


def given_kandinsky_options(
    parser: argparse.ArgumentParser, gen: argparse.ArgumentParser, argv: list[str] | None
) -> list[str]:
    """The KANDINSKY_ONLY options the command line sets, a value equal to the default included: parsed again with
    their defaults unset (argparse's own matching, abbreviations included)."""
    gen.set_defaults(**dict.fromkeys(KANDINSKY_ONLY, _UNSET))
    probe = parser.parse_args(argv)
    return [dest for dest in KANDINSKY_ONLY if getattr(probe, dest) is not _UNSET]


def karlo_request(args: argparse.Namespace) -> tuple[karlo.Request, list[str]]:
    """The checked Karlo settings, and the repo they run on."""
    from .pipelines import karlo

    if args.image is not None or args.mask is not None or args.outpaint is not None:
        raise ValueError("--image, --mask and --outpaint need --model kandinsky22: Karlo cannot edit.")
    if args.negative is not None:
        raise ValueError("--negative needs --model kandinsky22: Karlo's prior and decoder guide with the empty prompt.")
    if args.kandinsky_options:  # the first, as argparse reports one mistake at a time
        dest = args.kandinsky_options[0]
        raise ValueError(f"--{dest} is for --model kandinsky22, and Karlo would ignore it: {KANDINSKY_ONLY[dest]}.")
    request = karlo.Request(
        args.prompt,
        seed=args.seed,
        batch_size=args.batch_size,
        prior_steps=args.prior_steps,
        decoder_steps=args.decoder_steps,
        super_res_steps=args.super_res_steps,
        prior_guidance=args.prior_guidance,
        decoder_guidance=args.decoder_guidance,
        best_of=args.best_of,
    )
    return request, [args.karlo_repo]


def load_karlo(args: argparse.Namespace) -> Karlo:
    from .pipelines import Karlo

    print(f"Loading Karlo from {args.karlo_repo} …", file=sys.stderr)
    return Karlo.load(repo=args.karlo_repo, dtype=args.dtype)
