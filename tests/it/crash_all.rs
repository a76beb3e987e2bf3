//! The crash harness (issue 14): every command that writes — `snapshot`,
//! `gc`, `gc --repack`, `push` and `pull` (to and from a real `sp-sync
//! serve` on loopback and a path remote), `bundle import`, `cache save`,
//! `restore --db` (SQLite, and PostgreSQL when a cluster can be started) —
//! is killed with SIGKILL at random moments, and after each kill:
//!
//! - `fsck` passes on every store the command touched (`fsck --read-data`
//!   every few rounds), so every ref points to a complete snapshot;
//! - every ref is either exactly where it was or exactly where the command
//!   would have moved it;
//! - earlier snapshots restore identical;
//! - a database is exactly as before or exactly as after (`sqlite3 .dump`,
//!   PostgreSQL row dumps);
//! - the next run of the same command completes, with the expected result.
//!
//! `SP_SYNC_CRASH_KILLS` is the number of kills that must land (the command
//! still running when killed) per command (default 2, so CI stays short);
//! `scripts/crash-harness.sh` runs 200 in total. The seed is printed;
//! `SP_SYNC_CRASH_SEED` replays one. Each test prints one
//! `crash-harness: COMMAND: ...` line with its figures.

use crate::common;
use crate::net;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, bytes, describe, dump, ok};

