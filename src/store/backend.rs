//! Where a store's files live: a local directory, or S3-compatible object
//! storage (`s3.rs`). Keys are `/`-separated paths relative to the store
//! (`store.toml`, `packs/<name>.pack`, `refs/main`). Everything above this
//! trait — packs, indexes, refs, fsck, gc — is the same code for both.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{LockMode, acquire, sync_dir, write_atomic};
use crate::error::{IoContext, Result, SyncError};

/// The outcome of a compare-and-swap: `Err(current)` when the current value
/// was not the expected one.
pub type CasResult = std::result::Result<(), Option<Vec<u8>>>;

pub trait Backend: Send + Sync {
    /// Where the store is, for messages.
    fn describe(&self) -> String;
    /// The directory, when the store is a local directory.
    fn local_dir(&self) -> Option<&Path>;
    /// A whole (small) file, or None when absent.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Writes a whole small file, atomically and durably.
    fn put(&self, key: &str, data: &[u8]) -> Result<()>;
    /// Moves a finished local file (already fsynced) to `key`, durably.
    fn put_file(&self, key: &str, local: &Path) -> Result<()>;
    /// Fills `buf` from `offset` of `key`.
    fn read_at(&self, key: &str, offset: u64, buf: &mut [u8]) -> Result<()>;
    /// Reads a whole file sequentially.
    fn open_read(&self, key: &str) -> Result<Box<dyn Read + Send>>;
    /// Every key under `prefix` (a directory such as `packs/`), recursively.
    fn list(&self, prefix: &str) -> Result<Vec<String>>;
    /// Removes a file; an absent one is not an error.
    fn delete(&self, key: &str) -> Result<()>;
    /// Makes the puts into `prefix` durable (a directory fsync).
    fn sync(&self, prefix: &str) -> Result<()>;
    /// A local directory for files being written.
    fn tmp_dir(&self) -> PathBuf;
    /// Takes the process lock (directories only; object storage has none).
    fn lock(&self, mode: LockMode) -> Result<Option<File>>;
    /// Replaces `key`'s contents if they are `expected` (None: absent) with
    /// `new` (None: delete).
    fn cas(&self, key: &str, expected: Option<&[u8]>, new: Option<&[u8]>) -> Result<CasResult>;
    /// Where a store above this one is, if any: a store made inside another
    /// would be taken for its refs or packs. (Local directories: checked by
    /// `Store::init`.)
    fn enclosing_store(&self) -> Result<Option<String>> {
        Ok(None)
    }
}

/// A store in a local directory.
pub struct FsBackend {
    root: PathBuf,
    handles: Mutex<HashMap<String, Arc<File>>>,
    /// How long to wait for the store's lock (`None`: `SP_SYNC_LOCK_TIMEOUT`).
    lock_limit: Option<std::time::Duration>,
}

const MAX_OPEN_FILES: usize = 256;

impl FsBackend {
    pub fn new(root: &Path) -> FsBackend {
        FsBackend {
            root: root.to_path_buf(),
            handles: Mutex::new(HashMap::new()),
            lock_limit: None,
        }
    }

