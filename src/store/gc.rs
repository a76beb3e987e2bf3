//! Removing what no ref reaches. gc holds the store's lock exclusively, so
//! no snapshot is running while it sweeps: a running snapshot holds the lock
//! shared until its ref has moved, and gc waits for it.
//!
//! Order: mark everything reachable from every ref (any damage aborts: gc
//! never deletes on a guess); copy the live objects of partly dead packs into
//! new packs and make them durable; only then delete the old packs (index
//! first, then pack); finally sweep packs without index and temporary files.

use std::fs;

use serde::Serialize;

use super::Store;
use super::index;
use crate::error::{Result, SyncError};
use crate::id::{IdMap, ObjectId, ObjectType};
use crate::object::ObjectSink;
use crate::pack::Record;
use crate::progress::Progress;
use crate::store::fsck::Walker;

/// What `gc` did (the `--json` of `sp-sync gc`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// Whether it only counted.
    pub dry_run: bool,
    /// Objects a ref reaches (kept).
    pub reachable_objects: usize,
    /// Objects removed.
    pub removed_objects: usize,
    /// Bytes removed (as stored).
    pub removed_bytes: u64,
    /// Bytes kept (as stored).
    pub kept_bytes: u64,
    /// Packs deleted whole.
    pub packs_deleted: usize,
    /// Packs rewritten without their dead objects.
    pub packs_rewritten: usize,
    /// Files that belonged to no pack, removed.
    pub orphan_files: usize,
    /// Objects no ref reaches kept because a live stored delta needs them
    /// as its base, and what those bases reach (counted in
    /// `reachable_objects`).
    pub kept_bases: usize,
    /// Whether every live object was written again (`--repack`).
    pub repacked: bool,
    /// Objects the repack stored as deltas.
    pub delta_objects: usize,
    /// Bytes of the live objects as stored before the repack.
    pub repack_bytes_before: u64,
    /// Bytes of the live objects as stored after the repack.
    pub repack_bytes_after: u64,
    /// Objects no ref reaches kept because their pack is recent (see
    /// [`GcOptions::keep_recent`]; counted in `reachable_objects`).
    pub kept_recent: usize,
}

/// How gc runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct GcOptions {
    /// Only count what would be removed.
    pub dry_run: bool,
    /// Write every live object again into new packs, storing objects that
    /// have an older version as deltas against it (store-format.md §6).
    pub repack: bool,
    /// Keep every object of a pack whose index was written less than this
    /// long ago, reached or not. The server's gc: a push there is several
    /// requests, and its objects come before the ref that reaches them.
    pub keep_recent: Option<std::time::Duration>,
}

/// Marks what refs reach; fails on any damage.
pub fn mark(store: &Store) -> Result<crate::id::IdSet> {
    let bad = IdMap::default();
    let mut w = Walker::new(store, &bad);
    for (name, id) in store.list_refs()? {
        w.snapshot(&id, &format!("ref {name}"));
    }
    if let Some(e) = w.errors.first() {
        return Err(SyncError::Invalid(format!(
            "gc refused: the store is damaged ({} problems; first: {e}). Run `sp-sync fsck`.",
            w.errors.len()
        )));
    }
    Ok(w.seen)
}

/// Runs gc. The store must be open with [`super::LockMode::Exclusive`].
pub fn gc(store: &Store, dry_run: bool, progress: &dyn Progress) -> Result<GcReport> {
    gc_with(
        store,
        &GcOptions {
            dry_run,
            repack: false,
            keep_recent: None,
        },
        progress,
    )
}

/// The entries of a pack's index; gc refuses to go on without them.
fn pack_entries(store: &Store, name: &ObjectId) -> Result<Vec<index::IdxEntry>> {
    let idx_path = store.idx_path(name);
    store
        .backend()
        .get(&Store::idx_key(name))
        .and_then(|b| b.ok_or_else(|| SyncError::corrupt_file("index", &idx_path, "disappeared")))
        .and_then(|b| index::decode(&b, &idx_path))
        .map(|(_, e)| e)
        .map_err(|e| {
            SyncError::Invalid(format!(
                "gc refused: {e} (run `sp-sync fsck --rebuild-index`)"
            ))
        })
}

