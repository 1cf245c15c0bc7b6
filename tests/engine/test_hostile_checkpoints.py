"""Hostile checkpoints: every loader, on a tiny real-layout repo with one file damaged, ends in one clear
CheckpointError naming the file, never another exception; metadata keys load; caches survive races, damage and
read-only stores.

Each case copies a tiny repo (tests/tiny_repos.py), damages one file and loads through the real loader, offline.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dalle_nodes.engine import caches, checkpoints, compiled
from dalle_nodes.engine.checkpoints import CheckpointError
from dalle_nodes.engine.hub import Source
from dalle_nodes.pipelines import depth, upscale
from dalle_nodes.pipelines.dalle_mini import loading as mini_loading
from dalle_nodes.pipelines.kandinsky22 import loading
from tiny_repos import TINY_MIN_DALLE
from tiny_upscalers import compact_state, write_malicious_pickle, write_upscaler

F32 = torch.float32
MARKER = "pwned"  # what a pickle that runs code would create


def _source(repo: Path) -> Source:
    return Source(str(repo))


# loader name → (tiny repo it needs, load(repo folder)); every loader a user reaches, as the nodes call them.
LOADERS: dict[str, tuple[str, Callable[[Path], object]]] = {
    "prior": ("prior", lambda r: loading.load_prior(_source(r), F32)),
    "text_encoder": ("prior", lambda r: loading.load_text_encoder(_source(r), F32)),
    "image_encoder": ("prior", lambda r: loading.load_image_encoder(_source(r), F32)),
    "unet": ("decoder", lambda r: loading.load_unet(_source(r), F32)),
    "movq": ("decoder", lambda r: loading.load_movq(_source(r), F32)),
    "mini_bart": ("mini", lambda r: mini_loading.load_bart(_source(r), "mini", F32)),
    "mini_tokenizer": ("mini", lambda r: mini_loading.load_tokenizer(_source(r), "mini")),
    "vqgan": ("mini", lambda r: mini_loading.load_vqgan(_source(r), F32)),
    "upscaler": ("upscaler", lambda r: upscale.load_upscaler(r / "x4.safetensors")),
    "depth": ("depth", lambda r: depth.load_depth_model(_source(r), F32)),
}


@pytest.fixture(scope="module")
def tiny_repos(
    tiny_prior_repo, tiny_decoder_repo, tiny_min_dalle_repo, tiny_depth_repo, tmp_path_factory
) -> dict[str, Path]:
    mini = tmp_path_factory.mktemp("mini")
    for name in ("encoder_mini.pt", "decoder_mini.pt", "vocab_mini.json", "merges_mini.txt", "detoker.pt"):
        shutil.copy(tiny_min_dalle_repo / name, mini / name)
    (mini / "hyperparameters.json").write_text(json.dumps({"mini": TINY_MIN_DALLE}))  # the tiny size
    upscaler = tmp_path_factory.mktemp("upscaler")
    write_upscaler(upscaler / "x4.safetensors", compact_state(4))
    return {
        "prior": tiny_prior_repo,
        "decoder": tiny_decoder_repo,
        "mini": mini,
        "upscaler": upscaler,
        "depth": tiny_depth_repo,
    }


@pytest.fixture
def damaged(tiny_repos, tmp_path, monkeypatch) -> Iterator[Callable[[str], tuple[Path, Callable[[], object]]]]:
    """damaged(loader) → (a fresh copy of its tiny repo, the call that loads it), offline, cwd in tmp_path. The copy
    is deleted after the test: min-dalle's holds the full-size VQGAN (0.35 GB), and pytest keeps every tmp_path of a
    run until it ends."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)

    def make(loader: str) -> tuple[Path, Callable[[], object]]:
        kind, load = LOADERS[loader]
        repo = shutil.copytree(tiny_repos[kind], tmp_path / "repo")
        return repo, lambda: load(repo)

    yield make
    shutil.rmtree(tmp_path / "repo", ignore_errors=True)


