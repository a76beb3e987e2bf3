//! Prolly-map nodes (directory and row maps) read from a store or a remote.
//! Decoding must never panic; an accepted node re-encodes to the same bytes
//! (there is no public node encoder, so the node format is written out here:
//! `version | level | count | (key (bytes) | value (bytes) or child id [32])*`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use systemprompt_sync::codec::Writer;
use systemprompt_sync::pmap::{NODE_VERSION, Node};

fuzz_target!(|data: &[u8]| {
    let Ok(node) = Node::decode(data.to_vec()) else {
        return;
    };
    let mut w = Writer::new();
    w.u8(NODE_VERSION).u8(node.level).varint(node.len() as u64);
    for i in 0..node.len() {
        w.bytes(node.key(i));
        if node.level == 0 {
            w.bytes(node.value(i));
        } else {
            w.id(&node.child(i));
        }
    }
    assert_eq!(w.into_vec(), data, "accepted node is not canonical");
    // The accessors the readers use must not panic either.
    let _ = node.last_key();
    let _ = node.children().count();
});
