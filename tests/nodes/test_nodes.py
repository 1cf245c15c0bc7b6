"""Nodes called as ComfyUI calls them (keyword inputs from INPUT_TYPES), without ComfyUI installed."""

from __future__ import annotations

import pytest
import torch

import dalle_nodes
from dalle_nodes.engine import compiled, cuda_graph
from dalle_nodes.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, loaders, runtime, sockets
from dalle_nodes.pipelines.kandinsky22 import loading
from dalle_nodes.pipelines.kandinsky22 import memory as kandinsky22_memory
from node_calls import call

CONTRACT = {  # the node contract shared workflows rely on: id → (required inputs, output types)
    "DalleLoadPrior": ({"repo_id", "revision", "dtype"}, ("DALLE_PRIOR", "DALLE_TEXT_ENCODER")),
    "DalleLoadDecoder": ({"repo_id", "revision", "dtype"}, ("DALLE_DECODER", "DALLE_VQ_VAE", "MODEL", "VAE")),
    "DalleTextEncode": ({"text_encoder", "text"}, ("DALLE_TEXT_EMBEDS",)),
    "DallePriorSample": ({"prior", "positive", "seed", "steps", "guidance", "batch_size"}, ("DALLE_IMAGE_EMBEDS",)),
    "DalleDecoderSample": (
        {"decoder", "image_embeds", "width", "height", "steps", "guidance", "sampler", "seed"},
        ("LATENT",),
    ),
    "DalleVQDecode": ({"vq_vae", "latent"}, ("IMAGE",)),
    "DalleVQEncode": ({"vq_vae", "image"}, ("LATENT",)),
    "DalleLoadMini": ({"repo_id", "variant", "dtype"}, ("DALLE_BART", "DALLE_VQGAN")),
    "DalleTokenSample": (
        {"bart", "text", "seed", "batch_size", "top_k", "temperature", "supercondition"},
        ("DALLE_IMAGE_TOKENS",),
    ),
    "DalleVQGANDecode": ({"vqgan", "tokens"}, ("IMAGE",)),
    "DalleLoadUpscaler": ({"repo_id", "filename", "revision"}, ("UPSCALE_MODEL",)),
    "DalleLoadCLIP": ({"repo_id", "revision", "dtype"}, ("DALLE_CLIP",)),
    "DalleCLIPRerank": ({"images", "text", "keep"}, ("IMAGE", "FLOAT", "STRING", "INT")),
    "DalleGANUpscale": ({"upscale_model", "image", "tile", "overlap"}, ("IMAGE",)),
    "DalleImageEmbedsToConditioning": ({"image_embeds"}, ("CONDITIONING", "CONDITIONING")),
    "DalleLoadCLIPVision": ({"repo_id", "revision"}, ("CLIP_VISION", "CONDITIONING")),
    "DalleLoadDepthModel": ({"repo_id", "revision", "dtype"}, ("DALLE_DEPTH_MODEL",)),
    "DalleDepthMap": ({"depth_model", "image"}, ("IMAGE",)),
}


def test_package_exports_the_contract() -> None:
    assert dalle_nodes.NODE_CLASS_MAPPINGS is NODE_CLASS_MAPPINGS
    assert set(NODE_DISPLAY_NAME_MAPPINGS) == set(NODE_CLASS_MAPPINGS)
    assert not runtime.IN_COMFYUI
    for node_id, (required, outputs) in CONTRACT.items():
        cls = NODE_CLASS_MAPPINGS[node_id]
        types = cls.INPUT_TYPES()
        assert required <= set(types["required"]), node_id
        assert cls.RETURN_TYPES == outputs
        assert callable(getattr(cls, cls.FUNCTION)) and cls.CATEGORY and cls.DESCRIPTION
        for name, spec in {**types["required"], **types.get("optional", {})}.items():
            if (
                isinstance(spec[0], str)
                and spec[0] in ("INT", "FLOAT", "STRING", "BOOLEAN")
                or isinstance(spec[0], list)
            ):
                assert "tooltip" in spec[1] or name in ("seed", "vq_vae", "latent"), f"{node_id}.{name} has no tooltip"


