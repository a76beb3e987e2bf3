//! Push and pull: find what the other side lacks, move it as one pack
//! stream children first, then move refs by compare-and-swap.
//!
//! Negotiation walks down from the snapshots being moved, asking the
//! receiving side which ids it has, level by level, in batches, and descends
//! only into what it lacks: because every store is downward closed, an id it
//! has stands for everything below it. The number of round trips grows with
//! the depth of the change, not the size of the tree. The missing objects
//! are then sent in post-order (children before parents), so the receiver
//! can verify each object's references as it arrives and commit as it goes:
//! an interrupted transfer keeps what was complete, and the next one
//! resends only the rest.

use serde::Serialize;

use crate::error::{Result, SyncError};
use crate::id::{IdMap, IdSet, ObjectId, ObjectType};
use crate::object::references;
use crate::pack::{StoredObject, unpack};
use crate::progress::Progress;
use crate::remote::{COMMIT_EVERY, Remote, Traffic};
use crate::store::Store;

/// Ids per `has` question.
const HAS_BATCH: usize = 65_536;
/// Tree, list and snapshot objects fetched per request while negotiating.
const META_BATCH: usize = 4096;
/// Chunks fetched per request while pulling.
const CHUNK_BATCH: usize = 1024;

/// Reads the stored objects with the given ids, in order.
pub type GetMeta<'a> = dyn FnMut(&[(ObjectType, ObjectId)]) -> Result<Vec<StoredObject>> + 'a;

/// What is missing on the receiving side, children before parents, with
/// the non-chunk objects read while negotiating.
pub struct Plan {
    pub order: Vec<(ObjectType, ObjectId)>,
    pub meta: IdMap<StoredObject>,
}

/// Finds what `has` lacks of everything reachable from `roots` (snapshots).
/// `get_meta` returns the stored objects (trees, lists, snapshots) with the
/// given ids, in order.
pub fn plan(
    roots: &[ObjectId],
    has: &mut dyn FnMut(&[ObjectId]) -> Result<Vec<bool>>,
    get_meta: &mut GetMeta<'_>,
    progress: &dyn Progress,
) -> Result<Plan> {
    let mut seen = IdSet::default();
    let mut missing: IdMap<ObjectType> = IdMap::default();
    let mut children: IdMap<Vec<(ObjectType, ObjectId)>> = IdMap::default();
    let mut meta: IdMap<StoredObject> = IdMap::default();
    let mut frontier: Vec<(ObjectType, ObjectId)> = Vec::new();
    for r in roots {
        if seen.insert(*r) {
            frontier.push((ObjectType::Snapshot, *r));
        }
    }
    progress.stage("negotiating");
    while !frontier.is_empty() {
        let mut lacking = Vec::new();
        for batch in frontier.chunks(HAS_BATCH) {
            let ids: Vec<ObjectId> = batch.iter().map(|(_, id)| *id).collect();
            let present = has(&ids)?;
            for ((t, id), p) in batch.iter().zip(present) {
                if !p {
                    missing.insert(*id, *t);
                    lacking.push((*t, *id));
                }
            }
        }
        let mut next = Vec::new();
        let to_read: Vec<(ObjectType, ObjectId)> = lacking
            .into_iter()
            .filter(|(t, _)| *t != ObjectType::Chunk)
            .collect();
        for batch in to_read.chunks(META_BATCH) {
            let objs = get_meta(batch)?;
            if objs.len() != batch.len() {
                return Err(SyncError::Invalid(format!(
                    "asked for {} objects, got {}",
                    batch.len(),
                    objs.len()
                )));
            }
            for ((t, id), o) in batch.iter().zip(objs) {
                if o.id != *id || o.tag != *t {
                    return Err(crate::object::corrupt(
                        *t,
                        id,
                        "a different object came back",
                    ));
                }
                let bytes = unpack(o.tag, &o.id, o.flags, u64::from(o.ulen), &o.payload)?;
                let refs = references(o.tag, &o.id, &bytes)?;
                for (ct, c) in &refs {
                    if seen.insert(*c) {
                        next.push((*ct, *c));
                    }
                }
                children.insert(*id, refs);
                meta.insert(*id, o);
            }
        }
        frontier = next;
    }
    // Post-order from the roots over the missing objects: children first.
    let mut order = Vec::with_capacity(missing.len());
    let mut visited = IdSet::default();
    let mut stack: Vec<(ObjectId, bool)> = roots.iter().rev().map(|r| (*r, false)).collect();
    while let Some((id, expanded)) = stack.pop() {
        let Some(&t) = missing.get(&id) else { continue };
        if expanded {
            order.push((t, id));
            continue;
        }
        if !visited.insert(id) {
            continue;
        }
        stack.push((id, true));
        if let Some(cs) = children.get(&id) {
            for (_, c) in cs.iter().rev() {
                if missing.contains_key(c) && !visited.contains(c) {
                    stack.push((*c, false));
                }
            }
        }
    }
    Ok(Plan { order, meta })
}

