//! SQLite tables in snapshots: reading a database's tables into table
//! objects and row maps (`scan`), diffing them by key (`diff`), and writing
//! them back (`restore`).
//!
//! A table is a prolly map (the same code as directories, tag 6) from its
//! primary key, encoded so that byte order is SQLite's order, to its row.
//! Every table of a database is read in one read transaction, so a snapshot
//! is consistent while other connections write.

pub mod diff;
mod guard;
pub mod pg;
pub mod pg_guard;
pub mod pgbinary;
mod pgconn;
pub mod pgtap;
pub mod pgtext;
mod reorder;
pub mod restore;
pub mod rowcache;
/// The table object lives with the other objects (`object::table`).
pub use crate::object::table;
pub mod value;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::chunker::Chunker;
use crate::codec::Writer;
use crate::error::{Result, SyncError};
use crate::id::{ObjectId, ObjectType};
use crate::object::ObjectSink;
use crate::pmap::MapBuilder;
use crate::progress::Progress;
use table::{
    Column, Extra, ExtraKind, FLAG_ROWID_IN_ROW, FLAG_WITHOUT_ROWID, TableData, TableObject,
};
use value::{KeyWriter, encode_cell};

/// A database to snapshot, and which of its tables (empty: all of them, and
/// its views).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbSource {
    pub path: PathBuf,
    pub tables: Vec<String>,
    /// A table of `tables` the database no longer has is left out instead
    /// of refused (a diff of a snapshot's tables against now: one dropped
    /// since shows as removed).
    pub missing_ok: bool,
}

/// How long to wait for a lock another connection holds, in milliseconds
/// (`SP_SYNC_BUSY_TIMEOUT`, default 5000).
pub fn busy_timeout() -> Duration {
    let ms = std::env::var("SP_SYNC_BUSY_TIMEOUT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(5000);
    Duration::from_millis(ms)
}

/// Turns a SQLite error into a one-line `SyncError::Database` naming the file.
pub fn db_error(path: &Path, e: rusqlite::Error) -> SyncError {
    let busy = matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    );
    if busy {
        return SyncError::Database(format!(
            "{}: database is locked (still busy after {} ms; another process holds it)",
            path.display(),
            busy_timeout().as_millis()
        ));
    }
    SyncError::Database(format!(
        "{}: {}",
        path.display(),
        e.to_string().replace('\n', " ")
    ))
}

/// Quotes an SQL identifier.
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Opens an existing database read-only.
pub fn open_read(path: &Path) -> Result<Connection> {
    if !path.is_file() {
        return Err(SyncError::NotFound(format!(
            "{}: no such database file",
            path.display()
        )));
    }
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| db_error(path, e))?;
    c.busy_timeout(busy_timeout())
        .map_err(|e| db_error(path, e))?;
    Ok(c)
}

/// One entry of `sqlite_schema` (those with SQL), in schema order.
#[derive(Debug, Clone)]
pub(crate) struct SchemaItem {
    pub kind: String,
    pub name: String,
    pub tbl_name: String,
    pub sql: String,
    pub ordinal: u64,
}

pub(crate) fn read_schema(c: &Connection, path: &Path) -> Result<Vec<SchemaItem>> {
    let mut st = c
        .prepare(
            "SELECT type, name, tbl_name, sql FROM sqlite_schema WHERE sql IS NOT NULL ORDER BY rowid",
        )
        .map_err(|e| db_error(path, e))?;
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })
        .map_err(|e| db_error(path, e))?;
    let mut out = Vec::new();
    for (i, r) in rows.enumerate() {
        let (kind, name, tbl_name, sql) = r.map_err(|e| db_error(path, e))?;
        out.push(SchemaItem {
            kind,
            name,
            tbl_name,
            sql,
            ordinal: i as u64,
        });
    }
    Ok(out)
}

/// Whether `name` is SQLite's own (`sqlite_sequence`, `sqlite_stat1`, …).
pub(crate) fn is_internal(name: &str) -> bool {
    starts_with_ignore_case(name, "sqlite_")
}

/// SQLite's tables of index statistics (`ANALYZE`, `PRAGMA optimize`):
/// the internal tables a snapshot keeps, since `.dump` prints them and a
/// database restored without them plans its queries without them. Each:
/// its name, its SQL as SQLite records it, its columns.
pub(crate) const STAT_TABLES: [(&str, &str, &[&str]); 2] = [
    (
        "sqlite_stat1",
        "CREATE TABLE sqlite_stat1(tbl,idx,stat)",
        &["tbl", "idx", "stat"],
    ),
    (
        "sqlite_stat4",
        "CREATE TABLE sqlite_stat4(tbl,idx,neq,nlt,ndlt,sample)",
        &["tbl", "idx", "neq", "nlt", "ndlt", "sample"],
    ),
];

