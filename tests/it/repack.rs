//! Stored deltas (store format 3) and `gc --repack`: a repacked store reads
//! back every snapshot exactly, reading any object decodes at most four
//! records (a longer chain, a cycle or a missing base is an error, never
//! other bytes), gc keeps the bases live deltas need, and push, pull and
//! bundles carry repacked objects to stores that have none of them.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{describe, fails, ok, run_in};
use proptest::prelude::*;
use systemprompt_sync::object::{ObjectSink, ObjectSource};
use systemprompt_sync::pack::{
    FLAG_BLOCK, FLAG_DELTA, FLAG_DICT, MAX_CHAIN_RECORDS, PackReader, StoredObject, make_delta,
    record_header_len,
};
use systemprompt_sync::{LockMode, ObjectId, ObjectType, Store};

/// Text that changes a little from one version to the next.
fn text(version: usize, seed: usize) -> String {
    let mut s = String::new();
    for line in 0..1500 {
        if (line * 7 + seed) % 211 < version {
            s.push_str(&format!(
                "line {line} was edited in version {version} ({seed})\n"
            ));
        } else {
            s.push_str(&format!(
                "line {line} of file {seed}: the quick brown fox jumps over the lazy dog\n"
            ));
        }
    }
    s
}

/// Writes `data` to `p` unless it holds that already (unchanged files
/// keep their mtime, as in a real tree).
fn put(p: &Path, data: &str) {
    if std::fs::read(p).ok().as_deref() != Some(data.as_bytes()) {
        std::fs::write(p, data).unwrap();
    }
}

/// Version `v` of a working tree: 60 text files in 3 directories (each
/// changes every fifth version), one of 800 KiB (several chunks) that
/// changes every time, and a file that comes and goes.
fn fill(w: &Path, v: usize) {
    for i in 0..60 {
        let d = w.join(format!("dir{}", i % 3));
        std::fs::create_dir_all(&d).unwrap();
        put(
            &d.join(format!("f{i}.txt")),
            &text(3 * ((v + i % 5) / 5), i),
        );
    }
    let big: String = (0..8).map(|k| text(v, 100 + k)).collect();
    put(&w.join("big.txt"), &big);
    if v.is_multiple_of(2) {
        std::fs::write(w.join("sometimes.txt"), format!("version {v}\n")).unwrap();
    } else {
        let _ = std::fs::remove_file(w.join("sometimes.txt"));
    }
}

fn described(dir: &Path) -> BTreeMap<Vec<u8>, String> {
    let mut d = describe(dir);
    d.retain(|k, _| !k.starts_with(b".sp-sync"));
    d
}

fn format_of(w: &Path) -> String {
    common::format_of(&w.join(".sp-sync"))
}

/// Every record of every pack of the store: (pack, offset, tag, flags, id,
/// ulen, payload); a member of a block has flags 4 and its bytes, and
/// shares its block's offset.
type Rec = (PathBuf, u64, ObjectType, u8, ObjectId, u64, Vec<u8>);

fn records(store: &Path) -> Vec<Rec> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(store.join("packs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "pack") {
            continue;
        }
        let f = std::fs::File::open(&p).unwrap();
        let mut r = PackReader::new(std::io::BufReader::new(f), "test")
            .unwrap()
            .with_blocks();
        while let Some(rec) = r.next_record().unwrap() {
            out.push((
                p.clone(),
                rec.offset,
                rec.tag,
                if rec.member.is_some() {
                    FLAG_BLOCK
                } else {
                    rec.flags
                },
                rec.id,
                rec.ulen,
                rec.payload,
            ));
        }
    }
    out
}

/// Snapshots `versions` versions of a tree; returns (id, tree) of each.
fn history(w: &Path, versions: usize) -> Vec<(String, BTreeMap<Vec<u8>, String>)> {
    std::fs::create_dir_all(w).unwrap();
    ok(w, &["init"]);
    let mut out = Vec::new();
    for v in 0..versions {
        fill(w, v);
        let id = ok(w, &["snapshot", "-m", &format!("v{v}")])
            .trim()
            .to_string();
        out.push((id, described(w)));
    }
    out
}

