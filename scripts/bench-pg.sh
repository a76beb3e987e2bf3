#!/usr/bin/env bash
# PostgreSQL rows benchmark (issue 12, acceptance 5), on a users-like table of
# ROWS rows (default 1,000,000), in a throwaway cluster on a Unix socket:
#
#   snapshot --db postgres://…   wall time vs `pg_dump -Fc -Z0 -t users`     (want <= 1.0x)
#   store bytes                  vs the size of `pg_dump -Fc -t users`        (want <= 1.2x)
#   100 rows updated             bytes the re-snapshot adds (want < 256 KiB), its time
#                                vs the first snapshot's (want <= 0.5x)
#   diff A B                     lists exactly the 100 keys
#   restore onto the existing, empty table (schema made first)  vs pg_restore --data-only
#   restore into a new, empty database (sp-sync makes the table) vs a full pg_restore
#   many tables: TABLES (default 200) tables of 50 rows in a database of their own:
#   snapshot vs pg_dump -Fc -Z0, an unchanged re-snapshot, restore into a new
#   database vs pg_restore (per-table costs: catalog queries and round trips)
#   peak RSS of every sp-sync command                                         (want < 200 MiB)
#
# Also printed, to show where the snapshot's time goes: the server alone running
# the COPY a first snapshot issues (psql to /dev/null), and the snapshot's own CPU
# time. On two cores the two together bound the snapshot's wall time from below.
#
# Usage: scripts/bench-pg.sh            (builds the release binary; needs PostgreSQL's
#        ROWS=100000 scripts/bench-pg.sh  server binaries in /usr/lib/postgresql/*/bin,
#                                         GNU time and python3; run as root or as a
#                                         user who may run initdb)
# Times are the best of RUNS (default 3) runs. Prints one line per figure
# and a JSON summary on the last line.
set -euo pipefail
cd "$(dirname "$0")/.."

ROWS="${ROWS:-1000000}"
RUNS="${RUNS:-3}"
PGBIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
[ -x "$PGBIN/initdb" ] || { echo "bench-pg: needs PostgreSQL (apt-get install postgresql)" >&2; exit 2; }
for tool in /usr/bin/time python3; do
    command -v "$tool" >/dev/null || { echo "bench-pg: needs $tool" >&2; exit 2; }
done
# SP_SYNC_BIN: a binary already built (else the release build).
if [ -z "${SP_SYNC_BIN:-}" ]; then cargo build --release --quiet --bin sp-sync; fi
BIN="${SP_SYNC_BIN:-$PWD/target/release/sp-sync}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/sp-bench-pg.XXXXXX")"
trap 'as_owner "$PGBIN/pg_ctl" -D "$WORK/data" -m fast stop >/dev/null 2>&1; rm -rf "$WORK"' EXIT
chmod 755 "$WORK"
as_owner() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
mkdir "$WORK/sock"
[ "$(id -u)" = 0 ] && chown postgres "$WORK/sock" && mkdir "$WORK/data" && chown postgres "$WORK/data"
as_owner "$PGBIN/initdb" -D "$WORK/data" -U postgres -A trust -E UTF8 --locale=C --no-sync >/dev/null
PORT=$((30000 + $$ % 20000))
as_owner "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/sock/pg.log" -w \
    -o "-k $WORK/sock -c listen_addresses='' -p $PORT -c fsync=off -c shared_buffers=128MB" start >/dev/null
export PGHOST="$WORK/sock" PGPORT="$PORT" PGUSER=postgres PGDATABASE=postgres
export SP_SYNC_CACHE_DIR="$WORK/cache"
URL="postgres://postgres@:$PORT/postgres?host=$WORK/sock"
mkdir "$WORK/empty"
cd "$WORK"

echo "bench-pg: $ROWS rows in $WORK" >&2
"$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 <<SQL
CREATE TABLE users (
    id bigint PRIMARY KEY,
    email text NOT NULL UNIQUE,
    name text NOT NULL,
    age integer,
    balance numeric(14, 2) NOT NULL,
    created_at timestamptz NOT NULL,
    active boolean NOT NULL,
    avatar bytea
);
INSERT INTO users
SELECT i,
       'user' || i || '@example.com',
       'User ' || substr('ABCDEFGHIJKLMNOPQRSTUVWXYZ', (1 + (i * 7) % 26)::int, 1) || ' ' || (i * 2654435761 % 1000003),
       CASE WHEN i % 17 = 0 THEN NULL ELSE 18 + (i * 31) % 60 END,
       round(((i * 48271) % 2147483647) / 1000.0, 2),
       to_timestamp(1600000000 + i * 37),
       i % 3 <> 0,
       CASE WHEN i % 5 = 0 THEN decode(md5(i::text), 'hex') ELSE NULL END
