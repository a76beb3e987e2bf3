//! Manifest-triggered deploy: `[deploy.NAME]` targets of `sp-sync.toml`.
//!
//! A target watches some of a snapshot's paths (gitignore-style globs) and
//! tables. Its **watched hash** is a Merkle hash over what those globs
//! select, computed from the snapshot's directory maps alone: no file chunk
//! is read, and subtrees no glob can reach are skipped unread
//! ([`watched_hash`]; the hash is specified in `store-format.md` §8.3). A
//! target is *due* when that hash differs from the one recorded by its last
//! successful deploy, the ref `deploy/NAME` (a small snapshot object whose
//! first parent is the deployed snapshot and whose metadata holds the hash;
//! gc keeps what it deployed, like any ref).
//!
//! Running a target ([`deploy`]) materializes the snapshot into a temporary
//! directory, runs each step with `sh -c` in it (in its own process group,
//! output streamed line by line), and moves `deploy/NAME` only when every
//! step succeeded. A per-target lock file keeps two deploys of one target
//! from overlapping: the second waits, then decides again whether it is due.

#![warn(missing_docs)]

use std::collections::{BTreeMap, VecDeque};
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use globset::{GlobBuilder, GlobMatcher};
use serde::{Deserialize, Serialize};

use crate::error::{Result, SyncError};
use crate::id::{ObjectId, ObjectType};
use crate::object::snapshot::Snapshot;
use crate::object::tree::{EntryKind, MAX_TREE_DEPTH, decode_entry, too_deep};
use crate::object::{ObjectSink, ObjectSource};
use crate::progress::Progress;
use crate::store::Store;
use crate::workspace::{PROJECT_FILE, ProjectConfig};

/// The prefix of the refs that record successful deploys.
pub const DEPLOY_REF_PREFIX: &str = "deploy/";
/// The largest `sp-sync.toml` read out of a snapshot.
pub const MAX_PROJECT_FILE: u64 = 1 << 20;
/// Lines of a failed step's output that its error shows.
pub const TAIL_LINES: usize = 5;
/// The longest output line passed on whole (longer ones are cut).
const MAX_LINE: usize = 64 << 10;
/// How long a stopped step gets between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(3);
/// How long output is still read after a step exited (a background
/// process it started may hold the pipe open).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// Metadata keys of a deploy record.
const META_TARGET: &str = "deploy.target";
const META_SNAPSHOT: &str = "deploy.snapshot";
const META_HASH: &str = "deploy.watched_hash";

/// BLAKE3 `derive_key` contexts of the watched hash (store-format.md §8.3).
const CTX_DIR: &str = "sp-sync 2026-12 watched-hash v1 directory";
const CTX_ROOT: &str = "sp-sync 2026-12 watched-hash v1 root";

/// One `[deploy.NAME]` table of `sp-sync.toml`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeployConfig {
    /// Gitignore-style globs over the snapshot's paths (`!` negates; the
    /// last matching pattern decides).
    #[serde(default)]
    pub watch: Vec<String>,
    /// Tables whose object ids join the watched hash.
    #[serde(default)]
    pub tables: Vec<String>,
    /// Shell commands, run in order with `sh -c`.
    #[serde(default)]
    pub steps: Vec<StepConfig>,
    /// Extra environment for the steps (placeholders are replaced).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Where the steps run, relative to the materialized copy.
    #[serde(default)]
    pub workdir: Option<String>,
    /// Per-step time limit: seconds, or a number with `s`, `m` or `h`.
    #[serde(default)]
    pub timeout: Option<TimeoutValue>,
}

/// A step: a command, or a named command.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum StepConfig {
    /// `"cargo build --release"`: named after its first word.
    Command(String),
    /// `{ name = "build", run = "cargo build --release" }`.
    Named {
        /// The name its output lines and errors carry.
        name: String,
        /// The command.
        run: String,
    },
}

/// A timeout as written: `600` or `"10m"`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum TimeoutValue {
    /// Seconds.
    Secs(u64),
    /// `"90s"`, `"10m"`, `"1h"`, or plain seconds.
    Text(String),
}

impl TimeoutValue {
    /// The duration, or why it is not one.
    pub fn duration(&self) -> std::result::Result<Duration, String> {
        match self {
            TimeoutValue::Secs(0) => Err("timeout must be positive".into()),
            TimeoutValue::Secs(n) => Ok(Duration::from_secs(*n)),
            TimeoutValue::Text(t) => {
                let t = t.trim();
                let (num, mult) = match t.char_indices().last() {
                    Some((i, 's')) => (&t[..i], 1),
                    Some((i, 'm')) => (&t[..i], 60),
                    Some((i, 'h')) => (&t[..i], 3600),
                    _ => (t, 1),
                };
                match num.trim().parse::<u64>() {
                    Ok(n) if n > 0 => n
                        .checked_mul(mult)
                        .map(Duration::from_secs)
                        .ok_or_else(|| format!("timeout {t:?} is too large")),
                    _ => Err(format!(
                        "timeout {t:?} is not a positive number of seconds, or of minutes (`10m`) or hours (`1h`)"
                    )),
                }
            }
        }
    }
}

/// A target, checked and ready to use.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its name (`[deploy.NAME]`).
    pub name: String,
    /// What it watches.
    pub watch: WatchSet,
    /// Watched tables, sorted and unique.
    pub tables: Vec<String>,
    /// The steps: (name, command).
    pub steps: Vec<(String, String)>,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// Where the steps run, relative to the copy.
    pub workdir: Option<String>,
    /// Per-step time limit.
    pub timeout: Option<Duration>,
}

/// Checks a target name: it becomes the ref `deploy/NAME`.
pub fn check_target_name(name: &str) -> Result<()> {
    if name.contains('/') {
        return Err(SyncError::Invalid(format!(
            "deploy target {name:?}: a name may not hold `/`"
        )));
    }
    crate::store::refs::validate_ref_name(&format!("{DEPLOY_REF_PREFIX}{name}")).map_err(|_| {
        SyncError::Invalid(format!(
            "deploy target {name:?}: use ASCII letters, digits and `._-+@=,` (not starting with `.`)"
        ))
    })
}

impl Target {
    /// Checks a `[deploy.NAME]` table.
    pub fn from_config(name: &str, c: &DeployConfig) -> Result<Target> {
        check_target_name(name)?;
        let bad = |why: String| SyncError::Invalid(format!("deploy target {name}: {why}"));
        if c.steps.is_empty() {
            return Err(bad("no steps".into()));
        }
        if c.watch.is_empty() && c.tables.is_empty() {
            return Err(bad(
                "watches nothing (give `watch` globs or `tables`)".into()
            ));
        }
        let watch = WatchSet::new(&c.watch).map_err(&bad)?;
        let mut steps = Vec::new();
        for (i, s) in c.steps.iter().enumerate() {
            let (n, cmd) = match s {
                StepConfig::Command(cmd) => (
                    cmd.split_whitespace()
                        .next()
                        .unwrap_or("step")
                        .chars()
                        .take(40)
                        .collect::<String>(),
                    cmd.clone(),
                ),
                StepConfig::Named { name, run } => (name.clone(), run.clone()),
            };
            if cmd.trim().is_empty() {
                return Err(bad(format!("step {} is empty", i + 1)));
            }
            steps.push((n, cmd));
        }
        if let Some(w) = &c.workdir {
            let p = Path::new(w);
            if p.is_absolute()
                || p.components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return Err(bad(format!(
                    "workdir {w:?} must be a relative path inside the copy, without `..`"
                )));
            }
        }
        for k in c.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(bad(format!("env name {k:?} is not a variable name")));
            }
        }
        let timeout = match &c.timeout {
            Some(t) => Some(t.duration().map_err(bad)?),
            None => None,
        };
        let mut tables = c.tables.clone();
        tables.sort();
        tables.dedup();
        Ok(Target {
            name: name.to_string(),
            watch,
            tables,
            steps,
            env: c.env.clone(),
            workdir: c.workdir.clone(),
            timeout,
        })
    }
}

// ---------------------------------------------------------------------------
// Watch globs

/// A set of gitignore-style globs over snapshot paths.
///
/// A pattern without a `/` (other than a trailing one) matches a name at any
/// depth (`Dockerfile`, `*.rs`); one with a `/` is anchored at the
/// snapshot's root (`src/**`, `/Cargo.toml`); a trailing `/` matches
/// directories only; `!` negates. A pattern that matches a directory
/// matches everything below it. A path is watched when the last pattern
/// matching it or one of its directories is not a negation.
#[derive(Debug, Clone, Default)]
pub struct WatchSet {
    pats: Vec<Pattern>,
}

#[derive(Debug, Clone)]
struct Pattern {
    negated: bool,
    dir_only: bool,
    full: GlobMatcher,
    segs: Vec<Seg>,
}

