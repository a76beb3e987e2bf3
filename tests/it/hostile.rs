//! Restore treats every name as hostile: nothing is ever written outside
//! the target, and trees with unsafe names are refused with a clear error.

use crate::common;

use std::path::Path;

use common::{fails, ok};
use systemprompt_sync::codec::Writer;
use systemprompt_sync::object::ObjectSink;
use systemprompt_sync::object::list::{ChunkRef, ListNode};
use systemprompt_sync::object::snapshot::Snapshot;
use systemprompt_sync::object::tree::{Content, Entry, EntryKind, Timestamp};
use systemprompt_sync::{LockMode, ObjectType, Store};

fn assert_empty(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        left.is_empty(),
        "something was written outside the target: {left:?}"
    );
}

#[test]
fn symlink_then_directory_of_the_same_name_writes_nothing_outside() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let w = tmp.path().join("w");
    std::fs::create_dir(&w).unwrap();
    ok(&w, &["init"]);
    // Snapshot 1: `link -> OUTSIDE`.
    std::os::unix::fs::symlink(&outside, w.join("link")).unwrap();
    std::fs::write(w.join("victim"), "v1").unwrap();
    let s1 = ok(&w, &["snapshot", "-m", "link"]).trim().to_string();
    // Snapshot 2: `link` is a directory holding a file; `victim` a symlink
    // out, then...
    std::fs::remove_file(w.join("link")).unwrap();
    std::fs::create_dir(w.join("link")).unwrap();
    std::fs::write(w.join("link/pwned"), "written through a symlink?").unwrap();
    let s2 = ok(&w, &["snapshot", "-m", "dir"]).trim().to_string();

    let target = tmp.path().join("target");
    ok(&w, &["restore", &s1, target.to_str().unwrap()]);
    assert_eq!(std::fs::read_link(target.join("link")).unwrap(), outside);
    ok(&w, &["restore", &s2, target.to_str().unwrap()]);
    assert_empty(&outside);
    assert!(
        std::fs::symlink_metadata(target.join("link"))
            .unwrap()
            .is_dir()
    );
    assert_eq!(
        std::fs::read_to_string(target.join("link/pwned")).unwrap(),
        "written through a symlink?"
    );

    // The same with the symlink planted in the target by someone else, and
    // with --delete.
    let t2 = tmp.path().join("target2");
    std::fs::create_dir(&t2).unwrap();
    std::os::unix::fs::symlink(&outside, t2.join("link")).unwrap();
    ok(&w, &["restore", &s2, t2.to_str().unwrap(), "--delete"]);
    assert_empty(&outside);
}

#[test]
fn files_replace_planted_symlinks_and_hard_links_instead_of_writing_through_them() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("victim"), "original").unwrap();
    std::fs::write(outside.join("hardlinked"), "original").unwrap();
    let w = tmp.path().join("w");
    std::fs::create_dir(&w).unwrap();
    std::fs::write(w.join("f"), "from the snapshot").unwrap();
    std::fs::write(w.join("h"), "from the snapshot").unwrap();
    ok(&w, &["init"]);
    ok(&w, &["snapshot"]);
    let target = tmp.path().join("target");
    std::fs::create_dir(&target).unwrap();
    std::os::unix::fs::symlink(outside.join("victim"), target.join("f")).unwrap();
    std::fs::hard_link(outside.join("hardlinked"), target.join("h")).unwrap();
    ok(&w, &["restore", "main", target.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(outside.join("victim")).unwrap(),
        "original"
    );
    assert_eq!(
        std::fs::read_to_string(outside.join("hardlinked")).unwrap(),
        "original"
    );
    assert!(
        std::fs::symlink_metadata(target.join("f"))
            .unwrap()
            .is_file()
    );
    assert_eq!(
        std::fs::read_to_string(target.join("f")).unwrap(),
        "from the snapshot"
    );
    assert_eq!(
        std::fs::read_to_string(target.join("h")).unwrap(),
        "from the snapshot"
    );
}

/// Writes a tree node by hand (bypassing every check of the writer) holding
/// the given names, each an empty file, and points `main` at a snapshot of it.
/// A leaf tree node of `entries` (name, entry bytes), written as given
/// (neither sorted nor checked).
fn leaf_node(entries: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut w = Writer::new();
    w.u8(1).u8(0).varint(entries.len() as u64);
    for (name, entry) in entries {
        w.bytes(name).bytes(entry);
    }
    w.buf
}

/// Stores `root` as a snapshot and points `main` at it.
fn commit(
    store: &Store,
    s: systemprompt_sync::store::WriteSession<'_>,
    root: &[u8],
    message: &str,
) {
    let root = s.put(ObjectType::Tree, root).unwrap();
    let snap = Snapshot {
        root: Some(root),
        message: message.into(),
        ..Default::default()
    };
    let id = s.put(ObjectType::Snapshot, &snap.encode()).unwrap();
    s.finish().unwrap();
    store.update_ref("main", None, Some(id)).unwrap();
}

