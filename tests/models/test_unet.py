"""KandinskyUNet against diffusers' UNet2DConditionModel: same state_dict layout, same outputs."""

import functools
import json
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file

from dalle_nodes.models.unet import KandinskyUNet, UNetConfig
from numerics import relative_error
from tiny_repos import WIDTH, controlnet_unet_config, tiny_unet_config

HUB_CONFIGS = Path(__file__).parents[1] / "hub_configs"
REAL_CONFIGS = {
    "decoder": HUB_CONFIGS / "kandinsky-community--kandinsky-2-2-decoder/unet/config.json",
    "decoder-inpaint": HUB_CONFIGS / "kandinsky-community--kandinsky-2-2-decoder-inpaint/unet/config.json",
}


TINY_CONFIGS = {
    "text2image": tiny_unet_config,
    "inpaint": lambda: tiny_unet_config(in_channels=9),
    "controlnet": lambda: controlnet_unet_config(tiny_unet_config()),
}


def full_size_config(name: str) -> dict:
    if name == "controlnet-depth":
        return controlnet_unet_config(full_size_config("decoder"))
    return json.loads(REAL_CONFIGS[name].read_text())


@functools.cache  # shared across tests (never modified): building it is a large part of this file's run time
def reference_unet(kind: str = "text2image") -> UNet2DConditionModel:
    torch.manual_seed(0)
    model = UNet2DConditionModel.from_config(TINY_CONFIGS[kind]())
    with torch.no_grad():  # diffusers leaves norms at 1/0: perturb every weight so each one matters
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model.eval()


def ours_from(reference: UNet2DConditionModel) -> KandinskyUNet:
    model = KandinskyUNet(UNetConfig.from_diffusers(dict(reference.config)))
    model.load_state_dict(reference.state_dict(), strict=True)
    return model.eval()


@pytest.mark.parametrize(
    "kind, timestep",
    [  # per-sample ints; one shared fractional 0-d
        ("text2image", torch.tensor([3, 977])),
        ("inpaint", torch.tensor(421.5)),
        ("controlnet", torch.tensor([250, 640])),
    ],
)
def test_matches_diffusers(kind: str, timestep: torch.Tensor) -> None:
    reference = reference_unet(kind)
    ours = ours_from(reference)
    assert ours.config.kind == kind
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, ours.config.sample_channels, 16, 24, generator=generator)
    image_embeds = torch.randn(2, WIDTH, generator=generator)
    conditions = {"image_embeds": image_embeds}
    if kind == "controlnet":  # a depth map in 0..1 at pixel size, as the pipelines pass it
        conditions["hint"] = torch.rand(2, 3, 128, 192, generator=generator)

    with torch.no_grad():
        expected = reference(
            sample=x, timestep=timestep, encoder_hidden_states=None, added_cond_kwargs=conditions
        ).sample
        actual = ours(x, timestep, image_embeds, conditions.get("hint"))

    assert actual.shape == (2, 8, 16, 24)
    error = relative_error(actual, expected)
    print(f"{kind}: relative error {error:.2e}")
    assert error < 1e-5


def test_channels_last_and_bfloat16() -> None:
    ours = ours_from(reference_unet())
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 24, 16, generator=generator)
    image_embeds = torch.randn(2, WIDTH, generator=generator)
    timestep = torch.tensor([10, 500])

    with torch.no_grad():
        expected = ours(x, timestep, image_embeds)
        channels_last = ours.to(memory_format=torch.channels_last)(
            x.to(memory_format=torch.channels_last), timestep, image_embeds
        )
        low_precision = ours.to(torch.bfloat16)(x.bfloat16(), timestep, image_embeds)  # fp32 embeds are cast

    assert relative_error(channels_last, expected) < 1e-5
    assert low_precision.dtype == torch.bfloat16
    assert relative_error(low_precision, expected) < 0.1


def test_hint_is_cast_to_the_weights_dtype() -> None:
    ours = ours_from(reference_unet("controlnet"))
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 8, 16, generator=generator)
    image_embeds = torch.randn(2, WIDTH, generator=generator)
    hint = torch.rand(2, 3, 64, 128, generator=generator)  # float32, as an IMAGE is
    timestep = torch.tensor([10, 500])

    with torch.no_grad():
        expected = ours(x, timestep, image_embeds, hint)
        low_precision = ours.to(torch.bfloat16)(x.bfloat16(), timestep, image_embeds, hint)

    assert low_precision.dtype == torch.bfloat16
    assert relative_error(low_precision, expected) < 0.1