/// Whether `(name, sql)` is one of SQLite's statistics tables, as SQLite
/// makes it.
pub(crate) fn is_stat_schema(name: &str, sql: &str) -> bool {
    STAT_TABLES.iter().any(|(n, q, _)| *n == name && *q == sql)
}

/// Whether a table object is one of SQLite's statistics tables, exactly as
/// SQLite makes it (its columns without types, keyed by rowid, no
/// extras): a restore makes it by `ANALYZE sqlite_schema`, never by the
/// recorded SQL.
pub(crate) fn is_stat(o: &TableObject) -> bool {
    STAT_TABLES.iter().any(|(n, q, cols)| {
        *n == o.name
            && *q == o.sql
            && o.extras.is_empty()
            && o.table.as_ref().is_some_and(|t| {
                t.flags == 0
                    && t.key.is_empty()
                    && t.sequence.is_none()
                    && t.columns.len() == cols.len()
                    && t.columns
                        .iter()
                        .zip(cols.iter())
                        .all(|(c, n)| c.name == *n && c.decl_type.is_empty())
            })
    })
}

/// Whether `s` begins with `prefix` (ASCII case-insensitive), without
/// slicing `s` inside a character.
pub(crate) fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.as_bytes()
        .get(..prefix.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(prefix.as_bytes()))
}

/// The structure of one table as the database has it now.
pub(crate) fn table_data(c: &Connection, path: &Path, name: &str) -> Result<TableData> {
    let err = |e| db_error(path, e);
    let (kind, wr): (String, bool) = c
        .query_row(
            // (SQLite's names match in any ASCII case: `Users` is `users`.)
            "SELECT type, wr FROM pragma_table_list WHERE schema = 'main' AND name = ?1 COLLATE NOCASE",
            [name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(err)?;
    if kind != "table" {
        return Err(SyncError::Database(format!(
            "{}: {name} is a {kind} table, which sp-sync cannot snapshot",
            path.display()
        )));
    }
    let mut st = c
        .prepare("SELECT name, type, pk, hidden FROM pragma_table_xinfo(?1) ORDER BY cid")
        .map_err(err)?;
    let mut columns = Vec::new();
    let mut pk: Vec<(i64, u32)> = Vec::new();
    let rows = st
        .query_map([name], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .map_err(err)?;
    for r in rows {
        let (cname, ctype, cpk, hidden) = r.map_err(err)?;
        if hidden != 0 {
            continue; // generated columns are computed, not stored
        }
        if cpk > 0 {
            pk.push((cpk, columns.len() as u32));
        }
        columns.push(Column {
            name: cname,
            decl_type: ctype,
        });
    }
    if columns.is_empty() {
        return Err(SyncError::Database(format!(
            "{}: table {name} has no stored columns",
            path.display()
        )));
    }
    pk.sort();
    let key: Vec<u32> = pk.into_iter().map(|(_, i)| i).collect();
    let flags = if wr {
        FLAG_WITHOUT_ROWID
    } else if key.is_empty() {
        0
    } else {
        // A declared key is the rowid itself (INTEGER PRIMARY KEY) unless
        // SQLite made an index for it.
        let pk_index: i64 = c
            .query_row(
                "SELECT count(*) FROM pragma_index_list(?1) WHERE origin = 'pk'",
                [name],
                |r| r.get(0),
            )
            .map_err(err)?;
        if pk_index > 0 { FLAG_ROWID_IN_ROW } else { 0 }
    };
    let has_seq: bool = c
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name = 'sqlite_sequence' AND type = 'table'",
            [],
            |r| r.get::<_, i64>(0).map(|n| n > 0),
        )
        .map_err(err)?;
    let sequence = if has_seq {
        c.query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = ?1",
            [name],
            |r| r.get::<_, Option<i64>>(0),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(err(e)),
        })?
        .flatten()
    } else {
        None
    };
    Ok(TableData {
        flags,
        columns,
        key,
        sequence,
        rows: 0,
        root: ObjectId::default(),
    })
}

/// A name by which the rowid can be selected (`rowid`, `_rowid_` or `oid`,
/// whichever no column shadows).
pub(crate) fn rowid_name(t: &TableData, table: &str) -> Result<&'static str> {
    ["rowid", "_rowid_", "oid"]
        .into_iter()
        .find(|n| !t.columns.iter().any(|c| c.name.eq_ignore_ascii_case(n)))
        .ok_or_else(|| {
            SyncError::Database(format!(
                "table {table}: columns named rowid, _rowid_ and oid hide its rowid"
            ))
        })
}

