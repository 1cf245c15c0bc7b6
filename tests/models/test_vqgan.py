"""The VQGAN detokenizer against min-dalle's VQGanDetokenizer (one fixed, full size; CPU-cheap comparisons)."""

import pytest
import torch
from einops import rearrange
from torch import nn

from dalle_nodes.engine.checkpoints import CheckpointError
from dalle_nodes.engine.hub import Source
from dalle_nodes.models.vqgan import VQGAN
from dalle_nodes.pipelines.dalle_mini.loading import load_vqgan
from dalle_nodes.pipelines.dalle_mini.stages import seamless_grid
from tiny_repos import import_min_dalle


def max_errors(ours: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    error = (ours - reference).abs().max().item()
    return error, error / reference.abs().max().item()


def test_full_size_names_and_shapes_are_min_dalles() -> None:
    with torch.device("meta"):
        reference, ours = import_min_dalle().models.VQGanDetokenizer(), VQGAN()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}


@pytest.fixture(scope="module")
def pair(tiny_min_dalle_repo) -> tuple[VQGAN, nn.Module]:
    """Ours, loaded from the repo's random detoker.pt, and min-dalle's with the same weights."""
    ours = load_vqgan(Source(str(tiny_min_dalle_repo)), torch.float32)
    reference = import_min_dalle().models.VQGanDetokenizer().eval()
    reference.load_state_dict(torch.load(tiny_min_dalle_repo / "detoker.pt", weights_only=True))
    return ours, reference


@torch.no_grad()
def test_decoder_matches_min_dalle(pair) -> None:
    """The whole network (every level, attention included) on a 4 × 4 code map: 64 px, a 16th of the work."""
    ours, reference = pair
    z = torch.randn(2, 256, 4, 4, generator=torch.Generator().manual_seed(0))
    expected = reference.decoder(z)
    got = ours.decoder(z)
    assert got.shape == (2, 3, 64, 64)
    abs_error, rel_error = max_errors(got, expected)
    assert abs_error < 1e-4 and rel_error < 1e-5, (abs_error, rel_error)


@torch.no_grad()
def test_cpu_decode_runs_channels_last_with_min_dalles_pixels(pair) -> None:
    """oneDNN's convolutions are faster channels-last: the codes' vectors enter the network in that layout."""
    ours, reference = pair
    seen = {}

    def layout(_, args) -> None:
        seen["channels_last"] = args[0].is_contiguous(memory_format=torch.channels_last)

    codes = torch.randint(0, 2**14, (2, 4, 4), generator=torch.Generator().manual_seed(3))
    hook = ours.decoder.conv_in.register_forward_pre_hook(layout)
    try:
        got = ours(codes)
    finally:
        hook.remove()
    z = reference.embedding(codes).permute(0, 3, 1, 2).contiguous()  # min-dalle's own steps, on a 4 × 4 code map
    expected = reference.decoder(reference.post_quant_conv(z)).clamp(0, 1)
    assert seen == {"channels_last": True}
    assert max_errors(got, expected)[0] < 1e-5


class Stretch(nn.Module):
    """Stands in for the (CPU-costly) decoder network: code vectors → 3 channels, 16× nearest upsampling."""

    def __init__(self):
        super().__init__()
        self.project = nn.Conv2d(256, 3, 1)
        nn.init.normal_(self.project.weight, std=0.2, generator=torch.Generator().manual_seed(2))
        nn.init.zeros_(self.project.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(self.project(z) + 0.5, scale_factor=16.0)  # partly out of 0…1


@torch.no_grad()
@pytest.mark.parametrize("seamless", [False, True])
def test_codes_to_pixels_match_min_dalle(pair, seamless: bool) -> None:
    """Codebook lookup, layout, clamping and min-dalle's seamless grid, around a shared stand-in network."""
    ours, reference = pair
    stretch = Stretch()
    original = ours.decoder, reference.decoder
    ours.decoder = reference.decoder = stretch
    try:
        codes = torch.randint(0, 2**14, (4, 16, 16), generator=torch.Generator().manual_seed(1))
        expected = reference(seamless, codes.view(4, 256)) / 255  # 512² px, [H, W, 3]
        if seamless:
            got = rearrange(ours(seamless_grid(codes)), "1 c h w -> h w c")
        else:  # min-dalle shows the 4 images in a grid (column-wise); undo that as its generate_images does
            got = ours(codes)
            expected = rearrange(expected, "(b h) (a w) c -> (a b) c h w", a=2, b=2)
        assert 0.5 < ((got > 0) & (got < 1)).float().mean() < 0.95  # some pixels are clamped, most are not
        assert max_errors(got, expected)[0] < 1e-6
    finally:
        ours.decoder, reference.decoder = original


def test_seamless_grid_needs_a_square_batch() -> None:
    with pytest.raises(ValueError, match="square number of images"):
        seamless_grid(torch.zeros(3, 16, 16, dtype=torch.long))


def test_load_is_strict(tiny_min_dalle_repo, tmp_path) -> None:
    (tmp_path / "detoker.pt").symlink_to(tiny_min_dalle_repo / "decoder.pt")  # the wrong file
    with pytest.raises(CheckpointError, match=r"detoker.pt'.*wrong architecture: \d+ missing .* unexpected"):
        load_vqgan(Source(str(tmp_path)), torch.float32)
