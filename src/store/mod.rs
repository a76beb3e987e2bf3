//! The store: append-only packs with per-pack indexes, refs moved by
//! compare-and-swap, a process lock, a stat cache. Its files live in a
//! [`Backend`]: a local directory or S3-compatible object storage.
//!
//! Layout of a store (`.sp-sync/`, or under an S3 prefix):
//! ```text
//! store.toml           format version, chunker parameters, cipher, compression
//! config.toml          machine-local settings (remotes)
//! lock                 flock(2): shared by every command, exclusive for gc
//! packs/<name>.pack    pack streams (name = hex of the pack's trailer hash)
//! packs/<name>.idx     their indexes
//! refs/<name>          "<64 hex>\n"
//! refs.lock            flock(2) held while a ref is compared and swapped
//! tmp/                 packs and refs being written (local directories)
//! ```

pub mod backend;
pub mod fsck;
pub mod gc;
pub mod index;
pub mod receive;
pub mod refs;
pub mod repack;
pub mod s3;
pub mod statcache;
pub mod writer;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::error::{IoContext, Result, SyncError};
use crate::id::{IdMap, ObjectId, ObjectType};
use crate::object::ObjectSource;
use crate::pack::{
    FLAG_BLOCK, FLAG_DELTA, FLAG_DICT, MAX_CHAIN_RECORDS, Verify, delta_base, parse_record_header,
    record_header_len, unpack_as, unpack_delta_as,
};
use index::IdxEntry;

pub use backend::{Backend, FsBackend};
pub use writer::WriteSession;

/// The name of the store directory inside a working tree.
pub const STORE_DIR: &str = ".sp-sync";
/// The format a new store is created with (and every store without
/// dictionaries keeps).
pub const FORMAT_VERSION: u32 = 1;
/// The format of a store that holds dictionary-compressed records
/// (store-format.md §3.8, §6): a store is moved to it before it first writes one.
pub const FORMAT_DICT: u32 = 2;
/// The format of a store that holds stored deltas (pack flags 2 in a
/// stored pack, written by `gc --repack`; store-format.md §6): format 2
/// plus deltas. A store is moved to it before its first delta record.
pub const FORMAT_DELTA: u32 = 3;
/// The format of a store that holds block records (several small objects
/// compressed together, store-format.md §6.1): format 3 plus blocks. A
/// store is moved to it before its first block record.
pub const FORMAT_BLOCK: u32 = 4;

pub use crate::chunker::ChunkerConfig;

/// Boundary parameters of one level of a map kind, as recorded.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeRecord {
    pub min: u64,
    pub target: u64,
    pub max: u64,
    pub min_entries: u64,
}

impl NodeRecord {
    fn of(p: &crate::pmap::NodeParams) -> Self {
        NodeRecord {
            min: p.min as u64,
            target: p.target,
            max: p.max as u64,
            min_entries: p.min_entries,
        }
    }
}

/// The parameters that decide object ids besides the chunker's: how maps
/// and chunk lists are cut into nodes and what is stored inline. A binary
/// whose values differ would give the same directory or table another id,
/// so a store records the values it was made with (`[objects]` in
/// `store.toml`) and a binary refuses a store whose values are not its own.
/// A store without the record predates it and was made with today's values.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ObjectParams {
    /// Map node version and boundary hash (`BLAKE3(level || key)`, first
    /// four bytes little endian, boundary when `h × target < entry bytes << 32`).
    pub map_rule: String,
    pub tree_leaf: NodeRecord,
    pub tree_internal: NodeRecord,
    pub rows_leaf: NodeRecord,
    pub rows_internal: NodeRecord,
    /// List boundary: after `list_min_entries`, when the entry id's first
    /// four bytes (little endian) are below `list_threshold`; forced at
    /// `list_max_entries`.
    pub list_min_entries: u64,
    pub list_max_entries: u64,
    pub list_threshold: u32,
    /// Chunk lists of at most this many chunks are stored inline.
    pub inline_chunks: u64,
    /// TEXT and BLOB values of at most this many bytes are stored in the row.
    pub inline_value: u64,
}

impl ObjectParams {
    /// The settings that differ, as `name = store's (this binary's)`.
    fn differences(&self, other: &ObjectParams) -> String {
        let (Ok(toml::Value::Table(a)), Ok(toml::Value::Table(b))) =
            (toml::Value::try_from(self), toml::Value::try_from(other))
        else {
            return "unreadable".into();
        };
        let mut out = Vec::new();
        for (k, v) in &a {
            match (v, b.get(k)) {
                (toml::Value::Table(x), Some(toml::Value::Table(y))) => {
                    for (kk, vv) in x {
                        if y.get(kk) != Some(vv) {
                            let theirs = y.get(kk).map(|t| t.to_string()).unwrap_or_default();
                            out.push(format!("{k}.{kk} = {vv} (this binary: {theirs})"));
                        }
                    }
                }
                (x, y) if y != Some(x) => {
                    let theirs = y.map(|t| t.to_string()).unwrap_or_default();
                    out.push(format!("{k} = {x} (this binary: {theirs})"));
                }
                _ => {}
            }
        }
        out.join(", ")
    }
}

impl ObjectParams {
    /// The values of every store made before `[objects]` was recorded
    /// (format 1 as first released), written out rather than taken from the
    /// constants, so that a binary with other constants refuses those
    /// stores too.
    pub fn v1() -> Self {
        let node = |min, target, max, min_entries| NodeRecord {
            min,
            target,
            max,
            min_entries,
        };
        ObjectParams {
            map_rule: "node-v1-blake3-level-key".into(),
            tree_leaf: node(512, 4096, 65536, 1),
            tree_internal: node(512, 4096, 65536, 1),
            rows_leaf: node(128, 1280, 2688, 2),
            rows_internal: node(64, 256, 576, 2),
            list_min_entries: 8,
            list_max_entries: 512,
            list_threshold: 67_108_863,
            inline_chunks: 16,
            inline_value: 4096,
        }
    }
}

impl Default for ObjectParams {
    /// This binary's values.
    fn default() -> Self {
        use crate::object::list;
        use crate::pmap::{ROWS_PARAMS, TREE_PARAMS};
        ObjectParams {
            map_rule: format!("node-v{}-blake3-level-key", crate::pmap::NODE_VERSION),
            tree_leaf: NodeRecord::of(&TREE_PARAMS.leaf),
            tree_internal: NodeRecord::of(&TREE_PARAMS.internal),
            rows_leaf: NodeRecord::of(&ROWS_PARAMS.leaf),
            rows_internal: NodeRecord::of(&ROWS_PARAMS.internal),
            list_min_entries: list::MIN_LIST_ENTRIES as u64,
            list_max_entries: list::MAX_LIST_ENTRIES as u64,
            list_threshold: list::LIST_BOUNDARY_THRESHOLD,
            inline_chunks: list::MAX_INLINE as u64,
            inline_value: crate::object::row::MAX_INLINE_VALUE as u64,
        }
    }
}

/// `store.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoreConfig {
    pub format: u32,
    pub cipher: String,
    pub compression: String,
    pub compression_level: i32,
    /// The zstd level of blocks of row-map leaves (§6.1, transposed rows
    /// compress about as well at 1 as at 3, in two thirds of the time).
    /// Absent in stores made before it was recorded: 1.
    #[serde(default = "default_rows_level")]
    pub rows_compression_level: i32,
    pub pack_size: u64,
    pub chunker: ChunkerConfig,
    /// Absent in stores made before it was recorded: [`ObjectParams::v1`].
    #[serde(default = "ObjectParams::v1")]
    pub objects: ObjectParams,
}

fn default_rows_level() -> i32 {
    1
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            format: FORMAT_VERSION,
            cipher: "none".into(),
            compression: "zstd".into(),
            compression_level: 3,
            rows_compression_level: default_rows_level(),
            pack_size: 32 << 20,
            chunker: ChunkerConfig::default(),
            objects: ObjectParams::default(),
        }
    }
}

