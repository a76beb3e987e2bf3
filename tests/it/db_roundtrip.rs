//! Database tables round trip (issue 3, acceptance 1): over random schemas
//! and rows — all five storage classes, NULLs, i64 min/max, -0.0, 1e308,
//! empty and 1 MiB blobs, unicode text — `sqlite3 .dump` is identical after
//! snapshot and restore into a new file, and after restore onto a database
//! that was changed in between. Also: the key encoding orders exactly as
//! SQLite's ORDER BY, checked against SQLite itself.

use crate::common;

use std::path::Path;

use common::dump;
use proptest::prelude::*;
use rusqlite::Connection;
use systemprompt_sync::db::DbSource;
use systemprompt_sync::db::restore::{DbRestoreOptions, restore_db};
use systemprompt_sync::db::value::{Value, encode_key};
use systemprompt_sync::names::load_snapshot;
use systemprompt_sync::{NoProgress, SnapshotOptions, Store};

#[derive(Debug, Clone)]
enum KeyKind {
    /// No declared key: rows keyed by rowid.
    Rowid,
    /// `id INTEGER PRIMARY KEY` (optionally AUTOINCREMENT).
    IntegerPk { autoinc: bool },
    /// A declared key that is not the rowid (rowid table), 1 or 2 columns.
    RowidTablePk(usize),
    /// `WITHOUT ROWID`, 1 or 2 key columns.
    WithoutRowid(usize),
}

#[derive(Debug, Clone)]
struct TableSpec {
    key: KeyKind,
    types: Vec<&'static str>,
    index: bool,
    trigger: bool,
    view: bool,
    rows: Vec<Vec<Value>>,
}

const TYPES: &[&str] = &[
    "",
    "INTEGER",
    "TEXT",
    "REAL",
    "BLOB",
    "NUMERIC",
    "VARCHAR(20)",
    "INT",
];

fn text() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[a-z ]{0,12}".prop_map(String::into_bytes),
        Just("ünïcødé 日本語 🦀".as_bytes().to_vec()),
        Just(b"quote ' and \" and \\".to_vec()),
        Just(b"new\nline\r\ttab".to_vec()),
        Just(Vec::new()),
        Just(b"12".to_vec()),
        Just(b"1.5e3".to_vec()),
        Just(vec![b'a', 0, b'b']),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        2 => Just(Value::Null),
        2 => any::<i64>().prop_map(Value::Integer),
        2 => prop_oneof![Just(i64::MIN), Just(i64::MAX), Just(0), Just(-1), Just(7)].prop_map(Value::Integer),
        2 => any::<f64>().prop_filter("SQLite stores NaN as NULL", |f| !f.is_nan()).prop_map(Value::Real),
        2 => prop_oneof![Just(-0.0), Just(0.0), Just(1e308), Just(-1e308), Just(0.1), Just(2.0), Just(5e-324)]
            .prop_map(Value::Real),
        3 => text().prop_map(Value::Text),
        2 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Blob),
        1 => Just(Value::Blob(Vec::new())),
        1 => (4097usize..20_000, any::<u8>()).prop_map(|(n, b)| Value::Blob(common::bytes(n, u64::from(b)))),
        1 => (4097usize..9000).prop_map(|n| Value::Text("é".repeat(n / 2).into_bytes())),
    ]
}

fn table() -> impl Strategy<Value = TableSpec> {
    let key = prop_oneof![
        Just(KeyKind::Rowid),
        any::<bool>().prop_map(|autoinc| KeyKind::IntegerPk { autoinc }),
        (1usize..3).prop_map(KeyKind::RowidTablePk),
        (1usize..3).prop_map(KeyKind::WithoutRowid),
    ];
    (
        key,
        proptest::collection::vec(proptest::sample::select(TYPES), 2..6),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        proptest::collection::vec(proptest::collection::vec(value(), 6), 0..30),
    )
        .prop_map(|(key, types, index, trigger, view, rows)| TableSpec {
            key,
            types,
            index,
            trigger,
            view,
            rows,
        })
}

