//! The CI artifact cache: `cache save`, `cache restore`, `cache list`,
//! `cache prune`, on any remote (a path, an `sp-sync serve`, `s3://`).
//!
//! An entry is a ref `cache/KEY` on the remote naming an ordinary snapshot
//! (no parents) of the saved paths; the paths, relative to the directory
//! they were saved from, are recorded in the snapshot's metadata
//! (`cache.paths`, one per line) and its time is the save time. Entries
//! share chunks with each other and with everything else on the remote, so
//! a second save uploads only what changed (the push negotiation asks the
//! remote which objects it has, level by level, from the snapshot down).
//!
//! A key is immutable: saving a key that exists changes nothing and says
//! so; two saves racing for one key are decided by the ref's
//! compare-and-swap (the loser is told the key exists).
//!
//! The last restore of an entry is recorded as a second ref,
//! `cache-meta/KEY`, naming a tiny snapshot (no files, no parents) whose
//! time is the restore's; it is moved with a forced compare-and-swap, so
//! only the `Remote` trait's operations are needed and it works alike on
//! path, HTTP and S3 remotes. `prune` removes entries least recently used
//! first (the later of the save and the last restore), deleting both refs
//! by compare-and-swap; the objects go at the remote's next `gc`.
//!
//! Objects pass through a local store (a restore from a store in a local
//! directory reads it in place instead): by default a per-user one in
//! `$SP_SYNC_CACHE_DIR/cache-store` (else `$XDG_CACHE_HOME/sp-sync/…`, else
//! `~/.cache/sp-sync/…`), which keeps the stat cache warm and the chunks at
//! hand, so a second save reads only changed files and a restore of
//! something this machine saved downloads nothing. The store is safe for
//! several processes at once (pack writes are per process, the index is
//! refreshed, nothing in it is a ref). The cache never needs the working
//! tree's `.sp-sync` store. Past a size it is emptied ([`trim_local`]).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Component, Path, PathBuf};

use serde::Serialize;

use crate::error::{Result, SyncError};
use crate::id::{ObjectId, ObjectType};
use crate::object::snapshot::Snapshot;
use crate::object::tree::{Entry, EntryKind, lookup};
use crate::progress::Progress;
use crate::remote::Remote;
use crate::restore::RestoreOptions;
use crate::snapshot::SnapshotOptions;
use crate::store::{LockMode, Store};

/// Refs of cache entries: `cache/KEY`.
pub const ENTRY_PREFIX: &str = "cache/";
/// Refs recording each entry's last restore: `cache-meta/KEY`.
pub const META_PREFIX: &str = "cache-meta/";
/// Snapshot metadata: the key an entry was saved under.
pub const META_KEY: &str = "cache.key";
/// Snapshot metadata: the saved paths, one per line, relative.
pub const META_PATHS: &str = "cache.paths";
/// Snapshot metadata: `root` when one directory's contents are the root
/// tree; `named` when each path is the root's entry named after its last
/// component.
pub const META_LAYOUT: &str = "cache.layout";
/// Snapshot metadata: the mode of the directory a `root` layout entry
/// holds the contents of (octal), which its tree does not record.
pub const META_MODE: &str = "cache.mode";

/// Checks a cache key: it must make a valid ref name `cache/KEY`.
pub fn validate_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(SyncError::Invalid("a cache key must not be empty".into()));
    }
    crate::store::refs::validate_ref_name(&format!("{ENTRY_PREFIX}{key}"))
        .map_err(|e| SyncError::Invalid(format!("bad cache key {key:?}: {}", why(&e))))
}

/// Checks a `--restore-key` prefix: not empty, and `cache/PREFIX` (less a
/// trailing `/`) a valid ref name.
pub fn validate_prefix(prefix: &str) -> Result<()> {
    let p = prefix.strip_suffix('/').unwrap_or(prefix);
    if p.is_empty() {
        return Err(SyncError::Invalid(
            "a restore key prefix must not be empty".into(),
        ));
    }
    crate::store::refs::validate_ref_name(&format!("{ENTRY_PREFIX}{p}"))
        .map_err(|e| SyncError::Invalid(format!("bad restore key {prefix:?}: {}", why(&e))))
}

/// The reason of a ref-name error, without the ref name (which is not
/// what the user typed).
fn why(e: &SyncError) -> String {
    let s = e.to_string();
    s.rsplit_once(": ")
        .map_or(s.clone(), |(_, w)| w.to_string())
}

