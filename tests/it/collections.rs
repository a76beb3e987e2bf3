//! Local collections (issue 3, acceptance 4), on the shipped example
//! (`examples/services`): to-disk then to-db is a no-op; editing one file
//! shows exactly that key; to-db applies it in one transaction; malformed
//! front matter names the file and the line and changes nothing.
//!
//! Three-way sync (issue 8, acceptance 4): the state of the last sync is
//! recorded (`local/<collection>` in the store), so an edit flows only from
//! the side that made it, an edit on the target side is kept and reported,
//! edits on both sides are a conflict (exit 1, both sides unchanged) unless
//! `--force`; values keep their YAML types and unchanged files are never
//! rewritten. A property test checks that no edit is ever lost silently.

use crate::common;

use std::path::{Path, PathBuf};

use common::{fails, ok};
use rusqlite::Connection;
use serde_json::Value as Json;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &p);
        } else {
            std::fs::copy(e.path(), p).unwrap();
        }
    }
}

/// The example, copied, with its database created from schema.sql and a
/// store (the default layout).
fn example() -> (tempfile::TempDir, PathBuf) {
    let (tmp, root) = example_without_store();
    ok(&root, &["init", "-q"]);
    (tmp, root)
}

/// The example without a store: no record of the last sync.
fn example_without_store() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("project");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/services"),
        &root,
    );
    std::fs::create_dir_all(root.join("data")).unwrap();
    let schema = std::fs::read_to_string(root.join("schema.sql")).unwrap();
    Connection::open(root.join("data/app.db"))
        .unwrap()
        .execute_batch(&schema)
        .unwrap();
    (tmp, root)
}

fn json(s: &str) -> Json {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

fn rows(root: &Path, sql: &str) -> Vec<Vec<String>> {
    let c = Connection::open(root.join("data/app.db")).unwrap();
    let mut st = c.prepare(sql).unwrap();
    let n = st.column_count();
    st.query_map([], |r| {
        Ok((0..n)
            .map(|i| match r.get_ref(i).unwrap() {
                rusqlite::types::ValueRef::Null => "NULL".to_string(),
                rusqlite::types::ValueRef::Integer(i) => i.to_string(),
                rusqlite::types::ValueRef::Real(f) => format!("{f:?}"),
                rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                rusqlite::types::ValueRef::Blob(b) => format!("{b:?}"),
            })
            .collect())
    })
    .unwrap()
    .map(|r| r.unwrap())
    .collect()
}

fn db_bytes(root: &Path) -> Vec<u8> {
    std::fs::read(root.join("data/app.db")).unwrap()
}

/// Every file under `dir` with its bytes.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    common::files_under(dir)
        .into_iter()
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p.strip_prefix(dir).unwrap().to_path_buf(), b)
        })
        .collect()
}

#[test]
fn example_round_trips_both_ways() {
    let (_tmp, root) = example();
    // Every file is a row the table lacks.
    let plan = json(&ok(&root, &["local", "diff", "--json"]));
    let plan = plan.as_array().unwrap();
    assert_eq!(plan.len(), 5, "{plan:?}");
    assert!(plan.iter().all(|c| c["change"] == "added"));
    fails(&root, &["local", "diff", "--exit-code"], 1);
    // A dry run prints the plan with the direction's verbs and changes nothing.
    let before = db_bytes(&root);
    let dry = ok(&root, &["local", "to-db", "--dry-run"]);
    assert_eq!(
        dry,
        "create content/getting-started (services/content/getting-started.md)\n\
         create content/hello-world (services/content/hello-world.md)\n\
         create content/release-notes-2025 (services/content/blog/release-notes.md)\n\
         create skills/summarize (services/skills/summarize/SKILL.md)\n\
         create skills/translate (services/skills/translate/SKILL.md)\n"
    );
    assert_eq!(db_bytes(&root), before);

    ok(&root, &["local", "to-db"]);
    let content = rows(
        &root,
        "SELECT slug, title, draft, tags, published_at FROM content ORDER BY slug",
    );
    assert_eq!(
        content,
        vec![
            vec![
                "getting-started",
                "Getting started: the first five minutes",
                "1",
                "NULL",
                "2025-02-01"
            ],
            vec![
                "hello-world",
                "Hello, world",
                "0",
                "[\"intro\",\"news\"]",
                "2025-01-15"
            ],
            vec![
                "release-notes-2025",
                "Release notes, 2025",
                "NULL",
                "[\"releases\"]",
                "2025-12-31"
            ],
        ]
    );
    let skills = rows(
        &root,
        "SELECT name, version, allowed_tools FROM skills ORDER BY name",
    );
    assert_eq!(skills[0], vec!["summarize", "3", "[\"read_file\"]"]);
    let body = rows(
        &root,
        "SELECT body FROM content WHERE slug = 'release-notes-2025'",
    );
    assert_eq!(
        body[0][0],
        "## January\n\nUnicode works: café, naïve, 日本語, 🦀.\n"
    );
    // Now files and rows agree, both ways.
    assert_eq!(ok(&root, &["local", "diff", "--exit-code"]), "");
    let on_disk = files(&root.join("services"));
    ok(&root, &["local", "to-disk"]);
    assert_eq!(
        files(&root.join("services")),
        on_disk,
        "to-disk had nothing to write"
    );

    // From the database alone: deleting the files is an edit of the files,
    // which to-disk keeps (and reports), --force too (no conflict: only the
    // files changed). Without the record of the last sync (deleted), every
    // file the folder lacks is written, and to-db then finds nothing to do
    // (a stable rendering); to-disk neither.
    std::fs::remove_dir_all(root.join("services")).unwrap();
    for force in [false, true] {
        let args: &[&str] = if force {
            &["local", "to-disk", "--force", "--json"]
        } else {
            &["local", "to-disk", "--json"]
        };
        let kept = json(&ok(&root, args));
        assert_eq!(kept.as_array().unwrap().len(), 5);
        assert!(
            kept.as_array()
                .unwrap()
                .iter()
                .all(|c| c["action"] == "keep" && c["changed"] == "files"),
            "{kept}"
        );
        assert!(!root.join("services").exists());
    }
    ok(&root, &["ref", "delete", "local/content", "-q"]);
    ok(&root, &["ref", "delete", "local/skills", "-q"]);
    let written = json(&ok(&root, &["local", "to-disk", "--json"]));
    assert_eq!(written.as_array().unwrap().len(), 5);
    assert!(written[0]["action"] == "create", "{written}");
    assert!(root.join("services/skills/summarize/SKILL.md").is_file());
    assert!(
        root.join("services/content/release-notes-2025.md")
            .is_file()
    );
    let db_before = db_bytes(&root);
    assert_eq!(json(&ok(&root, &["local", "to-db", "--json"])), json("[]"));
    assert_eq!(db_bytes(&root), db_before, "to-db after to-disk is a no-op");
    let rendered = files(&root.join("services"));
    assert_eq!(
        json(&ok(&root, &["local", "to-disk", "--json"])),
        json("[]")
    );
    assert_eq!(files(&root.join("services")), rendered);
    let skill = std::fs::read_to_string(root.join("services/skills/summarize/SKILL.md")).unwrap();
    assert_eq!(
        skill,
        "---\nname: summarize\ndescription: Summarize a document in five bullet points.\nversion: 3\nallowed_tools: [read_file]\n---\nRead the whole document first. Then write five bullet points, each under\ntwenty words, in the order the document makes its points.\n"
    );
}

#[test]
fn one_edit_shows_one_key_and_to_db_applies_it() {
    let (_tmp, root) = example();
    ok(&root, &["local", "to-db", "-q"]);
    let p = root.join("services/content/hello-world.md");
    let text = std::fs::read_to_string(&p).unwrap();
    std::fs::write(
        &p,
        text.replace("title: Hello, world", "title: Hello again"),
    )
    .unwrap();
    let d = json(&ok(&root, &["local", "diff", "--json"]));
    assert_eq!(
        d,
        json(
            r#"[{"collection": "content", "key": "hello-world", "change": "modified", "path": "services/content/hello-world.md", "columns": ["title"], "changed": "files"}]"#
        )
    );
    let line = ok(&root, &["local", "diff", "--collection", "content"]);
    assert_eq!(
        line,
        "M content/hello-world (services/content/hello-world.md) [title] (files changed)\n"
    );
    assert_eq!(ok(&root, &["local", "diff", "--collection", "skills"]), "");
    ok(&root, &["local", "to-db", "--collection", "content", "-q"]);
    assert_eq!(
        rows(
            &root,
            "SELECT title FROM content WHERE slug = 'hello-world'"
        )[0][0],
        "Hello again"
    );
    assert_eq!(ok(&root, &["local", "diff"]), "");
    // And the other way: a row changed in the database is written to its file.
    Connection::open(root.join("data/app.db"))
        .unwrap()
        .execute("UPDATE skills SET version = 4 WHERE name = 'translate'", [])
        .unwrap();
    ok(&root, &["local", "to-disk", "-q"]);
    let s = std::fs::read_to_string(root.join("services/skills/translate/SKILL.md")).unwrap();
    assert!(s.contains("version: 4\n"), "{s}");
    assert_eq!(ok(&root, &["local", "diff"]), "");
    // A file removed is a row to-db deletes; a row deleted is a file to-disk removes.
    std::fs::remove_file(root.join("services/content/getting-started.md")).unwrap();
    let d = json(&ok(&root, &["local", "diff", "--json"]));
    assert_eq!(d[0]["change"], "removed");
    ok(&root, &["local", "to-db", "-q"]);
    assert!(
        rows(
            &root,
            "SELECT * FROM content WHERE slug = 'getting-started'"
        )
        .is_empty()
    );
}

#[test]
fn bad_files_name_file_and_line_and_change_nothing() {
    let (_tmp, root) = example();
    ok(&root, &["local", "to-db", "-q"]);
    let p = root.join("services/content/hello-world.md");
    let good = std::fs::read_to_string(&p).unwrap();
    let check = |text: &str, want: &[&str]| {
        std::fs::write(&p, text).unwrap();
        // A second file also changed: nothing of it may be applied either.
        let other = root.join("services/skills/translate/SKILL.md");
        let other_text = std::fs::read_to_string(&other).unwrap();
        std::fs::write(&other, other_text.replace("version: 1", "version: 2")).unwrap();
        let before = db_bytes(&root);
        for cmd in [
            &["local", "to-db"][..],
            &["local", "diff"],
            &["local", "to-disk"],
        ] {
            let err = fails(&root, cmd, 1);
            assert_eq!(err.trim_end().lines().count(), 1, "{err}");
            for w in want {
                assert!(err.contains(w), "{err} should contain {w}");
            }
        }
        assert_eq!(db_bytes(&root), before);
        std::fs::write(&other, other_text).unwrap();
    };
    // Malformed YAML on line 4 of the file.
    check(
        "---\nslug: hello-world\ntitle: Hello\ntags: [a, b\n---\nbody\n",
        &["services/content/hello-world.md:", "malformed front matter"],
    );
    check(
        "---\nslug: hello-world\ntitle: \"unclosed\nauthor: x\n---\nbody\n",
        &["services/content/hello-world.md:"],
    );
    // A field that is not a column, on line 3.
    check(
        "---\nslug: hello-world\ncolour: red\ntitle: Hello\n---\nbody\n",
        &[
            "services/content/hello-world.md:3:",
            "colour is not a column",
        ],
    );
    // Two fields that name one column (field names match in any case).
    check(
        "---\nslug: hello-world\ntitle: Hello\nTitle: Other\n---\nbody\n",
        &[
            "services/content/hello-world.md:4:",
            "fields title and Title both name column title",
        ],
    );
    // No front matter; front matter never closed; no key.
    check(
        "# just markdown\n",
        &["hello-world.md:1:", "no front matter"],
    );
    check("---\nslug: x\n", &["hello-world.md:1:", "not closed"]);
    check(
        "---\ntitle: no slug\n---\n",
        &["hello-world.md:1:", "no slug field"],
    );
    std::fs::write(&p, good).unwrap();
    assert_eq!(ok(&root, &["local", "diff"]), "");

    // A constraint the database enforces fails the whole to-db.
    std::fs::write(
        root.join("services/content/untitled.md"),
        "---\nslug: untitled\n---\nno title\n",
    )
    .unwrap();
    let other = root.join("services/skills/translate/SKILL.md");
    let t = std::fs::read_to_string(&other).unwrap();
    std::fs::write(&other, t.replace("version: 1", "version: 7")).unwrap();
    let before = db_bytes(&root);
    let err = fails(&root, &["local", "to-db"], 1);
    assert!(
        err.contains("untitled.md") && err.contains("NOT NULL"),
        "{err}"
    );
    assert_eq!(db_bytes(&root), before, "one transaction: nothing applied");
}

