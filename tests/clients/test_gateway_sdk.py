"""cortex's inference API through the official openai and anthropic SDKs, end to end: a real
neuron supervising real llama-server processes with the gemma-3-270m model. The neuron's
capacity is limited so that only one of the two fleet models fits at a time."""

import concurrent.futures
import re
import urllib.request

import anthropic
import openai
import pytest

from stack import Stack

MODELS = """
[[model]]
id = "gemma-3-270m"
aliases = ["gemma"]
harness = "llamacpp"
source = "gemma-3-270m-q4_k_m.gguf"
quant = "Q4_K_M"
min_devices = 0
ram_mb = 400
ctx_size = 2048

[[model]]
id = "gemma-b"
harness = "llamacpp"
source = "gemma-3-270m-q4_k_m.gguf"
quant = "Q4_K_M"
min_devices = 0
ram_mb = 400
ctx_size = 2048
"""

PROMPT = [{"role": "user", "content": "Say hello in three words."}]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("gateway"), MODELS, capacity_ram_mb=700).start()
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def oai(stack):
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key=Stack.API_KEY, timeout=120)


@pytest.fixture(scope="module")
def claude(stack):
    return anthropic.Anthropic(base_url=stack.url, api_key=Stack.API_KEY, timeout=120)


def test_a_first_request_cold_loads_the_model(stack, oai):
    models = {m.id: m for m in oai.models.list().data}
    assert set(models) == {"gemma-3-270m", "gemma-b"}, stack.logs()
    response = oai.chat.completions.create(model="gemma", messages=PROMPT, max_tokens=12)
    assert response.choices[0].message.content, stack.logs()
    assert response.usage.completion_tokens > 0
    models = {m.id: m for m in oai.models.list().data}
    assert models["gemma-3-270m"].model_extra["loaded"] is True
    assert models["gemma-3-270m"].model_extra["locations"] == ["local"]


def test_openai_chat_streaming_without_and_with_usage(oai):
    chunks = list(oai.chat.completions.create(model="gemma-3-270m", messages=PROMPT, max_tokens=12, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert all(c.choices for c in chunks), "no usage-only chunk unless asked for"
    assert all(c.usage is None for c in chunks)

    chunks = list(
        oai.chat.completions.create(
            model="gemma-3-270m",
            messages=PROMPT,
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens > 0


def test_openai_legacy_completions(oai):
    response = oai.completions.create(model="gemma-3-270m", prompt="The sky is", max_tokens=8)
    assert response.choices[0].text
    assert response.usage.prompt_tokens > 0


def test_anthropic_messages(claude):
    message = claude.messages.create(
        model="gemma-3-270m", max_tokens=16, system="You are terse.", messages=PROMPT
    )
    assert message.role == "assistant"
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.output_tokens > 0


def test_anthropic_streaming(claude):
    with claude.messages.stream(model="gemma-3-270m", max_tokens=16, messages=PROMPT) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(texts) == final.content[0].text
    assert final.usage.output_tokens > 0


def test_anthropic_tools_stream_parses(claude):
    tools = [
        {
            "name": "get_weather",
            "description": "Weather for a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        }
    ]
    with claude.messages.stream(
        model="gemma-3-270m",
        max_tokens=64,
        tools=tools,
        messages=[{"role": "user", "content": "What is the weather in Paris? Use the tool."}],
    ) as stream:
        final = stream.get_final_message()
    assert final.content, "the SDK assembled a message"
    for block in final.content:
        assert block.type in ("text", "tool_use")
        if block.type == "tool_use":
            assert block.name == "get_weather"
            assert isinstance(block.input, dict)


def test_anthropic_count_tokens_is_exact(claude):
    short = claude.messages.count_tokens(model="gemma-3-270m", messages=[{"role": "user", "content": "hi"}])
    longer = claude.messages.count_tokens(
        model="gemma-3-270m", messages=[{"role": "user", "content": "hi " * 50}]
    )
    assert 0 < short.input_tokens < longer.input_tokens


def test_errors_in_each_dialect(oai, claude):
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="no-such-model", messages=PROMPT, max_tokens=4)
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model="no-such-model", max_tokens=4, messages=PROMPT)
    bad = openai.OpenAI(base_url=oai.base_url, api_key="wrong")
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="gemma-3-270m", messages=PROMPT, max_tokens=4)


def test_alternating_two_models_that_do_not_fit_together(stack, oai):
    """Only one model fits the neuron's capacity: each switch evicts the other, and no request fails."""
    for model in ["gemma-b", "gemma-3-270m", "gemma-b", "gemma-3-270m"]:
        response = oai.chat.completions.create(model=model, messages=PROMPT, max_tokens=6)
        assert response.choices[0].message.content is not None, stack.logs()
    # Concurrent requests for both: each waits its turn, none fails.
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [
            pool.submit(oai.chat.completions.create, model=m, messages=PROMPT, max_tokens=6)
            for m in ["gemma-b", "gemma-3-270m", "gemma-b", "gemma-3-270m"]
        ]
        for future in futures:
            assert future.result().choices, stack.logs()


def test_metrics_show_ttft_and_tokens(stack, oai):
    oai.chat.completions.create(model="gemma-3-270m", messages=PROMPT, max_tokens=6)
    text = urllib.request.urlopen(stack.metrics_url, timeout=5).read().decode()
    # Series exist (at 0) from a model's first request on: what is checked is that they counted.
    assert re.search(r'cortex_time_to_first_token_seconds_count\{[^}]*model="gemma-3-270m"[^}]*\} [1-9]', text), text
    tokens = re.search(r'cortex_tokens_total\{[^}]*kind="completion"[^}]*model="gemma-3-270m"[^}]*\} (\d+)', text) or re.search(
        r'cortex_tokens_total\{[^}]*model="gemma-3-270m"[^}]*kind="completion"[^}]*\} (\d+)', text
    )
    assert tokens and int(tokens.group(1)) > 0, text
    assert "cortex_cold_starts_total" in text
    assert "cortex_evictions_total" in text
