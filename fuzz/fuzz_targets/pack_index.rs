//! Pack index files: decoding never panics; an accepted index re-encodes to
//! the same bytes.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use systemprompt_sync::store::index;

fuzz_target!(|data: &[u8]| {
    if let Ok((pack, mut entries)) = index::decode(data, Path::new("fuzz.idx")) {
        assert_eq!(
            index::encode(&pack, &mut entries),
            data,
            "accepted index is not canonical"
        );
    }
});