def test_decoder_defaults_follow_the_contract() -> None:
    required = NODE_CLASS_MAPPINGS["DalleDecoderSample"].INPUT_TYPES()["required"]
    assert (required["width"][1]["default"], required["height"][1]["default"]) == (768, 768)
    assert (required["steps"][1]["default"], required["guidance"][1]["default"]) == (50, 4.0)
    prior = NODE_CLASS_MAPPINGS["DallePriorSample"].INPUT_TYPES()["required"]
    assert (prior["steps"][1]["default"], prior["guidance"][1]["default"]) == (25, 4.0)
    loader = NODE_CLASS_MAPPINGS["DalleLoadPrior"].INPUT_TYPES()["required"]
    assert loader["repo_id"][1]["default"] == "kandinsky-community/kandinsky-2-2-prior"


@pytest.fixture()
def models(tiny_prior_repo, tiny_decoder_repo):
    prior, text_encoder = call("DalleLoadPrior", repo_id=str(tiny_prior_repo), dtype="fp32")
    decoder, vq_vae, _, _ = call("DalleLoadDecoder", repo_id=str(tiny_decoder_repo), dtype="fp32")
    return prior, text_encoder, decoder, vq_vae


@pytest.mark.parametrize(
    "sampler, karras", [("ddpm", False), ("ddim", False), ("dpmpp_2m", True), ("euler_ancestral", False)]
)
def test_every_sampler_runs_the_chain(models, sampler, karras) -> None:
    prior, text_encoder, decoder, vq_vae = models
    (positive,) = call("DalleTextEncode", text_encoder=text_encoder, text="a cat")
    (embeds,) = call("DallePriorSample", prior=prior, positive=positive, steps=3, batch_size=2, seed=1)
    (latent,) = call(
        "DalleDecoderSample",
        decoder=decoder,
        image_embeds=embeds,
        width=64,
        height=128,
        steps=4,
        sampler=sampler,
        karras=karras,
        seed=5,
    )
    (image,) = call("DalleVQDecode", vq_vae=vq_vae, latent=latent)
    assert image.shape == (2, 128, 64, 3) and image.dtype == torch.float32
    assert torch.isfinite(image).all() and 0 <= image.min() and image.max() <= 1
    assert not torch.equal(image[0], image[1])  # the batch holds different samples


def test_same_seed_same_image_other_seed_other_image(models) -> None:
    prior, text_encoder, decoder, _ = models
    (positive,) = call("DalleTextEncode", text_encoder=text_encoder, text="a dog")

    def latent(seed: int) -> torch.Tensor:
        (embeds,) = call("DallePriorSample", prior=prior, positive=positive, steps=3, seed=seed)
        return call(
            "DalleDecoderSample", decoder=decoder, image_embeds=embeds, width=64, height=64, steps=3, seed=seed
        )[0]["samples"]

    assert torch.equal(latent(3), latent(3))
    assert not torch.allclose(latent(3), latent(4))


def test_loaded_models_are_reused(tiny_prior_repo, tiny_decoder_repo) -> None:
    first = call("DalleLoadPrior", repo_id=str(tiny_prior_repo), dtype="fp32")
    assert call("DalleLoadPrior", repo_id=str(tiny_prior_repo), dtype="fp32") is first
    other = call("DalleLoadPrior", repo_id=str(tiny_prior_repo), dtype="bf16")
    assert other is not first and next(other[0].prior.module.parameters()).dtype == torch.bfloat16


