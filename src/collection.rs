//! Local collections: a folder of markdown files with YAML front matter kept
//! in step with a SQLite table, both ways, by hash.
//!
//! Each file is one row: its key comes from a front-matter field (or is the
//! file's path relative to the folder), every other front-matter field goes
//! to the column of the same name, and the markdown after the front matter
//! goes to the body column. Columns a file does not mention are NULL.
//! Values are compared after SQLite's column affinity is applied (through a
//! temporary table shaped like the real one), so what `to-db` wrote compares
//! equal when read back.
//!
//! Changes are named by what `to-db` would do to the table: `added` (a file
//! whose key the table lacks), `removed` (a row no file has), `modified`.
//!
//! Sync is three-way: the state both sides agreed on at the last successful
//! `to-db` / `to-disk` is recorded in the store ([`Base`], the ref
//! `local/<collection>`: per key, the hash of its values on each side), so
//! each differing key knows which side changed ([`Side`]), and
//! [`Plan::decide`] turns that into an [`Action`] for the direction: the
//! source's change flows, a target-only change is kept, both is a conflict
//! (left alone; `--force`: the source wins). Without a record only keys the
//! target lacks are created. Writing is planned in full before anything
//! changes, so a malformed file changes nothing; `to-db` runs in one
//! transaction (per database), stopped by an interrupt before its commit.
//!
//! Rendering is stable: `---`, one `column: value` line per non-NULL column
//! in table order (key and body aside), `---`, the body. A value is written
//! in the first form that reads back as itself: a BOOLEAN column's 0/1 as
//! `false`/`true`, JSON text of a list or map as a YAML flow collection,
//! else plain, else as JSON, else double-quoted. `to-disk` over an existing
//! file keeps every unchanged field as written and writes a changed one in
//! its old style (a boolean stays a boolean, a block list a block list),
//! checked by reading the result back; `to-disk` then `to-db` changes nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, params_from_iter};
use serde::{Deserialize, Serialize};

use crate::db::table::{Column, FLAG_WITHOUT_ROWID, TableData, TableObject};
use crate::db::value::{Cell, Value, decode_row, encode_cell, encode_key};
use crate::db::{busy_timeout, db_error, quote};
use crate::diff::ChangeKind;
use crate::error::{IoContext, Result, SyncError};
use crate::id::{ObjectId, ObjectType};
use crate::object::snapshot::Snapshot;
use crate::object::{ObjectSink, ObjectSource};
use crate::pmap::{MapBuilder, MapIter};
use crate::store::Store;

fn default_glob() -> String {
    "**/*.md".into()
}

/// `[[collection]]` in `sp-sync.toml`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CollectionConfig {
    pub name: String,
    /// The folder of markdown files, relative to the working-tree root.
    pub dir: String,
    /// Which files under `dir` belong (gitignore-style glob, default `**/*.md`).
    #[serde(default = "default_glob")]
    pub glob: String,
    /// The SQLite file, relative to the working-tree root.
    pub db: String,
    pub table: String,
    /// The front-matter field that is the key, or `path` for the file's path
    /// relative to `dir`.
    pub key: String,
    /// The column that holds the markdown body.
    pub body: String,
    /// With `key = "path"`: the column that holds the path (default `path`).
    #[serde(default)]
    pub key_column: Option<String>,
    /// Where `to-disk` writes a row that has no file yet, relative to `dir`,
    /// with `{column}` placeholders (default `{KEY}.md`; with `key = "path"`
    /// the key itself).
    #[serde(default)]
    pub path: Option<String>,
}

impl CollectionConfig {
    fn key_column(&self) -> &str {
        if self.key == "path" {
            self.key_column.as_deref().unwrap_or("path")
        } else {
            &self.key
        }
    }
}

/// Which way `apply` goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Files to database.
    ToDatabase,
    /// Database to files.
    ToDisk,
}

/// One key whose file and row differ.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LocalChange {
    pub collection: String,
    #[serde(serialize_with = "ser_value")]
    pub key: Value,
    /// What `to-db` would do: `added`, `removed` or `modified`.
    pub change: ChangeKind,
    /// The file, relative to the working-tree root (where `to-disk` writes
    /// it, for a row without a file).
    pub path: String,
    /// For `modified`: the columns that differ.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
    /// Which side changed since the last sync (`None`: no record of one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed: Option<Side>,
    /// What `to-db` / `to-disk` does with the key (`None` for `diff`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
}

/// Which side of a key changed since the collection's last sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Files,
    Database,
    Both,
}

/// What a sync in one direction does with a key whose sides differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// The target lacks the key: it gets it.
    Create,
    /// The target's value is replaced by the source's.
    Update,
    /// The source lacks the key: the target loses it.
    Delete,
    /// Both sides changed (or there is no record to tell which did): left alone.
    Conflict,
    /// Only the target changed: left alone (the other direction carries it).
    Keep,
}

impl Action {
    pub fn verb(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::Conflict => "conflict",
            Action::Keep => "keep",
        }
    }

    /// Whether the key is written to the target.
    pub fn applies(self) -> bool {
        matches!(self, Action::Create | Action::Update | Action::Delete)
    }
}

fn ser_value<S: serde::Serializer>(v: &Value, s: S) -> std::result::Result<S::Ok, S::Error> {
    v.to_json().serialize(s)
}

impl LocalChange {
    /// The key for people: the text, or the number.
    pub fn key_text(&self) -> String {
        match &self.key {
            Value::Text(t) => String::from_utf8_lossy(t).into_owned(),
            v => v.to_sql(),
        }
    }
}

/// A row as the files have it, or as the table has it.
struct Row {
    /// Relative to the collection's folder.
    path: Option<String>,
    values: Vec<Value>,
    /// The hash of `values` (what the base records).
    hash: [u8; 32],
    /// The file's front matter, field by field as written (files only).
    front: Vec<FrontField>,
}

/// One top-level field of a file's front matter as written: its lines,
/// verbatim (`name: None` for comments and blank lines before the first field).
#[derive(Debug, Clone)]
struct FrontField {
    name: Option<String>,
    text: String,
}

/// The computed differences of one collection, ready to apply.
pub struct Plan {
    pub config: CollectionConfig,
    pub changes: Vec<LocalChange>,
    root: PathBuf,
    columns: Vec<String>,
    key_index: usize,
    body_index: usize,
    /// Declared types of the columns, upper-cased.
    types: Vec<String>,
    disk: BTreeMap<Vec<u8>, Row>,
    db: BTreeMap<Vec<u8>, Row>,
    /// The state at the last sync, if recorded.
    base: Option<Base>,
    /// The direction `decide` was given.
    dir: Option<Direction>,
}

fn invalid(msg: String) -> SyncError {
    SyncError::Invalid(msg)
}