/// The per-user cache store's directory: `$SP_SYNC_CACHE_DIR/cache-store`,
/// else `$XDG_CACHE_HOME/sp-sync/cache-store`, else
/// `~/.cache/sp-sync/cache-store`, else one in the temporary directory.
pub fn default_local_dir() -> PathBuf {
    let base = std::env::var_os("SP_SYNC_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("sp-sync")))
        .or_else(|| std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/sp-sync")))
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| crate::store::private_tmp_cache("sp-sync-cache"));
    base.join("cache-store")
}

/// Opens (creating if needed) the local store the cache passes objects
/// through. Safe when several processes do it at once.
pub fn open_local(dir: &Path) -> Result<Store> {
    std::fs::create_dir_all(dir).map_err(|e| SyncError::io("creating", dir, e))?;
    Store::init(dir)?;
    Store::open(dir, LockMode::Shared)
}

/// The default most the local store's packs may take: 5 GiB.
pub const LOCAL_MAX: u64 = 5 << 30;

/// The most the local store's packs may take before a save or restore
/// empties it: `SP_SYNC_CACHE_STORE_MAX` (a size: `2GiB`, `500MB`; `0`:
/// no limit), else [`LOCAL_MAX`]. A value that is not a size is an error.
pub fn local_max() -> Result<Option<u64>> {
    match std::env::var("SP_SYNC_CACHE_STORE_MAX") {
        Ok(v) if !v.trim().is_empty() => match crate::server::parse_size(&v) {
            Some(0) => Ok(None),
            Some(n) => Ok(Some(n)),
            None => Err(SyncError::Invalid(format!(
                "SP_SYNC_CACHE_STORE_MAX={v:?} is not a size (like 2GiB or 500MB; 0 for no limit)"
            ))),
        },
        _ => Ok(Some(LOCAL_MAX)),
    }
}

/// Empties the local pass-through store in `dir` of its objects when its
/// packs take more than `max` bytes, so that it does not grow without end
/// (on a runner that keeps its home directory). It is a cache: every
/// object a finished save needs is on the remote, and the stat cache
/// trusts an entry only while the store holds its objects. Nothing is
/// removed while another process uses the store (its lock is taken without
/// waiting), nor from a store that holds any ref: that is a store of
/// snapshots (`SP_SYNC_CACHE_STORE` naming one), never a cache. Returns the
/// bytes removed.
pub fn trim_local(dir: &Path, max: u64) -> Result<u64> {
    // Only a store's own files go: a directory that is no sp-sync store
    // (`SP_SYNC_CACHE_STORE` naming one by mistake) loses nothing, and in
    // `packs/` only files named as packs and their indexes are.
    if !dir.join("store.toml").is_file() {
        return Ok(0);
    }
    let packs = dir.join("packs");
    let pack_file = |p: &Path| {
        p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
            n.strip_suffix(".pack")
                .or_else(|| n.strip_suffix(".idx"))
                .is_some_and(|h| ObjectId::from_hex(h).is_some())
        })
    };
    let files = |d: &Path| -> Result<Vec<(PathBuf, u64)>> {
        let rd = match std::fs::read_dir(d) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(SyncError::io("reading", d, e)),
        };
        let mut out = Vec::new();
        for e in rd {
            let e = e.map_err(|e| SyncError::io("reading", d, e))?;
            let m = e
                .metadata()
                .map_err(|err| SyncError::io("reading", e.path(), err))?;
            if m.is_file() && pack_file(&e.path()) {
                out.push((e.path(), m.len()));
            }
        }
        Ok(out)
    };
    let size: u64 = files(&packs)?.iter().map(|(_, n)| n).sum();
    if size <= max || has_refs(dir)? {
        return Ok(0);
    }
    let lock_path = dir.join("lock");
    let lock = match std::fs::OpenOptions::new().write(true).open(&lock_path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(SyncError::io("opening", &lock_path, e)),
    };
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Ok(0),
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(SyncError::io("locking", &lock_path, e));
        }
    }
    // (Alone now: whoever moves a ref holds the lock shared.)
    if has_refs(dir)? {
        return Ok(0);
    }
    let mut removed = 0;
    for (path, n) in files(&packs)? {
        std::fs::remove_file(&path).map_err(|e| SyncError::io("removing", &path, e))?;
        removed += n;
    }
    crate::store::sync_dir(&packs)?;
    tracing::info!(
        "emptied the local cache store {} ({} of objects, over SP_SYNC_CACHE_STORE_MAX {})",
        dir.display(),
        crate::commands::fmt::size(removed),
        crate::commands::fmt::size(max)
    );
    Ok(removed)
}

/// Whether the store in `dir` holds a ref (any file under `refs/`).
fn has_refs(dir: &Path) -> Result<bool> {
    let mut found = false;
    crate::store::walk_dir(&dir.join("refs"), &mut |_, m| {
        found = !m.is_dir();
        !found
    })?;
    Ok(found)
}

/// What `cache save` does.
#[derive(Debug, Clone, Default)]
pub struct SaveOptions {
    /// The entry's key (a valid ref-name tail).
    pub key: String,
    /// Paths relative to `cwd` (no `..`): what is saved, and where a
    /// restore puts it back (relative to its target).
    pub paths: Vec<PathBuf>,
    /// The directory the paths are relative to.
    pub cwd: PathBuf,
    /// Gitignore-style patterns left out.
    pub excludes: Vec<String>,
}

