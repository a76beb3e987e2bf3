//! Writes a few valid encodings for each fuzz target into `fuzz/seeds/<target>/`
//! (run from `fuzz/`: `cargo run --example gen_seeds`). The seeds give the
//! fuzzer a start past the magic numbers and checksums.
//!
//! `cargo run --example gen_seeds -- --from-store DIR` adds seeds taken from
//! a real store instead: up to 8 objects of each kind (tree and row-map
//! nodes, chunk lists, snapshots, tables, dictionaries) and its smallest
//! pack and index files, named by object id.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use systemprompt_sync::object::ObjectSink;
use systemprompt_sync::object::list::{ChunkRef, ListNode};
use systemprompt_sync::object::snapshot::Snapshot;
use systemprompt_sync::object::tree::{Content, Entry, EntryKind, Timestamp};
use systemprompt_sync::pack::{PackWriter, compress, prepare};
use systemprompt_sync::store::index::{self, IdxEntry};
use systemprompt_sync::{ObjectId, ObjectType, Result};

/// Keeps every object put, in order.
#[derive(Default)]
struct Capture(Mutex<Vec<(ObjectType, Vec<u8>)>>);

impl ObjectSink for Capture {
    fn put_hashed(&self, tag: ObjectType, _id: ObjectId, bytes: &[u8]) -> Result<bool> {
        self.0.lock().unwrap().push((tag, bytes.to_vec()));
        Ok(true)
    }
    fn contains(&self, _id: &ObjectId) -> bool {
        false
    }
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn id(s: &str) -> ObjectId {
    ObjectId::compute(ObjectType::Chunk, s.as_bytes())
}

/// Seeds from a real store (`--from-store DIR`).
fn from_store(dir: &Path) {
    use systemprompt_sync::object::ObjectSource;
    use systemprompt_sync::{LockMode, Store};
    let store = Store::open(dir, LockMode::Shared).expect("open the store");
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut objects = store.all_objects();
    objects.sort_by_key(|(_, loc)| loc.ulen);
    for (id, loc) in objects {
        let target = match loc.tag {
            ObjectType::Tree | ObjectType::Rows => "pmap_node",
            ObjectType::List => "list_node",
            ObjectType::Snapshot => "snapshot",
            ObjectType::Table => "table_object",
            ObjectType::Chunk | ObjectType::Dict => continue,
        };
        let n = counts.entry(target).or_default();
        if *n >= 8 {
            continue;
        }
        *n += 1;
        let bytes = store.get(loc.tag, &id).expect("read an object");
        write(target, &format!("store-{}", &id.to_string()[..16]), &bytes);
    }
    let (packs, _) = store.list_pack_files().expect("list packs");
    let mut files: Vec<_> = packs
        .iter()
        .map(|p| (store.pack_path(p), store.idx_path(p)))
        .filter_map(|(pack, idx)| Some((std::fs::metadata(&pack).ok()?.len(), pack, idx)))
        .collect();
    files.sort();
    for (_, pack, idx) in files.into_iter().take(2) {
        let name = pack.file_stem().unwrap().to_string_lossy()[..16].to_string();
        if let Ok(b) = std::fs::read(&pack)
            && b.len() <= 1 << 20
        {
            write("pack_stream", &format!("store-{name}"), &b);
        }
        if let Ok(b) = std::fs::read(&idx) {
            write("pack_index", &format!("store-{name}"), &b);
        }
    }
    println!("seeds from {} written: {counts:?}", dir.display());
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, dir] = args.as_slice()
        && flag == "--from-store"
    {
        return from_store(Path::new(dir));
    }
    // Prolly-map nodes: a one-leaf map, and the nodes of a map big enough to
    // have internal nodes.
    let small = Capture::default();
    systemprompt_sync::pmap::build(
        ObjectType::Tree,
        &small,
        [(&b"a"[..], &b"1"[..]), (b"bb", b"22"), (b"ccc", b"")],
    )
    .unwrap();
    write(
        "pmap_node",
        "empty",
        &systemprompt_sync::pmap::empty_map_bytes(),
    );
    write("pmap_node", "leaf", &small.0.lock().unwrap()[0].1);
    let big = Capture::default();
    let keys: Vec<Vec<u8>> = (0..3000)
        .map(|i| format!("file-{i:06}").into_bytes())
        .collect();
    systemprompt_sync::pmap::build(
        ObjectType::Tree,
        &big,
        keys.iter().map(|k| (k.as_slice(), &b"value-bytes"[..])),
    )
    .unwrap();
    let nodes = big.0.into_inner().unwrap();
    write("pmap_node", "big-leaf", &nodes[0].1);
    write("pmap_node", "internal", &nodes.last().unwrap().1);