#[test]
fn configuration_errors_are_clear() {
    let (_tmp, root) = example();
    let e = fails(&root, &["local", "diff", "--collection", "nope"], 1);
    assert!(e.contains("unknown collection \"nope\""), "{e}");
    let cfg = std::fs::read_to_string(root.join("sp-sync.toml")).unwrap();
    std::fs::write(
        root.join("sp-sync.toml"),
        cfg.replace("body = \"body\"", "body = \"text\""),
    )
    .unwrap();
    let e = fails(&root, &["local", "diff"], 1);
    assert!(e.contains("table content has no column text"), "{e}");
    assert_eq!(e.trim_end().lines().count(), 1);
}

#[test]
fn the_example_snapshots_files_and_tables_together() {
    let (_tmp, root) = example();
    ok(&root, &["local", "to-db", "-q"]);
    let out = json(&ok(&root, &["snapshot", "--json", "-m", "example"]));
    assert_eq!(out["files"], 5);
    assert_eq!(out["tables"]["content"], 3);
    assert_eq!(out["tables"]["skills"], 2);
    // The database file itself is not snapshotted as a file.
    let ls = ok(&root, &["ls", "-r", "main"]);
    assert!(!ls.contains("app.db"), "{ls}");
    // diff against now: nothing; after a row changes, that row.
    ok(&root, &["diff", "main", "--exit-code"]);
    Connection::open(root.join("data/app.db"))
        .unwrap()
        .execute("UPDATE skills SET version = 9 WHERE name = 'summarize'", [])
        .unwrap();
    let d = json(&ok(&root, &["diff", "main", "--json"]));
    assert_eq!(
        d["rows"],
        json(
            r#"[{"table": "skills", "key": ["summarize"], "change": "modified", "columns": ["version"]}]"#
        )
    );
}

/// Runs the binary; (exit status, stdout, stderr).
fn run(root: &Path, args: &[&str]) -> (i32, String, String) {
    let o = common::run_in(root, args);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn sql(root: &Path, stmt: &str) {
    Connection::open(root.join("data/app.db"))
        .unwrap()
        .execute_batch(stmt)
        .unwrap();
}

/// Bytes and modification time of every file under `dir`.
fn stamps(dir: &Path) -> Vec<(PathBuf, Vec<u8>, std::time::SystemTime)> {
    common::files_under(dir)
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(&p).unwrap().modified().unwrap();
            let b = std::fs::read(&p).unwrap();
            (p.strip_prefix(dir).unwrap().to_path_buf(), b, m)
        })
        .collect()
}

fn edit(p: &Path, from: &str, to: &str) {
    let t = std::fs::read_to_string(p).unwrap();
    assert!(t.contains(from), "{from:?} not in {t}");
    std::fs::write(p, t.replace(from, to)).unwrap();
}

#[test]
fn a_conflict_exits_1_and_leaves_both_sides_until_force() {
    let (_tmp, root) = example();
    ok(&root, &["local", "to-db", "-q"]);
    let p = root.join("services/content/hello-world.md");
    edit(&p, "title: Hello, world", "title: From the file");
    sql(
        &root,
        "UPDATE content SET title = 'From the database' WHERE slug = 'hello-world'",
    );
    // An unrelated edit on the files' side still flows.
    edit(
        &root.join("services/skills/translate/SKILL.md"),
        "version: 1",
        "version: 5",
    );
    let file_before = std::fs::read(&p).unwrap();
    for dir in ["to-db", "to-disk"] {
        let dry = run(&root, &["local", dir, "--dry-run"]);
        assert_eq!(dry.0, 1, "{dry:?}");
        assert!(
            dry.1.contains(
                "conflict content/hello-world (services/content/hello-world.md) [title] (changed on both sides)\n"
            ),
            "{dry:?}"
        );
    }
    let (code, out, err) = run(&root, &["local", "to-db"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("conflict content/hello-world"), "{out}");
    assert!(out.contains("update skills/translate"), "{out}");
    let err_lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(err_lines.len(), 1, "{err}");
    assert!(err_lines[0].contains("--force"), "{err}");
    // Both sides of the conflict unchanged; the other edit applied.
    assert_eq!(std::fs::read(&p).unwrap(), file_before);
    assert_eq!(
        rows(
            &root,
            "SELECT title FROM content WHERE slug = 'hello-world'"
        )[0][0],
        "From the database"
    );
    assert_eq!(
        rows(&root, "SELECT version FROM skills WHERE name = 'translate'")[0][0],
        "5"
    );
    // Still a conflict the other way, and on a second try.
    let (code, _, _) = run(&root, &["local", "to-disk"]);
    assert_eq!(code, 1);
    assert_eq!(std::fs::read(&p).unwrap(), file_before);
    assert_eq!(run(&root, &["local", "to-db"]).0, 1);
    // --force: the source side wins the conflict, and only it: a file the
    // user wrote since (only the files changed) stays, as does an edit of
    // another file.
    let draft = root.join("services/content/draft.md");
    std::fs::write(&draft, "---\nslug: draft\ntitle: Draft\n---\nwip\n").unwrap();
    let other = root.join("services/content/getting-started.md");
    let other_text = std::fs::read_to_string(&other).unwrap() + "\nA line of mine.\n";
    std::fs::write(&other, &other_text).unwrap();
    let forced = json(&ok(&root, &["local", "to-disk", "--force", "--json"]));
    let action = |key: &str| {
        forced
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["key"] == key)
            .map(|c| c["action"].as_str().unwrap().to_string())
    };
    assert_eq!(action("hello-world").as_deref(), Some("update"), "{forced}");
    assert_eq!(action("draft").as_deref(), Some("keep"), "{forced}");
    assert_eq!(
        action("getting-started").as_deref(),
        Some("keep"),
        "{forced}"
    );
    let t = std::fs::read_to_string(&p).unwrap();
    assert!(t.contains("title: From the database\n"), "{t}");
    assert!(draft.is_file());
    assert_eq!(std::fs::read_to_string(&other).unwrap(), other_text);
    // (The two kept edits go to the database the other way.)
    ok(&root, &["local", "to-db", "-q"]);
    assert_eq!(ok(&root, &["local", "diff"]), "");
    // After the forced sync the sides agree, and the record knows it.
    edit(&p, "title: From the database", "title: Later");
    let d = json(&ok(&root, &["local", "diff", "--json"]));
    assert_eq!(d[0]["changed"], "files", "{d}");
    ok(&root, &["local", "to-db", "-q"]);
    ok(&root, &["fsck"]);
}

#[test]
fn an_edit_on_the_target_side_is_kept_and_reported() {
    // The issue's case: to-db, then a file is edited, then to-disk (which
    // also has a database edit of another key to carry).
    let (_tmp, root) = example();
    ok(&root, &["local", "to-db", "-q"]);
    let p = root.join("services/content/hello-world.md");
    edit(&p, "title: Hello, world", "title: Edited by hand");
    sql(
        &root,
        "UPDATE skills SET version = 8 WHERE name = 'translate'",
    );
    let before = stamps(&root.join("services/content"));
    let (code, out, err) = run(&root, &["local", "to-disk"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(
            "keep content/hello-world (services/content/hello-world.md) [title] (changed in the files only)\n"
        ),
        "{out}"
    );
    assert!(out.contains("update skills/translate"), "{out}");
    assert!(err.contains("left as they are"), "{err}");
    assert_eq!(
        stamps(&root.join("services/content")),
        before,
        "the edited file (and every other content file) untouched"
    );
    let s = std::fs::read_to_string(root.join("services/skills/translate/SKILL.md")).unwrap();
    assert!(s.contains("version: 8\n"), "{s}");
    // The kept edit is still there to carry the other way.
    let (code, out, _) = run(&root, &["local", "to-db"]);
    assert_eq!(code, 0);
    assert!(out.contains("update content/hello-world"), "{out}");
    assert_eq!(
        rows(
            &root,
            "SELECT title FROM content WHERE slug = 'hello-world'"
        )[0][0],
        "Edited by hand"
    );
    assert_eq!(ok(&root, &["local", "diff"]), "");
}

#[test]
fn dry_runs_print_the_directions_verbs() {
    let (_tmp, root) = example();
    ok(&root, &["local", "to-db", "-q"]);
    sql(
        &root,
        "INSERT INTO skills(name, description, instructions) VALUES ('plan', 'Plan the work.', 'Write a plan.\n');
         UPDATE skills SET version = 2 WHERE name = 'summarize';
         DELETE FROM content WHERE slug = 'getting-started';",
    );
    let db_before = db_bytes(&root);
    let files_before = stamps(&root.join("services"));
    let out = ok(&root, &["local", "to-disk", "--dry-run"]);
    assert_eq!(
        out,
        "delete content/getting-started (services/content/getting-started.md)\n\
         create skills/plan (services/skills/plan/SKILL.md)\n\
         update skills/summarize (services/skills/summarize/SKILL.md) [version]\n"
    );
    // to-db's plan for the same state: those are database edits it keeps.
    let out = ok(&root, &["local", "to-db", "--dry-run"]);
    assert!(
        out.lines().all(|l| l.starts_with("keep ")) && out.lines().count() == 3,
        "{out}"
    );
    let j = json(&ok(&root, &["local", "to-disk", "--dry-run", "--json"]));
    let actions: Vec<&str> = j
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["delete", "create", "update"]);
    assert_eq!(db_bytes(&root), db_before);
    assert_eq!(stamps(&root.join("services")), files_before);
    // And on the files' side: to-db's verbs.
    std::fs::remove_file(root.join("services/skills/translate/SKILL.md")).unwrap();
    edit(
        &root.join("services/content/hello-world.md"),
        "author: Ada Lovelace",
        "author: Grace Hopper",
    );
    std::fs::write(
        root.join("services/content/new.md"),
        "---\nslug: new\ntitle: New\n---\nnew\n",
    )
    .unwrap();
    let out = ok(
        &root,
        &["local", "to-db", "--dry-run", "--collection", "content"],
    );
    assert_eq!(
        out,
        "keep content/getting-started (services/content/getting-started.md) (changed in the database only)\n\
         update content/hello-world (services/content/hello-world.md) [author]\n\
         create content/new (services/content/new.md)\n"
    );
    let out = ok(
        &root,
        &["local", "to-db", "--dry-run", "--collection", "skills"],
    );
    assert!(
        out.contains("delete skills/translate (services/skills/translate/SKILL.md)\n"),
        "{out}"
    );
    assert_eq!(db_bytes(&root), db_before);
    // local diff: one line per changed key, --exit-code 1.
    let d = ok(&root, &["local", "diff", "--collection", "content"]);
    assert_eq!(d.lines().count(), 3, "{d}");
    fails(&root, &["local", "diff", "--exit-code"], 1);
}