fn restores(w: &Path, tmp: &Path, snaps: &[(String, BTreeMap<Vec<u8>, String>)]) {
    for (i, (id, want)) in snaps.iter().enumerate() {
        let t = tmp.join(format!("restore-{i}"));
        ok(w, &["restore", id, t.to_str().unwrap()]);
        assert!(&described(&t) == want, "snapshot {i} restores other files");
        std::fs::remove_dir_all(&t).unwrap();
    }
}

/// The number of records a read of each stored object decodes.
fn chain_lengths(store: &Path) -> Vec<usize> {
    let s = Store::open(store, LockMode::Shared).unwrap();
    let mut out = Vec::new();
    for (id, _) in s.all_objects() {
        let mut n = 1;
        let mut cur = id;
        while let Some(b) = s.delta_base_of(&cur).unwrap() {
            n += 1;
            cur = b;
            assert!(n <= 16, "a cycle");
        }
        out.push(n);
    }
    out
}

#[test]
fn gc_repack_stores_deltas_and_every_snapshot_restores_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path().join("w");
    let snaps = history(&w, 9);
    assert_ne!(format_of(&w), "format = 3");
    let before = common::dir_bytes(&w.join(".sp-sync/packs"));
    let dry = ok(&w, &["gc", "--repack", "--dry-run", "--json"]);
    let dry: serde_json::Value = serde_json::from_str(&dry).unwrap();
    assert_eq!(dry["dry_run"], true);
    assert_ne!(format_of(&w), "format = 3", "a dry run changes nothing");
    let out = ok(&w, &["gc", "--repack", "--json"]);
    let rep: serde_json::Value = serde_json::from_str(&out).unwrap();
    let deltas = rep["delta_objects"].as_u64().unwrap();
    let (b, a) = (
        rep["repack_bytes_before"].as_u64().unwrap(),
        rep["repack_bytes_after"].as_u64().unwrap(),
    );
    assert!(deltas > 40, "{out}");
    assert!(a * 2 < b, "the repack saved too little: {out}");
    let after = common::dir_bytes(&w.join(".sp-sync/packs"));
    assert!(after * 2 < before, "{before} -> {after}");
    assert_eq!(format_of(&w), "format = 4");
    let recs = records(&w.join(".sp-sync"));
    let n_delta = recs.iter().filter(|r| r.3 == FLAG_DELTA).count();
    assert_eq!(n_delta as u64, deltas);
    // Changed chunks as deltas; tree nodes stored whole in blocks, chunks
    // never.
    let has = |flags: u8, t: ObjectType| recs.iter().any(|r| r.3 == flags && r.2 == t);
    assert!(has(FLAG_DELTA, ObjectType::Chunk));
    assert!(has(FLAG_BLOCK, ObjectType::Tree));
    assert!(!has(FLAG_BLOCK, ObjectType::Chunk));
    // Each object once: the old packs are gone.
    let mut ids: Vec<ObjectId> = recs.iter().map(|r| r.4).collect();
    ids.sort();
    let n = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), n);
    let chains = chain_lengths(&w.join(".sp-sync"));
    assert!(chains.iter().all(|&n| n <= MAX_CHAIN_RECORDS), "{chains:?}");
    assert!(chains.contains(&MAX_CHAIN_RECORDS), "chains are used");
    ok(&w, &["fsck", "--read-data"]);
    restores(&w, tmp.path(), &snaps);
    // The human report says what the repack did.
    let out = ok(&w, &["gc", "--repack"]);
    assert!(out.contains("stored as deltas"), "{out}");
    restores(&w, tmp.path(), &snaps);
    ok(&w, &["fsck", "--read-data"]);
    // A diff between snapshots reads through the chains too.
    let d = ok(&w, &["diff", &snaps[0].0, &snaps[8].0]);
    assert!(d.contains("dir0/f0.txt"), "{d}");
}

