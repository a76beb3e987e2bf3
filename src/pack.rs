//! The pack stream: one format for pack files on disk, for transfers on the
//! wire and for the body of bundles.
//!
//! ```text
//! magic "SPSYNCPK" | version=1
//! record*:  0x01 | tag | flags | id [32] | ulen (varint) | clen (varint) | payload [clen]
//! 0x00 | record count (varint) | BLAKE3 of every preceding byte [32]
//! ```
//! `flags` is 0 (payload is the object's bytes) or 1 (payload is one zstd
//! frame of them). Every reader re-hashes the uncompressed bytes with the tag
//! and compares with `id`; `ulen` caps what decompression may produce.

use std::cell::RefCell;
use std::io::{Read, Write};

use crate::codec::{put_varint, varint_len};
use crate::error::{Result, SyncError};
use crate::id::{ObjectId, ObjectType};
use crate::object::{MAX_OBJECT_SIZE, corrupt};

pub const PACK_MAGIC: &[u8; 8] = b"SPSYNCPK";
pub const PACK_VERSION: u8 = 1;
pub const HEADER_LEN: u64 = 9;
pub const FLAG_RAW: u8 = 0;
pub const FLAG_ZSTD: u8 = 1;
/// A delta: the payload is a base object's id [32] and a zstd frame
/// compressed with that object's bytes as a raw-content dictionary. In a
/// transfer stream the receiver holds the base and stores the object whole;
/// in a stored pack (store format 3, written by `gc --repack`) the base is
/// another object of the store, read through [`crate::store::Store::unpack`]
/// with the chain bound [`MAX_CHAIN_RECORDS`]. Bundles never carry one.
pub const FLAG_DELTA: u8 = 2;
/// Reading any stored object decodes at most this many records: the object
/// and the bases of its delta chain (a dictionary, read once per process
/// and cached, is not counted). A longer chain, or a cycle, is corruption.
pub const MAX_CHAIN_RECORDS: usize = 4;
/// Stored packs only (store format 2): the payload is a dictionary
/// object's id [32] and a zstd frame compressed with that trained
/// dictionary. Reading it needs the store that holds the dictionary
/// (`Store::unpack`); transfers send such objects re-encoded as `FLAG_ZSTD`.
pub const FLAG_DICT: u8 = 3;
/// In an index only (store format 4): the object is a member of the block
/// record at the entry's offset; the entry's `clen` is its position in the
/// block. Readers of the store see it as a raw object.
pub const FLAG_BLOCK: u8 = 4;
const REC_OBJECT: u8 = 1;
const REC_END: u8 = 0;
/// A block record (stored packs of format-4 stores only, §6.1).
const REC_BLOCK: u8 = 2;
/// A block header is at most this long: kind, tag, mode, count, size.
pub const BLOCK_HEADER_MAX: usize = 3 + 10 + 10;
/// A block record's size field (its ulens and payload) is at most this.
pub const MAX_BLOCK_SIZE: u64 = MAX_OBJECT_SIZE as u64 + 64 * 1024;

/// Several small objects of one kind compressed together ([`crate::block`]).
#[derive(Debug, Clone)]
pub struct StoredBlock {
    pub tag: ObjectType,
    pub mode: u8,
    /// Every member's id and size, in order.
    pub members: Vec<(ObjectId, u32)>,
    pub payload: Vec<u8>,
}

/// Decompresses one zstd frame into at most `cap` bytes.
pub fn decompress_capped(payload: &[u8], cap: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = zstd::bulk::Decompressor::new().ok();
        }
        match d.as_mut() {
            Some(d) => d.decompress(payload, cap),
            None => Err(std::io::Error::other("cannot create a zstd context")),
        }
    })
}

/// A block record's header, parsed: (tag, mode, count, size, header length).
pub fn parse_block_header(buf: &[u8]) -> Option<(u8, u8, u64, u64, usize)> {
    let mut r = crate::codec::Reader::new(buf);
    if r.u8().ok()? != REC_BLOCK {
        return None;
    }
    let tag = r.u8().ok()?;
    let mode = r.u8().ok()?;
    let count = r.varint().ok()?;
    let size = r.varint().ok()?;
    Some((tag, mode, count, size, r.pos()))
}

