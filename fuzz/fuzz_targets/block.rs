//! Blocks (several small objects in one record of a store's pack): the
//! transposed form of row-map leaves and whole block payloads, decoded
//! from any bytes, never panic and never give other than the size asked
//! (members are then checked against their ids by whoever reads them).
//!
//! Input: a selector byte, the members' total size (u32 LE, capped at
//! 1 MiB), then either a transposed form (selector even) or a block
//! payload of mode `selector >> 1` (selector odd).
#![no_main]

use libfuzzer_sys::fuzz_target;
use systemprompt_sync::block;

fuzz_target!(|data: &[u8]| {
    let [sel, a, b, c, d, rest @ ..] = data else {
        return;
    };
    let total = (u32::from_le_bytes([*a, *b, *c, *d]) as usize).min(1 << 20);
    if sel & 1 == 0 {
        if let Ok(out) = block::untranspose(rest, total) {
            assert_eq!(out.len(), total);
        }
    } else if let Ok(out) = block::decode(sel >> 1, total, rest) {
        assert_eq!(out.len(), total);
    }
});
