#!/usr/bin/env bash
# Build benchmark corpora from REAL files on this machine (copies, so they can be mutated).
#
# Usage: scripts/bench/make-corpora.sh [WORK_DIR]   (scripts/bench-peers.sh calls it when needed)
#   WORK_DIR          default: $SPBENCH_WORK or /tmp/spbench
# Environment knobs:
#   DOCS_SRC          rustup stable toolchain doc dir
#                     (default: $HOME/.rustup/toolchains/stable-*/share/doc)
#   DOCS_CAP_MB       0 (default) = copy the whole doc tree; N = copy whole top-level
#                     dirs of rust/html (name order, skipping any that would overflow) up to ~N MB;
#                     the chosen dirs are recorded in pristine/docs.info
#   BIN_SRCS          space-separated dirs (default: /usr/lib/<multiarch> /usr/lib/gcc)
#   BIN_MB            target size of the bin corpus in MB (default 500)
#   CORPORA           which corpora to (re)build (default "docs bin")
#
# Result:
#   WORK_DIR/pristine/<corpus>/        reference copy (never mutated)
#   WORK_DIR/pristine/<corpus>.info    what was copied, file count, bytes
# bench-peers.sh rsyncs pristine -> WORK_DIR/live/<corpus> before each tool run.
set -euo pipefail
WORK="${1:-${SPBENCH_WORK:-/tmp/spbench}}"
CORPORA="${CORPORA:-docs bin}"
DOCS_CAP_MB="${DOCS_CAP_MB:-0}"
BIN_MB="${BIN_MB:-500}"
MULTIARCH="$(gcc -dumpmachine 2>/dev/null || echo "$(uname -m)-linux-gnu")"
BIN_SRCS="${BIN_SRCS:-/usr/lib/$MULTIARCH /usr/lib/gcc}"
if [ -z "${DOCS_SRC:-}" ]; then
    DOCS_SRC=""
    for d in "$HOME"/.rustup/toolchains/stable-*/share/doc; do
        [ -d "$d" ] && { DOCS_SRC="$d"; break; }
    done
fi
mkdir -p "$WORK/pristine"
export LC_ALL=C

info() { echo "[make-corpora] $*" >&2; }
stats() { # dir -> "files bytes"
    find "$1" -type f -printf '%s\n' | awk '{n++; s+=$1} END {printf "%d %d\n", n, s}'
}

build_docs() {
    local dst="$WORK/pristine/docs"
    if [ -z "$DOCS_SRC" ] || [ ! -d "$DOCS_SRC" ]; then
        info "no rustup stable doc dir found (DOCS_SRC); skipping docs"; return 0
    fi
    rm -rf "$dst"; mkdir -p "$dst"
    local t0=$SECONDS subset="full tree"
    if [ "$DOCS_CAP_MB" -gt 0 ]; then
        # Whole top-level entries of rust/html, in name order, until the cap is reached.
        local cap=$((DOCS_CAP_MB * 1000000)) acc=0 picked=()
        while read -r sz name; do
            [ $((acc + sz)) -gt "$cap" ] && continue
            acc=$((acc + sz)); picked+=("$name")
        done < <(cd "$DOCS_SRC/rust/html" && for e in *; do printf '%s %s\n' "$(du -sb "$e" | cut -f1)" "$e"; done)
        mkdir -p "$dst/rust/html"
        for e in "${picked[@]}"; do cp -a "$DOCS_SRC/rust/html/$e" "$dst/rust/html/"; done
        subset="subset of rust/html top-level entries: ${picked[*]}"
    else
        cp -a "$DOCS_SRC/." "$dst/"
    fi
    read -r n b < <(stats "$dst")
    { echo "corpus=docs"; echo "source=$DOCS_SRC"; echo "selection=$subset"
      echo "files=$n"; echo "bytes=$b"; echo "copy_seconds=$((SECONDS - t0))"; } > "$dst.info"
    info "docs: $n files, $b bytes ($subset) in $((SECONDS - t0))s"
}

build_bin() {
    local dst="$WORK/pristine/bin" list="$WORK/pristine/bin.files"
    rm -rf "$dst"; mkdir -p "$dst"
    local t0=$SECONDS cap=$((BIN_MB * 1000000))
    # Regular, non-empty files; one path per inode (hardlinks collapsed); path order; stop at cap.
    # shellcheck disable=SC2086
    find $BIN_SRCS -type f -size +0 -printf '%i %s %p\n' 2>/dev/null | sort -k3 \
      | awk -v cap="$cap" '!seen[$1]++ { if (acc + $2 > cap) next; acc += $2;
            p = $0; sub(/^[0-9]+ [0-9]+ \//, "", p); print p }' > "$list"
    rsync -a --files-from="$list" / "$dst/"
    read -r n b < <(stats "$dst")
    { echo "corpus=bin"; echo "source=$BIN_SRCS"; echo "selection=regular files, unique inode, path order, cap ${BIN_MB}MB (list: bin.files)"
      echo "files=$n"; echo "bytes=$b"; echo "copy_seconds=$((SECONDS - t0))"; } > "$dst.info"
    info "bin: $n files, $b bytes in $((SECONDS - t0))s"
}

for c in $CORPORA; do
    case "$c" in
        docs) build_docs ;;
        bin)  build_bin ;;
        *) info "unknown corpus $c"; exit 2 ;;
    esac
done
info "done: $WORK/pristine"
