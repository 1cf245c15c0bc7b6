"""VRAM each Kandinsky 2.2 stage needs, found without a GPU: weights, and activation peaks traced on the meta device.

Every module is built at full size from the real configs (tests/hub_configs) on the meta device, where it costs
no memory or compute. Weights: parameters and buffers × dtype size. Activations: `engine.memory.peak_live_bytes`,
the most bytes of tensors alive at once during one call (eager, as the nodes run it), with attention as the CUDA
fused kernels allocate it; the math-path numbers show what a device without them needs. Beside each trace, the
closed-form estimate the nodes hand to ComfyUI (calibrated feature-map counts × HEADROOM).

Stages as the nodes run them, for `batch` images: text encoder (the prompt and the empty prompt), prior (2 × batch
rows with guidance), decoder UNet (one step, 2 × batch rows), MoVQ decode (one image at a time, whatever the
batch). The image encoder runs once per checkpoint (the zero-image embedding, cached) or for DalleImageEncode.
The chain's peak with stages offloaded between each other is the largest stage's weights + activations; with
everything resident it is the sum of the text-to-image weights (image encoder not included) + the largest
activations.

    python benchmarks/vram_k22.py                       # bf16; 512², 768², 1024²; batch 1 and 4 (seconds, CPU)
    python benchmarks/vram_k22.py --dtype fp16 --sizes 768 --batches 1 2
"""

from __future__ import annotations

import argparse
import json

import torch
from common import ROOT, import_package, memory_tables

import_package()
from dalle_nodes.engine import memory  # noqa: E402
from dalle_nodes.models.movq import MoVQ, MoVQConfig  # noqa: E402
from dalle_nodes.models.prior import PriorConfig, PriorTransformer  # noqa: E402
from dalle_nodes.models.unet import KandinskyUNet, UNetConfig  # noqa: E402
from dalle_nodes.pipelines.kandinsky22 import memory as kandinsky22_memory  # noqa: E402

CONFIGS = ROOT / "tests" / "hub_configs"
PRIOR_REPO = CONFIGS / "kandinsky-community--kandinsky-2-2-prior"
DECODER_REPO = CONFIGS / "kandinsky-community--kandinsky-2-2-decoder"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
STAGES = ("text_encoder", "image_encoder", "prior", "unet", "movq")
TEXT_TO_IMAGE = ("text_encoder", "prior", "unet", "movq")  # resident after the first run


def read_config(path) -> dict:
    return json.loads(path.read_text())


