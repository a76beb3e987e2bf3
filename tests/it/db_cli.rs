//! Database tables through the real binary: snapshot --db, diff (between
//! snapshots and against the database now), restore --db, bad input (schema
//! mismatch, a locked database, a corrupt file, a missing column: exit 1,
//! one line, target unchanged), consistency under concurrent writers,
//! fsck/gc/push with tables.

use crate::common;

use std::path::Path;
use std::process::Command;

use common::{dump, fails, ok};
use rusqlite::Connection;
use serde_json::Value as Json;

fn sql(db: &Path, s: &str) {
    Connection::open(db).unwrap().execute_batch(s).unwrap();
}

/// A work dir with a store, an empty folder to snapshot and an app database.
fn setup() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init", "--store", "st", "-q"]);
    std::fs::create_dir(d.join("files")).unwrap();
    std::fs::write(d.join("files/readme.md"), "# hi\n").unwrap();
    let db = d.join("app.db");
    sql(
        &db,
        "CREATE TABLE users(id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, name TEXT, score REAL);
         CREATE TABLE tags(user INTEGER NOT NULL REFERENCES users(id), tag TEXT NOT NULL, PRIMARY KEY(user, tag)) WITHOUT ROWID;
         CREATE TABLE log(msg);
         CREATE INDEX users_name ON users(name);
         CREATE TRIGGER users_audit AFTER UPDATE ON users BEGIN INSERT INTO log VALUES('updated ' || new.id); END;
         CREATE VIEW named AS SELECT id, name FROM users WHERE name IS NOT NULL;
         INSERT INTO users VALUES (1, 'a@x', 'ann', 1.5), (2, 'b@x', 'bob', -0.0), (3, 'c@x', NULL, 1e308);
         INSERT INTO tags VALUES (1, 'admin'), (2, 'dev'), (2, 'ops');",
    );
    (tmp, db)
}

