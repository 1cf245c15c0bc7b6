"""VRAM each Karlo stage needs, found without a GPU: weights, and activation peaks traced on the meta device.

As benchmarks/vram_k22.py does for Kandinsky 2.2: every module is built at full size from the real configs
(tests/hub_configs/kakaobrain--karlo-v1-alpha and -image-variations) on the meta device, where it costs no memory or
compute. Weights: parameters and buffers × dtype size. Activations: `engine.memory.peak_live_bytes`, the most bytes
of tensors alive at once during one call (eager, as the nodes run it), with attention as the CUDA fused kernels
allocate it; the math-path numbers show what a device without them needs. Beside each trace, the closed-form
estimate the nodes hand to ComfyUI (pipelines/karlo/memory.py; the prior's is Kandinsky 2.2's, the same module).

Stages as the nodes run them, for `batch` images: text encoder (the prompt and the empty prompt, 77 tokens each),
prior (2 × batch rows with guidance), text projection + 64 px decoder (one step, 2 × batch rows), super-resolution
(one step at 256², batch rows, no guidance; the first and last UNets run one after the other). The image encoder
(variations repo) runs for DalleImageEncode. The chain's peak with stages offloaded between each other is the largest
stage's weights + activations; with everything resident it is the sum of the text-to-image weights + the largest
activations.

    python benchmarks/vram_karlo.py                      # bf16; batch 1 and 4 (seconds, CPU)
    python benchmarks/vram_karlo.py --dtype fp16 --batches 1 2
"""

from __future__ import annotations

import argparse
import json

import torch
from common import ROOT, import_package, memory_tables

import_package()
from dalle_nodes.engine import memory  # noqa: E402
from dalle_nodes.models.karlo_unets import (  # noqa: E402
    KarloDecoder,
    KarloDecoderConfig,
    SuperResConfig,
    SuperResUNet,
    TextProjConfig,
    TextProjection,
)
from dalle_nodes.models.prior import PriorConfig, PriorTransformer  # noqa: E402
from dalle_nodes.pipelines.kandinsky22 import memory as kandinsky22_memory  # noqa: E402
from dalle_nodes.pipelines.karlo import memory as karlo_memory  # noqa: E402

CONFIGS = ROOT / "tests" / "hub_configs"
REPO = CONFIGS / "kakaobrain--karlo-v1-alpha"
VARIATIONS_REPO = CONFIGS / "kakaobrain--karlo-v1-alpha-image-variations"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
STAGES = ("text_encoder", "image_encoder", "prior", "decoder", "super_res")
TEXT_TO_IMAGE = ("text_encoder", "prior", "decoder", "super_res")


def read_config(folder) -> dict:
    """A component's config.json, or its *.reconstructed.json where the Hub file was not found (SOURCES.md)."""
    return json.loads(sorted(folder.glob("*.json"))[0].read_text())


