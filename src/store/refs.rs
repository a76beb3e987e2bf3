//! Refs: `refs/<name>` holds `<64 lowercase hex>\n`. A ref moves by
//! compare-and-swap under an exclusive lock on `refs.lock`: read, compare,
//! write a temporary file, fsync, rename, fsync the directory.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use super::{Store, write_atomic};
use crate::error::{IoContext, Result, SyncError};
use crate::id::{ObjectId, ObjectType};

pub const MAX_REF_NAME: usize = 255;

/// Checks a ref name: components joined by `/`, each made of ASCII letters,
/// digits and `._-+@=,`, not starting with `.`, and not ending in `.lock`.
pub fn validate_ref_name(name: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(SyncError::Invalid(format!(
            "invalid ref name {name:?}: {why}"
        )))
    };
    if name.is_empty() || name.len() > MAX_REF_NAME {
        return bad("must be 1 to 255 bytes");
    }
    for comp in name.split('/') {
        if comp.is_empty() {
            return bad("empty path component");
        }
        if comp.starts_with('.') {
            return bad("a component starts with `.`");
        }
        if comp.ends_with(".lock") {
            return bad("a component ends with `.lock`");
        }
        if !comp
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._-+@=,".contains(&c))
        {
            return bad("only ASCII letters, digits, `/` and `._-+@=,` are allowed");
        }
    }
    Ok(())
}

impl Store {
    fn ref_path(&self, name: &str) -> PathBuf {
        self.refs_dir().join(name)
    }

    /// The snapshot a ref points to.
    pub fn read_ref(&self, name: &str) -> Result<Option<ObjectId>> {
        validate_ref_name(name)?;
        read_ref_file(&self.ref_path(name))
    }

    /// Every ref, sorted by name.
    pub fn list_refs(&self) -> Result<Vec<(String, ObjectId)>> {
        let mut out = Vec::new();
        walk(&self.refs_dir(), "", &mut out)?;
        out.sort();
        Ok(out)
    }

    /// Moves ref `name` from `expected` to `new` atomically. `expected`:
    /// `None` skips the comparison; `Some(None)` requires that the ref does
    /// not exist. `new = None` deletes the ref. The new target must be a
    /// snapshot present in the store.
    pub fn update_ref(
        &self,
        name: &str,
        expected: Option<Option<ObjectId>>,
        new: Option<ObjectId>,
    ) -> Result<()> {
        validate_ref_name(name)?;
        if let Some(id) = new {
            match self.location(&id) {
                Some(loc) if loc.tag == ObjectType::Snapshot => {}
                Some(_) => return Err(SyncError::Invalid(format!("{id} is not a snapshot"))),
                None => {
                    return Err(SyncError::MissingObject {
                        kind: "snapshot",
                        id,
                    });
                }
            }
        }
        let lock_path = self.dir().join("refs.lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .ctx("opening", &lock_path)?;
        lock.lock().ctx("locking", &lock_path)?;
        let path = self.ref_path(name);
        let current = read_ref_file(&path)?;
        if let Some(exp) = expected
            && exp != current
        {
            return Err(SyncError::RefConflict {
                name: name.to_string(),
                expected: exp,
                actual: current,
            });
        }
        match new {
            Some(id) => {
                if let Some(parent) = path.parent() {
                    ensure_ref_dirs(&self.refs_dir(), parent)?;
                }
                write_atomic(&path, format!("{id}\n").as_bytes(), &self.tmp_dir())?;
            }
            None => {
                if current.is_some() {
                    fs::remove_file(&path).ctx("removing", &path)?;
                    if let Some(parent) = path.parent() {
                        super::sync_dir(parent)?;
                        prune_empty(&self.refs_dir(), parent);
                    }
                }
            }
        }
        drop(lock);
        Ok(())
    }
}

fn ensure_ref_dirs(root: &Path, dir: &Path) -> Result<()> {
    // A file where a directory is needed means a ref `a` blocks `a/b`.
    let mut cur = PathBuf::from(root);
    if let Ok(rel) = dir.strip_prefix(root) {
        for c in rel.components() {
            cur.push(c);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(SyncError::Invalid(format!(
                        "ref {} exists, so no ref can be created below it",
                        cur.strip_prefix(root).unwrap_or(&cur).display()
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

fn read_ref_file(path: &Path) -> Result<Option<ObjectId>> {
    match fs::read(path) {
        Ok(b) => {
            let s = std::str::from_utf8(&b).unwrap_or("");
            match ObjectId::from_hex(s.trim_end_matches('\n')) {
                Some(id) if s.len() == 65 && s.ends_with('\n') => Ok(Some(id)),
                _ => Err(SyncError::corrupt_file(
                    "ref",
                    path,
                    "expected 64 hex digits and a newline",
                )),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::ISDIR.raw_os_error()) => Ok(None),
        Err(e) => Err(SyncError::io("reading", path, e)),
    }
}

fn walk(dir: &Path, prefix: &str, out: &mut Vec<(String, ObjectId)>) -> Result<()> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(SyncError::io("reading", dir, e)),
    };
    for e in rd {
        let e = e.ctx("reading", dir)?;
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let full = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let ft = e.file_type().ctx("reading", e.path())?;
        if ft.is_dir() {
            walk(&e.path(), &full, out)?;
        } else if ft.is_file()
            && validate_ref_name(&full).is_ok()
            && let Some(id) = read_ref_file(&e.path())?
        {
            out.push((full, id));
        }
    }
    Ok(())
}

/// Creates an empty file (used for lock files).
pub fn touch(path: &Path) -> Result<()> {
    File::create(path).ctx("creating", path).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_names() {
        for good in [
            "main",
            "cache/linux-cargo-abc123",
            "deploy/api",
            "remotes/origin/main",
            "v1.2+x@y=z,w",
        ] {
            assert!(validate_ref_name(good).is_ok(), "{good}");
        }
        for bad in [
            "", "/main", "main/", "a//b", "../x", ".hidden", "a/.b", "x.lock", "sp ace", "a\\b",
            "ü",
        ] {
            assert!(validate_ref_name(bad).is_err(), "{bad}");
        }
    }
}
