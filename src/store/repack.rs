//! `gc --repack`: every live object is written again into new packs, those
//! that have an older version stored as zstd deltas against it.
//!
//! Snapshots are walked oldest to newest; each is paired with its first
//! parent (or, without one in the store, the snapshot before it), and the
//! objects at the same place in both — changed directory-map and row-map
//! nodes, the chunks of a changed file by position
//! ([`crate::transfer::same_place_pairs`]) — give each new object its
//! candidate base. Along a line of versions the chains form a hierarchy
//! (see [`target_depth`]): the base is the first object on the older
//! version's chain that is shallower than the depth aimed at, so each delta
//! is against a version a few steps older at most. A delta is kept only
//! when it is under [`KEEP_RATIO_PERCENT`] of the object as stored alone,
//! and only against a base already written in this repack: chains form no
//! cycle and reading any object decodes at most [`MAX_CHAIN_RECORDS`]
//! records (a tree node's delta only under [`TREE_KEEP_RATIO_PERCENT`]).
//! Tree nodes stored whole go into blocks of about [`SOLID_BYTES`] at
//! [`REPACK_WHOLE_LEVEL`] (row-map nodes into the writer's blocks); other
//! objects stored alone are compressed again at that level, with their
//! kind's dictionary when that is smaller (the objects written before the
//! store trained it: a read still decodes one record). The rest of the
//! live objects are then
//! copied the same way (a delta of an earlier repack that was not chosen
//! again is stored whole). A delta whose base still waits for its block is
//! held and written after it. Memory: the set of live ids and, per id, its
//! chain depth and base; objects are read one at a time, and at most one
//! block and 256 deltas (16 MiB) wait.
//!
//! Crash safety is gc's: the new packs and their indexes are durable before
//! the first old pack goes (see [`super::gc`]); an interrupted repack leaves
//! the old packs, and every object, in place.

use crate::error::{Result, SyncError};
use crate::id::{IdMap, IdSet, ObjectId, ObjectType};
use crate::pack::{FLAG_DELTA, FLAG_DICT, MAX_CHAIN_RECORDS, StoredObject, make_delta, prepare};
use crate::progress::Progress;
use crate::store::{FORMAT_DELTA, Store, WriteSession};

/// A delta is stored only when it takes under this share (percent) of the
/// object's bytes as stored alone.
pub const KEEP_RATIO_PERCENT: u64 = 80;
/// The same for a tree node that can go into a block ([`SOLID_BYTES`]):
/// nodes compressed together cost about what their deltas do, without a
/// delta's base id and frame each (history replay, 40 commits: tree
/// nodes 40.8 KB with deltas kept under 80%, 29.4 KB under 15%, 30.6 KB
/// with none).
pub const TREE_KEEP_RATIO_PERCENT: u64 = 15;
/// zstd level of stored deltas.
pub const REPACK_DELTA_LEVEL: i32 = 12;
/// zstd level objects stored alone are compressed again with (kept when
/// smaller than their record): a repack is rare, reads do not slow down.
pub const REPACK_WHOLE_LEVEL: i32 = 19;
/// The deepest chain a repack makes: a delta of depth `d` decodes `d + 1`
/// records.
const MAX_DEPTH: u8 = (MAX_CHAIN_RECORDS - 1) as u8;

/// What a repack did.
#[derive(Debug, Default, Clone, Copy)]
pub struct RepackStats {
    /// Live objects written.
    pub objects: usize,
    /// Of them, stored as deltas.
    pub deltas: usize,
    /// Their bytes as stored before (live objects' records).
    pub bytes_before: u64,
    /// Their bytes as stored after.
    pub bytes_after: u64,
}

/// How an object was written.
#[derive(Debug, Clone, Copy)]
struct Done {
    depth: u8,
    base: ObjectId,
    /// 0 for an object without an older version; else its older version's
    /// plus one.
    seq: u32,
}

/// The chain depth a delta of version `seq` of a line of versions aims at:
/// a hierarchy (every 64th version whole, every 16th at depth 1, every 4th
/// at depth 2, the others at depth 3 against the nearest of those) keeps
/// every delta against a version at most a few steps older, where a single
/// chain cut at depth 3 would have the later versions drift further and
/// further from their base.
fn target_depth(seq: u32) -> u8 {
    if seq.is_multiple_of(64) {
        0
    } else if seq.is_multiple_of(16) {
        1
    } else if seq.is_multiple_of(4) {
        2
    } else {
        MAX_DEPTH
    }
}

