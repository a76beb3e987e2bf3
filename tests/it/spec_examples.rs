//! The worked examples of `store-format.md` are decoded by the library, and
//! the library produces exactly those bytes: the spec and the code agree.
//! `SPEC_PRINT=1 cargo test --test it spec_examples:: -- --nocapture` prints the
//! examples as they belong in the spec.

use std::collections::BTreeMap;
use std::path::Path;

use systemprompt_sync::bundle::{BundleHeader, BundleReader, verify};
use systemprompt_sync::db::table::{Column, Engine, Extra, ExtraKind, TableData, TableObject};
use systemprompt_sync::db::value::{Cell, Value, decode_key, decode_row, encode_key, encode_row};
use systemprompt_sync::dict::Dictionary;
use systemprompt_sync::object::list::{ChunkRef, ListNode};
use systemprompt_sync::object::snapshot::{DbRecord, Skipped, Snapshot, Sources};
use systemprompt_sync::object::tree::{Content, Entry, EntryKind, Timestamp};

/// The directory time of the spec's relative entry (§12).
const DIR_TIME: Timestamp = Timestamp {
    secs: 1_764_000_000,
    nanos: 0,
};
use systemprompt_sync::pack::{FLAG_DICT, PackReader, PackWriter, StoredObject, prepare, unpack};
use systemprompt_sync::pmap::Node;
use systemprompt_sync::store::ObjectParams;
use systemprompt_sync::store::index::{self, IdxEntry};
use systemprompt_sync::{NoProgress, ObjectId, ObjectType};

