"""LangChain through cortex with llama-server: `langchain-openai`'s ChatOpenAI over Chat
Completions and over the Responses API (`use_responses_api=True`), and `langchain-anthropic`'s
ChatAnthropic over Messages, natively and translated; `invoke` and `stream`, with the usage
LangChain reports (`usage_metadata`: input and output tokens both counted, on streams too) and
the finish reason, at the client's own limit (a length stop) and at the fleet's cap (an end)."""

import pytest
from langchain_anthropic import ChatAnthropic
from langchain_openai import ChatOpenAI

from stack import CAP, CLIENT_LIMIT, PATHS, Stack, start_two_paths

CLIENTS = ["chat", "responses", "anthropic"]
LONG = "Count from one to one hundred in words, one number per line."


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = start_two_paths(tmp_path_factory.mktemp("frameworks"))
    yield stack
    stack.stop()


def client(stack, kind: str, model: str, limit: int | None):
    common = {"model": model, "api_key": Stack.API_KEY, "timeout": 180, "max_retries": 0}
    if kind == "anthropic":
        # Messages needs a limit: a large one, so that the fleet's cap binds.
        return ChatAnthropic(base_url=stack.url, max_tokens=limit or 4096, **common)
    return ChatOpenAI(
        base_url=f"{stack.url}/v1",
        max_tokens=limit,
        stream_usage=True,
        use_responses_api=kind == "responses",
        **common,
    )


def finish(kind: str, metadata: dict):
    """The finish as each LangChain client reports it."""
    if kind == "anthropic":
        return metadata.get("stop_reason")
    if kind == "responses":
        return metadata.get("status"), (metadata.get("incomplete_details") or {}).get("reason")
    return metadata.get("finish_reason")


def expected_finish(kind: str, limited: bool):
    if kind == "anthropic":
        return "max_tokens" if limited else "end_turn"
    if kind == "responses":
        return ("incomplete", "max_output_tokens") if limited else ("completed", None)
    return "length" if limited else "stop"


@pytest.mark.parametrize("limit", [CLIENT_LIMIT, None], ids=["client-limit", "fleet-cap"])
@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize("model", PATHS)
def test_invoke_and_stream_report_usage_and_finish(stack, model, kind, limit):
    llm = client(stack, kind, model, limit)
    outputs = limit or CAP
    answer = llm.invoke(LONG)
    assert answer.text, (answer, stack.logs())
    usage = answer.usage_metadata
    assert usage and usage["input_tokens"] > 0 and usage["output_tokens"] == outputs, answer
    assert finish(kind, answer.response_metadata) == expected_finish(kind, bool(limit)), answer.response_metadata

    chunks = list(llm.stream(LONG))
    assert len(chunks) > 1, chunks
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole += chunk
    assert whole.text, whole
    usage = whole.usage_metadata
    assert usage and usage["input_tokens"] > 0 and usage["output_tokens"] == outputs, (whole, chunks[-3:])
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"], usage
    assert finish(kind, whole.response_metadata) == expected_finish(kind, bool(limit)), whole.response_metadata