struct Repacker<'a, 's> {
    store: &'s Store,
    w: &'a WriteSession<'s>,
    live: &'a IdSet,
    /// Written objects: (chain depth, base (the object itself when
    /// whole), version number along its line of older versions).
    done: IdMap<Done>,
    level: i32,
    stats: RepackStats,
    /// Whether `store.toml` already says format 3.
    format_ok: bool,
    /// Row-map nodes stored whole, waiting to be written in blocks (§6.1).
    blocks: Vec<(ObjectType, ObjectId, Vec<u8>)>,
    /// Deltas made while nodes wait for a block (their base may be one of
    /// them): written right after the blocks, so a base still comes before
    /// its delta and the blocks are not cut short at every delta (a group
    /// under two nodes or 4 KiB is stored node by node, each compressed
    /// alone: repacking a table's changed leaves made its store bigger).
    deltas: Vec<StoredObject>,
    /// Bytes of `deltas`' payloads.
    delta_bytes: usize,
    /// Tree nodes stored whole, waiting for a block (see [`SOLID_BYTES`]).
    solid: Vec<Member>,
    /// Their bytes.
    solid_bytes: usize,
    /// The dictionary of each kind that new objects use (none when the
    /// store writes no dictionaries).
    dicts: Vec<(
        ObjectType,
        ObjectId,
        std::sync::Arc<crate::dict::Dictionary>,
    )>,
    /// Objects written but still waiting (in `blocks`, `solid` or
    /// `deltas`): a delta against one of them waits too, so that a base
    /// still comes before its delta.
    waiting: IdSet,
}

/// A repack writes the tree nodes it stores whole (those of at most
/// [`crate::block::MAX_MEMBER_BYTES`]) in blocks of about this many bytes
/// (store-format.md §6.1, mode 1), compressed at [`REPACK_WHOLE_LEVEL`]: a
/// directory's nodes across snapshots, and neighbouring directories,
/// compress together. Trees are read by walks, which find the block cached
/// (see `Store::read_member`). Chunks stay records of their own, read by
/// one decode each: in 64 KiB blocks, 4,000 random reads took 3.7x as long
/// (`benches/reads.rs`), and the store's dictionary saves more (the history
/// replay's small files: 557 KB in blocks, 457 KB with the dictionary).
pub const SOLID_BYTES: usize = 32 * 1024;

/// An object waiting for a block: (kind, id, bytes).
type Member = (ObjectType, ObjectId, Vec<u8>);

/// Most deltas, and most bytes of them, held back for a block.
const MAX_HELD_DELTAS: usize = 256;
const MAX_HELD_DELTA_BYTES: usize = 16 << 20;

impl Repacker<'_, '_> {
    /// The object's bytes, and its record as stored alone (a stored delta
    /// is compressed again).
    fn read_alone(&self, id: &ObjectId) -> Result<(StoredObject, Vec<u8>)> {
        self.read_alone_at(id, REPACK_WHOLE_LEVEL)
    }

