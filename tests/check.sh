#!/usr/bin/env bash
# The test command: installs what the tests need (cached), then runs every check CI runs:
# formatting, clippy with -D warnings, the Rust tests of the whole workspace, and the Python
# client tests with the official openai and anthropic SDKs against real cortex and neuron binaries.
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

step "cargo test --workspace"
cargo test --workspace --locked

step "Python client tests (official openai and anthropic SDKs)"
export NEURON_BIN="$CARGO_TARGET_DIR/debug/neuron" CORTEX_BIN="$CARGO_TARGET_DIR/debug/cortex"
"$CORTEX_VENV/bin/python" -m pytest -q tests/clients

step "the fleet page in headless Chromium against cortex serve and simulated neurons (tests/ui)"
bash tests/install-browser.sh
"$CORTEX_VENV/bin/python" -m pytest -q tests/ui

step "the newcomer path: scripts/up.sh brings up the default fleet, scripts/down.sh stops it"
trap 'CORTEX_UP_DIR="$CORTEX_CACHE/up-check" bash scripts/down.sh >/dev/null 2>&1 || true' EXIT
CORTEX_UP_PROFILE=debug CORTEX_UP_DIR="$CORTEX_CACHE/up-check" bash scripts/up.sh
CORTEX_UP_DIR="$CORTEX_CACHE/up-check" bash scripts/down.sh
trap - EXIT

step "benchmark suite smoke run (every scenario at tiny scale; writes the JSON report)"
bench_out="$(mktemp -d)"
bash bench/run.sh --smoke --out "$bench_out"
test -s "$(ls "$bench_out"/*.json)"

step "packaging: both RPMs, their installed layout, systemd units, sysusers/tmpfiles (tests/packaging.sh)"
bash tests/packaging.sh

step "observability: promtool, a real Prometheus scraping cortex and neuron, the dashboard's metrics (tests/observability.sh)"
bash tests/observability.sh
