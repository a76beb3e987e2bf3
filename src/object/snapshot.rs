//! The snapshot object.
//!
//! Encoding: `version=1 | parent count (varint) | parents [32]… | time seconds
//! (zigzag) | time nanoseconds (varint) | host (string) | message (string) |
//! root flag (0 or 1) [| root tree id [32]] | files (varint) | bytes (varint) |
//! table count (varint) | (name (string) | table id [32])… | meta count
//! (varint) | (key (string) | value (string))…`. Table names and meta keys
//! are sorted and unique.

use std::collections::BTreeMap;

use crate::codec::{DecodeError, Reader, Writer};
use crate::id::{ObjectId, ObjectType};
use crate::object::tree::Timestamp;

pub const SNAPSHOT_VERSION: u8 = 1;
const MAX_STR: usize = 1 << 20;
const MAX_PARENTS: u64 = 64;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    pub parents: Vec<ObjectId>,
    pub time: Timestamp,
    pub host: String,
    pub message: String,
    pub root: Option<ObjectId>,
    /// Files (regular files and symlinks) under the root.
    pub files: u64,
    /// Bytes of those files.
    pub bytes: u64,
    pub tables: BTreeMap<String, ObjectId>,
    pub meta: BTreeMap<String, String>,
}

impl Snapshot {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(128);
        w.u8(SNAPSHOT_VERSION).varint(self.parents.len() as u64);
        for p in &self.parents {
            w.id(p);
        }
        w.zigzag(self.time.secs)
            .varint(u64::from(self.time.nanos))
            .bytes(self.host.as_bytes())
            .bytes(self.message.as_bytes());
        match &self.root {
            Some(r) => {
                w.u8(1).id(r);
            }
            None => {
                w.u8(0);
            }
        }
        w.varint(self.files).varint(self.bytes);
        w.varint(self.tables.len() as u64);
        for (k, v) in &self.tables {
            w.bytes(k.as_bytes()).id(v);
        }
        w.varint(self.meta.len() as u64);
        for (k, v) in &self.meta {
            w.bytes(k.as_bytes()).bytes(v.as_bytes());
        }
        w.into_vec()
    }

    pub fn decode(b: &[u8]) -> Result<Snapshot, DecodeError> {
        let mut r = Reader::new(b);
        let v = r.u8()?;
        if v != SNAPSHOT_VERSION {
            return r.err(format!("unknown snapshot version {v}"));
        }
        let np = r.varint_max(MAX_PARENTS, "parent count")?;
        let mut parents = Vec::with_capacity(np as usize);
        for _ in 0..np {
            parents.push(r.id()?);
        }
        let secs = r.zigzag()?;
        let nanos = r.varint_max(999_999_999, "nanoseconds")? as u32;
        let host = r.str(MAX_STR)?.to_string();
        let message = r.str(MAX_STR)?.to_string();
        let root = match r.u8()? {
            0 => None,
            1 => Some(r.id()?),
            f => return r.err(format!("bad root flag {f}")),
        };
        let files = r.varint()?;
        let bytes = r.varint()?;
        let nt = r.varint_max(b.len() as u64, "table count")?;
        let mut tables = BTreeMap::new();
        let mut prev: Option<String> = None;
        for _ in 0..nt {
            let k = r.str(MAX_STR)?.to_string();
            if prev.as_ref().is_some_and(|p| p >= &k) {
                return r.err("table names not sorted and unique");
            }
            prev = Some(k.clone());
            tables.insert(k, r.id()?);
        }
        let nm = r.varint_max(b.len() as u64, "meta count")?;
        let mut meta = BTreeMap::new();
        let mut prev: Option<String> = None;
        for _ in 0..nm {
            let k = r.str(MAX_STR)?.to_string();
            if prev.as_ref().is_some_and(|p| p >= &k) {
                return r.err("meta keys not sorted and unique");
            }
            prev = Some(k.clone());
            let v = r.str(MAX_STR)?.to_string();
            meta.insert(k, v);
        }
        r.finish()?;
        Ok(Snapshot {
            parents,
            time: Timestamp { secs, nanos },
            host,
            message,
            root,
            files,
            bytes,
            tables,
            meta,
        })
    }

    pub fn id(&self) -> ObjectId {
        ObjectId::compute(ObjectType::Snapshot, &self.encode())
    }

    /// Objects the snapshot references, with their kinds.
    pub fn refs(&self) -> Vec<(ObjectType, ObjectId)> {
        let mut v: Vec<(ObjectType, ObjectId)> = self
            .parents
            .iter()
            .map(|p| (ObjectType::Snapshot, *p))
            .collect();
        if let Some(r) = self.root {
            v.push((ObjectType::Tree, r));
        }
        v.extend(self.tables.values().map(|t| (ObjectType::Table, *t)));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn snapshot_round_trips(
            parents in proptest::collection::vec(any::<[u8; 32]>(), 0..3),
            secs: i64, nanos in 0u32..1_000_000_000,
            host in ".{0,20}", message in ".{0,80}",
            root in proptest::option::of(any::<[u8; 32]>()),
            files: u64, bytes: u64,
            meta in proptest::collection::btree_map(".{0,8}", ".{0,8}", 0..4),
        ) {
            let s = Snapshot {
                parents: parents.into_iter().map(ObjectId).collect(),
                time: Timestamp { secs, nanos },
                host, message,
                root: root.map(ObjectId),
                files, bytes,
                tables: BTreeMap::new(),
                meta,
            };
            let b = s.encode();
            prop_assert_eq!(Snapshot::decode(&b).unwrap(), s);
        }

        #[test]
        fn decode_is_canonical(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(s) = Snapshot::decode(&b) {
                prop_assert_eq!(s.encode(), b);
            }
        }
    }
}
