//! What changed between two trees, on top of the prolly map diff: equal
//! subtrees (same id) are skipped unread, so a diff costs what changed.
//!
//! Reported: files and symlinks added, removed, modified (content, mode or
//! link target) or changing type, and directories added, removed or changing
//! mode (shown with a trailing `/`). A change of modification time alone is
//! not a difference.

use serde::Serialize;

use crate::error::Result;
use crate::id::{ObjectId, ObjectType};
use crate::object::ObjectSource;
use crate::object::tree::{
    Entry, EntryKind, MAX_TREE_DEPTH, Timestamp, decode_entry, read_dir, too_deep,
};
use crate::pmap::{self, Change};

/// How a path differs between two trees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// Only in the new tree.
    Added,
    /// Only in the old tree.
    Removed,
    /// In both, with other contents or mode.
    Modified,
    /// In both, as another kind (file, directory, symlink).
    Type,
}

impl ChangeKind {
    /// `+`, `-`, `M` or `T`, as the list view prints it.
    pub fn symbol(self) -> char {
        match self {
            ChangeKind::Added => '+',
            ChangeKind::Removed => '-',
            ChangeKind::Modified => 'M',
            ChangeKind::Type => 'T',
        }
    }
}

/// A path that differs between two trees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileChange {
    /// The path (lossy UTF-8); directories end with `/`.
    pub path: String,
    /// The path's bytes as stored (not necessarily UTF-8).
    #[serde(skip)]
    pub raw_path: Vec<u8>,
    /// How it differs.
    pub change: ChangeKind,
    /// The old file's size (files only).
    pub old_size: Option<u64>,
    /// The new file's size (files only).
    pub new_size: Option<u64>,
    /// The old entry's kind, for a type change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_type: Option<&'static str>,
    /// The new entry's kind, for a type change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_type: Option<&'static str>,
}

/// Totals of a diff, for `--stat`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DiffStat {
    /// Paths added.
    pub added: u64,
    /// Paths removed.
    pub removed: u64,
    /// Paths modified.
    pub modified: u64,
    /// Paths whose kind changed.
    pub type_changed: u64,
    /// Bytes of the files added (and the new side of modified ones).
    pub bytes_added: u64,
    /// Bytes of the files removed (and the old side of modified ones).
    pub bytes_removed: u64,
}

impl DiffStat {
    /// Counts one change.
    pub fn add(&mut self, c: &FileChange) {
        match c.change {
            ChangeKind::Added => self.added += 1,
            ChangeKind::Removed => self.removed += 1,
            ChangeKind::Modified => self.modified += 1,
            ChangeKind::Type => self.type_changed += 1,
        }
        let (o, n) = (c.old_size.unwrap_or(0), c.new_size.unwrap_or(0));
        if n > o {
            self.bytes_added += n - o;
        } else {
            self.bytes_removed += o - n;
        }
    }

    /// Every change counted.
    pub fn total(&self) -> u64 {
        self.added + self.removed + self.modified + self.type_changed
    }
}

