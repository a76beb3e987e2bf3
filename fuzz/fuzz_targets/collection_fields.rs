//! The fields of a collection file (front matter, a sidecar, a YAML row)
//! come from whoever wrote the tree (a pulled snapshot, a checkout):
//! splitting them into fields and rendering each value again in the style
//! it was written never panics, and what is rendered is YAML again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use systemprompt_sync::collection::restyle_fields;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for (name, rendered) in restyle_fields(text) {
        if let Some(r) = rendered {
            let doc = format!("x:{r}\n");
            assert!(
                serde_norway::from_str::<serde_norway::Value>(&doc).is_ok(),
                "field {name} rendered as {r:?}, which is not YAML"
            );
        }
    }
});
