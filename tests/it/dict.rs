//! Trained dictionaries (store format 2): a store of many small text files
//! trains one, compresses with it, moves to format 2, reads back exactly,
//! keeps it through gc, and exchanges snapshots (push, pull, bundles) with
//! a store that has none (format 1).

use crate::common;

use common::format_of;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{cache_dir, describe};
use proptest::prelude::*;
use systemprompt_sync::object::{ObjectSink, ObjectSource};
use systemprompt_sync::pack::FLAG_DICT;
use systemprompt_sync::{LockMode, ObjectId, ObjectType, Store};

/// Runs sp-sync with dictionaries trained after 64 KiB of samples (or off).
fn run(cwd: &Path, args: &[&str], dicts: bool) -> Output {
    Command::new(common::bin())
        .args(args)
        .current_dir(cwd)
        .env("SP_SYNC_CACHE_DIR", cache_dir())
        .env_remove("SP_SYNC_STORE")
        .env("SP_SYNC_DICT_TRAIN_BYTES", "65536")
        .env("SP_SYNC_DICTIONARIES", if dicts { "1" } else { "0" })
        .output()
        .expect("spawn sp-sync")
}

fn ok(cwd: &Path, args: &[&str], dicts: bool) -> String {
    let o = run(cwd, args, dicts);
    assert!(
        o.status.success(),
        "sp-sync {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// 400 small HTML-like files that share most of their text.
fn small_files(w: &Path, seed: usize) {
    for i in 0..400 {
        let d = w.join(format!("docs/d{}", i % 7));
        std::fs::create_dir_all(&d).unwrap();
        let body = format!(
            "<!DOCTYPE html><html><head><title>Page {i}</title><link rel=\"stylesheet\" \
             href=\"../static.css\"></head><body><nav>home | guide | reference</nav>\
             <main><h1>Item {i} (rev {seed})</h1>{}</main><footer>generated</footer></body></html>\n",
            format!(
                "<p>section {} of the guide, paragraph {}</p>\n",
                i % 13,
                i * 7
            )
            .repeat(5 + i % 9)
        );
        std::fs::write(d.join(format!("p{i}.html")), body).unwrap();
    }
}

/// (tag, flags, offset, clen) of every index entry of a store's packs.
fn entries(store: &Path) -> Vec<(PathBuf, u8, u8, u64, u32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(store.join("packs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "idx") {
            continue;
        }
        let b = std::fs::read(&p).unwrap();
        let n = u32::from_le_bytes(b[41..45].try_into().unwrap()) as usize;
        for i in 0..n {
            let e = &b[45 + 50 * i..45 + 50 * (i + 1)];
            out.push((
                p.with_extension("pack"),
                e[32],
                e[33],
                u64::from_le_bytes(e[34..42].try_into().unwrap()),
                u32::from_le_bytes(e[42..46].try_into().unwrap()),
            ));
        }
    }
    out
}

fn setup(t: &Path) -> PathBuf {
    let w = t.join("w");
    small_files(&w, 1);
    ok(&w, &["init"], true);
    assert_eq!(format_of(&w.join(".sp-sync")), "format = 1");
    ok(&w, &["snapshot", "-m", "one"], true);
    w
}

/// Restores `main` of the store in `w` and compares with the tree `src`.
fn restored_equal(w: &Path, src: &Path, target: &Path, dicts: bool) {
    ok(w, &["restore", "main", target.to_str().unwrap()], dicts);
    let mut want = describe(src);
    want.retain(|k, _| !k.starts_with(b".sp-sync"));
    assert!(
        describe(target) == want,
        "{} restores other files",
        w.display()
    );
}

#[test]
fn a_store_of_small_files_trains_a_dictionary_and_reads_back_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let w = setup(tmp.path());
    let st = w.join(".sp-sync");
    assert_eq!(format_of(&st), "format = 2");
    let e = entries(&st);
    assert_eq!(e.iter().filter(|x| x.1 == 7).count(), 1, "one dictionary");
    let with_dict = e.iter().filter(|x| x.2 == FLAG_DICT).count();
    assert!(with_dict > 100, "{with_dict} records use the dictionary");
    ok(&w, &["fsck", "--read-data"], true);
    restored_equal(&w, &w, &tmp.path().join("out"), true);
    // A second snapshot uses the same dictionary (no second one).
    small_files(&w, 2);
    ok(&w, &["snapshot", "-m", "two"], true);
    assert_eq!(entries(&st).iter().filter(|x| x.1 == 7).count(), 1);
    // Smaller than the same data without dictionaries.
    let plain = tmp.path().join("plain");
    small_files(&plain, 1);
    ok(&plain, &["init"], false);
    ok(&plain, &["snapshot"], false);
    let size = |s: &Path| -> u64 { entries(s).iter().map(|x| u64::from(x.4)).sum() };
    assert_eq!(format_of(&plain.join(".sp-sync")), "format = 1");
    let w1 = tmp.path().join("w1");
    small_files(&w1, 1);
    ok(&w1, &["init"], true);
    ok(&w1, &["snapshot"], true);
    assert!(
        size(&w1.join(".sp-sync")) * 10 < size(&plain.join(".sp-sync")) * 8,
        "dictionary store {} vs plain {}",
        size(&w1.join(".sp-sync")),
        size(&plain.join(".sp-sync"))
    );
}

#[test]
fn gc_keeps_dictionaries_and_their_records_stay_readable() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path().join("w");
    // The dictionary is trained in the pack of a snapshot under another
    // ref; main shares only part of it. Deleting that ref leaves the pack
    // partly dead, so
    // gc rewrites it: the dictionary must survive, as main's records need it.
    small_files(&w.join("c"), 1);
    ok(&w, &["init"], true);
    let st = w.join(".sp-sync");
    ok(&w, &["snapshot", "c", "--ref", "tmp"], true);
    assert_eq!(entries(&st).iter().filter(|x| x.1 == 7).count(), 1);
    for i in (0..400).step_by(3) {
        let _ = std::fs::remove_file(w.join(format!("c/docs/d{}/p{i}.html", i % 7)));
    }
    std::fs::rename(w.join("c"), w.join("docs-kept")).unwrap();
    ok(&w, &["snapshot", "docs-kept", "-m", "two"], true);
    ok(&w, &["ref", "delete", "tmp"], true);
    let before = entries(&st).len();
    let v = ok(&w, &["gc", "--json"], true);
    assert!(
        v.contains("\"packs_rewritten\": 1") || v.contains("\"packs_rewritten\":1"),
        "{v}"
    );
    assert!(entries(&st).len() < before);
    assert_eq!(entries(&st).iter().filter(|x| x.1 == 7).count(), 1);
    assert!(entries(&st).iter().any(|x| x.2 == FLAG_DICT));
    ok(&w, &["fsck", "--read-data"], true);
    let out = tmp.path().join("out");
    ok(&w, &["restore", "main", out.to_str().unwrap()], true);
    assert!(describe(&out) == describe(&w.join("docs-kept")));
    // Old binaries' view: the store is format 2 and says so.
    assert_eq!(format_of(&st), "format = 2");
}

