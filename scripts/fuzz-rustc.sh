#!/bin/sh
# RUSTC_WRAPPER for scripts/fuzz.sh's quick build (FUZZ_PROFILE=smoke): adds
# the instrumentation flags fuzz.sh passes in SP_SYNC_FUZZ_FLAGS to this
# project's two crates only. Their dependencies are compiled exactly as the
# test build compiles them, so that build's artifacts serve both.
rustc="$1"
shift
case "${CARGO_PKG_NAME:-}" in
systemprompt-sync | systemprompt-sync-fuzz)
    # shellcheck disable=SC2086 # the flags are words
    exec "$rustc" "$@" ${SP_SYNC_FUZZ_FLAGS:?set by scripts/fuzz.sh}
    ;;
*) exec "$rustc" "$@" ;;
esac
