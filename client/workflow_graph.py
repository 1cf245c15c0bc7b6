"""Workflow files as ComfyUI's server takes them: UI format → API graph, checks, and inputs set by name.

A UI-format file (what the canvas saves) lists nodes with their widget values in display order and links by id;
the API format (what POST /prompt takes) maps node ids to {class_type, inputs}. Converting needs each node's
input declarations: ours and a few core nodes are known here; for any other node, /object_info of a running
ComfyUI describes it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_CONTROLS = {"fixed", "increment", "decrement", "randomize"}  # the frontend's control_after_generate choices
MUTED, BYPASSED = 2, 4  # UI node modes: left out of the run / passed through
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}  # never sent to the server
MAX_DEPTH = 64  # nesting of JSON arrays and objects in a workflow: real ones nest under 10 deep


class WorkflowError(ValueError):
    """A workflow file or a setting that cannot be used; the message says what to change."""


class UnknownNodes(WorkflowError):
    """A UI-format file with nodes the specs at hand do not describe: a server's /object_info may."""


@dataclass(frozen=True)
class NodeSpec:
    inputs: dict  # INPUT_TYPES(): {"required": {name: (type, options)}, "optional": {...}}
    outputs: tuple[str, ...]
    output_node: bool = False

    def declared(self) -> dict[str, tuple]:
        return {**self.inputs.get("required", {}), **self.inputs.get("optional", {})}


# ComfyUI core nodes our workflows and tests use, as ComfyUI (v0.33) declares them. Outputs are those every
# version has (SaveImage gained an IMAGE output only lately). "COMBO": choices only ComfyUI knows (input files), or
# those of a V3 node (ImageToMask), which /object_info gives as "COMBO" with options.
CORE_NODES = {
    "SaveImage": NodeSpec(
        {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})}},
        (),
        output_node=True,
    ),
    "PreviewImage": NodeSpec({"required": {"images": ("IMAGE",)}}, (), output_node=True),
    "LoadImage": NodeSpec({"required": {"image": ("COMBO", {"image_upload": True})}}, ("IMAGE", "MASK")),
    "ImageScale": NodeSpec(
        {
            "required": {  # "Upscale Image"; MAX_RESOLUTION is 16384
                "image": ("IMAGE",),
                "upscale_method": (["nearest-exact", "bilinear", "area", "bicubic", "lanczos"],),
                "width": ("INT", {"default": 512, "min": 0, "max": 16384, "step": 1}),
                "height": ("INT", {"default": 512, "min": 0, "max": 16384, "step": 1}),
                "crop": (["disabled", "center"],),
            }
        },
        ("IMAGE",),
    ),
    "RepeatImageBatch": NodeSpec(  # "Repeat Image Batch": n copies of each picture, for n variations
        {"required": {"image": ("IMAGE",), "amount": ("INT", {"default": 1, "min": 1, "max": 4096})}},
        ("IMAGE",),
    ),
    "EmptyLatentImage": NodeSpec(
        {
            "required": {
                "width": ("INT", {"default": 512, "min": 16, "max": 16384, "step": 8}),
                "height": ("INT", {"default": 512, "min": 16, "max": 16384, "step": 8}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096}),
            }
        },
        ("LATENT",),
    ),
    "KSampler": NodeSpec(
        {
            "required": {
                "model": ("MODEL",),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
                "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
                "sampler_name": ("COMBO",),
                "scheduler": ("COMBO",),
                "positive": ("CONDITIONING",),
                "negative": ("CONDITIONING",),
                "latent_image": ("LATENT",),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
            }
        },
        ("LATENT",),
    ),
    "VAEDecode": NodeSpec({"required": {"samples": ("LATENT",), "vae": ("VAE",)}}, ("IMAGE",)),
    "CLIPVisionEncode": NodeSpec(
        {"required": {"clip_vision": ("CLIP_VISION",), "image": ("IMAGE",), "crop": (["center", "none"],)}},
        ("CLIP_VISION_OUTPUT",),
    ),
    "unCLIPConditioning": NodeSpec(
        {
            "required": {
                "conditioning": ("CONDITIONING",),
                "clip_vision_output": ("CLIP_VISION_OUTPUT",),
                "strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}),
                "noise_augmentation": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01}),
            }
        },
        ("CONDITIONING",),
    ),
    "InpaintModelConditioning": NodeSpec(
        {
            "required": {
                "positive": ("CONDITIONING",),
                "negative": ("CONDITIONING",),
                "vae": ("VAE",),
                "pixels": ("IMAGE",),
                "mask": ("MASK",),
                "noise_mask": ("BOOLEAN", {"default": True}),
            }
        },
        ("CONDITIONING", "CONDITIONING", "LATENT"),
    ),
    "ImagePadForOutpaint": NodeSpec(
        {
            "required": {  # "Pad Image for Outpainting"
                "image": ("IMAGE",),
                **{
                    side: ("INT", {"default": 0, "min": 0, "max": 16384, "step": 8})
                    for side in ("left", "top", "right", "bottom")
                },
                "feathering": ("INT", {"default": 40, "min": 0, "max": 16384, "step": 1}),
            }
        },
        ("IMAGE", "MASK"),
    ),
    "MaskToImage": NodeSpec({"required": {"mask": ("MASK",)}}, ("IMAGE",)),  # "Convert Mask to Image"
    "ImageToMask": NodeSpec({"required": {"image": ("IMAGE",), "channel": ("COMBO",)}}, ("MASK",)),
    "UpscaleModelLoader": NodeSpec({"required": {"model_name": ("COMBO",)}}, ("UPSCALE_MODEL",)),
    "ImageUpscaleWithModel": NodeSpec(
        {"required": {"upscale_model": ("UPSCALE_MODEL",), "image": ("IMAGE",)}}, ("IMAGE",)
    ),
}