/// The collation that orders text as the row map does (by its UTF-8
/// bytes) in a UTF-16 database, whose `BINARY` compares UTF-16 bytes:
/// `Ā` (U+0100) before `A` in UTF-16le.
const UTF8_ORDER: &str = "sp_sync_utf8";

/// The query that reads a table's rows in key order: selected are the row's
/// cells (the rowid first when the row keeps it, or for a table keyed by
/// rowid, the rowid first and then the columns). Text keys are ordered by
/// `collation`. With `raw_text`, each column's stored bytes follow the
/// columns when its value is TEXT (NULL otherwise), in column order.
pub(crate) fn select_sql(
    t: &TableData,
    table: &str,
    collation: &str,
    raw_text: bool,
) -> Result<(String, bool)> {
    let mut cols: Vec<String> = t.columns.iter().map(|c| quote(&c.name)).collect();
    if raw_text {
        for c in &t.columns {
            let c = quote(&c.name);
            cols.push(format!(
                "CASE WHEN typeof({c}) = 'text' THEN CAST({c} AS BLOB) END"
            ));
        }
    }
    let q = quote(table);
    let binary = |i: &u32| {
        format!(
            "{} COLLATE {collation}",
            quote(&t.columns[*i as usize].name)
        )
    };
    Ok(if t.without_rowid() {
        let order: Vec<String> = t.key.iter().map(binary).collect();
        (
            format!(
                "SELECT {} FROM {q} ORDER BY {}",
                cols.join(", "),
                order.join(", ")
            ),
            false,
        )
    } else {
        let rid = rowid_name(t, table)?;
        let order = if t.rowid_in_row() {
            let mut o: Vec<String> = t.key.iter().map(binary).collect();
            o.push(rid.to_string());
            o.join(", ")
        } else {
            rid.to_string()
        };
        (
            format!(
                "SELECT {rid}, {} FROM {q} ORDER BY {order}",
                cols.join(", ")
            ),
            true,
        )
    })
}

/// Streams a table's rows in key order as (key, row) encodings.
pub(crate) struct RowReader<'c> {
    stmt: rusqlite::Statement<'c>,
    t: TableData,
    path: PathBuf,
    table: String,
    /// For a UTF-16 database, whether it is big-endian. SQLite hands its
    /// text over as UTF-8, and text that is not valid UTF-16 (a lone
    /// surrogate, an odd byte) comes over as another value: each TEXT
    /// value is checked against its stored bytes.
    utf16: Option<bool>,
}

impl<'c> RowReader<'c> {
    pub fn new(c: &'c Connection, path: &Path, table: &str, t: &TableData) -> Result<Self> {
        let encoding: String = c
            .query_row("PRAGMA encoding", [], |r| r.get(0))
            .map_err(|e| db_error(path, e))?;
        let utf16 = !encoding.eq_ignore_ascii_case("UTF-8");
        let collation = if !utf16 {
            "BINARY"
        } else {
            // (SQLite hands a collation registered for UTF-8 its text as
            // UTF-8; the order of UTF-8 bytes is that of code points.)
            c.create_collation(UTF8_ORDER, |a: &str, b: &str| {
                a.as_bytes().cmp(b.as_bytes())
            })
            .map_err(|e| db_error(path, e))?;
            UTF8_ORDER
        };
        let (sql, _) = select_sql(t, table, collation, utf16)?;
        let stmt = c.prepare(&sql).map_err(|e| db_error(path, e))?;
        Ok(RowReader {
            stmt,
            t: t.clone(),
            path: path.to_path_buf(),
            table: table.to_string(),
            utf16: utf16.then(|| encoding.eq_ignore_ascii_case("UTF-16be")),
        })
    }

