#!/usr/bin/env bash
# Load test of `sp-sync serve` (issue 14): one server on loopback, CLIENTS concurrent clients
# pushing and pulling for DURATION seconds, each with its own ref and some shared refs
# (a contended update is refused or succeeds, never lost). The driver is examples/load.rs
# (threads using the library's public API; the logic is tests/it/load/driver.rs, which
# tests/it/load.rs also runs for 5 s in CI).
#
# Usage: scripts/load-test.sh [--json]
# Knobs (environment): CLIENTS=64 DURATION=60 SHARED=4 MAX_FILE=262144 (bytes of the
#   largest file a push writes) SEED=... WORK=DIR (default: a temporary folder)
#   SP_SYNC_BIN=PATH: the server binary to test (unset: `cargo build --release` builds it).
# Prints operations, ops/s, MB/s, p50/p99 latency per kind (push, push-shared, pull),
# errors and lost updates; exits 1 when there were errors or lost updates.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
if [ -z "${SP_SYNC_BIN:-}" ]; then
    cargo build --release --bin sp-sync
    SP_SYNC_BIN="$TARGET/release/sp-sync"
fi
cargo build --release --example load
[ -x "$SP_SYNC_BIN" ] || { echo "error: $SP_SYNC_BIN is not an executable" >&2; exit 1; }
args=(--bin "$SP_SYNC_BIN" --clients "${CLIENTS:-64}" --duration "${DURATION:-60}"
      --shared "${SHARED:-4}" --max-file "${MAX_FILE:-262144}")
[ -n "${SEED:-}" ] && args+=(--seed "$SEED")
[ -n "${WORK:-}" ] && args+=(--work "$WORK")
# Each client holds a store and a connection: leave room for 64 of them.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec "$TARGET/release/examples/load" "${args[@]}" "$@"
