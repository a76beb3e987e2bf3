//! `sp-sync diff`: the comparison of [`crate::compare`], printed as a list,
//! a `--stat` summary or a `--patch`.

use std::path::PathBuf;

use serde_json::json;

use super::fmt::{plural, quote_path, size};
use super::{Human, Place, Render, json_via, val};
use crate::compare::{DiffOptions, DiffReport};
use crate::diff::{ChangeKind, FileChange};
use crate::error::{Result, SyncError};
use crate::patch::{Side, line_stat, unified};
use crate::progress::Progress;
use crate::store::{LockMode, Store};
use crate::workspace::Workspace;

/// `sp-sync diff A [B] [--db FILE] [--stat] [--patch] [-- PATH...]`.
#[derive(Debug, Clone, Default)]
pub struct DiffCmdOptions {
    /// Where.
    pub place: Place,
    /// The old snapshot.
    pub a: String,
    /// The new snapshot (`None`: now).
    pub b: Option<String>,
    /// Compare A's tables with this database now: a SQLite file or a `postgres://` URL.
    pub db: Option<PathBuf>,
    /// Only these tables.
    pub tables: Vec<String>,
    /// The PostgreSQL schema of a `postgres://` `db` (default `public`).
    pub schema: Option<String>,
    /// Key PostgreSQL tables without a primary key by all their columns.
    pub key_by_all_columns: bool,
    /// Only these paths.
    pub paths: Vec<String>,
    /// A line per changed path with its inserted and deleted lines, and a summary.
    pub stat: bool,
    /// A unified patch of each changed text file.
    pub patch: bool,
    /// Exit 1 when there are differences.
    pub exit_code: bool,
}

/// What differs, and how to show it. Its JSON is the [`DiffReport`]
/// (with `stat` and `row_stat` under `--stat` only).
pub struct DiffCmdReport {
    /// The comparison.
    pub report: DiffReport,
    opts: DiffCmdOptions,
    ws: Workspace,
    store: Store,
}

/// Compares as `opts` says.
pub fn diff(opts: &DiffCmdOptions, progress: &dyn Progress) -> Result<DiffCmdReport> {
    let (ws, store) = opts.place.open(LockMode::Shared)?;
    let dopts = DiffOptions {
        from: opts.a.clone(),
        to: opts.b.clone(),
        database: super::db_arg(
            opts.db.as_deref(),
            opts.schema.as_deref(),
            opts.key_by_all_columns,
        )?,
        tables: opts.tables.clone(),
        paths: opts.paths.clone(),
        cwd: opts.place.cwd.clone(),
    };
    let report = crate::compare::diff(&ws, &store, &dopts, progress)?;
    Ok(DiffCmdReport {
        report,
        opts: opts.clone(),
        ws,
        store,
    })
}

json_via!(DiffCmdReport, |d| {
    let r = &d.report;
    let mut v = json!({"files": r.files, "rows": r.rows, "tables": r.tables});
    if d.opts.stat {
        v["stat"] = val(&r.stat);
        v["row_stat"] = val(&r.row_stat);
    }
    v
});

impl Render for DiffCmdReport {
    fn human(&self, out: &mut Human<'_>) -> Result<()> {
        if self.opts.stat || self.opts.patch {
            self.lines(out)
        } else {
            self.list(out)
        }
    }

    fn status(&self) -> i32 {
        i32::from(self.opts.exit_code && self.report.differs())
    }
}

fn rows_line(r: &DiffReport) -> String {
    let s = &r.row_stat;
    format!(
        "{} changed: {} added, {} removed, {} modified",
        plural(s.total(), "row"),
        s.added,
        s.removed,
        s.modified
    )
}