fn json(s: &str) -> Json {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

#[test]
fn snapshot_diff_restore_through_the_cli() {
    let (tmp, db) = setup();
    let d = tmp.path();
    let out = json(&ok(
        d,
        &[
            "--store", "st", "snapshot", "files", "--db", "app.db", "--json", "-m", "one",
        ],
    ));
    assert_eq!(out["tables"]["users"], 3);
    assert_eq!(out["tables"]["tags"], 3);
    assert_eq!(out["tables"]["log"], 0);
    assert!(out["tables"].get("named").is_none(), "views have no rows");
    assert_eq!(out["files"], 1);

    // Nothing changed: no differences, exit 0 with --exit-code.
    ok(
        d,
        &[
            "--store",
            "st",
            "diff",
            "main",
            "--db",
            "app.db",
            "--exit-code",
        ],
    );

    sql(
        &db,
        "UPDATE users SET name = 'bobby', score = 2 WHERE id = 2;
         DELETE FROM tags WHERE user = 1;
         INSERT INTO users VALUES (4, 'd@x', 'dee', 0);",
    );
    let v = json(&ok(
        d,
        &["--store", "st", "diff", "main", "--db", "app.db", "--json"],
    ));
    let rows = v["rows"].as_array().unwrap();
    let find = |t: &str, k: Json| {
        rows.iter()
            .find(|r| r["table"] == t && r["key"] == k)
            .cloned()
    };
    let m = find("users", json("[2]")).expect("users 2 modified");
    assert_eq!(m["change"], "modified");
    assert_eq!(m["columns"], json(r#"["name", "score"]"#));
    assert_eq!(find("users", json("[4]")).unwrap()["change"], "added");
    assert_eq!(
        find("tags", json(r#"[1, "admin"]"#)).unwrap()["change"],
        "removed"
    );
    // The trigger wrote a row to log: also a change.
    assert_eq!(find("log", json("[1]")).unwrap()["change"], "added");
    assert_eq!(rows.len(), 4, "{rows:?}");
    let text = ok(d, &["--store", "st", "diff", "main", "--db", "app.db"]);
    assert!(text.contains("M users(2) [name, score]"), "{text}");
    assert!(text.contains("- tags(1, 'admin')"), "{text}");
    assert!(
        text.contains("4 rows changed: 2 added, 1 removed, 1 modified"),
        "{text}"
    );
    fails(
        d,
        &[
            "--store",
            "st",
            "diff",
            "main",
            "--db",
            "app.db",
            "--exit-code",
        ],
        1,
    );
    let stat = ok(
        d,
        &["--store", "st", "diff", "main", "--db", "app.db", "--stat"],
    );
    assert!(
        !stat.contains("users(2)") && stat.contains("4 rows changed"),
        "{stat}"
    );

    // A second snapshot; diff between the two lists the same rows.
    ok(
        d,
        &["--store", "st", "snapshot", "files", "--db", "app.db", "-q"],
    );
    let v2 = json(&ok(
        d,
        &["--store", "st", "diff", "main~1", "main", "--json"],
    ));
    assert_eq!(v2["rows"], v["rows"]);
    assert_eq!(v2["files"], json("[]"));

    // Restore the first snapshot into a new file: identical to the original.
    let before = {
        let orig = d.join("orig.db");
        ok(
            d,
            &[
                "--store", "st", "restore", "main~1", "--db", "orig.db", "-q",
            ],
        );
        dump(&orig)
    };
    assert!(before.contains("CREATE TRIGGER users_audit"));
    assert!(before.contains("CREATE VIEW named"));
    // Onto the changed database, with --delete: back to the first state, in
    // place, without firing the trigger.
    let r = json(&ok(
        d,
        &[
            "--store", "st", "restore", "main~1", "--db", "app.db", "--delete", "--json",
        ],
    ));
    assert_eq!(r["rows_updated"], 1);
    assert_eq!(r["rows_inserted"], 1);
    assert_eq!(r["rows_deleted"], 2, "users 4 and the log row: {r}");
    assert_eq!(dump(&db), before);
    // Files and tables together.
    ok(
        d,
        &[
            "--store", "st", "restore", "main~1", "out", "--db", "out.db", "-q",
        ],
    );
    assert_eq!(
        std::fs::read_to_string(d.join("out/readme.md")).unwrap(),
        "# hi\n"
    );
    assert_eq!(dump(&d.join("out.db")), before);
    // Only some tables.
    ok(
        d,
        &[
            "--store", "st", "restore", "main", "--db", "some.db", "--table", "tags", "-q",
        ],
    );
    let some = dump(&d.join("some.db"));
    assert!(
        some.contains("CREATE TABLE tags") && !some.contains("CREATE TABLE users"),
        "{some}"
    );
}

#[test]
fn restore_without_delete_upserts_and_keeps_extra_rows() {
    let (tmp, db) = setup();
    let d = tmp.path();
    ok(
        d,
        &["--store", "st", "snapshot", "files", "--db", "app.db", "-q"],
    );
    sql(
        &db,
        "UPDATE users SET name = 'x' WHERE id = 1; INSERT INTO users VALUES (9, 'z@x', 'zed', 0);",
    );
    ok(
        d,
        &["--store", "st", "restore", "main", "--db", "app.db", "-q"],
    );
    let c = Connection::open(&db).unwrap();
    let name: String = c
        .query_row("SELECT name FROM users WHERE id = 1", [], |r| r.get(0))
        .unwrap();
    assert_eq!(name, "ann");
    let n: i64 = c
        .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 4, "the extra row stays without --delete");
}

/// Runs a command that must fail with exit 1 and one line on stderr, and
/// checks the target database did not change.
fn refused(d: &Path, target: &Path, args: &[&str], what: &str) {
    let before = std::fs::read(target).unwrap();
    let err = fails(d, args, 1);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(what), "{err} should say {what}");
    assert_eq!(std::fs::read(target).unwrap(), before, "the target changed");
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let (tmp, db) = setup();
    let d = tmp.path();
    ok(
        d,
        &["--store", "st", "snapshot", "files", "--db", "app.db", "-q"],
    );

    // A schema that does not match: a column missing, and a column of another type.
    let other = d.join("other.db");
    sql(
        &other,
        "CREATE TABLE users(id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, name TEXT); INSERT INTO users VALUES (7, 'q', 'q');",
    );
    let dump_before = dump(&other);
    refused(
        d,
        &other,
        &[
            "--store", "st", "restore", "main", "--db", "other.db", "--delete",
        ],
        "has no column score",
    );
    assert_eq!(dump(&other), dump_before);
    let typed = d.join("typed.db");
    sql(
        &typed,
        "CREATE TABLE tags(user INTEGER NOT NULL, tag BLOB NOT NULL, PRIMARY KEY(user, tag)) WITHOUT ROWID;",
    );
    refused(
        d,
        &typed,
        &["--store", "st", "restore", "main", "--db", "typed.db"],
        "schema does not match",
    );

    // A foreign key the restore would break: refused at commit, nothing written.
    let fk = d.join("fk.db");
    sql(
        &fk,
        "CREATE TABLE users(id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, name TEXT, score REAL);",
    );
    refused(
        d,
        &fk,
        &[
            "--store", "st", "restore", "main", "--db", "fk.db", "--table", "tags",
        ],
        "foreign key",
    );

    // A corrupt database file, as a target and as a source.
    let bad = d.join("bad.db");
    std::fs::write(&bad, common::bytes(8192, 3)).unwrap();
    refused(
        d,
        &bad,
        &["--store", "st", "restore", "main", "--db", "bad.db"],
        "bad.db",
    );
    refused(
        d,
        &bad,
        &["--store", "st", "snapshot", "files", "--db", "bad.db"],
        "not a database",
    );
    refused(
        d,
        &bad,
        &["--store", "st", "diff", "main", "--db", "bad.db"],
        "not a database",
    );

    // A table that is not there.
    refused(
        d,
        &db,
        &[
            "--store", "st", "snapshot", "files", "--db", "app.db", "--table", "nope",
        ],
        "no table nope",
    );
    refused(
        d,
        &db,
        &[
            "--store", "st", "restore", "main", "--db", "app.db", "--table", "nope",
        ],
        "no table nope",
    );
    // A database that does not exist, as a source.
    let e = fails(
        d,
        &["--store", "st", "snapshot", "files", "--db", "missing.db"],
        1,
    );
    assert!(e.contains("missing.db") && e.lines().count() == 1, "{e}");
}

/// A restore of files and tables together wrote the files, then failed on a
/// database that refused its rows (exit 1, the files changed). The
/// databases are now tried first, to their commit and rolled back: one
/// that would refuse fails the command before any file is written.
#[test]
fn a_database_that_would_refuse_its_rows_fails_before_any_file_is_written() {
    let (tmp, db) = setup();
    let d = tmp.path();
    ok(
        d,
        &["--store", "st", "snapshot", "files", "--db", "app.db", "-q"],
    );
    std::fs::write(d.join("files/readme.md"), "# edited\n").unwrap();
    std::fs::write(d.join("files/new.md"), "new\n").unwrap();

    // A schema that differs: a column the snapshot lacks.
    sql(&db, "ALTER TABLE users ADD COLUMN extra TEXT");
    let before = dump(&db);
    for args in [
        &["--store", "st", "restore", "main"][..],
        &["--store", "st", "restore", "main", "--delete"][..],
    ] {
        let err = fails(d, args, 1);
        assert!(
            err.contains("nothing was restored") && err.contains("extra"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_to_string(d.join("files/readme.md")).unwrap(),
            "# edited\n"
        );
        assert!(d.join("files/new.md").exists());
        assert_eq!(dump(&db), before);
    }

    // Rows that break a key: with --delete, user 4 would go, and a table
    // the snapshot lacks refers to it.
    std::fs::remove_file(&db).unwrap();
    ok(
        d,
        &["--store", "st", "restore", "main", "--db", "app.db", "-q"],
    );
    sql(
        &db,
        "PRAGMA foreign_keys = ON;
         INSERT INTO users VALUES (4, 'd@x', 'dan', 0);
         CREATE TABLE notes(u INTEGER REFERENCES users(id));
         INSERT INTO notes VALUES (4);",
    );
    let before = dump(&db);
    let err = fails(d, &["--store", "st", "restore", "main", "--delete"], 1);
    assert!(err.contains("nothing was restored"), "{err}");
    assert_eq!(
        std::fs::read_to_string(d.join("files/readme.md")).unwrap(),
        "# edited\n"
    );
    assert!(d.join("files/new.md").exists());
    assert_eq!(dump(&db), before);

    // Without --delete both go back.
    ok(d, &["--store", "st", "restore", "main", "-q"]);
    assert_eq!(
        std::fs::read_to_string(d.join("files/readme.md")).unwrap(),
        "# hi\n"
    );
    assert!(dump(&db).contains("'d@x'"));
}

#[test]
fn a_locked_database_is_refused_after_the_busy_timeout() {
    let (tmp, db) = setup();
    let d = tmp.path();
    ok(
        d,
        &["--store", "st", "snapshot", "files", "--db", "app.db", "-q"],
    );
    sql(&db, "UPDATE users SET name = 'changed' WHERE id = 1");
    let before = dump(&db);
    let holder = Connection::open(&db).unwrap();
    holder
        .execute_batch("BEGIN EXCLUSIVE; UPDATE users SET score = 0;")
        .unwrap();
    let start = std::time::Instant::now();
    let o = Command::new(common::bin())
        .args(["--store", "st", "restore", "main", "--db", "app.db"])
        .current_dir(d)
        .env("SP_SYNC_CACHE_DIR", common::cache_dir())
        .env("SP_SYNC_BUSY_TIMEOUT", "300")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("locked") && err.contains("300 ms"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(start.elapsed() >= std::time::Duration::from_millis(300));
    // A snapshot cannot read under an exclusive lock either.
    let o = Command::new(common::bin())
        .args(["--store", "st", "snapshot", "files", "--db", "app.db"])
        .current_dir(d)
        .env("SP_SYNC_CACHE_DIR", common::cache_dir())
        .env("SP_SYNC_BUSY_TIMEOUT", "300")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("locked"));
    holder.execute_batch("ROLLBACK").unwrap();
    drop(holder);
    assert_eq!(dump(&db), before, "the target is unchanged");
}

#[test]
fn snapshot_is_consistent_while_others_write_in_wal_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init", "--store", "st", "-q"]);
    std::fs::create_dir(d.join("files")).unwrap();
    let db = d.join("wal.db");
    sql(
        &db,
        "PRAGMA journal_mode = WAL; CREATE TABLE a(n INTEGER PRIMARY KEY, pad TEXT); CREATE TABLE b(n INTEGER PRIMARY KEY, pad TEXT);",
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let db2 = db.clone();
    // Every transaction adds one row to each table: in any consistent
    // state both tables hold the same number of rows.
    let writer = std::thread::spawn(move || {
        let c = Connection::open(&db2).unwrap();
        c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
        let mut i = 0i64;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) && i < 200_000 {
            c.execute_batch(&format!(
                "BEGIN; INSERT INTO a VALUES ({i}, hex(randomblob(50))); INSERT INTO b VALUES ({i}, hex(randomblob(50))); COMMIT;"
            ))
            .unwrap();
            i += 1;
        }
        i
    });
    std::thread::sleep(std::time::Duration::from_millis(200));
    for _ in 0..3 {
        let out = json(&ok(
            d,
            &[
                "--store", "st", "snapshot", "files", "--db", "wal.db", "--json",
            ],
        ));
        assert_eq!(out["tables"]["a"], out["tables"]["b"], "{out}");
        assert!(out["tables"]["a"].as_u64().unwrap() > 0);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.join().unwrap();
    assert!(written > 0);
    ok(d, &["--store", "st", "fsck"]);
}

#[test]
fn tables_survive_gc_fsck_and_push_pull() {
    let (tmp, db) = setup();
    let d = tmp.path();
    sql(
        &db,
        "CREATE TABLE big(k INTEGER PRIMARY KEY, v BLOB); INSERT INTO big VALUES (1, randomblob(300000)), (2, zeroblob(5000));",
    );
    ok(
        d,
        &["--store", "st", "snapshot", "files", "--db", "app.db", "-q"],
    );
    let before = dump(&db);
    ok(d, &["--store", "st", "gc"]);
    let f = json(&ok(d, &["--store", "st", "fsck", "--read-data", "--json"]));
    assert_eq!(f["ok"], true, "{f}");
    // Push to a path remote, pull into a third store, restore from there.
    ok(d, &["--store", "st", "push", "./remote"]);
    ok(d, &["init", "--store", "st2", "-q"]);
    ok(d, &["--store", "st2", "pull", "./remote"]);
    ok(d, &["--store", "st2", "fsck", "--read-data"]);
    ok(
        d,
        &[
            "--store",
            "st2",
            "restore",
            "main",
            "--db",
            "pulled.db",
            "-q",
        ],
    );
    assert_eq!(dump(&d.join("pulled.db")), before);

    // A few rows of a bigger table change: the next push asks only about
    // the changed row-map nodes and sends them (no fallback to a full
    // negotiation), and the pulled copy restores identical.
    sql(
        &db,
        "CREATE TABLE many(id INTEGER PRIMARY KEY, name TEXT, n INTEGER);
         WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 20000)
         INSERT INTO many SELECT i, 'name ' || i, i * 7 FROM c;",
    );
    ok(
        d,
        &["--store", "st", "snapshot", "files", "--db", "app.db", "-q"],
    );
    ok(d, &["--store", "st", "push", "./remote", "-q"]);
    sql(
        &db,
        "UPDATE many SET n = -1 WHERE id IN (17, 5000, 12345);
         UPDATE big SET v = randomblob(200000) WHERE k = 1;",
    );
    ok(
        d,
        &["--store", "st", "snapshot", "files", "--db", "app.db", "-q"],
    );
    let o = common::run_in(d, &["--store", "st", "push", "./remote", "--json"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(!stderr.contains("negotiating in full"), "{stderr}");
    let v = json(&String::from_utf8_lossy(&o.stdout));
    let sent = v["bytes_sent"].as_u64().unwrap();
    // The new 200,000-byte blob is incompressible; the rest is a few nodes.
    assert!(sent < 200_000 + 48 * 1024, "sent {sent} bytes: {v}");
    let after = dump(&db);
    ok(d, &["--store", "st2", "pull", "./remote", "-q"]);
    ok(d, &["--store", "st2", "fsck"]);
    std::fs::remove_file(d.join("pulled.db")).unwrap();
    ok(
        d,
        &[
            "--store",
            "st2",
            "restore",
            "main",
            "--db",
            "pulled.db",
            "-q",
        ],
    );
    assert_eq!(dump(&d.join("pulled.db")), after);
}

#[test]
fn fsck_names_a_damaged_row_map() {
    use systemprompt_sync::ObjectType;
    let (tmp, _db) = setup();
    let d = tmp.path();
    ok(
        d,
        &["--store", "st", "snapshot", "files", "--db", "app.db", "-q"],
    );
    // Flip the last byte of a row-map node where its pack stores it.
    let store =
        systemprompt_sync::Store::open(&d.join("st"), systemprompt_sync::LockMode::Shared).unwrap();
    let (id, loc) = store
        .all_objects()
        .into_iter()
        .find(|(id, _)| {
            systemprompt_sync::object::ObjectSource::get(&store, ObjectType::Rows, id).is_ok()
        })
        .expect("a rows node");
    let (_, payload) = store.read_raw(&id).unwrap();
    let pack = store.pack_path(&store.pack_name(loc.pack).unwrap());
    drop(store);
    let mut bytes = std::fs::read(&pack).unwrap();
    let start = loc.offset as usize;
    let pos = start
        + bytes[start..]
            .windows(payload.len())
            .position(|w| w == payload.as_slice())
            .expect("payload in pack");
    bytes[pos + payload.len() - 1] ^= 0x55;
    std::fs::write(&pack, bytes).unwrap();
    let o = common::run_in(d, &["--store", "st", "fsck", "--read-data"]);
    assert_eq!(o.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains(&id.to_hex()), "{stdout}");
    assert!(stdout.contains("table "), "names what reaches it: {stdout}");
    // gc refuses to run on a damaged store.
    fails(d, &["--store", "st", "gc"], 1);
}

#[test]
fn tables_with_non_ascii_names_snapshot_and_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init", "--store", "st", "-q"]);
    std::fs::create_dir(d.join("files")).unwrap();
    let db = d.join("u.db");
    sql(
        &db,
        "CREATE TABLE \"é\"(k TEXT PRIMARY KEY, v);
         CREATE TABLE \"abcdefé\"(k INTEGER PRIMARY KEY, v);
         CREATE TABLE \"sqlité_x\"(v);
         CREATE INDEX \"é_v\" ON \"é\"(v);
         CREATE VIEW \"vué\" AS SELECT * FROM \"é\";
         INSERT INTO \"é\" VALUES ('ü', 1), ('ß', 2);
         INSERT INTO \"abcdefé\" VALUES (1, 'x');
         INSERT INTO \"sqlité_x\" VALUES ('y');",
    );
    let before = dump(&db);
    ok(
        d,
        &["--store", "st", "snapshot", "files", "--db", "u.db", "-q"],
    );
    // Into a new file, and back onto the database after a change.
    ok(
        d,
        &["--store", "st", "restore", "main", "--db", "new.db", "-q"],
    );
    assert_eq!(dump(&d.join("new.db")), before);
    sql(
        &db,
        "DELETE FROM \"é\"; UPDATE \"abcdefé\" SET v = 'changed';",
    );
    let diff = ok(d, &["--store", "st", "diff", "main", "--db", "u.db"]);
    assert!(diff.contains("é"), "{diff}");
    ok(
        d,
        &[
            "--store", "st", "restore", "main", "--db", "u.db", "--delete", "-q",
        ],
    );
    assert_eq!(dump(&db), before);
}

#[test]
fn foreign_key_violations_already_in_the_snapshot_do_not_block_a_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init", "--store", "st", "-q"]);
    std::fs::create_dir(d.join("files")).unwrap();
    let db = d.join("fk.db");
    // SQLite leaves foreign keys off (rusqlite's bundled build turns them
    // on): an orphan row is ordinary.
    sql(
        &db,
        "PRAGMA foreign_keys = OFF;
         CREATE TABLE parent(id INTEGER PRIMARY KEY);
         CREATE TABLE child(id INTEGER PRIMARY KEY, p INTEGER REFERENCES parent(id));
         INSERT INTO parent VALUES (1);
         INSERT INTO child VALUES (10, 1), (11, 99);",
    );
    let before = dump(&db);
    ok(
        d,
        &["--store", "st", "snapshot", "files", "--db", "fk.db", "-q"],
    );
    sql(
        &db,
        "PRAGMA foreign_keys = OFF; UPDATE child SET p = 1 WHERE id = 10; INSERT INTO parent VALUES (2);",
    );
    ok(
        d,
        &[
            "--store", "st", "restore", "main", "--db", "fk.db", "--delete", "-q",
        ],
    );
    assert_eq!(dump(&db), before);
    // A violation the restore would add is still refused: the database's
    // parent row 1 is gone, and restoring only `child` would point at it.
    sql(
        &db,
        "PRAGMA foreign_keys = OFF; DELETE FROM child; DELETE FROM parent;",
    );
    let mid = dump(&db);
    refused(
        d,
        &db,
        &[
            "--store", "st", "restore", "main", "--db", "fk.db", "--table", "child",
        ],
        "foreign key",
    );
    assert_eq!(dump(&db), mid);
}

/// `PRAGMA foreign_key_check` names no row of a `WITHOUT ROWID` table: a
/// restore that removes one orphan and makes another must still be refused,
/// by the orphan's key.
#[test]
fn a_new_orphan_in_a_without_rowid_table_is_refused_though_another_went() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init", "--store", "st", "-q"]);
    std::fs::create_dir(d.join("files")).unwrap();
    let db = d.join("fk.db");
    sql(
        &db,
        "PRAGMA foreign_keys = OFF;
         CREATE TABLE p(id INTEGER PRIMARY KEY);
         CREATE TABLE c(k TEXT PRIMARY KEY, p INTEGER REFERENCES p(id), q INTEGER REFERENCES p) WITHOUT ROWID;
         INSERT INTO p VALUES (1), (2);
         INSERT INTO c VALUES ('a', 1, NULL), ('b', NULL, 2);",
    );
    ok(
        d,
        &["--store", "st", "snapshot", "files", "--db", "fk.db", "-q"],
    );
    // Now: parent 1 is gone, and `c` holds one orphan of its own ('z').
    sql(
        &db,
        "PRAGMA foreign_keys = OFF; DELETE FROM p WHERE id = 1; DELETE FROM c WHERE k = 'a';
         INSERT INTO c VALUES ('z', 9, NULL);",
    );
    let mid = dump(&db);
    // Restoring `c` deletes 'z' and brings back 'a', pointing at the
    // missing parent 1: as many orphans as before, but a new one.
    refused(
        d,
        &db,
        &[
            "--store", "st", "restore", "main", "--db", "fk.db", "--table", "c", "--delete",
        ],
        "a row of c with key ('a') references a missing row of p",
    );
    assert_eq!(dump(&db), mid);
    // An orphan the database already had is no reason to refuse: with
    // parent 1 back, the restore keeps 'z' (no --delete) and succeeds.
    sql(&db, "PRAGMA foreign_keys = OFF; INSERT INTO p VALUES (1);");
    ok(
        d,
        &[
            "--store", "st", "restore", "main", "--db", "fk.db", "--table", "c", "-q",
        ],
    );
    let c = Connection::open(&db).unwrap();
    let keys: Vec<String> = c
        .prepare("SELECT k FROM c ORDER BY k")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(keys, ["a", "b", "z"]);
}

/// A table the restore makes, whose UNIQUE index (or trigger) is named
/// like another table's index in the database: the table came back without
/// it, exit 0, and took duplicates (audit round 14). A mismatch now.
#[test]
fn a_new_tables_index_name_taken_by_another_is_a_mismatch() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init", "--store", "st", "-q"]);
    std::fs::create_dir(d.join("files")).unwrap();
    let db = d.join("app.db");
    sql(
        &db,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v); CREATE TABLE u(id INTEGER PRIMARY KEY, email);
         CREATE UNIQUE INDEX idx1 ON u(email); INSERT INTO u VALUES (1, 'a@x');
         CREATE TRIGGER trg AFTER INSERT ON u BEGIN SELECT 1; END;",
    );
    ok(
        d,
        &["--store", "st", "snapshot", "files", "--db", "app.db", "-q"],
    );
    for (change, what) in [
        (
            "DROP TABLE u; CREATE INDEX idx1 ON t(v);",
            "another index named idx1",
        ),
        (
            "DROP INDEX idx1; CREATE TRIGGER trg AFTER INSERT ON t BEGIN SELECT 2; END;",
            "another trigger named trg",
        ),
    ] {
        let c = Connection::open(&db).unwrap();
        c.execute_batch(
            "DROP TABLE IF EXISTS u; DROP INDEX IF EXISTS idx1; DROP TRIGGER IF EXISTS trg;",
        )
        .unwrap();
        c.execute_batch(
            &change
                .replace("DROP TABLE u;", "")
                .replace("DROP INDEX idx1;", ""),
        )
        .unwrap();
        drop(c);
        refused(
            d,
            &db,
            &["--store", "st", "restore", "main", "--db", "app.db"],
            what,
        );
    }
}

