"""Calling a node class as ComfyUI calls it, without ComfyUI: the tests' one way to run a node."""

from __future__ import annotations

from dalle_nodes.nodes import NODE_CLASS_MAPPINGS


def call(node_id: str, **inputs):
    """Fill unspecified widget inputs with their defaults, then call FUNCTION by keyword, as ComfyUI does."""
    cls = NODE_CLASS_MAPPINGS[node_id]
    for name, spec in cls.INPUT_TYPES()["required"].items():
        if name not in inputs and len(spec) > 1 and "default" in spec[1]:
            inputs[name] = spec[1]["default"]
    return getattr(cls(), cls.FUNCTION)(**inputs)
