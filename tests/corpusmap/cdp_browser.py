"""A headless Chromium driven over the Chrome DevTools Protocol (websockets only: no browser download).

Used by tests/corpusmap/test_map.py: it records console errors, exceptions, dialogs and every network request.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

__all__ = ["Browser", "chromium_path"]

#: Long enough for a cold start on a busy 2-core machine.
TIMEOUT = 60.0


def chromium_path() -> str | None:
    """The system Chromium (Debian's `chromium`), or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """One headless Chromium with one page (a flat CDP session); `events` keeps every event received."""

    def __init__(self, executable: str, width: int = 1000, height: int = 700) -> None:
        self._profile = tempfile.mkdtemp(prefix="embedstack-chromium-")
        self._proc = subprocess.Popen(
            [
                executable,
                "--headless",
                "--no-sandbox",  # root in a container has no user namespaces for the sandbox
                "--disable-gpu",
                "--remote-debugging-port=0",
                f"--user-data-dir={self._profile}",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._stack = contextlib.ExitStack()
        try:
            self._ws = self._stack.enter_context(connect(self._devtools_url(), max_size=None, open_timeout=TIMEOUT))
            self._ids = itertools.count(1)
            self.events: list[dict[str, Any]] = []
            target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
            self._session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                self.call(f"{domain}.enable")
            metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
            self.call("Emulation.setDeviceMetricsOverride", metrics)
        except BaseException:
            self.close()
            raise

    def _devtools_url(self) -> str:
        """The browser's websocket URL, from the "DevTools listening on ws://..." line it prints on stderr."""
        lines: queue.Queue[str] = queue.Queue()
        assert self._proc.stderr is not None
        stderr = self._proc.stderr

        def pump() -> None:
            for raw in stderr:
                lines.put(raw.decode(errors="replace"))
            lines.put("")

        threading.Thread(target=pump, daemon=True).start()
        seen = []
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"Chromium did not start within {TIMEOUT:.0f} s: {''.join(seen)[-2000:]}") from None
            found = re.search(r"DevTools listening on (ws://\S+)", line)
            if found:
                return found.group(1)
            if not line:
                raise RuntimeError(f"Chromium exited: {''.join(seen)[-2000:]}")
            seen.append(line)

    def _call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> Any:
        msg_id = next(self._ids)
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self._ws.send(json.dumps(msg))
        deadline = time.monotonic() + TIMEOUT
        while True:
            reply = json.loads(self._ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """Send a command to the page; returns its result (events that arrive meanwhile go to `events`)."""
        return self._call(method, params, self._session)

    def wait_event(self, method: str) -> dict[str, Any]:
        """Wait for the next event `method` from the page (or one already received and not yet waited for)."""
        for ev in self.events:
            if ev["method"] == method and not ev.get("_seen"):
                ev["_seen"] = True
                return ev
        deadline = time.monotonic() + TIMEOUT
        while True:
            ev = json.loads(self._ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if "method" in ev:
                self.events.append(ev)
                if ev["method"] == method:
                    ev["_seen"] = True
                    return ev

    def open(self, url: str) -> None:
        """Navigate and wait for the load event."""
        self.call("Page.navigate", {"url": url})
        self.wait_event("Page.loadEventFired")

    def eval(self, expression: str) -> Any:
        """Evaluate JS in the page (promises awaited); returns the value, raising on an exception."""
        res = self.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True})
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def screenshot(self) -> bytes:
        """A PNG of the viewport."""
        return base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"})["data"])

    def problems(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions, log errors and dialogs seen so far."""
        out = []
        for ev in self.events:
            m, p = ev["method"], ev.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning", "assert"):
                out.append(f"console.{p['type']}: {[a.get('value', a.get('description')) for a in p.get('args', [])]}")
            elif m == "Runtime.exceptionThrown":
                out.append(f"exception: {p['exceptionDetails']}")
            elif m == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
                out.append(f"log {p['entry']['level']}: {p['entry']['text']} {p['entry'].get('url', '')}")
            elif m == "Page.javascriptDialogOpening":
                out.append(f"dialog: {p.get('message')}")
        return out

    def requests(self) -> list[str]:
        """The URL of every request the page made."""
        return [ev["params"]["request"]["url"] for ev in self.events if ev["method"] == "Network.requestWillBeSent"]

    def close(self) -> None:
        """Stop Chromium and remove its profile."""
        self._stack.close()
        self._proc.terminate()
        try:
            self._proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def file_url(path: Path) -> str:
    """A file:// URL for a local path."""
    return Path(os.path.abspath(path)).as_uri()
