//! Trained zstd dictionaries: small objects compress alone poorly (a 4 KiB
//! HTML file, a 1 KiB row-map leaf), because zstd has no history to match
//! against. Once a store has written enough small objects of a kind, a
//! write session trains a dictionary on a sample of them
//! (`zstd::dict::from_samples`), stores it as an object of its own (type
//! [`ObjectType::Dict`]) and compresses the kind's later small objects with
//! it. Their pack records (flags [`crate::pack::FLAG_DICT`]) name the
//! dictionary they need; ids stay the hash of the uncompressed bytes.
//!
//! A dictionary object's canonical bytes (store-format.md §3.8):
//!
//! ```text
//! version u8 = 1 | kind u8 (the object type it compresses) | content (the zstd dictionary)
//! ```
//!
//! Verified dictionaries are cached per process (by id: the id is the hash
//! of the bytes, so a cached entry can never be stale), and each thread
//! keeps its zstd contexts with the dictionary loaded, so random reads pay
//! the dictionary's digestion once.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use crate::error::Result;
use crate::id::{ObjectId, ObjectType};
use crate::object::{MAX_OBJECT_SIZE, corrupt};

/// The version byte of a dictionary object.
pub const DICT_VERSION: u8 = 1;
/// The largest dictionary content a reader accepts.
pub const MAX_DICT_SIZE: usize = 1 << 20;
/// Objects of at most this many bytes are sampled for training.
pub const DICT_MAX_SAMPLE: usize = 64 << 10;
/// Objects of at most this many bytes are compressed with their kind's
/// dictionary (larger ones gain little, and binary ones can lose: measured
/// with 1 MiB, the `bin` corpus grew by 0.3%, `docs` shrank by 1.3% more).
pub const DICT_MAX_OBJECT: usize = 64 << 10;
/// The size of the dictionaries a store trains.
pub const DICT_TARGET_SIZE: usize = 112 << 10;
/// Sample bytes of file chunks gathered before their dictionary is
/// trained, unless `SP_SYNC_DICT_TRAIN_BYTES` says otherwise (for every
/// kind). Also the most a session keeps in memory for training.
pub const DEFAULT_TRAIN_BYTES: usize = 8 << 20;
/// The same for tree nodes (fewer, and alike).
pub const TREE_TRAIN_BYTES: usize = 2 << 20;
/// The same for row-map nodes.
pub const ROWS_TRAIN_BYTES: usize = 4 << 20;
/// A session that ends with fewer sample bytes than the training size
/// still trains its kind's dictionary from them when it has at least this
/// many (a store written by many small snapshots gets one too; objects
/// already written stay as they are).
pub const END_TRAIN_BYTES: usize = 256 << 10;
/// The fewest samples a dictionary is trained from.
pub const MIN_SAMPLES: usize = 32;
/// The most sample bytes all sessions of a process hold at once (a server
/// receives many pushes at a time): past it, samplers wait for room.
pub const PROCESS_SAMPLE_BUDGET: usize = 48 << 20;

static SAMPLE_BYTES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A dictionary object: which kind of object it is for, and its zstd
/// dictionary content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dictionary {
    /// The object type whose small objects it compresses.
    pub kind: ObjectType,
    /// The zstd dictionary (a trained one, with zstd's magic, or raw content).
    pub content: Vec<u8>,
}

/// Whether objects of `kind` get a dictionary: file chunks, tree nodes and
/// row-map nodes (list nodes are ids, which do not compress; tables and
/// snapshots are few).
pub fn is_dict_kind(kind: ObjectType) -> bool {
    matches!(
        kind,
        ObjectType::Chunk | ObjectType::Tree | ObjectType::Rows
    )
}

