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
use crate::object::list::ListNode;
use crate::object::references;
use crate::object::tree::{Content, Entry, EntryKind, MAX_TREE_DEPTH, decode_entry};
use crate::pack::{FLAG_DELTA, StoredObject, make_delta, unpack};
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
    /// Objects to send, children before parents.
    pub order: Vec<(ObjectType, ObjectId)>,
    /// The non-chunk objects already read while negotiating, by id.
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
        if progress.interrupted() {
            return Err(SyncError::Interrupted);
        }
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

/// Whether `name` is a machine-local record: a local sync's record of
/// what this working tree and database last agreed on (`local/…`), or a
/// deploy's record of what this machine last deployed (`deploy/…`). Such
/// records describe this machine only: a pull or a bundle import never
/// takes them from elsewhere (another's would make a sync delete files or
/// rows as if this side had removed them, or a due deploy look done).
pub fn machine_local(name: &str) -> bool {
    name.starts_with("local/") || name.starts_with(crate::deploy::DEPLOY_REF_PREFIX)
}

/// The error for a machine-local record named in a pull or an import.
pub fn machine_local_refused(name: &str) -> SyncError {
    SyncError::Invalid(format!(
        "ref {name} is this machine's own record (local sync or deploy); it is never taken from elsewhere"
    ))
}

/// One ref a transfer moved (or could not).
#[derive(Debug, Clone, Serialize)]
pub struct RefUpdate {
    /// The ref's name.
    #[serde(rename = "ref")]
    pub name: String,
    /// What it names after the transfer.
    pub id: ObjectId,
    /// What it named before (`None`: new).
    pub old: Option<ObjectId>,
    /// Whether the ref (local for pull, remote for push) now names `id`.
    pub updated: bool,
    /// Whether it moved by `--force` to a snapshot that does not descend
    /// from `old` (what it named is no longer in its history).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub forced: bool,
    /// Why the ref did not move, when it did not (not a fast-forward).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// What a push or pull moved.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TransferReport {
    /// Objects moved.
    pub objects: u64,
    /// Bytes of objects moved (as stored, compressed).
    pub object_bytes: u64,
    /// Requests made and bytes on the wire.
    pub traffic: Traffic,
    /// What happened to each ref.
    pub refs: Vec<RefUpdate>,
}

/// An object as it goes on the wire: a delta against its base when that is
/// smaller than the object as stored.
fn outgoing(
    local: &Store,
    tag: ObjectType,
    id: &ObjectId,
    bases: Option<&IdMap<ObjectId>>,
) -> Result<StoredObject> {
    wire_object(local, tag, id, bases.and_then(|b| b.get(id)))
}

/// An object of `local` as it goes on the wire (push, or a pull's answer):
/// a delta (flags 2) against `base`, which the receiver holds, when that is
/// smaller than the object compressed alone; else the object alone.
pub(crate) fn wire_object(
    local: &Store,
    tag: ObjectType,
    id: &ObjectId,
    base: Option<&ObjectId>,
) -> Result<StoredObject> {
    let (loc, payload) = local.read_raw(id)?;
    if loc.tag != tag {
        return Err(crate::object::corrupt(
            tag,
            id,
            format!("the store holds a {}", loc.tag),
        ));
    }
    let whole = StoredObject {
        tag: loc.tag,
        id: *id,
        flags: loc.flags,
        ulen: loc.ulen,
        payload,
    };
    let Some(base) = base else {
        return Ok(whole);
    };
    if whole.payload.len() < 128 || local.location(base).is_none_or(|l| l.tag != tag) {
        return Ok(whole);
    }
    let data = unpack(
        whole.tag,
        id,
        whole.flags,
        u64::from(whole.ulen),
        &whole.payload,
    )?;
    let base_bytes = crate::object::ObjectSource::get(local, tag, base)?;
    match make_delta(&data, base, &base_bytes, DELTA_LEVEL) {
        Some(d) if d.len() + 16 < whole.payload.len() => Ok(StoredObject {
            tag,
            id: *id,
            flags: FLAG_DELTA,
            ulen: whole.ulen,
            payload: d,
        }),
        _ => Ok(whole),
    }
}

/// zstd level of deltas (small objects: a higher level is cheap).
const DELTA_LEVEL: i32 = 9;

