"""Open a page in Debian's headless chromium and report what a person would see go wrong.

A small DevTools-protocol client over chromium's websocket (websocket-client): the console errors and
uncaught exceptions of the page, every request that is not to the page itself or a data: URI, each
image's decoded width, and a screenshot. `CHROMIUM` is None where chromium is not installed (the
tests skip with that reason; `make setup` installs it where apt-get is available and root).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--remote-debugging-port=0", "--remote-allow-origins=*", "--hide-scrollbars",
]  # fmt: skip

IMAGES_JS = (
    "JSON.stringify(Array.prototype.map.call(document.querySelectorAll('img[src]'),"
    " function (i) { return [i.alt, i.complete, i.naturalWidth]; }))"
)


class Page:
    def __init__(self, ws) -> None:
        self.ws, self.next_id, self.events = ws, 0, []

    def call(self, method: str, timeout: float = 60, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)
        raise TimeoutError(method)

    def wait_for(self, event: str, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while not any(e.get("method") == event for e in self.events):
            if time.monotonic() > end:
                raise TimeoutError(event)
            self.events.append(json.loads(self.ws.recv()))

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def problems(self, page_url: str) -> list[str]:
        """Console errors, uncaught exceptions and requests that left the page."""
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                out.append(f"exception: {p['exceptionDetails'].get('exception', {}).get('description')}")
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(f"console.{p['type']}: {[a.get('value') for a in p.get('args', [])]}")
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append(f"log: {p['entry'].get('text')}")
            elif m == "Network.requestWillBeSent":
                url = p["request"]["url"]
                if not url.startswith("data:") and url != page_url:
                    out.append(f"request: {url[:120]}")
        return out


def open_page(path: Path, screenshot: Path | None = None, actions: str = "", size=(1400, 1000)) -> dict:
    """Load `path` in headless chromium, run `actions` (JavaScript), and return {"problems": [...],
    "images": [[alt, complete, naturalWidth], ...], "title": ...}; write a PNG screenshot if asked."""
    import websocket

    profile = Path(tempfile.mkdtemp(prefix="lorascope-chromium-"))
    proc = subprocess.Popen(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        port_file = profile / "DevToolsActivePort"
        end = time.monotonic() + 60
        while not (port_file.is_file() and len(port_file.read_text().splitlines()) >= 2):
            if time.monotonic() > end or proc.poll() is not None:
                raise RuntimeError(f"chromium did not start (exit {proc.poll()})")
            time.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            target = next(t for t in json.load(r) if t["type"] == "page")
        ws = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        page = Page(ws)
        for domain in ("Runtime", "Log", "Network", "Page"):
            page.call(f"{domain}.enable")
        url = path.resolve().as_uri()
        page.call("Page.navigate", url=url)
        page.wait_for("Page.loadEventFired")
        if actions:
            page.evaluate(actions)
        images = json.loads(page.evaluate(IMAGES_JS))
        title = page.evaluate("document.title")
        if screenshot is not None:
            shot = page.call("Page.captureScreenshot", format="png")
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
        time.sleep(0.2)  # late console messages
        page.call("Runtime.evaluate", expression="1")
        ws.close()
        return {"problems": page.problems(url), "images": images, "title": title}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)
