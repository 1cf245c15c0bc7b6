"""`bench_dalle_mega.py --device cpu`: ours against min-dalle on the CPU, fp32, random weights of the real sizes
(tests/hub_configs), small work, both sides on the very same tensors, timed in turns round by round
(common.time_interleaved) so that the machine's load hits both alike:

- DALL·E Mini's 256 tokens for each of --batches images (square numbers: min-dalle draws a grid) from the prompt,
  text encoder included: ours through sample_image_tokens, min-dalle through its generate_raw_image_stream. Same
  seed: the tokens must be identical, and the script fails if they are not.
- --steps of Mega's decoder at each batch, reported per step: ours as sample_image_tokens runs them (the text's
  keys and values computed once beforehand by DalleBartDecoder.start, outside the timing, like min-dalle's own
  per-generation set-up), min-dalle's sample_tokens as its generate loop calls it. The text states are random.
- The VQGAN decode of one 256² image: ours through vqgan_decode (the DALL·E VQGAN Decode node's stage), min-dalle's
  VQGanDetokenizer as its image_grid_from_tokens calls it.

--tiny: the tests' toy BART sizes (the VQGAN has only its real size), one round without warm-up.
"""

from __future__ import annotations

import importlib
import math
import tempfile
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from unittest import mock

import torch
from common import cpu_environment, environment, import_checkout, report, time_interleaved, torch_threads
from dalle_models import (
    PROMPT,
    SETTINGS,
    hyperparameters,
    min_dalle_decoder,
    min_dalle_detokenizer,
    min_dalle_encoder,
    random_bart,
    random_decoder,
)

import_checkout()
from dalle_nodes.models import dalle_bart, vqgan  # noqa: E402
from dalle_nodes.models.bart_tokenizer import BartTokenizer  # noqa: E402
from dalle_nodes.pipelines.dalle_mini import stages  # noqa: E402
from tiny_repos import import_min_dalle, write_min_dalle_tokenizer  # noqa: E402

CPU = torch.device("cpu")


def min_dalle_tokens_only(folder: Path, bart: dalle_bart.DalleBart, hp: dalle_bart.Hyperparameters):
    """MinDalle on our modules' tensors with its tokenizer files in `folder`, offline (its constructor pings the Hub);
    its image_grid_from_tokens hands back the tokens, so that generating times the tokens alone."""
    min_dalle = import_min_dalle()
    with mock.patch.object(importlib.import_module("min_dalle.min_dalle").requests, "get"):
        model = min_dalle.MinDalle(
            str(folder), torch.float32, "cpu", is_mega=False, is_reusable=False, is_verbose=False
        )
    vars(model).update(vars(hp))  # the sizes its generate loop allocates by
    model.encoder, model.decoder = min_dalle_encoder(bart.encoder, hp), min_dalle_decoder(bart.decoder, hp)
    model.is_reusable = True  # keeps its modules between calls
    model.image_grid_from_tokens = lambda image_tokens, **_: image_tokens
    return model


def mini_token_runs(bart, tokenizer: BartTokenizer, reference, count: int, seed: int) -> dict[str, Callable]:
    """Both sides' 256 tokens of `count` images from PROMPT, each as a [count, 256] tensor."""

    def ours() -> torch.Tensor:
        text = stages.prompt_tokens(tokenizer, PROMPT)
        return stages.sample_image_tokens(bart, text, count, seed, **SETTINGS).flatten(1)

    def min_dalle() -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its torch.cuda.amp.autocast is deprecated (and off on the CPU)
            stream = reference.generate_raw_image_stream(
                text=PROMPT,
                seed=seed,
                grid_size=math.isqrt(count),
                temperature=SETTINGS["temperature"],
                top_k=SETTINGS["top_k"],
                supercondition_factor=SETTINGS["supercondition"],
            )
            return next(stream)

    return {"ours": ours, "min_dalle": min_dalle}


def remember(runs: dict[str, Callable[[], torch.Tensor]], seen: dict[str, torch.Tensor]) -> dict[str, Callable]:
    """The runs, each keeping its last output in `seen`."""

    def keeping(name: str, run: Callable[[], torch.Tensor]) -> Callable[[], None]:
        return lambda: seen.__setitem__(name, run())

    return {name: keeping(name, run) for name, run in runs.items()}


