//! Writing objects: callers (many threads) hash, deduplicate and compress;
//! one thread appends to the pack, finishes it (fsync), writes its index
//! (fsync) and renames both into place. The session's `finish` makes the
//! packs durable before any ref may point into them.

use std::fs::{self, File};
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, bounded};

use super::index::{self, IdxEntry};
use super::{Backend, Store, unique};
use crate::dict::{self, Dictionary, Sampler};
use crate::error::{IoContext, Result, SyncError};
use crate::id::{IdSet, ObjectId, ObjectType};
use crate::object::ObjectSink;
use crate::pack::{FLAG_BLOCK, FLAG_DICT, PackWriter, StoredBlock, StoredObject, prepare};

/// Counters of what a session added.
#[derive(Default, Debug)]
pub struct WriteStats {
    pub objects: AtomicU64,
    /// Uncompressed bytes of new objects.
    pub raw_bytes: AtomicU64,
    /// Bytes of new objects as stored (compressed).
    pub stored_bytes: AtomicU64,
}

struct Finished {
    name: ObjectId,
    entries: Vec<IdxEntry>,
}

type SharedError = Arc<Mutex<Option<SyncError>>>;

/// What the pack writer thread appends: an object's record, or a block.
enum Item {
    Object(StoredObject),
    Block(StoredBlock),
}

/// A batch of objects being written into new packs.
pub struct WriteSession<'s> {
    store: &'s Store,
    tx: Option<Sender<Item>>,
    thread: Option<JoinHandle<Result<Vec<Finished>>>>,
    pending: Mutex<IdSet>,
    error: SharedError,
    level: i32,
    /// The level of blocks of row-map leaves (0 when the store compresses
    /// nothing).
    rows_level: i32,
    /// gc's repacking: objects already in the store are written again.
    repack: bool,
    /// Set by `abort`: the open pack is thrown away instead of finished.
    aborted: Arc<std::sync::atomic::AtomicBool>,
    /// The dictionaries new small objects are compressed with, and the
    /// samplers of kinds that have none yet.
    dicts: Mutex<DictState>,
    pub stats: WriteStats,
}

/// Per kind: the dictionary in use, or a sampler gathering objects to
/// train one.
#[derive(Default)]
struct DictState {
    current: Vec<(ObjectType, ObjectId, Arc<Dictionary>)>,
    samplers: Vec<Sampler>,
}

/// The dictionary each kind's new objects are compressed with: the same
/// choice in every process, the largest id of each kind.
pub(crate) fn dictionaries_in_use(store: &Store) -> Vec<(ObjectType, ObjectId, Arc<Dictionary>)> {
    let mut out: Vec<(ObjectType, ObjectId, Arc<Dictionary>)> = Vec::new();
    let mut ids = store.dictionaries();
    ids.sort_unstable_by(|a, b| b.cmp(a));
    for id in ids {
        match store.dictionary(&id) {
            Ok(d) => {
                if !out.iter().any(|(k, _, _)| *k == d.kind) {
                    out.push((d.kind, id, d));
                }
            }
            Err(e) => tracing::warn!("dictionary {} not used: {e}", id.short()),
        }
    }
    out
}

impl DictState {
    fn load(store: &Store, enabled: bool) -> DictState {
        let mut st = DictState::default();
        if !enabled {
            return st;
        }
        st.current = dictionaries_in_use(store);
        // Row maps are written in blocks (§6.1), not with a dictionary.
        for kind in [ObjectType::Chunk, ObjectType::Tree] {
            if !st.current.iter().any(|(k, _, _)| *k == kind) {
                st.samplers
                    .push(Sampler::new(kind, store.dict_training(kind)));
            }
        }
        st
    }
}

