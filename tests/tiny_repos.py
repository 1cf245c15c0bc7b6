"""Tiny random checkpoints written in exactly the real Hub repos' layout, through the reference libraries.

The real configs (tests/hub_configs, copied from the Hub) are shrunk to toy widths; everything else — folder
names, config keys, weight file names, tokenizer files — is what `kandinsky-community/kandinsky-2-2-prior`,
`-decoder`, `-decoder-inpaint` and `-controlnet-depth` hold (the last one's UNet config derived, see
controlnet_unet_config), so the loaders under test take the same code path as with the real downloads.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

HUB_CONFIGS = Path(__file__).parent / "hub_configs"
PRIOR_CONFIGS = HUB_CONFIGS / "kandinsky-community--kandinsky-2-2-prior"
DECODER_CONFIGS = HUB_CONFIGS / "kandinsky-community--kandinsky-2-2-decoder"
INPAINT_CONFIGS = HUB_CONFIGS / "kandinsky-community--kandinsky-2-2-decoder-inpaint"
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


def controlnet_unet_config(base: dict) -> dict:
    """kandinsky-2-2-controlnet-depth's UNet config, derived: its real config.json is not available here.

    That repo holds the decoder's UNet with diffusers' depth-hint input: `addition_embed_type` "image_hint" (the
    hint encoder inside add_embedding) and `in_channels` 8 (the latent's 4 channels plus the hint encoder's 4).
    Everything else is taken from `base`, a decoder UNet config (the real one, or tiny_unet_config()).
    """
    return {**base, "addition_embed_type": "image_hint", "in_channels": 8}


def tiny_movq_config(layers_per_block: int = 1) -> dict:
    config = {k: v for k, v in real_config(DECODER_CONFIGS / "movq" / "config.json").items() if not k.startswith("_")}
    config.update(
        block_out_channels=[32, 32, 64, 64], layers_per_block=layers_per_block, norm_num_groups=8, num_vq_embeddings=64
    )
    return config


def _write_unet_repo(root: Path, unet_config: dict, seed: int, pipeline: str) -> Path:
    """The layout the three decoder repos share (unet/, movq/, scheduler/, model_index.json naming `pipeline`);
    only the UNet's config differs between them."""
    from diffusers import UNet2DConditionModel, VQModel

    _randomize(UNet2DConditionModel(**unet_config), seed).save_pretrained(root / "unet")
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
                "_class_name": pipeline,
                "movq": ["diffusers", "VQModel"],
                "scheduler": ["diffusers", "DDPMScheduler"],
                "unet": ["diffusers", "UNet2DConditionModel"],
            }
        )
    )
    return root


def write_decoder_repo(root: Path, seed: int = 10) -> Path:
    """kandinsky-2-2-decoder in miniature: unet/, movq/, scheduler/."""
    return _write_unet_repo(root, tiny_unet_config(), seed, "KandinskyV22Pipeline")


def write_inpaint_repo(root: Path, seed: int = 12) -> Path:
    """kandinsky-2-2-decoder-inpaint in miniature: the decoder's layout, its UNet reading 9 channels (latent,
    masked-image latent, mask)."""
    in_channels = real_config(INPAINT_CONFIGS / "unet" / "config.json")["in_channels"]
    return _write_unet_repo(root, tiny_unet_config(in_channels), seed, "KandinskyV22InpaintPipeline")


def write_controlnet_repo(root: Path, seed: int = 14) -> Path:
    """kandinsky-2-2-controlnet-depth in miniature: the decoder's layout, its UNet reading a hint image
    (controlnet_unet_config)."""
    return _write_unet_repo(root, controlnet_unet_config(tiny_unet_config()), seed, "KandinskyV22ControlnetPipeline")


