//! Deduplication and incremental cost: what a snapshot adds to the store.

mod common;

use std::path::Path;

use common::{bytes, dir_bytes, new_store};
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
}
