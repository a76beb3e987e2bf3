//! Rows as sp-sync stores them (`store-format.md` §3.7): a SQLite value
//! kept exactly ([`Value`]), a row's cells ([`Cell`]: small values inline,
//! large TEXT and BLOB values as chunk lists like file contents), and the
//! canonical row encoding ([`encode_row`], [`decode_row`]). The row map
//! (tag 6) holds these bytes as its values; keys are encoded by `db`.

use crate::chunker::Chunker;
use crate::codec::{DecodeError, Reader, Writer};
use crate::error::{Result, SyncError};
use crate::id::{ObjectId, ObjectType};
use crate::object::list::{ChunkRef, ListBuilder, MAX_INLINE};
use crate::object::tree::Content;
use crate::object::{ObjectSink, ObjectSource};

/// TEXT and BLOB values longer than this are stored as chunks.
pub const MAX_INLINE_VALUE: usize = 4096;
/// The most columns a row may have (SQLite's hard limit is 32,767).
pub const MAX_COLUMNS: usize = 32_767;
/// The largest TEXT or BLOB value: SQLite's hard upper bound for
/// `SQLITE_MAX_LENGTH` (2^31 - 1 bytes).
pub const MAX_VALUE_LEN: u64 = (1 << 31) - 1;
/// A row whose plain encoding (values of at most [`MAX_INLINE_VALUE`]
/// bytes inline) is longer than this, the most a map entry holds, is
/// *spilled*: its TEXT and BLOB values longer than [`SPILL_MIN`] bytes are
/// stored as chunks too (§3.7). Rows that fit are never spilled, so every
/// row encoded before spilling existed keeps its bytes.
pub const ROW_SPILL_AT: usize = 1 << 20;
/// In a spilled row, TEXT and BLOB values longer than this are chunked.
pub const SPILL_MIN: usize = 64;

/// Whether a TEXT or BLOB value of `len` bytes is stored as chunks.
pub fn stored_large(len: u64, spilled: bool) -> bool {
    len > MAX_INLINE_VALUE as u64 || (spilled && len > SPILL_MIN as u64)
}

/// What loading a large value reserves up front at most; the rest grows
/// as its (verified) chunks arrive.
const LOAD_RESERVE: u64 = 4 << 20;

/// A SQLite value with its storage class, kept exactly (REALs bit for bit).
#[derive(Debug, Clone)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(Vec<u8>),
    Blob(Vec<u8>),
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Integer(a), Value::Integer(b)) => a == b,
            (Value::Real(a), Value::Real(b)) => a.to_bits() == b.to_bits(),
            (Value::Text(a), Value::Text(b)) | (Value::Blob(a), Value::Blob(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Value {}

impl Value {
    /// The value as JSON, so that two different values never print alike:
    /// numbers as numbers (a REAL's infinities and NaN as `{"real": "inf"}`,
    /// `"-inf"`, `"nan"`: a string alone would be the TEXT `'inf'`), TEXT as
    /// a string (TEXT that is not UTF-8 as `{"text_hex": "<hex>"}`: replacing
    /// its bytes would make two keys one), BLOB as `{"blob": "<hex>"}`, NULL
    /// as null.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Integer(i) => serde_json::Value::from(*i),
            Value::Real(r) => match serde_json::Number::from_f64(*r) {
                Some(n) => serde_json::Value::Number(n),
                None => {
                    let name = if r.is_nan() {
                        "nan"
                    } else if *r > 0.0 {
                        "inf"
                    } else {
                        "-inf"
                    };
                    serde_json::json!({ "real": name })
                }
            },
            Value::Text(t) => match std::str::from_utf8(t) {
                Ok(s) => s.into(),
                Err(_) => serde_json::json!({ "text_hex": crate::id::hex(t) }),
            },
            Value::Blob(b) => serde_json::json!({ "blob": crate::id::hex(b) }),
        }
    }

    /// The value as a SQL literal, for people: `NULL`, `42`, `1.5`, `'it''s'`, `x'00ff'`.
    pub fn to_sql(&self) -> String {
        match self {
            Value::Null => "NULL".into(),
            Value::Integer(i) => i.to_string(),
            Value::Real(r) if r.is_infinite() => if *r > 0.0 { "1e999" } else { "-1e999" }.into(),
            Value::Real(r) => format!("{r:?}"),
            Value::Text(t) => text_sql(t),
            Value::Blob(b) => format!("x'{}'", crate::id::hex(b)),
        }
    }
}

