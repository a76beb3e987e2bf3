//! The tap on a PostgreSQL socket (the server's bytes, framed as messages
//! by their headers): reading never panics, and what is handed on and what
//! is diverted as a COPY's data do not depend on how the socket cuts the
//! bytes, how much each read takes, or how much data the tap holds before
//! it waits. The first three bytes give the socket's piece size, the read
//! size and the tap's limit (1 to 64 bytes each).
#![no_main]

use libfuzzer_sys::fuzz_target;
use systemprompt_sync::db::pgtap::read_through;

fuzz_target!(|data: &[u8]| {
    let [p, o, l, wire @ ..] = data else {
        return;
    };
    let small = |b: &u8| usize::from(b % 64) + 1;
    let whole = read_through(
        wire,
        &[wire.len().max(1)],
        &[wire.len().max(1)],
        1,
        usize::MAX,
    );
    let cut = read_through(wire, &[small(p)], &[small(o)], 2, small(l));
    assert_eq!(whole, cut);
});