#[test]
fn gc_keeps_the_bases_of_live_deltas_after_their_snapshots_go() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path().join("w");
    std::fs::create_dir_all(&w).unwrap();
    ok(&w, &["init"]);
    // Old versions on a ref of their own; the newest on `main`, a new
    // history whose first snapshot has no parent: its objects are paired
    // with the old ref's last snapshot (the one before it in time).
    for v in 0..3 {
        fill(&w, v);
        ok(&w, &["snapshot", "--ref", "old", "-m", &format!("v{v}")]);
    }
    fill(&w, 3);
    let main = ok(&w, &["snapshot", "-m", "v3"]).trim().to_string();
    let want = described(&w);
    ok(&w, &["gc", "--repack"]);
    ok(&w, &["ref", "delete", "old"]);
    let out = ok(&w, &["gc", "--json"]);
    let rep: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(rep["kept_bases"].as_u64().unwrap() > 0, "{out}");
    assert!(rep["removed_objects"].as_u64().unwrap() > 0, "{out}");
    ok(&w, &["fsck", "--read-data"]);
    restores(&w, tmp.path(), &[(main.clone(), want.clone())]);
    // A new repack stores what the bases were needed for whole; the next
    // gc then removes the bases.
    ok(&w, &["gc", "--repack"]);
    let out = ok(&w, &["gc", "--json"]);
    let rep: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rep["kept_bases"].as_u64().unwrap(), 0, "{out}");
    ok(&w, &["fsck", "--read-data"]);
    restores(&w, tmp.path(), &[(main, want)]);
}

/// A base gc keeps for a live delta keeps everything it reaches: a store
/// vouches for what lies under every object it holds, and a push or pull
/// never asks about it. Here the remote keeps ref a's tree node as the base
/// of b's after a goes; a's own file must stay with it, or pushing a back
/// would move the ref onto a snapshot without that file.
#[test]
fn a_kept_base_keeps_what_it_reaches() {
    let tmp = tempfile::tempdir().unwrap();
    let (l, r) = (tmp.path().join("l"), tmp.path().join("r"));
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for d in [&l, &r] {
        std::fs::create_dir_all(d).unwrap();
        ok(d, &["init", "-q"]);
    }
    for i in 0..100 {
        std::fs::write(
            src.join(format!("f{i}.txt")),
            format!("file {i} {i:0200}\n"),
        )
        .unwrap();
    }
    std::fs::write(src.join("changing.bin"), common::bytes(20_000, 1)).unwrap();
    let s = src.to_str().unwrap();
    let a = ok(&l, &["snapshot", s, "--ref", "a", "-q"])
        .trim()
        .to_string();
    let want = described(&src);
    std::fs::write(src.join("changing.bin"), common::bytes(20_000, 2)).unwrap();
    ok(&l, &["snapshot", s, "--ref", "b", "-q"]);
    let remote = r.join(".sp-sync");
    let rs = remote.to_str().unwrap();
    ok(&l, &["push", rs, "a", "b", "-q"]);
    let out = ok(&r, &["gc", "--repack", "--json"]);
    let rep: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(rep["delta_objects"].as_u64().unwrap() > 0, "{out}");
    ok(&r, &["ref", "delete", "a", "-q"]);
    let out = ok(&r, &["gc", "--json"]);
    let rep: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(rep["kept_bases"].as_u64().unwrap() > 0, "{out}");
    ok(&r, &["fsck", "--read-data"]);
    ok(&l, &["push", rs, "a", "-q"]);
    ok(&r, &["fsck", "--read-data"]);
    let t = tmp.path().join("out");
    ok(&r, &["restore", &a, t.to_str().unwrap()]);
    assert!(described(&t) == want, "a restores other files");
}

