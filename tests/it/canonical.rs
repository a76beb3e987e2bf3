//! What a store receives must have the types its references name (a
//! snapshot whose root "tree" is a chunk is refused by push and pull, over
//! a path remote and a real `sp-sync serve`), and a store may only hold
//! shapes the writer produces: `fsck` rejects a
//! hand-built tree node, chunk list or row map that is not canonical (the
//! same directory, file or table would otherwise have several ids), walks of
//! absurdly deep trees end with a clear error instead of a crash, and a store
//! made with other id-deciding parameters is refused.

use crate::common;
use crate::net;

use std::collections::BTreeMap;
use std::path::Path;

use common::{fails, ok, run_in};
use systemprompt_sync::codec::Writer;
use systemprompt_sync::db::value::{Value, encode_key};
use systemprompt_sync::object::list::{ChunkRef, ListNode, MAX_INLINE, is_list_boundary};
use systemprompt_sync::object::snapshot::Snapshot;
use systemprompt_sync::object::tree::{Content, Entry, EntryKind, Timestamp};
use systemprompt_sync::object::{MemStore, ObjectSink};
use systemprompt_sync::pmap::{self, MapIter};
use systemprompt_sync::{LockMode, ObjectId, ObjectType, Store};

fn init(dir: &Path) -> std::path::PathBuf {
    let w = dir.join("w");
    std::fs::create_dir_all(&w).unwrap();
    ok(&w, &["init"]);
    w
}

fn store(w: &Path) -> Store {
    Store::open(&w.join(".sp-sync"), LockMode::Shared).unwrap()
}

/// Stores a snapshot of `root` (and `tables`) and points `name` at it,
/// writing the ref file directly (no check of what it names).
fn plant_snapshot(
    w: &Path,
    root: Option<ObjectId>,
    tables: BTreeMap<String, ObjectId>,
    name: &str,
) -> ObjectId {
    let st = store(w);
    let s = st.writer().unwrap();
    let snap = Snapshot {
        root,
        tables,
        message: "hand-built".into(),
        ..Default::default()
    };
    let id = s.put(ObjectType::Snapshot, &snap.encode()).unwrap();
    s.finish().unwrap();
    std::fs::write(w.join(".sp-sync/refs").join(name), format!("{id}\n")).unwrap();
    id
}

fn file_entry(content: &[u8]) -> Entry {
    Entry {
        mode: 0o644,
        mtime: Timestamp::default(),
        kind: EntryKind::File {
            size: content.len() as u64,
            content: Content::Inline(if content.is_empty() {
                vec![]
            } else {
                vec![ChunkRef {
                    id: ObjectId::compute(ObjectType::Chunk, content),
                    len: content.len() as u64,
                }]
            }),
        },
    }
}

/// Encodes one leaf node holding `entries` (sorted), as the node format
/// says, whatever the boundary rule would do.
fn leaf_node(entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut w = Writer::new();
    w.u8(pmap::NODE_VERSION).u8(0).varint(entries.len() as u64);
    for (k, v) in entries {
        w.bytes(k).bytes(v);
    }
    w.buf
}

