"""Kandinsky 2.2 modules for the benchmarks: diffusers' pipelines (full size with random weights, or the tests' tiny
repos), ours adopted from their weights, FLOP counts, and each module called as its side's pipeline calls it."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from pathlib import Path

import torch
from common import flops, import_checkout, random_module

import_checkout()
from dalle_nodes.engine.checkpoints import load_strict  # noqa: E402
from dalle_nodes.models.movq import MoVQ, MoVQConfig  # noqa: E402
from dalle_nodes.models.prior import PriorConfig, PriorTransformer  # noqa: E402
from dalle_nodes.models.unet import KandinskyUNet, UNetConfig  # noqa: E402
from dalle_nodes.nodes import runtime, sockets  # noqa: E402
from dalle_nodes.pipelines.kandinsky22 import loading  # noqa: E402
from tiny_repos import (  # noqa: E402
    DECODER_CONFIGS,
    PRIOR_CONFIGS,
    real_config,
    write_decoder_repo,
    write_prior_repo,
    write_tokenizer,
)


def diffusers_config(path: Path) -> dict:
    return {k: v for k, v in real_config(path).items() if not k.startswith("_")}


def full_size_pipelines(folder: Path, device: torch.device, dtype: torch.dtype, seed: int) -> tuple:
    """diffusers' two pipelines around random full-size modules of the real configs; returns them with the configs."""
    from diffusers import (
        DDPMScheduler,
        KandinskyV22Pipeline,
        KandinskyV22PriorPipeline,
        UnCLIPScheduler,
        UNet2DConditionModel,
        VQModel,
    )
    from diffusers import PriorTransformer as DiffusersPrior
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    generator = torch.Generator(device).manual_seed(seed)
    configs = {
        "prior": diffusers_config(PRIOR_CONFIGS / "prior" / "config.json"),
        "unet": diffusers_config(DECODER_CONFIGS / "unet" / "config.json"),
        "movq": diffusers_config(DECODER_CONFIGS / "movq" / "config.json"),
    }
    vocab = write_tokenizer(folder / "tokenizer")  # a tiny BPE table: every id is far below the real vocabulary
    text_config = CLIPTextConfig(**real_config(PRIOR_CONFIGS / "text_encoder" / "config.json"))
    assert vocab <= text_config.vocab_size
    vision_config = CLIPVisionConfig(**real_config(PRIOR_CONFIGS / "image_encoder" / "config.json"))
    prior_pipe = KandinskyV22PriorPipeline(
        prior=random_module(lambda: DiffusersPrior(**configs["prior"]), device, dtype, generator),
        image_encoder=random_module(lambda: CLIPVisionModelWithProjection(vision_config), device, dtype, generator),
        text_encoder=random_module(lambda: CLIPTextModelWithProjection(text_config), device, dtype, generator),
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        scheduler=UnCLIPScheduler.from_config(real_config(PRIOR_CONFIGS / "scheduler" / "scheduler_config.json")),
        image_processor=CLIPImageProcessor.from_pretrained(PRIOR_CONFIGS / "image_processor"),
    )
    decoder_pipe = KandinskyV22Pipeline(
        unet=random_module(lambda: UNet2DConditionModel(**configs["unet"]), device, dtype, generator),
        scheduler=DDPMScheduler.from_config(real_config(DECODER_CONFIGS / "scheduler" / "scheduler_config.json")),
        movq=random_module(lambda: VQModel(**configs["movq"]), device, dtype, generator),
    )
    return prior_pipe, decoder_pipe, configs


def tiny_pipelines(folder: Path) -> tuple:
    """The tiny repos the tests use (weights scaled for a real, unclamped picture), loaded by diffusers in fp32."""
    from diffusers import KandinskyV22Pipeline, KandinskyV22PriorPipeline

    prior_repo = write_prior_repo(folder / "prior")
    decoder_repo = write_decoder_repo(folder / "decoder")
    prior_pipe = KandinskyV22PriorPipeline.from_pretrained(prior_repo, dtype=torch.float32)
    decoder_pipe = KandinskyV22Pipeline.from_pretrained(decoder_repo, dtype=torch.float32)
    configs = {
        "prior": real_config(prior_repo / "prior" / "config.json"),
        "unet": real_config(decoder_repo / "unet" / "config.json"),
        "movq": real_config(decoder_repo / "movq" / "config.json"),
    }
    return prior_pipe, decoder_pipe, configs


