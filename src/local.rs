//! Local sync between markdown collections and their database (`sp-sync
//! local diff|to-db|to-disk`, and `SyncDirection::ToDisk`/`ToDatabase`):
//! plan every chosen collection first (a bad file anywhere changes
//! nothing), then apply in one direction, one transaction per database,
//! and record each collection's new base in the store.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::collection::{self, Action, ApplyReport, Direction, LocalChange};
use crate::error::{Result, SyncError};
use crate::progress::Progress;
use crate::store::Store;
use crate::workspace::{PROJECT_FILE, ProjectConfig};

/// What a local sync does.
#[derive(Debug, Clone, Default)]
pub struct LocalOptions {
    /// The collections (by name); empty: all of them.
    pub collections: Vec<String>,
    /// Which way to sync; `None` only compares (`local diff`).
    pub direction: Option<Direction>,
    /// Plan and report, change nothing.
    pub dry_run: bool,
    /// Conflicting keys take the source side's value.
    pub force: bool,
}

/// What a local sync found and did (the `--json` of `sp-sync local`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct LocalReport {
    /// Every key whose file and row differ, with what happens to it.
    pub changes: Vec<LocalChange>,
    /// What was written (zero for a diff or a dry run).
    pub applied: ApplyReport,
    /// Keys the sync changes (or would, in a dry run).
    pub would_change: u64,
    /// Keys changed only on the target side, left as they are.
    pub kept: u64,
    /// Keys changed on both sides (or never synced) and left alone.
    pub conflicts: u64,
    /// Whether a store recorded the last sync (with none, every difference
    /// that is not a creation is a conflict).
    pub has_store: bool,
}

/// The nearest folder at or above `start` holding `sp-sync.toml` (else `start`).
pub fn find_project_root(start: &Path) -> PathBuf {
    let mut cur = Some(start);
    while let Some(d) = cur {
        if d.join(PROJECT_FILE).is_file() {
            return d.to_path_buf();
        }
        cur = d.parent();
    }
    start.to_path_buf()
}

