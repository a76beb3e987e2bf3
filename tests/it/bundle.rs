//! Offline bundles through the real binary (create, verify, import, pull
//! FILE, stdin/stdout) and through the library: byte-identical round trips
//! with files and SQLite tables, incremental bundles and their
//! prerequisites, the ref rules, and damaged bundles (truncated and
//! bit-flipped at every kind of offset) that never move a ref.

use crate::common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{bytes, cache_dir, describe, dump, fails, ok};
use rusqlite::Connection;
use serde_json::Value;
use systemprompt_sync::bundle::{self, BundleHeader, CreateOptions, ImportOptions};
use systemprompt_sync::pack::{PackReader, record_header_len};
use systemprompt_sync::{NoProgress, ObjectId};

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

fn sql(db: &Path, s: &str) {
    Connection::open(db).unwrap().execute_batch(s).unwrap();
}

/// A source: files (small, multi-chunk, a symlink, a subdirectory) and an
/// app database, with a store `st`.
fn source(root: &Path, big: usize) -> PathBuf {
    let a = root.join("a");
    std::fs::create_dir_all(a.join("files/sub")).unwrap();
    std::fs::write(a.join("files/readme.md"), "# hello\n").unwrap();
    std::fs::write(a.join("files/sub/skill.md"), "skill\n".repeat(300)).unwrap();
    std::fs::write(a.join("files/model.bin"), bytes(big, 7)).unwrap();
    std::os::unix::fs::symlink("readme.md", a.join("files/link")).unwrap();
    sql(
        &a.join("app.db"),
        "CREATE TABLE users(id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, name TEXT, bio BLOB);
         CREATE TABLE tags(user INTEGER NOT NULL, tag TEXT NOT NULL, PRIMARY KEY(user, tag)) WITHOUT ROWID;
         CREATE INDEX users_name ON users(name);
         INSERT INTO users VALUES (1, 'a@x', 'ann', zeroblob(10000)), (2, 'b@x', NULL, x'00ff'), (3, 'c@x', 'cy', NULL);
         INSERT INTO tags VALUES (1, 'admin'), (2, 'dev');",
    );
    ok(&a, &["--store", "st", "init", "-q"]);
    a
}

/// A store `st` in a new directory `root/name`.
fn store(root: &Path, name: &str) -> PathBuf {
    let d = root.join(name);
    std::fs::create_dir_all(&d).unwrap();
    ok(&d, &["--store", "st", "init", "-q"]);
    d
}

fn snap(a: &Path, msg: &str) -> String {
    let v = json(&ok(
        a,
        &[
            "--store", "st", "snapshot", "files", "--db", "app.db", "-m", msg, "--json",
        ],
    ));
    v["id"].as_str().unwrap().to_string()
}

fn st<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["--store", "st"];
    v.extend_from_slice(args);
    v
}

fn refs(d: &Path) -> String {
    ok(d, &st(&["ref", "list"]))
}

