#!/usr/bin/env bash
# Bundle figures (issue 10, acceptance 2): a ~1 GiB bundle is created and
# imported with peak RSS under 200 MiB.
#
# Usage: scripts/bench-bundle.sh [WORK_DIR]     (default /tmp/spbench-bundle; removed first)
#   Generates SIZE_MB (default 1088) MiB of incompressible-ish data (random
#   bytes, a quarter of the files with runs of text in them), snapshots it,
#   then under /usr/bin/time -v: `bundle create`, `bundle verify` (outside a
#   store), `bundle import` into a new store, and checks the import by
#   restoring and comparing checksums. Prints elapsed time and peak RSS for
#   each, and FAILS (exit 1) if create or import peaks at 200 MiB or more.
# Knobs: SIZE_MB=1088 (a bundle a little over 1 GiB)  SP_SYNC=path/to/sp-sync (default target/release/sp-sync,
#   built if missing)  KEEP=1 (keep WORK_DIR)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
WORK="${1:-/tmp/spbench-bundle}"
SIZE_MB="${SIZE_MB:-1088}"
LIMIT_KB=$((200 * 1024))
SP="${SP_SYNC:-$ROOT/target/release/sp-sync}"
[ -x "$SP" ] || (cd "$ROOT" && cargo build --release)
[ -x /usr/bin/time ] || { echo "/usr/bin/time is required (apt-get install time)" >&2; exit 2; }
rm -rf "$WORK"; mkdir -p "$WORK/data" "$WORK/a" "$WORK/b" "$WORK/elsewhere"
export SP_SYNC_CACHE_DIR="$WORK/cache"

echo "== generating $SIZE_MB MiB in $WORK/data"
files=$(( (SIZE_MB + 63) / 64 ))
for i in $(seq 1 "$files"); do
    if [ $((i % 4)) -eq 0 ]; then
        # random blocks with text runs between them: compresses a little
        python3 - "$WORK/data/f$i.bin" <<'PY'
import os, sys
with open(sys.argv[1], "wb") as f:
    left = 64 << 20
    while left > 0:
        n = min(left, 48 << 10)
        f.write(os.urandom(n)); left -= n
        t = min(left, 16 << 10)
        f.write((b"the quick brown fox %d\n" % left) * (t // 24) + b"x" * (t % 24)); left -= t
PY
    else
        head -c $((64 << 20)) /dev/urandom > "$WORK/data/f$i.bin"
    fi
done
du -sh "$WORK/data"

measure() { # NAME CMD... : runs CMD under time -v in the current directory
    local name="$1"; shift
    /usr/bin/time -v -o "$WORK/$name.time" "$@" > "$WORK/$name.out" 2> "$WORK/$name.err" || {
        echo "$name failed:"; cat "$WORK/$name.err"; exit 1; }
    local rss el
    rss=$(sed -n 's/^[[:space:]]*Maximum resident set size (kbytes): //p' "$WORK/$name.time")
    el=$(sed -n 's/^[[:space:]]*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$WORK/$name.time")
    printf '%-10s elapsed %-9s peak RSS %6d KiB (%d MiB)\n' "$name" "$el" "$rss" $((rss / 1024))
    eval "RSS_$name=$rss"
}

cd "$WORK/a"
"$SP" init -q
measure snapshot "$SP" snapshot "$WORK/data" -q
measure create "$SP" bundle create "$WORK/x.bundle" --json
bsize=$(stat -c %s "$WORK/x.bundle")
echo "bundle: $bsize bytes ($((bsize >> 20)) MiB)"
cd "$WORK/elsewhere"
measure verify "$SP" bundle verify "$WORK/x.bundle"
cd "$WORK/b"
"$SP" init -q
measure import "$SP" bundle import "$WORK/x.bundle" --json
"$SP" fsck -q
"$SP" restore main "$WORK/restored" -q
(cd "$WORK/data" && sha256sum -- *) > "$WORK/sums"
(cd "$WORK/restored" && sha256sum -c --quiet "$WORK/sums")
echo "restored from the importing store: identical"
status=0
for n in create import; do
    v="RSS_$n"
    if [ "${!v}" -ge "$LIMIT_KB" ]; then echo "FAIL: $n peaked at ${!v} KiB (limit $LIMIT_KB)"; status=1; fi
done
[ "$status" -eq 0 ] && echo "OK: create and import stayed under 200 MiB"
[ -n "${KEEP:-}" ] || rm -rf "$WORK"
exit "$status"