impl Dictionary {
    /// The canonical bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + self.content.len());
        out.push(DICT_VERSION);
        out.push(self.kind as u8);
        out.extend_from_slice(&self.content);
        out
    }

    /// Decodes canonical bytes; refuses an unknown version, a kind that gets
    /// no dictionary, and empty or oversized content.
    pub fn decode(b: &[u8]) -> std::result::Result<Dictionary, String> {
        let (&v, rest) = b.split_first().ok_or("empty dictionary object")?;
        if v != DICT_VERSION {
            return Err(format!("unknown dictionary version {v}"));
        }
        let (&k, content) = rest.split_first().ok_or("dictionary without a kind")?;
        let kind = ObjectType::from_u8(k)
            .filter(|k| is_dict_kind(*k))
            .ok_or_else(|| format!("dictionary for an unknown kind {k}"))?;
        if content.is_empty() || content.len() > MAX_DICT_SIZE {
            return Err(format!(
                "dictionary content of {} bytes (1 to {MAX_DICT_SIZE})",
                content.len()
            ));
        }
        Ok(Dictionary {
            kind,
            content: content.to_vec(),
        })
    }

    /// The object id of this dictionary.
    pub fn id(&self) -> ObjectId {
        ObjectId::compute(ObjectType::Dict, &self.encode())
    }
}

/// Whether this process writes dictionaries (`SP_SYNC_DICTIONARIES=0`
/// turns them off; stores that have some still read).
pub fn enabled() -> bool {
    !matches!(
        std::env::var("SP_SYNC_DICTIONARIES").as_deref(),
        Ok("0") | Ok("off") | Ok("false")
    )
}

/// Sample bytes gathered for `kind` before training.
pub fn train_bytes(kind: ObjectType) -> usize {
    std::env::var("SP_SYNC_DICT_TRAIN_BYTES")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n >= 1024)
        .unwrap_or(match kind {
            ObjectType::Tree => TREE_TRAIN_BYTES,
            ObjectType::Rows => ROWS_TRAIN_BYTES,
            _ => DEFAULT_TRAIN_BYTES,
        })
}

type Cache = Mutex<HashMap<ObjectId, Arc<Dictionary>>>;

fn cache() -> &'static Cache {
    static C: OnceLock<Cache> = OnceLock::new();
    C.get_or_init(|| Mutex::new(HashMap::new()))
}

/// A verified dictionary this process has seen.
pub fn cached(id: &ObjectId) -> Option<Arc<Dictionary>> {
    cache().lock().ok()?.get(id).cloned()
}

/// Remembers a dictionary; `d.id()` is recomputed, so only a dictionary
/// whose bytes match `id` is kept.
pub fn remember(id: ObjectId, d: Arc<Dictionary>) -> bool {
    if d.id() != id {
        return false;
    }
    if let Ok(mut c) = cache().lock() {
        c.insert(id, d);
    }
    true
}