/// Objects at the same place in two snapshots, as `new`'s object → `old`'s
/// object there: the nodes of each directory map and table row map that
/// changed, and the chunks of each changed file by position. Push sends
/// the first as deltas against the second; `gc --repack` stores them so.
/// Holds only what changed between the two.
pub(crate) fn same_place_pairs(
    local: &Store,
    old: &ObjectId,
    new: &ObjectId,
) -> Result<IdMap<ObjectId>> {
    let old = crate::names::load_snapshot(local, old)?;
    let new = crate::names::load_snapshot(local, new)?;
    let mut h = Hint::default();
    if let Some(root) = new.root {
        h.tree(local, old.root.as_ref(), &root, 0)?;
    }
    for (name, id) in &new.tables {
        h.table(local, old.tables.get(name), id)?;
    }
    Ok(h.bases)
}

/// What changed between an old snapshot (held by the remote) and a newer one.
#[derive(Default)]
struct Hint {
    /// Objects reachable from the new snapshots that are not at the same
    /// place under the old ones: all that may be missing on the remote.
    candidates: IdSet,
    /// new object → an old object at the same place (on the remote).
    bases: IdMap<ObjectId>,
    /// A tree deeper than [`MAX_TREE_DEPTH`] was met: the hint is not
    /// complete, and the push falls back to full negotiation (iterative).
    too_deep: bool,
}

impl Hint {
    fn merge(&mut self, o: Hint) {
        self.candidates.extend(o.candidates);
        for (k, v) in o.bases {
            self.bases.entry(k).or_insert(v);
        }
    }

    /// For `new` descending from `old` by first parents (at most 256 of
    /// them, no merges); None otherwise.
    fn between(local: &Store, old: ObjectId, new: ObjectId) -> Result<Option<Hint>> {
        let mut chain = Vec::new();
        let mut cur = new;
        while cur != old {
            if chain.len() >= 256 {
                return Ok(None);
            }
            let s = crate::names::load_snapshot(local, &cur)?;
            if s.parents.len() != 1 {
                return Ok(None);
            }
            let next = s.parents[0];
            chain.push((cur, s.root, s.tables));
            cur = next;
        }
        let old = crate::names::load_snapshot(local, &old)?;
        let mut h = Hint::default();
        for (snap, root, tables) in chain {
            h.candidates.insert(snap);
            if let Some(root) = root {
                h.tree(local, old.root.as_ref(), &root, 0)?;
            }
            for (name, id) in &tables {
                h.table(local, old.tables.get(name), id)?;
            }
        }
        Ok((!h.too_deep).then_some(h))
    }

    /// A table object, and the rows that changed since the old one of the
    /// same name (the old row-map nodes serve as delta bases).
    fn table(&mut self, local: &Store, old: Option<&ObjectId>, new: &ObjectId) -> Result<()> {
        if old == Some(new) || !self.candidates.insert(*new) {
            return Ok(());
        }
        let load = |id: &ObjectId| -> Result<Option<ObjectId>> {
            Ok(crate::db::load_table(local, id)?.table.map(|d| d.root))
        };
        let Some(new_root) = load(new)? else {
            return Ok(());
        };
        let old_root = match old {
            Some(o) => load(o)?,
            None => None,
        };
        // Large values are chunk lists: keep only those of the changed rows
        // (a new table's rows all count as changed; they are not held).
        let mut large = Vec::new();
        let nodes = crate::pmap::diff_detail(
            local,
            ObjectType::Rows,
            old_root.as_ref(),
            Some(&new_root),
            |_, c| {
                if let crate::pmap::Change::Added(v) | crate::pmap::Change::Modified(_, v) = c {
                    let cells = crate::object::row::decode_row(&v).map_err(|e| {
                        crate::object::corrupt(ObjectType::Rows, &new_root, format!("bad row: {e}"))
                    })?;
                    for c in cells {
                        if let crate::object::row::Cell::Large { size, content, .. } = c {
                            large.push((content, size));
                        }
                    }
                }
                Ok(())
            },
        )?;
        self.candidates.extend(nodes.b_nodes);
        for (a, b) in nodes.pairs {
            self.bases.entry(b).or_insert(a);
        }
        for (content, size) in large {
            self.content(local, &content, size)?;
        }
        Ok(())
    }

