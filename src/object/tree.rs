//! Tree entries: the values of a directory map (name → entry).
//!
//! Entry encoding: `kind | mode (varint) | mtime seconds (zigzag) | mtime
//! nanoseconds (varint)` and then, for a file, `size (varint) | content`; for
//! a directory, `tree id [32]`; for a symlink, `target (bytes)`. Content is
//! `0 | count (varint) | count × (chunk id [32] | length (varint))` (inline) or
//! `1 | level | list root id [32]` (a list tree).
//!
//! A kind byte plus [`KIND_RELATIVE`] says the mtime is relative to the
//! mtime of the directory holding the entry (store-format.md §3.4): a
//! directory whose files all share its time (an unpacked archive, a build
//! stamped with `SOURCE_DATE_EPOCH`) then encodes the same whatever that
//! time is, and keeps its id when only the time moved.

use crate::codec::{DecodeError, Reader, Writer};
use crate::error::{Result, SyncError};
use crate::id::{ObjectId, ObjectType};
use crate::object::list::{ChunkRef, ListIter, MAX_INLINE};
use crate::object::{ObjectSource, corrupt};

/// An entry kind byte: a regular file.
pub const KIND_FILE: u8 = 1;
/// An entry kind byte: a directory.
pub const KIND_DIR: u8 = 2;
/// An entry kind byte: a symlink.
pub const KIND_SYMLINK: u8 = 3;
/// Added to a kind byte: the mtime is relative to the mtime of the
/// directory holding the entry.
pub const KIND_RELATIVE: u8 = 0x10;
/// A directory with at most this many entries has its entries' times
/// written relative to its own; a larger one only when every entry has the
/// directory's time (an unpacked archive), else absolute: a new file
/// changes the directory's time, and every entry of a large directory
/// would be rewritten, not only the node that gains the file.
pub const RELATIVE_MAX_ENTRIES: usize = 128;
/// Permission bits kept: rwx for user, group and other, setuid, setgid, sticky.
pub const MODE_MASK: u32 = 0o7777;
/// The longest entry name, in bytes.
pub const MAX_NAME: usize = 1024;
/// The longest symlink target, in bytes.
pub const MAX_SYMLINK: usize = 4096;
/// The deepest directory nesting any walk (restore, diff, ls -r, fsck, gc,
/// transfer) follows. The writer never produces deeper trees on ordinary
/// filesystems (Linux paths stop at 4096 bytes); a deeper tree from a
/// hostile store is refused with a clear error instead of exhausting the
/// stack or memory.
pub const MAX_TREE_DEPTH: usize = 1024;

/// The error for a directory nested deeper than [`MAX_TREE_DEPTH`].
pub fn too_deep(path: &[u8]) -> SyncError {
    let shown = String::from_utf8_lossy(path);
    let shown: String = shown.chars().take(200).collect();
    SyncError::Invalid(format!(
        "directory tree deeper than {MAX_TREE_DEPTH} levels at {shown}…"
    ))
}

/// Seconds and nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp {
    /// Seconds (negative before 1970).
    pub secs: i64,
    /// Nanoseconds within the second.
    pub nanos: u32,
}

const NANOS: i128 = 1_000_000_000;

impl Timestamp {
    /// The epoch: the time given for the root directory, whose entries'
    /// times are absolute, and where an entry's time is not used
    /// (reachability, diffs, fsck's walk).
    pub const ZERO: Timestamp = Timestamp { secs: 0, nanos: 0 };

    fn total(self) -> i128 {
        i128::from(self.secs) * NANOS + i128::from(self.nanos)
    }

    fn from_total(t: i128) -> Option<Timestamp> {
        Some(Timestamp {
            secs: i64::try_from(t.div_euclid(NANOS)).ok()?,
            nanos: t.rem_euclid(NANOS) as u32,
        })
    }

    /// `self − base`, as seconds (any sign) and nanoseconds (0 to
    /// 999,999,999); None when the seconds do not fit 64 bits.
    pub fn since(self, base: Timestamp) -> Option<Timestamp> {
        Timestamp::from_total(self.total() - base.total())
    }

    /// `base + self` (self relative, as [`Timestamp::since`] gives it);
    /// None when the seconds do not fit 64 bits.
    pub fn after(self, base: Timestamp) -> Option<Timestamp> {
        Timestamp::from_total(base.total() + self.total())
    }
}