fn fsck_errors(w: &Path) -> String {
    let o = run_in(w, &["fsck"]);
    assert_eq!(o.status.code(), Some(1), "fsck must fail: {o:?}");
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn fsck_rejects_a_tree_node_the_boundary_rule_would_have_split() {
    let tmp = tempfile::tempdir().unwrap();
    let w = init(tmp.path());
    let empty = file_entry(b"").encode();
    // Enough entries that the writer makes several nodes of them.
    let entries: Vec<(Vec<u8>, Vec<u8>)> = (0..400)
        .map(|i| (format!("file-{i:04}.md").into_bytes(), empty.clone()))
        .collect();
    let mem = MemStore::new(true);
    let canonical = pmap::build(
        ObjectType::Tree,
        &mem,
        entries.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
    )
    .unwrap();
    assert!(mem.len() > 2, "the writer splits these entries");

    // The canonical map passes.
    {
        let st = store(&w);
        let s = st.writer().unwrap();
        pmap::build(
            ObjectType::Tree,
            &s,
            entries.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
        )
        .unwrap();
        s.finish().unwrap();
    }
    plant_snapshot(&w, Some(canonical), BTreeMap::new(), "good");
    ok(&w, &["fsck"]);

    // The same directory as one leaf: another id for the same contents.
    let st = store(&w);
    let s = st.writer().unwrap();
    let one = s.put(ObjectType::Tree, &leaf_node(&entries)).unwrap();
    s.finish().unwrap();
    drop(st);
    assert_ne!(one, canonical);
    plant_snapshot(&w, Some(one), BTreeMap::new(), "main");
    // Readers list it like the canonical one; fsck says what it is.
    assert_eq!(ok(&w, &["ls", "main"]), ok(&w, &["ls", "good"]));
    let err = fsck_errors(&w);
    assert!(err.contains("not canonical"), "{err}");
    assert!(err.contains(&one.to_hex()), "names the node: {err}");
    assert!(err.contains("ref main"), "says what reaches it: {err}");
    // gc never deletes on the strength of a damaged store.
    let err = fails(&w, &["gc"], 1);
    assert!(err.contains("not canonical"), "{err}");
}

#[test]
fn fsck_rejects_an_internal_root_with_one_child() {
    let tmp = tempfile::tempdir().unwrap();
    let w = init(tmp.path());
    let st = store(&w);
    let s = st.writer().unwrap();
    let e = file_entry(b"").encode();
    let leaf = s
        .put(ObjectType::Tree, &leaf_node(&[(b"a".to_vec(), e)]))
        .unwrap();
    let mut n = Writer::new();
    n.u8(pmap::NODE_VERSION)
        .u8(1)
        .varint(1)
        .bytes(b"a")
        .id(&leaf);
    let root = s.put(ObjectType::Tree, &n.buf).unwrap();
    s.finish().unwrap();
    drop(st);
    plant_snapshot(&w, Some(root), BTreeMap::new(), "main");
    let err = fsck_errors(&w);
    assert!(err.contains("single child"), "{err}");
}

/// Chunks whose ids end a list node (first four bytes under the threshold)
/// and chunks whose ids do not.
fn chunks(st: &Store, n_plain: usize, n_cut: usize) -> (Vec<ChunkRef>, Vec<ChunkRef>) {
    let s = st.writer().unwrap();
    let (mut plain, mut cut) = (Vec::new(), Vec::new());
    let mut i = 0u64;
    while plain.len() < n_plain || cut.len() < n_cut {
        let data = format!("chunk {i}\n").into_bytes();
        i += 1;
        let id = ObjectId::compute(ObjectType::Chunk, &data);
        let c = ChunkRef {
            id,
            len: data.len() as u64,
        };
        // A boundary for any position past the minimum.
        if is_list_boundary(&id, 100) {
            if cut.len() < n_cut {
                s.put(ObjectType::Chunk, &data).unwrap();
                cut.push(c);
            }
        } else if plain.len() < n_plain {
            s.put(ObjectType::Chunk, &data).unwrap();
            plain.push(c);
        }
    }
    s.finish().unwrap();
    (plain, cut)
}

fn file_with_list(st: &Store, level: u8, list: &[ChunkRef]) -> (ObjectId, Entry) {
    let s = st.writer().unwrap();
    let node = ListNode {
        level,
        entries: list.to_vec(),
    };
    let id = s.put(ObjectType::List, &node.encode()).unwrap();
    s.finish().unwrap();
    let size: u64 = list.iter().map(|c| c.len).sum();
    let e = Entry {
        mode: 0o644,
        mtime: Timestamp::default(),
        kind: EntryKind::File {
            size,
            content: Content::Indirect { level, root: id },
        },
    };
    (id, e)
}

fn plant_file(w: &Path, e: &Entry) {
    let st = store(w);
    let s = st.writer().unwrap();
    let root = s
        .put(ObjectType::Tree, &leaf_node(&[(b"f".to_vec(), e.encode())]))
        .unwrap();
    s.finish().unwrap();
    drop(st);
    plant_snapshot(w, Some(root), BTreeMap::new(), "main");
}

#[test]
fn fsck_rejects_a_short_list_that_should_be_inline() {
    let tmp = tempfile::tempdir().unwrap();
    let w = init(tmp.path());
    let st = store(&w);
    let (plain, _) = chunks(&st, 3, 0);
    let (list, e) = file_with_list(&st, 0, &plain);
    drop(st);
    plant_file(&w, &e);
    // Readers accept it: the file restores.
    ok(
        &w,
        &["restore", "main", tmp.path().join("out").to_str().unwrap()],
    );
    let err = fsck_errors(&w);
    assert!(
        err.contains(&format!("a list of 3 chunks (at most {MAX_INLINE}")),
        "{err}"
    );
    assert!(err.contains(&list.to_hex()), "{err}");
    assert!(err.contains("path f"), "{err}");
}

#[test]
fn fsck_rejects_a_list_node_that_runs_past_a_boundary() {
    let tmp = tempfile::tempdir().unwrap();
    let w = init(tmp.path());
    let st = store(&w);
    let (plain, cut) = chunks(&st, 39, 1);
    // 40 chunks (more than inline), one of them a boundary at position 11:
    // the writer would end the node there.
    let mut list = plain.clone();
    list.insert(10, cut[0]);
    let (id, e) = file_with_list(&st, 0, &list);
    // Control: the same 40 chunks as the writer makes them pass fsck.
    drop(st);
    plant_file(&w, &e);
    let err = fsck_errors(&w);
    assert!(err.contains("not canonical"), "{err}");
    assert!(err.contains(&id.to_hex()), "{err}");

    // Without the boundary entry, one node of 39 chunks is canonical.
    let st = store(&w);
    let (_, e) = file_with_list(&st, 0, &plain);
    drop(st);
    plant_file(&w, &e);
    ok(&w, &["fsck"]);
}

#[test]
fn fsck_rejects_a_row_map_key_that_disagrees_with_its_row() {
    let tmp = tempfile::tempdir().unwrap();
    let w = init(tmp.path());
    let db = tmp.path().join("app.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "CREATE TABLE t(k TEXT PRIMARY KEY, v INTEGER);
         INSERT INTO t VALUES ('a', 1), ('b', 2), ('c', 3);",
    )
    .unwrap();
    drop(c);
    ok(&w, &["snapshot", "--db", db.to_str().unwrap(), "-m", "db"]);
    ok(&w, &["fsck"]);
    let st = store(&w);
    let snap_id = st.read_ref("main").unwrap().unwrap();
    let snap = systemprompt_sync::names::load_snapshot(&st, &snap_id).unwrap();
    let tid = snap.tables["t"];
    let mut t = systemprompt_sync::db::load_table(&st, &tid).unwrap();
    let data = t.table.as_mut().unwrap();
    // The row ('b', 2) under the key 'bb': sorted, well formed, and a lie.
    let rows: Vec<(Vec<u8>, Vec<u8>)> = MapIter::new(&st, ObjectType::Rows, data.root)
        .map(|e| e.unwrap())
        .collect();
    assert_eq!(rows.len(), 3);
    let kb = encode_key(&[Value::Text(b"b".to_vec())]).unwrap();
    let kbb = encode_key(&[Value::Text(b"bb".to_vec())]).unwrap();
    let forged: Vec<(Vec<u8>, Vec<u8>)> = rows
        .into_iter()
        .map(|(k, v)| if k == kb { (kbb.clone(), v) } else { (k, v) })
        .collect();
    let s = st.writer().unwrap();
    data.root = pmap::build(
        ObjectType::Rows,
        &s,
        forged.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
    )
    .unwrap();
    let tid2 = s.put(ObjectType::Table, &t.encode()).unwrap();
    s.finish().unwrap();
    drop(st);
    let mut tables = snap.tables.clone();
    tables.insert("t".into(), tid2);
    plant_snapshot(&w, snap.root, tables, "main");
    let err = fsck_errors(&w);
    assert!(
        err.contains("disagrees with its row's key columns (k)"),
        "{err}"
    );
    assert!(err.contains("table t"), "{err}");
}

/// A chain of `depth` directories `d/d/d/…`, stored by hand.
fn deep_tree(w: &Path, depth: usize) -> ObjectId {
    let st = store(w);
    let s = st.writer().unwrap();
    let mut id = s.put(ObjectType::Tree, &pmap::empty_map_bytes()).unwrap();
    for _ in 0..depth {
        let e = Entry {
            mode: 0o755,
            mtime: Timestamp::default(),
            kind: EntryKind::Dir { tree: id },
        };
        id = s
            .put(ObjectType::Tree, &leaf_node(&[(b"d".to_vec(), e.encode())]))
            .unwrap();
    }
    s.finish().unwrap();
    id
}

#[test]
fn walks_of_a_12000_deep_tree_end_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let w = init(tmp.path());
    let root = deep_tree(&w, 12_000);
    plant_snapshot(&w, Some(root), BTreeMap::new(), "main");
    let empty = deep_tree(&w, 0);
    plant_snapshot(&w, Some(empty), BTreeMap::new(), "empty");
    let err = fsck_errors(&w);
    assert!(err.contains("deeper than 1024 levels"), "{err}");
    for args in [
        vec!["diff", "empty", "main"],
        vec!["diff", "main", "empty"],
        vec!["ls", "-r", "main"],
        vec!["restore", "main", "restored"],
    ] {
        let err = fails(&w, &args, 1);
        assert!(err.contains("deeper than 1024 levels"), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    }
}

#[test]
fn a_12000_deep_tree_is_sent_over_an_older_snapshot_and_refused_by_the_check() {
    // The lean-push hint walks the changed trees recursively; past the depth
    // limit it gives up and full (iterative) negotiation sends everything.
    let tmp = tempfile::tempdir().unwrap();
    let w = init(tmp.path());
    let empty = deep_tree(&w, 0);
    let old = plant_snapshot(&w, Some(empty), BTreeMap::new(), "main");
    let remote = tmp.path().join("remote");
    ok(&w, &["push", remote.to_str().unwrap()]);
    let root = deep_tree(&w, 12_000);
    let st = store(&w);
    let s = st.writer().unwrap();
    let snap = Snapshot {
        parents: vec![old],
        root: Some(root),
        message: "deep".into(),
        ..Default::default()
    };
    let id = s.put(ObjectType::Snapshot, &snap.encode()).unwrap();
    s.finish().unwrap();
    st.update_ref("main", None, Some(id)).unwrap();
    drop(st);
    // Negotiated and sent without running out of stack; then the remote
    // checks the snapshot as fsck does before its ref moves, and a tree
    // deeper than any restore or `ls` reads is refused there: one line, the
    // ref where it was.
    let err = fails(&w, &["push", remote.to_str().unwrap()], 1);
    assert!(err.contains("deeper than 1024 levels"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert_eq!(
        std::fs::read_to_string(remote.join("refs/main")).unwrap(),
        format!("{old}\n")
    );
    let _ = id;
}

#[test]
fn walks_of_a_tree_just_under_the_depth_limit_succeed() {
    let tmp = tempfile::tempdir().unwrap();
    let w = init(tmp.path());
    let root = deep_tree(&w, 1000);
    plant_snapshot(&w, Some(root), BTreeMap::new(), "main");
    let empty = deep_tree(&w, 0);
    plant_snapshot(&w, Some(empty), BTreeMap::new(), "empty");
    ok(&w, &["fsck"]);
    let out = ok(&w, &["diff", "empty", "main"]);
    let deepest = format!("{}d/", "d/".repeat(999));
    assert!(
        out.lines().any(|l| l.ends_with(&deepest)),
        "{}",
        &out[out.len() - 200..]
    );
    let out = ok(&w, &["ls", "-r", "main"]);
    assert_eq!(out.lines().count(), 1000);
    ok(&w, &["restore", "main", "restored"]);
    assert!(w.join("restored").join("d/".repeat(1000)).is_dir());
}

#[test]
fn a_store_made_with_other_object_parameters_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let w = init(tmp.path());
    std::fs::write(w.join("f"), "x").unwrap();
    ok(&w, &["snapshot", "-m", "one"]);
    let cfg = w.join(".sp-sync/store.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("[objects]"), "{text}");
    assert!(text.contains("[objects.tree_leaf]"), "{text}");

    // Other map node sizes: refused with a clear error, nothing read.
    let other = text.replacen("target = 4096", "target = 8192", 1);
    assert_ne!(other, text);
    std::fs::write(&cfg, &other).unwrap();
    let err = fails(&w, &["log"], 1);
    assert!(err.contains("object parameters"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");

    // A store from before the record (no [objects] at all) works as before.
    let start = text.find("[objects]").unwrap();
    let old: String = text[..start].to_string();
    assert!(!old.contains("tree_leaf"));
    std::fs::write(&cfg, &old).unwrap();
    ok(&w, &["log"]);
    ok(&w, &["fsck"]);
}

/// A store holding the chunk of "hello\n" and a snapshot whose root "tree"
/// is that chunk, with ref `evil` naming it (written directly: the store's
/// own ref update would refuse it).
fn plant_chunk_as_tree(store_dir: &Path) -> (ObjectId, ObjectId) {
    let st = Store::open(store_dir, LockMode::Shared).unwrap();
    let s = st.writer().unwrap();
    let chunk = s.put(ObjectType::Chunk, b"hello\n").unwrap();
    let snap = Snapshot {
        root: Some(chunk),
        message: "a chunk as the root tree".into(),
        ..Default::default()
    };
    let id = s.put(ObjectType::Snapshot, &snap.encode()).unwrap();
    s.finish().unwrap();
    std::fs::write(store_dir.join("refs/evil"), format!("{id}\n")).unwrap();
    (chunk, id)
}

#[test]
fn a_ref_never_moves_to_a_snapshot_whose_root_is_a_chunk() {
    let tmp = tempfile::tempdir().unwrap();
    let w = init(tmp.path());
    let (chunk, id) = plant_chunk_as_tree(&w.join(".sp-sync"));
    let st = store(&w);
    let e = st.update_ref("other", None, Some(id)).unwrap_err();
    assert!(
        e.to_string().contains(&format!(
            "references {chunk} as a tree, but that object is a chunk"
        )),
        "{e}"
    );
    assert_eq!(st.read_ref("other").unwrap(), None);
    // fsck says what is wrong with the planted ref.
    let err = fsck_errors(&w);
    assert!(
        err.contains("referenced as a tree, but the object stored is a chunk"),
        "{err}"
    );
    assert!(err.contains("ref evil"), "{err}");
}

/// A working tree whose snapshot `main` holds the file "hello\n": the
/// chunk is already there, so only the hostile snapshot travels.
fn with_hello(dir: &Path) -> std::path::PathBuf {
    let w = init(dir);
    std::fs::write(w.join("x"), "hello\n").unwrap();
    ok(&w, &["snapshot", "-m", "hello"]);
    w
}

#[test]
fn pull_refuses_a_snapshot_whose_root_is_a_chunk() {
    let tmp = tempfile::tempdir().unwrap();
    let w = with_hello(tmp.path());
    let remote = tmp.path().join("remote");
    Store::init(&remote).unwrap();
    let (chunk, _) = plant_chunk_as_tree(&remote);
    let err = fails(&w, &["pull", remote.to_str().unwrap(), "evil"], 1);
    assert!(
        err.contains(&format!(
            "references {chunk} as a tree, but that object is a chunk"
        )),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(!ok(&w, &["ref", "list"]).contains("evil"));
    ok(&w, &["fsck"]);
}

#[test]
fn a_path_remote_refuses_a_pushed_snapshot_whose_root_is_a_chunk() {
    let tmp = tempfile::tempdir().unwrap();
    let w = with_hello(tmp.path());
    let remote = tmp.path().join("remote");
    ok(&w, &["push", remote.to_str().unwrap()]);
    let (chunk, _) = plant_chunk_as_tree(&w.join(".sp-sync"));
    let err = fails(&w, &["push", remote.to_str().unwrap(), "evil"], 1);
    assert!(
        err.contains(&format!(
            "references {chunk} as a tree, but that object is a chunk"
        )),
        "{err}"
    );
    assert!(!remote.join("refs/evil").exists());
    ok(tmp.path(), &["fsck", "--store", remote.to_str().unwrap()]);
}

#[test]
fn a_server_refuses_a_pushed_snapshot_whose_root_is_a_chunk() {
    let tmp = tempfile::tempdir().unwrap();
    let w = with_hello(tmp.path());
    let data = tmp.path().join("server-data");
    let server = net::serve(data.to_str().unwrap(), None, "127.0.0.1:0", &[]);
    let url = server.url("acme");
    ok(&w, &["push", &url]);
    let (chunk, snap) = plant_chunk_as_tree(&w.join(".sp-sync"));
    let err = fails(&w, &["push", &url, "evil"], 1);
    assert!(
        err.contains(&format!(
            "references {chunk} as a tree, but that object is a chunk"
        )),
        "{err}"
    );
    // Not stored, so no ref can name it.
    let (status, body) = net::http(&server.addr, "GET", "/v1/acme/refs", None, b"");
    assert_eq!(status, 200);
    assert!(!String::from_utf8_lossy(&body).contains("evil"));
    let req = format!(r#"{{"new":"{snap}","force":true}}"#);
    let (status, _) = net::http(
        &server.addr,
        "POST",
        "/v1/acme/refs/evil",
        None,
        req.as_bytes(),
    );
    assert!((400..500).contains(&status), "{status}");
}

/// A file whose chunk list says a chunk is longer than it is (a file of
/// 100 bytes made of one 6-byte chunk said to be 100): `fsck` reports the
/// chunk (from the index, reading no data) and `cat` fails instead of
/// writing 6 bytes with exit 0, as `restore` does.
#[test]
fn a_chunk_list_that_lies_about_a_length_is_caught_by_fsck_and_cat() {
    let tmp = tempfile::tempdir().unwrap();
    let w = init(tmp.path());
    {
        let st = store(&w);
        let s = st.writer().unwrap();
        s.put(ObjectType::Chunk, b"short\n").unwrap();
        s.finish().unwrap();
    }
    let e = Entry {
        mode: 0o644,
        mtime: Timestamp::default(),
        kind: EntryKind::File {
            size: 100,
            content: Content::Inline(vec![ChunkRef {
                id: ObjectId::compute(ObjectType::Chunk, b"short\n"),
                len: 100,
            }]),
        },
    };
    plant_file(&w, &e);
    for args in [&["fsck"][..], &["fsck", "--read-data"]] {
        let o = run_in(&w, args);
        let out = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(o.status.code(), Some(1), "{args:?}: {out}");
        assert!(
            out.contains("holds 6 bytes where its file's chunk list says 100"),
            "{out}"
        );
    }
    let err = fails(&w, &["cat", "main:f"], 1);
    assert!(err.contains("6 bytes where the list says 100"), "{err}");
}
