//! `systemprompt_sync`: a content-addressed snapshot engine.
//!
//! Files are cut into content-defined chunks (FastCDC), each stored once
//! under the BLAKE3 hash of its bytes, zstd-compressed, in append-only packs.
//! Directories are prolly maps (Merkle trees with content-defined node
//! boundaries), so a change rewrites O(log n) nodes and a diff reads only
//! what changed. A snapshot names a root tree and its parents; refs name
//! snapshots and move by compare-and-swap.
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
#![forbid(unsafe_code)]

pub mod chunker;
pub mod codec;
pub mod collection;
pub mod db;
pub mod deploy;
pub mod diff;
pub mod error;
pub mod id;
pub mod names;
pub mod object;
pub mod pack;
pub mod patch;
pub mod pmap;
pub mod progress;
pub mod remote;
pub mod restore;
pub mod rt;
pub mod server;
pub mod snapshot;
pub mod sources;
pub mod store;
pub mod transfer;
pub mod workspace;

pub use error::{Result, SyncError};
pub use id::{ObjectId, ObjectType};
pub use progress::{NoProgress, Progress};
pub use restore::{RestoreOptions, RestoreReport};
pub use snapshot::{SnapshotOptions, SnapshotReport, snapshot};
pub use store::{LockMode, Store};
pub use workspace::{ProjectConfig, Workspace};

use object::tree::{Entry, EntryKind, lookup};

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
                out.write_all(&data)
                    .map_err(|e| SyncError::io("writing", "standard output", e))?;
                n += data.len() as u64;
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
) -> Result<Vec<(ObjectId, object::snapshot::Snapshot)>> {
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