/// A block's members' sizes, from the start of its body (after the
/// header): (sizes, where the payload starts). Checks the count and the
/// total against the limits.
pub fn parse_block_sizes(body: &[u8], count: u64) -> Option<(Vec<u32>, usize)> {
    if !(crate::block::MIN_MEMBERS as u64..=crate::block::MAX_MEMBERS as u64).contains(&count) {
        return None;
    }
    let mut r = crate::codec::Reader::new(body);
    let mut sizes = Vec::with_capacity(count as usize);
    let mut total = 0u64;
    for _ in 0..count {
        let u = r.varint().ok()?;
        total += u;
        if u > crate::block::MAX_MEMBER_BYTES as u64 || total > MAX_OBJECT_SIZE as u64 {
            return None;
        }
        sizes.push(u as u32);
    }
    Some((sizes, r.pos()))
}

/// An object ready to be written: its bytes as stored.
#[derive(Debug, Clone)]
pub struct StoredObject {
    pub tag: ObjectType,
    pub id: ObjectId,
    pub flags: u8,
    pub ulen: u32,
    pub payload: Vec<u8>,
}

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
    /// The context deltas are decoded with: a zstd context is costly to
    /// create, and a read through a chain decodes up to three deltas. The
    /// base is referenced for one call only (raw content: not copied).
    static DELTA_DECOMPRESSOR: RefCell<Option<zstd::zstd_safe::DCtx<'static>>> = const { RefCell::new(None) };
    static DELTA_COMPRESSOR: RefCell<Option<zstd::zstd_safe::CCtx<'static>>> = const { RefCell::new(None) };
}

/// Compresses `data` with zstd at `level` unless that does not save at least
/// 1/32 of it; returns (flags, payload).
pub fn compress(data: &[u8], level: i32) -> (u8, Vec<u8>) {
    if data.len() < 64 || level == 0 {
        return (FLAG_RAW, data.to_vec());
    }
    match compress_frame(data, level) {
        Some(z) if z.len() + data.len() / 32 < data.len() => (FLAG_ZSTD, z),
        _ => (FLAG_RAW, data.to_vec()),
    }
}

/// One zstd frame of `data` at `level`, made with this thread's reused
/// context (creating one per call cost ~5% of a table snapshot's CPU); the
/// same bytes `zstd::bulk::compress` gives.
pub fn compress_frame(data: &[u8], level: i32) -> Option<Vec<u8>> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        match c.as_mut() {
            Some((l, z)) if *l != level => {
                // (Row blocks and other objects alternate levels: the
                // context is kept, only its level changes.)
                if z.set_compression_level(level).is_ok() {
                    *l = level;
                } else {
                    *c = None;
                }
            }
            _ => {}
        }
        if c.is_none() {
            *c = zstd::bulk::Compressor::new(level).ok().map(|z| (level, z));
        }
        c.as_mut().and_then(|(_, z)| z.compress(data).ok())
    })
}

/// Prepares an object for storage.
pub fn prepare(tag: ObjectType, id: ObjectId, data: &[u8], level: i32) -> StoredObject {
    let (flags, payload) = compress(data, level);
    StoredObject {
        tag,
        id,
        flags,
        ulen: data.len() as u32,
        payload,
    }
}

/// Turns a stored payload back into the object's bytes and checks them
/// against `id`. Never allocates more than `ulen` (itself capped).
pub fn unpack(
    tag: ObjectType,
    id: &ObjectId,
    flags: u8,
    ulen: u64,
    payload: &[u8],
) -> Result<Vec<u8>> {
    unpack_as(tag, id, flags, ulen, payload, Verify::Yes)
}

