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
    /// A trained zstd dictionary that compresses small objects of one kind
    /// in this store's packs (store format 2; see `crate::dict`).
    Dict = 7,
}

impl ObjectType {
    /// Parses a type tag.
    pub fn from_u8(tag: u8) -> Option<Self> {
        Some(match tag {
            1 => Self::Chunk,
            2 => Self::List,
            3 => Self::Tree,
            4 => Self::Snapshot,
            5 => Self::Table,
            6 => Self::Rows,
            7 => Self::Dict,
            _ => return None,
        })
    }

    /// The type's name, as errors and `--json` show it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Chunk => "chunk",
            Self::List => "list",
            Self::Tree => "tree",
            Self::Snapshot => "snapshot",
            Self::Table => "table",
            Self::Rows => "rows",
            Self::Dict => "dictionary",
        }
    }
}

impl fmt::Display for ObjectType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Objects up to this size are hashed from [`HASH_INPUT`].
const SMALL_OBJECT: usize = 64 * 1024;

thread_local! {
    /// Where [`ObjectId::compute`] puts a small object after its tag.
    static HASH_INPUT: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A 32-byte BLAKE3 object id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ObjectId(pub [u8; 32]);

impl ObjectId {
    /// Bytes in an id.
    pub const LEN: usize = 32;

    /// `BLAKE3(tag || bytes)`.
    pub fn compute(tag: ObjectType, bytes: &[u8]) -> Self {
        // A small object (a tree or row-map node) is hashed in one call
        // from this thread's buffer, its tag before it: a fifth less time
        // than a hasher fed the tag and then the bytes (40,000 leaves of
        // 128-2,688 bytes: 35 against 43 ms), most of the ids a table's
        // snapshot makes.
        if bytes.len() <= SMALL_OBJECT {
            return HASH_INPUT.with(|b| {
                let mut b = b.borrow_mut();
                b.clear();
                b.push(tag as u8);
                b.extend_from_slice(bytes);
                ObjectId(*blake3::hash(&b).as_bytes())
            });
        }
        let mut h = blake3::Hasher::new();
        h.update(&[tag as u8]);
        h.update(bytes);
        ObjectId(*h.finalize().as_bytes())
    }

    /// An id from exactly 32 bytes.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Some(ObjectId(b.try_into().ok()?))
    }

    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The id in lowercase hex (64 characters).
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
    let mut s = Vec::with_capacity(bytes.len() * 2);
    hex_into(&mut s, bytes);
    // (Hex digits are ASCII: never the empty default.)
    String::from_utf8(s).unwrap_or_default()
}

/// [`hex`], appended to `out`.
pub fn hex_into(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[(b >> 4) as usize]);
        out.push(DIGITS[(b & 0xf) as usize]);
    }
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

/// A hasher for maps keyed by ids. Ids are BLAKE3 hashes, but a hostile
/// peer chooses which ids it sends: with an unkeyed fold it can grind ids
/// that all land in one bucket and make every insert quadratic (hash
/// flooding). So the first 16 bytes are mixed with a key drawn at random
/// once per process (a folded 64×64→128-bit multiply, as in foldhash and
/// ahash): without the key, nobody can tell which ids collide.
#[derive(Clone, Copy)]
pub struct IdHasher {
    h: u64,
    k: [u64; 2],
}

/// The per-process key of [`IdHasher`], from the standard library's random
/// hasher seeds (the OS's random source).
fn process_key() -> [u64; 2] {
    static KEY: std::sync::OnceLock<[u64; 2]> = std::sync::OnceLock::new();
    *KEY.get_or_init(|| {
        use std::hash::BuildHasher;
        let s = std::collections::hash_map::RandomState::new();
        let a = s.hash_one(0x5350_5359_4e43_u64);
        let b = s.hash_one(a ^ 0x9e37_79b9_7f4a_7c15);
        // Odd multipliers keep the mix a bijection of each word.
        [a | 1, b | 1]
    })
}

#[inline]
fn fold_mul(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

impl Default for IdHasher {
    fn default() -> Self {
        IdHasher {
            h: 0,
            k: process_key(),
        }
    }
}

impl IdHasher {
    /// A hasher with a given key (tests).
    pub fn with_key(k: [u64; 2]) -> Self {
        IdHasher { h: 0, k }
    }
}

impl Hasher for IdHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.h
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        // ObjectId hashes as its [u8; 32] array: a length prefix (ignored),
        // then the bytes. 16 uniformly random bytes are plenty for a bucket.
        let mut w = [0u8; 16];
        let n = bytes.len().min(16);
        w[..n].copy_from_slice(&bytes[..n]);
        let a = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        let b = u64::from_le_bytes([w[8], w[9], w[10], w[11], w[12], w[13], w[14], w[15]]);
        let x = fold_mul(a ^ self.k[0], b ^ self.k[1]);
        // Chain (for keys written in several pieces) and spread the high bits.
        self.h = fold_mul(x ^ self.h, self.k[0] ^ 0x9e37_79b9_7f4a_7c15);
    }
    #[inline]
    fn write_usize(&mut self, _: usize) {}
}

