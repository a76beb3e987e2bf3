//! The `sp-sync` commands as library calls: each takes an options struct
//! (with the [`Place`] it runs in) and a [`Progress`], and returns a report
//! that serializes to the command's `--json` output and prints itself for
//! a person ([`Render`]). The binary only parses, calls one of these and
//! prints the report.

mod bundle;
mod cache;
mod deploy;
mod diff;
pub mod fmt;
mod local;
mod repo;
mod restore;
mod snapshot;
mod transfer;

use std::fmt::Display;
use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;

use crate::error::{Result, SyncError};
use crate::store::{LockMode, Store};
use crate::workspace::Workspace;

pub use bundle::{
    BundleCreateOptions, BundleCreateReport, BundleImportOptions, BundleImportReport,
    BundleVerifyOptions, BundleVerifyReport, bundle_create, bundle_import, bundle_verify,
};
pub use cache::{
    CacheListReport, CachePruneOptions, CachePruneReport, CacheRestoreOptions, CacheRestoreReport,
    CacheSaveOptions, CacheSaveReport, cache_list, cache_prune, cache_restore, cache_save,
};
pub use deploy::{Console, DeployCmdOptions, DeployCmdReport, deploy};
pub use diff::{DiffCmdOptions, DiffCmdReport, diff};
pub use local::{LocalCmdOptions, LocalCmdReport, LocalMode, local};
pub use repo::{
    FsckCmdOptions, FsckCmdReport, GcCmdOptions, GcCmdReport, InitReport, LogOptions, LogReport,
    LsOptions, LsReport, RefCmd, RefReport, RemoteCmd, RemoteReport, fsck, gc, init, log, ls, refs,
    remote,
};
pub use restore::{RestoreCmdOptions, RestoreCmdReport, restore};
pub use snapshot::{SnapshotCmdOptions, SnapshotCmdReport, snapshot};
pub use transfer::{
    DEFAULT_MAX_BODY, PullOptions, PullReport, PushOptions, ServeOptions, TransferCmdReport, pull,
    push, serve,
};

pub use crate::progress::{NoProgress, Progress};

/// Where a command runs: the store it was given (`--store`), if any, and
/// the directory relative paths are taken from.
#[derive(Debug, Clone, Default)]
pub struct Place {
    /// The store directory (or `s3://` URL) given; `None`: a `.sp-sync`
    /// directory here or above.
    pub store: Option<PathBuf>,
    /// The current directory.
    pub cwd: PathBuf,
}

impl Place {
    /// The workspace: the store and the project root it belongs to.
    pub fn workspace(&self) -> Result<Workspace> {
        Workspace::locate(self.store.as_deref(), &self.cwd)
    }

    /// The workspace and its store, opened with `mode`.
    pub fn open(&self, mode: LockMode) -> Result<(Workspace, Store)> {
        let ws = self.workspace()?;
        let store = crate::open_store(&ws.store_dir, mode)?;
        Ok((ws, store))
    }

    /// The store here, if there is one (`None` when none was found).
    pub fn store_if_any(&self) -> Result<Option<(Workspace, Store)>> {
        match self.workspace() {
            Ok(ws) => {
                let store = crate::open_store(&ws.store_dir, LockMode::Shared)?;
                Ok(Some((ws, store)))
            }
            Err(SyncError::NoStore(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Where a report prints for a person: results on `out` (standard output),
/// notes on standard error unless quiet.
pub struct Human<'a> {
    out: &'a mut dyn Write,
    quiet: bool,
}

impl<'a> Human<'a> {
    /// Results to `out`; notes to standard error unless `quiet`.
    pub fn new(out: &'a mut dyn Write, quiet: bool) -> Self {
        Human { out, quiet }
    }

    /// A line of results.
    pub fn line(&mut self, text: impl Display) -> Result<()> {
        writeln!(self.out, "{text}").map_err(stdout_error)
    }

    /// Bytes of results, as they are.
    pub fn bytes(&mut self, data: &[u8]) -> Result<()> {
        self.out.write_all(data).map_err(stdout_error)
    }

    /// Whether the person asked for quiet (`-q`).
    pub fn quiet(&self) -> bool {
        self.quiet
    }

    /// A note for the person (standard error; not when quiet).
    pub fn note(&self, text: impl Display) {
        if !self.quiet {
            eprintln!("{text}");
        }
    }
}

fn stdout_error(e: std::io::Error) -> SyncError {
    SyncError::io("writing", "standard output", e)
}

/// A command's report: its `Serialize` form is the command's `--json`
/// output; [`Render::human`] prints it for a person.
pub trait Render: Serialize {
    /// Lines for standard error in every mode (warnings), printed first.
    fn stderr(&self) -> Vec<String> {
        Vec::new()
    }
    /// Prints the report for a person.
    fn human(&self, out: &mut Human<'_>) -> Result<()>;
    /// What failed though the command ran to its end (`error: …`, exit 1).
    fn error(&self) -> Option<String> {
        None
    }
    /// The exit status when [`Render::error`] is `None`.
    fn status(&self) -> i32 {
        0
    }
}

/// Prints `report` as JSON (pretty, one document) or for a person, and
/// returns the exit status.
pub fn print(report: &dyn Printable, json: bool, quiet: bool) -> Result<i32> {
    report.print(json, quiet)
}

/// A [`Render`] behind a `dyn`: what [`print`] takes.
pub trait Printable {
    /// Prints and returns the exit status.
    fn print(&self, json: bool, quiet: bool) -> Result<i32>;
}

impl<R: Render> Printable for R {
    fn print(&self, json: bool, quiet: bool) -> Result<i32> {
        for line in self.stderr() {
            eprintln!("{line}");
        }
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        if json {
            let text = serde_json::to_string_pretty(self)
                .map_err(|e| SyncError::Invalid(format!("the JSON report: {e}")))?;
            writeln!(out, "{text}").map_err(stdout_error)?;
        } else {
            self.human(&mut Human::new(&mut out, quiet))?;
        }
        out.flush().map_err(stdout_error)?;
        drop(out);
        match self.error() {
            Some(e) => {
                eprintln!("error: {e}");
                Ok(1)
            }
            None => Ok(self.status()),
        }
    }
}

/// `refs`, or `main` when none is given.
fn or_main(refs: &[String]) -> Vec<String> {
    if refs.is_empty() {
        vec!["main".to_string()]
    } else {
        refs.to_vec()
    }
}

/// `x` as JSON (`null` if it cannot be: it always can for our reports).
fn val<T: Serialize + ?Sized>(x: &T) -> serde_json::Value {
    serde_json::to_value(x).unwrap_or(serde_json::Value::Null)
}

/// Implements `Serialize` through a `serde_json::Value` the closure builds:
/// for reports whose JSON is not their fields as they are.
macro_rules! json_via {
    ($t:ty, |$r:ident| $body:expr) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                let $r = self;
                let v: serde_json::Value = $body;
                v.serialize(s)
            }
        }
    };
}
pub(crate) use json_via;

/// `--db` with `--schema` and `--key-by-all-columns` folded into its
/// PostgreSQL URL (refused for a SQLite file, which stays as given).
fn db_arg(
    db: Option<&std::path::Path>,
    schema: Option<&str>,
    key_by_all_columns: bool,
) -> Result<Option<std::path::PathBuf>> {
    db.map(|d| {
        crate::db::pg::resolve_location(std::path::Path::new(""), d, schema, key_by_all_columns)
    })
    .transpose()
}
