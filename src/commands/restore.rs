//! `sp-sync restore`.

use std::path::PathBuf;
use std::time::Instant;

use serde_json::json;

use super::fmt::{plural, size};
use super::{Human, Place, Render, json_via, val};
use crate::checkout::{CheckoutOptions, CheckoutReport};
use crate::error::Result;
use crate::progress::Progress;
use crate::store::LockMode;

/// `sp-sync restore SNAP[:PATH] [TARGET] [--delete] [--db FILE] [--table T]…`.
#[derive(Debug, Clone, Default)]
pub struct RestoreCmdOptions {
    /// Where.
    pub place: Place,
    /// `SNAP[:PATH]`.
    pub spec: String,
    /// Where to (relative to the place); `None`: back where it was taken from.
    pub target: Option<PathBuf>,
    /// Also remove what the snapshot lacks (files; rows of its tables).
    pub delete: bool,
    /// Restore the tables into this database: a SQLite file or a `postgres://` URL.
    pub db: Option<PathBuf>,
    /// Only these tables (empty: all).
    pub tables: Vec<String>,
    /// The PostgreSQL schema of a `postgres://` `db` (default `public`).
    pub schema: Option<String>,
    /// Key PostgreSQL tables without a primary key by all their columns.
    pub key_by_all_columns: bool,
    /// Keep setuid and setgid bits.
    pub keep_setid: bool,
}

/// What was restored. Its JSON: the first place's report at the top level
/// with every place under `restored`, and the first database's counts with
/// every database under `dbs`.
#[derive(Debug)]
pub struct RestoreCmdReport {
    /// The library's report.
    pub report: CheckoutReport,
    /// Whether what the snapshot lacks was removed.
    pub delete: bool,
    /// Seconds it took.
    pub seconds: f64,
}

/// Restores as `opts` says.
pub fn restore(opts: &RestoreCmdOptions, progress: &dyn Progress) -> Result<RestoreCmdReport> {
    let (ws, store) = opts.place.open(LockMode::Shared)?;
    let start = Instant::now();
    let opts = CheckoutOptions {
        spec: opts.spec.clone(),
        target: opts.target.clone(),
        delete: opts.delete,
        database: super::db_arg(
            opts.db.as_deref(),
            opts.schema.as_deref(),
            opts.key_by_all_columns,
        )?,
        tables: opts.tables.clone(),
        keep_setid: opts.keep_setid,
        cwd: opts.place.cwd.clone(),
    };
    let report = crate::checkout::restore(&ws, &store, &opts, progress)?;
    Ok(RestoreCmdReport {
        report,
        delete: opts.delete,
        seconds: start.elapsed().as_secs_f64(),
    })
}

json_via!(RestoreCmdReport, |c| {
    let r = &c.report;
    let mut out = json!({});
    if let Some(first) = r.restored.first() {
        out = val(first);
        out["restored"] = val(&r.restored);
    }
    if let Some(d) = r.dbs.first() {
        out["db"] = json!(d.db);
        out["db_created"] = json!(d.created);
        out["rows_inserted"] = json!(d.rows_inserted);
        out["rows_updated"] = json!(d.rows_updated);
        out["rows_deleted"] = json!(d.rows_deleted);
        out["dbs"] = val(&r.dbs);
    }
    out
});

impl Render for RestoreCmdReport {
    /// 3 when entries of the snapshot were left as they are (what is there
    /// may not be replaced: a warning names each, `--json` lists them
    /// under `"protected"`): the target is not the snapshot's, as a
    /// snapshot that skipped a file exits 3 (audit round 19: exit 0).
    fn status(&self) -> i32 {
        if self.report.restored.iter().any(|p| !p.protected.is_empty()) {
            3
        } else {
            0
        }
    }

    fn human(&self, out: &mut Human<'_>) -> Result<()> {
        let secs = self.seconds;
        for p in &self.report.restored {
            let removed = if self.delete {
                format!("; removed {}", p.deleted)
            } else {
                String::new()
            };
            let (n, b, t) = (p.files, size(p.bytes), p.target.display());
            let kept = if p.protected.is_empty() {
                String::new()
            } else {
                match p.protected.len() {
                    1 => "; 1 entry left as it is".to_string(),
                    n => format!("; {n} entries left as they are"),
                }
            };
            out.note(format!(
                "restored {n} files, {b} into {t} in {secs:.2}s{removed}{kept}"
            ));
        }
        for d in &self.report.dbs {
            out.note(format!(
                "{} {} in {secs:.2}s: {} inserted, {} updated, {} deleted",
                if d.created { "created" } else { "updated" },
                d.db.display(),
                plural(d.rows_inserted, "row"),
                d.rows_updated,
                d.rows_deleted
            ));
        }
        Ok(())
    }
}