fn fsck(d: &Path) -> Value {
    json(&ok(d, &st(&["fsck", "--read-data", "--json"])))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Restores `main` of store `d` and checks files and tables against `a`.
fn assert_restores_like(d: &Path, a: &Path, tag: &str) {
    let out = d.join(format!("out-{tag}"));
    let db = d.join(format!("out-{tag}.db"));
    ok(d, &st(&["restore", "main", s(&out), "--db", s(&db), "-q"]));
    assert_eq!(describe(&a.join("files")), describe(&out), "files differ");
    assert_eq!(dump(&a.join("app.db")), dump(&db), "tables differ");
}

#[test]
fn full_and_incremental_bundles_round_trip_files_and_tables() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let a = source(t, 900 << 10);
    let id1 = snap(&a, "one");
    let full = t.join("full.bundle");
    let v = json(&ok(&a, &st(&["bundle", "create", s(&full), "--json"])));
    assert_eq!(v["refs"][0]["name"], "main");
    assert_eq!(v["refs"][0]["id"], id1.as_str());
    assert_eq!(v["prerequisites"], json("[]"));
    let full_objects = v["objects"].as_u64().unwrap();
    assert!(full_objects >= 8, "{v}");
    assert_eq!(v["bytes"], std::fs::metadata(&full).unwrap().len());

    // Outside any store, a full bundle is checked completely.
    let nowhere = t.join("nowhere");
    std::fs::create_dir(&nowhere).unwrap();
    let text = ok(&nowhere, &["bundle", "verify", s(&full)]);
    assert!(text.contains("ok, "), "{text}");
    assert!(text.contains("complete: needs no prerequisites"), "{text}");
    let v = json(&ok(&nowhere, &["bundle", "verify", s(&full), "--json"]));
    assert_eq!(v["objects"], full_objects);
    assert_eq!(v["external_references"], 0);

    // Import into a new store: byte-identical files and tables.
    let b = store(t, "b");
    let v = json(&ok(&b, &st(&["bundle", "import", s(&full), "--json"])));
    assert_eq!(v["ref"], "main");
    assert_eq!(v["id"], id1.as_str());
    assert_eq!(v["objects_received"], full_objects);
    assert_eq!(v["refs"][0]["updated"], true);
    assert_restores_like(&b, &a, "1");
    assert_eq!(fsck(&b)["ok"], true);
    assert!(!refs(&b).contains("remotes/"));

    // An edit to files and rows, as an incremental bundle.
    std::fs::write(a.join("files/readme.md"), "# hello v2\n").unwrap();
    sql(
        &a.join("app.db"),
        "UPDATE users SET name = 'bee' WHERE id = 2; INSERT INTO tags VALUES (3, 'ops');",
    );
    let id2 = snap(&a, "two");
    let inc = t.join("inc.bundle");
    let v = json(&ok(
        &a,
        &st(&[
            "bundle",
            "create",
            s(&inc),
            "main",
            "--since",
            &id1[..12],
            "--json",
        ]),
    ));
    assert_eq!(v["prerequisites"][0], id1.as_str());
    let inc_objects = v["objects"].as_u64().unwrap();
    // The snapshot, its root tree, the edited file's chunk, and the two
    // changed tables with their row-map nodes: nothing else.
    assert!(
        (3..=9).contains(&inc_objects) && inc_objects < full_objects,
        "incremental {inc_objects} of {full_objects}"
    );
    // Nothing the prerequisite reaches is in it: the big file's chunks are not.
    assert!(std::fs::metadata(&inc).unwrap().len() < 100 << 10);

    // Outside a store: what can be checked is, and it says what was not.
    let text = ok(&nowhere, &["bundle", "verify", s(&inc)]);
    assert!(text.contains("not inside a store"), "{text}");
    assert!(text.contains(&format!("prerequisite {id1}")), "{text}");
    // In a store without the prerequisite: named.
    let c = store(t, "c");
    let err = fails(&c, &st(&["bundle", "verify", s(&inc)]), 1);
    assert!(err.contains(&id1) && err.contains("lacks"), "{err}");
    // Import refused, naming it; nothing moved.
    let err = fails(&c, &st(&["bundle", "import", s(&inc)]), 1);
    assert!(err.contains(&id1) && err.contains("prerequisite"), "{err}");
    assert_eq!(refs(&c), "");
    assert_eq!(fsck(&c)["ok"], true);
    // In the store that has it: complete, and the import fast-forwards.
    let text = ok(&b, &st(&["bundle", "verify", s(&inc)]));
    assert!(text.contains("complete given its prerequisites"), "{text}");
    let v = json(&ok(&b, &st(&["bundle", "import", s(&inc), "--json"])));
    assert_eq!(v["id"], id2.as_str());
    assert_eq!(v["refs"][0]["old"], id1.as_str());
    assert_eq!(v["objects_received"], inc_objects);
    assert_restores_like(&b, &a, "2");
    assert_eq!(fsck(&b)["ok"], true);
    // Importing it again changes nothing.
    let v = json(&ok(&b, &st(&["bundle", "import", s(&inc), "--json"])));
    assert_eq!(v["stored_objects"], 0);
    assert_eq!(v["id"], id2.as_str());

    // --since by name (main~1) gives the same bundle, byte for byte.
    let inc2 = t.join("inc2.bundle");
    ok(
        &a,
        &st(&["bundle", "create", s(&inc2), "--since", "main~1", "-q"]),
    );
    assert_eq!(std::fs::read(&inc).unwrap(), std::fs::read(&inc2).unwrap());
}

