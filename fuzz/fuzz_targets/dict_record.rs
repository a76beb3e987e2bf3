//! Dictionary objects and dictionary-compressed records (store format 2):
//! decoding never panics, an accepted dictionary re-encodes to the same
//! bytes, and a record decoded with a dictionary is exactly the object its
//! id names (or refused), whatever the payload or the dictionary's bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use systemprompt_sync::dict::{self, Dictionary};
use systemprompt_sync::{ObjectId, ObjectType};

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = Dictionary::decode(data) {
        assert_eq!(d.encode(), data, "accepted dictionary is not canonical");
    }
    // First byte: where the dictionary ends; then dictionary | payload.
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut).min(rest.len());
    let (content, tail) = rest.split_at(cut);
    if content.is_empty() {
        return;
    }
    let d = Dictionary {
        kind: ObjectType::Chunk,
        content: content.to_vec(),
    };
    let did = d.id();
    let want = b"fuzzed object";
    let id = ObjectId::compute(ObjectType::Chunk, want);
    let mut payload = did.0.to_vec();
    payload.extend_from_slice(tail);
    for ulen in [0u64, want.len() as u64, 1 << 20, u64::MAX] {
        if let Ok(b) = dict::decompress(ObjectType::Chunk, &id, ulen, &payload, &did, &d) {
            assert_eq!(b, want, "a dictionary record decoded to other bytes");
        }
    }
});
