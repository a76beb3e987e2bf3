#!/usr/bin/env bash
# Whole-command benchmark of sp-sync against peer snapshot tools (restic, borg, git, tar|zstd)
# on real-file corpora. Adapted from the project's shared bench harness; self-contained here.
#
# Usage: scripts/bench-peers.sh [WORK_DIR] [RESULTS_DIR]
#   WORK_DIR     default: $SPBENCH_WORK or /tmp/spbench (QUICK=1: /tmp/spbench-quick).
#                Corpora live in WORK_DIR/pristine/<corpus>/; any missing corpus is built first
#                with scripts/bench/make-corpora.sh.
#   RESULTS_DIR  default: WORK_DIR/results
#
# Environment knobs:
#   CORPORA="docs bin"
#   TOOLS="restic borg_lz4 borg_zstd3 git tar_zstd sp_sync"
#   REPS=2 (full tool sequence repetitions)   FLOOR_REPS=3   MUTATE_PCT=1   MUTATE_SEED=42
#   QUICK=1      smoke/CI mode: small corpora (DOCS_CAP_MB=20, BIN_MB=50), REPS=1, FLOOR_REPS=1,
#                default WORK_DIR /tmp/spbench-quick (explicit knobs still win)
#   SETUP=1      first run scripts/bench/setup-peers.sh (apt-get install of the peer tools)
#   SETTLE=1     before each timed step, sync and wait until the disks have been idle for a
#                second (SETTLE_MAX=180 s at most); SETTLE=0 measures back to back. Runs are
#                kept until the end (see 'Mass deletes'); a leftover run dir is removed
#                first, then DELETE_SETTLE=380 s are waited out
#   SP_SYNC=PATH the sp-sync binary; else `sp-sync` on PATH; else <repo>/target/release/sp-sync,
#                built with `cargo build --release` if absent. BUILD=1 forces that build.
#   Corpus building (make-corpora.sh): DOCS_SRC, DOCS_CAP_MB (0 = full tree), BIN_SRCS, BIN_MB (500)
#
# Method, per corpus, per repetition, per tool (fresh repository each time):
#   reset live copy from pristine (rsync) -> warm page cache (read every file) ->
#   init -> cold -> nochange -> mutate.sh PCT SEED -> incr -> restore (incr snapshot, empty dir)
#   -> diff -r against the live tree (verify=ok|MISMATCH); run dirs are kept until the end
# Every timed step runs under GNU time (-f "%e %M": wall seconds, peak RSS KiB of the largest
# process in the step). Repository size = du -sb of the repository dir after the step;
# bytes_added = its growth during the step. All runs are WARM-CACHE (page cache never dropped).
# Floors (tar | cat, find -exec cat, b3sum) are measured once per corpus, FLOOR_REPS times.
#
# Output (RESULTS_DIR):
#   peers-<stamp>.tsv          tool corpus step wall_s peak_rss_kib repo_bytes bytes_added rep note
#   peers-<stamp>.summary.txt  median/min over reps (scripts/bench/summarize.py)
#   peers-<stamp>.ratios.txt   sp_sync / restic and / borg_zstd3 per corpus and step (--ratios)
#   peers-<stamp>.meta         versions, machine, corpus info
#   peers-<stamp>.log          tool output
#
# Adding a tool: define <name>_available, <name>_init REPO, <name>_snapshot REPO SRC LABEL,
# <name>_restore REPO LABEL TARGET and add <name> to TOOLS. They run in a fresh `bash -c`
# (exported) with $BENCH_CACHE (per-run cache dir) and $BENCH_STATE (per-run state dir).
# LABEL is one of cold|nochange|incr. Compare ratios from one run, not absolute times.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BENCH="$HERE/bench"
ROOT="$(cd "$HERE/.." && pwd)"
export LC_ALL=C