#[test]
fn booleans_and_lists_keep_their_yaml_form() {
    let (_tmp, root) = example();
    let p = root.join("services/content/hello-world.md");
    let original = std::fs::read_to_string(&p).unwrap();
    assert!(original.contains("draft: false\ntags: [intro, news]\n"));
    ok(&root, &["local", "to-db", "-q"]);
    assert_eq!(
        rows(
            &root,
            "SELECT draft, tags FROM content WHERE slug = 'hello-world'"
        )[0],
        vec!["0", "[\"intro\",\"news\"]"]
    );
    // A database edit of another column: only that line changes.
    sql(
        &root,
        "UPDATE content SET title = 'Hello, database' WHERE slug = 'hello-world'",
    );
    ok(&root, &["local", "to-disk", "-q"]);
    assert_eq!(
        std::fs::read_to_string(&p).unwrap(),
        original.replace("title: Hello, world", "title: Hello, database")
    );
    // Edits of the boolean and the list come back as a boolean and a list.
    sql(
        &root,
        "UPDATE content SET draft = 1, tags = '[\"intro\",\"news\",\"more\"]' WHERE slug = 'hello-world'",
    );
    ok(&root, &["local", "to-disk", "-q"]);
    let t = std::fs::read_to_string(&p).unwrap();
    assert!(
        t.contains("draft: true\ntags: [intro, news, more]\n"),
        "{t}"
    );
    assert_eq!(ok(&root, &["local", "diff"]), "");
    // From the database alone (a BOOLEAN and a JSON column): the same forms.
    std::fs::remove_file(&p).unwrap();
    ok(&root, &["ref", "delete", "local/content", "-q"]);
    ok(&root, &["local", "to-disk", "-q"]);
    let t = std::fs::read_to_string(&p).unwrap();
    assert!(
        t.contains("draft: true\ntags: [intro, news, more]\n"),
        "{t}"
    );
}

#[test]
fn an_integer_column_keeps_a_boolean_written_as_one() {
    // Columns declared INTEGER and TEXT: the file's own form is kept.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::create_dir_all(root.join("posts")).unwrap();
    std::fs::write(
        root.join("sp-sync.toml"),
        "[[collection]]\nname = \"posts\"\ndir = \"posts\"\ndb = \"data/app.db\"\ntable = \"posts\"\nkey = \"slug\"\nbody = \"body\"\n",
    )
    .unwrap();
    sql(
        &root,
        "CREATE TABLE posts(slug TEXT PRIMARY KEY, title TEXT, draft INTEGER, tags TEXT, meta TEXT, body TEXT)",
    );
    ok(&root, &["init", "-q"]);
    let p = root.join("posts/a.md");
    let text = "---\n# a comment\nslug: a\ntitle: A\ndraft: false\ntags: [intro]\nmeta:\n  - x\n  - y\n---\nbody\n";
    std::fs::write(&p, text).unwrap();
    ok(&root, &["local", "to-db", "-q"]);
    assert_eq!(
        rows(&root, "SELECT draft, tags, meta FROM posts")[0],
        vec!["0", "[\"intro\"]", "[\"x\",\"y\"]"]
    );
    sql(
        &root,
        "UPDATE posts SET draft = 1, tags = '[\"intro\",\"b\"]', meta = '[\"x\"]'",
    );
    ok(&root, &["local", "to-disk", "-q"]);
    assert_eq!(
        std::fs::read_to_string(&p).unwrap(),
        "---\n# a comment\nslug: a\ntitle: A\ndraft: true\ntags: [intro, b]\nmeta:\n  - x\n---\nbody\n"
    );
    assert_eq!(ok(&root, &["local", "diff"]), "");
}

#[test]
fn a_null_body_stays_null_both_ways() {
    // A file cannot tell a NULL body from an empty one: the two are the
    // same row, so neither direction turns one into the other.
    let (_tmp, root) = posts_project("('a', 'A', NULL), ('b', 'B', '')");
    ok(&root, &["local", "to-disk", "-q"]);
    assert_eq!(
        std::fs::read_to_string(root.join("posts/a.md")).unwrap(),
        "---\nslug: a\ntitle: A\n---\n"
    );
    assert_eq!(ok(&root, &["local", "diff"]), "");
    let before = db_bytes(&root);
    ok(&root, &["local", "to-db", "-q"]);
    assert_eq!(db_bytes(&root), before, "nothing to write");
    // An edit of another field writes that field only.
    edit(&root.join("posts/a.md"), "title: A", "title: A2");
    edit(&root.join("posts/b.md"), "title: B", "title: B2");
    assert_eq!(
        ok(&root, &["local", "diff"]),
        "M posts/a (posts/a.md) [title] (files changed)\nM posts/b (posts/b.md) [title] (files changed)\n"
    );
    ok(&root, &["local", "to-db", "-q"]);
    assert_eq!(
        rows(
            &root,
            "SELECT slug, title, quote(body) FROM posts ORDER BY slug"
        ),
        vec![vec!["a", "A2", "NULL"], vec!["b", "B2", "''"]]
    );
    // A body typed into the file still goes to the row, and back to NULL
    // in the table shows as the database's change.
    std::fs::write(
        root.join("posts/a.md"),
        "---\nslug: a\ntitle: A2\n---\ntext\n",
    )
    .unwrap();
    ok(&root, &["local", "to-db", "-q"]);
    assert_eq!(
        rows(&root, "SELECT body FROM posts WHERE slug = 'a'"),
        vec![vec!["text\n"]]
    );
    sql(&root, "UPDATE posts SET body = NULL WHERE slug = 'a'");
    assert_eq!(
        ok(&root, &["local", "diff"]),
        "M posts/a (posts/a.md) [body] (database changed)\n"
    );
    ok(&root, &["local", "to-disk", "-q"]);
    assert_eq!(
        std::fs::read_to_string(root.join("posts/a.md")).unwrap(),
        "---\nslug: a\ntitle: A2\n---\n"
    );
    assert_eq!(ok(&root, &["local", "diff"]), "");
}

#[test]
fn without_a_store_only_creations_flow() {
    let (_tmp, root) = example_without_store();
    // First sync: every key is new to the table.
    ok(&root, &["local", "to-db", "-q"]);
    let p = root.join("services/content/hello-world.md");
    edit(&p, "title: Hello, world", "title: Edited");
    // No record of the last sync: an update could undo a database edit.
    let (code, out, err) = run(&root, &["local", "to-db"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("conflict content/hello-world (services/content/hello-world.md) [title] (no record of the last sync)"),
        "{out}"
    );
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains("sp-sync init"), "{err}");
    assert_eq!(
        rows(
            &root,
            "SELECT title FROM content WHERE slug = 'hello-world'"
        )[0][0],
        "Hello, world"
    );
    ok(&root, &["local", "to-db", "--force", "-q"]);
    assert_eq!(
        rows(
            &root,
            "SELECT title FROM content WHERE slug = 'hello-world'"
        )[0][0],
        "Edited"
    );
}

#[test]
fn a_round_trip_without_edits_rewrites_nothing() {
    let (_tmp, root) = example();
    ok(&root, &["local", "to-db", "-q"]);
    // Back-date every file so that a rewrite cannot hide in the same tick.
    for p in common::files_under(&root.join("services")) {
        common::set_mtime(&p, 1_600_000_000, 0);
    }
    let before = stamps(&root.join("services"));
    let db_before = db_bytes(&root);
    for cmd in [
        &["local", "to-disk"][..],
        &["local", "to-db"],
        &["local", "to-disk", "--force"],
        &["local", "to-db", "--force"],
    ] {
        let out = ok(&root, cmd);
        assert_eq!(out, "", "{cmd:?}");
    }
    assert_eq!(stamps(&root.join("services")), before);
    assert_eq!(db_bytes(&root), db_before);
}

mod three_way {
    //! Property: edits on the files' side, the database's side or both,
    //! then a sync in either direction. Every edit either flows (the side
    //! that did not change takes it) or is reported (`keep` when only the
    //! target changed, `conflict` when both did) and stays where it was
    //! made; no file is rewritten unless its values change.

    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const KEYS: [&str; 4] = ["k0", "k1", "k2", "k3"];

    #[derive(Debug, Clone)]
    enum Edit {
        /// Set the title of a key on one side (creating it if missing).
        Set { key: usize, file: bool },
        /// Remove the key from one side.
        Remove { key: usize, file: bool },
    }

    fn edit() -> impl Strategy<Value = Edit> {
        (0..KEYS.len(), any::<bool>(), 0..4u8).prop_map(|(key, file, k)| {
            if k == 0 {
                Edit::Remove { key, file }
            } else {
                Edit::Set { key, file }
            }
        })
    }

    /// (edits, then a sync: true = to-db)
    fn steps() -> impl Strategy<Value = Vec<(Vec<Edit>, bool)>> {
        prop::collection::vec((prop::collection::vec(edit(), 0..4), any::<bool>()), 1..7)
    }

    type Side = BTreeMap<String, String>;