impl StoreConfig {
    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |r: String| SyncError::corrupt_file("store config", path, r);
        if !(FORMAT_VERSION..=FORMAT_BLOCK).contains(&self.format) {
            return Err(bad(format!(
                "store format {} is not supported by this sp-sync (it reads formats \
                 {FORMAT_VERSION} to {FORMAT_BLOCK})",
                self.format
            )));
        }
        if self.cipher != "none" {
            return Err(bad(format!("cipher {:?} is not supported", self.cipher)));
        }
        if self.compression != "zstd" || !(0..=19).contains(&self.compression_level) {
            return Err(bad("compression must be zstd, level 0..=19".into()));
        }
        if !(1..=19).contains(&self.rows_compression_level) {
            return Err(bad("rows_compression_level must be 1..=19".into()));
        }
        let c = &self.chunker;
        if c.algorithm != "fastcdc-2020"
            || !(64..=1 << 20).contains(&c.min)
            || !(256..=4 << 20).contains(&c.avg)
            || !(1024..=8 << 20).contains(&c.max)
            || c.min > c.avg
            || c.avg > c.max
            || c.normalization > 3
            || !c.min.is_multiple_of(2)
            || !c.avg.is_multiple_of(2)
            || !c.max.is_multiple_of(2)
        {
            return Err(bad("unsupported chunker parameters".into()));
        }
        if self.objects != ObjectParams::default() {
            return Err(bad(format!(
                "the store's object parameters ([objects]) differ from this sp-sync's \
                 ({}): its trees, tables and lists would get other ids; use the sp-sync \
                 version that made the store",
                self.objects.differences(&ObjectParams::default())
            )));
        }
        if !(1 << 20..=1 << 30).contains(&self.pack_size) {
            return Err(bad("pack_size must be between 1 MiB and 1 GiB".into()));
        }
        Ok(())
    }
}

/// How a process holds the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Reading and adding: any number of processes at once.
    Shared,
    /// Removing (gc): alone.
    Exclusive,
}

/// A `store.toml`'s settings, checked (`path` names it in errors).
fn parse_config(text: &[u8], path: &Path) -> Result<StoreConfig> {
    let text = std::str::from_utf8(text)
        .map_err(|_| SyncError::corrupt_file("store config", path, "not UTF-8"))?;
    let config: StoreConfig = toml::from_str(text)
        .map_err(|e| SyncError::corrupt_file("store config", path, e.message().to_string()))?;
    config.validate(path)?;
    Ok(config)
}

/// Where an object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub pack: u32,
    pub offset: u64,
    pub clen: u32,
    pub ulen: u32,
    pub tag: ObjectType,
    pub flags: u8,
}

#[derive(Debug, Clone)]
pub struct PackInfo {
    pub name: ObjectId,
    pub objects: usize,
}

#[derive(Default)]
struct Index {
    map: IdMap<Location>,
    /// The dictionary objects among them.
    dicts: Vec<ObjectId>,
    packs: Vec<PackInfo>,
    /// Pack names already loaded (for refresh).
    known: crate::id::IdSet,
}

/// An open store.
pub struct Store {
    backend: Arc<dyn Backend>,
    config: StoreConfig,
    index: RwLock<Index>,
    /// Problems met while loading indexes (reported by fsck).
    pub load_warnings: Vec<String>,
    cache_override: Option<PathBuf>,
    /// The format `store.toml` says (2: dictionary records allowed, 3:
    /// stored deltas too).
    format: std::sync::atomic::AtomicU32,
    /// Sample bytes before a dictionary is trained (else `dict::train_bytes`).
    dict_training: Option<usize>,
    /// Whether new objects may be compressed with (and train) dictionaries.
    write_dicts: bool,
    /// Blocks decoded lately: (pack, offset, members' bytes, their ends).
    blocks: std::sync::Mutex<Vec<CachedBlock>>,
    /// Per block (pack, offset): its payload's and its members' bytes.
    block_sizes: std::sync::Mutex<std::collections::HashMap<(u32, u64), (u64, u64)>>,
    _lock: Option<File>,
}

/// The most bytes a block's member sizes take (a varint of at most 10
/// bytes per member).
const SIZES_BYTES_MAX: u64 = 10 * crate::block::MAX_MEMBERS as u64;

/// A decoded block: its members' bytes one after another, where each ends.
type CachedBlock = (ObjectId, u64, Arc<(Vec<u8>, Vec<usize>)>);
/// Decoded blocks a store keeps (a table read in key order reads each once).
const BLOCK_CACHE: usize = 8;

impl Store {
    /// Creates a store in the directory `dir` (the `.sp-sync` directory
    /// itself). Returns false, changing nothing, when one is already there.
    pub fn init(dir: &Path) -> Result<bool> {
        if dir.join("store.toml").exists() {
            return Ok(false);
        }
        // An empty directory, or one holding only the skeleton an
        // interrupted (or concurrent) init leaves, becomes a store.
        const SKELETON: [&str; 7] = [
            "packs",
            "refs",
            "tmp",
            "lock",
            "refs.lock",
            "config.toml",
            MADE_FILE,
        ];
        if dir.exists() {
            for e in fs::read_dir(dir).ctx("reading", dir)? {
                let e = e.ctx("reading", dir)?;
                let name = e.file_name();
                if name == "store.toml" {
                    // A concurrent init finished since we looked.
                    return Ok(false);
                }
                let known = name
                    .to_str()
                    .is_some_and(|n| SKELETON.contains(&n) || n.ends_with(".tmp"));
                if !known {
                    return Err(SyncError::Invalid(format!(
                        "{} exists and is not an sp-sync store",
                        dir.display()
                    )));
                }
            }
        }
        // A store inside another one's directory would be taken for its
        // refs or packs (fsck of the outer store fails, gc could remove the
        // inner one's packs).
        if let Some(outer) = enclosing_store(dir) {
            return Err(SyncError::Invalid(format!(
                "{} lies inside the sp-sync store {}: a store there would damage it; choose \
                 a place outside it",
                dir.display(),
                outer.display()
            )));
        }
        let fresh = !dir.exists();
        for sub in ["packs", "refs", "tmp"] {
            fs::create_dir_all(dir.join(sub)).ctx("creating", dir.join(sub))?;
        }
        if fresh {
            // What a store holds is the user's files, secrets among them:
            // only its owner reads it (as restic's repositories).
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .ctx("setting mode of", dir)?;
        }
        File::create(dir.join("lock")).ctx("creating", dir.join("lock"))?;
        File::create(dir.join("refs.lock")).ctx("creating", dir.join("refs.lock"))?;
        // From the start, this store trusts the places only the snapshots
        // it made itself record (§5.1).
        {
            use std::os::unix::fs::OpenOptionsExt;
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(dir.join(MADE_FILE))
                .ctx("creating", dir.join(MADE_FILE))?;
        }
        Self::init_backend(&FsBackend::new(dir))
    }

