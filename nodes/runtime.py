"""The one door to ComfyUI: devices, dtypes, memory management, progress, interrupts and the models folder.

Inside ComfyUI everything goes through its own machinery (model_management, ModelPatcher, ProgressBar,
folder_paths), so our models are offloaded like any other. Without ComfyUI (tests, the CLI) the same calls
fall back to plain torch and tqdm.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch

from ..engine import caches, hub, memory, partial_images
from ..engine import device as plain
from ..engine.device import DTYPES, Host
from ..engine.hub import ConsoleDownload

try:
    import comfy.model_management as comfy_mm
    import comfy.model_patcher
    import comfy.utils
    import folder_paths
except ImportError:
    comfy_mm = None

IN_COMFYUI = comfy_mm is not None
__all__ = ["DTYPES", "HOST", "IN_COMFYUI"]


def compute_device() -> torch.device:
    return comfy_mm.get_torch_device() if IN_COMFYUI else plain.default_device()


def offload_device() -> torch.device:
    return comfy_mm.unet_offload_device() if IN_COMFYUI else torch.device("cpu")


def output_device() -> torch.device:
    """Where node outputs (images) live between nodes: ComfyUI's intermediate device, else the CPU."""
    return comfy_mm.intermediate_device() if IN_COMFYUI else torch.device("cpu")


def resolve_dtype(choice: str, device: torch.device | None = None) -> torch.dtype:
    """The loader's dtype input → a torch dtype; "auto" is bf16 where supported (inside ComfyUI: where ComfyUI would
    use it), fp16 on other GPUs, fp32 on the CPU."""
    return plain.resolve_dtype(choice, device or compute_device(), comfy_mm.should_use_bf16 if IN_COMFYUI else None)


def fp16_ok(device: torch.device) -> bool:
    """Whether fp16 compute suits this device (inside ComfyUI: its judgement, which --force-fp32 overrides)."""
    if IN_COMFYUI:
        return bool(comfy_mm.should_use_fp16(device))
    return device.type in ("cuda", "mps")


def model_store() -> Path | None:
    """Folder for downloaded checkpoints: ComfyUI's models/dalle, else $DALLE_NODES_HOME, else None (HF cache)."""
    if IN_COMFYUI:
        if "dalle" not in folder_paths.folder_names_and_paths:
            folder_paths.add_model_folder_path("dalle", os.path.join(folder_paths.models_dir, "dalle"))
        return Path(folder_paths.get_folder_paths("dalle")[0])
    return hub.default_store()


