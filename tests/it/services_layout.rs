//! Collections in the layout real services trees use (issue 15), on the
//! shipped example `examples/services-layout`: skills as a folder each
//! (`config.yaml` sidecar naming its `SKILL.md`), content as markdown with
//! nested front matter, agents as one YAML file each.
//!
//! 1. The tree goes `to-db`, `to-disk` with no edits: no file rewritten
//!    (bytes and mtimes), `local diff` empty.
//! 2. An edit to a sidecar field, to a SKILL.md body and to a nested list
//!    shows as exactly that key and column and flows both ways; `to-disk`
//!    writes only the file holding the change, in the style it had.
//! 3. Property: random nested YAML values survive file → table → file
//!    (parse equal), and the fields that did not change keep their bytes.
//!
//! Safety: a body file named outside the sidecar's folder (`../x`, an
//! absolute path, through a symbolic link) is refused with one error line,
//! from either side, and nothing is written.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

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

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/services-layout")
}

/// The example, copied, its database created from schema.sql, a store.
fn example() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("project");
    copy_dir(&example_dir(), &root);
    std::fs::create_dir_all(root.join("data")).unwrap();
    let schema = std::fs::read_to_string(root.join("schema.sql")).unwrap();
    Connection::open(root.join("data/app.db"))
        .unwrap()
        .execute_batch(&schema)
        .unwrap();
    ok(&root, &["init", "-q"]);
    (tmp, root)
}

/// The example after its first `to-db`, every file back-dated so that a
/// rewrite cannot hide in the same clock tick.
fn synced() -> (tempfile::TempDir, PathBuf) {
    let (tmp, root) = example();
    // `-q`: the sync lists nothing.
    assert_eq!(ok(&root, &["local", "to-db", "-q"]), "");
    backdate(&root);
    (tmp, root)
}

fn backdate(root: &Path) {
    for p in common::files_under(&root.join("services")) {
        common::set_mtime(&p, 1_600_000_000, 0);
    }
}

fn json(s: &str) -> Json {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

fn sql(root: &Path, stmt: &str) {
    Connection::open(root.join("data/app.db"))
        .unwrap()
        .execute_batch(stmt)
        .unwrap();
}

fn one(root: &Path, q: &str) -> String {
    Connection::open(root.join("data/app.db"))
        .unwrap()
        .query_row(q, [], |r| r.get::<_, String>(0))
        .unwrap()
}

type Stamps = Vec<(PathBuf, Vec<u8>, SystemTime)>;

/// Bytes and modification time of every file under `dir`.
fn stamps(dir: &Path) -> Stamps {
    common::files_under(dir)
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(&p).unwrap().modified().unwrap();
            let b = std::fs::read(&p).unwrap();
            (p.strip_prefix(dir).unwrap().to_path_buf(), b, m)
        })
        .collect()
}

/// The files whose bytes or mtime differ between two stamps.
fn changed(a: &Stamps, b: &Stamps) -> Vec<String> {
    let mut out = Vec::new();
    for (p, bytes, m) in b {
        match a.iter().find(|(q, _, _)| q == p) {
            Some((_, b0, m0)) if b0 == bytes && m0 == m => {}
            _ => out.push(p.display().to_string()),
        }
    }
    for (p, _, _) in a {
        if !b.iter().any(|(q, _, _)| q == p) {
            out.push(format!("-{}", p.display()));
        }
    }
    out.sort();
    out
}

fn edit(p: &Path, from: &str, to: &str) {
    let t = std::fs::read_to_string(p).unwrap();
    assert!(t.contains(from), "{from:?} not in {t}");
    std::fs::write(p, t.replacen(from, to, 1)).unwrap();
}

fn read(root: &Path, rel: &str) -> String {
    std::fs::read_to_string(root.join(rel)).unwrap()
}

