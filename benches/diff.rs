//! Diff of two 1,000,000-file trees that differ in one file, in a real
//! on-disk store (the trees are built directly as prolly maps, no files on
//! disk): equal subtrees are skipped unread, so the diff reads a handful of
//! nodes and takes about a millisecond, whatever the tree's size.
//!
//! `cargo bench --bench diff`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use systemprompt_sync::diff::{ChangeKind, diff_trees_vec};
use systemprompt_sync::object::list::ChunkRef;
use systemprompt_sync::object::tree::{Content, Entry, EntryKind, Timestamp};
use systemprompt_sync::object::{CountingSource, ObjectSink};
use systemprompt_sync::pmap::MapBuilder;
use systemprompt_sync::{LockMode, ObjectId, ObjectType, Store};

const DIRS: u32 = 1000;
const FILES_PER_DIR: u32 = 1000;
const CHUNKS: usize = 256;
/// The one file that differs between the two roots.
const CHANGED: (u32, u32) = (517, 283);

fn file_entry(chunk: &ChunkRef, secs: i64) -> Vec<u8> {
    Entry {
        mode: 0o644,
        mtime: Timestamp {
            secs,
            nanos: 500_000_000,
        },
        kind: EntryKind::File {
            size: chunk.len,
            content: Content::Inline(vec![*chunk]),
        },
    }
    .encode()
}

fn dir_entry(tree: ObjectId) -> Vec<u8> {
    Entry {
        mode: 0o755,
        mtime: Timestamp {
            secs: 1_700_000_000,
            nanos: 0,
        },
        kind: EntryKind::Dir { tree },
    }
    .encode()
}

fn file_name(f: u32) -> Vec<u8> {
    format!("file-{f:06}.md").into_bytes()
}

fn dir_name(d: u32) -> Vec<u8> {
    format!("dir-{d:04}").into_bytes()
}

/// Builds one directory's map; `changed` swaps one file's chunk.
fn build_dir(
    sink: &dyn ObjectSink,
    chunks: &[ChunkRef],
    d: u32,
    changed: Option<(u32, &ChunkRef)>,
) -> ObjectId {
    let mut b = MapBuilder::new(ObjectType::Tree, sink);
    for f in 0..FILES_PER_DIR {
        let chunk = match changed {
            Some((cf, c)) if cf == f => c,
            _ => &chunks[(d as usize * 31 + f as usize * 7) % chunks.len()],
        };
        let secs = 1_700_000_000 + i64::from(d) * 1000 + i64::from(f);
        b.push(&file_name(f), &file_entry(chunk, secs))
            .expect("push file");
    }
    b.finish().expect("finish dir")
}

fn build_top(sink: &dyn ObjectSink, dirs: &[ObjectId]) -> ObjectId {
    let mut b = MapBuilder::new(ObjectType::Tree, sink);
    for (d, tree) in dirs.iter().enumerate() {
        b.push(&dir_name(d as u32), &dir_entry(*tree))
            .expect("push dir");
    }
    b.finish().expect("finish top")
}

/// Builds both roots into `store`; returns (a, b).
fn build_trees(store: &Store) -> (ObjectId, ObjectId) {
    let session = store.writer().expect("writer");
    // Small chunks of different bytes and lengths, stored first so every
    // file entry references an object the store holds.
    let chunks: Vec<ChunkRef> = (0..CHUNKS)
        .map(|i| {
            let bytes = format!("chunk {i}: {}\n", "x".repeat(i % 61)).into_bytes();
            let id = session.put(ObjectType::Chunk, &bytes).expect("put chunk");
            ChunkRef {
                id,
                len: bytes.len() as u64,
            }
        })
        .collect();
    let new_bytes = b"the one changed file\n".to_vec();
    let new_chunk = ChunkRef {
        id: session
            .put(ObjectType::Chunk, &new_bytes)
            .expect("put chunk"),
        len: new_bytes.len() as u64,
    };

    let mut dirs: Vec<ObjectId> = (0..DIRS)
        .map(|d| build_dir(&session, &chunks, d, None))
        .collect();
    let root_a = build_top(&session, &dirs);
    let (cd, cf) = CHANGED;
    dirs[cd as usize] = build_dir(&session, &chunks, cd, Some((cf, &new_chunk)));
    let root_b = build_top(&session, &dirs);
    let objects = session
        .stats
        .objects
        .load(std::sync::atomic::Ordering::Relaxed);
    let stored = session
        .stats
        .stored_bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    session.finish().expect("finish session");
    eprintln!(
        "diff: built {} files in {DIRS} dirs: {objects} objects, {:.1} MiB stored",
        DIRS * FILES_PER_DIR,
        stored as f64 / (1 << 20) as f64
    );
    (root_a, root_b)
}

fn bench_diff(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("store");
    Store::init(&dir).expect("init");
    let mut store = Store::open(&dir, LockMode::Shared).expect("open");
    store.set_cache_dir(tmp.path().join("cache"));

    let t = Instant::now();
    let (a, b) = build_trees(&store);
    eprintln!("diff: store built in {:.1?}", t.elapsed());
    assert_ne!(a, b);

    // Outside the timing: the diff finds exactly the one change and reads
    // only the nodes on the paths to it.
    let counting = CountingSource::new(&store);
    let t = Instant::now();
    let changes = diff_trees_vec(&counting, Some(&a), Some(&b)).expect("diff");
    let first = t.elapsed();
    let reads = counting.count();
    let (cd, cf) = CHANGED;
    let want = format!(
        "{}/{}",
        String::from_utf8_lossy(&dir_name(cd)),
        String::from_utf8_lossy(&file_name(cf))
    );
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].path, want);
    assert_eq!(changes[0].change, ChangeKind::Modified);
    assert!(reads < 200, "the diff read {reads} objects");
    eprintln!(
        "diff: 1 change ({want}), {reads} objects read of {} in the store; first (cold) diff {first:.1?}",
        store.object_count()
    );

    // The budget: well under 50 ms per diff (it is about a millisecond).
    let runs = 20;
    let t = Instant::now();
    for _ in 0..runs {
        black_box(diff_trees_vec(&store, Some(&a), Some(&b)).expect("diff"));
    }
    let mean = t.elapsed() / runs;
    eprintln!("diff: warm mean over {runs} runs {mean:.1?}");
    assert!(mean < Duration::from_millis(50), "diff took {mean:?}");

    c.bench_function("diff 1M files, one changed", |bench| {
        bench.iter(|| {
            let v = diff_trees_vec(&store, Some(black_box(&a)), Some(black_box(&b))).expect("diff");
            debug_assert_eq!(v.len(), 1);
            v
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_diff
}
criterion_main!(benches);
