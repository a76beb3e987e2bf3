//! Checking a store: every pack and index, and every object reachable from
//! every ref. Damage is reported with the object, where it is stored and
//! what reaches it; checking goes on past the first problem.

use serde::Serialize;

use super::Store;
use super::index::{self, IdxEntry};
use crate::error::{Result, SyncError};
use crate::id::{IdMap, IdSet, ObjectId, ObjectType};
use crate::names::load_snapshot;
use crate::object::list::{ListIter, ListNode, MAX_INLINE, check_list_canonical};
use crate::object::tree::{Content, EntryKind, MAX_TREE_DEPTH, Timestamp, decode_entry, too_deep};
use crate::object::{ObjectSource, corrupt};
use crate::pack::PackReader;
use crate::progress::Progress;

/// What `fsck` checks.
#[derive(Debug, Clone, Default)]
pub struct FsckOptions {
    /// Re-hash every stored object and check every pack's checksum.
    pub read_data: bool,
}

/// What `fsck` found (the `--json` of `sp-sync fsck`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct FsckReport {
    /// Whether no error was found.
    pub ok: bool,
    /// Damage found: each names the object or file and what is wrong.
    pub errors: Vec<String>,
    /// Problems that lose nothing (stray files, …).
    pub warnings: Vec<String>,
    /// Packs in the store.
    pub packs: usize,
    /// Objects in the index.
    pub objects: usize,
    /// Refs.
    pub refs: usize,
    /// Snapshots reached from the refs.
    pub snapshots: usize,
    /// Objects reached from the refs.
    pub reachable: usize,
}

/// Things the walk from refs finds, keyed by id with what reaches them.
pub struct Reach {
    pub seen: IdSet,
    pub snapshots: usize,
}

/// Checks the store.
pub fn fsck(store: &Store, opts: &FsckOptions, progress: &dyn Progress) -> Result<FsckReport> {
    let mut rep = FsckReport {
        packs: store.packs().len(),
        objects: store.object_count(),
        ..Default::default()
    };
    rep.errors.extend(store.load_warnings.iter().cloned());
    let (_, orphans) = store.list_pack_files()?;
    for p in orphans {
        rep.warnings.push(format!(
            "pack {} has no index (an interrupted write; `gc` removes it, `fsck --rebuild-index` indexes it)",
            p.short()
        ));
    }
    // Objects whose stored bytes are bad, with the reason.
    let mut bad: IdMap<String> = IdMap::default();
    if opts.read_data {
        progress.stage("checking packs");
        for pack in store.packs() {
            check_pack(store, &pack.name, &mut rep, &mut bad, progress)?;
        }
    }
    progress.stage("checking snapshots");
    let refs = store.list_refs()?;
    // What the refs reach was stored before they moved: packs another
    // process wrote since this one loaded the indexes are loaded now, so a
    // snapshot taken meanwhile is not reported missing (audit 22).
    rep.warnings.extend(store.refresh()?);
    rep.refs = refs.len();
    let mut walker = Walker::new(store, &bad);
    for (name, id) in &refs {
        walker.snapshot(id, &format!("ref {name}"));
    }
    rep.snapshots = walker.snapshots;
    rep.reachable = walker.seen.len();
    rep.errors.extend(walker.errors);
    rep.ok = rep.errors.is_empty();
    Ok(rep)
}

/// Checks the snapshots `ids` that refs are about to name, as `fsck` would
/// (trees and lists canonical, each chunk as long as its file's list says,
/// times in range; the data itself is verified as it arrives): objects
/// that decode and hash right may still not be a snapshot any restore can
/// read (audit round 18: a server, `bundle import` and `pull` moved refs to
/// such snapshots, after which fsck failed and gc was refused). History
/// stops at a snapshot a ref already names (checked when that ref moved).
/// `what` says where, in the error.
pub fn check_received(store: &Store, ids: &[ObjectId], what: &str) -> Result<()> {
    let bad = IdMap::default();
    let mut walker = Walker::new(store, &bad);
    let trusted: Vec<ObjectId> = store
        .list_refs()?
        .into_iter()
        .map(|(_, id)| id)
        .filter(|id| !ids.contains(id))
        .collect();
    walker.seen.extend(trusted);
    for id in ids {
        walker.snapshot(id, what);
    }
    match walker.errors.first() {
        None => Ok(()),
        Some(first) => {
            // (A path through a deep tree can be long.)
            let first = match first.char_indices().nth(400) {
                Some((at, _)) => format!("{}…", &first[..at]),
                None => first.clone(),
            };
            Err(SyncError::Invalid(format!(
                "{what}: snapshot {} does not check, no ref moved: {first}{}",
                ids.first().map(|i| i.short()).unwrap_or_default(),
                if walker.errors.len() > 1 {
                    format!(" (and {} more problems)", walker.errors.len() - 1)
                } else {
                    String::new()
                }
            )))
        }
    }
}

