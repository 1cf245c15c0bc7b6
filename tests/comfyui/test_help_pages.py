"""The help pages and the Chinese UI on a real ComfyUI: served as the frontend asks for them, and shown by the
frontend itself in headless Chromium (driven over the Chrome DevTools Protocol) with the language set to Chinese.

The frontend asks for a custom node's help at /extensions/<pack>/docs/<NodeId>/<lang>.md, then
/extensions/<pack>/docs/<NodeId>.md, where <pack> is the folder name in the node's python_module
("custom_nodes.<pack>"), and takes any answer that is not HTML. The translations come from /i18n.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import websockets

from help_pages import LANGUAGES, node_defs, page_path

pytestmark = pytest.mark.skipif(
    not os.environ.get("COMFYUI_PATH"),
    reason="set COMFYUI_PATH to a ComfyUI checkout (and COMFYUI_PYTHON to its interpreter) to run",
)

# Debian's package; the flags keep it off the (closed) network and away from a GPU
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,900",
    "--remote-debugging-port=0",
]
UI_TIMEOUT_S = 120  # the frontend's first load on two busy cores
SHOWN_NODE = "DalleLoadPrior"
INFO_TAB = "信息"  # the right side panel's "Info" tab, in the frontend's own Chinese


def prepare_comfyui(base: Path) -> None:
    """The default user's settings: Chinese, the right side panel open, no first-run tour."""
    settings = {"Comfy.Locale": "zh", "Comfy.RightSidePanel.IsOpen": True, "Comfy.TutorialCompleted": True}
    (base / "user" / "default").mkdir(parents=True)
    (base / "user" / "default" / "comfy.settings.json").write_text(json.dumps(settings))


def fetch(url: str) -> tuple[int, str, bytes]:
    """(status, content type, body) of a GET, errors included."""
    try:
        with urllib.request.urlopen(url, timeout=60) as answer:
            return answer.status, answer.headers.get("Content-Type", ""), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read()


def help_page(server_url: str, node: dict, language: str) -> bytes | None:
    """What the frontend's NodeHelpService gets for a custom node: the <lang> page, else the plain one (None when
    neither is there)."""
    pack = node["python_module"].split(".")[1].split("@")[0]
    for path in (f"docs/{node['name']}/{language}.md", f"docs/{node['name']}.md"):
        status, content_type, body = fetch(f"{server_url}/extensions/{pack}/{path}")
        if status == 200 and "text/html" not in content_type:
            return body
    return None


@pytest.fixture(scope="module")
def object_info(comfyui) -> dict:
    return {name: node for name, node in comfyui.get_json("/object_info").items() if name.startswith("Dalle")}


def test_every_help_page_is_served_as_the_frontend_asks(comfyui, object_info):
    from dalle_nodes import NODE_CLASS_MAPPINGS

    assert sorted(object_info) == sorted(NODE_CLASS_MAPPINGS), "ComfyUI did not load all our nodes"
    for name, node in object_info.items():
        assert node["python_module"] == "custom_nodes.dalle-nodes"
        for language in LANGUAGES:
            expected = page_path(name, language).read_bytes()
            assert help_page(comfyui.url, node, language) == expected, f"{name}'s {language} help page"
    # the plain page answers English (and any language without a page of its own)
    assert help_page(comfyui.url, object_info[SHOWN_NODE], "fr") == page_path(SHOWN_NODE, "en").read_bytes()


def test_i18n_serves_our_translations(comfyui, object_info):
    served = comfyui.get_json("/i18n")
    for language in LANGUAGES:
        ours = node_defs(language)
        assert {name: served[language]["nodeDefs"][name] for name in object_info} == ours


