//! The library API (`SyncConfig`, `SyncService`, `SyncDirection`) against a
//! real `sp-sync serve` on loopback: the example program (examples/library.rs)
//! run both as the built binary and in-process, and each `SyncError` variant
//! the contract names, provoked.

use crate::common;
use crate::net;

#[path = "../../examples/library.rs"]
#[allow(dead_code)]
mod example;

use std::path::{Path, PathBuf};

use net::{Server, serve};
use systemprompt_sync::{
    LockMode, NoProgress, ObjectId, SnapshotOptions, Store, SyncConfig, SyncDirection, SyncError,
    SyncService,
};

const TOKEN: &str = "token-for-acme-0123456789";

fn server(dir: &Path) -> Server {
    let tokens = dir.join("tokens.toml");
    std::fs::write(
        &tokens,
        format!("[tenants.acme]\ntokens = [\"{TOKEN}\"]\n[tenants.other]\ntokens = [\"{TOKEN}-other\"]\n"),
    )
    .unwrap();
    let data = dir.join("data");
    serve(data.to_str().unwrap(), Some(&tokens), "127.0.0.1:0", &[])
}

/// The newest modification time of the files under `p`.
fn newest(p: &Path) -> std::time::SystemTime {
    let mut t = std::fs::metadata(p).unwrap().modified().unwrap();
    if p.is_dir() {
        for e in std::fs::read_dir(p).unwrap() {
            t = t.max(newest(&e.unwrap().path()));
        }
    }
    t
}

/// The built example program. `cargo test` builds examples, `cargo
/// nextest run` does not: then (or when the library or the example changed
/// since it was built) it is built here; only the example compiles, the
/// library is already built.
fn example_bin() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_sp-sync"))
        .parent()
        .unwrap()
        .join("examples/library");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sources = newest(&root.join("src")).max(newest(&root.join("examples/library.rs")));
    let stale = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .map_or(true, |built| built < sources);
    if stale {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = std::process::Command::new(cargo)
            .args(["build", "--example", "library"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(st.success(), "cargo build --example library failed");
    }
    assert!(bin.exists(), "{} was not built", bin.display());
    bin
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A services folder with a few files, and a database beside it.
fn services(dir: &Path) -> (PathBuf, PathBuf) {
    let s = dir.join("services");
    std::fs::create_dir_all(s.join("agents")).unwrap();
    std::fs::write(s.join("agents/bot.md"), "# bot\n").unwrap();
    std::fs::write(s.join("model.bin"), common::bytes(300_000, 7)).unwrap();
    let db = dir.join("app.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'one'), (2, 'two');")
        .unwrap();
    (s, db)
}

#[test]
fn the_example_program_runs_against_a_real_server() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = server(tmp.path());
    let bin = example_bin();
    let work = tmp.path().join("work");
    let out = std::process::Command::new(&bin)
        .args([&format!("http://{}", srv.addr), "acme", TOKEN])
        .arg(&work)
        .env_remove("SP_SYNC_TOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "example failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: Vec<&str> = results
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "local", "files", "database", "files", "database", "local", "local"
        ]
    );
    assert_eq!(results[1]["direction"], "push");
    assert!(results[1]["objects"].as_u64().unwrap() > 0);
    assert_eq!(results[4]["rows_inserted"], 2);
    // What the server holds: both refs of the tenant.
    let (status, body) = net::http(&srv.addr, "GET", "/v1/acme/refs", Some(TOKEN), b"");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let refs = String::from_utf8_lossy(&body);
    assert!(
        refs.contains("files") && refs.contains("database"),
        "{refs}"
    );
}

#[test]
fn the_example_code_in_process() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = server(tmp.path());
    let args = example::Args {
        api_url: format!("http://{}", srv.addr),
        tenant: "other".into(),
        token: format!("{TOKEN}-other"),
        workdir: tmp.path().join("work"),
    };
    let results = rt().block_on(example::run(&args)).unwrap();
    assert_eq!(results.len(), 7);
    // A second push of the same folder sends nothing new.
    let origin = tmp.path().join("work/origin");
    let again = rt()
        .block_on(
            SyncService::new(
                SyncConfig::builder("other", &args.api_url, &args.token, &origin)
                    .with_database(origin.join("data/app.db").to_string_lossy())
                    .build(),
            )
            .sync_all(),
        )
        .unwrap();
    // Nothing changed: no snapshot is written (like `git commit` with
    // nothing to commit), nothing travels, the remote's refs stay.
    for r in &again {
        assert!(r.up_to_date, "{r:?}");
        assert_eq!(r.objects, 0, "{r:?}");
        assert!(r.previous.is_some() && r.previous == r.snapshot, "{r:?}");
    }
}

