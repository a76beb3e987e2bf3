//! `restore --db postgres://…` treats a snapshot's SQL as hostile: a table
//! object whose recorded script, constraints, indexes or sequence values
//! carry other statements, name other tables, take over a sequence the
//! database has, or make a constraint call a volatile function is refused
//! with one line, and the database (a bystander table and its sequence
//! included) is exactly as it was — into an empty database and onto one
//! that already has the table.

use crate::common;

use std::path::Path;

use common::pg::{PgCluster, cluster, ok_pg, sp_pg};
use systemprompt_sync::db::load_table;
use systemprompt_sync::db::table::{Extra, ExtraKind, TableObject};
use systemprompt_sync::object::ObjectSource;
use systemprompt_sync::object::snapshot::Snapshot;
use systemprompt_sync::{LockMode, ObjectType, Store};

const SOURCE: &str = "
    CREATE TABLE t (id serial PRIMARY KEY, b text CHECK (length(b) < 100), c text);
    CREATE INDEX t_b ON t (b);
    INSERT INTO t (b, c) VALUES ('one', 'x'), ('two', 'y');";

const VICTIM: &str = "
    CREATE TABLE victim (id serial PRIMARY KEY, x text);
    INSERT INTO victim (x) VALUES ('keep me'), ('and me');";

/// A store `st` in a temp dir with a snapshot `main` of SOURCE's `t`.
fn setup(pg: &PgCluster) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("files")).unwrap();
    ok_pg(d.path(), &["init", "--store", "st", "-q"]);
    let src = pg.new_db("hsrc");
    pg.psql(&src, SOURCE);
    ok_pg(
        d.path(),
        &[
            "--store",
            "st",
            "snapshot",
            "files",
            "--db",
            &pg.url(&src),
            "-q",
        ],
    );
    d
}

fn plant(d: &Path, edit: impl FnOnce(&mut TableObject)) {
    common::plant_table(&d.join("st"), "t", edit);
}

