"""Open a report in headless Chromium: take a screenshot and list every request the page made.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``:
JSON messages ending in NUL on fds 3 and 4), so no port, no websocket library
and no other process can interfere. ``Network.requestWillBeSent`` is reported
for every load the page starts (document, images, fonts, CSS, fetches), which
is what "the page made no request outside the file" needs; the net log would
also show the browser's own background traffic and make the check flaky.

Refresh the README's screenshot with:
    python -m tests.support.browser RESULTS_DIR/report.html docs/report.png
"""

from __future__ import annotations

import base64
import io
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-quic", "--hide-scrollbars",
    "--remote-debugging-pipe",
)


class BrowserError(Exception):
    """Chromium could not be started or did not answer as expected."""


@dataclass
class PageVisit:
    """What happened when the page was opened."""

    requests: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    png: bytes = b""


def find_chromium() -> str | None:
    """The Chromium executable on PATH, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class _DevTools:
    """A minimal DevTools client on Chromium's pipe: send a command, wait for its answer, keep events."""

    def __init__(self, write_fd: int, read_fd: int, timeout: float) -> None:
        self._w, self._r, self._timeout = write_fd, read_fd, timeout
        self._buf = b""
        self._next_id = 0
        self.events: list[dict] = []

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise BrowserError("Chromium did not answer over DevTools in time")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise BrowserError("Chromium closed the DevTools pipe (it exited)")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, session: str | None = None, **params: object) -> dict:
        self._next_id += 1
        msg: dict = {"id": self._next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self._timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"DevTools {method} failed: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str) -> dict:
        deadline = time.monotonic() + self._timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._read_message(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event


def visit(html_path: Path, width: int = 1200, height: int = 2000, timeout: float = 30.0) -> PageVisit:
    """Open ``html_path`` in headless Chromium and return its requests, console messages, images and a PNG."""
    exe = find_chromium()
    if exe is None:
        raise BrowserError("chromium is not installed (Debian: apt-get install chromium)")
    url = Path(html_path).resolve().as_uri()
    to_chrome_r, to_chrome_w = os.pipe()
    from_chrome_r, from_chrome_w = os.pipe()

    def wire_pipes() -> None:
        # Chromium expects the DevTools pipe on fds 3 (it reads) and 4 (it writes).
        os.dup2(to_chrome_r, 3)
        os.dup2(from_chrome_w, 4)

    with tempfile.TemporaryDirectory(prefix="report-chromium-") as profile:
        proc = subprocess.Popen(
            [exe, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=wire_pipes, pass_fds=(3, 4),
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        tools = _DevTools(to_chrome_w, from_chrome_r, timeout)
        try:
            return _drive(tools, url, width, height)
        finally:
            try:
                tools.call("Browser.close")
            except (BrowserError, OSError):
                pass  # already gone: the kill below makes sure
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            os.close(to_chrome_w)
            os.close(from_chrome_r)


def _drive(tools: _DevTools, url: str, width: int, height: int) -> PageVisit:
    target = tools.call("Target.createTarget", url="about:blank")["targetId"]
    session = tools.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    for domain in ("Network.enable", "Page.enable", "Log.enable", "Runtime.enable"):
        tools.call(domain, session)
    tools.call("Emulation.setDeviceMetricsOverride", session, width=width, height=height,
               deviceScaleFactor=1, mobile=False)
    tools.call("Page.navigate", session, url=url)
    tools.wait_for("Page.loadEventFired")
    images = json.loads(tools.call(
        "Runtime.evaluate", session, returnByValue=True,
        expression="JSON.stringify([...document.images].map(i => ({complete: i.complete, "
                   "width: i.naturalWidth, height: i.naturalHeight})))",
    )["result"]["value"])
    shot = tools.call("Page.captureScreenshot", session, format="png")
    page = PageVisit(images=images, png=base64.b64decode(shot["data"]))
    for event in tools.events:
        if event.get("sessionId") != session:
            continue
        params = event.get("params", {})
        if event.get("method") == "Network.requestWillBeSent":
            page.requests.append(params["request"]["url"])
        elif event.get("method") == "Log.entryAdded":
            page.console.append(params["entry"].get("text", ""))
        elif event.get("method") == "Runtime.consoleAPICalled":
            page.console.append(" ".join(str(a.get("value", "")) for a in params.get("args", [])))
    return page


def screenshot(html_path: Path, png_path: Path, width: int = 1200, height: int = 2000,
               max_width: int | None = None) -> PageVisit:
    """Open the page, write its screenshot to ``png_path`` (scaled to ``max_width`` and palette-reduced if
    given, to keep a committed PNG small) and return the visit."""
    page = visit(html_path, width, height)
    data = page.png
    if max_width:
        from PIL import Image

        img = Image.open(io.BytesIO(data)).convert("RGB")
        img = img.resize((max_width, round(img.height * max_width / img.width)), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        img.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(out, "PNG", optimize=True)
        data = out.getvalue()
    Path(png_path).write_bytes(data)
    return page


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m tests.support.browser REPORT.html OUT.png")
    visited = screenshot(Path(sys.argv[1]), Path(sys.argv[2]), max_width=800)
    outside = [u for u in visited.requests if not u.startswith(("data:", "file:"))]
    print(f"wrote {sys.argv[2]}; {len(visited.requests)} requests, outside the file: {outside or 'none'}")
