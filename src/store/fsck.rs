//! Checking a store: every pack and index, and every object reachable from
//! every ref. Damage is reported with the object, where it is stored and
//! what reaches it; checking goes on past the first problem.

use serde::Serialize;

use super::Store;
use super::index::{self, IdxEntry};
use crate::error::{Result, SyncError};
use crate::id::{IdMap, IdSet, ObjectId, ObjectType};
use crate::names::load_snapshot;
use crate::object::list::ListNode;
use crate::object::tree::{Content, EntryKind, decode_entry};
use crate::object::{ObjectSource, corrupt};
use crate::pack::PackReader;
use crate::progress::Progress;

#[derive(Debug, Clone, Default)]
pub struct FsckOptions {
    /// Re-hash every stored object and check every pack's checksum.
    pub read_data: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct FsckReport {
    pub ok: bool,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    pub packs: usize,
    pub objects: usize,
    pub refs: usize,
    pub snapshots: usize,
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
    rep.refs = refs.len();
    let mut walker = Walker {
        src: store,
        store,
        seen: IdSet::default(),
        errors: Vec::new(),
        bad: &bad,
        check_chunks: true,
        snapshots: 0,
    };
    for (name, id) in &refs {
        walker.snapshot(id, &format!("ref {name}"));
    }
    rep.snapshots = walker.snapshots;
    rep.reachable = walker.seen.len();
    rep.errors.extend(walker.errors);
    rep.ok = rep.errors.is_empty();
    Ok(rep)
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
        let mut r = PackReader::new(f, path.display().to_string())?;
        while let Some(rec) = r.next_record()? {
            progress.add(0, rec.payload.len() as u64);
            let id = rec.id;
            if let Err(e) = rec.verify() {
                bad.insert(id, e.to_string());
                continue;
            }
            match indexed.get(&id) {
                Some(ix)
                    if ix.offset == rec.offset
                        && ix.tag == rec.tag
                        && ix.flags == rec.flags
                        && u64::from(ix.ulen) == rec.ulen
                        && ix.clen as usize == rec.payload.len() =>
                {
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
        let r = store.read_raw(id).and_then(|(loc, payload)| {
            crate::pack::unpack(e.tag, id, loc.flags, u64::from(loc.ulen), &payload)
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
}

impl Walker<'_> {
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

    fn check_present(&mut self, tag: ObjectType, id: &ObjectId, ctx: &str) -> bool {
        if let Some(why) = self.bad.get(id) {
            let why = why.clone();
            self.report(tag, id, &why, ctx);
            return false;
        }
        if !self.store.contains(id) {
            self.report(tag, id, "missing", ctx);
            return false;
        }
        true
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

    fn tree(&mut self, root: &ObjectId, ctx: &str, path: &[u8]) {
        let shown = |p: &[u8]| {
            if p.is_empty() {
                "/".to_string()
            } else {
                String::from_utf8_lossy(p).into_owned()
            }
        };
        if self.seen.contains(root) {
            return;
        }
        if !self.check_present(
            ObjectType::Tree,
            root,
            &format!("{ctx} path {}", shown(path)),
        ) {
            self.seen.insert(*root);
            return;
        }
        let mut subdirs: Vec<(Vec<u8>, ObjectId)> = Vec::new();
        let mut contents: Vec<(Vec<u8>, u64, Content)> = Vec::new();
        let mut node_errors: Vec<(ObjectId, String)> = Vec::new();
        let mut seen = std::mem::take(&mut self.seen);
        let bad = self.bad;
        let store = self.store;
        let r = crate::pmap::walk_nodes(
            self.src,
            ObjectType::Tree,
            root,
            |id| {
                if let Some(why) = bad.get(id) {
                    node_errors.push((*id, why.clone()));
                    return false;
                }
                if !store.contains(id) {
                    node_errors.push((*id, "missing".into()));
                    return false;
                }
                seen.insert(*id)
            },
            |name, value| {
                let e = decode_entry(root, name, value)?;
                let mut p = path.to_vec();
                if !p.is_empty() {
                    p.push(b'/');
                }
                p.extend_from_slice(name);
                match e.kind {
                    EntryKind::Dir { tree } => subdirs.push((p, tree)),
                    EntryKind::File { size, content } => contents.push((p, size, content)),
                    EntryKind::Symlink { .. } => {}
                }
                Ok(())
            },
        );
        self.seen = seen;
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
        for (p, t) in subdirs {
            self.tree(&t, ctx, &p);
        }
    }

    /// A table object, its row map, and the large values its rows keep in
    /// chunks. Every row is decoded; keys must decode and rows have the
    /// table's width.
    fn table(&mut self, id: &ObjectId, name: &str, ctx: &str) {
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
        let r = crate::pmap::walk_nodes(
            self.src,
            ObjectType::Rows,
            &root,
            |nid| {
                if let Some(why) = bad.get(nid) {
                    node_errors.push((*nid, why.clone()));
                    return false;
                }
                if !store.contains(nid) {
                    node_errors.push((*nid, "missing".into()));
                    return false;
                }
                // A subtree already checked (shared with another table
                // version) is not walked again.
                let first = seen.insert(*nid);
                partial |= !first;
                first
            },
            |k, v| {
                rows += 1;
                crate::db::value::decode_key(k)
                    .map_err(|e| corrupt(ObjectType::Rows, &root, format!("bad key: {e}")))?;
                let cells = crate::db::value::decode_row(v)
                    .map_err(|e| corrupt(ObjectType::Rows, &root, format!("bad row: {e}")))?;
                if cells.len() != width {
                    return Err(corrupt(
                        ObjectType::Rows,
                        &root,
                        format!("a row of {} values in a table of {width}", cells.len()),
                    ));
                }
                for c in cells {
                    if let crate::db::value::Cell::Large { size, content, .. } = c {
                        contents.push((size, content));
                    }
                }
                Ok(())
            },
        );
        self.seen = seen;
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
                    if self.seen.insert(ch.id) && self.check_chunks {
                        self.check_present(ObjectType::Chunk, &ch.id, ctx);
                    }
                }
            }
            Content::Indirect { level, root } => self.list(*level, root, size, ctx),
        }
    }

    fn list(&mut self, level: u8, id: &ObjectId, size: u64, ctx: &str) {
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
        for e in &node.entries {
            if level == 0 {
                if self.seen.insert(e.id) && self.check_chunks {
                    self.check_present(ObjectType::Chunk, &e.id, ctx);
                }
            } else {
                self.list(level - 1, &e.id, e.len, ctx);
            }
        }
    }
}

/// Rewrites the index of every pack from the pack itself. A damaged pack
/// gets an index of the objects before the damage, and an error.
pub fn rebuild_index(store: &Store, progress: &dyn Progress) -> Result<Vec<String>> {
    let (with, without) = store.list_pack_files()?;
    let mut problems = Vec::new();
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
        let r = (|| -> Result<()> {
            let mut r = PackReader::new(f, path.display().to_string())?;
            while let Some(rec) = r.next_record()? {
                if let Err(e) = rec.verify() {
                    problems.push(format!(
                        "pack {}: {e} (left out of the index)",
                        name.short()
                    ));
                    continue;
                }
                entries.push(IdxEntry {
                    id: rec.id,
                    tag: rec.tag,
                    flags: rec.flags,
                    offset: rec.offset,
                    clen: rec.payload.len() as u32,
                    ulen: rec.ulen as u32,
                });
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
