"""pipelines/dalle_mini/ against min-dalle: loading, token choice, whole generations token for token, CUDA graphs."""

import os
import warnings
from pathlib import Path
from unittest import mock

import pytest
import torch

from dalle_nodes.engine import cuda_graph
from dalle_nodes.engine.checkpoints import CheckpointError
from dalle_nodes.engine.hub import Source
from dalle_nodes.models import dalle_bart
from dalle_nodes.models.dalle_bart import DalleBartDecoder, DalleBartEncoder, Hyperparameters
from dalle_nodes.pipelines.dalle_mini import loading, stages
from tiny_repos import (
    TINY_MIN_DALLE,
    min_dalle_layout,
    min_dalle_modules,
    min_dalle_reference,
)

TINY = Hyperparameters(**TINY_MIN_DALLE)
PROMPT = "An astronaut riding a horse on the moon 🐴, oil painting"
LONG_PROMPT = " ".join(["a teddy bear swimming in the ocean"] * 12)


@pytest.fixture(scope="module")
def min_dalle_root(tiny_min_dalle_repo, tmp_path_factory) -> Path:
    """The tiny repo's files in min-dalle's own layout (pretrained/dalle_bart_mega/encoder.pt …)."""
    return min_dalle_layout(tiny_min_dalle_repo, tmp_path_factory.mktemp("pretrained"))


