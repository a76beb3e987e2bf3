//! The store's own commands: `init`, `log`, `ls`, `fsck`, `gc`, `ref`, `remote`.

use std::path::PathBuf;

use serde::Serialize;
use serde_json::json;

use super::fmt::{human_time, mode_string, plural, printable, quote_path, rfc3339, size};
use super::{Human, Place, Render, json_via, val};
use crate::error::{Result, SyncError};
use crate::id::ObjectId;
use crate::object::snapshot::Snapshot;
use crate::object::tree::{Entry, EntryKind};
use crate::progress::Progress;
use crate::remote::Location;
use crate::remote::config::{LocalConfig, RemoteConfig, validate_remote_name};
use crate::store::LockMode;
use crate::store::fsck::{FsckOptions, FsckReport};
use crate::store::gc::GcReport;
use crate::workspace::Workspace;

/// `sp-sync init [DIR]`: what was made.
#[derive(Debug, Serialize)]
pub struct InitReport {
    /// The store's directory (or URL).
    pub store: String,
    /// False when a store was there already.
    pub created: bool,
}

/// Creates a store: `DIR/.sp-sync` (DIR defaults to here), or exactly the
/// place's `--store`.
pub fn init(place: &Place, dir: Option<PathBuf>) -> Result<InitReport> {
    let target = Workspace::init_dir(place.store.as_deref(), dir.as_deref(), &place.cwd);
    let created = crate::init_store(&target)?;
    Ok(InitReport {
        store: target.display().to_string(),
        created,
    })
}

impl Render for InitReport {
    fn human(&self, out: &mut Human<'_>) -> Result<()> {
        if self.created {
            out.note(format!(
                "initialized an empty sp-sync store in {}",
                self.store
            ));
        } else {
            out.note(format!(
                "store {} already exists; nothing changed",
                self.store
            ));
        }
        Ok(())
    }
}

/// `sp-sync log [REF] [-n N]`.
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    /// Where.
    pub place: Place,
    /// The ref or snapshot to start from (default: main).
    pub reference: Option<String>,
    /// At most this many.
    pub max_count: Option<usize>,
}

/// Snapshots, newest first.
#[derive(Debug)]
pub struct LogReport {
    /// Each snapshot and its id.
    pub entries: Vec<(ObjectId, Snapshot)>,
}

/// The snapshots from `opts.reference` back along first parents.
pub fn log(opts: &LogOptions) -> Result<LogReport> {
    let (_, store) = opts.place.open(LockMode::Shared)?;
    let id = crate::names::resolve(&store, opts.reference.as_deref().unwrap_or("main"))?;
    let entries = crate::history(&store, id, opts.max_count)?;
    Ok(LogReport { entries })
}

json_via!(LogReport, |r| {
    let v: Vec<_> = r
        .entries
        .iter()
        .map(|(id, s)| {
            let sources = match &s.sources {
                None => serde_json::Value::Null,
                Some(src) => json!({"paths": src.paths, "excludes": src.excludes, "dbs": src.dbs}),
            };
            json!({
                "id": id, "time": rfc3339(s.time), "message": s.message,
                "parents": s.parents, "host": s.host, "root": s.root,
                "files": s.files, "bytes": s.bytes,
                "sources": sources, "skipped": s.skipped,
            })
        })
        .collect();
    serde_json::Value::Array(v)
});

impl Render for LogReport {
    fn human(&self, out: &mut Human<'_>) -> Result<()> {
        for (i, (id, s)) in self.entries.iter().enumerate() {
            if i > 0 {
                out.line("")?;
            }
            out.line(format_args!("snapshot {id}"))?;
            out.line(format_args!("Date:   {}", human_time(s.time)))?;
            out.line(format_args!("Host:   {}", printable(&s.host)))?;
            out.line(format_args!("Files:  {} ({})", s.files, size(s.bytes)))?;
            if let Some(src) = &s.sources {
                let paths: Vec<String> = src
                    .paths
                    .iter()
                    .map(|p| {
                        if p.is_empty() {
                            ".".into()
                        } else {
                            printable(p)
                        }
                    })
                    .collect();
                let dbs: Vec<String> = src.dbs.iter().map(|d| printable(&d.location)).collect();
                out.line(format_args!("Paths:  {}", paths.join(" ")))?;
                if !dbs.is_empty() {
                    out.line(format_args!("DBs:    {}", dbs.join(" ")))?;
                }
            }
            if !s.skipped.is_empty() {
                let n = plural(s.skipped.len() as u64, "path");
                out.line(format_args!("Partial: {n} left out"))?;
                for k in &s.skipped {
                    let (p, e) = (printable(&k.path), printable(&k.error));
                    out.line(format_args!("    skipped {p}: {e}"))?;
                }
            }
            if !s.message.is_empty() {
                out.line("")?;
                for line in s.message.lines() {
                    out.line(format_args!("    {}", printable(line)))?;
                }
            }
        }
        Ok(())
    }
}

