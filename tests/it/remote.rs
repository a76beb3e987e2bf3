//! Push and pull through the three kinds of remote — a path, a real
//! `sp-sync serve` process, a real S3-compatible server (moto) — with
//! concurrency, faults and hostile requests.

use crate::common;
use crate::net;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{bytes, describe, dir_bytes, ok};
use net::{Server, bucket, http, ok_env, run_env, s3_env, serve};
use serde_json::Value;

const TOKEN_A: &str = "token-for-acme-0123456789";
const TOKEN_B: &str = "token-for-other-0123456789";

fn tokens_file(dir: &Path) -> PathBuf {
    let p = dir.join("tokens.toml");
    std::fs::write(
        &p,
        format!(
            "[tenants.acme]\ntokens = [\"{TOKEN_A}\"]\n[tenants.other]\ntokens = [\"{TOKEN_B}\"]\n"
        ),
    )
    .unwrap();
    p
}

/// A working tree with a store: small files, a multi-chunk file, a symlink.
fn worktree(root: &Path, name: &str, seed: u64) -> PathBuf {
    let w = root.join(name);
    std::fs::create_dir_all(w.join("services/agents")).unwrap();
    std::fs::create_dir_all(w.join("services/skills/s1")).unwrap();
    std::fs::write(w.join("services/agents/bot.md"), format!("# bot {seed}\n")).unwrap();
    std::fs::write(w.join("services/skills/s1/SKILL.md"), "skill\n".repeat(100)).unwrap();
    std::fs::write(w.join("services/model.bin"), bytes(5 << 20, seed)).unwrap();
    std::os::unix::fs::symlink("agents/bot.md", w.join("services/link")).unwrap();
    ok(&w, &["init"]);
    w
}

fn described(dir: &Path) -> BTreeMap<Vec<u8>, String> {
    let mut d = describe(dir);
    d.retain(|k, _| !k.starts_with(b".sp-sync"));
    d
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Push from one working tree, pull into a fresh one, restore: identical.
fn round_trip(tmp: &Path, url: &str, env: &[(&str, String)]) {
    let a = worktree(tmp, "a", 1);
    let id = ok(&a, &["snapshot", "-m", "one"]).trim().to_string();
    ok_env(&a, &["remote", "add", "origin", url], env);
    let v = json(&ok_env(&a, &["push", "--json"], env));
    assert_eq!(v["ref"], "main");
    assert_eq!(v["id"], id);
    assert!(v["objects_sent"].as_u64().unwrap() >= 6, "{v}");
    assert_eq!(
        ok(&a, &["ref", "list"])
            .lines()
            .filter(|l| l.ends_with("remotes/origin/main"))
            .count(),
        1
    );
    // A second push sends nothing.
    let v = json(&ok_env(&a, &["push", "--json"], env));
    assert_eq!(v["objects_sent"], 0, "{v}");

    let b = tmp.join("b");
    std::fs::create_dir_all(&b).unwrap();
    ok(&b, &["init"]);
    ok_env(&b, &["remote", "add", "origin", url], env);
    let target = tmp.join("restored");
    let v = json(&ok_env(
        &b,
        &["pull", "--json", "--restore", target.to_str().unwrap()],
        env,
    ));
    assert_eq!(v["id"], id);
    assert!(v["objects_received"].as_u64().unwrap() >= 6);
    assert_eq!(
        described(&a.join("services")),
        described(&target.join("services"))
    );
    ok(&b, &["fsck", "--read-data"]);
    assert_eq!(ok(&b, &["log", "--json"]).matches(&id).count(), 1);

    // An incremental change travels as just the difference.
    std::fs::write(a.join("services/agents/bot.md"), "# bot v2\n").unwrap();
    let id2 = ok(&a, &["snapshot", "-m", "two"]).trim().to_string();
    let v = json(&ok_env(&a, &["push", "--json"], env));
    let sent = v["objects_sent"].as_u64().unwrap();
    assert!((2..=8).contains(&sent), "an edit sent {sent} objects: {v}");
    let v = json(&ok_env(&b, &["pull", "--json"], env));
    assert_eq!(v["id"], id2);
    assert!(v["objects_received"].as_u64().unwrap() <= 8);
    let t2 = tmp.join("restored2");
    ok(&b, &["restore", "main", t2.to_str().unwrap()]);
    assert_eq!(
        described(&a.join("services")),
        described(&t2.join("services"))
    );
}

#[test]
fn round_trip_through_a_path_remote() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("remote-store");
    round_trip(tmp.path(), remote.to_str().unwrap(), &[]);
    ok(
        tmp.path(),
        &["fsck", "--read-data", "--store", remote.to_str().unwrap()],
    );
    // file:// names the same store.
    let c = tmp.path().join("c");
    std::fs::create_dir_all(&c).unwrap();
    ok(&c, &["init"]);
    ok(&c, &["pull", &format!("file://{}", remote.display())]);
    assert!(
        !ok(&c, &["ref", "list"]).contains("remotes/"),
        "no tracking refs for an unnamed remote"
    );
}

#[test]
fn round_trip_through_http() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server-data");
    let mut server = serve(
        data.to_str().unwrap(),
        Some(&tokens_file(tmp.path())),
        "127.0.0.1:0",
        &[],
    );
    round_trip(
        tmp.path(),
        &server.url("acme"),
        &[("SP_SYNC_TOKEN", TOKEN_A.into())],
    );
    // SIGTERM: the server finishes and exits with status 0; what it stored
    // passes fsck.
    let status = stop_with_sigterm(&mut server);
    assert!(status.success(), "serve exited with {status} on SIGTERM");
    ok(
        tmp.path(),
        &[
            "fsck",
            "--read-data",
            "--store",
            data.join("acme").to_str().unwrap(),
        ],
    );
}