    /// Waits at most `limit` for the store's lock.
    pub fn with_lock_limit(mut self, limit: std::time::Duration) -> FsBackend {
        self.lock_limit = Some(limit);
        self
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn handle(&self, key: &str) -> Result<Arc<File>> {
        let mut h = self
            .handles
            .lock()
            .map_err(|_| SyncError::Invalid("file handle cache poisoned".into()))?;
        if let Some(f) = h.get(key) {
            return Ok(f.clone());
        }
        let p = self.path(key);
        let f = Arc::new(File::open(&p).ctx("opening", &p)?);
        if h.len() >= MAX_OPEN_FILES {
            h.clear();
        }
        h.insert(key.to_string(), f.clone());
        Ok(f)
    }

    fn forget(&self, key: &str) {
        if let Ok(mut h) = self.handles.lock() {
            h.remove(key);
        }
    }
}

impl Backend for FsBackend {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn local_dir(&self) -> Option<&Path> {
        Some(&self.root)
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let p = self.path(key);
        match fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::ISDIR.raw_os_error()) => Ok(None),
            // `a/b` where `a` is a file: no such key either.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error()) => {
                Ok(None)
            }
            Err(e) => Err(SyncError::io("reading", &p, e)),
        }
    }

    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        let p = self.path(key);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).ctx("creating", parent)?;
        }
        if key == "config.toml" {
            // Remotes' tokens and keys: its owner's alone, as git keeps a
            // config's mode and ssh its keys'.
            return crate::store::write_atomic_mode(&p, data, &self.tmp_dir(), 0o600);
        }
        write_atomic(&p, data, &self.tmp_dir())
    }

    fn put_file(&self, key: &str, local: &Path) -> Result<()> {
        let p = self.path(key);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).ctx("creating", parent)?;
        }
        fs::rename(local, &p).ctx("renaming into", &p)
    }

    fn read_at(&self, key: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        let f = self.handle(key)?;
        f.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                SyncError::corrupt_file("pack", self.path(key), "truncated")
            } else {
                SyncError::io("reading", self.path(key), e)
            }
        })
    }

    fn open_read(&self, key: &str) -> Result<Box<dyn Read + Send>> {
        let p = self.path(key);
        let f = File::open(&p).ctx("opening", &p)?;
        Ok(Box::new(std::io::BufReader::with_capacity(1 << 20, f)))
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let base = self.path(prefix);
        walk(&base, prefix.trim_end_matches('/'), &mut out)?;
        out.sort();
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.forget(key);
        let p = self.path(key);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(SyncError::io("removing", &p, e)),
        }
    }

    fn sync(&self, prefix: &str) -> Result<()> {
        sync_dir(&self.path(prefix))
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn lock(&self, mode: LockMode) -> Result<Option<File>> {
        let lock_path = self.path("lock");
        let lock = open_lock_file(&lock_path)?;
        acquire(&lock, mode, &lock_path, self.lock_limit)?;
        Ok(Some(lock))
    }

    fn cas(&self, key: &str, expected: Option<&[u8]>, new: Option<&[u8]>) -> Result<CasResult> {
        let lock_path = self.path("refs.lock");
        let lock = open_lock_file(&lock_path)?;
        lock.lock().ctx("locking", &lock_path)?;
        let current = self.get(key)?;
        if current.as_deref() != expected {
            return Ok(Err(current));
        }
        let p = self.path(key);
        match new {
            Some(data) => {
                if let Some(parent) = p.parent() {
                    ensure_dirs(&self.root, parent)?;
                }
                write_atomic(&p, data, &self.tmp_dir())?;
            }
            None => {
                if current.is_some() {
                    fs::remove_file(&p).ctx("removing", &p)?;
                    if let Some(parent) = p.parent() {
                        sync_dir(parent)?;
                        prune_empty(&self.root.join("refs"), parent);
                    }
                }
            }
        }
        drop(lock);
        Ok(Ok(()))
    }
}

fn open_lock_file(path: &Path) -> Result<File> {
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .ctx("opening", path)
}

fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) -> Result<()> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        // A prefix that is a file (`refs/main/` while `refs/main` is a ref)
        // has no keys under it.
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error()) => {
            return Ok(());
        }
        Err(e) => return Err(SyncError::io("reading", dir, e)),
    };
    for e in rd {
        let e = e.ctx("reading", dir)?;
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let key = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        if e.file_type().ctx("reading", e.path())?.is_dir() {
            walk(&e.path(), &key, out)?;
        } else {
            out.push(key);
        }
    }
    Ok(())
}

/// Creates the directories of a ref's path; a file in the way means a ref
/// `a` blocks `a/b`.
fn ensure_dirs(root: &Path, dir: &Path) -> Result<()> {
    let mut cur = root.to_path_buf();
    if let Ok(rel) = dir.strip_prefix(root) {
        for c in rel.components() {
            cur.push(c);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(SyncError::Invalid(format!(
                        "ref {} exists, so no ref can be created below it",
                        cur.strip_prefix(root.join("refs"))
                            .unwrap_or(&cur)
                            .display()
                    )));
                }
                Err(_) => fs::create_dir(&cur).ctx("creating", &cur)?,
            }
        }
    }
    Ok(())
}

fn prune_empty(root: &Path, mut dir: &Path) {
    while dir != root && dir.starts_with(root) {
        if fs::remove_dir(dir).is_err() {
            break;
        }
        match dir.parent() {
            Some(p) => dir = p,
            None => break,
        }
    }
}
