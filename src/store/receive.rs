//! Receiving objects from elsewhere (a push, a pull, a bundle): every object
//! is decompressed and re-hashed against its id, and everything it
//! references must already be stored or have come earlier in the stream,
//! with the type the reference names (a snapshot's root must be a tree, not
//! a chunk of the same id-space), before it is written. What arrived is committed in pieces (packs), each
//! downward closed, so an interrupted transfer keeps what was complete and
//! the next one resends only the rest.

use serde::{Deserialize, Serialize};

use super::Store;
use crate::error::{Result, SyncError};
use crate::id::{IdMap, ObjectId, ObjectType};
use crate::object::ObjectSource;
use crate::object::references;
use crate::pack::{
    DeltaBase, FLAG_DELTA, StoredObject, delta_base, prepare, unpack, unpack_delta_prepared,
};
use crate::progress::Progress;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReceiveStats {
    /// Objects received (verified).
    pub objects: u64,
    /// Their bytes as transferred (compressed payloads).
    pub bytes: u64,
    /// Of those, objects that were new to the store.
    pub stored_objects: u64,
    pub stored_bytes: u64,
}

/// Delta work a transfer may cause: rebuilding deltas costs the receiver
/// time in proportion to what they expand to, not to what was sent, so
/// their output is bounded by this many bytes plus [`DELTA_RATIO`] bytes
/// per byte received.
pub const DELTA_FLOOR: u64 = 256 << 20;
/// See [`DELTA_FLOOR`].
pub const DELTA_RATIO: u64 = 64;
/// Prepared delta bases kept per transfer, in bytes of base.
const BASE_CACHE: usize = 48 << 20;

/// The bases of one transfer's deltas, each read, verified and prepared
/// once (most recently used last).
#[derive(Default)]
struct Bases {
    cached: Vec<(ObjectId, DeltaBase, usize)>,
}

impl Store {
    /// The type of an object received earlier in this stream or stored.
    fn type_of(&self, received: &IdMap<ObjectType>, id: &ObjectId) -> Option<ObjectType> {
        received
            .get(id)
            .copied()
            .or_else(|| self.location(id).map(|l| l.tag))
    }

