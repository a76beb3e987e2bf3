//! Local collections: a folder of files kept in step with a SQLite table,
//! both ways, by hash. A collection's `format` says how a file holds a row:
//!
//! - `front-matter` (the default): markdown with YAML front matter; the
//!   fields, then the body.
//! - `sidecar`: a YAML file of fields (`skills/<id>/config.yaml`) and the
//!   body file it names (`file: SKILL.md`, the `body_field`, else
//!   `body_file`), relative to the sidecar's folder and never outside it.
//! - `yaml`: a YAML file of fields and no body (`agents/<name>.yaml`).
//!
//! Each file (each sidecar) is one row: its key comes from a field (or is
//! the file's path relative to the folder), every other field goes to the
//! column of the same name (lists and maps as JSON text, booleans as 0/1),
//! and the body goes to the body column. Columns a file does not mention are
//! NULL. Values are compared after SQLite's column affinity is applied
//! (through a temporary table shaped like the real one), so what `to-db`
//! wrote compares equal when read back.
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
//! Rendering is stable: one `column: value` line per non-NULL column in
//! table order (key and body aside), between `---` lines and before the
//! body for front matter. A value is written in the first form that reads
//! back as itself: a BOOLEAN column's 0/1 as `false`/`true`, JSON text of a
//! list or map as a YAML flow collection, else plain, else double-quoted.
//! `to-disk` over an existing file keeps every unchanged field as written
//! and writes a changed one in its old style: a boolean stays a boolean, a
//! block collection keeps the text of its unchanged items and entries and
//! stays block with its indentation (lists of maps too), a
//! flow one flow, each string keeps the quoting it had (a new one takes the
//! quoting most had), a `|` block stays one; the result is checked by
//! reading it back, and a file that would get the bytes it has is not
//! written. `to-disk` then `to-db` changes nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params_from_iter};
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

/// How a collection's files hold its rows.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// Markdown with YAML front matter: the fields, then the body.
    #[default]
    FrontMatter,
    /// A YAML file of fields (the sidecar) beside a body file it names
    /// (`body_field`, else `body_file`), relative to the sidecar's folder:
    /// `skills/<id>/config.yaml` with `file: SKILL.md`.
    Sidecar,
    /// A YAML file of fields, no body (`agents/<name>.yaml`).
    Yaml,
}

/// `[[collection]]` in `sp-sync.toml`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CollectionConfig {
    /// The collection's name (`--collection NAME`, the ref `local/NAME`).
    pub name: String,
    /// The folder of the collection's files, relative to the working-tree root.
    pub dir: String,
    /// How each file holds a row (default `front-matter`).
    #[serde(default)]
    pub format: Format,
    /// Which files under `dir` are rows (gitignore-style glob; default
    /// `**/*.md`, `*/config.yaml` for a sidecar collection, `**/*.yaml` for
    /// a YAML one). For a sidecar collection they are the sidecars.
    #[serde(default)]
    pub glob: Option<String>,
    /// The SQLite file, relative to the working-tree root.
    pub db: String,
    /// The table the rows live in.
    pub table: String,
    /// The field that is the key, or `path` for the file's path relative
    /// to `dir`.
    pub key: String,
    /// The column that holds the body (the markdown after the front matter,
    /// or the sidecar's body file); none for a `yaml` collection.
    #[serde(default)]
    pub body: Option<String>,
    /// Sidecar collections: the field naming the body file, relative to the
    /// sidecar's folder (e.g. `file`, as in `file: SKILL.md`).
    #[serde(default)]
    pub body_field: Option<String>,
    /// Sidecar collections: the body file when `body_field` is absent or
    /// unset in a sidecar (e.g. `SKILL.md`).
    #[serde(default)]
    pub body_file: Option<String>,
    /// With `key = "path"`: the column that holds the path (default `path`).
    #[serde(default)]
    pub key_column: Option<String>,
    /// Where `to-disk` writes a row that has no file yet, relative to `dir`,
    /// with `{column}` placeholders (default `{KEY}.md`, `{KEY}/config.yaml`
    /// for a sidecar collection, `{KEY}.yaml` for a YAML one; with
    /// `key = "path"` the key itself).
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

    /// The glob that picks the collection's files (the format's default
    /// unless set).
    pub fn glob(&self) -> &str {
        match (&self.glob, self.format) {
            (Some(g), _) => g,
            (None, Format::FrontMatter) => "**/*.md",
            (None, Format::Sidecar) => "*/config.yaml",
            (None, Format::Yaml) => "**/*.yaml",
        }
    }

    /// What the fields are called in messages.
    fn fields_word(&self) -> &'static str {
        match self.format {
            Format::FrontMatter => "front matter",
            Format::Sidecar | Format::Yaml => "YAML",
        }
    }

    /// The settings that only make sense together.
    fn check(&self) -> Result<()> {
        let bad = |m: &str| Err(invalid(format!("collection {}: {m}", self.name)));
        match self.format {
            Format::FrontMatter | Format::Sidecar if self.body.is_none() => {
                return bad("needs body = \"COLUMN\" (the column that holds the body)");
            }
            Format::Yaml if self.body.is_some() => {
                return bad("a yaml collection has no body (remove body =)");
            }
            Format::Sidecar if self.body_field.is_none() && self.body_file.is_none() => {
                return bad(
                    "a sidecar collection needs body_field (the field naming the body file) or body_file",
                );
            }
            Format::FrontMatter | Format::Yaml
                if self.body_field.is_some() || self.body_file.is_some() =>
            {
                return bad("body_field and body_file are for format = \"sidecar\"");
            }
            _ => {}
        }
        if let Some(f) = &self.body_file {
            safe_rel(f).map_err(|why| {
                invalid(format!("collection {}: body_file {f:?} {why}", self.name))
            })?;
        }
        // Sync writes both: they stay inside the project (a sp-sync.toml
        // a restore brought could otherwise point them anywhere).
        for (what, p) in [("dir", &self.dir), ("db", &self.db)] {
            if safe_rel(p).is_err() {
                // (A PostgreSQL URL, which a collection does not take, is
                // shown without its password.)
                let shown = crate::db::pg::display_location(Path::new(p));
                return Err(invalid(format!(
                    "collection {}: {what} {shown:?} is not a relative path inside the project (no `..`, `.` or absolute path)",
                    self.name
                )));
            }
        }
        Ok(())
    }
}

/// Checks that `p` is a relative path that stays where it is put: no
/// absolute path, no `..`, `.` or empty component.
fn safe_rel(p: &str) -> std::result::Result<(), &'static str> {
    let bad = p.is_empty()
        || p.starts_with('/')
        || p.contains(['\\', '\0'])
        || (p.len() >= 2 && p.as_bytes()[1] == b':')
        || p.split('/').any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        Err("is not a relative path inside the collection's folder")
    } else {
        Ok(())
    }
}

/// Refuses a path under `dir` that passes through a symbolic link (which
/// could lead outside the collection's folder).
fn no_links(dir: &Path, rel: &str, shown: &str) -> Result<()> {
    let mut cur = dir.to_path_buf();
    for c in rel.split('/') {
        cur.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(invalid(format!(
                    "{shown}: {} is a symbolic link; a collection's files must be inside its folder",
                    cur.display()
                )));
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    Ok(())
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
    /// it, for a row without a file; the folder and glob, `content/posts/*.md`,
    /// for a row without a file that `to-disk` has no place for).
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
    /// A sidecar's body file, relative to the collection's folder.
    body_path: Option<String>,
    values: Vec<Value>,
    /// The hash of `values` (what the base records).
    hash: [u8; 32],
    /// The file's front matter, field by field as written (files only).
    front: Vec<FrontField>,
    /// The BLAKE3 of each of the row's files as read, by path relative to
    /// the folder (files only): `to-disk` replaces or removes a file only
    /// while it still holds those bytes.
    seen: Vec<(String, [u8; 32])>,
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
    body_index: Option<usize>,
    /// Declared types of the columns, upper-cased.
    types: Vec<String>,
    disk: BTreeMap<Vec<u8>, Row>,
    db: BTreeMap<Vec<u8>, Row>,
    /// The state at the last sync, if recorded.
    base: Option<Base>,
    /// The direction `decide` was given.
    dir: Option<Direction>,
}

impl Plan {
    /// How many rows the collection's table holds now.
    pub fn rows_read(&self) -> usize {
        self.db.len()
    }

    /// How many rows the collection's files hold now.
    pub fn files_read(&self) -> usize {
        self.disk.len()
    }
}

fn invalid(msg: String) -> SyncError {
    SyncError::Invalid(msg)
}

/// A collection's folder and database, as they resolve (through any
/// symlink on the way), lie inside the project `root`: sync writes both.
fn inside_project(root: &Path, cfg: &CollectionConfig) -> Result<()> {
    let top = crate::sources::canonical(root);
    for (what, p) in [("dir", &cfg.dir), ("db", &cfg.db)] {
        if let Some(store) = crate::restore::store_holding(&root.join(p)) {
            return Err(invalid(format!(
                "collection {}: {what} {p:?} lies in the store at {}; sync never writes there",
                cfg.name,
                store.display()
            )));
        }
        let at = crate::sources::canonical(&root.join(p));
        if !at.starts_with(&top) {
            return Err(invalid(format!(
                "collection {}: {what} {p:?} leads to {}, outside the project (through a symbolic link); \
                 sync writes only inside the project",
                cfg.name,
                at.display()
            )));
        }
    }
    Ok(())
}

/// What no two collections may share (audit 26):
/// - a name: they would share one record, and the first one's sync would
///   read the other's record as its own and delete the rows of files it
///   never had;
/// - a database's table: a collection syncs its whole table, so each would
///   take the other's rows for its own (writing them as its files), and
///   the deletion of those copies would delete the other's rows;
/// - a name one folder below another's (`x` and `x/y`): the refs of their
///   records, `local/x` and `local/x/y`, cannot both exist.
fn check_together(all: &[CollectionConfig]) -> Result<()> {
    for (i, a) in all.iter().enumerate() {
        for b in &all[..i] {
            if a.name == b.name {
                return Err(invalid(format!(
                    "two collections are named {:?}; each needs a name of its own",
                    a.name
                )));
            }
            if a.db == b.db && a.table.eq_ignore_ascii_case(&b.table) {
                return Err(invalid(format!(
                    "collections {} and {} both sync table {} of {}; a collection syncs a whole table, \
                     so each needs a table of its own",
                    b.name, a.name, a.table, a.db
                )));
            }
            let below = |x: &str, y: &str| y.strip_prefix(x).is_some_and(|r| r.starts_with('/'));
            if below(&a.name, &b.name) || below(&b.name, &a.name) {
                return Err(invalid(format!(
                    "collections {} and {}: one name is a folder of the other (their records \
                     local/{} and local/{} cannot both be); rename one",
                    b.name, a.name, b.name, a.name
                )));
            }
        }
    }
    Ok(())
}

/// Finds a collection by name (`None`: all of them), after checking that
/// the collections can be synced side by side.
pub fn select<'a>(
    all: &'a [CollectionConfig],
    name: Option<&str>,
) -> Result<Vec<&'a CollectionConfig>> {
    check_together(all)?;
    let picked: Vec<&CollectionConfig> = match name {
        None => all.iter().collect(),
        Some(n) => all
            .iter()
            .find(|c| c.name == n)
            .map(|c| vec![c])
            .ok_or_else(|| SyncError::NotFound(format!("unknown collection {n:?}")))?,
    };
    for c in &picked {
        c.check()?;
    }
    Ok(picked)
}

