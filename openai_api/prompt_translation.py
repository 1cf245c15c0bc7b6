"""A model description's `"prompt": {"translate": "auto" | "<repo id or folder>"}`: the request's prompts reach its
workflow through the DALL·E Translate Prompt node, so that prompts in Chinese (or the language of the model named)
work with text encoders that read English. Plain Python on the workflow's JSON: each prompt field's targets are fed
by a new translate node, and the field fills that node's text instead. A field that already fills a translate node's
text (a shipped *_zh workflow) is left as it is."""

from __future__ import annotations

import copy

TRANSLATE_NODE = "DalleTranslatePrompt"
DEFAULT_MODEL = "Helsinki-NLP/opus-mt-zh-en"  # "auto"; pipelines.translation.TRANSLATION_REPO (a test holds them equal)
PROMPT_FIELDS = ("prompt", "negative")
MAX_MODEL_NAME = 1024


def translation_model(value: object) -> str | None:
    """The description's translate value as the node's model input: "auto" is the default model; None when absent.
    Raises ValueError with what to write instead."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_MODEL_NAME:
        raise ValueError(
            'translate is "auto" (Helsinki-NLP/opus-mt-zh-en, Chinese) or a translation model\'s Hub repo id or '
            "local folder on the server"
        )
    return DEFAULT_MODEL if value.strip() == "auto" else value.strip()


def with_translation(
    graph: dict, inputs: dict[str, tuple[tuple[str, str], ...]], model: str
) -> tuple[dict, dict[str, tuple[tuple[str, str], ...]]]:
    """Copies of the workflow and of its field bindings with a translate node before each prompt field's inputs."""
    graph, inputs = copy.deepcopy(graph), dict(inputs)
    for field in PROMPT_FIELDS:
        targets = inputs.get(field, ())
        if not targets or all(graph[node]["class_type"] == TRANSLATE_NODE for node, _ in targets):
            continue
        node_id = _free_id(graph)
        graph[node_id] = {
            "class_type": TRANSLATE_NODE,
            "inputs": {"text": graph[targets[0][0]]["inputs"][targets[0][1]], "model": model, "device": "auto"},
            "_meta": {"title": f"Translate {field}"},
        }
        for node, input_name in targets:
            graph[node]["inputs"][input_name] = [node_id, 0]
        inputs[field] = ((node_id, "text"),)
    return graph, inputs


def _free_id(graph: dict) -> str:
    """A node id the workflow does not use: one above its highest number (ComfyUI's own ids are numbers)."""
    numbers = [int(node) for node in graph if str(node).isdigit()]
    return str(max(numbers, default=0) + 1)
