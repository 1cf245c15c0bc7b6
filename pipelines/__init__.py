"""One module per system (load + sample as plain Python) and the samplers they share; the public Python API:

from dalle_nodes.pipelines import DalleMini, Kandinsky22, Upscaler
"""

from . import dalle_mini, kandinsky22
from .dalle_mini import DalleMini
from .kandinsky22 import Kandinsky22
from .upscale import Upscaler

__all__ = ["DalleMini", "Kandinsky22", "Upscaler", "dalle_mini", "kandinsky22"]