fn open(path: &Path, write: bool) -> Result<Connection> {
    if !path.is_file() {
        // (A PostgreSQL URL is no file: shown without its password.)
        return Err(SyncError::NotFound(format!(
            "{}: no such database file",
            crate::db::pg::display_location(path)
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
    cfg.check()?;
    inside_project(root, cfg)?;
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
    cfg.check()?;
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
    let body_index = match &cfg.body {
        None => None,
        Some(body) => Some(find(body).ok_or_else(|| {
            SyncError::Database(format!(
                "{}: table {} has no column {} (the body of collection {})",
                db_path.display(),
                cfg.table,
                body,
                cfg.name
            ))
        })?),
    };
    if Some(key_index) == body_index {
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
            // A statement by key must reach exactly one row: a key that is
            // NULL, or that two rows hold, would be written to one file
            // and updated or deleted in both.
            if matches!(values[key_index], Value::Null) {
                return Err(SyncError::Database(format!(
                    "{}: table {} has a row whose key {} is NULL; every row of collection {} needs a key",
                    db_path.display(),
                    cfg.table,
                    cfg.key_column(),
                    cfg.name
                )));
            }
            let key = encode_key(std::slice::from_ref(&values[key_index]))?;
            if db.contains_key(&key) {
                return Err(SyncError::Database(format!(
                    "{}: table {} holds key {} in more than one row; the key of collection {} must be unique",
                    db_path.display(),
                    cfg.table,
                    values[key_index].to_sql(),
                    cfg.name
                )));
            }
            let hash = row_hash(&values, &types, body_index)?;
            db.insert(
                key,
                Row {
                    path: None,
                    body_path: None,
                    values,
                    hash,
                    front: Vec::new(),
                    seen: Vec::new(),
                },
            );
        }
    }
    // The files, normalized by the table's column affinities.
    make_norm(c, &columns, &types).map_err(err)?;
    let dir = root.join(&cfg.dir);
    let mut disk: BTreeMap<Vec<u8>, Row> = BTreeMap::new();
    for rel in list_files(&dir, cfg.glob())? {
        interrupted()?;
        let shown = Path::new(&cfg.dir).join(&rel).display().to_string();
        let file = read_row_files(&dir, &rel, &shown, cfg)?;
        let values = fields_row(&file, &rel, &shown, &columns, key_index, body_index, cfg)?;
        let values = normalize(c, db_path, &columns, values)?;
        let front = front_fields(&file.fields);
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
        let hash = row_hash(&values, &types, body_index)?;
        disk.insert(
            key,
            Row {
                path: Some(rel),
                body_path: file.body_path,
                values,
                hash,
                front,
                seen: file.seen,
            },
        );
    }
    let _ = c.execute_batch("DROP TABLE IF EXISTS temp.sp_sync_norm");
    // Keys the key column's collation calls equal (`COLLATE NOCASE`: 'a'
    // and 'A'), which the bytes above tell apart: a statement by one key
    // would reach both rows (audit 26: an edit of a.md updated A too, and
    // its deletion deleted both).
    let same: Option<(Value, Value)> = c
        .query_row(
            &format!(
                "SELECT min({key} COLLATE BINARY), max({key} COLLATE BINARY) FROM {table} \
                 GROUP BY {key} HAVING count(*) > 1 LIMIT 1",
                key = quote(&columns[key_index]),
                table = quote(&cfg.table)
            ),
            [],
            |r| {
                Ok((
                    Value::from_ref(r.get_ref(0)?),
                    Value::from_ref(r.get_ref(1)?),
                ))
            },
        )
        .optional()
        .map_err(err)?;
    if let Some((a, b)) = same {
        return Err(SyncError::Database(format!(
            "{}: table {} holds keys {} and {}, which its key column {} calls equal (its collation); \
             the key of collection {} must be unique",
            db_path.display(),
            cfg.table,
            a.to_sql(),
            b.to_sql(),
            columns[key_index],
            cfg.name
        )));
    }
    // And a file's key new to the table that the collation calls equal to
    // a row's ('A' beside 'a'): its insert would make two rows of one key.
    // (Joined in one query: `m.key = n.k` compares by the column's
    // collation.)
    let new_keys: Vec<&Row> = disk
        .iter()
        .filter(|(k, _)| !db.contains_key(*k))
        .map(|(_, d)| d)
        .collect();
    if !new_keys.is_empty() {
        c.execute_batch(
            "DROP TABLE IF EXISTS temp.sp_sync_keys; CREATE TEMP TABLE sp_sync_keys(k)",
        )
        .map_err(err)?;
        let found = (|| -> rusqlite::Result<Option<(Value, Value)>> {
            let mut st = c.prepare("INSERT INTO temp.sp_sync_keys VALUES (?1)")?;
            for d in &new_keys {
                st.execute([d.values[key_index].sql()])?;
            }
            c.query_row(
                &format!(
                    "SELECT n.k, m.{key} FROM temp.sp_sync_keys n JOIN main.{table} m ON m.{key} = n.k LIMIT 1",
                    key = quote(&columns[key_index]),
                    table = quote(&cfg.table)
                ),
                [],
                |r| Ok((Value::from_ref(r.get_ref(0)?), Value::from_ref(r.get_ref(1)?))),
            )
            .optional()
        })();
        let _ = c.execute_batch("DROP TABLE IF EXISTS temp.sp_sync_keys");
        if let Some((file_key, row_key)) = found.map_err(err)? {
            let file = new_keys
                .iter()
                .find(|d| d.values[key_index] == file_key)
                .and_then(|d| d.path.as_deref())
                .unwrap_or("");
            return Err(SyncError::Database(format!(
                "{}: key {} of {} and key {} of a row of table {} are equal to its key column {} \
                 (its collation); the key of collection {} must be unique",
                db_path.display(),
                file_key.to_sql(),
                Path::new(&cfg.dir).join(file).display(),
                row_key.to_sql(),
                cfg.table,
                columns[key_index],
                cfg.name
            )));
        }
    }
    // The record's columns as positions in the table now: `None` when the
    // table has the record's columns (in order, the hashes as they are),
    // `Some(Some(positions))` when columns were added since, `Some(None)`
    // when one the record has is gone.
    let recorded: Option<Option<Vec<usize>>> = base
        .as_ref()
        .and_then(|b| b.columns.as_ref())
        .filter(|rc| **rc != columns)
        .map(|rc| {
            rc.iter()
                .map(|n| columns.iter().position(|c| c == n))
                .collect::<Option<Vec<usize>>>()
        });
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
                    .filter(|&i| {
                        !same_cell(&types[i], &d.values[i], &b.values[i], Some(i) == body_index)
                    })
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
            // A row without a file: where `to-disk` would write it. A row
            // it has no place for (outside the glob, or not a path inside
            // the folder) is shown by the glob: `to-db` deletes it without
            // a path, and `to-disk` refuses it when it comes to write it.
            None => new_path(cfg, &columns, row.map(Vec::as_slice).unwrap_or(&[]))
                .unwrap_or_else(|_| cfg.glob().to_string()),
        };
        changes.push(LocalChange {
            collection: cfg.name.clone(),
            key: row.map(|v| v[key_index].clone()).unwrap_or(Value::Null),
            change,
            path: Path::new(&cfg.dir).join(&rel).display().to_string(),
            columns: columns_changed,
            changed: base.as_ref().map(|base| {
                let e = base.entries.get(k).map(|(_, e)| *e).unwrap_or_default();
                // Whether a side's row is not the one recorded. Its hash is
                // over the record's columns (`idx`: their positions now; None:
                // the table's columns, as recorded). A record written before
                // the body counted NULL as empty text matches too.
                let moved = |r: Option<&Row>, rec: Option<[u8; 32]>, idx: Option<&[usize]>| {
                    let Some(r) = r else { return rec.is_some() };
                    let all: Vec<usize>;
                    let idx = match idx {
                        Some(idx) => idx,
                        None if rec == Some(r.hash) => return false,
                        None => {
                            all = (0..columns.len()).collect();
                            &all
                        }
                    };
                    let v: Vec<Value> = idx.iter().map(|&i| r.values[i].clone()).collect();
                    let t: Vec<String> = idx.iter().map(|&i| types[i].clone()).collect();
                    let body = idx.iter().position(|&i| Some(i) == body_index);
                    let null_body = body.is_some_and(|b| matches!(v[b], Value::Null));
                    row_hash(&v, &t, body).ok() != rec
                        && !(null_body && row_hash(&v, &t, None).ok() == rec)
                };
                let (file_changed, db_changed) = match &recorded {
                    // The columns the record's hashes are over, as now.
                    Some(Some(idx)) => {
                        // Where the two sides differ in a column added
                        // since: a file that lacks its field has the
                        // migration's value to take (the database's
                        // change). A file that names it was written since
                        // (the files' change), and the table's value, unless
                        // NULL, may be the application's as well as the
                        // column's default: no one can tell, so both (a
                        // conflict; audit 26 found a filled-in field
                        // replaced by the default, exit 0).
                        let (mut file_added, mut db_added) = (false, false);
                        if let (Some(d), Some(b)) = (d, b) {
                            for i in (0..columns.len()).filter(|i| !idx.contains(i)) {
                                if same_cell(
                                    &types[i],
                                    &d.values[i],
                                    &b.values[i],
                                    Some(i) == body_index,
                                ) {
                                    continue;
                                }
                                let named = d.front.iter().any(|f| {
                                    f.name
                                        .as_deref()
                                        .is_some_and(|n| n.eq_ignore_ascii_case(&columns[i]))
                                });
                                file_added |= named;
                                db_added |= !named || !matches!(b.values[i], Value::Null);
                            }
                        }
                        (
                            moved(d, e.file, Some(idx)) || file_added,
                            moved(b, e.row, Some(idx)) || db_added,
                        )
                    }
                    // A column the record has is gone: no side's change can
                    // be told; as for the first time.
                    Some(None) => (d.is_some(), b.is_some()),
                    None => (moved(d, e.file, None), moved(b, e.row, None)),
                };
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

/// A row's hash, over each value's exact key encoding; in a column
/// declared JSON, a list or map counts by its meaning (`["a", "b"]` as an
/// application wrote it equals `["a","b"]` as a file gives it, and a map's
/// key order does not count).
/// The body column (`body`, its position) counts NULL as empty text: a
/// file's body cannot tell them apart, so a NULL body written to a file
/// and read back is the same row (and never written over as '').
fn row_hash(values: &[Value], types: &[String], body: Option<usize>) -> Result<[u8; 32]> {
    let mut h = blake3::Hasher::new();
    let empty = Value::Text(Vec::new());
    for (i, v) in values.iter().enumerate() {
        let v = if Some(i) == body && matches!(v, Value::Null) {
            &empty
        } else {
            v
        };
        let canon = types.get(i).and_then(|ty| json_meaning(ty, v));
        let v = canon.as_ref().map_or(v, |j| j);
        // Each value's key encoding is self-delimiting and exact.
        crate::db::value::hash_key_of(&mut h, v)?;
    }
    Ok(*h.finalize().as_bytes())
}

/// In a column declared JSON, the canonical text of a value that is JSON
/// text of a list or map (keys sorted, no spaces); `None` for any other.
fn json_meaning(ty: &str, v: &Value) -> Option<Value> {
    if !ty.contains("JSON") {
        return None;
    }
    let Value::Text(t) = v else { return None };
    let j = serde_json::from_slice::<serde_json::Value>(t).ok()?;
    if !(j.is_array() || j.is_object()) {
        return None;
    }
    serde_json::to_string(&j)
        .ok()
        .map(|s| Value::Text(s.into_bytes()))
}

/// Whether two values of a column are the same, as `row_hash` counts them
/// (`is_body`: the body column, where NULL is empty text).
fn same_cell(ty: &str, a: &Value, b: &Value, is_body: bool) -> bool {
    let blank = |v: &Value| matches!(v, Value::Null) || matches!(v, Value::Text(t) if t.is_empty());
    a == b
        || (is_body && blank(a) && blank(b))
        || matches!(
            (json_meaning(ty, a), json_meaning(ty, b)),
            (Some(x), Some(y)) if x == y
        )
}

impl Plan {
    /// Decides what a sync in direction `dir` does with each changed key.
    /// A key flows when only the source changed since the last sync; a key
    /// changed only on the target is kept; changed on both sides, it is a
    /// conflict. Without a record of the last sync, only a key the target
    /// lacks flows (nothing is lost by creating it); any other difference
    /// is a conflict, since it cannot be told from an edit on the target.
    /// `force`: a conflict flows too (the source wins); a key changed only
    /// on the target is still kept.
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
                Some(s) if s == source_changed => flow,
                Some(Side::Both) if force => flow,
                Some(Side::Both) => Action::Conflict,
                // (Even with --force: a change of the target alone is no
                // conflict, and the source has nothing to say about it.)
                Some(_) => Action::Keep,
                None if flow == Action::Create => Action::Create,
                None if force => flow,
                None => Action::Conflict,
            });
        }
    }

    /// Whether the state of the last sync was recorded.
    /// The working tree the plan was made in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The table's columns, in order.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

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
        self.next_base_of(None)
    }

    /// [`next_base`](Self::next_base) of a run that stopped midway: the
    /// keys in `done` as they are now, every other key as recorded before.
    pub fn next_base_done(
        &self,
        done: &std::collections::BTreeSet<Vec<u8>>,
    ) -> Result<BTreeMap<Vec<u8>, (Value, Entry)>> {
        self.next_base_of(Some(done))
    }

    fn next_base_of(
        &self,
        done: Option<&std::collections::BTreeSet<Vec<u8>>>,
    ) -> Result<BTreeMap<Vec<u8>, (Value, Entry)>> {
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
                    Some(a) if a.applies() && done.is_none_or(|d| d.contains(k)) => {
                        match self.dir {
                            Some(Direction::ToDatabase) => d.map(|r| r.hash),
                            _ => b.map(|r| r.hash),
                        }
                    }
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
        let e = e.map_err(|e| walk_error(dir, &e))?;
        let Ok(rel) = e.path().strip_prefix(dir) else {
            continue;
        };
        if !e.file_type().is_some_and(|t| t.is_file()) {
            // A symlink, fifo or socket named like a row's file: skipping it
            // would read as its row deleted (and `to-db` would delete it).
            if !e.file_type().is_some_and(|t| t.is_dir())
                && !rel.as_os_str().is_empty()
                && matcher.is_match(rel)
            {
                return Err(invalid(format!(
                    "{}: not a regular file (a symlink?); local sync reads and writes regular files only",
                    e.path().display()
                )));
            }
            continue;
        }
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

/// A folder walk's error in one line: the path it is about (else `dir`)
/// and the system's words, each once (the walker's own text repeats the
/// path).
fn walk_error(dir: &Path, e: &ignore::Error) -> SyncError {
    fn path_of(e: &ignore::Error) -> Option<&Path> {
        match e {
            ignore::Error::WithPath { path, .. } => Some(path),
            ignore::Error::WithDepth { err, .. } | ignore::Error::WithLineNumber { err, .. } => {
                path_of(err)
            }
            ignore::Error::Loop { child, .. } => Some(child),
            _ => None,
        }
    }
    let path = path_of(e).unwrap_or(dir).display();
    // The innermost cause: the walker wraps the system's error in its own,
    // whose text names the path again.
    let mut cause: &dyn std::error::Error = match e.io_error() {
        Some(io) => io
            .get_ref()
            .map_or(io as &dyn std::error::Error, |i| i as _),
        None => e,
    };
    while let Some(next) = cause.source() {
        cause = next;
    }
    invalid(format!("reading {path}: {cause}"))
}

/// Splits a markdown file into (front matter, its first line number, body).
fn split_front_matter<'a>(text: &'a str, shown: &str) -> Result<(&'a str, &'a str)> {
    if text.starts_with('\u{feff}') {
        return Err(invalid(format!(
            "{shown}:1: the file starts with a byte order mark (U+FEFF) before its ---; \
             save it as UTF-8 without one"
        )));
    }
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
fn field_line(front: &str, field: &str, offset: usize) -> usize {
    for (i, line) in front.lines().enumerate() {
        if line.starts_with([' ', '\t', '#', '-']) {
            continue;
        }
        if let Some((k, _)) = line.split_once(':') {
            let k = k.trim().trim_matches(['"', '\'']);
            if k == field {
                return i + 1 + offset;
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
                match n.as_f64() {
                    // SQLite keeps a NaN as NULL: it would not come back.
                    Some(f) if !f.is_nan() => Value::Real(f),
                    _ => return Err("NaN cannot be stored (SQLite keeps it as NULL)".into()),
                }
            }
        }
        Y::String(s) => Value::Text(s.clone().into_bytes()),
        Y::Sequence(_) | Y::Mapping(_) => {
            // JSON has no NaN or infinity: they would be stored as null
            // (audit 26).
            fn finite(v: &serde_norway::Value) -> bool {
                match v {
                    serde_norway::Value::Number(n) => n.as_f64().is_none_or(f64::is_finite),
                    serde_norway::Value::Sequence(s) => s.iter().all(finite),
                    serde_norway::Value::Mapping(m) => {
                        m.iter().all(|(k, v)| finite(k) && finite(v))
                    }
                    serde_norway::Value::Tagged(t) => finite(&t.value),
                    _ => true,
                }
            }
            if !finite(v) {
                return Err(
                    "a list or map holding NaN or infinity cannot be stored as JSON".into(),
                );
            }
            let j = serde_json::to_string(v).map_err(|e| format!("cannot store as JSON: {e}"))?;
            Value::Text(j.into_bytes())
        }
        Y::Tagged(t) => return Err(format!("tagged value {} is not supported", t.tag)),
    })
}

/// A row's files as read: the YAML text of its fields and its body.
struct RowFiles {
    /// The fields' YAML (the front matter, or the whole YAML file).
    fields: String,
    /// Lines of the file before the fields (1 for the front matter's `---`).
    offset: usize,
    /// The body (front matter's markdown, or a sidecar's body file).
    body: Option<String>,
    /// A sidecar's body file, relative to the collection's folder.
    body_path: Option<String>,
    /// The BLAKE3 of each file read, by path relative to the folder.
    seen: Vec<(String, [u8; 32])>,
}

/// A file's text and the BLAKE3 of its bytes.
fn read_text(full: &Path, shown: &str) -> Result<(String, [u8; 32])> {
    let bytes = std::fs::read(full).ctx("reading", full)?;
    let hash = *blake3::hash(&bytes).as_bytes();
    String::from_utf8(bytes)
        .map(|t| (t, hash))
        .map_err(|_| invalid(format!("{shown}: not UTF-8 text")))
}

/// Where a sidecar's body file is, relative to the collection's folder:
/// `name` relative to the sidecar's folder, refused unless it stays there.
fn body_rel_path(sidecar_rel: &str, name: &str) -> std::result::Result<String, &'static str> {
    safe_rel(name)?;
    let p = match sidecar_rel.rsplit_once('/') {
        Some((d, _)) => format!("{d}/{name}"),
        None => name.to_string(),
    };
    if p == sidecar_rel {
        return Err("is the sidecar itself");
    }
    Ok(p)
}

/// The body file a sidecar names: its `body_field`, else `body_file`.
fn sidecar_body_name(
    cfg: &CollectionConfig,
    map: &serde_norway::Mapping,
    fields: &str,
    offset: usize,
    shown: &str,
) -> Result<(String, usize)> {
    let field = cfg.body_field.as_deref();
    let line = field.map_or(1, |f| field_line(fields, f, offset));
    match field.and_then(|f| map.get(f)) {
        None | Some(serde_norway::Value::Null) => {}
        Some(serde_norway::Value::String(s)) => return Ok((s.clone(), line)),
        Some(_) => {
            return Err(invalid(format!(
                "{shown}:{line}: field {} must name the body file (a string)",
                field.unwrap_or_default()
            )));
        }
    }
    match &cfg.body_file {
        Some(f) => Ok((f.clone(), 1)),
        None => Err(invalid(format!(
            "{shown}:1: no field {} naming the body file",
            field.unwrap_or_default()
        ))),
    }
}

/// Reads the files of the row whose file is `rel` (relative to `dir`).
fn read_row_files(dir: &Path, rel: &str, shown: &str, cfg: &CollectionConfig) -> Result<RowFiles> {
    let (text, hash) = read_text(&dir.join(rel), shown)?;
    let mut seen = vec![(rel.to_string(), hash)];
    match cfg.format {
        Format::FrontMatter => {
            let (f, b) = split_front_matter(&text, shown)?;
            Ok(RowFiles {
                fields: f.to_string(),
                offset: 1,
                body: Some(b.to_string()),
                body_path: None,
                seen,
            })
        }
        Format::Yaml => Ok(RowFiles {
            fields: text,
            offset: 0,
            body: None,
            body_path: None,
            seen,
        }),
        Format::Sidecar => {
            let map = parse_fields(&text, 0, shown, cfg)?;
            let (name, line) = sidecar_body_name(cfg, &map, &text, 0, shown)?;
            let body_rel = body_rel_path(rel, &name)
                .map_err(|why| invalid(format!("{shown}:{line}: body file {name:?} {why}")))?;
            no_links(dir, &body_rel, shown)?;
            let body_shown = Path::new(&cfg.dir).join(&body_rel).display().to_string();
            let full = dir.join(&body_rel);
            if !full.is_file() {
                return Err(invalid(format!(
                    "{shown}:{line}: body file {body_shown} does not exist"
                )));
            }
            let (body, body_hash) = read_text(&full, &body_shown)?;
            seen.push((body_rel.clone(), body_hash));
            Ok(RowFiles {
                fields: text,
                offset: 0,
                body: Some(body),
                body_path: Some(body_rel),
                seen,
            })
        }
    }
}

/// Parses the fields' YAML into a mapping (empty when there is none).
fn parse_fields(
    text: &str,
    offset: usize,
    shown: &str,
    cfg: &CollectionConfig,
) -> Result<serde_norway::Mapping> {
    let word = cfg.fields_word();
    let parsed: serde_norway::Value = if text.trim().is_empty() {
        serde_norway::Value::Null
    } else {
        serde_norway::from_str(text).map_err(|e| {
            let line = e.location().map_or(1, |l| l.line() + offset);
            let msg = e.to_string();
            let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
            invalid(format!("{shown}:{line}: malformed {word}: {msg}"))
        })?
    };
    match parsed {
        serde_norway::Value::Null => Ok(serde_norway::Mapping::new()),
        serde_norway::Value::Mapping(m) => Ok(m),
        _ => Err(invalid(format!(
            "{shown}:{}: {word} is not a mapping of fields",
            1 + offset
        ))),
    }
}

/// A row from its files: each field to the column of its name, the body to
/// the body column.
fn fields_row(
    file: &RowFiles,
    rel: &str,
    shown: &str,
    columns: &[String],
    key_index: usize,
    body_index: Option<usize>,
    cfg: &CollectionConfig,
) -> Result<Vec<Value>> {
    let word = cfg.fields_word();
    let front = file.fields.as_str();
    let map = parse_fields(front, file.offset, shown, cfg)?;
    let mut values = vec![Value::Null; columns.len()];
    if let (Some(i), Some(body)) = (body_index, &file.body) {
        values[i] = Value::Text(body.as_bytes().to_vec());
    }
    if cfg.key == "path" {
        values[key_index] = Value::Text(rel.as_bytes().to_vec());
    }
    let mut seen_key = cfg.key == "path";
    // Field names match columns in any case: two fields that name one
    // column (`Title:` and `title:`) would keep only one value.
    let mut named: Vec<Option<&str>> = vec![None; columns.len()];
    for (k, v) in &map {
        let Some(name) = k.as_str() else {
            return Err(invalid(format!(
                "{shown}:{}: a {word} field name is not a string",
                1 + file.offset
            )));
        };
        let line = field_line(front, name, file.offset);
        let Some(i) = columns.iter().position(|c| c.eq_ignore_ascii_case(name)) else {
            return Err(invalid(format!(
                "{shown}:{line}: field {name} is not a column of table {}",
                cfg.table
            )));
        };
        if let Some(first) = named[i].replace(name) {
            return Err(invalid(format!(
                "{shown}:{line}: fields {first} and {name} both name column {}",
                columns[i]
            )));
        }
        if Some(i) == body_index || (cfg.key == "path" && i == key_index) {
            return Err(invalid(format!(
                "{shown}:{line}: field {name} is the collection's {} column; it cannot be set in {word}",
                if Some(i) == body_index {
                    "body"
                } else {
                    "path"
                }
            )));
        }
        values[i] =
            yaml_value(v).map_err(|e| invalid(format!("{shown}:{line}: field {name}: {e}")))?;
        if i == key_index {
            seen_key = true;
            // As written: a boolean, a list or a map would be stored as 1
            // or JSON text, and a key must read back as itself.
            let written = matches!(v, serde_norway::Value::String(_))
                || matches!(v, serde_norway::Value::Number(n) if n.is_i64());
            if !written || !matches!(values[i], Value::Text(_) | Value::Integer(_)) {
                return Err(invalid(format!(
                    "{shown}:{line}: key field {name} must be a string or an integer"
                )));
            }
        }
    }
    if !seen_key {
        return Err(invalid(format!(
            "{shown}:1: {word} has no {} field (the collection's key)",
            cfg.key
        )));
    }
    Ok(values)
}

/// Applies the table's column affinities to a row, as an INSERT would.
/// The scratch table [`normalize`] inserts into: the table's columns by
/// name, each of its affinity (SQLite's rules on the declared type), named
/// as the affinity (`TEXT`, `NUM`, `INT`, `REAL`, or none). (It was made
/// by `CREATE TABLE … AS SELECT *`, which names a column `true` or
/// `false` `columnN`: every run failed; audit 26.)
fn make_norm(c: &Connection, columns: &[String], types: &[String]) -> rusqlite::Result<()> {
    let cols: Vec<String> = columns
        .iter()
        .zip(types)
        .map(|(n, t)| {
            let t = t.to_ascii_uppercase();
            let aff = if t.contains("INT") {
                "INT"
            } else if t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") {
                "TEXT"
            } else if t.contains("BLOB") || t.is_empty() {
                ""
            } else if t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB") {
                "REAL"
            } else {
                "NUM"
            };
            format!("{} {aff}", quote(n))
        })
        .collect();
    c.execute_batch(&format!(
        "DROP TABLE IF EXISTS temp.sp_sync_norm; CREATE TEMP TABLE sp_sync_norm({})",
        cols.join(", ")
    ))
}