def assert_clear(error: pytest.ExceptionInfo, names: str) -> None:
    """One line, naming the file, no terminal colours; the class is CheckpointError (a ValueError)."""
    message = str(error.value)
    assert error.type is CheckpointError or issubclass(error.type, CheckpointError)
    assert "\n" not in message and "\x1b" not in message, message
    assert names in message, message


# --- configs -----------------------------------------------------------------------------------------------------
# loader → (config file, a key whose value is a number of layers or a size, the file's own subfolder)
CONFIGS = {
    "prior": ("prior/config.json", "num_layers"),
    "unet": ("unet/config.json", "layers_per_block"),
    "movq": ("movq/config.json", "layers_per_block"),
    "text_encoder": ("text_encoder/config.json", "hidden_size"),
    "image_encoder": ("image_encoder/config.json", "patch_size"),
    "image_encoder:processor": ("image_processor/preprocessor_config.json", "resample"),
    "mini_bart": ("hyperparameters.json", "layer_count"),
    "depth": ("config.json", "hidden_size"),
    "depth:processor": ("preprocessor_config.json", "ensure_multiple_of"),
}


def _edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data["mini"] if path.name == "hyperparameters.json" else data)
    path.write_text(json.dumps(data))


def _set(key: str, value: object) -> Callable[[dict], None]:
    return lambda config: config.__setitem__(key, value)


CONFIG_DAMAGE = {
    "not_json": (lambda path, key: path.write_text('{"num_layers": 2,'), "not valid JSON"),
    "binary": (lambda path, key: path.write_bytes(b"\xff\xfe\x00garbage"), "not valid JSON"),
    "empty": (lambda path, key: path.write_text(""), "not valid JSON"),
    "array": (lambda path, key: path.write_text("[1, 2, 3]"), "holds a JSON list"),
    "null": (lambda path, key: path.write_text("null"), "holds a JSON NoneType"),
    "text_for_number": (lambda path, key: _edit_json(path, _set(key, "three")), "wrong type"),
    "list_for_number": (lambda path, key: _edit_json(path, _set(key, [2, 3])), "wrong type"),
    "null_for_number": (lambda path, key: _edit_json(path, _set(key, None)), "wrong type"),
    "unknown_setting": (lambda path, key: _edit_json(path, _set("frobnicate_blocks", 3)), "unknown"),
}


@pytest.mark.parametrize("damage", CONFIG_DAMAGE)
@pytest.mark.parametrize("part", CONFIGS)
def test_damaged_config(damaged, part, damage) -> None:
    relpath, key = CONFIGS[part]
    repo, load = damaged(part.split(":")[0])
    change, message = CONFIG_DAMAGE[damage]
    change(repo / relpath, key)
    with pytest.raises(CheckpointError) as error:
        load()
    assert_clear(error, message)
    assert relpath.split("/")[-1] in str(error.value)


@pytest.mark.parametrize("part", CONFIGS)
def test_metadata_keys_load_and_unknown_ones_get_a_note(damaged, part, caplog) -> None:
    """Metadata never changes the network: the known keys load silently, an unknown "_" key with a note, once."""
    relpath, _ = CONFIGS[part]
    repo, load = damaged(part.split(":")[0])
    metadata = {
        "_name_or_path": "somewhere",
        "_commit_hash": "0" * 40,
        "_diffusers_version": "0.1",
        "transformers_version": "4.29.0",
        "torch_dtype": "float16",
        "_frobnicated_by": "a tool we never heard of",
    }
    _edit_json(repo / relpath, lambda config: config.update(metadata))
    checkpoints._noted.clear()
    with caplog.at_level(logging.INFO, logger=checkpoints.__name__):
        load()
        load()
    notes = [r.getMessage() for r in caplog.records if "_frobnicated_by" in r.getMessage()]
    assert len(notes) == 1, notes
    assert not any(k in r.getMessage() for r in caplog.records for k in ("_name_or_path", "torch_dtype"))