    /// Records that this store's own `snapshot` made `id` (store-format
    /// §5.1): a machine-local list no transfer reads or writes, so a
    /// snapshot pulled from a remote is never on it, whatever host it
    /// names. A store that is not a local directory records nothing.
    pub fn record_made(&self, id: &ObjectId) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let Some(dir) = self.local_dir() else {
            return Ok(());
        };
        let path = dir.join(MADE_FILE);
        let mut f = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc_nofollow())
            .open(&path)
            .ctx("opening", &path)?;
        // One write of one line: appends of concurrent snapshots never mix.
        f.write_all(format!("{id}\n").as_bytes())
            .ctx("writing", &path)
    }

    /// Whether the places the snapshot `id` records (files outside the
    /// working tree, database URLs) may be used without the user naming
    /// them: it is on this store's list of the snapshots it made (§5.1).
    /// A store made before the list existed (no `made` file) and a store
    /// that is not a local directory fall back to the snapshot's recorded
    /// host being this one.
    pub fn made_here(&self, id: &ObjectId, host: &str) -> bool {
        self.made_list().is_made(id, host)
    }

    /// The list [`made_here`](Self::made_here) reads, read once: for
    /// asking of many snapshots.
    pub fn made_list(&self) -> MadeList {
        use std::io::BufRead;
        use std::os::unix::fs::OpenOptionsExt;
        let Some(dir) = self.local_dir() else {
            return MadeList(None);
        };
        let path = dir.join(MADE_FILE);
        let f = match fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc_nofollow())
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return MadeList(None),
            Err(_) => return MadeList(Some(Default::default())),
        };
        MadeList(Some(
            std::io::BufReader::new(f)
                .lines()
                .map_while(|l| l.ok())
                .filter_map(|l| ObjectId::from_hex(l.trim_end()))
                .collect(),
        ))
    }

    /// Creates a store on any backend; false when one is already there.
    pub fn init_backend(backend: &dyn Backend) -> Result<bool> {
        if backend.get("store.toml")?.is_some() {
            return Ok(false);
        }
        if let Some(outer) = backend.enclosing_store()? {
            return Err(SyncError::Invalid(format!(
                "{} lies inside the sp-sync store {outer}: a store there would damage it; choose \
                 a place outside it",
                backend.describe()
            )));
        }
        let config =
            "# Machine-local settings of this store (remotes). Not part of any snapshot.\n";
        backend.put("config.toml", config.as_bytes())?;
        let text = format!(
            "# sp-sync store: these settings are part of the store format.\n{}",
            toml::to_string(&StoreConfig::default())
                .map_err(|e| SyncError::Invalid(format!("store config: {e}")))?
        );
        // store.toml last: its presence marks a complete store.
        backend.put("store.toml", text.as_bytes())?;
        Ok(true)
    }

    /// Opens the store in directory `dir`, holding the process lock in
    /// `mode` for the life of the value.
    pub fn open(dir: &Path, mode: LockMode) -> Result<Store> {
        Self::open_within(dir, mode, None)
    }

    /// [`open`](Self::open), waiting at most `limit` (`None`:
    /// `SP_SYNC_LOCK_TIMEOUT`) for the lock.
    pub fn open_within(
        dir: &Path,
        mode: LockMode,
        limit: Option<std::time::Duration>,
    ) -> Result<Store> {
        if !dir.join("store.toml").is_file() {
            return Err(SyncError::NoStore(format!(
                "no sp-sync store at {} (run `sp-sync init`)",
                dir.display()
            )));
        }
        // (Checked before anything is made there: a folder holding some
        // other program's `store.toml` gets no `tmp/`.)
        let cfg = dir.join("store.toml");
        parse_config(&fs::read(&cfg).ctx("reading", &cfg)?, &cfg)?;
        for sub in ["packs", "refs", "tmp"] {
            let p = dir.join(sub);
            if !p.is_dir() {
                fs::create_dir_all(&p).ctx("creating", &p)?;
            }
        }
        let backend = match limit {
            Some(l) => FsBackend::new(dir).with_lock_limit(l),
            None => FsBackend::new(dir),
        };
        Self::open_backend(Arc::new(backend), mode)
    }

    /// Opens a store on any backend.
    pub fn open_backend(backend: Arc<dyn Backend>, mode: LockMode) -> Result<Store> {
        let where_ = backend.describe();
        let text = match backend.get("store.toml")? {
            Some(t) => t,
            None => {
                return Err(SyncError::NoStore(format!(
                    "no sp-sync store at {where_} (run `sp-sync init`)"
                )));
            }
        };
        let cfg_path = PathBuf::from(format!("{where_}/store.toml"));
        let config = parse_config(&text, &cfg_path)?;
        let lock = backend.lock(mode)?;
        let format = config.format;
        let store = Store {
            backend,
            config,
            index: RwLock::new(Index::default()),
            load_warnings: Vec::new(),
            cache_override: None,
            format: std::sync::atomic::AtomicU32::new(format),
            dict_training: None,
            write_dicts: true,
            blocks: Default::default(),
            block_sizes: Default::default(),
            _lock: lock,
        };
        let mut store = store;
        let warnings = store.refresh()?;
        store.load_warnings = warnings;
        Ok(store)
    }

    /// Whether this process holds the store's lock (local stores).
    pub fn is_locked(&self) -> bool {
        self._lock.is_some()
    }

    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    pub(crate) fn backend_arc(&self) -> Arc<dyn Backend> {
        self.backend.clone()
    }

    /// Where the store is, for messages.
    pub fn location_name(&self) -> String {
        self.backend.describe()
    }

    /// The store's directory, when it is a local one.
    pub fn local_dir(&self) -> Option<&Path> {
        self.backend.local_dir()
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.backend.tmp_dir()
    }

    /// The machine-local cache directory of this store (stat caches):
    /// `$SP_SYNC_CACHE_DIR`, else `$XDG_CACHE_HOME/sp-sync`, else
    /// `~/.cache/sp-sync`, then a directory named after the store's location.
    /// Like restic's and borg's caches it lives outside the store: it is
    /// not part of what the store holds, and a shared store must not share it.
    pub fn cache_dir(&self) -> PathBuf {
        if let Some(d) = &self.cache_override {
            return d.clone();
        }
        let base = std::env::var_os("SP_SYNC_CACHE_DIR")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("sp-sync"))
            })
            .or_else(|| {
                std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache").join("sp-sync"))
            });
        let key = match self.local_dir() {
            Some(d) => {
                use std::os::unix::ffi::OsStrExt;
                let canon = fs::canonicalize(d).unwrap_or_else(|_| d.to_path_buf());
                canon.as_os_str().as_bytes().to_vec()
            }
            None => self.location_name().into_bytes(),
        };
        let h = crate::id::hex(&blake3::hash(&key).as_bytes()[..16]);
        match (base, self.local_dir()) {
            (Some(b), _) if b.is_absolute() => b.join(h),
            (_, Some(d)) => d.join("cache"),
            _ => private_tmp_cache("sp-sync-cache").join(h),
        }
    }

    /// Trains dictionaries after `bytes` of samples of a kind (for
    /// embedders and tests; the default is `crate::dict::train_bytes`).
    pub fn set_dict_training(&mut self, bytes: usize) {
        self.dict_training = Some(bytes.max(1024));
    }

    /// Whether this handle's write sessions use and train dictionaries
    /// (default: yes, unless `SP_SYNC_DICTIONARIES=0`). Reading never needs it.
    pub fn set_write_dictionaries(&mut self, on: bool) {
        self.write_dicts = on;
    }

    /// Whether write sessions use and train dictionaries.
    pub fn writes_dictionaries(&self) -> bool {
        self.write_dicts && crate::dict::enabled()
    }

    /// Sample bytes of `kind` gathered before its dictionary is trained.
    pub fn dict_training(&self, kind: ObjectType) -> usize {
        self.dict_training
            .unwrap_or_else(|| crate::dict::train_bytes(kind))
    }

    /// Uses `dir` as this store's cache directory (for embedders and tests).
    pub fn set_cache_dir(&mut self, dir: PathBuf) {
        self.cache_override = Some(dir);
    }

    pub fn pack_key(name: &ObjectId) -> String {
        format!("packs/{name}.pack")
    }

    pub fn idx_key(name: &ObjectId) -> String {
        format!("packs/{name}.idx")
    }

    /// The file of a pack, for a store in a local directory.
    pub fn pack_path(&self, name: &ObjectId) -> PathBuf {
        self.local_dir()
            .map(|d| d.join(Self::pack_key(name)))
            .unwrap_or_else(|| {
                PathBuf::from(format!("{}/{}", self.location_name(), Self::pack_key(name)))
            })
    }

    /// The index file of a pack, for a store in a local directory.
    pub fn idx_path(&self, name: &ObjectId) -> PathBuf {
        self.local_dir()
            .map(|d| d.join(Self::idx_key(name)))
            .unwrap_or_else(|| {
                PathBuf::from(format!("{}/{}", self.location_name(), Self::idx_key(name)))
            })
    }

    /// Names of the packs that have an index file, and of those that don't.
    pub fn list_pack_files(&self) -> Result<(Vec<ObjectId>, Vec<ObjectId>)> {
        let mut idx = Vec::new();
        let mut packs = Vec::new();
        for key in self.backend.list("packs/")? {
            let Some(name) = key.strip_prefix("packs/") else {
                continue;
            };
            if let Some(stem) = name.strip_suffix(".idx") {
                if let Some(id) = ObjectId::from_hex(stem) {
                    idx.push(id);
                }
            } else if let Some(stem) = name.strip_suffix(".pack")
                && let Some(id) = ObjectId::from_hex(stem)
            {
                packs.push(id);
            }
        }
        idx.sort();
        packs.sort();
        let without: Vec<ObjectId> = packs
            .into_iter()
            .filter(|p| idx.binary_search(p).is_err())
            .collect();
        Ok((idx, without))
    }

    /// Loads the indexes of packs this process has not seen yet (written by
    /// other processes since it opened the store). Returns warnings about
    /// damaged indexes (their packs are read instead).
    pub fn refresh(&self) -> Result<Vec<String>> {
        // Not again from inside itself: scanning a pack whose index is
        // damaged reads objects, and one it lacks would load the indexes
        // again (and scan that pack again, without end).
        std::thread_local! {
            static REFRESHING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
        }
        struct Busy;
        impl Drop for Busy {
            fn drop(&mut self) {
                REFRESHING.with(|r| r.set(false));
            }
        }
        if REFRESHING.with(|r| r.replace(true)) {
            return Ok(Vec::new());
        }
        let _busy = Busy;
        let (names, _) = self.list_pack_files()?;
        let mut warnings = Vec::new();
        // Read the new indexes first, so the map is grown once for all of
        // them; entries go from the index bytes straight into the map.
        let mut read: Vec<(ObjectId, Vec<u8>)> = Vec::new();
        for name in names {
            if self
                .index
                .read()
                .map(|ix| ix.known.contains(&name))
                .unwrap_or(false)
            {
                continue;
            }
            match self.backend.get(&Self::idx_key(&name)) {
                Ok(Some(b)) => read.push((name, b)),
                Ok(None) => continue,
                Err(e) => {
                    warnings.push(format!(
                        "cannot read {}: {e}",
                        self.idx_path(&name).display()
                    ));
                    continue;
                }
            }
        }
        let total: usize = read.iter().map(|(_, b)| index::declared_count(b)).sum();
        if let Ok(mut ix) = self.index.write() {
            ix.map.reserve(total.min(1 << 28));
        }
        for (name, bytes) in read {
            let path = self.idx_path(&name);
            let loaded = match self.index.write() {
                Ok(mut ix) => {
                    if ix.known.contains(&name) {
                        continue;
                    }
                    let pack = ix.packs.len() as u32;
                    index::decode_with(&bytes, &path, Some(&name), |e| ix.insert(pack, &e))
                        .map(|_| {
                            ix.known.insert(name);
                            ix.packs.push(PackInfo {
                                name,
                                objects: index::declared_count(&bytes),
                            });
                        })
                        .map_err(|e| e.to_string())
                }
                Err(_) => continue,
            };
            if let Err(why) = loaded {
                // A damaged index: fall back to reading the pack itself.
                warnings.push(format!("{why} (run `sp-sync fsck --rebuild-index`)"));
                tracing::warn!("{why}; reading the pack instead");
                match self.scan_pack(&name) {
                    Ok(e) => self.register_pack(name, &e),
                    Err(e) => {
                        // (Tried once per process: not at every object
                        // found missing.)
                        if let Ok(mut ix) = self.index.write() {
                            ix.known.insert(name);
                        }
                        warnings.push(e.to_string());
                    }
                }
            }
        }
        Ok(warnings)
    }

    /// Reads a whole pack, verifying every object, and returns index entries
    /// for the good ones (an error if the pack is damaged).
    pub fn scan_pack(&self, name: &ObjectId) -> Result<Vec<IdxEntry>> {
        let path = self.pack_path(name);
        let r = self.backend.open_read(&Self::pack_key(name))?;
        let mut r = crate::pack::PackReader::new(r, path.display().to_string())?.with_blocks();
        let mut out = Vec::new();
        let mut here: IdMap<IdxEntry> = IdMap::default();
        while let Some(rec) = r.next_record()? {
            let bytes = self.unpack_in_pack(
                rec.tag,
                &rec.id,
                rec.flags,
                rec.ulen,
                &rec.payload,
                (name, &here),
            )?;
            if rec.tag == ObjectType::Dict {
                // Records later in this pack may need it before its index is back.
                remember_dictionary(&rec.id, &bytes);
            }
            let e = IdxEntry::of(&rec);
            here.insert(rec.id, e);
            out.push(e);
        }
        r.expect_eof()?;
        if r.trailer != Some(*name) {
            return Err(SyncError::corrupt_file(
                "pack",
                &path,
                "trailer does not match the pack's name",
            ));
        }
        Ok(out)
    }

    /// Registers a pack's entries in this process's index.
    pub(crate) fn register_pack(&self, name: ObjectId, entries: &[IdxEntry]) {
        if let Ok(mut ix) = self.index.write()
            && ix.known.insert(name)
        {
            ix.add_pack(name, entries);
        }
    }

    pub fn contains(&self, id: &ObjectId) -> bool {
        self.index
            .read()
            .map(|ix| ix.map.contains_key(id))
            .unwrap_or(false)
    }

    pub fn location(&self, id: &ObjectId) -> Option<Location> {
        self.index.read().ok()?.map.get(id).copied()
    }

    pub fn pack_name(&self, pack: u32) -> Option<ObjectId> {
        self.index
            .read()
            .ok()?
            .packs
            .get(pack as usize)
            .map(|p| p.name)
    }

    pub fn packs(&self) -> Vec<PackInfo> {
        self.index
            .read()
            .map(|ix| ix.packs.clone())
            .unwrap_or_default()
    }

    /// Bytes the indexed objects take in their packs (what a store on
    /// object storage holds, less the packs' headers and indexes).
    pub fn stored_bytes(&self) -> u64 {
        self.index
            .read()
            .map(|ix| ix.map.values().map(|l| u64::from(l.clen)).sum())
            .unwrap_or(0)
    }

    /// Number of objects indexed.
    pub fn object_count(&self) -> usize {
        self.index.read().map(|ix| ix.map.len()).unwrap_or(0)
    }

    /// All indexed ids with their locations (a copy).
    pub fn all_objects(&self) -> Vec<(ObjectId, Location)> {
        self.index
            .read()
            .map(|ix| ix.map.iter().map(|(k, v)| (*k, *v)).collect())
            .unwrap_or_default()
    }

    /// Snapshot ids whose hex starts with `prefix`.
    pub fn snapshots_with_prefix(&self, prefix: &str) -> Vec<ObjectId> {
        self.index
            .read()
            .map(|ix| {
                ix.map
                    .iter()
                    .filter(|(id, loc)| {
                        loc.tag == ObjectType::Snapshot && id.has_hex_prefix(prefix)
                    })
                    .map(|(id, _)| *id)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Reads an object's record as it may leave the store (transfers,
    /// bundles): as stored, except that a dictionary-compressed record
    /// (flags 3) or a stored delta (flags 2), which only its store can
    /// read, is decoded, verified and compressed again alone. The header
    /// is checked against the index.
    pub fn read_raw(&self, id: &ObjectId) -> Result<(Location, Vec<u8>)> {
        let block = self.location(id).is_some_and(|l| l.flags == FLAG_BLOCK);
        let (mut loc, payload) = self.read_record(id)?;
        if block {
            // A block member comes back raw: compress it alone to leave.
            let (flags, payload) = crate::pack::compress(&payload, self.config.compression_level);
            loc.flags = flags;
            loc.clen = payload.len() as u32;
            return Ok((loc, payload));
        }
        if loc.flags != FLAG_DICT && loc.flags != FLAG_DELTA {
            return Ok((loc, payload));
        }
        let data = self.unpack(loc.tag, id, loc.flags, u64::from(loc.ulen), &payload)?;
        let (flags, payload) = crate::pack::compress(&data, self.config.compression_level);
        loc.flags = flags;
        loc.clen = payload.len() as u32;
        Ok((loc, payload))
    }

    /// Decompresses a record's payload and checks the bytes against `id`;
    /// a dictionary-compressed record (flags 3) is read with the dictionary
    /// it names, which must be in this store (or this process's cache of
    /// verified dictionaries); a stored delta (flags 2) with its base,
    /// read from this store, decoding at most [`MAX_CHAIN_RECORDS`]
    /// records in all (a longer chain, a cycle or a missing base is
    /// corruption). The object asked for is verified; the bases on its
    /// chain are not checked one by one (wrong bytes anywhere on the chain
    /// cannot give bytes that hash to `id`), unless it fails: then the
    /// chain is decoded again, each link checked, to name the bad one.
    pub fn unpack(
        &self,
        tag: ObjectType,
        id: &ObjectId,
        flags: u8,
        ulen: u64,
        payload: &[u8],
    ) -> Result<Vec<u8>> {
        self.decode(tag, id, flags, ulen, payload, None)
    }

    /// [`Store::unpack`] for a record of the pack `local` names whose index
    /// this process has not loaded (a pack being scanned): delta bases are
    /// looked up in `local`'s entries (records read so far) as well.
    pub(crate) fn unpack_in_pack(
        &self,
        tag: ObjectType,
        id: &ObjectId,
        flags: u8,
        ulen: u64,
        payload: &[u8],
        local: (&ObjectId, &IdMap<IdxEntry>),
    ) -> Result<Vec<u8>> {
        self.decode(tag, id, flags, ulen, payload, Some(local))
    }

    fn decode(
        &self,
        tag: ObjectType,
        id: &ObjectId,
        flags: u8,
        ulen: u64,
        payload: &[u8],
        local: Option<(&ObjectId, &IdMap<IdxEntry>)>,
    ) -> Result<Vec<u8>> {
        let fast = self.decode_chain(tag, id, flags, ulen, payload, 1, local, Verify::No);
        if fast.is_ok() || flags != FLAG_DELTA {
            return fast;
        }
        // Rare (a damaged store): the same chain, every link checked, so
        // the error names the record at fault.
        self.decode_chain(tag, id, flags, ulen, payload, 1, local, Verify::Yes)
    }

    /// The base a stored delta record of `id` names (None: not a delta).
    pub fn delta_base_of(&self, id: &ObjectId) -> Result<Option<ObjectId>> {
        match self.location(id) {
            Some(l) if l.flags == FLAG_DELTA => {
                let (_, payload) = self.read_record(id)?;
                delta_base(&payload)
                    .map(Some)
                    .ok_or_else(|| crate::object::corrupt(l.tag, id, "bad delta record"))
            }
            _ => Ok(None),
        }
    }

    /// Decodes one record; `records` counts it and the records decoded
    /// before it on this chain (1: the object asked for, always verified;
    /// the bases after it only when `links` says so).
    #[allow(clippy::too_many_arguments)]
    fn decode_chain(
        &self,
        tag: ObjectType,
        id: &ObjectId,
        flags: u8,
        ulen: u64,
        payload: &[u8],
        records: usize,
        local: Option<(&ObjectId, &IdMap<IdxEntry>)>,
        links: Verify,
    ) -> Result<Vec<u8>> {
        let verify = if records == 1 { Verify::Yes } else { links };
        if flags == FLAG_DELTA {
            let base = delta_base(payload)
                .ok_or_else(|| crate::object::corrupt(tag, id, "bad delta record"))?;
            if records >= MAX_CHAIN_RECORDS {
                return Err(crate::object::corrupt(
                    tag,
                    id,
                    format!(
                        "delta chain longer than {MAX_CHAIN_RECORDS} records (or a cycle) at \
                         base {}",
                        base.short()
                    ),
                ));
            }
            if base == *id {
                return Err(crate::object::corrupt(tag, id, "a delta against itself"));
            }
            let base_bytes = self
                .base_record(&base, local)
                .and_then(|(btag, bflags, bulen, bpayload)| {
                    self.decode_chain(
                        btag,
                        &base,
                        bflags,
                        bulen,
                        &bpayload,
                        records + 1,
                        local,
                        links,
                    )
                })
                .map_err(|e| {
                    // Only the object asked for names its base: a chain's
                    // inner links would repeat every id on it.
                    if records > 1 {
                        e
                    } else {
                        crate::object::corrupt(
                            tag,
                            id,
                            format!("its delta base {}: {e}", base.short()),
                        )
                    }
                })?;
            return unpack_delta_as(tag, id, ulen, payload, &base_bytes, verify);
        }
        if flags != FLAG_DICT {
            return unpack_as(tag, id, flags, ulen, payload, verify);
        }
        if tag == ObjectType::Dict {
            return Err(crate::object::corrupt(
                tag,
                id,
                "a dictionary compressed with a dictionary",
            ));
        }
        let did = crate::dict::payload_dict(payload)
            .ok_or_else(|| crate::object::corrupt(tag, id, "bad dictionary record"))?;
        let dict = self.dictionary(&did).map_err(|e| {
            crate::object::corrupt(tag, id, format!("its dictionary {}: {e}", did.short()))
        })?;
        crate::dict::decompress_as(tag, id, ulen, payload, &did, &dict, verify)
    }

    /// The stored record of a delta base: (tag, flags, ulen, payload).
    fn base_record(
        &self,
        base: &ObjectId,
        local: Option<(&ObjectId, &IdMap<IdxEntry>)>,
    ) -> Result<(ObjectType, u8, u64, Vec<u8>)> {
        if self.location(base).is_some() {
            let (loc, payload) = self.read_record(base)?;
            return Ok((loc.tag, loc.flags, u64::from(loc.ulen), payload));
        }
        if let Some((pack, entries)) = local
            && let Some(e) = entries.get(base)
        {
            if e.flags == FLAG_BLOCK {
                let bytes = self.read_member(pack, base, e.offset, e.tag, e.clen, e.ulen)?;
                return Ok((e.tag, crate::pack::FLAG_RAW, u64::from(e.ulen), bytes));
            }
            let payload = self.read_record_at(
                pack,
                base,
                e.offset,
                e.tag,
                e.flags,
                u64::from(e.ulen),
                u64::from(e.clen),
            )?;
            return Ok((e.tag, e.flags, u64::from(e.ulen), payload));
        }
        Err(SyncError::MissingObject {
            kind: "delta base",
            id: *base,
        })
    }

    /// A dictionary object of this store, verified (cached per process).
    pub fn dictionary(&self, id: &ObjectId) -> Result<Arc<crate::dict::Dictionary>> {
        if let Some(d) = crate::dict::cached(id) {
            return Ok(d);
        }
        let bytes = crate::object::ObjectSource::get(self, ObjectType::Dict, id)?;
        remember_dictionary(id, &bytes)
            .ok_or_else(|| crate::object::corrupt(ObjectType::Dict, id, "not a dictionary"))
    }

    /// The dictionary objects this store holds.
    pub fn dictionaries(&self) -> Vec<ObjectId> {
        self.index
            .read()
            .map(|ix| ix.dicts.clone())
            .unwrap_or_default()
    }

    /// Moves the store to format 2 (`store.toml` rewritten atomically)
    /// unless it is there already; called before the first
    /// dictionary-compressed record is written.
    pub(crate) fn ensure_dict_format(&self) -> Result<()> {
        self.ensure_format(FORMAT_DICT)
    }

    /// The format `store.toml` says now.
    pub fn format(&self) -> u32 {
        self.format.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Moves the store to format `want` (2: dictionaries, 3: stored
    /// deltas) unless it is there or beyond; `store.toml` is rewritten
    /// atomically before the first record that needs the format.
    pub(crate) fn ensure_format(&self, want: u32) -> Result<()> {
        use std::sync::atomic::Ordering;
        if self.format.load(Ordering::SeqCst) >= want {
            return Ok(());
        }
        // Compare-and-swap on what `store.toml` says now: another writer
        // may have moved the store beyond `want` since it was opened, and
        // writing `want` over that would take the format back under
        // records that need the newer one (a binary of the older format
        // would then read the store as its own).
        let where_ = format!("{}/store.toml", self.backend.describe());
        for _ in 0..16 {
            let cur = self
                .backend
                .get("store.toml")?
                .ok_or_else(|| SyncError::NoStore(format!("{where_} is gone")))?;
            let mut cfg = parse_config(&cur, Path::new(&where_))?;
            if cfg.format >= want {
                self.format.fetch_max(cfg.format, Ordering::SeqCst);
                return Ok(());
            }
            cfg.format = want;
            let text = format!(
                "# sp-sync store: these settings are part of the store format.\n{}",
                toml::to_string(&cfg)
                    .map_err(|e| SyncError::Invalid(format!("store config: {e}")))?
            );
            if self
                .backend
                .cas("store.toml", Some(&cur), Some(text.as_bytes()))?
                .is_ok()
            {
                self.format.fetch_max(want, Ordering::SeqCst);
                tracing::info!("store moved to format {want}");
                return Ok(());
            }
        }
        Err(SyncError::Invalid(format!(
            "{where_} kept changing while moving the store to format {want}; try again"
        )))
    }

    /// Reads the stored record of an object without decompressing it:
    /// (location, payload), exactly as stored (flags 3 included). The
    /// header is checked against the index.
    pub fn read_record(&self, id: &ObjectId) -> Result<(Location, Vec<u8>)> {
        let loc = self.location(id).ok_or(SyncError::MissingObject {
            kind: "any",
            id: *id,
        })?;
        let name = self.pack_name(loc.pack).unwrap_or_default();
        if loc.flags == FLAG_BLOCK {
            let bytes = self.read_member(&name, id, loc.offset, loc.tag, loc.clen, loc.ulen)?;
            let loc = Location {
                flags: crate::pack::FLAG_RAW,
                clen: loc.ulen,
                ..loc
            };
            return Ok((loc, bytes));
        }
        let payload = self.read_record_at(
            &name,
            id,
            loc.offset,
            loc.tag,
            loc.flags,
            u64::from(loc.ulen),
            u64::from(loc.clen),
        )?;
        Ok((loc, payload))
    }

    /// Reads the record at `offset` of pack `name`, checks its header
    /// against what an index says of it, and returns its payload.
    #[allow(clippy::too_many_arguments)]
    fn read_record_at(
        &self,
        name: &ObjectId,
        id: &ObjectId,
        offset: u64,
        tag: ObjectType,
        flags: u8,
        ulen: u64,
        clen: u64,
    ) -> Result<Vec<u8>> {
        let hlen = record_header_len(ulen, clen) as usize;
        let mut buf = vec![0u8; hlen + clen as usize];
        self.backend
            .read_at(&Self::pack_key(name), offset, &mut buf)
            .map_err(|e| match e {
                SyncError::CorruptFile { .. } => {
                    crate::object::corrupt(tag, id, format!("pack {} is truncated", name.short()))
                }
                e => e,
            })?;
        match parse_record_header(&buf) {
            Some((t, f, rid, u, c, n))
                if t == tag as u8
                    && f == flags
                    && rid == *id
                    && u == ulen
                    && c == clen
                    && n == hlen => {}
            _ => {
                return Err(crate::object::corrupt(
                    tag,
                    id,
                    format!(
                        "record at offset {offset} of pack {} does not match its index entry",
                        name.short()
                    ),
                ));
            }
        }
        buf.drain(..hlen);
        Ok(buf)
    }

    /// The bytes of member `index` (of `ulen` bytes) of the block record at
    /// `offset` of pack `name`, not yet verified against `id` (callers
    /// read them as a raw record, which is). Decoded blocks are cached.
    fn read_member(
        &self,
        name: &ObjectId,
        id: &ObjectId,
        offset: u64,
        tag: ObjectType,
        index: u32,
        ulen: u32,
    ) -> Result<Vec<u8>> {
        let bad = |why: String| {
            crate::object::corrupt(
                tag,
                id,
                format!("block at offset {offset} of pack {}: {why}", name.short()),
            )
        };
        let cached = self.blocks.lock().ok().and_then(|c| {
            c.iter()
                .find(|(p, o, _)| p == name && *o == offset)
                .map(|(_, _, b)| b.clone())
        });
        let block = match cached {
            Some(b) => b,
            None => {
                let b = Arc::new(self.decode_block(name, offset, tag).map_err(bad)?);
                if let Ok(mut c) = self.blocks.lock() {
                    if c.len() >= BLOCK_CACHE {
                        c.remove(0);
                    }
                    c.push((*name, offset, b.clone()));
                }
                b
            }
        };
        let (bytes, ends) = &*block;
        let i = index as usize;
        let Some(&end) = ends.get(i) else {
            return Err(bad(format!("has no member {i}")));
        };
        let start = if i == 0 { 0 } else { ends[i - 1] };
        if end - start != ulen as usize {
            return Err(bad(format!(
                "member {i} has {} bytes, the index says {ulen}",
                end - start
            )));
        }
        Ok(bytes[start..end].to_vec())
    }

    /// The bytes an object's record takes in its pack: `clen`, or for a
    /// block member its share of the block's payload (by size).
    pub fn stored_size(&self, loc: &Location) -> u64 {
        if loc.flags != FLAG_BLOCK {
            return u64::from(loc.clen);
        }
        let key = (loc.pack, loc.offset);
        let known = self
            .block_sizes
            .lock()
            .ok()
            .and_then(|m| m.get(&key).copied());
        let sizes = known.or_else(|| {
            let name = self.pack_name(loc.pack)?;
            // The sizes only: at most 10 bytes a member, not the frame.
            let (_, _, count, size, body) = self
                .block_header(&name, loc.offset, Some(SIZES_BYTES_MAX))
                .ok()?;
            let (sizes, start) = crate::pack::parse_block_sizes(&body, count)?;
            let v = (
                size - start as u64,
                sizes.iter().map(|&u| u64::from(u)).sum(),
            );
            if let Ok(mut m) = self.block_sizes.lock() {
                m.insert(key, v);
            }
            Some(v)
        });
        match sizes {
            Some((payload, total)) if total > 0 => payload * u64::from(loc.ulen) / total,
            _ => 0,
        }
    }

    /// Reads the block record at `offset` of pack `name`: (tag, mode,
    /// count, size, body after the header, or its first `limit` bytes).
    fn block_header(
        &self,
        name: &ObjectId,
        offset: u64,
        limit: Option<u64>,
    ) -> std::result::Result<(u8, u8, u64, u64, Vec<u8>), String> {
        let key = Self::pack_key(name);
        let mut head = [0u8; crate::pack::BLOCK_HEADER_MAX];
        self.backend
            .read_at(&key, offset, &mut head)
            .map_err(|e| format!("unreadable header ({e})"))?;
        let Some((t, mode, count, size, hlen)) = crate::pack::parse_block_header(&head) else {
            return Err("not a block record".into());
        };
        if size > crate::pack::MAX_BLOCK_SIZE {
            return Err(format!("of {size} bytes exceeds the limit"));
        }
        let mut body = vec![0u8; limit.map_or(size, |l| l.min(size)) as usize];
        self.backend
            .read_at(&key, offset + hlen as u64, &mut body)
            .map_err(|e| format!("unreadable ({e})"))?;
        Ok((t, mode, count, size, body))
    }

    /// Reads and decodes the block record at `offset` of pack `name`.
    fn decode_block(
        &self,
        name: &ObjectId,
        offset: u64,
        tag: ObjectType,
    ) -> std::result::Result<(Vec<u8>, Vec<usize>), String> {
        let (t, mode, count, _, body) = self.block_header(name, offset, None)?;
        if t != tag as u8 {
            return Err(format!("holds objects of type {t}, the index says {tag}"));
        }
        let (sizes, start) = crate::pack::parse_block_sizes(&body, count)
            .ok_or_else(|| format!("{count} members with bad sizes"))?;
        let total = sizes.iter().map(|&u| u as usize).sum();
        let bytes = crate::block::decode(mode, total, &body[start..]).map_err(|e| e.to_string())?;
        let mut ends = Vec::with_capacity(sizes.len());
        let mut at = 0;
        for u in sizes {
            at += u as usize;
            ends.push(at);
        }
        Ok((bytes, ends))
    }

    /// An object as stored (compressed as it is), verified.
    pub fn read_stored(&self, id: &ObjectId) -> Result<crate::pack::StoredObject> {
        let (loc, payload) = self.read_raw(id)?;
        crate::pack::unpack(loc.tag, id, loc.flags, u64::from(loc.ulen), &payload)?;
        Ok(crate::pack::StoredObject {
            tag: loc.tag,
            id: *id,
            flags: loc.flags,
            ulen: loc.ulen,
            payload,
        })
    }

    /// Starts writing objects (into new packs).
    pub fn writer(&self) -> Result<WriteSession<'_>> {
        WriteSession::new(self, false)
    }

    /// A writer that stores objects again even though the store has them
    /// (gc copies live objects out of packs it will delete).
    pub(crate) fn writer_for_repack(&self) -> Result<WriteSession<'_>> {
        WriteSession::new(self, true)
    }
}

impl Index {
    fn insert(&mut self, pack: u32, e: &IdxEntry) {
        if e.tag == ObjectType::Dict && !self.map.contains_key(&e.id) {
            self.dicts.push(e.id);
        }
        let loc = Location {
            pack,
            offset: e.offset,
            clen: e.clen,
            ulen: e.ulen,
            tag: e.tag,
            flags: e.flags,
        };
        match self.map.entry(e.id) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(loc);
            }
            // An object in several packs (an interrupted `gc --repack`):
            // its record that is not a delta is the one read, so that the
            // chains of two repacks never mix into a cycle.
            std::collections::hash_map::Entry::Occupied(mut o) => {
                if o.get().flags == FLAG_DELTA && e.flags != FLAG_DELTA {
                    o.insert(loc);
                }
            }
        }
    }

    fn add_pack(&mut self, name: ObjectId, entries: &[IdxEntry]) {
        let pack = self.packs.len() as u32;
        self.packs.push(PackInfo {
            name,
            objects: entries.len(),
        });
        self.map.reserve(entries.len());
        for e in entries {
            self.insert(pack, e);
        }
    }
}

