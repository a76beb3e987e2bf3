//! Line-level views of changed files, as git shows them: `--stat` counts
//! (insertions and deletions per path) and unified patches (`diff -p`).
//! Text is what is valid UTF-8 without NUL bytes and at most
//! [`MAX_TEXT`] bytes; anything else is shown as binary.

use std::path::PathBuf;

use similar::{ChangeTag, TextDiff};

use crate::error::Result;
use crate::id::{ObjectId, ObjectType};
use crate::object::ObjectSource;
use crate::object::tree::{EntryKind, lookup};

/// Files larger than this are not compared line by line.
pub const MAX_TEXT: u64 = 8 << 20;

/// One side of a diff, to read a file's bytes from.
pub enum Side<'a> {
    /// A snapshot's root tree in a store.
    Tree {
        /// Where the objects are.
        src: &'a dyn ObjectSource,
        /// The root tree (`None`: no files).
        root: Option<ObjectId>,
    },
    /// Files on disk: a path in the diff maps to a file (or `None`).
    Disk(&'a dyn Fn(&str) -> Option<PathBuf>),
}

/// What a file holds, for line-level views.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contents {
    /// Not there (added or removed), or not a regular file.
    Absent,
    /// UTF-8 text, small enough to diff by lines.
    Text(String),
    /// Binary or too large: only its size.
    Binary(u64),
}

impl Side<'_> {
    /// The contents of the regular file at `path` on this side.
    pub fn read(&self, path: &str) -> Result<Contents> {
        match self {
            Side::Tree { src, root } => {
                let Some(root) = root else {
                    return Ok(Contents::Absent);
                };
                let Some(e) = lookup(*src, root, path.as_bytes())? else {
                    return Ok(Contents::Absent);
                };
                let EntryKind::File { size, content } = &e.kind else {
                    return Ok(Contents::Absent);
                };
                if *size > MAX_TEXT {
                    return Ok(Contents::Binary(*size));
                }
                let mut bytes = Vec::with_capacity(*size as usize);
                for c in content.chunks(*src, *size) {
                    bytes.extend_from_slice(&src.get(ObjectType::Chunk, &c?.id)?);
                }
                Ok(classify(bytes))
            }
            Side::Disk(resolve) => {
                let Some(p) = resolve(path) else {
                    return Ok(Contents::Absent);
                };
                let Ok(meta) = std::fs::symlink_metadata(&p) else {
                    return Ok(Contents::Absent);
                };
                if !meta.is_file() {
                    return Ok(Contents::Absent);
                }
                if meta.len() > MAX_TEXT {
                    return Ok(Contents::Binary(meta.len()));
                }
                match std::fs::read(&p) {
                    Ok(b) => Ok(classify(b)),
                    Err(_) => Ok(Contents::Absent),
                }
            }
        }
    }
}

fn classify(bytes: Vec<u8>) -> Contents {
    let len = bytes.len() as u64;
    if bytes.contains(&0) {
        return Contents::Binary(len);
    }
    match String::from_utf8(bytes) {
        Ok(s) => Contents::Text(s),
        Err(_) => Contents::Binary(len),
    }
}

/// A line of `--stat`: insertions and deletions, or binary sizes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LineStat {
    /// Lines added.
    pub insertions: u64,
    /// Lines removed.
    pub deletions: u64,
    /// `(old, new)` sizes when either side is binary.
    pub binary: Option<(u64, u64)>,
}

fn text(c: &Contents) -> Option<&str> {
    match c {
        Contents::Absent => Some(""),
        Contents::Text(t) => Some(t),
        Contents::Binary(_) => None,
    }
}

fn size_of(c: &Contents) -> u64 {
    match c {
        Contents::Absent => 0,
        Contents::Text(t) => t.len() as u64,
        Contents::Binary(n) => *n,
    }
}

/// Counts the lines inserted and deleted from `old` to `new`.
pub fn line_stat(old: &Contents, new: &Contents) -> LineStat {
    match (text(old), text(new)) {
        (Some(a), Some(b)) => {
            let d = TextDiff::from_lines(a, b);
            let (mut ins, mut del) = (0, 0);
            for c in d.iter_all_changes() {
                match c.tag() {
                    ChangeTag::Insert => ins += 1,
                    ChangeTag::Delete => del += 1,
                    ChangeTag::Equal => {}
                }
            }
            LineStat {
                insertions: ins,
                deletions: del,
                binary: None,
            }
        }
        _ => LineStat {
            insertions: 0,
            deletions: 0,
            binary: Some((size_of(old), size_of(new))),
        },
    }
}

/// A unified patch of `path` from `old` to `new` (git's headers; `/dev/null`
/// for a side that is absent; "Binary files … differ" for binary content).
/// Empty when the contents are equal (a mode-only change).
pub fn unified(path: &str, old: &Contents, new: &Contents) -> String {
    if old == new {
        return String::new();
    }
    let a = if *old == Contents::Absent {
        "/dev/null".to_string()
    } else {
        format!("a/{path}")
    };
    let b = if *new == Contents::Absent {
        "/dev/null".to_string()
    } else {
        format!("b/{path}")
    };
    let mut out = format!("diff --sp-sync a/{path} b/{path}\n");
    match (text(old), text(new)) {
        (Some(x), Some(y)) => {
            let d = TextDiff::from_lines(x, y);
            let body = d
                .unified_diff()
                .context_radius(3)
                .header(&a, &b)
                .to_string();
            out.push_str(&body);
            if !body.ends_with('\n') {
                out.push('\n');
            }
        }
        _ => out.push_str(&format!("Binary files {a} and {b} differ\n")),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn counts_and_patches_like_git() {
        let old = Contents::Text("a\nb\nc\n".into());
        let new = Contents::Text("a\nB\nc\nd\n".into());
        assert_eq!(
            line_stat(&old, &new),
            LineStat {
                insertions: 2,
                deletions: 1,
                binary: None
            }
        );
        let p = unified("x.txt", &old, &new);
        assert!(
            p.starts_with(
                "diff --sp-sync a/x.txt b/x.txt\n--- a/x.txt\n+++ b/x.txt\n@@ -1,3 +1,4 @@\n"
            ),
            "{p}"
        );
        assert!(p.contains("\n-b\n+B\n c\n+d\n"), "{p}");
        let p = unified("n", &Contents::Absent, &Contents::Text("x\n".into()));
        assert!(p.contains("--- /dev/null\n+++ b/n\n"), "{p}");
        let p = unified("bin", &Contents::Binary(3), &Contents::Binary(4));
        assert!(p.ends_with("Binary files a/bin and b/bin differ\n"));
        assert_eq!(classify(vec![0, 1]), Contents::Binary(2));
    }

    proptest! {
        /// Applying the counted lines: old lines - deletions + insertions
        /// = new lines.
        #[test]
        fn stat_adds_up(a in proptest::collection::vec("[abc]{0,3}", 0..20),
                        b in proptest::collection::vec("[abc]{0,3}", 0..20)) {
            let x: String = a.iter().map(|l| format!("{l}\n")).collect();
            let y: String = b.iter().map(|l| format!("{l}\n")).collect();
            let s = line_stat(&Contents::Text(x), &Contents::Text(y));
            prop_assert_eq!(a.len() as u64 - s.deletions + s.insertions, b.len() as u64);
        }
    }
}
