//! A short load test of `sp-sync serve`: 16 concurrent clients (threads
//! with their own stores and HTTP clients) pushing and pulling for 5 s
//! against one real server on loopback, with own and shared refs. Zero
//! errors, zero lost updates, and every pushed snapshot reads back
//! byte-identical. `scripts/load-test.sh` runs the long version
//! (64 clients × 60 s) with the same driver (tests/it/load/driver.rs).

#[path = "load/driver.rs"]
mod driver;
use crate::net;

use std::time::Duration;

#[test]
fn sixteen_clients_for_five_seconds_without_errors_or_lost_updates() {
    let clients: usize = std::env::var("SP_SYNC_LOAD_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let secs: u64 = std::env::var("SP_SYNC_LOAD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let server = net::serve(data.to_str().unwrap(), None, "127.0.0.1:0", &[]);
    let work = tmp.path().join("clients");
    std::fs::create_dir_all(&work).unwrap();
    let opts = driver::LoadOptions {
        url: server.url("load"),
        token: None,
        clients,
        duration: Duration::from_secs(secs),
        shared_refs: 4,
        max_file: 256 << 10,
        work,
        seed: 0x5eed_10ad,
    };
    let r = driver::run(&opts);
    eprintln!("{}", r.human());
    assert_eq!(r.errors, 0, "{}", r.human());
    assert_eq!(r.lost_updates, 0, "{}", r.human());
    for k in ["push", "push-shared", "pull"] {
        let kr = r
            .kinds
            .get(k)
            .unwrap_or_else(|| panic!("no {k}: {}", r.human()));
        assert!(kr.ok > 0, "no successful {k}: {}", r.human());
    }
    assert!(r.verified_snapshots >= r.kinds["push"].ok, "{}", r.human());
}
