#!/usr/bin/env bash
# Run the official Python SDKs (openai, anthropic) against bursar.
#
#   tests/sdk/run.sh [pytest args...]
#
# Creates tests/sdk/.venv on first use (and reinstalls when requirements.txt
# changes). Uses target/debug/{bursar,mock-upstream}, or $BURSAR_BIN /
# $MOCK_BIN; builds them with cargo when they are missing. Needs no stdin.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="$HERE/.venv"
REQ="$HERE/requirements.txt"
PY="${PYTHON:-python3}"

log() { echo "sdk-tests: $*" >&2; }

# --- venv ---------------------------------------------------------------
stamp="$VENV/.requirements.sha256"
want="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [[ ! -x "$VENV/bin/python" ]] || [[ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]]; then
    if [[ ! -x "$VENV/bin/python" ]]; then
        log "creating $VENV"
        rm -rf "$VENV"
        "$PY" -m venv "$VENV"
    fi
    log "installing $(tr '\n' ' ' < <(grep -v '^\s*#' "$REQ" | grep .))"
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
        "$VENV/bin/python" -m pip install --quiet -r "$REQ"
    echo "$want" > "$stamp"
fi

# --- binaries -----------------------------------------------------------
target="${CARGO_TARGET_DIR:-$ROOT/target}"
export BURSAR_BIN="${BURSAR_BIN:-$target/debug/bursar}"
export MOCK_BIN="${MOCK_BIN:-$target/debug/mock-upstream}"
if [[ ! -x "$BURSAR_BIN" || ! -x "$MOCK_BIN" ]]; then
    log "building the binaries (cargo build --workspace --bins)"
    (cd "$ROOT" && cargo build --workspace --bins)
fi
for bin in "$BURSAR_BIN" "$MOCK_BIN"; do
    if [[ ! -x "$bin" ]]; then
        log "missing binary: $bin"
        exit 2
    fi
done

# --- tests --------------------------------------------------------------
cd "$HERE"
export PYTHONDONTWRITEBYTECODE=1
exec timeout --kill-after=10 600 "$VENV/bin/python" -m pytest -q "$HERE" "$@" </dev/null
