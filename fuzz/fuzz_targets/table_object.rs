//! Table objects (tag 5): decoding never panics and is canonical.
#![no_main]

use libfuzzer_sys::fuzz_target;
use systemprompt_sync::db::table::TableObject;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = TableObject::decode(data) {
        assert_eq!(t.encode(), data, "accepted table object is not canonical");
        let _ = t.refs();
        if let Some(d) = &t.table {
            let _ = d.key_names();
            let _ = d.row_width();
        }
    }
});