/// Reads a pack from start to end, verifying every record, the framing and
/// the checksum, and compares what it holds with its index.
fn check_pack(
    store: &Store,
    name: &ObjectId,
    rep: &mut FsckReport,
    bad: &mut IdMap<String>,
    progress: &dyn Progress,
) -> Result<()> {
    let path = store.pack_path(name);
    let idx_path = store.idx_path(name);
    let mut indexed: IdMap<IdxEntry> = IdMap::default();
    match store.backend().get(&Store::idx_key(name)) {
        Ok(Some(b)) => {
            // A damaged index was already reported by the store's loader.
            if let Ok((_, entries)) = index::decode(&b, &idx_path) {
                for e in entries {
                    indexed.insert(e.id, e);
                }
            }
        }
        Ok(None) => rep
            .errors
            .push(format!("pack {}: its index disappeared", name.short())),
        Err(e) => rep.errors.push(e.to_string()),
    }
    let f = match store.backend().open_read(&Store::pack_key(name)) {
        Ok(f) => f,
        Err(e) => {
            rep.errors
                .push(format!("pack {}: cannot open: {e}", name.short()));
            return Ok(());
        }
    };
    let mut verified = IdSet::default();
    let r = (|| -> Result<()> {
        let mut r = PackReader::new(f, path.display().to_string())?.with_blocks();
        while let Some(rec) = r.next_record()? {
            progress.add(0, rec.payload.len() as u64);
            let id = rec.id;
            match store.unpack(rec.tag, &id, rec.flags, rec.ulen, &rec.payload) {
                Ok(b) if rec.tag == ObjectType::Dict => {
                    crate::store::remember_dictionary(&id, &b);
                }
                Ok(_) => {}
                Err(e) => {
                    bad.insert(id, e.to_string());
                    continue;
                }
            }
            match indexed.get(&id) {
                Some(ix) if *ix == IdxEntry::of(&rec) => {
                    verified.insert(id);
                }
                Some(_) => {
                    bad.insert(
                        id,
                        format!(
                            "index entry of pack {} disagrees with the pack",
                            name.short()
                        ),
                    );
                }
                None => {}
            }
        }
        r.expect_eof()?;
        if r.trailer != Some(*name) {
            return Err(SyncError::corrupt_file(
                "pack",
                &path,
                "trailer does not match the pack's name",
            ));
        }
        Ok(())
    })();
    if let Err(e) = r {
        rep.errors.push(format!("pack {}: {e}", name.short()));
    }
    // Whatever the stream could not vouch for is read through the index.
    for (id, e) in &indexed {
        if verified.contains(id) || bad.contains_key(id) {
            continue;
        }
        let r = store.read_record(id).and_then(|(loc, payload)| {
            store.unpack(e.tag, id, loc.flags, u64::from(loc.ulen), &payload)
        });
        if let Err(err) = r {
            bad.insert(*id, err.to_string());
        }
    }
    Ok(())
}

/// Walks from snapshots down, reading and verifying every tree, list and
/// snapshot object; chunks are checked for presence (and against `bad`).
pub struct Walker<'a> {
    pub src: &'a dyn ObjectSource,
    pub store: &'a Store,
    pub seen: IdSet,
    pub errors: Vec<String>,
    pub bad: &'a IdMap<String>,
    pub check_chunks: bool,
    pub snapshots: usize,
    /// Map nodes read that may only be the last of their level (see
    /// [`crate::pmap::walk_nodes_with`]).
    pub open_ended: IdSet,
}