def test_zero_image_embedding_is_computed_once_and_cached_on_disk(tiny_prior_repo, monkeypatch) -> None:
    from diffusers import KandinskyV22PriorPipeline

    loaders._loaded.clear()
    prior, _ = call("DalleLoadPrior", repo_id=str(tiny_prior_repo), dtype="fp32")
    embed = prior.zero_image_embed()
    reference = KandinskyV22PriorPipeline.from_pretrained(tiny_prior_repo).get_zero_embed(device="cpu")
    assert torch.allclose(embed, reference, atol=1e-6)
    assert len(list((runtime.cache_dir() / "zero_image_embeds").glob("*.safetensors"))) == 1

    load = loading.clip_model

    def image_encoder_must_not_load(class_name: str, *args):
        if class_name == "CLIPVisionModelWithProjection":
            raise AssertionError("the image encoder was loaded although its zero embedding is cached")
        return load(class_name, *args)

    monkeypatch.setattr(loading, "clip_model", image_encoder_must_not_load)
    loaders._loaded.clear()
    prior, _ = call("DalleLoadPrior", repo_id=str(tiny_prior_repo), dtype="fp32")
    assert torch.equal(prior.zero_image_embed(), embed)


def test_img2img_matches_diffusers(models, tiny_decoder_repo) -> None:
    from diffusers import KandinskyV22Img2ImgPipeline

    prior, text_encoder, decoder, vq_vae = models
    (positive,) = call("DalleTextEncode", text_encoder=text_encoder, text="a cat")
    (embeds,) = call("DallePriorSample", prior=prior, positive=positive, steps=3, seed=2)
    # square: the reference's image_processor.preprocess(image, width, height) swaps the two, so non-square
    # images are resized there (the txt2img chain test covers non-square sizes)
    image = torch.rand(1, 128, 128, 3, generator=torch.Generator().manual_seed(0))
    (latent,) = call("DalleVQEncode", vq_vae=vq_vae, image=image)
    (ours,) = call(
        "DalleDecoderSample", decoder=decoder, image_embeds=embeds, latent=latent, denoise=0.6, steps=10, seed=9
    )

    pipe = KandinskyV22Img2ImgPipeline.from_pretrained(tiny_decoder_repo)
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(
        image=image.permute(0, 3, 1, 2),
        image_embeds=embeds.positive,
        negative_image_embeds=embeds.negative,
        width=128,
        height=128,
        num_inference_steps=10,
        strength=0.6,
        guidance_scale=4.0,
        generator=torch.Generator("cpu").manual_seed(9),
        output_type="latent",
    ).images
    assert ((ours["samples"] - reference).abs().max() / reference.abs().max()).item() < 1e-4


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"width": 100}, "width 100 is not supported: use a multiple of 64 between 64 and 4096 \\(e.g. 128\\)"),
        ({"height": 8192}, "height 8192 is not supported"),
        ({"steps": 0}, "steps must be between 1 and 999 \\(got 0\\)"),
        ({"sampler": "heun"}, "sampler must be one of ddpm, ddim, dpmpp_2m, euler_ancestral \\(got 'heun'\\)"),
        ({"karras": True}, "karras sigmas apply to the dpmpp_2m sampler only"),
        ({"denoise": 0.5}, "denoise below 1 needs a starting latent"),
        (
            {"latent": {"samples": torch.zeros(1, 16, 8, 8)}},
            "latent has 16 channels, but Kandinsky 2.2 \\(MoVQ\\) latents have 4",
        ),
    ],
)
def test_decoder_input_errors(models, inputs, message) -> None:
    prior, text_encoder, decoder, _ = models
    (positive,) = call("DalleTextEncode", text_encoder=text_encoder, text="a cat")
    (embeds,) = call("DallePriorSample", prior=prior, positive=positive, steps=2)
    with pytest.raises(ValueError, match=message):
        call("DalleDecoderSample", decoder=decoder, image_embeds=embeds, **{"width": 64, "height": 64, **inputs})