/// Kills that must land per command.
fn kills_wanted() -> usize {
    std::env::var("SP_SYNC_CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2)
}

/// The seed: `SP_SYNC_CRASH_SEED`, else from the clock (printed either way).
fn seed() -> u64 {
    std::env::var("SP_SYNC_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

/// xorshift64: a tiny deterministic generator.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One command's campaign: its generator, how long an uninterrupted run
/// takes now, and how many kills landed.
struct Campaign {
    name: &'static str,
    seed: u64,
    rng: Rng,
    full: Duration,
    landed: usize,
    finished: usize,
    wanted: usize,
    checks: usize,
}

impl Campaign {
    fn new(name: &'static str) -> Self {
        let seed = seed();
        eprintln!(
            "crash-harness: {name}: seed {seed} (SP_SYNC_CRASH_SEED={seed} replays it), {} kills wanted",
            kills_wanted()
        );
        Campaign {
            name,
            seed,
            rng: Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ name.len() as u64 | 1),
            full: Duration::from_millis(200),
            landed: 0,
            finished: 0,
            wanted: kills_wanted(),
            checks: 0,
        }
    }

    /// True while more kills must land (and the runs are not all missing).
    fn more(&self) -> bool {
        let runs = self.landed + self.finished;
        assert!(
            runs <= self.wanted * 4 + 12,
            "{}: the kills keep missing the running command ({} landed in {runs} runs)",
            self.name,
            self.landed
        );
        self.landed < self.wanted
    }

    /// Times `f` as an uninterrupted run (the next kill's range).
    fn timed<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let r = f();
        self.full = t.elapsed();
        r
    }

    /// Runs `cmd` and kills it with SIGKILL after a random delay in
    /// [0, 1.2 × a full run]. `None` when the kill landed; the stdout of
    /// a run that finished first (which must have succeeded).
    fn kill_at_random(&mut self, mut cmd: Command) -> Option<String> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let range = self.full.as_micros() as u64 * 12 / 10 + 1;
        let delay = Duration::from_micros(self.rng.next() % range);
        let mut child = cmd.spawn().expect("spawn sp-sync");
        std::thread::sleep(delay);
        let running = child.try_wait().unwrap().is_none();
        if running {
            child.kill().ok(); // SIGKILL
        }
        let out = child.wait_with_output().unwrap();
        if running {
            self.landed += 1;
            None
        } else {
            self.finished += 1;
            assert!(
                out.status.success(),
                "{}: an unkilled run failed ({:?}): {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            Some(String::from_utf8_lossy(&out.stdout).into_owned())
        }
    }

    /// Whether this round also re-reads every byte.
    fn read_data_round(&self) -> bool {
        (self.landed + self.finished).is_multiple_of(4)
    }

    fn report(&self) {
        eprintln!(
            "crash-harness: {}: {} kills landed, {} runs finished before the kill, {} invariant checks, 0 violations (seed {})",
            self.name, self.landed, self.finished, self.checks, self.seed
        );
    }
}

/// `sp-sync ARGS` in `cwd`, not yet run.
fn sp(cwd: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args)
        .current_dir(cwd)
        .env("SP_SYNC_CACHE_DIR", common::cache_dir())
        .env_remove("SP_SYNC_STORE");
    c
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The value of ref `name` in the store directory `store`, read from its file.
fn read_ref(store: &Path, name: &str) -> Option<String> {
    match std::fs::read_to_string(store.join("refs").join(name)) {
        Ok(v) => Some(v.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("read ref {name}: {e}"),
    }
}

/// Every ref of a store: name → value.
fn all_refs(store: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let name = p.strip_prefix(root).unwrap().to_str().unwrap().to_string();
                out.insert(
                    name,
                    std::fs::read_to_string(&p).unwrap().trim().to_string(),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&store.join("refs"), &store.join("refs"), &mut out);
    out
}

/// `fsck` (with `--read-data` when asked) passes on `store`: every ref
/// reaches only complete, intact objects.
fn fsck(c: &mut Campaign, store: &Path, read_data: bool) {
    let mut args = vec!["fsck", "--json", "--store", s(store)];
    if read_data {
        args.push("--read-data");
    }
    let out = ok(store.parent().unwrap(), &args);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["ok"],
        true,
        "{}: fsck of {}: {out}",
        c.name,
        store.display()
    );
    c.checks += 1;
}

/// `fsck`, with `--read-data` every few rounds.
fn fsck_round(c: &mut Campaign, store: &Path) {
    let read_data = c.read_data_round();
    fsck(c, store, read_data);
}

/// `ref` is `one` or the other of the allowed values.
fn ref_is_one_of(c: &mut Campaign, store: &Path, name: &str, allowed: &[Option<&str>]) {
    let v = read_ref(store, name);
    assert!(
        allowed.contains(&v.as_deref()),
        "{}: ref {name} of {} is {v:?}, neither of {allowed:?}",
        c.name,
        store.display()
    );
    c.checks += 1;
}

/// The tree without the store.
fn described(dir: &Path) -> BTreeMap<Vec<u8>, String> {
    let mut d = describe(dir);
    d.retain(|k, _| !k.starts_with(b".sp-sync"));
    d
}

/// `restore SNAP` from `store` into a fresh directory equals `want`.
fn restores_identical(
    c: &mut Campaign,
    store: &Path,
    tmp: &Path,
    snap: &str,
    want: &BTreeMap<Vec<u8>, String>,
) {
    let target = tmp.join("check-restore");
    let _ = std::fs::remove_dir_all(&target);
    ok(tmp, &["restore", snap, s(&target), "--store", s(store)]);
    assert_eq!(
        &described(&target),
        want,
        "{}: snapshot {snap} restores differently",
        c.name
    );
    std::fs::remove_dir_all(&target).unwrap();
    c.checks += 1;
}

/// Checks the first, the latest and one more of `completed` (all of them
/// on read-data rounds).
fn earlier_restore(
    c: &mut Campaign,
    store: &Path,
    tmp: &Path,
    completed: &[(String, BTreeMap<Vec<u8>, String>)],
) {
    if completed.is_empty() {
        return;
    }
    let picks: Vec<usize> = if c.read_data_round() {
        (0..completed.len()).collect()
    } else {
        vec![0, completed.len() - 1, c.rng.below(completed.len())]
    };
    for i in picks {
        let (id, want) = &completed[i];
        restores_identical(c, store, tmp, id, want);
    }
}

/// A tree of `n` files of ~`size` bytes under `dir/data`; a third of them
/// change with `round`.
fn fill(dir: &Path, round: u64, n: u64, size: usize) {
    std::fs::create_dir_all(dir.join("data")).unwrap();
    for i in 0..n {
        let seed = if i % 3 == round % 3 {
            round * 1000 + i
        } else {
            i
        };
        std::fs::write(
            dir.join(format!("data/f{i:03}.bin")),
            bytes(size + (i as usize) * 997, seed),
        )
        .unwrap();
    }
    std::fs::write(dir.join("round.txt"), format!("{round}\n")).unwrap();
}

/// A text file whose lines `round` touches differ (so repack finds deltas).
fn text_file(lines: usize, file: u64, round: u64) -> String {
    let mut s = String::new();
    for l in 0..lines as u64 {
        if (l * 31 + file * 7) % 97 < round % 97 {
            s.push_str(&format!("line {l} of {file}, edited in round {round}\n"));
        } else {
            s.push_str(&format!(
                "line {l} of file {file}: some words that stay the same\n"
            ));
        }
    }
    s
}

/// A working tree with its own store: (dir, store).
fn workspace(tmp: &Path, name: &str) -> (PathBuf, PathBuf) {
    let w = tmp.join(name);
    std::fs::create_dir_all(&w).unwrap();
    ok(&w, &["init", "-q"]);
    let st = w.join(".sp-sync");
    (w, st)
}

fn snapshot(w: &Path, msg: &str) -> (String, BTreeMap<Vec<u8>, String>) {
    let id = ok(w, &["snapshot", "-m", msg]).trim().to_string();
    (id, described(w))
}

#[test]
fn snapshot_killed_at_random_moments() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Campaign::new("snapshot");
    let (w, st) = workspace(tmp.path(), "w");
    fill(&w, 0, 40, 100_000);
    let mut completed = vec![c.timed(|| snapshot(&w, "baseline"))];
    let mut round = 0;
    while c.more() {
        round += 1;
        fill(&w, round, 40, 100_000);
        let before = read_ref(&st, "main").unwrap();
        let now = described(&w);
        let out = c.kill_at_random(sp(&w, &["snapshot", "-m", &format!("round {round}")]));
        fsck_round(&mut c, &st);
        let after = read_ref(&st, "main").unwrap();
        if let Some(out) = out {
            assert_eq!(out.trim(), after, "a finished snapshot moved main");
        }
        if after != before {
            // The ref moved: to a complete snapshot of the tree as it is,
            // whose parent is where main was.
            let log = ok(&w, &["log", "--json"]);
            let v: serde_json::Value = serde_json::from_str(&log).unwrap();
            assert_eq!(v[0]["id"], after.as_str());
            assert_eq!(v[0]["parents"][0], before.as_str(), "{log}");
            restores_identical(&mut c, &st, tmp.path(), &after, &now);
            completed.push((after, now));
        }
        earlier_restore(&mut c, &st, tmp.path(), &completed);
        // The next run completes.
        let next = c.timed(|| snapshot(&w, &format!("after kill {round}")));
        completed.push(next);
    }
    fsck(&mut c, &st, true);
    for (id, want) in completed.clone() {
        restores_identical(&mut c, &st, tmp.path(), &id, &want);
    }
    c.report();
}