#[test]
fn push_pull_and_bundles_carry_repacked_objects() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path().join("w");
    let snaps = history(&w, 5);
    ok(&w, &["gc", "--repack"]);
    assert_eq!(format_of(&w), "format = 4");
    // Push into an empty store: it receives every object whole.
    let r = tmp.path().join("r");
    std::fs::create_dir_all(&r).unwrap();
    ok(&r, &["init"]);
    let rs = r.join(".sp-sync");
    ok(&w, &["push", rs.to_str().unwrap(), "main"]);
    ok(&r, &["fsck", "--read-data"]);
    let f = format_of(&r);
    assert!(
        f == "format = 1" || f == "format = 2",
        "{f}: the receiver holds no delta"
    );
    restores(&r, tmp.path(), &snaps);
    // Pull from the repacked store.
    let p = tmp.path().join("p");
    std::fs::create_dir_all(&p).unwrap();
    ok(&p, &["init"]);
    let ws = w.join(".sp-sync");
    ok(&p, &["pull", ws.to_str().unwrap(), "main"]);
    ok(&p, &["fsck", "--read-data"]);
    restores(&p, tmp.path(), &snaps);
    // A bundle of the repacked store, imported elsewhere.
    let b = tmp.path().join("all.spb");
    ok(&w, &["bundle", "create", b.to_str().unwrap(), "main"]);
    ok(&w, &["bundle", "verify", b.to_str().unwrap()]);
    let i = tmp.path().join("i");
    std::fs::create_dir_all(&i).unwrap();
    ok(&i, &["init"]);
    ok(&i, &["bundle", "import", b.to_str().unwrap()]);
    ok(&i, &["fsck", "--read-data"]);
    restores(&i, tmp.path(), &snaps);
    // A push from the repacked store after one more snapshot sends deltas
    // against what the receiver has (decoded first, then encoded again).
    fill(&w, 5);
    ok(&w, &["snapshot", "-m", "v5"]);
    ok(&w, &["push", rs.to_str().unwrap(), "main"]);
    ok(&r, &["fsck", "--read-data"]);
    // And the other way: new snapshots pushed into the repacked store.
    fill(&p, 7);
    ok(&p, &["snapshot", "-m", "v7 elsewhere"]);
    ok(&p, &["push", ws.to_str().unwrap(), "main", "--force"]);
    ok(&w, &["fsck", "--read-data"]);
}

/// A flipped byte in a delta record, in the base it names or in the base
/// id it carries is caught by `fsck --read-data`; a restore fails with one
/// error line or writes exactly the snapshotted bytes.
#[test]
fn flipped_bytes_in_deltas_and_their_bases_are_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path().join("w");
    let snaps = history(&w, 4);
    ok(&w, &["gc", "--repack"]);
    let recs = records(&w.join(".sp-sync"));
    let at_of = |id: &ObjectId| recs.iter().find(|r| r.4 == *id).unwrap();
    let mut spots: Vec<(PathBuf, u64)> = Vec::new();
    for r in recs
        .iter()
        .filter(|r| r.3 == FLAG_DELTA && r.2 == ObjectType::Chunk)
        .take(3)
        .chain(
            recs.iter()
                .filter(|r| r.3 == FLAG_DELTA && r.2 == ObjectType::Tree)
                .take(2),
        )
    {
        let h = record_header_len(r.5, r.6.len() as u64);
        let start = r.1 + h;
        // The flags byte, the base id, the frame.
        spots.extend(
            [
                r.1 + 2,
                start + 3,
                start + 31,
                start + 40,
                start + r.6.len() as u64 - 1,
            ]
            .map(|o| (r.0.clone(), o)),
        );
        let base = ObjectId::from_slice(&r.6[..32]).unwrap();
        let b = at_of(&base);
        if b.3 == FLAG_BLOCK {
            // In a block: its mode byte and its frame.
            spots.extend([b.1 + 2, b.1 + 40].map(|o| (b.0.clone(), o)));
            continue;
        }
        let bh = record_header_len(b.5, b.6.len() as u64);
        spots.extend([b.1 + bh, b.1 + bh + b.6.len() as u64 / 2].map(|o| (b.0.clone(), o)));
    }
    let flip = |p: &Path, at: u64| {
        let mut b = std::fs::read(p).unwrap();
        b[at as usize] ^= 0x20;
        std::fs::write(p, b).unwrap();
    };
    let mut checked = 0;
    for (f, at) in spots {
        flip(&f, at);
        let o = run_in(&w, &["fsck", "--read-data"]);
        assert_eq!(
            o.status.code(),
            Some(1),
            "flip at {at} of {} not reported: {}",
            f.display(),
            String::from_utf8_lossy(&o.stdout)
        );
        for (i, (id, want)) in snaps.iter().enumerate() {
            let t = tmp.path().join(format!("flip-{checked}-{i}"));
            let r = run_in(&w, &["restore", id, t.to_str().unwrap()]);
            match r.status.code() {
                Some(0) => assert!(&described(&t) == want, "wrong bytes restored, flip at {at}"),
                Some(1) => {
                    let err = String::from_utf8_lossy(&r.stderr);
                    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
                }
                c => panic!("restore exited {c:?}"),
            }
            let _ = std::fs::remove_dir_all(&t);
        }
        flip(&f, at);
        checked += 1;
    }
    assert!(checked >= 20, "{checked}");
    ok(&w, &["fsck", "--read-data"]);
}

