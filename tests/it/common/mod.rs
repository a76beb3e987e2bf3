//! Helpers shared by the integration tests: running the real binary,
//! building trees on disk, comparing trees exactly.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod pg;
pub mod proxy;

/// The binary under test: `SP_SYNC_TEST_BIN` when set (a copy pinned by
/// the harness scripts: `target/debug/sp-sync` is shared by every checkout
/// that builds into the same target directory, and another checkout's build
/// can replace it while a long campaign runs), else cargo's.
pub fn bin() -> PathBuf {
    std::env::var_os("SP_SYNC_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sp-sync")))
}

/// The cache directory the tests give sp-sync (outside every working tree).
pub fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("sp-sync-cache")
}

/// Runs `sp-sync ARGS` in `cwd` with the tests' cache directory.
pub fn run_in(cwd: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir(cwd)
        .env("SP_SYNC_CACHE_DIR", cache_dir())
        .env_remove("SP_SYNC_STORE")
        .output()
        .expect("spawn sp-sync")
}

/// Runs and asserts success; returns stdout.
pub fn ok(cwd: &Path, args: &[&str]) -> String {
    let o = run_in(cwd, args);
    assert!(
        o.status.success(),
        "sp-sync {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs and asserts exit status `code`; returns stderr. A failure (exit 1)
/// must say so in one `error:` line that names each cause once.
pub fn fails(cwd: &Path, args: &[&str], code: i32) -> String {
    let o = run_in(cwd, args);
    assert_eq!(
        o.status.code(),
        Some(code),
        "sp-sync {args:?}: expected exit {code}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    // (`--exit-code` also exits 1, for differences, and says nothing.)
    if code == 1 && !err.trim().is_empty() {
        assert_one_error_line(args, &err);
    }
    err
}

/// The error line is the last line of stderr (warnings may come before),
/// starts with `error: ` and repeats no cause.
pub fn assert_one_error_line(args: &[&str], err: &str) {
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(
        errors.len(),
        1,
        "sp-sync {args:?}: not one error line: {err}"
    );
    assert!(
        err.lines()
            .all(|l| l.starts_with("error: ") || l.starts_with("warning: ")),
        "sp-sync {args:?}: stray lines on stderr: {err}"
    );
    let parts: Vec<&str> = errors[0].split(": ").collect();
    for (i, p) in parts.iter().enumerate() {
        assert!(
            p.len() < 4 || !parts[i + 1..].contains(p),
            "sp-sync {args:?}: {p:?} said twice: {err}"
        );
    }
}

pub fn set_mtime(p: &Path, secs: i64, nanos: u32) {
    let t = rustix::fs::Timespec {
        tv_sec: secs,
        tv_nsec: i64::from(nanos),
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .expect("utimensat");
}

/// Deterministic pseudo-random bytes.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A tree to build on disk.
#[derive(Debug, Clone)]
pub enum Node {
    File {
        len: usize,
        seed: u64,
        mode: u32,
        mtime: (i64, u32),
    },
    Dir {
        mode: u32,
        mtime: (i64, u32),
        children: BTreeMap<Vec<u8>, Node>,
    },
    Symlink {
        target: Vec<u8>,
        mtime: (i64, u32),
    },
}

/// Creates `node`'s children inside the existing directory `dir`.
pub fn build(dir: &Path, children: &BTreeMap<Vec<u8>, Node>) {
    for (name, node) in children {
        let p = dir.join(OsStr::from_bytes(name));
        match node {
            Node::File {
                len,
                seed,
                mode,
                mtime,
            } => {
                std::fs::write(&p, bytes(*len, *seed)).unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
                set_mtime(&p, mtime.0, mtime.1);
            }
            Node::Dir {
                mode,
                mtime,
                children,
            } => {
                std::fs::create_dir(&p).unwrap();
                build(&p, children);
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
                set_mtime(&p, mtime.0, mtime.1);
            }
            Node::Symlink { target, mtime } => {
                std::os::unix::fs::symlink(OsStr::from_bytes(target), &p).unwrap();
                set_mtime(&p, mtime.0, mtime.1);
            }
        }
    }
}

/// Everything under `root` (not `root` itself): relative path → a description
/// holding type, permission bits, mtime to the nanosecond, size, and a hash
/// of the content or the link target.
pub fn describe(root: &Path) -> BTreeMap<Vec<u8>, String> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<Vec<u8>, String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let rel = p
            .strip_prefix(root)
            .unwrap()
            .as_os_str()
            .as_bytes()
            .to_vec();
        let ft = m.file_type();
        let mtime = format!("{}.{:09}", m.mtime(), m.mtime_nsec());
        let d = if ft.is_symlink() {
            let t = std::fs::read_link(&p).unwrap();
            format!("link {mtime} -> {:?}", t.as_os_str())
        } else if ft.is_dir() {
            walk(root, &p, out);
            format!("dir {:o} {mtime}", m.mode() & 0o7777)
        } else {
            let data = std::fs::read(&p).unwrap();
            format!(
                "file {:o} {mtime} {} {}",
                m.mode() & 0o7777,
                data.len(),
                blake3::hash(&data).to_hex()
            )
        };
        out.insert(rel, d);
    }
}

/// Asserts two trees are identical, naming the first differences.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let da = describe(a);
    let db = describe(b);
    if da != db {
        let mut msgs = Vec::new();
        for (k, v) in &da {
            match db.get(k) {
                None => msgs.push(format!("missing {:?}: {v}", String::from_utf8_lossy(k))),
                Some(w) if w != v => {
                    msgs.push(format!("{:?}: {v} != {w}", String::from_utf8_lossy(k)))
                }
                _ => {}
            }
        }
        for k in db.keys() {
            if !da.contains_key(k) {
                msgs.push(format!("extra {:?}", String::from_utf8_lossy(k)));
            }
        }
        msgs.truncate(20);
        panic!("trees differ:\n{}", msgs.join("\n"));
    }
}

/// Total apparent bytes of the files under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        if m.is_dir() {
            n += dir_bytes(&e.path());
        } else {
            n += m.len();
        }
    }
    n
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            v.extend(files_under(&p));
        } else {
            v.push(p);
        }
    }
    v.sort();
    v
}

