//! Chunk lists: a file's content as an ordered list of (chunk id, length).
//!
//! A short list (at most [`MAX_INLINE`] chunks) is stored inline in the tree
//! entry. A longer one becomes a tree of list nodes whose boundaries are chosen
//! by the ids themselves, so an edit in a huge file rewrites O(log n) nodes.
//!
//! List node: `version=1 | level | count (varint) | count × (id [32] | size (varint))`.
//! At level 0 the ids are chunks and the sizes their lengths; above, the ids
//! are list nodes and the sizes the bytes they cover.

use crate::codec::{DecodeError, Reader, Writer};
use crate::error::Result;
use crate::id::{ObjectId, ObjectType};
use crate::object::{ObjectSink, ObjectSource, corrupt};

/// The list node format's version byte.
pub const LIST_VERSION: u8 = 1;
/// Lists of up to this many chunks are stored inline in the tree entry.
pub const MAX_INLINE: usize = 16;
/// No boundary before a node holds this many entries.
pub const MIN_LIST_ENTRIES: usize = 8;
/// A boundary is forced at this many entries.
pub const MAX_LIST_ENTRIES: usize = 512;
/// One boundary in 64 entries on average (after the minimum).
pub const LIST_BOUNDARY_THRESHOLD: u32 = u32::MAX / 64;
/// The largest chunk any reader accepts.
pub const MAX_CHUNK_LEN: u64 = crate::object::MAX_OBJECT_SIZE as u64;

/// One chunk of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkRef {
    /// The chunk's id.
    pub id: ObjectId,
    /// Its length in bytes.
    pub len: u64,
}

/// Whether a list node ends after entry `id` that made it `count` long.
pub fn is_list_boundary(id: &ObjectId, count: usize) -> bool {
    if count >= MAX_LIST_ENTRIES {
        return true;
    }
    count >= MIN_LIST_ENTRIES
        && u32::from_le_bytes([id.0[0], id.0[1], id.0[2], id.0[3]]) < LIST_BOUNDARY_THRESHOLD
}

/// Checks that a list node has exactly the shape [`ListBuilder`] gives it,
/// so that a file's chunks have one list id: no entry but the last ends the
/// node by the boundary rule, the last does unless the node is the
/// rightmost of its level, and an internal root has at least two children.
pub fn check_list_canonical(
    node: &ListNode,
    is_root: bool,
    rightmost: bool,
) -> std::result::Result<(), String> {
    if is_root && node.level > 0 && node.entries.len() < 2 {
        return Err("an internal list root with a single child (the child is the root)".into());
    }
    let n = node.entries.len();
    for (i, e) in node.entries.iter().enumerate() {
        let cut = is_list_boundary(&e.id, i + 1);
        if cut && i + 1 < n {
            return Err(format!(
                "not canonical: the boundary rule ends the list node after entry {} of {n}",
                i + 1
            ));
        }
        if !cut && i + 1 == n && !rightmost {
            return Err(
                "not canonical: the list node ends where the boundary rule does not end it".into(),
            );
        }
    }
    Ok(())
}

/// A decoded list node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListNode {
    /// 0 for nodes of chunks; a child's level plus one above.
    pub level: u8,
    /// Chunks (level 0) or child nodes, each with the bytes under it.
    pub entries: Vec<ChunkRef>,
}

impl ListNode {
    /// The canonical bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(3 + self.entries.len() * 36);
        w.u8(LIST_VERSION)
            .u8(self.level)
            .varint(self.entries.len() as u64);
        for e in &self.entries {
            w.id(&e.id).varint(e.len);
        }
        w.into_vec()
    }

    /// Reads a list node from its canonical bytes (strictly).
    pub fn decode(b: &[u8]) -> std::result::Result<ListNode, DecodeError> {
        let mut r = Reader::new(b);
        let v = r.u8()?;
        if v != LIST_VERSION {
            return r.err(format!("unknown list version {v}"));
        }
        let level = r.u8()?;
        if level > crate::pmap::MAX_LEVEL {
            return r.err(format!("list level {level} too deep"));
        }
        let count = r.varint_max(MAX_LIST_ENTRIES as u64, "list entry count")? as usize;
        if count == 0 {
            return r.err("empty list node");
        }
        let mut entries = Vec::with_capacity(count);
        let mut total: u64 = 0;
        for _ in 0..count {
            let id = r.id()?;
            let len = r.varint()?;
            total = match total.checked_add(len) {
                Some(t) => t,
                None => return r.err("list sizes overflow 64 bits"),
            };
            if len == 0 {
                return r.err("zero-length list entry");
            }
            if level == 0 && len > MAX_CHUNK_LEN {
                return r.err(format!("chunk length {len} exceeds {MAX_CHUNK_LEN}"));
            }
            entries.push(ChunkRef { id, len });
        }
        r.finish()?;
        Ok(ListNode { level, entries })
    }

    /// The bytes the node covers (decode guarantees the sum fits).
    pub fn total(&self) -> u64 {
        self.entries
            .iter()
            .fold(0u64, |a, e| a.saturating_add(e.len))
    }
}

