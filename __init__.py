"""dalle-nodes: ComfyUI nodes for DALL·E 2 (Kandinsky 2.2 unCLIP) and DALL·E 1 (DALL·E Mini/Mega).

ComfyUI imports this folder as a package and reads the two mappings below; inside ComfyUI the import also adds
the OpenAI-compatible /v1 routes to its server (openai_api/).
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from .openai_api import register as _register_images_api

_register_images_api()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
