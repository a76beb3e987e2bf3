//! Chunk-list nodes: decoding never panics and is canonical.
#![no_main]

use libfuzzer_sys::fuzz_target;
use systemprompt_sync::object::list::ListNode;

fuzz_target!(|data: &[u8]| {
    if let Ok(node) = ListNode::decode(data) {
        assert_eq!(node.encode(), data, "accepted list node is not canonical");
        // Sizes of an accepted node always sum without overflow.
        let _ = node.total();
    }
});