/// A TEXT value as an SQL literal that shows it exactly, on one line:
/// control characters as `char(N)` and bytes that are not UTF-8 as
/// `CAST(x'…' AS TEXT)`, so that two different keys never print alike and
/// a key never starts a line of its own.
fn text_sql(t: &[u8]) -> String {
    let Ok(s) = std::str::from_utf8(t) else {
        return format!("CAST(x'{}' AS TEXT)", crate::id::hex(t));
    };
    if !s.chars().any(char::is_control) {
        return format!("'{}'", s.replace('\'', "''"));
    }
    let mut parts: Vec<String> = Vec::new();
    let mut run = String::new();
    for c in s.chars() {
        if c.is_control() {
            if !run.is_empty() {
                parts.push(format!("'{}'", run.replace('\'', "''")));
                run.clear();
            }
            parts.push(format!("char({})", u32::from(c)));
        } else {
            run.push(c);
        }
    }
    if !run.is_empty() {
        parts.push(format!("'{}'", run.replace('\'', "''")));
    }
    parts.join(" || ")
}

/// A value as stored in a row: small values inline, large TEXT and BLOB
/// values as a chunk list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    Value(Value),
    /// `text` tells TEXT from BLOB.
    Large {
        text: bool,
        size: u64,
        content: Content,
    },
}

pub(crate) const C_NULL: u8 = 0;
pub(crate) const C_INT: u8 = 1;
pub(crate) const C_REAL: u8 = 2;
pub(crate) const C_TEXT: u8 = 3;
pub(crate) const C_BLOB: u8 = 4;
pub(crate) const C_TEXT_LARGE: u8 = 5;
pub(crate) const C_BLOB_LARGE: u8 = 6;

impl Cell {
    /// Objects the cell references.
    pub fn refs(&self) -> Vec<(ObjectType, ObjectId)> {
        match self {
            Cell::Value(_) => Vec::new(),
            Cell::Large { content, .. } => content.refs(),
        }
    }

    /// [`load`](Self::load), giving an inline value itself, not a copy.
    pub fn into_value(self, src: &dyn ObjectSource) -> Result<Value> {
        match self {
            Cell::Value(v) => Ok(v),
            large => large.load(src),
        }
    }

    /// The value, reading a large one's chunks (each verified) from `src`.
    pub fn load(&self, src: &dyn ObjectSource) -> Result<Value> {
        match self {
            Cell::Value(v) => Ok(v.clone()),
            Cell::Large {
                text,
                size,
                content,
            } => {
                // The size is only what the row says: reserve little, and
                // never read past it.
                let reserve = usize::try_from((*size).min(LOAD_RESERVE)).unwrap_or(0);
                let mut buf = Vec::with_capacity(reserve);
                for c in content.chunks(src, *size) {
                    let c = c?;
                    let data = src.get(ObjectType::Chunk, &c.id)?;
                    if data.len() as u64 != c.len {
                        return Err(crate::object::corrupt(
                            ObjectType::Chunk,
                            &c.id,
                            "chunk length differs from its list",
                        ));
                    }
                    if buf.len() as u64 + c.len > *size {
                        return Err(crate::object::corrupt(
                            ObjectType::Chunk,
                            &c.id,
                            format!("chunks of a value run past its size {size}"),
                        ));
                    }
                    buf.extend_from_slice(&data);
                }
                if buf.len() as u64 != *size {
                    return Err(SyncError::Invalid(format!(
                        "a large value's chunks hold {} bytes, its size is {size}",
                        buf.len()
                    )));
                }
                Ok(if *text {
                    Value::Text(buf)
                } else {
                    Value::Blob(buf)
                })
            }
        }
    }
}

/// Cuts a large value into chunks, stores them and returns its content.
pub fn store_large(b: &[u8], sink: &dyn ObjectSink, chunker: &Chunker) -> Result<Content> {
    let mut refs = Vec::new();
    let mut p = 0;
    for n in chunker.cut_all(b) {
        let s = &b[p..p + n];
        p += n;
        let id = ObjectId::compute(ObjectType::Chunk, s);
        sink.put_hashed(ObjectType::Chunk, id, s)?;
        refs.push(ChunkRef {
            id,
            len: s.len() as u64,
        });
    }
    if refs.len() <= MAX_INLINE {
        return Ok(Content::Inline(refs));
    }
    let mut lb = ListBuilder::new(sink);
    for c in refs {
        lb.push(c)?;
    }
    let (level, root) = lb.finish()?;
    Ok(Content::Indirect { level, root })
}

