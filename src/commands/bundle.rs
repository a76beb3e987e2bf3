//! `sp-sync bundle create|verify|import`, and `pull FILE` for a bundle.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;

use super::fmt::{ref_move, size};
use super::{Human, Place, Render, json_via, val};
use crate::bundle::{CreateOptions, CreateReport, ImportOptions, ImportReport, VerifyReport};
use crate::error::{Result, SyncError};
use crate::id::ObjectId;
use crate::progress::Progress;
use crate::store::{LockMode, Store};

/// Adds `what FILE` as context, or just `what` when the error already names FILE.
fn named<T>(r: Result<T>, what: &str, file: &Path) -> Result<T> {
    r.map_err(|e| {
        let shown = file.display().to_string();
        if e.to_string().contains(&shown) {
            e.context(what)
        } else {
            e.context(format!("{what} {shown}"))
        }
    })
}

fn is_std(p: &Path) -> bool {
    p.as_os_str() == "-"
}

/// `sp-sync bundle create FILE [REF...] [--since SNAP]`.
#[derive(Debug, Clone, Default)]
pub struct BundleCreateOptions {
    /// Where.
    pub place: Place,
    /// The bundle to write (`-`: standard output).
    pub file: PathBuf,
    /// Refs to carry (empty: main).
    pub refs: Vec<String>,
    /// Leave out everything these snapshots reach.
    pub since: Vec<String>,
}

/// A bundle written. Its JSON: the [`CreateReport`] and `file`.
#[derive(Debug)]
pub struct BundleCreateReport {
    /// The library's report.
    pub report: CreateReport,
    /// The file as given.
    pub file: PathBuf,
    /// Seconds it took.
    pub seconds: f64,
}