#[test]
fn a_push_with_nothing_changed_writes_no_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = server(tmp.path());
    let url = format!("http://{}", srv.addr);
    let (s, db) = services(tmp.path());
    let push = || {
        let cfg = SyncConfig::builder("acme", &url, TOKEN, &s)
            .with_database(db.to_string_lossy())
            .build();
        rt().block_on(SyncService::new(cfg).sync_all()).unwrap()
    };
    let remote_refs = || {
        let (status, body) = net::http(&srv.addr, "GET", "/v1/acme/refs", Some(TOKEN), b"");
        assert_eq!(status, 200);
        body
    };
    let local = s.join(".sp-sync");
    let snapshots = |dir: &Path| {
        let store = Store::open(dir, LockMode::Shared).unwrap();
        let id = store.read_ref("files").unwrap().unwrap();
        systemprompt_sync::history(&store, id, None).unwrap().len()
    };

    let first = push();
    assert!(
        first.iter().all(|r| !r.up_to_date && r.objects > 0),
        "{first:?}"
    );
    let refs = remote_refs();
    let kept = snapshots(&local);

    // The same folder and database again: up to date, nothing written or sent.
    let second = push();
    for (a, b) in first.iter().zip(&second) {
        assert!(b.up_to_date, "{b:?}");
        assert_eq!(b.objects, 0, "{b:?}");
        assert_eq!(b.snapshot, a.snapshot, "{b:?}");
        assert_eq!(b.previous, a.snapshot, "{b:?}");
    }
    assert_eq!(remote_refs(), refs);
    assert_eq!(snapshots(&local), kept);

    // A changed file: a new snapshot of the files, on top of the first;
    // the database, unchanged, stays up to date.
    std::fs::write(s.join("agents/bot.md"), "# bot v2\n").unwrap();
    let third = push();
    let files = third.iter().find(|r| r.kind == "files").unwrap();
    let rows = third.iter().find(|r| r.kind == "database").unwrap();
    assert!(!files.up_to_date && files.objects > 0, "{files:?}");
    assert_ne!(files.snapshot, first[0].snapshot);
    assert_eq!(files.previous, first[0].snapshot);
    assert!(rows.up_to_date && rows.objects == 0, "{rows:?}");
    assert_eq!(snapshots(&local), kept + 1);
}

#[test]
fn dry_runs_move_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = server(tmp.path());
    let (s, db) = services(tmp.path());
    let url = format!("http://{}", srv.addr);
    let cfg = |dir: &Path, d| {
        SyncConfig::builder("acme", &url, TOKEN, dir)
            .with_database(db.to_string_lossy())
            .with_direction(d)
            .with_dry_run(true)
    };
    let r = rt()
        .block_on(SyncService::new(cfg(&s, SyncDirection::Push).build()).sync_all())
        .unwrap();
    assert!(
        r.iter()
            .all(|r| r.dry_run && r.objects == 0 && r.snapshot.is_some())
    );
    let (_, body) = net::http(&srv.addr, "GET", "/v1/acme/refs", Some(TOKEN), b"");
    assert!(!String::from_utf8_lossy(&body).contains("files"));
    let elsewhere = tmp.path().join("elsewhere");
    let r = rt()
        .block_on(SyncService::new(cfg(&elsewhere, SyncDirection::Pull).build()).sync_files())
        .unwrap();
    assert_eq!(r.snapshot, None);
    assert!(!elsewhere.join("agents").exists());
}

