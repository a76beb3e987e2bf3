//! Bundles (`sp-sync bundle verify/import`, `pull FILE`): reading a whole
//! bundle — header, pack stream, trailer — and verifying every object never
//! panics. A header that decodes is canonical (it re-encodes to the same
//! bytes), and a bundle read to its verified end has exactly its length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use systemprompt_sync::NoProgress;
use systemprompt_sync::bundle::{BundleHeader, BundleReader, verify};

fuzz_target!(|data: &[u8]| {
    let mut cur = std::io::Cursor::new(data);
    if let Ok(h) = BundleHeader::decode(&mut cur, "fuzz") {
        let n = cur.position() as usize;
        assert_eq!(h.encode(), data[..n], "accepted header is not canonical");
    }
    if let Ok(mut r) = BundleReader::open(data, "fuzz") {
        loop {
            match r.next_object() {
                Ok(Some(o)) => {
                    let _ = systemprompt_sync::pack::unpack(
                        o.tag,
                        &o.id,
                        o.flags,
                        u64::from(o.ulen),
                        &o.payload,
                    );
                }
                Ok(None) => {
                    assert!(r.trailer().is_some(), "end without a checked trailer");
                    assert_eq!(r.bytes(), data.len() as u64);
                    break;
                }
                Err(_) => break,
            }
        }
    }
    let _ = verify(data, "fuzz", None, &NoProgress);
});
