//! Tree entries (the values of a directory map): decoding never panics and
//! is canonical. The first 12 bytes give the directory's time (an i64 of
//! seconds and a u32 of nanoseconds, little endian) that relative times
//! are added to.
#![no_main]

use libfuzzer_sys::fuzz_target;
use systemprompt_sync::object::tree::{Entry, KIND_RELATIVE, Timestamp};

fuzz_target!(|data: &[u8]| {
    let Some((head, data)) = data.split_at_checked(12) else {
        return;
    };
    let dir = Timestamp {
        secs: i64::from_le_bytes(head[..8].try_into().unwrap()),
        nanos: u32::from_le_bytes(head[8..].try_into().unwrap()) % 1_000_000_000,
    };
    if let Ok(e) = Entry::decode(data, dir) {
        let again = if data[0] & KIND_RELATIVE != 0 {
            e.encode_in(Some(dir))
        } else {
            e.encode()
        };
        assert_eq!(again, data, "accepted entry is not canonical");
        let _ = e.refs();
        let _ = e.size();
    }
});
