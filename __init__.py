"""dalle-nodes: ComfyUI nodes for DALL·E 2 (Kandinsky 2.2 unCLIP) and DALL·E 1 (DALL·E Mini/Mega).

ComfyUI imports this folder as a package and reads the two mappings below.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
