//! Offline bundles: one self-verifying file that carries snapshots from one
//! store to another without a network (`store-format.md` §13).
//!
//! ```text
//! header:  magic "SPSYNCBD" | version=1 | [objects] parameters | refs | prerequisites
//! body:    the pack stream of §6 (the same records a push sends), children first
//! trailer: BLAKE3 of every preceding byte of the file [32]
//! ```
//!
//! A bundle holds what a push to a store that has exactly its prerequisites
//! (and everything they reach) would send: an incremental bundle
//! (`--since SNAP`) omits every object reachable from them. Creating writes
//! as it walks, and reading (verify, import, `pull FILE`) reads as a
//! stream: a bundle of any size is never held in memory. An import stores
//! objects only after checking each one (hash, and that everything it
//! references is stored or came earlier), and moves refs only after the
//! trailer has been checked: a truncated or damaged bundle moves no ref.

use std::io::{BufReader, Read, Write};
use std::path::Path;

use serde::Serialize;

use crate::codec::put_varint;
use crate::error::{Result, SyncError};
use crate::id::{IdMap, IdSet, ObjectId, ObjectType};
use crate::object::{ObjectSource, references};
use crate::pack::{FLAG_DELTA, PackReader, PackWriter, StoredObject};
use crate::progress::Progress;
use crate::store::{NodeRecord, ObjectParams, Store};
use crate::transfer::RefUpdate;

/// The first eight bytes of every bundle.
pub const BUNDLE_MAGIC: &[u8; 8] = b"SPSYNCBD";
/// The bundle format version this build writes and reads.
pub const BUNDLE_VERSION: u8 = 1;
/// At most this many refs in one bundle.
pub const MAX_REFS: u64 = 65_536;
/// At most this many prerequisites in one bundle.
pub const MAX_PREREQUISITES: u64 = 65_536;
/// The longest `map_rule` string a header may hold.
const MAX_RULE: u64 = 64;
/// The longest ref name (as in `refs.rs`).
const MAX_REF_NAME: u64 = 255;
/// Objects are committed to the importing store every this many bytes.
const IMPORT_COMMIT_EVERY: u64 = crate::remote::COMMIT_EVERY * 4;

/// A bundle's header: who made its objects, what it carries, what it assumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleHeader {
    /// The `[objects]` parameters of the store that made it: a store whose
    /// parameters differ would give the same directory or table another id,
    /// so an import refuses a bundle whose parameters are not its own.
    pub objects: ObjectParams,
    /// Ref name → snapshot id, sorted by name, names unique.
    pub refs: Vec<(String, ObjectId)>,
    /// Snapshots the importing store must hold, sorted, unique. Nothing
    /// reachable from them is in the bundle.
    pub prerequisites: Vec<ObjectId>,
}

fn put_node(b: &mut Vec<u8>, n: &NodeRecord) {
    for v in [n.min, n.target, n.max, n.min_entries] {
        put_varint(b, v);
    }
}

fn put_params(b: &mut Vec<u8>, p: &ObjectParams) {
    put_varint(b, p.map_rule.len() as u64);
    b.extend_from_slice(p.map_rule.as_bytes());
    for n in [
        &p.tree_leaf,
        &p.tree_internal,
        &p.rows_leaf,
        &p.rows_internal,
    ] {
        put_node(b, n);
    }
    for v in [
        p.list_min_entries,
        p.list_max_entries,
        u64::from(p.list_threshold),
        p.inline_chunks,
        p.inline_value,
    ] {
        put_varint(b, v);
    }
}

