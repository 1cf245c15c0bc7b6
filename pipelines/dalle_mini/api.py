"""DALL·E Mini / Mega as plain Python, no ComfyUI needed: PIL images from a prompt, through the same loading and
stages the nodes run."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from PIL import Image

from ...engine.device import console_progress, default_device
from ...engine.hub import ConsoleDownload, default_store, source_from_input
from ...engine.images import to_pil
from ...models.bart_tokenizer import BartTokenizer
from ...models.dalle_bart import IMAGE_TOKENS, DalleBart
from ...models.vqgan import VQGAN
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
from ..rerank import Ranker
from .loading import FETCHES, REPO, check_variant, dtypes, load_variant
from .stages import TokenSettings, check_sampling, prompt_tokens, sample_tokens, vqgan_decode


@dataclass
class DalleMini:
    """DALL·E 1 on DALL·E Mega or Mini in plain Python, no ComfyUI needed: the same functions the nodes run.

    ```python
    m = DalleMini.load(repo="kuprel/min-dalle", variant="mega", dtype="auto")
    images = m.generate("a lighthouse", seed=7, batch_size=4)  # list of 256 px PIL images
    ```
    """

    tokenizer: BartTokenizer
    bart: DalleBart
    vqgan: VQGAN
    variant: str
    default_ranker: Ranker | None = field(default=None, repr=False)  # CLIP_REPO's, loaded on the first best_of

    @classmethod
    def load(
        cls, repo: str = REPO, variant: str = "mega", dtype: str = "auto", device: str | torch.device | None = None
    ) -> DalleMini:
        """A Hub repo id or a local folder with min-dalle's files; dtype: auto (on GPUs fp16 BART and fp32 VQGAN,
        fp32 on the CPU), fp32, fp16 or bf16."""
        repo = path_text("repo", repo, REPO_OR_FOLDER)
        check_text("variant", variant, "mega or mini")
        check_variant(variant)
        check_text("dtype", dtype, DTYPE_CHOICES)
        device = check_device(device) if device is not None else default_device()
        part_dtypes = dtypes(dtype, device, lambda d: d.type in ("cuda", "mps"))
        source = source_from_input(repo, None, default_store(), ConsoleDownload(FETCHES))
        tokenizer, bart, vqgan = load_variant(source, variant, part_dtypes)
        return cls(tokenizer, bart.to(device), vqgan.to(device), variant)

    def generate(
        self, prompt: str, ranker: Ranker | None = None, translate: str | None = None, **settings
    ) -> list[Image.Image]:
        """Text → 256 px images; `settings` are those of `Request` (seed, batch_size, top_k, temperature,
        supercondition, best_of), checked before any work. On the CPU the tokens are min-dalle's for the seed.

        With best_of, the batch_size images CLIP ranks highest of best_of samples, best first, each with its score in
        `image.info["clip_score"]`; `ranker` (rerank.Ranker) defaults to openai/clip-vit-base-patch32.

        translate: "auto" translates a prompt written in a non-Latin script to English with
        translation.TRANSLATION_REPO (Chinese), a repo id or folder names another translation model; None: as
        written (DALL·E Mini reads English, in ASCII)."""
        device = lambda: next(self.bart.parameters()).device  # noqa: E731
        return self.run(translation.translated(Request(prompt, **settings), translate, device), ranker)

    def run(self, request: Request, ranker: Ranker | None = None) -> list[Image.Image]:
        """The node chain Token Sample → VQGAN Decode (→ CLIP Rerank with best_of), as it runs for the same seed."""
        if ranker is not None and not isinstance(ranker, Ranker):
            raise TypeError(f"ranker must be a rerank.Ranker, or None for CLIP's; got {described(ranker)}.")
        images = self.sample(request)
        if request.best_of is None:
            return to_pil(images)
        if ranker is None:
            if self.default_ranker is None:
                self.default_ranker = Ranker.load(device=next(self.bart.parameters()).device)
            ranker = self.default_ranker
        return rerank.scored_pil(rerank.rerank(ranker, images, request.prompt, request.batch_size))

    def sample(self, request: Request) -> torch.Tensor:
        """Every image the request draws, as IMAGE [N, 256, 256, 3] on the CPU: best_of of them in batches of
        batch_size (one generator running on through the batches: the first batch is the one without best_of),
        else batch_size."""
        tokens = prompt_tokens(self.tokenizer, request.prompt)
        count = request.best_of or request.batch_size
        bar = console_progress(IMAGE_TOKENS * len(rerank.batches(count, request.batch_size)), f"DALL·E {self.variant}")
        try:
            codes = sample_tokens(
                self.bart, tokens, request.seed, request.token_settings, count, lambda step: bar.update()
            )
        finally:
            bar.close()
        return vqgan_decode(lambda: self.vqgan, codes, torch.device("cpu"), lambda: None)


@dataclass(frozen=True)
class Request:
    """The settings of one DALL·E Mini/Mega run, checked when made: before any model loads."""

    prompt: str
    seed: int = 0
    batch_size: int = 4
    top_k: int = 256
    temperature: float = 1.0
    supercondition: float = 16.0
    best_of: int | None = None  # sample this many, keep the batch_size best by CLIP score

    def __post_init__(self) -> None:
        check_prompt(self.prompt, "what the images should show")
        whole_numbers(self, ("seed", "batch_size", "top_k", "best_of"))
        check_range("seed", self.seed, 0, MAX_SEED)
        check_sampling(self.batch_size, self.top_k, self.temperature, self.supercondition)
        rerank.check_best_of(self.best_of, self.batch_size)

    @property
    def token_settings(self) -> TokenSettings:
        return TokenSettings(self.batch_size, self.top_k, self.temperature, self.supercondition)
