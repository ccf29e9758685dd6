"""Headless Chromium driven through the DevTools protocol over a pipe (no extra package, no port).

Chromium's ``--remote-debugging-pipe`` reads JSON commands from file descriptor 3 and writes
replies and events to descriptor 4, each message ended by a NUL byte. ``Browser`` opens one page,
navigates it, evaluates JavaScript in it (``eval``, ``wait_for``) and takes screenshots; tests use
it to check the report's DOM after its scripts ran, to click, and to time the load.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str | None:
    """The Chromium binary on PATH, if any."""
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Browser:
    """One headless Chromium with one page of ``width`` x ``height`` CSS pixels."""

    def __init__(self, binary: str, profile: str, width: int = 1280, height: int = 900, timeout: float = 60):
        self.timeout, self._next, self._buf, self._events = timeout, 0, b"", []
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # Move the child's ends above 2..4 first so the dup2 calls below cannot clobber each other.
        high_r, high_w = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w))
        os.close(to_browser_r)
        os.close(from_browser_w)

        def child_fds() -> None:
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self.proc = subprocess.Popen([binary, *FLAGS, "--remote-debugging-pipe", f"--user-data-dir={profile}"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=child_fds, pass_fds=(3, 4, high_r, high_w))
        os.close(high_r)
        os.close(high_w)
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.call("Page.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                         "mobile": False}, session=True)

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium exited (code {self.proc.poll()})")
            self._buf += chunk
        message, self._buf = self._buf.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, session: bool = False) -> dict:
        """Sends one protocol command; its result (RuntimeError on a protocol error)."""
        self._next += 1
        message = {"id": self._next, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self._events.append(reply)

    def open(self, url: str) -> None:
        """Navigates the page to ``url`` and waits for its load event (none when only the hash changed)."""
        self._events.clear()
        if "loaderId" not in self.call("Page.navigate", {"url": url}, session=True):
            return  # same-document navigation
        deadline = time.monotonic() + self.timeout
        while not any(e.get("method") == "Page.loadEventFired" for e in self._events):
            self._events.append(self._read(deadline))

    def eval(self, expression: str):
        """The value of a JavaScript expression in the page (promises awaited)."""
        out = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True},
                        session=True)
        if "exceptionDetails" in out:
            raise RuntimeError(f"{expression[:80]}: {out['exceptionDetails'].get('exception', out['exceptionDetails'])}")
        return out["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20):
        """Polls until ``expression`` is truthy; its value (TimeoutError after ``timeout`` s)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.eval(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"still false after {timeout} s: {expression}")
            time.sleep(0.05)

    def screenshot(self, path: str, full_page: bool = False) -> None:
        """A PNG of the page (``full_page``: beyond the viewport too)."""
        data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": full_page},
                         session=True)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
