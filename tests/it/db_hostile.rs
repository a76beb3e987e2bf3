//! `restore --db` treats a snapshot's SQL as hostile: a table object whose
//! `CREATE` statement carries other statements (DML, `ATTACH`, `PRAGMA`,
//! `COMMIT`), names another object or belongs to another table is refused
//! before anything is written, in an existing database and into a new file,
//! and nothing outside the tables the snapshot names changes.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{dump, fails, ok};
use proptest::prelude::*;
use rusqlite::Connection;
use systemprompt_sync::chunker::Chunker;
use systemprompt_sync::db::restore::{DbRestoreOptions, restore_db};
use systemprompt_sync::db::table::{Extra, ExtraKind, TableObject};
use systemprompt_sync::db::{DbSource, load_table, scan};
use systemprompt_sync::object::{MemStore, ObjectSink};
use systemprompt_sync::store::ChunkerConfig;
use systemprompt_sync::{NoProgress, ObjectId, ObjectType};

fn sql(db: &Path, s: &str) {
    Connection::open(db).unwrap().execute_batch(s).unwrap();
}

const SOURCE: &str = "CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT);
     CREATE INDEX t_b ON t(b);
     CREATE TRIGGER t_tr AFTER UPDATE ON t BEGIN SELECT 1; END;
     INSERT INTO t VALUES (1, 'one'), (2, 'two'), (3, 'three');";

const VICTIM: &str = "CREATE TABLE secrets(x TEXT);
     INSERT INTO secrets VALUES ('keep me'), ('and me');";

/// A work dir with a store holding a snapshot of `src.db` (table `t` with
/// an index and a trigger).
fn setup() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path().join("w");
    std::fs::create_dir(&w).unwrap();
    ok(&w, &["init", "-q"]);
    sql(&w.join("src.db"), SOURCE);
    ok(&w, &["snapshot", "--db", "src.db", "-q"]);
    tmp
}