    /// Calls `f(key, row, rowid)` for every row, in key order.
    pub fn for_each(
        &mut self,
        sink: &dyn ObjectSink,
        chunker: &Chunker,
        progress: &dyn Progress,
        mut f: impl FnMut(&[u8], &[u8], Option<i64>) -> Result<()>,
    ) -> Result<u64> {
        let t = &self.t;
        let path = self.path.clone();
        let mut rows = self.stmt.query([]).map_err(|e| db_error(&path, e))?;
        let mut key = KeyWriter::new();
        let mut w = Writer::with_capacity(256);
        let mut n: u64 = 0;
        let ncols = t.columns.len();
        let rowid_first = !t.without_rowid();
        let offset = usize::from(rowid_first);
        while let Some(row) = rows.next().map_err(|e| db_error(&path, e))? {
            if n.is_multiple_of(4096) && progress.interrupted() {
                return Err(SyncError::Interrupted);
            }
            key.clear();
            w.buf.clear();
            let rowid = if rowid_first {
                Some(row.get::<_, i64>(0).map_err(|e| db_error(&path, e))?)
            } else {
                None
            };
            // The row: the rowid first when kept, then every column; spilled
            // (§3.7) if it does not fit a map entry as it is.
            for spilled in [false, true] {
                w.buf.clear();
                w.varint(t.row_width() as u64);
                if t.rowid_in_row() {
                    w.u8(1).zigzag(rowid.unwrap_or(0));
                }
                for i in 0..ncols {
                    let v = row.get_ref(offset + i).map_err(|e| db_error(&path, e))?;
                    if let (Some(be), rusqlite::types::ValueRef::Text(text)) = (self.utf16, v) {
                        let raw = row
                            .get_ref(offset + ncols + i)
                            .map_err(|e| db_error(&path, e))?;
                        if !same_utf16(text, raw.as_bytes().unwrap_or_default(), be) {
                            return Err(not_utf16(&path, &self.table, t, rowid, i));
                        }
                    }
                    encode_cell(&mut w, v, sink, chunker, spilled)?;
                }
                if w.buf.len() <= value::ROW_SPILL_AT {
                    break;
                }
            }
            // The key.
            if t.key.is_empty() {
                key.push(rusqlite::types::ValueRef::Integer(rowid.unwrap_or(0)))?;
            } else {
                let mut null = false;
                for &k in &t.key {
                    let v = row
                        .get_ref(offset + k as usize)
                        .map_err(|e| db_error(&path, e))?;
                    null |= matches!(v, rusqlite::types::ValueRef::Null);
                    key.push(v)?;
                }
                if null {
                    // SQLite lets a rowid table hold several rows whose key
                    // is NULL; the rowid tells them apart.
                    key.push(rusqlite::types::ValueRef::Integer(rowid.unwrap_or(0)))?;
                }
            }
            f(key.finish(), &w.buf, rowid)?;
            n += 1;
        }
        Ok(n)
    }
}

/// The error for a TEXT value of `t`'s column `col` that is not valid UTF-16.
fn not_utf16(path: &Path, table: &str, t: &TableData, rowid: Option<i64>, col: usize) -> SyncError {
    let row = match rowid {
        Some(r) => format!(" (rowid {r})"),
        None => String::new(),
    };
    SyncError::Database(format!(
        "{}: table {}: a row{row} holds TEXT in column {} that is not valid UTF-16 \
             (a lone surrogate or an odd byte), which SQLite cannot hand over unchanged",
        path.display(),
        crate::commands::fmt::printable(table),
        crate::commands::fmt::printable(t.columns.get(col).map_or("?", |c| c.name.as_str())),
    ))
}

/// Whether `utf8` (text SQLite converted from a UTF-16 database) is
/// exactly the stored UTF-16 bytes `raw` (big-endian if `be`).
fn same_utf16(utf8: &[u8], raw: &[u8], be: bool) -> bool {
    let Ok(s) = std::str::from_utf8(utf8) else {
        return false;
    };
    let mut at = raw.chunks_exact(2);
    for unit in s.encode_utf16() {
        let b = if be {
            unit.to_be_bytes()
        } else {
            unit.to_le_bytes()
        };
        if at.next() != Some(&b[..]) {
            return false;
        }
    }
    at.next().is_none() && at.remainder().is_empty()
}

std::thread_local! {
    static REHEARSING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread runs a restore's rehearsal ([`restore::rehearse_db`]):
/// its warnings are left to the restore itself, which says them again.
pub(crate) fn rehearsing() -> bool {
    REHEARSING.with(|r| r.get())
}

/// Marks this thread as rehearsing a restore while the value lives.
pub(crate) struct Rehearsal(bool);

impl Rehearsal {
    pub(crate) fn begin(on: bool) -> Rehearsal {
        Rehearsal(REHEARSING.with(|r| r.replace(on)))
    }
}

impl Drop for Rehearsal {
    fn drop(&mut self) {
        let was = self.0;
        REHEARSING.with(|r| r.set(was));
    }
}

/// What `scan` found: table (and view) name → object id, and rows per table.
/// Where a re-snapshot of PostgreSQL tables finds the row maps it stored
/// before and the row caches that describe them ([`rowcache`]).
pub struct RowCacheCtx<'a> {
    /// The store the earlier maps are in.
    pub src: &'a dyn crate::object::ObjectSource,
    /// The cache directory (the stat cache's).
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Default)]
pub struct ScanResult {
    pub objects: BTreeMap<String, ObjectId>,
    pub rows: BTreeMap<String, u64>,
    /// For each database scanned (in order), the names of its tables.
    pub by_db: Vec<Vec<String>>,
    /// For each database scanned (in order), a SQLite file's settings that
    /// its tables do not hold ([`SqliteSettings`]); None for PostgreSQL.
    pub settings: Vec<Option<SqliteSettings>>,
    /// This database's settings (a scan of one SQLite database).
    pub sqlite: Option<SqliteSettings>,
}

