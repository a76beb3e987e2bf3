//! `sp-sync cache save|restore|list|prune`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use super::fmt::{size, when};
use super::{Human, Place, Render, json_via, val};
use crate::cache::{self, CacheEntry, Outcome, PruneReport, PruneRule};
use crate::cache::{RestoreCacheOptions, RestoreCacheReport, SaveOptions, SaveReport};
use crate::error::{Context, Result, SyncError};
use crate::progress::Progress;
use crate::remote::config::{LocalConfig, is_remote_name};
use crate::remote::{self, Location, Remote};
use crate::store::{LockMode, Store};

/// The cache remote: `spec`, else `$SP_SYNC_CACHE_REMOTE`, else the default
/// remote of the store here (when there is one). A bare word is a remote
/// name, looked up in the store here.
fn open_remote(place: &Place, spec: Option<&str>, create: bool) -> Result<Arc<dyn Remote>> {
    let spec = spec.map(str::to_string).or_else(|| {
        std::env::var("SP_SYNC_CACHE_REMOTE")
            .ok()
            .filter(|s| !s.is_empty())
    });
    let needs_store = spec.as_deref().is_none_or(is_remote_name);
    let (loc, creds) = if needs_store {
        let (_, store) = place.open(LockMode::Shared).map_err(|e| match &spec {
            Some(name) => SyncError::NotFound(format!(
                "unknown remote {name:?}: no store here to look it up in (give a path or URL): {e}"
            )),
            None => SyncError::Invalid(
                "no cache remote: give --remote R or set SP_SYNC_CACHE_REMOTE (no store here to take a default from)".into(),
            ),
        })?;
        let cfg = LocalConfig::load(&store)?;
        let name = match spec {
            Some(s) => s,
            None => cfg.default_remote().map_err(|e| {
                SyncError::Invalid(format!(
                    "no cache remote: give --remote R or set SP_SYNC_CACHE_REMOTE ({e})"
                ))
            })?,
        };
        let (_, loc, creds) = cfg.resolve(&name)?;
        (loc, creds)
    } else {
        (
            Location::parse(&spec.unwrap_or_default())?,
            Default::default(),
        )
    };
    remote::open(&loc, &creds, create)
}

/// The local store objects pass through: `$SP_SYNC_CACHE_STORE`, else the
/// per-user one.
fn local_store() -> Result<Store> {
    let dir = std::env::var_os("SP_SYNC_CACHE_STORE")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(cache::default_local_dir);
    if let Some(max) = cache::local_max()? {
        cache::trim_local(&dir, max)
            .context_with(|| format!("the local cache store {}", dir.display()))?;
    }
    cache::open_local(&dir).context_with(|| format!("the local cache store {}", dir.display()))
}

/// `sp-sync cache save KEY PATH... [--remote R] [--exclude GLOB]`.
#[derive(Debug, Clone, Default)]
pub struct CacheSaveOptions {
    /// Where (paths are relative to its directory).
    pub place: Place,
    /// The entry's key.
    pub key: String,
    /// What to save.
    pub paths: Vec<PathBuf>,
    /// The cache remote (default: `$SP_SYNC_CACHE_REMOTE`, else the store's default remote).
    pub remote: Option<String>,
    /// Gitignore-style patterns left out.
    pub excludes: Vec<String>,
}

/// An entry saved (or found existing). Its JSON is the [`SaveReport`].
#[derive(Debug)]
pub struct CacheSaveReport {
    /// The library's report.
    pub report: SaveReport,
    /// The remote, for messages.
    pub remote: String,
    /// Seconds it took.
    pub seconds: f64,
}

