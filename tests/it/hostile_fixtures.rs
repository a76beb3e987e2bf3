//! The hostile-fixture folder (built by examples/hostile_fixtures.rs, the
//! same code `scripts/hostile-fixtures.sh` runs): every store fixture is
//! refused by `restore` and `fsck --read-data` with one clear error line,
//! every bundle fixture by `bundle import` (or, for objects that are
//! well-formed one by one, by the `restore` after it), and nothing is ever
//! written outside the command's target.

use crate::common;

#[path = "../../examples/hostile_fixtures.rs"]
mod fixtures;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{fails, ok, run_in};

/// Every path under `root` (but not under `skip`) with its size and a hash
/// of its bytes (or its link target): what "nothing else was written" compares.
fn inventory(root: &Path, skip: &[&Path]) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if skip.iter().any(|s| p.starts_with(s)) {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            let what = if m.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if m.file_type().is_symlink() {
                format!("link {:?}", std::fs::read_link(&p).unwrap())
            } else {
                let b = std::fs::read(&p).unwrap();
                format!("{} {}", b.len(), blake3::hash(&b).to_hex())
            };
            out.insert(p, what);
        }
    }
    out
}

fn refused(cwd: &Path, args: &[&str], name: &str) -> String {
    let err = fails(cwd, args, 1);
    assert!(
        err.lines().last().is_some_and(|l| l.starts_with("error: ")),
        "{name}: {args:?}: {err}"
    );
    err
}

#[test]
fn every_hostile_fixture_is_refused_and_writes_nothing_outside_its_target() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let list = fixtures::build_all(&root.join("fixtures")).unwrap();
    assert!(list.len() >= 30, "{} fixtures", list.len());
    let mut seen_bundle = 0;
    for f in &list {
        let work = root.join("work").join(f.name);
        std::fs::create_dir_all(&work).unwrap();
        let target = work.join("target");
        let t = target.to_str().unwrap();
        if !f.bundle {
            let store = f.path.to_str().unwrap();
            // The fixture's own store may gain a lock or tmp file; nothing else may change.
            let before = inventory(root, &[&f.path, &target]);
            let err = refused(&work, &["--store", store, "restore", "main", t], f.name);
            assert!(!err.contains("panicked"), "{}: {err}", f.name);
            // fsck lists every problem, then says how many it found.
            let o = run_in(&work, &["--store", store, "fsck", "--read-data"]);
            assert_eq!(o.status.code(), Some(1), "{}: fsck {o:?}", f.name);
            // `ls` walks the trees: whatever it prints, it never succeeds on a
            // tree that restore refused for its names.
            let o = run_in(&work, &["--store", store, "ls", "-r", "main"]);
            assert!(
                matches!(o.status.code(), Some(0 | 1)),
                "{}: ls exit {:?}",
                f.name,
                o.status.code()
            );
            assert_eq!(inventory(root, &[&f.path, &target]), before, "{}", f.name);
        } else {
            seen_bundle += 1;
            ok(&work, &["init"]);
            let store = work.join(".sp-sync");
            let before = inventory(root, &[&store, &target]);
            let s = store.to_str().unwrap();
            let o = run_in(
                &work,
                &["--store", s, "bundle", "import", f.path.to_str().unwrap()],
            );
            if o.status.code() == Some(1) {
                common::assert_one_error_line(
                    &["bundle", "import", f.name],
                    &String::from_utf8_lossy(&o.stderr),
                );
                // Refused: no ref moved.
                assert!(!store.join("refs/main").exists(), "{}", f.name);
            } else {
                // Every object was well-formed alone (and verified): the
                // restore refuses what they make together.
                assert_eq!(o.status.code(), Some(0), "{}: {o:?}", f.name);
                refused(&work, &["--store", s, "restore", "main", t], f.name);
            }
            assert_eq!(inventory(root, &[&store, &target]), before, "{}", f.name);
        }
        // The target holds nothing that escaped it: every path under it is
        // inside it (no symlink out was followed; no `..` was created).
        if target.exists() {
            for p in common::files_under(&target) {
                let real = p.canonicalize().unwrap_or(p.clone());
                assert!(
                    real.starts_with(target.canonicalize().unwrap()),
                    "{}: {p:?}",
                    f.name
                );
            }
        }
    }
    assert!(seen_bundle >= 15, "{seen_bundle} bundle fixtures");
}
