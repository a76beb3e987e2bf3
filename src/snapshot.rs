//! Taking snapshots: walk → per-file work on rayon (stat-cache check, read,
//! chunk, hash, deduplicate, compress new chunks) → one pack writer → trees
//! built bottom-up as prolly maps → snapshot object → ref compare-and-swap.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ignore::Match;
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use rayon::prelude::*;

use crate::chunker::Chunker;
use crate::error::{IoContext, Result, SyncError};
use crate::id::{ObjectId, ObjectType};
use crate::object::list::{ChunkRef, ListBuilder, MAX_INLINE};
use crate::object::snapshot::{DbRecord, Skipped, Snapshot, Sources};
use crate::object::tree::{
    Content, Entry, EntryKind, MODE_MASK, RELATIVE_MAX_ENTRIES, Timestamp, check_name,
};
use crate::object::{MemStore, ObjectSink};
use crate::pmap::MapBuilder;
use crate::progress::Progress;
use crate::store::Store;
use crate::store::statcache::{StatCache, StatKey};

/// The meta key that says the snapshot's one source is a file (`"file"`).
pub const SOURCE_KIND: &str = "source.kind";
/// Snapshot metadata: `sqlite.N` holds the settings of the N-th database
/// of the sources (0-based), a SQLite file ([`crate::db::SqliteSettings`]).
pub const SQLITE_SETTINGS: &str = "sqlite.";

/// The file whose lines (gitignore syntax) exclude paths in its directory.
pub const IGNORE_FILE: &str = ".sp-syncignore";
/// Files are read in batches of this many bytes and their chunks hashed and
/// compressed in parallel.
const BATCH: usize = 8 << 20;

/// What to snapshot and how to record it.
#[derive(Debug, Clone)]
pub struct SnapshotOptions {
    /// Paths whose contents become the root (one path) or which appear under
    /// their own names (several).
    pub sources: Vec<PathBuf>,
    /// Gitignore-style patterns, relative to each source.
    pub excludes: Vec<String>,
    /// The snapshot's message.
    pub message: String,
    /// The ref to move (default `main`). Empty: the snapshot is written
    /// without parents and no ref moves (the caller names it elsewhere,
    /// as `cache save` does on a remote).
    pub ref_name: String,
    /// The host recorded (default: this machine's name).
    pub host: Option<String>,
    /// Free-form metadata recorded with the snapshot.
    pub meta: BTreeMap<String, String>,
    /// Worker threads (default: the number of CPUs).
    pub threads: Option<usize>,
    /// Trust the stat cache (default true).
    pub use_stat_cache: bool,
    /// Paths never entered (the store itself).
    pub skip: Vec<PathBuf>,
    /// Databases whose tables go into the snapshot (their files, with any
    /// `-wal`, `-shm` and `-journal` beside them, are left out of the file
    /// walk).
    pub dbs: Vec<crate::db::DbSource>,
    /// The working-tree root: sources and databases are recorded relative
    /// to it (absolute when outside it, or when no root is given).
    pub root: Option<PathBuf>,
    /// When the ref's snapshot already has this root and these tables,
    /// write no snapshot and leave the ref (like `git commit` with nothing
    /// to commit); the report names the ref's snapshot and says
    /// [`SnapshotReport::unchanged`].
    pub skip_if_unchanged: bool,
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        SnapshotOptions {
            sources: Vec::new(),
            excludes: Vec::new(),
            message: String::new(),
            ref_name: "main".into(),
            host: None,
            meta: BTreeMap::new(),
            threads: None,
            use_stat_cache: true,
            skip: Vec::new(),
            dbs: Vec::new(),
            root: None,
            skip_if_unchanged: false,
        }
    }
}

/// What a snapshot did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SnapshotReport {
    /// The new snapshot.
    pub id: ObjectId,
    /// Its parent (what the ref named before).
    pub parent: Option<ObjectId>,
    /// Its root tree (`None`: no files).
    pub root: Option<ObjectId>,
    /// Files in it.
    pub files: u64,
    /// Directories in it.
    pub dirs: u64,
    /// Bytes of file contents in it.
    pub bytes: u64,
    /// Bytes read from files (the rest came from the stat cache).
    pub read_bytes: u64,
    /// Objects it added to the store.
    pub new_objects: u64,
    /// Bytes added to the store (as stored, compressed).
    pub new_bytes: u64,
    /// Rows of each table snapshotted.
    pub tables: BTreeMap<String, u64>,
    /// Files and directories that could not be read and were left out
    /// (a partial snapshot: the binary exits 3).
    pub skipped: Vec<Skipped>,
    /// Nothing changed since the ref's snapshot (`id`), so none was written
    /// ([`SnapshotOptions::skip_if_unchanged`]).
    pub unchanged: bool,
}

