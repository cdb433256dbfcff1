"""The fleet page in a real browser: headless Chromium (Debian's package, tests/install-browser.sh)
opens /ui against `cortex serve` with two simulated neurons and checks, without ever reloading
the page, that it shows the whole fleet, follows a model loaded through the API, shows an
invalid fleet edit's path:line:col, follows a neuron's drain until it is ready for maintenance
and its return to service, comes back by itself after a daemon restart, and turns a
killed neuron red. Screenshots go to $CORTEX_UI_ARTIFACTS (default $CORTEX_CACHE/ui-artifacts)."""

import json
import math
import os
import pathlib
import threading
import time

import pytest

from cdp import Browser
from sim_fleet import ADMIN_KEY, CACHE, NEURONS, SimFleet

ARTIFACTS = pathlib.Path(os.environ.get("CORTEX_UI_ARTIFACTS", CACHE / "ui-artifacts"))
# How long traffic runs before the overview screenshot (longer makes fuller charts).
TRAFFIC_S = float(os.environ.get("CORTEX_UI_TRAFFIC_S", "12"))

MODELS = ["qwen3-coder-30b", "llama-3.1-8b", "nomic-embed", "gemma-3-12b"]


def js(value) -> str:
    return json.dumps(value)


def placement_status(model: str, neuron: str | None = None) -> str:
    """JS: the status shown in the model's row (on `neuron`, or anywhere)."""
    selector = f'[data-model={js(model)}] [data-placement{"=" + js(neuron) if neuron else ""}]'
    return f"(document.querySelector({js(selector)}) || {{dataset: {{}}}}).dataset.status || null"


class Traffic(threading.Thread):
    """Requests through the gateway in the background, so the charts have something to show."""

    def __init__(self, fleet: SimFleet):
        super().__init__(daemon=True)
        self.fleet = fleet
        self.stopping = threading.Event()
        self.answered = 0

    def run(self) -> None:
        plan = ["coder", "chat", "chat", "coder", "chat"]
        i = 0
        while not self.stopping.is_set():
            try:
                self.fleet.chat(plan[i % len(plan)], stream=i % 2 == 0, timeout_s=20)
                self.answered += 1
            except Exception:  # noqa: BLE001 - the daemon restarts during the test; traffic just pauses
                time.sleep(0.3)
            i += 1
            # A rate that swells and ebbs, as real traffic does, so the charts have a shape.
            self.stopping.wait(0.08 + 0.3 * (1 + math.sin(time.monotonic() / 9)))

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=30)


@pytest.fixture
def fleet(tmp_path):
    fleet = SimFleet(tmp_path).start()
    yield fleet
    fleet.stop()


def test_the_fleet_page_follows_the_fleet_live(fleet, browser):
    try:
        run(fleet, browser)
    except BaseException:
        print(fleet.logs())
        print("browser console:", *browser.console, sep="\n  ")
        raise


