//! A load test of `sp-sync serve`: CLIENTS concurrent clients (threads of
//! this process, each with its own local store and HTTP client, through
//! the library's public API) push and pull against one server on loopback
//! for DURATION seconds. Each client pushes its own ref and some shared
//! ones (a concurrent update of a shared ref is refused, never lost), and
//! reads every pulled snapshot back. At the end it checks every ref and
//! every successfully pushed snapshot.
//!
//! It prints operations, throughput (ops/s, MB/s), p50/p99 latency per kind
//! of operation, errors and lost updates (`--json`: the report as JSON),
//! and exits 1 when there were errors or lost updates.
//!
//! ```text
//! cargo run --release --example load -- --bin target/release/sp-sync --clients 64 --duration 60
//! cargo run --release --example load -- --url http://127.0.0.1:8470/load --token T
//! ```
//! With `--bin` it starts `sp-sync serve --listen 127.0.0.1:0` itself, with
//! its data under the work folder (`--work`, default a temporary folder).
//! `scripts/load-test.sh` builds and runs it.

#[path = "../tests/it/load/driver.rs"]
mod driver;

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn usage() -> ! {
    eprintln!(
        "usage: load (--bin SP_SYNC | --url http://HOST:PORT/TENANT [--token T]) \
         [--clients N] [--duration SECS] [--shared N] [--max-file BYTES] [--work DIR] \
         [--seed N] [--json]"
    );
    std::process::exit(2)
}

/// A server this process started; killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Open descriptors and peak memory of a process (Linux).
fn proc_figures(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    let hwm = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (fds, hwm)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut bin, mut url, mut token, mut work) = (None, None, None, None);
    let (mut clients, mut secs, mut shared, mut max_file, mut seed, mut json) = (
        64usize,
        60u64,
        4usize,
        256usize << 10,
        0x5eed_10adu64,
        false,
    );
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        let num = |v: String| v.parse::<u64>().unwrap_or_else(|_| usage());
        match a.as_str() {
            "--bin" => bin = Some(PathBuf::from(val())),
            "--url" => url = Some(val()),
            "--token" => token = Some(val()),
            "--work" => work = Some(PathBuf::from(val())),
            "--clients" => clients = num(val()) as usize,
            "--duration" => secs = num(val()),
            "--shared" => shared = num(val()) as usize,
            "--max-file" => max_file = num(val()) as usize,
            "--seed" => seed = num(val()),
            "--json" => json = true,
            _ => usage(),
        }
    }
    let tmp = tempfile::tempdir().expect("a temporary folder");
    let work = work.unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(work.join("clients")).expect("the work folder");
    let mut server = None;
    let url = match (url, bin) {
        (Some(u), _) => u,
        (None, Some(bin)) => {
            let mut child = Command::new(&bin)
                .args(["serve", "--listen", "127.0.0.1:0", "--data"])
                .arg(work.join("server"))
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| {
                    eprintln!("error: starting {}: {e}", bin.display());
                    std::process::exit(1)
                });
            let stderr = child.stderr.take().expect("stderr");
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                for line in std::io::BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(a) = line.strip_prefix("sp-sync serve: listening on ") {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(a.trim().to_string());
                        }
                    } else if !line.contains("every tenant is open") {
                        eprintln!("[serve] {line}");
                    }
                }
            });
            let server_ = Server(child);
            let addr = rx
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| {
                    eprintln!("error: sp-sync serve did not start listening");
                    std::process::exit(1)
                });
            server = Some(server_);
            format!("http://{addr}/load")
        }
        (None, None) => usage(),
    };
    let opts = driver::LoadOptions {
        url,
        token,
        clients,
        duration: Duration::from_secs(secs),
        shared_refs: shared,
        max_file,
        work: work.join("clients"),
        seed,
    };
    let report = driver::run(&opts);
    let figures = server.as_ref().map(|s| proc_figures(s.0.id()));
    if json {
        let mut v = serde_json::to_value(&report).expect("report as JSON");
        if let Some((fds, hwm)) = figures {
            v["server_open_fds"] = fds.into();
            v["server_peak_rss_kib"] = hwm.into();
        }
        println!("{}", serde_json::to_string_pretty(&v).expect("JSON"));
    } else {
        print!("{}", report.human());
        if let Some((fds, hwm)) = figures {
            println!(
                "server: {fds} open descriptors at the end, peak RSS {:.1} MiB",
                hwm as f64 / 1024.0
            );
        }
    }
    drop(server);
    if report.errors > 0 || report.lost_updates > 0 {
        std::process::exit(1);
    }
}