impl<'a> Walker<'a> {
    /// A walker over `store` that has seen nothing, checks chunks, and
    /// takes the objects in `bad` for damaged.
    pub fn new(store: &'a Store, bad: &'a IdMap<String>) -> Walker<'a> {
        Walker {
            src: store,
            store,
            seen: IdSet::default(),
            errors: Vec::new(),
            bad,
            check_chunks: true,
            snapshots: 0,
            open_ended: IdSet::default(),
        }
    }

    fn report(&mut self, tag: ObjectType, id: &ObjectId, what: &str, ctx: &str) {
        let place = match self.store.location(id) {
            Some(l) => format!(
                " (pack {} offset {})",
                self.store.pack_name(l.pack).unwrap_or_default().short(),
                l.offset
            ),
            None => String::new(),
        };
        self.errors
            .push(format!("{tag} {id}{place}: {what}; reached from {ctx}"));
    }

    /// A file's chunk: present, a chunk, and as long as the file's list
    /// says (its stored length is in the index: no data is read). Checked
    /// for every reference, since two files may give one chunk two lengths.
    fn chunk(&mut self, id: &ObjectId, len: u64, ctx: &str) {
        let first = self.seen.insert(*id);
        if !self.check_chunks || (!first && self.bad.contains_key(id)) {
            return;
        }
        if first && !self.check_present(ObjectType::Chunk, id, ctx) {
            return;
        }
        if let Some(l) = self.store.location(id)
            && l.tag == ObjectType::Chunk
            && u64::from(l.ulen) != len
        {
            self.report(
                ObjectType::Chunk,
                id,
                &format!(
                    "holds {} bytes where its file's chunk list says {len}",
                    l.ulen
                ),
                ctx,
            );
        }
    }

    fn check_present(&mut self, tag: ObjectType, id: &ObjectId, ctx: &str) -> bool {
        if let Some(why) = self.bad.get(id) {
            let why = why.clone();
            self.report(tag, id, &why, ctx);
            return false;
        }
        match self.store.location(id) {
            None => {
                self.report(tag, id, "missing", ctx);
                false
            }
            Some(l) if l.tag != tag => {
                self.report(
                    tag,
                    id,
                    &format!(
                        "referenced as a {tag}, but the object stored is a {}",
                        l.tag
                    ),
                    ctx,
                );
                false
            }
            Some(_) => true,
        }
    }

    pub fn snapshot(&mut self, id: &ObjectId, ctx: &str) {
        let mut next = Some((*id, ctx.to_string()));
        while let Some((id, ctx)) = next.take() {
            if !self.seen.insert(id) {
                return;
            }
            if !self.check_present(ObjectType::Snapshot, &id, &ctx) {
                return;
            }
            let snap = match load_snapshot(self.src, &id) {
                Ok(s) => s,
                Err(e) => {
                    self.report(ObjectType::Snapshot, &id, &e.to_string(), &ctx);
                    return;
                }
            };
            self.snapshots += 1;
            let sctx = format!("{ctx} → snapshot {}", id.short());
            if let Some(root) = snap.root {
                self.tree(&root, &sctx, b"");
            }
            for (name, t) in &snap.tables {
                self.table(t, name, &format!("{sctx} table {name}"));
            }
            // Parents after the snapshot itself, iteratively (long histories).
            for p in snap.parents.iter().skip(1) {
                self.snapshot(p, &format!("{sctx} (parent)"));
            }
            if let Some(p) = snap.parents.first() {
                next = Some((*p, format!("{sctx} (parent)")));
            }
        }
    }

    /// Walks a directory tree iteratively (a hostile store may nest
    /// directories arbitrarily deep: no recursion, and a clear error past
    /// [`MAX_TREE_DEPTH`]). The root's entries' times are absolute.
    pub(crate) fn tree(&mut self, root: &ObjectId, ctx: &str, path: &[u8]) {
        let mut work: Vec<(ObjectId, Vec<u8>, usize, Timestamp)> =
            vec![(*root, path.to_vec(), 0, Timestamp::ZERO)];
        while let Some((id, path, depth, time)) = work.pop() {
            if depth > MAX_TREE_DEPTH {
                let here = format!("{ctx} path {}", shown(&path));
                self.report(ObjectType::Tree, &id, &too_deep(&path).to_string(), &here);
                continue;
            }
            let subdirs = self.tree_node(&id, ctx, &path, time);
            for (p, t, time) in subdirs.into_iter().rev() {
                work.push((t, p, depth + 1, time));
            }
        }
    }

    /// Checks one directory (its map nodes, entries and files' contents;
    /// `time`: the directory's mtime, which relative times are added to);
    /// returns its subdirectories and their times. A directory reached
    /// again (by id) is not checked again, whatever its time.
    fn tree_node(
        &mut self,
        root: &ObjectId,
        ctx: &str,
        path: &[u8],
        time: Timestamp,
    ) -> Vec<(Vec<u8>, ObjectId, Timestamp)> {
        let mut subdirs: Vec<(Vec<u8>, ObjectId, Timestamp)> = Vec::new();
        if self.seen.contains(root) {
            return subdirs;
        }
        if !self.check_present(
            ObjectType::Tree,
            root,
            &format!("{ctx} path {}", shown(path)),
        ) {
            self.seen.insert(*root);
            return subdirs;
        }
        let mut contents: Vec<(Vec<u8>, u64, Content)> = Vec::new();
        let mut node_errors: Vec<(ObjectId, String)> = Vec::new();
        let mut seen = std::mem::take(&mut self.seen);
        let bad = self.bad;
        let store = self.store;
        let mut open_ended = std::mem::take(&mut self.open_ended);
        let r = crate::pmap::walk_nodes_with(
            self.src,
            ObjectType::Tree,
            root,
            &mut open_ended,
            |id| {
                node_visit(
                    store,
                    bad,
                    &mut seen,
                    &mut node_errors,
                    ObjectType::Tree,
                    id,
                )
                .0
            },
            |name, value| {
                let e = decode_entry(root, name, value, time)?;
                let mut p = path.to_vec();
                if !p.is_empty() {
                    p.push(b'/');
                }
                p.extend_from_slice(name);
                match e.kind {
                    EntryKind::Dir { tree } => subdirs.push((p, tree, e.mtime)),
                    EntryKind::File { size, content } => contents.push((p, size, content)),
                    EntryKind::Symlink { .. } => {}
                }
                Ok(())
            },
        );
        self.seen = seen;
        self.open_ended = open_ended;
        let here = format!("{ctx} path {}", shown(path));
        for (id, why) in node_errors {
            self.report(ObjectType::Tree, &id, &why, &here);
        }
        if let Err(e) = r {
            self.errors.push(format!("{e}; reached from {here}"));
        }
        for (p, size, content) in contents {
            let fctx = format!("{ctx} path {}", shown(&p));
            self.content(&content, size, &fctx);
        }
        subdirs
    }

    /// A table object, its row map, and the large values its rows keep in
    /// chunks. Every row is decoded; keys must decode and rows have the
    /// table's width.
    pub(crate) fn table(&mut self, id: &ObjectId, name: &str, ctx: &str) {
        if !self.seen.insert(*id) {
            return;
        }
        if !self.check_present(ObjectType::Table, id, ctx) {
            return;
        }
        let t = match crate::db::load_table(self.src, id) {
            Ok(t) => t,
            Err(e) => {
                self.report(ObjectType::Table, id, &e.to_string(), ctx);
                return;
            }
        };
        if t.name != name {
            self.report(
                ObjectType::Table,
                id,
                &format!("the table object is named {:?}", t.name),
                ctx,
            );
        }
        let Some(data) = t.table else { return };
        if self.seen.contains(&data.root) {
            return;
        }
        let mut contents: Vec<(u64, Content)> = Vec::new();
        let mut node_errors: Vec<(ObjectId, String)> = Vec::new();
        let mut seen = std::mem::take(&mut self.seen);
        let bad = self.bad;
        let store = self.store;
        let mut rows: u64 = 0;
        let mut partial = false;
        let width = data.row_width();
        let root = data.root;
        let src = self.src;
        let mut open_ended = std::mem::take(&mut self.open_ended);
        let r = crate::pmap::walk_nodes_with(
            self.src,
            ObjectType::Rows,
            &root,
            &mut open_ended,
            |nid| {
                // A subtree already checked (shared with another table
                // version) is not walked again.
                let (go, again) = node_visit(
                    store,
                    bad,
                    &mut seen,
                    &mut node_errors,
                    ObjectType::Rows,
                    nid,
                );
                partial |= again;
                go
            },
            |k, v| {
                rows += 1;
                crate::db::value::decode_key(k)
                    .map_err(|e| corrupt(ObjectType::Rows, &root, format!("bad key: {e}")))?;
                let cells = crate::object::row::decode_row(v)
                    .map_err(|e| corrupt(ObjectType::Rows, &root, format!("bad row: {e}")))?;
                if cells.len() != width {
                    return Err(corrupt(
                        ObjectType::Rows,
                        &root,
                        format!("a row of {} values in a table of {width}", cells.len()),
                    ));
                }
                check_row_key(src, &data, k, &cells)
                    .map_err(|e| corrupt(ObjectType::Rows, &root, e))?;
                for c in cells {
                    if let crate::object::row::Cell::Large { size, content, .. } = c {
                        contents.push((size, content));
                    }
                }
                Ok(())
            },
        );
        self.seen = seen;
        self.open_ended = open_ended;
        for (nid, why) in node_errors {
            self.report(ObjectType::Rows, &nid, &why, ctx);
        }
        match r {
            Err(e) => self.errors.push(format!("{e}; reached from {ctx}")),
            Ok(()) if !partial && rows != data.rows => self.report(
                ObjectType::Table,
                id,
                &format!("says {} rows, its map holds {rows}", data.rows),
                ctx,
            ),
            Ok(()) => {}
        }
        for (size, content) in contents {
            self.content(&content, size, ctx);
        }
    }

    fn content(&mut self, c: &Content, size: u64, ctx: &str) {
        match c {
            Content::Inline(v) => {
                for ch in v {
                    self.chunk(&ch.id, ch.len, ctx);
                }
            }
            Content::Indirect { level, root } => {
                let present = self
                    .store
                    .location(root)
                    .is_some_and(|l| l.tag == ObjectType::List);
                if !self.seen.contains(root) && present && !self.bad.contains_key(root) {
                    // A list of at most MAX_INLINE chunks is stored inline:
                    // the same file must not have two ids. (A damaged list
                    // is reported by the walk below.)
                    let first: Result<Vec<_>> = ListIter::new(self.src, *level, *root, size)
                        .take(MAX_INLINE + 1)
                        .collect();
                    if let Ok(first) = first
                        && first.len() <= MAX_INLINE
                    {
                        let n = first.len();
                        self.report(
                            ObjectType::List,
                            root,
                            &format!(
                                "not canonical: a list of {n} chunks (at most {MAX_INLINE} are stored inline)"
                            ),
                            ctx,
                        );
                    }
                }
                self.list(*level, root, size, ctx, true, true)
            }
        }
    }

    fn list(
        &mut self,
        level: u8,
        id: &ObjectId,
        size: u64,
        ctx: &str,
        is_root: bool,
        rightmost: bool,
    ) {
        if !self.seen.insert(*id) {
            return;
        }
        if !self.check_present(ObjectType::List, id, ctx) {
            return;
        }
        let node = match self
            .src
            .get(ObjectType::List, id)
            .and_then(|b| ListNode::decode(&b).map_err(|e| corrupt(ObjectType::List, id, e)))
        {
            Ok(n) => n,
            Err(e) => {
                self.report(ObjectType::List, id, &e.to_string(), ctx);
                return;
            }
        };
        if node.level != level || node.total() != size {
            self.report(
                ObjectType::List,
                id,
                "level or size differs from what references it",
                ctx,
            );
            return;
        }
        if let Err(why) = check_list_canonical(&node, is_root, rightmost) {
            self.report(ObjectType::List, id, &why, ctx);
        }
        let n = node.entries.len();
        for (i, e) in node.entries.iter().enumerate() {
            if level == 0 {
                self.chunk(&e.id, e.len, ctx);
            } else {
                self.list(level - 1, &e.id, e.len, ctx, false, rightmost && i + 1 == n);
            }
        }
    }
}

