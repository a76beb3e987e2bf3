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
    // A target that holds the store (the working tree, `.`): a restore to
    // the sources' places inside it, files and rows, as without a target.
    let tree_target = target
        .as_ref()
        .filter(|t| s.sources.is_some() && t.is_dir() && holds_store(t, &ws.store_dir));
    // Tables asked for by name must be in the snapshot (before anything is
    // written).
    if let Some(t) = opts.tables.iter().find(|t| !s.tables.contains_key(*t)) {
        return Err(SyncError::NotFound(format!(
            "snapshot {} has no table {t}",
            id.short()
        )));
    }
    // `--table` back to where the snapshot was taken restores those tables
    // only: the working tree's files are not what was asked for.
    let tables_only = !opts.tables.is_empty() && (target.is_none() || tree_target.is_some());
    // Where the files go: without a target, back to their sources; into a
    // target that holds the store (the working tree), at their sources'
    // places inside it; otherwise SNAP[:PATH] into the target.
    let places: Vec<Placement> = match (&target, db) {
        (None, Some(_)) => Vec::new(),
        _ if tables_only => Vec::new(),
        (None, None) => source_placements(store, &s, sub, &ws.root)?,
        (Some(t), _) if tree_target.is_some() => {
            let places = source_placements(store, &s, sub, t)?;
            // Named a target: nothing goes outside it (an absolute source
            // keeps its path, wherever the target is).
            let inside = canonical(t);
            if let Some(p) = places
                .iter()
                .find(|p| !canonical(&p.dest).starts_with(&inside))
            {
                return Err(SyncError::Invalid(format!(
                    "{}: the snapshot's source {} lies outside it; restore SNAP:PATH into a target of its own",
                    t.display(),
                    p.dest.display()
                )));
            }
            places
        }
        (Some(t), _) => {
            // `SNAP:FILE DIR/` (a trailing slash, as for cp): the file goes
            // into that directory under its own name.
            let mut dest = t.clone();
            let into_dir = opts.target.as_ref().is_some_and(|t| {
                use std::os::unix::ffi::OsStrExt;
                t.as_os_str().as_bytes().ends_with(b"/")
            });
            if let (true, Some(p), Some(root)) = (into_dir, sub, s.root) {
                let entry = crate::object::tree::lookup(store, &root, p.as_bytes())?;
                let name = p.rsplit('/').find(|c| !c.is_empty());
                if let (Some(e), Some(name)) = (entry, name)
                    && !matches!(e.kind, crate::object::tree::EntryKind::Dir { .. })
                {
                    dest = dest.join(name);
                }
            }
            vec![Placement {
                tree_path: sub.unwrap_or("").to_string(),
                dest,
                exact: false,
            }]
        }
    };
    if places.is_empty() && sub.is_some() && target.is_some() {
        return Err(SyncError::NotFound(format!(
            "{}: no such path among the snapshot's sources",
            sub.unwrap_or("")
        )));
    }
    if target.is_none() || tree_target.is_some() {
        // The recorded places are used (files, databases).
        crate::sources::check_locations(&s)?;
    }
    let mut ropts = restore_options(ws, &s, opts.delete, opts.keep_setid);
    // The databases any snapshot of the store names are the user's live
    // ones too (one named by `--db` in a later or an earlier snapshot, or
    // on another ref, than the one restored): no restore writes over or
    // `--delete` removes them (audit 23: an older snapshot's --delete
    // removed a database only main~1 named).
    // (Only files are restored with them: a restore of tables alone reads
    // no history for it.)
    if !places.is_empty() {
        ropts
            .protect
            .extend(crate::sources::named_database_protection(store, &ws.root));
        // A target in another working tree keeps that tree's store and
        // databases too (audit 26: `restore SNAP ../app` from another
        // tree wrote over `../app/data/app.db`).
        for p in &places {
            ropts
                .protect
                .extend(crate::sources::target_protection(&p.dest, &ws.root));
        }
    }
    if target.is_none() && db.is_none() {
        let dbs = if sub.is_none() {
            databases(&s, &ws.root)
        } else {
            Vec::new()
        };
        foreign_guard(store, ws, id, &s, &places, &dbs)?;
    }
    if let (Some(t), None, None) = (tree_target, db, sub) {
        // (Its files stay inside the target: only its databases could be
        // another host's.)
        foreign_guard(store, ws, id, &s, &[], &databases(&s, t))?;
    }
    // Which tables go where: a database named takes them all (or those
    // asked for); without a target, each recorded database gets its own back.
    let dbs: Vec<(PathBuf, Vec<String>)> = match (db, &target) {
        (Some(db), _) if crate::db::pg::is_url_path(db) => vec![(db.to_path_buf(), Vec::new())],
        (Some(db), _) => vec![(opts.cwd.join(db), Vec::new())],
        (None, None) if sub.is_none() => databases(&s, &ws.root),
        (None, Some(_)) if sub.is_none() => match tree_target {
            Some(t) => databases(&s, t),
            None => Vec::new(),
        },
        _ => Vec::new(),
    };
    // No database is written into a store (a snapshot could name one
    // there: `.sp-sync/refs/x` would become a SQLite file).
    for (path, _) in &dbs {
        if !crate::db::pg::is_url_path(path) {
            crate::restore::refuse_store(path)?;
        }
    }
    // Sources go back to their own places: never through a symlink found
    // on the way (one where a directory source goes would take its files,
    // and `--delete`, somewhere else). Checked for all before any is written.
    if let (Some(root), true) = (s.root, target.is_none() || tree_target.is_some()) {
        for p in &places {
            // (The root tree itself, "" , is a directory.)
            let dir = p.tree_path.is_empty()
                || crate::object::tree::lookup(store, &root, p.tree_path.as_bytes())?
                    .is_some_and(|e| matches!(e.kind, crate::object::tree::EntryKind::Dir { .. }));
            refuse_symlinked(tree_target.unwrap_or(&ws.root), &p.dest, dir)?;
        }
        // Nor through a symlink one of them writes on the way to another.
        let mut nested = Vec::with_capacity(places.len());
        for p in &places {
            let entry = if p.tree_path.is_empty() {
                Some(crate::object::tree::Entry {
                    mode: 0o755,
                    mtime: Default::default(),
                    kind: crate::object::tree::EntryKind::Dir { tree: root },
                })
            } else {
                crate::object::tree::lookup(store, &root, p.tree_path.as_bytes())?
            };
            if let Some(e) = entry {
                nested.push((p.dest.clone(), e));
            }
        }
        // A database file is written after the files: never through a
        // symlink they put on the way to it either.
        for (path, _) in &dbs {
            if !crate::db::pg::is_url_path(path) {
                nested.push((
                    path.clone(),
                    crate::object::tree::Entry {
                        mode: 0o644,
                        mtime: Default::default(),
                        kind: crate::object::tree::EntryKind::File {
                            size: 0,
                            content: crate::object::tree::Content::Inline(Vec::new()),
                        },
                    },
                ));
            }
        }
        crate::restore::refuse_nested_through(store, &nested)?;
    }
    if db.is_some() && s.tables.is_empty() {
        return Err(SyncError::NotFound(format!(
            "snapshot {} has no tables",
            id.short()
        )));
    }
    // What goes into each database: its tables, those asked for of them.
    let chunker = Chunker::new(&store.config().chunker);
    let mut jobs = Vec::with_capacity(dbs.len());
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
        let dopts = DbRestoreOptions {
            delete: opts.delete,
            tables: wanted,
            settings: sqlite_settings_for(&s, mine.keys()),
        };
        jobs.push((path, mine, dopts));
    }
    // Files are written before the databases (a database may lie in a
    // folder they make) and cannot be taken back: a database that would
    // refuse its rows (a schema that differs, a key the rows would break)
    // fails the command before any file is written. The restore runs to
    // its commit and rolls back.
    if !places.is_empty() {
        let quiet = crate::progress::OnlyStops(progress);
        for (path, mine, dopts) in &jobs {
            crate::db::restore::rehearse_db(store, mine, path, &chunker, dopts, &quiet)
                .context_with(|| {
                    format!(
                        "restore into {} (nothing was restored)",
                        crate::db::pg::display_location(path)
                    )
                })?;
        }
    }
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
        ropts.excludes_at = crate::sources::source_rel(&s, &p.tree_path);
        // A recorded directory's own mode and time go with it (the root
        // records none): back at its place, or where the restore makes
        // it; a directory the user named that is there already keeps its
        // own (restoring a private folder's files into /srv/www must not
        // close /srv/www).
        ropts.own_mode = !p.tree_path.is_empty()
            && (target.is_none() || std::fs::symlink_metadata(&p.dest).is_err());
        // The whole tree of several sources: one directory per source.
        ropts.excludes_per_source =
            p.tree_path.is_empty() && s.sources.as_ref().is_some_and(|src| src.paths.len() > 1);
        let r = if p.exact {
            crate::restore::restore_at(store, &entry, &p.dest, &ropts, progress)
        } else {
            restore_to(store, &entry, name, &p.dest, &ropts, progress)
        }
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
    for (path, mine, dopts) in jobs {
        let r = restore_db(store, &mine, &path, &chunker, &dopts, progress)
            // (Never a password.)
            .context_with(|| {
                // (Its rehearsal passed: the database changed since.)
                let files = if report.restored.is_empty() {
                    ""
                } else {
                    " (the files were restored; this database was left as it was)"
                };
                format!(
                    "restore into {}{files}",
                    crate::db::pg::display_location(&path)
                )
            })?;
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

/// Refuses a source's place `dest` (below `base`, or absolute) reached
/// through a symlink: any of its existing parts, and the place itself when
/// a directory goes there (a file or symlink replaces one at its place).
fn refuse_symlinked(base: &std::path::Path, dest: &std::path::Path, dir: bool) -> Result<()> {
    let (mut cur, rest) = match dest.strip_prefix(base) {
        Ok(rel) => (canonical(base), rel.to_path_buf()),
        Err(_) => (
            PathBuf::from("/"),
            dest.strip_prefix("/").unwrap_or(dest).to_path_buf(),
        ),
    };
    let parts: Vec<_> = rest.components().collect();
    for (i, c) in parts.iter().enumerate() {
        cur.push(c);
        let Ok(m) = std::fs::symlink_metadata(&cur) else {
            return Ok(());
        };
        let last = i + 1 == parts.len();
        if m.file_type().is_symlink() && (!last || dir) {
            let to = std::fs::read_link(&cur)
                .map(|t| format!(" (to {})", t.display()))
                .unwrap_or_default();
            return Err(SyncError::Invalid(format!(
                "{} is a symlink{to} on the way to where the snapshot's {} goes back; a restore \
                 does not write through it: replace it with the directory, or restore into a TARGET",
                cur.display(),
                dest.display()
            )));
        }
    }
    Ok(())
}

/// The recorded settings of the SQLite database the snapshot took
/// `tables` from (store-format §3.5, meta `sqlite.N`), if one gave them all.
pub(crate) fn sqlite_settings_for<'t>(
    s: &crate::object::snapshot::Snapshot,
    tables: impl Iterator<Item = &'t String> + Clone,
) -> Option<crate::db::SqliteSettings> {
    let dbs = &s.sources.as_ref()?.dbs;
    let (i, _) = dbs.iter().enumerate().find(|(_, d)| {
        !crate::db::pg::is_url(&d.location) && tables.clone().all(|t| d.tables.contains(t))
    })?;
    crate::db::SqliteSettings::decode(
        s.meta
            .get(&format!("{}{i}", crate::snapshot::SQLITE_SETTINGS))?,
    )
}

