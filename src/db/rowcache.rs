//! The row cache: for one table of a live database, each row's key as of
//! one snapshot (whose `xmin` the file records), with the row map those
//! rows were stored as. A row whose version (PostgreSQL: its `xmin`) is
//! older than that snapshot is the row it saw; a re-snapshot reads in full
//! only the rows with newer versions, and rebuilds the map around them
//! ([`crate::pmap::apply_edits`]), with the cached keys to tell which rows
//! are new and, when the table holds fewer rows than that adds up to,
//! which are gone. Like the stat cache it is only a hint, kept beside the
//! store (`CACHE_DIR/rows/`), never in it.
//!
//! ```text
//! magic "SPSYNCRC" | version = 2 | ident [32] | xid u64 LE
//! rows × key (varint length ≥ 1, bytes), in key order
//! 0x00 (the end: no key is empty) | root id [32] | rows (varint)
//! BLAKE3 of every preceding byte [32]
//! ```
//!
//! `ident` names what the rows are valid for (the database, the table, its
//! definition and sp-sync's row encoding); `xid` is the `xmin` of the
//! snapshot the rows were read in (every older transaction had ended). The
//! file is read as a stream (a table's keys need not fit in memory);
//! damage is found at the latest at its end, before anything read from it
//! is used. (Version 1 also held a stamp per row; such a file is taken for
//! no cache.)

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::codec::put_varint;
use crate::error::{Result, SyncError};
use crate::id::ObjectId;

const MAGIC: &[u8; 8] = b"SPSYNCRC";
const VERSION: u8 = 2;
/// Longest key a cache may hold (the map's key limit).
const MAX_FIELD: u64 = 1 << 20;
/// How much of a cache is read at a time.
const READ_BUF: usize = 1 << 16;

/// Where a table's row cache lives: named by a hash of `what` (the
/// database's display location, its schema and the table).
pub fn path_for(cache_dir: &Path, what: &[&str]) -> PathBuf {
    let mut h = blake3::Hasher::new();
    for w in what {
        h.update(w.as_bytes());
        h.update(&[0]);
    }
    cache_dir
        .join("rows")
        .join(crate::id::hex(&h.finalize().as_bytes()[..16]))
}

/// The ids the row map a cache file names may be, read from the file's
/// end without reading its rows: the trailer is the end byte, the root, a
/// varint count and the checksum, and from the end the count's length is
/// not known, so every length that could be one gives a candidate (the
/// true root is among them). Empty when the file cannot be read or is too
/// short. A snapshot whose store holds none of them does not scan the
/// table's keys for a cache it could not use.
pub fn trailer_roots(path: &Path) -> Vec<ObjectId> {
    use std::io::{Seek, SeekFrom};
    const TAIL: usize = 1 + 32 + 10 + 32;
    let mut tail = Vec::with_capacity(TAIL);
    let read = File::open(path).and_then(|mut f| {
        let len = f.seek(SeekFrom::End(0))?;
        f.seek(SeekFrom::Start(len.saturating_sub(TAIL as u64)))?;
        f.take(TAIL as u64).read_to_end(&mut tail)
    });
    if read.is_err() {
        return Vec::new();
    }
    let n = tail.len();
    (1..=10usize)
        .filter(|&l| n >= 1 + 32 + l + 32)
        .filter(|&l| {
            let count = &tail[n - 32 - l..n - 32];
            count[l - 1] & 0x80 == 0
                && count[..l - 1].iter().all(|b| b & 0x80 != 0)
                && tail[n - 32 - l - 32 - 1] == 0
        })
        .filter_map(|l| {
            let at = n - 32 - l - 32;
            <[u8; 32]>::try_from(&tail[at..at + 32]).ok().map(ObjectId)
        })
        .collect()
}

/// Writes a cache as rows come, to a temporary file renamed into place by
/// [`finish`](Self::finish).
pub struct CacheWriter {
    out: BufWriter<File>,
    hash: blake3::Hasher,
    tmp: PathBuf,
    path: PathBuf,
    buf: Vec<u8>,
    /// The file's header (magic, version, ident, xid).
    head: Vec<u8>,
    rows: u64,
    /// The first write error: the cache is then given up, not the snapshot.
    failed: Option<SyncError>,
}

