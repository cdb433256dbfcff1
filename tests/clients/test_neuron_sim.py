"""The `neuron` binary with the SIMULATED engine, through the official openai SDK: a sim model is
loaded through the neuron API, then the SDK must parse streaming and non-streaming chat,
legacy completions and embeddings proxied by the neuron."""

import json
import urllib.error
import urllib.request

import openai
import pytest

from conftest import built_binary, free_port

TOKEN = "sim-test-token"
MODEL = "sim/chat-model"


class SimNeuron:
    def __init__(self, url: str, daemon):
        self.url = url
        self.daemon = daemon

    def call(self, method: str, path: str, body: dict | None = None, token: str | None = TOKEN):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())


@pytest.fixture
def neuron(processes, tmp_path):
    port = free_port()
    engines = free_port()
    (tmp_path / "models").mkdir()
    config = tmp_path / "neuron.toml"
    config.write_text(
        f"""name = "sim-test"
listen = "127.0.0.1:{port}"
models_dir = "{tmp_path / 'models'}"
log_dir = "{tmp_path / 'logs'}"
port_range = "{engines}-{engines + 10}"

[harness.sim]
kind = "sim"
load_ms = 200
ttft_ms = 20
tokens_per_second = 500
devices = [{{ name = "SimGPU 24G", vram_mb = 24000 }}]
"""
    )
    daemon = processes.start(
        [built_binary("NEURON_BIN", "neuron"), "--config", config],
        ready_url=f"http://127.0.0.1:{port}/livez",
        env={"NEURON_TOKEN": TOKEN},
        name="neuron",
    )
    node = SimNeuron(f"http://127.0.0.1:{port}", daemon)
    status, loading = node.call("POST", "/models/load", {
        "model": MODEL, "profile": {"harness": "sim", "source": "chat.gguf"}, "devices": [0], "vram_mb": 8000,
    })
    assert status == 202, loading
    status, ready = node.call("GET", f"/models/wait?model={MODEL}&timeout_ms=30000")
    assert (status, ready["status"]) == (200, "loaded"), ready
    return node


def client(node: SimNeuron, token: str = TOKEN) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{node.url}/v1", api_key=token, max_retries=0)


def test_discovery_is_labelled_simulated(neuron):
    status, discovery = neuron.call("GET", "/discovery")
    assert status == 200
    assert discovery["simulated"] is True
    assert discovery["devices"][0]["name"] == "SimGPU 24G"
    status, _ = neuron.call("GET", "/discovery", token=None)
    assert status == 401


def test_non_streaming_chat(neuron):
    answer = client(neuron).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=8
    )
    assert answer.model == MODEL
    assert answer.system_fingerprint == "cortex-sim"
    assert answer.choices[0].message.content.startswith("This is simulated output")
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == 8


def test_streaming_chat_with_usage(neuron):
    stream = client(neuron).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("This is simulated output")
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12


def test_completions_and_embeddings(neuron):
    sdk = client(neuron)
    completion = sdk.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=4)
    assert completion.choices[0].text == "This is simulated output"
    embedding = sdk.embeddings.create(model=MODEL, input=["a", "b"])  # the SDK asks for base64
    assert len(embedding.data) == 2 and len(embedding.data[0].embedding) == 8


def test_errors_are_raised_by_the_sdk(neuron):
    with pytest.raises(openai.AuthenticationError):
        client(neuron, token="wrong").chat.completions.create(model=MODEL, messages=[])
    with pytest.raises(openai.NotFoundError):
        client(neuron).chat.completions.create(model="no-such-model", messages=[])


def test_shutdown_stops_engines_and_exits_cleanly(neuron):
    status, models = neuron.call("GET", "/models")
    assert status == 200 and models["models"][0]["status"] == "loaded"
    assert neuron.daemon.stop() == 0, neuron.daemon.log()
    assert "stopping 1 engines" in neuron.daemon.log()
