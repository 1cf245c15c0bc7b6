"""DalleImageEmbedsToConditioning, and what the ComfyUI-only outputs do outside ComfyUI."""

from __future__ import annotations

import pytest
import torch

from dalle_nodes.nodes import NODE_CLASS_MAPPINGS, runtime
from dalle_nodes.nodes.conditioning import EMBEDS_KEY
from dalle_nodes.pipelines.kandinsky22.embeds import ImageEmbeds


def test_image_embeds_become_positive_and_negative_conditioning() -> None:
    embeds = ImageEmbeds(torch.randn(2, 16), torch.randn(2, 16))
    positive, negative = NODE_CLASS_MAPPINGS["DalleImageEmbedsToConditioning"]().convert(embeds)
    for conditioning, expected in ((positive, embeds.positive), (negative, embeds.negative)):
        ((tensor, options),) = conditioning  # ComfyUI's [[tensor, options]]
        assert torch.equal(options[EMBEDS_KEY], expected)
        assert tensor.shape == (2, 1, 16)  # a shape for ComfyUI to batch conditionings by


def test_outside_comfyui_model_and_vae_are_none_and_clip_vision_refuses(tiny_prior_repo, tiny_decoder_repo) -> None:
    assert not runtime.IN_COMFYUI
    decoder, vq_vae, model, vae = NODE_CLASS_MAPPINGS["DalleLoadDecoder"]().load(str(tiny_decoder_repo), "main", "fp32")
    assert model is None and vae is None and decoder.unet.patcher is None
    with pytest.raises(RuntimeError, match="runs only inside ComfyUI"):
        NODE_CLASS_MAPPINGS["DalleLoadCLIPVision"]().load(str(tiny_prior_repo), "main")
