"""engine/cuda_graph.py, and the Kandinsky 2.2 prior sampled through it.

On the CPU a graph cannot be recorded: the tests there check the bookkeeping (input buffers, the output buffer a
replay overwrites, the fallback) with a stand-in for the recording. The tests marked for a GPU record real graphs.
"""

import os
from unittest import mock

import pytest
import torch

from dalle_nodes.engine import cuda_graph
from dalle_nodes.engine.hub import Source
from dalle_nodes.models.clip import TextEmbeds
from dalle_nodes.models.prior import PriorTransformer
from dalle_nodes.pipelines import sampling
from dalle_nodes.pipelines.kandinsky22 import loading, stages
from dalle_nodes.pipelines.kandinsky22.embeds import PromptEmbeds
from tiny_repos import WIDTH

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
STEPS = 6


def test_an_uncaptured_call_runs_fn_on_its_input_buffers() -> None:
    seen = []

    def fn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        seen.append((a, b))
        return a * 2 + b

    a, b = torch.arange(6.0).view(2, 3), torch.tensor(5, dtype=torch.long)
    call = cuda_graph.GraphedCall(fn, a, b)
    a.zero_()  # the buffers are clones: the example inputs may change afterwards
    assert torch.equal(call.inputs[0], torch.arange(6.0).view(2, 3)) and call.graph is None and not seen

    x, t = torch.full((2, 3), 1.5), torch.tensor(7)
    out = call(x, t)
    assert len(seen) == 1 and seen[0][0] is call.inputs[0] and seen[0][1] is call.inputs[1]
    assert torch.equal(call.inputs[0], x) and call.inputs[1].item() == 7 and call.inputs[1].dtype == torch.long
    assert torch.equal(out, x * 2 + t) and out is call.output
    assert torch.equal(call(torch.zeros(2, 3), torch.tensor(1)), torch.ones(2, 3))


def test_a_call_checks_the_recorded_shapes() -> None:
    call = cuda_graph.GraphedCall(lambda a, t: a + t, torch.zeros(2, 3), torch.tensor(0))
    with pytest.raises(ValueError, match=r"shapes \[\(2, 3\), \(\)\], not \[\(1, 3\), \(\)\]"):
        call(torch.zeros(1, 3), torch.tensor(0))  # copy_ would broadcast it silently
    with pytest.raises(ValueError, match="shapes"):
        call(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="at least one tensor"):
        cuda_graph.GraphedCall(lambda: torch.zeros(1))


def test_can_capture_only_on_cuda() -> None:
    assert cuda_graph.can_capture(torch.device("cuda", 0)) and cuda_graph.can_capture("cuda")
    assert not cuda_graph.can_capture(torch.device("cpu")) and not cuda_graph.can_capture("meta")


def test_graphed_falls_back_to_fn_with_a_warning(monkeypatch, caplog) -> None:
    def fail(self) -> None:
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(cuda_graph.GraphedCall, "capture", fail)
    fn = lambda a: a + 1  # noqa: E731
    assert cuda_graph.graphed(fn, torch.zeros(3), what="Some model") is fn
    assert "Some model: CUDA graph capture failed (operation not permitted" in caplog.text


def test_graphed_returns_the_captured_call(monkeypatch, caplog) -> None:
    captured = []
    monkeypatch.setattr(cuda_graph.GraphedCall, "capture", lambda self: captured.append(self))
    call = cuda_graph.graphed(lambda a: a + 1, torch.zeros(3), warmup=3)
    assert captured == [call] and isinstance(call, cuda_graph.GraphedCall) and call.warmup == 3
    assert torch.equal(call(torch.ones(3)), torch.full((3,), 2.0)) and not caplog.text


class ReplayOnTheCPU:
    """A stand-in for a recorded graph: a replay computes fn on the input buffers into the one output tensor
    recorded, as a CUDA graph does, so a caller that reads an output after the next call gets the wrong values."""

    def __init__(self, call: cuda_graph.GraphedCall):
        self.call = call

    def replay(self) -> None:
        self.call.output.copy_(self.call.fn(*self.call.inputs))


