#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit + property + integration tests
# (through the real binary), doc tests, and a compile check of the fuzz targets.
# Usage: scripts/test.sh            (from anywhere; needs a Rust toolchain)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*" >&2; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --no-fail-fast
    step "doc tests"
    cargo test --doc
else
    cargo test --no-fail-fast
fi

if [ -f fuzz/Cargo.toml ]; then
    step "fuzz targets compile"
    cargo check --manifest-path fuzz/Cargo.toml --bins
fi

step "benches compile"
cargo bench --no-run >/dev/null

echo "all tests passed" >&2