/// `gc` (with `extra` arguments) killed at random moments, with garbage to
/// sweep every round.
fn gc_campaign(name: &'static str, extra: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Campaign::new(name);
    let (w, st) = workspace(tmp.path(), "w");
    let scratch = tmp.path().join("scratch");
    let snap_text = |w: &Path, round: u64| {
        std::fs::create_dir_all(w.join("text")).unwrap();
        for f in 0..20u64 {
            std::fs::write(
                w.join(format!("text/t{f:02}.txt")),
                text_file(500 + f as usize * 10, f, round),
            )
            .unwrap();
        }
        fill(w, round, 12, 60_000);
        snapshot(w, &format!("round {round}"))
    };
    let mut completed = Vec::new();
    for round in 0..4 {
        completed.push(snap_text(&w, round));
    }
    let mut gc_args = vec!["gc"];
    gc_args.extend_from_slice(extra);
    c.timed(|| ok(&w, &gc_args));
    let mut round = 4;
    while c.more() {
        round += 1;
        // Garbage: a snapshot under a ref that is then deleted.
        fill(&scratch, round + 500, 10, 50_000);
        ok(&w, &["snapshot", s(&scratch), "--ref", "scratch", "-q"]);
        ok(&w, &["ref", "delete", "scratch"]);
        if round % 2 == 0 {
            completed.push(snap_text(&w, round));
        }
        let refs = all_refs(&st);
        c.kill_at_random(sp(&w, &gc_args));
        fsck_round(&mut c, &st);
        assert_eq!(all_refs(&st), refs, "{name}: gc moved a ref");
        c.checks += 1;
        earlier_restore(&mut c, &st, tmp.path(), &completed);
        c.timed(|| ok(&w, &gc_args));
        fsck(&mut c, &st, false);
    }
    fsck(&mut c, &st, true);
    for (id, want) in completed.clone() {
        restores_identical(&mut c, &st, tmp.path(), &id, &want);
    }
    let tmp_left = std::fs::read_dir(st.join("tmp")).unwrap().count();
    assert_eq!(tmp_left, 0, "a finished gc leaves no temporary files");
    c.report();
}