/// A snapshot this store did not make itself (pulled, or imported from a
/// bundle) names places of another machine, or places a remote chose:
/// restored without a target, it goes back only into this working tree. A
/// source outside it (an absolute path, or one above the root) or a
/// PostgreSQL database it names is refused, so that a snapshot from
/// elsewhere cannot write, or with `--delete` remove, what this command
/// did not name. Which snapshots the store made is its own machine-local
/// list ([`Store::made_here`]), not the host the snapshot names: a remote
/// can write any host into a snapshot.
fn foreign_guard(
    store: &Store,
    ws: &Workspace,
    id: ObjectId,
    s: &crate::object::snapshot::Snapshot,
    places: &[Placement],
    dbs: &[(PathBuf, Vec<String>)],
) -> Result<()> {
    if store.made_here(&id, &s.host) {
        return Ok(());
    }
    let root = canonical(&ws.root);
    let outside = places
        .iter()
        .map(|p| p.dest.clone())
        .chain(
            dbs.iter()
                .filter(|(p, _)| !crate::db::pg::is_url(&p.to_string_lossy()))
                .map(|(p, _)| p.clone()),
        )
        .map(|p| canonical(&p))
        .find(|p| !p.starts_with(&root))
        .map(|p| p.display().to_string())
        .or_else(|| {
            dbs.iter()
                .find(|(p, _)| crate::db::pg::is_url(&p.to_string_lossy()))
                .map(|(p, _)| crate::db::pg::display_location(p))
        });
    match outside {
        Some(place) => Err(SyncError::Invalid(format!(
            "the snapshot was not taken by this store (it names host {:?}), and {place} lies outside this working tree: \
             name a TARGET (or --db) to restore into",
            s.host
        ))),
        None => Ok(()),
    }
}

