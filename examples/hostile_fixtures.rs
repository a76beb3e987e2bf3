//! Builds the hostile-fixture folder: stores and bundles made by hand, past
//! every check of the writer, that a careful reader must refuse. Each fixture
//! is a directory `<out>/<name>/` holding `store/` (a store whose ref `main`
//! names the hostile snapshot) or `bundle.spb` (a bundle carrying it), and a
//! `README` line saying what it is.
//!
//! ```sh
//! scripts/hostile-fixtures.sh target/hostile    # or:
//! cargo run --example hostile_fixtures -- target/hostile
//! ```
//!
//! `tests/it/hostile_fixtures.rs` builds the same folder and runs `restore`,
//! `ls`, `diff`, `fsck --read-data` and `bundle import` against every one.

use std::io::Write;
use std::path::{Path, PathBuf};

use systemprompt_sync::bundle::BundleHeader;
use systemprompt_sync::codec::Writer;
use systemprompt_sync::object::list::{ChunkRef, ListNode};
use systemprompt_sync::object::tree::{Content, Entry, EntryKind, Timestamp};
use systemprompt_sync::pack::{FLAG_DELTA, FLAG_RAW, FLAG_ZSTD, PackWriter, StoredObject};
use systemprompt_sync::store::StoreConfig;
use systemprompt_sync::store::index::{self, IdxEntry};
use systemprompt_sync::{LockMode, ObjectId, ObjectType, Snapshot, Store};

/// What a fixture is and how it is handed to sp-sync.
pub struct Fixture {
    /// Directory name under the output folder.
    pub name: &'static str,
    /// What is hostile about it.
    pub what: &'static str,
    /// `store/` or `bundle.spb` inside the fixture's directory.
    pub path: PathBuf,
    /// True for a bundle, false for a store.
    pub bundle: bool,
}

fn file_entry(size: u64, content: Content) -> Entry {
    Entry {
        mode: 0o644,
        mtime: Timestamp::default(),
        kind: EntryKind::File { size, content },
    }
}

/// A tree node written byte by byte (names unchecked, in the given order).
fn tree_bytes(entries: &[(&[u8], Entry)]) -> Vec<u8> {
    let mut w = Writer::new();
    w.u8(1).u8(0).varint(entries.len() as u64);
    for (name, e) in entries {
        w.bytes(name).bytes(&e.encode());
    }
    w.buf
}

fn record(tag: ObjectType, id: ObjectId, flags: u8, ulen: u32, payload: Vec<u8>) -> StoredObject {
    StoredObject {
        tag,
        id,
        flags,
        ulen,
        payload,
    }
}

/// A well-formed record of `data` (stored raw).
fn object(tag: ObjectType, data: &[u8]) -> StoredObject {
    record(
        tag,
        ObjectId::compute(tag, data),
        FLAG_RAW,
        data.len() as u32,
        data.to_vec(),
    )
}

/// A store at `dir` holding exactly `records` (one pack, its index, as
/// given: ids, flags and lengths are not checked) and `main` naming `head`.
fn plant(dir: &Path, (records, head): &Records) -> std::io::Result<()> {
    let head = *head;
    Store::init(dir).map_err(std::io::Error::other)?;
    let store = Store::open(dir, LockMode::Shared).map_err(std::io::Error::other)?;
    let mut w = PackWriter::new(Vec::new())?;
    let mut idx = Vec::new();
    for r in records {
        let offset = w.add(r)?;
        idx.push(IdxEntry {
            id: r.id,
            tag: r.tag,
            flags: r.flags,
            offset,
            clen: r.payload.len() as u32,
            ulen: r.ulen,
        });
    }
    let (pack, name) = w.finish()?;
    std::fs::write(store.pack_path(&name), pack)?;
    std::fs::write(store.idx_path(&name), index::encode(&name, &mut idx))?;
    std::fs::create_dir_all(dir.join("refs"))?;
    std::fs::write(dir.join("refs/main"), format!("{head}\n"))?;
    Ok(())
}