/// Adds to `live` the objects of every pack whose index was written less
/// than `age` ago (by its file's mtime; a pack whose age cannot be read
/// counts as recent), and every object they reach: a push stores only what
/// the server said it lacked, so a new snapshot, stored before its ref
/// moves, may reach old objects no ref reaches (a deleted ref's, a refused
/// push's) that must stay for the ref to move onto a whole snapshot. That
/// holds for every kind of object a recent pack holds (a file's chunk list
/// reaching old chunks, a row-map node reaching old large values), not only
/// snapshots, trees and tables. (Its own objects may still be on their
/// way: what is missing is no damage.) Returns how many were added.
fn keep_recent_packs(
    store: &Store,
    age: std::time::Duration,
    live: &mut crate::id::IdSet,
) -> Result<usize> {
    let now = std::time::SystemTime::now();
    let mut recent = Vec::new();
    for pack in store.packs().iter() {
        let idx_path = store.idx_path(&pack.name);
        let young = fs::metadata(&idx_path)
            .and_then(|m| m.modified())
            .map(|t| now.duration_since(t).map_or(true, |d| d < age))
            .unwrap_or(true);
        if young {
            recent.extend(pack_entries(store, &pack.name)?);
        }
    }
    let mut added = Vec::new();
    for e in &recent {
        keep_closure(store, e.tag, e.id, live, &mut added);
    }
    Ok(added.len())
}

/// Adds to `live` an object no ref reaches that gc keeps anyway, and
/// everything it reaches that `live` lacks (appended to `added`). A store
/// is downward closed: an object it holds vouches for everything below it
/// (a push or pull never asks about what lies under an object the other
/// side has), so nothing a kept object reaches may go. What `live` holds
/// already has its whole closure there (the mark walked it, or an earlier
/// call did). Missing or undecodable objects end the walk there.
fn keep_closure(
    store: &Store,
    tag: ObjectType,
    id: ObjectId,
    live: &mut crate::id::IdSet,
    added: &mut Vec<ObjectId>,
) {
    let mut stack = vec![(tag, id)];
    while let Some((tag, id)) = stack.pop() {
        if !live.insert(id) {
            continue;
        }
        added.push(id);
        if matches!(tag, ObjectType::Chunk | ObjectType::Dict)
            || store.location(&id).is_none_or(|l| l.tag != tag)
        {
            continue;
        }
        let refs = crate::object::ObjectSource::get(store, tag, &id)
            .and_then(|b| crate::object::references(tag, &id, &b));
        if let Ok(refs) = refs {
            stack.extend(refs);
        }
    }
}

/// Adds to `live` the bases of its stored deltas (and theirs), which stay
/// even when no ref reaches them, with everything those bases reach (and
/// the bases of that, in turn); returns how many were added.
fn keep_bases(store: &Store, live: &mut crate::id::IdSet) -> Result<usize> {
    let is_delta = |id: &ObjectId| {
        store
            .location(id)
            .is_some_and(|l| l.flags == crate::pack::FLAG_DELTA)
    };
    let mut todo: Vec<ObjectId> = live.iter().filter(|id| is_delta(id)).copied().collect();
    let mut added = Vec::new();
    while let Some(id) = todo.pop() {
        let Some(b) = store.delta_base_of(&id)? else {
            continue;
        };
        let Some(tag) = store.location(&b).map(|l| l.tag) else {
            continue;
        };
        let from = added.len();
        keep_closure(store, tag, b, live, &mut added);
        todo.extend(added[from..].iter().filter(|id| is_delta(id)).copied());
    }
    Ok(added.len())
}