def capture_on_the_cpu(calls: list[cuda_graph.GraphedCall]):
    """GraphedCall.capture without CUDA: the warm-up and recording calls of fn, then ReplayOnTheCPU."""

    def capture(self: cuda_graph.GraphedCall) -> None:
        for _ in range(self.warmup):
            self.fn(*self.inputs)
        self.output = self.fn(*self.inputs)
        self.graph = ReplayOnTheCPU(self)
        calls.append(self)

    return capture


def test_the_cpu_stand_in_overwrites_the_output(monkeypatch) -> None:
    monkeypatch.setattr(cuda_graph.GraphedCall, "capture", capture_on_the_cpu([]))
    call = cuda_graph.graphed(lambda a: a * 3, torch.zeros(2))
    first = call(torch.ones(2))
    second = call(torch.full((2,), 2.0))
    assert first is second and torch.equal(first, torch.full((2,), 6.0))


def tiny_prior(repo, device: str = "cpu", dtype: torch.dtype = torch.float32):
    return loading.load_prior(Source(str(repo)), dtype).to(device)


def text_embeds(seed: int, length: int, device: str = "cpu", dtype: torch.dtype = torch.float32) -> TextEmbeds:
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(1, 77, dtype=torch.bool)
    mask[0, :length] = True
    pooled, states = torch.randn(1, WIDTH, generator=generator), torch.randn(1, 77, WIDTH, generator=generator)
    return TextEmbeds(pooled, states, mask).to(torch.device(device), dtype)


def sample_prior(prior, device: str, dtype: torch.dtype, case: str, seed: int, graphs: bool = True):
    """prior_stage for one prompt: ([2, D] embeddings, negative embeddings or None without a negative prompt, the
    generator afterwards); `graphs` is the DALLE_NODES_CUDA_GRAPHS switch during the call."""
    prompt = PromptEmbeds("a", text_embeds(0, 9, device, dtype), text_embeds(1, 2, device, dtype))
    negative = PromptEmbeds("b", text_embeds(2, 5, device, dtype), prompt.empty) if case == "negative" else None
    generator = torch.Generator().manual_seed(seed)
    steps = []
    run = stages.PriorRun(2, 1.0 if case == "unguided" else 4.0, sampling.prior_schedule(STEPS))
    with torch.inference_mode(), mock.patch.dict(os.environ, {cuda_graph.SWITCH: "1" if graphs else "0"}):
        embeds = stages.prior_stage(
            stages.StageModel.held(prior),
            lambda: torch.zeros(1, WIDTH),
            prompt,
            negative,
            run,
            generator,
            lambda i, total, x, x0: steps.append(i),
        )
    assert steps == list(range(STEPS))
    return embeds.positive, embeds.negative if negative else None, generator


CASES = ["guided", "negative", "unguided"]


@pytest.mark.parametrize("case", CASES)
def test_prior_sample_graph_bookkeeping_gives_the_eager_embeddings(tiny_prior_repo, monkeypatch, case) -> None:
    """The graph path on the CPU, with capture and replay stood in for: the same embeddings as eager sampling, bit
    for bit, the sampler never reads the output buffer after the next replay, and the warm-up and recording calls
    draw no noise (the generator ends where eager sampling leaves it)."""
    prior = tiny_prior(tiny_prior_repo)
    eager, eager_negative, eager_generator = sample_prior(prior, "cpu", torch.float32, case, 3, graphs=False)
    off_cuda, _, _ = sample_prior(prior, "cpu", torch.float32, case, 3)  # graphs on: nothing to capture here
    assert torch.equal(off_cuda, eager)

    captured = []
    monkeypatch.setattr(cuda_graph, "can_capture", lambda device: True)
    monkeypatch.setattr(cuda_graph.GraphedCall, "capture", capture_on_the_cpu(captured))
    replays = []
    replay = ReplayOnTheCPU.replay
    monkeypatch.setattr(ReplayOnTheCPU, "replay", lambda self: replays.append(1) or replay(self))
    embeds, negative_embeds, generator = sample_prior(prior, "cpu", torch.float32, case, 3)
    assert len(captured) == 1 and len(replays) == STEPS
    assert captured[0].inputs[0].shape == (4 if case == "negative" else 2, WIDTH) and captured[0].inputs[1].ndim == 0
    assert torch.equal(embeds, eager) and embeds.shape == (2, WIDTH)
    assert (negative_embeds is None) == (case != "negative")
    if case == "negative":
        assert torch.equal(negative_embeds, eager_negative)
    assert torch.equal(generator.get_state(), eager_generator.get_state())
    assert not sample_prior(prior, "cpu", torch.float32, case, 4, graphs=False)[0].equal(eager)


