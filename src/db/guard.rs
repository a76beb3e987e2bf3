//! Running a snapshot's schema SQL safely.
//!
//! A table object carries the `CREATE` statements of its table (or view),
//! indexes and triggers, and a restore runs them. A snapshot comes from a
//! store or a remote, which sp-sync treats as hostile, so that SQL is never
//! run as a batch. Each statement must be exactly one `CREATE TABLE`,
//! `CREATE INDEX`, `CREATE TRIGGER` or `CREATE VIEW` of the object it is
//! stored for (its name, and its table for an index or a trigger):
//!
//! 1. every statement is first run on a scratch in-memory database, and
//!    what it added to `sqlite_schema` is checked ([`verify_schema`]);
//! 2. every connection a restore writes through runs under an authorizer
//!    ([`Guard`]) that, while a snapshot's statement is prepared, allows
//!    only the expected `CREATE` (and what SQLite does for it: its
//!    `sqlite_schema` row, a table's automatic indexes and
//!    `sqlite_sequence`, reads of the table itself, functions), and at every
//!    other time denies `ATTACH` and `DETACH`; and with
//!    `SQLITE_DBCONFIG_DEFENSIVE` on.
//!
//! A statement with a second statement after it, a `PRAGMA`, a transaction
//! statement, a `DROP`, DML, a `TEMP` object, a name that differs from the
//! object's or an index or trigger on another table is refused before
//! anything is written.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use rusqlite::fallible_iterator::FallibleIterator as _;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};

use super::diff::same_structure;
use super::table::{ExtraKind, TableObject};
use super::{db_error, starts_with_ignore_case, table_data};
use crate::error::{Result, SyncError};

/// The kind of schema object a statement must create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Table,
    View,
    Index,
    Trigger,
}

impl Kind {
    fn schema_type(self) -> &'static str {
        match self {
            Kind::Table => "table",
            Kind::View => "view",
            Kind::Index => "index",
            Kind::Trigger => "trigger",
        }
    }

    fn statement(self) -> &'static str {
        match self {
            Kind::Table => "CREATE TABLE",
            Kind::View => "CREATE VIEW",
            Kind::Index => "CREATE INDEX",
            Kind::Trigger => "CREATE TRIGGER",
        }
    }
}

impl From<ExtraKind> for Kind {
    fn from(k: ExtraKind) -> Kind {
        match k {
            // PostgreSQL's kinds never reach SQLite: restore refuses
            // their tables first; an index is the strictest guess.
            ExtraKind::Index | ExtraKind::Constraint | ExtraKind::Sequence => Kind::Index,
            ExtraKind::Trigger => Kind::Trigger,
        }
    }
}

/// One statement of a snapshot and what it must create.
#[derive(Debug, Clone)]
pub(crate) struct Expected<'a> {
    pub kind: Kind,
    pub name: &'a str,
    /// The table (or view) it belongs to: its own name for a table or view.
    pub table: &'a str,
    pub sql: &'a str,
}

impl Expected<'_> {
    fn describe(&self) -> String {
        match self.kind {
            Kind::Table | Kind::View => format!("{} {}", self.kind.schema_type(), self.name),
            _ => format!(
                "{} {} of {}",
                self.kind.schema_type(),
                self.name,
                self.table
            ),
        }
    }
}

