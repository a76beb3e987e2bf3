//! The prolly map: a sorted map (byte-string key → byte-string value) stored as
//! a Merkle tree whose node boundaries are chosen by the content of the keys.
//!
//! Directories (name → entry) and, later, tables (primary key → row) are both
//! prolly maps. Because a boundary depends only on a key (and the bytes since
//! the last boundary), inserting or changing one entry rewrites O(log n)
//! nodes, equal subtrees keep equal ids, and two maps diff by walking both and
//! skipping equal node ids: a diff costs what changed, not what exists.
//!
//! Node encoding (see `store-format.md`):
//! `version=1 | level | count (varint) | entries`, where a leaf entry is
//! `key (bytes) | value (bytes)` and an internal entry is
//! `key (bytes, the last key of the child) | child id [32]`.

use std::cmp::Ordering;

use crate::codec::{DecodeError, Reader, put_varint, varint_len};
use crate::error::Result;
use crate::id::{IdSet, ObjectId, ObjectType};
use crate::object::{ObjectSink, ObjectSource, corrupt};

/// The node format's version byte.
pub const NODE_VERSION: u8 = 1;
/// The largest key (a table's primary key may be as long as SQLite allows a
/// value; a map node still holds at least two entries).
pub const MAX_KEY: usize = 1 << 20;
/// The largest value.
pub const MAX_VALUE: usize = 1 << 20;
/// The most levels a map may have (a deeper one is corrupt).
pub const MAX_LEVEL: u8 = 40;

/// Where a map's nodes end: no boundary before `min` entry bytes, one
/// expected every `target` entry bytes after that, one forced at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeParams {
    /// No boundary before a node holds this many entry bytes.
    pub min: usize,
    /// One boundary expected every this many entry bytes after `min`.
    pub target: u64,
    /// A boundary forced at this many entry bytes.
    pub max: usize,
    /// No boundary before a node holds this many entries. Row maps need 2:
    /// a key longer than `max` would otherwise make every level a single
    /// entry, and the map would never close.
    pub min_entries: u64,
}

/// A map kind's boundary parameters: for leaves, and for internal nodes.
/// Directories and tables differ (`store-format.md` §3.3 and §3.7):
/// directory entries are few and large; rows are many and small, and a
/// scattered edit of a big table costs the nodes it rewrites on every level
/// (internal entries are mostly 32-byte ids, which do not compress).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapParams {
    /// For leaves (keys and values).
    pub leaf: NodeParams,
    /// For internal nodes (keys and child ids).
    pub internal: NodeParams,
}

const TREE_NODE: NodeParams = NodeParams {
    min: 512,
    target: 4096,
    max: 64 * 1024,
    min_entries: 1,
};

/// Directory maps (tag 3): the same parameters at every level.
pub const TREE_PARAMS: MapParams = MapParams {
    leaf: TREE_NODE,
    internal: TREE_NODE,
};

/// Row maps (tag 6). The forced boundary at `min + 2 × target` cuts the
/// long tail of node sizes: an edit lands in a node with a chance that grows
/// with the node's size, so the tail is what scattered edits pay for.
pub const ROWS_PARAMS: MapParams = MapParams {
    leaf: NodeParams {
        min: 128,
        target: 1280,
        max: 128 + 2 * 1280,
        min_entries: 2,
    },
    internal: NodeParams {
        min: 64,
        target: 256,
        max: 64 + 2 * 256,
        min_entries: 2,
    },
};

impl MapParams {
    /// The parameters of the maps stored under `tag`.
    pub fn for_tag(tag: ObjectType) -> MapParams {
        match tag {
            ObjectType::Rows => ROWS_PARAMS,
            _ => TREE_PARAMS,
        }
    }

    /// The parameters of a level.
    pub fn at(&self, level: usize) -> &NodeParams {
        if level == 0 {
            &self.leaf
        } else {
            &self.internal
        }
    }
}

/// No boundary before a directory node holds this many entry bytes.
pub const MIN_NODE_BYTES: usize = TREE_NODE.min;
/// Expected entry bytes between directory boundaries (after the minimum).
pub const TARGET_NODE_BYTES: u64 = TREE_NODE.target;
/// A boundary is forced once a directory node holds this many entry bytes.
pub const MAX_NODE_BYTES: usize = TREE_NODE.max;

