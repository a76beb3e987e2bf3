//! PostgreSQL: URLs (user input) and the conversion of stored cells to and
//! from PostgreSQL's text forms (cells come from untrusted stores): never a
//! panic; a redacted URL never holds the password; a value that converts to
//! text parses back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use systemprompt_sync::db::pg::{PgClass, PgLocation};
use systemprompt_sync::db::value::{Cell, decode_row};

const TYPES: [&str; 9] = [
    "bigint",
    "real",
    "double precision",
    "boolean",
    "bytea",
    "text",
    "character(3)",
    "uuid",
    "numeric",
];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    if sel & 1 == 0 {
        if let Ok(s) = std::str::from_utf8(rest) {
            let _ = PgLocation::parse(s).map(|l| l.redacted());
        }
        return;
    }
    let class = PgClass::of(TYPES[usize::from(sel >> 1) % TYPES.len()]);
    if let Ok(cells) = decode_row(rest) {
        for c in cells {
            if let Cell::Value(v) = c
                && let Ok(Some(t)) = class.text(&v)
            {
                let back = class.parse(&t);
                let nan = matches!(v, systemprompt_sync::db::value::Value::Real(r) if r.is_nan());
                if class != PgClass::Float4 && !nan {
                    assert_eq!(back.as_ref(), Ok(&v), "{class:?} {v:?}");
                }
            }
        }
    }
    let _ = class.parse(rest);
});
