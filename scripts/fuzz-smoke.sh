#!/usr/bin/env bash
# Builds every fuzz target and runs each for FUZZ_SECONDS (default 10)
# seconds, starting from fuzz/seeds/<target> and the working corpus
# fuzz/corpus/<target>. Exits nonzero if any target crashes (panics, fails
# an assertion, times out or runs out of memory); libFuzzer leaves the
# input under fuzz/artifacts/<target>/.
#
#   scripts/fuzz-smoke.sh                 # all targets, 10 s each
#   FUZZ_SECONDS=60 scripts/fuzz-smoke.sh pack_stream unpack
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
set -euo pipefail

cd "$(dirname "$0")/../fuzz"
secs="${FUZZ_SECONDS:-10}"
toolchain="${FUZZ_TOOLCHAIN:-nightly}"

if ! cargo +"$toolchain" fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: needs cargo-fuzz and a $toolchain toolchain" >&2
    echo "  rustup toolchain install $toolchain && cargo install cargo-fuzz" >&2
    exit 2
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +"$toolchain" fuzz list)
fi

if [ "${#targets[@]}" -eq 1 ]; then
    cargo +"$toolchain" fuzz build "${targets[0]}"
else
    cargo +"$toolchain" fuzz build
fi

failed=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    dirs=("corpus/$t")
    [ -d "seeds/$t" ] && dirs+=("seeds/$t")
    echo "=== $t: ${secs}s"
    log="$(mktemp)"
    if cargo +"$toolchain" fuzz run "$t" "${dirs[@]}" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1; then
        grep -E '^stat::number_of_executed_units|^Done ' "$log" || true
    else
        cat "$log"
        echo "=== $t: CRASH (see fuzz/artifacts/$t/)" >&2
        failed+=("$t")
    fi
    rm -f "$log"
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz-smoke: crashes in: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz-smoke: ${#targets[@]} targets, ${secs}s each, no crash"