struct Example {
    name: &'static str,
    tag: Option<ObjectType>,
    bytes: Vec<u8>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// The examples, built with the library's encoders.
fn examples() -> Vec<Example> {
    let chunk = b"hello, world\n".to_vec();
    let chunk_id = ObjectId::compute(ObjectType::Chunk, &chunk);
    let file = Entry {
        mode: 0o644,
        mtime: Timestamp {
            secs: 1_764_000_000,
            nanos: 500_000_000,
        },
        kind: EntryKind::File {
            size: chunk.len() as u64,
            content: Content::Inline(vec![ChunkRef {
                id: chunk_id,
                len: chunk.len() as u64,
            }]),
        },
    };
    let link = Entry {
        mode: 0o777,
        mtime: Timestamp {
            secs: 1_764_000_000,
            nanos: 0,
        },
        kind: EntryKind::Symlink {
            target: b"hello.txt".to_vec(),
        },
    };
    // A leaf node of a directory map: two entries, keys sorted.
    let mut leaf = vec![1u8, 0, 2];
    for (k, v) in [
        (&b"hello.txt"[..], file.encode()),
        (&b"link"[..], link.encode()),
    ] {
        leaf.push(k.len() as u8);
        leaf.extend_from_slice(k);
        leaf.push(v.len() as u8);
        leaf.extend_from_slice(&v);
    }
    let tree_id = ObjectId::compute(ObjectType::Tree, &leaf);
    let dir = Entry {
        mode: 0o755,
        mtime: Timestamp {
            secs: 1_764_000_000,
            nanos: 0,
        },
        kind: EntryKind::Dir { tree: tree_id },
    };
    let list = ListNode {
        level: 0,
        entries: vec![
            ChunkRef {
                id: chunk_id,
                len: chunk.len() as u64,
            },
            ChunkRef {
                id: chunk_id,
                len: chunk.len() as u64,
            },
        ],
    };
    let snap = Snapshot {
        parents: vec![],
        time: Timestamp {
            secs: 1_764_000_000,
            nanos: 123_456_789,
        },
        host: "example".into(),
        message: "first".into(),
        root: Some(tree_id),
        files: 2,
        bytes: 22,
        tables: BTreeMap::new(),
        meta: BTreeMap::from([("source".to_string(), "services".to_string())]),
        ..Default::default()
    };
    // A pack holding the chunk (raw: too small to compress) and the tree.
    let mut w = PackWriter::new(Vec::new()).unwrap();
    w.add(&prepare(ObjectType::Chunk, chunk_id, &chunk, 3))
        .unwrap();
    w.add(&prepare(ObjectType::Tree, tree_id, &leaf, 3))
        .unwrap();
    let (pack, pack_name) = w.finish().unwrap();
    let mut entries: Vec<IdxEntry> = Vec::new();
    let mut r = PackReader::new(&pack[..], "example").unwrap();
    while let Some(rec) = r.next_record().unwrap() {
        entries.push(IdxEntry {
            id: rec.id,
            tag: rec.tag,
            flags: rec.flags,
            offset: rec.offset,
            clen: rec.payload.len() as u32,
            ulen: rec.ulen as u32,
        });
    }
    let idx = index::encode(&pack_name, &mut entries);
    // A bundle carrying ref main -> the snapshot, no prerequisites: the
    // header, a pack stream of the chunk, the tree and the snapshot
    // (children first), and the trailer over all of it.
    let snap_bytes = snap.encode();
    let snap_id = ObjectId::compute(ObjectType::Snapshot, &snap_bytes);
    let mut bundle_bytes = BundleHeader {
        objects: ObjectParams::v1(),
        refs: vec![("main".to_string(), snap_id)],
        prerequisites: vec![],
    }
    .encode();
    let mut w = PackWriter::new(Vec::new()).unwrap();
    w.add(&prepare(ObjectType::Chunk, chunk_id, &chunk, 3))
        .unwrap();
    w.add(&prepare(ObjectType::Tree, tree_id, &leaf, 3))
        .unwrap();
    w.add(&prepare(ObjectType::Snapshot, snap_id, &snap_bytes, 3))
        .unwrap();
    bundle_bytes.extend_from_slice(&w.finish().unwrap().0);
    let sum = *blake3::hash(&bundle_bytes).as_bytes();
    bundle_bytes.extend_from_slice(&sum);
    // A row map leaf (users: id INTEGER PRIMARY KEY, name TEXT) holding
    // (1, 'ann') and (2, NULL), and the table object naming it.
    let mut rows_leaf = vec![1u8, 0, 2];
    for (id, name) in [(1i64, Value::Text(b"ann".to_vec())), (2, Value::Null)] {
        let k = encode_key(&[Value::Integer(id)]).unwrap();
        let r = encode_row(&[Cell::Value(Value::Integer(id)), Cell::Value(name)]);
        rows_leaf.push(k.len() as u8);
        rows_leaf.extend_from_slice(&k);
        rows_leaf.push(r.len() as u8);
        rows_leaf.extend_from_slice(&r);
    }
    let rows_id = ObjectId::compute(ObjectType::Rows, &rows_leaf);
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
            sequence: None,
            rows: 2,
            root: rows_id,
        }),
        extras: vec![Extra {
            kind: ExtraKind::Index,
            name: "users_name".into(),
            ordinal: 1,
            sql: "CREATE INDEX users_name ON users(name)".into(),
        }],
    };
    // A PostgreSQL table (version 2, engine 2): t(id bigint PRIMARY KEY,
    // ok boolean) with its sequence value, naming the same row map.
    let table_pg = TableObject {
        engine: Engine::Postgres,
        name: "t".into(),
        sql: "CREATE TABLE t (id bigserial PRIMARY KEY, ok boolean)".into(),
        ordinal: 1,
        table: Some(TableData {
            flags: 1,
            columns: vec![
                Column {
                    name: "id".into(),
                    decl_type: "bigint".into(),
                },
                Column {
                    name: "ok".into(),
                    decl_type: "boolean".into(),
                },
            ],
            key: vec![0],
            sequence: None,
            rows: 2,
            root: rows_id,
        }),
        extras: vec![Extra {
            kind: ExtraKind::Sequence,
            name: "t_id_seq".into(),
            ordinal: 2,
            sql: "SELECT setval('t_id_seq', 2, true)".into(),
        }],
    };
    let snap_v2 = Snapshot {
        sources: Some(Sources {
            paths: vec!["services".into()],
            excludes: vec!["*.log".into()],
            dbs: vec![DbRecord {
                location: "data/app.db".into(),
                tables: vec!["users".into()],
            }],
        }),
        skipped: vec![Skipped {
            path: "services/secret".into(),
            error: "Permission denied (os error 13)".into(),
        }],
        ..snap.clone()
    };
    // A dictionary (raw content "hello, world\n", for chunks) and a pack
    // of it and a chunk compressed with it (flags 3).
    let dictionary = Dictionary {
        kind: ObjectType::Chunk,
        content: b"hello, world\n".to_vec(),
    };
    let dict_id = dictionary.id();
    let dchunk = b"hello, world\n".repeat(3);
    let dchunk_id = ObjectId::compute(ObjectType::Chunk, &dchunk);
    let mut w = PackWriter::new(Vec::new()).unwrap();
    w.add(&prepare(ObjectType::Dict, dict_id, &dictionary.encode(), 3))
        .unwrap();
    w.add(&StoredObject {
        tag: ObjectType::Chunk,
        id: dchunk_id,
        flags: FLAG_DICT,
        ulen: dchunk.len() as u32,
        payload: systemprompt_sync::dict::compress(&dict_id, &dictionary, &dchunk, 3).unwrap(),
    })
    .unwrap();
    let (dict_pack, _) = w.finish().unwrap();
    // A pack of a format-3 store: a chunk stored alone and a newer version
    // of it stored as a delta against it (flags 2, `gc --repack`).
    let dbase = b"hello, world\n".repeat(3);
    let dbase_id = ObjectId::compute(ObjectType::Chunk, &dbase);
    let dnew = [&dbase[..], b"goodbye\n"].concat();
    let mut w = PackWriter::new(Vec::new()).unwrap();
    w.add(&prepare(ObjectType::Chunk, dbase_id, &dbase, 3))
        .unwrap();
    w.add(&StoredObject {
        tag: ObjectType::Chunk,
        id: ObjectId::compute(ObjectType::Chunk, &dnew),
        flags: systemprompt_sync::pack::FLAG_DELTA,
        ulen: dnew.len() as u32,
        payload: systemprompt_sync::pack::make_delta(
            &dnew,
            &dbase_id,
            &dbase,
            systemprompt_sync::store::repack::REPACK_DELTA_LEVEL,
        )
        .unwrap(),
    })
    .unwrap();
    let (delta_pack, _) = w.finish().unwrap();
    // A snapshot without a file tree (root flag 0): the record a cache
    // restore writes (§8.2).
    let no_files = Snapshot {
        time: Timestamp {
            secs: 1_764_000_000,
            nanos: 0,
        },
        host: "example".into(),
        message: "cache restore k".into(),
        meta: BTreeMap::from([("cache.key".to_string(), "k".to_string())]),
        ..Default::default()
    };
    // A view with an INSTEAD OF trigger: extras belong to views too.
    let view = TableObject {
        engine: Default::default(),
        name: "names".into(),
        sql: "CREATE VIEW names AS SELECT name FROM users".into(),
        ordinal: 3,
        table: None,
        extras: vec![Extra {
            kind: ExtraKind::Trigger,
            name: "names_ins".into(),
            ordinal: 4,
            sql: "CREATE TRIGGER names_ins INSTEAD OF INSERT ON names BEGIN INSERT INTO users(name) VALUES (new.name); END".into(),
        }],
    };
    // A pack record stored compressed (flags 1): 100 bytes that zstd
    // level 3 shrinks by more than floor(100 / 32) = 3 bytes.
    let text = b"the quick brown fox jumps over the lazy dog; ".repeat(2);
    let text = [&text[..], b"and done.\n"].concat();
    assert_eq!(text.len(), 100);
    let text_id = ObjectId::compute(ObjectType::Chunk, &text);
    let mut w = PackWriter::new(Vec::new()).unwrap();
    let rec = prepare(ObjectType::Chunk, text_id, &text, 3);
    assert_eq!(rec.flags, systemprompt_sync::pack::FLAG_ZSTD);
    w.add(&rec).unwrap();
    let (zstd_pack, _) = w.finish().unwrap();
    // A block record (§6.1): two row-map leaves of two rows each,
    // transposed (mode 2).
    let (la, lb) = block_leaves();
    let members: [&[u8]; 2] = [&la, &lb];
    let (mode, payload) = systemprompt_sync::block::encode(ObjectType::Rows, &members, 3).unwrap();
    assert_eq!(mode, systemprompt_sync::block::MODE_ROWS);
    let mut w = PackWriter::new(Vec::new()).unwrap();
    w.add_block(&systemprompt_sync::pack::StoredBlock {
        tag: ObjectType::Rows,
        mode,
        members: members
            .iter()
            .map(|m| (ObjectId::compute(ObjectType::Rows, m), m.len() as u32))
            .collect(),
        payload,
    })
    .unwrap();
    let (block_pack, _) = w.finish().unwrap();
    vec![
        Example {
            name: "block-pack",
            tag: None,
            bytes: block_pack,
        },
        Example {
            name: "chunk",
            tag: Some(ObjectType::Chunk),
            bytes: chunk,
        },
        Example {
            name: "file-entry",
            tag: None,
            bytes: file.encode(),
        },
        Example {
            name: "symlink-entry",
            tag: None,
            bytes: link.encode(),
        },
        Example {
            name: "dir-entry",
            tag: None,
            bytes: dir.encode(),
        },
        Example {
            name: "relative-entry",
            tag: None,
            bytes: file.encode_in(Some(DIR_TIME)),
        },
        Example {
            name: "tree-leaf",
            tag: Some(ObjectType::Tree),
            bytes: leaf,
        },
        Example {
            name: "list-node",
            tag: Some(ObjectType::List),
            bytes: list.encode(),
        },
        Example {
            name: "snapshot",
            tag: Some(ObjectType::Snapshot),
            bytes: snap.encode(),
        },
        Example {
            name: "snapshot-v2",
            tag: Some(ObjectType::Snapshot),
            bytes: snap_v2.encode(),
        },
        Example {
            name: "pack",
            tag: None,
            bytes: pack,
        },
        Example {
            name: "index",
            tag: None,
            bytes: idx,
        },
        Example {
            name: "rows-leaf",
            tag: Some(ObjectType::Rows),
            bytes: rows_leaf,
        },
        Example {
            name: "table",
            tag: Some(ObjectType::Table),
            bytes: table.encode(),
        },
        Example {
            name: "table-pg",
            tag: Some(ObjectType::Table),
            bytes: table_pg.encode(),
        },
        Example {
            name: "watched-hash",
            tag: None,
            bytes: watched_records(&chunk_id),
        },
        Example {
            name: "dictionary",
            tag: Some(ObjectType::Dict),
            bytes: dictionary.encode(),
        },
        Example {
            name: "dict-pack",
            tag: None,
            bytes: dict_pack,
        },
        Example {
            name: "delta-pack",
            tag: None,
            bytes: delta_pack,
        },
        Example {
            name: "empty-tree",
            tag: Some(ObjectType::Tree),
            bytes: systemprompt_sync::pmap::empty_map_bytes(),
        },
        Example {
            name: "snapshot-no-files",
            tag: Some(ObjectType::Snapshot),
            bytes: no_files.encode(),
        },
        Example {
            name: "view",
            tag: Some(ObjectType::Table),
            bytes: view.encode(),
        },
        Example {
            name: "zstd-pack",
            tag: None,
            bytes: zstd_pack,
        },
        Example {
            name: "bundle",
            tag: None,
            bytes: bundle_bytes,
        },
    ]
}

