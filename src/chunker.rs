//! Content-defined chunking: FastCDC (2020, normalized), through the pinned
//! `fastcdc` crate's cut function, over buffers this module manages so that
//! no chunk is copied or allocated on its own.

use std::io::Read;

use fastcdc::v2020::{Normalization, cut, select_masks};

use serde::{Deserialize, Serialize};

/// Chunker parameters: part of the format, since they decide the cut points.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkerConfig {
    /// The algorithm (`fastcdc-2020`).
    pub algorithm: String,
    /// The smallest chunk, in bytes.
    pub min: u32,
    /// The average chunk the cut points aim at, in bytes.
    pub avg: u32,
    /// The largest chunk, in bytes.
    pub max: u32,
    /// FastCDC's normalization level.
    pub normalization: u32,
}

impl Default for ChunkerConfig {
    fn default() -> Self {
        ChunkerConfig {
            algorithm: "fastcdc-2020".into(),
            min: 128 * 1024,
            avg: 256 * 1024,
            max: 2 * 1024 * 1024,
            normalization: 1,
        }
    }
}

/// Cuts byte streams into content-defined chunks as a [`ChunkerConfig`] says.
#[derive(Debug, Clone)]
pub struct Chunker {
    min: usize,
    avg: usize,
    max: usize,
    mask_s: u64,
    mask_l: u64,
}

impl Chunker {
    /// A chunker for `cfg`.
    pub fn new(cfg: &ChunkerConfig) -> Self {
        let level = match cfg.normalization {
            0 => Normalization::Level0,
            1 => Normalization::Level1,
            2 => Normalization::Level2,
            _ => Normalization::Level3,
        };
        let (mask_s, mask_l) = select_masks(cfg.avg as usize, level);
        Chunker {
            min: cfg.min as usize,
            avg: cfg.avg as usize,
            max: cfg.max as usize,
            mask_s,
            mask_l,
        }
    }

    /// The largest chunk it makes.
    pub fn max_size(&self) -> usize {
        self.max
    }

    /// The smallest chunk it makes (but a file's last).
    pub fn min_size(&self) -> usize {
        self.min
    }

    /// The length of the next chunk at the start of `data`; `eof` says that
    /// no bytes follow `data`. None when more input is needed (or `data` is
    /// empty at the end).
    pub fn next_cut(&self, data: &[u8], eof: bool) -> Option<usize> {
        if data.is_empty() || (!eof && data.len() < self.max) {
            return None;
        }
        let (_, n) = cut(
            data,
            self.min,
            self.avg,
            self.max,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
        );
        Some(n.max(1).min(data.len()))
    }

    /// Cuts all of `data` (which is the whole input) into chunk lengths.
    pub fn cut_all(&self, mut data: &[u8]) -> Vec<usize> {
        let mut out = Vec::new();
        while let Some(n) = self.next_cut(data, true) {
            out.push(n);
            data = &data[n..];
        }
        out
    }

    /// Reads `r` to the end in batches: `f` receives a buffer and the chunk
    /// lengths that tile its start, several chunks at a time (so the caller
    /// can hash and compress them in parallel). Memory stays at one buffer of
    /// `batch` bytes (at least twice the maximum chunk).
    pub fn stream<R: Read>(
        &self,
        r: &mut R,
        batch: usize,
        mut f: impl FnMut(&[u8], &[usize]) -> std::io::Result<()>,
    ) -> std::io::Result<u64> {
        let cap = batch.max(2 * self.max);
        let mut buf = vec![0u8; cap];
        let mut filled = 0usize;
        let mut eof = false;
        let mut total = 0u64;
        loop {
            while !eof && filled < cap {
                match r.read(&mut buf[filled..]) {
                    Ok(0) => eof = true,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            let mut pos = 0;
            let mut cuts = Vec::new();
            while let Some(n) = self.next_cut(&buf[pos..filled], eof) {
                cuts.push(n);
                pos += n;
            }
            if !cuts.is_empty() {
                f(&buf[..pos], &cuts)?;
                total += pos as u64;
            }
            if eof && pos == filled {
                return Ok(total);
            }
            buf.copy_within(pos..filled, 0);
            filled -= pos;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn data(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn streaming_equals_whole_and_insert_shifts_no_later_chunk() {
        let c = Chunker::new(&ChunkerConfig::default());
        let d = data(12 << 20, 7);
        let whole = c.cut_all(&d);
        let mut streamed = Vec::new();
        let n = c
            .stream(&mut &d[..], 4 << 20, |_, cuts| {
                streamed.extend_from_slice(cuts);
                Ok(())
            })
            .unwrap();
        assert_eq!(n as usize, d.len());
        assert_eq!(streamed, whole);
        assert!(whole.iter().all(|&l| l <= 2 << 20));
        // Insert one byte in the middle: chunks after the edit are the same.
        let mut e = d.clone();
        e.insert(6 << 20, 42);
        let after = c.cut_all(&e);
        let tail = |v: &[usize], total: usize| -> Vec<usize> {
            let mut acc = 0;
            let mut out = Vec::new();
            for &l in v {
                acc += l;
                if acc > total / 2 + (3 << 20) {
                    out.push(l);
                }
            }
            out
        };
        assert_eq!(tail(&whole, d.len()), tail(&after, e.len()));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn chunks_tile_the_input(len in 0usize..5_000_000, seed: u64, batch in 4usize..9) {
            let c = Chunker::new(&ChunkerConfig::default());
            let d = data(len, seed);
            let mut total = 0usize;
            let mut got = Vec::new();
            c.stream(&mut &d[..], batch << 20, |buf, cuts| {
                let mut p = 0;
                for &n in cuts { got.extend_from_slice(&buf[p..p + n]); p += n; total += n; }
                Ok(())
            }).unwrap();
            prop_assert_eq!(total, len);
            prop_assert_eq!(got, d);
        }
    }
}
