//! Block records (store format 4, `store-format.md` §6.1): a table's row-map
//! nodes are stored several to a record. Every object in a block reads back
//! by its id; fsck checks them; a rebuilt index equals the written one;
//! gc, gc --repack, push, pull and bundles carry them; a flipped byte in a
//! block is caught and never gives other rows with exit 0.

use crate::common;
use crate::net;

use common::format_of;

use std::path::Path;

use common::{dump, ok, run_in};
use systemprompt_sync::pack::FLAG_BLOCK;
use systemprompt_sync::{LockMode, Store};

/// A database of `rows` users-like rows.
fn make_db(path: &Path, rows: u32) {
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch(
        "CREATE TABLE users(id INTEGER PRIMARY KEY, email TEXT NOT NULL, name TEXT,
                            age INTEGER, balance REAL, avatar BLOB);",
    )
    .unwrap();
    let tx = c.unchecked_transaction().unwrap();
    for i in 0..rows {
        tx.execute(
            "INSERT INTO users VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            rusqlite::params![
                i,
                format!("user{i}@example.com"),
                if i % 7 == 0 {
                    None
                } else {
                    Some(format!("User {}", u64::from(i) * 2_654_435_761 % 1_000_003))
                },
                18 + i % 60,
                f64::from(i) * 1.37,
                (i % 5 == 0).then(|| vec![(i % 251) as u8; 12]),
            ],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

/// A database of `rows` rows in `d`, snapshotted into a new store `st`.
fn snapshotted(d: &Path, rows: u32) {
    std::fs::create_dir(d.join("empty")).unwrap();
    make_db(&d.join("app.db"), rows);
    ok(d, &["init", "--store", "st", "-q"]);
    ok(
        d,
        &["--store", "st", "snapshot", "empty", "--db", "app.db", "-q"],
    );
}

/// Block members in the store at `dir`, and all objects.
fn members(dir: &Path) -> (usize, usize) {
    let s = Store::open(dir, LockMode::Shared).unwrap();
    let all = s.all_objects();
    let n = all.iter().filter(|(_, l)| l.flags == FLAG_BLOCK).count();
    (n, all.len())
}

/// Restores `rev`'s database from the store `st` (relative to `d`) into a
/// new file and returns its dump.
fn restored(d: &Path, st: &str, rev: &str, name: &str) -> String {
    let out = d.join(name);
    let _ = std::fs::remove_file(&out);
    ok(
        d,
        &[
            "--store",
            st,
            "restore",
            rev,
            "--db",
            out.to_str().unwrap(),
            "-q",
        ],
    );
    dump(&out)
}

#[test]
fn tables_are_stored_in_blocks_that_read_back_exactly_everywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    snapshotted(d, 20_000);
    let st = d.join("st");
    assert_eq!(format_of(&st), "format = 4");
    let (blocked, all) = members(&st);
    assert!(
        blocked * 10 > all * 9,
        "{blocked} of {all} objects in blocks"
    );
    let first = dump(&d.join("app.db"));
    assert_eq!(restored(d, "st", "main", "r1.db"), first);
    ok(d, &["--store", "st", "fsck", "--read-data"]);

    // A rebuilt index is the written one, byte for byte.
    let idx: Vec<_> = std::fs::read_dir(st.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "idx"))
        .collect();
    let before: Vec<Vec<u8>> = idx.iter().map(|p| std::fs::read(p).unwrap()).collect();
    for p in &idx {
        std::fs::remove_file(p).unwrap();
    }
    ok(d, &["--store", "st", "fsck", "--rebuild-index"]);
    let after: Vec<Vec<u8>> = idx.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert_eq!(before, after);

    // 50 rows change: the diff names them; both snapshots restore.
    let c = rusqlite::Connection::open(d.join("app.db")).unwrap();
    c.execute_batch("UPDATE users SET balance = balance + 1 WHERE id % 400 = 3")
        .unwrap();
    drop(c);
    ok(
        d,
        &["--store", "st", "snapshot", "empty", "--db", "app.db", "-q"],
    );
    let second = dump(&d.join("app.db"));
    let diff: serde_json::Value = serde_json::from_str(&ok(
        d,
        &["--store", "st", "diff", "main~1", "main", "--json"],
    ))
    .unwrap();
    assert_eq!(diff["rows"].as_array().unwrap().len(), 50);

    // gc --repack rewrites every pack, row maps in blocks again (in key
    // order: not larger than before); the blocks stay readable.
    let before = common::dir_bytes(&st.join("packs"));
    ok(d, &["--store", "st", "gc", "--repack"]);
    let after = common::dir_bytes(&st.join("packs"));
    assert!(
        after <= before + before / 50,
        "repack grew the store: {before} -> {after}"
    );
    let (blocked, all) = members(&st);
    assert!(
        blocked * 10 > all * 8,
        "after the repack, {blocked} of {all} objects in blocks"
    );
    ok(d, &["--store", "st", "fsck", "--read-data"]);
    assert_eq!(restored(d, "st", "main~1", "r2.db"), first);
    assert_eq!(restored(d, "st", "main", "r3.db"), second);

    // Push into, pull from, and a bundle to stores that have nothing.
    for (name, how) in [
        ("pushed", "push"),
        ("pulled", "pull"),
        ("bundled", "bundle"),
    ] {
        ok(d, &["init", "--store", name, "-q"]);
        let there = d.join(name);
        match how {
            "push" => {
                ok(
                    d,
                    &["--store", "st", "push", there.to_str().unwrap(), "main"],
                );
            }
            "pull" => {
                ok(d, &["--store", name, "pull", st.to_str().unwrap(), "main"]);
            }
            _ => {
                let b = d.join("all.spb");
                ok(
                    d,
                    &[
                        "--store",
                        "st",
                        "bundle",
                        "create",
                        b.to_str().unwrap(),
                        "main",
                    ],
                );
                ok(
                    d,
                    &["--store", name, "bundle", "import", b.to_str().unwrap()],
                );
            }
        }
        ok(d, &["--store", name, "fsck", "--read-data"]);
        assert_eq!(restored(d, name, "main~1", "r4.db"), first, "{how}");
        assert_eq!(restored(d, name, "main", "r5.db"), second, "{how}");
    }
}

