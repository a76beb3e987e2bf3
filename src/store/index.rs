//! Per-pack index files (`packs/<name>.idx`).
//!
//! ```text
//! magic "SPSYNCIX" | version=1 | pack name [32] | count (u32 LE)
//! count × (id [32] | tag | flags | offset (u64 LE) | clen (u32 LE) | ulen (u32 LE)), sorted by id
//! BLAKE3 of every preceding byte [32]
//! ```
//! An index says where each object of one pack starts; it can always be
//! rebuilt by reading the pack (`fsck --rebuild-index`).

use crate::error::{Result, SyncError};
use crate::id::{ObjectId, ObjectType};
use crate::object::MAX_OBJECT_SIZE;
use std::path::Path;

/// The largest payload a record may store (the pack reader's limit: an
/// incompressible object plus zstd's framing).
pub const MAX_STORED_SIZE: usize = MAX_OBJECT_SIZE + 1024;

pub const IDX_MAGIC: &[u8; 8] = b"SPSYNCIX";
pub const IDX_VERSION: u8 = 1;
pub const IDX_ENTRY_LEN: usize = 50;
const IDX_HEAD_LEN: usize = 8 + 1 + 32 + 4;

/// Where one object lives inside its pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdxEntry {
    pub id: ObjectId,
    pub tag: ObjectType,
    pub flags: u8,
    /// Offset of the record (its header) in the pack.
    pub offset: u64,
    pub clen: u32,
    pub ulen: u32,
}

impl IdxEntry {
    /// The entry a record read from a pack gets (a block member's names
    /// its block and its position there).
    pub fn of(rec: &crate::pack::Record) -> IdxEntry {
        let (flags, clen) = match rec.member {
            Some(i) => (crate::pack::FLAG_BLOCK, i),
            None => (rec.flags, rec.payload.len() as u32),
        };
        IdxEntry {
            id: rec.id,
            tag: rec.tag,
            flags,
            offset: rec.offset,
            clen,
            ulen: rec.ulen as u32,
        }
    }
}

pub fn encode(pack: &ObjectId, entries: &mut [IdxEntry]) -> Vec<u8> {
    // By id (unique in a pack: `decode` refuses a repeated one). Unstable,
    // comparing the ids' first 8 bytes as a number first: a pack's index is
    // sorted while its snapshot waits (a first snapshot of a million rows
    // sorts some 70,000 entries).
    entries.sort_unstable_by(|a, b| {
        let head = |e: &IdxEntry| {
            let mut h = [0u8; 8];
            h.copy_from_slice(&e.id.0[..8]);
            u64::from_be_bytes(h)
        };
        head(a).cmp(&head(b)).then_with(|| a.id.cmp(&b.id))
    });
    let mut out = Vec::with_capacity(IDX_HEAD_LEN + entries.len() * IDX_ENTRY_LEN + 32);
    out.extend_from_slice(IDX_MAGIC);
    out.push(IDX_VERSION);
    out.extend_from_slice(&pack.0);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries.iter() {
        out.extend_from_slice(&e.id.0);
        out.push(e.tag as u8);
        out.push(e.flags);
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.clen.to_le_bytes());
        out.extend_from_slice(&e.ulen.to_le_bytes());
    }
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

/// Decodes and checks an index file's bytes; `path` is for errors.
pub fn decode(b: &[u8], path: &Path) -> Result<(ObjectId, Vec<IdxEntry>)> {
    let mut out = Vec::with_capacity(declared_count(b));
    let pack = decode_with(b, path, None, |e| out.push(e))?;
    Ok((pack, out))
}

/// The number of entries an index says it has (0 if it is too short to
/// say), never more than its bytes can hold: a damaged count must not size
/// an allocation.
pub fn declared_count(b: &[u8]) -> usize {
    let room = b.len().saturating_sub(IDX_HEAD_LEN + 32) / IDX_ENTRY_LEN;
    match b.get(41..45) {
        Some(c) => (u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize).min(room),
        None => 0,
    }
}