#[test]
fn ref_rules_pull_from_a_bundle_and_no_push_to_one() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let a = source(t, 200 << 10);
    let id1 = snap(&a, "one");
    let b1 = t.join("one.bundle");
    ok(&a, &st(&["bundle", "create", s(&b1), "-q"]));
    std::fs::write(a.join("files/readme.md"), "# two\n").unwrap();
    let id2 = snap(&a, "two");
    let b2 = t.join("two.bundle");
    ok(&a, &st(&["bundle", "create", s(&b2), "-q"]));

    // pull FILE: a location, so no tracking ref; local main created.
    let c = store(t, "c");
    let v = json(&ok(&c, &st(&["pull", s(&b1), "--json"])));
    assert_eq!(v["ref"], "main");
    assert_eq!(v["id"], id1.as_str());
    assert_eq!(refs(&c).trim(), format!("{id1} main"));
    // and fast-forwards, restoring on request.
    let out = t.join("pulled");
    ok(
        &c,
        &st(&["pull", s(&b2), "main", "--restore", s(&out), "-q"]),
    );
    assert_eq!(refs(&c).trim(), format!("{id2} main"));
    assert_eq!(describe(&a.join("files")), describe(&out));
    // An older bundle: local is ahead; a warning, exit 0, nothing moves.
    let o = common::run_in(&c, &st(&["pull", s(&b1)]));
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("warning: local main is ahead"), "{err}");
    assert_eq!(refs(&c).trim(), format!("{id2} main"));
    // A ref the bundle does not carry.
    let err = fails(&c, &st(&["pull", s(&b2), "dev"]), 1);
    assert!(err.contains("does not carry ref dev"), "{err}");

    // A diverged local ref stays put with a warning unless --force.
    let d = store(t, "d");
    ok(&d, &st(&["bundle", "import", s(&b1), "-q"]));
    std::fs::create_dir(d.join("mine")).unwrap();
    std::fs::write(d.join("mine/x"), "local work\n").unwrap();
    ok(&d, &st(&["snapshot", "mine", "-q"]));
    let before = refs(&d);
    let o = common::run_in(&d, &st(&["bundle", "import", s(&b2)]));
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("warning: local main has diverged"), "{err}");
    assert_eq!(refs(&d), before);
    let o = common::run_in(&d, &st(&["bundle", "import", s(&b2), "--force", "--json"]));
    assert!(o.status.success());
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["refs"][0]["forced"], true, "{j}");
    assert_eq!(refs(&d).trim(), format!("{id2} main"));

    // A bundle is read-only: push to it is refused and it is left as it was.
    let was = std::fs::read(&b2).unwrap();
    let err = fails(&a, &st(&["push", s(&b2)]), 1);
    assert!(err.contains("read-only"), "{err}");
    assert_eq!(std::fs::read(&b2).unwrap(), was);

    // A failed create leaves the file it was given (and no temporary file).
    let precious = t.join("precious.bundle");
    std::fs::copy(&b2, &precious).unwrap();
    let err = fails(&a, &st(&["bundle", "create", s(&precious), "nosuch"]), 1);
    assert!(err.contains("unknown ref nosuch"), "{err}");
    assert_eq!(std::fs::read(&precious).unwrap(), was);
    let leftovers: Vec<_> = std::fs::read_dir(t)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".sp-sync-bundle")
        })
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn a_bundle_streams_through_stdout_and_stdin() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let a = source(t, 300 << 10);
    let id = snap(&a, "one");
    let file = t.join("x.bundle");
    ok(&a, &st(&["bundle", "create", s(&file), "-q"]));
    let o = Command::new(common::bin())
        .args(st(&["bundle", "create", "-"]))
        .current_dir(&a)
        .env("SP_SYNC_CACHE_DIR", cache_dir())
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(
        o.stdout,
        std::fs::read(&file).unwrap(),
        "the same bundle either way"
    );
    let c = store(t, "c");
    let mut child = Command::new(common::bin())
        .args(st(&["bundle", "import", "-", "--json"]))
        .current_dir(&c)
        .env("SP_SYNC_CACHE_DIR", cache_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&o.stdout).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        json(&String::from_utf8_lossy(&out.stdout))["id"],
        id.as_str()
    );
    assert_restores_like(&c, &a, "stdin");
    // verify - reads standard input too.
    let mut child = Command::new(common::bin())
        .args(["bundle", "verify", "-"])
        .current_dir(t)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&o.stdout).unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
}

/// Offsets of interest in a bundle: every header byte; for each record,
/// every byte of its header and a few of its payload; the pack's end record
/// and trailer; the bundle's trailer.
fn offsets(b: &[u8]) -> Vec<usize> {
    let mut cur = std::io::Cursor::new(b);
    let h = BundleHeader::decode(&mut cur, "t").unwrap();
    let base = cur.position() as usize;
    assert_eq!(base, h.encode().len());
    let mut out: Vec<usize> = (0..base).collect();
    out.extend(base..base + 9);
    let mut r = PackReader::new(&b[base..], "t").unwrap();
    let mut records = 0;
    while let Some(rec) = r.next_record().unwrap() {
        records += 1;
        let at = base + rec.offset as usize;
        let clen = rec.payload.len();
        let hl = record_header_len(rec.ulen, clen as u64) as usize;
        out.extend(at..at + hl);
        let p = at + hl;
        out.extend([p, p + clen / 2, p + clen - 1]);
    }
    assert!(records >= 8, "{records} records");
    let end = base + r.offset() as usize - 32;
    out.extend(end..b.len());
    out.sort();
    out.dedup();
    out
}

