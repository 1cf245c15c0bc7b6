"""dalle-nodes: ComfyUI nodes for DALL·E 2 (Kandinsky 2.2 unCLIP) and DALL·E 1 (DALL·E Mini/Mega).

ComfyUI imports this folder as a package and reads the two mappings below; inside ComfyUI the import also adds
the OpenAI-compatible /v1 routes to its server (openai_api/). WEB_DIRECTORY holds the help page of each node
(web/docs/<NodeId>.md, web/docs/<NodeId>/zh.md), which ComfyUI serves at /extensions/<this folder's name>/; the
UI translations sit in locales/, where ComfyUI looks for them.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from .openai_api import register as _register_images_api

_register_images_api()

# Only web/ is served: the package root holds the code and, in a checkout, a virtual environment.
WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
