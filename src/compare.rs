//! `sp-sync diff` as one call: a snapshot against another snapshot, or
//! against now (the working tree at the snapshot's recorded sources and its
//! databases), files and rows. The working tree is scanned into a scratch
//! store (chunks hashed, not kept) and diffed through an overlay of scratch
//! and store, so nothing is written.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::chunker::Chunker;
use crate::db::DbSource;
use crate::db::diff::{RowChange, RowStat, TableChange, diff_tables};
use crate::diff::{DiffStat, FileChange, diff_trees};
use crate::error::Result;
use crate::id::ObjectId;
use crate::object::snapshot::Snapshot;
use crate::object::{MemStore, ObjectSource, Overlay};
use crate::progress::Progress;
use crate::snapshot::{Scratch, scan_working_tree};
use crate::store::Store;
use crate::workspace::Workspace;

/// What to compare.
#[derive(Debug, Clone, Default)]
pub struct DiffOptions {
    /// The old side: a snapshot name (id, prefix, ref, `REF~N`).
    pub from: String,
    /// The new side: a snapshot name, or `None` for now.
    pub to: Option<String>,
    /// Against now: compare only this database (rows, no files), relative
    /// to `cwd`.
    pub database: Option<PathBuf>,
    /// Only these tables (empty: all).
    pub tables: Vec<String>,
    /// Only these paths (files only, like git's pathspec; empty: all).
    pub paths: Vec<String>,
    /// Where relative paths are taken from.
    pub cwd: PathBuf,
}

/// What differs (the `--json` of `sp-sync diff`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct DiffReport {
    /// Files, symlinks and directories that differ.
    pub files: Vec<FileChange>,
    /// Rows that differ.
    pub rows: Vec<RowChange>,
    /// Tables and views added, removed or whose schema changed.
    pub tables: Vec<TableChange>,
    /// Totals of `files`.
    pub stat: DiffStat,
    /// Totals of `rows`.
    pub row_stat: RowStat,
    /// The old snapshot.
    #[serde(skip)]
    pub old: Option<Snapshot>,
    /// The new snapshot's root (`None` when the new side is now).
    #[serde(skip)]
    pub new_root: Option<ObjectId>,
}

impl DiffReport {
    /// Whether anything differs.
    pub fn differs(&self) -> bool {
        !self.files.is_empty() || !self.rows.is_empty() || !self.tables.is_empty()
    }
}