#[test]
fn damaged_bundles_fail_and_move_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let a = source(t, 300 << 10);
    snap(&a, "one");
    let one = t.join("one.bundle");
    ok(&a, &st(&["bundle", "create", s(&one), "-q"]));
    std::fs::write(a.join("files/readme.md"), "# two\n").unwrap();
    sql(&a.join("app.db"), "DELETE FROM tags WHERE user = 2;");
    let id2 = snap(&a, "two");
    let good = std::fs::read({
        let p = t.join("two.bundle");
        ok(&a, &st(&["bundle", "create", s(&p), "-q"]));
        p
    })
    .unwrap();
    // The importing store holds the first snapshot: a successful import
    // would move its main.
    let b = store(t, "b");
    ok(&b, &st(&["bundle", "import", s(&one), "-q"]));
    let refs_before = refs(&b);
    let fsck_before = fsck(&b);
    assert_eq!(fsck_before["ok"], true);

    let offs = offsets(&good);
    assert!(offs.len() >= 200, "{} offsets", offs.len());
    let bad = t.join("bad.bundle");
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, &o) in offs.iter().enumerate() {
        let mut f = good.clone();
        f[o] ^= 1 << (i % 8);
        cases.push((format!("bit flip at {o}"), f));
        cases.push((format!("truncated to {o}"), good[..o].to_vec()));
    }
    let mut longer = good.clone();
    longer.push(0);
    cases.push(("one byte appended".into(), longer));
    eprintln!(
        "{} offsets of a {}-byte bundle, {} damaged copies",
        offs.len(),
        good.len(),
        cases.len()
    );
    for (n, (what, bytes)) in cases.iter().enumerate() {
        std::fs::write(&bad, bytes).unwrap();
        let o = common::run_in(&b, &st(&["bundle", "verify", s(&bad)]));
        assert_eq!(o.status.code(), Some(1), "verify accepted {what}");
        common::assert_one_error_line(
            &["bundle", "verify", what],
            &String::from_utf8_lossy(&o.stderr),
        );
        let o = common::run_in(&b, &st(&["bundle", "import", s(&bad)]));
        assert_eq!(o.status.code(), Some(1), "import accepted {what}");
        common::assert_one_error_line(
            &["bundle", "import", what],
            &String::from_utf8_lossy(&o.stderr),
        );
        assert_eq!(refs(&b), refs_before, "{what} moved a ref");
        if n % 8 == 0 {
            assert_eq!(fsck(&b), fsck_before, "{what} changed fsck");
        }
    }
    assert_eq!(fsck(&b), fsck_before);
    // The intact bundle still imports.
    std::fs::write(&bad, &good).unwrap();
    ok(&b, &st(&["bundle", "import", s(&bad), "-q"]));
    assert_eq!(refs(&b).trim(), format!("{id2} main"));
}

#[test]
fn library_create_verify_import() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let a = source(t, 100 << 10);
    let id = ObjectId::from_hex(&snap(&a, "one")).unwrap();
    let src =
        systemprompt_sync::Store::open(&a.join("st"), systemprompt_sync::LockMode::Shared).unwrap();
    let mut buf = Vec::new();
    let rep = bundle::create(
        &src,
        &CreateOptions::default(),
        &mut buf,
        Path::new("mem"),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(rep.bytes, buf.len() as u64);
    assert_eq!(rep.refs[0].id, id);
    let v = bundle::verify(&buf[..], "mem", None, &NoProgress).unwrap();
    assert_eq!(v.objects, rep.objects);
    assert_eq!(v.trailer, rep.trailer);
    let dst = common::new_store(&t.join("dst"));
    let r = bundle::import(
        &dst,
        &buf[..],
        "mem",
        &ImportOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(r.objects, rep.objects);
    assert_eq!(dst.read_ref("main").unwrap(), Some(id));
    // A bundle of the whole history with the tip as prerequisite is empty.
    let mut empty = Vec::new();
    let opts = CreateOptions {
        refs: vec![],
        since: vec!["main".into()],
    };
    let rep = bundle::create(&src, &opts, &mut empty, Path::new("mem"), &NoProgress).unwrap();
    assert_eq!(rep.objects, 0);
    bundle::import(
        &dst,
        &empty[..],
        "mem",
        &ImportOptions::default(),
        &NoProgress,
    )
    .unwrap();
}

/// Runs `args` in `cwd` and sends SIGINT after `delay`; returns the exit code
/// (0: it had finished; 130: stopped at a safe point).
fn run_and_interrupt(cwd: &Path, args: &[&str], delay: std::time::Duration) -> Option<i32> {
    let mut child = Command::new(common::bin())
        .args(args)
        .current_dir(cwd)
        .env("SP_SYNC_CACHE_DIR", cache_dir())
        .env_remove("SP_SYNC_STORE")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(delay);
    let pid = rustix::process::Pid::from_child(&child);
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    let code = status.code().or(status.signal().map(|s| 128 + s));
    assert!(
        code == Some(0) || code == Some(130),
        "{args:?} after {delay:?}: exit {code:?}"
    );
    code
}

#[test]
fn sigint_during_create_and_import_leaves_no_bundle_and_moves_no_ref() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let a = source(t, 100 << 10);
    for i in 0..60u64 {
        std::fs::write(a.join(format!("files/f{i:02}")), bytes(256 << 10, 100 + i)).unwrap();
    }
    snap(&a, "big");
    let file = t.join("x.bundle");
    let start = std::time::Instant::now();
    ok(&a, &st(&["bundle", "create", s(&file), "-q"]));
    let create_time = start.elapsed().max(std::time::Duration::from_millis(20));
    let good = std::fs::read(&file).unwrap();
    let b = store(t, "b");
    let start = std::time::Instant::now();
    ok(&b, &st(&["bundle", "import", s(&file), "-q"]));
    let import_time = start.elapsed().max(std::time::Duration::from_millis(20));
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = |d: std::time::Duration| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        std::time::Duration::from_micros(x % (d.as_micros() as u64 + 1))
    };
    let (mut created_stopped, mut import_stopped) = (0, 0);
    for round in 0..8 {
        // create: stopped, the file is absent and no temporary file stays.
        std::fs::remove_file(&file).ok();
        let code = run_and_interrupt(&a, &st(&["bundle", "create", s(&file)]), next(create_time));
        if code == Some(130) {
            created_stopped += 1;
            assert!(
                !file.exists(),
                "round {round}: a stopped create left a bundle"
            );
        } else {
            assert_eq!(std::fs::read(&file).unwrap(), good);
        }
        let stray = std::fs::read_dir(t)
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(".sp-sync-bundle")
            });
        assert!(!stray, "round {round}: a temporary file stayed");
        // import into a new store: stopped, no ref; the next import completes.
        std::fs::write(&file, &good).unwrap();
        let c = store(t, &format!("c{round}"));
        let code = run_and_interrupt(&c, &st(&["bundle", "import", s(&file)]), next(import_time));
        if code == Some(130) {
            import_stopped += 1;
            assert_eq!(refs(&c), "", "round {round}: a stopped import moved a ref");
        }
        assert_eq!(fsck(&c)["ok"], true);
        ok(&c, &st(&["bundle", "import", s(&file), "-q"]));
        assert_eq!(refs(&c), refs(&b));
    }
    assert!(created_stopped >= 1, "no create was stopped");
    assert!(import_stopped >= 1, "no import was stopped");
}