#[test]
fn the_tree_goes_to_db_and_back_without_a_rewrite() {
    let (_tmp, root) = example();
    let plan = json(&ok(&root, &["local", "diff", "--json"]));
    let keys: Vec<String> = plan
        .as_array()
        .unwrap()
        .iter()
        .map(|c| format!("{} {} {}", c["collection"], c["key"], c["path"]).replace('"', ""))
        .collect();
    assert_eq!(
        keys,
        [
            "skills code-review services/skills/code-review/config.yaml",
            "skills release-notes services/skills/release-notes/config.yaml",
            "content sidecars services/content/blog/sidecars.md",
            "content syncing-services services/content/blog/syncing-services.md",
            "content three-way services/content/docs/three-way.md",
            "agents reviewer services/agents/reviewer.yaml",
            "agents writer services/agents/writer.yaml",
        ]
    );
    backdate(&root);
    let before = stamps(&root.join("services"));
    ok(&root, &["local", "to-db", "-q"]);
    // The rows: sidecar fields, the body from the file the sidecar names,
    // nested values as JSON text, booleans as 0/1.
    assert_eq!(
        one(
            &root,
            "SELECT json_array(name, enabled, file, category, tags, json(examples), instructions) FROM skills WHERE id = 'code-review'"
        ),
        json_text(&serde_json::json!([
            "Code review",
            1,
            "SKILL.md",
            "engineering",
            "[\"review\",\"quality: code\",\"tests\"]",
            [
                {"input": "a diff that renames a public function", "output": "names every caller that breaks"},
                {"input": "a diff without tests", "output": "asks for one test per branch"}
            ],
            read(&root, "services/skills/code-review/SKILL.md"),
        ]))
    );
    assert_eq!(
        one(
            &root,
            "SELECT json_array(published_at, public, tags, after_reading_this, related) FROM content WHERE slug = 'syncing-services'"
        ),
        json_text(&serde_json::json!([
            "2026-03-14",
            1,
            "[\"sync\",\"yaml\",\"how-to\"]",
            "[\"You can map a folder of skills to a table\",\"You know which side wins when both changed\"]",
            "[{\"slug\":\"sidecars\",\"title\":\"Sidecar metadata, explained\"},{\"slug\":\"three-way\",\"title\":\"Three-way sync\"}]",
        ]))
    );
    assert_eq!(
        one(
            &root,
            "SELECT json_array(enabled, model, skills, tools, system_prompt) FROM agents WHERE name = 'reviewer'"
        ),
        json_text(&serde_json::json!([
            1,
            "{\"provider\":\"anthropic\",\"name\":\"claude-sonnet\",\"temperature\":0.2}",
            "[\"code-review\"]",
            "[\"read_file\",\"grep: ripgrep\"]",
            "You review code changes.\nOne finding per line, most serious first.\n",
        ]))
    );
    assert_eq!(ok(&root, &["local", "diff"]), "");
    for cmd in [
        &["local", "to-disk"][..],
        &["local", "to-disk", "--force"],
        &["local", "to-db"],
    ] {
        assert_eq!(ok(&root, cmd), "", "{cmd:?}");
    }
    assert_eq!(changed(&before, &stamps(&root.join("services"))), [""; 0]);
    // Byte for byte the shipped example, content/config.yaml included.
    assert_eq!(
        stamps(&root.join("services"))
            .into_iter()
            .map(|(p, b, _)| (p, b))
            .collect::<Vec<_>>(),
        stamps(&example_dir().join("services"))
            .into_iter()
            .map(|(p, b, _)| (p, b))
            .collect::<Vec<_>>()
    );
    assert_eq!(ok(&root, &["local", "diff", "--json"]).trim(), "[]");
}

fn json_text(v: &Json) -> String {
    serde_json::to_string(v).unwrap()
}