/// What a file's bytes are.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Content {
    /// The chunks themselves (at most [`MAX_INLINE`]).
    Inline(Vec<ChunkRef>),
    /// The root of a list tree.
    Indirect {
        /// The list tree's height above its chunks.
        level: u8,
        /// Its root node.
        root: ObjectId,
    },
}

impl Content {
    /// Streams the chunks of the content.
    pub fn chunks<'a>(
        &'a self,
        src: &'a dyn ObjectSource,
        size: u64,
    ) -> Box<dyn Iterator<Item = Result<ChunkRef>> + 'a> {
        match self {
            Content::Inline(v) => Box::new(v.iter().copied().map(Ok)),
            Content::Indirect { level, root } => Box::new(ListIter::new(src, *level, *root, size)),
        }
    }

    /// Ids referenced directly by the entry.
    pub fn refs(&self) -> Vec<(ObjectType, ObjectId)> {
        match self {
            Content::Inline(v) => v.iter().map(|c| (ObjectType::Chunk, c.id)).collect(),
            Content::Indirect { root, .. } => vec![(ObjectType::List, *root)],
        }
    }

    /// Reads a file's content description (its chunks add up to `size`).
    pub fn decode(r: &mut Reader<'_>, size: u64) -> std::result::Result<Content, DecodeError> {
        let form = r.u8()?;
        Ok(match form {
            0 => {
                let n = r.varint_max(MAX_INLINE as u64, "inline chunk count")? as usize;
                let mut v = Vec::with_capacity(n);
                let mut sum: u64 = 0;
                for _ in 0..n {
                    let id = r.id()?;
                    let len = r.varint_max(crate::object::list::MAX_CHUNK_LEN, "chunk length")?;
                    if len == 0 {
                        return r.err("zero-length chunk");
                    }
                    sum += len;
                    v.push(ChunkRef { id, len });
                }
                if sum != size {
                    return r.err(format!("chunks cover {sum} bytes, size is {size}"));
                }
                Content::Inline(v)
            }
            1 => {
                let level = r.u8()?;
                if level > crate::pmap::MAX_LEVEL {
                    return r.err("list level too deep");
                }
                let root = r.id()?;
                if size == 0 {
                    return r.err("indirect content of an empty file");
                }
                Content::Indirect { level, root }
            }
            f => return r.err(format!("unknown content form {f}")),
        })
    }

    /// Writes the content description.
    pub fn encode(&self, w: &mut Writer) {
        match self {
            Content::Inline(v) => {
                w.u8(0).varint(v.len() as u64);
                for c in v {
                    w.id(&c.id).varint(c.len);
                }
            }
            Content::Indirect { level, root } => {
                w.u8(1).u8(*level).id(root);
            }
        }
    }
}

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A regular file.
    File {
        /// Its length in bytes.
        size: u64,
        /// Its chunks.
        content: Content,
    },
    /// A directory.
    Dir {
        /// Its tree (a directory map).
        tree: ObjectId,
    },
    /// A symbolic link.
    Symlink {
        /// Where it points, as bytes.
        target: Vec<u8>,
    },
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Entry {
    /// Permission bits (`0o755`).
    pub mode: u32,
    /// Modification time.
    pub mtime: Timestamp,
    /// File, directory or symlink.
    pub kind: EntryKind,
}

