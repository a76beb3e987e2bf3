//! Blocks: several small objects of one kind compressed together in one
//! pack record (`store-format.md` §6.1, store format 4), so that they
//! compress like a solid stream while each stays readable by id (a read
//! decodes the block, about 64 KiB of rows or 32 KiB of directory nodes,
//! and takes its member).
//!
//! A block's payload is one zstd frame. Mode 1: the frame holds the
//! members' bytes one after another. Mode 2 (row-map leaves only): the
//! frame holds the same bytes *transposed*: the members' node headers,
//! then every key, every value length, every row's value count, then for
//! each column the type bytes of its cells and then their contents, so that
//! like values (every email, every timestamp) sit together. Every byte of
//! the members appears exactly once in the transposed form (varints are
//! copied, not re-encoded), so the inverse is exact; a writer checks that
//! it is before using mode 2.
//!
//! Member ids are not stored: a reader hashes each member's bytes.

use crate::error::Result;
use crate::id::ObjectType;
use crate::object::MAX_OBJECT_SIZE;

/// The members' bytes one after another.
pub const MODE_PLAIN: u8 = 1;
/// Row-map leaves, transposed by column.
pub const MODE_ROWS: u8 = 2;
/// A block holds at least this many members (one object is a record).
pub const MIN_MEMBERS: usize = 2;
/// A block holds at most this many members.
pub const MAX_MEMBERS: usize = 4096;
/// A snapshot closes a block of row-map nodes once its members reach this
/// many bytes. 64 KiB, not 32: for a 1,000,000-row table, 5% less CPU
/// (zstd builds its tables per frame) and 2.5% fewer bytes; a read of one
/// row decodes twice as much.
pub const TARGET_BYTES: usize = 64 * 1024;
/// Objects larger than this are never put in a block.
pub const MAX_MEMBER_BYTES: usize = 64 * 1024;
/// The transposed form's directory is at most this much longer than the
/// members' bytes (a stream count and up to 4 + 2 × 32,768 lengths).
const MAX_DIRECTORY: usize = 10 * (1 + 4 + 2 * 32_768);

/// Why a block could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BlockError(pub String);

fn bad<T>(why: impl Into<String>) -> std::result::Result<T, BlockError> {
    Err(BlockError(why.into()))
}

/// Compresses members (each at most [`MAX_MEMBER_BYTES`]) into a block
/// payload: (mode, payload). Row-map leaves are transposed when every one
/// parses as a leaf of rows.
pub fn encode(tag: ObjectType, members: &[&[u8]], level: i32) -> Result<(u8, Vec<u8>)> {
    let total: usize = members.iter().map(|m| m.len()).sum();
    let transposed = if tag == ObjectType::Rows {
        transpose(members).filter(|t| {
            // Checked into this thread's buffer: a block's worth of
            // allocation per block was a tenth of the check's time.
            CHECK.with(|back| {
                let mut back = back.borrow_mut();
                untranspose_into(t, total, &mut back).is_ok() && {
                    let mut at = 0;
                    members.iter().all(|m| {
                        let same = back.get(at..at + m.len()) == Some(*m);
                        at += m.len();
                        same
                    }) && at == back.len()
                }
            })
        })
    } else {
        None
    };
    let (mode, raw) = match transposed {
        Some(t) => (MODE_ROWS, t),
        None => (MODE_PLAIN, members.concat()),
    };
    let payload = crate::pack::compress_frame(&raw, level).ok_or_else(|| {
        crate::error::SyncError::Invalid("compressing a block: zstd failed".into())
    })?;
    Ok((mode, payload))
}

thread_local! {
    /// Where [`encode`] untransposes what it transposed, to check it.
    static CHECK: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// [`transpose`]'s streams, kept (cleared) between blocks.
    static STREAMS: std::cell::RefCell<Streams> = const {
        std::cell::RefCell::new(Streams {
            heads: Vec::new(),
            keys: Vec::new(),
            vlens: Vec::new(),
            ncols: Vec::new(),
            cols: Vec::new(),
        })
    };
}

