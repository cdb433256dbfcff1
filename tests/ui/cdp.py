"""A minimal Chrome DevTools Protocol client for the fleet page test: starts headless Chromium
with `--remote-debugging-pipe` (commands on fd 3, answers on fd 4, each message JSON ended by a
NUL byte), so it needs nothing beyond the standard library. It opens one page, evaluates
JavaScript in it, records uncaught exceptions, and takes screenshots."""

import base64
import fcntl
import json
import os
import pathlib
import queue
import shutil
import subprocess
import tempfile
import threading
import time


def chromium_path() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "chromium is not installed: run `bash tests/install-browser.sh` (Debian's chromium package)"
    return path


def high_fd(fd: int) -> int:
    """`fd` moved to a number of 10 or more."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return moved


class CdpError(AssertionError):
    pass


class Browser:
    """Headless Chromium with one page, driven over the DevTools pipe."""

    def __init__(self, width: int = 1440, height: int = 1000):
        self.profile = tempfile.mkdtemp(prefix="cortex-ui-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # The child's ends go to fds 3 and 4; keep them clear of those numbers so that moving
        # one there cannot close the other.
        to_browser_r, from_browser_w = (high_fd(fd) for fd in (to_browser_r, from_browser_w))
        argv = [
            chromium_path(),
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
            "--remote-debugging-pipe",
            f"--user-data-dir={self.profile}",
            f"--window-size={width},{height}",
            "about:blank",
        ]
        # Chromium reads commands from fd 3 and writes answers to fd 4: move the pipe ends there.
        shell = f'exec 3<&{to_browser_r} 4>&{from_browser_w} {to_browser_r}<&- {from_browser_w}>&-; exec "$@"'
        self.log = open(pathlib.Path(self.profile) / "chromium.log", "wb")
        self.proc = subprocess.Popen(
            ["bash", "-c", shell, "bash", *argv],
            pass_fds=(to_browser_r, from_browser_w),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._answers: dict[int, queue.Queue] = {}
        self._lock = threading.Lock()
        self.exceptions: list[str] = []
        self.console: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page.enable", "Runtime.enable"):
            self.send(domain, session=True)
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=True,
        )
        self.width = width

    def _read(self) -> None:
        buffer = b""
        while True:
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                return
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                self._dispatch(json.loads(raw))

    def _dispatch(self, message: dict) -> None:
        if "id" in message:
            with self._lock:
                answer = self._answers.get(message["id"])
            if answer is not None:
                answer.put(message)
        elif message.get("method") == "Runtime.exceptionThrown":
            details = message["params"]["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            self.exceptions.append(f"{text} at {details.get('url')}:{details.get('lineNumber')}")
        elif message.get("method") == "Runtime.consoleAPICalled":
            args = message["params"].get("args", [])
            self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))

    def send(self, method: str, params: dict | None = None, session: bool = False, timeout_s: float = 30) -> dict:
        with self._lock:
            self._next_id += 1
            ident = self._next_id
            answer: queue.Queue = queue.Queue()
            self._answers[ident] = answer
        message = {"id": ident, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        try:
            reply = answer.get(timeout=timeout_s)
        except queue.Empty:
            raise CdpError(f"chromium did not answer {method} within {timeout_s}s") from None
        finally:
            with self._lock:
                self._answers.pop(ident, None)
        if "error" in reply:
            raise CdpError(f"{method} failed: {reply['error']}")
        return reply.get("result", {})

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", {"url": url}, session=True)

    def evaluate(self, expression: str):
        """The value of `expression` in the page (JSON-serialisable results only)."""
        result = self.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}, session=True
        )
        if "exceptionDetails" in result:
            raise CdpError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, deadline_s: float, what: str) -> None:
        """Poll `expression` until it is truthy (in JavaScript's sense), or fail saying `what`."""
        deadline = time.monotonic() + deadline_s
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.evaluate(f"!!({expression})")
            except CdpError as error:
                last = error
            if last is True:
                return
            time.sleep(0.05)
        raise AssertionError(f"the page did not show {what} within {deadline_s}s (last: {last!r})")

    def screenshot(self, path: pathlib.Path) -> pathlib.Path:
        """A PNG of the whole page (not just the viewport)."""
        height = int(self.evaluate("Math.ceil(document.documentElement.scrollHeight)") or 1000)
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": self.width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=True,
        )
        shot = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout_s=5)
        except (CdpError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser)
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)