impl CacheWriter {
    pub fn create(path: &Path, ident: &[u8; 32], xid: u64) -> Result<CacheWriter> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| SyncError::io("creating", dir, e))?;
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            std::process::id(),
            crate::store::unique()
        ));
        let f = File::create(&tmp).map_err(|e| SyncError::io("creating", &tmp, e))?;
        let mut w = CacheWriter {
            out: BufWriter::with_capacity(1 << 16, f),
            hash: blake3::Hasher::new(),
            tmp,
            path: path.to_path_buf(),
            buf: Vec::with_capacity(256),
            head: Vec::with_capacity(8 + 1 + 32 + 8),
            rows: 0,
            failed: None,
        };
        w.head.extend_from_slice(MAGIC);
        w.head.push(VERSION);
        w.head.extend_from_slice(ident);
        w.head.extend_from_slice(&xid.to_le_bytes());
        w.buf.extend_from_slice(&w.head);
        w.emit()?;
        Ok(w)
    }

    /// Forgets every row written so far: the file holds its header only.
    pub fn restart(&mut self) {
        use std::io::{Seek, SeekFrom};
        let cleared = self
            .out
            .flush()
            .and_then(|_| self.out.get_mut().set_len(0))
            .and_then(|_| self.out.seek(SeekFrom::Start(0)))
            .map_err(|e| SyncError::io("writing", &self.tmp, e));
        self.hash = blake3::Hasher::new();
        self.rows = 0;
        self.buf.clear();
        self.buf.extend_from_slice(&self.head);
        let written = cleared.and_then(|_| self.emit());
        if self.failed.is_none()
            && let Err(e) = written
        {
            self.failed = Some(e);
        }
    }

    fn emit(&mut self) -> Result<()> {
        self.hash.update(&self.buf);
        let r = self
            .out
            .write_all(&self.buf)
            .map_err(|e| SyncError::io("writing", &self.tmp, e));
        self.buf.clear();
        r
    }

    /// Appends a row (keys strictly increasing, not empty). A write error
    /// is kept for [`finish`](Self::finish) to report.
    pub fn row(&mut self, key: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        put_varint(&mut self.buf, key.len() as u64);
        self.buf.extend_from_slice(key);
        self.rows += 1;
        if self.buf.len() >= 1 << 14
            && let Err(e) = self.emit()
        {
            self.failed = Some(e);
        }
    }

    /// Ends the file with the map the rows were stored as and puts it in
    /// place (atomically; not fsynced: a torn cache fails its checksum and
    /// only costs a full read).
    pub fn finish(mut self, root: &ObjectId) -> Result<()> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        self.buf.push(0);
        self.buf.extend_from_slice(&root.0);
        put_varint(&mut self.buf, self.rows);
        self.emit()?;
        let sum = self.hash.finalize();
        let done = self
            .out
            .write_all(sum.as_bytes())
            .and_then(|_| self.out.flush())
            .map_err(|e| SyncError::io("writing", &self.tmp, e));
        let done = done.and_then(|_| {
            std::fs::rename(&self.tmp, &self.path)
                .map_err(|e| SyncError::io("renaming into", &self.path, e))
        });
        if done.is_err() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        done
    }
}

