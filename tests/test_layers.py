"""The folder tree is the architecture: these checks read every module's imports and signatures, so it stays so.

Layers, top to bottom: nodes → pipelines → models → engine. A module imports only its own layer and the layers
below it; client/ (talking to a running ComfyUI, without torch) imports none of them but engine/files.py (plain
Python: the no-clobber writes of output files); openai_api/ (the images API on ComfyUI's server, which runs our
nodes only through workflows) imports only engine/. nodes/runtime.py is the only module that imports ComfyUI, with
nodes/comfy_native.py beside it for ComfyUI's model classes and openai_api/comfy_server.py for its server. The root
modules (the package's __init__, cli, __main__) sit on top.
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
    return sorted(path for folder in FOLDERS for path in (ROOT / folder).glob("*.py"))


def our_imports(path: Path) -> list[tuple[int, str]]:
    """(line, top folder) of each import of ours in the module: relative ones and `dalle_nodes.…` ones, lazy imports
    inside functions included."""
    folder = path.parent.name
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            if node.level == 1:
                target = folder
            elif node.level == 2:
                target = (node.module or "").split(".")[0] or "<root>"
            else:
                target = "<outside>"
            found.append((node.lineno, target))
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "dalle_nodes":
                found.append((node.lineno, parts[1] if len(parts) > 1 else "<root>"))
    return found


def absolute_imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


@pytest.mark.parametrize("path", modules(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_imports_go_one_way(path: Path) -> None:
    folder = path.parent.name
    if folder in ("client", "openai_api"):
        allowed = {folder, "engine"}
    else:
        allowed = set(LAYERS[: LAYERS.index(folder) + 1])
    wrong = [f"line {line}: {target}" for line, target in our_imports(path) if target not in allowed]
    assert not wrong, f"{folder}/{path.name} may import only {sorted(allowed)}, but imports " + ", ".join(wrong)


def test_client_stays_free_of_torch() -> None:
    """The client may use engine/files.py only, and that module imports nothing heavy."""
    for path in (ROOT / "client").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        engine = [line for line in text.splitlines() if "engine" in line and "import" in line]
        assert all("engine.files import" in line for line in engine), f"client/{path.name}: {engine}"
    heavy = {name for _, name in absolute_imports(ROOT / "engine" / "files.py")} & {"torch", "numpy", "PIL"}
    assert not heavy, f"engine/files.py imports {heavy}"


@pytest.mark.parametrize("path", [*modules(), *ROOT.glob("*.py")], ids=lambda p: f"{p.parent.name}/{p.name}")
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
    assert our_imports(module) == [(2, "nodes"), (4, "pipelines")]
    assert (3, "comfy") in absolute_imports(module)
    function = ast.parse(module.read_text()).body[0]
    assert len(parameters(function)) == 9