class Browser:
    """One headless Chromium page over the DevTools Protocol: evaluate JavaScript, click."""

    def __init__(self, socket) -> None:
        self.socket, self.ids = socket, itertools.count(1)

    async def call(self, method: str, **params) -> dict:
        message_id = next(self.ids)
        await self.socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(await self.socket.recv())
            if message.get("id") == message_id:
                assert "error" not in message, f"{method}: {message['error']}"
                return message["result"]

    async def evaluate(self, expression: str) -> object:
        result = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        assert "exceptionDetails" not in result, f"{expression}: {result['exceptionDetails']}"
        return result["result"].get("value")

    async def wait_for(self, expression: str, what: str) -> object:
        deadline = time.monotonic() + UI_TIMEOUT_S
        while time.monotonic() < deadline:
            value = await self.evaluate(expression)
            if value:
                return value
            await asyncio.sleep(0.5)  # polling: the page tells us nothing when it is ready
        text = await self.evaluate("document.body.innerText.slice(0, 3000)")
        raise AssertionError(f"{what} within {UI_TIMEOUT_S} s; the page shows:\n{text}")

    async def click(self, x: float, y: float) -> None:
        for kind in ("mousePressed", "mouseReleased"):
            await self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)


def start_chromium(profile: Path) -> tuple[subprocess.Popen, str]:
    """Chromium with a fresh profile, and the DevTools address of its first page."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on PATH (.ci/run installs Debian's package)")
    process = subprocess.Popen(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    port_file, deadline = profile / "DevToolsActivePort", time.monotonic() + 60
    while not port_file.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)  # polling: Chromium writes the file once it listens
    assert port_file.exists(), f"Chromium did not start (exit code {process.poll()})"
    port = port_file.read_text().split()[0]
    pages = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30).read())
    return process, next(page["webSocketDebuggerUrl"] for page in pages if page["type"] == "page")


ADD_NODE = """(() => {
    app.graph.clear();
    const node = LiteGraph.createNode(%s);
    node.pos = [200, 200];
    app.graph.add(node);
    app.canvas.setDirty(true, true);
    const titleBar = [node.pos[0] + 40, node.pos[1] - LiteGraph.NODE_TITLE_HEIGHT / 2];
    const title = app.canvas.ds.convertOffsetToCanvas(titleBar);
    const box = app.canvas.canvas.getBoundingClientRect(), scale = window.devicePixelRatio || 1;
    return {title: node.title, widgets: node.widgets.map(w => w.label || w.name),
            x: box.left + title[0] / scale, y: box.top + title[1] / scale};
})()"""
PANEL_TEXT = "[...document.querySelectorAll('.node-help-content')].map(e => e.innerText).join('\\n')"
CLICK_TAB = "(() => { const tab = [...document.querySelectorAll('[role=tab]')].find(t => t.innerText.trim() === %s);"
CLICK_TAB += " if (tab) tab.click(); return !!tab; })()"


async def show_help(page_url: str, server_url: str) -> dict:
    """Open ComfyUI, add the node, click its title, open the Info tab: what the canvas and the panel show."""
    async with websockets.connect(page_url, max_size=None) as socket:
        browser = Browser(socket)
        await browser.call("Page.navigate", url=server_url)
        registered = f"window.app && app.graph && window.LiteGraph && LiteGraph.registered_node_types[{SHOWN_NODE!r}]"
        await browser.wait_for(f"!!({registered})", "the frontend did not load our nodes")
        node = await browser.evaluate(ADD_NODE % json.dumps(SHOWN_NODE))
        await asyncio.sleep(0.5)  # one frame: the canvas draws the node before it can be clicked
        await browser.click(node["x"], node["y"])
        await browser.wait_for(CLICK_TAB % json.dumps(INFO_TAB), f"no {INFO_TAB!r} tab for the selected node")
        expected_title = node_defs("zh")[SHOWN_NODE]["display_name"]
        node["help"] = await browser.wait_for(
            f"(() => {{ const text = {PANEL_TEXT}; return text.includes({json.dumps(expected_title)}) && text; }})()",
            "the documentation panel did not show the Chinese help page",
        )
        return node


def test_frontend_shows_the_chinese_name_and_help_page(comfyui, tmp_path):
    process, page_url = start_chromium(tmp_path / "chromium-profile")
    try:
        shown = asyncio.run(show_help(page_url, comfyui.url))
    finally:
        process.terminate()
        process.wait(timeout=30)
    entry = node_defs("zh")[SHOWN_NODE]
    assert shown["title"] == entry["display_name"]
    assert entry["inputs"]["repo_id"]["name"] in shown["widgets"]
    page = page_path(SHOWN_NODE, "zh").read_text(encoding="utf-8")
    first_paragraph = page.split("\n\n")[1]
    assert first_paragraph.replace("`", "")[:40] in shown["help"], "the panel shows another page than zh.md"