/// The block example's two leaves: keys `k1` to `k4`, rows (i, 'a' + i - 1)
/// of two values (INTEGER, TEXT).
fn block_leaves() -> (Vec<u8>, Vec<u8>) {
    let leaf = |from: u8| {
        let mut n = vec![0x01, 0x00, 0x02];
        for i in from..from + 2 {
            n.extend_from_slice(&[0x02, b'k', b'0' + i, 0x06, 0x02, 0x01, 2 * i, 0x03, 0x01]);
            n.push(b'a' + i - 1);
        }
        n
    };
    (leaf(1), leaf(3))
}

/// The records of the tree-leaf directory's watched entries (§8.3): the
/// file `hello.txt` and the symlink `link`, without mtimes.
fn watched_records(chunk_id: &ObjectId) -> Vec<u8> {
    let mut r = vec![9];
    r.extend_from_slice(b"hello.txt");
    r.extend_from_slice(&[0x01, 0xa4, 0x03, 0x0d, 0x00, 0x01]);
    r.extend_from_slice(&chunk_id.0);
    r.push(0x0d);
    r.push(4);
    r.extend_from_slice(b"link");
    r.extend_from_slice(&[0x03, 0xff, 0x03, 9]);
    r.extend_from_slice(b"hello.txt");
    r
}

fn render(e: &Example) -> String {
    let mut s = format!("```spexample {}\n", e.name);
    for line in hex(&e.bytes).as_bytes().chunks(64) {
        s.push_str("hex ");
        s.push_str(std::str::from_utf8(line).unwrap());
        s.push('\n');
    }
    if let Some(tag) = e.tag {
        s.push_str(&format!("id  {}\n", ObjectId::compute(tag, &e.bytes)));
    }
    s.push_str("```\n");
    s
}

/// (name, bytes, id) of every example block in the spec.
fn spec_blocks() -> Vec<(String, Vec<u8>, Option<ObjectId>)> {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("store-format.md"))
            .unwrap();
    let mut out = Vec::new();
    let mut cur: Option<(String, String, Option<ObjectId>)> = None;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("```spexample ") {
            cur = Some((name.trim().to_string(), String::new(), None));
        } else if line.starts_with("```") {
            if let Some((n, h, id)) = cur.take() {
                out.push((n, unhex(&h), id));
            }
        } else if let Some((_, h, id)) = cur.as_mut() {
            if let Some(x) = line.strip_prefix("hex ") {
                h.push_str(x.trim());
            } else if let Some(x) = line.strip_prefix("id  ") {
                *id = Some(ObjectId::from_hex(x.trim()).expect("id"));
            }
        }
    }
    out
}