/// A rowid table's key may hold NULL; such a row is told apart by its
/// rowid. When another row holds that rowid, the row went in elsewhere and
/// every later restore added it again, exit 0 (audit round 14). Refused
/// now, nothing written; with --delete the other row goes and it fits.
#[test]
fn a_row_with_a_null_key_needs_its_own_rowid() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init", "--store", "st", "-q"]);
    std::fs::create_dir(d.join("files")).unwrap();
    let db = d.join("app.db");
    sql(
        &db,
        "CREATE TABLE t(k TEXT PRIMARY KEY, v); INSERT INTO t VALUES (NULL, 'a');",
    );
    ok(
        d,
        &["--store", "st", "snapshot", "files", "--db", "app.db", "-q"],
    );
    let snap = dump(&db);
    sql(&db, "DELETE FROM t; INSERT INTO t VALUES ('x', 'keep');");
    refused(
        d,
        &db,
        &["--store", "st", "restore", "main", "--db", "app.db"],
        "the row (NULL) with rowid 1 cannot go back",
    );
    for _ in 0..2 {
        ok(
            d,
            &[
                "--store", "st", "restore", "main", "--db", "app.db", "--delete", "-q",
            ],
        );
        assert_eq!(dump(&db), snap);
    }
}

/// A STRICT table's values restored onto the same table without STRICT
/// changed type (a column of type ANY has NUMERIC affinity there: '7'
/// became 7), exit 0 (audit round 14). STRICT on one side only is a schema
/// mismatch, either way round, and nothing is written.
#[test]
fn strict_on_one_side_only_is_a_schema_mismatch() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init", "--store", "st", "-q"]);
    std::fs::create_dir(d.join("files")).unwrap();
    let strict = "CREATE TABLE t(id INTEGER PRIMARY KEY, v ANY) STRICT;";
    let loose = "CREATE TABLE t(id INTEGER PRIMARY KEY, v ANY);";
    for (i, (from, onto)) in [(strict, loose), (loose, strict)].into_iter().enumerate() {
        let src = d.join(format!("src{i}.db"));
        sql(
            &src,
            &format!("{from} INSERT INTO t VALUES (1, '7'), (2, 7.0), (3, ' 8');"),
        );
        let name = format!("src{i}.db");
        ok(
            d,
            &["--store", "st", "snapshot", "files", "--db", &name, "-q"],
        );
        let target = d.join(format!("target{i}.db"));
        sql(&target, onto);
        let tname = format!("target{i}.db");
        refused(
            d,
            &target,
            &["--store", "st", "restore", "main", "--db", &tname],
            "STRICT in the",
        );
        // Onto its own kind, every value keeps its type.
        let same = format!("same{i}.db");
        sql(&d.join(&same), from);
        ok(
            d,
            &["--store", "st", "restore", "main", "--db", &same, "-q"],
        );
        assert_eq!(dump(&d.join(&same)), dump(&src));
    }
}

