#!/usr/bin/env bash
# The corruption harness (tests/it/corruption.rs) at full strength: N random
# byte flips, truncations and deletions of store files (default 1,000), each
# on a fresh copy of a store holding every kind of object (chunks, lists,
# trees, tables, row maps, a dictionary, stored deltas), each required to be
# detected by `fsck --read-data` and never to turn into wrong output with
# exit 0 from restore (files and database), diff, ls or cat. Prints the
# counts and every failure; exits nonzero on any.
#
#   scripts/corruption-harness.sh           # 1,000
#   SP_SYNC_CORRUPTION_SEED=123 scripts/corruption-harness.sh 200
set -euo pipefail
cd "$(dirname "$0")/.."

# Pin this checkout's binary: checkouts of this crate that build into one
# shared target directory get the same artifact names (cargo's unit hashes
# do not depend on the checkout's path), so another checkout's build can
# replace target/debug/sp-sync (and the library it links) while a campaign
# runs, and cargo's mtime check can even take another checkout's library as
# fresh. Touching every source makes this checkout's sources the newest;
# the binary built from them is copied and the copy is tested.
pin_binary() {
    find src -name '*.rs' -exec touch {} +
    cargo test --no-run --test "$1" >/dev/null 2>&1 || cargo test --no-run --test "$1"
    local exe="${CARGO_TARGET_DIR:-target}/debug/sp-sync"
    local pinned
    pinned="$(mktemp -d)/sp-sync"
    cp "$exe" "$pinned"
    export SP_SYNC_TEST_BIN="$pinned"
    echo "testing the binary $pinned (a copy of this checkout's $exe)" >&2
}
pin_binary it

n="${1:-1000}"
log="${CARGO_TARGET_DIR:-target}/corruption-harness.log"
mkdir -p "$(dirname "$log")"
set +e
SP_SYNC_CORRUPTIONS="$n" cargo nextest run --test it corruption:: --no-capture 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
echo
echo "summary (full log: $log):"
grep -E '^corruption-harness: ' "$log" || true
exit "$rc"