/// Everything in a database: schema, rows and sequence values.
fn state(pg: &PgCluster, db: &str) -> String {
    let o = pg.cmd("pg_dump").args(["-d", db]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // pg_dump 15.14+ brackets its output with a random \restrict key.
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn restore_fails(d: &Path, url: &str, what: &str, expect: &str) {
    let args = ["--store", "st", "restore", "main", "--db", url];
    let o = sp_pg(d, &args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{what}: {err}");
    common::assert_one_error_line(&args, &err);
    eprintln!("{what}: {}", err.trim_end());
    assert!(
        err.to_lowercase().contains(&expect.to_lowercase()),
        "{what}: {err} should say {expect}"
    );
}

fn honest_sql(d: &Path) -> String {
    let store = Store::open(&d.join("st"), LockMode::Shared).unwrap();
    let main = store.read_ref("main").unwrap().unwrap();
    let snap = Snapshot::decode(&store.get(ObjectType::Snapshot, &main).unwrap()).unwrap();
    load_table(&store, &snap.tables["t"]).unwrap().sql
}

fn extra(kind: ExtraKind, sql: &str) -> Extra {
    Extra {
        kind,
        name: "evil".into(),
        ordinal: 99,
        sql: sql.into(),
    }
}

type Edit = Box<dyn Fn(&mut TableObject)>;

#[test]
fn hostile_sql_in_a_table_object_is_refused_and_changes_nothing() {
    let Some(pg) = cluster() else { return };
    let d = setup(pg);
    let honest = honest_sql(d.path());
    // The honest snapshot restores (and is what every case starts from).
    let ok_db = pg.new_db("hok");
    ok_pg(
        d.path(),
        &[
            "--store",
            "st",
            "restore",
            "main",
            "--db",
            &pg.url(&ok_db),
            "-q",
        ],
    );
    assert_eq!(pg.dump_rows(&ok_db, "t").len(), 2);

    let h = honest.clone();
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "a DROP after the CREATE",
            Box::new(move |t| t.sql = format!("{h}\nDROP TABLE victim;")),
            "refused",
        ),
        (
            "a DROP before the CREATE",
            {
                let h = honest.clone();
                Box::new(move |t| t.sql = format!("DROP TABLE victim;\n{h}"))
            },
            "refused",
        ),
        (
            "a DO block",
            {
                let h = honest.clone();
                Box::new(move |t| {
                    t.sql = format!("DO $sp_sync$ BEGIN DELETE FROM victim; END $sp_sync$;\n{h}")
                })
            },
            "refused",
        ),
        (
            "a CREATE TABLE of another name",
            {
                let h = honest.clone();
                Box::new(move |t| {
                    t.sql = h.replace("CREATE TABLE \"t\"", "CREATE TABLE \"victim2\"")
                })
            },
            "refused",
        ),
        (
            "a CHECK calling setval",
            Box::new(|t| {
                t.extras.push(extra(
                ExtraKind::Constraint,
                "ALTER TABLE \"t\" ADD CONSTRAINT evil CHECK (setval('victim_id_seq', 999) > 0)",
            ))
            }),
            "volatile function",
        ),
        (
            "a constraint on another table",
            Box::new(|t| {
                t.extras.push(extra(
                    ExtraKind::Constraint,
                    "ALTER TABLE victim ADD CONSTRAINT evil CHECK (x IS NOT NULL)",
                ))
            }),
            "refused",
        ),
        (
            "a second ALTER TABLE action",
            Box::new(|t| {
                t.extras.push(extra(
                ExtraKind::Constraint,
                "ALTER TABLE \"t\" ADD CONSTRAINT evil CHECK (true), ALTER COLUMN c SET DEFAULT 'x'",
            ))
            }),
            "refused",
        ),
        (
            "a sequence value of another table",
            Box::new(|t| {
                t.extras.push(extra(
                    ExtraKind::Sequence,
                    "SELECT pg_catalog.setval('victim_id_seq', 999, true)",
                ))
            }),
            "refused",
        ),
        (
            "an index on another table",
            Box::new(|t| {
                t.extras
                    .push(extra(ExtraKind::Index, "CREATE INDEX evil ON victim (x)"))
            }),
            "refused",
        ),
        (
            "an index and a DROP",
            Box::new(|t| {
                t.extras.push(extra(
                    ExtraKind::Index,
                    "CREATE INDEX evil ON t (c); DROP TABLE victim",
                ))
            }),
            "refused",
        ),
    ];
    for (what, edit, expect) in cases {
        plant(d.path(), edit);
        // Into a database without t.
        let db = pg.new_db("hvictim");
        pg.psql(&db, VICTIM);
        let before = state(pg, &db);
        restore_fails(d.path(), &pg.url(&db), what, expect);
        assert_eq!(state(pg, &db), before, "{what}: the database changed");
        // Onto one that has t already (only sequence values run there).
        let db2 = pg.new_db("hvictim");
        pg.psql(&db2, SOURCE);
        pg.psql(&db2, VICTIM);
        let before = state(pg, &db2);
        let o = sp_pg(
            d.path(),
            &["--store", "st", "restore", "main", "--db", &pg.url(&db2)],
        );
        if what.starts_with("a sequence value") {
            assert_eq!(o.status.code(), Some(1), "{what} (merge)");
            assert_eq!(
                state(pg, &db2),
                before,
                "{what} (merge): the database changed"
            );
        } else {
            // The table's rows already match: nothing to do, and nothing
            // outside it changes either way.
            assert_eq!(
                pg.dump_rows(&db2, "victim"),
                pg.dump_rows(&db, "victim"),
                "{what} (merge): the bystander changed"
            );
        }
    }
}

#[test]
fn a_new_table_does_not_take_over_an_existing_sequence() {
    let Some(pg) = cluster() else { return };
    let d = setup(pg);
    // The database has no table t but a sequence named like t's.
    let db = pg.new_db("hseq");
    pg.psql(
        &db,
        "CREATE SEQUENCE t_id_seq START 500;
         CREATE TABLE victim (id integer PRIMARY KEY DEFAULT nextval('t_id_seq'), x text);
         INSERT INTO victim (x) VALUES ('keep me');",
    );
    let before = state(pg, &db);
    restore_fails(
        d.path(),
        &pg.url(&db),
        "sequence takeover",
        "already exists",
    );
    assert_eq!(state(pg, &db), before);
}

/// sp-sync names tables unqualified, and PostgreSQL looks in `pg_catalog`
/// first: a table named like a catalog relation is refused, never read or
/// written through the catalog's name. A user table `public.pg_authid`
/// was read as every role's password hash; a snapshot naming a table
/// `pg_largeobject` wrote its rows into the catalog when a superuser
/// restored it (found by audit round 7).
#[test]
fn a_table_named_like_a_catalog_is_refused() {
    let Some(pg) = cluster() else { return };
    let db = pg.new_db("hcat");
    pg.psql(
        &db,
        "CREATE TABLE public.pg_authid (rolname name PRIMARY KEY, rolpassword text);
         INSERT INTO public.pg_authid VALUES ('my-app-user', 'my own row');
         CREATE TABLE lo (loid oid, pageno int4, data bytea, PRIMARY KEY (loid, pageno));
         INSERT INTO lo VALUES (424242, 0, '\\x00');",
    );
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    std::fs::create_dir(d.join("files")).unwrap();
    ok_pg(d, &["init", "--store", "st", "-q"]);
    let url = pg.url(&db);
    for extra in [&[][..], &["--table", "pg_authid"][..]] {
        let mut args = vec!["--store", "st", "snapshot", "files", "--db", &url];
        args.extend_from_slice(extra);
        let o = sp_pg(d, &args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(1), "{err}");
        common::assert_one_error_line(&args, &err);
        assert!(err.contains("pg_catalog.\"pg_authid\""), "{err}");
        assert!(!err.contains("SCRAM") && !err.contains("md5"), "{err}");
    }
    // A snapshot that names a table pg_largeobject (planted: sp-sync makes
    // none), restored by a superuser: refused, the catalog untouched.
    ok_pg(
        d,
        &[
            "--store", "st", "snapshot", "files", "--db", &url, "--table", "lo", "-q",
        ],
    );
    common::plant_table_as(&d.join("st"), "lo", "pg_largeobject", |t| {
        t.name = "pg_largeobject".into();
        t.sql = t.sql.replace("\"lo\"", "\"pg_largeobject\"");
    });
    let fresh = pg.new_db("hcat_new");
    let before = state(pg, &fresh);
    restore_fails(d, &pg.url(&fresh), "catalog name", "system catalog");
    assert_eq!(state(pg, &fresh), before);
    assert_eq!(
        pg.psql(
            &fresh,
            "SELECT count(*) FROM pg_catalog.pg_largeobject WHERE loid = 424242"
        )
        .trim(),
        "0"
    );
}

/// A schema `search_path` does not take as it is named (`$user` becomes the
/// role's name, so a snapshot of schema `$user` read schema `postgres`,
/// and a restore wrote it: audit round 9), or one of the system's, is
/// refused by snapshot, diff and restore before anything is read or
/// written.
#[test]
fn a_schema_search_path_renames_is_refused() {
    let Some(pg) = cluster() else { return };
    let db = pg.new_db("huser");
    pg.psql(
        &db,
        "CREATE SCHEMA \"$user\"; CREATE SCHEMA postgres;
         CREATE TABLE \"$user\".t (id int PRIMARY KEY, v text); INSERT INTO \"$user\".t VALUES (1, 'mine');
         CREATE TABLE postgres.t (id int PRIMARY KEY, v text); INSERT INTO postgres.t VALUES (1, 'other'), (2, 'secret');",
    );
    let d = setup(pg);
    let d = d.path();
    let url = pg.url(&db);
    let before = state(pg, &db);
    for schema in ["$user", "pg_temp", "pg_catalog", "information_schema"] {
        for cmd in [
            &["snapshot", "files", "--db", &url, "--schema", schema][..],
            &["diff", "main", "--db", &url, "--schema", schema],
            &[
                "restore", "main", "--db", &url, "--schema", schema, "--delete",
            ],
        ] {
            let mut args = vec!["--store", "st"];
            args.extend_from_slice(cmd);
            let o = sp_pg(d, &args);
            let err = String::from_utf8_lossy(&o.stderr).into_owned();
            assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
            common::assert_one_error_line(&args, &err);
            assert!(err.contains("cannot name it safely"), "{args:?}: {err}");
        }
    }
    assert_eq!(state(pg, &db), before);
}