def build_models(dtype: torch.dtype) -> tuple[dict[str, list[torch.nn.Module]], dict]:
    """Every stage's modules at full size on the meta device (the decoder stage: text projection and UNet; super-res:
    first and last UNet), and our configs."""
    from transformers import (
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    configs = {
        "prior": PriorConfig.from_diffusers(read_config(REPO / "prior")),
        "text_proj": TextProjConfig.from_diffusers(read_config(REPO / "text_proj")),
        "decoder": KarloDecoderConfig.from_diffusers(read_config(REPO / "decoder")),
        "super_res_first": SuperResConfig.from_diffusers(read_config(REPO / "super_res_first")),
        "super_res_last": SuperResConfig.from_diffusers(read_config(REPO / "super_res_last")),
    }
    text_config = CLIPTextConfig(**read_config(REPO / "text_encoder"))
    vision_config = CLIPVisionConfig(**read_config(VARIATIONS_REPO / "image_encoder"))
    builders = {
        "text_encoder": lambda: [CLIPTextModelWithProjection(text_config)],
        "image_encoder": lambda: [CLIPVisionModelWithProjection(vision_config)],
        "prior": lambda: [PriorTransformer(configs["prior"])],
        "decoder": lambda: [TextProjection(configs["text_proj"]), KarloDecoder(configs["decoder"])],
        "super_res": lambda: [SuperResUNet(configs["super_res_first"]), SuperResUNet(configs["super_res_last"])],
    }
    models = {}
    for name, build in builders.items():
        with torch.device("meta"):
            models[name] = [module.to(dtype).eval().requires_grad_(False) for module in build()]
    return models, configs


def weights(modules: list[torch.nn.Module]) -> dict:
    """Parameter count, and the bytes the modules hold on the device (buffers included)."""
    tensors = [t for module in modules for t in (*module.parameters(), *module.buffers())]
    return {"params": sum(p.numel() for m in modules for p in m.parameters()), "bytes": sum(t.nbytes for t in tensors)}


def trace_text_encoder(encoder: torch.nn.Module, fused_attention: bool) -> int:
    tokens = torch.zeros(2, encoder.config.max_position_embeddings, dtype=torch.long, device="meta")
    return memory.peak_live_bytes(encoder, tokens, fused_attention=fused_attention)[1]


def trace_image_encoder(encoder: torch.nn.Module, fused_attention: bool) -> int:
    size = encoder.config.image_size
    pixels = torch.empty(1, 3, size, size, device="meta", dtype=encoder.dtype)
    return memory.peak_live_bytes(encoder, pixels, fused_attention=fused_attention)[1]


def stage_activations(models: dict, configs: dict, dtype: torch.dtype, batches: list[int]) -> dict:
    """{f"b{batch}": {stage: traced peak (fused), traced peak on the math path, the nodes' estimate}}."""
    text = {fused: trace_text_encoder(models["text_encoder"][0], fused) for fused in (True, False)}
    image = {fused: trace_image_encoder(models["image_encoder"][0], fused) for fused in (True, False)}
    runs = {}
    for batch in batches:
        rows = 2 * batch  # guidance: an unconditional and a conditional row per image
        traced = {
            "text_encoder": text,
            "image_encoder": image,
            "prior": {f: kandinsky22_memory.traced_prior_step(models["prior"][0], rows, f) for f in (True, False)},
            "decoder": {
                f: karlo_memory.traced_decoder_step(models["decoder"][1], configs["text_proj"], rows, f)
                for f in (True, False)
            },
            "super_res": dict.fromkeys(
                (True, False), karlo_memory.traced_super_res_step(models["super_res"][0], batch)
            ),
        }
        estimates = {
            "prior": kandinsky22_memory.prior_step_bytes(configs["prior"], rows, dtype),
            "decoder": karlo_memory.decoder_step_bytes(configs["decoder"], rows, dtype),
            "super_res": karlo_memory.super_res_step_bytes(configs["super_res_first"], batch, dtype),
        }
        runs[f"b{batch}"] = {
            stage: {
                "traced": traced[stage][True],
                "traced_math": traced[stage][False],
                "estimate": estimates.get(stage),
            }
            for stage in STAGES
        }
    return runs


def chain_peaks(stage_weights: dict, activations: dict) -> dict:
    """Peak bytes of the text-to-image chain, traced and as the nodes budget it: stages offloaded between each other,
    or all text-to-image models resident."""
    result = {}
    for key in ("traced", "estimate"):
        needs = {stage: act[key] if act[key] is not None else act["traced"] for stage, act in activations.items()}
        peaks = {stage: stage_weights[stage]["bytes"] + needs[stage] for stage in TEXT_TO_IMAGE}
        largest = max(TEXT_TO_IMAGE, key=peaks.get)
        resident = sum(stage_weights[stage]["bytes"] for stage in TEXT_TO_IMAGE)
        result[key] = {
            "offloaded_bytes": peaks[largest],
            "offloaded_largest_stage": largest,
            "all_resident_bytes": resident + max(needs[stage] for stage in TEXT_TO_IMAGE),
        }
    return result


def calibration(configs: dict, dtype: torch.dtype, activations: dict) -> dict:
    """The closed forms' feature-map counts as traced: peak / one feature map of the finest level (rows × pixels ×
    320 channels). pipelines/karlo/memory.py holds them rounded up."""
    result = {}
    for key, run in activations.items():
        batch = int(key.removeprefix("b"))
        decoder_map = 2 * batch * 64 * 64 * configs["decoder"].block_out_channels[0] * dtype.itemsize
        super_res_map = batch * 256 * 256 * configs["super_res_first"].block_out_channels[0] * dtype.itemsize
        result[f"decoder_{key}"] = run["decoder"]["traced"] / decoder_map
        result[f"decoder_math_{key}"] = run["decoder"]["traced_math"] / decoder_map
        result[f"super_res_{key}"] = run["super_res"]["traced"] / super_res_map
    return result


def markdown(results: dict) -> str:
    """Three tables: weights; activation peaks per batch; the whole chain's peak per batch."""
    header = " | ".join(f"×{key.removeprefix('b')}" for key in results["activations"])
    rows = {"stages offloaded": "offloaded_bytes", "all resident": "all_resident_bytes"}
    return memory_tables(results, STAGES, header, rows)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="bf16")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4], help="images per run")
    args = parser.parse_args(argv)
    dtype = DTYPES[args.dtype]
    models, configs = build_models(dtype)
    results = {"dtype": args.dtype, "batches": args.batches, "torch": torch.__version__}
    results["headroom"] = karlo_memory.HEADROOM
    results["weights"] = {stage: weights(models[stage]) for stage in STAGES}
    results["activations"] = stage_activations(models, configs, dtype, args.batches)
    results["chain"] = {key: chain_peaks(results["weights"], run) for key, run in results["activations"].items()}
    results["calibration"] = calibration(configs, dtype, results["activations"])
    print(json.dumps(results, indent=2))
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
