//! Progress bars on stderr (indicatif), shown only when stderr is a terminal,
//! `-q` was not given and the command reports progress at all.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use systemprompt_sync::Progress;

pub struct Bar {
    visible: bool,
    bar: OnceLock<ProgressBar>,
    items: AtomicU64,
    stage: Mutex<String>,
}

impl Bar {
    pub fn new(quiet: bool) -> Bar {
        Bar {
            visible: !quiet && std::io::stderr().is_terminal(),
            bar: OnceLock::new(),
            items: AtomicU64::new(0),
            stage: Mutex::new(String::new()),
        }
    }

    /// The bar, drawn from the first report on.
    fn bar(&self) -> &ProgressBar {
        self.bar.get_or_init(|| {
            if !self.visible {
                return ProgressBar::hidden();
            }
            let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(8));
            let template = "{spinner} {msg}, {bytes} ({bytes_per_sec}) [{elapsed}]";
            b.set_style(
                ProgressStyle::with_template(template)
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.enable_steady_tick(Duration::from_millis(125));
            b
        })
    }

    fn redraw(&self) {
        let stage = self.stage.lock().map(|s| s.clone()).unwrap_or_default();
        let n = self.items.load(Ordering::Relaxed);
        self.bar().set_message(format!("{stage}: {n} files"));
    }
}

impl Progress for Bar {
    fn set_total(&self, _items: u64, bytes: u64) {
        self.bar().set_length(bytes);
    }

    fn add(&self, items: u64, bytes: u64) {
        self.items.fetch_add(items, Ordering::Relaxed);
        self.bar().inc(bytes);
        self.redraw();
    }

    fn stage(&self, what: &str) {
        if let Ok(mut s) = self.stage.lock() {
            *s = what.to_string();
        }
        self.redraw();
    }

    fn finish(&self) {
        if let Some(b) = self.bar.get() {
            b.finish_and_clear();
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.finish();
    }
}
