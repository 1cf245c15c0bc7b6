"""Live-preview factors fitted to the MoVQ (pipelines/previews.py)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch
from safetensors.torch import save_file

from dalle_nodes.engine.hub import source_from_input
from dalle_nodes.pipelines import previews
from dalle_nodes.pipelines.kandinsky22 import loading


def test_previews_correlate_with_decoded_images_and_are_cached(tiny_decoder_repo, tmp_path, monkeypatch) -> None:
    movq = loading.load_movq(source_from_input(str(tiny_decoder_repo), None, None, None), torch.float32)
    factors = previews.cached_rgb_factors(movq, tmp_path)
    assert len(factors.factors) == 4 and all(len(row) == 3 for row in factors.factors) and len(factors.bias) == 3

    latents = torch.randn(4, 4, 12, 16, generator=torch.Generator().manual_seed(9))  # not the fitted ones
    with torch.inference_mode():
        decoded = torch.nn.functional.avg_pool2d(movq.decode(latents).clamp(-1, 1), movq.scale)
    preview = factors.apply(latents)
    assert preview.shape == decoded.shape
    correlation = torch.corrcoef(torch.stack([preview.flatten(), decoded.flatten()]))[0, 1]
    assert correlation > 0.8  # measured 0.88 on the tiny MoVQ

    monkeypatch.setattr(previews, "fit_rgb_factors", lambda movq: (_ for _ in ()).throw(AssertionError("refitted")))
    assert previews.cached_rgb_factors(movq, tmp_path) == factors  # read back from the cache


def test_a_damaged_or_unwritable_preview_cache_is_fitted_again_with_a_warning(tiny_decoder_repo, tmp_path, caplog):
    """The rule of every cache: damaged → fitted again and rewritten; cannot be written → a warning, the load goes on;
    concurrent writers → one whole file."""
    movq = loading.load_movq(source_from_input(str(tiny_decoder_repo), None, None, None), torch.float32)
    factors = previews.cached_rgb_factors(movq, tmp_path)
    (entry,) = (tmp_path / "latent_rgb_factors").iterdir()
    for damage in (b"garbage", b""):
        entry.write_bytes(damage)
        assert previews.cached_rgb_factors(movq, tmp_path) == factors
        assert "fitting them again" in caplog.text and entry.stat().st_size > 100  # rewritten whole
    save_file({"factors": torch.full((4, 3), float("nan")), "bias": torch.zeros(3)}, entry)
    assert previews.cached_rgb_factors(movq, tmp_path) == factors

    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder should be")
    assert previews.cached_rgb_factors(movq, blocked) == factors
    assert "Could not write the cache file" in caplog.text

    fresh = tmp_path / "fresh"
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: previews.cached_rgb_factors(movq, fresh), range(4)))
    assert results == [factors] * 4
    assert [p.name for p in (fresh / "latent_rgb_factors").iterdir()] == [entry.name]  # no temporary left
