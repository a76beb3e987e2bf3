//! The SQL a PostgreSQL table object records (untrusted): the lexer and
//! every statement check never panic, and whatever a check accepts is one
//! statement that names the object's own table (or, for a constraint or an
//! index, one of the partitions its script makes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use systemprompt_sync::db::pg_guard::{
    Action, Tok, constraint, index, sequence_value, statements, table_script,
    table_script_and_partitions, view,
};

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    let _ = statements(sql);
    let mut parts = vec!["p".to_string()];
    if let Ok((acts, made)) = table_script_and_partitions(sql, "t") {
        assert!(made.iter().all(|p| p != "t"), "{made:?}");
        parts.extend(made);
        for a in acts {
            match a {
                Action::Exec(s)
                | Action::Composite { sql: s, .. }
                | Action::Domain { sql: s, .. }
                | Action::Extension { sql: s, .. } => {
                    assert_eq!(statements(&s).map(|v| v.len()).unwrap_or(0), 1);
                }
                // Row security is run too: one `ALTER TABLE t … ROW LEVEL
                // SECURITY` and nothing more.
                Action::RowSecurity(s) => {
                    let st = statements(&s).unwrap_or_default();
                    assert_eq!(st.len(), 1);
                    assert_eq!(st[0].toks.len(), 7);
                    assert!(matches!(
                        &st[0].toks[2],
                        Tok::Word(w) | Tok::Quoted(w) if w == "t"
                    ));
                }
                _ => {}
            }
        }
    }
    for s in [
        constraint(sql, "t", &parts).map(|g| g.sql),
        index(sql, "t", &parts),
        view(sql, "t"),
    ]
    .into_iter()
    .flatten()
    {
        assert_eq!(statements(&s).map(|v| v.len()).unwrap_or(0), 1);
    }
    let _ = sequence_value(sql, "t");
    // A table of an empty name (a `""` in the script names it): a check
    // that compares names must not take a missing one for it.
    let _ = table_script(sql, "");
});
