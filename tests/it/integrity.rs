//! Damage is found and never restored as good data: flipping any single
//! byte of any pack or index is reported by `fsck --read-data` (exit 1), and
//! `restore` either fails or writes exactly the snapshotted bytes.

use crate::common;

use std::path::{Path, PathBuf};

use common::{bytes, describe, fails, ok, run_in};

/// A working tree with small and multi-chunk files, snapshotted twice.
fn setup(dir: &Path) -> (PathBuf, std::collections::BTreeMap<Vec<u8>, String>) {
    setup_with(dir, false, false)
}

/// `setup`; with `dictionaries`, 60 more small files and a dictionary
/// trained after 4 KiB of samples (store format 2, records with flags 3).
fn setup_with(
    dir: &Path,
    dictionaries: bool,
    repack: bool,
) -> (PathBuf, std::collections::BTreeMap<Vec<u8>, String>) {
    let w = dir.join("w");
    std::fs::create_dir_all(w.join("agents/nested")).unwrap();
    if dictionaries {
        std::fs::create_dir_all(w.join("pages")).unwrap();
        for i in 0..60 {
            std::fs::write(
                w.join(format!("pages/p{i}.md")),
                format!(
                    "# page {i}\n\n{}",
                    "some shared words of the pages\n".repeat(3 + i % 5)
                ),
            )
            .unwrap();
        }
        let snap = |args: &[&str]| {
            let o = std::process::Command::new(common::bin())
                .args(args)
                .current_dir(&w)
                .env("SP_SYNC_CACHE_DIR", common::cache_dir())
                .env("SP_SYNC_DICT_TRAIN_BYTES", "4096")
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        };
        std::fs::write(w.join("agents/a.md"), "# agent a\n".repeat(50)).unwrap();
        std::fs::write(w.join("agents/nested/b.md"), "# agent b\n").unwrap();
        std::fs::write(w.join("big.bin"), bytes(9 << 20, 3)).unwrap();
        snap(&["init"]);
        snap(&["snapshot", "-m", "one"]);
        let st = std::fs::read_to_string(w.join(".sp-sync/store.toml")).unwrap();
        assert!(st.contains("format = 2"), "no dictionary was trained");
        let mut want = describe(&w);
        want.retain(|k, _| !k.starts_with(b".sp-sync"));
        return (w, want);
    }
    std::fs::write(w.join("agents/a.md"), "# agent a\n".repeat(50)).unwrap();
    std::fs::write(w.join("agents/nested/b.md"), "# agent b\n").unwrap();
    std::fs::write(w.join("big.bin"), bytes(9 << 20, 3)).unwrap();
    std::fs::write(w.join("empty"), "").unwrap();
    std::os::unix::fs::symlink("agents/a.md", w.join("link")).unwrap();
    ok(&w, &["init"]);
    ok(&w, &["snapshot", "-m", "one"]);
    std::fs::write(w.join("agents/c.md"), "# agent c\n").unwrap();
    ok(&w, &["snapshot", "-m", "two"]);
    if repack {
        // A third version whose changed chunks the repack stores as deltas
        // against the second's (store format 3), its small chunks and
        // directory nodes in blocks (format 4).
        let mut big = bytes(9 << 20, 3);
        big[5 << 20..(5 << 20) + 100].fill(7);
        std::fs::write(w.join("big.bin"), big).unwrap();
        std::fs::write(w.join("agents/a.md"), "# agent a\n".repeat(60)).unwrap();
        std::fs::write(w.join("agents/c.md"), "# agent c, again\n").unwrap();
        ok(&w, &["snapshot", "-m", "three"]);
        ok(&w, &["gc", "--repack"]);
        let st = std::fs::read_to_string(w.join(".sp-sync/store.toml")).unwrap();
        assert!(st.contains("format = 4"), "nothing was stored in a block");
    }
    let mut want = describe(&w);
    want.retain(|k, _| !k.starts_with(b".sp-sync"));
    (w, want)
}