/// A table named `""` made a snapshot whose table object never decodes:
/// no diff or restore of it could run, not even of its other tables
/// (audit round 14). A table object is decoded again before it is
/// stored, so the snapshot is refused, naming the table, and no ref moves.
#[test]
fn a_table_no_restore_could_read_is_refused_at_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init", "--store", "st", "-q"]);
    std::fs::create_dir(d.join("files")).unwrap();
    let db = d.join("app.db");
    sql(
        &db,
        "CREATE TABLE \"\"(x PRIMARY KEY); INSERT INTO \"\" VALUES (1);
         CREATE TABLE users(id INTEGER PRIMARY KEY, n); INSERT INTO users VALUES (1, 'ann');",
    );
    let err = fails(
        d,
        &["--store", "st", "snapshot", "files", "--db", "app.db"],
        1,
    );
    assert!(
        err.contains("table \"\" cannot be snapshotted") && err.contains("--table"),
        "{err}"
    );
    assert!(ok(d, &["--store", "st", "ref", "list"]).trim().is_empty());
    ok(
        d,
        &[
            "--store", "st", "snapshot", "files", "--db", "app.db", "--table", "users", "-q",
        ],
    );
    ok(
        d,
        &["--store", "st", "restore", "main", "--db", "new.db", "-q"],
    );
    let n: String = Connection::open(d.join("new.db"))
        .unwrap()
        .query_row("SELECT n FROM users", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, "ann");
}

/// A rowid table keyed by TEXT: the restore may move rows to other rowids,
/// so a violation is named by the row's key, not its rowid. A new orphan
/// that took an old orphan's rowid was taken for it (audit round 14).
#[test]
fn a_new_orphan_on_an_old_orphans_rowid_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init", "--store", "st", "-q"]);
    std::fs::create_dir(d.join("files")).unwrap();
    let db = d.join("fk.db");
    sql(
        &db,
        "PRAGMA foreign_keys = OFF;
         CREATE TABLE parent(id INTEGER PRIMARY KEY);
         CREATE TABLE child(name TEXT PRIMARY KEY, pid INTEGER REFERENCES parent(id));
         INSERT INTO parent VALUES (1); INSERT INTO child VALUES ('carol', NULL), ('bob', 1);",
    );
    ok(
        d,
        &[
            "--store", "st", "snapshot", "files", "--db", "fk.db", "--table", "child", "-q",
        ],
    );
    for (change, delete) in [
        // 'carol' (rowid 2) is an orphan; the restore moves it to put 'bob'
        // back on rowid 2, pointing at the missing parent 1.
        (
            "DELETE FROM child; INSERT INTO child VALUES ('zed', NULL), ('carol', 99); DELETE FROM parent;",
            false,
        ),
        // --delete takes the orphan 'alice' (rowid 1) away and puts 'bob'
        // there.
        (
            "DELETE FROM child; INSERT INTO child VALUES ('alice', 99); DELETE FROM parent;",
            true,
        ),
    ] {
        sql(&db, &format!("PRAGMA foreign_keys = OFF; {change}"));
        let mid = dump(&db);
        let mut args = vec!["--store", "st", "restore", "main", "--db", "fk.db"];
        if delete {
            args.push("--delete");
        }
        refused(
            d,
            &db,
            &args,
            "a row of child with key ('bob') references a missing row of parent",
        );
        assert_eq!(dump(&db), mid);
    }
}

/// A key that holds NULL does not tell rows apart: a row that broke no
/// foreign key and now does was taken for another NULL-key row already
/// broken (audit round 21). Such rows are named by their rowid too.
#[test]
fn a_new_orphan_with_a_null_key_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init", "--store", "st", "-q"]);
    std::fs::create_dir(d.join("files")).unwrap();
    let schema = "CREATE TABLE p(id INTEGER PRIMARY KEY, code TEXT UNIQUE);
                  CREATE TABLE c(k TEXT PRIMARY KEY, pc REFERENCES p(code));";
    let src = d.join("src.db");
    sql(
        &src,
        &format!("PRAGMA foreign_keys = OFF; {schema} INSERT INTO p VALUES (1, 'A'), (2, 'b');"),
    );
    ok(
        d,
        &["--store", "st", "snapshot", "files", "--db", "src.db", "-q"],
    );
    let db = d.join("app.db");
    sql(
        &db,
        &format!(
            "PRAGMA foreign_keys = OFF; {schema} INSERT INTO p VALUES (1, 'a'), (2, NULL);
             INSERT INTO c(rowid, k, pc) VALUES (1, NULL, 'a'), (2, NULL, 'b');"
        ),
    );
    // Restoring p: c's row 1 (valid) loses 'a'; row 2 was broken already.
    refused(
        d,
        &db,
        &[
            "--store", "st", "restore", "main", "--db", "app.db", "--table", "p",
        ],
        "a row of c with key (NULL, 1) references a missing row of p",
    );
}