thread_local! {
    static ENC: RefCell<Vec<(ObjectId, i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(Vec::new()) };
    static DEC: RefCell<Vec<(ObjectId, zstd::bulk::Decompressor<'static>)>> =
        const { RefCell::new(Vec::new()) };
}

/// Decoder contexts a thread keeps (one per dictionary, most recent first).
const DEC_CONTEXTS: usize = 4;

/// The dictionary id a `FLAG_DICT` payload names.
pub fn payload_dict(payload: &[u8]) -> Option<ObjectId> {
    ObjectId::from_slice(payload.get(..32)?)
}

/// Compresses `data` with the dictionary `dict_id` at `level`: the
/// `FLAG_DICT` payload (dictionary id, then one zstd frame without a
/// dictionary id field), or None when zstd fails.
pub fn compress(dict_id: &ObjectId, dict: &Dictionary, data: &[u8], level: i32) -> Option<Vec<u8>> {
    // A context per (dictionary, level), most recent first: loading a
    // dictionary builds its tables, so a thread that alternates levels (a
    // repack: the store's level and a higher one) keeps both.
    ENC.with(|e| {
        let mut e = e.borrow_mut();
        match e.iter().position(|(id, l, _)| id == dict_id && *l == level) {
            Some(i) => {
                let hit = e.remove(i);
                e.insert(0, hit);
            }
            None => {
                let mut c = zstd::bulk::Compressor::with_dictionary(level, &dict.content).ok()?;
                c.set_parameter(zstd::zstd_safe::CParameter::DictIdFlag(false))
                    .ok()?;
                e.insert(0, (*dict_id, level, c));
                e.truncate(4);
            }
        }
        let (_, _, c) = e.first_mut()?;
        let frame = c.compress(data).ok()?;
        let mut out = Vec::with_capacity(32 + frame.len());
        out.extend_from_slice(&dict_id.0);
        out.extend_from_slice(&frame);
        Some(out)
    })
}

/// Decodes a `FLAG_DICT` payload with its dictionary (which the caller
/// found by [`payload_dict`] and verified) and checks the bytes against
/// `id`. Never produces more than `ulen` (itself capped) bytes.
pub fn decompress(
    tag: ObjectType,
    id: &ObjectId,
    ulen: u64,
    payload: &[u8],
    dict_id: &ObjectId,
    dict: &Dictionary,
) -> Result<Vec<u8>> {
    decompress_as(
        tag,
        id,
        ulen,
        payload,
        dict_id,
        dict,
        crate::pack::Verify::Yes,
    )
}

/// [`decompress`], checking the result against `id` only when `verify`
/// says so (a delta chain's inner link: see [`crate::pack::Verify`]).
pub(crate) fn decompress_as(
    tag: ObjectType,
    id: &ObjectId,
    ulen: u64,
    payload: &[u8],
    dict_id: &ObjectId,
    dict: &Dictionary,
    verify: crate::pack::Verify,
) -> Result<Vec<u8>> {
    if ulen > MAX_OBJECT_SIZE as u64 {
        return Err(corrupt(
            tag,
            id,
            format!("declared size {ulen} exceeds the limit"),
        ));
    }
    if payload.len() < 33 || payload_dict(payload).as_ref() != Some(dict_id) {
        return Err(corrupt(tag, id, "bad dictionary record"));
    }
    if dict.kind != tag {
        return Err(corrupt(
            tag,
            id,
            format!(
                "its record names dictionary {} of {} objects",
                dict_id.short(),
                dict.kind
            ),
        ));
    }
    let out = DEC.with(|d| {
        let mut d = d.borrow_mut();
        let pos = match d.iter().position(|(k, _)| k == dict_id) {
            Some(p) => p,
            None => {
                let z = zstd::bulk::Decompressor::with_dictionary(&dict.content)?;
                if d.len() >= DEC_CONTEXTS {
                    d.pop();
                }
                d.insert(0, (*dict_id, z));
                0
            }
        };
        d[pos].1.decompress(&payload[32..], ulen as usize)
    });
    let data = out.map_err(|e| corrupt(tag, id, format!("zstd (dictionary): {e}")))?;
    if data.len() as u64 != ulen {
        return Err(corrupt(
            tag,
            id,
            "decompressed length differs from declared length",
        ));
    }
    if verify.fails(tag, id, &data) {
        return Err(corrupt(tag, id, "hash mismatch"));
    }
    Ok(data)
}

/// Gathers a bounded sample of one kind's small objects and trains a
/// dictionary once it holds enough.
#[derive(Debug)]
pub struct Sampler {
    kind: ObjectType,
    want: usize,
    bytes: usize,
    samples: Vec<Vec<u8>>,
    /// Trained (or given up): gathers nothing more.
    done: bool,
}

impl Sampler {
    /// A sampler that trains after `want` bytes of samples.
    pub fn new(kind: ObjectType, want: usize) -> Sampler {
        Sampler {
            kind,
            want,
            bytes: 0,
            samples: Vec::new(),
            done: false,
        }
    }

    /// Whether it still gathers.
    pub fn active(&self) -> bool {
        !self.done
    }

    /// Adds an object's bytes; returns the samples when it has enough to
    /// train (once: the sampler is then done).
    pub fn add(&mut self, data: &[u8]) -> Option<Vec<Vec<u8>>> {
        use std::sync::atomic::Ordering;
        if self.done || data.len() < 16 || data.len() > DICT_MAX_SAMPLE {
            return None;
        }
        if SAMPLE_BYTES.fetch_add(data.len(), Ordering::SeqCst) + data.len() > PROCESS_SAMPLE_BUDGET
        {
            SAMPLE_BYTES.fetch_sub(data.len(), Ordering::SeqCst);
            return None;
        }
        self.bytes += data.len();
        self.samples.push(data.to_vec());
        if self.bytes >= self.want && self.samples.len() >= MIN_SAMPLES {
            self.done = true;
            self.release();
            return Some(std::mem::take(&mut self.samples));
        }
        None
    }

    /// At the end of a session: the samples, if there are enough for a
    /// dictionary (`min` bytes and [`MIN_SAMPLES`]) though fewer than the
    /// training size. The sampler is then done.
    pub fn take_at_end(&mut self, min: usize) -> Option<Vec<Vec<u8>>> {
        if self.done || self.bytes < min || self.samples.len() < MIN_SAMPLES {
            return None;
        }
        self.done = true;
        self.release();
        Some(std::mem::take(&mut self.samples))
    }

    /// Gives the process budget back what this sampler held.
    fn release(&mut self) {
        SAMPLE_BYTES.fetch_sub(self.bytes, std::sync::atomic::Ordering::SeqCst);
        self.bytes = 0;
    }

    /// The kind it samples.
    pub fn kind(&self) -> ObjectType {
        self.kind
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.release();
    }
}

/// Trains a dictionary for `kind` from `samples`; None when zstd cannot
/// (too few or too uniform samples).
pub fn train(kind: ObjectType, samples: &[Vec<u8>]) -> Option<Dictionary> {
    let total: usize = samples.iter().map(Vec::len).sum();
    // zstd wants the dictionary well under the sample size.
    let size = DICT_TARGET_SIZE.min(total / 8).max(1024);
    match zstd::dict::from_samples(samples, size) {
        Ok(content) if !content.is_empty() && content.len() <= MAX_DICT_SIZE => {
            Some(Dictionary { kind, content })
        }
        Ok(_) => None,
        Err(e) => {
            tracing::debug!("training a {kind} dictionary failed: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionary_objects_round_trip_and_refuse_bad_bytes() {
        let d = Dictionary {
            kind: ObjectType::Tree,
            content: b"hello".to_vec(),
        };
        assert_eq!(Dictionary::decode(&d.encode()).unwrap(), d);
        assert!(Dictionary::decode(&[]).is_err());
        assert!(Dictionary::decode(&[2, 3, 1]).is_err());
        assert!(Dictionary::decode(&[1, 4, 1]).is_err());
        assert!(Dictionary::decode(&[1, 3]).is_err());
    }

    #[test]
    fn compressed_with_a_trained_dictionary_reads_back() {
        let samples: Vec<Vec<u8>> = (0..400)
            .map(|i| {
                format!(
                    "<html><head><title>page {i}</title></head><body>{}</body></html>",
                    "lorem ipsum ".repeat(i % 17)
                )
                .into_bytes()
            })
            .collect();
        let d = train(ObjectType::Chunk, &samples).expect("trained");
        let did = d.id();
        let data = b"<html><head><title>page 9999</title></head><body>lorem ipsum</body></html>";
        let id = ObjectId::compute(ObjectType::Chunk, data);
        let p = compress(&did, &d, data, 3).unwrap();
        assert!(p.len() < 32 + data.len() / 2, "{}", p.len());
        let back = decompress(ObjectType::Chunk, &id, data.len() as u64, &p, &did, &d).unwrap();
        assert_eq!(back, data);
        // Wrong kind, wrong size, flipped byte: refused.
        assert!(decompress(ObjectType::Tree, &id, data.len() as u64, &p, &did, &d).is_err());
        assert!(decompress(ObjectType::Chunk, &id, 10, &p, &did, &d).is_err());
        // A flipped byte is refused, or (a bit zstd ignores) still gives
        // exactly the object: never other bytes.
        for i in 0..p.len() {
            let mut q = p.clone();
            q[i] ^= 1;
            if let Ok(b) = decompress(ObjectType::Chunk, &id, data.len() as u64, &q, &did, &d) {
                assert_eq!(b, data);
            }
        }
        // So is a flipped byte of the dictionary (under the id of the good one).
        for i in (0..d.content.len()).step_by(97) {
            let mut bad = d.clone();
            bad.content[i] ^= 1;
            if let Ok(b) = decompress(ObjectType::Chunk, &id, data.len() as u64, &p, &did, &bad) {
                assert_eq!(b, data);
            }
        }
    }
}
