//! The hashed objects: chunk lists, tree entries, snapshots. Every encoding is
//! specified byte by byte in `store-format.md`.

pub mod list;
pub mod row;
pub mod snapshot;
pub mod table;
pub mod tree;

use crate::error::{Result, SyncError};
use crate::id::{ObjectId, ObjectType};

/// The largest object (uncompressed) any reader accepts. Chunks are at most
/// the chunker's maximum (2 MiB); maps split their nodes near 4 KiB. The cap
/// bounds what a hostile pack can make a reader allocate (zstd bombs).
pub const MAX_OBJECT_SIZE: usize = 16 << 20;

/// Where objects come from: a store, a remote, an overlay of scratch objects.
/// Every implementation returns bytes that were verified against `id`.
pub trait ObjectSource: Sync {
    /// The bytes of object `id` (of type `tag`), verified.
    fn get(&self, tag: ObjectType, id: &ObjectId) -> Result<Vec<u8>>;
}

/// Where objects go. `put` hashes, deduplicates and stores; objects must be
/// put children first (the downward-closed invariant).
pub trait ObjectSink: Sync {
    /// Stores an object whose id the caller has computed, unless already present.
    /// Returns whether it was new.
    fn put_hashed(&self, tag: ObjectType, id: ObjectId, bytes: &[u8]) -> Result<bool>;

    /// Whether the object is already present (no read).
    fn contains(&self, id: &ObjectId) -> bool;

    /// Stores objects whose ids the caller has computed, in this order
    /// (children before parents). A sink may compress them in parallel.
    fn put_many(&self, objs: &[(ObjectType, ObjectId, Vec<u8>)]) -> Result<()> {
        for (tag, id, bytes) in objs {
            self.put_hashed(*tag, *id, bytes)?;
        }
        Ok(())
    }

    /// Hashes and stores an object; returns its id.
    fn put(&self, tag: ObjectType, bytes: &[u8]) -> Result<ObjectId> {
        let id = ObjectId::compute(tag, bytes);
        self.put_hashed(tag, id, bytes)?;
        Ok(id)
    }
}

/// Builds the error for bytes of `id` that do not decode.
pub(crate) fn corrupt(tag: ObjectType, id: &ObjectId, reason: impl ToString) -> SyncError {
    SyncError::CorruptObject {
        kind: tag.name(),
        id: *id,
        reason: reason.to_string(),
    }
}

impl<T: ObjectSource + ?Sized> ObjectSource for &T {
    fn get(&self, tag: ObjectType, id: &ObjectId) -> Result<Vec<u8>> {
        (**self).get(tag, id)
    }
}

impl<T: ObjectSource + ?Sized + Send> ObjectSource for std::sync::Arc<T> {
    fn get(&self, tag: ObjectType, id: &ObjectId) -> Result<Vec<u8>> {
        (**self).get(tag, id)
    }
}

/// Counts the objects read through it (tests and benches use it to show a
/// diff costs what changed, not what exists).
pub struct CountingSource<S> {
    /// The source read.
    pub inner: S,
    /// Objects read so far.
    pub reads: std::sync::atomic::AtomicU64,
}

