//! A loopback TCP proxy that injects network faults between a client and
//! a server: real sockets, one thread per direction of each connection.
//!
//! Each connection, in each direction, may get one fault at a random byte
//! offset (a seeded rng, so a failing run can be replayed with its seed):
//! - `Delay`: forwarding pauses for a while, then goes on;
//! - `Stall`: forwarding stops for longer than the client's timeout, then
//!   the connection is cut;
//! - `Cut`: the bytes in flight are dropped and both sides are closed;
//! - `Truncate`: exactly N bytes are forwarded, then both sides are closed.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// A small xorshift rng (seeded; no dependency).
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// A generator from `seed` (any value; 0 is remapped).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// A number in `0..n` (0 when n is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// What the proxy does to a direction of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Pause this long at the offset, then go on.
    Delay(Duration),
    /// Stop forwarding at the offset for this long, then cut.
    Stall(Duration),
    /// Drop what is in flight at the offset and close both sides.
    Cut,
    /// Forward exactly up to the offset, then close both sides.
    Truncate,
    /// A `Cut` while `first_big_downloads_cut` has cuts left (each one
    /// uses one up); else nothing.
    CountedCut,
}

/// How often faults happen.
#[derive(Debug, Clone)]
pub struct FaultConfig {
    /// Whether faults are injected at all (off: a plain relay).
    pub enabled: bool,
    /// Chance that one direction of a connection gets a fault.
    pub per_direction: f64,
    /// Offsets are drawn log-uniformly from `0..max_offset`.
    pub max_offset: u64,
    /// The longest `Delay`.
    pub max_delay: Duration,
    /// How long a `Stall` lasts (longer than the client's timeout).
    pub stall: Duration,
    /// Relative weights of delay, stall, cut, truncate.
    pub weights: [u32; 4],
    /// Instead of random faults: this one, client to server, on every
    /// connection (nothing server to client).
    pub every_upload: Option<(u64, Fault)>,
    /// Instead of random faults: a cut of the server-to-client direction
    /// at this offset, for the first `count` connections whose answers
    /// reach it (offset, count); nothing client to server.
    pub first_big_downloads_cut: Option<(u64, u64)>,
}

impl Default for FaultConfig {
    fn default() -> FaultConfig {
        FaultConfig {
            enabled: true,
            per_direction: 0.8,
            max_offset: 4 << 20,
            max_delay: Duration::from_millis(400),
            stall: Duration::from_secs(4),
            weights: [35, 5, 30, 30],
            every_upload: None,
            first_big_downloads_cut: None,
        }
    }
}

/// What the proxy has done so far.
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Delays injected.
    pub delays: AtomicU64,
    /// Stalls injected.
    pub stalls: AtomicU64,
    /// Connections cut.
    pub cuts: AtomicU64,
    /// Connections truncated.
    pub truncations: AtomicU64,
    /// Bytes forwarded, both directions.
    pub bytes: AtomicU64,
}

impl ProxyStats {
    /// `connections=… delays=… stalls=… cuts=… truncations=… bytes=…`.
    pub fn summary(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "connections={} delays={} stalls={} cuts={} truncations={} bytes={}",
            g(&self.connections),
            g(&self.delays),
            g(&self.stalls),
            g(&self.cuts),
            g(&self.truncations),
            g(&self.bytes)
        )
    }
}

struct Shared {
    upstream: String,
    config: Mutex<FaultConfig>,
    seed: u64,
    stats: ProxyStats,
    stop: AtomicBool,
    /// Every live socket (both ends of each connection), to close on drop.
    live: Mutex<Vec<(u64, TcpStream)>>,
}

