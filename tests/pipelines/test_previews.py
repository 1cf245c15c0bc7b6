"""Live-preview factors fitted to the MoVQ (pipelines/previews.py)."""

from __future__ import annotations

import torch

from dalle_nodes.engine.hub import source_from_input
from dalle_nodes.pipelines import kandinsky22, previews


def test_previews_correlate_with_decoded_images_and_are_cached(tiny_decoder_repo, tmp_path, monkeypatch) -> None:
    movq = kandinsky22.load_movq(source_from_input(str(tiny_decoder_repo), None, None, None), torch.float32)
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