/// Builds a list tree from chunk refs, writing nodes as they complete.
pub struct ListBuilder<'a> {
    sink: &'a dyn ObjectSink,
    levels: Vec<(Vec<ChunkRef>, u64)>,
}

impl<'a> ListBuilder<'a> {
    /// A builder writing list nodes into `sink`.
    pub fn new(sink: &'a dyn ObjectSink) -> Self {
        ListBuilder {
            sink,
            levels: vec![(Vec::new(), 0)],
        }
    }

    /// Appends a chunk.
    pub fn push(&mut self, c: ChunkRef) -> Result<()> {
        self.add(0, c)
    }

    fn add(&mut self, level: usize, c: ChunkRef) -> Result<()> {
        if self.levels.len() <= level {
            self.levels.push((Vec::new(), 0));
        }
        self.levels[level].0.push(c);
        let n = self.levels[level].0.len();
        if is_list_boundary(&c.id, n) {
            self.flush(level)?;
        }
        Ok(())
    }

    fn write(&mut self, level: usize) -> Result<ChunkRef> {
        let entries = std::mem::take(&mut self.levels[level].0);
        let node = ListNode {
            level: level as u8,
            entries,
        };
        let total = node.total();
        let id = self.sink.put(ObjectType::List, &node.encode())?;
        Ok(ChunkRef { id, len: total })
    }

    fn flush(&mut self, level: usize) -> Result<()> {
        let r = self.write(level)?;
        self.levels[level].1 += 1;
        self.add(level + 1, r)
    }

    /// Returns (root level, root id). The list must not be empty.
    pub fn finish(mut self) -> Result<(u8, ObjectId)> {
        let mut level = 0;
        loop {
            let top = level + 1 == self.levels.len();
            let (entries, flushed) = &self.levels[level];
            if top && *flushed == 0 {
                if level > 0 && entries.len() == 1 {
                    return Ok(((level - 1) as u8, entries[0].id));
                }
                let r = self.write(level)?;
                return Ok((level as u8, r.id));
            }
            if !entries.is_empty() {
                self.flush(level)?;
            }
            level += 1;
        }
    }
}

/// Streams a list tree's chunks in order, checking levels and sizes.
pub struct ListIter<'a> {
    src: &'a dyn ObjectSource,
    /// (node id, node, next index)
    stack: Vec<(ObjectId, ListNode, usize)>,
    root: Option<(u8, ObjectId, u64)>,
}

impl<'a> ListIter<'a> {
    /// Iterates the chunks of the list at `root` (a tree `level` high, `size` bytes in all).
    pub fn new(src: &'a dyn ObjectSource, level: u8, root: ObjectId, size: u64) -> Self {
        ListIter {
            src,
            stack: Vec::new(),
            root: Some((level, root, size)),
        }
    }

    fn load(&self, id: &ObjectId, level: u8, size: u64) -> Result<ListNode> {
        let raw = self.src.get(ObjectType::List, id)?;
        let node = ListNode::decode(&raw).map_err(|e| corrupt(ObjectType::List, id, e))?;
        if node.level != level {
            return Err(corrupt(
                ObjectType::List,
                id,
                format!("list level {} where {level} was expected", node.level),
            ));
        }
        if node.total() != size {
            return Err(corrupt(
                ObjectType::List,
                id,
                format!(
                    "list covers {} bytes where {size} were expected",
                    node.total()
                ),
            ));
        }
        Ok(node)
    }

    fn step(&mut self) -> Result<Option<ChunkRef>> {
        if let Some((level, id, size)) = self.root.take() {
            let n = self.load(&id, level, size)?;
            self.stack.push((id, n, 0));
        }
        loop {
            let Some((_, node, i)) = self.stack.last_mut() else {
                return Ok(None);
            };
            if *i >= node.entries.len() {
                self.stack.pop();
                continue;
            }
            let e = node.entries[*i];
            *i += 1;
            if node.level == 0 {
                return Ok(Some(e));
            }
            let level = node.level - 1;
            let n = self.load(&e.id, level, e.len)?;
            self.stack.push((e.id, n, 0));
        }
    }
}