fn normalize(
    c: &Connection,
    path: &Path,
    columns: &[String],
    values: Vec<Value>,
) -> Result<Vec<Value>> {
    let err = |e| db_error(path, e);
    let cols: Vec<String> = columns.iter().map(|c| quote(c)).collect();
    let marks: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
    // TEXT into a column of TEXT or no (BLOB) affinity stays as it is: it
    // is not sent through (a body of many megabytes would be copied twice
    // more). The scratch table's types are the affinities' own names
    // (`CREATE TABLE … AS SELECT`: TEXT, NUM, INT, REAL, or none).
    let kept: Vec<bool> = {
        let mut st = c
            .prepare_cached("SELECT name, type FROM pragma_table_info('sp_sync_norm', 'temp')")
            .map_err(err)?;
        let types: BTreeMap<String, String> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(err)?
            .collect::<rusqlite::Result<_>>()
            .map_err(err)?;
        columns
            .iter()
            .zip(&values)
            .map(|(col, v)| {
                matches!(v, Value::Text(_))
                    && types
                        .get(col)
                        .is_some_and(|t| t.eq_ignore_ascii_case("TEXT") || t.is_empty())
            })
            .collect()
    };
    c.execute("DELETE FROM temp.sp_sync_norm", [])
        .map_err(err)?;
    c.prepare_cached(&format!(
        "INSERT INTO temp.sp_sync_norm({}) VALUES ({})",
        cols.join(", "),
        marks.join(", ")
    ))
    .and_then(|mut st| {
        st.execute(params_from_iter(
            values
                .iter()
                .zip(&kept)
                .map(|(v, k)| if *k { Value::Null.sql() } else { v.sql() }),
        ))
    })
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
    for (i, v) in values.into_iter().enumerate() {
        out.push(if kept.get(i).copied().unwrap_or(false) {
            v
        } else {
            Value::from_ref(r.get_ref(i).map_err(err)?)
        });
    }
    Ok(out)
}