/// Where `SNAP[:sub]` goes back to relative to `base` ([`placements`]).
/// A snapshot of one source that was a file or a symlink holds it by name
/// (as it holds each of several sources), so it goes back to exactly that
/// path; the same tree from a directory holding one such entry of the same
/// name is told apart by what is on disk: a directory there now keeps the
/// directory reading.
fn source_placements(
    store: &Store,
    s: &crate::object::snapshot::Snapshot,
    sub: Option<&str>,
    base: &std::path::Path,
) -> Result<Vec<Placement>> {
    let mut places = placements(s, sub, base)?;
    let (Some(src), Some(root)) = (&s.sources, s.root) else {
        return Ok(places);
    };
    let [one] = src.paths.as_slice() else {
        return Ok(places);
    };
    let Some(name) = std::path::Path::new(one)
        .file_name()
        .and_then(|n| n.to_str())
    else {
        return Ok(places);
    };
    let sub = sub.unwrap_or("").trim_matches('/');
    if !(sub.is_empty() || sub == name) {
        return Ok(places);
    }
    let entries = crate::object::tree::read_dir(store, &root, s.time)?;
    let shaped = matches!(
        entries.as_slice(),
        [(n, e)] if n.as_slice() == name.as_bytes()
            && !matches!(e.kind, crate::object::tree::EntryKind::Dir { .. })
    );
    let dest = if one.is_empty() {
        base.to_path_buf()
    } else {
        base.join(one)
    };
    // A snapshot that says its one source was a file goes back as that
    // file, whatever is at its place now; one from before that record is
    // told by what is there (a directory there: the directory's contents).
    let recorded = s.meta.get(crate::snapshot::SOURCE_KIND).map(String::as_str);
    let dir_there = std::fs::symlink_metadata(&dest).is_ok_and(|m| m.is_dir());
    if shaped && (recorded == Some("file") || !dir_there) {
        places = vec![Placement {
            tree_path: name.to_string(),
            dest,
            exact: recorded == Some("file"),
        }];
    }
    Ok(places)
}

