"""One package per model family (kandinsky22/, karlo/, dalle_mini/, upscale/: loading, stages, api) and beside them
what they share (samplers, checks, masks, reranking); the public Python API:

from dalle_nodes.pipelines import DalleMini, Kandinsky22, Karlo, Upscaler
"""

from . import dalle_mini, kandinsky22, karlo
from .dalle_mini import DalleMini
from .kandinsky22 import Kandinsky22
from .karlo import Karlo
from .upscale import Upscaler

__all__ = ["DalleMini", "Kandinsky22", "Karlo", "Upscaler", "dalle_mini", "kandinsky22", "karlo"]
