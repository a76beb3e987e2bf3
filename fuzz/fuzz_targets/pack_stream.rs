//! Pack streams (pack files, transfers, bundles): reading a whole stream,
//! verifying every record, never panics. A stream read to its verified end
//! with nothing after it is written back byte for byte by `PackWriter`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use systemprompt_sync::pack::{PackReader, PackWriter};

fuzz_target!(|data: &[u8]| {
    let Ok(mut r) = PackReader::new(data, "fuzz") else {
        return;
    };
    let mut records = Vec::new();
    loop {
        match r.next_record() {
            Ok(Some(rec)) => {
                if let Ok(bytes) = rec.verify() {
                    assert_eq!(bytes.len() as u64, rec.ulen);
                }
                records.push(rec);
            }
            Ok(None) => break,
            Err(_) => return,
        }
    }
    let Some(trailer) = r.trailer else {
        panic!("end reached without a trailer");
    };
    if r.expect_eof().is_err() {
        return;
    }
    let mut w = PackWriter::new(Vec::new()).expect("writing to a Vec");
    for rec in records {
        w.add(&rec.into_stored()).expect("writing to a Vec");
    }
    let (out, sum) = w.finish().expect("writing to a Vec");
    assert_eq!(
        sum, trailer,
        "accepted stream's trailer differs from a rewrite's"
    );
    assert_eq!(out, data, "accepted stream is not canonical");
});
