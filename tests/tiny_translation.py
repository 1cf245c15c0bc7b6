"""A tiny random MarianMT written in the layout of Helsinki-NLP/opus-mt-zh-en: config.json (with the settings the 2020
conversion wrote), generation_config.json, vocab.json (the joint vocabulary: </s> 0, <unk> 1, <pad> last),
source.spm and target.spm (real sentencepiece unigram models, trained here on a few sentences), tokenizer_config.json
and model.safetensors. Toy widths, and a shorter max_length than the real 512 so that a random model, which seldom
writes </s>, stops soon. Variants: without max_length and num_beams in the generation config (the pipeline's own
defaults then rule), and with the weights in pytorch_model.bin beside tf_model.h5 and rust_model.ot, as the real
repo's main branch holds them."""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

SOURCE_SENTENCES = [
    "一只戴着帽子的猫坐在桌子上",
    "油画风格的山水和河流",
    "城市夜景，霓虹灯，雨天",
    "一个宇航员骑着马在月球上",
    "可爱的小狗在花园里玩耍",
    "日落时分的海边灯塔",
    "古老的城堡和蓝色的天空",
    "高清照片，细节丰富",
    # the shipped *_zh workflows' prompts: words the tiny model must know (the real one knows them all)
    "雪林中的一只红狐狸，油画",
    "模糊，低质量",
    "日落时悬崖上灯塔的水彩画",
]
TARGET_SENTENCES = [
    "a cat in a hat sits on the table",
    "mountains and rivers in the style of an oil painting",
    "a city at night, neon lights, rain",
    "an astronaut riding a horse on the moon",
    "a cute puppy playing in the garden",
    "a lighthouse by the sea at sunset",
    "an old castle and a blue sky",
    "a high definition photo, rich in detail",
    "a red fox in a snowy forest, oil painting",
    "blurry, low quality",
    "a watercolor of a lighthouse on a cliff at sunset",
]
# the real config's settings (values shrunk where they size the network)
CONFIG = {
    "_name_or_path": "/tmp/Helsinki-NLP/opus-mt-zh-en",
    "_num_labels": 3,
    "activation_dropout": 0.0,
    "activation_function": "swish",
    "add_bias_logits": False,
    "add_final_layer_norm": False,
    "architectures": ["MarianMTModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "classif_dropout": 0.0,
    "classifier_dropout": 0.0,
    "d_model": 16,
    "decoder_attention_heads": 2,
    "decoder_ffn_dim": 32,
    "decoder_layerdrop": 0.0,
    "decoder_layers": 2,
    "dropout": 0.1,
    "encoder_attention_heads": 2,
    "encoder_ffn_dim": 32,
    "encoder_layerdrop": 0.0,
    "encoder_layers": 2,
    "eos_token_id": 0,
    "extra_pos_embeddings": 0,
    "forced_eos_token_id": 0,
    "gradient_checkpointing": False,
    "id2label": {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"},
    "init_std": 0.02,
    "is_encoder_decoder": True,
    "label2id": {"LABEL_0": 0, "LABEL_1": 1, "LABEL_2": 2},
    "max_position_embeddings": 64,
    "model_type": "marian",
    "normalize_before": False,
    "normalize_embedding": False,
    "num_hidden_layers": 2,
    "scale_embedding": True,
    "share_encoder_decoder_embeddings": True,
    "static_position_embeddings": True,
    "transformers_version": "4.22.0.dev0",
    "use_cache": True,
}
MAX_LENGTH = 12
NUM_BEAMS = 4
DECOYS = ("tf_model.h5", "rust_model.ot")  # the real repo's weights for TensorFlow and Rust: never to be fetched


def _sentencepiece(sentences: list[str], size: int) -> bytes:
    """A unigram sentencepiece model of `size` pieces, as OPUS-MT trains its own (at 32k)."""
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=size,
        model_type="unigram",
        character_coverage=1.0,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return model.getvalue()


def _pieces(model: bytes) -> list[str]:
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_proto=model)
    return [processor.id_to_piece(i) for i in range(processor.get_piece_size())]


def _randomize(model: torch.nn.Module, seed: int, english: list[int]) -> None:
    """Random weights big enough that each step has a clear best token (the default init makes near-ties); the
    sinusoidal positions stay as they are. The logits' bias keeps the source side's pieces out of the output, as
    training would: the translation is English words (at random), which DALL·E Mini can read."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if "embed_positions" in name or not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if tensor.ndim >= 2:
                tensor.copy_(noise / tensor.shape[-1] ** 0.5)
            else:  # layer norms' scales near 1, biases near 0
                tensor.copy_(1 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)
        # Unit-length token embeddings and no bias on the logits: no token wins every step by its size alone.
        shared = model.get_input_embeddings().weight
        shared.copy_(shared / shared.norm(dim=-1, keepdim=True))
        model.final_logits_bias.fill_(-30.0)
        model.final_logits_bias[0, english] = 0.0


def write_translation_repo(folder: Path, seed: int = 0, limits: bool = True, weights: str = "safetensors") -> Path:
    """opus-mt-zh-en in miniature at `folder` (created); returns it. `limits`: max_length and num_beams in the
    generation config; `weights`: "safetensors" or "bin" (pytorch_model.bin, with the DECOYS beside it)."""
    from transformers import MarianConfig, MarianMTModel

    folder.mkdir(parents=True, exist_ok=True)
    source, target = _sentencepiece(SOURCE_SENTENCES, 100), _sentencepiece(TARGET_SENTENCES, 80)
    (folder / "source.spm").write_bytes(source)
    (folder / "target.spm").write_bytes(target)
    special = ("<unk>", "<s>", "</s>")
    pieces = [p for p in dict.fromkeys(_pieces(source) + _pieces(target)) if p not in special]
    vocab = {"</s>": 0, "<unk>": 1, **{p: i for i, p in enumerate(pieces, 2)}}
    pad = len(vocab)
    vocab["<pad>"] = pad
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=2), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({"target_lang": "eng", "source_lang": "zho"}))
    generation = {"bad_words_ids": [[pad]], "decoder_start_token_id": pad, "pad_token_id": pad}
    generation |= {"bos_token_id": 0, "eos_token_id": 0, "forced_eos_token_id": 0}
    generation |= {"max_length": MAX_LENGTH, "num_beams": NUM_BEAMS} if limits else {}
    generation |= {"renormalize_logits": True}
    # without max_length the pipeline writes up to 256 new tokens: the positions table must hold them
    config = {**CONFIG, **generation, "vocab_size": pad + 1, "decoder_vocab_size": pad + 1}
    config["max_position_embeddings"] = CONFIG["max_position_embeddings"] if limits else 300
    config.pop("renormalize_logits")
    model = MarianMTModel(MarianConfig(**config))
    english = [vocab[p] for p in _pieces(target) if p not in special and p in vocab]
    _randomize(model, seed, [0, *english])
    model.save_pretrained(folder / "saved")
    (folder / "saved" / "model.safetensors").rename(folder / "model.safetensors")
    if weights == "bin":
        from safetensors.torch import load_file

        torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink()
        for name in DECOYS:
            (folder / name).write_bytes(b"not for PyTorch")
    for leftover in (folder / "saved").iterdir():
        leftover.unlink()
    (folder / "saved").rmdir()
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "generation_config.json").write_text(json.dumps({**generation, "transformers_version": "4.22.0.dev0"}))
    return folder


def write_t5_repo(folder: Path, source_spm: Path) -> Path:
    """A tiny random T5 (relative positions: no max_position_embeddings) with a sentencepiece vocabulary that reads
    Chinese, its tokenizer trained on 16 tokens (model_max_length)."""
    import sentencepiece
    from transformers import T5Config, T5ForConditionalGeneration, T5Tokenizer

    spm = sentencepiece.SentencePieceProcessor(model_file=str(source_spm))
    pieces = [(spm.id_to_piece(i), spm.get_score(i)) for i in range(spm.get_piece_size()) if not spm.is_control(i)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), *((p, score) for p, score in pieces if p != "<unk>"), ("<unk>", 0.0)]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=16)
    tokenizer.save_pretrained(folder)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    sizes = dict(vocab_size=len(tokenizer), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    tokens = dict(decoder_start_token_id=pad, pad_token_id=pad, eos_token_id=eos)
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config(**sizes, **tokens))
    model.generation_config.max_length = 8  # a random model seldom writes </s>: stop soon
    model.save_pretrained(folder)
    return folder
