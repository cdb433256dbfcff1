#!/usr/bin/env bash
# Installs the real coding agents the agent tests run unmodified: Claude Code and Codex CLI, pinned,
# from npm (node/npm come from the OS packages), into "$CORTEX_CACHE/agents". Idempotent: a stamp
# holding the pinned versions skips the install when it matches. Prints nothing but progress.
# The binaries land at "$CORTEX_CACHE/agents/node_modules/.bin/{claude,codex}" (tests/env.sh
# exports them as CLAUDE_BIN and CODEX_BIN; tests/agents.rs computes the same default).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/env.sh
source "$here/env.sh"

CLAUDE_CODE_VERSION=2.1.328
CODEX_VERSION=0.169.0

step() { printf '==> %s\n' "$*" >&2; }

command -v npm >/dev/null || { echo "install-agents: npm not found (install the OS nodejs/npm packages)" >&2; exit 1; }

dir="$CORTEX_CACHE/agents"
stamp="$dir/.cortex-agents"
want="claude-code $CLAUDE_CODE_VERSION codex $CODEX_VERSION"
bin="$dir/node_modules/.bin"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$bin/claude" ] && [ -x "$bin/codex" ]; then
  step "agents ready: $bin/claude ($CLAUDE_CODE_VERSION), $bin/codex ($CODEX_VERSION)"
  exit 0
fi

mkdir -p "$dir"
# A package.json of our own keeps npm from walking up to some other project.
[ -f "$dir/package.json" ] || printf '{"name":"cortex-agents","private":true}\n' >"$dir/package.json"
step "installing @anthropic-ai/claude-code@$CLAUDE_CODE_VERSION and @openai/codex@$CODEX_VERSION from npm into $dir"
# claude-code declares node >=22 but ships a native binary; engine-strict stays off so the OS node
# (20 on this Debian 12) can install it: the binary is native (the platform package), node only unpacks it.
npm install --prefix "$dir" --no-audit --no-fund --no-update-notifier --engine-strict=false \
  --save-exact "@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION" "@openai/codex@$CODEX_VERSION" >&2

step "checking the binaries run"
"$bin/claude" --version >&2
"$bin/codex" --version >&2
printf '%s' "$want" >"$stamp"
step "agents ready: $bin/claude ($CLAUDE_CODE_VERSION), $bin/codex ($CODEX_VERSION)"
