#!/usr/bin/env bash
# Deterministically mutate ~PCT% of the files of a corpus, for incremental benchmarks.
#
# Usage: scripts/bench/mutate.sh CORPUS_DIR PCT SEED [POOL_DIR]
#   PCT       percent of the corpus's files to touch (float ok, e.g. 1 or 0.5); at least 4
#   SEED      integer; same corpus state + same SEED (+ same POOL) => identical result
#   POOL_DIR  where "new" files are copied from (default /usr/share/doc)
# Of the chosen files: 40% get a line appended, 40% get a 4 KiB region in the middle
# overwritten with seeded pseudo-random bytes (same length; files < 4 KiB are fully
# overwritten), 10% are deleted, and 10% as many new files are copied in from POOL_DIR
# next to randomly chosen existing files. Prints one summary line on stdout.
set -euo pipefail
[ $# -ge 3 ] || { sed -n '2,12p' "$0" >&2; exit 2; }
CORPUS="$1" PCT="$2" SEED="$3" POOL="${4:-/usr/share/doc}"
[ -d "$CORPUS" ] || { echo "no such dir: $CORPUS" >&2; exit 2; }
PY="$(command -v python3)" || { echo "python3 required" >&2; exit 2; }
exec "$PY" - "$CORPUS" "$PCT" "$SEED" "$POOL" <<'PYEOF'
import os, random, shutil, sys
corpus, pct, seed, pool = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

def regular_files(root):
    out = []
    for d, dirs, files in os.walk(root):
        dirs.sort()
        for f in sorted(files):
            p = os.path.join(d, f)
            if os.path.isfile(p) and not os.path.islink(p):
                out.append(p)
    return out

rng = random.Random(seed)
files = regular_files(corpus)
n = max(4, round(len(files) * pct / 100.0))
chosen = rng.sample(files, min(n, len(files)))
n_app = round(n * 0.4); n_ovw = round(n * 0.4); n_del = max(1, round(n * 0.1))
if n_app + n_ovw + n_del > n:      # tiny corpora: keep at least one delete
    n_ovw = max(0, n - n_app - n_del)
n_new = max(1, n - n_app - n_ovw - n_del)
app, ovw, dele = chosen[:n_app], chosen[n_app:n_app + n_ovw], chosen[n_app + n_ovw:n_app + n_ovw + n_del]
changed_bytes = 0
for i, p in enumerate(app):
    line = ("# sp-bench mutate seed=%d i=%d\n" % (seed, i)).encode()
    with open(p, "ab") as fh:
        fh.write(line)
    changed_bytes += len(line)
for i, p in enumerate(ovw):
    size = os.path.getsize(p)
    length = min(4096, size) if size > 0 else 4096
    off = max(0, size // 2 - length // 2)
    data = rng.getrandbits(length * 8).to_bytes(length, "little")
    with open(p, "r+b") as fh:
        fh.seek(off); fh.write(data)
    changed_bytes += length
for p in dele:
    os.remove(p)
pool_files = regular_files(pool) if os.path.isdir(pool) else []
keep = sorted(set(files) - set(dele))
new_bytes = 0
for i, src in enumerate(rng.sample(pool_files, min(n_new, len(pool_files)))):
    near = rng.choice(keep)
    dst = os.path.join(os.path.dirname(near), "spbench-new-%d-%d-%s" % (seed, i, os.path.basename(src)))
    shutil.copyfile(src, dst)
    new_bytes += os.path.getsize(dst)
print("mutate: files=%d chosen=%d appended=%d overwritten=%d deleted=%d added=%d "
      "bytes_modified=%d bytes_new=%d" % (len(files), n, len(app), len(ovw), len(dele),
      min(n_new, len(pool_files)), changed_bytes, new_bytes))
PYEOF
