//! `sp-sync deploy`: due only when what a target watches changed, steps in a
//! materialized copy, a failed step keeps the ref, `--dry-run` runs nothing,
//! deploys of one target never overlap, a stop signal stops a step; `push --deploy`
//! and `serve --deploy-on-push` (a real server) run exactly the due targets.
//! Library tests: the watched hash reads no file and skips what no glob
//! reaches.

use crate::common;
use crate::net;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, cache_dir, fails, ok, run_in};
use serde_json::Value;

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// A working tree with a store, `src/`, `docs/`, a README and this
/// sp-sync.toml.
fn tree(root: &Path, toml: &str) -> PathBuf {
    let w = root.join("work");
    std::fs::create_dir_all(w.join("src/sub")).unwrap();
    std::fs::create_dir_all(w.join("docs")).unwrap();
    std::fs::write(w.join("src/main.rs"), "fn main() {}\n").unwrap();
    std::fs::write(w.join("src/sub/lib.rs"), "pub fn f() {}\n").unwrap();
    std::fs::write(w.join("docs/guide.md"), "# guide\n").unwrap();
    std::fs::write(w.join("README.md"), "readme\n").unwrap();
    std::fs::write(w.join("sp-sync.toml"), toml).unwrap();
    ok(&w, &["init"]);
    w
}

fn snap(w: &Path) -> String {
    ok(w, &["snapshot", "-q"]).trim().to_string()
}

fn deploy_ref(w: &Path, target: &str) -> Option<String> {
    let v = json(&ok(w, &["ref", "list", "--json"]));
    v.as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == format!("deploy/{target}"))
        .map(|r| r["id"].as_str().unwrap().to_string())
}

#[test]
fn deploy_runs_when_and_only_when_watched_paths_change() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs.log");
    let pwd = tmp.path().join("pwd.log");
    let toml = format!(
        "[deploy.api]\nwatch = [\"src/**\", \"sp-sync.toml\"]\nsteps = [\n  \"echo run {{target}} {{short}} >> {r}\",\n  {{ name = \"check\", run = \"test -f src/sub/lib.rs && pwd >> {p} && echo copied\" }},\n]\n",
        r = runs.display(),
        p = pwd.display()
    );
    let w = tree(tmp.path(), &toml);
    let s1 = snap(&w);

    // First run runs, streams its output with the step's name, records it.
    let out = ok(&w, &["deploy", "api"]);
    assert!(out.contains("[api/check] copied"), "{out}");
    assert_eq!(lines(&runs), vec![format!("run api {}", &s1[..16])]);
    let r1 = deploy_ref(&w, "api").expect("deploy/api recorded");
    // The copy was a real directory, removed afterwards.
    let copy = lines(&pwd)[0].clone();
    assert!(!Path::new(&copy).exists(), "{copy} left behind");
    assert!(!copy.starts_with(&w.display().to_string()));
    // The record reaches the deployed snapshot (gc keeps it).
    let log = json(&ok(&w, &["log", "deploy/api", "--json"]));
    assert_eq!(log[1]["id"], s1.as_str());

    // Second run: nothing changed, nothing runs, the ref stays.
    let v = json(&ok(&w, &["deploy", "api", "--json"]));
    assert_eq!(v["ran"], false);
    assert_eq!(v["due"], false);
    assert_eq!(v["snapshot"], s1.as_str());
    assert_eq!(lines(&runs).len(), 1);
    assert_eq!(deploy_ref(&w, "api").as_deref(), Some(r1.as_str()));

    // An unwatched file changes (and mtimes of watched ones): not due.
    std::fs::write(w.join("README.md"), "readme v2\n").unwrap();
    std::fs::write(w.join("docs/guide.md"), "# guide v2\n").unwrap();
    common::set_mtime(&w.join("src/main.rs"), 1_800_000_000, 0);
    let s2 = snap(&w);
    assert_ne!(s1, s2);
    let v = json(&ok(&w, &["deploy", "api", "--json"]));
    assert_eq!(v["ran"], false, "{v}");
    assert_eq!(lines(&runs).len(), 1);

    // --dry-run and --list see a watched change and run nothing.
    std::fs::write(w.join("src/sub/lib.rs"), "pub fn f() { 1; }\n").unwrap();
    let s3 = snap(&w);
    let v = json(&ok(&w, &["deploy", "api", "--dry-run", "--json"]));
    assert_eq!(
        (v["ran"].clone(), v["due"].clone()),
        (false.into(), true.into())
    );
    assert_eq!(
        v["steps"][0]["command"],
        format!("echo run api {} >> {}", &s3[..16], runs.display())
    );
    let text = ok(&w, &["deploy", "--dry-run"]);
    assert!(text.contains("due: would run"), "{text}");
    let list = json(&ok(&w, &["deploy", "--list", "--json"]));
    assert_eq!(list[0]["target"], "api");
    assert_eq!(list[0]["due"], true);
    assert_eq!(lines(&runs).len(), 1);
    assert_eq!(deploy_ref(&w, "api").as_deref(), Some(r1.as_str()));

    // The watched change runs it.
    let v = json(&ok(&w, &["deploy", "--json"]));
    assert_eq!(v[0]["ran"], true);
    assert_eq!(v[0]["snapshot"], s3.as_str());
    assert_eq!(lines(&runs).len(), 2);
    assert_ne!(deploy_ref(&w, "api").as_deref(), Some(r1.as_str()));
    let list = ok(&w, &["deploy", "--list"]);
    assert!(list.contains("up to date"), "{list}");

    // --force runs what is not due; a named older snapshot can be deployed.
    let v = json(&ok(&w, &["deploy", "api", "--force", "--json"]));
    assert_eq!(
        (v["ran"].clone(), v["due"].clone()),
        (true.into(), false.into())
    );
    let v = json(&ok(&w, &["deploy", "api", "--snapshot", &s1, "--json"]));
    assert_eq!(v["ran"], true);
    assert_eq!(v["snapshot"], s1.as_str());
    assert_eq!(lines(&runs).len(), 4);

    // gc keeps what the record reaches (the deployed s1, though main has
    // moved on); fsck finds nothing wrong; the record still decides.
    ok(&w, &["gc"]);
    let f = json(&ok(&w, &["fsck", "--json"]));
    assert_eq!(f["ok"], true, "{f}");
    assert_eq!(
        json(&ok(&w, &["log", "deploy/api", "--json"]))[1]["id"],
        s1.as_str()
    );
    let v = json(&ok(
        &w,
        &["deploy", "api", "--snapshot", &s1, "--dry-run", "--json"],
    ));
    assert_eq!(v["due"], false);

    // Unknown target: one error line, nothing runs.
    let err = fails(&w, &["deploy", "web"], 1);
    assert!(err.contains("unknown deploy target \"web\""), "{err}");
    assert_eq!(lines(&runs).len(), 4);
}