/// Each path a snapshot skipped, as an anchored gitignore pattern relative
/// to the root of the source that holds it (the longest that does), its
/// special characters escaped.
fn skipped_patterns(
    sources: &[String],
    skipped: &[crate::object::snapshot::Skipped],
) -> Vec<String> {
    skipped
        .iter()
        .filter_map(|k| {
            let p = std::path::Path::new(&k.path);
            sources
                .iter()
                .filter_map(|sp| {
                    if sp.is_empty() {
                        Some((0, p))
                    } else {
                        p.strip_prefix(sp).ok().map(|r| (sp.len(), r))
                    }
                })
                .max_by_key(|(n, _)| *n)
                .map(|(_, rel)| rel.to_string_lossy().into_owned())
        })
        .filter(|rel| !rel.is_empty())
        .map(|rel| {
            let mut pat = String::from("/");
            for c in rel.chars() {
                if matches!(c, '\\' | '*' | '?' | '[' | ']' | '!' | '#' | ' ') {
                    pat.push('\\');
                }
                pat.push(c);
            }
            pat
        })
        .collect()
}

/// How a restore of snapshot `s` into the workspace `ws` writes: never over
/// the store or a database, `--delete` keeping `sp-sync.toml`, the paths
/// the snapshot skipped (it could not read them), the snapshot's excludes
/// and what the `.sp-syncignore` files match.
pub(crate) fn restore_options(
    ws: &Workspace,
    s: &crate::object::snapshot::Snapshot,
    delete: bool,
    keep_setid: bool,
) -> RestoreOptions {
    RestoreOptions {
        delete,
        threads: None,
        protect: protected_paths(ws, Some(s)),
        // What the snapshot could not read is kept: it may be the only copy.
        keep: kept_paths(ws)
            .into_iter()
            .chain(
                s.skipped
                    .iter()
                    .map(|k| crate::sources::canonical(&ws.root.join(&k.path))),
            )
            .collect(),
        // (The excludes, and the paths the snapshot skipped as anchored
        // patterns of their own, are matched relative to each source's root,
        // wherever the restore puts it: `keep` above holds only their places
        // in the working tree. Audit round 20: `restore --delete main DIR`
        // removed DIR's copy of a file the snapshot skipped.)
        excludes: match &s.sources {
            Some(src) => src
                .excludes
                .iter()
                .cloned()
                .chain(skipped_patterns(&src.paths, &s.skipped))
                .collect(),
            None => ws.project().map(|p| p.snapshot.exclude).unwrap_or_default(),
        },
        excludes_at: String::new(),
        excludes_per_source: false,
        ignore_base: Some(ws.root.clone()),
        keep_setid,
        skip_unchanged: false,
        own_mode: false,
    }
}