#[test]
fn gc_killed_at_random_moments() {
    gc_campaign("gc", &[]);
}

#[test]
fn gc_repack_killed_at_random_moments() {
    gc_campaign("gc --repack", &["--repack"]);
}

/// `push` to `url` (a path or a served tenant whose store is `remote`)
/// killed at random moments.
fn push_campaign(name: &'static str, tmp: &Path, url: &str, remote: &Path) {
    let mut c = Campaign::new(name);
    let (w, st) = workspace(tmp, "pusher");
    ok(&w, &["remote", "add", "origin", url]);
    fill(&w, 0, 40, 100_000);
    let mut completed = vec![snapshot(&w, "baseline")];
    c.timed(|| ok(&w, &["push", "origin", "main"]));
    let mut round = 0;
    while c.more() {
        round += 1;
        fill(&w, round, 40, 100_000);
        let (id, tree) = snapshot(&w, &format!("round {round}"));
        let before = read_ref(remote, "main");
        let tracking = read_ref(&st, "remotes/origin/main");
        c.kill_at_random(sp(&w, &["push", "origin", "main"]));
        fsck_round(&mut c, remote);
        fsck(&mut c, &st, false);
        ref_is_one_of(&mut c, remote, "main", &[before.as_deref(), Some(&id)]);
        ref_is_one_of(
            &mut c,
            &st,
            "remotes/origin/main",
            &[tracking.as_deref(), Some(&id)],
        );
        ref_is_one_of(&mut c, &st, "main", &[Some(&id)]);
        if read_ref(remote, "main").as_deref() == Some(&id) {
            restores_identical(&mut c, remote, tmp, &id, &tree);
        }
        earlier_restore(&mut c, remote, tmp, &completed);
        c.timed(|| ok(&w, &["push", "origin", "main"]));
        ref_is_one_of(&mut c, remote, "main", &[Some(&id)]);
        ref_is_one_of(&mut c, &st, "remotes/origin/main", &[Some(&id)]);
        completed.push((id, tree));
    }
    fsck(&mut c, remote, true);
    for (id, want) in completed.clone() {
        restores_identical(&mut c, remote, tmp, &id, &want);
    }
    c.report();
}

#[test]
fn push_to_a_path_killed_at_random_moments() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("remote-store");
    push_campaign("push (path)", tmp.path(), s(&remote), &remote);
}