#[test]
fn a_failing_step_keeps_the_ref_and_the_next_deploy_runs_again() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs.log");
    let good = format!(
        "[deploy.api]\nwatch = [\"src\", \"sp-sync.toml\"]\nsteps = [\"echo first >> {r}\"]\n",
        r = runs.display()
    );
    let w = tree(tmp.path(), &good);
    snap(&w);
    ok(&w, &["deploy", "api"]);
    let r1 = deploy_ref(&w, "api").unwrap();

    let bad = format!(
        "[deploy.api]\nwatch = [\"src\", \"sp-sync.toml\"]\nsteps = [\"echo first >> {r}\", {{ name = \"build\", run = \"echo compiling; echo broken-thing >&2; exit 3\" }}, \"echo never >> {r}\"]\n",
        r = runs.display()
    );
    std::fs::write(w.join("sp-sync.toml"), &bad).unwrap();
    snap(&w);
    for attempt in 2..4 {
        let err = fails(&w, &["deploy", "api", "-q"], 1);
        assert!(err.contains("step 2 (build)"), "{err}");
        assert!(err.contains("exit status 3"), "{err}");
        assert!(err.contains("compiling | broken-thing"), "{err}");
        // It ran again, stopped at the failing step, and moved nothing.
        assert_eq!(lines(&runs), vec!["first"; attempt]);
        assert_eq!(deploy_ref(&w, "api").as_deref(), Some(r1.as_str()));
    }
    let v = json(&ok(&w, &["deploy", "--list", "--json"]));
    assert_eq!(v[0]["due"], true);

    // Back to the deployed configuration: what it watches is what was
    // deployed, so it is not due; a change to src/ is.
    std::fs::write(w.join("sp-sync.toml"), &good).unwrap();
    snap(&w);
    let v = json(&ok(&w, &["deploy", "api", "--json"]));
    assert_eq!(v["ran"], false);
    std::fs::write(w.join("src/main.rs"), "fn main() { 9; }\n").unwrap();
    snap(&w);
    ok(&w, &["deploy", "api"]);
    assert_eq!(lines(&runs).len(), 4);
    assert_ne!(deploy_ref(&w, "api").as_deref(), Some(r1.as_str()));

    // A step past its timeout is stopped and fails.
    let slow = format!(
        "[deploy.slow]\nwatch = [\"src\"]\ntimeout = 1\nsteps = [\"sleep 30; echo late >> {r}\"]\n",
        r = runs.display()
    );
    std::fs::write(w.join("sp-sync.toml"), &slow).unwrap();
    snap(&w);
    let t = Instant::now();
    let err = fails(&w, &["deploy", "slow", "-q"], 1);
    assert!(err.contains("timeout after 1s"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(15));
    assert!(deploy_ref(&w, "slow").is_none());
}

#[test]
fn env_workdir_placeholders_and_working_tree_config() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs.log");
    let toml = format!(
        "[deploy.web]\nwatch = [\"*.rs\"]\nworkdir = \"sub\"\nenv = {{ TAG = \"{{target}}-{{short}}\" }}\nsteps = [\"echo $TAG $(basename $PWD) {{watched_hash}} $SP_SYNC_DEPLOY_SNAPSHOT >> {r}\"]\n",
        r = runs.display()
    );
    // Only src/ is snapshotted: the snapshot holds no sp-sync.toml, so the
    // working tree's is used, and said so.
    let w = tree(tmp.path(), &toml);
    let s = ok(&w, &["snapshot", "-q", "src"]).trim().to_string();
    let o = run_in(&w, &["deploy", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("holds no sp-sync.toml; using"), "{err}");
    let v = json(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(v[0]["config"], "working_tree");
    let hash = v[0]["watched_hash"].as_str().unwrap();
    assert_eq!(
        lines(&runs),
        vec![format!("web-{} sub {hash} {s}", &s[..16])]
    );
    // A workdir the snapshot lacks is an error naming it.
    std::fs::write(
        w.join("sp-sync.toml"),
        "[deploy.web]\nwatch = [\"*.rs\"]\nworkdir = \"nowhere\"\nsteps = [\"true\"]\n",
    )
    .unwrap();
    let err = fails(&w, &["deploy", "web", "--force", "-q"], 1);
    assert!(err.contains("workdir nowhere"), "{err}");
    // A bad target is one clear error.
    std::fs::write(w.join("sp-sync.toml"), "[deploy.web]\nwatch = [\"*.rs\"]\n").unwrap();
    let err = fails(&w, &["deploy", "web", "-q"], 1);
    assert!(err.contains("deploy target web: no steps"), "{err}");
}

#[test]
fn watched_tables_join_the_hash() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs.log");
    let toml = format!(
        "[[db]]\npath = \"app.db\"\n\n[deploy.users]\ntables = [\"users\"]\nsteps = [\"echo users >> {r}\"]\n",
        r = runs.display()
    );
    let w = tree(tmp.path(), &toml);
    let db = rusqlite::Connection::open(w.join("app.db")).unwrap();
    db.execute_batch(
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);
         INSERT INTO users VALUES (1, 'ann');
         CREATE TABLE other (id INTEGER PRIMARY KEY, v TEXT);",
    )
    .unwrap();
    snap(&w);
    ok(&w, &["deploy"]);
    db.execute("INSERT INTO other VALUES (1, 'x')", []).unwrap();
    std::fs::write(w.join("src/main.rs"), "fn main() { 2; }\n").unwrap();
    snap(&w);
    ok(&w, &["deploy"]);
    assert_eq!(lines(&runs).len(), 1, "a change elsewhere is not due");
    db.execute("UPDATE users SET name = 'bob'", []).unwrap();
    snap(&w);
    ok(&w, &["deploy"]);
    assert_eq!(lines(&runs).len(), 2);
}