/// Where a row without a file is written, relative to the folder.
fn new_path(cfg: &CollectionConfig, columns: &[String], row: &[Value]) -> Result<String> {
    // What goes into a file's name: text (UTF-8, not empty) or an integer.
    // A row with anything else has no file (audit 26: a REAL key was
    // written to `.md`, which no later run could read).
    let text = |what: &str, v: Option<&Value>| -> Result<String> {
        match v {
            Some(Value::Text(t)) if !t.is_empty() => {
                if let Ok(t) = std::str::from_utf8(t) {
                    return Ok(t.to_string());
                }
            }
            Some(Value::Integer(i)) => return Ok(i.to_string()),
            _ => {}
        }
        Err(invalid(format!(
            "collection {}: a row whose {what} is {} has no file name (it must be text or an \
             integer, not empty); nothing was written",
            cfg.name,
            v.map_or_else(|| "missing".to_string(), Value::to_sql)
        )))
    };
    let key = row.get(
        columns
            .iter()
            .position(|c| c.eq_ignore_ascii_case(cfg.key_column()))
            .unwrap_or(usize::MAX),
    );
    let key_what = format!("key {}", cfg.key_column());
    let p = match (&cfg.path, cfg.key == "path") {
        (None, true) => text(&key_what, key)?,
        (None, false) => {
            let k = text(&key_what, key)?;
            match cfg.format {
                Format::FrontMatter => format!("{k}.md"),
                Format::Sidecar => format!("{k}/config.yaml"),
                Format::Yaml => format!("{k}.yaml"),
            }
        }
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
                out.push_str(&text(&format!("column {name}"), Some(v))?);
                rest = &rest[i + j + 1..];
            }
            out.push_str(rest);
            out
        }
    };
    if safe_rel(&p).is_err() {
        return Err(invalid(format!(
            "collection {}: a row would be written to {p:?}, which is not a relative path inside {}",
            cfg.name, cfg.dir
        )));
    }
    let m = globset::GlobBuilder::new(cfg.glob())
        .literal_separator(true)
        .build()
        .map_err(|e| invalid(format!("bad glob {:?}: {e}", cfg.glob())))?
        .compile_matcher();
    if !m.is_match(&p) {
        return Err(invalid(format!(
            "collection {}: a row would be written to {p}, which the glob {:?} does not match",
            cfg.name,
            cfg.glob()
        )));
    }
    Ok(p)
}

/// How a scalar was quoted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quote {
    Plain,
    Double,
    Single,
}

/// The quoting of the first quoted scalar in a value's text (`Plain`: none).
fn quote_of(text: &str) -> Quote {
    // The last character before, on the same line, that can precede a
    // scalar (`None`: the line's start, or just after the field's colon).
    let mut prev: Option<char> = None;
    for c in text.chars() {
        match c {
            '\n' => prev = None,
            ' ' | '\t' => {}
            '#' if prev.is_none() || prev == Some(',') => return Quote::Plain,
            '"' | '\'' if matches!(prev, None | Some('[' | ',' | '-' | ':' | '{' | '?')) => {
                return if c == '"' {
                    Quote::Double
                } else {
                    Quote::Single
                };
            }
            _ => prev = Some(c),
        }
    }
    Quote::Plain
}

/// How a field was written, to write a new value the same way.
struct Hint {
    value: serde_norway::Value,
    /// A block collection (the value starts on the next line).
    block: bool,
    /// A block scalar (`|` or `>`).
    literal: bool,
    /// How its (first) quoted scalar was quoted.
    quote: Quote,
    /// The indentation of the value's first line after the field's line.
    indent: usize,
    /// How each string inside the value was quoted.
    styles: Styles,
    /// The field as written.
    text: String,
}

/// How the strings of a value were quoted, to quote them the same way.
#[derive(Debug, Clone)]
struct Styles {
    /// Each string (item, value or key) the old value held, and its quoting.
    known: std::collections::HashMap<String, Quote>,
    /// For a new string: the quoting most of the old strings had.
    default: Quote,
}

impl Styles {
    fn plain() -> Styles {
        Styles {
            known: Default::default(),
            default: Quote::Plain,
        }
    }

    /// The quoting of each string of `v` as `text` (the field as written) has it.
    fn of(v: &serde_norway::Value, text: &str) -> Styles {
        // (the string, whether it is a key)
        fn walk(v: &serde_norway::Value, is_key: bool, out: &mut Vec<(String, bool)>) {
            use serde_norway::Value as Y;
            match v {
                Y::String(s) => out.push((s.clone(), is_key)),
                Y::Sequence(items) => items.iter().for_each(|i| walk(i, false, out)),
                Y::Mapping(m) => {
                    for (k, v) in m {
                        walk(k, true, out);
                        walk(v, false, out);
                    }
                }
                _ => {}
            }
        }
        let mut strings = Vec::new();
        walk(v, false, &mut strings);
        let mut known = std::collections::HashMap::new();
        let mut count = [0usize; 3];
        for (s, is_key) in strings {
            let q = if text.contains(&double_quoted(&s)) {
                Quote::Double
            } else if text.contains(&format!("'{}'", s.replace('\'', "''"))) {
                Quote::Single
            } else {
                Quote::Plain
            };
            if !is_key {
                count[q as usize] += 1;
            }
            known.insert(s, q);
        }
        // (on a tie: plain, then double quotes)
        let default = [Quote::Single, Quote::Double, Quote::Plain]
            .into_iter()
            .max_by_key(|q| count[*q as usize])
            .filter(|q| count[*q as usize] > 0)
            .unwrap_or(quote_of(text));
        Styles { known, default }
    }

    fn quote(&self, s: &str) -> Quote {
        self.known.get(s).copied().unwrap_or(self.default)
    }

    fn key_quote(&self, s: &str) -> Quote {
        self.known.get(s).copied().unwrap_or(Quote::Plain)
    }
}

impl Hint {
    fn of(f: &FrontField) -> Option<Hint> {
        let m: serde_norway::Mapping = serde_norway::from_str(&f.text).ok()?;
        let (_, value) = m.into_iter().next()?;
        let after = f.text.split_once(':').map_or("", |(_, r)| r);
        let head = after.trim_start_matches([' ', '\t']);
        let indent = f
            .text
            .lines()
            .skip(1)
            .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .map_or(2, |l| l.len() - l.trim_start_matches(' ').len());
        let styles = Styles::of(&value, after);
        Some(Hint {
            value,
            styles,
            text: f.text.clone(),
            block: head.starts_with(['\n', '\r', '#']),
            literal: head.starts_with(['|', '>']),
            quote: quote_of(after),
            indent,
        })
    }
}