impl Drop for CacheWriter {
    fn drop(&mut self) {
        // Unfinished (an error, or a cache given up): no file is left.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// Reads a cache row by row. Every read error is "not usable".
pub struct CacheReader {
    input: File,
    /// Bytes read from `input`: `buf[pos..]` are still to be parsed, and
    /// `buf[hashed..pos]` parsed but not yet hashed (hashing in large
    /// pieces is several times faster than a few bytes at a time).
    buf: Vec<u8>,
    pos: usize,
    hashed: usize,
    hash: blake3::Hasher,
    read: u64,
    ended: bool,
    key: Vec<u8>,
    /// The key before `key`.
    prev: Vec<u8>,
}

/// Why a cache cannot be used (it is then ignored).
#[derive(Debug)]
pub struct Unusable(pub String);

/// A read of a cache: what it gave, or why it cannot be used.
pub type Usable<T> = std::result::Result<T, Unusable>;

impl CacheReader {
    /// Opens the cache at `path` if there is one for `ident`, written at
    /// `xid`; `Ok(None)` if there is none or it is for something else.
    pub fn open(path: &Path, ident: &[u8; 32]) -> Usable<Option<(CacheReader, u64)>> {
        let f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Unusable(format!("{}: {e}", path.display()))),
        };
        let mut r = CacheReader {
            input: f,
            buf: Vec::with_capacity(READ_BUF),
            pos: 0,
            hashed: 0,
            hash: blake3::Hasher::new(),
            read: 0,
            ended: false,
            key: Vec::new(),
            prev: Vec::new(),
        };
        let mut head = [0u8; 8 + 1 + 32 + 8];
        r.exact(&mut head)?;
        if &head[..8] == MAGIC && head[8] != VERSION {
            // Another version's cache (an older sp-sync's): none of ours.
            return Ok(None);
        }
        if &head[..8] != MAGIC {
            return Err(Unusable("not a row cache of this version".into()));
        }
        if head[9..41] != ident[..] {
            return Ok(None);
        }
        let xid = u64::from_le_bytes(head[41..49].try_into().unwrap_or_default());
        Ok(Some((r, xid)))
    }

    /// Hashes what was parsed, keeps what was not, and reads more after
    /// it; false at the end of the file.
    fn refill(&mut self) -> Usable<bool> {
        self.hash.update(&self.buf[self.hashed..self.pos]);
        self.buf.drain(..self.pos);
        self.pos = 0;
        self.hashed = 0;
        let have = self.buf.len();
        self.buf.resize(READ_BUF.max(have), 0);
        let got = loop {
            match self.input.read(&mut self.buf[have..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Unusable(format!("reading: {e}"))),
            }
        };
        self.buf.truncate(have + got);
        Ok(got > 0)
    }