    // List nodes.
    let refs = |n: u64| -> Vec<ChunkRef> {
        (0..n)
            .map(|i| ChunkRef {
                id: id(&i.to_string()),
                len: 1000 + i * 300,
            })
            .collect()
    };
    for (name, level, n) in [("leaf1", 0, 1), ("leaf9", 0, 9), ("internal", 1, 3)] {
        let node = ListNode {
            level,
            entries: refs(n),
        };
        write("list_node", name, &node.encode());
    }

    // Tree entries of each kind.
    let t = Timestamp {
        secs: 1_700_000_000,
        nanos: 123_456_789,
    };
    let entries = [
        (
            "file-empty",
            EntryKind::File {
                size: 0,
                content: Content::Inline(vec![]),
            },
        ),
        (
            "file-inline",
            EntryKind::File {
                size: 2300,
                content: Content::Inline(refs(2)),
            },
        ),
        (
            "file-indirect",
            EntryKind::File {
                size: 1 << 30,
                content: Content::Indirect {
                    level: 1,
                    root: id("list"),
                },
            },
        ),
        ("dir", EntryKind::Dir { tree: id("tree") }),
        (
            "symlink",
            EntryKind::Symlink {
                target: b"../target/path".to_vec(),
            },
        ),
    ];
    for (name, kind) in entries {
        let e = Entry {
            mode: 0o644,
            mtime: t,
            kind,
        };
        // The target reads the directory's time first (12 bytes).
        let dir = Timestamp {
            secs: t.secs - 3600,
            nanos: 0,
        };
        let head = [&dir.secs.to_le_bytes()[..], &dir.nanos.to_le_bytes()].concat();
        write("tree_entry", name, &[&head[..], &e.encode()].concat());
        let rel = format!("{name}-relative");
        write(
            "tree_entry",
            &rel,
            &[&head[..], &e.encode_in(Some(dir))].concat(),
        );
    }

    // Snapshots.
    let mut s = Snapshot {
        time: t,
        host: "host".into(),
        message: "first".into(),
        root: Some(id("root")),
        files: 3,
        bytes: 4096,
        ..Default::default()
    };
    write("snapshot", "root", &s.encode());
    s.parents = vec![id("p1"), id("p2")];
    s.root = None;
    s.tables = BTreeMap::from([("rows".into(), id("t1")), ("users".into(), id("t2"))]);
    s.meta = BTreeMap::from([("k".into(), "v".into()), ("z".into(), "".into())]);
    write("snapshot", "full", &s.encode());

    // A pack stream of raw and compressed objects, and its index.
    let datas: Vec<Vec<u8>> = vec![
        b"hello".to_vec(),
        b"compressible ".repeat(40),
        (0..300u32).map(|i| (i * 7 % 256) as u8).collect(),
    ];
    let mut w = PackWriter::new(Vec::new()).unwrap();
    let mut idx = Vec::new();
    for (i, d) in datas.iter().enumerate() {
        let tag = if i == 1 {
            ObjectType::Tree
        } else {
            ObjectType::Chunk
        };
        let o = prepare(tag, ObjectId::compute(tag, d), d, 3);
        let offset = w.add(&o).unwrap();
        idx.push(IdxEntry {
            id: o.id,
            tag,
            flags: o.flags,
            offset,
            clen: o.payload.len() as u32,
            ulen: o.ulen,
        });
    }
    let (pack, name) = w.finish().unwrap();
    write("pack_stream", "three", &pack);
    let (empty, _) = PackWriter::new(Vec::new()).unwrap().finish().unwrap();
    write("pack_stream", "empty", &empty);
    write("pack_index", "three", &index::encode(&name, &mut idx));
    write("pack_index", "empty", &index::encode(&name, &mut []));