impl BundleHeader {
    /// The header's bytes, from the magic to the last prerequisite.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = BUNDLE_MAGIC.to_vec();
        b.push(BUNDLE_VERSION);
        put_params(&mut b, &self.objects);
        put_varint(&mut b, self.refs.len() as u64);
        for (name, id) in &self.refs {
            put_varint(&mut b, name.len() as u64);
            b.extend_from_slice(name.as_bytes());
            b.extend_from_slice(&id.0);
        }
        put_varint(&mut b, self.prerequisites.len() as u64);
        for p in &self.prerequisites {
            b.extend_from_slice(&p.0);
        }
        b
    }

    /// Reads a header from the start of `inp`, consuming exactly its bytes.
    /// `what` names the bundle in errors. Refuses anything but the one
    /// canonical encoding: overlong varints, unsorted or repeated refs and
    /// prerequisites, invalid ref names, counts past the limits.
    pub fn decode(inp: &mut dyn Read, what: &str) -> Result<BundleHeader> {
        let mut r = HeadReader { inp, pos: 0, what };
        let mut magic = [0u8; 8];
        r.exact(&mut magic)?;
        if &magic != BUNDLE_MAGIC {
            return Err(bad(what, 0, "not a bundle (bad magic)"));
        }
        let v = r.byte()?;
        if v != BUNDLE_VERSION {
            return Err(bad(
                what,
                8,
                format!(
                    "unsupported bundle version {v} (this sp-sync reads version {BUNDLE_VERSION})"
                ),
            ));
        }
        let rule_at = r.pos;
        let rule = r.bytes(MAX_RULE, "map rule")?;
        let map_rule =
            String::from_utf8(rule).map_err(|_| bad(what, rule_at, "map rule is not UTF-8"))?;
        let mut nodes = [NodeRecord {
            min: 0,
            target: 0,
            max: 0,
            min_entries: 0,
        }; 4];
        for n in &mut nodes {
            n.min = r.varint()?;
            n.target = r.varint()?;
            n.max = r.varint()?;
            n.min_entries = r.varint()?;
        }
        let list_min_entries = r.varint()?;
        let list_max_entries = r.varint()?;
        let at = r.pos;
        let list_threshold = u32::try_from(r.varint()?)
            .map_err(|_| bad(what, at, "list threshold exceeds 32 bits"))?;
        let inline_chunks = r.varint()?;
        let inline_value = r.varint()?;
        let objects = ObjectParams {
            map_rule,
            tree_leaf: nodes[0],
            tree_internal: nodes[1],
            rows_leaf: nodes[2],
            rows_internal: nodes[3],
            list_min_entries,
            list_max_entries,
            list_threshold,
            inline_chunks,
            inline_value,
        };
        let at = r.pos;
        let n = r.varint()?;
        if n > MAX_REFS {
            return Err(bad(
                what,
                at,
                format!("{n} refs exceed the limit of {MAX_REFS}"),
            ));
        }
        let mut refs: Vec<(String, ObjectId)> = Vec::new();
        for _ in 0..n {
            let at = r.pos;
            let name = String::from_utf8(r.bytes(MAX_REF_NAME, "ref name")?)
                .map_err(|_| bad(what, at, "ref name is not UTF-8"))?;
            crate::store::refs::validate_ref_name(&name)
                .map_err(|e| bad(what, at, e.to_string()))?;
            if refs.last().is_some_and(|(last, _)| *last >= name) {
                return Err(bad(what, at, "refs are not sorted and unique"));
            }
            let id = r.id()?;
            refs.push((name, id));
        }
        let at = r.pos;
        let n = r.varint()?;
        if n > MAX_PREREQUISITES {
            return Err(bad(
                what,
                at,
                format!("{n} prerequisites exceed the limit of {MAX_PREREQUISITES}"),
            ));
        }
        let mut prerequisites: Vec<ObjectId> = Vec::new();
        for _ in 0..n {
            let at = r.pos;
            let id = r.id()?;
            if prerequisites.last().is_some_and(|last| *last >= id) {
                return Err(bad(what, at, "prerequisites are not sorted and unique"));
            }
            prerequisites.push(id);
        }
        Ok(BundleHeader {
            objects,
            refs,
            prerequisites,
        })
    }
}

/// Reads a header byte by byte, tracking the offset for errors.
struct HeadReader<'a> {
    inp: &'a mut dyn Read,
    pos: u64,
    what: &'a str,
}

impl HeadReader<'_> {
    fn exact(&mut self, buf: &mut [u8]) -> Result<()> {
        read_exact(self.inp, buf, self.what, self.pos)?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn byte(&mut self) -> Result<u8> {
        let mut b = [0u8; 1];
        self.exact(&mut b)?;
        Ok(b[0])
    }

    fn id(&mut self) -> Result<ObjectId> {
        let mut b = [0u8; 32];
        self.exact(&mut b)?;
        Ok(ObjectId(b))
    }

    fn varint(&mut self) -> Result<u64> {
        let start = self.pos;
        let mut v: u64 = 0;
        let mut shift = 0u32;
        loop {
            let b = self.byte()?;
            if shift == 63 && b > 1 {
                return Err(bad(self.what, start, "varint overflows 64 bits"));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                if b == 0 && shift > 0 {
                    return Err(bad(self.what, start, "overlong varint"));
                }
                return Ok(v);
            }
            shift += 7;
        }
    }

    fn bytes(&mut self, max: u64, field: &str) -> Result<Vec<u8>> {
        let at = self.pos;
        let n = self.varint()?;
        if n > max {
            return Err(bad(
                self.what,
                at,
                format!("{field} of {n} bytes exceeds the limit of {max}"),
            ));
        }
        let mut b = vec![0u8; n as usize];
        self.exact(&mut b)?;
        Ok(b)
    }
}

fn bad(what: &str, offset: u64, reason: impl Into<String>) -> SyncError {
    SyncError::corrupt_file(
        "bundle",
        what,
        format!("{} at byte {offset}", reason.into()),
    )
}

fn read_exact(r: &mut dyn Read, buf: &mut [u8], what: &str, offset: u64) -> Result<()> {
    match r.read_exact(buf) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(bad(what, offset, "truncated (unexpected end of file)"))
        }
        Err(e) => Err(SyncError::io("reading", what, e)),
    }
}

/// A reader that hashes and counts what passes through it.
struct HashRead<R> {
    inner: R,
    hasher: blake3::Hasher,
    pos: u64,
}

impl<R: Read> Read for HashRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.pos += n as u64;
        Ok(n)
    }
}

