#!/usr/bin/env bash
# Observability test (owner: operations, issue 8). Runs a real `neuron` (sim harness with one
# simulated 8 GB GPU, plus a stand-in engine it can crash) and `cortex serve` on free loopback
# ports, causes the events behind every metric (streamed and plain chat requests through
# cortex, cold starts, an eviction, a pinned load by the reconciler, a client hanging up, an
# engine crash), then:
#   - runs `promtool check metrics` on both /metrics endpoints;
#   - starts a real Prometheus scraping both (the neuron with its bearer token), waits until
#     both targets are up, and checks that every metric name the Grafana dashboard
#     (packaging/grafana/cortex.json) and the alert rules (packaging/prometheus/cortex-alerts.yml)
#     query exists in Prometheus, listing the missing ones;
#   - runs every dashboard query through Prometheus: each must parse and return data.
# Installs the Debian package `prometheus` with apt-get when missing (idempotent).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=tests/env.sh
source tests/env.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CORTEX_CACHE/target}"
BIN_DIR="${CORTEX_BIN_DIR:-$CARGO_TARGET_DIR/debug}"
DASHBOARD=packaging/grafana/cortex.json
ALERTS=packaging/prometheus/cortex-alerts.yml

work=$(mktemp -d)
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

logs() {
  local f
  for f in "$work"/*.log; do
    [ -f "$f" ] && { printf -- '--- %s (last 30 lines) ---\n' "$(basename "$f")"; tail -n 30 "$f"; }
  done >&2
}
fail() { printf 'observability: FAIL: %s\n' "$*" >&2; logs; exit 1; }
ok() { printf 'observability: ok: %s\n' "$*"; }

# poll SECONDS WHAT COMMAND...: run COMMAND until it succeeds, or fail after SECONDS.
poll() {
  local seconds=$1 what=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || fail "timed out after ${seconds}s waiting for $what"
    sleep 0.2
  done
}

need() { # need COMMAND DEBIAN-PACKAGE
  command -v "$1" >/dev/null && return
  command -v apt-get >/dev/null || fail "$1 is missing and there is no apt-get: install $2"
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  printf 'observability: installing %s (for %s) with apt-get\n' "$2" "$1"
  { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
      --no-install-recommends "$2"; } >/dev/null || fail "apt-get install $2 failed"
  command -v "$1" >/dev/null || fail "$1 is still missing after installing $2"
}
need prometheus prometheus
need promtool prometheus
need curl curl
need python3 python3
for bin in cortex neuron; do
  [ -x "$BIN_DIR/$bin" ] || fail "$BIN_DIR/$bin is not built: run cargo build --workspace --bins (or set CORTEX_BIN_DIR)"
done

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
neuron_port=$(free_port)
api_port=$(free_port)
metrics_port=$(free_port)
prom_port=$(free_port)
engine_base=$(free_port)
token=observability-token
started=$SECONDS

# A stand-in engine for the llamacpp harness: answers GET /health with 200 on the --port it is
# given, so the neuron sees it ready; the test kills it to cause an engine crash.
mkdir -p "$work/models" "$work/www" "$work/fleet"
: >"$work/models/crashme.gguf"
: >"$work/www/health"
cat >"$work/fake-engine" <<EOF
#!/usr/bin/env bash
port=""
while [ \$# -gt 0 ]; do case "\$1" in --port) port=\$2; shift 2 ;; *) shift ;; esac; done
echo \$\$ >"$work/engine.pid"
exec python3 -m http.server --bind 127.0.0.1 --directory "$work/www" "\$port"
EOF
chmod +x "$work/fake-engine"

cat >"$work/neuron.toml" <<EOF
name = "sim1"
listen = "127.0.0.1:$neuron_port"
models_dir = "$work/models"
log_dir = "$work/engine-logs"
port_range = "$engine_base-$((engine_base + 20))"
stop_grace = "2s"
[harness.sim]
kind = "sim"
load_ms = 200
ttft_ms = 10
tokens_per_second = 50.0
devices = [{ name = "SimGPU 8G", vram_mb = 8000 }]
[harness.fake]
kind = "llamacpp"
binary = "$work/fake-engine"
EOF
# One pinned model (the reconciler loads it) and two that do not fit together (an eviction).
cat >"$work/fleet/fleet.toml" <<EOF
[[neuron]]
name = "sim1"
endpoint = "http://127.0.0.1:$neuron_port"
[[model]]
id = "pinned"
harness = "sim"
source = "pinned.gguf"
vram_mb = 1000
pinned_on = ["sim1"]
[[model]]
id = "alpha"
harness = "sim"
source = "alpha.gguf"
vram_mb = 6000
[[model]]
id = "beta"
harness = "sim"
source = "beta.gguf"
vram_mb = 6000
EOF
cat >"$work/cortex.toml" <<EOF
listen = "127.0.0.1:$api_port"
metrics_listen = "127.0.0.1:$metrics_port"
neuron_token = "$token"
[poll]
interval = "300ms"
[reconcile]
resync = "1s"
EOF

NEURON_TOKEN=$token "$BIN_DIR/neuron" --config "$work/neuron.toml" >"$work/neuron.log" 2>&1 &
pids+=($!)
poll 30 "neuron /livez" curl -sf "http://127.0.0.1:$neuron_port/livez"
"$BIN_DIR/cortex" serve --fleet "$work/fleet" --config "$work/cortex.toml" >"$work/cortex.log" 2>&1 &
pids+=($!)
poll 30 "cortex /health" curl -sf "http://127.0.0.1:$api_port/health"
ok "neuron and cortex serve on 127.0.0.1:$neuron_port and :$api_port (metrics :$metrics_port)"

# Events. The reconciler loads the pinned model.
nm() { curl -sf -H "Authorization: Bearer $token" "http://127.0.0.1:$neuron_port/metrics"; }
cm() { curl -sf "http://127.0.0.1:$metrics_port/metrics"; }
has_metric() { "$1" | grep -q "^$2"; }
poll 30 "the reconciler to load the pinned model" has_metric cm 'cortex_reconcile_runs_total{result="applied"}'

chat() { # chat MODEL STREAM
  curl -sS -f -m 30 "http://127.0.0.1:$api_port/v1/chat/completions" -H 'content-type: application/json' \
    -d "{\"model\":\"$1\",\"stream\":$2,\"max_tokens\":8,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}" \
    >"$work/chat.out" || fail "chat request for $1 (stream=$2) failed: $(cat "$work/chat.out")"
}
chat alpha true   # cold start, streamed: time to first token, tokens per second
chat beta false   # cold start that evicts alpha (8 GB: pinned 1 + 6 + 6 does not fit)
chat alpha true   # and back
chat alpha false
# A client that hangs up mid-stream (status="client_closed"; the series exists at 0 from the
# model's first request, so the count is what is checked).
curl -sS -m 1 "http://127.0.0.1:$api_port/v1/chat/completions" -H 'content-type: application/json' \
  -d '{"model":"alpha","stream":true,"max_tokens":500,"messages":[{"role":"user","content":"hi"}]}' \
  >/dev/null 2>&1 || true
poll 10 "cortex to count the hung-up stream" has_metric cm 'cortex_requests_total{.*status="client_closed"[^}]*} [1-9]'

# An engine crash: load the stand-in engine directly on the neuron, then kill it.
curl -sf -H "Authorization: Bearer $token" "http://127.0.0.1:$neuron_port/models/load" \
  -d '{"model":"crashme","profile":{"harness":"fake","source":"crashme.gguf"}}' >/dev/null ||
  fail "the neuron refused to load the stand-in engine"
curl -sf -H "Authorization: Bearer $token" \
  "http://127.0.0.1:$neuron_port/models/wait?model=crashme&timeout_ms=20000" >"$work/wait.out" ||
  fail "waiting for the stand-in engine failed"
grep -q '"status":"loaded"' "$work/wait.out" || fail "the stand-in engine did not become ready: $(cat "$work/wait.out")"
[ -s "$work/engine.pid" ] || fail "the stand-in engine wrote no pid file"
kill -KILL "$(cat "$work/engine.pid")"
poll 20 "the neuron to count the engine crash" has_metric nm neuron_engine_crashes_total
ok "events caused: reconcile, cold starts, an eviction, streams, a hung-up client, an engine crash"

# promtool lints both expositions (HELP text, naming, types).
for target in cortex:cm neuron:nm; do
  "${target#*:}" >"$work/${target%%:*}.metrics" || fail "cannot read the ${target%%:*} /metrics"
  promtool check metrics <"$work/${target%%:*}.metrics" >"$work/promtool.out" 2>&1 ||
    { cat "$work/promtool.out" >&2; fail "promtool check metrics: ${target%%:*} /metrics has problems"; }
done
ok "promtool check metrics: cortex and neuron /metrics are clean"

# A real Prometheus scraping both.
mkdir -p "$work/prom"
printf '%s\n' "$token" >"$work/prom/neuron.token"
cat >"$work/prom/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: cortex
    static_configs: [{ targets: ["127.0.0.1:$metrics_port"] }]
  - job_name: neuron
    authorization: { type: Bearer, credentials_file: "$work/prom/neuron.token" }
    static_configs: [{ targets: ["127.0.0.1:$neuron_port"] }]
EOF
promtool check config "$work/prom/prometheus.yml" >/dev/null || fail "the test's own prometheus.yml is invalid"
prometheus --config.file="$work/prom/prometheus.yml" --storage.tsdb.path="$work/prom/data" \
  --web.listen-address="127.0.0.1:$prom_port" --log.level=warn >"$work/prometheus.log" 2>&1 &
pids+=($!)
prom=http://127.0.0.1:$prom_port
poll 60 "Prometheus to be ready" curl -sf "$prom/-/ready"

targets_up() {
  curl -sf "$prom/api/v1/targets" | python3 -c '
import json, sys
targets = json.load(sys.stdin)["data"]["activeTargets"]
up = {t["labels"]["job"] for t in targets if t["health"] == "up"}
sys.exit(0 if {"cortex", "neuron"} <= up else 1)'
}
poll 60 "Prometheus to scrape cortex and neuron successfully (/api/v1/targets health up)" targets_up
ok "Prometheus scrapes both targets"

# Every metric the dashboard and the alerts name must exist in Prometheus.
names_used() {
  python3 - "$DASHBOARD" "$ALERTS" <<'PY'
import json, re, sys
exprs = []
def walk(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                exprs.append(value)
            else:
                walk(value)
    elif isinstance(node, list):
        for item in node:
            walk(item)
walk(json.load(open(sys.argv[1])))
exprs += re.findall(r"^\s*expr:\s*(.+)$", open(sys.argv[2]).read(), re.M)
names = set()
for expr in exprs:
    names.update(re.findall(r"\b((?:cortex|neuron)_[a-z0-9_]+)\b", expr))
print("\n".join(sorted(names)))
PY
}
names_used >"$work/used.txt"
[ "$(wc -l <"$work/used.txt")" -ge 20 ] || fail "found only $(wc -l <"$work/used.txt") metric names in the dashboard and alerts"
stored() {
  curl -sf "$prom/api/v1/label/__name__/values" | python3 -c 'import json, sys; print("\n".join(json.load(sys.stdin)["data"]))' |
    sort >"$work/stored.txt"
  comm -23 "$work/used.txt" "$work/stored.txt" >"$work/missing.txt"
  [ ! -s "$work/missing.txt" ]
}
deadline=$((SECONDS + 20))
until stored; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    printf 'observability: FAIL: metrics the dashboard or the alerts use but Prometheus does not have:\n' >&2
    sed 's/^/  /' "$work/missing.txt" >&2
    logs
    exit 1
  fi
  sleep 0.5
done
ok "all $(wc -l <"$work/used.txt") metric names of the dashboard and alerts exist in Prometheus"

# Every dashboard query parses and returns data (rate() and increase() need two scrapes of a
# series, so this is polled too).
cat >"$work/queries.py" <<'PY'
import json, sys, urllib.parse, urllib.request
dashboard, prom = json.load(open(sys.argv[1])), sys.argv[2]
problems, count = [], 0
def panels(items):
    for p in items:
        yield p
        yield from panels(p.get("panels", []))
for panel in panels(dashboard["panels"]):
    for target in panel.get("targets", []):
        expr = target["expr"].replace("$__rate_interval", "1m").replace("$model", ".*")
        url = prom + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            answer = json.load(urllib.request.urlopen(url, timeout=10))
        except Exception as error:  # an HTTP 400 carries the parse error
            problems.append(f"{panel['title']}: {expr}: {error}")
            continue
        count += 1
        if answer.get("status") != "success":
            problems.append(f"{panel['title']}: {expr}: {answer}")
        elif not answer["data"]["result"]:
            problems.append(f"{panel['title']}: {expr}: no data")
print(f"{count} queries")
if problems:
    print("\n".join(problems))
    sys.exit(1)
PY
queries_ok() { python3 "$work/queries.py" "$DASHBOARD" "$prom" >"$work/queries.out" 2>&1; }
if ! queries_ok; then
  deadline=$((SECONDS + 30))
  until queries_ok; do
    [ "$SECONDS" -lt "$deadline" ] || { cat "$work/queries.out" >&2; fail "dashboard queries failed or returned no data (above)"; }
    sleep 0.5
  done
fi
ok "every dashboard query returns data ($(head -n1 "$work/queries.out"))"
ok "all observability checks passed in $((SECONDS - started))s"
