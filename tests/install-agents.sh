#!/usr/bin/env bash
# Installs the real coding agents the agent tests run unmodified: Claude Code, Codex CLI,
# qwen-code and opencode, pinned,
# from npm (node/npm come from the OS packages), into "$CORTEX_CACHE/agents". Idempotent: a stamp
# holding the pinned versions skips the install when it matches. Prints nothing but progress.
# The binaries land at "$CORTEX_CACHE/agents/node_modules/.bin/{claude,codex,qwen,opencode}"
# (tests/env.sh exports them as CLAUDE_BIN, CODEX_BIN, QWEN_BIN and OPENCODE_BIN; tests/agents.rs
# computes the same default).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/env.sh
source "$here/env.sh"

CLAUDE_CODE_VERSION=2.1.328
CODEX_VERSION=0.169.0
QWEN_CODE_VERSION=0.24.4
# opencode is one native binary (the platform package opencode-linux-x64) with its provider
# packages built in: the custom OpenAI-compatible provider the tests configure
# (`@ai-sdk/openai-compatible`) loads from the binary, so a run fetches nothing from npm; with
# OPENCODE_DISABLE_MODELS_FETCH it does not fetch models.dev either (it runs in a network
# namespace without a network).
OPENCODE_VERSION=1.18.33

step() { printf '==> %s\n' "$*" >&2; }

command -v npm >/dev/null || { echo "install-agents: npm not found (install the OS nodejs/npm packages)" >&2; exit 1; }

dir="$CORTEX_CACHE/agents"
stamp="$dir/.cortex-agents"
want="claude-code $CLAUDE_CODE_VERSION codex $CODEX_VERSION qwen-code $QWEN_CODE_VERSION opencode $OPENCODE_VERSION"
bin="$dir/node_modules/.bin"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$bin/claude" ] && [ -x "$bin/codex" ] &&
  [ -x "$bin/qwen" ] && [ -x "$bin/opencode" ]; then
  step "agents ready: $bin/claude ($CLAUDE_CODE_VERSION), $bin/codex ($CODEX_VERSION), $bin/qwen ($QWEN_CODE_VERSION), $bin/opencode ($OPENCODE_VERSION)"
  exit 0
fi

mkdir -p "$dir"
# A package.json of our own keeps npm from walking up to some other project.
[ -f "$dir/package.json" ] || printf '{"name":"cortex-agents","private":true}\n' >"$dir/package.json"
step "installing @anthropic-ai/claude-code@$CLAUDE_CODE_VERSION, @openai/codex@$CODEX_VERSION, @qwen-code/qwen-code@$QWEN_CODE_VERSION and opencode-ai@$OPENCODE_VERSION from npm into $dir"
# claude-code declares node >=22 but ships a native binary; engine-strict stays off so the OS node
# (20 on this Debian 12) can install it: the binary is native (the platform package), node only unpacks it.
# qwen-code declares node >=22 too: the tests run it under the Node of the jsclients part.
npm install --prefix "$dir" --no-audit --no-fund --no-update-notifier --engine-strict=false \
  --save-exact "@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION" "@openai/codex@$CODEX_VERSION" \
  "@qwen-code/qwen-code@$QWEN_CODE_VERSION" "opencode-ai@$OPENCODE_VERSION" >&2

step "checking the binaries run"
"$bin/claude" --version >&2
"$bin/codex" --version >&2
"$bin/qwen" --version >&2
# opencode keeps state under HOME: a throwaway one, so the check leaves nothing behind.
opencode_home=$(mktemp -d)
HOME="$opencode_home" "$bin/opencode" --version >&2
rm -rf "$opencode_home"
printf '%s' "$want" >"$stamp"
step "agents ready: $bin/claude ($CLAUDE_CODE_VERSION), $bin/codex ($CODEX_VERSION), $bin/qwen ($QWEN_CODE_VERSION), $bin/opencode ($OPENCODE_VERSION)"
