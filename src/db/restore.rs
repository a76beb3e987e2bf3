//! Writing tables back into SQLite.
//!
//! Into a new file: the file is built beside the target (tables, then rows,
//! then `sqlite_sequence`, then indexes, triggers and views, in the order the
//! original database created them), made durable, and renamed into place.
//!
//! Onto an existing database: in one write transaction, with triggers off
//! (restoring rows must not fire them) and foreign keys checked before the
//! commit. The schema is compared first and a mismatch is refused before
//! anything is written. Each table's rows are merged in key order with the
//! snapshot's and only the differences are written: deletes (with
//! `delete`), then updates of the changed columns, then inserts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, params_from_iter};

use super::diff::same_structure;
use super::guard::{Expected, Guard, Kind, verify_schema};
use super::table::{ExtraKind, TableData, TableObject};
use super::value::{Cell, Sql, Value, decode_key, decode_row};
use super::{
    RowReader, busy_timeout, db_error, is_internal, load_table, quote, read_schema, rowid_name,
    table_data,
};
use crate::chunker::Chunker;
use crate::commands::fmt::printable;
use crate::error::{IoContext, Result, SyncError};
use crate::id::{ObjectId, ObjectType};
use crate::object::{MemStore, ObjectSource, corrupt};
use crate::pmap::MapIter;
use crate::progress::Progress;

#[derive(Debug, Clone, Default)]
pub struct DbRestoreOptions {
    /// Also delete rows the snapshot lacks (in the tables it has).
    pub delete: bool,
    /// Only these tables (and views); empty: all.
    pub tables: Vec<String>,
    /// A SQLite file's settings, for a restore into a new file.
    pub settings: Option<super::SqliteSettings>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DbRestoreReport {
    /// Whether a new database file was created.
    pub created: bool,
    pub tables: usize,
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
}

/// Restores `tables` (name → table object) from `src` into the database at
/// `target`.
pub fn restore_db(
    src: &dyn ObjectSource,
    tables: &BTreeMap<String, ObjectId>,
    target: &Path,
    chunker: &Chunker,
    opts: &DbRestoreOptions,
    progress: &dyn Progress,
) -> Result<DbRestoreReport> {
    restore_db_as(src, tables, target, chunker, opts, progress, false)
}

/// Runs the restore [`restore_db`] would, up to its commit, and rolls it
/// back: the database is left as it was, and an error says the restore
/// would fail (a schema mismatch, a key or constraint it would break). A
/// restore of files and tables together runs this first, so that a
/// database that would refuse its rows fails the command before any file
/// is written. Into a new SQLite file nothing is run (that restore builds
/// a new file and renames it into place); PostgreSQL sequences are not
/// set (`setval` is not undone by a rollback).
pub fn rehearse_db(
    src: &dyn ObjectSource,
    tables: &BTreeMap<String, ObjectId>,
    target: &Path,
    chunker: &Chunker,
    opts: &DbRestoreOptions,
    progress: &dyn Progress,
) -> Result<()> {
    restore_db_as(src, tables, target, chunker, opts, progress, true).map(|_| ())
}

fn restore_db_as(
    src: &dyn ObjectSource,
    tables: &BTreeMap<String, ObjectId>,
    target: &Path,
    chunker: &Chunker,
    opts: &DbRestoreOptions,
    progress: &dyn Progress,
    rehearse: bool,
) -> Result<DbRestoreReport> {
    if super::pg::is_url_path(target) {
        return super::pg::restore(
            src,
            tables,
            &target.to_string_lossy(),
            chunker,
            opts,
            progress,
            rehearse,
        );
    }
    for t in &opts.tables {
        if !tables.contains_key(t) {
            return Err(SyncError::NotFound(format!(
                "the snapshot has no table {t}"
            )));
        }
    }
    let mut objs: Vec<TableObject> = Vec::new();
    for (name, id) in tables {
        if opts.tables.is_empty() || opts.tables.contains(name) {
            let t = load_table(src, id)?;
            if t.engine != super::table::Engine::Sqlite {
                return Err(SyncError::Invalid(format!(
                    "table {name} was read from PostgreSQL; restore it with --db postgres://…"
                )));
            }
            if &t.name != name {
                return Err(corrupt(
                    ObjectType::Table,
                    id,
                    format!("table object named {:?} stored as {name:?}", t.name),
                ));
            }
            objs.push(t);
        }
    }
    objs.sort_by_key(|t| t.ordinal);
    // The snapshot's SQL is checked on a scratch database before the target
    // is opened (see `guard`).
    verify_schema(&objs.iter().collect::<Vec<_>>())?;
    match std::fs::symlink_metadata(target) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && rehearse => {
            Ok(DbRestoreReport::default())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            restore_new(src, &objs, target, chunker, opts.settings, progress)
        }
        Err(e) => Err(SyncError::io("reading", target, e)),
        Ok(m) if !m.is_file() => Err(SyncError::Invalid(format!(
            "{}: not a regular file",
            target.display()
        ))),
        Ok(_) => {
            // What a restore into this file when it was new left, killed
            // after it linked its database into place and before it
            // removed the temporary name (the hard-link way, where the
            // file system has no RENAME_NOREPLACE): swept as a new file's
            // restore sweeps it (found by crash_all in CI).
            if !rehearse {
                let (dir, name) = dir_and_name(target);
                sweep_stale_temps(&dir, &name, crate::store::stale_after());
            }
            restore_existing(src, &objs, target, chunker, opts, progress, rehearse)
        }
    }
}

/// The folder of a database file (`.` for a bare name) and its file name.
fn dir_and_name(target: &Path) -> (PathBuf, String) {
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "db".into());
    (dir, name)
}