    /// [`Self::read_alone`], compressing again at `whole_level` (0: not).
    fn read_alone_at(&self, id: &ObjectId, whole_level: i32) -> Result<(StoredObject, Vec<u8>)> {
        let (loc, payload) = self.store.read_record(id)?;
        let bytes = self
            .store
            .unpack(loc.tag, id, loc.flags, u64::from(loc.ulen), &payload)?;
        let mut obj = if loc.flags == FLAG_DELTA {
            prepare(loc.tag, *id, &bytes, self.level)
        } else {
            StoredObject {
                tag: loc.tag,
                id: *id,
                flags: loc.flags,
                ulen: loc.ulen,
                payload,
            }
        };
        if self.level > 0 && whole_level > 0 && bytes.len() >= 64 {
            let with_dict = |did: &ObjectId, d: &crate::dict::Dictionary| {
                crate::dict::compress(did, d, &bytes, whole_level).map(|p| (FLAG_DICT, p))
            };
            let mut better = if obj.flags == FLAG_DICT {
                // With the same dictionary, at a higher level.
                crate::dict::payload_dict(&obj.payload)
                    .and_then(|did| with_dict(&did, &*self.store.dictionary(&did).ok()?))
            } else {
                Some(crate::pack::compress(&bytes, whole_level))
            };
            // A small object stored alone: with its kind's dictionary when
            // that is smaller (objects written before the dictionary was
            // trained; a read still decodes one record).
            if obj.flags != FLAG_DICT
                && bytes.len() <= crate::dict::DICT_MAX_OBJECT
                && let Some((_, did, d)) = self.dicts.iter().find(|(k, _, _)| *k == loc.tag)
                && let Some((f, p)) = with_dict(did, d)
                && better.as_ref().is_none_or(|b| p.len() < b.1.len())
            {
                better = Some((f, p));
            }
            if let Some((flags, payload)) = better
                && payload.len() < obj.payload.len()
            {
                obj.flags = flags;
                obj.payload = payload;
            }
        }
        Ok((obj, bytes))
    }

    fn put(
        &mut self,
        obj: StoredObject,
        depth: u8,
        base: ObjectId,
        seq: u32,
        before: u64,
    ) -> Result<()> {
        self.stats.objects += 1;
        self.stats.bytes_before += before;
        self.stats.bytes_after += obj.payload.len() as u64;
        if depth > 0 {
            self.stats.deltas += 1;
        }
        self.done.insert(obj.id, Done { depth, base, seq });
        if depth > 0 && self.waiting.contains(&base) {
            // Its base waits for a block: it is written after them.
            self.delta_bytes += obj.payload.len();
            self.waiting.insert(obj.id);
            self.deltas.push(obj);
            if self.deltas.len() >= MAX_HELD_DELTAS || self.delta_bytes >= MAX_HELD_DELTA_BYTES {
                self.flush_blocks()?;
            }
            return Ok(());
        }
        self.w.put_stored(obj)?;
        Ok(())
    }

    /// Whether an object of `tag` and `ulen` bytes stored whole goes into
    /// a block: row-map nodes as the writer puts them there, tree nodes in
    /// this repack's own blocks ([`SOLID_BYTES`]).
    fn in_blocks(&self, tag: ObjectType, ulen: u32) -> bool {
        self.w.blocks_for(tag) || self.in_tree_blocks(tag, ulen)
    }

    fn in_tree_blocks(&self, tag: ObjectType, ulen: u32) -> bool {
        tag == ObjectType::Tree
            && self.level > 0
            && (ulen as usize) <= crate::block::MAX_MEMBER_BYTES
    }

    /// Writes the tree nodes queued by [`Self::put_in_block`] as a block.
    fn write_solid(&mut self) -> Result<()> {
        let members = std::mem::take(&mut self.solid);
        self.solid_bytes = 0;
        let Some(tag) = members.first().map(|m| m.0) else {
            return Ok(());
        };
        let stored = self.w.put_block(tag, &members, REPACK_WHOLE_LEVEL)?;
        self.stats.bytes_after += stored as u64;
        for (_, id, _) in &members {
            self.waiting.remove(id);
        }
        Ok(())
    }

    /// Queues a row-map or tree node stored whole for a block (see
    /// [`Self::in_blocks`]); a tree block is written once it holds
    /// [`SOLID_BYTES`].
    fn put_in_block(
        &mut self,
        tag: ObjectType,
        id: ObjectId,
        bytes: Vec<u8>,
        seq: u32,
        before: u64,
    ) -> Result<()> {
        self.stats.objects += 1;
        self.stats.bytes_before += before;
        let done = Done {
            depth: 0,
            base: id,
            seq,
        };
        self.done.insert(id, done);
        self.waiting.insert(id);
        if self.w.blocks_for(tag) {
            self.blocks.push((tag, id, bytes));
            if self.blocks.len() >= 256 {
                self.flush_blocks()?;
            }
        } else {
            self.solid_bytes += bytes.len();
            self.solid.push((tag, id, bytes));
            if self.solid_bytes >= SOLID_BYTES || self.solid.len() >= crate::block::MAX_MEMBERS {
                self.write_solid()?;
            }
        }
        Ok(())
    }