/// Whether a decoder checks the bytes it produced against their id.
/// Only a delta chain's inner links are decoded with `No`: the object the
/// chain ends in is checked, and wrong bytes anywhere on the chain cannot
/// hash to its id (the store then decodes the chain again, checking every
/// link, to name the one at fault).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verify {
    Yes,
    No,
}

impl Verify {
    /// True when checking is asked for and `data` is not the object `id`.
    pub(crate) fn fails(self, tag: ObjectType, id: &ObjectId, data: &[u8]) -> bool {
        self == Verify::Yes && ObjectId::compute(tag, data) != *id
    }
}

/// [`unpack`], checking the result against `id` only when `verify` says so.
pub(crate) fn unpack_as(
    tag: ObjectType,
    id: &ObjectId,
    flags: u8,
    ulen: u64,
    payload: &[u8],
    verify: Verify,
) -> Result<Vec<u8>> {
    if ulen > MAX_OBJECT_SIZE as u64 {
        return Err(corrupt(
            tag,
            id,
            format!("declared size {ulen} exceeds the limit"),
        ));
    }
    let data = match flags {
        FLAG_RAW => {
            if payload.len() as u64 != ulen {
                return Err(corrupt(
                    tag,
                    id,
                    "stored length differs from declared length",
                ));
            }
            payload.to_vec()
        }
        FLAG_ZSTD => {
            let out = decompress_capped(payload, ulen as usize)
                .map_err(|e| corrupt(tag, id, format!("zstd: {e}")))?;
            if out.len() as u64 != ulen {
                return Err(corrupt(
                    tag,
                    id,
                    "decompressed length differs from declared length",
                ));
            }
            out
        }
        FLAG_DELTA => {
            return Err(corrupt(
                tag,
                id,
                "a delta record outside its store or transfer",
            ));
        }
        FLAG_DICT => {
            return Err(corrupt(
                tag,
                id,
                "a dictionary-compressed record outside its store",
            ));
        }
        f => return Err(corrupt(tag, id, format!("unknown flags {f}"))),
    };
    if verify.fails(tag, id, &data) {
        return Err(corrupt(tag, id, "hash mismatch"));
    }
    Ok(data)
}

/// The base id a delta payload names.
pub fn delta_base(payload: &[u8]) -> Option<ObjectId> {
    ObjectId::from_slice(payload.get(..32)?)
}

/// Encodes `data` as a delta against `base` (a `FLAG_DELTA` payload), or
/// None when zstd fails.
pub fn make_delta(data: &[u8], base_id: &ObjectId, base: &[u8], level: i32) -> Option<Vec<u8>> {
    // One call with both sizes known: zstd sizes its tables for this
    // object and base (loading the base as a dictionary first would size
    // them for the level alone, megabytes per delta at high levels).
    // The context is reused (creating one cost ~10% of a small delta);
    // zstd sizes its tables per call and shrinks a workspace left oversized.
    let mut frame = Vec::with_capacity(zstd::zstd_safe::compress_bound(data.len()));
    DELTA_COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = zstd::zstd_safe::CCtx::try_create();
        }
        c.as_mut()?
            .compress_using_dict(&mut frame, data, base, level)
            .ok()
    })?;
    let mut out = Vec::with_capacity(32 + frame.len());
    out.extend_from_slice(&base_id.0);
    out.extend_from_slice(&frame);
    Some(out)
}

/// Decodes a `FLAG_DELTA` payload against its base's bytes and checks the
/// result against `id`; never produces more than `ulen` bytes.
pub fn unpack_delta(
    tag: ObjectType,
    id: &ObjectId,
    ulen: u64,
    payload: &[u8],
    base: &[u8],
) -> Result<Vec<u8>> {
    unpack_delta_as(tag, id, ulen, payload, base, Verify::Yes)
}

