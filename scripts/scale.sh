#!/usr/bin/env bash
# Scale figures (issue 14): for each N (default 10^6 and 10^7) a synthetic
# store of N small distinct files (examples/scale.rs: N chunk objects and
# ~N/1000 trees, one snapshot on `main`), then:
#   open     `sp-sync log` (opens the store: loads every index) — time, peak RSS
#   push     `next` (one more file, written after the copy) to a real
#            `sp-sync serve` on loopback whose tenant store is a copy holding
#            `main`: time, objects, requests, bytes sent
#   fsck     `fsck` (structure, from the refs) and `fsck --read-data`
#   gc       `gc` (nothing to drop: the work is the mark and sweep)
# Prints one table line per measurement (seconds, peak RSS in MiB).
#
#   scripts/scale.sh [WORK_DIR]            (default /tmp/sp-scale)
#   SIZES="1000000" scripts/scale.sh        just 10^6
#   SP_SYNC_BIN=path                        an already built binary
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${1:-/tmp/sp-scale}"
SIZES="${SIZES:-1000000 10000000}"
cd "$ROOT"
cargo build --release --quiet --example scale
[ -n "${SP_SYNC_BIN:-}" ] || cargo build --release --quiet
SP="${SP_SYNC_BIN:-$ROOT/target/release/sp-sync}"
GEN="$ROOT/target/release/examples/scale"
mkdir -p "$WORK"
export SP_SYNC_CACHE_DIR="$WORK/cache"

# `measure NAME CMD…`: wall seconds and peak RSS of one run.
measure() {
    local name="$1"; shift
    if ! /usr/bin/time -f '%e %M' "$@" >"$WORK/last.out" 2>"$WORK/last.err"; then
        cat "$WORK/last.err" >&2; echo "$name failed" >&2; exit 1
    fi
    # /usr/bin/time's line comes last on stderr.
    read -r secs kb < <(tail -1 "$WORK/last.err")
    python3 -c "import sys; print(f'{sys.argv[1]:<10} {sys.argv[2]:<22} {float(sys.argv[3]):9.2f} s {int(sys.argv[4])/1024:8.1f} MiB')" \
        "$N" "$name" "$secs" "$kb"
}

printf '%-10s %-22s %11s %12s\n' objects measurement time peak-RSS
for N in $SIZES; do
    S="$WORK/store-$N"
    rm -rf "$S" "$WORK/data-$N"
    measure "write (library)" "$GEN" "$S" "$N"
    python3 - "$N" "$S" <<'PY'
import os, sys
n, s = int(sys.argv[1]), sys.argv[2]
tot = idx = 0
for d, _, fs in os.walk(s):
    for f in fs:
        b = os.path.getsize(os.path.join(d, f))
        tot += b
        idx += b if f.endswith(".idx") else 0
print(f"{n:<10} {'store size':<22} {tot/2**20:9.1f} MiB   indexes {idx/2**20:.1f} MiB ({idx/n:.1f} B/object)")
PY
    measure "open (log)" "$SP" --store "$S" log -n 1 -q
    measure "fsck" "$SP" --store "$S" fsck -q
    measure "fsck --read-data" "$SP" --store "$S" fsck --read-data -q
    measure "gc" "$SP" --store "$S" gc -q

    # Push of a one-file change to a server that holds everything else.
    mkdir -p "$WORK/data-$N"
    cp -a "$S" "$WORK/data-$N/t"
    "$GEN" "$S" next > /dev/null
    "$SP" serve --listen 127.0.0.1:0 --data "$WORK/data-$N" 2>"$WORK/serve.log" &
    srv=$!
    addr=""
    for _ in $(seq 200); do
        addr="$(sed -n 's/^sp-sync serve: listening on //p' "$WORK/serve.log")"
        [ -n "$addr" ] && break
        sleep 0.1
    done
    [ -n "$addr" ] || { echo "server did not start" >&2; kill $srv; exit 1; }
    measure "push (1 new file)" "$SP" --store "$S" push "http://$addr/t" next --json
    python3 - "$N" "$WORK/last.out" <<'PY'
import json, sys
r = json.load(open(sys.argv[2]))
t = r.get("traffic", r)
print(f"{sys.argv[1]:<10} {'push traffic':<22} {r['objects_sent']} objects, {r['requests']} requests, "
      f"{r['bytes_sent']} B sent")
PY
    kill $srv 2>/dev/null || true
    wait $srv 2>/dev/null || true
    [ -n "${KEEP:-}" ] || rm -rf "$S" "$WORK/data-$N"
done
