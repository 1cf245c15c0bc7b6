"""The folder tree is the architecture: these checks read every module's imports and signatures, so it stays so.

Layers, top to bottom: nodes → pipelines → models → engine. A module imports only its own layer and the layers
below it. Inside pipelines/, each model family is a package (kandinsky22/, dalle_mini/, upscale/): a family never
imports another family, the shared modules beside them (samplers, checks, masks…) import no family, and inside a
family the stages never import the API built on them (api.py). client/ (talking to a running ComfyUI, without
torch) imports none of the layers but engine/files.py (plain Python: the no-clobber writes of output files);
openai_api/ (the images API on ComfyUI's server, which runs our nodes only through workflows) imports only engine/.
nodes/runtime.py is the only module that imports ComfyUI, with nodes/comfy_native.py beside it for ComfyUI's model
classes and openai_api/comfy_server.py for its server. The root modules (the package's __init__, cli, __main__)
sit on top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["engine", "models", "pipelines", "nodes"]  # bottom to top
FOLDERS = [*LAYERS, "client", "openai_api"]
COMFYUI_DOORS = {"nodes/runtime.py", "nodes/comfy_native.py", "openai_api/comfy_server.py"}
COMFYUI_MODULES = {"comfy", "comfy_extras", "comfy_execution", "folder_paths", "server", "execution", "nodes"}
MAX_PARAMETERS = 8


def modules() -> list[Path]:
    return sorted(path for folder in FOLDERS for path in (ROOT / folder).rglob("*.py"))


def families() -> list[str]:
    return sorted(path.parent.name for path in (ROOT / "pipelines").glob("*/__init__.py"))


def imported_paths(path: Path, root: Path = ROOT) -> list[tuple[int, tuple[str, ...]]]:
    """(line, path inside the package) of each import of ours in the module, e.g. ("pipelines", "sampling"): relative
    ones resolved against the module's own package and `dalle_nodes.…` ones, lazy imports inside functions included.
    A relative import that climbs out of the package gives ("<outside>",)."""
    package = path.relative_to(root).parent.parts
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [
                (node.lineno, tuple(a.name.split(".")[1:])) for a in node.names if a.name.startswith("dalle_nodes")
            ]
            continue
        if not isinstance(node, ast.ImportFrom):
            continue
        module = tuple(node.module.split(".")) if node.module else ()
        if node.level:
            kept = len(package) - node.level + 1  # `from .` is the module's own package, each dot more one up
            if kept < 0:
                found.append((node.lineno, ("<outside>",)))
                continue
            base = (*package[:kept], *module)
        elif module[:1] == ("dalle_nodes",):
            base = module[1:]
        else:
            continue
        # each name may be a module or a name in one: the path to it covers both
        found += [(node.lineno, (*base, alias.name)) for alias in node.names]
    return found


def our_imports(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, top folder or root module) of each import of ours in the module ("<root>" for the package itself)."""
    return [(line, target[0] if target else "<root>") for line, target in imported_paths(path, root)]


def absolute_imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