fn restore_new(
    src: &dyn ObjectSource,
    objs: &[TableObject],
    target: &Path,
    chunker: &Chunker,
    settings: Option<super::SqliteSettings>,
    progress: &dyn Progress,
) -> Result<DbRestoreReport> {
    let (dir, name) = dir_and_name(target);
    // A `-wal` or `-journal` beside a database that is gone (deleted while
    // open, a crash) belongs to that database: SQLite would replay it into
    // the new file at its next open (a WAL's rows instead of the
    // snapshot's, a hot journal rolled back over it).
    for suffix in ["-wal", "-journal"] {
        let mut side = target.as_os_str().to_owned();
        side.push(suffix);
        let side = PathBuf::from(side);
        if std::fs::symlink_metadata(&side).is_ok() {
            return Err(SyncError::Invalid(format!(
                "{}: left by a database that is no longer there; SQLite would apply it to \
                 the new {} when it is next opened. Move it aside (or remove it); nothing was \
                 written",
                side.display(),
                target.display()
            )));
        }
    }
    // The database's folder goes back too (a snapshot restored into a
    // tree without it), as a file's does.
    if !dir.exists() {
        std::fs::create_dir_all(&dir).map_err(|e| SyncError::io("creating", &dir, e))?;
    }
    sweep_stale_temps(&dir, &name, crate::store::stale_after());
    let tmp = dir.join(format!(
        ".{name}.sp-sync-{}-{}.tmp",
        std::process::id(),
        crate::store::unique()
    ));
    struct Cleanup(PathBuf, bool);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            if !self.1 {
                let _ = std::fs::remove_file(&self.0);
                let _ = std::fs::remove_file(self.0.with_extension("tmp-journal"));
            }
        }
    }
    let mut cleanup = Cleanup(tmp.clone(), false);
    let report = {
        let mut c = Connection::open_with_flags(
            &tmp,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| db_error(&tmp, e))?;
        // A file nobody else sees yet: no journal; durability comes from
        // the fsync before the rename.
        // (The encoding, page size and auto-vacuum only take before the
        // first table.)
        if let Some(st) = &settings {
            c.execute_batch(&format!(
                "PRAGMA encoding = '{}'; PRAGMA page_size = {}; PRAGMA auto_vacuum = {}; \
                 PRAGMA user_version = {}; PRAGMA application_id = {};",
                st.encoding_name(),
                st.page_size,
                st.auto_vacuum,
                st.user_version,
                st.application_id
            ))
            .map_err(|e| db_error(&tmp, e))?;
        }
        // The rows are the snapshot's database's, as it held them: a row
        // that breaks a CHECK added since, or written with the checks off,
        // comes back too (a new file is a copy; a restore onto an existing
        // database keeps to its checks).
        c.execute_batch(
            "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA foreign_keys = OFF; \
             PRAGMA ignore_check_constraints = ON; \
             PRAGMA locking_mode = EXCLUSIVE; PRAGMA cache_size = -32768; BEGIN;",
        )
        .map_err(|e| db_error(&tmp, e))?;
        let guard = Guard::install(&mut c, &tmp)?;
        let mut rep = apply(
            &c,
            &guard,
            &tmp,
            src,
            objs,
            chunker,
            &DbRestoreOptions::default(),
            progress,
            false,
        )?;
        not_interrupted(progress)?;
        c.execute_batch("COMMIT").map_err(|e| db_error(&tmp, e))?;
        rep.created = true;
        drop(c);
        if settings.is_some_and(|st| st.wal) {
            // The file's header says WAL; switching writes and removes
            // its (empty) -wal and -shm again as the connection closes.
            let c = Connection::open(&tmp).map_err(|e| db_error(&tmp, e))?;
            c.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
                .map_err(|e| db_error(&tmp, e))?;
            c.close().map_err(|(_, e)| db_error(&tmp, e))?;
        }
        rep
    };
    let f = std::fs::File::open(&tmp).ctx("opening", &tmp)?;
    f.sync_all().ctx("syncing", &tmp)?;
    drop(f);
    rename_new(&tmp, target)?;
    cleanup.1 = true;
    crate::store::sync_dir(&dir)?;
    Ok(report)
}

/// Renames the database built at `tmp` to `target`, which must still not
/// exist: a file made there while the restore built it (an application
/// creating its database, a user's file) is not replaced (audit 23).
/// `renameat2(RENAME_NOREPLACE)`; where the file system lacks it, a hard
/// link (which fails too when the name is taken) and the removal of `tmp`.
fn rename_new(tmp: &Path, target: &Path) -> Result<()> {
    let taken = || {
        SyncError::Invalid(format!(
            "{}: a file appeared there while the restore built the database; it is left as it is and nothing was restored",
            target.display()
        ))
    };
    match rustix::fs::renameat_with(
        rustix::fs::CWD,
        tmp,
        rustix::fs::CWD,
        target,
        rustix::fs::RenameFlags::NOREPLACE,
    ) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::EXIST) => Err(taken()),
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS | rustix::io::Errno::NOTSUP) => {
            match std::fs::hard_link(tmp, target) {
                Ok(()) => std::fs::remove_file(tmp).ctx("removing", tmp),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(taken()),
                Err(e) => Err(SyncError::io("renaming into", target, e)),
            }
        }
        Err(e) => Err(SyncError::io("renaming into", target, e.into())),
    }
}

/// Removes what an earlier restore into a new file `name`, killed before
/// it could clean up (SIGKILL, power loss), left in `dir`: its temporary
/// database `.NAME.sp-sync-PID-N.tmp` (and journal), only when process PID
/// no longer exists. Nothing else is touched.
fn sweep_stale_temps(dir: &Path, name: &str, stale: std::time::Duration) {
    let prefix = format!(".{name}.sp-sync-");
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    crate::store::sweep_dead(dir, "restore", false, stale, |file| {
        let rest = file.strip_prefix(&prefix)?;
        let body = rest
            .strip_suffix(".tmp")
            .or_else(|| rest.strip_suffix(".tmp-journal"))?;
        let (pid, n) = body.split_once('-')?;
        (digits(pid) && digits(n)).then_some(pid)
    });
}

