"""One package per model family (kandinsky22/, dalle_mini/, upscale/: loading, stages, api) and beside them what
they share (samplers, checks, masks, reranking); the public Python API:

from dalle_nodes.pipelines import DalleMini, Kandinsky22, Upscaler
"""

from . import dalle_mini, kandinsky22
from .dalle_mini import DalleMini
from .kandinsky22 import Kandinsky22
from .upscale import Upscaler

__all__ = ["DalleMini", "Kandinsky22", "Upscaler", "dalle_mini", "kandinsky22"]
