"""Headless Chromium for the tests that check what a person sees (MLflow UI, the HTML report).

Chromium's own command line does the work (--dump-dom, --screenshot), so no browser-driver package is needed.
CI (.ci/run) installs Debian's `chromium`; elsewhere a missing browser skips the test.
"""
from __future__ import annotations

import base64
import fcntl
import html
import json
import os
import re
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture
def chromium() -> str:
    path = find_chromium()
    if path is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("chromium not found in CI: .ci/run installs it (apt-get install chromium)")
        pytest.skip("chromium not found: `apt-get install chromium` to run the browser tests")
    return path


def render(chromium: str, url: str, screenshot: Path, budget_ms: int = 20000, extra: Sequence[str] = (),
           window: str = "1600,1000") -> str:
    """The page's DOM after its scripts ran, and a screenshot of it (headless Chromium's own CLI).

    `extra` adds Chromium flags (e.g. a proxy that records requests); `window` is the viewport (and so the
    screenshot) size as "width,height"."""
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", f"--window-size={window}", f"--virtual-time-budget={budget_ms}",
             f"--user-data-dir={screenshot.parent / ('profile-' + screenshot.stem)}", *extra]
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=180)
    subprocess.run([*flags, f"--screenshot={screenshot}", url], capture_output=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    return dom.stdout


def visible_text(dom: str) -> str:
    """The page's text as a reader gets it: markup, scripts and styles dropped, whitespace collapsed."""
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)))


# ------------------------------------------------------------------ DevTools protocol over a pipe (stdlib only)
class DevTools:
    """Headless Chromium driven through the DevTools protocol on `--remote-debugging-pipe` (fd 3 in, fd 4
    out, NUL-terminated JSON): what a page requested, what its script-free DOM holds, full-page screenshots.

    Why not only --dump-dom: it cannot tell which requests the page made (a proxy also sees the browser's own
    update and time checks), and it needs a script in the page to read decoded image sizes."""

    def __init__(self, chromium: str, profile: Path, extra: Sequence[str] = (), timeout: float = 60.0) -> None:
        self.timeout = timeout
        cmd_r, self._cmd_w = os.pipe()
        self._out_r, out_w = os.pipe()
        cmd_r, out_w = (_high_fd(fd) for fd in (cmd_r, out_w))  # clear of 3 and 4, which bash rebinds
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--remote-debugging-pipe", f"--user-data-dir={profile}", *extra]
        # bash moves the pipe ends to the fds Chromium expects, then becomes Chromium
        script = f'exec "$0" "$@" 3<&{cmd_r} 4>&{out_w} {cmd_r}<&- {out_w}>&-'
        self.proc = subprocess.Popen(["bash", "-c", script, chromium, *flags, "about:blank"], pass_fds=(cmd_r, out_w),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        os.close(cmd_r)
        os.close(out_w)
        self._buf = b""
        self._next = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Call `method` and return its result (events that arrive meanwhile go to self.events)."""
        self._next += 1
        msg = {"id": self._next, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._next:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, seconds: float) -> bool:
        """Read events until one named `method` arrives (True) or `seconds` pass (False)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if any(e.get("method") == method for e in self.events):
                return True
            try:
                self.events.append(self._read(deadline - time.monotonic()))
            except TimeoutError:
                break
        return any(e.get("method") == method for e in self.events)

    def _read(self, seconds: float | None = None) -> dict:
        deadline = time.monotonic() + (self.timeout if seconds is None else max(seconds, 0.0))
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._out_r], [], [], max(left, 0.0))
            if not ready:
                raise TimeoutError("no DevTools message from chromium")
            chunk = os.read(self._out_r, 1 << 20)
            if not chunk:
                raise AssertionError("chromium closed its DevTools pipe (did it start? run it by hand)")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (AssertionError, OSError, TimeoutError):
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        os.close(self._cmd_w)
        os.close(self._out_r)


def _high_fd(fd: int) -> int:
    """`fd` moved to a number >= 100 (the old one closed)."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 100)
    os.close(fd)
    return high


@dataclass
class Visit:
    """What opening a page showed: every URL the page requested, the value of `probe` (a JS expression
    evaluated after load, e.g. image sizes), the DOM after load, and the screenshots: the whole page and
    the first screen (what a reader sees on opening it)."""

    requests: list[str]
    probe: object
    dom: str
    screenshot: Path
    first_screen: Path


def visit(chromium: str, url: str, screenshot: Path, probe: str = "null", settle_s: float = 1.0,
          extra: Sequence[str] = (), window: tuple[int, int] = (1400, 1000)) -> Visit:
    """Open `url` in one fresh headless Chromium, record the page's requests (DevTools Network domain),
    evaluate `probe` after the load event, and save a screenshot of the whole page (`screenshot`) and of
    the first `window`-sized screen (`<stem>-first-screen.png` beside it)."""
    first = screenshot.with_name(f"{screenshot.stem}-first-screen.png")
    tools = DevTools(chromium, screenshot.parent / f"profile-{screenshot.stem}",
                     [*extra, f"--window-size={window[0]},{window[1]}"])
    try:
        target = tools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = tools.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Network", "Page", "Runtime"):
            tools.send(f"{domain}.enable", session=session)
        tools.events.clear()
        tools.send("Page.navigate", {"url": url}, session=session)
        assert tools.wait_for("Page.loadEventFired", 60), f"{url} did not finish loading"
        tools.wait_for("never", settle_s)  # late requests (lazy images, timers) still get recorded
        def evaluate(expression: str) -> object:
            return tools.send("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                              session=session)["result"].get("value")

        value, dom = evaluate(probe), str(evaluate("document.documentElement.outerHTML"))
        tools.send("Emulation.setDeviceMetricsOverride", {"width": window[0], "height": window[1],
                                                          "deviceScaleFactor": 1, "mobile": False}, session=session)
        shot = tools.send("Page.captureScreenshot", {"format": "png"}, session=session)
        first.write_bytes(base64.b64decode(shot["data"]))
        size = tools.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
        shot = tools.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": {
            "x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}}, session=session)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        requests = [e["params"]["request"]["url"] for e in tools.events
                    if e.get("method") == "Network.requestWillBeSent" and e.get("sessionId") == session]
        return Visit(requests, value, dom, screenshot, first)
    finally:
        tools.close()