#[test]
fn spec_examples_decode_and_match_the_encoders() {
    let ex = examples();
    if std::env::var_os("SPEC_PRINT").is_some() {
        for e in &ex {
            println!("{}", render(e));
        }
    }
    let blocks = spec_blocks();
    assert_eq!(
        blocks.len(),
        ex.len(),
        "store-format.md has {} example blocks",
        blocks.len()
    );
    for ((name, bytes, id), e) in blocks.iter().zip(&ex) {
        assert_eq!(name, e.name);
        assert_eq!(
            bytes, &e.bytes,
            "example {name}: the spec's bytes differ from the encoder's"
        );
        if let Some(tag) = e.tag {
            assert_eq!(
                *id,
                Some(ObjectId::compute(tag, bytes)),
                "example {name}: id"
            );
        }
        // And every example decodes, canonically.
        match name.as_str() {
            "chunk" => {}
            "file-entry" | "symlink-entry" | "dir-entry" => {
                // Absolute times: the directory's does not matter.
                let e = Entry::decode(bytes, Timestamp::ZERO).unwrap();
                assert_eq!(Entry::decode(bytes, DIR_TIME).unwrap(), e);
                assert_eq!(&e.encode(), bytes)
            }
            "relative-entry" => {
                let e = Entry::decode(bytes, DIR_TIME).unwrap();
                let want = Timestamp {
                    secs: 1_764_000_000,
                    nanos: 500_000_000,
                };
                assert_eq!(e.mtime, want);
                assert_eq!(&e.encode_in(Some(DIR_TIME)), bytes);
                // The same entry stamped a day later, in a directory a day
                // later, has the same bytes.
                let later = |t: Timestamp| Timestamp {
                    secs: t.secs + 86_400,
                    ..t
                };
                let moved = Entry {
                    mtime: later(want),
                    ..e.clone()
                };
                assert_eq!(&moved.encode_in(Some(later(DIR_TIME))), bytes);
                assert_eq!(Entry::decode(bytes, later(DIR_TIME)).unwrap(), moved);
            }
            "tree-leaf" => {
                let n = Node::decode(bytes.clone()).unwrap();
                assert_eq!((n.level, n.len()), (0, 2));
                assert_eq!(n.key(0), b"hello.txt");
                Entry::decode(n.value(0), Timestamp::ZERO).unwrap();
            }
            "list-node" => assert_eq!(&ListNode::decode(bytes).unwrap().encode(), bytes),
            "snapshot" => {
                let s = Snapshot::decode(bytes).unwrap();
                assert_eq!(&s.encode(), bytes);
                assert_eq!(s.message, "first");
                assert!(s.sources.is_none());
            }
            "snapshot-v2" => {
                let s = Snapshot::decode(bytes).unwrap();
                assert_eq!(&s.encode(), bytes);
                let src = s.sources.unwrap();
                assert_eq!(src.paths, vec!["services"]);
                assert_eq!(src.excludes, vec!["*.log"]);
                assert_eq!(src.dbs[0].location, "data/app.db");
                assert_eq!(src.dbs[0].tables, vec!["users"]);
                assert_eq!(s.skipped[0].path, "services/secret");
            }
            "pack" => {
                let mut r = PackReader::new(&bytes[..], "spec").unwrap();
                let mut n = 0;
                while let Some(rec) = r.next_record().unwrap() {
                    rec.verify().unwrap();
                    n += 1;
                }
                r.expect_eof().unwrap();
                assert_eq!(n, 2);
            }
            "index" => {
                let (_, entries) = index::decode(bytes, Path::new("spec.idx")).unwrap();
                assert_eq!(entries.len(), 2);
            }
            "rows-leaf" => {
                let n = Node::decode(bytes.clone()).unwrap();
                assert_eq!((n.level, n.len()), (0, 2));
                assert_eq!(decode_key(n.key(0)).unwrap(), vec![Value::Integer(1)]);
                let row = decode_row(n.value(0)).unwrap();
                assert_eq!(row[1], Cell::Value(Value::Text(b"ann".to_vec())));
                assert_eq!(&encode_row(&row), n.value(0));
            }
            "table" => {
                let t = TableObject::decode(bytes).unwrap();
                assert_eq!(&t.encode(), bytes);
                assert_eq!(t.name, "users");
                assert_eq!(t.table.unwrap().rows, 2);
            }
            "table-pg" => {
                let t = TableObject::decode(bytes).unwrap();
                assert_eq!(&t.encode(), bytes);
                assert_eq!(t.engine, Engine::Postgres);
                assert_eq!(t.extras[0].kind, ExtraKind::Sequence);
                // Version 1 (SQLite) has no sequence extras.
                let mut v1 = bytes.clone();
                v1.remove(1);
                v1[0] = 1;
                assert!(TableObject::decode(&v1).is_err());
            }
            "bundle" => {
                let mut r = BundleReader::open(&bytes[..], "spec").unwrap();
                assert_eq!(r.header().objects, ObjectParams::default());
                assert_eq!(r.header().refs[0].0, "main");
                assert!(r.header().prerequisites.is_empty());
                let mut n = 0;
                while let Some(o) = r.next_object().unwrap() {
                    unpack(o.tag, &o.id, o.flags, u64::from(o.ulen), &o.payload).unwrap();
                    n += 1;
                }
                assert_eq!(n, 3);
                assert_eq!(r.bytes(), bytes.len() as u64);
                let v = verify(&bytes[..], "spec", None, &NoProgress).unwrap();
                assert_eq!(v.refs[0].id, r.header().refs[0].1);
                assert_eq!(v.external_references, 0);
            }
            "dictionary" => {
                let d = Dictionary::decode(bytes).unwrap();
                assert_eq!(&d.encode(), bytes);
                assert_eq!(d.kind, ObjectType::Chunk);
                assert_eq!(d.content, b"hello, world\n");
            }
            "dict-pack" => {
                let mut r = PackReader::new(&bytes[..], "spec").unwrap();
                let drec = r.next_record().unwrap().unwrap();
                let dict = Dictionary::decode(&drec.verify().unwrap()).unwrap();
                let rec = r.next_record().unwrap().unwrap();
                assert_eq!(rec.flags, FLAG_DICT);
                // Outside its store a flags-3 record cannot be read...
                assert!(rec.verify().is_err());
                // ...with the dictionary it names, it can.
                let did = systemprompt_sync::dict::payload_dict(&rec.payload).unwrap();
                assert_eq!(did, drec.id);
                let data = systemprompt_sync::dict::decompress(
                    rec.tag,
                    &rec.id,
                    rec.ulen,
                    &rec.payload,
                    &did,
                    &dict,
                )
                .unwrap();
                assert_eq!(data, b"hello, world\n".repeat(3));
                assert!(r.next_record().unwrap().is_none());
                r.expect_eof().unwrap();
            }
            "delta-pack" => {
                use systemprompt_sync::pack::{FLAG_DELTA, FLAG_RAW, delta_base, unpack_delta};
                let mut r = PackReader::new(&bytes[..], "spec").unwrap();
                let base = r.next_record().unwrap().unwrap();
                assert_eq!(base.flags, FLAG_RAW);
                let base_bytes = base.verify().unwrap();
                assert_eq!(base_bytes, b"hello, world\n".repeat(3));
                let rec = r.next_record().unwrap().unwrap();
                assert_eq!(rec.flags, FLAG_DELTA);
                // Alone, a delta cannot be read...
                assert!(rec.verify().is_err());
                // ...against the base it names, it can.
                assert_eq!(delta_base(&rec.payload), Some(base.id));
                let data =
                    unpack_delta(rec.tag, &rec.id, rec.ulen, &rec.payload, &base_bytes).unwrap();
                assert_eq!(data, [&base_bytes[..], b"goodbye\n"].concat());
                assert!(r.next_record().unwrap().is_none());
                r.expect_eof().unwrap();
            }
            "watched-hash" => {
                use systemprompt_sync::deploy::{WatchSet, watched_hash};
                use systemprompt_sync::object::{MemStore, ObjectSink};
                // The library's hash of a snapshot of the tree-leaf example...
                let leaf = &blocks.iter().find(|b| b.0 == "tree-leaf").unwrap().1;
                let mem = MemStore::new(true);
                let root = mem.put(ObjectType::Tree, leaf).unwrap();
                let snap = Snapshot {
                    root: Some(root),
                    ..Snapshot::default()
                };
                let (h, _) =
                    watched_hash(&mem, &snap, &WatchSet::new(&["**".into()]).unwrap(), &[])
                        .unwrap();
                // ...is the spec's, computed from the records it shows.
                let dir =
                    blake3::Hasher::new_derive_key("sp-sync 2026-12 watched-hash v1 directory")
                        .update(bytes)
                        .finalize();
                let mut root_input = vec![1u8];
                root_input.extend_from_slice(dir.as_bytes());
                root_input.push(0);
                let want = blake3::Hasher::new_derive_key("sp-sync 2026-12 watched-hash v1 root")
                    .update(&root_input)
                    .finalize();
                assert_eq!(&h.0, want.as_bytes());
                assert_eq!(
                    id.map(|i| i.0),
                    Some(h.0),
                    "watched-hash: the spec's id line should be {}",
                    h.to_hex()
                );
            }
            "empty-tree" => {
                let n = Node::decode(bytes.clone()).unwrap();
                assert_eq!((n.level, n.len()), (0, 0));
            }
            "snapshot-no-files" => {
                use systemprompt_sync::deploy::{WatchSet, watched_hash};
                use systemprompt_sync::diff::diff_trees_vec;
                use systemprompt_sync::object::{MemStore, ObjectSink};
                let s = Snapshot::decode(bytes).unwrap();
                assert_eq!(&s.encode(), bytes);
                assert_eq!((s.root, s.files, s.bytes), (None, 0, 0));
                // Flag 0 reads exactly as a root that is the empty map.
                let mem = MemStore::new(true);
                let empty = &blocks.iter().find(|b| b.0 == "empty-tree").unwrap().1;
                let empty_id = mem.put(ObjectType::Tree, empty).unwrap();
                let with_empty = Snapshot {
                    root: Some(empty_id),
                    ..s.clone()
                };
                assert_ne!(with_empty.id(), s.id(), "two objects");
                assert!(
                    diff_trees_vec(&mem, s.root.as_ref(), Some(&empty_id))
                        .unwrap()
                        .is_empty()
                );
                let watch = WatchSet::new(&["**".into()]).unwrap();
                assert_eq!(
                    watched_hash(&mem, &s, &watch, &[]).unwrap().0,
                    watched_hash(&mem, &with_empty, &watch, &[]).unwrap().0
                );
                // Any other flag is refused.
                // After the flag: files, bytes, tables (00 each), one meta
                // entry (01, 09 "cache.key", 01 "k").
                let at = bytes.len() - (3 + 1 + (1 + 9) + (1 + 1)) - 1;
                assert_eq!(bytes[at], 0, "the root flag");
                let mut bad = bytes.clone();
                bad[at] = 2;
                assert!(Snapshot::decode(&bad).is_err());
            }
            "view" => {
                let t = TableObject::decode(bytes).unwrap();
                assert_eq!(&t.encode(), bytes);
                assert!(t.table.is_none());
                assert_eq!(t.extras[0].kind, ExtraKind::Trigger);
                assert_eq!(t.extras[0].ordinal, 4);
            }
            "block-pack" => {
                // Only a store's own packs may hold blocks.
                assert!(
                    PackReader::new(&bytes[..], "spec")
                        .unwrap()
                        .next_record()
                        .is_err()
                );
                let mut r = PackReader::new(&bytes[..], "spec").unwrap().with_blocks();
                let (la, lb) = block_leaves();
                for (i, leaf) in [la.clone(), lb.clone()].into_iter().enumerate() {
                    let rec = r.next_record().unwrap().unwrap();
                    assert_eq!(rec.member, Some(i as u32));
                    assert_eq!(rec.offset, 9);
                    assert_eq!(rec.id, ObjectId::compute(ObjectType::Rows, &leaf));
                    assert_eq!(rec.verify().unwrap(), leaf);
                }
                assert!(r.next_record().unwrap().is_none());
                r.expect_eof().unwrap();
                // The frame holds the transposed form the spec spells out.
                let hex = |h: &str| -> Vec<u8> {
                    (0..h.len())
                        .step_by(2)
                        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
                        .collect()
                };
                let want = hex(concat!(
                    "08060c040404040408",
                    "010002010002",
                    "026b31026b32026b33026b34",
                    "06060606",
                    "02020202",
                    "01010101",
                    "02040608",
                    "03030303",
                    "0161016201630164"
                ));
                assert_eq!(
                    systemprompt_sync::block::transpose(&[&la, &lb]).unwrap(),
                    want
                );
                let frame = &bytes[16..bytes.len() - 34];
                assert_eq!(zstd::bulk::decompress(frame, 1 << 10).unwrap(), want);
            }
            "zstd-pack" => {
                use systemprompt_sync::pack::FLAG_ZSTD;
                let mut r = PackReader::new(&bytes[..], "spec").unwrap();
                let rec = r.next_record().unwrap().unwrap();
                assert_eq!(rec.flags, FLAG_ZSTD);
                assert_eq!(rec.ulen, 100);
                // Compressed because it saves more than floor(ulen / 32).
                assert!(rec.payload.len() as u64 + rec.ulen / 32 < rec.ulen);
                let data = rec.verify().unwrap();
                assert!(data.ends_with(b"and done.\n"));
                assert!(r.next_record().unwrap().is_none());
                r.expect_eof().unwrap();
            }
            other => panic!("unknown example {other}"),
        }
    }
}

