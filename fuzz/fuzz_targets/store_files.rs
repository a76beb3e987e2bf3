//! A whole store directory whose files are untrusted: a store made once per
//! process (two snapshots of a few files, one ref), copied per input, then
//! one of its files — `store.toml`, `refs/main`, a pack, its index, the
//! stat cache — replaced by the input (the first byte picks which; with
//! bit 7 set the input is spliced into the file at an offset instead). Then
//! everything a command does with a store must not panic: open it, list and
//! read refs, list and read the snapshot's files, fsck with `--read-data`,
//! and a snapshot that loads the stat cache. Whatever is accepted as a
//! file's content must hash to what the tree says.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use systemprompt_sync::{
    FsckOptions, LockMode, NoProgress, SnapshotOptions, Store, fsck, list, snapshot,
};

struct Template {
    _dir: tempfile::TempDir,
    /// `store/` and `cache/` (the stat cache lives outside the store).
    state: PathBuf,
    src: PathBuf,
}

fn template() -> &'static Template {
    static T: OnceLock<Template> = OnceLock::new();
    T.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("skills")).unwrap();
        std::fs::write(src.join("a.txt"), "alpha\n".repeat(50)).unwrap();
        std::fs::write(src.join("skills/b.md"), "# b\nbody\n").unwrap();
        let store = dir.path().join("state/store");
        Store::init(&store).unwrap();
        let mut s = Store::open(&store, LockMode::Shared).unwrap();
        s.set_cache_dir(dir.path().join("state/cache"));
        let opts = SnapshotOptions {
            sources: vec![src.clone()],
            threads: Some(1),
            ..Default::default()
        };
        snapshot(&s, &opts, &NoProgress).unwrap();
        std::fs::write(src.join("c.txt"), "gamma").unwrap();
        snapshot(&s, &opts, &NoProgress).unwrap();
        drop(s);
        let state = dir.path().join("state");
        Template {
            _dir: dir,
            state,
            src,
        }
    })
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            // libFuzzer's timer signal (its -timeout check) can interrupt
            // the copy's system call, which std::fs::copy then returns as
            // an error (found by this target: Os { code: 4 }): copy again.
            loop {
                match std::fs::copy(e.path(), &t) {
                    Ok(_) => break,
                    Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(err) => panic!("copying {}: {err}", e.path().display()),
                }
            }
        }
    }
}

/// Every regular file under `dir`, sorted (relative paths).
fn files(dir: &Path, base: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            files(&e.path(), base, out);
        } else {
            out.push(e.path().strip_prefix(base).unwrap().to_path_buf());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let t = template();
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    copy_dir(&t.state, &state);
    let mut all = Vec::new();
    files(&state, &state, &mut all);
    all.sort();
    // store.toml, refs/main, packs/*.pack, packs/*.idx, the stat cache …
    let target = &all[(pick & 0x7f) as usize % all.len()];
    let path = state.join(target);
    if pick & 0x80 != 0 && rest.len() >= 2 {
        let mut bytes = std::fs::read(&path).unwrap();
        let at = u16::from_le_bytes([rest[0], rest[1]]) as usize % (bytes.len() + 1);
        let patch = &rest[2..];
        let end = (at + patch.len()).min(bytes.len());
        bytes.splice(at..end, patch.iter().copied());
        std::fs::write(&path, bytes).unwrap();
    } else {
        std::fs::write(&path, rest).unwrap();
    }

    let Ok(mut s) = Store::open(&state.join("store"), LockMode::Shared) else {
        return;
    };
    s.set_cache_dir(state.join("cache"));
    if let Ok(refs) = s.list_refs() {
        for (name, _) in refs {
            let _ = s.read_ref(&name);
        }
    }
    if let Ok(entries) = list(&s, "main", true) {
        for (name, _) in entries {
            let spec = format!("main:{}", String::from_utf8_lossy(&name));
            let mut out = Vec::new();
            let file = t.src.join(String::from_utf8_lossy(&name).as_ref());
            if systemprompt_sync::cat(&s, &spec, &mut out).is_ok() && file.is_file() {
                assert_eq!(out, std::fs::read(&file).unwrap(), "{spec}: wrong content");
            }
        }
    }
    let _ = fsck(&s, &FsckOptions { read_data: true }, &NoProgress);
    // A snapshot of the unchanged source reads the (maybe damaged) stat cache.
    let opts = SnapshotOptions {
        sources: vec![t.src.clone()],
        threads: Some(1),
        ..Default::default()
    };
    let _ = snapshot(&s, &opts, &NoProgress);
});