    /// Writes the row map under `root` children first, in key order (so
    /// that blocks hold neighbours). `walked`: nodes already visited (the
    /// nodes of a subtree are not all written when its root is: the pairs
    /// of changed nodes come first).
    fn map_in_order(&mut self, root: &ObjectId, walked: &mut IdSet) -> Result<()> {
        if !self.live.contains(root) || !walked.insert(*root) {
            return Ok(());
        }
        let node = crate::pmap::load_node(self.store, ObjectType::Rows, root, None)?;
        let children: Vec<ObjectId> = node.children().collect();
        drop(node);
        for c in &children {
            self.map_in_order(c, walked)?;
        }
        self.whole(root)
    }

    /// Writes the queued row-map nodes and tree nodes in blocks,
    /// then the deltas held back for them.
    fn flush_blocks(&mut self) -> Result<()> {
        if !self.blocks.is_empty() {
            use std::sync::atomic::Ordering::Relaxed;
            let before = self.w.stats.stored_bytes.load(Relaxed);
            crate::object::ObjectSink::put_many(self.w, &self.blocks)?;
            self.blocks.clear();
            self.stats.bytes_after += self.w.stats.stored_bytes.load(Relaxed) - before;
        }
        self.write_solid()?;
        for obj in self.deltas.drain(..) {
            self.w.put_stored(obj)?;
        }
        self.delta_bytes = 0;
        self.waiting.clear();
        Ok(())
    }

    /// Writes `id` as it is stored (whole), unless already written.
    fn whole(&mut self, id: &ObjectId) -> Result<()> {
        if self.done.contains_key(id) {
            return Ok(());
        }
        let loc = self.store.location(id);
        let before = loc.map_or(0, |l| self.store.stored_size(&l));
        if let Some(l) = loc.filter(|l| self.in_blocks(l.tag, l.ulen)) {
            let (_, bytes) = self.read_alone_at(id, 0)?;
            return self.put_in_block(l.tag, *id, bytes, 0, before);
        }
        let (obj, _) = self.read_alone(id)?;
        self.put(obj, 0, *id, 0, before)
    }

    /// Writes `x` as a delta against `y` (or a base on `y`'s chain) when
    /// that saves enough, else whole.
    fn delta(&mut self, x: &ObjectId, y: &ObjectId) -> Result<()> {
        if x == y || self.done.contains_key(x) || !self.live.contains(x) || !self.live.contains(y) {
            return Ok(());
        }
        let (Some(lx), Some(ly)) = (self.store.location(x), self.store.location(y)) else {
            return Ok(());
        };
        if lx.tag != ly.tag || lx.tag == ObjectType::Dict {
            return Ok(());
        }
        self.whole(y)?;
        let Some(&prev) = self.done.get(y) else {
            return Err(SyncError::Invalid(format!(
                "repack: {} was not written before its delta",
                y.short()
            )));
        };
        let seq = prev.seq.saturating_add(1);
        let want = target_depth(seq);
        // The base: the first object on `y`'s chain (`y`, its base, …)
        // shallower than the depth aimed at (depths fall along a chain).
        let mut base = *y;
        let mut at = prev;
        while want > 0 && at.depth >= want && at.base != base {
            base = at.base;
            at = match self.done.get(&base) {
                Some(d) => *d,
                None => {
                    return Err(SyncError::Invalid(format!(
                        "repack: {} was not written before its delta",
                        base.short()
                    )));
                }
            };
        }
        let depth = at.depth;
        let before = self.store.stored_size(&lx);
        let (alone, bytes) = self.read_alone(x)?;
        if alone.payload.len() < 64 || want == 0 || depth >= want {
            if self.in_blocks(lx.tag, lx.ulen) {
                return self.put_in_block(lx.tag, *x, bytes, seq, before);
            }
            return self.put(alone, 0, *x, seq, before);
        }
        let btag = self.store.location(&base).map_or(lx.tag, |l| l.tag);
        let base_bytes = crate::object::ObjectSource::get(self.store, btag, &base)?;
        let ratio = if self.in_tree_blocks(lx.tag, lx.ulen) {
            TREE_KEEP_RATIO_PERCENT
        } else {
            KEEP_RATIO_PERCENT
        };
        let keep = match make_delta(&bytes, &base, &base_bytes, REPACK_DELTA_LEVEL) {
            Some(d) if (d.len() as u64) * 100 < (alone.payload.len() as u64) * ratio => Some(d),
            _ => None,
        };
        if keep.is_none() && self.in_blocks(lx.tag, lx.ulen) {
            return self.put_in_block(lx.tag, *x, bytes, seq, before);
        }
        match keep {
            Some(d) => {
                if !self.format_ok {
                    // Before the first delta record is written.
                    self.store.ensure_format(FORMAT_DELTA)?;
                    self.format_ok = true;
                }
                let obj = StoredObject {
                    tag: lx.tag,
                    id: *x,
                    flags: FLAG_DELTA,
                    ulen: lx.ulen,
                    payload: d,
                };
                self.put(obj, depth + 1, base, seq, before)
            }
            None => self.put(alone, 0, *x, seq, before),
        }
    }
}

