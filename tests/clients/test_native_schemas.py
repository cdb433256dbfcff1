"""Every event and body cortex serves, checked against the official SDKs' own types: the openai
SDK's `ResponseStreamEvent` / `Response` and `ChatCompletionChunk` / `ChatCompletion`, the
anthropic SDK's `RawMessageStreamEvent` / `Message`, each validated by pydantic (required fields
present, right types), plus what the real API always sends that the types leave optional
(`created_at` and `model` from the first event, cumulative usage with its details, the input
counts in the closing `message_delta`). Over llama-server natively and translated, and for both
stops: at the client's own limit (a length stop) and at the fleet's cap (a natural end)."""

import json
import typing

import pytest
import requests
from anthropic.types import Message, RawMessageStreamEvent
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent

from stack import CAP, CLIENT_LIMIT, PATHS, Stack, start_two_paths

# Long enough that gemma never ends on its own within the cap.
LONG = "Count from one to one hundred in words, one number per line."
# (the client's own limit, or none: the fleet's cap binds)
STOPS = [pytest.param(CLIENT_LIMIT, id="client-limit"), pytest.param(None, id="fleet-cap")]


def members(union) -> dict:
    """The SDK's event classes of a discriminated union, by their `type` literal."""
    union = typing.get_args(union)[0] if typing.get_origin(union) is typing.Annotated else union
    return {typing.get_args(cls.model_fields["type"].annotation)[0]: cls for cls in typing.get_args(union)}


RESPONSE_EVENTS = members(ResponseStreamEvent)
MESSAGE_EVENTS = members(RawMessageStreamEvent)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = start_two_paths(tmp_path_factory.mktemp("schemas"))
    yield stack
    stack.stop()


def post(stack, path: str, body: dict) -> requests.Response:
    headers = {"authorization": f"Bearer {Stack.API_KEY}", "anthropic-version": "2023-06-01"}
    response = requests.post(f"{stack.url}{path}", json=body, headers=headers, stream=body.get("stream", False), timeout=180)
    assert response.status_code == 200, f"{response.status_code} {response.text}\n{stack.logs()}"
    return response


def events(stack, path: str, body: dict) -> list[tuple[str | None, dict | str]]:
    """The stream's events as (event name, parsed data); `[DONE]` stays a string."""
    out, name, data = [], None, []
    for line in post(stack, path, {**body, "stream": True}).iter_lines(decode_unicode=True):
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "" and data:
            text = "\n".join(data)
            out.append((name, text if text == "[DONE]" else json.loads(text)))
            name, data = None, []
    assert out, "an empty stream"
    return out


def validate(cls, data: dict):
    """`data` as the SDK's type; a missing required field or a wrong type fails with the data."""
    try:
        return cls.model_validate(data)
    except Exception as error:  # noqa: BLE001 - pydantic's error, with the data, is the message
        pytest.fail(f"{cls.__name__} refuses {json.dumps(data)[:2000]}:\n{error}")


def limit(field: str, client_limit):
    return {field: client_limit} if client_limit else {field: 4096}


def check_response_object(response: dict, client_limit) -> None:
    validate(Response, response)
    assert response["created_at"] > 0 and response["model"], response
    usage = response["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0, usage
    assert usage["input_tokens_details"]["cached_tokens"] >= 0, usage
    assert usage["output_tokens_details"]["reasoning_tokens"] >= 0, usage
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"], usage
    if client_limit:
        assert usage["output_tokens"] == client_limit, usage
        assert (response["status"], response["incomplete_details"]) == ("incomplete", {"reason": "max_output_tokens"})
    else:
        assert usage["output_tokens"] == CAP, usage
        assert (response["status"], response.get("incomplete_details")) == ("completed", None)


@pytest.mark.parametrize("client_limit", STOPS)
@pytest.mark.parametrize("model", PATHS)
def test_responses_stream_and_body_parse_under_the_sdk_types(stack, model, client_limit):
    body = {"model": model, "input": LONG, **limit("max_output_tokens", client_limit)}
    stream = events(stack, "/v1/responses", body)
    for position, (name, data) in enumerate(stream):
        assert isinstance(data, dict) and data["type"] in RESPONSE_EVENTS, data
        assert name in (None, data["type"]), (name, data)
        validate(RESPONSE_EVENTS[data["type"]], data)
        assert data["sequence_number"] == position, data
    kinds = [data["type"] for _, data in stream]
    assert kinds[:2] == ["response.created", "response.in_progress"], kinds
    assert kinds[-1] == "response.completed", kinds
    for _, data in stream[:2]:
        # What the Vercel AI SDK requires of the first events.
        assert data["response"]["created_at"] > 0 and data["response"]["model"], data
        validate(Response, data["response"])
    check_response_object(stream[-1][1]["response"], client_limit)
    check_response_object(post(stack, "/v1/responses", body).json(), client_limit)


@pytest.mark.parametrize("client_limit", STOPS)
@pytest.mark.parametrize("model", PATHS)
def test_messages_stream_and_body_parse_under_the_sdk_types(stack, model, client_limit):
    body = {"model": model, "messages": [{"role": "user", "content": LONG}], **limit("max_tokens", client_limit)}
    stream = events(stack, "/v1/messages", body)
    for name, data in stream:
        assert isinstance(data, dict) and data["type"] in MESSAGE_EVENTS, data
        assert name == data["type"], (name, data)
        validate(MESSAGE_EVENTS[data["type"]], data)
    kinds = [data["type"] for _, data in stream]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"], kinds
    start, delta = stream[0][1]["message"]["usage"], stream[-2][1]
    # The closing usage is cumulative: it has the input counts (LangChain reads only this one),
    # those of message_start where it knew them (a translated stream learns them at the end).
    assert delta["usage"]["input_tokens"] + delta["usage"].get("cache_read_input_tokens", 0) > 0, delta
    if model == "gemma-native":
        assert delta["usage"]["input_tokens"] == start["input_tokens"], (start, delta)
        assert delta["usage"]["cache_read_input_tokens"] == start["cache_read_input_tokens"], (start, delta)
    assert delta["usage"]["output_tokens"] == (client_limit or CAP), delta
    stop = "max_tokens" if client_limit else "end_turn"
    assert delta["delta"]["stop_reason"] == stop, delta
    message = validate(Message, post(stack, "/v1/messages", body).json())
    assert (message.stop_reason, message.usage.output_tokens) == (stop, client_limit or CAP), message
    assert message.usage.input_tokens > 0, message


@pytest.mark.parametrize("client_limit", STOPS)
def test_chat_stream_and_body_parse_under_the_sdk_types(stack, client_limit):
    body = {"model": "gemma-native", "messages": [{"role": "user", "content": LONG}], **limit("max_tokens", client_limit)}
    stream = events(stack, "/v1/chat/completions", {**body, "stream_options": {"include_usage": True}})
    assert stream[-1][1] == "[DONE]", stream[-1]
    chunks = [validate(ChatCompletionChunk, data) for _, data in stream[:-1]]
    finishes = [choice.finish_reason for chunk in chunks for choice in chunk.choices if choice.finish_reason]
    finish = "length" if client_limit else "stop"
    assert finishes == [finish], finishes
    usage = chunks[-1].usage
    assert usage and usage.prompt_tokens > 0 and usage.completion_tokens == (client_limit or CAP), chunks[-1]
    answer = validate(ChatCompletion, post(stack, "/v1/chat/completions", body).json())
    assert answer.choices[0].finish_reason == finish, answer
    assert answer.usage.completion_tokens == (client_limit or CAP), answer