def local_specs(node_classes: dict[str, type]) -> dict[str, NodeSpec]:
    """The given node classes (ours: NODE_CLASS_MAPPINGS, handed in by the caller, as the client imports no node
    code) and the core nodes above: enough for every workflow we ship."""
    ours = {
        name: NodeSpec(cls.INPUT_TYPES(), tuple(cls.RETURN_TYPES), getattr(cls, "OUTPUT_NODE", False))
        for name, cls in node_classes.items()
    }
    return {**CORE_NODES, **ours}


def specs_from_object_info(info: dict) -> dict[str, NodeSpec]:
    """Every node a running ComfyUI knows, from its GET /object_info."""
    specs = {}
    for name, node in info.items():
        declared = node.get("input", {})
        order = node.get("input_order", {})
        inputs = {
            section: {
                key: tuple(declared[section][key])
                for key in order.get(section, declared[section])
                if key in declared[section]  # an order naming an input not declared: ComfyUI would skip it too
            }
            for section in ("required", "optional")
            if declared.get(section)
        }
        specs[name] = NodeSpec(inputs, tuple(node.get("output", ())), bool(node.get("output_node")))
    return specs


def input_type(declared: tuple) -> str:
    return "COMBO" if isinstance(declared[0], (list, tuple)) else declared[0]


@dataclass(frozen=True)
class FrontendWidget:
    """A widget the frontend adds after an input's own one: saved in widgets_values, never sent to the server."""

    name: str
    allowed: frozenset

    def __repr__(self) -> str:
        return f"<{self.name}>"


SEED_CONTROL = FrontendWidget("control_after_generate", frozenset(SEED_CONTROLS))


def upload_button(input_name: str) -> FrontendWidget:
    """The upload button after an image_upload combo (LoadImage); its saved value names that combo."""
    return FrontendWidget("upload", frozenset({input_name}))


def widget_names(spec: NodeSpec) -> list[str | FrontendWidget]:
    """Names of a node's widgets_values entries in the UI format, with the frontend's own widgets in between
    (a seed's control_after_generate, LoadImage's upload button)."""
    names = []
    for name, declared in spec.declared().items():
        if input_type(declared) in WIDGET_TYPES:
            names.append(name)
            options = declared[1] if len(declared) > 1 and isinstance(declared[1], dict) else {}
            if options.get("control_after_generate"):
                names.append(SEED_CONTROL)
            if options.get("image_upload"):
                names.append(upload_button(name))
    return names


def is_ui_format(workflow: dict) -> bool:
    return isinstance(workflow.get("nodes"), list) and isinstance(workflow.get("links"), list)