/// Walks sources and builds their tree into a sink.
pub struct Scanner<'a> {
    sink: &'a dyn ObjectSink,
    chunker: Chunker,
    cache: StatCache,
    record: Option<Mutex<Vec<CacheRecord>>>,
    skip: Vec<PathBuf>,
    excludes: Vec<String>,
    /// The working-tree root, whose ignore files down to a source apply.
    ignore_base: Option<PathBuf>,
    progress: &'a dyn Progress,
    skipped: Mutex<Vec<Skipped>>,
    /// Files scanned.
    pub files: AtomicU64,
    /// Directories scanned.
    pub dirs: AtomicU64,
    /// Bytes of file contents scanned.
    pub bytes: AtomicU64,
    /// Bytes read from files (the rest came from the stat cache).
    pub read_bytes: AtomicU64,
}

#[derive(Clone, Default)]
struct Ignores(Vec<Arc<Gitignore>>);

impl Ignores {
    fn ignored(&self, path: &Path, is_dir: bool) -> bool {
        for g in self.0.iter().rev() {
            match g.matched(path, is_dir) {
                Match::Ignore(_) => return true,
                Match::Whitelist(_) => return false,
                Match::None => {}
            }
        }
        false
    }
}

/// The rules of `dir`'s `.sp-syncignore`, if it has one.
fn ignore_file_in(dir: &Path) -> Result<Option<Arc<Gitignore>>> {
    let file = dir.join(IGNORE_FILE);
    if !file.is_file() {
        return Ok(None);
    }
    let mut b = GitignoreBuilder::new(dir);
    if let Some(e) = b.add(&file) {
        return Err(SyncError::Invalid(format!("{}: {e}", file.display())));
    }
    let g = b
        .build()
        .map_err(|e| SyncError::Invalid(format!("{}: {e}", file.display())))?;
    Ok(Some(Arc::new(g)))
}

/// The directories from `base` down to `path`'s parent, outermost first,
/// when `path` lies below `base` (else none): those whose ignore files
/// apply to `path` besides its own.
pub(crate) fn ignore_dirs_above(base: &Path, path: &Path) -> Vec<PathBuf> {
    let Ok(rel) = path.strip_prefix(base) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut dir = base.to_path_buf();
    let comps: Vec<_> = rel.components().collect();
    for c in comps.iter().take(comps.len().saturating_sub(1)) {
        out.push(dir.clone());
        dir.push(c);
    }
    if !comps.is_empty() {
        out.push(dir);
    }
    out
}

type CacheRecord = (Vec<u8>, StatKey, Content);

struct Item {
    name: Vec<u8>,
    path: PathBuf,
    meta: fs::Metadata,
}