/// A snapshot record whose root is `root`.
fn snapshot_of(root: ObjectId) -> StoredObject {
    let snap = Snapshot {
        root: Some(root),
        message: "hostile".into(),
        ..Default::default()
    };
    object(ObjectType::Snapshot, &snap.encode())
}

/// The records of a snapshot whose root tree holds `entries`, plus `extra`,
/// and the snapshot's id.
type Records = (Vec<StoredObject>, ObjectId);

fn tree_store(entries: &[(&[u8], Entry)], extra: Vec<StoredObject>) -> std::io::Result<Records> {
    let tree = object(ObjectType::Tree, &tree_bytes(entries));
    let snap = snapshot_of(tree.id);
    let head = snap.id;
    let mut all = extra;
    all.push(tree);
    all.push(snap);
    Ok((all, head))
}

/// A bundle carrying `records` with ref `main` naming `head`: header, pack
/// stream, BLAKE3 trailer of everything before it (store-format.md §8).
fn bundle_of(records: &[StoredObject], head: ObjectId) -> std::io::Result<Vec<u8>> {
    let header = BundleHeader {
        objects: StoreConfig::default().objects,
        refs: vec![("main".into(), head)],
        prerequisites: vec![],
    };
    let mut out = header.encode();
    let mut w = PackWriter::new(Vec::new())?;
    for r in records {
        w.add(r)?;
    }
    let (pack, _) = w.finish()?;
    out.extend_from_slice(&pack);
    let trailer = *blake3::hash(&out).as_bytes();
    out.extend_from_slice(&trailer);
    Ok(out)
}

/// zstd frame of `n` zero bytes (a few KB for hundreds of MB).
fn zeros_frame(n: usize) -> std::io::Result<Vec<u8>> {
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 19)?;
    let block = vec![0u8; 1 << 20];
    let mut left = n;
    while left > 0 {
        let k = left.min(block.len());
        enc.write_all(&block[..k])?;
        left -= k;
    }
    enc.finish()
}

