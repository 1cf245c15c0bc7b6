"""Descriptions of the images API's models for the real-ComfyUI tests: the shipped ones with fewer sampling steps,
which the tiny checkpoints need no more of."""

from __future__ import annotations

import json

from dalle_nodes.openai_api import model_templates
from shipped_workflows import api_file


def shrunk_description(model_id: str, steps: dict[str, int]) -> dict:
    """A shipped description with its sampling steps set to `steps` by class type, through its own "set"."""
    spec = json.loads((model_templates.SHIPPED_MODELS / f"{model_id}{model_templates.SUFFIX}").read_text())
    spec.pop("aliases", None)  # a user's description serves its aliases at once; the shipped one on opt-in only
    for endpoint in ("generations", "edits", "variations"):
        for entry in spec[endpoint] if isinstance(spec.get(endpoint), list) else [spec.get(endpoint)]:
            if entry is None:
                continue
            graph = json.loads(api_file(entry["workflow"].removesuffix(".api.json")).read_text())
            for node_id, node in graph.items():
                if node["class_type"] in steps:
                    entry.setdefault("set", {}).setdefault(node_id, {})["steps"] = steps[node["class_type"]]
    return spec