/// `remote add NAME URL --token-env VAR`: the token is read from VAR when
/// the remote is used, and only the variable's name is stored.
#[test]
fn a_remote_token_from_the_variable_its_config_names() {
    let tmp = tempfile::tempdir().unwrap();
    let server = serve(
        tmp.path().join("server-data").to_str().unwrap(),
        Some(&tokens_file(tmp.path())),
        "127.0.0.1:0",
        &[],
    );
    let w = tmp.path().join("w");
    std::fs::create_dir_all(&w).unwrap();
    std::fs::write(w.join("a.md"), "a\n").unwrap();
    ok(&w, &["init"]);
    ok(&w, &["snapshot", "-q"]);
    ok(
        &w,
        &[
            "remote",
            "add",
            "origin",
            &server.url("acme"),
            "--token-env",
            "ACME_SYNC_TOKEN",
        ],
    );
    let config = std::fs::read_to_string(w.join(".sp-sync/config.toml")).unwrap();
    assert!(
        config.contains("token_env = \"ACME_SYNC_TOKEN\"") && !config.contains(TOKEN_A),
        "{config}"
    );
    let no_token = [("SP_SYNC_TOKEN", String::new())];
    let o = run_env(&w, &["push", "origin"], &no_token);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("refused the token"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    ok_env(
        &w,
        &["push", "origin", "-q"],
        &[
            ("SP_SYNC_TOKEN", String::new()),
            ("ACME_SYNC_TOKEN", TOKEN_A.into()),
        ],
    );
    // Only an HTTP remote takes a token.
    let o = run_env(
        &w,
        &["remote", "add", "disk", "/tmp/x", "--token-env", "T"],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--token-env"));
}

#[test]
fn round_trip_through_s3() {
    let tmp = tempfile::tempdir().unwrap();
    let b = bucket("rt");
    round_trip(tmp.path(), &format!("s3://{b}/stores/main"), &s3_env());
    // A prefix the object store would write under another name (here
    // `r1%7Ex`, which no listing of `r1~x` finds) is refused before any
    // request.
    let w = tmp.path().join("odd");
    std::fs::create_dir_all(&w).unwrap();
    std::fs::write(w.join("f"), "f\n").unwrap();
    ok(&w, &["init", "-q"]);
    ok(&w, &["snapshot", "-q"]);
    for prefix in ["r1~x", "p//q", "d/../e"] {
        let o = run_env(&w, &["push", &format!("s3://{b}/{prefix}")], &s3_env());
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{prefix}: {err}");
        assert!(err.contains("would be stored as"), "{prefix}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    // And a server whose data lives in S3.
    let server = serve(
        &format!("s3://{b}/served"),
        Some(&tokens_file(tmp.path())),
        "127.0.0.1:0",
        &s3_env(),
    );
    let t2 = tmp.path().join("second");
    std::fs::create_dir_all(&t2).unwrap();
    let mut env = s3_env();
    env.push(("SP_SYNC_TOKEN", TOKEN_A.into()));
    round_trip(&t2, &server.url("acme"), &env);
    // It stops on SIGTERM like a server with directory data (it panicked,
    // dropping the S3 client's runtime from async code).
    let mut server = server;
    let status = stop_with_sigterm(&mut server);
    assert!(status.success(), "serve exited with {status} on SIGTERM");
}

/// Sends SIGTERM to `server` and waits (20 s at most) for it to exit.
fn stop_with_sigterm(server: &mut Server) -> std::process::ExitStatus {
    let st = std::process::Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "serve ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn requests_grow_with_the_depth_of_the_change_not_the_size_of_the_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let server = serve(
        tmp.path().join("d").to_str().unwrap(),
        None,
        "127.0.0.1:0",
        &[],
    );
    let mut counts = Vec::new();
    for (i, files) in [200usize, 8000].into_iter().enumerate() {
        let w = tmp.path().join(format!("w{i}"));
        for f in 0..files {
            let d = w.join(format!("dir{:03}", f % 100));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(format!("f{f}.md")), format!("{f}\n")).unwrap();
        }
        ok(&w, &["init"]);
        ok(&w, &["snapshot"]);
        let url = server.url(&format!("t{i}"));
        ok(&w, &["push", &url]);
        std::fs::write(w.join("dir042/f42.md"), "changed\n").unwrap();
        ok(&w, &["snapshot"]);
        let v = json(&ok(&w, &["push", &url, "--json"]));
        assert!(v["objects_sent"].as_u64().unwrap() <= 6, "{v}");
        counts.push(v["requests"].as_u64().unwrap());
    }
    assert!(
        counts[1] <= counts[0] + 2,
        "requests for 200 files: {}, for 8000: {}",
        counts[0],
        counts[1]
    );
    assert!(counts[1] <= 12, "{counts:?}");
}

#[test]
fn fast_forward_rules_for_push_and_pull() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("r");
    let a = worktree(tmp.path(), "a", 1);
    ok(&a, &["snapshot"]);
    ok(&a, &["remote", "add", "origin", remote.to_str().unwrap()]);
    ok(&a, &["push"]);
    let b = tmp.path().join("b");
    std::fs::create_dir_all(&b).unwrap();
    ok(&b, &["init"]);
    ok(&b, &["remote", "add", "origin", remote.to_str().unwrap()]);
    ok(&b, &["pull"]);
    // Both move on from the same parent.
    std::fs::write(a.join("services/agents/bot.md"), "a\n").unwrap();
    ok(&a, &["snapshot"]);
    std::fs::create_dir_all(b.join("x")).unwrap();
    std::fs::write(b.join("x/y"), "b\n").unwrap();
    let b_id = ok(&b, &["snapshot"]).trim().to_string();
    ok(&a, &["push"]);
    let o = run_env(&b, &["push"], &[]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("fast-forward"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    // pull cannot fast-forward b's main: it fetches, moves the tracking ref, warns, exits 0.
    let o = run_env(&b, &["pull"], &[]);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("warning"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let refs = ok(&b, &["ref", "list"]);
    assert!(
        refs.contains(&format!("{b_id} main")),
        "local main stays: {refs}"
    );
    // A push of several refs moves none when one would not fast-forward
    // (as git push --atomic): the new ref is not created either.
    ok(&b, &["ref", "set", "fresh", "main"]);
    let o = run_env(&b, &["push", "origin", "fresh", "main"], &[]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("ref main") && err.contains("fast-forward"),
        "{err}"
    );
    let remote_refs = ok(
        tmp.path(),
        &["ref", "list", "--store", remote.to_str().unwrap()],
    );
    assert!(!remote_refs.contains("fresh"), "{remote_refs}");
    ok(&b, &["ref", "delete", "fresh"]);
    // pull --restore writes nothing then: the working tree follows main.
    let o = run_env(&b, &["pull", "--restore", "."], &[]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("nothing restored"), "{err}");
    assert!(
        !b.join("services").exists(),
        "the remote's files were restored"
    );
    assert_eq!(std::fs::read_to_string(b.join("x/y")).unwrap(), "b\n");
    // --force replaces the remote's history, and says so (as git does).
    let o = run_env(&b, &["push", "--force"], &[]);
    assert_eq!(o.status.code(), Some(0));
    let said =
        String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout);
    assert!(
        said.contains(&format!(" -> {} main (forced update)", &b_id[..16])),
        "{said}"
    );
    let remote_main = ok(
        tmp.path(),
        &["ref", "list", "--store", remote.to_str().unwrap()],
    );
    assert!(remote_main.contains(&b_id), "{remote_main}");
    // A push that moves nothing off its history is no forced update, even
    // with --force.
    std::fs::write(b.join("x/y"), "b2\n").unwrap();
    ok(&b, &["snapshot", "-q"]);
    let o = run_env(&b, &["push", "--force", "--json"], &[]);
    assert_eq!(o.status.code(), Some(0));
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(!said.contains("forced"), "{said}");
    let o = run_env(&b, &["push", "--force", "--json"], &[]);
    assert!(!String::from_utf8_lossy(&o.stdout).contains("forced"));
    // Unknown ref or remote: exit 1.
    let o = run_env(&b, &["push", "origin", "nosuchref"], &[]);
    assert_eq!(o.status.code(), Some(1));
    let o = run_env(&b, &["push", "nosuchremote"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown remote"));
}

/// Makes `n` working trees that each pulled `main` from `url` and added a
/// snapshot of their own on top.
fn diverging_clients(tmp: &Path, url: &str, n: usize, env: &[(&str, String)]) -> Vec<PathBuf> {
    let base = worktree(tmp, "base", 0);
    ok(&base, &["snapshot"]);
    ok_env(&base, &["push", url], env);
    (0..n)
        .map(|i| {
            let w = tmp.join(format!("client{i}"));
            std::fs::create_dir_all(&w).unwrap();
            ok(&w, &["init"]);
            ok_env(&w, &["pull", url], env);
            std::fs::write(w.join(format!("mine-{i}.txt")), format!("client {i}\n")).unwrap();
            ok(&w, &["snapshot"]);
            w
        })
        .collect()
}

fn race(clients: &[PathBuf], args: Vec<String>, env: &[(&str, String)]) -> (usize, Vec<String>) {
    let handles: Vec<_> = clients
        .iter()
        .map(|w| {
            let mut c = std::process::Command::new(common::bin());
            c.args(&args)
                .current_dir(w)
                .env("SP_SYNC_CACHE_DIR", common::cache_dir())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            for (k, v) in env {
                c.env(k, v);
            }
            c.spawn().unwrap()
        })
        .collect();
    let mut wins = 0;
    let mut errors = Vec::new();
    for h in handles {
        let o = h.wait_with_output().unwrap();
        if o.status.success() {
            wins += 1;
        } else {
            assert_eq!(o.status.code(), Some(1));
            errors.push(String::from_utf8_lossy(&o.stderr).into_owned());
        }
    }
    (wins, errors)
}

#[test]
fn concurrent_pushes_to_one_server() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = serve(data.to_str().unwrap(), None, "127.0.0.1:0", &[]);
    let url = server.url("acme");
    // 32 clients, 32 distinct refs: all succeed.
    let clients: Vec<PathBuf> = (0..32)
        .map(|i| {
            let w = tmp.path().join(format!("c{i}"));
            std::fs::create_dir_all(&w).unwrap();
            std::fs::write(w.join("file.txt"), format!("client {i}\n").repeat(1000 + i)).unwrap();
            ok(&w, &["init"]);
            ok(&w, &["snapshot", "--ref", &format!("c{i}")]);
            w
        })
        .collect();
    let handles: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(i, w)| {
            std::process::Command::new(common::bin())
                .args(["push", &url, &format!("c{i}")])
                .current_dir(w)
                .env("SP_SYNC_CACHE_DIR", common::cache_dir())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for h in handles {
        let o = h.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let (status, body) = http(&server.addr, "GET", "/v1/acme/refs", None, b"");
    assert_eq!(status, 200);
    assert_eq!(
        json(&String::from_utf8_lossy(&body))
            .as_array()
            .unwrap()
            .len(),
        32
    );

    // 8 clients race to move `main` from the same parent: exactly one wins.
    let racers = diverging_clients(&tmp.path().join("race"), &url, 8, &[]);
    let (wins, errors) = race(&racers, vec!["push".into(), url.clone()], &[]);
    assert_eq!(wins, 1, "{errors:?}");
    for e in &errors {
        assert!(e.contains("fast-forward"), "{e}");
    }
    ok(
        tmp.path(),
        &[
            "fsck",
            "--read-data",
            "--store",
            data.join("acme").to_str().unwrap(),
        ],
    );
}

#[test]
fn the_same_race_on_s3_has_one_winner() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("s3://{}/race", bucket("race"));
    let env = s3_env();
    let racers = diverging_clients(tmp.path(), &url, 8, &env);
    let (wins, errors) = race(&racers, vec!["push".into(), url.clone()], &env);
    assert_eq!(wins, 1, "{errors:?}");
    for e in &errors {
        assert!(
            e.contains("fast-forward") || e.contains("changed concurrently"),
            "{e}"
        );
    }
    // Every racer's objects are there and verify; the ref names the winner.
    let check = tmp.path().join("check");
    std::fs::create_dir_all(&check).unwrap();
    ok(&check, &["init"]);
    ok_env(&check, &["pull", &url], &env);
    ok(&check, &["fsck", "--read-data"]);
}

/// A store with `mib` MiB of incompressible data in 2 MiB files.
fn big_worktree(root: &Path, mib: usize) -> PathBuf {
    let w = root.join("big");
    std::fs::create_dir_all(w.join("data")).unwrap();
    for i in 0..mib / 2 {
        std::fs::write(
            w.join(format!("data/f{i:04}.bin")),
            bytes(2 << 20, 1000 + i as u64),
        )
        .unwrap();
    }
    ok(&w, &["init"]);
    ok(&w, &["snapshot"]);
    w
}

#[test]
fn server_killed_mid_push_then_the_repeated_push_resends_only_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let w = big_worktree(tmp.path(), 200);
    let data = tmp.path().join("data");
    let port = net::free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut server = serve(data.to_str().unwrap(), None, &listen, &[]);
    let url = server.url("acme");
    let total = dir_bytes(&w.join(".sp-sync/packs"));
    let env = [("SP_SYNC_PUSH_RETRIES", "0".to_string())];
    let mut child = std::process::Command::new(common::bin())
        .args(["push", &url])
        .current_dir(&w)
        .env("SP_SYNC_CACHE_DIR", common::cache_dir())
        .env("SP_SYNC_PUSH_RETRIES", "0")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Kill the server once about three quarters have arrived.
    let received = || {
        let d = data.join("acme");
        if d.exists() { dir_bytes(&d) } else { 0 }
    };
    let t = Instant::now();
    while received() < total * 3 / 4 {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the push is not progressing"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the push finished before the kill"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let sent_before_kill = received();
    server.kill();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1), "the interrupted push fails");
    let server = serve(data.to_str().unwrap(), None, &listen, &[]);
    let v = json(&ok_env(&w, &["push", &url, "--json"], &env));
    let resent = v["bytes_sent"].as_u64().unwrap();
    assert!(
        resent * 10 < sent_before_kill * 6,
        "the repeated push sent {resent} bytes; the first had sent {sent_before_kill} before the kill"
    );
    ok(
        tmp.path(),
        &[
            "fsck",
            "--read-data",
            "--store",
            data.join("acme").to_str().unwrap(),
        ],
    );
    drop(server);
}

#[test]
fn client_killed_mid_pull_leaves_the_local_store_valid() {
    let tmp = tempfile::tempdir().unwrap();
    let w = big_worktree(tmp.path(), 100);
    let remote = tmp.path().join("remote");
    ok(&w, &["push", remote.to_str().unwrap()]);
    let c = tmp.path().join("c");
    std::fs::create_dir_all(&c).unwrap();
    ok(&c, &["init"]);
    for delay_ms in [50u64, 150, 300] {
        let mut child = std::process::Command::new(common::bin())
            .args(["pull", remote.to_str().unwrap()])
            .current_dir(&c)
            .env("SP_SYNC_CACHE_DIR", common::cache_dir())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        ok(&c, &["fsck", "--read-data"]);
    }
    ok(&c, &["pull", remote.to_str().unwrap()]);
    let target = tmp.path().join("out");
    ok(&c, &["restore", "main", target.to_str().unwrap()]);
    assert_eq!(described(&w), described(&target));
}

#[test]
fn tokens_tenants_and_hostile_bodies() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = serve(
        data.to_str().unwrap(),
        Some(&tokens_file(tmp.path())),
        "127.0.0.1:0",
        &[],
    );
    let a = worktree(tmp.path(), "a", 3);
    let snap = ok(&a, &["snapshot"]).trim().to_string();
    ok_env(
        &a,
        &["push", &server.url("acme")],
        &[("SP_SYNC_TOKEN", TOKEN_A.into())],
    );
    let addr = &server.addr;
    let id = systemprompt_sync::ObjectId::from_hex(&snap).unwrap();

    // No token, a wrong token: 401.
    assert_eq!(http(addr, "GET", "/v1/acme/refs", None, b"").0, 401);
    assert_eq!(
        http(
            addr,
            "GET",
            "/v1/acme/refs",
            Some("wrong-token-0123456789"),
            b""
        )
        .0,
        401
    );
    let o = run_env(
        &a,
        &["push", &server.url("acme")],
        &[("SP_SYNC_TOKEN", "wrong-token-0123456789".into())],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unauthorized"));
    // Another tenant's token: 404, exactly as for a tenant that does not exist.
    let (s1, b1) = http(addr, "GET", "/v1/acme/refs", Some(TOKEN_B), b"");
    let (s2, b2) = http(addr, "GET", "/v1/nosuch/refs", Some(TOKEN_B), b"");
    assert_eq!((s1, &b1), (404, &b2));
    assert_eq!(s2, 404);
    assert_eq!(
        http(addr, "POST", "/v1/acme/has", Some(TOKEN_B), &id.0).0,
        404
    );
    assert_eq!(
        http(
            addr,
            "POST",
            "/v1/acme/fetch",
            Some(TOKEN_B),
            &[&[4u8][..], &id.0].concat()
        )
        .0,
        404
    );
    // In its own namespace, the other tenant cannot tell whether acme's object exists.
    let (s, b) = http(addr, "POST", "/v1/other/has", Some(TOKEN_B), &id.0);
    assert_eq!((s, b), (200, vec![0u8]));
    let (s, _) = http(
        addr,
        "POST",
        "/v1/other/fetch",
        Some(TOKEN_B),
        &[&[4u8][..], &id.0].concat(),
    );
    assert_eq!(s, 404);
    // The owner sees it.
    assert_eq!(
        http(addr, "POST", "/v1/acme/has", Some(TOKEN_A), &id.0),
        (200, vec![1u8])
    );

    // Hostile bodies store nothing.
    let packs = || dir_bytes(&data.join("acme/packs"));
    let before = packs();
    let (s, _) = http(
        addr,
        "POST",
        "/v1/acme/objects",
        Some(TOKEN_A),
        b"definitely not a pack stream",
    );
    assert_eq!(s, 400);
    // A valid stream of new objects, truncated.
    let mut w = systemprompt_sync::pack::PackWriter::new(Vec::new()).unwrap();
    for i in 0..20u64 {
        let d = bytes(10_000, 77 + i);
        let oid = systemprompt_sync::ObjectId::compute(systemprompt_sync::ObjectType::Chunk, &d);
        w.add(&systemprompt_sync::pack::prepare(
            systemprompt_sync::ObjectType::Chunk,
            oid,
            &d,
            3,
        ))
        .unwrap();
    }
    let (stream, _) = w.finish().unwrap();
    let (s, _) = http(
        addr,
        "POST",
        "/v1/acme/objects",
        Some(TOKEN_A),
        &stream[..stream.len() / 2],
    );
    assert_eq!(s, 400);
    // A flipped byte.
    let mut bad = stream.clone();
    bad[stream.len() / 3] ^= 1;
    let (s, _) = http(addr, "POST", "/v1/acme/objects", Some(TOKEN_A), &bad);
    assert_eq!(s, 400);
    // A tree referencing objects that are not there.
    let mut w = systemprompt_sync::pack::PackWriter::new(Vec::new()).unwrap();
    let snapshot = systemprompt_sync::object::snapshot::Snapshot {
        root: Some(systemprompt_sync::ObjectId::compute(
            systemprompt_sync::ObjectType::Tree,
            b"nope",
        )),
        ..Default::default()
    };
    let sb = snapshot.encode();
    let sid = systemprompt_sync::ObjectId::compute(systemprompt_sync::ObjectType::Snapshot, &sb);
    w.add(&systemprompt_sync::pack::prepare(
        systemprompt_sync::ObjectType::Snapshot,
        sid,
        &sb,
        3,
    ))
    .unwrap();
    let (dangling, _) = w.finish().unwrap();
    let (s, body) = http(addr, "POST", "/v1/acme/objects", Some(TOKEN_A), &dangling);
    assert_eq!(s, 400, "{}", String::from_utf8_lossy(&body));
    assert_eq!(packs(), before, "nothing was stored");
    // The intact stream is accepted.
    let (s, _) = http(addr, "POST", "/v1/acme/objects", Some(TOKEN_A), &stream);
    assert_eq!(s, 200);
    assert!(packs() > before);
    ok(
        tmp.path(),
        &[
            "fsck",
            "--read-data",
            "--store",
            data.join("acme").to_str().unwrap(),
        ],
    );
    drop(server);

    // Oversized bodies: 413.
    let small = net::serve_with(
        data.to_str().unwrap(),
        Some(&tokens_file(tmp.path())),
        "127.0.0.1:0",
        &[],
        &["--max-body", "1000"],
    );
    let (s, _) = http(
        &small.addr,
        "POST",
        "/v1/acme/objects",
        Some(TOKEN_A),
        &stream,
    );
    assert_eq!(s, 413);
}

#[test]
fn an_edit_travels_as_a_delta_and_a_lost_base_falls_back_to_full_negotiation() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("remote");
    let a = worktree(tmp.path(), "a", 9);
    ok(&a, &["snapshot"]);
    ok(&a, &["remote", "add", "origin", remote.to_str().unwrap()]);
    ok(&a, &["push"]);
    // One byte of a 5 MiB incompressible file: its chunk (hundreds of KiB)
    // goes as a delta against the old chunk.
    let mut data = std::fs::read(a.join("services/model.bin")).unwrap();
    data[3 << 20] ^= 0xff;
    std::fs::write(a.join("services/model.bin"), &data).unwrap();
    ok(&a, &["snapshot"]);
    let v = json(&ok(&a, &["push", "--json"]));
    let sent = v["bytes_sent"].as_u64().unwrap();
    assert!(sent < 32 * 1024, "a one-byte edit sent {sent} bytes: {v}");
    let check = tmp.path().join("check");
    ok(
        &a,
        &[
            "restore",
            "main",
            check.to_str().unwrap(),
            "--store",
            remote.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read(check.join("services/model.bin")).unwrap(),
        data
    );

    // The remote loses the pack holding that chunk (the next delta's base):
    // the push finds out from the refusal, negotiates in full, and sends the
    // new version whole.
    let chunk_pack = {
        let store =
            systemprompt_sync::Store::open(&remote, systemprompt_sync::LockMode::Shared).unwrap();
        let (_, e, _) = systemprompt_sync::resolve_path(&store, "main:services/model.bin").unwrap();
        let systemprompt_sync::object::tree::EntryKind::File { content, size } = e.kind else {
            panic!()
        };
        let chunks: Vec<_> = content.chunks(&store, size).map(|c| c.unwrap()).collect();
        let changed = chunks
            .iter()
            .find(|c| store.location(&c.id).unwrap().pack as usize == store.packs().len() - 1);
        let loc = store
            .location(&changed.expect("the edited chunk is in the newest pack").id)
            .unwrap();
        store.pack_path(&store.pack_name(loc.pack).unwrap())
    };
    std::fs::remove_file(&chunk_pack).unwrap();
    std::fs::remove_file(chunk_pack.with_extension("idx")).unwrap();
    data[3 << 20] ^= 0x0f;
    std::fs::write(a.join("services/model.bin"), &data).unwrap();
    ok(&a, &["snapshot"]);
    let o = run_env(&a, &["push"], &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("negotiating in full"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let check2 = tmp.path().join("check2");
    ok(
        &a,
        &[
            "restore",
            "main",
            check2.to_str().unwrap(),
            "--store",
            remote.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read(check2.join("services/model.bin")).unwrap(),
        data
    );
}

#[test]
fn two_servers_over_one_bucket_race_safely() {
    let tmp = tempfile::tempdir().unwrap();
    let data = format!("s3://{}/served", bucket("two"));
    let env = s3_env();
    let s1 = serve(&data, None, "127.0.0.1:0", &env);
    let s2 = serve(&data, None, "127.0.0.1:0", &env);
    // Everyone starts from the same parent, pushed through the first server.
    let racers = diverging_clients(tmp.path(), &s1.url("acme"), 8, &[]);
    // Half of them push through the other server.
    let handles: Vec<_> = racers
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let url = if i % 2 == 0 {
                s1.url("acme")
            } else {
                s2.url("acme")
            };
            std::process::Command::new(common::bin())
                .args(["push", &url])
                .current_dir(w)
                .env("SP_SYNC_CACHE_DIR", common::cache_dir())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut wins = 0;
    for h in handles {
        let o = h.wait_with_output().unwrap();
        if o.status.success() {
            wins += 1;
        } else {
            let e = String::from_utf8_lossy(&o.stderr);
            assert!(e.contains("fast-forward"), "{e}");
        }
    }
    assert_eq!(wins, 1);
    // Both servers agree on the ref.
    let (_, r1) = http(&s1.addr, "GET", "/v1/acme/refs", None, b"");
    let (_, r2) = http(&s2.addr, "GET", "/v1/acme/refs", None, b"");
    assert_eq!(r1, r2);
}

#[test]
fn a_store_in_s3_directly_and_gc_refused_without_a_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("s3://{}/direct", bucket("direct"));
    let env = s3_env();
    let w = tmp.path().join("w");
    std::fs::create_dir_all(w.join("a")).unwrap();
    std::fs::write(w.join("a/f.txt"), "in s3\n").unwrap();
    ok_env(&w, &["init", "--store", &url], &env);
    let o = run_env(&w, &["init", "--store", &url], &env);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stderr).contains("already exists"));
    let id = ok_env(&w, &["snapshot", "--store", &url, "-m", "s3"], &env)
        .trim()
        .to_string();
    assert!(ok_env(&w, &["log", "--store", &url], &env).contains(&id));
    assert_eq!(
        ok_env(&w, &["cat", "main:a/f.txt", "--store", &url], &env),
        "in s3\n"
    );
    ok_env(&w, &["fsck", "--read-data", "--store", &url], &env);
    // No store inside it (it would read as its refs or packs).
    for inner in ["refs/inner", "packs/x/y"] {
        let o = run_env(&w, &["init", "--store", &format!("{url}/{inner}")], &env);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains("lies inside the sp-sync store"), "{err}");
    }
    ok_env(&w, &["fsck", "--store", &url], &env);
    let o = run_env(&w, &["gc", "--store", &url], &env);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no process lock"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    ok_env(&w, &["gc", "--dry-run", "--store", &url], &env);
}

#[test]
fn gc_gives_up_waiting_for_a_server_holding_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = serve(data.to_str().unwrap(), None, "127.0.0.1:0", &[]);
    let a = worktree(tmp.path(), "a", 5);
    ok(&a, &["snapshot"]);
    ok(&a, &["push", &server.url("acme")]);
    let store = data.join("acme");
    let t = Instant::now();
    let o = run_env(
        tmp.path(),
        &["gc", "--store", store.to_str().unwrap()],
        &[("SP_SYNC_LOCK_TIMEOUT", "2".into())],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("sp-sync serve"), "{err}");
    assert!(t.elapsed() >= Duration::from_secs(2));
    drop(server);
    // With the server gone, gc runs.
    ok(tmp.path(), &["gc", "--store", store.to_str().unwrap()]);
}

/// A text file of `i`'s; `edit` > 0 overwrites 1 KiB of its middle with
/// pseudo-random text, as the benchmarks' 1% mutation does (scaled down).
fn page(i: usize, edit: usize) -> String {
    let mut s = format!("# page {i}\n\n");
    for l in 0..120 {
        s.push_str(&format!(
            "line {l} of page {i}: text that stays as it was\n"
        ));
    }
    if edit > 0 {
        let noise: String = bytes(768, (i * 1000 + edit) as u64)
            .iter()
            .map(|b| char::from(b'a' + b % 26))
            .collect();
        s.replace_range(2000..2768, &noise);
    }
    s
}

/// `pull` receives deltas the way `push` sends them: after a change of 1%
/// of the files, what a pull of it receives is at most 1.2x what the push
/// sent — through a path remote and through `sp-sync serve`.
#[test]
fn pull_receives_deltas_the_way_push_sends_them() {
    let tmp = tempfile::tempdir().unwrap();
    let port = net::free_port();
    let listen = format!("127.0.0.1:{port}");
    let data = tmp.path().join("data");
    let _server = serve(data.to_str().unwrap(), None, &listen, &[]);
    let path_remote = tmp.path().join("remote");
    std::fs::create_dir_all(&path_remote).unwrap();
    ok(&path_remote, &["init"]);
    let path_url = path_remote.join(".sp-sync").to_str().unwrap().to_string();
    for (kind, url) in [
        ("path", path_url),
        ("http", format!("http://{listen}/acme")),
    ] {
        let a = tmp.path().join(format!("a-{kind}"));
        for i in 0..400 {
            let d = a.join(format!("d{}", i % 10));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(format!("p{i}.md")), page(i, 0)).unwrap();
        }
        ok(&a, &["init"]);
        ok(&a, &["snapshot"]);
        ok(&a, &["push", &url]);
        let b = tmp.path().join(format!("b-{kind}"));
        std::fs::create_dir_all(&b).unwrap();
        ok(&b, &["init"]);
        ok(&b, &["pull", &url]);
        // A store that holds the old objects but no ref to them: its pull
        // has no base to ask deltas against.
        let c = tmp.path().join(format!("c-{kind}"));
        std::fs::create_dir_all(&c).unwrap();
        ok(&c, &["init"]);
        ok(&c, &["pull", &url]);
        ok(&c, &["ref", "delete", "main"]);
        // 1% of the files change.
        for i in (0..400).step_by(100) {
            std::fs::write(a.join(format!("d{}/p{i}.md", i % 10)), page(i, 1)).unwrap();
        }
        ok(&a, &["snapshot"]);
        let pushed = json(&ok(&a, &["push", &url, "--json"]));
        let pulled = json(&ok(&b, &["pull", &url, "--json"]));
        let sent = pushed["bytes_sent"].as_u64().unwrap();
        let received = pulled["bytes_received"].as_u64().unwrap();
        let whole = json(&ok(&c, &["pull", &url, "--json"]))["bytes_received"]
            .as_u64()
            .unwrap();
        eprintln!(
            "{kind}: push sent {sent} bytes, pull received {received} (without bases: {whole})"
        );
        assert!(
            received * 10 < whole * 7,
            "{kind}: {received} vs {whole} without deltas"
        );
        assert!(
            received * 10 <= sent * 12,
            "{kind}: pull received {received} bytes, push sent {sent}"
        );
        ok(&b, &["fsck", "--read-data"]);
        let t = tmp.path().join(format!("t-{kind}"));
        ok(&b, &["restore", "main", t.to_str().unwrap()]);
        let mut want = describe(&a);
        want.retain(|k, _| !k.starts_with(b".sp-sync"));
        assert!(
            describe(&t) == want,
            "{kind}: pulled snapshot restores other files"
        );
    }
}

