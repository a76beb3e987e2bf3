#!/usr/bin/env bash
# Install the peer backup/snapshot tools used by scripts/bench-peers.sh (Debian/Ubuntu, apt-get).
# Usage: sudo scripts/bench/setup-peers.sh   (root, or sudo available; idempotent)
#        or: SETUP=1 scripts/bench-peers.sh ...
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"

$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends \
    restic borgbackup rsync git hyperfine zstd time
# b3sum is optional (not packaged in every release); skip silently if missing.
if apt-cache show b3sum >/dev/null 2>&1; then
    $SUDO apt-get install -y --no-install-recommends b3sum || echo "b3sum install failed; skipping" >&2
else
    echo "b3sum not available from apt; the b3sum floor will be skipped" >&2
fi

echo "--- installed versions ---"
restic version || true
borg --version || true
rsync --version | head -1 || true
git --version || true
hyperfine --version || true
zstd --version || true
/usr/bin/time --version 2>&1 | head -1 || true
command -v b3sum >/dev/null && b3sum --version || echo "b3sum: not installed"