#[derive(Debug, Clone)]
enum Seg {
    /// `**`: any number of components.
    Any,
    Glob(GlobMatcher),
}

fn glob(text: &str) -> std::result::Result<GlobMatcher, String> {
    GlobBuilder::new(text)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("watch pattern {text:?}: {e}"))
}

impl WatchSet {
    /// Compiles patterns.
    pub fn new(patterns: &[String]) -> std::result::Result<WatchSet, String> {
        let mut pats = Vec::new();
        for raw in patterns {
            let mut p = raw.trim();
            let negated = p.starts_with('!');
            if negated {
                p = &p[1..];
            }
            let dir_only = p.ends_with('/');
            let p = p.trim_end_matches('/');
            let anchored = p.starts_with('/') || p.contains('/');
            let p = p.trim_start_matches('/');
            if p.is_empty() {
                return Err(format!("watch pattern {raw:?} is empty"));
            }
            let text = if anchored {
                p.to_string()
            } else {
                format!("**/{p}")
            };
            let segs = text
                .split('/')
                .filter(|s| !s.is_empty())
                .map(|s| {
                    if s == "**" {
                        Ok(Seg::Any)
                    } else {
                        glob(s).map(Seg::Glob)
                    }
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            pats.push(Pattern {
                negated,
                dir_only,
                full: glob(&text)?,
                segs,
            });
        }
        Ok(WatchSet { pats })
    }

    /// Whether the set has no patterns.
    pub fn is_empty(&self) -> bool {
        self.pats.is_empty()
    }

    /// Whether `path` (components joined by `/`) is watched, given whether
    /// it is a directory. (The walk in [`watched_hash`] decides the same way
    /// without matching every path.)
    pub fn is_watched(&self, path: &[u8], is_dir: bool) -> bool {
        let mut flags = vec![false; self.pats.len()];
        let comps: Vec<&[u8]> = path
            .split(|&c| c == b'/')
            .filter(|c| !c.is_empty())
            .collect();
        for i in 0..comps.len() {
            let prefix = comps[..=i].join(&b'/');
            let dir = i + 1 < comps.len() || is_dir;
            self.mark(&mut flags, &prefix, dir);
        }
        self.decide(&flags)
    }

    /// Sets the flag of each pattern that matches `path` itself.
    fn mark(&self, flags: &mut [bool], path: &[u8], is_dir: bool) {
        let cand = globset::Candidate::from_bytes(path);
        for (f, p) in flags.iter_mut().zip(&self.pats) {
            if !*f && (is_dir || !p.dir_only) && p.full.is_match_candidate(&cand) {
                *f = true;
            }
        }
    }

    /// The last flagged pattern decides.
    fn decide(&self, flags: &[bool]) -> bool {
        flags
            .iter()
            .zip(&self.pats)
            .rev()
            .find(|(f, _)| **f)
            .is_some_and(|(_, p)| !p.negated)
    }

    /// Whether pattern `p` may match something strictly below the
    /// directory with components `dir`.
    fn may_match_below(p: &Pattern, dir: &[&[u8]]) -> bool {
        for (i, c) in dir.iter().enumerate() {
            match p.segs.get(i) {
                // The pattern ended at an ancestor: it matched that
                // directory (or nothing), and flags carry the former.
                None => return false,
                Some(Seg::Any) => return true,
                Some(Seg::Glob(g)) => {
                    if !g.is_match_candidate(&globset::Candidate::from_bytes(c)) {
                        return false;
                    }
                }
            }
        }
        p.segs.len() > dir.len()
    }

    /// What everything below a directory is, if every path there is decided
    /// the same way: `Some(true)` all watched, `Some(false)` none.
    fn fixed_below(&self, flags: &[bool], dir: &[&[u8]]) -> Option<bool> {
        let last = flags.iter().rposition(|f| *f);
        let from = last.map_or(0, |j| j + 1);
        if self.pats[from..]
            .iter()
            .any(|p| Self::may_match_below(p, dir))
        {
            return None;
        }
        Some(last.is_some_and(|j| !self.pats[j].negated))
    }
}

// ---------------------------------------------------------------------------
// The watched hash

/// A watched hash: BLAKE3 over what a target watches (store-format.md §8.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WatchedHash(pub [u8; 32]);

impl WatchedHash {
    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        crate::id::hex(&self.0)
    }

    /// The first 16 hex digits.
    pub fn short(&self) -> String {
        crate::id::hex(&self.0[..8])
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<WatchedHash> {
        ObjectId::from_hex(s).map(|id| WatchedHash(id.0))
    }
}

impl Serialize for WatchedHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

/// What one watched-hash computation read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WalkStats {
    /// Watched files and symlinks.
    pub entries: u64,
    /// Directories whose maps were read.
    pub dirs_read: u64,
    /// Directories skipped unread (no pattern can match below them).
    pub dirs_skipped: u64,
}

/// Computes a target's watched hash over snapshot `snap`: only tree nodes
/// are read (never a chunk or a chunk list), and directories no pattern can
/// reach are not read at all.
pub fn watched_hash(
    src: &dyn ObjectSource,
    snap: &Snapshot,
    watch: &WatchSet,
    tables: &[String],
) -> Result<(WatchedHash, WalkStats)> {
    let mut stats = WalkStats::default();
    let root = match (&snap.root, watch.is_empty()) {
        (Some(root), false) => {
            let flags = vec![false; watch.pats.len()];
            let mut path = Vec::new();
            let mut comps = Vec::new();
            hash_dir(
                src, root, watch, &flags, None, &mut path, &mut comps, &mut stats,
            )?
        }
        _ => None,
    };
    let mut h = blake3::Hasher::new_derive_key(CTX_ROOT);
    match root {
        Some(r) => {
            h.update(&[1]);
            h.update(&r);
        }
        None => {
            h.update(&[0]);
        }
    }
    let mut w = crate::codec::Writer::new();
    w.varint(tables.len() as u64);
    for t in tables {
        w.bytes(t.as_bytes());
        match snap.tables.get(t) {
            Some(id) => {
                w.u8(1).id(id);
            }
            None => {
                w.u8(0);
            }
        }
    }
    h.update(&w.into_vec());
    Ok((WatchedHash(*h.finalize().as_bytes()), stats))
}

/// What [`each_entry`] calls with each (name, entry bytes).
type EntryFn<'f> = dyn FnMut(&[u8], &[u8]) -> Result<()> + 'f;

/// Calls `f` with each (key, value) of a directory map, in key order,
/// without copying them (nodes are read and checked one at a time).
fn each_entry(
    src: &dyn ObjectSource,
    id: &ObjectId,
    expect: Option<(u8, &[u8])>,
    f: &mut EntryFn<'_>,
) -> Result<()> {
    let node = crate::pmap::load_node(src, ObjectType::Tree, id, expect)?;
    for i in 0..node.len() {
        if node.level == 0 {
            f(node.key(i), node.value(i))?;
        } else {
            each_entry(src, &node.child(i), Some((node.level - 1, node.key(i))), f)?;
        }
    }
    Ok(())
}

/// An entry's kind, mode and the bytes after its mtime (a file's size and
/// content, a symlink's target, a directory's tree id): what the watched
/// hash takes, without decoding the content.
fn split_entry<'v>(tree: &ObjectId, name: &[u8], v: &'v [u8]) -> Result<(u8, u64, &'v [u8])> {
    use crate::object::tree::{
        KIND_DIR, KIND_FILE, KIND_RELATIVE, KIND_SYMLINK, MODE_MASK, check_name,
    };
    if let Err(why) = check_name(name) {
        return Err(SyncError::UnsafeName {
            name: String::from_utf8_lossy(name).into_owned(),
            context: format!("tree {} ({why})", tree.short()),
        });
    }
    let bad = |e: String| {
        crate::object::corrupt(
            ObjectType::Tree,
            tree,
            format!("entry {:?}: {e}", String::from_utf8_lossy(name)),
        )
    };
    let mut r = crate::codec::Reader::new(v);
    let head = (|| {
        let kind = r.u8()?;
        let mode = r.varint_max(u64::from(MODE_MASK), "mode")?;
        r.zigzag()?;
        r.varint_max(999_999_999, "nanoseconds")?;
        Ok::<_, crate::codec::DecodeError>((kind, mode))
    })();
    let (kind, mode) = head.map_err(|e| bad(e.to_string()))?;
    let rest = &v[r.pos()..];
    // Whether the time is relative to the directory's changes nothing here.
    match kind & !KIND_RELATIVE {
        k @ (KIND_FILE | KIND_SYMLINK) if !rest.is_empty() => Ok((k, mode, rest)),
        KIND_DIR if rest.len() == 32 => Ok((KIND_DIR, mode, rest)),
        k => Err(bad(format!(
            "entry kind {k} with {} bytes after its mtime",
            rest.len()
        ))),
    }
}

fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Hashes the watched entries of one directory; `None` when it has none.
/// `fixed`: the decision for everything here, when no pattern can change it.
#[allow(clippy::too_many_arguments)]
fn hash_dir(
    src: &dyn ObjectSource,
    tree: &ObjectId,
    watch: &WatchSet,
    flags: &[bool],
    fixed: Option<bool>,
    path: &mut Vec<u8>,
    comps: &mut Vec<Vec<u8>>,
    stats: &mut WalkStats,
) -> Result<Option<[u8; 32]>> {
    use crate::object::tree::KIND_DIR;
    if comps.len() >= MAX_TREE_DEPTH {
        return Err(too_deep(path));
    }
    stats.dirs_read += 1;
    let mut h = blake3::Hasher::new_derive_key(CTX_DIR);
    let mut any = false;
    let mut child_flags = flags.to_vec();
    let mut rec: Vec<u8> = Vec::with_capacity(256);
    each_entry(src, tree, None, &mut |name, value| {
        let (kind, mode, rest) = split_entry(tree, name, value)?;
        let is_dir = kind == KIND_DIR;
        let len = path.len();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(name);
        // Flags of this entry: inherited, plus the patterns matching it.
        let (here, decided) = match fixed {
            Some(d) => (None, Some(d)),
            None => {
                child_flags.copy_from_slice(flags);
                watch.mark(&mut child_flags, path, is_dir);
                (Some(&child_flags), None)
            }
        };
        rec.clear();
        push_varint(&mut rec, name.len() as u64);
        rec.extend_from_slice(name);
        rec.push(kind);
        if is_dir {
            let mut sub = [0u8; 32];
            sub.copy_from_slice(rest);
            let sub = ObjectId(sub);
            let sub_fixed = match (decided, here) {
                (Some(d), _) => Some(d),
                (None, Some(f)) => {
                    comps.push(name.to_vec());
                    let dir: Vec<&[u8]> = comps.iter().map(Vec::as_slice).collect();
                    let r = watch.fixed_below(f, &dir);
                    comps.pop();
                    r
                }
                (None, None) => None,
            };
            if sub_fixed == Some(false) {
                stats.dirs_skipped += 1;
            } else {
                let sub_flags = here.cloned().unwrap_or_else(|| flags.to_vec());
                comps.push(name.to_vec());
                let r = hash_dir(src, &sub, watch, &sub_flags, sub_fixed, path, comps, stats);
                comps.pop();
                if let Some(sh) = r? {
                    h.update(&rec);
                    h.update(&sh);
                    any = true;
                }
            }
        } else {
            let watched = match (decided, here) {
                (Some(d), _) => d,
                (None, Some(f)) => watch.decide(f),
                (None, None) => false,
            };
            if watched {
                stats.entries += 1;
                any = true;
                push_varint(&mut rec, mode);
                rec.extend_from_slice(rest);
                h.update(&rec);
            }
        }
        path.truncate(len);
        Ok(())
    })?;
    Ok(any.then(|| *h.finalize().as_bytes()))
}

// ---------------------------------------------------------------------------
// Configuration and records

/// Where the targets were read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigSource {
    /// `sp-sync.toml` inside the deployed snapshot.
    Snapshot,
    /// The working tree's `sp-sync.toml` (the snapshot holds none).
    WorkingTree,
}

impl ConfigSource {
    /// For messages.
    pub fn describe(&self) -> &'static str {
        match self {
            ConfigSource::Snapshot => "the snapshot's sp-sync.toml",
            ConfigSource::WorkingTree => "the working tree's sp-sync.toml",
        }
    }
}

/// Reads `sp-sync.toml` at the root of `snap` (at most
/// [`MAX_PROJECT_FILE`] bytes), if there is one.
pub fn project_in_snapshot(
    src: &dyn ObjectSource,
    snap_id: &ObjectId,
    snap: &Snapshot,
) -> Result<Option<ProjectConfig>> {
    // A record (a deploy's, a cache restore's, a local sync's) holds no
    // files: deploying it would run the steps on an empty copy (audit
    // round 19: `deploy --snapshot deploy/t` did, and recorded it).
    let Some(root) = snap.root else {
        return Err(SyncError::Invalid(format!(
            "snapshot {} is a record that holds no files (such as a deploy's own); deploy a \
             snapshot of files",
            snap_id.short()
        )));
    };
    let Some(e) = crate::pmap::get(src, ObjectType::Tree, &root, PROJECT_FILE.as_bytes())? else {
        return Ok(None);
    };
    let e = decode_entry(
        &root,
        PROJECT_FILE.as_bytes(),
        &e,
        crate::object::tree::Timestamp::ZERO,
    )?;
    let shown = format!("{}:{PROJECT_FILE}", snap_id.short());
    // The snapshot's own config, or none: never the working tree's in its
    // place when the snapshot has one as a symlink (audit round 19: its
    // steps, not the snapshot's, ran).
    let EntryKind::File { size, content } = &e.kind else {
        return Err(SyncError::Invalid(format!(
            "{shown} is a {}, not a file: deploy reads its config from the snapshot, and not \
             through a symlink (make it a file)",
            e.kind_name()
        )));
    };
    if *size > MAX_PROJECT_FILE {
        return Err(SyncError::Invalid(format!(
            "{shown} is larger than {MAX_PROJECT_FILE} bytes"
        )));
    }
    let mut bytes = Vec::with_capacity(*size as usize);
    for c in content.chunks(src, *size) {
        bytes.extend_from_slice(&src.get(ObjectType::Chunk, &c?.id)?);
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| SyncError::Invalid(format!("{shown} is not UTF-8")))?;
    ProjectConfig::parse(&text, Path::new(&shown)).map(Some)
}

/// The targets for deploying `snap`: from its own `sp-sync.toml`, else from
/// `fallback_root`'s (the working tree), if given.
pub fn load_targets(
    src: &dyn ObjectSource,
    snap_id: &ObjectId,
    snap: &Snapshot,
    fallback_root: Option<&Path>,
) -> Result<(Vec<Target>, ConfigSource)> {
    let (project, source) = match project_in_snapshot(src, snap_id, snap)? {
        Some(p) => (p, ConfigSource::Snapshot),
        None => match fallback_root {
            Some(root) if root.join(PROJECT_FILE).is_file() => {
                (ProjectConfig::load(root)?, ConfigSource::WorkingTree)
            }
            _ => {
                return Err(SyncError::NotFound(format!(
                    "snapshot {} holds no {PROJECT_FILE}{}",
                    snap_id.short(),
                    if fallback_root.is_some() {
                        ", and the working tree has none"
                    } else {
                        ""
                    }
                )));
            }
        },
    };
    let targets = project
        .deploy
        .iter()
        .map(|(n, c)| Target::from_config(n, c))
        .collect::<Result<Vec<_>>>()?;
    Ok((targets, source))
}

/// What `deploy/NAME` records: the last successful deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastDeploy {
    /// The record (the snapshot object the ref names).
    pub record: ObjectId,
    /// The snapshot deployed.
    pub snapshot: ObjectId,
    /// Its watched hash then.
    pub watched_hash: WatchedHash,
}

/// The ref of a target.
pub fn deploy_ref(target: &str) -> String {
    format!("{DEPLOY_REF_PREFIX}{target}")
}

/// Reads the record of a target's last successful deploy. A ref that is not
/// a deploy record (set by hand) counts as none.
pub fn last_deploy(store: &Store, target: &str) -> Result<(Option<ObjectId>, Option<LastDeploy>)> {
    let Some(rec) = store.read_ref(&deploy_ref(target))? else {
        return Ok((None, None));
    };
    let s = crate::names::load_snapshot(store, &rec)?;
    let snapshot = s
        .meta
        .get(META_SNAPSHOT)
        .and_then(|h| ObjectId::from_hex(h));
    let hash = s.meta.get(META_HASH).and_then(|h| WatchedHash::from_hex(h));
    let last = match (snapshot, hash) {
        (Some(snapshot), Some(watched_hash)) if s.parents.first() == Some(&snapshot) => {
            Some(LastDeploy {
                record: rec,
                snapshot,
                watched_hash,
            })
        }
        _ => None,
    };
    Ok((Some(rec), last))
}