/// Checks an index (checksum, header, sorted entries, known types, and
/// that it names `pack` when given), then calls `entry` for each entry,
/// without collecting them. Nothing is passed unless the whole index is good.
pub fn decode_with(
    b: &[u8],
    path: &Path,
    expect: Option<&ObjectId>,
    mut entry: impl FnMut(IdxEntry),
) -> Result<ObjectId> {
    let bad = |reason: String| SyncError::corrupt_file("index", path, reason);
    if b.len() < IDX_HEAD_LEN + 32 {
        return Err(bad("truncated".into()));
    }
    let (body, sum) = b.split_at(b.len() - 32);
    if blake3::hash(body).as_bytes() != sum {
        return Err(bad("checksum mismatch".into()));
    }
    if &body[..8] != IDX_MAGIC {
        return Err(bad("bad magic".into()));
    }
    if body[8] != IDX_VERSION {
        return Err(bad(format!("unsupported version {}", body[8])));
    }
    let mut pack = [0u8; 32];
    pack.copy_from_slice(&body[9..41]);
    if expect.is_some_and(|e| e.0 != pack) {
        return Err(bad("names another pack".into()));
    }
    let count = u32::from_le_bytes([body[41], body[42], body[43], body[44]]) as usize;
    let rest = &body[IDX_HEAD_LEN..];
    if rest.len() != count.saturating_mul(IDX_ENTRY_LEN) {
        return Err(bad(format!(
            "{count} entries declared, {} bytes of entries",
            rest.len()
        )));
    }
    let le4 = |s: &[u8]| u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    // First check every entry, then hand them out.
    let mut prev: Option<&[u8]> = None;
    for e in rest.chunks_exact(IDX_ENTRY_LEN) {
        if prev.is_some_and(|p| p >= &e[..32]) {
            return Err(bad("entries not sorted and unique".into()));
        }
        prev = Some(&e[..32]);
        if ObjectType::from_u8(e[32]).is_none() {
            return Err(bad(format!("unknown object type {}", e[32])));
        }
        // Sizes decide allocations when the object is read: never more
        // than a pack record may hold.
        let (clen, ulen) = (le4(&e[42..46]) as usize, le4(&e[46..50]) as usize);
        if ulen > MAX_OBJECT_SIZE || clen > MAX_STORED_SIZE {
            return Err(bad(format!(
                "an entry of {ulen}/{clen} bytes exceeds the object size limit"
            )));
        }
    }
    let le8 = |s: &[u8]| {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_le_bytes(a)
    };
    for e in rest.chunks_exact(IDX_ENTRY_LEN) {
        let mut id = [0u8; 32];
        id.copy_from_slice(&e[..32]);
        let Some(tag) = ObjectType::from_u8(e[32]) else {
            continue;
        };
        entry(IdxEntry {
            id: ObjectId(id),
            tag,
            flags: e[33],
            offset: le8(&e[34..42]),
            clen: le4(&e[42..46]),
            ulen: le4(&e[46..50]),
        });
    }
    Ok(ObjectId(pack))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_flip_detected() {
        let mut entries: Vec<IdxEntry> = (0..5u8)
            .map(|i| IdxEntry {
                id: ObjectId::compute(ObjectType::Chunk, &[i]),
                tag: ObjectType::Chunk,
                flags: 1,
                offset: 9 + u64::from(i) * 100,
                clen: 50,
                ulen: 70,
            })
            .collect();
        let pack = ObjectId::compute(ObjectType::Chunk, b"pack");
        let b = encode(&pack, &mut entries);
        let (p, got) = decode(&b, Path::new("x.idx")).unwrap();
        assert_eq!(p, pack);
        assert_eq!(got, entries);
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x80;
            assert!(decode(&c, Path::new("x.idx")).is_err(), "flip at {i}");
        }
        // The count as written; a damaged count (here: 4 billion) is capped
        // by what the bytes can hold, since it sizes the id map.
        assert_eq!(declared_count(&b), 5);
        let mut c = b.clone();
        c[41..45].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(declared_count(&c), 5);
        assert_eq!(declared_count(&b[..40]), 0);
    }

    /// Entries come out sorted by id, whatever the pack's order, and
    /// decode as they were.
    #[test]
    fn entries_are_sorted_by_id() {
        let mut in_pack: Vec<IdxEntry> = (0..3000u16)
            .map(|i| IdxEntry {
                id: ObjectId::compute(ObjectType::Chunk, &i.to_le_bytes()),
                tag: ObjectType::Chunk,
                flags: 0,
                offset: 9 + u64::from(i / 4) * 100,
                clen: u32::from(i % 4),
                ulen: 70,
            })
            .collect();
        let mut want = in_pack.clone();
        want.sort_by_key(|e| e.id);
        let pack = ObjectId::compute(ObjectType::Chunk, b"pack");
        let b = encode(&pack, &mut in_pack);
        assert_eq!(in_pack, want);
        let (_, got) = decode(&b, Path::new("x.idx")).unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn hostile_sizes_are_refused() {
        for (clen, ulen) in [(u32::MAX, 10), (10, u32::MAX), ((17 << 20) as u32, 10)] {
            let mut entries = vec![IdxEntry {
                id: ObjectId::compute(ObjectType::Chunk, b"x"),
                tag: ObjectType::Chunk,
                flags: 1,
                offset: u64::MAX - 3,
                clen,
                ulen,
            }];
            let pack = ObjectId::compute(ObjectType::Chunk, b"pack");
            let b = encode(&pack, &mut entries);
            let e = decode(&b, Path::new("x.idx")).unwrap_err();
            assert!(
                e.to_string().contains("exceeds the object size limit"),
                "{e}"
            );
        }
    }
}
