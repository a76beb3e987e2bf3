//! Puts rows that arrive nearly in key order into key order, within reach.
//!
//! A PostgreSQL table read in the order of its heap (a sequential scan,
//! cheaper for the server than reading it through its primary key's index)
//! gives the rows of a table that is only ever inserted into almost in key
//! order: a row that fits a gap an earlier page left comes a few hundred
//! rows early. [`Reorder`] takes the rows in batches (as the row map
//! builder receives them: `(key, row)` encodings, each a varint length and
//! bytes) and gives them on in key order, holding back only what a later
//! batch may still precede: after each batch, every held row whose key is
//! below the smallest key of that batch. A row that comes after a row it
//! precedes was already given on is out of reach ([`Step::OutOfReach`]):
//! the caller reads the table in key order instead. No row is copied: the
//! held rows point into the batches they came in, and a batch is dropped
//! once none of its rows is held.

use std::cmp::Ordering;
use std::collections::VecDeque;

use crate::codec::Reader;
use crate::error::{Result, SyncError};

/// Held rows of batches older than the last two are copied into a batch
/// of their own (so that a row that came far ahead of its place holds
/// only its own bytes, not its batch's); at most this many bytes of them.
const MAX_SPILLED_BYTES: usize = 16 << 20;

/// A row held back: where its key and row are in batch `batch`, and the
/// key's first 16 bytes (zero-padded, big-endian): where two prefixes
/// differ they order the keys as the keys do, so most comparisons need
/// not read the keys.
#[derive(Debug, Clone, Copy)]
struct Held {
    prefix: u128,
    batch: u64,
    key: (u32, u32),
    row: (u32, u32),
}

fn prefix(key: &[u8]) -> u128 {
    let mut b = [0u8; 16];
    let n = key.len().min(16);
    b[..n].copy_from_slice(&key[..n]);
    u128::from_be_bytes(b)
}

/// What a batch gave.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Every row given on so far was in key order.
    InReach,
    /// A row came too late (or too much was held): the rows given on are
    /// not all of a prefix of the key order.
    OutOfReach,
}

#[derive(Default)]
pub(crate) struct Reorder {
    /// The batches held, from number `first` on.
    batches: VecDeque<Vec<u8>>,
    first: u64,
    /// Held rows, in key order (ties in arrival order).
    held: Vec<Held>,
    /// The key of the last row given on.
    last: Option<Vec<u8>>,
    /// Scratch: a batch's rows, and the merge.
    incoming: Vec<Held>,
    merged: Vec<Held>,
}

fn slice(b: &[u8], (at, len): (u32, u32)) -> &[u8] {
    &b[at as usize..at as usize + len as usize]
}

impl Reorder {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn batch(&self, h: &Held) -> &[u8] {
        &self.batches[(h.batch - self.first) as usize]
    }

    fn key(&self, h: &Held) -> &[u8] {
        slice(self.batch(h), h.key)
    }

    /// The order of two held rows' keys.
    fn cmp(&self, x: &Held, y: &Held) -> Ordering {
        x.prefix
            .cmp(&y.prefix)
            .then_with(|| self.key(x).cmp(self.key(y)))
    }

    /// Takes a batch and gives `emit` every held row that no later batch
    /// may precede (by this batch's smallest key), in key order.
    pub(crate) fn add(
        &mut self,
        batch: Vec<u8>,
        emit: &mut impl FnMut(&[u8], &[u8]) -> Result<()>,
    ) -> Result<Step> {
        if batch.len() > u32::MAX as usize {
            return Ok(Step::OutOfReach);
        }
        let number = self.first + self.batches.len() as u64;
        let mut incoming = std::mem::take(&mut self.incoming);
        incoming.clear();
        {
            let base = batch.as_ptr() as usize;
            let at = |s: &[u8]| ((s.as_ptr() as usize - base) as u32, s.len() as u32);
            let mut r = Reader::new(&batch);
            while !r.is_empty() {
                let (k, v) = match (r.bytes(usize::MAX), r.bytes(usize::MAX)) {
                    (Ok(k), Ok(v)) => (k, v),
                    _ => return Err(SyncError::Invalid("row batch damaged".into())),
                };
                incoming.push(Held {
                    prefix: prefix(k),
                    batch: number,
                    key: at(k),
                    row: at(v),
                });
            }
        }
        self.batches.push_back(batch);
        // (Stable, and linear on a run: a batch is mostly in order.)
        incoming.sort_by(|x, y| self.cmp(x, y));
        let Some(&low) = incoming.first() else {
            self.incoming = incoming;
            self.release();
            return Ok(Step::InReach);
        };
        if self.last.as_deref().is_some_and(|l| self.key(&low) < l) {
            return Ok(Step::OutOfReach);
        }
        // Held rows below this batch's smallest key go on.
        let mut n = 0;
        while n < self.held.len() && self.cmp(&self.held[n], &low) == Ordering::Less {
            let h = self.held[n];
            let bytes = self.batch(&h);
            emit(slice(bytes, h.key), slice(bytes, h.row))?;
            n += 1;
        }
        if n > 0 {
            self.last = Some(self.key(&self.held[n - 1]).to_vec());
        }
        // The rest merges with the batch (held rows first on a tie: they
        // came first).
        let mut merged = std::mem::take(&mut self.merged);
        merged.clear();
        merged.reserve(self.held.len() - n + incoming.len());
        let (mut i, mut j) = (n, 0);
        while i < self.held.len() && j < incoming.len() {
            if self.cmp(&incoming[j], &self.held[i]) == Ordering::Less {
                merged.push(incoming[j]);
                j += 1;
            } else {
                merged.push(self.held[i]);
                i += 1;
            }
        }
        merged.extend_from_slice(&self.held[i..]);
        merged.extend_from_slice(&incoming[j..]);
        self.merged = std::mem::replace(&mut self.held, merged);
        self.incoming = incoming;
        self.release();
        if self.batches.len() > 3 && !self.spill() {
            return Ok(Step::OutOfReach);
        }
        Ok(Step::InReach)
    }