/// One push of a ref the remote has and one it lacks: the new ref's
/// objects are all sent (the changes since the first ref's old snapshot
/// say nothing of what lies below the second), and both refs move.
#[test]
fn a_push_of_an_old_and_a_new_ref_sends_what_the_new_one_reaches() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path().join("w");
    std::fs::create_dir_all(w.join("a")).unwrap();
    std::fs::create_dir_all(w.join("b")).unwrap();
    std::fs::write(w.join("a/f"), "one\n").unwrap();
    std::fs::write(w.join("b/g"), "other tree\n").unwrap();
    ok(&w, &["init", "-q"]);
    ok(&w, &["snapshot", "a", "-q"]);
    let r = tmp.path().join("R").display().to_string();
    ok(&w, &["push", &r, "main"]);
    std::fs::write(w.join("a/f"), "two\n").unwrap();
    ok(&w, &["snapshot", "a", "-q"]);
    ok(&w, &["snapshot", "b", "--ref", "dev", "-q"]);
    ok(&w, &["push", &r, "main", "dev"]);
    let listed = ok(&w, &["--store", &r, "ref", "list"]);
    assert!(
        listed.contains(" dev") && listed.contains(" main"),
        "{listed}"
    );
    ok(&w, &["--store", &r, "fsck", "--read-data"]);
}

