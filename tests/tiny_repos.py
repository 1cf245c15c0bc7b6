"""Tiny random checkpoints written in exactly the real Hub repos' layout, through the reference libraries.

The real configs (tests/hub_configs, copied from the Hub) are shrunk to toy widths; everything else — folder
names, config keys, weight file names, tokenizer files — is what `kandinsky-community/kandinsky-2-2-prior` and
`-decoder` hold, so the loaders under test take the same code path as with the real downloads.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

HUB_CONFIGS = Path(__file__).parent / "hub_configs"
PRIOR_CONFIGS = HUB_CONFIGS / "kandinsky-community--kandinsky-2-2-prior"
DECODER_CONFIGS = HUB_CONFIGS / "kandinsky-community--kandinsky-2-2-decoder"
WIDTH = 16  # text hidden size = projection = prior embedding = image projection, as 1280 is in the real repos


def real_config(path: Path) -> dict:
    return json.loads(path.read_text())


def _randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random values everywhere, scaled to keep activations O(1): references zero-init some layers (which
    would hide wiring mistakes), and 1-D weights are norm scales, kept near 1."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if tensor.ndim >= 2:
                tensor.copy_(noise / tensor[0].numel() ** 0.5)
            elif name.endswith(("weight", "clip_std")):
                tensor.copy_(1 + 0.1 * noise)
            else:
                tensor.copy_(0.1 * noise)
    return module


def _bytes_to_unicode() -> list[str]:
    """CLIP's byte-level alphabet (every byte has a printable stand-in)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    return [chr(c) for c in printable] + [chr(256 + i) for i in range(len(extra))]


def write_tokenizer(folder: Path) -> int:
    """A CLIP BPE tokenizer with a tiny merge table; returns its vocabulary size."""
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = _bytes_to_unicode()
    merges = ["t h", "th e</w>", "a n</w>", "o r", "c a", "ca t</w>", "d o", "do g</w>"]
    vocab = alphabet + [c + "</w>" for c in alphabet] + [m.replace(" ", "") for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "!",
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({**special, "model_max_length": 77, "do_lower_case": True, "tokenizer_class": "CLIPTokenizer"})
    )
    return len(vocab)


def write_prior_repo(root: Path, seed: int = 0) -> Path:
    """kandinsky-2-2-prior in miniature: prior/, text_encoder/, tokenizer/, image_encoder/, image_processor/,
    scheduler/."""
    from diffusers import PriorTransformer
    from transformers import (
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    vocab_size = write_tokenizer(root / "tokenizer")
    text = real_config(PRIOR_CONFIGS / "text_encoder" / "config.json")
    text.update(
        hidden_size=WIDTH,
        projection_dim=WIDTH,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        vocab_size=vocab_size,
    )
    _randomize(CLIPTextModelWithProjection(CLIPTextConfig(**text)), seed).save_pretrained(root / "text_encoder")

    vision = real_config(PRIOR_CONFIGS / "image_encoder" / "config.json")
    vision.update(
        hidden_size=12, projection_dim=WIDTH, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2
    )  # real image_size 224 and patch 14, as the image processor expects
    _randomize(CLIPVisionModelWithProjection(CLIPVisionConfig(**vision)), seed + 1).save_pretrained(
        root / "image_encoder"
    )

    prior = {k: v for k, v in real_config(PRIOR_CONFIGS / "prior" / "config.json").items() if not k.startswith("_")}
    prior.update(num_attention_heads=2, attention_head_dim=8, num_layers=2, embedding_dim=WIDTH)
    _randomize(PriorTransformer(**prior), seed + 2).save_pretrained(root / "prior")

    for sub in ("scheduler", "image_processor"):
        shutil.copytree(PRIOR_CONFIGS / sub, root / sub, dirs_exist_ok=True)
    (root / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "KandinskyV22PriorPipeline",
                "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
                "image_processor": ["transformers", "CLIPImageProcessor"],
                "prior": ["diffusers", "PriorTransformer"],
                "scheduler": ["diffusers", "UnCLIPScheduler"],
                "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
                "tokenizer": ["transformers", "CLIPTokenizer"],
            }
        )
    )
    return root


def tiny_unet_config(in_channels: int = 4) -> dict:
    """The real decoder's layout at toy width; every width differs (levels, context 24, image embedding 16),
    so that mixing two of them up cannot go unnoticed."""
    config = {k: v for k, v in real_config(DECODER_CONFIGS / "unet" / "config.json").items() if not k.startswith("_")}
    config.update(
        in_channels=in_channels,
        block_out_channels=[32, 48, 64, 80],
        layers_per_block=2,
        attention_head_dim=8,
        addition_embed_type_num_heads=8,
        cross_attention_dim=24,
        encoder_hid_dim=WIDTH,
        norm_num_groups=8,
        sample_size=8,
    )
    return config


def tiny_movq_config(layers_per_block: int = 1) -> dict:
    config = {k: v for k, v in real_config(DECODER_CONFIGS / "movq" / "config.json").items() if not k.startswith("_")}
    config.update(
        block_out_channels=[32, 32, 64, 64], layers_per_block=layers_per_block, norm_num_groups=8, num_vq_embeddings=64
    )
    return config


def write_decoder_repo(root: Path, seed: int = 10) -> Path:
    """kandinsky-2-2-decoder in miniature: unet/, movq/, scheduler/."""
    from diffusers import UNet2DConditionModel, VQModel

    _randomize(UNet2DConditionModel(**tiny_unet_config()), seed).save_pretrained(root / "unet")
    movq = _randomize(VQModel(**tiny_movq_config()), seed + 1)
    # A random UNet does not predict noise, so its latents end ~70 in size instead of ~1. Scale the MoVQ layers
    # that read latents to match (as the real MoVQ is matched to real latents) and the output to [0, 1]: an
    # image that is not clamped flat, whose pixels show real differences.
    with torch.no_grad():
        for name, tensor in movq.state_dict().items():
            if name.startswith("post_quant_conv.weight") or ".conv_y." in name or ".conv_b." in name:
                tensor /= 30
            elif name.startswith("decoder.conv_out."):
                tensor *= 0.1
    movq.save_pretrained(root / "movq")
    shutil.copytree(DECODER_CONFIGS / "scheduler", root / "scheduler", dirs_exist_ok=True)
    (root / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "KandinskyV22Pipeline",
                "movq": ["diffusers", "VQModel"],
                "scheduler": ["diffusers", "DDPMScheduler"],
                "unet": ["diffusers", "UNet2DConditionModel"],
            }
        )
    )
    return root
