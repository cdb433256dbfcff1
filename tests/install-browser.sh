#!/usr/bin/env bash
# Installs the headless browser the fleet page's test drives (tests/ui/fleet_page.py): Debian's
# `chromium` package. Idempotent: does nothing when `chromium` is already on PATH. Needs root
# (the test machines run as root) and the Debian package archive.
set -euo pipefail

step() { printf '==> %s\n' "$*" >&2; }

if command -v chromium >/dev/null 2>&1; then
  step "chromium is installed: $(command -v chromium)"
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "installing chromium needs root (or sudo)" >&2; exit 1; }
  sudo="sudo"
fi
step "installing Debian's chromium for the fleet page test (apt-get; a few minutes, once)"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
step "chromium is installed: $(command -v chromium) ($(chromium --version 2>/dev/null || echo 'version unknown'))"