/// Removes `[objects]` from a store's store.toml: what a build from before
/// the record existed wrote (same format version, format 1's values).
fn as_older_build(d: &Path) {
    let p = d.join("st/store.toml");
    let text = std::fs::read_to_string(&p).unwrap();
    let mut out = String::new();
    let mut skipping = false;
    for line in text.lines() {
        if line.trim_start().starts_with('[') {
            let t = line.trim();
            skipping = t == "[objects]" || t.starts_with("[objects.");
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert_ne!(out, text, "store.toml had no [objects] section:\n{text}");
    std::fs::write(&p, out).unwrap();
}

#[test]
fn bundles_cross_between_stores_of_older_and_newer_builds() {
    let tmp = tempfile::tempdir().unwrap();
    let a = source(tmp.path(), 300_000);
    snap(&a, "one");
    // Newer store → a store as an older build of format 1 left it.
    let old = store(tmp.path(), "old");
    as_older_build(&old);
    let b1 = tmp.path().join("new-to-old.bundle");
    ok(&a, &st(&["bundle", "create", s(&b1)]));
    ok(&old, &st(&["bundle", "import", s(&b1)]));
    assert_restores_like(&old, &a, "old");
    assert_eq!(fsck(&old)["ok"], true);
    // And back: a bundle the older store writes imports into a new one.
    let new = store(tmp.path(), "new");
    let b2 = tmp.path().join("old-to-new.bundle");
    ok(&old, &st(&["bundle", "create", s(&b2)]));
    ok(&new, &st(&["bundle", "import", s(&b2)]));
    assert_restores_like(&new, &a, "new");
    assert_eq!(refs(&new), refs(&a));
}

/// `bundle create` into a device or a pipe writes into it: it never
/// renames a file over it (over `/dev/null`, that broke the machine).
#[test]
fn a_bundle_into_a_device_or_a_pipe_is_written_into_it() {
    use std::os::unix::fs::FileTypeExt;
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path().join("w");
    std::fs::create_dir_all(w.join("d")).unwrap();
    std::fs::write(w.join("d/f"), "x\n").unwrap();
    ok(&w, &["init", "-q"]);
    ok(&w, &["snapshot", "d", "-q"]);
    // A pipe, read by another process.
    let fifo = tmp.path().join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let got = tmp.path().join("got");
    let mut reader = Command::new("sh")
        .arg("-c")
        .arg(format!("cat '{}' > '{}'", fifo.display(), got.display()))
        .spawn()
        .unwrap();
    ok(&w, &["bundle", "create", fifo.to_str().unwrap(), "-q"]);
    if !std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo()
    {
        let _ = reader.kill();
        panic!("the pipe was replaced by a file");
    }
    assert!(reader.wait().unwrap().success());
    ok(&w, &["bundle", "verify", got.to_str().unwrap(), "-q"]);
    // A character device like /dev/null (made where the tests may).
    let null = tmp.path().join("null");
    let made = Command::new("mknod")
        .args(["-m", "666"])
        .arg(&null)
        .args(["c", "1", "3"])
        .status()
        .is_ok_and(|s| s.success());
    if made {
        ok(&w, &["bundle", "create", null.to_str().unwrap(), "-q"]);
        assert!(
            std::fs::symlink_metadata(&null)
                .unwrap()
                .file_type()
                .is_char_device()
        );
    }
    // A directory is no place for a bundle.
    let err = fails(&w, &["bundle", "create", tmp.path().to_str().unwrap()], 1);
    assert!(err.contains("not a regular file"), "{err}");
}

/// What a killed `bundle create` left beside its target (a temporary
/// bundle named with its process id) goes at the next create there once
/// it has not changed for an hour (`SP_SYNC_STALE_AFTER` shortens that
/// here); one changed within the hour stays (its process id may be of
/// another PID namespace), and so does one a running create is writing.
#[test]
fn a_killed_creates_temporary_bundle_goes_at_the_next_create() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path().join("w");
    std::fs::create_dir_all(w.join("d")).unwrap();
    std::fs::write(w.join("d/f"), "x\n").unwrap();
    ok(&w, &["init", "-q"]);
    ok(&w, &["snapshot", "d", "-q"]);
    let mut gone = Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    let stale = tmp.path().join(format!(".sp-sync-bundle-{dead}-abc123"));
    let live = tmp
        .path()
        .join(format!(".sp-sync-bundle-{}-def456", std::process::id()));
    std::fs::write(&stale, "half a bundle").unwrap();
    std::fs::write(&live, "being written").unwrap();
    let out = tmp.path().join("b.bundle");
    ok(&w, &["bundle", "create", out.to_str().unwrap(), "-q"]);
    assert!(stale.exists(), "a file changed within the hour went");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let o = Command::new(common::bin())
        .args(["bundle", "create", out.to_str().unwrap(), "-q"])
        .current_dir(&w)
        .env("SP_SYNC_CACHE_DIR", cache_dir())
        .env("SP_SYNC_STALE_AFTER", "1")
        .env_remove("SP_SYNC_STORE")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!stale.exists(), "the killed create's file stayed");
    assert!(live.exists(), "a running create's file went");
}

