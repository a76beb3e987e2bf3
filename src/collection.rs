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
//! `to-disk` does the reverse: writes the rows' files, deletes files whose
//! key the table lacks. Writing is planned in full before anything changes,
//! so a malformed file changes nothing; `to-db` runs in one transaction.
//!
//! Rendering is stable: `---`, one `column: value` line per non-NULL column
//! in table order (key and body aside), `---`, the body. A value is written
//! plain when it reads back as itself, else as a JSON array or object when
//! it is one in canonical form, else double-quoted; `to-disk` then `to-db`
//! changes nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, params_from_iter};
use serde::{Deserialize, Serialize};

use crate::db::value::{Value, encode_key};
use crate::db::{busy_timeout, db_error, quote};
use crate::diff::ChangeKind;
use crate::error::{IoContext, Result, SyncError};

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
}

/// The computed differences of one collection, ready to apply.
pub struct Plan {
    pub config: CollectionConfig,
    pub changes: Vec<LocalChange>,
    root: PathBuf,
    columns: Vec<String>,
    key_index: usize,
    body_index: usize,
    disk: BTreeMap<Vec<u8>, Row>,
    db: BTreeMap<Vec<u8>, Row>,
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

/// Computes the differences of one collection (`root`: the working tree).
pub fn plan(root: &Path, cfg: &CollectionConfig) -> Result<Plan> {
    let db_path = root.join(&cfg.db);
    let c = open(&db_path, false)?;
    let r = plan_with(&c, root, &db_path, cfg);
    drop(c);
    r
}

fn plan_with(c: &Connection, root: &Path, db_path: &Path, cfg: &CollectionConfig) -> Result<Plan> {
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
    let columns: Vec<String> = {
        let mut st = c
            .prepare("SELECT name FROM pragma_table_xinfo(?1) WHERE hidden = 0 ORDER BY cid")
            .map_err(err)?;
        let rows = st
            .query_map([&cfg.table], |r| r.get::<_, String>(0))
            .map_err(err)?;
        rows.collect::<std::result::Result<_, _>>().map_err(err)?
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
            db.insert(key, Row { path: None, values });
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
        let full = dir.join(&rel);
        let text = std::fs::read(&full).ctx("reading", &full)?;
        let shown = Path::new(&cfg.dir).join(&rel).display().to_string();
        let text =
            String::from_utf8(text).map_err(|_| invalid(format!("{shown}: not UTF-8 text")))?;
        let values = file_row(&text, &rel, &shown, &columns, key_index, body_index, cfg)?;
        let values = normalize(c, db_path, &columns, values)?;
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
        disk.insert(
            key,
            Row {
                path: Some(rel),
                values,
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
                if row_hash(&d.values)? == row_hash(&b.values)? {
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
        });
    }
    Ok(Plan {
        config: cfg.clone(),
        changes,
        root: root.to_path_buf(),
        columns,
        key_index,
        body_index,
        disk,
        db,
    })
}

fn row_hash(values: &[Value]) -> Result<blake3::Hash> {
    let mut h = blake3::Hasher::new();
    for v in values {
        // Each value's key encoding is self-delimiting and exact.
        h.update(&encode_key(std::slice::from_ref(v))?);
    }
    Ok(h.finalize())
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

/// Renders a value for front matter so that it reads back as itself.
fn render_value(name: &str, v: &Value) -> Result<String> {
    let reads_back = |s: &str| -> bool {
        let doc = format!("x: {s}\n");
        match serde_norway::from_str::<serde_norway::Mapping>(&doc) {
            Ok(m) => m
                .get("x")
                .and_then(|y| yaml_value(y).ok())
                .is_some_and(|back| &back == v),
            Err(_) => false,
        }
    };
    let candidates: Vec<String> = match v {
        Value::Null => vec!["null".into()],
        Value::Integer(i) => vec![i.to_string()],
        Value::Real(r) if r.is_infinite() => vec![if *r > 0.0 { ".inf" } else { "-.inf" }.into()],
        Value::Real(r) => vec![format!("{r:?}"), format!("{r:e}")],
        Value::Text(t) => {
            let s = String::from_utf8_lossy(t).into_owned();
            let mut c = Vec::new();
            if plain_safe(&s) {
                c.push(s.clone());
            }
            if let Ok(j) = serde_json::from_str::<serde_json::Value>(&s)
                && (j.is_array() || j.is_object())
            {
                c.push(s.clone());
            }
            c.push(serde_json::to_string(&s).unwrap_or_default());
            c
        }
        Value::Blob(_) => {
            return Err(invalid(format!(
                "column {name} holds a BLOB, which front matter cannot hold"
            )));
        }
    };
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
    for (i, name) in plan.columns.iter().enumerate() {
        if i == plan.body_index || (plan.config.key == "path" && i == plan.key_index) {
            continue;
        }
        if matches!(values[i], Value::Null) {
            continue;
        }
        let field = if plain_safe(name) && !name.contains(':') {
            name.clone()
        } else {
            serde_json::to_string(name).unwrap_or_default()
        };
        out.push_str(&field);
        out.push_str(": ");
        out.push_str(&render_value(name, &values[i])?);
        out.push('\n');
    }
    out.push_str("---\n");
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
    Ok(out)
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
    match dir {
        Direction::ToDatabase => to_db(plan),
        Direction::ToDisk => to_disk(plan),
    }
}

fn to_db(plan: &Plan) -> Result<ApplyReport> {
    let mut rep = ApplyReport::default();
    if plan.changes.is_empty() {
        return Ok(rep);
    }
    let path = plan.root.join(&plan.config.db);
    let c = open(&path, true)?;
    let table = quote(&plan.config.table);
    let key_col = quote(&plan.columns[plan.key_index]);
    let dberr = |e| db_error(&path, e);
    c.execute_batch("BEGIN IMMEDIATE").map_err(dberr)?;
    let r = (|| -> Result<()> {
        let cols: Vec<String> = plan.columns.iter().map(|c| quote(c)).collect();
        let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
        for ch in &plan.changes {
            let k = encode_key(std::slice::from_ref(&ch.key))?;
            let ctx = |e: rusqlite::Error| {
                SyncError::Database(format!("{}: {}: {e}", path.display(), ch.path))
            };
            match ch.change {
                ChangeKind::Added => {
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
                ChangeKind::Removed => {
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

fn to_disk(plan: &Plan) -> Result<ApplyReport> {
    let mut rep = ApplyReport::default();
    // Render everything first: a row that cannot be written stops the run
    // before any file changes.
    let mut writes: Vec<(PathBuf, String)> = Vec::new();
    let mut removes: Vec<PathBuf> = Vec::new();
    for ch in &plan.changes {
        let k = encode_key(std::slice::from_ref(&ch.key))?;
        let full = plan.root.join(&ch.path);
        match ch.change {
            ChangeKind::Added => removes.push(full),
            _ => {
                let row = &plan.db[&k];
                writes.push((full, render(plan, &row.values)?));
            }
        }
    }
    for (p, text) in writes {
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
        std::fs::remove_file(&p).ctx("removing", &p)?;
        rep.removed_files += 1;
    }
    Ok(rep)
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
            let s = render_value("c", &v).unwrap();
            let m: serde_norway::Mapping = serde_norway::from_str(&format!("x: {s}\n")).unwrap();
            assert_eq!(yaml_value(m.get("x").unwrap()).unwrap(), v, "{s}");
        }
        assert!(render_value("c", &Value::Blob(vec![1])).is_err());
    }
}
