//! Progress reporting for long operations. The library only counts; the
//! binary draws bars (on stderr, when it is a terminal and not `-q`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Where long operations report how far they are, and learn whether to stop.
pub trait Progress: Sync {
    /// Work whose size is known up front.
    fn set_total(&self, _items: u64, _bytes: u64) {}
    /// Items and bytes done since the last call.
    fn add(&self, _items: u64, _bytes: u64) {}
    /// What is happening now.
    fn stage(&self, _what: &str) {}
    /// The work this progress followed is over (a bar clears itself).
    fn finish(&self) {}
    /// Whether the user asked to stop (Ctrl-C).
    fn interrupted(&self) -> bool {
        interrupted()
    }
}

/// Set to ask long work to stop at its next safe point (the library's
/// callers may set it themselves).
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The flag and signal number that `install_signal_handlers` registered.
static SIGNALS: std::sync::OnceLock<(Arc<AtomicBool>, Arc<AtomicUsize>)> =
    std::sync::OnceLock::new();

/// Whether a stop was asked for (by `INTERRUPTED` or a signal).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
        || SIGNALS
            .get()
            .is_some_and(|(f, _)| f.load(Ordering::Relaxed))
}

/// The signal that asked to stop (`SIGHUP` 1, `SIGINT` 2, `SIGTERM` 15), if any.
pub fn stop_signal() -> Option<i32> {
    SIGNALS
        .get()
        .map(|(_, n)| n.load(Ordering::Relaxed) as i32)
        .filter(|n| *n != 0)
}

/// SIGINT, SIGTERM and SIGHUP (a closed terminal, a dropped SSH session)
/// ask long work to stop at the next safe point (no ref moves, a database
/// restore rolls back, a deploy's step is stopped); a second one exits at
/// once with 128 + the signal number.
pub fn install_signal_handlers() -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let flag = Arc::new(AtomicBool::new(false));
    let num = Arc::new(AtomicUsize::new(0));
    // A signal the parent set to be ignored stays ignored: `nohup` ignores
    // SIGHUP, a shell ignores SIGINT for the jobs it puts in the
    // background; a handler would undo that.
    let ignored = ignored_signals();
    for sig in [SIGINT, SIGTERM, SIGHUP] {
        if sig != SIGTERM && ignored & (1u64 << (sig - 1)) != 0 {
            continue;
        }
        signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, Arc::clone(&flag))?;
        signal_hook::flag::register_usize(sig, Arc::clone(&num), sig as usize)?;
        signal_hook::flag::register(sig, Arc::clone(&flag))?;
    }
    let _ = SIGNALS.set((flag, num));
    Ok(())
}

/// The signals this process ignores (bit N-1 for signal N), from
/// `/proc/self/status` (`SigIgn`); none where it cannot be read.
fn ignored_signals() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("SigIgn:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Reports nothing, and stops when the progress it wraps says to.
pub struct OnlyStops<'a>(pub &'a dyn Progress);

impl Progress for OnlyStops<'_> {
    fn interrupted(&self) -> bool {
        self.0.interrupted()
    }
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {}