fn restore_existing(
    src: &dyn ObjectSource,
    objs: &[TableObject],
    target: &Path,
    chunker: &Chunker,
    opts: &DbRestoreOptions,
    progress: &dyn Progress,
    rehearse: bool,
) -> Result<DbRestoreReport> {
    let _quiet = super::Rehearsal::begin(rehearse);
    let mut c = Connection::open_with_flags(
        target,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| db_error(target, e))?;
    c.busy_timeout(busy_timeout())
        .map_err(|e| db_error(target, e))?;
    // Restoring rows must not fire the database's triggers, and foreign keys
    // are checked once, before the commit (no cascades).
    c.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER,
        false,
    )
    .map_err(|e| db_error(target, e))?;
    c.execute_batch("PRAGMA foreign_keys = OFF")
        .map_err(|e| db_error(target, e))?;
    let guard = Guard::install(&mut c, target)?;
    c.execute_batch("BEGIN IMMEDIATE")
        .map_err(|e| db_error(target, e))?;
    let applied = apply(&c, &guard, target, src, objs, chunker, opts, progress, true)
        .and_then(|r| not_interrupted(progress).map(|()| r));
    match applied {
        Ok(r) if rehearse => {
            c.execute_batch("ROLLBACK")
                .map_err(|e| db_error(target, e))?;
            Ok(r)
        }
        Ok(r) => {
            c.execute_batch("COMMIT").map_err(|e| db_error(target, e))?;
            Ok(r)
        }
        Err(e) => {
            let _ = c.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// The last chance to stop: an interrupt before the commit rolls back.
fn not_interrupted(progress: &dyn Progress) -> Result<()> {
    if progress.interrupted() {
        return Err(SyncError::Interrupted);
    }
    Ok(())
}

/// What is done to one table.
enum Plan<'a> {
    Create(&'a TableObject, &'a TableData),
    Merge(&'a TableObject, &'a TableData, TableData),
    View(&'a TableObject, bool),
}

#[allow(clippy::too_many_arguments)]
fn apply(
    c: &Connection,
    guard: &Guard,
    path: &Path,
    src: &dyn ObjectSource,
    objs: &[TableObject],
    chunker: &Chunker,
    opts: &DbRestoreOptions,
    progress: &dyn Progress,
    existing: bool,
) -> Result<DbRestoreReport> {
    let schema = read_schema(c, path)?;
    let exists = |kind: &str, name: &str| {
        schema
            .iter()
            .any(|s| s.kind == kind && s.name.eq_ignore_ascii_case(name))
    };
    // 1. Plan and check, before writing anything.
    let mut plans = Vec::new();
    let mut mismatches = Vec::new();
    for o in objs {
        if is_internal(&o.name) && !super::is_stat(o) {
            return Err(SyncError::Invalid(format!(
                "refusing to restore SQLite's internal table {}",
                o.name
            )));
        }
        match &o.table {
            None => plans.push(Plan::View(o, exists("view", &o.name))),
            Some(t) => {
                if exists("table", &o.name) {
                    let now = table_data(c, path, &o.name)?;
                    let live_sql = schema
                        .iter()
                        .find(|s| s.kind == "table" && s.name.eq_ignore_ascii_case(&o.name))
                        .map_or("", |s| s.sql.as_str());
                    if !same_structure(t, &now) {
                        mismatches.push(describe_mismatch(&o.name, t, &now));
                    } else if autoincrement(&o.sql) != autoincrement(live_sql) {
                        // (Its counter has nowhere to go, or would be made
                        // up: the next ids the application gets differ.)
                        mismatches.push(format!(
                            "table {} is AUTOINCREMENT in the {} only",
                            o.name,
                            if autoincrement(&o.sql) {
                                "snapshot"
                            } else {
                                "database"
                            }
                        ));
                    } else if !super::is_stat(o)
                        && let live_strict = strict_now(c, path, &o.name)?
                        && strict_in_snapshot(&o.sql)? != live_strict
                    {
                        // (A column of type ANY keeps a value's type in a
                        // STRICT table only: elsewhere it has NUMERIC
                        // affinity, and '7' becomes 7.)
                        mismatches.push(format!(
                            "table {} is STRICT in the {} only",
                            o.name,
                            if live_strict { "database" } else { "snapshot" }
                        ));
                    } else {
                        plans.push(Plan::Merge(o, t, now));
                    }
                } else if exists("view", &o.name) || exists("index", &o.name) {
                    mismatches.push(format!(
                        "{} is a table in the snapshot and something else in the database",
                        o.name
                    ));
                } else {
                    plans.push(Plan::Create(o, t));
                }
            }
        }
    }
    // A table the restore makes comes with its indexes and triggers: a
    // name the database already gives to another table's would leave one
    // out (a UNIQUE index among them), so it is a mismatch (audit round 14).
    for p in &plans {
        if let Plan::Create(o, _) = p {
            for e in &o.extras {
                let kind = match e.kind {
                    ExtraKind::Index | ExtraKind::Constraint | ExtraKind::Sequence => "index",
                    ExtraKind::Trigger => "trigger",
                };
                if exists(kind, &e.name) {
                    mismatches.push(format!(
                        "the database has another {kind} named {}, which table {} (new) needs",
                        e.name, o.name
                    ));
                }
            }
        }
    }
    if let Some(first) = mismatches.first() {
        return Err(SyncError::Database(format!(
            "{}: schema does not match the snapshot: {first}{}; nothing was written",
            path.display(),
            if mismatches.len() > 1 {
                format!(" (and {} more)", mismatches.len() - 1)
            } else {
                String::new()
            }
        )));
    }
    let mut rep = DbRestoreReport {
        tables: objs.iter().filter(|o| !o.is_view()).count(),
        ..Default::default()
    };
    // Foreign keys are off by default in SQLite, so a database (and a
    // snapshot of it) may already hold violations; only those the restore
    // adds are refused.
    let fk_before = if existing {
        foreign_key_violations(c, path)?.0
    } else {
        FkViolations::new()
    };
    // 2. New tables.
    for p in &plans {
        if let Plan::Create(o, t) = p {
            if super::is_stat(o) {
                // SQLite makes its statistics tables itself (as `.dump`
                // writes it); nothing is analyzed (sqlite_schema has no
                // index). It may make more than this one. In the table's
                // turn: the schema's order is the order `.dump` prints.
                if !table_exists(c, path, &o.name)? {
                    c.execute_batch("ANALYZE sqlite_schema")
                        .map_err(|e| db_error(path, e))?;
                }
                if !table_exists(c, path, &o.name)?
                    || !same_structure(t, &table_data(c, path, &o.name)?)
                {
                    return Err(SyncError::Database(format!(
                        "{}: this SQLite does not make {} as the snapshot has it; nothing was written",
                        path.display(),
                        o.name
                    )));
                }
                continue;
            }
            guard.run(
                c,
                path,
                &Expected {
                    kind: Kind::Table,
                    name: &o.name,
                    table: &o.name,
                    sql: &o.sql,
                },
            )?;
        }
    }
    // The statistics tables `ANALYZE sqlite_schema` made that the
    // snapshot lacks and the database did not have (sqlite_stat4 beside
    // sqlite_stat1) go again, empty as they are.
    if plans
        .iter()
        .any(|p| matches!(p, Plan::Create(o, _) if super::is_stat(o)))
    {
        for (name, ..) in super::STAT_TABLES {
            if !exists("table", name)
                && !objs.iter().any(|o| o.name == name)
                && table_exists(c, path, name)?
            {
                c.execute_batch(&format!("DROP TABLE {name}"))
                    .map_err(|e| db_error(path, e))?;
            }
        }
    }
    // 3. Rows.
    for p in &plans {
        match p {
            Plan::Create(o, t) => {
                progress.stage(&format!("table {}", o.name));
                rep.inserted += insert_all(c, path, src, &o.name, t, progress)?;
            }
            Plan::Merge(o, t, now) => {
                progress.stage(&format!("table {}", o.name));
                merge(
                    c, path, src, &o.name, t, now, chunker, opts, progress, &mut rep,
                )?;
            }
            Plan::View(..) => {}
        }
    }
    // 4. AUTOINCREMENT counters.
    for p in &plans {
        let (o, t) = match p {
            Plan::Create(o, t) | Plan::Merge(o, t, _) => (o, t),
            Plan::View(..) => continue,
        };
        match t.sequence {
            Some(seq) => set_sequence(c, path, &o.name, seq, existing && !opts.delete)?,
            // The table had no counter when snapshotted; with --delete the
            // database's (made by rows since) goes too.
            None if existing && opts.delete => {
                let has_seq: i64 = c
                    .query_row(
                        "SELECT count(*) FROM sqlite_schema WHERE name = 'sqlite_sequence'",
                        [],
                        |r| r.get(0),
                    )
                    .map_err(|e| db_error(path, e))?;
                if has_seq > 0 {
                    c.execute("DELETE FROM sqlite_sequence WHERE name = ?1", [&o.name])
                        .map_err(|e| db_error(path, e))?;
                }
            }
            None => {}
        }
    }
    // 5. Indexes, triggers and views the database lacks, in schema order.
    let mut later: Vec<(u64, Expected<'_>)> = Vec::new();
    for p in &plans {
        match p {
            Plan::View(o, false) => later.push((
                o.ordinal,
                Expected {
                    kind: Kind::View,
                    name: &o.name,
                    table: &o.name,
                    sql: &o.sql,
                },
            )),
            Plan::View(o, true) => {
                tracing::debug!("view {} exists; left as it is", o.name)
            }
            Plan::Create(o, _) | Plan::Merge(o, _, _) => {
                for e in &o.extras {
                    let kind = match e.kind {
                        ExtraKind::Index | ExtraKind::Constraint | ExtraKind::Sequence => "index",
                        ExtraKind::Trigger => "trigger",
                    };
                    if !exists(kind, &e.name) {
                        later.push((
                            e.ordinal,
                            Expected {
                                kind: e.kind.into(),
                                name: &e.name,
                                table: &o.name,
                                sql: &e.sql,
                            },
                        ));
                    }
                }
            }
        }
    }
    for o in objs.iter().filter(|o| o.is_view()) {
        for e in &o.extras {
            if !exists("trigger", &e.name) {
                later.push((
                    e.ordinal,
                    Expected {
                        kind: e.kind.into(),
                        name: &e.name,
                        table: &o.name,
                        sql: &e.sql,
                    },
                ));
            }
        }
    }
    later.sort_by_key(|(o, _)| *o);
    for (_, e) in &later {
        guard.run(c, path, e)?;
    }
    // 6. Foreign keys, checked before the commit.
    if existing {
        check_foreign_keys(c, path, fk_before)?;
    }
    Ok(rep)
}

fn describe_mismatch(name: &str, want: &TableData, have: &TableData) -> String {
    for c in &want.columns {
        match have.columns.iter().find(|h| h.name == c.name) {
            None => return format!("table {name} has no column {}", c.name),
            Some(h) if h.decl_type != c.decl_type => {
                return format!(
                    "column {name}.{} is {:?} in the database, {:?} in the snapshot",
                    c.name, h.decl_type, c.decl_type
                );
            }
            _ => {}
        }
    }
    for h in &have.columns {
        if !want.columns.iter().any(|c| c.name == h.name) {
            return format!("table {name} has a column {} the snapshot lacks", h.name);
        }
    }
    if want.columns != have.columns {
        return format!("the columns of table {name} are in another order");
    }
    if want.key != have.key {
        return format!(
            "table {name} is keyed by ({}) in the snapshot, ({}) in the database",
            want.key_names().join(", "),
            have.key_names().join(", ")
        );
    }
    format!("table {name} differs in its rowid layout (WITHOUT ROWID or INTEGER PRIMARY KEY)")
}

/// Whether a `CREATE TABLE` statement declares AUTOINCREMENT: the keyword
/// outside strings, quoted names and comments.
/// Whether the snapshot's `CREATE TABLE` makes a STRICT table: asked of
/// SQLite, on a scratch database (the statement was checked to be one
/// `CREATE TABLE` before the restore began).
fn strict_in_snapshot(sql: &str) -> Result<bool> {
    let scratch = Path::new(":memory:");
    let err = |e| db_error(scratch, e);
    let c = Connection::open_in_memory().map_err(err)?;
    c.execute_batch(sql).map_err(err)?;
    c.query_row(
        "SELECT coalesce(max(strict), 0) FROM pragma_table_list WHERE schema = 'main' AND type = 'table' \
         AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
        [],
        |r| r.get(0),
    )
    .map_err(err)
}

/// Whether the database has a table `name` now.
fn table_exists(c: &Connection, path: &Path, name: &str) -> Result<bool> {
    c.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
    .map_err(|e| db_error(path, e))
}

/// Whether the database's table `name` is STRICT.
fn strict_now(c: &Connection, path: &Path, name: &str) -> Result<bool> {
    c.query_row(
        "SELECT coalesce(max(strict), 0) FROM pragma_table_list WHERE schema = 'main' AND type = 'table' \
         AND name = ?1 COLLATE NOCASE",
        [name],
        |r| r.get(0),
    )
    .map_err(|e| db_error(path, e))
}

fn autoincrement(sql: &str) -> bool {
    let b = sql.as_bytes();
    let mut i = 0;
    let mut word = String::new();
    let mut found = false;
    let mut end_word = |w: &mut String| {
        found |= w.eq_ignore_ascii_case("AUTOINCREMENT");
        w.clear();
    };
    while i < b.len() {
        let c = b[i];
        let close = match c {
            b'\'' => Some(b'\''),
            b'"' => Some(b'"'),
            b'`' => Some(b'`'),
            b'[' => Some(b']'),
            _ => None,
        };
        if let Some(close) = close {
            end_word(&mut word);
            i += 1;
            while i < b.len() && b[i] != close {
                i += 1;
            }
            i += 1;
        } else if b[i..].starts_with(b"--") {
            end_word(&mut word);
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            end_word(&mut word);
            i += 2;
            while i < b.len() && !b[i..].starts_with(b"*/") {
                i += 1;
            }
            i += 2;
        } else if c.is_ascii_alphanumeric() || c == b'_' {
            word.push(c as char);
            i += 1;
        } else {
            end_word(&mut word);
            i += 1;
        }
    }
    end_word(&mut word);
    found
}

fn set_sequence(
    c: &Connection,
    path: &Path,
    table: &str,
    seq: i64,
    keep_higher: bool,
) -> Result<()> {
    let err = |e| db_error(path, e);
    let cur: Option<i64> = c
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = ?1",
            [table],
            |r| r.get(0),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })
        .map_err(err)?;
    match cur {
        Some(v) if v == seq || (keep_higher && v > seq) => {}
        Some(_) => {
            c.execute(
                "UPDATE sqlite_sequence SET seq = ?1 WHERE name = ?2",
                rusqlite::params![seq, table],
            )
            .map_err(err)?;
        }
        None => {
            c.execute(
                "INSERT INTO sqlite_sequence(name, seq) VALUES (?1, ?2)",
                rusqlite::params![table, seq],
            )
            .map_err(err)?;
        }
    }
    Ok(())
}

/// The row that breaks a foreign key: its rowid, as `PRAGMA
/// foreign_key_check` names it, or for a `WITHOUT ROWID` table (which the
/// pragma names no row of) its primary key's values, encoded as a key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Culprit {
    Rowid(Option<i64>),
    Key(Vec<u8>),
}