/// SQLite lets a foreign key name parent columns that are not a unique key
/// (while foreign keys are off), and `PRAGMA foreign_key_check` then fails
/// for the whole table ("foreign key mismatch"). Such a database can still
/// be restored onto, and a restore that leaves a row of such a key without
/// a parent is still refused.
#[test]
fn a_foreign_key_to_a_non_unique_column_does_not_block_restores() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init", "--store", "st", "-q"]);
    std::fs::create_dir(d.join("files")).unwrap();
    let db = d.join("fk.db");
    sql(
        &db,
        "PRAGMA foreign_keys = OFF;
         CREATE TABLE p(id INTEGER PRIMARY KEY, code TEXT);
         CREATE TABLE c(id INTEGER PRIMARY KEY, code TEXT REFERENCES p(code), n INTEGER);
         INSERT INTO p VALUES (1, 'x'), (2, 'y');
         INSERT INTO c VALUES (10, 'x', 1), (11, 'y', 1);",
    );
    ok(
        d,
        &["--store", "st", "snapshot", "files", "--db", "fk.db", "-q"],
    );
    let snap = dump(&db);
    sql(
        &db,
        "PRAGMA foreign_keys = OFF; UPDATE c SET n = 2; INSERT INTO c VALUES (12, NULL, 3);",
    );
    ok(
        d,
        &[
            "--store", "st", "restore", "main", "--db", "fk.db", "--delete", "-q",
        ],
    );
    assert_eq!(dump(&db), snap);
    // Parent 'y' gone: restoring `c` alone would leave row 11 without one.
    sql(
        &db,
        "PRAGMA foreign_keys = OFF; DELETE FROM p WHERE code = 'y'; DELETE FROM c WHERE id = 11;",
    );
    let mid = dump(&db);
    refused(
        d,
        &db,
        &[
            "--store", "st", "restore", "main", "--db", "fk.db", "--table", "c",
        ],
        "a row of c with key (11) references a missing row of p",
    );
    assert_eq!(dump(&db), mid);
}

/// TEXT that is not UTF-8 (SQLite keeps any bytes in a UTF-8 database)
/// cannot go into a UTF-16 database unchanged: SQLite would store U+FFFD.
/// The restore refuses, naming the row, and writes nothing.
#[test]
fn text_that_is_not_utf8_is_refused_for_a_utf16_database() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init", "--store", "st", "-q"]);
    std::fs::create_dir(d.join("files")).unwrap();
    let db = d.join("bytes.db");
    sql(
        &db,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
         CREATE TABLE u(k TEXT PRIMARY KEY, v TEXT) WITHOUT ROWID;
         INSERT INTO t VALUES (1, 'fine'), (2, CAST(x'41ff42' AS TEXT));
         INSERT INTO u VALUES ('a', CAST(x'c3' AS TEXT));",
    );
    ok(
        d,
        &[
            "--store", "st", "snapshot", "files", "--db", "bytes.db", "-q",
        ],
    );
    let wide = d.join("wide.db");
    sql(
        &wide,
        "PRAGMA encoding = 'UTF-16le';
         CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
         CREATE TABLE u(k TEXT PRIMARY KEY, v TEXT) WITHOUT ROWID;
         INSERT INTO t VALUES (1, 'fine');",
    );
    // Onto rows the table has (`t`, an insert among updates) and into an
    // empty table (`u`).
    for (table, what) in [("t", "the row t(2)"), ("u", "the row u('a')")] {
        let before = dump(&wide);
        refused(
            d,
            &wide,
            &[
                "--store", "st", "restore", "main", "--db", "wide.db", "--table", table,
            ],
            what,
        );
        assert_eq!(dump(&wide), before);
    }
    // Into a UTF-8 database the bytes come back exactly.
    let narrow = d.join("narrow.db");
    ok(
        d,
        &[
            "--store",
            "st",
            "restore",
            "main",
            "--db",
            "narrow.db",
            "-q",
        ],
    );
    let c = Connection::open(&narrow).unwrap();
    let v: Vec<u8> = c
        .query_row("SELECT CAST(v AS BLOB) FROM t WHERE id = 2", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(v, b"A\xffB");
}

/// SQLite hands over a UTF-16 database's text as UTF-8, and text that is not
/// valid UTF-16 (a lone surrogate, which SQLite stores as it is given) came
/// over as another value: a restore then wrote a value the database never
/// held, exit 0, and two values could become one. Such a value now fails
/// the snapshot, naming its table, row and column; no ref moves. Valid
/// UTF-16 (a surrogate pair, text ordered as UTF-16 and UTF-8 differ) still
/// round-trips exactly.
#[test]
fn text_that_is_not_utf16_fails_a_snapshot_of_a_utf16_database() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init", "--store", "st", "-q"]);
    std::fs::create_dir(d.join("files")).unwrap();
    for (enc, bytes, at) in [
        ("UTF-16le", "00DC", "t"),     // a lone low surrogate
        ("UTF-16le", "41003DD8", "t"), // a lone high surrogate at the end
        ("UTF-16le", "3DD84100", "t"), // a high surrogate before a letter
        ("UTF-16be", "DC00", "t"),
        ("UTF-16le", "00DC", "u"), // in the key of a WITHOUT ROWID table
    ] {
        let db = d.join("wide.db");
        let _ = std::fs::remove_file(&db);
        sql(
            &db,
            &format!(
                "PRAGMA encoding = '{enc}';
                 CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
                 CREATE TABLE u(k TEXT PRIMARY KEY, v TEXT) WITHOUT ROWID;
                 INSERT INTO t VALUES (1, 'fine');
                 INSERT INTO u VALUES ('a', 'fine');"
            ),
        );
        let ins = if at == "t" {
            format!("INSERT INTO t VALUES (7, CAST(x'{bytes}' AS TEXT));")
        } else {
            format!("INSERT INTO u VALUES (CAST(x'{bytes}' AS TEXT), 'x');")
        };
        sql(&db, &ins);
        let err = fails(
            d,
            &[
                "--store", "st", "snapshot", "files", "--db", "wide.db", "-q",
            ],
            1,
        );
        let col = if at == "t" { "column v" } else { "column k" };
        assert!(
            err.contains(&format!("table {at}")) && err.contains(col) && err.contains("UTF-16"),
            "{enc} {bytes}: {err}"
        );
        if at == "t" {
            assert!(err.contains("rowid 7"), "{err}");
        }
        let refs = ok(d, &["--store", "st", "ref", "list"]);
        assert!(!refs.contains("main"), "a ref moved: {refs}");
    }

    // Valid UTF-16 round-trips: a surrogate pair, and keys whose UTF-16
    // order is not their UTF-8 order.
    let db = d.join("good.db");
    sql(
        &db,
        "PRAGMA encoding = 'UTF-16le';
         CREATE TABLE u(k TEXT PRIMARY KEY, v TEXT) WITHOUT ROWID;
         INSERT INTO u VALUES ('A', 'x'), ('Ā', '😀 y'), (CAST(x'3DD800DE' AS TEXT), '');",
    );
    ok(
        d,
        &[
            "--store", "st", "snapshot", "files", "--db", "good.db", "-q",
        ],
    );
    let before = dump(&db);
    std::fs::remove_file(&db).unwrap();
    ok(
        d,
        &["--store", "st", "restore", "main", "--db", "good.db", "-q"],
    );
    assert_eq!(dump(&db), before);
}

