#!/usr/bin/env bash
# Browser tests of the web console: Debian's Chromium driven by playwright-core
# (no browser download), against the real binary and mock-upstream.
#
#   tests/console/run.sh [node --test args...]
#
# Installs what is missing: chromium (apt-get), node_modules (npm ci from the
# committed package-lock.json), the SDK venv (the openai package, shared with
# tests/sdk), the binaries (cargo build). Needs no stdin. Screenshots go to
# docs/screenshots/ (or $BURSAR_SCREENSHOTS).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
log() { echo "console-tests: $*" >&2; }

# --- chromium -------------------------------------------------------------
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
if [[ ! -x "$CHROMIUM" ]]; then
    log "installing Debian's chromium"
    SUDO=""
    if [[ "$(id -u)" != 0 ]]; then SUDO="sudo -n"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq </dev/null
    $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core </dev/null >/dev/null
fi

# --- node modules -----------------------------------------------------------
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    log "installing node and npm"
    SUDO=""
    if [[ "$(id -u)" != 0 ]]; then SUDO="sudo -n"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq </dev/null
    $SUDO apt-get install -y -qq nodejs npm </dev/null >/dev/null
fi
stamp="$HERE/node_modules/.lock.sha256"
want="$(sha256sum "$HERE/package-lock.json" | cut -d' ' -f1)"
if [[ ! -d "$HERE/node_modules/playwright-core" ]] || [[ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]]; then
    log "npm ci"
    (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error </dev/null)
    echo "$want" > "$stamp"
fi

# --- the OpenAI SDK (the SDK suite's venv) ------------------------------------
SDK="$ROOT/tests/sdk"
VENV="$SDK/.venv"
vstamp="$VENV/.requirements.sha256"
vwant="$(sha256sum "$SDK/requirements.txt" | cut -d' ' -f1)"
if [[ ! -x "$VENV/bin/python" ]] || [[ "$(cat "$vstamp" 2>/dev/null || true)" != "$vwant" ]]; then
    log "preparing $VENV"
    [[ -x "$VENV/bin/python" ]] || { rm -rf "$VENV"; "${PYTHON:-python3}" -m venv "$VENV"; }
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 "$VENV/bin/python" -m pip install --quiet -r "$SDK/requirements.txt"
    echo "$vwant" > "$vstamp"
fi
export SDK_PYTHON="$VENV/bin/python"

# --- binaries -------------------------------------------------------------
target="${CARGO_TARGET_DIR:-$ROOT/target}"
export BURSAR_BIN="${BURSAR_BIN:-$target/debug/bursar}"
export MOCK_BIN="${MOCK_BIN:-$target/debug/mock-upstream}"
if [[ ! -x "$BURSAR_BIN" || ! -x "$MOCK_BIN" ]]; then
    log "building the binaries (cargo build --workspace --bins)"
    (cd "$ROOT" && cargo build --workspace --bins)
fi

# --- tests ----------------------------------------------------------------
cd "$HERE"
exec timeout --kill-after=10 300 node --test --test-concurrency=1 "$@" "$HERE/console.test.mjs" </dev/null