/// A read token (`read_tokens`) reads its tenant (pull, cache restore) and
/// never writes it: a push, a ref's move or removal, a cache save and gc
/// are refused (403, one line), and nothing on the server changes.
#[test]
fn a_read_token_reads_and_never_writes() {
    const READ: &str = "read-only-token-for-acme-0123";
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let tokens = tmp.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        format!("[tenants.acme]\ntokens = [\"{TOKEN_A}\"]\nread_tokens = [\"{READ}\"]\n"),
    )
    .unwrap();
    let server = serve(data.to_str().unwrap(), Some(&tokens), "127.0.0.1:0", &[]);
    let url = server.url("acme");
    let a = worktree(tmp.path(), "a", 4);
    ok(&a, &["snapshot", "-q"]);
    ok_env(&a, &["push", &url], &[("SP_SYNC_TOKEN", TOKEN_A.into())]);
    ok_env(
        &a,
        &["cache", "save", "k1", "services", "--remote", &url],
        &[("SP_SYNC_TOKEN", TOKEN_A.into())],
    );
    let refs_before = http(&server.addr, "GET", "/v1/acme/refs", Some(TOKEN_A), b"");
    // Reading: a pull, a cache restore.
    let b = worktree(tmp.path(), "b", 5);
    ok_env(
        &b,
        &["pull", &url, "main"],
        &[("SP_SYNC_TOKEN", READ.into())],
    );
    let c = tmp.path().join("c");
    std::fs::create_dir_all(&c).unwrap();
    ok_env(
        &c,
        &["cache", "restore", "k1", "--remote", &url],
        &[("SP_SYNC_TOKEN", READ.into())],
    );
    assert!(c.join("services/agents/bot.md").is_file());
    // Writing: refused, and the server's refs stay as they were.
    std::fs::write(a.join("services/agents/bot.md"), "changed\n").unwrap();
    ok(&a, &["snapshot", "-q"]);
    for args in [
        &["push", url.as_str()][..],
        &["push", url.as_str(), "--force"],
        &["cache", "save", "k2", "services", "--remote", url.as_str()],
    ] {
        let o = run_env(&a, args, &[("SP_SYNC_TOKEN", READ.into())]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        common::assert_one_error_line(args, &err);
        assert!(err.contains("may only read"), "{args:?}: {err}");
    }
    for (method, path) in [
        ("DELETE", "/v1/acme/refs/main"),
        ("POST", "/v1/acme/refs/main"),
        ("POST", "/v1/acme/gc"),
        ("POST", "/v1/acme/objects"),
    ] {
        assert_eq!(
            http(&server.addr, method, path, Some(READ), b"").0,
            403,
            "{method} {path}"
        );
    }
    assert_eq!(
        http(&server.addr, "GET", "/v1/acme/refs", Some(TOKEN_A), b""),
        refs_before
    );
}

