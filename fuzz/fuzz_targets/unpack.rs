//! Stored payloads: `unpack` of a hostile (flags, declared length, payload)
//! never panics and never returns bytes other than the declared length that
//! hash to the id. Input: flags [1] | ulen (u32 LE) [4] | payload.
//! The id is that of the payload itself, so raw records can succeed while
//! zstd records exercise decompression (and then fail the hash check).
#![no_main]

use libfuzzer_sys::fuzz_target;
use systemprompt_sync::object::MAX_OBJECT_SIZE;
use systemprompt_sync::pack::{FLAG_RAW, unpack};
use systemprompt_sync::{ObjectId, ObjectType};

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let flags = data[0];
    let ulen = u32::from_le_bytes([data[1], data[2], data[3], data[4]]);
    let rest = &data[5..];
    let id = ObjectId::compute(ObjectType::Chunk, rest);
    let r = unpack(ObjectType::Chunk, &id, flags, u64::from(ulen), rest);
    if let Ok(out) = &r {
        assert_eq!(out.len() as u64, u64::from(ulen));
        assert_eq!(ObjectId::compute(ObjectType::Chunk, out), id);
    }
    if flags == FLAG_RAW && ulen as usize == rest.len() && rest.len() <= MAX_OBJECT_SIZE {
        assert_eq!(
            r.ok().as_deref(),
            Some(rest),
            "a valid raw payload was refused"
        );
    }
});
