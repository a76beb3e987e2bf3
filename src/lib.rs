//! `systemprompt_sync`: a content-addressed snapshot engine, and the sync
//! library built on it.
//!
//! Files are cut into content-defined chunks (FastCDC), each stored once
//! under the BLAKE3 hash of its bytes, zstd-compressed, in append-only packs.
//! Directories and SQLite tables are prolly maps (Merkle trees with
//! content-defined node boundaries), so a change rewrites O(log n) nodes and
//! a diff reads only what changed. A snapshot names a root tree, its tables
//! and its parents; refs name snapshots and move by compare-and-swap.
//!
//! # Syncing a services folder
//!
//! [`SyncService`] pushes a services folder and a SQLite database to an
//! `sp-sync serve` (`{api_url}/{tenant}`, with a bearer token), pulls them
//! elsewhere, and syncs markdown collections with their tables
//! ([`SyncDirection`]). Every failure is one [`SyncError`]. Here the remote
//! is a store on disk ([`SyncConfigBuilder::with_remote`]), so the example
//! runs without a server:
//!
//! ```
//! use systemprompt_sync::{SyncConfig, SyncDirection, SyncService};
//! # fn main() -> systemprompt_sync::Result<()> {
//! # let rt = tokio::runtime::Runtime::new().unwrap();
//! # rt.block_on(async {
//! let tmp = tempfile::tempdir().unwrap();
//! let services = tmp.path().join("services");
//! std::fs::create_dir_all(services.join("agents")).unwrap();
//! std::fs::write(services.join("agents/bot.md"), "# bot\n").unwrap();
//! let remote = tmp.path().join("remote").to_string_lossy().into_owned();
//!
//! // Push: a snapshot of the folder goes to the remote.
//! let config = SyncConfig::builder("tenant-id", "https://sync.example.com", "api-token", &services)
//!     .with_direction(SyncDirection::Push)
//!     .with_remote(&remote)
//!     .build();
//! let pushed = SyncService::new(config).sync_files().await?;
//! assert_eq!(pushed.files, 1);
//! assert!(pushed.objects > 0);
//!
//! // Pull it into another folder.
//! let copy = tmp.path().join("copy");
//! let config = SyncConfig::builder("tenant-id", "https://sync.example.com", "api-token", &copy)
//!     .with_direction(SyncDirection::Pull)
//!     .with_remote(&remote)
//!     .build();
//! let pulled = SyncService::new(config).sync_all().await?;
//! assert_eq!(pulled[0].snapshot, pushed.snapshot);
//! assert_eq!(std::fs::read_to_string(copy.join("agents/bot.md")).unwrap(), "# bot\n");
//! # Ok(()) })
//! # }
//! ```
//!
//! `examples/library.rs` does the same against a real server, with a
//! database and the local `ToDatabase`/`ToDisk` directions.
//!
//! # The engine
//!
//! Under the service, each command of the `sp-sync` binary is one call:
//! [`snapshot()`], [`compare::diff`], [`restore_snapshot`], [`cat`],
//! [`history`], [`local::local`]; each takes an options struct and a
//! [`Progress`] and returns a serializable report.
//!
//! ```
//! use systemprompt_sync::{LockMode, NoProgress, SnapshotOptions, Store};
//! # fn main() -> systemprompt_sync::Result<()> {
//! let tmp = tempfile::tempdir().unwrap();
//! let work = tmp.path().join("services");
//! std::fs::create_dir_all(work.join("agents")).unwrap();
//! std::fs::write(work.join("agents/bot.md"), "# bot\n").unwrap();
//!
//! let store_dir = tmp.path().join("store");
//! Store::init(&store_dir)?;
//! let store = Store::open(&store_dir, LockMode::Shared)?;
//! let opts = SnapshotOptions { sources: vec![work.clone()], message: "first".into(), ..Default::default() };
//! let report = systemprompt_sync::snapshot(&store, &opts, &NoProgress)?;
//! assert_eq!(report.files, 1);
//! assert_eq!(store.read_ref("main")?, Some(report.id));
//!
//! // Change a file: the diff names it.
//! std::fs::write(work.join("agents/bot.md"), "# bot v2\n").unwrap();
//! let second = systemprompt_sync::snapshot(&store, &opts, &NoProgress)?;
//! let changes = systemprompt_sync::diff::diff_trees_vec(&store, report.root.as_ref(), second.root.as_ref())?;
//! assert_eq!(changes.len(), 1);
//! assert_eq!(changes[0].path, "agents/bot.md");
//!
//! // Restore the first snapshot elsewhere, byte for byte.
//! let out = tmp.path().join("out");
//! systemprompt_sync::restore_snapshot(&store, &report.id.to_hex(), &out, &Default::default(), &NoProgress)?;
//! assert_eq!(std::fs::read_to_string(out.join("agents/bot.md")).unwrap(), "# bot\n");
//! # Ok(()) }
//! ```
//!
//! The modules under the façade (objects, maps, packs, the store, the
//! transfer protocol) are public only for the tests, benches and fuzz
//! targets, and hidden from these docs; `ARCHITECTURE.md` maps them.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

