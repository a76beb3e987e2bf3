#!/usr/bin/env bash
# Attacks a real `sp-sync serve` on loopback and checks that it stays up:
# resident memory under 256 MiB, `/healthz` and another tenant's `GET refs`
# answered within 1 s throughout, and everything working again afterwards.
#
#   scripts/attack-server.sh            # builds target/debug/sp-sync first
#   SP_SYNC_BIN=path/to/sp-sync scripts/attack-server.sh
#
# Loopback only, bounded counts, each phase a few seconds (about a minute in
# all). The attacks (issue 9, "Server availability"):
#   1. bodies without a token: 8 connections sending 64 MiB each to `has`
#   2. slow headers: 300 connections (the server runs with `ulimit -n 256`)
#   3. one tenant's stalled pushes: 520 of them, more than tokio's blocking pool
#   4. a push past the tenant's quota (refused with 507, nothing stored)
#   5. `refs/main/sub` next to `main` (409, not 500)
# Delta amplification needs hand-built zstd frames; its regression test is
# `deltas_cannot_multiply_the_servers_work` in tests/it/server_hostile.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${SP_SYNC_BIN:-}
if [[ -z "$BIN" ]]; then
  cargo build --quiet --bin sp-sync
  BIN=$PWD/target/debug/sp-sync
fi
TMP=$(mktemp -d)
SERVER_PID=
cleanup() {
  [[ -n "$SERVER_PID" ]] && kill "$SERVER_PID" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

TOKEN_A=attack-token-acme-0123456789
TOKEN_B=attack-token-other-0123456789
cat >"$TMP/tokens.toml" <<EOF
[tenants.acme]
tokens = ["$TOKEN_A"]
quota = "64MiB"
[tenants.other]
tokens = ["$TOKEN_B"]
EOF

# The server, with few descriptors and short timeouts.
(
  ulimit -n 256
  exec "$BIN" serve --listen 127.0.0.1:0 --data "$TMP/data" --tokens "$TMP/tokens.toml" --timeout 5
) 2>"$TMP/serve.log" &
SERVER_PID=$!
for _ in $(seq 100); do
  ADDR=$(sed -n 's/^sp-sync serve: listening on //p' "$TMP/serve.log")
  [[ -n "$ADDR" ]] && break
  sleep 0.1
done
[[ -n "${ADDR:-}" ]] || { echo "the server did not start"; cat "$TMP/serve.log"; exit 1; }
echo "sp-sync serve on $ADDR (pid $SERVER_PID)"

# Working trees: a small one for `other`, a big one for acme's quota.
mkdir -p "$TMP/small" "$TMP/big"
echo "hello" >"$TMP/small/a.txt"
head -c $((96 << 20)) /dev/urandom >"$TMP/big/data.bin"
export SP_SYNC_CACHE_DIR=$TMP/cache
(cd "$TMP/small" && "$BIN" -q init && "$BIN" -q snapshot >/dev/null)
(cd "$TMP/small" && SP_SYNC_TOKEN=$TOKEN_B "$BIN" -q push "http://$ADDR/other")
(cd "$TMP/small" && SP_SYNC_TOKEN=$TOKEN_A "$BIN" -q push "http://$ADDR/acme")
(cd "$TMP/big" && "$BIN" -q init && "$BIN" -q snapshot >/dev/null)

ADDR=$ADDR PID=$SERVER_PID TOKEN_A=$TOKEN_A TOKEN_B=$TOKEN_B BIN=$BIN BIG=$TMP/big \
  DATA=$TMP/data python3 - <<'PY'
import json, os, socket, subprocess, sys, threading, time

addr = os.environ["ADDR"]
host, port = addr.rsplit(":", 1)
port = int(port)
pid = os.environ["PID"]
ta, tb = os.environ["TOKEN_A"], os.environ["TOKEN_B"]
failures = []
stop = threading.Event()
worst = {"healthz": 0.0, "other": 0.0, "rss": 0}


def rss():
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def request(method, path, token=None, body=b"", timeout=1.0):
    t = time.monotonic()
    s = socket.create_connection((host, port), timeout=timeout)
    s.settimeout(timeout)
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {len(body)}\r\n"
    if token:
        head += f"Authorization: Bearer {token}\r\n"
    s.sendall(head.encode() + b"\r\n" + body)
    out = b""
    while True:
        try:
            c = s.recv(65536)
        except socket.timeout:
            s.close()
            raise
        if not c:
            break
        out += c
    s.close()
    status = int(out.split(b" ", 2)[1])
    return status, out.split(b"\r\n\r\n", 1)[-1], time.monotonic() - t


def monitor():
    while not stop.is_set():
        for name, args in (("healthz", ("GET", "/healthz")),
                           ("other", ("GET", "/v1/other/refs", tb))):
            try:
                status, _, took = request(*args)
                worst[name] = max(worst[name], took)
                if status != 200 or took > 1.0:
                    failures.append(f"{name}: {status} in {took:.2f}s")
            except Exception as e:  # a timeout or a refused connection
                failures.append(f"{name}: {e!r}")
        worst["rss"] = max(worst["rss"], rss())
        time.sleep(0.2)


def phase(name, fn, seconds):
    print(f"-- {name}", flush=True)
    t = time.monotonic()
    fn(seconds)
    print(f"   {time.monotonic() - t:.1f}s, RSS now {rss() >> 20} MiB", flush=True)


def unauth_bodies(seconds):
    def one():
        try:
            s = socket.create_connection((host, port))
            s.sendall(f"POST /v1/acme/has HTTP/1.1\r\nHost: x\r\nContent-Length: {64 << 20}\r\n\r\n".encode())
            junk = b"\0" * (1 << 20)
            deadline = time.monotonic() + seconds
            for _ in range(64):
                if time.monotonic() > deadline:
                    break
                s.sendall(junk)
        except OSError:
            pass  # the server answered 401 and closed: expected
    ts = [threading.Thread(target=one) for _ in range(8)]
    [t.start() for t in ts]
    [t.join() for t in ts]


def slow_headers(seconds):
    socks = []
    for _ in range(300):
        try:
            s = socket.create_connection((host, port), timeout=1)
            s.sendall(b"GET /healthz HTTP/1.1\r\n")
            socks.append(s)
        except OSError:
            pass
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for s in socks:
            try:
                s.sendall(b"X-a: b\r\n")
            except OSError:
                pass
        time.sleep(1)
    for s in socks:
        s.close()


def stalled_pushes(seconds):
    socks = []
    head = (f"POST /v1/acme/objects HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ta}\r\n"
            f"Content-Length: {1 << 30}\r\n\r\nSPPK").encode()
    for _ in range(520):
        try:
            s = socket.create_connection((host, port), timeout=1)
            s.sendall(head)
            socks.append(s)
        except OSError:
            pass
    time.sleep(seconds)
    for s in socks:
        s.close()


def over_quota(seconds):
    r = subprocess.run([os.environ["BIN"], "push", f"http://{addr}/acme"], cwd=os.environ["BIG"],
                       env=dict(os.environ, SP_SYNC_TOKEN=ta), capture_output=True, text=True,
                       timeout=120)
    if r.returncode != 1 or "quota exceeded" not in r.stderr:
        failures.append(f"over-quota push: exit {r.returncode}: {r.stderr.strip()}")
    else:
        print(f"   refused: {r.stderr.strip()}")
    packs = os.path.join(os.environ["DATA"], "acme", "packs")
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(packs) for f in fs)
    if size > 64 << 20:
        failures.append(f"acme holds {size} bytes of packs after a refused push")