/// The boundary hash of a key at a level: the first four bytes, little
/// endian, of `BLAKE3(level || key)`.
pub fn boundary_hash(level: u8, key: &[u8]) -> u32 {
    // Most keys are short: one call on a buffer of the stack costs less
    // than a hasher's setup (a row map hashes one key per row).
    if key.len() < 64 {
        let mut buf = [0u8; 64];
        buf[0] = level;
        buf[1..=key.len()].copy_from_slice(key);
        let out = blake3::hash(&buf[..=key.len()]);
        let b = out.as_bytes();
        return u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
    let mut h = blake3::Hasher::new();
    h.update(&[level]);
    h.update(key);
    let out = h.finalize();
    let b = out.as_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Whether a directory node ends after an entry of `entry_bytes` that
/// brought the node to `node_bytes` entry bytes (see [`is_boundary_with`]).
pub fn is_boundary(level: u8, key: &[u8], entry_bytes: usize, node_bytes: usize) -> bool {
    is_boundary_with(&TREE_NODE, level, key, entry_bytes, node_bytes, u64::MAX)
}

/// Whether a node ends after an entry of `entry_bytes` that brought the node
/// to `node_bytes` entry bytes. The chance of a boundary is proportional to
/// the entry's size, so nodes average near `min + target` bytes whatever the
/// entries' sizes.
pub fn is_boundary_with(
    p: &NodeParams,
    level: u8,
    key: &[u8],
    entry_bytes: usize,
    node_bytes: usize,
    entries: u64,
) -> bool {
    if entries < p.min_entries {
        return false;
    }
    if node_bytes >= p.max {
        return true;
    }
    if node_bytes < p.min {
        return false;
    }
    let h = u64::from(boundary_hash(level, key));
    h * p.target < (entry_bytes as u64) << 32
}

/// A decoded node. Keys and values borrow from `raw`.
#[derive(Debug, Clone)]
pub struct Node {
    /// 0 for a leaf; a child's level plus one for an internal node.
    pub level: u8,
    raw: Vec<u8>,
    /// (key start, key len, value start, value len) into `raw`.
    items: Vec<(u32, u32, u32, u32)>,
}

impl Node {
    /// Decodes and validates a node: version, sorted unique keys, sizes, no
    /// trailing bytes.
    pub fn decode(raw: Vec<u8>) -> std::result::Result<Node, DecodeError> {
        let mut r = Reader::new(&raw);
        let version = r.u8()?;
        if version != NODE_VERSION {
            return r.err(format!("unknown node version {version}"));
        }
        let level = r.u8()?;
        if level > MAX_LEVEL {
            return r.err(format!("node level {level} too deep"));
        }
        let count = r.varint_max(raw.len() as u64, "entry count")? as usize;
        // Reserve only what the remaining bytes can hold (a leaf entry takes
        // at least 2 bytes, an internal one 33): a hostile count must not
        // size an allocation 8 times the node's bytes.
        let min_entry = if level == 0 { 2 } else { 33 };
        let mut items = Vec::with_capacity(count.min(r.remaining() / min_entry));
        let mut prev: Option<&[u8]> = None;
        for _ in 0..count {
            let kstart = r.pos();
            let key = r.bytes(MAX_KEY)?;
            let kstart = kstart + varint_len(key.len() as u64);
            if let Some(p) = prev
                && p >= key
            {
                return r.err(format!(
                    "keys not strictly increasing (duplicate or out of order key {:?})",
                    String::from_utf8_lossy(key)
                ));
            }
            prev = Some(key);
            let (vstart, vlen) = if level == 0 {
                let vs = r.pos();
                let v = r.bytes(MAX_VALUE)?;
                (vs + varint_len(v.len() as u64), v.len())
            } else {
                let vs = r.pos();
                r.take(32)?;
                (vs, 32)
            };
            items.push((kstart as u32, key.len() as u32, vstart as u32, vlen as u32));
        }
        r.finish()?;
        Ok(Node { level, raw, items })
    }

    /// Entries in the node.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether it has no entries.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The `i`th key.
    pub fn key(&self, i: usize) -> &[u8] {
        let (ks, kl, _, _) = self.items[i];
        &self.raw[ks as usize..(ks + kl) as usize]
    }

    /// The `i`th value (a leaf's).
    pub fn value(&self, i: usize) -> &[u8] {
        let (_, _, vs, vl) = self.items[i];
        &self.raw[vs as usize..(vs + vl) as usize]
    }

    /// The `i`th child (an internal node's).
    pub fn child(&self, i: usize) -> ObjectId {
        let mut a = [0u8; 32];
        a.copy_from_slice(self.value(i));
        ObjectId(a)
    }

    /// The node's last key, if any.
    pub fn last_key(&self) -> Option<&[u8]> {
        self.items.len().checked_sub(1).map(|i| self.key(i))
    }

    /// Ids this node references (children of an internal node; none for a leaf,
    /// whose values the map's user interprets).
    pub fn children(&self) -> impl Iterator<Item = ObjectId> + '_ {
        let n = if self.level > 0 { self.len() } else { 0 };
        (0..n).map(|i| self.child(i))
    }

    /// Index of the first entry whose key is >= `key`.
    fn lower_bound(&self, key: &[u8]) -> usize {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.key(mid) < key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

impl Node {
    /// The bytes entry `i` takes in the node (what the boundary rule counts).
    fn entry_bytes(&self, i: usize) -> usize {
        let (_, kl, _, vl) = self.items[i];
        let (kl, vl) = (kl as usize, vl as usize);
        if self.level == 0 {
            varint_len(kl as u64) + kl + varint_len(vl as u64) + vl
        } else {
            varint_len(kl as u64) + kl + 32
        }
    }
}

/// Checks that a node has exactly the shape the builder gives it, so that a
/// map's contents have one id: no entry but the last may be a boundary, the
/// last must be one unless the node is the rightmost of its level (where the
/// map ends), and an internal root has at least two children (a single
/// child would itself be the root). Returns what is wrong.
pub fn check_canonical(
    tag: ObjectType,
    node: &Node,
    is_root: bool,
    rightmost: bool,
) -> std::result::Result<(), String> {
    let params = MapParams::for_tag(tag);
    let p = params.at(usize::from(node.level));
    if node.is_empty() && !(is_root && node.level == 0) {
        return Err("an empty node that is not the root of an empty map".into());
    }
    if is_root && node.level > 0 && node.len() < 2 {
        return Err("an internal root with a single child (the child is the root)".into());
    }
    let mut node_bytes = 0usize;
    for i in 0..node.len() {
        let eb = node.entry_bytes(i);
        node_bytes += eb;
        let cut = is_boundary_with(p, node.level, node.key(i), eb, node_bytes, i as u64 + 1);
        if cut && i + 1 < node.len() {
            return Err(format!(
                "not canonical: the boundary rule ends the node after entry {} of {}",
                i + 1,
                node.len()
            ));
        }
        if !cut && i + 1 == node.len() && !rightmost {
            return Err(
                "not canonical: the node ends where the boundary rule does not end it".into(),
            );
        }
    }
    Ok(())
}

/// Loads and decodes a node, checking what its parent promised: its level and
/// its last key. The root (no parent) may be an empty leaf.
pub fn load_node(
    src: &dyn ObjectSource,
    tag: ObjectType,
    id: &ObjectId,
    expect: Option<(u8, &[u8])>,
) -> Result<Node> {
    let raw = src.get(tag, id)?;
    let node = Node::decode(raw).map_err(|e| corrupt(tag, id, e))?;
    match expect {
        None => {
            if node.is_empty() && node.level != 0 {
                return Err(corrupt(tag, id, "empty internal node"));
            }
        }
        Some((level, last)) => {
            if node.level != level {
                return Err(corrupt(
                    tag,
                    id,
                    format!("node level {} where its parent expects {level}", node.level),
                ));
            }
            if node.last_key() != Some(last) {
                return Err(corrupt(
                    tag,
                    id,
                    "node's last key differs from its parent's entry",
                ));
            }
        }
    }
    Ok(node)
}

struct Level {
    buf: Vec<u8>,
    count: u64,
    last_key: Vec<u8>,
    flushed: u64,
}

impl Level {
    fn new() -> Self {
        Level {
            buf: Vec::new(),
            count: 0,
            last_key: Vec::new(),
            flushed: 0,
        }
    }
}

/// Builds a map from entries given in strictly increasing key order, writing
/// each node to the sink as soon as it is complete (children before parents).
pub struct MapBuilder<'a> {
    tag: ObjectType,
    params: MapParams,
    sink: &'a dyn ObjectSink,
    levels: Vec<Level>,
    total: u64,
    node_buf: Vec<u8>,
    /// Finished nodes not yet handed to the sink (batched builders only).
    batch: Option<Vec<(ObjectType, ObjectId, Vec<u8>)>>,
}

/// Nodes a batched builder hands to its sink at a time.
const NODE_BATCH: usize = 256;

impl<'a> MapBuilder<'a> {
    /// A builder writing nodes of kind `tag` into `sink`; keys must come in order.
    pub fn new(tag: ObjectType, sink: &'a dyn ObjectSink) -> Self {
        MapBuilder {
            tag,
            params: MapParams::for_tag(tag),
            sink,
            levels: vec![Level::new()],
            total: 0,
            node_buf: Vec::new(),
            batch: None,
        }
    }

    /// A builder that hands finished nodes to the sink in batches
    /// (`ObjectSink::put_many`, which may compress them in parallel), in
    /// the order they were made. For large maps built from one thread.
    pub fn batched(tag: ObjectType, sink: &'a dyn ObjectSink) -> Self {
        let mut b = Self::new(tag, sink);
        b.batch = Some(Vec::with_capacity(NODE_BATCH));
        b
    }

    /// Stores the node just encoded in `node_buf`.
    fn store_node(&mut self, id: ObjectId) -> Result<()> {
        match &mut self.batch {
            None => {
                self.sink.put_hashed(self.tag, id, &self.node_buf)?;
            }
            Some(b) => {
                // The node's own buffer goes into the batch, not a copy;
                // the next node starts in a buffer as large.
                let next = Vec::with_capacity(self.node_buf.capacity());
                b.push((self.tag, id, std::mem::replace(&mut self.node_buf, next)));
                if b.len() >= NODE_BATCH {
                    self.sink.put_many(b)?;
                    b.clear();
                }
            }
        }
        Ok(())
    }

    fn drain(&mut self) -> Result<()> {
        if let Some(b) = &mut self.batch
            && !b.is_empty()
        {
            self.sink.put_many(b)?;
            b.clear();
        }
        Ok(())
    }

    /// Number of entries pushed.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The key pushed last.
    pub fn last_key(&self) -> Option<&[u8]> {
        let l0 = &self.levels[0];
        (self.total > 0 || l0.flushed > 0).then_some(l0.last_key.as_slice())
    }

    /// Appends an entry. Keys must be strictly increasing.
    pub fn push(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let l0 = &self.levels[0];
        if (self.total > 0 || l0.flushed > 0) && key <= l0.last_key.as_slice() {
            return Err(crate::error::SyncError::Invalid(format!(
                "map keys out of order: {:?} after {:?}",
                String::from_utf8_lossy(key),
                String::from_utf8_lossy(&l0.last_key)
            )));
        }
        if key.len() > MAX_KEY || value.len() > MAX_VALUE {
            return Err(crate::error::SyncError::Invalid(format!(
                "map entry too large (key {} bytes, value {} bytes)",
                key.len(),
                value.len()
            )));
        }
        self.total += 1;
        self.add(0, key, value)
    }

    fn add(&mut self, level: usize, key: &[u8], payload: &[u8]) -> Result<()> {
        if level > usize::from(MAX_LEVEL) {
            return Err(crate::error::SyncError::Invalid(format!(
                "map deeper than {MAX_LEVEL} levels"
            )));
        }
        if self.levels.len() <= level {
            self.levels.push(Level::new());
        }
        let l = &mut self.levels[level];
        let before = l.buf.len();
        put_varint(&mut l.buf, key.len() as u64);
        l.buf.extend_from_slice(key);
        if level == 0 {
            put_varint(&mut l.buf, payload.len() as u64);
        }
        l.buf.extend_from_slice(payload);
        l.count += 1;
        l.last_key.clear();
        l.last_key.extend_from_slice(key);
        let entry_bytes = l.buf.len() - before;
        if is_boundary_with(
            self.params.at(level),
            level as u8,
            key,
            entry_bytes,
            l.buf.len(),
            l.count,
        ) {
            self.flush(level)?;
        }
        Ok(())
    }

    fn encode_node(&mut self, level: usize) -> ObjectId {
        let l = &mut self.levels[level];
        self.node_buf.clear();
        self.node_buf.push(NODE_VERSION);
        self.node_buf.push(level as u8);
        put_varint(&mut self.node_buf, l.count);
        self.node_buf.extend_from_slice(&l.buf);
        l.buf.clear();
        l.count = 0;
        ObjectId::compute(self.tag, &self.node_buf)
    }

    fn flush(&mut self, level: usize) -> Result<()> {
        let id = self.encode_node(level);
        self.store_node(id)?;
        self.levels[level].flushed += 1;
        let key = std::mem::take(&mut self.levels[level].last_key);
        let r = self.add(level + 1, &key, &id.0);
        self.levels[level].last_key = key;
        r
    }

    /// Appends a whole stored leaf (its last key and id) without reading
    /// it, when the leaf being built is empty (the last entry pushed ended
    /// a node); returns false, doing nothing, otherwise. The leaf's entries
    /// must be the next ones in order, and the leaf must end by the boundary
    /// rule (any leaf of a canonical map but its last): then pushing its
    /// entries one by one would cut exactly there and give the same id.
    /// Its entries are not counted in [`len`](Self::len).
    pub fn splice_leaf(&mut self, last_key: &[u8], id: &ObjectId) -> Result<bool> {
        let l0 = &self.levels[0];
        let started = self.total > 0 || l0.flushed > 0;
        if l0.count != 0 || (started && last_key <= l0.last_key.as_slice()) {
            return Ok(false);
        }
        let l0 = &mut self.levels[0];
        l0.flushed += 1;
        l0.last_key.clear();
        l0.last_key.extend_from_slice(last_key);
        self.add(1, last_key, &id.0)?;
        Ok(true)
    }

    /// Writes the remaining nodes and returns the root id.
    pub fn finish(mut self) -> Result<ObjectId> {
        let mut level = 0;
        loop {
            let top = level + 1 == self.levels.len();
            let l = &self.levels[level];
            if top && l.flushed == 0 {
                if level > 0 && l.count == 1 {
                    // A single child: that child is the root.
                    let mut a = [0u8; 32];
                    a.copy_from_slice(&l.buf[l.buf.len() - 32..]);
                    self.drain()?;
                    return Ok(ObjectId(a));
                }
                let id = self.encode_node(level);
                self.store_node(id)?;
                self.drain()?;
                return Ok(id);
            }
            if l.count > 0 {
                self.flush(level)?;
            }
            level += 1;
        }
    }
}

/// Builds a map from an iterator of sorted entries.
pub fn build<'k>(
    tag: ObjectType,
    sink: &dyn ObjectSink,
    entries: impl IntoIterator<Item = (&'k [u8], &'k [u8])>,
) -> Result<ObjectId> {
    let mut b = MapBuilder::new(tag, sink);
    for (k, v) in entries {
        b.push(k, v)?;
    }
    b.finish()
}

/// Rebuilds the map at `old` with `edits` applied (sorted by key, strictly
/// increasing: `Some(value)` sets a key, `None` deletes one the map holds),
/// into `sink`. Leaves no edit touches are reused by id where the new map
/// cuts where the old one did (a content-defined map realigns a few
/// entries after each edit), so the work grows with the edits and the
/// number of leaves, not with the entries. Gives the id a full build of the
/// edited entries gives. `present` says whether the sink holds an object
/// (a reused leaf must be there); a leaf it lacks is read and rebuilt.
pub fn apply_edits(
    src: &dyn ObjectSource,
    sink: &dyn ObjectSink,
    tag: ObjectType,
    old: &ObjectId,
    edits: impl IntoIterator<Item = Result<(Vec<u8>, Option<Vec<u8>>)>>,
) -> Result<ObjectId> {
    let mut b = MapBuilder::batched(tag, sink);
    let mut edits = Edits {
        iter: edits.into_iter(),
        next: None,
        last: None,
    };
    let mut leaves = LeafWalk::new(src, tag, *old)?;
    let mut cur = leaves.next_leaf()?;
    while let Some((last_key, id)) = cur.take() {
        let following = leaves.next_leaf()?;
        let touched = edits.peek()?.is_some_and(|k| k <= last_key.as_slice());
        // The map's last leaf ends with the input, not by the rule: never
        // reused where more entries may follow it.
        if !touched && following.is_some() && sink.contains(&id) && b.splice_leaf(&last_key, &id)? {
            cur = following;
            continue;
        }
        let node = load_node(src, tag, &id, Some((0, &last_key)))?;
        let mut i = 0;
        loop {
            let (entry_first, replaces) = {
                let edit_key = edits.peek()?.filter(|k| *k <= last_key.as_slice());
                let entry_key = (i < node.len()).then(|| node.key(i));
                match (entry_key, edit_key) {
                    (None, None) => break,
                    (Some(k), e) if e.is_none_or(|e| k < e) => (true, false),
                    (k, e) => (false, k == e),
                }
            };
            if entry_first {
                b.push(node.key(i), node.value(i))?;
            } else {
                edits.apply(&mut b, replaces)?;
            }
            if entry_first || replaces {
                i += 1;
            }
        }
        cur = following;
    }
    while edits.peek()?.is_some() {
        edits.apply(&mut b, false)?;
    }
    b.finish()
}

/// Sorted map edits, checked to be strictly increasing.
struct Edits<I> {
    iter: I,
    next: Option<(Vec<u8>, Option<Vec<u8>>)>,
    last: Option<Vec<u8>>,
}

impl<I: Iterator<Item = Result<(Vec<u8>, Option<Vec<u8>>)>>> Edits<I> {
    fn peek(&mut self) -> Result<Option<&[u8]>> {
        if self.next.is_none()
            && let Some(e) = self.iter.next()
        {
            let e = e?;
            if self
                .last
                .as_ref()
                .is_some_and(|l| l.as_slice() >= e.0.as_slice())
            {
                return Err(crate::error::SyncError::Invalid(
                    "map edits out of order".into(),
                ));
            }
            self.last = Some(e.0.clone());
            self.next = Some(e);
        }
        Ok(self.next.as_ref().map(|(k, _)| k.as_slice()))
    }

    /// Applies the next edit; `replaces`: the map holds its key.
    fn apply(&mut self, b: &mut MapBuilder<'_>, replaces: bool) -> Result<()> {
        match self.next.take() {
            Some((k, Some(v))) => b.push(&k, &v),
            Some((k, None)) if !replaces => Err(crate::error::SyncError::Invalid(format!(
                "map edit deletes {:?}, which the map does not hold",
                String::from_utf8_lossy(&k)
            ))),
            _ => Ok(()),
        }
    }
}

/// A map's leaves in key order, by (last key, id), reading internal nodes
/// only.
struct LeafWalk<'a> {
    src: &'a dyn ObjectSource,
    tag: ObjectType,
    /// (internal node, next index)
    stack: Vec<(Node, usize)>,
    root_leaf: Option<(Vec<u8>, ObjectId)>,
}