    fn tree(
        &mut self,
        local: &Store,
        old: Option<&ObjectId>,
        new: &ObjectId,
        depth: usize,
    ) -> Result<()> {
        if old == Some(new) {
            return Ok(());
        }
        if depth > MAX_TREE_DEPTH {
            self.too_deep = true;
            return Ok(());
        }
        let mut changes = Vec::new();
        let nodes =
            crate::pmap::diff_detail(local, ObjectType::Tree, old, Some(new), |name, c| {
                changes.push((name.to_vec(), c));
                Ok(())
            })?;
        self.candidates.extend(nodes.b_nodes);
        for (a, b) in nodes.pairs {
            self.bases.entry(b).or_insert(a);
        }
        let old_id = old.copied().unwrap_or_default();
        for (name, c) in changes {
            match c {
                crate::pmap::Change::Added(v) => {
                    let e = decode_entry(new, &name, &v, crate::object::tree::Timestamp::ZERO)?;
                    self.everything(local, &e, depth + 1)?;
                }
                crate::pmap::Change::Modified(ov, nv) => {
                    let o =
                        decode_entry(&old_id, &name, &ov, crate::object::tree::Timestamp::ZERO)?;
                    let n = decode_entry(new, &name, &nv, crate::object::tree::Timestamp::ZERO)?;
                    match (&o.kind, &n.kind) {
                        (EntryKind::Dir { tree: ta }, EntryKind::Dir { tree: tb }) => {
                            self.tree(local, Some(ta), tb, depth + 1)?
                        }
                        (
                            EntryKind::File {
                                size: sa,
                                content: ca,
                            },
                            EntryKind::File {
                                size: sb,
                                content: cb,
                            },
                        ) => {
                            if ca != cb {
                                self.everything(local, &n, depth + 1)?;
                                let old_chunks: Vec<ObjectId> = ca
                                    .chunks(local, *sa)
                                    .map(|c| c.map(|c| c.id))
                                    .collect::<Result<_>>()?;
                                let new_chunks: Vec<ObjectId> = cb
                                    .chunks(local, *sb)
                                    .map(|c| c.map(|c| c.id))
                                    .collect::<Result<_>>()?;
                                for (a, b) in old_chunks.iter().zip(&new_chunks) {
                                    if a != b {
                                        self.bases.entry(*b).or_insert(*a);
                                    }
                                }
                            }
                        }
                        _ => self.everything(local, &n, depth + 1)?,
                    }
                }
                crate::pmap::Change::Removed(_) => {}
            }
        }
        Ok(())
    }

    /// Every object under an entry.
    fn everything(&mut self, local: &Store, e: &Entry, depth: usize) -> Result<()> {
        match &e.kind {
            EntryKind::Dir { tree } => {
                if depth > MAX_TREE_DEPTH {
                    self.too_deep = true;
                    return Ok(());
                }
                let mut subdirs = Vec::new();
                let mut files = Vec::new();
                let cands = &mut self.candidates;
                crate::pmap::walk_nodes(
                    local,
                    ObjectType::Tree,
                    tree,
                    |id| cands.insert(*id),
                    |name, v| {
                        let e = decode_entry(tree, name, v, crate::object::tree::Timestamp::ZERO)?;
                        match &e.kind {
                            EntryKind::Dir { .. } => subdirs.push(e),
                            EntryKind::File { .. } => files.push(e),
                            EntryKind::Symlink { .. } => {}
                        }
                        Ok(())
                    },
                )?;
                for f in files.iter().chain(subdirs.iter()) {
                    self.everything(local, f, depth + 1)?;
                }
            }
            EntryKind::File { size, content } => self.content(local, content, *size)?,
            EntryKind::Symlink { .. } => {}
        }
        Ok(())
    }

    /// Every object under a file's (or a large value's) content.
    fn content(&mut self, local: &Store, content: &Content, size: u64) -> Result<()> {
        match content {
            Content::Inline(v) => self.candidates.extend(v.iter().map(|c| c.id)),
            Content::Indirect { level, root } => self.list_nodes(local, *level, root, size)?,
        }
        Ok(())
    }

    fn list_nodes(&mut self, local: &Store, level: u8, id: &ObjectId, size: u64) -> Result<()> {
        if !self.candidates.insert(*id) {
            return Ok(());
        }
        let raw = crate::object::ObjectSource::get(local, ObjectType::List, id)?;
        let node =
            ListNode::decode(&raw).map_err(|e| crate::object::corrupt(ObjectType::List, id, e))?;
        if node.level != level || node.total() != size {
            return Err(crate::object::corrupt(
                ObjectType::List,
                id,
                "level or size differs",
            ));
        }
        for c in &node.entries {
            if level == 0 {
                self.candidates.insert(c.id);
            } else {
                self.list_nodes(local, level - 1, &c.id, c.len)?;
            }
        }
        Ok(())
    }
}