def ref_clash(seconds):
    status, body, _ = request("GET", "/v1/acme/refs", ta)
    rid = json.loads(body)[0]["id"]
    status, body, _ = request("POST", "/v1/acme/refs/main/sub", ta,
                              json.dumps({"old": None, "new": rid}).encode())
    if status not in (400, 409):
        failures.append(f"refs/main/sub: {status} {body!r}")


m = threading.Thread(target=monitor)
m.start()
try:
    phase("bodies without a token", unauth_bodies, 5)
    phase("slow headers", slow_headers, 5)
    phase("stalled pushes of one tenant", stalled_pushes, 5)
    phase("a push past the quota", over_quota, 0)
    phase("a ref under an existing ref", ref_clash, 0)
finally:
    stop.set()
    m.join()

# Recovery: everything answers again.
time.sleep(1)
for args in (("GET", "/healthz"), ("GET", "/v1/acme/refs", ta), ("GET", "/v1/other/refs", tb)):
    try:
        status, _, took = request(*args)
        if status != 200:
            failures.append(f"after the attacks {args[1]}: {status}")
    except Exception as e:
        failures.append(f"after the attacks {args[1]}: {e!r}")

print(f"worst: healthz {worst['healthz']:.3f}s, other tenant {worst['other']:.3f}s, "
      f"RSS {worst['rss'] >> 20} MiB")
if worst["rss"] > 256 << 20:
    failures.append(f"RSS reached {worst['rss'] >> 20} MiB")
if failures:
    print("FAILED:")
    for f in failures[:50]:
        print("  " + f)
    sys.exit(1)
print("ok: the server stayed up")
PY
