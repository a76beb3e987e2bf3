//! SQLite values as sp-sync stores them: primary keys encoded so that byte
//! order is SQLite's order, and rows encoded canonically with large values
//! kept in chunks like file contents. Both are specified in
//! `store-format.md` §3.7.
//!
//! **Keys** are the concatenation of one component per key column, then,
//! when any component is a number, a `00` byte and one type byte per number
//! (in order):
//!
//! | value | component |
//! | --- | --- |
//! | NULL | `01` |
//! | zero | `02 02` |
//! | positive number | `02 03 E[2] M[8]` |
//! | negative number | `02 01 !E[2] !M[8]` |
//! | TEXT | `03` the bytes with `00` escaped as `00 ff`, then `00 01` |
//! | BLOB | `04` likewise |
//!
//! where `|x| = 2^(E - 0x4000) × 1.M` (M the bits after the leading one,
//! left-aligned in 64 bits, big endian), `E = ffff, M = 0` for infinity, and
//! `!` is bitwise not. The type bytes are `00` INTEGER, `01` REAL, `02` REAL
//! -0.0. SQLite compares INTEGER and REAL values by their mathematical value
//! and treats 1 and 1.0 as equal, going on to the next column; so do these
//! bytes, since the types come only after every component.

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
    pub fn from_ref(v: rusqlite::types::ValueRef<'_>) -> Value {
        use rusqlite::types::ValueRef;
        match v {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(i) => Value::Integer(i),
            ValueRef::Real(r) => Value::Real(r),
            ValueRef::Text(t) => Value::Text(t.to_vec()),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        }
    }

    pub fn as_ref(&self) -> rusqlite::types::ValueRef<'_> {
        use rusqlite::types::ValueRef;
        match self {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(r) => ValueRef::Real(*r),
            Value::Text(t) => ValueRef::Text(t),
            Value::Blob(b) => ValueRef::Blob(b),
        }
    }

    /// The value as a statement parameter.
    pub fn sql(&self) -> Sql<'_> {
        Sql(self.as_ref())
    }

    /// The value as JSON: numbers as numbers (infinities as the strings
    /// `"inf"`, `"-inf"`), TEXT as a string (invalid UTF-8 replaced), BLOB
    /// as `{"blob": "<hex>"}`, NULL as null.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Integer(i) => serde_json::Value::from(*i),
            Value::Real(r) => match serde_json::Number::from_f64(*r) {
                Some(n) => serde_json::Value::Number(n),
                None if *r > 0.0 => "inf".into(),
                None if *r < 0.0 => "-inf".into(),
                None => "nan".into(),
            },
            Value::Text(t) => String::from_utf8_lossy(t).into_owned().into(),
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
            Value::Text(t) => format!("'{}'", String::from_utf8_lossy(t).replace('\'', "''")),
            Value::Blob(b) => format!("x'{}'", crate::id::hex(b)),
        }
    }
}

/// A borrowed value bound as a statement parameter.
#[derive(Debug, Clone, Copy)]
pub struct Sql<'a>(pub rusqlite::types::ValueRef<'a>);

impl rusqlite::ToSql for Sql<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(rusqlite::types::ToSqlOutput::Borrowed(self.0))
    }
}

const K_NULL: u8 = 0x01;
const K_NUM: u8 = 0x02;
const K_TEXT: u8 = 0x03;
const K_BLOB: u8 = 0x04;
const SIGN_NEG: u8 = 0x01;
const SIGN_ZERO: u8 = 0x02;
const SIGN_POS: u8 = 0x03;
const T_INT: u8 = 0x00;
const T_REAL: u8 = 0x01;
const T_NEG_ZERO: u8 = 0x02;
const EXP_BIAS: i32 = 0x4000;
const EXP_INF: u16 = 0xffff;

/// Magnitude of a nonzero number as (biased exponent, mantissa bits after the
/// leading one, left-aligned).
fn int_magnitude(v: i64) -> (u16, u64) {
    let m = v.unsigned_abs();
    let e = 63 - m.leading_zeros() as i32;
    let frac = if e == 0 { 0 } else { m << (64 - e) };
    ((e + EXP_BIAS) as u16, frac)
}