/// The values of the spec's "```spgear NAME" block (Appendix A).
fn spec_table(name: &str) -> Vec<u64> {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("store-format.md"))
            .unwrap();
    let open = format!("```spgear {name}");
    let mut lines = text.lines().skip_while(|l| l.trim() != open);
    assert!(
        lines.next().is_some(),
        "store-format.md has no {open} block"
    );
    let mut out = Vec::new();
    for line in lines.take_while(|l| !l.starts_with("```")) {
        for word in line.split_whitespace() {
            let hex = word.strip_prefix("0x").expect("0x-prefixed values");
            assert_eq!(hex.len(), 16, "{name}: {word} is not 64 bits in hex");
            out.push(u64::from_str_radix(hex, 16).expect("hex"));
        }
    }
    out
}

#[test]
fn appendix_tables_are_the_ones_the_chunker_uses() {
    let gear = spec_table("gear");
    let gear_ls = spec_table("gear_ls");
    let masks = spec_table("masks");
    assert_eq!(gear.len(), 256);
    assert_eq!(gear_ls.len(), 256);
    assert_eq!(masks.len(), 26);
    // What fastcdc::v2020::cut uses: seed 0 gives its default tables.
    let (g, gl) = fastcdc::v2020::get_gear_with_seed(0);
    assert_eq!(&gear[..], &g[..], "Appendix A's GEAR");
    assert_eq!(&gear_ls[..], &gl[..], "Appendix A's GEAR_LS");
    assert_eq!(&masks[..], &fastcdc::v2020::MASKS[..], "Appendix A's MASKS");
    for (a, b) in gear.iter().zip(&gear_ls) {
        assert_eq!(a << 1, *b, "GEAR_LS is GEAR shifted left one bit");
    }
}

