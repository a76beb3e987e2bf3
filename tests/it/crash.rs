//! Crash safety and concurrency: `snapshot` killed with SIGKILL at random
//! moments never costs a completed snapshot; concurrent snapshots both land;
//! gc never removes what a running snapshot needs.

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, bytes, describe, ok};

fn sp(w: &Path) -> Command {
    let mut c = Command::new(bin());
    c.current_dir(w)
        .env("SP_SYNC_CACHE_DIR", common::cache_dir())
        .env_remove("SP_SYNC_STORE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn described(dir: &Path) -> BTreeMap<Vec<u8>, String> {
    let mut d = describe(dir);
    d.retain(|k, _| !k.starts_with(b".sp-sync"));
    d
}

fn fill(w: &Path, round: u64) {
    std::fs::create_dir_all(w.join("data")).unwrap();
    for i in 0..60u64 {
        // A third of the files change every round, so every snapshot writes.
        let seed = if i % 3 == round % 3 {
            round * 1000 + i
        } else {
            i
        };
        std::fs::write(
            w.join(format!("data/f{i:03}.bin")),
            bytes(150_000 + (i as usize) * 1000, seed),
        )
        .unwrap();
    }
    std::fs::write(w.join("round.txt"), format!("{round}\n")).unwrap();
}

fn check_restore(w: &Path, tmp: &Path, snap: &str, want: &BTreeMap<Vec<u8>, String>) {
    let target = tmp.join(format!("restore-{snap}"));
    ok(w, &["restore", snap, target.to_str().unwrap()]);
    assert_eq!(
        &described(&target),
        want,
        "snapshot {snap} restores differently"
    );
    std::fs::remove_dir_all(&target).unwrap();
}

/// A tiny deterministic generator (no extra dependency).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn sigkill_at_random_moments_loses_no_completed_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path().join("w");
    std::fs::create_dir(&w).unwrap();
    ok(&w, &["init"]);
    fill(&w, 0);
    let t0 = Instant::now();
    let first = ok(&w, &["snapshot", "-m", "baseline"]).trim().to_string();
    let mut full = t0.elapsed();
    let mut completed = vec![(first, described(&w))];

    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_u64);
    eprintln!("crash test seed {seed} (set CRASH_SEED to replay), full snapshot {full:?}");
    let mut rng = Rng(seed | 1);
    let mut killed_midway = 0;
    let mut round = 0u64;
    while killed_midway < 20 {
        round += 1;
        assert!(round <= 80, "kills keep missing the running snapshot");
        eprintln!("round {round}: {killed_midway} kills landed so far");
        fill(&w, round);
        let mut child = sp(&w)
            .args(["snapshot", "-m", &format!("round {round}")])
            .spawn()
            .unwrap();
        let delay = Duration::from_micros(rng.next() % (full.as_micros() as u64 * 12 / 10 + 1));
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            killed_midway += 1;
        }
        child.kill().ok(); // SIGKILL
        let status = child.wait().unwrap();
        if status.success() {
            // It finished before the kill: it is a completed snapshot.
            let out = child
                .stdout
                .take()
                .map(std::io::read_to_string)
                .unwrap()
                .unwrap();
            completed.push((out.trim().to_string(), described(&w)));
        }
        ok(&w, &["fsck"]);
        // Every completed snapshot so far: check the first, the latest, and one
        // more picked at random.
        let pick = (rng.next() as usize) % completed.len();
        for i in [0, completed.len() - 1, pick] {
            let (id, want) = &completed[i];
            check_restore(&w, tmp.path(), id, want);
        }
        // The next snapshot succeeds (and tells how long one takes now).
        fill(&w, round + 1000);
        let t = Instant::now();
        let id = ok(&w, &["snapshot", "-m", &format!("after kill {round}")])
            .trim()
            .to_string();
        full = t.elapsed();
        completed.push((id, described(&w)));
    }
    ok(&w, &["fsck", "--read-data"]);
    for (id, want) in &completed {
        check_restore(&w, tmp.path(), id, want);
    }
    // gc after the crashes sweeps leftovers and keeps every snapshot.
    ok(&w, &["gc"]);
    ok(&w, &["fsck", "--read-data"]);
    let (id, want) = completed.last().unwrap();
    check_restore(&w, tmp.path(), id, want);
    let tmp_left = std::fs::read_dir(w.join(".sp-sync/tmp")).unwrap().count();
    assert_eq!(tmp_left, 0, "gc leaves no temporary files");
}

#[test]
fn two_concurrent_snapshots_both_finish_and_the_store_stays_consistent() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path().join("w");
    std::fs::create_dir(&w).unwrap();
    ok(&w, &["init"]);
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    fill(&a, 1);
    fill(&b, 2);
    for round in 0..3 {
        let ca = sp(&w)
            .args(["snapshot", a.to_str().unwrap(), "-m", "a"])
            .spawn()
            .unwrap();
        let cb = sp(&w)
            .args(["snapshot", b.to_str().unwrap(), "-m", "b"])
            .spawn()
            .unwrap();
        let oa = ca.wait_with_output().unwrap();
        let ob = cb.wait_with_output().unwrap();
        assert!(
            oa.status.success(),
            "{}",
            String::from_utf8_lossy(&oa.stderr)
        );
        assert!(
            ob.status.success(),
            "{}",
            String::from_utf8_lossy(&ob.stderr)
        );
        let ia = String::from_utf8(oa.stdout).unwrap().trim().to_string();
        let ib = String::from_utf8(ob.stdout).unwrap().trim().to_string();
        // Both are in main's history (one was re-parented onto the other).
        let log = ok(&w, &["log", "--json"]);
        assert!(
            log.contains(&ia) && log.contains(&ib),
            "round {round}: {log}"
        );
        ok(&w, &["fsck", "--read-data"]);
        check_restore(&w, tmp.path(), &ia, &described(&a));
        check_restore(&w, tmp.path(), &ib, &described(&b));
        fill(&a, 3 + round);
    }
}