@pytest.mark.parametrize("text", ["", "   \n"])
def test_empty_prompt_is_refused(models, text) -> None:
    with pytest.raises(ValueError, match="The prompt is empty"):
        call("DalleTextEncode", text_encoder=models[1], text=text)


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"steps": 1}, "prior steps must be between 2 and 1000"),
        ({"batch_size": 0}, "batch_size must be between 1 and 64"),
    ],
)
def test_prior_input_errors(models, inputs, message) -> None:
    (positive,) = call("DalleTextEncode", text_encoder=models[1], text="a cat")
    with pytest.raises(ValueError, match=message):
        call("DallePriorSample", prior=models[0], positive=positive, **inputs)


def test_vq_encode_needs_sizes_the_decoder_samples(models) -> None:
    with pytest.raises(ValueError, match="The image is 70x64: the decoder cannot sample a latent of that size"):
        call("DalleVQEncode", vq_vae=models[3], image=torch.rand(1, 64, 70, 3))


def test_empty_repo_id(models) -> None:
    with pytest.raises(ValueError, match="repo_id is empty"):
        call("DalleLoadPrior", repo_id="  ")


def test_zero_image_embedding_follows_new_weights(tiny_prior_repo, tmp_path) -> None:
    """Replacing the image encoder's weights must not serve the embedding cached for the old ones."""
    import shutil

    from safetensors.torch import load_file, save_file

    repo = tmp_path / "prior"
    shutil.copytree(tiny_prior_repo, repo)
    loaders._loaded.clear()
    before = call("DalleLoadPrior", repo_id=str(repo), dtype="fp32")[0].zero_image_embed()
    weights = repo / "image_encoder" / "model.safetensors"
    save_file({k: v * 1.5 if k == "visual_projection.weight" else v for k, v in load_file(weights).items()}, weights)
    loaders._loaded.clear()
    after = call("DalleLoadPrior", repo_id=str(repo), dtype="fp32")[0].zero_image_embed()
    assert torch.allclose(after, before * 1.5, rtol=1e-4, atol=1e-6)
    assert len(list((runtime.cache_dir() / "zero_image_embeds").glob("*.safetensors"))) == 2


def test_each_stage_asks_comfyui_for_room_for_its_activations(models, monkeypatch) -> None:
    """The decoder, prior and VQ nodes hand ComfyUI their activation estimates (pipelines/kandinsky22/memory.py), so
    that it offloads other models first; here on the CPU, so with the math path's attention."""
    prior, text_encoder, decoder, vq_vae = models
    asked = []
    load = runtime.ManagedModule.load
    monkeypatch.setattr(
        runtime.ManagedModule, "load", lambda self, memory_required=0: asked.append(memory_required) or load(self)
    )
    (positive,) = call("DalleTextEncode", text_encoder=text_encoder, text="a cat")
    (negative,) = call("DalleTextEncode", text_encoder=text_encoder, text="blurry")
    call("DallePriorSample", prior=prior, positive=positive, negative=negative, steps=2, batch_size=2, seed=1)
    (embeds,) = call("DallePriorSample", prior=prior, positive=positive, steps=2, batch_size=2, seed=1)
    (latent,) = call("DalleDecoderSample", decoder=decoder, image_embeds=embeds, width=64, height=128, steps=2, seed=5)
    call("DalleVQDecode", vq_vae=vq_vae, latent=latent)
    call("DalleVQEncode", vq_vae=vq_vae, image=torch.rand(1, 128, 64, 3))

    prior_config, dtype = prior.prior.module.config, torch.float32
    math = {"fused_attention": False}
    movq_config = vq_vae.movq.module.config
    assert asked == [
        0,  # the text encoder: a few MiB, within ComfyUI's own reserve (as the image encoder below)
        0,  # the second prompt
        kandinsky22_memory.prior_step_bytes(prior_config, 3 * 2, dtype, **math),  # negative, prompt, negative rows
        0,  # the image encoder, once, for the zero-image embedding
        kandinsky22_memory.prior_step_bytes(prior_config, 2 * 2, dtype, **math),  # unconditional and prompt rows
        kandinsky22_memory.unet_step_bytes(decoder.unet.module.config, 2 * 2, 16, 8, dtype, **math),
        kandinsky22_memory.movq_decode_bytes(movq_config, 128, 64, dtype, **math),
        kandinsky22_memory.movq_encode_bytes(movq_config, 128, 64, dtype, **math),
    ]
    assert all(asked[i] > 0 for i in (2, 4, 5, 6, 7))


