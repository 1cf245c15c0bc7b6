"""DALL·E Mini nodes called as ComfyUI calls them, on tiny repos in kuprel/min-dalle's layout (and one real-size)."""

import json
import shutil
import warnings

import pytest
import torch

from dalle_nodes.engine import cuda_graph
from dalle_nodes.engine.checkpoints import CheckpointError
from dalle_nodes.models import dalle_bart
from dalle_nodes.models.dalle_bart import Hyperparameters
from dalle_nodes.nodes import loaders, runtime
from dalle_nodes.nodes.mini import DalleLoadMini, DalleTokenSample, DalleVQGANDecode
from dalle_nodes.pipelines.dalle_mini import loading, stages
from tiny_repos import MIN_DALLE_FILES, TINY_MIN_DALLE, min_dalle_layout, min_dalle_reference, write_min_dalle_repo

NODES = (DalleLoadMini, DalleTokenSample, DalleVQGANDecode)
REAL_MINI = dalle_bart.HYPERPARAMETERS["mini"]


def call(cls, **inputs):
    """Fill unspecified widget inputs with their defaults, then call FUNCTION by keyword, as ComfyUI does."""
    for name, spec in cls.INPUT_TYPES()["required"].items():
        if name not in inputs and len(spec) > 1 and "default" in spec[1]:
            inputs[name] = spec[1]["default"]
    return getattr(cls(), cls.FUNCTION)(**inputs)


@pytest.fixture(autouse=True)
def fresh_models(monkeypatch) -> None:
    """Tiny sizes for both variants (the node has no hyperparameter input), and no model kept between tests."""
    for variant in dalle_bart.HYPERPARAMETERS:
        monkeypatch.setitem(dalle_bart.HYPERPARAMETERS, variant, Hyperparameters(**TINY_MIN_DALLE))
    monkeypatch.setattr(loaders, "_loaded", {})


def test_node_contract() -> None:
    assert not runtime.IN_COMFYUI
    for cls in NODES:
        assert cls.CATEGORY == "DALL·E/DALL·E Mini (DALL·E 1)" and cls.DESCRIPTION
        types = cls.INPUT_TYPES()
        for name, spec in {**types["required"], **types.get("optional", {})}.items():
            assert "tooltip" in spec[1], f"{cls.__name__}.{name} has no tooltip"
    loader = DalleLoadMini.INPUT_TYPES()["required"]
    assert loader["repo_id"][1]["default"] == "kuprel/min-dalle" and loader["variant"][0] == ["mega", "mini"]
    sample = DalleTokenSample.INPUT_TYPES()["required"]
    defaults = {name: sample[name][1]["default"] for name in ("top_k", "temperature", "supercondition")}
    assert defaults == {"top_k": 256, "temperature": 1.0, "supercondition": 16.0}
    assert DalleLoadMini.RETURN_TYPES == ("DALLE_BART", "DALLE_VQGAN")
    assert DalleTokenSample.RETURN_TYPES == ("DALLE_IMAGE_TOKENS",) and DalleVQGANDecode.RETURN_TYPES == ("IMAGE",)


def test_chain_from_a_local_folder(tiny_min_dalle_repo, monkeypatch) -> None:
    steps = []

    class Counting(runtime.Progress):
        def update(self, n: int = 1) -> None:
            steps.append(n)
            super().update(n)

    monkeypatch.setattr(runtime, "Progress", Counting)
    bart, vqgan = call(DalleLoadMini, repo_id=str(tiny_min_dalle_repo), dtype="fp32")
    assert call(DalleLoadMini, repo_id=str(tiny_min_dalle_repo), dtype="fp32") == (bart, vqgan)  # reused
    assert bart.variant == "mega" and bart.bart.dtype == torch.float32  # fp16 files, loaded as asked

    (tokens,) = call(DalleTokenSample, bart=bart, text="a cat on a table", seed=5, batch_size=2)
    assert tokens.shape == (2, 16, 16) and tokens.dtype == torch.long and tokens.max() < 2**14
    assert len(steps) == 256
    (again,) = call(DalleTokenSample, bart=bart, text="a cat on a table", seed=5, batch_size=2)
    assert torch.equal(tokens, again)
    (other,) = call(DalleTokenSample, bart=bart, text="a cat on a table", seed=6, batch_size=2)
    assert not torch.equal(tokens, other)

    (image,) = call(DalleVQGANDecode, vqgan=vqgan, tokens=tokens[:1])  # one image: 250 GFLOP on the CPU
    assert image.shape == (1, 256, 256, 3) and image.dtype == torch.float32
    assert image.device == runtime.output_device()
    assert 0 <= image.min() and image.max() <= 1 and image.std() > 0.01


