//! Stored deltas (pack flags 2 in a format-3 store): whatever the records of
//! a pack say — payloads, base ids, chains, cycles, bases that are missing
//! or are deltas themselves — reading an object through the store never
//! panics and yields exactly the bytes its id names, or an error; and a
//! delta payload decoded against any base is the object or refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use systemprompt_sync::object::ObjectSource;
use systemprompt_sync::pack::{FLAG_DELTA, StoredObject, make_delta, unpack_delta};
use systemprompt_sync::{LockMode, ObjectId, ObjectType, Store};

/// The candidate contents of the records.
fn content(i: u8) -> Vec<u8> {
    format!(
        "object {} {}\n",
        i % 8,
        "shared words ".repeat(usize::from(i % 8) + 4)
    )
    .into_bytes()
}

fuzz_target!(|data: &[u8]| {
    // Any payload against any base.
    if let Some((&cut, rest)) = data.split_first() {
        let (base, payload) = rest.split_at(usize::from(cut).min(rest.len()));
        let want = content(1);
        let id = ObjectId::compute(ObjectType::Chunk, &want);
        for ulen in [0u64, want.len() as u64, 1 << 24, u64::MAX] {
            if let Ok(b) = unpack_delta(ObjectType::Chunk, &id, ulen, payload, base) {
                assert_eq!(b, want, "a delta decoded to other bytes");
            }
        }
    }
    // A store of up to 8 records: byte pairs (object, base). A base byte
    // >= 0x80 stores the object whole; else a delta against content(base),
    // its frame's byte `base & 7` flipped when bit 6 is set, whether or
    // not that base is stored (or is itself a delta).
    let Ok(tmp) = tempfile::tempdir() else { return };
    let dir = tmp.path().join("store");
    if Store::init(&dir).is_err() {
        return;
    }
    let Ok(s) = Store::open(&dir, LockMode::Shared) else {
        return;
    };
    let Ok(w) = s.writer() else { return };
    let mut stored = Vec::new();
    for pair in data.chunks_exact(2).take(8) {
        let (o, b) = (pair[0] % 8, pair[1]);
        let bytes = content(o);
        let id = ObjectId::compute(ObjectType::Chunk, &bytes);
        if stored.contains(&o) {
            continue;
        }
        let obj = if b >= 0x80 {
            systemprompt_sync::pack::prepare(ObjectType::Chunk, id, &bytes, 3)
        } else {
            let base = content(b % 8);
            let bid = ObjectId::compute(ObjectType::Chunk, &base);
            let Some(mut payload) = make_delta(&bytes, &bid, &base, 3) else {
                continue;
            };
            if b & 0x40 != 0 {
                let at = 32 + usize::from(b & 7) % (payload.len() - 32);
                payload[at] ^= 0x10;
            }
            StoredObject {
                tag: ObjectType::Chunk,
                id,
                flags: FLAG_DELTA,
                ulen: bytes.len() as u32,
                payload,
            }
        };
        if w.put_stored(obj).is_err() {
            return;
        }
        stored.push(o);
    }
    if w.finish().is_err() {
        return;
    }
    drop(s);
    let Ok(s) = Store::open(&dir, LockMode::Shared) else {
        return;
    };
    for o in stored {
        let want = content(o);
        let id = ObjectId::compute(ObjectType::Chunk, &want);
        if let Ok(got) = s.get(ObjectType::Chunk, &id) {
            assert_eq!(got, want, "a stored object read back as other bytes");
        }
        let _ = s.read_raw(&id);
    }
});
