//! SIGINT and SIGTERM at random moments: a command stops at its next safe
//! point with exit 130 (143), no ref moves, and the store stays consistent;
//! or it had already finished and exits 0 with its work complete.

use crate::common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, bytes, cache_dir, ok};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn refs(store: &Path) -> String {
    let o = Command::new(bin())
        .args(["ref", "list", "--store"])
        .arg(store)
        .env("SP_SYNC_CACHE_DIR", cache_dir())
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn fsck(store: &Path) {
    let o = Command::new(bin())
        .args(["fsck", "--store"])
        .arg(store)
        .env("SP_SYNC_CACHE_DIR", cache_dir())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "fsck after an interrupt: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Fills `dir` with `n` files of 256 KiB, different each round.
fn fill(dir: &Path, round: u64, n: u64) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        std::fs::write(
            dir.join(format!("f{i:03}")),
            bytes(256 << 10, round * 1000 + i),
        )
        .unwrap();
    }
}

/// Runs `args` in `cwd`, sends `signal` after `delay`; returns the exit code.
fn run_and_signal(cwd: &Path, args: &[&str], delay: Duration, signal: i32) -> Option<i32> {
    let mut child = Command::new(bin())
        .args(args)
        .current_dir(cwd)
        .env("SP_SYNC_CACHE_DIR", cache_dir())
        .env_remove("SP_SYNC_STORE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(delay);
    let pid = rustix::process::Pid::from_child(&child);
    let sig = if signal == 15 {
        rustix::process::Signal::TERM
    } else {
        rustix::process::Signal::INT
    };
    let _ = rustix::process::kill_process(pid, sig);
    let status = child.wait().unwrap();
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    // Killed by the signal itself before the handler was installed (the
    // first milliseconds of the process): the shell's 128 + N, nothing done.
    use std::os::unix::process::ExitStatusExt;
    let code = status.code().or(status.signal().map(|s| 128 + s));
    assert!(
        code == Some(0) || code == Some(128 + signal),
        "{args:?} after {delay:?}: exit {code:?}: {err}"
    );
    code
}

/// How long `args` takes when left alone (to spread the signals over it).
fn duration_of(f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed().max(Duration::from_millis(20))
}

fn delay(rng: &mut Rng, d: Duration) -> Duration {
    Duration::from_micros(rng.next() % (d.as_micros() as u64 * 5 / 4 + 1))
}

#[test]
fn sigint_during_snapshot_moves_no_ref_and_keeps_the_store_consistent() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path();
    ok(w, &["init"]);
    fill(&w.join("data"), 0, 120);
    let mut d = duration_of(|| {
        ok(w, &["snapshot", "--no-cache"]);
    });
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut stopped = 0;
    // At least 12 rounds; more (up to 40) while fewer than 3 signals have
    // landed, the delays shrinking after each finished run (the timed run
    // can be slower than the rest on a busy machine).
    for round in 1..=40 {
        if round > 12 && stopped >= 3 {
            break;
        }
        fill(&w.join("data"), round, 120);
        let before = refs(&w.join(".sp-sync"));
        let code = run_and_signal(w, &["snapshot", "--no-cache"], delay(&mut rng, d), 2);
        let after = refs(&w.join(".sp-sync"));
        if code == Some(130) {
            stopped += 1;
            assert_eq!(before, after, "a ref moved though the snapshot was stopped");
        } else {
            assert_ne!(before, after, "a finished snapshot did not move its ref");
            d = d.mul_f64(0.7);
        }
        fsck(&w.join(".sp-sync"));
    }
    assert!(stopped >= 3, "only {stopped} signals landed in time");
    // And SIGTERM: 143.
    fill(&w.join("data"), 99, 120);
    let before = refs(&w.join(".sp-sync"));
    let code = run_and_signal(w, &["snapshot", "--no-cache"], Duration::from_millis(5), 15);
    if code == Some(143) {
        assert_eq!(before, refs(&w.join(".sp-sync")));
    }
    fsck(&w.join(".sp-sync"));
}