class _Holder(torch.nn.Module):
    """ComfyUI's ModelPatcher writes `model.device` on the module it manages, a read-only property on
    transformers models: it manages this plain container instead."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.inner = module


class ManagedModule:
    """A module handed to ComfyUI's memory manager (offloaded to make room, loaded back on use).

    Without ComfyUI it simply moves to the compute device on first use. `patcher` adopts a ComfyUI
    ModelPatcher that already manages the module (an UPSCALE_MODEL from ComfyUI's own loader).
    """

    def __init__(self, module: torch.nn.Module, patcher: object | None = None):
        self.module = module
        self.patcher = patcher
        if IN_COMFYUI and patcher is None:
            self.patcher = comfy.model_patcher.CoreModelPatcher(
                _Holder(module), load_device=compute_device(), offload_device=offload_device()
            )

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    def load(self, memory_required: int = 0) -> torch.nn.Module:
        """Make the module ready on the compute device and return it; ComfyUI frees `memory_required` bytes
        beside it for activations, offloading other models if it must."""
        if self.patcher is not None:
            comfy_mm.load_models_gpu([self.patcher], memory_required=memory_required, force_full_load=True)
        else:
            self.module.to(compute_device())
        return self.module

    def load_for(self, activation_bytes: Callable[[bool], int]) -> torch.nn.Module:
        """load() with room for the activations `activation_bytes(fused_attention)` estimates for the coming call."""
        return self.load(memory_required=activation_bytes(memory.fused_attention_on(compute_device())))

    def device(self) -> torch.device:
        return next(self.module.parameters()).device


def free_memory(device: torch.device) -> int:
    """Bytes the compute device can still allocate (ComfyUI counts what its own caches can give back)."""
    return int(comfy_mm.get_free_memory(device)) if IN_COMFYUI else plain.free_memory(device)


def is_out_of_memory(error: BaseException) -> bool:
    return plain.is_out_of_memory(error) or (IN_COMFYUI and comfy_mm.is_oom(error))


class Progress:
    """Per-step progress and an interrupt check: ComfyUI's ProgressBar inside ComfyUI, tqdm outside."""

    def __init__(self, total: int, desc: str = ""):
        self.total = total
        self.bar = comfy.utils.ProgressBar(total) if IN_COMFYUI else plain.console_progress(total, desc)

    def update(self, n: int = 1) -> None:
        check_interrupt()
        self.bar.update(n)

    def close(self) -> None:
        if not IN_COMFYUI:
            self.bar.close()


class DownloadBar(ConsoleDownload):
    """Download progress where the user looks: the console's tqdm bar and, inside ComfyUI, the node's progress bar in
    bytes with "file k of n" as the node's text. ComfyUI's Cancel stops the download. Files already on disk show
    nothing."""

    def __init__(self, files: int | None = None) -> None:
        super().__init__(files)
        self.node_bar = None

    def start(self, filename: str, total: int | None) -> None:
        super().start(filename, total)
        if IN_COMFYUI:
            label = self.label(filename)
            logging.info("%s, %s", label, f"{total / 2**30:.2f} GiB" if total else "size unknown")
            self.node_bar = comfy.utils.ProgressBar(total or 0)
            _node_text(label)

    def update(self, done: int) -> None:
        check_interrupt()
        super().update(done)
        if self.node_bar is not None:
            self.node_bar.update_absolute(done, max(self.node_bar.total, done))

    def close(self) -> None:
        super().close()
        if self.node_bar is not None:
            _node_text("")
            self.node_bar = None


def show_text(text: str) -> None:
    """Text on the node running now, where ComfyUI's frontend shows it (a result, such as a translation); nothing
    outside ComfyUI."""
    if IN_COMFYUI:
        _node_text(text)


def _node_text(text: str) -> None:
    """Text on the executing node (ComfyUI's progress text); skipped where this ComfyUI has none."""
    try:
        from server import PromptServer
    except ImportError:
        return
    context = _executing()
    if context is not None and getattr(PromptServer, "instance", None) is not None:
        PromptServer.instance.send_progress_text(text, context.node_id)


def _executing() -> object | None:
    """ComfyUI's context of the node running now (its prompt_id and node_id), or None."""
    try:
        from comfy_execution.utils import get_executing_context
    except ImportError:
        return None
    return get_executing_context()


def offer_preview(step: int, total: int, render: partial_images.Render) -> None:
    """After `step` of `total` (1-based) of a sampler node: a partial image for the images API's stream, when one
    watches this job (engine/partial_images.py; `render` runs only for the steps it takes)."""
    context = _executing() if IN_COMFYUI else None
    if context is not None and partial_images.watched(context.prompt_id):
        partial_images.offer(context.prompt_id, context.node_id, step, total, render)


def check_interrupt() -> None:
    """Raise ComfyUI's interrupt exception when the user pressed Cancel; a no-op outside ComfyUI."""
    if IN_COMFYUI:
        comfy_mm.throw_exception_if_processing_interrupted()


def free_cache() -> None:
    if IN_COMFYUI:
        comfy_mm.soft_empty_cache()
    else:
        plain.free_cache()


def cache_dir() -> Path:
    """Small files derived from checkpoints (the zero-image embedding): beside the downloads, else ~/.cache."""
    return caches.cache_folder(model_store())


# What the pipelines ask of the program running them, answered by ComfyUI where it runs them.
HOST = Host(
    lambda device: free_memory(device),
    lambda error: is_out_of_memory(error),
    lambda: free_cache(),
    lambda: check_interrupt(),
)