/// `restore --db` of a large-ish table, interrupted at random moments: an
/// interrupted restore exits 130 and leaves the database as it was; one
/// that finished exits 0 with the snapshot's rows. Never anything between.
#[test]
fn an_interrupted_database_restore_rolls_back() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init", "--store", "st", "-q"]);
    std::fs::create_dir(d.join("files")).unwrap();
    let db = d.join("big.db");
    sql(
        &db,
        "CREATE TABLE big(id INTEGER PRIMARY KEY, v TEXT);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 150000)
         INSERT INTO big SELECT i, printf('row %d %s', i, hex(randomblob(24))) FROM n;",
    );
    ok(
        d,
        &["--store", "st", "snapshot", "files", "--db", "big.db", "-q"],
    );
    let after = dump(&db);
    sql(
        &db,
        "DELETE FROM big WHERE id % 2 = 0; UPDATE big SET v = 'changed' WHERE id % 3 = 0;",
    );
    let before = dump(&db);
    let pristine = std::fs::read(&db).unwrap();
    // How long an uninterrupted restore takes.
    let t0 = std::time::Instant::now();
    ok(
        d,
        &["--store", "st", "restore", "main", "--db", "big.db", "-q"],
    );
    let full = t0.elapsed();
    assert_eq!(dump(&db), after);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut interrupted = 0;
    for trial in 0..12 {
        std::fs::write(&db, &pristine).unwrap();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        // From 5% (the signal handler is installed by then) to 110% of an
        // uninterrupted restore.
        let frac = 0.05 + (rng % 1000) as f64 / 1000.0 * 1.05;
        let wait = full.mul_f64(frac);
        let child = Command::new(common::bin())
            .current_dir(d)
            .args(["--store", "st", "restore", "main", "--db", "big.db", "-q"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(wait);
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let out = child.wait_with_output().unwrap();
        let now = dump(&db);
        match out.status.code() {
            Some(130) => {
                interrupted += 1;
                assert!(
                    now == before,
                    "trial {trial}: interrupted, yet the database changed"
                );
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(err.contains("interrupted"), "trial {trial}: {err}");
            }
            Some(0) => {
                assert!(now == after, "trial {trial}: finished, yet rows differ");
                // A signal in the first third of the work lands long before
                // the commit: it must stop the restore.
                assert!(
                    frac > 0.35,
                    "trial {trial}: SIGINT at {:.0}% of the restore was ignored",
                    frac * 100.0
                );
            }
            c => panic!(
                "trial {trial}: exit {c:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
        let left: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("big.db") && n != "big.db")
            .collect();
        assert!(left.is_empty(), "trial {trial}: left behind {left:?}");
    }
    assert!(interrupted > 0, "no trial landed before the end");
}

/// Rows SQLite holds but a map entry did not: 300 TEXT columns of 4,000
/// bytes (1.2 MB of inline values), and a 70 KB TEXT primary key. They
/// snapshot, diff and restore exactly.
#[test]
fn wide_rows_and_long_keys_snapshot_diff_and_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init", "--store", "st", "-q"]);
    std::fs::create_dir(d.join("files")).unwrap();
    let db = d.join("wide.db");
    let cols: Vec<String> = (0..300).map(|i| format!("c{i} TEXT")).collect();
    let vals: Vec<String> = (0..300)
        .map(|_| "substr(hex(randomblob(2000)), 1, 4000)".to_string())
        .collect();
    sql(
        &db,
        &format!(
            "CREATE TABLE wide(id INTEGER PRIMARY KEY, {});
             INSERT INTO wide VALUES (1, {});
             INSERT INTO wide(id, c0) VALUES (2, 'small');
             CREATE TABLE longkey(k TEXT PRIMARY KEY, v) WITHOUT ROWID;
             INSERT INTO longkey VALUES (printf('%.70000c', 'k'), 1), ('short', 2),
                 (printf('%.70000c', 'k') || 'x', 3);
             CREATE TABLE longkey_rowid(k TEXT PRIMARY KEY, v);
             INSERT INTO longkey_rowid VALUES (hex(randomblob(40000)), 1);",
            cols.join(", "),
            vals.join(", ")
        ),
    );
    let before = dump(&db);
    ok(
        d,
        &[
            "--store", "st", "snapshot", "files", "--db", "wide.db", "-q",
        ],
    );
    ok(
        d,
        &["--store", "st", "restore", "main", "--db", "new.db", "-q"],
    );
    assert_eq!(dump(&d.join("new.db")), before);
    // Change one wide value and the long key's row; diff names them.
    sql(
        &db,
        "UPDATE wide SET c150 = 'changed' WHERE id = 1;
         UPDATE longkey SET v = 9 WHERE v = 1;",
    );
    let diff = json(&ok(
        d,
        &["--store", "st", "diff", "main", "--db", "wide.db", "--json"],
    ));
    let text = diff.to_string();
    assert!(text.contains("c150"), "{text:.400}");
    assert!(text.contains("longkey"), "{text:.400}");
    ok(
        d,
        &["--store", "st", "restore", "main", "--db", "wide.db", "-q"],
    );
    assert_eq!(dump(&db), before);
    ok(d, &["--store", "st", "fsck"]);
    // A second snapshot of the unchanged database reuses every value.
    ok(
        d,
        &[
            "--store", "st", "snapshot", "files", "--db", "wide.db", "-q",
        ],
    );
    let diff = ok(d, &["--store", "st", "diff", "main~1", "main"]);
    assert!(!diff.contains("wide"), "{diff}");
}

/// Rows that trade values of a unique index (swapped emails, reordered
/// positions, a new row taking a value an updated row gives up) restore,
/// in rowid and WITHOUT ROWID tables alike.
#[test]
fn rows_that_trade_unique_values_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init", "--store", "st", "-q"]);
    std::fs::create_dir(d.join("files")).unwrap();
    let db = d.join("app.db");
    sql(
        &db,
        "CREATE TABLE u(id INTEGER PRIMARY KEY, email TEXT UNIQUE, pos INT);
         CREATE UNIQUE INDEX u_pos ON u(pos);
         INSERT INTO u VALUES (1, 'a', 1), (2, 'b', 2), (3, 'c', 3), (4, 'd', 4);
         CREATE TABLE w(slug TEXT PRIMARY KEY, email TEXT UNIQUE) WITHOUT ROWID;
         INSERT INTO w VALUES ('x', '1'), ('y', '2');",
    );
    let dbs = db.to_str().unwrap();
    ok(
        d,
        &["--store", "st", "snapshot", "files", "--db", dbs, "-q"],
    );
    let before = dump(&db);
    sql(
        &db,
        "UPDATE u SET email = 't' WHERE id = 1; UPDATE u SET email = 'a' WHERE id = 2;
         UPDATE u SET email = 'b' WHERE id = 1; UPDATE u SET pos = pos + 10;
         UPDATE u SET pos = CASE id WHEN 1 THEN 2 WHEN 2 THEN 3 WHEN 3 THEN 1 ELSE 4 END;
         DELETE FROM u WHERE id = 3; UPDATE u SET email = 'c' WHERE id = 4;
         UPDATE w SET email = 't' WHERE slug = 'x'; UPDATE w SET email = '1' WHERE slug = 'y';
         UPDATE w SET email = '2' WHERE slug = 'x';",
    );
    ok(d, &["--store", "st", "restore", "main", "--db", dbs, "-q"]);
    assert_eq!(dump(&db), before);
}

/// A table's own conflict clause (UNIQUE ON CONFLICT ROLLBACK, REPLACE,
/// IGNORE) never decides a restore: swaps restore exactly, and a real
/// conflict with a row the snapshot lacks fails, nothing written (ROLLBACK
/// would have ended the transaction, REPLACE deleted that row, IGNORE
/// skipped the update).
#[test]
fn a_tables_conflict_clause_never_decides_a_restore() {
    for clause in ["ROLLBACK", "REPLACE", "IGNORE"] {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        ok(d, &["init", "--store", "st", "-q"]);
        std::fs::create_dir(d.join("files")).unwrap();
        let db = d.join("app.db");
        sql(
            &db,
            &format!(
                "CREATE TABLE u(id INTEGER PRIMARY KEY, email TEXT UNIQUE ON CONFLICT {clause}, n INT);
                 INSERT INTO u VALUES (1, 'a', 1), (2, 'b', 2);"
            ),
        );
        let dbs = db.to_str().unwrap();
        ok(
            d,
            &["--store", "st", "snapshot", "files", "--db", dbs, "-q"],
        );
        let before = dump(&db);
        sql(
            &db,
            "UPDATE u SET email = 'x' WHERE id = 1; UPDATE u SET email = 'a' WHERE id = 2;
             UPDATE u SET email = 'b' WHERE id = 1;",
        );
        ok(d, &["--store", "st", "restore", "main", "--db", dbs, "-q"]);
        assert_eq!(dump(&db), before, "{clause}");
        sql(
            &db,
            "UPDATE u SET email = 'z', n = 100 WHERE id = 1; INSERT INTO u VALUES (3, 'a', 3);",
        );
        let mid = dump(&db);
        let err = fails(d, &["--store", "st", "restore", "main", "--db", dbs], 1);
        assert!(err.contains("UNIQUE"), "{clause}: {err}");
        assert_eq!(dump(&db), mid, "{clause}");
    }
}

/// A restore into a new file refuses while a `-wal` or `-journal` of a
/// database that is gone lies beside the target: SQLite would replay it
/// into the new file when it is next opened (the gone database's rows
/// instead of the snapshot's, or a hot journal rolled back over them).
#[test]
fn a_new_file_is_not_made_beside_another_databases_wal_or_journal() {
    let (tmp, _db) = setup();
    let d = tmp.path();
    ok(
        d,
        &["--store", "st", "snapshot", "files", "--db", "app.db", "-q"],
    );
    // A WAL with rows not yet in any file, as a database deleted while an
    // application had it open leaves it.
    let gone = d.join("gone.db");
    let c = Connection::open(&gone).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;
         CREATE TABLE users(id INTEGER PRIMARY KEY, email TEXT); INSERT INTO users VALUES (7, 'gone');",
    )
    .unwrap();
    let target = d.join("new.db");
    std::fs::copy(d.join("gone.db-wal"), d.join("new.db-wal")).unwrap();
    drop(c);
    for side in ["new.db-wal", "new.db-journal"] {
        if side.ends_with("journal") {
            std::fs::write(d.join(side), b"a hot journal\n").unwrap();
        }
        let err = fails(
            d,
            &["--store", "st", "restore", "main", "--db", "new.db"],
            1,
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(
            err.contains(side) && err.contains("nothing was written"),
            "{err}"
        );
        assert!(!target.exists(), "{side}: a new file was made");
        std::fs::remove_file(d.join(side)).unwrap();
    }
    ok(
        d,
        &["--store", "st", "restore", "main", "--db", "new.db", "-q"],
    );
    let n: i64 = Connection::open(&target)
        .unwrap()
        .query_row("SELECT count(*) FROM users WHERE id = 7", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);
}

