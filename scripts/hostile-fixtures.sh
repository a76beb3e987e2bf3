#!/usr/bin/env bash
# Builds the hostile-fixture folder: hand-made stores and bundles (path
# traversal, symlink tricks, duplicate names, cycles, wrong types under an
# id, oversized lengths, zstd bombs, cut and padded bundles) that every
# sp-sync command must refuse. Each fixture is OUT/<name>/ with a README
# line and `store/` or `bundle.spb`. tests/it/hostile_fixtures.rs builds the
# same folder and checks every command refuses every fixture.
#
#   scripts/hostile-fixtures.sh [OUT]     # default target/hostile-fixtures
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-target/hostile-fixtures}"
rm -rf "$out"
cargo run --quiet --example hostile_fixtures -- "$out"