/// A writer that hashes and counts what passes through it.
struct HashWrite<W> {
    inner: W,
    hasher: blake3::Hasher,
    pos: u64,
}

impl<W: Write> Write for HashWrite<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Reads a bundle as a stream: the header at once, then one object at a
/// time; the end is reported only after the trailer has been checked and
/// nothing follows it. Framing, the trailer, repeated objects and delta
/// records are checked here; each object's own bytes are checked by whoever
/// uses it (`Record::verify`, `Store::receive`).
pub struct BundleReader<R: Read> {
    header: BundleHeader,
    pack: Option<PackReader<HashRead<BufReader<R>>>>,
    base: u64,
    what: String,
    seen: IdSet,
    objects: u64,
    object_bytes: u64,
    bytes: u64,
    trailer: Option<ObjectId>,
}

impl<R: Read> BundleReader<R> {
    /// Reads the header and the start of the pack stream.
    pub fn open(inp: R, what: impl Into<String>) -> Result<Self> {
        let what = what.into();
        let mut src = HashRead {
            inner: BufReader::with_capacity(1 << 20, inp),
            hasher: blake3::Hasher::new(),
            pos: 0,
        };
        let header = BundleHeader::decode(&mut src, &what)?;
        let base = src.pos;
        let pack = PackReader::new_in(src, what.clone(), "bundle", base)?;
        Ok(BundleReader {
            header,
            pack: Some(pack),
            base,
            what,
            seen: IdSet::default(),
            objects: 0,
            object_bytes: 0,
            bytes: 0,
            trailer: None,
        })
    }

    /// The header.
    pub fn header(&self) -> &BundleHeader {
        &self.header
    }

    /// Objects read so far.
    pub fn objects(&self) -> u64 {
        self.objects
    }

    /// Their payload bytes (as stored, compressed).
    pub fn object_bytes(&self) -> u64 {
        self.object_bytes
    }

    /// The bundle's size, once its end was read.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The trailer hash, once checked.
    pub fn trailer(&self) -> Option<ObjectId> {
        self.trailer
    }

    /// The next object as stored, or None after the verified end.
    pub fn next_object(&mut self) -> Result<Option<StoredObject>> {
        let Some(pack) = self.pack.as_mut() else {
            return Ok(None);
        };
        if let Some(rec) = pack.next_record()? {
            let at = self.base + rec.offset;
            if rec.flags == FLAG_DELTA {
                return Err(bad(
                    &self.what,
                    at,
                    "a delta record (a bundle carries whole objects)",
                ));
            }
            if rec.flags == crate::pack::FLAG_DICT {
                return Err(bad(
                    &self.what,
                    at,
                    "a dictionary record (a bundle carries objects compressed alone)",
                ));
            }
            if !self.seen.insert(rec.id) {
                return Err(bad(
                    &self.what,
                    at,
                    format!("object {} appears twice", rec.id),
                ));
            }
            self.objects += 1;
            self.object_bytes += rec.payload.len() as u64;
            return Ok(Some(rec.into_stored()));
        }
        // The pack stream ended (its own trailer checked): the bundle's.
        let Some(pack) = self.pack.take() else {
            return Ok(None);
        };
        let src = pack.into_inner();
        let expect = ObjectId(*src.hasher.finalize().as_bytes());
        let at = src.pos;
        let mut inner = src.inner;
        let mut sum = [0u8; 32];
        read_exact(&mut inner, &mut sum, &self.what, at)?;
        if sum != expect.0 {
            return Err(bad(&self.what, at, "bundle trailer checksum mismatch"));
        }
        let mut b = [0u8; 1];
        loop {
            match inner.read(&mut b) {
                Ok(0) => break,
                Ok(_) => {
                    return Err(bad(
                        &self.what,
                        at + 32,
                        "trailing bytes after the bundle trailer",
                    ));
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(SyncError::io("reading", &self.what, e)),
            }
        }
        self.bytes = at + 32;
        self.trailer = Some(expect);
        Ok(None)
    }
}

/// Whether `path` is a file that starts with the bundle magic.
pub fn is_bundle(path: &Path) -> bool {
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        return false;
    }
    let mut magic = [0u8; 8];
    f.read_exact(&mut magic).is_ok() && &magic == BUNDLE_MAGIC
}

/// A ref a bundle carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BundleRef {
    /// The ref's name.
    pub name: String,
    /// The snapshot it names.
    pub id: ObjectId,
}

fn bundle_refs(h: &BundleHeader) -> Vec<BundleRef> {
    h.refs
        .iter()
        .map(|(name, id)| BundleRef {
            name: name.clone(),
            id: *id,
        })
        .collect()
}

/// What `bundle create` carries.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Local ref names (default: `main`).
    pub refs: Vec<String>,
    /// Snapshot names (`--since`): the prerequisites. Nothing they reach
    /// goes into the bundle.
    pub since: Vec<String>,
}

