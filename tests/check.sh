#!/usr/bin/env bash
# The test command: installs everything the tests need (`tests/install.sh`, cached), then runs
# every check CI runs: formatting, clippy with -D warnings, the Rust tests of the whole workspace,
# the Python client tests with the official openai and anthropic SDKs against real cortex and
# neuron binaries, the newcomer path (scripts/up.sh, warm: it prints what it rebuilt and its time
# against a bound), the benchmark smoke run, packaging and observability.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=tests/env.sh
source tests/env.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CORTEX_CACHE/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n==> %s\n' "$*"; }

step "installing test dependencies (cached under $CORTEX_CACHE)"
bash tests/install.sh

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo build --workspace --bins (the end-to-end tests run the real binaries)"
cargo build --workspace --bins --locked

step "cargo test --workspace --no-fail-fast (every test binary runs; failures are summed up at the end)"
cargo test --workspace --locked --no-fail-fast

step "Python client tests (official openai and anthropic SDKs)"
export NEURON_BIN="$CARGO_TARGET_DIR/debug/neuron" CORTEX_BIN="$CARGO_TARGET_DIR/debug/cortex"
"$CORTEX_VENV/bin/python" -m pytest -q tests/clients

step "the fleet page in headless Chromium against cortex serve and simulated neurons (tests/ui)"
bash tests/install-browser.sh
"$CORTEX_VENV/bin/python" -m pytest -q tests/ui

step "the newcomer path, warm: scripts/up.sh brings up the default fleet, scripts/down.sh stops it"
# Its own state directory and ports, so that a cortex the user has up on the default ones stays.
up_env=(CORTEX_UP_PROFILE=debug CORTEX_UP_DIR="$CORTEX_CACHE/up-check"
  CORTEX_UP_PORT=31323 CORTEX_UP_METRICS_PORT=31324 CORTEX_UP_NEURON_PORT=13141)
trap 'env "${up_env[@]}" bash scripts/down.sh >/dev/null 2>&1 || true' EXIT
up_began=$EPOCHSECONDS
env "${up_env[@]}" bash scripts/up.sh
up_took=$((EPOCHSECONDS - up_began))
env "${up_env[@]}" bash scripts/down.sh
trap - EXIT
# What the warm run did, from scripts/up.sh's own record: printed against the bound, not asserted.
compiled=$(sed -n 's/^compiled=//p' "$CORTEX_CACHE/up-check/last-run")
installed=$(sed -n 's/^installed=//p' "$CORTEX_CACHE/up-check/last-run")
warm_bound=60
printf '\nwarm scripts/up.sh: %ss (bound %ss: %s); rebuilt: %s; installed: %s\n' "$up_took" "$warm_bound" \
  "$([ "$up_took" -le "$warm_bound" ] && echo within || echo OVER)" \
  "$([ "$compiled" = 0 ] && echo nothing || echo "$compiled crates (REBUILT cortex/neuron)")" \
  "${installed:-nothing}"

step "benchmark suite smoke run (every scenario at tiny scale; writes the JSON report)"
bench_out="$(mktemp -d)"
bash bench/run.sh --smoke --out "$bench_out"
test -s "$(ls "$bench_out"/*.json)"

step "packaging: both RPMs, their installed layout, systemd units, sysusers/tmpfiles (tests/packaging.sh)"
bash tests/packaging.sh

step "observability: promtool, a real Prometheus scraping cortex and neuron, the dashboard's metrics (tests/observability.sh)"
bash tests/observability.sh