impl<'a> LeafWalk<'a> {
    fn new(src: &'a dyn ObjectSource, tag: ObjectType, root: ObjectId) -> Result<Self> {
        let node = load_node(src, tag, &root, None)?;
        let mut w = LeafWalk {
            src,
            tag,
            stack: Vec::new(),
            root_leaf: None,
        };
        if node.level == 0 {
            w.root_leaf = node.last_key().map(|k| (k.to_vec(), root));
        } else {
            w.stack.push((node, 0));
        }
        Ok(w)
    }

    fn next_leaf(&mut self) -> Result<Option<(Vec<u8>, ObjectId)>> {
        if let Some(l) = self.root_leaf.take() {
            return Ok(Some(l));
        }
        loop {
            let Some((node, i)) = self.stack.last_mut() else {
                return Ok(None);
            };
            if *i >= node.len() {
                self.stack.pop();
                continue;
            }
            let idx = *i;
            *i += 1;
            let (key, child) = (node.key(idx).to_vec(), node.child(idx));
            if node.level == 1 {
                return Ok(Some((key, child)));
            }
            let level = node.level - 1;
            let n = load_node(self.src, self.tag, &child, Some((level, &key)))?;
            self.stack.push((n, 0));
        }
    }
}

/// The id of the empty map of a kind (a leaf with no entries).
pub fn empty_map_bytes() -> Vec<u8> {
    vec![NODE_VERSION, 0, 0]
}