/// What `cache save` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SaveReport {
    /// The key saved (or found existing).
    pub key: String,
    /// Whether this save created the entry (false: the key existed).
    pub saved: bool,
    /// The entry's snapshot (the existing one when not saved).
    pub id: Option<ObjectId>,
    /// Files (and symlinks) saved.
    pub files: u64,
    /// Bytes of the saved files.
    pub bytes: u64,
    /// Objects the remote received (it lacked them).
    pub objects_sent: u64,
    /// Their bytes, as stored (compressed): what the save uploaded.
    pub bytes_sent: u64,
    /// Bytes of request bodies on the wire (negotiation included).
    pub wire_bytes_sent: u64,
    /// Requests made to the remote.
    pub requests: u64,
}

/// Checks a saved path: relative, no `..`, not empty; returns it normalized
/// (`./a/b/` → `a/b`).
fn clean_path(p: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            // (An entry records its paths one per line.)
            Component::Normal(n) if n.as_encoded_bytes().contains(&b'\n') => {
                return Err(SyncError::Invalid(format!(
                    "{:?}: a cache path cannot hold a newline",
                    p.display().to_string()
                )));
            }
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => {
                return Err(SyncError::Invalid(format!(
                    "{}: cache paths must be relative and stay below the current directory",
                    p.display()
                )));
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(SyncError::Invalid(format!(
            "{:?}: a cache path must name something below the current directory",
            p.display().to_string()
        )));
    }
    Ok(out)
}

/// Runs a transfer step, again (it resumes: what arrived stays) while it
/// fails in a way that may pass — a busy server (503) when many runners
/// save at once, a dropped connection — up to `SP_SYNC_PUSH_RETRIES`
/// (default 6) more times, waiting longer each time, with jitter.
fn retrying<T>(what: &str, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let retries: u32 = std::env::var("SP_SYNC_PUSH_RETRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let mut attempt = 0u32;
    loop {
        match f() {
            Err(e) if attempt < retries && crate::transfer::is_retryable(&e) => {
                attempt += 1;
                let base = 200u64 << attempt.min(6);
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::from(d.subsec_nanos()));
                let jitter = (nanos
                    ^ u64::from(std::process::id()).wrapping_mul(0x9e37_79b9_7f4a_7c15))
                    % base;
                tracing::info!("{what}: {e}; trying again");
                std::thread::sleep(std::time::Duration::from_millis(base + jitter));
            }
            r => return r,
        }
    }
}

/// The paths `cache save` is given, checked before anything is written
/// anywhere: (each relative to `cwd`, each joined to it). Each must stay
/// below `cwd`, hold no newline, exist, and not be a symlink.
pub fn check_paths(cwd: &Path, paths: &[PathBuf]) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    if paths.is_empty() {
        return Err(SyncError::Invalid("nothing to save (no paths)".into()));
    }
    let rel: Vec<PathBuf> = paths.iter().map(|p| clean_path(p)).collect::<Result<_>>()?;
    let mut sources = Vec::new();
    for r in &rel {
        let p = cwd.join(r);
        // Nor through a symlink on the way (audit round 16: `a/ln/secret`
        // with `a/ln` pointing out of the tree was saved).
        let mut on_the_way = cwd.to_path_buf();
        let parts: Vec<_> = r.components().collect();
        for c in &parts[..parts.len().saturating_sub(1)] {
            on_the_way.push(c);
            if std::fs::symlink_metadata(&on_the_way).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(SyncError::Invalid(format!(
                    "{}: goes through the symlink {}; name a path without one (a restore never \
                     writes through one)",
                    r.display(),
                    on_the_way
                        .strip_prefix(cwd)
                        .unwrap_or(&on_the_way)
                        .display()
                )));
            }
        }
        match std::fs::symlink_metadata(&p) {
            Err(_) => {
                return Err(SyncError::NotFound(format!(
                    "{}: no such file or directory",
                    r.display()
                )));
            }
            // A symlink named as a path would be followed out of the
            // working tree, and the entry could not be restored (a restore
            // never writes through one).
            Ok(m) if m.file_type().is_symlink() => {
                return Err(SyncError::Invalid(format!(
                    "{}: a symlink; name the directory or file it points to",
                    r.display()
                )));
            }
            Ok(_) => {}
        }
        sources.push(p);
    }
    Ok((rel, sources))
}

/// The refs the remote holds now.
fn remote_refs(remote: &dyn Remote) -> Result<BTreeMap<String, ObjectId>> {
    Ok(remote.list_refs()?.into_iter().collect())
}