impl<'s> WriteSession<'s> {
    pub(super) fn new(store: &'s Store, repack: bool) -> Result<Self> {
        let (tx, rx) = bounded::<Item>(64);
        let backend = store.backend_arc();
        let tmp = store.tmp_dir();
        std::fs::create_dir_all(&tmp).ctx("creating", &tmp)?;
        let target = store.config().pack_size;
        let error: SharedError = Arc::new(Mutex::new(None));
        let err2 = error.clone();
        let aborted = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let aborted2 = aborted.clone();
        let thread = std::thread::Builder::new()
            .name("pack-writer".into())
            .spawn(move || {
                let r = writer_loop(&rx, &*backend, &tmp, target, &aborted2);
                if let Err(e) = &r {
                    // Let callers blocked on the channel see the cause.
                    if let Ok(mut slot) = err2.lock() {
                        *slot = Some(clone_error(e));
                    }
                }
                drop(rx);
                r
            })
            .ctx("starting", "pack writer thread")?;
        Ok(WriteSession {
            store,
            tx: Some(tx),
            thread: Some(thread),
            pending: Mutex::new(IdSet::default()),
            error,
            level: store.config().compression_level,
            rows_level: match store.config().compression_level {
                0 => 0,
                _ => store.config().rows_compression_level,
            },
            repack,
            aborted,
            dicts: Mutex::new(DictState::load(
                store,
                !repack && store.writes_dictionaries(),
            )),
            stats: WriteStats::default(),
        })
    }

    /// Compresses an object for its pack: with its kind's dictionary when
    /// it is small and one exists (feeding the kind's sampler, and training
    /// the dictionary, otherwise), else alone.
    fn prepare(&self, tag: ObjectType, id: ObjectId, bytes: &[u8]) -> Result<StoredObject> {
        // Row-map nodes go into blocks (§6.1); the few stored alone are
        // not worth a dictionary (nor its training).
        if !dict::is_dict_kind(tag)
            || self.blocks_for(tag)
            || bytes.len() < 64
            || bytes.len() > dict::DICT_MAX_OBJECT
            || self.level == 0
        {
            return Ok(prepare(tag, id, bytes, self.level));
        }
        let cur = {
            let Ok(mut st) = self.dicts.lock() else {
                return Ok(prepare(tag, id, bytes, self.level));
            };
            match st.current.iter().find(|(k, _, _)| *k == tag) {
                Some((_, did, d)) => Some((*did, d.clone())),
                None => {
                    let samples = st
                        .samplers
                        .iter_mut()
                        .find(|s| s.kind() == tag && s.active())
                        .and_then(|s| s.add(bytes));
                    // Trained with the lock held: the other threads wait
                    // for the dictionary rather than compress without it.
                    match samples {
                        Some(samples) => self.train(&mut st, tag, &samples)?,
                        None => None,
                    }
                }
            }
        };
        let Some((did, d)) = cur else {
            return Ok(prepare(tag, id, bytes, self.level));
        };
        match dict::compress(&did, &d, bytes, self.level) {
            Some(p) if p.len() + bytes.len() / 32 < bytes.len() => Ok(StoredObject {
                tag,
                id,
                flags: FLAG_DICT,
                ulen: bytes.len() as u32,
                payload: p,
            }),
            _ => Ok(prepare(tag, id, bytes, self.level)),
        }
    }

    /// Trains a dictionary for `kind`, stores it (before any record that
    /// names it) and uses it from now on. A failed training only means no
    /// dictionary for this session.
    fn train(
        &self,
        st: &mut DictState,
        kind: ObjectType,
        samples: &[Vec<u8>],
    ) -> Result<Option<(ObjectId, Arc<Dictionary>)>> {
        let started = std::time::Instant::now();
        let Some(d) = dict::train(kind, samples) else {
            return Ok(None);
        };
        let d = Arc::new(d);
        let did = d.id();
        self.store.ensure_dict_format()?;
        dict::remember(did, d.clone());
        if self.claim(&did) {
            self.send(prepare(ObjectType::Dict, did, &d.encode(), self.level))?;
        }
        tracing::debug!(
            "trained a {kind} dictionary of {} bytes from {} samples in {:?}",
            d.content.len(),
            samples.len(),
            started.elapsed()
        );
        st.current.push((kind, did, d.clone()));
        Ok(Some((did, d)))
    }

    /// Re-encodes a received object (verified, `bytes` its contents) with
    /// this store's dictionary for its kind when that applies; otherwise
    /// returns it as it came.
    pub fn restore_encoding(&self, obj: StoredObject, bytes: &[u8]) -> Result<StoredObject> {
        if !dict::is_dict_kind(obj.tag) || bytes.len() > dict::DICT_MAX_OBJECT || bytes.len() < 64 {
            return Ok(obj);
        }
        let has = self
            .dicts
            .lock()
            .map(|st| {
                st.current.iter().any(|(k, _, _)| *k == obj.tag)
                    || st
                        .samplers
                        .iter()
                        .any(|s| s.kind() == obj.tag && s.active())
            })
            .unwrap_or(false);
        if !has {
            return Ok(obj);
        }
        let new = self.prepare(obj.tag, obj.id, bytes)?;
        Ok(if new.flags == FLAG_DICT { new } else { obj })
    }