/// A chunker written from §4 of the spec and Appendix A alone.
struct SpecChunker {
    min: usize,
    avg: usize,
    max: usize,
    mask_s: u64,
    mask_l: u64,
    gear: Vec<u64>,
    gear_ls: Vec<u64>,
}

impl SpecChunker {
    fn new(min: usize, avg: usize, max: usize, normalization: usize) -> SpecChunker {
        let masks = spec_table("masks");
        let bits = (avg as f64).log2().round() as usize;
        SpecChunker {
            min,
            avg,
            max,
            mask_s: masks[bits + normalization],
            mask_l: masks[bits - normalization],
            gear: spec_table("gear"),
            gear_ls: spec_table("gear_ls"),
        }
    }

    fn cut(&self, src: &[u8]) -> usize {
        if src.len() <= self.min {
            return src.len();
        }
        let remaining = src.len().min(self.max);
        let center = if src.len() < self.avg {
            src.len()
        } else {
            self.avg
        };
        let mut hash: u64 = 0;
        let mut i = self.min / 2;
        for (limit, mask) in [(center / 2, self.mask_s), (remaining / 2, self.mask_l)] {
            while i < limit {
                let a = 2 * i;
                hash = (hash << 2).wrapping_add(self.gear_ls[usize::from(src[a])]);
                if hash & (mask << 1) == 0 {
                    return a;
                }
                hash = hash.wrapping_add(self.gear[usize::from(src[a + 1])]);
                if hash & mask == 0 {
                    return a + 1;
                }
                i += 1;
            }
        }
        remaining
    }

    fn cut_all(&self, mut data: &[u8]) -> Vec<usize> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let n = self.cut(data);
            out.push(n);
            data = &data[n..];
        }
        out
    }
}