fn plant(w: &Path, edit: impl FnOnce(&mut TableObject)) {
    common::plant_table(&w.join(".sp-sync"), "t", edit);
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Restores `main` onto a database with a bystander table and into a new
/// file; both must fail with one line naming `expect`, and leave every
/// file as it was.
fn assert_refused(tmp: &Path, what: &str, expect: &str) {
    let w = tmp.join("w");
    let v = tmp.join(format!("victim-{what}"));
    std::fs::create_dir(&v).unwrap();
    let victim = v.join("victim.db");
    sql(&victim, VICTIM);
    let before = dump(&victim);
    let files = listing(&v);
    let err = fails(
        &w,
        &["restore", "main", "--db", victim.to_str().unwrap()],
        1,
    );
    assert!(err.starts_with("error: "), "{what}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{what}: one line: {err}");
    assert!(
        err.to_lowercase().contains(&expect.to_lowercase()),
        "{what}: {err} should say {expect}"
    );
    assert_eq!(dump(&victim), before, "{what}: the database changed");
    assert_eq!(listing(&v), files, "{what}: files appeared or vanished");
    // Into a new file.
    let new = v.join("new.db");
    let err = fails(&w, &["restore", "main", "--db", new.to_str().unwrap()], 1);
    assert!(
        err.to_lowercase().contains(&expect.to_lowercase()),
        "{what} (new file): {err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{what}: one line: {err}");
    assert_eq!(
        dump(&victim),
        before,
        "{what} (new file): the victim changed"
    );
    assert_eq!(listing(&v), files, "{what} (new file): files appeared");
}

#[test]
fn the_issues_statement_chain_is_refused() {
    let tmp = setup();
    let other = tmp.path().join("other.db");
    sql(
        &other,
        "CREATE TABLE accounts(balance INTEGER); INSERT INTO accounts VALUES (100);",
    );
    let other_before = dump(&other);
    let attach_new = tmp.path().join("created-by-attach.db");
    let chain = format!(
        "CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT); DELETE FROM secrets; COMMIT; \
         ATTACH DATABASE '{}' AS o; UPDATE o.accounts SET balance = 0; \
         ATTACH DATABASE '{}' AS n; CREATE TABLE n.x(y); BEGIN",
        other.display(),
        attach_new.display()
    );
    plant(&tmp.path().join("w"), |t| t.sql = chain);
    assert_refused(tmp.path(), "chain", "more than one statement");
    assert_eq!(dump(&other), other_before, "another database file changed");
    assert!(
        !attach_new.exists(),
        "a file was created outside the target"
    );
}

#[test]
fn every_other_statement_in_a_table_object_is_refused() {
    let tmp = setup();
    let w = tmp.path().join("w");
    let elsewhere = tmp.path().join("elsewhere.db");
    let attach = format!("ATTACH DATABASE '{}' AS o", elsewhere.display());
    let cases: Vec<(&str, String, &str)> = vec![
        ("attach", attach, "Attach"),
        (
            "second statement",
            "CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT); DROP TABLE secrets".into(),
            "more than one statement",
        ),
        (
            "second statement after a comment",
            "CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT) /* x */; DELETE FROM secrets".into(),
            "more than one statement",
        ),
        (
            "statement after a NUL",
            "CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT);\0DELETE FROM secrets".into(),
            "NUL",
        ),
        (
            "name mismatch",
            "CREATE TABLE secrets2(a INTEGER PRIMARY KEY, b TEXT)".into(),
            "CreateTable",
        ),
        ("drop", "DROP TABLE secrets".into(), "is refused"),
        ("delete", "DELETE FROM secrets".into(), "is refused"),
        ("pragma", "PRAGMA writable_schema = ON".into(), "Pragma"),
        (
            "pragma journal",
            "PRAGMA journal_mode = OFF".into(),
            "Pragma",
        ),
        ("commit", "COMMIT".into(), "Transaction"),
        ("savepoint", "SAVEPOINT x".into(), "Savepoint"),
        (
            "temp table",
            "CREATE TEMP TABLE t(a INTEGER PRIMARY KEY, b TEXT)".into(),
            "temp",
        ),
        (
            "copy of another table",
            "CREATE TABLE t AS SELECT * FROM secrets".into(),
            "refused",
        ),
        (
            "a view for a table",
            "CREATE VIEW t AS SELECT 1 AS a, 2 AS b".into(),
            "CreateView",
        ),
        (
            "another schema",
            "CREATE TABLE temp.t(a INTEGER PRIMARY KEY, b TEXT)".into(),
            "refused",
        ),
        (
            "columns the rows do not have",
            "CREATE TABLE t(z)".into(),
            "columns and key",
        ),
        ("empty", "   ".into(), "empty"),
    ];
    for (what, text, expect) in cases {
        let text2 = text.clone();
        plant(&w, move |t| t.sql = text2);
        assert_refused(tmp.path(), &what.replace(' ', "-"), expect);
        assert!(!elsewhere.exists(), "{what}: ATTACH created a file");
    }
}

#[test]
fn indexes_and_triggers_must_belong_to_their_table() {
    let tmp = setup();
    let w = tmp.path().join("w");
    let cases: Vec<(&str, ExtraKind, &str, &str, &str)> = vec![
        (
            "trigger on another table",
            ExtraKind::Trigger,
            "t_tr",
            "CREATE TRIGGER t_tr AFTER INSERT ON secrets BEGIN DELETE FROM secrets; END",
            "is refused",
        ),
        (
            "index on another table",
            ExtraKind::Index,
            "t_b",
            "CREATE INDEX t_b ON secrets(x)",
            "is refused",
        ),
        (
            "index named otherwise",
            ExtraKind::Index,
            "t_b",
            "CREATE INDEX t_c ON t(b)",
            "CreateIndex",
        ),
        (
            "trigger then a statement",
            ExtraKind::Trigger,
            "t_tr",
            "CREATE TRIGGER t_tr AFTER UPDATE ON t BEGIN SELECT 1; END; DELETE FROM secrets",
            "more than one statement",
        ),
        (
            "index that is a drop",
            ExtraKind::Index,
            "t_b",
            "DROP TABLE secrets",
            "is refused",
        ),
    ];
    for (what, kind, name, text, expect) in cases {
        plant(&w, |t| {
            t.extras.retain(|e| e.kind != kind);
            let ordinal = t.extras.last().map_or(10, |e| e.ordinal + 1);
            t.extras.push(Extra {
                kind,
                name: name.into(),
                ordinal,
                sql: text.into(),
            });
        });
        assert_refused(tmp.path(), &what.replace(' ', "-"), expect);
    }
}

#[test]
fn a_trigger_with_several_statements_in_its_body_is_one_statement() {
    let tmp = setup();
    let w = tmp.path().join("w");
    plant(&w, |t| {
        t.extras.retain(|e| e.kind != ExtraKind::Trigger);
        t.extras.push(Extra {
            kind: ExtraKind::Trigger,
            name: "t_log".into(),
            ordinal: 10,
            sql: "CREATE TRIGGER t_log AFTER INSERT ON t BEGIN UPDATE t SET b = upper(b) WHERE a = new.a; DELETE FROM t WHERE a < 0; END".into(),
        });
    });
    let new = tmp.path().join("new.db");
    ok(
        &w,
        &["restore", "main", "--db", new.to_str().unwrap(), "-q"],
    );
    let d = dump(&new);
    assert!(d.contains("CREATE TRIGGER t_log"), "{d}");
    assert!(d.contains("INSERT INTO t VALUES(3,'three')"), "{d}");
    // And onto an existing database that lacks it.
    let v = tmp.path().join("v.db");
    sql(&v, VICTIM);
    ok(&w, &["restore", "main", "--db", v.to_str().unwrap(), "-q"]);
    let d = dump(&v);
    assert!(d.contains("CREATE TRIGGER t_log"), "{d}");
    assert!(d.contains("INSERT INTO secrets VALUES('keep me')"), "{d}");
}

// ---------------------------------------------------------------------------
// The property: arbitrary SQL text in a table object.

fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT)".to_string()),
        Just("CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT) ".to_string()),
        Just("create table \"t\"(a integer primary key, b text)".to_string()),
        Just("CREATE TABLE u(a INTEGER PRIMARY KEY, b TEXT)".to_string()),
        Just("CREATE TABLE secrets(a INTEGER PRIMARY KEY, b TEXT)".to_string()),
        Just("CREATE TEMP TABLE t(a INTEGER PRIMARY KEY, b TEXT)".to_string()),
        Just("CREATE TABLE t AS SELECT x AS a, x AS b FROM secrets".to_string()),
        Just("CREATE VIEW t AS SELECT * FROM secrets".to_string()),
        Just("CREATE INDEX t_b ON secrets(x)".to_string()),
        Just(
            "CREATE TRIGGER t_tr AFTER INSERT ON secrets BEGIN DELETE FROM secrets; END"
                .to_string()
        ),
        Just("DELETE FROM secrets".to_string()),
        Just("UPDATE secrets SET x = 'pwned'".to_string()),
        Just("INSERT INTO secrets VALUES ('pwned')".to_string()),
        Just("DROP TABLE secrets".to_string()),
        Just("ALTER TABLE secrets RENAME TO gone".to_string()),
        Just("ALTER TABLE secrets ADD COLUMN y".to_string()),
        Just("ATTACH DATABASE 'ATTACHED' AS o".to_string()),
        Just("CREATE TABLE o.x(y)".to_string()),
        Just("DETACH o".to_string()),
        Just("PRAGMA writable_schema = ON".to_string()),
        Just("PRAGMA journal_mode = DELETE".to_string()),
        Just("PRAGMA user_version = 7".to_string()),
        Just("BEGIN".to_string()),
        Just("COMMIT".to_string()),
        Just("ROLLBACK".to_string()),
        Just("SAVEPOINT s".to_string()),
        Just("RELEASE s".to_string()),
        Just("VACUUM".to_string()),
        Just("VACUUM INTO 'ATTACHED'".to_string()),
        Just("ANALYZE".to_string()),
        Just("REINDEX".to_string()),
        Just("SELECT 1".to_string()),
        Just(";".to_string()),
        Just("--".to_string()),
        Just("/*".to_string()),
        Just("*/".to_string()),
        Just("\n".to_string()),
        Just("\0".to_string()),
        Just("'".to_string()),
        Just("(".to_string()),
        Just(")".to_string()),
        "[a-z ;(),'\"]{0,12}",
    ]
}

