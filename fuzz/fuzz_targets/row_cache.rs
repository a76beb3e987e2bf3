//! The row cache file (store-format §10.1), read back from the machine's
//! cache directory: reading never panics, whatever the bytes, and a file
//! read to its end without error is byte for byte what the writer makes of
//! the keys, root and xid it gave (one encoding per content). The input
//! is the file without its checksum, which is added, so that mutations get
//! past it and reach the rows (a wrong checksum is the unit tests' part).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use systemprompt_sync::db::rowcache::{CacheReader, CacheWriter};

fn dir() -> &'static (tempfile::TempDir, PathBuf, PathBuf) {
    static D: OnceLock<(tempfile::TempDir, PathBuf, PathBuf)> = OnceLock::new();
    D.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("in"), d.path().join("out"));
        (d, a, b)
    })
}

fuzz_target!(|data: &[u8]| {
    let (_, input, output) = dir();
    let mut file = data.to_vec();
    file.extend_from_slice(blake3::hash(data).as_bytes());
    std::fs::write(input, &file).unwrap();
    // The identity the file names, so that inputs get past that check.
    let ident: [u8; 32] = data
        .get(9..41)
        .and_then(|s| s.try_into().ok())
        .unwrap_or([0; 32]);
    let Ok(Some((mut r, xid))) = CacheReader::open(input, &ident) else {
        return;
    };
    let mut keys = Vec::new();
    loop {
        match r.next_row() {
            Ok(Some(k)) => keys.push(k.to_vec()),
            Ok(None) => break,
            Err(_) => return,
        }
    }
    let Ok(root) = r.finish() else {
        return;
    };
    let mut w = CacheWriter::create(output, &ident, xid).unwrap();
    for k in &keys {
        w.row(k);
    }
    w.finish(&root).unwrap();
    assert_eq!(
        std::fs::read(output).unwrap(),
        file,
        "an accepted row cache is not what the writer makes of its rows"
    );
});