def test_the_prior_graph_records_steps_only(tiny_prior_repo, monkeypatch) -> None:
    """The text is encoded once, before recording: the warm-up, the recording and every replay run only the prior's
    step, reading the text's keys and values where encode_text left them."""
    prior = tiny_prior(tiny_prior_repo)
    events = []
    for name in ("encode_text", "step"):
        method = getattr(PriorTransformer, name)
        monkeypatch.setattr(
            PriorTransformer, name, lambda self, *a, _m=method, _n=name: events.append(_n) or _m(self, *a)
        )
    monkeypatch.setattr(cuda_graph, "can_capture", lambda device: True)
    capture = capture_on_the_cpu([])
    monkeypatch.setattr(cuda_graph.GraphedCall, "capture", lambda self: events.append("capture") or capture(self))
    sample_prior(prior, "cpu", torch.float32, "negative", 3)
    assert events == ["encode_text", "capture"] + ["step"] * (cuda_graph.WARMUP_CALLS + 1 + STEPS)


def test_prior_sample_runs_eagerly_when_capture_fails(tiny_prior_repo, monkeypatch, caplog) -> None:
    prior = tiny_prior(tiny_prior_repo)
    eager, _, _ = sample_prior(prior, "cpu", torch.float32, "guided", 5, graphs=False)

    def fail(self) -> None:
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(cuda_graph, "can_capture", lambda device: True)
    monkeypatch.setattr(cuda_graph.GraphedCall, "capture", fail)
    assert torch.equal(sample_prior(prior, "cpu", torch.float32, "guided", 5)[0], eager)
    assert "Kandinsky 2.2 prior: CUDA graph capture failed (operation not permitted" in caplog.text


@needs_cuda
def test_a_replay_computes_fn_on_the_gpu(caplog) -> None:
    """A real recording: each replay gives what the module gives for that call's input, in the one output buffer."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 8)).cuda()
    scale = torch.tensor(2.0, device="cuda")

    def fn(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return module(x * s).softmax(-1)

    with torch.inference_mode():
        call = cuda_graph.graphed(fn, torch.randn(5, 32, device="cuda"), scale, what="test")
        assert isinstance(call, cuda_graph.GraphedCall) and call.graph is not None, caplog.text
        outputs = []
        for i in range(3):
            x, s = torch.randn(5, 32, device="cuda"), torch.tensor(float(i), device="cuda")
            out = call(x, s)
            outputs.append(out)
            assert torch.equal(out, fn(x, s))
    assert outputs[0] is outputs[1] is outputs[2]


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", CASES)
def test_prior_sample_graph_gives_the_eager_embeddings_on_the_gpu(tiny_prior_repo, monkeypatch, caplog, case, dtype):
    """On a GPU: the denoise call captured once (no fallback), replayed at every step, and the embeddings equal
    to eager sampling's bit for bit (same kernels, same inputs; cuBLAS gives every stream a workspace of the same
    size, so the recording on the side stream picks the same algorithms as the eager calls)."""
    prior = tiny_prior(tiny_prior_repo, "cuda", dtype)
    captured = []
    capture = cuda_graph.GraphedCall.capture
    monkeypatch.setattr(cuda_graph.GraphedCall, "capture", lambda self: captured.append(self) or capture(self))
    graph, graph_negative, _ = sample_prior(prior, "cuda", dtype, case, 3)
    assert len(captured) == 1 and captured[0].graph is not None
    assert "capture failed" not in caplog.text
    eager, eager_negative, _ = sample_prior(prior, "cuda", dtype, case, 3, graphs=False)
    assert len(captured) == 1
    assert graph.dtype == torch.float32 and graph.device.type == "cuda" and graph.isfinite().all()
    assert torch.equal(graph, eager)
    if case == "negative":
        assert torch.equal(graph_negative, eager_negative)
    assert torch.equal(sample_prior(prior, "cuda", dtype, case, 3)[0], graph)  # a second run captures anew
    assert len(captured) == 2
