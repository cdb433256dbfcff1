"""Fleet keys through the official openai and anthropic SDKs, end to end: a real neuron running
llama-server with gemma-3-270m behind `cortex serve`, the keys declared in the fleet as [[key]]
tables. The SDKs must raise their own exceptions (AuthenticationError, PermissionDeniedError,
RateLimitError) with cortex's bodies; usage must survive a restart of cortex; a key revoked by a
fleet edit (`cortex key revoke`) must be refused within one reload."""

import hashlib
import json
import subprocess
import time
import urllib.request

import anthropic
import openai
import pytest

from stack import Stack, binary

SECRETS = {
    "alice": "ck-alice-0000000000000000000000000000000000000000",
    "scoped": "ck-scoped-000000000000000000000000000000000000000",
    "revoked": "ck-revoked-00000000000000000000000000000000000000",
    "expired": "ck-expired-00000000000000000000000000000000000000",
    "slow": "ck-slow-0000000000000000000000000000000000000000000",
    "budget": "ck-budget-00000000000000000000000000000000000000000",
    "ops": "ck-ops-000000000000000000000000000000000000000000000",
}


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


MODELS = f"""
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
id = "other"
harness = "llamacpp"
source = "gemma-3-270m-q4_k_m.gguf"
min_devices = 0
ram_mb = 400

# Alice: every model, no limits.
[[key]]
name = "alice"
sha256 = "{digest(SECRETS['alice'])}"

[[key]]
name = "scoped"
sha256 = "{digest(SECRETS['scoped'])}"
models = ["other"]

[[key]]
name = "revoked"
sha256 = "{digest(SECRETS['revoked'])}"
revoked = true

[[key]]
name = "expired"
sha256 = "{digest(SECRETS['expired'])}"
expires = 2020-01-01

[[key]]
name = "slow"
sha256 = "{digest(SECRETS['slow'])}"
rpm = 1

[[key]]
name = "budget"
sha256 = "{digest(SECRETS['budget'])}"
tokens_per_day = 40
priority = "batch"

[[key]]
name = "ops"
sha256 = "{digest(SECRETS['ops'])}"
models = []
operator = "read_only"
"""

PROMPT = [{"role": "user", "content": "Say hello in three words."}]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    stack = Stack(root, MODELS, capacity_ram_mb=700)
    config = (root / "cortex.toml").read_text()
    (root / "cortex.toml").write_text(f'usage_store = "{root / "usage.redb"}"\n' + config)
    stack.start()
    yield stack
    stack.stop()


def oai(stack, key: str, retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key=SECRETS.get(key, key), timeout=120, max_retries=retries)


def claude(stack, key: str, retries: int = 0) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.url, api_key=SECRETS.get(key, key), timeout=120, max_retries=retries)


def chat(client: openai.OpenAI, model: str = "gemma", **extra):
    return client.chat.completions.create(model=model, messages=PROMPT, max_tokens=8, **extra)


def message(client: anthropic.Anthropic, model: str = "gemma"):
    return client.messages.create(model=model, messages=PROMPT, max_tokens=8)


