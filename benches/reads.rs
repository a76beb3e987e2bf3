//! Random reads of small objects (acceptance 5 of issue 13): 4,000 HTML-like
//! objects of 1-12 KiB, read by id in a shuffled order, from a store that
//! compresses them alone (today's records, flags 1) and from one that
//! compresses them with a trained dictionary (flags 3). A read with a
//! dictionary decodes one record; the decoder's dictionary is cached.
//! And from a store where each of them is the fourth version of a page
//! whose versions are stored as deltas (flags 2, as `gc --repack` writes
//! them): each read decodes the whole chain, four records. And from a
//! store where they were snapshotted as files, the first MiB of them before
//! the dictionary was trained, and then `gc --repack` compressed those with
//! it too (one record per read, as with flags 3).
//!
//! `cargo bench --bench reads`

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use systemprompt_sync::object::{ObjectSink, ObjectSource};
use systemprompt_sync::{LockMode, ObjectId, ObjectType, Store};

const OBJECTS: usize = 4000;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn page(rng: &mut Rng, i: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "<div class=\"item\">",
        "</div>",
        "<a href=\"../std/index.html\">",
        "</a>",
        "fn ",
        "impl ",
        "pub struct ",
        "Returns the ",
        "value",
        "iterator",
        "<span class=\"kw\">",
        "</span>",
        "\n",
    ];
    let len = 1024 + (rng.next() % 11_000) as usize;
    let mut v =
        format!("<!DOCTYPE html><html><head><title>page {i}</title></head><body>").into_bytes();
    while v.len() < len {
        v.extend_from_slice(WORDS[(rng.next() % WORDS.len() as u64) as usize].as_bytes());
        if rng.next().is_multiple_of(9) {
            v.extend_from_slice(format!("{}", rng.next() % 100_000).as_bytes());
        }
    }
    v
}

/// A page edited a little (a few bytes replaced at a few places).
fn edit(rng: &mut Rng, p: &[u8]) -> Vec<u8> {
    let mut v = p.to_vec();
    for _ in 0..3 {
        let at = (rng.next() % v.len() as u64) as usize;
        let end = (at + 12).min(v.len());
        v[at..end].fill(b'a' + (rng.next() % 26) as u8);
    }
    v
}

/// A store of 4000 pages, each the newest of four versions stored as a
/// chain of deltas (version 0 alone, version k a delta against k - 1);
/// returns the newest versions' ids, shuffled.
fn delta_store() -> (tempfile::TempDir, Store, Vec<ObjectId>, u64) {
    use systemprompt_sync::pack::{FLAG_DELTA, StoredObject, make_delta};
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("store");
    Store::init(&dir).expect("init");
    let mut s = Store::open(&dir, LockMode::Shared).expect("open");
    s.set_write_dictionaries(false);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let w = s.writer().expect("writer");
    let mut ids = Vec::new();
    let mut bytes = 0u64;
    for i in 0..OBJECTS {
        let mut p = page(&mut rng, i);
        let mut pid = w.put(ObjectType::Chunk, &p).expect("put");
        for _ in 1..systemprompt_sync::pack::MAX_CHAIN_RECORDS {
            let n = edit(&mut rng, &p);
            let nid = ObjectId::compute(ObjectType::Chunk, &n);
            let payload = make_delta(&n, &pid, &p, 12).expect("delta");
            w.put_stored(StoredObject {
                tag: ObjectType::Chunk,
                id: nid,
                flags: FLAG_DELTA,
                ulen: n.len() as u32,
                payload,
            })
            .expect("put");
            p = n;
            pid = nid;
        }
        bytes += p.len() as u64;
        ids.push(pid);
    }
    w.finish().expect("finish");
    drop(s);
    let s = Store::open(&dir, LockMode::Shared).expect("open");
    for i in (1..ids.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        ids.swap(i, j);
    }
    (tmp, s, ids, bytes)
}

/// The pages snapshotted as files (a dictionary trained after 1 MiB), then
/// `gc --repack`; returns the pages' ids, shuffled.
fn repacked_store() -> (tempfile::TempDir, Store, Vec<ObjectId>, u64) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let src = tmp.path().join("pages");
    std::fs::create_dir_all(&src).expect("dir");
    let dir = tmp.path().join("store");
    Store::init(&dir).expect("init");
    let mut s = Store::open(&dir, LockMode::Exclusive).expect("open");
    s.set_dict_training(1 << 20);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut ids = Vec::new();
    let mut bytes = 0u64;
    for i in 0..OBJECTS {
        let p = page(&mut rng, i);
        bytes += p.len() as u64;
        ids.push(ObjectId::compute(ObjectType::Chunk, &p));
        std::fs::write(src.join(format!("page{i:04}.html")), p).expect("write");
    }
    let opts = systemprompt_sync::SnapshotOptions {
        sources: vec![src],
        ..Default::default()
    };
    systemprompt_sync::snapshot(&s, &opts, &systemprompt_sync::NoProgress).expect("snapshot");
    let gc = systemprompt_sync::GcOptions {
        dry_run: false,
        repack: true,
        keep_recent: None,
    };
    systemprompt_sync::gc_with(&s, &gc, &systemprompt_sync::NoProgress).expect("repack");
    drop(s);
    let s = Store::open(&dir, LockMode::Shared).expect("open");
    let with_dict = ids
        .iter()
        .filter(|id| s.location(id).is_some_and(|l| l.flags == 3))
        .count();
    assert!(
        with_dict * 100 > OBJECTS * 95,
        "{with_dict} pages with the dictionary"
    );
    for i in (1..ids.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        ids.swap(i, j);
    }
    (tmp, s, ids, bytes)
}

/// A store of the pages; `dictionary`: trained after 1 MiB of samples.
fn store(dictionary: bool) -> (tempfile::TempDir, Store, Vec<ObjectId>, u64) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("store");
    Store::init(&dir).expect("init");
    let mut s = Store::open(&dir, LockMode::Shared).expect("open");
    s.set_dict_training(1 << 20);
    s.set_write_dictionaries(dictionary);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let w = s.writer().expect("writer");
    let mut ids = Vec::new();
    let mut bytes = 0u64;
    for i in 0..OBJECTS {
        let p = page(&mut rng, i);
        bytes += p.len() as u64;
        ids.push(w.put(ObjectType::Chunk, &p).expect("put"));
    }
    w.finish().expect("finish");
    drop(s);
    // Reopened: reads come from the packs, as in a new process.
    let s = Store::open(&dir, LockMode::Shared).expect("open");
    assert_eq!(!s.dictionaries().is_empty(), dictionary);
    // Shuffled.
    for i in (1..ids.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        ids.swap(i, j);
    }
    (tmp, s, ids, bytes)
}

fn reads(c: &mut Criterion) {
    let mut g = c.benchmark_group("random reads");
    for (name, kind) in [
        ("alone (flags 1)", 0),
        ("with a dictionary (flags 3)", 1),
        ("through delta chains of 4 records (flags 2)", 2),
        ("after gc --repack (flags 3)", 3),
    ] {
        let (_tmp, s, ids, bytes) = match kind {
            2 => delta_store(),
            3 => repacked_store(),
            _ => store(kind == 1),
        };
        g.throughput(Throughput::Bytes(bytes));
        g.bench_function(format!("4000 small objects, {name}"), |b| {
            b.iter(|| {
                for id in &ids {
                    black_box(s.get(ObjectType::Chunk, id).expect("read"));
                }
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = reads
}
criterion_main!(benches);