# --- weights -----------------------------------------------------------------------------------------------------
# loader → its weight file (in the repo copy)
WEIGHTS = {
    "prior": "prior/diffusion_pytorch_model.safetensors",
    "unet": "unet/diffusion_pytorch_model.safetensors",
    "movq": "movq/diffusion_pytorch_model.safetensors",
    "text_encoder": "text_encoder/model.safetensors",
    "image_encoder": "image_encoder/model.safetensors",
    "mini_bart": "encoder_mini.pt",
    "vqgan": "detoker.pt",
    "upscaler": "x4.safetensors",
    "depth": "model.safetensors",
}


def _rewrite(path: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> None:
    state = load_file(path) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)
    change(state)
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:
        torch.save(state, path)


def _as(dtype: torch.dtype) -> Callable[[dict], None]:
    """The first float weight (by name) stored as `dtype`: the values are truncated, as a bad conversion would."""

    def change(state: dict) -> None:
        key = sorted(k for k, v in state.items() if v.is_floating_point() and v.ndim >= 1)[0]
        state[key] = (state[key] * 100).to(dtype)

    return change


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
@pytest.mark.parametrize("part", WEIGHTS)
def test_int_typed_weights_are_refused(damaged, part, dtype) -> None:
    repo, load = damaged(part)
    _rewrite(repo / WEIGHTS[part], _as(dtype))
    with pytest.raises(CheckpointError) as error:
        load()
    assert_clear(error, "tensors of the wrong type")
    assert Path(WEIGHTS[part]).name in str(error.value)


def test_int_typed_weights_in_a_transformers_pickle(damaged) -> None:
    """A text encoder shipped as pytorch_model.bin only: its dtypes are read before transformers casts them."""
    repo, load = damaged("text_encoder")
    folder = repo / "text_encoder"
    state = load_file(folder / "model.safetensors")
    _as(torch.int64)(state)
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError) as error:
        load()
    assert_clear(error, "pytorch_model.bin")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
@pytest.mark.parametrize("part", WEIGHTS)
def test_truncated_or_garbage_weights(damaged, part, damage) -> None:
    repo, load = damaged(part)
    path = repo / WEIGHTS[part]
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00garbage" * 100, "empty": b""}[damage])
    with pytest.raises(CheckpointError) as error:
        load()
    assert_clear(error, path.name)


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


# loader → (weight file to remove first, pickle file to plant)
PICKLE_ONLY = {
    "prior": ("prior/diffusion_pytorch_model.safetensors", "prior/diffusion_pytorch_model.bin"),
    "text_encoder": ("text_encoder/model.safetensors", "text_encoder/pytorch_model.bin"),
    "image_encoder": ("image_encoder/model.safetensors", "image_encoder/pytorch_model.bin"),
    "unet": ("unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.bin"),
    "mini_bart": ("encoder_mini.pt", "encoder_mini.pt"),
    "mini_bart:decoder": ("decoder_mini.pt", "decoder_mini.pt"),
    "vqgan": ("detoker.pt", "detoker.pt"),
    "depth": ("model.safetensors", "pytorch_model.bin"),
}


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("part", PICKLE_ONLY)
def test_pickle_that_runs_code_never_runs(damaged, part, protocol, tmp_path) -> None:
    repo, load = damaged(part.split(":")[0])
    remove, plant = PICKLE_ONLY[part]
    (repo / remove).unlink()
    (repo / plant).write_bytes(pickle.dumps({"x": _RunsCode()}, protocol=protocol))
    with pytest.raises(CheckpointError) as error:
        load()
    assert_clear(error, Path(plant).name)
    assert "refused" in str(error.value)
    assert not (tmp_path / MARKER).exists()


def test_upscaler_pickle_that_runs_code_never_runs(tmp_path) -> None:
    path = write_malicious_pickle(tmp_path / "evil.pth", tmp_path / MARKER)
    with pytest.raises(CheckpointError) as error:
        upscale.load_upscaler(path)
    assert_clear(error, "evil.pth")
    assert not (tmp_path / MARKER).exists()


def test_pickles_are_refused_where_torch_cannot_read_them_safely(damaged, monkeypatch) -> None:
    """Before torch 2.6 weights_only could be bypassed (CVE-2025-32434): no pickle is opened there."""
    monkeypatch.setattr(checkpoints, "SAFE_UNPICKLING", False)
    repo, load = damaged("vqgan")
    with pytest.raises(CheckpointError) as error:
        load()
    assert_clear(error, "torch 2.6 or newer")