def usage(stack, key: str) -> dict:
    out = subprocess.run(
        [binary("CORTEX_BIN", "cortex"), "usage", "--url", stack.url, "--admin-key", SECRETS["ops"], "--key", key, "--json"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    return next(k for k in report["keys"] if k["name"] == key)


def wait_for(check, what: str, deadline_s: float = 20):
    deadline = time.monotonic() + deadline_s
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_declared_key_is_served_and_the_legacy_key_still_works(stack):
    response = chat(oai(stack, "alice"))
    assert response.choices[0].message.content, stack.logs()
    assert message(claude(stack, Stack.API_KEY)).content


@pytest.mark.parametrize("key", ["nobody", "revoked", "expired"])
def test_unknown_revoked_and_expired_keys_raise_authentication_error(stack, key):
    with pytest.raises(openai.AuthenticationError) as raised:
        chat(oai(stack, key))
    body = raised.value.body
    assert raised.value.status_code == 401 and body["type"] == "authentication_error", body
    with pytest.raises(anthropic.AuthenticationError) as raised:
        message(claude(stack, key))
    assert raised.value.body["error"]["type"] == "authentication_error"
    if key != "nobody":
        assert key in raised.value.body["error"]["message"], raised.value.body


def test_a_model_outside_the_keys_scope_raises_permission_denied(stack):
    with pytest.raises(openai.PermissionDeniedError) as raised:
        chat(oai(stack, "scoped"), model="gemma")
    assert raised.value.body["code"] == "model_not_allowed", raised.value.body
    with pytest.raises(anthropic.PermissionDeniedError) as raised:
        message(claude(stack, "scoped"), model="gemma-3-270m")
    assert raised.value.body["error"]["type"] == "permission_error"
    assert [m.id for m in oai(stack, "scoped").models.list().data] == ["other"]


def test_a_rate_over_its_limit_raises_rate_limit_error_with_retry_after(stack):
    chat(oai(stack, "slow"))
    with pytest.raises(openai.RateLimitError) as raised:
        chat(oai(stack, "slow"))
    assert raised.value.body["code"] == "rate_limit_exceeded"
    assert 1 <= int(raised.value.response.headers["retry-after"]) <= 60
    with pytest.raises(anthropic.RateLimitError) as raised:
        message(claude(stack, "slow"))
    assert raised.value.body["error"]["type"] == "rate_limit_error"


def refusals(stack, key: str, reason: str) -> float:
    """cortex_key_refusals_total for `key` and `reason`, from /metrics (0 before the first)."""
    metrics = urllib.request.urlopen(stack.metrics_url, timeout=5).read().decode()
    for line in metrics.splitlines():
        if line.startswith("cortex_key_refusals_total{") and f'key="{key}"' in line and f'reason="{reason}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_spent_budget_raises_at_once_even_with_the_sdks_retries(stack):
    # 40 tokens a day: a request or two of gemma's prompt and 8 tokens spends it.
    client = oai(stack, "budget", retries=2)

    def spent():
        try:
            chat(client)
            return False
        except openai.RateLimitError as error:
            return error

    # Each request is a generation on a CPU that other work may share: the deadline is generous.
    error = wait_for(spent, "the budget to be spent", deadline_s=120)
    assert error.body["type"] == "insufficient_quota" and error.body["code"] == "insufficient_quota", error.body
    assert error.response.headers["x-should-retry"] == "false"
    # The SDK does not retry a budget that renews tomorrow: one call, one refusal.
    before = refusals(stack, "budget", "tokens_per_day")
    with pytest.raises(openai.RateLimitError):
        chat(client)
    assert refusals(stack, "budget", "tokens_per_day") == before + 1, "the SDK retried a spent budget"
    with pytest.raises(anthropic.RateLimitError) as raised:
        message(claude(stack, "budget", retries=2))
    assert raised.value.body["error"]["type"] == "rate_limit_error"
    used = usage(stack, "budget")
    assert 40 <= used["tokens_today"] <= 40 + 2048, used  # at most one request (the context) over


def test_usage_survives_a_restart(stack):
    for _ in range(2):
        chat(oai(stack, "alice"), stream=True, stream_options={"include_usage": True})
    before = wait_for(lambda: (u := usage(stack, "alice"))["requests"] >= 3 and u, "alice's usage")
    stack.restart_cortex()
    after = usage(stack, "alice")
    assert (after["requests"], after["tokens_today"]) == (before["requests"], before["tokens_today"]), (before, after)
    with pytest.raises(openai.RateLimitError):
        chat(oai(stack, "budget"))
    metrics = urllib.request.urlopen(stack.metrics_url, timeout=5).read().decode()
    assert 'key="budget",reason="tokens_per_day"' in metrics
    # The fleet page shows each key's usage.
    page = urllib.request.Request(
        stack.metrics_url.replace("/metrics", "/ui/api/state"), headers={"Authorization": f"Bearer {Stack.ADMIN_KEY}"}
    )
    state = json.loads(urllib.request.urlopen(page, timeout=5).read())["state"]
    shown = {k["name"]: k for k in state["keys"]}
    assert shown["alice"]["tokens_today"] == after["tokens_today"] and shown["budget"]["limits"]["tokens_per_day"] == 40


def test_a_key_revoked_by_a_fleet_edit_is_refused_within_one_reload(stack):
    chat(oai(stack, "alice"))
    out = subprocess.run(
        [binary("CORTEX_BIN", "cortex"), "key", "revoke", "alice", "--fleet", stack.fleet_dir],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr

    # Polled with the model list, which answers at once: a generation on a shared CPU can take
    # longer than the reload it waits for.
    def refused():
        try:
            oai(stack, "alice").models.list()
            return False
        except openai.AuthenticationError as error:
            return error

    error = wait_for(refused, "the revocation to apply", deadline_s=10)
    assert "revoked" in error.body["message"]
    with pytest.raises(openai.AuthenticationError) as raised:
        chat(oai(stack, "alice"))
    assert "revoked" in raised.value.body["message"]
    metrics = urllib.request.urlopen(stack.metrics_url, timeout=5).read().decode()
    assert 'key="alice"' in metrics and "cortex_tokens_total" in metrics
