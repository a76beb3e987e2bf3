#!/usr/bin/env bash
# The crash harness (tests/it/crash_all.rs) at full strength: SIGKILL at random
# moments of snapshot, gc, gc --repack, push and pull (a path remote and a
# real `sp-sync serve`), bundle import, cache save and restore --db (SQLite,
# and PostgreSQL when it is installed), KILLS kills in total (default 200)
# spread evenly over the commands, with every invariant checked after each
# kill. Prints one line per command (kills landed, runs that finished before
# the kill, invariant checks) and exits nonzero on any violation.
#
#   scripts/crash-harness.sh            # 200 kills
#   scripts/crash-harness.sh 500        # more
#   SP_SYNC_CRASH_SEED=123 scripts/crash-harness.sh   # replay a seed
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

total="${1:-200}"
commands=10
if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    commands=11
fi
per=$(( (total + commands - 1) / commands ))
echo "crash-harness: $total kills over $commands commands: $per each" >&2
log="${CARGO_TARGET_DIR:-target}/crash-harness.log"
mkdir -p "$(dirname "$log")"
set +e
SP_SYNC_CRASH_KILLS="$per" cargo nextest run --test it crash_all:: --no-capture \
    --test-threads "${TEST_THREADS:-2}" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
echo
echo "summary (full log: $log):"
grep -E '^crash-harness: .*(kills landed|SKIPPED)' "$log" || true
landed=$(grep -oE '[0-9]+ kills landed' "$log" | awk '{s += $1} END {print s + 0}')
echo "total kills landed: $landed; exit status of the tests: $rc"
exit "$rc"