    // unpack inputs: flags | ulen (u32 LE) | payload.
    for (name, d) in [("raw", &datas[0]), ("zstd", &datas[1])] {
        let (flags, payload) = compress(d, 3);
        let mut b = vec![flags];
        b.extend_from_slice(&(d.len() as u32).to_le_bytes());
        b.extend_from_slice(&payload);
        write("unpack", name, &b);
    }
    // Table objects and row-map values.
    use systemprompt_sync::db::table::{Column, Extra, ExtraKind, TableData, TableObject};
    use systemprompt_sync::db::value::{Cell, Value, encode_key, encode_row};
    let table = TableObject {
        engine: Default::default(),
        name: "users".into(),
        sql: "CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT)".into(),
        ordinal: 0,
        table: Some(TableData {
            flags: 0,
            columns: vec![
                Column {
                    name: "id".into(),
                    decl_type: "INTEGER".into(),
                },
                Column {
                    name: "name".into(),
                    decl_type: "TEXT".into(),
                },
            ],
            key: vec![0],
            sequence: Some(7),
            rows: 2,
            root: id("rows"),
        }),
        extras: vec![Extra {
            kind: ExtraKind::Trigger,
            name: "t".into(),
            ordinal: 2,
            sql: "CREATE TRIGGER t AFTER INSERT ON users BEGIN SELECT 1; END".into(),
        }],
    };
    write("table_object", "table", &table.encode());
    let view = TableObject {
        engine: Default::default(),
        name: "v".into(),
        sql: "CREATE VIEW v AS SELECT 1".into(),
        ordinal: 3,
        table: None,
        extras: vec![],
    };
    write("table_object", "view", &view.encode());
    let mut pg_table = table.clone();
    pg_table.engine = systemprompt_sync::db::table::Engine::Postgres;
    if let Some(t) = pg_table.table.as_mut() {
        t.flags = 1;
        t.sequence = None;
    }
    pg_table.extras = vec![Extra {
        kind: ExtraKind::Sequence,
        name: "users_id_seq".into(),
        ordinal: 2,
        sql: "SELECT setval('users_id_seq', 2, true)".into(),
    }];
    write("table_object", "table_pg", &pg_table.encode());
    let mut key = vec![0u8];
    key.extend(
        encode_key(&[
            Value::Integer(-5),
            Value::Real(1.5),
            Value::Text(b"a\0b".to_vec()),
            Value::Blob(vec![0xff]),
            Value::Null,
        ])
        .unwrap(),
    );
    write("row_values", "key", &key);
    let mut row = vec![1u8];
    row.extend(encode_row(&[
        Cell::Value(Value::Null),
        Cell::Value(Value::Integer(i64::MIN)),
        Cell::Value(Value::Real(-0.0)),
        Cell::Value(Value::Text(b"hi".to_vec())),
        Cell::Value(Value::Blob(vec![1, 2])),
        Cell::Large {
            text: false,
            size: 5000,
            content: Content::Inline(vec![ChunkRef {
                id: id("c"),
                len: 5000,
            }]),
        },
    ]));
    write("row_values", "row", &row);

    // Blocks: two row-map leaves of small rows, transposed and as payloads.
    let leaf = |base: u64| {
        let mut n = vec![1u8, 0, 3];
        for i in base..base + 3 {
            let key = i.to_be_bytes();
            let row = encode_row(&[
                Cell::Value(Value::Integer(i as i64)),
                Cell::Value(Value::Text(format!("user{i}@example.com").into_bytes())),
                Cell::Value(Value::Real(i as f64 / 3.0)),
                Cell::Value(Value::Null),
            ]);
            n.push(key.len() as u8);
            n.extend_from_slice(&key);
            n.push(row.len() as u8);
            n.extend_from_slice(&row);
        }
        n
    };
    let (a, b) = (leaf(1), leaf(4));
    let members: [&[u8]; 2] = [&a, &b];
    let total = ((a.len() + b.len()) as u32).to_le_bytes();
    let t = systemprompt_sync::block::transpose(&members).unwrap();
    write("block", "transposed", &[&[0u8][..], &total, &t].concat());
    for tag in [ObjectType::Rows, ObjectType::Chunk] {
        let (mode, payload) = systemprompt_sync::block::encode(tag, &members, 3).unwrap();
        write(
            "block",
            &format!("mode{mode}"),
            &[&[mode << 1 | 1][..], &total, &payload].concat(),
        );
    }
    println!("seeds written to {}/seeds", env!("CARGO_MANIFEST_DIR"));
}