/// A remote that says it holds some objects and then does not (its gc took
/// them between the push's questions and its objects, as an audit made a
/// server do): the push is refused by the remote, asks about everything
/// again and completes, also when it had asked about everything the first
/// time (no ref of the remote to start from). It exited 1 (audit 22).
#[test]
fn a_push_asks_again_when_the_remote_lost_what_it_said_it_held() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use systemprompt_sync::object::tree::EntryKind;
    use systemprompt_sync::remote::{Remote, StoreRemote};
    use systemprompt_sync::{LockMode, NoProgress, ObjectId, Store};

    struct Forgetful {
        inner: StoreRemote,
        claimed: Vec<ObjectId>,
        lied: AtomicBool,
        honest: AtomicBool,
    }
    impl Remote for Forgetful {
        fn describe(&self) -> String {
            self.inner.describe()
        }
        fn list_refs(&self) -> systemprompt_sync::Result<Vec<(String, ObjectId)>> {
            self.inner.list_refs()
        }
        fn update_ref(
            &self,
            name: &str,
            old: Option<ObjectId>,
            new: ObjectId,
            force: bool,
        ) -> systemprompt_sync::Result<()> {
            self.inner.update_ref(name, old, new, force)
        }
        fn has(&self, ids: &[ObjectId]) -> systemprompt_sync::Result<Vec<bool>> {
            let mut out = self.inner.has(ids)?;
            if !self.honest.load(Ordering::SeqCst) {
                for (i, id) in ids.iter().enumerate() {
                    if self.claimed.contains(id) {
                        out[i] = true;
                        self.lied.store(true, Ordering::SeqCst);
                    }
                }
            }
            Ok(out)
        }
        fn send(
            &self,
            objects: &mut dyn Iterator<
                Item = systemprompt_sync::Result<systemprompt_sync::pack::StoredObject>,
            >,
            progress: &dyn systemprompt_sync::progress::Progress,
        ) -> systemprompt_sync::Result<systemprompt_sync::store::receive::ReceiveStats> {
            let r = self.inner.send(objects, progress);
            if r.is_err() {
                self.honest.store(true, Ordering::SeqCst);
            }
            r
        }
        fn fetch<'a>(
            &'a self,
            ids: &[(systemprompt_sync::ObjectType, ObjectId)],
        ) -> systemprompt_sync::Result<systemprompt_sync::remote::ObjectStream<'a>> {
            self.inner.fetch(ids)
        }
        fn traffic(&self) -> systemprompt_sync::remote::Traffic {
            self.inner.traffic()
        }
    }

    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    std::fs::create_dir_all(a.join("services")).unwrap();
    std::fs::write(a.join("services/model.bin"), bytes(3 << 20, 9)).unwrap();
    ok(&a, &["init", "-q"]);
    ok(&a, &["snapshot", "-q"]);
    let r = tmp.path().join("r");
    ok(tmp.path(), &["init", "--store", r.to_str().unwrap(), "-q"]);

    let local = Store::open(&a.join(".sp-sync"), LockMode::Shared).unwrap();
    let (_, e, _) = systemprompt_sync::resolve_path(&local, "main:services/model.bin").unwrap();
    let EntryKind::File { content, size } = e.kind else {
        panic!()
    };
    let claimed: Vec<ObjectId> = content
        .chunks(&local, size)
        .map(|c| c.unwrap().id)
        .collect();
    assert!(claimed.len() > 1);
    let remote = Forgetful {
        inner: StoreRemote::new(Store::open(&r, LockMode::Shared).unwrap()),
        claimed,
        lied: AtomicBool::new(false),
        honest: AtomicBool::new(false),
    };
    systemprompt_sync::transfer::push(
        &local,
        &remote,
        None,
        &["main".to_string()],
        false,
        &NoProgress,
    )
    .unwrap();
    assert!(remote.lied.load(Ordering::SeqCst) && remote.honest.load(Ordering::SeqCst));
    drop(remote);
    ok(tmp.path(), &["fsck", "--store", r.to_str().unwrap(), "-q"]);
    let check = tmp.path().join("check");
    ok(
        tmp.path(),
        &[
            "restore",
            "main",
            check.to_str().unwrap(),
            "--store",
            r.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read(check.join("services/model.bin")).unwrap(),
        bytes(3 << 20, 9)
    );
}

