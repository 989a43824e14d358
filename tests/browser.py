"""A headless Chromium driven over the DevTools protocol, for the report's browser tests.

The browser talks CDP over a pipe (``--remote-debugging-pipe``: it reads
NUL-terminated JSON on fd 3 and writes on fd 4), so no WebSocket library and
no port are needed. Its network is cut three ways: every host resolves to
nothing, every request goes to a proxy that does not exist, and the page's
network is emulated offline; every request the page makes is recorded, so a
test can assert that none left ``file:`` and ``data:``.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

TIMEOUT_S = 30.0


def chromium_executable() -> str | None:
    """Debian's ``chromium`` (or another Chromium/Chrome on PATH), or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class PageLog:
    """What a page did while loaded: console messages, uncaught exceptions, log entries, requests."""

    console: list[dict] = field(default_factory=list)
    exceptions: list[dict] = field(default_factory=list)
    log: list[dict] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)

    def errors(self) -> list[str]:
        """Every console error or warning, uncaught exception, error log entry and failed request, as text."""
        found = [f"console.{entry['type']}: {[arg.get('value', arg.get('description')) for arg in entry['args']]}"
                 for entry in self.console if entry["type"] in ("error", "warning", "assert")]
        for entry in self.exceptions:
            details = entry["exceptionDetails"]
            found.append(f"exception: {details.get('text')} {details.get('exception', {}).get('description', '')}")
        found += [f"log {entry['entry']['level']}: {entry['entry']['text']} {entry['entry'].get('url', '')}"
                  for entry in self.log if entry["entry"]["level"] in ("error", "warning")]
        found += [f"request failed: {entry.get('errorText')}" for entry in self.failed]
        return found


class Browser:
    """One headless Chromium process; ``open(path)`` loads a file in a fresh tab and returns a ``Page``."""

    def __init__(self, executable: str):
        self._profile = tempfile.TemporaryDirectory(prefix="vera-chromium-")
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()

        def pipes_on_3_and_4() -> None:  # runs in the child, before exec
            # Through fresh copies: dup2 onto the same number (a pipe already on 3) keeps close-on-exec.
            reading, writing = os.dup(to_browser_read), os.dup(from_browser_write)
            os.dup2(reading, 3)
            os.dup2(writing, 4)
            os.set_inheritable(3, True)
            os.set_inheritable(4, True)

        self._stderr = open(Path(self._profile.name) / "stderr.txt", "wb")  # noqa: SIM115 - closed in close()
        self.process = subprocess.Popen(
            [executable, "--headless", "--disable-gpu", "--no-sandbox", "--remote-debugging-pipe",
             f"--user-data-dir={self._profile.name}", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",
             "--proxy-bypass-list=<-loopback>", "--hide-scrollbars", "--mute-audio", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr, pass_fds=(3, 4),
            preexec_fn=pipes_on_3_and_4)
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._next_id = 0
        self._replies: dict[int, dict] = {}
        self._events: queue.Queue = queue.Queue()
        self._lock = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        while True:
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                with self._lock:
                    self._lock.notify_all()
                return
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "id" in message:
                    with self._lock:
                        self._replies[message["id"]] = message
                        self._lock.notify_all()
                else:
                    self._events.put(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send one command and wait for its reply; a protocol error raises."""
        with self._lock:
            self._next_id += 1
            number = self._next_id
        message = {"id": number, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT_S
        with self._lock:
            while number not in self._replies:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    state = "exited" if self.process.poll() is not None else "silent"
                    raise RuntimeError(f"no reply to {method} (the browser {state})")
                self._lock.wait(0.1)
            reply = self._replies.pop(number)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def events(self) -> list[dict]:
        found = []
        while True:
            try:
                found.append(self._events.get_nowait())
            except queue.Empty:
                return found

    def open(self, path: Path, width: int = 1280, height: int = 900) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        for domain in ("Runtime", "Log", "Network", "Page"):
            self.send(f"{domain}.enable", session=session)
        self.send("Network.emulateNetworkConditions", {"offline": True, "latency": 0, "downloadThroughput": -1,
                                                       "uploadThroughput": -1}, session)
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                         "mobile": False}, session)
        self.events()  # the blank page's
        self.send("Page.navigate", {"url": Path(path).resolve().as_uri()}, session)
        page.wait_for("Page.loadEventFired")
        return page

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except RuntimeError:
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        self._stderr.close()
        self._profile.cleanup()


class Page:
    """One tab: evaluate JavaScript, click, take screenshots; ``log`` holds what it reported."""

    def __init__(self, browser: Browser, session: str):
        self.browser, self.session = browser, session
        self.log = PageLog()

    def _collect(self, events: list[dict]) -> list[str]:
        methods = []
        for event in events:
            if event.get("sessionId") != self.session:
                continue
            method, params = event["method"], event.get("params", {})
            methods.append(method)
            if method == "Runtime.consoleAPICalled":
                self.log.console.append(params)
            elif method == "Runtime.exceptionThrown":
                self.log.exceptions.append(params)
            elif method == "Log.entryAdded":
                self.log.log.append(params)
            elif method == "Network.requestWillBeSent":
                self.log.requests.append(params["request"]["url"])
            elif method == "Network.loadingFailed":
                self.log.failed.append(params)
        return methods

    def wait_for(self, method: str) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            if method in self._collect(self.browser.events()):
                return
            time.sleep(0.05)
        raise RuntimeError(f"page never sent {method}")

    def settle(self, seconds: float = 0.3) -> PageLog:
        """Let late events arrive, then return the log."""
        time.sleep(seconds)
        self._collect(self.browser.events())
        return self.log

    def evaluate(self, expression: str):
        """The JSON value of a JavaScript expression in the page; a thrown exception raises."""
        result = self.browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                        "awaitPromise": True}, self.session)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        """A real mouse click (press and release) in the middle of the first element matching ``selector``."""
        box = self.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
                            "e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect(); "
                            "return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.browser.send("Input.dispatchMouseEvent", {"type": kind, "x": box[0], "y": box[1], "button": "left",
                                                           "clickCount": 1}, self.session)

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        params = {"format": "png"}
        if full_page:
            size = self.browser.send("Page.getLayoutMetrics", session=self.session)["cssContentSize"]
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1})
        data = self.browser.send("Page.captureScreenshot", params, self.session)["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)