impl Entry {
    /// `file`, `dir` or `symlink`.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            EntryKind::File { .. } => "file",
            EntryKind::Dir { .. } => "dir",
            EntryKind::Symlink { .. } => "symlink",
        }
    }

    /// A file's size, a symlink target's length, 0 for a directory.
    pub fn size(&self) -> u64 {
        match &self.kind {
            EntryKind::File { size, .. } => *size,
            EntryKind::Symlink { target } => target.len() as u64,
            EntryKind::Dir { .. } => 0,
        }
    }

    /// The entry's bytes (the map's value), its mtime absolute.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_in(None)
    }

    /// The entry's bytes, its mtime relative to `dir`'s (the mtime of the
    /// directory holding it) when given and the difference fits, else
    /// absolute.
    pub fn encode_in(&self, dir: Option<Timestamp>) -> Vec<u8> {
        let mut w = Writer::with_capacity(64);
        self.encode_into(&mut w, dir);
        w.into_vec()
    }

    /// Writes the entry's bytes (see [`Entry::encode_in`]).
    pub fn encode_into(&self, w: &mut Writer, dir: Option<Timestamp>) {
        let kind = match self.kind {
            EntryKind::File { .. } => KIND_FILE,
            EntryKind::Dir { .. } => KIND_DIR,
            EntryKind::Symlink { .. } => KIND_SYMLINK,
        };
        let (kind, time) = match dir.and_then(|d| self.mtime.since(d)) {
            Some(rel) => (kind | KIND_RELATIVE, rel),
            None => (kind, self.mtime),
        };
        w.u8(kind)
            .varint(u64::from(self.mode & MODE_MASK))
            .zigzag(time.secs)
            .varint(u64::from(time.nanos));
        match &self.kind {
            EntryKind::File { size, content } => {
                w.varint(*size);
                content.encode(w);
            }
            EntryKind::Dir { tree } => {
                w.id(tree);
            }
            EntryKind::Symlink { target } => {
                w.bytes(target);
            }
        }
    }

    /// Reads an entry from its bytes; `dir` is the mtime of the directory
    /// holding it, which a relative mtime is added to.
    pub fn decode(b: &[u8], dir: Timestamp) -> std::result::Result<Entry, DecodeError> {
        let mut r = Reader::new(b);
        let kind = r.u8()?;
        let mode = r.varint_max(u64::from(MODE_MASK), "mode")? as u32;
        let secs = r.zigzag()?;
        let nanos = r.varint_max(999_999_999, "nanoseconds")? as u32;
        let mut mtime = Timestamp { secs, nanos };
        if kind & KIND_RELATIVE != 0 {
            mtime = match mtime.after(dir) {
                Some(t) => t,
                None => return r.err("relative mtime out of range"),
            };
        }
        let kind = match kind & !KIND_RELATIVE {
            KIND_FILE => {
                let size = r.varint()?;
                let content = Content::decode(&mut r, size)?;
                EntryKind::File { size, content }
            }
            KIND_DIR => EntryKind::Dir { tree: r.id()? },
            KIND_SYMLINK => {
                let target = r.bytes(MAX_SYMLINK)?;
                if target.is_empty() || target.contains(&0) {
                    return r.err("symlink target is empty or holds NUL");
                }
                EntryKind::Symlink {
                    target: target.to_vec(),
                }
            }
            k => return r.err(format!("unknown entry kind {k}")),
        };
        r.finish()?;
        Ok(Entry { mode, mtime, kind })
    }

    /// Objects this entry references directly, with their kinds.
    pub fn refs(&self) -> Vec<(ObjectType, ObjectId)> {
        match &self.kind {
            EntryKind::File { content, .. } => content.refs(),
            EntryKind::Dir { tree } => vec![(ObjectType::Tree, *tree)],
            EntryKind::Symlink { .. } => Vec::new(),
        }
    }
}

/// Why a name cannot be a directory entry, if it cannot.
pub fn check_name(name: &[u8]) -> std::result::Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name == b"." || name == b".." {
        return Err("`.` and `..` are not entry names");
    }
    if name.contains(&b'/') {
        return Err("name holds `/`");
    }
    if name.contains(&0) {
        return Err("name holds NUL");
    }
    if name.len() > MAX_NAME {
        return Err("name too long");
    }
    Ok(())
}

/// Decodes an entry read from tree `node` under `name`, rejecting unsafe
/// names; `dir` is the directory's mtime (see [`Entry::decode`]).
pub fn decode_entry(tree: &ObjectId, name: &[u8], value: &[u8], dir: Timestamp) -> Result<Entry> {
    if let Err(why) = check_name(name) {
        return Err(SyncError::UnsafeName {
            name: String::from_utf8_lossy(name).into_owned(),
            context: format!("tree {} ({why})", tree.short()),
        });
    }
    Entry::decode(value, dir).map_err(|e| {
        corrupt(
            ObjectType::Tree,
            tree,
            format!("entry {:?}: {e}", String::from_utf8_lossy(name)),
        )
    })
}

/// Reads all entries of a directory map, validated, in name order; `dir`
/// is the directory's mtime (the root's: zero, its entries' are absolute).
pub fn read_dir(
    src: &dyn ObjectSource,
    tree: &ObjectId,
    dir: Timestamp,
) -> Result<Vec<(Vec<u8>, Entry)>> {
    let mut out = Vec::new();
    for item in crate::pmap::MapIter::new(src, ObjectType::Tree, *tree) {
        let (k, v) = item?;
        let e = decode_entry(tree, &k, &v, dir)?;
        out.push((k, e));
    }
    Ok(out)
}

