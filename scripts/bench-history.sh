#!/usr/bin/env bash
# History replay: the last N commits of a git repository (default: this one), one
# `git archive` tree per commit, snapshotted in order by sp-sync, against git itself
# (`git add -A && git commit` per commit, then `git gc --aggressive`).
#
# Usage: scripts/bench-history.sh [REPO]
#   N=40            commits (first-parent history of HEAD, oldest first)
#   WORK=/tmp/spbench-history
#   SP_SYNC=PATH    the binary (default target/release/sp-sync, built if absent)
#   REPACK=1        also run `sp-sync gc --repack` when this binary has it
#   FIXED_MTIME=1   an analysis aid, not the measure: set every extracted file's mtime to one
#                   fixed time. `git archive` gives every file and directory the commit's
#                   time; sp-sync records mtimes relative to the directory's (store-format.md
#                   §3.4), so only the root and the directories whose contents changed get
#                   new nodes, and FIXED_MTIME=1 changes little (before relative times, every
#                   directory node was new in every snapshot: 2,099 tree nodes against 200).
#
# Prints one line per measure and the ratios (sp-sync / git). Only the snapshot
# (resp. add+commit) commands are timed; unpacking each tree is not.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
REPO="${1:-$ROOT}"
N="${N:-40}"
WORK="${WORK:-/tmp/spbench-history}"
SP="${SP_SYNC:-$ROOT/target/release/sp-sync}"
if [ ! -x "$SP" ]; then (cd "$ROOT" && cargo build --release); fi

rm -rf "$WORK"; mkdir -p "$WORK/live" "$WORK/git"
mapfile -t COMMITS < <(git -C "$REPO" rev-list --first-parent -n "$N" HEAD | tac)
echo "repo $REPO: ${#COMMITS[@]} commits, ${COMMITS[0]:0:12}..${COMMITS[-1]:0:12}"

now() { date +%s.%N; }
reset_live() {
    find "$WORK/live" -mindepth 1 -delete
    git -C "$REPO" archive "$1" | tar x -C "$WORK/live"
    if [ "${FIXED_MTIME:-0}" = 1 ]; then
        find "$WORK/live" -exec touch -h -d 2020-01-01T00:00:00Z {} +
    fi
}

"$SP" init --store "$WORK/sp" >/dev/null
GD="$WORK/git/.git"
gitb() { GIT_DIR="$GD" GIT_WORK_TREE="$WORK/live" git "$@"; }
git init -q "$WORK/git"
gitb config gc.auto 0; gitb config user.name bench; gitb config user.email bench@local

sp_t=0; git_t=0
for c in "${COMMITS[@]}"; do
    reset_live "$c"
    t0=$(now); "$SP" snapshot --store "$WORK/sp" -q -m "$c" "$WORK/live" >/dev/null; t1=$(now)
    sp_t=$(echo "$sp_t + $t1 - $t0" | bc)
    t0=$(now); (cd "$WORK/live" && gitb add -A && gitb commit -qm "$c" --allow-empty); t1=$(now)
    git_t=$(echo "$git_t + $t1 - $t0" | bc)
done
sp_bytes=$(du -sb "$WORK/sp/packs" | cut -f1)
if [ "${REPACK:-1}" = 1 ] && "$SP" gc --help 2>/dev/null | grep -q -- --repack; then
    "$SP" gc --store "$WORK/sp" --repack >/dev/null
    sp_repacked=$(du -sb "$WORK/sp/packs" | cut -f1)
else
    sp_repacked=""
fi
git_loose=$(du -sb "$GD/objects" | cut -f1)
gitb gc -q --aggressive
git_gc=$(du -sb "$GD/objects" | cut -f1)
"$SP" fsck --store "$WORK/sp" >/dev/null

echo "sp_sync_snapshot_total_s $sp_t"
echo "git_add_commit_total_s $git_t"
echo "sp_sync_store_bytes $sp_bytes"
[ -n "$sp_repacked" ] && echo "sp_sync_store_after_repack_bytes $sp_repacked"
echo "git_loose_bytes $git_loose"
echo "git_gc_aggressive_bytes $git_gc"
final=${sp_repacked:-$sp_bytes}
echo "ratio_store_vs_git_gc_aggressive $(echo "scale=3; $final / $git_gc" | bc)"
echo "ratio_time_vs_git_add_commit $(echo "scale=3; $sp_t / $git_t" | bc)"
