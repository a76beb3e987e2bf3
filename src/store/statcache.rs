//! The stat cache: (path, device, inode, mode, size, mtime, ctime) → file
//! content, so an unchanged file is not read again (git's index, restic's
//! parent-snapshot check). One cache file per set of snapshot sources.
//!
//! ```text
//! magic "SPSYNCSC" | version=1 | count (varint)
//! count × (path (bytes) | dev | ino | mode | size (varints) | mtime s (zigzag) | mtime ns
//!          | ctime s (zigzag) | ctime ns | content (as in a tree entry))
//! BLAKE3 of every preceding byte [32]
//! ```
//! A cache is only a hint: any damage and it is ignored; an entry is used
//! only when every field matches and the objects it names are in the store.
//! Files modified within a second of the snapshot's start are not cached
//! (racy timestamps).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::codec::{Reader, Writer};
use crate::error::Result;
use crate::object::tree::{Content, Timestamp};

const MAGIC: &[u8; 8] = b"SPSYNCSC";
const VERSION: u8 = 1;

/// What must match for a cached content to be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatKey {
    pub dev: u64,
    pub ino: u64,
    pub mode: u32,
    pub size: u64,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
}

impl StatKey {
    pub fn from_metadata(m: &std::fs::Metadata) -> StatKey {
        use std::os::unix::fs::MetadataExt;
        StatKey {
            dev: m.dev(),
            ino: m.ino(),
            mode: m.mode(),
            size: m.size(),
            mtime: Timestamp {
                secs: m.mtime(),
                nanos: m.mtime_nsec().clamp(0, 999_999_999) as u32,
            },
            ctime: Timestamp {
                secs: m.ctime(),
                nanos: m.ctime_nsec().clamp(0, 999_999_999) as u32,
            },
        }
    }
}

#[derive(Default)]
pub struct StatCache {
    map: HashMap<Vec<u8>, (StatKey, Content)>,
}

impl StatCache {
    /// The cache file for a set of sources (by their absolute paths).
    pub fn path_for(cache_dir: &Path, sources: &[PathBuf]) -> PathBuf {
        let mut h = blake3::Hasher::new();
        for s in sources {
            use std::os::unix::ffi::OsStrExt;
            h.update(s.as_os_str().as_bytes());
            h.update(&[0]);
        }
        let name = crate::id::hex(&h.finalize().as_bytes()[..16]);
        cache_dir.join("stat").join(name)
    }

    /// Loads a cache; a missing or damaged file gives an empty cache.
    pub fn load(path: &Path) -> StatCache {
        match std::fs::read(path) {
            Ok(b) => match decode(&b) {
                Some(c) => c,
                None => {
                    tracing::warn!("ignoring damaged stat cache {}", path.display());
                    StatCache::default()
                }
            },
            Err(_) => StatCache::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get(&self, path: &[u8], key: &StatKey) -> Option<&Content> {
        match self.map.get(path) {
            Some((k, c)) if k == key => Some(c),
            _ => None,
        }
    }

    /// Writes entries (any order) atomically.
    pub fn save(path: &Path, mut entries: Vec<(Vec<u8>, StatKey, Content)>) -> Result<()> {
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.dedup_by(|a, b| a.0 == b.0);
        let mut w = Writer::with_capacity(entries.len() * 96 + 64);
        w.raw(MAGIC).u8(VERSION).varint(entries.len() as u64);
        for (p, k, c) in &entries {
            w.bytes(p)
                .varint(k.dev)
                .varint(k.ino)
                .varint(u64::from(k.mode))
                .varint(k.size)
                .zigzag(k.mtime.secs)
                .varint(u64::from(k.mtime.nanos))
                .zigzag(k.ctime.secs)
                .varint(u64::from(k.ctime.nanos));
            c.encode(&mut w);
        }
        let sum = blake3::hash(&w.buf);
        w.raw(sum.as_bytes());
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)
            .map_err(|e| crate::error::SyncError::io("creating", dir, e))?;
        // A cache: replaced atomically, but not fsynced (its checksum
        // catches a torn write, which only costs a re-read).
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            std::process::id(),
            crate::store::unique()
        ));
        std::fs::write(&tmp, &w.buf)
            .map_err(|e| crate::error::SyncError::io("writing", &tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            crate::error::SyncError::io("renaming into", path, e)
        })
    }
}

fn decode(b: &[u8]) -> Option<StatCache> {
    if b.len() < 32 {
        return None;
    }
    let (body, sum) = b.split_at(b.len() - 32);
    if blake3::hash(body).as_bytes() != sum {
        return None;
    }
    let mut r = Reader::new(body);
    if r.take(8).ok()? != MAGIC || r.u8().ok()? != VERSION {
        return None;
    }
    let n = r.varint_max(body.len() as u64, "count").ok()?;
    let mut map = HashMap::with_capacity(n as usize);
    for _ in 0..n {
        let p = r.bytes(1 << 16).ok()?.to_vec();
        let dev = r.varint().ok()?;
        let ino = r.varint().ok()?;
        let mode = u32::try_from(r.varint().ok()?).ok()?;
        let size = r.varint().ok()?;
        let ms = r.zigzag().ok()?;
        let mn = r.varint_max(999_999_999, "ns").ok()? as u32;
        let cs = r.zigzag().ok()?;
        let cn = r.varint_max(999_999_999, "ns").ok()? as u32;
        let content = Content::decode(&mut r, size).ok()?;
        let key = StatKey {
            dev,
            ino,
            mode,
            size,
            mtime: Timestamp {
                secs: ms,
                nanos: mn,
            },
            ctime: Timestamp {
                secs: cs,
                nanos: cn,
            },
        };
        map.insert(p, (key, content));
    }
    r.finish().ok()?;
    Some(StatCache { map })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{ObjectId, ObjectType};
    use crate::object::list::ChunkRef;

    #[test]
    fn save_load_and_damage_ignored() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c");
        let key = StatKey {
            dev: 1,
            ino: 2,
            mode: 0o100644,
            size: 5,
            mtime: Timestamp {
                secs: 10,
                nanos: 20,
            },
            ctime: Timestamp {
                secs: 30,
                nanos: 40,
            },
        };
        let content = Content::Inline(vec![ChunkRef {
            id: ObjectId::compute(ObjectType::Chunk, b"hello"),
            len: 5,
        }]);
        StatCache::save(&p, vec![(b"a/b".to_vec(), key, content.clone())]).unwrap();
        let c = StatCache::load(&p);
        assert_eq!(c.get(b"a/b", &key), Some(&content));
        let mut other = key;
        other.ctime.nanos += 1;
        assert_eq!(c.get(b"a/b", &other), None);
        let mut b = std::fs::read(&p).unwrap();
        b[12] ^= 1;
        std::fs::write(&p, b).unwrap();
        assert!(StatCache::load(&p).is_empty());
    }
}