/// Looks a path (components separated by `/`) up from a root tree. An empty
/// path is the root itself, returned as a directory entry.
pub fn lookup(src: &dyn ObjectSource, root: &ObjectId, path: &[u8]) -> Result<Option<Entry>> {
    let mut cur = Entry {
        mode: 0o755,
        mtime: Timestamp::default(),
        kind: EntryKind::Dir { tree: *root },
    };
    for comp in path.split(|&c| c == b'/').filter(|c| !c.is_empty()) {
        let EntryKind::Dir { tree } = cur.kind else {
            return Ok(None);
        };
        match crate::pmap::get(src, ObjectType::Tree, &tree, comp)? {
            Some(v) => cur = decode_entry(&tree, comp, &v, cur.mtime)?,
            None => return Ok(None),
        }
    }
    Ok(Some(cur))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_time() -> impl Strategy<Value = Timestamp> {
        prop_oneof![
            (any::<i64>(), 0u32..1_000_000_000),
            (-10i64..10, 0u32..1_000_000_000),
            (1_500_000_000i64..1_800_000_000, 0u32..1_000_000_000),
        ]
        .prop_map(|(secs, nanos)| Timestamp { secs, nanos })
    }

    fn arb_entry() -> impl Strategy<Value = Entry> {
        let ts =
            (any::<i64>(), 0u32..1_000_000_000).prop_map(|(secs, nanos)| Timestamp { secs, nanos });
        let kind = prop_oneof![
            (1u64..1_000_000)
                .prop_flat_map(|n| (Just(n), any::<[u8; 32]>()))
                .prop_map(|(n, id)| EntryKind::File {
                    size: n,
                    content: Content::Inline(vec![ChunkRef {
                        id: ObjectId(id),
                        len: n
                    }]),
                }),
            Just(EntryKind::File {
                size: 0,
                content: Content::Inline(vec![])
            }),
            (any::<u8>(), any::<[u8; 32]>(), 1u64..u64::MAX).prop_map(|(l, id, size)| {
                EntryKind::File {
                    size,
                    content: Content::Indirect {
                        level: l % 8,
                        root: ObjectId(id),
                    },
                }
            }),
            any::<[u8; 32]>().prop_map(|id| EntryKind::Dir { tree: ObjectId(id) }),
            proptest::collection::vec(1u8..=255, 1..100)
                .prop_map(|target| EntryKind::Symlink { target }),
        ];
        (0u32..=0o7777, ts, kind).prop_map(|(mode, mtime, kind)| Entry { mode, mtime, kind })
    }

    proptest! {
        #[test]
        fn entry_round_trips(e in arb_entry(), dir in arb_time()) {
            let b = e.encode();
            prop_assert_eq!(b[0] & KIND_RELATIVE, 0);
            prop_assert_eq!(&Entry::decode(&b, dir).unwrap(), &e);
            // Relative to its directory's time: the same entry back.
            let r = e.encode_in(Some(dir));
            prop_assert_eq!(Entry::decode(&r, dir).unwrap(), e);
        }

        #[test]
        fn entry_decode_is_canonical(
            b in proptest::collection::vec(any::<u8>(), 0..120),
            dir in arb_time(),
        ) {
            if let Ok(e) = Entry::decode(&b, dir) {
                let again = if b[0] & KIND_RELATIVE != 0 {
                    e.encode_in(Some(dir))
                } else {
                    e.encode()
                };
                prop_assert_eq!(again, b);
            }
        }

        /// Entries stamped with their directory's time encode the same
        /// whatever that time is.
        #[test]
        fn a_shared_time_encodes_alike(e in arb_entry(), t1 in arb_time(), t2 in arb_time()) {
            let at = |t: Timestamp| Entry { mtime: t, ..e.clone() }.encode_in(Some(t));
            prop_assert_eq!(at(t1), at(t2));
        }

        #[test]
        fn times_subtract_and_add_back(t in arb_time(), dir in arb_time()) {
            match t.since(dir) {
                Some(rel) => {
                    prop_assert!(rel.nanos < 1_000_000_000);
                    prop_assert_eq!(rel.after(dir), Some(t));
                }
                // Only when the difference leaves 64-bit seconds.
                None => prop_assert!((i128::from(t.secs) - i128::from(dir.secs)).abs() > i128::from(i64::MAX) / 2),
            }
        }
    }

    #[test]
    fn hostile_names_are_rejected() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"/", b"a\0b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for good in [
            &b"a"[..],
            b"...",
            b"a b",
            b"line\nbreak",
            b"\xff\xfe",
            b"back\\slash",
        ] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
    }
}