    /// Copies the held rows of all but the last two batches into a batch
    /// of their own, and drops the batches that frees. False when they
    /// come to more than [`MAX_SPILLED_BYTES`].
    fn spill(&mut self) -> bool {
        let old = self.first + self.batches.len() as u64 - 2;
        let number = self.first + self.batches.len() as u64;
        let mut spilled = Vec::new();
        for i in 0..self.held.len() {
            let h = self.held[i];
            if h.batch >= old {
                continue;
            }
            let bytes = self.batch(&h);
            let (k, v) = (slice(bytes, h.key), slice(bytes, h.row));
            if spilled.len() + k.len() + v.len() > MAX_SPILLED_BYTES {
                return false;
            }
            let key = (spilled.len() as u32, k.len() as u32);
            spilled.extend_from_slice(k);
            let row = (spilled.len() as u32, v.len() as u32);
            spilled.extend_from_slice(v);
            self.held[i] = Held {
                prefix: h.prefix,
                batch: number,
                key,
                row,
            };
        }
        self.batches.push_back(spilled);
        self.release();
        true
    }

    /// Drops the batches no held row points into.
    fn release(&mut self) {
        let keep = self
            .held
            .iter()
            .map(|h| h.batch)
            .min()
            .unwrap_or(self.first + self.batches.len() as u64);
        while self.first < keep && !self.batches.is_empty() {
            self.batches.pop_front();
            self.first += 1;
        }
    }