QUICK="${QUICK:-0}"
if [ "$QUICK" = 1 ]; then
    DEFAULT_WORK="${SPBENCH_WORK:-/tmp/spbench}-quick"
    export DOCS_CAP_MB="${DOCS_CAP_MB:-20}" BIN_MB="${BIN_MB:-50}"
    REPS="${REPS:-1}"; FLOOR_REPS="${FLOOR_REPS:-1}"
else
    DEFAULT_WORK="${SPBENCH_WORK:-/tmp/spbench}"
fi
WORK="${1:-$DEFAULT_WORK}"
RESULTS="${2:-$WORK/results}"
CORPORA="${CORPORA:-docs bin}"
TOOLS="${TOOLS:-restic borg_lz4 borg_zstd3 git tar_zstd sp_sync}"
REPS="${REPS:-2}"; FLOOR_REPS="${FLOOR_REPS:-3}"
MUTATE_PCT="${MUTATE_PCT:-1}"; MUTATE_SEED="${MUTATE_SEED:-42}"
TIME=/usr/bin/time

say() { echo "[bench-peers] $*" >&2; }

# ------------------------------------------------------------------ setup ------------------
if [ "${SETUP:-0}" = 1 ]; then
    "$BENCH/setup-peers.sh"
fi
[ -x "$TIME" ] || { say "GNU time not found at $TIME (run scripts/bench/setup-peers.sh or SETUP=1)"; exit 2; }
command -v rsync >/dev/null || { say "rsync not found (run scripts/bench/setup-peers.sh or SETUP=1)"; exit 2; }
command -v python3 >/dev/null || { say "python3 not found"; exit 2; }

# Corpora: build whichever of CORPORA is missing under WORK/pristine.
missing=""
for c in $CORPORA; do
    [ -d "$WORK/pristine/$c" ] || missing="${missing:+$missing }$c"
done
if [ -n "$missing" ]; then
    say "building corpora '$missing' in $WORK/pristine"
    CORPORA="$missing" "$BENCH/make-corpora.sh" "$WORK"
fi
if [ "$QUICK" = 1 ]; then
    for c in $CORPORA; do
        cap=""; case "$c" in docs) cap=$DOCS_CAP_MB ;; bin) cap=$BIN_MB ;; esac
        bytes="$(sed -n 's/^bytes=//p' "$WORK/pristine/$c.info" 2>/dev/null || true)"
        if [ -n "$cap" ] && [ "$cap" -gt 0 ] && [ -n "$bytes" ] && [ "$bytes" -gt $((cap * 1000000)) ]; then
            say "warning: QUICK=1 but $WORK/pristine/$c is $bytes bytes (> ${cap} MB); use another WORK_DIR"
        fi
    done
fi

