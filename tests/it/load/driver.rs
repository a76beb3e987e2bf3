//! The load driver: CLIENTS concurrent clients (threads, each with its own
//! local store and its own HTTP client) pushing and pulling against one
//! `sp-sync serve` for DURATION, through the library's public API.
//!
//! Each client pushes its own ref `c{N}`, and some pushes go to shared refs
//! `shared{K}` that every client updates (fetch the current value, snapshot
//! on top of it, push fast-forward only: a concurrent update is refused, a
//! refusal is not an error). Pulls fetch a random ref (own, another
//! client's, shared) and read every file of the pulled snapshot back,
//! comparing it with what its pusher wrote.
//!
//! At the end every ref on the server is checked: a client's own ref names
//! the last snapshot that client pushed successfully; a shared ref names a
//! snapshot that was pushed successfully, and every successful push of it
//! is in its history (else: a lost update). Every successfully pushed
//! snapshot is then pulled into a fresh store and read back byte-identical.
//!
//! Used by `examples/load.rs` (scripts/load-test.sh) and `tests/it/load.rs`.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use systemprompt_sync::object::ObjectSource;
use systemprompt_sync::remote::{Credentials, Location, Remote};
use systemprompt_sync::{
    LockMode, NoProgress, ObjectId, ObjectType, Snapshot, SnapshotOptions, Store, SyncError,
};

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// `http://HOST:PORT/TENANT`.
    pub url: String,
    /// The bearer token, if the server wants one.
    pub token: Option<String>,
    /// Concurrent clients.
    pub clients: usize,
    /// How long they run.
    pub duration: Duration,
    /// Shared refs every client updates.
    pub shared_refs: usize,
    /// The largest file a push writes (each push: one file of up to this
    /// many bytes and a small one).
    pub max_file: usize,
    /// An empty folder for the clients' stores and files.
    pub work: PathBuf,
    /// Seed of the clients' choices and contents.
    pub seed: u64,
}

/// Figures of one kind of operation.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct KindReport {
    /// Operations done (successful or not).
    pub ops: u64,
    /// Successful ones.
    pub ok: u64,
    /// Refused cleanly (a shared ref moved by someone else first).
    pub refused: u64,
    /// Errors.
    pub errors: u64,
    /// Object bytes moved by the successful ones.
    pub bytes: u64,
    /// Median latency, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: f64,
    /// Slowest, milliseconds.
    pub max_ms: f64,
}

/// What a run did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LoadReport {
    /// Clients.
    pub clients: usize,
    /// Seconds the clients ran.
    pub seconds: f64,
    /// Operations of every kind.
    pub ops: u64,
    /// Operations a second.
    pub ops_per_sec: f64,
    /// Object bytes moved a second (pushes and pulls), in MB (10^6).
    pub mb_per_sec: f64,
    /// By kind: `push` (own ref), `push-shared`, `pull`.
    pub kinds: BTreeMap<String, KindReport>,
    /// Errors (push or pull failures, wrong bytes, unknown snapshots).
    pub errors: u64,
    /// The first few error messages.
    pub error_samples: Vec<String>,
    /// Successful updates that the final refs lost.
    pub lost_updates: u64,
    /// Successfully pushed snapshots read back byte-identical at the end.
    pub verified_snapshots: u64,
    /// Refs checked at the end.
    pub refs_checked: u64,
}

impl LoadReport {
    /// A few lines for people.
    pub fn human(&self) -> String {
        let mut s = format!(
            "{} clients, {:.1} s: {} operations, {:.1} ops/s, {:.2} MB/s; errors {}, lost updates {}; \
             {} refs checked, {} pushed snapshots read back byte-identical\n",
            self.clients,
            self.seconds,
            self.ops,
            self.ops_per_sec,
            self.mb_per_sec,
            self.errors,
            self.lost_updates,
            self.refs_checked,
            self.verified_snapshots
        );
        for (k, r) in &self.kinds {
            s.push_str(&format!(
                "  {k:<12} {:>6} ops ({} ok, {} refused, {} errors), p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, {:.1} MB\n",
                r.ops,
                r.ok,
                r.refused,
                r.errors,
                r.p50_ms,
                r.p99_ms,
                r.max_ms,
                r.bytes as f64 / 1e6
            ));
        }
        for e in &self.error_samples {
            s.push_str(&format!("  error: {e}\n"));
        }
        s
    }
}

