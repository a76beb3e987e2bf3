#!/usr/bin/env bash
# Transfer figures for push/pull (issue 4), on the corpora of bench-peers.sh.
#
# Usage: scripts/bench-transfer.sh [WORK_DIR]      (default /tmp/spbench; corpora built if missing)
#   1. docs: push the corpus to a real `sp-sync serve` on loopback, mutate 1% (seed 42),
#      snapshot, push again: bytes the push sent vs the compressed size of the new objects
#      (+64 KiB allowance) and vs `rsync -az --stats` for the same change; HTTP requests.
#   2. bin: first push over loopback vs a local snapshot of the same corpus (speed ratio).
#   3. server memory: peak RSS of `sp-sync serve` while receiving a push of BIG_MB
#      (default 2048) MiB of incompressible data.
# Knobs: BIG_MB=2048  SKIP_BIG=1
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
WORK="${1:-${SPBENCH_WORK:-/tmp/spbench}}"
BIG_MB="${BIG_MB:-2048}"
SP="${SP_SYNC:-$ROOT/target/release/sp-sync}"
[ -x "$SP" ] || (cd "$ROOT" && cargo build --release)
command -v rsync >/dev/null || { echo "rsync is required (apt-get install rsync)" >&2; exit 2; }
for c in docs bin; do
    [ -d "$WORK/pristine/$c" ] || CORPORA="$c" "$HERE/bench/make-corpora.sh" "$WORK"
done
T="$WORK/transfer"; rm -rf "$T"; mkdir -p "$T"
export SP_SYNC_CACHE_DIR="$T/cache"
jq_() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

start_server() { # DATA -> sets SRV_PID, SRV_ADDR
    "$SP" serve --listen 127.0.0.1:0 --data "$1" 2> "$T/serve.log" &
    SRV_PID=$!
    for _ in $(seq 100); do
        SRV_ADDR="$(sed -n 's/^sp-sync serve: listening on //p' "$T/serve.log")"
        [ -n "$SRV_ADDR" ] && return 0
        sleep 0.1
    done
    echo "server did not start" >&2; exit 1
}

echo "== 1. docs: incremental push after mutate 1% vs new objects and rsync -az"
rsync -a --delete "$WORK/pristine/docs/" "$T/docs/"
rsync -a --delete "$WORK/pristine/docs/" "$T/rsync-dst/"
start_server "$T/server-data"
( cd "$T/docs" && "$SP" init -q && "$SP" snapshot -q >/dev/null && "$SP" push "http://$SRV_ADDR/bench" -q )
"$HERE/bench/mutate.sh" "$T/docs" 1 42 /usr/share/doc
snap="$(cd "$T/docs" && "$SP" snapshot --json)"
new_bytes="$(echo "$snap" | jq_ "['new_bytes']")"
push="$(cd "$T/docs" && "$SP" push "http://$SRV_ADDR/bench" --json)"
sent="$(echo "$push" | jq_ "['bytes_sent']")"
reqs="$(echo "$push" | jq_ "['requests']")"
objs="$(echo "$push" | jq_ "['objects_sent']")"
rs="$(rsync -az --stats --exclude=.sp-sync "$T/docs/" "$T/rsync-dst/" | sed -n 's/^Total bytes sent: //p' | tr -d ',')"
kill "$SRV_PID"; wait "$SRV_PID" 2>/dev/null || true
python3 - "$sent" "$new_bytes" "$rs" "$reqs" "$objs" <<'PY'
import sys
sent, new, rs, reqs, objs = map(int, sys.argv[1:])
allow = 1.2 * new + 65536
print(f"push sent {sent} B ({objs} objects, {reqs} HTTP requests); new objects (compressed) {new} B")
print(f"  sent / (1.2 x new + 64 KiB) = {sent/allow:.3f}   (must be <= 1)")
print(f"  sent / rsync -az bytes sent ({rs} B) = {sent/rs:.3f}   (must be <= 1)")
PY

echo "== 2. bin: first push over loopback vs local snapshot"
rsync -a --delete "$WORK/pristine/bin/" "$T/bin/"
find "$T/bin" -type f -print0 | xargs -0 cat > /dev/null
"$SP" init --store "$T/bin-local" -q
t0=$(date +%s.%N); "$SP" snapshot "$T/bin" --store "$T/bin-local" -q --no-cache >/dev/null; t1=$(date +%s.%N)
start_server "$T/server-bin"
t2=$(date +%s.%N); "$SP" push "http://$SRV_ADDR/bin" --store "$T/bin-local" -q; t3=$(date +%s.%N)
kill "$SRV_PID"; wait "$SRV_PID" 2>/dev/null || true
python3 - "$t0" "$t1" "$t2" "$t3" "$(du -sb "$T/bin" | cut -f1)" <<'PY'
import sys
t0, t1, t2, t3, n = map(float, sys.argv[1:])
snap, push = t1 - t0, t3 - t2
print(f"local snapshot {snap:.2f}s ({n/snap/1e6:.0f} MB/s), first push {push:.2f}s ({n/push/1e6:.0f} MB/s)")
print(f"  push speed / snapshot speed = {snap/push:.2f}   (must be >= 0.7)")
PY

if [ "${SKIP_BIG:-0}" != 1 ]; then
    echo "== 3. server memory while receiving a ${BIG_MB} MiB push"
    mkdir -p "$T/big"
    python3 - "$T/big" "$BIG_MB" <<'PY'
import os, sys
d, mb = sys.argv[1], int(sys.argv[2])
for i in range(mb // 8):
    with open(os.path.join(d, f"f{i:05}.bin"), "wb") as f:
        f.write(os.urandom(8 << 20))
PY
    "$SP" init --store "$T/big-local" -q
    "$SP" snapshot "$T/big" --store "$T/big-local" -q >/dev/null
    rm -rf "$T/big"
    start_server "$T/server-big"
    "$SP" push "http://$SRV_ADDR/big" --store "$T/big-local" -q
    rss="$(grep VmHWM /proc/"$SRV_PID"/status | awk '{print $2}')"
    kill "$SRV_PID"; wait "$SRV_PID" 2>/dev/null || true
    echo "server peak RSS while receiving ${BIG_MB} MiB: $((rss / 1024)) MiB   (must be < 200)"
    rm -rf "$T/big-local" "$T/server-big"
fi