    pub fn store(&self) -> &'s Store {
        self.store
    }

    /// Sends an already prepared (compressed, verified) object.
    pub fn put_stored(&self, obj: StoredObject) -> Result<bool> {
        if !self.claim(&obj.id) {
            return Ok(false);
        }
        self.send(obj)?;
        Ok(true)
    }

    fn claim(&self, id: &ObjectId) -> bool {
        if !self.repack && self.store.contains(id) {
            return false;
        }
        match self.pending.lock() {
            Ok(mut p) => p.insert(*id),
            Err(_) => false,
        }
    }

    fn send(&self, obj: StoredObject) -> Result<()> {
        self.count(obj.ulen.into(), obj.payload.len(), 1);
        self.send_item(Item::Object(obj))
    }

    fn send_item(&self, item: Item) -> Result<()> {
        let Some(tx) = &self.tx else {
            return Err(SyncError::Invalid("write session already finished".into()));
        };
        if tx.send(item).is_err() {
            return Err(self.writer_error());
        }
        Ok(())
    }

    /// Writes `members` (objects of kind `tag`, at least
    /// [`crate::block::MIN_MEMBERS`], each at most
    /// [`crate::block::MAX_MEMBER_BYTES`]) as one block compressed at
    /// `level` (`gc --repack`); returns the block's payload bytes. Members
    /// already written in this session are left out (a single one left is
    /// stored alone).
    pub(crate) fn put_block(
        &self,
        tag: ObjectType,
        members: &[(ObjectType, ObjectId, Vec<u8>)],
        level: i32,
    ) -> Result<usize> {
        let new: Vec<&(ObjectType, ObjectId, Vec<u8>)> =
            members.iter().filter(|(_, id, _)| self.claim(id)).collect();
        let item = match new.as_slice() {
            [] => return Ok(0),
            [(tag, id, bytes)] => Item::Object(prepare(*tag, *id, bytes, level)),
            g => {
                self.store.ensure_format(super::FORMAT_BLOCK)?;
                Item::Block(self.make_block(tag, g, level)?)
            }
        };
        self.send_counted(item)
    }

    /// Counts an object or block in the session's stats and sends it;
    /// returns its payload's bytes.
    fn send_counted(&self, item: Item) -> Result<usize> {
        let stored = match &item {
            Item::Object(o) => {
                self.count(o.ulen.into(), o.payload.len(), 1);
                o.payload.len()
            }
            Item::Block(b) => {
                let raw = b.members.iter().map(|(_, u)| u64::from(*u)).sum();
                self.count(raw, b.payload.len(), b.members.len() as u64);
                b.payload.len()
            }
        };
        self.send_item(item)?;
        Ok(stored)
    }

    /// Compresses `members` (new objects of one kind, claimed) together.
    fn make_block(
        &self,
        tag: ObjectType,
        members: &[&(ObjectType, ObjectId, Vec<u8>)],
        level: i32,
    ) -> Result<StoredBlock> {
        let refs: Vec<&[u8]> = members.iter().map(|(_, _, b)| b.as_slice()).collect();
        let (mode, payload) = crate::block::encode(tag, &refs, level)?;
        Ok(StoredBlock {
            tag,
            mode,
            members: members
                .iter()
                .map(|(_, id, b)| (*id, b.len() as u32))
                .collect(),
            payload,
        })
    }

    fn count(&self, raw: u64, stored: usize, objects: u64) {
        self.stats.objects.fetch_add(objects, Ordering::Relaxed);
        self.stats.raw_bytes.fetch_add(raw, Ordering::Relaxed);
        self.stats
            .stored_bytes
            .fetch_add(stored as u64, Ordering::Relaxed);
    }

    /// Whether objects of `tag` are written in blocks by `put_many`.
    pub(crate) fn blocks_for(&self, tag: ObjectType) -> bool {
        tag == ObjectType::Rows && self.level > 0
    }

    /// Why the writer thread stopped. Every caller blocked on it gets the
    /// cause (a copy), not only the first: with many threads putting, the
    /// error that reaches the user may come from any of them.
    fn writer_error(&self) -> SyncError {
        match self
            .error
            .lock()
            .ok()
            .and_then(|e| e.as_ref().map(clone_error))
        {
            Some(e) => e,
            None => SyncError::Invalid("the pack writer stopped".into()),
        }
    }

    /// Writes out everything sent, makes it durable and visible to this
    /// process's reads. Only after this may a ref point at the new objects.
    pub fn finish(self) -> Result<()> {
        self.finish_packs().map(|_| ())
    }

    /// [`finish`](Self::finish), returning the names of the packs written.
    /// A pack's name is the hash of its bytes, so a pack written again
    /// byte for byte (gc --repack of an unchanged store) has the name of
    /// one that was already there: gc must not delete it as old.
    pub fn finish_packs(mut self) -> Result<Vec<ObjectId>> {
        self.train_at_end()?;
        self.finish_inner()
    }

    /// Trains the dictionaries of kinds whose samplers hold enough for
    /// one, though less than the training size: later sessions use them.
    fn train_at_end(&self) -> Result<()> {
        let Ok(mut st) = self.dicts.lock() else {
            return Ok(());
        };
        let min = dict::END_TRAIN_BYTES.min(self.store.dict_training(ObjectType::Chunk));
        let ready: Vec<(ObjectType, Vec<Vec<u8>>)> = st
            .samplers
            .iter_mut()
            .filter_map(|s| s.take_at_end(min).map(|v| (s.kind(), v)))
            .collect();
        for (kind, samples) in ready {
            self.train(&mut st, kind, &samples)?;
        }
        Ok(())
    }

    /// Throws away what was sent and not yet in a finished pack (a pack
    /// filled up earlier in the session stays: it was complete and
    /// downward closed).
    pub fn abort(mut self) {
        self.aborted.store(true, Ordering::SeqCst);
        let _ = self.finish_inner();
    }

    fn finish_inner(&mut self) -> Result<Vec<ObjectId>> {
        drop(self.tx.take());
        let Some(t) = self.thread.take() else {
            return Ok(Vec::new());
        };
        let done = match t.join() {
            Ok(r) => r?,
            Err(_) => return Err(SyncError::Invalid("the pack writer panicked".into())),
        };
        if !done.is_empty() {
            self.store.backend().sync("packs")?;
        }
        let names = done.iter().map(|f| f.name).collect();
        for f in done {
            self.store.register_pack(f.name, &f.entries);
        }
        Ok(names)
    }
}

