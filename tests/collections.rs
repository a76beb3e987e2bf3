//! Local collections (issue 3, acceptance 4), on the shipped example
//! (`examples/services`): to-disk then to-db is a no-op; editing one file
//! shows exactly that key; to-db applies it in one transaction; malformed
//! front matter names the file and the line and changes nothing.

mod common;

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

/// The example, copied, with its database created from schema.sql.
fn example() -> (tempfile::TempDir, PathBuf) {
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
    // A dry run prints the same plan and changes nothing.
    let before = db_bytes(&root);
    let dry = ok(&root, &["local", "to-db", "--dry-run"]);
    assert_eq!(dry, ok(&root, &["local", "diff"]));
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

    // From the database alone: to-disk writes every file, and to-db then
    // finds nothing to do (a stable rendering); to-disk again neither.
    std::fs::remove_dir_all(root.join("services")).unwrap();
    let written = json(&ok(&root, &["local", "to-disk", "--json"]));
    assert_eq!(written.as_array().unwrap().len(), 5);
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
        "---\nname: summarize\ndescription: Summarize a document in five bullet points.\nversion: 3\nallowed_tools: [\"read_file\"]\n---\nRead the whole document first. Then write five bullet points, each under\ntwenty words, in the order the document makes its points.\n"
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
            r#"[{"collection": "content", "key": "hello-world", "change": "modified", "path": "services/content/hello-world.md", "columns": ["title"]}]"#
        )
    );
    let line = ok(&root, &["local", "diff", "--collection", "content"]);
    assert_eq!(
        line,
        "M content/hello-world (services/content/hello-world.md) [title]\n"
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
    ok(&root, &["init", "-q"]);
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
