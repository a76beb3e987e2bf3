//! The strict canonical reader and writer behind every hashed encoding.
//!
//! Integers are unsigned LEB128 varints with no overlong forms; signed
//! integers are zigzag-mapped first; byte strings are a varint length and the
//! bytes. The reader rejects anything the writer would not produce, so
//! `encode(decode(b)) == b` for every accepted `b` and an object has exactly
//! one encoding (and so one id).

use crate::id::ObjectId;

/// Why bytes failed to decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// Where, in bytes from the start.
    pub offset: usize,
    /// What was wrong.
    pub what: String,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte {}", self.what, self.offset)
    }
}

impl std::error::Error for DecodeError {}

/// A decoding result.
pub type DResult<T> = Result<T, DecodeError>;

/// Appends canonical encodings to a byte vector.
#[derive(Default, Debug, Clone)]
pub struct Writer {
    /// The bytes written so far.
    pub buf: Vec<u8>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty writer with room for `n` bytes.
    pub fn with_capacity(n: usize) -> Self {
        Writer {
            buf: Vec::with_capacity(n),
        }
    }

    /// One byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    /// An unsigned LEB128 varint (shortest form).
    pub fn varint(&mut self, v: u64) -> &mut Self {
        put_varint(&mut self.buf, v);
        self
    }

    /// A signed integer, zigzag-encoded as a varint.
    pub fn zigzag(&mut self, v: i64) -> &mut Self {
        self.varint(((v << 1) ^ (v >> 63)) as u64)
    }

    /// A length (varint) and the bytes.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.varint(b.len() as u64);
        self.buf.extend_from_slice(b);
        self
    }

    /// The bytes as they are (no length).
    pub fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }

    /// An object id's 32 bytes.
    pub fn id(&mut self, id: &ObjectId) -> &mut Self {
        self.buf.extend_from_slice(&id.0);
        self
    }

    /// The bytes written.
    pub fn into_vec(self) -> Vec<u8> {
        self.buf
    }
}

/// Appends `v` as an unsigned LEB128 varint.
pub fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// The encoded length of `v` as a varint.
pub fn varint_len(v: u64) -> usize {
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Reads canonical encodings from a byte slice.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes read so far.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.pos == self.buf.len()
    }

    /// A [`DecodeError`] saying `what`, at the current offset.
    pub fn err<T>(&self, what: impl Into<String>) -> DResult<T> {
        Err(DecodeError {
            offset: self.pos,
            what: what.into(),
        })
    }

    /// One byte.
    pub fn u8(&mut self) -> DResult<u8> {
        match self.buf.get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                Ok(b)
            }
            None => self.err("unexpected end of data"),
        }
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> DResult<&'a [u8]> {
        if self.remaining() < n {
            return self.err(format!(
                "unexpected end of data (need {n} bytes, {} left)",
                self.remaining()
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// A varint; an overlong form or one past 64 bits is an error.
    pub fn varint(&mut self) -> DResult<u64> {
        let start = self.pos;
        let mut v: u64 = 0;
        let mut shift = 0u32;
        loop {
            let b = self.u8()?;
            if shift == 63 && b > 1 {
                self.pos = start;
                return self.err("varint overflows 64 bits");
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                if b == 0 && shift > 0 {
                    self.pos = start;
                    return self.err("overlong varint");
                }
                return Ok(v);
            }
            shift += 7;
        }
    }

    /// A varint that must fit `max`.
    pub fn varint_max(&mut self, max: u64, what: &str) -> DResult<u64> {
        let start = self.pos;
        let v = self.varint()?;
        if v > max {
            self.pos = start;
            return self.err(format!("{what} {v} exceeds {max}"));
        }
        Ok(v)
    }

    /// A zigzag-encoded signed integer.
    pub fn zigzag(&mut self) -> DResult<i64> {
        let v = self.varint()?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    /// A length-prefixed byte string of at most `max` bytes.
    pub fn bytes(&mut self, max: usize) -> DResult<&'a [u8]> {
        let n = self.varint_max(max as u64, "length")? as usize;
        self.take(n)
    }

    /// A length-prefixed UTF-8 string of at most `max` bytes.
    pub fn str(&mut self, max: usize) -> DResult<&'a str> {
        let start = self.pos;
        let b = self.bytes(max)?;
        std::str::from_utf8(b).or_else(|_| {
            let mut r = self.clone();
            r.pos = start;
            r.err("string is not UTF-8")
        })
    }

    /// An object id's 32 bytes.
    pub fn id(&mut self) -> DResult<ObjectId> {
        let b = self.take(32)?;
        let mut a = [0u8; 32];
        a.copy_from_slice(b);
        Ok(ObjectId(a))
    }

    /// Fails unless every byte was consumed.
    pub fn finish(&self) -> DResult<()> {
        if self.is_empty() {
            Ok(())
        } else {
            self.err(format!("{} trailing bytes", self.remaining()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn varint_examples() {
        let mut b = Vec::new();
        put_varint(&mut b, 0);
        put_varint(&mut b, 127);
        put_varint(&mut b, 128);
        put_varint(&mut b, 300);
        assert_eq!(b, [0x00, 0x7f, 0x80, 0x01, 0xac, 0x02]);
        let mut r = Reader::new(&b);
        assert_eq!(r.varint().unwrap(), 0);
        assert_eq!(r.varint().unwrap(), 127);
        assert_eq!(r.varint().unwrap(), 128);
        assert_eq!(r.varint().unwrap(), 300);
        assert!(r.finish().is_ok());
    }

    #[test]
    fn rejects_overlong_and_overflow() {
        assert!(Reader::new(&[0x80, 0x00]).varint().is_err());
        assert!(Reader::new(&[0x81, 0x80, 0x00]).varint().is_err());
        let mut max = Vec::new();
        put_varint(&mut max, u64::MAX);
        assert_eq!(Reader::new(&max).varint().unwrap(), u64::MAX);
        let over = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(Reader::new(&over).varint().is_err());
        let eleven = [0xff; 11];
        assert!(Reader::new(&eleven).varint().is_err());
        assert!(Reader::new(&[0x80]).varint().is_err());
    }

    #[test]
    fn rejects_trailing_and_bad_utf8() {
        let r = Reader::new(&[1]);
        assert!(r.finish().is_err());
        assert!(Reader::new(&[2, 0xff, 0xfe]).str(10).is_err());
        assert!(Reader::new(&[5, b'a']).bytes(10).is_err());
        assert!(Reader::new(&[5, 1, 2, 3, 4, 5]).bytes(4).is_err());
    }

    proptest! {
        #[test]
        fn varint_round_trips_canonically(v: u64) {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            prop_assert_eq!(b.len(), varint_len(v));
            let mut r = Reader::new(&b);
            prop_assert_eq!(r.varint().unwrap(), v);
            prop_assert!(r.finish().is_ok());
        }

        #[test]
        fn zigzag_round_trips(v: i64) {
            let mut w = Writer::new();
            w.zigzag(v);
            let mut r = Reader::new(&w.buf);
            prop_assert_eq!(r.zigzag().unwrap(), v);
        }

        #[test]
        fn varint_decoder_never_accepts_two_encodings(bytes in proptest::collection::vec(any::<u8>(), 0..12)) {
            let mut r = Reader::new(&bytes);
            if let Ok(v) = r.varint() {
                let mut again = Vec::new();
                put_varint(&mut again, v);
                prop_assert_eq!(&again[..], &bytes[..r.pos()]);
            }
        }
    }
}
