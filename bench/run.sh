#!/usr/bin/env bash
# The benchmark suite (docs/benchmarks.md), one command: builds the release binaries, installs
# LiteLLM's proxy into its own virtual environment (cached), runs the planner benchmark and every
# scenario of `cortex-bench all`, prints the figures and writes bench/results/<UTC time>.json.
#   bash bench/run.sh            the full run (~12 minutes on the 2-core dev machine)
#   bash bench/run.sh --smoke    every scenario at tiny scale with debug builds (tests/check.sh)
# Other arguments go to `cortex-bench all` (e.g. --only stream,memory, --rounds 5, --out DIR);
#   bash bench/run.sh --only sessions-llama   the agent sessions on two real llama-server copies
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=tests/env.sh
source tests/env.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CORTEX_CACHE/target}"
# 5,000 open streams need ~10,000 descriptors in cortex and 5,000 in the client and the mock.
ulimit -n "$(ulimit -Hn)"

smoke=false
for arg in "$@"; do
  if [[ $arg == --smoke ]]; then smoke=true; fi
done

if $smoke; then
  cargo build --locked --bin cortex --bin neuron --bin neuron-swarm --bin cortex-bench
  bin="$CARGO_TARGET_DIR/debug"
  exec "$bin/cortex-bench" all --bin-dir "$bin" "$@"
fi

cargo build --release --locked --bin cortex --bin neuron --bin neuron-swarm --bin cortex-bench
bin="$CARGO_TARGET_DIR/release"

LITELLM_VENV="${LITELLM_VENV:-$CORTEX_CACHE/litellm-venv}"
LITELLM_VERSION=1.106.2
if [[ ! -x $LITELLM_VENV/bin/litellm ]]; then
  echo "installing LiteLLM $LITELLM_VERSION into $LITELLM_VENV"
  python3 -m venv "$LITELLM_VENV"
  "$LITELLM_VENV/bin/pip" install --quiet "litellm[proxy]==$LITELLM_VERSION"
fi
export LITELLM_VENV

# nginx, the reference streaming proxy measured in the same run (Debian's nginx-light).
if ! command -v nginx >/dev/null && [[ -x /usr/sbin/nginx ]]; then PATH="$PATH:/usr/sbin"; fi
if ! command -v nginx >/dev/null; then
  echo "installing nginx-light (the reference proxy of the streaming figures)"
  sudo=""; [[ $(id -u) == 0 ]] || sudo=sudo
  $sudo apt-get install -y -q nginx-light || echo "nginx is unavailable: its reference path is left out"
fi
if command -v nginx >/dev/null; then export NGINX="$(command -v nginx)"; fi

planner_log="$(mktemp)"
trap 'rm -f "$planner_log"' EXIT
cargo bench --locked -p plans --bench planner | tee "$planner_log"

"$bin/cortex-bench" all --bin-dir "$bin" --planner-log "$planner_log" "$@"
