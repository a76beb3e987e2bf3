//! Progress bars on stderr (indicatif), shown only when stderr is a terminal
//! and `-q` was not given.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use systemprompt_sync::Progress;

pub struct Bar {
    bar: ProgressBar,
    items: AtomicU64,
    stage: Mutex<String>,
}

impl Bar {
    pub fn new(quiet: bool) -> Bar {
        let visible = !quiet && std::io::stderr().is_terminal();
        let bar = if visible {
            let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(8));
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} {msg}, {bytes} ({bytes_per_sec}) [{elapsed}]",
                )
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.enable_steady_tick(Duration::from_millis(125));
            b
        } else {
            ProgressBar::hidden()
        };
        Bar {
            bar,
            items: AtomicU64::new(0),
            stage: Mutex::new(String::new()),
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }

    fn redraw(&self) {
        if self.bar.is_hidden() {
            return;
        }
        let stage = self.stage.lock().map(|s| s.clone()).unwrap_or_default();
        let n = self.items.load(Ordering::Relaxed);
        self.bar.set_message(format!("{stage}: {n} files"));
    }
}

impl Progress for Bar {
    fn set_total(&self, _items: u64, bytes: u64) {
        self.bar.set_length(bytes);
    }

    fn add(&self, items: u64, bytes: u64) {
        self.items.fetch_add(items, Ordering::Relaxed);
        self.bar.inc(bytes);
        self.redraw();
    }

    fn stage(&self, what: &str) {
        if let Ok(mut s) = self.stage.lock() {
            *s = what.to_string();
        }
        self.redraw();
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}