/// Records a successful deploy: a snapshot object (first parent: the
/// deployed snapshot; no files; metadata: target, snapshot, watched hash),
/// then `deploy/NAME` moves to it by compare-and-swap from `expected`.
pub fn record_deploy(
    store: &Store,
    target: &str,
    snapshot: &ObjectId,
    hash: &WatchedHash,
    expected: Option<ObjectId>,
) -> Result<ObjectId> {
    let rec = Snapshot {
        parents: vec![*snapshot],
        time: crate::snapshot::now(),
        host: crate::snapshot::hostname(),
        message: format!("deploy {target}"),
        meta: BTreeMap::from([
            (META_TARGET.to_string(), target.to_string()),
            (META_SNAPSHOT.to_string(), snapshot.to_hex()),
            (META_HASH.to_string(), hash.to_hex()),
        ]),
        ..Snapshot::default()
    };
    let session = store.writer()?;
    let id = match session.put(ObjectType::Snapshot, &rec.encode()) {
        Ok(id) => id,
        Err(e) => {
            session.abort();
            return Err(e);
        }
    };
    session.finish()?;
    store.update_ref(&deploy_ref(target), Some(expected), Some(id))?;
    Ok(id)
}

// ---------------------------------------------------------------------------
// Planning

/// Options of [`deploy`] and [`status`].
#[derive(Debug, Clone, Default)]
pub struct DeployOptions {
    /// What to deploy (a SNAP name); default `main`.
    pub snapshot: Option<String>,
    /// Targets to consider; empty: all.
    pub targets: Vec<String>,
    /// Decide and report; run nothing, move nothing.
    pub dry_run: bool,
    /// Run even when not due.
    pub force: bool,
    /// The working tree, whose `sp-sync.toml` is used when the snapshot
    /// holds none.
    pub fallback_root: Option<PathBuf>,
    /// Where lock files live (default: the store's `locks/`, or a directory
    /// under `$TMPDIR` for a store that is not a local directory).
    pub lock_dir: Option<PathBuf>,
}

/// Whether a target is due for a snapshot, and why.
#[derive(Debug, Clone, Serialize)]
pub struct TargetStatus {
    /// The target.
    pub target: String,
    /// The snapshot considered.
    pub snapshot: ObjectId,
    /// Its watched hash.
    pub watched_hash: WatchedHash,
    /// Whether it differs from the last successful deploy's.
    pub due: bool,
    /// The last successful deploy.
    pub last: Option<LastDeploy>,
    /// What the hash computation read.
    pub walk: WalkStats,
    /// The steps (name, command with placeholders filled in).
    pub steps: Vec<StepPlan>,
}

/// A step as it will run.
#[derive(Debug, Clone, Serialize)]
pub struct StepPlan {
    /// Its name.
    pub name: String,
    /// The command, placeholders replaced.
    pub command: String,
}

/// The snapshot to deploy and its targets.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The snapshot's id.
    pub snapshot: ObjectId,
    /// Where the targets came from.
    pub config: ConfigSource,
    /// The chosen targets.
    pub targets: Vec<Target>,
}

/// Resolves the snapshot and the chosen targets.
pub fn plan(store: &Store, opts: &DeployOptions) -> Result<(Plan, Snapshot)> {
    let spec = opts.snapshot.as_deref().unwrap_or("main");
    let id = crate::names::resolve(store, spec)?;
    let snap = crate::names::load_snapshot(store, &id)?;
    let (all, config) = load_targets(store, &id, &snap, opts.fallback_root.as_deref())?;
    // No target named: all of them (possibly none; callers say so).
    let targets = if opts.targets.is_empty() {
        all
    } else {
        let mut chosen = Vec::new();
        for want in &opts.targets {
            match all.iter().find(|t| &t.name == want) {
                Some(t) => chosen.push(t.clone()),
                None => {
                    let known: Vec<&str> = all.iter().map(|t| t.name.as_str()).collect();
                    return Err(SyncError::NotFound(format!(
                        "unknown deploy target {want:?} in {} (targets: {})",
                        config.describe(),
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    )));
                }
            }
        }
        chosen
    };
    Ok((
        Plan {
            snapshot: id,
            config,
            targets,
        },
        snap,
    ))
}

/// The placeholders of a deploy.
fn fill(text: &str, target: &str, snap: &ObjectId, hash: &WatchedHash) -> String {
    text.replace("{snapshot}", &snap.to_hex())
        .replace("{short}", &snap.short())
        .replace("{target}", target)
        .replace("{watched_hash}", &hash.to_hex())
}

/// Whether `target` is due for `snap`.
pub fn target_status(
    store: &Store,
    snap_id: &ObjectId,
    snap: &Snapshot,
    target: &Target,
) -> Result<TargetStatus> {
    let (hash, walk) = watched_hash(store, snap, &target.watch, &target.tables)?;
    // A watch that sees nothing never makes a deploy due (audit round 19:
    // globs written from the working tree's root over a snapshot of
    // `services/` alone, a glob through a symlink, a table not there).
    if walk.entries == 0 && !target.watch.is_empty() {
        tracing::warn!(
            "deploy {}: its watch patterns match nothing in snapshot {} (they match paths \
             from the snapshot's root, and never through a symlink)",
            target.name,
            snap_id.short()
        );
    }
    for t in target
        .tables
        .iter()
        .filter(|t| !snap.tables.contains_key(*t))
    {
        tracing::warn!(
            "deploy {}: watched table {t} is not in snapshot {}",
            target.name,
            snap_id.short()
        );
    }
    let (_, last) = last_deploy(store, &target.name)?;
    let due = last.as_ref().is_none_or(|l| l.watched_hash != hash);
    Ok(TargetStatus {
        target: target.name.clone(),
        snapshot: *snap_id,
        watched_hash: hash,
        due,
        last,
        walk,
        steps: target
            .steps
            .iter()
            .map(|(n, c)| StepPlan {
                name: n.clone(),
                command: fill(c, &target.name, snap_id, &hash),
            })
            .collect(),
    })
}

/// Every chosen target and whether it is due (`--list`, `--dry-run`).
pub fn status(store: &Store, opts: &DeployOptions) -> Result<(Plan, Vec<TargetStatus>)> {
    let (plan, snap) = plan(store, opts)?;
    let v = plan
        .targets
        .iter()
        .map(|t| target_status(store, &plan.snapshot, &snap, t))
        .collect::<Result<Vec<_>>>()?;
    Ok((plan, v))
}

// ---------------------------------------------------------------------------
// Running

/// One line a step printed (stdout and stderr, in the order written).
#[derive(Debug, Clone, Copy)]
pub struct StepLine<'a> {
    /// The target.
    pub target: &'a str,
    /// The step's name.
    pub step: &'a str,
    /// The line, without its newline (invalid UTF-8 replaced).
    pub line: &'a str,
}

/// What a step did.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// Its name.
    pub name: String,
    /// The command run.
    pub command: String,
    /// How long it took.
    pub seconds: f64,
}

/// What deploying one target did.
#[derive(Debug, Clone, Serialize)]
pub struct DeployReport {
    /// The target.
    pub target: String,
    /// Whether its steps ran (and all succeeded).
    pub ran: bool,
    /// Whether it was due.
    pub due: bool,
    /// The snapshot's watched hash.
    pub watched_hash: WatchedHash,
    /// The snapshot deployed (or considered).
    pub snapshot: ObjectId,
    /// The record `deploy/NAME` now names (after a run).
    pub record: Option<ObjectId>,
    /// The previous successful deploy.
    pub previous: Option<LastDeploy>,
    /// Where the targets came from.
    pub config: ConfigSource,
    /// The steps that ran.
    pub steps: Vec<StepReport>,
    /// Seconds spent waiting for another deploy of the target.
    pub waited: f64,
    /// Seconds the whole deploy took.
    pub seconds: f64,
}

