//! The corruption harness (issue 14): random byte flips, truncations and
//! deletions of the files of a store (packs — chunks, trees, tables, row
//! maps, dictionaries, stored deltas —, their indexes, refs, `store.toml`,
//! `config.toml`), one at a time on a fresh copy. Each one must be
//!
//! - detected by `fsck --read-data` (exit 1, naming the damage), and
//! - never turned into wrong output with exit 0 by `restore` (files and
//!   database), `diff`, `ls` or `cat` of any snapshot: each either prints
//!   exactly what the undamaged store prints, or fails with one `error:`
//!   line and exit 1 (never a panic).
//!
//! Exempt from detection (and still held to "no wrong output"): damage
//! that is indistinguishable from a legitimate state of the store — a
//! deleted ref (what `ref delete` does), a deleted or edited `config.toml`
//! (machine-local settings, never hashed), and edits of `store.toml` that
//! change no value a reader decodes (its leading comment, say: the file is
//! TOML without a checksum). They are counted separately and listed.
//!
//! `SP_SYNC_CORRUPTIONS` sets the number (default 24, for CI);
//! `scripts/corruption-harness.sh` runs 1,000. The seed is printed;
//! `SP_SYNC_CORRUPTION_SEED` replays one. The test prints one
//! `corruption-harness: ...` line with the figures.

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use common::{bin, bytes, describe, dump};

fn count() -> usize {
    std::env::var("SP_SYNC_CORRUPTIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24)
}

fn seed() -> u64 {
    std::env::var("SP_SYNC_CORRUPTION_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn run(cwd: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir(cwd)
        .env("SP_SYNC_CACHE_DIR", cwd.join("cache"))
        .env("SP_SYNC_DICT_TRAIN_BYTES", "4096")
        .env_remove("SP_SYNC_STORE")
        .output()
        .expect("spawn sp-sync")
}

fn ok(cwd: &Path, args: &[&str]) -> String {
    let o = run(cwd, args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), &t).unwrap();
        }
    }
}

/// A read command and what the undamaged store answers to it.
enum Check {
    /// stdout of a command.
    Stdout(Vec<String>, Vec<u8>),
    /// `restore SNAP TARGET`: the restored tree.
    Restore(String, BTreeMap<Vec<u8>, String>),
    /// `restore SNAP --db NEW`: its `.dump`.
    RestoreDb(String, String),
}

