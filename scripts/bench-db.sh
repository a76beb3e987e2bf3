#!/usr/bin/env bash
# Database rows benchmark (issue 3, acceptance 2), on a realistic users table:
# ROWS rows (default 1,000,000) of 8 columns of mixed types.
#
#   snapshot --db         wall time vs `sqlite3 FILE .dump > /dev/null`      (want <= 1.0x)
#   100 rows updated      bytes the re-snapshot adds to the store            (want < 256 KiB)
#   diff A B              wall time of the whole command; lists exactly the 100 keys (want < 50 ms)
#   restore --db NEW      wall time vs `sqlite3 NEW < dump.sql`              (want <= 1.5x)
#   peak RSS of every sp-sync command                                        (want < 200 MiB)
#
# Usage: scripts/bench-db.sh            (builds the release binary; needs sqlite3 and GNU time)
#        ROWS=100000 scripts/bench-db.sh
# Times are the best of RUNS (default 3) runs. Prints one line per figure
# and a JSON summary on the last line.
set -euo pipefail
cd "$(dirname "$0")/.."

ROWS="${ROWS:-1000000}"
RUNS="${RUNS:-3}"
for tool in sqlite3 /usr/bin/time python3; do
    command -v "$tool" >/dev/null || { echo "bench-db: needs $tool" >&2; exit 2; }
done
# SP_SYNC_BIN: a binary already built (else the release build).
if [ -z "${SP_SYNC_BIN:-}" ]; then cargo build --release --quiet --bin sp-sync; fi
BIN="${SP_SYNC_BIN:-$PWD/target/release/sp-sync}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/sp-bench-db.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
mkdir empty
export SP_SYNC_CACHE_DIR="$WORK/cache"

echo "bench-db: $ROWS rows in $WORK" >&2
sqlite3 users.db <<SQL
PRAGMA journal_mode = WAL;
CREATE TABLE users(
    id INTEGER PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    age INTEGER,
    balance REAL NOT NULL,
    created_at TEXT NOT NULL,
    active INTEGER NOT NULL,
    avatar BLOB
);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $ROWS)
INSERT INTO users
SELECT i,
       'user' || i || '@example.com',
       'User ' || substr('ABCDEFGHIJKLMNOPQRSTUVWXYZ', 1 + (i * 7) % 26, 1) || ' ' || (i * 2654435761 % 1000003),
       CASE WHEN i % 17 = 0 THEN NULL ELSE 18 + (i * 31) % 60 END,
       round(((i * 48271) % 2147483647) / 1000.0, 2),
       datetime(1600000000 + i * 37, 'unixepoch'),
       i % 3 <> 0,
       CASE WHEN i % 5 = 0 THEN randomblob(16) ELSE NULL END
FROM n;
SQL

# best_of 'SHELL COMMAND': prints "seconds peak_rss_kib" of the fastest of
# RUNS runs (the RSS is the largest of any process the command ran).
best_of() {
    local best="" rss=0
    for _ in $(seq "$RUNS"); do
        /usr/bin/time -f "%e %M" -o "$WORK/time.txt" bash -c "$1" >/dev/null 2>"$WORK/err.txt" || {
            cat "$WORK/err.txt" >&2
            exit 1
        }
        read -r t m <"$WORK/time.txt"
        if [ -z "$best" ] || python3 -c "import sys; sys.exit(0 if $t < $best else 1)"; then best="$t"; fi
        [ "$m" -gt "$rss" ] && rss="$m"
    done
    echo "$best $rss"
}

# A fresh store for each snapshot run, so every run does the whole work.
read -r t_dump _ < <(best_of "sqlite3 '$WORK/users.db' .dump")
read -r t_snap rss_snap < <(best_of "rm -rf '$WORK/s1' && '$BIN' init --store '$WORK/s1' -q && '$BIN' --store '$WORK/s1' snapshot '$WORK/empty' --db '$WORK/users.db' -q")
store="$WORK/s1"
store_bytes=$(du -sb "$store/packs" | cut -f1)
read -r t_dumpz _ < <(best_of "sqlite3 '$WORK/users.db' .dump | zstd -3 -q -c > /dev/null")
dumpz_bytes=$(sqlite3 "$WORK/users.db" .dump | zstd -3 -q -c | wc -c)