/// Compares as `opts` says.
pub fn diff(
    ws: &Workspace,
    store: &Store,
    opts: &DiffOptions,
    progress: &dyn Progress,
) -> Result<DiffReport> {
    let load = |spec: &str| -> Result<Snapshot> {
        let id = crate::names::resolve(store, spec)?;
        crate::names::load_snapshot(store, &id)
    };
    let tables = &opts.tables;
    let only = |m: &BTreeMap<String, ObjectId>| -> BTreeMap<String, ObjectId> {
        m.iter()
            .filter(|(k, _)| tables.is_empty() || tables.contains(k))
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    };
    let from_id = crate::names::resolve(store, &opts.from)?;
    let sa = crate::names::load_snapshot(store, &from_id)?;
    let mut rep = DiffReport::default();
    let mut changes: Vec<FileChange> = Vec::new();
    let mut rows: Vec<RowChange> = Vec::new();
    let mut collect = |c: FileChange| {
        changes.push(c);
        Ok(())
    };
    let mut collect_rows = |c: RowChange| {
        rows.push(c);
        Ok(())
    };
    let db = opts.database.as_deref();
    rep.tables = match &opts.to {
        Some(b) => {
            let sb = load(b)?;
            rep.new_root = sb.root;
            diff_trees(store, sa.root.as_ref(), sb.root.as_ref(), &mut collect)?;
            diff_tables(
                store,
                &only(&sa.tables),
                &only(&sb.tables),
                &mut collect_rows,
            )?
        }
        None => {
            // Against what is live now, at the places the snapshot records.
            crate::sources::check_locations(&sa)?;
            let scratch = Scratch {
                store,
                mem: MemStore::new(false),
            };
            // What the snapshot was taken from (older snapshots: the
            // defaults of sp-sync.toml).
            let dbs = match (db, &sa.sources) {
                (Some(path), _) => vec![DbSource {
                    path: if crate::db::pg::is_url_path(path) {
                        path.to_path_buf()
                    } else {
                        opts.cwd.join(path)
                    },
                    tables: tables.to_vec(),
                    missing_ok: false,
                }],
                // Only the tables the snapshot took from each (a diff
                // compares no others).
                (None, Some(_)) => crate::sources::databases(&sa, &ws.root)
                    .into_iter()
                    .filter(|(_, tables)| !tables.is_empty())
                    .map(|(path, tables)| {
                        // A PostgreSQL URL a snapshot names is connected to
                        // (with this user's password) only when this store
                        // made the snapshot: a pulled one could name any
                        // server, to be sent the password.
                        // Nor is a database file outside the working tree
                        // read for one (a diff prints its rows).
                        let foreign = !store.made_here(&from_id, &sa.host);
                        if foreign
                            && !crate::db::pg::is_url_path(&path)
                            && !crate::sources::canonical(&path)
                                .starts_with(crate::sources::canonical(&ws.root))
                        {
                            return Err(crate::error::SyncError::Invalid(format!(
                                "snapshot {} was not taken by this store (it names host {:?}), and its \
                                 database {} lies outside this working tree: it is compared only when \
                                 named with --db",
                                from_id.short(),
                                sa.host,
                                path.display()
                            )));
                        }
                        if crate::db::pg::is_url_path(&path) && foreign {
                            return Err(crate::error::SyncError::Invalid(format!(
                                "snapshot {} was not taken by this store (it names host {:?}): \
                                 its database {} is compared only when named with --db",
                                from_id.short(),
                                sa.host,
                                crate::db::pg::display_location(&path)
                            )));
                        }
                        Ok((path, tables))
                    })
                    .collect::<Result<Vec<_>>>()?
                    .into_iter()
                    .map(|(path, tables)| DbSource {
                        path,
                        tables,
                        missing_ok: true,
                    })
                    .collect(),
                (None, None) => ws.default_dbs()?,
            };
            // (A table without a primary key is compared keyed by all its
            // columns.)
            let dbs: Vec<DbSource> = dbs
                .into_iter()
                .map(|d| DbSource {
                    path: crate::db::pg::keyed_by_all_for_diff(&d.path),
                    ..d
                })
                .collect();
            // A recorded database file that is gone now has no tables: its
            // tables show as removed (it is not read).
            let (dbs, gone): (Vec<DbSource>, Vec<DbSource>) = dbs.into_iter().partition(|d| {
                db.is_some()
                    || crate::db::pg::is_url_path(&d.path)
                    || d.path.symlink_metadata().is_ok()
            });
            let now_tables = crate::db::scan_all(
                &dbs,
                &scratch,
                &Chunker::new(&store.config().chunker),
                progress,
                None,
            );
            let files = if db.is_none() {
                let (sources, excludes) = match &sa.sources {
                    Some(src) => {
                        let paths: Vec<PathBuf> = src
                            .paths
                            .iter()
                            .map(|p| {
                                if p.is_empty() {
                                    ws.root.clone()
                                } else {
                                    ws.root.join(p)
                                }
                            })
                            .collect();
                        // A snapshot this store did not make is compared
                        // only inside this working tree: its places
                        // elsewhere are a remote's choice, and a diff prints
                        // what it reads there.
                        if !store.made_here(&from_id, &sa.host) {
                            let top = crate::sources::canonical(&ws.root);
                            if let Some(p) = paths
                                .iter()
                                .find(|p| !crate::sources::canonical(p).starts_with(&top))
                            {
                                return Err(crate::error::SyncError::Invalid(format!(
                                    "snapshot {} was not taken by this store (it names host {:?}), and its \
                                     source {} lies outside this working tree: compare it with another \
                                     snapshot, or restore it into a TARGET",
                                    from_id.short(),
                                    sa.host,
                                    p.display()
                                )));
                            }
                        }
                        (paths, src.excludes.clone())
                    }
                    None => ws.default_sources()?,
                };
                let skip: Vec<PathBuf> = dbs.iter().map(|d| d.path.clone()).collect();
                Some(scan_working_tree(
                    store,
                    &sources,
                    &excludes,
                    &skip,
                    Some(&ws.root),
                    progress,
                ))
            } else {
                None
            };
            let now_tables = now_tables?;
            let wt = files.transpose()?;
            if let Some((root, s)) = &wt {
                let src = Overlay {
                    first: &s.mem,
                    second: store as &dyn ObjectSource,
                };
                diff_trees(&src, sa.root.as_ref(), Some(root), &mut collect)?;
            }
            let src = Overlay {
                first: &scratch.mem,
                second: store as &dyn ObjectSource,
            };
            // Compare only the tables the database was asked for.
            let mut mine = only(&sa.tables);
            let mut now_objects = only(&now_tables.objects);
            if db.is_none() && sa.sources.is_some() {
                // Only the tables the snapshot took from its databases.
                now_objects.retain(|k, _| sa.tables.contains_key(k));
            }
            if db.is_some() || !dbs.is_empty() || !gone.is_empty() {
                mine.retain(|k, _| {
                    now_tables.objects.contains_key(k)
                        || dbs
                            .iter()
                            .chain(&gone)
                            .any(|d| d.tables.is_empty() || d.tables.contains(k))
                });
            } else {
                mine.clear();
            }
            diff_tables(&src, &mine, &now_objects, &mut collect_rows)?
        }
    };
    if !opts.paths.is_empty() {
        // A path filter limits the diff to files, like git's pathspec.
        let wanted = |p: &str| {
            let p = p.trim_end_matches('/');
            opts.paths.iter().any(|f| {
                let f = f.trim_matches('/');
                f.is_empty() || p == f || p.starts_with(&format!("{f}/"))
            })
        };
        changes.retain(|c| wanted(&c.path));
        rows.clear();
        rep.tables.clear();
    }
    for c in &changes {
        rep.stat.add(c);
    }
    for r in &rows {
        rep.row_stat.add(r);
    }
    rep.files = changes;
    rep.rows = rows;
    rep.old = Some(sa);
    Ok(rep)
}