/// Creates and opens a store at `dir/store` whose cache lives in `dir/cache`.
pub fn new_store(dir: &Path) -> systemprompt_sync::Store {
    let store_dir = dir.join("store");
    systemprompt_sync::Store::init(&store_dir).unwrap();
    open_store(dir)
}

/// Opens the store made by [`new_store`].
pub fn open_store(dir: &Path) -> systemprompt_sync::Store {
    let mut s =
        systemprompt_sync::Store::open(&dir.join("store"), systemprompt_sync::LockMode::Shared)
            .unwrap();
    s.set_cache_dir(dir.join("cache"));
    s
}

/// The `format = N` line of the store at `store`'s `store.toml`.
pub fn format_of(store: &Path) -> String {
    std::fs::read_to_string(store.join("store.toml"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("format"))
        .unwrap()
        .to_string()
}

/// `sqlite3 FILE .dump` (the real CLI, installed by scripts/test.sh).
pub fn dump(db: &Path) -> String {
    let o = Command::new("sqlite3")
        .arg(db)
        .arg(".dump")
        .output()
        .expect("the sqlite3 command-line shell is needed (scripts/test.sh installs it)");
    assert!(
        o.status.success(),
        "sqlite3 .dump: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).expect("dump is UTF-8")
}

/// Rewrites table `table` of the first snapshot in the store at `store`
/// with `edit` (the library's own encoder), as a new snapshot `main` moves
/// to: how the hostile-SQL tests plant what a tampered store would hold.
#[allow(dead_code)]
pub fn plant_table(
    store: &Path,
    table: &str,
    edit: impl FnOnce(&mut systemprompt_sync::db::table::TableObject),
) {
    plant_table_as(store, table, table, edit)
}

/// [`plant_table`], the edited table listed in the snapshot as `name`.
pub fn plant_table_as(
    store: &Path,
    table: &str,
    name: &str,
    edit: impl FnOnce(&mut systemprompt_sync::db::table::TableObject),
) {
    use systemprompt_sync::object::snapshot::Snapshot;
    use systemprompt_sync::object::{ObjectSink, ObjectSource};
    use systemprompt_sync::{LockMode, ObjectId, ObjectType, Store};
    let store = Store::open(store, LockMode::Shared).unwrap();
    let main = store.read_ref("main").unwrap().unwrap();
    let load =
        |id: &ObjectId| Snapshot::decode(&store.get(ObjectType::Snapshot, id).unwrap()).unwrap();
    let mut snap = load(&main);
    // Each edit starts from the honest first snapshot.
    let mut first = snap.clone();
    while let Some(p) = first.parents.first() {
        first = load(p);
    }
    let mut t = systemprompt_sync::db::load_table(&store, &first.tables[table]).unwrap();
    edit(&mut t);
    let s = store.writer().unwrap();
    let tid = s.put(ObjectType::Table, &t.encode()).unwrap();
    snap.tables.remove(table);
    snap.tables.insert(name.into(), tid);
    snap.parents = vec![main];
    let id = s.put(ObjectType::Snapshot, &snap.encode()).unwrap();
    s.finish().unwrap();
    store
        .update_ref("main", Some(Some(main)), Some(id))
        .unwrap();
}

/// On a thread: once a file whose name starts with `prefix` shows in `dir`
/// (a command's temporary file), runs `then`. Joins to whether it showed
/// (within about ten seconds).
#[allow(dead_code)]
pub fn when_a_file_shows(
    dir: &Path,
    prefix: &'static str,
    then: impl FnOnce() + Send + 'static,
) -> std::thread::JoinHandle<bool> {
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        for _ in 0..50_000 {
            let shows = std::fs::read_dir(&dir)
                .unwrap()
                .filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().starts_with(prefix));
            if shows {
                then();
                return true;
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        false
    })
}