/// What a SQLite database file keeps outside its tables: the schema version
/// migration tools keep (`user_version`), `application_id`, and how the
/// file is laid out and journaled. A restore into a new file gives them
/// back (store-format §3.5, meta `sqlite.N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqliteSettings {
    pub user_version: i32,
    pub application_id: i32,
    pub page_size: u32,
    pub auto_vacuum: u8,
    pub wal: bool,
    /// How the file stores text: 1 UTF-8, 2 UTF-16le, 3 UTF-16be (SQLite's
    /// own numbers).
    pub encoding: u8,
}

/// `PRAGMA encoding`'s names, by [`SqliteSettings::encoding`] less one.
const ENCODINGS: [&str; 3] = ["UTF-8", "UTF-16le", "UTF-16be"];

impl SqliteSettings {
    /// Reads them from an open database.
    fn read(c: &Connection, path: &Path) -> Result<SqliteSettings> {
        let int = |pragma: &str| -> Result<i64> {
            c.query_row(&format!("PRAGMA {pragma}"), [], |r| r.get(0))
                .map_err(|e| db_error(path, e))
        };
        let mode: String = c
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(|e| db_error(path, e))?;
        let encoding: String = c
            .query_row("PRAGMA encoding", [], |r| r.get(0))
            .map_err(|e| db_error(path, e))?;
        Ok(SqliteSettings {
            user_version: int("user_version")? as i32,
            application_id: int("application_id")? as i32,
            page_size: int("page_size")? as u32,
            auto_vacuum: int("auto_vacuum")? as u8,
            wal: mode.eq_ignore_ascii_case("wal"),
            encoding: ENCODINGS
                .iter()
                .position(|e| e.eq_ignore_ascii_case(&encoding))
                .map_or(1, |i| i as u8 + 1),
        })
    }

    /// The `PRAGMA encoding` value that makes a new file store text so.
    pub fn encoding_name(&self) -> &'static str {
        ENCODINGS[usize::from(self.encoding.clamp(1, 3) - 1)]
    }

    /// The meta value: `user_version=N application_id=N page_size=N
    /// auto_vacuum=N journal_mode=wal|delete encoding=E`.
    pub fn encode(&self) -> String {
        format!(
            "user_version={} application_id={} page_size={} auto_vacuum={} journal_mode={} \
             encoding={}",
            self.user_version,
            self.application_id,
            self.page_size,
            self.auto_vacuum,
            if self.wal { "wal" } else { "delete" },
            self.encoding_name()
        )
    }

    /// Parses a meta value (a snapshot is untrusted input: every number is
    /// checked, so the PRAGMAs a restore runs hold only valid numbers).
    pub fn decode(s: &str) -> Option<SqliteSettings> {
        let mut out = SqliteSettings {
            user_version: 0,
            application_id: 0,
            page_size: 4096,
            auto_vacuum: 0,
            wal: false,
            encoding: 1,
        };
        for part in s.split(' ') {
            let (k, v) = part.split_once('=')?;
            match k {
                "user_version" => out.user_version = v.parse().ok()?,
                "application_id" => out.application_id = v.parse().ok()?,
                "page_size" => {
                    let n: u32 = v.parse().ok()?;
                    if !(512..=65536).contains(&n) || !n.is_power_of_two() {
                        return None;
                    }
                    out.page_size = n;
                }
                "auto_vacuum" => {
                    let n: u8 = v.parse().ok()?;
                    if n > 2 {
                        return None;
                    }
                    out.auto_vacuum = n;
                }
                "journal_mode" => out.wal = v == "wal",
                "encoding" => {
                    out.encoding = ENCODINGS.iter().position(|e| *e == v)? as u8 + 1;
                }
                // (Settings a later version may add.)
                _ => {}
            }
        }
        Some(out)
    }
}

/// Reads the selected tables of one database (all user tables and views
/// when `tables` is empty) in one read transaction, writing row maps and
/// table objects to `sink`.
pub fn scan(
    src: &DbSource,
    sink: &dyn ObjectSink,
    chunker: &Chunker,
    progress: &dyn Progress,
    rows_cache: Option<&RowCacheCtx<'_>>,
) -> Result<ScanResult> {
    if pg::is_url_path(&src.path) {
        return pg::scan(src, sink, chunker, progress, rows_cache);
    }
    let path = &src.path;
    let c = open_read(path)?;
    let r = c
        .execute_batch("BEGIN DEFERRED")
        .map_err(|e| db_error(path, e))
        .and_then(|()| scan_in(&c, src, sink, chunker, progress));
    let _ = c.execute_batch("ROLLBACK");
    r.map_err(|e| read_only_error(path, e))
}