/// A restore into a new file gives back what the database kept outside its
/// tables: the schema version migration tools keep (`user_version`),
/// `application_id`, page size, auto-vacuum, WAL mode and text encoding.
#[test]
fn a_new_file_gets_the_databases_settings_back() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init", "--store", "st", "-q"]);
    std::fs::create_dir(d.join("files")).unwrap();
    let db = d.join("app.db");
    sql(
        &db,
        "PRAGMA encoding = 'UTF-16le'; PRAGMA page_size = 1024; PRAGMA auto_vacuum = FULL;
         PRAGMA journal_mode = WAL; PRAGMA user_version = 42; PRAGMA application_id = 1234567;
         CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a'), (2, 'é');",
    );
    let settings = |p: &Path| -> Vec<String> {
        let c = Connection::open(p).unwrap();
        [
            "user_version",
            "application_id",
            "page_size",
            "auto_vacuum",
            "journal_mode",
            "encoding",
        ]
        .iter()
        .map(|n| {
            c.query_row(&format!("PRAGMA {n}"), [], |r| {
                r.get::<_, rusqlite::types::Value>(0)
            })
            .map(|v| format!("{v:?}"))
            .unwrap()
        })
        .collect()
    };
    let want = settings(&db);
    assert!(
        want[0].contains("42") && want[4].contains("wal") && want[5].contains("UTF-16le"),
        "{want:?}"
    );
    ok(
        d,
        &["--store", "st", "snapshot", "files", "--db", "app.db", "-q"],
    );
    ok(
        d,
        &["--store", "st", "restore", "main", "--db", "copy.db", "-q"],
    );
    assert_eq!(settings(&d.join("copy.db")), want);
    assert_eq!(dump(&d.join("copy.db")), dump(&db));
    assert!(!d.join("copy.db-wal").exists() && !d.join("copy.db-shm").exists());
}

/// SQLite names match in any ASCII case: a snapshot's table `Users`
/// restores onto a database whose table is `users`.
#[test]
fn a_table_named_in_another_case_is_the_same_table() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init", "--store", "st", "-q"]);
    std::fs::create_dir(d.join("files")).unwrap();
    sql(
        &d.join("a.db"),
        "CREATE TABLE Users(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO Users VALUES (1, 'a');",
    );
    ok(
        d,
        &["--store", "st", "snapshot", "files", "--db", "a.db", "-q"],
    );
    let b = d.join("b.db");
    sql(
        &b,
        "CREATE TABLE users(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO users VALUES (1, 'b');",
    );
    ok(
        d,
        &["--store", "st", "restore", "main", "--db", "b.db", "-q"],
    );
    let v: String = Connection::open(&b)
        .unwrap()
        .query_row("SELECT v FROM users WHERE id = 1", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, "a");
}

/// A table AUTOINCREMENT on one side only is a schema mismatch, refused
/// before anything is written: its counter has nowhere to go (or would be
/// made up), and the application's next ids would differ.
#[test]
fn autoincrement_on_one_side_only_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init", "--store", "st", "-q"]);
    std::fs::create_dir(d.join("files")).unwrap();
    sql(
        &d.join("a.db"),
        "CREATE TABLE t(id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT); INSERT INTO t(v) VALUES ('a');
         CREATE TABLE u(id INTEGER PRIMARY KEY, v TEXT, note TEXT DEFAULT 'AUTOINCREMENT');",
    );
    ok(
        d,
        &["--store", "st", "snapshot", "files", "--db", "a.db", "-q"],
    );
    let b = d.join("b.db");
    sql(
        &b,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'b');
         CREATE TABLE u(id INTEGER PRIMARY KEY, v TEXT, note TEXT DEFAULT 'AUTOINCREMENT');",
    );
    refused(
        d,
        &b,
        &["--store", "st", "restore", "main", "--db", "b.db"],
        "table t is AUTOINCREMENT in the snapshot only",
    );
    // The word in a string is no AUTOINCREMENT: u alone restores.
    ok(
        d,
        &[
            "--store", "st", "restore", "main", "--db", "b.db", "--table", "u", "-q",
        ],
    );
}

/// A moved AUTOINCREMENT counter (rows inserted, even if deleted since) is
/// a change: the application's next id differs after a restore.
#[test]
fn diff_reports_a_moved_autoincrement_counter() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init", "--store", "st", "-q"]);
    std::fs::create_dir(d.join("files")).unwrap();
    let db = d.join("a.db");
    sql(
        &db,
        "CREATE TABLE t(id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT); INSERT INTO t(v) VALUES ('a');",
    );
    ok(
        d,
        &["--store", "st", "snapshot", "files", "--db", "a.db", "-q"],
    );
    sql(
        &db,
        "INSERT INTO t(v) VALUES ('b'); DELETE FROM t WHERE v = 'b';",
    );
    let o = common::run_in(
        d,
        &[
            "--store",
            "st",
            "diff",
            "main",
            "--db",
            "a.db",
            "--json",
            "--exit-code",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    let v: Json = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["tables"][0]["change"], "sequence", "{v}");
    assert_eq!(v["rows"].as_array().unwrap().len(), 0, "{v}");
    ok(
        d,
        &["--store", "st", "snapshot", "files", "--db", "a.db", "-q"],
    );
    let v = json(&ok(
        d,
        &["--store", "st", "diff", "main~1", "main", "--json"],
    ));
    assert_eq!(v["tables"][0]["change"], "sequence", "{v}");
}

/// A UTF-16 database orders text by its UTF-16 bytes (`Ā` before `A` in
/// UTF-16le, `😀` before `ｆ` in UTF-16be), the row map by code points: a
/// snapshot reads its rows in the row map's order, a diff against it and
/// a restore onto it match rows by key, and a new file is UTF-16 again.
#[test]
fn utf16_databases_snapshot_diff_and_restore_by_key() {
    for enc in ["UTF-16le", "UTF-16be"] {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        ok(d, &["init", "--store", "st", "-q"]);
        std::fs::create_dir(d.join("files")).unwrap();
        let db = d.join("app.db");
        sql(
            &db,
            &format!(
                "PRAGMA encoding = '{enc}';
                 CREATE TABLE t(k TEXT PRIMARY KEY, v INT);
                 CREATE TABLE w(k TEXT, n INT, v TEXT, PRIMARY KEY (k, n)) WITHOUT ROWID;
                 INSERT INTO t VALUES ('A', 1), ('Ā', 2), ('B', 3), ('😀', 4), ('ｆ', 5), ('a', 6);
                 INSERT INTO w VALUES ('ｆ', 1, 'x'), ('😀', 1, 'y'), ('Ā', 2, 'z'), ('A', 2, 'q');"
            ),
        );
        ok(
            d,
            &["--store", "st", "snapshot", "files", "--db", "app.db", "-q"],
        );
        let want = dump(&db);
        sql(
            &db,
            "UPDATE t SET v = 20 WHERE k = 'Ā'; DELETE FROM t WHERE k = '😀';
             INSERT INTO t VALUES ('Ă', 7); UPDATE w SET v = 'changed' WHERE k = 'ｆ';",
        );
        let diff: Json = serde_json::from_str(&ok(
            d,
            &["--store", "st", "diff", "main", "--db", "app.db", "--json"],
        ))
        .unwrap();
        let rows = diff["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 4, "{enc}: {diff}");
        ok(
            d,
            &["--store", "st", "restore", "main", "--db", "app.db", "-q"],
        );
        let got = dump(&db);
        assert!(got.contains("'Ă'"), "{enc}: a row the snapshot lacks went");
        sql(&db, "DELETE FROM t WHERE k = 'Ă'");
        assert_eq!(dump(&db), want, "{enc}");
        ok(
            d,
            &["--store", "st", "restore", "main", "--db", "copy.db", "-q"],
        );
        assert_eq!(dump(&d.join("copy.db")), want, "{enc}");
        let e: String = Connection::open(d.join("copy.db"))
            .unwrap()
            .query_row("PRAGMA encoding", [], |r| r.get(0))
            .unwrap();
        assert_eq!(e, enc);
    }
}

/// A table or column name holding a newline (or a tab, a quote) prints
/// quoted in `diff`: it cannot fake a change line or split one.
#[test]
fn diff_quotes_table_and_column_names_that_could_fake_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init", "--store", "st", "-q"]);
    std::fs::create_dir(d.join("files")).unwrap();
    let db = d.join("app.db");
    sql(
        &db,
        "CREATE TABLE \"t\nM forged(1)\" (id INTEGER PRIMARY KEY, \"v\tx\" TEXT);
         INSERT INTO \"t\nM forged(1)\" VALUES (1, 'a');",
    );
    ok(
        d,
        &["--store", "st", "snapshot", "files", "--db", "app.db", "-q"],
    );
    sql(&db, "UPDATE \"t\nM forged(1)\" SET \"v\tx\" = 'b'");
    let out = ok(d, &["--store", "st", "diff", "main", "--db", "app.db"]);
    let changes: Vec<&str> = out.lines().filter(|l| l.starts_with("M ")).collect();
    assert_eq!(changes, ["M \"t\\nM forged(1)\"(1) [\"v\\tx\"]"], "{out}");
}

