"""Karlo in plain Python, the public API: `Karlo` holds the loaded models and runs the stages the nodes run, in a
row; `Request` and `VariationRequest` hold one run's settings, checked before any work. Errors name arguments."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import torch
from PIL import Image

from ...engine.device import console_progress, default_device, resolve_dtype
from ...engine.hub import ConsoleDownload, default_store, source_from_input
from ...engine.images import from_pil, to_pil
from ...models.karlo_unets import KarloDecoder, SuperResUNet, TextProjection
from ...models.prior import PriorTransformer
from .. import rerank, translation
from ..checks import (
    DTYPE_CHOICES,
    MAX_SEED,
    REPO_OR_FOLDER,
    check_device,
    check_prompt,
    check_range,
    check_text,
    described,
    path_text,
    whole_numbers,
)
from ..clip_text import PromptEmbeds, encode_empty, encode_prompt
from ..edit_pictures import Picture, open_picture
from ..rerank import Ranker
from ..stage_model import StageModel
from ..upscale import PRESETS, Upscaler
from . import loading
from .loading import REPO, TEXT2IMAGE, VARIATIONS, VARIATIONS_REPO
from .sampling import DECODER, PRIOR, SUPER_RES, UnclipSchedule, unclip_schedule
from .stages import MAX_BATCH, MAX_GUIDANCE, StageRun, decoder_stage, encode_images, prior_stage, super_res_stage

if TYPE_CHECKING:
    from transformers import (
        CLIPImageProcessor,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        CLIPVisionModelWithProjection,
    )

MAX_PICTURE_SIDE = 8192  # a variation's source picture: CLIP sees it at 224 px, so larger only costs decoding


def check_upscale(upscale: object) -> None:
    """None, an Upscaler, or the name of one of its presets."""
    if upscale is None or isinstance(upscale, Upscaler):
        return
    if not isinstance(upscale, str) or upscale not in PRESETS:
        raise ValueError(f"upscale must be None, an Upscaler or one of {', '.join(PRESETS)}; got {described(upscale)}.")


@dataclass
class Karlo:
    """DALL·E 2 as the paper drew it (prior → 64 px decoder → diffusion super-resolution to 256 px), from Karlo v1
    alpha, in plain Python: the same stage functions the nodes run.

    ```python
    karlo = Karlo.load()  # kakaobrain/karlo-v1-alpha
    images = karlo.generate("a red fox", seed=42, upscale="RealESRGAN_x4plus")  # 1024 px PIL images
    variations = Karlo.load(VARIATIONS_REPO).variations("fox.png", batch_size=4)
    ```
    Every model stays on `device` (about 7 GiB in bf16 for text-to-image).
    """

    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModelWithProjection
    text_proj: TextProjection
    decoder: KarloDecoder
    super_res_first: SuperResUNet
    super_res_last: SuperResUNet
    prior: PriorTransformer | None = None  # karlo-v1-alpha's
    image_processor: CLIPImageProcessor | None = None  # the variations repo's
    image_encoder: CLIPVisionModelWithProjection | None = None
    upscalers: dict[str, Upscaler] = field(default_factory=dict, repr=False)  # presets loaded on their first use
    default_ranker: Ranker | None = field(default=None, repr=False)  # rerank.CLIP_REPO's, loaded on the first best_of

    @classmethod
    def load(cls, repo: str = REPO, dtype: str = "auto", device: str | torch.device | None = None) -> Karlo:
        """REPO (text-to-image) or VARIATIONS_REPO (image variations), or a local folder of either layout; downloads
        go to $DALLE_NODES_HOME or the Hugging Face cache. dtype: auto (bf16 on GPUs that support it, else fp16;
        fp32 on the CPU), fp32, fp16 or bf16."""
        repo = path_text("repo", repo, REPO_OR_FOLDER)
        check_text("dtype", dtype, DTYPE_CHOICES)
        device = check_device(device) if device is not None else default_device()
        torch_dtype = resolve_dtype(dtype, device)
        files = sum(loading.FETCHES.values()) - loading.FETCHES["image_encoder"]
        source = source_from_input(repo, None, default_store(), ConsoleDownload(files))
        kind = loading.repo_kind(source)
        place = lambda module: module.to(device)  # noqa: E731
        prior = place(loading.load_prior(source, torch_dtype)) if kind == TEXT2IMAGE else None
        tokenizer, text_encoder = loading.load_text_encoder(source, torch_dtype)
        processor, image_encoder = None, None
        if kind == VARIATIONS:
            processor, image_encoder = loading.load_image_encoder(source, torch_dtype)
            image_encoder = place(image_encoder)
        text_proj = place(loading.load_text_proj(source, torch_dtype))
        decoder = place(loading.load_decoder(source, torch_dtype))
        first, last = (place(unet) for unet in loading.load_super_res(source, torch_dtype))
        return cls(tokenizer, place(text_encoder), text_proj, decoder, first, last, prior, processor, image_encoder)

    def generate(
        self, prompt: str, ranker: Ranker | None = None, translate: str | None = None, **settings
    ) -> list[Image.Image]:
        """Text → 256 px images (1024 px with upscale="RealESRGAN_x4plus"); `settings` are those of `Request`
        (seed, batch_size, prior_steps, decoder_steps, super_res_steps, prior_guidance, decoder_guidance, upscale,
        best_of), all checked before any work.

        With best_of, the batch_size images CLIP ranks highest of best_of samples, best first, each with its score in
        `image.info["clip_score"]`; `ranker` (rerank.Ranker) defaults to rerank.CLIP_REPO's.

        translate: "auto" translates a prompt written in a non-Latin script to English with
        translation.TRANSLATION_REPO (Chinese), a repo id or folder names another translation model; None: as
        written (CLIP reads English)."""
        request = translation.translated(Request(prompt, **settings), translate, lambda: self.text_encoder.device)
        return self.run(request, ranker)

    def run(self, request: Request, ranker: Ranker | None = None) -> list[Image.Image]:
        """generate() for a checked Request (the command line's way in)."""
        if ranker is not None and not isinstance(ranker, Ranker):
            raise TypeError(f"ranker must be a rerank.Ranker, or None for CLIP's; got {described(ranker)}.")
        if self.prior is None:
            raise ValueError(f"This is Karlo's image-variations repo, which has no prior: load {REPO} for text.")
        images = self.sample(request)
        if request.best_of is None:
            return self.upscaled(to_pil(images), request.upscale)
        if ranker is None:
            self.default_ranker = self.default_ranker or Ranker.load(device=self.decoder.conv_in.weight.device)
            ranker = self.default_ranker
        best = rerank.scored_pil(rerank.rerank(ranker, images, request.prompt, request.batch_size))
        return self.upscaled(best, request.upscale)

    def variations(self, image: Picture, **settings) -> list[Image.Image]:
        """Pictures like `image` (a PIL image or an image file's path): its CLIP image embedding decoded with the
        empty prompt. `settings` are those of `VariationRequest` (seed, batch_size, decoder_steps, super_res_steps,
        decoder_guidance, upscale). Needs VARIATIONS_REPO, which has the image encoder."""
        request = VariationRequest(image, **settings)
        return self.upscaled(to_pil(self.sample_variations(request)), request.upscale)

    def sample_variations(self, request: VariationRequest) -> torch.Tensor:
        """The request's variations as IMAGE [batch_size, 256, 256, 3] on the CPU (the reference's draws)."""
        if self.image_encoder is None:
            raise ValueError(f"Image variations need the CLIP image encoder of {VARIATIONS_REPO}: load that repo.")
        embeds = encode_images(self.image_processor, self.image_encoder, request.pixels, request.batch_size)
        prompt = encode_empty(self.tokenizer, lambda: self.text_encoder, torch.device("cpu"))
        generator = torch.Generator().manual_seed(request.seed)
        bar = console_progress(request.decoder_steps + request.super_res_steps, "Karlo")
        try:
            return self.decode(embeds, prompt, request, generator, lambda *args: bar.update())
        finally:
            bar.close()

    def sample(self, request: Request) -> torch.Tensor:
        """Every image the request draws, as IMAGE [N, 256, 256, 3] on the CPU: best_of of them in batches of
        batch_size (one generator running on through the batches and their stages: the first batch is the one
        without best_of), else batch_size."""
        prompt = encode_prompt(self.tokenizer, lambda: self.text_encoder, request.prompt, torch.device("cpu"))
        sizes = rerank.batches(request.best_of or request.batch_size, request.batch_size)
        generator = torch.Generator().manual_seed(request.seed)
        bar = console_progress(request.total_steps * len(sizes), "Karlo")
        step = lambda *args: bar.update()  # noqa: E731
        images = []
        try:
            for size in sizes:
                prior_run = StageRun(request.prior_schedule, request.prior_guidance)
                embeds = prior_stage(StageModel.held(self.prior), prompt, size, prior_run, generator, step)
                images.append(self.decode(embeds, prompt, request, generator, step))
        finally:
            bar.close()
        return torch.cat(images)

    def decode(
        self,
        embeds: torch.Tensor,
        prompt: PromptEmbeds,
        request: Request | VariationRequest,
        generator: torch.Generator,
        step: Callable,
    ) -> torch.Tensor:
        """Image embeddings → 64 px decoder → 256 px super-resolution, IMAGE [B, 256, 256, 3]."""
        decoder_run = StageRun(request.decoder_schedule, request.decoder_guidance)
        decoder, text_proj = StageModel.held(self.decoder), StageModel.held(self.text_proj)
        small = decoder_stage(decoder, text_proj, embeds, prompt, decoder_run, generator, step)
        first, last = StageModel.held(self.super_res_first), StageModel.held(self.super_res_last)
        return super_res_stage(first, last, small, request.super_res_schedule, generator, step)

    def upscaled(self, images: list[Image.Image], upscale: str | Upscaler | None) -> list[Image.Image]:
        """The images as they are, or through the GAN upscaler (a preset is loaded once), keeping their info."""
        if upscale is None:
            return images
        if isinstance(upscale, str):
            if upscale not in self.upscalers:
                self.upscalers[upscale] = Upscaler.load(upscale)
            upscale = self.upscalers[upscale]
        big = upscale.upscale(images)
        for small, large in zip(images, big, strict=True):
            large.info.update(small.info)
        return big


@dataclass(frozen=True)
class Request:
    """The settings of one text-to-image run, checked when made: before any work, a mistake is reported."""

    prompt: str
    seed: int = 0
    batch_size: int = 1
    prior_steps: int = 25
    decoder_steps: int = 25
    super_res_steps: int = 7
    prior_guidance: float = 4.0
    decoder_guidance: float = 8.0
    upscale: str | Upscaler | None = None  # a GAN upscaler preset (upscale.PRESETS) or an Upscaler: 1024 px
    best_of: int | None = None  # sample this many, keep the batch_size best by CLIP score

    def __post_init__(self) -> None:
        check_prompt(self.prompt)
        whole_numbers(self, ("seed", "batch_size", "prior_steps", "decoder_steps", "super_res_steps", "best_of"))
        check_settings(self.seed, self.batch_size, self.decoder_guidance, self.upscale)
        check_range("prior_guidance", self.prior_guidance, 0.0, MAX_GUIDANCE)
        rerank.check_best_of(self.best_of, self.batch_size)
        self.prior_schedule, self.decoder_schedule, self.super_res_schedule  # noqa: B018  (built now: checks steps)

    @property
    def total_steps(self) -> int:
        return self.prior_steps + self.decoder_steps + self.super_res_steps

    @cached_property
    def prior_schedule(self) -> UnclipSchedule:
        return unclip_schedule(self.prior_steps, PRIOR, "prior_steps")

    @cached_property
    def decoder_schedule(self) -> UnclipSchedule:
        return unclip_schedule(self.decoder_steps, DECODER, "decoder_steps")

    @cached_property
    def super_res_schedule(self) -> UnclipSchedule:
        return unclip_schedule(self.super_res_steps, SUPER_RES, "super_res_steps")


def check_settings(seed: int, batch_size: int, decoder_guidance: float, upscale: object) -> None:
    """The settings text-to-image and variations share (whole numbers already checked)."""
    check_range("seed", seed, 0, MAX_SEED)
    check_range("batch_size", batch_size, 1, MAX_BATCH)
    check_range("decoder_guidance", decoder_guidance, 0.0, MAX_GUIDANCE)
    check_upscale(upscale)


@dataclass(frozen=True)
class VariationRequest:
    """The settings of one image-variations run, checked when made (the picture read, too)."""

    image: Picture
    seed: int = 0
    batch_size: int = 1
    decoder_steps: int = 25
    super_res_steps: int = 7
    decoder_guidance: float = 8.0
    upscale: str | Upscaler | None = None

    def __post_init__(self) -> None:
        whole_numbers(self, ("seed", "batch_size", "decoder_steps", "super_res_steps"))
        check_settings(self.seed, self.batch_size, self.decoder_guidance, self.upscale)
        self.decoder_schedule, self.super_res_schedule, self.pixels  # noqa: B018  (built now: they check the rest)

    decoder_schedule = Request.decoder_schedule
    super_res_schedule = Request.super_res_schedule

    @cached_property
    def pixels(self) -> torch.Tensor:
        """The picture as IMAGE [1, H, W, 3]."""
        return from_pil(open_picture(self.image, "image", MAX_PICTURE_SIDE).convert("RGB"))
