//! A real `sp-sync serve` on loopback against hostile clients: bodies sent
//! without a token, oversized and stalled bodies, silent connections,
//! more sockets than descriptors, one tenant flooding its slots, deltas
//! that multiply work, quotas, gc while serving, and a client talking to
//! a server that never answers. Small counts and short timeouts; the full
//! attack is `scripts/attack-server.sh`.

use crate::common;
use crate::net;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{bytes, dir_bytes, ok};
use net::{Server, bucket, http, run_env, s3_endpoint, s3_env, serve_with};
use systemprompt_sync::pack::{FLAG_DELTA, PackWriter, StoredObject, make_delta, prepare};
use systemprompt_sync::{ObjectId, ObjectType};

const TOKEN_A: &str = "token-for-acme-0123456789";
const TOKEN_B: &str = "token-for-other-0123456789";

fn tokens_file(dir: &Path, acme_extra: &str) -> PathBuf {
    let p = dir.join("tokens.toml");
    std::fs::write(
        &p,
        format!(
            "[tenants.acme]\ntokens = [\"{TOKEN_A}\"]\n{acme_extra}\n[tenants.other]\ntokens = [\"{TOKEN_B}\"]\n"
        ),
    )
    .unwrap();
    p
}

fn start(tmp: &Path, acme_extra: &str, extra: &[&str]) -> Server {
    let data = tmp.join("data");
    serve_with(
        data.to_str().unwrap(),
        Some(&tokens_file(tmp, acme_extra)),
        "127.0.0.1:0",
        &[],
        extra,
    )
}

/// The server process's resident memory, in bytes.
fn rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap()
        * 1024
}

/// Sends a request's head (and `body`), then waits up to `wait` for the
/// status line; None if none came.
fn head_then_status(addr: &str, head: &str, body: &[u8], wait: Duration) -> Option<u16> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(body);
    s.set_read_timeout(Some(wait)).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `GET /healthz` must answer within a second.
fn healthz_fast(addr: &str) {
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(
        String::from_utf8_lossy(&out).contains("ok"),
        "healthz did not answer within 1 s ({:?})",
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(1));
}

/// Another tenant's `GET refs` must answer within a second.
fn other_tenant_fast(addr: &str) {
    let t = Instant::now();
    let (s, _) = http(addr, "GET", "/v1/other/refs", Some(TOKEN_B), b"");
    assert_eq!(s, 200);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "another tenant waited {:?}",
        t.elapsed()
    );
}

#[test]
fn bodies_without_a_token_are_not_read() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path(), "", &[]);
    let addr = server.addr.clone();
    // The answer comes before the (large) body is sent.
    for path in ["/v1/acme/has", "/v1/acme/fetch", "/v1/acme/refs/main"] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            60 << 20
        );
        assert_eq!(
            head_then_status(&addr, &head, b"", Duration::from_secs(3)),
            Some(401),
            "{path}"
        );
    }
    // Eight connections pushing 60 MiB bodies with no token: memory stays flat.
    let before = rss(server.pid());
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(&addr).unwrap();
                let head = format!(
                    "POST /v1/acme/has HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
                    60 << 20
                );
                let _ = s.write_all(head.as_bytes());
                let junk = vec![7u8; 1 << 20];
                for _ in 0..60 {
                    if s.write_all(&junk).is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let after = rss(server.pid());
    assert!(
        after < before + (32 << 20),
        "RSS grew from {before} to {after}"
    );
    healthz_fast(&addr);
}

#[test]
fn small_bodies_are_capped_near_what_the_client_sends() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path(), "", &[]);
    let head = format!(
        "POST /v1/acme/has HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN_A}\r\nContent-Length: {}\r\n\r\n",
        5 << 20
    );
    assert_eq!(
        head_then_status(&server.addr, &head, b"", Duration::from_secs(3)),
        Some(413)
    );
    // What the client sends (65,536 ids) is accepted.
    let ids = vec![0u8; 65_536 * 32];
    let (s, b) = http(&server.addr, "POST", "/v1/acme/has", Some(TOKEN_A), &ids);
    assert_eq!((s, b.len()), (200, 65_536));
}