/// Foreign-key violations: (child table, the row, parent table, key id) →
/// how many.
type FkViolations = std::collections::HashMap<(String, Culprit, String, i64), u64>;

/// A table's foreign keys: key id → (parent table, [(child column, parent
/// column or None for the parent's primary key)]).
type ForeignKeys = BTreeMap<i64, (String, Vec<(String, Option<String>)>)>;

fn foreign_keys_of(c: &Connection, table: &str) -> rusqlite::Result<ForeignKeys> {
    let mut st = c.prepare(&format!("PRAGMA main.foreign_key_list({})", quote(table)))?;
    let mut rows = st.query([])?;
    let mut out = ForeignKeys::new();
    // Rows come by key id and then column order (`seq`).
    while let Some(r) = rows.next()? {
        let id: i64 = r.get("id")?;
        let parent: String = r.get("table")?;
        let from: String = r.get("from")?;
        let to: Option<String> = r.get("to")?;
        out.entry(id)
            .or_insert_with(|| (parent, Vec::new()))
            .1
            .push((from, to));
    }
    Ok(out)
}

/// A table's columns as (name, place in its primary key, 0 if none).
fn columns_of(c: &Connection, table: &str) -> rusqlite::Result<Vec<(String, i64)>> {
    let mut st = c.prepare(&format!("PRAGMA main.table_info({})", quote(table)))?;
    let rows = st.query_map([], |r| Ok((r.get("name")?, r.get("pk")?)))?;
    rows.collect()
}

fn primary_key_of(cols: &[(String, i64)]) -> Vec<String> {
    let mut pk: Vec<&(String, i64)> = cols.iter().filter(|(_, k)| *k > 0).collect();
    pk.sort_by_key(|(_, k)| *k);
    pk.into_iter().map(|(n, _)| n.clone()).collect()
}