fn real_magnitude(r: f64) -> (u16, u64) {
    if r.is_infinite() {
        return (EXP_INF, 0);
    }
    let bits = r.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32;
    let f = bits & ((1u64 << 52) - 1);
    if exp == 0 {
        // Subnormal: f × 2^-1074, f != 0.
        let p = 63 - f.leading_zeros() as i32;
        let frac = if p == 0 { 0 } else { f << (64 - p) };
        ((p - 1074 + EXP_BIAS) as u16, frac)
    } else {
        ((exp - 1023 + EXP_BIAS) as u16, f << 12)
    }
}

fn put_escaped(out: &mut Vec<u8>, b: &[u8]) {
    for &c in b {
        out.push(c);
        if c == 0 {
            out.push(0xff);
        }
    }
    out.extend_from_slice(&[0, 1]);
}

/// Builds keys: components as values come, the type bytes of the numbers at
/// the end. Reusable across keys.
#[derive(Debug, Default, Clone)]
pub struct KeyWriter {
    buf: Vec<u8>,
    types: Vec<u8>,
}

impl KeyWriter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.types.clear();
    }

    /// Appends a component. Fails on NaN (SQLite never stores one).
    pub fn push(&mut self, v: rusqlite::types::ValueRef<'_>) -> Result<()> {
        use rusqlite::types::ValueRef;
        let out = &mut self.buf;
        let mut num = |neg: bool, (e, m): (u16, u64)| {
            out.push(K_NUM);
            if neg {
                out.push(SIGN_NEG);
                out.extend_from_slice(&(!e).to_be_bytes());
                out.extend_from_slice(&(!m).to_be_bytes());
            } else {
                out.push(SIGN_POS);
                out.extend_from_slice(&e.to_be_bytes());
                out.extend_from_slice(&m.to_be_bytes());
            }
        };
        match v {
            ValueRef::Null => out.push(K_NULL),
            ValueRef::Integer(0) => {
                out.extend_from_slice(&[K_NUM, SIGN_ZERO]);
                self.types.push(T_INT);
            }
            ValueRef::Integer(i) => {
                num(i < 0, int_magnitude(i));
                self.types.push(T_INT);
            }
            ValueRef::Real(r) if r.is_nan() => {
                return Err(SyncError::Database(
                    "a key holds NaN, which SQLite cannot store".into(),
                ));
            }
            ValueRef::Real(r) if r == 0.0 => {
                out.extend_from_slice(&[K_NUM, SIGN_ZERO]);
                self.types.push(if r.is_sign_negative() {
                    T_NEG_ZERO
                } else {
                    T_REAL
                });
            }
            ValueRef::Real(r) => {
                num(r < 0.0, real_magnitude(r));
                self.types.push(T_REAL);
            }
            ValueRef::Text(t) => {
                out.push(K_TEXT);
                put_escaped(out, t);
            }
            ValueRef::Blob(b) => {
                out.push(K_BLOB);
                put_escaped(out, b);
            }
        }
        Ok(())
    }

    /// The key so far, with its type bytes.
    pub fn finish(&mut self) -> &[u8] {
        if !self.types.is_empty() {
            self.buf.push(0);
            self.buf.extend_from_slice(&self.types);
            self.types.clear();
        }
        &self.buf
    }
}

/// Encodes a whole key.
pub fn encode_key(values: &[Value]) -> Result<Vec<u8>> {
    let mut w = KeyWriter::new();
    for v in values {
        w.push(v.as_ref())?;
    }
    Ok(w.finish().to_vec())
}

/// A number's component, before its type is known.
enum Num {
    Zero,
    NonZero { neg: bool, e: u16, m: u64 },
}

fn decode_number(r: &mut Reader<'_>) -> std::result::Result<Num, DecodeError> {
    let sign = r.u8()?;
    if sign == SIGN_ZERO {
        return Ok(Num::Zero);
    }
    if sign != SIGN_NEG && sign != SIGN_POS {
        return r.err(format!("bad number sign {sign}"));
    }
    let neg = sign == SIGN_NEG;
    let eb = r.take(2)?;
    let mb = r.take(8)?;
    let mut e = u16::from_be_bytes([eb[0], eb[1]]);
    let mut m = u64::from_be_bytes(mb.try_into().unwrap_or([0; 8]));
    if neg {
        e = !e;
        m = !m;
    }
    Ok(Num::NonZero { neg, e, m })
}