thread_local! {
    static BUF: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

impl<'a> Scanner<'a> {
    /// A scanner writing into `sink`, cutting with `chunker`, trusting `cache` for unchanged files.
    pub fn new(
        sink: &'a dyn ObjectSink,
        chunker: Chunker,
        cache: StatCache,
        record_cache: bool,
        progress: &'a dyn Progress,
    ) -> Self {
        Scanner {
            sink,
            chunker,
            cache,
            record: record_cache.then(|| Mutex::new(Vec::new())),
            skip: Vec::new(),
            excludes: Vec::new(),
            ignore_base: None,
            progress,
            skipped: Mutex::new(Vec::new()),
            files: AtomicU64::new(0),
            dirs: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            read_bytes: AtomicU64::new(0),
        }
    }

    /// Never enters these (canonical) paths.
    pub fn with_skip(mut self, skip: Vec<PathBuf>) -> Self {
        self.skip = skip;
        self
    }

    /// Leaves out paths matching these gitignore-style patterns.
    pub fn with_excludes(mut self, excludes: Vec<String>) -> Self {
        self.excludes = excludes;
        self
    }

    /// Applies the `.sp-syncignore` files of the directories from `base`
    /// (the working-tree root) down to each source, as git applies a parent
    /// directory's `.gitignore`.
    pub fn with_ignore_base(mut self, base: Option<PathBuf>) -> Self {
        self.ignore_base = base;
        self
    }

    /// What could not be read, sorted by path.
    pub fn take_skipped(&self) -> Vec<Skipped> {
        let mut v = self
            .skipped
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default();
        v.sort_by(|a, b| a.path.cmp(&b.path));
        v
    }

    /// Records a path left out: it could not be read, or vanished.
    fn skip(&self, path: &Path, e: &dyn std::fmt::Display) {
        tracing::debug!("skipping {}: {e}", path.display());
        if let Ok(mut v) = self.skipped.lock() {
            v.push(Skipped {
                path: path.display().to_string(),
                error: e.to_string(),
            });
        }
    }

    /// Stat-cache records gathered (for `StatCache::save`).
    pub fn take_records(&self) -> Vec<CacheRecord> {
        self.record
            .as_ref()
            .and_then(|m| m.lock().ok().map(|mut v| std::mem::take(&mut *v)))
            .unwrap_or_default()
    }

    fn root_ignores(&self, root: &Path) -> Result<Ignores> {
        let mut b = GitignoreBuilder::new(root);
        for pat in &self.excludes {
            b.add_line(None, pat)
                .map_err(|e| SyncError::Invalid(format!("bad exclude pattern {pat:?}: {e}")))?;
        }
        let g = b
            .build()
            .map_err(|e| SyncError::Invalid(format!("bad exclude patterns: {e}")))?;
        let mut ign = Ignores(vec![Arc::new(g)]);
        if let Some(base) = &self.ignore_base {
            for dir in ignore_dirs_above(base, root) {
                if let Some(g) = ignore_file_in(&dir)? {
                    ign.0.push(g);
                }
            }
        }
        Ok(ign)
    }

    /// Scans the sources into a root tree. One directory source: its
    /// contents are the root. Otherwise each source is an entry named after
    /// its last component.
    pub fn scan(&self, sources: &[PathBuf]) -> Result<ObjectId> {
        for s in sources {
            if let Some(store) = crate::restore::store_holding(s) {
                return Err(SyncError::Invalid(format!(
                    "{}: in the sp-sync store {}; a snapshot never takes a store in (its \
                     config.toml holds credentials)",
                    s.display(),
                    store.display()
                )));
            }
        }
        if let [one] = sources {
            let meta = fs::symlink_metadata(one).ctx("reading", one)?;
            if meta.is_dir() {
                let ign = self.root_ignores(one)?;
                let fs_dir = fs::read_dir(one).ctx("reading directory", one)?;
                return self.dir_from(one, b"", &ign, fs_dir, None)?.ok_or_else(|| {
                    SyncError::Invalid(format!(
                        "{}: an sp-sync store; a snapshot never takes a store in (its \
                         config.toml holds credentials)",
                        one.display()
                    ))
                });
            }
        }
        let mut named: Vec<(Vec<u8>, &PathBuf)> = Vec::new();
        for s in sources {
            let name = s
                .file_name()
                .map(|n| n.as_bytes().to_vec())
                .ok_or_else(|| {
                    SyncError::Invalid(format!("{} has no name to store it under", s.display()))
                })?;
            named.push((name, s));
        }
        named.sort();
        for w in named.windows(2) {
            if w[0].0 == w[1].0 {
                return Err(SyncError::Invalid(format!(
                    "{} and {} would both be stored as {:?}",
                    w[0].1.display(),
                    w[1].1.display(),
                    String::from_utf8_lossy(&w[0].0)
                )));
            }
        }
        let entries: Vec<Result<Option<Entry>>> = named
            .par_iter()
            .map(|(name, path)| {
                let meta = fs::symlink_metadata(path).ctx("reading", path)?;
                let ign = self.root_ignores(path)?;
                self.entry(
                    &Item {
                        name: name.clone(),
                        path: (*path).clone(),
                        meta,
                    },
                    name,
                    &ign,
                )
            })
            .collect();
        let mut b = MapBuilder::new(ObjectType::Tree, self.sink);
        for ((name, _), e) in named.iter().zip(entries) {
            if let Some(e) = e? {
                b.push(name, &e.encode())?;
            }
        }
        b.finish()
    }

    /// A directory below a root: `None` when it cannot be read (recorded as
    /// skipped).
    /// `time`: its mtime, as its entry records it.
    fn dir(
        &self,
        path: &Path,
        rel: &[u8],
        parent_ign: &Ignores,
        time: Timestamp,
    ) -> Result<Option<ObjectId>> {
        match fs::read_dir(path) {
            Ok(d) => self.dir_from(path, rel, parent_ign, d, Some(time)),
            Err(e) => {
                self.skip(path, &e);
                Ok(None)
            }
        }
    }

    /// A directory's map (`None`: it is an sp-sync store, left out).
    /// `time`: the directory's mtime as its entry
    /// records it (None for the root, which has no entry): a directory of
    /// at most [`RELATIVE_MAX_ENTRIES`] entries, or one whose entries all
    /// have its time, records their times relative to it (store-format.md
    /// §3.4).
    fn dir_from(
        &self,
        path: &Path,
        rel: &[u8],
        parent_ign: &Ignores,
        listing: fs::ReadDir,
        time: Option<Timestamp>,
    ) -> Result<Option<ObjectId>> {
        if self.progress.interrupted() {
            return Err(SyncError::Interrupted);
        }
        self.dirs.fetch_add(1, Ordering::Relaxed);
        let mut ign = parent_ign.clone();
        if let Some(g) = ignore_file_in(path)? {
            ign.0.push(g);
        }
        let mut items = Vec::new();
        for e in listing {
            let e = e.ctx("reading directory", path)?;
            let p = e.path();
            if self.skip.iter().any(|s| s == &p) {
                continue;
            }
            // A file a killed restore left on its way to its place.
            if crate::restore::is_tmp_name(e.file_name().as_bytes()) {
                tracing::debug!("leaving out {}: a restore's temporary file", p.display());
                continue;
            }
            let meta = match fs::symlink_metadata(&p) {
                Ok(m) => m,
                // Deleted while we walked, or unreadable: left out, said.
                Err(e) => {
                    if !ign.ignored(&p, false) {
                        self.skip(&p, &e);
                    }
                    continue;
                }
            };
            if ign.ignored(&p, meta.is_dir()) {
                continue;
            }
            let name = e.file_name().as_bytes().to_vec();
            if let Err(why) = check_name(&name) {
                return Err(SyncError::Invalid(format!("{}: {why}", p.display())));
            }
            items.push(Item {
                name,
                path: p,
                meta,
            });
        }
        if is_store_listing(&items) {
            // Another store (a second checkout, a vendored project): its
            // objects are no content, and its config.toml holds tokens
            // and keys.
            tracing::info!("leaving out {}: an sp-sync store", path.display());
            return Ok(None);
        }
        items.sort_by(|a, b| a.name.cmp(&b.name));
        let entries: Vec<Option<Entry>> = items
            .par_iter()
            .map(|it| {
                let rel = join_rel(rel, &it.name);
                self.entry(it, &rel, &ign)
            })
            .collect::<Result<_>>()?;
        // Relative times: a small directory, or one whose entries all share
        // its time (an unpacked archive), whatever its size.
        let time = time.filter(|t| {
            items.len() <= RELATIVE_MAX_ENTRIES || entries.iter().flatten().all(|e| e.mtime == *t)
        });
        let mut b = MapBuilder::new(ObjectType::Tree, self.sink);
        for (it, e) in items.iter().zip(entries) {
            if let Some(e) = e {
                b.push(&it.name, &e.encode_in(time))?;
            }
        }
        b.finish().map(Some)
    }

    fn entry(&self, it: &Item, rel: &[u8], ign: &Ignores) -> Result<Option<Entry>> {
        let m = &it.meta;
        let mode = m.mode() & MODE_MASK;
        let mtime = Timestamp {
            secs: m.mtime(),
            nanos: m.mtime_nsec().clamp(0, 999_999_999) as u32,
        };
        let ft = m.file_type();
        let kind = if ft.is_file() {
            let Some((size, content)) = self.file(it, rel)? else {
                return Ok(None);
            };
            self.files.fetch_add(1, Ordering::Relaxed);
            self.bytes.fetch_add(size, Ordering::Relaxed);
            self.progress.add(1, size);
            EntryKind::File { size, content }
        } else if ft.is_dir() {
            let Some(tree) = self.dir(&it.path, rel, ign, mtime)? else {
                return Ok(None);
            };
            EntryKind::Dir { tree }
        } else if ft.is_symlink() {
            let target = match fs::read_link(&it.path) {
                Ok(t) => t,
                Err(e) => {
                    self.skip(&it.path, &e);
                    return Ok(None);
                }
            };
            let target = target.as_os_str().as_bytes().to_vec();
            self.files.fetch_add(1, Ordering::Relaxed);
            self.progress.add(1, 0);
            EntryKind::Symlink { target }
        } else {
            let what = if ft.is_fifo() {
                "fifo"
            } else if ft.is_socket() {
                "socket"
            } else {
                "device"
            };
            tracing::warn!("skipping {} ({what})", it.path.display());
            return Ok(None);
        };
        Ok(Some(Entry { mode, mtime, kind }))
    }

    /// A file's content; `None` when it cannot be read (recorded as skipped).
    fn file(&self, it: &Item, rel: &[u8]) -> Result<Option<(u64, Content)>> {
        let key = StatKey::from_metadata(&it.meta);
        if let Some(c) = self.cache.get(rel, &key)
            && c.refs().iter().all(|(_, id)| self.sink.contains(id))
        {
            let c = c.clone();
            self.remember(rel, key, &c, None);
            return Ok(Some((key.size, c)));
        }
        let read_at = now();
        let mut f = match File::open(&it.path) {
            Ok(f) => f,
            Err(e) => {
                self.skip(&it.path, &e);
                return Ok(None);
            }
        };
        let mut read_err: Option<std::io::Error> = None;
        let mut refs: Vec<ChunkRef> = Vec::new();
        let mut buf = BUF.with(|b| b.take());
        let r = if key.size < self.chunker.max_size() as u64 {
            // Small file: one read, usually one chunk.
            buf.clear();
            buf.reserve(key.size as usize + 1);
            use std::io::Read;
            match f.read_to_end(&mut buf) {
                Ok(_) => {
                    let cuts = self.chunker.cut_all(&buf);
                    self.chunks(&buf, &cuts, &mut refs)
                }
                Err(e) => {
                    read_err = Some(e);
                    Ok(())
                }
            }
        } else {
            let mut err = None;
            let r = self.chunker.stream(&mut f, BATCH, |data, cuts| {
                if let Err(e) = self.chunks(data, cuts, &mut refs) {
                    err = Some(e);
                    return Err(std::io::Error::other("chunking failed"));
                }
                Ok(())
            });
            match (r, err) {
                (_, Some(e)) => Err(e),
                (Err(e), None) => {
                    read_err = Some(e);
                    Ok(())
                }
                (Ok(_), None) => Ok(()),
            }
        };
        if buf.capacity() <= 2 * self.chunker.max_size() + 1 {
            BUF.with(|b| b.set(buf));
        }
        r?;
        if let Some(e) = read_err {
            self.skip(&it.path, &e);
            return Ok(None);
        }
        let size: u64 = refs.iter().map(|c| c.len).sum();
        self.read_bytes.fetch_add(size, Ordering::Relaxed);
        let content = if refs.len() <= MAX_INLINE {
            Content::Inline(refs)
        } else {
            let mut lb = ListBuilder::new(self.sink);
            for c in refs {
                lb.push(c)?;
            }
            let (level, root) = lb.finish()?;
            Content::Indirect { level, root }
        };
        // Written while it was read (same size or not: a rewrite in place
        // keeps the size): what was read may mix two versions. Its stat
        // then says so (modification and change times, size).
        let after = f.metadata().ok();
        let same = after.as_ref().is_some_and(|m| {
            m.len() == key.size
                && m.mtime() == it.meta.mtime()
                && m.mtime_nsec() == it.meta.mtime_nsec()
                && m.ctime() == it.meta.ctime()
                && m.ctime_nsec() == it.meta.ctime_nsec()
        });
        if !(size == key.size && same) {
            // Left out, as a file that cannot be read is (exit 3): what was
            // read may be torn between two versions (audit round 19).
            self.skip(&it.path, &"it changed while it was read");
            return Ok(None);
        }
        self.remember(rel, key, &content, Some(read_at));
        Ok(Some((size, content)))
    }

    /// Records a stat-cache entry. For content just read (`read_at`), only
    /// when the file's last change (ctime) is a second older than the read:
    /// a file changed again in the same timestamp tick as our read could
    /// otherwise keep its stat while its content moved on (git's racy-clean
    /// problem). Any later change sets ctime to a later tick.
    fn remember(&self, rel: &[u8], key: StatKey, content: &Content, read_at: Option<Timestamp>) {
        let settled = read_at.is_none_or(|t| {
            key.ctime
                < Timestamp {
                    secs: t.secs - 1,
                    nanos: t.nanos,
                }
        });
        if let Some(rec) = &self.record
            && settled
            && let Ok(mut v) = rec.lock()
        {
            v.push((rel.to_vec(), key, content.clone()));
        }
    }

    fn chunks(&self, data: &[u8], cuts: &[usize], out: &mut Vec<ChunkRef>) -> Result<()> {
        if self.progress.interrupted() {
            return Err(SyncError::Interrupted);
        }
        let mut slices = Vec::with_capacity(cuts.len());
        let mut p = 0;
        for &n in cuts {
            slices.push(&data[p..p + n]);
            p += n;
        }
        let put = |s: &&[u8]| -> Result<ChunkRef> {
            let id = ObjectId::compute(ObjectType::Chunk, s);
            self.sink.put_hashed(ObjectType::Chunk, id, s)?;
            Ok(ChunkRef {
                id,
                len: s.len() as u64,
            })
        };
        if slices.len() == 1 {
            out.push(put(&slices[0])?);
        } else {
            let r: Vec<Result<ChunkRef>> = slices.par_iter().map(put).collect();
            for c in r {
                out.push(c?);
            }
        }
        Ok(())
    }
}

fn join_rel(rel: &[u8], name: &[u8]) -> Vec<u8> {
    if rel.is_empty() {
        name.to_vec()
    } else {
        let mut v = Vec::with_capacity(rel.len() + 1 + name.len());
        v.extend_from_slice(rel);
        v.push(b'/');
        v.extend_from_slice(name);
        v
    }
}

/// Whether a directory's entries are an sp-sync store's (`store.toml`, and
/// `refs/` and `packs/` directories: what `restore` also takes for one).
fn is_store_listing(items: &[Item]) -> bool {
    let has = |name: &[u8], dir: bool| {
        items.iter().any(|i| {
            i.name == name
                && (if dir {
                    i.meta.is_dir()
                } else {
                    i.meta.is_file()
                })
        })
    };
    has(b"store.toml", false) && has(b"refs", true) && has(b"packs", true)
}

/// The store and its cache: never part of a snapshot.
fn store_paths(store: &Store) -> Vec<PathBuf> {
    store
        .local_dir()
        .map(Path::to_path_buf)
        .into_iter()
        .chain([store.cache_dir()])
        .filter_map(|p| fs::canonicalize(p).ok())
        .collect()
}

/// Now, as a timestamp.
pub fn now() -> Timestamp {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => Timestamp {
            secs: d.as_secs() as i64,
            nanos: d.subsec_nanos(),
        },
        Err(_) => Timestamp::default(),
    }
}

