#!/usr/bin/env bash
# Builds compared at 1,000 streams by alternating runs, with nginx in every run, then tallied:
# how often each build met the §10 streaming bounds, against nginx in the same runs. One run's
# tail says little on a shared VM whose speed drifts by the hour; alternation and counts do.
#
#   bash bench/alternate.sh RUNS NAME=BIN_DIR [NAME=BIN_DIR ...]
#
# Each BIN_DIR holds release `cortex`, `neuron` and `cortex-bench` (e.g. copied from
# target/release after `cargo build --release --bin cortex --bin neuron --bin cortex-bench` at
# the commit to measure). A run takes about 70 s. Reports go to bench/results as
# <time>-stream1000-NAME.json (OUT=DIR elsewhere); `cortex-bench tally` prints the table, which
# it can reprint from any set of such files. Nothing should compile meanwhile.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

runs=${1:?usage: bench/alternate.sh RUNS NAME=BIN_DIR [NAME=BIN_DIR ...]}
shift
(($# > 0)) || { echo "alternate.sh: name at least one NAME=BIN_DIR" >&2; exit 2; }
for build in "$@"; do
    [[ $build == *=* && -x ${build#*=}/cortex && -x ${build#*=}/cortex-bench ]] || {
        echo "alternate.sh: $build is not NAME=BIN_DIR with cortex and cortex-bench in it" >&2
        exit 2
    }
done
if ! command -v nginx >/dev/null && [[ -x /usr/sbin/nginx ]]; then PATH="$PATH:/usr/sbin"; fi
nginx=$(command -v nginx) || { echo "alternate.sh: nginx is missing (apt-get install nginx-light)" >&2; exit 1; }
out=${OUT:-bench/results}
mkdir -p "$out"
ulimit -n "$(ulimit -Hn)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

bench="${1#*=}/cortex-bench"
written=()
for run in $(seq "$runs"); do
    for build in "$@"; do
        name=${build%%=*} dir=${build#*=}
        echo "run $run of $runs: $name"
        "$bench" all --only stream --streams 1000 --rounds 5 --nginx "$nginx" --bin-dir "$dir" \
            --out "$work/$name" >"$work/log" 2>&1 || { tail -20 "$work/log" >&2; exit 1; }
        report=$(ls "$work/$name"/*.json)
        target="$out/$(basename "$report" .json)-stream1000-$name.json"
        mv "$report" "$target"
        written+=("$target")
    done
done
"$bench" tally "${written[@]}"
