"""DALL·E 1's reranker: score a batch of images against their prompt with CLIP and keep the best.

DALL·E (2021) drew up to 512 samples per prompt and showed the ones CLIP ranked highest; the DALL·E mini demo does
the same with a best-of-N. The score is CLIP's: the cosine similarity of the prompt's and the image's projected
embeddings times CLIP's learned temperature exp(logit_scale) (100 for OpenAI's models), exactly transformers'
`CLIPModel(...).logits_per_image`. The Kandinsky 2.2 prior repo holds its CLIP towers without that scale (only
CLIPModel carries it), so with them as the ranker the score is the plain cosine similarity, in [-1, 1]; a scale
would not change the order anyway.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from PIL import Image

from ..engine.checkpoints import CheckpointError
from ..engine.device import PLAIN, Host, default_device, resolve_dtype
from ..engine.hub import (
    TRANSFORMERS_WEIGHTS,
    ConsoleDownload,
    MissingFile,
    Source,
    default_store,
    fetch_config,
    fetch_file,
    fetch_weights,
    source_from_input,
)
from ..engine.images import from_pil, to_pil
from ..models import clip
from .checks import check_image, check_prompt, check_range
from .clip_loading import clip_model, clip_processor, clip_tokenizer, fetch_tokenizer

if TYPE_CHECKING:  # transformers takes seconds to import: ComfyUI's start-up should not pay for it
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

CLIP_REPO = "openai/clip-vit-base-patch32"
FETCHES = 7  # config, weights, 4 tokenizer files, preprocessor config: "file k of n" in download bars
IMAGE_CHUNK = 16  # images per pass through the image tower: bounds its activations (halved on out of memory)
MAX_BEST_OF = 512  # DALL·E's own number of samples per prompt
SCORE_KEY = "clip_score"  # where Ranker.best puts each PIL image's score (image.info)


def load_clip(source: Source, dtype: torch.dtype) -> tuple[CLIPTokenizer, CLIPImageProcessor, CLIPModel]:
    """A CLIP repo's tokenizer, image preprocessing and CLIPModel (text and image towers with their logit scale), all
    files at the repo's root as in openai/clip-vit-base-patch32; only those files are fetched, safetensors first."""
    try:
        config = fetch_config(source, "")
    except CheckpointError as error:
        if not isinstance(error.__cause__, MissingFile):  # offline, unknown repo …: that message says it best
            raise
        raise CheckpointError(
            f"{source.describe()} has no config.json at its root: it is not a CLIP model repo like {CLIP_REPO}. "
            "(For the Kandinsky 2.2 prior's CLIP, connect its text and image encoders to the reranker instead.)"
        ) from error
    if config.get("model_type") != "clip":
        kind = (config.get("architectures") or [config.get("model_type") or "model of unknown kind"])[0]
        raise CheckpointError(
            f"{source.describe()} holds a {kind}, not a CLIP model (config.json model_type 'clip'), like {CLIP_REPO}."
        )
    folder = fetch_weights(source, "", TRANSFORMERS_WEIGHTS).parent
    tokenizer = clip_tokenizer(fetch_tokenizer(source, ""))
    try:
        processor = clip_processor(fetch_file(source, "", "preprocessor_config.json").parent)
    except MissingFile as error:
        what = "preprocessor_config.json (CLIP's image preprocessing)"
        raise CheckpointError(f"{source.describe()} has no {what}.") from error
    return tokenizer, processor, clip_model("CLIPModel", folder, dtype, f"CLIP model of {source.describe()}")


@dataclass
class Ranked:
    """The images kept, best first, with their scores and their places (0-based) in the batch scored."""

    images: torch.Tensor  # IMAGE [keep, H, W, C]
    scores: list[float]
    indices: list[int]

    def table(self) -> str:
        """The ranking as text, for display: rank, image (its place in the batch, from 0) and score."""
        pairs = zip(self.indices, self.scores, strict=True)
        rows = [f"{rank:>4}  {index:>5}  {score:9.4f}" for rank, (index, score) in enumerate(pairs, 1)]
        return "\n".join(["rank  image      score", *rows])


@dataclass
class Ranker:
    """What scores images against a prompt: CLIP's tokenizer and image preprocessing, and two calls that ready the
    text and the image tower (for a CLIPModel, the same model) on the compute device and return it.

    ```python
    ranker = Ranker.load()  # openai/clip-vit-base-patch32
    best = ranker.best(images, "a lighthouse", keep=4)  # PIL images, best first; image.info["clip_score"]
    ```
    """

    tokenizer: CLIPTokenizer
    processor: CLIPImageProcessor
    text_tower: Callable[[], torch.nn.Module]
    image_tower: Callable[[], torch.nn.Module]

    @classmethod
    def load(cls, repo: str = CLIP_REPO, dtype: str = "auto", device: str | torch.device | None = None) -> Ranker:
        """A CLIP repo id or local folder (the same store, download bars and errors as the other loaders); dtype: auto
        (bf16 on GPUs that support it, else fp16; fp32 on the CPU), fp32, fp16 or bf16."""
        device = torch.device(device) if device is not None else default_device()
        source = source_from_input(repo, None, default_store(), ConsoleDownload(FETCHES))
        tokenizer, processor, model = load_clip(source, resolve_dtype(dtype, device))
        model.to(device)
        return cls(tokenizer, processor, lambda: model, lambda: model)

    def best(self, images: list[Image.Image], prompt: str, keep: int) -> list[Image.Image]:
        """The `keep` images CLIP ranks highest for `prompt`, best first, each with its score in info["clip_score"]."""
        return scored_pil(rerank(self, from_pil(images), prompt, keep))


