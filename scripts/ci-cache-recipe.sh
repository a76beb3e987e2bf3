#!/usr/bin/env bash
# Runs the README's GitHub Actions cache recipe — the same commands, in the
# same order — three times against a local path remote, as three CI runs:
#   1. a cold cache: restore misses (cache-hit=false), the build runs, save;
#   2. the same Cargo.lock on a fresh runner: an exact hit (cache-hit=true),
#      target/ comes back byte for byte, the save step is skipped;
#   3. Cargo.lock changed: a partial hit through --restore-key (cache-hit=false),
#      the build runs on top of it, save under the new key.
# Usage: scripts/ci-cache-recipe.sh      (SP_SYNC=path/to/sp-sync to choose the binary)
set -euo pipefail
cd "$(dirname "$0")/.."
SP_SYNC="${SP_SYNC:-$PWD/target/debug/sp-sync}"
[ -x "$SP_SYNC" ] || SP_SYNC="$(command -v sp-sync)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export SP_SYNC_CACHE_REMOTE="$WORK/remote"
RUNNER_OS=Linux

fail() { echo "ci-cache-recipe: $*" >&2; exit 1; }

# One CI run in a fresh checkout ($1) on a fresh runner (its own local cache
# store and output file). $2: the Cargo.lock content. Prints the step output.
ci_run() {
    local dir="$WORK/$1"
    mkdir -p "$dir"
    printf '%s\n' "$2" > "$dir/Cargo.lock"
    export GITHUB_OUTPUT="$WORK/$1.output"
    export SP_SYNC_CACHE_STORE="$WORK/$1.local-store"
    : > "$GITHUB_OUTPUT"
    (
        cd "$dir"
        # What hashFiles('Cargo.lock') gives in the workflow.
        LOCK_HASH="$(sha256sum Cargo.lock | cut -c1-64)"
        KEY="cargo-$RUNNER_OS-$LOCK_HASH"
        # --- step: restore (the recipe) ---
        "$SP_SYNC" cache restore "$KEY" target --restore-key "cargo-$RUNNER_OS-" 2> "$WORK/$1.restore.log"
        # --- step: build (stands in for cargo build: output depends on Cargo.lock) ---
        mkdir -p target/debug/deps
        [ -f target/debug/deps/libdep.rlib ] || head -c 3000000 /dev/urandom > target/debug/deps/libdep.rlib
        cp Cargo.lock target/debug/lock-copy
        # --- step: save, when the key was not an exact hit (the recipe) ---
        if ! grep -qx 'cache-hit=true' "$GITHUB_OUTPUT"; then
            "$SP_SYNC" cache save "$KEY" target 2> "$WORK/$1.save.log"
        fi
    )
}

ci_run run1 'lock v1'
grep -q 'cache miss' "$WORK/run1.restore.log" || fail "run 1: expected a miss: $(cat "$WORK/run1.restore.log")"
[ "$(cat "$WORK/run1.output")" = "cache-hit=false" ] || fail "run 1: $(cat "$WORK/run1.output")"
grep -q '^saved ' "$WORK/run1.save.log" || fail "run 1: not saved: $(cat "$WORK/run1.save.log")"

ci_run run2 'lock v1'
grep -q 'cache hit' "$WORK/run2.restore.log" || fail "run 2: expected a hit: $(cat "$WORK/run2.restore.log")"
[ "$(cat "$WORK/run2.output")" = "cache-hit=true" ] || fail "run 2: $(cat "$WORK/run2.output")"
[ ! -e "$WORK/run2.save.log" ] || fail "run 2: saved after an exact hit"
cmp "$WORK/run1/target/debug/deps/libdep.rlib" "$WORK/run2/target/debug/deps/libdep.rlib" \
    || fail "run 2: target/ did not come back"

ci_run run3 'lock v2'
grep -q 'cache partial hit' "$WORK/run3.restore.log" || fail "run 3: expected a partial hit: $(cat "$WORK/run3.restore.log")"
[ "$(cat "$WORK/run3.output")" = "cache-hit=false" ] || fail "run 3: $(cat "$WORK/run3.output")"
cmp "$WORK/run1/target/debug/deps/libdep.rlib" "$WORK/run3/target/debug/deps/libdep.rlib" \
    || fail "run 3: the partial hit did not bring target/"
grep -q '^saved ' "$WORK/run3.save.log" || fail "run 3: not saved: $(cat "$WORK/run3.save.log")"
[ "$("$SP_SYNC" cache list | wc -l)" = 2 ] || fail "expected two entries: $("$SP_SYNC" cache list)"

echo "ci-cache-recipe: miss, hit and partial hit as the recipe expects" >&2