/// What `bundle create` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct CreateReport {
    /// The refs the bundle carries.
    pub refs: Vec<BundleRef>,
    /// The snapshots an importing store must already hold.
    pub prerequisites: Vec<ObjectId>,
    /// Objects written.
    pub objects: u64,
    /// Their payload bytes (as stored, compressed).
    pub object_bytes: u64,
    /// The bundle's size.
    pub bytes: u64,
    /// Its trailer hash.
    pub trailer: ObjectId,
}

/// Every object reachable from `roots` (snapshots): their history, trees,
/// tables, lists and chunks, with their types. Only non-chunk objects are read.
fn reachable(
    store: &Store,
    roots: &[ObjectId],
    progress: &dyn Progress,
) -> Result<IdMap<ObjectType>> {
    let mut seen: IdMap<ObjectType> = IdMap::default();
    let mut stack: Vec<(ObjectType, ObjectId)> = Vec::new();
    for r in roots {
        if seen.insert(*r, ObjectType::Snapshot).is_none() {
            stack.push((ObjectType::Snapshot, *r));
        }
    }
    while let Some((t, id)) = stack.pop() {
        if progress.interrupted() {
            return Err(SyncError::Interrupted);
        }
        if t == ObjectType::Chunk {
            continue;
        }
        let bytes = store.get(t, &id)?;
        for (ct, c) in references(t, &id, &bytes)? {
            if seen.insert(c, ct).is_none() {
                stack.push((ct, c));
            }
        }
    }
    Ok(seen)
}

/// Writes a bundle of `opts.refs` to `out` as it walks. `what` names the
/// destination in errors (`standard output` for `-`).
pub fn create(
    store: &Store,
    opts: &CreateOptions,
    out: &mut dyn Write,
    what: &Path,
    progress: &dyn Progress,
) -> Result<CreateReport> {
    let mut names: Vec<String> = if opts.refs.is_empty() {
        vec!["main".to_string()]
    } else {
        opts.refs.clone()
    };
    names.sort();
    names.dedup();
    let mut refs = Vec::new();
    for name in names {
        let id = store
            .read_ref(&name)?
            .ok_or_else(|| SyncError::NotFound(format!("unknown ref {name}")))?;
        refs.push((name, id));
    }
    let mut prerequisites = Vec::new();
    for s in &opts.since {
        prerequisites.push(crate::names::resolve(store, s)?);
    }
    prerequisites.sort();
    prerequisites.dedup();
    progress.stage("finding what the prerequisites hold");
    let have = reachable(store, &prerequisites, progress)?;
    let roots: Vec<ObjectId> = refs.iter().map(|(_, id)| *id).collect();
    let plan = crate::transfer::plan(
        &roots,
        &mut |q| Ok(q.iter().map(|id| have.contains_key(id)).collect()),
        &mut |q| q.iter().map(|(_, id)| store.read_stored(id)).collect(),
        progress,
    )?;
    drop(have);
    let order = plan.order;
    drop(plan.meta);
    let header = BundleHeader {
        objects: store.config().objects.clone(),
        refs,
        prerequisites,
    };
    let io = |e: std::io::Error| SyncError::io("writing", what, e);
    let mut w = HashWrite {
        inner: out,
        hasher: blake3::Hasher::new(),
        pos: 0,
    };
    w.write_all(&header.encode()).map_err(io)?;
    let mut pack = PackWriter::new(w).map_err(io)?;
    progress.stage("writing");
    progress.set_total(order.len() as u64, 0);
    let mut object_bytes = 0u64;
    for (t, id) in &order {
        if progress.interrupted() {
            return Err(SyncError::Interrupted);
        }
        let (loc, payload) = store.read_raw(id)?;
        if loc.tag != *t {
            return Err(crate::object::corrupt(
                *t,
                id,
                format!("the store holds a {}", loc.tag),
            ));
        }
        let o = StoredObject {
            tag: loc.tag,
            id: *id,
            flags: loc.flags,
            ulen: loc.ulen,
            payload,
        };
        object_bytes += o.payload.len() as u64;
        pack.add(&o).map_err(io)?;
        progress.add(1, o.payload.len() as u64);
    }
    let (w, _) = pack.finish().map_err(io)?;
    let trailer = ObjectId(*w.hasher.finalize().as_bytes());
    let bytes = w.pos + 32;
    let out = w.inner;
    out.write_all(&trailer.0).map_err(io)?;
    out.flush().map_err(io)?;
    Ok(CreateReport {
        refs: bundle_refs(&header),
        prerequisites: header.prerequisites,
        objects: order.len() as u64,
        object_bytes,
        bytes,
        trailer,
    })
}

