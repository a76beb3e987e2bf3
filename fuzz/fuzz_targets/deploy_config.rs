//! An `sp-sync.toml` read from a pushed snapshot (the server deploys from
//! it): parsing it, checking its deploy targets and matching their globs
//! never panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use systemprompt_sync::ProjectConfig;
use systemprompt_sync::deploy::Target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = ProjectConfig::parse(text, Path::new("sp-sync.toml")) else {
        return;
    };
    for (name, c) in &cfg.deploy {
        if let Ok(t) = Target::from_config(name, c) {
            for p in ["src/main.rs", "a/b/c", "Dockerfile", ""] {
                let _ = t.watch.is_watched(p.as_bytes(), false);
                let _ = t.watch.is_watched(p.as_bytes(), true);
            }
        }
    }
});