/// Events a deploy reports besides output lines.
pub trait DeployEvents {
    /// An output line of a step.
    fn line(&mut self, line: &StepLine<'_>);
    /// A step starts.
    fn step_start(&mut self, _target: &str, _index: usize, _name: &str, _command: &str) {}
    /// Another deploy of the target holds its lock; this one waits.
    fn waiting(&mut self, _target: &str) {}
    /// A note for the person watching (which config is used, what ran).
    fn note(&mut self, _text: &str) {}
}

impl<F: FnMut(&StepLine<'_>)> DeployEvents for F {
    fn line(&mut self, line: &StepLine<'_>) {
        self(line)
    }
}

/// The lock directory for `store`: in the store, or (a store that is not
/// a local directory) this user's own one in the temporary directory.
fn lock_dir(store: &Store, opts: &DeployOptions) -> Result<PathBuf> {
    if let Some(d) = &opts.lock_dir {
        return Ok(d.clone());
    }
    match store.local_dir() {
        Some(d) => Ok(d.join("locks")),
        None => {
            let Some(base) = crate::store::private_tmp_dir("sp-sync-locks") else {
                return Err(SyncError::Invalid(format!(
                    "{}/sp-sync-locks-{}: not this user's own directory (another user made it, or a \
                     symlink): deploy locks are not taken there; remove it",
                    std::env::temp_dir().display(),
                    rustix::process::geteuid().as_raw()
                )));
            };
            Ok(base.join(crate::id::hex(
                &blake3::hash(store.location_name().as_bytes()).as_bytes()[..16],
            )))
        }
    }
}

/// An exclusive lock on one target, released when dropped (or when the
/// process dies: flock).
pub struct TargetLock {
    file: std::fs::File,
}

impl TargetLock {
    /// Records in the lock file the process group of the step running now
    /// (`None`: none). A deploy killed with its step still running (kill
    /// -9, a closed terminal) leaves it there, and the next deploy of the
    /// target refuses to start while that group lives.
    fn running(&self, pgid: Option<u32>) {
        use std::os::unix::fs::FileExt;
        let text = pgid.map(|p| format!("{p}\n")).unwrap_or_default();
        let r = self
            .file
            .set_len(0)
            .and_then(|()| self.file.write_all_at(text.as_bytes(), 0));
        if let Err(e) = r {
            tracing::warn!("could not record the running step in the deploy lock: {e}");
        }
    }
}

/// Takes the target's lock, waiting (and telling `events`) while another
/// deploy holds it; an interrupt stops the wait.
pub fn lock_target(
    dir: &Path,
    target: &str,
    progress: &dyn Progress,
    events: &mut dyn DeployEvents,
) -> Result<(TargetLock, Duration)> {
    use rustix::fs::{FlockOperation, flock};
    std::fs::create_dir_all(dir).map_err(|e| SyncError::io("creating", dir, e))?;
    let path = dir.join(format!("deploy-{target}.lock"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| SyncError::io("opening", &path, e))?;
    let start = Instant::now();
    let mut told = false;
    loop {
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {
                // A step an earlier deploy left running (its sp-sync was
                // killed) must end before another deploy of the target runs.
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                if let Some(pgid) = text.trim().parse::<i32>().ok().filter(|p| *p > 0)
                    && let Some(pid) = rustix::process::Pid::from_raw(pgid)
                    && rustix::process::test_kill_process_group(pid).is_ok()
                {
                    return Err(SyncError::Invalid(format!(
                        "deploy {target}: a step of an earlier deploy whose sp-sync was killed may still be running: process group {pgid} (recorded in {}) is; wait for it to end or end it, or, if it is not that step, empty that file",
                        path.display()
                    )));
                }
                let lock = TargetLock { file };
                lock.running(None);
                return Ok((lock, start.elapsed()));
            }
            Err(e) if e == rustix::io::Errno::WOULDBLOCK || e == rustix::io::Errno::INTR => {
                if !told {
                    events.waiting(target);
                    told = true;
                }
                if progress.interrupted() {
                    return Err(SyncError::Interrupted);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(SyncError::io("locking", &path, e.into())),
        }
    }
}

/// Deploys the chosen targets of a snapshot, one after another: each due one
/// (every one with `force`) runs its steps in a fresh copy of the snapshot
/// under its lock, and its ref moves when all its steps succeeded. The first
/// failure stops (a failed step is [`SyncError::CommandFailed`]). With
/// `dry_run`, nothing runs: the reports say what is due.
pub fn deploy(
    store: &Store,
    opts: &DeployOptions,
    progress: &dyn Progress,
    events: &mut dyn DeployEvents,
) -> Result<Vec<DeployReport>> {
    let (plan, snap) = plan(store, opts)?;
    let mut out = Vec::new();
    for t in &plan.targets {
        out.push(deploy_target(
            store, &plan, &snap, t, opts, progress, events,
        )?);
    }
    Ok(out)
}

/// Deploys one target of a plan (see [`deploy`]).
pub fn deploy_target(
    store: &Store,
    plan: &Plan,
    snap: &Snapshot,
    target: &Target,
    opts: &DeployOptions,
    progress: &dyn Progress,
    events: &mut dyn DeployEvents,
) -> Result<DeployReport> {
    let start = Instant::now();
    let mut locked = None;
    // The target's record before waiting: a deploy that ran meanwhile
    // moves it (see below).
    let before = store.read_ref(&deploy_ref(&target.name))?;
    if !opts.dry_run {
        let (lock, waited) = lock_target(&lock_dir(store, opts)?, &target.name, progress, events)?;
        // The record a deploy that ran meanwhile wrote (and a snapshot
        // made meanwhile) are in packs this process has not loaded yet.
        store.refresh()?;
        locked = Some((lock, waited));
    }
    // A deploy of `main` that waited for the lock deploys what `main` is
    // now: the snapshot it read before may be older than one a deploy that
    // ran meanwhile put out, which it would take back.
    let fresh;
    let (plan, snap, target) = match &locked {
        Some(_) if opts.snapshot.is_none() => {
            let now = crate::names::resolve(store, "main")?;
            if now == plan.snapshot {
                (plan, snap, target)
            } else {
                events.note(&format!(
                    "main moved to {} while this deploy waited: deploying that",
                    now.short()
                ));
                let o = DeployOptions {
                    snapshot: Some(now.to_hex()),
                    targets: vec![target.name.clone()],
                    ..opts.clone()
                };
                let (p, s) = self::plan(store, &o)?;
                let t =
                    p.targets.first().cloned().ok_or_else(|| {
                        SyncError::NotFound(format!("deploy target {}", target.name))
                    })?;
                fresh = (p, s, t);
                (&fresh.0, &fresh.1, &fresh.2)
            }
        }
        _ => (plan, snap, target),
    };
    let report = |st: TargetStatus, ran: bool, record, steps, waited: Duration| DeployReport {
        target: target.name.clone(),
        ran,
        due: st.due,
        watched_hash: st.watched_hash,
        snapshot: plan.snapshot,
        record,
        previous: st.last,
        config: plan.config,
        steps,
        waited: waited.as_secs_f64(),
        seconds: start.elapsed().as_secs_f64(),
    };
    let Some((lock, waited)) = locked else {
        let st = target_status(store, &plan.snapshot, snap, target)?;
        return Ok(report(st, false, None, Vec::new(), Duration::ZERO));
    };
    // Decided under the lock: a deploy that ran meanwhile may have made
    // this one unnecessary.
    let st = target_status(store, &plan.snapshot, snap, target)?;
    if !st.due && !opts.force {
        return Ok(report(st, false, None, Vec::new(), waited));
    }
    // A deploy of a named snapshot (`push --deploy`, `--snapshot`) that
    // waited while another put out a snapshot descending from it would
    // take that back: it is not due. (Without waiting, an older snapshot
    // named is a rollback asked for.)
    if !opts.force
        && opts.snapshot.is_some()
        && store.read_ref(&deploy_ref(&target.name))? != before
        && let Some(last) = &st.last
        && crate::is_ancestor(store, &plan.snapshot, &last.snapshot)?
    {
        events.note(&format!(
            "deploy {}: {} went out while this deploy waited, and it is newer than {}: \
             not deploying that back",
            target.name,
            last.snapshot.short(),
            plan.snapshot.short()
        ));
        let mut st = st;
        st.due = false;
        return Ok(report(st, false, None, Vec::new(), waited));
    }
    let expected = store.read_ref(&deploy_ref(&target.name))?;
    let copy = materialize(store, snap, progress)?;
    // A relative symlink that leads out of the copy means something else
    // there than in the working tree: `../shared` is `$TMPDIR/shared`,
    // which any user of the machine may have made.
    if let Some((link, to)) = link_out_of(copy.path())? {
        return Err(SyncError::Invalid(format!(
            "deploy {}: {} in snapshot {} is a symlink to {} that leads out of the snapshot; \
             no step was run (exclude it, or make it absolute)",
            target.name,
            link.display(),
            plan.snapshot.short(),
            to.display()
        )));
    }
    let mut cwd = copy.path().to_path_buf();
    if let Some(w) = &target.workdir {
        cwd = cwd.join(w);
        if !cwd.is_dir() {
            return Err(SyncError::NotFound(format!(
                "deploy {}: workdir {w} is not a directory in snapshot {}",
                target.name,
                plan.snapshot.short()
            )));
        }
        // The snapshot may hold a symlink on the way: the steps never run
        // (and delete) outside the copy.
        let inside = std::fs::canonicalize(&cwd)
            .ok()
            .zip(std::fs::canonicalize(copy.path()).ok())
            .is_some_and(|(c, root)| c.starts_with(root));
        if !inside {
            return Err(SyncError::Invalid(format!(
                "deploy {}: workdir {w} leads out of snapshot {} (through a symlink); no step was run",
                target.name,
                plan.snapshot.short()
            )));
        }
    }
    let hash = st.watched_hash;
    let mut env: Vec<(String, String)> = vec![
        ("SP_SYNC_DEPLOY_TARGET".into(), target.name.clone()),
        ("SP_SYNC_DEPLOY_SNAPSHOT".into(), plan.snapshot.to_hex()),
        ("SP_SYNC_DEPLOY_WATCHED_HASH".into(), hash.to_hex()),
    ];
    for (k, v) in &target.env {
        env.push((k.clone(), fill(v, &target.name, &plan.snapshot, &hash)));
    }
    let mut steps = Vec::new();
    for (i, (name, cmd)) in target.steps.iter().enumerate() {
        // No step starts after an interrupt (the one before may have
        // finished while its background child held its output).
        if progress.interrupted() {
            return Err(SyncError::Interrupted);
        }
        let command = fill(cmd, &target.name, &plan.snapshot, &hash);
        events.step_start(&target.name, i + 1, name, &command);
        let t = Instant::now();
        let r = run_step(
            &target.name,
            (i + 1, name),
            &command,
            &cwd,
            &env,
            target.timeout,
            (progress, &lock),
            events,
        );
        lock.running(None);
        r?;
        steps.push(StepReport {
            name: name.clone(),
            command,
            seconds: t.elapsed().as_secs_f64(),
        });
    }
    drop(copy);
    if progress.interrupted() {
        return Err(SyncError::Interrupted);
    }
    let rec = record_deploy(store, &target.name, &plan.snapshot, &hash, expected)?;
    Ok(report(st, true, Some(rec), steps, waited))
}

/// The first symlink under `root` whose relative target leads out of
/// `root`, with its target. The target is resolved as the kernel would,
/// following the symlinks it meets inside `root` (`y -> x/..` with `x ->
/// .` leads out), except that an absolute target met on the way leads
/// where it says, as in the working tree.
fn link_out_of(root: &Path) -> Result<Option<(PathBuf, PathBuf)>> {
    let mut dirs = vec![PathBuf::new()];
    while let Some(rel) = dirs.pop() {
        let dir = root.join(&rel);
        for e in std::fs::read_dir(&dir).map_err(|e| SyncError::io("reading", &dir, e))? {
            let e = e.map_err(|e| SyncError::io("reading", &dir, e))?;
            let ty = e
                .file_type()
                .map_err(|err| SyncError::io("reading", e.path(), err))?;
            let path = rel.join(e.file_name());
            if ty.is_dir() {
                dirs.push(path);
            } else if ty.is_symlink() {
                let to = std::fs::read_link(e.path())
                    .map_err(|err| SyncError::io("reading", e.path(), err))?;
                if to.is_relative() && leads_out(root, &rel, &to) {
                    return Ok(Some((path, to)));
                }
            }
        }
    }
    Ok(None)
}

/// Whether relative `target`, read in directory `dir` of `root`, leads out
/// of `root` (see [`link_out_of`]; a chain of more than 40 symlinks, which
/// the kernel refuses, does not).
fn leads_out(root: &Path, dir: &Path, target: &Path) -> bool {
    use std::collections::VecDeque;
    use std::path::Component;
    let mut at: Vec<std::ffi::OsString> = dir.iter().map(|c| c.to_os_string()).collect();
    let mut todo: VecDeque<std::ffi::OsString> = VecDeque::new();
    let push_front = |todo: &mut VecDeque<std::ffi::OsString>, p: &Path| {
        for c in p.components().rev() {
            match c {
                Component::ParentDir => todo.push_front("..".into()),
                Component::Normal(n) => todo.push_front(n.to_os_string()),
                _ => {}
            }
        }
    };
    push_front(&mut todo, target);
    let mut hops = 0;
    while let Some(c) = todo.pop_front() {
        if c == ".." {
            if at.pop().is_none() {
                return true;
            }
            continue;
        }
        let mut here = root.to_path_buf();
        here.extend(&at);
        here.push(&c);
        match std::fs::read_link(&here) {
            Ok(t) => {
                hops += 1;
                if hops > 40 || t.is_absolute() {
                    return false;
                }
                push_front(&mut todo, &t);
            }
            Err(_) => at.push(c),
        }
    }
    false
}

/// A deploy's copy of its snapshot, removed when dropped: unless a step
/// left something mounted inside it (`mount --bind`), whose files are not
/// the copy's to delete (audit 23: the cleanup emptied the mounted folder).
/// Then the copy stays, and a warning names it.
struct DeployCopy(Option<tempfile::TempDir>);

impl DeployCopy {
    fn path(&self) -> &Path {
        self.0.as_ref().map_or(Path::new(""), |t| t.path())
    }
}

impl Drop for DeployCopy {
    fn drop(&mut self) {
        let Some(t) = self.0.take() else { return };
        // (Not TempDir's own removal: it enters a mount made inside, also
        // one made while it runs; audit 24.)
        let copy = t.keep();
        match crate::restore::remove_tree_in_place(&copy) {
            Ok(kept) if kept.is_empty() => {}
            Ok(kept) => tracing::warn!(
                "the deploy's copy {} is left in place: a step left {} mounted inside it \
                 (unmount it, then remove the copy)",
                copy.display(),
                kept[0].display()
            ),
            Err(e) => tracing::warn!(
                "the deploy's copy {} could not be removed: {e}",
                copy.display()
            ),
        }
    }
}

/// Where a deploy's copy goes: `$TMPDIR/sp-sync-deploy-PID-…`.
const COPY_PREFIX: &str = "sp-sync-deploy-";

/// Removes the copies that deploys killed outright left (`kill -9`, a
/// crash: no drop ran): folders named `sp-sync-deploy-PID-…` whose process
/// is gone and that have not changed for an hour (a step may have left a
/// process running in one). Removed as a finished deploy removes its own,
/// never crossing into a mount left inside.
fn sweep_dead_copies(dir: &Path) {
    crate::store::sweep_dead_with(
        dir,
        "deploy",
        true,
        crate::store::stale_after(),
        |n| {
            n.strip_prefix(COPY_PREFIX)?
                .split_once('-')
                .map(|(pid, _)| pid)
        },
        |p| match crate::restore::remove_tree_in_place(p) {
            Ok(kept) if kept.is_empty() => {}
            Ok(kept) => tracing::warn!(
                "a killed deploy's copy {} is left in place: {} is mounted inside it",
                p.display(),
                kept[0].display()
            ),
            Err(e) => tracing::debug!("could not remove {}: {e}", p.display()),
        },
    );
}

/// Restores the snapshot's files into a new temporary directory (removed
/// when dropped).
fn materialize(store: &Store, snap: &Snapshot, progress: &dyn Progress) -> Result<DeployCopy> {
    sweep_dead_copies(&std::env::temp_dir());
    let tmp = tempfile::Builder::new()
        .prefix(&format!("{COPY_PREFIX}{}-", std::process::id()))
        .tempdir()
        .map_err(|e| SyncError::io("creating", std::env::temp_dir(), e))?;
    if let Some(root) = snap.root {
        let entry = crate::object::tree::Entry {
            mode: 0o755,
            mtime: crate::object::tree::Timestamp::default(),
            kind: EntryKind::Dir { tree: root },
        };
        crate::restore::restore(
            store,
            &entry,
            b"",
            tmp.path(),
            &crate::restore::RestoreOptions::default(),
            progress,
        )?;
    }
    Ok(DeployCopy(Some(tmp)))
}

/// Cuts a line to at most `MAX_LINE` bytes and makes it text.
fn line_text(b: &[u8]) -> String {
    let b = b.strip_suffix(b"\n").unwrap_or(b);
    let b = b.strip_suffix(b"\r").unwrap_or(b);
    String::from_utf8_lossy(&b[..b.len().min(MAX_LINE)]).into_owned()
}

/// Reads `r` into lines (each at most `MAX_LINE` bytes) until EOF.
fn read_lines(mut r: impl Read, tx: crossbeam_channel::Sender<String>) {
    let mut buf = vec![0u8; 8192];
    let mut line: Vec<u8> = Vec::new();
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            line.push(b);
            if b == b'\n' || line.len() >= MAX_LINE {
                if tx.send(line_text(&line)).is_err() {
                    return;
                }
                line.clear();
            }
        }
    }
    if !line.is_empty() {
        let _ = tx.send(line_text(&line));
    }
}

/// Stops a step: SIGTERM to its process group, then SIGKILL if it lingers.
fn kill_group(child: &mut std::process::Child) {
    use rustix::process::{Pid, Signal, kill_process_group};
    let pid = Pid::from_child(child);
    let _ = kill_process_group(pid, Signal::TERM);
    let until = Instant::now() + KILL_GRACE;
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            // The shell is gone; make sure what it started is too.
            let _ = kill_process_group(pid, Signal::KILL);
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill_process_group(pid, Signal::KILL);
    let _ = child.wait();
}

/// Runs one step with `sh -c` in its own process group, streaming its
/// output; a non-zero exit, a signal or the timeout is
/// [`SyncError::CommandFailed`] with the tail of the output.
#[allow(clippy::too_many_arguments)]
fn run_step(
    target: &str,
    (index, name): (usize, &str),
    command: &str,
    cwd: &Path,
    env: &[(String, String)],
    timeout: Option<Duration>,
    (progress, lock): (&dyn Progress, &TargetLock),
    events: &mut dyn DeployEvents,
) -> Result<()> {
    let what = format!("deploy {target} step {index} ({name})");
    let (reader, writer) =
        std::io::pipe().map_err(|e| SyncError::io("creating a pipe for", cwd, e))?;
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(
            writer
                .try_clone()
                .map_err(|e| SyncError::io("creating a pipe for", cwd, e))?,
        )
        .stderr(writer)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .process_group(0);
    let spawned = cmd.spawn();
    // The command holds the pipe's write ends: drop them, or EOF never comes.
    drop(cmd);
    let mut child = spawned.map_err(|e| SyncError::CommandFailed {
        command: what.clone(),
        status: format!("cannot start `sh -c`: {e}"),
        output: String::new(),
    })?;
    // (The shell leads its own process group: its id is the group's.)
    lock.running(Some(child.id()));
    let (tx, rx) = crossbeam_channel::bounded::<String>(1024);
    std::thread::spawn(move || read_lines(reader, tx));
    let start = Instant::now();
    let mut tail: VecDeque<String> = VecDeque::with_capacity(TAIL_LINES);
    let mut status = None;
    let mut exited_at = None;
    let mut eof = false;
    let fail = |status: String, tail: &VecDeque<String>| SyncError::CommandFailed {
        command: what.clone(),
        status,
        output: tail_text(tail),
    };
    loop {
        if eof {
            std::thread::sleep(Duration::from_millis(20));
        } else {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => {
                    events.line(&StepLine {
                        target,
                        step: name,
                        line: &line,
                    });
                    if tail.len() == TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                    continue;
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => eof = true,
            }
        }
        if status.is_none() {
            match child.try_wait() {
                Ok(Some(s)) => {
                    status = Some(s);
                    exited_at = Some(Instant::now());
                }
                Ok(None) => {}
                Err(e) => {
                    kill_group(&mut child);
                    return Err(SyncError::io("waiting for", cwd, e));
                }
            }
        }
        match (status, exited_at) {
            (Some(_), Some(at)) if eof || at.elapsed() > DRAIN_AFTER_EXIT => break,
            (Some(_), _) => {}
            (None, _) => {
                if progress.interrupted() {
                    kill_group(&mut child);
                    return Err(SyncError::Interrupted);
                }
                if let Some(t) = timeout
                    && start.elapsed() > t
                {
                    kill_group(&mut child);
                    return Err(fail(format!("a timeout after {}s", t.as_secs()), &tail));
                }
            }
        }
    }
    let status = status.unwrap_or_default();
    if status.success() {
        return Ok(());
    }
    let why = match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => status.to_string(),
    };
    Err(fail(why, &tail))
}