/// `fsck --rebuild-index` with every index lost indexes a record whose
/// dictionary lives in a pack that sorts after the record's own pack.
#[test]
fn rebuild_index_finds_a_dictionary_in_a_later_pack() {
    // Pack names are hashes. A dictionary's pack named near the start of
    // the order (1 in 60 below 04…) would take more than the loop below
    // allows before another sorts before it: such a store is made again.
    let (tmp, w, st, dict_pack) = (0..40)
        .find_map(|_| {
            let tmp = tempfile::tempdir().unwrap();
            let w = setup(tmp.path());
            let st = w.join(".sp-sync");
            let dict_pack = entries(&st).into_iter().find(|x| x.1 == 7).unwrap().0;
            let name = dict_pack.file_name()?.to_string_lossy().into_owned();
            (name.as_str() >= "4").then_some((tmp, w, st, dict_pack))
        })
        .expect("40 stores whose dictionary pack sorts before 4…");
    // Later snapshots compress with that dictionary, in packs of their own;
    // make them until one sorts before the dictionary's pack.
    let mut seed = 2;
    while !entries(&st)
        .iter()
        .any(|x| x.2 == FLAG_DICT && x.0 < dict_pack)
    {
        assert!(seed < 60, "no pack sorted before {}", dict_pack.display());
        small_files(&w, seed);
        ok(&w, &["snapshot", "-m", &format!("s{seed}")], true);
        seed += 1;
    }
    let before = entries(&st).len();
    for e in std::fs::read_dir(st.join("packs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "idx") {
            std::fs::remove_file(p).unwrap();
        }
    }
    let o = run(&w, &["fsck", "--rebuild-index"], true);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(entries(&st).len(), before, "every record is indexed again");
    ok(&w, &["fsck", "--read-data"], true);
    restored_equal(&w, &w, &tmp.path().join("out"), true);
}

#[test]
fn flipped_bytes_in_a_dictionary_are_caught_and_never_restored() {
    let tmp = tempfile::tempdir().unwrap();
    let w = setup(tmp.path());
    let st = w.join(".sp-sync");
    let e = entries(&st);
    let (pack, _, _, off, clen) = e.iter().find(|x| x.1 == 7).unwrap().clone();
    let user = e.iter().find(|x| x.2 == FLAG_DICT).unwrap().clone();
    let mut want = describe(&w);
    want.retain(|k, _| !k.starts_with(b".sp-sync"));
    // Bytes of the dictionary's record (header and payload), and of the
    // dictionary id a dependent record names.
    let mut spots: Vec<(PathBuf, u64)> = (0..8)
        .map(|i| (pack.clone(), off + 40 + u64::from(clen) * i / 8))
        .collect();
    spots.push((pack.clone(), off + 3));
    spots.push((user.0.clone(), user.3 + 40));
    for (n, (f, at)) in spots.iter().enumerate() {
        let mut b = std::fs::read(f).unwrap();
        b[*at as usize] ^= 0x20;
        std::fs::write(f, &b).unwrap();
        let o = run(&w, &["fsck", "--read-data"], true);
        assert_eq!(
            o.status.code(),
            Some(1),
            "flip at {at} of {} not reported",
            f.display()
        );
        let target = tmp.path().join(format!("r{n}"));
        let r = run(&w, &["restore", "main", target.to_str().unwrap()], true);
        match r.status.code() {
            Some(0) => {
                let got = describe(&target);
                assert_eq!(
                    got, want,
                    "restore exited 0 with wrong content (flip at {at})"
                );
            }
            Some(1) => {
                let err = String::from_utf8_lossy(&r.stderr);
                assert_eq!(err.trim_end().lines().count(), 1, "{err}");
            }
            c => panic!("restore exited {c:?}"),
        }
        b[*at as usize] ^= 0x20;
        std::fs::write(f, &b).unwrap();
    }
    ok(&w, &["fsck", "--read-data"], true);
}