    fn project() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        std::fs::create_dir_all(root.join("data")).unwrap();
        std::fs::create_dir_all(root.join("docs")).unwrap();
        std::fs::write(
            root.join("sp-sync.toml"),
            "[[collection]]\nname = \"docs\"\ndir = \"docs\"\ndb = \"data/app.db\"\ntable = \"docs\"\nkey = \"slug\"\nbody = \"body\"\n",
        )
        .unwrap();
        sql(
            &root,
            "CREATE TABLE docs(slug TEXT PRIMARY KEY, title TEXT NOT NULL, draft BOOLEAN, tags JSON, body TEXT NOT NULL)",
        );
        ok(&root, &["init", "-q"]);
        (tmp, root)
    }

    fn file_side(root: &Path) -> Side {
        let mut out = Side::new();
        for p in common::files_under(&root.join("docs")) {
            let t = std::fs::read_to_string(&p).unwrap();
            let front = t.split("---\n").nth(1).unwrap();
            let m: serde_norway::Mapping = serde_norway::from_str(front).unwrap();
            let slug = m.get("slug").unwrap().as_str().unwrap().to_string();
            let title = m.get("title").unwrap().as_str().unwrap().to_string();
            out.insert(slug, title);
        }
        out
    }

    fn db_side(root: &Path) -> Side {
        rows(root, "SELECT slug, title FROM docs")
            .into_iter()
            .map(|r| (r[0].clone(), r[1].clone()))
            .collect()
    }

    fn apply_edit(root: &Path, e: &Edit, n: usize) {
        match *e {
            Edit::Set { key, file: true } => std::fs::write(
                root.join("docs").join(format!("{}.md", KEYS[key])),
                format!(
                    "---\nslug: {}\ntitle: t{n}\ndraft: false\ntags: [a, b]\n---\nbody {n}\n",
                    KEYS[key]
                ),
            )
            .unwrap(),
            Edit::Set { key, file: false } => sql(
                root,
                &format!(
                    "INSERT INTO docs(slug, title, draft, tags, body) VALUES ('{k}', 't{n}', 0, '[\"a\",\"b\"]', 'body {n}\n')
                     ON CONFLICT(slug) DO UPDATE SET title = excluded.title, body = excluded.body",
                    k = KEYS[key]
                ),
            ),
            Edit::Remove { key, file: true } => {
                let _ = std::fs::remove_file(root.join("docs").join(format!("{}.md", KEYS[key])));
            }
            Edit::Remove { key, file: false } => {
                sql(root, &format!("DELETE FROM docs WHERE slug = '{}'", KEYS[key]))
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
        #[test]
        fn no_edit_is_lost_silently(steps in steps()) {
            let (_tmp, root) = project();
            // The agreed title of each key at the last sync (absent: none);
            // None before the first sync.
            let mut base: Option<Side> = None;
            let mut n = 0;
            for (edits, to_db) in steps {
                for e in &edits {
                    n += 1;
                    apply_edit(&root, e, n);
                }
                for p in common::files_under(&root.join("docs")) {
                    common::set_mtime(&p, 1_600_000_000, 0);
                }
                let (f0, b0) = (file_side(&root), db_side(&root));
                let stamps0: BTreeMap<PathBuf, (Vec<u8>, std::time::SystemTime)> =
                    stamps(&root.join("docs")).into_iter().map(|(p, b, m)| (p, (b, m))).collect();
                let cmd = if to_db { "to-db" } else { "to-disk" };
                // Every third sync forced: conflicts flow, nothing else
                // changes.
                let force = n % 3 == 0;
                let (code, out, err) = if force {
                    run(&root, &["local", cmd, "--json", "--force"])
                } else {
                    run(&root, &["local", cmd, "--json"])
                };
                // No file left where the last sync recorded rows (an
                // emptied folder, an unmounted volume's mount point): to-db
                // would delete every row, and does so only with --force.
                // And the other way: no row left where it recorded some
                // (a table emptied): to-disk would remove every file.
                let emptied = if to_db { f0.is_empty() } else { b0.is_empty() };
                if !force && emptied && base.as_ref().is_some_and(|b| !b.is_empty()) {
                    prop_assert_eq!(code, 1, "{}{}", out, err);
                    prop_assert!(out.is_empty() && err.contains("run it with --force"), "{}{}", out, err);
                    prop_assert_eq!(file_side(&root), f0);
                    prop_assert_eq!(db_side(&root), b0);
                    continue;
                }
                let plan: Json = json(&out);
                let actions: BTreeMap<String, String> = plan
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| (c["key"].as_str().unwrap().to_string(), c["action"].as_str().unwrap().to_string()))
                    .collect();
                let (f1, b1) = (file_side(&root), db_side(&root));
                let (src0, tgt0, tgt1, src1) = if to_db { (&f0, &b0, &b1, &f1) } else { (&b0, &f0, &f1, &b1) };
                let mut conflicts = 0;
                for k in KEYS {
                    let (s0, t0) = (src0.get(k), tgt0.get(k));
                    prop_assert_eq!(src1.get(k), s0, "the source side never changes ({})", k);
                    let flow = match (s0, t0) {
                        (Some(_), None) => "create",
                        (None, _) => "delete",
                        _ => "update",
                    };
                    let conflict = if force { flow } else { "conflict" };
                    let want = if s0 == t0 {
                        None
                    } else {
                        match &base {
                            None if t0.is_none() => Some("create"),
                            None => Some(conflict),
                            Some(b) => {
                                let m = b.get(k);
                                match (s0 != m, t0 != m) {
                                    (true, false) => Some(flow),
                                    (false, true) => Some("keep"),
                                    _ => Some(conflict),
                                }
                            }
                        }
                    };
                    prop_assert_eq!(actions.get(k).map(String::as_str), want, "key {} in {}\n{}{}", k, cmd, out, err);
                    match want {
                        Some("create" | "update" | "delete") => {
                            prop_assert_eq!(tgt1.get(k), s0, "{} flows", k)
                        }
                        _ => prop_assert_eq!(tgt1.get(k), t0, "{} is left alone", k),
                    }
                    if want == Some("conflict") {
                        conflicts += 1;
                    }
                    // A file whose key the sync did not write is untouched.
                    let written = !to_db && want.is_some_and(|w| w != "keep" && w != "conflict");
                    if !written {
                        let p = PathBuf::from(format!("{k}.md"));
                        let now = stamps(&root.join("docs"))
                            .into_iter()
                            .find(|(q, _, _)| *q == p)
                            .map(|(_, b, m)| (b, m));
                        prop_assert_eq!(now.as_ref(), stamps0.get(&p), "{} rewritten", k);
                    }
                }
                prop_assert_eq!(code, if conflicts > 0 { 1 } else { 0 }, "{}{}", out, err);
                // The record: what both sides now agree on; the rest as it was.
                let mut next = base.clone().unwrap_or_default();
                for k in KEYS {
                    if f1.get(k) == b1.get(k) {
                        match f1.get(k) {
                            Some(v) => next.insert(k.to_string(), v.clone()),
                            None => next.remove(k),
                        };
                    }
                }
                base = Some(next);
            }
            // Finally, a forced sync each way: everything agrees and stays.
            ok(&root, &["local", "to-db", "--force", "-q"]);
            ok(&root, &["local", "to-disk", "--force", "-q"]);
            prop_assert_eq!(file_side(&root), db_side(&root));
            prop_assert_eq!(ok(&root, &["local", "diff"]), "");
        }
    }
}

/// SIGINT at random moments of `local to-db` on a large collection: the
/// command either exits 130 with the database and the record as before (one
/// transaction, rolled back), or finishes (exit 0) with everything applied.
#[test]
fn sigint_during_to_db_rolls_back_and_exits_130() {
    let (tmp, template) = example();
    for i in 0..1500 {
        std::fs::write(
            template.join(format!("services/content/bulk-{i:04}.md")),
            format!("---\nslug: bulk-{i:04}\ntitle: Bulk {i}\ndraft: false\ntags: [a, b]\n---\nbody {i}\n"),
        )
        .unwrap();
    }
    let before = common::dump(&template.join("data/app.db"));
    // How long a whole run takes, on a copy.
    let timed = tmp.path().join("timed");
    copy_dir(&template, &timed);
    let t = std::time::Instant::now();
    ok(&timed, &["local", "to-db", "-q"]);
    let full = t.elapsed();
    let after = common::dump(&timed.join("data/app.db"));
    assert_ne!(before, after);
    let (mut interrupted, mut finished) = (0, 0);
    // The timed run can be slower than the rest (a cold cache, a busy
    // machine): while no signal has landed, each finished round halves the
    // delays.
    let mut scale = 1.0;
    for round in 0..12u64 {
        let root = tmp.path().join(format!("round-{round}"));
        copy_dir(&template, &root);
        let child = std::process::Command::new(common::bin())
            .args(["local", "to-db", "-q"])
            .current_dir(&root)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Spread the signals over the run (and a little past it).
        let at = full.mul_f64(scale * (round as f64 + 0.5) / 11.0);
        std::thread::sleep(at);
        let _ = std::process::Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let o = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        let dump = common::dump(&root.join("data/app.db"));
        let recorded = root.join(".sp-sync/refs/local/content").exists();
        match o.status.code() {
            Some(130) => {
                interrupted += 1;
                assert!(dump == before, "round {round}: not rolled back");
                assert!(!recorded, "round {round}: no record moves");
                assert_eq!(
                    stderr.trim_end(),
                    "error: interrupted (SIGINT)",
                    "round {round}"
                );
            }
            Some(0) => {
                finished += 1;
                assert!(dump == after, "round {round}: not all applied");
                assert!(recorded, "round {round}");
                if interrupted == 0 {
                    scale *= 0.5;
                }
            }
            // Killed before the handler was installed (at start-up): nothing
            // had begun.
            None if std::os::unix::process::ExitStatusExt::signal(&o.status) == Some(2) => {
                assert!(dump == before, "round {round}: changed");
                assert!(!recorded, "round {round}");
            }
            c => panic!("round {round}: exit {c:?}: {stderr}"),
        }
        // Either way, the next run finishes the job.
        ok(&root, &["local", "to-db", "-q"]);
        assert!(common::dump(&root.join("data/app.db")) == after);
        ok(&root, &["fsck"]);
    }
    assert!(
        interrupted > 0,
        "no signal landed in time ({finished} finished)"
    );
}

/// A collection `content` of `content/*.md` over table `content(slug,
/// title, body)` with rows a and b synced; a store.
/// A store and a collection `posts` (files `posts/{slug}.md`, body in
/// `body`) over a table of the rows `values` (an SQL VALUES list).
fn posts_project(values: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::create_dir_all(root.join("posts")).unwrap();
    std::fs::write(
        root.join("sp-sync.toml"),
        "[[collection]]\nname = \"posts\"\ndir = \"posts\"\ndb = \"data/app.db\"\ntable = \"posts\"\nkey = \"slug\"\nbody = \"body\"\npath = \"{slug}.md\"\n",
    )
    .unwrap();
    sql(
        &root,
        &format!(
            "CREATE TABLE posts(slug TEXT PRIMARY KEY, title TEXT, body TEXT); INSERT INTO posts VALUES {values};"
        ),
    );
    ok(&root, &["init", "-q"]);
    (tmp, root)
}

fn mini() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("p");
    std::fs::create_dir_all(root.join("content")).unwrap();
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::write(
        root.join("sp-sync.toml"),
        "[[collection]]\nname = \"content\"\ndir = \"content\"\ndb = \"data/app.db\"\ntable = \"content\"\nkey = \"slug\"\nbody = \"body\"\n",
    )
    .unwrap();
    sql(
        &root,
        "CREATE TABLE content(slug TEXT PRIMARY KEY, title TEXT, body TEXT);",
    );
    for k in ["a", "b"] {
        std::fs::write(
            root.join(format!("content/{k}.md")),
            format!("---\nslug: {k}\ntitle: {k}\n---\nbody {k}\n"),
        )
        .unwrap();
    }
    ok(&root, &["init", "-q"]);
    ok(&root, &["local", "to-db", "-q"]);
    (tmp, root)
}

/// What an audit found `to-disk` destroying: a new row's file written
/// over the file of another key (with its unsynced edit), a sidecar body
/// over a file no row reads, and a file's mode. None of it happens now.
#[test]
fn to_disk_never_writes_over_a_file_that_is_not_its_rows() {
    let (_t, root) = mini();
    let hello = root.join("content/hello.md");
    std::fs::write(&hello, "---\nslug: hello-world\ntitle: H\n---\nprecious\n").unwrap();
    ok(&root, &["local", "to-db", "-q"]);
    edit(&hello, "precious", "precious, edited");
    sql(
        &root,
        "INSERT INTO content VALUES('hello', 'Hi', 'new row')",
    );
    let before = stamps(&root.join("content"));
    let err = fails(&root, &["local", "to-disk"], 1);
    assert!(
        err.contains("content/hello.md") && err.contains("another key"),
        "{err}"
    );
    assert_eq!(stamps(&root.join("content")), before);
    // Nor when the application renames the key the file holds.
    sql(
        &root,
        "DELETE FROM content WHERE slug = 'hello'; UPDATE content SET slug = 'hello' WHERE slug = 'hello-world'",
    );
    fails(&root, &["local", "to-disk"], 1);
    assert_eq!(stamps(&root.join("content")), before);

    // A file it replaces keeps its mode.
    use std::os::unix::fs::PermissionsExt;
    let a = root.join("content/a.md");
    std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o600)).unwrap();
    sql(
        &root,
        "DELETE FROM content WHERE slug = 'hello'; UPDATE content SET title = 'A2' WHERE slug = 'a'",
    );
    std::fs::remove_file(&hello).unwrap();
    ok(&root, &["local", "to-disk", "-q"]);
    assert!(std::fs::read_to_string(&a).unwrap().contains("A2"));
    assert_eq!(
        std::fs::metadata(&a).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Sidecars: the body file a row now names, and a new row's folder,
    // hold the user's files.
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path();
    std::fs::create_dir_all(r.join("skills/s1")).unwrap();
    std::fs::create_dir_all(r.join("skills/s2")).unwrap();
    std::fs::create_dir_all(r.join("data")).unwrap();
    std::fs::write(
        r.join("sp-sync.toml"),
        "[[collection]]\nname = \"skills\"\ndir = \"skills\"\nformat = \"sidecar\"\ndb = \"data/app.db\"\ntable = \"skills\"\nkey = \"id\"\nbody = \"instructions\"\nbody_field = \"file\"\nbody_file = \"SKILL.md\"\n",
    )
    .unwrap();
    sql(
        r,
        "CREATE TABLE skills(id TEXT PRIMARY KEY, name TEXT, file TEXT, instructions TEXT)",
    );
    std::fs::write(
        r.join("skills/s1/config.yaml"),
        "id: s1\nname: One\nfile: SKILL.md\n",
    )
    .unwrap();
    std::fs::write(r.join("skills/s1/SKILL.md"), "skill one\n").unwrap();
    std::fs::write(r.join("skills/s1/NOTES.md"), "my notes\n").unwrap();
    std::fs::write(r.join("skills/s2/SKILL.md"), "a draft\n").unwrap();
    ok(r, &["init", "-q"]);
    ok(r, &["local", "to-db", "-q"]);
    sql(r, "UPDATE skills SET file = 'NOTES.md' WHERE id = 's1'");
    let before = stamps(&r.join("skills"));
    let err = fails(r, &["local", "to-disk"], 1);
    assert!(err.contains("NOTES.md"), "{err}");
    sql(
        r,
        "UPDATE skills SET file = 'SKILL.md' WHERE id = 's1'; INSERT INTO skills VALUES('s2', 'Two', 'SKILL.md', 'from the app')",
    );
    let err = fails(r, &["local", "to-disk"], 1);
    assert!(err.contains("s2/SKILL.md"), "{err}");
    assert_eq!(stamps(&r.join("skills")), before);
}