@pytest.mark.parametrize("path", modules(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_imports_go_one_way(path: Path) -> None:
    folder = path.relative_to(ROOT).parts[0]
    if folder in ("client", "openai_api"):
        allowed = {folder, "engine"}
    else:
        allowed = set(LAYERS[: LAYERS.index(folder) + 1])
    wrong = [f"line {line}: {target}" for line, target in our_imports(path) if target not in allowed]
    assert not wrong, f"{folder}/{path.name} may import only {sorted(allowed)}, but imports " + ", ".join(wrong)


PIPELINES = sorted((ROOT / "pipelines").rglob("*.py"))


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_a_family_imports_no_other_family(path: Path) -> None:
    """Families stand side by side on the shared machinery: kandinsky22/ never reaches into dalle_mini/, and
    sampling.py knows no family. Only pipelines/__init__.py, the public API, gathers them; and a family's Python API
    (its api.py, never its stages) may end its chain with the GAN upscaler, the stage any family's pictures can take
    last (Karlo's 256 px → DALL·E 2's 1024)."""
    if path == ROOT / "pipelines" / "__init__.py":
        return
    parts = path.relative_to(ROOT).parts
    own = parts[1] if len(parts) > 2 else None
    reached = {target[1] for _, target in imported_paths(path) if target[0] == "pipelines" and len(target) > 1}
    allowed = {own, "upscale"} if path.name == "api.py" and own is not None else {own}
    others = sorted(reached & set(families()) - allowed)
    assert not others, f"{path.relative_to(ROOT)} imports the families {others}: move what they share beside them"


def imports_api(path: Path, family: str, root: Path = ROOT) -> list[int]:
    """Lines where a module of the family reaches its api.py, directly or through the package's re-exports."""
    modules = {p.stem for p in (root / "pipelines" / family).glob("*.py")} - {"__init__"}
    return [
        line
        for line, target in imported_paths(path, root)
        if target[:2] == ("pipelines", family) and len(target) > 2 and (target[2] == "api" or target[2] not in modules)
    ]


@pytest.mark.parametrize("family", families())
def test_a_familys_stages_do_not_import_its_api(family: str) -> None:
    """api.py builds on the stages (as the nodes do); the stages never call back up into it."""
    for path in (ROOT / "pipelines" / family).glob("*.py"):
        if path.name not in ("api.py", "__init__.py"):
            up = imports_api(path, family)
            assert not up, f"pipelines/{family}/{path.name} imports its family's api.py (lines {up})"


def test_kandinsky22_nodes_call_its_stages() -> None:
    """The decoder node holds no sampling: it translates its sockets for kandinsky22.stages.decoder_stage."""
    text = (ROOT / "nodes" / "decoder.py").read_text(encoding="utf-8")
    assert "stages.decoder_stage(" in text
    assert not any(word in text for word in ("sample_decoder", "initial_noise", "noise_latent", "randn"))


def test_client_stays_free_of_torch() -> None:
    """The client may use engine/files.py only, and that module imports nothing heavy."""
    for path in (ROOT / "client").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        engine = [line for line in text.splitlines() if "engine" in line and "import" in line]
        assert all("engine.files import" in line for line in engine), f"client/{path.name}: {engine}"
    heavy = {name for _, name in absolute_imports(ROOT / "engine" / "files.py")} & {"torch", "numpy", "PIL"}
    assert not heavy, f"engine/files.py imports {heavy}"


@pytest.mark.parametrize("path", [*modules(), *ROOT.glob("*.py")], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_only_runtime_imports_comfyui(path: Path) -> None:
    if path.relative_to(ROOT).as_posix() in COMFYUI_DOORS:
        return
    comfy = [f"line {line}: {name}" for line, name in absolute_imports(path) if name in COMFYUI_MODULES]
    assert not comfy, f"{path.relative_to(ROOT)} imports ComfyUI ({', '.join(comfy)}): go through nodes/runtime.py"


def parameters(function: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    """Every parameter a caller can pass (positional and keyword-only, *args counted as one), but self and cls."""
    arguments = function.args
    names = [arg.arg for arg in (*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs)]
    names += [arguments.vararg.arg] if arguments.vararg else []
    return [name for name in names if name not in ("self", "cls")]


def test_no_function_outside_node_classes_takes_more_than_8_parameters() -> None:
    long = []
    for path in [*modules(), *ROOT.glob("*.py")]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        node_classes = {
            node.name
            for node in tree.body
            if isinstance(node, ast.ClassDef) and path.parent.name == "nodes" and node.name.startswith("Dalle")
        }
        for owner in ast.walk(tree):
            if isinstance(owner, ast.ClassDef) and owner.name in node_classes:
                continue
            for function in ast.iter_child_nodes(owner):
                if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                    count = len(parameters(function))
                    if count > MAX_PARAMETERS:
                        long.append(f"{path.relative_to(ROOT)}:{function.lineno} {function.name} ({count})")
    assert not long, "more than 8 parameters: " + ", ".join(long)


def test_the_checks_see_what_they_look_for(tmp_path) -> None:
    """The premises: the readers find a lazy upward import, a ComfyUI import and a long signature."""
    module = tmp_path / "engine" / "bad.py"
    module.parent.mkdir()
    source = "def f(a, b, c, d, e, f, g, *, h, i):\n    from ..nodes import runtime\n    import comfy.utils\n"
    module.write_text(source + "    import dalle_nodes.pipelines.sampling\n", encoding="utf-8")
    assert our_imports(module, tmp_path) == [(2, "nodes"), (4, "pipelines")]
    family = tmp_path / "pipelines" / "one" / "stages.py"
    family.parent.mkdir(parents=True)
    (family.parent / "api.py").write_text("", encoding="utf-8")
    lines = [
        "from .. import sampling, two",
        "from ...models import unet",
        "from .api import X",
        "def f():\n    from dalle_nodes.pipelines import three\n    from . import Model",
    ]
    family.write_text("\n".join(lines) + "\n", encoding="utf-8")
    paths = [target for _, target in imported_paths(family, tmp_path)]
    assert paths == [
        ("pipelines", "sampling"),
        ("pipelines", "two"),
        ("models", "unet"),
        ("pipelines", "one", "api", "X"),
        ("pipelines", "three"),
        ("pipelines", "one", "Model"),
    ]
    assert imports_api(family, "one", tmp_path) == [3, 6]
    function = ast.parse(module.read_text()).body[0]
    assert len(parameters(function)) == 9


def test_every_package_is_installed() -> None:
    """pyproject.toml lists the packages setuptools installs: a family folder missing there would be left out of a
    wheel (an editable install hides that)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"])
    inits = [init for folder in FOLDERS for init in (ROOT / folder).rglob("__init__.py")]
    folders = {".".join(("dalle_nodes", *init.parent.relative_to(ROOT).parts)) for init in inits}
    folders.add("dalle_nodes")
    assert folders == listed