fn plant_tree(store_dir: &Path, names: &[&[u8]]) {
    let store = Store::open(store_dir, LockMode::Shared).unwrap();
    let s = store.writer().unwrap();
    let entry = Entry {
        mode: 0o644,
        mtime: Timestamp::default(),
        kind: EntryKind::File {
            size: 0,
            content: Content::Inline(vec![]),
        },
    }
    .encode();
    let entries: Vec<(&[u8], &[u8])> = names.iter().map(|n| (*n, &entry[..])).collect();
    commit(&store, s, &leaf_node(&entries), "hostile");
}

#[test]
fn decoded_trees_with_unsafe_names_are_rejected() {
    let cases: Vec<(&str, Vec<&[u8]>, &str)> = vec![
        ("dotdot", vec![b"..", b"ok"], "unsafe entry name"),
        ("dot", vec![b"."], "unsafe entry name"),
        ("slash", vec![b"a/../../escape"], "unsafe entry name"),
        ("absolute", vec![b"/etc"], "unsafe entry name"),
        ("nul", vec![b"a\0b"], "unsafe entry name"),
        ("empty", vec![b""], "unsafe entry name"),
        ("duplicate", vec![b"same", b"same"], "duplicate"),
        ("unsorted", vec![b"b", b"a"], "out of order"),
    ];
    for (what, names, expect) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let w = tmp.path().join("w");
        std::fs::create_dir(&w).unwrap();
        ok(&w, &["init"]);
        plant_tree(&w.join(".sp-sync"), &names);
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let target = outside.join("target");
        let err = fails(&w, &["restore", "main", target.to_str().unwrap()], 1);
        assert!(err.contains(expect), "{what}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{what}: one line: {err}");
        assert!(err.starts_with("error: "), "{what}: {err}");
        // Nothing at all was written beside the target, and the target is empty.
        let beside: Vec<_> = std::fs::read_dir(&outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(beside, vec![std::ffi::OsString::from("target")], "{what}");
        assert_empty(&target);
        let err = fails(&w, &["ls", "main"], 1);
        assert!(err.contains(expect), "{what}: ls: {err}");
        let o = common::run_in(&w, &["fsck"]);
        assert_eq!(
            o.status.code(),
            Some(1),
            "{what}: fsck must report the tree"
        );
    }
}

#[test]
fn a_snapshot_bigger_than_the_free_space_stops_before_writing() {
    // A few bytes of tree can claim a terabyte file: restore checks the
    // claim against the target's free space before writing it.
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path().join("w");
    std::fs::create_dir(&w).unwrap();
    ok(&w, &["init"]);
    let store = Store::open(&w.join(".sp-sync"), LockMode::Shared).unwrap();
    let s = store.writer().unwrap();
    // One 1 MiB chunk, a list node naming it 512 times, a node above naming
    // that node 512 times, and one more level: 128 TiB from a few KB.
    let chunk = vec![7u8; 1 << 20];
    let c = s.put(ObjectType::Chunk, &chunk).unwrap();
    let leaf = ListNode {
        level: 0,
        entries: vec![
            ChunkRef {
                id: c,
                len: 1 << 20
            };
            512
        ],
    };
    let leaf_id = s.put(ObjectType::List, &leaf.encode()).unwrap();
    let top = ListNode {
        level: 1,
        entries: vec![
            ChunkRef {
                id: leaf_id,
                len: 512 << 20
            };
            512
        ],
    };
    let mid_id = s.put(ObjectType::List, &top.encode()).unwrap();
    let top = ListNode {
        level: 2,
        entries: vec![
            ChunkRef {
                id: mid_id,
                len: 1 << 38
            };
            512
        ],
    };
    let top_id = s.put(ObjectType::List, &top.encode()).unwrap();
    let huge = Entry {
        mode: 0o644,
        mtime: Timestamp::default(),
        kind: EntryKind::File {
            size: 1 << 47,
            content: Content::Indirect {
                level: 2,
                root: top_id,
            },
        },
    }
    .encode();
    commit(&store, s, &leaf_node(&[(b"huge", &huge)]), "a petabyte");
    drop(store);
    let target = tmp.path().join("t");
    let err = fails(&w, &["restore", "main", target.to_str().unwrap()], 1);
    assert!(err.contains("not enough free space"), "{err}");
    assert!(!target.join("huge").exists());
    assert_eq!(
        std::fs::read_dir(&target).unwrap().count(),
        0,
        "a temporary file was left"
    );
}