impl ObjectSource for Store {
    fn get(&self, tag: ObjectType, id: &ObjectId) -> Result<Vec<u8>> {
        // An object this process has not seen may be in a pack another
        // wrote since it loaded the indexes (a ref read after that moved
        // onto a new snapshot): the indexes are loaded again once before
        // it counts as missing (audit 24: `log` and `restore` run beside a
        // snapshot failed on its new snapshot).
        let loc = match self.location(id) {
            Some(loc) => Some(loc),
            None => {
                let _ = self.refresh();
                self.location(id)
            }
        };
        let Some(loc) = loc else {
            return Err(SyncError::MissingObject {
                kind: tag.name(),
                id: *id,
            });
        };
        if loc.tag != tag {
            return Err(crate::object::corrupt(
                tag,
                id,
                format!("the index says this object is a {}", loc.tag),
            ));
        }
        let (loc, payload) = self.read_record(id)?;
        self.unpack(tag, id, loc.flags, u64::from(loc.ulen), &payload)
    }
}

/// Visits every entry below `dir` (depth first, symlinks not followed;
/// a `dir` that does not exist holds nothing), until `f` says stop (false).
pub(crate) fn walk_dir(
    dir: &Path,
    f: &mut dyn FnMut(&fs::DirEntry, &fs::Metadata) -> bool,
) -> Result<()> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = match fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(SyncError::io("reading", &d, e)),
        };
        for e in rd {
            let e = e.ctx("reading", &d)?;
            // (An entry gone since the listing is no longer there.)
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            }
            if !f(&e, &m) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The store whose directory holds `dir` (not `dir` itself), if any: the
