//! Materializing trees. Every name comes from a store, remote or bundle that
//! may be hostile, so:
//! - names are validated when their tree is decoded (no `.`, `..`, empty,
//!   `/`, NUL; sorted and unique);
//! - every directory is created and opened relative to its parent's already
//!   open handle with `O_NOFOLLOW`, never through a path string, so no
//!   symlink (ours or one already at the target) is ever traversed;
//! - a file is written to a new name (`O_CREAT | O_EXCL | O_NOFOLLOW`) and
//!   renamed over what was there, so an existing symlink or hard link is
//!   replaced, never written through;
//! - every chunk is verified against its id before its bytes are written.

use std::ffi::OsStr;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;

use crate::error::{IoContext, Result, SyncError};
use crate::id::{ObjectId, ObjectType};
use crate::object::ObjectSource;
use crate::object::tree::{Entry, EntryKind, read_dir};
use crate::progress::Progress;

#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Remove what the snapshot lacks (rsync's `--delete`).
    pub delete: bool,
    pub threads: Option<usize>,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct RestoreReport {
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
    pub deleted: u64,
}

struct Ctx<'a> {
    src: &'a dyn ObjectSource,
    opts: &'a RestoreOptions,
    progress: &'a dyn Progress,
    files: AtomicU64,
    dirs: AtomicU64,
    bytes: AtomicU64,
    deleted: AtomicU64,
}