# sp-sync binary (only needed when sp_sync is benchmarked).
SP_SYNC="${SP_SYNC:-}"
if [[ " $TOOLS " == *" sp_sync "* ]]; then
    if [ -z "$SP_SYNC" ] && [ "${BUILD:-0}" != 1 ]; then
        SP_SYNC="$(command -v sp-sync || true)"
    fi
    if [ -z "$SP_SYNC" ]; then
        SP_SYNC="$ROOT/target/release/sp-sync"
        if [ "${BUILD:-0}" = 1 ] || [ ! -x "$SP_SYNC" ]; then
            if command -v cargo >/dev/null; then
                say "building sp-sync: cargo build --release (in $ROOT)"
                (cd "$ROOT" && cargo build --release)
            else
                say "cargo not found; sp_sync will be skipped"
            fi
        elif [ -n "$(find "$ROOT/src" "$ROOT/Cargo.toml" "$ROOT/Cargo.lock" -newer "$SP_SYNC" -print -quit 2>/dev/null)" ]; then
            say "warning: $SP_SYNC is older than the sources (BUILD=1 rebuilds it)"
        fi
    fi
    case "$SP_SYNC" in /*) ;; *) SP_SYNC="$(cd "$(dirname "$SP_SYNC")" && pwd)/$(basename "$SP_SYNC")" ;; esac
    if [ -x "$SP_SYNC" ]; then say "sp-sync: $SP_SYNC"; else say "warning: no sp-sync binary at $SP_SYNC; sp_sync will be skipped"; fi
fi
export SP_SYNC

STAMP="$(date +%Y%m%d-%H%M%S)"
mkdir -p "$RESULTS"
TSV="$RESULTS/peers-$STAMP.tsv"; LOG="$RESULTS/peers-$STAMP.log"; META="$RESULTS/peers-$STAMP.meta"
SUMMARY="$RESULTS/peers-$STAMP.summary.txt"; RATIOS="$RESULTS/peers-$STAMP.ratios.txt"
printf 'tool\tcorpus\tstep\twall_s\tpeak_rss_kib\trepo_bytes\tbytes_added\trep\tnote\n' > "$TSV"
: > "$LOG"

# ------------------------------------------------------------------ tools ------------------
export RESTIC_PASSWORD="${RESTIC_PASSWORD:-spbench}"
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes

# restic: local repo, default repository version / compression (auto), cache kept per run.
restic_available() { command -v restic >/dev/null; }
restic_init()      { RESTIC_CACHE_DIR="$BENCH_CACHE" restic init -q --repo "$1"; }
restic_snapshot()  { RESTIC_CACHE_DIR="$BENCH_CACHE" restic backup -q --repo "$1" --host spbench --tag "$3" "$2"; }
restic_restore()   { RESTIC_CACHE_DIR="$BENCH_CACHE" restic restore -q --repo "$1" latest --host spbench --tag "$2" --target "$3"; }

# borg 1.x: --encryption none; files cache/config isolated per run via BORG_BASE_DIR.
borg_init_common()    { BORG_BASE_DIR="$BENCH_CACHE" borg init --encryption none "$1"; }
borg_restore_common() { mkdir -p "$3"; cd "$3"; BORG_BASE_DIR="$BENCH_CACHE" borg extract "$1::$2"; }
borg_lz4_available()  { command -v borg >/dev/null; }
borg_lz4_init()       { borg_init_common "$@"; }
borg_lz4_snapshot()   { cd "$2"; BORG_BASE_DIR="$BENCH_CACHE" borg create "$1::$3" .; }   # default lz4
borg_lz4_restore()    { borg_restore_common "$@"; }
borg_zstd3_available(){ command -v borg >/dev/null; }
borg_zstd3_init()     { borg_init_common "$@"; }
borg_zstd3_snapshot() { cd "$2"; BORG_BASE_DIR="$BENCH_CACHE" borg create --compression zstd,3 "$1::$3" .; }
borg_zstd3_restore()  { borg_restore_common "$@"; }

# git: separate git dir (REPO), work tree = corpus; loose objects, auto-gc disabled so no
# background repacking skews timings/sizes. Restore = read-tree + checkout-index into TARGET.
git_available() { command -v git >/dev/null; }
git_init()      { git --git-dir="$1" init -q && git --git-dir="$1" config gc.auto 0; }
git_snapshot()  {
    git --git-dir="$1" --work-tree="$2" add -A
    git --git-dir="$1" --work-tree="$2" -c user.name=spbench -c user.email=spbench@localhost \
        commit -q --allow-empty -m "$3"
    git --git-dir="$1" tag "$3"
}
git_restore()   {
    mkdir -p "$3"
    GIT_INDEX_FILE="$BENCH_STATE/restore.index" git --git-dir="$1" --work-tree="$3" read-tree "$2"
    GIT_INDEX_FILE="$BENCH_STATE/restore.index" git --git-dir="$1" --work-tree="$3" checkout-index -a -f
}

# tar | zstd -3: naive floor. Every snapshot is a full archive (no dedup, no incrementals).
tar_zstd_available() { command -v zstd >/dev/null && command -v tar >/dev/null; }
tar_zstd_init()      { mkdir -p "$1"; }
tar_zstd_snapshot()  { tar -C "$2" -cf - . | zstd -q -3 > "$1/$3.tar.zst"; }
tar_zstd_restore()   { mkdir -p "$3"; zstd -q -dc "$1/$2.tar.zst" | tar -C "$3" -xf -; }

# sp-sync: store = REPO; its stat cache goes to the per-run $BENCH_CACHE (like restic's cache).
# `snapshot -q` prints the 64-hex snapshot id as its only stdout line; kept in $BENCH_STATE/LABEL.id.
sp_sync_available() { [ -n "${SP_SYNC:-}" ] && [ -x "$SP_SYNC" ]; }
sp_sync_init()      { SP_SYNC_CACHE_DIR="$BENCH_CACHE" "$SP_SYNC" init --store "$1" -q; }
sp_sync_snapshot()  {
    local id
    id="$(SP_SYNC_CACHE_DIR="$BENCH_CACHE" "$SP_SYNC" snapshot "$2" --store "$1" -q)"
    [[ "$id" =~ ^[0-9a-f]{64}$ ]] || { echo "sp-sync snapshot: unexpected stdout: $id" >&2; return 1; }
    printf '%s\n' "$id" > "$BENCH_STATE/$3.id"
}
sp_sync_restore()   {
    local id
    id="$(cat "$BENCH_STATE/$2.id")"
    SP_SYNC_CACHE_DIR="$BENCH_CACHE" "$SP_SYNC" restore "$id" "$3" --store "$1" -q
}

# Export every tool function so `bash -c` under GNU time can call it.
while read -r f; do export -f "${f?}"; done < <(compgen -A function | grep -E '^(restic|borg|git|tar_zstd|sp_sync)_')

# ------------------------------------------------------------------ helpers ----------------
log()   { echo "[$(date +%H:%M:%S)] $*" | tee -a "$LOG" >&2; }
dusb()  { if [ -e "$1" ]; then du -sb "$1" | cut -f1; else echo 0; fi; }
stats() { find "$1" -type f -printf '%s\n' | awk '{n++; s+=$1} END {printf "%d/%d", n, s}'; }
warm()  { find "$1" -type f -print0 | xargs -0 cat > /dev/null; }
row()   { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$TSV"; }

# measure TOOL CORPUS STEP REP REPO|- -- CMD...   (CMD runs as: bash -c 'set -eo pipefail; CMD')
# Sets MEASURE_RC. Appends one TSV row.
# settle: untimed; sync, then wait (up to SETTLE_MAX seconds) until the block devices have
# been idle for a whole second. On a disk with online discard, deleting the previous tool's
# 52k-file restore keeps the device busy long after `rm` returns, and whichever tool runs
# next would pay for it: the order of tools, not the tools, would decide restore times.
io_ticks() { awk '$3 ~ /^(vd[a-z]+|sd[a-z]+|nvme[0-9]+n[0-9]+|xvd[a-z]+)$/ {t += $13} END {print t + 0}' /proc/diskstats; }
settle() {
    [ "${SETTLE:-1}" = 1 ] || return 0
    sync
    local max="${SETTLE_MAX:-180}" waited=0 a b
    a="$(io_ticks)"
    while [ "$waited" -lt "$max" ]; do
        sleep 1; waited=$((waited + 1))
        b="$(io_ticks)"
        [ $((b - a)) -lt 20 ] && return 0
        a="$b"
    done
    log "disk still busy after ${max}s; measuring anyway"
}

# Mass deletes and restores. On ext4, a new inode skips every free inode of its group that
# was deleted recently (fs/ext4/ialloc.c recently_deleted(): 60 s, or 360 s while the inode
# table block is dirty, as it is all through a restore that creates files in that group).
# A 52k-file restore just after `rm -rf` of another 52k-file tree spent 20 s wall and 36 s of
# system CPU in that scan (perf: recently_deleted, find_inode_bit) instead of 2.1 s, whichever
# tool ran it. So no run is deleted while the benchmark measures: each tool and repetition
# gets its own run directory, all removed at the end; a leftover RUNROOT from an earlier
# run is removed first and DELETE_SETTLE seconds (default 380) are waited out.
measure() {
    local tool=$1 corpus=$2 step=$3 rep=$4 repo=$5; shift 6
    settle
    local tf; tf="$(mktemp)"
    local before=""; [ "$repo" = - ] || before="$(dusb "$repo")"
    echo "### $tool $corpus $step rep=$rep: $*" >> "$LOG"
    set +e
    # shellcheck disable=SC2016  # $@ is expanded by the inner bash
    "$TIME" -f '%e %M' -o "$tf" bash -c 'set -eo pipefail; "$@"' _ "$@" >> "$LOG" 2>&1
    MEASURE_RC=$?
    set -e
    local wall rss; read -r wall rss < <(tail -n1 "$tf"); rm -f "$tf"
    local after=""; [ "$repo" = - ] || after="$(dusb "$repo")"
    local note="${MEASURE_NOTE:-}"
    [ "$MEASURE_RC" -eq 0 ] || note="FAIL rc=$MEASURE_RC${note:+; $note}"
    local added=""
    [ "$repo" = - ] || [ "$step" = restore ] || added=$((after - before))
    row "$tool" "$corpus" "$step" "$wall" "$rss" "$after" "$added" "$rep" "$note"
    log "$tool $corpus $step rep=$rep wall=${wall}s rss=${rss}KiB repo=$after added=$added ${note}"
}

pool_for() { case "$1" in bin) echo /usr/bin ;; *) echo /usr/share/doc ;; esac; }

# ------------------------------------------------------------------ meta -------------------
{
    echo "stamp=$STAMP"; echo "host_kernel=$(uname -r)"; echo "cpus=$(nproc)"
    echo "cpu_model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "mem=$(free -b | awk '/Mem:/{print $2}')"
    echo "cache_state=warm (page cache NOT dropped; corpus read once before each tool sequence)"
    echo "quick=$QUICK reps=$REPS floor_reps=$FLOOR_REPS mutate_pct=$MUTATE_PCT mutate_seed=$MUTATE_SEED"
    echo "tools=$TOOLS"
    echo "restic=$(restic version 2>/dev/null | head -1)"
    echo "borg=$(borg --version 2>/dev/null)"
    echo "git=$(git --version 2>/dev/null)"
    echo "zstd=$(zstd --version 2>/dev/null)"
    echo "tar=$(tar --version 2>/dev/null | head -1)"
    echo "b3sum=$(b3sum --version 2>/dev/null || echo absent)"
    if [ -n "$SP_SYNC" ] && [ -x "$SP_SYNC" ]; then
        echo "sp-sync=$("$SP_SYNC" --version 2>/dev/null || echo present) ($SP_SYNC)"
        echo "sp-sync_commit=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
    else
        echo "sp-sync=absent"
    fi
    for c in $CORPORA; do sed "s/^/$c./" "$WORK/pristine/$c.info" 2>/dev/null || true; done
} | sed "s|$HOME|\$HOME|g" > "$META"

# ------------------------------------------------------------------ main -------------------
RUNROOT="$WORK/run"
if [ -e "$RUNROOT" ]; then
    log "removing the previous $RUNROOT, then waiting ${DELETE_SETTLE:-380}s (see 'Mass deletes')"
    rm -rf "$RUNROOT"; sync
    [ "${SETTLE:-1}" = 1 ] && sleep "${DELETE_SETTLE:-380}"
fi
for corpus in $CORPORA; do
    PRIS="$WORK/pristine/$corpus"; LIVE="$WORK/live/$corpus"
    [ -d "$PRIS" ] || { log "missing $PRIS (make-corpora.sh); skipping $corpus"; continue; }
    mkdir -p "$LIVE"
    rsync -a --delete "$PRIS/" "$LIVE/"
    warm "$LIVE"; warm "$LIVE"
    log "corpus $corpus: $(stats "$LIVE") files/bytes; page cache warmed"

    # ---- physical floors (read every file once, warm) ----
    for r in $(seq 1 "$FLOOR_REPS"); do
        # shellcheck disable=SC2016  # $1 is expanded by the inner sh
        MEASURE_NOTE=warm measure floor_tar "$corpus" read "$r" - -- \
            sh -c 'tar -C "$1" -cf - . | cat > /dev/null' _ "$LIVE"
        # shellcheck disable=SC2016
        MEASURE_NOTE=warm measure floor_cat "$corpus" read "$r" - -- \
            sh -c 'find "$1" -type f -exec cat {} + > /dev/null' _ "$LIVE"
        if command -v b3sum >/dev/null; then
            # shellcheck disable=SC2016
            MEASURE_NOTE=warm measure floor_b3sum "$corpus" read "$r" - -- \
                sh -c 'find "$1" -type f -print0 | xargs -0 b3sum > /dev/null' _ "$LIVE"
        else
            row floor_b3sum "$corpus" read "" "" "" "" "$r" "SKIPPED b3sum not installed"
        fi
    done

    for rep in $(seq 1 "$REPS"); do
        for tool in $TOOLS; do
            if ! "${tool}_available"; then
                if [ "$rep" = 1 ]; then
                    row "$tool" "$corpus" all "" "" "" "" "" "SKIPPED not installed"
                    log "skip $tool (not available)"
                fi
                continue
            fi
            RUN="$RUNROOT/$corpus/$tool-$rep"; mkdir -p "$RUN/cache" "$RUN/state"
            export BENCH_CACHE="$RUN/cache" BENCH_STATE="$RUN/state"
            REPO="$RUN/repo"; TGT="$RUN/restore"
            rsync -a --delete "$PRIS/" "$LIVE/"
            warm "$LIVE"
            MEASURE_NOTE=warm measure "$tool" "$corpus" init "$rep" "$REPO" -- "${tool}_init" "$REPO"
            [ "$MEASURE_RC" -eq 0 ] || continue
            MEASURE_NOTE=warm measure "$tool" "$corpus" cold "$rep" "$REPO" -- "${tool}_snapshot" "$REPO" "$LIVE" cold
            [ "$MEASURE_RC" -eq 0 ] || continue
            MEASURE_NOTE=warm measure "$tool" "$corpus" nochange "$rep" "$REPO" -- "${tool}_snapshot" "$REPO" "$LIVE" nochange
            mres="$("$BENCH/mutate.sh" "$LIVE" "$MUTATE_PCT" "$MUTATE_SEED" "$(pool_for "$corpus")")"
            log "$tool $corpus rep=$rep $mres"
            warm "$LIVE"
            MEASURE_NOTE="warm; mutate ${MUTATE_PCT}% seed $MUTATE_SEED" \
                measure "$tool" "$corpus" incr "$rep" "$REPO" -- "${tool}_snapshot" "$REPO" "$LIVE" incr
            rm -rf "$TGT"
            MEASURE_NOTE=warm measure "$tool" "$corpus" restore "$rep" "$REPO" -- "${tool}_restore" "$REPO" incr "$TGT"
            if [ "$MEASURE_RC" -eq 0 ]; then
                root="$TGT"
                if [ -d "$TGT$LIVE" ]; then root="$TGT$LIVE"; fi    # restic keeps absolute paths
                if diff -rq "$LIVE" "$root" >> "$LOG" 2>&1; then v="verify=ok"; else v="verify=MISMATCH"; fi
                log "$tool $corpus rep=$rep restore $v (live $(stats "$LIVE"), restored $(stats "$root"))"
                sed -i "\$s/\twarm\$/\twarm; $v/" "$TSV"
            fi
        done
    done
done
log "removing $RUNROOT"; rm -rf "$RUNROOT"
log "raw results: $TSV"
python3 "$BENCH/summarize.py" "$TSV" | tee "$SUMMARY"
echo
python3 "$BENCH/summarize.py" "$TSV" --ratios | tee "$RATIOS"
log "summary: $SUMMARY"
log "ratios:  $RATIOS"