    /// Gives `emit` every row still held, in key order.
    pub(crate) fn finish(
        mut self,
        emit: &mut impl FnMut(&[u8], &[u8]) -> Result<()>,
    ) -> Result<()> {
        for h in std::mem::take(&mut self.held) {
            let bytes = self.batch(&h);
            emit(slice(bytes, h.key), slice(bytes, h.row))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{Reorder, Step};
    use crate::codec::put_varint;
    use proptest::prelude::*;

    type Rows = Vec<(Vec<u8>, Vec<u8>)>;

    fn encode(rows: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        let mut b = Vec::new();
        for (k, v) in rows {
            put_varint(&mut b, k.len() as u64);
            b.extend_from_slice(k);
            put_varint(&mut b, v.len() as u64);
            b.extend_from_slice(v);
        }
        b
    }

    /// Feeds `rows` in batches of `per`; the rows given on, and whether
    /// every batch stayed in reach.
    fn run(rows: &[(Vec<u8>, Vec<u8>)], per: usize) -> (Rows, bool) {
        let mut r = Reorder::new();
        let mut out = Vec::new();
        let mut emit = |k: &[u8], v: &[u8]| {
            out.push((k.to_vec(), v.to_vec()));
            Ok(())
        };
        for chunk in rows.chunks(per.max(1)) {
            if r.add(encode(chunk), &mut emit).unwrap() == Step::OutOfReach {
                return (out, false);
            }
        }
        r.finish(&mut emit).unwrap();
        (out, true)
    }

    fn key(i: u32) -> Vec<u8> {
        i.to_be_bytes().to_vec()
    }

    /// The heap order a table that is only inserted into gives: a row now
    /// and then comes a few hundred rows early (it filled a gap).
    #[test]
    fn rows_a_few_hundred_early_come_out_in_key_order() {
        let mut ids: Vec<u32> = (0..20_000).collect();
        for at in (300..19_000).step_by(337) {
            let early = ids.remove(at + 290);
            ids.insert(at, early);
        }
        let rows: Vec<_> = ids.iter().map(|&i| (key(i), vec![i as u8; 3])).collect();
        let (out, ok) = run(&rows, 2_000);
        assert!(ok);
        let want: Vec<_> = (0..20_000).map(|i| (key(i), vec![i as u8; 3])).collect();
        assert_eq!(out, want);
    }

    /// An updated row moves to the heap's end: it comes after rows it
    /// precedes were given on. That is out of reach, never a wrong order.
    #[test]
    fn a_row_from_far_back_is_out_of_reach() {
        let mut ids: Vec<u32> = (0..10_000).collect();
        let moved = ids.remove(17);
        ids.push(moved);
        let rows: Vec<_> = ids.iter().map(|&i| (key(i), vec![])).collect();
        let (out, ok) = run(&rows, 500);
        assert!(!ok);
        assert!(out.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(!out.iter().any(|(k, _)| *k == key(17)));
    }

    /// A row that came far ahead of its place (tens of thousands of rows:
    /// a small row that filled a gap) is held by its own bytes: the
    /// batches it came with are let go.
    #[test]
    fn a_row_far_ahead_holds_only_itself() {
        let mut ids: Vec<u32> = vec![50_000];
        ids.extend((0..100_000).filter(|&i| i != 50_000));
        let rows: Vec<_> = ids.iter().map(|&i| (key(i), vec![7; 10])).collect();
        let mut r = Reorder::new();
        let mut n = 0;
        let mut emit = |_: &[u8], _: &[u8]| {
            n += 1;
            Ok(())
        };
        for chunk in rows.chunks(1_000) {
            assert_eq!(r.add(encode(chunk), &mut emit).unwrap(), Step::InReach);
            assert!(r.batches.len() <= 4, "{} batches held", r.batches.len());
        }
        r.finish(&mut emit).unwrap();
        assert_eq!(n, rows.len());
        let (out, ok) = run(&rows, 1_000);
        assert!(ok);
        assert!(out.windows(2).all(|w| w[0].0 < w[1].0));
    }

    /// Held rows are bounded: many rows far ahead of their place are given
    /// up on (out of reach) rather than held without end.
    #[test]
    fn holding_is_bounded() {
        // 40,000 rows of 1 KiB from the end come first: 40 MiB to hold.
        let mut ids: Vec<u32> = (60_000..100_000).collect();
        ids.extend(0..60_000);
        let rows: Vec<_> = ids.iter().map(|&i| (key(i), vec![1; 1024])).collect();
        let (out, ok) = run(&rows, 200);
        assert!(!ok);
        assert!(out.windows(2).all(|w| w[0].0 < w[1].0));
    }

    proptest! {
        /// Keys longer than the 16 bytes a prefix holds, sharing long
        /// prefixes, and ending in zero bytes (the prefix's padding) come
        /// out in byte order all the same.
        #[test]
        fn long_and_zero_ended_keys_keep_byte_order(
            keys in proptest::collection::btree_set(
                proptest::collection::vec(0u8..3, 0..40), 0..300),
            swaps in proptest::collection::vec((0usize..300, 0usize..30), 0..40),
            per in 1usize..50,
        ) {
            let mut keys: Vec<Vec<u8>> = keys.into_iter().collect();
            for (at, by) in swaps {
                if at < keys.len() {
                    let to = (at + by).min(keys.len() - 1);
                    keys.swap(at, to);
                }
            }
            let rows: Vec<_> = keys.iter().map(|k| (k.clone(), vec![])).collect();
            let (out, ok) = run(&rows, per);
            prop_assert!(out.windows(2).all(|w| w[0].0 < w[1].0));
            if ok {
                let mut want = keys.clone();
                want.sort();
                let got: Vec<Vec<u8>> = out.into_iter().map(|(k, _)| k).collect();
                prop_assert_eq!(got, want);
            }
        }

        /// Whatever the arrival order and batching: what is given on is
        /// strictly increasing... or equal keys stay in arrival order; and
        /// when every batch stayed in reach, it is every row, sorted.
        #[test]
        fn what_goes_on_is_a_sorted_prefix_and_all_of_it_in_reach(
            mut keys in proptest::collection::vec(0u16..400, 0..600),
            swaps in proptest::collection::vec((0usize..600, 0usize..40), 0..30),
            per in 1usize..80,
        ) {
            keys.sort();
            for (at, by) in swaps {
                if at < keys.len() {
                    let to = (at + by).min(keys.len() - 1);
                    keys.swap(at, to);
                }
            }
            let rows: Vec<_> = keys
                .iter()
                .enumerate()
                .map(|(n, &k)| (k.to_be_bytes().to_vec(), (n as u32).to_be_bytes().to_vec()))
                .collect();
            let (out, ok) = run(&rows, per);
            prop_assert!(out.windows(2).all(|w| w[0].0 <= w[1].0));
            if ok {
                let mut want = rows.clone();
                want.sort_by(|a, b| a.0.cmp(&b.0));
                prop_assert_eq!(out, want);
            }
        }
    }
}