/// A store whose records are written by hand: chains longer than the
/// bound, cycles, deltas against themselves and missing bases are errors;
/// the rest reads back exactly.
#[test]
fn chain_bound_cycles_and_missing_bases_are_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let s = common::new_store(tmp.path());
    let versions: Vec<Vec<u8>> = (0..6).map(|v| text(v * 20, 1).into_bytes()).collect();
    let ids: Vec<ObjectId> = versions
        .iter()
        .map(|v| ObjectId::compute(ObjectType::Chunk, v))
        .collect();
    let delta = |x: usize, base_id: ObjectId, base: &[u8]| StoredObject {
        tag: ObjectType::Chunk,
        id: ids[x],
        flags: FLAG_DELTA,
        ulen: versions[x].len() as u32,
        payload: make_delta(&versions[x], &base_id, base, 3).unwrap(),
    };
    let w = s.writer().unwrap();
    w.put(ObjectType::Chunk, &versions[0]).unwrap();
    // v1 → v0, v2 → v1, …, v5 → v4: v3 decodes 4 records, v4 five.
    for x in 1..6 {
        w.put_stored(delta(x, ids[x - 1], &versions[x - 1]))
            .unwrap();
    }
    // A cycle: a and b deltas of each other.
    let a = text(3, 7).into_bytes();
    let b = text(4, 7).into_bytes();
    let (ia, ib) = (
        ObjectId::compute(ObjectType::Chunk, &a),
        ObjectId::compute(ObjectType::Chunk, &b),
    );
    for (d, id, base, bid) in [(&a, ia, &b, ib), (&b, ib, &a, ia)] {
        w.put_stored(StoredObject {
            tag: ObjectType::Chunk,
            id,
            flags: FLAG_DELTA,
            ulen: d.len() as u32,
            payload: make_delta(d, &bid, base, 3).unwrap(),
        })
        .unwrap();
    }
    // A delta whose base is not in the store.
    let c = text(5, 9).into_bytes();
    let ic = ObjectId::compute(ObjectType::Chunk, &c);
    let absent = text(1, 9).into_bytes();
    w.put_stored(StoredObject {
        tag: ObjectType::Chunk,
        id: ic,
        flags: FLAG_DELTA,
        ulen: c.len() as u32,
        payload: make_delta(
            &c,
            &ObjectId::compute(ObjectType::Chunk, &absent),
            &absent,
            3,
        )
        .unwrap(),
    })
    .unwrap();
    // A delta naming itself.
    let d = text(6, 11).into_bytes();
    let id_d = ObjectId::compute(ObjectType::Chunk, &d);
    w.put_stored(StoredObject {
        tag: ObjectType::Chunk,
        id: id_d,
        flags: FLAG_DELTA,
        ulen: d.len() as u32,
        payload: make_delta(&d, &id_d, &d, 3).unwrap(),
    })
    .unwrap();
    w.finish().unwrap();
    drop(s);
    let s = common::open_store(tmp.path());
    for x in 0..MAX_CHAIN_RECORDS {
        assert_eq!(s.get(ObjectType::Chunk, &ids[x]).unwrap(), versions[x]);
    }
    for id in &ids[MAX_CHAIN_RECORDS..] {
        let e = s.get(ObjectType::Chunk, id).unwrap_err().to_string();
        assert!(e.contains("delta chain longer than 4 records"), "{e}");
        assert_eq!(e.lines().count(), 1);
    }
    for id in [ia, ib] {
        let e = s.get(ObjectType::Chunk, &id).unwrap_err().to_string();
        assert!(e.contains("delta chain longer"), "{e}");
    }
    let e = s.get(ObjectType::Chunk, &ic).unwrap_err().to_string();
    assert!(e.contains("delta base") && e.contains("missing"), "{e}");
    let e = s.get(ObjectType::Chunk, &id_d).unwrap_err().to_string();
    assert!(e.contains("against itself"), "{e}");
    // Leaving the store: decoded and compressed alone, or refused.
    let (loc, _) = s.read_raw(&ids[2]).unwrap();
    assert_ne!(loc.flags, FLAG_DELTA);
    assert!(s.read_raw(&ids[5]).is_err());
    // fsck --rebuild-index reads bases from the pack being indexed.
    drop(s);
    for e in std::fs::read_dir(tmp.path().join("store/packs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "idx") {
            std::fs::remove_file(p).unwrap();
        }
    }
    let s = common::open_store(tmp.path());
    let problems =
        systemprompt_sync::store::fsck::rebuild_index(&s, &systemprompt_sync::NoProgress).unwrap();
    assert_eq!(problems.len(), 2 + 2 + 1 + 1, "{problems:?}");
    drop(s);
    let s = common::open_store(tmp.path());
    assert_eq!(s.get(ObjectType::Chunk, &ids[3]).unwrap(), versions[3]);
}