/// Waits (up to 30 s) until `p` exists: a step has started.
fn await_file(p: &Path) {
    let t = Instant::now();
    while !p.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the step never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `sp-sync deploy ARGS` in `w`.
fn spawn_deploy(w: &Path, args: &[&str]) -> std::process::Child {
    Command::new(bin())
        .arg("deploy")
        .args(args)
        .current_dir(w)
        .env("SP_SYNC_CACHE_DIR", cache_dir())
        .env_remove("SP_SYNC_STORE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn concurrent_deploys_of_one_target_never_overlap() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("steps.log");
    let toml = format!(
        "[deploy.api]\nwatch = [\"src/**\"]\nsteps = [\"echo start $$ >> {l}; sleep 1; echo end $$ >> {l}\"]\n",
        l = log.display()
    );
    let w = tree(tmp.path(), &toml);
    snap(&w);
    // Forced: both run, one after the other.
    let a = spawn_deploy(&w, &["api", "--force", "--json"]);
    let b = spawn_deploy(&w, &["api", "--force", "--json"]);
    let (oa, ob) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    for o in [&oa, &ob] {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let l = lines(&log);
    assert_eq!(l.len(), 4, "{l:?}");
    for pair in l.chunks(2) {
        let (s, e) = (&pair[0], &pair[1]);
        assert!(s.starts_with("start ") && e.starts_with("end "), "{l:?}");
        assert_eq!(s[6..], e[4..], "overlapping deploys: {l:?}");
    }
    let waited = [&oa, &ob]
        .iter()
        .any(|o| String::from_utf8_lossy(&o.stderr).contains("waiting for it to finish"));
    assert!(waited);

    // Not forced, after a change: one runs; the other waits, then finds
    // the target deployed and runs nothing.
    std::fs::write(w.join("src/main.rs"), "fn main() { 3; }\n").unwrap();
    snap(&w);
    let a = spawn_deploy(&w, &["api", "--json"]);
    let b = spawn_deploy(&w, &["api", "--json"]);
    let (oa, ob) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let ran: Vec<bool> = [&oa, &ob]
        .iter()
        .map(|o| {
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            json(&String::from_utf8_lossy(&o.stdout))["ran"]
                .as_bool()
                .unwrap()
        })
        .collect();
    assert_eq!(ran.iter().filter(|r| **r).count(), 1, "{ran:?}");
    assert_eq!(lines(&log).len(), 6);
}

/// SIGINT, SIGTERM and SIGHUP (a closed terminal, a dropped SSH session)
/// stop the running step, its whole process group, and move no ref.
#[test]
fn a_stop_signal_stops_the_running_step_and_moves_no_ref() {
    use rustix::process::Signal;
    for (sig, code, name) in [
        (Signal::INT, 130, "SIGINT"),
        (Signal::TERM, 143, "SIGTERM"),
        (Signal::HUP, 129, "SIGHUP"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let pidfile = tmp.path().join("pid");
        let toml = format!(
            "[deploy.api]\nwatch = [\"src/**\"]\nsteps = [\"echo $$ > {p}.tmp && mv {p}.tmp {p}; sleep 60\"]\n",
            p = pidfile.display()
        );
        let w = tree(tmp.path(), &toml);
        snap(&w);
        let mut child = spawn_deploy(&w, &["api"]);
        await_file(&pidfile);
        let step_pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let pid = rustix::process::Pid::from_child(&child);
        rustix::process::kill_process(pid, sig).unwrap();
        let t = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(t.elapsed() < Duration::from_secs(20), "deploy did not stop");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.code(), Some(code), "{name}");
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert!(err.contains(&format!("interrupted ({name})")), "{err}");
        // The step's process group is gone; the ref did not move.
        let gone = rustix::process::Pid::from_raw(step_pid)
            .map(|p| rustix::process::test_kill_process(p).is_err())
            .unwrap_or(true);
        assert!(gone, "{name}: step process {step_pid} still running");
        assert!(deploy_ref(&w, "api").is_none());
    }
    // Under nohup (SIGHUP ignored), a closed terminal does not stop it.
    let tmp = tempfile::tempdir().unwrap();
    let started = tmp.path().join("started");
    let toml = format!(
        "[deploy.api]\nwatch = [\"src/**\"]\nsteps = [\"touch {s}; sleep 1\"]\n",
        s = started.display()
    );
    let w = tree(tmp.path(), &toml);
    snap(&w);
    let child = Command::new("nohup")
        .arg(bin())
        .arg("deploy")
        .current_dir(&w)
        .env("SP_SYNC_CACHE_DIR", cache_dir())
        .env_remove("SP_SYNC_STORE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    await_file(&started);
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(deploy_ref(&w, "api").is_some());
}

/// A deploy of `main` that waited for another deploy of its target deploys
/// what `main` is once it has the lock, not the older snapshot `main` named
/// when it started: it never takes back what is newer.
#[test]
fn a_deploy_that_waited_deploys_main_as_it_is_then() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("steps.log");
    let started = tmp.path().join("started");
    let toml = format!(
        "[deploy.api]\nwatch = [\"src/**\"]\nsteps = [\"cat src/main.rs >> {l}; touch {s}; sleep 2\"]\n",
        l = log.display(),
        s = started.display()
    );
    let w = tree(tmp.path(), &toml);
    std::fs::write(w.join("src/main.rs"), "v0\n").unwrap();
    snap(&w);
    let first = spawn_deploy(&w, &["api"]);
    await_file(&started);
    std::fs::write(w.join("src/main.rs"), "v1\n").unwrap();
    snap(&w);
    // Reads main (v1), then waits for the first deploy's lock.
    let second = spawn_deploy(&w, &["api"]);
    std::thread::sleep(Duration::from_millis(800));
    std::fs::write(w.join("src/main.rs"), "v2\n").unwrap();
    snap(&w);
    for c in [first, second] {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(lines(&log), ["v0", "v2"]);
    let deployed = ok(&w, &["cat", "deploy/api~1:src/main.rs"]);
    assert_eq!(deployed, "v2\n");
}

/// A deploy of a named snapshot that waited while another deploy put out a
/// snapshot descending from it does not take that back (`push --deploy`
/// from two pipelines); one that did not wait is a rollback asked for, and
/// runs.
#[test]
fn a_deploy_of_a_named_snapshot_that_waited_never_takes_a_newer_one_back() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("steps.log");
    let started = tmp.path().join("started");
    let toml = format!(
        "[deploy.api]\nwatch = [\"src/**\"]\nsteps = [\"cat src/main.rs >> {l}; touch {s}; sleep 2\"]\n",
        l = log.display(),
        s = started.display()
    );
    let w = tree(tmp.path(), &toml);
    std::fs::write(w.join("src/main.rs"), "v1\n").unwrap();
    let v1 = snap(&w);
    std::fs::write(w.join("src/main.rs"), "v2\n").unwrap();
    let v2 = snap(&w);
    let newer = spawn_deploy(&w, &["--snapshot", &v2]);
    await_file(&started);
    let older = spawn_deploy(&w, &["--snapshot", &v1, "--json"]);
    for c in [newer, older] {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(lines(&log), ["v2"]);
    assert_eq!(ok(&w, &["cat", "deploy/api~1:src/main.rs"]), "v2\n");
    // Not waiting: a rollback, asked for.
    ok(&w, &["deploy", "--snapshot", &v1, "-q"]);
    assert_eq!(lines(&log), ["v2", "v1"]);
}

/// A relative symlink leading out of the snapshot means something else in
/// the deploy's copy (under the shared temporary directory, where any user
/// may make `../shared`) than in the working tree: the deploy runs nothing.
/// Absolute symlinks and relative ones inside the snapshot are kept.
#[test]
fn a_symlink_leading_out_of_the_snapshot_runs_no_step() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let toml = format!(
        "[deploy.api]\nwatch = [\"src/**\"]\nsteps = [\"echo ran >> {r}\"]\n",
        r = runs.display()
    );
    let w = tree(tmp.path(), &toml);
    std::os::unix::fs::symlink("../docs/guide.md", w.join("src/guide")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", w.join("src/abs")).unwrap();
    snap(&w);
    ok(&w, &["deploy", "api"]);
    assert_eq!(lines(&runs), ["ran"]);
    std::fs::create_dir(tmp.path().join("shared")).unwrap();
    std::os::unix::fs::symlink("../../../shared", w.join("src/sub/lib")).unwrap();
    snap(&w);
    let err = fails(&w, &["deploy", "api"], 1);
    assert!(
        err.contains("src/sub/lib") && err.contains("leads out"),
        "{err}"
    );
    assert_eq!(lines(&runs), ["ran"], "a step ran");
    // Through a chain of links inside the snapshot: `cur -> .` makes
    // `cur/../../../shared` leave it, though its text counts as inside.
    std::fs::remove_file(w.join("src/sub/lib")).unwrap();
    std::os::unix::fs::symlink(".", w.join("src/sub/cur")).unwrap();
    std::os::unix::fs::symlink("cur/../../../shared", w.join("src/sub/esc")).unwrap();
    snap(&w);
    let err = fails(&w, &["deploy", "api"], 1);
    assert!(
        err.contains("src/sub/esc") && err.contains("leads out"),
        "{err}"
    );
    assert_eq!(lines(&runs), ["ran"], "a step ran");
    assert_eq!(
        deploy_ref(&w, "api").map(|r| r.len()),
        Some(64),
        "the ref stays where it was"
    );
}

fn two_targets(runs: &Path) -> String {
    format!(
        "[deploy.api]\nwatch = [\"src/**\"]\nsteps = [\"echo api {{short}} >> {r}\"]\n\n[deploy.docs]\nwatch = [\"docs/\"]\nsteps = [\"echo docs {{short}} >> {r}\"]\n",
        r = runs.display()
    )
}

fn targets_run(runs: &Path) -> Vec<String> {
    lines(runs)
        .iter()
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect()
}

#[test]
fn push_deploy_runs_exactly_the_due_targets() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs.log");
    let w = tree(tmp.path(), &two_targets(&runs));
    let remote = tmp.path().join("remote");
    ok(
        &w,
        &["remote", "add", "origin", &remote.display().to_string()],
    );
    snap(&w);
    let v = json(&ok(&w, &["push", "--deploy", "--json"]));
    assert_eq!(v["deploys"].as_array().unwrap().len(), 2);
    assert_eq!(targets_run(&runs), vec!["api", "docs"]);

    std::fs::write(w.join("src/main.rs"), "fn main() { 4; }\n").unwrap();
    snap(&w);
    let v = json(&ok(&w, &["push", "--deploy", "--json"]));
    let ran: Vec<&str> = v["deploys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["ran"] == true)
        .map(|d| d["target"].as_str().unwrap())
        .collect();
    assert_eq!(ran, vec!["api"]);
    assert_eq!(targets_run(&runs), vec!["api", "docs", "api"]);

    // Unwatched change: the push goes, no deploy runs; without --deploy none.
    std::fs::write(w.join("README.md"), "v3\n").unwrap();
    snap(&w);
    ok(&w, &["push", "--deploy"]);
    std::fs::write(w.join("docs/guide.md"), "v4\n").unwrap();
    snap(&w);
    ok(&w, &["push"]);
    assert_eq!(targets_run(&runs).len(), 3);
    ok(&w, &["push", "--deploy"]);
    assert_eq!(targets_run(&runs), vec!["api", "docs", "api", "docs"]);
}

/// Polls the server's deploy status until `done` holds.
fn wait_status(addr: &str, token: &str, done: impl Fn(&Value) -> bool) -> Value {
    let t = Instant::now();
    loop {
        let (code, body) = net::http(addr, "GET", "/v1/acme/deploys", Some(token), b"");
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
        let v: Value = serde_json::from_slice(&body).unwrap();
        if done(&v) {
            return v;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "deploys did not finish: {v}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn serve_deploy_on_push_runs_exactly_the_due_targets() {
    const TOKEN: &str = "token-for-acme-0123456789";
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs.log");
    let tokens = tmp.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        format!("[tenants.acme]\ntokens = [\"{TOKEN}\"]\n[tenants.other]\ntokens = [\"other-token-0123456789\"]\n"),
    )
    .unwrap();
    let data = tmp.path().join("data");
    let server = net::serve_with(
        &data.display().to_string(),
        Some(&tokens),
        "127.0.0.1:0",
        &[],
        &["--deploy-on-push"],
    );
    let env = [("SP_SYNC_TOKEN", TOKEN.to_string())];
    let w = tree(tmp.path(), &two_targets(&runs));
    net::ok_env(&w, &["remote", "add", "origin", &server.url("acme")], &env);

    let settled = |checks: usize| {
        move |v: &Value| {
            v["busy"] == false && v["checks"].as_array().is_some_and(|c| c.len() == checks)
        }
    };
    snap(&w);
    net::ok_env(&w, &["push"], &env);
    let v = wait_status(&server.addr, TOKEN, settled(1));
    assert_eq!(targets_run(&runs), vec!["api", "docs"]);
    assert_eq!(v["checks"][0]["due"], serde_json::json!(["api", "docs"]));
    assert_eq!(v["checks"][0]["config"], "snapshot");
    let d = v["deploys"].as_array().unwrap();
    assert_eq!(d.len(), 2);
    assert!(d.iter().all(|d| d["state"] == "succeeded"), "{v}");
    // Each deploy has a log, served to the tenant.
    let (code, body) = net::http(
        &server.addr,
        "GET",
        &format!("/v1/acme/{}", d[0]["log_url"].as_str().unwrap()),
        Some(TOKEN),
        b"",
    );
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&body).contains("== step 1 (echo)"));

    // Only docs changes: only docs runs.
    std::fs::write(w.join("docs/guide.md"), "# v2\n").unwrap();
    snap(&w);
    net::ok_env(&w, &["push"], &env);
    let v = wait_status(&server.addr, TOKEN, settled(2));
    assert_eq!(v["checks"][1]["due"], serde_json::json!(["docs"]));
    assert_eq!(targets_run(&runs), vec!["api", "docs", "docs"]);

    // An unwatched change: checked, nothing runs.
    std::fs::write(w.join("README.md"), "v3\n").unwrap();
    snap(&w);
    net::ok_env(&w, &["push"], &env);
    let v = wait_status(&server.addr, TOKEN, settled(3));
    assert_eq!(v["checks"][2]["due"], serde_json::json!([]));
    assert_eq!(targets_run(&runs).len(), 3);

    // A failing step: failed state, and the next push of a change runs again.
    let bad = two_targets(&runs).replace("echo api", "exit 7; echo api");
    std::fs::write(w.join("sp-sync.toml"), bad).unwrap();
    std::fs::write(w.join("src/main.rs"), "fn main() { 5; }\n").unwrap();
    snap(&w);
    net::ok_env(&w, &["push"], &env);
    let v = wait_status(&server.addr, TOKEN, settled(4));
    let last = v["deploys"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["state"], "failed", "{v}");
    assert!(last["error"].as_str().unwrap().contains("exit status 7"));

    // The endpoint is authenticated like the rest, per tenant.
    let (code, _) = net::http(&server.addr, "GET", "/v1/acme/deploys", None, b"");
    assert_eq!(code, 401);
    let (code, _) = net::http(
        &server.addr,
        "GET",
        "/v1/acme/deploys",
        Some("other-token-0123456789"),
        b"",
    );
    assert_eq!(code, 404);
}

// ---------------------------------------------------------------------------
// Library

mod library {
    use super::*;
    use systemprompt_sync::deploy::{WatchSet, watched_hash};
    use systemprompt_sync::object::ObjectSource;
    use systemprompt_sync::{LockMode, NoProgress, ObjectId, ObjectType, SnapshotOptions, Store};

    /// Refuses to read anything but directory maps.
    struct TreesOnly<'a>(&'a Store, std::sync::atomic::AtomicU64);

    impl ObjectSource for TreesOnly<'_> {
        fn get(&self, tag: ObjectType, id: &ObjectId) -> systemprompt_sync::Result<Vec<u8>> {
            assert_eq!(tag, ObjectType::Tree, "read a {tag:?} object");
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.0.get(tag, id)
        }
    }

    fn hash(store: &Store, id: &ObjectId, pats: &[&str]) -> ([u8; 32], u64, u64) {
        let s = systemprompt_sync::names::load_snapshot(store, id).unwrap();
        let w = WatchSet::new(&pats.iter().map(|p| p.to_string()).collect::<Vec<_>>()).unwrap();
        let src = TreesOnly(store, Default::default());
        let (h, stats) = watched_hash(&src, &s, &w, &[]).unwrap();
        (
            h.0,
            src.1.load(std::sync::atomic::Ordering::Relaxed),
            stats.dirs_skipped,
        )
    }

    #[test]
    fn the_watched_hash_reads_only_trees_and_skips_what_no_glob_reaches() {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path().join("w");
        for d in 0..20 {
            std::fs::create_dir_all(work.join(format!("other/d{d}"))).unwrap();
            std::fs::write(work.join(format!("other/d{d}/f")), "x").unwrap();
        }
        std::fs::create_dir_all(work.join("src")).unwrap();
        std::fs::write(work.join("src/a.rs"), common::bytes(3 << 20, 1)).unwrap();
        std::fs::write(work.join("src/b.md"), "b").unwrap();
        let dir = tmp.path().join("store");
        Store::init(&dir).unwrap();
        let mut store = Store::open(&dir, LockMode::Shared).unwrap();
        store.set_cache_dir(tmp.path().join("cache"));
        let opts = SnapshotOptions {
            sources: vec![work.clone()],
            use_stat_cache: false,
            ..Default::default()
        };
        let s1 = systemprompt_sync::snapshot(&store, &opts, &NoProgress)
            .unwrap()
            .id;
        let (h1, reads, skipped) = hash(&store, &s1, &["/src/*.rs"]);
        // The root and src/: other/ is never opened.
        assert_eq!((reads, skipped), (2, 1));
        let (all, reads_all, _) = hash(&store, &s1, &["**"]);
        assert!(reads_all >= 22);
        assert_ne!(h1, all);

        // mtime only: same hash; a mode or a byte: different.
        common::set_mtime(&work.join("src/a.rs"), 1_900_000_000, 0);
        std::fs::write(work.join("src/b.md"), "b2").unwrap();
        let s2 = systemprompt_sync::snapshot(&store, &opts, &NoProgress)
            .unwrap()
            .id;
        assert_eq!(hash(&store, &s2, &["/src/*.rs"]).0, h1);
        assert_ne!(hash(&store, &s2, &["src"]).0, hash(&store, &s1, &["src"]).0);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            work.join("src/a.rs"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let s3 = systemprompt_sync::snapshot(&store, &opts, &NoProgress)
            .unwrap()
            .id;
        assert_ne!(hash(&store, &s3, &["/src/*.rs"]).0, h1);
        // Nothing matched: the empty hash, the same for any snapshot.
        assert_eq!(
            hash(&store, &s1, &["nothing-here"]).0,
            hash(&store, &s3, &["nothing-here"]).0
        );
    }

    /// A tree to build in memory: files (a content seed) and directories.
    #[derive(Debug, Clone)]
    enum T {
        File(u8),
        Dir(std::collections::BTreeMap<String, T>),
    }

    const NAMES: [&str; 8] = [
        "a",
        "b",
        "src",
        "docs",
        "x.rs",
        "y.md",
        "target",
        "Dockerfile",
    ];
    const PATTERNS: [&str; 12] = [
        "src/**",
        "*.rs",
        "!*.md",
        "docs/",
        "/a/b",
        "a",
        "!target",
        "**",
        "b/*.md",
        "**/x.rs",
        "!src/a/**",
        "Dockerfile",
    ];

    fn arb_tree() -> impl proptest::strategy::Strategy<Value = T> {
        use proptest::prelude::*;
        let leaf = any::<u8>().prop_map(T::File);
        leaf.prop_recursive(4, 60, 6, |inner| {
            proptest::collection::btree_map(
                proptest::sample::select(&NAMES[..]).prop_map(str::to_string),
                inner,
                0..6,
            )
            .prop_map(T::Dir)
        })
    }

    fn put_tree(
        mem: &systemprompt_sync::object::MemStore,
        t: &std::collections::BTreeMap<String, T>,
    ) -> ObjectId {
        use systemprompt_sync::object::list::ChunkRef;
        use systemprompt_sync::object::tree::{Content, Entry, EntryKind, Timestamp};
        let mut b = systemprompt_sync::pmap::MapBuilder::new(ObjectType::Tree, mem);
        for (name, node) in t {
            let kind = match node {
                T::File(seed) => EntryKind::File {
                    size: 1,
                    content: Content::Inline(vec![ChunkRef {
                        id: ObjectId([*seed; 32]),
                        len: 1,
                    }]),
                },
                T::Dir(children) => EntryKind::Dir {
                    tree: put_tree(mem, children),
                },
            };
            let e = Entry {
                mode: 0o644,
                mtime: Timestamp::default(),
                kind,
            };
            b.push(name.as_bytes(), &e.encode()).unwrap();
        }
        b.finish().unwrap()
    }

    /// Only the entries `w` watches (directories that keep some).
    fn filtered(
        w: &WatchSet,
        t: &std::collections::BTreeMap<String, T>,
        prefix: &str,
    ) -> std::collections::BTreeMap<String, T> {
        let mut out = std::collections::BTreeMap::new();
        for (name, node) in t {
            let path = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            match node {
                T::File(_) if w.is_watched(path.as_bytes(), false) => {
                    out.insert(name.clone(), node.clone());
                }
                T::File(_) => {}
                T::Dir(children) => {
                    let f = filtered(w, children, &path);
                    if !f.is_empty() {
                        out.insert(name.clone(), T::Dir(f));
                    }
                }
            }
        }
        out
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
        /// The pruned walk selects exactly what matching every path would:
        /// the hash over a tree equals `**`'s hash over the tree cut down
        /// to the watched entries path by path.
        #[test]
        fn the_pruned_walk_agrees_with_matching_every_path(
            t in arb_tree(),
            pats in proptest::collection::vec(proptest::sample::select(&PATTERNS[..]), 1..5),
        ) {
            let root = match t { T::Dir(m) => m, f => std::collections::BTreeMap::from([("f".to_string(), f)]) };
            let pats: Vec<String> = pats.iter().map(|p| p.to_string()).collect();
            let w = WatchSet::new(&pats).unwrap();
            let mem = systemprompt_sync::object::MemStore::new(true);
            let snap = |root: ObjectId| systemprompt_sync::object::snapshot::Snapshot {
                root: Some(root),
                ..Default::default()
            };
            let full = snap(put_tree(&mem, &root));
            let cut = snap(put_tree(&mem, &filtered(&w, &root, "")));
            let all = WatchSet::new(&["**".to_string()]).unwrap();
            let (a, _) = watched_hash(&mem, &full, &w, &[]).unwrap();
            let (b, _) = watched_hash(&mem, &cut, &all, &[]).unwrap();
            proptest::prop_assert_eq!(a, b, "patterns {:?}", pats);
        }
    }
}

/// A workdir that leads out of the snapshot's copy through a symlink in
/// the snapshot: no step runs (they would run, and delete, elsewhere).
#[test]
fn a_workdir_through_a_symlink_out_of_the_copy_runs_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let victim = tmp.path().join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("precious.txt"), "precious\n").unwrap();
    let w = tree(
        tmp.path(),
        "[deploy.web]\nwatch = [\"src/**\"]\nworkdir = \"build\"\nsteps = [\"rm -f ./*.txt\"]\n",
    );
    std::os::unix::fs::symlink(&victim, w.join("build")).unwrap();
    snap(&w);
    let err = common::fails(&w, &["deploy", "web"], 1);
    assert!(err.contains("leads out of"), "{err}");
    assert!(victim.join("precious.txt").exists());
    assert!(deploy_ref(&w, "web").is_none());
}