FROM generate_series(1::bigint, $ROWS) i;
VACUUM ANALYZE users;
SQL

# best_of 'SHELL COMMAND': prints "seconds peak_rss_kib cpu_seconds" of the fastest
# of RUNS runs (the RSS is the largest of any run; the CPU time, user and system,
# is the fastest run's, of the command's own processes).
best_of() {
    local best="" rss=0 cpu=""
    for _ in $(seq "$RUNS"); do
        /usr/bin/time -f "%e %M %U %S" -o "$WORK/time.txt" bash -c "$1" >/dev/null 2>"$WORK/err.txt" || {
            cat "$WORK/err.txt" >&2
            exit 1
        }
        read -r t m u s <"$WORK/time.txt"
        if [ -z "$best" ] || python3 -c "import sys; sys.exit(0 if $t < $best else 1)"; then
            best="$t"
            cpu=$(python3 -c "print(round($u + $s, 2))")
        fi
        [ "$m" -gt "$rss" ] && rss="$m"
    done
    echo "$best $rss $cpu"
}

read -r t_dump _ < <(best_of "'$PGBIN/pg_dump' -Fc -Z0 -t users -f '$WORK/dump0'")
"$PGBIN/pg_dump" -Fc -t users -f "$WORK/dumpc"
dump_bytes=$(stat -c %s "$WORK/dumpc")
# The statement a first snapshot runs for this table (see pg_stat_activity):
# a table only ever inserted into is read in the order its heap stores the
# rows, from its start. (Binary: every column of this table has a binary form
# sp-sync reads.)
COPY_SQL='COPY "users" ("id", "email", "name", "age", "balance", "created_at", "active", "avatar") TO STDOUT (FORMAT binary)'
read -r t_copy _ < <(best_of "PGOPTIONS='-c synchronize_seqscans=off' '$PGBIN/psql' -X -q -c '$COPY_SQL'")
# A fresh store and cache for each snapshot run, so every run does the
# whole work of a first snapshot.
read -r t_snap rss_snap cpu_snap < <(best_of "rm -rf '$WORK/s1' '$WORK/cache' && '$BIN' init --store '$WORK/s1' -q && '$BIN' --store '$WORK/s1' snapshot '$WORK/empty' --db '$URL' -q")
store="$WORK/s1"
store_bytes=$(du -sb "$store" | cut -f1)

"$PGBIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 >changed.txt <<SQL
CREATE TEMP TABLE pick AS SELECT id FROM users ORDER BY random() LIMIT 100;
UPDATE users SET balance = balance + 1, active = NOT active WHERE id IN (SELECT id FROM pick);
SELECT id FROM pick ORDER BY id;
SQL
/usr/bin/time -f "%e %M" -o time.txt "$BIN" --store "$store" snapshot "$WORK/empty" --db "$URL" -q >/dev/null
read -r t_resnap rss_resnap <time.txt
added=$(( $(du -sb "$store" | cut -f1) - store_bytes ))

/usr/bin/time -f "%e %M" -o time.txt "$BIN" --store "$store" diff main~1 main --json >diff.json
read -r t_diff rss_diff <time.txt
keys_ok=$(python3 - <<'PY'
import json
d = json.load(open("diff.json"))
got = sorted(r["key"][0] for r in d["rows"] if r["table"] == "users" and r["change"] == "modified")
want = sorted(int(x) for x in open("changed.txt").read().split())
print("yes" if got == want and len(d["rows"]) == 100 else f"no ({len(d['rows'])} rows)")
PY
)