/// A small xorshift rng.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng::new(seed);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&r.next().to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A snapshot's files: name, BLAKE3 of the bytes, length.
type Files = Vec<(String, [u8; 32], u64)>;

/// What the clients share: each snapshot's expected files, the successful
/// pushes, latencies and errors.
#[derive(Default)]
struct Shared {
    /// Snapshot id → its files (name → bytes' BLAKE3 and length).
    expected: Mutex<HashMap<ObjectId, Files>>,
    /// Ref → the ids successfully pushed to it, in order of completion.
    pushed: Mutex<HashMap<String, Vec<ObjectId>>>,
    /// Kind → latencies (µs), and counts.
    kinds: Mutex<BTreeMap<String, (Vec<u64>, KindReport)>>,
    errors: Mutex<Vec<String>>,
    error_count: AtomicU64,
}

enum Outcome {
    Ok(u64),
    Refused,
    Error(String),
}

impl Shared {
    fn record(&self, kind: &str, took: Duration, o: Outcome) {
        let mut k = self.kinds.lock().unwrap();
        let e = k.entry(kind.to_string()).or_default();
        e.0.push(took.as_micros() as u64);
        e.1.ops += 1;
        match o {
            Outcome::Ok(b) => {
                e.1.ok += 1;
                e.1.bytes += b;
            }
            Outcome::Refused => e.1.refused += 1,
            Outcome::Error(msg) => {
                e.1.errors += 1;
                drop(k);
                self.error(format!("{kind}: {msg}"));
            }
        }
    }

    fn error(&self, msg: String) {
        self.error_count.fetch_add(1, Ordering::Relaxed);
        let mut v = self.errors.lock().unwrap();
        if v.len() < 20 {
            v.push(msg);
        }
    }
}

fn open_remote(opts: &LoadOptions) -> systemprompt_sync::Result<Arc<dyn Remote>> {
    let loc = Location::parse(&opts.url)?;
    systemprompt_sync::remote::open(
        &loc,
        &Credentials {
            token: opts.token.clone(),
            s3: Vec::new(),
        },
        true,
    )
}

fn open_store(dir: &Path) -> systemprompt_sync::Result<Store> {
    Store::init(&dir.join("store"))?;
    let mut s = Store::open(&dir.join("store"), LockMode::Shared)?;
    s.set_cache_dir(dir.join("cache"));
    Ok(s)
}

/// Reads every expected file of `id` from `store`; an error names the first
/// difference.
fn verify(store: &Store, sh: &Shared, id: &ObjectId) -> std::result::Result<(), String> {
    let files = sh
        .expected
        .lock()
        .unwrap()
        .get(id)
        .cloned()
        .ok_or_else(|| format!("snapshot {id} was never pushed by a client"))?;
    for (name, hash, len) in files {
        let mut h = blake3::Hasher::new();
        let n = systemprompt_sync::cat(store, &format!("{id}:{name}"), &mut h)
            .map_err(|e| format!("reading {id}:{name}: {e}"))?;
        if n != len || *h.finalize().as_bytes() != hash {
            return Err(format!(
                "{id}:{name}: the bytes differ from what was pushed"
            ));
        }
    }
    Ok(())
}

/// Writes the files of a client's next snapshot; returns their digests.
fn write_files(dir: &Path, rng: &mut Rng, max_file: usize) -> Files {
    let len = 1 + rng.below(max_file as u64) as usize;
    let big = content(len, rng.next());
    let note = format!("note {}\n", rng.next()).repeat(1 + rng.below(50) as usize);
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("data.bin"), &big).unwrap();
    std::fs::write(dir.join("note.md"), &note).unwrap();
    vec![
        (
            "data.bin".into(),
            *blake3::hash(&big).as_bytes(),
            big.len() as u64,
        ),
        (
            "note.md".into(),
            *blake3::hash(note.as_bytes()).as_bytes(),
            note.len() as u64,
        ),
    ]
}