/// Saves `opts.paths` as entry `opts.key` on `remote`, through `local`.
pub fn save(
    local: &Store,
    remote: &dyn Remote,
    opts: &SaveOptions,
    progress: &dyn Progress,
) -> Result<SaveReport> {
    validate_key(&opts.key)?;
    let (rel, sources) = check_paths(&opts.cwd, &opts.paths)?;
    let name = format!("{ENTRY_PREFIX}{}", opts.key);
    let mut report = SaveReport {
        key: opts.key.clone(),
        ..Default::default()
    };
    if let Some(id) = retrying("listing refs", || remote_refs(remote))?.get(&name) {
        report.id = Some(*id);
        report.requests = remote.traffic().requests;
        return Ok(report);
    }
    let layout = if sources.len() == 1 && sources[0].is_dir() {
        "root"
    } else {
        "named"
    };
    let mut meta = BTreeMap::new();
    meta.insert(META_KEY.to_string(), opts.key.clone());
    meta.insert(
        META_PATHS.to_string(),
        rel.iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("\n"),
    );
    meta.insert(META_LAYOUT.to_string(), layout.to_string());
    if layout == "root" {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&sources[0])
            .map_err(|e| SyncError::io("reading", &sources[0], e))?
            .permissions()
            .mode();
        meta.insert(META_MODE.to_string(), format!("{:o}", mode & 0o7777));
    }
    let snap = crate::snapshot::snapshot(
        local,
        &SnapshotOptions {
            sources,
            excludes: opts.excludes.clone(),
            message: format!("cache {}", opts.key),
            ref_name: String::new(),
            meta,
            root: Some(opts.cwd.clone()),
            ..Default::default()
        },
        progress,
    )?;
    if !snap.skipped.is_empty() {
        let s = &snap.skipped[0];
        return Err(SyncError::Invalid(format!(
            "{}: could not be read ({}); nothing saved",
            s.path, s.error
        )));
    }
    report.files = snap.files;
    report.bytes = snap.bytes;
    let stats = retrying("sending", || {
        crate::transfer::send(local, remote, &[snap.id], progress)
    })?;
    report.objects_sent = stats.objects;
    report.bytes_sent = stats.bytes;
    if progress.interrupted() {
        return Err(SyncError::Interrupted);
    }
    match retrying("creating the ref", || {
        remote.update_ref(&name, None, snap.id, false)
    }) {
        Ok(()) => {
            report.saved = true;
            report.id = Some(snap.id);
        }
        // Another save of the same key won the race: the key is taken.
        Err(SyncError::RefConflict { actual, .. }) => report.id = actual,
        Err(SyncError::NonFastForward { .. }) => {
            report.id = remote_refs(remote)?.get(&name).copied();
        }
        Err(e) => return Err(e),
    }
    let t = remote.traffic();
    report.wire_bytes_sent = t.bytes_sent;
    report.requests = t.requests;
    Ok(report)
}

/// How a restore found its entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The key itself.
    Hit,
    /// The newest entry matching a restore-key prefix.
    Partial,
    /// Nothing (nothing restored).
    Miss,
}

impl Outcome {
    /// `hit`, `partial` or `miss`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Partial => "partial",
            Outcome::Miss => "miss",
        }
    }
}

/// What `cache restore` does.
#[derive(Debug, Clone, Default)]
pub struct RestoreCacheOptions {
    /// The key tried first (an exact hit).
    pub key: String,
    /// When not empty, only an entry that saved exactly these paths is
    /// taken (an entry of other paths is not a hit), so an entry another
    /// job saved under a matching key can write nothing else.
    pub paths: Vec<PathBuf>,
    /// Prefixes tried in order when the key is not there: the newest entry
    /// whose key starts with the first prefix that matches any.
    pub restore_keys: Vec<String>,
    /// Where the saved paths go (relative to it).
    pub target: PathBuf,
    /// A file to append `cache-hit=true|false` to (`$GITHUB_OUTPUT`).
    pub github_output: Option<PathBuf>,
    /// Do not record the restore on the remote (`cache-meta/KEY`).
    pub no_record: bool,
    /// Paths never written over, whatever the entry names: the store and
    /// the database files of the working tree (see
    /// [`crate::sources::protected_paths`]); absolute, symlinks resolved.
    pub protect: Vec<PathBuf>,
}

/// What `cache restore` did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreCacheReport {
    /// Hit, partial hit or miss.
    pub result: Outcome,
    /// The key of the entry restored (the key asked for, on a miss).
    pub key: String,
    /// The key asked for.
    pub requested_key: String,
    /// The entry's snapshot (none on a miss).
    pub id: Option<ObjectId>,
    /// The entry's paths, as written below the target.
    pub paths: Vec<String>,
    /// Files (and symlinks) of the entry.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Files already there with the same content (not rewritten).
    pub unchanged: u64,
    /// Objects fetched from the remote (0 when a path remote is read in place).
    pub objects_received: u64,
    /// Their bytes (compressed).
    pub bytes_received: u64,
    /// Requests made to the remote.
    pub requests: u64,
}

