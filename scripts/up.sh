#!/usr/bin/env bash
# Brings up the embedded default fleet on this machine, end to end (the README's first command):
# installs only what fleet/fleet.toml needs (llama-server and the gemma-3-270m model, through
# `tests/install.sh engine model`, cached under $CORTEX_CACHE) while it builds cortex and neuron,
# starts a neuron and `cortex serve` with fleet/, waits until the fleet is in sync, shows a chat
# completion through cortex (with curl), and says what is running and how to use it.
# Every long step shows its progress (scripts/lib/progress.sh). Stop everything with scripts/down.sh.
#
# Environment (all optional):
#   CORTEX_UP_PROFILE=release|debug   how cortex is built (default release, without debug info)
#   CORTEX_UP_DIR                     state, configuration and logs (default $CORTEX_CACHE/up)
#   CORTEX_UP_PORT, CORTEX_UP_METRICS_PORT, CORTEX_UP_NEURON_PORT   (default 31313, 31314, 13131)
#   CORTEX_CACHE                      the install cache (default ~/.cache/cortex)
#   CARGO_TARGET_DIR                  where cortex is built (default $CORTEX_CACHE/target)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=tests/install.sh
source tests/install.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CORTEX_CACHE/target}"
profile="${CORTEX_UP_PROFILE:-release}"
state="${CORTEX_UP_DIR:-$CORTEX_CACHE/up}"
api_port="${CORTEX_UP_PORT:-31313}"
metrics_port="${CORTEX_UP_METRICS_PORT:-31314}"
neuron_port="${CORTEX_UP_NEURON_PORT:-13131}"
bin="$CARGO_TARGET_DIR/$profile"
api="http://127.0.0.1:$api_port"
began=$EPOCHSECONDS

step() { printf '\n==> %s\n' "$*"; }
fail() { printf '\nerror: %s\n' "$*" >&2; exit 1; }

# Cortex's own build: measured on an idle 2-core VM from an empty target directory.
case "$profile" in
  release) build_estimate=360 flags=(--release) ;;
  debug) build_estimate=240 flags=() ;;
  *) fail "CORTEX_UP_PROFILE must be release or debug, not '$profile'" ;;
esac

# --- before anything long: the tools, a previous run, the ports -----------------------------

preflight() {
  local tool
  for tool in cargo curl python3 setsid flock stdbuf; do
    command -v "$tool" >/dev/null || fail "$tool is not installed (needed: Rust with cargo, curl, python3, util-linux, coreutils)"
  done
  mkdir -p "$state/logs"
  exec 9>"$state/up.lock"
  flock -n 9 || fail "another scripts/up.sh is running with the state directory $state"
  local name pid
  for name in cortex neuron; do
    pid=$(cat "$state/$name.pid" 2>/dev/null) || continue
    if kill -0 "$pid" 2>/dev/null; then
      fail "cortex is already up from a previous run ($name pid $pid, state in $state; API $(cat "$state/api" 2>/dev/null || echo "$api")).
Use it as it is, or restart it: ${CORTEX_UP_DIR:+CORTEX_UP_DIR=$state }bash scripts/down.sh && ${CORTEX_UP_DIR:+CORTEX_UP_DIR=$state }bash scripts/up.sh"
    fi
  done
  local port who
  [ "$(printf '%s\n' "$neuron_port" "$api_port" "$metrics_port" | sort -u | wc -l)" = 3 ] ||
    fail "the three ports must differ (API $api_port, metrics $metrics_port, neuron $neuron_port)"
  for port in "$neuron_port" "$api_port" "$metrics_port"; do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || continue
    who=$(ss -ltnpH "sport = :$port" 2>/dev/null | grep -o 'users:(([^)]*))' | head -n 1 || true)
    fail "port $port on 127.0.0.1 is taken${who:+ by $who}. If that is another cortex, stop it (bash scripts/down.sh, with its CORTEX_UP_DIR);
or choose other ports: CORTEX_UP_PORT, CORTEX_UP_METRICS_PORT, CORTEX_UP_NEURON_PORT (and a CORTEX_UP_DIR of their own)"
  done
}

# --- installing and building, concurrently (the engine build and cargo share the cores) -----