/// Snapshots `files` onto `ref_name` of `store`; records what it holds.
fn snap(
    store: &Store,
    files: &Path,
    ref_name: &str,
    digests: Files,
    sh: &Shared,
) -> systemprompt_sync::Result<ObjectId> {
    let opts = SnapshotOptions {
        sources: vec![files.to_path_buf()],
        ref_name: ref_name.to_string(),
        threads: Some(1),
        // Each snapshot is new content; no stat-cache shortcuts.
        use_stat_cache: false,
        ..SnapshotOptions::default()
    };
    let r = systemprompt_sync::snapshot(store, &opts, &NoProgress)?;
    sh.expected.lock().unwrap().insert(r.id, digests);
    Ok(r.id)
}

fn client(i: usize, opts: &LoadOptions, sh: &Shared, deadline: Instant) {
    let dir = opts.work.join(format!("c{i}"));
    let fail = |m: String| sh.error(format!("client {i}: {m}"));
    let store = match open_store(&dir) {
        Ok(s) => s,
        Err(e) => return fail(format!("local store: {e}")),
    };
    let remote = match open_remote(opts) {
        Ok(r) => r,
        Err(e) => return fail(format!("remote: {e}")),
    };
    let mut rng = Rng::new(opts.seed ^ (i as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let own = format!("c{i}");
    let files = dir.join("files");
    while Instant::now() < deadline {
        let dice = rng.below(100);
        if dice < 40 {
            // Push the client's own ref.
            let digests = write_files(&files, &mut rng, opts.max_file);
            let id = match snap(&store, &files, &own, digests, sh) {
                Ok(id) => id,
                Err(e) => return fail(format!("snapshot: {e}")),
            };
            let t = Instant::now();
            let r = systemprompt_sync::transfer::push(
                &store,
                &*remote,
                None,
                std::slice::from_ref(&own),
                false,
                &NoProgress,
            );
            let took = t.elapsed();
            match r {
                Ok(rep) => {
                    sh.pushed
                        .lock()
                        .unwrap()
                        .entry(own.clone())
                        .or_default()
                        .push(id);
                    sh.record("push", took, Outcome::Ok(rep.object_bytes));
                }
                Err(e) => sh.record("push", took, Outcome::Error(e.to_string())),
            }
        } else if dice < 60 && opts.shared_refs > 0 {
            // Update a shared ref: on top of what it names now.
            let name = format!("shared{}", rng.below(opts.shared_refs as u64));
            let t = Instant::now();
            let r = (|| -> systemprompt_sync::Result<(ObjectId, u64)> {
                let now = remote
                    .list_refs()?
                    .into_iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, id)| id);
                let mut bytes = 0;
                if let Some(cur) = now {
                    if !store.contains(&cur) {
                        bytes += systemprompt_sync::transfer::fetch(
                            &store,
                            &*remote,
                            &[cur],
                            &NoProgress,
                        )?
                        .bytes;
                    }
                    store.update_ref(&name, None, Some(cur))?;
                }
                let digests = write_files(&files, &mut rng, opts.max_file);
                let id = snap(&store, &files, &name, digests, sh)?;
                let rep = systemprompt_sync::transfer::push(
                    &store,
                    &*remote,
                    None,
                    std::slice::from_ref(&name),
                    false,
                    &NoProgress,
                )?;
                Ok((id, bytes + rep.object_bytes))
            })();
            let took = t.elapsed();
            match r {
                Ok((id, bytes)) => {
                    sh.pushed
                        .lock()
                        .unwrap()
                        .entry(name.clone())
                        .or_default()
                        .push(id);
                    sh.record("push-shared", took, Outcome::Ok(bytes));
                }
                Err(SyncError::NonFastForward { .. } | SyncError::RefConflict { .. }) => {
                    sh.record("push-shared", took, Outcome::Refused)
                }
                Err(e) => sh.record("push-shared", took, Outcome::Error(e.to_string())),
            }
        } else {
            // Pull a ref someone pushed, and read it back.
            let names: Vec<String> = sh.pushed.lock().unwrap().keys().cloned().collect();
            if names.is_empty() {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            let name = names[rng.below(names.len() as u64) as usize].clone();
            let t = Instant::now();
            let r = systemprompt_sync::transfer::pull(
                &store,
                &*remote,
                None,
                std::slice::from_ref(&name),
                &NoProgress,
            );
            let took = t.elapsed();
            match r {
                Ok(rep) => {
                    let id = rep.refs.first().map(|r| r.id).unwrap_or_default();
                    match verify(&store, sh, &id) {
                        Ok(()) => sh.record("pull", took, Outcome::Ok(rep.object_bytes)),
                        Err(e) => sh.record("pull", took, Outcome::Error(e)),
                    }
                }
                Err(e) => sh.record("pull", took, Outcome::Error(e.to_string())),
            }
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// Runs the clients, then checks every ref and every pushed snapshot.
pub fn run(opts: &LoadOptions) -> LoadReport {
    let sh = Arc::new(Shared::default());
    let start = Instant::now();
    let deadline = start + opts.duration;
    let handles: Vec<_> = (0..opts.clients)
        .map(|i| {
            let (sh, opts) = (sh.clone(), opts.clone());
            std::thread::Builder::new()
                .name(format!("client{i}"))
                .spawn(move || client(i, &opts, &sh, deadline))
                .expect("spawn a client")
        })
        .collect();
    for h in handles {
        if h.join().is_err() {
            sh.error("a client thread panicked".into());
        }
    }
    let seconds = start.elapsed().as_secs_f64();

    let mut report = LoadReport {
        clients: opts.clients,
        seconds,
        ..LoadReport::default()
    };
    let mut bytes = 0u64;
    for (k, (mut lat, mut r)) in std::mem::take(&mut *sh.kinds.lock().unwrap()) {
        lat.sort_unstable();
        r.p50_ms = percentile(&lat, 0.5);
        r.p99_ms = percentile(&lat, 0.99);
        r.max_ms = percentile(&lat, 1.0);
        report.ops += r.ops;
        bytes += r.bytes;
        report.kinds.insert(k, r);
    }
    report.ops_per_sec = report.ops as f64 / seconds;
    report.mb_per_sec = bytes as f64 / 1e6 / seconds;

    // The end state: every ref, and every snapshot pushed.
    let mut check = || -> std::result::Result<(), String> {
        let store = open_store(&opts.work.join("verify")).map_err(|e| e.to_string())?;
        let remote = open_remote(opts).map_err(|e| e.to_string())?;
        let refs: HashMap<String, ObjectId> = remote
            .list_refs()
            .map_err(|e| format!("listing refs: {e}"))?
            .into_iter()
            .collect();
        let pushed = sh.pushed.lock().unwrap().clone();
        let finals: Vec<ObjectId> = refs.values().copied().collect();
        systemprompt_sync::transfer::fetch(&store, &*remote, &finals, &NoProgress)
            .map_err(|e| format!("fetching the final refs: {e}"))?;
        for (name, ids) in &pushed {
            report.refs_checked += 1;
            let Some(fin) = refs.get(name) else {
                sh.error(format!("ref {name} was pushed but is not on the server"));
                report.lost_updates += ids.len() as u64;
                continue;
            };
            if name.starts_with('c') && ids.last() != Some(fin) {
                sh.error(format!(
                    "ref {name} names {fin}, not its last successful push"
                ));
            }
            if !ids.contains(fin) {
                sh.error(format!("ref {name} names {fin}, which no client pushed"));
            }
            // Every successful push is in the final value's history.
            let mut history = HashSet::new();
            let mut stack = vec![*fin];
            while let Some(id) = stack.pop() {
                if !history.insert(id) {
                    continue;
                }
                let b = store
                    .get(ObjectType::Snapshot, &id)
                    .map_err(|e| format!("reading snapshot {id}: {e}"))?;
                let s = Snapshot::decode(&b).map_err(|e| format!("decoding snapshot {id}: {e}"))?;
                stack.extend(s.parents);
            }
            let lost = ids.iter().filter(|id| !history.contains(*id)).count() as u64;
            if lost > 0 {
                sh.error(format!("ref {name}: {lost} successful pushes lost"));
            }
            report.lost_updates += lost;
            for id in ids {
                if history.contains(id) {
                    match verify(&store, &sh, id) {
                        Ok(()) => report.verified_snapshots += 1,
                        Err(e) => sh.error(format!("final check: {e}")),
                    }
                }
            }
        }
        Ok(())
    };
    if let Err(e) = check() {
        sh.error(format!("final check: {e}"));
    }
    report.errors = sh.error_count.load(Ordering::Relaxed);
    report.error_samples = sh.errors.lock().unwrap().clone();
    report
}
