#!/usr/bin/env bash
# The cache on a real corpus: this project's own target/ after a build.
#
#   1. a copy of the project (git archive HEAD) is built: `cargo build --bin sp-sync`
#      (CARGO_INCREMENTAL=0, as CI setups usually have it), its target/ seeded with
#      this checkout's target/debug less incremental/ (BENCH_SEED=0: from scratch)
#      — that target/ is the corpus;
#   2. `sp-sync cache save k1 target` into a path remote;
#   3. a one-line source change (src/lib.rs), rebuild, `sp-sync cache save k2 target`:
#      bytes uploaded, against `tar -cf - target | zstd -3` (what actions/cache uploads);
#   4. onto a copy of the old target/ (after step 2): `sp-sync cache restore k2`, against
#      `zstd -dc target.tar.zst | tar -xf -` onto another copy of the old target/;
#      the restore is timed with this machine's local cache store (warm: a self-hosted
#      runner) and with an empty one (everything fetched from the remote first).
# Both results are checked identical to the rebuilt target/.
#
# Usage: scripts/bench-cache.sh [WORKDIR]     (default: a new temporary directory, kept)
#   SP_SYNC=path/to/sp-sync (default: target/release/sp-sync, else target/debug/sp-sync)
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${1:-$(mktemp -d /tmp/bench-cache.XXXXXX)}"
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
SP_SYNC="${SP_SYNC:-}"
if [ -z "$SP_SYNC" ]; then
    for c in "$REPO/target/release/sp-sync" "$REPO/target/debug/sp-sync"; do
        [ -x "$c" ] && { SP_SYNC="$c"; break; }
    done
fi
[ -x "$SP_SYNC" ] || { echo "bench-cache: build sp-sync first (cargo build --release)" >&2; exit 1; }
export CARGO_INCREMENTAL=0
export SP_SYNC_CACHE_STORE="$WORK/local-store"
REMOTE="$WORK/remote"
say() { printf 'bench-cache: %s\n' "$*" >&2; }
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }

PROJ="$WORK/proj"
if [ ! -d "$PROJ/target/debug" ]; then
    rm -rf "$PROJ"
    mkdir -p "$PROJ"
    git -C "$REPO" archive HEAD | tar -xf - -C "$PROJ"
    # Seed with this checkout's debug target/ (less incremental/, which
    # CARGO_INCREMENTAL=0 does not use): dependencies are not rebuilt, so
    # the corpus is what that target/ holds (BENCH_SEED=0: build from scratch).
    if [ "${BENCH_SEED:-1}" = 1 ] && [ -d "$REPO/target/debug/deps" ]; then
        mkdir -p "$PROJ/target/debug"
        for d in build deps .fingerprint; do
            cp -a "$REPO/target/debug/$d" "$PROJ/target/debug/$d"
        done
        cp -a "$REPO/target/CACHEDIR.TAG" "$PROJ/target/" 2>/dev/null || true
    fi
    say "building the project copy (the corpus) in $PROJ"
    (cd "$PROJ" && cargo build --bin sp-sync --quiet)
fi
cd "$PROJ"
say "corpus: $PROJ/target, $(du -sh target | cut -f1), $(find target -type f | wc -l) files"

rm -rf "$REMOTE" "$SP_SYNC_CACHE_STORE" "$WORK/old-a" "$WORK/old-b" "$WORK/old-c"
t0=$(now)
"$SP_SYNC" cache save k1 target --remote "$REMOTE" --json > "$WORK/save1.json"
t1=$(now)
say "save k1: $(secs "$t0" "$t1")s"
# Three copies of the old target/ to restore onto.
for d in old-a old-b old-c; do
    mkdir -p "$WORK/$d"
    cp -a target "$WORK/$d/target"
done

# A one-line change, and the rebuild.
echo "/// bench-cache: a one-line change ($(date +%s%N))." >> src/lib.rs
echo "pub const BENCH_CACHE_MARK: u32 = 1;" >> src/lib.rs
t0=$(now)
cargo build --bin sp-sync --quiet
t1=$(now)
say "rebuild after a one-line change: $(secs "$t0" "$t1")s"

t0=$(now)
"$SP_SYNC" cache save k2 target --remote "$REMOTE" --json > "$WORK/save2.json"
t1=$(now)
SAVE2=$(secs "$t0" "$t1")

t0=$(now)
tar -cf - target | zstd -3 -q -T1 > "$WORK/target.tar.zst"
t1=$(now)
TARZ=$(stat -c %s "$WORK/target.tar.zst")
TAR_CREATE=$(secs "$t0" "$t1")

# Restores onto the old target/.
cd "$WORK/old-a"
t0=$(now)
"$SP_SYNC" cache restore k2 --remote "$REMOTE" --json > "$WORK/restore-warm.json"
t1=$(now)
RESTORE_WARM=$(secs "$t0" "$t1")

cd "$WORK/old-b"
t0=$(now)
SP_SYNC_CACHE_STORE="$WORK/empty-local-store" "$SP_SYNC" cache restore k2 --remote "$REMOTE" --json > "$WORK/restore-cold.json"
t1=$(now)
RESTORE_COLD=$(secs "$t0" "$t1")
rm -rf "$WORK/empty-local-store"

cd "$WORK/old-c"
t0=$(now)
zstd -dc -q "$WORK/target.tar.zst" | tar -xf -
t1=$(now)
TAR_EXTRACT=$(secs "$t0" "$t1")

for d in old-a old-b old-c; do
    diff -r "$PROJ/target" "$WORK/$d/target" > /dev/null || { say "$d/target differs from the rebuilt target/"; exit 1; }
done

python3 - "$WORK" "$TARZ" "$SAVE2" "$TAR_CREATE" "$RESTORE_WARM" "$RESTORE_COLD" "$TAR_EXTRACT" <<'PY'
import json, sys
work, tarz, save2, tar_create, rw, rc, tx = sys.argv[1], int(sys.argv[2]), *map(float, sys.argv[3:])
s1 = json.load(open(f"{work}/save1.json")); s2 = json.load(open(f"{work}/save2.json"))
w = json.load(open(f"{work}/restore-warm.json")); c = json.load(open(f"{work}/restore-cold.json"))
up = s2["bytes_sent"]
print(f"corpus: {s2['files']} files, {s2['bytes']/2**20:.1f} MiB (target/ after the rebuild)")
print(f"save k1: {s1['bytes_sent']/2**20:.1f} MiB sent")
print(f"save k2 (after a one-line change): {up/2**20:.2f} MiB sent ({s2['objects_sent']} objects, {s2['wire_bytes_sent']/2**20:.2f} MiB on the wire) in {save2:.2f}s")
print(f"tar -cf - target | zstd -3: {tarz/2**20:.1f} MiB in {tar_create:.2f}s")
print(f"  -> save k2 uploads {100*up/tarz:.1f}% of the tar.zst (acceptance: <= 10%)")
print(f"restore k2 onto the old target/, warm local store: {rw:.2f}s ({w['unchanged']} of {w['files']} files unchanged, {w['bytes_received']/2**20:.2f} MiB fetched)")
print(f"restore k2 onto the old target/, empty local store: {rc:.2f}s ({c['bytes_received']/2**20:.1f} MiB fetched)")
print(f"zstd -dc target.tar.zst | tar -xf - onto the old target/: {tx:.2f}s")
print(f"  -> restore is {tx/rw:.1f}x (warm) / {tx/rc:.1f}x (empty local store) faster than extracting the tar (acceptance: >= 2x)")
PY