#[test]
fn push_to_a_server_killed_at_random_moments() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server-data");
    let server = net::serve(s(&data), None, "127.0.0.1:0", &[]);
    push_campaign(
        "push (serve)",
        tmp.path(),
        &server.url("acme"),
        &data.join("acme"),
    );
    drop(server);
}

/// `pull` from `url` (a path or a served tenant), which a second
/// workspace pushes a new snapshot to every round, killed at random moments.
fn pull_campaign(name: &'static str, tmp: &Path, url: &str) {
    let mut c = Campaign::new(name);
    let (up, _) = workspace(tmp, "upstream");
    ok(&up, &["remote", "add", "origin", url]);
    let (w, st) = workspace(tmp, "puller");
    ok(&w, &["remote", "add", "origin", url]);
    fill(&up, 0, 40, 100_000);
    let mut completed = vec![snapshot(&up, "baseline")];
    ok(&up, &["push", "origin", "main"]);
    c.timed(|| ok(&w, &["pull", "origin", "main"]));
    let mut round = 0;
    while c.more() {
        round += 1;
        fill(&up, round, 40, 100_000);
        let (id, tree) = snapshot(&up, &format!("round {round}"));
        ok(&up, &["push", "origin", "main"]);
        let before = read_ref(&st, "main");
        let tracking = read_ref(&st, "remotes/origin/main");
        c.kill_at_random(sp(&w, &["pull", "origin", "main"]));
        fsck_round(&mut c, &st);
        ref_is_one_of(&mut c, &st, "main", &[before.as_deref(), Some(&id)]);
        ref_is_one_of(
            &mut c,
            &st,
            "remotes/origin/main",
            &[tracking.as_deref(), Some(&id)],
        );
        if read_ref(&st, "main").as_deref() == Some(&id) {
            restores_identical(&mut c, &st, tmp, &id, &tree);
        }
        earlier_restore(&mut c, &st, tmp, &completed);
        c.timed(|| ok(&w, &["pull", "origin", "main"]));
        ref_is_one_of(&mut c, &st, "main", &[Some(&id)]);
        ref_is_one_of(&mut c, &st, "remotes/origin/main", &[Some(&id)]);
        completed.push((id, tree));
    }
    fsck(&mut c, &st, true);
    for (id, want) in completed.clone() {
        restores_identical(&mut c, &st, tmp, &id, &want);
    }
    c.report();
}

#[test]
fn pull_from_a_path_killed_at_random_moments() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("remote-store");
    pull_campaign("pull (path)", tmp.path(), s(&remote));
}

#[test]
fn pull_from_a_server_killed_at_random_moments() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server-data");
    let server = net::serve(s(&data), None, "127.0.0.1:0", &[]);
    pull_campaign("pull (serve)", tmp.path(), &server.url("acme"));
    drop(server);
}

#[test]
fn bundle_import_killed_at_random_moments() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Campaign::new("bundle import");
    let (src, _) = workspace(tmp.path(), "src");
    let (w, st) = workspace(tmp.path(), "dst");
    let bundle = tmp.path().join("b.bundle");
    fill(&src, 0, 40, 100_000);
    let mut completed = vec![snapshot(&src, "baseline")];
    ok(&src, &["bundle", "create", s(&bundle), "-q"]);
    c.timed(|| ok(&w, &["bundle", "import", s(&bundle)]));
    let mut round = 0;
    while c.more() {
        round += 1;
        let prev = completed.last().unwrap().0.clone();
        fill(&src, round, 40, 100_000);
        let (id, tree) = snapshot(&src, &format!("round {round}"));
        // Alternately incremental (since the previous one) and whole.
        if round % 2 == 0 {
            ok(
                &src,
                &["bundle", "create", s(&bundle), "--since", &prev, "-q"],
            );
        } else {
            ok(&src, &["bundle", "create", s(&bundle), "-q"]);
        }
        let before = read_ref(&st, "main");
        c.kill_at_random(sp(&w, &["bundle", "import", s(&bundle)]));
        fsck_round(&mut c, &st);
        ref_is_one_of(&mut c, &st, "main", &[before.as_deref(), Some(&id)]);
        if read_ref(&st, "main").as_deref() == Some(&id) {
            restores_identical(&mut c, &st, tmp.path(), &id, &tree);
        }
        earlier_restore(&mut c, &st, tmp.path(), &completed);
        c.timed(|| ok(&w, &["bundle", "import", s(&bundle)]));
        ref_is_one_of(&mut c, &st, "main", &[Some(&id)]);
        completed.push((id, tree));
    }
    fsck(&mut c, &st, true);
    for (id, want) in completed.clone() {
        restores_identical(&mut c, &st, tmp.path(), &id, &want);
    }
    c.report();
}