/// A snapshot object read from the remote (verified against its id).
fn fetch_snapshots(remote: &dyn Remote, ids: &[ObjectId]) -> Result<Vec<Snapshot>> {
    let mut out = Vec::with_capacity(ids.len());
    for batch in ids.chunks(1024) {
        let q: Vec<(ObjectType, ObjectId)> =
            batch.iter().map(|id| (ObjectType::Snapshot, *id)).collect();
        let objs: Vec<crate::pack::StoredObject> = remote.fetch(&q)?.collect::<Result<_>>()?;
        if objs.len() != batch.len() {
            return Err(SyncError::Invalid(format!(
                "{}: asked for {} snapshots, got {}",
                remote.describe(),
                batch.len(),
                objs.len()
            )));
        }
        for (id, o) in batch.iter().zip(objs) {
            if o.id != *id || o.tag != ObjectType::Snapshot {
                return Err(crate::object::corrupt(
                    ObjectType::Snapshot,
                    id,
                    "a different object came back",
                ));
            }
            let bytes = crate::pack::unpack(o.tag, &o.id, o.flags, u64::from(o.ulen), &o.payload)?;
            let s = Snapshot::decode(&bytes)
                .map_err(|e| crate::object::corrupt(ObjectType::Snapshot, id, e))?;
            out.push(s);
        }
    }
    Ok(out)
}

fn secs(s: &Snapshot) -> i64 {
    s.time.secs
}

/// Picks the entry: the key itself, else for each prefix in order the
/// newest entry whose key starts with it (ties: the greater key).
fn choose(
    remote: &dyn Remote,
    refs: &BTreeMap<String, ObjectId>,
    key: &str,
    prefixes: &[String],
    paths: Option<&std::collections::BTreeSet<PathBuf>>,
) -> Result<Option<(Outcome, String, ObjectId)>> {
    // An entry of other paths than those asked for does not count.
    let fits = |s: &Snapshot| {
        paths.is_none_or(|want| {
            entry_paths(s).is_ok_and(|have| {
                have.into_iter().collect::<std::collections::BTreeSet<_>>() == *want
            })
        })
    };
    if let Some(id) = refs.get(&format!("{ENTRY_PREFIX}{key}")) {
        let ok = match paths {
            None => true,
            Some(_) => fetch_snapshots(remote, &[*id])?.first().is_some_and(fits),
        };
        if ok {
            return Ok(Some((Outcome::Hit, key.to_string(), *id)));
        }
    }
    for p in prefixes {
        let cands: Vec<(String, ObjectId)> = refs
            .iter()
            .filter_map(|(n, id)| {
                n.strip_prefix(ENTRY_PREFIX)
                    .filter(|k| k.starts_with(p.as_str()))
                    .map(|k| (k.to_string(), *id))
            })
            .collect();
        if cands.is_empty() {
            continue;
        }
        let ids: Vec<ObjectId> = cands.iter().map(|(_, id)| *id).collect();
        let snaps = fetch_snapshots(remote, &ids)?;
        let best = cands
            .into_iter()
            .zip(snaps)
            .filter(|(_, s)| fits(s))
            .max_by(|(ka, sa), (kb, sb)| {
                (sa.time.secs, sa.time.nanos, ka).cmp(&(sb.time.secs, sb.time.nanos, kb))
            });
        if let Some(((k, id), _)) = best {
            return Ok(Some((Outcome::Partial, k, id)));
        }
    }
    Ok(None)
}

/// Appends `cache-hit=true|false` to a GitHub Actions output file.
fn github_output(path: &Path, hit: bool) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| SyncError::io("opening", path, e))?;
    writeln!(f, "cache-hit={hit}").map_err(|e| SyncError::io("writing", path, e))
}

/// Restores an entry (see [`RestoreCacheOptions`]) from `remote` through
/// `local`. A miss restores nothing and is not an error. `cache-hit` goes
/// to `$GITHUB_OUTPUT` whatever the outcome: `false` when the restore
/// fails too (a step with `continue-on-error` is then still told).
pub fn restore(
    local: &Store,
    remote: &dyn Remote,
    opts: &RestoreCacheOptions,
    progress: &dyn Progress,
) -> Result<RestoreCacheReport> {
    let r = restore_entry(local, remote, opts, progress);
    if let Some(out) = &opts.github_output {
        match &r {
            Ok(report) => github_output(out, report.result == Outcome::Hit)?,
            Err(_) => {
                if let Err(e) = github_output(out, false) {
                    tracing::warn!("{e}");
                }
            }
        }
    }
    r
}

