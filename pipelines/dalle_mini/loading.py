"""kuprel/min-dalle's checkpoint files → ready modules: the BPE tokenizer, the BART encoder and decoder of a variant
(mega or mini), and the VQGAN detokenizer both variants share."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
from torch import nn

from ...engine.checkpoints import (
    CheckpointError,
    config_settings,
    error_summary,
    load_strict,
    read_json,
    read_state_dict,
)
from ...engine.device import resolve_dtype
from ...engine.hub import Source, fetch_file, file_on_disk
from ...models.bart_tokenizer import BartTokenizer
from ...models.dalle_bart import HYPERPARAMETERS, DalleBart, DalleBartDecoder, DalleBartEncoder, Hyperparameters
from ...models.vqgan import DETOKER_FILE, VQGAN

REPO = "kuprel/min-dalle"
HYPERPARAMETERS_FILE = "hyperparameters.json"  # optional, for other sizes: see folder_hyperparameters
FETCHES = 5  # files a load asks for (vocabulary, merges, encoder, decoder, VQGAN): "file k of n" in download bars


@dataclass(frozen=True)
class VariantFiles:
    encoder: str
    decoder: str
    vocab: str
    merges: str


FILES = {  # at the root of kuprel/min-dalle; both variants share detoker.pt (models/vqgan.py)
    "mega": VariantFiles("encoder.pt", "decoder.pt", "vocab.json", "merges.txt"),
    "mini": VariantFiles("encoder_mini.pt", "decoder_mini.pt", "vocab_mini.json", "merges_mini.txt"),
}


def _load_part(
    source: Source, filename: str, build: Callable[[], nn.Module], dtype: torch.dtype, what: str
) -> nn.Module:
    """Every parameter of `build()` from the file with its shape; tensors the module has no use for are ignored with a
    warning, as min-dalle (which loads non-strictly) ignores them."""
    path = fetch_file(source, "", filename)
    state = read_state_dict(path, dtype)
    with torch.device("meta"):
        expected = build().state_dict().keys()
    module = load_strict(build, {k: v for k, v in state.items() if k in expected}, f"{what} '{path}'")
    unused = sorted(state.keys() - expected)
    if unused:
        more = " …" if len(unused) > 3 else ""
        warnings.warn(
            f"'{path}' holds {len(unused)} tensors the {what} does not use ({', '.join(unused[:3])}{more}).",
            stacklevel=3,
        )
    return module


def check_variant(variant: str) -> None:
    if variant not in FILES:
        raise ValueError(f"variant must be one of {', '.join(FILES)}, not '{variant}'.")


def folder_hyperparameters(source: Source, variant: str) -> Hyperparameters | None:
    """Sizes from a `hyperparameters.json` beside the weights, for checkpoints of other sizes than the Hub's (no
    Hub repo has this file): {"mega": {"layer_count": …, "embed_count": …, …}, "mini": {…}}."""
    path = file_on_disk(source, HYPERPARAMETERS_FILE)
    if path is None:
        return None
    names = ", ".join(field.name for field in fields(Hyperparameters))
    entry = read_json(path).get(variant)
    if not isinstance(entry, dict):
        raise CheckpointError(f"'{path}' needs a \"{variant}\" entry with {names}.")
    defaults = {field.name: 0 for field in fields(Hyperparameters)}  # all sizes: integers
    try:
        settings = config_settings(entry, defaults, f"DALL·E {variant}")
    except ValueError as error:
        raise CheckpointError(f"'{path}': {error}. It needs a \"{variant}\" entry with {names}.") from error
    missing = sorted(defaults.keys() - entry.keys())
    if missing:
        raise CheckpointError(f"'{path}' needs a \"{variant}\" entry with {names} (missing: {', '.join(missing)}).")
    return Hyperparameters(**settings)


def load_bart(source: Source, variant: str, dtype: torch.dtype, hparams: Hyperparameters | None = None) -> DalleBart:
    """The encoder and decoder of a variant ("mega" or "mini"), sized by `hparams`, else by the folder's
    hyperparameters.json, else as min-dalle's Hub checkpoints."""
    check_variant(variant)
    hp = hparams or folder_hyperparameters(source, variant) or HYPERPARAMETERS[variant]
    files = FILES[variant]
    encoder = _load_part(source, files.encoder, lambda: DalleBartEncoder(hp), dtype, f"DALL·E {variant} encoder")
    decoder = _load_part(source, files.decoder, lambda: DalleBartDecoder(hp), dtype, f"DALL·E {variant} decoder")
    return DalleBart(encoder, decoder)


def load_tokenizer(source: Source, variant: str) -> BartTokenizer:
    check_variant(variant)
    vocab, merges = (fetch_file(source, "", name) for name in (FILES[variant].vocab, FILES[variant].merges))
    words = read_json(vocab)
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in words.values()):
        raise CheckpointError(f"'{vocab}' is not a vocabulary (token → id); delete it and download it again.")
    try:
        return BartTokenizer.from_files(vocab, merges)
    except Exception as error:  # a missing special token, undecodable merges, tokenizers' own (plain Exception) ones
        raise CheckpointError(
            f"'{vocab}' and '{merges}' are not a BART tokenizer ({type(error).__name__}: {error_summary(error)}); "
            "delete them and download them again."
        ) from error


def load_vqgan(source: Source, dtype: torch.dtype) -> VQGAN:
    """The detokenizer, loaded strictly (min-dalle loads detoker.pt strictly too)."""
    path = fetch_file(source, "", DETOKER_FILE)
    return load_strict(VQGAN, read_state_dict(path, dtype), f"VQGAN detokenizer '{path}'")


def load_variant(
    source: Source, variant: str, dtypes: tuple[torch.dtype, torch.dtype]
) -> tuple[BartTokenizer, DalleBart, VQGAN]:
    """Everything a variant runs on, on the CPU, in the (BART, VQGAN) `dtypes` (see `dtypes`): the FETCHES files in
    the order the download bars count them. The loader node and DalleMini.load both load through here."""
    tokenizer = load_tokenizer(source, variant)
    return tokenizer, load_bart(source, variant, dtypes[0]), load_vqgan(source, dtypes[1])


def dtypes(
    choice: str, device: torch.device, fp16_ok: Callable[[torch.device], bool]
) -> tuple[torch.dtype, torch.dtype]:
    """(BART, VQGAN) dtypes for a dtype input. auto: on GPUs BART in fp16, the precision Mega's weights ship in (bf16
    would drop three bits of each), unless `fp16_ok` rules fp16 out on `device`, and the VQGAN in fp32 as min-dalle
    runs it (its file is fp32 and it costs a few hundredths of a second); fp32 on the CPU. Other choices apply to
    both."""
    if choice != "auto":
        dtype = resolve_dtype(choice, device)
        return dtype, dtype
    if device.type == "cpu":
        return torch.float32, torch.float32
    return (torch.float16 if fp16_ok(device) else torch.float32), torch.float32