#[test]
fn missing_config_names_the_setting() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, _) = services(tmp.path());
    if std::env::var_os("DATABASE_URL").is_some() {
        eprintln!("DATABASE_URL is set in this environment; the fallback is tested by it");
        return;
    }
    let e = rt()
        .block_on(
            SyncService::new(SyncConfig::builder("acme", "http://127.0.0.1:9", TOKEN, &s).build())
                .sync_database(),
        )
        .unwrap_err();
    assert!(
        matches!(&e, SyncError::MissingConfig(n) if n == "DATABASE_URL"),
        "{e}"
    );
    assert_eq!(e.to_string(), "missing configuration: DATABASE_URL");
    // No token for an HTTP remote.
    let e = rt()
        .block_on(
            SyncService::new(SyncConfig::builder("acme", "http://127.0.0.1:9", "", &s).build())
                .sync_files(),
        )
        .unwrap_err();
    assert!(
        matches!(&e, SyncError::MissingConfig(n) if n == "token"),
        "{e}"
    );
}

#[test]
fn database_url_is_read_from_the_environment() {
    // The child (this test again, in a new process) has DATABASE_URL set,
    // so this process's environment stays as it is.
    if let Ok(dir) = std::env::var("SP_SYNC_LIBRARY_CHILD") {
        let dir = Path::new(&dir);
        let r = rt()
            .block_on(
                SyncService::new(
                    SyncConfig::builder("", "", "", dir.join("services"))
                        .with_remote(dir.join("remote").to_string_lossy())
                        .build(),
                )
                .sync_database(),
            )
            .unwrap();
        assert_eq!(r.tables.get("t"), Some(&2));
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_, db) = services(tmp.path());
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "library::database_url_is_read_from_the_environment",
            "--nocapture",
        ])
        .env("SP_SYNC_LIBRARY_CHILD", tmp.path())
        .env("DATABASE_URL", format!("sqlite://{}", db.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let remote = Store::open(&tmp.path().join("remote"), LockMode::Shared).unwrap();
    assert!(remote.read_ref("database").unwrap().is_some());
}

#[test]
fn io_database_unauthorized_and_api_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = server(tmp.path());
    let url = format!("http://{}", srv.addr);
    let (s, db) = services(tmp.path());
    let run = |cfg: SyncConfig| rt().block_on(SyncService::new(cfg).sync_all());

    // Io: the services folder does not exist.
    let e =
        run(SyncConfig::builder("acme", &url, TOKEN, tmp.path().join("nope")).build()).unwrap_err();
    assert!(matches!(e, SyncError::Io { .. }), "{e}");

    // Database: not SQLite, and a file that is not a database.
    let e = run(SyncConfig::builder("acme", &url, TOKEN, &s)
        .with_database("postgres://db.example.com/app")
        .build())
    .unwrap_err();
    assert!(matches!(e, SyncError::Database(_)), "{e}");
    let junk = tmp.path().join("junk.db");
    std::fs::write(
        &junk,
        b"this is not a database, just text, long enough to be read",
    )
    .unwrap();
    let e = rt()
        .block_on(
            SyncService::new(
                SyncConfig::builder("acme", &url, TOKEN, &s)
                    .with_database(junk.to_string_lossy())
                    .build(),
            )
            .sync_database(),
        )
        .unwrap_err();
    assert!(matches!(e, SyncError::Database(_)), "{e}");

    // Unauthorized: a wrong token; nothing reaches the tenant.
    let e = run(
        SyncConfig::builder("acme", &url, "wrong-token-0123456789", &s)
            .with_database(db.to_string_lossy())
            .build(),
    )
    .unwrap_err();
    assert!(matches!(e, SyncError::Unauthorized(_)), "{e}");
    let (_, body) = net::http(&srv.addr, "GET", "/v1/acme/refs", Some(TOKEN), b"");
    assert!(!String::from_utf8_lossy(&body).contains("files"));

    // A second folder whose history does not descend from the tenant's:
    // refused before anything moves (NonFastForward), unless forced.
    run(SyncConfig::builder("acme", &url, TOKEN, &s).build()).unwrap();
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("x.md"), "x\n").unwrap();
    let e = run(SyncConfig::builder("acme", &url, TOKEN, &other).build()).unwrap_err();
    assert!(matches!(e, SyncError::NonFastForward { .. }), "{e}");
    run(SyncConfig::builder("acme", &url, TOKEN, &other)
        .with_force(true)
        .build())
    .unwrap();

    // ApiError: the server refuses the ref (409): tenant `other` already
    // holds `files/x`, and `files` would name its directory.
    let clash = tmp.path().join("clash");
    Store::init(&clash).unwrap();
    let store = Store::open(&clash, LockMode::Shared).unwrap();
    let opts = SnapshotOptions {
        sources: vec![other.clone()],
        ref_name: "files/x".into(),
        ..Default::default()
    };
    systemprompt_sync::snapshot(&store, &opts, &NoProgress).unwrap();
    let remote = systemprompt_sync::remote::open(
        &systemprompt_sync::remote::Location::parse(&format!("{url}/other")).unwrap(),
        &systemprompt_sync::remote::Credentials {
            token: Some(format!("{TOKEN}-other")),
            s3: Vec::new(),
        },
        true,
    )
    .unwrap();
    systemprompt_sync::transfer::push(
        &store,
        &*remote,
        None,
        &["files/x".into()],
        false,
        &NoProgress,
    )
    .unwrap();
    let e =
        run(SyncConfig::builder("other", &url, format!("{TOKEN}-other"), &s).build()).unwrap_err();
    match &e {
        SyncError::ApiError { status, message } => {
            assert_eq!(*status, 409);
            assert!(message.contains("clashes"), "{message}");
        }
        e => panic!("expected an ApiError, got {e:?}"),
    }
}

