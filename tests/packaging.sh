#!/usr/bin/env bash
# Packaging test (owner: operations, issue 8). Builds the cortex and neuron RPMs with
# packaging/rpm/build.sh from the debug binaries the test command built, then checks that:
#   - each package's files, modes, owners and config flags are exactly the "Installed layout"
#     tables of docs/operations.md, and the docs and examples are packaged;
#   - the scriptlets create the shared `cortex` user and preset/disable the units;
#   - unpacked into an empty root, the units pass `systemd-analyze verify` without a single
#     warning, their hardening stays within an exposure budget, and the sysusers.d/tmpfiles.d
#     files create the user and the directories with the documented owners and modes;
#   - the packaged binaries accept the units' command lines, and the packaged `cortex`
#     validates the example lab fleet and plans it against the example topology.
# Installs rpm and systemd with apt-get when missing (idempotent). Runs in a temporary folder.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=tests/env.sh
source tests/env.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CORTEX_CACHE/target}"
BIN_DIR="${CORTEX_BIN_DIR:-$CARGO_TARGET_DIR/debug}"

fail() { printf 'packaging: FAIL: %s\n' "$*" >&2; exit 1; }
ok() { printf 'packaging: ok: %s\n' "$*"; }

# need COMMAND DEBIAN-PACKAGE: install the package with apt-get when the command is missing.
need() {
  command -v "$1" >/dev/null && return
  command -v apt-get >/dev/null || fail "$1 is missing and there is no apt-get: install $2"
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  printf 'packaging: installing %s (for %s) with apt-get\n' "$2" "$1"
  { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
      --no-install-recommends "$2"; } >/dev/null || fail "apt-get install $2 failed"
  command -v "$1" >/dev/null || fail "$1 is still missing after installing $2"
}
need rpmbuild rpm
need rpm2archive rpm
need systemd-analyze systemd
need systemd-sysusers systemd
need systemd-tmpfiles systemd

for bin in cortex neuron; do
  [ -x "$BIN_DIR/$bin" ] || fail "$BIN_DIR/$bin is not built: run cargo build --workspace --bins (or set CORTEX_BIN_DIR)"
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# 1. Build both RPMs.
started=$SECONDS
bash packaging/rpm/build.sh --bindir "$BIN_DIR" --out "$work/rpms" >"$work/build.log" 2>&1 \
  || { cat "$work/build.log" >&2; fail "packaging/rpm/build.sh failed"; }
rpm_of() {
  local found
  found=$(find "$work/rpms" -name "$1-[0-9]*.rpm" | head -n1)
  [ -n "$found" ] || fail "no $1 RPM was built (see packaging/rpm/build.sh)"
  printf '%s\n' "$found"
}
cortex_rpm=$(rpm_of cortex)
neuron_rpm=$(rpm_of neuron)
ok "built $(basename "$cortex_rpm") and $(basename "$neuron_rpm") in $((SECONDS - started))s"