@pytest.mark.parametrize(
    "variant, text, seed, top_k, temperature, supercondition",
    [
        ("mega", PROMPT, 7, 256, 1.0, 16.0),  # min-dalle's defaults
        ("mini", PROMPT, 3, 50, 1.7, 2.3),
        ("mega", LONG_PROMPT, 11, 4000, 3.0, 1.1),  # cut to 64 tokens
    ],
)
def test_generation_matches_min_dalle(
    tiny_min_dalle_repo, min_dalle_root, variant, text, seed, top_k, temperature, supercondition
) -> None:
    reference = min_dalle_reference(min_dalle_root, is_mega=variant == "mega", decode=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # min-dalle's torch.cuda.amp.autocast is deprecated
        stream = reference.generate_raw_image_stream(
            text=text,
            seed=seed,
            grid_size=2,
            temperature=temperature,
            top_k=top_k,
            supercondition_factor=supercondition,
        )
        expected = next(stream)  # [4, 256]

    source = Source(str(tiny_min_dalle_repo))
    bart = loading.load_bart(source, variant, torch.float32, TINY)
    tokens = stages.text_tokens(loading.load_tokenizer(source, variant).encode(text))
    steps = []
    with torch.inference_mode():
        got = stages.sample_image_tokens(
            bart, tokens, 4, torch.Generator().manual_seed(seed), top_k, temperature, supercondition, steps.append
        )
    assert got.shape == (4, 16, 16) and got.dtype == torch.long
    assert torch.equal(got.view(4, 256), expected)
    assert steps == list(range(256))
    assert len(expected.unique()) > 16  # the draws are random, not one argmax repeated


@pytest.mark.parametrize(
    "seed, top_k, temperature, supercondition", [(0, 256, 1.0, 16.0), (1, 7, 0.3, 1.5), (2, 16384, 2.5, 0.0)]
)
def test_choose_tokens_draws_as_min_dalle_sample_tokens(seed, top_k, temperature, supercondition) -> None:
    """The exponential-noise draw is torch.multinomial's, including how far it moves the generator."""
    _, decoder = min_dalle_modules(TINY)
    logits = 3 * torch.randn(6, 1, 2**14 + 31, generator=torch.Generator().manual_seed(seed + 10))
    decoder.forward = lambda **_: (logits.clone(), None)  # sample_tokens samples from forward's logits
    torch.manual_seed(seed)
    expected, _ = decoder.sample_tokens(torch.tensor([temperature, top_k, supercondition]))
    generator = torch.Generator().manual_seed(seed)
    noise = stages.draw_noise(torch.empty(3, 2**14), generator)
    settings = torch.tensor([temperature]), torch.tensor([supercondition])
    assert torch.equal(stages.choose_tokens(logits[:, -1, : 2**14], noise, top_k, *settings), expected)
    assert torch.equal(generator.get_state(), torch.get_rng_state())


def test_unused_tensors_warn_and_missing_or_misshaped_ones_fail(tiny_min_dalle_repo, tmp_path) -> None:
    for name in ("vocab.json", "merges.txt", "decoder.pt"):
        (tmp_path / name).symlink_to(tiny_min_dalle_repo / name)
    state = torch.load(tiny_min_dalle_repo / "encoder.pt", weights_only=True)
    torch.save({**state, "pose_tokens": torch.zeros(2, 64)}, tmp_path / "encoder.pt")
    with pytest.warns(UserWarning, match=r"encoder.pt' holds 1 tensors .* \(pose_tokens\)"):
        loading.load_bart(Source(str(tmp_path)), "mega", torch.float32, TINY)

    torch.save({k: v for k, v in state.items() if k != "final_ln.weight"}, tmp_path / "encoder.pt")
    with pytest.raises(CheckpointError, match=r"encoder '.*encoder.pt'.*1 missing \(final_ln.weight\)"):
        loading.load_bart(Source(str(tmp_path)), "mega", torch.float32, TINY)

    wide = Hyperparameters(**{**TINY_MIN_DALLE, "glu_embed_count": 64})
    with pytest.raises(CheckpointError, match=r"encoder.pt'.*of another shape \(layers.0.glu"):
        loading.load_bart(Source(str(tmp_path)), "mega", torch.float32, wide)


def test_unknown_variant_is_refused(tiny_min_dalle_repo) -> None:
    with pytest.raises(ValueError, match="variant must be one of mega, mini"):
        loading.load_bart(Source(str(tiny_min_dalle_repo)), "huge", torch.float32)


def test_sampling_generator_is_the_cpus_on_the_cpu() -> None:
    generator = stages.sampling_generator(9, torch.device("cpu"))
    assert generator.device == torch.device("cpu")
    assert torch.equal(generator.get_state(), torch.Generator().manual_seed(9).get_state())


def test_a_sampling_step_reads_no_tensor_values_on_the_host() -> None:
    """What a CUDA graph needs: run on the meta device (no values at all), any .item(), bool() or data-dependent
    shape in the decoder or in choose_tokens would raise."""
    with torch.device("meta"), torch.inference_mode():
        bart = dalle_bart.DalleBart(DalleBartEncoder(TINY), DalleBartDecoder(TINY))
        tokens = torch.ones(2, 64, dtype=torch.long)
        cache = bart.decoder.start(bart.encoder(tokens), tokens, 3)
        settings = torch.ones(2, 1)
        prev_codes, noise = torch.zeros(3, dtype=torch.long), torch.ones(3, 2**14)
        codes = stages.sampling_step(bart.decoder, cache, 256, settings, prev_codes, cache.positions[:1], noise)
    assert codes.shape == (3,) and codes.dtype == torch.long


def sample(bart, tokens, generator, graphs: bool = True) -> tuple[torch.Tensor, list[int]]:
    """sample_image_tokens with the DALLE_NODES_CUDA_GRAPHS switch on or off; the codes and the steps seen."""
    steps = []
    with torch.inference_mode(), mock.patch.dict(os.environ, {cuda_graph.SWITCH: "1" if graphs else "0"}):
        codes = stages.sample_image_tokens(bart, tokens, 3, generator, 50, 1.3, 4.0, steps.append)
    return codes, steps


def test_graph_steps_buffers_give_the_eager_tokens(min_dalle_pair, monkeypatch) -> None:
    """The CUDA graph path's bookkeeping (inputs copied into fixed buffers, output read back) on the CPU, with the
    capture left out: the same tokens as the eager loop, and an int seed is a CPU generator's seed here."""
    ours, _, _, tokenizer = min_dalle_pair
    tokens = stages.text_tokens(tokenizer.encode(PROMPT))
    expected, _ = sample(ours, tokens, torch.Generator().manual_seed(4))
    captured = []
    monkeypatch.setattr(cuda_graph, "can_capture", lambda device: True)
    monkeypatch.setattr(stages.GraphStep, "capture", lambda self: captured.append(self))
    calls = []
    call = stages.GraphStep.__call__
    monkeypatch.setattr(stages.GraphStep, "__call__", lambda self, *args: calls.append(1) or call(self, *args))
    got, steps = sample(ours, tokens, 4)
    assert len(captured) == 1 and len(calls) == 256 and steps == list(range(256))
    assert torch.equal(got, expected)
    assert torch.equal(sample(ours, tokens, 4, graphs=False)[0], expected)


def test_a_failed_capture_falls_back_to_the_eager_loop(min_dalle_pair, monkeypatch, caplog) -> None:
    ours, _, _, tokenizer = min_dalle_pair
    tokens = stages.text_tokens(tokenizer.encode(PROMPT))
    expected, _ = sample(ours, tokens, 5, graphs=False)

    def fail(self) -> None:
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(cuda_graph, "can_capture", lambda device: True)
    monkeypatch.setattr(stages.GraphStep, "capture", fail)
    got, steps = sample(ours, tokens, 5)
    assert torch.equal(got, expected) and steps == list(range(256))
    assert "CUDA graph capture failed (operation not permitted" in caplog.text


def test_a_graph_step_reads_the_callers_noise_buffer_in_place() -> None:
    """prev_codes and index are copied into the step's buffers; the noise buffer is the caller's own, refilled
    between steps, never copied, and no other buffer is accepted."""

    def step(prev_codes: torch.Tensor, index: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return prev_codes + index + noise.sum(-1).long()

    long = dict(dtype=torch.long)
    noise = torch.zeros(3, 4)
    graph_step = stages.GraphStep(step, torch.zeros(3, **long), torch.zeros(1, **long), noise)
    noise.fill_(1.0)
    assert torch.equal(graph_step(torch.ones(3, **long), torch.tensor([2]), noise), torch.full((3,), 7))
    assert torch.equal(graph_step.inputs[0], torch.ones(3, **long)) and graph_step.noise is noise
    with pytest.raises(ValueError, match="noise buffer it was made with"):
        graph_step(torch.ones(3, **long), torch.tensor([2]), noise.clone())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_tokens_are_the_eager_tokens_on_the_gpu(tiny_min_dalle_repo, caplog) -> None:
    """On a GPU: noise from the device's own generator, the graph captured (no fallback), the same tokens."""
    source = Source(str(tiny_min_dalle_repo))
    bart = loading.load_bart(source, "mega", torch.float32, TINY).cuda()
    tokens = stages.text_tokens(loading.load_tokenizer(source, "mega").encode(PROMPT))
    assert stages.sampling_generator(3, torch.device("cuda")).device.type == "cuda"
    graph, steps = sample(bart, tokens, 3)
    eager, _ = sample(bart, tokens, 3, graphs=False)
    assert "capture failed" not in caplog.text and steps == list(range(256))
    assert torch.equal(graph, eager) and torch.equal(sample(bart, tokens, 3)[0], graph)
    assert len(graph.unique()) > 16