/// An interrupt while a finished step's background child still holds its
/// output: the next step never starts.
#[test]
fn no_step_starts_after_an_interrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let mark = tmp.path().join("second-ran");
    let started = tmp.path().join("first");
    let toml = format!(
        "[deploy.api]\nwatch = [\"src/**\"]\nsteps = [\"touch {s}; sleep 5 & exit 0\", \"touch {m}\"]\n",
        s = started.display(),
        m = mark.display()
    );
    let w = tree(tmp.path(), &toml);
    snap(&w);
    let mut child = spawn_deploy(&w, &["api"]);
    await_file(&started);
    std::thread::sleep(Duration::from_millis(300));
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(!mark.exists(), "a step started after the interrupt");
    assert!(deploy_ref(&w, "api").is_none());
}

/// A deploy killed (kill -9) with its step still running leaves the step
/// running: the next deploy of the target refuses to start until that
/// step's process group has ended (two deploys of one target never overlap).
#[test]
fn a_deploy_killed_mid_step_blocks_the_next_until_its_step_ends() {
    let tmp = tempfile::tempdir().unwrap();
    let started = tmp.path().join("started");
    let go = tmp.path().join("go");
    let toml = format!(
        "[deploy.api]\nwatch = [\"src/**\"]\nsteps = [\"touch {s}; [ -f {g} ] || sleep 30\"]\n",
        s = started.display(),
        g = go.display()
    );
    let w = tree(tmp.path(), &toml);
    snap(&w);
    let mut child = spawn_deploy(&w, &["api"]);
    await_file(&started);
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    child.wait().unwrap();
    let err = fails(&w, &["deploy", "api"], 1);
    assert!(err.contains("may still be running"), "{err}");
    assert!(deploy_ref(&w, "api").is_none());
    // The step's group ends: the next deploy runs.
    let pgid: i32 = err
        .split("process group ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    std::fs::write(&go, "").unwrap();
    let group = rustix::process::Pid::from_raw(pgid).unwrap();
    let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
    let t = Instant::now();
    while rustix::process::test_kill_process_group(group).is_ok() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the step's group did not end"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    ok(&w, &["deploy", "api", "-q"]);
    assert!(deploy_ref(&w, "api").is_some());
}

/// Audit round 19: a deploy of a record (`--snapshot deploy/web`, which
/// holds no files) ran the steps on an empty copy and recorded it; a
/// snapshot whose sp-sync.toml is a symlink had the working tree's config,
/// not its own, run. Both are refused now; nothing runs, no ref moves.
#[test]
fn a_record_or_a_symlinked_config_is_never_deployed() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs.log");
    let toml = format!(
        "[deploy.web]\nwatch = [\"src/**\"]\nsteps = [\"echo ran >> {}\"]\n",
        runs.display()
    );
    let w = tree(tmp.path(), &toml);
    snap(&w);
    ok(&w, &["deploy", "web", "-q"]);
    assert_eq!(lines(&runs).len(), 1);
    let record = deploy_ref(&w, "web").unwrap();
    let err = fails(
        &w,
        &["deploy", "web", "--force", "--snapshot", "deploy/web"],
        1,
    );
    assert!(err.contains("is a record that holds no files"), "{err}");
    assert_eq!(lines(&runs).len(), 1);
    assert_eq!(deploy_ref(&w, "web").unwrap(), record);
    // The config a symlink in the snapshot.
    std::fs::create_dir_all(w.join("conf")).unwrap();
    std::fs::rename(w.join("sp-sync.toml"), w.join("conf/real.toml")).unwrap();
    std::os::unix::fs::symlink("conf/real.toml", w.join("sp-sync.toml")).unwrap();
    std::fs::write(w.join("src/main.rs"), "fn main() { changed() }\n").unwrap();
    snap(&w);
    let err = fails(&w, &["deploy", "web"], 1);
    assert!(err.contains("sp-sync.toml is a symlink"), "{err}");
    assert_eq!(lines(&runs).len(), 1);
    assert_eq!(deploy_ref(&w, "web").unwrap(), record);
}