#[test]
fn gc_never_removes_an_object_a_concurrent_snapshot_needs() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path().join("w");
    std::fs::create_dir(&w).unwrap();
    ok(&w, &["init"]);
    let data = tmp.path().join("data");
    for round in 0..6u64 {
        // Garbage that the next snapshot will want: snapshot `data` under a
        // scratch ref, then drop the ref.
        fill(&data, 100 + round);
        ok(
            &w,
            &["snapshot", data.to_str().unwrap(), "--ref", "scratch"],
        );
        ok(&w, &["ref", "delete", "scratch"]);
        // Now race: gc (which would sweep those chunks) against a snapshot
        // that deduplicates against them. Alternate who starts first.
        let (first, second): (Vec<&str>, Vec<&str>) = (
            vec!["gc"],
            vec!["snapshot", data.to_str().unwrap(), "-m", "race"],
        );
        let (c1, c2) = if round % 2 == 0 {
            let c1 = sp(&w).args(&first).spawn().unwrap();
            let c2 = sp(&w).args(&second).spawn().unwrap();
            (c1, c2)
        } else {
            let c2 = sp(&w).args(&second).spawn().unwrap();
            std::thread::sleep(Duration::from_millis(20 * round));
            let c1 = sp(&w).args(&first).spawn().unwrap();
            (c1, c2)
        };
        let o1 = c1.wait_with_output().unwrap();
        let o2 = c2.wait_with_output().unwrap();
        assert!(
            o1.status.success(),
            "gc: {}",
            String::from_utf8_lossy(&o1.stderr)
        );
        assert!(
            o2.status.success(),
            "snapshot: {}",
            String::from_utf8_lossy(&o2.stderr)
        );
        let id = String::from_utf8(o2.stdout).unwrap().trim().to_string();
        ok(&w, &["fsck", "--read-data"]);
        check_restore(&w, tmp.path(), &id, &described(&data));
    }
}

/// A text file of ~`lines` lines whose lines `round` touches differ.
fn text_file(lines: usize, file: u64, round: u64) -> String {
    let mut s = String::new();
    for l in 0..lines as u64 {
        if (l * 31 + file * 7) % 97 < round {
            s.push_str(&format!("line {l} of {file}, edited in round {round}\n"));
        } else {
            s.push_str(&format!(
                "line {l} of file {file}: some words that stay the same\n"
            ));
        }
    }
    s
}

#[test]
fn gc_repack_killed_at_random_moments_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path().join("w");
    std::fs::create_dir_all(w.join("data")).unwrap();
    ok(&w, &["init"]);
    let mut completed: Vec<(String, BTreeMap<Vec<u8>, String>)> = Vec::new();
    let snap = |w: &Path, round: u64, completed: &mut Vec<_>| {
        for f in 0..25u64 {
            std::fs::write(
                w.join(format!("data/t{f:02}.txt")),
                text_file(600 + f as usize * 12, f, round),
            )
            .unwrap();
        }
        let id = ok(w, &["snapshot", "-m", &format!("round {round}")])
            .trim()
            .to_string();
        completed.push((id, described(w)));
    };
    for round in 0..6 {
        snap(&w, round, &mut completed);
    }
    let t = Instant::now();
    let out = ok(&w, &["gc", "--repack"]);
    let full = t.elapsed();
    assert!(out.contains("stored as deltas"), "{out}");
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_u64);
    eprintln!("repack crash test seed {seed}, full repack {full:?}");
    let mut rng = Rng(seed | 1);
    let mut killed_midway = 0;
    let mut tries = 0;
    while killed_midway < 8 {
        tries += 1;
        assert!(tries <= 40, "kills keep missing the running repack");
        if tries % 3 == 0 {
            snap(&w, 6 + tries, &mut completed);
        }
        let mut child = sp(&w).args(["gc", "--repack"]).spawn().unwrap();
        let delay = Duration::from_micros(rng.next() % (full.as_micros() as u64 * 12 / 10 + 1));
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            killed_midway += 1;
        }
        child.kill().ok(); // SIGKILL
        child.wait().unwrap();
        ok(&w, &["fsck"]);
        let pick = (rng.next() as usize) % completed.len();
        for i in [0, completed.len() - 1, pick] {
            let (id, want) = &completed[i];
            check_restore(&w, tmp.path(), id, want);
        }
    }
    ok(&w, &["fsck", "--read-data"]);
    for (id, want) in &completed {
        check_restore(&w, tmp.path(), id, want);
    }
    // A finished gc (plain, then repack) after the crashes leaves one copy
    // of everything and no temporary files.
    ok(&w, &["gc"]);
    ok(&w, &["gc", "--repack"]);
    ok(&w, &["fsck", "--read-data"]);
    for (id, want) in &completed {
        check_restore(&w, tmp.path(), id, want);
    }
    let tmp_left = std::fs::read_dir(w.join(".sp-sync/tmp")).unwrap().count();
    assert_eq!(tmp_left, 0, "gc leaves no temporary files");
}