#[test]
fn sigint_during_push_and_pull_moves_no_ref_and_the_next_one_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path().join("w");
    let remote = tmp.path().join("remote");
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&w).unwrap();
    std::fs::create_dir_all(&other).unwrap();
    ok(&w, &["init"]);
    ok(&other, &["init"]);
    let remote_s = remote.to_str().unwrap().to_string();
    fill(&w.join("data"), 0, 80);
    ok(&w, &["snapshot"]);
    let mut d_push = duration_of(|| {
        ok(&w, &["push", &remote_s]);
    });
    let mut d_pull = duration_of(|| {
        ok(&other, &["pull", &remote_s]);
    });
    let mut rng = Rng(0x0bad_cafe_dead_beef);
    let (mut push_stopped, mut pull_stopped) = (0, 0);
    // At least 10 rounds; more (up to 40) while fewer than 2 of either
    // were stopped, each delay shrinking after a run that finished first
    // (the timed runs move more than a round does, and a busy machine
    // makes any of them slower).
    for round in 1..=40 {
        if round > 10 && push_stopped >= 2 && pull_stopped >= 2 {
            break;
        }
        fill(&w.join("data"), round, 80);
        ok(&w, &["snapshot"]);
        let before = refs(&remote);
        let code = run_and_signal(&w, &["push", &remote_s], delay(&mut rng, d_push), 2);
        if code == Some(130) {
            push_stopped += 1;
            assert_eq!(before, refs(&remote), "the remote's ref moved");
        } else {
            d_push = (d_push * 3 / 4).max(Duration::from_millis(5));
        }
        fsck(&remote);
        fsck(&w.join(".sp-sync"));
        // The next push completes whatever the first left undone.
        ok(&w, &["push", &remote_s]);
        fsck(&remote);

        let before = refs(&other.join(".sp-sync"));
        let code = run_and_signal(&other, &["pull", &remote_s], delay(&mut rng, d_pull), 2);
        if code == Some(130) {
            pull_stopped += 1;
            assert_eq!(before, refs(&other.join(".sp-sync")), "a local ref moved");
        } else {
            d_pull = (d_pull * 3 / 4).max(Duration::from_millis(5));
        }
        fsck(&other.join(".sp-sync"));
        ok(&other, &["pull", &remote_s]);
        fsck(&other.join(".sp-sync"));
        assert_eq!(
            refs(&remote).lines().find(|l| l.ends_with(" main")),
            refs(&other.join(".sp-sync"))
                .lines()
                .find(|l| l.ends_with(" main"))
        );
    }
    assert!(push_stopped >= 2, "only {push_stopped} pushes were stopped");
    assert!(pull_stopped >= 2, "only {pull_stopped} pulls were stopped");
}

#[test]
fn sigint_during_restore_exits_130_and_a_second_restore_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path().join("w");
    std::fs::create_dir_all(&w).unwrap();
    ok(&w, &["init"]);
    fill(&w.join("data"), 0, 160);
    ok(&w, &["snapshot"]);
    let target = tmp.path().join("t");
    let t = target.to_str().unwrap().to_string();
    ok(&w, &["restore", "main", &t]);
    std::fs::remove_dir_all(&target).unwrap();
    // Timed warm: the first run also paid for a cold page cache.
    let d = duration_of(|| {
        ok(&w, &["restore", "main", &t]);
    });
    let mut rng = Rng(0x5151_5151_7777_1234);
    let mut stopped = 0;
    for _ in 0..10 {
        std::fs::remove_dir_all(&target).unwrap();
        let before = refs(&w.join(".sp-sync"));
        let code = run_and_signal(&w, &["restore", "main", &t], delay(&mut rng, d), 2);
        if code == Some(130) {
            stopped += 1;
        }
        assert_eq!(before, refs(&w.join(".sp-sync")));
        fsck(&w.join(".sp-sync"));
        ok(&w, &["restore", "main", &t]);
        common::assert_same_tree(&w.join("data"), &target.join("data"));
    }
    assert!(stopped >= 2, "only {stopped} restores were stopped");
}