#[test]
fn cache_save_killed_at_random_moments() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Campaign::new("cache save");
    let remote = tmp.path().join("cache-remote");
    let local = tmp.path().join("local-cache-store");
    let w = tmp.path().join("runner");
    std::fs::create_dir_all(&w).unwrap();
    let cache = |args: &[&str]| {
        let mut cmd = sp(&w, args);
        cmd.env("SP_SYNC_CACHE_STORE", &local);
        cmd
    };
    let run_ok = |args: &[&str]| {
        let o = cache(args).output().unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    // What `cache restore KEY` gives, compared with the saved tree.
    let restored = |key: &str| {
        let t = tmp.path().join("cache-restored");
        let _ = std::fs::remove_dir_all(&t);
        std::fs::create_dir_all(&t).unwrap();
        let v: serde_json::Value = serde_json::from_str(&run_ok(&[
            "cache",
            "restore",
            key,
            "--remote",
            s(&remote),
            "--target",
            s(&t),
            "--json",
        ]))
        .unwrap();
        assert_eq!(v["result"], "hit", "{key}: {v}");
        let d = cache_tree(&t);
        std::fs::remove_dir_all(&t).unwrap();
        d
    };
    fill(&w, 0, 40, 100_000);
    let mut saved = vec![("k0".to_string(), cache_tree(&w))];
    c.timed(|| {
        run_ok(&[
            "cache",
            "save",
            "k0",
            "data",
            "round.txt",
            "--remote",
            s(&remote),
        ])
    });
    let mut round = 0;
    while c.more() {
        round += 1;
        fill(&w, round, 40, 100_000);
        let key = format!("k{round}");
        let tree = cache_tree(&w);
        let refs = all_refs(&remote);
        c.kill_at_random(cache(&[
            "cache",
            "save",
            &key,
            "data",
            "round.txt",
            "--remote",
            s(&remote),
        ]));
        fsck_round(&mut c, &remote);
        if local.join("refs").exists() {
            fsck(&mut c, &local, false);
        }
        // No other entry moved; this key's entry is absent or complete.
        let mut now = all_refs(&remote);
        now.retain(|k, _| !k.ends_with(&format!("/{key}")));
        assert_eq!(now, refs, "cache save moved another entry");
        c.checks += 1;
        if read_ref(&remote, &format!("cache/{key}")).is_some() {
            assert_eq!(restored(&key), tree, "{key}: a partial entry");
            c.checks += 1;
        }
        let (old, want) = &saved[c.rng.below(saved.len())];
        assert_eq!(&restored(old), want, "{old} restores differently");
        c.checks += 1;
        c.timed(|| {
            run_ok(&[
                "cache",
                "save",
                &key,
                "data",
                "round.txt",
                "--remote",
                s(&remote),
            ])
        });
        assert_eq!(restored(&key), tree, "{key} after the next save");
        saved.push((key, tree));
    }
    fsck(&mut c, &remote, true);
    for (key, want) in &saved {
        assert_eq!(&restored(key), want, "{key}");
    }
    c.report();
}