/// `sp-sync ls SNAP[:PATH]`.
#[derive(Debug, Clone, Default)]
pub struct LsOptions {
    /// Where.
    pub place: Place,
    /// `SNAP[:PATH]`.
    pub spec: String,
    /// Descend into subdirectories.
    pub recursive: bool,
    /// Show mode, size and modification time.
    pub long: bool,
}

/// A tree's entries, paths relative to it.
#[derive(Debug)]
pub struct LsReport {
    /// The snapshot listed.
    pub snapshot: ObjectId,
    /// What it was taken from (none for snapshots older than sources).
    pub sources: Option<crate::object::snapshot::Sources>,
    /// Each entry under its path.
    pub rows: Vec<(Vec<u8>, Entry)>,
    /// Whether people see mode, size and time.
    pub long: bool,
}

/// Lists `opts.spec`.
pub fn ls(opts: &LsOptions) -> Result<LsReport> {
    let (_, store) = opts.place.open(LockMode::Shared)?;
    let rows = crate::list(&store, &opts.spec, opts.recursive)?;
    let id = crate::names::resolve(&store, crate::names::split_spec(&opts.spec).0)?;
    let sources = crate::names::load_snapshot(&store, &id)?.sources;
    Ok(LsReport {
        snapshot: id,
        sources,
        rows,
        long: opts.long,
    })
}

json_via!(LsReport, |r| {
    let sources = match &r.sources {
        None => serde_json::Value::Null,
        Some(src) => json!({"paths": src.paths, "excludes": src.excludes, "dbs": src.dbs}),
    };
    let v: Vec<_> = r
        .rows
        .iter()
        .map(|(p, e)| {
            let mut o = json!({
                "path": String::from_utf8_lossy(p), "type": e.kind_name(),
                "mode": format!("{:04o}", e.mode), "size": e.size(), "mtime": rfc3339(e.mtime),
            });
            if let EntryKind::Symlink { target } = &e.kind {
                o["target"] = json!(String::from_utf8_lossy(target));
            }
            o
        })
        .collect();
    json!({"snapshot": r.snapshot, "sources": sources, "entries": v})
});

impl Render for LsReport {
    fn human(&self, out: &mut Human<'_>) -> Result<()> {
        for (p, e) in &self.rows {
            let mut shown = quote_path(p);
            if matches!(e.kind, EntryKind::Dir { .. }) {
                shown.push('/');
            }
            if !self.long {
                out.line(shown)?;
                continue;
            }
            let k = match e.kind {
                EntryKind::Dir { .. } => 'd',
                EntryKind::Symlink { .. } => 'l',
                EntryKind::File { .. } => '-',
            };
            let (mode, time) = (mode_string(k, e.mode), human_time(e.mtime));
            let mut line = format!("{mode} {:>12} {time} {shown}", e.size());
            if let EntryKind::Symlink { target } = &e.kind {
                line.push_str(" -> ");
                line.push_str(&quote_path(target));
            }
            out.line(line)?;
        }
        Ok(())
    }
}

/// `sp-sync fsck`.
#[derive(Debug, Clone, Default)]
pub struct FsckCmdOptions {
    /// Where.
    pub place: Place,
    /// Re-hash every stored chunk and check every pack's checksum.
    pub read_data: bool,
    /// Rewrite every pack's index from the pack first.
    pub rebuild_index: bool,
}

/// What fsck found (its JSON is the [`FsckReport`]).
#[derive(Debug)]
pub struct FsckCmdReport {
    /// The check.
    pub report: FsckReport,
    /// Whether all data was read.
    pub read_data: bool,
}

/// Checks every reachable object (after rebuilding the indexes if asked).
pub fn fsck(opts: &FsckCmdOptions, progress: &dyn Progress) -> Result<FsckCmdReport> {
    let ws = opts.place.workspace()?;
    let mut rebuilt = Vec::new();
    if opts.rebuild_index {
        let store = crate::open_store(&ws.store_dir, LockMode::Shared)?;
        rebuilt = crate::rebuild_index(&store, progress)?;
    }
    let store = crate::open_store(&ws.store_dir, LockMode::Shared)?;
    let fopts = FsckOptions {
        read_data: opts.read_data,
    };
    let mut report = crate::fsck(&store, &fopts, progress)?;
    report.errors.splice(0..0, rebuilt);
    report.ok = report.errors.is_empty();
    Ok(FsckCmdReport {
        report,
        read_data: opts.read_data,
    })
}

json_via!(FsckCmdReport, |r| val(&r.report));