#[test]
fn edits_on_the_files_show_as_their_key_and_column_and_flow_to_the_table() {
    let (_tmp, root) = synced();
    // A sidecar field, a SKILL.md body, a nested block list.
    edit(
        &root.join("services/skills/code-review/config.yaml"),
        "category: engineering",
        "category: quality",
    );
    edit(
        &root.join("services/skills/release-notes/SKILL.md"),
        "One line each",
        "One short line each",
    );
    edit(
        &root.join("services/content/blog/syncing-services.md"),
        "  - \"You know which side wins when both changed\"\n",
        "  - \"You know which side wins when both changed\"\n  - \"You can read a diff\"\n",
    );
    let d = json(&ok(&root, &["local", "diff", "--json"]));
    assert_eq!(
        d,
        json(
            r#"[
            {"collection": "skills", "key": "code-review", "change": "modified", "path": "services/skills/code-review/config.yaml", "columns": ["category"], "changed": "files"},
            {"collection": "skills", "key": "release-notes", "change": "modified", "path": "services/skills/release-notes/config.yaml", "columns": ["instructions"], "changed": "files"},
            {"collection": "content", "key": "syncing-services", "change": "modified", "path": "services/content/blog/syncing-services.md", "columns": ["after_reading_this"], "changed": "files"}
        ]"#
        )
    );
    assert_eq!(
        ok(&root, &["local", "diff"]),
        "M skills/code-review (services/skills/code-review/config.yaml) [category] (files changed)\n\
         M skills/release-notes (services/skills/release-notes/config.yaml) [instructions] (files changed)\n\
         M content/syncing-services (services/content/blog/syncing-services.md) [after_reading_this] (files changed)\n"
    );
    let before = stamps(&root.join("services"));
    ok(&root, &["local", "to-db", "-q"]);
    assert_eq!(changed(&before, &stamps(&root.join("services"))), [""; 0]);
    assert_eq!(
        one(
            &root,
            "SELECT category FROM skills WHERE id = 'code-review'"
        ),
        "quality"
    );
    assert!(
        one(
            &root,
            "SELECT instructions FROM skills WHERE id = 'release-notes'"
        )
        .contains("One short line each")
    );
    assert_eq!(
        one(
            &root,
            "SELECT after_reading_this FROM content WHERE slug = 'syncing-services'"
        ),
        "[\"You can map a folder of skills to a table\",\"You know which side wins when both changed\",\"You can read a diff\"]"
    );
    assert_eq!(ok(&root, &["local", "diff"]), "");
    assert_eq!(ok(&root, &["local", "to-disk"]), "");
    assert_eq!(changed(&before, &stamps(&root.join("services"))), [""; 0]);
}

