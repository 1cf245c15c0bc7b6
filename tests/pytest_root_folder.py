"""pytest plugin (loaded by `-p` in pyproject.toml): the repo root is the ComfyUI package, not a test package.

Collecting it as a plain folder keeps pytest from importing its `__init__.py` under the checkout's folder name,
which is often not a valid module name (e.g. `dalle-nodes`).
"""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.hookimpl(tryfirst=True)
def pytest_collect_directory(path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if path == ROOT:
        return pytest.Dir.from_parent(parent, path=path)
    return None