/// A server's gc waits for another process using the tenant's store (a
/// second server on the same directory, a local command) only as long as
/// its `--timeout`, then answers 503 and runs nothing; it waited 600 s
/// whatever `--timeout` said (audit 22).
#[test]
fn a_servers_gc_waits_for_another_process_only_its_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = net::serve_with(
        data.to_str().unwrap(),
        None,
        "127.0.0.1:0",
        &[],
        &["--timeout", "2"],
    );
    let a = worktree(tmp.path(), "a", 5);
    ok(&a, &["snapshot"]);
    ok(&a, &["push", &server.url("acme")]);
    let held =
        systemprompt_sync::Store::open(&data.join("acme"), systemprompt_sync::LockMode::Shared)
            .unwrap();
    let t = Instant::now();
    let (status, body) = http(&server.addr, "POST", "/v1/acme/gc", None, b"");
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("other processes are using"), "{body}");
    assert!(t.elapsed() < Duration::from_secs(60), "{:?}", t.elapsed());
    drop(held);
    let (status, body) = http(&server.addr, "POST", "/v1/acme/gc", None, b"");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

/// A pack too big for one request goes to S3 in parts; an upload that
/// fails midway is aborted, so its parts do not stay in the bucket, billed
/// and unseen (they are no object, and no listing of the store finds them).
/// Here every connection is cut once 6 MiB of it have gone up (a part is 8
/// MiB): the push fails with one line, exit 1, and leaves no upload in
/// progress, no pack and no ref.
#[test]
fn a_multipart_upload_that_fails_is_aborted() {
    use common::proxy::{Fault, FaultConfig, FaultProxy};
    let tmp = tempfile::tempdir().unwrap();
    let b = bucket("abort");
    let ep = net::s3_endpoint();
    let proxy = FaultProxy::start(
        ep.trim_start_matches("http://"),
        1,
        FaultConfig {
            every_upload: Some((6 << 20, Fault::Cut)),
            ..Default::default()
        },
    );
    let w = tmp.path().join("w");
    std::fs::create_dir_all(&w).unwrap();
    std::fs::write(w.join("big.bin"), bytes(24 << 20, 7)).unwrap();
    ok(&w, &["init", "-q"]);
    ok(&w, &["snapshot", "-q"]);
    let mut env: Vec<(&str, String)> = s3_env()
        .into_iter()
        .filter(|(k, _)| *k != "AWS_ENDPOINT_URL" && *k != "SP_SYNC_S3_RETRIES")
        .collect();
    env.push(("AWS_ENDPOINT_URL", format!("http://{}", proxy.addr)));
    env.push(("SP_SYNC_S3_RETRIES", "0".into()));
    let o = run_env(&w, &["push", &format!("s3://{b}/st")], &env);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    common::assert_one_error_line(&["push"], &err);
    assert!(
        proxy
            .stats()
            .cuts
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0,
        "no upload was cut: {err}"
    );
    // Asked of the bucket directly, not through the proxy. (The listing
    // shows an upload begun and left: one begun here in another bucket.)
    let addr = ep.trim_start_matches("http://");
    let probe = bucket("abortprobe");
    let (status, _) = http(addr, "POST", &format!("/{probe}/left?uploads"), None, b"");
    assert_eq!(status, 200);
    let (_, body) = http(addr, "GET", &format!("/{probe}?uploads"), None, b"");
    assert!(String::from_utf8_lossy(&body).contains("<Upload>"));
    let (status, body) = http(addr, "GET", &format!("/{b}?uploads"), None, b"");
    let xml = String::from_utf8_lossy(&body);
    assert_eq!(status, 200, "{xml}");
    assert!(
        !xml.contains("<Upload>"),
        "an upload left in progress: {xml}"
    );
    let (status, body) = http(
        addr,
        "GET",
        &format!("/{b}?list-type=2&prefix=st/"),
        None,
        b"",
    );
    let xml = String::from_utf8_lossy(&body);
    assert_eq!(status, 200, "{xml}");
    for what in ["st/packs/", "st/refs/"] {
        assert!(!xml.contains(what), "{what} in {xml}");
    }
}

/// A server that is not there: exit 1, one line that names the remote and
/// the address tried (the HTTP client's own message named it once more).
#[test]
fn an_unreachable_server_is_one_line_naming_its_url_once() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path().join("w");
    std::fs::create_dir_all(&w).unwrap();
    std::fs::write(w.join("a.md"), "a\n").unwrap();
    ok(&w, &["init"]);
    ok(&w, &["snapshot", "-q"]);
    let url = format!("http://127.0.0.1:{port}/acme");
    ok(&w, &["remote", "add", "origin", &url]);
    let o = run_env(&w, &["push", "origin"], &[]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    // The remote the command names, and the address it tried: not the
    // client's third copy ("error sending request for url (…)").
    assert_eq!(
        err.matches(&format!("127.0.0.1:{port}")).count(),
        2,
        "{err}"
    );
    assert!(!err.contains("for url"), "{err}");
    assert!(err.contains("refused"), "{err}");
}