/// A watch that sees nothing never makes a deploy due, silently (audit
/// round 19): globs written from the working tree's root over a snapshot
/// of one folder, a table the snapshot lacks. Both are warned about.
#[test]
fn a_watch_that_sees_nothing_is_warned_about() {
    let tmp = tempfile::tempdir().unwrap();
    let toml = "[deploy.web]\nwatch = [\"src/**\"]\ntables = [\"nosuch\"]\nsteps = [\"true\"]\n";
    let w = tree(tmp.path(), toml);
    // Only src/ is snapshotted: its root holds main.rs and sub/, not src/.
    ok(&w, &["snapshot", "src", "-q"]);
    let o = run_in(&w, &["deploy", "web", "--dry-run"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("deploy web: its watch patterns match nothing"),
        "{err}"
    );
    assert!(
        err.contains("watched table nosuch is not in snapshot"),
        "{err}"
    );
    // Watching what is there: no such warning.
    std::fs::write(
        w.join("sp-sync.toml"),
        "[deploy.web]\nwatch = [\"*.rs\"]\nsteps = [\"true\"]\n",
    )
    .unwrap();
    let o = run_in(&w, &["deploy", "web", "--dry-run"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("match nothing"), "{err}");
}

/// A step that left a folder of the machine bind-mounted inside the
/// deploy's copy had that folder emptied by the copy's removal, exit 0
/// (audit 23). The copy now stays, with a warning naming the mount, and the
/// mounted folder keeps its files, whether the step failed or not. (Needs
/// root to mount: elsewhere it says so and checks nothing.)
#[test]
fn the_copys_cleanup_never_deletes_through_a_mount_a_step_left() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("keep.txt"), "precious\n").unwrap();
    let probe = tmp.path().join("probe");
    std::fs::create_dir_all(&probe).unwrap();
    let can_mount = Command::new("mount")
        .args(["--bind"])
        .arg(&outside)
        .arg(&probe)
        .status()
        .is_ok_and(|s| s.success());
    if !can_mount {
        eprintln!("skipped: mount --bind needs root here");
        return;
    }
    let _ = Command::new("umount").arg(&probe).status();
    for (name, last) in [("ok", "true"), ("bad", "exit 7")] {
        let toml = format!(
            "[deploy.{name}]\nwatch = [\"src/**\"]\nsteps = [\"mkdir cache && mount --bind {o} cache && {last}\"]\n",
            o = outside.display()
        );
        let root = tmp.path().join(name);
        let w = tree(&root, &toml);
        snap(&w);
        let o = run_in(&w, &["deploy", name]);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(
            o.status.code(),
            Some(if name == "ok" { 0 } else { 1 }),
            "{err}"
        );
        assert!(err.contains("left in place"), "{err}");
        assert_eq!(
            std::fs::read_to_string(outside.join("keep.txt")).unwrap(),
            "precious\n",
            "{name}: the mounted folder was emptied"
        );
        // Clean up as the warning says.
        let copy = err
            .split("the deploy's copy ")
            .nth(1)
            .and_then(|r| r.split(" is left").next())
            .unwrap()
            .to_string();
        assert!(
            Command::new("umount")
                .arg(Path::new(&copy).join("cache"))
                .status()
                .unwrap()
                .success()
        );
        std::fs::remove_dir_all(&copy).unwrap();
    }
}