/// A bundle whose refs cannot all exist (`x` and `x/y`: a ref is never
/// also a folder of refs) fails as a whole: no ref moves, neither the
/// first nor a tracking one (§13: a failed import moves no ref).
#[test]
fn an_import_whose_refs_clash_moves_no_ref() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path().join("w");
    std::fs::create_dir_all(w.join("src")).unwrap();
    std::fs::write(w.join("src/a.txt"), "a\n").unwrap();
    ok(&w, &["init", "-q"]);
    ok(&w, &["snapshot", "src", "-q"]);
    let head = ObjectId::from_hex(
        std::fs::read_to_string(w.join(".sp-sync/refs/main"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    // Only refs: every snapshot they name is a prerequisite the store holds.
    let header = BundleHeader {
        objects: systemprompt_sync::store::StoreConfig::default().objects,
        refs: vec![("x".into(), head), ("x/y".into(), head)],
        prerequisites: vec![head],
    };
    let mut b = header.encode();
    let (pack, _) = systemprompt_sync::pack::PackWriter::new(Vec::new())
        .unwrap()
        .finish()
        .unwrap();
    b.extend_from_slice(&pack);
    let trailer = *blake3::hash(&b).as_bytes();
    b.extend_from_slice(&trailer);
    let file = tmp.path().join("clash.bundle");
    std::fs::write(&file, &b).unwrap();
    {
        let args = &["bundle", "import", file.to_str().unwrap()][..];
        let err = fails(&w, args, 1);
        assert!(err.contains("no ref moved"), "{args:?}: {err}");
        let refs = ok(&w, &["ref", "list"]);
        assert!(
            !refs.contains('x') && !refs.contains("remotes"),
            "{args:?} moved a ref: {refs}"
        );
    }
    // A ref the store has that the bundle's would fall under: likewise.
    ok(&w, &["ref", "set", "x", "main"]);
    let header = BundleHeader {
        objects: systemprompt_sync::store::StoreConfig::default().objects,
        refs: vec![("a".into(), head), ("x/z".into(), head)],
        prerequisites: vec![head],
    };
    let mut b = header.encode();
    b.extend_from_slice(&pack);
    let trailer = *blake3::hash(&b).as_bytes();
    b.extend_from_slice(&trailer);
    std::fs::write(&file, &b).unwrap();
    let err = fails(&w, &["bundle", "import", file.to_str().unwrap()], 1);
    assert!(err.contains("no ref moved"), "{err}");
    // (`ref list` prints `ID NAME`: an id ending in `a` is no ref `a`.)
    let refs = ok(&w, &["ref", "list"]);
    assert!(
        !refs
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("a")),
        "ref a moved: {refs}"
    );
    assert!(!w.join(".sp-sync/refs/a").exists());
}

/// A store at `tmp/a` with one snapshot of `src/` as `main` and `refs`
/// naming it too, a bundle `tmp/all.bundle` of main and those refs, and an
/// empty store at `tmp/b` that has imported it: (a, the bundle, b).
fn imported_with_refs(tmp: &Path, refs: &[&str]) -> (PathBuf, PathBuf, PathBuf) {
    let a = tmp.join("a");
    std::fs::create_dir_all(a.join("src")).unwrap();
    std::fs::write(a.join("src/f"), "x\n").unwrap();
    ok(&a, &["init", "-q"]);
    ok(&a, &["snapshot", "src", "-q"]);
    for r in refs {
        ok(&a, &["ref", "set", r, "main"]);
    }
    let file = tmp.join("all.bundle");
    let mut args = vec!["bundle", "create", file.to_str().unwrap(), "main"];
    args.extend_from_slice(refs);
    ok(&a, &args);
    let b = tmp.join("b");
    std::fs::create_dir_all(&b).unwrap();
    ok(&b, &["init", "-q"]);
    ok(&b, &["bundle", "import", file.to_str().unwrap()]);
    (a, file, b)
}

/// A machine's own records (`local/…` of a local sync, `deploy/…` of a
/// deploy) never come from elsewhere: an import of everything leaves them
/// out, a pull of everything too, and naming one in a pull is refused. (Another's
/// record would make a sync delete files or rows as if this side had
/// removed them, or a due deploy look done.)
#[test]
fn machine_local_records_are_never_imported_or_pulled() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, _, b) = imported_with_refs(tmp.path(), &["local/content", "deploy/api"]);
    let refs = ok(&b, &["ref", "list"]);
    assert!(refs.contains("main"), "{refs}");
    assert!(
        !refs.contains("local/") && !refs.contains("deploy/"),
        "{refs}"
    );
    for name in ["local/content", "deploy/api"] {
        let err = fails(&b, &["pull", a.join(".sp-sync").to_str().unwrap(), name], 1);
        assert!(err.contains("never taken from elsewhere"), "{err}");
    }
    let c = tmp.path().join("c");
    std::fs::create_dir_all(&c).unwrap();
    ok(&c, &["init", "-q"]);
    ok(&c, &["pull", a.join(".sp-sync").to_str().unwrap()]);
    let refs = ok(&c, &["ref", "list"]);
    assert!(refs.contains("main"), "{refs}");
    assert!(
        !refs.contains("local/") && !refs.contains("deploy/"),
        "{refs}"
    );
}