/// Decodes a block payload into its members' bytes, one after another
/// (`total` bytes: the sum of the members' sizes, at most 16 MiB).
pub fn decode(mode: u8, total: usize, payload: &[u8]) -> std::result::Result<Vec<u8>, BlockError> {
    if total > MAX_OBJECT_SIZE {
        return bad(format!("block of {total} bytes exceeds the limit"));
    }
    let cap = match mode {
        MODE_PLAIN => total,
        MODE_ROWS => total + MAX_DIRECTORY,
        m => return bad(format!("unknown block mode {m}")),
    };
    let raw = crate::pack::decompress_capped(payload, cap)
        .map_err(|e| BlockError(format!("block frame: {e}")))?;
    match mode {
        MODE_PLAIN if raw.len() == total => Ok(raw),
        MODE_PLAIN => bad(format!(
            "block frame holds {} bytes, its members {total}",
            raw.len()
        )),
        _ => untranspose(&raw, total),
    }
}

// ---- varints, copied verbatim ----

/// The end of the varint starting at `at` (at most 10 bytes), or None.
fn varint_end(b: &[u8], at: usize) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for i in 0..10 {
        let c = *b.get(at + i)?;
        v |= u64::from(c & 0x7f) << (7 * i);
        if c & 0x80 == 0 {
            return Some((v, at + i + 1));
        }
    }
    None
}

/// [`varint_end`], with the one-byte varint (most lengths, counts and
/// small integers in rows) read without the loop.
#[inline(always)]
fn varint_at(b: &[u8], at: usize) -> Option<(u64, usize)> {
    match b.get(at) {
        Some(&c) if c < 0x80 => Some((u64::from(c), at + 1)),
        _ => varint_end(b, at),
    }
}

/// `at + n` when it is within `b`.
#[inline(always)]
fn span_end(b: &[u8], at: usize, n: u64) -> Option<usize> {
    usize::try_from(n)
        .ok()
        .and_then(|n| at.checked_add(n))
        .filter(|&e| e <= b.len())
}

/// Appends `src[from..from + n]` to `out` (which the caller has checked is
/// within `src`). A span of up to 32 bytes, when `src` has 32 from `from`,
/// is copied as a fixed 32 bytes and cut back: one inlined copy. Most
/// spans are a cell of a few bytes, and calling `memcpy` for each cost
/// more than the copy (a third of transposing a block and checking it).
#[inline(always)]
fn push_span(out: &mut Vec<u8>, src: &[u8], from: usize, n: usize) {
    if n <= 32
        && let Some(w) = src.get(from..).and_then(|s| s.first_chunk::<32>())
    {
        let len = out.len();
        out.extend_from_slice(w);
        out.truncate(len + n);
    } else {
        out.extend_from_slice(&src[from..from + n]);
    }
}

/// The streams of the transposed form, in order.
struct Streams {
    heads: Vec<u8>,
    keys: Vec<u8>,
    vlens: Vec<u8>,
    ncols: Vec<u8>,
    /// Per column: (cell type bytes, cell contents).
    cols: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The bytes a cell's contents take after its type byte, at `at` of `b`.
#[inline(always)]
fn cell_end(kind: u8, b: &[u8], at: usize) -> Option<usize> {
    match kind {
        0 => Some(at),
        1 => varint_at(b, at).map(|(_, e)| e),
        2 => span_end(b, at, 8),
        3 | 4 => {
            let (n, e) = varint_at(b, at)?;
            span_end(b, e, n)
        }
        _ => None,
    }
}

/// Row-map leaves (version 1, level 0) transposed; None when one does not
/// parse as a leaf whose values are rows of inline cells.
pub fn transpose(members: &[&[u8]]) -> Option<Vec<u8>> {
    STREAMS.with(|s| {
        let mut s = s.borrow_mut();
        s.heads.clear();
        s.keys.clear();
        s.vlens.clear();
        s.ncols.clear();
        for (t, d) in &mut s.cols {
            t.clear();
            d.clear();
        }
        transpose_with(&mut s, members)
    })
}

fn transpose_with(s: &mut Streams, members: &[&[u8]]) -> Option<Vec<u8>> {
    // Columns a previous block had and this one does not are empty
    // streams here, and must not be written.
    let mut ncols = 0;
    for m in members {
        if m.len() < 3 || m[0] != crate::pmap::NODE_VERSION || m[1] != 0 {
            return None;
        }
        let (count, mut at) = varint_at(m, 2)?;
        s.heads.extend_from_slice(&m[..at]);
        for _ in 0..count {
            // The key's length and bytes go to one stream, as they lie.
            let (kl, e) = varint_at(m, at)?;
            let kend = span_end(m, e, kl)?;
            push_span(&mut s.keys, m, at, kend - at);
            let (vl, e) = varint_at(m, kend)?;
            push_span(&mut s.vlens, m, kend, e - kend);
            let vend = span_end(m, e, vl)?;
            let v = &m[e..vend];
            let (cells, mut p) = varint_at(v, 0)?;
            if cells > 32_768 {
                return None;
            }
            let cells = cells as usize;
            push_span(&mut s.ncols, v, 0, p);
            if s.cols.len() < cells {
                s.cols.resize_with(cells, Default::default);
            }
            ncols = ncols.max(cells);
            for (tags, data) in &mut s.cols[..cells] {
                let kind = *v.get(p)?;
                let end = cell_end(kind, v, p + 1)?;
                tags.push(kind);
                push_span(data, v, p + 1, end - p - 1);
                p = end;
            }
            if p != v.len() {
                return None;
            }
            at = vend;
        }
        if at != m.len() {
            return None;
        }
    }
    let mut streams: Vec<&[u8]> = vec![&s.heads, &s.keys, &s.vlens, &s.ncols];
    for (t, d) in &s.cols[..ncols] {
        streams.push(t);
        streams.push(d);
    }
    let mut out = Vec::with_capacity(members.iter().map(|m| m.len()).sum::<usize>() + 64);
    crate::codec::put_varint(&mut out, streams.len() as u64);
    for st in &streams {
        crate::codec::put_varint(&mut out, st.len() as u64);
    }
    for st in &streams {
        out.extend_from_slice(st);
    }
    Some(out)
}

/// A cursor over one stream of the transposed form.
struct Cur<'a> {
    b: &'a [u8],
    at: usize,
}