/// The rows of `table` that break its foreign key `fkid`, found by a query
/// that looks the parent row up as SQLite does: a row with a NULL in the
/// key breaks nothing; the parent column's affinity and collation decide
/// (`p.col = +c.col`: the unary `+` leaves the child's value without an
/// affinity of its own). `None`: the key cannot be checked (its parent key
/// names columns the parent lacks).
fn orphans(
    c: &Connection,
    path: &Path,
    table: &str,
    fk: &(String, Vec<(String, Option<String>)>),
    by_key: bool,
    without_rowid: bool,
) -> Result<Option<Vec<Culprit>>> {
    let err = |e| db_error(path, e);
    let (parent, cols) = fk;
    let child_cols = columns_of(c, table).map_err(err)?;
    let parent_cols = columns_of(c, parent).map_err(err)?;
    let to: Vec<String> = if cols.iter().all(|(_, t)| t.is_some()) {
        cols.iter().filter_map(|(_, t)| t.clone()).collect()
    } else {
        primary_key_of(&parent_cols)
    };
    let has = |cols: &[(String, i64)], n: &str| cols.iter().any(|(c, _)| c.eq_ignore_ascii_case(n));
    let parent_exists = !parent_cols.is_empty();
    if parent_exists && (to.len() != cols.len() || !to.iter().all(|n| has(&parent_cols, n))) {
        return Ok(None);
    }
    let rowid_name = ["rowid", "_rowid_", "oid"]
        .into_iter()
        .find(|n| !without_rowid && !has(&child_cols, n));
    let key_len = primary_key_of(&child_cols).len();
    let ident: Vec<String> = if by_key {
        // (A key holding NULL does not tell rows apart: its rowid does, as
        // in the snapshot's keys. Audit round 21.)
        primary_key_of(&child_cols)
            .iter()
            .map(|n| format!("c.{}", quote(n)))
            .chain(rowid_name.map(|n| format!("c.{n}")))
            .collect()
    } else {
        match ["rowid", "_rowid_", "oid"]
            .into_iter()
            .find(|n| !has(&child_cols, n))
        {
            Some(n) => vec![format!("c.{n}")],
            None => return Ok(None),
        }
    };
    let set: Vec<String> = cols
        .iter()
        .map(|(f, _)| format!("c.{} IS NOT NULL", quote(f)))
        .collect();
    // A parent table that does not exist has no rows: every child row
    // with its key set breaks it, as the pragma says too.
    let missing = if parent_exists {
        let eq: Vec<String> = cols
            .iter()
            .zip(&to)
            .map(|((f, _), t)| format!("p.{} = +c.{}", quote(t), quote(f)))
            .collect();
        format!(
            " AND NOT EXISTS (SELECT 1 FROM main.{} AS p WHERE {})",
            quote(parent),
            eq.join(" AND ")
        )
    } else {
        String::new()
    };
    let sql = format!(
        "SELECT {} FROM main.{} AS c WHERE {}{missing}",
        ident.join(", "),
        quote(table),
        set.join(" AND ")
    );
    let mut st = c.prepare(&sql).map_err(err)?;
    let mut rows = st.query([]).map_err(err)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(err)? {
        if by_key {
            let mut vals: Vec<Value> = (0..ident.len())
                .map(|i| r.get_ref(i).map(Value::from_ref))
                .collect::<rusqlite::Result<_>>()
                .map_err(err)?;
            if !vals[..key_len.min(vals.len())]
                .iter()
                .any(|v| matches!(v, Value::Null))
            {
                vals.truncate(key_len);
            }
            // The key's own encoding names the row exactly (a REAL by its
            // bits, TEXT by its bytes).
            out.push(Culprit::Key(super::value::encode_key(&vals)?));
        } else {
            out.push(Culprit::Rowid(r.get(0).map_err(err)?));
        }
    }
    Ok(Some(out))
}

/// The database's foreign-key violations, and the keys that could not be
/// checked (table, parent).
fn foreign_key_violations(
    c: &Connection,
    path: &Path,
) -> Result<(FkViolations, Vec<(String, String)>)> {
    let err = |e| db_error(path, e);
    let mut out = FkViolations::new();
    let mut unchecked = Vec::new();
    // `wr`: the table is WITHOUT ROWID (a column named rowid may hide it
    // from a query).
    let tables: Vec<(String, bool)> = {
        let mut st = c
            .prepare(
                "SELECT name, wr FROM pragma_table_list WHERE schema = 'main' AND type = 'table' \
                 ORDER BY name",
            )
            .map_err(err)?;
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(err)?
            .collect::<rusqlite::Result<_>>()
            .map_err(err)?
    };
    for (table, without_rowid) in tables {
        let fks = foreign_keys_of(c, &table).map_err(err)?;
        if fks.is_empty() {
            continue;
        }
        // A row is named by its primary key where the table declares one:
        // a restore may move a row of a rowid table to another rowid (to
        // put a snapshot's row back on its own), and a new violation on a
        // rowid an old one left would pass for the old one (audit round
        // 14). Only a table without a declared key is named by rowid.
        let by_key =
            without_rowid || !primary_key_of(&columns_of(c, &table).map_err(err)?).is_empty();
        // A table at a time: a key to columns that are not unique makes
        // the pragma fail for the table ("foreign key mismatch"), and
        // SQLite cannot check such a key at all.
        let checked: rusqlite::Result<Vec<(String, Option<i64>, i64)>> = (|| {
            let mut st = c.prepare(&format!("PRAGMA main.foreign_key_check({})", quote(&table)))?;
            let rows = st.query_map([], |r| Ok((r.get(2)?, r.get(1)?, r.get(3)?)))?;
            rows.collect()
        })();
        match checked {
            Ok(list) => {
                let mut unnamed: BTreeMap<i64, (String, u64)> = BTreeMap::new();
                for (parent, rowid, fkid) in list {
                    if by_key {
                        unnamed.entry(fkid).or_insert((parent, 0)).1 += 1;
                    } else {
                        *out.entry((table.clone(), Culprit::Rowid(rowid), parent, fkid))
                            .or_default() += 1;
                    }
                }
                // (The pragma names no row of a WITHOUT ROWID table.) The
                // query finds them by key, and must find as many as the
                // pragma counts, or the restore cannot tell which rows
                // they are.
                for (fkid, (parent, n)) in unnamed {
                    let found = match fks.get(&fkid) {
                        Some(fk) => orphans(c, path, &table, fk, true, without_rowid)?,
                        None => None,
                    };
                    let found = found.filter(|f| f.len() as u64 == n).ok_or_else(|| {
                        SyncError::Database(format!(
                            "{}: cannot tell which rows of {table} break their foreign key to {parent} \
                             ({n} do, by PRAGMA foreign_key_check); nothing was written",
                            path.display()
                        ))
                    })?;
                    for r in found {
                        *out.entry((table.clone(), r, parent.clone(), fkid))
                            .or_default() += 1;
                    }
                }
            }
            Err(e) if e.to_string().contains("foreign key mismatch") => {
                for (fkid, fk) in &fks {
                    match orphans(c, path, &table, fk, by_key, without_rowid)? {
                        Some(found) => {
                            for r in found {
                                *out.entry((table.clone(), r, fk.0.clone(), *fkid))
                                    .or_default() += 1;
                            }
                        }
                        None => unchecked.push((table.clone(), fk.0.clone())),
                    }
                }
            }
            Err(e) => return Err(err(e)),
        }
    }
    Ok((out, unchecked))
}

/// Refuses the restore if it adds a foreign-key violation to those the
/// database had before it.
fn check_foreign_keys(c: &Connection, path: &Path, mut before: FkViolations) -> Result<()> {
    let (after, unchecked) = foreign_key_violations(c, path)?;
    for (table, parent) in &unchecked {
        if !super::rehearsing() {
            tracing::warn!(
                "{}: the foreign key of {} to {} was not checked (SQLite reports a foreign key mismatch for it, and it names columns {} lacks)",
                path.display(),
                printable(table),
                printable(parent),
                printable(parent)
            );
        }
    }
    let mut after: Vec<_> = after.into_iter().collect();
    after.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, n) in after {
        let had = before.remove(&key).unwrap_or(0);
        if n <= had {
            continue;
        }
        let (table, culprit, parent, _) = key;
        let row = match culprit {
            Culprit::Rowid(Some(r)) => format!(" with rowid {r}"),
            Culprit::Rowid(None) => String::new(),
            Culprit::Key(k) => decode_key(&k)
                .map(|vals| {
                    let parts: Vec<String> = vals.iter().map(Value::to_sql).collect();
                    format!(" with key ({})", parts.join(", "))
                })
                .unwrap_or_default(),
        };
        return Err(SyncError::Database(format!(
            "{}: the restore would break a foreign key (a row of {}{row} references a missing row of {}); nothing was written",
            path.display(),
            printable(&table),
            printable(&parent),
        )));
    }
    Ok(())
}

