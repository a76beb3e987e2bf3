//! PostgreSQL's binary COPY stream (the server's bytes): reading never
//! panics, and the tuples (or the refusal) do not depend on where the
//! stream is cut into messages. The first byte gives the fields per tuple
//! (1 to 8) and the second the message size (1 to 64 bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use systemprompt_sync::db::pgbinary::BinaryCopy;

type Read = Result<Vec<Vec<Option<Vec<u8>>>>, String>;

fn read(stream: &[u8], fields: usize, step: usize) -> Read {
    let mut r = BinaryCopy::new(fields, 4096);
    let mut got = Vec::new();
    for m in stream.chunks(step) {
        r.feed(m, &mut |t: &[Option<&[u8]>]| -> Result<(), ()> {
            assert_eq!(t.len(), fields);
            got.push(t.iter().map(|f| f.map(<[u8]>::to_vec)).collect());
            Ok(())
        })
        .map_err(|e| e.expect("the callback never fails"))?;
    }
    let n = r.finish()?;
    assert_eq!(n, got.len() as u64);
    Ok(got)
}

fuzz_target!(|data: &[u8]| {
    let [f, s, stream @ ..] = data else {
        return;
    };
    let fields = usize::from(f % 8) + 1;
    let step = usize::from(s % 64) + 1;
    let whole = read(stream, fields, stream.len().max(1));
    let cut = read(stream, fields, step);
    match (&whole, &cut) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(_), Err(_)) => {}
        _ => panic!("cut into {step}-byte messages: {cut:?}, whole: {whole:?}"),
    }
});