    /// A delta's base: it must be stored (already verified when it was).
    fn get_for_delta<'a>(
        &self,
        bases: &'a mut Bases,
        tag: ObjectType,
        base: &ObjectId,
        refreshed: &mut bool,
    ) -> Result<&'a DeltaBase> {
        if let Some(i) = bases.cached.iter().position(|(id, _, _)| id == base) {
            let hit = bases.cached.remove(i);
            bases.cached.push(hit);
        } else {
            if !self.contains(base) && !*refreshed {
                self.refresh()?;
                *refreshed = true;
            }
            if !self.contains(base) {
                return Err(SyncError::Invalid(format!(
                    "a delta names base {base}, which is not stored"
                )));
            }
            let bytes = self.get(tag, base)?;
            let size = bytes.len();
            let prepared = DeltaBase::new(&bytes);
            drop(bytes);
            while !bases.cached.is_empty()
                && bases.cached.iter().map(|c| c.2).sum::<usize>() + size > BASE_CACHE
            {
                bases.cached.remove(0);
            }
            bases.cached.push((*base, prepared, size));
        }
        match bases.cached.last() {
            Some((_, b, _)) => Ok(b),
            None => Err(SyncError::Invalid("delta base cache".into())),
        }
    }

    /// Verifies and stores a stream of objects given children first,
    /// committing a pack every `commit_every` bytes. On an error the
    /// uncommitted part is dropped; committed parts stay (they are verified
    /// and complete).
    pub fn receive(
        &self,
        objects: &mut dyn Iterator<Item = Result<StoredObject>>,
        commit_every: u64,
        progress: &dyn Progress,
    ) -> Result<ReceiveStats> {
        let mut stats = ReceiveStats::default();
        let mut session = self.writer()?;
        let mut since_commit = 0u64;
        let mut refreshed = false;
        let mut bases = Bases::default();
        let mut received_bytes = 0u64;
        let mut expanded = 0u64;
        // The type of every object this call received (an id fixes its
        // type: the tag is hashed with the bytes).
        let mut received: IdMap<ObjectType> = IdMap::default();
        // Row-map nodes wait here to be stored in blocks (§6.1), in the
        // order they came (children first); any other object flushes them.
        let mut rows: Vec<(ObjectType, ObjectId, Vec<u8>)> = Vec::new();
        let flush = |session: &super::WriteSession<'_>,
                     rows: &mut Vec<(ObjectType, ObjectId, Vec<u8>)>,
                     stats: &mut ReceiveStats|
         -> Result<u64> {
            if rows.is_empty() {
                return Ok(0);
            }
            use std::sync::atomic::Ordering::Relaxed;
            let (o, b) = (
                session.stats.objects.load(Relaxed),
                session.stats.stored_bytes.load(Relaxed),
            );
            crate::object::ObjectSink::put_many(session, rows)?;
            rows.clear();
            let stored = session.stats.stored_bytes.load(Relaxed) - b;
            stats.stored_objects += session.stats.objects.load(Relaxed) - o;
            stats.stored_bytes += stored;
            Ok(stored)
        };
        let r = (|| -> Result<()> {
            for obj in &mut *objects {
                let mut obj = obj?;
                let n = obj.payload.len() as u64;
                received_bytes += n + crate::pack::record_header_len(u64::from(obj.ulen), n);
                let bytes = if obj.flags == FLAG_DELTA {
                    // A delta against an object we hold: rebuild, verify, store whole.
                    let base = delta_base(&obj.payload).ok_or_else(|| {
                        crate::object::corrupt(obj.tag, &obj.id, "bad delta record")
                    })?;
                    expanded += u64::from(obj.ulen);
                    let allowed =
                        DELTA_FLOOR.saturating_add(received_bytes.saturating_mul(DELTA_RATIO));
                    if expanded > allowed {
                        return Err(SyncError::Invalid(format!(
                            "the deltas of this transfer expand to more than {allowed} bytes \
                             ({DELTA_FLOOR} plus {DELTA_RATIO} per byte received); refused"
                        )));
                    }
                    let prepared =
                        self.get_for_delta(&mut bases, obj.tag, &base, &mut refreshed)?;
                    let bytes = unpack_delta_prepared(
                        obj.tag,
                        &obj.id,
                        u64::from(obj.ulen),
                        &obj.payload,
                        prepared,
                    )?;
                    obj = prepare(obj.tag, obj.id, &bytes, self.config().compression_level);
                    bytes
                } else {
                    unpack(
                        obj.tag,
                        &obj.id,
                        obj.flags,
                        u64::from(obj.ulen),
                        &obj.payload,
                    )?
                };
                for (want, r) in references(obj.tag, &obj.id, &bytes)? {
                    let mut have = self.type_of(&received, &r);
                    if have.is_none() && !refreshed {
                        // Another process may have stored it since we looked.
                        self.refresh()?;
                        refreshed = true;
                        have = self.type_of(&received, &r);
                    }
                    match have {
                        Some(t) if t == want => {}
                        Some(t) => {
                            return Err(SyncError::Invalid(format!(
                                "{} {} references {r} as a {want}, but that object is a {t}",
                                obj.tag, obj.id
                            )));
                        }
                        None => {
                            return Err(SyncError::Invalid(format!(
                                "{} {} arrived before what it references: missing {want} object {r}",
                                obj.tag, obj.id
                            )));
                        }
                    }
                }
                received.insert(obj.id, obj.tag);
                stats.objects += 1;
                stats.bytes += n;
                progress.add(1, n);
                if obj.tag == ObjectType::Rows && session.blocks_for(obj.tag) {
                    rows.push((obj.tag, obj.id, bytes));
                    if rows.len() >= 256 {
                        since_commit += flush(&session, &mut rows, &mut stats)?;
                    }
                } else {
                    since_commit += flush(&session, &mut rows, &mut stats)?;
                    // Stored with this store's dictionary, when it has one.
                    if !crate::object::ObjectSink::contains(&session, &obj.id) {
                        obj = session.restore_encoding(obj, &bytes)?;
                    }
                    let stored = obj.payload.len() as u64;
                    if session.put_stored(obj)? {
                        stats.stored_objects += 1;
                        stats.stored_bytes += stored;
                        since_commit += stored;
                    }
                }
                if since_commit >= commit_every {
                    flush(&session, &mut rows, &mut stats)?;
                    let done = std::mem::replace(&mut session, self.writer()?);
                    done.finish()?;
                    since_commit = 0;
                    // Committed objects are in the store's index now.
                    received.clear();
                }
            }
            flush(&session, &mut rows, &mut stats)?;
            Ok(())
        })();
        match r {
            Ok(()) => {
                session.finish()?;
                Ok(stats)
            }
            Err(e) => {
                session.abort();
                Err(e)
            }
        }
    }
}