fn insert_sql(table: &str, t: &TableData, with_rowid: bool) -> Result<String> {
    let mut cols: Vec<String> = Vec::new();
    if with_rowid {
        cols.push(rowid_name(t, table)?.to_string());
    }
    cols.extend(t.columns.iter().map(|c| quote(&c.name)));
    let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
    Ok(format!(
        // OR ABORT: a table's own conflict clause (ON CONFLICT REPLACE
        // would delete another row, IGNORE skip this one, ROLLBACK end the
        // restore's transaction) never decides what a restore does.
        "INSERT OR ABORT INTO {}({}) VALUES ({})",
        quote(table),
        cols.join(", "),
        marks.join(", ")
    ))
}

fn bad_row(root: &ObjectId, what: impl std::fmt::Display) -> SyncError {
    corrupt(ObjectType::Rows, root, what)
}

/// The row's values to insert: (rowid if the insert names it, the columns).
fn row_values(
    src: &dyn ObjectSource,
    t: &TableData,
    key: &[u8],
    row: &[u8],
) -> Result<(Option<i64>, Vec<Value>)> {
    let cells = decode_row(row).map_err(|e| bad_row(&t.root, e))?;
    if cells.len() != t.row_width() {
        return Err(bad_row(
            &t.root,
            format!(
                "a row of {} values where the table has {}",
                cells.len(),
                t.row_width()
            ),
        ));
    }
    // The key a row is filed under must be the key its values make: a row
    // is never trusted over its key.
    crate::store::fsck::check_row_key(src, t, key, &cells).map_err(|e| bad_row(&t.root, e))?;
    let mut rowid = None;
    let mut start = 0;
    if t.rowid_in_row() {
        match &cells[0] {
            Cell::Value(Value::Integer(r)) => rowid = Some(*r),
            _ => return Err(bad_row(&t.root, "a row whose rowid is not an integer")),
        }
        start = 1;
    } else if t.key.is_empty() {
        match decode_key(key).map_err(|e| bad_row(&t.root, e))?.as_slice() {
            [Value::Integer(r)] => rowid = Some(*r),
            _ => return Err(bad_row(&t.root, "a rowid key that is not one integer")),
        }
    }
    let mut vals = Vec::with_capacity(t.columns.len());
    for c in cells.into_iter().skip(start) {
        vals.push(c.into_value(src)?);
    }
    Ok((rowid, vals))
}

/// Whether the database stores text as UTF-16, into which TEXT that is not
/// UTF-8 does not go unchanged (SQLite puts U+FFFD for its bytes).
fn stores_utf16(c: &Connection, path: &Path) -> Result<bool> {
    let enc: String = c
        .query_row("PRAGMA encoding", [], |r| r.get(0))
        .map_err(|e| db_error(path, e))?;
    Ok(!enc.eq_ignore_ascii_case("UTF-8"))
}

/// Refuses a row holding TEXT that is not UTF-8 for a UTF-16 database,
/// naming the row: writing it would change the value.
fn check_text(path: &Path, table: &str, key: &[u8], vals: &[Value], t: &TableData) -> Result<()> {
    let bad = vals
        .iter()
        .position(|v| matches!(v, Value::Text(b) if std::str::from_utf8(b).is_err()));
    let Some(i) = bad else { return Ok(()) };
    let shown = decode_key(key)
        .map(|k| k.iter().map(Value::to_sql).collect::<Vec<_>>().join(", "))
        .unwrap_or_default();
    Err(SyncError::Database(format!(
        "{}: the row {}({shown}) holds TEXT that is not UTF-8 in column {}, which this UTF-16 database cannot store unchanged; nothing was written",
        path.display(),
        printable(table),
        printable(t.columns.get(i).map(|c| c.name.as_str()).unwrap_or("?"))
    )))
}

fn insert_all(
    c: &Connection,
    path: &Path,
    src: &dyn ObjectSource,
    table: &str,
    t: &TableData,
    progress: &dyn Progress,
) -> Result<u64> {
    let with_rowid = !t.without_rowid() && (t.rowid_in_row() || t.key.is_empty());
    let mut st = c
        .prepare(&insert_sql(table, t, with_rowid)?)
        .map_err(|e| db_error(path, e))?;
    let utf16 = stores_utf16(c, path)?;
    let mut n = 0u64;
    for e in MapIter::new(src, ObjectType::Rows, t.root) {
        let (k, v) = e?;
        if progress.interrupted() {
            return Err(SyncError::Interrupted);
        }
        let (rowid, vals) = row_values(src, t, &k, &v)?;
        if utf16 {
            check_text(path, table, &k, &vals, t)?;
        }
        let r = if with_rowid {
            let rid = Sql(ValueRef::Integer(rowid.unwrap_or(0)));
            st.execute(params_from_iter(
                std::iter::once(rid).chain(vals.iter().map(Value::sql)),
            ))
        } else {
            st.execute(params_from_iter(vals.iter().map(Value::sql)))
        };
        r.map_err(|e| SyncError::Database(format!("{}: table {table}: {}", path.display(), e)))?;
        n += 1;
        progress.add(1, v.len() as u64);
    }
    if n != t.rows {
        return Err(bad_row(
            &t.root,
            format!("the map holds {n} rows, the table says {}", t.rows),
        ));
    }
    Ok(n)
}

enum Action {
    Delete,
    Update(Vec<usize>),
    Insert,
}

