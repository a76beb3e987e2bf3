//! Writes a synthetic store for the scale measurements
//! (`scripts/scale.sh`): N small distinct files (one chunk each) in
//! directories of 1,000, as one snapshot on `main` — N chunk objects plus
//! about N/1000 + 1 tree nodes, written straight through the library (the
//! same writer a snapshot uses) without first making N files on disk.
//! `scale STORE_DIR next` then writes a second snapshot on ref `next`
//! (parent: `main`) with one more file in the last directory, in a pack of
//! its own: what a push after a small change negotiates.
//!
//! ```sh
//! cargo run --release --example scale -- STORE_DIR N
//! ```

use std::path::Path;
use std::time::Instant;

use systemprompt_sync::object::ObjectSink;
use systemprompt_sync::object::list::ChunkRef;
use systemprompt_sync::object::tree::{Content, Entry, EntryKind, Timestamp};
use systemprompt_sync::{LockMode, ObjectType, Snapshot, Store};

/// A file entry of `data` stored as the one chunk `id`.
fn file_entry(id: systemprompt_sync::ObjectId, data: &[u8]) -> Entry {
    Entry {
        mode: 0o644,
        mtime: Timestamp::default(),
        kind: EntryKind::File {
            size: data.len() as u64,
            content: Content::Inline(vec![ChunkRef {
                id,
                len: data.len() as u64,
            }]),
        },
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (dir, n) = match args.as_slice() {
        [_, dir, flag] if flag == "next" => return next(Path::new(dir)),
        [_, dir, n] => (Path::new(dir), n.parse::<u64>()?),
        _ => {
            eprintln!("usage: scale STORE_DIR N | scale STORE_DIR next");
            std::process::exit(2);
        }
    };
    Store::init(dir)?;
    let store = Store::open(dir, LockMode::Shared)?;
    let start = Instant::now();
    let session = store.writer()?;
    let per_dir = 1000u64;
    let mut dirs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut i = 0u64;
    while i < n {
        let mut files: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for j in 0..per_dir.min(n - i) {
            let k = i + j;
            // Distinct, incompressible-looking content: stored raw, like
            // most small config and skill files after compression.
            let h = blake3::hash(&k.to_le_bytes());
            let data = format!("file {k:012} {}\n", &h.to_hex()[..32]);
            let id = session.put(ObjectType::Chunk, data.as_bytes())?;
            let e = file_entry(id, data.as_bytes());
            files.push((format!("f{j:04}").into_bytes(), e.encode()));
        }
        let tree = systemprompt_sync::pmap::build(
            ObjectType::Tree,
            &session as &dyn ObjectSink,
            files.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
        )?;
        let e = Entry {
            mode: 0o755,
            mtime: Timestamp::default(),
            kind: EntryKind::Dir { tree },
        };
        dirs.push((format!("d{:07}", i / per_dir).into_bytes(), e.encode()));
        i += per_dir;
        if (i / per_dir).is_multiple_of(1000) {
            eprintln!("{i} objects, {:.0} s", start.elapsed().as_secs_f64());
        }
    }
    let root = systemprompt_sync::pmap::build(
        ObjectType::Tree,
        &session as &dyn ObjectSink,
        dirs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
    )?;
    let snap = Snapshot {
        root: Some(root),
        message: format!("{n} synthetic files"),
        ..Default::default()
    };
    let id = session.put(ObjectType::Snapshot, &snap.encode())?;
    session.finish()?;
    store.update_ref("main", None, Some(id))?;
    println!(
        "wrote {n} files ({} objects) in {:.1} s",
        store.object_count(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `next`: main's root with one more file in its last directory.
fn next(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::open(dir, LockMode::Shared)?;
    let main = store.read_ref("main")?.ok_or("no main")?;
    let session = store.writer()?;
    let mut dirs: Vec<(Vec<u8>, Vec<u8>)> = systemprompt_sync::list(&store, "main", false)?
        .into_iter()
        .map(|(name, e)| (name, e.encode()))
        .collect();
    let last = String::from_utf8(dirs.last().ok_or("empty root")?.0.clone())?;
    let mut files: Vec<(Vec<u8>, Vec<u8>)> =
        systemprompt_sync::list(&store, &format!("main:{last}"), false)?
            .into_iter()
            .map(|(name, e)| {
                let base = name.rsplit(|b| *b == b'/').next().unwrap_or(&name).to_vec();
                (base, e.encode())
            })
            .collect();
    let data = b"one more file\n";
    let chunk = session.put(ObjectType::Chunk, data)?;
    let e = file_entry(chunk, data);
    files.push((b"zz-new".to_vec(), e.encode()));
    let tree = systemprompt_sync::pmap::build(
        ObjectType::Tree,
        &session as &dyn ObjectSink,
        files.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
    )?;
    if let Some(d) = dirs.last_mut() {
        d.1 = Entry {
            mode: 0o755,
            mtime: Timestamp::default(),
            kind: EntryKind::Dir { tree },
        }
        .encode();
    }
    let root = systemprompt_sync::pmap::build(
        ObjectType::Tree,
        &session as &dyn ObjectSink,
        dirs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
    )?;
    let snap = Snapshot {
        root: Some(root),
        parents: vec![main],
        message: "one more file".into(),
        ..Default::default()
    };
    let id = session.put(ObjectType::Snapshot, &snap.encode())?;
    session.finish()?;
    store.update_ref("next", None, Some(id))?;
    println!("next = {id}");
    Ok(())
}