/// The tree as `cache restore` gives it back: without the mtime of the
/// saved directory itself (`cache restore` does not set it; noted in the
/// report of issue 14).
fn cache_tree(dir: &Path) -> BTreeMap<Vec<u8>, String> {
    let mut d = described(dir);
    if let Some(v) = d.get_mut(b"data".as_slice()) {
        *v = v.split(' ').take(2).collect::<Vec<_>>().join(" ");
    }
    d
}

/// SQL for a table `t` of `n` rows whose values depend on `seed`.
fn sqlite_state(db: &Path, seed: u64, n: u64) {
    let _ = std::fs::remove_file(db);
    let sql = format!(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL, v INTEGER, b BLOB);
         CREATE TABLE u (k TEXT PRIMARY KEY, n INTEGER);
         WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {n})
         INSERT INTO t SELECT x, 'row ' || x || ' of ' || ((x * {seed}) % 5),
             (x * 2654435761 + {seed}) % 1000003,
             zeroblob((x % 13) * 10)
           FROM c WHERE (x + {seed}) % 11 != 0;
         WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {n} / 4)
         INSERT INTO u SELECT 'key-' || x, x * {seed} FROM c WHERE (x + {seed}) % 3 != 0;"
    );
    let o = Command::new("sqlite3").arg(db).arg(&sql).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn restore_into_sqlite_killed_at_random_moments() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Campaign::new("restore --db (SQLite)");
    let d = tmp.path();
    std::fs::create_dir_all(d.join("files")).unwrap();
    std::fs::write(d.join("files/a.txt"), b"a\n").unwrap();
    ok(d, &["init", "--store", "st", "-q"]);
    let db = d.join("app.db");
    // Two states, A and B, far enough apart that a restore works a while.
    let mut states = Vec::new();
    for seed in [1u64, 2] {
        sqlite_state(&db, seed, 40_000);
        let id = ok(
            d,
            &["--store", "st", "snapshot", "files", "--db", "app.db", "-q"],
        )
        .trim()
        .to_string();
        let id = if id.is_empty() {
            read_ref(&d.join("st"), "main").unwrap()
        } else {
            id
        };
        states.push((id, dump(&db)));
    }
    // app.db is in state B now.
    let mut cur = 1;
    c.timed(|| {
        ok(
            d,
            &[
                "--store",
                "st",
                "restore",
                &states[0].0,
                "--db",
                "app.db",
                "--delete",
                "-q",
            ],
        )
    });
    cur = 1 - cur;
    assert_eq!(dump(&db), states[cur].1);
    let mut round = 0;
    while c.more() {
        round += 1;
        let to = 1 - cur;
        if round % 3 == 0 {
            // Into a new file: afterwards absent, or complete.
            let fresh = d.join(format!("new{round}.db"));
            let name = format!("new{round}.db");
            c.kill_at_random(sp(
                d,
                &[
                    "--store",
                    "st",
                    "restore",
                    &states[to].0,
                    "--db",
                    &name,
                    "-q",
                ],
            ));
            // (What the kill left, the temporary database under a hidden
            // name, is removed by the next restore into that file, once it
            // has not changed for an hour: SP_SYNC_STALE_AFTER=0 here. The
            // hour was missing, and this round failed whenever the kill
            // landed while the new database was being built.)
            if fresh.exists() {
                assert_eq!(dump(&fresh), states[to].1, "a partial new database");
            }
            c.checks += 1;
            // The next run completes (onto what the kill left).
            let o = sp(
                d,
                &[
                    "--store",
                    "st",
                    "restore",
                    &states[to].0,
                    "--db",
                    &name,
                    "-q",
                ],
            )
            .env("SP_SYNC_STALE_AFTER", "0")
            .output()
            .unwrap();
            assert!(o.status.success(), "{o:?}");
            assert_eq!(dump(&fresh), states[to].1);
            std::fs::remove_file(&fresh).unwrap();
            let litter: Vec<String> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(&format!("{name}.sp-sync-")))
                .collect();
            assert!(litter.is_empty(), "left after the next restore: {litter:?}");
            c.checks += 1;
        } else {
            // In place, with --delete.
            c.kill_at_random(sp(
                d,
                &[
                    "--store",
                    "st",
                    "restore",
                    &states[to].0,
                    "--db",
                    "app.db",
                    "--delete",
                    "-q",
                ],
            ));
            let now = dump(&db);
            assert!(
                now == states[cur].1 || now == states[to].1,
                "round {round}: app.db is neither before nor after the restore"
            );
            c.checks += 1;
            c.timed(|| {
                ok(
                    d,
                    &[
                        "--store",
                        "st",
                        "restore",
                        &states[to].0,
                        "--db",
                        "app.db",
                        "--delete",
                        "-q",
                    ],
                )
            });
            assert_eq!(dump(&db), states[to].1);
            cur = to;
        }
        fsck_round(&mut c, &d.join("st"));
    }
    c.report();
}

