//! A diff costs what changed, not what exists: two snapshots of a
//! 1,000,000-file tree that differ in one file diff by reading under 200
//! objects. (Its time is measured by `benches/diff.rs`.)

use crate::common;

use systemprompt_sync::object::list::ChunkRef;
use systemprompt_sync::object::tree::{Content, Entry, EntryKind, Timestamp};
use systemprompt_sync::object::{CountingSource, ObjectSink};
use systemprompt_sync::pmap::MapBuilder;
use systemprompt_sync::{ObjectId, ObjectType};

fn file(chunk: ObjectId, len: u64, secs: i64) -> Vec<u8> {
    Entry {
        mode: 0o644,
        mtime: Timestamp { secs, nanos: 0 },
        kind: EntryKind::File {
            size: len,
            content: Content::Inline(vec![ChunkRef { id: chunk, len }]),
        },
    }
    .encode()
}

#[test]
fn one_changed_file_in_a_million_reads_under_200_objects() {
    let tmp = tempfile::tempdir().unwrap();
    let store = common::new_store(tmp.path());
    let session = store.writer().unwrap();
    let chunks: Vec<(ObjectId, u64)> = (0..64u32)
        .map(|i| {
            let data = format!("content {i}\n").into_bytes();
            (
                session.put(ObjectType::Chunk, &data).unwrap(),
                data.len() as u64,
            )
        })
        .collect();
    // 1000 directories of 1000 files; the second tree differs in the
    // content of one file.
    let build_dir = |d: usize, changed: bool| -> ObjectId {
        let mut b = MapBuilder::new(ObjectType::Tree, &session);
        for f in 0..1000 {
            let pick = if changed && f == 423 {
                d + f + 1
            } else {
                d + f
            };
            let (c, len) = chunks[pick % chunks.len()];
            b.push(
                format!("file-{f:04}.md").as_bytes(),
                &file(c, len, d as i64),
            )
            .unwrap();
        }
        b.finish().unwrap()
    };
    let build_root = |dirs: &[ObjectId]| -> ObjectId {
        let mut b = MapBuilder::new(ObjectType::Tree, &session);
        for (d, tree) in dirs.iter().enumerate() {
            let e = Entry {
                mode: 0o755,
                mtime: Timestamp::default(),
                kind: EntryKind::Dir { tree: *tree },
            };
            b.push(format!("dir-{d:04}").as_bytes(), &e.encode())
                .unwrap();
        }
        b.finish().unwrap()
    };
    let mut dirs: Vec<ObjectId> = (0..1000).map(|d| build_dir(d, false)).collect();
    let a = build_root(&dirs);
    dirs[617] = build_dir(617, true);
    let b_root = build_root(&dirs);
    session.finish().unwrap();

    let counting = CountingSource::new(&store);
    let changes =
        systemprompt_sync::diff::diff_trees_vec(&counting, Some(&a), Some(&b_root)).unwrap();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].path, "dir-0617/file-0423.md");
    let reads = counting.count();
    eprintln!("diff of a 1,000,000-file tree read {reads} objects");
    assert!(reads < 200, "the diff read {reads} objects");
}