build_and_install() {
  local missing log="$CORTEX_CACHE/logs/build-cortex-$profile.log" est="$build_estimate"
  # shellcheck disable=SC2046 # a list of part names
  read -ra missing <<< "$(install_missing $(install_plan engine model))"
  step "building cortex and neuron ($profile)${missing[*]:+; installing: ${missing[*]}}"
  installed="${missing[*]}"
  trap progress_kill_all EXIT
  # The Python venv first (seconds): the engine build needs its cmake and ninja.
  if [ "${missing[0]:-}" = tools ]; then install_start tools; progress_wait || exit 1; missing=("${missing[@]:1}"); fi
  local part
  for part in "${missing[@]}"; do install_start "$part"; done
  # Built before: cargo rebuilds only what changed (seconds when nothing did).
  [ -x "$bin/cortex" ] && [ -x "$bin/neuron" ] && est=30
  # Standalone (--no-default-features): cluster mode's etcd client (gRPC, and protoc to build
  # it) is left out of the newcomer path.
  progress_start cortex "cortex and neuron ($profile build)" "$est" "$log" \
    env CARGO_PROFILE_RELEASE_DEBUG=false CARGO_TERM_PROGRESS_WHEN=always CARGO_TERM_PROGRESS_WIDTH=100 \
    cargo build --locked "${flags[@]}" --no-default-features -p cortexd -p neuron --bin cortex --bin neuron
  progress_wait || exit 1
  trap - EXIT
  compiled=$(grep -c '^ *Compiling ' "$log" || true)
  if [ "$compiled" = 0 ]; then
    echo "    cortex and neuron: up to date (nothing rebuilt)"
  else
    local ours
    ours=$(grep -oE 'Compiling (plans|neuron|cortexd) ' "$log" | cut -d' ' -f2 | sort -u | tr '\n' ' ')
    echo "    cortex and neuron: compiled $compiled crates${ours:+ (of this workspace: ${ours% })}"
  fi
}

# --- configuration ------------------------------------------------------------------------

write_config() {
  step "writing configuration to $state"
  [ -s "$state/neuron.token" ] || head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$state/neuron.token"
  [ -s "$state/admin.key" ] || head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$state/admin.key"
  chmod 600 "$state/neuron.token" "$state/admin.key"
  cat > "$state/neuron.toml" <<TOML
# Written by scripts/up.sh: the neuron "local" of the embedded default fleet.
name = "local"
listen = "127.0.0.1:$neuron_port"
models_dir = "$CORTEX_MODELS_DIR"
token_file = "$state/neuron.token"
log_dir = "$state/logs"

[harness.llamacpp]
kind = "llamacpp"
binary = "$LLAMA_SERVER"
TOML
  cat > "$state/cortex.toml" <<TOML
# Written by scripts/up.sh.
listen = "127.0.0.1:$api_port"
metrics_listen = "127.0.0.1:$metrics_port"
neuron_token_file = "$state/neuron.token"
admin_key = "$(cat "$state/admin.key")"
TOML
  echo "$api" > "$state/api"
  # fleet/ names the neuron at 127.0.0.1:13131; on another port cortex serves a copy that says so.
  fleet=fleet
  if [ "$neuron_port" != 13131 ]; then
    fleet="$state/fleet"
    rm -rf "$fleet" && cp -r fleet "$fleet"
    find "$fleet" -name '*.toml' -exec sed -i "s|http://127.0.0.1:13131|http://127.0.0.1:$neuron_port|" {} +
    echo "    the neuron listens on $neuron_port, so cortex serves $fleet (a copy of fleet/ naming that port)"
  fi
}

# --- starting and waiting -----------------------------------------------------------------

# Polls CMD until it succeeds, within SECONDS, while the process in PIDFILE stays alive; shows
# the time waited (one updated line on a terminal, a line every 10 s elsewhere).
wait_for() {
  local what="$1" seconds="$2" pidfile="$3"; shift 3
  local start=$EPOCHSECONDS el last=0
  until "$@" >/dev/null 2>&1; do
    el=$((EPOCHSECONDS - start))
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      [ "$_progress_tty" = 1 ] && printf '\r\e[K'
      printf '    %s exited; the end of its log (%s):\n' "$(basename "$pidfile" .pid)" "${pidfile%.pid}.log" >&2
      tail -n 20 "${pidfile%.pid}.log" | sed 's/^/      /' >&2
      fail "$what did not happen"
    fi
    [ "$el" -lt "$seconds" ] || fail "$what did not happen within ${seconds}s (logs: $state/*.log, $state/logs/)"
    if [ "$_progress_tty" = 1 ]; then printf '\r\e[K    %s: %s' "$what" "$(progress_fmt "$el")"
    elif [ $((el - last)) -ge 10 ]; then printf '    %s: %s\n' "$what" "$(progress_fmt "$el")"; last=$el; fi
    sleep 0.5
  done
  [ "$_progress_tty" = 1 ] && printf '\r\e[K'
  printf '    %s: yes, after %s\n' "$what" "$(progress_fmt $((EPOCHSECONDS - start)))"
}