/// One ref a transfer moved (or could not).
#[derive(Debug, Clone, Serialize)]
pub struct RefUpdate {
    #[serde(rename = "ref")]
    pub name: String,
    pub id: ObjectId,
    pub old: Option<ObjectId>,
    /// Whether the ref (local for pull, remote for push) now names `id`.
    pub updated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TransferReport {
    pub objects: u64,
    /// Bytes of objects moved (as stored, compressed).
    pub object_bytes: u64,
    pub traffic: Traffic,
    pub refs: Vec<RefUpdate>,
}

fn is_retryable(e: &SyncError) -> bool {
    match e {
        SyncError::Io { source, .. } => matches!(
            source.kind(),
            std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::TimedOut
                | std::io::ErrorKind::UnexpectedEof
        ),
        SyncError::ApiError { status, .. } => *status >= 500,
        _ => false,
    }
}

/// Sends `refs` (local ref names) to `remote` and moves the remote's refs
/// of the same names (fast-forward only unless `force`). With a remote
/// name, `remotes/NAME/REF` then records what the remote holds.
pub fn push(
    local: &Store,
    remote: &dyn Remote,
    remote_name: Option<&str>,
    refs: &[String],
    force: bool,
    progress: &dyn Progress,
) -> Result<TransferReport> {
    let mut roots = Vec::new();
    for r in refs {
        let id = local
            .read_ref(r)?
            .ok_or_else(|| SyncError::NotFound(format!("unknown ref {r}")))?;
        roots.push((r.clone(), id));
    }
    let ids: Vec<ObjectId> = roots.iter().map(|(_, id)| *id).collect();
    let mut report = TransferReport::default();
    let retries: u32 = std::env::var("SP_SYNC_PUSH_RETRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let plan = plan(
            &ids,
            &mut |q| remote.has(q),
            &mut |q| q.iter().map(|(_, id)| local.read_stored(id)).collect(),
            progress,
        )?;
        progress.stage("sending");
        progress.set_total(plan.order.len() as u64, 0);
        let mut stream = plan.order.iter().map(|(_, id)| {
            let (loc, payload) = local.read_raw(id)?;
            Ok(StoredObject {
                tag: loc.tag,
                id: *id,
                flags: loc.flags,
                ulen: loc.ulen,
                payload,
            })
        });
        match remote.send(&mut stream, progress) {
            Ok(stats) => {
                report.objects += stats.objects;
                report.object_bytes += stats.bytes;
                break;
            }
            Err(e) if attempt <= retries && is_retryable(&e) => {
                tracing::warn!("push to {} broke off ({e}); resuming", remote.describe());
                std::thread::sleep(std::time::Duration::from_millis(250 << attempt));
            }
            Err(e) => return Err(e),
        }
    }
    progress.stage("updating refs");
    for (name, id) in roots {
        let mut tries = 0;
        let old = loop {
            tries += 1;
            let old = remote
                .list_refs()?
                .into_iter()
                .find(|(n, _)| *n == name)
                .map(|(_, id)| id);
            if old == Some(id) {
                break old;
            }
            match remote.update_ref(&name, old, id, force) {
                Ok(()) => break old,
                // Someone moved it since we looked: look again (the remote
                // decides whether ours still fast-forwards).
                Err(SyncError::RefConflict { .. }) if tries < 5 => continue,
                Err(SyncError::RefConflict { actual, .. }) => {
                    return Err(SyncError::NonFastForward {
                        name,
                        old: actual.unwrap_or_default(),
                        new: id,
                    });
                }
                Err(e) => return Err(e),
            }
        };
        if let Some(rn) = remote_name {
            local.update_ref(&format!("remotes/{rn}/{name}"), None, Some(id))?;
        }
        report.refs.push(RefUpdate {
            name,
            id,
            old,
            updated: true,
            warning: None,
        });
    }
    report.traffic = remote.traffic();
    Ok(report)
}