fn restore_entry(
    local: &Store,
    remote: &dyn Remote,
    opts: &RestoreCacheOptions,
    progress: &dyn Progress,
) -> Result<RestoreCacheReport> {
    validate_key(&opts.key)?;
    for p in &opts.restore_keys {
        validate_prefix(p)?;
    }
    let wanted: Option<std::collections::BTreeSet<PathBuf>> = if opts.paths.is_empty() {
        None
    } else {
        Some(
            opts.paths
                .iter()
                .map(|p| clean_path(p))
                .collect::<Result<_>>()?,
        )
    };
    let refs = retrying("listing refs", || remote_refs(remote))?;
    let mut report = miss_report(opts);
    let chosen = retrying("reading entries", || {
        choose(
            remote,
            &refs,
            &opts.key,
            &opts.restore_keys,
            wanted.as_ref(),
        )
    })?;
    if let Some((outcome, key, id)) = chosen {
        // A store in a local directory is read in place; any other remote's
        // objects are fetched into the local store first (only what it lacks).
        let source = match remote.local_store() {
            Some(s) => s,
            None => {
                let stats = retrying("fetching", || {
                    crate::transfer::fetch(local, remote, &[id], progress)
                })?;
                report.objects_received = stats.objects;
                report.bytes_received = stats.bytes;
                local
            }
        };
        let snap = crate::names::load_snapshot(source, &id)?;
        let r = materialize(source, &snap, &opts.target, &opts.protect, progress)?;
        // What is there and was kept (a non-empty directory where a file
        // goes, a pipe, a mount point, a protected path) leaves the entry
        // unrestored in part: that is no hit a pipeline may skip a build on.
        if let Some(first) = r.1.protected.first() {
            let more = r.1.protected.len() - 1;
            return Err(SyncError::Invalid(format!(
                "{} was not written (what is there stays; see the warning){}; the entry is not \
                 restored whole",
                first.display(),
                if more > 0 {
                    format!(", nor {more} other path(s)")
                } else {
                    String::new()
                }
            )));
        }
        report.paths = r.0;
        report.files = r.1.files;
        report.bytes = r.1.bytes;
        report.unchanged = r.1.unchanged;
        report.result = outcome;
        report.key = key.clone();
        report.id = Some(id);
        if !opts.no_record
            && let Err(e) = record_restore(local, remote, &refs, &key)
        {
            tracing::warn!("could not record the restore of {key}: {e}");
        }
    }
    report.requests = remote.traffic().requests;
    Ok(report)
}

fn miss_report(opts: &RestoreCacheOptions) -> RestoreCacheReport {
    RestoreCacheReport {
        result: Outcome::Miss,
        key: opts.key.clone(),
        requested_key: opts.key.clone(),
        id: None,
        paths: Vec::new(),
        files: 0,
        bytes: 0,
        unchanged: 0,
        objects_received: 0,
        bytes_received: 0,
        requests: 0,
    }
}

/// A restore from a remote that holds no store yet (a path or an S3 prefix
/// no save has written to): a miss, said like any other (and written to
/// `$GITHUB_OUTPUT`), without creating a store there.
pub fn restore_from_empty(opts: &RestoreCacheOptions) -> Result<RestoreCacheReport> {
    validate_key(&opts.key)?;
    if let Some(out) = &opts.github_output {
        github_output(out, false)?;
    }
    Ok(miss_report(opts))
}

/// The saved paths of an entry's snapshot.
fn entry_paths(snap: &Snapshot) -> Result<Vec<PathBuf>> {
    let text = snap
        .meta
        .get(META_PATHS)
        .ok_or_else(|| SyncError::Invalid("not a cache entry (no cache.paths)".into()))?;
    text.lines().map(|l| clean_path(Path::new(l))).collect()
}

