"""The engine's prompt cache, visible to the clients: a two-turn conversation through the official
openai and anthropic SDKs, over gemma on llama-server served natively and translated (stack.py's
two paths), in every dialect, streamed and not. The second turn repeats the first, so llama-server
takes the first turn's prompt from its slot's cache, and the usage the SDK hands back says so:
Chat's `prompt_tokens_details.cached_tokens`, Responses' `input_tokens_details.cached_tokens`,
Messages' `cache_read_input_tokens` (with `input_tokens` only the uncached rest). `/metrics` counts
the cached tokens per model. Each conversation opens with its own system prompt, so no turn
finds another conversation's prompt in the cache."""

import re
import urllib.request
import uuid

import anthropic
import openai
import pytest

from stack import PATHS, Stack, start_two_paths

# A system prompt long enough that its cached part is unmistakable (about 200 gemma tokens).
SYSTEM = (
    "You are a terse assistant for a weather station. Answer in one short sentence. "
    + "The station records temperature, pressure, humidity, wind speed and wind direction every minute. " * 8
)
FIRST = "What does the station record?"
SECOND = "And how often?"
DIALECTS = ["chat", "responses", "messages"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = start_two_paths(tmp_path_factory.mktemp("prompt-cache"))
    yield stack
    stack.stop()


def oai(stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key=Stack.API_KEY, timeout=180)


def claude(stack) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.url, api_key=Stack.API_KEY, timeout=180)


def chat_turn(stack, model, system, history, stream):
    """One Chat Completions turn: (answer, prompt tokens, cached tokens)."""
    messages = [{"role": "system", "content": system}, *history]
    if not stream:
        answer = oai(stack).chat.completions.create(model=model, messages=messages)
        usage = answer.usage
        return answer.choices[0].message.content or "", usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens
    chunks = list(
        oai(stack).chat.completions.create(
            model=model, messages=messages, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = chunks[-1].usage
    assert usage is not None, f"no usage chunk at the end of the stream: {chunks[-1]}"
    return text, usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens


def responses_turn(stack, model, system, history, stream):
    """One Responses turn: (answer, input tokens, cached tokens)."""
    client = oai(stack)
    # Typed items: llama-server's own /v1/responses refuses an item without a `type`.
    history = [{"type": "message", **item} for item in history]
    if not stream:
        response = client.responses.create(model=model, instructions=system, input=history, store=False)
    else:
        with client.responses.stream(model=model, instructions=system, input=history, store=False) as events:
            response = events.get_final_response()
    usage = response.usage
    return response.output_text, usage.input_tokens, usage.input_tokens_details.cached_tokens


def messages_turn(stack, model, system, history, stream):
    """One Messages turn: (answer, whole prompt, cache reads); the prompt is input + cache reads."""
    client = claude(stack)
    request = dict(model=model, system=system, messages=history, max_tokens=64)
    if not stream:
        message = client.messages.create(**request)
    else:
        with client.messages.stream(**request) as events:
            message = events.get_final_message()
    usage = message.usage
    text = "".join(block.text for block in message.content if block.type == "text")
    cached = usage.cache_read_input_tokens or 0
    return text, usage.input_tokens + cached, cached


TURNS = {"chat": chat_turn, "responses": responses_turn, "messages": messages_turn}


@pytest.mark.parametrize("stream", [False, True], ids=["body", "stream"])
@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("model", PATHS)
def test_the_second_turn_reports_the_first_turns_prompt_as_cached(stack, model, dialect, stream):
    system = f"Conversation {uuid.uuid4().hex}. {SYSTEM}"
    turn = TURNS[dialect]
    history = [{"role": "user", "content": FIRST}]
    answer, first_prompt, first_cached = turn(stack, model, system, history, stream)
    assert first_prompt > 150, f"the first turn's prompt holds the system prompt: {first_prompt} tokens"
    assert first_cached < first_prompt // 4, f"a new conversation is mostly computed: {first_cached} of {first_prompt}"
    history += [{"role": "assistant", "content": answer or "It records the weather."}, {"role": "user", "content": SECOND}]
    _, second_prompt, second_cached = turn(stack, model, system, history, stream)
    assert second_prompt > first_prompt, (first_prompt, second_prompt)
    # Everything up to the first turn's answer was computed before: at least its prompt, less
    # the few tokens the chat template may close differently once the answer follows.
    assert second_cached >= first_prompt - 8, (
        f"{model} {dialect} {'stream' if stream else 'body'}: the second turn's usage says {second_cached} of "
        f"{second_prompt} prompt tokens were cached; the first turn's prompt alone was {first_prompt}\n{stack.logs()}"
    )
    assert second_cached < second_prompt, "the new turn itself was computed"


def test_metrics_count_the_cached_prompt_tokens_per_model(stack):
    for model in PATHS:
        system = f"Conversation {uuid.uuid4().hex}. {SYSTEM}"
        history = [{"role": "user", "content": FIRST}]
        answer, _, _ = chat_turn(stack, model, system, history, False)
        history += [{"role": "assistant", "content": answer or "It records the weather."}, {"role": "user", "content": SECOND}]
        chat_turn(stack, model, system, history, False)
    text = urllib.request.urlopen(stack.metrics_url, timeout=5).read().decode()
    for model in PATHS:
        cached = sum(
            float(value)
            for value in re.findall(rf'cortex_cached_prompt_tokens_total\{{[^}}]*model="{model}"[^}}]*\}} (\S+)', text)
        )
        prompt = sum(
            float(value)
            for labels, value in re.findall(r"cortex_tokens_total\{([^}]*)\} (\S+)", text)
            if f'model="{model}"' in labels and 'kind="prompt"' in labels
        )
        assert 150 <= cached < prompt, f"{model}: {cached} cached of {prompt} prompt tokens\n{text}"