# 2. The layout equals docs/operations.md. A package's table is the ```text block after the
# line `<!-- installed-layout: NAME -->`: PATH (directories end in /), MODE, OWNER:GROUP, and
# config(noreplace) for configuration files. Docs and licenses are checked separately.
documented_layout() {
  awk -v marker="<!-- installed-layout: $1 -->" '
    $0 == marker { found = 1; next }
    found && /^```/ { if (inside) exit; inside = 1; next }
    inside { print }
  ' docs/operations.md | tr -s ' ' | sed 's/ $//'
}
packaged_layout() {
  rpm -qp --qf '[%{FILENAMES}\t%{FILEMODES:perms}\t%{FILEMODES:octal}\t%{FILEUSERNAME}:%{FILEGROUPNAME}\t%{FILEFLAGS:fflags}\n]' "$1" |
    awk -F'\t' '
      $1 ~ /^\/usr\/share\/(doc|licenses)\// { next }
      {
        path = $1; if (substr($2, 1, 1) == "d") path = path "/"
        mode = substr($3, length($3) - 3)
        note = ""
        if ($5 ~ /c/) note = ($5 ~ /n/) ? " config(noreplace)" : " config"
        print path " " mode " " $4 note
      }'
}
for name in cortex neuron; do
  rpm_file=$(rpm_of "$name")
  documented_layout "$name" >"$work/$name.expected"
  [ -s "$work/$name.expected" ] || fail "docs/operations.md has no '<!-- installed-layout: $name -->' table"
  packaged_layout "$rpm_file" >"$work/$name.actual"
  if ! diff -u "$work/$name.expected" "$work/$name.actual" >"$work/$name.diff"; then
    cat "$work/$name.diff" >&2
    fail "the $name RPM's files differ from docs/operations.md (- documented, + packaged)"
  fi
done
ok "both packages install exactly the layout documented in docs/operations.md"

require_files() { # require_files RPM PATH...
  local rpm_file=$1 list
  shift
  list=$(rpm -qlp "$rpm_file")
  for path in "$@"; do
    grep -qxF "$path" <<<"$list" || fail "$(basename "$rpm_file") lacks $path"
  done
}
require_files "$cortex_rpm" /usr/share/licenses/cortex/LICENSE /usr/share/doc/cortex/operations.md \
  /usr/share/doc/cortex/fleet-format.md /usr/share/doc/cortex/examples/cortex.example.toml \
  /usr/share/doc/cortex/examples/fleet-lab/policy.toml /usr/share/doc/cortex/examples/lab-topology.json \
  /usr/share/doc/cortex/examples/grafana/cortex.json /usr/share/doc/cortex/examples/prometheus/prometheus.yml \
  /usr/share/doc/cortex/examples/prometheus/cortex-alerts.yml
require_files "$neuron_rpm" /usr/share/licenses/neuron/LICENSE /usr/share/doc/neuron/operations.md \
  /usr/share/doc/neuron/neuron.md /usr/share/doc/neuron/examples/neuron-llamacpp.toml \
  /usr/share/doc/neuron/examples/neuron-sim.toml /usr/share/doc/neuron/examples/neuron-vllm.toml \
  /usr/share/doc/neuron/examples/neuron-mistralrs.toml /usr/share/doc/neuron/examples/mistralrs-server.toml
ok "docs, licenses and examples are packaged"

# 3. Scriptlets and dependencies.
scriptlet() { # scriptlet RPM NAME: the body of one scriptlet (preinstall, postinstall, ...)
  rpm -qp --scripts "$1" | awk -v name="$2" '
    /^[a-z]+ scriptlet \(using / { inside = ($1 == name); next }
    inside { print }'
}
check_scripts() { # check_scripts RPM UNIT...
  local rpm_file=$1
  shift
  scriptlet "$rpm_file" preinstall | grep -q 'useradd -r -g cortex -d /var/lib/cortex' \
    || fail "$(basename "$rpm_file"): preinstall does not create the cortex user"
  for unit in "$@"; do
    for phase in postinstall preuninstall; do
      scriptlet "$rpm_file" "$phase" | grep -qF "$unit" \
        || fail "$(basename "$rpm_file"): $phase does not handle $unit"
    done
  done
}
check_scripts "$cortex_rpm" cortex.service
check_scripts "$neuron_rpm" neuron.service neuron-gpu-setup.service
rpm -qp --requires "$cortex_rpm" | grep -qx git-core || fail "the cortex RPM must require git-core (it runs git)"
ok "scriptlets create the shared user and preset/disable the units; cortex requires git-core"

# 4. Unpack both packages into an empty root.
root=$work/root
mkdir -p "$root"
for rpm_file in "$cortex_rpm" "$neuron_rpm"; do
  rpm2archive - <"$rpm_file" | tar -xzf - -C "$root" --no-same-owner
done
# verify resolves the units' dependencies (network-online.target, ...) inside the root.
cp -n /usr/lib/systemd/system/*.target "$root/usr/lib/systemd/system/" 2>/dev/null || true
units=(cortex.service neuron.service neuron-gpu-setup.service)
for unit in "${units[@]}"; do
  if ! systemd-analyze verify --root="$root" "$root/usr/lib/systemd/system/$unit" >"$work/verify.log" 2>&1 ||
    [ -s "$work/verify.log" ]; then
    cat "$work/verify.log" >&2
    fail "systemd-analyze verify $unit reported problems (warnings count: an unknown key is ignored by systemd)"
  fi
done
ok "systemd-analyze verify: ${units[*]} clean"

# Exposure budget (systemd-analyze security, 0 = locked down, 10 = exposed). neuron keeps GPU
# devices, W^X-free memory and most system calls for its engines, so its budget is larger.
for budget in cortex.service:2.0 neuron.service:3.0; do
  unit=${budget%%:*} max=${budget#*:}
  score=$(systemd-analyze security --offline=yes --root="$root" "$unit" 2>/dev/null |
    sed -n "s/.*Overall exposure level for $unit: \([0-9.]*\).*/\1/p")
  [ -n "$score" ] || fail "systemd-analyze security gave no score for $unit"
  awk -v s="$score" -v m="$max" 'BEGIN { exit !(s <= m) }' \
    || fail "$unit exposure $score is above its budget $max: a hardening option was dropped?"
  ok "$unit exposure $score (budget $max)"
done

# sysusers.d and tmpfiles.d, applied to the root.
rm -rf "$root/var"
systemd-sysusers --root="$root" >"$work/sysusers.log" 2>&1 || { cat "$work/sysusers.log" >&2; fail "systemd-sysusers failed"; }
entry=$(grep '^cortex:' "$root/etc/passwd") || fail "sysusers.d did not create the cortex user"
[ "$(cut -d: -f6,7 <<<"$entry")" = "/var/lib/cortex:/usr/sbin/nologin" ] || fail "cortex user entry: $entry"
uid=$(cut -d: -f3 <<<"$entry")
for group in video render; do
  grep -Eq "^$group:[^:]*:[0-9]+:(.*,)?cortex(,|$)" "$root/etc/group" || fail "cortex is not in group $group"
done
systemd-tmpfiles --root="$root" --create >"$work/tmpfiles.log" 2>&1 || { cat "$work/tmpfiles.log" >&2; fail "systemd-tmpfiles failed"; }
[ ! -s "$work/tmpfiles.log" ] || { cat "$work/tmpfiles.log" >&2; fail "systemd-tmpfiles warned"; }
for dir in /var/lib/cortex /var/lib/cortex/models /var/log/cortex /var/log/cortex/engines /var/cache/cortex; do
  [ -d "$root$dir" ] || fail "tmpfiles.d did not create $dir"
  [ "$(stat -c '%a %u' "$root$dir")" = "750 $uid" ] || fail "$dir is $(stat -c '%a %u' "$root$dir"), not 750 owned by cortex"
done
ok "sysusers.d creates cortex (in video, render); tmpfiles.d creates the state, model, log and cache folders"

# 5. The packaged binaries accept the units' command lines (clap rejects an unknown flag before
# it reaches --help), and the packaged cortex validates and plans the example lab fleet.
for unit in cortex.service neuron.service; do
  exec_start=$(sed -n 's/^ExecStart=//p' "$root/usr/lib/systemd/system/$unit")
  read -r -a argv <<<"$exec_start"
  argv[0]=$root${argv[0]}
  "${argv[@]}" --help >/dev/null 2>"$work/help.log" || { cat "$work/help.log" >&2; fail "$unit: '$exec_start' is refused by the binary"; }
done
ok "the units' ExecStart lines are accepted by the packaged binaries"

examples=$root/usr/share/doc/cortex/examples
diff -r packaging/examples/fleet-lab "$examples/fleet-lab" >/dev/null || fail "the packaged fleet-lab differs from packaging/examples/fleet-lab"
"$root/usr/bin/cortex" validate --fleet packaging/examples/fleet-lab >"$work/validate.log" 2>&1 ||
  { cat "$work/validate.log" >&2; fail "cortex validate --fleet packaging/examples/fleet-lab failed"; }
ok "$(cat "$work/validate.log")"
set +e
"$root/usr/bin/cortex" plan --fleet "$examples/fleet-lab" --topology "$examples/lab-topology.json" \
  --detailed-exitcode >"$work/plan.log" 2>&1
code=$?
set -e
[ "$code" = 2 ] || { cat "$work/plan.log" >&2; fail "cortex plan on the lab example exited $code, expected 2 (changes)"; }
grep -q 'Plan: 3 to load, 0 to reload, 0 to unload' "$work/plan.log" && ! grep -qi infeasible "$work/plan.log" ||
  { cat "$work/plan.log" >&2; fail "the lab example should plan 3 loads (the pinned 32B model on atlas's two GPUs, the embedding model, one warm coder) and nothing infeasible"; }
grep -q 'load Qwen/Qwen3-32B on atlas' "$work/plan.log" && grep -q 'devices: GPU0, GPU1' "$work/plan.log" ||
  { cat "$work/plan.log" >&2; fail "the 32B model should be placed on atlas's two GPUs"; }
ok "the lab example plans 3 loads, the 32B model split over atlas's two GPUs"
ok "all packaging checks passed in $((SECONDS - started))s"