impl Render for FsckCmdReport {
    fn human(&self, out: &mut Human<'_>) -> Result<()> {
        let r = &self.report;
        for w in &r.warnings {
            out.line(format_args!("warning: {w}"))?;
        }
        for e in &r.errors {
            out.line(e)?;
        }
        out.note(format!(
            "checked {} refs, {} snapshots, {} reachable objects in {} packs{}",
            r.refs,
            r.snapshots,
            r.reachable,
            r.packs,
            if self.read_data {
                " (all data read)"
            } else {
                ""
            }
        ));
        Ok(())
    }

    fn error(&self) -> Option<String> {
        let n = self.report.errors.len();
        (!self.report.ok).then(|| format!("fsck found {n} problems"))
    }
}

/// What gc removed (its JSON is the [`GcReport`]).
#[derive(Debug)]
pub struct GcCmdReport {
    /// The collection.
    pub report: GcReport,
    /// Whether nothing was removed, only counted.
    pub dry_run: bool,
}

/// The options of `sp-sync gc`.
#[derive(Debug, Clone, Copy, Default)]
pub struct GcCmdOptions {
    /// Only say what would be removed.
    pub dry_run: bool,
    /// Also rewrite live objects as deltas against their older versions.
    pub repack: bool,
}

/// Removes what no ref reaches (`dry_run`: says what it would remove;
/// `repack`: also stores objects as deltas against their older versions).
pub fn gc(place: &Place, opts: &GcCmdOptions, progress: &dyn Progress) -> Result<GcCmdReport> {
    let (_, store) = place.open(LockMode::Exclusive)?;
    let report = crate::gc_with(
        &store,
        &crate::GcOptions {
            dry_run: opts.dry_run,
            repack: opts.repack,
            keep_recent: None,
        },
        progress,
    )?;
    Ok(GcCmdReport {
        report,
        dry_run: opts.dry_run,
    })
}

json_via!(GcCmdReport, |r| val(&r.report));

impl Render for GcCmdReport {
    fn human(&self, out: &mut Human<'_>) -> Result<()> {
        let r = &self.report;
        let verb = if self.dry_run {
            "would remove"
        } else {
            "removed"
        };
        out.line(format_args!(
            "{verb} {} objects ({}); {} packs deleted, {} rewritten; {} leftover files; {} reachable objects kept ({})",
            r.removed_objects,
            size(r.removed_bytes),
            r.packs_deleted,
            r.packs_rewritten,
            r.orphan_files,
            r.reachable_objects,
            size(r.kept_bytes)
        ))?;
        if r.kept_bases > 0 {
            out.line(format_args!(
                "kept {} objects no ref reaches as bases of stored deltas",
                r.kept_bases
            ))?;
        }
        if r.repacked && !self.dry_run {
            out.line(format_args!(
                "repacked: {} objects stored as deltas; live objects {} -> {}",
                r.delta_objects,
                size(r.repack_bytes_before),
                size(r.repack_bytes_after)
            ))?;
        }
        Ok(())
    }
}

/// `sp-sync ref …`.
#[derive(Debug, Clone)]
pub enum RefCmd {
    /// Every ref and the snapshot it names.
    List,
    /// Point `name` at `snap` (creating or moving it).
    Set {
        /// The ref.
        name: String,
        /// The snapshot (any name `log` takes).
        snap: String,
    },
    /// Remove `name`.
    Delete {
        /// The ref.
        name: String,
    },
}

/// What `ref` did.
#[derive(Debug)]
pub enum RefReport {
    /// Every ref.
    List(Vec<(String, ObjectId)>),
    /// A ref set.
    Set {
        /// The ref.
        name: String,
        /// What it names now.
        id: ObjectId,
        /// What it named.
        old: Option<ObjectId>,
    },
    /// A ref removed.
    Deleted {
        /// The ref.
        name: String,
        /// What it named.
        old: ObjectId,
    },
}

/// Lists, sets or deletes refs.
pub fn refs(place: &Place, cmd: &RefCmd) -> Result<RefReport> {
    let (_, store) = place.open(LockMode::Shared)?;
    Ok(match cmd {
        RefCmd::List => RefReport::List(store.list_refs()?),
        RefCmd::Set { name, snap } => {
            let id = crate::names::resolve(&store, snap)?;
            let old = store.read_ref(name)?;
            store.update_ref(name, Some(old), Some(id))?;
            RefReport::Set {
                name: name.clone(),
                id,
                old,
            }
        }
        RefCmd::Delete { name } => {
            let old = store
                .read_ref(name)?
                .ok_or_else(|| SyncError::NotFound(format!("unknown ref {name}")))?;
            store.update_ref(name, Some(Some(old)), None)?;
            RefReport::Deleted {
                name: name.clone(),
                old,
            }
        }
    })
}