/// Restores `entry` (as found at a snapshot path): a directory's contents go
/// into `target`; a file or symlink goes to `target/name`. `target` is
/// created if missing.
pub fn restore(
    src: &dyn ObjectSource,
    entry: &Entry,
    name: &[u8],
    target: &Path,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreReport> {
    std::fs::create_dir_all(target).ctx("creating", target)?;
    let root = rustix::fs::open(
        target,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ctx("opening", target)?;
    let ctx = Ctx {
        src,
        opts,
        progress,
        files: AtomicU64::new(0),
        dirs: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        deleted: AtomicU64::new(0),
    };
    // Creating files waits on the filesystem more than on the CPU: by
    // default twice as many threads as CPUs (SP_SYNC_THREADS overrides).
    let threads = opts
        .threads
        .or_else(|| {
            std::env::var("SP_SYNC_THREADS")
                .ok()
                .and_then(|v| v.parse().ok())
        })
        .or_else(|| {
            std::thread::available_parallelism()
                .ok()
                .map(|n| (n.get() * 2).max(4))
        });
    let pool = crate::snapshot::pool(threads)?;
    pool.install(|| match &entry.kind {
        EntryKind::Dir { tree } => {
            let fresh = dir_is_empty(root.as_fd());
            ctx.fill_dir(root.as_fd(), tree, target, fresh)
        }
        _ => {
            let name_os = OsStr::from_bytes(name);
            ctx.entry(root.as_fd(), name, entry, &target.join(name_os), false)
        }
    })?;
    Ok(RestoreReport {
        files: ctx.files.into_inner(),
        dirs: ctx.dirs.into_inner(),
        bytes: ctx.bytes.into_inner(),
        deleted: ctx.deleted.into_inner(),
    })
}

fn dir_is_empty(fd: BorrowedFd<'_>) -> bool {
    match rustix::fs::Dir::read_from(fd) {
        Ok(mut d) => {
            while let Some(Ok(e)) = d.next() {
                let n = e.file_name().to_bytes();
                if n != b"." && n != b".." {
                    return false;
                }
            }
            true
        }
        Err(_) => false,
    }
}

fn ts(t: crate::object::tree::Timestamp) -> Timestamps {
    let spec = Timespec {
        tv_sec: t.secs,
        tv_nsec: i64::from(t.nanos),
    };
    Timestamps {
        last_access: spec,
        last_modification: spec,
    }
}

fn tmp_name() -> Vec<u8> {
    format!(
        ".sp-sync-tmp-{}-{}",
        std::process::id(),
        crate::store::unique()
    )
    .into_bytes()
}

impl Ctx<'_> {
    /// Writes a directory's entries into the open directory `dir` (shown as
    /// `path`). `fresh`: the directory was empty, nothing to replace.
    fn fill_dir(
        &self,
        dir: BorrowedFd<'_>,
        tree: &ObjectId,
        path: &Path,
        fresh: bool,
    ) -> Result<()> {
        if self.progress.interrupted() {
            return Err(SyncError::Interrupted);
        }
        let entries = read_dir(self.src, tree)?;
        if self.opts.delete && !fresh {
            self.delete_extra(dir, &entries, path)?;
        }
        entries.par_iter().try_for_each(|(name, e)| {
            let p = path.join(OsStr::from_bytes(name));
            self.entry(dir, name, e, &p, fresh)
        })
    }

    fn entry(
        &self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        e: &Entry,
        path: &Path,
        fresh: bool,
    ) -> Result<()> {
        match &e.kind {
            EntryKind::Dir { tree } => {
                let (fd, child_fresh) = self.open_dir(dir, name, path, fresh)?;
                self.fill_dir(fd.as_fd(), tree, path, child_fresh)?;
                rustix::fs::fchmod(&fd, Mode::from_raw_mode(e.mode))
                    .ctx("setting mode of", path)?;
                rustix::fs::futimens(&fd, &ts(e.mtime)).ctx("setting times of", path)?;
                self.dirs.fetch_add(1, Ordering::Relaxed);
            }
            EntryKind::File { size, content } => {
                if !fresh {
                    self.clear_dir_at(dir, name, path)?;
                }
                let tmp = if fresh { name.to_vec() } else { tmp_name() };
                let fd = rustix::fs::openat(
                    dir,
                    OsStr::from_bytes(&tmp),
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .ctx("creating", path)?;
                let r = self
                    .write_content(&fd, content, *size, path)
                    .and_then(|()| {
                        rustix::fs::fchmod(&fd, Mode::from_raw_mode(e.mode))
                            .ctx("setting mode of", path)?;
                        rustix::fs::futimens(&fd, &ts(e.mtime)).ctx("setting times of", path)
                    });
                drop(fd);
                let r = r.and_then(|()| {
                    if fresh {
                        Ok(())
                    } else {
                        rustix::fs::renameat(
                            dir,
                            OsStr::from_bytes(&tmp),
                            dir,
                            OsStr::from_bytes(name),
                        )
                        .ctx("renaming into", path)
                    }
                });
                if let Err(err) = r {
                    let _ = rustix::fs::unlinkat(dir, OsStr::from_bytes(&tmp), AtFlags::empty());
                    return Err(err);
                }
                self.files.fetch_add(1, Ordering::Relaxed);
                self.bytes.fetch_add(*size, Ordering::Relaxed);
                self.progress.add(1, *size);
            }
            EntryKind::Symlink { target } => {
                if !fresh {
                    self.clear_dir_at(dir, name, path)?;
                }
                let tmp = if fresh { name.to_vec() } else { tmp_name() };
                rustix::fs::symlinkat(OsStr::from_bytes(target), dir, OsStr::from_bytes(&tmp))
                    .ctx("creating symlink", path)?;
                let r = rustix::fs::utimensat(
                    dir,
                    OsStr::from_bytes(&tmp),
                    &ts(e.mtime),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .ctx("setting times of", path)
                .and_then(|()| {
                    if fresh {
                        Ok(())
                    } else {
                        rustix::fs::renameat(
                            dir,
                            OsStr::from_bytes(&tmp),
                            dir,
                            OsStr::from_bytes(name),
                        )
                        .ctx("renaming into", path)
                    }
                });
                if let Err(err) = r {
                    let _ = rustix::fs::unlinkat(dir, OsStr::from_bytes(&tmp), AtFlags::empty());
                    return Err(err);
                }
                self.files.fetch_add(1, Ordering::Relaxed);
                self.progress.add(1, 0);
            }
        }
        Ok(())
    }

    fn write_content(
        &self,
        fd: &OwnedFd,
        content: &crate::object::tree::Content,
        size: u64,
        path: &Path,
    ) -> Result<()> {
        let mut f = std::fs::File::from(fd.try_clone().ctx("writing", path)?);
        let mut written = 0u64;
        for c in content.chunks(self.src, size) {
            let c = c?;
            let data = self.src.get(ObjectType::Chunk, &c.id)?;
            if data.len() as u64 != c.len {
                return Err(crate::object::corrupt(
                    ObjectType::Chunk,
                    &c.id,
                    format!("{} bytes where the list says {}", data.len(), c.len),
                ));
            }
            f.write_all(&data).ctx("writing", path)?;
            written += c.len;
        }
        if written != size {
            return Err(SyncError::Invalid(format!(
                "{}: content covers {written} bytes, the entry says {size}",
                path.display()
            )));
        }
        Ok(())
    }

    /// Opens (creating if needed) the directory `name` in `dir` without
    /// following symlinks; whatever non-directory is there is replaced.
    fn open_dir(
        &self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        path: &Path,
        fresh: bool,
    ) -> Result<(OwnedFd, bool)> {
        let n = OsStr::from_bytes(name);
        let mut created = false;
        if fresh {
            rustix::fs::mkdirat(dir, n, Mode::from_raw_mode(0o700)).ctx("creating", path)?;
            created = true;
        } else {
            match rustix::fs::statat(dir, n, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {}
                Ok(_) => {
                    rustix::fs::unlinkat(dir, n, AtFlags::empty()).ctx("removing", path)?;
                    rustix::fs::mkdirat(dir, n, Mode::from_raw_mode(0o700))
                        .ctx("creating", path)?;
                    created = true;
                }
                Err(Errno::NOENT) => {
                    rustix::fs::mkdirat(dir, n, Mode::from_raw_mode(0o700))
                        .ctx("creating", path)?;
                    created = true;
                }
                Err(e) => return Err(SyncError::io("reading", path, e.into())),
            }
        }
        let fd = rustix::fs::openat(
            dir,
            n,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ctx("opening", path)?;
        if !created {
            // An existing directory we may not be able to write into yet.
            let st = rustix::fs::fstat(&fd).ctx("reading", path)?;
            if st.st_mode & 0o700 != 0o700 {
                rustix::fs::fchmod(&fd, Mode::from_raw_mode((st.st_mode & 0o7777) | 0o700))
                    .ctx("setting mode of", path)?;
            }
        }
        Ok((fd, created))
    }

    /// If `name` in `dir` is a directory, removes it (a file or symlink will be
    /// replaced by rename).
    fn clear_dir_at(&self, dir: BorrowedFd<'_>, name: &[u8], path: &Path) -> Result<()> {
        match rustix::fs::statat(dir, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                remove_at(dir, name, path)
            }
            _ => Ok(()),
        }
    }

    fn delete_extra(
        &self,
        dir: BorrowedFd<'_>,
        entries: &[(Vec<u8>, Entry)],
        path: &Path,
    ) -> Result<()> {
        let d = rustix::fs::Dir::read_from(dir).ctx("reading directory", path)?;
        let mut extra = Vec::new();
        for e in d {
            let e = e.ctx("reading directory", path)?;
            let n = e.file_name().to_bytes();
            if n == b"." || n == b".." {
                continue;
            }
            if entries
                .binary_search_by(|(k, _)| k.as_slice().cmp(n))
                .is_err()
            {
                extra.push(n.to_vec());
            }
        }
        for n in extra {
            remove_at(dir, &n, &path.join(OsStr::from_bytes(&n)))?;
            self.deleted.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Removes `name` in `dir`, recursively if it is a directory, never
/// following a symlink.
pub fn remove_at(dir: BorrowedFd<'_>, name: &[u8], path: &Path) -> Result<()> {
    let n = OsStr::from_bytes(name);
    match rustix::fs::unlinkat(dir, n, AtFlags::empty()) {
        Ok(()) => return Ok(()),
        Err(Errno::ISDIR) | Err(Errno::PERM) => {}
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(SyncError::io("removing", path, e.into())),
    }
    let fd = rustix::fs::openat(
        dir,
        n,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ctx("opening", path)?;
    let st = rustix::fs::fstat(&fd).ctx("reading", path)?;
    if st.st_mode & 0o700 != 0o700 {
        let _ = rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700));
    }
    let mut names = Vec::new();
    {
        let d = rustix::fs::Dir::read_from(&fd).ctx("reading directory", path)?;
        for e in d {
            let e = e.ctx("reading directory", path)?;
            let c = e.file_name().to_bytes();
            if c != b"." && c != b".." {
                names.push(c.to_vec());
            }
        }
    }
    for c in names {
        remove_at(fd.as_fd(), &c, &path.join(OsStr::from_bytes(&c)))?;
    }
    drop(fd);
    rustix::fs::unlinkat(dir, n, AtFlags::REMOVEDIR).ctx("removing", path)
}

/// The path shown for a snapshot path inside a target.
pub fn display_path(target: &Path, rel: &[u8]) -> PathBuf {
    target.join(OsStr::from_bytes(rel))
}