def with_ratios(timed: dict) -> dict:
    """Each run's ratios to min-dalle's (wall and CPU time, above 1: ours faster)."""
    for r in timed.values():
        r["speedup"] = timed["min_dalle"]["median_s"] / r["median_s"]
        r["cpu_speedup"] = timed["min_dalle"]["cpu_median_s"] / r["cpu_median_s"]
    return timed


def with_token_check(timed: dict, seen: dict[str, torch.Tensor]) -> dict:
    """The timings with their ratios, and whether both sides' last tokens agree (and how many of them)."""
    timed = with_ratios(timed)
    timed["tokens_identical"] = torch.equal(seen["ours"], seen["min_dalle"])
    timed["fraction_equal"] = (seen["ours"] == seen["min_dalle"]).float().mean().item()
    return timed


def mini_tokens(batches: list[int], rounds: tuple[int, int], tiny: bool, seed: int) -> dict:
    """DALL·E Mini's 256 tokens at each batch, ours and min-dalle's interleaved."""
    hp = hyperparameters("mini", tiny)
    bart = random_bart(hp, CPU, torch.float32, seed)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        tokens_folder = Path(folder) / "dalle_bart_mini"  # where MinDalle looks for them
        write_min_dalle_tokenizer(tokens_folder, "vocab.json", "merges.txt")
        tokenizer = BartTokenizer.from_files(tokens_folder / "vocab.json", tokens_folder / "merges.txt")
        reference = min_dalle_tokens_only(Path(folder), bart, hp)
    results["same_prompt_tokens"] = reference.tokenizer.tokenize(PROMPT) == tokenizer.encode(PROMPT)
    for count in batches:
        seen: dict[str, torch.Tensor] = {}
        runs = remember(mini_token_runs(bart, tokenizer, reference, count, seed), seen)
        with torch.inference_mode():
            results[f"b{count}"] = with_token_check(time_interleaved(runs, *rounds), seen)
    return results


def mega_step_runs(decoder, reference, count: int, steps: int, seed: int) -> dict[str, Callable]:
    """`steps` sampling steps of `count` images on both sides, from the same random text states and prompt mask."""
    generator = torch.Generator().manual_seed(seed)
    states = torch.randn(2, dalle_bart.TEXT_TOKENS, decoder.embed_positions.embedding_dim, generator=generator)
    text = stages.text_tokens(list(range(12)))  # the rows of a 12-token prompt
    cache = decoder.start(states, text, count)  # per generation, as sample_image_tokens does
    settings = torch.tensor([[SETTINGS["temperature"]], [SETTINGS["supercondition"]]])
    step = partial(stages.sampling_step, decoder, cache, SETTINGS["top_k"], settings)
    noise = torch.ones(count, dalle_bart.IMAGE_CODES)

    def ours() -> torch.Tensor:
        codes = torch.full((count, steps + 1), dalle_bart.START_TOKEN)
        sampling = stages.sampling_generator(seed, CPU)
        for i in range(steps):  # sample_image_tokens' loop on the CPU
            stages.draw_noise(noise, sampling)
            codes[:, i + 1] = step(codes[:, i], cache.positions[i : i + 1], noise)
        return codes[:, 1:]

    rows = [0] * count + [1] * count  # min-dalle's per-generation set-up, as in its generate loop
    their_states, their_mask = states[rows], text[rows].ne(dalle_bart.PAD_TOKEN)[:, None, None, :]
    width = decoder.embed_positions.embedding_dim
    attention_state = torch.zeros(len(decoder.layers), 4 * count, dalle_bart.IMAGE_TOKENS, width)
    their_settings = torch.tensor([SETTINGS["temperature"], SETTINGS["top_k"], SETTINGS["supercondition"]])
    positions = torch.arange(dalle_bart.IMAGE_TOKENS)

    def min_dalle() -> torch.Tensor:
        codes = torch.full((count, steps + 1), dalle_bart.START_TOKEN)
        torch.manual_seed(seed)
        for i in range(steps):
            codes[:, i + 1], _ = reference.sample_tokens(
                settings=their_settings,
                attention_mask=their_mask,
                encoder_state=their_states,
                attention_state=attention_state,
                prev_tokens=codes[:, [i]],
                token_index=positions[[i]],
            )
        return codes[:, 1:]

    return {"ours": ours, "min_dalle": min_dalle}