impl Iterator for ListIter<'_> {
    type Item = Result<ChunkRef>;
    fn next(&mut self) -> Option<Self::Item> {
        match self.step() {
            Ok(Some(c)) => Some(Ok(c)),
            Ok(None) => None,
            Err(e) => {
                self.stack.clear();
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::MemStore;
    use proptest::prelude::*;

    fn refs(n: usize, seed: u8) -> Vec<ChunkRef> {
        (0..n)
            .map(|i| ChunkRef {
                id: ObjectId::compute(ObjectType::Chunk, &[seed, (i % 251) as u8, (i / 251) as u8]),
                len: 1000 + i as u64,
            })
            .collect()
    }

    fn build_list(s: &MemStore, v: &[ChunkRef]) -> (u8, ObjectId) {
        let mut b = ListBuilder::new(s);
        for c in v {
            b.push(*c).unwrap();
        }
        b.finish().unwrap()
    }

    /// Checks every node under `id` with [`check_list_canonical`].
    fn all_canonical(s: &MemStore, id: &ObjectId, is_root: bool, rightmost: bool) -> usize {
        let n = ListNode::decode(&s.get(ObjectType::List, id).unwrap()).unwrap();
        check_list_canonical(&n, is_root, rightmost).unwrap();
        let mut nodes = 1;
        if n.level > 0 {
            let last = n.entries.len() - 1;
            for (i, e) in n.entries.iter().enumerate() {
                nodes += all_canonical(s, &e.id, false, rightmost && i == last);
            }
        }
        nodes
    }

    #[test]
    fn the_writer_makes_canonical_lists_and_others_are_refused() {
        for n in [1, 7, 8, 17, 64, 513, 5_000] {
            let s = MemStore::new(true);
            let (_, root) = build_list(&s, &refs(n, 2));
            let nodes = all_canonical(&s, &root, true, true);
            assert_eq!(nodes, s.len(), "{n}");
        }
        // Two level-0 nodes merged into one: cut inside.
        let v = refs(5_000, 2);
        let cut = (8..v.len())
            .find(|&i| is_list_boundary(&v[i].id, i + 1))
            .unwrap();
        let node = ListNode {
            level: 0,
            entries: v[..cut + 5].to_vec(),
        };
        let e = check_list_canonical(&node, true, true).unwrap_err();
        assert!(e.contains("not canonical"), "{e}");
        // Ended early (not at a boundary) though another node follows.
        let node = ListNode {
            level: 0,
            entries: v[..cut].to_vec(),
        };
        assert!(check_list_canonical(&node, false, false).is_err());
        assert!(check_list_canonical(&node, false, true).is_ok());
        // An internal root with one child.
        let node = ListNode {
            level: 1,
            entries: v[..1].to_vec(),
        };
        assert!(check_list_canonical(&node, true, true).is_err());
    }

    #[test]
    fn long_list_edit_rewrites_few_nodes() {
        let s = MemStore::new(true);
        let mut v = refs(20_000, 1);
        let total: u64 = v.iter().map(|c| c.len).sum();
        let (lvl, root) = build_list(&s, &v);
        assert!(lvl >= 1);
        let got: Vec<ChunkRef> = ListIter::new(&s, lvl, root, total)
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(got, v);
        let nodes = s.len();
        v[10_000].id = ObjectId::compute(ObjectType::Chunk, b"changed");
        build_list(&s, &v);
        assert!(s.len() - nodes <= 4, "{} new nodes", s.len() - nodes);
    }

    #[test]
    fn wrong_size_is_corruption() {
        let s = MemStore::new(true);
        let v = refs(100, 2);
        let total: u64 = v.iter().map(|c| c.len).sum();
        let (lvl, root) = build_list(&s, &v);
        let r: Result<Vec<_>> = ListIter::new(&s, lvl, root, total + 1).collect();
        assert!(r.is_err());
    }

    #[test]
    fn sizes_that_overflow_are_rejected() {
        // Found by the list_node fuzz target: level 1, lengths u64::MAX and 1.
        let mut b = vec![1u8, 1, 2];
        b.extend([0u8; 32]);
        b.extend([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        b.extend([1u8; 32]);
        b.push(1);
        let e = ListNode::decode(&b).unwrap_err();
        assert!(e.what.contains("overflow"), "{e}");
    }

    proptest! {
        #[test]
        fn list_round_trips(n in 1usize..3000, seed: u8) {
            let s = MemStore::new(true);
            let v = refs(n, seed);
            let total: u64 = v.iter().map(|c| c.len).sum();
            let (lvl, root) = build_list(&s, &v);
            let got: Vec<ChunkRef> = ListIter::new(&s, lvl, root, total).map(|r| r.unwrap()).collect();
            prop_assert_eq!(got, v);
        }

        #[test]
        fn decode_never_panics_and_is_canonical(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(n) = ListNode::decode(&b) {
                prop_assert_eq!(n.encode(), b);
            }
        }
    }
}
