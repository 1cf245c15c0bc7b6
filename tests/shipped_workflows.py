"""The workflows the pack ships: canvas (UI) files in workflows/, their API-format twins in workflows/api/.

ComfyUI lists every top-level `*.json` of workflows/ in its template browser, where an API-format file cannot open
as a canvas graph: so the twins live one folder down.
"""

from __future__ import annotations

import json
from pathlib import Path

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
API_FOLDER = WORKFLOWS / "api"
UI_FILES = sorted(WORKFLOWS.glob("*.json"))
API_FILES = sorted(API_FOLDER.glob("*.api.json"))
NAMES = [path.stem for path in UI_FILES]


def ui_file(name: str) -> Path:
    return WORKFLOWS / f"{name}.json"


def api_file(name: str) -> Path:
    return API_FOLDER / f"{name}.api.json"


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))
