"""Kandinsky 2.2 in plain Python, the public API: `Kandinsky22` holds the loaded models and runs the stages the
nodes run, in a row; `Request` holds one run's settings, checked before any model loads. Errors name arguments."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import torch
from PIL import Image

from ...engine.caches import cache_folder
from ...engine.device import PLAIN, console_progress, default_device, resolve_dtype
from ...engine.hub import ConsoleDownload, Source, default_store, source_from_input
from ...engine.images import to_pil
from ...models.movq import MoVQ
from ...models.prior import PriorTransformer
from ...models.unet import KandinskyUNet
from .. import edit_pictures, masks, rerank, sampling, translation
from ..checks import (
    DTYPE_CHOICES,
    MAX_SEED,
    REPO_OR_FOLDER,
    check_device,
    check_flag,
    check_prompt,
    check_range,
    check_text,
    described,
    path_text,
    whole_numbers,
)
from ..rerank import Ranker
from .loading import (
    DECODER_REPO,
    FETCHES,
    INPAINT_REPO,
    PRIOR_REPO,
    check_decoder_repo,
    check_prior_repo,
    load_image_encoder,
    load_movq,
    load_prior,
    load_text_encoder,
    load_unet,
    zero_image_embed,
)
from .stages import (
    MAX_BATCH,
    MAX_GUIDANCE,
    DecoderRun,
    PriorRun,
    StageModel,
    decoder_stage,
    encode_prompt,
    movq_encode,
    prior_stage,
)
from .starts import (
    DEFAULT_SIZE,
    KIND_NAMES,
    MAX_SIZE,
    SIZE_STEP,
    DecoderStart,
    latent_size,
    log_repaints_nothing,
)
from .vq_decode import movq_decode

if TYPE_CHECKING:
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

PROMPTS = ("prompt", "negative")  # the Request fields generate's translate translates


def check_decoder_for(kind: str, editing: bool) -> None:
    """Kandinsky22 (the Python API and the command line) draws text-to-image with the text-to-image decoder and
    edits pictures with the inpainting one; `kind` is the loaded UNet's (UNetConfig.kind)."""
    if editing and kind != "inpaint":
        raise ValueError(
            f"Editing a picture needs the inpainting decoder: load {INPAINT_REPO} (this one is {KIND_NAMES[kind]})."
        )
    if not editing and kind == "inpaint":
        raise ValueError(
            f"This is the inpainting decoder: give a picture to edit, or load {DECODER_REPO} for text-to-image."
        )
    if kind == "controlnet":
        raise ValueError(
            "This is the depth ControlNet decoder, which needs a depth hint: use it through the nodes (DALL·E Decoder "
            f"Sample's hint input), or load {DECODER_REPO} for text-to-image."
        )


