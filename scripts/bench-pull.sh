#!/usr/bin/env bash
# Pull vs push bytes (issue 13, acceptance 3): after a 1% mutation of the docs corpus,
# what a pull of the new snapshot receives against what the push of it sent.
#
# Usage: scripts/bench-pull.sh [WORK_DIR]      (default /tmp/spbench; the docs corpus is built
#                                              with scripts/bench/make-corpora.sh if missing)
#   For a real `sp-sync serve` on loopback and for a path remote: A snapshots the corpus and
#   pushes it; B pulls it; the corpus is mutated (scripts/bench/mutate.sh 1% seed 42); A
#   snapshots and pushes (`bytes_sent`), then B pulls (`bytes_received`). Prints both and the
#   ratio (want <= 1.2).
#   SP_SYNC=PATH  the binary (default target/release/sp-sync, built if absent)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
WORK="${1:-${SPBENCH_WORK:-/tmp/spbench}}"
SP="${SP_SYNC:-$ROOT/target/release/sp-sync}"
[ -x "$SP" ] || (cd "$ROOT" && cargo build --release)
[ -d "$WORK/pristine/docs" ] || CORPORA=docs "$HERE/bench/make-corpora.sh" "$WORK"
T="$WORK/pull"; rm -rf "$T"; mkdir -p "$T"
export SP_SYNC_CACHE_DIR="$T/cache"
jq_() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

"$SP" serve --listen 127.0.0.1:0 --data "$T/server-data" 2> "$T/serve.log" &
SRV_PID=$!
trap 'kill $SRV_PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    SRV_ADDR="$(sed -n 's/^sp-sync serve: listening on //p' "$T/serve.log")"
    [ -n "$SRV_ADDR" ] && break
    sleep 0.1
done
[ -n "$SRV_ADDR" ] || { echo "server did not start" >&2; exit 1; }
mkdir -p "$T/path-remote" && "$SP" init -q "$T/path-remote"

cp -a "$WORK/pristine/docs" "$T/a"
( cd "$T/a" && "$SP" init -q && "$SP" snapshot -q >/dev/null )
for kind in http path; do
    if [ $kind = http ]; then url="http://$SRV_ADDR/bench"; else url="$T/path-remote/.sp-sync"; fi
    ( cd "$T/a" && "$SP" push "$url" -q )
    mkdir -p "$T/b-$kind" && ( cd "$T/b-$kind" && "$SP" init -q && "$SP" pull "$url" -q )
done
"$HERE/bench/mutate.sh" "$T/a" 1 42 /usr/share/doc
( cd "$T/a" && "$SP" snapshot -q >/dev/null )
for kind in http path; do
    if [ $kind = http ]; then url="http://$SRV_ADDR/bench"; else url="$T/path-remote/.sp-sync"; fi
    push="$(cd "$T/a" && "$SP" push "$url" --json)"
    pull="$(cd "$T/b-$kind" && "$SP" pull "$url" --json)"
    sent="$(echo "$push" | jq_ "['bytes_sent']")"
    recv="$(echo "$pull" | jq_ "['bytes_received']")"
    ( cd "$T/b-$kind" && "$SP" fsck -q )
    python3 - "$kind" "$sent" "$recv" <<'PY'
import sys
kind, sent, recv = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
print(f"{kind}: push sent {sent} B, pull received {recv} B, pull / push = {recv/sent:.3f} (want <= 1.2)")
PY
done