/// nearest directory above it, symlinks resolved, with a `store.toml` and
/// a `packs` directory.
fn enclosing_store(dir: &Path) -> Option<PathBuf> {
    let abs = std::path::absolute(dir).ok()?;
    // The deepest part of the path that exists, resolved.
    let mut existing = abs.as_path();
    let mut below = 0;
    while !existing.exists() {
        existing = existing.parent()?;
        below += 1;
    }
    let real = existing.canonicalize().ok()?;
    let mut cur = if below == 0 {
        real.parent()
    } else {
        Some(real.as_path())
    };
    while let Some(d) = cur {
        if d.join("store.toml").is_file() && d.join("packs").is_dir() {
            return Some(d.to_path_buf());
        }
        cur = d.parent();
    }
    None
}

pub(crate) fn acquire(
    lock: &File,
    mode: LockMode,
    path: &Path,
    within: Option<std::time::Duration>,
) -> Result<()> {
    // Wait for the other side (gc, or the processes gc waits for), but not
    // forever: a long-running `sp-sync serve` holds its stores shared.
    let limit = within.map_or_else(
        || {
            std::env::var("SP_SYNC_LOCK_TIMEOUT")
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(600)
        },
        |d| d.as_secs(),
    );
    let start = std::time::Instant::now();
    let mut told = false;
    loop {
        let r = match mode {
            LockMode::Shared => lock.try_lock_shared(),
            LockMode::Exclusive => lock.try_lock(),
        };
        match r {
            Ok(()) => return Ok(()),
            Err(fs::TryLockError::WouldBlock) => {}
            Err(fs::TryLockError::Error(e)) => return Err(SyncError::io("locking", path, e)),
        }
        let waited = start.elapsed();
        if waited.as_secs() >= limit {
            return Err(SyncError::Locked(format!(
                "{}: {} (waited {limit} s{})",
                path.display(),
                match mode {
                    LockMode::Shared => "gc is running on this store",
                    LockMode::Exclusive => {
                        "other sp-sync processes (a snapshot, restore, push, or `sp-sync serve`) are using this store"
                    }
                },
                if within.is_none() {
                    "; SP_SYNC_LOCK_TIMEOUT sets how long"
                } else {
                    ""
                }
            )));
        }
        if !told && waited.as_millis() >= 500 {
            told = true;
            match mode {
                LockMode::Shared => tracing::warn!("waiting for gc to finish with the store"),
                LockMode::Exclusive => {
                    tracing::warn!("waiting for other sp-sync processes to finish with the store")
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Decodes verified dictionary object bytes and caches them for this
/// process; None when they are not a dictionary.
pub(crate) fn remember_dictionary(
    id: &ObjectId,
    bytes: &[u8],
) -> Option<Arc<crate::dict::Dictionary>> {
    let d = Arc::new(crate::dict::Dictionary::decode(bytes).ok()?);
    crate::dict::remember(*id, d.clone()).then_some(d)
}

/// A directory of this user's own under the shared temporary directory
/// (`NAME-UID`, mode 0700), for what falls back there (no `HOME`, or a
/// store that is not a local directory); None when the one there is not
/// this user's own (another user made it, or it is a symlink), which is
/// never used: no other user of the machine may plant objects, refs or
/// locks in it.
pub(crate) fn private_tmp_dir(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let uid = rustix::process::geteuid().as_raw();
    let dir = std::env::temp_dir().join(format!("{name}-{uid}"));
    let _ = fs::DirBuilder::new().mode(0o700).create(&dir);
    fs::symlink_metadata(&dir)
        .is_ok_and(|m| m.is_dir() && m.uid() == uid && m.mode() & 0o022 == 0)
        .then_some(dir)
}

/// [`private_tmp_dir`], or when that is not this user's own, a fresh one
/// of this process's (a cache that then lasts one run).
pub(crate) fn private_tmp_cache(name: &str) -> PathBuf {
    private_tmp_dir(name).unwrap_or_else(|| {
        let uid = rustix::process::geteuid().as_raw();
        let own =
            std::env::temp_dir().join(format!("{name}-{uid}-{}-{}", std::process::id(), unique()));
        tracing::warn!(
            "{}/{name}-{uid} is not this user's own directory; using {} for this run",
            std::env::temp_dir().display(),
            own.display()
        );
        let _ =
            std::os::unix::fs::DirBuilderExt::mode(&mut fs::DirBuilder::new(), 0o700).create(&own);
        own
    })
}

/// The store's list of the snapshots it made itself (§5.1).
pub const MADE_FILE: &str = "made";

/// `O_NOFOLLOW`: the store's own files are never symlinks.
fn libc_nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

/// Writes `bytes` to `path` atomically: a temporary file in `tmp`, fsync,
/// rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], tmp: &Path) -> Result<()> {
    write_atomic_mode(path, bytes, tmp, 0o666)
}

/// [`write_atomic`] of a file created with `mode` (less the umask):
/// `0o600` for one that may hold secrets.
pub fn write_atomic_mode(path: &Path, bytes: &[u8], tmp: &Path, mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    fs::create_dir_all(tmp).ctx("creating", tmp)?;
    let t = tmp.join(format!("{}.{}.tmp", std::process::id(), unique()));
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&t)
            .ctx("creating", &t)?;
        f.write_all(bytes).ctx("writing", &t)?;
        f.sync_all().ctx("syncing", &t)?;
    }
    if let Err(e) = fs::rename(&t, path) {
        let _ = fs::remove_file(&t);
        return Err(SyncError::io("renaming into", path, e));
    }
    if let Some(parent) = path.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// fsync of a directory, so renames into it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx("syncing", dir)
}

/// Whether `pid` (decimal) names a process that no longer exists: the
/// temporary files a process named after itself may then go. A pid that
/// does not parse, or a process we may not signal, counts as alive.
pub(crate) fn dead_process(pid: &str) -> bool {
    pid.parse::<i32>()
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .is_some_and(|p| {
            matches!(
                rustix::process::test_kill_process(p),
                Err(rustix::io::Errno::SRCH)
            )
        })
}

/// How long a temporary entry named after a process that is gone must
/// have stayed unchanged before a sweep removes it: an hour. A process id
/// that is gone here may be a command running in another PID namespace (a
/// container sharing the folder), whose file is still being written.
/// (`SP_SYNC_STALE_AFTER`: seconds, for tests.)
pub(crate) fn stale_after() -> std::time::Duration {
    let secs = std::env::var("SP_SYNC_STALE_AFTER")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(3600);
    std::time::Duration::from_secs(secs)
}

/// Whether `st` (a status with its mtime and ctime, seconds since the
/// epoch) changed less than `stale` ago. The ctime counts too: a restore
/// sets its file's mtime to the snapshot's before it renames it.
pub(crate) fn changed_within(mtime: i64, ctime: i64, stale: std::time::Duration) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    now.saturating_sub(mtime.max(ctime)) < stale.as_secs() as i64
}

/// Whether the entry at `path` (and, for a folder, any entry directly in
/// it) changed less than `stale` ago. Unknown counts as recent.
fn entry_changed_within(path: &Path, folder: bool, stale: std::time::Duration) -> bool {
    use std::os::unix::fs::MetadataExt;
    let recent = |m: &std::fs::Metadata| changed_within(m.mtime(), m.ctime(), stale);
    let Ok(m) = std::fs::symlink_metadata(path) else {
        return true;
    };
    if recent(&m) {
        return true;
    }
    if !folder {
        return false;
    }
    match std::fs::read_dir(path) {
        Ok(rd) => rd
            .map(|e| e.and_then(|e| e.metadata()))
            .any(|m| m.as_ref().map_or(true, recent)),
        Err(_) => true,
    }
}

/// Removes the entries of `dir` that a killed command left: those whose
/// name `pid_of` reads a process id from (decimal), when that process no
/// longer exists and the entry has not changed for `stale` (see
/// [`stale_after`]); only files, or only folders (`folders`). Nothing else
/// is touched, and errors are ignored (another user's entry, a race with
/// another sweep). `what` names the command, for the debug log.
pub(crate) fn sweep_dead(
    dir: &Path,
    what: &str,
    folders: bool,
    stale: std::time::Duration,
    pid_of: impl Fn(&str) -> Option<&str>,
) {
    sweep_dead_with(dir, what, folders, stale, pid_of, |p| {
        let _ = if folders {
            std::fs::remove_dir_all(p)
        } else {
            std::fs::remove_file(p)
        };
    })
}

/// [`sweep_dead`], removing each entry with `remove`.
pub(crate) fn sweep_dead_with(
    dir: &Path,
    what: &str,
    folders: bool,
    stale: std::time::Duration,
    pid_of: impl Fn(&str) -> Option<&str>,
    remove: impl Fn(&Path),
) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(&pid_of) else {
            continue;
        };
        let kind_ok = e
            .file_type()
            .is_ok_and(|t| if folders { t.is_dir() } else { t.is_file() });
        if kind_ok && dead_process(pid) && !entry_changed_within(&e.path(), folders, stale) {
            tracing::debug!("removing {} (left by a killed {what})", e.path().display());
            remove(&e.path());
        }
    }
}

