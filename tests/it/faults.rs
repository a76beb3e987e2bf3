//! Pushes and pulls through a fault proxy (tests/it/common/proxy.rs) in front
//! of a real `sp-sync serve` on loopback: connections are delayed, stalled,
//! cut and truncated at random points, in either direction.
//!
//! Every push and pull either succeeds (exit 0) or fails cleanly (exit 1
//! with one `error:` line): never a panic, never a hang. After each, both
//! stores pass `fsck --read-data` and every ref names either what it named
//! before or the snapshot being sent; a retry converges: the refs name the
//! same snapshot on both sides and it restores byte-identical.
//!
//! `SP_SYNC_FAULT_ROUNDS` (default 12) rounds of one push and one pull each,
//! plus their retries; `SP_SYNC_FAULT_SEED` replays a run (the seed is
//! printed, and named in every failure).

use crate::common;
use crate::net;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::proxy::{FaultConfig, FaultProxy, Rng};
use common::{assert_same_tree, bin, bytes, cache_dir, ok};
use net::serve_with;

/// How long one command may take before it counts as a hang.
const HANG: Duration = Duration::from_secs(120);

/// The outcome of one command.
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// Runs `sp-sync ARGS` in `cwd`, killing it after `HANG`.
fn run(cwd: &Path, args: &[&str]) -> Outcome {
    run_env(cwd, args, &[])
}