def ui_to_api(ui: dict, specs: dict[str, NodeSpec]) -> dict:
    """The API graph ComfyUI's "Export (API)" would write for a UI-format workflow."""
    nodes = {node["id"]: node for node in ui["nodes"]}
    _check_convertible(ui, nodes, specs)
    links = {link[0]: link for link in ui["links"]}  # id → [id, source, slot, target, target slot, type]
    graph = {}
    for node_id, node in nodes.items():
        if node["type"] in FRONTEND_ONLY or node.get("mode") in (MUTED, BYPASSED):
            continue
        title = node.get("title")
        graph[str(node_id)] = {
            "inputs": _node_inputs(node, specs[node["type"]], nodes, links),
            "class_type": node["type"],
            "_meta": {"title": title if isinstance(title, str) and title else node["type"]},
        }
    return graph


def _check_convertible(ui: dict, nodes: dict[int, dict], specs: dict[str, NodeSpec]) -> None:
    """Subgraphs and nodes without a spec cannot be converted: say so, and what to do instead."""
    if ui.get("definitions", {}).get("subgraphs"):
        raise WorkflowError("The workflow uses subgraphs, which this converter cannot unpack: export it in API format.")
    known = specs.keys() | FRONTEND_ONLY
    unknown = sorted({f"{n['type']} (node {i})" for i, n in nodes.items() if n["type"] not in known})
    if unknown:
        raise UnknownNodes(
            f"The workflow uses nodes this command cannot convert: {', '.join(unknown)}. Give --server a running "
            "ComfyUI that has them installed, or export the workflow in API format (Workflow → Export (API))."
        )


def _link_source(link_id: int, nodes: dict[int, dict], links: dict[int, list]) -> list | object | None:
    """A link's origin as an API link [node id, slot], a literal (from a primitive node), or None (muted), followed
    back through reroutes and bypassed nodes (a loop of them is an error)."""
    start, seen = link_id, set()
    while link_id not in seen:
        seen.add(link_id)
        if link_id not in links or links[link_id][1] not in nodes:
            raise WorkflowError(f"Link {link_id} of the workflow leads to no node: the file is damaged.")
        _, source, slot, _, _, kind = links[link_id]
        node = nodes[source]
        if node["type"] != "Reroute" and node.get("mode") != BYPASSED:
            return _origin(node, source, slot)
        passing = [s for s in node.get("inputs", []) if s.get("link") is not None and s.get("type") in (kind, "*")]
        if not passing:
            return None
        link_id = passing[0]["link"]
    raise WorkflowError(f"Link {start} of the workflow runs in a loop through reroutes: the file is damaged.")


def _origin(node: dict, node_id: int, slot: int) -> list | object | None:
    """What a node that is neither a reroute nor bypassed gives a link: a primitive's value, nothing if muted, else
    the API link to its output slot."""
    if node["type"] == "PrimitiveNode":
        values = node.get("widgets_values")
        if not isinstance(values, list) or not values:
            raise WorkflowError(f"Primitive node {node_id} of the workflow holds no value: the file is damaged.")
        return values[0]
    return None if node.get("mode") == MUTED else [str(node_id), slot]


def _widget_values(node: dict, spec: NodeSpec) -> dict:
    """A node's widget values by input name; the UI saves them as a list in display order, or as a dict."""
    values = node.get("widgets_values", [])
    names = widget_names(spec)
    if isinstance(values, dict):
        return {name: values[name] for name in names if isinstance(name, str) and name in values}
    return {n: v for n, v in zip(names, values, strict=False) if isinstance(n, str)}


def _node_inputs(node: dict, spec: NodeSpec, nodes: dict[int, dict], links: dict[int, list]) -> dict:
    """A node's API inputs: a linked socket's origin (left out where that is muted), else the widget's value."""
    sockets = {socket["name"]: socket for socket in node.get("inputs", [])}
    widget_values = _widget_values(node, spec)
    inputs = {}
    for name in spec.declared():
        socket = sockets.get(name)
        if socket is not None and socket.get("link") is not None:
            origin = _link_source(socket["link"], nodes, links)
            if origin is not None:
                inputs[name] = origin
        elif name in widget_values:
            inputs[name] = widget_values[name]
    return inputs


