"""The fleet page's requests view in a real browser: two on-demand models that cannot share the
simulated atlas (each needs both of its GPUs' room), so a request for the second waits behind a
swap. The view lists that request under the id cortex answered it with, draws its timeline (the
queue wait, the swap and what it evicted, the copy that served it) and filters by model, key and
status. Screenshots go to $CORTEX_UI_ARTIFACTS (default $CORTEX_CACHE/ui-artifacts)."""

import json
import os
import pathlib
import urllib.request

import pytest

from cdp import Browser
from sim_fleet import ADMIN_KEY, API_KEY, CACHE, SimFleet

ARTIFACTS = pathlib.Path(os.environ.get("CORTEX_UI_ARTIFACTS", CACHE / "ui-artifacts"))

# Each model needs 30 GB on each of atlas's two 48 GB GPUs: one at a time, and never on pico.
CONTENDED = """
[policy]
min_residency = "0s"
max_wait = "60s"

[[model]]
id = "od-a"
harness = "sim"
source = "od-a.gguf"
vram_mb = 60000
min_devices = 2

[[model]]
id = "od-b"
harness = "sim"
source = "od-b.gguf"
vram_mb = 60000
min_devices = 2
"""


def js(value) -> str:
    return json.dumps(value)


def chat(fleet: SimFleet, model: str, stream: bool) -> str:
    """One chat request; returns the x-request-id it was answered with."""
    body = {"model": model, "max_tokens": 8, "stream": stream, "messages": [{"role": "user", "content": "hello"}]}
    request = urllib.request.Request(
        f"{fleet.api_url}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()
        assert response.status == 200
        request_id = response.headers.get("x-request-id")
    assert request_id and len(request_id) == 16, f"an x-request-id: {request_id!r}"
    return request_id


@pytest.fixture
def fleet(tmp_path):
    fleet = SimFleet(tmp_path)
    neurons = fleet.fleet_text().split("[[model]]")[0]
    fleet.write_fleet(neurons + CONTENDED)
    fleet.start()
    yield fleet
    fleet.stop()


def test_the_requests_view_draws_a_request_that_waited_behind_a_swap(fleet, browser):
    try:
        run(fleet, browser)
    except BaseException:
        print(fleet.logs())
        print("browser console:", *browser.console, sep="\n  ")
        raise


def run(fleet: SimFleet, browser: Browser) -> None:
    cold = chat(fleet, "od-a", stream=False)
    swapped = chat(fleet, "od-b", stream=True)

    browser.navigate(f"{fleet.ui_url}?key={ADMIN_KEY}")
    row = f"document.querySelector('#requests tr[data-request={js(swapped)}]')"
    browser.wait_for(row, 15, "the swapped request in the requests view")
    assert browser.evaluate(f"!!document.querySelector('#requests tr[data-request={js(cold)}]')"), "the cold one too"
    assert "swap" in browser.evaluate(f"{row}.textContent"), "its row says it waited behind a swap"

    # Its timeline: the queue wait, the swap (od-a evicted), the copy, and every stage on the axis.
    browser.evaluate(f"{row}.click()")
    detail = "document.querySelector('#request-detail')"
    browser.wait_for(f"{detail}.querySelector('[data-fact=id]')?.textContent === {js(swapped)}", 10,
                     "the picked request's timeline")
    load = browser.evaluate(f"{detail}.querySelector('[data-fact=load]').textContent")
    assert "swap on atlas" in load and "evicted od-a" in load, load
    copy = browser.evaluate(f"{detail}.querySelector('[data-fact=copy]').textContent")
    assert copy.startswith("od-b on atlas") and "native /v1/chat/completions" in copy, copy
    for span in ["wait", "load", "first_byte", "answer"]:
        assert browser.evaluate(f"!!{detail}.querySelector('[data-span={span}] .span')"), f"the {span} bar"
    stages = browser.evaluate(f"[...{detail}.querySelectorAll('[data-stage]')].map((n) => n.dataset.stage)")
    for stage in ["load_started", "received", "admitted", "queued", "load_ready", "placed", "forwarded",
                  "first_byte", "done"]:
        assert stage in stages, f"{stage} on the axis: {stages}"
    assert stages.index("queued") < stages.index("load_ready") < stages.index("placed") < stages.index("forwarded")
    shot = browser.screenshot(ARTIFACTS / "request-timeline.png")
    print(f"screenshot: {shot}")

    # The filters: by model, by key (the client key is no declared key: "-"), by status.
    def shown() -> list:
        return browser.evaluate("[...document.querySelectorAll('#requests tr[data-request]')].map((n) => n.dataset.request)")

    def set_filter(name: str, value: str) -> None:
        browser.evaluate(f"(() => {{ const f = document.querySelector('#filter-{name}'); f.value = {js(value)};"
                         " f.dispatchEvent(new Event('input', {bubbles: true})); })()")

    set_filter("model", "od-a")
    browser.wait_for(f"!{row} && !!document.querySelector('#requests tr[data-request={js(cold)}]')", 10,
                     "only od-a's request under model od-a")
    set_filter("model", "")
    set_filter("key", "-")
    browser.wait_for(f"!!{row}", 10, "the requests without a declared key")
    set_filter("key", "nobody")
    browser.wait_for("document.querySelectorAll('#requests tr[data-request]').length === 0", 10, "no request of key nobody")
    set_filter("key", "")
    set_filter("status", "5xx")
    browser.wait_for("document.querySelectorAll('#requests tr[data-request]').length === 0", 10, "no 5xx request")
    set_filter("status", "ok")
    browser.wait_for(f"!!{row}", 10, "the swapped request under ok")
    assert swapped in shown() and cold in shown()
    assert not browser.exceptions, f"the page threw: {browser.exceptions}"