/// Looks a key up.
pub fn get(
    src: &dyn ObjectSource,
    tag: ObjectType,
    root: &ObjectId,
    key: &[u8],
) -> Result<Option<Vec<u8>>> {
    let mut node = load_node(src, tag, root, None)?;
    loop {
        let i = node.lower_bound(key);
        if node.level == 0 {
            return Ok((i < node.len() && node.key(i) == key).then(|| node.value(i).to_vec()));
        }
        if i == node.len() {
            return Ok(None);
        }
        let child = node.child(i);
        let expect = (node.level - 1, node.key(i).to_vec());
        node = load_node(src, tag, &child, Some((expect.0, &expect.1)))?;
    }
}

/// Streams a map's entries in key order, validating order across nodes.
pub struct MapIter<'a> {
    src: &'a dyn ObjectSource,
    tag: ObjectType,
    /// (node, next index, node id)
    stack: Vec<(Node, usize, ObjectId)>,
    root: Option<ObjectId>,
    prev: Option<Vec<u8>>,
    failed: bool,
}

impl<'a> MapIter<'a> {
    /// Iterates the map of kind `tag` at `root` in key order.
    pub fn new(src: &'a dyn ObjectSource, tag: ObjectType, root: ObjectId) -> Self {
        MapIter {
            src,
            tag,
            stack: Vec::new(),
            root: Some(root),
            prev: None,
            failed: false,
        }
    }

