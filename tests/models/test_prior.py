"""Our unCLIP prior against diffusers' PriorTransformer: same keys, same outputs."""

import json
from pathlib import Path

import pytest
import torch
from diffusers.models.transformers.prior_transformer import PriorTransformer as DiffusersPrior

from dalle_nodes.models.prior import PriorConfig, PriorTransformer
from numerics import relative_error

REAL_CONFIG = Path(__file__).parents[1] / "hub_configs" / "kandinsky-community--kandinsky-2-2-prior/prior/config.json"
# embedding_dim (12) differs from the transformer width (2 x 8) so that mixing the two up fails.
TINY = dict(num_attention_heads=2, attention_head_dim=8, num_layers=2, embedding_dim=12, num_embeddings=77)
BATCH = 3


def tiny_pair() -> tuple[DiffusersPrior, PriorTransformer]:
    torch.manual_seed(0)
    reference = DiffusersPrior(**TINY).eval()
    with torch.no_grad():  # diffusers zero-initialises several parameters; randomise all so each one is checked
        for param in reference.parameters():
            param.normal_(0.0, 0.3)
    ours = PriorTransformer(PriorConfig.from_diffusers(dict(reference.config))).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


def tiny_inputs(timestep: torch.Tensor) -> dict[str, torch.Tensor]:
    text_mask = torch.zeros(BATCH, 77, dtype=torch.bool)
    text_mask[0, :] = True  # no padding
    text_mask[1, :10] = True  # short prompt
    text_mask[2, 5:40] = True  # leading padding: first query rows see only padded keys
    return dict(
        noisy_embeds=torch.randn(BATCH, 12),
        timestep=timestep,
        text_embeds=torch.randn(BATCH, 12),
        text_states=torch.randn(BATCH, 77, 12),
        text_mask=text_mask,
    )


@pytest.mark.parametrize("timestep", [torch.tensor([0, 417, 999]), torch.tensor(250)], ids=["per-row", "0-d"])
def test_matches_diffusers(timestep: torch.Tensor) -> None:
    reference, ours = tiny_pair()
    inputs = tiny_inputs(timestep)
    with torch.no_grad():
        expected = reference(
            inputs["noisy_embeds"], timestep, inputs["text_embeds"], inputs["text_states"], inputs["text_mask"]
        ).predicted_image_embedding
        actual = ours(**inputs)
        unmasked = ours(**{**inputs, "text_mask": torch.ones(BATCH, 77, dtype=torch.bool)})
    assert actual.shape == (BATCH, 12)
    assert relative_error(actual, expected) < 1e-5
    assert relative_error(unmasked[1:], expected[1:]) > 1e-3  # the padding mask really changes the output
    assert relative_error(ours.unnormalize(actual), reference.post_process_latents(actual)) < 1e-6


def test_steps_reuse_one_encoded_text() -> None:
    """A sampler's use: the text encoded once, then steps at several timesteps and noisy embeddings, each equal to
    diffusers' full pass over all 81 tokens (padded masks, one starting with padding, included)."""
    reference, ours = tiny_pair()
    inputs = tiny_inputs(torch.tensor(0))
    text_args = inputs["text_embeds"], inputs["text_states"], inputs["text_mask"]
    with torch.no_grad():
        text = ours.encode_text(*text_args)
        for timestep in (torch.tensor(999), torch.tensor([3, 500, 998]), torch.tensor(0)):
            noisy = torch.randn(BATCH, 12)
            expected = reference(noisy, timestep, *text_args).predicted_image_embedding
            assert relative_error(ours.step(noisy, timestep, text), expected) < 1e-5
        unmasked = ours.encode_text(inputs["text_embeds"], inputs["text_states"], torch.ones(BATCH, 77, dtype=bool))
        assert relative_error(ours.step(noisy, timestep, unmasked)[1:], expected[1:]) > 1e-3  # the cache is read
    assert len(text.keys_values) == 2  # one per layer: [B, heads, 78 text tokens, head_dim] keys and values
    assert all(t.shape == (BATCH, 2, 78, 8) for keys_values in text.keys_values for t in keys_values)
    assert text.step_bias.shape == (BATCH, 1, 3, 81)  # 3 step tokens over all 81 keys


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision(dtype: torch.dtype) -> None:
    _, ours = tiny_pair()
    inputs = tiny_inputs(torch.tensor([0, 417, 999]))
    with torch.no_grad():
        expected = ours(**inputs)
        low = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
        actual = ours.to(dtype)(**low)
    assert actual.dtype == dtype
    assert relative_error(actual.float(), expected) < 5e-2


def test_full_size_state_dict_matches_diffusers() -> None:
    config = json.loads(REAL_CONFIG.read_text())
    with torch.device("meta"):
        reference = DiffusersPrior.from_config(config)
        ours = PriorTransformer(PriorConfig.from_diffusers(config))
    assert PriorConfig.from_diffusers(config) == PriorConfig(32, 64, 20, 1280, 77, 4)
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == expected


@pytest.mark.parametrize(
    "key, value",
    [
        ("norm_in_type", "layer"),
        ("embedding_proj_norm_type", "layer"),
        ("added_emb_type", None),
        ("encoder_hid_proj_type", None),
        ("time_embed_act_fn", "gelu"),
        ("clip_embed_dim", 2048),
        ("time_embed_dim", 1024),
        ("additional_embeddings", 3),
        ("dropout", 0.1),
        ("some_new_option", True),
    ],
)
def test_from_diffusers_rejects_unsupported(key: str, value: object) -> None:
    config = {**json.loads(REAL_CONFIG.read_text()), key: value}
    with pytest.raises(ValueError, match=key):
        PriorConfig.from_diffusers(config)