/// [`create`] into a file: written beside it under a temporary name,
/// fsynced, then renamed over `path`, so an interrupted or failed create
/// leaves no partial bundle (and whatever was at `path` stays).
pub fn create_file(
    store: &Store,
    opts: &CreateOptions,
    path: &Path,
    progress: &dyn Progress,
) -> Result<CreateReport> {
    // A device or a pipe (`/dev/stdout`, `/dev/null`, a fifo) is written
    // into, never renamed over: replacing `/dev/null` with a file breaks
    // the machine. Other things that are not files are refused.
    let was_there = std::fs::symlink_metadata(path).is_ok();
    if let Ok(m) = std::fs::metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        let t = m.file_type();
        if t.is_char_device() || t.is_fifo() {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| SyncError::io("opening", path, e))?;
            let mut w = std::io::BufWriter::with_capacity(1 << 20, &f);
            return create(store, opts, &mut w, path, progress);
        }
        if !t.is_file() {
            return Err(SyncError::Invalid(format!(
                "{}: not a regular file (a bundle is written to a file, a device or a pipe)",
                path.display()
            )));
        }
        // Only a bundle (or an empty file) is replaced: a database, a
        // store's file or anything else the user keeps there is not what
        // `bundle create FILE` was asked to write over.
        if m.len() > 0 && !is_bundle(path) {
            return Err(SyncError::Invalid(format!(
                "{}: exists and is not a bundle; bundle create replaces only a bundle (remove it, or name another file)",
                path.display()
            )));
        }
    }
    // Nor into a store (a ref, a pack, store.toml, or a new file there),
    // also through a symlink on the way (`refs-link/new`).
    let resolved = path.file_name().and_then(|name| {
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        std::fs::canonicalize(parent.unwrap_or(Path::new(".")))
            .ok()
            .map(|p| p.join(name))
    });
    let inside = crate::restore::store_holding(path)
        .or_else(|| resolved.as_deref().and_then(crate::restore::store_holding));
    if let Some(store_dir) = inside {
        return Err(SyncError::Invalid(format!(
            "{}: will not write a bundle into the store at {}",
            path.display(),
            store_dir.display()
        )));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    sweep_stale_bundles(dir);
    // Created 0666 less the umask, like any file a command writes (not the
    // 0600 of a temporary file). Named with this process's id, so that one
    // a killed create left can be told from one being written.
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".sp-sync-bundle-{}-", std::process::id()))
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .tempfile_in(dir)
        .map_err(|e| SyncError::io("creating a temporary file in", dir, e))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file());
    let report = create(store, opts, &mut w, path, progress)?;
    drop(w);
    tmp.as_file()
        .sync_all()
        .map_err(|e| SyncError::io("syncing", path, e))?;
    // A bundle (or an empty file, or a symlink) that was there is replaced;
    // where there was nothing, a file made meanwhile (a database an
    // application created) is not (audit 24).
    if was_there {
        tmp.persist(path)
            .map_err(|e| SyncError::io("renaming the bundle to", path, e.error))?;
    } else {
        tmp.persist_noclobber(path).map_err(|e| {
            if e.error.kind() == std::io::ErrorKind::AlreadyExists {
                SyncError::Invalid(format!(
                    "{}: a file appeared there while the bundle was written; it is left as it is",
                    path.display()
                ))
            } else {
                SyncError::io("renaming the bundle to", path, e.error)
            }
        })?;
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(report)
}

/// Removes the temporary bundles (`.sp-sync-bundle-PID-…`) in `dir` whose
/// process no longer exists: what a killed `bundle create` left.
fn sweep_stale_bundles(dir: &Path) {
    crate::store::sweep_dead(
        dir,
        "bundle create",
        false,
        crate::store::stale_after(),
        |n| {
            n.strip_prefix(".sp-sync-bundle-")?
                .split_once('-')
                .map(|(pid, _)| pid)
        },
    );
}

/// What `bundle verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Whether the bundle is whole and (in a store) importable.
    pub ok: bool,
    /// The refs the bundle carries.
    pub refs: Vec<BundleRef>,
    /// The snapshots an importing store must already hold.
    pub prerequisites: Vec<ObjectId>,
    /// Objects read (each hash checked).
    pub objects: u64,
    /// Their payload bytes (as stored, compressed).
    pub object_bytes: u64,
    /// The bundle's size.
    pub bytes: u64,
    /// Its trailer hash.
    pub trailer: ObjectId,
    /// Distinct objects that the bundle's objects and refs reference but
    /// it does not hold: its prerequisites must provide them.
    pub external_references: u64,
    /// Whether those were checked against a store (that holds every
    /// prerequisite and reaches every one of them). Outside a store they
    /// cannot be, unless there are none.
    pub checked_in_store: bool,
}