/// A process-unique counter for temporary names.
pub fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (u64::from(t) << 20) ^ N.fetch_add(1, Ordering::Relaxed)
}

/// The snapshots a store made ([`Store::made_list`]); `None`: a store
/// without the list, where the recorded host decides.
pub struct MadeList(Option<std::collections::HashSet<ObjectId>>);

impl MadeList {
    /// Whether the snapshot `id`, recording `host`, was made here.
    pub fn is_made(&self, id: &ObjectId, host: &str) -> bool {
        match &self.0 {
            Some(ids) => ids.contains(id),
            None => host == crate::snapshot::hostname(),
        }
    }
}

/// Finds the store for a command: `explicit` (from `--store` or
/// `SP_SYNC_STORE`), else a `.sp-sync` directory in `start` or above.
pub fn locate(explicit: Option<&Path>, start: &Path) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let mut cur = Some(start);
    while let Some(d) = cur {
        let cand = d.join(STORE_DIR);
        if cand.join("store.toml").is_file() {
            return Ok(cand);
        }
        cur = d.parent();
    }
    Err(SyncError::NoStore(format!(
        "no sp-sync store in {} or any parent (run `sp-sync init`, or pass --store DIR)",
        start.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The constants that decide ids are the ones recorded for format 1.
    /// Changing one must come with a new record (and a way to read old
    /// stores), never silently: this test fails first.
    #[test]
    fn this_binary_writes_format_1_object_parameters() {
        assert_eq!(ObjectParams::default(), ObjectParams::v1());
        let old = "format = 1\ncipher = \"none\"\ncompression = \"zstd\"\n\
                   compression_level = 3\npack_size = 33554432\n[chunker]\n\
                   algorithm = \"fastcdc-2020\"\nmin = 131072\navg = 262144\n\
                   max = 2097152\nnormalization = 1\n";
        let c: StoreConfig = toml::from_str(old).unwrap();
        assert_eq!(c.objects, ObjectParams::v1());
        assert_eq!(c.rows_compression_level, 1);
        assert!(c.validate(Path::new("store.toml")).is_ok());
        let mut other = c.clone();
        other.objects.rows_leaf.target = 1024;
        let e = other.validate(Path::new("store.toml")).unwrap_err();
        assert!(e.to_string().contains("object parameters"), "{e}");
    }

    /// The shared temporary directory's fallbacks are this user's own, or
    /// not used: one another user could have made (writable by others, or
    /// a symlink) is refused, and the cache then takes one of its own.
    #[test]
    fn private_tmp_dirs_are_the_users_own() {
        use std::os::unix::fs::PermissionsExt;
        let name = format!("sp-sync-test-{}-{}", std::process::id(), unique());
        let uid = rustix::process::geteuid().as_raw();
        let at = std::env::temp_dir().join(format!("{name}-{uid}"));
        let d = private_tmp_dir(&name).unwrap();
        assert_eq!(d, at);
        assert_eq!(
            fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o700
        );
        fs::set_permissions(&d, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(private_tmp_dir(&name).is_none());
        let other = private_tmp_cache(&name);
        assert_ne!(other, at);
        assert_eq!(
            fs::metadata(&other).unwrap().permissions().mode() & 0o777,
            0o700
        );
        fs::remove_dir(&d).unwrap();
        let target = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(target.path(), &at).unwrap();
        assert!(private_tmp_dir(&name).is_none());
        fs::remove_file(&at).unwrap();
        fs::remove_dir(&other).unwrap();
    }

    /// A new store trusts only the snapshots it recorded as its own; one
    /// made before the record existed falls back to the host; a new store
    /// is its owner's alone.
    /// A writer that opened the store at an older format and needs a newer
    /// one never takes back a format another writer moved it beyond since:
    /// `store.toml` is compared and swapped, not overwritten.
    #[test]
    fn a_format_is_never_moved_back() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("s");
        Store::init(&dir).unwrap();
        let behind = Store::open(&dir, LockMode::Shared).unwrap();
        let ahead = Store::open(&dir, LockMode::Shared).unwrap();
        let start = behind.format();
        assert!(start < FORMAT_DELTA, "a new store starts at {start}");
        ahead.ensure_format(FORMAT_BLOCK).unwrap();
        behind.ensure_format(FORMAT_DELTA).unwrap();
        assert_eq!(behind.format(), FORMAT_BLOCK);
        let again = Store::open(&dir, LockMode::Shared).unwrap();
        assert_eq!(again.format(), FORMAT_BLOCK);
        // The other settings are the store's, kept as they were.
        assert_eq!(again.config().objects, ObjectParams::v1());
    }

    #[test]
    fn made_here_is_the_stores_own_record() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("s");
        Store::init(&dir).unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let st = Store::open(&dir, LockMode::Shared).unwrap();
        let (a, b) = (
            ObjectId::compute(ObjectType::Chunk, b"a"),
            ObjectId::compute(ObjectType::Chunk, b"b"),
        );
        let me = crate::snapshot::hostname();
        assert!(!st.made_here(&a, &me), "an empty record trusts the host");
        st.record_made(&a).unwrap();
        st.record_made(&b).unwrap();
        assert!(st.made_here(&a, "elsewhere") && st.made_here(&b, &me));
        assert!(!st.made_here(&ObjectId::compute(ObjectType::Chunk, b"c"), &me));
        assert_eq!(
            fs::metadata(dir.join(MADE_FILE))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        // A store made before the record: the recorded host decides.
        fs::remove_file(dir.join(MADE_FILE)).unwrap();
        assert!(st.made_here(&a, &me) && !st.made_here(&a, "elsewhere"));
        // A symlink in its place is not followed.
        std::os::unix::fs::symlink(tmp.path().join("x"), dir.join(MADE_FILE)).unwrap();
        assert!(!st.made_here(&a, &me));
        assert!(st.record_made(&a).is_err());
    }
}
