#!/usr/bin/env bash
# Stops what scripts/up.sh started (the README's stop command): cortex serve, then the neuron,
# which stops its engines. Honours the same CORTEX_UP_DIR (and CORTEX_CACHE) as scripts/up.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=tests/env.sh
source tests/env.sh
state="${CORTEX_UP_DIR:-$CORTEX_CACHE/up}"
stopped=0
for name in cortex neuron; do
  pidfile="$state/$name.pid"
  [ -f "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    echo "stopping $name (pid $pid)"
    kill -TERM "$pid"
    stopped=$((stopped + 1))
    deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null; do
      if [ "$SECONDS" -ge "$deadline" ]; then
        echo "$name did not stop within 30s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        break
      fi
      sleep 0.2
    done
  fi
  rm -f "$pidfile"
done
if [ "$stopped" = 0 ]; then
  echo "nothing from $state was running"
else
  echo "stopped; state and logs stay in $state"
fi