#[test]
fn silent_and_stalled_connections_are_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path(), "", &["--timeout", "2"]);
    let t = Instant::now();
    // Half a request head, then nothing.
    let mut silent = TcpStream::connect(&server.addr).unwrap();
    silent.write_all(b"GET /healthz HTTP/1.1\r\nHo").unwrap();
    // A push that stops after a few bytes of its body.
    let head = format!(
        "POST /v1/acme/objects HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN_A}\r\nContent-Length: {}\r\n\r\n",
        1 << 20
    );
    let mut stalled = TcpStream::connect(&server.addr).unwrap();
    stalled.write_all(head.as_bytes()).unwrap();
    stalled.write_all(b"SPPK").unwrap();
    for s in [&mut silent, &mut stalled] {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut out = Vec::new();
        // Ends (closed by the server) well before our own 10 s.
        let r = s.read_to_end(&mut out);
        assert!(r.is_ok(), "{r:?}");
    }
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "took {:?}",
        t.elapsed()
    );
    healthz_fast(&server.addr);
}

/// `sp-sync serve` started with `ulimit -n 128`.
fn serve_with_fd_limit(data: &Path, limit: u32) -> Server {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!(
            "ulimit -n {limit} && exec \"$0\" serve --listen 127.0.0.1:0 --data \"$1\""
        ))
        .arg(common::bin())
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(a) = line.strip_prefix("sp-sync serve: listening on ")
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(a.trim().to_string());
            } else {
                eprintln!("[serve] {line}");
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    Server {
        child,
        addr,
        data: data.to_path_buf(),
    }
}

#[test]
fn more_sockets_than_descriptors_do_not_stop_healthz() {
    let tmp = tempfile::tempdir().unwrap();
    let server = serve_with_fd_limit(&tmp.path().join("data"), 128);
    let socks: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = TcpStream::connect(&server.addr).unwrap();
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\n");
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..5 {
        healthz_fast(&server.addr);
    }
    drop(socks);
    healthz_fast(&server.addr);
}

#[test]
fn one_tenant_flooding_pushes_does_not_block_another() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path(), "", &[]);
    let head = format!(
        "POST /v1/acme/objects HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN_A}\r\nContent-Length: {}\r\n\r\nSPPK",
        1 << 30
    );
    // More stalled pushes than tokio has blocking threads.
    let socks: Vec<TcpStream> = (0..520)
        .map(|_| {
            let mut s = TcpStream::connect(&server.addr).unwrap();
            let _ = s.write_all(head.as_bytes());
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..3 {
        other_tenant_fast(&server.addr);
        healthz_fast(&server.addr);
    }
    // The flooding tenant is told to come back later, not queued.
    let (s, _) = http(&server.addr, "GET", "/v1/acme/refs", Some(TOKEN_A), b"");
    assert_eq!(s, 503);
    drop(socks);
    // It recovers once the flood ends.
    let t = Instant::now();
    loop {
        let (s, _) = http(&server.addr, "GET", "/v1/acme/refs", Some(TOKEN_A), b"");
        if s == 200 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "acme still {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn pack(objs: &[StoredObject]) -> Vec<u8> {
    let mut w = PackWriter::new(Vec::new()).unwrap();
    for o in objs {
        w.add(o).unwrap();
    }
    w.finish().unwrap().0
}

#[test]
fn deltas_cannot_multiply_the_servers_work() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path(), "", &[]);
    let base = bytes(1 << 20, 5);
    let base_id = ObjectId::compute(ObjectType::Chunk, &base);
    let (s, _) = http(
        &server.addr,
        "POST",
        "/v1/acme/objects",
        Some(TOKEN_A),
        &pack(&[prepare(ObjectType::Chunk, base_id, &base, 1)]),
    );
    assert_eq!(s, 200);
    let mut edited = base.clone();
    edited[1000] ^= 1;
    let id = ObjectId::compute(ObjectType::Chunk, &edited);
    let payload = make_delta(&edited, &base_id, &base, 3).unwrap();
    assert!(payload.len() < 4096);
    let delta = StoredObject {
        tag: ObjectType::Chunk,
        id,
        flags: FLAG_DELTA,
        ulen: edited.len() as u32,
        payload,
    };
    // Under half a megabyte asking for 400 MiB of decoding.
    let body = pack(&vec![delta.clone(); 400]);
    assert!(body.len() < 1 << 20, "{}", body.len());
    let t = Instant::now();
    let (s, b) = http(
        &server.addr,
        "POST",
        "/v1/acme/objects",
        Some(TOKEN_A),
        &body,
    );
    let msg = String::from_utf8_lossy(&b);
    assert_eq!(s, 400, "{msg}");
    assert!(msg.contains("deltas"), "{msg}");
    assert!(t.elapsed() < Duration::from_secs(20));
    // One such delta is fine.
    let (s, b) = http(
        &server.addr,
        "POST",
        "/v1/acme/objects",
        Some(TOKEN_A),
        &pack(&[delta]),
    );
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
}