/// Finds a collection by name (`None`: all of them).
pub fn select<'a>(
    all: &'a [CollectionConfig],
    name: Option<&str>,
) -> Result<Vec<&'a CollectionConfig>> {
    match name {
        None => Ok(all.iter().collect()),
        Some(n) => all
            .iter()
            .find(|c| c.name == n)
            .map(|c| vec![c])
            .ok_or_else(|| SyncError::NotFound(format!("unknown collection {n:?}"))),
    }
}

fn open(path: &Path, write: bool) -> Result<Connection> {
    if !path.is_file() {
        return Err(SyncError::NotFound(format!(
            "{}: no such database file",
            path.display()
        )));
    }
    let flags = if write {
        OpenFlags::SQLITE_OPEN_READ_WRITE
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    } | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let c = Connection::open_with_flags(path, flags).map_err(|e| db_error(path, e))?;
    c.busy_timeout(busy_timeout())
        .map_err(|e| db_error(path, e))?;
    Ok(c)
}

/// Computes the differences of one collection (`root`: the working tree),
/// each key's changed side told by `base` (the state at the last sync).
pub fn plan(root: &Path, cfg: &CollectionConfig, base: Option<Base>) -> Result<Plan> {
    let db_path = root.join(&cfg.db);
    let c = open(&db_path, false)?;
    let r = plan_with(&c, root, &db_path, cfg, base);
    drop(c);
    r
}

fn interrupted() -> Result<()> {
    if crate::progress::interrupted() {
        return Err(SyncError::Interrupted);
    }
    Ok(())
}

fn plan_with(
    c: &Connection,
    root: &Path,
    db_path: &Path,
    cfg: &CollectionConfig,
    base: Option<Base>,
) -> Result<Plan> {
    let err = |e| db_error(db_path, e);
    let exists: i64 = c
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
            [&cfg.table],
            |r| r.get(0),
        )
        .map_err(err)?;
    if exists == 0 {
        return Err(SyncError::NotFound(format!(
            "{}: no table {} (collection {})",
            db_path.display(),
            cfg.table,
            cfg.name
        )));
    }
    let (columns, types): (Vec<String>, Vec<String>) = {
        let mut st = c
            .prepare("SELECT name, type FROM pragma_table_xinfo(?1) WHERE hidden = 0 ORDER BY cid")
            .map_err(err)?;
        let rows = st
            .query_map([&cfg.table], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?.to_ascii_uppercase(),
                ))
            })
            .map_err(err)?;
        let all: Vec<(String, String)> =
            rows.collect::<std::result::Result<_, _>>().map_err(err)?;
        all.into_iter().unzip()
    };
    let find = |name: &str| columns.iter().position(|c| c.eq_ignore_ascii_case(name));
    let key_index = find(cfg.key_column()).ok_or_else(|| {
        SyncError::Database(format!(
            "{}: table {} has no column {} (the key of collection {})",
            db_path.display(),
            cfg.table,
            cfg.key_column(),
            cfg.name
        ))
    })?;
    let body_index = find(&cfg.body).ok_or_else(|| {
        SyncError::Database(format!(
            "{}: table {} has no column {} (the body of collection {})",
            db_path.display(),
            cfg.table,
            cfg.body,
            cfg.name
        ))
    })?;
    if key_index == body_index {
        return Err(invalid(format!(
            "collection {}: the key and the body are the same column",
            cfg.name
        )));
    }
    // The table's rows.
    let mut db: BTreeMap<Vec<u8>, Row> = BTreeMap::new();
    {
        let cols: Vec<String> = columns.iter().map(|c| quote(c)).collect();
        let mut st = c
            .prepare(&format!(
                "SELECT {} FROM {}",
                cols.join(", "),
                quote(&cfg.table)
            ))
            .map_err(err)?;
        let mut rows = st.query([]).map_err(err)?;
        while let Some(r) = rows.next().map_err(err)? {
            let mut values = Vec::with_capacity(columns.len());
            for i in 0..columns.len() {
                values.push(Value::from_ref(r.get_ref(i).map_err(err)?));
            }
            let key = encode_key(std::slice::from_ref(&values[key_index]))?;
            let hash = row_hash(&values)?;
            db.insert(
                key,
                Row {
                    path: None,
                    values,
                    hash,
                    front: Vec::new(),
                },
            );
        }
    }
    // The files, normalized by the table's column affinities.
    c.execute_batch(&format!(
        "DROP TABLE IF EXISTS temp.sp_sync_norm; CREATE TEMP TABLE sp_sync_norm AS SELECT * FROM main.{} WHERE 0",
        quote(&cfg.table)
    ))
    .map_err(err)?;
    let dir = root.join(&cfg.dir);
    let mut disk: BTreeMap<Vec<u8>, Row> = BTreeMap::new();
    for rel in list_files(&dir, &cfg.glob)? {
        interrupted()?;
        let full = dir.join(&rel);
        let text = std::fs::read(&full).ctx("reading", &full)?;
        let shown = Path::new(&cfg.dir).join(&rel).display().to_string();
        let text =
            String::from_utf8(text).map_err(|_| invalid(format!("{shown}: not UTF-8 text")))?;
        let values = file_row(&text, &rel, &shown, &columns, key_index, body_index, cfg)?;
        let values = normalize(c, db_path, &columns, values)?;
        let front = split_front_matter(&text, &shown)
            .map(|(f, _)| front_fields(f))
            .unwrap_or_default();
        let key = encode_key(std::slice::from_ref(&values[key_index]))?;
        if let Some(prev) = disk.get(&key) {
            return Err(invalid(format!(
                "{shown}: key {} is also the key of {}",
                values[key_index].to_sql(),
                Path::new(&cfg.dir)
                    .join(prev.path.as_deref().unwrap_or(""))
                    .display()
            )));
        }
        let hash = row_hash(&values)?;
        disk.insert(
            key,
            Row {
                path: Some(rel),
                values,
                hash,
                front,
            },
        );
    }
    let _ = c.execute_batch("DROP TABLE IF EXISTS temp.sp_sync_norm");
    // The differences, by hash of each side's row.
    let mut changes = Vec::new();
    let mut keys: Vec<&Vec<u8>> = disk.keys().chain(db.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        let (d, b) = (disk.get(k), db.get(k));
        let (change, columns_changed) = match (d, b) {
            (Some(d), Some(b)) => {
                if d.hash == b.hash {
                    continue;
                }
                let cols = (0..columns.len())
                    .filter(|&i| d.values[i] != b.values[i])
                    .map(|i| columns[i].clone())
                    .collect();
                (ChangeKind::Modified, cols)
            }
            (Some(_), None) => (ChangeKind::Added, Vec::new()),
            (None, Some(_)) => (ChangeKind::Removed, Vec::new()),
            (None, None) => continue,
        };
        let row = d.or(b).map(|r| &r.values);
        let rel = match d.and_then(|d| d.path.clone()) {
            Some(p) => p,
            None => new_path(cfg, &columns, row.map(Vec::as_slice).unwrap_or(&[]))?,
        };
        changes.push(LocalChange {
            collection: cfg.name.clone(),
            key: row.map(|v| v[key_index].clone()).unwrap_or(Value::Null),
            change,
            path: Path::new(&cfg.dir).join(&rel).display().to_string(),
            columns: columns_changed,
            changed: base.as_ref().map(|base| {
                let e = base.entries.get(k).map(|(_, e)| *e).unwrap_or_default();
                let file_changed = d.map(|r| r.hash) != e.file;
                let db_changed = b.map(|r| r.hash) != e.row;
                match (file_changed, db_changed) {
                    (true, false) => Side::Files,
                    (false, true) => Side::Database,
                    // Neither changed, yet they differ: the record itself
                    // holds two sides (not something sp-sync writes).
                    _ => Side::Both,
                }
            }),
            action: None,
        });
    }
    Ok(Plan {
        config: cfg.clone(),
        changes,
        root: root.to_path_buf(),
        columns,
        types,
        key_index,
        body_index,
        disk,
        db,
        base,
        dir: None,
    })
}