def mega_steps(batches: list[int], steps: int, rounds: tuple[int, int], tiny: bool, seed: int) -> dict:
    """Mega's decoder, `steps` steps at each batch, ours and min-dalle's interleaved; per-step medians too."""
    hp = hyperparameters("mega", tiny)
    decoder = random_decoder(hp, seed)
    reference = min_dalle_decoder(decoder, hp)
    results = {}
    for count in batches:
        seen: dict[str, torch.Tensor] = {}
        with torch.inference_mode():
            runs = remember(mega_step_runs(decoder, reference, count, steps, seed), seen)
            timed = results[f"b{count}"] = with_token_check(time_interleaved(runs, *rounds), seen)
        for side in ("ours", "min_dalle"):
            timed[side]["cpu_median_per_step_s"] = timed[side]["cpu_median_s"] / steps
            timed[side]["median_per_step_s"] = timed[side]["median_s"] / steps
    return results


def vqgan_decode(rounds: tuple[int, int], seed: int) -> dict:
    """One 256² image from 16 × 16 random codes: our VQGAN and min-dalle's detokenizer on the same weights."""
    with torch.device("meta"):
        ours = vqgan.VQGAN()
    ours = ours.to_empty(device=CPU)
    torch.manual_seed(seed)  # PyTorch's default initialisation, drawn on the CPU
    for module in ours.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    ours.eval().requires_grad_(False)
    theirs = min_dalle_detokenizer(ours)
    codes = torch.randint(dalle_bart.IMAGE_CODES, (1, dalle_bart.IMAGE_SIDE, dalle_bart.IMAGE_SIDE))
    seen: dict[str, torch.Tensor] = {}
    runs = {
        "ours": lambda: stages.vqgan_decode(lambda: ours, codes, CPU, lambda: None) * 255,
        "min_dalle": lambda: theirs.forward(False, codes.flatten(1)),  # as its image_grid_from_tokens calls it
    }
    with torch.inference_mode():
        timed = with_ratios(time_interleaved(remember(runs, seen), *rounds))
    timed["max_abs_pixel_diff_of_255"] = (seen["ours"][0] - seen["min_dalle"]).abs().max().item()
    return timed


def cpu_table(results: dict, steps: int) -> list[tuple]:
    table = [("stage", "batch", "side", "median s", "CPU s", "x vs min-dalle (wall)", "x vs min-dalle (CPU time)")]
    parts = {"Mini 256 tokens": ("mini_tokens", 1), f"Mega step (of {steps})": ("mega_steps", steps)}
    for stage, (part, per) in parts.items():
        for batch, timed in results.get(part, {}).items():
            if not batch.startswith("b"):
                continue
            for side in ("ours", "min_dalle"):
                r = timed[side]
                cells = (f"{r['median_s'] / per:.3f}", f"{r['cpu_median_s'] / per:.3f}")
                table.append((stage, batch, side, *cells, f"{r['speedup']:.2f}", f"{r['cpu_speedup']:.2f}"))
    for side in ("ours", "min_dalle") if "vqgan_decode" in results else ():
        r = results["vqgan_decode"][side]
        cells = (f"{r['median_s']:.3f}", f"{r['cpu_median_s']:.3f}", f"{r['speedup']:.2f}", f"{r['cpu_speedup']:.2f}")
        table.append(("VQGAN decode 256²", "b1", side, *cells))
    return table


def cpu_main(args) -> dict:
    """The three comparisons (see the docstring at the top); JSON, then a table. Fails if any tokens differ."""
    rounds, steps = ((1, 0), 2) if args.tiny else ((args.repeat, 1), args.steps)
    work = "tiny BART sizes" if args.tiny else "real sizes, random weights"
    results = {"work": f"DALL·E Mini / Mega and the VQGAN on the CPU, fp32, {work}, {SETTINGS}"}
    with torch_threads(args.threads):
        results |= environment(CPU) | cpu_environment()
        if "mini" in args.parts:
            results["mini_tokens"] = mini_tokens(args.batches, rounds, args.tiny, args.seed)
        if "mega" in args.parts:
            results["mega_steps"] = mega_steps(args.batches, steps, rounds, args.tiny, args.seed)
        if "vqgan" in args.parts:
            results["vqgan_decode"] = vqgan_decode(rounds, args.seed)
    results["load_average_after"] = cpu_environment()["load_average"]
    report(results, cpu_table(results, steps))
    differing = [
        f"{part} {batch}"
        for part in ("mini_tokens", "mega_steps")
        for batch, timed in results.get(part, {}).items()
        if batch.startswith("b") and not timed["tokens_identical"]
    ]
    if differing:
        raise AssertionError(f"our tokens differ from min-dalle's: {', '.join(differing)}")
    return results