/// Why a transposed form does not decode (the message's tail).
type Bad = &'static str;

impl<'a> Cur<'a> {
    /// The next varint, as (value, its bytes).
    #[inline(always)]
    fn varint(&mut self, what: Bad) -> std::result::Result<(u64, &'a [u8]), Bad> {
        let (v, e) = varint_at(self.b, self.at).ok_or(what)?;
        let s = &self.b[self.at..e];
        self.at = e;
        Ok((v, s))
    }

    #[inline(always)]
    fn take(&mut self, n: u64, what: Bad) -> std::result::Result<&'a [u8], Bad> {
        let end = span_end(self.b, self.at, n).ok_or(what)?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    /// [`varint`](Self::varint), appending its bytes to `out`.
    #[inline(always)]
    fn varint_into(&mut self, out: &mut Vec<u8>, what: Bad) -> std::result::Result<u64, Bad> {
        let (v, e) = varint_at(self.b, self.at).ok_or(what)?;
        push_span(out, self.b, self.at, e - self.at);
        self.at = e;
        Ok(v)
    }

    /// [`counted`](Self::counted), appending its bytes to `out`.
    #[inline(always)]
    fn counted_into(&mut self, out: &mut Vec<u8>, what: Bad) -> std::result::Result<(), Bad> {
        let (n, e) = varint_at(self.b, self.at).ok_or(what)?;
        let end = span_end(self.b, e, n).ok_or(what)?;
        push_span(out, self.b, self.at, end - self.at);
        self.at = end;
        Ok(())
    }

    /// [`take`](Self::take), appending the bytes to `out`.
    #[inline(always)]
    fn take_into(&mut self, n: u64, out: &mut Vec<u8>, what: Bad) -> std::result::Result<(), Bad> {
        let end = span_end(self.b, self.at, n).ok_or(what)?;
        push_span(out, self.b, self.at, end - self.at);
        self.at = end;
        Ok(())
    }

    fn done(&self) -> bool {
        self.at == self.b.len()
    }
}

/// One column's streams: its cells' type bytes and their contents.
struct Col<'a> {
    tags: Cur<'a>,
    data: Cur<'a>,
}

/// The inverse of [`transpose`]: the members' bytes, which must come to
/// exactly `total`.
pub fn untranspose(raw: &[u8], total: usize) -> std::result::Result<Vec<u8>, BlockError> {
    let mut out = Vec::new();
    untranspose_into(raw, total, &mut out)?;
    Ok(out)
}

