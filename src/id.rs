//! Object ids: the BLAKE3 hash of an object's type tag and canonical bytes.

use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

/// The kind of a stored object. The tag is hashed together with the bytes,
/// so the same bytes stored as two types get two different ids and a chunk
/// can never be read back as a tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum ObjectType {
    /// A piece of a file's (or a large value's) bytes.
    Chunk = 1,
    /// A node of a long chunk list.
    List = 2,
    /// A node of a directory map (name → entry).
    Tree = 3,
    /// A snapshot: parents, time, root tree, tables.
    Snapshot = 4,
    /// A table: schema and the root of its row map (reserved for database rows).
    Table = 5,
    /// A node of a table's row map (reserved for database rows).
    Rows = 6,
}

impl ObjectType {
    pub fn from_u8(tag: u8) -> Option<Self> {
        Some(match tag {
            1 => Self::Chunk,
            2 => Self::List,
            3 => Self::Tree,
            4 => Self::Snapshot,
            5 => Self::Table,
            6 => Self::Rows,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Chunk => "chunk",
            Self::List => "list",
            Self::Tree => "tree",
            Self::Snapshot => "snapshot",
            Self::Table => "table",
            Self::Rows => "rows",
        }
    }
}

impl fmt::Display for ObjectType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A 32-byte BLAKE3 object id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ObjectId(pub [u8; 32]);

impl ObjectId {
    pub const LEN: usize = 32;

    /// `BLAKE3(tag || bytes)`.
    pub fn compute(tag: ObjectType, bytes: &[u8]) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(&[tag as u8]);
        h.update(bytes);
        ObjectId(*h.finalize().as_bytes())
    }

    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Some(ObjectId(b.try_into().ok()?))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// The first 8 bytes as 16 hex digits, for humans.
    pub fn short(&self) -> String {
        hex(&self.0[..8])
    }

    /// Parses exactly 64 lowercase or uppercase hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in s.as_bytes().chunks(2).enumerate() {
            out[i] = (hex_val(pair[0])? << 4) | hex_val(pair[1])?;
        }
        Some(ObjectId(out))
    }

    /// Whether the id's hex form starts with `prefix` (lowercase hex).
    pub fn has_hex_prefix(&self, prefix: &str) -> bool {
        let p = prefix.as_bytes();
        if p.len() > 64 {
            return false;
        }
        for (i, &c) in p.iter().enumerate() {
            let nib = if i % 2 == 0 {
                self.0[i / 2] >> 4
            } else {
                self.0[i / 2] & 0xf
            };
            match hex_val(c) {
                Some(v) if v == nib => {}
                _ => return false,
            }
        }
        true
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({})", self.short())
    }
}

impl serde::Serialize for ObjectId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

/// A hasher for maps keyed by ids: the ids are already uniformly random,
/// so the first eight bytes are a perfect hash.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // ObjectId hashes as its [u8; 32] array: a length prefix, then the bytes.
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(b);
        }
    }
    fn write_usize(&mut self, _: usize) {}
}

pub type IdMap<V> = std::collections::HashMap<ObjectId, V, BuildHasherDefault<IdHasher>>;
pub type IdSet = std::collections::HashSet<ObjectId, BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_prefix() {
        let id = ObjectId::compute(ObjectType::Chunk, b"hello");
        let h = id.to_hex();
        assert_eq!(h.len(), 64);
        assert_eq!(ObjectId::from_hex(&h), Some(id));
        assert!(id.has_hex_prefix(&h[..9]));
        assert!(!id.has_hex_prefix("zz"));
        assert_eq!(ObjectId::from_hex(&h[..63]), None);
    }

    #[test]
    fn tag_is_part_of_the_id() {
        assert_ne!(
            ObjectId::compute(ObjectType::Chunk, b"x"),
            ObjectId::compute(ObjectType::Tree, b"x")
        );
        // BLAKE3 of the single byte 0x01 followed by "x".
        let expect = blake3::hash(b"\x01x");
        assert_eq!(
            ObjectId::compute(ObjectType::Chunk, b"x").0,
            *expect.as_bytes()
        );
    }
}