#[test]
fn repacking_changed_rows_makes_the_store_smaller() {
    // A small table with 2% of its rows changed: the changed leaves'
    // older versions become deltas, and the leaves they are deltas of
    // stay in blocks (a repack that wrote each delta's base alone, cut
    // out of its block, made this store 10% bigger).
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    snapshotted(d, 3_000);
    let c = rusqlite::Connection::open(d.join("app.db")).unwrap();
    c.execute_batch("UPDATE users SET age = age + 1 WHERE id % 50 = 7")
        .unwrap();
    drop(c);
    ok(
        d,
        &["--store", "st", "snapshot", "empty", "--db", "app.db", "-q"],
    );
    let st = d.join("st");
    let before = common::dir_bytes(&st.join("packs"));
    let out = ok(d, &["--store", "st", "gc", "--repack"]);
    assert!(out.contains("stored as deltas"), "{out}");
    let after = common::dir_bytes(&st.join("packs"));
    assert!(after < before, "repack grew the store: {before} -> {after}");
    let (blocked, all) = members(&st);
    assert!(
        blocked * 10 > all * 5,
        "after the repack, {blocked} of {all} objects in blocks"
    );
    ok(d, &["--store", "st", "fsck", "--read-data"]);
    assert_eq!(restored(d, "st", "main", "r.db"), dump(&d.join("app.db")));
}