# Restore onto tables that exist and are empty (a migration tool made the
# schema): sp-sync restore vs pg_restore --data-only, each into a database made
# anew with the table's schema (pg_restore --schema-only) before the timing.
# best_after 'SETUP' 'COMMAND': "seconds peak_rss_kib" of the fastest of RUNS.
best_after() {
    local best="" rss=0
    for _ in $(seq "$RUNS"); do
        bash -c "$1" >/dev/null 2>"$WORK/err.txt" || { cat "$WORK/err.txt" >&2; exit 1; }
        /usr/bin/time -f "%e %M" -o "$WORK/time.txt" bash -c "$2" >/dev/null 2>"$WORK/err.txt" || {
            cat "$WORK/err.txt" >&2
            exit 1
        }
        read -r t m <"$WORK/time.txt"
        if [ -z "$best" ] || python3 -c "import sys; sys.exit(0 if $t < $best else 1)"; then
            best="$t"
        fi
        [ "$m" -gt "$rss" ] && rss="$m"
    done
    echo "$best $rss"
}
FRESH="'$PGBIN/psql' -X -q -c 'DROP DATABASE IF EXISTS target' -c 'CREATE DATABASE target' && '$PGBIN/pg_restore' --schema-only -d target '$WORK/dumpc'"
TARGET_URL="postgres://postgres@:$PORT/target?host=$WORK/sock"
read -r t_restore rss_restore < <(best_after "$FRESH" "'$BIN' --store '$store' restore main --db '$TARGET_URL' --table users -q")
"$BIN" --store "$store" diff main --db "$TARGET_URL" --table users --json >restored.json
restored_ok=$(python3 -c "import json; print('yes' if json.load(open('restored.json'))['rows'] == [] else 'no')")
read -r t_pg_restore _ < <(best_after "$FRESH" "'$PGBIN/pg_restore' --data-only -d target '$WORK/dumpc'")
# Into a new, empty database: sp-sync makes the table from the recorded schema
# (keys and indexes built after the rows), pg_restore runs the whole dump.
EMPTY="'$PGBIN/psql' -X -q -c 'DROP DATABASE IF EXISTS target' -c 'CREATE DATABASE target'"
read -r t_restore_new rss_restore_new < <(best_after "$EMPTY" "'$BIN' --store '$store' restore main --db '$TARGET_URL' --table users -q")
"$BIN" --store "$store" diff main --db "$TARGET_URL" --table users --json >restored_new.json
restored_new_ok=$(python3 -c "import json; print('yes' if json.load(open('restored_new.json'))['rows'] == [] else 'no')")
read -r t_pg_restore_full _ < <(best_after "$EMPTY" "'$PGBIN/pg_restore' -d target '$WORK/dumpc'")

# Many small tables, a service's usual schema: TABLES tables (default 200)
# of 50 rows, each with a serial key, a unique and a plain index, in a
# database of their own. Per-table work (catalog queries, round trips)
# is what these times show, not rows.
TABLES="${TABLES:-200}"
"$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -c 'CREATE DATABASE many'
"$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -d many <<SQL
DO \$\$ BEGIN
FOR i IN 1..$TABLES LOOP
  EXECUTE format('CREATE TABLE t%s (id bigserial PRIMARY KEY, name text NOT NULL UNIQUE, '
                 'kind int, created timestamptz DEFAULT now(), data jsonb)', i);
  EXECUTE format('CREATE INDEX ON t%s (kind)', i);
  EXECUTE format('INSERT INTO t%s (name, kind, data) SELECT ''n'' || g, g %% 7, '
                 'jsonb_build_object(''g'', g) FROM generate_series(1, 50) g', i);
END LOOP; END \$\$;
SQL
MANY_URL="postgres://postgres@:$PORT/many?host=$WORK/sock"
read -r t_many_dump _ < <(best_of "'$PGBIN/pg_dump' -Fc -Z0 -d many -f '$WORK/many0'")
"$PGBIN/pg_dump" -Fc -d many -f "$WORK/manyc"
read -r t_many_snap _ < <(best_of "rm -rf '$WORK/s2' '$WORK/cache' && '$BIN' init --store '$WORK/s2' -q && '$BIN' --store '$WORK/s2' snapshot '$WORK/empty' --db '$MANY_URL' -q")
read -r t_many_resnap _ < <(best_of "'$BIN' --store '$WORK/s2' snapshot '$WORK/empty' --db '$MANY_URL' -q")
NEWDB="'$PGBIN/psql' -X -q -c 'DROP DATABASE IF EXISTS target' -c 'CREATE DATABASE target'"
read -r t_many_restore _ < <(best_after "$NEWDB" "'$BIN' --store '$WORK/s2' restore main --db '$TARGET_URL' -q")
"$BIN" --store "$WORK/s2" diff main --db "$TARGET_URL" --json >many_restored.json
many_ok=$(python3 -c "import json; print('yes' if json.load(open('many_restored.json'))['rows'] == [] else 'no')")
read -r t_many_pg_restore _ < <(best_after "$NEWDB" "'$PGBIN/pg_restore' -d target '$WORK/manyc'")

python3 - "$ROWS" "$t_dump" "$t_snap" "$rss_snap" "$store_bytes" "$dump_bytes" "$t_resnap" "$rss_resnap" \
    "$added" "$t_diff" "$rss_diff" "$keys_ok" "$t_copy" "$cpu_snap" "$t_restore" "$rss_restore" \
    "$t_pg_restore" "$restored_ok" "$t_restore_new" "$rss_restore_new" "$t_pg_restore_full" \
    "$restored_new_ok" "$TABLES" "$t_many_dump" "$t_many_snap" "$t_many_resnap" "$t_many_restore" \
    "$t_many_pg_restore" "$many_ok" <<'PY'
import json, sys
(rows, t_dump, t_snap, rss_snap, store_bytes, dump_bytes, t_resnap, rss_resnap, added, t_diff,
 rss_diff, keys_ok, t_copy, cpu_snap, t_restore, rss_restore, t_pg_restore,
 restored_ok, t_restore_new, rss_restore_new, t_pg_restore_full, restored_new_ok,
 tables, t_many_dump, t_many_snap, t_many_resnap, t_many_restore, t_many_pg_restore,
 many_ok) = sys.argv[1:]