def check_has_output(graph: dict, specs: dict[str, NodeSpec]) -> None:
    if not any(node["class_type"] in specs and specs[node["class_type"]].output_node for node in graph.values()):
        raise WorkflowError(
            "The workflow has no output node (Save Image, Preview Image …): ComfyUI would run nothing. Add one."
        )


def _find_nodes(graph: dict, target: str) -> list[str]:
    """Node ids that `target` names: a node id, else a title, else a class type."""
    if target in graph:
        return [target]
    for key in (lambda n: n.get("_meta", {}).get("title"), lambda n: n["class_type"]):
        found = [node_id for node_id, node in graph.items() if key(node) == target]
        if found:
            return found
    return []


def set_input(graph: dict, assignment: str) -> None:
    """Apply one --set NODE.INPUT=VALUE: NODE is a node id, title or class type; VALUE is JSON or plain text."""
    target, equals, raw = assignment.partition("=")
    node_name, dot, input_name = target.rpartition(".")
    if not equals or not dot or not node_name or not input_name:
        raise WorkflowError(f"--set '{assignment}': write NODE.INPUT=VALUE, e.g. --set DalleDecoderSample.steps=30.")
    found = _find_nodes(graph, node_name)
    if not found:
        raise WorkflowError(f"--set '{assignment}': no node has the id, title or type '{node_name}'.")
    if len(found) > 1:
        raise WorkflowError(f"--set '{assignment}': '{node_name}' names nodes {', '.join(found)}; use one node id.")
    inputs = graph[found[0]]["inputs"]
    if input_name not in inputs:
        raise WorkflowError(
            f"--set '{assignment}': node {found[0]} ({graph[found[0]]['class_type']}) has no input '{input_name}'; "
            f"it has {', '.join(inputs)}."
        )
    if is_link(inputs[input_name]):
        raise WorkflowError(f"--set '{assignment}': '{input_name}' is connected to another node, not a value.")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    except (ValueError, RecursionError):  # a number of thousands of digits, arrays nested a thousand deep
        raise WorkflowError("--set: VALUE is JSON too large to read (thousands of digits, or nesting).") from None
    check_depth(value, "--set's VALUE")
    inputs[input_name] = value


def check_depth(value: object, what: str) -> None:
    """`value` nests at most MAX_DEPTH arrays and objects deep: deeper JSON could not be sent (json.dumps recurses)."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if not isinstance(item, dict | list):
            continue
        if depth > MAX_DEPTH:
            raise WorkflowError(f"{what} nests arrays or objects more than {MAX_DEPTH} deep: no workflow does.")
        pending.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))


def is_link(value: object) -> bool:
    """An API input that is a connection: [node id, output slot]."""
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def set_prompt(graph: dict, text: str) -> list[str]:
    """Put `text` into every prompt of our nodes (not negative prompts); returns the node ids changed."""
    positive = {
        node["inputs"]["positive"][0]
        for node in graph.values()
        if node["class_type"] == "DallePriorSample" and is_link(node["inputs"].get("positive"))
    }
    changed = [
        node_id
        for node_id, node in graph.items()
        if node["class_type"] in ("DalleTokenSample", "DalleCLIPRerank")  # the reranker's text is the prompt too
        or (node["class_type"] == "DalleTextEncode" and node_id in positive)
    ]
    if not changed:
        raise WorkflowError("--prompt: the workflow has no DALL·E prompt (DALL·E Text Encode or Token Sample).")
    for node_id in changed:
        graph[node_id]["inputs"]["text"] = text
    return changed


def set_seed(graph: dict, seed: int) -> list[str]:
    """Set the seed of every sampler of ours; returns the node ids changed."""
    changed = [
        node_id
        for node_id, node in graph.items()
        if node["class_type"].startswith("Dalle")
        and "seed" in node["inputs"]
        and not is_link(node["inputs"]["seed"])  # a seed wired from another node is left alone
    ]
    if not changed:
        raise WorkflowError("--seed: the workflow has no DALL·E sampler with a seed input.")
    for node_id in changed:
        graph[node_id]["inputs"]["seed"] = seed
    return changed
