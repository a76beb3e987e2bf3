//! The snapshot object.
//!
//! Encoding: `version=1 | parent count (varint) | parents [32]… | time seconds
//! (zigzag) | time nanoseconds (varint) | host (string) | message (string) |
//! root flag (0 or 1) [| root tree id [32]] | files (varint) | bytes (varint) |
//! table count (varint) | (name (string) | table id [32])… | meta count
//! (varint) | (key (string) | value (string))…`. Table names and meta keys
//! are sorted and unique; every string is at most 1 MiB, parents at most 64.
//!
//! Version 2 appends what the snapshot was taken from and what it had to
//! leave out: `source path count (varint) | paths (string)… | exclude count
//! (varint) | patterns (string)… | database count (varint) | (location
//! (string) | table count (varint) | table names (string)…)… | skipped count
//! (varint) | (path (string) | error (string))…`. A snapshot without
//! recorded sources is written as version 1, so old ids never change.

use std::collections::BTreeMap;

use crate::codec::{DecodeError, Reader, Writer};
use crate::id::{ObjectId, ObjectType};
use crate::object::tree::Timestamp;

/// The version written when sources are recorded (version 1 otherwise).
pub const SNAPSHOT_VERSION: u8 = 2;
const MAX_STR: usize = 1 << 20;
const MAX_PARENTS: u64 = 64;

/// What a snapshot was taken from, so that `restore` and `diff` without a
/// target know where things go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sources {
    /// Each root path, relative to the working-tree root (`""` is the root
    /// itself), or absolute when it lies outside. One path: its contents are
    /// the snapshot's root tree; several: each is the root's entry named
    /// after its last component.
    pub paths: Vec<String>,
    /// The exclude patterns in force (gitignore syntax, relative to each root).
    pub excludes: Vec<String>,
    /// Each database: where it was (a path relative to the working-tree root,
    /// absolute, or a URL without its password) and the tables it gave.
    pub dbs: Vec<DbRecord>,
}

/// A database a snapshot took tables from.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct DbRecord {
    /// Where it was (relative to the working-tree root, or absolute, or a URL without its password).
    pub location: String,
    /// Names of the snapshot's tables that came from this database.
    pub tables: Vec<String>,
}

/// A path left out of a partial snapshot, and why.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct Skipped {
    /// The path, relative to the working-tree root.
    pub path: String,
    /// The error that left it out.
    pub error: String,
}

/// A snapshot: a root tree, tables, parents, and when, where and why it was taken.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// The snapshots it follows (the ref's previous target).
    pub parents: Vec<ObjectId>,
    /// When it was taken.
    pub time: Timestamp,
    /// The host it was taken on.
    pub host: String,
    /// Its message.
    pub message: String,
    /// The root tree. `None` (root flag 0) is written only by records
    /// that hold no files (local sync, cache restore and deploy records);
    /// readers treat it exactly as the empty map. `sp-sync snapshot`
    /// always writes a tree, the empty map for an empty directory
    /// (`store-format.md` §3.5).
    pub root: Option<ObjectId>,
    /// Files (regular files and symlinks) under the root.
    pub files: u64,
    /// Total size of the regular files (symlinks count 0).
    pub bytes: u64,
    /// Table objects by name.
    pub tables: BTreeMap<String, ObjectId>,
    /// Free-form metadata (cache entries and deploy records keep theirs here).
    pub meta: BTreeMap<String, String>,
    /// Recorded sources (version 2); `None` for version-1 snapshots.
    pub sources: Option<Sources>,
    /// Paths that could not be read (version 2 only).
    pub skipped: Vec<Skipped>,
}

fn write_strs(w: &mut Writer, v: &[String]) {
    w.varint(v.len() as u64);
    for s in v {
        w.bytes(s.as_bytes());
    }
}

fn read_strs(r: &mut Reader<'_>, limit: usize, what: &str) -> Result<Vec<String>, DecodeError> {
    let n = r.varint_max(limit as u64, what)?;
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(r.str(MAX_STR)?.to_string());
    }
    Ok(v)
}

impl Snapshot {
    /// The canonical bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(128);
        let version = if self.sources.is_some() { 2 } else { 1 };
        w.u8(version).varint(self.parents.len() as u64);
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
        if let Some(src) = &self.sources {
            write_strs(&mut w, &src.paths);
            write_strs(&mut w, &src.excludes);
            w.varint(src.dbs.len() as u64);
            for d in &src.dbs {
                w.bytes(d.location.as_bytes());
                write_strs(&mut w, &d.tables);
            }
            w.varint(self.skipped.len() as u64);
            for s in &self.skipped {
                w.bytes(s.path.as_bytes()).bytes(s.error.as_bytes());
            }
        }
        w.into_vec()
    }

    /// Reads a snapshot from its canonical bytes (strictly).
    pub fn decode(b: &[u8]) -> Result<Snapshot, DecodeError> {
        let mut r = Reader::new(b);
        let v = r.u8()?;
        if v != 1 && v != SNAPSHOT_VERSION {
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
        let limit = b.len();
        let (sources, skipped) = if v == 1 {
            (None, Vec::new())
        } else {
            let paths = read_strs(&mut r, limit, "source path count")?;
            let excludes = read_strs(&mut r, limit, "exclude count")?;
            let nd = r.varint_max(limit as u64, "database count")?;
            let mut dbs = Vec::new();
            for _ in 0..nd {
                let location = r.str(MAX_STR)?.to_string();
                let tables = read_strs(&mut r, limit, "table count")?;
                dbs.push(DbRecord { location, tables });
            }
            let ns = r.varint_max(limit as u64, "skipped count")?;
            let mut skipped = Vec::new();
            for _ in 0..ns {
                let path = r.str(MAX_STR)?.to_string();
                let error = r.str(MAX_STR)?.to_string();
                skipped.push(Skipped { path, error });
            }
            (
                Some(Sources {
                    paths,
                    excludes,
                    dbs,
                }),
                skipped,
            )
        };
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
            sources,
            skipped,
        })
    }

    /// Its id: the hash of its canonical bytes.
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
            sources in proptest::option::of((
                proptest::collection::vec(".{0,8}", 0..3),
                proptest::collection::vec(".{0,8}", 0..3),
                proptest::collection::vec((".{0,8}", proptest::collection::vec(".{0,8}", 0..3)), 0..3),
            )),
            skipped in proptest::collection::vec((".{0,8}", ".{0,8}"), 0..3),
        ) {
            let skipped: Vec<Skipped> = if sources.is_some() {
                skipped.into_iter().map(|(path, error)| Skipped { path, error }).collect()
            } else {
                Vec::new()
            };
            let sources = sources.map(|(paths, excludes, dbs)| Sources {
                paths,
                excludes,
                dbs: dbs.into_iter().map(|(location, tables)| DbRecord { location, tables }).collect(),
            });
            let s = Snapshot {
                parents: parents.into_iter().map(ObjectId).collect(),
                time: Timestamp { secs, nanos },
                host, message,
                root: root.map(ObjectId),
                files, bytes,
                tables: BTreeMap::new(),
                meta,
                sources,
                skipped,
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