/// A relative mtime (store-format.md §3.4) whose sum with its directory's
/// time leaves 64-bit seconds: restore, `ls -r` and fsck refuse the tree
/// with one error line, and the restore writes no file.
#[test]
fn a_relative_time_past_the_range_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path().join("w");
    std::fs::create_dir(&w).unwrap();
    ok(&w, &["init"]);
    let store = Store::open(&w.join(".sp-sync"), LockMode::Shared).unwrap();
    let s = store.writer().unwrap();
    let far = Timestamp {
        secs: i64::MAX - 10,
        nanos: 0,
    };
    let file = |mtime: Timestamp| Entry {
        mode: 0o644,
        mtime,
        kind: EntryKind::File {
            size: 0,
            content: Content::Inline(vec![]),
        },
    };
    // In `sub`, dated `far`: a file 100 s later, relative (i64::MAX + 90).
    let late = file(Timestamp {
        secs: 100,
        nanos: 0,
    })
    .encode_in(Some(Timestamp::ZERO));
    assert_eq!(late[0], 0x11);
    let fine = file(far).encode_in(Some(far));
    let sub = leaf_node(&[(b"a-fine", &fine), (b"b-late", &late)]);
    let sub = s.put(ObjectType::Tree, &sub).unwrap();
    let dir = Entry {
        mode: 0o755,
        mtime: far,
        kind: EntryKind::Dir { tree: sub },
    }
    .encode();
    commit(&store, s, &leaf_node(&[(b"sub", &dir)]), "far");
    drop(store);

    let target = tmp.path().join("target");
    for args in [
        vec!["restore", "main", target.to_str().unwrap()],
        vec!["ls", "-r", "main"],
    ] {
        let err = fails(&w, &args, 1);
        assert!(
            err.contains("relative mtime out of range"),
            "{args:?}: {err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    }
    // fsck names the problem (its report is on stdout).
    let o = common::run_in(&w, &["fsck"]);
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("relative mtime out of range"), "{out}");
    assert!(
        common::files_under(&target).is_empty(),
        "no file was restored"
    );
}

/// A snapshot whose objects decode and hash right but which fsck rejects
/// (a file's chunk list says 999 bytes of a 4-byte chunk) moved refs on a
/// server, through `bundle import` and through `pull`, after which fsck
/// failed and gc was refused (audit round 18). Every way in now checks the
/// snapshot as fsck does before a ref moves: refused, no ref moved.
#[test]
fn a_snapshot_fsck_rejects_moves_no_ref_anywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path().join("w");
    std::fs::create_dir(&w).unwrap();
    ok(&w, &["init"]);
    {
        let store = Store::open(&w.join(".sp-sync"), LockMode::Shared).unwrap();
        let s = store.writer().unwrap();
        let chunk = s.put(ObjectType::Chunk, b"abcd").unwrap();
        let entry = Entry {
            mode: 0o644,
            mtime: Timestamp::default(),
            kind: EntryKind::File {
                size: 999,
                content: Content::Inline(vec![ChunkRef {
                    id: chunk,
                    len: 999,
                }]),
            },
        }
        .encode();
        commit(&store, s, &leaf_node(&[(b"f", &entry)]), "lies");
    }
    assert_eq!(common::run_in(&w, &["fsck"]).status.code(), Some(1));
    let refs = |dir: &Path| -> String {
        let o = common::run_in(
            tmp.path(),
            &["--store", dir.to_str().unwrap(), "ref", "list"],
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    // push to a path remote
    let remote = tmp.path().join("remote");
    ok(
        tmp.path(),
        &["init", "--store", remote.to_str().unwrap(), "-q"],
    );
    let err = fails(&w, &["push", remote.to_str().unwrap()], 1);
    assert!(err.contains("does not check"), "{err}");
    assert_eq!(refs(&remote), "");
    // bundle import
    let bundle = tmp.path().join("b.bundle");
    ok(&w, &["bundle", "create", bundle.to_str().unwrap()]);
    let other = tmp.path().join("other");
    ok(
        tmp.path(),
        &["init", "--store", other.to_str().unwrap(), "-q"],
    );
    let err = fails(
        tmp.path(),
        &[
            "--store",
            other.to_str().unwrap(),
            "bundle",
            "import",
            bundle.to_str().unwrap(),
        ],
        1,
    );
    assert!(err.contains("does not check"), "{err}");
    assert_eq!(refs(&other), "");
    // pull from a store that holds it
    let err = fails(
        tmp.path(),
        &[
            "--store",
            other.to_str().unwrap(),
            "pull",
            w.join(".sp-sync").to_str().unwrap(),
        ],
        1,
    );
    assert!(err.contains("does not check"), "{err}");
    assert_eq!(refs(&other), "");
    ok(
        tmp.path(),
        &["--store", other.to_str().unwrap(), "fsck", "-q"],
    );
}