def test_hub_layout_store_fetches_only_the_variants_files(tiny_min_dalle_repo, tmp_path, monkeypatch) -> None:
    store = tmp_path / "store"
    folder = store / "kuprel--min-dalle"
    folder.mkdir(parents=True)
    for name in (*MIN_DALLE_FILES["mini"], "detoker.pt"):  # no Mega files at all
        (folder / name).symlink_to(tiny_min_dalle_repo / name)
    monkeypatch.setenv("DALLE_NODES_HOME", str(store))

    bart, _ = call(DalleLoadMini, variant="mini", dtype="fp32")
    assert bart.variant == "mini"
    (tokens,) = call(DalleTokenSample, bart=bart, text="a fox", seed=1, batch_size=1)
    assert tokens.shape == (1, 16, 16)
    with pytest.raises(CheckpointError, match="'vocab.json' of kuprel/min-dalle@main is not downloaded yet"):
        call(DalleLoadMini, variant="mega", dtype="fp32")


def test_real_size_mini_loads(tmp_path, monkeypatch) -> None:
    """Random weights at the real Mini size (0.44B parameters; stored in fp16 to keep the test short)."""
    monkeypatch.setitem(dalle_bart.HYPERPARAMETERS, "mini", REAL_MINI)
    write_min_dalle_repo(tmp_path, "mini", None, seed=0, dtype=torch.float16)
    bart, vqgan = call(DalleLoadMini, repo_id=str(tmp_path), variant="mini", dtype="fp32")
    model = bart.bart.module
    assert bart.bart.dtype == torch.float32
    assert sum(p.numel() for p in model.encoder.parameters()) == 202_649_584
    assert sum(p.numel() for p in model.decoder.parameters()) == 235_313_136
    assert sum(p.numel() for p in vqgan.vqgan.module.parameters()) == 46_709_891
    with torch.inference_mode():  # one step at full width, not a whole sampling run
        tokens = stages.text_tokens(bart.tokenizer.encode("a fox in the snow"))
        cache = model.decoder.start(model.encoder(tokens), tokens, 1)
        logits = model.decoder(torch.tensor([dalle_bart.START_TOKEN]), cache.positions[:1], cache)
    assert logits.shape == (2, 2**14) and logits.isfinite().all()