#[test]
fn restore_into_postgres_killed_at_random_moments() {
    let Some(pg) = common::pg::cluster() else {
        eprintln!("crash-harness: restore --db (PostgreSQL): SKIPPED, no PostgreSQL");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Campaign::new("restore --db (PostgreSQL)");
    let d = tmp.path();
    std::fs::create_dir_all(d.join("files")).unwrap();
    std::fs::write(d.join("files/a.txt"), b"a\n").unwrap();
    common::pg::ok_pg(d, &["init", "--store", "st", "-q"]);
    let db = pg.new_db("crash");
    let url = pg.url(&db);
    pg.psql(
        &db,
        "CREATE TABLE t (id integer PRIMARY KEY, name text NOT NULL, v bigint);
         CREATE TABLE u (k text PRIMARY KEY, n integer);",
    );
    let fill_pg = |seed: u64| {
        pg.psql(
            &db,
            &format!(
                "BEGIN; DELETE FROM t; DELETE FROM u;
                 INSERT INTO t SELECT x, 'row ' || x || ' of ' || ((x * {seed}) % 5), (x * 2654435761 + {seed}) % 1000003
                   FROM generate_series(1, 6000) x WHERE (x + {seed}) % 11 != 0;
                 INSERT INTO u SELECT 'key-' || x, x * {seed} FROM generate_series(1, 1500) x
                   WHERE (x + {seed}) % 3 != 0;
                 COMMIT;"
            ),
        );
    };
    let rows = || (pg.dump_rows(&db, "t"), pg.dump_rows(&db, "u"));
    let mut states = Vec::new();
    for seed in [1u64, 2] {
        fill_pg(seed);
        let id = common::pg::ok_pg(
            d,
            &["--store", "st", "snapshot", "files", "--db", &url, "-q"],
        );
        let _ = id;
        states.push((read_ref(&d.join("st"), "main").unwrap(), rows()));
    }
    let mut cur = 1;
    let restore = |id: &str| {
        let mut cmd = sp(
            d,
            &[
                "--store", "st", "restore", id, "--db", &url, "--delete", "-q",
            ],
        );
        cmd.env("PGPASSWORD", common::pg::PASSWORD);
        cmd
    };
    let run_ok = |mut cmd: Command| {
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    c.timed(|| run_ok(restore(&states[0].0)));
    cur = 1 - cur;
    assert!(rows() == states[cur].1);
    while c.more() {
        let to = 1 - cur;
        c.kill_at_random(restore(&states[to].0));
        let now = rows();
        assert!(
            now == states[cur].1 || now == states[to].1,
            "the database is neither before nor after the restore"
        );
        c.checks += 1;
        fsck_round(&mut c, &d.join("st"));
        c.timed(|| run_ok(restore(&states[to].0)));
        assert!(rows() == states[to].1, "the next restore did not complete");
        cur = to;
    }
    c.report();
}