@dataclass
class Kandinsky22:
    """DALL·E 2 on Kandinsky 2.2 in plain Python, no ComfyUI needed: the same stage functions the nodes run.

    ```python
    k = Kandinsky22.load(prior="kandinsky-community/kandinsky-2-2-prior",
                         decoder="kandinsky-community/kandinsky-2-2-decoder", dtype="auto")
    images = k.generate("a red fox", seed=42)  # list of PIL images
    ```
    Edits (inpainting, outpainting) need the inpainting decoder: `Kandinsky22.load(decoder=INPAINT_REPO)`, then
    `k.edit("a red fox", "photo.png", mask="mask.png")`. Every model stays on `device` (about 5.7 GiB in bf16); the
    image encoder is loaded only on the first run of a checkpoint, for the zero-image embedding, which is then cached
    on disk.
    """

    prior: PriorTransformer
    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModelWithProjection
    unet: KandinskyUNet
    movq: MoVQ
    zero_embed: torch.Tensor
    prior_source: Source | None = None  # for the image tower, which best_of ranks with (loaded on its first use)
    default_ranker: Ranker | None = field(default=None, repr=False)

    @classmethod
    def load(
        cls,
        prior: str = PRIOR_REPO,
        decoder: str = DECODER_REPO,
        dtype: str = "auto",
        device: str | torch.device | None = None,
    ) -> Kandinsky22:
        """Hub repo ids or local folders in the repos' layout; downloads go to $DALLE_NODES_HOME or the Hugging
        Face cache. dtype: auto (bf16 on GPUs that support it, else fp16; fp32 on the CPU), fp32, fp16 or bf16."""
        prior, decoder = path_text("prior", prior, REPO_OR_FOLDER), path_text("decoder", decoder, REPO_OR_FOLDER)
        check_text("dtype", dtype, DTYPE_CHOICES)
        device = check_device(device) if device is not None else default_device()
        torch_dtype = resolve_dtype(dtype, device)
        store = default_store()
        prior_files = FETCHES["prior_kind"] + FETCHES["zero_image_embed"] + FETCHES["text_encoder"] + FETCHES["prior"]
        prior_source = source_from_input(prior, None, store, ConsoleDownload(prior_files))
        decoder_files = FETCHES["decoder_kind"] + FETCHES["unet"] + FETCHES["movq"]
        decoder_source = source_from_input(decoder, None, store, ConsoleDownload(decoder_files))
        check_decoder_repo(decoder_source)  # before the prior loads: a wrong decoder repo costs no loading
        check_prior_repo(prior_source)
        placed = lambda module: module.to(device)  # noqa: E731
        zero = zero_image_embed(prior_source, torch_dtype, cache_folder(store), placed)
        tokenizer, text_encoder = load_text_encoder(prior_source, torch_dtype)
        return cls(
            placed(load_prior(prior_source, torch_dtype)),
            tokenizer,
            placed(text_encoder),
            placed(load_unet(decoder_source, torch_dtype)),
            placed(load_movq(decoder_source, torch_dtype)),
            zero,
            prior_source,
        )

    def generate(
        self, prompt: str, ranker: Ranker | None = None, translate: str | None = None, **settings
    ) -> list[Image.Image]:
        """Text → images; `settings` are those of `Request` (negative, seed, steps, prior_steps, guidance,
        prior_guidance, width, height, batch_size, sampler, karras, best_of), all checked before any work.

        With best_of, the batch_size images CLIP ranks highest of best_of samples, best first, each with its score in
        `image.info["clip_score"]`; `ranker` (rerank.Ranker) defaults to the prior repo's own CLIP towers (no other
        download; the image tower, 3.4 GiB in bf16, stays loaded beside the others).

        translate: "auto" translates a prompt (and negative prompt) written in a non-Latin script to English with
        translation.TRANSLATION_REPO (Chinese), a repo id or folder names another translation model; None: as
        written (CLIP reads English)."""
        request = Request(prompt, **settings)
        request = translation.translated(request, translate, lambda: self.text_encoder.device, PROMPTS)
        return self.run(request, ranker)

    def edit(
        self,
        prompt: str,
        image: edit_pictures.Picture,
        mask: edit_pictures.Picture | None = None,
        outpaint: edit_pictures.Outpaint | None = None,
        ranker: Ranker | None = None,
        **settings,
    ) -> list[Image.Image]:
        """Repaint part of a picture (a PIL image or an image file) from the prompt: where `mask` is white (or
        transparent), or, without a mask, where the picture is transparent; `outpaint` adds borders to paint, in
        pixels: 256 (every side), {"left": 256, "right": 256}, or (left, top, right, bottom). The result has the
        picture's size with the borders (sides not multiples of 64 are resized to the nearest ones first). Needs
        the inpainting decoder (INPAINT_REPO). `settings` and `ranker` are generate's, but width and height."""
        if image is None:  # Request would take it for text-to-image
            raise TypeError("edit needs the picture to edit: image is a PIL image or an image file's path (got None).")
        return self.run(Request(prompt, image=image, mask=mask, outpaint=outpaint, **settings), ranker)

    def run(self, request: Request, ranker: Ranker | None = None) -> list[Image.Image]:
        """The node chain Text Encode → Prior Sample → Decoder Sample → VQ Decode (→ CLIP Rerank with best_of), as it
        runs for the same seed; for an edit, with VQ Encode of the picture and the mask into Decoder Sample."""
        if ranker is not None and not isinstance(ranker, Ranker):
            raise TypeError(f"ranker must be a rerank.Ranker, or None for the prior's own; got {described(ranker)}.")
        images = self.sample(request)
        if request.best_of is None:
            return to_pil(images)
        ranker = ranker or self.prior_ranker()
        return rerank.scored_pil(rerank.rerank(ranker, images, request.prompt, request.batch_size))

    def prior_ranker(self) -> Ranker:
        """The prior repo's CLIP text and image towers as a ranker; the image tower loads on the first call."""
        if self.default_ranker is None:
            if self.prior_source is None:
                raise ValueError(
                    "best_of needs a ranker: pass one (rerank.Ranker), or make this with Kandinsky22.load."
                )
            processor, image_encoder = load_image_encoder(self.prior_source, self.text_encoder.dtype)
            image_encoder.to(self.text_encoder.device)
            self.default_ranker = Ranker(self.tokenizer, processor, lambda: self.text_encoder, lambda: image_encoder)
        return self.default_ranker

    def sample(self, request: Request) -> torch.Tensor:
        """Every image the request draws, as IMAGE [N, H, W, 3] on the CPU: best_of of them in batches of batch_size
        (the prior's and the decoder's generators run on through the batches: the first batch is the one without
        best_of), else batch_size. A mask that repaints nothing gives the picture itself, with a log line."""
        check_decoder_for(self.unet.config.kind, request.edit is not None)
        count = request.best_of or request.batch_size
        if request.repaints_nothing:  # keep_mask would repaint nothing too: no VQ encode, no sampling
            log_repaints_nothing()
            return request.edit[0].expand(count, -1, -1, -1).clone()
        start = self.decoder_start(request)
        store = torch.device("cpu")
        text_encoder = lambda: self.text_encoder  # noqa: E731
        positive = encode_prompt(self.tokenizer, text_encoder, request.prompt, store)
        negative = encode_prompt(self.tokenizer, text_encoder, request.negative, store) if request.negative else None
        sizes = rerank.batches(count, request.batch_size)
        bar = console_progress((request.prior_steps + request.steps) * len(sizes), "Kandinsky 2.2")
        step = lambda i, total, x, x0: bar.update()  # noqa: E731
        prior, unet = StageModel.held(self.prior), StageModel.held(self.unet)
        prior_generator = torch.Generator().manual_seed(request.seed)
        decoder_generator = torch.Generator().manual_seed(request.seed)
        decoder_run = DecoderRun(request.decoder_schedule, request.guidance)
        images = []
        try:
            for size in sizes:
                prior_run = PriorRun(size, request.prior_guidance, request.prior_schedule)
                embeds = prior_stage(
                    prior, lambda: self.zero_embed, positive, negative, prior_run, prior_generator, step
                )
                latents = decoder_stage(unet, embeds, start, decoder_run, decoder_generator, step)
                images.append(movq_decode(self.movq, latents, PLAIN, store))
        finally:
            bar.close()
        return torch.cat(images)

    def decoder_start(self, request: Request) -> DecoderStart:
        """Text-to-image's latent size, or an edit's picture, VQ-encoded once for every batch, with its mask."""
        if request.edit is None:
            return DecoderStart(request.latent_size)
        image, mask = request.edit
        return DecoderStart(latent=movq_encode(lambda: self.movq, image), repaint=mask)