/// Decodes a row: `count (varint)` then that many cells.
pub fn decode_row(b: &[u8]) -> std::result::Result<Vec<Cell>, DecodeError> {
    let mut r = Reader::new(b);
    let n = r.varint_max(MAX_COLUMNS as u64 + 1, "column count")? as usize;
    // Every cell takes at least one byte.
    let mut out = Vec::with_capacity(n.min(r.remaining()));
    // The length of the row's plain encoding (see ROW_SPILL_AT).
    let mut plain = r.pos();
    for _ in 0..n {
        let start = r.pos();
        let tag = r.u8()?;
        let c = match tag {
            C_NULL => Cell::Value(Value::Null),
            C_INT => Cell::Value(Value::Integer(r.zigzag()?)),
            C_REAL => {
                let x = r.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(x);
                Cell::Value(Value::Real(f64::from_bits(u64::from_be_bytes(a))))
            }
            C_TEXT => Cell::Value(Value::Text(r.bytes(MAX_INLINE_VALUE)?.to_vec())),
            C_BLOB => Cell::Value(Value::Blob(r.bytes(MAX_INLINE_VALUE)?.to_vec())),
            C_TEXT_LARGE | C_BLOB_LARGE => {
                let size = r.varint()?;
                if size <= SPILL_MIN as u64 {
                    return r.err(format!("a value of {size} bytes must be inline"));
                }
                if size > MAX_VALUE_LEN {
                    return r.err(format!(
                        "a value of {size} bytes is larger than SQLite allows"
                    ));
                }
                let content = Content::decode(&mut r, size)?;
                Cell::Large {
                    text: tag == C_TEXT_LARGE,
                    size,
                    content,
                }
            }
            t => return r.err(format!("unknown value type {t}")),
        };
        plain += match &c {
            Cell::Large { size, .. } if *size <= MAX_INLINE_VALUE as u64 => {
                1 + crate::codec::varint_len(*size) + *size as usize
            }
            _ => r.pos() - start,
        };
        out.push(c);
    }
    r.finish()?;
    // Which values are chunks follows from the values' lengths alone.
    let lens = |c: &Cell| match c {
        Cell::Value(Value::Text(b) | Value::Blob(b)) => Some(b.len() as u64),
        Cell::Large { size, .. } => Some(*size),
        Cell::Value(_) => None,
    };
    let spilled = plain > ROW_SPILL_AT;
    for c in &out {
        let large = matches!(c, Cell::Large { .. });
        if let Some(n) = lens(c)
            && large != stored_large(n, spilled)
        {
            return Err(DecodeError {
                offset: 0,
                what: format!(
                    "a value of {n} bytes must be {} in a{} row",
                    if large { "inline" } else { "chunked" },
                    if spilled { " spilled" } else { "n unspilled" }
                ),
            });
        }
    }
    Ok(out)
}

/// Encodes decoded cells again (the inverse of [`decode_row`]).
pub fn encode_row(cells: &[Cell]) -> Vec<u8> {
    let mut w = Writer::with_capacity(8 + 2 * cells.len());
    w.varint(cells.len() as u64);
    for c in cells {
        match c {
            Cell::Value(Value::Null) => {
                w.u8(C_NULL);
            }
            Cell::Value(Value::Integer(i)) => {
                w.u8(C_INT).zigzag(*i);
            }
            Cell::Value(Value::Real(r)) => {
                w.u8(C_REAL).raw(&r.to_bits().to_be_bytes());
            }
            Cell::Value(Value::Text(t)) => {
                w.u8(C_TEXT).bytes(t);
            }
            Cell::Value(Value::Blob(b)) => {
                w.u8(C_BLOB).bytes(b);
            }
            Cell::Large {
                text,
                size,
                content,
            } => {
                w.u8(if *text { C_TEXT_LARGE } else { C_BLOB_LARGE })
                    .varint(*size);
                content.encode(&mut w);
            }
        }
    }
    w.into_vec()
}

#[cfg(test)]
mod text_sql_tests {
    use super::Value;

    /// Keys print exactly and on one line: a newline, a non-UTF-8 byte and
    /// a quote each show as themselves.
    #[test]
    fn text_prints_as_an_exact_one_line_literal() {
        let t = |b: &[u8]| Value::Text(b.to_vec()).to_sql();
        assert_eq!(t(b"plain"), "'plain'");
        assert_eq!(t(b"it's"), "'it''s'");
        assert_eq!(t(b"a\nb"), "'a' || char(10) || 'b'");
        assert_eq!(t(b"\x1b[31m"), "char(27) || '[31m'");
        assert_eq!(t(b"\xffa"), "CAST(x'ff61' AS TEXT)");
        assert_ne!(t(b"\xffa"), t("\u{fffd}a".as_bytes()));
        assert!(!t(b"x\r\ny").contains('\n'));
    }
}