/// A read-only open cannot roll back a hot journal (a writer that stopped
/// mid-transaction), nor make a WAL database's -shm: SQLite then says
/// "attempt to write a readonly database", which reads as if sp-sync wrote.
fn read_only_error(path: &Path, e: SyncError) -> SyncError {
    if !e.to_string().contains("readonly database") {
        return e;
    }
    let mut journal = path.as_os_str().to_owned();
    journal.push("-journal");
    let why = if Path::new(&journal).exists() {
        "it has a hot journal (a writer stopped mid-transaction), which a read cannot roll \
         back: open it once with sqlite3 or its application, then snapshot again"
    } else {
        "sp-sync only reads it, and SQLite needs to write beside it (a WAL database's -shm, \
         or a journal to recover): run as a user who may write its folder"
    };
    SyncError::Database(format!("{}: cannot be read: {why}", path.display()))
}

fn scan_in(
    c: &Connection,
    src: &DbSource,
    sink: &dyn ObjectSink,
    chunker: &Chunker,
    progress: &dyn Progress,
) -> Result<ScanResult> {
    let path = &src.path;
    let settings = SqliteSettings::read(c, path)?;
    let schema = read_schema(c, path)?;
    let mut virtual_tables: Vec<&str> = Vec::new();
    for s in &schema {
        if s.kind == "table" && starts_with_ignore_case(&s.sql, "CREATE VIRTUAL") {
            virtual_tables.push(&s.name);
        }
    }
    let shadow: Vec<String> = {
        let mut st = c
            .prepare("SELECT name FROM pragma_table_list WHERE schema = 'main' AND type IN ('shadow', 'virtual')")
            .map_err(|e| db_error(path, e))?;
        let rows = st
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| db_error(path, e))?;
        rows.collect::<std::result::Result<_, _>>()
            .map_err(|e| db_error(path, e))?
    };
    let wanted = |name: &str| src.tables.is_empty() || src.tables.iter().any(|t| t == name);
    for t in src.tables.iter().filter(|_| !src.missing_ok) {
        let found = schema
            .iter()
            .any(|s| (s.kind == "table" || s.kind == "view") && &s.name == t);
        if !found {
            return Err(SyncError::NotFound(format!(
                "{}: no table {t}",
                path.display()
            )));
        }
    }
    let mut out = ScanResult {
        sqlite: Some(settings),
        ..Default::default()
    };
    for s in &schema {
        if (s.kind != "table" && s.kind != "view")
            || (is_internal(&s.name) && !is_stat_schema(&s.name, &s.sql))
            || !wanted(&s.name)
        {
            continue;
        }
        if shadow.contains(&s.name) {
            if src.tables.is_empty() {
                tracing::warn!(
                    "{}: skipping {} (virtual tables and their shadow tables are not supported)",
                    path.display(),
                    s.name
                );
                continue;
            }
            return Err(SyncError::Database(format!(
                "{}: {} is a virtual table (or belongs to one), which sp-sync cannot snapshot",
                path.display(),
                s.name
            )));
        }
        let extras: Vec<Extra> = schema
            .iter()
            .filter(|x| x.tbl_name == s.name && (x.kind == "index" || x.kind == "trigger"))
            .map(|x| Extra {
                kind: if x.kind == "index" {
                    ExtraKind::Index
                } else {
                    ExtraKind::Trigger
                },
                name: x.name.clone(),
                ordinal: x.ordinal,
                sql: x.sql.clone(),
            })
            .collect();
        let table = if s.kind == "table" {
            progress.stage(&format!("table {}", s.name));
            let mut t = table_data(c, path, &s.name)?;
            let (n, root) = read_rows(c, path, &s.name, &t, sink, chunker, progress)?;
            t.rows = n;
            t.root = root;
            out.rows.insert(s.name.clone(), n);
            Some(t)
        } else {
            None
        };
        let obj = TableObject {
            engine: Default::default(),
            name: s.name.clone(),
            sql: s.sql.clone(),
            ordinal: s.ordinal,
            table,
            extras,
        };
        let bytes = obj.encode_checked().map_err(|why| {
            SyncError::Database(format!(
                "{}: {} {:?} cannot be snapshotted: {why} (rename it, or leave it out with --table)",
                path.display(),
                if obj.is_view() { "view" } else { "table" },
                s.name
            ))
        })?;
        let id = sink.put(ObjectType::Table, &bytes)?;
        out.objects.insert(s.name.clone(), id);
    }
    Ok(out)
}