f = float
rss = max(int(rss_snap), int(rss_resnap), int(rss_diff), int(rss_restore),
          int(rss_restore_new)) / 1024
out = {
    "rows": int(rows),
    "snapshot_s": f(t_snap), "pg_dump_z0_s": f(t_dump),
    "snapshot_vs_pg_dump": round(f(t_snap) / f(t_dump), 2),
    "store_bytes": int(store_bytes), "pg_dump_fc_bytes": int(dump_bytes),
    "store_vs_pg_dump": round(int(store_bytes) / int(dump_bytes), 2),
    "resnapshot_s": f(t_resnap), "resnapshot_vs_first": round(f(t_resnap) / f(t_snap), 2),
    "resnapshot_added_kib": round(int(added) / 1024, 1),
    "diff_ms": round(f(t_diff) * 1000), "diff_lists_exactly_the_100_keys": keys_ok == "yes",
    "peak_rss_mib": round(rss, 1),
    "server_copy_s": f(t_copy), "server_copy_vs_pg_dump": round(f(t_copy) / f(t_dump), 2),
    "snapshot_cpu_s": f(cpu_snap),
    "restore_existing_s": f(t_restore), "pg_restore_data_only_s": f(t_pg_restore),
    "restore_vs_pg_restore": round(f(t_restore) / f(t_pg_restore), 2),
    "restored_equals_snapshot": restored_ok == "yes",
    "restore_new_db_s": f(t_restore_new), "pg_restore_full_s": f(t_pg_restore_full),
    "restore_new_vs_pg_restore": round(f(t_restore_new) / f(t_pg_restore_full), 2),
    "restored_new_equals_snapshot": restored_new_ok == "yes",
    "many_tables": int(tables),
    "many_snapshot_s": f(t_many_snap), "many_pg_dump_z0_s": f(t_many_dump),
    "many_snapshot_vs_pg_dump": round(f(t_many_snap) / f(t_many_dump), 2),
    "many_resnapshot_s": f(t_many_resnap),
    "many_restore_new_db_s": f(t_many_restore), "many_pg_restore_s": f(t_many_pg_restore),
    "many_restore_vs_pg_restore": round(f(t_many_restore) / f(t_many_pg_restore), 2),
    "many_restored_equals_snapshot": many_ok == "yes",
}
print(f"snapshot        {out['snapshot_s']:.2f}s vs pg_dump -Fc -Z0 {out['pg_dump_z0_s']:.2f}s: {out['snapshot_vs_pg_dump']}x (want <= 1.0)")
print(f"store           {out['store_bytes']} bytes vs pg_dump -Fc {out['pg_dump_fc_bytes']}: {out['store_vs_pg_dump']}x (want <= 1.2)")
print(f"re-snapshot     100 rows changed: +{out['resnapshot_added_kib']} KiB (want < 256), {out['resnapshot_s']:.2f}s = {out['resnapshot_vs_first']}x the first (want <= 0.5)")
print(f"diff            {out['diff_ms']} ms, exactly the 100 keys: {keys_ok}")
print(f"restore         onto the existing empty table: {out['restore_existing_s']:.2f}s vs pg_restore "
      f"--data-only {out['pg_restore_data_only_s']:.2f}s: {out['restore_vs_pg_restore']}x; "
      f"equal to the snapshot: {restored_ok}")
print(f"restore         into a new database: {out['restore_new_db_s']:.2f}s vs pg_restore "
      f"{out['pg_restore_full_s']:.2f}s: {out['restore_new_vs_pg_restore']}x; "
      f"equal to the snapshot: {restored_new_ok}")
print(f"many tables     {tables} of 50 rows: snapshot {out['many_snapshot_s']:.2f}s vs pg_dump -Fc -Z0 "
      f"{out['many_pg_dump_z0_s']:.2f}s: {out['many_snapshot_vs_pg_dump']}x; unchanged re-snapshot "
      f"{out['many_resnapshot_s']:.2f}s; restore into a new database {out['many_restore_new_db_s']:.2f}s "
      f"vs pg_restore {out['many_pg_restore_s']:.2f}s: {out['many_restore_vs_pg_restore']}x; "
      f"equal to the snapshot: {many_ok}")
print(f"peak RSS        {out['peak_rss_mib']} MiB (want < 200)")
print(f"where it goes   the server alone, the snapshot's COPY: {out['server_copy_s']:.2f}s "
      f"({out['server_copy_vs_pg_dump']}x pg_dump); the snapshot's own CPU: {out['snapshot_cpu_s']:.2f}s")
print(json.dumps(out))
PY