# DALL·E Mini / Mega: kuprel/min-dalle keeps pickled state dicts and BPE files at its root, no configs.
MIN_DALLE_CONFIG = HUB_CONFIGS / "kuprel--min-dalle" / "hyperparameters.json"
MIN_DALLE_FILES = {  # encoder, decoder, vocab, merges; detoker.pt is shared
    "mega": ("encoder.pt", "decoder.pt", "vocab.json", "merges.txt"),
    "mini": ("encoder_mini.pt", "decoder_mini.pt", "vocab_mini.json", "merges_mini.txt"),
}
# Toy widths; the image vocabulary stays real (codes are VQGAN codes) and the text one covers the tokenizer below.
TINY_MIN_DALLE = {
    "layer_count": 2,
    "embed_count": 32,
    "attention_head_count": 4,
    "glu_embed_count": 48,
    "text_vocab_count": 700,
    "image_vocab_count": 16415,
}
# Prompts to learn BPE merges from, so that words split into several pieces of several letters.
MIN_DALLE_CORPUS = """
an astronaut riding a horse on the moon, digital art
a photo of a cat sitting on a wooden table next to a cup of coffee
an armchair in the shape of an avocado
a painting of a fox in the style of starry night
a watercolor painting of a lighthouse at sunset, trending on artstation
an oil painting of a city street in the rain at night
a cute corgi wearing a red hat and sunglasses
a robot playing chess with a dog in the park
the eiffel tower made of cheese, 3d render
a sketch of a dragon flying over mountains and rivers
a bowl of ramen with eggs and noodles, studio photography
portrait of an old man with a beard, black and white photo
a futuristic city with flying cars and neon lights
a tiny house inside a glass bottle on the beach
a teddy bear swimming in the ocean, underwater photo
a pixel art drawing of a castle on a hill
"""


def import_min_dalle():
    """min_dalle turns autograd off and sets torch's thread count when imported: keep that out of other tests."""
    grad, threads = torch.is_grad_enabled(), torch.get_num_threads()
    import min_dalle

    torch.set_grad_enabled(grad)
    torch.set_num_threads(threads)
    return min_dalle


def min_dalle_layout(repo: Path, root: Path) -> Path:
    """A Hub-layout min-dalle repo's files linked into min-dalle's own models_root layout
    (dalle_bart_mega/encoder.pt …, vqgan/detoker.pt)."""
    for variant, files in MIN_DALLE_FILES.items():
        folder = root / f"dalle_bart_{variant}"
        folder.mkdir(parents=True, exist_ok=True)
        for name, hub_name in zip(("encoder.pt", "decoder.pt", "vocab.json", "merges.txt"), files, strict=True):
            if (repo / hub_name).is_file():
                (folder / name).symlink_to(repo / hub_name)
    (root / "vqgan").mkdir(exist_ok=True)
    (root / "vqgan" / "detoker.pt").symlink_to(repo / "detoker.pt")
    return root


def min_dalle_reference(models_root: Path, is_mega: bool, decode: bool = True):
    """min-dalle's own MinDalle at the toy size (TINY_MIN_DALLE), on the CPU in fp32, offline; with decode=False
    it returns image tokens instead of pixels."""
    import importlib
    from unittest import mock

    min_dalle = import_min_dalle()

    class TokensOnly(min_dalle.MinDalle):
        def image_grid_from_tokens(self, image_tokens, is_seamless, is_verbose=False):
            return image_tokens

    cls = min_dalle.MinDalle if decode else TokensOnly
    with mock.patch.object(importlib.import_module("min_dalle.min_dalle").requests, "get"):  # no downloads
        model = cls(str(models_root), torch.float32, "cpu", is_mega, is_reusable=False, is_verbose=False)
    vars(model).update(TINY_MIN_DALLE)  # the sizes MinDalle would otherwise set for the real checkpoints
    model.init_encoder()
    model.init_decoder()
    if decode:
        model.init_detokenizer()
    model.is_reusable = True
    return model


