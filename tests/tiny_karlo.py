"""Tiny random Karlo checkpoints in exactly the real Hub repos' layout, written through diffusers and transformers.

kakaobrain/karlo-v1-alpha as its main branch holds it: model_index.json naming text_proj's library "unclip" (which
diffusers 0.42 can no longer load), a tokenizer folder without tokenizer.json (its real tokenizer_config.json and
special_tokens_map.json, a toy vocabulary), and a pickled `.bin` twin beside every safetensors weight file. The
configs are the real ones (tests/hub_configs) at toy widths; the image sizes stay real (64 px decoder, 256 px
super-resolution). -image-variations has an image encoder instead of the prior, and `.bin` weights only (its main).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from tiny_repos import HUB_CONFIGS, _randomize, real_config, write_tokenizer

KARLO = HUB_CONFIGS / "kakaobrain--karlo-v1-alpha"
VARIATIONS = HUB_CONFIGS / "kakaobrain--karlo-v1-alpha-image-variations"
EMBED = 16  # CLIP width: text hidden size = projection = prior embedding = text_proj input, as 768 is for real
TIME = 64  # the decoder's time embedding: 4 × its first level's channels


def _config(folder: Path, subfolder: str) -> dict:
    """The real config.json of a component, or its *.reconstructed.json where the Hub file was not found."""
    found = sorted((folder / subfolder).glob("*.json"))
    return {k: v for k, v in real_config(found[0]).items() if not k.startswith("_")}


def prior_config() -> dict:
    return {**_config(KARLO, "prior"), **dict(num_attention_heads=2, attention_head_dim=8, num_layers=2)} | {
        "embedding_dim": EMBED
    }


def text_proj_config() -> dict:
    return {
        **_config(KARLO, "text_proj"),
        "clip_embeddings_dim": EMBED,
        "time_embed_dim": TIME,
        "cross_attention_dim": 24,
    }


def decoder_config() -> dict:
    """Every width differs (levels, context 24, CLIP 16) so that mixing two up cannot go unnoticed."""
    return {
        **_config(KARLO, "decoder"),
        **dict(block_out_channels=[16, 32, 32, 48], layers_per_block=1, attention_head_dim=8),
        **dict(cross_attention_dim=24, norm_num_groups=8),
    }


def super_res_config(name: str) -> dict:
    return {**_config(KARLO, name), **dict(block_out_channels=[8, 16, 16, 24], layers_per_block=1, norm_num_groups=4)}


# The 1e-4 tolerance claim rests on test_parity's per-stage assertions (stage_errors: prior embeddings, 64 px image,
# 256 px image, each on its own): with ε scaled as below, a whole-chain comparison alone could hide a stage's error.
def small_epsilon(unet: torch.nn.Module, conditioning: bool = False) -> None:
    """Scale a UNet's ε output (its first 3 channels; a learned variance after them is kept) to about 1e-3, and with
    `conditioning` its dependence on the low-resolution image (the input's last half) by 1e-3 more.

    The first step of every stage runs at t = 999, where x0 = (x - 0.99999 ε) / 4.9e-5, clipped to ±1. A trained
    UNet predicts ε ≈ x there; a random one predicts noise unrelated to x, so wherever x - ε happens to be near 0 the
    step divides float rounding by 4.9e-5, and one ulp of ε, or a 1e-5 difference of the 64 px image (rounding
    between two correct implementations), flips pixels. At 1e-3 that rounding stays below the 1e-4 tolerance, while
    ε still moves the middle steps' x0 by about 1e-3, ten times the tolerance. The last super-resolution step's UNet
    (t = 0, nothing to amplify) keeps its full scale and conditioning."""
    with torch.no_grad():
        unet.conv_out.weight[:3] *= 1e-3
        unet.conv_out.bias[:3] *= 1e-3
        if conditioning:
            unet.conv_in.weight[:, unet.config.in_channels // 2 :] *= 1e-3


def _save(module, folder: Path, safetensors: bool) -> None:
    """save_pretrained, and the `.bin` twin (the same tensors pickled) the real repos hold; `.bin` only without
    safetensors."""
    module.save_pretrained(folder, safe_serialization=True)
    weights = next(folder.glob("*.safetensors"))
    twin = "pytorch_model.bin" if weights.name == "model.safetensors" else "diffusion_pytorch_model.bin"
    torch.save(load_file(weights), folder / twin)
    if not safetensors:
        weights.unlink()


def _write_shared(root: Path, configs: Path, seed: int, safetensors: bool) -> None:
    """What both repos hold: text encoder and tokenizer, text projection, decoder, super-resolution UNets and their
    schedulers."""
    from diffusers import UNet2DConditionModel, UNet2DModel
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    vocab_size = write_tokenizer(root / "tokenizer")
    for name in ("tokenizer_config.json", "special_tokens_map.json"):  # the real files, over the toy ones
        shutil.copy(KARLO / "tokenizer" / name, root / "tokenizer" / name)
    shutil.copy(configs / "tokenizer" / "tokenizer_config.json", root / "tokenizer" / "tokenizer_config.json")
    text = {**_config(KARLO, "text_encoder"), **dict(hidden_size=EMBED, projection_dim=EMBED, intermediate_size=32)}
    text.update(num_hidden_layers=2, num_attention_heads=2, vocab_size=vocab_size)
    encoder = CLIPTextModelWithProjection(CLIPTextConfig(**text))
    _save(_randomize(encoder, seed), root / "text_encoder", safetensors)
    _save(_randomize(UnCLIPTextProjModel(**text_proj_config()), seed + 1), root / "text_proj", safetensors)
    decoder = _randomize(UNet2DConditionModel(**decoder_config()), seed + 2)
    small_epsilon(decoder)
    _save(decoder, root / "decoder", safetensors)
    for offset, name in enumerate(("super_res_first", "super_res_last")):
        unet = _randomize(UNet2DModel(**super_res_config(name)), seed + 3 + offset)
        if name == "super_res_first":
            small_epsilon(unet, conditioning=True)
        _save(unet, root / name, safetensors)
    for name in ("decoder_scheduler", "super_res_scheduler"):
        found = next((configs / name).glob("*.json"))
        (root / name).mkdir(exist_ok=True)
        shutil.copy(found, root / name / "scheduler_config.json")
    shutil.copy(configs / "model_index.json", root / "model_index.json")


def write_karlo_repo(root: Path, seed: int = 60) -> Path:
    """kakaobrain/karlo-v1-alpha in miniature (main: safetensors with `.bin` twins)."""
    from diffusers import PriorTransformer

    _write_shared(root, KARLO, seed, safetensors=True)
    _save(_randomize(PriorTransformer(**prior_config()), seed + 10), root / "prior", True)
    shutil.copytree(KARLO / "prior_scheduler", root / "prior_scheduler")
    return root


def write_variations_repo(root: Path, seed: int = 70) -> Path:
    """kakaobrain/karlo-v1-alpha-image-variations in miniature (main: `.bin` weights only)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    _write_shared(root, VARIATIONS, seed, safetensors=False)
    vision = {**_config(VARIATIONS, "image_encoder"), **dict(hidden_size=12, projection_dim=EMBED)}
    vision.update(intermediate_size=24, num_hidden_layers=2, num_attention_heads=2)  # real 224 px, patch 14
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**vision))
    _save(_randomize(encoder, seed + 10), root / "image_encoder", False)
    shutil.copytree(VARIATIONS / "feature_extractor", root / "feature_extractor")
    return root