// The façade: what a program calls. Each command of the binary is one call
// here, taking an options struct and a `&dyn Progress` and returning a
// serializable report.
pub mod bundle;
pub mod cache;
pub mod checkout;
pub mod commands;
pub mod compare;
pub mod deploy;
pub mod error;
pub mod local;
pub mod progress;
pub mod sync;

// The machinery under the façade. Public (but hidden from the docs) only
// because the integration tests, benches and fuzz targets reach into it; a
// program should not. `cargo rustc --lib -- --cfg sp_sync_internal_docs`
// (or RUSTDOCFLAGS="--cfg sp_sync_internal_docs" cargo doc) shows them to
// rustdoc and to the missing_docs lint.
#[cfg_attr(not(sp_sync_internal_docs), doc(hidden))]
pub mod block;
#[cfg_attr(not(sp_sync_internal_docs), doc(hidden))]
pub mod chunker;
#[cfg_attr(not(sp_sync_internal_docs), doc(hidden))]
pub mod codec;
#[cfg_attr(not(sp_sync_internal_docs), doc(hidden))]
pub mod collection;
#[cfg_attr(not(sp_sync_internal_docs), doc(hidden))]
pub mod db;
#[cfg_attr(not(sp_sync_internal_docs), doc(hidden))]
pub mod dict;
#[cfg_attr(not(sp_sync_internal_docs), doc(hidden))]
pub mod diff;
#[cfg_attr(not(sp_sync_internal_docs), doc(hidden))]
pub mod id;
#[cfg_attr(not(sp_sync_internal_docs), doc(hidden))]
pub mod names;
#[cfg_attr(not(sp_sync_internal_docs), doc(hidden))]
pub mod object;
#[cfg_attr(not(sp_sync_internal_docs), doc(hidden))]
pub mod pack;
#[cfg_attr(not(sp_sync_internal_docs), doc(hidden))]
pub mod patch;
#[cfg_attr(not(sp_sync_internal_docs), doc(hidden))]
pub mod pmap;
#[cfg_attr(not(sp_sync_internal_docs), doc(hidden))]
pub mod remote;
#[cfg_attr(not(sp_sync_internal_docs), doc(hidden))]
pub mod restore;
#[cfg_attr(not(sp_sync_internal_docs), doc(hidden))]
pub mod rt;
#[cfg_attr(not(sp_sync_internal_docs), doc(hidden))]
pub mod server;
#[cfg_attr(not(sp_sync_internal_docs), doc(hidden))]
pub mod snapshot;
#[cfg_attr(not(sp_sync_internal_docs), doc(hidden))]
pub mod sources;
#[cfg_attr(not(sp_sync_internal_docs), doc(hidden))]
pub mod store;
#[cfg_attr(not(sp_sync_internal_docs), doc(hidden))]
pub mod transfer;
#[cfg_attr(not(sp_sync_internal_docs), doc(hidden))]
pub mod workspace;

pub use checkout::{CheckoutOptions, CheckoutReport};
pub use compare::{DiffOptions, DiffReport};
pub use db::DbSource;
pub use error::{Result, SyncError};
pub use id::{ObjectId, ObjectType};
pub use local::{LocalOptions, LocalReport};
pub use object::snapshot::Snapshot;
pub use object::tree::{Entry, EntryKind, Timestamp};
pub use progress::{NoProgress, Progress};
pub use restore::{RestoreOptions, RestoreReport};
pub use snapshot::{SnapshotOptions, SnapshotReport, snapshot};
pub use store::fsck::{FsckOptions, FsckReport, fsck, rebuild_index};
pub use store::gc::{GcOptions, GcReport, gc, gc_with};
pub use store::{LockMode, Store};
pub use sync::{SyncConfig, SyncConfigBuilder, SyncDirection, SyncResult, SyncService};
pub use workspace::{ProjectConfig, Workspace};

use object::tree::lookup;

/// Opens the store at `dir`, or in object storage when `dir` is an
/// `s3://BUCKET/PREFIX` URL.
pub fn open_store(dir: &std::path::Path, mode: LockMode) -> Result<Store> {
    match dir.to_str().filter(|s| s.starts_with("s3://")) {
        Some(url) => Store::open_backend(
            std::sync::Arc::new(store::s3::S3Backend::new(url, &[])?),
            mode,
        ),
        None => Store::open(dir, mode),
    }
}

/// Creates a store at `dir` (or an `s3://` URL); false when one is there.
pub fn init_store(dir: &std::path::Path) -> Result<bool> {
    match dir.to_str().filter(|s| s.starts_with("s3://")) {
        Some(url) => Store::init_backend(&store::s3::S3Backend::new(url, &[])?),
        None => Store::init(dir),
    }
}

/// The entries at `SNAP[:PATH]` (`sp-sync ls`): a directory's entries
/// (all the way down when `recursive`), paths relative to it; a file or
/// symlink alone, under its name.
pub fn list(store: &Store, spec: &str, recursive: bool) -> Result<Vec<(Vec<u8>, Entry)>> {
    let (_, entry, name) = resolve_path(store, spec)?;
    let mut rows = Vec::new();
    match &entry.kind {
        EntryKind::Dir { tree } => list_dir(store, tree, entry.mtime, b"", recursive, &mut rows)?,
        _ => rows.push((name, entry.clone())),
    }
    Ok(rows)
}