start_fleet() {
  step "starting neuron on 127.0.0.1:$neuron_port and cortex serve on 127.0.0.1:$api_port with $fleet"
  # Should anything below fail, stop what this run started (its logs stay).
  trap 'CORTEX_UP_DIR="$state" bash scripts/down.sh >&2' EXIT
  nohup "$bin/neuron" --config "$state/neuron.toml" > "$state/neuron.log" 2>&1 9>&- &
  echo $! > "$state/neuron.pid"
  wait_for "neuron listening" 30 "$state/neuron.pid" curl -sf "http://127.0.0.1:$neuron_port/livez"
  nohup "$bin/cortex" serve --fleet "$fleet" --config "$state/cortex.toml" > "$state/cortex.log" 2>&1 9>&- &
  echo $! > "$state/cortex.pid"
  wait_for "cortex listening" 30 "$state/cortex.pid" curl -sf "$api/health"
  synced() { "$bin/cortex" status --json --config "$state/cortex.toml" | grep -q '"sync": "Synced"'; }
  wait_for "fleet in sync (gemma-3-270m loaded by llama-server)" 180 "$state/cortex.pid" synced
  "$bin/cortex" status --config "$state/cortex.toml" | sed 's/^/    /'
}

demo() {
  step "a chat completion through cortex (curl $api/v1/chat/completions)"
  local reply
  reply=$(curl -sS --max-time 120 "$api/v1/chat/completions" -H 'content-type: application/json' \
    -d '{"model": "gemma-3-270m", "max_tokens": 16, "messages": [{"role": "user", "content": "Say hello to the fleet in one sentence."}]}') \
    || fail "the chat completion failed (logs: $state/cortex.log, $state/logs/)"
  python3 -c 'import json, sys
r = json.loads(sys.argv[1])
print("    gemma-3-270m says:", " ".join(r["choices"][0]["message"]["content"].split()))
print("    usage:", r["usage"])' "$reply" || fail "unexpected reply: $reply"
}

summary() {
  local took=$((EPOCHSECONDS - began)) rebuilt="nothing rebuilt" fetched="nothing installed"
  [ "$compiled" = 0 ] || rebuilt="compiled $compiled crates"
  [ -z "$installed" ] || fetched="installed: $installed"
  printf 'seconds=%s\ncompiled=%s\ninstalled=%s\n' "$took" "$compiled" "$installed" > "$state/last-run"
  local down="bash scripts/down.sh"
  [ -z "${CORTEX_UP_DIR:-}" ] || down="CORTEX_UP_DIR=$state $down"
  cat <<DONE

cortex is up, after $(progress_fmt "$took") ($rebuilt; $fetched).

What you are looking at: one neuron ("local") runs llama-server with gemma-3-270m, a 270M-parameter
*base* model, quantised, on the CPU. It is here to show the fleet working end to end; its replies
are not meant to be good. Add a model of your own (below) for real answers.

  OpenAI API      $api/v1
  Anthropic API   $api
  fleet page      http://127.0.0.1:$metrics_port/ui?key=$(cat "$state/admin.key")   (the admin key; a cookie keeps you in)
  metrics         http://127.0.0.1:$metrics_port/metrics
  status          $bin/cortex status --config $state/cortex.toml
  logs            $state/cortex.log, $state/neuron.log, engines in $state/logs/

Point a client at it (no key is needed; client keys are api_keys in $state/cortex.toml):
  curl         curl $api/v1/chat/completions -H 'content-type: application/json' \\
                 -d '{"model": "gemma", "messages": [{"role": "user", "content": "Hello"}]}'
  SDKs         export OPENAI_BASE_URL=$api/v1 OPENAI_API_KEY=none
               export ANTHROPIC_BASE_URL=$api ANTHROPIC_API_KEY=none
  Claude Code  ANTHROPIC_BASE_URL=$api ANTHROPIC_API_KEY=none \\
                 ANTHROPIC_DEFAULT_HAIKU_MODEL=gemma-3-270m claude --model gemma-3-270m
               (its prompt is ~4,000 tokens before you type: the default fleet gives gemma ctx_size = 32768)
  Codex        in ~/.codex/config.toml, then: CORTEX_KEY=none codex
                 model = "gemma-3-270m"
                 model_provider = "cortex"
                 [model_providers.cortex]
                 name = "cortex"
                 base_url = "$api/v1"
                 env_key = "CORTEX_KEY"
                 wire_api = "responses"

Add a model of your own: put its GGUF file in $CORTEX_MODELS_DIR and save this
as $fleet/my-model.toml; cortex serve applies it when the file is saved (cortex plan previews it):
  [[model]]
  id = "my-model"                 # what clients send as "model"
  harness = "llamacpp"
  source = "my-model.gguf"        # relative to $CORTEX_MODELS_DIR
  min_devices = 0                 # CPU; for a GPU set vram_mb = ... instead
  ram_mb = 8000
  ctx_size = 32768
  pinned_on = ["local"]           # keep it loaded (leave out: loaded on the first request)

Stop: $down
DONE
}

preflight
build_and_install
write_config
start_fleet
demo
trap - EXIT
summary
