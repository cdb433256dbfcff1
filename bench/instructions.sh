#!/usr/bin/env bash
# Instructions cortex executes per forwarded request and per streamed event, counted by
# callgrind: a figure that, unlike latency on a shared VM, does not move from run to run.
#
#   bash bench/instructions.sh BIN_DIR     (BIN_DIR holds release `cortex` and `cortex-bench`)
#   ROUTE=messages bash bench/instructions.sh BIN_DIR     (the Anthropic route, translated)
#   KEY=1 bash bench/instructions.sh BIN_DIR     (through a fleet [[key]] with an rpm, a tpm and
#                                                 a daily budget: the key check and accounting)
#   KEY=api bash bench/instructions.sh BIN_DIR   (through cortex.toml's api_keys: a key, no limits)
#
# cortex serves in front of the bench's mock engine; 200 streaming requests of one token go
# through one kept-alive connection, then 20 streams of 50 tokens. The poller runs once a
# minute so that it stays out of the counts. Needs valgrind and curl (Debian packages).
set -euo pipefail

bin=${1:?usage: bench/instructions.sh BIN_DIR}
for tool in valgrind callgrind_control curl; do
    command -v "$tool" >/dev/null || { echo "instructions.sh: $tool is missing (apt-get install valgrind curl)" >&2; exit 1; }
done
work=$(mktemp -d)
mock_port=47100 api_port=47101 metrics_port=47102
trap 'kill $(jobs -p) 2>/dev/null || true; wait; rm -rf "$work"' EXIT

mkdir -p "$work/fleet"
printf '[[neuron]]\nname = "mock"\nendpoint = "http://127.0.0.1:%s"\n' "$mock_port" >"$work/fleet/fleet.toml"
auth=()
if [ "${KEY:-0}" = 1 ]; then
    # The digest of "ck-bench"; limits high enough never to refuse, low enough to be counted.
    secret=ck-bench
    printf '\n[[key]]\nname = "bench"\nsha256 = "%s"\nrpm = 1000000\ntpm = 1000000000\ntokens_per_day = 1000000000000\n' \
        "$(printf %s "$secret" | sha256sum | cut -d' ' -f1)" >>"$work/fleet/fleet.toml"
    auth=(-H "authorization: Bearer $secret")
fi
api_keys=""
if [ "${KEY:-0}" = api ]; then
    api_keys='api_keys = ["ck-bench"]\n'
    auth=(-H "authorization: Bearer ck-bench")
fi
printf "${api_keys}"'listen = "127.0.0.1:%s"\nmetrics_listen = "127.0.0.1:%s"\nusage_store = "%s/usage.redb"\n\n[poll]\ninterval = "60s"\n' \
    "$api_port" "$metrics_port" "$work" >"$work/cortex.toml"
"$bin/cortex-bench" mock --port "$mock_port" --models m-0-0,m-0-1 >"$work/mock.log" 2>&1 &
valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
    "$bin/cortex" serve --fleet "$work/fleet" --config "$work/cortex.toml" >"$work/cortex.log" 2>&1 &
cortex=$!
for _ in $(seq 120); do
    curl -sf "${auth[@]}" "127.0.0.1:$api_port/v1/models" 2>/dev/null | grep -q m-0-1 && break
    sleep 1
done
curl -sf "${auth[@]}" "127.0.0.1:$api_port/v1/models" | grep -q m-0-1 || {
    echo "instructions.sh: cortex did not list the mock's models; logs:" >&2
    tail -5 "$work/mock.log" "$work/cortex.log" >&2
    exit 1
}

case ${ROUTE:-chat} in
    chat) path=/v1/chat/completions end='^data: \[DONE\]' ;;
    messages) path=/v1/messages end='^event: message_stop' ;;
    *) echo "instructions.sh: ROUTE is chat or messages" >&2; exit 2 ;;
esac
url="http://127.0.0.1:$api_port$path"
body() { printf '{"model":"%s","max_tokens":%s,"stream":true,"messages":[{"role":"user","content":"Say hello to the benchmark."}]}' "$1" "$2"; }
urls() { for _ in $(seq "$1"); do printf 'url = "%s"\n' "$url"; done >"$work/urls"; }
run() { curl -s "${auth[@]}" -H 'content-type: application/json' -d "$(body "$1" "$2")" -K "$work/urls" | grep -c "$end" || true; }
count() { grep '^summary:' "$work/cg.out.$1" | cut -d' ' -f2; }

urls 5; run m-0-0 1 >/dev/null; run m-0-1 50 >/dev/null # warm: connections, metric handles
urls 200; callgrind_control -z "$cortex" >/dev/null 2>&1; done=$(run m-0-0 1); callgrind_control -d "$cortex" >/dev/null 2>&1
[ "$done" = 200 ] || { echo "instructions.sh: $done of 200 requests completed" >&2; exit 1; }
urls 20; callgrind_control -z "$cortex" >/dev/null 2>&1; done=$(run m-0-1 50); callgrind_control -d "$cortex" >/dev/null 2>&1
[ "$done" = 20 ] || { echo "instructions.sh: $done of 20 streams completed" >&2; exit 1; }

per_request=$(($(count 1) / 200))
per_event=$((($(count 2) - 20 * per_request) / (20 * 52)))
echo "cortex instructions per request (stream of 1 token, 3 events): $per_request"
echo "cortex instructions per streamed event (20 streams x 52 events, requests taken out): $per_event"