def build_models(dtype: torch.dtype) -> tuple[dict[str, torch.nn.Module], dict]:
    """Every stage's module at full size on the meta device, and our configs of prior, UNet and MoVQ."""
    from transformers import (
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    configs = {
        "prior": PriorConfig.from_diffusers(read_config(PRIOR_REPO / "prior" / "config.json")),
        "unet": UNetConfig.from_diffusers(read_config(DECODER_REPO / "unet" / "config.json")),
        "movq": MoVQConfig.from_diffusers(read_config(DECODER_REPO / "movq" / "config.json")),
    }
    text_config = CLIPTextConfig(**read_config(PRIOR_REPO / "text_encoder" / "config.json"))
    vision_config = CLIPVisionConfig(**read_config(PRIOR_REPO / "image_encoder" / "config.json"))
    builders = {
        "text_encoder": lambda: CLIPTextModelWithProjection(text_config),
        "image_encoder": lambda: CLIPVisionModelWithProjection(vision_config),
        "prior": lambda: PriorTransformer(configs["prior"]),
        "unet": lambda: KandinskyUNet(configs["unet"]),
        "movq": lambda: MoVQ(configs["movq"]),
    }
    models = {}
    for name, build in builders.items():
        with torch.device("meta"):
            models[name] = build().to(dtype).eval().requires_grad_(False)
    return models, configs


def weights(module: torch.nn.Module) -> dict:
    """Parameter count, and the bytes the module holds on the device (buffers included)."""
    params = sum(p.numel() for p in module.parameters())
    tensors = [*module.parameters(), *module.buffers()]
    return {"params": params, "bytes": sum(t.numel() * t.element_size() for t in tensors)}


def trace_text_encoder(encoder: torch.nn.Module, fused_attention: bool) -> int:
    """The text node's call: the prompt and the empty prompt, 77 tokens each."""
    tokens = torch.zeros(2, encoder.config.max_position_embeddings, dtype=torch.long, device="meta")
    return memory.peak_live_bytes(encoder, tokens, fused_attention=fused_attention)[1]


def trace_image_encoder(encoder: torch.nn.Module, fused_attention: bool) -> int:
    """One image at the tower's size (224²): the zero-image embedding."""
    size = encoder.config.image_size
    pixels = torch.empty(1, 3, size, size, device="meta", dtype=encoder.dtype)
    return memory.peak_live_bytes(encoder, pixels, fused_attention=fused_attention)[1]


def stage_activations(models: dict, configs: dict, dtype: torch.dtype, sizes: list[int], batches: list[int]) -> dict:
    """{f"{size}_b{batch}": {stage: traced peak (fused attention), traced peak on the math path, the nodes'
    estimate}}. Each stage is traced once for the inputs it sees: the encoders' do not depend on size or batch,
    the prior's on the batch only, MoVQ's (one image at a time) on the size only."""
    rows = {batch: 2 * batch for batch in batches}  # guidance: an unconditional and a conditional row per image

    def both(trace, *args) -> dict:
        return {"traced": trace(*args, fused_attention=True), "traced_math": trace(*args, fused_attention=False)}

    text = both(trace_text_encoder, models["text_encoder"])
    image = both(trace_image_encoder, models["image_encoder"])
    prior = {batch: both(kandinsky22_memory.traced_prior_step, models["prior"], rows[batch]) for batch in batches}
    movq = {size: both(kandinsky22_memory.traced_movq_decode, models["movq"], size, size) for size in sizes}
    runs = {}
    for batch in batches:
        for size in sizes:
            latent = size // 8
            unet = both(kandinsky22_memory.traced_unet_step, models["unet"], rows[batch], latent, latent)
            estimates = {
                "prior": kandinsky22_memory.prior_step_bytes(configs["prior"], rows[batch], dtype),
                "unet": kandinsky22_memory.unet_step_bytes(configs["unet"], rows[batch], latent, latent, dtype),
                "movq": kandinsky22_memory.movq_decode_bytes(configs["movq"], size, size, dtype),
            }
            traced = {
                "text_encoder": text,
                "image_encoder": image,
                "prior": prior[batch],
                "unet": unet,
                "movq": movq[size],
            }
            runs[f"{size}_b{batch}"] = {stage: traced[stage] | {"estimate": estimates.get(stage)} for stage in STAGES}
    return runs


def chain_peaks(stage_weights: dict, activations: dict) -> dict:
    """Peak bytes of the chain, traced and as the nodes budget it (the encoders, which have no estimate, at their
    trace): stages offloaded between each other, text to image (after the first run) and in the first run, whose
    image encoder makes the zero-image embedding; or all text-to-image models resident."""
    result = {}
    for key in ("traced", "estimate"):
        needs = {stage: act[key] if act[key] is not None else act["traced"] for stage, act in activations.items()}
        peaks = {stage: stage_weights[stage]["bytes"] + needs[stage] for stage in STAGES}
        largest = max(TEXT_TO_IMAGE, key=peaks.get)
        resident = sum(stage_weights[stage]["bytes"] for stage in TEXT_TO_IMAGE)
        result[key] = {
            "offloaded_bytes": peaks[largest],
            "offloaded_largest_stage": largest,
            "first_run_offloaded_bytes": max(peaks.values()),
            "all_resident_bytes": resident + max(needs[stage] for stage in TEXT_TO_IMAGE),
        }
    return result


def calibration(models: dict, configs: dict, dtype: torch.dtype, activations: dict) -> dict:
    """The closed forms' feature-map counts as traced: peak / one feature map of the finest level (UNet: rows ×
    latent pixels × 384 channels; MoVQ: pixels × 128; prior: rows × 81 tokens × 2048).
    pipelines/kandinsky22/memory.py holds them rounded up."""
    itemsize, prior = dtype.itemsize, configs["prior"]
    unet_channels, movq_channels = configs["unet"].block_out_channels[0], configs["movq"].block_out_channels[0]
    tokens = prior.num_embeddings + prior.additional_embeddings
    result = {}
    for key, run in activations.items():
        size, batch = map(int, key.split("_b"))
        rows, pixels = 2 * batch, size * size
        result[f"unet_{key}"] = run["unet"]["traced"] / (rows * pixels // 64 * unet_channels * itemsize)
        result[f"prior_b{batch}"] = run["prior"]["traced"] / (rows * tokens * prior.width * itemsize)
        result[f"movq_decode_{size}"] = run["movq"]["traced"] / (pixels * movq_channels * itemsize)
        if f"movq_encode_{size}" not in result:
            encode = kandinsky22_memory.traced_movq_encode(models["movq"], size, size)
            result[f"movq_encode_{size}"] = encode / (pixels * movq_channels * itemsize)
    return result


def markdown(results: dict) -> str:
    """Three tables: weights; activation peaks per run; the whole chain's peak per run."""
    header = " | ".join(f"{size}² ×{batch}" for size, batch in (key.split("_b") for key in results["activations"]))
    rows = {
        "text to image, stages offloaded": "offloaded_bytes",
        "first run (+ image encoder), offloaded": "first_run_offloaded_bytes",
        "text-to-image models all resident": "all_resident_bytes",
    }
    return memory_tables(results, STAGES, header, rows)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="bf16")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 768, 1024], help="image sides in pixels")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4], help="images per run")
    args = parser.parse_args(argv)
    dtype = DTYPES[args.dtype]
    models, configs = build_models(dtype)

    results = {"dtype": args.dtype, "sizes": args.sizes, "batches": args.batches, "torch": torch.__version__}
    results["headroom"] = kandinsky22_memory.HEADROOM
    results["weights"] = {stage: weights(models[stage]) for stage in STAGES}
    results["activations"] = stage_activations(models, configs, dtype, args.sizes, args.batches)
    results["chain"] = {key: chain_peaks(results["weights"], run) for key, run in results["activations"].items()}
    results["calibration"] = calibration(models, configs, dtype, results["activations"])
    ratios = [
        act["estimate"] / act["traced"]
        for run in results["activations"].values()
        for act in run.values()
        if act["estimate"]
    ]
    results["estimate_over_trace"] = {"min": min(ratios), "max": max(ratios)}
    print(json.dumps(results, indent=2))
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
