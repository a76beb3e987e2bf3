//! Blocks of row-map leaves (store-format §6.1, mode 2): what a snapshot of
//! a large table spends per block once its leaves are built. 2,000 leaves
//! of users-like rows (an id, an email, a name, an age or NULL, a balance
//! and a timestamp as text, a flag, 16 bytes or NULL), about 10 rows each,
//! grouped into blocks of 64 KiB as a snapshot groups them; then each
//! step alone: the transposition, its inverse (the check a writer runs
//! before it stores a transposed block), zstd at the rows' level, and the
//! whole of `block::encode`.
//!
//! `cargo bench --bench rows`

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use systemprompt_sync::ObjectType;
use systemprompt_sync::codec::put_varint;

const LEAVES: u64 = 2000;
const ROWS_PER_LEAF: u64 = 10;

fn text(r: &mut Vec<u8>, s: &str) {
    r.push(3);
    put_varint(r, s.len() as u64);
    r.extend_from_slice(s.as_bytes());
}

fn row(i: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(128);
    put_varint(&mut r, 8);
    r.push(1);
    put_varint(&mut r, i << 1);
    text(&mut r, &format!("user{i}@example.com"));
    let letter = char::from(b'A' + ((i * 7) % 26) as u8);
    text(
        &mut r,
        &format!("User {letter} {}", i * 2_654_435_761 % 1_000_003),
    );
    if i.is_multiple_of(17) {
        r.push(0);
    } else {
        r.push(1);
        put_varint(&mut r, (18 + (i * 31) % 60) << 1);
    }
    let cents = (i * 48_271) % 2_147_483_647 / 10;
    text(&mut r, &format!("{}.{:02}", cents / 100, cents % 100));
    let t = 1_600_000_000 + i * 37;
    text(
        &mut r,
        &format!(
            "2020-{:02}-{:02} {:02}:{:02}:{:02}+00",
            1 + t / 2_600_000 % 12,
            1 + t / 86_400 % 28,
            t / 3600 % 24,
            t / 60 % 60,
            t % 60
        ),
    );
    r.push(1);
    put_varint(&mut r, u64::from(!i.is_multiple_of(3)) << 1);
    if i.is_multiple_of(5) {
        r.push(4);
        put_varint(&mut r, 16);
        r.extend_from_slice(&blake3::hash(&i.to_le_bytes()).as_bytes()[..16]);
    } else {
        r.push(0);
    }
    r
}

fn leaf(first: u64) -> Vec<u8> {
    let mut n = vec![1, 0];
    put_varint(&mut n, ROWS_PER_LEAF);
    for i in first..first + ROWS_PER_LEAF {
        let mut k = vec![0x02];
        k.extend_from_slice(&(i ^ (1 << 63)).to_be_bytes());
        put_varint(&mut n, k.len() as u64);
        n.extend_from_slice(&k);
        let v = row(i);
        put_varint(&mut n, v.len() as u64);
        n.extend_from_slice(&v);
    }
    n
}

fn bench_blocks(c: &mut Criterion) {
    let leaves: Vec<Vec<u8>> = (0..LEAVES).map(|l| leaf(1 + l * ROWS_PER_LEAF)).collect();
    let mut blocks: Vec<Vec<&[u8]>> = vec![Vec::new()];
    let mut bytes = 0;
    for l in &leaves {
        if bytes >= systemprompt_sync::block::TARGET_BYTES {
            blocks.push(Vec::new());
            bytes = 0;
        }
        bytes += l.len();
        blocks.last_mut().expect("a block").push(l);
    }
    let total: usize = leaves.iter().map(Vec::len).sum();
    let transposed: Vec<(usize, Vec<u8>)> = blocks
        .iter()
        .map(|b| {
            let t = systemprompt_sync::block::transpose(b).expect("leaves of rows");
            (b.iter().map(|m| m.len()).sum(), t)
        })
        .collect();
    for ((n, t), b) in transposed.iter().zip(&blocks) {
        let back = systemprompt_sync::block::untranspose(t, *n).expect("the inverse");
        assert_eq!(back, b.concat(), "untranspose(transpose(x)) == x");
    }
    let level = systemprompt_sync::store::StoreConfig::default().rows_compression_level;
    let packed: usize = blocks
        .iter()
        .map(|b| {
            systemprompt_sync::block::encode(ObjectType::Rows, b, level)
                .expect("encode")
                .1
                .len()
        })
        .sum();
    eprintln!(
        "rows: {} leaves, {} KiB in {} blocks, stored in {} KiB ({:.1}%)",
        leaves.len(),
        total >> 10,
        blocks.len(),
        packed >> 10,
        100.0 * packed as f64 / total as f64
    );

    let mut g = c.benchmark_group("row blocks");
    g.throughput(Throughput::Bytes(total as u64));
    g.bench_function("transpose", |b| {
        b.iter(|| {
            for m in &blocks {
                black_box(systemprompt_sync::block::transpose(black_box(m)));
            }
        })
    });
    g.bench_function("untranspose (the writer's check)", |b| {
        b.iter(|| {
            for (n, t) in &transposed {
                black_box(systemprompt_sync::block::untranspose(black_box(t), *n).ok());
            }
        })
    });
    g.bench_function("zstd of the transposed form", |b| {
        b.iter(|| {
            for (_, t) in &transposed {
                black_box(systemprompt_sync::pack::compress_frame(black_box(t), level));
            }
        })
    });
    g.bench_function("encode (transpose, check, compress)", |b| {
        b.iter(|| {
            for m in &blocks {
                black_box(
                    systemprompt_sync::block::encode(ObjectType::Rows, black_box(m), level).ok(),
                );
            }
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = bench_blocks
}
criterion_main!(benches);