/// `bundle create FILE` renamed its bundle over whatever FILE was: the
/// store's `store.toml`, a ref or a pack (the store broken, snapshots
/// lost), a live database, a user's file, exit 0. It now replaces only a
/// bundle (or an empty file), and never writes into a store.
#[test]
fn bundle_create_replaces_only_a_bundle_and_never_writes_into_a_store() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let a = source(t, 1000);
    snap(&a, "one");
    let pack = std::fs::read_dir(a.join("st/packs"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "pack"))
        .unwrap();
    std::fs::write(a.join("notes.txt"), "mine\n").unwrap();
    std::os::unix::fs::symlink("app.db", a.join("db-link")).unwrap();
    for (target, says) in [
        (a.join("st/store.toml"), "not a bundle"),
        (a.join("st/refs/main"), "not a bundle"),
        (pack.clone(), "not a bundle"),
        (a.join("app.db"), "not a bundle"),
        (a.join("db-link"), "not a bundle"),
        (a.join("notes.txt"), "not a bundle"),
        (a.join("st/refs/new"), "into the store"),
        (a.join("st/x.bundle"), "into the store"),
    ] {
        let before = std::fs::read(&target).ok();
        let err = fails(&a, &st(&["bundle", "create", s(&target)]), 1);
        assert!(err.contains(says), "{}: {err}", target.display());
        assert_eq!(std::fs::read(&target).ok(), before, "{}", target.display());
    }
    assert!(
        std::fs::symlink_metadata(a.join("db-link"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    ok(&a, &st(&["fsck", "-q"]));
    assert!(ok(&a, &st(&["ref", "list"])).contains("main"));
    // A bundle, and an empty file, are replaced.
    let b = t.join("x.bundle");
    ok(&a, &st(&["bundle", "create", s(&b), "-q"]));
    ok(&a, &st(&["bundle", "create", s(&b), "-q"]));
    std::fs::write(t.join("empty"), "").unwrap();
    ok(&a, &st(&["bundle", "create", s(&t.join("empty")), "-q"]));
    assert_eq!(
        std::fs::read(t.join("empty")).unwrap(),
        std::fs::read(&b).unwrap()
    );
}

/// `bundle create` through a symlink to a store's folder wrote into the
/// store (`refs-link/evil` became a corrupt ref), and a file made at the
/// bundle's path while it was written (an application's database) was
/// renamed over, exit 0 (audit 24). Both are refused now.
#[test]
fn bundle_create_never_writes_into_a_store_through_a_link_nor_over_a_file_made_meanwhile() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let a = source(t, 24 << 20);
    snap(&a, "one");
    std::os::unix::fs::symlink("st/refs", a.join("refs-link")).unwrap();
    let err = fails(&a, &st(&["bundle", "create", "refs-link/evil"]), 1);
    assert!(err.contains("into the store"), "{err}");
    assert!(!a.join("st/refs/evil").exists());
    ok(&a, &st(&["fsck", "-q"]));

    let out = t.join("out");
    std::fs::create_dir(&out).unwrap();
    let app_file = out.join("x.bundle");
    let watcher = common::when_a_file_shows(&out, ".sp-sync-bundle-", move || {
        std::fs::write(app_file, "the app's own file").unwrap();
    });
    let target = out.join("x.bundle");
    let o = common::run_in(&a, &st(&["bundle", "create", s(&target), "-q"]));
    assert!(watcher.join().unwrap(), "the temporary bundle never showed");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("appeared"), "{err}");
    assert_eq!(std::fs::read(&target).unwrap(), b"the app's own file");
}