def test_integer_tensors_load_where_the_network_holds_integers() -> None:
    """Integer tensors are refused only where the network holds floats: its own integer buffers (SwinIR's
    relative_position_index …) load; an integer tensor under a name an upscaler lacks is not one of them."""
    network = {"relative_position_index": torch.zeros(1, dtype=torch.long), "conv.weight": torch.zeros(1)}
    checkpoints.check_tensor_types({"relative_position_index": torch.int64, "conv.weight": "F32"}, network, "x")
    with pytest.raises(CheckpointError, match="relative_position_index is float32"):
        checkpoints.check_tensor_types({"relative_position_index": torch.float32}, network, "x")
    stand_ins = upscale.loading._expected_tensors(torch.nn.Conv2d(1, 1, 1), ["weight", "renamed.index"])
    with pytest.raises(CheckpointError, match="renamed.index is int64"):
        checkpoints.check_tensor_types({"weight": torch.float32, "renamed.index": torch.int64}, stand_ins, "x")


# --- tokenizers --------------------------------------------------------------------------------------------------
TOKENIZER_DAMAGE = {
    "text_encoder:vocab_not_json": ("tokenizer/vocab.json", b'{"a": 1,', "vocab.json"),
    "text_encoder:vocab_array": ("tokenizer/vocab.json", b'["a", "b"]', "vocab.json"),
    "text_encoder:vocab_binary": ("tokenizer/vocab.json", b"\xff\x00\xfe", "vocab.json"),
    "text_encoder:merges_binary": ("tokenizer/merges.txt", b"\xff\xfe\x00\x01 garbage\n", "tokenizer"),
    "text_encoder:config_not_json": ("tokenizer/tokenizer_config.json", b"{", "tokenizer_config.json"),
    "text_encoder:special_tokens_array": ("tokenizer/special_tokens_map.json", b"[]", "special_tokens_map.json"),
    "text_encoder:tokenizer_json_garbage": ("tokenizer/tokenizer.json", b"{}", "tokenizer"),
    "mini_tokenizer:vocab_not_json": ("vocab_mini.json", b'{"<s>": 0,', "vocab_mini.json"),
    "mini_tokenizer:vocab_array": ("vocab_mini.json", b"[0, 1]", "vocab_mini.json"),
    "mini_tokenizer:vocab_text_ids": ("vocab_mini.json", b'{"<s>": "zero", "</s>": "two"}', "vocab_mini.json"),
    "mini_tokenizer:vocab_no_specials": ("vocab_mini.json", b'{"a": 0}', "vocab_mini.json"),
    "mini_tokenizer:merges_binary": ("merges_mini.txt", b"#version\n\xff\xfe\x00\n", "merges_mini.txt"),
    "mini_tokenizer:merges_three_parts": ("merges_mini.txt", b"#version: 0.2\na b c\n", "merges_mini.txt"),
}


@pytest.mark.parametrize("case", TOKENIZER_DAMAGE)
def test_damaged_tokenizer(damaged, case) -> None:
    relpath, content, names = TOKENIZER_DAMAGE[case]
    repo, load = damaged(case.split(":")[0])
    (repo / relpath).write_bytes(content)
    with pytest.raises(CheckpointError) as error:
        load()
    assert_clear(error, names)


# --- unreadable files --------------------------------------------------------------------------------------------
UNREADABLE = {  # loader → the file made unreadable
    "prior:config": ("prior", "prior/config.json"),
    "prior:weights": ("prior", "prior/diffusion_pytorch_model.safetensors"),
    "text_encoder:weights": ("text_encoder", "text_encoder/model.safetensors"),
    "text_encoder:vocab": ("text_encoder", "tokenizer/vocab.json"),
    "image_encoder:processor": ("image_encoder", "image_processor/preprocessor_config.json"),
    "unet:weights": ("unet", "unet/diffusion_pytorch_model.safetensors"),
    "mini_bart:weights": ("mini_bart", "encoder_mini.pt"),
    "mini_bart:hyperparameters": ("mini_bart", "hyperparameters.json"),
    "mini_tokenizer:merges": ("mini_tokenizer", "merges_mini.txt"),
    "upscaler:weights": ("upscaler", "x4.safetensors"),
    "depth:processor": ("depth", "preprocessor_config.json"),
}