/// `n` pseudo-random bytes (xorshift64*), the same on every run.
fn noise(n: usize, mut x: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

#[test]
fn a_chunker_written_from_the_spec_cuts_as_sp_sync_does() {
    use systemprompt_sync::chunker::{Chunker, ChunkerConfig};
    let v1 = ChunkerConfig::default();
    assert_eq!(
        (v1.min, v1.avg, v1.max, v1.normalization),
        (131_072, 262_144, 2_097_152, 1),
        "§4's version-1 parameters"
    );
    let configs = [
        v1,
        ChunkerConfig {
            min: 2048,
            avg: 8192,
            max: 65_536,
            normalization: 1,
            ..ChunkerConfig::default()
        },
        ChunkerConfig {
            min: 64,
            avg: 256,
            max: 1024,
            normalization: 3,
            ..ChunkerConfig::default()
        },
        ChunkerConfig {
            min: 1000,
            avg: 3000,
            max: 9000,
            normalization: 0,
            ..ChunkerConfig::default()
        },
        ChunkerConfig {
            min: 4096,
            avg: 16_384,
            max: 131_072,
            normalization: 2,
            ..ChunkerConfig::default()
        },
    ];
    for (i, cfg) in configs.iter().enumerate() {
        let lib = Chunker::new(cfg);
        let spec = SpecChunker::new(
            cfg.min as usize,
            cfg.avg as usize,
            cfg.max as usize,
            cfg.normalization as usize,
        );
        // Enough random input for dozens of chunks, an odd length, a run
        // of zeros (no cut point: chunks of max), and text.
        let n = (cfg.max as usize) * 24 + 1;
        let mut data = noise(n, 0x9e37_79b9_7f4a_7c15 + i as u64);
        data.extend(std::iter::repeat_n(0u8, cfg.max as usize * 3 + 7));
        data.extend(b"hello, world\n".repeat(cfg.max as usize / 4));
        data.extend(noise(cfg.min as usize * 3 + 1, 7));
        let want = lib.cut_all(&data);
        let got = spec.cut_all(&data);
        assert_eq!(got, want, "config {cfg:?}");
        // The cut points fall before and after the average (both masks).
        let body = &got[..got.len() - 1];
        assert!(body.len() >= 20, "{cfg:?}: {} chunks", got.len());
        assert!(
            body.iter()
                .all(|&c| c >= cfg.min as usize && c <= cfg.max as usize)
        );
        assert!(body.iter().any(|&c| c < cfg.avg as usize), "{cfg:?}");
        assert!(
            body.iter()
                .any(|&c| c > cfg.avg as usize && c < cfg.max as usize),
            "{cfg:?}"
        );
        assert!(body.contains(&(cfg.max as usize)), "{cfg:?}");
        // And reading in buffers cuts the same chunks.
        let mut streamed = Vec::new();
        lib.stream(&mut &data[..], 0, |_, cuts| {
            streamed.extend_from_slice(cuts);
            Ok(())
        })
        .unwrap();
        assert_eq!(streamed, want, "streamed, {cfg:?}");
    }
}

/// §3.6 against a real SQLite database: ordinals count every
/// `sqlite_schema` row with SQL from 0 (`sqlite_sequence` included,
/// automatic indexes not), extras are the indexes and triggers whose
/// `tbl_name` is the object (a view's `INSTEAD OF` trigger too), and both
/// kinds of generated columns are left out of `columns` and of the rows.
#[test]
fn sqlite_schema_entries_are_read_as_section_3_6_says() {
    use systemprompt_sync::chunker::{Chunker, ChunkerConfig};
    use systemprompt_sync::db::{DbSource, scan};
    use systemprompt_sync::object::{MemStore, ObjectSource};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY AUTOINCREMENT, a TEXT,
             v INT GENERATED ALWAYS AS (length(a)) VIRTUAL,
             s INT GENERATED ALWAYS AS (id * 2) STORED);
         CREATE TABLE u(k TEXT PRIMARY KEY, b);
         CREATE INDEX t_a ON t(a);
         CREATE VIEW w AS SELECT a FROM t;
         CREATE TRIGGER w_ins INSTEAD OF INSERT ON w BEGIN INSERT INTO t(a) VALUES (new.a); END;
         INSERT INTO t(a) VALUES ('hello');
         INSERT INTO u VALUES ('x', 1);",
    )
    .unwrap();
    let schema: Vec<(String, Option<String>)> = c
        .prepare("SELECT name, sql FROM sqlite_schema ORDER BY rowid")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    // t, sqlite_sequence, u's automatic index (no SQL), u, t_a, w, w_ins.
    let names: Vec<&str> = schema.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "t",
            "sqlite_sequence",
            "u",
            "sqlite_autoindex_u_1",
            "t_a",
            "w",
            "w_ins"
        ]
    );
    assert!(schema[3].1.is_none());
    drop(c);
    let mem = MemStore::new(true);
    let chunker = Chunker::new(&ChunkerConfig::default());
    let src = DbSource {
        path: path.clone(),
        tables: Vec::new(),
        missing_ok: false,
    };
    let res = scan(&src, &mem, &chunker, &NoProgress, None).unwrap();
    assert_eq!(
        res.objects.keys().map(String::as_str).collect::<Vec<_>>(),
        ["t", "u", "w"],
        "no object for sqlite_sequence"
    );
    let load = |n: &str| {
        TableObject::decode(&mem.get(ObjectType::Table, &res.objects[n]).unwrap()).unwrap()
    };
    let t = load("t");
    assert_eq!(t.ordinal, 0);
    let td = t.table.as_ref().unwrap();
    let cols: Vec<&str> = td.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        cols,
        ["id", "a"],
        "VIRTUAL and STORED generated columns left out"
    );
    assert_eq!(
        (td.flags, td.key.clone(), td.sequence),
        (0, vec![0], Some(1))
    );
    assert_eq!(
        t.extras
            .iter()
            .map(|e| (e.kind, e.name.as_str(), e.ordinal))
            .collect::<Vec<_>>(),
        [(ExtraKind::Index, "t_a", 3)]
    );
    // The row holds the stored columns only: (1, 'hello').
    let leaf = Node::decode(mem.get(ObjectType::Rows, &td.root).unwrap()).unwrap();
    assert_eq!(
        decode_row(leaf.value(0)).unwrap(),
        [
            Cell::Value(Value::Integer(1)),
            Cell::Value(Value::Text(b"hello".to_vec()))
        ]
    );
    let u = load("u");
    // sqlite_sequence counted (1), the automatic index not.
    assert_eq!(u.ordinal, 2);
    let ud = u.table.as_ref().unwrap();
    assert_eq!(
        (ud.flags, ud.key.clone(), ud.sequence),
        (0x02, vec![0], None)
    );
    assert!(u.extras.is_empty(), "automatic indexes are not kept");
    let w = load("w");
    assert_eq!(w.ordinal, 4);
    assert!(w.table.is_none());
    assert_eq!(
        w.extras
            .iter()
            .map(|e| (e.kind, e.name.as_str(), e.ordinal))
            .collect::<Vec<_>>(),
        [(ExtraKind::Trigger, "w_ins", 5)]
    );
}