impl Drop for WriteSession<'_> {
    fn drop(&mut self) {
        // Packs completed so far are left in place (unreferenced until a ref
        // points at them; gc removes them).
        let _ = self.finish_inner();
    }
}

impl ObjectSink for WriteSession<'_> {
    fn put_hashed(&self, tag: ObjectType, id: ObjectId, bytes: &[u8]) -> Result<bool> {
        if !self.claim(&id) {
            return Ok(false);
        }
        let obj = self.prepare(tag, id, bytes)?;
        self.send(obj)?;
        Ok(true)
    }

    fn contains(&self, id: &ObjectId) -> bool {
        self.store.contains(id) || self.pending.lock().map(|p| p.contains(id)).unwrap_or(false)
    }

    /// Compresses the new objects in parallel (rayon), then sends them in
    /// the order given.
    ///
    /// Small new row-map nodes go into blocks (§6.1) of about
    /// [`crate::block::TARGET_BYTES`]: the batch's leaves, then its nodes
    /// of each higher level (a node's children are leaves or lower nodes
    /// of this batch or an earlier one, so they still come first). Too few
    /// to fill a block, they are stored one by one.
    fn put_many(&self, objs: &[(ObjectType, ObjectId, Vec<u8>)]) -> Result<()> {
        use rayon::prelude::*;
        type Obj = (ObjectType, ObjectId, Vec<u8>);
        let new: Vec<&Obj> = objs.iter().filter(|(_, id, _)| self.claim(id)).collect();
        let blockable = |o: &&Obj| {
            self.blocks_for(o.0) && o.2.len() >= 2 && o.2.len() <= crate::block::MAX_MEMBER_BYTES
        };
        let (mut grouped, single): (Vec<&Obj>, Vec<&Obj>) = new.into_iter().partition(blockable);
        // Stable: in order within a level.
        grouped.sort_by_key(|o| o.2[1]);
        let mut groups: Vec<Vec<&Obj>> = Vec::new();
        let mut bytes = 0usize;
        for o in grouped {
            let same_level = groups
                .last()
                .and_then(|g| g.last())
                .is_some_and(|l| l.2[1] == o.2[1]);
            if !same_level
                || bytes >= crate::block::TARGET_BYTES
                || groups
                    .last()
                    .is_some_and(|g| g.len() >= crate::block::MAX_MEMBERS)
            {
                groups.push(Vec::new());
                bytes = 0;
            }
            bytes += o.2.len();
            if let Some(g) = groups.last_mut() {
                g.push(o);
            }
        }
        // A group too small to gain from a block is stored one by one.
        // Units go out level by level: the objects not in blocks first (in
        // their order), then each level's blocks and single nodes.
        let mut units: Vec<Vec<&Obj>> = single.into_iter().map(|o| vec![o]).collect();
        for g in groups {
            let big = g.len() >= crate::block::MIN_MEMBERS
                && g.iter().map(|o| o.2.len()).sum::<usize>() >= crate::block::TARGET_BYTES / 8;
            if big {
                units.push(g);
            } else {
                units.extend(g.into_iter().map(|o| vec![o]));
            }
        }
        units.sort_by_key(|u| {
            if u[0].0 == ObjectType::Rows {
                u[0].2.get(1).copied().unwrap_or(0)
            } else {
                0
            }
        });
        if units.iter().any(|u| u.len() > 1) {
            self.store.ensure_format(super::FORMAT_BLOCK)?;
        }
        let items: Vec<Item> = units
            .par_iter()
            .map(|u| match u.as_slice() {
                [(tag, id, bytes)] => self.prepare(*tag, *id, bytes).map(Item::Object),
                g => {
                    let level = match g[0].0 {
                        ObjectType::Rows => self.rows_level,
                        _ => self.level,
                    };
                    self.make_block(g[0].0, g, level).map(Item::Block)
                }
            })
            .collect::<Result<_>>()?;
        for item in items {
            self.send_counted(item)?;
        }
        Ok(())
    }
}

