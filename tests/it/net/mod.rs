//! Real servers for the remote tests: `sp-sync serve` processes on loopback
//! and an S3-compatible server (moto), plus a minimal HTTP client for
//! talking to them directly.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::common::{bin, cache_dir};

/// A running `sp-sync serve`.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub data: PathBuf,
}

impl Server {
    pub fn url(&self, tenant: &str) -> String {
        format!("http://{}/{tenant}", self.addr)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `sp-sync serve --data DATA [--tokens FILE]` on `listen`
/// (`127.0.0.1:0` for any port) and waits until it listens.
pub fn serve(data: &str, tokens: Option<&Path>, listen: &str, env: &[(&str, String)]) -> Server {
    serve_with(data, tokens, listen, env, &[])
}

/// `serve` with extra arguments.
pub fn serve_with(
    data: &str,
    tokens: Option<&Path>,
    listen: &str,
    env: &[(&str, String)],
    extra: &[&str],
) -> Server {
    let mut c = Command::new(bin());
    c.args(["serve", "--listen", listen, "--data", data])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(t) = tokens {
        c.arg("--tokens").arg(t);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().expect("spawn sp-sync serve");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(a) = line.strip_prefix("sp-sync serve: listening on ")
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(a.trim().to_string());
            } else {
                eprintln!("[serve] {line}");
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("sp-sync serve did not start listening");
    Server {
        child,
        addr,
        data: PathBuf::from(data),
    }
}

/// One HTTP/1.1 request; returns (status, body).
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let _ = s.write_all(body);
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    parse_response(&resp)
}

fn parse_response(resp: &[u8]) -> (u16, Vec<u8>) {
    let text_end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response headers");
    let head = String::from_utf8_lossy(&resp[..text_end]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let mut body = resp[text_end + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = unchunk(&body);
    }
    (status, body)
}

fn unchunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..i]).trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + n]);
        b = &b[i + 2 + n + 2..];
    }
    out
}

/// The S3-compatible endpoint for the tests: `SP_SYNC_TEST_S3_ENDPOINT`
/// (scripts/test.sh starts moto and sets it), else a moto server started
/// here from `MOTO_SERVER` or `target/moto-venv/bin/moto_server`.
pub fn s3_endpoint() -> String {
    static EP: OnceLock<String> = OnceLock::new();
    EP.get_or_init(|| {
        if let Ok(e) = std::env::var("SP_SYNC_TEST_S3_ENDPOINT") {
            return e;
        }
        let exe = std::env::var("MOTO_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/moto-venv/bin/moto_server")
            });
        assert!(
            exe.exists(),
            "no S3 server: run the tests through scripts/test.sh (it installs and starts moto), \
             or set SP_SYNC_TEST_S3_ENDPOINT or MOTO_SERVER"
        );
        let port = free_port();
        // The server lives as long as this test process: a shell starts it
        // and kills it when our end of its stdin closes (at exit).
        let child = Command::new("sh")
            .arg("-c")
            .arg(r#""$0" -H 127.0.0.1 -p "$1" >/dev/null 2>&1 & pid=$!; read _; kill $pid"#)
            .arg(&exe)
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        static KEEP: OnceLock<std::sync::Mutex<Child>> = OnceLock::new();
        let _ = KEEP.set(std::sync::Mutex::new(child));
        let ep = format!("http://127.0.0.1:{port}");
        let t = Instant::now();
        while TcpStream::connect(format!("127.0.0.1:{port}")).is_err() {
            assert!(t.elapsed() < Duration::from_secs(30), "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        ep
    })
    .clone()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Creates a fresh bucket; returns its name.
pub fn bucket(tag: &str) -> String {
    let ep = s3_endpoint();
    let name = format!(
        "sp-{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let addr = ep.trim_start_matches("http://");
    let (status, body) = http(addr, "PUT", &format!("/{name}"), None, b"");
    assert_eq!(
        status,
        200,
        "create bucket: {}",
        String::from_utf8_lossy(&body)
    );
    name
}

/// The environment that points sp-sync at the test S3 server.
pub fn s3_env() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ENDPOINT_URL", s3_endpoint()),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("SP_SYNC_S3_RETRIES", "2".into()),
    ]
}

/// Runs sp-sync with extra environment; returns the output.
pub fn run_env(cwd: &Path, args: &[&str], env: &[(&str, String)]) -> std::process::Output {
    let mut c = Command::new(bin());
    c.args(args)
        .current_dir(cwd)
        .env("SP_SYNC_CACHE_DIR", cache_dir())
        .env_remove("SP_SYNC_STORE");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("spawn sp-sync")
}

pub fn ok_env(cwd: &Path, args: &[&str], env: &[(&str, String)]) -> String {
    let o = run_env(cwd, args, env);
    assert!(
        o.status.success(),
        "sp-sync {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Peak resident memory of a process so far, in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
