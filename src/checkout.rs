//! `sp-sync restore` as one call: `SNAP[:PATH]` back to where its parts
//! came from (the snapshot's recorded sources and databases), or into a
//! target, or its tables into a database. What a restore never touches
//! (the store, database files, `sp-sync.toml`, excluded paths) comes from
//! `sources`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::chunker::Chunker;
use crate::db::restore::{DbRestoreOptions, restore_db};
use crate::error::{Context, Result, SyncError};
use crate::id::ObjectId;
use crate::progress::Progress;
use crate::restore::{RestoreOptions, restore_to};
use crate::sources::{
    Placement, canonical, databases, holds_store, kept_paths, placements, protected_paths,
};
use crate::store::Store;
use crate::workspace::Workspace;

/// What to restore, and where.
#[derive(Debug, Clone, Default)]
pub struct CheckoutOptions {
    /// `SNAP[:PATH]`.
    pub spec: String,
    /// Where to (relative to `cwd`); `None`: back to the sources.
    pub target: Option<PathBuf>,
    /// Remove what the snapshot lacks (files, and rows in its tables).
    pub delete: bool,
    /// Restore the tables into this database (relative to `cwd`).
    pub database: Option<PathBuf>,
    /// Only these tables (empty: all).
    pub tables: Vec<String>,
    /// Keep setuid and setgid bits.
    pub keep_setid: bool,
    /// Where relative paths are taken from.
    pub cwd: PathBuf,
}

/// One place files were restored into.
#[derive(Debug, Clone, Serialize)]
pub struct PlacedReport {
    /// The folder or file written.
    pub target: PathBuf,
    /// Files written.
    pub files: u64,
    /// Directories made.
    pub dirs: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Entries removed (with `delete`).
    pub deleted: u64,
    /// Entries left alone because they would have replaced a protected path.
    pub protected: Vec<PathBuf>,
}

/// One database tables were restored into.
#[derive(Debug, Clone, Serialize)]
pub struct DbReport {
    /// The database file.
    pub db: PathBuf,
    /// Whether it was created.
    pub created: bool,
    /// Rows inserted.
    pub rows_inserted: u64,
    /// Rows updated.
    pub rows_updated: u64,
    /// Rows deleted.
    pub rows_deleted: u64,
}

/// What a restore wrote.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckoutReport {
    /// The snapshot restored.
    pub snapshot: Option<ObjectId>,
    /// Where its files went.
    pub restored: Vec<PlacedReport>,
    /// Where its tables went.
    pub dbs: Vec<DbReport>,
}

/// Restores as `opts` says. Each place is done in turn; `progress` sees
/// them all.
pub fn restore(
    ws: &Workspace,
    store: &Store,
    opts: &CheckoutOptions,
    progress: &dyn Progress,
) -> Result<CheckoutReport> {
    let (snap_spec, sub) = crate::names::split_spec(&opts.spec);
    let id = crate::names::resolve(store, snap_spec)?;
    let s = crate::names::load_snapshot(store, &id)?;
    let target = opts.target.as_ref().map(|t| canonical(&opts.cwd.join(t)));
    let db = opts.database.as_ref();
    // Where the files go: without a target, back to their sources; into a
    // target that holds the store (the working tree), at their sources'
    // places inside it; otherwise SNAP[:PATH] into the target.
    let places: Vec<Placement> = match (&target, db) {
        (None, Some(_)) => Vec::new(),
        (None, None) => placements(&s, sub, &ws.root)?,
        (Some(t), _) if s.sources.is_some() && t.is_dir() && holds_store(t, &ws.store_dir) => {
            placements(&s, sub, t)?
        }
        (Some(t), _) => vec![Placement {
            tree_path: sub.unwrap_or("").to_string(),
            dest: t.clone(),
        }],
    };
    if places.is_empty() && sub.is_some() && target.is_some() {
        return Err(SyncError::NotFound(format!(
            "{}: no such path among the snapshot's sources",
            sub.unwrap_or("")
        )));
    }
    let ropts = RestoreOptions {
        delete: opts.delete,
        threads: None,
        protect: protected_paths(ws, Some(&s)),
        keep: kept_paths(ws),
        excludes: match &s.sources {
            Some(src) => src.excludes.clone(),
            None => ws.project().map(|p| p.snapshot.exclude).unwrap_or_default(),
        },
        ignore_base: Some(ws.root.clone()),
        keep_setid: opts.keep_setid,
        skip_unchanged: false,
    };
    let mut report = CheckoutReport {
        snapshot: Some(id),
        ..Default::default()
    };
    for p in &places {
        let Some(root) = s.root else {
            break;
        };
        let entry = crate::object::tree::lookup(store, &root, p.tree_path.as_bytes())?.ok_or_else(
            || {
                SyncError::NotFound(format!(
                    "{}: no such path in snapshot {}",
                    p.tree_path,
                    id.short()
                ))
            },
        )?;
        let name = p.tree_path.rsplit('/').next().unwrap_or("").as_bytes();
        let r = restore_to(store, &entry, name, &p.dest, &ropts, progress)
            .context_with(|| format!("restore into {}", p.dest.display()))?;
        report.restored.push(PlacedReport {
            target: p.dest.clone(),
            files: r.files,
            dirs: r.dirs,
            bytes: r.bytes,
            deleted: r.deleted,
            protected: r.protected,
        });
    }
    // Which tables go where: a database named takes them all (or those
    // asked for); without a target, each recorded database gets its own back.
    let dbs: Vec<(PathBuf, Vec<String>)> = match (db, &target) {
        (Some(db), _) if crate::db::pg::is_url_path(db) => vec![(db.to_path_buf(), Vec::new())],
        (Some(db), _) => vec![(opts.cwd.join(db), Vec::new())],
        (None, None) if sub.is_none() => databases(&s, &ws.root),
        _ => Vec::new(),
    };
    if db.is_some() && s.tables.is_empty() {
        return Err(SyncError::NotFound(format!(
            "snapshot {} has no tables",
            id.short()
        )));
    }
    for (path, from) in dbs {
        let mine: BTreeMap<String, ObjectId> = s
            .tables
            .iter()
            .filter(|(k, _)| from.is_empty() || from.contains(k))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let wanted: Vec<String> = opts
            .tables
            .iter()
            .filter(|t| mine.contains_key(*t) || from.is_empty())
            .cloned()
            .collect();
        if mine.is_empty() || (!opts.tables.is_empty() && wanted.is_empty()) {
            continue;
        }
        let r = restore_db(
            store,
            &mine,
            &path,
            &Chunker::new(&store.config().chunker),
            &DbRestoreOptions {
                delete: opts.delete,
                tables: wanted,
            },
            progress,
        )
        .context_with(|| format!("restore into {}", path.display()))?;
        report.dbs.push(DbReport {
            // Never a password.
            db: PathBuf::from(crate::db::pg::display_location(&path)),
            created: r.created,
            rows_inserted: r.inserted,
            rows_updated: r.updated,
            rows_deleted: r.deleted,
        });
    }
    Ok(report)
}
