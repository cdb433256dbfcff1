"""A real cortex stack for client tests: a `neuron` with the real llama-server harness and the
gemma-3-270m model, and `cortex serve` with a fleet pointing at it. Binaries come from
NEURON_BIN / CORTEX_BIN (tests/check.sh sets them); the engine and model from tests/env.sh.
Missing pieces fail the tests with a message saying how to install them; nothing is skipped."""

import os
import pathlib
import socket
import subprocess
import time
import urllib.request

CACHE = pathlib.Path(os.environ.get("CORTEX_CACHE", pathlib.Path.home() / ".cache" / "cortex"))
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", CACHE / "target"))
LLAMA_SERVER = pathlib.Path(
    os.environ.get("LLAMA_SERVER", CACHE / "llama.cpp" / "11434.0.0" / "bin" / "llama-server")
)
MODELS_DIR = pathlib.Path(os.environ.get("CORTEX_MODELS_DIR", CACHE / "models"))
GEMMA = "gemma-3-270m-q4_k_m.gguf"


def binary(env: str, name: str) -> pathlib.Path:
    path = pathlib.Path(os.environ.get(env, TARGET / "debug" / name))
    assert path.is_file(), f"{name} is not built at {path}: run `cargo build --workspace --bins` (or set {env})"
    return path


def require_engine() -> None:
    assert LLAMA_SERVER.is_file(), f"llama-server is missing at {LLAMA_SERVER}: run `bash tests/install.sh`"
    assert (MODELS_DIR / GEMMA).is_file(), f"{GEMMA} is missing in {MODELS_DIR}: run `bash tests/install.sh`"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, deadline_s: float, headers: dict | None = None, proc: subprocess.Popen | None = None) -> None:
    """Poll `url` until it answers 200, failing with the process's log if it dies first."""
    deadline = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before {url} answered")
        try:
            request = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
        except Exception as error:  # noqa: BLE001 - any failure means "not yet"
            last = error
        time.sleep(0.05)
    raise AssertionError(f"{url} did not answer within {deadline_s}s: {last}")


class Stack:
    """neuron + cortex serve on free loopback ports, in a temporary directory."""

    API_KEY = "client-key"
    ADMIN_KEY = "admin-key"
    NEURON_TOKEN = "neuron-token"

    def __init__(
        self, root: pathlib.Path, fleet_models: str, capacity_ram_mb: int | None = None, extra_harnesses: str = ""
    ):
        require_engine()
        self.root = root
        self.neuron_port = free_port()
        self.api_port = free_port()
        self.metrics_port = free_port()
        self.procs: list[subprocess.Popen] = []
        base = free_port()
        self.engine_ports = f"{base}-{base + 20}"
        (root / "token").write_text(self.NEURON_TOKEN + "\n")
        capacity = f"\n[capacity]\nram_mb = {capacity_ram_mb}\n" if capacity_ram_mb else ""
        (root / "neuron.toml").write_text(
            f"""name = "local"
listen = "127.0.0.1:{self.neuron_port}"
models_dir = "{MODELS_DIR}"
token_file = "{root / 'token'}"
log_dir = "{root / 'logs'}"
port_range = "{self.engine_ports}"
{capacity}
[harness.llamacpp]
kind = "llamacpp"
binary = "{LLAMA_SERVER}"
{extra_harnesses}"""
        )
        self.fleet_dir = root / "fleet"
        self.fleet_dir.mkdir()
        self.write_fleet(fleet_models)
        (root / "cortex.toml").write_text(
            f"""listen = "127.0.0.1:{self.api_port}"
metrics_listen = "127.0.0.1:{self.metrics_port}"
api_keys = ["{self.API_KEY}"]
admin_key = "{self.ADMIN_KEY}"
neuron_token = "{self.NEURON_TOKEN}"

[poll]
interval = "500ms"
"""
        )

    def write_fleet(self, models: str) -> None:
        text = f"""[[neuron]]
name = "local"
endpoint = "http://127.0.0.1:{self.neuron_port}"

{models}
"""
        tmp = self.fleet_dir / ".fleet.toml.tmp"
        tmp.write_text(text)
        tmp.rename(self.fleet_dir / "fleet.toml")

    def start(self) -> "Stack":
        self.neuron_log = open(self.root / "neuron.log", "wb")
        self.cortex_log = open(self.root / "cortex.log", "wb")
        neuron = subprocess.Popen(
            [binary("NEURON_BIN", "neuron"), "--config", self.root / "neuron.toml"],
            stdout=self.neuron_log,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(neuron)
        wait_http(f"http://127.0.0.1:{self.neuron_port}/livez", 30, proc=neuron)
        self.procs.append(self.start_cortex())
        return self

    def start_cortex(self) -> subprocess.Popen:
        cortex = subprocess.Popen(
            [binary("CORTEX_BIN", "cortex"), "serve", "--fleet", self.fleet_dir, "--config", self.root / "cortex.toml"],
            stdout=self.cortex_log,
            stderr=subprocess.STDOUT,
        )
        wait_http(f"{self.url}/health", 30, proc=cortex)
        return cortex

    def restart_cortex(self) -> None:
        """Stop `cortex serve` (SIGTERM, as systemd does) and start it again on the same ports."""
        cortex = self.procs.pop()
        cortex.terminate()
        cortex.wait(timeout=30)
        self.procs.append(self.start_cortex())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def logs(self) -> str:
        out = []
        for name in ("neuron.log", "cortex.log"):
            path = self.root / name
            if path.exists():
                out.append(f"--- {name} ---\n" + path.read_text(errors="replace")[-4000:])
        return "\n".join(out)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# One model served natively and one translated (its harness declares neither Messages nor
# Responses), both capped by the fleet at CAP output tokens, above the CLIENT_LIMIT the tests
# ask for when they want the client's own limit to stop an answer.
CAP = 24
CLIENT_LIMIT = 8
PATHS = ["gemma-native", "gemma-translated"]

_TWO_PATHS_HARNESSES = """
[harness.translated]
kind = "llamacpp"
binary = "{binary}"
anthropic_messages = false
responses = false
"""

_TWO_PATHS_MODELS = "".join(
    f"""
[[model]]
id = "{model}"
harness = "{harness}"
source = "{GEMMA}"
min_devices = 0
ram_mb = 400
ctx_size = 2048
max_output_tokens = {CAP}
"""
    for model, harness in zip(PATHS, ["llamacpp", "translated"])
)


def start_two_paths(state_dir: pathlib.Path) -> "Stack":
    """A started stack serving PATHS: gemma natively and translated."""
    extra = _TWO_PATHS_HARNESSES.format(binary=LLAMA_SERVER)
    return Stack(state_dir, _TWO_PATHS_MODELS, extra_harnesses=extra).start()