/// Creates the tables (t0, t1, …) and inserts their rows; returns how many
/// columns each has.
fn create(c: &Connection, tables: &[TableSpec]) {
    for (ti, t) in tables.iter().enumerate() {
        let name = format!("t{ti}");
        let mut cols: Vec<String> = Vec::new();
        let mut tail = String::new();
        match &t.key {
            KeyKind::Rowid => {}
            KeyKind::IntegerPk { autoinc } => cols.push(format!(
                "id INTEGER PRIMARY KEY{}",
                if *autoinc { " AUTOINCREMENT" } else { "" }
            )),
            KeyKind::RowidTablePk(n) | KeyKind::WithoutRowid(n) => {
                let k: Vec<String> = (0..*n).map(|i| format!("c{i}")).collect();
                tail = format!(", PRIMARY KEY({})", k.join(", "));
            }
        }
        for (i, ty) in t.types.iter().enumerate() {
            cols.push(format!("c{i} {ty}").trim().to_string());
        }
        let without = if matches!(t.key, KeyKind::WithoutRowid(_)) {
            " WITHOUT ROWID"
        } else {
            ""
        };
        c.execute_batch(&format!(
            "CREATE TABLE \"{name}\"({}{tail}){without};",
            cols.join(", ")
        ))
        .unwrap();
        if t.index {
            c.execute_batch(&format!("CREATE INDEX {name}_i ON {name}(c1, c0);"))
                .unwrap();
        }
        if t.trigger {
            c.execute_batch(&format!(
                "CREATE TRIGGER {name}_tr AFTER UPDATE ON {name} BEGIN SELECT 1; END;"
            ))
            .unwrap();
        }
        if t.view {
            c.execute_batch(&format!("CREATE VIEW {name}_v AS SELECT c0 FROM {name};"))
                .unwrap();
        }
    }
    for (ti, t) in tables.iter().enumerate() {
        for r in &t.rows {
            insert(c, ti, t, r);
        }
    }
}

fn insert(c: &Connection, ti: usize, t: &TableSpec, r: &[Value]) {
    let n = t.types.len();
    let mut names: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    let mut vals: Vec<Value> = r[..n].to_vec();
    if let KeyKind::IntegerPk { .. } = t.key {
        // The rowid alias takes only integers (NULL: the next rowid).
        if let Value::Integer(_) | Value::Null = r[5] {
            names.push("id".into());
            vals.push(r[5].clone());
        }
    }
    let marks: Vec<String> = (1..=names.len()).map(|i| format!("?{i}")).collect();
    let r = c.execute(
        &format!(
            "INSERT OR IGNORE INTO t{ti}({}) VALUES ({})",
            names.join(", "),
            marks.join(", ")
        ),
        rusqlite::params_from_iter(vals.iter().map(Value::sql)),
    );
    // Rows SQLite refuses are left out: an AUTOINCREMENT table whose rowid
    // reached i64::MAX takes no more, and `PRIMARY KEY(c0)` on an INTEGER
    // column makes c0 the rowid, which takes only integers.
    if let Err(e) = r
        && !matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DiskFull | rusqlite::ErrorCode::TypeMismatch)
        )
    {
        panic!("insert: {e}");
    }
}

fn snapshot(store: &Store, db: &Path) -> systemprompt_sync::ObjectId {
    let empty = db.parent().unwrap().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let opts = SnapshotOptions {
        sources: vec![empty],
        dbs: vec![DbSource {
            path: db.to_path_buf(),
            tables: vec![],
            missing_ok: false,
        }],
        ..Default::default()
    };
    systemprompt_sync::snapshot(store, &opts, &NoProgress)
        .unwrap()
        .id
}

fn restore(store: &Store, snap: &systemprompt_sync::ObjectId, db: &Path, delete: bool) {
    let s = load_snapshot(store, snap).unwrap();
    restore_db(
        store,
        &s.tables,
        db,
        &systemprompt_sync::chunker::Chunker::new(&store.config().chunker),
        &DbRestoreOptions {
            delete,
            ..Default::default()
        },
        &NoProgress,
    )
    .unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn dump_is_identical_after_restore(
        tables in proptest::collection::vec(table(), 1..4),
        edits in proptest::collection::vec((0usize..4, 0usize..40, 0u8..3, proptest::collection::vec(value(), 6)), 0..25),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let store = common::new_store(tmp.path());
        let db = tmp.path().join("app.db");
        let c = Connection::open(&db).unwrap();
        create(&c, &tables);
        let before = dump(&db);
        let snap = snapshot(&store, &db);

        // Into a new file.
        let fresh = tmp.path().join("fresh.db");
        restore(&store, &snap, &fresh, false);
        prop_assert_eq!(dump(&fresh), before.clone());

        // Onto the database after random updates, deletes and inserts.
        for (ti, pick, op, vals) in &edits {
            let ti = ti % tables.len();
            let t = &tables[ti];
            match op {
                0 => insert(&c, ti, t, vals),
                1 => { c.execute(&format!("DELETE FROM t{ti} WHERE rowid IN (SELECT rowid FROM t{ti} LIMIT 1 OFFSET {pick})"), []).ok(); }
                _ => {
                    let col = pick % t.types.len();
                    c.execute(
                        &format!("UPDATE OR IGNORE t{ti} SET c{col} = ?1 WHERE rowid IN (SELECT rowid FROM t{ti} LIMIT 1 OFFSET {pick})"),
                        [vals[0].sql()],
                    ).ok();
                }
            }
        }
        drop(c);
        restore(&store, &snap, &db, true);
        prop_assert_eq!(dump(&db), before);
    }
}