def adopt(module: torch.nn.Module, config: dict, config_cls, module_cls, dtype: torch.dtype, what: str):
    """Our module of the same config with the diffusers module's weights (strict), converted to our dtype: the
    loaders' own path (modern_attention_keys, load_strict), from memory instead of a file."""
    state = loading.modern_attention_keys(module.state_dict())
    state = {key: value.to(dtype, copy=True) for key, value in state.items()}
    return load_strict(lambda: module_cls(config_cls.from_diffusers(config)), state, f"our {what}")


def in_dtype(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """The shared transformers tower itself, or a copy of it in our dtype."""
    current = next(module.parameters()).dtype
    return module if current == dtype else copy.deepcopy(module).to(dtype)


def resident_bytes(*modules: torch.nn.Module) -> int:
    tensors = itertools.chain.from_iterable(itertools.chain(m.parameters(), m.buffers()) for m in modules)
    return sum(t.numel() * t.element_size() for t in {id(t): t for t in tensors}.values())


def count_flops(configs: dict, size: int) -> dict[str, int]:
    """FLOPs from shapes alone, on the meta device: a UNet step and a prior step (diffusers' whole forward; ours: its
    step on the encoded text, and the encode_text it runs once per generation) at batch 2 (one image, guided), one
    MoVQ decode."""
    latent = size // 8
    with torch.device("meta"):
        unet = KandinskyUNet(UNetConfig.from_diffusers(configs["unet"]))
        movq = MoVQ(MoVQConfig.from_diffusers(configs["movq"]))
        prior = PriorTransformer(PriorConfig.from_diffusers(configs["prior"]))
        dim, t = prior.config.embedding_dim, torch.tensor(500)
        embeds, states, mask = torch.empty(2, dim), torch.empty(2, 77, dim), torch.ones(2, 77, dtype=torch.bool)
        return {
            "unet": flops(lambda: unet(torch.empty(2, 4, latent, latent), t, embeds)),
            "prior": flops(lambda: prior(embeds, t, embeds, states, mask)),
            "prior_ours_step": flops(lambda: prior.step(embeds, t, prior.encode_text(embeds, states, mask)))
            - flops(lambda: prior.encode_text(embeds, states, mask)),
            "prior_encode_text": flops(lambda: prior.encode_text(embeds, states, mask)),
            "movq": flops(lambda: movq.decode(torch.empty(1, 4, latent, latent))),
        }


def ours_calls(what: str, module: torch.nn.Module, inputs: dict, compile: bool = False) -> dict[str, Callable]:
    """Our module `what` called as our nodes call it (`compile`: as the decoder loader's input of that name). The
    prior sampler encodes the text once per generation (encode_text: the keys and values of the 78 tokens that are
    the same at every step) and runs each step on that: done here, outside the step, and also a call of its own."""
    i = inputs
    if what == "unet":
        unet_call = sockets.DecoderModel(runtime.ManagedModule(module), compile).unet_call(module)
        return {"unet_step": lambda: unet_call(i["x"], i["t"], i["embeds"])}
    if what == "movq":
        decode = sockets.MoVQModel(runtime.ManagedModule(module), compile).decode_call(module)
        return {"movq_decode": lambda: decode(i["z"])}
    text = module.encode_text(i["embeds"], i["states"], i["mask"])
    return {
        "prior_step": lambda: module.step(i["embeds"], i["t"], text),
        "prior_encode_text": lambda: module.encode_text(i["embeds"], i["states"], i["mask"]),
    }


def diffusers_calls(what: str, module: torch.nn.Module, inputs: dict) -> dict[str, Callable]:
    """diffusers' module `what` called as its pipelines call it."""
    i = inputs
    if what == "unet":
        image = {"image_embeds": i["embeds"]}
        return {"unet_step": lambda: module(i["x"], i["t"], None, added_cond_kwargs=image, return_dict=False)}
    if what == "movq":
        return {"movq_decode": lambda: module.decode(i["z"], force_not_quantize=True)}
    text = {"proj_embedding": i["embeds"], "encoder_hidden_states": i["states"], "attention_mask": i["mask"]}
    return {"prior_step": lambda: module(i["embeds"], i["t"], **text)}


def module_calls(side: str, modules: dict, inputs: dict) -> dict[str, Callable[[], object]]:
    """One UNet step, one prior step and one MoVQ decode (of the modules in `modules` among "unet", "prior" and
    "movq"), called as the side's pipeline calls them, on `inputs` (t, x, embeds, states, mask, z)."""
    calls = {}
    for what in ("unet", "prior", "movq"):
        if what not in modules:
            continue
        if side.startswith("ours"):
            calls |= ours_calls(what, modules[what], inputs, compile=side == "ours_compiled")
        else:
            calls |= diffusers_calls(what, modules[what], inputs)
    return calls