def reference_components(root: Path) -> dict:
    """The repo's components loaded one by one through diffusers and transformers (diffusers 0.42 cannot load the
    repo whole), named as UnCLIPPipeline and UnCLIPImageVariationPipeline take them."""
    from diffusers import PriorTransformer, UnCLIPScheduler, UNet2DConditionModel, UNet2DModel
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel
    from transformers import CLIPImageProcessor, CLIPTextModelWithProjection, CLIPTokenizer

    parts = dict(
        decoder=UNet2DConditionModel.from_pretrained(root / "decoder"),
        text_encoder=CLIPTextModelWithProjection.from_pretrained(root / "text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(root / "tokenizer"),
        text_proj=UnCLIPTextProjModel.from_pretrained(root / "text_proj"),
        super_res_first=UNet2DModel.from_pretrained(root / "super_res_first"),
        super_res_last=UNet2DModel.from_pretrained(root / "super_res_last"),
        decoder_scheduler=UnCLIPScheduler.from_pretrained(root / "decoder_scheduler"),
        super_res_scheduler=UnCLIPScheduler.from_pretrained(root / "super_res_scheduler"),
    )
    if (root / "prior").is_dir():
        parts["prior"] = PriorTransformer.from_pretrained(root / "prior")
        parts["prior_scheduler"] = UnCLIPScheduler.from_pretrained(root / "prior_scheduler")
    else:
        from transformers import CLIPVisionModelWithProjection

        parts["image_encoder"] = CLIPVisionModelWithProjection.from_pretrained(root / "image_encoder")
        parts["feature_extractor"] = CLIPImageProcessor.from_pretrained(root / "feature_extractor")
    return {name: part.eval() if isinstance(part, torch.nn.Module) else part for name, part in parts.items()}


def model_index(root: Path) -> dict:
    return json.loads((root / "model_index.json").read_text())