/// Writes every live object (`order`: the live ids, pack by pack) into
/// new packs through `w`, with deltas where they pay; the caller finishes
/// the session and then deletes the old packs.
pub(crate) fn repack(
    store: &Store,
    w: &WriteSession<'_>,
    live: &IdSet,
    order: &[(ObjectId, Vec<ObjectId>)],
    progress: &dyn Progress,
) -> Result<RepackStats> {
    let mut r = Repacker {
        store,
        w,
        live,
        done: IdMap::default(),
        level: store.config().compression_level,
        stats: RepackStats::default(),
        format_ok: store.format() >= FORMAT_DELTA,
        blocks: Vec::new(),
        deltas: Vec::new(),
        delta_bytes: 0,
        solid: Vec::new(),
        solid_bytes: 0,
        waiting: IdSet::default(),
        // SP_SYNC_DICTIONARIES=0: no object is newly compressed with one.
        dicts: if store.writes_dictionaries() {
            super::writer::dictionaries_in_use(store)
        } else {
            Vec::new()
        },
    };
    // The live snapshots, oldest first.
    let mut snaps: Vec<(i64, u32, ObjectId, Option<ObjectId>)> = Vec::new();
    for id in live {
        if store
            .location(id)
            .is_some_and(|l| l.tag == ObjectType::Snapshot)
        {
            let s = crate::names::load_snapshot(store, id)?;
            snaps.push((s.time.secs, s.time.nanos, *id, s.parents.first().copied()));
        }
    }
    snaps.sort();
    let known: IdSet = snaps.iter().map(|s| s.2).collect();
    progress.set_total(live.len() as u64, 0);
    let mut shown = 0usize;
    let mut tick = |n: usize| {
        progress.add((n - shown) as u64, 0);
        shown = n;
    };
    for i in 0..snaps.len() {
        if progress.interrupted() {
            return Err(SyncError::Interrupted);
        }
        let (_, _, id, parent) = snaps[i];
        let prev = match parent {
            Some(p) if known.contains(&p) => Some(p),
            _ if i > 0 => Some(snaps[i - 1].2),
            _ => None,
        };
        let Some(prev) = prev else { continue };
        let mut pairs: Vec<(ObjectId, ObjectId)> =
            crate::transfer::same_place_pairs(store, &prev, &id)?
                .into_iter()
                .collect();
        pairs.sort_unstable();
        for (x, y) in pairs {
            r.delta(&x, &y)?;
        }
        tick(r.done.len());
    }
    // Row maps in key order, newest snapshot first, so that a block holds
    // neighbouring nodes (they compress together).
    if r.w.blocks_for(ObjectType::Rows) {
        let mut walked = IdSet::default();
        for s in snaps.iter().rev() {
            let snap = crate::names::load_snapshot(store, &s.2)?;
            for tid in snap.tables.values() {
                if !live.contains(tid) {
                    continue;
                }
                if let Some(t) = crate::db::load_table(store, tid)?.table {
                    r.map_in_order(&t.root, &mut walked)?;
                }
            }
            tick(r.done.len());
        }
    }
    for (_, ids) in order {
        for id in ids {
            if progress.interrupted() {
                return Err(SyncError::Interrupted);
            }
            r.whole(id)?;
        }
        tick(r.done.len());
    }
    r.flush_blocks()?;
    Ok(r.stats)
}