@contextlib.contextmanager
def file_permissions_apply():
    """As root, file permissions do not apply: act as nobody (65534) inside the block, keeping root as the saved
    id to come back to. Modules a loader imports lazily must be imported before (our stdlib lies under /root)."""
    if os.geteuid() != 0:
        yield
        return
    os.setresgid(65534, 65534, 0)
    os.setresuid(65534, 65534, 0)
    try:
        yield
    finally:
        os.setresuid(0, 0, 0)
        os.setresgid(0, 0, 0)


@pytest.fixture
def shared_folder(tiny_repos):
    """A folder nobody can read (pytest's own temporary folders are private to root), and every loader run once
    beforehand, so that their lazy imports are done."""
    folder = Path(tempfile.mkdtemp(prefix="dalle-hostile-"))
    folder.chmod(0o755)
    for kind, load in LOADERS.values():
        load(tiny_repos[kind])
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _public_copy(source: Path, to: Path) -> Path:
    shutil.copytree(source, to)
    for path in [to, *to.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return to


@pytest.mark.parametrize("case", UNREADABLE)
def test_unreadable_file_is_named(tiny_repos, shared_folder, case, monkeypatch) -> None:
    loader, relpath = UNREADABLE[case]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(shared_folder)
    kind, load = LOADERS[loader]
    repo = _public_copy(tiny_repos[kind], shared_folder / "repo")
    (repo / relpath).chmod(0)
    with file_permissions_apply(), pytest.raises(CheckpointError) as error:
        load(repo)
    assert_clear(error, Path(relpath).name)
    assert "cannot be read" in str(error.value) and "ermission" in str(error.value)


def test_read_only_store_runs_offline(tiny_repos, shared_folder, monkeypatch, caplog) -> None:
    """Every file present in a store the user cannot write: the loaders work offline and write nothing there, and
    the zero-image embedding, which cannot be cached there, is computed with a warning."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(shared_folder)
    store = shared_folder / "store"
    _public_copy(tiny_repos["prior"], store / "kandinsky-community--kandinsky-2-2-prior")
    _public_copy(tiny_repos["decoder"], store / "kandinsky-community--kandinsky-2-2-decoder")
    store.chmod(0o555)
    before = sorted(store.rglob("*"))
    prior = Source("kandinsky-community/kandinsky-2-2-prior", None, store)
    decoder = Source("kandinsky-community/kandinsky-2-2-decoder", None, store)
    with file_permissions_apply(), caplog.at_level(logging.WARNING):
        loading.load_prior(prior, F32)
        loading.load_text_encoder(prior, F32)
        loading.load_image_encoder(prior, F32)
        loading.load_unet(decoder, F32)
        loading.load_movq(decoder, F32)
        embed = loading.zero_image_embed(prior, F32, caches.cache_folder(store), lambda module: module)
    assert embed.shape == (1, 16)
    assert sorted(store.rglob("*")) == before
    assert any("Could not write the cache file" in r.getMessage() for r in caplog.records)


# --- the zero-image-embedding cache ------------------------------------------------------------------------------
def _zero_embed(repo: Path, cache: Path) -> torch.Tensor:
    return loading.zero_image_embed(_source(repo), F32, cache, lambda module: module)


def _cache_files(cache: Path) -> list[Path]:
    return sorted((cache / "zero_image_embeds").iterdir()) if (cache / "zero_image_embeds").is_dir() else []


def test_concurrent_first_runs_share_the_cache(tiny_prior_repo, tmp_path, monkeypatch) -> None:
    """Two first runs compute at once and write together: both succeed, and one whole cache file remains."""
    barrier = threading.Barrier(2, timeout=60)
    compute = loading.clip.zero_image_embed

    def in_step(encoder):
        embed = compute(encoder)
        barrier.wait()  # both have computed: now both write
        return embed

    monkeypatch.setattr(loading.clip, "zero_image_embed", in_step)
    cache, results, errors = tmp_path / "cache", [None, None], []

    def run(i: int) -> None:
        try:
            results[i] = _zero_embed(tiny_prior_repo, cache)
        except BaseException as error:  # reported below
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert torch.equal(results[0], results[1])
    files = _cache_files(cache)
    assert len(files) == 1 and files[0].suffix == ".safetensors", files  # no temporary file left behind
    assert torch.equal(load_file(files[0])["embed"], results[0])


def test_concurrent_first_runs_in_two_processes(tiny_prior_repo, tmp_path) -> None:
    tests = Path(__file__).resolve().parents[1]
    script = (
        f"import sys; sys.path.insert(0, {str(tests)!r}); import conftest, torch; from pathlib import Path\n"
        "from dalle_nodes.engine.hub import Source; from dalle_nodes.pipelines.kandinsky22 import loading\n"
        f"e = loading.zero_image_embed(Source({str(tiny_prior_repo)!r}), torch.float32, Path({str(tmp_path)!r}), "
        "lambda m: m); print(e.sum().item())"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(tests), env.get("PYTHONPATH", "")])
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=600) for run in runs]
    assert all(run.returncode == 0 for run in runs), [err[-2000:] for _, err in outputs]
    assert outputs[0][0] == outputs[1][0]
    files = _cache_files(tmp_path)
    assert len(files) == 1 and files[0].suffix == ".safetensors", files


def test_unwritable_cache_is_a_warning(tiny_prior_repo, tmp_path, caplog) -> None:
    """A file where the cache folder should be (works as root, unlike a read-only folder): the run goes on."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "zero_image_embeds").write_text("not a folder")
    with caplog.at_level(logging.WARNING):
        embed = _zero_embed(tiny_prior_repo, cache)
    assert embed.shape == (1, 16)
    assert any("Could not write the cache file" in r.getMessage() for r in caplog.records)
    assert (cache / "zero_image_embeds").read_text() == "not a folder"


def _damage_truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:40])


