"""What coding agents send, through cortex, parsed by the official SDKs: the openai SDK's
Responses API (`responses.create`, `responses.stream`, whose accumulator checks the event
sequence) and the anthropic SDK with the current Messages surface (`role: "system"` messages,
`thinking`, `output_config`). Each runs over three paths: the sim engine (translated), the real
llama-server with its native APIs turned off (translated), and llama-server natively. A prompt
over a small context window gets the error each agent acts on."""

import re

import anthropic
import openai
import pytest

from stack import Stack

HARNESSES = """
[harness.translated]
kind = "llamacpp"
binary = "{binary}"
anthropic_messages = false
responses = false

[harness.sim]
kind = "sim"
load_ms = 100
ttft_ms = 10
tokens_per_second = 400
"""

MODELS = """
[[model]]
id = "gemma-native"
harness = "llamacpp"
source = "gemma-3-270m-q4_k_m.gguf"
min_devices = 0
ram_mb = 400
ctx_size = 2048
max_output_tokens = 24

[[model]]
id = "gemma-translated"
harness = "translated"
source = "gemma-3-270m-q4_k_m.gguf"
min_devices = 0
ram_mb = 400
ctx_size = 2048
max_output_tokens = 24

[[model]]
id = "sim-model"
harness = "sim"
source = "sim-model"
min_devices = 0
ram_mb = 100
max_output_tokens = 24

[[model]]
id = "gemma-small"
harness = "llamacpp"
source = "gemma-3-270m-q4_k_m.gguf"
min_devices = 0
ram_mb = 300
ctx_size = 256
"""

PATHS = ["sim-model", "gemma-translated", "gemma-native"]

CODEX_TOOLS = [
    {
        "type": "function",
        "name": "shell_command",
        "description": "Run a shell command",
        "strict": False,
        "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
    },
    {
        "type": "namespace",
        "name": "multi_agent_v1",
        "description": "Sub-agents",
        "tools": [{"type": "function", "name": "spawn_agent", "description": "Spawn", "parameters": {"type": "object", "properties": {}}}],
    },
    {"type": "web_search"},
]

CODEX_INPUT = [
    {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Answer briefly."}]},
    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say hello."}]},
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from stack import LLAMA_SERVER

    stack = Stack(tmp_path_factory.mktemp("agents"), MODELS, extra_harnesses=HARNESSES.format(binary=LLAMA_SERVER)).start()
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def oai(stack):
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key=Stack.API_KEY, timeout=180)


@pytest.fixture(scope="module")
def claude(stack):
    return anthropic.Anthropic(base_url=stack.url, api_key=Stack.API_KEY, timeout=180)


@pytest.mark.parametrize("model", PATHS)
def test_responses_create_with_codexs_request(stack, oai, model):
    response = oai.responses.create(
        model=model,
        input=CODEX_INPUT,
        instructions="You are a coding agent.",
        tools=CODEX_TOOLS,
        tool_choice="auto",
        parallel_tool_calls=True,
        reasoning={"summary": "auto"},
        store=False,
        include=["reasoning.encrypted_content"],
        prompt_cache_key="session-1",
        extra_body={"client_metadata": {"originator": "codex_exec"}},
    )
    assert response.status in ("completed", "incomplete"), stack.logs()
    assert response.output, stack.logs()
    assert response.usage.output_tokens <= 24, "the fleet's max_output_tokens caps the answer"


@pytest.mark.parametrize("model", PATHS)
def test_responses_stream_is_accepted_by_the_sdks_accumulator(stack, oai, model):
    with oai.responses.stream(model=model, input=CODEX_INPUT, tools=CODEX_TOOLS, store=False) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds
    assert "response.output_item.added" in kinds and "response.output_item.done" in kinds, kinds
    assert final.output and final.usage is not None, stack.logs()
    texts = [item for item in final.output if item.type == "message"]
    assert not texts or texts[0].content[0].text == final.output_text


@pytest.mark.parametrize("model", PATHS)
def test_anthropic_sdk_with_system_messages_thinking_and_effort(stack, claude, model):
    params = dict(
        model=model,
        max_tokens=32000,
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Say hello."}]},
            {"role": "system", "content": [{"type": "text", "text": "Environment: tests."}]},
        ],
        thinking={"type": "adaptive", "display": "omitted"},
        output_config={"effort": "high"},
        metadata={"user_id": "u-1"},
        extra_body={"context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]}},
        extra_headers={"anthropic-beta": "claude-code-20250219,context-management-2025-06-27"},
    )
    message = claude.messages.create(**params)
    assert message.type == "message" and message.content is not None, stack.logs()
    assert message.usage.output_tokens <= 24
    with claude.messages.stream(**params) as stream:
        final = stream.get_final_message()
    assert final.stop_reason in ("end_turn", "max_tokens"), stack.logs()


def test_a_prompt_over_the_context_window_is_the_error_agents_act_on(stack, oai, claude):
    long_prompt = "word " * 600
    with pytest.raises(anthropic.BadRequestError) as refused:
        claude.messages.create(model="gemma-small", max_tokens=8, messages=[{"role": "user", "content": long_prompt}])
    message = refused.value.body["error"]["message"]
    assert re.fullmatch(r"prompt is too long: \d+ tokens > 256 maximum", message), message
    with pytest.raises(openai.BadRequestError) as refused:
        oai.chat.completions.create(model="gemma-small", max_tokens=8, messages=[{"role": "user", "content": long_prompt}])
    assert refused.value.code == "context_length_exceeded", refused.value.body
    with pytest.raises(openai.BadRequestError) as refused:
        oai.responses.create(model="gemma-small", input=long_prompt, store=False)
    assert refused.value.code == "context_length_exceeded", refused.value.body


def test_models_show_the_context_window(oai):
    model = oai.models.retrieve("gemma-small")
    assert model.id == "gemma-small"
    assert model.model_extra["context_length"] == 256
