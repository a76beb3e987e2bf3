//! The CI artifact cache (`sp-sync cache save/restore/list/prune`) through
//! the real binary against the three kinds of remote — a path, a real
//! `sp-sync serve` on loopback, a real S3-compatible server (moto) — and
//! through the library.

use crate::common;
use crate::net;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::{bytes, describe, fails, ok};
use net::{bucket, ok_env, run_env, s3_env, serve};
use serde_json::Value;

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The environment of one "runner": its own local cache store, and a
/// GitHub output file.
fn runner(root: &Path, name: &str, extra: &[(&'static str, String)]) -> Runner {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut env = extra.to_vec();
    env.push((
        "SP_SYNC_CACHE_STORE",
        root.join(format!("{name}-cache-store"))
            .display()
            .to_string(),
    ));
    let out = root.join(format!("{name}-github-output"));
    env.push(("GITHUB_OUTPUT", out.display().to_string()));
    Runner { dir, env, out }
}

struct Runner {
    dir: PathBuf,
    env: Vec<(&'static str, String)>,
    out: PathBuf,
}

impl Runner {
    fn ok(&self, args: &[&str]) -> String {
        ok_env(&self.dir, args, &self.env)
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        json(&self.ok(&a))
    }

    /// Exit status, stdout, stderr.
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let o = run_env(&self.dir, args, &self.env);
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    /// Fails with exit `code` and (for 1) exactly one `error:` line.
    fn fails(&self, args: &[&str], code: i32) -> String {
        let (c, out, err) = self.run(args);
        assert_eq!(c, code, "{args:?}: stdout {out} stderr {err}");
        if code == 1 {
            common::assert_one_error_line(args, &err);
        }
        err
    }

    fn github_output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }
}

/// A build-output-like tree: nested files, a multi-chunk file, a symlink.
fn fake_target(dir: &Path, seed: u64) {
    let t = dir.join("target/debug/deps");
    std::fs::create_dir_all(&t).unwrap();
    std::fs::create_dir_all(dir.join("target/debug/.fingerprint/a")).unwrap();
    std::fs::write(t.join("libfoo.rlib"), bytes(3 << 20, seed)).unwrap();
    std::fs::write(t.join("common.rlib"), bytes(1 << 20, 99)).unwrap();
    std::fs::write(
        dir.join("target/debug/.fingerprint/a/hash"),
        format!("{seed}\n"),
    )
    .unwrap();
    std::os::unix::fs::symlink("deps/libfoo.rlib", dir.join("target/debug/foo")).unwrap_or(());
    std::fs::create_dir_all(dir.join("vendor")).unwrap();
    std::fs::write(dir.join("vendor/lock.txt"), format!("lock {seed}\n")).unwrap();
}

fn sub(d: &BTreeMap<Vec<u8>, String>, prefix: &str) -> BTreeMap<Vec<u8>, String> {
    d.iter()
        .filter(|(k, _)| k.starts_with(prefix.as_bytes()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Hit, prefix fallback to the newest entry, miss (exit 0, says so),
/// --fail-on-miss, immutable keys, bad keys, --target, extra files kept:
/// the same script against any remote.
fn restore_keys(tmp: &Path, url: &str, env: &[(&'static str, String)]) {
    let a = runner(tmp, "saver", env);
    fake_target(&a.dir, 1);
    let saved_1 = describe(&a.dir);
    let v = a.json(&[
        "cache",
        "save",
        "cargo-linux-aaa",
        "target",
        "vendor/lock.txt",
        "--remote",
        url,
    ]);
    assert_eq!(v["saved"], true, "{v}");
    assert_eq!(v["key"], "cargo-linux-aaa");
    let first_id = v["id"].clone();
    assert!(v["objects_sent"].as_u64().unwrap() > 0);

    // A key is immutable: saving it again says so and changes nothing.
    std::fs::write(a.dir.join("vendor/lock.txt"), "changed\n").unwrap();
    let (c, out, err) = a.run(&[
        "cache",
        "save",
        "cargo-linux-aaa",
        "target",
        "--remote",
        url,
    ]);
    assert_eq!(c, 0, "{err}");
    assert!(out.is_empty());
    assert!(err.contains("already exists"), "{err}");
    let v = a.json(&[
        "cache",
        "save",
        "cargo-linux-aaa",
        "target",
        "--remote",
        url,
    ]);
    assert_eq!(v["saved"], false);
    assert_eq!(v["id"], first_id);

    // A newer entry under another key of the same family.
    std::fs::write(a.dir.join("target/debug/.fingerprint/a/hash"), "2\n").unwrap();
    let saved_2 = describe(&a.dir);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let v = a.json(&[
        "cache",
        "save",
        "cargo-linux-bbb",
        "target",
        "vendor/lock.txt",
        "--remote",
        url,
    ]);
    assert_eq!(v["saved"], true);
    // An older-looking key saved later still counts as newer by time.
    let v = a.json(&["cache", "save", "cargo-mac-zzz", "vendor", "--remote", url]);
    assert_eq!(v["saved"], true);

    // Another runner, nothing local: exact hit.
    let b = runner(tmp, "restorer", env);
    let v = b.json(&["cache", "restore", "cargo-linux-aaa", "--remote", url]);
    assert_eq!(v["result"], "hit", "{v}");
    assert_eq!(v["key"], "cargo-linux-aaa");
    assert_eq!(v["id"], first_id);
    let got = describe(&b.dir);
    assert_eq!(sub(&got, "target/"), sub(&saved_1, "target/"));
    assert_eq!(sub(&got, "vendor/"), sub(&saved_1, "vendor/"));
    assert_eq!(b.github_output(), "cache-hit=true\n");

    // No exact entry: the first prefix that matches gives its newest entry.
    let c = runner(tmp, "partial", env);
    std::fs::create_dir_all(c.dir.join("target")).unwrap();
    std::fs::write(c.dir.join("target/mine.txt"), "not in the cache\n").unwrap();
    let v = c.json(&[
        "cache",
        "restore",
        "cargo-linux-ccc",
        "--restore-key",
        "cargo-linux-",
        "--restore-key",
        "cargo-",
        "--remote",
        url,
    ]);
    assert_eq!(v["result"], "partial", "{v}");
    assert_eq!(v["key"], "cargo-linux-bbb");
    assert_eq!(v["requested_key"], "cargo-linux-ccc");
    let got = describe(&c.dir);
    let mut want = sub(&saved_2, "target/");
    want.extend(sub(&got, "target/mine.txt"));
    assert_eq!(sub(&got, "target/"), want, "extra files are kept");
    assert!(got.contains_key(b"target/mine.txt".as_slice()));
    assert_eq!(c.github_output(), "cache-hit=false\n");
    // The second prefix is tried only when the first matches nothing.
    let v = c.json(&[
        "cache",
        "restore",
        "x",
        "--restore-key",
        "nope-",
        "--restore-key",
        "cargo-",
        "--remote",
        url,
    ]);
    assert_eq!(v["result"], "partial");
    assert_eq!(
        v["key"], "cargo-mac-zzz",
        "the newest of all cargo- entries"
    );

    // A miss: exit 0, says so, writes nothing.
    let d = runner(tmp, "miss", env);
    let (code, out, err) = d.run(&[
        "cache",
        "restore",
        "other-1",
        "--restore-key",
        "other-",
        "--remote",
        url,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.is_empty());
    assert!(err.contains("cache miss"), "{err}");
    assert_eq!(std::fs::read_dir(&d.dir).unwrap().count(), 0);
    let v = d.json(&["cache", "restore", "other-1", "--remote", url]);
    assert_eq!(v["result"], "miss");
    assert_eq!(v["key"], "other-1");
    assert_eq!(d.github_output(), "cache-hit=false\ncache-hit=false\n");
    let err = d.fails(
        &[
            "cache",
            "restore",
            "other-1",
            "--fail-on-miss",
            "--remote",
            url,
        ],
        1,
    );
    assert!(err.contains("cache miss"), "{err}");

    // Bad keys: one error line, exit 1, nothing written.
    for bad in ["a b", "../x", "x/", ".hidden", ""] {
        d.fails(&["cache", "save", bad, "target", "--remote", url], 1);
        d.fails(&["cache", "restore", bad, "--remote", url], 1);
    }
    d.fails(
        &[
            "cache",
            "restore",
            "k",
            "--restore-key",
            "a b",
            "--remote",
            url,
        ],
        1,
    );
    // Paths must stay below the current directory.
    a.fails(&["cache", "save", "k-up", "../saver", "--remote", url], 1);
    a.fails(&["cache", "save", "k-abs", "/etc", "--remote", url], 1);
    a.fails(
        &["cache", "save", "k-missing", "no-such-dir", "--remote", url],
        1,
    );
    assert_eq!(std::fs::read_dir(&d.dir).unwrap().count(), 0);

    // --target puts the paths below another directory.
    let v = d.json(&[
        "cache",
        "restore",
        "cargo-linux-aaa",
        "--target",
        "elsewhere",
        "--remote",
        url,
    ]);
    assert_eq!(v["result"], "hit");
    let got = describe(&d.dir.join("elsewhere"));
    assert_eq!(sub(&got, "target/"), sub(&saved_1, "target/"));

    // list: every entry with its size and paths; the restored ones say when.
    let v = d.json(&["cache", "list", "--remote", url]);
    let keys: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        ["cargo-linux-aaa", "cargo-linux-bbb", "cargo-mac-zzz"]
    );
    let aaa = &v[0];
    assert_eq!(
        aaa["paths"],
        serde_json::json!(["target", "vendor/lock.txt"])
    );
    assert!(aaa["restored"].is_i64(), "{aaa}");
    assert!(aaa["bytes"].as_u64().unwrap() > 4 << 20);
    assert!(v[2]["restored"].is_i64(), "restored as a partial hit: {v}");
}

#[test]
fn restore_keys_on_a_path_remote() {
    let tmp = tempfile::tempdir().unwrap();
    let url = tmp.path().join("remote-store").display().to_string();
    restore_keys(tmp.path(), &url, &[]);
    // What the remote holds is a sound store.
    common::ok(tmp.path(), &["fsck", "--read-data", "--store", &url]);
}

#[test]
fn restore_keys_on_an_http_remote_and_prune_there() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server-data");
    let server = serve(data.to_str().unwrap(), None, "127.0.0.1:0", &[]);
    let url = server.url("ci");
    restore_keys(tmp.path(), &url, &[]);
    // Prune goes through the server (ref deletion by compare-and-swap).
    let r = runner(tmp.path(), "pruner", &[]);
    let v = r.json(&["cache", "prune", "--max-size", "0", "--remote", &url]);
    assert_eq!(v["removed"].as_array().unwrap().len(), 3, "{v}");
    let v = r.json(&["cache", "list", "--remote", &url]);
    assert_eq!(v, serde_json::json!([]));
    common::ok(
        tmp.path(),
        &["fsck", "--store", data.join("ci").to_str().unwrap()],
    );
}

#[test]
fn restore_keys_on_an_s3_remote() {
    let tmp = tempfile::tempdir().unwrap();
    let b = bucket("cache");
    restore_keys(tmp.path(), &format!("s3://{b}/ci-cache"), &s3_env());
}

/// A bucket that does not exist (a typo in the remote) is an error, never
/// a cache miss: a miss would make every CI run rebuild, silently.
#[test]
fn a_missing_bucket_is_an_error_not_a_miss() {
    let tmp = tempfile::tempdir().unwrap();
    let r = runner(tmp.path(), "r", &s3_env());
    std::fs::write(r.dir.join("f"), "f\n").unwrap();
    let url = format!("s3://{}-typo/ci", bucket("nb"));
    for args in [
        &["cache", "restore", "k", "f", "--remote", &url][..],
        &["cache", "save", "k", "f", "--remote", &url],
        &["cache", "list", "--remote", &url],
    ] {
        let o = run_env(&r.dir, args, &r.env);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("no such bucket"), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}

#[test]
fn restore_rewrites_only_files_whose_content_differs() {
    let tmp = tempfile::tempdir().unwrap();
    let url = tmp.path().join("remote").display().to_string();
    let a = runner(tmp.path(), "a", &[]);
    fake_target(&a.dir, 7);
    a.ok(&["cache", "save", "k", "target", "--remote", &url]);
    let want = sub(&describe(&a.dir), "target/");

    let b = runner(tmp.path(), "b", &[]);
    let v = b.json(&["cache", "restore", "k", "--remote", &url]);
    assert_eq!(v["result"], "hit");
    assert_eq!(v["unchanged"], 0);
    let deps = b.dir.join("target/debug/deps");
    // Same size, different content; same content, another mtime (a CI
    // checkout); a new file beside them.
    let mut data = std::fs::read(deps.join("libfoo.rlib")).unwrap();
    data[1 << 20] ^= 1;
    std::fs::write(deps.join("libfoo.rlib"), &data).unwrap();
    common::set_mtime(&deps.join("common.rlib"), 1_000_000, 0);
    std::fs::write(deps.join("extra.o"), "mine").unwrap();
    let ino_common = std::fs::metadata(deps.join("common.rlib")).unwrap().ino();
    let ino_hash = std::fs::metadata(b.dir.join("target/debug/.fingerprint/a/hash"))
        .unwrap()
        .ino();
    let v = b.json(&["cache", "restore", "k", "--remote", &url]);
    let files = v["files"].as_u64().unwrap();
    // Everything but the changed file (the symlink is always rewritten).
    assert_eq!(v["unchanged"].as_u64().unwrap(), files - 2, "{v}");
    let mut got = sub(&describe(&b.dir), "target/");
    assert!(
        got.remove(b"target/debug/deps/extra.o".as_slice())
            .is_some(),
        "extra files stay"
    );
    assert_eq!(got, want, "content, modes and mtimes are back");
    assert_eq!(
        std::fs::metadata(deps.join("common.rlib")).unwrap().ino(),
        ino_common,
        "an unchanged file is not rewritten, only its mtime set"
    );
    assert_eq!(
        std::fs::metadata(b.dir.join("target/debug/.fingerprint/a/hash"))
            .unwrap()
            .ino(),
        ino_hash
    );
}

#[test]
fn prune_removes_the_least_recently_used_first() {
    let tmp = tempfile::tempdir().unwrap();
    let url = tmp.path().join("remote").display().to_string();
    let a = runner(tmp.path(), "a", &[]);
    for (i, k) in ["k1", "k2", "k3"].iter().enumerate() {
        let d = a.dir.join(k);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("f"), bytes(100_000, i as u64)).unwrap();
        a.ok(&["cache", "save", k, k, "--remote", &url]);
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    // k1 restored now: the most recently used.
    let b = runner(tmp.path(), "b", &[]);
    b.ok(&["cache", "restore", "k1", "--remote", &url]);
    // Nothing is older than a year; a dry run removes nothing.
    let v = a.json(&["cache", "prune", "--older-than", "365", "--remote", &url]);
    assert_eq!(v["removed"], serde_json::json!([]));
    let v = a.json(&[
        "cache",
        "prune",
        "--max-size",
        "200000",
        "--dry-run",
        "--remote",
        &url,
    ]);
    assert_eq!(v["removed"][0]["key"], "k2");
    assert_eq!(
        a.json(&["cache", "list", "--remote", &url])
            .as_array()
            .unwrap()
            .len(),
        3
    );
    // Room for two: k2 (saved first of the unrestored) goes.
    let v = a.json(&["cache", "prune", "--max-size", "200000", "--remote", &url]);
    let removed: Vec<&str> = v["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(removed, ["k2"]);
    let v = a.json(&["cache", "list", "--remote", &url]);
    let keys: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["k1", "k3"]);
    // Room for one: k3 goes, k1 (restored last) stays.
    let v = a.json(&["cache", "prune", "--max-size", "100000", "--remote", &url]);
    assert_eq!(v["removed"][0]["key"], "k3");
    assert_eq!(v["kept"], 1);
    // The meta ref went with its entry: only k1's refs are left.
    let refs = common::ok(tmp.path(), &["ref", "list", "--store", &url]);
    assert!(!refs.contains("k2") && !refs.contains("k3"), "{refs}");
    assert!(
        refs.contains("cache/k1") && refs.contains("cache-meta/k1"),
        "{refs}"
    );
    // A bad size or no rule: one error line.
    a.fails(
        &["cache", "prune", "--max-size", "lots", "--remote", &url],
        1,
    );
    a.fails(&["cache", "prune", "--remote", &url], 2);
}

/// 16 `cache save` processes with different keys at once into one remote
/// (sharing one local cache store too): all succeed, every entry restores
/// identical.
fn sixteen_concurrent_saves(tmp: &Path, url: &str, env: &[(&'static str, String)]) {
    let url = url.to_string();
    let a = runner(tmp, "a", env);
    let mut want = Vec::new();
    for i in 0..16u64 {
        let d = a.dir.join(format!("w{i}"));
        std::fs::create_dir_all(d.join("out")).unwrap();
        // Shared chunks (the same 2 MiB in every entry) and their own.
        std::fs::write(d.join("out/shared.bin"), bytes(2 << 20, 1234)).unwrap();
        std::fs::write(d.join("out/own.bin"), bytes(300_000, i)).unwrap();
        std::fs::write(d.join("out/small.txt"), format!("{i}\n")).unwrap();
        want.push(describe(&d.join("out")));
    }
    let children: Vec<_> = (0..16)
        .map(|i| {
            let mut c = std::process::Command::new(common::bin());
            c.args([
                "cache",
                "save",
                &format!("key-{i}"),
                "out",
                "--remote",
                &url,
                "--json",
            ])
            .current_dir(a.dir.join(format!("w{i}")))
            .env("SP_SYNC_CACHE_DIR", common::cache_dir());
            for (k, v) in &a.env {
                c.env(k, v);
            }
            c.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, c) in children.into_iter().enumerate() {
        let o = c.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "save {i}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(json(&String::from_utf8_lossy(&o.stdout))["saved"], true);
    }
    let b = runner(tmp, "b", env);
    for (i, w) in want.iter().enumerate() {
        let dest = format!("r{i}");
        let v = b.json(&[
            "cache",
            "restore",
            &format!("key-{i}"),
            "--target",
            &dest,
            "--remote",
            &url,
        ]);
        assert_eq!(v["result"], "hit");
        assert_eq!(&describe(&b.dir.join(&dest).join("out")), w, "entry {i}");
    }
    let v = b.json(&["cache", "list", "--remote", &url]);
    assert_eq!(v.as_array().unwrap().len(), 16);
}

#[test]
fn sixteen_concurrent_saves_into_a_path_remote() {
    let tmp = tempfile::tempdir().unwrap();
    let url = tmp.path().join("remote").display().to_string();
    sixteen_concurrent_saves(tmp.path(), &url, &[]);
    common::ok(tmp.path(), &["fsck", "--read-data", "--store", &url]);
}

#[test]
fn sixteen_concurrent_saves_into_an_http_remote() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server-data");
    let server = serve(data.to_str().unwrap(), None, "127.0.0.1:0", &[]);
    sixteen_concurrent_saves(tmp.path(), &server.url("ci"), &[]);
    common::ok(
        tmp.path(),
        &[
            "fsck",
            "--read-data",
            "--store",
            data.join("ci").to_str().unwrap(),
        ],
    );
}

#[test]
fn sixteen_concurrent_saves_into_an_s3_remote() {
    let tmp = tempfile::tempdir().unwrap();
    let b = bucket("cache16");
    sixteen_concurrent_saves(tmp.path(), &format!("s3://{b}/ci"), &s3_env());
}

#[test]
fn no_remote_and_no_store_is_one_error() {
    let tmp = tempfile::tempdir().unwrap();
    let err = fails(tmp.path(), &["cache", "list"], 1);
    assert!(err.contains("SP_SYNC_CACHE_REMOTE"), "{err}");
    let err = fails(tmp.path(), &["cache", "list", "--remote", "origin"], 1);
    assert!(err.contains("origin"), "{err}");
    // The environment names the remote.
    let r = runner(
        tmp.path(),
        "r",
        &[(
            "SP_SYNC_CACHE_REMOTE",
            tmp.path().join("remote").display().to_string(),
        )],
    );
    std::fs::write(r.dir.join("f"), "x").unwrap();
    r.ok(&["cache", "save", "k", "f"]);
    let v = r.json(&["cache", "list"]);
    assert_eq!(v[0]["key"], "k");
}

/// The library: a second save of a slightly changed tree sends little.
#[test]
fn a_second_save_sends_only_what_changed() {
    use systemprompt_sync::cache::{self, RestoreCacheOptions, SaveOptions};
    use systemprompt_sync::remote::StoreRemote;
    use systemprompt_sync::{LockMode, NoProgress, Store};
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    std::fs::create_dir_all(work.join("t")).unwrap();
    for i in 0..20u64 {
        std::fs::write(work.join(format!("t/f{i}")), bytes(1 << 20, i)).unwrap();
    }
    let remote_dir = tmp.path().join("remote");
    Store::init(&remote_dir).unwrap();
    let remote = StoreRemote::new(Store::open(&remote_dir, LockMode::Shared).unwrap());
    let local = cache::open_local(&tmp.path().join("local")).unwrap();
    let opts = |key: &str| SaveOptions {
        key: key.into(),
        paths: vec!["t".into()],
        cwd: work.clone(),
        excludes: Vec::new(),
    };
    let r1 = cache::save(&local, &remote, &opts("k1"), &NoProgress).unwrap();
    assert!(r1.saved && r1.bytes_sent > 20 << 20, "{r1:?}");
    std::fs::write(work.join("t/f3"), b"one line changed\n").unwrap();
    let r2 = cache::save(&local, &remote, &opts("k2"), &NoProgress).unwrap();
    assert!(r2.saved);
    assert!(
        r2.bytes_sent < 64 << 10,
        "second save sent {} bytes",
        r2.bytes_sent
    );
    // Saving k1 again sends nothing and keeps its entry.
    let r3 = cache::save(&local, &remote, &opts("k1"), &NoProgress).unwrap();
    assert!(!r3.saved && r3.id == r1.id && r3.bytes_sent == 0);
    let out = tmp.path().join("out");
    let r = cache::restore(
        &local,
        &remote,
        &RestoreCacheOptions {
            key: "k9".into(),
            restore_keys: vec!["k".into()],
            target: out.clone(),
            ..Default::default()
        },
        &NoProgress,
    )
    .unwrap();
    assert_eq!(r.result, cache::Outcome::Partial);
    assert_eq!(r.key, "k2");
    assert_eq!(describe(&out.join("t")), describe(&work.join("t")));
}

/// The README's GitHub Actions recipe, run by its script: miss, hit, partial.
#[test]
fn the_ci_recipe_script_passes() {
    let o = std::process::Command::new("bash")
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/ci-cache-recipe.sh"))
        .env("SP_SYNC", common::bin())
        .env_remove("SP_SYNC_STORE")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "ci-cache-recipe.sh: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A restore never writes through a symlink on the way to a saved path.
#[test]
fn restore_does_not_write_through_a_symlink_on_the_way() {
    let tmp = tempfile::tempdir().unwrap();
    let url = tmp.path().join("remote").display().to_string();
    let a = runner(tmp.path(), "a", &[]);
    std::fs::create_dir_all(a.dir.join("d/inner")).unwrap();
    std::fs::write(a.dir.join("d/inner/f"), "cached\n").unwrap();
    std::fs::create_dir_all(a.dir.join("a1")).unwrap();
    std::fs::write(a.dir.join("a1/g"), "first\n").unwrap();
    a.ok(&["cache", "save", "k", "a1", "d/inner", "--remote", &url]);
    let b = runner(tmp.path(), "b", &[]);
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, b.dir.join("d")).unwrap();
    let err = b.fails(&["cache", "restore", "k", "--remote", &url], 1);
    assert!(err.contains("symlink"), "{err}");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    // Every path is checked before any is written.
    assert!(
        !b.dir.join("a1").exists(),
        "a1 restored before d/inner was refused"
    );
    // Without the symlink it restores.
    std::fs::remove_file(b.dir.join("d")).unwrap();
    b.ok(&["cache", "restore", "k", "--remote", &url]);
    assert_eq!(
        std::fs::read_to_string(b.dir.join("d/inner/f")).unwrap(),
        "cached\n"
    );
}

/// A saved path that goes through a symlink (`a/ln/secret`, `a/ln`
/// pointing out of the tree) uploaded a file from outside, exit 0, in an
/// entry no restore could write back (audit round 16): refused before
/// anything reaches the remote.
#[test]
fn save_does_not_go_through_a_symlink_on_the_way() {
    let tmp = tempfile::tempdir().unwrap();
    let url = tmp.path().join("remote").display().to_string();
    let a = runner(tmp.path(), "a", &[]);
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), "not yours\n").unwrap();
    std::fs::create_dir_all(a.dir.join("a")).unwrap();
    std::os::unix::fs::symlink(&outside, a.dir.join("a/ln")).unwrap();
    for args in [
        vec!["cache", "save", "k", "a/ln/secret", "--remote", &url],
        vec!["cache", "save", "k", "a", "a/ln/secret", "--remote", &url],
    ] {
        let err = a.fails(&args, 1);
        assert!(err.contains("goes through the symlink a/ln"), "{err}");
    }
    assert!(!tmp.path().join("remote/refs/cache").exists());
}

/// An entry's path that cannot be written because of what is there (a
/// non-empty directory where a file goes, a pipe) is kept, and the restore
/// says so: exit 1, `cache-hit=false`, never a hit a pipeline skips a build
/// on.
#[test]
fn a_restore_that_could_not_write_a_path_is_no_hit() {
    let tmp = tempfile::tempdir().unwrap();
    let url = tmp.path().join("remote").display().to_string();
    let a = runner(tmp.path(), "a", &[]);
    std::fs::create_dir_all(a.dir.join("target/release")).unwrap();
    std::fs::write(a.dir.join("target/release/app"), "bin\n").unwrap();
    std::fs::write(a.dir.join("pipe"), "file\n").unwrap();
    a.ok(&[
        "cache",
        "save",
        "k",
        "target/release/app",
        "pipe",
        "--remote",
        &url,
    ]);
    let b = runner(tmp.path(), "b", &[]);
    std::fs::create_dir_all(b.dir.join("target/release/app")).unwrap();
    std::fs::write(b.dir.join("target/release/app/.keep"), "").unwrap();
    let err = b.fails(
        &["cache", "restore", "k", "--remote", &url, "--fail-on-miss"],
        1,
    );
    assert!(err.contains("target/release/app"), "{err}");
    assert_eq!(b.github_output().trim(), "cache-hit=false");
    assert!(b.dir.join("target/release/app/.keep").exists());
    // A pipe where a file goes: kept, and no hit either.
    std::fs::remove_dir_all(b.dir.join("target")).unwrap();
    let fifo = b.dir.join("pipe");
    std::fs::remove_file(&fifo).unwrap();
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    b.fails(&["cache", "restore", "k", "--remote", &url], 1);
    std::fs::remove_file(&fifo).unwrap();
    let v = b.json(&["cache", "restore", "k", "--remote", &url]);
    assert_eq!(v["result"], "hit", "{v}");
    assert_eq!(
        std::fs::read_to_string(b.dir.join("target/release/app")).unwrap(),
        "bin\n"
    );
}

/// The first restore of a CI pipeline, before any save: a path remote that
/// holds no store yet is a miss, and nothing is created there.
#[test]
fn a_restore_from_a_remote_with_no_store_is_a_miss_and_creates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("not-yet");
    let r = runner(tmp.path(), "r", &[]);
    let v = r.json(&[
        "cache",
        "restore",
        "k1",
        "--remote",
        remote.to_str().unwrap(),
    ]);
    assert_eq!(v["result"], "miss");
    assert_eq!(r.github_output(), "cache-hit=false\n");
    assert!(!remote.exists(), "a restore created {}", remote.display());
    let err = r.fails(
        &[
            "cache",
            "restore",
            "k1",
            "--remote",
            remote.to_str().unwrap(),
            "--fail-on-miss",
        ],
        1,
    );
    assert!(err.contains("cache miss"), "{err}");
    assert!(!remote.exists());
    // The first save creates it; then the key hits.
    std::fs::write(r.dir.join("f"), "x").unwrap();
    r.ok(&[
        "cache",
        "save",
        "k1",
        "f",
        "--remote",
        remote.to_str().unwrap(),
    ]);
    let v = r.json(&[
        "cache",
        "restore",
        "k1",
        "--remote",
        remote.to_str().unwrap(),
    ]);
    assert_eq!(v["result"], "hit");
}

/// An entry never writes over the working tree's database (one
/// `sp-sync.toml` names); paths that would make an entry unrestorable or
/// reach outside (a newline, a symlink) are refused when saving, before
/// anything is created on the remote.
#[test]
fn a_restore_never_writes_over_a_database_and_bad_paths_save_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let url = tmp.path().join("remote").display().to_string();
    let a = runner(tmp.path(), "a", &[]);
    std::fs::write(
        a.dir.join("sp-sync.toml"),
        "[[db]]\npath = \"data/app.db\"\n",
    )
    .unwrap();
    std::fs::create_dir_all(a.dir.join("data")).unwrap();
    std::fs::write(a.dir.join("data/app.db"), "cached db").unwrap();
    std::fs::write(a.dir.join("data/other"), "cached\n").unwrap();
    a.ok(&["cache", "save", "k", "data", "--remote", &url]);
    std::fs::write(a.dir.join("data/app.db"), "newer db").unwrap();
    std::fs::write(a.dir.join("data/other"), "newer\n").unwrap();
    // (The database is kept, and the entry is not restored whole: exit 1.)
    let (c, _, err) = a.run(&["cache", "restore", "k", "--remote", &url]);
    assert_eq!(c, 1, "{err}");
    assert!(err.contains("not restoring"), "{err}");
    assert_eq!(
        std::fs::read_to_string(a.dir.join("data/app.db")).unwrap(),
        "newer db"
    );
    assert_eq!(
        std::fs::read_to_string(a.dir.join("data/other")).unwrap(),
        "cached\n"
    );

    let fresh = tmp.path().join("fresh-remote");
    let fresh_url = fresh.display().to_string();
    std::fs::create_dir_all(a.dir.join("src\nzzz")).unwrap();
    let err = a.fails(
        &["cache", "save", "n", "src\nzzz", "--remote", &fresh_url],
        1,
    );
    assert!(err.contains("newline"), "{err}");
    std::os::unix::fs::symlink(tmp.path(), a.dir.join("link")).unwrap();
    let err = a.fails(&["cache", "save", "s", "link", "--remote", &fresh_url], 1);
    assert!(err.contains("symlink"), "{err}");
    a.fails(
        &["cache", "save", "m", "missing", "--remote", &fresh_url],
        1,
    );
    assert!(
        !fresh.exists(),
        "a refused save created a store on the remote"
    );
}

/// `cache restore KEY PATH...` takes only an entry that saved exactly those
/// paths: an entry another job saved under a matching prefix, with other
/// paths (sources, a build config), is never taken, and writes nothing.
#[test]
fn a_restore_naming_its_paths_takes_only_an_entry_of_those_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let url = tmp.path().join("remote").display().to_string();
    let good = runner(tmp.path(), "good", &[]);
    std::fs::create_dir_all(good.dir.join("target")).unwrap();
    std::fs::write(good.dir.join("target/out"), "built\n").unwrap();
    good.ok(&["cache", "save", "cargo-aaa", "target", "--remote", &url]);
    let evil = runner(tmp.path(), "evil", &[]);
    std::fs::create_dir_all(evil.dir.join("target")).unwrap();
    std::fs::create_dir_all(evil.dir.join("src")).unwrap();
    std::fs::write(evil.dir.join("target/out"), "evil\n").unwrap();
    std::fs::write(evil.dir.join("src/main.rs"), "backdoor\n").unwrap();
    evil.ok(&[
        "cache",
        "save",
        "cargo-zzz",
        "target",
        "src",
        "--remote",
        &url,
    ]);
    let victim = runner(tmp.path(), "victim", &[]);
    std::fs::create_dir_all(victim.dir.join("src")).unwrap();
    std::fs::write(victim.dir.join("src/main.rs"), "real\n").unwrap();
    let v = victim.json(&[
        "cache",
        "restore",
        "cargo-bbb",
        "target",
        "--restore-key",
        "cargo-",
        "--remote",
        &url,
    ]);
    assert_eq!(v["result"], "partial", "{v}");
    assert_eq!(v["key"], "cargo-aaa", "{v}");
    assert_eq!(
        std::fs::read_to_string(victim.dir.join("src/main.rs")).unwrap(),
        "real\n"
    );
    assert_eq!(
        std::fs::read_to_string(victim.dir.join("target/out")).unwrap(),
        "built\n"
    );
    // The exact key of an entry of other paths is no hit either.
    let v = victim.json(&["cache", "restore", "cargo-zzz", "target", "--remote", &url]);
    assert_eq!(v["result"], "miss", "{v}");
    assert_eq!(
        std::fs::read_to_string(victim.dir.join("src/main.rs")).unwrap(),
        "real\n"
    );
}

/// An entry's file goes at its own path: where a directory of that name
/// now is, it is not written into it (over a file of that name there).
#[test]
fn an_entry_file_never_goes_into_a_directory_at_its_place() {
    let tmp = tempfile::tempdir().unwrap();
    let url = tmp.path().join("remote").display().to_string();
    let a = runner(tmp.path(), "a", &[]);
    std::fs::write(a.dir.join("build"), "cached file\n").unwrap();
    a.ok(&["cache", "save", "k", "build", "--remote", &url]);
    let b = runner(tmp.path(), "b", &[]);
    std::fs::create_dir_all(b.dir.join("build")).unwrap();
    std::fs::write(b.dir.join("build/build"), "mine\n").unwrap();
    // (Kept, and the restore fails: see
    // a_restore_that_could_not_write_a_path_is_no_hit.)
    let (c, _, err) = b.run(&["cache", "restore", "k", "--remote", &url]);
    assert_eq!(c, 1, "{err}");
    assert!(err.contains("not restoring"), "{err}");
    assert_eq!(
        std::fs::read_to_string(b.dir.join("build/build")).unwrap(),
        "mine\n"
    );
}

/// An entry of one directory keeps that directory's mode: a 700 folder of
/// secrets does not come back readable by everyone.
#[test]
fn a_saved_directory_comes_back_with_its_mode() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let url = tmp.path().join("remote").display().to_string();
    let a = runner(tmp.path(), "a", &[]);
    std::fs::create_dir_all(a.dir.join("secret")).unwrap();
    std::fs::write(a.dir.join("secret/token"), "t\n").unwrap();
    std::fs::set_permissions(a.dir.join("secret"), std::fs::Permissions::from_mode(0o700)).unwrap();
    a.ok(&["cache", "save", "k", "secret", "--remote", &url]);
    let b = runner(tmp.path(), "b", &[]);
    b.ok(&["cache", "restore", "k", "--remote", &url]);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&b.dir.join("secret")), 0o700);
    assert_eq!(
        std::fs::read_to_string(b.dir.join("secret/token")).unwrap(),
        "t\n"
    );
}

/// A saved path that holds an sp-sync store (a checkout's `.sp-sync`,
/// whose config.toml holds tokens and keys) leaves the store out; a path
/// that is a store, or lies in one, is refused.
#[test]
fn a_store_in_a_saved_path_is_left_out() {
    let tmp = tempfile::tempdir().unwrap();
    let url = tmp.path().join("remote").display().to_string();
    let a = runner(tmp.path(), "a", &[]);
    let proj = a.dir.join("proj");
    std::fs::create_dir_all(&proj).unwrap();
    std::fs::write(proj.join("src.txt"), "code\n").unwrap();
    ok(&proj, &["init", "-q"]);
    std::fs::write(
        proj.join(".sp-sync/config.toml"),
        "[remote.origin]\nurl = \"https://h/t\"\ntoken = \"secret-token\"\n",
    )
    .unwrap();
    a.ok(&["cache", "save", "k", "proj", "--remote", &url]);
    let b = runner(tmp.path(), "b", &[]);
    b.ok(&["cache", "restore", "k", "--remote", &url]);
    assert_eq!(
        std::fs::read_to_string(b.dir.join("proj/src.txt")).unwrap(),
        "code\n"
    );
    assert!(!b.dir.join("proj/.sp-sync").exists(), "the store was saved");
    let err = a.fails(
        &["cache", "save", "k2", "proj/.sp-sync", "--remote", &url],
        1,
    );
    assert!(err.contains("sp-sync store"), "{err}");
    let err = a.fails(
        &[
            "cache",
            "save",
            "k3",
            "proj/.sp-sync/refs",
            "--remote",
            &url,
        ],
        1,
    );
    assert!(err.contains("sp-sync store"), "{err}");
}

/// prune says when the space of what it removed comes back: at the next gc
/// of a path remote; never on S3, which has no gc.
#[test]
fn prune_says_when_the_space_comes_back() {
    let tmp = tempfile::tempdir().unwrap();
    let r = runner(tmp.path(), "r", &s3_env());
    std::fs::write(r.dir.join("f"), "f\n").unwrap();
    let path = tmp.path().join("remote").display().to_string();
    let s3 = format!("s3://{}/ci", bucket("prune"));
    for (url, says) in [
        (&path, "at the remote's next gc (sp-sync gc --store DIR)"),
        (&s3, "never garbage-collected"),
    ] {
        r.ok(&["cache", "save", "k", "f", "--remote", url]);
        let o = run_env(
            &r.dir,
            &["cache", "prune", "--max-size", "0", "--remote", url],
            &r.env,
        );
        assert!(o.status.success());
        let out =
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
        assert!(
            out.contains("removed 1 entries") && out.contains(says),
            "{out}"
        );
    }
}

/// A restore record whose entry is gone (a restore that finished after a
/// prune took its entry records it anew) neither dates a later entry of
/// that key nor outlives the next prune.
#[test]
fn a_restore_record_without_its_entry_is_ignored_and_pruned() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("remote");
    let url = remote.display().to_string();
    let r = runner(tmp.path(), "r", &[]);
    std::fs::write(r.dir.join("f"), "f\n").unwrap();
    r.ok(&["cache", "save", "k", "f", "--remote", &url]);
    r.ok(&["cache", "restore", "k", "f", "--remote", &url]);
    let refs = || ok(tmp.path(), &["ref", "list", "--store", &url]);
    assert!(refs().contains("cache-meta/k"), "{}", refs());
    // The entry goes (by hand, as a prune racing the restore leaves it).
    ok(tmp.path(), &["ref", "delete", "cache/k", "--store", &url]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    r.ok(&["cache", "save", "k", "f", "--remote", &url]);
    let v = r.json(&["cache", "list", "--remote", &url]);
    assert_eq!(v[0]["key"], "k", "{v}");
    assert!(v[0]["restored"].is_null(), "{v}");
    ok(tmp.path(), &["ref", "delete", "cache/k", "--store", &url]);
    r.ok(&["cache", "prune", "--max-size", "1GiB", "--remote", &url]);
    assert!(!refs().contains("cache-meta/k"), "{}", refs());
}

fn pack_names(store: &Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(store.join("packs"))
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The local pass-through store is emptied of its objects when its packs
/// outgrow `SP_SYNC_CACHE_STORE_MAX`, before a save or restore: never while
/// another process uses it, never a store that holds refs (a store of
/// snapshots), and what was saved still restores (from the remote).
#[test]
fn the_local_store_is_emptied_when_it_outgrows_its_limit() {
    use systemprompt_sync::cache;
    use systemprompt_sync::{LockMode, Store};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    ok(root, &["init", "--store", "remote", "-q"]);
    let url = root.join("remote").display().to_string();
    let small = [("SP_SYNC_CACHE_STORE_MAX", "64KiB".to_string())];
    let a = runner(root, "a", &small);
    std::fs::create_dir_all(a.dir.join("t")).unwrap();
    std::fs::write(a.dir.join("t/f"), bytes(1 << 20, 1)).unwrap();
    let local = root.join("a-cache-store");
    a.ok(&["cache", "save", "k1", "t", "--remote", &url, "-q"]);
    let first = pack_names(&local);
    assert!(!first.is_empty());
    // Over the limit: the next command empties it first.
    std::fs::write(a.dir.join("t/g"), bytes(1 << 20, 2)).unwrap();
    a.ok(&["cache", "save", "k2", "t", "--remote", &url, "-q"]);
    let second = pack_names(&local);
    assert!(first.is_disjoint(&second), "{first:?} {second:?}");
    std::fs::remove_dir_all(a.dir.join("t")).unwrap();
    a.ok(&["cache", "restore", "k1", "--remote", &url, "-q"]);
    assert_eq!(std::fs::read(a.dir.join("t/f")).unwrap(), bytes(1 << 20, 1));
    assert!(pack_names(&local).is_disjoint(&second));
    // Not while another process has it open, nor under the limit.
    let held = Store::open(&local, LockMode::Shared).unwrap();
    assert_eq!(cache::trim_local(&local, 1).unwrap(), 0);
    drop(held);
    assert_eq!(cache::trim_local(&local, 1 << 40).unwrap(), 0);
    assert!(cache::trim_local(&local, 1).unwrap() > 0);
    assert!(pack_names(&local).is_empty());

    // A store with snapshots named as the cache store: never emptied.
    let b = runner(root, "b", &small);
    let real = root.join("b-cache-store");
    std::fs::create_dir_all(b.dir.join("files")).unwrap();
    std::fs::write(b.dir.join("files/x"), bytes(1 << 20, 3)).unwrap();
    ok(root, &["init", "--store", real.to_str().unwrap(), "-q"]);
    ok(
        &b.dir,
        &["--store", real.to_str().unwrap(), "snapshot", "files", "-q"],
    );
    let kept = pack_names(&real);
    std::fs::create_dir_all(b.dir.join("t")).unwrap();
    std::fs::write(b.dir.join("t/f"), bytes(1 << 20, 4)).unwrap();
    b.ok(&["cache", "save", "k3", "t", "--remote", &url, "-q"]);
    b.ok(&["cache", "save", "k4", "t", "--remote", &url, "-q"]);
    assert!(pack_names(&real).is_superset(&kept));
    ok(root, &["fsck", "--store", real.to_str().unwrap(), "-q"]);
    // A directory that is no store, with a packs/ of the user's own, and a
    // file in a store's packs/ not named as a pack: never removed.
    let mine = root.join("mine");
    std::fs::create_dir_all(mine.join("packs")).unwrap();
    std::fs::write(mine.join("packs/photo.jpg"), bytes(1 << 20, 5)).unwrap();
    assert_eq!(cache::trim_local(&mine, 1).unwrap(), 0);
    assert!(mine.join("packs/photo.jpg").is_file());
    std::fs::write(local.join("packs/notes.txt"), bytes(1 << 20, 6)).unwrap();
    cache::trim_local(&local, 1).unwrap();
    assert!(local.join("packs/notes.txt").is_file());
    // A limit that is not a size is one error line.
    let c = runner(
        root,
        "c",
        &[("SP_SYNC_CACHE_STORE_MAX", "lots".to_string())],
    );
    std::fs::create_dir_all(c.dir.join("t")).unwrap();
    let err = c.fails(&["cache", "save", "k5", "t", "--remote", &url], 1);
    assert!(err.contains("SP_SYNC_CACHE_STORE_MAX"), "{err}");
}

/// A database that only the working tree's store names (a snapshot took
/// it with `--db`; no `sp-sync.toml`) was replaced by an entry holding a
/// file at its path, exit 0, reported as a hit (audit 23). It is kept now,
/// as one `sp-sync.toml` names.
#[test]
fn a_restore_never_writes_over_a_database_a_snapshot_of_the_store_names() {
    let tmp = tempfile::tempdir().unwrap();
    let url = tmp.path().join("remote").display().to_string();
    let a = runner(tmp.path(), "a", &[]);
    std::fs::create_dir_all(a.dir.join("data")).unwrap();
    std::fs::write(a.dir.join("data/app.db"), "cached db").unwrap();
    a.ok(&["cache", "save", "k", "data", "--remote", &url]);

    let b = runner(tmp.path(), "b", &[]);
    std::fs::create_dir_all(b.dir.join("data")).unwrap();
    std::fs::create_dir_all(b.dir.join("services")).unwrap();
    b.ok(&["init", "-q"]);
    rusqlite::Connection::open(b.dir.join("data/app.db"))
        .unwrap()
        .execute_batch("CREATE TABLE u(x); INSERT INTO u VALUES ('live');")
        .unwrap();
    b.ok(&["snapshot", "services", "--db", "data/app.db", "-q"]);
    // (A later snapshot without it: the database is still the user's.)
    b.ok(&["snapshot", "services", "-q"]);
    let live = std::fs::read(b.dir.join("data/app.db")).unwrap();
    let (c, _, err) = b.run(&["cache", "restore", "k", "--remote", &url]);
    assert_eq!(c, 1, "{err}");
    assert!(err.contains("not restoring"), "{err}");
    assert_eq!(std::fs::read(b.dir.join("data/app.db")).unwrap(), live);
}

/// `SP_SYNC_CACHE_STORE` naming a folder that holds some other program's
/// `store.toml` fails with one line and leaves the folder as it was (a
/// `tmp/`, `refs/` and `packs/` were made there; audit 20).
#[test]
fn a_cache_store_folder_that_is_no_store_is_left_as_it_was() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let url = root.join("remote").display().to_string();
    let other = root.join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("store.toml"), "[shop]\nname = \"not ours\"\n").unwrap();
    let a = root.join("a");
    std::fs::create_dir_all(a.join("t")).unwrap();
    std::fs::write(a.join("t/f"), "x").unwrap();
    let args = ["cache", "save", "k", "t", "--remote", &url];
    let o = run_env(
        &a,
        &args,
        &[("SP_SYNC_CACHE_STORE", other.display().to_string())],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    common::assert_one_error_line(&args, &err);
    assert!(err.contains("store.toml"), "{err}");
    let left: Vec<_> = std::fs::read_dir(&other)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("store.toml")]);
}

/// A restore that fails for any reason (here the remote's packs are gone
/// after the save) still tells the workflow: `cache-hit=false` goes to
/// `$GITHUB_OUTPUT` (a step with `continue-on-error` read no output), and
/// nothing is written to the target.
#[test]
fn a_failed_restore_still_writes_cache_hit_false() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("remote");
    let url = remote.display().to_string();
    let a = runner(tmp.path(), "a", &[]);
    fake_target(&a.dir.join("target"), 7);
    a.ok(&["cache", "save", "k", "target", "--remote", &url]);
    let packs: Vec<PathBuf> = std::fs::read_dir(remote.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!packs.is_empty());
    for p in packs {
        std::fs::remove_file(p).unwrap();
    }
    let b = runner(tmp.path(), "b", &[]);
    b.fails(&["cache", "restore", "k", "--remote", &url], 1);
    assert_eq!(b.github_output(), "cache-hit=false\n");
    assert!(!b.dir.join("target").exists());
}
