//! Random reads of small objects (acceptance 5 of issue 13): 4,000 HTML-like
//! objects of 1-12 KiB, read by id in a shuffled order, from a store that
//! compresses them alone (today's records, flags 1) and from one that
//! compresses them with a trained dictionary (flags 3). A read with a
//! dictionary decodes one record; the decoder's dictionary is cached.
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
    for (name, dictionary) in [
        ("alone (flags 1)", false),
        ("with a dictionary (flags 3)", true),
    ] {
        let (_tmp, s, ids, bytes) = store(dictionary);
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