fn row_hash(values: &[Value]) -> Result<[u8; 32]> {
    let mut h = blake3::Hasher::new();
    for v in values {
        // Each value's key encoding is self-delimiting and exact.
        h.update(&encode_key(std::slice::from_ref(v))?);
    }
    Ok(*h.finalize().as_bytes())
}

impl Plan {
    /// Decides what a sync in direction `dir` does with each changed key.
    /// A key flows when only the source changed since the last sync; a key
    /// changed only on the target is kept; changed on both sides, it is a
    /// conflict. Without a record of the last sync, only a key the target
    /// lacks flows (nothing is lost by creating it); any other difference
    /// is a conflict, since it cannot be told from an edit on the target.
    /// `force`: every difference flows (the source wins).
    pub fn decide(&mut self, dir: Direction, force: bool) {
        self.dir = Some(dir);
        for ch in &mut self.changes {
            let (create, delete) = match dir {
                Direction::ToDatabase => (ChangeKind::Added, ChangeKind::Removed),
                Direction::ToDisk => (ChangeKind::Removed, ChangeKind::Added),
            };
            let flow = if ch.change == create {
                Action::Create
            } else if ch.change == delete {
                Action::Delete
            } else {
                Action::Update
            };
            let source_changed = match dir {
                Direction::ToDatabase => Side::Files,
                Direction::ToDisk => Side::Database,
            };
            ch.action = Some(match ch.changed {
                _ if force => flow,
                Some(s) if s == source_changed => flow,
                Some(Side::Both) => Action::Conflict,
                Some(_) => Action::Keep,
                None if flow == Action::Create => Action::Create,
                None => Action::Conflict,
            });
        }
    }

    /// Whether the state of the last sync was recorded.
    pub fn has_base(&self) -> bool {
        self.base.is_some()
    }

    /// The record's snapshot (to compare-and-swap the ref from).
    pub fn base_id(&self) -> Option<ObjectId> {
        self.base.as_ref().map(|b| b.id)
    }

    /// The record after `apply` in `dir` succeeded: every key whose sides
    /// now agree, at that value; a key left alone keeps its old record.
    pub fn next_base(&self) -> Result<BTreeMap<Vec<u8>, (Value, Entry)>> {
        let mut out = BTreeMap::new();
        let acted: BTreeMap<Vec<u8>, &LocalChange> = self
            .changes
            .iter()
            .map(|c| Ok((encode_key(std::slice::from_ref(&c.key))?, c)))
            .collect::<Result<_>>()?;
        let mut keys: Vec<&Vec<u8>> = self.disk.keys().chain(self.db.keys()).collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            let (d, b) = (self.disk.get(k), self.db.get(k));
            let key_value = d.or(b).map(|r| r.values[self.key_index].clone());
            let Some(key_value) = key_value else { continue };
            let now = match acted.get(k) {
                // In agreement.
                None => d.map(|r| r.hash),
                Some(ch) => match ch.action {
                    Some(a) if a.applies() => match self.dir {
                        Some(Direction::ToDatabase) => d.map(|r| r.hash),
                        _ => b.map(|r| r.hash),
                    },
                    _ => {
                        if let Some(old) = self.base.as_ref().and_then(|b| b.entries.get(k)) {
                            out.insert(k.clone(), old.clone());
                        }
                        continue;
                    }
                },
            };
            if let Some(h) = now {
                out.insert(
                    k.clone(),
                    (
                        key_value,
                        Entry {
                            file: Some(h),
                            row: Some(h),
                        },
                    ),
                );
            }
        }
        Ok(out)
    }
}

