"""Reusable pytest fixtures for the client tests: free loopback ports, locating built binaries,
and starting a daemon that is polled until ready (with a deadline) and always torn down.
Keep this general: fixtures for each binary (neuron, cortex) build on `processes`."""

import os
import pathlib
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

CACHE = pathlib.Path(os.environ.get("CORTEX_CACHE", pathlib.Path.home() / ".cache" / "cortex"))
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", CACHE / "target"))


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def built_binary(env: str, name: str) -> pathlib.Path:
    """The binary named by `env`, else `$CARGO_TARGET_DIR/debug/<name>`; fails (never skips) if missing."""
    path = pathlib.Path(os.environ.get(env, TARGET / "debug" / name))
    if not path.is_file():
        pytest.fail(f"{name} is not built at {path}: run `cargo build --workspace --bins` (or set {env})")
    return path


def poll_until_ready(url: str, deadline_s: float, proc: subprocess.Popen, log_path: pathlib.Path) -> None:
    """Poll `url` until it answers 200; fail with the process's log if it exits or the deadline passes."""
    deadline = time.monotonic() + deadline_s
    delay, last = 0.02, None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[0]} exited with {proc.returncode} before {url} answered:\n{tail(log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except Exception as error:  # noqa: BLE001 - any failure means "not yet"
            last = error
        time.sleep(delay)
        delay = min(delay * 2, 0.25)
    pytest.fail(f"{url} did not answer within {deadline_s}s ({last}):\n{tail(log_path)}")


def tail(path: pathlib.Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


class Daemon:
    """A started process, its log file, and how to stop it."""

    def __init__(self, proc: subprocess.Popen, log_path: pathlib.Path):
        self.proc = proc
        self.log_path = log_path

    def log(self) -> str:
        return tail(self.log_path)

    def stop(self, timeout_s: float = 30) -> int:
        """SIGTERM, then SIGKILL after `timeout_s`; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


class Processes:
    """Starts daemons for one test and stops them all at teardown."""

    def __init__(self, root: pathlib.Path):
        self.root = root
        self.started: list[Daemon] = []

    def start(self, argv: list, ready_url: str, env: dict | None = None, deadline_s: float = 30, name: str = "daemon") -> Daemon:
        log_path = self.root / f"{name}-{len(self.started)}.log"
        log = open(log_path, "wb")
        proc = subprocess.Popen(
            [str(a) for a in argv], stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        log.close()
        daemon = Daemon(proc, log_path)
        self.started.append(daemon)
        poll_until_ready(ready_url, deadline_s, proc, log_path)
        return daemon

    def stop_all(self) -> None:
        for daemon in reversed(self.started):
            daemon.stop()


@pytest.fixture
def processes(tmp_path):
    """Start daemons with `processes.start(argv, ready_url=...)`; they are stopped after the test."""
    runner = Processes(tmp_path)
    yield runner
    runner.stop_all()