fn arb_sql() -> impl Strategy<Value = String> {
    proptest::collection::vec(fragment(), 1..5).prop_map(|v| {
        let joiners = ["", " ", "; ", ";\n", " ; "];
        let mut s = String::new();
        for (i, f) in v.iter().enumerate() {
            if i > 0 {
                s.push_str(joiners[(f.len() + i) % joiners.len()]);
            }
            s.push_str(f);
        }
        s
    })
}

/// A memory store with a snapshot of table `t`, and its table object.
fn source_tables(dir: &Path) -> (MemStore, TableObject, Chunker) {
    let src = dir.join("src.db");
    sql(&src, SOURCE);
    let store = MemStore::new(true);
    let chunker = Chunker::new(&ChunkerConfig::default());
    let r = scan(
        &DbSource {
            path: src,
            tables: vec![],
            missing_ok: false,
        },
        &store,
        &chunker,
        &NoProgress,
        None,
    )
    .unwrap();
    let t = load_table(&store, &r.objects["t"]).unwrap();
    (store, t, chunker)
}

fn restore(
    store: &MemStore,
    t: &TableObject,
    target: &Path,
    chunker: &Chunker,
    delete: bool,
) -> Result<(), String> {
    let id: ObjectId = store.put(ObjectType::Table, &t.encode()).unwrap();
    let tables: BTreeMap<String, ObjectId> = [("t".to_string(), id)].into();
    restore_db(
        store,
        &tables,
        target,
        chunker,
        &DbRestoreOptions {
            delete,
            ..Default::default()
        },
        &NoProgress,
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn hostile_sql_changes_nothing_outside_the_snapshots_tables(
        text in arb_sql(),
        extra_text in proptest::option::of(arb_sql()),
        delete: bool,
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let (store, mut t, chunker) = source_tables(tmp.path());
        let clean = t.clone();
        let attached = tmp.path().join("v").join("ATTACHED");
        let fix = |s: String| s.replace("ATTACHED", attached.to_str().unwrap());
        t.sql = fix(text);
        if let Some(x) = extra_text {
            t.extras.push(Extra {
                kind: ExtraKind::Trigger,
                name: "t_x".into(),
                ordinal: t.extras.last().map_or(5, |e| e.ordinal + 1),
                sql: fix(x),
            });
        }
        let v = tmp.path().join("v");
        std::fs::create_dir(&v).unwrap();
        // The restored table alone, for comparison.
        let good = tmp.path().join("good.db");
        restore(&store, &clean, &good, &chunker, false).unwrap();

        // Onto an existing database with a bystander table.
        let victim = v.join("victim.db");
        sql(&victim, VICTIM);
        let before = dump(&victim);
        let listed = files(&v);
        let r = restore(&store, &t, &victim, &chunker, delete);
        let after = dump(&victim);
        prop_assert_eq!(files(&v), listed.clone(), "files appeared: {:?}", r);
        match &r {
            Err(_) => prop_assert_eq!(&after, &before, "a failed restore changed the database"),
            Ok(()) => {
                // All or nothing: the bystander is intact and t is the snapshot's.
                prop_assert!(after.contains("INSERT INTO secrets VALUES('keep me');"));
                prop_assert!(after.contains("INSERT INTO secrets VALUES('and me');"));
                prop_assert!(after.contains("INSERT INTO t VALUES(3,'three');"));
                prop_assert!(after.contains("CREATE TABLE secrets(x TEXT);"));
                prop_assert_eq!(after.matches("INSERT INTO secrets").count(), 2);
            }
        }
        // Into a new file.
        let new = v.join("new.db");
        let r2 = restore(&store, &t, &new, &chunker, delete);
        prop_assert_eq!(dump(&victim), after.clone());
        match &r2 {
            Err(_) => prop_assert_eq!(files(&v), listed.clone(), "a failed restore left a file"),
            Ok(()) => {
                let d = dump(&new);
                prop_assert!(!d.contains("secrets"), "{}", d);
                prop_assert!(d.contains("INSERT INTO t VALUES(3,'three');"));
                let mut with_new = listed.clone();
                with_new.push(new.clone());
                with_new.sort();
                prop_assert_eq!(files(&v), with_new);
            }
        }
        prop_assert!(!attached.exists());
        // Whatever was accepted was exactly one CREATE TABLE of t.
        if r.is_ok() || r2.is_ok() {
            let c = Connection::open(if r2.is_ok() { &new } else { &victim }).unwrap();
            let n: i64 = c
                .query_row("SELECT count(*) FROM sqlite_schema WHERE name = 't' AND type = 'table'", [], |r| r.get(0))
                .unwrap();
            prop_assert_eq!(n, 1);
        }
    }
}
