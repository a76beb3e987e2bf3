//! Progress reporting for long operations. The library only counts; the
//! binary draws bars (on stderr, when it is a terminal and not `-q`).

use std::sync::atomic::{AtomicBool, Ordering};

pub trait Progress: Sync {
    /// Work whose size is known up front.
    fn set_total(&self, _items: u64, _bytes: u64) {}
    /// Items and bytes done since the last call.
    fn add(&self, _items: u64, _bytes: u64) {}
    /// What is happening now.
    fn stage(&self, _what: &str) {}
    /// Whether the user asked to stop (Ctrl-C).
    fn interrupted(&self) -> bool {
        INTERRUPTED.load(Ordering::Relaxed)
    }
}

/// Set by the binary's signal handler.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {}