def run(fleet: SimFleet, browser: Browser) -> None:
    # Signing in with ?key= sets the page's cookie and redirects to a clean /ui.
    browser.navigate(f"{fleet.ui_url}?key={ADMIN_KEY}")
    browser.wait_for("location.pathname === '/ui' && location.search === '' && document.querySelector('#neurons')",
                     15, "the page at a clean /ui after signing in")
    browser.evaluate("window.__sameDocument = 'never reloaded'")

    # Every neuron, device and model of the fleet is on the page.
    for name, spec in NEURONS.items():
        browser.wait_for(f"document.querySelector('[data-neuron={js(name)}][data-state=up]')", 15, f"neuron {name} up")
        for index in range(len(spec["devices"])):
            browser.wait_for(f"document.querySelector('[data-device={js(f'{name}/{index}')}] .bar')", 5,
                             f"the VRAM bar of {name} GPU {index}")
        browser.wait_for(f"document.querySelector('[data-ram={js(name)}] .bar')", 5, f"the RAM bar of {name}")
    for model in MODELS:
        browser.wait_for(f"document.querySelector('[data-model={js(model)}]')", 5, f"the row of {model}")
    # The reconciler loads the pinned models and the replica; the page follows.
    for model, neuron in [("qwen3-coder-30b", "atlas"), ("nomic-embed", "pico"), ("llama-3.1-8b", None)]:
        browser.wait_for(f"{placement_status(model, neuron)} === 'loaded'", 30, f"{model} loaded")
    browser.wait_for("document.querySelector('[data-stat=sync]').textContent.includes('Synced')", 30, "Sync: Synced")
    assert browser.evaluate("document.querySelector('[data-device=\"atlas/0\"] .seg') !== null"), \
        "the coder's share shows in atlas GPU 0's bar"

    # Loading a model through the API: its row shows loading, then loaded within 2 s of the answer.
    assert browser.evaluate(placement_status("gemma-3-12b")) is None, "gemma-3-12b starts unloaded"
    traffic = Traffic(fleet)
    answer: dict = {}
    loader = threading.Thread(target=lambda: answer.update(fleet.chat("vision", timeout_s=60)), daemon=True)
    loader.start()
    browser.wait_for(f"{placement_status('gemma-3-12b')} === 'loading'", 10, "gemma-3-12b loading")
    browser.wait_for("document.querySelector('[data-model=\"gemma-3-12b\"] .loading-progress')", 2,
                     "the loading copy's elapsed time")
    # The cold request waits in the gateway's queue for the load (3 s on atlas): the row shows it.
    queued = "(document.querySelector('[data-model=\"gemma-3-12b\"] [data-queue]') || {dataset: {}}).dataset.queue"
    browser.wait_for(f"{queued} === '1'", 2.5, "the waiting request in gemma-3-12b's queue")
    browser.screenshot(ARTIFACTS / "loading.png")
    loader.join(timeout=60)
    assert answer.get("status") == 200, f"the cold request was answered: {answer}"
    answered_at = time.monotonic()
    browser.wait_for(f"{placement_status('gemma-3-12b')} === 'loaded'", 2, "gemma-3-12b loaded within 2 s")
    print(f"gemma-3-12b showed loaded {time.monotonic() - answered_at:.2f} s after the API answered")
    browser.wait_for(f"{queued} === '0'", 3, "gemma-3-12b's queue empty once its request was admitted")

    # Traffic shows up in the charts; then the overview screenshot.
    traffic.start()
    browser.wait_for("document.querySelector('[data-traffic=\"qwen3-coder-30b\"] svg path')", 20, "coder's traffic chart")
    time.sleep(TRAFFIC_S)  # not a wait for readiness: the charts fill with real traffic for the picture
    browser.wait_for("document.querySelector('[data-traffic=\"llama-3.1-8b\"] svg path')", 10, "chat's traffic chart")
    # Each model's cache share: the part of its prompt tokens the engine had cached, over the window.
    share = "(document.querySelector('[data-cache-share=\"qwen3-coder-30b\"] .head b') || {}).textContent"
    browser.wait_for(f"/^\\d+% in 15 min$/.test({share})", 10, "coder's prompt cache share")
    overview = browser.screenshot(ARTIFACTS / "fleet-page.png")
    print(f"screenshot: {overview}")

    # An invalid edit: the page shows path:line:col, and the last good fleet stays in force.
    good = fleet.fleet_text()
    bad = good.replace("replicas = 1", "replicas = 1\nreplicaz = 2")
    line = bad.splitlines().index("replicaz = 2") + 1
    fleet.write_fleet(bad)
    where = f"fleet.toml:{line}:1"
    browser.wait_for(f"(document.querySelector('#fleet-errors') || {{textContent: ''}}).textContent.includes({js(where)})",
                     10, f"the error at {where}")
    assert browser.evaluate("document.querySelector('[data-condition=FleetValid]').dataset.ok") == "false"
    browser.screenshot(ARTIFACTS / "invalid-edit.png")
    fleet.write_fleet(good)
    browser.wait_for("!document.querySelector('#fleet-errors')", 10, "the error gone after the fix")

    # pico is drained: its card says so and follows the drain until it is safe to stop; its
    # pinned embedder moves to atlas first. Taking the state out brings it back.
    pico = f'name = "pico"\nendpoint = "http://127.0.0.1:{fleet.ports["pico"]}"\n'
    assert pico in good, "pico's table in the fleet"
    fleet.write_fleet(good.replace(pico, f'{pico}state = "draining"\n'))
    browser.wait_for("document.querySelector('[data-neuron=pico][data-service=draining] .maintenance')", 15,
                     "pico draining, with its progress")
    browser.wait_for("document.querySelector('[data-neuron=pico][data-service=drained] .maintenance')"
                     "?.textContent.includes('ready for maintenance')", 60, "pico drained: ready for maintenance")
    assert browser.evaluate(f"{placement_status('nomic-embed', 'atlas')}") == "loaded", "the embedder moved to atlas"
    assert "suspended" in browser.evaluate("document.querySelector('[data-neuron=pico] .maintenance').textContent")
    browser.screenshot(ARTIFACTS / "neuron-drained.png")
    fleet.write_fleet(good)
    browser.wait_for("document.querySelector('[data-neuron=pico][data-service=active]') && "
                     "!document.querySelector('[data-neuron=pico] .maintenance')", 15, "pico back in service")

    # The daemon restarts: the page notices, reconnects by itself, and shows the new daemon's state.
    started = browser.evaluate("page.state.daemon_started_unix_ms")
    fleet.stop_cortex()
    browser.wait_for("document.querySelector('#connection').dataset.connected === 'false'", 10, "the connection lost")
    fleet.start_cortex()
    browser.wait_for(f"page.state.daemon_started_unix_ms !== {started} && "
                     "document.querySelector('#connection').dataset.connected === 'true'", 15, "the page back in sync")

    # A neuron dies: it turns red and stays on the page, with what was last seen of it.
    fleet.kill_neuron("pico")
    browser.wait_for("document.querySelector('[data-neuron=pico][data-state=unreachable]')", 15, "pico unreachable")
    assert browser.evaluate("document.querySelector('[data-ram=pico] .bar') !== null"), "pico's last-seen memory stays"
    browser.wait_for("document.querySelector('[data-condition=NeuronsReachable]').dataset.ok === 'false'", 10,
                     "NeuronsReachable False")
    browser.screenshot(ARTIFACTS / "neuron-down.png")
    traffic.stop()

    assert browser.evaluate("window.__sameDocument") == "never reloaded", "the page was never reloaded"
    assert traffic.answered > 0, "the background traffic got answers"
    assert not browser.exceptions, f"the page threw: {browser.exceptions}"