/// `diff --json` prints two different keys differently: a REAL infinity
/// and the TEXT `'inf'`, two TEXT keys that are not UTF-8 and differ in
/// their bytes (`x'ff'`, `x'fe'`: replacing bad bytes made both `"�"`).
#[test]
fn diff_json_never_prints_two_keys_alike() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init", "--store", "st", "-q"]);
    std::fs::create_dir(d.join("files")).unwrap();
    let db = d.join("k.db");
    sql(
        &db,
        "CREATE TABLE t(k PRIMARY KEY, v INT) WITHOUT ROWID;
         INSERT INTO t VALUES (9e999, 1), ('inf', 1), (-9e999, 1), ('-inf', 1),
                              (CAST(x'ff' AS TEXT), 1), (CAST(x'fe' AS TEXT), 1), ('ok', 1);",
    );
    ok(
        d,
        &["--store", "st", "snapshot", "files", "--db", "k.db", "-q"],
    );
    sql(&db, "UPDATE t SET v = 2;");
    let v = json(&ok(
        d,
        &["--store", "st", "diff", "main", "--db", "k.db", "--json"],
    ));
    let mut keys: Vec<String> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"][0].to_string())
        .collect();
    keys.sort();
    let mut want = vec![
        r#"{"real":"inf"}"#,
        r#""inf""#,
        r#"{"real":"-inf"}"#,
        r#""-inf""#,
        r#"{"text_hex":"ff"}"#,
        r#"{"text_hex":"fe"}"#,
        r#""ok""#,
    ];
    want.sort();
    assert_eq!(keys, want, "{v}");
}

/// A restore into a new database file renamed its build over a file made at
/// that path meanwhile (an application creating its database), exit 0. The
/// file is now left as it is and the restore fails (audit 23).
#[test]
fn a_restore_into_a_new_file_never_replaces_one_made_meanwhile() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_path_buf();
    ok(&d, &["init", "--store", "st", "-q"]);
    std::fs::create_dir(d.join("files")).unwrap();
    sql(
        &d.join("big.db"),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300000)
         INSERT INTO t SELECT i, printf('row %d of a table big enough to take a while', i) FROM n;",
    );
    ok(
        &d,
        &["--store", "st", "snapshot", "files", "--db", "big.db", "-q"],
    );
    // Once the restore's temporary file is there, the "application" makes
    // the database itself.
    let out = d.join("out");
    std::fs::create_dir(&out).unwrap();
    let app_file = out.join("new.db");
    let watcher = common::when_a_file_shows(&out, ".new.db.sp-sync-", move || {
        std::fs::write(app_file, "the app's own file").unwrap();
    });
    let o = common::run_in(
        &d,
        &[
            "--store",
            "st",
            "restore",
            "main",
            "--db",
            "out/new.db",
            "-q",
        ],
    );
    assert!(
        watcher.join().unwrap(),
        "the restore's temporary file never showed"
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("appeared"), "{err}");
    assert_eq!(
        std::fs::read(out.join("new.db")).unwrap(),
        b"the app's own file"
    );
    // (No temporary file is left.)
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);
}

/// A table whose rows break one of its CHECK constraints (written with the
/// checks off, as SQLite allows) could not be restored into a new file: the
/// backup was unusable. A new file is a copy and takes them as they were;
/// a restore onto an existing database still keeps to its checks.
#[test]
fn rows_that_break_a_check_come_back_into_a_new_file() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init", "--store", "st", "-q"]);
    std::fs::create_dir(d.join("files")).unwrap();
    let db = d.join("app.db");
    sql(
        &db,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, n INT CHECK (n > 0));
         PRAGMA ignore_check_constraints = ON;
         INSERT INTO t VALUES (1, -5), (2, 3);",
    );
    ok(
        d,
        &["--store", "st", "snapshot", "files", "--db", "app.db", "-q"],
    );
    ok(
        d,
        &["--store", "st", "restore", "main", "--db", "new.db", "-q"],
    );
    assert_eq!(dump(&d.join("new.db")), dump(&db));
    // The new file checks new rows again.
    let c = Connection::open(d.join("new.db")).unwrap();
    assert!(c.execute("INSERT INTO t VALUES (3, -1)", []).is_err());
    // Onto an existing database the row is refused, naming it.
    let other = d.join("other.db");
    sql(
        &other,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, n INT CHECK (n > 0));",
    );
    refused(
        d,
        &other,
        &["--store", "st", "restore", "main", "--db", "other.db"],
        "CHECK",
    );
}

/// `sp-sync --store st ARGS` in `d`, which must succeed; its output.
fn st(d: &Path, args: &[&str]) -> String {
    let mut a = vec!["--store", "st"];
    a.extend_from_slice(args);
    ok(d, &a)
}

/// A database that was analyzed (`ANALYZE`, `PRAGMA optimize`) keeps its
/// index statistics: `sqlite_stat1` and `sqlite_stat4` are snapshotted,
/// diffed by row and restored, so a new file is `.dump`-identical (they
/// were left out: the restored database planned its queries without
/// them). A statistics table the snapshot lacks is not made; one dropped
/// from the database comes back in place.
#[test]
fn index_statistics_are_snapshotted_and_restored() {
    let (tmp, db) = setup();
    let d = tmp.path();
    sql(
        &db,
        "INSERT INTO users SELECT id + 10, 'z' || email, name, score FROM users; ANALYZE;",
    );
    let n4: i64 = Connection::open(&db)
        .unwrap()
        .query_row("SELECT count(*) FROM sqlite_stat4", [], |r| r.get(0))
        .unwrap();
    assert!(n4 > 0, "this SQLite keeps sqlite_stat4");
    let out = json(&st(
        d,
        &["snapshot", "files", "--db", "app.db", "--json", "-q"],
    ));
    assert!(out["tables"]["sqlite_stat1"].as_u64() > Some(0), "{out}");
    let snapped = dump(&db);
    assert!(snapped.contains("INSERT INTO sqlite_stat1"), "{snapped}");
    st(d, &["restore", "main", "--db", "new.db", "-q"]);
    assert_eq!(dump(&d.join("new.db")), snapped);
    st(d, &["diff", "main", "--db", "app.db", "--exit-code"]);
    // Analyzed again after more rows: the statistics differ by row, and an
    // in-place restore puts them back with the rows.
    sql(
        &db,
        "INSERT INTO users SELECT id + 100, 'y' || email, name, score FROM users; ANALYZE;",
    );
    let text = st(d, &["diff", "main", "--db", "app.db"]);
    assert!(text.contains("M sqlite_stat1("), "{text}");
    st(d, &["restore", "main", "--db", "app.db", "--delete", "-q"]);
    assert_eq!(dump(&db), snapped);
    // Dropped from the database: made again (by SQLite) and filled.
    sql(&db, "DROP TABLE sqlite_stat1; DROP TABLE sqlite_stat4;");
    st(d, &["restore", "main", "--db", "app.db", "--delete", "-q"]);
    st(d, &["diff", "main", "--db", "app.db", "--exit-code"]);
    // A database never analyzed gets no statistics tables; one with
    // sqlite_stat1 only (analyzed by a SQLite without STAT4) gets no
    // sqlite_stat4, though `ANALYZE sqlite_schema` here makes both.
    for (file, schema) in [
        ("plain", "CREATE TABLE p(k INTEGER PRIMARY KEY)"),
        (
            "one",
            "CREATE TABLE p(k INTEGER PRIMARY KEY, v); CREATE INDEX pv ON p(v);
             INSERT INTO p VALUES (1, 'a'), (2, 'a'); ANALYZE; DROP TABLE sqlite_stat4;",
        ),
    ] {
        let src = d.join(format!("{file}.db"));
        sql(&src, schema);
        let name = format!("{file}.db");
        st(d, &["snapshot", "files", "--db", &name, "-q"]);
        let back = format!("{file}-back.db");
        st(d, &["restore", "main", "--db", &back, "-q"]);
        assert_eq!(dump(&d.join(&back)), dump(&src), "{file}");
    }
}
