#!/usr/bin/env bash
# Builds the cortex and neuron RPMs from prebuilt binaries: stages each spec's sources (the
# binary, units, sysusers/tmpfiles, configs, docs and examples from this repository) into one
# folder, then runs rpmbuild -bb. Nothing is compiled here; build the binaries first:
#
#   cargo build --release --locked
#   bash packaging/rpm/build.sh --bindir target/release --out dist
#
# Options: --bindir DIR (holds `cortex` and `neuron`; default target/release), --out DIR (where
# the .rpm files go; default dist), --version X.Y.Z (default: the workspace version in
# Cargo.toml), --release N (default 1). Needs rpmbuild (Fedora: rpm-build; Debian: rpm).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bindir=$repo/target/release
out=$repo/dist
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -n1)
release=1
while [ $# -gt 0 ]; do
  case "$1" in
    --bindir) bindir=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --version) version=$2; shift 2 ;;
    --release) release=$2; shift 2 ;;
    *) echo "build.sh: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
command -v rpmbuild >/dev/null || { echo "build.sh: rpmbuild not found (Fedora: dnf install rpm-build; Debian: apt-get install rpm)" >&2; exit 1; }
for bin in cortex neuron; do
  [ -x "$bindir/$bin" ] || { echo "build.sh: $bindir/$bin is missing: build it first (cargo build --release)" >&2; exit 1; }
done
mkdir -p "$out"
out=$(cd "$out" && pwd)
bindir=$(cd "$bindir" && pwd)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
stage=$work/SOURCES
mkdir -p "$stage"
p=$repo/packaging

# Reproducible tarballs of docs and examples.
tarball() { # tarball OUT DIR-INSIDE-TAR FILE... (files are copied flat or with their sub-paths)
  local target=$1 prefix=$2
  shift 2
  local tree=$work/tree-$(basename "$target" .tar)
  rm -rf "$tree" && mkdir -p "$tree/$prefix"
  for spec in "$@"; do # SRC[:DEST]
    local src=${spec%%:*} dest=${spec#*:}
    [ "$dest" = "$spec" ] && dest=$(basename "$src")
    mkdir -p "$(dirname "$tree/$prefix/$dest")"
    cp -R "$src" "$tree/$prefix/$dest"
  done
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$tree" -cf "$target" "$prefix"
}

# cortex
install -m 0755 "$bindir/cortex" "$stage/cortex"
cp "$p/systemd/cortex.service" "$stage/cortex.service"
cp "$p/sysusers/cortex.conf" "$stage/cortex.sysusers"
cp "$p/tmpfiles/cortex.conf" "$stage/cortex.tmpfiles"
cp "$p/cortex.example.toml" "$stage/cortex.example.toml"
cp "$repo/LICENSE" "$stage/LICENSE"
tarball "$stage/cortex-docs.tar" docs \
  "$repo/README.md" "$repo/docs/operations.md" "$repo/docs/fleet-format.md" "$repo/docs/plan-format.md"
tarball "$stage/cortex-examples.tar" examples \
  "$p/examples/fleet-lab:fleet-lab" "$p/examples/lab-topology.json" \
  "$p/grafana/cortex.json:grafana/cortex.json" \
  "$p/prometheus/prometheus.yml:prometheus/prometheus.yml" \
  "$p/prometheus/cortex-alerts.yml:prometheus/cortex-alerts.yml"

# neuron
install -m 0755 "$bindir/neuron" "$stage/neuron"
cp "$p/systemd/neuron.service" "$p/systemd/neuron-gpu-setup.service" "$stage/"
cp "$p/sysusers/neuron.conf" "$stage/neuron.sysusers"
cp "$p/tmpfiles/neuron.conf" "$stage/neuron.tmpfiles"
cp "$p/neuron/neuron-llamacpp.toml" "$stage/neuron-llamacpp.toml"
tarball "$stage/neuron-docs.tar" docs "$repo/README.md" "$repo/docs/operations.md" "$repo/docs/neuron.md"
tarball "$stage/neuron-examples.tar" examples "$p"/neuron/*.toml "$p/examples/mistralrs-server.toml"

for spec in cortex neuron; do
  rpmbuild -bb --quiet \
    --define "_topdir $work/rpmbuild" \
    --define "_sourcedir $stage" \
    --define "_rpmdir $out" \
    --define "_build_id_links none" \
    --define "cortex_version $version" \
    --define "cortex_release $release" \
    ${RPM_PAYLOAD:+--define "_binary_payload $RPM_PAYLOAD"} \
    "$p/rpm/$spec.spec"
done
find "$out" -name "*-$version-$release*.rpm" -newer "$stage/cortex" -print | sort
