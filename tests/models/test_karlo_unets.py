"""Karlo's networks (models/karlo_unets.py, and models/prior.py at 768 wide) against diffusers' classes: the same keys
and shapes at full size for every network of both Karlo repos, the same outputs at toy size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import PriorTransformer as DiffusersPrior
from diffusers import UNet2DConditionModel, UNet2DModel
from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

from dalle_nodes.models.karlo_unets import (
    KarloDecoder,
    KarloDecoderConfig,
    SuperResConfig,
    SuperResUNet,
    TextProjConfig,
    TextProjection,
)
from dalle_nodes.models.prior import PriorConfig, PriorTransformer
from dalle_nodes.models.unet import UNetConfig
from numerics import relative_error
from tiny_karlo import EMBED, KARLO, VARIATIONS, _config, decoder_config, super_res_config, text_proj_config
from tiny_repos import _randomize

NETWORKS = {  # folder → (diffusers' class, our config, our module)
    "prior": (DiffusersPrior, PriorConfig, PriorTransformer),
    "text_proj": (UnCLIPTextProjModel, TextProjConfig, TextProjection),
    "decoder": (UNet2DConditionModel, KarloDecoderConfig, KarloDecoder),
    "super_res_first": (UNet2DModel, SuperResConfig, SuperResUNet),
    "super_res_last": (UNet2DModel, SuperResConfig, SuperResUNet),
}
FULL_SIZE = [(repo, name) for repo in (KARLO, VARIATIONS) for name in NETWORKS if (repo / name).is_dir()]


@pytest.mark.parametrize("repo, name", FULL_SIZE, ids=[f"{r.name.split('--')[1]}/{n}" for r, n in FULL_SIZE])
def test_full_size_state_dict_matches_diffusers(repo: Path, name: str) -> None:
    reference_cls, config_cls, module_cls = NETWORKS[name]
    config = _config(repo, name)
    with torch.device("meta"):
        reference = reference_cls.from_config(config)
        ours = module_cls(config_cls.from_diffusers(config))
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == expected
    if name != "prior":  # our defaults are Karlo's real sizes
        assert config_cls.from_diffusers(config) == config_cls()
    else:
        assert ours.config.embedding_dim == 768


def pair(reference: torch.nn.Module, config_cls, module_cls, seed: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    reference = _randomize(reference, seed).eval()
    ours = module_cls(config_cls.from_diffusers(dict(reference.config))).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


def test_text_projection_matches_diffusers() -> None:
    reference, ours = pair(UnCLIPTextProjModel(**text_proj_config()), TextProjConfig, TextProjection, 1)
    generator = torch.Generator().manual_seed(0)
    image, pooled = torch.randn(2, EMBED, generator=generator), torch.randn(4, EMBED, generator=generator)
    states = torch.randn(4, 77, EMBED, generator=generator)
    with torch.no_grad():
        expected_context, expected_class = reference(
            image_embeddings=image, prompt_embeds=pooled, text_encoder_hidden_states=states,
            do_classifier_free_guidance=True,
        )  # fmt: skip
        class_embed, context = ours(torch.cat([ours.unconditional(2), image]), pooled, states)
    assert context.shape == (4, 81, 24)
    assert relative_error(class_embed, expected_class) < 1e-6
    assert relative_error(context, expected_context) < 1e-6


def test_decoder_matches_diffusers() -> None:
    reference, ours = pair(UNet2DConditionModel(**decoder_config()), KarloDecoderConfig, KarloDecoder, 2)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 16, 24, generator=generator)
    class_embed = torch.randn(2, ours.config.time_embed_dim, generator=generator)
    context = torch.randn(2, 81, 24, generator=generator)
    mask = torch.ones(2, 81, dtype=torch.bool)
    mask[1, 20:] = False  # a short prompt: its padding is hidden from every attention layer
    timestep = torch.tensor([3, 977])
    with torch.no_grad():
        expected = reference(
            sample=x, timestep=timestep, encoder_hidden_states=context, class_labels=class_embed, attention_mask=mask
        ).sample
        actual = ours(x, timestep, class_embed, context, mask)
        unmasked = ours(x, timestep, class_embed, context, torch.ones_like(mask))
    assert actual.shape == (2, 6, 16, 24)
    assert relative_error(actual, expected) < 1e-5
    assert relative_error(unmasked[1], expected[1]) > 1e-3  # the mask matters


@pytest.mark.parametrize("name", ["super_res_first", "super_res_last"])
def test_super_res_matches_diffusers(name: str) -> None:
    reference, ours = pair(UNet2DModel(**super_res_config(name)), SuperResConfig, SuperResUNet, 3)
    x = torch.randn(2, 6, 32, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference(x, torch.tensor([999, 166])).sample
        actual = ours(x, torch.tensor([999, 166]))
        low_precision = ours.to(torch.bfloat16)(x, torch.tensor([999, 166]))
    assert actual.shape == (2, 3, 32, 16)
    assert relative_error(actual, expected) < 1e-5
    assert low_precision.dtype == torch.bfloat16 and relative_error(low_precision, expected) < 0.1


@pytest.mark.parametrize(
    "change, message",
    [
        ({"class_embed_type": None}, "class_embed_type=None"),
        ({"encoder_hid_dim": 768, "encoder_hid_dim_type": "image_proj"}, "encoder_hid_dim=768"),
        ({"resnet_time_scale_shift": "default"}, "resnet_time_scale_shift='default'"),
    ],
)
def test_decoder_config_refuses_other_unets(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=f"unsupported UNet setting {message}"):
        KarloDecoderConfig.from_diffusers({**_config(KARLO, "decoder"), **change})


def test_kandinsky_and_karlo_decoder_configs_refuse_each_other() -> None:
    kandinsky = json.loads((KARLO.parent / "kandinsky-community--kandinsky-2-2-decoder/unet/config.json").read_text())
    with pytest.raises(ValueError, match="unsupported UNet setting class_embed_type=None"):
        KarloDecoderConfig.from_diffusers(kandinsky)
    with pytest.raises(ValueError, match="unsupported UNet setting encoder_hid_dim_type=None"):
        UNetConfig.from_diffusers(_config(KARLO, "decoder"))


def test_super_res_config_refuses_attention() -> None:
    with pytest.raises(ValueError, match="unsupported UNet setting add_attention=True"):
        SuperResConfig.from_diffusers({**_config(KARLO, "super_res_first"), "add_attention": True})