/// [`untranspose`] into `out` (cleared first).
fn untranspose_into(
    raw: &[u8],
    total: usize,
    out: &mut Vec<u8>,
) -> std::result::Result<(), BlockError> {
    out.clear();
    let mut dir = Cur { b: raw, at: 0 };
    let (n, _) = dir
        .varint("bad or missing stream count")
        .map_err(|e| BlockError(format!("transposed block: {e}")))?;
    if n < 4 || n % 2 != 0 || n > 4 + 2 * 32_768 {
        return bad(format!("transposed block with {n} streams"));
    }
    untranspose_streams(dir, n as usize, total, out)
        .map_err(|e| BlockError(format!("transposed block: {e}")))?;
    if out.len() != total {
        return bad(format!(
            "transposed block holds {} bytes, its members {total}",
            out.len()
        ));
    }
    Ok(())
}

/// The members from the `n` streams whose lengths `dir` reads next.
fn untranspose_streams(
    mut dir: Cur<'_>,
    n: usize,
    total: usize,
    out: &mut Vec<u8>,
) -> std::result::Result<(), Bad> {
    let mut lens = Vec::with_capacity(n);
    for _ in 0..n {
        lens.push(dir.varint("bad or missing stream length")?.0);
    }
    let mut streams = Vec::with_capacity(n);
    for l in lens {
        streams.push(Cur {
            b: dir.take(l, "a stream runs past the block")?,
            at: 0,
        });
    }
    if !dir.done() {
        return Err("bytes after its streams");
    }
    let mut it = streams.into_iter();
    let mut next = || it.next().ok_or("missing streams");
    let (mut heads, mut keys, mut vlens, mut ncols) = (next()?, next()?, next()?, next()?);
    let mut cols: Vec<Col<'_>> = Vec::with_capacity((n - 4) / 2);
    while let (Ok(tags), Ok(data)) = (next(), next()) {
        cols.push(Col { tags, data });
    }
    out.reserve(total);
    while !heads.done() {
        let head = heads.take(2, "a node header runs past its stream")?;
        if head != [crate::pmap::NODE_VERSION, 0] {
            return Err("a member that is not a row-map leaf");
        }
        out.extend_from_slice(head);
        let (count, c) = heads.varint("bad or missing entry count")?;
        out.extend_from_slice(c);
        for _ in 0..count {
            keys.counted_into(out, "bad or missing key")?;
            let vl = vlens.varint_into(out, "bad or missing value length")?;
            let start = out.len();
            let cells = ncols.varint_into(out, "bad or missing value count")?;
            let row = usize::try_from(cells)
                .ok()
                .and_then(|c| cols.get_mut(..c))
                .ok_or("a row with more values than columns")?;
            for col in row {
                let kind = col.tags.take(1, "a value's type runs past its stream")?[0];
                out.push(kind);
                match kind {
                    0 => {}
                    1 => {
                        col.data.varint_into(out, "bad or missing integer")?;
                    }
                    2 => col.data.take_into(8, out, "a real runs past its stream")?,
                    3 | 4 => col.data.counted_into(out, "bad or missing text or blob")?,
                    _ => return Err("unknown value type"),
                }
            }
            if (out.len() - start) as u64 != vl {
                return Err("a value's length differs from its cells");
            }
            if out.len() > total {
                return Err("longer than its members");
            }
        }
    }
    if ![&keys, &vlens, &ncols].iter().all(|c| c.done())
        || !cols.iter().all(|c| c.tags.done() && c.data.done())
    {
        return Err("streams longer than its rows");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(rows: &[(&[u8], Vec<u8>)]) -> Vec<u8> {
        let mut n = vec![1, 0];
        crate::codec::put_varint(&mut n, rows.len() as u64);
        for (k, v) in rows {
            crate::codec::put_varint(&mut n, k.len() as u64);
            n.extend_from_slice(k);
            crate::codec::put_varint(&mut n, v.len() as u64);
            n.extend_from_slice(v);
        }
        n
    }

    fn row(i: u64) -> Vec<u8> {
        let mut r = vec![4, 1];
        crate::codec::put_varint(&mut r, i * 2);
        let t = format!("user{i}@example.com");
        r.push(3);
        crate::codec::put_varint(&mut r, t.len() as u64);
        r.extend_from_slice(t.as_bytes());
        r.push(2);
        r.extend_from_slice(&(i as f64 * 1.5).to_be_bytes());
        r.push(if i.is_multiple_of(3) { 0 } else { 4 });
        if !i.is_multiple_of(3) {
            r.extend_from_slice(&[2, 0xab, 0xcd]);
        }
        r
    }

    #[test]
    fn rows_transpose_and_round_trip() {
        let keys: Vec<Vec<u8>> = (0..300u32).map(|i| i.to_be_bytes().to_vec()).collect();
        let members: Vec<Vec<u8>> = keys
            .chunks(30)
            .enumerate()
            .map(|(c, ks)| {
                let rows: Vec<(&[u8], Vec<u8>)> = ks
                    .iter()
                    .enumerate()
                    .map(|(i, k)| (k.as_slice(), row((c * 30 + i) as u64)))
                    .collect();
                leaf(&rows)
            })
            .collect();
        let refs: Vec<&[u8]> = members.iter().map(|m| m.as_slice()).collect();
        let (mode, payload) = encode(ObjectType::Rows, &refs, 3).unwrap();
        assert_eq!(mode, MODE_ROWS);
        let total = refs.iter().map(|m| m.len()).sum();
        assert_eq!(decode(mode, total, &payload).unwrap(), members.concat());
        // A tree node is not transposed; a leaf with a large value neither.
        let (mode, payload) = encode(ObjectType::Tree, &refs, 3).unwrap();
        assert_eq!(mode, MODE_PLAIN);
        assert_eq!(decode(mode, total, &payload).unwrap(), members.concat());
        let odd = leaf(&[(b"k", vec![1, 5, 9])]);
        let (mode, _) = encode(ObjectType::Rows, &[&odd, &members[0]], 3).unwrap();
        assert_eq!(mode, MODE_PLAIN);
    }

    #[test]
    fn wrong_sizes_and_modes_are_refused() {
        let members: [&[u8]; 2] = [b"abcdef", b"ghi"];
        let (mode, payload) = encode(ObjectType::Chunk, &members, 3).unwrap();
        assert!(decode(mode, 9, &payload).is_ok());
        assert!(decode(mode, 8, &payload).is_err());
        assert!(decode(mode, 10, &payload).is_err());
        assert!(decode(7, 9, &payload).is_err());
        assert!(decode(MODE_ROWS, 9, &payload).is_err());
    }

    fn cell() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        prop_oneof![
            Just(vec![0u8]),
            any::<u64>().prop_map(|v| {
                let mut c = vec![1];
                crate::codec::put_varint(&mut c, v);
                c
            }),
            any::<[u8; 8]>().prop_map(|b| [&[2u8][..], &b].concat()),
            (3u8..=4, proptest::collection::vec(any::<u8>(), 0..40)).prop_map(|(k, b)| {
                let mut c = vec![k];
                crate::codec::put_varint(&mut c, b.len() as u64);
                c.extend_from_slice(&b);
                c
            }),
        ]
    }

    proptest::proptest! {
        /// Any row-map leaves (rows of any width and inline values) come
        /// back byte for byte, transposed or not.
        #[test]
        fn any_leaves_round_trip(
            leaves in proptest::collection::vec(
                proptest::collection::vec(
                    (proptest::collection::vec(proptest::prelude::any::<u8>(), 1..12),
                     proptest::collection::vec(cell(), 0..9)),
                    1..20),
                2..6),
        ) {
            let members: Vec<Vec<u8>> = leaves
                .iter()
                .map(|rows| {
                    let rows: Vec<(&[u8], Vec<u8>)> = rows
                        .iter()
                        .map(|(k, cells)| {
                            let mut v = Vec::new();
                            crate::codec::put_varint(&mut v, cells.len() as u64);
                            v.extend(cells.concat());
                            (k.as_slice(), v)
                        })
                        .collect();
                    leaf(&rows)
                })
                .collect();
            let refs: Vec<&[u8]> = members.iter().map(|m| m.as_slice()).collect();
            let (mode, payload) = encode(ObjectType::Rows, &refs, 1).unwrap();
            proptest::prop_assert_eq!(mode, MODE_ROWS);
            let total = refs.iter().map(|m| m.len()).sum();
            proptest::prop_assert_eq!(decode(mode, total, &payload).unwrap(), members.concat());
        }

        /// Any bytes, as a transposed form or a frame, are refused or
        /// decoded within the size given, never a panic.
        #[test]
        fn any_bytes_never_panic(raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400), total in 0usize..600) {
            if let Ok(b) = untranspose(&raw, total) {
                proptest::prop_assert_eq!(b.len(), total);
            }
            let frame = zstd::bulk::compress(&raw, 1).unwrap();
            for mode in [MODE_PLAIN, MODE_ROWS, 0, 9] {
                if let Ok(b) = decode(mode, total, &frame) {
                    proptest::prop_assert_eq!(b.len(), total);
                }
            }
        }
    }
}
