//! What a row map's leaf entries hold: keys (order-preserving encoding) and
//! rows (cells, large values as chunk lists). The first byte picks the
//! decoder. Decoding never panics and is canonical.
#![no_main]

use libfuzzer_sys::fuzz_target;
use systemprompt_sync::db::value::{decode_key, decode_row, encode_key, encode_row};

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    if which & 1 == 0 {
        if let Ok(k) = decode_key(rest) {
            let again = encode_key(&k).expect("a decoded key encodes");
            assert_eq!(again, rest, "accepted key is not canonical");
            for v in &k {
                let _ = v.to_json();
            }
        }
    } else if let Ok(cells) = decode_row(rest) {
        assert_eq!(encode_row(&cells), rest, "accepted row is not canonical");
        for c in &cells {
            let _ = c.refs();
        }
    }
});