/// `time`: the directory's mtime (its entries' may be relative to it).
fn list_dir(
    store: &Store,
    tree: &ObjectId,
    time: object::tree::Timestamp,
    prefix: &[u8],
    recursive: bool,
    rows: &mut Vec<(Vec<u8>, Entry)>,
) -> Result<()> {
    // Recursion: a hostile tree nested deeper than any real one is an error.
    use object::tree::{MAX_TREE_DEPTH, read_dir, too_deep};
    if prefix.iter().filter(|&&c| c == b'/').count() >= MAX_TREE_DEPTH {
        return Err(too_deep(prefix));
    }
    for (name, e) in read_dir(store, tree, time)? {
        let mut p = prefix.to_vec();
        if !p.is_empty() {
            p.push(b'/');
        }
        p.extend_from_slice(&name);
        let sub = match &e.kind {
            EntryKind::Dir { tree } if recursive => Some((*tree, e.mtime)),
            _ => None,
        };
        rows.push((p.clone(), e));
        if let Some((t, time)) = sub {
            list_dir(store, &t, time, &p, recursive, rows)?;
        }
    }
    Ok(())
}

/// Finds the entry at `SNAP[:PATH]`: (snapshot id, entry, its name).
pub fn resolve_path(store: &Store, spec: &str) -> Result<(ObjectId, Entry, Vec<u8>)> {
    let (snap, path) = names::split_spec(spec);
    let id = names::resolve(store, snap)?;
    let s = names::load_snapshot(store, &id)?;
    let root = s
        .root
        .ok_or_else(|| SyncError::NotFound(format!("snapshot {} has no files", id.short())))?;
    let path = path.unwrap_or("");
    let entry = lookup(store, &root, path.as_bytes())?.ok_or_else(|| {
        SyncError::NotFound(format!("{path}: no such path in snapshot {}", id.short()))
    })?;
    let name = path.rsplit('/').next().unwrap_or("").as_bytes().to_vec();
    Ok((id, entry, name))
}

/// Restores `SNAP[:PATH]` into `target`.
pub fn restore_snapshot(
    store: &Store,
    spec: &str,
    target: &std::path::Path,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreReport> {
    let (_, entry, name) = resolve_path(store, spec)?;
    restore::restore(store, &entry, &name, target, opts, progress)
}

/// Writes the bytes of the file at `SNAP:PATH` to `out`, each chunk verified.
pub fn cat(store: &Store, spec: &str, out: &mut dyn std::io::Write) -> Result<u64> {
    let (_, entry, _) = resolve_path(store, spec)?;
    match &entry.kind {
        EntryKind::File { size, content } => {
            let mut n = 0;
            for c in content.chunks(store, *size) {
                let c = c?;
                let data = object::ObjectSource::get(store, ObjectType::Chunk, &c.id)?;
                // (A list that lies about a chunk's length, or a file's
                // size, is a damaged snapshot, as a restore says.)
                if data.len() as u64 != c.len {
                    return Err(object::corrupt(
                        ObjectType::Chunk,
                        &c.id,
                        format!("{} bytes where the list says {}", data.len(), c.len),
                    ));
                }
                out.write_all(&data)
                    .map_err(|e| SyncError::io("writing", "standard output", e))?;
                n += data.len() as u64;
            }
            if n != *size {
                return Err(SyncError::Invalid(format!(
                    "{spec}: a damaged snapshot: its chunks hold {n} bytes where the file's size is {size}"
                )));
            }
            Ok(n)
        }
        EntryKind::Symlink { target } => {
            out.write_all(target)
                .map_err(|e| SyncError::io("writing", "standard output", e))?;
            Ok(target.len() as u64)
        }
        EntryKind::Dir { .. } => Err(SyncError::Invalid(format!("{spec} is a directory"))),
    }
}

/// Snapshots from `id` back along first parents, newest first.
pub fn history(
    store: &Store,
    id: ObjectId,
    max: Option<usize>,
) -> Result<Vec<(ObjectId, Snapshot)>> {
    let mut out = Vec::new();
    let mut next = Some(id);
    while let Some(id) = next {
        if max.is_some_and(|m| out.len() >= m) {
            break;
        }
        let s = names::load_snapshot(store, &id)?;
        next = s.parents.first().copied();
        out.push((id, s));
    }
    Ok(out)
}

/// Whether `ancestor` is `id` or one of its ancestors.
pub fn is_ancestor(
    src: &dyn object::ObjectSource,
    ancestor: &ObjectId,
    id: &ObjectId,
) -> Result<bool> {
    let mut stack = vec![*id];
    let mut seen = id::IdSet::default();
    while let Some(cur) = stack.pop() {
        if cur == *ancestor {
            return Ok(true);
        }
        if !seen.insert(cur) {
            continue;
        }
        let s = names::load_snapshot(src, &cur)?;
        stack.extend(s.parents);
    }
    Ok(false)
}