fn shown(p: &[u8]) -> String {
    if p.is_empty() {
        "/".to_string()
    } else {
        String::from_utf8_lossy(p).into_owned()
    }
}

/// Whether a map walk should open node `id`: not if it is damaged, missing,
/// of another type (reported in `errors`) or already seen. Returns (open it,
/// it was seen before).
fn node_visit(
    store: &Store,
    bad: &IdMap<String>,
    seen: &mut IdSet,
    errors: &mut Vec<(ObjectId, String)>,
    tag: ObjectType,
    id: &ObjectId,
) -> (bool, bool) {
    if let Some(why) = bad.get(id) {
        errors.push((*id, why.clone()));
        return (false, false);
    }
    match store.location(id) {
        None => {
            errors.push((*id, "missing".into()));
            return (false, false);
        }
        Some(l) if l.tag != tag => {
            errors.push((
                *id,
                format!(
                    "referenced as a {tag}, but the object stored is a {}",
                    l.tag
                ),
            ));
            return (false, false);
        }
        Some(_) => {}
    }
    let first = seen.insert(*id);
    (first, !first)
}

/// A row map's key must be what the writer derives from the row: the key
/// columns' values (and the rowid after them when one is NULL), or the
/// rowid alone for a table without a declared key. Restore trusts the row,
/// diff and lookups the key: they must agree.
pub fn check_row_key(
    src: &dyn ObjectSource,
    t: &crate::object::table::TableData,
    key: &[u8],
    cells: &[crate::object::row::Cell],
) -> std::result::Result<(), String> {
    use crate::db::value::{Cell, Value, encode_key};
    let rowid = if t.rowid_in_row() {
        match cells.first() {
            Some(Cell::Value(Value::Integer(r))) => Some(*r),
            _ => return Err("a row whose rowid is not an integer".into()),
        }
    } else {
        None
    };
    let off = usize::from(t.rowid_in_row());
    let want = if t.key.is_empty() {
        match rowid {
            // The key is the rowid itself, which the row does not repeat.
            None => return Ok(()),
            Some(r) => vec![Value::Integer(r)],
        }
    } else {
        let mut vals = Vec::with_capacity(t.key.len() + 1);
        let mut null = false;
        for &k in &t.key {
            let cell = cells
                .get(off + k as usize)
                .ok_or_else(|| format!("key column {k} beyond the row's {} values", cells.len()))?;
            let v = cell.load(src).map_err(|e| e.to_string())?;
            null |= matches!(v, Value::Null);
            vals.push(v);
        }
        if null && !t.without_rowid() {
            match rowid {
                Some(r) => vals.push(Value::Integer(r)),
                None => return Err("a NULL key in a row without its rowid".into()),
            }
        }
        vals
    };
    match encode_key(&want) {
        Ok(k) if k == key => Ok(()),
        _ => Err(format!(
            "a row-map key that disagrees with its row's key columns ({})",
            t.key_names().join(", ")
        )),
    }
}