fn store_files(w: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(w.join(".sp-sync/packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn flip(p: &Path, at: u64) {
    let mut b = std::fs::read(p).unwrap();
    b[at as usize] ^= 0x20;
    std::fs::write(p, b).unwrap();
}

#[test]
fn every_flipped_byte_is_reported_and_never_restored_as_good() {
    flipped_bytes(false, false);
}

/// The same after `gc --repack`: flipped bytes in stored deltas (their
/// flags, the base id they name, their frame) and in the bases they need.
#[test]
fn every_flipped_byte_of_a_repacked_store_is_reported_and_never_restored_as_good() {
    flipped_bytes(false, true);
}

/// The same with a dictionary: flipped bytes in the dictionary object, in
/// the records compressed with it and in the dictionary ids they name.
#[test]
fn every_flipped_byte_of_a_dictionary_store_is_reported_and_never_restored_as_good() {
    flipped_bytes(true, false);
}

/// Offsets in pack `f` inside its delta records (flags, base id, frame)
/// and inside the records of the bases they name, from its index.
fn delta_spots(f: &Path) -> Vec<u64> {
    if f.extension().is_none_or(|e| e != "pack") {
        return Vec::new();
    }
    let b = std::fs::read(f.with_extension("idx")).unwrap();
    let n = u32::from_le_bytes(b[41..45].try_into().unwrap()) as usize;
    let pack = std::fs::read(f).unwrap();
    let entry = |i: usize| &b[45 + 50 * i..45 + 50 * (i + 1)];
    let mut out = Vec::new();
    for i in 0..n {
        let e = entry(i);
        if e[33] != 2 {
            continue;
        }
        let off = u64::from_le_bytes(e[34..42].try_into().unwrap());
        let clen = u64::from(u32::from_le_bytes(e[42..46].try_into().unwrap()));
        let ulen = u64::from(u32::from_le_bytes(e[46..50].try_into().unwrap()));
        let start = off + systemprompt_sync::pack::record_header_len(ulen, clen);
        out.extend([off + 2, start + 1, start + 30, start + 33, start + clen - 1]);
        let base = &pack[start as usize..start as usize + 32];
        if let Some(j) = (0..n).find(|&j| &entry(j)[..32] == base) {
            let be = entry(j);
            let boff = u64::from_le_bytes(be[34..42].try_into().unwrap());
            let bclen = u64::from(u32::from_le_bytes(be[42..46].try_into().unwrap()));
            let bulen = u64::from(u32::from_le_bytes(be[46..50].try_into().unwrap()));
            if be[33] == 4 {
                // A member of a block (§6.1): its mode byte and its block's
                // member sizes and frame.
                out.extend([boff + 2, boff + 6, boff + 40]);
                continue;
            }
            let bstart = boff + systemprompt_sync::pack::record_header_len(bulen, bclen);
            out.extend([bstart, bstart + bclen / 2, bstart + bclen - 1]);
        }
    }
    out
}

/// Offsets in pack `f` inside its dictionary record and inside the first
/// records compressed with it (their dictionary id and frame), from its index.
fn dictionary_spots(f: &Path) -> Vec<u64> {
    if f.extension().is_none_or(|e| e != "pack") {
        return Vec::new();
    }
    let b = std::fs::read(f.with_extension("idx")).unwrap();
    let n = u32::from_le_bytes(b[41..45].try_into().unwrap()) as usize;
    let mut out = Vec::new();
    let mut users = 0;
    for i in 0..n {
        let e = &b[45 + 50 * i..45 + 50 * (i + 1)];
        let off = u64::from_le_bytes(e[34..42].try_into().unwrap());
        let clen = u64::from(u32::from_le_bytes(e[42..46].try_into().unwrap()));
        if e[32] == 7 {
            out.extend((0..12).map(|k| off + 38 + clen * k / 12));
        } else if e[33] == 3 && users < 4 {
            users += 1;
            out.extend([off + 2, off + 40, off + 38 + 20, off + 38 + 32 + 3]);
        }
    }
    out
}

fn flipped_bytes(dictionaries: bool, repack: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let (w, want) = setup_with(tmp.path(), dictionaries, repack);
    ok(&w, &["fsck", "--read-data"]);
    let files = store_files(&w);
    assert!(
        files
            .iter()
            .any(|f| f.extension().is_some_and(|e| e == "idx"))
    );
    let mut checked = 0;
    let mut delta_spots_seen = 0;
    for f in &files {
        let len = std::fs::metadata(f).unwrap().len();
        // The first 48 bytes (a pack's header and first record header, an
        // index's 45-byte header), the last 40 (a pack's end record and
        // trailer, an index's checksum) and 24 offsets spread over the rest;
        // random flips anywhere are the corruption harness's (tests/it/corruption.rs).
        let mut offsets: Vec<u64> = (0..len.min(48))
            .chain(len.saturating_sub(40)..len)
            .collect();
        offsets.extend((1..=24).map(|i| len * i / 25));
        if dictionaries {
            offsets.extend(dictionary_spots(f));
        }
        if repack {
            let spots = delta_spots(f);
            delta_spots_seen += spots.len();
            offsets.extend(spots);
        }
        offsets.sort_unstable();
        offsets.dedup();
        for at in offsets {
            flip(f, at);
            let o = run_in(&w, &["fsck", "--read-data"]);
            let out = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            assert_eq!(
                o.status.code(),
                Some(1),
                "flip at {at} of {} not reported by fsck --read-data:\n{out}",
                f.display()
            );
            assert!(
                out.contains("pack") || out.contains("index") || out.contains("reached from"),
                "fsck output does not say where: {out}"
            );
            let target = tmp.path().join(format!("restore-{checked}"));
            let r = run_in(&w, &["restore", "main", target.to_str().unwrap()]);
            match r.status.code() {
                Some(0) => {
                    let mut got = describe(&target);
                    got.retain(|k, _| !k.starts_with(b".sp-sync"));
                    assert_eq!(
                        got,
                        want,
                        "restore exited 0 with wrong content after flip at {at} of {}",
                        f.display()
                    );
                }
                Some(1) => {
                    let err = String::from_utf8_lossy(&r.stderr);
                    assert_eq!(err.trim_end().lines().count(), 1, "one error line: {err}");
                }
                c => panic!("restore exited {c:?} after flip at {at} of {}", f.display()),
            }
            let _ = std::fs::remove_dir_all(&target);
            flip(f, at);
            checked += 1;
        }
    }
    assert!(checked > 100, "only {checked} flips tried");
    assert_eq!(
        repack,
        delta_spots_seen >= 8,
        "{delta_spots_seen} delta spots"
    );
    ok(&w, &["fsck", "--read-data"]);
}

#[test]
fn a_damaged_chunk_is_named_with_what_reaches_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (w, _) = setup(tmp.path());
    // Find the chunk of agents/nested/b.md and damage its stored bytes.
    let (pack, offset, id) = {
        let store = systemprompt_sync::Store::open(
            &w.join(".sp-sync"),
            systemprompt_sync::LockMode::Shared,
        )
        .unwrap();
        let (_, e, _) = systemprompt_sync::resolve_path(&store, "main:agents/nested/b.md").unwrap();
        let systemprompt_sync::object::tree::EntryKind::File {
            content: systemprompt_sync::object::tree::Content::Inline(chunks),
            ..
        } = e.kind
        else {
            panic!("expected an inline file")
        };
        let id = chunks[0].id;
        let loc = store.location(&id).unwrap();
        (
            store.pack_path(&store.pack_name(loc.pack).unwrap()),
            loc.offset,
            id,
        )
    };
    // The payload of a 10-byte raw chunk ends the record: flip its last byte.
    let hlen = 35 + 1 + 1;
    flip(&pack, offset + hlen + 9);
    let o = run_in(&w, &["fsck", "--read-data"]);
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out
        .lines()
        .find(|l| l.contains(&id.to_hex()))
        .unwrap_or_else(|| panic!("no line names chunk {id}: {out}"));
    assert!(line.contains("reached from ref main"), "{line}");
    assert!(line.contains("agents/nested/b.md"), "{line}");
    // Restore refuses, naming the object, and writes no wrong bytes.
    let target = tmp.path().join("out");
    let err = fails(&w, &["restore", "main", target.to_str().unwrap()], 1);
    assert!(err.contains(&id.to_hex()), "{err}");
    let restored = target.join("agents/nested/b.md");
    if restored.exists() {
        assert_eq!(std::fs::read(&restored).unwrap(), b"# agent b\n");
    }
    // `cat` of another file still works.
    assert_eq!(ok(&w, &["cat", "main:agents/c.md"]), "# agent c\n");
}

#[test]
fn rebuild_index_recovers_a_deleted_or_damaged_index() {
    let tmp = tempfile::tempdir().unwrap();
    let (w, want) = setup(tmp.path());
    let idx: Vec<PathBuf> = store_files(&w)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "idx"))
        .collect();
    std::fs::remove_file(&idx[0]).unwrap();
    flip(&idx[1], 60);
    let o = run_in(&w, &["fsck"]);
    assert_eq!(o.status.code(), Some(1));
    ok(&w, &["fsck", "--rebuild-index", "--read-data"]);
    ok(&w, &["fsck", "--read-data"]);
    let target = tmp.path().join("out");
    ok(&w, &["restore", "main", target.to_str().unwrap()]);
    let mut got = describe(&target);
    got.retain(|k, _| !k.starts_with(b".sp-sync"));
    assert_eq!(got, want);
}