/// A record says which table, database, folder and working tree it is of:
/// another one's record (the settings changed, or a second checkout shares
/// the store) never turns into deletions.
#[test]
fn a_record_of_another_table_or_working_tree_deletes_nothing() {
    let (_t, root) = mini();
    sql(
        &root,
        "CREATE TABLE content_v2(slug TEXT PRIMARY KEY, title TEXT, body TEXT);",
    );
    let toml = std::fs::read_to_string(root.join("sp-sync.toml")).unwrap();
    std::fs::write(
        root.join("sp-sync.toml"),
        toml.replace("table = \"content\"", "table = \"content_v2\""),
    )
    .unwrap();
    let before = stamps(&root.join("content"));
    ok(&root, &["local", "to-disk", "-q"]);
    assert_eq!(stamps(&root.join("content")), before);
    ok(&root, &["local", "to-db", "-q"]);
    assert_eq!(rows(&root, "SELECT count(*) FROM content_v2"), [["2"]]);

    // A second working tree of the same content, sharing the store, with
    // a fresh database.
    let (_t2, other) = mini();
    std::fs::remove_file(other.join("data/app.db")).unwrap();
    sql(
        &other,
        "CREATE TABLE content(slug TEXT PRIMARY KEY, title TEXT, body TEXT);",
    );
    let store = root.join(".sp-sync");
    let before = stamps(&other.join("content"));
    let store_arg = store.to_str().unwrap();
    ok(&root, &["--store", store_arg, "local", "to-db", "-q"]);
    let o = common::run_in(&other, &["--store", store_arg, "local", "to-disk", "-q"]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(stamps(&other.join("content")), before);
}

/// `to-db` writes a row only while it is as the plan read it: an edit the
/// application commits meanwhile is a conflict, not overwritten.
#[test]
fn to_db_never_overwrites_a_row_the_application_changed_meanwhile() {
    let (_t, root) = mini();
    edit(&root.join("content/a.md"), "title: a", "title: file edit");
    let db = root.join("data/app.db");
    let app = Connection::open(&db).unwrap();
    app.execute_batch("BEGIN IMMEDIATE; UPDATE content SET title = 'app edit' WHERE slug = 'a';")
        .unwrap();
    let child = std::process::Command::new(common::bin())
        .current_dir(&root)
        .args(["local", "to-db"])
        .env("SP_SYNC_CACHE_DIR", common::cache_dir())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // (It plans from the last committed state, then waits for the lock.)
    std::thread::sleep(std::time::Duration::from_millis(700));
    app.execute_batch("COMMIT").unwrap();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("changed in the database since"), "{err}");
    assert_eq!(
        rows(&root, "SELECT title FROM content WHERE slug = 'a'"),
        [["app edit"]]
    );
}

/// Rows and files that cannot be synced without losing something are
/// refused: a key two rows hold, a NULL key, a body that is not UTF-8, a
/// row's file that is a symlink.
#[test]
fn what_cannot_be_synced_exactly_is_refused() {
    let (_t, root) = mini();
    let files_before = stamps(&root.join("content"));
    sql(
        &root,
        "UPDATE content SET body = CAST(X'6361666580FF0A' AS TEXT) WHERE slug = 'a'",
    );
    let err = fails(&root, &["local", "to-disk"], 1);
    assert!(err.contains("not UTF-8"), "{err}");
    assert_eq!(stamps(&root.join("content")), files_before);
    sql(
        &root,
        "UPDATE content SET body = 'body a\n' WHERE slug = 'a'",
    );

    // A symlink where a row's file is.
    let rows_before = rows(&root, "SELECT slug, title, body FROM content ORDER BY slug");
    let a = root.join("content/a.md");
    std::fs::rename(&a, root.join("a.md")).unwrap();
    std::os::unix::fs::symlink("../a.md", &a).unwrap();
    let err = fails(&root, &["local", "to-db"], 1);
    assert!(err.contains("not a regular file"), "{err}");
    std::fs::remove_file(&a).unwrap();
    std::fs::rename(root.join("a.md"), &a).unwrap();
    assert_eq!(
        rows(&root, "SELECT slug, title, body FROM content ORDER BY slug"),
        rows_before
    );

    // Keys that do not name one row.
    let c = tempfile::tempdir().unwrap();
    let r = c.path();
    std::fs::create_dir_all(r.join("content")).unwrap();
    std::fs::create_dir_all(r.join("data")).unwrap();
    std::fs::write(
        r.join("sp-sync.toml"),
        "[[collection]]\nname = \"content\"\ndir = \"content\"\ndb = \"data/app.db\"\ntable = \"content\"\nkey = \"slug\"\nbody = \"body\"\n",
    )
    .unwrap();
    sql(
        r,
        "CREATE TABLE content(id INTEGER PRIMARY KEY, slug TEXT, body TEXT);
            INSERT INTO content VALUES (1, 'a', 'en'), (2, 'a', 'fr');",
    );
    ok(r, &["init", "-q"]);
    let err = fails(r, &["local", "to-disk"], 1);
    assert!(err.contains("more than one row"), "{err}");
    sql(r, "UPDATE content SET slug = NULL");
    let err = fails(r, &["local", "to-disk"], 1);
    assert!(err.contains("NULL"), "{err}");
    assert!(common::files_under(&r.join("content")).is_empty());
}

/// A column added to the table (a migration) is the database's change:
/// no key turns into a conflict (which `--force` would have answered by
/// writing NULL over the new values); `to-disk` carries it to the files.
#[test]
fn a_column_added_to_the_table_is_the_databases_change() {
    let (_t, root) = mini();
    // (A sync that records the table's columns.)
    edit(&root.join("content/a.md"), "title: a", "title: a1");
    ok(&root, &["local", "to-db", "-q"]);
    sql(
        &root,
        "ALTER TABLE content ADD COLUMN views INTEGER; UPDATE content SET views = 42;",
    );
    let v = json(&ok(&root, &["local", "diff", "--json"]));
    let changes = v.as_array().unwrap_or_else(|| panic!("{v}"));
    assert_eq!(changes.len(), 2, "{v}");
    assert!(changes.iter().all(|c| c["changed"] == "database"), "{v}");
    let o = common::run_in(&root, &["local", "to-db"]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        rows(&root, "SELECT views FROM content ORDER BY slug"),
        [["42"], ["42"]]
    );
    ok(&root, &["local", "to-disk", "-q"]);
    assert!(
        std::fs::read_to_string(root.join("content/b.md"))
            .unwrap()
            .contains("views: 42")
    );
    let v = json(&ok(&root, &["local", "diff", "--json"]));
    assert_eq!(v.as_array().map(Vec::len), Some(0), "{v}");
}

/// Two sidecars that name one body file: that file is neither row's to
/// write or remove (it would change or take the other row's body).
#[test]
fn a_body_file_two_sidecars_name_is_neither_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path();
    std::fs::create_dir_all(r.join("s/grp")).unwrap();
    std::fs::create_dir_all(r.join("data")).unwrap();
    std::fs::write(
        r.join("sp-sync.toml"),
        "[[collection]]\nname = \"skills\"\ndir = \"s\"\nformat = \"sidecar\"\nglob = \"*/*.yaml\"\ndb = \"data/app.db\"\ntable = \"skills\"\nkey = \"id\"\nbody = \"instructions\"\nbody_field = \"file\"\nbody_file = \"SKILL.md\"\n",
    )
    .unwrap();
    sql(
        r,
        "CREATE TABLE skills(id TEXT PRIMARY KEY, file TEXT, instructions TEXT)",
    );
    std::fs::write(r.join("s/grp/a.yaml"), "id: a\nfile: SKILL.md\n").unwrap();
    std::fs::write(r.join("s/grp/b.yaml"), "id: b\nfile: SKILL.md\n").unwrap();
    std::fs::write(r.join("s/grp/SKILL.md"), "shared text\n").unwrap();
    ok(r, &["init", "-q"]);
    ok(r, &["local", "to-db", "-q"]);
    let before = stamps(&r.join("s"));
    sql(
        r,
        "UPDATE skills SET instructions = 'B ONLY' WHERE id = 'b'",
    );
    let err = fails(r, &["local", "to-disk"], 1);
    assert!(err.contains("more than one row"), "{err}");
    assert_eq!(stamps(&r.join("s")), before);
    sql(
        r,
        "UPDATE skills SET instructions = 'shared text\n' WHERE id = 'b'; DELETE FROM skills WHERE id = 'a'",
    );
    let err = fails(r, &["local", "to-disk"], 1);
    assert!(err.contains("more than one row"), "{err}");
    assert_eq!(stamps(&r.join("s")), before);
}

/// What a killed `to-disk` left beside a row's file (a temporary file
/// named with its process id) goes at the next to-disk that writes there,
/// once it has not changed for an hour (`SP_SYNC_STALE_AFTER` shortens
/// that here); one changed within the hour stays (its process id may be
/// of another PID namespace).
#[test]
fn a_killed_to_disks_temporary_file_goes_at_the_next_one() {
    let (_t, root) = mini();
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    let stale = root.join(format!("content/.a.md.sp-sync-{dead}.tmp"));
    std::fs::write(&stale, "").unwrap();
    sql(&root, "UPDATE content SET title = 'A1' WHERE slug = 'a'");
    ok(&root, &["local", "to-disk", "-q"]);
    assert!(stale.exists(), "a file changed within the hour went");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    sql(&root, "UPDATE content SET title = 'A2' WHERE slug = 'a'");
    let o = std::process::Command::new(common::bin())
        .args(["local", "to-disk", "-q"])
        .current_dir(&root)
        .env("SP_SYNC_CACHE_DIR", common::cache_dir())
        .env("SP_SYNC_STALE_AFTER", "1")
        .env_remove("SP_SYNC_STORE")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!stale.exists());
    assert!(
        std::fs::read_to_string(root.join("content/a.md"))
            .unwrap()
            .contains("A2")
    );
}

/// A collection's `dir` and `db` stay inside the project: sync writes both,
/// and an sp-sync.toml a restore brought could point them anywhere. One
/// outside (`..`, absolute) is refused before anything is read or written.
#[test]
fn a_collection_outside_the_project_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let w = t.join("w");
    std::fs::create_dir_all(w.join("services/content")).unwrap();
    std::fs::create_dir_all(t.join("outside")).unwrap();
    std::fs::write(t.join("outside/keep.md"), "---\nslug: keep\n---\nmine\n").unwrap();
    let victim = t.join("victim.db");
    Connection::open(&victim)
        .unwrap()
        .execute_batch(
            "CREATE TABLE content(slug TEXT PRIMARY KEY, body TEXT);
             INSERT INTO content VALUES ('precious', 'keep');",
        )
        .unwrap();
    ok(&w, &["init", "-q"]);
    // Each command is refused, and nothing outside the project changes.
    let refused = |dir: &str, db: &str, cmds: &[&[&str]], want: &str| {
        std::fs::write(
            w.join("sp-sync.toml"),
            format!(
                "[[collection]]\nname = \"content\"\ndir = \"{dir}\"\ndb = \"{db}\"\ntable = \"content\"\nkey = \"slug\"\nbody = \"body\"\n"
            ),
        )
        .unwrap();
        for args in cmds {
            let err = fails(&w, args, 1);
            assert!(err.contains(want), "{dir} {db} {args:?}: {err}");
        }
        let rows: i64 = Connection::open(&victim)
            .unwrap()
            .query_row("SELECT count(*) FROM content", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1, "{dir} {db}: the database outside changed");
        assert_eq!(
            std::fs::read_dir(t.join("outside")).unwrap().count(),
            1,
            "{dir} {db}: wrote outside"
        );
    };
    for (dir, db) in [
        ("../outside", "data/app.db"),
        ("services/content", victim.to_str().unwrap()),
        ("services/content", "data/../../victim.db"),
    ] {
        refused(
            dir,
            db,
            &[&["local", "to-db"], &["local", "to-disk", "--force"]],
            "inside the project",
        );
    }
    // Relative paths that lead outside through a symbolic link.
    std::fs::remove_dir_all(w.join("services/content")).unwrap();
    std::os::unix::fs::symlink(t.join("outside"), w.join("services/content")).unwrap();
    std::os::unix::fs::symlink(t, w.join("dbl")).unwrap();
    std::fs::create_dir_all(w.join("data")).unwrap();
    std::fs::copy(&victim, w.join("data/app.db")).unwrap();
    std::fs::create_dir_all(w.join("inside")).unwrap();
    for (dir, db) in [
        ("services/content", "data/app.db"),
        ("inside", "dbl/victim.db"),
    ] {
        refused(
            dir,
            db,
            &[
                &["local", "to-db", "--force"],
                &["local", "to-disk", "--force"],
            ],
            "outside the project",
        );
    }
}