fn typed_number(n: &Num, t: u8) -> std::result::Result<Value, String> {
    Ok(match (n, t) {
        (Num::Zero, T_INT) => Value::Integer(0),
        (Num::Zero, T_REAL) => Value::Real(0.0),
        (Num::Zero, T_NEG_ZERO) => Value::Real(-0.0),
        (Num::NonZero { neg, e, m }, T_INT) => {
            let exp = i32::from(*e) - EXP_BIAS;
            if !(0..=63).contains(&exp) {
                return Err("integer exponent out of range".into());
            }
            let mag: u128 = (1u128 << exp)
                | if exp == 0 {
                    0
                } else {
                    u128::from(m >> (64 - exp))
                };
            let v: i128 = if *neg { -(mag as i128) } else { mag as i128 };
            Value::Integer(i64::try_from(v).map_err(|_| "integer out of range".to_string())?)
        }
        (Num::NonZero { neg, e, m }, T_REAL) => {
            if *e == EXP_INF {
                Value::Real(if *neg {
                    f64::NEG_INFINITY
                } else {
                    f64::INFINITY
                })
            } else {
                let exp = i32::from(*e) - EXP_BIAS;
                let bits = if exp >= -1022 {
                    if exp > 1023 {
                        return Err("real exponent out of range".into());
                    }
                    ((exp + 1023) as u64) << 52 | (m >> 12)
                } else {
                    let p = exp + 1074;
                    if !(0..=51).contains(&p) {
                        return Err("real exponent out of range".into());
                    }
                    (1u64 << p) | if p == 0 { 0 } else { m >> (64 - p) }
                };
                let x = f64::from_bits(bits);
                Value::Real(if *neg { -x } else { x })
            }
        }
        (_, t) => return Err(format!("bad number type {t}")),
    })
}

fn decode_escaped(r: &mut Reader<'_>) -> std::result::Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    loop {
        let c = r.u8()?;
        if c != 0 {
            out.push(c);
            continue;
        }
        match r.u8()? {
            0xff => out.push(0),
            1 => return Ok(out),
            x => return r.err(format!("bad escape 00 {x:02x} in a key")),
        }
    }
}