/// §3.4 and §3.5 against a real walk: `files` counts regular files and
/// symlinks, `bytes` the regular files' sizes only; a FIFO and a socket
/// leave no entry (and no `skipped` record); two hard links to one file are
/// two ordinary entries; an empty directory's snapshot has the empty map
/// (root flag 1) as its root.
#[test]
fn a_snapshot_records_what_sections_3_4_and_3_5_say() {
    use systemprompt_sync::object::ObjectSource;
    use systemprompt_sync::pmap::MapIter;
    use systemprompt_sync::snapshot::{SnapshotOptions, snapshot};
    use systemprompt_sync::store::{LockMode, Store};
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("empty")).unwrap();
    std::fs::write(src.join("a"), b"hello").unwrap();
    std::fs::hard_link(src.join("a"), src.join("b")).unwrap();
    std::os::unix::fs::symlink("a-long-target", src.join("link")).unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(src.join("pipe"))
        .status()
        .unwrap();
    assert!(status.success());
    let _sock = std::os::unix::net::UnixListener::bind(src.join("sock")).unwrap();
    let dir = tmp.path().join("store");
    Store::init(&dir).unwrap();
    let mut store = Store::open(&dir, LockMode::Shared).unwrap();
    store.set_cache_dir(tmp.path().join("cache"));
    let take = |path: &Path, store: &Store| {
        let opts = SnapshotOptions {
            sources: vec![path.to_path_buf()],
            ref_name: String::new(),
            ..Default::default()
        };
        let r = snapshot(store, &opts, &NoProgress).unwrap();
        Snapshot::decode(&store.get(ObjectType::Snapshot, &r.id).unwrap()).unwrap()
    };
    let s = take(&src, &store);
    assert_eq!(s.files, 3, "a, b and link");
    assert_eq!(s.bytes, 10, "a and b; the symlink counts 0");
    assert!(
        s.skipped.is_empty(),
        "special files are not `skipped` records"
    );
    let root = s.root.expect("root flag 1");
    let entries: Vec<(Vec<u8>, Entry)> = MapIter::new(&store, ObjectType::Tree, root)
        .map(|e| {
            let (k, v) = e.unwrap();
            (k, Entry::decode(&v, Timestamp::ZERO).unwrap())
        })
        .collect();
    let names: Vec<&[u8]> = entries.iter().map(|(k, _)| k.as_slice()).collect();
    assert_eq!(names, [&b"a"[..], b"b", b"empty", b"link"]);
    assert_eq!(
        entries[0].1.kind, entries[1].1.kind,
        "hard links: two files"
    );
    assert!(matches!(entries[1].1.kind, EntryKind::File { size: 5, .. }));
    // §10: the stat cache is named after the canonicalized source path
    // (each followed by NUL), so the same directory reached through a
    // symlink uses the same cache file.
    let stat_dir = tmp.path().join("cache").join("stat");
    let canon = std::fs::canonicalize(&src).unwrap();
    let mut key = canon.as_os_str().as_encoded_bytes().to_vec();
    key.push(0);
    let name = hex(&blake3::hash(&key).as_bytes()[..16]);
    let cached = || {
        let mut v: Vec<String> = std::fs::read_dir(&stat_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(cached(), std::slice::from_ref(&name));
    let file = std::fs::read(stat_dir.join(&name)).unwrap();
    assert_eq!(&file[..9], b"SPSYNCSC\x01");
    std::os::unix::fs::symlink(&src, tmp.path().join("alias")).unwrap();
    take(&tmp.path().join("alias"), &store);
    assert_eq!(cached(), [name], "the same cache through a symlink");
    // An empty directory: the empty map, not root flag 0.
    let e = take(&src.join("empty"), &store);
    assert_eq!(
        e.root,
        Some(ObjectId::compute(ObjectType::Tree, &[1, 0, 0])),
        "the empty map"
    );
    assert_eq!((e.files, e.bytes), (0, 0));
}

proptest::proptest! {
    /// §6's raw-or-compressed rule, exactly: raw under 64 bytes, at level 0,
    /// or when zstd does not save more than floor(ulen / 32) bytes.
    #[test]
    fn records_are_raw_exactly_when_section_6_says(
        seed: u64,
        len in 0usize..600,
        alphabet in 1u8..=255,
        level in 0i32..=5,
    ) {
        use systemprompt_sync::pack::{FLAG_RAW, FLAG_ZSTD, compress};
        // From very compressible (one letter) to not at all (255 of them).
        let data: Vec<u8> = noise(len, seed | 1).iter().map(|b| b % alphabet).collect();
        let (flags, payload) = compress(&data, level);
        let worth = level > 0
            && data.len() >= 64
            && zstd::bulk::compress(&data, level).unwrap().len() + data.len() / 32 < data.len();
        if worth {
            proptest::prop_assert_eq!(flags, FLAG_ZSTD);
            proptest::prop_assert_eq!(zstd::bulk::decompress(&payload, len).unwrap(), data);
        } else {
            proptest::prop_assert_eq!(flags, FLAG_RAW);
            proptest::prop_assert_eq!(payload, data);
        }
    }
}

/// The examples written inline in the prose (§1's varints and zigzags,
/// §3.7's keys and PostgreSQL row), encoded and decoded by the library.
#[test]
fn inline_examples_of_sections_1_and_3_7() {
    use systemprompt_sync::codec::{Reader, Writer};
    for (v, b) in [
        (0u64, &[0x00][..]),
        (127, &[0x7f]),
        (128, &[0x80, 0x01]),
        (300, &[0xac, 0x02]),
    ] {
        let mut w = Writer::new();
        w.varint(v);
        assert_eq!(w.into_vec(), b);
        assert_eq!(Reader::new(b).varint().unwrap(), v);
    }
    for (v, b) in [(0i64, 0x00u8), (-1, 0x01), (1, 0x02)] {
        let mut w = Writer::new();
        w.zigzag(v);
        assert_eq!(w.into_vec(), [b]);
    }
    // Overlong and overflowing varints are refused.
    assert!(Reader::new(&[0x80, 0x00]).varint().is_err());
    assert!(Reader::new(&[0xff; 10]).varint().is_err());
    let zeros = |n: usize| vec![0u8; n];
    let key = |v: &[Value]| encode_key(v).unwrap();
    let mut one = vec![0x02, 0x03, 0x40, 0x00];
    one.extend(zeros(8));
    one.extend([0x00, 0x00]);
    assert_eq!(key(&[Value::Integer(1)]), one);
    let mut two = vec![0x02, 0x03, 0x40, 0x01];
    two.extend(zeros(8));
    two.extend([0x00, 0x00]);
    assert_eq!(key(&[Value::Integer(2)]), two);
    let mut half = vec![0x02, 0x03, 0x40, 0x00, 0x80];
    half.extend(zeros(7));
    half.extend([0x00, 0x01]);
    assert_eq!(key(&[Value::Real(1.5)]), half);
    let mut minus = vec![0x02, 0x01, 0xbf, 0xff];
    minus.extend([0xff; 8]);
    minus.extend([0x00, 0x00]);
    assert_eq!(key(&[Value::Integer(-1)]), minus);
    let mut nan = vec![0x02, 0x03];
    nan.extend([0xff; 10]);
    nan.extend([0x00, 0x01]);
    assert_eq!(key(&[Value::Real(f64::NAN)]), nan);
    assert_eq!(decode_key(&nan).unwrap(), [Value::Real(f64::NAN)]);
    assert_eq!(key(&[Value::Text(b"a".to_vec())]), [0x03, 0x61, 0x00, 0x01]);
    let mut pair = vec![0x02, 0x03, 0x40, 0x00];
    pair.extend(zeros(8));
    pair.extend([0x03, 0x62, 0x00, 0x01, 0x00, 0x01]);
    let real_b = key(&[Value::Real(1.0), Value::Text(b"b".to_vec())]);
    assert_eq!(real_b, pair);
    assert!(real_b < key(&[Value::Integer(1), Value::Text(b"c".to_vec())]));
    for k in [one, two, half, minus, pair] {
        assert_eq!(encode_key(&decode_key(&k).unwrap()).unwrap(), k);
    }
    // §3.7: the PostgreSQL row (7, true, 'a', 1.50::numeric).
    let row = [
        Cell::Value(Value::Integer(7)),
        Cell::Value(Value::Integer(1)),
        Cell::Value(Value::Text(b"a".to_vec())),
        Cell::Value(Value::Text(b"1.50".to_vec())),
    ];
    let b = [
        0x04, 0x01, 0x0e, 0x01, 0x02, 0x03, 0x01, 0x61, 0x03, 0x04, 0x31, 0x2e, 0x35, 0x30,
    ];
    assert_eq!(encode_row(&row), b);
    assert_eq!(decode_row(&b).unwrap(), row);
}