/// Rewrites the index of every pack from the pack itself. A damaged pack
/// gets an index of the objects before the damage, and an error.
pub fn rebuild_index(store: &Store, progress: &dyn Progress) -> Result<Vec<String>> {
    let (with, without) = store.list_pack_files()?;
    let mut problems = Vec::new();
    // Dictionaries first, from every pack: a record may use a dictionary
    // stored in a pack that comes later in this order.
    progress.stage("finding dictionaries");
    for name in with.iter().chain(without.iter()) {
        let Ok(f) = store.backend().open_read(&Store::pack_key(name)) else {
            continue;
        };
        let path = store.pack_path(name);
        let _ = (|| -> Result<()> {
            let mut r = PackReader::new(f, path.display().to_string())?.with_blocks();
            while let Some(rec) = r.next_record()? {
                if rec.tag == ObjectType::Dict
                    && let Ok(b) = store.unpack(rec.tag, &rec.id, rec.flags, rec.ulen, &rec.payload)
                {
                    crate::store::remember_dictionary(&rec.id, &b);
                }
            }
            Ok(())
        })();
    }
    for name in with.iter().chain(without.iter()) {
        progress.stage(&format!("indexing pack {}", name.short()));
        let path = store.pack_path(name);
        let f = match store.backend().open_read(&Store::pack_key(name)) {
            Ok(f) => f,
            Err(e) => {
                problems.push(format!("pack {}: {e}", name.short()));
                continue;
            }
        };
        let mut entries = Vec::new();
        // This pack's records read so far: a stored delta's base may be one.
        let mut here: crate::id::IdMap<IdxEntry> = Default::default();
        let r = (|| -> Result<()> {
            let mut r = PackReader::new(f, path.display().to_string())?.with_blocks();
            while let Some(rec) = r.next_record()? {
                let here_entry = IdxEntry::of(&rec);
                match store.unpack_in_pack(
                    rec.tag,
                    &rec.id,
                    rec.flags,
                    rec.ulen,
                    &rec.payload,
                    (name, &here),
                ) {
                    Ok(b) if rec.tag == ObjectType::Dict => {
                        crate::store::remember_dictionary(&rec.id, &b);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        problems.push(format!(
                            "pack {}: {e} (left out of the index)",
                            name.short()
                        ));
                        continue;
                    }
                }
                here.insert(rec.id, here_entry);
                entries.push(here_entry);
            }
            r.expect_eof()?;
            if r.trailer != Some(*name) {
                return Err(SyncError::corrupt_file(
                    "pack",
                    &path,
                    "trailer does not match the pack's name",
                ));
            }
            Ok(())
        })();
        if let Err(e) = r {
            problems.push(format!("pack {}: {e}", name.short()));
        }
        entries.sort_by_key(|e| e.id);
        entries.dedup_by(|a, b| a.id == b.id);
        let bytes = index::encode(name, &mut entries);
        store.backend().put(&Store::idx_key(name), &bytes)?;
    }
    Ok(problems)
}