before=$(du -sb "$store" | cut -f1)
sqlite3 users.db "CREATE TEMP TABLE pick AS SELECT id FROM users ORDER BY random() LIMIT 100;
UPDATE users SET balance = balance + 1, active = 1 - active WHERE id IN (SELECT id FROM pick);
SELECT id FROM pick ORDER BY id;" >changed.txt
/usr/bin/time -f "%e %M" -o time.txt "$BIN" --store "$store" snapshot "$WORK/empty" --db users.db -q >/dev/null
read -r t_resnap rss_resnap <time.txt
after=$(du -sb "$store" | cut -f1)
added=$((after - before))

read -r t_diff rss_diff < <(best_of "'$BIN' --store '$store' diff main~1 main --json")
"$BIN" --store "$store" diff main~1 main --json >diff.json
keys_ok=$(python3 - <<'PY'
import json
d = json.load(open("diff.json"))
got = sorted(r["key"][0] for r in d["rows"] if r["table"] == "users" and r["change"] == "modified")
want = sorted(int(x) for x in open("changed.txt").read().split())
print("yes" if got == want and len(d["rows"]) == 100 else f"no ({len(d['rows'])} rows)")
PY
)

sqlite3 users.db .dump >dump.sql
read -r t_load _ < <(best_of "rm -f '$WORK/load.db' && sqlite3 '$WORK/load.db' < '$WORK/dump.sql'")
read -r t_restore rss_restore < <(best_of "rm -f '$WORK/new.db' && '$BIN' --store '$store' restore main --db '$WORK/new.db' -q")
same=$(cmp -s <(sqlite3 new.db .dump) dump.sql && echo yes || echo no)

python3 - "$ROWS" "$t_dump" "$t_snap" "$rss_snap" "$t_resnap" "$rss_resnap" "$added" "$t_diff" "$rss_diff" \
    "$keys_ok" "$t_load" "$t_restore" "$rss_restore" "$same" "$store_bytes" "$dumpz_bytes" "$t_dumpz" <<'PY'
import json, sys
(rows, t_dump, t_snap, rss_snap, t_resnap, rss_resnap, added, t_diff, rss_diff,
 keys_ok, t_load, t_restore, rss_restore, same, store_bytes, dumpz_bytes, t_dumpz) = sys.argv[1:]
f = float
rss = max(int(rss_snap), int(rss_resnap), int(rss_diff), int(rss_restore)) / 1024
out = {
    "rows": int(rows),
    "snapshot_s": f(t_snap), "dump_s": f(t_dump), "snapshot_vs_dump": round(f(t_snap) / f(t_dump), 2),
    "resnapshot_s": f(t_resnap), "resnapshot_added_kib": round(int(added) / 1024, 1),
    "diff_ms": round(f(t_diff) * 1000), "diff_lists_exactly_the_100_keys": keys_ok == "yes",
    "restore_s": f(t_restore), "load_dump_s": f(t_load), "restore_vs_load": round(f(t_restore) / f(t_load), 2),
    "restored_dump_identical": same == "yes",
    "peak_rss_mib": round(rss, 1),
    "store_bytes": int(store_bytes), "dump_zstd3_bytes": int(dumpz_bytes),
    "store_vs_dump_zstd3": round(int(store_bytes) / int(dumpz_bytes), 2),
    "dump_zstd3_s": f(t_dumpz), "snapshot_vs_dump_zstd3": round(f(t_snap) / f(t_dumpz), 2),
}
print(f"snapshot        {out['snapshot_s']:.2f}s vs sqlite3 .dump {out['dump_s']:.2f}s: {out['snapshot_vs_dump']}x (want <= 1.0)")
print(f"re-snapshot     100 rows changed: +{out['resnapshot_added_kib']} KiB in the store (want < 256)")
print(f"diff            {out['diff_ms']} ms, exactly the 100 keys: {keys_ok} (want < 50 ms)")
print(f"restore --db    {out['restore_s']:.2f}s vs sqlite3 NEW < dump.sql {out['load_dump_s']:.2f}s: {out['restore_vs_load']}x (want <= 1.5); dump identical: {same}")
print(f"store           {out['store_bytes']} bytes vs sqlite3 .dump | zstd -3 {out['dump_zstd3_bytes']}: {out['store_vs_dump_zstd3']}x (want <= 1.2); time {out['snapshot_vs_dump_zstd3']}x that pipeline's (want <= 1.0)")
print(f"peak RSS        {out['peak_rss_mib']} MiB (want < 200)")
print(json.dumps(out))
PY