    fn step(&mut self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        if let Some(root) = self.root.take() {
            let n = load_node(self.src, self.tag, &root, None)?;
            self.stack.push((n, 0, root));
        }
        loop {
            let Some((node, i, id)) = self.stack.last_mut() else {
                return Ok(None);
            };
            if *i >= node.len() {
                self.stack.pop();
                continue;
            }
            let idx = *i;
            *i += 1;
            if node.level == 0 {
                let key = node.key(idx).to_vec();
                let value = node.value(idx).to_vec();
                if let Some(p) = &self.prev
                    && p.as_slice() >= key.as_slice()
                {
                    return Err(corrupt(
                        self.tag,
                        id,
                        format!(
                            "map keys not strictly increasing across nodes at {:?}",
                            String::from_utf8_lossy(&key)
                        ),
                    ));
                }
                self.prev = Some(key.clone());
                return Ok(Some((key, value)));
            }
            let child = node.child(idx);
            let expect_key = node.key(idx).to_vec();
            let level = node.level - 1;
            let n = load_node(self.src, self.tag, &child, Some((level, &expect_key)))?;
            self.stack.push((n, 0, child));
        }
    }
}

impl Iterator for MapIter<'_> {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.step() {
            Ok(Some(e)) => Some(Ok(e)),
            Ok(None) => None,
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// One difference between two maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Only in `b`: its value.
    Added(Vec<u8>),
    /// Only in `a`: its value.
    Removed(Vec<u8>),
    /// In both with other values: (`a`'s, `b`'s).
    Modified(Vec<u8>, Vec<u8>),
}

enum Item {
    Node {
        id: ObjectId,
        level: u8,
        /// Every key in the subtree is greater than this (None: unbounded).
        lower: Option<Vec<u8>>,
        last: Vec<u8>,
    },
    Entry {
        key: Vec<u8>,
        value: Vec<u8>,
    },
}

struct Side<'a> {
    src: &'a dyn ObjectSource,
    tag: ObjectType,
    /// Next item on top.
    stack: Vec<Item>,
    /// Every node read, in order.
    loaded: Vec<ObjectId>,
}

impl Side<'_> {
    fn open(&mut self, root: Option<&ObjectId>) -> Result<()> {
        if let Some(root) = root {
            let node = load_node(self.src, self.tag, root, None)?;
            self.loaded.push(*root);
            self.push_children(node, None);
        }
        Ok(())
    }

    fn push_children(&mut self, node: Node, lower: Option<Vec<u8>>) {
        let n = node.len();
        let start = self.stack.len();
        for i in 0..n {
            if node.level == 0 {
                self.stack.push(Item::Entry {
                    key: node.key(i).to_vec(),
                    value: node.value(i).to_vec(),
                });
            } else {
                let lower = if i == 0 {
                    lower.clone()
                } else {
                    Some(node.key(i - 1).to_vec())
                };
                self.stack.push(Item::Node {
                    id: node.child(i),
                    level: node.level - 1,
                    lower,
                    last: node.key(i).to_vec(),
                });
            }
        }
        self.stack[start..].reverse();
    }

    fn expand(&mut self) -> Result<()> {
        if let Some(Item::Node {
            id,
            level,
            lower,
            last,
        }) = self.stack.pop()
        {
            let node = load_node(self.src, self.tag, &id, Some((level, &last)))?;
            self.loaded.push(id);
            self.push_children(node, lower);
        }
        Ok(())
    }
}

/// The nodes a diff read: every node of `b` it had to open (the nodes of `b`
/// that are not shared with `a` at the same place), and pairs (a node, b
/// node) opened together at the same place — good delta bases.
#[derive(Debug, Default)]
pub struct DiffNodes {
    /// The nodes of `b` the diff opened.
    pub b_nodes: Vec<ObjectId>,
    /// (a node, b node) pairs opened at the same place.
    pub pairs: Vec<(ObjectId, ObjectId)>,
}

/// Calls `f` for every key whose value differs between map `a` and map `b`
/// (either may be absent, meaning empty), in key order. Subtrees with equal
/// ids on both sides are skipped without being read.
pub fn diff(
    src: &dyn ObjectSource,
    tag: ObjectType,
    a: Option<&ObjectId>,
    b: Option<&ObjectId>,
    f: impl FnMut(&[u8], Change) -> Result<()>,
) -> Result<()> {
    diff_detail(src, tag, a, b, f).map(|_| ())
}