def write_min_dalle_tokenizer(folder: Path, vocab_name: str, merges_name: str, vocab_size: int = 600) -> int:
    """A byte-level BPE vocabulary and merge table learned from MIN_DALLE_CORPUS, saved as the Hub's files (vocab
    json, merges with a version line) with BART's special tokens first; returns the vocabulary size."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(MIN_DALLE_CORPUS.strip().splitlines(), trainer)
    folder.mkdir(parents=True, exist_ok=True)
    vocab_path, merges_path = (Path(p) for p in tokenizer.model.save(str(folder), "new"))  # new-vocab.json …
    vocab_path.rename(folder / vocab_name)
    merges_path.rename(folder / merges_name)
    return tokenizer.get_vocab_size()


def _random_state(module: torch.nn.Module, seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Random tensors for the keys and shapes of a module built on the meta device, scaled as _randomize scales.

    Each tensor is a window of a 1M-value pool of normal noise at a random offset, tiled past 1M values: fresh
    values for half a billion parameters would take most of a test's time.
    """
    generator = torch.Generator().manual_seed(seed)
    pool = torch.randn(1 << 20, generator=generator)

    def normal(shape: torch.Size) -> torch.Tensor:
        start = int(torch.randint(pool.numel(), (), generator=generator))
        return pool.roll(-start).repeat(-(-shape.numel() // pool.numel()))[: shape.numel()].view(shape)

    state = {}
    for name, tensor in module.state_dict().items():
        noise = normal(tensor.shape)
        if tensor.ndim >= 2:
            noise /= tensor[0].numel() ** 0.5
        else:
            noise = 1 + 0.1 * noise if name.endswith("weight") else 0.1 * noise
        state[name] = noise.to(dtype)
    return state


def write_min_dalle_repo(
    root: Path, variant: str, hparams: dict | None = None, seed: int = 20, dtype: torch.dtype | None = None
) -> Path:
    """kuprel/min-dalle's files for one variant (`hparams`: min-dalle's constructor arguments, None for the real
    size), written from min-dalle's own modules' keys; Mega in fp16 and Mini in fp32 unless `dtype` says."""
    models = import_min_dalle().models
    hparams = hparams or {k: v for k, v in real_config(MIN_DALLE_CONFIG)[variant].items() if k in TINY_MIN_DALLE}
    dtype = dtype or (torch.float16 if variant == "mega" else torch.float32)
    encoder_file, decoder_file, vocab_file, merges_file = MIN_DALLE_FILES[variant]
    vocab_size = write_min_dalle_tokenizer(root, vocab_file, merges_file)
    assert vocab_size <= hparams["text_vocab_count"], "the tokenizer's ids must fit the text embedding"
    shared = {k: hparams[k] for k in ("layer_count", "embed_count", "attention_head_count", "glu_embed_count")}
    with torch.device("meta"):
        encoder = models.DalleBartEncoder(
            **shared, text_vocab_count=hparams["text_vocab_count"], text_token_count=64, device="meta"
        )
        decoder = models.DalleBartDecoder(**shared, image_vocab_count=hparams["image_vocab_count"], device="meta")
        detokenizer = models.VQGanDetokenizer()
    torch.save(_random_state(encoder, seed, dtype), root / encoder_file)
    torch.save(_random_state(decoder, seed + 1, dtype), root / decoder_file)
    if not (root / "detoker.pt").is_file():  # shared by the variants: one folder can hold both
        detoker = _random_state(detokenizer, seed + 2, torch.float32)
        detoker["decoder.conv_out.weight"] *= 0.1  # images in 0…1 with detail, rather than clamped flat
        detoker["decoder.conv_out.bias"] += 0.5
        torch.save(detoker, root / "detoker.pt")
    return root


def min_dalle_modules(hp) -> tuple[torch.nn.Module, torch.nn.Module]:
    """min-dalle's own encoder and decoder sized by `hp` (a Hyperparameters), on torch's default device."""
    models = import_min_dalle().models
    shared = dict(
        layer_count=hp.layer_count,
        embed_count=hp.embed_count,
        attention_head_count=hp.attention_head_count,
        glu_embed_count=hp.glu_embed_count,
        device=torch.get_default_device(),
    )
    encoder = models.DalleBartEncoder(**shared, text_vocab_count=hp.text_vocab_count, text_token_count=64)
    return encoder, models.DalleBartDecoder(**shared, image_vocab_count=hp.image_vocab_count)


# openai/clip-vit-base-patch32: CLIPModel's files at the repo's root. transformers' CLIPConfig defaults are that
# model's sizes (text 512 wide, 12 layers, 8 heads; vision 768 wide, 12 layers, 12 heads, patch 32, 224 px;
# projection 512); the tiny one keeps the patch and image size, so CLIP's real preprocessing feeds it.
CLIP_PREPROCESSOR = {
    "crop_size": 224,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "size": 224,
}


def clip_config(tiny: bool = True):
    """CLIPConfig of openai/clip-vit-base-patch32 (the class defaults, with its legacy token ids: the text is pooled
    at the highest id, end-of-text), or a toy one of the same layout."""
    from transformers import CLIPConfig

    text = dict(bos_token_id=0, eos_token_id=2, pad_token_id=1)
    vision = {}
    if tiny:
        text.update(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2)
        text.update(vocab_size=len(_bytes_to_unicode()) * 2 + 10, max_position_embeddings=77)
        vision = dict(hidden_size=12, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2)
    config = CLIPConfig(
        text_config=text, vision_config=vision, projection_dim=8 if tiny else 512, logit_scale_init_value=4.6052
    )
    config.architectures = ["CLIPModel"]
    return config


def write_clip_repo(root: Path, seed: int = 40, tiny: bool = True) -> Path:
    """openai/clip-vit-base-patch32's layout: config.json, model.safetensors, the tokenizer files and
    preprocessor_config.json at the root; random weights (the logit scale is the trained model's, exp = 100)."""
    from transformers import CLIPModel

    vocab_size = write_tokenizer(root)
    config = clip_config(tiny)
    assert vocab_size <= config.text_config.vocab_size
    model = _randomize(CLIPModel(config), seed)
    with torch.no_grad():
        model.logit_scale.fill_(4.6052)
    model.save_pretrained(root)
    (root / "preprocessor_config.json").write_text(json.dumps(CLIP_PREPROCESSOR))
    return root


# Intel/dpt-hybrid-midas (the depth model diffusers' Kandinsky 2.2 ControlNet docs use): transformers'
# DPTForDepthEstimation with config.json, model.safetensors and preprocessor_config.json at the root. The hybrid one
# reads a BiT (ResNet) backbone's first two stages and the ViT's last two layers; the plain one four ViT layers.
DEPTH_IMAGE_SIZE = 32  # the processor's resize target (384 in the real repos) and the model's image_size


def depth_config(hybrid: bool):
    """A tiny DPTConfig, the layout of Intel/dpt-hybrid-midas (hybrid) or of Intel/dpt-large (plain)."""
    from transformers import BitConfig, DPTConfig

    shared = dict(
        hidden_size=16,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=DEPTH_IMAGE_SIZE,
        backbone_out_indices=[0, 1, 2, 3],
        fusion_hidden_size=16,
    )
    if not hybrid:
        return DPTConfig(**shared, patch_size=8, neck_hidden_sizes=[8, 16, 16, 16], reassemble_factors=[4, 2, 1, 0.5])
    backbone = BitConfig(  # the real backbone's kind (bottleneck blocks, "same" padding), 3 stages of one block
        layer_type="bottleneck",
        global_padding="same",
        embedding_dynamic_padding=True,
        depths=[1, 1, 1],
        hidden_sizes=[8, 16, 32, 64],
        embedding_size=8,
        num_groups=4,
        out_features=["stage1", "stage2", "stage3"],
    )
    featmap = [1, 32, DEPTH_IMAGE_SIZE // 16, DEPTH_IMAGE_SIZE // 16]  # stage 3's output: channels, size / 16
    return DPTConfig(
        **shared,
        is_hybrid=True,
        backbone_config=backbone.to_dict(),
        backbone_featmap_shape=featmap,
        patch_size=16,
        neck_hidden_sizes=[8, 16, 16, 16],  # the first two are the backbone stages' widths
        neck_ignore_stages=[0, 1],
        reassemble_factors=[1, 1, 1, 0.5],
        readout_type="project",
    )


def write_depth_repo(root: Path, seed: int = 50, hybrid: bool = True) -> Path:
    """A depth-estimation repo in miniature (see depth_config), random weights."""
    from transformers import DPTForDepthEstimation, DPTImageProcessor

    model = _randomize(DPTForDepthEstimation(depth_config(hybrid)), seed)
    with torch.no_grad():  # the head ends in conv, ReLU, 1×1 conv, ReLU: positive last weights keep its output
        model.head.head[-2].weight.abs_()  # above 0, a map with detail rather than one mostly clamped flat
    model.save_pretrained(root)
    size = {"height": DEPTH_IMAGE_SIZE, "width": DEPTH_IMAGE_SIZE}
    DPTImageProcessor(size=size, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(root)
    return root