/// Runs gc with options (`--repack`). The store must be open with
/// [`super::LockMode::Exclusive`].
pub fn gc_with(store: &Store, opts: &GcOptions, progress: &dyn Progress) -> Result<GcReport> {
    let dry_run = opts.dry_run;
    let mut rep = GcReport {
        dry_run,
        repacked: opts.repack,
        ..Default::default()
    };
    if !store.is_locked() && !dry_run {
        return Err(SyncError::Invalid(format!(
            "{} has no process lock (object storage): gc cannot know that no snapshot or push is running; \
             run gc on a local store",
            store.location_name()
        )));
    }
    progress.stage("marking");
    let mut live = mark(store)?;
    // Dictionaries are few and small: every one is kept, so whatever
    // record names one can always be read.
    live.extend(store.dictionaries());
    if let Some(age) = opts.keep_recent {
        rep.kept_recent = keep_recent_packs(store, age, &mut live)?;
    }
    if !opts.repack {
        // A repack stores every delta's base anew (or the object whole).
        rep.kept_bases = keep_bases(store, &mut live)?;
    }
    rep.reachable_objects = live.len();
    // Per pack: its entries, split into kept (live, and this is the copy the
    // index uses) and dropped.
    let mut rewrite: Vec<(ObjectId, Vec<ObjectId>)> = Vec::new();
    let mut delete: Vec<ObjectId> = Vec::new();
    for (pno, pack) in store.packs().iter().enumerate() {
        let entries = pack_entries(store, &pack.name)?;
        let stored_size = |e: &index::IdxEntry| {
            store.stored_size(&super::Location {
                pack: pno as u32,
                offset: e.offset,
                clen: e.clen,
                ulen: e.ulen,
                tag: e.tag,
                flags: e.flags,
            })
        };
        let mut keep = Vec::new();
        let mut drop_bytes = 0u64;
        let mut keep_bytes = 0u64;
        for e in &entries {
            let canonical = store
                .location(&e.id)
                .is_some_and(|l| l.pack as usize == pno);
            if canonical && live.contains(&e.id) {
                keep.push(e.id);
                keep_bytes += stored_size(e);
            } else {
                drop_bytes += stored_size(e);
                rep.removed_objects += 1;
            }
        }
        rep.removed_bytes += drop_bytes;
        if keep.len() == entries.len() && !opts.repack {
            rep.kept_bytes += keep_bytes;
            continue;
        }
        if keep.is_empty() {
            delete.push(pack.name);
        } else {
            rep.kept_bytes += keep_bytes;
            rewrite.push((pack.name, keep));
        }
    }
    rep.packs_deleted = delete.len();
    rep.packs_rewritten = rewrite.len();
    let (_, orphans) = store.list_pack_files()?;
    let tmp_files: Vec<_> = match fs::read_dir(store.tmp_dir()) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => Vec::new(),
    };
    rep.orphan_files = orphans.len() + tmp_files.len();
    if dry_run {
        return Ok(rep);
    }

    progress.stage("repacking");
    let mut written: Vec<ObjectId> = Vec::new();
    if opts.repack {
        let w = store.writer_for_repack()?;
        match super::repack::repack(store, &w, &live, &rewrite, progress) {
            Ok(st) => {
                rep.delta_objects = st.deltas;
                rep.repack_bytes_before = st.bytes_before;
                rep.repack_bytes_after = st.bytes_after;
                rep.kept_bytes = st.bytes_after;
            }
            Err(e) => {
                // The old packs stay; what was written is left for gc.
                w.abort();
                return Err(e);
            }
        }
        // New packs and their indexes durable before any old pack goes.
        written = w.finish_packs()?;
    } else if !rewrite.is_empty() {
        let w = store.writer_for_repack()?;
        // Block members (read back raw) are written in blocks again, in
        // batches that keep the pack's order.
        let mut members: Vec<(ObjectType, ObjectId, Vec<u8>)> = Vec::new();
        for (_, ids) in &rewrite {
            for id in ids {
                let block = store
                    .location(id)
                    .is_some_and(|l| l.flags == crate::pack::FLAG_BLOCK);
                let (loc, payload) = store.read_record(id)?;
                // Verified (with its dictionary) before it is stored again.
                let bytes = store.unpack(loc.tag, id, loc.flags, u64::from(loc.ulen), &payload)?;
                if block {
                    members.push((loc.tag, *id, bytes));
                    if members.len() >= 256 {
                        w.put_many(&members)?;
                        members.clear();
                    }
                    continue;
                }
                if !members.is_empty() {
                    w.put_many(&members)?;
                    members.clear();
                }
                let rec = Record {
                    offset: 0,
                    tag: loc.tag,
                    flags: loc.flags,
                    id: *id,
                    ulen: u64::from(loc.ulen),
                    payload,
                    member: None,
                };
                w.put_stored(rec.into_stored())?;
            }
        }
        if !members.is_empty() {
            w.put_many(&members)?;
        }
        written = w.finish_packs()?;
    }
    progress.stage("deleting");
    // A pack written just now may have the name of an old one (the same
    // bytes: a repack of an unchanged store): it is the new copy, kept.
    let old = |n: &&ObjectId| !written.contains(*n);
    let doomed: Vec<&ObjectId> = rewrite
        .iter()
        .map(|(n, _)| n)
        .chain(delete.iter())
        .filter(old)
        .collect();
    let b = store.backend();
    for name in &doomed {
        b.delete(&Store::idx_key(name))?;
    }
    b.sync("packs")?;
    for name in &doomed {
        b.delete(&Store::pack_key(name))?;
    }
    for name in orphans.iter().filter(old) {
        b.delete(&Store::pack_key(name))?;
    }
    for p in tmp_files {
        if p.is_dir() {
            let _ = fs::remove_dir_all(&p);
        } else {
            let _ = fs::remove_file(&p);
        }
    }
    b.sync("packs")?;
    Ok(rep)
}