/// Saves the paths as entry KEY; a key that exists is left as it is.
pub fn cache_save(opts: &CacheSaveOptions, progress: &dyn Progress) -> Result<CacheSaveReport> {
    cache::validate_key(&opts.key)?;
    // (Bad paths create no store on the remote.)
    cache::check_paths(&opts.place.cwd, &opts.paths)?;
    let r = open_remote(&opts.place, opts.remote.as_deref(), true)?;
    let local = local_store()?;
    let start = Instant::now();
    let sopts = SaveOptions {
        key: opts.key.clone(),
        paths: opts.paths.clone(),
        cwd: opts.place.cwd.clone(),
        excludes: opts.excludes.clone(),
    };
    let report = cache::save(&local, &*r, &sopts, progress)
        .context_with(|| format!("cache save {} to {}", opts.key, r.describe()))?;
    Ok(CacheSaveReport {
        report,
        remote: r.describe(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

json_via!(CacheSaveReport, |r| val(&r.report));

impl Render for CacheSaveReport {
    fn human(&self, out: &mut Human<'_>) -> Result<()> {
        let (rep, key) = (&self.report, &self.report.key);
        if rep.saved {
            out.note(format!(
                "saved {key}: {} files ({}); sent {} objects ({}) to {} in {:.2}s",
                rep.files,
                size(rep.bytes),
                rep.objects_sent,
                size(rep.bytes_sent),
                self.remote,
                self.seconds
            ));
        } else {
            out.note(format!(
                "cache entry {key} already exists on {}; left as it is (a key is immutable)",
                self.remote
            ));
        }
        Ok(())
    }
}

/// `sp-sync cache restore KEY [--restore-key PREFIX]… [--target DIR]`.
#[derive(Debug, Clone, Default)]
pub struct CacheRestoreOptions {
    /// Where.
    pub place: Place,
    /// The key tried first.
    pub key: String,
    /// Only an entry of exactly these paths (none: any).
    pub paths: Vec<PathBuf>,
    /// Prefixes to fall back to, in order.
    pub restore_keys: Vec<String>,
    /// The cache remote.
    pub remote: Option<String>,
    /// Write below this directory instead of the place's.
    pub target: Option<PathBuf>,
    /// A miss is an error.
    pub fail_on_miss: bool,
}

/// What a cache restore did. Its JSON is the [`RestoreCacheReport`].
#[derive(Debug)]
pub struct CacheRestoreReport {
    /// The library's report.
    pub report: RestoreCacheReport,
    /// Seconds it took.
    pub seconds: f64,
}

/// Restores entry KEY, else the newest entry matching a prefix. A remote
/// that holds no store yet (the first CI run) is a miss: a restore never
/// creates one.
pub fn cache_restore(
    opts: &CacheRestoreOptions,
    progress: &dyn Progress,
) -> Result<CacheRestoreReport> {
    let key = &opts.key;
    cache::validate_key(key)?;
    for p in &opts.restore_keys {
        cache::validate_prefix(p)?;
    }
    let ropts = RestoreCacheOptions {
        key: key.clone(),
        paths: opts.paths.clone(),
        restore_keys: opts.restore_keys.clone(),
        target: match &opts.target {
            Some(t) => opts.place.cwd.join(t),
            None => opts.place.cwd.clone(),
        },
        github_output: std::env::var_os("GITHUB_OUTPUT")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from),
        no_record: false,
        protect: cache_protected(opts),
    };
    let start = Instant::now();
    let report = match open_remote(&opts.place, opts.remote.as_deref(), false) {
        Ok(r) => {
            let local = local_store()?;
            cache::restore(&local, &*r, &ropts, progress)
                .context_with(|| format!("cache restore {key} from {}", r.describe()))?
        }
        Err(SyncError::NotFound(m)) if m.starts_with("no sp-sync store at") => {
            cache::restore_from_empty(&ropts)?
        }
        Err(e) => return Err(e),
    };
    if report.result == Outcome::Miss && opts.fail_on_miss {
        return Err(SyncError::NotFound(format!(
            "cache miss: no entry for {key} (--fail-on-miss)"
        )));
    }
    Ok(CacheRestoreReport {
        report,
        seconds: start.elapsed().as_secs_f64(),
    })
}

json_via!(CacheRestoreReport, |r| val(&r.report));

impl Render for CacheRestoreReport {
    fn human(&self, out: &mut Human<'_>) -> Result<()> {
        let rep = &self.report;
        match rep.result {
            Outcome::Miss => out.note(format!("cache miss: no entry for {}", rep.requested_key)),
            o => out.note(format!(
                "cache {}: restored {} ({}: {} files, {}; {} unchanged) in {:.2}s, {} received",
                if o == Outcome::Hit {
                    "hit"
                } else {
                    "partial hit"
                },
                rep.key,
                rep.paths.join(", "),
                rep.files,
                size(rep.bytes),
                rep.unchanged,
                self.seconds,
                size(rep.bytes_received),
            )),
        }
        Ok(())
    }
}

/// Every cache entry. Its JSON is the list.
#[derive(Debug)]
pub struct CacheListReport {
    /// The entries.
    pub entries: Vec<CacheEntry>,
}

/// Lists the entries of the cache remote `remote` (as for save).
pub fn cache_list(place: &Place, remote: Option<&str>) -> Result<CacheListReport> {
    let r = open_remote(place, remote, false)?;
    let entries = cache::list(&*r).context_with(|| format!("cache list {}", r.describe()))?;
    Ok(CacheListReport { entries })
}

json_via!(CacheListReport, |r| val(&r.entries));

impl Render for CacheListReport {
    fn human(&self, out: &mut Human<'_>) -> Result<()> {
        for e in &self.entries {
            let restored = e.restored.map(|t| format!("restored {}", when(t)));
            out.line(format_args!(
                "{}\t{}\t{} files\tsaved {}\t{}",
                e.key,
                size(e.bytes),
                e.files,
                when(e.saved),
                restored.unwrap_or_else(|| "never restored".into())
            ))?;
        }
        Ok(())
    }
}

/// `sp-sync cache prune (--max-size SIZE | --older-than DAYS) [--dry-run]`.
#[derive(Debug, Clone, Default)]
pub struct CachePruneOptions {
    /// Where.
    pub place: Place,
    /// Remove entries until the rest's file bytes fit (e.g. `10GiB`).
    pub max_size: Option<String>,
    /// Remove entries not saved or restored for this many days.
    pub older_than: Option<u64>,
    /// Say what would be removed; remove nothing.
    pub dry_run: bool,
    /// The cache remote.
    pub remote: Option<String>,
}

/// What prune removed. Its JSON: the [`PruneReport`] and `dry_run`.
#[derive(Debug)]
pub struct CachePruneReport {
    /// The library's report.
    pub report: PruneReport,
    /// Whether nothing was removed.
    pub dry_run: bool,
    /// When the space of what was removed comes back, for this remote.
    pub space: &'static str,
}

/// Removes entries, least recently restored (or saved) first.
pub fn cache_prune(opts: &CachePruneOptions, progress: &dyn Progress) -> Result<CachePruneReport> {
    let rule = match (&opts.max_size, opts.older_than) {
        (Some(s), _) => PruneRule::MaxSize(crate::server::parse_size(s).ok_or_else(|| {
            SyncError::Invalid(format!("--max-size {s:?}: expected a size like 10GiB"))
        })?),
        (None, Some(d)) => PruneRule::OlderThanDays(d),
        (None, None) => {
            return Err(SyncError::Invalid(
                "give --max-size SIZE or --older-than DAYS".into(),
            ));
        }
    };
    let r = open_remote(&opts.place, opts.remote.as_deref(), false)?;
    let now = crate::snapshot::now().secs;
    let report = cache::prune(&*r, rule, now, opts.dry_run, progress)
        .context_with(|| format!("cache prune {}", r.describe()))?;
    let d = r.describe();
    let space = if d.starts_with("s3://") {
        "an s3:// remote is never garbage-collected (gc needs a local store's lock): the \
         removed entries' objects stay in the bucket"
    } else if d.starts_with("http://") || d.starts_with("https://") {
        "the space returns at the server's next gc (POST /v1/TENANT/gc)"
    } else {
        "the space returns at the remote's next gc (sp-sync gc --store DIR)"
    };
    Ok(CachePruneReport {
        report,
        dry_run: opts.dry_run,
        space,
    })
}

json_via!(CachePruneReport, |r| {
    let mut v = val(&r.report);
    v["dry_run"] = json!(r.dry_run);
    v
});

impl Render for CachePruneReport {
    fn human(&self, out: &mut Human<'_>) -> Result<()> {
        let rep = &self.report;
        let verb = if self.dry_run {
            "would remove"
        } else {
            "removed"
        };
        for e in &rep.removed {
            let (k, b, t) = (&e.key, size(e.bytes), when(e.last_used));
            out.note(format!("{verb} {k} ({b}, last used {t})"));
        }
        for k in &rep.skipped {
            out.note(format!("warning: {k} changed while pruning; left as it is"));
        }
        out.note(format!(
            "{verb} {} entries ({}); kept {} ({}); {}",
            rep.removed.len(),
            size(rep.removed_bytes),
            rep.kept,
            size(rep.kept_bytes),
            self.space
        ));
        Ok(())
    }
}

/// What a cache restore never writes over: the working tree's store and
/// databases, those `sp-sync.toml` names and those any snapshot of its
/// store names (audit 23: an entry holding `data/app.db` replaced the live
/// database that only the store's snapshots named, exit 0).
fn cache_protected(opts: &CacheRestoreOptions) -> Vec<PathBuf> {
    let ws = opts
        .place
        .workspace()
        .unwrap_or_else(|_| crate::workspace::Workspace {
            store_dir: opts.place.cwd.join(crate::store::STORE_DIR),
            root: opts.place.cwd.clone(),
            explicit: false,
        });
    let mut out = crate::sources::protected_paths(&ws, None);
    if let Ok(store) = crate::store::Store::open(&ws.store_dir, crate::store::LockMode::Shared) {
        out.extend(crate::sources::named_database_protection(&store, &ws.root));
    }
    // And the tree `--target` lies in, when that is another (audit 26).
    if let Some(t) = &opts.target {
        out.extend(crate::sources::target_protection(
            &opts.place.cwd.join(t),
            &ws.root,
        ));
    }
    out
}
