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
use crate::error::Result;
use crate::object::ObjectSink;
use crate::object::row::{C_BLOB, C_BLOB_LARGE, C_INT, C_NULL, C_REAL, C_TEXT, C_TEXT_LARGE};

// The row encoding lives with the other objects; re-exported here, where
// the database code has always found it.
pub use crate::object::row::{
    Cell, MAX_COLUMNS, MAX_INLINE_VALUE, MAX_VALUE_LEN, ROW_SPILL_AT, SPILL_MIN, Value, decode_row,
    encode_row, store_large, stored_large,
};

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

/// NaN's mantissa bits in a key: after +Infinity's (`EXP_INF`, 0), as
/// PostgreSQL orders NaN after every other `real` or `double` (SQLite never
/// stores one: it keeps NaN as NULL).
const NAN_BITS: u64 = u64::MAX;

fn real_magnitude(r: f64) -> (u16, u64) {
    if r.is_nan() {
        return (EXP_INF, NAN_BITS);
    }
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

    /// Appends a component. (A NaN, of a PostgreSQL key, sorts after
    /// +Infinity, whatever its sign and payload.)
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

/// Feeds `hasher` the bytes [`encode_key`] makes of the one value `v`,
/// without building them whole: TEXT and BLOB are escaped a piece at a
/// time (a file's body of many megabytes is not copied again).
pub fn hash_key_of(hasher: &mut blake3::Hasher, v: &Value) -> Result<()> {
    let (tag, bytes) = match v {
        Value::Text(t) => (K_TEXT, t),
        Value::Blob(b) => (K_BLOB, b),
        _ => {
            hasher.update(&encode_key(std::slice::from_ref(v))?);
            return Ok(());
        }
    };
    hasher.update(&[tag]);
    let mut buf = Vec::with_capacity(1 << 16);
    for piece in bytes.chunks(1 << 15) {
        buf.clear();
        for &c in piece {
            buf.push(c);
            if c == 0 {
                buf.push(0xff);
            }
        }
        hasher.update(&buf);
    }
    hasher.update(&[0, 1]);
    Ok(())
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
                // (A NaN of another sign or mantissa is refused as not
                // canonical: NaN encodes as `+ EXP_INF NAN_BITS`.)
                Value::Real(match *m {
                    0 if *neg => f64::NEG_INFINITY,
                    0 => f64::INFINITY,
                    _ => f64::NAN,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::ObjectId;
    use crate::object::list::ChunkRef;
    use crate::object::tree::Content;
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
                Just(f64::NAN),
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
        // NaN (a PostgreSQL key may hold it) sorts after +Infinity, as
        // there, and reads back as the one NaN; any other sign or mantissa
        // under Infinity's exponent is refused.
        let nan = encode_key(&[Value::Real(f64::NAN)]).unwrap();
        assert_eq!(
            nan,
            [
                2, 3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 1
            ]
        );
        assert!(nan > encode_key(&[Value::Real(f64::INFINITY)]).unwrap());
        assert_eq!(encode_key(&[Value::Real(-f64::NAN)]).unwrap(), nan);
        assert_eq!(decode_key(&nan).unwrap(), [Value::Real(f64::NAN)]);
        let mut other = nan.clone();
        other[11] = 0xfe;
        assert!(decode_key(&other).is_err());
        let neg: Vec<u8> = [2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1].to_vec();
        assert!(decode_key(&neg).is_err());
        assert!(
            decode_key(&[
                2, 3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0
            ])
            .is_err(),
            "an integer NaN"
        );
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
        fn hashing_a_key_streamed_hashes_its_encoding(
            v in arb_value(),
            (seed, len) in (any::<u64>(), 0usize..70_000),
        ) {
            // Bytes across the 32 KiB pieces, zeros (escaped) among them.
            let mut x = seed | 1;
            let big: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    match x % 4 {
                        0 => 0,
                        1 => 0xff,
                        _ => (x >> 8) as u8,
                    }
                })
                .collect();
            for v in [v, Value::Text(big.clone()), Value::Blob(big)] {
                let mut h = blake3::Hasher::new();
                hash_key_of(&mut h, &v).unwrap();
                let want = blake3::hash(&encode_key(std::slice::from_ref(&v)).unwrap());
                prop_assert_eq!(h.finalize(), want);
            }
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
                // NaN after every other number, as PostgreSQL orders it.
                if x.is_nan() && !y.is_nan() { prop_assert!(ka > kb, "{:?} {:?}", a, b); }
            }
        }
    }
}