/// Merges a table's rows in the database with the snapshot's, writing only
/// what differs.
#[allow(clippy::too_many_arguments)]
fn merge(
    c: &Connection,
    path: &Path,
    src: &dyn ObjectSource,
    table: &str,
    t: &TableData,
    now: &TableData,
    chunker: &Chunker,
    opts: &DbRestoreOptions,
    progress: &dyn Progress,
    rep: &mut DbRestoreReport,
) -> Result<()> {
    let utf16 = stores_utf16(c, path)?;
    // Pass 1 (reads only): the keys that differ, and what to do with each.
    let mut changes: Vec<(Vec<u8>, Action, Option<i64>)> = Vec::new();
    {
        let hashing = MemStore::new(false);
        let mut snap = MapIter::new(src, ObjectType::Rows, t.root).peekable();
        let mut reader = RowReader::new(c, path, table, now)?;
        let mut pending_err: Option<SyncError> = None;
        reader
            .for_each(&hashing, chunker, progress, |k, row, rowid| {
                // Snapshot keys before this one are missing from the database.
                loop {
                    match snap.peek() {
                        Some(Ok((sk, _))) if sk.as_slice() < k => {
                            if let Some(Ok((sk, _))) = snap.next() {
                                changes.push((sk, Action::Insert, None));
                            }
                        }
                        Some(Err(_)) => {
                            if let Some(Err(e)) = snap.next() {
                                pending_err = Some(e);
                            }
                            return Err(SyncError::Interrupted);
                        }
                        _ => break,
                    }
                }
                match snap.peek() {
                    Some(Ok((sk, sv))) if sk.as_slice() == k => {
                        if sv.as_slice() != row {
                            if t.rowid_in_row() && kept_rowid(t, sv)? != rowid {
                                // The row moved to another rowid (deleted and
                                // inserted again, or its key changed): put it
                                // back where it was, so rowids are restored.
                                changes.push((k.to_vec(), Action::Delete, rowid));
                                changes.push((k.to_vec(), Action::Insert, None));
                            } else {
                                let cols = differing_columns(t, sv, row)?;
                                if !cols.is_empty() {
                                    changes.push((k.to_vec(), Action::Update(cols), rowid));
                                }
                            }
                        }
                        snap.next();
                    }
                    _ => {
                        if opts.delete {
                            changes.push((k.to_vec(), Action::Delete, rowid));
                        }
                    }
                }
                Ok(())
            })
            .map_err(|e| pending_err.take().unwrap_or(e))?;
        for e in snap {
            let (sk, _) = e?;
            changes.push((sk, Action::Insert, None));
        }
    }
    if changes.is_empty() {
        return Ok(());
    }
    // Pass 2: deletes, then updates, then inserts (values read from the
    // snapshot in key order).
    let by_rowid = !t.without_rowid();
    let key_cols: Vec<String> = t
        .key
        .iter()
        .map(|&i| format!("{} = ?", quote(&t.columns[i as usize].name)))
        .collect();
    let rid = if by_rowid { rowid_name(t, table)? } else { "" };
    let where_clause = if by_rowid {
        format!("{rid} = ?")
    } else {
        key_cols.join(" AND ")
    };
    let dberr = |e: rusqlite::Error| {
        SyncError::Database(format!("{}: table {table}: {}", path.display(), e))
    };
    {
        let mut del = c
            .prepare(&format!(
                "DELETE FROM {} WHERE {where_clause}",
                quote(table)
            ))
            .map_err(dberr)?;
        for (k, a, rowid) in &changes {
            if progress.interrupted() {
                return Err(SyncError::Interrupted);
            }
            if let Action::Delete = a {
                let n = if by_rowid {
                    del.execute([rowid.unwrap_or(0)])
                } else {
                    let kv = decode_key(k).map_err(|e| bad_row(&t.root, e))?;
                    del.execute(params_from_iter(kv.iter().map(Value::sql)))
                }
                .map_err(dberr)?;
                rep.deleted += n as u64;
            }
        }
    }
    let with_rowid = by_rowid && (t.rowid_in_row() || t.key.is_empty());
    let mut ins = c
        .prepare(&insert_sql(table, t, with_rowid)?)
        .map_err(dberr)?;
    let mut ins_norowid = if t.rowid_in_row() {
        Some(c.prepare(&insert_sql(table, t, false)?).map_err(dberr)?)
    } else {
        None
    };
    let mut next = 0usize;
    let wanted: Vec<usize> = (0..changes.len())
        .filter(|&i| !matches!(changes[i].1, Action::Delete))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    // Updates that broke a unique index (a row taking a value another row
    // gives up only later: swapped emails, reordered positions): (the
    // row's rowid, key, changed columns, values), tried again at the end.
    let mut waiting: Vec<WaitingUpdate> = Vec::new();
    // Inserts that broke one (a new row taking a value an updated row
    // gives up): (rowid, values).
    let mut waiting_ins: Vec<(Option<i64>, Vec<Value>)> = Vec::new();
    // Updates a row's changed columns: the outer error is the database's,
    // the inner one the statement's own (a unique index may wait); (a
    // statement that fails is undone alone, the transaction goes on).
    let update_row = |rowid: Option<i64>,
                      k: &[u8],
                      cols: &[usize],
                      vals: &[Value]|
     -> Result<std::result::Result<usize, rusqlite::Error>> {
        let sets: Vec<String> = cols
            .iter()
            .map(|&ci| format!("{} = ?", quote(&t.columns[ci].name)))
            .collect();
        let sql = format!(
            "UPDATE OR ABORT {} SET {} WHERE {where_clause}",
            quote(table),
            sets.join(", ")
        );
        let mut params: Vec<Sql<'_>> = cols.iter().map(|&ci| vals[ci].sql()).collect();
        let kv;
        if by_rowid {
            params.push(Sql(ValueRef::Integer(rowid.unwrap_or(0))));
        } else {
            kv = decode_key(k).map_err(|e| bad_row(&t.root, e))?;
            params.extend(kv.iter().map(Value::sql));
        }
        let mut st = c.prepare_cached(&sql).map_err(dberr)?;
        Ok(st.execute(params_from_iter(params)))
    };
    // Inserts a row: the outer error is the database's, the inner one the
    // statement's own (a unique index may wait).
    let mut insert_row = |rowid: Option<i64>,
                          vals: &[Value]|
     -> Result<std::result::Result<(), rusqlite::Error>> {
        let taken = match (t.rowid_in_row(), rowid) {
            (true, Some(r)) => {
                c.query_row(
                    &format!("SELECT count(*) FROM {} WHERE {rid} = ?1", quote(table)),
                    [r],
                    |x| x.get::<_, i64>(0),
                )
                .map_err(dberr)?
                    > 0
            }
            _ => false,
        };
        // A row whose key holds a NULL is told apart by its rowid (the
        // key alone need not be unique): elsewhere it would be another
        // row, and the next restore would add it again (audit round 14).
        let null_key = t
            .key
            .iter()
            .any(|&k| matches!(vals.get(k as usize), Some(Value::Null)));
        if taken && null_key {
            let shown: Vec<String> = t
                .key
                .iter()
                .filter_map(|&k| vals.get(k as usize).map(Value::to_sql))
                .collect();
            return Err(SyncError::Database(format!(
                "{}: table {}: the row ({}) with rowid {} cannot go back: another row holds that \
                     rowid, and a key holding NULL is told apart by its rowid; nothing was written \
                     (restore with --delete, or move that row)",
                path.display(),
                printable(table),
                shown.join(", "),
                rowid.unwrap_or_default()
            )));
        }
        let r = if taken {
            match ins_norowid.as_mut() {
                Some(st) => st.execute(params_from_iter(vals.iter().map(Value::sql))),
                None => Ok(0),
            }
        } else if with_rowid {
            let r = Sql(ValueRef::Integer(rowid.unwrap_or(0)));
            ins.execute(params_from_iter(
                std::iter::once(r).chain(vals.iter().map(Value::sql)),
            ))
        } else {
            ins.execute(params_from_iter(vals.iter().map(Value::sql)))
        };
        Ok(r.map(|_| ()))
    };
    for e in MapIter::new(src, ObjectType::Rows, t.root) {
        let (k, v) = e?;
        if progress.interrupted() {
            return Err(SyncError::Interrupted);
        }
        let Some(&i) = wanted.get(next) else { break };
        if k != changes[i].0 {
            continue;
        }
        next += 1;
        let (rowid, vals) = row_values(src, t, &k, &v)?;
        if utf16 {
            check_text(path, table, &k, &vals, t)?;
        }
        match &changes[i].1 {
            Action::Update(cols) => match update_row(changes[i].2, &k, cols, &vals)? {
                Ok(1) => rep.updated += 1,
                Ok(_) => return Err(bad_row(&t.root, "rows changed while restoring")),
                Err(e) if is_unique_violation(&e) && !c.is_autocommit() => {
                    waiting.push((changes[i].2, k.clone(), cols.clone(), vals.clone()));
                }
                Err(e) => return Err(dberr(e)),
            },
            Action::Insert => match insert_row(rowid, &vals)? {
                Ok(()) => rep.inserted += 1,
                Err(e) if is_unique_violation(&e) && !c.is_autocommit() => {
                    waiting_ins.push((rowid, vals.clone()))
                }
                Err(e) => return Err(dberr(e)),
            },
            Action::Delete => {}
        }
        if next == wanted.len() {
            break;
        }
    }
    if next != wanted.len() {
        return Err(bad_row(&t.root, "rows changed while restoring"));
    }
    // The waiting updates, round after round while one goes in; what is
    // left then is a cycle (each takes another's value). With triggers and
    // foreign keys off, taking those rows out and putting them back whole
    // does exactly what their updates would: no other row is touched.
    while !waiting.is_empty() || !waiting_ins.is_empty() {
        let before = waiting.len() + waiting_ins.len();
        let mut left_ins = Vec::new();
        let mut first_err = None;
        for (rowid, vals) in std::mem::take(&mut waiting_ins) {
            match insert_row(rowid, &vals)? {
                Ok(()) => rep.inserted += 1,
                Err(e) if is_unique_violation(&e) && !c.is_autocommit() => {
                    first_err.get_or_insert(e);
                    left_ins.push((rowid, vals));
                }
                Err(e) => return Err(dberr(e)),
            }
        }
        waiting_ins = left_ins;
        let mut left = Vec::new();
        for (rowid, k, cols, vals) in waiting {
            match update_row(rowid, &k, &cols, &vals)? {
                Ok(1) => rep.updated += 1,
                Ok(_) => return Err(bad_row(&t.root, "rows changed while restoring")),
                Err(e) if is_unique_violation(&e) && !c.is_autocommit() => {
                    left.push((rowid, k.clone(), cols, vals))
                }
                Err(e) => return Err(dberr(e)),
            }
        }
        if left.len() + waiting_ins.len() == before && left.is_empty() {
            // Only inserts are left, and none goes in: the first one's error.
            if let Some(e) = first_err {
                return Err(dberr(e));
            }
        }
        if left.len() + waiting_ins.len() == before {
            let mut del = c
                .prepare(&format!(
                    "DELETE FROM {} WHERE {where_clause}",
                    quote(table)
                ))
                .map_err(dberr)?;
            for (rowid, k, _, _) in &left {
                if by_rowid {
                    del.execute([rowid.unwrap_or(0)])
                } else {
                    let kv = decode_key(k).map_err(|e| bad_row(&t.root, e))?;
                    del.execute(params_from_iter(kv.iter().map(Value::sql)))
                }
                .map_err(dberr)?;
            }
            let mut put = c.prepare(&insert_sql(table, t, by_rowid)?).map_err(dberr)?;
            for (rowid, _, _, vals) in &left {
                if by_rowid {
                    let r = Sql(ValueRef::Integer(rowid.unwrap_or(0)));
                    put.execute(params_from_iter(
                        std::iter::once(r).chain(vals.iter().map(Value::sql)),
                    ))
                } else {
                    put.execute(params_from_iter(vals.iter().map(Value::sql)))
                }
                .map_err(dberr)?;
                rep.updated += 1;
            }
            waiting = Vec::new();
            continue;
        }
        waiting = left;
    }
    Ok(())
}