    fn exact(&mut self, out: &mut [u8]) -> Usable<()> {
        let mut done = 0;
        while done < out.len() {
            if self.pos == self.buf.len() && !self.refill()? {
                return Err(Unusable("cut short".into()));
            }
            let n = (out.len() - done).min(self.buf.len() - self.pos);
            out[done..done + n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
            self.pos += n;
            done += n;
        }
        Ok(())
    }

    fn byte(&mut self) -> Usable<u8> {
        if self.pos == self.buf.len() && !self.refill()? {
            return Err(Unusable("cut short".into()));
        }
        self.pos += 1;
        Ok(self.buf[self.pos - 1])
    }

    /// A varint in its one (shortest) encoding.
    fn varint(&mut self) -> Usable<u64> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            if shift == 63 && b > 1 {
                return Err(Unusable("varint overflows 64 bits".into()));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                if b == 0 && shift > 0 {
                    return Err(Unusable("varint not in its shortest form".into()));
                }
                return Ok(v);
            }
        }
        Err(Unusable("varint too long".into()))
    }

    /// The next row's key, or `None` after the last.
    pub fn next_row(&mut self) -> Usable<Option<&[u8]>> {
        if self.ended {
            return Ok(None);
        }
        let len = self.varint()?;
        if len == 0 {
            self.ended = true;
            return Ok(None);
        }
        if len > MAX_FIELD {
            return Err(Unusable("a key longer than 1 MiB".into()));
        }
        std::mem::swap(&mut self.key, &mut self.prev);
        let mut key = std::mem::take(&mut self.key);
        key.resize(len as usize, 0);
        let r = self.exact(&mut key);
        self.key = key;
        r?;
        if self.read > 0 && self.key <= self.prev {
            return Err(Unusable("keys out of order".into()));
        }
        self.read += 1;
        Ok(Some(&self.key))
    }

    /// After the last row: the map's root, once the row count and the
    /// checksum hold.
    pub fn finish(mut self) -> Usable<ObjectId> {
        while self.next_row()?.is_some() {}
        let mut root = [0u8; 32];
        self.exact(&mut root)?;
        let rows = self.varint()?;
        self.hash.update(&self.buf[self.hashed..self.pos]);
        self.hashed = self.pos;
        let want = self.hash.finalize();
        let mut sum = [0u8; 32];
        self.exact(&mut sum)?;
        if sum != *want.as_bytes() {
            return Err(Unusable("checksum mismatch".into()));
        }
        if rows != self.read {
            return Err(Unusable(format!("{} rows where it says {rows}", self.read)));
        }
        if self.pos < self.buf.len() || self.refill()? {
            return Err(Unusable("bytes after its checksum".into()));
        }
        Ok(ObjectId(root))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Cached = (Vec<Vec<u8>>, u64, ObjectId);

    fn write(dir: &Path, rows: &[&[u8]]) -> PathBuf {
        let p = path_for(dir, &["db", "public", "t"]);
        let mut w = CacheWriter::create(&p, &[7; 32], 42).unwrap();
        for k in rows {
            w.row(k);
        }
        w.finish(&ObjectId([9; 32])).unwrap();
        p
    }

    fn read_all(p: &Path, ident: &[u8; 32]) -> Usable<Option<Cached>> {
        let Some((mut r, xid)) = CacheReader::open(p, ident)? else {
            return Ok(None);
        };
        let mut rows = Vec::new();
        while let Some(k) = r.next_row()? {
            rows.push(k.to_vec());
        }
        Ok(Some((rows, xid, r.finish()?)))
    }

    #[test]
    fn a_restarted_cache_holds_only_the_rows_written_after() {
        let dir = tempfile::tempdir().unwrap();
        let p = path_for(dir.path(), &["db", "public", "t"]);
        let mut w = CacheWriter::create(&p, &[7; 32], 42).unwrap();
        // More than one buffer's worth, so that some reached the file.
        for i in 0..5000u32 {
            w.row(&(i + 1).to_be_bytes());
        }
        w.restart();
        w.row(b"a");
        w.row(b"b");
        w.finish(&ObjectId([3; 32])).unwrap();
        let (rows, xid, root) = read_all(&p, &[7; 32]).unwrap().unwrap();
        assert_eq!(rows, [b"a".to_vec(), b"b".to_vec()]);
        assert_eq!((xid, root), (42, ObjectId([3; 32])));
    }

    proptest::proptest! {
        /// The root read from a cache's end is among the candidates, for
        /// any root and counts whose varint takes one to three bytes.
        #[test]
        fn the_trailer_names_the_root(
            root in proptest::prelude::any::<[u8; 32]>(),
            n in proptest::prop_oneof![0usize..130, 16_380usize..16_390, 20_000usize..20_001],
        ) {
            let dir = tempfile::tempdir().unwrap();
            let p = path_for(dir.path(), &["db", "public", "t"]);
            let mut w = CacheWriter::create(&p, &[7; 32], 42).unwrap();
            for i in 0..n {
                w.row(&(i as u32 + 1).to_be_bytes());
            }
            w.finish(&ObjectId(root)).unwrap();
            let got = trailer_roots(&p);
            proptest::prop_assert!(got.contains(&ObjectId(root)), "{:?}", got);
            proptest::prop_assert!(got.len() <= 10);
        }
    }

    #[test]
    fn a_short_or_missing_file_names_no_root() {
        let dir = tempfile::tempdir().unwrap();
        assert!(trailer_roots(&dir.path().join("missing")).is_empty());
        let p = dir.path().join("short");
        std::fs::write(&p, [0u8; 40]).unwrap();
        assert!(trailer_roots(&p).is_empty());
    }

    #[test]
    fn round_trips_and_any_damage_makes_it_unusable() {
        let dir = tempfile::tempdir().unwrap();
        let rows: Vec<&[u8]> = vec![b"a", b"b\x00", b"c"];
        let p = write(dir.path(), &rows);
        let (got, xid, root) = read_all(&p, &[7; 32]).unwrap().unwrap();
        assert_eq!(xid, 42);
        assert_eq!(root, ObjectId([9; 32]));
        let want: Vec<Vec<u8>> = rows.iter().map(|k| k.to_vec()).collect();
        assert_eq!(got, want);
        // Another table's identity: no cache, not an error.
        assert!(read_all(&p, &[8; 32]).unwrap().is_none());
        assert!(
            read_all(&dir.path().join("missing"), &[7; 32])
                .unwrap()
                .is_none()
        );
        // Every flipped byte and every truncation is caught.
        let bytes = std::fs::read(&p).unwrap();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            std::fs::write(&p, &b).unwrap();
            match read_all(&p, &[7; 32]) {
                Err(_) => {}
                // The flip hit the version or the identity: another
                // version's or another table's cache.
                Ok(None) => assert!((8..41).contains(&i), "byte {i}"),
                Ok(Some(_)) => panic!("flipped byte {i} went unnoticed"),
            }
            std::fs::write(&p, &bytes[..i]).unwrap();
            assert!(read_all(&p, &[7; 32]).is_err(), "cut at {i}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        std::fs::write(&p, &longer).unwrap();
        assert!(read_all(&p, &[7; 32]).is_err());
    }

    /// A cache of several read buffers (a field across their boundary, a
    /// field longer than one) reads back, and a flip anywhere is caught.
    #[test]
    fn a_cache_longer_than_the_read_buffer_round_trips_and_damage_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let mut big = b"key00009999~".to_vec();
        big.resize(READ_BUF + 1000, b'z');
        let mut owned: Vec<Vec<u8>> = (0..20_000u32)
            .map(|i| format!("key{i:08}/{i}").into_bytes())
            .collect();
        owned.insert(10_000, big);
        let rows: Vec<&[u8]> = owned.iter().map(|k| &k[..]).collect();
        let p = write(dir.path(), &rows);
        let bytes = std::fs::read(&p).unwrap();
        assert!(bytes.len() > 4 * READ_BUF);
        let (got, _, root) = read_all(&p, &[7; 32]).unwrap().unwrap();
        assert_eq!(got, owned);
        assert_eq!(root, ObjectId([9; 32]));
        let mut at: Vec<usize> = (1..bytes.len() / READ_BUF + 1)
            .flat_map(|k| [k * READ_BUF - 1, k * READ_BUF, k * READ_BUF + 1])
            .collect();
        at.extend([100, bytes.len() / 2, bytes.len() - 40, bytes.len() - 1]);
        for i in at.into_iter().filter(|&i| i < bytes.len()) {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            std::fs::write(&p, &b).unwrap();
            assert!(
                read_all(&p, &[7; 32]).is_err(),
                "flipped byte {i} went unnoticed"
            );
        }
    }

    #[test]
    fn keys_out_of_order_and_long_varints_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), &[b"b", b"a"]);
        let e = read_all(&p, &[7; 32]).unwrap_err();
        assert!(e.0.contains("out of order"), "{e:?}");
        let p = write(dir.path(), &[b"a", b"a"]);
        assert!(read_all(&p, &[7; 32]).is_err());
        // The key length 1 written as 0x81 0x00: one value, two encodings.
        let p = write(dir.path(), &[b"a"]);
        let mut b = std::fs::read(&p).unwrap();
        let at = 49; // after the header
        assert_eq!(b[at], 1);
        b.splice(at..at + 1, [0x81, 0x00]);
        let body = b.len() - 32;
        let sum = blake3::hash(&b[..body]);
        b.truncate(body);
        b.extend_from_slice(sum.as_bytes());
        std::fs::write(&p, &b).unwrap();
        let e = read_all(&p, &[7; 32]).unwrap_err();
        assert!(e.0.contains("shortest"), "{e:?}");
    }

    /// A cache an older sp-sync wrote (version 1, a stamp per row) is
    /// none of this one's: no cache, not a damaged one.
    #[test]
    fn another_versions_cache_is_no_cache() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), &[b"a"]);
        let mut b = std::fs::read(&p).unwrap();
        b[8] = 1;
        std::fs::write(&p, &b).unwrap();
        assert!(read_all(&p, &[7; 32]).unwrap().is_none());
        b[0] = b'X';
        std::fs::write(&p, &b).unwrap();
        assert!(read_all(&p, &[7; 32]).is_err());
    }

    #[test]
    fn an_unfinished_writer_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = path_for(dir.path(), &["x"]);
        let mut w = CacheWriter::create(&p, &[1; 32], 0).unwrap();
        w.row(b"k");
        drop(w);
        assert!(!p.exists());
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 0);
    }
}