/// The statements of the objects, in the order a restore runs them:
/// tables first (by ordinal), then views, indexes and triggers by ordinal.
pub(crate) fn statements<'a>(objs: &[&'a TableObject]) -> Vec<(u64, Expected<'a>)> {
    let mut tables: Vec<(u64, Expected<'a>)> = Vec::new();
    let mut later: Vec<(u64, Expected<'_>)> = Vec::new();
    for o in objs {
        // (SQLite's statistics tables run no recorded SQL: a restore makes
        // them by `ANALYZE sqlite_schema`.)
        if super::is_stat(o) {
            continue;
        }
        let own = Expected {
            kind: if o.is_view() { Kind::View } else { Kind::Table },
            name: &o.name,
            table: &o.name,
            sql: &o.sql,
        };
        if o.is_view() {
            later.push((o.ordinal, own));
        } else {
            tables.push((o.ordinal, own));
        }
        for e in &o.extras {
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
    tables.sort_by_key(|(o, _)| *o);
    later.sort_by_key(|(o, _)| *o);
    tables.extend(later);
    tables
}

#[derive(Debug, Default)]
struct State {
    /// While a snapshot statement is prepared: what it may create.
    expect: Option<(Kind, String, String)>,
    /// Whether the expected CREATE was seen.
    seen: bool,
    /// The first action denied.
    denied: Option<String>,
}

/// The authorizer of a restore's connection (see the module docs).
pub(crate) struct Guard {
    state: Arc<Mutex<State>>,
}

fn main_db(ctx: &AuthContext<'_>) -> bool {
    ctx.database_name.is_none_or(|d| d == "main")
}

fn decide(st: &mut State, ctx: &AuthContext<'_>) -> Authorization {
    use AuthAction as A;
    let Some((kind, name, table)) = &st.expect else {
        // Our own statements: anything but reaching another file.
        return match ctx.action {
            A::Attach { .. } | A::Detach { .. } => deny(st, ctx),
            _ => Authorization::Allow,
        };
    };
    let same = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    let ok = main_db(ctx)
        && match ctx.action {
            A::CreateTable { table_name } if *kind == Kind::Table => {
                if table_name == name {
                    st.seen = true;
                    true
                } else {
                    // AUTOINCREMENT creates sqlite_sequence.
                    table_name == "sqlite_sequence"
                }
            }
            A::CreateIndex {
                index_name,
                table_name,
            } => match kind {
                Kind::Index if index_name == name && same(table_name, table) => {
                    st.seen = true;
                    true
                }
                // A table's UNIQUE and PRIMARY KEY constraints.
                Kind::Table => {
                    starts_with_ignore_case(index_name, "sqlite_autoindex_")
                        && same(table_name, table)
                }
                _ => false,
            },
            A::CreateTrigger {
                trigger_name,
                table_name,
            } if *kind == Kind::Trigger => {
                let m = trigger_name == name && same(table_name, table);
                st.seen |= m;
                m
            }
            A::CreateView { view_name } if *kind == Kind::View => {
                let m = view_name == name;
                st.seen |= m;
                m
            }
            A::Reindex { index_name } => *kind == Kind::Index && index_name == name,
            // SQLite writes the object's sqlite_schema row itself.
            A::Insert { table_name } => table_name == "sqlite_master",
            A::Update { table_name, .. } => table_name == "sqlite_master",
            // CHECK constraints and index expressions read the table.
            A::Read { table_name, .. } => table_name == "sqlite_master" || same(table_name, table),
            A::Function { .. } => true,
            _ => false,
        };
    if ok {
        Authorization::Allow
    } else {
        deny(st, ctx)
    }
}

/// Records a denied action (the first one that is not SQLite's own write
/// of `sqlite_schema`, which says less about the statement).
fn deny(st: &mut State, ctx: &AuthContext<'_>) -> Authorization {
    if st
        .denied
        .as_ref()
        .is_none_or(|d| d.contains("\"sqlite_master\""))
    {
        st.denied = Some(format!("{:?}", ctx.action));
    }
    Authorization::Deny
}

impl Guard {
    /// Turns on defensive mode and installs the authorizer on `c`.
    pub fn install(c: &mut Connection, path: &Path) -> Result<Guard> {
        c.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)
            .map_err(|e| db_error(path, e))?;
        let state = Arc::new(Mutex::new(State::default()));
        let s2 = Arc::clone(&state);
        c.authorizer(Some(move |ctx: AuthContext<'_>| match s2.lock() {
            Ok(mut st) => decide(&mut st, &ctx),
            Err(_) => Authorization::Deny,
        }))
        .map_err(|e| db_error(path, e))?;
        Ok(Guard { state })
    }

    fn set(&self, expect: Option<(Kind, String, String)>) -> Result<()> {
        let mut st = self
            .state
            .lock()
            .map_err(|_| SyncError::Invalid("restore authorizer poisoned".into()))?;
        st.expect = expect;
        st.seen = false;
        st.denied = None;
        Ok(())
    }

    fn take(&self) -> (bool, Option<String>) {
        match self.state.lock() {
            Ok(mut st) => {
                st.expect = None;
                (st.seen, st.denied.take())
            }
            Err(_) => (false, Some("restore authorizer poisoned".into())),
        }
    }

    /// Runs one snapshot statement: exactly one statement, which must
    /// create `e` and nothing else. Then checks `sqlite_schema` for it.
    pub fn run(&self, c: &Connection, path: &Path, e: &Expected<'_>) -> Result<()> {
        if e.sql.contains('\0') {
            return Err(refused(e, "it contains a NUL byte"));
        }
        self.set(Some((e.kind, e.name.to_string(), e.table.to_string())))?;
        let mut batch = rusqlite::Batch::new(c, e.sql);
        let first = batch.next();
        let (seen, denied) = self.take();
        let mut st = match first {
            Err(err) => {
                return Err(match denied {
                    Some(what) => refused(e, &format!("it does {what}")),
                    None => refused(e, &err.to_string().replace('\n', " ")),
                });
            }
            Ok(None) => return Err(refused(e, "it is empty")),
            Ok(Some(st)) => st,
        };
        // Anything after the first statement (compiled, never run), even
        // text that does not compile, is refused.
        self.set(None)?;
        let rest = batch.next().map(|s| s.is_none());
        self.take();
        if !matches!(rest, Ok(true)) {
            return Err(refused(e, "it holds more than one statement"));
        }
        if let Some(what) = denied {
            return Err(refused(e, &format!("it does {what}")));
        }
        if !seen {
            return Err(refused(e, &format!("it is not a {}", e.kind.statement())));
        }
        // Preparing again (after a schema change) must meet the same rules.
        self.set(Some((e.kind, e.name.to_string(), e.table.to_string())))?;
        let r = st.raw_execute();
        let (_, denied) = self.take();
        drop(st);
        if let Some(what) = denied {
            return Err(refused(e, &format!("it does {what}")));
        }
        r.map_err(|err| db_error(path, err))?;
        verify_row(c, path, e)
    }
}

fn refused(e: &Expected<'_>, why: &str) -> SyncError {
    SyncError::Invalid(format!(
        "the snapshot's SQL for {} is refused: {why} (only one {} of it is accepted); nothing was written",
        e.describe(),
        e.kind.statement()
    ))
}

/// Checks that `sqlite_schema` holds the object as expected.
fn verify_row(c: &Connection, path: &Path, e: &Expected<'_>) -> Result<()> {
    let row: Option<(String, String)> = c
        .query_row(
            "SELECT type, tbl_name FROM sqlite_schema WHERE name = ?1 AND sql IS NOT NULL",
            [e.name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map(Some)
        .or_else(|err| match err {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            err => Err(err),
        })
        .map_err(|err| db_error(path, err))?;
    match row {
        Some((ty, tbl)) if ty == e.kind.schema_type() && tbl == e.table => Ok(()),
        Some((ty, tbl)) => Err(refused(e, &format!("it created a {ty} of {tbl}"))),
        None => Err(refused(e, "it created nothing of that name")),
    }
}

/// Runs every statement of `objs` on a scratch in-memory database first:
/// each must add exactly its own `sqlite_schema` row (plus, for a table,
/// its automatic indexes and `sqlite_sequence`), and each table must have
/// the columns and key its rows are stored with.
pub(crate) fn verify_schema(objs: &[&TableObject]) -> Result<()> {
    let scratch = Path::new(":memory:");
    let mut c = Connection::open_in_memory().map_err(|e| db_error(scratch, e))?;
    let guard = Guard::install(&mut c, scratch)?;
    let count = |c: &Connection| -> Result<i64> {
        c.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
            .map_err(|e| db_error(scratch, e))
    };
    for (_, e) in statements(objs) {
        let before = count(&c)?;
        guard.run(&c, scratch, &e)?;
        let after = count(&c)?;
        // Besides its own row, only a table's automatic indexes and
        // sqlite_sequence.
        let extra: i64 = c
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE sql IS NULL AND type = 'index' AND tbl_name = ?1",
                [e.name],
                |r| r.get(0),
            )
            .map_err(|err| db_error(scratch, err))?;
        let seq: i64 = c
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = 'sqlite_sequence'",
                [],
                |r| r.get(0),
            )
            .map_err(|err| db_error(scratch, err))?;
        let allowed = 1 + if e.kind == Kind::Table {
            extra + seq
        } else {
            0
        };
        if after - before < 1 || after - before > allowed {
            return Err(refused(
                &e,
                &format!("it added {} schema entries", after - before),
            ));
        }
        if e.kind == Kind::Table
            && let Some(o) = objs.iter().find(|o| o.name == e.name)
            && let Some(t) = &o.table
        {
            let now = table_data(&c, scratch, e.name)?;
            if !same_structure(t, &now) {
                return Err(refused(
                    &e,
                    "the table it creates does not have the columns and key the snapshot's rows have",
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database with a bystander table, guarded, and `t` existing for
    /// indexes and triggers.
    fn guarded() -> (Connection, Guard) {
        let mut c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE secrets(x); INSERT INTO secrets VALUES ('keep');
             CREATE TABLE t(a, b);",
        )
        .unwrap();
        let g = Guard::install(&mut c, Path::new("test")).unwrap();
        (c, g)
    }

    fn run(kind: Kind, name: &str, table: &str, sql: &str) -> (String, Connection) {
        let (c, g) = guarded();
        c.execute_batch("BEGIN").unwrap();
        let e = Expected {
            kind,
            name,
            table,
            sql,
        };
        let r = g.run(&c, Path::new("test"), &e);
        let err = r.err().map(|e| e.to_string()).unwrap_or_default();
        c.execute_batch("COMMIT").unwrap();
        (err, c)
    }

    fn secrets(c: &Connection) -> Vec<String> {
        let mut st = c.prepare("SELECT x FROM secrets").unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    }

    #[test]
    fn the_authorizer_denies_everything_but_the_expected_create() {
        let cases: Vec<(Kind, &str, &str, &str, &str)> = vec![
            (Kind::Table, "u", "u", "DROP TABLE secrets", "sqlite_master"),
            (Kind::Table, "u", "u", "DELETE FROM secrets", "Delete"),
            (Kind::Table, "u", "u", "UPDATE secrets SET x = 1", "Update"),
            (
                Kind::Table,
                "u",
                "u",
                "INSERT INTO secrets VALUES (1)",
                "Insert",
            ),
            (Kind::Table, "u", "u", "ATTACH ':memory:' AS o", "Attach"),
            (Kind::Table, "u", "u", "DETACH main", "Detach"),
            (Kind::Table, "u", "u", "PRAGMA user_version = 3", "Pragma"),
            (Kind::Table, "u", "u", "COMMIT", "Transaction"),
            (Kind::Table, "u", "u", "SAVEPOINT s", "Savepoint"),
            (Kind::Table, "u", "u", "CREATE TABLE v(a)", "CreateTable"),
            (Kind::Table, "u", "u", "CREATE TEMP TABLE u(a)", "temp"),
            (
                Kind::Table,
                "u",
                "u",
                "CREATE TABLE u AS SELECT * FROM secrets",
                "secrets",
            ),
            (
                Kind::Table,
                "u",
                "u",
                "ALTER TABLE secrets RENAME TO s2",
                "AlterTable",
            ),
            (
                Kind::Table,
                "u",
                "u",
                "CREATE VIEW u AS SELECT 1",
                "CreateView",
            ),
            (
                Kind::Table,
                "u",
                "u",
                "CREATE INDEX u ON secrets(x)",
                "CreateIndex",
            ),
            (
                Kind::Index,
                "i",
                "t",
                "CREATE INDEX i ON secrets(x)",
                "CreateIndex",
            ),
            (
                Kind::Index,
                "i",
                "t",
                "CREATE INDEX j ON t(a)",
                "CreateIndex",
            ),
            (Kind::Index, "i", "t", "CREATE TABLE i(a)", "CreateTable"),
            (
                Kind::Trigger,
                "tr",
                "t",
                "CREATE TRIGGER tr AFTER INSERT ON secrets BEGIN DELETE FROM secrets; END",
                "CreateTrigger",
            ),
            (
                Kind::Trigger,
                "tr",
                "t",
                "CREATE TEMP TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END",
                "temp",
            ),
            (
                Kind::View,
                "v",
                "v",
                "CREATE VIEW w AS SELECT 1",
                "CreateView",
            ),
            (
                Kind::Table,
                "u",
                "u",
                "CREATE TABLE u(a); DROP TABLE secrets",
                "more than one",
            ),
            (
                Kind::Table,
                "u",
                "u",
                "CREATE TABLE u(a);\0DROP TABLE secrets",
                "NUL",
            ),
            (Kind::Table, "u", "u", "SELECT 1", "Select"),
            (Kind::Table, "u", "u", "-- nothing", "empty"),
        ];
        for (kind, name, table, sql, expect) in cases {
            let (err, c) = run(kind, name, table, sql);
            assert!(
                err.to_lowercase().contains(&expect.to_lowercase()),
                "{sql}: {err:?} should say {expect}"
            );
            assert!(err.contains("nothing was written"), "{sql}: {err}");
            assert_eq!(secrets(&c), vec!["keep".to_string()], "{sql}");
            let n: i64 = c
                .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
                .unwrap();
            assert_eq!(n, 2, "{sql}: the schema changed");
        }
    }

    #[test]
    fn the_expected_statements_run() {
        let ok = [
            (
                Kind::Table,
                "u",
                "u",
                "CREATE TABLE u(a INTEGER PRIMARY KEY AUTOINCREMENT, b UNIQUE CHECK (length(b) < 9))",
            ),
            (
                Kind::Table,
                "é",
                "é",
                "CREATE TABLE \"é\"(a) -- trailing comment",
            ),
            (
                Kind::Index,
                "i",
                "t",
                "CREATE INDEX i ON t(lower(b)) WHERE a > 1;",
            ),
            (Kind::Index, "i", "t", "CREATE UNIQUE INDEX i ON T(a)"),
            (
                Kind::Trigger,
                "tr",
                "t",
                "CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET b = 1; DELETE FROM secrets; END",
            ),
            (
                Kind::View,
                "v",
                "v",
                "CREATE VIEW v AS SELECT * FROM secrets",
            ),
        ];
        for (kind, name, table, sql) in ok {
            let (err, c) = run(kind, name, table, sql);
            assert_eq!(err, "", "{sql}");
            assert_eq!(secrets(&c), vec!["keep".to_string()], "{sql}");
        }
    }
}
