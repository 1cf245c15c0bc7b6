"""tests/hub_configs is a verbatim copy of the real Hub configs kept in ../shared/hub_configs: every file, so that a
repo added there (with its FILES.txt and SOURCES.md) is added here too."""

from pathlib import Path

import pytest

COPY = Path(__file__).parent / "hub_configs"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "hub_configs"


@pytest.mark.skipif(not SHARED.is_dir(), reason="no ../shared/hub_configs beside this checkout")
def test_copy_matches_shared() -> None:
    files = sorted(p.relative_to(SHARED) for p in SHARED.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(COPY) for p in COPY.rglob("*") if p.is_file())
    assert all((COPY / f).read_bytes() == (SHARED / f).read_bytes() for f in files)
