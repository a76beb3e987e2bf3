//! Snapshot objects: decoding never panics and is canonical.
#![no_main]

use libfuzzer_sys::fuzz_target;
use systemprompt_sync::object::snapshot::Snapshot;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = Snapshot::decode(data) {
        assert_eq!(s.encode(), data, "accepted snapshot is not canonical");
        let _ = s.refs();
    }
});