/// Decodes a key into its values. Rejects every byte string the encoder
/// would not produce.
pub fn decode_key(b: &[u8]) -> std::result::Result<Vec<Value>, DecodeError> {
    enum Part {
        V(Value),
        N(Num),
    }
    let mut r = Reader::new(b);
    let mut parts = Vec::new();
    let mut nums = 0usize;
    while !r.is_empty() {
        let part = match r.u8()? {
            0 => break,
            K_NULL => Part::V(Value::Null),
            K_NUM => {
                nums += 1;
                Part::N(decode_number(&mut r)?)
            }
            K_TEXT => Part::V(Value::Text(decode_escaped(&mut r)?)),
            K_BLOB => Part::V(Value::Blob(decode_escaped(&mut r)?)),
            c => return r.err(format!("bad key component class {c}")),
        };
        parts.push(part);
    }
    if parts.is_empty() {
        return r.err("empty key");
    }
    let types = r.take(r.remaining())?;
    if types.len() != nums {
        return Err(DecodeError {
            offset: b.len() - types.len(),
            what: format!("{} type bytes for {nums} numbers", types.len()),
        });
    }
    let mut t = types.iter();
    let mut out = Vec::with_capacity(parts.len());
    for p in parts {
        out.push(match p {
            Part::V(v) => v,
            Part::N(n) => {
                let ty = t.next().copied().unwrap_or(0xff);
                typed_number(&n, ty).map_err(|what| DecodeError {
                    offset: b.len(),
                    what,
                })?
            }
        });
    }
    match encode_key(&out) {
        Ok(again) if again == b => Ok(out),
        _ => Err(DecodeError {
            offset: 0,
            what: "key is not canonical".into(),
        }),
    }
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

const C_NULL: u8 = 0;
const C_INT: u8 = 1;
const C_REAL: u8 = 2;
const C_TEXT: u8 = 3;
const C_BLOB: u8 = 4;
const C_TEXT_LARGE: u8 = 5;
const C_BLOB_LARGE: u8 = 6;

impl Cell {
    /// Objects the cell references.
    pub fn refs(&self) -> Vec<(ObjectType, ObjectId)> {
        match self {
            Cell::Value(_) => Vec::new(),
            Cell::Large { content, .. } => content.refs(),
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

/// Encodes one value of a row into `w`, storing a large value's chunks into
/// `sink` (cut by `chunker`). `spilled`: the row is spilled (see
/// [`ROW_SPILL_AT`]).
pub fn encode_cell(
    w: &mut Writer,
    v: rusqlite::types::ValueRef<'_>,
    sink: &dyn ObjectSink,
    chunker: &crate::chunker::Chunker,
    spilled: bool,
) -> Result<()> {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => {
            w.u8(C_NULL);
        }
        ValueRef::Integer(i) => {
            w.u8(C_INT).zigzag(i);
        }
        ValueRef::Real(r) => {
            w.u8(C_REAL).raw(&r.to_bits().to_be_bytes());
        }
        ValueRef::Text(b) | ValueRef::Blob(b) => {
            let text = matches!(v, ValueRef::Text(_));
            if !stored_large(b.len() as u64, spilled) {
                w.u8(if text { C_TEXT } else { C_BLOB }).bytes(b);
            } else {
                let content = store_large(b, sink, chunker)?;
                w.u8(if text { C_TEXT_LARGE } else { C_BLOB_LARGE })
                    .varint(b.len() as u64);
                content.encode(w);
            }
        }
    }
    Ok(())
}

/// Cuts a large value into chunks, stores them and returns its content.
pub fn store_large(
    b: &[u8],
    sink: &dyn ObjectSink,
    chunker: &crate::chunker::Chunker,
) -> Result<Content> {
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
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::Integer),
            prop_oneof![
                Just(i64::MIN),
                Just(i64::MAX),
                Just(0),
                Just(1),
                Just(-1),
                Just(1 << 53),
                Just((1 << 53) + 1)
            ]
            .prop_map(Value::Integer),
            any::<f64>()
                .prop_filter("no NaN", |f| !f.is_nan())
                .prop_map(Value::Real),
            prop_oneof![
                Just(0.0),
                Just(-0.0),
                Just(1e308),
                Just(-1e308),
                Just(f64::INFINITY),
                Just(f64::NEG_INFINITY),
                Just(f64::MIN_POSITIVE),
                Just(5e-324),
                Just(9.223372036854776e18),
                Just(-9.223372036854776e18),
                Just(1.5)
            ]
            .prop_map(Value::Real),
            proptest::collection::vec(any::<u8>(), 0..6).prop_map(Value::Text),
            proptest::collection::vec(
                prop_oneof![Just(0u8), Just(1), Just(0xff), any::<u8>()],
                0..6
            )
            .prop_map(Value::Blob),
        ]
    }

    #[test]
    fn examples() {
        assert_eq!(encode_key(&[Value::Integer(0)]).unwrap(), [2, 2, 0, 0]);
        assert_eq!(
            encode_key(&[Value::Integer(1)]).unwrap(),
            [2, 3, 0x40, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        // The types come last: 1.0 then 'b' orders before 1 then 'c'.
        let a = encode_key(&[Value::Real(1.0), Value::Text(b"b".to_vec())]).unwrap();
        let b = encode_key(&[Value::Integer(1), Value::Text(b"c".to_vec())]).unwrap();
        assert!(a < b);
        assert_eq!(
            encode_key(&[Value::Text(b"a\0".to_vec())]).unwrap(),
            [3, b'a', 0, 0xff, 0, 1]
        );
        assert!(encode_key(&[Value::Real(f64::NAN)]).is_err());
        assert!(decode_key(&[]).is_err());
        // An integer whose mantissa has bits below its exponent is not canonical.
        assert!(decode_key(&[2, 3, 0x40, 0, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(decode_key(&[2, 2, 0]).is_err(), "a number without its type");
        assert!(decode_key(&[1, 0]).is_err(), "a type without a number");
    }

    #[test]
    fn only_rows_too_large_for_a_map_entry_are_spilled() {
        let text = |n: usize| Cell::Value(Value::Text(vec![b'x'; n]));
        let large = |n: u64| Cell::Large {
            text: true,
            size: n,
            content: Content::Inline(vec![ChunkRef {
                id: ObjectId([3; 32]),
                len: n,
            }]),
        };
        // 300 values of 4,000 bytes: 1.2 MB as it is, so spilled.
        let plain: Vec<Cell> = (0..300).map(|_| text(4000)).collect();
        assert!(encode_row(&plain).len() > ROW_SPILL_AT);
        let e = decode_row(&encode_row(&plain)).unwrap_err();
        assert!(e.what.contains("must be chunked"), "{e:?}");
        let mut spilled: Vec<Cell> = (0..300).map(|_| large(4000)).collect();
        spilled.push(text(SPILL_MIN));
        spilled.push(Cell::Value(Value::Integer(7)));
        let b = encode_row(&spilled);
        assert!(b.len() < 64 * 1024);
        assert_eq!(decode_row(&b).unwrap(), spilled);
        // A value of SPILL_MIN + 1 bytes inline in a spilled row, and a
        // chunked small value in a row that fits: neither is canonical.
        spilled.push(text(SPILL_MIN + 1));
        assert!(decode_row(&encode_row(&spilled)).is_err());
        let small = vec![large(4000), text(10)];
        let e = decode_row(&encode_row(&small)).unwrap_err();
        assert!(e.what.contains("must be inline"), "{e:?}");
        // A row just under the limit stays as it is.
        let fits: Vec<Cell> = (0..255).map(|_| text(4096)).collect();
        assert!(encode_row(&fits).len() <= ROW_SPILL_AT);
        assert_eq!(decode_row(&encode_row(&fits)).unwrap(), fits);
    }

    #[test]
    fn hostile_value_sizes_allocate_nothing_large() {
        use crate::object::MemStore;
        // A large TEXT cell claiming 2^40 bytes (chunk list form 1, level
        // 0, some root): refused when decoded.
        let mut w = Writer::new();
        w.varint(1)
            .u8(C_TEXT_LARGE)
            .varint(1 << 40)
            .u8(1)
            .u8(0)
            .id(&ObjectId([9; 32]));
        let e = decode_row(&w.buf).unwrap_err();
        assert!(e.what.contains("larger than SQLite allows"), "{e:?}");
        // Loading a cell whose size is the largest allowed but whose chunks
        // are missing fails without reserving the size.
        let store = MemStore::new(true);
        for size in [MAX_VALUE_LEN, 1 << 40, u64::MAX] {
            let cell = Cell::Large {
                text: false,
                size,
                content: Content::Indirect {
                    level: 0,
                    root: ObjectId([9; 32]),
                },
            };
            assert!(cell.load(&store).is_err());
        }
        // A row claiming the most columns in three bytes.
        let mut w = Writer::new();
        w.varint(MAX_COLUMNS as u64).u8(C_NULL);
        assert!(decode_row(&w.buf).is_err());
        // A TEXT cell claiming more bytes than the row holds.
        let mut w = Writer::new();
        w.varint(1).u8(C_TEXT).varint(4000);
        assert!(decode_row(&w.buf).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn keys_round_trip(vs in proptest::collection::vec(arb_value(), 1..4)) {
            let k = encode_key(&vs).unwrap();
            prop_assert_eq!(decode_key(&k).unwrap(), vs);
        }

        #[test]
        fn key_decoder_is_canonical(b in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(vs) = decode_key(&b) {
                prop_assert_eq!(encode_key(&vs).unwrap(), b);
            }
        }

        #[test]
        fn row_decoder_is_canonical(b in proptest::collection::vec(any::<u8>(), 0..60)) {
            if let Ok(cells) = decode_row(&b) {
                prop_assert_eq!(encode_row(&cells), b);
            }
        }

        #[test]
        fn numbers_order_like_math(a in arb_value(), b in arb_value()) {
            let num = |v: &Value| match v {
                Value::Integer(i) => Some(*i as i128 as f64),
                Value::Real(r) => Some(*r),
                _ => None,
            };
            if let (Some(x), Some(y)) = (num(&a), num(&b)) {
                let ka = encode_key(std::slice::from_ref(&a)).unwrap();
                let kb = encode_key(std::slice::from_ref(&b)).unwrap();
                // Where the f64 images differ, their order is the exact order.
                if x < y { prop_assert!(ka < kb, "{:?} {:?}", a, b); }
                if x > y { prop_assert!(ka > kb, "{:?} {:?}", a, b); }
            }
        }
    }
}
