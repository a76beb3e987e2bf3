//! Table objects through `restore --db`: whatever SQL a decoded table object
//! carries, a restore onto a database with a bystander table, and into a
//! new file, never panics, never changes the bystander, never leaves a
//! file behind when it fails, and writes nothing outside its directory.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use systemprompt_sync::NoProgress;
use systemprompt_sync::chunker::Chunker;
use systemprompt_sync::db::restore::{DbRestoreOptions, restore_db};
use systemprompt_sync::db::table::TableObject;
use systemprompt_sync::object::{MemStore, ObjectSink};
use systemprompt_sync::pmap::MapBuilder;
use systemprompt_sync::store::ChunkerConfig;
use systemprompt_sync::{ObjectId, ObjectType};

fn secrets(db: &std::path::Path) -> Vec<String> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut st = c.prepare("SELECT x FROM secrets ORDER BY rowid").unwrap();
    st.query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

fn listing(dir: &std::path::Path) -> Vec<std::ffi::OsString> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    v.sort();
    v
}

fuzz_target!(|data: &[u8]| {
    let Ok(mut t) = TableObject::decode(data) else {
        return;
    };
    if t.name.eq_ignore_ascii_case("secrets") {
        // The bystander is not a bystander when the snapshot names it.
        return;
    }
    let store = MemStore::new(true);
    // An empty row map, so the schema is what gets exercised.
    if let Some(d) = &mut t.table {
        d.root = MapBuilder::new(ObjectType::Rows, &store).finish().unwrap();
        d.rows = 0;
    }
    let id: ObjectId = store.put(ObjectType::Table, &t.encode()).unwrap();
    let tables: BTreeMap<String, ObjectId> = [(t.name.clone(), id)].into();
    let chunker = Chunker::new(&ChunkerConfig::default());
    let outer = tempfile::tempdir().unwrap();
    let dir = outer.path().join("d");
    std::fs::create_dir(&dir).unwrap();
    let victim = dir.join("victim.db");
    rusqlite::Connection::open(&victim)
        .unwrap()
        .execute_batch("CREATE TABLE secrets(x TEXT); INSERT INTO secrets VALUES ('keep');")
        .unwrap();
    let opts = DbRestoreOptions {
        delete: true,
        ..Default::default()
    };
    let _ = restore_db(&store, &tables, &victim, &chunker, &opts, &NoProgress);
    assert_eq!(secrets(&victim), vec!["keep".to_string()]);
    let files = listing(&dir);
    assert_eq!(files, vec![std::ffi::OsString::from("victim.db")]);
    let new = dir.join("new.db");
    if restore_db(&store, &tables, &new, &chunker, &opts, &NoProgress).is_err() {
        assert_eq!(listing(&dir), files, "a failed restore left a file");
    }
    assert_eq!(secrets(&victim), vec!["keep".to_string()]);
    assert_eq!(listing(outer.path()), vec![std::ffi::OsString::from("d")]);
});