/// Files under `dir` whose relative path matches `glob`, sorted.
fn list_files(dir: &Path, glob: &str) -> Result<Vec<String>> {
    let matcher = globset::GlobBuilder::new(glob)
        .literal_separator(true)
        .build()
        .map_err(|e| invalid(format!("bad glob {glob:?}: {e}")))?
        .compile_matcher();
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let walk = ignore::WalkBuilder::new(dir)
        .standard_filters(false)
        .follow_links(false)
        .build();
    for e in walk {
        let e = e.map_err(|e| invalid(format!("{}: {e}", dir.display())))?;
        if !e.file_type().is_some_and(|t| t.is_file()) {
            continue;
        }
        let Ok(rel) = e.path().strip_prefix(dir) else {
            continue;
        };
        if matcher.is_match(rel) {
            match rel.to_str() {
                Some(s) => out.push(s.to_string()),
                None => {
                    return Err(invalid(format!(
                        "{}: file name is not UTF-8",
                        e.path().display()
                    )));
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Splits a markdown file into (front matter, its first line number, body).
fn split_front_matter<'a>(text: &'a str, shown: &str) -> Result<(&'a str, &'a str)> {
    let rest = text
        .strip_prefix("---\n")
        .or_else(|| text.strip_prefix("---\r\n"))
        .ok_or_else(|| {
            invalid(format!(
                "{shown}:1: no front matter (the file must start with a line ---)"
            ))
        })?;
    let mut pos = 0;
    loop {
        let line_end = rest[pos..].find('\n').map(|i| pos + i + 1);
        let line = &rest[pos..line_end.unwrap_or(rest.len())];
        if line.trim_end_matches(['\n', '\r']) == "---" {
            let body = &rest[line_end.unwrap_or(rest.len())..];
            return Ok((&rest[..pos], body));
        }
        match line_end {
            Some(e) => pos = e,
            None => {
                return Err(invalid(format!(
                    "{shown}:1: front matter is not closed (no line --- after it)"
                )));
            }
        }
    }
}

/// The line (1-based, in the file) where a top-level field is defined.
fn field_line(front: &str, field: &str) -> usize {
    for (i, line) in front.lines().enumerate() {
        if line.starts_with([' ', '\t', '#', '-']) {
            continue;
        }
        if let Some((k, _)) = line.split_once(':') {
            let k = k.trim().trim_matches(['"', '\'']);
            if k == field {
                return i + 2;
            }
        }
    }
    1
}

/// A front-matter value as a SQLite value.
fn yaml_value(v: &serde_norway::Value) -> std::result::Result<Value, String> {
    use serde_norway::Value as Y;
    Ok(match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Integer(i64::from(*b)),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Integer(i)
            } else if n.is_u64() {
                return Err(format!("{n} does not fit a 64-bit integer"));
            } else {
                Value::Real(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Y::String(s) => Value::Text(s.clone().into_bytes()),
        Y::Sequence(_) | Y::Mapping(_) => {
            let j = serde_json::to_string(v).map_err(|e| format!("cannot store as JSON: {e}"))?;
            Value::Text(j.into_bytes())
        }
        Y::Tagged(t) => return Err(format!("tagged value {} is not supported", t.tag)),
    })
}

#[allow(clippy::too_many_arguments)]
fn file_row(
    text: &str,
    rel: &str,
    shown: &str,
    columns: &[String],
    key_index: usize,
    body_index: usize,
    cfg: &CollectionConfig,
) -> Result<Vec<Value>> {
    let (front, body) = split_front_matter(text, shown)?;
    let parsed: serde_norway::Value = if front.trim().is_empty() {
        serde_norway::Value::Null
    } else {
        serde_norway::from_str(front).map_err(|e| {
            let line = e.location().map_or(1, |l| l.line() + 1);
            let msg = e.to_string();
            let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
            invalid(format!("{shown}:{line}: malformed front matter: {msg}"))
        })?
    };
    let map = match parsed {
        serde_norway::Value::Null => serde_norway::Mapping::new(),
        serde_norway::Value::Mapping(m) => m,
        _ => {
            return Err(invalid(format!(
                "{shown}:2: front matter is not a mapping of fields"
            )));
        }
    };
    let mut values = vec![Value::Null; columns.len()];
    values[body_index] = Value::Text(body.as_bytes().to_vec());
    if cfg.key == "path" {
        values[key_index] = Value::Text(rel.as_bytes().to_vec());
    }
    let mut seen_key = cfg.key == "path";
    for (k, v) in &map {
        let Some(name) = k.as_str() else {
            return Err(invalid(format!(
                "{shown}:2: a front-matter field name is not a string"
            )));
        };
        let line = field_line(front, name);
        let Some(i) = columns.iter().position(|c| c.eq_ignore_ascii_case(name)) else {
            return Err(invalid(format!(
                "{shown}:{line}: field {name} is not a column of table {}",
                cfg.table
            )));
        };
        if i == body_index || (cfg.key == "path" && i == key_index) {
            return Err(invalid(format!(
                "{shown}:{line}: field {name} is the collection's {} column; it cannot be set in front matter",
                if i == body_index { "body" } else { "path" }
            )));
        }
        values[i] =
            yaml_value(v).map_err(|e| invalid(format!("{shown}:{line}: field {name}: {e}")))?;
        if i == key_index {
            seen_key = true;
            if !matches!(values[i], Value::Text(_) | Value::Integer(_)) {
                return Err(invalid(format!(
                    "{shown}:{line}: key field {name} must be a string or an integer"
                )));
            }
        }
    }
    if !seen_key {
        return Err(invalid(format!(
            "{shown}:1: front matter has no {} field (the collection's key)",
            cfg.key
        )));
    }
    Ok(values)
}

/// Applies the table's column affinities to a row, as an INSERT would.
fn normalize(
    c: &Connection,
    path: &Path,
    columns: &[String],
    values: Vec<Value>,
) -> Result<Vec<Value>> {
    let err = |e| db_error(path, e);
    let cols: Vec<String> = columns.iter().map(|c| quote(c)).collect();
    let marks: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
    c.execute("DELETE FROM temp.sp_sync_norm", [])
        .map_err(err)?;
    c.prepare_cached(&format!(
        "INSERT INTO temp.sp_sync_norm({}) VALUES ({})",
        cols.join(", "),
        marks.join(", ")
    ))
    .and_then(|mut st| st.execute(params_from_iter(values.iter().map(Value::sql))))
    .map_err(err)?;
    let mut st = c
        .prepare_cached(&format!(
            "SELECT {} FROM temp.sp_sync_norm",
            cols.join(", ")
        ))
        .map_err(err)?;
    let mut rows = st.query([]).map_err(err)?;
    let r = rows
        .next()
        .map_err(err)?
        .ok_or_else(|| SyncError::Database("normalizing a row lost it".into()))?;
    let mut out = Vec::with_capacity(columns.len());
    for i in 0..columns.len() {
        out.push(Value::from_ref(r.get_ref(i).map_err(err)?));
    }
    Ok(out)
}

/// Where a row without a file is written, relative to the folder.
fn new_path(cfg: &CollectionConfig, columns: &[String], row: &[Value]) -> Result<String> {
    let text = |v: &Value| match v {
        Value::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
        Value::Integer(i) => Some(i.to_string()),
        _ => None,
    };
    let key = row.get(
        columns
            .iter()
            .position(|c| c.eq_ignore_ascii_case(cfg.key_column()))
            .unwrap_or(usize::MAX),
    );
    let p = match (&cfg.path, cfg.key == "path") {
        (None, true) => key.and_then(text).unwrap_or_default(),
        (None, false) => format!("{}.md", key.and_then(text).unwrap_or_default()),
        (Some(t), _) => {
            let mut out = String::new();
            let mut rest = t.as_str();
            while let Some(i) = rest.find('{') {
                out.push_str(&rest[..i]);
                let Some(j) = rest[i..].find('}') else {
                    return Err(invalid(format!(
                        "collection {}: unclosed {{ in path {t:?}",
                        cfg.name
                    )));
                };
                let name = &rest[i + 1..i + j];
                let v = columns
                    .iter()
                    .position(|c| c.eq_ignore_ascii_case(name))
                    .and_then(|k| row.get(k))
                    .ok_or_else(|| {
                        invalid(format!(
                            "collection {}: path {t:?} names no column {name}",
                            cfg.name
                        ))
                    })?;
                out.push_str(&text(v).unwrap_or_default());
                rest = &rest[i + j + 1..];
            }
            out.push_str(rest);
            out
        }
    };
    let bad = p.is_empty()
        || p.starts_with('/')
        || p.split('/')
            .any(|c| c.is_empty() || c == "." || c == ".." || c.contains('\0'));
    if bad {
        return Err(invalid(format!(
            "collection {}: a row would be written to {p:?}, which is not a relative path inside {}",
            cfg.name, cfg.dir
        )));
    }
    let m = globset::GlobBuilder::new(&cfg.glob)
        .literal_separator(true)
        .build()
        .map_err(|e| invalid(format!("bad glob {:?}: {e}", cfg.glob)))?
        .compile_matcher();
    if !m.is_match(&p) {
        return Err(invalid(format!(
            "collection {}: a row would be written to {p}, which the glob {:?} does not match",
            cfg.name, cfg.glob
        )));
    }
    Ok(p)
}

/// How a field was written, to write a new value the same way.
struct Hint {
    value: serde_norway::Value,
    /// A block (multi-line) collection.
    block: bool,
    /// Written with double quotes somewhere.
    quoted: bool,
}

impl Hint {
    fn of(f: &FrontField) -> Option<Hint> {
        let m: serde_norway::Mapping = serde_norway::from_str(&f.text).ok()?;
        let (_, value) = m.into_iter().next()?;
        let after = f.text.split_once(':').map_or("", |(_, r)| r);
        Some(Hint {
            value,
            block: after
                .trim_start_matches([' ', '\t'])
                .starts_with(['\n', '\r']),
            quoted: after.contains('"'),
        })
    }
}

/// A YAML scalar inside a flow collection: plain when it reads back as the
/// same string, else JSON-quoted.
fn flow_scalar(s: &str) -> String {
    let plain = plain_safe(s)
        && !s.contains([',', '[', ']', '{', '}', '"', '\'', '#', ':'])
        && matches!(serde_norway::from_str::<serde_norway::Value>(s),
                    Ok(serde_norway::Value::String(ref back)) if back == s);
    if plain {
        s.to_string()
    } else {
        serde_json::to_string(s).unwrap_or_default()
    }
}

/// A YAML value in flow style: `[a, b]`, `{k: v}`.
fn flow(v: &serde_norway::Value) -> Option<String> {
    use serde_norway::Value as Y;
    Some(match v {
        Y::Null => "null".into(),
        Y::Bool(b) => b.to_string(),
        Y::Number(n) => n.to_string(),
        Y::String(s) => flow_scalar(s),
        Y::Sequence(items) => {
            let parts: Option<Vec<String>> = items.iter().map(flow).collect();
            format!("[{}]", parts?.join(", "))
        }
        Y::Mapping(m) => {
            let mut parts = Vec::new();
            for (k, v) in m {
                parts.push(format!("{}: {}", flow(k)?, flow(v)?));
            }
            format!("{{{}}}", parts.join(", "))
        }
        Y::Tagged(_) => return None,
    })
}

/// Renders a value for front matter so that it reads back as itself: the
/// text after `name:` (a space and the value, or a block on the next
/// lines). `ty`: the column's declared type (upper case); `hint`: how the
/// field was written before. A BOOLEAN column (or a field written as a
/// boolean) renders 0/1 as `false`/`true`; JSON text of a list or map
/// renders as a YAML list or map (block style if it was written so).
fn render_value(name: &str, v: &Value, ty: &str, hint: Option<&Hint>) -> Result<String> {
    use serde_norway::Value as Y;
    let reads_back = |s: &str| -> bool {
        let doc = format!("x:{s}\n");
        match serde_norway::from_str::<serde_norway::Mapping>(&doc) {
            Ok(m) => m
                .get("x")
                .and_then(|y| yaml_value(y).ok())
                .is_some_and(|back| &back == v),
            Err(_) => false,
        }
    };
    let mut candidates: Vec<String> = Vec::new();
    let was_bool = hint.is_some_and(|h| matches!(h.value, Y::Bool(_)));
    if let Value::Integer(i @ (0 | 1)) = v
        && (ty.contains("BOOL") || was_bool)
    {
        candidates.push(if *i == 1 { " true" } else { " false" }.into());
    }
    match v {
        Value::Null => candidates.push(" null".into()),
        Value::Integer(i) => candidates.push(format!(" {i}")),
        Value::Real(r) if r.is_infinite() => {
            candidates.push(if *r > 0.0 { " .inf" } else { " -.inf" }.into())
        }
        Value::Real(r) => candidates.extend([format!(" {r:?}"), format!(" {r:e}")]),
        Value::Text(t) => {
            let s = String::from_utf8_lossy(t).into_owned();
            let is_json = serde_json::from_str::<serde_json::Value>(&s)
                .is_ok_and(|j| j.is_array() || j.is_object());
            if is_json {
                let y = serde_norway::from_str::<Y>(&s).ok();
                let json_first = hint.is_some_and(|h| h.quoted && !h.block);
                if json_first {
                    candidates.push(format!(" {s}"));
                }
                if let Some(Y::Sequence(items)) = &y
                    && hint.is_some_and(|h| h.block)
                    && !items.is_empty()
                {
                    let lines: Option<Vec<String>> = items
                        .iter()
                        .map(|i| flow(i).map(|f| format!("\n  - {f}")))
                        .collect();
                    if let Some(l) = lines {
                        candidates.push(l.concat());
                    }
                }
                if let Some(f) = y.as_ref().and_then(flow) {
                    candidates.push(format!(" {f}"));
                }
                candidates.push(format!(" {s}"));
            }
            if plain_safe(&s) {
                candidates.push(format!(" {s}"));
            }
            candidates.push(format!(
                " {}",
                serde_json::to_string(&s).unwrap_or_default()
            ));
        }
        Value::Blob(_) => {
            return Err(invalid(format!(
                "column {name} holds a BLOB, which front matter cannot hold"
            )));
        }
    }
    candidates
        .into_iter()
        .find(|c| reads_back(c))
        .ok_or_else(|| {
            invalid(format!(
                "column {name}: value {} cannot be written as front matter",
                v.to_sql()
            ))
        })
}

/// Splits front matter into its top-level fields, as written.
fn front_fields(front: &str) -> Vec<FrontField> {
    let mut out: Vec<FrontField> = Vec::new();
    for line in front.split_inclusive('\n') {
        let starts = !line.starts_with([' ', '\t', '#', '-', '\n', '\r']) && line.contains(':');
        if starts {
            let name = line
                .split_once(':')
                .map(|(k, _)| k.trim().trim_matches(['"', '\'']).to_string());
            out.push(FrontField {
                name,
                text: line.to_string(),
            });
        } else if let Some(last) = out.last_mut() {
            last.text.push_str(line);
        } else {
            out.push(FrontField {
                name: None,
                text: line.to_string(),
            });
        }
    }
    out
}

fn plain_safe(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    !s.contains(['\n', '\r', '\t'])
        && !s.contains(": ")
        && !s.contains(" #")
        && !s.ends_with([' ', ':'])
        && (first.is_alphanumeric() || first == '_' || first == '/' || first == '.')
}

/// Renders a row as a markdown file.
fn render(plan: &Plan, values: &[Value]) -> Result<String> {
    let mut out = String::from("---\n");
    for (i, v) in values.iter().enumerate() {
        if i == plan.body_index || (plan.config.key == "path" && i == plan.key_index) {
            continue;
        }
        if matches!(v, Value::Null) {
            continue;
        }
        out.push_str(&render_field(plan, i, v, None)?);
    }
    out.push_str("---\n");
    push_body(plan, &mut out, values)?;
    Ok(out)
}

/// One field of front matter: `name: value` and a newline (or a block).
fn render_field(plan: &Plan, i: usize, v: &Value, was: Option<&FrontField>) -> Result<String> {
    let name = &plan.columns[i];
    let field = match was.and_then(|f| f.text.split_once(':')) {
        Some((k, _)) => k.to_string(),
        None if plain_safe(name) && !name.contains(':') => name.clone(),
        None => serde_json::to_string(name).unwrap_or_default(),
    };
    let hint = was.and_then(Hint::of);
    let value = render_value(name, v, &plan.types[i], hint.as_ref())?;
    Ok(format!("{field}:{value}\n"))
}

/// A row over the file it was read from: fields whose values did not change
/// are kept as written (order, quoting, comments), changed ones are written
/// in the style they had, new ones appended in table order.
fn render_over(plan: &Plan, old: &Row, values: &[Value]) -> Result<String> {
    let mut out = String::from("---\n");
    let mut seen = vec![false; plan.columns.len()];
    let skip =
        |i: usize| i == plan.body_index || (plan.config.key == "path" && i == plan.key_index);
    for f in &old.front {
        let i = f
            .name
            .as_deref()
            .and_then(|n| plan.columns.iter().position(|c| c.eq_ignore_ascii_case(n)));
        let Some(i) = i.filter(|&i| !skip(i)) else {
            out.push_str(&f.text);
            continue;
        };
        seen[i] = true;
        if old.values[i] == values[i] {
            out.push_str(&f.text);
        } else if !matches!(values[i], Value::Null) {
            out.push_str(&render_field(plan, i, &values[i], Some(f))?);
        }
    }
    for i in 0..plan.columns.len() {
        if !seen[i] && !skip(i) && !matches!(values[i], Value::Null) {
            out.push_str(&render_field(plan, i, &values[i], None)?);
        }
    }
    out.push_str("---\n");
    push_body(plan, &mut out, values)?;
    Ok(out)
}

fn push_body(plan: &Plan, out: &mut String, values: &[Value]) -> Result<()> {
    match &values[plan.body_index] {
        Value::Null => {}
        Value::Text(t) => out.push_str(&String::from_utf8_lossy(t)),
        _ => {
            return Err(invalid(format!(
                "collection {}: the body column {} holds a value that is not text",
                plan.config.name, plan.config.body
            )));
        }
    }
    Ok(())
}

/// What `apply` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ApplyReport {
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    pub written: u64,
    pub removed_files: u64,
}

/// Applies a plan in one direction.
pub fn apply(plan: &Plan, dir: Direction) -> Result<ApplyReport> {
    apply_many(&[plan], dir)
}

/// Applies plans in one direction; `to-db` applies them in one transaction
/// (they must share their database: group them by `config.db`), so an
/// error or an interrupt anywhere leaves the database as it was.
pub fn apply_many(plans: &[&Plan], dir: Direction) -> Result<ApplyReport> {
    match dir {
        Direction::ToDatabase => to_db(plans),
        Direction::ToDisk => {
            let mut total = ApplyReport::default();
            for p in plans {
                let r = to_disk(p)?;
                total.written += r.written;
                total.removed_files += r.removed_files;
            }
            Ok(total)
        }
    }
}

fn to_db(plans: &[&Plan]) -> Result<ApplyReport> {
    let mut rep = ApplyReport::default();
    let Some(first) = plans.first() else {
        return Ok(rep);
    };
    if !plans.iter().any(|p| p.changes.iter().any(|c| applies(&c))) {
        return Ok(rep);
    }
    let path = first.root.join(&first.config.db);
    if plans.iter().any(|p| p.root.join(&p.config.db) != path) {
        return Err(invalid(
            "collections applied together must share their database".into(),
        ));
    }
    let c = open(&path, true)?;
    let dberr = |e| db_error(&path, e);
    c.execute_batch("BEGIN IMMEDIATE").map_err(dberr)?;
    let r = (|| -> Result<()> {
        for plan in plans {
            to_db_changes(&c, &path, plan, &mut rep)?;
        }
        // The last moment to stop: after it, the transaction is committed.
        interrupted()
    })();
    match r {
        Ok(()) => {
            c.execute_batch("COMMIT").map_err(dberr)?;
            Ok(rep)
        }
        Err(e) => {
            let _ = c.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

fn to_db_changes(c: &Connection, path: &Path, plan: &Plan, rep: &mut ApplyReport) -> Result<()> {
    let table = quote(&plan.config.table);
    let key_col = quote(&plan.columns[plan.key_index]);
    {
        let cols: Vec<String> = plan.columns.iter().map(|c| quote(c)).collect();
        let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
        for ch in plan.changes.iter().filter(applies) {
            interrupted()?;
            let k = encode_key(std::slice::from_ref(&ch.key))?;
            let ctx = |e: rusqlite::Error| {
                SyncError::Database(format!("{}: {}: {e}", path.display(), ch.path))
            };
            match ch.action {
                Some(Action::Create) => {
                    let row = &plan.disk[&k];
                    c.prepare_cached(&format!(
                        "INSERT INTO {table}({}) VALUES ({})",
                        cols.join(", "),
                        marks.join(", ")
                    ))
                    .and_then(|mut st| {
                        st.execute(params_from_iter(row.values.iter().map(Value::sql)))
                    })
                    .map_err(ctx)?;
                    rep.inserted += 1;
                }
                Some(Action::Delete) => {
                    c.prepare_cached(&format!("DELETE FROM {table} WHERE {key_col} = ?1"))
                        .and_then(|mut st| st.execute([ch.key.sql()]))
                        .map_err(ctx)?;
                    rep.deleted += 1;
                }
                _ => {
                    let row = &plan.disk[&k];
                    let idx: Vec<usize> = plan
                        .columns
                        .iter()
                        .enumerate()
                        .filter(|(_, n)| ch.columns.contains(n))
                        .map(|(i, _)| i)
                        .collect();
                    let sets: Vec<String> = idx
                        .iter()
                        .map(|&i| format!("{} = ?", quote(&plan.columns[i])))
                        .collect();
                    let mut params: Vec<crate::db::value::Sql<'_>> =
                        idx.iter().map(|&i| row.values[i].sql()).collect();
                    params.push(ch.key.sql());
                    c.prepare_cached(&format!(
                        "UPDATE {table} SET {} WHERE {key_col} = ?",
                        sets.join(", ")
                    ))
                    .and_then(|mut st| st.execute(params_from_iter(params)))
                    .map_err(ctx)?;
                    rep.updated += 1;
                }
            }
        }
        Ok(())
    }
}

fn applies(c: &&LocalChange) -> bool {
    c.action.is_some_and(Action::applies)
}

fn to_disk(plan: &Plan) -> Result<ApplyReport> {
    let mut rep = ApplyReport::default();
    if !plan.changes.iter().any(|c| applies(&c)) {
        return Ok(rep);
    }
    // Render everything first: a row that cannot be written stops the run
    // before any file changes. An updated file keeps how it was written
    // where the result reads back as the row (checked through the table's
    // affinities); otherwise it is rendered afresh.
    let db_path = plan.root.join(&plan.config.db);
    let c = open(&db_path, false)?;
    c.execute_batch(&format!(
        "DROP TABLE IF EXISTS temp.sp_sync_norm; CREATE TEMP TABLE sp_sync_norm AS SELECT * FROM main.{} WHERE 0",
        quote(&plan.config.table)
    ))
    .map_err(|e| db_error(&db_path, e))?;
    let mut writes: Vec<(PathBuf, String)> = Vec::new();
    let mut removes: Vec<PathBuf> = Vec::new();
    for ch in plan.changes.iter().filter(applies) {
        interrupted()?;
        let k = encode_key(std::slice::from_ref(&ch.key))?;
        let full = plan.root.join(&ch.path);
        let Some(row) = plan.db.get(&k) else {
            removes.push(full);
            continue;
        };
        let kept = match plan.disk.get(&k) {
            Some(old) => {
                let text = render_over(plan, old, &row.values)?;
                let rel = old.path.as_deref().unwrap_or("");
                let back = file_row(
                    &text,
                    rel,
                    &ch.path,
                    &plan.columns,
                    plan.key_index,
                    plan.body_index,
                    &plan.config,
                )
                .and_then(|v| normalize(&c, &db_path, &plan.columns, v));
                match back {
                    Ok(v) if v == row.values => Some(text),
                    _ => None,
                }
            }
            None => None,
        };
        let text = match kept {
            Some(t) => t,
            None => render(plan, &row.values)?,
        };
        writes.push((full, text));
    }
    let _ = c.execute_batch("DROP TABLE IF EXISTS temp.sp_sync_norm");
    drop(c);
    for (p, text) in writes {
        interrupted()?;
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).ctx("creating", d)?;
        }
        let tmp = p.with_file_name(format!(
            ".{}.sp-sync-{}.tmp",
            p.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            std::process::id()
        ));
        std::fs::write(&tmp, text.as_bytes()).ctx("writing", &tmp)?;
        std::fs::rename(&tmp, &p).ctx("renaming into", &p)?;
        rep.written += 1;
    }
    for p in removes {
        interrupted()?;
        std::fs::remove_file(&p).ctx("removing", &p)?;
        rep.removed_files += 1;
    }
    Ok(rep)
}

/// The table a collection's record holds (see `store-format.md`, "Local
/// sync records").
pub const BASE_TABLE: &str = "sp_sync_base";
const BASE_SQL: &str =
    "CREATE TABLE sp_sync_base(key PRIMARY KEY, file BLOB, row BLOB) WITHOUT ROWID";

/// What the record holds for a key: the hash of its values on each side at
/// the last sync (`None`: that side lacked the key).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Entry {
    pub file: Option<[u8; 32]>,
    pub row: Option<[u8; 32]>,
}

/// The state of a collection at its last successful `to-db` or `to-disk`.
#[derive(Debug, Clone)]
pub struct Base {
    /// The record's snapshot (what `local/<collection>` names).
    pub id: ObjectId,
    entries: BTreeMap<Vec<u8>, (Value, Entry)>,
}

impl Base {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The ref that names a collection's record.
pub fn base_ref(collection: &str) -> Result<String> {
    let name = format!("local/{collection}");
    crate::store::refs::validate_ref_name(&name).map_err(|_| {
        invalid(format!(
            "collection name {collection:?} cannot name a ref (letters, digits and ._-+@=, only)"
        ))
    })?;
    Ok(name)
}

fn hash_cell(c: &Cell, src: &dyn ObjectSource, id: &ObjectId) -> Result<Option<[u8; 32]>> {
    match c.load(src)? {
        Value::Null => Ok(None),
        Value::Blob(b) if b.len() == 32 => {
            let mut h = [0u8; 32];
            h.copy_from_slice(&b);
            Ok(Some(h))
        }
        _ => Err(crate::object::corrupt(
            ObjectType::Table,
            id,
            "a local sync record's hash is not NULL or 32 bytes",
        )),
    }
}

/// Reads a collection's record, if the store holds one.
pub fn load_base(store: &Store, collection: &str) -> Result<Option<Base>> {
    let Some(id) = store.read_ref(&base_ref(collection)?)? else {
        return Ok(None);
    };
    let snap = Snapshot::decode(&store.get(ObjectType::Snapshot, &id)?)
        .map_err(|e| crate::object::corrupt(ObjectType::Snapshot, &id, e))?;
    let bad = |why: &str| crate::object::corrupt(ObjectType::Snapshot, &id, why);
    let tid = snap
        .tables
        .get(BASE_TABLE)
        .ok_or_else(|| bad("a local sync record without its table"))?;
    let t = crate::db::load_table(store, tid)?;
    let data = t
        .table
        .filter(|d| d.columns.len() == 3 && d.key == [0])
        .ok_or_else(|| bad("a local sync record's table is not (key, file, row)"))?;
    let mut entries = BTreeMap::new();
    for item in MapIter::new(store, ObjectType::Rows, data.root) {
        let (k, v) = item?;
        let cells = decode_row(&v).map_err(|e| crate::object::corrupt(ObjectType::Rows, tid, e))?;
        let [key, file, row] = cells.as_slice() else {
            return Err(crate::object::corrupt(
                ObjectType::Rows,
                tid,
                "a local sync record's row is not 3 values",
            ));
        };
        let key = key.load(store)?;
        let e = Entry {
            file: hash_cell(file, store, tid)?,
            row: hash_cell(row, store, tid)?,
        };
        entries.insert(k, (key, e));
    }
    Ok(Some(Base { id, entries }))
}

/// Records `entries` as the collection's state: writes the objects, then
/// moves `local/<collection>` from `expected` by compare-and-swap. Nothing
/// is written when the record would not change.
pub fn save_base(
    store: &Store,
    cfg: &CollectionConfig,
    expected: Option<ObjectId>,
    entries: &BTreeMap<Vec<u8>, (Value, Entry)>,
) -> Result<Option<ObjectId>> {
    let ref_name = base_ref(&cfg.name)?;
    let session = store.writer()?;
    let chunker = crate::chunker::Chunker::new(&store.config().chunker);
    let r = (|| -> Result<ObjectId> {
        let mut mb = MapBuilder::new(ObjectType::Rows, &session);
        for (k, (key, e)) in entries {
            let mut w = crate::codec::Writer::new();
            w.varint(3);
            let hash = |h: &Option<[u8; 32]>| h.map_or(Value::Null, |h| Value::Blob(h.to_vec()));
            for v in [key.clone(), hash(&e.file), hash(&e.row)] {
                encode_cell(&mut w, v.as_ref(), &session, &chunker, false)?;
            }
            mb.push(k, &w.into_vec())?;
        }
        let root = mb.finish()?;
        let table = TableObject {
            engine: Default::default(),
            name: BASE_TABLE.into(),
            sql: BASE_SQL.into(),
            ordinal: 0,
            table: Some(TableData {
                flags: FLAG_WITHOUT_ROWID,
                columns: [("key", ""), ("file", "BLOB"), ("row", "BLOB")]
                    .into_iter()
                    .map(|(n, t)| Column {
                        name: n.into(),
                        decl_type: t.into(),
                    })
                    .collect(),
                key: vec![0],
                sequence: None,
                rows: entries.len() as u64,
                root,
            }),
            extras: Vec::new(),
        };
        session.put(ObjectType::Table, &table.encode())
    })();
    let table = match r {
        Ok(t) => t,
        Err(e) => {
            session.abort();
            return Err(e);
        }
    };
    if let Some(old) = expected {
        let snap = Snapshot::decode(&store.get(ObjectType::Snapshot, &old)?)
            .map_err(|e| crate::object::corrupt(ObjectType::Snapshot, &old, e))?;
        if snap.tables.get(BASE_TABLE) == Some(&table) {
            session.abort();
            return Ok(None);
        }
    }
    let snap = Snapshot {
        parents: expected.into_iter().collect(),
        time: crate::snapshot::now(),
        host: crate::snapshot::hostname(),
        message: format!("local sync of collection {}", cfg.name),
        tables: BTreeMap::from([(BASE_TABLE.to_string(), table)]),
        meta: BTreeMap::from([
            ("local.collection".to_string(), cfg.name.clone()),
            ("local.table".to_string(), cfg.table.clone()),
        ]),
        ..Snapshot::default()
    };
    let id = session.put(ObjectType::Snapshot, &snap.encode())?;
    session.finish()?;
    // No interrupt check here: the target has changed, and the record must
    // say so (an interrupt before the change stopped the command earlier).
    match store.update_ref(&ref_name, Some(expected), Some(id)) {
        Err(SyncError::RefConflict { .. }) => Err(invalid(format!(
            "collection {}: another local sync recorded its state meanwhile; this one's changes are applied but not recorded (run `sp-sync local diff`)",
            cfg.name
        ))),
        r => r.map(|()| Some(id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn front_matter_splits_and_reports_lines() {
        let (f, b) = split_front_matter("---\na: 1\n---\nbody\n", "x.md").unwrap();
        assert_eq!((f, b), ("a: 1\n", "body\n"));
        let (f, b) = split_front_matter("---\n---\n", "x.md").unwrap();
        assert_eq!((f, b), ("", ""));
        assert!(split_front_matter("no\n", "x.md").is_err());
        let e = split_front_matter("---\na: 1\n", "x.md").unwrap_err();
        assert!(e.to_string().contains("not closed"), "{e}");
        assert_eq!(field_line("a: 1\nb: 2\n", "b"), 3);
    }

    #[test]
    fn values_render_so_they_read_back() {
        for v in [
            Value::Integer(-5),
            Value::Real(1.5),
            Value::Real(-0.0),
            Value::Real(1e308),
            Value::Real(f64::INFINITY),
            Value::Text(b"hello world".to_vec()),
            Value::Text(b"123".to_vec()),
            Value::Text(b"true".to_vec()),
            Value::Text(b"null".to_vec()),
            Value::Text(b"a: b".to_vec()),
            Value::Text(b"- item".to_vec()),
            Value::Text(b" padded ".to_vec()),
            Value::Text(b"line\nbreak".to_vec()),
            Value::Text("unicode \u{e9}\u{1F600}".as_bytes().to_vec()),
            Value::Text(b"[\"a\",\"b\"]".to_vec()),
            Value::Text(b"[1, 2]".to_vec()),
            Value::Text(b"".to_vec()),
            Value::Text(b"#hash".to_vec()),
            Value::Text(b"2025-01-15".to_vec()),
        ] {
            let s = render_value("c", &v, "", None).unwrap();
            let m: serde_norway::Mapping = serde_norway::from_str(&format!("x:{s}\n")).unwrap();
            assert_eq!(yaml_value(m.get("x").unwrap()).unwrap(), v, "{s}");
        }
        assert!(render_value("c", &Value::Blob(vec![1]), "", None).is_err());
    }

    #[test]
    fn values_keep_their_yaml_form() {
        let list = Value::Text(b"[\"intro\",\"a b\",\"x: y\",\"true\",1]".to_vec());
        assert_eq!(
            render_value("t", &list, "JSON", None).unwrap(),
            " [intro, a b, \"x: y\", \"true\", 1]"
        );
        assert_eq!(
            render_value("d", &Value::Integer(0), "BOOLEAN", None).unwrap(),
            " false"
        );
        assert_eq!(
            render_value("d", &Value::Integer(2), "BOOLEAN", None).unwrap(),
            " 2"
        );
        assert_eq!(
            render_value("d", &Value::Integer(1), "INTEGER", None).unwrap(),
            " 1"
        );
        let was = |text: &str| {
            Hint::of(&FrontField {
                name: Some("f".into()),
                text: text.into(),
            })
        };
        let h = was("f: false\n");
        assert_eq!(
            render_value("f", &Value::Integer(1), "INTEGER", h.as_ref()).unwrap(),
            " true"
        );
        let h = was("f:\n  - a\n");
        assert_eq!(
            render_value("f", &Value::Text(b"[\"a\",\"b\"]".to_vec()), "", h.as_ref()).unwrap(),
            "\n  - a\n  - b"
        );
        let h = was("f: [\"a\"]\n");
        assert_eq!(
            render_value("f", &Value::Text(b"[\"a\",\"b\"]".to_vec()), "", h.as_ref()).unwrap(),
            " [\"a\",\"b\"]"
        );
        let m = Value::Text(b"{\"b\":1,\"a\":[true,null]}".to_vec());
        assert_eq!(
            render_value("m", &m, "JSON", None).unwrap(),
            " {b: 1, a: [true, null]}"
        );
    }

    #[test]
    fn front_matter_splits_into_fields_as_written() {
        let f = front_fields("# lead\nslug: a\ntags:\n- x\n- y\n# trailing\nt: \"q: r\"\n");
        let got: Vec<(Option<&str>, &str)> = f
            .iter()
            .map(|f| (f.name.as_deref(), f.text.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (None, "# lead\n"),
                (Some("slug"), "slug: a\n"),
                (Some("tags"), "tags:\n- x\n- y\n# trailing\n"),
                (Some("t"), "t: \"q: r\"\n"),
            ]
        );
    }
}