/// The databases a restore keeps are those this store's own snapshots name:
/// an imported snapshot naming `services` as its database (a SQLite file on
/// its machine) made every restore of this store's `services/` fail, exit 1
/// (audit 24).
#[test]
fn an_imported_snapshots_databases_do_not_bind_this_stores_restores() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let other = t.join("other");
    std::fs::create_dir_all(other.join("files")).unwrap();
    sql(&other.join("services"), "CREATE TABLE x(a);");
    ok(&other, &["--store", "st", "init", "-q"]);
    ok(
        &other,
        &[
            "--store", "st", "snapshot", "files", "--db", "services", "--ref", "side", "-q",
        ],
    );
    let b = t.join("side.bundle");
    ok(
        &other,
        &["--store", "st", "bundle", "create", s(&b), "side", "-q"],
    );

    let mine = t.join("mine");
    std::fs::create_dir_all(mine.join("services")).unwrap();
    std::fs::write(mine.join("services/a.txt"), "a\n").unwrap();
    ok(&mine, &["init", "-q"]);
    ok(&mine, &["snapshot", "services", "-q"]);
    ok(&mine, &["bundle", "import", s(&b), "-q"]);
    std::fs::write(mine.join("services/a.txt"), "changed\n").unwrap();
    ok(&mine, &["restore", "main", "-q"]);
    assert_eq!(
        std::fs::read_to_string(mine.join("services/a.txt")).unwrap(),
        "a\n"
    );
}

/// The database a restore of an imported snapshot made is the user's live
/// one: `restore main~1 --delete` removed it (audit 25, after 5f5e0d9 had
/// left imported snapshots' databases out). Their names count where a
/// SQLite database is now.
#[test]
fn a_database_an_imported_snapshot_restored_is_kept_by_delete() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let other = t.join("other");
    std::fs::create_dir_all(other.join("services")).unwrap();
    std::fs::create_dir_all(other.join("data")).unwrap();
    std::fs::write(other.join("services/a.txt"), "a\n").unwrap();
    ok(&other, &["init", "-q"]);
    // (Of the whole tree: main~1 is the tree without data/.)
    ok(&other, &["snapshot", "-q"]);
    sql(
        &other.join("data/app.db"),
        "CREATE TABLE u(x); INSERT INTO u VALUES ('theirs');",
    );
    ok(&other, &["snapshot", "--db", "data/app.db", "-q"]);
    let b = t.join("all.bundle");
    ok(&other, &["bundle", "create", s(&b), "-q"]);

    let mine = t.join("mine");
    std::fs::create_dir_all(&mine).unwrap();
    ok(&mine, &["init", "-q"]);
    ok(&mine, &["bundle", "import", s(&b), "-q"]);
    ok(&mine, &["restore", "main", "-q"]);
    sql(
        &mine.join("data/app.db"),
        "INSERT INTO u VALUES ('mine, live');",
    );
    ok(&mine, &["restore", "main~1", "--delete", "-q"]);
    let c = Connection::open(mine.join("data/app.db")).unwrap();
    let n: i64 = c
        .query_row("SELECT count(*) FROM u", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 2);
}

/// A bundle made with a store's remote-tracking refs (`remotes/NAME/…`,
/// what that store last saw of its remote): an import of everything
/// leaves them out, as a pull does (they moved this store's record of
/// its own remote, exit 0); named (`pull FILE REF`), one is imported.
#[test]
fn an_import_of_everything_leaves_remote_tracking_refs_out() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, file, b) = imported_with_refs(tmp.path(), &["remotes/origin/main"]);
    let refs = ok(&b, &["ref", "list"]);
    assert!(refs.contains("main"), "{refs}");
    assert!(!refs.contains("remotes/"), "{refs}");
    ok(
        &b,
        &["pull", file.to_str().unwrap(), "remotes/origin/main", "-q"],
    );
    let refs = ok(&b, &["ref", "list"]);
    assert!(refs.contains("remotes/origin/main"), "{refs}");
}