/// [`unpack_delta`], checking the result against `id` only when `verify`
/// says so (its length always).
pub(crate) fn unpack_delta_as(
    tag: ObjectType,
    id: &ObjectId,
    ulen: u64,
    payload: &[u8],
    base: &[u8],
    verify: Verify,
) -> Result<Vec<u8>> {
    if ulen > MAX_OBJECT_SIZE as u64 || payload.len() < 32 {
        return Err(corrupt(tag, id, "bad delta record"));
    }
    let mut data = Vec::with_capacity(ulen as usize);
    let out = DELTA_DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = zstd::zstd_safe::DCtx::try_create();
        }
        let Some(d) = d.as_mut() else {
            return Err("cannot create a zstd context".to_string());
        };
        d.decompress_using_dict(&mut data, &payload[32..], base)
            .map_err(|code| zstd::zstd_safe::get_error_name(code).to_string())
    });
    out.map_err(|e| corrupt(tag, id, format!("zstd delta: {e}")))?;
    if data.len() as u64 != ulen || verify.fails(tag, id, &data) {
        return Err(corrupt(tag, id, "hash mismatch (delta)"));
    }
    Ok(data)
}

/// A delta base prepared once (a zstd raw-content dictionary), for the
/// many deltas a transfer may have against it.
pub struct DeltaBase(zstd::dict::DecoderDictionary<'static>);

impl DeltaBase {
    pub fn new(base: &[u8]) -> DeltaBase {
        DeltaBase(zstd::dict::DecoderDictionary::copy(base))
    }
}

/// [`unpack_delta`] with a prepared base.
pub fn unpack_delta_prepared(
    tag: ObjectType,
    id: &ObjectId,
    ulen: u64,
    payload: &[u8],
    base: &DeltaBase,
) -> Result<Vec<u8>> {
    if ulen > MAX_OBJECT_SIZE as u64 || payload.len() < 32 {
        return Err(corrupt(tag, id, "bad delta record"));
    }
    let mut d = zstd::bulk::Decompressor::with_prepared_dictionary(&base.0)
        .map_err(|e| corrupt(tag, id, format!("zstd: {e}")))?;
    let data = d
        .decompress(&payload[32..], ulen as usize)
        .map_err(|e| corrupt(tag, id, format!("zstd delta: {e}")))?;
    if data.len() as u64 != ulen || ObjectId::compute(tag, &data) != *id {
        return Err(corrupt(tag, id, "hash mismatch (delta)"));
    }
    Ok(data)
}

/// The bytes of a record header.
pub fn record_header(o: &StoredObject) -> Vec<u8> {
    let mut h = Vec::with_capacity(56);
    h.push(REC_OBJECT);
    h.push(o.tag as u8);
    h.push(o.flags);
    h.extend_from_slice(&o.id.0);
    put_varint(&mut h, u64::from(o.ulen));
    put_varint(&mut h, o.payload.len() as u64);
    h
}

/// The length of a record header for these sizes.
pub fn record_header_len(ulen: u64, clen: u64) -> u64 {
    35 + varint_len(ulen) as u64 + varint_len(clen) as u64
}

/// Writes a pack stream. `W` is a file, a socket body or a bundle.
pub struct PackWriter<W: Write> {
    out: W,
    hasher: blake3::Hasher,
    offset: u64,
    count: u64,
}

impl<W: Write> PackWriter<W> {
    pub fn new(mut out: W) -> std::io::Result<Self> {
        let mut hasher = blake3::Hasher::new();
        let mut head = PACK_MAGIC.to_vec();
        head.push(PACK_VERSION);
        out.write_all(&head)?;
        hasher.update(&head);
        Ok(PackWriter {
            out,
            hasher,
            offset: head.len() as u64,
            count: 0,
        })
    }

    /// Bytes written so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The output, to flush or sync what was written so far (writing to it
    /// directly would break the pack).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    /// Appends a record; returns its offset.
    pub fn add(&mut self, o: &StoredObject) -> std::io::Result<u64> {
        let at = self.offset;
        let h = record_header(o);
        self.out.write_all(&h)?;
        self.out.write_all(&o.payload)?;
        self.hasher.update(&h);
        self.hasher.update(&o.payload);
        self.offset += (h.len() + o.payload.len()) as u64;
        self.count += 1;
        Ok(at)
    }

    /// Appends a block record (stored packs only); returns its offset.
    pub fn add_block(&mut self, b: &StoredBlock) -> std::io::Result<u64> {
        let at = self.offset;
        let mut sizes = Vec::with_capacity(b.members.len() * 2);
        for (_, u) in &b.members {
            put_varint(&mut sizes, u64::from(*u));
        }
        let mut h = vec![REC_BLOCK, b.tag as u8, b.mode];
        put_varint(&mut h, b.members.len() as u64);
        put_varint(&mut h, (sizes.len() + b.payload.len()) as u64);
        for part in [&h, &sizes, &b.payload] {
            self.out.write_all(part)?;
            self.hasher.update(part);
            self.offset += part.len() as u64;
        }
        self.count += 1;
        Ok(at)
    }

    /// Writes the end record and trailer; returns the writer and the trailer
    /// hash (the pack's name).
    pub fn finish(mut self) -> std::io::Result<(W, ObjectId)> {
        let mut end = vec![REC_END];
        put_varint(&mut end, self.count);
        self.out.write_all(&end)?;
        self.hasher.update(&end);
        let sum = ObjectId(*self.hasher.finalize().as_bytes());
        self.out.write_all(&sum.0)?;
        self.out.flush()?;
        Ok((self.out, sum))
    }
}

/// One record read from a stream, its payload not yet verified.
#[derive(Debug, Clone)]
pub struct Record {
    pub offset: u64,
    pub tag: ObjectType,
    pub flags: u8,
    pub id: ObjectId,
    pub ulen: u64,
    pub payload: Vec<u8>,
    /// A member of the block record at `offset` (stored packs of format-4
    /// stores): its position there. Its `flags` are 0, `payload` its bytes
    /// and `id` their hash.
    pub member: Option<u32>,
}

impl Record {
    /// Decompresses and verifies the object's bytes.
    pub fn verify(&self) -> Result<Vec<u8>> {
        unpack(self.tag, &self.id, self.flags, self.ulen, &self.payload)
    }

    pub fn into_stored(self) -> StoredObject {
        StoredObject {
            tag: self.tag,
            id: self.id,
            flags: self.flags,
            ulen: self.ulen as u32,
            payload: self.payload,
        }
    }
}

/// Reads a pack stream record by record, checking the framing and, at the
/// end, the trailer hash. `what` names the stream in errors.
pub struct PackReader<R: Read> {
    inp: R,
    hasher: blake3::Hasher,
    offset: u64,
    count: u64,
    done: bool,
    what: String,
    /// What errors call the stream (`pack`, `bundle`).
    kind: &'static str,
    /// Where the stream starts in its file, for the offsets errors give.
    base: u64,
    /// The trailer hash once the end was reached and verified.
    pub trailer: Option<ObjectId>,
    /// Whether block records are read (a store's own packs) or refused.
    blocks: bool,
    /// The members of the block read last, not yet returned.
    pending: std::collections::VecDeque<Record>,
}

impl<R: Read> PackReader<R> {
    /// Reads the stream's magic and version.
    pub fn new(inp: R, what: impl Into<String>) -> Result<Self> {
        Self::new_in(inp, what, "pack", 0)
    }

    /// A pack stream inside a larger file (a bundle): errors call it
    /// `kind` and give offsets from the start of that file, where the
    /// stream starts at `base`.
    pub fn new_in(
        mut inp: R,
        what: impl Into<String>,
        kind: &'static str,
        base: u64,
    ) -> Result<Self> {
        let what = what.into();
        let mut head = [0u8; 9];
        read_exact(&mut inp, &mut head, kind, &what, base)?;
        if &head[..8] != PACK_MAGIC {
            return Err(bad(kind, &what, base, "not a pack stream (bad magic)"));
        }
        if head[8] != PACK_VERSION {
            return Err(bad(
                kind,
                &what,
                base + 8,
                format!("unsupported pack version {}", head[8]),
            ));
        }
        let mut hasher = blake3::Hasher::new();
        hasher.update(&head);
        Ok(PackReader {
            inp,
            hasher,
            offset: 9,
            count: 0,
            done: false,
            what,
            kind,
            base,
            trailer: None,
            blocks: false,
            pending: Default::default(),
        })
    }

    /// Reads block records too (a store's own packs), returning each
    /// member as a record of its own.
    pub fn with_blocks(mut self) -> Self {
        self.blocks = true;
        self
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn byte(&mut self) -> Result<u8> {
        let mut b = [0u8; 1];
        read_exact(
            &mut self.inp,
            &mut b,
            self.kind,
            &self.what,
            self.base + self.offset,
        )?;
        self.hasher.update(&b);
        self.offset += 1;
        Ok(b[0])
    }

    fn varint(&mut self) -> Result<u64> {
        let start = self.offset;
        let mut v: u64 = 0;
        let mut shift = 0u32;
        loop {
            let b = self.byte()?;
            if shift == 63 && b > 1 {
                return Err(bad(
                    self.kind,
                    &self.what,
                    self.base + start,
                    "varint overflows 64 bits",
                ));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                if b == 0 && shift > 0 {
                    return Err(bad(
                        self.kind,
                        &self.what,
                        self.base + start,
                        "overlong varint",
                    ));
                }
                return Ok(v);
            }
            shift += 7;
        }
    }

    /// The next record, or None after the verified end.
    pub fn next_record(&mut self) -> Result<Option<Record>> {
        if let Some(r) = self.pending.pop_front() {
            return Ok(Some(r));
        }
        if self.done {
            return Ok(None);
        }
        let at = self.offset;
        match self.byte()? {
            REC_OBJECT => {}
            REC_BLOCK if self.blocks => {
                self.read_block(at)?;
                return Ok(self.pending.pop_front());
            }
            REC_END => {
                let n = self.varint()?;
                if n != self.count {
                    return Err(bad(
                        self.kind,
                        &self.what,
                        self.base + at,
                        format!("end says {n} records, stream had {}", self.count),
                    ));
                }
                let expect = ObjectId(*self.hasher.finalize().as_bytes());
                let mut sum = [0u8; 32];
                read_exact(
                    &mut self.inp,
                    &mut sum,
                    self.kind,
                    &self.what,
                    self.base + self.offset,
                )?;
                if sum != expect.0 {
                    return Err(bad(
                        self.kind,
                        &self.what,
                        self.base + self.offset,
                        "trailer checksum mismatch",
                    ));
                }
                self.offset += 32;
                self.done = true;
                self.trailer = Some(expect);
                return Ok(None);
            }
            k => {
                return Err(bad(
                    self.kind,
                    &self.what,
                    self.base + at,
                    format!("unknown record kind {k}"),
                ));
            }
        }
        let tag_b = self.byte()?;
        let tag = ObjectType::from_u8(tag_b).ok_or_else(|| {
            bad(
                self.kind,
                &self.what,
                self.base + at + 1,
                format!("unknown object type {tag_b}"),
            )
        })?;
        let flags = self.byte()?;
        if flags > FLAG_DICT {
            return Err(bad(
                self.kind,
                &self.what,
                self.base + at + 2,
                format!("unknown flags {flags}"),
            ));
        }
        let mut id = [0u8; 32];
        read_exact(
            &mut self.inp,
            &mut id,
            self.kind,
            &self.what,
            self.base + self.offset,
        )?;
        self.hasher.update(&id);
        self.offset += 32;
        let ulen = self.varint()?;
        let clen = self.varint()?;
        if ulen > MAX_OBJECT_SIZE as u64 || clen > MAX_OBJECT_SIZE as u64 + 1024 {
            return Err(bad(
                self.kind,
                &self.what,
                self.base + at,
                format!("object of {ulen}/{clen} bytes exceeds the limit"),
            ));
        }
        if flags == FLAG_RAW && clen != ulen {
            return Err(bad(
                self.kind,
                &self.what,
                self.base + at,
                "raw record whose lengths differ",
            ));
        }
        if flags == FLAG_DELTA && clen < 32 {
            return Err(bad(
                self.kind,
                &self.what,
                self.base + at,
                "delta record without a base",
            ));
        }
        if flags == FLAG_DICT && clen < 33 {
            return Err(bad(
                self.kind,
                &self.what,
                self.base + at,
                "dictionary record without its dictionary or frame",
            ));
        }
        let mut payload = vec![0u8; clen as usize];
        read_exact(
            &mut self.inp,
            &mut payload,
            self.kind,
            &self.what,
            self.base + self.offset,
        )?;
        self.hasher.update(&payload);
        self.offset += clen;
        self.count += 1;
        Ok(Some(Record {
            offset: at,
            tag,
            flags,
            id: ObjectId(id),
            ulen,
            payload,
            member: None,
        }))
    }

    /// Reads a block record (its kind byte read) and queues its members.
    fn read_block(&mut self, at: u64) -> Result<()> {
        let fail = |s: &Self, why: String| Err(bad(s.kind, &s.what, s.base + at, why));
        let tag_b = self.byte()?;
        let Some(tag) = ObjectType::from_u8(tag_b) else {
            return fail(self, format!("block of unknown object type {tag_b}"));
        };
        let mode = self.byte()?;
        let count = self.varint()?;
        let size = self.varint()?;
        if size > MAX_BLOCK_SIZE {
            return fail(self, format!("block of {size} bytes exceeds the limit"));
        }
        let mut body = vec![0u8; size as usize];
        read_exact(
            &mut self.inp,
            &mut body,
            self.kind,
            &self.what,
            self.base + self.offset,
        )?;
        self.hasher.update(&body);
        self.offset += size;
        self.count += 1;
        let Some((sizes, start)) = parse_block_sizes(&body, count) else {
            return fail(self, format!("block of {count} members with bad sizes"));
        };
        let total: usize = sizes.iter().map(|&u| u as usize).sum();
        let bytes = match crate::block::decode(mode, total, &body[start..]) {
            Ok(b) => b,
            Err(e) => return fail(self, format!("block: {e}")),
        };
        let mut from = 0usize;
        for (i, u) in sizes.into_iter().enumerate() {
            let m = bytes[from..from + u as usize].to_vec();
            from += u as usize;
            self.pending.push_back(Record {
                offset: at,
                tag,
                flags: FLAG_RAW,
                id: ObjectId::compute(tag, &m),
                ulen: u64::from(u),
                payload: m,
                member: Some(i as u32),
            });
        }
        Ok(())
    }

    /// After the end: fails if the underlying reader has more bytes.
    pub fn expect_eof(&mut self) -> Result<()> {
        let mut b = [0u8; 1];
        loop {
            match self.inp.read(&mut b) {
                Ok(0) => return Ok(()),
                Ok(_) => {
                    return Err(bad(
                        self.kind,
                        &self.what,
                        self.base + self.offset,
                        "trailing bytes after the pack trailer",
                    ));
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(SyncError::io("reading", &self.what, e)),
            }
        }
    }

    pub fn into_inner(self) -> R {
        self.inp
    }

    /// The records as objects, then a check that nothing follows the trailer.
    pub fn into_objects(self) -> Objects<R> {
        Objects {
            r: self,
            done: false,
        }
    }
}

/// The objects of a pack stream, verified for framing and checksum (each
/// object's own bytes are verified by whoever stores it).
pub struct Objects<R: Read> {
    r: PackReader<R>,
    done: bool,
}

impl<R: Read> Iterator for Objects<R> {
    type Item = Result<StoredObject>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.r.next_record() {
            Ok(Some(rec)) => Some(Ok(rec.into_stored())),
            Ok(None) => {
                self.done = true;
                self.r.expect_eof().err().map(Err)
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

fn bad(kind: &'static str, what: &str, offset: u64, reason: impl Into<String>) -> SyncError {
    SyncError::corrupt_file(kind, what, format!("{} at byte {offset}", reason.into()))
}

fn read_exact(
    r: &mut impl Read,
    buf: &mut [u8],
    kind: &'static str,
    what: &str,
    offset: u64,
) -> Result<()> {
    match r.read_exact(buf) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(bad(
            kind,
            what,
            offset,
            "truncated (unexpected end of stream)",
        )),
        Err(e) => Err(SyncError::io("reading", what, e)),
    }
}

/// Parses a record header at the start of `buf` (as read by a random-access
/// reader); returns (tag, flags, id, ulen, clen, header length).
pub fn parse_record_header(buf: &[u8]) -> Option<(u8, u8, ObjectId, u64, u64, usize)> {
    let mut r = crate::codec::Reader::new(buf);
    if r.u8().ok()? != REC_OBJECT {
        return None;
    }
    let tag = r.u8().ok()?;
    let flags = r.u8().ok()?;
    let id = r.id().ok()?;
    let ulen = r.varint().ok()?;
    let clen = r.varint().ok()?;
    Some((tag, flags, id, ulen, clen, r.pos()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(data: &[u8]) -> StoredObject {
        prepare(
            ObjectType::Chunk,
            ObjectId::compute(ObjectType::Chunk, data),
            data,
            3,
        )
    }

    #[test]
    fn stream_round_trips_and_detects_every_flip() {
        let datas: Vec<Vec<u8>> = vec![
            b"hello".to_vec(),
            vec![b'x'; 5000],
            (0..3000u32).map(|i| (i * 7) as u8).collect(),
        ];
        let mut w = PackWriter::new(Vec::new()).unwrap();
        for d in &datas {
            w.add(&obj(d)).unwrap();
        }
        let (bytes, _) = w.finish().unwrap();
        let read = |b: &[u8]| -> Result<Vec<Vec<u8>>> {
            let mut r = PackReader::new(b, "test")?;
            let mut out = Vec::new();
            while let Some(rec) = r.next_record()? {
                out.push(rec.verify()?);
            }
            r.expect_eof()?;
            Ok(out)
        };
        assert_eq!(read(&bytes).unwrap(), datas);
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert!(read(&b).is_err(), "flip at {i} went unnoticed");
        }
        for n in 0..bytes.len() {
            assert!(
                read(&bytes[..n]).is_err(),
                "truncation at {n} went unnoticed"
            );
        }
    }

    #[test]
    fn incompressible_data_is_stored_raw() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let data: Vec<u8> = (0..10_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        let o = obj(&data);
        assert_eq!(o.flags, FLAG_RAW);
        let o = obj(&vec![0u8; 10_000]);
        assert_eq!(o.flags, FLAG_ZSTD);
        assert!(o.payload.len() < 100);
    }

    #[test]
    fn zstd_bomb_is_capped() {
        let big = vec![0u8; 1 << 20];
        let z = zstd::bulk::compress(&big, 3).unwrap();
        let id = ObjectId::compute(ObjectType::Chunk, &big);
        assert!(unpack(ObjectType::Chunk, &id, FLAG_ZSTD, 1000, &z).is_err());
        assert!(unpack(ObjectType::Chunk, &id, FLAG_ZSTD, 1 << 20, &z).is_ok());
    }

    #[test]
    fn a_reused_context_makes_the_frames_a_fresh_one_does() {
        let text: Vec<u8> = (0..50_000u32)
            .flat_map(|i| format!("row {i} {}\n", i % 97).into_bytes())
            .collect();
        // Levels alternate: the thread's context is re-levelled and reused.
        for level in [3, 3, 19, 1, 3] {
            for part in [&text[..100], &text[..], &text[1000..9000]] {
                assert_eq!(
                    compress_frame(part, level).unwrap(),
                    zstd::bulk::compress(part, level).unwrap(),
                    "level {level}, {} bytes",
                    part.len()
                );
            }
        }
    }
}