/// Runs a local sync of the collections that `root/sp-sync.toml`
/// configures; `store` (when there is one) keeps the record of each
/// collection's last sync.
pub fn local(
    root: &Path,
    store: Option<&Store>,
    opts: &LocalOptions,
    progress: &dyn Progress,
) -> Result<LocalReport> {
    let project = ProjectConfig::load(root)?;
    if project.collection.is_empty() {
        return Err(SyncError::MissingConfig(format!(
            "{}: no [[collection]] configured",
            root.join(PROJECT_FILE).display()
        )));
    }
    let mut chosen = Vec::new();
    if opts.collections.is_empty() {
        chosen = collection::select(&project.collection, None)?;
    } else {
        for name in &opts.collections {
            // (A name given twice is synced once.)
            for c in collection::select(&project.collection, Some(name))? {
                if !chosen
                    .iter()
                    .any(|d: &&collection::CollectionConfig| d.name == c.name)
                {
                    chosen.push(c);
                }
            }
        }
    }
    progress.stage("planning");
    let mut plans = Vec::new();
    for c in chosen {
        let base = match store {
            Some(s) => collection::load_base(s, c, root)?,
            None => None,
        };
        // A collection's folder that is gone (renamed, an unmounted
        // volume) reads as every file deleted: `to-db` would delete every
        // row it last synced. Refused, as `to-disk` refuses a database that
        // is gone; an empty folder says the deletes are meant.
        let synced = base.as_ref().map_or(0, |b| b.len());
        // (The folder the glob's fixed part names: `posts/*.md` reads
        // files only below `posts/`, gone as the files are; audit 24.)
        let parts: Vec<&str> = c.glob().split('/').collect();
        let dir = parts[..parts.len().saturating_sub(1)]
            .iter()
            .take_while(|p| !p.contains(['*', '?', '[', '{', '\\']))
            .fold(root.join(&c.dir), |d, p| d.join(p));
        if opts.direction == Some(Direction::ToDatabase) && synced > 0 && !dir.is_dir() {
            return Err(SyncError::NotFound(format!(
                "{}: no such folder; collection {} was last synced with {synced} rows there, \
                 which to-db would delete (to delete them, make the folder, empty, and run to-db --force)",
                dir.display(),
                c.name
            )));
        }
        let mut p = collection::plan(root, c, base)?;
        // No file at all where the last sync had some (a folder emptied,
        // a volume not mounted leaves its empty mount point; audit 25):
        // every row would go. Only with --force.
        if opts.direction == Some(Direction::ToDatabase)
            && synced > 0
            && p.files_read() == 0
            && !opts.force
        {
            return Err(SyncError::Invalid(format!(
                "{}: no file of collection {} is there (the last sync had {synced}); to-db would \
                 delete every row: run it with --force if that is meant",
                dir.display(),
                c.name
            )));
        }
        // The same the other way: no row where the last sync had some (a
        // table emptied, a database made again from its schema; audit 26):
        // to-disk would remove every file. Only with --force.
        if opts.direction == Some(Direction::ToDisk)
            && synced > 0
            && p.rows_read() == 0
            && !opts.force
        {
            return Err(SyncError::Invalid(format!(
                "{}: table {} of collection {} has no row (the last sync had {synced}); to-disk \
                 would remove every file: run it with --force if that is meant",
                root.join(&c.db).display(),
                c.table,
                c.name
            )));
        }
        if let Some(d) = opts.direction {
            p.decide(d, opts.force);
        }
        plans.push(p);
    }
    let changes: Vec<LocalChange> = plans.iter().flat_map(|p| p.changes.clone()).collect();
    let count = |a: Action| changes.iter().filter(|c| c.action == Some(a)).count() as u64;
    let mut report = LocalReport {
        would_change: changes
            .iter()
            .filter(|c| c.action.is_some_and(Action::applies))
            .count() as u64,
        kept: count(Action::Keep),
        conflicts: count(Action::Conflict),
        has_store: store.is_some(),
        changes,
        applied: ApplyReport::default(),
    };
    // Every collection's files checked before any is written (a row with
    // no file name in the second collection stops the run before the
    // first's files change), and a dry run refuses what the run would.
    if opts.direction == Some(Direction::ToDisk) {
        for p in &plans {
            collection::check_to_disk(p)?;
        }
    }
    let Some(dir) = opts.direction.filter(|_| !opts.dry_run) else {
        return Ok(report);
    };
    if progress.interrupted() {
        return Err(SyncError::Interrupted);
    }
    progress.stage("applying");
    // The collections of one database in one transaction (to-db).
    let mut groups: Vec<Vec<&collection::Plan>> = Vec::new();
    for p in &plans {
        match groups.iter_mut().find(|g| g[0].config.db == p.config.db) {
            Some(g) => g.push(p),
            None => groups.push(vec![p]),
        }
    }
    let total = &mut report.applied;
    for g in &groups {
        if dir == Direction::ToDisk {
            // Collection by collection; one stopped midway (an interrupt,
            // a file changed meanwhile) still records the keys it finished,
            // so that the next run takes them for agreed (audit 26: they
            // were all conflicts after an interrupt).
            for p in g {
                let mut done = std::collections::BTreeSet::new();
                let r = collection::apply_to_disk(p, &mut done);
                if let Some(s) = store {
                    let entries = match &r {
                        Ok(_) => p.next_base()?,
                        Err(_) => p.next_base_done(&done)?,
                    };
                    let saved = collection::save_base(
                        s,
                        &p.config,
                        (p.root(), p.columns()),
                        p.base_id(),
                        &entries,
                    );
                    match (&r, saved) {
                        (Ok(_), saved) => {
                            saved?;
                        }
                        (Err(_), Err(e)) => tracing::warn!(
                            "collection {}: the files written before it stopped are not recorded: {e}",
                            p.config.name
                        ),
                        (Err(_), Ok(_)) => {}
                    }
                }
                let r = r?;
                total.written += r.written;
                total.removed_files += r.removed_files;
            }
            continue;
        }
        let r = collection::apply_many(g, dir)?;
        total.inserted += r.inserted;
        total.updated += r.updated;
        total.deleted += r.deleted;
        total.written += r.written;
        total.removed_files += r.removed_files;
        if let Some(s) = store {
            for p in g {
                collection::save_base(
                    s,
                    &p.config,
                    (p.root(), p.columns()),
                    p.base_id(),
                    &p.next_base()?,
                )?;
            }
        }
    }
    Ok(report)
}