/// Values SQLite would hold, for the order test (no NaN; integers that are
/// exactly representable next to reals of the same value, and not).
fn order_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::Integer),
        (-20i64..20).prop_map(Value::Integer),
        prop_oneof![
            Just(i64::MIN),
            Just(i64::MAX),
            Just(1 << 53),
            Just((1 << 53) + 1)
        ]
        .prop_map(Value::Integer),
        any::<f64>()
            .prop_filter("no NaN", |f| !f.is_nan())
            .prop_map(Value::Real),
        (-20i32..20).prop_map(|i| Value::Real(f64::from(i) / 4.0)),
        prop_oneof![
            Just(9.007199254740992e15),
            Just(9.223_372_036_854_776e18),
            Just(-9.223_372_036_854_776e18),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(-0.0),
            Just(5e-324)
        ]
        .prop_map(Value::Real),
        proptest::collection::vec(
            prop_oneof![Just(0u8), Just(1), Just(b'a'), Just(0xff)],
            0..4
        )
        .prop_map(Value::Text),
        proptest::collection::vec(
            prop_oneof![Just(0u8), Just(1), Just(b'a'), Just(0xff)],
            0..4
        )
        .prop_map(Value::Blob),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// encode(a) < encode(b) exactly when SQLite orders a before b, over
    /// composite keys, checked against SQLite's own ORDER BY.
    #[test]
    fn key_order_is_sqlite_order(rows in proptest::collection::vec((order_value(), order_value()), 1..60)) {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch("CREATE TABLE t(a, b)").unwrap();
        for (a, b) in &rows {
            c.execute("INSERT INTO t VALUES (?1, ?2)", [a.sql(), b.sql()]).unwrap();
        }
        let mut st = c.prepare("SELECT a, b FROM t ORDER BY a, b").unwrap();
        let got: Vec<(Value, Value)> = st
            .query_map([], |r| Ok((Value::from_ref(r.get_ref(0)?), Value::from_ref(r.get_ref(1)?))))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        for w in got.windows(2) {
            let ka = encode_key(&[w[0].0.clone(), w[0].1.clone()]).unwrap();
            let kb = encode_key(&[w[1].0.clone(), w[1].1.clone()]).unwrap();
            // SQLite says w[0] <= w[1]; equal only when it also says they are equal.
            let equal_in_sqlite: bool = c
                .query_row("SELECT ?1 IS ?3 AND ?2 IS ?4", [w[0].0.sql(), w[0].1.sql(), w[1].0.sql(), w[1].1.sql()], |r| r.get::<_, Option<bool>>(0))
                .unwrap()
                .unwrap_or(false);
            if equal_in_sqlite {
                // Equal values (1 and 1.0, or the same value twice) can never
                // both be keys of one table; their encodings may tie-break.
                continue;
            }
            prop_assert!(ka < kb, "SQLite orders {:?} before {:?}, the keys do not", w[0], w[1]);
        }
    }
}

#[test]
fn one_mebibyte_blob_and_special_values_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let store = common::new_store(tmp.path());
    let db = tmp.path().join("app.db");
    let c = Connection::open(&db).unwrap();
    c.execute_batch("CREATE TABLE b(k TEXT PRIMARY KEY, v) WITHOUT ROWID; CREATE TABLE n(x, y);")
        .unwrap();
    let big = common::bytes(1 << 20, 9);
    let vals = [
        Value::Blob(big.clone()),
        Value::Blob(Vec::new()),
        Value::Integer(i64::MIN),
        Value::Integer(i64::MAX),
        Value::Real(-0.0),
        Value::Real(1e308),
        Value::Text("ünïcødé 🦀".as_bytes().to_vec()),
        Value::Null,
    ];
    for (i, v) in vals.iter().enumerate() {
        c.execute("INSERT INTO b(k) VALUES (?1)", [format!("k{i}").as_str()])
            .unwrap();
        c.execute(
            "UPDATE b SET v = ?1 WHERE k = ?2",
            rusqlite::params![v.sql(), format!("k{i}")],
        )
        .unwrap();
    }
    // Several rows without a key that are identical, NULLs everywhere.
    for _ in 0..3 {
        c.execute("INSERT INTO n VALUES (NULL, NULL)", []).unwrap();
    }
    drop(c);
    let before = dump(&db);
    let snap = snapshot(&store, &db);
    let out = tmp.path().join("out.db");
    restore(&store, &snap, &out, false);
    assert_eq!(dump(&out), before);
    // The 1 MiB blob is kept in chunks, not in the row map node.
    let stored: u64 = std::fs::read_dir(tmp.path().join("store/packs"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(stored > 1 << 20, "the blob is stored ({stored} bytes)");
    let report =
        systemprompt_sync::store::fsck::fsck(&store, &Default::default(), &NoProgress).unwrap();
    assert!(report.ok, "{:?}", report.errors);
    // A second snapshot of the unchanged database adds only a snapshot object.
    let packs_before = std::fs::read_dir(tmp.path().join("store/packs"))
        .unwrap()
        .count();
    snapshot(&store, &db);
    let packs_after = std::fs::read_dir(tmp.path().join("store/packs"))
        .unwrap()
        .count();
    assert_eq!(
        packs_after,
        packs_before + 2,
        "one new pack (and index) for the snapshot object"
    );
}