/// A read through a chain checks the object asked for, not each base on
/// the way (measured: hashing the bases was half the time of a read
/// through four records); a base whose record decodes to wrong bytes still
/// fails every read through it, and the error names that base.
#[test]
fn a_wrong_base_inside_a_chain_fails_the_read_and_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let s = common::new_store(tmp.path());
    let versions: Vec<Vec<u8>> = (0..4).map(|v| text(v * 20, 3).into_bytes()).collect();
    let ids: Vec<ObjectId> = versions
        .iter()
        .map(|v| ObjectId::compute(ObjectType::Chunk, v))
        .collect();
    // v1's record decodes without error, to other bytes than v1's (in
    // its last line, which v2 and v3 keep: their deltas copy it).
    let mut wrong = versions[1].clone();
    let at = wrong.len() - 5;
    wrong[at] ^= 1;
    let w = s.writer().unwrap();
    w.put(ObjectType::Chunk, &versions[0]).unwrap();
    w.put_stored(StoredObject {
        tag: ObjectType::Chunk,
        id: ids[1],
        flags: FLAG_DELTA,
        ulen: wrong.len() as u32,
        payload: make_delta(&wrong, &ids[0], &versions[0], 3).unwrap(),
    })
    .unwrap();
    for x in 2..4 {
        w.put_stored(StoredObject {
            tag: ObjectType::Chunk,
            id: ids[x],
            flags: FLAG_DELTA,
            ulen: versions[x].len() as u32,
            payload: make_delta(&versions[x], &ids[x - 1], &versions[x - 1], 3).unwrap(),
        })
        .unwrap();
    }
    w.finish().unwrap();
    drop(s);
    let s = common::open_store(tmp.path());
    assert_eq!(s.get(ObjectType::Chunk, &ids[0]).unwrap(), versions[0]);
    let e = s.get(ObjectType::Chunk, &ids[1]).unwrap_err().to_string();
    assert!(e.contains("hash mismatch"), "{e}");
    // A read through v1 gives the exact bytes (a delta may copy nothing
    // from the wrong part) or fails naming v1; v2's does fail.
    let mut failed = 0;
    for x in 2..4 {
        match s.get(ObjectType::Chunk, &ids[x]) {
            Ok(b) => assert!(b == versions[x], "wrong bytes for v{x}"),
            Err(e) => {
                let e = e.to_string();
                assert!(
                    e.contains(&ids[1].short()) && e.contains("hash mismatch"),
                    "{e}"
                );
                assert_eq!(e.lines().count(), 1, "{e}");
                failed += 1;
            }
        }
    }
    assert!(failed >= 1);
}

/// An older sp-sync's view: a repacked store says format 3, which a binary
/// that reads only 1 and 2 refuses; this one still reads format-1 stores
/// and leaves them at format 1 when gc --repack finds nothing to delta.
#[test]
fn format_3_only_when_deltas_are_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path().join("w");
    std::fs::create_dir_all(&w).unwrap();
    ok(&w, &["init"]);
    std::fs::write(w.join("a.txt"), "one small file\n").unwrap();
    ok(&w, &["snapshot"]);
    ok(&w, &["gc", "--repack"]);
    assert_eq!(format_of(&w), "format = 1");
    ok(&w, &["fsck", "--read-data"]);
    let toml = w.join(".sp-sync/store.toml");
    let t = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(&toml, t.replace("format = 1", "format = 5")).unwrap();
    let e = fails(&w, &["log"], 1);
    assert!(e.contains("store format 5"), "{e}");
}