/// A running proxy: listens on `addr`, forwards to the upstream address.
pub struct FaultProxy {
    /// `127.0.0.1:PORT` the clients connect to.
    pub addr: String,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port in front of `upstream`.
    pub fn start(upstream: &str, seed: u64, config: FaultConfig) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().unwrap().to_string();
        let shared = Arc::new(Shared {
            upstream: upstream.to_string(),
            config: Mutex::new(config),
            seed,
            stats: ProxyStats::default(),
            stop: AtomicBool::new(false),
            live: Mutex::new(Vec::new()),
        });
        let sh = shared.clone();
        let accept = std::thread::spawn(move || {
            let mut n = 0u64;
            for conn in listener.incoming() {
                if sh.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                n += 1;
                sh.stats.connections.fetch_add(1, Ordering::Relaxed);
                let sh = sh.clone();
                std::thread::spawn(move || connection(sh, n, client));
            }
        });
        FaultProxy {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// Turns fault injection on or off (a plain relay when off).
    pub fn set_enabled(&self, on: bool) {
        self.shared.config.lock().unwrap().enabled = on;
    }

    /// Replaces the fault settings.
    pub fn set_config(&self, c: FaultConfig) {
        *self.shared.config.lock().unwrap() = c;
    }

    /// What the proxy has done so far.
    pub fn stats(&self) -> &ProxyStats {
        &self.shared.stats
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop, then close every live connection.
        let _ = TcpStream::connect(&self.addr);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        for (_, s) in self.shared.live.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// Draws the fault of direction `dir` of connection `n`, if any:
/// (offset, fault). The same seed gives each connection the same faults.
fn draw(sh: &Shared, n: u64, dir: u64) -> Option<(u64, Fault)> {
    let c = sh.config.lock().unwrap().clone();
    let mut rng = Rng::new(sh.seed ^ n.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ (dir << 63));
    rng.next();
    if c.enabled && c.every_upload.is_some() {
        return if dir == 0 { c.every_upload } else { None };
    }
    if c.enabled
        && let Some((at, _)) = c.first_big_downloads_cut
    {
        return (dir == 1).then_some((at, Fault::CountedCut));
    }
    if !c.enabled || !rng.chance(c.per_direction) {
        return None;
    }
    // Log-uniform: early offsets (headers, small answers) as often as late
    // ones (the middle of a pack stream).
    let bits = 64 - c.max_offset.max(2).leading_zeros() as u64;
    let scale = rng.below(bits + 1);
    let offset = rng.below(1u64 << scale).min(c.max_offset);
    let total: u32 = c.weights.iter().sum();
    let mut pick = rng.below(u64::from(total.max(1))) as u32;
    let mut kind = 0;
    for (i, w) in c.weights.iter().enumerate() {
        if pick < *w {
            kind = i;
            break;
        }
        pick -= w;
    }
    let fault = match kind {
        0 => Fault::Delay(Duration::from_millis(
            1 + rng.below(c.max_delay.as_millis() as u64),
        )),
        1 => Fault::Stall(c.stall),
        2 => Fault::Cut,
        _ => Fault::Truncate,
    };
    Some((offset, fault))
}

fn connection(sh: Arc<Shared>, n: u64, client: TcpStream) {
    let Ok(server) = TcpStream::connect(&sh.upstream) else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    {
        let mut live = sh.live.lock().unwrap();
        if let (Ok(a), Ok(b)) = (client.try_clone(), server.try_clone()) {
            live.push((n, a));
            live.push((n, b));
        }
    }
    let up = draw(&sh, n, 0);
    let down = draw(&sh, n, 1);
    let closed = Arc::new(AtomicBool::new(false));
    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let t = {
        let (sh, closed) = (sh.clone(), closed.clone());
        let (c, s) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        std::thread::spawn(move || pump(&sh, c2, s2, up, &closed, (&c, &s)))
    };
    pump(
        &sh,
        server.try_clone().unwrap(),
        client.try_clone().unwrap(),
        down,
        &closed,
        (&client, &server),
    );
    let _ = t.join();
    sh.live.lock().unwrap().retain(|(id, _)| *id != n);
}

/// Closes both sides of a connection.
fn close_both(ends: (&TcpStream, &TcpStream), closed: &AtomicBool) {
    closed.store(true, Ordering::SeqCst);
    let _ = ends.0.shutdown(Shutdown::Both);
    let _ = ends.1.shutdown(Shutdown::Both);
}

/// Copies `from` to `to`, applying `fault` at its offset.
fn pump(
    sh: &Shared,
    mut from: TcpStream,
    mut to: TcpStream,
    mut fault: Option<(u64, Fault)>,
    closed: &AtomicBool,
    ends: (&TcpStream, &TcpStream),
) {
    let mut buf = vec![0u8; 64 << 10];
    let mut done: u64 = 0;
    loop {
        let want = match fault {
            Some((at, _)) if at > done => ((at - done) as usize).min(buf.len()),
            _ => buf.len(),
        };
        if let Some((at, f)) = fault
            && at <= done
        {
            fault = None;
            match f {
                Fault::Delay(d) => {
                    sh.stats.delays.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(d);
                }
                Fault::Stall(d) => {
                    sh.stats.stalls.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(d);
                    sh.stats.cuts.fetch_add(1, Ordering::Relaxed);
                    close_both(ends, closed);
                    return;
                }
                Fault::CountedCut => {
                    let mut c = sh.config.lock().unwrap();
                    match c.first_big_downloads_cut.as_mut() {
                        Some((_, left)) if *left > 0 => {
                            *left -= 1;
                            drop(c);
                            sh.stats.cuts.fetch_add(1, Ordering::Relaxed);
                            close_both(ends, closed);
                            return;
                        }
                        _ => continue,
                    }
                }
                Fault::Cut => {
                    // What arrives now is dropped, then both sides close.
                    let _ = from.set_read_timeout(Some(Duration::from_millis(5)));
                    let _ = from.read(&mut buf);
                    sh.stats.cuts.fetch_add(1, Ordering::Relaxed);
                    close_both(ends, closed);
                    return;
                }
                Fault::Truncate => {
                    sh.stats.truncations.fetch_add(1, Ordering::Relaxed);
                    close_both(ends, closed);
                    return;
                }
            }
            continue;
        }
        let n = match from.read(&mut buf[..want]) {
            Ok(0) | Err(_) => {
                // The sender closed (or the connection was closed): pass the
                // end on, and stop.
                let _ = to.shutdown(Shutdown::Write);
                if closed.load(Ordering::SeqCst) {
                    let _ = to.shutdown(Shutdown::Both);
                }
                return;
            }
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            close_both(ends, closed);
            return;
        }
        done += n as u64;
        sh.stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
}
