"""engine/compiled.py: our UNet and MoVQ trace into one graph each, compile once per shape (not per step), give
eager's results, and fall back to eager when compiling fails.

Dynamo traces with a counting backend that runs the captured graph as is: what these tests check (no graph
breaks, no recompiles, the same numbers) is the tracing; inductor's code generation is torch's, needs a C++
toolchain and takes minutes per model on 2 cores.
"""

import logging

import pytest
import torch

from dalle_nodes.engine import compiled
from dalle_nodes.engine.compiled import Compiled
from dalle_nodes.models.movq import MoVQ, MoVQConfig
from dalle_nodes.models.unet import KandinskyUNet, UNetConfig
from dalle_nodes.pipelines import sampling
from dalle_nodes.pipelines.kandinsky22 import stages
from dalle_nodes.pipelines.kandinsky22.embeds import ImageEmbeds
from dalle_nodes.pipelines.kandinsky22.starts import DecoderStart
from tiny_repos import WIDTH, tiny_movq_config, tiny_unet_config


class CountingBackend:
    """A torch.compile backend that records each graph dynamo hands over and runs it unchanged."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, graph_module: torch.fx.GraphModule, example_inputs: list) -> object:
        self.graphs += 1
        return graph_module.forward


def not_oom(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def tiny_unet() -> KandinskyUNet:
    torch.manual_seed(0)
    return KandinskyUNet(UNetConfig.from_diffusers(tiny_unet_config())).eval()


@pytest.mark.parametrize("sampler", ["ddpm", "euler_ancestral"])  # integer and fractional timesteps
def test_unet_compiles_once_for_a_whole_sampling_run(sampler: str) -> None:
    unet = tiny_unet()
    embeds = ImageEmbeds(torch.randn(2, WIDTH), torch.randn(2, WIDTH))
    schedule = sampling.decoder_schedule(sampler, 5)

    def sample(forward=None) -> torch.Tensor:
        model = stages.StageModel.held(unet, forward)
        run = stages.DecoderRun(schedule, 4.0)
        return stages.decoder_stage(model, embeds, DecoderStart((16, 16)), run, torch.Generator().manual_seed(3))

    backend = CountingBackend()
    forward = Compiled(unet, "test", not_oom, backend=backend, fullgraph=True)  # fullgraph: a break raises
    torch.testing.assert_close(sample(forward), sample(), rtol=0, atol=1e-5)
    assert forward.ok
    assert backend.graphs == 1  # one graph, reused by every step: the timestep is a tensor input, not a constant


def test_movq_decode_compiles_to_one_graph() -> None:
    torch.manual_seed(0)
    movq = MoVQ(MoVQConfig.from_diffusers(tiny_movq_config())).eval()
    backend = CountingBackend()
    decode = Compiled(movq.decode, "test", not_oom, backend=backend, fullgraph=True)
    latents, other = torch.randn(1, 4, 8, 12), torch.randn(1, 4, 8, 12)
    with torch.inference_mode():
        torch.testing.assert_close(decode(latents), movq.decode(latents), rtol=0, atol=1e-5)
        decode(other)  # another value: no recompile
    assert backend.graphs == 1


def test_a_failing_compiler_falls_back_to_eager_with_one_warning(caplog) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3), torch.nn.SiLU()).eval()
    calls, fallbacks = [], []

    def broken_backend(graph_module, example_inputs):
        calls.append(1)
        raise RuntimeError("no C++ compiler")

    forward = Compiled(model, "DALL·E Decoder Sample", not_oom, lambda: fallbacks.append(1), backend=broken_backend)
    x = torch.randn(2, 4, 16, 16)
    with torch.inference_mode(), caplog.at_level(logging.WARNING):
        first, second, expected = forward(x), forward(x), model(x)
    torch.testing.assert_close(first, expected, rtol=0, atol=0)
    torch.testing.assert_close(second, expected, rtol=0, atol=0)
    assert not forward.ok and len(calls) == 1 and len(fallbacks) == 1
    warnings = [r.getMessage() for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert len(warnings) == 1 and "DALL·E Decoder Sample" in warnings[0] and "no C++ compiler" in warnings[0]


def test_the_callers_own_error_is_raised_and_compiling_stays_on(caplog) -> None:
    """A latent the UNet refuses (sides not a multiple of 8) is the user's error, not the compiler's."""
    unet = tiny_unet()
    forward = Compiled(unet, "test", not_oom, lambda: pytest.fail("no fallback expected"), backend=CountingBackend())
    with torch.inference_mode(), caplog.at_level(logging.WARNING):
        with pytest.raises(ValueError, match="must be a multiple of 8"):
            forward(torch.randn(2, 4, 12, 12), torch.tensor(500), torch.randn(2, WIDTH))
    assert forward.ok and "torch.compile failed" not in caplog.text


def test_kernel_cache_goes_beside_the_models_unless_the_user_chose(tmp_path, monkeypatch) -> None:
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    environ = compiled.os.environ
    monkeypatch.delenv(compiled.INDUCTOR_CACHE_ENV, raising=False)
    compiled.use_cache_dir(tmp_path / "ours")
    assert (tmp_path / "ours").is_dir() and environ[compiled.INDUCTOR_CACHE_ENV] == str(tmp_path / "ours")
    # what importing torch._dynamo leaves behind, as in every ComfyUI process: torch's default is not a choice
    monkeypatch.setenv(compiled.INDUCTOR_CACHE_ENV, default_cache_dir())
    compiled.use_cache_dir(tmp_path / "ours")
    assert environ[compiled.INDUCTOR_CACHE_ENV] == str(tmp_path / "ours")
    monkeypatch.setenv(compiled.INDUCTOR_CACHE_ENV, str(tmp_path / "theirs"))
    compiled.use_cache_dir(tmp_path / "ours2")
    assert environ[compiled.INDUCTOR_CACHE_ENV] == str(tmp_path / "theirs")
    assert not (tmp_path / "ours2").exists()


def test_layout_is_channels_last_only_for_compiled_gpu_runs() -> None:
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert compiled.memory_format(cuda, compiled=True) == torch.channels_last
    assert compiled.memory_format(cuda, compiled=False) == torch.contiguous_format
    assert compiled.memory_format(cpu, compiled=True) == torch.contiguous_format


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_inductor_compiled_unet_and_movq_match_eager_on_the_gpu() -> None:
    """The real compiler, channels-last, bf16, as the decoder loader's compile input runs them."""
    device = torch.device("cuda")
    unet = tiny_unet().to(device, torch.bfloat16).to(memory_format=compiled.memory_format(device, compiled=True))
    torch.manual_seed(0)
    movq = MoVQ(MoVQConfig.from_diffusers(tiny_movq_config())).eval().to(device, torch.bfloat16)
    movq.to(memory_format=torch.channels_last)
    x = torch.randn(2, 4, 16, 16, device=device, dtype=torch.bfloat16)
    t, e = torch.tensor(500, device=device), torch.randn(2, WIDTH, device=device, dtype=torch.bfloat16)
    latents = torch.randn(1, 4, 8, 8, device=device, dtype=torch.bfloat16)
    forward, decode = Compiled(unet, "test", not_oom), Compiled(movq.decode, "test", not_oom)
    with torch.inference_mode():
        for ours, eager, args in ((forward, unet, (x, t, e)), (decode, movq.decode, (latents,))):
            expected = eager(*args).float()
            error = (ours(*args).float() - expected).abs().max() / expected.abs().max()
            assert ours.ok and error < 2e-2  # bf16 (8 bits of mantissa): fused kernels round differently