/// A deploy killed outright (`kill -9`: no cleanup runs) leaves its copy
/// in `$TMPDIR`; the next deploy removes it once it has not changed for an
/// hour (`SP_SYNC_STALE_AFTER` shortens that here). A copy whose process
/// is alive, and a folder not named as a copy, stay.
#[test]
fn a_killed_deploys_copy_goes_at_the_next_deploy() {
    let tmp = tempfile::tempdir().unwrap();
    let tmpdir = tmp.path().join("tmp");
    std::fs::create_dir_all(&tmpdir).unwrap();
    let pwd = tmp.path().join("pwd.log");
    let pid = tmp.path().join("pid.log");
    let toml = format!(
        "[deploy.api]\nwatch = [\"src/**\"]\nsteps = [\"pwd > {w}.tmp && mv {w}.tmp {w}; echo $$ > {p}; exec sleep 60\"]\n",
        w = pwd.display(),
        p = pid.display()
    );
    let w = tree(tmp.path(), &toml);
    snap(&w);
    let mut d = Command::new(bin())
        .args(["deploy", "api"])
        .current_dir(&w)
        .env("SP_SYNC_CACHE_DIR", cache_dir())
        .env("TMPDIR", &tmpdir)
        .env_remove("SP_SYNC_STORE")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    await_file(&pwd);
    let copy = PathBuf::from(lines(&pwd)[0].clone());
    assert!(copy.starts_with(&tmpdir), "{}", copy.display());
    d.kill().unwrap();
    d.wait().unwrap();
    // The step's shell became `sleep`; stop it too.
    let t = Instant::now();
    while lines(&pid).is_empty() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let step: i32 = lines(&pid)[0].parse().unwrap();
    let _ = Command::new("kill")
        .args(["-9", &step.to_string()])
        .status();
    assert!(copy.join("src/main.rs").exists(), "the copy was not left");
    let alive = tmpdir.join(format!("sp-sync-deploy-{}-live", std::process::id()));
    let other = tmpdir.join("sp-sync-deploy-notes");
    for d in [&alive, &other] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("f"), "x").unwrap();
    }
    std::thread::sleep(Duration::from_millis(2100));
    std::fs::write(w.join("src/main.rs"), "fn main() { 2; }\n").unwrap();
    std::fs::write(
        w.join("sp-sync.toml"),
        "[deploy.api]\nwatch = [\"src/**\"]\nsteps = [\"true\"]\n",
    )
    .unwrap();
    snap(&w);
    let o = Command::new(bin())
        .args(["deploy", "api", "--force"])
        .current_dir(&w)
        .env("SP_SYNC_CACHE_DIR", cache_dir())
        .env("TMPDIR", &tmpdir)
        .env("SP_SYNC_STALE_AFTER", "1")
        .env_remove("SP_SYNC_STORE")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!copy.exists(), "{} left", copy.display());
    assert!(alive.join("f").exists() && other.join("f").exists());
}
