#!/usr/bin/env bash
# Builds every fuzz target (fuzz/fuzz_targets/*.rs) with libFuzzer's coverage
# instrumentation and runs them, JOBS at a time, from fuzz/seeds/<target> and
# the working corpus fuzz/corpus/<target>. Exits nonzero if any target
# crashes (panics, fails an assertion, times out or runs out of memory);
# libFuzzer leaves the input as fuzz/artifacts/<target>/crash-*. Prints each
# target's executions.
#
#   scripts/fuzz.sh                              # all targets, 20 s each (CI)
#   FUZZ_SECONDS=600 scripts/fuzz.sh pack_stream # one target, longer
#   FUZZ_RUNS=10000000 scripts/fuzz.sh           # long campaign: 10^7 inputs each
#   FUZZ_RUNS=10000000 FUZZ_SECONDS=1800 …       # … or 30 min, whichever first
#   JOBS=1 scripts/fuzz.sh                       # one at a time (default: CPUs)
#   FUZZ_FORK=2 JOBS=1 FUZZ_RUNS=10000000 … store_files
#                                                # one target on 2 processes (libFuzzer
#                                                # -fork; executions are their total)
#   FUZZ_PROFILE=smoke scripts/fuzz.sh           # quick build, coverage of this
#                                                # crate only (CI)
#
# Needs only cargo and a C++ compiler: the instrumentation flags cargo-fuzz
# would pass are passed here directly (no sanitizer: the crate has no
# `unsafe`), so neither cargo-fuzz nor nightly is required.
#
# Two builds. The default (campaigns) instruments every crate, as cargo-fuzz
# does, optimized (the `fuzz` profile), in target/<host>/fuzz. The smoke
# build (CI's 12 s runs) instruments only this project's two crates, through
# scripts/fuzz-rustc.sh, and compiles their dependencies exactly as the test
# build does (the `test` profile, in target/debug), so it reuses them: a
# minute instead of a second build of every dependency. Cargo does not
# record a RUSTC_WRAPPER, so a `cargo build --workspace` of the fuzz crate
# without the script would also count as fresh: build the fuzz targets with
# this script.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
root="$(cd .. && pwd)"

secs="${FUZZ_SECONDS:-20}"
runs="${FUZZ_RUNS:-}"
jobs="${JOBS:-$(nproc)}"
host="$(rustc -vV | sed -n 's/^host: //p')"

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    targets=()
    for f in fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi

bin_args=()
for t in "${targets[@]}"; do bin_args+=(--bin "$t"); done
profile="${FUZZ_PROFILE:-fuzz}"
# The fuzz crate is a member of the root workspace: its target directory.
target_dir="${CARGO_TARGET_DIR:-$root/target}"
# libFuzzer's coverage instrumentation: the flags cargo-fuzz passes.
instrument="--cfg fuzzing -Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares"
if [ "$profile" = smoke ]; then
    # Only this project's crates: the wrapper adds $SP_SYNC_FUZZ_FLAGS to them.
    SP_SYNC_FUZZ_FLAGS="$instrument" RUSTC_WRAPPER="$root/scripts/fuzz-rustc.sh" \
        cargo build --profile test -p systemprompt-sync-fuzz "${bin_args[@]}"
    bindir="$target_dir/debug"
else
    # Build scripts and proc macros are built for the host without these
    # flags because a --target is named.
    export RUSTFLAGS="$instrument -Cdebug-assertions -Coverflow-checks"
    cargo build --profile "$profile" --target "$host" -p systemprompt-sync-fuzz "${bin_args[@]}"
    bindir="$target_dir/$host/$profile"
fi
# FUZZ_BUILD_ONLY=1: build, run nothing (scripts/test.sh builds after the
# test build, then runs the targets after the tests).
[ -z "${FUZZ_BUILD_ONLY:-}" ] || exit 0

logs="$(mktemp -d)"
# Targets that make stores (stored_delta, store_files, restore_table) write
# and fsync files for every input: on a tmpfs an fsync costs nothing.
scratch=""
if [ -z "${FUZZ_TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then
    scratch="$(mktemp -d /dev/shm/sp-fuzz.XXXXXX)"
    export TMPDIR="$scratch"
elif [ -n "${FUZZ_TMPDIR:-}" ]; then
    export TMPDIR="$FUZZ_TMPDIR"
fi
trap 'rm -rf "$logs" ${scratch:+"$scratch"}' EXIT

run_one() {
    local t="$1"
    mkdir -p "corpus/$t" "artifacts/$t"
    local dirs=("corpus/$t")
    [ -d "seeds/$t" ] && dirs+=("seeds/$t")
    # FUZZ_RUNS alone: that many inputs; with FUZZ_SECONDS too, whichever
    # comes first.
    local limit=()
    [ -n "$runs" ] && limit+=(-runs="$runs")
    [ -n "${FUZZ_FORK:-}" ] && limit+=(-fork="$FUZZ_FORK")
    if [ -z "$runs" ] || [ -n "${FUZZ_SECONDS:-}" ]; then limit+=(-max_total_time="$secs"); fi
    if "$bindir/$t" "${dirs[@]}" "${limit[@]}" -timeout=20 -rss_limit_mb=2048 \
        -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"$logs/$t" 2>&1; then
        local n
        n="$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$t")"
        # -fork prints no final stats: its status lines count every worker's inputs.
        [ -n "$n" ] || n="$(sed -n 's/^#\([0-9][0-9]*\): .*/\1/p' "$logs/$t" | tail -n 1)"
        echo "ok    $t: ${n:-?} executions"
    else
        # The whole log stays beside the input (a panic's message comes
        # long before libFuzzer's last lines, and -fork workers' logs go).
        cp "$logs/$t" "artifacts/$t/crash-$(date +%Y%m%dT%H%M%S).log"
        grep -a -m 3 -A 1 "panicked at" "$logs/$t" || true
        tail -n 40 "$logs/$t"
        echo "CRASH $t (input and log in fuzz/artifacts/$t/)"
        touch "$logs/$t.failed"
    fi
}

running=0
for t in "${targets[@]}"; do
    run_one "$t" &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
        wait -n || true
        running=$((running - 1))
    fi
done
wait

failed=()
for t in "${targets[@]}"; do
    [ -e "$logs/$t.failed" ] && failed+=("$t")
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: crashes in: ${failed[*]}" >&2
    exit 1
fi
if [ -n "$runs" ]; then
    echo "fuzz: ${#targets[@]} targets, $runs inputs each, no crash"
else
    echo "fuzz: ${#targets[@]} targets, ${secs}s each, no crash"
fi