/// Builds every fixture under `out` (which must not exist or be empty).
pub fn build_all(out: &Path) -> std::io::Result<Vec<Fixture>> {
    std::fs::create_dir_all(out)?;
    let mut list = Vec::new();
    let empty = || file_entry(0, Content::Inline(vec![]));
    let mut store = |name: &'static str,
                     what: &'static str,
                     make: &dyn Fn() -> std::io::Result<Records>|
     -> std::io::Result<()> {
        let dir = out.join(name);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("README"), format!("{what}\n"))?;
        let path = dir.join("store");
        let records = make()?;
        plant(&path, &records)?;
        list.push(Fixture {
            name,
            what,
            path,
            bundle: false,
        });
        // The same objects carried on a bundle.
        let bname: &'static str = Box::leak(format!("bundle-{name}").into_boxed_str());
        let bdir = out.join(bname);
        std::fs::create_dir_all(&bdir)?;
        std::fs::write(bdir.join("README"), format!("a bundle carrying {what}\n"))?;
        let bpath = bdir.join("bundle.spb");
        std::fs::write(&bpath, bundle_of(&records.0, records.1)?)?;
        list.push(Fixture {
            name: bname,
            what,
            path: bpath,
            bundle: true,
        });
        Ok(())
    };

    store("traversal-dotdot", "a tree entry named `..`", &|| {
        tree_store(&[(b"..", empty()), (b"ok", empty())], vec![])
    })?;
    store(
        "traversal-slash",
        "a tree entry named `a/../../escape`",
        &|| tree_store(&[(b"a/../../escape", empty())], vec![]),
    )?;
    store("traversal-absolute", "a tree entry named `/etc`", &|| {
        tree_store(&[(b"/etc", empty())], vec![])
    })?;
    store("name-nul", "a tree entry name with a NUL byte", &|| {
        tree_store(&[(b"a\0b", empty())], vec![])
    })?;
    store("duplicate-names", "two entries named `same`", &|| {
        tree_store(&[(b"same", empty()), (b"same", empty())], vec![])
    })?;
    store(
        "symlink-then-directory",
        "a symlink `x` to `/` and a directory `x` beside it (a restore that \
         followed it would write under /)",
        &|| {
            let sub = object(ObjectType::Tree, &tree_bytes(&[(b"passwd", empty())]));
            let link = Entry {
                mode: 0o777,
                mtime: Timestamp::default(),
                kind: EntryKind::Symlink {
                    target: b"/".to_vec(),
                },
            };
            let dir = Entry {
                mode: 0o755,
                mtime: Timestamp::default(),
                kind: EntryKind::Dir { tree: sub.id },
            };
            tree_store(&[(b"x", link), (b"x", dir)], vec![sub])
        },
    )?;
    store(
        "wrong-type-dir",
        "a directory entry whose tree id is a chunk",
        &|| {
            let chunk = object(ObjectType::Chunk, b"not a tree");
            let dir = Entry {
                mode: 0o755,
                mtime: Timestamp::default(),
                kind: EntryKind::Dir { tree: chunk.id },
            };
            tree_store(&[(b"d", dir)], vec![chunk])
        },
    )?;
    store(
        "wrong-type-list",
        "a file whose chunk list root is a tree",
        &|| {
            let sub = object(ObjectType::Tree, &tree_bytes(&[(b"f", empty())]));
            let f = file_entry(
                10,
                Content::Indirect {
                    level: 1,
                    root: sub.id,
                },
            );
            tree_store(&[(b"f", f)], vec![sub])
        },
    )?;
    store(
        "oversized-length",
        "a file claiming 2^40 bytes made of one 3-byte chunk",
        &|| {
            let chunk = object(ObjectType::Chunk, b"abc");
            let f = file_entry(
                1 << 40,
                Content::Inline(vec![ChunkRef {
                    id: chunk.id,
                    len: 1 << 40,
                }]),
            );
            tree_store(&[(b"f", f)], vec![chunk])
        },
    )?;
    store(
        "list-lengths-overflow",
        "a chunk list whose lengths add past 2^64",
        &|| {
            let chunk = object(ObjectType::Chunk, b"abc");
            let node = ListNode {
                level: 0,
                entries: vec![
                    ChunkRef {
                        id: chunk.id,
                        len: u64::MAX / 2 + 1,
                    };
                    3
                ],
            };
            let list = object(ObjectType::List, &node.encode());
            let f = file_entry(
                9,
                Content::Indirect {
                    level: 1,
                    root: list.id,
                },
            );
            tree_store(&[(b"f", f)], vec![chunk, list])
        },
    )?;
    store(
        "zstd-bomb",
        "a 100-byte chunk whose zstd frame expands to 256 MiB",
        &|| {
            let data = [0u8; 100];
            let bomb = record(
                ObjectType::Chunk,
                ObjectId::compute(ObjectType::Chunk, &data),
                FLAG_ZSTD,
                100,
                zeros_frame(256 << 20)?,
            );
            let f = file_entry(
                100,
                Content::Inline(vec![ChunkRef {
                    id: bomb.id,
                    len: 100,
                }]),
            );
            tree_store(&[(b"f", f)], vec![bomb])
        },
    )?;
    store(
        "declared-size-huge",
        "a record declaring 4 GiB of content",
        &|| {
            let data = b"small".to_vec();
            let big = record(
                ObjectType::Chunk,
                ObjectId::compute(ObjectType::Chunk, &data),
                FLAG_ZSTD,
                u32::MAX,
                zeros_frame(1 << 20)?,
            );
            let f = file_entry(5, Content::Inline(vec![ChunkRef { id: big.id, len: 5 }]));
            tree_store(&[(b"f", f)], vec![big])
        },
    )?;
    store(
        "wrong-object-under-id",
        "the index files a chunk's id over another chunk's bytes",
        &|| {
            let real = b"the real content".to_vec();
            let liar = record(
                ObjectType::Chunk,
                ObjectId::compute(ObjectType::Chunk, &real),
                FLAG_RAW,
                14,
                b"other content!".to_vec(),
            );
            let f = file_entry(
                real.len() as u64,
                Content::Inline(vec![ChunkRef {
                    id: liar.id,
                    len: real.len() as u64,
                }]),
            );
            tree_store(&[(b"f", f)], vec![liar])
        },
    )?;
    store(
        "delta-cycle",
        "two stored deltas, each the other's base",
        &|| {
            let a = ObjectId::compute(ObjectType::Chunk, b"aaaa");
            let b = ObjectId::compute(ObjectType::Chunk, b"bbbb");
            let mut pa = b.as_bytes().to_vec();
            pa.extend_from_slice(b"\x28\xb5\x2f\xfd");
            let mut pb = a.as_bytes().to_vec();
            pb.extend_from_slice(b"\x28\xb5\x2f\xfd");
            let ra = record(ObjectType::Chunk, a, FLAG_DELTA, 4, pa);
            let rb = record(ObjectType::Chunk, b, FLAG_DELTA, 4, pb);
            let f = file_entry(
                8,
                Content::Inline(vec![ChunkRef { id: a, len: 4 }, ChunkRef { id: b, len: 4 }]),
            );
            tree_store(&[(b"f", f)], vec![ra, rb])
        },
    )?;
    store(
        "tree-cycle-by-index",
        "a directory whose tree id is filed over its parent's bytes (a loop if unverified)",
        &|| {
            // The root names directory `loop` with id X; the index files X
            // over the root's own bytes, so an unverified walk never ends.
            let x = ObjectId::compute(ObjectType::Tree, b"some other tree");
            let dir = Entry {
                mode: 0o755,
                mtime: Timestamp::default(),
                kind: EntryKind::Dir { tree: x },
            };
            let root_bytes = tree_bytes(&[(b"loop", dir)]);
            let root = object(ObjectType::Tree, &root_bytes);
            let fake = record(
                ObjectType::Tree,
                x,
                FLAG_RAW,
                root_bytes.len() as u32,
                root_bytes.clone(),
            );
            let snap = snapshot_of(root.id);
            let head = snap.id;
            Ok((vec![root, fake, snap], head))
        },
    )?;

    // A bundle cut short, and one whose header claims an absurd size.
    // (Cut from a well-formed bundle, so that the cut is all that is wrong.)
    let chunk = object(ObjectType::Chunk, &b"well-formed content ".repeat(20));
    let f = file_entry(
        400,
        Content::Inline(vec![ChunkRef {
            id: chunk.id,
            len: 400,
        }]),
    );
    let (records, head) = tree_store(&[(b"f", f)], vec![chunk])?;
    let bytes = bundle_of(&records, head)?;
    for (name, what, body) in [
        (
            "bundle-truncated",
            "a bundle cut in the middle of its pack",
            bytes[..bytes.len() * 2 / 3].to_vec(),
        ),
        (
            "bundle-garbage-tail",
            "a bundle with bytes after its trailer",
            [bytes.clone(), b"trailing garbage".to_vec()].concat(),
        ),
    ] {
        let dir = out.join(name);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("README"), format!("{what}\n"))?;
        let path = dir.join("bundle.spb");
        std::fs::write(&path, body)?;
        list.push(Fixture {
            name,
            what,
            path,
            bundle: true,
        });
    }
    Ok(list)
}

#[allow(dead_code)]
fn main() {
    let Some(out) = std::env::args_os().nth(1) else {
        eprintln!("usage: hostile_fixtures OUT_DIR");
        std::process::exit(2);
    };
    match build_all(Path::new(&out)) {
        Ok(list) => {
            for f in list {
                println!("{:32} {}", f.name, f.what);
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