/// Writes an entry's paths below `target`, rewriting only files whose
/// content differs; nothing the entry does not name is touched.
fn materialize(
    store: &Store,
    snap: &Snapshot,
    target: &Path,
    protect: &[PathBuf],
    progress: &dyn Progress,
) -> Result<(Vec<String>, crate::restore::RestoreReport)> {
    let paths = entry_paths(snap)?;
    let root = snap
        .root
        .ok_or_else(|| SyncError::Invalid("a cache entry without files".into()))?;
    // An entry (from a shared remote) never writes over the working tree's
    // store or databases.
    let layout = snap.meta.get(META_LAYOUT).map(String::as_str);
    let opts = RestoreOptions {
        skip_unchanged: true,
        protect: protect.to_vec(),
        // Each path's directory takes its recorded mode (a `root` entry's
        // is its meta's, below).
        own_mode: !(layout == Some("root") && paths.len() == 1),
        ..Default::default()
    };
    let mut total = crate::restore::RestoreReport::default();
    // The mode of a `root` entry's directory (entries saved before it was
    // recorded leave the directory's mode as it is).
    let root_mode = snap
        .meta
        .get(META_MODE)
        .filter(|_| layout == Some("root") && paths.len() == 1)
        .and_then(|m| u32::from_str_radix(m, 8).ok())
        .filter(|m| *m <= 0o7777)
        // (Setuid and setgid stay off, as for the entry's files: an entry
        // comes from a shared remote.)
        .map(|m| m & 0o1777);
    progress.stage("restoring");
    // Every path is checked before any is written: a refused one leaves
    // the others as they were.
    let mut planned = Vec::with_capacity(paths.len());
    for p in &paths {
        let dest = target.join(p);
        let name = p
            .file_name()
            .map(|n| {
                use std::os::unix::ffi::OsStrExt;
                n.as_bytes().to_vec()
            })
            .unwrap_or_default();
        let entry = if layout == Some("root") && paths.len() == 1 {
            Entry {
                mode: root_mode.unwrap_or(0o755),
                mtime: snap.time,
                kind: EntryKind::Dir { tree: root },
            }
        } else {
            lookup(store, &root, &name)?.ok_or_else(|| {
                SyncError::Invalid(format!(
                    "{}: named by the entry but not in its snapshot",
                    p.display()
                ))
            })?
        };
        // The entry's paths come from the remote: nothing is written
        // through a symlink found on the way (a directory entry not even
        // through one at its own place; a file or symlink replaces one).
        let mut at = target.to_path_buf();
        let comps: Vec<_> = p.components().collect();
        for (i, c) in comps.iter().enumerate() {
            at.push(c);
            let last = i + 1 == comps.len();
            if last && !matches!(entry.kind, EntryKind::Dir { .. }) {
                break;
            }
            if std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(SyncError::Invalid(format!(
                    "{}: a symlink; cache restore does not write through it",
                    at.display()
                )));
            }
        }
        crate::restore::refuse_store(&dest)?;
        planned.push((dest, entry));
    }
    // Nor through a symlink one of the entry's paths writes on the way to
    // another.
    crate::restore::refuse_nested_through(store, &planned)?;
    for (dest, entry) in planned {
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| SyncError::io("creating", parent, e))?;
        }
        // A file goes at its own path, never into a directory found there.
        let r = crate::restore::restore_at(store, &entry, &dest, &opts, progress)?;
        if root_mode.is_some() {
            // (A restore fills the directory it is given, and leaves its
            // mode: this one is the entry's own.)
            use rustix::fs::{Mode, OFlags};
            let fd = rustix::fs::open(
                &dest,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| SyncError::io("opening", &dest, e.into()))?;
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(entry.mode))
                .map_err(|e| SyncError::io("setting mode of", &dest, e.into()))?;
        }
        total.files += r.files;
        total.dirs += r.dirs;
        total.bytes += r.bytes;
        total.unchanged += r.unchanged;
        total.protected.extend(r.protected);
    }
    Ok((
        paths
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect(),
        total,
    ))
}

/// Moves `cache-meta/KEY` to a new snapshot whose time is now.
fn record_restore(
    local: &Store,
    remote: &dyn Remote,
    refs: &BTreeMap<String, ObjectId>,
    key: &str,
) -> Result<()> {
    let mut meta = BTreeMap::new();
    meta.insert(META_KEY.to_string(), key.to_string());
    let snap = Snapshot {
        time: crate::snapshot::now(),
        host: crate::snapshot::hostname(),
        message: format!("cache restore {key}"),
        meta,
        ..Default::default()
    };
    let (id, _) = crate::snapshot::write_snapshot(local, &snap)?;
    retrying("recording the restore", || {
        crate::transfer::send(local, remote, &[id], &crate::progress::NoProgress)
    })?;
    let name = format!("{META_PREFIX}{key}");
    let mut old = refs.get(&name).copied();
    for _ in 0..3 {
        match remote.update_ref(&name, old, id, true) {
            Ok(()) => return Ok(()),
            Err(SyncError::RefConflict { actual, .. }) => old = actual,
            Err(e) => return Err(e),
        }
    }
    // Others restored it at the same moment: their time stands.
    Ok(())
}

/// One cache entry, as `cache list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CacheEntry {
    /// The entry's key.
    pub key: String,
    /// Its snapshot.
    pub id: ObjectId,
    /// When it was saved (Unix seconds).
    pub saved: i64,
    /// When it was last restored (Unix seconds), if ever.
    pub restored: Option<i64>,
    /// The later of the two: what prune orders by.
    pub last_used: i64,
    /// Files (and symlinks) it holds.
    pub files: u64,
    /// Bytes of its files (before deduplication and compression: entries
    /// share chunks, so the remote holds less than the sum).
    pub bytes: u64,
    /// The machine that saved it.
    pub host: String,
    /// The saved paths.
    pub paths: Vec<String>,
}

/// Every entry on the remote, sorted by key.
pub fn list(remote: &dyn Remote) -> Result<Vec<CacheEntry>> {
    let refs = remote_refs(remote)?;
    let entries: Vec<(String, ObjectId)> = refs
        .iter()
        .filter_map(|(n, id)| n.strip_prefix(ENTRY_PREFIX).map(|k| (k.to_string(), *id)))
        .collect();
    let metas: Vec<(String, ObjectId)> = entries
        .iter()
        .filter_map(|(k, _)| {
            refs.get(&format!("{META_PREFIX}{k}"))
                .map(|id| (k.clone(), *id))
        })
        .collect();
    let snaps = fetch_snapshots(
        remote,
        &entries.iter().map(|(_, id)| *id).collect::<Vec<_>>(),
    )?;
    let meta_snaps = fetch_snapshots(remote, &metas.iter().map(|(_, id)| *id).collect::<Vec<_>>())?;
    let restored: BTreeMap<&str, i64> = metas
        .iter()
        .zip(&meta_snaps)
        .map(|((k, _), s)| (k.as_str(), secs(s)))
        .collect();
    Ok(entries
        .iter()
        .zip(snaps)
        .map(|((k, id), s)| {
            // (A restore record older than the entry is of an earlier
            // entry under this key, pruned since.)
            let r = restored.get(k.as_str()).copied().filter(|r| *r >= secs(&s));
            CacheEntry {
                key: k.clone(),
                id: *id,
                saved: secs(&s),
                restored: r,
                last_used: r.map_or(secs(&s), |r| r.max(secs(&s))),
                files: s.files,
                bytes: s.bytes,
                host: s.host.clone(),
                paths: s
                    .meta
                    .get(META_PATHS)
                    .map(|p| p.lines().map(str::to_string).collect())
                    .unwrap_or_default(),
            }
        })
        .collect())
}

