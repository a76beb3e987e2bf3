//! `sp-sync local diff|to-db|to-disk`.

use super::fmt::plural;
use super::{Human, Place, Render, json_via, val};
use crate::collection::{Action, Direction, Side};
use crate::error::Result;
use crate::local::{LocalOptions, LocalReport, find_project_root};
use crate::progress::Progress;
use crate::store::LockMode;

/// Which `local` command.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LocalMode {
    /// One line per key whose file and row differ.
    #[default]
    Diff,
    /// Carry the files' edits to the database.
    ToDb,
    /// Carry the database's edits to the files.
    ToDisk,
}

/// `sp-sync local …`.
#[derive(Debug, Clone, Default)]
pub struct LocalCmdOptions {
    /// Where.
    pub place: Place,
    /// Which command.
    pub mode: LocalMode,
    /// Only these collections (`--collection`, repeatable); empty: all.
    pub collection: Vec<String>,
    /// Print the plan; change nothing.
    pub dry_run: bool,
    /// On a conflict (or with no record of the last sync), the source side wins.
    pub force: bool,
    /// (`diff`) exit 1 when there are differences.
    pub exit_code: bool,
}

/// What differs and what was done. Its JSON is the list of changes.
#[derive(Debug)]
pub struct LocalCmdReport {
    /// The library's report.
    pub report: LocalReport,
    /// The options it ran with.
    pub mode: LocalMode,
    /// Whether it was a dry run.
    pub dry_run: bool,
    /// Whether differences exit 1.
    pub exit_code: bool,
}

/// Runs `local` as `opts` says. With no store here there is no record of
/// the last sync: every difference that is not a creation is a conflict.
pub fn local(opts: &LocalCmdOptions, progress: &dyn Progress) -> Result<LocalCmdReport> {
    let (root, store) = match opts.place.workspace() {
        Ok(ws) => {
            let store = crate::open_store(&ws.store_dir, LockMode::Shared)?;
            (ws.root, Some(store))
        }
        Err(_) => (find_project_root(&opts.place.cwd), None),
    };
    let diff = opts.mode == LocalMode::Diff;
    let lopts = LocalOptions {
        collections: opts.collection.clone(),
        direction: match opts.mode {
            LocalMode::Diff => None,
            LocalMode::ToDb => Some(Direction::ToDatabase),
            LocalMode::ToDisk => Some(Direction::ToDisk),
        },
        dry_run: opts.dry_run || diff,
        force: opts.force && !diff,
    };
    let report = crate::local::local(&root, store.as_ref(), &lopts, progress)?;
    Ok(LocalCmdReport {
        report,
        mode: opts.mode,
        dry_run: opts.dry_run || diff,
        exit_code: opts.exit_code && diff,
    })
}

json_via!(LocalCmdReport, |r| val(&r.report.changes));

impl Render for LocalCmdReport {
    fn human(&self, out: &mut Human<'_>) -> Result<()> {
        let rep = &self.report;
        // `local diff` and a dry run print the plan as their result; a
        // sync that applies it lists what it did, which `-q` silences.
        let listed = self.mode == LocalMode::Diff || self.dry_run || !out.quiet();
        for c in rep.changes.iter().filter(|_| listed) {
            let cols = if c.columns.is_empty() {
                String::new()
            } else {
                format!(" [{}]", c.columns.join(", "))
            };
            let side = match (c.action, c.changed) {
                (Some(Action::Keep), Some(Side::Files)) => " (changed in the files only)",
                (Some(Action::Keep), _) => " (changed in the database only)",
                (Some(Action::Conflict), Some(_)) => " (changed on both sides)",
                (Some(Action::Conflict), None) => " (no record of the last sync)",
                (None, Some(Side::Files)) => " (files changed)",
                (None, Some(Side::Database)) => " (database changed)",
                (None, Some(Side::Both)) => " (both changed)",
                _ => "",
            };
            let what = match c.action {
                Some(a) => a.verb().to_string(),
                None => c.change.symbol().to_string(),
            };
            // (Keys and paths come from files and rows: quoted when they
            // hold control characters, so each change stays one line and
            // nothing reaches the terminal as an escape sequence.)
            let (coll, key, path) = (
                &c.collection,
                super::fmt::quote_path(c.key_text().as_bytes()),
                super::fmt::quote_path(c.path.as_bytes()),
            );
            out.line(format_args!("{what} {coll}/{key} ({path}){cols}{side}"))?;
        }
        let total = &rep.applied;
        match self.mode {
            LocalMode::Diff => {}
            _ if self.dry_run => out.note(format!(
                "dry run: {} would change",
                plural(rep.would_change, "key")
            )),
            LocalMode::ToDb => out.note(format!(
                "database: {} inserted, {} updated, {} deleted",
                plural(total.inserted, "row"),
                total.updated,
                total.deleted
            )),
            LocalMode::ToDisk => out.note(format!(
                "files: {} written, {} removed",
                total.written, total.removed_files
            )),
        }
        if self.mode != LocalMode::Diff && rep.kept > 0 {
            let other = if self.mode == LocalMode::ToDb {
                "to-disk"
            } else {
                "to-db"
            };
            out.note(format!(
                "{} changed only on the target side: left as they are (`sp-sync local {other}` carries them)",
                plural(rep.kept, "key")
            ));
        }
        Ok(())
    }

    fn stderr(&self) -> Vec<String> {
        Vec::new()
    }

    fn error(&self) -> Option<String> {
        let rep = &self.report;
        if self.mode == LocalMode::Diff || rep.conflicts == 0 {
            return None;
        }
        let source = if self.mode == LocalMode::ToDb {
            "the files' side"
        } else {
            "the database's side"
        };
        let why = if !rep.has_store {
            "with no record of the last sync (no store: `sp-sync init` makes one), a difference cannot be told from an edit on the target"
        } else {
            "changed on both sides since the last sync (or never synced)"
        };
        Some(format!(
            "{} left alone: {why}; --force takes {source}",
            plural(rep.conflicts, "conflicting key")
        ))
    }

    fn status(&self) -> i32 {
        i32::from(self.exit_code && !self.report.changes.is_empty())
    }
}
