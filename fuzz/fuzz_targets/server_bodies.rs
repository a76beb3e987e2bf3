//! What `sp-sync serve` reads from a client: the `has`, `fetch` and
//! `refs/{name}` bodies (POST and DELETE), and a pushed pack stream received into a store
//! (verification, delta rebuilding with its bound, references). The first
//! byte picks which; nothing may panic, and what is accepted is consistent.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use systemprompt_sync::pack::PackReader;
use systemprompt_sync::progress::NoProgress;
use systemprompt_sync::server::{
    parse_fetch_body, parse_has_body, parse_ref_body, parse_ref_delete_body,
};
use systemprompt_sync::store::{LockMode, Store};

/// One scratch store per fuzzing process.
fn store() -> &'static Store {
    static STORE: OnceLock<Store> = OnceLock::new();
    STORE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("sp-sync-fuzz-server-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Store::init(&dir).expect("scratch store");
        Store::open(&dir, LockMode::Shared).expect("scratch store")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            if let Ok(ids) = parse_has_body(body) {
                assert_eq!(ids.len() * 32, body.len());
            }
        }
        1 => {
            if let Ok(ids) = parse_fetch_body(body) {
                let with_base = ids.iter().filter(|(_, _, b)| b.is_some()).count();
                assert_eq!(ids.len() * 33 + with_base * 32, body.len());
            }
        }
        2 => {
            let _ = parse_ref_body(body);
            let _ = parse_ref_delete_body(body);
        }
        _ => {
            let s = store();
            let Ok(r) = PackReader::new(body, "fuzz") else {
                return;
            };
            let mut ids = Vec::new();
            let mut objs = r.into_objects().inspect(|o| {
                if let Ok(o) = o {
                    ids.push(o.id);
                }
            });
            if s.receive(&mut objs, 1 << 20, &NoProgress).is_ok() {
                for id in ids {
                    assert!(s.contains(&id), "received {id} is not stored");
                }
            }
        }
    }
});