/// [`diff`], also telling which nodes it read.
pub fn diff_detail(
    src: &dyn ObjectSource,
    tag: ObjectType,
    a: Option<&ObjectId>,
    b: Option<&ObjectId>,
    mut f: impl FnMut(&[u8], Change) -> Result<()>,
) -> Result<DiffNodes> {
    let mut nodes = DiffNodes::default();
    if a == b {
        return Ok(nodes);
    }
    if let (Some(a), Some(b)) = (a, b) {
        nodes.pairs.push((*a, *b));
    }
    let mut sa = Side {
        src,
        tag,
        stack: Vec::new(),
        loaded: Vec::new(),
    };
    let mut sb = Side {
        src,
        tag,
        stack: Vec::new(),
        loaded: Vec::new(),
    };
    sa.open(a)?;
    sb.open(b)?;
    loop {
        match (sa.stack.last(), sb.stack.last()) {
            (None, None) => {
                nodes.b_nodes = sb.loaded;
                return Ok(nodes);
            }
            (
                Some(Item::Node {
                    id: ia, level: la, ..
                }),
                Some(Item::Node {
                    id: ib, level: lb, ..
                }),
            ) => {
                if ia == ib {
                    sa.stack.pop();
                    sb.stack.pop();
                } else {
                    match la.cmp(lb) {
                        Ordering::Greater => sa.expand()?,
                        Ordering::Less => sb.expand()?,
                        Ordering::Equal => {
                            nodes.pairs.push((*ia, *ib));
                            sa.expand()?;
                            sb.expand()?;
                        }
                    }
                }
            }
            (Some(Item::Node { lower, .. }), Some(Item::Entry { key, .. })) => {
                if lower.as_deref().is_some_and(|l| key.as_slice() <= l) {
                    if let Some(Item::Entry { key, value }) = sb.stack.pop() {
                        f(&key, Change::Added(value))?;
                    }
                } else {
                    sa.expand()?;
                }
            }
            (Some(Item::Entry { key, .. }), Some(Item::Node { lower, .. })) => {
                if lower.as_deref().is_some_and(|l| key.as_slice() <= l) {
                    if let Some(Item::Entry { key, value }) = sa.stack.pop() {
                        f(&key, Change::Removed(value))?;
                    }
                } else {
                    sb.expand()?;
                }
            }
            (Some(Item::Node { .. }), None) => sa.expand()?,
            (None, Some(Item::Node { .. })) => sb.expand()?,
            (Some(Item::Entry { key: ka, .. }), Some(Item::Entry { key: kb, .. })) => {
                match ka.cmp(kb) {
                    Ordering::Less => {
                        if let Some(Item::Entry { key, value }) = sa.stack.pop() {
                            f(&key, Change::Removed(value))?;
                        }
                    }
                    Ordering::Greater => {
                        if let Some(Item::Entry { key, value }) = sb.stack.pop() {
                            f(&key, Change::Added(value))?;
                        }
                    }
                    Ordering::Equal => {
                        if let (
                            Some(Item::Entry { key, value: va }),
                            Some(Item::Entry { value: vb, .. }),
                        ) = (sa.stack.pop(), sb.stack.pop())
                            && va != vb
                        {
                            f(&key, Change::Modified(va, vb))?;
                        }
                    }
                }
            }
            (Some(Item::Entry { .. }), None) => {
                if let Some(Item::Entry { key, value }) = sa.stack.pop() {
                    f(&key, Change::Removed(value))?;
                }
            }
            (None, Some(Item::Entry { .. })) => {
                if let Some(Item::Entry { key, value }) = sb.stack.pop() {
                    f(&key, Change::Added(value))?;
                }
            }
        }
    }
}

/// Checks the map's structure and returns every node id (for fsck and gc),
/// calling `leaf` for each entry. Every node must have the canonical shape
/// ([`check_canonical`]): a map the writer would not produce is damage.
pub fn walk_nodes(
    src: &dyn ObjectSource,
    tag: ObjectType,
    root: &ObjectId,
    visit_node: impl FnMut(&ObjectId) -> bool,
    leaf: impl FnMut(&[u8], &[u8]) -> Result<()>,
) -> Result<()> {
    walk_nodes_with(src, tag, root, &mut IdSet::default(), visit_node, leaf)
}