/// A collection's folder or database in the store is refused (to-disk
/// would write files among its refs and packs).
#[test]
fn a_collection_in_the_store_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path();
    std::fs::create_dir_all(w.join("data")).unwrap();
    Connection::open(w.join("data/app.db"))
        .unwrap()
        .execute_batch("CREATE TABLE t(path TEXT PRIMARY KEY, body TEXT); INSERT INTO t VALUES ('refs/zz', 'x');")
        .unwrap();
    ok(w, &["init", "-q"]);
    for (dir, db) in [(".sp-sync", "data/app.db"), ("data", ".sp-sync/evil.db")] {
        std::fs::write(
            w.join("sp-sync.toml"),
            format!(
                "[[collection]]\nname = \"c\"\ndir = \"{dir}\"\nglob = \"refs/zz*\"\ndb = \"{db}\"\ntable = \"t\"\nkey = \"path\"\nbody = \"body\"\n"
            ),
        )
        .unwrap();
        for args in [&["local", "to-disk"][..], &["local", "to-db"]] {
            let err = fails(w, args, 1);
            assert!(
                err.contains("lies in the store"),
                "{dir} {db} {args:?}: {err}"
            );
        }
    }
    assert!(!w.join(".sp-sync/refs/zz").exists());
    ok(w, &["ref", "list"]);
}

/// Keys and paths from rows and files are printed quoted when they hold
/// control characters: one line per change, no escape sequence reaches the
/// terminal.
#[test]
fn local_diff_quotes_keys_with_control_characters() {
    let (_tmp, w) = example();
    let c = Connection::open(w.join("data/app.db")).unwrap();
    c.execute(
        "INSERT INTO content(slug, title, body) VALUES ('x' || char(27) || ']0;PWN' || char(7) || 'y', 't', 'b'), ('nl' || char(10) || 'z', 't', 'b')",
        [],
    )
    .unwrap();
    drop(c);
    let out = ok(&w, &["local", "diff", "--collection", "content"]);
    assert!(!out.contains('\u{1b}') && !out.contains('\u{7}'), "{out:?}");
    let lines: Vec<&str> = out.lines().filter(|l| l.contains("content/")).collect();
    assert!(
        lines.iter().any(|l| l.contains("\"x\\033]0;PWN\\007y\"")),
        "{out}"
    );
    assert!(lines.iter().any(|l| l.contains("\"nl\\nz\"")), "{out}");
}

/// `to-disk --dry-run` runs the checks the real run makes before writing:
/// a row whose file would go where another key's file is was planned as a
/// create, exit 0, and the run then refused (audit round 16).
#[test]
fn a_dry_run_refuses_what_the_run_would() {
    let (_tmp, root) = posts_project("('foo', 'Foo', 'x'), ('bar', 'Bar', 'y')");
    // The file foo.md holds key bar.
    std::fs::write(
        root.join("posts/foo.md"),
        "---\nslug: bar\ntitle: Bar\n---\ny\n",
    )
    .unwrap();
    let before = std::fs::read(root.join("posts/foo.md")).unwrap();
    for args in [
        &["local", "to-disk", "--dry-run"][..],
        &["local", "to-disk"][..],
    ] {
        let err = fails(&root, args, 1);
        assert!(err.contains("the file of another key"), "{args:?}: {err}");
    }
    assert_eq!(std::fs::read(root.join("posts/foo.md")).unwrap(), before);
}

/// A collection's folder that was gone (renamed, on an unmounted volume)
/// read as every file deleted, and `to-db` deleted every row it had synced,
/// exit 0 (audit 23). It is now refused, dry run too; an emptied folder
/// deletes them only with --force.
#[test]
fn to_db_with_the_collections_folder_gone_deletes_no_row() {
    let (_t, root) = mini();
    let before = rows(&root, "SELECT slug, title FROM content ORDER BY slug");
    assert_eq!(before.len(), 2);
    std::fs::rename(root.join("content"), root.join("content.away")).unwrap();
    for args in [
        &["local", "to-db"][..],
        &["local", "to-db", "--dry-run"][..],
    ] {
        let err = fails(&root, args, 1);
        assert!(
            err.contains("no such folder") && err.contains("content"),
            "{err}"
        );
        assert_eq!(
            rows(&root, "SELECT slug, title FROM content ORDER BY slug"),
            before
        );
    }
    // A plain file there is no folder either.
    std::fs::write(root.join("content"), "").unwrap();
    fails(&root, &["local", "to-db"], 1);
    std::fs::remove_file(root.join("content")).unwrap();
    // The folder back: nothing to do.
    std::fs::rename(root.join("content.away"), root.join("content")).unwrap();
    ok(&root, &["local", "to-db", "-q"]);
    assert_eq!(
        rows(&root, "SELECT slug, title FROM content ORDER BY slug"),
        before
    );
    // An empty folder (a volume not mounted leaves its empty mount point;
    // audit 25) deletes every row only with --force.
    std::fs::remove_dir_all(root.join("content")).unwrap();
    std::fs::create_dir(root.join("content")).unwrap();
    let err = fails(&root, &["local", "to-db"], 1);
    assert!(err.contains("--force"), "{err}");
    assert_eq!(
        rows(&root, "SELECT slug, title FROM content ORDER BY slug"),
        before
    );
    ok(&root, &["local", "to-db", "--force", "-q"]);
    assert!(rows(&root, "SELECT slug FROM content").is_empty());
}

/// A field changed by `to-disk` lost the comment on its line (`title: Old
/// # the title`): the user's words, gone. It stays on the line now, and the
/// file reads back as the row.
#[test]
fn to_disk_keeps_a_comment_on_a_changed_fields_line() {
    let (_t, root) = mini();
    std::fs::write(
        root.join("content/a.md"),
        "---\nslug: a\ntitle: \"a # not a comment\"   # the title\n---\nbody a\n",
    )
    .unwrap();
    ok(&root, &["local", "to-db", "-q"]);
    sql(
        &root,
        "UPDATE content SET title = 'new title' WHERE slug = 'a'",
    );
    ok(&root, &["local", "to-disk", "-q"]);
    assert_eq!(
        std::fs::read_to_string(root.join("content/a.md")).unwrap(),
        "---\nslug: a\ntitle: \"new title\"   # the title\n---\nbody a\n"
    );
    let v = json(&ok(&root, &["local", "diff", "--json"]));
    assert!(v.as_array().unwrap().is_empty(), "{v}");
}

/// A working tree whose collection `content` is the markdown files
/// `content/posts/*.md` (with `path`, if given), rows of table `content`
/// in `data/app.db` (slug, title, body).
fn posts_collection(path: Option<&str>) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("p");
    std::fs::create_dir_all(root.join("content/posts")).unwrap();
    std::fs::create_dir_all(root.join("data")).unwrap();
    let path = path.map_or(String::new(), |p| format!("path = \"{p}\"\n"));
    std::fs::write(
        root.join("sp-sync.toml"),
        format!(
            "[[collection]]\nname = \"content\"\ndir = \"content\"\nglob = \"posts/*.md\"\n{path}db = \"data/app.db\"\ntable = \"content\"\nkey = \"slug\"\nbody = \"body\"\n"
        ),
    )
    .unwrap();
    sql(
        &root,
        "CREATE TABLE content(slug TEXT PRIMARY KEY, title TEXT, body TEXT);",
    );
    (tmp, root)
}

/// The same, one folder down: with `glob = "posts/*.md"`, `posts/` gone
/// (the collection's folder still there) deleted every row (audit 24).
#[test]
fn to_db_with_the_globs_folder_gone_deletes_no_row() {
    let (_tmp, root) = posts_collection(Some("posts/{slug}.md"));
    std::fs::write(
        root.join("content/posts/a.md"),
        "---\nslug: a\ntitle: a\n---\nbody a\n",
    )
    .unwrap();
    std::fs::write(root.join("content/readme.txt"), "not a row\n").unwrap();
    ok(&root, &["init", "-q"]);
    ok(&root, &["local", "to-db", "-q"]);
    std::fs::rename(root.join("content/posts"), root.join("posts.away")).unwrap();
    let err = fails(&root, &["local", "to-db"], 1);
    assert!(
        err.contains("no such folder") && err.contains("posts"),
        "{err}"
    );
    assert_eq!(rows(&root, "SELECT slug FROM content"), [["a"]]);
    // Emptied, not gone: the delete is meant, with --force.
    std::fs::create_dir(root.join("content/posts")).unwrap();
    fails(&root, &["local", "to-db"], 1);
    assert_eq!(rows(&root, "SELECT slug FROM content"), [["a"]]);
    ok(&root, &["local", "to-db", "--force", "-q"]);
    assert!(rows(&root, "SELECT slug FROM content").is_empty());
}

/// With a glob one folder down and no `path =`, a file deleted is a row
/// deleted: `to-db` carries it (it failed, exit 1, "a row would be written
/// to b.md, which the glob does not match": the check for where `to-disk`
/// writes a row ran for a deletion too; audit 25). `diff` names the row's
/// file by the glob it was under. `to-disk` still refuses to write a row
/// where the glob does not reach, and writes nothing.
#[test]
fn to_db_carries_a_deletion_under_a_glob_without_a_path() {
    let (_tmp, root) = posts_collection(None);
    for k in ["a", "b", "c"] {
        std::fs::write(
            root.join(format!("content/posts/{k}.md")),
            format!("---\nslug: {k}\ntitle: {k}\n---\nbody {k}\n"),
        )
        .unwrap();
    }
    ok(&root, &["init", "-q"]);
    ok(&root, &["local", "to-db", "-q"]);
    std::fs::remove_file(root.join("content/posts/b.md")).unwrap();
    let v = json(&ok(&root, &["local", "diff", "--json"]));
    let changes = v.as_array().unwrap();
    assert_eq!(changes.len(), 1, "{v}");
    assert_eq!(
        (
            &changes[0]["key"],
            &changes[0]["change"],
            &changes[0]["path"]
        ),
        (
            &json("\"b\""),
            &json("\"removed\""),
            &json("\"content/posts/*.md\"")
        ),
        "{v}"
    );
    ok(&root, &["local", "to-db", "-q"]);
    assert_eq!(
        rows(&root, "SELECT slug FROM content ORDER BY slug"),
        [["a"], ["c"]]
    );
    let v = json(&ok(&root, &["local", "diff", "--json"]));
    assert!(v.as_array().unwrap().is_empty(), "{v}");
    // A row the files lack: to-disk has no place under the glob for it.
    sql(&root, "INSERT INTO content VALUES ('d', 'd', 'body d')");
    let err = fails(&root, &["local", "to-disk"], 1);
    assert!(err.contains("glob"), "{err}");
    let mut left: Vec<String> = std::fs::read_dir(root.join("content/posts"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["a.md", "c.md"]);
    assert!(!root.join("content/d.md").exists());
}

/// A project at `p/` with `sp-sync.toml` as given, the database made by
/// `schema`, an empty `content/` and a store.
fn project(toml: &str, schema: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("p");
    std::fs::create_dir_all(root.join("content")).unwrap();
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::write(root.join("sp-sync.toml"), toml).unwrap();
    sql(&root, schema);
    ok(&root, &["init", "-q"]);
    (tmp, root)
}

const CONTENT: &str = "[[collection]]\nname = \"content\"\ndir = \"content\"\ndb = \"data/app.db\"\ntable = \"content\"\nkey = \"slug\"\nbody = \"body\"\n";

fn md(root: &Path, rel: &str, slug: &str, more: &str) {
    let p = root.join("content").join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, format!("---\nslug: {slug}\n{more}---\nbody {slug}\n")).unwrap();
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = common::files_under(dir)
        .iter()
        .map(|p| p.strip_prefix(dir).unwrap().display().to_string())
        .collect();
    v.sort();
    v
}