/// The last lines of a step's output, on one line.
fn tail_text(tail: &VecDeque<String>) -> String {
    if tail.is_empty() {
        return "no output".into();
    }
    let mut s = String::from("last output: ");
    let lines: Vec<String> = tail
        .iter()
        .map(|l| {
            let l: String = l.chars().filter(|c| !c.is_control()).collect();
            let l = l.trim();
            if l.chars().count() > 160 {
                format!("{}…", l.chars().take(160).collect::<String>())
            } else {
                l.to_string()
            }
        })
        .collect();
    s.push_str(&lines.join(" | "));
    s
}

// ---------------------------------------------------------------------------
// Deploys run by the server (`serve --deploy-on-push`)

/// How many finished deploys and checks the server remembers per tenant.
const KEEP_HISTORY: usize = 100;

/// The state of a deploy the server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Its steps are running.
    Running,
    /// Every step succeeded; `deploy/NAME` moved.
    Succeeded,
    /// A step (or the preparation) failed; the ref stayed.
    Failed,
}

/// One deploy the server ran or runs.
#[derive(Debug, Clone, Serialize)]
pub struct ServerDeploy {
    /// A number, unique in this server process.
    pub id: u64,
    /// The target.
    pub target: String,
    /// The snapshot deployed.
    pub snapshot: ObjectId,
    /// Its watched hash.
    pub watched_hash: WatchedHash,
    /// Where it is.
    pub state: RunState,
    /// Unix seconds when it started.
    pub started: u64,
    /// Unix seconds when it ended.
    pub finished: Option<u64>,
    /// Why it failed.
    pub error: Option<String>,
    /// Its log file (the steps' output); not shown to clients.
    #[serde(skip)]
    pub log: PathBuf,
    /// Where the log is served, relative to the tenant's URL.
    pub log_url: String,
}