/// An update kept for later: the row's rowid, key, changed columns, values.
type WaitingUpdate = (Option<i64>, Vec<u8>, Vec<usize>, Vec<Value>);

/// Whether a statement failed on a unique index or key.
fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    )
}

/// The rowid a row keeps (tables with flags 0x02).
fn kept_rowid(t: &TableData, row: &[u8]) -> Result<Option<i64>> {
    let cells = decode_row(row).map_err(|e| bad_row(&t.root, e))?;
    match cells.first() {
        Some(Cell::Value(Value::Integer(r))) => Ok(Some(*r)),
        _ => Err(bad_row(&t.root, "a row whose rowid is not an integer")),
    }
}

/// Indexes (into the columns) of the cells that differ between the
/// snapshot's row and the database's (rowid aside).
fn differing_columns(t: &TableData, snap: &[u8], db: &[u8]) -> Result<Vec<usize>> {
    let a = decode_row(snap).map_err(|e| bad_row(&t.root, e))?;
    let b = decode_row(db).map_err(|e| bad_row(&t.root, e))?;
    let off = usize::from(t.rowid_in_row());
    if a.len() != t.row_width() || b.len() != t.row_width() {
        return Err(bad_row(&t.root, "a row of the wrong width"));
    }
    Ok((0..t.columns.len())
        .filter(|&i| a[off + i] != b[off + i])
        .collect())
}

#[cfg(test)]
mod tests {

    #[test]
    fn autoincrement_is_the_keyword_not_the_word_in_a_string() {
        for (sql, want) in [
            ("CREATE TABLE t(id INTEGER PRIMARY KEY AUTOINCREMENT)", true),
            (
                "create table t(id integer primary key autoincrement, v)",
                true,
            ),
            (
                "CREATE TABLE t(id INTEGER PRIMARY KEY, v DEFAULT 'AUTOINCREMENT')",
                false,
            ),
            (
                "CREATE TABLE \"AUTOINCREMENT\"(id INTEGER PRIMARY KEY)",
                false,
            ),
            (
                "CREATE TABLE t(id INTEGER PRIMARY KEY) -- AUTOINCREMENT",
                false,
            ),
            (
                "CREATE TABLE t(id INTEGER PRIMARY KEY /* AUTOINCREMENT */)",
                false,
            ),
            ("CREATE TABLE t(autoincrement_x INTEGER PRIMARY KEY)", false),
            (
                "CREATE TABLE t(v DEFAULT 'it''s', id INTEGER PRIMARY KEY AUTOINCREMENT)",
                true,
            ),
        ] {
            assert_eq!(super::autoincrement(sql), want, "{sql}");
        }
    }
    use super::sweep_stale_temps;

    #[test]
    fn only_a_dead_restores_old_temporary_files_of_this_target_are_swept() {
        let d = tempfile::tempdir().unwrap();
        // A pid that cannot exist (above the kernel's pid_max limit of 2^22).
        let dead = ".app.db.sp-sync-99999999-12.tmp";
        let dead_journal = ".app.db.sp-sync-99999999-12.tmp-journal";
        let live = format!(".app.db.sp-sync-{}-3.tmp", std::process::id());
        let other_target = ".other.db.sp-sync-99999999-12.tmp";
        let not_ours = [
            ".app.db.sp-sync-99999999-12.tmp.bak",
            ".app.db.sp-sync-abc-12.tmp",
            ".app.db.sp-sync-99999999.tmp",
            "app.db",
        ];
        for n in [dead, dead_journal, &live, other_target]
            .into_iter()
            .chain(not_ours)
        {
            std::fs::write(d.path().join(n), b"x").unwrap();
        }
        // Changed within the hour: a restore in another PID namespace may
        // still be writing them.
        sweep_stale_temps(d.path(), "app.db", std::time::Duration::from_secs(3600));
        assert!(
            d.path().join(dead).exists(),
            "a file changed within the hour"
        );
        assert!(d.path().join(dead_journal).exists());
        sweep_stale_temps(d.path(), "app.db", std::time::Duration::ZERO);
        assert!(!d.path().join(dead).exists());
        assert!(!d.path().join(dead_journal).exists());
        assert!(d.path().join(&live).exists(), "a running restore's file");
        assert!(d.path().join(other_target).exists());
        for n in not_ours {
            assert!(d.path().join(n).exists(), "{n}");
        }
    }
}