/// Reads a table's rows into a row map: this thread steps SQLite and
/// encodes rows into batches; another builds the map (boundary hashes, node
/// hashes, compression), so the two halves of the work overlap.
fn read_rows(
    c: &Connection,
    path: &Path,
    table: &str,
    t: &TableData,
    sink: &dyn ObjectSink,
    chunker: &Chunker,
    progress: &dyn Progress,
) -> Result<(u64, ObjectId)> {
    let mut reader = RowReader::new(c, path, table, t)?;
    let label = format!("{}: table {table}", path.display());
    build_row_map(&label, sink, progress, |f| {
        reader.for_each(sink, chunker, progress, |k, v, _| f(k, v))
    })
}

/// A row's key for people, `table(42, 'x')`; None when it does not decode.
pub(crate) fn key_for_people(table: &str, key: &[u8]) -> Option<String> {
    let vals = value::decode_key(key).ok()?;
    let parts: Vec<String> = vals.iter().map(value::Value::to_sql).collect();
    Some(format!("{table}({})", parts.join(", ")))
}

/// Where rows go, as `(key, row)` encodings in key order.
pub(crate) type RowSink<'a> = dyn FnMut(&[u8], &[u8]) -> Result<()> + 'a;

/// Where a table read's keys go, in key order (the row cache).
pub(crate) type KeySink<'a> = dyn FnMut(&[u8]) + Send + 'a;