#[test]
fn ref_conflicts_and_non_fast_forward_on_a_store_remote() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, _) = services(tmp.path());
    let remote = tmp.path().join("remote-store");
    let cfg = |dir: &Path| {
        SyncConfig::builder("", "", "", dir)
            .with_remote(remote.to_string_lossy())
            .build()
    };
    let first = rt()
        .block_on(SyncService::new(cfg(&s)).sync_files())
        .unwrap();
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("y.md"), "y\n").unwrap();
    let e = rt()
        .block_on(SyncService::new(cfg(&other)).sync_files())
        .unwrap_err();
    assert!(matches!(e, SyncError::NonFastForward { .. }), "{e}");

    // A compare-and-swap against a stale expectation: RefConflict.
    let store = Store::open(&remote, LockMode::Shared).unwrap();
    let id = first.snapshot.unwrap();
    let stale = ObjectId([7; 32]);
    let e = store
        .update_ref("files", Some(Some(stale)), Some(id))
        .unwrap_err();
    match e {
        SyncError::RefConflict { actual, .. } => assert_eq!(actual, Some(id)),
        e => panic!("expected RefConflict, got {e:?}"),
    }
}

/// Flips one byte in the middle of every pack of a store.
fn damage_packs(store: &Path) {
    for p in common::files_under(&store.join("packs")) {
        if p.extension().is_some_and(|x| x == "pack") {
            let mut b = std::fs::read(&p).unwrap();
            let i = b.len() / 2;
            b[i] ^= 0x55;
            std::fs::write(&p, b).unwrap();
        }
    }
}

#[test]
fn corrupt_and_missing_objects() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, _) = services(tmp.path());
    let remote = tmp.path().join("remote-store");
    let copy_store = tmp.path().join("copy-store");
    let cfg = |dir: &Path, d| {
        SyncConfig::builder("", "", "", dir)
            .with_remote(remote.to_string_lossy())
            .with_store_path(&copy_store)
            .with_direction(d)
            .build()
    };
    rt().block_on(
        SyncService::new(
            SyncConfig::builder("", "", "", &s)
                .with_remote(remote.to_string_lossy())
                .build(),
        )
        .sync_files(),
    )
    .unwrap();
    let a = tmp.path().join("a");
    rt().block_on(SyncService::new(cfg(&a, SyncDirection::Pull)).sync_files())
        .unwrap();
    common::assert_same_tree(&s.join("agents"), &a.join("agents"));

    // A damaged pack in the local store: restoring from it names the
    // corrupt object, and writes no damaged file.
    damage_packs(&copy_store);
    let b = tmp.path().join("b");
    let e = rt()
        .block_on(SyncService::new(cfg(&b, SyncDirection::Pull)).sync_files())
        .unwrap_err();
    assert!(matches!(e, SyncError::CorruptObject { .. }), "{e}");
    assert!(!b.join("model.bin").exists());

    // Packs gone from the local store, refs kept: a pull fetches them again.
    for p in common::files_under(&copy_store.join("packs")) {
        std::fs::remove_file(p).unwrap();
    }
    let c = tmp.path().join("c");
    let r = rt()
        .block_on(SyncService::new(cfg(&c, SyncDirection::Pull)).sync_files())
        .unwrap();
    assert!(r.objects > 0);
    common::assert_same_tree(&s.join("agents"), &c.join("agents"));

    // Packs gone from the remote, its refs kept: what a ref names is
    // missing, and the pull says so.
    for p in common::files_under(&remote.join("packs")) {
        std::fs::remove_file(p).unwrap();
    }
    let d = tmp.path().join("d");
    let e = rt()
        .block_on(
            SyncService::new(
                SyncConfig::builder("", "", "", &d)
                    .with_remote(remote.to_string_lossy())
                    .with_direction(SyncDirection::Pull)
                    .build(),
            )
            .sync_files(),
        )
        .unwrap_err();
    assert!(matches!(e, SyncError::MissingObject { .. }), "{e}");
    assert!(!d.join("agents").exists());
}