json_via!(RefReport, |r| match r {
    RefReport::List(refs) => refs
        .iter()
        .map(|(n, id)| json!({"name": n, "id": id}))
        .collect(),
    RefReport::Set { name, id, old } => json!({"name": name, "id": id, "old": old}),
    RefReport::Deleted { name, old } => json!({"name": name, "deleted": old}),
});

impl Render for RefReport {
    fn human(&self, out: &mut Human<'_>) -> Result<()> {
        match self {
            RefReport::List(refs) => {
                for (n, id) in refs {
                    out.line(format_args!("{id} {n}"))?;
                }
            }
            RefReport::Set { name, id, .. } => out.note(format!("{name} -> {}", id.short())),
            RefReport::Deleted { name, old } => {
                out.note(format!("deleted ref {name} (was {})", old.short()))
            }
        }
        Ok(())
    }
}

/// `sp-sync remote …`.
#[derive(Debug, Clone)]
pub enum RemoteCmd {
    /// Add a remote.
    Add {
        /// Its name.
        name: String,
        /// A path or file://, http(s)://HOST/TENANT, s3://BUCKET/PREFIX.
        url: String,
        /// The environment variable an HTTP remote's token is read from.
        token_env: Option<String>,
    },
    /// List remotes.
    List,
    /// Remove a remote (and its tracking refs).
    Remove {
        /// Its name.
        name: String,
    },
}

/// What `remote` did.
#[derive(Debug)]
pub enum RemoteReport {
    /// A remote added, with its URL as stored.
    Added {
        /// Its name.
        name: String,
        /// Its URL (a path made absolute).
        url: String,
    },
    /// Every remote and its URL.
    List(Vec<(String, String)>),
    /// A remote removed.
    Removed {
        /// Its name.
        name: String,
    },
}

/// Adds, lists or removes remotes.
pub fn remote(place: &Place, cmd: &RemoteCmd) -> Result<RemoteReport> {
    let (_, store) = place.open(LockMode::Shared)?;
    let mut cfg = LocalConfig::load(&store)?;
    Ok(match cmd {
        RemoteCmd::Add {
            name,
            url,
            token_env,
        } => {
            validate_remote_name(name)?;
            let loc = Location::parse(url)?;
            if let Some(var) = token_env {
                if !matches!(loc, Location::Http { .. }) {
                    return Err(SyncError::Invalid(format!(
                        "--token-env: only an http(s):// remote takes a token, not {url}"
                    )));
                }
                if var.is_empty() || var.contains('=') || var.contains('\0') {
                    return Err(SyncError::Invalid(format!(
                        "--token-env: {var:?} is not an environment variable name"
                    )));
                }
            }
            if cfg.remote.contains_key(name) {
                return Err(SyncError::Invalid(format!("remote {name} already exists")));
            }
            // A path is stored absolute, so it means the same from anywhere.
            let url = match loc {
                Location::Path(p) if !url.starts_with("file://") => {
                    place.cwd.join(p).display().to_string()
                }
                _ => url.clone(),
            };
            let rc = RemoteConfig {
                url: url.clone(),
                token_env: token_env.clone(),
                ..Default::default()
            };
            cfg.remote.insert(name.clone(), rc);
            cfg.save(&store)?;
            RemoteReport::Added {
                name: name.clone(),
                url,
            }
        }
        RemoteCmd::List => RemoteReport::List(
            cfg.remote
                .iter()
                // (A URL written into config.toml by hand with a user part:
                // shown without it; every command that uses it refuses it.)
                .map(|(n, r)| {
                    let url = crate::remote::with_userinfo(&r.url).unwrap_or_else(|| r.url.clone());
                    (n.clone(), url)
                })
                .collect(),
        ),
        RemoteCmd::Remove { name } => {
            if cfg.remote.remove(name).is_none() {
                return Err(SyncError::NotFound(format!("unknown remote {name:?}")));
            }
            cfg.save(&store)?;
            for (r, id) in store.list_refs()? {
                if r.starts_with(&format!("remotes/{name}/")) {
                    store.update_ref(&r, Some(Some(id)), None)?;
                }
            }
            RemoteReport::Removed { name: name.clone() }
        }
    })
}

json_via!(RemoteReport, |r| match r {
    RemoteReport::Added { name, url } => json!({"name": name, "url": url}),
    RemoteReport::List(v) => v
        .iter()
        .map(|(n, u)| json!({"name": n, "url": u}))
        .collect(),
    RemoteReport::Removed { name } => json!({"removed": name}),
});

impl Render for RemoteReport {
    fn human(&self, out: &mut Human<'_>) -> Result<()> {
        match self {
            RemoteReport::Added { name, .. } => out.note(format!("added remote {name}")),
            RemoteReport::List(v) => {
                for (n, u) in v {
                    out.line(format_args!("{n} {u}"))?;
                }
            }
            RemoteReport::Removed { name } => out.note(format!("removed remote {name}")),
        }
        Ok(())
    }
}