/// A column added since the last sync, whose field a file then names: the
/// user filled it in, and the table's value (the column's default, or the
/// application's) may be a change too. A conflict: `to-disk` replaced the
/// field with the default, exit 0 (audit 26). A file that lacks the field
/// still takes the migration's value.
#[test]
fn a_field_filled_in_for_a_new_column_is_not_replaced_by_its_default() {
    let (_t, root) = mini();
    edit(&root.join("content/a.md"), "title: a", "title: a1");
    ok(&root, &["local", "to-db", "-q"]);
    sql(
        &root,
        "ALTER TABLE content ADD COLUMN featured BOOLEAN NOT NULL DEFAULT 0",
    );
    edit(
        &root.join("content/a.md"),
        "title: a1",
        "title: a1\nfeatured: true",
    );
    let v = json(&ok(&root, &["local", "diff", "--json"]));
    let sides: Vec<(String, String)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["key"].to_string(), c["changed"].to_string()))
        .collect();
    assert_eq!(
        sides,
        [
            ("\"a\"".into(), "\"both\"".into()),
            ("\"b\"".into(), "\"database\"".into())
        ],
        "{v}"
    );
    let (code, _, err) = run(&root, &["local", "to-disk"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("1 conflicting key left alone"), "{err}");
    assert!(
        std::fs::read_to_string(root.join("content/a.md"))
            .unwrap()
            .contains("featured: true")
    );
    assert!(
        std::fs::read_to_string(root.join("content/b.md"))
            .unwrap()
            .contains("featured: false")
    );
    ok(&root, &["local", "to-db", "--force", "-q"]);
    assert_eq!(
        rows(&root, "SELECT slug, featured FROM content ORDER BY slug"),
        [["a", "1"], ["b", "0"]]
    );
}

/// A table emptied, or its database made again from its schema, where the
/// last sync had rows: `to-disk` removed every file, exit 0 (audit 26).
/// Refused, as `to-db` refuses an emptied folder; `--force` says it is meant.
#[test]
fn to_disk_with_the_table_emptied_removes_no_file() {
    let (_t, root) = mini();
    sql(&root, "DELETE FROM content");
    for args in [
        &["local", "to-disk"][..],
        &["local", "to-disk", "--dry-run"],
    ] {
        let err = fails(&root, args, 1);
        assert!(
            err.contains("has no row") && err.contains("--force"),
            "{err}"
        );
        assert_eq!(names(&root.join("content")), ["a.md", "b.md"]);
    }
    ok(&root, &["local", "to-disk", "--force", "-q"]);
    assert!(names(&root.join("content")).is_empty());
}

/// A key column whose collation calls 'a' and 'A' equal (not unique): a
/// statement by one key reached both rows (an edit of a.md updated A, its
/// deletion deleted both, and to-disk then removed A.md; audit 26). The
/// plan refuses such keys, on either side; a row the application adds
/// meanwhile fails the statement that reaches two rows, and the whole
/// transaction goes back.
#[test]
fn keys_a_collation_calls_equal_are_refused() {
    let schema = "CREATE TABLE content(slug TEXT COLLATE NOCASE, title TEXT, body TEXT)";
    let (_t, root) = project(CONTENT, schema);
    sql(
        &root,
        "INSERT INTO content VALUES ('a', 'lower', 'x'), ('A', 'upper', 'y')",
    );
    let err = fails(&root, &["local", "to-disk"], 1);
    assert!(
        err.contains("'A'") && err.contains("'a'") && err.contains("collation"),
        "{err}"
    );
    assert!(names(&root.join("content")).is_empty());
    // A file whose key equals a row's under the collation.
    sql(&root, "DELETE FROM content WHERE slug = 'A' COLLATE BINARY");
    ok(&root, &["local", "to-disk", "-q"]);
    md(&root, "A2.md", "A", "title: upper\n");
    let err = fails(&root, &["local", "to-db"], 1);
    assert!(
        err.contains("content/A2.md") && err.contains("collation"),
        "{err}"
    );
    assert_eq!(rows(&root, "SELECT slug FROM content"), [["a"]]);
    std::fs::remove_file(root.join("content/A2.md")).unwrap();
    // Added meanwhile (by a trigger of the same transaction): the update of
    // a reaches A too, and nothing stays written.
    sql(
        &root,
        "CREATE TRIGGER t AFTER INSERT ON content WHEN new.slug = '0' \
         BEGIN INSERT INTO content VALUES ('A', 'upper', 'y'); END",
    );
    md(&root, "0.md", "0", "title: zero\n");
    edit(&root.join("content/a.md"), "title: lower", "title: edited");
    let err = fails(&root, &["local", "to-db"], 1);
    assert!(err.contains("reached 2 rows"), "{err}");
    assert_eq!(
        rows(&root, "SELECT slug, title FROM content"),
        [["a", "lower"]]
    );
}

/// The record keeps how the collection reads its files: with the glob made
/// narrower, the files it leaves out read as deleted, and `to-db` deleted
/// their rows (audit 26). A record of other settings counts as none.
#[test]
fn a_narrower_glob_deletes_no_row() {
    let (_t, root) = project(
        CONTENT,
        "CREATE TABLE content(slug TEXT PRIMARY KEY, title TEXT, body TEXT)",
    );
    md(&root, "a.md", "a", "");
    md(&root, "drafts/d.md", "d", "");
    ok(&root, &["local", "to-db", "-q"]);
    std::fs::write(
        root.join("sp-sync.toml"),
        CONTENT.replace("body = \"body\"\n", "body = \"body\"\nglob = \"*.md\"\n"),
    )
    .unwrap();
    let v = json(&ok(&root, &["local", "diff", "--json"]));
    let d = &v.as_array().unwrap()[0];
    assert_eq!(
        (&d["key"], &d["changed"]),
        (&json("\"d\""), &json("\"database\"")),
        "{v}"
    );
    ok(&root, &["local", "to-db", "-q"]);
    assert_eq!(
        rows(&root, "SELECT slug FROM content ORDER BY slug"),
        [["a"], ["d"]]
    );
}

/// Collections that cannot be synced side by side are refused before
/// anything is read (audit 26): two of one name shared a record (the
/// second's sync deleted the first's rows), two on one table copied each
/// other's rows (and deleting the copies deleted the originals), and `x`
/// beside `x/y` could never record `x/y`.
#[test]
fn collections_that_would_share_a_record_or_a_table_are_refused() {
    let schema = "CREATE TABLE content(slug TEXT PRIMARY KEY, title TEXT, body TEXT);
                  CREATE TABLE other(slug TEXT PRIMARY KEY, title TEXT, body TEXT)";
    let second = |name: &str, table: &str| {
        format!(
            "{CONTENT}[[collection]]\nname = \"{name}\"\ndir = \"more\"\ndb = \"data/app.db\"\ntable = \"{table}\"\nkey = \"slug\"\nbody = \"body\"\n"
        )
    };
    for (toml, says) in [
        (second("content", "other"), "two collections are named"),
        (second("more", "CONTENT"), "both sync table"),
        (second("content/x", "other"), "folder of the other"),
    ] {
        let (_t, root) = project(&toml, schema);
        std::fs::create_dir_all(root.join("more")).unwrap();
        md(&root, "a.md", "a", "");
        for cmd in ["diff", "to-db", "to-disk"] {
            let err = fails(&root, &["local", cmd], 1);
            assert!(err.contains(says), "{toml}: {err}");
        }
        assert!(rows(&root, "SELECT slug FROM content").is_empty());
    }
}

/// A row with no file name (a REAL, BLOB, NULL or empty key, or a `path`
/// column that is), or two rows the `path` puts in one file: `to-disk`
/// refuses before it writes any file (it wrote `.md`, which no later run
/// could read, or the first of the two; and the dry run said nothing;
/// audit 26). Every collection is checked before any is written.
#[test]
fn rows_with_no_file_of_their_own_are_refused_before_any_is_written() {
    let schema = "CREATE TABLE content(slug PRIMARY KEY, title TEXT, body TEXT)";
    for (extra, rows_sql, says) in [
        (
            "",
            "('ok', 'x', 'b'), (1.5, 'real key', 'b')",
            "key slug is 1.5",
        ),
        (
            "",
            "('ok', 'x', 'b'), (x'01', 'blob key', 'b')",
            "key slug is x'01'",
        ),
        (
            "",
            "('ok', 'x', 'b'), ('', 'empty key', 'b')",
            "key slug is ''",
        ),
        (
            "path = \"{title}.md\"\n",
            "('a', 'Same', 'A'), ('b', 'Same', 'B')",
            "the file of two rows",
        ),
        (
            "path = \"{title}.md\"\n",
            "('a', 'x', 'A'), ('b', NULL, 'B')",
            "column title is NULL",
        ),
    ] {
        let toml = format!("{CONTENT}{extra}");
        let (_t, root) = project(&toml, schema);
        sql(&root, &format!("INSERT INTO content VALUES {rows_sql}"));
        for args in [
            &["local", "to-disk", "--dry-run"][..],
            &["local", "to-disk"],
        ] {
            let err = fails(&root, args, 1);
            assert!(err.contains(says), "{rows_sql}: {err}");
            assert!(names(&root.join("content")).is_empty(), "{rows_sql}");
        }
    }
}

/// A file name of 242 bytes (file systems take 255): its temporary file,
/// `.NAME.sp-sync-PID.tmp`, was too long, and every to-disk failed after
/// writing the others (audit 26).
#[test]
fn a_long_file_name_is_written() {
    let (_t, root) = mini();
    let long = "n".repeat(239);
    md(&root, &format!("{long}.md"), "long", "title: t\n");
    ok(&root, &["local", "to-db", "-q"]);
    sql(&root, "UPDATE content SET title = 'new'");
    ok(&root, &["local", "to-disk", "-q"]);
    let t = std::fs::read_to_string(root.join(format!("content/{long}.md"))).unwrap();
    assert!(t.contains("title: new"), "{t}");
    assert_eq!(names(&root.join("content")).len(), 3);
}

/// Values that would not come back as written are refused, naming the file
/// and field: a NaN (SQLite keeps it as NULL), and a key that is a boolean
/// or a list (stored as 1 or as JSON text; audit 26).
#[test]
fn values_that_would_not_come_back_are_refused() {
    let schema = "CREATE TABLE content(slug TEXT PRIMARY KEY, score REAL, body TEXT)";
    for (slug, more, says) in [
        ("a", "score: .nan\n", "NaN"),
        ("true", "", "key field slug must be a string or an integer"),
        (
            "[x, y]",
            "",
            "key field slug must be a string or an integer",
        ),
    ] {
        let (_t, root) = project(CONTENT, schema);
        md(&root, "f.md", slug, more);
        let err = fails(&root, &["local", "to-db"], 1);
        assert!(err.contains("content/f.md") && err.contains(says), "{err}");
        assert!(rows(&root, "SELECT slug FROM content").is_empty());
    }
}