def test_prior_sample_follows_the_cuda_graph_switch(models, monkeypatch, cuda_graph_switch) -> None:
    """With a device that could capture, the prior node records its step as a CUDA graph unless switched off."""
    prior, text_encoder, _, _ = models
    seen = []
    graphed = cuda_graph.graphed
    monkeypatch.setattr(cuda_graph, "can_capture", lambda device: True)
    monkeypatch.setattr(cuda_graph.GraphedCall, "capture", lambda self: None)  # replays run the call on the CPU
    monkeypatch.setattr(cuda_graph, "graphed", lambda *args, **kwargs: seen.append(True) or graphed(*args, **kwargs))
    (positive,) = call("DalleTextEncode", text_encoder=text_encoder, text="a cat")
    call("DallePriorSample", prior=prior, positive=positive, steps=2, seed=1)
    assert seen == ([True] if cuda_graph_switch else [])


def test_vq_encode_hands_on_contiguous_latents(models) -> None:
    """With compile the MoVQ is channels-last; its latents must not carry that layout into the sampler, where the
    compiled UNet would compile a second graph for it."""
    _, _, _, vq_vae = models
    vq_vae.movq.module.to(memory_format=torch.channels_last)
    try:
        (latent,) = call("DalleVQEncode", vq_vae=vq_vae, image=torch.rand(1, 64, 64, 3))
    finally:
        vq_vae.movq.module.to(memory_format=torch.contiguous_format)
    assert latent["samples"].is_contiguous()