/// Checks a bundle: its structure, every object's hash, that every object
/// comes after what it references, the trailer, and completeness given its
/// prerequisites. With a store: that the store holds every prerequisite
/// (an error names those it lacks), and that every reference leaving the
/// bundle resolves to an object reachable from them, of the right type.
/// Without one: a bundle with no prerequisites must be complete by itself.
pub fn verify(
    inp: impl Read,
    what: &str,
    store: Option<&Store>,
    progress: &dyn Progress,
) -> Result<VerifyReport> {
    let mut r = BundleReader::open(inp, what)?;
    check_params(&r.header().objects, what)?;
    let mut held: IdMap<ObjectType> = IdMap::default();
    // Referenced, not (yet) in the bundle: id → (wanted type, who wants it).
    let mut external: IdMap<(ObjectType, ObjectId)> = IdMap::default();
    progress.stage("verifying");
    while let Some(o) = r.next_object()? {
        if progress.interrupted() {
            return Err(SyncError::Interrupted);
        }
        if let Some((_, by)) = external.get(&o.id) {
            return Err(SyncError::Invalid(format!(
                "{what}: {} {} comes after {by}, which references it (a bundle holds children first)",
                o.tag, o.id
            )));
        }
        let bytes = crate::pack::unpack(o.tag, &o.id, o.flags, u64::from(o.ulen), &o.payload)?;
        for (want, c) in references(o.tag, &o.id, &bytes)? {
            match held.get(&c) {
                Some(t) if *t == want => {}
                Some(t) => {
                    return Err(SyncError::Invalid(format!(
                        "{what}: {} {} references {c} as a {want}, but that object is a {t}",
                        o.tag, o.id
                    )));
                }
                None => {
                    external.entry(c).or_insert((want, o.id));
                }
            }
        }
        held.insert(o.id, o.tag);
        progress.add(1, o.payload.len() as u64);
    }
    let header = r.header().clone();
    for (name, id) in &header.refs {
        match held.get(id) {
            Some(ObjectType::Snapshot) => {}
            Some(t) => {
                return Err(SyncError::Invalid(format!(
                    "{what}: ref {name} names {id}, which is a {t}, not a snapshot"
                )));
            }
            None => {
                external.entry(*id).or_insert((ObjectType::Snapshot, *id));
            }
        }
    }
    let mut checked_in_store = false;
    if header.prerequisites.is_empty() {
        if let Some((id, (want, by))) = external.iter().next() {
            return Err(SyncError::Invalid(format!(
                "{what} is incomplete: {by} references {want} {id}, which it does not hold \
                 (and it has no prerequisites)"
            )));
        }
    } else if let Some(store) = store {
        store.refresh()?;
        let lacking: Vec<ObjectId> = header
            .prerequisites
            .iter()
            .filter(|p| !holds_snapshot(store, p))
            .copied()
            .collect();
        if !lacking.is_empty() {
            return Err(lacks(what, &lacking));
        }
        let reach = reachable(store, &header.prerequisites, progress)?;
        for (id, (want, by)) in &external {
            match reach.get(id) {
                Some(t) if t == want => {}
                Some(t) => {
                    return Err(SyncError::Invalid(format!(
                        "{what}: {by} references {id} as a {want}, but the prerequisites hold it as a {t}"
                    )));
                }
                None => {
                    return Err(SyncError::Invalid(format!(
                        "{what} is incomplete: {by} references {want} {id}, which is neither \
                         in the bundle nor reachable from its prerequisites"
                    )));
                }
            }
        }
        checked_in_store = true;
    }
    Ok(VerifyReport {
        ok: true,
        refs: bundle_refs(&header),
        prerequisites: header.prerequisites,
        objects: r.objects(),
        object_bytes: r.object_bytes(),
        bytes: r.bytes(),
        trailer: r.trailer().unwrap_or_default(),
        external_references: external.len() as u64,
        checked_in_store,
    })
}

/// Whether `store` holds `id` as a snapshot.
fn holds_snapshot(store: &Store, id: &ObjectId) -> bool {
    store
        .location(id)
        .is_some_and(|l| l.tag == ObjectType::Snapshot)
}

/// The error for prerequisites a store lacks: it names them.
fn lacks(what: &str, lacking: &[ObjectId]) -> SyncError {
    let names: Vec<String> = lacking.iter().take(4).map(|p| p.to_hex()).collect();
    let more = if lacking.len() > 4 {
        format!(" and {} more", lacking.len() - 4)
    } else {
        String::new()
    };
    SyncError::NotFound(format!(
        "{what} needs prerequisite snapshot{} {}{more}, which this store lacks",
        if lacking.len() == 1 { "" } else { "s" },
        names.join(", ")
    ))
}

fn check_params(p: &ObjectParams, what: &str) -> Result<()> {
    if *p != ObjectParams::default() {
        return Err(SyncError::Invalid(format!(
            "{what} was made by a store whose object parameters ([objects]) differ from \
             this sp-sync's: its trees and tables would get other ids here; import it with \
             the sp-sync version that made it"
        )));
    }
    Ok(())
}

/// How `bundle import` (and `pull FILE`) moves refs.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Move a ref even when that is not a fast-forward.
    pub force: bool,
    /// Only these of the bundle's refs (default: all of them).
    pub refs: Vec<String>,
    /// A configured remote's name: `remotes/NAME/REF` records what the
    /// bundle carries. (A bundle named by its path has no tracking refs.)
    pub remote_name: Option<String>,
}

/// What `bundle import` did.
#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    /// Objects read from the bundle (each verified).
    pub objects: u64,
    /// Their payload bytes.
    pub object_bytes: u64,
    /// Of those, objects new to the store.
    pub stored_objects: u64,
    /// Their payload bytes.
    pub stored_bytes: u64,
    /// The bundle's size.
    pub bytes: u64,
    /// The prerequisites the bundle named (all present).
    pub prerequisites: Vec<ObjectId>,
    /// What happened to each ref.
    pub refs: Vec<RefUpdate>,
}

