//! The layering of `src/`, checked from the source: a lower module never
//! names an upper one. Every `crate::…` path (in `use` lines and inline) of
//! every file is read, comments skipped.
//!
//! - the floor (`id.rs`, `codec.rs`, `error.rs`) names only the floor;
//! - the objects (`object/`, `pmap.rs`, `chunker.rs`) name only the floor
//!   and each other: no `db`, `store`, `snapshot`, … above them;
//! - the binary's code (`src/cli/`) names only the façade ([`FACADE`]
//!   modules and the crate root's re-exports): never a module under it
//!   ([`CLI_FORBIDDEN`], every `#[doc(hidden)]` module of `lib.rs`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level modules a file names through `crate::` paths, with the
/// line each is named on. `use crate::{a, b::c}` names `a` and `b`.
fn named_modules(src: &str) -> Vec<(String, usize)> {
    let mut out = named_through(src, "crate::");
    // The binary (main.rs, cli/) names the library by its crate name.
    out.extend(named_through(src, "systemprompt_sync::"));
    out
}

fn named_through(src: &str, prefix: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let mut in_use_group: Option<usize> = None;
    for (n, line) in src.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let code = code.trim();
        if let Some(depth) = in_use_group.as_mut() {
            // Inside `use crate::{ … }`: top-level names at depth 1.
            for name in group_names(code, depth) {
                out.push((name, n + 1));
            }
            if *depth == 0 {
                in_use_group = None;
            }
            continue;
        }
        let mut rest = code;
        while let Some(i) = rest.find(prefix) {
            if prefix == "crate::" && rest[..i].ends_with("systemprompt_sync::") {
                rest = &rest[i + prefix.len()..];
                continue;
            }
            let after = &rest[i + prefix.len()..];
            if let Some(group) = after.strip_prefix('{') {
                let mut depth = 1;
                for name in group_names(group, &mut depth) {
                    out.push((name, n + 1));
                }
                if depth > 0 {
                    in_use_group = Some(depth);
                }
                break;
            }
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push((name, n + 1));
            }
            rest = after;
        }
    }
    out
}

/// Names at depth 1 of a `{ … }` group, given the depth at the start of
/// `s`; updates the depth.
fn group_names(s: &str, depth: &mut usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut at_start = *depth == 1;
    for c in s.chars() {
        match c {
            '{' => {
                *depth += 1;
                at_start = false;
                word.clear();
            }
            '}' => {
                if *depth == 1 && at_start && !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
                *depth = depth.saturating_sub(1);
                word.clear();
                if *depth == 0 {
                    break;
                }
            }
            ',' => {
                if *depth == 1 && at_start && !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
                word.clear();
                at_start = *depth == 1;
            }
            ':' => {
                if *depth == 1 && at_start && !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
                at_start = false;
                word.clear();
            }
            c if c.is_alphanumeric() || c == '_' => {
                if at_start {
                    word.push(c);
                }
            }
            _ => {
                if *depth == 1 && at_start && !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                    at_start = false;
                }
            }
        }
    }
    if *depth == 1 && at_start && !word.is_empty() {
        out.push(word);
    }
    out
}

/// The module a file belongs to: `src/object/tree.rs` → `object`.
fn module_of(rel: &Path) -> String {
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

fn violations(allowed: impl Fn(&str, &str) -> bool) -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut bad = Vec::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let module = module_of(rel);
        let text = std::fs::read_to_string(&f).unwrap();
        for (name, line) in named_modules(&text) {
            if !allowed(&module, &name) {
                bad.push(format!(
                    "{}:{line}: {module} names crate::{name}",
                    rel.display()
                ));
            }
        }
    }
    bad
}

const FLOOR: &[&str] = &["id", "codec", "error"];
const OBJECTS: &[&str] = &["object", "pmap", "chunker"];
/// The façade: the public modules a program (and the binary) calls.
const FACADE: &[&str] = &[
    "bundle", "cache", "checkout", "commands", "compare", "deploy", "error", "local", "progress",
    "sync",
];
/// What `src/cli/` may not name: the internals under the façade.
const CLI_FORBIDDEN: &[&str] = &[
    "block",
    "chunker",
    "codec",
    "collection",
    "db",
    "dict",
    "diff",
    "id",
    "names",
    "object",
    "pack",
    "patch",
    "pmap",
    "remote",
    "restore",
    "rt",
    "server",
    "snapshot",
    "sources",
    "store",
    "transfer",
    "workspace",
];

/// `lib.rs`'s `pub mod`s: (the public ones, the `#[doc(hidden)]` ones).
fn lib_modules() -> (BTreeSet<String>, BTreeSet<String>) {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs");
    let text = std::fs::read_to_string(lib).unwrap();
    let (mut public, mut hidden) = (BTreeSet::new(), BTreeSet::new());
    let mut hide = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with("#[") && line.contains("doc(hidden)") {
            hide = true;
        } else if let Some(m) = line.strip_prefix("pub mod ") {
            let m = m.trim_end_matches(';').to_string();
            if std::mem::take(&mut hide) {
                hidden.insert(m);
            } else {
                public.insert(m);
            }
        } else if !line.starts_with("#[") {
            hide = false;
        }
    }
    (public, hidden)
}

#[test]
fn the_floor_and_the_objects_name_nothing_above_them() {
    let bad = violations(|module, name| {
        if FLOOR.contains(&module) {
            FLOOR.contains(&name)
        } else if OBJECTS.contains(&module) {
            FLOOR.contains(&name) || OBJECTS.contains(&name)
        } else {
            true
        }
    });
    assert!(
        bad.is_empty(),
        "lower modules name upper ones:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_cli_names_only_the_facade() {
    let bad = violations(|module, name| module != "cli" || !CLI_FORBIDDEN.contains(&name));
    assert!(
        bad.is_empty(),
        "src/cli/ reaches under the façade:\n{}",
        bad.join("\n")
    );
}

/// The lists above are `lib.rs`'s: a new module is either façade or internal.
#[test]
fn the_facade_list_is_lib_rs() {
    let (public, hidden) = lib_modules();
    let set = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        public,
        set(FACADE),
        "FACADE must list lib.rs's public modules"
    );
    assert_eq!(
        hidden,
        set(CLI_FORBIDDEN),
        "CLI_FORBIDDEN must list lib.rs's #[doc(hidden)] modules"
    );
}

#[test]
fn the_check_sees_what_it_must() {
    let found = |s: &str| {
        named_modules(s)
            .into_iter()
            .map(|(n, _)| n)
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(
        found("use crate::store::Store;"),
        ["store".to_string()].into()
    );
    assert_eq!(
        found("use crate::{db::value::Cell, id::ObjectId, pmap};"),
        ["db".to_string(), "id".into(), "pmap".into()].into()
    );
    assert_eq!(
        found("use crate::{\n    db::{table, value},\n    store::Store,\n};"),
        ["db".to_string(), "store".into()].into()
    );
    assert_eq!(
        found("let x = crate::pmap::MAX_LEVEL + crate::db::value::MAX_COLUMNS;"),
        ["pmap".to_string(), "db".into()].into()
    );
    assert!(found("// crate::store in a comment").is_empty());
    assert_eq!(
        found("use systemprompt_sync::{LockMode, store::fsck::fsck};"),
        ["LockMode".to_string(), "store".into()].into()
    );
}
