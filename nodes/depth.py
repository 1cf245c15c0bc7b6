"""Depth maps for the depth ControlNet's hint: load a transformers depth model from the Hub, and map pictures."""

from __future__ import annotations

import torch

from ..engine.hub import Source
from ..pipelines import depth
from . import runtime
from .loaders import HubLoader
from .sockets import KANDINSKY_CATEGORY, DepthModel


class DalleLoadDepthModel(HubLoader):
    DESCRIPTION = (
        "Loads a depth-estimation model through transformers, to make the hint of the Kandinsky 2.2 depth ControlNet "
        f"(DALL·E Depth Map). Default {depth.DEPTH_REPO} (MiDaS, ControlNet's depth annotator; diffusers' Kandinsky "
        "docstring uses Intel/dpt-large); any transformers depth-estimation repo (DPT, Depth Anything, GLPN, "
        "ZoeDepth …) or a local folder in the same layout."
    )
    RETURN_TYPES = ("DALLE_DEPTH_MODEL",)
    RETURN_NAMES = ("depth_model",)
    DEFAULT_REPO = depth.DEPTH_REPO
    CONTENTS = "depth-estimation model (config.json, model.safetensors, preprocessor_config.json at its root)"
    FILES = depth.FETCHES

    def build(self, source: Source, dtype: torch.dtype) -> tuple[DepthModel]:
        processor, model = depth.load_depth_model(source, dtype)
        return (DepthModel(processor, runtime.ManagedModule(model)),)


class DalleDepthMap:
    DESCRIPTION = (
        "Estimates a depth map of each picture (near = white), at the picture's size: the hint of the Kandinsky 2.2 "
        "depth ControlNet, made as diffusers' docs make it (min-max normalised, kept in float precision)."
    )
    CATEGORY = KANDINSKY_CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("hint",)
    OUTPUT_TOOLTIPS = ("The depth maps, grey (the same value on 3 channels), 0 = farthest, 1 = nearest.",)
    FUNCTION = "depth_map"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "depth_model": ("DALLE_DEPTH_MODEL", {"tooltip": "From Load Depth Model."}),
                "image": ("IMAGE", {"tooltip": "The pictures to map (alpha is ignored)."}),
            }
        }

    def depth_map(self, depth_model: DepthModel, image: torch.Tensor) -> tuple[torch.Tensor]:
        hint = depth.depth_map(depth_model.processor, depth_model.model.load, image, runtime.HOST)
        return (hint.to(runtime.output_device()),)
