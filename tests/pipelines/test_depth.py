"""Depth maps for the ControlNet hint against transformers' own depth-estimation pipeline, which diffusers' Kandinsky
2.2 ControlNet docs use to make the hint; loading through the real loader, offline."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file
from transformers.modeling_outputs import DepthEstimatorOutput

from dalle_nodes.engine.checkpoints import CheckpointError
from dalle_nodes.engine.hub import Source
from dalle_nodes.engine.images import to_pil
from dalle_nodes.pipelines import depth
from tiny_repos import write_depth_repo

# transformers' pipeline normalised by the max alone before 4.46; ours is min-max, as it has been since.
MIN_MAX_PIPELINE = tuple(int(v) for v in transformers.__version__.split(".")[:2]) >= (4, 46)


@pytest.fixture(scope="module")
def plain_depth_repo(tmp_path_factory):
    """Intel/dpt-large's layout (a plain ViT DPT) in miniature."""
    return write_depth_repo(tmp_path_factory.mktemp("dpt-large"), seed=51, hybrid=False)


def pictures(count: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """8-bit pictures as IMAGE (what Load Image gives): a gradient, so that depth varies, plus noise."""
    generator = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, width).expand(count, height, width)[..., None]
    noise = torch.rand(count, height, width, 3, generator=generator)
    return ((0.6 * ramp + 0.4 * noise) * 255).round() / 255


def load(repo) -> tuple:
    return depth.load_depth_model(Source(str(repo)), torch.float32)


@pytest.mark.skipif(not MIN_MAX_PIPELINE, reason="transformers < 4.46 normalises depth by its max only")
@pytest.mark.parametrize("layout", ["hybrid", "plain"])
def test_matches_transformers_pipeline(layout: str, tiny_depth_repo, plain_depth_repo) -> None:
    repo = tiny_depth_repo if layout == "hybrid" else plain_depth_repo
    processor, model = load(repo)
    images = pictures(2, 40, 56)  # non-square; the processor resizes to 32 × 32, the maps come back at 40 × 56
    hint = depth.depth_map(processor, lambda: model, images)

    reference = transformers.pipeline("depth-estimation", model=str(repo), device="cpu")
    outputs = [reference(picture) for picture in to_pil(images)]  # one picture a call, as the docs call it
    as_8_bit = torch.stack([torch.from_numpy(np.array(out["depth"])).float() / 255 for out in outputs])
    predicted = torch.stack([out["predicted_depth"] for out in outputs])
    low, high = predicted.amin(dim=(1, 2), keepdim=True), predicted.amax(dim=(1, 2), keepdim=True)
    in_float = (predicted - low) / (high - low)

    assert hint.shape == (2, 40, 56, 3) and hint.dtype == torch.float32
    assert torch.equal(hint[..., 0], hint[..., 1]) and torch.equal(hint[..., 0], hint[..., 2])
    float_error = (hint[..., 0] - in_float).abs().max().item()
    above = hint[..., 0] - as_8_bit  # the reference floors to 8 bits: ours lies in [0, 1/255) above it
    print(f"{layout}: float error {float_error:.1e}; above the 8-bit map by {above.min():.1e} to {above.max():.6f}")
    assert float_error < 1e-5  # batched here, one at a time there
    assert above.min() > -1e-5 and above.max() < 1 / 255 + 1e-5


def test_older_transformers_resize_the_same(tiny_depth_repo) -> None:
    """Before 4.46 processors had no post_process_depth_estimation: the bicubic resize their pipeline did is ours."""
    processor, model = load(tiny_depth_repo)

    class Without:  # the processor less its post-processing
        def __call__(self, **kwargs):
            return processor(**kwargs)

    images = pictures(3, 48, 40, seed=1)
    expected = depth.depth_map(processor, lambda: model, images)
    assert (depth.depth_map(Without(), lambda: model, images) - expected).abs().max() < 1e-6


def test_flat_prediction_gives_a_black_map(tiny_depth_repo) -> None:
    processor, _ = load(tiny_depth_repo)

    class Flat(torch.nn.Module):
        device, dtype, config = torch.device("cpu"), torch.float32, transformers.DPTConfig()

        def forward(self, pixel_values: torch.Tensor) -> DepthEstimatorOutput:
            return DepthEstimatorOutput(predicted_depth=torch.full((pixel_values.shape[0], 16, 16), 2.5))

    hint = depth.depth_map(processor, Flat, pictures(1, 32, 32))
    assert torch.equal(hint, torch.zeros(1, 32, 32, 3))


