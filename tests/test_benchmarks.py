"""The GPU benchmarks' --tiny modes run on the CPU in seconds, so the scripts never rot between GPU sessions."""

from __future__ import annotations

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))


def test_bench_upscale_tiny(capsys) -> None:
    import bench_upscale

    results = bench_upscale.main(["--tiny"])
    assert results["ours_fp32_max_abs_vs_whole_image"] < 1e-5  # fits in one tile: exactly the model's output
    for run in ("comfyui_fp32_512_gpu_blend", "ours_auto", "ours_fp32"):
        assert results[run]["median_s"] > 0
    assert "ours_auto" in capsys.readouterr().out.splitlines()[-3]


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
