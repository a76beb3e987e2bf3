//! Tree entries (the values of a directory map): decoding never panics and
//! is canonical.
#![no_main]

use libfuzzer_sys::fuzz_target;
use systemprompt_sync::object::tree::Entry;

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = Entry::decode(data) {
        assert_eq!(e.encode(), data, "accepted entry is not canonical");
        let _ = e.refs();
        let _ = e.size();
    }
});