@dataclass(frozen=True)
class Request:
    """The settings of one run, checked when made: before any model loads, a mistake is reported.

    Text-to-image draws width x height (default 768 x 768). An edit repaints part of `image` (a PIL image or an
    image file): where `mask` is white or transparent, or, without a mask, where the picture is transparent, and
    `outpaint`'s borders (edit_pictures.prepare); its size is the picture's, so width and height are left out."""

    prompt: str
    negative: str | None = None
    seed: int = 0
    steps: int = 50
    prior_steps: int = 25
    guidance: float = 4.0
    prior_guidance: float = 4.0
    width: int | None = None
    height: int | None = None
    batch_size: int = 1
    sampler: str = "ddpm"
    karras: bool = False
    best_of: int | None = None  # sample this many, keep the batch_size best by CLIP score
    image: edit_pictures.Picture | None = None
    mask: edit_pictures.Picture | None = None
    outpaint: edit_pictures.Outpaint | None = None

    def __post_init__(self) -> None:
        check_prompt(self.prompt)
        if self.negative is not None:
            check_prompt(self.negative, "what the image should not show", "negative prompt", " Or pass None for none.")
        whole_numbers(self, ("seed", "steps", "prior_steps", "batch_size", "best_of", "width", "height"))
        check_flag("karras", self.karras)
        check_range("seed", self.seed, 0, MAX_SEED)
        for name in ("guidance", "prior_guidance"):
            check_range(name, getattr(self, name), 0.0, MAX_GUIDANCE)
        check_range("batch_size", self.batch_size, 1, MAX_BATCH)
        rerank.check_best_of(self.best_of, self.batch_size)
        if self.image is None and (self.mask is not None or self.outpaint is not None):
            raise ValueError("A mask or outpaint edits a picture: give the picture to edit too (image, --image).")
        if self.image is not None and (self.width is not None or self.height is not None):
            raise ValueError(
                "An edit keeps the picture's size (with its outpaint borders): leave width and height out, or resize "
                "the picture first."
            )
        self.prior_schedule, self.decoder_schedule, self.latent_size  # noqa: B018  (built now: they check the rest)

    @cached_property
    def prior_schedule(self) -> sampling.PriorSchedule:
        return sampling.prior_schedule(self.prior_steps)

    @cached_property
    def decoder_schedule(self) -> sampling.DecoderSchedule:
        return sampling.decoder_schedule(self.sampler, self.steps, self.karras)

    @cached_property
    def edit(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """An edit's picture as IMAGE [1, H, W, 3] and MASK [1, H, W] (1 = repaint); None for text-to-image."""
        if self.image is None:
            return None
        return edit_pictures.prepare(self.image, self.mask, self.outpaint, SIZE_STEP, MAX_SIZE)

    @property
    def repaints_nothing(self) -> bool:
        """An edit whose MASK (the mask's, or the picture's transparency, with any outpaint borders) marks no pixel
        to repaint: none at least half white, or half transparent. It gives the picture back unchanged."""
        return self.edit is not None and masks.marks_nothing(self.edit[1])

    @cached_property
    def latent_size(self) -> tuple[int, int]:
        if self.edit is not None:
            height, width = self.edit[0].shape[1:3]
            return latent_size(width, height)
        width, height = (DEFAULT_SIZE if side is None else side for side in (self.width, self.height))
        return latent_size(width, height)