fn join(prefix: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = prefix.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

fn change(path: Vec<u8>, kind: ChangeKind, old: Option<&Entry>, new: Option<&Entry>) -> FileChange {
    let is_dir = |e: Option<&Entry>| matches!(e.map(|e| &e.kind), Some(EntryKind::Dir { .. }));
    let mut shown = path.clone();
    if kind != ChangeKind::Type && (is_dir(old) || is_dir(new)) {
        shown.push(b'/');
    }
    let size = |e: Option<&Entry>| match e.map(|e| &e.kind) {
        Some(EntryKind::Dir { .. }) | None => None,
        Some(_) => e.map(Entry::size),
    };
    FileChange {
        path: String::from_utf8_lossy(&shown).into_owned(),
        raw_path: path,
        change: kind,
        old_size: size(old),
        new_size: size(new),
        old_type: (kind == ChangeKind::Type)
            .then(|| old.map(Entry::kind_name))
            .flatten(),
        new_type: (kind == ChangeKind::Type)
            .then(|| new.map(Entry::kind_name))
            .flatten(),
    }
}

/// Calls `out` for each change between trees `a` and `b` (None: empty), in
/// path order.
pub fn diff_trees(
    src: &dyn ObjectSource,
    a: Option<&ObjectId>,
    b: Option<&ObjectId>,
    out: &mut dyn FnMut(FileChange) -> Result<()>,
) -> Result<()> {
    diff_dir(src, a, b, b"", 0, out)
}

fn diff_dir(
    src: &dyn ObjectSource,
    a: Option<&ObjectId>,
    b: Option<&ObjectId>,
    prefix: &[u8],
    depth: usize,
    out: &mut dyn FnMut(FileChange) -> Result<()>,
) -> Result<()> {
    // Each level recurses: a hostile tree nested deeper than any real one
    // gets a clear error, not a stack overflow.
    if depth > MAX_TREE_DEPTH {
        return Err(too_deep(prefix));
    }
    let a_id = a.copied().unwrap_or_default();
    let b_id = b.copied().unwrap_or_default();
    pmap::diff(src, ObjectType::Tree, a, b, |name, c| {
        let path = join(prefix, name);
        match c {
            Change::Added(v) => {
                let e = decode_entry(&b_id, name, &v, Timestamp::ZERO)?;
                all(src, &e, path, ChangeKind::Added, depth, out)
            }
            Change::Removed(v) => {
                let e = decode_entry(&a_id, name, &v, Timestamp::ZERO)?;
                all(src, &e, path, ChangeKind::Removed, depth, out)
            }
            Change::Modified(ov, nv) => {
                let o = decode_entry(&a_id, name, &ov, Timestamp::ZERO)?;
                let n = decode_entry(&b_id, name, &nv, Timestamp::ZERO)?;
                match (&o.kind, &n.kind) {
                    (EntryKind::Dir { tree: ta }, EntryKind::Dir { tree: tb }) => {
                        if o.mode != n.mode {
                            out(change(
                                path.clone(),
                                ChangeKind::Modified,
                                Some(&o),
                                Some(&n),
                            ))?;
                        }
                        if ta != tb {
                            diff_dir(src, Some(ta), Some(tb), &path, depth + 1, out)?;
                        }
                        Ok(())
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
                        if sa != sb || ca != cb || o.mode != n.mode {
                            out(change(path, ChangeKind::Modified, Some(&o), Some(&n)))?;
                        }
                        Ok(())
                    }
                    (EntryKind::Symlink { target: ta }, EntryKind::Symlink { target: tb }) => {
                        if ta != tb || o.mode != n.mode {
                            out(change(path, ChangeKind::Modified, Some(&o), Some(&n)))?;
                        }
                        Ok(())
                    }
                    _ => {
                        out(change(path.clone(), ChangeKind::Type, Some(&o), Some(&n)))?;
                        if let EntryKind::Dir { tree } = &o.kind {
                            children(src, tree, &path, ChangeKind::Removed, depth + 1, out)?;
                        }
                        if let EntryKind::Dir { tree } = &n.kind {
                            children(src, tree, &path, ChangeKind::Added, depth + 1, out)?;
                        }
                        Ok(())
                    }
                }
            }
        }
    })
}

/// Reports an added or removed entry, and everything under it.
fn all(
    src: &dyn ObjectSource,
    e: &Entry,
    path: Vec<u8>,
    kind: ChangeKind,
    depth: usize,
    out: &mut dyn FnMut(FileChange) -> Result<()>,
) -> Result<()> {
    let (old, new) = if kind == ChangeKind::Added {
        (None, Some(e))
    } else {
        (Some(e), None)
    };
    out(change(path.clone(), kind, old, new))?;
    if let EntryKind::Dir { tree } = &e.kind {
        children(src, tree, &path, kind, depth + 1, out)?;
    }
    Ok(())
}

fn children(
    src: &dyn ObjectSource,
    tree: &ObjectId,
    prefix: &[u8],
    kind: ChangeKind,
    depth: usize,
    out: &mut dyn FnMut(FileChange) -> Result<()>,
) -> Result<()> {
    if depth > MAX_TREE_DEPTH {
        return Err(too_deep(prefix));
    }
    for (name, e) in read_dir(src, tree, Timestamp::ZERO)? {
        all(src, &e, join(prefix, &name), kind, depth, out)?;
    }
    Ok(())
}

/// Collects a diff into a vector.
pub fn diff_trees_vec(
    src: &dyn ObjectSource,
    a: Option<&ObjectId>,
    b: Option<&ObjectId>,
) -> Result<Vec<FileChange>> {
    let mut v = Vec::new();
    diff_trees(src, a, b, &mut |c| {
        v.push(c);
        Ok(())
    })?;
    Ok(v)
}