/// A hash map keyed by object ids (which are already hashes: not hashed again).
pub type IdMap<V> = std::collections::HashMap<ObjectId, V, BuildHasherDefault<IdHasher>>;
/// A hash set of object ids (not hashed again).
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
    fn an_id_is_blake3_of_the_tag_then_the_bytes_at_every_size() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for n in [
            0,
            1,
            63,
            64,
            1023,
            1024,
            1025,
            2048,
            2049,
            SMALL_OBJECT - 1,
            SMALL_OBJECT,
            SMALL_OBJECT + 1,
            200_000,
        ] {
            for tag in [ObjectType::Chunk, ObjectType::Rows] {
                let mut whole = vec![tag as u8];
                whole.extend_from_slice(&data[..n]);
                assert_eq!(
                    ObjectId::compute(tag, &data[..n]).0,
                    *blake3::hash(&whole).as_bytes(),
                    "{n} bytes"
                );
            }
        }
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

    /// The fold the hasher used before it had a key.
    fn unkeyed(id: &ObjectId) -> u64 {
        let mut h = 0u64;
        for c in id.0.chunks(8) {
            h = h.rotate_left(5) ^ u64::from_le_bytes(c.try_into().unwrap());
        }
        h
    }

    /// Ids an attacker can make: every one folds to 0 under the old,
    /// unkeyed hasher (three random words, the fourth solved for).
    fn flooding_ids(n: u64) -> Vec<ObjectId> {
        (0..n)
            .map(|i| {
                let r = blake3::hash(&i.to_le_bytes());
                let w: Vec<u64> = r.as_bytes()[..24]
                    .chunks(8)
                    .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                let h = ((w[0].rotate_left(5) ^ w[1]).rotate_left(5) ^ w[2]).rotate_left(5);
                let mut id = [0u8; 32];
                for (j, x) in w.iter().chain([h].iter()).enumerate() {
                    id[j * 8..j * 8 + 8].copy_from_slice(&x.to_le_bytes());
                }
                ObjectId(id)
            })
            .collect()
    }

    #[test]
    fn ids_that_collide_without_a_key_spread_with_one() {
        use std::hash::BuildHasher;
        let ids = flooding_ids(20_000);
        assert!(ids.iter().all(|id| unkeyed(id) == 0));
        let b = BuildHasherDefault::<IdHasher>::default();
        let hashes: std::collections::HashSet<u64> = ids.iter().map(|id| b.hash_one(id)).collect();
        assert!(hashes.len() > 19_990, "{} distinct hashes", hashes.len());
        // The low bits (the bucket) and the top 7 bits (hashbrown's tag) both spread.
        let buckets: std::collections::HashSet<u64> = hashes.iter().map(|h| h & 0xfff).collect();
        assert!(buckets.len() > 3500, "{} of 4096 buckets", buckets.len());
        let tags: std::collections::HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert_eq!(tags.len(), 128);
        // Another key, other hashes: the buckets depend on the secret.
        let mut h1 = IdHasher::with_key([3, 5]);
        let mut h2 = IdHasher::with_key([7, 11]);
        std::hash::Hash::hash(&ids[0], &mut h1);
        std::hash::Hash::hash(&ids[0], &mut h2);
        assert_ne!(h1.finish(), h2.finish());
        // And a set of them fills in linear time (printed, not asserted).
        let t = std::time::Instant::now();
        let set: IdSet = ids.iter().copied().collect();
        assert_eq!(set.len(), ids.len());
        eprintln!("20,000 flooding ids into an IdSet: {:?}", t.elapsed());
        let t = std::time::Instant::now();
        let random: IdSet = (0..200_000u64)
            .map(|i| ObjectId::compute(ObjectType::Chunk, &i.to_le_bytes()))
            .collect();
        let build = t.elapsed();
        let t = std::time::Instant::now();
        let hits = (0..200_000u64)
            .filter(|i| {
                random.contains(&ObjectId::compute(
                    ObjectType::Chunk,
                    &(i * 2).to_le_bytes(),
                ))
            })
            .count();
        eprintln!(
            "200,000 random ids: insert {build:?}, lookups (with hashing the keys) {:?}, {hits} hits",
            t.elapsed()
        );
    }
}