/// Pack bytes written between early syncs: most of a pack reaches the
/// disk while the session is still making objects, and the sync that makes
/// it durable at the end has little left to write.
const EARLY_SYNC_BYTES: u64 = 8 << 20;

struct OpenPack {
    tmp: PathBuf,
    w: Option<PackWriter<BufWriter<File>>>,
    entries: Vec<IdxEntry>,
    done: bool,
    /// Bytes handed to the last early sync.
    synced: u64,
    /// The early sync running (a thread of its own, on another handle to
    /// the file), whose error fails the pack: after a failed sync, a later
    /// one may succeed though data never reached the disk.
    syncing: Option<JoinHandle<std::io::Result<()>>>,
}

impl OpenPack {
    fn create(tmp_dir: &Path) -> Result<OpenPack> {
        let tmp = tmp_dir.join(format!("{}-{}.pack.tmp", std::process::id(), unique()));
        let f = File::create(&tmp).ctx("creating", &tmp)?;
        let w = PackWriter::new(BufWriter::with_capacity(1 << 20, f)).ctx("writing", &tmp)?;
        Ok(OpenPack {
            tmp,
            w: Some(w),
            entries: Vec::new(),
            done: false,
            synced: 0,
            syncing: None,
        })
    }

    /// Starts syncing what was written so far, once another
    /// [`EARLY_SYNC_BYTES`] were and the last early sync has ended.
    fn sync_early(&mut self) -> Result<()> {
        if self.size() < self.synced + EARLY_SYNC_BYTES
            || self.syncing.as_ref().is_some_and(|h| !h.is_finished())
        {
            return Ok(());
        }
        self.end_early_sync()?;
        let Some(w) = self.w.as_mut() else {
            return Ok(());
        };
        let out = w.get_mut();
        std::io::Write::flush(out).ctx("writing", &self.tmp)?;
        let f = out.get_ref().try_clone().ctx("syncing", &self.tmp)?;
        self.synced = w.offset();
        self.syncing = Some(std::thread::spawn(move || f.sync_data()));
        Ok(())
    }