/// How long a push waits out a busy server (503) in total.
const BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// The pause before try `attempt + 1` of a transfer: 0.5 s, 1 s, 2 s, …,
/// at most 16 s (a large `SP_SYNC_*_RETRIES` never overflows the shift).
fn retry_pause(attempt: u32) -> std::time::Duration {
    std::time::Duration::from_millis(250 << attempt.min(6))
}

/// How many times a transfer broken off is tried again: the variable
/// `var` (`SP_SYNC_PUSH_RETRIES`, `SP_SYNC_PULL_RETRIES`), else 3.
fn retries_from_env(var: &str) -> u32 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

/// Whether a transfer that failed with `e` may succeed if tried again (a
/// dropped connection, a 5xx such as a busy server's 503).
pub fn is_retryable(e: &SyncError) -> bool {
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
        // (Not 501, 505 or 507 — the server cannot do it, or has no room
        // for it, and will not tomorrow either.)
        SyncError::ApiError { status, .. } => *status >= 500 && !is_final(e),
        _ => false,
    }
}

/// Whether a remote's answer rules out sending again, in full or not: no
/// access (401, 403, 404), too large (413), not supported (501, 505), no
/// room (507, a tenant's quota).
fn is_final(e: &SyncError) -> bool {
    matches!(
        e,
        SyncError::ApiError {
            status: 401 | 403 | 404 | 413 | 501 | 505 | 507,
            ..
        } | SyncError::NoRoom(_)
            | SyncError::Unauthorized(_)
            | SyncError::NotFound(_)
    )
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
    let retries = retries_from_env("SP_SYNC_PUSH_RETRIES");
    // What the remote's refs name now, when we hold it too, tells what it
    // holds (everything below them): then only what changed since is worth
    // asking about, and the old versions serve as delta bases.
    let mut hint = {
        let remote_refs = remote.list_refs()?;
        let mut h: Option<Hint> = None;
        for (name, id) in &roots {
            let old = remote_refs.iter().find(|(n, _)| n == name).map(|(_, o)| *o);
            if old == Some(*id) {
                continue;
            }
            // A ref the remote lacks, or whose snapshot there is not held
            // here, says nothing of what the remote holds below it: every
            // object is asked about (the hint covers only what it names).
            let Some(old) = old.filter(|o| local.contains(o)) else {
                h = None;
                break;
            };
            match Hint::between(local, old, *id)? {
                Some(more) => h.get_or_insert_with(Hint::default).merge(more),
                None => {
                    h = None;
                    break;
                }
            }
        }
        h
    };
    let mut attempt = 0;
    // Whether a full negotiation was already done again.
    let mut asked_again = false;
    let mut busy = crate::remote::http::Busy::new(BUSY_WAIT);
    loop {
        attempt += 1;
        let plan = plan(
            &ids,
            &mut |q| match &hint {
                None => remote.has(q),
                Some(h) => {
                    // Only what changed since the remote's refs may be missing.
                    let ask: Vec<ObjectId> = q
                        .iter()
                        .filter(|id| h.candidates.contains(*id))
                        .copied()
                        .collect();
                    let answers = if ask.is_empty() {
                        Vec::new()
                    } else {
                        remote.has(&ask)?
                    };
                    let missing: IdSet = ask
                        .iter()
                        .zip(answers)
                        .filter(|(_, p)| !p)
                        .map(|(id, _)| *id)
                        .collect();
                    Ok(q.iter().map(|id| !missing.contains(id)).collect())
                }
            },
            &mut |q| q.iter().map(|(_, id)| local.read_stored(id)).collect(),
            progress,
        )?;
        progress.stage("sending");
        progress.set_total(plan.order.len() as u64, 0);
        let bases = hint.as_ref().map(|h| &h.bases);
        let mut stream = plan.order.iter().map(|(t, id)| {
            if progress.interrupted() {
                return Err(SyncError::Interrupted);
            }
            outgoing(local, *t, id, bases)
        });
        match remote.send(&mut stream, progress) {
            Ok(stats) => {
                report.objects += stats.objects;
                report.object_bytes += stats.bytes;
                break;
            }
            Err(SyncError::Interrupted) => return Err(SyncError::Interrupted),
            // A busy server (503, 429) is asked again after a while, for
            // up to BUSY_WAIT, without using up the retries.
            Err(SyncError::ApiError {
                status: 503 | 429, ..
            }) if busy.wait() => {
                tracing::debug!("push to {}: the server is busy; waiting", remote.describe());
                attempt -= 1;
            }
            Err(e) if attempt <= retries && is_retryable(&e) => {
                tracing::warn!("push to {} broke off ({e}); resuming", remote.describe());
                std::thread::sleep(retry_pause(attempt));
            }
            Err(e) if (hint.is_some() || !asked_again) && attempt <= retries && !is_final(&e) => {
                // The remote lacks something its refs reach (repacked,
                // rewritten), or something it said it held (its gc took
                // it meanwhile: audit 22): ask it about everything again.
                tracing::warn!("push to {}: {e}; negotiating in full", remote.describe());
                asked_again |= hint.is_none();
                hint = None;
            }
            Err(e) => return Err(e),
        }
    }
    // The last safe point: once refs move, the push is done.
    if progress.interrupted() {
        return Err(SyncError::Interrupted);
    }
    progress.stage("updating refs");
    // Every ref must fast-forward before any moves (as `git push
    // --atomic`): a push of several refs that one of them would fail moves
    // none. (The remote decides again as each one moves.)
    let theirs: std::collections::BTreeMap<String, ObjectId> =
        remote.list_refs()?.into_iter().collect();
    if !force {
        for (name, id) in &roots {
            if let Some(old) = theirs.get(name)
                && old != id
                && !crate::is_ancestor(local, old, id)?
            {
                return Err(SyncError::NonFastForward {
                    name: name.clone(),
                    old: *old,
                    new: *id,
                });
            }
        }
    }
    for (name, id) in roots {
        let moved_before = |e: SyncError, report: &TransferReport| {
            if report.refs.is_empty() {
                return e;
            }
            let moved: Vec<String> = report
                .refs
                .iter()
                .map(|u| {
                    format!(
                        "{} {} -> {}",
                        u.name,
                        u.old.map_or("(new)".to_string(), |o| o.short()),
                        u.id.short()
                    )
                })
                .collect();
            e.context(format!("after moving {}", moved.join(", ")))
        };
        let mut tries = 0;
        let old = loop {
            tries += 1;
            // (First as listed above; after a conflict, as it is now.)
            let old = if tries == 1 {
                theirs.get(&name).copied()
            } else {
                remote
                    .list_refs()?
                    .into_iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, id)| id)
            };
            if old == Some(id) {
                break old;
            }
            match remote.update_ref(&name, old, id, force) {
                Ok(()) => break old,
                // Someone moved it since we looked: look again (the remote
                // decides whether ours still fast-forwards).
                Err(SyncError::RefConflict { .. }) if tries < 5 => continue,
                Err(SyncError::RefConflict { actual, .. }) => {
                    let e = SyncError::NonFastForward {
                        name,
                        old: actual.unwrap_or_default(),
                        new: id,
                    };
                    return Err(moved_before(e, &report));
                }
                Err(e) => return Err(moved_before(e, &report)),
            }
        };
        if let Some(rn) = remote_name {
            local.update_ref(&format!("remotes/{rn}/{name}"), None, Some(id))?;
        }
        // (Everything `id` descends from is here: it was sent from here.)
        let forced = match old {
            Some(o) if force && o != id => !crate::is_ancestor(local, &o, &id)?,
            _ => false,
        };
        report.refs.push(RefUpdate {
            name,
            id,
            old,
            updated: true,
            forced,
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
            .filter(|(n, _)| !n.starts_with("remotes/") && !machine_local(n))
            .collect()
    } else {
        let mut v = Vec::new();
        for r in refs {
            if machine_local(r) {
                return Err(machine_local_refused(r));
            }
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
    let bases = pull_bases(local, remote, remote_name, &wanted);
    // A fetch that broke off is tried again, as a push is: what arrived
    // and was committed is not asked for again.
    let retries = retries_from_env("SP_SYNC_PULL_RETRIES");
    let mut attempt = 0;
    let stats = loop {
        attempt += 1;
        match fetch_with(local, remote, &ids, &bases, progress) {
            Ok(stats) => break stats,
            Err(e) if attempt <= retries && is_retryable(&e) => {
                tracing::warn!("pull from {} broke off ({e}); resuming", remote.describe());
                std::thread::sleep(retry_pause(attempt));
            }
            Err(e) => return Err(e),
        }
    };
    report.objects = stats.objects;
    report.object_bytes = stats.bytes;
    if progress.interrupted() {
        return Err(SyncError::Interrupted);
    }
    let ids: Vec<ObjectId> = wanted.iter().map(|(_, id)| *id).collect();
    crate::store::fsck::check_received(local, &ids, &format!("pull from {}", remote.describe()))?;
    progress.stage("updating refs");
    for (name, id) in wanted {
        if let Some(rn) = remote_name {
            local.update_ref(&format!("remotes/{rn}/{name}"), None, Some(id))?;
        }
        // (A snapshot to the same ref meanwhile moves it under the pull:
        // then it decides again from where the ref is now; audit 22.)
        let mut tries = 0;
        let (old, (updated, warning)) = loop {
            let old = local.read_ref(&name)?;
            let outcome = pull_outcome(local, old, id, &name, remote_name)?;
            let moved = if outcome.0 && old != Some(id) {
                local.update_ref(&name, Some(old), Some(id))
            } else {
                Ok(())
            };
            match moved {
                Err(SyncError::RefConflict { .. }) if tries < 16 => tries += 1,
                Err(e) => return Err(e),
                Ok(()) => break (old, outcome),
            }
        };
        report.refs.push(RefUpdate {
            name,
            id,
            old,
            updated,
            forced: false,
            warning,
        });
    }
    report.traffic = remote.traffic();
    Ok(report)
}

/// Whether a pull moved `name` (which named `old`) to the remote's `id`,
/// and the warning when it left it: ahead, or diverged.
fn pull_outcome(
    local: &Store,
    old: Option<ObjectId>,
    id: ObjectId,
    name: &str,
    remote_name: Option<&str>,
) -> Result<(bool, Option<String>)> {
    Ok(match old {
        None => (true, None),
        Some(o) if o == id => (true, None),
        Some(o) if crate::is_ancestor(local, &o, &id)? => (true, None),
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
    })
}

/// Sends to `remote` what it lacks of everything the snapshots `ids` reach
/// (asking it level by level, no ref moves): the object transfer of a push
/// without its hints.
pub fn send(
    local: &Store,
    remote: &dyn Remote,
    ids: &[ObjectId],
    progress: &dyn Progress,
) -> Result<crate::store::receive::ReceiveStats> {
    let plan = plan(
        ids,
        &mut |q| remote.has(q),
        &mut |q| q.iter().map(|(_, id)| local.read_stored(id)).collect(),
        progress,
    )?;
    progress.stage("sending");
    progress.set_total(plan.order.len() as u64, 0);
    let mut stream = plan.order.iter().map(|(_, id)| {
        if progress.interrupted() {
            return Err(SyncError::Interrupted);
        }
        local.read_stored(id)
    });
    remote.send(&mut stream, progress)
}

/// Fetches from `remote` what `local` lacks of everything the snapshots
/// `ids` reach (no ref moves): the object transfer of a pull.
pub fn fetch(
    local: &Store,
    remote: &dyn Remote,
    ids: &[ObjectId],
    progress: &dyn Progress,
) -> Result<crate::store::receive::ReceiveStats> {
    fetch_with(local, remote, ids, &IdMap::default(), progress)
}

/// A pull's delta bases: for each wanted snapshot, an older snapshot of the
/// same ref that `local` holds (`remotes/NAME/REF`, else the local ref),
/// and the remote's pairs of objects at the same place in both.
fn pull_bases(
    local: &Store,
    remote: &dyn Remote,
    remote_name: Option<&str>,
    wanted: &[(String, ObjectId)],
) -> IdMap<ObjectId> {
    let mut bases = IdMap::default();
    for (name, id) in wanted {
        let mut olds = Vec::new();
        if let Some(rn) = remote_name {
            olds.push(format!("remotes/{rn}/{name}"));
        }
        olds.push(name.clone());
        let old = olds
            .iter()
            .filter_map(|r| local.read_ref(r).ok().flatten())
            .find(|o| o != id && local.contains(o));
        let Some(old) = old else { continue };
        match remote.delta_bases(&old, id) {
            Ok(pairs) => {
                for (k, v) in pairs {
                    bases.entry(k).or_insert(v);
                }
            }
            // Only an optimisation: the pull goes on without deltas.
            Err(e) => tracing::debug!("{}: no delta bases: {e}", remote.describe()),
        }
    }
    bases
}

/// Rebuilds an object that came as a delta against an object `local`
/// holds; returns it compressed alone (others as they came).
fn expand_delta(local: &Store, o: StoredObject) -> Result<StoredObject> {
    if o.flags != FLAG_DELTA {
        return Ok(o);
    }
    let base = crate::pack::delta_base(&o.payload)
        .ok_or_else(|| crate::object::corrupt(o.tag, &o.id, "bad delta record"))?;
    let base_bytes = crate::object::ObjectSource::get(local, o.tag, &base)
        .map_err(|e| crate::object::corrupt(o.tag, &o.id, format!("its delta base: {e}")))?;
    let bytes =
        crate::pack::unpack_delta(o.tag, &o.id, u64::from(o.ulen), &o.payload, &base_bytes)?;
    Ok(crate::pack::prepare(
        o.tag,
        o.id,
        &bytes,
        local.config().compression_level,
    ))
}

/// [`fetch`] where an object that has a base in `bases` (an object `local`
/// holds at the same place in an older snapshot) may come as a delta
/// against it, as a push sends it.
pub fn fetch_with(
    local: &Store,
    remote: &dyn Remote,
    ids: &[ObjectId],
    bases: &IdMap<ObjectId>,
    progress: &dyn Progress,
) -> Result<crate::store::receive::ReceiveStats> {
    let mut plan = plan(
        ids,
        &mut |q| {
            if q.iter().any(|id| !local.contains(id)) {
                local.refresh()?;
            }
            Ok(q.iter().map(|id| local.contains(id)).collect())
        },
        &mut |q| {
            // No more than asked for: a remote that answers without end
            // would fill memory (audit round 18).
            let mut out = Vec::with_capacity(q.len());
            for o in remote.fetch_with_bases(q, bases)? {
                if out.len() == q.len() {
                    return Err(SyncError::Invalid(format!(
                        "{}: sent more objects than were asked for",
                        remote.describe()
                    )));
                }
                out.push(o.and_then(|o| expand_delta(local, o))?);
            }
            Ok(out)
        },
        progress,
    )?;
    progress.stage("receiving");
    progress.set_total(plan.order.len() as u64, 0);
    // Chunks reference nothing, so they may all come first: long runs of
    // them go in few requests; the rest keeps its children-first order.
    let (mut order, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut plan.order)
        .into_iter()
        .partition(|(t, _)| *t == ObjectType::Chunk);
    order.extend(rest);
    let mut objects = PullStream {
        remote,
        bases,
        order: &order,
        pos: 0,
        meta: &mut plan.meta,
        current: None,
    };
    local.receive(&mut objects, COMMIT_EVERY * 4, progress)
}

/// The objects of a pull in plan order: negotiated objects from memory,
/// chunks streamed from the remote in batches.
struct PullStream<'a> {
    remote: &'a dyn Remote,
    bases: &'a IdMap<ObjectId>,
    order: &'a [(ObjectType, ObjectId)],
    pos: usize,
    meta: &'a mut IdMap<StoredObject>,
    current: Option<(crate::remote::ObjectStream<'a>, usize)>,
}

impl Iterator for PullStream<'_> {
    type Item = Result<StoredObject>;

    fn next(&mut self) -> Option<Self::Item> {
        if crate::progress::interrupted() {
            return Some(Err(SyncError::Interrupted));
        }
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
        match self.remote.fetch_with_bases(&run, self.bases) {
            Ok(stream) => {
                self.current = Some((stream, run.len()));
                self.next()
            }
            Err(e) => Some(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::retry_pause;
    use std::time::Duration;

    #[test]
    fn retry_pauses_grow_and_stay_bounded() {
        assert_eq!(retry_pause(1), Duration::from_millis(500));
        assert_eq!(retry_pause(3), Duration::from_secs(2));
        // SP_SYNC_PUSH_RETRIES=1000 once meant a shift past 64 bits.
        assert_eq!(retry_pause(6), Duration::from_secs(16));
        assert_eq!(retry_pause(1000), Duration::from_secs(16));
    }
}
