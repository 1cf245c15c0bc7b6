"""The GPU benchmarks' --tiny modes run on the CPU in seconds, so the scripts never rot between GPU sessions."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))


def test_bench_upscale_tiny(capsys) -> None:
    import bench_upscale

    results = bench_upscale.main(["--tiny"])
    assert results["ours_fp32_max_abs_vs_whole_image"] < 1e-5  # fits in one tile: exactly the model's output
    for run in ("comfyui_fp32_512_gpu_blend", "ours_auto", "ours_fp32"):
        assert results[run]["median_s"] > 0
    assert "ours_auto" in capsys.readouterr().out.splitlines()[-3]


def test_bench_upscale_cpu_comparison_tiny(capsys) -> None:
    import bench_upscale

    threads = torch.get_num_threads()
    results = bench_upscale.main(["--device", "cpu", "--tiny", "--threads", "1"])
    timed = results["48"]
    assert results["torch_threads"] == 1 and results["cpu"] and torch.get_num_threads() == threads
    for run in ("comfyui_loop", "ours_node", "ours_api", "ours_node_bf16"):
        assert timed[run]["median_s"] > 0 and timed[run]["cpu_median_s"] > 0 and timed[run]["speedup"] > 0
    assert timed["comfyui_loop"]["speedup"] == 1.0
    assert timed["max_abs_node_vs_comfyui"] < 1e-5  # one tile: the same model output
    assert 0 < timed["bf16_vs_comfyui"]["mean_abs"] < 0.05  # bf16: near, not equal
    assert "ours_node_bf16" in capsys.readouterr().out.splitlines()[-1]


def test_bench_dalle_mega_tiny(capsys) -> None:
    import bench_dalle_mega

    results = bench_dalle_mega.main(["--tiny"])
    assert results["same_prompt_tokens"]
    assert results["ours_fp32_fraction_equal_to_min_dalle"] == 1.0  # the CPU: min-dalle's tokens, bit for bit
    assert results["ours_fp32_graph_equals_eager"] == 1.0 and results["ours_fp32_repeatable"]
    for run in ("ours_fp32", "ours_fp32_eager", "min_dalle_fp32"):
        stages = results[run]
        assert stages["total_s"] > 0 and stages["sampling_s"] > 0 and stages["decode_s"] > 0
        assert stages["total_s"] >= stages["encode_s"] + stages["sampling_s"] + stages["decode_s"]
    assert "min_dalle_fp32" in capsys.readouterr().out.splitlines()[-1]


def test_bench_dalle_mega_cpu_comparison_tiny(capsys) -> None:
    import bench_dalle_mega

    threads = torch.get_num_threads()
    results = bench_dalle_mega.main(["--device", "cpu", "--tiny", "--threads", "1"])
    assert results["torch_threads"] == 1 and results["cpu"] and torch.get_num_threads() == threads
    assert results["mini_tokens"]["same_prompt_tokens"]
    for part in ("mini_tokens", "mega_steps"):
        for batch in ("b1", "b4"):
            timed = results[part][batch]
            assert timed["tokens_identical"] and timed["fraction_equal"] == 1.0, (part, batch)  # min-dalle's draws
            assert timed["min_dalle"]["cpu_speedup"] == 1.0 and timed["ours"]["cpu_speedup"] > 0
    assert results["mega_steps"]["b1"]["ours"]["cpu_median_per_step_s"] > 0
    decode = results["vqgan_decode"]
    assert decode["ours"]["cpu_median_s"] > 0 and decode["max_abs_pixel_diff_of_255"] < 0.05  # the same pixels
    assert "VQGAN decode 256²  b1     min_dalle" in capsys.readouterr().out.splitlines()[-1]


def test_bench_k22_tiny(capsys) -> None:
    import bench_k22

    results = bench_k22.main(["--tiny"])  # its compiled chain is traced by dynamo and run as traced
    assert results["compile_mode"] == "eager"
    for run in ("ours_b1", "ours_compiled_b1", "diffusers_b1"):
        stages = results[run]
        for stage in ("text_s", "prior_s", "decoder_s", "movq_s"):
            assert stages[stage] > 0, (run, stage)  # every stage boundary was marked
        assert stages["decoder_step_ms"] > 0 and stages["unet_tflops_in_pipeline"] > 0
        parts = stages["text_s"] + stages["prior_s"] + stages["decoder_s"] + stages["movq_s"]
        assert abs(stages["total_s"] - parts) < 1e-6  # the stages tile the run
    assert results["diffusers_b1"]["zero_embed_s"] > 0 and results["ours_zero_embed_once_s"] > 0
    assert results["max_abs_image_diff_b1"] < 1e-4  # CPU, fp32: ours is diffusers' image
    assert results["max_abs_image_diff_compiled_b1"] < 1e-4
    assert results["diffusers_image_unclamped_b1"] > 0.5  # a picture, not one clamped flat
    assert results["unet_tflop_per_step_batch2"] > 0 and results["speedup_b1"] > 0
    for key in ("unet_step_b2", "prior_step_b2", "movq_decode_b1"):
        for side in ("ours", "ours_compiled", "diffusers"):
            assert results["alone"][f"{side}_{key}"]["median_s"] > 0
    assert "diffusers movq_decode_b1 alone" in capsys.readouterr().out.splitlines()[-1]


def test_bench_k22_cpu_comparison_tiny(capsys) -> None:
    import bench_k22

    threads = torch.get_num_threads()
    results = bench_k22.main(["--device", "cpu", "--tiny", "--threads", "1"])
    assert results["torch_threads"] == 1 and results["cpu"] and torch.get_num_threads() == threads
    for call, sides in {
        "prior_step": ("ours", "diffusers", "ours_encode_text"),
        "unet_step": ("ours", "diffusers"),
        "movq_decode": ("ours", "diffusers"),
    }.items():
        assert set(results[call]) == {*sides, "relative_error_vs_diffusers"}, call
        assert results[call]["relative_error_vs_diffusers"] < 1e-4, call  # both sides did the same work
        for side in sides:
            assert results[call][side]["cpu_median_s"] > 0 and results[call][side]["cpu_speedup"] > 0
        assert results[call]["diffusers"]["cpu_speedup"] == 1.0
    assert "movq_decode  diffusers" in capsys.readouterr().out.splitlines()[-1]


def test_vram_k22_on_meta(capsys) -> None:
    """No GPU and no --tiny needed: the full-size models are traced on the meta device."""
    import vram_k22

    results = vram_k22.main(["--sizes", "512", "--batches", "1"])
    params = {stage: round(w["params"] / 1e6, 1) for stage, w in results["weights"].items()}
    # the real checkpoints' parameter counts (millions)
    assert params == {"text_encoder": 694.7, "image_encoder": 1844.9, "prior": 1026.2, "unet": 1253.1, "movq": 67.8}
    assert results["weights"]["unet"]["bytes"] == 2 * results["weights"]["unet"]["params"]  # bf16
    run = results["activations"]["512_b1"]
    for stage in ("prior", "unet", "movq"):
        assert run[stage]["traced"] <= run[stage]["estimate"] <= 1.5 * run[stage]["traced"], stage
    assert run["unet"]["traced_math"] > 3 * run["unet"]["traced"]  # the math path's attention weights
    chain = results["chain"]["512_b1"]["traced"]
    assert chain["offloaded_bytes"] < chain["first_run_offloaded_bytes"] < chain["all_resident_bytes"]
    assert "all resident" in capsys.readouterr().out.splitlines()[-1]


def test_vram_karlo_on_meta(capsys) -> None:
    """Karlo's full-size stages traced on the meta device; the nodes' estimates hold the traces (1x to 1.5x)."""
    import vram_karlo

    results = vram_karlo.main(["--batches", "1"])
    params = {stage: round(w["params"] / 1e6, 1) for stage, w in results["weights"].items()}
    # the real checkpoints' parameter counts (millions); decoder: text projection + UNet, super_res: both UNets
    assert params == {
        "text_encoder": 123.7,
        "image_encoder": 304.0,
        "prior": 1022.0,
        "decoder": 893.3,
        "super_res": 1383.2,
    }
    run = results["activations"]["b1"]
    for stage in ("prior", "decoder", "super_res"):
        assert run[stage]["traced"] <= run[stage]["estimate"] <= 1.5 * run[stage]["traced"], stage
    assert run["decoder"]["traced_math"] > 3 * run["decoder"]["traced"]  # the math path's attention weights at 32²
    chain = results["chain"]["b1"]["traced"]
    assert chain["offloaded_largest_stage"] == "super_res" and chain["offloaded_bytes"] < chain["all_resident_bytes"]
    assert "all resident" in capsys.readouterr().out.splitlines()[-1]