/// Builds the store: files (small, multi-chunk, empty, a symlink, 60
/// pages for a dictionary) and a SQLite table, three snapshots, then
/// `gc --repack` (stored deltas). Returns the read checks.
fn setup(d: &Path) -> Vec<Check> {
    let f = d.join("files");
    std::fs::create_dir_all(f.join("agents/nested")).unwrap();
    std::fs::create_dir_all(f.join("pages")).unwrap();
    for i in 0..60 {
        std::fs::write(
            f.join(format!("pages/p{i}.md")),
            format!(
                "# page {i}\n\n{}",
                "some shared words of the pages\n".repeat(3 + i % 5)
            ),
        )
        .unwrap();
    }
    std::fs::write(f.join("agents/a.md"), "# agent a\n".repeat(50)).unwrap();
    std::fs::write(f.join("agents/nested/b.md"), "# agent b\n").unwrap();
    std::fs::write(f.join("big.bin"), bytes(1 << 20, 3)).unwrap();
    std::fs::write(f.join("empty"), "").unwrap();
    std::os::unix::fs::symlink("agents/a.md", f.join("link")).unwrap();
    let sql = "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL, v REAL, b BLOB);
         WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000)
         INSERT INTO t SELECT x, 'row number ' || x, x / 7.0, zeroblob(x % 50) FROM c;";
    let sqlite = |sql: &str| {
        let o = Command::new("sqlite3")
            .arg(d.join("app.db"))
            .arg(sql)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    sqlite(sql);
    ok(d, &["init", "--store", "st", "-q"]);
    let snap = |m: &str| {
        ok(
            d,
            &[
                "--store", "st", "snapshot", "files", "--db", "app.db", "-m", m, "-q",
            ],
        );
    };
    snap("one");
    let mut big = bytes(1 << 20, 3);
    big[600_000..600_100].fill(7);
    std::fs::write(f.join("big.bin"), big).unwrap();
    std::fs::write(f.join("agents/a.md"), "# agent a\n".repeat(60)).unwrap();
    std::fs::write(f.join("agents/c.md"), "# agent c\n").unwrap();
    sqlite(
        "UPDATE t SET name = 'changed ' || id WHERE id % 97 = 0; DELETE FROM t WHERE id % 301 = 0;",
    );
    snap("two");
    std::fs::write(f.join("agents/c.md"), "# agent c, again\n").unwrap();
    std::fs::write(f.join("pages/p3.md"), "# page 3, rewritten\n").unwrap();
    sqlite("INSERT INTO t VALUES (5000, 'new', 1.5, x'00ff');");
    snap("three");
    ok(d, &["--store", "st", "gc", "--repack", "-q"]);
    // One more snapshot after the repack: a second pack, records stored
    // whole next to the repacked deltas; and a second ref.
    std::fs::write(f.join("agents/d.md"), "# agent d\n".repeat(30)).unwrap();
    sqlite("UPDATE t SET v = v + 1 WHERE id % 13 = 0;");
    snap("four");
    ok(d, &["--store", "st", "ref", "set", "release", "main~2"]);
    ok(
        d,
        &[
            "--store",
            "st",
            "remote",
            "add",
            "origin",
            "/nonexistent/remote",
        ],
    );
    {
        use systemprompt_sync::pack::{FLAG_BLOCK, FLAG_DELTA};
        let s = systemprompt_sync::Store::open(&d.join("st"), systemprompt_sync::LockMode::Shared)
            .unwrap();
        let all = s.all_objects();
        assert!(
            all.iter().any(|(_, l)| l.flags == FLAG_DELTA),
            "nothing stored as a delta"
        );
        assert!(all.iter().any(|(_, l)| l.flags == FLAG_BLOCK), "no block");
    }
    ok(d, &["--store", "st", "fsck", "--read-data"]);

    // What the undamaged store answers.
    let log: serde_json::Value =
        serde_json::from_str(&ok(d, &["--store", "st", "log", "--json"])).unwrap();
    let ids: Vec<String> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 4);
    let mut names: Vec<String> = ids.clone();
    names.extend(["main".into(), "main~1".into(), "release".into()]);
    let mut checks = Vec::new();
    for n in &names {
        let target = d.join("expect");
        ok(
            d,
            &["--store", "st", "restore", n, target.to_str().unwrap()],
        );
        checks.push(Check::Restore(n.clone(), describe(&target)));
        std::fs::remove_dir_all(&target).unwrap();
        let db = d.join("expect.db");
        ok(
            d,
            &["--store", "st", "restore", n, "--db", "expect.db", "-q"],
        );
        checks.push(Check::RestoreDb(n.clone(), dump(&db)));
        std::fs::remove_file(&db).unwrap();
        for args in [
            vec!["ls", "-r", "-l", n.as_str()],
            vec!["cat", &format!("{n}:big.bin")],
            vec!["cat", &format!("{n}:agents/a.md")],
            vec!["cat", &format!("{n}:pages/p3.md")],
        ] {
            let mut full = vec!["--store".to_string(), "st".to_string()];
            full.extend(args.iter().map(|s| s.to_string()));
            let a: Vec<&str> = full.iter().map(String::as_str).collect();
            let out = run(d, &a);
            assert!(out.status.success());
            checks.push(Check::Stdout(full, out.stdout));
        }
    }
    for (a, b) in [("main~3", "main"), (ids[2].as_str(), ids[1].as_str())] {
        for extra in [&[][..], &["-p"][..], &["--json"][..]] {
            let mut full: Vec<String> = ["--store", "st", "diff", a, b]
                .iter()
                .map(|s| s.to_string())
                .collect();
            full.extend(extra.iter().map(|s| s.to_string()));
            let a: Vec<&str> = full.iter().map(String::as_str).collect();
            let out = run(d, &a);
            assert!(out.status.success());
            checks.push(Check::Stdout(full, out.stdout));
        }
    }
    checks
}

