"""`python -m dalle_nodes generate "a prompt" -o out.png`: the node chain without a ComfyUI server."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .models import sampling
from .models.kandinsky22 import DECODER_REPO, PRIOR_REPO


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dalle_nodes", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="text → image with Kandinsky 2.2 (the open DALL·E 2)")
    gen.add_argument("prompt")
    gen.add_argument("-o", "--output", type=Path, default=Path("out.png"), help="PNG path (batches add _1, _2 …)")
    gen.add_argument("--negative", default=None, help="negative prompt")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--steps", type=int, default=50, help="decoder steps")
    gen.add_argument("--prior-steps", type=int, default=25)
    gen.add_argument("--guidance", type=float, default=4.0, help="decoder guidance")
    gen.add_argument("--prior-guidance", type=float, default=4.0)
    gen.add_argument("--width", type=int, default=768)
    gen.add_argument("--height", type=int, default=768)
    gen.add_argument("--sampler", choices=sampling.DECODER_SAMPLERS, default="ddpm")
    gen.add_argument("--batch-size", type=int, default=1)
    gen.add_argument("--prior", default=PRIOR_REPO, help="prior repo id or local folder")
    gen.add_argument("--decoder", default=DECODER_REPO, help="decoder repo id or local folder")
    gen.add_argument("--dtype", choices=("auto", "fp32", "fp16", "bf16"), default="auto")
    return parser.parse_args(argv)


def generate(args: argparse.Namespace) -> list[Path]:
    import numpy as np
    from PIL import Image

    from .nodes import NODE_CLASS_MAPPINGS as NODES

    print(f"Loading prior {args.prior} …", file=sys.stderr)
    prior, text_encoder = NODES["DalleLoadPrior"]().load(args.prior, "main", args.dtype)
    encode = NODES["DalleTextEncode"]().encode
    (positive,) = encode(text_encoder, args.prompt)
    negative = {"negative": encode(text_encoder, args.negative)[0]} if args.negative else {}
    (embeds,) = NODES["DallePriorSample"]().sample(
        prior, positive, args.seed, args.prior_steps, args.prior_guidance, args.batch_size, **negative
    )
    print(f"Loading decoder {args.decoder} …", file=sys.stderr)
    decoder, vq_vae = NODES["DalleLoadDecoder"]().load(args.decoder, "main", args.dtype)
    (latent,) = NODES["DalleDecoderSample"]().sample(
        decoder, embeds, args.width, args.height, args.steps, args.guidance, args.sampler, False, args.seed
    )
    (images,) = NODES["DalleVQDecode"]().decode(vq_vae, latent)
    paths = (
        [args.output]
        if len(images) == 1
        else [args.output.with_name(f"{args.output.stem}_{i + 1}{args.output.suffix}") for i in range(len(images))]
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    for path, image in zip(paths, images, strict=True):
        Image.fromarray(np.clip(image.numpy() * 255 + 0.5, 0, 255).astype(np.uint8)).save(path)
        print(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from .models.hub import CheckpointError

    try:
        generate(args)
    except (CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