/// [`run`] with these environment variables set too.
fn run_env(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Outcome {
    let t = Instant::now();
    let mut child = Command::new(bin())
        .args(args)
        .envs(env.iter().copied())
        .current_dir(cwd)
        .env("SP_SYNC_CACHE_DIR", cache_dir())
        .env_remove("SP_SYNC_STORE")
        .env_remove("SP_SYNC_LOG")
        // Short timeouts: a stalled connection must end in seconds.
        .env("SP_SYNC_HTTP_TIMEOUT", "2")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sp-sync");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let o = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let e = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            use std::os::unix::process::ExitStatusExt;
            break Some(st.code().unwrap_or(128 + st.signal().unwrap_or(0)));
        }
        if t.elapsed() > HANG {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Outcome {
        code,
        stdout: o.join().unwrap(),
        stderr: e.join().unwrap(),
        took: t.elapsed(),
    }
}

/// The run's context: its seed, named in every failure.
struct Ctx {
    seed: u64,
}

impl Ctx {
    fn fail(&self, msg: String) -> ! {
        panic!("[fault seed {}] {msg}", self.seed)
    }

    /// Exit 0: true; exit 1 with one clean `error:` line: false; anything
    /// else (a panic, a hang, a stray line) fails the test.
    fn clean(&self, what: &str, o: &Outcome) -> bool {
        match o.code {
            Some(0) => true,
            Some(1) => {
                let errors: Vec<&str> = o
                    .stderr
                    .lines()
                    .filter(|l| l.starts_with("error"))
                    .collect();
                let stray = o
                    .stderr
                    .lines()
                    .any(|l| !l.starts_with("error: ") && !l.starts_with("warning: "));
                if errors.len() != 1 || stray || o.stderr.contains("panicked") {
                    self.fail(format!("{what}: not one clean error line:\n{}", o.stderr));
                }
                false
            }
            None => self.fail(format!(
                "{what} hung (killed after {:?}):\n{}",
                o.took, o.stderr
            )),
            Some(c) => self.fail(format!("{what}: exit {c}:\n{}", o.stderr)),
        }
    }

    fn ok(&self, cwd: &Path, args: &[&str]) -> String {
        let o = run(cwd, args);
        if o.code != Some(0) {
            self.fail(format!(
                "sp-sync {args:?}: exit {:?}\n{}{}",
                o.code, o.stdout, o.stderr
            ));
        }
        o.stdout
    }

    fn fsck(&self, store: &Path) {
        let s = store.to_str().unwrap();
        self.ok(store, &["fsck", "--read-data", "--store", s]);
    }

    /// The target of `name` in the store at `store`.
    fn ref_of(&self, store: &Path, name: &str) -> Option<String> {
        let s = store.to_str().unwrap();
        self.ok(store, &["ref", "list", "--store", s])
            .lines()
            .find_map(|l| {
                let (id, n) = l.split_once(' ')?;
                (n.trim() == name).then(|| id.to_string())
            })
    }
}

/// Counts of what happened.
#[derive(Default, Debug)]
struct Counts {
    push_ok: u32,
    push_failed: u32,
    pull_ok: u32,
    pull_failed: u32,
    converged: u32,
}

/// Rewrites part of the tree at `data` for `round`: a multi-chunk file
/// changes, a small file is added, an old one removed.
fn edit(data: &Path, rng: &mut Rng, round: u64) {
    std::fs::create_dir_all(data.join("small")).unwrap();
    let big = rng.below(3);
    let len = (1 << 20) + rng.below(2 << 20) as usize;
    std::fs::write(data.join(format!("big{big}.bin")), bytes(len, rng.next())).unwrap();
    std::fs::write(
        data.join(format!("small/s{round:03}.md")),
        format!(
            "# note {round}\n{}\n",
            "text ".repeat(rng.below(2000) as usize)
        ),
    )
    .unwrap();
    if round >= 4 {
        let _ = std::fs::remove_file(data.join(format!("small/s{:03}.md", round - 4)));
    }
}

#[test]
fn pushes_and_pulls_through_a_fault_proxy_fail_cleanly_and_converge() {
    let seed: u64 = std::env::var("SP_SYNC_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let rounds: u64 = std::env::var("SP_SYNC_FAULT_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    eprintln!("fault proxy: seed {seed} (SP_SYNC_FAULT_SEED={seed} replays it), {rounds} rounds");
    let cx = Ctx { seed };
    let mut rng = Rng::new(seed);

    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("server");
    let server = serve_with(
        data_dir.to_str().unwrap(),
        None,
        "127.0.0.1:0",
        &[],
        &["--timeout", "3"],
    );
    let proxy = FaultProxy::start(&server.addr, seed, FaultConfig::default());
    let url = format!("http://{}/acme", proxy.addr);
    let remote_store = data_dir.join("acme");

    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    std::fs::create_dir_all(a.join("data")).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    ok(&a, &["init"]);
    ok(&b, &["init"]);
    ok(&a, &["remote", "add", "origin", &url]);
    ok(&b, &["remote", "add", "origin", &url]);
    let (a_store, b_store) = (a.join(".sp-sync"), b.join(".sp-sync"));

    let mut n = Counts::default();
    let t0 = Instant::now();
    for round in 0..rounds {
        edit(&a.join("data"), &mut rng, round);
        let id = cx.ok(&a, &["snapshot", "data", "-q"]).trim().to_string();
        assert_eq!(id.len(), 64, "snapshot id: {id}");

        // Push, with faults; then retries with faults, then without.
        let before = if remote_store.exists() {
            cx.ref_of(&remote_store, "main")
        } else {
            None
        };
        let mut tries = 0;
        loop {
            tries += 1;
            let faults = tries <= 4;
            proxy.set_enabled(faults);
            let o = run(&a, &["push", "origin", "main"]);
            let pushed = cx.clean(&format!("round {round}: push try {tries}"), &o);
            if faults {
                if pushed {
                    n.push_ok += 1;
                } else {
                    n.push_failed += 1;
                }
            } else if !pushed {
                cx.fail(format!(
                    "round {round}: push without faults failed:\n{}",
                    o.stderr
                ));
            }
            cx.fsck(&a_store);
            if remote_store.exists() {
                cx.fsck(&remote_store);
                let now = cx.ref_of(&remote_store, "main");
                if now != before && now.as_deref() != Some(id.as_str()) {
                    cx.fail(format!(
                        "round {round}: the server's main is {now:?}, neither {before:?} nor {id}"
                    ));
                }
                if pushed && now.as_deref() != Some(id.as_str()) {
                    cx.fail(format!("round {round}: push exit 0 but main is {now:?}"));
                }
            } else if pushed {
                cx.fail(format!(
                    "round {round}: push exit 0 but no store on the server"
                ));
            }
            if pushed {
                break;
            }
        }

        // Pull into the other store, the same way.
        let before = cx.ref_of(&b_store, "main");
        let mut tries = 0;
        loop {
            tries += 1;
            let faults = tries <= 4;
            proxy.set_enabled(faults);
            let o = run(&b, &["pull", "origin", "main"]);
            let pulled = cx.clean(&format!("round {round}: pull try {tries}"), &o);
            if faults {
                if pulled {
                    n.pull_ok += 1;
                } else {
                    n.pull_failed += 1;
                }
            } else if !pulled {
                cx.fail(format!(
                    "round {round}: pull without faults failed:\n{}",
                    o.stderr
                ));
            }
            cx.fsck(&b_store);
            let now = cx.ref_of(&b_store, "main");
            if now != before && now.as_deref() != Some(id.as_str()) {
                cx.fail(format!(
                    "round {round}: the pulled main is {now:?}, neither {before:?} nor {id}"
                ));
            }
            if pulled {
                if now.as_deref() != Some(id.as_str()) {
                    cx.fail(format!("round {round}: pull exit 0 but main is {now:?}"));
                }
                break;
            }
        }

        // Converged: the same snapshot on the three stores, restored
        // byte-identical to the tree it was taken from.
        let ra = cx.ref_of(&a_store, "main");
        let rs = cx.ref_of(&remote_store, "main");
        let rb = cx.ref_of(&b_store, "main");
        if !(ra == rs && rs == rb && ra.as_deref() == Some(id.as_str())) {
            cx.fail(format!(
                "round {round}: refs differ: a {ra:?} server {rs:?} b {rb:?}"
            ));
        }
        let out = tmp.path().join(format!("restored{round}"));
        cx.ok(&b, &["restore", "main", out.to_str().unwrap()]);
        assert_same_tree(&a.join("data"), &out);
        std::fs::remove_dir_all(&out).unwrap();
        n.converged += 1;
    }
    proxy.set_enabled(false);
    let line = format!(
        "fault proxy: seed {seed}: {rounds} rounds in {:.1}s: pushes {} ok, {} failed cleanly; \
         pulls {} ok, {} failed cleanly; converged {}/{rounds}; proxy {}",
        t0.elapsed().as_secs_f64(),
        n.push_ok,
        n.push_failed,
        n.pull_ok,
        n.pull_failed,
        n.converged,
        proxy.stats().summary()
    );
    eprintln!("{line}");
    if let Ok(p) = std::env::var("SP_SYNC_FAULT_REPORT") {
        std::fs::write(PathBuf::from(p), format!("{line}\n")).unwrap();
    }
    assert_eq!(n.converged as u64, rounds);
    assert!(
        n.push_ok + n.push_failed + n.pull_ok + n.pull_failed >= (2 * rounds) as u32,
        "{line}"
    );
}

/// A connection that stops taking data in the middle of a push (a server
/// or network gone silent, the socket still open) ends the push in a
/// timeout and a clean error, not a hang: the client gives each piece of
/// the body `SP_SYNC_HTTP_TIMEOUT` seconds.
#[test]
fn a_push_into_a_connection_that_stops_taking_data_times_out() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("server");
    let server = serve_with(
        data_dir.to_str().unwrap(),
        None,
        "127.0.0.1:0",
        &[],
        &["--timeout", "600"],
    );
    // Every connection forwards 1 MiB of its request, then nothing more
    // for ten minutes, without closing.
    let proxy = FaultProxy::start(
        &server.addr,
        1,
        FaultConfig {
            every_upload: Some((
                1 << 20,
                common::proxy::Fault::Stall(Duration::from_secs(600)),
            )),
            ..FaultConfig::default()
        },
    );
    let a = tmp.path().join("a");
    std::fs::create_dir_all(a.join("data")).unwrap();
    // Incompressible, far more than the sockets buffer.
    std::fs::write(a.join("data/big.bin"), bytes(48 << 20, 7)).unwrap();
    ok(&a, &["init"]);
    ok(&a, &["snapshot", "data", "-q"]);
    let url = format!("http://{}/acme", proxy.addr);
    let o = run(&a, &["push", &url, "main"]);
    let cx = Ctx { seed: 1 };
    assert!(
        !cx.clean("push into a silent connection", &o),
        "{}",
        o.stdout
    );
    assert!(
        o.took < Duration::from_secs(90),
        "the push took {:?}",
        o.took
    );
    assert!(o.stderr.contains("took no data"), "{}", o.stderr);
    cx.fsck(&a.join(".sp-sync"));
    // Without the fault, the same push completes.
    proxy.set_enabled(false);
    ok(&a, &["push", &url, "main"]);
    cx.fsck(&data_dir.join("acme"));
}

#[test]
fn a_pull_whose_download_breaks_off_resumes_by_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("server");
    let server = serve_with(data_dir.to_str().unwrap(), None, "127.0.0.1:0", &[], &[]);
    // A snapshot of 8 MiB that does not compress, pushed without the proxy.
    let a = tmp.path().join("a");
    std::fs::create_dir_all(a.join("data")).unwrap();
    std::fs::write(a.join("data/big.bin"), bytes(8 << 20, 11)).unwrap();
    std::fs::write(a.join("data/small.txt"), "hello\n").unwrap();
    ok(&a, &["init"]);
    ok(&a, &["snapshot", "data", "-q"]);
    ok(
        &a,
        &["push", &format!("http://{}/acme", server.addr), "main"],
    );
    let cx = Ctx { seed: 0 };

    // The first two answers that reach 1 MiB are cut there: one pull,
    // resuming by itself, gets everything.
    let proxy = FaultProxy::start(
        &server.addr,
        1,
        FaultConfig {
            first_big_downloads_cut: Some((1 << 20, 2)),
            ..FaultConfig::default()
        },
    );
    let url = format!("http://{}/acme", proxy.addr);
    let b = tmp.path().join("b");
    std::fs::create_dir_all(&b).unwrap();
    ok(&b, &["init"]);
    let o = run(&b, &["pull", &url, "main"]);
    assert!(
        cx.clean("pull through two cuts", &o),
        "the pull did not resume: {}",
        o.stderr
    );
    assert_eq!(
        proxy
            .stats()
            .cuts
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    assert!(o.stderr.contains("broke off"), "{}", o.stderr);
    cx.fsck(&b.join(".sp-sync"));
    ok(&b, &["restore", "main", "out", "-q"]);
    assert_same_tree(&a.join("data"), &b.join("out"));

    // With no retries allowed, one cut fails the pull cleanly, and the
    // store is whole.
    proxy.set_config(FaultConfig {
        first_big_downloads_cut: Some((1 << 20, 1)),
        ..FaultConfig::default()
    });
    let c = tmp.path().join("c");
    std::fs::create_dir_all(&c).unwrap();
    ok(&c, &["init"]);
    let o = run_env(
        &c,
        &["pull", &url, "main"],
        &[("SP_SYNC_PULL_RETRIES", "0")],
    );
    assert!(!cx.clean("pull without retries", &o), "{}", o.stdout);
    cx.fsck(&c.join(".sp-sync"));
    assert!(cx.ref_of(&c.join(".sp-sync"), "main").is_none());
}
