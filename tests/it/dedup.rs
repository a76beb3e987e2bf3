//! Deduplication and incremental cost: what a snapshot adds to the store.

use crate::common;

use std::path::Path;

use common::{bytes, dir_bytes, new_store, set_mtime};
use systemprompt_sync::id::IdSet;
use systemprompt_sync::{NoProgress, ObjectType, SnapshotOptions, Store};

fn snap(store: &Store, src: &Path) -> systemprompt_sync::SnapshotReport {
    let opts = SnapshotOptions {
        sources: vec![src.to_path_buf()],
        ..Default::default()
    };
    systemprompt_sync::snapshot(store, &opts, &NoProgress).unwrap()
}

const MIB: u64 = 1 << 20;

/// Lets a second pass, as if the files had been written a while ago: the
/// stat cache does not trust a file changed within a second of being read.
fn age() {
    std::thread::sleep(std::time::Duration::from_millis(1100));
}

#[test]
fn same_data_twice_one_byte_change_and_unchanged_resnapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let data = bytes(20 << 20, 42);
    std::fs::write(src.join("a.bin"), &data).unwrap();
    age();
    let store = new_store(tmp.path());
    let store_dir = tmp.path().join("store");
    snap(&store, &src);
    let s0 = dir_bytes(&store_dir);
    assert!(s0 > 20 * MIB, "the data is stored ({s0} bytes)");

    // The same 20 MiB under a second name.
    std::fs::write(src.join("b.bin"), &data).unwrap();
    age();
    snap(&store, &src);
    let s1 = dir_bytes(&store_dir);
    assert!(
        s1 - s0 < MIB,
        "a duplicate 20 MiB file grew the store by {} bytes",
        s1 - s0
    );

    // One byte changed in the middle of a 20 MiB file.
    let mut changed = data.clone();
    changed[10 << 20] ^= 0xff;
    std::fs::write(src.join("a.bin"), &changed).unwrap();
    let r = snap(&store, &src);
    assert_eq!(r.read_bytes, 20 << 20, "only the changed file was read");
    age();
    let s2 = dir_bytes(&store_dir);
    assert!(
        s2 - s1 < 5 * MIB / 2,
        "a one-byte change grew the store by {} bytes",
        s2 - s1
    );

    // Nothing changed. (a.bin was written less than a second before the
    // previous snapshot read it, so this one reads it once more.)
    snap(&store, &src);
    let s3 = dir_bytes(&store_dir);
    assert!(
        s3 - s2 < 64 * 1024,
        "an unchanged re-snapshot grew the store by {} bytes",
        s3 - s2
    );
    let r = snap(&store, &src);
    assert_eq!(r.read_bytes, 0, "the stat cache spared every read");
    assert!(dir_bytes(&store_dir) - s3 < 64 * 1024);
}

fn tree_objects(store: &Store) -> Vec<(systemprompt_sync::ObjectId, u32)> {
    store
        .all_objects()
        .into_iter()
        .filter(|(_, l)| l.tag == ObjectType::Tree)
        .map(|(id, l)| (id, l.ulen))
        .collect()
}

#[test]
fn one_change_in_a_directory_of_100_000_entries_writes_little_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let big = src.join("big");
    std::fs::create_dir_all(&big).unwrap();
    for i in 0..100_000 {
        std::fs::write(big.join(format!("entry-{i:06}.md")), format!("{i}\n")).unwrap();
    }
    age();
    let store = new_store(tmp.path());
    snap(&store, &src);
    let before: IdSet = tree_objects(&store).into_iter().map(|(id, _)| id).collect();
    assert!(
        before.len() > 100,
        "a large directory is split into many nodes ({})",
        before.len()
    );

    std::fs::write(big.join("entry-050000.md"), "changed\n").unwrap();
    let r = snap(&store, &src);
    let new_tree_bytes: u64 = tree_objects(&store)
        .into_iter()
        .filter(|(id, _)| !before.contains(id))
        .map(|(_, n)| u64::from(n))
        .sum();
    assert!(new_tree_bytes > 0);
    assert!(
        new_tree_bytes < 64 * 1024,
        "one change wrote {new_tree_bytes} bytes of tree objects"
    );
    assert_eq!(
        r.read_bytes,
        "changed\n".len() as u64,
        "only the changed file was read"
    );

    // A new file changes the directory's time: the entries of a directory
    // this large are not relative to it, so still only a few nodes change.
    let before: IdSet = tree_objects(&store).into_iter().map(|(id, _)| id).collect();
    std::fs::write(big.join("entry-050000-b.md"), "new\n").unwrap();
    snap(&store, &src);
    let new_tree_bytes: u64 = tree_objects(&store)
        .into_iter()
        .filter(|(id, _)| !before.contains(id))
        .map(|(_, n)| u64::from(n))
        .sum();
    assert!(
        new_tree_bytes < 64 * 1024,
        "one new file wrote {new_tree_bytes} bytes of tree objects"
    );
}

