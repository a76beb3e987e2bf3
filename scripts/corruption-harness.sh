#!/usr/bin/env bash
# The corruption harness (tests/corruption.rs) at full strength: N random
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

n="${1:-1000}"
log="${CARGO_TARGET_DIR:-target}/corruption-harness.log"
mkdir -p "$(dirname "$log")"
set +e
SP_SYNC_CORRUPTIONS="$n" cargo nextest run --test corruption --no-capture 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
echo
echo "summary (full log: $log):"
grep -E '^corruption-harness: ' "$log" || true
exit "$rc"
