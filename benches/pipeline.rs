//! The chunk → hash → compress hot path of a snapshot, on ~32 MiB of
//! semi-compressible data (text with random bytes mixed in, generated
//! deterministically): each stage alone (one thread), then a whole
//! `snapshot` of a directory of such files into a fresh store.
//!
//! `cargo bench --bench pipeline`

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{BatchSize, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use systemprompt_sync::chunker::Chunker;
use systemprompt_sync::store::ChunkerConfig;
use systemprompt_sync::{LockMode, NoProgress, ObjectId, ObjectType, SnapshotOptions, Store};

const TOTAL: usize = 32 << 20;
const FILES: usize = 4;

/// A xorshift64 generator: the data is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Lines of words from a small vocabulary, with runs of random bytes in
/// about one line in eight: zstd level 3 shrinks it to roughly a third.
fn semi_compressible(n: usize, seed: u64) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "agent", "snapshot", "tool", "prompt", "context", "store", "chunk", "the", "of", "and",
        "schema", "row", "table", "model", "service", "config", "message", "user", "system",
        "response", "token", "id", "name", "value", "=", ":", "{", "}", "->", "fn", "let", "0",
        "42", "true", "false", "null",
    ];
    let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut out = Vec::with_capacity(n + 256);
    while out.len() < n {
        let x = r.next();
        if x.is_multiple_of(8) {
            let len = 16 + (x >> 8) as usize % 200;
            for _ in 0..len.div_ceil(8) {
                out.extend_from_slice(&r.next().to_le_bytes());
            }
        } else {
            let words = 4 + (x >> 8) as usize % 12;
            for _ in 0..words {
                out.extend_from_slice(WORDS[r.next() as usize % WORDS.len()].as_bytes());
                out.push(b' ');
            }
        }
        out.push(b'\n');
    }
    out.truncate(n);
    out
}

fn chunks<'a>(data: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut pos = 0;
    cuts.iter()
        .map(|&n| {
            let s = &data[pos..pos + n];
            pos += n;
            s
        })
        .collect()
}

fn stages(c: &mut Criterion) {
    let data = semi_compressible(TOTAL, 0x5eed);
    let chunker = Chunker::new(&ChunkerConfig::default());
    let cuts = chunker.cut_all(&data);
    let pieces = chunks(&data, &cuts);
    let compressed: usize = pieces
        .iter()
        .map(|p| systemprompt_sync::pack::compress(p, 3).1.len())
        .sum();
    eprintln!(
        "pipeline: {} MiB in {} chunks (mean {} KiB), zstd-3 to {:.1}% of the input",
        TOTAL >> 20,
        cuts.len(),
        TOTAL / cuts.len() / 1024,
        100.0 * compressed as f64 / TOTAL as f64
    );

    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Bytes(TOTAL as u64));
    g.bench_function("chunk (FastCDC cut_all)", |b| {
        b.iter(|| black_box(chunker.cut_all(black_box(&data))))
    });
    g.bench_function("hash (BLAKE3 id per chunk)", |b| {
        b.iter(|| {
            for p in &pieces {
                black_box(ObjectId::compute(ObjectType::Chunk, p));
            }
        })
    });
    g.bench_function("compress (zstd level 3 per chunk)", |b| {
        b.iter(|| {
            for p in &pieces {
                black_box(systemprompt_sync::pack::compress(p, 3));
            }
        })
    });
    g.finish();
}

/// A fresh, empty store in its own temporary directory.
fn fresh_store(root: &Path) -> (tempfile::TempDir, Store) {
    let tmp = tempfile::tempdir_in(root).expect("temp dir");
    let dir = tmp.path().join("store");
    Store::init(&dir).expect("init");
    let mut store = Store::open(&dir, LockMode::Shared).expect("open");
    store.set_cache_dir(tmp.path().join("cache"));
    (tmp, store)
}

fn end_to_end(c: &mut Criterion) {
    let work = tempfile::tempdir().expect("temp dir");
    let src: PathBuf = work.path().join("src");
    std::fs::create_dir_all(src.join("sub")).expect("mkdir");
    for i in 0..FILES {
        let name = if i % 2 == 0 {
            format!("data-{i}.log")
        } else {
            format!("sub/data-{i}.txt")
        };
        let bytes = semi_compressible(TOTAL / FILES, 1000 + i as u64);
        std::fs::write(src.join(name), bytes).expect("write");
    }
    let stores = work.path().join("stores");
    std::fs::create_dir_all(&stores).expect("mkdir");
    let opts = SnapshotOptions {
        sources: vec![src.clone()],
        use_stat_cache: false,
        ..Default::default()
    };

    let (_keep, store) = fresh_store(&stores);
    let r = systemprompt_sync::snapshot(&store, &opts, &NoProgress).expect("snapshot");
    assert_eq!(r.files, FILES as u64);
    assert_eq!(r.bytes, TOTAL as u64);
    // Distinct files: nothing deduplicates, every byte is chunked and stored.
    assert!(r.new_bytes > TOTAL as u64 / 4, "{r:?}");
    eprintln!(
        "snapshot: {} files, {} MiB read, {} new objects, {:.1} MiB stored (threads: rayon default)",
        r.files,
        r.read_bytes >> 20,
        r.new_objects,
        r.new_bytes as f64 / (1 << 20) as f64
    );
    drop(store);

    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Bytes(TOTAL as u64));
    // ~0.1-0.2 s an iteration: equal-sized samples, a little more time.
    g.sampling_mode(SamplingMode::Flat);
    g.measurement_time(Duration::from_secs(8));
    g.bench_function("snapshot (end to end, fresh store)", |b| {
        b.iter_batched(
            || fresh_store(&stores),
            |(tmp, store)| {
                let r = systemprompt_sync::snapshot(&store, &opts, &NoProgress).expect("snapshot");
                black_box(r.id);
                // Dropped (store directory deleted) outside the timing.
                (tmp, store)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    targets = stages, end_to_end
}
criterion_main!(benches);