fn arb_edits() -> impl Strategy<Value = Vec<(usize, usize, u8)>> {
    prop::collection::vec((0usize..4000, 0usize..40, any::<u8>()), 1..6)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Random version chains stored as deltas against random earlier
    /// versions (within the bound) read back exactly; a flipped payload
    /// byte is an error or the same bytes, never other bytes.
    #[test]
    fn random_chains_read_back_identically(
        seed in 0usize..1000,
        steps in prop::collection::vec((arb_edits(), 0usize..4), 1..10),
        flip_at in any::<prop::sample::Index>(),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let s = common::new_store(tmp.path());
        let mut versions: Vec<Vec<u8>> = vec![text(0, seed).into_bytes()];
        // (depth, base index) of each version.
        let mut shape: Vec<(usize, usize)> = vec![(0, 0)];
        let w = s.writer().unwrap();
        w.put(ObjectType::Chunk, &versions[0]).unwrap();
        for (edits, back) in &steps {
            let mut v = versions.last().unwrap().clone();
            for (at, len, byte) in edits {
                let at = at % v.len();
                let end = (at + len).min(v.len());
                v.splice(at..end, std::iter::repeat_n(*byte, len / 2 + 1));
            }
            let id = ObjectId::compute(ObjectType::Chunk, &v);
            if s.contains(&id) || versions.contains(&v) {
                continue;
            }
            let mut b = versions.len() - 1 - back.min(&(versions.len() - 1));
            while shape[b].0 + 1 >= MAX_CHAIN_RECORDS {
                b = shape[b].1;
            }
            let bid = ObjectId::compute(ObjectType::Chunk, &versions[b]);
            w.put_stored(StoredObject {
                tag: ObjectType::Chunk,
                id,
                flags: FLAG_DELTA,
                ulen: v.len() as u32,
                payload: make_delta(&v, &bid, &versions[b], 3).unwrap(),
            }).unwrap();
            shape.push((shape[b].0 + 1, b));
            versions.push(v);
        }
        w.finish().unwrap();
        drop(s);
        let s = common::open_store(tmp.path());
        for v in &versions {
            let id = ObjectId::compute(ObjectType::Chunk, v);
            prop_assert_eq!(&s.get(ObjectType::Chunk, &id).unwrap(), v);
        }
        drop(s);
        // One flipped byte somewhere in the pack.
        let pack = std::fs::read_dir(tmp.path().join("store/packs")).unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "pack"))
            .unwrap();
        let mut bytes = std::fs::read(&pack).unwrap();
        let at = flip_at.index(bytes.len());
        bytes[at] ^= 0x04;
        std::fs::write(&pack, &bytes).unwrap();
        let s = common::open_store(tmp.path());
        for v in &versions {
            let id = ObjectId::compute(ObjectType::Chunk, v);
            if let Ok(got) = s.get(ObjectType::Chunk, &id) {
                prop_assert_eq!(&got, v);
            }
        }
    }
}

/// Regression (found by the crash harness): a pack's name is the hash of
/// its bytes, so `gc --repack` of a store that did not change since the
/// last one writes a pack with the name of the existing one, which gc then
/// deleted as old: the store lost every object. The same for a plain gc
/// whose rewritten pack matches an existing one.
#[test]
fn repacking_an_unchanged_store_again_keeps_every_object() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path().join("w");
    let snaps = history(&w, 3);
    let mut same_name = 0;
    for _ in 0..4 {
        let before: Vec<_> = common::files_under(&w.join(".sp-sync/packs"));
        ok(&w, &["gc", "--repack"]);
        let after: Vec<_> = common::files_under(&w.join(".sp-sync/packs"));
        same_name += usize::from(before == after);
        ok(&w, &["fsck", "--read-data"]);
        restores(&w, tmp.path(), &snaps);
        ok(&w, &["gc"]);
        ok(&w, &["fsck", "--read-data"]);
    }
    assert!(same_name > 0, "no repack wrote a pack of an existing name");
    restores(&w, tmp.path(), &snaps);
}