def test_decoder_compile_falls_back_to_the_eager_layout(models, monkeypatch) -> None:
    """Where compiling fails, the UNet leaves the channels-last layout (slower in eager) it was given for it."""
    _, _, decoder, _ = models

    def broken_backend(graph_module, example_inputs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setitem(compiled.OPTIONS, "backend", broken_backend)
    unet = decoder.unet.module.to(memory_format=torch.channels_last)
    compiled_decoder = sockets.DecoderModel(decoder.unet, compile=True)
    forward = compiled_decoder.unet_call(unet)
    with torch.inference_mode():
        forward(torch.randn(2, 4, 8, 8), torch.tensor(10), torch.randn(2, unet.config.image_embed_dim))
    assert not forward.ok and compiled_decoder.unet_call(unet) is forward
    assert unet.conv_in.weight.is_contiguous()


@pytest.mark.parametrize(
    "removed", [("special_tokens_map.json",), ("tokenizer_config.json", "special_tokens_map.json")]
)
def test_a_tokenizer_folder_needs_only_vocab_and_merges(tiny_prior_repo, tmp_path, removed) -> None:
    """transformers 5's save_pretrained writes no special_tokens_map.json (tokenizer_config.json holds the special
    tokens): such a folder encodes as the full one. With vocab.json and merges.txt alone CLIP's default padding
    token stands in for the repo's, which changes only the padded positions, which the prior masks out."""
    import shutil

    repo = tmp_path / "prior"
    shutil.copytree(tiny_prior_repo, repo)
    for name in removed:
        (repo / "tokenizer" / name).unlink()
    full = call("DalleTextEncode", text_encoder=call("DalleLoadPrior", repo_id=str(tiny_prior_repo))[1], text="a cat")
    loaders._loaded.clear()
    reduced = call("DalleTextEncode", text_encoder=call("DalleLoadPrior", repo_id=str(repo))[1], text="a cat")
    full, reduced = full[0].prompt, reduced[0].prompt
    assert torch.equal(reduced.pooled, full.pooled) and torch.equal(reduced.mask, full.mask)
    real = full.mask[0]
    assert real.sum() == 4  # start, "a", "cat", end
    if len(removed) == 1:
        assert torch.equal(reduced.states, full.states)
    else:
        assert torch.equal(reduced.states[:, real], full.states[:, real])


class Cancelled(Exception):
    """Stands in for ComfyUI's InterruptProcessingException."""


@pytest.mark.parametrize("stage", ["prior", "decoder"])
def test_cancel_stops_sampling_within_a_step(models, monkeypatch, stage) -> None:
    """Every sampling step ends at ComfyUI's interrupt check (runtime.Progress.update): a Cancel pressed during step
    k stops the node before step k + 1 runs (the real-ComfyUI suite shows the check is ComfyUI's own Cancel)."""
    prior, text_encoder, decoder, _ = models
    (positive,) = call("DalleTextEncode", text_encoder=text_encoder, text="a cat")
    (embeds,) = call("DallePriorSample", prior=prior, positive=positive, steps=2, seed=1)
    module = prior.prior.module if stage == "prior" else decoder.unet.module
    calls, checks = [], []
    per_step = "step" if stage == "prior" else "forward"  # the prior encodes the text once, then steps
    model_call = getattr(type(module), per_step)
    monkeypatch.setattr(type(module), per_step, lambda self, *args: calls.append(1) or model_call(self, *args))

    def check() -> None:
        checks.append(1)
        if len(checks) == 3:  # the user pressed Cancel during the third step
            raise Cancelled

    monkeypatch.setattr(runtime, "check_interrupt", check)
    with pytest.raises(Cancelled):
        if stage == "prior":
            call("DallePriorSample", prior=prior, positive=positive, steps=20, seed=1)
        else:
            call("DalleDecoderSample", decoder=decoder, image_embeds=embeds, width=64, height=64, steps=20, seed=1)
    assert len(calls) == 3  # one guided model call per step: no step ran after the Cancel


@pytest.mark.parametrize(
    "node, inputs, message",
    [
        ("DalleTextEncode", {"text": "  "}, "The prompt is empty"),
        ("DallePriorSample", {"batch_size": 65}, "batch_size must be between 1 and 64"),
        ("DallePriorSample", {"guidance": float("nan")}, "guidance must be between"),
        ("DalleDecoderSample", {"guidance": float("inf")}, "guidance must be between"),
        ("DalleDecoderSample", {"steps": 1000}, "steps must be between 1 and 999"),
        ("DalleVQEncode", {"image": torch.rand(1, 100, 100, 3)}, "100x100: the decoder cannot sample"),
    ],
)
def test_inputs_are_checked_before_any_model_loads(models, monkeypatch, node, inputs, message) -> None:
    prior, text_encoder, decoder, vq_vae = models
    (positive,) = call("DalleTextEncode", text_encoder=text_encoder, text="a cat")
    (embeds,) = call("DallePriorSample", prior=prior, positive=positive, steps=2, seed=1)
    prior._zero_embed = None  # so that computing it again would load the image encoder
    sockets = {
        "DalleTextEncode": {"text_encoder": text_encoder},
        "DallePriorSample": {"prior": prior, "positive": positive, "steps": 2},
        "DalleDecoderSample": {"decoder": decoder, "image_embeds": embeds, "width": 64, "height": 64},
        "DalleVQEncode": {"vq_vae": vq_vae},
    }[node]
    loaded = []
    monkeypatch.setattr(runtime.ManagedModule, "load", lambda self, memory_required=0: loaded.append(self))
    with pytest.raises(ValueError, match=message):
        call(node, **sockets, **inputs)
    assert loaded == []
