#!/usr/bin/env bash
# Brings up the embedded default fleet on this machine, end to end: builds cortex and neuron,
# installs llama-server and the gemma-3-270m model if missing (cached under ~/.cache/cortex),
# starts a neuron on 127.0.0.1:13131 and `cortex serve` with fleet/ on 127.0.0.1:31313,
# waits until the fleet is in sync, and shows a chat completion through cortex.
# Stop everything with scripts/down.sh.
#
# Environment: CORTEX_UP_PROFILE=release|debug (default release), CORTEX_UP_DIR (state,
# default ~/.cache/cortex/up).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=tests/env.sh
source tests/env.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CORTEX_CACHE/target}"
profile="${CORTEX_UP_PROFILE:-release}"
state="${CORTEX_UP_DIR:-$CORTEX_CACHE/up}"

step() { printf '\n==> %s\n' "$*"; }
fail() { printf '\nerror: %s\n' "$*" >&2; exit 1; }

# Poll until a command succeeds, with a deadline; prints a dot a second.
wait_for() {
  local what="$1" seconds="$2"; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || { echo; fail "$what did not happen within ${seconds}s (logs in $state/*.log)"; }
    printf '.'
    sleep 1
  done
  echo
}

for port in 13131 31313 31314; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    fail "port $port is in use: is cortex already up? Stop it with scripts/down.sh"
  fi
done

step "building cortex and neuron ($profile)"
flags=(); [ "$profile" = release ] && flags=(--release)
cargo build "${flags[@]}" -p cortexd -p neuron --bins
bin="$CARGO_TARGET_DIR/$profile"

step "installing llama-server and the gemma model if missing"
bash tests/install.sh

step "writing configuration to $state"
mkdir -p "$state/logs"
[ -s "$state/neuron.token" ] || head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$state/neuron.token"
[ -s "$state/admin.key" ] || head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$state/admin.key"
chmod 600 "$state/neuron.token" "$state/admin.key"
cat > "$state/neuron.toml" <<TOML
# Written by scripts/up.sh: the neuron "local" of the embedded default fleet.
name = "local"
listen = "127.0.0.1:13131"
models_dir = "$CORTEX_MODELS_DIR"
token_file = "$state/neuron.token"
log_dir = "$state/logs"

[harness.llamacpp]
kind = "llamacpp"
binary = "$LLAMA_SERVER"
TOML
cat > "$state/cortex.toml" <<TOML
# Written by scripts/up.sh.
listen = "127.0.0.1:31313"
metrics_listen = "127.0.0.1:31314"
neuron_token_file = "$state/neuron.token"
admin_key = "$(cat "$state/admin.key")"
TOML

step "starting neuron on 127.0.0.1:13131"
nohup "$bin/neuron" --config "$state/neuron.toml" > "$state/neuron.log" 2>&1 &
echo $! > "$state/neuron.pid"
wait_for "neuron listening" 30 curl -sf http://127.0.0.1:13131/livez

step "starting cortex serve on 127.0.0.1:31313 with fleet/"
nohup "$bin/cortex" serve --fleet fleet --config "$state/cortex.toml" > "$state/cortex.log" 2>&1 &
echo $! > "$state/cortex.pid"
wait_for "cortex listening" 30 curl -sf http://127.0.0.1:31313/health

step "waiting for the fleet to be in sync (loading gemma-3-270m)"
synced() { "$bin/cortex" status --json --config "$state/cortex.toml" | grep -q '"sync": "Synced"'; }
wait_for "the fleet converging" 180 synced
"$bin/cortex" status --config "$state/cortex.toml"

step "a chat completion through cortex"
curl -sf http://127.0.0.1:31313/v1/chat/completions \
  -H 'content-type: application/json' \
  -d '{"model": "gemma-3-270m", "max_tokens": 32, "messages": [{"role": "user", "content": "Say hello to the fleet in one sentence."}]}' \
  | python3 -c 'import json, sys; r = json.load(sys.stdin); print("gemma-3-270m says:", r["choices"][0]["message"]["content"].strip()); print("usage:", r["usage"])'

cat <<DONE

cortex is up:
  OpenAI API     http://127.0.0.1:31313/v1   (export OPENAI_BASE_URL=http://127.0.0.1:31313/v1 OPENAI_API_KEY=none)
  Anthropic API  http://127.0.0.1:31313      (export ANTHROPIC_BASE_URL=http://127.0.0.1:31313 ANTHROPIC_API_KEY=none)
  metrics        http://127.0.0.1:31314/metrics
  status         $bin/cortex status --config $state/cortex.toml
  logs           $state/*.log
Edit fleet/ and cortex serve applies it. Stop with: scripts/down.sh
DONE
