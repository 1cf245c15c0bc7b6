"""`bench_k22.py --device cpu`: each Kandinsky 2.2 module alone at full size in fp32 (a chain would take hours).

A prior step and a UNet step at batch 2 (one guided image) and a MoVQ decode of one --size² image, ours and
diffusers' interleaved round by round so that the machine's load hits both alike (common.time_interleaved), one
module pair in memory at a time, the same random weights on both sides. Our prior step runs as our sampler runs
it: on the text's keys and values, encoded once per generation (PriorTransformer.encode_text) outside the step;
that one-off encode_text is timed in the same rounds, as a row of its own. --tiny: the tests' toy widths at 64²,
one round without warm-up.
"""

from __future__ import annotations

import torch
from common import cpu_environment, environment, import_checkout, random_module, report, time_interleaved, torch_threads
from k22_models import adopt, diffusers_calls, diffusers_config, ours_calls

import_checkout()
from dalle_nodes.models.movq import MoVQ, MoVQConfig  # noqa: E402
from dalle_nodes.models.prior import PriorConfig, PriorTransformer  # noqa: E402
from dalle_nodes.models.unet import KandinskyUNet, UNetConfig  # noqa: E402
from tiny_repos import DECODER_CONFIGS, PRIOR_CONFIGS, tiny_movq_config, tiny_unet_config  # noqa: E402

CPU_MODULES = {  # diffusers' class, our config and module classes
    "prior": ("PriorTransformer", PriorConfig, PriorTransformer),
    "unet": ("UNet2DConditionModel", UNetConfig, KandinskyUNet),
    "movq": ("VQModel", MoVQConfig, MoVQ),
}
CPU_CALLS = {"prior": "prior_step", "unet": "unet_step", "movq": "movq_decode"}
TINY_PRIOR = {"num_attention_heads": 2, "attention_head_dim": 8, "num_layers": 2, "embedding_dim": 16}  # tiny_repos'


def module_configs(tiny: bool) -> dict[str, dict]:
    """diffusers' configs of the three modules: the real ones, or the tests' tiny repos' widths."""
    prior = diffusers_config(PRIOR_CONFIGS / "prior" / "config.json")
    if tiny:
        return {"prior": prior | TINY_PRIOR, "unet": tiny_unet_config(), "movq": tiny_movq_config()}
    return {
        "prior": prior,
        "unet": diffusers_config(DECODER_CONFIGS / "unet" / "config.json"),
        "movq": diffusers_config(DECODER_CONFIGS / "movq" / "config.json"),
    }


def cpu_pair(what: str, config: dict, seed: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Ours and diffusers' module `what` of `config`, fp32, the same random weights."""
    import diffusers

    name, config_cls, module_cls = CPU_MODULES[what]
    generator = torch.Generator().manual_seed(seed)
    theirs = random_module(lambda: getattr(diffusers, name)(**config), "cpu", torch.float32, generator)
    return adopt(theirs, config, config_cls, module_cls, torch.float32, what), theirs


def cpu_inputs(size: int, dim: int, seed: int) -> dict[str, torch.Tensor]:
    """Random inputs of one guided image (batch 2) at size²; `dim` is the CLIP embedding width."""
    generator = torch.Generator().manual_seed(seed)
    latent = size // 8
    return {
        "t": torch.tensor(500),
        "x": torch.randn(2, 4, latent, latent, generator=generator),
        "embeds": torch.randn(2, dim, generator=generator),
        "states": torch.randn(2, 77, dim, generator=generator),
        "mask": torch.ones(2, 77, dtype=torch.bool),
        "z": torch.randn(1, 4, latent, latent, generator=generator),
    }


def cpu_time_pair(what: str, config: dict, inputs: dict, rounds: tuple[int, int], seed: int) -> dict:
    """Ours and diffusers' module `what` built, then called as each side's pipeline calls it, in turns, under
    inference mode, `rounds` (timed, warm-up); each run's ratios to diffusers' (wall and CPU time); for the prior
    also our encode_text."""
    ours, theirs = cpu_pair(what, config, seed)
    call = CPU_CALLS[what]
    with torch.inference_mode():
        mine = ours_calls(what, ours, inputs)
        runs = {"ours": mine[call], "diffusers": diffusers_calls(what, theirs, inputs)[call]}
        if what == "prior":
            runs["ours_encode_text"] = mine["prior_encode_text"]
        timed = time_interleaved(runs, *rounds)
        ours_out, theirs_out = (output_tensor(runs[side]()) for side in ("ours", "diffusers"))
    for r in timed.values():
        r["speedup"] = timed["diffusers"]["median_s"] / r["median_s"]
        r["cpu_speedup"] = timed["diffusers"]["cpu_median_s"] / r["cpu_median_s"]
    # the same work on both sides: the outputs agree
    timed["relative_error_vs_diffusers"] = ((ours_out - theirs_out).norm() / theirs_out.norm()).item()
    return timed


def output_tensor(output: object) -> torch.Tensor:
    """A call's output tensor: ours return one; diffusers' a tuple or an output class (sample, predicted embedding)."""
    if isinstance(output, torch.Tensor):
        return output.float()
    if isinstance(output, tuple):
        return output[0].float()
    return next(v for v in vars(output).values() if isinstance(v, torch.Tensor)).float()


def cpu_main(args) -> dict:
    """The modules alone, interleaved (see the docstring at the top); JSON, then a table."""
    size, rounds = (64, (1, 0)) if args.tiny else (args.size, (args.step_repeat, 1))
    configs = module_configs(args.tiny)
    results = {"work": f"Kandinsky 2.2 modules alone, {'tiny' if args.tiny else 'full size'}, fp32, {size}², batch 2"}
    with torch_threads(args.threads):
        results |= environment(torch.device("cpu")) | cpu_environment()
        inputs = cpu_inputs(size, configs["prior"]["embedding_dim"], args.seed)
        for what in args.modules:
            results[CPU_CALLS[what]] = cpu_time_pair(what, configs[what], inputs, rounds, args.seed)
    results["load_average_after"] = cpu_environment()["load_average"]
    table = [("call", "side", "median s", "CPU s", "x vs diffusers (wall)", "x vs diffusers (CPU time)")]
    for what in args.modules:
        for side, r in results[CPU_CALLS[what]].items():
            if not isinstance(r, dict):
                continue
            times = (f"{r['median_s']:.3f}", f"{r['cpu_median_s']:.3f}")
            table.append((CPU_CALLS[what], side, *times, f"{r['speedup']:.2f}", f"{r['cpu_speedup']:.2f}"))
    report(results, table)
    return results