/// [`walk_nodes`] for callers that skip nodes they walked before (fsck,
/// gc): `open_ended` keeps, across calls, the nodes read whose last entry
/// is not a boundary (valid only as the last node of a level), so a
/// skipped node met again in another place is still checked.
pub fn walk_nodes_with(
    src: &dyn ObjectSource,
    tag: ObjectType,
    root: &ObjectId,
    open_ended: &mut IdSet,
    mut visit_node: impl FnMut(&ObjectId) -> bool,
    mut leaf: impl FnMut(&[u8], &[u8]) -> Result<()>,
) -> Result<()> {
    if !visit_node(root) {
        return Ok(());
    }
    let node = load_node(src, tag, root, None)?;
    check_canonical(tag, &node, true, true).map_err(|e| corrupt(tag, root, e))?;
    if check_canonical(tag, &node, false, false).is_err() {
        open_ended.insert(*root);
    }
    // (node, next index, whether it is the rightmost node of its level)
    let mut stack = vec![(node, 0usize, true)];
    while let Some((node, i, rightmost)) = stack.last_mut() {
        if *i >= node.len() {
            stack.pop();
            continue;
        }
        let idx = *i;
        *i += 1;
        if node.level == 0 {
            let (k, v) = (node.key(idx).to_vec(), node.value(idx).to_vec());
            leaf(&k, &v)?;
        } else {
            let child = node.child(idx);
            let child_rightmost = *rightmost && idx + 1 == node.len();
            if !visit_node(&child) {
                if !child_rightmost && open_ended.contains(&child) {
                    return Err(corrupt(
                        tag,
                        &child,
                        "not canonical: the node ends where the boundary rule does not end it",
                    ));
                }
                continue;
            }
            let key = node.key(idx).to_vec();
            let level = node.level - 1;
            let n = load_node(src, tag, &child, Some((level, &key)))?;
            check_canonical(tag, &n, false, child_rightmost)
                .map_err(|e| corrupt(tag, &child, e))?;
            if child_rightmost && check_canonical(tag, &n, false, false).is_err() {
                open_ended.insert(child);
            }
            stack.push((n, 0, child_rightmost));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::{CountingSource, MemStore};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const T: ObjectType = ObjectType::Tree;

    fn build_map(store: &MemStore, m: &BTreeMap<Vec<u8>, Vec<u8>>) -> ObjectId {
        build(
            T,
            store,
            m.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
        )
        .unwrap()
    }

    fn read_all(store: &MemStore, root: ObjectId) -> BTreeMap<Vec<u8>, Vec<u8>> {
        MapIter::new(store, T, root).map(|e| e.unwrap()).collect()
    }

    fn key(i: u32) -> Vec<u8> {
        format!("file-{i:08}.md").into_bytes()
    }

    #[test]
    fn empty_map_is_one_empty_leaf() {
        let s = MemStore::new(true);
        let root = build_map(&s, &BTreeMap::new());
        assert_eq!(root, ObjectId::compute(T, &empty_map_bytes()));
        assert!(read_all(&s, root).is_empty());
    }

    #[test]
    fn large_map_splits_and_one_change_rewrites_few_nodes() {
        let s = MemStore::new(true);
        let mut m: BTreeMap<Vec<u8>, Vec<u8>> =
            (0..100_000).map(|i| (key(i), vec![7u8; 60])).collect();
        let r1 = build_map(&s, &m);
        let before = s.bytes();
        let n1 = s.len();
        assert!(n1 > 1000, "expected many nodes, got {n1}");
        m.insert(key(50_000), vec![8u8; 60]);
        let r2 = build_map(&s, &m);
        assert_ne!(r1, r2);
        let added = s.bytes() - before;
        assert!(added < 64 * 1024, "one change wrote {added} bytes");
        assert_eq!(read_all(&s, r2), m);
        assert_eq!(get(&s, T, &r2, &key(50_000)).unwrap(), Some(vec![8u8; 60]));
        assert_eq!(get(&s, T, &r2, b"zzz").unwrap(), None);

        let counting = CountingSource::new(&s);
        let mut changes = Vec::new();
        diff(&counting, T, Some(&r1), Some(&r2), |k, c| {
            changes.push((k.to_vec(), c));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            changes,
            vec![(key(50_000), Change::Modified(vec![7u8; 60], vec![8u8; 60]))]
        );
        assert!(
            counting.count() < 20,
            "diff read {} nodes",
            counting.count()
        );
    }

    #[test]
    fn row_maps_with_keys_longer_than_a_node_close() {
        // Found by the table round-trip property test: with a key longer
        // than the row map's largest node, every level used to end after its
        // first entry and the builder never stopped.
        let s = MemStore::new(true);
        let m: BTreeMap<Vec<u8>, Vec<u8>> = (0..50u32)
            .map(|i| {
                (
                    format!("{i:04}{}", "k".repeat(3000)).into_bytes(),
                    vec![1u8; 10],
                )
            })
            .collect();
        let root = build(
            ObjectType::Rows,
            &s,
            m.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
        )
        .unwrap();
        let back: BTreeMap<Vec<u8>, Vec<u8>> = MapIter::new(&s, ObjectType::Rows, root)
            .map(|e| e.unwrap())
            .collect();
        assert_eq!(back, m);
    }

    #[test]
    fn decode_rejects_unsorted_and_duplicate_keys() {
        let mut raw = vec![NODE_VERSION, 0, 2];
        for k in [b"b", b"a"] {
            raw.extend([1, k[0], 0]);
        }
        assert!(Node::decode(raw).is_err());
        let mut raw = vec![NODE_VERSION, 0, 2];
        for k in [b"a", b"a"] {
            raw.extend([1, k[0], 0]);
        }
        let e = Node::decode(raw).unwrap_err();
        assert!(e.what.contains("strictly increasing"), "{e}");
        assert!(Node::decode(vec![NODE_VERSION, 0, 0, 9]).is_err());
        assert!(Node::decode(vec![2, 0, 0]).is_err());
    }

    #[test]
    fn a_hostile_entry_count_does_not_size_the_allocation() {
        // 16 MiB of node claiming 16 M entries: the reservation is capped
        // by what the bytes can hold, and decoding fails cleanly.
        let mut raw = vec![NODE_VERSION, 1];
        crate::codec::put_varint(&mut raw, 16 << 20);
        raw.resize(16 << 20, 0);
        assert!(Node::decode(raw).is_err());
    }

    #[test]
    fn hand_built_shapes_that_the_writer_would_not_make_are_not_canonical() {
        let s = MemStore::new(true);
        let m: BTreeMap<Vec<u8>, Vec<u8>> = (0..400).map(|i| (key(i), vec![7u8; 30])).collect();
        let root = build_map(&s, &m);
        let ok = walk_nodes(&s, T, &root, |_| true, |_, _| Ok(()));
        assert!(ok.is_ok(), "{ok:?}");
        // All entries in one leaf: the boundary rule cuts inside it.
        let mut raw = vec![NODE_VERSION, 0];
        put_varint(&mut raw, m.len() as u64);
        for (k, v) in &m {
            put_varint(&mut raw, k.len() as u64);
            raw.extend_from_slice(k);
            put_varint(&mut raw, v.len() as u64);
            raw.extend_from_slice(v);
        }
        let one = s.put(T, &raw).unwrap();
        let e = walk_nodes(&s, T, &one, |_| true, |_, _| Ok(())).unwrap_err();
        assert!(e.to_string().contains("not canonical"), "{e}");
        // Readers still see the same entries.
        assert_eq!(read_all(&s, one), m);
    }

    #[test]
    fn a_shared_node_is_checked_in_every_place_it_is_used() {
        let s = MemStore::new(true);
        let m: BTreeMap<Vec<u8>, Vec<u8>> = (0..400).map(|i| (key(i), vec![7u8; 30])).collect();
        let a = build_map(&s, &m);
        // A's last leaf, which ends with the input, not at a boundary.
        let root = load_node(&s, T, &a, None).unwrap();
        assert!(root.level > 0);
        let mut node = root;
        let mut last = a;
        while node.level > 0 {
            last = node.child(node.len() - 1);
            let k = node.key(node.len() - 1).to_vec();
            node = load_node(&s, T, &last, Some((node.level - 1, &k))).unwrap();
        }
        assert!(check_canonical(T, &node, false, false).is_err());
        // B uses that leaf in the middle: another leaf follows it.
        let extra = build_map(&s, &[(b"zzz".to_vec(), vec![1u8])].into_iter().collect());
        let mut raw = vec![NODE_VERSION, 1, 2];
        for (k, id) in [
            (node.last_key().unwrap().to_vec(), last),
            (b"zzz".to_vec(), extra),
        ] {
            put_varint(&mut raw, k.len() as u64);
            raw.extend_from_slice(&k);
            raw.extend_from_slice(&id.0);
        }
        let b = s.put(T, &raw).unwrap();
        // Alone, B's walk finds it.
        assert!(walk_nodes(&s, T, &b, |_| true, |_, _| Ok(())).is_err());
        // After A, with nodes seen once skipped, it is still found.
        let mut seen = crate::id::IdSet::default();
        let mut open = crate::id::IdSet::default();
        walk_nodes_with(&s, T, &a, &mut open, |id| seen.insert(*id), |_, _| Ok(())).unwrap();
        let e = walk_nodes_with(&s, T, &b, &mut open, |id| seen.insert(*id), |_, _| Ok(()))
            .unwrap_err();
        assert!(e.to_string().contains("not canonical"), "{e}");
    }

    fn arb_map() -> impl Strategy<Value = BTreeMap<Vec<u8>, Vec<u8>>> {
        proptest::collection::btree_map(
            proptest::collection::vec(any::<u8>(), 0..24),
            proptest::collection::vec(any::<u8>(), 0..300),
            0..600,
        )
    }

    proptest! {
        /// The short-key path gives BLAKE3(level || key) as the spec says,
        /// on both sides of the 64-byte switch.
        #[test]
        fn boundary_hash_is_blake3_of_level_and_key(
            level in any::<u8>(),
            key in proptest::collection::vec(any::<u8>(), 0..130),
        ) {
            let mut h = blake3::Hasher::new();
            h.update(&[level]);
            h.update(&key);
            let b = *h.finalize().as_bytes();
            prop_assert_eq!(boundary_hash(level, &key), u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn build_iterate_round_trips(m in arb_map()) {
            let s = MemStore::new(true);
            let root = build_map(&s, &m);
            prop_assert_eq!(read_all(&s, root), m.clone());
            for (k, v) in m.iter().take(20) {
                prop_assert_eq!(get(&s, T, &root, k).unwrap(), Some(v.clone()));
            }
            // Same contents, same root: the shape depends on content only.
            let s2 = MemStore::new(true);
            prop_assert_eq!(build_map(&s2, &m), root);
            // What the writer makes is canonical, for both map kinds.
            prop_assert!(walk_nodes(&s, T, &root, |_| true, |_, _| Ok(())).is_ok());
            let rows = build(
                ObjectType::Rows,
                &s,
                m.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
            )
            .unwrap();
            let r = walk_nodes(&s, ObjectType::Rows, &rows, |_| true, |_, _| Ok(()));
            prop_assert!(r.is_ok(), "{:?}", r);
        }

        #[test]
        fn diff_equals_naive_diff(a in arb_map(), edits in proptest::collection::vec((any::<u16>(), proptest::option::of(proptest::collection::vec(any::<u8>(), 0..50))), 0..40)) {
            let s = MemStore::new(true);
            let mut b = a.clone();
            let keys: Vec<Vec<u8>> = a.keys().cloned().collect();
            for (i, (pick, val)) in edits.into_iter().enumerate() {
                let k = if !keys.is_empty() && pick % 3 != 0 {
                    keys[pick as usize % keys.len()].clone()
                } else {
                    format!("new-{pick}-{i}").into_bytes()
                };
                match val {
                    Some(v) => { b.insert(k, v); }
                    None => { b.remove(&k); }
                }
            }
            let ra = build_map(&s, &a);
            let rb = build_map(&s, &b);
            let mut got = Vec::new();
            diff(&s, T, Some(&ra), Some(&rb), |k, c| { got.push((k.to_vec(), c)); Ok(()) }).unwrap();
            let mut want = Vec::new();
            let all: std::collections::BTreeSet<&Vec<u8>> = a.keys().chain(b.keys()).collect();
            for k in all {
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) if x != y => want.push((k.clone(), Change::Modified(x.clone(), y.clone()))),
                    (Some(x), None) => want.push((k.clone(), Change::Removed(x.clone()))),
                    (None, Some(y)) => want.push((k.clone(), Change::Added(y.clone()))),
                    _ => {}
                }
            }
            prop_assert_eq!(got, want);
        }

        #[test]
        fn apply_edits_equals_a_full_build(a in arb_map(), edits in proptest::collection::vec((any::<u16>(), proptest::option::of(proptest::collection::vec(any::<u8>(), 0..50))), 0..40), rows in any::<bool>()) {
            let tag = if rows { ObjectType::Rows } else { T };
            let s = MemStore::new(true);
            let keys: Vec<Vec<u8>> = a.keys().cloned().collect();
            let mut ed: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
            for (i, (pick, val)) in edits.into_iter().enumerate() {
                let k = if !keys.is_empty() && pick % 3 != 0 {
                    keys[pick as usize % keys.len()].clone()
                } else {
                    format!("new-{pick}-{i}").into_bytes()
                };
                // A delete names a key the map holds.
                if val.is_some() || a.contains_key(&k) {
                    ed.insert(k, val);
                }
            }
            let mut b = a.clone();
            for (k, v) in &ed {
                match v {
                    Some(v) => { b.insert(k.clone(), v.clone()); }
                    None => { b.remove(k); }
                }
            }
            let ra = build(tag, &s, a.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))).unwrap();
            let want = build(tag, &MemStore::new(true), b.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))).unwrap();
            let got = apply_edits(&s, &s, tag, &ra, ed.into_iter().map(Ok)).unwrap();
            prop_assert_eq!(got, want);
            prop_assert_eq!(MapIter::new(&s, tag, got).map(|e| e.unwrap()).collect::<BTreeMap<_, _>>(), b);
        }
    }

    #[test]
    fn apply_edits_reads_only_the_leaves_it_changes() {
        let s = MemStore::new(true);
        let m: BTreeMap<Vec<u8>, Vec<u8>> = (0..100_000).map(|i| (key(i), vec![7u8; 60])).collect();
        let tag = ObjectType::Rows;
        let root = build(tag, &s, m.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))).unwrap();
        let nodes = s.len();
        let edits = vec![
            (key(10), Some(vec![1u8; 60])),
            (key(50_000), None),
            (b"file-00050000.md-new".to_vec(), Some(vec![2u8; 10])),
            (key(99_999), Some(vec![3u8; 60])),
            (b"zzz".to_vec(), Some(vec![4u8; 60])),
        ];
        let mut want = m.clone();
        for (k, v) in &edits {
            match v {
                Some(v) => want.insert(k.clone(), v.clone()),
                None => want.remove(k),
            };
        }
        let counting = CountingSource::new(&s);
        let got = apply_edits(&counting, &s, tag, &root, edits.into_iter().map(Ok)).unwrap();
        let full = build(
            tag,
            &MemStore::new(true),
            want.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
        )
        .unwrap();
        assert_eq!(got, full);
        // Internal nodes plus a few leaves around each edit, not all leaves.
        let mut leaves = 0u64;
        let mut walk = LeafWalk::new(&s, tag, root).unwrap();
        while walk.next_leaf().unwrap().is_some() {
            leaves += 1;
        }
        let internal = nodes as u64 - leaves;
        assert!(leaves > 2_000, "{leaves} leaves");
        let leaves_read = counting.count() - internal;
        assert!(leaves_read <= 20, "read {leaves_read} of {leaves} leaves");
        // Deleting a key the map lacks is refused (the edits do not match it).
        let e = apply_edits(&s, &s, tag, &root, [Ok((b"nope".to_vec(), None))]).unwrap_err();
        assert!(e.to_string().contains("does not hold"), "{e}");
        let e =
            apply_edits(&s, &s, tag, &root, [Ok((key(5), None)), Ok((key(4), None))]).unwrap_err();
        assert!(e.to_string().contains("out of order"), "{e}");
    }
}
