"""Depth maps for the depth ControlNet's hint, from any transformers depth-estimation model on the Hub.

diffusers' Kandinsky 2.2 ControlNet docs make the hint with transformers' `pipeline("depth-estimation")`: the model's
prediction resized to the picture's size (the processor's own post-processing), normalised to 0..1, written as an
8-bit grey picture, repeated to 3 channels and divided by 255. `depth_map` does the same on an IMAGE batch, with two
differences, both within one 8-bit level:

- It keeps the float values instead of the 8-bit ones: the hint feeds a convolution, not a file, and 256 levels
  band smooth depth gradients. The reference floors to 8 bits, so ours is above it by less than 1/255.
- Normalisation is min-max ((d - min) / (max - min)), as transformers' pipeline has done since 4.46; before that
  it divided by the max only (the docs were written then), which leaves the far background grey rather than black
  and depends on the model's output scale (metric models give metres). A flat prediction gives a black map.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy
import torch
import torch.nn.functional as F

from ..engine.checkpoints import CheckpointError, read_json
from ..engine.device import PLAIN, Host
from ..engine.hub import TRANSFORMERS_WEIGHTS, MissingFile, Source, fetch_config, fetch_file, fetch_weights
from ..engine.images import to_pil
from .checks import check_image
from .transformers_loading import from_transformers, transformers_model, transformers_settings

if TYPE_CHECKING:  # transformers takes seconds to import: ComfyUI's start-up should not pay for it
    from transformers import BaseImageProcessor

# MiDaS DPT-Hybrid, the depth annotator of ControlNet's depth models. diffusers' Kandinsky 2.2 ControlNet docstring
# calls pipeline("depth-estimation"), whose default is Intel/dpt-large: load that repo for its hint exactly.
DEPTH_REPO = "Intel/dpt-hybrid-midas"
FETCHES = 3  # config, weights, preprocessor config: "file k of n" in download bars
DEPTH_CHUNK = 4  # images per pass through the model: bounds its activations on long batches


def load_depth_model(source: Source, dtype: torch.dtype) -> tuple[BaseImageProcessor, torch.nn.Module]:
    """A depth-estimation repo's image processor and model (transformers' AutoModelForDepthEstimation: DPT, Depth
    Anything, GLPN, ZoeDepth …), files at the repo's root; only those files are fetched, safetensors first."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES

    config = fetch_config(source, "")
    class_name = MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES.get(config.get("model_type"))
    if class_name is None:
        kind = (config.get("architectures") or [config.get("model_type") or "model of unknown kind"])[0]
        raise CheckpointError(
            f"{source.describe()} holds a {kind}, not a depth-estimation model transformers knows (like {DEPTH_REPO})."
        )
    folder = fetch_weights(source, "", TRANSFORMERS_WEIGHTS).parent
    try:
        processor = depth_processor(fetch_file(source, "", "preprocessor_config.json").parent)
    except MissingFile as error:
        what = "preprocessor_config.json (its image preprocessing)"
        raise CheckpointError(f"{source.describe()} has no {what}.") from error
    return processor, transformers_model(class_name, folder, dtype, f"depth model of {source.describe()}")


def depth_processor(folder: Path) -> BaseImageProcessor:
    """The model's own image preprocessing and post-processing, from preprocessor_config.json."""
    from transformers import AutoImageProcessor

    path = folder / "preprocessor_config.json"
    read_json(path)  # a damaged file is named, not met deep inside transformers
    # Which processor class the file asks for, transformers decides (by name or by model type): its settings are
    # checked against that class's once it is built, before it runs.
    processor = from_transformers("depth image processor", folder, lambda: AutoImageProcessor.from_pretrained(folder))
    transformers_settings(type(processor), path, "depth image processor")
    # Unworkable settings of the right types (a size of 0 …) fail now rather than at the first picture.
    from_transformers(
        "depth image processor",
        folder,
        lambda: processor(images=[numpy.zeros((8, 8, 3), numpy.uint8)], return_tensors="pt"),
    )
    return processor


def depth_map(
    processor: BaseImageProcessor, model: Callable[[], torch.nn.Module], images: torch.Tensor, host: Host = PLAIN
) -> torch.Tensor:
    """IMAGE [B, H, W, 3|4] → depth IMAGE [B, H, W, 3] (float32 on the CPU, near = 1, also for models that predict
    distance, e.g. GLPN and ZoeDepth), the hint of the depth ControlNet. `model()` readies the model on the compute
    device (called once the images are checked)."""
    images = check_image(images)
    estimator = model()
    distance = predicts_distance(estimator.config)
    maps = []
    with torch.inference_mode():
        for start in range(0, images.shape[0], DEPTH_CHUNK):
            host.check_interrupt()
            # 8-bit pictures, exactly what the reference gets from a PIL image: a PNG loaded in ComfyUI maps identically
            chunk = to_pil(images[start : start + DEPTH_CHUNK, ..., :3])
            pixels = processor(images=chunk, return_tensors="pt").pixel_values
            outputs = estimator(pixel_values=pixels.to(estimator.device, estimator.dtype))
            outputs["predicted_depth"] = outputs.predicted_depth.float()
            resized = _resized(processor, outputs, images.shape[1:3], len(chunk))
            maps += [_normalised(-depth if distance else depth) for depth in resized]
    return torch.stack(maps)[..., None].expand(-1, -1, -1, 3).contiguous()


def _resized(processor: BaseImageProcessor, outputs, size: torch.Size, count: int) -> list[torch.Tensor]:
    """Each prediction at the picture's size [H, W], by the processor's own post-processing (ZoeDepth's removes
    its padding, for one); transformers before 4.46 had none, and its pipeline resized bicubically, as here."""
    if hasattr(processor, "post_process_depth_estimation"):
        results = processor.post_process_depth_estimation(outputs, [tuple(size)] * count)
        return [result["predicted_depth"] for result in results]
    resized = F.interpolate(outputs.predicted_depth[:, None], size=tuple(size), mode="bicubic", align_corners=False)
    return list(resized[:, 0])


# Models that predict distance (metres: far is large), where MiDaS-style ones (DPT, Depth Anything's relative
# models) predict inverse depth (near is large), which is what the ControlNet was trained on: near = white.
_DISTANCE_MODELS = frozenset({"glpn", "zoedepth", "depth_pro"})


def predicts_distance(config: object) -> bool:
    """Whether the model's prediction grows with distance (metric depth), so its map must be turned round."""
    metric = getattr(config, "depth_estimation_type", None) == "metric"
    return metric or getattr(config, "model_type", None) in _DISTANCE_MODELS


def _normalised(depth: torch.Tensor) -> torch.Tensor:
    """[H, W] → 0..1 by min-max, on the CPU; a flat prediction (nothing to tell apart) gives zeros."""
    depth = depth.float().cpu()
    low, high = depth.min(), depth.max()
    return (depth - low) / (high - low) if high > low else torch.zeros_like(depth)