/// `to-disk` stopped midway (here a file it cannot write: over the file
/// size limit) records the keys it finished: the next run takes them for
/// agreed, so a later change of one in the database flows (it was a
/// conflict, as was every finished key after an interrupt; audit 26), and
/// the rest is written.
#[test]
fn to_disk_stopped_midway_records_the_keys_it_finished() {
    let (_t, root) = project(
        CONTENT,
        "CREATE TABLE content(slug TEXT PRIMARY KEY, title TEXT, body TEXT)",
    );
    for k in ["a", "b", "c"] {
        md(&root, &format!("{k}.md"), k, "title: t\n");
    }
    ok(&root, &["local", "to-db", "-q"]);
    sql(
        &root,
        "UPDATE content SET title = 'a2' WHERE slug = 'a';
         UPDATE content SET body = printf('%.*c', 3000000, 'x') WHERE slug = 'b';
         UPDATE content SET title = 'c2' WHERE slug = 'c';",
    );
    // (bash's ulimit -f counts KiB; SIGXFSZ ignored, the write fails.)
    let o = std::process::Command::new("bash")
        .args(["-c", "trap '' XFSZ; ulimit -f 1000; exec \"$0\" \"$@\""])
        .arg(common::bin())
        .args(["local", "to-disk"])
        .current_dir(&root)
        .env("SP_SYNC_CACHE_DIR", common::cache_dir())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let text = |k: &str| std::fs::read_to_string(root.join(format!("content/{k}.md"))).unwrap();
    assert!(text("a").contains("title: a2"));
    assert!(text("b").len() < 100 && text("c").contains("title: t"));
    sql(&root, "UPDATE content SET title = 'a3' WHERE slug = 'a'");
    let v = json(&ok(&root, &["local", "diff", "--json"]));
    let sides: Vec<(String, String)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["key"].to_string(), c["changed"].to_string()))
        .collect();
    let db = "\"database\"".to_string();
    assert_eq!(
        sides,
        [
            ("\"a\"".to_string(), db.clone()),
            ("\"b\"".to_string(), db.clone()),
            ("\"c\"".to_string(), db)
        ],
        "{v}"
    );
    ok(&root, &["local", "to-disk", "-q"]);
    assert!(text("a").contains("title: a3") && text("c").contains("title: c2"));
    assert_eq!(
        text("b").len(),
        "---\nslug: b\ntitle: t\n---\n".len() + 3_000_000
    );
}

/// A column named `true` or `false`: the scratch table the values are
/// normalized in was made by `CREATE TABLE … AS SELECT *`, which names
/// such a column `columnN`; every run failed, after `to-disk` had written
/// its file (audit 26).
#[test]
fn a_column_named_true_is_synced() {
    let toml = "[[collection]]\nname = \"c\"\ndir = \"content\"\ndb = \"data/app.db\"\ntable = \"t\"\nkey = \"name\"\nformat = \"yaml\"\n";
    let (_t, root) = project(
        toml,
        "CREATE TABLE t(name TEXT PRIMARY KEY, \"true\" INTEGER, \"false\" TEXT); INSERT INTO t VALUES ('k', 1, 'v')",
    );
    ok(&root, &["local", "to-disk", "-q"]);
    ok(&root, &["local", "diff", "--exit-code"]);
    let p = root.join("content/k.yaml");
    let t = std::fs::read_to_string(&p).unwrap();
    std::fs::write(
        &p,
        t.replace("'true': 1", "'true': 2")
            .replace("\"true\": 1", "\"true\": 2")
            .replace("true: 1", "true: 2"),
    )
    .unwrap();
    ok(&root, &["local", "to-db", "-q"]);
    assert_eq!(
        rows(&root, "SELECT \"true\", \"false\" FROM t"),
        [["2", "v"]]
    );
}

/// NaN or infinity inside a list or map became null in the JSON stored
/// (audit 26): refused, naming file and field.
#[test]
fn nan_inside_a_list_is_refused() {
    let toml = "[[collection]]\nname = \"c\"\ndir = \"content\"\ndb = \"data/app.db\"\ntable = \"t\"\nkey = \"name\"\nformat = \"yaml\"\n";
    let (_t, root) = project(toml, "CREATE TABLE t(name TEXT PRIMARY KEY, model TEXT)");
    std::fs::write(
        root.join("content/x.yaml"),
        "name: x\nmodel: [1, .nan, -.inf]\n",
    )
    .unwrap();
    let err = fails(&root, &["local", "to-db"], 1);
    assert!(
        err.contains("content/x.yaml") && err.contains("NaN or infinity"),
        "{err}"
    );
    assert!(rows(&root, "SELECT name FROM t").is_empty());
}

/// A sidecar row whose body file the collection's glob picks (`file:
/// sub/config.yaml` under `**/config.yaml`): `to-disk` wrote it, and every
/// later run failed reading it as a sidecar (audit 26). Refused before
/// anything is written.
#[test]
fn a_body_file_the_glob_picks_is_refused() {
    let toml = "[[collection]]\nname = \"skills\"\ndir = \"content\"\nformat = \"sidecar\"\nglob = \"**/config.yaml\"\nbody_field = \"file\"\ndb = \"data/app.db\"\ntable = \"skills\"\nkey = \"id\"\nbody = \"instructions\"\n";
    let (_t, root) = project(
        toml,
        "CREATE TABLE skills(id TEXT PRIMARY KEY, name TEXT, file TEXT, instructions TEXT);
         INSERT INTO skills VALUES ('ok', 'Ok', 'SKILL.md', 'fine'), ('bad', 'Bad', 'sub/config.yaml', 'steps');",
    );
    let err = fails(&root, &["local", "to-disk"], 1);
    assert!(
        err.contains("bad/sub/config.yaml") && err.contains("glob"),
        "{err}"
    );
    assert!(names(&root.join("content")).is_empty());
    ok(&root, &["local", "diff"]);
}

const SKILLS: &str = "[[collection]]\nname = \"skills\"\ndir = \"content\"\nformat = \"sidecar\"\nbody_field = \"file\"\nbody_file = \"SKILL.md\"\ndb = \"data/app.db\"\ntable = \"skills\"\nkey = \"id\"\nbody = \"instructions\"\n";

/// A row whose `file` field changes in the table: `to-disk` writes the
/// new body file and removes the old one, as git removes a renamed file's
/// old name (it stayed behind, a file no row read). The folder's other
/// files stay.
#[test]
fn a_body_file_renamed_in_the_table_leaves_no_old_file() {
    let (_t, root) = project(
        SKILLS,
        "CREATE TABLE skills(id TEXT PRIMARY KEY, name TEXT, file TEXT, instructions TEXT);
         INSERT INTO skills VALUES ('a', 'A', 'SKILL.md', 'steps a'), ('b', 'B', 'SKILL.md', 'steps b');",
    );
    ok(&root, &["local", "to-disk", "-q"]);
    let dir = root.join("content");
    assert_eq!(
        names(&dir),
        ["a/SKILL.md", "a/config.yaml", "b/SKILL.md", "b/config.yaml"]
    );
    std::fs::write(dir.join("a/NOTES.md"), "mine\n").unwrap();
    sql(
        &root,
        "UPDATE skills SET file = 'GUIDE.md', instructions = 'steps a2' WHERE id = 'a'",
    );
    ok(&root, &["local", "to-disk", "-q"]);
    assert_eq!(
        names(&dir),
        [
            "a/GUIDE.md",
            "a/NOTES.md",
            "a/config.yaml",
            "b/SKILL.md",
            "b/config.yaml"
        ]
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("a/GUIDE.md")).unwrap(),
        "steps a2"
    );
    assert!(
        std::fs::read_to_string(dir.join("a/config.yaml"))
            .unwrap()
            .contains("file: GUIDE.md")
    );
    // Both sides agree: nothing to do either way.
    let out = ok(&root, &["local", "diff", "--json"]);
    assert_eq!(json(&out).as_array().map(Vec::len), Some(0), "{out}");
    let before = rows(&root, "SELECT * FROM skills ORDER BY id");
    ok(&root, &["local", "to-db", "-q"]);
    assert_eq!(rows(&root, "SELECT * FROM skills ORDER BY id"), before);
}

/// A key's files are written as temporary files before any is renamed
/// into place: a body file that cannot be written (its folder's name is
/// a file) leaves the sidecar as it was, not new beside its old body
/// (a conflict on every later run). The next run, once the way is clear,
/// finishes the change.
#[test]
fn a_body_file_that_cannot_be_written_leaves_its_sidecar_as_it_was() {
    let (_t, root) = project(
        SKILLS,
        "CREATE TABLE skills(id TEXT PRIMARY KEY, name TEXT, file TEXT, instructions TEXT);
         INSERT INTO skills VALUES ('a', 'A', 'SKILL.md', 'steps a');",
    );
    ok(&root, &["local", "to-disk", "-q"]);
    let dir = root.join("content");
    std::fs::write(dir.join("a/docs"), "a file, not a folder\n").unwrap();
    let before = files(&dir);
    sql(
        &root,
        "UPDATE skills SET name = 'A2', file = 'docs/x.md', instructions = 'new' WHERE id = 'a'",
    );
    let err = fails(&root, &["local", "to-disk"], 1);
    assert!(err.contains("docs"), "{err}");
    assert_eq!(files(&dir), before, "a file changed");
    std::fs::remove_file(dir.join("a/docs")).unwrap();
    ok(&root, &["local", "to-disk", "-q"]);
    assert_eq!(
        std::fs::read_to_string(dir.join("a/docs/x.md")).unwrap(),
        "new"
    );
    assert!(!dir.join("a/SKILL.md").exists());
    let out = ok(&root, &["local", "diff", "--json"]);
    assert_eq!(json(&out).as_array().map(Vec::len), Some(0), "{out}");
}

/// A file written with CRLF line ends (an editor on Windows) keeps them
/// when `to-disk` changes a field and adds one: the new lines came out LF,
/// a file of mixed line ends. Both sides then agree.
#[test]
fn a_crlf_file_keeps_its_line_ends() {
    let (_t, root) = project(
        CONTENT,
        "CREATE TABLE content(slug TEXT PRIMARY KEY, title TEXT, n INTEGER, body TEXT)",
    );
    let file = root.join("content/a.md");
    std::fs::write(
        &file,
        "---\r\nslug: a\r\ntitle: A\r\n# a comment\r\n---\r\nline one\r\nline two\r\n",
    )
    .unwrap();
    ok(&root, &["local", "to-db", "-q"]);
    assert_eq!(
        rows(&root, "SELECT body FROM content"),
        [["line one\r\nline two\r\n"]]
    );
    sql(&root, "UPDATE content SET title = 'A2', n = 5");
    ok(&root, &["local", "to-disk", "-q"]);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("title: A2\r\n") && text.contains("n: 5\r\n"),
        "{text:?}"
    );
    assert!(
        text.match_indices('\n')
            .all(|(i, _)| i > 0 && text.as_bytes()[i - 1] == b'\r'),
        "a bare LF: {text:?}"
    );
    assert!(
        text.ends_with("---\r\nline one\r\nline two\r\n"),
        "{text:?}"
    );
    let out = ok(&root, &["local", "diff", "--json"]);
    assert_eq!(json(&out).as_array().map(Vec::len), Some(0), "{out}");
    let before = db_bytes(&root);
    ok(&root, &["local", "to-db", "-q"]);
    assert_eq!(db_bytes(&root), before);
}

/// `--collection` repeats: the collections named, each once, and no other.
#[test]
fn collection_repeats_and_names_each_once() {
    let (_tmp, root) = example();
    ok(&root, &["local", "to-db", "-q"]);
    sql(
        &root,
        "UPDATE content SET title = 'Changed' WHERE slug = 'hello-world';
         UPDATE skills SET version = 9 WHERE name = 'translate'",
    );
    let both = json(&ok(
        &root,
        &[
            "local",
            "diff",
            "--json",
            "--collection",
            "skills",
            "--collection",
            "content",
            "--collection",
            "skills",
        ],
    ));
    let mut names: Vec<&str> = both
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["collection"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["content", "skills"], "{both}");
    ok(&root, &["local", "to-disk", "-q", "--collection", "skills"]);
    let left = json(&ok(&root, &["local", "diff", "--json"]));
    assert_eq!(left.as_array().map(Vec::len), Some(1), "{left}");
    assert_eq!(left[0]["collection"], "content", "{left}");
}