@pytest.mark.parametrize(
    "kind, hint, message",
    [
        ("controlnet", None, "reads a hint image .depth ControlNet.: connect one"),
        ("text2image", torch.zeros(1, 3, 128, 128), "takes no hint: only the depth ControlNet decoder reads one"),
        ("inpaint", torch.zeros(1, 3, 128, 128), "takes no hint"),
        ("controlnet", torch.zeros(1, 3, 128, 120), "the hint is 1 × 3 × 128 × 120, but .* needs .* 1 × 3 × 128 × 128"),
        ("controlnet", torch.zeros(1, 3, 16, 16), "the hint is 1 × 3 × 16 × 16"),  # latent-sized, not pixel-sized
        ("controlnet", torch.zeros(2, 3, 128, 128), "the hint is 2 × 3"),  # one hint per latent, not broadcast
        ("controlnet", torch.zeros(1, 4, 128, 128), "the hint is 1 × 4"),  # RGBA
    ],
)
def test_rejects_missing_unexpected_or_missized_hint(kind: str, hint: torch.Tensor | None, message: str) -> None:
    ours = KandinskyUNet(UNetConfig.from_diffusers(TINY_CONFIGS[kind]()))
    x = torch.zeros(1, ours.config.sample_channels, 16, 16)
    with pytest.raises(ValueError, match=message):
        ours(x, torch.tensor(0), torch.zeros(1, WIDTH), hint)


def test_rejects_latent_size_not_multiple_of_8() -> None:
    ours = KandinskyUNet(UNetConfig.from_diffusers(tiny_unet_config()))
    with pytest.raises(ValueError, match="multiple of 8"):
        ours(torch.zeros(1, 4, 16, 20), torch.tensor(0), torch.zeros(1, WIDTH))


@pytest.mark.parametrize("name", [*REAL_CONFIGS, "controlnet-depth"])
def test_full_size_state_dict_layout(name: str) -> None:
    config = full_size_config(name)
    with torch.device("meta"):
        reference = UNet2DConditionModel.from_config(config)
        ours = KandinskyUNet(UNetConfig.from_diffusers(config))

    expected = {key: tuple(value.shape) for key, value in reference.state_dict().items()}
    actual = {key: tuple(value.shape) for key, value in ours.state_dict().items()}
    assert actual.keys() == expected.keys()
    assert actual == expected


@pytest.mark.parametrize("repo", ["tiny_decoder_repo", "tiny_inpaint_repo", "tiny_controlnet_repo"])
def test_tiny_repo_loads_strictly(repo: str, request: pytest.FixtureRequest) -> None:
    """The tiny repos other tests sample from hold a UNet our model reads whole."""
    folder = request.getfixturevalue(repo) / "unet"
    config = json.loads((folder / "config.json").read_text())
    model = KandinskyUNet(UNetConfig.from_diffusers(config))
    model.load_state_dict(load_file(folder / "diffusion_pytorch_model.safetensors"), strict=True)


def test_real_decoder_config_is_the_default() -> None:
    assert UNetConfig.from_diffusers(json.loads(REAL_CONFIGS["decoder"].read_text())) == UNetConfig()


@pytest.mark.parametrize(
    "name, kind, sample_channels",
    [("decoder", "text2image", 4), ("decoder-inpaint", "inpaint", 9), ("controlnet-depth", "controlnet", 4)],
)
def test_kind_and_sample_channels(name: str, kind: str, sample_channels: int) -> None:
    config = UNetConfig.from_diffusers(full_size_config(name))
    assert (config.kind, config.sample_channels) == (kind, sample_channels)


@pytest.mark.parametrize(
    "key, value",
    [
        ("resnet_time_scale_shift", "default"),
        ("addition_embed_type", "text_image"),
        ("encoder_hid_dim_type", "text_proj"),
        ("class_embed_type", "identity"),
        ("down_block_types", ["ResnetDownsampleBlock2D"] + ["CrossAttnDownBlock2D"] * 3),
        ("up_block_types", ["ResnetUpsampleBlock2D"] + ["SimpleCrossAttnUpBlock2D"] * 3),
        ("mid_block_type", "UNetMidBlock2DCrossAttn"),
        ("only_cross_attention", True),
        ("attention_head_dim", [64, 64, 64, 64]),
        ("conv_in_kernel", 1),
        ("in_channels", 8),  # 8 channels without the hint encoder: no checkpoint we know
    ],
)
def test_from_diffusers_rejects_unsupported_setting(key: str, value: object) -> None:
    config = json.loads(REAL_CONFIGS["decoder"].read_text())
    config[key] = value
    with pytest.raises(ValueError, match=key):
        UNetConfig.from_diffusers(config)


def test_from_diffusers_rejects_hint_with_other_in_channels() -> None:
    config = controlnet_unet_config(full_size_config("decoder"))
    config["in_channels"] = 9  # a hint on the inpainting UNet: no checkpoint we know
    with pytest.raises(ValueError, match="in_channels"):
        UNetConfig.from_diffusers(config)


def test_from_diffusers_rejects_missing_required_setting() -> None:
    config = json.loads(REAL_CONFIGS["decoder"].read_text())
    del config["addition_embed_type"]  # diffusers' default (None) is not what we build
    with pytest.raises(ValueError, match="addition_embed_type"):
        UNetConfig.from_diffusers(config)