/// One decision the server took when a tenant's `main` moved.
#[derive(Debug, Clone, Serialize)]
pub struct ServerCheck {
    /// The snapshot `main` moved to.
    pub snapshot: ObjectId,
    /// Unix seconds.
    pub time: u64,
    /// Where the targets came from (none: the snapshot holds no sp-sync.toml).
    pub config: Option<ConfigSource>,
    /// Each target and whether it was due.
    pub targets: Vec<(String, bool)>,
    /// Why no decision could be taken.
    pub error: Option<String>,
}

#[derive(Default)]
struct TenantDeploys {
    pending: Option<(std::sync::Arc<Store>, ObjectId)>,
    running: bool,
    checks: VecDeque<ServerCheck>,
    deploys: VecDeque<ServerDeploy>,
}

/// The server's deploys: per tenant, one at a time, in a background thread;
/// a `main` that moves again while one runs is deployed next (the newest
/// only).
pub struct DeployQueue {
    log_dir: PathBuf,
    tenants: std::sync::Mutex<std::collections::HashMap<String, TenantDeploys>>,
    next_id: std::sync::atomic::AtomicU64,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Writes step output to a deploy's log file.
struct LogFile(std::io::BufWriter<std::fs::File>);

impl DeployEvents for LogFile {
    fn line(&mut self, l: &StepLine<'_>) {
        use std::io::Write;
        let _ = writeln!(self.0, "[{}] {}", l.step, l.line);
        let _ = self.0.flush();
    }

    fn step_start(&mut self, _target: &str, index: usize, name: &str, command: &str) {
        use std::io::Write;
        let _ = writeln!(self.0, "== step {index} ({name}): {command}");
        let _ = self.0.flush();
    }

    fn waiting(&mut self, target: &str) {
        use std::io::Write;
        let _ = writeln!(self.0, "== waiting for another deploy of {target}");
    }
}

impl DeployQueue {
    /// A queue whose logs go under `log_dir/TENANT/`.
    pub fn new(log_dir: PathBuf) -> std::sync::Arc<DeployQueue> {
        std::sync::Arc::new(DeployQueue {
            log_dir,
            tenants: std::sync::Mutex::new(std::collections::HashMap::new()),
            next_id: std::sync::atomic::AtomicU64::new(1),
        })
    }