/// For a pack: each record's (offset, header length), from its index.
fn record_spots(store: &Path, rel: &str) -> Vec<(u64, u64)> {
    let Some(idx) = rel.strip_suffix(".pack") else {
        return Vec::new();
    };
    let b = std::fs::read(store.join(format!("{idx}.idx"))).unwrap();
    let n = u32::from_le_bytes(b[41..45].try_into().unwrap()) as usize;
    (0..n)
        .map(|i| {
            let e = &b[45 + 50 * i..45 + 50 * (i + 1)];
            let off = u64::from_le_bytes(e[34..42].try_into().unwrap());
            let clen = u64::from(u32::from_le_bytes(e[42..46].try_into().unwrap()));
            let ulen = u64::from(u32::from_le_bytes(e[46..50].try_into().unwrap()));
            (off, systemprompt_sync::pack::record_header_len(ulen, clen))
        })
        .collect()
}

/// Counts of (tag, flags) over the store's index entries.
fn record_kinds(store: &Path) -> BTreeMap<(u8, u8), usize> {
    let mut out = BTreeMap::new();
    for p in common::files_under(&store.join("packs")) {
        if p.extension().is_some_and(|e| e == "idx") {
            let b = std::fs::read(&p).unwrap();
            let n = u32::from_le_bytes(b[41..45].try_into().unwrap()) as usize;
            for i in 0..n {
                let e = &b[45 + 50 * i..45 + 50 * (i + 1)];
                *out.entry((e[32], e[33])).or_default() += 1;
            }
        }
    }
    out
}

/// What kind of store file a path is.
fn kind(rel: &str) -> &'static str {
    if rel.ends_with(".pack") {
        "pack"
    } else if rel.ends_with(".idx") {
        "index"
    } else if rel.starts_with("refs/") {
        "ref"
    } else if rel == "store.toml" {
        "store.toml"
    } else if rel == "config.toml" {
        "config.toml"
    } else {
        "other"
    }
}

/// The store's files that hold data (not locks, not tmp/).
fn data_files(store: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["packs", "refs"] {
        for p in common::files_under(&store.join(sub)) {
            out.push(p.strip_prefix(store).unwrap().to_str().unwrap().to_string());
        }
    }
    for f in ["store.toml", "config.toml"] {
        if store.join(f).exists() {
            out.push(f.to_string());
        }
    }
    out.sort();
    out
}

#[derive(Default)]
struct Tally {
    by: BTreeMap<String, usize>,
    detected: usize,
    exempt: usize,
    undetected: Vec<String>,
    wrong: Vec<String>,
    /// One fsck message per class of damage, to show how it is named.
    sample: BTreeMap<String, String>,
    exempted: Vec<String>,
    runs: usize,
}

#[test]
fn every_corruption_is_detected_and_none_becomes_wrong_output() {
    harness(seed());
}

/// Seeds that once found a bug, replayed on every run:
/// - 1796489450769168452: a flipped index byte made reading its pack look
///   up a delta's base in a pack not loaded yet, which loaded the indexes
///   again, and read that pack again, without end (fsck aborted).
#[test]
fn seeds_that_found_bugs_stay_fixed() {
    const SEEDS: &[u64] = &[1_796_489_450_769_168_452];
    for &seed in SEEDS {
        harness(seed);
    }
}