/// Builds a row map from `(key, row)` pairs that `fill` produces in key
/// order: `fill` runs on this thread and hands rows over in batches;
/// another thread builds the map (boundary hashes, node hashes,
/// compression), so the two halves of the work overlap. `label` prefixes
/// the builder's errors (keys out of order, duplicates).
pub(crate) fn build_row_map(
    label: &str,
    sink: &dyn ObjectSink,
    progress: &dyn Progress,
    fill: impl FnOnce(&mut RowSink<'_>) -> Result<u64>,
) -> Result<(u64, ObjectId)> {
    build_row_map_with(label, sink, progress, (false, None), fill)?
        .ok_or_else(|| SyncError::Invalid(format!("{label}: rows out of key order")))
}

/// [`build_row_map`], giving `keys` each row's key in key order, and, when
/// `nearly`, for rows that come nearly in key order (a table read in the
/// order of its heap): they are put in key order within reach (see
/// [`reorder`]). None when a row came out of reach: the caller reads the
/// rows in key order instead (what the builder stored meanwhile is left
/// for gc).
pub(crate) fn build_row_map_with(
    label: &str,
    sink: &dyn ObjectSink,
    progress: &dyn Progress,
    (nearly, mut keys): (bool, Option<&mut KeySink<'_>>),
    fill: impl FnOnce(&mut RowSink<'_>) -> Result<u64>,
) -> Result<Option<(u64, ObjectId)>> {
    const BATCH: usize = 256 << 10;
    let (tx, rx) = crossbeam_channel::bounded::<Vec<u8>>(16);
    std::thread::scope(|scope| {
        let builder = scope.spawn(move || -> Result<Option<ObjectId>> {
            let mut b = MapBuilder::batched(ObjectType::Rows, sink);
            let mut emit = |k: &[u8], v: &[u8]| {
                push_row(&mut b, label, k, v)?;
                if let Some(keys) = keys.as_mut() {
                    keys(k);
                }
                Ok(())
            };
            if nearly {
                let mut order = reorder::Reorder::new();
                for batch in rx {
                    if order.add(batch, &mut emit)? == reorder::Step::OutOfReach {
                        return Ok(None);
                    }
                }
                order.finish(&mut emit)?;
            } else {
                for batch in rx {
                    let mut r = crate::codec::Reader::new(&batch);
                    while !r.is_empty() {
                        let (k, v) = match (r.bytes(usize::MAX), r.bytes(usize::MAX)) {
                            (Ok(k), Ok(v)) => (k, v),
                            _ => return Err(SyncError::Invalid("row batch damaged".into())),
                        };
                        emit(k, v)?;
                    }
                }
            }
            b.finish().map(Some)
        });
        let mut batch: Vec<u8> = Vec::with_capacity(BATCH + 4096);
        let mut sent_ok = true;
        let read = fill(&mut |k, v| {
            crate::codec::put_varint(&mut batch, k.len() as u64);
            batch.extend_from_slice(k);
            crate::codec::put_varint(&mut batch, v.len() as u64);
            batch.extend_from_slice(v);
            if batch.len() >= BATCH {
                progress.add(0, batch.len() as u64);
                let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH + 4096));
                if tx.send(full).is_err() {
                    // The builder stopped; its error is the one to report.
                    sent_ok = false;
                    return Err(SyncError::Interrupted);
                }
            }
            Ok(())
        });
        if read.is_ok() && !batch.is_empty() {
            sent_ok &= tx.send(std::mem::take(&mut batch)).is_ok();
        }
        drop(tx);
        let built = builder
            .join()
            .map_err(|_| SyncError::Invalid("the row map builder panicked".into()))?;
        match (read, built) {
            (Ok(n), Ok(Some(root))) if sent_ok => Ok(Some((n, root))),
            // Out of reach: the read stopped because the builder did.
            (Ok(_), Ok(None)) => Ok(None),
            (Err(_), Ok(None)) if !sent_ok => Ok(None),
            (_, Err(e)) => Err(e),
            (Err(e), Ok(_)) => Err(e),
            (Ok(_), Ok(Some(_))) => Err(SyncError::Invalid("the row map builder stopped".into())),
        }
    })
}
/// Adds a row to the map, naming a duplicate key for people.
fn push_row(b: &mut MapBuilder<'_>, label: &str, k: &[u8], v: &[u8]) -> Result<()> {
    b.push(k, v).map_err(|e| {
        if b.last_key() == Some(k) {
            let key = key_for_people("", k).unwrap_or_else(|| "of another".into());
            return SyncError::Database(format!(
                "{label}: more than one row has the key {key}; a table keyed \
                 by all its columns (--key-by-all-columns) must not hold \
                 duplicate rows"
            ));
        }
        SyncError::Database(format!("{label}: {e}"))
    })
}

/// Reads several databases; table names must not collide.
pub fn scan_all(
    dbs: &[DbSource],
    sink: &dyn ObjectSink,
    chunker: &Chunker,
    progress: &dyn Progress,
    rows_cache: Option<&RowCacheCtx<'_>>,
) -> Result<ScanResult> {
    let mut all = ScanResult::default();
    for d in dbs {
        let r = scan(d, sink, chunker, progress, rows_cache)?;
        all.by_db.push(r.objects.keys().cloned().collect());
        all.settings.push(r.sqlite);
        for (name, id) in r.objects {
            if all.objects.insert(name.clone(), id).is_some() {
                return Err(SyncError::Invalid(format!(
                    "table {name} is in more than one database; a snapshot names tables by name"
                )));
            }
        }
        all.rows.extend(r.rows);
    }
    Ok(all)
}

/// Loads and decodes a table object.
pub fn load_table(src: &dyn crate::object::ObjectSource, id: &ObjectId) -> Result<TableObject> {
    let b = src.get(ObjectType::Table, id)?;
    TableObject::decode(&b).map_err(|e| crate::object::corrupt(ObjectType::Table, id, e))
}

#[cfg(test)]
mod tests {
    use super::SqliteSettings;

    /// SQLite's "readonly database" on a read says why: a hot journal, or a
    /// folder the reader may not write.
    #[test]
    fn a_read_that_sqlite_refuses_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        let e = || {
            crate::error::SyncError::Database(format!(
                "{}: attempt to write a readonly database",
                db.display()
            ))
        };
        let msg = super::read_only_error(&db, e()).to_string();
        assert!(msg.contains("may write its folder"), "{msg}");
        std::fs::write(dir.path().join("app.db-journal"), b"x").unwrap();
        let msg = super::read_only_error(&db, e()).to_string();
        assert!(msg.contains("hot journal"), "{msg}");
        let other = crate::error::SyncError::Database("x: no such table".into());
        assert_eq!(
            super::read_only_error(&db, other).to_string(),
            "database: x: no such table"
        );
    }

    /// The settings round-trip, and a snapshot's hostile value (it becomes
    /// PRAGMA statements) is refused whole unless every number is valid.
    #[test]
    fn sqlite_settings_decode_what_they_encode_and_nothing_else() {
        let st = SqliteSettings {
            user_version: -7,
            application_id: i32::MAX,
            page_size: 65536,
            auto_vacuum: 2,
            wal: true,
            encoding: 3,
        };
        assert_eq!(SqliteSettings::decode(&st.encode()), Some(st));
        for bad in [
            "user_version=1; DROP TABLE t",
            "user_version=99999999999",
            "page_size=1000",
            "page_size=131072",
            "auto_vacuum=3",
            "encoding=UTF-32",
            "encoding=utf-16le'; DROP TABLE t",
            "user_version",
            "",
        ] {
            assert_eq!(SqliteSettings::decode(bad), None, "{bad}");
        }
        // A part a later version adds is skipped.
        assert_eq!(
            SqliteSettings::decode("user_version=3 later=x").map(|s| s.user_version),
            Some(3)
        );
    }
}