    fn tenants(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, TenantDeploys>> {
        match self.tenants.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// A tenant's `main` moved to `snapshot`: deploy its due targets (now,
    /// or after the deploy running for that tenant).
    pub fn main_moved(
        self: &std::sync::Arc<Self>,
        tenant: &str,
        store: std::sync::Arc<Store>,
        snapshot: ObjectId,
    ) {
        let mut m = self.tenants();
        let t = m.entry(tenant.to_string()).or_default();
        t.pending = Some((store, snapshot));
        if t.running {
            return;
        }
        t.running = true;
        let me = self.clone();
        let tenant = tenant.to_string();
        let spawned = std::thread::Builder::new()
            .name("sp-sync-deploy".into())
            .spawn(move || me.work(&tenant));
        if let Err(e) = spawned {
            tracing::error!("cannot start a deploy thread: {e}");
            t.running = false;
        }
    }

    fn work(&self, tenant: &str) {
        loop {
            let job = {
                let mut m = self.tenants();
                let t = m.entry(tenant.to_string()).or_default();
                match t.pending.take() {
                    Some(j) => j,
                    None => {
                        t.running = false;
                        return;
                    }
                }
            };
            self.run(tenant, &job.0, job.1);
        }
    }

    fn remember<T>(v: &mut VecDeque<T>, item: T) {
        if v.len() == KEEP_HISTORY {
            v.pop_front();
        }
        v.push_back(item);
    }

    fn run(&self, tenant: &str, store: &Store, snapshot: ObjectId) {
        let opts = DeployOptions {
            snapshot: Some(snapshot.to_hex()),
            ..Default::default()
        };
        let mut check = ServerCheck {
            snapshot,
            time: unix_now(),
            config: None,
            targets: Vec::new(),
            error: None,
        };
        let planned = plan(store, &opts).and_then(|(p, snap)| {
            let st = p
                .targets
                .iter()
                .map(|t| target_status(store, &snapshot, &snap, t))
                .collect::<Result<Vec<_>>>()?;
            Ok((p, snap, st))
        });
        let (p, snap, st) = match planned {
            Ok(x) => x,
            Err(e) => {
                tracing::info!("tenant {tenant}: no deploy for {}: {e}", snapshot.short());
                check.error = Some(e.to_string());
                Self::remember(
                    &mut self.tenants().entry(tenant.into()).or_default().checks,
                    check,
                );
                return;
            }
        };
        check.config = Some(p.config);
        check.targets = st.iter().map(|s| (s.target.clone(), s.due)).collect();
        Self::remember(
            &mut self.tenants().entry(tenant.into()).or_default().checks,
            check,
        );
        for (t, s) in p.targets.iter().zip(&st) {
            if !s.due {
                continue;
            }
            let id = self
                .next_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = self.log_dir.join(tenant);
            let log = dir.join(format!("{id:06}-{}-{}.log", t.name, snapshot.short()));
            let mut rec = ServerDeploy {
                id,
                target: t.name.clone(),
                snapshot,
                watched_hash: s.watched_hash,
                state: RunState::Running,
                started: unix_now(),
                finished: None,
                error: None,
                log: log.clone(),
                log_url: format!("deploys/{id}/log"),
            };
            Self::remember(
                &mut self.tenants().entry(tenant.into()).or_default().deploys,
                rec.clone(),
            );
            let result = std::fs::create_dir_all(&dir)
                .and_then(|()| std::fs::File::create(&log))
                .map_err(|e| SyncError::io("creating", &log, e))
                .and_then(|f| {
                    let mut events = LogFile(std::io::BufWriter::new(f));
                    deploy_target(
                        store,
                        &p,
                        &snap,
                        t,
                        &opts,
                        &crate::progress::NoProgress,
                        &mut events,
                    )
                });
            rec.finished = Some(unix_now());
            match result {
                Ok(r) if r.ran => rec.state = RunState::Succeeded,
                Ok(_) => {
                    // Deployed meanwhile by someone else: nothing ran.
                    rec.state = RunState::Succeeded;
                    rec.error = Some("not due any more (deployed meanwhile)".into());
                }
                Err(e) => {
                    tracing::warn!("tenant {tenant}: deploy {} failed: {e}", t.name);
                    rec.state = RunState::Failed;
                    rec.error = Some(e.to_string());
                }
            }
            let mut m = self.tenants();
            if let Some(slot) = m
                .entry(tenant.into())
                .or_default()
                .deploys
                .iter_mut()
                .find(|d| d.id == id)
            {
                *slot = rec;
            }
        }
    }

    /// The log of a tenant's deploy `id` (its last `max` bytes), if known.
    pub fn log(&self, tenant: &str, id: u64, max: u64) -> Option<Vec<u8>> {
        use std::io::{Seek, SeekFrom};
        let path = {
            let m = self.tenants();
            m.get(tenant)?
                .deploys
                .iter()
                .find(|d| d.id == id)?
                .log
                .clone()
        };
        let mut f = std::fs::File::open(path).ok()?;
        let len = f.metadata().ok()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(max))).ok()?;
        let mut out = Vec::new();
        f.take(max).read_to_end(&mut out).ok()?;
        Some(out)
    }

    /// A tenant's deploys, newest last, as the status endpoint shows them.
    pub fn status_json(&self, tenant: &str) -> serde_json::Value {
        let m = self.tenants();
        match m.get(tenant) {
            None => serde_json::json!({"busy": false, "checks": [], "deploys": []}),
            Some(t) => serde_json::json!({
                "busy": t.running,
                "checks": t.checks.iter().map(|c| serde_json::json!({
                    "snapshot": c.snapshot, "time": c.time, "config": c.config,
                    "due": c.targets.iter().filter(|(_, d)| *d).map(|(n, _)| n).collect::<Vec<_>>(),
                    "targets": c.targets.iter().map(|(n, _)| n).collect::<Vec<_>>(),
                    "error": c.error,
                })).collect::<Vec<_>>(),
                "deploys": t.deploys,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(p: &[&str]) -> WatchSet {
        WatchSet::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn globs_follow_gitignore_rules() {
        let w = set(&["src/**", "Cargo.toml", "Dockerfile", "!*.md"]);
        assert!(w.is_watched(b"src/main.rs", false));
        assert!(w.is_watched(b"src/a/b/c.rs", false));
        assert!(!w.is_watched(b"src/README.md", false));
        assert!(w.is_watched(b"Cargo.toml", false));
        assert!(w.is_watched(b"sub/Cargo.toml", false));
        assert!(w.is_watched(b"deep/er/Dockerfile", false));
        assert!(!w.is_watched(b"docs/x.rs", false));
        // A directory pattern covers what is below it.
        let w = set(&["services", "!services/cache/"]);
        assert!(w.is_watched(b"services/agents/a.md", false));
        assert!(!w.is_watched(b"services/cache/x", false));
        assert!(w.is_watched(b"x/services/y", false));
        // Anchored.
        let w = set(&["/services/agents"]);
        assert!(w.is_watched(b"services/agents/bot.md", false));
        assert!(!w.is_watched(b"x/services/agents/bot.md", false));
        // Dir-only does not match a file.
        let w = set(&["build/"]);
        assert!(!w.is_watched(b"build", false));
        assert!(w.is_watched(b"build/x", false));
        assert!(WatchSet::new(&["".into()]).is_err());
        assert!(WatchSet::new(&["a[".into()]).is_err());
    }

    #[test]
    fn pruning_is_exact_about_what_can_match() {
        let w = set(&["src/**", "*.toml"]);
        let flags = vec![false; 2];
        assert_eq!(w.fixed_below(&flags, &[b"docs"]), None); // *.toml anywhere
        let w = set(&["src/**", "/Cargo.toml"]);
        assert_eq!(w.fixed_below(&flags, &[b"docs"]), Some(false));
        assert_eq!(w.fixed_below(&flags, &[b"src"]), None);
        assert_eq!(w.fixed_below(&[true, false], &[b"src", b"a"]), Some(true));
        let w = set(&["**", "!target"]);
        assert_eq!(w.fixed_below(&[true, true], &[b"target"]), Some(false));
    }

    #[test]
    fn timeouts_parse() {
        let d = |s: &str| TimeoutValue::Text(s.into()).duration();
        assert_eq!(d("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(d("90"), Ok(Duration::from_secs(90)));
        assert_eq!(d("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(d("30s"), Ok(Duration::from_secs(30)));
        assert!(d("0").is_err());
        assert!(d("ten").is_err());
        assert!(TimeoutValue::Secs(0).duration().is_err());
    }

    #[test]
    fn config_parses_and_checks() {
        let c = ProjectConfig::parse(
            "[deploy.api]\nwatch = [\"src/**\"]\ntables = [\"users\"]\nsteps = [\"make\", { name = \"ship\", run = \"./ship {short}\" }]\nenv = { TAG = \"{snapshot}\" }\nworkdir = \"app\"\ntimeout = \"10m\"\n",
            Path::new("sp-sync.toml"),
        )
        .unwrap();
        let t = Target::from_config("api", &c.deploy["api"]).unwrap();
        assert_eq!(t.steps[0], ("make".to_string(), "make".to_string()));
        assert_eq!(t.steps[1].0, "ship");
        assert_eq!(t.timeout, Some(Duration::from_secs(600)));
        let bad = |toml: &str| {
            let c = ProjectConfig::parse(toml, Path::new("x"));
            c.and_then(|c| {
                c.deploy
                    .iter()
                    .map(|(n, d)| Target::from_config(n, d))
                    .collect::<Result<Vec<_>>>()
            })
            .is_err()
        };
        assert!(bad("[deploy.api]\nwatch = [\"a\"]\n"));
        assert!(bad("[deploy.api]\nsteps = [\"a\"]\n"));
        assert!(bad(
            "[deploy.api]\nwatch = [\"a\"]\nsteps = [\"a\"]\nworkdir = \"../x\"\n"
        ));
        assert!(bad(
            "[deploy.api]\nwatch = [\"a\"]\nsteps = [\"a\"]\nstep = 1\n"
        ));
        assert!(bad("[deploy.\"a/b\"]\nwatch = [\"a\"]\nsteps = [\"a\"]\n"));
        assert!(bad(
            "[deploy.api]\nwatch = [\"a\"]\nsteps = [\"a\"]\ntimeout = \"soon\"\n"
        ));
    }
}