/// This machine's name.
pub fn hostname() -> String {
    let u = rustix::system::uname();
    u.nodename().to_string_lossy().into_owned()
}

fn absolute(p: &Path) -> Result<PathBuf> {
    fs::canonicalize(p).ctx("resolving", p)
}

pub(crate) fn pool(threads: Option<usize>) -> Result<rayon::ThreadPool> {
    let n = threads
        .or_else(|| {
            std::env::var("SP_SYNC_THREADS")
                .ok()
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .stack_size(16 << 20)
        .thread_name(|i| format!("sp-sync-{i}"))
        .build()
        .map_err(|e| SyncError::Invalid(format!("cannot start worker threads: {e}")))
}

/// Takes a snapshot of `opts.sources` into `store` and moves `opts.ref_name`.
pub fn snapshot(
    store: &Store,
    opts: &SnapshotOptions,
    progress: &dyn Progress,
) -> Result<SnapshotReport> {
    if opts.sources.is_empty() {
        return Err(SyncError::Invalid("nothing to snapshot (no paths)".into()));
    }
    if !opts.ref_name.is_empty() {
        crate::store::refs::validate_ref_name(&opts.ref_name)?;
    }
    let sources: Vec<PathBuf> = opts
        .sources
        .iter()
        .map(|p| absolute(p))
        .collect::<Result<_>>()?;
    // (What the scan below sees the one source as.)
    let one_file = matches!(sources.as_slice(), [one]
        if fs::symlink_metadata(one).is_ok_and(|m| !m.is_dir()));
    let mut skip: Vec<PathBuf> = opts
        .skip
        .iter()
        .filter_map(|p| fs::canonicalize(p).ok())
        .collect();
    skip.extend(store_paths(store));
    skip.extend(db_files(&opts.dbs));
    let cache_path = StatCache::path_for(&store.cache_dir(), &sources);
    let cache = if opts.use_stat_cache {
        StatCache::load(&cache_path)
    } else {
        StatCache::default()
    };
    let pool = pool(opts.threads)?;
    let session = store.writer()?;
    let chunker = Chunker::new(&store.config().chunker);
    let scanner = Scanner::new(&session, chunker, cache, true, progress)
        .with_skip(skip)
        .with_excludes(opts.excludes.clone())
        .with_ignore_base(opts.root.as_deref().and_then(|r| fs::canonicalize(r).ok()));
    progress.stage("snapshot");
    let root = pool.install(|| scanner.scan(&sources))?;
    let files = scanner.files.load(Ordering::Relaxed);
    let bytes = scanner.bytes.load(Ordering::Relaxed);
    let dirs = scanner.dirs.load(Ordering::Relaxed);
    let read_bytes = scanner.read_bytes.load(Ordering::Relaxed);
    let records = scanner.take_records();
    let mut skipped = scanner.take_skipped();
    drop(scanner);
    // Recorded relative to the working-tree root (as the sources are), so
    // that a restore of the tree moved elsewhere still knows them.
    if let Some(root) = opts.root.as_deref().and_then(|r| fs::canonicalize(r).ok()) {
        for k in &mut skipped {
            if let Ok(rel) = Path::new(&k.path).strip_prefix(&root) {
                k.path = rel.display().to_string();
            }
        }
        skipped.sort_by(|a, b| a.path.cmp(&b.path));
    }
    let chunker = Chunker::new(&store.config().chunker);
    let rows_cache = crate::db::RowCacheCtx {
        src: store,
        dir: store.cache_dir(),
    };
    let tables = crate::db::scan_all(
        &opts.dbs,
        &session,
        &chunker,
        progress,
        opts.use_stat_cache.then_some(&rows_cache),
    )?;
    let root_dir = opts.root.as_deref().and_then(|r| fs::canonicalize(r).ok());
    let sources = Sources {
        paths: sources
            .iter()
            .map(|p| relative_to(root_dir.as_deref(), p))
            .collect(),
        excludes: opts.excludes.clone(),
        dbs: opts
            .dbs
            .iter()
            .zip(&tables.by_db)
            .map(|(d, names)| DbRecord {
                // A PostgreSQL URL is recorded without its password.
                location: if crate::db::pg::is_url_path(&d.path) {
                    crate::db::pg::display_location(&d.path)
                } else {
                    relative_to(
                        root_dir.as_deref(),
                        &fs::canonicalize(&d.path).unwrap_or_else(|_| d.path.clone()),
                    )
                },
                tables: names.clone(),
            })
            .collect(),
    };
    let stats = &session.stats;
    let new_objects = stats.objects.load(Ordering::Relaxed);
    let new_bytes = stats.stored_bytes.load(Ordering::Relaxed);
    session.finish()?;

    if opts.skip_if_unchanged
        && !opts.ref_name.is_empty()
        && let Some(current) = store.read_ref(&opts.ref_name)?
    {
        let old = crate::names::load_snapshot(store, &current)?;
        if old.root == Some(root) && old.tables == tables.objects {
            if let Err(e) = StatCache::save(&cache_path, records) {
                tracing::warn!("could not save the stat cache: {e}");
            }
            return Ok(SnapshotReport {
                id: current,
                parent: old.parents.first().copied(),
                root: Some(root),
                files,
                dirs,
                bytes,
                read_bytes,
                new_objects,
                new_bytes,
                tables: tables.rows,
                skipped,
                unchanged: true,
            });
        }
    }
    let mut snap = Snapshot {
        parents: Vec::new(),
        time: now(),
        host: opts.host.clone().unwrap_or_else(hostname),
        message: opts.message.clone(),
        root: Some(root),
        files,
        bytes,
        tables: tables.objects,
        meta: {
            let mut m = opts.meta.clone();
            // One source that is a file is held like a directory source of
            // one entry of its name: this tells a restore which it was
            // (store-format §3.5).
            if one_file {
                m.insert(SOURCE_KIND.to_string(), "file".to_string());
            }
            // A SQLite file's settings, by its place in the sources' list
            // of databases.
            for (i, st) in tables.settings.iter().enumerate() {
                if let Some(st) = st {
                    m.insert(format!("{SQLITE_SETTINGS}{i}"), st.encode());
                }
            }
            m
        },
        sources: Some(sources),
        skipped: skipped.clone(),
    };
    let (id, parent, extra) = if opts.ref_name.is_empty() {
        let (id, extra) = write_snapshot(store, &snap)?;
        (id, None, extra)
    } else {
        commit(store, &opts.ref_name, &mut snap)?
    };
    if let Err(e) = store.record_made(&id) {
        tracing::warn!("could not record the snapshot as made here: {e}");
    }
    if let Err(e) = StatCache::save(&cache_path, records) {
        tracing::warn!("could not save the stat cache: {e}");
    }
    Ok(SnapshotReport {
        id,
        parent,
        root: Some(root),
        files: snap.files,
        dirs,
        bytes: snap.bytes,
        read_bytes,
        new_objects: new_objects + extra.0,
        new_bytes: new_bytes + extra.1,
        tables: tables.rows,
        skipped,
        unchanged: false,
    })
}

/// `path` relative to `root` (`""` for the root itself), or absolute when
/// outside it or when there is no root.
pub(crate) fn relative_to(root: Option<&Path>, path: &Path) -> String {
    match root.and_then(|r| path.strip_prefix(r).ok()) {
        Some(rel) => rel.to_string_lossy().into_owned(),
        None => path.to_string_lossy().into_owned(),
    }
}

/// Database files and their companions, as canonical paths (those that exist).
pub(crate) fn db_files(dbs: &[crate::db::DbSource]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in dbs {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut p = d.path.clone().into_os_string();
            p.push(suffix);
            if let Ok(c) = fs::canonicalize(PathBuf::from(p)) {
                out.push(c);
            }
        }
    }
    out
}

/// Writes a snapshot object as it is (no ref moves). Returns its id and the
/// (objects, bytes) written.
pub fn write_snapshot(store: &Store, snap: &Snapshot) -> Result<(ObjectId, (u64, u64))> {
    let bytes = snap.encode();
    let id = ObjectId::compute(ObjectType::Snapshot, &bytes);
    let mut written = (0, 0);
    if !store.contains(&id) {
        let s = store.writer()?;
        s.put_hashed(ObjectType::Snapshot, id, &bytes)?;
        written.0 += s.stats.objects.load(Ordering::Relaxed);
        written.1 += s.stats.stored_bytes.load(Ordering::Relaxed);
        s.finish()?;
    }
    Ok((id, written))
}

/// Writes a snapshot object whose parent is the ref's current target and
/// moves the ref to it; if another process moved the ref meanwhile, the
/// snapshot is re-parented onto the new target and tried again. Returns
/// (id, parent, (objects, bytes) written).
pub fn commit(
    store: &Store,
    ref_name: &str,
    snap: &mut Snapshot,
) -> Result<(ObjectId, Option<ObjectId>, (u64, u64))> {
    let mut written = (0, 0);
    for _ in 0..100 {
        let parent = store.read_ref(ref_name)?;
        snap.parents = parent.into_iter().collect();
        let bytes = snap.encode();
        let id = ObjectId::compute(ObjectType::Snapshot, &bytes);
        if !store.contains(&id) {
            let s = store.writer()?;
            s.put_hashed(ObjectType::Snapshot, id, &bytes)?;
            written.0 += s.stats.objects.load(Ordering::Relaxed);
            written.1 += s.stats.stored_bytes.load(Ordering::Relaxed);
            s.finish()?;
        }
        match store.update_ref(ref_name, Some(parent), Some(id)) {
            Ok(()) => return Ok((id, parent, written)),
            Err(SyncError::RefConflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(SyncError::Invalid(format!(
        "ref {ref_name} kept moving; gave up after 100 attempts"
    )))
}

/// An object sink over a store that keeps new trees and lists in memory and
/// drops chunks: what a working-tree diff needs.
pub struct Scratch<'a> {
    /// The store read for what already exists.
    pub store: &'a Store,
    /// New trees and lists, in memory.
    pub mem: MemStore,
}

impl ObjectSink for Scratch<'_> {
    fn put_hashed(&self, tag: ObjectType, id: ObjectId, bytes: &[u8]) -> Result<bool> {
        if self.store.contains(&id) {
            return Ok(false);
        }
        self.mem.put_hashed(tag, id, bytes)
    }

    fn contains(&self, id: &ObjectId) -> bool {
        self.store.contains(id) || self.mem.has(id)
    }
}

/// Builds the tree of the working tree now, without storing anything; the
/// returned scratch holds the new tree objects (read them through
/// `Overlay { first: &scratch.mem, second: store }`).
pub fn scan_working_tree<'a>(
    store: &'a Store,
    sources: &[PathBuf],
    excludes: &[String],
    skip: &[PathBuf],
    base: Option<&Path>,
    progress: &dyn Progress,
) -> Result<(ObjectId, Scratch<'a>)> {
    let scratch = Scratch {
        store,
        mem: MemStore::new(false),
    };
    // A single source that is gone now: everything in it was removed.
    if let [one] = sources
        && !one.exists()
        && fs::symlink_metadata(one).is_err()
    {
        let root = MapBuilder::new(ObjectType::Tree, &scratch).finish()?;
        return Ok((root, scratch));
    }
    let sources: Vec<PathBuf> = sources.iter().map(|p| absolute(p)).collect::<Result<_>>()?;
    let mut skip: Vec<PathBuf> = skip
        .iter()
        .filter_map(|p| fs::canonicalize(p).ok())
        .collect();
    skip.extend(store_paths(store));
    let cache = StatCache::load(&StatCache::path_for(&store.cache_dir(), &sources));
    let pool = pool(None)?;
    let root = {
        let scanner = Scanner::new(
            &scratch,
            Chunker::new(&store.config().chunker),
            cache,
            false,
            progress,
        )
        .with_skip(skip)
        .with_excludes(excludes.to_vec())
        .with_ignore_base(base.and_then(|b| fs::canonicalize(b).ok()));
        pool.install(|| scanner.scan(&sources))?
    };
    Ok((root, scratch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directories_whose_ignore_files_apply_above_a_path() {
        let p = |s: &str| PathBuf::from(s);
        assert_eq!(
            ignore_dirs_above(&p("/w"), &p("/w/a/b")),
            vec![p("/w"), p("/w/a")]
        );
        assert_eq!(ignore_dirs_above(&p("/w"), &p("/w/a")), vec![p("/w")]);
        assert!(ignore_dirs_above(&p("/w"), &p("/w")).is_empty());
        assert!(ignore_dirs_above(&p("/w"), &p("/other/a")).is_empty());
        assert!(ignore_dirs_above(&p("/w/a"), &p("/w")).is_empty());
    }
}
