#!/bin/sh
# RUSTC_WRAPPER for scripts/fuzz.sh's quick build (FUZZ_PROFILE=smoke): adds
# libFuzzer's coverage instrumentation (the flags cargo-fuzz passes) to this
# project's two crates only. Their dependencies are compiled exactly as the
# test build compiles them, so that build's artifacts serve both.
rustc="$1"
shift
case "${CARGO_PKG_NAME:-}" in
systemprompt-sync | systemprompt-sync-fuzz)
    exec "$rustc" "$@" --cfg fuzzing -Cpasses=sancov-module \
        -Cllvm-args=-sanitizer-coverage-level=4 \
        -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
        -Cllvm-args=-sanitizer-coverage-pc-table \
        -Cllvm-args=-sanitizer-coverage-trace-compares
    ;;
*) exec "$rustc" "$@" ;;
esac
