//! The command line as the contract gives it: output, JSON shapes, exit
//! statuses, naming, excludes, store discovery.

use crate::common;

use std::path::Path;

use common::{fails, ok, run_in};
use serde_json::Value;

fn json(cwd: &Path, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    serde_json::from_str(&ok(cwd, &a)).expect("valid JSON")
}

fn workdir() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path().join("w");
    std::fs::create_dir_all(w.join("agents")).unwrap();
    std::fs::create_dir_all(w.join("skills/s1")).unwrap();
    std::fs::write(w.join("agents/bot.md"), "# bot\n").unwrap();
    std::fs::write(w.join("skills/s1/SKILL.md"), "---\nname: s1\n---\nbody\n").unwrap();
    std::fs::write(w.join("config.yaml"), "a: 1\n").unwrap();
    (tmp, w)
}

#[test]
fn init_twice_and_explicit_store() {
    let (_t, w) = workdir();
    let e = run_in(&w, &["init"]);
    assert!(e.status.success());
    assert!(w.join(".sp-sync/store.toml").is_file());
    let before = std::fs::read(w.join(".sp-sync/store.toml")).unwrap();
    let o = run_in(&w, &["init"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
    assert_eq!(
        std::fs::read(w.join(".sp-sync/store.toml")).unwrap(),
        before
    );
    // init DIR and --store DIR
    ok(&w, &["init", "sub"]);
    assert!(w.join("sub/.sp-sync/store.toml").is_file());
    ok(&w, &["init", "--store", "exact"]);
    assert!(w.join("exact/store.toml").is_file());
    let v = json(&w, &["init", "--store", "exact"]);
    assert_eq!(v["created"], false);
}

/// A store made inside another store's directory (its refs/ or packs/,
/// directly, deeper, or through a symlink) would be read as that store's
/// refs and packs, and fsck of it would fail: refused, the outer store
/// unchanged.
#[test]
fn init_refuses_a_store_inside_another() {
    let (_t, w) = workdir();
    ok(&w, &["init", "--store", "outer", "-q"]);
    ok(&w, &["--store", "outer", "snapshot", "agents", "-q"]);
    std::os::unix::fs::symlink("outer/refs", w.join("lnk")).unwrap();
    for place in [
        "outer/refs/inner",
        "outer/packs/x/y",
        "lnk/z",
        "outer/tmp/t",
    ] {
        let err = fails(&w, &["init", "--store", place], 1);
        assert!(err.contains("lies inside the sp-sync store"), "{err}");
        assert!(!w.join(place).exists(), "{place}");
    }
    ok(&w, &["--store", "outer", "fsck", "-q"]);
    // A store beside it, and the same store again, are fine.
    ok(&w, &["init", "--store", "beside", "-q"]);
    ok(&w, &["init", "--store", "outer", "-q"]);
}

#[test]
fn snapshot_log_ls_cat_and_json_shapes() {
    let (_t, w) = workdir();
    ok(&w, &["init"]);
    let out = ok(&w, &["snapshot", "-m", "first"]);
    let id = out.trim();
    assert_eq!(id.len(), 64, "stdout is the id: {out:?}");
    assert!(
        id.bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );

    std::fs::write(w.join("agents/new.md"), "new\n").unwrap();
    let v = json(&w, &["snapshot", "-m", "second"]);
    assert_eq!(v["files"], 4);
    assert_eq!(v["bytes"], 6 + 22 + 5 + 4);
    assert!(v["new_bytes"].as_u64().unwrap() > 0);
    assert!(v["tables"].is_object());
    let second = v["id"].as_str().unwrap().to_string();

    let log = json(&w, &["log"]);
    let log = log.as_array().unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0]["id"], second);
    assert_eq!(log[0]["message"], "second");
    assert_eq!(log[0]["parents"][0], id);
    assert_eq!(log[1]["parents"].as_array().unwrap().len(), 0);
    assert!(log[0]["time"].as_str().unwrap().ends_with('Z'));
    let text = ok(&w, &["log"]);
    assert!(text.contains(&format!("snapshot {second}")) && text.contains("    first"));

    // The store itself is never part of a snapshot.
    let ls = ok(&w, &["ls", "main"]);
    assert_eq!(ls, "agents/\nconfig.yaml\nskills/\n");
    let ls = json(&w, &["ls", "main:agents"]);
    assert_eq!(ls["entries"][0]["path"], "bot.md");
    assert_eq!(ls["entries"][0]["type"], "file");
    assert_eq!(ls["snapshot"], second);
    assert_eq!(ls["sources"], log[0]["sources"], "{ls}");
    assert!(ls["sources"]["paths"].is_array(), "{ls}");
    let rec = ok(&w, &["ls", "-r", "main"]);
    assert!(rec.contains("skills/s1/SKILL.md\n"));
    assert_eq!(
        ok(&w, &["cat", "main:skills/s1/SKILL.md"]),
        "---\nname: s1\n---\nbody\n"
    );

    // Names: prefix, ~N, ref.
    assert_eq!(
        ok(&w, &["cat", &format!("{}:agents/bot.md", &id[..10])]),
        "# bot\n"
    );
    let err = fails(&w, &["cat", "main~1:agents/new.md"], 1);
    assert!(err.contains("no such path"), "{err}");
    assert_eq!(ok(&w, &["cat", "main~0:agents/new.md"]), "new\n");
    let err = fails(&w, &["log", "nosuchref"], 1);
    assert!(
        err.starts_with("error: ") && err.contains("nosuchref"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1);
    let err = fails(&w, &["cat", "main:agents"], 1);
    assert!(err.contains("directory"), "{err}");
}

#[test]
fn diff_between_snapshots_and_with_the_working_tree() {
    let (_t, w) = workdir();
    ok(&w, &["init"]);
    let a = ok(&w, &["snapshot"]).trim().to_string();
    // No change: empty diff, exit 0 even with --exit-code.
    ok(&w, &["diff", "main", "--exit-code"]);
    std::fs::write(w.join("agents/bot.md"), "# bot v2, longer\n").unwrap();
    std::fs::remove_file(w.join("config.yaml")).unwrap();
    std::fs::write(w.join("agents/added.md"), "x").unwrap();
    std::fs::set_permissions(
        w.join("skills/s1/SKILL.md"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let v = json(&w, &["diff", &a]);
    let files = v["files"].as_array().unwrap();
    let find = |p: &str| {
        files
            .iter()
            .find(|f| f["path"] == p)
            .unwrap_or_else(|| panic!("{p} in {v}"))
    };
    assert_eq!(find("agents/bot.md")["change"], "modified");
    assert_eq!(find("agents/bot.md")["old_size"], 6);
    assert_eq!(find("agents/bot.md")["new_size"], 17);
    assert_eq!(find("config.yaml")["change"], "removed");
    assert_eq!(find("agents/added.md")["change"], "added");
    assert_eq!(
        find("skills/s1/SKILL.md")["change"],
        "modified",
        "a mode-only change is modified"
    );
    assert_eq!(files.len(), 4, "{v}");
    assert_eq!(v["rows"], Value::Array(vec![]));
    let o = run_in(&w, &["diff", &a, "--exit-code"]);
    assert_eq!(o.status.code(), Some(1));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("M agents/bot.md (6 B -> 17 B)"), "{text}");
    assert!(text.contains("- config.yaml"), "{text}");
    assert!(text.contains("+ agents/added.md"), "{text}");

    let b = ok(&w, &["snapshot"]).trim().to_string();
    let v2 = json(&w, &["diff", &a, &b]);
    assert_eq!(
        v2["files"], v["files"],
        "snapshot diff equals working-tree diff"
    );
    // --stat: a line per file, like git's, and the summary.
    let stat = ok(&w, &["diff", &a, &b, "--stat"]);
    assert!(stat.contains(" agents/bot.md      | 2 +-\n"), "{stat}");
    assert!(stat.contains(" config.yaml        | 1 -\n"), "{stat}");
    assert!(
        stat.ends_with(" 4 files changed, 2 insertions(+), 2 deletions(-)\n"),
        "{stat}"
    );
    // A type change.
    std::fs::remove_file(w.join("agents/added.md")).unwrap();
    std::os::unix::fs::symlink("bot.md", w.join("agents/added.md")).unwrap();
    let v = json(&w, &["diff", &b]);
    assert_eq!(v["files"][0]["change"], "type");
}

#[test]
fn restore_command_and_exit_statuses() {
    let (t, w) = workdir();
    ok(&w, &["init"]);
    ok(&w, &["snapshot"]);
    let target = t.path().join("out");
    let v = json(&w, &["restore", "main", target.to_str().unwrap()]);
    assert_eq!(v["files"], 3);
    assert_eq!(
        std::fs::read_to_string(target.join("agents/bot.md")).unwrap(),
        "# bot\n"
    );
    // Usage errors exit 2; unknown things exit 1.
    fails(&w, &["restore"], 2);
    fails(&w, &["no-such-command"], 2);
    fails(&w, &["snapshot", "--no-such-flag"], 2);
    let err = fails(&w, &["restore", "main:nope", target.to_str().unwrap()], 1);
    assert!(err.contains("nope"), "{err}");
    // A target that is a file.
    std::fs::write(t.path().join("afile"), "").unwrap();
    let err = fails(
        &w,
        &["restore", "main", t.path().join("afile").to_str().unwrap()],
        1,
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    // No store here.
    let err = fails(t.path(), &["log"], 1);
    assert!(err.contains("sp-sync init"), "{err}");
}

/// A restore that cannot write says where it was restoring to, on the one
/// `error:` line (`fails` checks there is one).
#[test]
fn restore_errors_say_where() {
    let (t, w) = workdir();
    ok(&w, &["init"]);
    ok(&w, &["snapshot"]);
    std::fs::write(t.path().join("afile"), "").unwrap();
    let under_a_file = t.path().join("afile/sub");
    let err = fails(&w, &["restore", "main", under_a_file.to_str().unwrap()], 1);
    let line = format!("error: restore into {}: ", under_a_file.display());
    assert!(err.starts_with(&line), "{err}");
    // The tables into a path that is a directory.
    let db = t.path().join("app.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a');",
    )
    .unwrap();
    drop(c);
    ok(&w, &["snapshot", "--db", db.to_str().unwrap()]);
    let dir = t.path().join("adir");
    std::fs::create_dir(&dir).unwrap();
    let err = fails(&w, &["restore", "main", "--db", dir.to_str().unwrap()], 1);
    let line = format!("error: restore into {}: ", dir.display());
    assert!(err.starts_with(&line), "{err}");
}

#[test]
fn refs_by_hand() {
    let (_t, w) = workdir();
    ok(&w, &["init"]);
    let a = ok(&w, &["snapshot"]).trim().to_string();
    std::fs::write(w.join("x"), "x").unwrap();
    let b = ok(&w, &["snapshot"]).trim().to_string();
    ok(&w, &["ref", "set", "deploy/api", &a[..12]]);
    let list = ok(&w, &["ref", "list"]);
    assert_eq!(list, format!("{a} deploy/api\n{b} main\n"));
    ok(&w, &["ref", "set", "deploy/api", "main"]);
    let v = json(&w, &["ref", "list"]);
    assert_eq!(v[0]["name"], "deploy/api");
    assert_eq!(v[0]["id"], b);
    ok(&w, &["ref", "delete", "deploy/api"]);
    let err = fails(&w, &["ref", "delete", "deploy/api"], 1);
    assert!(err.contains("unknown ref"), "{err}");
    let err = fails(&w, &["ref", "set", "bad name", "main"], 1);
    assert!(err.contains("invalid ref name"), "{err}");
    let err = fails(&w, &["ref", "set", "x", "0123456789abcdef"], 1);
    assert!(err.contains("unknown"), "{err}");
    // A ref is never also a folder of refs (as in git): one clear line,
    // the other ref kept.
    let err = fails(&w, &["ref", "set", "main/x", "main"], 1);
    assert_eq!(
        err.trim_end(),
        "error: cannot create ref main/x: ref main exists, and a ref cannot also be a folder of refs"
    );
    ok(&w, &["ref", "set", "deploy/api", "main"]);
    let err = fails(&w, &["snapshot", "--ref", "deploy"], 1);
    assert_eq!(
        err.trim_end(),
        "error: cannot create ref deploy: refs under deploy/ exist (deploy/api)"
    );
    assert_eq!(
        ok(&w, &["ref", "list"]),
        format!("{b} deploy/api\n{b} main\n")
    );
    // Such a name reads as no ref.
    let err = fails(&w, &["log", "main/x"], 1);
    assert!(err.contains("unknown snapshot or ref"), "{err}");
}

#[test]
fn excludes_ignore_files_project_file_and_discovery() {
    let (t, w) = workdir();
    ok(&w, &["init"]);
    std::fs::write(w.join("debug.log"), "noise").unwrap();
    std::fs::create_dir_all(w.join("target/deep")).unwrap();
    std::fs::write(w.join("target/deep/x"), "build output").unwrap();
    std::fs::write(w.join("skills/.sp-syncignore"), "*.tmp\n!keep.tmp\n").unwrap();
    std::fs::write(w.join("skills/a.tmp"), "").unwrap();
    std::fs::write(w.join("skills/keep.tmp"), "").unwrap();
    ok(
        &w,
        &["snapshot", "--exclude", "*.log", "--exclude", "target/"],
    );
    let ls = ok(&w, &["ls", "-r", "main"]);
    assert!(!ls.contains("debug.log") && !ls.contains("target"), "{ls}");
    assert!(
        !ls.contains("a.tmp") && ls.contains("skills/keep.tmp"),
        "{ls}"
    );
    assert!(ls.contains("skills/.sp-syncignore"), "{ls}");

    // sp-sync.toml: paths and excludes, used when no path is given.
    std::fs::write(
        w.join("sp-sync.toml"),
        "[snapshot]\npaths = [\"agents\", \"skills\"]\nexclude = [\"SKILL.md\"]\n",
    )
    .unwrap();
    ok(&w, &["snapshot"]);
    let ls = ok(&w, &["ls", "-r", "main"]);
    assert!(ls.starts_with("agents/\nagents/bot.md\nskills/\n"), "{ls}");
    assert!(
        !ls.contains("SKILL.md") && !ls.contains("config.yaml"),
        "{ls}"
    );

    // Found from a subdirectory, like git.
    let sub = w.join("skills/s1");
    assert_eq!(ok(&sub, &["cat", "main:agents/bot.md"]), "# bot\n");
    // SP_SYNC_STORE names it from anywhere.
    let o = std::process::Command::new(common::bin())
        .args(["cat", "main:agents/bot.md"])
        .current_dir(t.path())
        .env("SP_SYNC_STORE", w.join(".sp-sync"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "# bot\n");
    // Several paths: each under its own name.
    ok(&w, &["snapshot", "agents", "config.yaml", "--ref", "two"]);
    assert_eq!(ok(&w, &["ls", "two"]), "agents/\nconfig.yaml\n");
}

#[test]
fn fsck_gc_and_completions() {
    let (_t, w) = workdir();
    ok(&w, &["init"]);
    ok(&w, &["snapshot"]);
    std::fs::write(w.join("scratch.bin"), common::bytes(300_000, 1)).unwrap();
    ok(&w, &["snapshot", "--ref", "tmp"]);
    let v = json(&w, &["fsck", "--read-data"]);
    assert_eq!(v["ok"], true);
    assert_eq!(v["errors"], Value::Array(vec![]));
    ok(&w, &["ref", "delete", "tmp"]);
    let dry = json(&w, &["gc", "--dry-run"]);
    assert!(dry["removed_objects"].as_u64().unwrap() >= 2, "{dry}");
    let before = common::dir_bytes(&w.join(".sp-sync"));
    let dry2 = json(&w, &["gc", "--dry-run"]);
    assert_eq!(
        dry2["removed_objects"], dry["removed_objects"],
        "dry run changes nothing"
    );
    assert_eq!(common::dir_bytes(&w.join(".sp-sync")), before);
    let r = json(&w, &["gc"]);
    assert_eq!(r["removed_objects"], dry["removed_objects"]);
    assert!(common::dir_bytes(&w.join(".sp-sync")) + 250_000 < before);
    let again = json(&w, &["gc", "--dry-run"]);
    assert_eq!(again["removed_objects"], 0);
    ok(&w, &["fsck", "--read-data"]);
    assert_eq!(ok(&w, &["cat", "main:agents/bot.md"]), "# bot\n");
    let comp = ok(&w, &["completions", "bash"]);
    assert!(comp.contains("sp-sync") && comp.contains("snapshot"));
}

/// A ref named like another snapshot's id prefix never stands in for it
/// silently: the name is ambiguous, and says so.
#[test]
fn a_ref_named_like_an_id_prefix_is_ambiguous() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path();
    std::fs::create_dir_all(w.join("d")).unwrap();
    std::fs::write(w.join("d/f"), "one\n").unwrap();
    ok(w, &["init", "-q"]);
    let first = ok(w, &["snapshot", "d", "-q"]).trim().to_string();
    std::fs::write(w.join("d/f"), "two\n").unwrap();
    ok(w, &["snapshot", "d", "-q"]);
    let prefix = &first[..8];
    ok(w, &["ref", "set", prefix, "main", "-q"]);
    let err = common::fails(w, &["cat", &format!("{prefix}:f")], 1);
    assert!(err.contains("ambiguous"), "{err}");
    // The full id still names the first snapshot.
    assert_eq!(ok(w, &["cat", &format!("{first}:f")]), "one\n");
}

/// Another store inside the snapshotted tree (a second checkout, a vendored
/// project) is left out: its objects are no content and its config.toml
/// holds credentials. Naming one as a source is refused.
#[test]
fn a_store_inside_the_tree_is_left_out() {
    let (_t, w) = workdir();
    ok(&w, &["init", "-q"]);
    let inner = w.join("vendor/other");
    std::fs::create_dir_all(&inner).unwrap();
    std::fs::write(inner.join("lib.txt"), "lib\n").unwrap();
    ok(&inner, &["init", "-q"]);
    std::fs::write(inner.join(".sp-sync/config.toml"), "token = \"secret\"\n").unwrap();
    let id = ok(&w, &["snapshot", "-q"]).trim().to_string();
    let listed = ok(&w, &["ls", "-r", &id]);
    assert!(listed.contains("vendor/other/lib.txt"), "{listed}");
    assert!(!listed.contains(".sp-sync"), "{listed}");
    let err = fails(&w, &["snapshot", "vendor/other/.sp-sync"], 1);
    assert!(err.contains("sp-sync store"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}
