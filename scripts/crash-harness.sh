#!/usr/bin/env bash
# The crash harness (tests/crash_all.rs) at full strength: SIGKILL at random
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
SP_SYNC_CRASH_KILLS="$per" cargo nextest run --test crash_all --no-capture \
    --test-threads "${TEST_THREADS:-2}" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
echo
echo "summary (full log: $log):"
grep -E '^crash-harness: .*(kills landed|SKIPPED)' "$log" || true
landed=$(grep -oE '[0-9]+ kills landed' "$log" | awk '{s += $1} END {print s + 0}')
echo "total kills landed: $landed; exit status of the tests: $rc"
exit "$rc"
