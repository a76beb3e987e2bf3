//! Snapshot then restore gives back the same tree, byte for byte: types,
//! permission bits, symlink targets and modification times to the
//! nanosecond, over property-generated trees.

use crate::common;

use std::collections::BTreeMap;

use common::{Node, assert_same_tree, build};
use proptest::prelude::*;
use systemprompt_sync::{NoProgress, RestoreOptions, SnapshotOptions};

fn name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[a-z][a-z0-9_.-]{0,12}".prop_map(String::into_bytes),
        Just("ünïcødé ñame".as_bytes().to_vec()),
        Just("日本語.md".as_bytes().to_vec()),
        Just("emoji 🦀".as_bytes().to_vec()),
        Just(b"with space".to_vec()),
        Just(b"new\nline".to_vec()),
        Just(b"tab\tand\\backslash".to_vec()),
        Just(b"not utf8 \xff\xfe".to_vec()),
        Just(b"\x80\x81".to_vec()),
        Just(b"...".to_vec()),
        Just(b".hidden".to_vec()),
        Just(b"-leading-dash".to_vec()),
        Just(b"quote\"d'".to_vec()),
        "[a-z]{1,8}".prop_map(|s| format!("{s} {s}\n").into_bytes()),
    ]
}

fn mtime() -> impl Strategy<Value = (i64, u32)> {
    (0i64..4_000_000_000, 0u32..1_000_000_000)
}

fn file() -> impl Strategy<Value = Node> {
    let len = prop_oneof![
        6 => 0usize..3000,
        2 => 3000usize..300_000,
        1 => 300_000usize..3_000_000,
    ];
    (len, any::<u64>(), 0o400u32..0o1000, mtime()).prop_map(|(len, seed, mode, mtime)| Node::File {
        len,
        seed,
        mode: mode | 0o400,
        mtime,
    })
}

fn symlink() -> impl Strategy<Value = Node> {
    let target = prop_oneof![
        Just(b"../nowhere/dangling".to_vec()),
        Just(b"/absolute/outside".to_vec()),
        Just(b"target with space".to_vec()),
        "[a-z]{1,10}".prop_map(String::into_bytes),
        Just(b"\xff-non-utf8".to_vec()),
    ];
    (target, mtime()).prop_map(|(target, mtime)| Node::Symlink { target, mtime })
}

fn tree() -> impl Strategy<Value = BTreeMap<Vec<u8>, Node>> {
    let leaf = prop_oneof![4 => file(), 1 => symlink()];
    let node = leaf.prop_recursive(4, 48, 8, |inner| {
        (
            proptest::collection::btree_map(name(), inner, 0..8),
            0o700u32..0o1000,
            mtime(),
        )
            .prop_map(|(children, mode, mtime)| Node::Dir {
                mode: mode | 0o700,
                mtime,
                children,
            })
    });
    proptest::collection::btree_map(name(), node, 0..10)
}

fn round_trip(children: &BTreeMap<Vec<u8>, Node>) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    build(&src, children);
    let store = common::new_store(tmp.path());
    let opts = SnapshotOptions {
        sources: vec![src.clone()],
        threads: Some(2),
        ..Default::default()
    };
    let r = systemprompt_sync::snapshot(&store, &opts, &NoProgress).unwrap();
    let out = tmp.path().join("out");
    systemprompt_sync::restore_snapshot(
        &store,
        &r.id.to_hex(),
        &out,
        &RestoreOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert_same_tree(&src, &out);
    // A second restore over the first (nothing fresh) gives the same tree too.
    systemprompt_sync::restore_snapshot(
        &store,
        "main",
        &out,
        &RestoreOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert_same_tree(&src, &out);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn property_trees_round_trip(children in tree()) {
        round_trip(&children);
    }
}

#[test]
fn empty_things_deep_nesting_and_a_100_mib_file() {
    let mut children = BTreeMap::new();
    children.insert(
        b"empty-file".to_vec(),
        Node::File {
            len: 0,
            seed: 1,
            mode: 0o644,
            mtime: (1, 1),
        },
    );
    children.insert(
        b"empty-dir".to_vec(),
        Node::Dir {
            mode: 0o755,
            mtime: (2, 999_999_999),
            children: BTreeMap::new(),
        },
    );
    children.insert(
        b"dangling".to_vec(),
        Node::Symlink {
            target: b"does/not/exist".to_vec(),
            mtime: (3, 3),
        },
    );
    children.insert(
        b"big.bin".to_vec(),
        Node::File {
            len: 100 << 20,
            seed: 7,
            mode: 0o600,
            mtime: (1_700_000_000, 123_456_789),
        },
    );
    let mut deep = Node::File {
        len: 10,
        seed: 9,
        mode: 0o640,
        mtime: (5, 5),
    };
    for i in 0..30 {
        let mut c = BTreeMap::new();
        c.insert(format!("level-{i}").into_bytes(), deep);
        deep = Node::Dir {
            mode: 0o750,
            mtime: (10 + i, 7),
            children: c,
        };
    }
    children.insert(b"deep".to_vec(), deep);
    round_trip(&children);
}

#[test]
fn restore_of_a_subpath_and_delete() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("a/b")).unwrap();
    std::fs::write(src.join("a/b/f.txt"), "inner").unwrap();
    std::fs::write(src.join("top.txt"), "top").unwrap();
    let store = common::new_store(tmp.path());
    let opts = SnapshotOptions {
        sources: vec![src.clone()],
        ..Default::default()
    };
    systemprompt_sync::snapshot(&store, &opts, &NoProgress).unwrap();

    let out = tmp.path().join("out");
    std::fs::create_dir_all(out.join("extra-dir")).unwrap();
    std::fs::write(out.join("extra.txt"), "keep me unless --delete").unwrap();
    systemprompt_sync::restore_snapshot(
        &store,
        "main:a",
        &out,
        &RestoreOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(out.join("b/f.txt")).unwrap(),
        "inner"
    );
    assert!(out.join("extra.txt").exists(), "restore keeps extra files");
    let r = systemprompt_sync::restore_snapshot(
        &store,
        "main:a",
        &out,
        &RestoreOptions {
            delete: true,
            ..Default::default()
        },
        &NoProgress,
    )
    .unwrap();
    assert_eq!(r.deleted, 2);
    assert!(!out.join("extra.txt").exists() && !out.join("extra-dir").exists());
    assert_same_tree(&src.join("a"), &out);

    // A single file goes to TARGET/name.
    let one = tmp.path().join("one");
    systemprompt_sync::restore_snapshot(
        &store,
        "main:a/b/f.txt",
        &one,
        &RestoreOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(std::fs::read_to_string(one.join("f.txt")).unwrap(), "inner");
}