/// Imports a bundle read as a stream: checks its parameters and that the
/// store holds its prerequisites, stores its objects (each verified: hash,
/// and that what it references is stored or came earlier), checks the
/// trailer, and only then creates or fast-forwards its refs. A ref that
/// would not fast-forward stays put with a warning unless `force`. A
/// failed import moves no ref (objects committed before the failure are
/// verified and complete, and stay unreferenced until `gc`).
pub fn import(
    store: &Store,
    inp: impl Read,
    what: &str,
    opts: &ImportOptions,
    progress: &dyn Progress,
) -> Result<ImportReport> {
    let mut r = BundleReader::open(inp, what)?;
    check_params(&r.header().objects, what)?;
    let header = r.header().clone();
    let wanted: Vec<(String, ObjectId)> = if opts.refs.is_empty() {
        header
            .refs
            .iter()
            .filter(|(n, _)| {
                let skip = crate::transfer::machine_local(n);
                if skip {
                    tracing::warn!(
                        "{what}: ref {n} is another machine's own record (local sync or deploy); not imported"
                    );
                }
                // What the bundle's maker last saw of its remotes is not
                // this store's record of its own (as pull leaves them).
                let tracking = n.starts_with("remotes/");
                if tracking {
                    tracing::warn!(
                        "{what}: ref {n} records another store's remote; not imported (name it to import it)"
                    );
                }
                !skip && !tracking
            })
            .cloned()
            .collect()
    } else {
        let mut v = Vec::new();
        for name in &opts.refs {
            if crate::transfer::machine_local(name) {
                return Err(crate::transfer::machine_local_refused(name));
            }
            let id = header
                .refs
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, id)| *id)
                .ok_or_else(|| SyncError::NotFound(format!("{what} does not carry ref {name}")))?;
            if !v.iter().any(|(n, _)| n == name) {
                v.push((name.clone(), id));
            }
        }
        v
    };
    store.refresh()?;
    let lacking: Vec<ObjectId> = header
        .prerequisites
        .iter()
        .filter(|p| !holds_snapshot(store, p))
        .copied()
        .collect();
    if !lacking.is_empty() {
        return Err(lacks(what, &lacking));
    }
    progress.stage("importing");
    let stats = {
        let mut failed = false;
        let mut objects = std::iter::from_fn(|| {
            if failed {
                return None;
            }
            if progress.interrupted() {
                failed = true;
                return Some(Err(SyncError::Interrupted));
            }
            match r.next_object() {
                Ok(Some(o)) => Some(Ok(o)),
                Ok(None) => None,
                Err(e) => {
                    failed = true;
                    Some(Err(e))
                }
            }
        });
        store.receive(&mut objects, IMPORT_COMMIT_EVERY, progress)?
    };
    // The trailer was checked before receive saw the end of the stream.
    if r.trailer().is_none() {
        return Err(bad(what, r.bytes(), "the bundle's end was not reached"));
    }
    if progress.interrupted() {
        return Err(SyncError::Interrupted);
    }
    // Every target must be here before any ref moves.
    for (name, id) in &wanted {
        if !holds_snapshot(store, id) {
            return Err(SyncError::Invalid(format!(
                "{what}: ref {name} names snapshot {id}, which is neither in the bundle nor in this store"
            )));
        }
    }
    // And every ref it would create must be creatable: a failed import
    // moves no ref (§13), so a clash (a ref that would also be a folder of
    // refs) is found before the first moves.
    let creating: Vec<String> = wanted
        .iter()
        .flat_map(|(name, _)| {
            opts.remote_name
                .iter()
                .map(move |rn| format!("remotes/{rn}/{name}"))
                .chain(std::iter::once(name.clone()))
        })
        .collect();
    for n in &creating {
        if let Some(other) = creating.iter().find(|o| {
            o.len() > n.len() && o.starts_with(n.as_str()) && o.as_bytes()[n.len()] == b'/'
        }) {
            return Err(SyncError::Invalid(format!(
                "{what}: refs {n} and {other} cannot both exist (a ref cannot also be a folder of refs); no ref moved"
            )));
        }
        if store.read_ref(n)?.is_none() {
            store
                .check_ref_clash(n)
                .map_err(|e| SyncError::Invalid(format!("{what}: {e}; no ref moved")))?;
        }
    }
    let ids: Vec<ObjectId> = wanted.iter().map(|(_, id)| *id).collect();
    crate::store::fsck::check_received(store, &ids, what)?;
    progress.stage("updating refs");
    let mut updates = Vec::new();
    for (name, id) in wanted {
        if let Some(rn) = &opts.remote_name {
            store.update_ref(&format!("remotes/{rn}/{name}"), None, Some(id))?;
        }
        let old = store.read_ref(&name)?;
        let mut forced = false;
        let (updated, warning) = match old {
            None => {
                store.update_ref(&name, Some(None), Some(id))?;
                (true, None)
            }
            Some(o) if o == id => (true, None),
            Some(o) if crate::is_ancestor(store, &o, &id)? => {
                store.update_ref(&name, Some(Some(o)), Some(id))?;
                (true, None)
            }
            Some(o) if opts.force => {
                store.update_ref(&name, Some(Some(o)), Some(id))?;
                forced = true;
                (true, None)
            }
            Some(o) if crate::is_ancestor(store, &id, &o)? => (
                false,
                Some(format!(
                    "local {name} is ahead of the bundle's {}; left as is",
                    id.short()
                )),
            ),
            Some(_) => (
                false,
                Some(format!(
                    "local {name} has diverged from the bundle's {} (not a fast-forward); \
                     left as is (--force moves it)",
                    id.short()
                )),
            ),
        };
        updates.push(RefUpdate {
            name,
            id,
            old,
            updated,
            forced,
            warning,
        });
    }
    Ok(ImportReport {
        objects: stats.objects,
        object_bytes: stats.bytes,
        stored_objects: stats.stored_objects,
        stored_bytes: stats.stored_bytes,
        bytes: r.bytes(),
        prerequisites: header.prerequisites,
        refs: updates,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node() -> impl Strategy<Value = NodeRecord> {
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(min, target, max, min_entries)| NodeRecord {
                min,
                target,
                max,
                min_entries,
            },
        )
    }

    fn params() -> impl Strategy<Value = ObjectParams> {
        (
            "[a-z0-9-]{0,64}",
            [node(), node(), node(), node()],
            (
                any::<u64>(),
                any::<u64>(),
                any::<u32>(),
                any::<u64>(),
                any::<u64>(),
            ),
        )
            .prop_map(|(map_rule, n, (a, b, c, d, e))| ObjectParams {
                map_rule,
                tree_leaf: n[0],
                tree_internal: n[1],
                rows_leaf: n[2],
                rows_internal: n[3],
                list_min_entries: a,
                list_max_entries: b,
                list_threshold: c,
                inline_chunks: d,
                inline_value: e,
            })
    }

    fn header() -> impl Strategy<Value = BundleHeader> {
        (
            params(),
            proptest::collection::btree_map(
                "[a-z][a-z0-9_-]{0,8}(/[a-z0-9][a-z0-9_-]{0,8}){0,2}",
                any::<[u8; 32]>(),
                0..6,
            ),
            proptest::collection::btree_set(any::<[u8; 32]>(), 0..6),
        )
            .prop_map(|(objects, refs, pre)| BundleHeader {
                objects,
                refs: refs.into_iter().map(|(n, id)| (n, ObjectId(id))).collect(),
                prerequisites: pre.into_iter().map(ObjectId).collect(),
            })
    }

    proptest! {
        #[test]
        fn header_round_trips_and_consumes_exactly_its_bytes(h in header(), tail in proptest::collection::vec(any::<u8>(), 0..8)) {
            let mut bytes = h.encode();
            let n = bytes.len();
            bytes.extend_from_slice(&tail);
            let mut cur = std::io::Cursor::new(&bytes[..]);
            let d = BundleHeader::decode(&mut cur, "test").unwrap();
            prop_assert_eq!(&d, &h);
            prop_assert_eq!(cur.position() as usize, n);
            prop_assert_eq!(d.encode(), bytes[..n].to_vec());
        }

        #[test]
        fn header_decoding_never_panics_and_accepts_only_canonical_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut cur = std::io::Cursor::new(&bytes[..]);
            if let Ok(h) = BundleHeader::decode(&mut cur, "test") {
                let n = cur.position() as usize;
                prop_assert_eq!(h.encode(), bytes[..n].to_vec());
            }
        }

        #[test]
        fn every_truncation_of_a_header_fails(h in header()) {
            let bytes = h.encode();
            for n in 0..bytes.len() {
                let mut cur = std::io::Cursor::new(&bytes[..n]);
                prop_assert!(BundleHeader::decode(&mut cur, "test").is_err());
            }
        }
    }

    #[test]
    fn unsorted_refs_and_prerequisites_are_refused() {
        let base = BundleHeader {
            objects: ObjectParams::default(),
            refs: vec![
                ("b".into(), ObjectId([1; 32])),
                ("a".into(), ObjectId([2; 32])),
            ],
            prerequisites: vec![],
        };
        let e = BundleHeader::decode(&mut &base.encode()[..], "t").unwrap_err();
        assert!(e.to_string().contains("sorted"), "{e}");
        let dup = BundleHeader {
            refs: vec![],
            prerequisites: vec![ObjectId([3; 32]), ObjectId([3; 32])],
            ..base.clone()
        };
        assert!(BundleHeader::decode(&mut &dup.encode()[..], "t").is_err());
        let bad_name = BundleHeader {
            refs: vec![("../x".into(), ObjectId([1; 32]))],
            ..base
        };
        let e = BundleHeader::decode(&mut &bad_name.encode()[..], "t").unwrap_err();
        assert!(e.to_string().contains("invalid ref name"), "{e}");
    }
}