#[test]
fn edits_in_the_table_write_only_their_file_in_its_style() {
    let (_tmp, root) = synced();
    let services = root.join("services");
    let orig = |rel: &str| std::fs::read_to_string(example_dir().join(rel)).unwrap();

    // A sidecar field: only config.yaml changes, that one line.
    sql(
        &root,
        "UPDATE skills SET category = 'quality' WHERE id = 'code-review'",
    );
    let line = ok(&root, &["local", "diff", "--collection", "skills"]);
    assert_eq!(
        line,
        "M skills/code-review (services/skills/code-review/config.yaml) [category] (database changed)\n"
    );
    let before = stamps(&services);
    ok(&root, &["local", "to-disk", "-q"]);
    assert_eq!(
        changed(&before, &stamps(&services)),
        ["skills/code-review/config.yaml"]
    );
    assert_eq!(
        read(&root, "services/skills/code-review/config.yaml"),
        orig("services/skills/code-review/config.yaml")
            .replace("category: engineering", "category: quality")
    );

    // A body: only SKILL.md changes.
    sql(
        &root,
        "UPDATE skills SET instructions = instructions || 'Link the issue.\n' WHERE id = 'release-notes'",
    );
    let d = json(&ok(&root, &["local", "diff", "--json"]));
    assert_eq!(d[0]["columns"], json(r#"["instructions"]"#));
    assert_eq!(d.as_array().unwrap().len(), 1);
    let before = stamps(&services);
    ok(&root, &["local", "to-disk", "-q"]);
    assert_eq!(
        changed(&before, &stamps(&services)),
        ["skills/release-notes/SKILL.md"]
    );
    assert_eq!(
        read(&root, "services/skills/release-notes/SKILL.md"),
        format!(
            "{}Link the issue.\n",
            orig("services/skills/release-notes/SKILL.md")
        )
    );

    // Nested lists: a block list of quoted strings stays one, a list of
    // maps stays block, a block list of plain and quoted items keeps each
    // item's quoting, a flow list stays flow; a nested map's value.
    sql(
        &root,
        "UPDATE content SET after_reading_this = json_insert(after_reading_this, '$[#]', 'You can read a diff'),
                            related = json_insert(related, '$[#]', json('{\"slug\":\"faq\",\"title\":\"FAQ: sync\"}'))
         WHERE slug = 'syncing-services';
         UPDATE skills SET tags = json_insert(tags, '$[#]', 'new: tag') WHERE id = 'code-review';
         UPDATE skills SET tags = json_insert(tags, '$[#]', 'notes') WHERE id = 'release-notes';
         UPDATE agents SET model = json_set(model, '$.temperature', 0.3),
                           tools = json_insert(tools, '$[#]', 'web: search') WHERE name = 'reviewer';",
    );
    let d = json(&ok(&root, &["local", "diff", "--json"]));
    let cols: Vec<String> = d
        .as_array()
        .unwrap()
        .iter()
        .map(|c| format!("{} {}", c["key"], c["columns"]).replace('"', ""))
        .collect();
    assert_eq!(
        cols,
        [
            "code-review [tags]",
            "release-notes [tags]",
            "syncing-services [after_reading_this, related]",
            "reviewer [model, tools]",
        ]
        .map(|s| s.replace(", ", ","))
    );
    let before = stamps(&services);
    ok(&root, &["local", "to-disk", "-q"]);
    assert_eq!(
        changed(&before, &stamps(&services)),
        [
            "agents/reviewer.yaml",
            "content/blog/syncing-services.md",
            "skills/code-review/config.yaml",
            "skills/release-notes/config.yaml",
        ]
    );
    assert_eq!(
        read(&root, "services/content/blog/syncing-services.md"),
        orig("services/content/blog/syncing-services.md")
            .replace(
                "  - \"You know which side wins when both changed\"\n",
                "  - \"You know which side wins when both changed\"\n  - \"You can read a diff\"\n"
            )
            .replace(
                "    title: Three-way sync\n",
                "    title: Three-way sync\n  - slug: faq\n    title: \"FAQ: sync\"\n"
            )
    );
    assert_eq!(
        read(&root, "services/skills/code-review/config.yaml"),
        orig("services/skills/code-review/config.yaml")
            .replace("category: engineering", "category: quality")
            .replace("  - tests\n", "  - tests\n  - \"new: tag\"\n")
    );
    assert_eq!(
        read(&root, "services/skills/release-notes/config.yaml"),
        orig("services/skills/release-notes/config.yaml").replace(
            "[release, \"changelog\", docs]",
            "[release, \"changelog\", docs, notes]"
        )
    );
    assert_eq!(
        read(&root, "services/agents/reviewer.yaml"),
        orig("services/agents/reviewer.yaml")
            .replace("temperature: 0.2", "temperature: 0.3")
            .replace(
                "  - \"grep: ripgrep\"\n",
                "  - \"grep: ripgrep\"\n  - \"web: search\"\n"
            )
    );
    // What to-disk wrote reads back as the rows.
    assert_eq!(ok(&root, &["local", "diff"]), "");
    let before = stamps(&services);
    assert_eq!(ok(&root, &["local", "to-db"]), "");
    assert_eq!(ok(&root, &["local", "to-disk"]), "");
    assert_eq!(changed(&before, &stamps(&services)), [""; 0]);
}

#[test]
fn rows_and_files_come_and_go_with_their_body_files() {
    let (_tmp, root) = synced();
    // A new row in the table: to-disk writes its sidecar and its body.
    sql(
        &root,
        "INSERT INTO skills(id, name, enabled, file, tags, instructions)
         VALUES ('triage', 'Triage', 1, 'TRIAGE.md', '[\"issues\",\"a: b\"]', 'Label every issue.\n');
         INSERT INTO agents(name, enabled, tools) VALUES ('triager', 0, '[\"read_file\"]');",
    );
    ok(&root, &["local", "to-disk", "-q"]);
    assert_eq!(
        read(&root, "services/skills/triage/config.yaml"),
        "id: triage\nname: Triage\nenabled: true\nfile: TRIAGE.md\ntags: [issues, \"a: b\"]\n"
    );
    assert_eq!(
        read(&root, "services/skills/triage/TRIAGE.md"),
        "Label every issue.\n"
    );
    assert_eq!(
        read(&root, "services/agents/triager.yaml"),
        "name: triager\nenabled: false\ntools: [read_file]\n"
    );
    assert_eq!(ok(&root, &["local", "diff"]), "");
    // A new skill folder on disk: to-db inserts it, body from its file.
    std::fs::create_dir_all(root.join("services/skills/summarize")).unwrap();
    std::fs::write(
        root.join("services/skills/summarize/config.yaml"),
        "id: summarize\nname: Summarize\n",
    )
    .unwrap();
    std::fs::write(
        root.join("services/skills/summarize/SKILL.md"),
        "Five bullets.\n",
    )
    .unwrap();
    ok(&root, &["local", "to-db", "-q"]);
    assert_eq!(
        one(
            &root,
            "SELECT json_array(name, file, instructions) FROM skills WHERE id = 'summarize'"
        ),
        // No `file:` field: body_file (SKILL.md) is the body.
        r#"["Summarize",null,"Five bullets.\n"]"#
    );
    // A row deleted: to-disk removes its sidecar and its body file, and
    // nothing else in the folder.
    std::fs::write(root.join("services/skills/triage/notes.txt"), "mine\n").unwrap();
    sql(&root, "DELETE FROM skills WHERE id = 'triage'");
    ok(&root, &["local", "to-disk", "-q"]);
    assert!(!root.join("services/skills/triage/config.yaml").exists());
    assert!(!root.join("services/skills/triage/TRIAGE.md").exists());
    assert_eq!(read(&root, "services/skills/triage/notes.txt"), "mine\n");
    // A sidecar whose body file is missing names it.
    std::fs::remove_file(root.join("services/skills/summarize/SKILL.md")).unwrap();
    let err = fails(&root, &["local", "diff"], 1);
    assert!(
        err.contains("services/skills/summarize/config.yaml:1: body file services/skills/summarize/SKILL.md does not exist"),
        "{err}"
    );
}

#[test]
fn a_body_file_outside_the_sidecars_folder_is_refused() {
    let (tmp, root) = synced();
    let services = root.join("services");
    let db_before = std::fs::read(root.join("data/app.db")).unwrap();
    // From the files: `file: ../x`, an absolute path.
    let cfg = root.join("services/skills/code-review/config.yaml");
    std::fs::write(root.join("services/skills/outside.md"), "not mine\n").unwrap();
    for bad in [
        "../outside.md",
        "/etc/passwd",
        "./SKILL.md",
        "a/../../outside.md",
    ] {
        let text = read(&root, "services/skills/code-review/config.yaml");
        std::fs::write(
            &cfg,
            text.replacen("file: SKILL.md", &format!("file: {bad}"), 1),
        )
        .unwrap();
        for cmd in [&["local", "diff"][..], &["local", "to-db"]] {
            let err = fails(&root, cmd, 1);
            assert!(
                err.contains(&format!(
                    "services/skills/code-review/config.yaml:6: body file \"{bad}\" is not a relative path inside the collection's folder"
                )),
                "{bad}: {err}"
            );
        }
        std::fs::write(&cfg, text).unwrap();
    }
    assert_eq!(std::fs::read(root.join("data/app.db")).unwrap(), db_before);
    std::fs::remove_file(root.join("services/skills/outside.md")).unwrap();
    assert_eq!(ok(&root, &["local", "diff"]), "");

    // From the table: to-disk refuses before writing anything.
    backdate(&root);
    let before = stamps(&services);
    let outside = tmp.path().join("escaped.md");
    for bad in [
        "../escaped.md".to_string(),
        "../../../../escaped.md".to_string(),
        outside.display().to_string(),
    ] {
        sql(
            &root,
            &format!(
                "UPDATE skills SET file = '{bad}', instructions = 'owned' WHERE id = 'code-review';
                 UPDATE skills SET category = 'other' WHERE id = 'release-notes'"
            ),
        );
        let err = fails(&root, &["local", "to-disk", "--force"], 1);
        assert!(
            err.contains(&format!(
                "collection skills: row code-review: body file \"{bad}\" is not a relative path inside the collection's folder"
            )),
            "{err}"
        );
        assert_eq!(changed(&before, &stamps(&services)), [""; 0]);
        assert!(!outside.exists());
        assert!(!root.join("services/escaped.md").exists());
        assert!(!root.join("escaped.md").exists());
    }
    // Through a symbolic link: refused too.
    sql(
        &root,
        "UPDATE skills SET file = 'SKILL.md', instructions = 'x' WHERE id = 'code-review'",
    );
    std::fs::write(&outside, "outside\n").unwrap();
    let link = root.join("services/skills/code-review/LINK.md");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    sql(
        &root,
        "UPDATE skills SET file = 'LINK.md', instructions = 'owned' WHERE id = 'code-review'",
    );
    let err = fails(&root, &["local", "to-disk", "--force"], 1);
    assert!(err.contains("is a symbolic link"), "{err}");
    assert_eq!(read(&root, "../escaped.md"), "outside\n");
    // ... and reading one.
    let text = read(&root, "services/skills/code-review/config.yaml");
    std::fs::write(&cfg, text.replacen("file: SKILL.md", "file: LINK.md", 1)).unwrap();
    let err = fails(&root, &["local", "diff"], 1);
    assert!(err.contains("is a symbolic link"), "{err}");
}

#[test]
fn sidecar_settings_are_checked() {
    let (_tmp, root) = example();
    let toml = read(&root, "sp-sync.toml");
    for (from, to, msg) in [
        (
            "body_field = \"file\"\nbody_file = \"SKILL.md\"\n",
            "",
            "collection skills: a sidecar collection needs body_field (the field naming the body file) or body_file",
        ),
        (
            "body_file = \"SKILL.md\"\n",
            "body_file = \"../SKILL.md\"\n",
            "collection skills: body_file \"../SKILL.md\" is not a relative path inside the collection's folder",
        ),
        (
            "format = \"yaml\"\n",
            "format = \"yaml\"\nbody = \"system_prompt\"\n",
            "collection agents: a yaml collection has no body (remove body =)",
        ),
    ] {
        assert!(toml.contains(from));
        std::fs::write(root.join("sp-sync.toml"), toml.replacen(from, to, 1)).unwrap();
        let err = fails(&root, &["local", "diff"], 1);
        assert!(err.contains(msg), "{err}");
    }
}

mod nested_values {
    //! Property: random nested YAML values (strings that need quotes,
    //! unicode, lists of maps, booleans, numbers, nulls, dates as strings)
    //! in a YAML collection survive file → table → file; a value changed in
    //! the table is written back so that it parses to what was set, and
    //! every other field keeps its bytes.

    use super::*;
    use proptest::prelude::*;
    use serde_norway::{Mapping, Value as Y};

    const TRICKY: &[&str] = &[
        "",
        "yes",
        "no",
        "true",
        "null",
        "~",
        "123",
        "1e3",
        "0x1F",
        ".inf",
        "2025-01-15",
        "2025-01-15T10:00:00Z",
        "a: b",
        "- x",
        "#c",
        "a #b",
        " lead",
        "trail ",
        "it's",
        "say \"hi\"",
        "multi\nline",
        "ends\n",
        "two\n\n",
        "tab\there",
        "@at",
        "`tick",
        "*star",
        "&amp",
        "!bang",
        "%pct",
        "{brace}",
        "[br]",
        ">",
        "|",
        "?",
        "a, b",
        "caf\u{e9} \u{65e5}\u{672c} \u{1F980}",
        "\u{2028}sep",
        "back\\slash",
    ];

    fn string() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(TRICKY).prop_map(str::to_string),
            "\\PC{0,12}",
            "[a-z]{1,8}( [a-z]{1,8}){0,3}",
            (2000..2030u32, 1..13u32, 1..29u32).prop_map(|(y, m, d)| format!("{y}-{m:02}-{d:02}")),
        ]
    }

    fn scalar() -> impl Strategy<Value = Y> {
        prop_oneof![
            Just(Y::Null),
            any::<bool>().prop_map(Y::Bool),
            any::<i32>().prop_map(|i| Y::Number(i64::from(i).into())),
            prop::sample::select(&[1.5f64, -0.25, 3.0e10][..]).prop_map(|f| Y::Number(f.into())),
            string().prop_map(Y::String),
            string().prop_map(Y::String),
        ]
    }

    fn map_key() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z_]{1,8}",
            prop::sample::select(&["a b", "x-y", "日本", "k: v", "true", "1", "#h"][..])
                .prop_map(str::to_string),
        ]
    }

    fn mapping(inner: impl Strategy<Value = Y>) -> impl Strategy<Value = Y> {
        prop::collection::vec((map_key(), inner), 0..4).prop_map(|kv| {
            let mut m = Mapping::new();
            for (k, v) in kv {
                m.insert(Y::String(k), v);
            }
            Y::Mapping(m)
        })
    }

    fn value() -> impl Strategy<Value = Y> {
        scalar().prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Y::Sequence),
                mapping(inner.clone()),
                // Lists of maps, as front matter has them.
                prop::collection::vec(mapping(inner), 1..3).prop_map(Y::Sequence),
            ]
        })
    }

    /// A new top-level value as the table can hold it unambiguously: not a
    /// boolean (a column holds 0/1), not a string that reads as JSON (JSON
    /// text is a list or map, unless the field held a string before).
    fn new_value() -> impl Strategy<Value = Y> {
        value().prop_filter("unambiguous in a column", |v| match v {
            Y::Bool(_) => false,
            Y::Number(n) => !matches!(n.as_i64(), Some(0 | 1)),
            Y::String(s) => {
                serde_json::from_str::<Json>(s).map_or(true, |j| !j.is_array() && !j.is_object())
            }
            _ => true,
        })
    }

    const FIELDS: [&str; 3] = ["a", "b", "c"];

    /// One field as written: block style (serde_norway's emitter) or flow
    /// (JSON, which YAML reads).
    fn field_text(name: &str, v: &Y, flow: bool) -> String {
        if flow {
            format!("{name}: {}\n", serde_json::to_string(v).unwrap())
        } else {
            let mut m = Mapping::new();
            m.insert(Y::String(name.into()), v.clone());
            serde_norway::to_string(&m).unwrap()
        }
    }

    /// A file's top-level fields, each with its text (a field's text runs
    /// to the next unindented line).
    fn chunks(text: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for line in text.split_inclusive('\n') {
            let starts = !line.starts_with([' ', '-', '#', '\n']);
            if starts || out.is_empty() {
                let name = line.split(':').next().unwrap_or("").to_string();
                out.push((name, line.to_string()));
            } else {
                out.last_mut().unwrap().1.push_str(line);
            }
        }
        out
    }

    fn as_json(v: &Y) -> Json {
        serde_json::to_value(v).unwrap()
    }

    fn sql_value(v: &Y) -> rusqlite::types::Value {
        use rusqlite::types::Value as S;
        match v {
            Y::Null => S::Null,
            Y::Bool(b) => S::Integer(i64::from(*b)),
            Y::Number(n) => match n.as_i64() {
                Some(i) => S::Integer(i),
                None => S::Real(n.as_f64().unwrap()),
            },
            Y::String(s) => S::Text(s.clone()),
            other => S::Text(serde_json::to_string(other).unwrap()),
        }
    }

    /// A collection `items` of YAML files, or (`front`) of markdown files
    /// with front matter.
    fn project(front: bool) -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        std::fs::create_dir_all(root.join("data")).unwrap();
        std::fs::create_dir_all(root.join("items")).unwrap();
        let format = if front {
            "glob = \"*.md\"\nbody = \"body\"\n"
        } else {
            "format = \"yaml\"\nglob = \"*.yaml\"\n"
        };
        std::fs::write(
            root.join("sp-sync.toml"),
            format!("[[collection]]\nname = \"items\"\ndir = \"items\"\n{format}db = \"data/app.db\"\ntable = \"items\"\nkey = \"name\"\n"),
        )
        .unwrap();
        // Untyped columns: what the file says is what the table holds.
        sql(
            &root,
            "CREATE TABLE items(name TEXT PRIMARY KEY, a, b, c, body TEXT)",
        );
        ok(&root, &["init", "-q"]);
        (tmp, root)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        #[test]
        fn values_survive_file_table_file(
            vals in prop::collection::vec((value(), any::<bool>()), 3),
            change in 0..3usize,
            new in new_value(),
            front in any::<bool>(),
        ) {
            // A string column that held a string reads JSON text as a string.
            prop_assume!(
                !matches!(vals[change].0, Y::String(_))
                    || !matches!(new, Y::Sequence(_) | Y::Mapping(_))
            );
            let (_tmp, root) = project(front);
            let path = root.join(if front { "items/x.md" } else { "items/x.yaml" });
            let mut text = String::from("# an item\nname: x\n");
            for (name, (v, flow)) in FIELDS.iter().zip(&vals) {
                text.push_str(&field_text(name, v, *flow));
            }
            let body = "The body: caf\u{e9}.\n";
            let file = |fields: &str| {
                if front { format!("---\n{fields}---\n{body}") } else { fields.to_string() }
            };
            let fields_of = |file: &str| -> String {
                if front {
                    let rest = file.strip_prefix("---\n").unwrap();
                    let end = rest.find("\n---\n").unwrap() + 1;
                    assert_eq!(&rest[end + 4..], body);
                    rest[..end].to_string()
                } else {
                    file.to_string()
                }
            };
            std::fs::write(&path, file(&text)).unwrap();
            let orig: Mapping = serde_norway::from_str(&text).unwrap();
            ok(&root, &["local", "to-db", "-q"]);
            prop_assert_eq!(ok(&root, &["local", "diff"]), "");
            common::set_mtime(&path, 1_600_000_000, 0);
            let before = stamps(&root.join("items"));
            prop_assert_eq!(ok(&root, &["local", "to-disk"]), "");
            prop_assert_eq!(changed(&before, &stamps(&root.join("items"))), [""; 0]);

            // One field changed in the table.
            let f = FIELDS[change];
            Connection::open(root.join("data/app.db"))
                .unwrap()
                .execute(&format!("UPDATE items SET {f} = ?1"), [sql_value(&new)])
                .unwrap();
            ok(&root, &["local", "to-disk", "-q"]);
            let now = fields_of(&std::fs::read_to_string(&path).unwrap());
            let back: Mapping = serde_norway::from_str(&now)
                .map_err(|e| TestCaseError::fail(format!("{e}\n{now}")))?;
            let mut want = orig.clone();
            if new == Y::Null {
                // (A NULL that was NULL already changes nothing: the file's
                // `f: null` stays as written.)
                if vals[change].0 != Y::Null {
                    want.remove(f);
                }
            } else {
                want.insert(Y::String(f.into()), new.clone());
            }
            prop_assert_eq!(
                as_json(&Y::Mapping(back)),
                as_json(&Y::Mapping(want)),
                "was:\n{}\nnow:\n{}", text, now
            );
            // The other fields keep their bytes.
            let keep = |t: &str| -> Vec<(String, String)> {
                chunks(t).into_iter().filter(|(n, _)| n != f).collect()
            };
            prop_assert_eq!(keep(&now), keep(&text), "now:\n{}", now);
            // And the file reads back as the row.
            prop_assert_eq!(ok(&root, &["local", "diff"]), "", "now:\n{}", now);
        }
    }
}