/// Writes a bundle as `opts` says.
pub fn bundle_create(
    opts: &BundleCreateOptions,
    progress: &dyn Progress,
) -> Result<BundleCreateReport> {
    let (_, store) = opts.place.open(LockMode::Shared)?;
    let copts = CreateOptions {
        refs: opts.refs.clone(),
        since: opts.since.clone(),
    };
    let start = Instant::now();
    let file = &opts.file;
    let report = if is_std(file) {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
        let name = Path::new("standard output");
        let r = crate::bundle::create(&store, &copts, &mut out, name, progress).and_then(|r| {
            out.flush()
                .map_err(|e| SyncError::io("writing", "standard output", e))?;
            Ok(r)
        });
        r.map_err(|e| e.context("bundle create"))?
    } else {
        let path = opts.place.cwd.join(file);
        named(
            crate::bundle::create_file(&store, &copts, &path, progress),
            "bundle create",
            file,
        )?
    };
    Ok(BundleCreateReport {
        report,
        file: file.clone(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn prerequisites_note(p: &[ObjectId]) -> String {
    if p.is_empty() {
        return String::new();
    }
    let ids: Vec<String> = p.iter().map(|i| i.short()).collect();
    format!("; prerequisites: {}", ids.join(", "))
}

json_via!(BundleCreateReport, |r| {
    let mut v = val(&r.report);
    v["file"] = json!(r.file.display().to_string());
    v
});

impl Render for BundleCreateReport {
    fn human(&self, out: &mut Human<'_>) -> Result<()> {
        let rep = &self.report;
        for r in &rep.refs {
            out.note(format!("{} {}", r.id.short(), r.name));
        }
        out.note(format!(
            "bundle {}: {} objects ({}), {} in {:.2}s{}",
            self.file.display(),
            rep.objects,
            size(rep.object_bytes),
            size(rep.bytes),
            self.seconds,
            prerequisites_note(&rep.prerequisites)
        ));
        Ok(())
    }
}

/// `sp-sync bundle verify FILE`.
#[derive(Debug, Clone, Default)]
pub struct BundleVerifyOptions {
    /// Where (inside a store, its prerequisites are checked too).
    pub place: Place,
    /// The bundle (`-`: standard input).
    pub file: PathBuf,
}

/// A bundle checked. Its JSON is the [`VerifyReport`].
#[derive(Debug)]
pub struct BundleVerifyReport {
    /// The library's report.
    pub report: VerifyReport,
    /// The file as given.
    pub file: PathBuf,
}

/// Checks a bundle: structure, every object, trailer, completeness.
pub fn bundle_verify(
    opts: &BundleVerifyOptions,
    progress: &dyn Progress,
) -> Result<BundleVerifyReport> {
    let store = opts.place.store_if_any()?.map(|(_, s)| s);
    let file = &opts.file;
    let r = if is_std(file) {
        let input = std::io::stdin().lock();
        crate::bundle::verify(input, "standard input", store.as_ref(), progress)
    } else {
        match std::fs::File::open(opts.place.cwd.join(file)) {
            Ok(f) => {
                crate::bundle::verify(f, &file.display().to_string(), store.as_ref(), progress)
            }
            Err(e) => Err(SyncError::io("opening", file, e)),
        }
    };
    Ok(BundleVerifyReport {
        report: named(r, "bundle verify", file)?,
        file: file.clone(),
    })
}

json_via!(BundleVerifyReport, |r| val(&r.report));

fn objects(n: u64) -> String {
    if n == 1 {
        "1 object".into()
    } else {
        format!("{n} objects")
    }
}

impl Render for BundleVerifyReport {
    fn human(&self, out: &mut Human<'_>) -> Result<()> {
        let rep = &self.report;
        out.line(format_args!(
            "{}: ok, {} objects ({}), {}, trailer {}",
            self.file.display(),
            rep.objects,
            size(rep.object_bytes),
            size(rep.bytes),
            rep.trailer.short()
        ))?;
        for r in &rep.refs {
            out.line(format_args!("ref {} {}", r.id, r.name))?;
        }
        for p in &rep.prerequisites {
            out.line(format_args!("prerequisite {p}"))?;
        }
        let n = objects(rep.external_references);
        if rep.prerequisites.is_empty() {
            out.line("complete: needs no prerequisites")
        } else if rep.checked_in_store {
            out.line(format_args!(
                "complete given its prerequisites: this store holds them and the {n} they must provide"
            ))
        } else {
            out.line(format_args!(
                "not inside a store: whether the prerequisites provide the {n} the bundle references and does not hold was not checked"
            ))
        }
    }
}

/// `sp-sync bundle import FILE [--force]`.
#[derive(Debug, Clone, Default)]
pub struct BundleImportOptions {
    /// Where.
    pub place: Place,
    /// The bundle (`-`: standard input).
    pub file: PathBuf,
    /// Move refs even when that is not a fast-forward.
    pub force: bool,
}

/// A bundle imported (or pulled).
#[derive(Debug)]
pub struct BundleImportReport {
    /// The library's report.
    pub report: ImportReport,
    /// The file as given.
    pub file: PathBuf,
    /// `imported` or `pulled`.
    pub verb: &'static str,
    /// Seconds it took.
    pub seconds: f64,
}

/// Stores a bundle's objects (each verified), then moves its refs.
pub fn bundle_import(
    opts: &BundleImportOptions,
    progress: &dyn Progress,
) -> Result<BundleImportReport> {
    let (_, store) = opts.place.open(LockMode::Shared)?;
    let iopts = ImportOptions {
        force: opts.force,
        ..Default::default()
    };
    let start = Instant::now();
    let report = import_file(&store, &opts.place.cwd, &opts.file, &iopts, progress)?;
    Ok(BundleImportReport {
        report,
        file: opts.file.clone(),
        verb: "imported",
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Imports FILE (relative to `cwd`; `-`: standard input) into `store`.
pub(super) fn import_file(
    store: &Store,
    cwd: &Path,
    file: &Path,
    opts: &ImportOptions,
    progress: &dyn Progress,
) -> Result<ImportReport> {
    let r = if is_std(file) {
        let input = std::io::stdin().lock();
        crate::bundle::import(store, input, "standard input", opts, progress)
    } else {
        match std::fs::File::open(cwd.join(file)) {
            Ok(f) => crate::bundle::import(store, f, &file.display().to_string(), opts, progress),
            Err(e) => Err(SyncError::io("opening", file, e)),
        }
    };
    named(r, "bundle import", file)
}

json_via!(BundleImportReport, |r| {
    let rep = &r.report;
    let first = rep.refs.first();
    json!({
        "ref": first.map(|x| x.name.clone()),
        "id": first.map(|x| x.id),
        "refs": rep.refs,
        "objects_received": rep.objects,
        "object_bytes_received": rep.object_bytes,
        "bytes_received": rep.bytes,
        "stored_objects": rep.stored_objects,
        "stored_bytes": rep.stored_bytes,
        "prerequisites": rep.prerequisites,
    })
});

impl Render for BundleImportReport {
    fn stderr(&self) -> Vec<String> {
        let refs = &self.report.refs;
        refs.iter()
            .filter_map(|u| u.warning.as_ref().map(|w| format!("warning: {w}")))
            .collect()
    }

    fn human(&self, out: &mut Human<'_>) -> Result<()> {
        let rep = &self.report;
        for u in rep.refs.iter().filter(|u| u.updated) {
            out.note(ref_move(u.old, u.id, &u.name, u.forced));
        }
        out.note(format!(
            "{} {} objects ({}, {} new) from {} in {:.2}s",
            self.verb,
            rep.objects,
            size(rep.object_bytes),
            rep.stored_objects,
            self.file.display(),
            self.seconds,
        ));
        Ok(())
    }
}