#[test]
fn a_flipped_byte_in_a_block_is_caught_and_never_read_as_other_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    snapshotted(d, 5_000);
    let want = dump(&d.join("app.db"));
    let st = d.join("st");
    let s = Store::open(&st, LockMode::Shared).unwrap();
    let mut offsets: Vec<(String, u64)> = s
        .all_objects()
        .into_iter()
        .filter(|(_, l)| l.flags == FLAG_BLOCK)
        .map(|(_, l)| (s.pack_name(l.pack).unwrap().to_string(), l.offset))
        .collect();
    drop(s);
    offsets.sort();
    offsets.dedup();
    assert!(offsets.len() >= 3, "{offsets:?}");
    // Flip bytes of the first block: in its header, its sizes and its frame.
    let (pack, at) = &offsets[0];
    let path = st.join("packs").join(format!("{pack}.pack"));
    let orig = std::fs::read(&path).unwrap();
    for delta in [1u64, 3, 5, 6, 40, 200, 900] {
        let mut bad = orig.clone();
        bad[(at + delta) as usize] ^= 0x20;
        std::fs::write(&path, &bad).unwrap();
        let f = run_in(d, &["--store", "st", "fsck", "--read-data"]);
        assert_eq!(f.status.code(), Some(1), "fsck after a flip at +{delta}");
        let out = d.join("bad.db");
        let _ = std::fs::remove_file(&out);
        let o = run_in(
            d,
            &[
                "--store",
                "st",
                "restore",
                "main",
                "--db",
                out.to_str().unwrap(),
                "-q",
            ],
        );
        if o.status.success() {
            assert_eq!(
                dump(&out),
                want,
                "a restore after a flip at +{delta} gave other rows"
            );
        } else {
            assert_eq!(o.status.code(), Some(1));
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(
                err.lines().filter(|l| l.starts_with("error:")).count(),
                1,
                "{err}"
            );
        }
    }
    std::fs::write(&path, &orig).unwrap();
    ok(d, &["--store", "st", "fsck", "--read-data"]);
}

/// A table pushed into a store on S3 (moto) is stored there in blocks;
/// fsck --read-data reads them by range; a pull back restores the rows.
#[test]
fn blocks_in_a_store_on_s3_read_back() {
    use net::{bucket, ok_env, s3_env};
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    snapshotted(d, 8_000);
    let want = dump(&d.join("app.db"));
    let url = format!("s3://{}/tables", bucket("blocks"));
    let env = s3_env();
    ok_env(d, &["--store", "st", "push", &url, "main"], &env);
    ok_env(d, &["--store", &url, "fsck", "--read-data"], &env);
    let out = d.join("from-s3.db");
    ok_env(
        d,
        &[
            "--store",
            &url,
            "restore",
            "main",
            "--db",
            out.to_str().unwrap(),
            "-q",
        ],
        &env,
    );
    assert_eq!(dump(&out), want);
    ok(d, &["init", "--store", "back", "-q"]);
    ok_env(d, &["--store", "back", "pull", &url, "main"], &env);
    let (blocked, all) = members(&d.join("back"));
    assert!(
        blocked * 10 > all * 8,
        "{blocked} of {all} objects in blocks"
    );
    assert_eq!(restored(d, "back", "main", "back.db"), want);
}

/// Blocks of row-map leaves are compressed at the store's
/// `rows_compression_level` (1 in a new store): a store set to 19 holds
/// the same table in fewer bytes, and both give back the same rows.
#[test]
fn row_blocks_take_the_stores_rows_compression_level() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    snapshotted(d, 20_000);
    let conf = std::fs::read_to_string(d.join("st/store.toml")).unwrap();
    assert!(conf.contains("rows_compression_level = 1"), "{conf}");
    ok(d, &["init", "--store", "st19", "-q"]);
    let path = d.join("st19/store.toml");
    let conf = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        conf.replace("rows_compression_level = 1", "rows_compression_level = 19"),
    )
    .unwrap();
    ok(
        d,
        &[
            "--store", "st19", "snapshot", "empty", "--db", "app.db", "-q",
        ],
    );
    let packed = |st: &str| -> u64 {
        std::fs::read_dir(d.join(st).join("packs"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    };
    let (fast, small) = (packed("st"), packed("st19"));
    assert!(small < fast, "level 19: {small} bytes, level 1: {fast}");
    assert_eq!(
        restored(d, "st19", "main", "r19.db"),
        restored(d, "st", "main", "r1.db")
    );
    // A level out of range is a damaged configuration, refused.
    std::fs::write(
        &path,
        conf.replace("rows_compression_level = 1", "rows_compression_level = 0"),
    )
    .unwrap();
    let o = run_in(d, &["--store", "st19", "log"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("rows_compression_level"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