@pytest.fixture()
def tiny_bart(tiny_min_dalle_repo):
    return call(DalleLoadMini, repo_id=str(tiny_min_dalle_repo), variant="mini", dtype="fp32")[0]


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"text": ""}, "prompt is empty"),
        ({"text": "  \n "}, "prompt is empty"),
        ({"text": "東京の夜景"}, "no words DALL·E Mini can read"),
        ({"batch_size": 0}, "batch_size must be between 1 and 64"),
        ({"batch_size": 65}, "batch_size must be between 1 and 64"),
        ({"top_k": 0}, "top_k must be between 1 and 16384"),
        ({"top_k": 16385}, "top_k must be between 1 and 16384"),
        ({"temperature": 0.0}, "temperature must be between 0.01 and 10.0"),
    ],
)
def test_bad_sampling_inputs(tiny_bart, inputs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(DalleTokenSample, bart=tiny_bart, **{"text": "a cat", "seed": 0, **inputs})


def test_decoder_file_in_the_encoders_place(tiny_min_dalle_repo, tmp_path) -> None:
    for name in ("vocab.json", "merges.txt", "decoder.pt", "detoker.pt"):
        (tmp_path / name).symlink_to(tiny_min_dalle_repo / name)
    shutil.copy(tiny_min_dalle_repo / "decoder.pt", tmp_path / "encoder.pt")
    with pytest.raises(CheckpointError, match=r"mega encoder '.*encoder.pt'.*wrong architecture.*of another shape"):
        call(DalleLoadMini, repo_id=str(tmp_path), dtype="fp32")


def test_bad_loader_and_decoder_inputs(tiny_min_dalle_repo, tmp_path) -> None:
    with pytest.raises(ValueError, match="variant must be one of mega, mini"):
        call(DalleLoadMini, repo_id=str(tiny_min_dalle_repo), variant="large")
    with pytest.raises(CheckpointError, match="vocab_mini.json' is missing"):
        call(DalleLoadMini, repo_id=str(tmp_path), variant="mini")
    _, vqgan = call(DalleLoadMini, repo_id=str(tiny_min_dalle_repo), dtype="fp32")
    with pytest.raises(ValueError, match="square number of images"):
        call(DalleVQGANDecode, vqgan=vqgan, tokens=torch.zeros(2, 16, 16, dtype=torch.long), seamless=True)
    with pytest.raises(ValueError, match=r"must be image tokens \[batch, 16, 16\] of int64"):
        call(DalleVQGANDecode, vqgan=vqgan, tokens=torch.zeros(2, 256, dtype=torch.long))


def test_token_sample_draws_from_the_compute_devices_generator(tiny_bart, monkeypatch) -> None:
    """The node seeds a generator on the device the model runs on (a CUDA GPU's own there, see
    sampling_generator); on the CPU that is min-dalle's CPU stream, so seed 0 gives a CPU generator's tokens."""
    made = []
    make = stages.sampling_generator
    monkeypatch.setattr(
        stages, "sampling_generator", lambda seed, device: made.append((seed, device)) or make(seed, device)
    )
    (tokens,) = call(DalleTokenSample, bart=tiny_bart, text="a fox", seed=0, batch_size=1)
    assert made == [(0, tiny_bart.bart.device())]
    model = tiny_bart.bart.module
    with torch.inference_mode():
        ids = stages.text_tokens(tiny_bart.tokenizer.encode("a fox"))
        expected = stages.sample_image_tokens(model, ids, 1, torch.Generator().manual_seed(0))
    assert torch.equal(tokens, expected.cpu())


def test_hyperparameters_file_sizes_other_checkpoints(tmp_path) -> None:
    """A folder's hyperparameters.json (no Hub repo has one) sizes checkpoints the built-in table does not know."""
    other = {**TINY_MIN_DALLE, "layer_count": 1, "embed_count": 64, "attention_head_count": 2}
    write_min_dalle_repo(tmp_path, "mini", other)
    (tmp_path / "hyperparameters.json").write_text(json.dumps({"mini": other}))
    bart, _ = call(DalleLoadMini, repo_id=str(tmp_path), variant="mini", dtype="fp32")
    decoder = bart.bart.module.decoder
    assert len(decoder.layers) == 1 and decoder.layers[0].self_attn.head_count == 2
    (tokens,) = call(DalleTokenSample, bart=bart, text="a cat", seed=1, batch_size=1)
    assert tokens.shape == (1, 16, 16)

    (tmp_path / "hyperparameters.json").write_text(json.dumps({"mega": other}))
    loaders._loaded.clear()
    with pytest.raises(CheckpointError, match='needs a "mini" entry with layer_count'):
        call(DalleLoadMini, repo_id=str(tmp_path), variant="mini", dtype="fp32")


def test_images_match_min_dalles_end_to_end(tiny_min_dalle_repo, tmp_path) -> None:
    """Same files, prompt, seed and settings on the CPU: min-dalle's generate_images and our three nodes give the
    same 256 px images (min-dalle's are 0…255)."""
    reference = min_dalle_reference(min_dalle_layout(tiny_min_dalle_repo, tmp_path), is_mega=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # min-dalle's torch.cuda.amp.autocast is deprecated
        expected = reference.generate_images("a red fox in the snow", seed=9, grid_size=1) / 255
    bart, vqgan = call(DalleLoadMini, repo_id=str(tiny_min_dalle_repo), dtype="fp32")
    (tokens,) = call(DalleTokenSample, bart=bart, text="a red fox in the snow", seed=9, batch_size=1)
    (image,) = call(DalleVQGANDecode, vqgan=vqgan, tokens=tokens)
    assert image.shape == expected.shape == (1, 256, 256, 3)
    assert (image - expected).abs().max() < 1e-4
    assert image.std() > 0.01  # a picture, not a flat colour


def node_dtypes(choice: str) -> tuple[torch.dtype, torch.dtype]:
    """The (BART, VQGAN) dtypes DalleLoadMini picks for its dtype input."""
    return loading.dtypes(choice, runtime.compute_device(), runtime.fp16_ok)


def test_auto_dtypes(tiny_min_dalle_repo, monkeypatch) -> None:
    assert node_dtypes("auto") == (torch.float32, torch.float32)  # the CPU
    monkeypatch.setattr(runtime, "compute_device", lambda: torch.device("cuda"))
    assert node_dtypes("auto") == (torch.float16, torch.float32)  # Mega's weights are fp16; the VQGAN as min-dalle
    assert node_dtypes("bf16") == (torch.bfloat16, torch.bfloat16)
    monkeypatch.setattr(runtime, "fp16_ok", lambda device: False)  # e.g. ComfyUI with --force-fp32
    assert node_dtypes("auto") == (torch.float32, torch.float32)

    monkeypatch.setattr(loaders, "_loaded", {})
    monkeypatch.setattr(runtime, "compute_device", lambda: torch.device("cpu"))
    dtypes = loading.dtypes
    monkeypatch.setattr(  # as auto on a GPU
        loading, "dtypes", lambda choice, device, fp16_ok: dtypes(choice, torch.device("cuda"), lambda d: True)
    )
    bart, vqgan = call(DalleLoadMini, repo_id=str(tiny_min_dalle_repo))
    assert (bart.bart.dtype, vqgan.vqgan.dtype) == (torch.float16, torch.float32)


def test_token_sample_follows_the_cuda_graph_switch(tiny_bart, monkeypatch, cuda_graph_switch) -> None:
    """With a device that could capture, the token node records its step as a CUDA graph unless switched off."""
    seen = []
    monkeypatch.setattr(cuda_graph, "can_capture", lambda device: True)
    monkeypatch.setattr(stages.GraphStep, "capture", lambda self: seen.append(True))  # eager replays on the CPU
    call(DalleTokenSample, bart=tiny_bart, text="a cat", seed=0, batch_size=1)
    assert seen == ([True] if cuda_graph_switch else [])


def test_bad_tokens_are_refused_before_the_vqgan_loads(tiny_min_dalle_repo, monkeypatch) -> None:
    _, vqgan = call(DalleLoadMini, repo_id=str(tiny_min_dalle_repo), variant="mini", dtype="fp32")
    loaded = []
    monkeypatch.setattr(runtime.ManagedModule, "load", lambda self, memory_required=0: loaded.append(self))
    with pytest.raises(ValueError, match=r"must be image tokens \[batch, 16, 16\] of int64"):
        call(DalleVQGANDecode, vqgan=vqgan, tokens=torch.zeros(4, 16, 16), seamless=True)
    assert loaded == []
