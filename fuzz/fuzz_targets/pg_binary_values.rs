//! One field of a binary COPY tuple (the server's bytes), read as each
//! class sp-sync reads in binary: never panics, and what it gives for the
//! classes printed as text (`uuid`, `numeric`, dates and times) is ASCII
//! (text, `json`, `jsonb` and enum labels are the server's text as sent).
#![no_main]

use libfuzzer_sys::fuzz_target;
use systemprompt_sync::db::pg::PgClass;
use systemprompt_sync::db::value::Value;

fuzz_target!(|data: &[u8]| {
    for class in [
        PgClass::Int,
        PgClass::Float4,
        PgClass::Float8,
        PgClass::Bool,
        PgClass::Bytea,
        PgClass::Text,
        PgClass::Uuid,
        PgClass::Numeric,
        PgClass::Date,
        PgClass::Time,
        PgClass::Timestamp,
        PgClass::Timestamptz,
        PgClass::Json,
        PgClass::Jsonb,
        PgClass::Enum,
        PgClass::Bpchar,
        PgClass::Other,
    ] {
        if let (Ok(Value::Text(t)), false) = (
            class.parse_binary(data),
            matches!(
                class,
                PgClass::Text | PgClass::Json | PgClass::Jsonb | PgClass::Enum
            ),
        ) {
            assert!(t.is_ascii(), "{class:?}: {t:?}");
        }
    }
});
