//! `sp-sync snapshot`.

use std::path::PathBuf;
use std::time::Instant;

use serde_json::json;

use super::fmt::{plural, size};
use super::{Human, Place, Render, json_via};
use crate::db::DbSource;
use crate::error::Result;
use crate::progress::Progress;
use crate::snapshot::{SnapshotOptions, SnapshotReport};
use crate::store::LockMode;

/// `sp-sync snapshot [PATH...]`.
#[derive(Debug, Clone, Default)]
pub struct SnapshotCmdOptions {
    /// Where.
    pub place: Place,
    /// What to snapshot (relative to the place); empty: the working tree
    /// (sp-sync.toml's sources, or the project root) and its databases.
    pub paths: Vec<PathBuf>,
    /// A message recorded with the snapshot.
    pub message: Option<String>,
    /// The ref to move.
    pub ref_name: String,
    /// Gitignore-style patterns to leave out.
    pub excludes: Vec<String>,
    /// The host name to record instead of the machine's.
    pub host: Option<String>,
    /// Read every file, ignoring the stat cache.
    pub no_cache: bool,
    /// A database to snapshot too: a SQLite file or a `postgres://` URL.
    pub db: Option<PathBuf>,
    /// Only these tables of `db` (empty: all).
    pub tables: Vec<String>,
    /// The PostgreSQL schema of a `postgres://` `db` (default `public`).
    pub schema: Option<String>,
    /// Key PostgreSQL tables without a primary key by all their columns.
    pub key_by_all_columns: bool,
}

/// A snapshot taken.
#[derive(Debug)]
pub struct SnapshotCmdReport {
    /// The library's report.
    pub report: SnapshotReport,
    /// The ref moved.
    pub ref_name: String,
    /// Seconds it took.
    pub seconds: f64,
}

/// Snapshots as `opts` says and moves the ref.
pub fn snapshot(opts: &SnapshotCmdOptions, progress: &dyn Progress) -> Result<SnapshotCmdReport> {
    let (ws, store) = opts.place.open(LockMode::Shared)?;
    let defaulted = opts.paths.is_empty();
    let mut excludes = opts.excludes.clone();
    let sources = if defaulted {
        let (s, ex) = ws.default_sources()?;
        excludes.extend(ex);
        s
    } else {
        opts.paths.iter().map(|p| opts.place.cwd.join(p)).collect()
    };
    let dbs = match &opts.db {
        Some(path) => vec![DbSource {
            path: crate::db::pg::resolve_location(
                &opts.place.cwd,
                path,
                opts.schema.as_deref(),
                opts.key_by_all_columns,
            )?,
            tables: opts.tables.clone(),
            missing_ok: false,
        }],
        None if defaulted => ws.default_dbs()?,
        None => Vec::new(),
    };
    let sopts = SnapshotOptions {
        sources,
        excludes,
        message: opts.message.clone().unwrap_or_default(),
        ref_name: opts.ref_name.clone(),
        host: opts.host.clone(),
        use_stat_cache: !opts.no_cache,
        dbs,
        root: Some(ws.root.clone()),
        ..Default::default()
    };
    let start = Instant::now();
    let report = crate::snapshot(&store, &sopts, progress)?;
    Ok(SnapshotCmdReport {
        report,
        ref_name: opts.ref_name.clone(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

json_via!(SnapshotCmdReport, |c| {
    let r = &c.report;
    json!({
        "id": r.id, "parent": r.parent, "root": r.root,
        "files": r.files, "dirs": r.dirs, "bytes": r.bytes,
        "new_bytes": r.new_bytes, "new_objects": r.new_objects,
        "tables": r.tables, "skipped": r.skipped,
    })
});

impl Render for SnapshotCmdReport {
    fn stderr(&self) -> Vec<String> {
        let s = &self.report.skipped;
        s.iter()
            .map(|s| format!("warning: skipped {}: {}", s.path, s.error))
            .collect()
    }

    fn human(&self, out: &mut Human<'_>) -> Result<()> {
        let r = &self.report;
        let rows: u64 = r.tables.values().sum();
        let tables = if r.tables.is_empty() {
            String::new()
        } else {
            let n = plural(r.tables.len() as u64, "table");
            format!(" and {n} ({})", plural(rows, "row"))
        };
        out.note(format!(
            "snapshot {} of {} files{tables}, {} ({} new) in {:.2}s; {} moved",
            r.id.short(),
            r.files,
            size(r.bytes),
            size(r.new_bytes),
            self.seconds,
            self.ref_name
        ));
        out.line(r.id)?;
        if !r.skipped.is_empty() {
            let n = plural(r.skipped.len() as u64, "path");
            out.note(format!("warning: the snapshot is partial: {n} left out"));
        }
        Ok(())
    }

    fn status(&self) -> i32 {
        if self.report.skipped.is_empty() { 0 } else { 3 }
    }
}
