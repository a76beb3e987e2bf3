//! Deciding whether a deploy target is due over a 100,000-file snapshot
//! (100 directories of 1,000 files, built directly as prolly maps in a real
//! on-disk store): the watched hash reads directory maps only, never a
//! chunk, and skips directories no glob reaches. Budget: 100 ms.
//!
//! `cargo bench --bench deploy`

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use systemprompt_sync::deploy::{Target, target_status, watched_hash};
use systemprompt_sync::object::list::ChunkRef;
use systemprompt_sync::object::snapshot::Snapshot;
use systemprompt_sync::object::tree::{Content, Entry, EntryKind, Timestamp};
use systemprompt_sync::object::{ObjectSink, ObjectSource};
use systemprompt_sync::pmap::MapBuilder;
use systemprompt_sync::{LockMode, ObjectId, ObjectType, Store};

const DIRS: u32 = 100;
const FILES_PER_DIR: u32 = 1000;
const CHUNKS: usize = 256;

fn entry(kind: EntryKind, mode: u32, secs: i64) -> Vec<u8> {
    Entry {
        mode,
        mtime: Timestamp { secs, nanos: 0 },
        kind,
    }
    .encode()
}

/// Builds the snapshot; returns its id.
fn build(store: &Store) -> ObjectId {
    let session = store.writer().expect("writer");
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
    let mut top = MapBuilder::new(ObjectType::Tree, &session);
    for d in 0..DIRS {
        let mut b = MapBuilder::new(ObjectType::Tree, &session);
        for f in 0..FILES_PER_DIR {
            let c = chunks[(d as usize * 31 + f as usize * 7) % CHUNKS];
            let name = if f % 10 == 0 {
                format!("file-{f:06}.rs")
            } else {
                format!("file-{f:06}.md")
            };
            let kind = EntryKind::File {
                size: c.len,
                content: Content::Inline(vec![c]),
            };
            b.push(
                name.as_bytes(),
                &entry(kind, 0o644, 1_700_000_000 + i64::from(f)),
            )
            .expect("push file");
        }
        let tree = b.finish().expect("finish dir");
        top.push(
            format!("dir-{d:04}").as_bytes(),
            &entry(EntryKind::Dir { tree }, 0o755, 1_700_000_000),
        )
        .expect("push dir");
    }
    let root = top.finish().expect("finish top");
    let snap = Snapshot {
        root: Some(root),
        files: u64::from(DIRS * FILES_PER_DIR),
        message: "bench".into(),
        ..Snapshot::default()
    };
    let id = session
        .put(ObjectType::Snapshot, &snap.encode())
        .expect("put snapshot");
    session.finish().expect("finish session");
    store.update_ref("main", None, Some(id)).expect("main");
    id
}

/// Counts reads, and refuses any but directory maps and snapshots.
struct NoFiles<'a>(&'a Store, AtomicU64);

impl ObjectSource for NoFiles<'_> {
    fn get(&self, tag: ObjectType, id: &ObjectId) -> systemprompt_sync::Result<Vec<u8>> {
        assert!(
            matches!(tag, ObjectType::Tree | ObjectType::Snapshot),
            "read a {tag:?} object"
        );
        self.1.fetch_add(1, Ordering::Relaxed);
        self.0.get(tag, id)
    }
}

fn target(watch: &[&str]) -> Target {
    let toml = format!(
        "[deploy.t]\nwatch = [{}]\nsteps = [\"true\"]\n",
        watch
            .iter()
            .map(|w| format!("{w:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let c = systemprompt_sync::ProjectConfig::parse(&toml, std::path::Path::new("bench"))
        .expect("config");
    Target::from_config("t", &c.deploy["t"]).expect("target")
}

fn bench_due(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("store");
    Store::init(&dir).expect("init");
    let mut store = Store::open(&dir, LockMode::Shared).expect("open");
    store.set_cache_dir(tmp.path().join("cache"));
    let t = Instant::now();
    let id = build(&store);
    eprintln!(
        "deploy: built {} files in {DIRS} dirs in {:.1?}",
        DIRS * FILES_PER_DIR,
        t.elapsed()
    );
    let snap = systemprompt_sync::names::load_snapshot(&store, &id).expect("snapshot");

    // The worst case: a glob that may match anywhere (every directory is
    // read and every name matched); then everything; then a few directories.
    let cases: [(&str, &[&str]); 3] = [
        ("*.rs anywhere", &["*.rs", "Cargo.toml"]),
        ("everything", &["**"]),
        ("two dirs", &["dir-001*/**"]),
    ];
    for (label, watch) in cases {
        let t = target(watch);
        let src = NoFiles(&store, AtomicU64::new(0));
        let (_, stats) = watched_hash(&src, &snap, &t.watch, &[]).expect("hash");
        eprintln!(
            "deploy: {label}: {} watched entries, {} maps read, {} dirs skipped, {} objects read (no chunk)",
            stats.entries,
            stats.dirs_read,
            stats.dirs_skipped,
            src.1.load(Ordering::Relaxed)
        );
        // The whole decision (hash + last deploy record), warm.
        let runs = 10;
        let start = Instant::now();
        for _ in 0..runs {
            black_box(target_status(&store, &id, &snap, &t).expect("status"));
        }
        let mean = start.elapsed() / runs;
        eprintln!("deploy: {label}: due decided in {mean:.1?} (mean of {runs})");
        assert!(
            mean < Duration::from_millis(100),
            "{label}: {mean:?} over budget"
        );
        c.bench_function(&format!("due? 100k files, {label}"), |b| {
            b.iter(|| black_box(target_status(&store, &id, &snap, &t).expect("status")))
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_due
}
criterion_main!(benches);