/// Every file and directory under `dir` (and `dir`) stamped with `secs`.
fn stamp_all(dir: &Path, secs: i64) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            stamp_all(&p, secs);
        } else {
            set_mtime(&p, secs, 0);
        }
    }
    set_mtime(dir, secs, 0);
}

/// An unpacked release (every file and directory stamped with the release's
/// time, as `tar x` of `git archive` leaves them) snapshotted again with a new
/// time and one changed file: only the directories on the changed file's path
/// are new tree objects, as in git, and a restore gives every new time back.
#[test]
fn a_release_stamped_with_a_new_time_rewrites_only_changed_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("release");
    for d in ["docs/guide", "src/engine", "src/cli", "tests"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
        // Eight entries: each directory is one node (under 512 bytes).
        for i in 0..8 {
            std::fs::write(src.join(d).join(format!("f{i}.txt")), format!("{d} {i}\n")).unwrap();
        }
    }
    std::os::unix::fs::symlink("engine/f1.txt", src.join("src/link")).unwrap();
    // A directory of more than 128 entries (several nodes): its entries are
    // relative too, since all of them have its time.
    std::fs::create_dir_all(src.join("assets")).unwrap();
    for i in 0..1000 {
        std::fs::write(
            src.join("assets").join(format!("a{i:04}.css")),
            format!("{i}\n"),
        )
        .unwrap();
    }
    stamp_all(&src, 1_700_000_000);
    let store = new_store(tmp.path());
    let first = snap(&store, &src);
    let before: IdSet = tree_objects(&store).into_iter().map(|(id, _)| id).collect();

    std::fs::write(src.join("src/engine/f3.txt"), "changed\n").unwrap();
    stamp_all(&src, 1_700_086_400);
    let second = snap(&store, &src);
    let new: Vec<_> = tree_objects(&store)
        .into_iter()
        .filter(|(id, _)| !before.contains(id))
        .collect();
    // The root (its entries' times are absolute), src/ and src/engine/.
    assert_eq!(new.len(), 3, "new tree objects: {new:?}");
    assert!(
        before.len() >= 7 + 3,
        "assets/ is several nodes: {}",
        before.len()
    );
    let dir_of = |r: &systemprompt_sync::SnapshotReport, path: &str| {
        let root = r.root.unwrap();
        match systemprompt_sync::object::tree::lookup(&store, &root, path.as_bytes())
            .unwrap()
            .unwrap()
            .kind
        {
            systemprompt_sync::object::tree::EntryKind::Dir { tree } => tree,
            k => panic!("{path}: {k:?}"),
        }
    };
    for unchanged in ["docs", "docs/guide", "src/cli", "tests", "assets"] {
        assert_eq!(
            dir_of(&first, unchanged),
            dir_of(&second, unchanged),
            "{unchanged}"
        );
    }
    assert_ne!(dir_of(&first, "src/engine"), dir_of(&second, "src/engine"));

    // Both snapshots restore with their own times, to the nanosecond.
    for (r, secs) in [(&first, 1_700_000_000i64), (&second, 1_700_086_400)] {
        let out = tmp.path().join(format!("out-{secs}"));
        let opts = systemprompt_sync::RestoreOptions::default();
        systemprompt_sync::restore_snapshot(&store, &r.id.to_hex(), &out, &opts, &NoProgress)
            .unwrap();
        let seen = common::describe(&out);
        assert_eq!(seen.len(), 7 + 4 * 8 + 1 + 1000, "{seen:?}");
        for (path, d) in &seen {
            assert!(
                d.contains(&format!(" {secs}.000000000")),
                "{}: {d}",
                String::from_utf8_lossy(path)
            );
        }
    }
}