/// Fetches `refs` from `remote` (all of its refs when empty), records them
/// as `remotes/NAME/REF` for a named remote, and fast-forwards the local
/// refs of the same names; a local ref that has diverged stays put, with a
/// warning.
pub fn pull(
    local: &Store,
    remote: &dyn Remote,
    remote_name: Option<&str>,
    refs: &[String],
    progress: &dyn Progress,
) -> Result<TransferReport> {
    let remote_refs = remote.list_refs()?;
    let wanted: Vec<(String, ObjectId)> = if refs.is_empty() {
        remote_refs
            .into_iter()
            .filter(|(n, _)| !n.starts_with("remotes/"))
            .collect()
    } else {
        let mut v = Vec::new();
        for r in refs {
            let id = remote_refs
                .iter()
                .find(|(n, _)| n == r)
                .map(|(_, id)| *id)
                .ok_or_else(|| {
                    SyncError::NotFound(format!("{}: unknown ref {r}", remote.describe()))
                })?;
            v.push((r.clone(), id));
        }
        v
    };
    let ids: Vec<ObjectId> = wanted.iter().map(|(_, id)| *id).collect();
    let mut report = TransferReport::default();
    let mut plan = plan(
        &ids,
        &mut |q| {
            if q.iter().any(|id| !local.contains(id)) {
                local.refresh()?;
            }
            Ok(q.iter().map(|id| local.contains(id)).collect())
        },
        &mut |q| remote.fetch(q)?.collect(),
        progress,
    )?;
    progress.stage("receiving");
    progress.set_total(plan.order.len() as u64, 0);
    let order = std::mem::take(&mut plan.order);
    let mut objects = PullStream {
        remote,
        order: &order,
        pos: 0,
        meta: &mut plan.meta,
        current: None,
    };
    let stats = local.receive(&mut objects, COMMIT_EVERY * 4, progress)?;
    report.objects = stats.objects;
    report.object_bytes = stats.bytes;
    progress.stage("updating refs");
    for (name, id) in wanted {
        if let Some(rn) = remote_name {
            local.update_ref(&format!("remotes/{rn}/{name}"), None, Some(id))?;
        }
        let old = local.read_ref(&name)?;
        let (updated, warning) = match old {
            None => {
                local.update_ref(&name, Some(None), Some(id))?;
                (true, None)
            }
            Some(o) if o == id => (true, None),
            Some(o) if crate::is_ancestor(local, &o, &id)? => {
                local.update_ref(&name, Some(Some(o)), Some(id))?;
                (true, None)
            }
            Some(o) if crate::is_ancestor(local, &id, &o)? => (
                false,
                Some(format!("local {name} is ahead of the remote's; left as is")),
            ),
            Some(_) => (
                false,
                Some(format!(
                    "local {name} has diverged from the remote's (not a fast-forward); left as is{}",
                    remote_name
                        .map(|r| format!(", see remotes/{r}/{name}"))
                        .unwrap_or_default()
                )),
            ),
        };
        report.refs.push(RefUpdate {
            name,
            id,
            old,
            updated,
            warning,
        });
    }
    report.traffic = remote.traffic();
    Ok(report)
}

/// The objects of a pull in plan order: negotiated objects from memory,
/// chunks streamed from the remote in batches.
struct PullStream<'a> {
    remote: &'a dyn Remote,
    order: &'a [(ObjectType, ObjectId)],
    pos: usize,
    meta: &'a mut IdMap<StoredObject>,
    current: Option<(crate::remote::ObjectStream<'a>, usize)>,
}

impl Iterator for PullStream<'_> {
    type Item = Result<StoredObject>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some((stream, left)) = self.current.as_mut() {
            if *left > 0 {
                *left -= 1;
                return match stream.next() {
                    Some(r) => Some(r),
                    None => Some(Err(SyncError::Invalid(format!(
                        "{} sent fewer objects than asked",
                        self.remote.describe()
                    )))),
                };
            }
            // The end of the stream: its trailer is checked here.
            let end = stream.next();
            self.current = None;
            match end {
                None => {}
                Some(Err(e)) => return Some(Err(e)),
                Some(Ok(_)) => {
                    return Some(Err(SyncError::Invalid(format!(
                        "{} sent more objects than asked",
                        self.remote.describe()
                    ))));
                }
            }
        }
        let (t, id) = *self.order.get(self.pos)?;
        if t != ObjectType::Chunk {
            self.pos += 1;
            return Some(self.meta.remove(&id).ok_or_else(|| {
                SyncError::Invalid(format!("{t} {id} was not read while negotiating"))
            }));
        }
        // A run of chunks: one request.
        let run: Vec<(ObjectType, ObjectId)> = self.order[self.pos..]
            .iter()
            .take_while(|(t, _)| *t == ObjectType::Chunk)
            .take(CHUNK_BATCH)
            .copied()
            .collect();
        self.pos += run.len();
        match self.remote.fetch(&run) {
            Ok(stream) => {
                self.current = Some((stream, run.len()));
                self.next()
            }
            Err(e) => Some(Err(e)),
        }
    }
}
