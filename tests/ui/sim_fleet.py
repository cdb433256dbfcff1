"""A simulated fleet for the fleet page test: two `neuron` processes with the sim harness (no GPU,
no model file) and `cortex serve` over a fleet directory that declares them, on free loopback
ports in a temporary directory. Binaries come from NEURON_BIN / CORTEX_BIN, else
$CARGO_TARGET_DIR/debug; a missing one fails with the command that builds it."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

CACHE = pathlib.Path(os.environ.get("CORTEX_CACHE", pathlib.Path.home() / ".cache" / "cortex"))
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", CACHE / "target"))

ADMIN_KEY = "admin-key"
API_KEY = "client-key"
NEURON_TOKEN = "neuron-token"

# Each neuron: its sim devices and engine figures, and a fixed host RAM for CPU models.
NEURONS = {
    "atlas": {"devices": [("SimGPU 48G", 49152), ("SimGPU 48G", 49152)], "load_ms": 3000, "ram_mb": 131072},
    "pico": {"devices": [("SimGPU 16G", 16384)], "load_ms": 1200, "ram_mb": 32768},
}

MODELS = """
[[model]]
id = "qwen3-coder-30b"
aliases = ["coder"]
harness = "sim"
source = "qwen3-coder-30b-a3b-q4_k_m.gguf"
vram_mb = 38000
min_devices = 2
min_device_vram_mb = 16000
pinned_on = ["atlas"]

[[model]]
id = "llama-3.1-8b"
aliases = ["chat"]
harness = "sim"
source = "llama-3.1-8b-q4_k_m.gguf"
vram_mb = 9000
replicas = 1

[[model]]
id = "nomic-embed"
harness = "sim"
source = "nomic-embed-text-v1.5.gguf"
min_devices = 0
ram_mb = 1400
pinned_on = ["pico"]

[[model]]
id = "gemma-3-12b"
aliases = ["vision"]
harness = "sim"
source = "gemma-3-12b-q4_k_m.gguf"
vram_mb = 14000
"""


def binary(env: str, name: str) -> pathlib.Path:
    path = pathlib.Path(os.environ.get(env, TARGET / "debug" / name))
    assert path.is_file(), f"{name} is not built at {path}: run `cargo build --bins -p cortexd -p neuron` (or set {env})"
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, deadline_s: float, proc: subprocess.Popen, log: pathlib.Path) -> None:
    deadline = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args[0]} exited with {proc.returncode} before {url} answered:\n{tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except Exception as error:  # noqa: BLE001 - any failure means "not yet"
            last = error
        time.sleep(0.05)
    raise AssertionError(f"{url} did not answer within {deadline_s}s ({last}):\n{tail(log)}")


def tail(path: pathlib.Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


class SimFleet:
    def __init__(self, root: pathlib.Path):
        self.root = root
        self.ports = {name: free_port() for name in NEURONS}
        self.api_port = free_port()
        self.ui_port = free_port()
        self.neurons: dict[str, subprocess.Popen] = {}
        self.cortex: subprocess.Popen | None = None
        (root / "token").write_text(NEURON_TOKEN + "\n")
        (root / "models").mkdir()
        for name, spec in NEURONS.items():
            self._write_neuron_config(name, spec)
        self.fleet_dir = root / "fleet"
        self.fleet_dir.mkdir()
        self.write_fleet(self.fleet_text())
        self._commit_fleet()
        (root / "cortex.toml").write_text(
            f"""listen = "127.0.0.1:{self.api_port}"
metrics_listen = "127.0.0.1:{self.ui_port}"
api_keys = ["{API_KEY}"]
admin_key = "{ADMIN_KEY}"
neuron_token = "{NEURON_TOKEN}"

[poll]
interval = "300ms"
unreachable_after = 2
"""
        )

    def _write_neuron_config(self, name: str, spec: dict) -> None:
        devices = ", ".join(f'{{ name = "{d}", vram_mb = {mb} }}' for d, mb in spec["devices"])
        engines = free_port()
        (self.root / f"{name}.toml").write_text(
            f"""name = "{name}"
listen = "127.0.0.1:{self.ports[name]}"
models_dir = "{self.root / 'models'}"
token_file = "{self.root / 'token'}"
log_dir = "{self.root / 'logs' / name}"
port_range = "{engines}-{engines + 20}"

[capacity]
ram_mb = {spec["ram_mb"]}

[harness.sim]
kind = "sim"
load_ms = {spec["load_ms"]}
ttft_ms = 35
tokens_per_second = 120
devices = [{devices}]
"""
        )

    def _commit_fleet(self) -> None:
        """Make the fleet directory a git repository, as fleets are, so the page shows a commit."""
        git = ["git", "-C", str(self.fleet_dir), "-c", "user.name=cortex test", "-c", "user.email=test@cortex.invalid"]
        for args in (["init", "-q"], ["add", "fleet.toml"], ["commit", "-q", "-m", "the simulated fleet"]):
            subprocess.run([*git, *args], check=True, capture_output=True)

    def fleet_text(self) -> str:
        neurons = "".join(
            f'[[neuron]]\nname = "{name}"\nendpoint = "http://127.0.0.1:{port}"\n\n' for name, port in self.ports.items()
        )
        return f"# The fleet page test's simulated fleet.\n\n{neurons}{MODELS}"

    def write_fleet(self, text: str) -> None:
        """Replace fleet.toml the way editors save: write a temporary file, rename it over."""
        tmp = self.fleet_dir / ".fleet.toml.tmp"
        tmp.write_text(text)
        tmp.rename(self.fleet_dir / "fleet.toml")

    def start(self) -> "SimFleet":
        for name in NEURONS:
            self.start_neuron(name)
        self.start_cortex()
        return self

    def start_neuron(self, name: str) -> None:
        log = self.root / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [binary("NEURON_BIN", "neuron"), "--config", self.root / f"{name}.toml"], stdout=out, stderr=subprocess.STDOUT
            )
        self.neurons[name] = proc
        wait_http(f"http://127.0.0.1:{self.ports[name]}/livez", 30, proc, log)

    def start_cortex(self) -> None:
        log = self.root / "cortex.log"
        with open(log, "ab") as out:
            self.cortex = subprocess.Popen(
                [binary("CORTEX_BIN", "cortex"), "serve", "--fleet", self.fleet_dir, "--config", self.root / "cortex.toml"],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_http(f"{self.api_url}/health", 30, self.cortex, log)

    def stop_cortex(self) -> None:
        assert self.cortex is not None
        self.cortex.send_signal(signal.SIGTERM)
        try:
            self.cortex.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.cortex.kill()
            self.cortex.wait()
            raise AssertionError(f"cortex serve did not stop within 20s of SIGTERM:\n{tail(self.root / 'cortex.log')}")

    def kill_neuron(self, name: str) -> None:
        self.neurons[name].kill()
        self.neurons[name].wait()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.ui_port}/ui"

    def chat(self, model: str, stream: bool = False, timeout_s: float = 60) -> dict:
        body = {"model": model, "max_tokens": 24, "stream": stream, "messages": [{"role": "user", "content": "hello"}]}
        request = urllib.request.Request(
            f"{self.api_url}/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"},
        )
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            text = response.read().decode()
        return {"status": response.status, "body": text}

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{tail(p)}" for p in sorted(self.root.glob("*.log")))

    def stop(self) -> None:
        procs = [p for p in [self.cortex, *self.neurons.values()] if p is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