def test_alpha_is_ignored_and_batches_go_in_chunks(tiny_depth_repo, monkeypatch) -> None:
    processor, model = load(tiny_depth_repo)
    images = pictures(5, 32, 48, seed=2)
    whole = depth.depth_map(processor, lambda: model, images)
    monkeypatch.setattr(depth, "DEPTH_CHUNK", 2)
    with_alpha = torch.cat([images, torch.rand(5, 32, 48, 1)], dim=-1)
    assert (depth.depth_map(processor, lambda: model, with_alpha) - whole).abs().max() < 1e-5


@pytest.mark.parametrize(
    "image, message",
    [
        (torch.rand(1, 32, 32, 3) * 255, "values from"),
        (torch.rand(32, 32, 3), "must be an IMAGE"),
        (torch.zeros(1, 32, 32, 3, dtype=torch.uint8), "holds torch.uint8"),
        (torch.full((1, 32, 32, 3), float("nan")), "NaN"),
    ],
)
def test_bad_image_is_refused_before_the_model_loads(tiny_depth_repo, image, message) -> None:
    processor, _ = load(tiny_depth_repo)

    def model() -> torch.nn.Module:
        raise AssertionError("the model was loaded for a bad image")

    with pytest.raises(ValueError, match=message):
        depth.depth_map(processor, model, image)


def test_pickled_weights_load_through_weights_only(tiny_depth_repo, tmp_path) -> None:
    """A repo with pytorch_model.bin only (older Hub repos): the same weights, exactly, and so the same depth maps
    within float rounding (the two loads place the tensors at different memory alignments, which changes the
    kernels' summation order: about 2e-6 apart)."""
    repo = shutil.copytree(tiny_depth_repo, tmp_path / "repo")
    torch.save(load_file(repo / "model.safetensors"), repo / "pytorch_model.bin")
    (repo / "model.safetensors").unlink()
    processor, model = load(repo)
    _, expected = load(tiny_depth_repo)
    ours, theirs = model.state_dict(), expected.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    images = pictures(1, 32, 32)
    torch.testing.assert_close(
        depth.depth_map(processor, lambda: model, images),
        depth.depth_map(processor, lambda: expected, images),
        rtol=0,
        atol=1e-5,
    )


def test_config_written_by_transformers_4(tiny_depth_repo, tmp_path) -> None:
    """transformers 4.x wrote its backbone options into DPT configs; transformers 5 knows them as plain arguments."""
    repo = shutil.copytree(tiny_depth_repo, tmp_path / "repo")
    config = json.loads((repo / "config.json").read_text())
    config.update(backbone=None, backbone_kwargs=None, use_pretrained_backbone=False, use_timm_backbone=False)
    (repo / "config.json").write_text(json.dumps(config))
    load(repo)


def test_other_models_are_refused(tiny_clip_repo, tiny_depth_repo, tmp_path) -> None:
    with pytest.raises(CheckpointError, match="holds a CLIPModel, not a depth-estimation model"):
        load(tiny_clip_repo)
    repo = shutil.copytree(tiny_depth_repo, tmp_path / "repo")
    (repo / "preprocessor_config.json").unlink()
    with pytest.raises(CheckpointError, match="has no preprocessor_config.json"):
        load(repo)


def test_models_that_predict_distance_are_turned_round(tiny_depth_repo) -> None:
    """Metric models (GLPN, ZoeDepth, Depth Anything's metric ones) grow with distance: near must still be white."""
    processor, model = load(tiny_depth_repo)
    relative = depth.depth_map(processor, lambda: model, pictures(1, 40, 56))
    model.config.depth_estimation_type = "metric"
    assert depth.predicts_distance(model.config)
    metric = depth.depth_map(processor, lambda: model, pictures(1, 40, 56))
    assert relative.std() > 0.05
    assert torch.allclose(metric, 1 - relative, atol=1e-6)
    assert not depth.predicts_distance(transformers.DPTConfig())
    assert depth.predicts_distance(transformers.GLPNConfig())