CACHE_DAMAGE = {
    "truncated": _damage_truncate,
    "garbage": lambda path: path.write_bytes(b"\x00not safetensors" * 10),
    "empty": lambda path: path.write_bytes(b""),
    "wrong_shape": lambda path: save_file({"embed": torch.zeros(2, 7)}, path),
    "wrong_dtype": lambda path: save_file({"embed": torch.zeros(1, 16, dtype=torch.int64)}, path),
    "not_finite": lambda path: save_file({"embed": torch.full((1, 16), float("nan"))}, path),
    "other_key": lambda path: save_file({"other": torch.zeros(1, 16)}, path),
    "a_folder": lambda path: (path.unlink(), path.mkdir()),
}


@pytest.mark.parametrize("damage", CACHE_DAMAGE)
def test_damaged_cache_is_computed_again(tiny_prior_repo, tmp_path, damage) -> None:
    cache = tmp_path / "cache"
    embed = _zero_embed(tiny_prior_repo, cache)
    (path,) = _cache_files(cache)
    CACHE_DAMAGE[damage](path)
    again = _zero_embed(tiny_prior_repo, cache)
    assert torch.equal(again, embed)
    if path.is_file():  # rewritten whole (a folder in its place cannot be replaced: the warning case)
        assert torch.equal(load_file(path)["embed"], embed)


def test_compile_cache_in_a_read_only_store_is_a_warning(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.delenv(compiled.INDUCTOR_CACHE_ENV, raising=False)
    (tmp_path / "cache").write_text("a file where the folder should be")
    with caplog.at_level(logging.WARNING):
        compiled.use_cache_dir(tmp_path / "cache" / "torch_compile")
    assert compiled.INDUCTOR_CACHE_ENV not in os.environ
    assert any("Cannot write in the cache folder" in r.getMessage() for r in caplog.records)
