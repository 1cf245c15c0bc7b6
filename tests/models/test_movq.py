import json
from pathlib import Path

import pytest
import torch
from diffusers import VQModel

from dalle_nodes.engine.tiling import TilePlan
from dalle_nodes.models.movq import MoVQ, MoVQConfig
from numerics import relative_error
from tiny_repos import tiny_movq_config

REAL_CONFIG = Path(__file__).parents[1] / "hub_configs" / "kandinsky-community--kandinsky-2-2-decoder/movq/config.json"

# The real layout (3 plain encoder levels + attention level, attention decoder level + 3 plain), shrunk.
TINY_CONFIG = tiny_movq_config(layers_per_block=2)


@pytest.fixture(scope="module")
def models() -> tuple[MoVQ, VQModel]:
    torch.manual_seed(0)
    reference = VQModel(**TINY_CONFIG).eval()
    with torch.no_grad():  # default norm affines are 1 and 0, which would hide a swapped or missing norm weight
        for name, param in reference.named_parameters():
            if "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    ours = MoVQ(MoVQConfig.from_diffusers(TINY_CONFIG)).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return ours, reference


@torch.no_grad()
def test_decode_matches_diffusers(models):
    ours, reference = models
    latents = torch.randn(2, 4, 5, 7)
    expected = reference.decode(latents, force_not_quantize=True).sample
    got = ours.decode(latents)
    assert got.shape == (2, 3, 40, 56)
    assert relative_error(got, expected) < 1e-5


@torch.no_grad()
def test_quantized_decode_matches_diffusers(models):
    ours, reference = models
    latents = 0.02 * torch.randn(2, 4, 3, 5)  # on the scale of the codebook, so many codes are in play
    expected = reference.decode(latents).sample
    assert relative_error(ours.decode(latents, quantize=True), expected) < 1e-5
    assert relative_error(ours.decode(latents), expected) > 1e-3  # the lookup did change something


@torch.no_grad()
def test_encode_matches_diffusers(models):
    ours, reference = models
    images = torch.rand(2, 3, 48, 40) * 2 - 1
    expected = reference.encode(images).latents
    got = ours.encode(images)
    assert got.shape == (2, 4, 6, 5)
    assert relative_error(got, expected) < 1e-5


@torch.no_grad()
def test_channels_last_bfloat16(models):
    ours, reference = models
    latents = torch.randn(1, 4, 4, 6)
    expected = reference.decode(latents, force_not_quantize=True).sample
    low = MoVQ(ours.config).to(torch.bfloat16, memory_format=torch.channels_last)
    low.load_state_dict(ours.state_dict())
    got = low.decode(latents.to(torch.bfloat16, memory_format=torch.channels_last))
    assert got.dtype == torch.bfloat16
    assert relative_error(got, expected) < 5e-2


@torch.no_grad()
def test_cpu_decode_runs_channels_last_with_latent_sized_norm_convs(models):
    ours, _ = models
    seen = {}

    def layout(_, args) -> None:
        seen["channels_last"] = args[0].is_contiguous(memory_format=torch.channels_last)

    def size(_, args) -> None:
        seen["norm_conv_size"] = tuple(args[0].shape[-2:])

    hooks = [
        ours.decoder.conv_in.register_forward_pre_hook(layout),
        ours.decoder.conv_norm_out.conv_y.register_forward_pre_hook(size),
    ]
    try:
        ours.decode(torch.randn(1, 4, 5, 7))
    finally:
        for hook in hooks:
            hook.remove()
    # oneDNN's convolutions run faster channels-last; the 1x1 convs of the latents run before the resize to 40 x 56
    assert seen == {"channels_last": True, "norm_conv_size": (5, 7)}


@torch.no_grad()
def test_spatial_norm_resizes_latents_when_sizes_do_not_divide(models):
    ours, reference = models
    norm, theirs = ours.decoder.conv_norm_out, reference.decoder.conv_norm_out
    x, latents = torch.randn(1, norm.norm_layer.num_channels, 12, 10), torch.randn(1, 4, 5, 7)
    torch.testing.assert_close(norm(x, latents), theirs(x, latents), atol=1e-6, rtol=0)


@torch.no_grad()
def test_tiled_decode_in_one_tile_is_the_whole_decode(models):
    ours, _ = models
    latents = torch.randn(2, 4, 5, 7)
    whole = torch.cat([ours.decode(one) for one in latents.split(1)])  # decode_tiled goes one image at a time
    for plan in (TilePlan(5, 7, 8, 1), TilePlan(64, 64, 8, 4)):  # the latent's size, and larger
        got = ours.decode_tiled(latents, plan)
        assert got.dtype == torch.float32
        assert torch.equal(got, whole)


@torch.no_grad()
def test_tiled_decode_is_close_to_the_whole_decode(models):
    ours, _ = models
    latents, unrelated = torch.randn(2, 1, 4, 16, 24, generator=torch.Generator().manual_seed(3))
    whole = ours.decode(latents)
    forwards = []
    got = ours.decode_tiled(latents, TilePlan(10, 12, 4, 1), on_batch=lambda: forwards.append(1))
    assert len(forwards) == 2 * 3  # tiles, one per forward
    assert got.shape == (1, 3, 128, 192) and torch.isfinite(got).all()
    # GroupNorm statistics and the attentions' keys come from the tile, so tiles are not exact. Measured on this
    # tiny random model: mean |tiled - whole| = 0.033 (mean |whole| is 0.30), against 0.41 between the decodes of
    # unrelated latents: a ratio of 0.08. Tiles misplaced by one latent pixel give 0.16, unblended tiles 0.67.
    error = (got - whole).abs().mean()
    assert 1e-3 < error < 0.12 * (ours.decode(unrelated) - whole).abs().mean()


def test_full_size_state_dict_matches_diffusers():
    config = json.loads(REAL_CONFIG.read_text())
    assert MoVQConfig.from_diffusers(config) == MoVQConfig()  # our defaults are Kandinsky 2.2's movq
    with torch.device("meta"):
        ours = MoVQ(MoVQConfig.from_diffusers(config))
        reference = VQModel(**{k: v for k, v in config.items() if not k.startswith("_")})
    ours_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    reference_shapes = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert ours_shapes == reference_shapes
    assert ours_shapes["quantize.embedding.weight"] == (16384, 4)


@pytest.mark.parametrize(
    "key, value",
    [
        ("norm_type", "group"),
        ("down_block_types", ["DownEncoderBlock2D"] * 3 + ["CrossAttnDownBlock2D"]),
        ("up_block_types", ["UpDecoderBlock2D"] * 3),  # one fewer than block_out_channels
        ("act_fn", "gelu"),
        ("vq_embed_dim", 8),
        ("lookup_from_codebook", True),
        ("num_attention_heads", 8),  # not a VQModel setting at all
    ],
)
def test_from_diffusers_rejects_unsupported(key, value):
    with pytest.raises(ValueError, match=key):
        MoVQConfig.from_diffusers({**TINY_CONFIG, key: value})