/// An application writes JSON its own way (spaces, another key order):
/// that is no change, and a real change written that way still reaches
/// the file as a list, in the list's style, not as a string.
#[test]
fn json_an_application_writes_with_spaces_is_a_list_not_a_string() {
    let (_tmp, root) = synced();
    let services = root.join("services");
    let before = stamps(&services);
    // The same values, spelled differently.
    sql(
        &root,
        r#"UPDATE skills SET tags = '[ "review", "quality: code",  "tests" ]' WHERE id = 'code-review';
           UPDATE agents SET model = '{"temperature": 0.2, "name": "claude-sonnet", "provider": "anthropic"}' WHERE name = 'reviewer'"#,
    );
    assert_eq!(ok(&root, &["local", "diff"]), "");
    ok(&root, &["local", "to-disk", "-q"]);
    ok(&root, &["local", "to-db", "-q"]);
    assert_eq!(changed(&before, &stamps(&services)), [""; 0]);
    // The application's spelling is left as it wrote it.
    assert_eq!(
        one(&root, "SELECT tags FROM skills WHERE id = 'code-review'"),
        r#"[ "review", "quality: code",  "tests" ]"#
    );

    // A real change, spelled with spaces: the file gets a block list.
    sql(
        &root,
        r#"UPDATE skills SET tags = '[ "review", "tests" ]' WHERE id = 'code-review'"#,
    );
    assert_eq!(
        ok(&root, &["local", "diff", "--collection", "skills"]),
        "M skills/code-review (services/skills/code-review/config.yaml) [tags] (database changed)\n"
    );
    ok(&root, &["local", "to-disk", "-q"]);
    let text = read(&root, "services/skills/code-review/config.yaml");
    assert!(
        text.contains("tags:\n  - review\n  - tests\nexamples:"),
        "{text}"
    );
    assert_eq!(
        changed(&before, &stamps(&services)),
        ["skills/code-review/config.yaml"]
    );
    assert_eq!(ok(&root, &["local", "diff"]), "");
}