/// What `cache prune` removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PruneRule {
    /// Least recently used entries until the rest's bytes fit.
    MaxSize(u64),
    /// Entries not used (saved or restored) for this many days.
    OlderThanDays(u64),
}

/// What `cache prune` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    /// Entries removed, least recently used first.
    pub removed: Vec<CacheEntry>,
    /// Their file bytes.
    pub removed_bytes: u64,
    /// Entries kept, and their file bytes.
    pub kept: u64,
    /// File bytes of the entries kept.
    pub kept_bytes: u64,
    /// Entries that changed while pruning (left alone).
    pub skipped: Vec<String>,
}

/// Removes entries by `rule`, least recently used first. `now`: Unix
/// seconds (the clock, for `OlderThanDays`). `dry_run`: only report.
pub fn prune(
    remote: &dyn Remote,
    rule: PruneRule,
    now: i64,
    dry_run: bool,
    progress: &dyn Progress,
) -> Result<PruneReport> {
    let mut entries = list(remote)?;
    entries.sort_by(|a, b| (a.last_used, &a.key).cmp(&(b.last_used, &b.key)));
    let mut total: u64 = entries.iter().map(|e| e.bytes).sum();
    let refs = remote_refs(remote)?;
    let mut report = PruneReport::default();
    for e in entries {
        let remove = match rule {
            PruneRule::MaxSize(max) => total > max,
            PruneRule::OlderThanDays(d) => {
                e.last_used
                    < now
                        .saturating_sub(i64::try_from(d.saturating_mul(86_400)).unwrap_or(i64::MAX))
            }
        };
        if !remove {
            report.kept += 1;
            report.kept_bytes += e.bytes;
            continue;
        }
        if progress.interrupted() {
            return Err(SyncError::Interrupted);
        }
        if !dry_run {
            match remote.delete_ref(&format!("{ENTRY_PREFIX}{}", e.key), e.id) {
                Ok(()) => {}
                Err(SyncError::RefConflict { .. }) => {
                    report.skipped.push(e.key.clone());
                    continue;
                }
                Err(err) => return Err(err),
            }
            let meta = format!("{META_PREFIX}{}", e.key);
            if let Some(m) = refs.get(&meta) {
                match remote.delete_ref(&meta, *m) {
                    Ok(()) | Err(SyncError::RefConflict { .. }) => {}
                    Err(err) => return Err(err),
                }
            }
        }
        total = total.saturating_sub(e.bytes);
        report.removed_bytes += e.bytes;
        report.removed.push(e);
    }
    // Restore records whose entry is gone (a restore that finished after a
    // prune had taken its entry records it anew): removed too.
    if !dry_run {
        for (name, id) in &refs {
            let Some(key) = name.strip_prefix(META_PREFIX) else {
                continue;
            };
            if !refs.contains_key(&format!("{ENTRY_PREFIX}{key}")) {
                match remote.delete_ref(name, *id) {
                    Ok(()) | Err(SyncError::RefConflict { .. }) => {}
                    Err(err) => return Err(err),
                }
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_prefixes() {
        for ok in ["cargo-linux-abc123", "a", "v1/linux", "x.y_z"] {
            validate_key(ok).unwrap();
        }
        for bad in ["", "..", "a/../b", "a b", "a\nb", "/a", "a/", "a//b", "~x"] {
            assert!(validate_key(bad).is_err(), "{bad:?}");
        }
        validate_prefix("cargo-").unwrap();
        validate_prefix("v1/").unwrap();
        assert!(validate_prefix("").is_err());
        assert!(validate_prefix("a b").is_err());
    }

    #[test]
    fn paths_stay_below() {
        assert_eq!(
            clean_path(Path::new("./a/b/")).unwrap(),
            PathBuf::from("a/b")
        );
        assert!(clean_path(Path::new("../a")).is_err());
        assert!(clean_path(Path::new("a/../../b")).is_err());
        assert!(clean_path(Path::new("/etc")).is_err());
        assert!(clean_path(Path::new(".")).is_err());
    }
}