    /// Waits for the early sync running, if any; its error is the pack's.
    fn end_early_sync(&mut self) -> Result<()> {
        match self.syncing.take().map(JoinHandle::join) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(SyncError::io("syncing", &self.tmp, e)),
            Some(Err(_)) => Err(SyncError::Invalid(format!(
                "syncing {}: the thread failed",
                self.tmp.display()
            ))),
        }
    }

    fn add(&mut self, o: &StoredObject) -> Result<()> {
        let Some(w) = self.w.as_mut() else {
            return Err(SyncError::Invalid("pack already finished".into()));
        };
        let offset = w.add(o).ctx("writing", &self.tmp)?;
        self.entries.push(IdxEntry {
            id: o.id,
            tag: o.tag,
            flags: o.flags,
            offset,
            clen: o.payload.len() as u32,
            ulen: o.ulen,
        });
        self.sync_early()
    }

    fn add_block(&mut self, b: &StoredBlock) -> Result<()> {
        let Some(w) = self.w.as_mut() else {
            return Err(SyncError::Invalid("pack already finished".into()));
        };
        let offset = w.add_block(b).ctx("writing", &self.tmp)?;
        for (i, (id, ulen)) in b.members.iter().enumerate() {
            self.entries.push(IdxEntry {
                id: *id,
                tag: b.tag,
                flags: FLAG_BLOCK,
                offset,
                clen: i as u32,
                ulen: *ulen,
            });
        }
        self.sync_early()
    }

    fn size(&self) -> u64 {
        self.w.as_ref().map_or(0, |w| w.offset())
    }

    /// pack: finish, fsync, move into place; then its index.
    fn finalize(mut self, backend: &dyn Backend) -> Result<Finished> {
        self.end_early_sync()?;
        let Some(w) = self.w.take() else {
            return Err(SyncError::Invalid("pack already finished".into()));
        };
        let (bw, name) = w.finish().ctx("writing", &self.tmp)?;
        let f = bw
            .into_inner()
            .map_err(|e| SyncError::io("writing", &self.tmp, e.into_error()))?;
        f.sync_all().ctx("syncing", &self.tmp)?;
        drop(f);
        backend.put_file(&Store::pack_key(&name), &self.tmp)?;
        self.done = true;
        let idx = index::encode(&name, &mut self.entries);
        backend.put(&Store::idx_key(&name), &idx)?;
        Ok(Finished {
            name,
            entries: std::mem::take(&mut self.entries),
        })
    }
}

impl Drop for OpenPack {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

fn writer_loop(
    rx: &Receiver<Item>,
    backend: &dyn Backend,
    tmp: &Path,
    target: u64,
    aborted: &std::sync::atomic::AtomicBool,
) -> Result<Vec<Finished>> {
    let mut cur: Option<OpenPack> = None;
    let mut done = Vec::new();
    for obj in rx.iter() {
        let p = match cur.as_mut() {
            Some(p) => p,
            None => cur.insert(OpenPack::create(tmp)?),
        };
        match &obj {
            Item::Object(o) => p.add(o)?,
            Item::Block(b) => p.add_block(b)?,
        }
        if p.size() >= target
            && let Some(p) = cur.take()
        {
            done.push(p.finalize(backend)?);
        }
    }
    if let Some(p) = cur.take()
        && !aborted.load(Ordering::SeqCst)
    {
        done.push(p.finalize(backend)?);
    }
    Ok(done)
}

/// Errors are not Clone; keep the message and kind.
pub(crate) fn clone_error(e: &SyncError) -> SyncError {
    match e {
        SyncError::Io { op, path, source } => SyncError::Io {
            op,
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        other => SyncError::Invalid(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pack syncs what it holds as it grows (every `EARLY_SYNC_BYTES`),
    /// and what it holds is the pack written, byte for byte.
    #[test]
    fn a_growing_pack_is_synced_early_and_stays_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = OpenPack::create(dir.path()).unwrap();
        let mut ids = Vec::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..20u32 {
            // 1 MiB that zstd cannot shrink.
            let data: Vec<u8> = (0..1 << 20)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let id = ObjectId::compute(ObjectType::Chunk, &data);
            ids.push(id);
            p.add(&prepare(ObjectType::Chunk, id, &data, 1)).unwrap();
            if i == 6 {
                assert_eq!(p.synced, 0, "no sync before 8 MiB");
            }
        }
        assert!(p.synced >= EARLY_SYNC_BYTES, "{}", p.synced);
        p.end_early_sync().unwrap();
        let (bw, _) = p.w.take().unwrap().finish().unwrap();
        drop(bw);
        let mut r = crate::pack::PackReader::new(File::open(&p.tmp).unwrap(), "test").unwrap();
        let mut got = Vec::new();
        while let Some(rec) = r.next_record().unwrap() {
            got.push(rec.id);
        }
        assert_eq!(got, ids);
        assert!(r.trailer.is_some());
    }
}