/// Many small files that share most of their text (pages of a docs site),
/// snapshotted before the store trained its dictionary: a repack compresses
/// them with it (each still one record, read by one decode) and puts the
/// directory nodes in blocks. Every snapshot still restores exactly and
/// fsck reads every object.
#[test]
fn a_repack_compresses_small_files_with_the_dictionary() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path().join("w");
    let sp = |dir: &Path, args: &[&str], dicts: &str| {
        let o = std::process::Command::new(common::bin())
            .args(args)
            .current_dir(dir)
            .env("SP_SYNC_CACHE_DIR", common::cache_dir())
            .env("SP_SYNC_DICT_TRAIN_BYTES", "200000")
            .env("SP_SYNC_DICTIONARIES", dicts)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let run = |args: &[&str]| sp(&w, args, "1");
    let page = |i: usize, v: usize| {
        format!(
            "<html><head><title>Page {i}</title><link rel=stylesheet href=site.css></head>\n\
             <body><nav>home | guide | reference | blog | about</nav>\n<h1>Page {i}, version {v}</h1>\n{}\
             <footer>Copyright the authors. Built with the site generator.</footer></body></html>\n",
            format!(
                "<p>Paragraph {}: the same words about the same product.</p>\n",
                i * 7919 % 1000
            )
            .repeat(3 + i % 5)
        )
    };
    std::fs::create_dir_all(&w).unwrap();
    run(&["init"]);
    let mut snaps = Vec::new();
    for v in 0..2 {
        for i in 0..600 {
            let d = w.join(format!("section{}", i % 6));
            std::fs::create_dir_all(&d).unwrap();
            put(&d.join(format!("page{i}.html")), &page(i, v * (i % 2)));
        }
        let id = run(&["snapshot", "-m", &format!("v{v}")]);
        snaps.push((id, described(&w)));
    }
    let chunks = |recs: &[Rec], flags: u8| {
        recs.iter()
            .filter(|r| r.2 == ObjectType::Chunk && r.3 == flags)
            .count()
    };
    let recs = records(&w.join(".sp-sync"));
    let (alone, with_dict) = (chunks(&recs, 1), chunks(&recs, FLAG_DICT));
    assert!(
        alone > 100 && with_dict > 100,
        "{alone} alone, {with_dict} with the dictionary"
    );
    // With dictionaries turned off, a repack compresses nothing with one.
    let copy = tmp.path().join("copy");
    for f in common::files_under(&w.join(".sp-sync")) {
        let rel = f.strip_prefix(&w).unwrap();
        if rel.starts_with(".sp-sync/cache") || rel.starts_with(".sp-sync/tmp") {
            continue;
        }
        std::fs::create_dir_all(copy.join(rel).parent().unwrap()).unwrap();
        std::fs::copy(&f, copy.join(rel)).unwrap();
    }
    sp(&copy, &["gc", "--repack"], "0");
    assert_eq!(chunks(&records(&copy.join(".sp-sync")), 1), alone);
    let packs = w.join(".sp-sync/packs");
    let before = common::dir_bytes(&packs);
    run(&["gc", "--repack"]);
    let after = common::dir_bytes(&packs);
    let recs = records(&w.join(".sp-sync"));
    assert_eq!(chunks(&recs, 1), 0, "every page with the dictionary");
    assert!(
        recs.iter()
            .any(|r| r.3 == FLAG_BLOCK && r.2 == ObjectType::Tree)
    );
    assert!(after * 10 < before * 8, "{before} -> {after} bytes");
    run(&["fsck", "--read-data"]);
    restores(&w, tmp.path(), &snaps);
    // A second repack keeps them so, and every object once.
    run(&["gc", "--repack"]);
    assert!(common::dir_bytes(&packs) <= after + 1024);
    let recs = records(&w.join(".sp-sync"));
    let mut ids: Vec<ObjectId> = recs.iter().map(|r| r.4).collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n);
    restores(&w, tmp.path(), &snaps);
}