/// A string in YAML double quotes, every character YAML cannot hold raw
/// (or might read as a line break) escaped.
fn double_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20
                || (0x7f..=0x9f).contains(&(c as u32))
                || matches!(
                    c,
                    '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}'
                ) =>
            {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Where a scalar is written: it must read back as itself there.
#[derive(Clone, Copy)]
enum Place {
    /// An item of a block list (or a value in a block map).
    Block,
    /// Inside a flow collection.
    Flow,
    /// A mapping key.
    Key,
}

/// A string as a YAML scalar, in the quoting `q` when it reads back as
/// itself at `place`, else double-quoted.
fn scalar_str(s: &str, q: Quote, place: Place) -> String {
    let reads = |t: &str| -> bool {
        use serde_norway::Value as Y;
        let want = Y::String(s.to_string());
        match place {
            Place::Block => matches!(serde_norway::from_str::<Y>(&format!("- {t}\n")),
                Ok(Y::Sequence(v)) if v.len() == 1 && v[0] == want),
            Place::Flow => matches!(serde_norway::from_str::<Y>(&format!("[{t}]\n")),
                Ok(Y::Sequence(v)) if v.len() == 1 && v[0] == want),
            Place::Key => matches!(serde_norway::from_str::<Y>(&format!("{t}: x\n")),
                Ok(Y::Mapping(m)) if m.len() == 1 && m.keys().next() == Some(&want)),
        }
    };
    let plain = || {
        let flow_ok =
            !matches!(place, Place::Flow | Place::Key) || !s.contains([',', '[', ']', '{', '}']);
        (plain_safe(s) && flow_ok).then(|| s.to_string())
    };
    let single = || {
        (!s.chars()
            .any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}'))
        .then(|| format!("'{}'", s.replace('\'', "''")))
    };
    let first = match q {
        Quote::Plain => plain(),
        Quote::Single => single(),
        Quote::Double => None,
    };
    first
        .filter(|t| reads(t))
        .unwrap_or_else(|| double_quoted(s))
}

/// A YAML value in flow style (`[a, b]`, `{k: v}`), strings quoted as
/// they were (`st`).
fn flow(v: &serde_norway::Value, st: &Styles) -> Option<String> {
    use serde_norway::Value as Y;
    Some(match v {
        Y::Null => "null".into(),
        Y::Bool(b) => b.to_string(),
        Y::Number(n) => n.to_string(),
        Y::String(s) => scalar_str(s, st.quote(s), Place::Flow),
        Y::Sequence(items) => {
            let parts: Option<Vec<String>> = items.iter().map(|i| flow(i, st)).collect();
            format!("[{}]", parts?.join(", "))
        }
        Y::Mapping(m) => {
            let mut parts = Vec::new();
            for (k, v) in m {
                parts.push(format!("{}: {}", key(k, st)?, flow(v, st)?));
            }
            format!("{{{}}}", parts.join(", "))
        }
        Y::Tagged(_) => return None,
    })
}

/// A mapping key.
fn key(k: &serde_norway::Value, st: &Styles) -> Option<String> {
    match k {
        serde_norway::Value::String(s) => Some(scalar_str(s, st.key_quote(s), Place::Key)),
        other => flow(other, st),
    }
}

/// How block collections are laid out.
struct BlockStyle {
    /// Indentation of a list's `-` under a mapping key (0 or 2, usually).
    seq_in_map: usize,
    /// Indentation of a mapping under a mapping key.
    step: usize,
    styles: Styles,
}

/// A value inside a block collection on one line: a scalar, or a flow
/// collection (a list in a list, an empty one).
fn inline(v: &serde_norway::Value, st: &Styles) -> Option<String> {
    match v {
        serde_norway::Value::String(s) => Some(scalar_str(s, st.quote(s), Place::Block)),
        other => flow(other, st),
    }
}

/// A non-empty list or map in block style, each line starting with a
/// newline and `pad` spaces.
fn block(v: &serde_norway::Value, pad: usize, st: &BlockStyle, out: &mut String) -> Option<()> {
    use serde_norway::Value as Y;
    let indent = |out: &mut String, n: usize| {
        out.push('\n');
        out.extend(std::iter::repeat_n(' ', n));
    };
    match v {
        Y::Sequence(items) if !items.is_empty() => {
            for it in items {
                indent(out, pad);
                out.push_str("- ");
                match it {
                    Y::Mapping(m) if !m.is_empty() => {
                        let mut inner = String::new();
                        block(it, pad + 2, st, &mut inner)?;
                        out.push_str(inner.get(pad + 3..)?);
                    }
                    _ => out.push_str(&inline(it, &st.styles)?),
                }
            }
        }
        Y::Mapping(m) if !m.is_empty() => {
            for (k, val) in m {
                indent(out, pad);
                out.push_str(&key(k, &st.styles)?);
                out.push(':');
                match val {
                    Y::Sequence(s) if !s.is_empty() => block(val, pad + st.seq_in_map, st, out)?,
                    Y::Mapping(m) if !m.is_empty() => block(val, pad + st.step, st, out)?,
                    _ => {
                        out.push(' ');
                        out.push_str(&inline(val, &st.styles)?);
                    }
                }
            }
        }
        _ => return None,
    }
    Some(())
}

/// A block collection changed in place: the items (or entries) that are
/// still there keep their text as written, comments and all; only new or
/// changed ones are rendered. `None` when the field's text cannot be split
/// into exactly its old items.
fn surgical(h: &Hint, new: &serde_norway::Value) -> Option<String> {
    use serde_norway::Value as Y;
    let text = &h.text[..h.text.len() - trailing_comments(&h.text).len()];
    let (first, rest) = text.split_once('\n')?;
    let head = first.split_once(':')?.1;
    let pad = " ".repeat(h.indent);
    let is_seq = matches!(h.value, Y::Sequence(_));
    let mut lead = String::new();
    let mut spans: Vec<String> = Vec::new();
    for line in rest.split_inclusive('\n') {
        let starts = line.strip_prefix(pad.as_str()).is_some_and(|r| {
            if is_seq {
                r.starts_with("- ") || r.trim_end() == "-"
            } else {
                !r.starts_with([' ', '\t', '#', '-']) && !r.trim().is_empty()
            }
        });
        if starts {
            spans.push(line.to_string());
        } else if let Some(last) = spans.last_mut() {
            last.push_str(line);
        } else {
            lead.push_str(line);
        }
    }
    let st = BlockStyle {
        seq_in_map: h.indent,
        step: if h.indent == 0 { 2 } else { h.indent },
        styles: h.styles.clone(),
    };
    let fresh = |v: Y| -> Option<String> {
        let mut o = String::new();
        block(&v, h.indent, &st, &mut o)?;
        Some(format!("{}\n", o.strip_prefix('\n')?))
    };
    let mut out = String::new();
    match (&h.value, new) {
        (Y::Sequence(old), Y::Sequence(items)) if !items.is_empty() && spans.len() == old.len() => {
            let mut next = 0;
            for item in items {
                match (next..old.len()).find(|&i| old[i] == *item) {
                    Some(i) => {
                        out.push_str(&spans[i]);
                        next = i + 1;
                    }
                    None => out.push_str(&fresh(Y::Sequence(vec![item.clone()]))?),
                }
            }
        }
        (Y::Mapping(old), Y::Mapping(entries))
            if !entries.is_empty() && spans.len() == old.len() =>
        {
            for (k, v) in entries {
                match old.keys().position(|ok| ok == k) {
                    Some(i) if old.get(k) == Some(v) => out.push_str(&spans[i]),
                    _ => {
                        let mut m = serde_norway::Mapping::new();
                        m.insert(k.clone(), v.clone());
                        out.push_str(&fresh(Y::Mapping(m))?);
                    }
                }
            }
        }
        _ => return None,
    }
    Some(format!("{head}\n{lead}{}", out.strip_suffix('\n')?))
}

/// A text as a literal block scalar (`|`, `|-`, `|+`) indented by `indent`.
fn literal(s: &str, indent: usize) -> Option<String> {
    if s.is_empty() || s.chars().any(|c| c.is_control() && c != '\n') {
        return None;
    }
    let body = s.trim_end_matches('\n');
    let trailing = s.len() - body.len();
    let chomp = match trailing {
        0 => "-",
        1 => "",
        _ => "+",
    };
    let pad = " ".repeat(indent.max(1));
    let mut out = format!(" |{chomp}");
    for line in body.split('\n') {
        out.push('\n');
        if !line.is_empty() {
            out.push_str(&pad);
            out.push_str(line);
        }
    }
    for _ in 1..trailing {
        out.push('\n');
    }
    Some(out)
}

/// Renders a value for the fields so that it reads back as itself: the
/// text after `name:` (a space and the value, or a block on the next
/// lines). `ty`: the column's declared type (upper case); `hint`: how the
/// field was written before. A BOOLEAN column (or a field written as a
/// boolean) renders 0/1 as `false`/`true`; JSON text of a list or map
/// renders as a YAML list or map, in the style the field had (block or
/// flow, its indentation and quoting); a text keeps its quoting (or its
/// `|` block).
fn render_value(name: &str, v: &Value, ty: &str, hint: Option<&Hint>) -> Result<String> {
    use serde_norway::Value as Y;
    let reads_back = |s: &str| -> bool {
        let doc = format!("x:{s}\n");
        match serde_norway::from_str::<serde_norway::Mapping>(&doc) {
            Ok(m) => m
                .get("x")
                .and_then(|y| yaml_value(y).ok())
                .is_some_and(|back| same_cell(ty, &back, v, false)),
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
    let q = hint.map_or(Quote::Plain, |h| h.quote);
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
            // A field that held a string keeps holding one, even when the
            // new text reads as JSON (unless the column is declared JSON).
            let was_string =
                hint.is_some_and(|h| matches!(h.value, Y::String(_))) && !ty.contains("JSON");
            let mut texts: Vec<String> = Vec::new();
            if is_json {
                let y = serde_norway::from_str::<Y>(&s).ok();
                if let (Some(h), Some(y)) = (hint.filter(|h| h.block), &y) {
                    candidates.extend(surgical(h, y));
                    let st = BlockStyle {
                        seq_in_map: h.indent,
                        step: if h.indent == 0 { 2 } else { h.indent },
                        styles: h.styles.clone(),
                    };
                    let pad = match y {
                        Y::Mapping(_) => st.step,
                        _ => h.indent,
                    };
                    let mut out = String::new();
                    if block(y, pad, &st, &mut out).is_some() {
                        candidates.push(out);
                    }
                }
                let styles = hint.map_or_else(Styles::plain, |h| h.styles.clone());
                if let Some(f) = y.as_ref().and_then(|y| flow(y, &styles)) {
                    candidates.push(format!(" {f}"));
                }
                candidates.push(format!(" {s}"));
            }
            if let Some(l) = hint
                .filter(|h| h.literal)
                .and_then(|h| literal(&s, h.indent))
            {
                texts.push(l);
            }
            match q {
                Quote::Double => texts.push(format!(" {}", double_quoted(&s))),
                Quote::Single if !s.chars().any(char::is_control) => {
                    texts.push(format!(" '{}'", s.replace('\'', "''")))
                }
                _ => {}
            }
            if plain_safe(&s) && !is_json {
                texts.push(format!(" {s}"));
            }
            texts.push(format!(" {}", double_quoted(&s)));
            if was_string {
                candidates.splice(0..0, texts);
            } else {
                candidates.extend(texts);
            }
        }
        Value::Blob(_) => {
            return Err(invalid(format!(
                "column {name} holds a BLOB, which YAML cannot hold"
            )));
        }
    }
    candidates
        .into_iter()
        .find(|c| reads_back(c))
        .ok_or_else(|| {
            invalid(format!(
                "column {name}: value {} cannot be written as YAML",
                v.to_sql()
            ))
        })
}

/// Renders each top-level field of `text` (the YAML of a row's fields)
/// again in the style it was written, as `to-disk` does for a changed
/// field: its own value, then a list of it twice. Each result is
/// `(field, value rendered)`, `None` where the value cannot be written.
/// For the fuzz target: never panics on any text.
#[doc(hidden)]
pub fn restyle_fields(text: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    for f in front_fields(text) {
        let (Some(name), Some(hint)) = (f.name.clone(), Hint::of(&f)) else {
            continue;
        };
        let Ok(v) = yaml_value(&hint.value) else {
            continue;
        };
        out.push((name.clone(), render_value(&name, &v, "", Some(&hint)).ok()));
        let twice = serde_norway::Value::Sequence(vec![hint.value.clone(), hint.value.clone()]);
        if let Ok(v2) = yaml_value(&twice) {
            out.push((name.clone(), render_value(&name, &v2, "", Some(&hint)).ok()));
        }
    }
    out
}

/// The comment at the end of a field's first line (`name: value  # why`),
/// with the blanks before it; `None` without one. A `#` begins a comment
/// after a blank, outside a quoted scalar; the value is one line (a field
/// whose value goes on, a block scalar or collection, gives `None`).
fn line_comment(text: &str) -> Option<&str> {
    let line = text.split('\n').next()?;
    if text.len() > line.len() + 1 {
        return None;
    }
    let (_, value) = line.split_once(':')?;
    let base = line.len() - value.len();
    let b = value.as_bytes();
    let mut i = 0;
    // Where a quoted scalar may start: the value's start, after an anchor
    // or a tag, and after `[`, `{` or `,` in a flow collection.
    let mut may_quote = true;
    while i < b.len() {
        match b[i] {
            b' ' | b'\t' => {}
            b'#' if i > 0 && matches!(b[i - 1], b' ' | b'\t') => {
                let start = value[..i].trim_end_matches([' ', '\t']).len();
                return Some(&line[base + start..]);
            }
            q @ (b'"' | b'\'') if may_quote => {
                i += 1;
                while i < b.len() {
                    if b[i] == b'\\' && q == b'"' {
                        i += 1;
                    } else if b[i] == q {
                        // ('' inside single quotes is one quote.)
                        if q == b'\'' && b.get(i + 1) == Some(&b'\'') {
                            i += 1;
                        } else {
                            break;
                        }
                    }
                    i += 1;
                }
                may_quote = false;
            }
            b'[' | b'{' | b',' => may_quote = true,
            // (`: ` in a flow mapping: its value may be quoted.)
            b':' if matches!(b.get(i + 1), Some(b' ' | b'\t')) => may_quote = true,
            b'&' | b'!' if may_quote => {
                while i < b.len() && !matches!(b[i], b' ' | b'\t') {
                    i += 1;
                }
                continue;
            }
            _ => may_quote = false,
        }
        i += 1;
    }
    None
}

/// The comment lines (at the left margin, with the blank lines between
/// them) that end a field's text: they belong to what follows, and stay
/// when the field is rewritten.
fn trailing_comments(text: &str) -> &str {
    let mut start = text.len();
    let mut first_comment = None;
    for line in text.split_inclusive('\n').rev() {
        let blank = line.trim().is_empty();
        if !blank && !line.starts_with('#') {
            break;
        }
        start -= line.len();
        if line.starts_with('#') {
            first_comment = Some(start);
        }
    }
    // Not the field's first line (its `name:`), which is never a comment.
    match first_comment {
        Some(i) if i > 0 => &text[i..],
        _ => "",
    }
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

impl Plan {
    /// Whether column `i` is written as a field (not the body, not a path key).
    fn is_field(&self, i: usize) -> bool {
        Some(i) != self.body_index && !(self.config.key == "path" && i == self.key_index)
    }
}

/// A row's fields rendered afresh: one `column: value` line per non-NULL
/// column, in table order.
fn render_fields(plan: &Plan, values: &[Value]) -> Result<String> {
    let mut out = String::new();
    for (i, v) in values.iter().enumerate() {
        if !plan.is_field(i) || matches!(v, Value::Null) {
            continue;
        }
        out.push_str(&render_field(plan, i, v, None)?);
    }
    Ok(out)
}

/// One field: `name: value` and a newline (or a block).
fn render_field(plan: &Plan, i: usize, v: &Value, was: Option<&FrontField>) -> Result<String> {
    let name = &plan.columns[i];
    let field = match was.and_then(|f| f.text.split_once(':')) {
        Some((k, _)) => k.to_string(),
        None => scalar_str(name, Quote::Plain, Place::Key),
    };
    let hint = was.and_then(Hint::of);
    let value = render_value(name, v, &plan.types[i], hint.as_ref())?;
    Ok(format!("{field}:{value}\n"))
}

/// A row's fields over the text they were read from: fields whose values
/// did not change are kept as written (order, quoting, comments), changed
/// ones are written in the style they had, new ones appended in table order.
fn render_fields_over(plan: &Plan, old: &Row, values: &[Value]) -> Result<String> {
    let mut out = String::new();
    let mut seen = vec![false; plan.columns.len()];
    for f in &old.front {
        let i = f
            .name
            .as_deref()
            .and_then(|n| plan.columns.iter().position(|c| c.eq_ignore_ascii_case(n)));
        let Some(i) = i.filter(|&i| plan.is_field(i)) else {
            out.push_str(&f.text);
            continue;
        };
        seen[i] = true;
        if same_cell(&plan.types[i], &old.values[i], &values[i], false) {
            out.push_str(&f.text);
        } else {
            if !matches!(values[i], Value::Null) {
                let field = render_field(plan, i, &values[i], Some(f))?;
                // A comment on the field's line stays on it, after a value
                // that is one line too.
                match (line_comment(&f.text), field.strip_suffix('\n')) {
                    (Some(c), Some(one)) if !one.contains('\n') => {
                        out.push_str(one);
                        out.push_str(c);
                        out.push('\n');
                    }
                    _ => out.push_str(&field),
                }
            }
            out.push_str(trailing_comments(&f.text));
        }
    }
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    for i in 0..plan.columns.len() {
        if !seen[i] && plan.is_field(i) && !matches!(values[i], Value::Null) {
            out.push_str(&render_field(plan, i, &values[i], None)?);
        }
    }
    Ok(out)
}

/// A row's body as text (`None`: the collection has no body).
fn body_text(plan: &Plan, values: &[Value]) -> Result<Option<String>> {
    let Some(i) = plan.body_index else {
        return Ok(None);
    };
    match &values[i] {
        Value::Null => Ok(Some(String::new())),
        // (Bytes that are not UTF-8 would be written changed, and the
        // next to-db would write the change back over them.)
        Value::Text(t) => match std::str::from_utf8(t) {
            Ok(t) => Ok(Some(t.to_string())),
            Err(_) => Err(invalid(format!(
                "collection {}: the body column {} of key {} holds text that is not UTF-8; nothing was written",
                plan.config.name,
                plan.config.body.as_deref().unwrap_or_default(),
                values[plan.key_index].to_sql()
            ))),
        },
        _ => Err(invalid(format!(
            "collection {}: the body column {} holds a value that is not text",
            plan.config.name,
            plan.config.body.as_deref().unwrap_or_default()
        ))),
    }
}

/// Where a row's sidecar body goes, relative to the collection's folder:
/// the file its `body_field` column names (else `body_file`), next to the
/// sidecar `rel`; refused unless it stays inside the sidecar's folder.
fn row_body_path(plan: &Plan, rel: &str, values: &[Value], key: &str) -> Result<String> {
    let cfg = &plan.config;
    let named = cfg.body_field.as_deref().and_then(|f| {
        plan.columns
            .iter()
            .position(|c| c.eq_ignore_ascii_case(f))
            .and_then(|i| match &values[i] {
                Value::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
                _ => None,
            })
    });
    let name = named.or_else(|| cfg.body_file.clone()).ok_or_else(|| {
        invalid(format!(
            "collection {}: row {key} names no body file (column {})",
            cfg.name,
            cfg.body_field.as_deref().unwrap_or_default()
        ))
    })?;
    body_rel_path(rel, &name).map_err(|why| {
        invalid(format!(
            "collection {}: row {key}: body file {name:?} {why}",
            cfg.name
        ))
    })
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
                let r = to_disk(p, false, &mut Default::default())?;
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
        let select = format!(
            "SELECT {} FROM {table} WHERE {key_col} = ?1",
            cols.join(", ")
        );
        for ch in plan.changes.iter().filter(applies) {
            interrupted()?;
            let k = encode_key(std::slice::from_ref(&ch.key))?;
            let ctx = |e: rusqlite::Error| {
                SyncError::Database(format!("{}: {}: {e}", path.display(), ch.path))
            };
            // The row is as the plan read it (under this transaction's
            // write lock, it stays so): a row the application wrote since
            // is never overwritten, nor one it added or removed.
            let now: Option<[u8; 32]> = {
                let mut st = c.prepare_cached(&select).map_err(ctx)?;
                let mut rows = st.query([ch.key.sql()]).map_err(ctx)?;
                match rows.next().map_err(ctx)? {
                    None => None,
                    Some(r) => {
                        let mut values = Vec::with_capacity(plan.columns.len());
                        for i in 0..plan.columns.len() {
                            values.push(Value::from_ref(r.get_ref(i).map_err(ctx)?));
                        }
                        Some(row_hash(&values, &plan.types, plan.body_index)?)
                    }
                }
            };
            // A statement by key reaches exactly its row (the plan refused
            // keys the column's collation calls equal; an application could
            // have added one since): else the whole transaction goes back.
            let one_row = |n: usize| -> Result<()> {
                if n == 1 {
                    return Ok(());
                }
                Err(SyncError::Database(format!(
                    "{}: {}: key {} reached {n} rows of table {} (its key column's collation calls \
                     them equal); nothing was written",
                    path.display(),
                    ch.path,
                    ch.key.to_sql(),
                    plan.config.table
                )))
            };
            if now != plan.db.get(&k).map(|r| r.hash) {
                return Err(SyncError::Database(format!(
                    "{}: {}: the row changed in the database since this run read it (run `sp-sync local diff`); nothing was written",
                    path.display(),
                    ch.path
                )));
            }
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
                    let n = c
                        .prepare_cached(&format!("DELETE FROM {table} WHERE {key_col} = ?1"))
                        .and_then(|mut st| st.execute([ch.key.sql()]))
                        .map_err(ctx)?;
                    one_row(n)?;
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
                    let n = c
                        .prepare_cached(&format!(
                            "UPDATE {table} SET {} WHERE {key_col} = ?",
                            sets.join(", ")
                        ))
                        .and_then(|mut st| st.execute(params_from_iter(params)))
                        .map_err(ctx)?;
                    one_row(n)?;
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

/// `to-disk` of one collection, adding to `done` each key whose files it
/// has all written or removed (all of them when it returns `Ok`; those it
/// finished when it stops on an error or an interrupt).
pub fn apply_to_disk(
    plan: &Plan,
    done: &mut std::collections::BTreeSet<Vec<u8>>,
) -> Result<ApplyReport> {
    to_disk(plan, false, done)
}

/// Runs the checks `to-disk` makes before it writes anything (every file
/// it would write over or remove is its key's own and unchanged since it
/// was read), writing nothing: `--dry-run` then refuses what the real run
/// would (audit round 16: a dry run planned a create the run refused).
pub fn check_to_disk(plan: &Plan) -> Result<()> {
    to_disk(plan, true, &mut Default::default()).map(|_| ())
}

fn to_disk(
    plan: &Plan,
    check_only: bool,
    done: &mut std::collections::BTreeSet<Vec<u8>>,
) -> Result<ApplyReport> {
    let mut rep = ApplyReport::default();
    if !plan.changes.iter().any(|c| applies(&c)) {
        return Ok(rep);
    }
    // Render everything first: a row that cannot be written stops the run
    // before any file changes. An updated file keeps how it was written
    // where the result reads back as the row (checked through the table's
    // affinities); otherwise it is rendered afresh. Every path is checked
    // to stay inside the collection's folder.
    let cfg = &plan.config;
    let dir = plan.root.join(&cfg.dir);
    let db_path = plan.root.join(&cfg.db);
    let c = open(&db_path, false)?;
    make_norm(&c, &plan.columns, &plan.types).map_err(|e| db_error(&db_path, e))?;
    let offset = match cfg.format {
        Format::FrontMatter => 1,
        Format::Sidecar | Format::Yaml => 0,
    };
    let sidecars = globset::GlobBuilder::new(cfg.glob())
        .literal_separator(true)
        .build()
        .map_err(|e| invalid(format!("bad glob {:?}: {e}", cfg.glob())))?
        .compile_matcher();
    // (relative to the folder, text, the row's key)
    let mut writes: Vec<(String, String, Vec<u8>)> = Vec::new();
    // (relative to the folder, the row's key)
    let mut removes: Vec<(String, Vec<u8>)> = Vec::new();
    // (a sidecar's old body file, which its new one replaces; the row's key)
    let mut moved: Vec<(String, Vec<u8>)> = Vec::new();
    // Every key this run applies, in the plan's order.
    let mut keys: Vec<Vec<u8>> = Vec::new();
    for ch in plan.changes.iter().filter(applies) {
        interrupted()?;
        let k = encode_key(std::slice::from_ref(&ch.key))?;
        keys.push(k.clone());
        let old = plan.disk.get(&k);
        let Some(row) = plan.db.get(&k) else {
            if let Some(old) = old {
                removes.extend(old.path.iter().map(|p| (p.clone(), k.clone())));
                removes.extend(old.body_path.iter().map(|p| (p.clone(), k.clone())));
            }
            continue;
        };
        let rel = match old.and_then(|o| o.path.clone()) {
            Some(p) => p,
            None => new_path(cfg, &plan.columns, &row.values)?,
        };
        let body_path = match cfg.format {
            Format::Sidecar => Some(row_body_path(plan, &rel, &row.values, &ch.key_text())?),
            _ => None,
        };
        if let (Some(o), Some(bp)) = (old, &body_path)
            && let Some(obp) = &o.body_path
            && obp != bp
        {
            moved.push((obp.clone(), k.clone()));
        }
        // A body file the glob picks would be read back as a sidecar, and
        // every later run would fail on it (audit 26).
        if let Some(bp) = &body_path
            && sidecars.is_match(bp)
        {
            return Err(invalid(format!(
                "{}: the body file of key {} is a path the collection's glob {:?} picks (it \
                 would be read as a row); nothing was written",
                Path::new(&cfg.dir).join(bp).display(),
                ch.key.to_sql(),
                cfg.glob()
            )));
        }
        let body = body_text(plan, &row.values)?;
        let kept = match old {
            Some(old) => {
                let fields = render_fields_over(plan, old, &row.values)?;
                let back = RowFiles {
                    fields: fields.clone(),
                    offset,
                    body: body.clone(),
                    body_path: body_path.clone(),
                    seen: Vec::new(),
                };
                let back = fields_row(
                    &back,
                    &rel,
                    &ch.path,
                    &plan.columns,
                    plan.key_index,
                    plan.body_index,
                    cfg,
                )
                .and_then(|v| normalize(&c, &db_path, &plan.columns, v));
                match back {
                    Ok(v)
                        if v.len() == row.values.len()
                            && (0..v.len()).all(|i| {
                                same_cell(
                                    &plan.types[i],
                                    &v[i],
                                    &row.values[i],
                                    Some(i) == plan.body_index,
                                )
                            }) =>
                    {
                        Some(fields)
                    }
                    _ => None,
                }
            }
            None => None,
        };
        let fields = match kept {
            Some(t) => t,
            None => render_fields(plan, &row.values)?,
        };
        // A file written with CRLF line ends keeps them: the lines
        // rendered afresh take them too (they came out LF in a CRLF file).
        // YAML reads either alike, values in line-broken scalars too.
        let crlf = old.is_some_and(|o| o.front.iter().any(|f| f.text.contains("\r\n")));
        let fields = if crlf { crlf_lines(&fields) } else { fields };
        let nl = if crlf { "\r\n" } else { "\n" };
        match (cfg.format, body_path) {
            (Format::Sidecar, Some(bp)) => {
                writes.push((rel, fields, k.clone()));
                writes.push((bp, body.unwrap_or_default(), k));
            }
            (Format::Yaml, _) => writes.push((rel, fields, k)),
            _ => writes.push((
                rel,
                format!("---{nl}{fields}---{nl}{}", body.unwrap_or_default()),
                k,
            )),
        }
    }
    let _ = c.execute_batch("DROP TABLE IF EXISTS temp.sp_sync_norm");
    drop(c);
    // Two rows whose files the collection's `path` puts in one place: the
    // second would fail after the first was written (audit 26).
    let mut at: BTreeMap<&str, &[u8]> = BTreeMap::new();
    for (rel, _, k) in &writes {
        if let Some(other) = at.insert(rel.as_str(), k.as_slice())
            && other != k.as_slice()
        {
            let key = |k: &[u8]| {
                plan.db
                    .get(k)
                    .map_or_else(String::new, |r| r.values[plan.key_index].to_sql())
            };
            return Err(invalid(format!(
                "{}: the file of two rows, keys {} and {} (the collection's path gives them one \
                 name); nothing was written",
                Path::new(&cfg.dir).join(rel).display(),
                key(other),
                key(k)
            )));
        }
    }
    // Whose each file is, and what it held when the plan read it: a file
    // is replaced or removed only by its own row's change and only while it
    // holds those bytes. A file of another key, or one no row reads (a
    // sidecar folder's notes), is never written over; checked for every
    // file before any is written, and again just before each one is.
    // (A file two rows read — two sidecars naming one body file — is no
    // one's to write or remove: `None`.)
    let mut owner: BTreeMap<&str, (Option<&[u8]>, [u8; 32])> = BTreeMap::new();
    for (k, r) in &plan.disk {
        for (rel, h) in &r.seen {
            owner
                .entry(rel.as_str())
                .and_modify(|o| {
                    if o.0 != Some(k.as_slice()) {
                        o.0 = None;
                    }
                })
                .or_insert((Some(k.as_slice()), *h));
        }
    }
    // A body file a sidecar no longer names (`file:` changed) goes with
    // the change, as git removes a renamed file's old name: when it is the
    // row's alone and no file this run writes.
    for (obp, k) in moved {
        let sole = matches!(owner.get(obp.as_str()), Some((Some(o), _)) if *o == k.as_slice());
        if sole && !writes.iter().any(|(r, ..)| *r == obp) {
            removes.push((obp, k));
        }
    }
    for rel in writes
        .iter()
        .map(|(r, ..)| r)
        .chain(removes.iter().map(|(r, _)| r))
    {
        let shown = Path::new(&cfg.dir).join(rel).display().to_string();
        safe_rel(rel).map_err(|why| invalid(format!("collection {}: {shown} {why}", cfg.name)))?;
        no_links(&dir, rel, &shown)?;
    }
    let shown = |rel: &str| Path::new(&cfg.dir).join(rel).display().to_string();
    let unchanged = |rel: &str, key: &[u8]| -> Result<Option<Vec<u8>>> {
        let p = dir.join(rel);
        match std::fs::symlink_metadata(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(SyncError::io("reading", &p, e)),
            Ok(m) if !m.file_type().is_file() => {
                return Err(invalid(format!(
                    "{}: not a regular file; nothing more was written",
                    shown(rel)
                )));
            }
            Ok(_) => {}
        }
        let Some((k, h)) = owner.get(rel).copied() else {
            return Err(invalid(format!(
                "{}: the file is there, and is not the file of this row: not written over (move it, or rename the row's key); nothing more was written",
                shown(rel)
            )));
        };
        let Some(k) = k else {
            return Err(invalid(format!(
                "{}: the file of more than one row (sidecars naming one body file): not written over or removed; nothing more was written",
                shown(rel)
            )));
        };
        if key != k {
            return Err(invalid(format!(
                "{}: the file of another key (run `sp-sync local diff`; rename one of them); nothing more was written",
                shown(rel)
            )));
        }
        let now = std::fs::read(&p).ctx("reading", &p)?;
        if *blake3::hash(&now).as_bytes() != h {
            return Err(invalid(format!(
                "{}: changed since this run read it; not written over (run it again); nothing more was written",
                shown(rel)
            )));
        }
        Ok(Some(now))
    };
    for (rel, _, k) in &writes {
        unchanged(rel, k)?;
    }
    for (rel, k) in &removes {
        unchanged(rel, k)?;
    }
    if check_only {
        return Ok(rep);
    }
    // What a killed to-disk left in the folders it writes to.
    let mut swept = std::collections::BTreeSet::new();
    for (rel, ..) in &writes {
        if let Some(d) = dir.join(rel).parent()
            && swept.insert(d.to_path_buf())
        {
            sweep_stale_writes(d);
        }
    }
    // A key is done once all its files are written or removed (`done`:
    // what a run stopped midway records, so that the next one takes those
    // keys for agreed; audit 26 found every finished key a conflict after
    // an interrupt). An interrupt is taken between keys only. A key's new
    // files are all written (and synced) as temporary files first and
    // only then renamed into place, one right after another, so that a
    // write that fails (a full disk) changes none of them and a kill is
    // unlikely to leave a new sidecar beside its old body (a conflict on
    // every later run); then the files it no longer has go.
    // (the files each key writes, those it removes; the keys in the order
    // of their first file)
    type KeyFiles<'a> = (Vec<(&'a str, &'a str)>, Vec<&'a str>);
    let mut by_key: BTreeMap<&[u8], KeyFiles<'_>> = BTreeMap::new();
    let mut order: Vec<&[u8]> = Vec::new();
    for (rel, text, k) in &writes {
        if !by_key.contains_key(k.as_slice()) {
            order.push(k);
        }
        let e = by_key.entry(k.as_slice()).or_default();
        e.0.push((rel.as_str(), text.as_str()));
    }
    for (rel, k) in &removes {
        if !by_key.contains_key(k.as_slice()) {
            order.push(k);
        }
        by_key.entry(k.as_slice()).or_default().1.push(rel.as_str());
    }
    // (A key with no file to change is done already.)
    done.extend(
        keys.into_iter()
            .filter(|k| !by_key.contains_key(k.as_slice())),
    );
    for k in order {
        interrupted()?;
        let (key_writes, key_removes) = &by_key[k];
        // (temporary file, the file it becomes)
        let mut staged: Vec<(PathBuf, PathBuf)> = Vec::new();
        let stage = |rel: &str, text: &str, staged: &mut Vec<(PathBuf, PathBuf)>| -> Result<()> {
            let p = dir.join(rel);
            let old = unchanged(rel, k)?;
            // A file that already holds this text is left alone (its mtime too).
            if old.as_deref() == Some(text.as_bytes()) {
                return Ok(());
            }
            if let Some(d) = p.parent() {
                std::fs::create_dir_all(d).ctx("creating", d)?;
            }
            let tmp = p.with_file_name(format!(
                ".{}.sp-sync-{}.tmp",
                temp_stem(
                    &p.file_name()
                        .map(|n| n.to_string_lossy())
                        .unwrap_or_default()
                ),
                std::process::id()
            ));
            staged.push((tmp.clone(), p.clone()));
            let mut f = std::fs::File::create(&tmp).ctx("writing", &tmp)?;
            std::io::Write::write_all(&mut f, text.as_bytes()).ctx("writing", &tmp)?;
            if old.is_some() {
                // The file it replaces keeps its permissions, and its bytes
                // are not lost to a power cut between here and the rename.
                if let Ok(m) = std::fs::metadata(&p) {
                    f.set_permissions(m.permissions()).ctx("writing", &tmp)?;
                }
                f.sync_data().ctx("syncing", &tmp)?;
            }
            Ok(())
        };
        let unstage = |staged: &[(PathBuf, PathBuf)]| {
            for (tmp, _) in staged {
                let _ = std::fs::remove_file(tmp);
            }
        };
        for (rel, text) in key_writes {
            if let Err(e) = stage(rel, text, &mut staged) {
                unstage(&staged);
                return Err(e);
            }
        }
        for (i, (tmp, p)) in staged.iter().enumerate() {
            if let Err(e) = std::fs::rename(tmp, p).ctx("renaming into", p) {
                unstage(&staged[i..]);
                return Err(e);
            }
            rep.written += 1;
        }
        for rel in key_removes {
            unchanged(rel, k)?;
            let p = dir.join(rel);
            match std::fs::remove_file(&p) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                r => {
                    r.ctx("removing", &p)?;
                    rep.removed_files += 1;
                }
            }
        }
        done.insert(k.to_vec());
    }
    Ok(rep)
}

/// `text` with every line end CRLF (a bare LF becomes CRLF).
fn crlf_lines(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 16);
    let mut prev = '\0';
    for c in text.chars() {
        if c == '\n' && prev != '\r' {
            out.push('\r');
        }
        out.push(c);
        prev = c;
    }
    out
}

/// The part of a file's name its temporary file's name takes: all of it up
/// to 200 bytes (a name of up to 255 bytes, the most a file system takes,
/// would not leave room for `.` and `.sp-sync-PID.tmp`; audit 26).
fn temp_stem(name: &str) -> &str {
    let mut end = name.len().min(200);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// Removes the temporary files (`.NAME.sp-sync-PID.tmp`) in `dir` whose
/// process no longer exists: what a killed `to-disk` left.
fn sweep_stale_writes(dir: &Path) {
    crate::store::sweep_dead(dir, "to-disk", false, crate::store::stale_after(), |n| {
        let (_, pid) = Some(n)
            .filter(|n| n.starts_with('.'))?
            .strip_suffix(".tmp")?
            .rsplit_once(".sp-sync-")?;
        (!pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())).then_some(pid)
    });
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
    /// The table's columns the record's hashes are over, in order (`None`:
    /// a record before `local.columns`; taken to be the table's now).
    columns: Option<Vec<String>>,
}

impl Base {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The working tree a record is of, as it records it: absolute, symlinks
/// resolved where it can be.
fn root_text(root: &Path) -> String {
    std::fs::canonicalize(root)
        .unwrap_or_else(|_| root.to_path_buf())
        .to_string_lossy()
        .into_owned()
}

/// How a collection reads its files into rows, as its record keeps it:
/// a record of other settings (a narrower glob, another key) says nothing
/// of these rows (audit 26: narrowing the glob read as the files it left
/// out deleted, and `to-db` deleted their rows).
fn place_text(cfg: &CollectionConfig) -> String {
    serde_json::json!({
        "format": match cfg.format {
            Format::FrontMatter => "front-matter",
            Format::Sidecar => "sidecar",
            Format::Yaml => "yaml",
        },
        "glob": cfg.glob(),
        "key": cfg.key,
        "key_column": cfg.key_column(),
        "path": cfg.path,
        "body": cfg.body,
        "body_field": cfg.body_field,
        "body_file": cfg.body_file,
    })
    .to_string()
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

/// Reads a collection's record, if the store holds one. A record of
/// another table, database or folder (the collection's settings changed,
/// or another working tree's collection of that name shares the store)
/// says nothing about this one: it reads as a record of no keys, so that
/// each side's rows count as added on that side (never deleted from the
/// other), and the record is replaced after the next sync.
pub fn load_base(store: &Store, cfg: &CollectionConfig, root: &Path) -> Result<Option<Base>> {
    let Some(id) = store.read_ref(&base_ref(&cfg.name)?)? else {
        return Ok(None);
    };
    let snap = Snapshot::decode(&store.get(ObjectType::Snapshot, &id)?)
        .map_err(|e| crate::object::corrupt(ObjectType::Snapshot, &id, e))?;
    // A record says which table, database, folder and working tree it is
    // of; one that does not say all four (made before they were recorded,
    // or made up) is of no known place and counts as none.
    let root = root_text(root);
    let same = [
        ("local.table", &cfg.table),
        ("local.db", &cfg.db),
        ("local.dir", &cfg.dir),
        ("local.root", &root),
    ]
    .iter()
    .all(|(k, v)| snap.meta.get(*k).is_some_and(|r| r == *v))
        // (A record made before it kept the settings: of the same place.)
        && snap
            .meta
            .get("local.place")
            .is_none_or(|p| *p == place_text(cfg));
    if !same {
        tracing::warn!(
            "collection {}: its last sync was of {} in {} (folder {}, working tree {}), or its \
             settings (glob, key, path, body, format) changed since; syncing as for the first time",
            cfg.name,
            snap.meta.get("local.table").map_or("?", String::as_str),
            snap.meta.get("local.db").map_or("?", String::as_str),
            snap.meta.get("local.dir").map_or("?", String::as_str),
            snap.meta.get("local.root").map_or("?", String::as_str),
        );
        return Ok(Some(Base {
            id,
            entries: BTreeMap::new(),
            columns: None,
        }));
    }
    let columns = match snap.meta.get("local.columns") {
        None => None,
        Some(j) => Some(serde_json::from_str::<Vec<String>>(j).map_err(|_| {
            crate::object::corrupt(
                ObjectType::Snapshot,
                &id,
                "a local sync record's columns are not a list of names",
            )
        })?),
    };
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
    Ok(Some(Base {
        id,
        entries,
        columns,
    }))
}

/// Records `entries` as the collection's state: writes the objects, then
/// moves `local/<collection>` from `expected` by compare-and-swap. Nothing
/// is written when the record would not change.
pub fn save_base(
    store: &Store,
    cfg: &CollectionConfig,
    (root, columns): (&Path, &[String]),
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
            ("local.db".to_string(), cfg.db.clone()),
            ("local.dir".to_string(), cfg.dir.clone()),
            ("local.root".to_string(), root_text(root)),
            ("local.place".to_string(), place_text(cfg)),
            (
                "local.columns".to_string(),
                serde_json::to_string(columns).unwrap_or_default(),
            ),
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

    /// A walk error names its path once, then the system's words (the
    /// walker's own text, "IO error for operation on …", named it three
    /// times). Built as the walker builds one: the system's error inside
    /// its own, inside `WithPath`.
    #[test]
    fn a_walk_error_names_its_path_once() {
        #[derive(Debug)]
        struct Walker(std::io::Error);
        impl std::fmt::Display for Walker {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "IO error for operation on /d/sub: {}", self.0)
            }
        }
        impl std::error::Error for Walker {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let os = std::io::Error::from_raw_os_error(13);
        let e = ignore::Error::WithPath {
            path: PathBuf::from("/d/sub"),
            err: Box::new(ignore::Error::Io(std::io::Error::other(Walker(os)))),
        };
        let msg = walk_error(Path::new("/d"), &e).to_string();
        let want = format!("reading /d/sub: {}", std::io::Error::from_raw_os_error(13));
        assert!(msg.ends_with(&want), "{msg}");
        assert_eq!(msg.matches("/d/sub").count(), 1, "{msg}");
        // Without a path of its own, the folder walked is named.
        let e = ignore::Error::Io(std::io::Error::from_raw_os_error(2));
        let msg = walk_error(Path::new("/d"), &e).to_string();
        assert!(msg.contains("reading /d: "), "{msg}");
    }

    /// (A BOM was refused as "no front matter"; audit 26.)
    #[test]
    fn a_byte_order_mark_is_named() {
        let e = split_front_matter("\u{feff}---\na: 1\n---\n", "f.md").unwrap_err();
        assert!(e.to_string().contains("byte order mark"), "{e}");
    }

    #[test]
    fn front_matter_splits_and_reports_lines() {
        let (f, b) = split_front_matter("---\na: 1\n---\nbody\n", "x.md").unwrap();
        assert_eq!((f, b), ("a: 1\n", "body\n"));
        let (f, b) = split_front_matter("---\n---\n", "x.md").unwrap();
        assert_eq!((f, b), ("", ""));
        assert!(split_front_matter("no\n", "x.md").is_err());
        let e = split_front_matter("---\na: 1\n", "x.md").unwrap_err();
        assert!(e.to_string().contains("not closed"), "{e}");
        assert_eq!(field_line("a: 1\nb: 2\n", "b", 1), 3);
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
            " [\"a\", \"b\"]"
        );
        let m = Value::Text(b"{\"b\":1,\"a\":[true,null]}".to_vec());
        assert_eq!(
            render_value("m", &m, "JSON", None).unwrap(),
            " {b: 1, a: [true, null]}"
        );
    }

    fn hint(text: &str) -> Hint {
        let f = front_fields(text);
        Hint::of(&f[0]).unwrap()
    }

    fn text(s: &str) -> Value {
        Value::Text(s.as_bytes().to_vec())
    }

    #[test]
    fn quoting_is_read_from_the_first_quoted_scalar() {
        assert_eq!(quote_of(" plain it's\n"), Quote::Plain);
        assert_eq!(quote_of(" \"a\"\n"), Quote::Double);
        assert_eq!(quote_of(" ['a', b]\n"), Quote::Single);
        assert_eq!(quote_of("\n  - x\n  - \"y\"\n"), Quote::Double);
        assert_eq!(quote_of(" # \"comment\"\n"), Quote::Plain);
        let h = hint("t:\n- plain\n- \"dq: x\"\n- 'sq'\n- more plain\n");
        assert_eq!(h.styles.quote("plain"), Quote::Plain);
        assert_eq!(h.styles.quote("dq: x"), Quote::Double);
        assert_eq!(h.styles.quote("sq"), Quote::Single);
        // A new string: as most of the old ones.
        assert_eq!(h.styles.quote("new"), Quote::Plain);
        assert_eq!(h.indent, 0);
    }

    #[test]
    fn changed_values_keep_the_fields_style() {
        let r = |h: &str, v: &str| render_value("f", &text(v), "", Some(&hint(h))).unwrap();
        // A block list of maps, indented by 0 or 2; quoting per string.
        assert_eq!(
            r(
                "f:\n- a: \"x y\"\n  b: 1\n",
                r#"[{"a":"x y","b":1},{"a":"z: w","b":[true,null]}]"#
            ),
            "\n- a: \"x y\"\n  b: 1\n- a: \"z: w\"\n  b:\n  - true\n  - null"
        );
        assert_eq!(
            r("f:\n  - k: v\n", r#"[{"k":"v"},{"k":"w","m":{"n":"o"}}]"#),
            "\n  - k: v\n  - k: w\n    m:\n      n: o"
        );
        // A block map stays one, at its indentation.
        assert_eq!(
            r("f:\n    a: 1\n", r#"{"a":2,"b":"it's"}"#),
            "\n    a: 2\n    b: it's"
        );
        // Flow stays flow, with each string's quoting.
        assert_eq!(
            r("f: [a, \"b\", 'c']\n", r#"["a","b","c","d e"]"#),
            " [a, \"b\", 'c', d e]"
        );
        assert_eq!(r("f: {}\n", r#"{"k":[]}"#), " {k: []}");
        // Scalars: quoting kept, a date stays a quoted string.
        assert_eq!(r("f: \"2025-01-15\"\n", "2026-02-02"), " \"2026-02-02\"");
        assert_eq!(r("f: '2025-01-15'\n", "it's"), " 'it''s'");
        assert_eq!(r("f: plain\n", "still plain"), " still plain");
        assert_eq!(r("f: plain\n", "needs: quotes"), " \"needs: quotes\"");
        // A string field keeps a string even when the text reads as JSON...
        assert_eq!(r("f: x\n", "[1]"), " \"[1]\"");
        // ... unless the column is JSON.
        assert_eq!(
            render_value("f", &text("[1]"), "JSON", Some(&hint("f: x\n"))).unwrap(),
            " [1]"
        );
        // | blocks, with their chomping.
        assert_eq!(r("f: |\n  a\n", "b\nc\n"), " |\n  b\n  c");
        assert_eq!(r("f: |\n  a\n", "b\n\nc"), " |-\n  b\n\n  c");
        assert_eq!(r("f: >\n  a\n", "b\n\n"), " |+\n  b\n");
        // What cannot be a | block is quoted.
        assert_eq!(r("f: |\n  a\n", " lead\n"), " \" lead\\n\"");
    }

    #[test]
    fn a_changed_block_collection_keeps_what_did_not_change() {
        let r = |h: &str, v: &str| render_value("f", &text(v), "", Some(&hint(h))).unwrap();
        // Comments, odd quoting and item order kept; one item changed, one
        // dropped, one added.
        let was = "f:  # the list\n  # first\n  - a   # why\n  - \"b\\x41\"\n  - {k: v}\n  - c\n";
        assert_eq!(
            r(was, r#"["a","bA","z",{"k":"v"},"new"]"#),
            "  # the list\n  # first\n  - a   # why\n  - \"b\\x41\"\n  - z\n  - {k: v}\n  - new"
        );
        // A map: entries kept as written, a changed one rendered, a new one appended.
        let was = "f:\n  a: 1 # one\n  b:\n    - x\n  c: 'q'\n";
        assert_eq!(
            r(was, r#"{"a":1,"b":["x","y"],"c":"q","d":"it's"}"#),
            "\n  a: 1 # one\n  b:\n    - x\n    - y\n  c: 'q'\n  d: it's"
        );
    }

    #[test]
    fn double_quotes_escape_what_yaml_would_break_on() {
        for s in [
            "a\u{2028}b",
            "\u{85}",
            "\u{feff}x",
            "tab\tq\"\\",
            "\u{7f}\u{1}",
        ] {
            let q = double_quoted(s);
            assert!(
                !q.contains(['\u{2028}', '\u{85}', '\u{feff}', '\t', '\u{7f}']),
                "{q}"
            );
            let back: String = serde_norway::from_str(&q).unwrap();
            assert_eq!(back, s);
        }
    }

    #[test]
    fn body_files_stay_in_the_sidecars_folder() {
        assert_eq!(
            body_rel_path("a/config.yaml", "SKILL.md").unwrap(),
            "a/SKILL.md"
        );
        assert_eq!(
            body_rel_path("a/config.yaml", "doc/x.md").unwrap(),
            "a/doc/x.md"
        );
        assert_eq!(body_rel_path("config.yaml", "x.md").unwrap(), "x.md");
        for bad in [
            "../x",
            "/etc/passwd",
            "./x",
            "a/../../x",
            "",
            "a//b",
            "C:x",
            "a\\b",
            "x/",
        ] {
            assert!(body_rel_path("a/config.yaml", bad).is_err(), "{bad}");
        }
        assert!(body_rel_path("a/config.yaml", "config.yaml").is_err());
    }

    #[test]
    fn a_comment_on_a_fields_line_is_found_outside_quotes() {
        assert_eq!(
            line_comment("t: Old title   # the title\n"),
            Some("   # the title")
        );
        assert_eq!(line_comment("t: &a x # c\n"), Some(" # c"));
        assert_eq!(line_comment("t: \"a # b\" # c\n"), Some(" # c"));
        assert_eq!(line_comment("t: 'it''s # not' #c\n"), Some(" #c"));
        assert_eq!(line_comment("t: \"q\\\" # in\"\n"), None);
        assert_eq!(line_comment("t: it's # c\n"), Some(" # c"));
        assert_eq!(line_comment("t: a#b\n"), None);
        assert_eq!(line_comment("t: [a, 'b # c'] # d\n"), Some(" # d"));
        assert_eq!(line_comment("t: {a: 2, b: \"x # y\"} # m\n"), Some(" # m"));
        assert_eq!(line_comment("t: x\n"), None);
        assert_eq!(line_comment("t: | # c\n  a\n"), None);
        assert_eq!(line_comment("t: # c\n- a\n"), None);
    }

    #[test]
    fn a_rewritten_field_keeps_the_comments_after_it() {
        assert_eq!(
            trailing_comments("t:\n- a\n# next\n\n# more\n"),
            "# next\n\n# more\n"
        );
        assert_eq!(trailing_comments("t: |\n  a\n\n"), "");
        assert_eq!(trailing_comments("t: |\n  # in the block\n"), "");
        assert_eq!(trailing_comments("t: x\n"), "");
    }

    #[test]
    fn restyling_any_fields_never_panics() {
        let out = restyle_fields("# lead\nt:\n  - \"a\"\nm: {k: v}\nbad: !tag x\n");
        assert_eq!(
            out,
            [
                ("t".to_string(), Some("\n  - \"a\"".to_string())),
                (
                    "t".to_string(),
                    Some("\n  - [\"a\"]\n  - [\"a\"]".to_string())
                ),
                ("m".to_string(), Some(" {k: v}".to_string())),
                ("m".to_string(), Some(" [{k: v}, {k: v}]".to_string())),
            ]
        );
    }

    proptest::proptest! {
        #[test]
        fn restyling_yaml_like_text_never_panics(s in "[a-z0-9:\\-\"' \n\t#\\[\\]{},|>&*!?%@`\u{e9}\u{2028}]{0,80}") {
            for (_, r) in restyle_fields(&s) {
                if let Some(r) = r {
                    proptest::prop_assert!(
                        serde_norway::from_str::<serde_norway::Value>(&format!("x:{r}\n")).is_ok(),
                        "{:?}", r
                    );
                }
            }
        }
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
