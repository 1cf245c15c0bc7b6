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