def check_keep(keep: int, count: int) -> None:
    """`keep` images can be kept from a batch of `count`."""
    if isinstance(keep, int) and keep > count >= 1:
        raise ValueError(f"keep ({keep}) is more than the {count} images in the batch: keep at most {count}.")
    check_range("keep", keep, 1, count)


def check_best_of(best_of: int | None, batch_size: int) -> None:
    """Best of `best_of` samples, `batch_size` of them kept; None samples just `batch_size`."""
    if best_of is None:
        return
    if isinstance(best_of, int) and best_of < batch_size:
        raise ValueError(
            f"best_of ({best_of}) must be at least batch_size ({batch_size}): best_of images are drawn and the "
            "batch_size best kept."
        )
    check_range("best_of", best_of, batch_size, MAX_BEST_OF)


def batches(total: int, batch_size: int) -> list[int]:
    """Sizes of the sampling batches that draw `total` images, `batch_size` at a time."""
    return [min(batch_size, total - start) for start in range(0, total, batch_size)]


def score(ranker: Ranker, images: torch.Tensor, text: str, host: Host = PLAIN) -> torch.Tensor:
    """[B] float32 CLIP scores (on the CPU) of IMAGE [B, H, W, 3|4] for `text`: cosine similarity × exp(logit_scale)
    where the model has one (CLIPModel), else the cosine similarity. The inputs are checked before a tower loads."""
    check_prompt(text, "what the images should show")
    images = check_image(images, "images")
    with torch.inference_mode():
        tower = ranker.text_tower()
        length = tower.text_model.embeddings.position_embedding.num_embeddings  # 77 for CLIP: longer prompts are cut
        ids = ranker.tokenizer([text], truncation=True, max_length=length, return_tensors="pt").input_ids
        text_embed = clip.text_features(tower, ids).float().cpu()
        scale = tower.logit_scale.exp().float().cpu() if hasattr(tower, "logit_scale") else torch.tensor(1.0)
        image_embeds = _image_features(ranker, images, host, text_embed.shape[-1])
    text_embed = text_embed / text_embed.norm(dim=-1, keepdim=True)
    image_embeds = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
    # row by row rather than one matmul, whose blocking may round equal rows differently
    return (image_embeds * text_embed).sum(dim=-1) * scale


def check_widths(text_width: int, image_width: int) -> None:
    """Text and image embeddings of one CLIP: towers of two families (Kandinsky 2.2's are 1280 wide, Karlo's 768) have
    no common space to compare in."""
    if text_width != image_width:
        raise ValueError(
            f"The text tower's embeddings are {text_width} wide but the image tower's {image_width}: connect the "
            "text_encoder and image_encoder of one CLIP (both Kandinsky 2.2's, or both Karlo's), or a CLIP model."
        )


def _image_features(ranker: Ranker, images: torch.Tensor, host: Host, text_width: int) -> torch.Tensor:
    """[B, D] float32 image embeddings on the CPU (D = text_width, checked first), IMAGE_CHUNK images a pass; after an
    out-of-memory error the rest goes in halved chunks. Identical images are embedded once: batched kernels may round
    two copies differently, and equal images must score equally for ties to keep their order."""
    slots: dict[bytes, int] = {}
    firsts, owners = [], []  # the first of each set of identical images; each image's set
    for index, image in enumerate(images):
        key = hashlib.sha1(image.contiguous().cpu().numpy().tobytes()).digest()
        if key not in slots:
            slots[key] = len(firsts)
            firsts.append(index)
        owners.append(slots[key])
    tower = ranker.image_tower()
    check_widths(text_width, tower.visual_projection.out_features)
    chunk, parts, done = IMAGE_CHUNK, [], 0
    while done < len(firsts):
        host.check_interrupt()
        pixels = clip.pixel_values(ranker.processor, images[firsts[done : done + chunk]])
        try:
            parts.append(clip.image_features(tower, pixels).float().cpu())
        except RuntimeError as error:  # torch.OutOfMemoryError is one
            if pixels.shape[0] == 1 or not host.is_out_of_memory(error):
                raise
            host.free_cache()
            chunk = pixels.shape[0] // 2
            continue
        done += pixels.shape[0]
    return torch.cat(parts)[owners]


def best_first(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the `keep` highest scores, highest first; equal scores keep their order in the batch."""
    check_keep(keep, scores.shape[0])
    return torch.sort(scores, descending=True, stable=True).indices[:keep]


def rerank(ranker: Ranker, images: torch.Tensor, text: str, keep: int, host: Host = PLAIN) -> Ranked:
    """The `keep` images of the batch CLIP ranks highest for `text`, best first (DalleCLIPRerank, best_of)."""
    images = check_image(images, "images")
    check_keep(keep, images.shape[0])
    scores = score(ranker, images, text, host)
    indices = best_first(scores, keep)
    return Ranked(images[indices], scores[indices].tolist(), indices.tolist())


def scored_pil(ranked: Ranked) -> list[Image.Image]:
    """The kept images as PIL images, each with its score in info["clip_score"] (what best_of returns)."""
    images = to_pil(ranked.images)
    for image, value in zip(images, ranked.scores, strict=True):
        image.info[SCORE_KEY] = value
    return images