fn worktree(root: &Path, name: &str, mib: usize, seed: u64) -> PathBuf {
    let w = root.join(name);
    std::fs::create_dir_all(&w).unwrap();
    std::fs::write(w.join("data.bin"), bytes(mib << 20, seed)).unwrap();
    std::fs::write(w.join("small.txt"), format!("small {seed}\n")).unwrap();
    ok(&w, &["init"]);
    ok(&w, &["snapshot"]);
    w
}

/// The id of the newest snapshot of the working tree `w`.
fn newest_id(w: &Path) -> String {
    let log = String::from_utf8(run_env(w, &["log", "-n", "1", "--json"], &[]).stdout).unwrap();
    serde_json::from_str::<serde_json::Value>(&log).unwrap()[0]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Makes new refs of tenant acme with long names (`r{i}/a/a/…`, about
/// 250 bytes) from `body` until one is refused, which must be 507 (the
/// quota); how many went in, or `None` if `tries` all did.
fn new_refs_until_refused(server: &Server, body: &str, tries: usize) -> Option<usize> {
    let long = "a/".repeat(120) + "a";
    for i in 0..tries {
        let (status, answer) = http(
            &server.addr,
            "POST",
            &format!("/v1/acme/refs/r{i}/{long}"),
            Some(TOKEN_A),
            body.as_bytes(),
        );
        if status != 200 {
            assert_eq!(status, 507, "{}", String::from_utf8_lossy(&answer));
            return Some(i);
        }
    }
    None
}

/// A push refused past the quota removes the packs it committed; a ref
/// set meanwhile (another client, told by `has` that the server holds a
/// snapshot in such a pack) was left naming a missing object (audit round
/// 18). On a tenant with a quota a ref waits for the push in progress
/// (here, past `--timeout`: 503), on another it does not; and a new ref
/// takes room too (a tenant at its quota gets no new ref: 507).
#[test]
fn a_ref_waits_for_a_push_in_progress_on_a_tenant_with_a_quota() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path(), "quota = \"3MiB\"", &["--timeout", "2"]);
    let w = worktree(tmp.path(), "w", 1, 4);
    for (tenant, token) in [("acme", TOKEN_A), ("other", TOKEN_B)] {
        let o = run_env(
            &w,
            &["push", &server.url(tenant)],
            &[("SP_SYNC_TOKEN", token.into())],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let id = newest_id(&w);
    let body = format!("{{\"old\": null, \"new\": \"{id}\"}}");
    for (tenant, token, want) in [("acme", TOKEN_A, 503), ("other", TOKEN_B, 200)] {
        // A push in progress: a record of a 1000-byte chunk whose bytes
        // come one at a time, each well within --timeout, for 4 s.
        let mut push = TcpStream::connect(&server.addr).unwrap();
        let mut head = b"SPSYNCPK\x01\x01\x01\x00".to_vec();
        head.extend_from_slice(&[7u8; 32]);
        head.extend_from_slice(&[0xe8, 0x07, 0xe8, 0x07]);
        write!(
            push,
            "POST /v1/{tenant}/objects HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Transfer-Encoding: chunked\r\n\r\n{:x}\r\n",
            head.len()
        )
        .unwrap();
        push.write_all(&head).unwrap();
        push.write_all(b"\r\n").unwrap();
        let dribble = std::thread::spawn(move || {
            for _ in 0..8 {
                if push.write_all(b"1\r\nx\r\n").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        let (status, answer) = http(
            &server.addr,
            "POST",
            &format!("/v1/{tenant}/refs/later"),
            Some(token),
            body.as_bytes(),
        );
        assert_eq!(
            status,
            want,
            "{tenant}: {}",
            String::from_utf8_lossy(&answer)
        );
        dribble.join().unwrap();
    }
    // Once the push has ended, the ref goes in.
    let (status, answer) = http(
        &server.addr,
        "POST",
        "/v1/acme/refs/later",
        Some(TOKEN_A),
        body.as_bytes(),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    // Refs with long names take room: past the quota, no new one.
    assert!(
        new_refs_until_refused(&server, &body, 400).is_some(),
        "refs went past the quota"
    );
    let o = Command::new(common::bin())
        .args(["fsck", "--store"])
        .arg(server.data.join("acme"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn a_push_past_the_quota_is_refused_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path(), "quota = \"36MiB\"", &[]);
    let store = server.data.join("acme");
    quota_refuses_and_leaves_nothing(tmp.path(), &server, &|| {
        dir_bytes(&store.join("packs")).to_string()
    });
}

/// A server whose data is in a new S3 bucket (named after `tag`; moto),
/// tenant acme's quota `quota`: (the bucket, the server).
fn serve_s3_with_quota(tmp: &Path, tag: &str, quota: &str) -> (String, Server) {
    let b = bucket(tag);
    let server = serve_with(
        &format!("s3://{b}/served"),
        Some(&tokens_file(tmp, &format!("quota = \"{quota}\""))),
        "127.0.0.1:0",
        &s3_env(),
        &[],
    );
    (b, server)
}

/// The same with the server's data in S3 (moto).
#[test]
fn a_push_past_the_quota_is_refused_and_leaves_nothing_in_s3() {
    let tmp = tempfile::tempdir().unwrap();
    let (b, server) = serve_s3_with_quota(tmp.path(), "quota", "36MiB");
    // What is under the tenant's packs/: each key and its size.
    let listing = || {
        let ep = s3_endpoint();
        let (status, body) = http(
            ep.trim_start_matches("http://"),
            "GET",
            &format!("/{b}?list-type=2&prefix=served/acme/packs/"),
            None,
            b"",
        );
        assert_eq!(status, 200);
        let xml = String::from_utf8_lossy(&body).into_owned();
        assert!(!xml.contains("<IsTruncated>true"), "{xml}");
        let mut keys: Vec<String> = xml
            .split("<Contents>")
            .skip(1)
            .map(|c| {
                let field = |f: &str| {
                    c.split(&format!("<{f}>"))
                        .nth(1)
                        .and_then(|r| r.split(&format!("</{f}>")).next())
                        .unwrap_or("")
                        .to_string()
                };
                format!("{} {}", field("Key"), field("Size"))
            })
            .collect();
        keys.sort();
        assert!(!keys.is_empty(), "{xml}");
        keys.join("\n")
    };
    quota_refuses_and_leaves_nothing(tmp.path(), &server, &listing);
}

/// With the server's data in S3, new refs take room too: a tenant's refs
/// count against its quota (they did only in a directory: on S3 a tenant
/// could make refs without end), and at its quota it gets no new one (507)
/// while a ref it has still moves.
#[test]
fn new_refs_count_against_the_quota_in_s3() {
    let tmp = tempfile::tempdir().unwrap();
    let (_bucket, server) = serve_s3_with_quota(tmp.path(), "refquota", "4KiB");
    let w = worktree(tmp.path(), "w", 0, 5);
    let o = run_env(
        &w,
        &["push", &server.url("acme")],
        &[("SP_SYNC_TOKEN", TOKEN_A.into())],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = newest_id(&w);
    let body = format!("{{\"old\": null, \"new\": \"{id}\"}}");
    // Each ref about 310 bytes: the quota's 4 KiB less the snapshot's few
    // hundred bytes of objects hold about a dozen of them.
    let n = new_refs_until_refused(&server, &body, 40).expect("refs went past the quota");
    let long = "a/".repeat(120) + "a";
    assert!((6..14).contains(&n), "refused after {n} refs");
    // A ref the tenant has still moves (to the same snapshot: old given).
    let moved = format!("{{\"old\": \"{id}\", \"new\": \"{id}\"}}");
    let (status, answer) = http(
        &server.addr,
        "POST",
        &format!("/v1/acme/refs/r0/{long}"),
        Some(TOKEN_A),
        moved.as_bytes(),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
}

/// A tenant with a 36 MiB quota takes a 1 MiB push, refuses a 40 MiB one
/// (bigger than a pack, so a committed pack must go too) leaving
/// `stored()` as it was, and another tenant without a quota takes it.
fn quota_refuses_and_leaves_nothing(tmp: &Path, server: &Server, stored: &dyn Fn() -> String) {
    let small = worktree(tmp, "small", 1, 1);
    let o = run_env(
        &small,
        &["push", &server.url("acme")],
        &[("SP_SYNC_TOKEN", TOKEN_A.into())],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let before = stored();
    // Over the quota, and bigger than a pack (32 MiB): a pack fills up and
    // is committed before the quota is reached; it must go too.
    let big = worktree(tmp, "big", 40, 2);
    let o = run_env(
        &big,
        &["push", &server.url("acme")],
        &[("SP_SYNC_TOKEN", TOKEN_A.into())],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("quota exceeded"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(stored(), before, "nothing stored");
    // No room is final: the push is not sent again (resumed, or in full
    // when the remote has the ref it builds on).
    std::fs::write(small.join("more.bin"), bytes(40 << 20, 3)).unwrap();
    ok(&small, &["snapshot", "-q"]);
    let o = run_env(
        &small,
        &["push", &server.url("acme"), "-v"],
        &[("SP_SYNC_TOKEN", TOKEN_A.into())],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        !err.contains("negotiating in full") && !err.contains("resuming"),
        "{err}"
    );
    assert_eq!(stored(), before, "nothing stored");
    // The other tenant has no quota.
    let o = run_env(
        &big,
        &["push", &server.url("other")],
        &[("SP_SYNC_TOKEN", TOKEN_B.into())],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn a_ref_under_an_existing_ref_is_a_conflict() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path(), "", &[]);
    let w = worktree(tmp.path(), "w", 1, 3);
    let o = run_env(
        &w,
        &["push", &server.url("acme")],
        &[("SP_SYNC_TOKEN", TOKEN_A.into())],
    );
    assert!(o.status.success());
    let (_, b) = http(&server.addr, "GET", "/v1/acme/refs", Some(TOKEN_A), b"");
    let refs: serde_json::Value = serde_json::from_slice(&b).unwrap();
    let id = refs[0]["id"].as_str().unwrap().to_string();
    let body = format!("{{\"old\": null, \"new\": \"{id}\"}}");
    for name in ["main/sub", "main/a/b"] {
        let (s, b) = http(
            &server.addr,
            "POST",
            &format!("/v1/acme/refs/{name}"),
            Some(TOKEN_A),
            body.as_bytes(),
        );
        assert_eq!(s, 409, "{name}: {}", String::from_utf8_lossy(&b));
    }
}

#[test]
fn gc_runs_on_a_served_store() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path(), "", &[]);
    let w = worktree(tmp.path(), "w", 1, 4);
    let env = [("SP_SYNC_TOKEN", TOKEN_A.to_string())];
    assert!(
        run_env(&w, &["push", &server.url("acme")], &env)
            .status
            .success()
    );
    // Objects no ref reaches.
    let junk: Vec<StoredObject> = (0..5u64)
        .map(|i| {
            let d = bytes(100_000, 900 + i);
            prepare(
                ObjectType::Chunk,
                ObjectId::compute(ObjectType::Chunk, &d),
                &d,
                1,
            )
        })
        .collect();
    let (s, _) = http(
        &server.addr,
        "POST",
        "/v1/acme/objects",
        Some(TOKEN_A),
        &pack(&junk),
    );
    assert_eq!(s, 200);
    // A push's objects come before the ref that reaches them, in another
    // request: gc keeps what came in the last hour.
    let (s, b) = http(&server.addr, "POST", "/v1/acme/gc", Some(TOKEN_A), b"");
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    let rep: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(rep["removed_objects"], 0, "{rep}");
    assert_eq!(rep["kept_recent"], 5, "{rep}");
    // An hour later they go.
    let idx: Vec<std::path::PathBuf> = walk_files(&tmp.path().join("data"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "idx"))
        .collect();
    assert!(!idx.is_empty());
    for p in &idx {
        let f = std::fs::File::options().write(true).open(p).unwrap();
        f.set_modified(std::time::SystemTime::now() - Duration::from_secs(7200))
            .unwrap();
    }
    let (s, b) = http(&server.addr, "POST", "/v1/acme/gc", Some(TOKEN_A), b"");
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    let rep: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(rep["removed_objects"], 5, "{rep}");
    // Another tenant's token cannot gc it.
    let (s, _) = http(&server.addr, "POST", "/v1/acme/gc", Some(TOKEN_B), b"");
    assert_eq!(s, 404);
    // The server goes on serving the store: a pull gets everything.
    let fresh = tmp.path().join("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    ok(&fresh, &["init"]);
    let out = tmp.path().join("out");
    let o = run_env(
        &fresh,
        &[
            "pull",
            &server.url("acme"),
            "--restore",
            out.to_str().unwrap(),
        ],
        &env,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read(out.join("data.bin")).unwrap(),
        std::fs::read(w.join("data.bin")).unwrap()
    );
    ok(
        tmp.path(),
        &[
            "fsck",
            "--read-data",
            "--store",
            server.data.join("acme").to_str().unwrap(),
        ],
    );
}

#[test]
fn client_errors_say_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path(), "", &[]);
    let w = worktree(tmp.path(), "w", 1, 6);
    let o = run_env(
        &w,
        &["push", &server.url("acme")],
        &[("SP_SYNC_TOKEN", "wrong-token-0123456789".into())],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err.contains("refused the token") && err.contains("SP_SYNC_TOKEN"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let o = run_env(
        &w,
        &["push", &server.url("acme")],
        &[("SP_SYNC_TOKEN", TOKEN_B.into())],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("tenant not found for this token"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn the_client_gives_up_on_a_server_that_never_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Accepts, reads, never answers.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming() {
            let Ok(mut s) = s else { break };
            let mut buf = [0u8; 4096];
            let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
            let _ = s.read(&mut buf);
            held.push(s);
        }
    });
    let w = worktree(tmp.path(), "w", 1, 7);
    let t = Instant::now();
    let o = run_env(
        &w,
        &["pull", &format!("http://{addr}/acme")],
        &[("SP_SYNC_HTTP_TIMEOUT", "1".into())],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t.elapsed()
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no answer"), "{err}");
}

/// Every file below `dir`.
fn walk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Server gc keeps what the last hour's packs reach, not only what they
/// hold: a push sends only what the server says it lacks, so a snapshot
/// uploaded before its ref moves (here by a push that was refused) may
/// reach old objects no ref reaches any more. They stay, and the ref that
/// then moves onto that snapshot reaches a whole one.
#[test]
fn server_gc_keeps_what_a_recent_snapshot_reaches() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path(), "", &[]);
    let env = [("SP_SYNC_TOKEN", TOKEN_A.to_string())];
    let url = server.url("acme");
    let w = tmp.path().join("w");
    std::fs::create_dir_all(w.join("files/sub")).unwrap();
    std::fs::write(w.join("files/sub/data"), bytes(300_000, 7)).unwrap();
    std::fs::write(w.join("files/a"), "a\n").unwrap();
    std::fs::create_dir_all(w.join("other")).unwrap();
    std::fs::write(w.join("other/o"), "o\n").unwrap();
    ok(&w, &["init", "-q"]);
    let push = |args: &[&str]| run_env(&w, args, &env);
    ok(&w, &["snapshot", "files", "--ref", "feat", "-q"]);
    assert!(push(&["push", &url, "feat"]).status.success());
    let id = |name: &str| {
        ok(&w, &["ref", "list"])
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .and_then(|l| l.split_whitespace().next())
            .unwrap()
            .to_string()
    };
    // The ref goes on the server: its objects are reached by nothing.
    let (s, b) = http(
        &server.addr,
        "DELETE",
        "/v1/acme/refs/feat",
        Some(TOKEN_A),
        format!("{{\"old\": \"{}\"}}", id("feat")).as_bytes(),
    );
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    for p in walk_files(&server.data.join("acme")) {
        if p.extension().is_some_and(|e| e == "idx") {
            let f = std::fs::File::options().write(true).open(&p).unwrap();
            f.set_modified(std::time::SystemTime::now() - Duration::from_secs(7200))
                .unwrap();
        }
    }
    // A new snapshot of the same files plus one: its root tree is new, the
    // rest old. Its push is refused (someone made feat2 first), after its
    // new objects went up.
    std::fs::write(w.join("files/new"), "new\n").unwrap();
    ok(&w, &["snapshot", "files", "--ref", "feat2", "-q"]);
    ok(&w, &["snapshot", "other", "--ref", "other", "-q"]);
    assert!(push(&["push", &url, "other"]).status.success());
    let (s, _) = http(
        &server.addr,
        "POST",
        "/v1/acme/refs/feat2",
        Some(TOKEN_A),
        format!(
            "{{\"old\": null, \"new\": \"{}\", \"force\": false}}",
            id("other")
        )
        .as_bytes(),
    );
    assert_eq!(s, 200);
    assert!(!push(&["push", &url, "feat2"]).status.success());
    let (s, b) = http(&server.addr, "POST", "/v1/acme/gc", Some(TOKEN_A), b"");
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    // The same files on top of the server's feat2: the push sends only the
    // new snapshot object, and the ref moves.
    ok(&w, &["ref", "set", "feat2", "other", "-q"]);
    ok(&w, &["snapshot", "files", "--ref", "feat2", "-q"]);
    let o = push(&["push", &url, "feat2"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let store = server.data.join("acme");
    ok(
        &w,
        &["--store", store.to_str().unwrap(), "fsck", "--read-data"],
    );
}

/// The same for a file's chunk list: a push cut off after its first part
/// left, in a recent pack, a new list node that reaches old chunks no ref
/// reaches any more. gc keeps those chunks too, so the push run again
/// (which does not send what the server has) moves the ref onto a whole
/// snapshot.
#[test]
fn server_gc_keeps_the_old_chunks_a_recent_chunk_list_reaches() {
    let tmp = tempfile::tempdir().unwrap();
    let env = [("SP_SYNC_TOKEN", TOKEN_A.to_string())];
    let w = tmp.path().join("w");
    std::fs::create_dir_all(w.join("src")).unwrap();
    let mut file = bytes(10 << 20, 31);
    std::fs::write(w.join("src/a.bin"), &file).unwrap();
    ok(&w, &["init", "-q"]);
    let old = ok(&w, &["snapshot", "src", "-q"]).trim().to_string();
    let server = start(tmp.path(), "", &[]);
    let url = server.url("acme");
    assert!(run_env(&w, &["push", &url], &env).status.success());
    // That history goes, on the server and here, and an hour passes.
    let (s, b) = http(
        &server.addr,
        "DELETE",
        "/v1/acme/refs/main",
        Some(TOKEN_A),
        format!("{{\"old\": \"{old}\"}}").as_bytes(),
    );
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    drop(server);
    for p in walk_files(&tmp.path().join("data/acme")) {
        if p.extension().is_some_and(|e| e == "idx") {
            let f = std::fs::File::options().write(true).open(&p).unwrap();
            f.set_modified(std::time::SystemTime::now() - Duration::from_secs(7200))
                .unwrap();
        }
    }
    ok(&w, &["ref", "delete", "main", "-q"]);
    // The file grows by 100 bytes (a new last chunk and a new list of the
    // old chunks), and 40 MiB of new data follow.
    file.extend_from_slice(&bytes(100, 32));
    std::fs::write(w.join("src/a.bin"), &file).unwrap();
    std::fs::write(w.join("src/b.bin"), bytes(40 << 20, 33)).unwrap();
    ok(&w, &["snapshot", "src", "-q"]);
    // The push is cut off after its first part (a server that takes no
    // request over 20 MB; a dropped connection does the same).
    let server = start(tmp.path(), "", &["--max-body", "20000000"]);
    let url = server.url("acme");
    assert!(!run_env(&w, &["push", &url], &env).status.success());
    drop(server);
    let server = start(tmp.path(), "", &[]);
    let url = server.url("acme");
    let (s, b) = http(&server.addr, "POST", "/v1/acme/gc", Some(TOKEN_A), b"");
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    let o = run_env(&w, &["push", &url], &env);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let store = server.data.join("acme");
    ok(
        &w,
        &["--store", store.to_str().unwrap(), "fsck", "--read-data"],
    );
}

/// A tokens file whose value has the wrong type named it in the error:
/// the token itself (audit round 18). Now the place, never the value; and
/// a key the file does not know (`token =`) is an error, not a tenant no
/// token opens.
#[test]
fn a_bad_tokens_file_never_shows_a_token() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = "SECRETbadtype12345";
    for (body, want) in [
        (format!("[tenants.a]\ntokens = \"{secret}\"\n"), "line 2"),
        (
            format!("[tenants.a]\nread_tokens = \"{secret}\"\n"),
            "line 2",
        ),
        (
            format!("[tenants.a]\ntoken = [\"{secret}\"]\n"),
            "unknown field `token`",
        ),
    ] {
        let f = tmp.path().join("tokens.toml");
        std::fs::write(&f, &body).unwrap();
        let o = Command::new(common::bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(tmp.path().join("data"))
            .arg("--tokens")
            .arg(&f)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(!err.contains(secret), "{err}");
        assert!(err.contains(want), "{err}");
    }
}

/// Remote URLs (audit round 18): a scheme in capitals is that scheme, not a
/// path (`push HTTP://…` wrote a store in ./HTTP:/…); a file:// URL with a
/// host or a user part is refused, without showing the password; one
/// sp-sync does not know is refused.
#[test]
fn remote_urls_are_read_by_their_scheme_whatever_its_case() {
    let tmp = tempfile::tempdir().unwrap();
    let w = worktree(tmp.path(), "w", 1, 9);
    for (url, want) in [
        (
            "HTTP://u:SECRETpw6@127.0.0.1:9/acme",
            "credentials do not go",
        ),
        ("file://u:SECRETpw6@localhost/tmp/x", "names a host"),
        ("file://elsewhere/tmp/x", "names a host"),
        ("ftp://127.0.0.1/x", "not a remote sp-sync knows"),
    ] {
        for args in [vec!["remote", "add", "r", url], vec!["push", url]] {
            let o = run_env(&w, &args, &[]);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
            assert!(
                err.contains(want) && !err.contains("SECRETpw6"),
                "{args:?}: {err}"
            );
        }
    }
    // HTTP:// is http: a server that is not there, not a directory here.
    let o = run_env(
        &w,
        &["push", "HTTP://127.0.0.1:9/acme"],
        &[("SP_SYNC_HTTP_RETRIES", "0".into())],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(!w.join("HTTP:").exists());
    // file://localhost/PATH and file:///PATH are this machine's.
    let remote = tmp.path().join("remote");
    ok(
        &w,
        &["push", &format!("file://localhost{}", remote.display())],
    );
    ok(&w, &["push", &format!("FILE://{}", remote.display())]);
    assert!(remote.join("refs/main").is_file());
}

/// A server that lies, on a port of its own: `refs` answers `refs_json`,
/// `fetch` answers an endless stream of valid chunk records (closing after
/// 256 MiB). Returns its address.
fn lying_server(refs_json: String) -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            let refs = refs_json.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                if r.read_line(&mut line).is_err() {
                    return;
                }
                // (Headers, then a body the answer does not depend on.)
                let mut len = 0usize;
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).is_err() || h.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; len];
                let _ = r.read_exact(&mut body);
                if line.contains("/fetch") {
                    let _ = s.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                    );
                    let Ok(mut w) = PackWriter::new(s) else {
                        return;
                    };
                    for i in 0..256u64 {
                        let data = bytes(1 << 20, 1000 + i);
                        let id = ObjectId::compute(ObjectType::Chunk, &data);
                        if w.add(&prepare(ObjectType::Chunk, id, &data, 1)).is_err() {
                            return;
                        }
                    }
                } else {
                    let b = if line.contains("/refs") {
                        refs.clone()
                    } else {
                        "[]".into()
                    };
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
                        b.len()
                    );
                }
            });
        }
    });
    addr
}

/// `pull` from a server that lies (audit round 18): a ref name no store
/// could hold (escape sequences, `..`) is refused, never printed raw; a
/// fetch answered without end no longer fills memory: more objects than
/// were asked for fail the pull. No ref moves.
#[test]
fn pull_refuses_what_a_lying_server_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let w = worktree(tmp.path(), "w", 1, 11);
    let id = "ab".repeat(32);
    let evil = lying_server(format!(
        "[{{\"name\":\"cache/k\\u001b[31mRED\\nerror: FAKE\",\"id\":\"{id}\"}}]"
    ));
    let o = run_env(&w, &["pull", &format!("http://{evil}/t")], &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("invalid ref name") && !err.contains('\u{1b}'),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    let endless = lying_server(format!("[{{\"name\":\"main\",\"id\":\"{id}\"}}]"));
    let start = Instant::now();
    let o = Command::new(common::bin())
        .args(["pull", &format!("http://{endless}/t")])
        .current_dir(&w)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("more objects than were asked for"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(60));
    assert!(
        ok(&w, &["ref", "list"])
            .lines()
            .all(|l| !l.contains("remotes"))
    );
}

/// One object asked for many times in one fetch made a small request cost
/// gigabytes of answer, held by a client that never reads (audit round
/// 18): an id asked for twice is refused.
#[test]
fn a_fetch_asking_twice_for_one_object_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path(), "", &[]);
    let w = worktree(tmp.path(), "w", 1, 12);
    let o = run_env(
        &w,
        &["push", &server.url("acme")],
        &[("SP_SYNC_TOKEN", TOKEN_A.into())],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let log = String::from_utf8(run_env(&w, &["log", "-n", "1", "--json"], &[]).stdout).unwrap();
    let id = ObjectId::from_hex(
        serde_json::from_str::<serde_json::Value>(&log).unwrap()[0]["id"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let mut one = vec![ObjectType::Snapshot as u8];
    one.extend_from_slice(id.as_bytes());
    let (status, _) = http(&server.addr, "POST", "/v1/acme/fetch", Some(TOKEN_A), &one);
    assert_eq!(status, 200);
    let twice = [one.clone(), one].concat();
    let (status, answer) = http(
        &server.addr,
        "POST",
        "/v1/acme/fetch",
        Some(TOKEN_A),
        &twice,
    );
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&answer));
    assert!(String::from_utf8_lossy(&answer).contains("more than once"));
}
