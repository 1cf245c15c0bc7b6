"""CUDA graphs for sampling loops: a step function recorded once, then replayed with a single launch per step.

A sampling step of a small model (a Kandinsky prior step, a DALL·E Mega decoder step) is hundreds of small kernels;
launched one by one from Python they leave the GPU idle between them. A CUDA graph records the kernels of one call
on fixed memory and replays them all at once: each call copies its tensors into the recorded input buffers
(device-side copies, queued like kernels: no host sync) and replays the recording.

What a graphed function may do, as torch.cuda.graphs prescribes: the same kernels on every call, so no host reads
of device values (.item(), bool(), .tolist()), no shapes that depend on values, no new CPU tensors sent to the
device. Whatever changes from call to call comes in as one of its tensor arguments; anything else it reads
(weights, the text conditioning, a caller's buffer) is read at every replay from the memory it had when recorded:
it must stay alive and in place, and the caller may change its values in place between calls.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch

SWITCH = "DALLE_NODES_CUDA_GRAPHS"  # set to 0 to launch every sampling step kernel by kernel, for diagnosis
WARMUP_CALLS = 2  # eager calls before recording: lazy set-up (cuBLAS handles, kernel choice) must not be recorded

Fn = Callable[..., torch.Tensor]  # (*tensors) → tensor


_capture_streams: dict[torch.device, torch.cuda.Stream] = {}


def _capture_stream(device: torch.device) -> torch.cuda.Stream:
    """One side stream per device for every capture: cuBLAS keeps a workspace per stream it has run on, so a new
    stream per sampling run would add one each time."""
    if device not in _capture_streams:
        _capture_streams[device] = torch.cuda.Stream(device)
    return _capture_streams[device]


class GraphedCall:
    """`fn(*tensors) → tensor` run on fixed input buffers, replayed as a CUDA graph once capture() has recorded it.

    The input buffers are clones of `example_inputs`. Each call copies its tensors (of the example shapes) into
    them and replays the recording. The tensor returned is the recorded output buffer itself: the next call
    overwrites it, so read it (or clone it) before calling again. Until capture() (and so on the CPU, where the
    tests run this class) a call runs `fn` on the buffers, with the same bookkeeping.
    """

    def __init__(self, fn: Fn, *example_inputs: torch.Tensor, warmup: int = WARMUP_CALLS):
        if not example_inputs:
            raise ValueError("GraphedCall needs at least one tensor input: its device is where the graph runs.")
        self.fn, self.warmup = fn, warmup
        self.inputs = tuple(tensor.clone() for tensor in example_inputs)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.output: torch.Tensor | None = None  # the recorded output once captured

    @property
    def device(self) -> torch.device:
        return self.inputs[0].device

    def capture(self) -> None:
        """Warm up on a side stream (lazy set-up must not be recorded), then record one call, as torch.cuda.graphs
        prescribes. Runs `fn` warmup + 1 times on the input buffers, which hold the example inputs."""
        device = self.device
        with torch.cuda.device(device):  # a replay runs on the device it was captured on, whichever is current
            side = _capture_stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    self.fn(*self.inputs)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # Captured on our side stream (torch.cuda.graph's default one lives on whichever device was current
            # first). thread_local: CUDA calls other threads of the application make meanwhile cannot spoil it.
            with torch.cuda.graph(graph, stream=side, capture_error_mode="thread_local"):
                output = self.fn(*self.inputs)
        self.graph, self.output = graph, output

    def __call__(self, *tensors: torch.Tensor) -> torch.Tensor:
        """fn(*tensors), computed on the input buffers; the result is overwritten by the next call."""
        shapes = [tuple(tensor.shape) for tensor in tensors]
        expected = [tuple(buffer.shape) for buffer in self.inputs]
        if shapes != expected:
            raise ValueError(f"a graphed call takes tensors of shapes {expected}, not {shapes}.")
        for buffer, tensor in zip(self.inputs, tensors, strict=True):
            buffer.copy_(tensor)
        if self.graph is None:
            self.output = self.fn(*self.inputs)
        else:
            self.graph.replay()
        return self.output


def wanted() -> bool:
    """Whether the sampling nodes use CUDA graphs: yes, unless the environment sets DALLE_NODES_CUDA_GRAPHS=0."""
    return os.environ.get(SWITCH, "1") != "0"


def can_capture(device: torch.device | str) -> bool:
    """Whether calls on `device` can be recorded as CUDA graphs (CUDA devices, ROCm's included)."""
    return torch.device(device).type == "cuda"


def capture_or_fallback(call: GraphedCall, fallback: Fn, what: str) -> Fn:
    """`call` once captured, or `fallback` (the eager function), with a logged warning, if capture fails."""
    try:
        call.capture()
    except Exception as error:  # an op that cannot be recorded (a host sync in some kernel's set-up): run eagerly
        logging.warning("%s: CUDA graph capture failed (%s); running kernel by kernel instead (slower)", what, error)
        return fallback
    return call


def graphed(fn: Fn, *example_inputs: torch.Tensor, warmup: int = WARMUP_CALLS, what: str = "sampling") -> Fn:
    """`fn` recorded as a CUDA graph on the example inputs' device (a captured GraphedCall), or `fn` itself, with a
    logged warning naming `what`, if capture fails. For devices where can_capture() holds.

    Capture runs `fn` warmup + 1 times on copies of the example inputs: side effects of `fn` happen then too.
    The graphed function returns its recorded output buffer, overwritten by the next call (see GraphedCall).
    """
    return capture_or_fallback(GraphedCall(fn, *example_inputs, warmup=warmup), fn, what)