/// A pull with `with_delete` into a services folder that holds the
/// database: the database and SQLite's files beside it are not the
/// snapshot's to remove (nor is the local store).
#[test]
fn a_deleting_pull_keeps_the_database_and_its_sidecars() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = server(tmp.path());
    let (s, _) = services(tmp.path());
    let db = s.join("app.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1);")
        .unwrap();
    let url = format!("http://{}", srv.addr);
    let cfg = |d| {
        SyncConfig::builder("acme", &url, TOKEN, &s)
            .with_database(db.to_string_lossy())
            .with_direction(d)
    };
    rt().block_on(SyncService::new(cfg(SyncDirection::Push).build()).sync_files())
        .unwrap();
    for side in ["app.db-wal", "app.db-shm", "app.db-journal"] {
        std::fs::write(s.join(side), side).unwrap();
    }
    std::fs::write(s.join("stray.txt"), "not in the snapshot").unwrap();
    rt().block_on(
        SyncService::new(cfg(SyncDirection::Pull).with_delete(true).build()).sync_files(),
    )
    .unwrap();
    assert!(!s.join("stray.txt").exists(), "--delete removed nothing");
    for side in ["app.db-wal", "app.db-shm", "app.db-journal"] {
        assert_eq!(std::fs::read_to_string(s.join(side)).unwrap(), side);
    }
    assert!(db.exists());
    assert!(s.join(".sp-sync").is_dir());
    assert_eq!(
        std::fs::read_to_string(s.join("agents/bot.md")).unwrap(),
        "# bot\n"
    );
}

/// A store opened before another process wrote a snapshot and moved a ref
/// onto it reads that snapshot: its indexes are loaded again when an object
/// is not in them, instead of the object counting as missing (audit 24:
/// `log` and `restore` run beside a snapshot failed, exit 1).
#[test]
fn a_store_open_before_another_process_snapshots_reads_the_new_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path();
    std::fs::create_dir_all(w.join("services")).unwrap();
    std::fs::write(w.join("services/a.txt"), "a\n").unwrap();
    common::ok(w, &["init", "-q"]);
    common::ok(w, &["snapshot", "services", "-q"]);
    let store = Store::open(&w.join(".sp-sync"), LockMode::Shared).unwrap();
    let fsck_store = Store::open(&w.join(".sp-sync"), LockMode::Shared).unwrap();
    std::fs::write(w.join("services/a.txt"), "b\n").unwrap();
    common::ok(w, &["snapshot", "services", "-q"]);
    // fsck of a store opened before finds it whole.
    let rep = systemprompt_sync::store::fsck::fsck(&fsck_store, &Default::default(), &NoProgress)
        .unwrap();
    assert!(rep.ok && rep.snapshots == 2, "{:?}", rep.errors);
    let id = store.read_ref("main").unwrap().unwrap();
    let snap = systemprompt_sync::names::load_snapshot(&store, &id).unwrap();
    let root = snap.root.unwrap();
    let e = systemprompt_sync::object::tree::lookup(&store, &root, b"a.txt")
        .unwrap()
        .unwrap();
    assert!(matches!(
        e.kind,
        systemprompt_sync::EntryKind::File { size: 2, .. }
    ));
}