impl<S> CountingSource<S> {
    /// Counts reads of `inner`.
    pub fn new(inner: S) -> Self {
        CountingSource {
            inner,
            reads: Default::default(),
        }
    }
    /// Objects read so far.
    pub fn count(&self) -> u64 {
        self.reads.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl<S: ObjectSource> ObjectSource for CountingSource<S> {
    fn get(&self, tag: ObjectType, id: &ObjectId) -> Result<Vec<u8>> {
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.get(tag, id)
    }
}

/// An in-memory object store: scratch objects for a working-tree diff, and
/// the store of choice for unit tests.
#[derive(Default)]
pub struct MemStore {
    objects: std::sync::RwLock<crate::id::IdMap<(ObjectType, std::sync::Arc<[u8]>)>>,
    /// When false, chunks are only hashed, not kept.
    pub keep_chunks: bool,
}

impl MemStore {
    /// An empty store; `keep_chunks` false: chunks are hashed, not kept.
    pub fn new(keep_chunks: bool) -> Self {
        MemStore {
            objects: Default::default(),
            keep_chunks,
        }
    }

    /// Objects held.
    pub fn len(&self) -> usize {
        self.objects.read().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total bytes of the objects held.
    pub fn bytes(&self) -> u64 {
        self.objects
            .read()
            .map(|m| m.values().map(|(_, b)| b.len() as u64).sum())
            .unwrap_or(0)
    }

    /// Whether the map holds `id` (whatever its kind).
    pub fn has(&self, id: &ObjectId) -> bool {
        self.objects
            .read()
            .map(|m| m.contains_key(id))
            .unwrap_or(false)
    }

    /// Replaces an object's bytes without rehashing (tests of corruption).
    pub fn tamper(&self, id: &ObjectId, bytes: Vec<u8>) {
        if let Ok(mut m) = self.objects.write()
            && let Some(e) = m.get_mut(id)
        {
            e.1 = bytes.into();
        }
    }
}

impl ObjectSink for MemStore {
    fn put_hashed(&self, tag: ObjectType, id: ObjectId, bytes: &[u8]) -> Result<bool> {
        if tag == ObjectType::Chunk && !self.keep_chunks {
            return Ok(false);
        }
        let mut m = self
            .objects
            .write()
            .map_err(|_| SyncError::Invalid("memory store poisoned".into()))?;
        if m.contains_key(&id) {
            return Ok(false);
        }
        m.insert(id, (tag, bytes.into()));
        Ok(true)
    }

    fn contains(&self, id: &ObjectId) -> bool {
        self.has(id)
    }
}

impl ObjectSource for MemStore {
    fn get(&self, tag: ObjectType, id: &ObjectId) -> Result<Vec<u8>> {
        let m = self
            .objects
            .read()
            .map_err(|_| SyncError::Invalid("memory store poisoned".into()))?;
        match m.get(id) {
            Some((t, b)) if *t == tag => {
                if ObjectId::compute(tag, b) != *id {
                    return Err(corrupt(tag, id, "hash mismatch"));
                }
                Ok(b.to_vec())
            }
            Some((t, _)) => Err(corrupt(tag, id, format!("object is a {t}, not a {tag}"))),
            None => Err(SyncError::MissingObject {
                kind: tag.name(),
                id: *id,
            }),
        }
    }
}

/// Reads from `first`, then from `second`: scratch objects over a store.
pub struct Overlay<'a, A: ?Sized, B: ?Sized> {
    /// Read first.
    pub first: &'a A,
    /// Read when `first` lacks the object.
    pub second: &'a B,
}

impl<A: ObjectSource + ?Sized, B: ObjectSource + ?Sized> ObjectSource for Overlay<'_, A, B> {
    fn get(&self, tag: ObjectType, id: &ObjectId) -> Result<Vec<u8>> {
        match self.first.get(tag, id) {
            Err(SyncError::MissingObject { .. }) => self.second.get(tag, id),
            r => r,
        }
    }
}

/// The objects `bytes` (an object of type `tag`) references, with their
/// types: what must be present before it may be stored. Fails on bytes that
/// do not decode.
pub fn references(
    tag: ObjectType,
    id: &ObjectId,
    bytes: &[u8],
) -> Result<Vec<(ObjectType, ObjectId)>> {
    match tag {
        ObjectType::Chunk => Ok(Vec::new()),
        ObjectType::List => {
            let n = list::ListNode::decode(bytes).map_err(|e| corrupt(tag, id, e))?;
            let child = if n.level == 0 {
                ObjectType::Chunk
            } else {
                ObjectType::List
            };
            Ok(n.entries.iter().map(|e| (child, e.id)).collect())
        }
        ObjectType::Tree => {
            let n = crate::pmap::Node::decode(bytes.to_vec()).map_err(|e| corrupt(tag, id, e))?;
            if n.level > 0 {
                return Ok(n.children().map(|c| (ObjectType::Tree, c)).collect());
            }
            let mut out = Vec::new();
            for i in 0..n.len() {
                out.extend(
                    tree::decode_entry(id, n.key(i), n.value(i), tree::Timestamp::ZERO)?.refs(),
                );
            }
            Ok(out)
        }
        ObjectType::Snapshot => {
            let s = snapshot::Snapshot::decode(bytes).map_err(|e| corrupt(tag, id, e))?;
            Ok(s.refs())
        }
        ObjectType::Table => {
            let t = table::TableObject::decode(bytes).map_err(|e| corrupt(tag, id, e))?;
            Ok(t.refs())
        }
        ObjectType::Rows => {
            let n = crate::pmap::Node::decode(bytes.to_vec()).map_err(|e| corrupt(tag, id, e))?;
            if n.level > 0 {
                return Ok(n.children().map(|c| (ObjectType::Rows, c)).collect());
            }
            let mut out = Vec::new();
            for i in 0..n.len() {
                let cells = row::decode_row(n.value(i))
                    .map_err(|e| corrupt(tag, id, format!("bad row: {e}")))?;
                for c in &cells {
                    out.extend(c.refs());
                }
            }
            Ok(out)
        }
        ObjectType::Dict => {
            // store-format.md §3.8 (decoded by `dict::Dictionary`, a layer
            // above): version 1, the kind of a chunk, tree or rows, 1 byte
            // to 1 MiB of content. It references nothing.
            match bytes {
                [1, 1 | 3 | 6, content @ ..] if !content.is_empty() && content.len() <= 1 << 20 => {
                    Ok(Vec::new())
                }
                _ => Err(corrupt(tag, id, "not a dictionary object")),
            }
        }
    }
}