fn harness(seed: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("d");
    std::fs::create_dir_all(&d).unwrap();
    let checks = setup(&d);
    let pristine = tmp.path().join("pristine");
    copy_dir(&d.join("st"), &pristine);
    let files = data_files(&pristine);
    let kinds = record_kinds(&pristine);
    eprintln!("corruption-harness: store records (tag, flags) -> count: {kinds:?}");
    assert!(kinds.keys().any(|k| k.0 == 7), "no dictionary: {kinds:?}");
    assert!(kinds.keys().any(|k| k.1 == 2), "no stored delta: {kinds:?}");
    assert!(kinds.keys().any(|k| k.0 == 5), "no table: {kinds:?}");
    assert!(kinds.keys().any(|k| k.0 == 6), "no row map: {kinds:?}");
    let n = count();
    eprintln!(
        "corruption-harness: seed {seed} (SP_SYNC_CORRUPTION_SEED={seed} replays it), {n} corruptions over {} files",
        files.len()
    );
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut t = Tally::default();
    // Packs hold nearly every byte: they get half the corruptions.
    let packs: Vec<&String> = files.iter().filter(|f| kind(f) == "pack").collect();
    for i in 0..n {
        let st = d.join("st");
        std::fs::remove_dir_all(&st).unwrap();
        copy_dir(&pristine, &st);
        let idxs: Vec<&String> = files.iter().filter(|f| kind(f) == "index").collect();
        let rel = match rng.below(10) {
            0..=5 => packs[rng.below(packs.len() as u64) as usize].clone(),
            6..=7 => idxs[rng.below(idxs.len() as u64) as usize].clone(),
            _ => files[rng.below(files.len() as u64) as usize].clone(),
        };
        let p = st.join(&rel);
        let mut b = std::fs::read(&p).unwrap();
        let len = b.len() as u64;
        let what = match rng.below(10) {
            0..=5 if len > 0 => {
                // Headers and trailers get a quarter of the flips.
                let spots = record_spots(&pristine, &rel);
                let at = if !spots.is_empty() && rng.below(3) == 0 {
                    // Inside a record's header or the start of its payload
                    // (flags, lengths, a base or dictionary id, the frame).
                    let (off, hlen) = spots[rng.below(spots.len() as u64) as usize];
                    (off + rng.below(hlen + 40)).min(len - 1)
                } else if rng.below(4) == 0 {
                    let edge = rng.below(len.min(64));
                    if rng.below(2) == 0 {
                        edge
                    } else {
                        len - 1 - edge
                    }
                } else {
                    rng.below(len)
                };
                let x = 1 + rng.below(255) as u8;
                b[at as usize] ^= x;
                std::fs::write(&p, &b).unwrap();
                format!("flip of byte {at} (xor {x:#04x}) of {rel}")
            }
            6..=8 if len > 0 => {
                let to = if rng.below(3) == 0 {
                    len - 1 - rng.below(len.min(64))
                } else {
                    rng.below(len)
                };
                b.truncate(to as usize);
                std::fs::write(&p, &b).unwrap();
                format!("truncation of {rel} to {to} of {len} bytes")
            }
            _ => {
                std::fs::remove_file(&p).unwrap();
                format!("deletion of {rel}")
            }
        };
        let class = format!("{} {}", kind(&rel), what.split(' ').next().unwrap());
        *t.by.entry(class.clone()).or_default() += 1;
        let exempt_class =
            (kind(&rel) == "ref" && what.starts_with("deletion")) || kind(&rel) == "config.toml";

        // fsck --read-data.
        let o = run(&d, &["--store", "st", "fsck", "--read-data"]);
        t.runs += 1;
        let out = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        let fsck_failed = o.status.code() == Some(1);
        assert!(
            o.status.code() == Some(0) || fsck_failed,
            "#{i} {what}: fsck exited {:?}: {out}",
            o.status
        );
        let named = [
            "pack",
            "index",
            "ref",
            "store.toml",
            "no sp-sync store",
            "object",
            "reached from",
        ]
        .iter()
        .any(|w| out.contains(w));

        // The read commands: exactly the undamaged answer, or one error line.
        let mut wrong_here = Vec::new();
        for c in &checks {
            let (args, got_ok): (Vec<String>, Option<bool>) = match c {
                Check::Stdout(args, want) => {
                    let a: Vec<&str> = args.iter().map(String::as_str).collect();
                    let o = run(&d, &a);
                    let good = o.status.success().then(|| o.stdout == *want);
                    check_failure(&o, &a, &mut wrong_here);
                    (args.clone(), good)
                }
                Check::Restore(snap, want) => {
                    let target = d.join("out");
                    let _ = std::fs::remove_dir_all(&target);
                    let a = ["--store", "st", "restore", snap, "out"];
                    let o = run(&d, &a);
                    check_failure(&o, &a, &mut wrong_here);
                    let good = o.status.success().then(|| describe(&target) == *want);
                    let _ = std::fs::remove_dir_all(&target);
                    (a.iter().map(|s| s.to_string()).collect(), good)
                }
                Check::RestoreDb(snap, want) => {
                    let db = d.join("out.db");
                    let _ = std::fs::remove_file(&db);
                    let a = ["--store", "st", "restore", snap, "--db", "out.db", "-q"];
                    let o = run(&d, &a);
                    check_failure(&o, &a, &mut wrong_here);
                    let good = o.status.success().then(|| dump(&db) == *want);
                    let _ = std::fs::remove_file(&db);
                    (a.iter().map(|s| s.to_string()).collect(), good)
                }
            };
            t.runs += 1;
            if got_ok == Some(false) {
                wrong_here.push(format!("{args:?} exited 0 with wrong output"));
            }
        }
        if !wrong_here.is_empty() {
            t.wrong
                .push(format!("#{i} {what}: {}", wrong_here.join("; ")));
        }
        if fsck_failed && named {
            t.detected += 1;
            t.sample
                .entry(class.clone())
                .or_insert_with(|| out.lines().next().unwrap_or("").chars().take(300).collect());
        } else if exempt_class || (kind(&rel) == "store.toml" && wrong_here.is_empty()) {
            // A store.toml edit no reader notices (every check above gave
            // the undamaged answer) changes nothing.
            t.exempt += 1;
            t.exempted
                .push(format!("#{i} {what} (fsck exit {:?})", o.status.code()));
        } else if fsck_failed {
            t.undetected
                .push(format!("#{i} {what}: fsck failed without naming it: {out}"));
        } else {
            t.undetected.push(format!("#{i} {what}: fsck passed"));
        }
    }
    eprintln!(
        "corruption-harness: {n} corruptions (seed {seed}): {} detected by fsck --read-data, {} exempt (undetectable by design, and harmless), {} undetected, {} with wrong output (exit 0) or a bad failure; {} commands run; by class: {:?}",
        t.detected,
        t.exempt,
        t.undetected.len(),
        t.wrong.len(),
        t.runs,
        t.by
    );
    for (class, msg) in &t.sample {
        eprintln!("corruption-harness: fsck on a {class}: {msg}");
    }
    for e in &t.exempted {
        eprintln!("corruption-harness: exempt: {e}");
    }
    for u in &t.undetected {
        eprintln!("UNDETECTED {u}");
    }
    for w in &t.wrong {
        eprintln!("WRONG {w}");
    }
    assert!(
        t.undetected.is_empty() && t.wrong.is_empty(),
        "{} undetected, {} wrong outputs (seed {seed})",
        t.undetected.len(),
        t.wrong.len()
    );
}

/// A failing read command must exit 1 with one `error:` line (no panic).
fn check_failure(o: &Output, args: &[&str], wrong: &mut Vec<String>) {
    if o.status.success() {
        return;
    }
    let err = String::from_utf8_lossy(&o.stderr);
    let errors = err.lines().filter(|l| l.starts_with("error: ")).count();
    let stray = err
        .lines()
        .any(|l| !l.starts_with("error: ") && !l.starts_with("warning: "));
    if o.status.code() != Some(1) || errors != 1 || stray {
        wrong.push(format!(
            "{args:?} failed badly ({:?}): {}",
            o.status.code(),
            err.trim()
        ));
    }
}