#[test]
fn push_pull_and_bundles_between_a_dictionary_store_and_a_format_1_store() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let w = setup(t);
    // Push into a store that writes no dictionaries: it stays format 1
    // and holds no dictionary record.
    let old = t.join("old");
    std::fs::create_dir_all(&old).unwrap();
    ok(&old, &["init"], false);
    let url = format!("file://{}", old.join(".sp-sync").display());
    ok(&w, &["remote", "add", "origin", &url], true);
    // (the push runs with dictionaries off on both sides' writers: the
    // receiving side is this process)
    ok(&w, &["push"], false);
    assert_eq!(format_of(&old.join(".sp-sync")), "format = 1");
    assert!(
        entries(&old.join(".sp-sync"))
            .iter()
            .all(|x| x.1 != 7 && x.2 != FLAG_DICT)
    );
    ok(&old, &["fsck", "--read-data"], false);
    // Pull it back from the old store into a new dictionary store.
    let c = t.join("c");
    std::fs::create_dir_all(&c).unwrap();
    ok(&c, &["init"], true);
    ok(&c, &["pull", &url], true);
    ok(&c, &["fsck", "--read-data"], true);
    assert_eq!(format_of(&c.join(".sp-sync")), "format = 2");
    restored_equal(&c, &w, &t.join("out-c"), true);
    // A bundle of the dictionary store imports into a format-1 store.
    let bundle = t.join("b.bundle");
    ok(&w, &["bundle", "create", bundle.to_str().unwrap()], true);
    ok(
        &t.join("nowhere-1").tap_mkdir(),
        &["bundle", "verify", bundle.to_str().unwrap()],
        true,
    );
    let d = t.join("d");
    std::fs::create_dir_all(&d).unwrap();
    ok(&d, &["init"], false);
    ok(&d, &["bundle", "import", bundle.to_str().unwrap()], false);
    assert_eq!(format_of(&d.join(".sp-sync")), "format = 1");
    ok(&d, &["fsck", "--read-data"], false);
    restored_equal(&d, &w, &t.join("out-d"), false);
}

trait TapMkdir {
    fn tap_mkdir(self) -> PathBuf;
}

impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> PathBuf {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Whatever objects a session writes, with a dictionary trained on
    /// some of them, read back identical (in this process and another).
    #[test]
    fn objects_written_with_a_dictionary_read_back_identical(
        seeds in proptest::collection::vec((any::<u64>(), 16usize..6000), 40..120),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        Store::init(&dir).unwrap();
        let mut store = Store::open(&dir, LockMode::Shared).unwrap();
        store.set_dict_training(20_000);
        let objs: Vec<Vec<u8>> = seeds
            .iter()
            .map(|(s, len)| {
                let words = ["alpha ", "beta ", "gamma ", "<div>", "</div>", "\n", "{\"k\": "];
                let mut x = *s | 1;
                let mut v = Vec::with_capacity(*len);
                while v.len() < *len {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    v.extend_from_slice(words[(x % 7) as usize].as_bytes());
                    if x % 5 == 0 {
                        v.push((x >> 8) as u8);
                    }
                }
                v.truncate(*len);
                v
            })
            .collect();
        let w = store.writer().unwrap();
        let mut ids = Vec::new();
        for o in &objs {
            ids.push(w.put(ObjectType::Chunk, o).unwrap());
        }
        w.finish().unwrap();
        let total: usize = objs.iter().map(Vec::len).sum();
        if total > 40_000 {
            prop_assert!(!store.dictionaries().is_empty(), "no dictionary trained");
        }
        for (id, o) in ids.iter().zip(&objs) {
            prop_assert_eq!(&store.get(ObjectType::Chunk, id).unwrap(), o);
        }
        drop(store);
        let again = Store::open(&dir, LockMode::Shared).unwrap();
        for (id, o) in ids.iter().zip(&objs) {
            let got: Vec<u8> = again.get(ObjectType::Chunk, id).unwrap();
            prop_assert_eq!(&got, o);
            prop_assert_eq!(ObjectId::compute(ObjectType::Chunk, &got), *id);
        }
    }
}