impl DiffCmdReport {
    /// Line-level views read both sides: the new side is the snapshot B, or
    /// the working tree at the snapshot's recorded sources.
    fn lines(&self, out: &mut Human<'_>) -> Result<()> {
        let r = &self.report;
        let sa = r
            .old
            .as_ref()
            .ok_or_else(|| SyncError::Invalid("the diff does not name its old snapshot".into()))?;
        let old = Side::Tree {
            src: &self.store,
            root: sa.root,
        };
        let resolve = |p: &str| -> Option<PathBuf> {
            crate::sources::placements(sa, Some(p), &self.ws.root)
                .ok()
                .and_then(|v| v.into_iter().next())
                .map(|pl| pl.dest)
        };
        let new = match self.opts.b {
            Some(_) => Side::Tree {
                src: &self.store,
                root: r.new_root,
            },
            None => Side::Disk(&resolve),
        };
        let files: Vec<&FileChange> = r.files.iter().filter(|c| !c.path.ends_with('/')).collect();
        if self.opts.stat && (!files.is_empty() || r.rows.is_empty()) {
            let width = files.iter().map(|c| c.path.len()).max().unwrap_or(0);
            let (mut ins, mut del) = (0u64, 0u64);
            for c in &files {
                let s = line_stat(&old.read(&c.path)?, &new.read(&c.path)?);
                ins += s.insertions;
                del += s.deletions;
                let detail = match s.binary {
                    Some((o, n)) => format!("Bin {o} -> {n} bytes"),
                    None => {
                        let n = s.insertions + s.deletions;
                        let scale = if n > 50 { 50.0 / n as f64 } else { 1.0 };
                        let bar = |k: u64| (k as f64 * scale).ceil() as usize;
                        let (p, m) = ("+".repeat(bar(s.insertions)), "-".repeat(bar(s.deletions)));
                        format!("{n} {p}{m}")
                    }
                };
                out.line(format_args!(
                    " {:<width$} | {detail}",
                    quote_path(&c.raw_path)
                ))?;
            }
            let es = |n: u64| if n == 1 { "" } else { "s" };
            out.line(format_args!(
                " {} changed, {ins} insertion{}(+), {del} deletion{}(-)",
                plural(files.len() as u64, "file"),
                es(ins),
                es(del)
            ))?;
        }
        if self.opts.patch {
            if self.opts.stat && !files.is_empty() {
                out.line("")?;
            }
            for c in &files {
                let text = unified(&c.path, &old.read(&c.path)?, &new.read(&c.path)?);
                out.bytes(text.as_bytes())?;
            }
        }
        if !r.rows.is_empty() {
            out.line(rows_line(r))?;
        }
        Ok(())
    }

    /// One line per change, then the totals.
    fn list(&self, out: &mut Human<'_>) -> Result<()> {
        let r = &self.report;
        let stat = &r.stat;
        for c in &r.files {
            let mut p = quote_path(&c.raw_path);
            if c.path.ends_with('/') {
                p.push('/');
            }
            let detail = match c.change {
                ChangeKind::Added => c.new_size.map(|n| format!(" ({})", size(n))),
                ChangeKind::Removed => c.old_size.map(|n| format!(" ({})", size(n))),
                ChangeKind::Modified => match (c.old_size, c.new_size) {
                    (Some(o), Some(n)) if o != n => Some(format!(" ({} -> {})", size(o), size(n))),
                    _ => None,
                },
                ChangeKind::Type => Some(format!(
                    " ({} -> {})",
                    c.old_type.unwrap_or("?"),
                    c.new_type.unwrap_or("?")
                )),
            };
            let detail = detail.unwrap_or_default();
            out.line(format_args!("{} {p}{detail}", c.change.symbol()))?;
        }
        for t in &r.tables {
            let what = if t.view { "view" } else { "table" };
            let sym = match t.change {
                "added" => '+',
                "removed" => '-',
                _ => 'S',
            };
            let schema = match t.change {
                "schema" => " (schema changed)",
                "key" => " (schema changed: rows keyed by other columns, not compared)",
                "sequence" => " (sequence moved)",
                _ => "",
            };
            out.line(format_args!(
                "{sym} {what} {}{schema}",
                quote_path(t.table.as_bytes())
            ))?;
        }
        // (Names print quoted when they hold control characters, quotes or
        // backslashes: a name cannot fake or split a line.)
        for row in &r.rows {
            let cols = if row.columns.is_empty() {
                String::new()
            } else {
                let names: Vec<String> = row
                    .columns
                    .iter()
                    .map(|c| quote_path(c.as_bytes()))
                    .collect();
                format!(" [{}]", names.join(", "))
            };
            let key: Vec<String> = row
                .key
                .iter()
                .map(crate::db::value::Value::to_sql)
                .collect();
            out.line(format_args!(
                "{} {}({}){cols}",
                row.change.symbol(),
                quote_path(row.table.as_bytes()),
                key.join(", ")
            ))?;
        }
        if !r.files.is_empty() {
            let typed = if stat.type_changed > 0 {
                format!(", {} changed type", stat.type_changed)
            } else {
                String::new()
            };
            out.line(format_args!(
                "{} changed: {} added, {} removed, {} modified{typed}; +{} -{}",
                plural(stat.total(), "path"),
                stat.added,
                stat.removed,
                stat.modified,
                size(stat.bytes_added),
                size(stat.bytes_removed)
            ))?;
        }
        if !r.rows.is_empty() {
            out.line(rows_line(r))?;
        }
        Ok(())
    }
}
