//! `sp-sync cache save/restore/list/prune`: parse, call `systemprompt_sync::cache`, print.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use clap::Subcommand;
use serde_json::json;

use systemprompt_sync::cache::{self, Outcome, PruneRule};
use systemprompt_sync::remote::config::{LocalConfig, is_remote_name};
use systemprompt_sync::remote::{self, Location, Remote};
use systemprompt_sync::{LockMode, SyncError};

use super::Ctx;
use super::output::size;
use super::progress::Bar;

#[derive(Subcommand, Debug)]
pub(super) enum CacheCmd {
    /// Save PATH... (relative to here) as entry KEY; a key that exists is left as it is.
    Save {
        key: String,
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// The cache remote: a name, a path or a URL (default: $SP_SYNC_CACHE_REMOTE,
        /// else the store's default remote).
        #[arg(long, value_name = "R")]
        remote: Option<String>,
        /// Leave out paths matching this gitignore-style pattern (repeatable).
        #[arg(long, value_name = "GLOB")]
        exclude: Vec<String>,
    },
    /// Restore entry KEY, else the newest entry matching a --restore-key prefix.
    Restore {
        key: String,
        /// A key prefix to fall back to, tried in order (repeatable).
        #[arg(long = "restore-key", value_name = "PREFIX")]
        restore_keys: Vec<String>,
        /// The cache remote (as for save).
        #[arg(long, value_name = "R")]
        remote: Option<String>,
        /// Write the saved paths below DIR instead of here.
        #[arg(long, value_name = "DIR")]
        target: Option<PathBuf>,
        /// Exit 1 when nothing matches.
        #[arg(long)]
        fail_on_miss: bool,
    },
    /// Every entry: key, size, when saved and last restored.
    List {
        #[arg(long, value_name = "R")]
        remote: Option<String>,
    },
    /// Remove entries, least recently restored (or saved) first.
    Prune {
        /// Remove entries until the rest's file bytes fit (e.g. 10GiB).
        #[arg(
            long,
            value_name = "SIZE",
            required_unless_present = "older_than",
            conflicts_with = "older_than"
        )]
        max_size: Option<String>,
        /// Remove entries not saved or restored for DAYS days.
        #[arg(long, value_name = "DAYS")]
        older_than: Option<u64>,
        /// Say what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long, value_name = "R")]
        remote: Option<String>,
    },
}

/// The cache remote: `--remote`, else `$SP_SYNC_CACHE_REMOTE`, else the
/// default remote of the store here (when there is one). A bare word is a
/// remote name, looked up in the store here.
fn open_remote(ctx: &Ctx, spec: Option<String>, create: bool) -> Result<Arc<dyn Remote>> {
    let spec = spec.or_else(|| {
        std::env::var("SP_SYNC_CACHE_REMOTE")
            .ok()
            .filter(|s| !s.is_empty())
    });
    let needs_store = spec.as_deref().is_none_or(is_remote_name);
    let (loc, creds) = if needs_store {
        let (_, store) = ctx.open(LockMode::Shared).map_err(|e| match &spec {
            Some(name) => anyhow!(
                "unknown remote {name:?}: no store here to look it up in (give a path or URL): {e}"
            ),
            None => anyhow!(
                "no cache remote: give --remote R or set SP_SYNC_CACHE_REMOTE (no store here to take a default from)"
            ),
        })?;
        let cfg = LocalConfig::load(&store)?;
        let name = match spec {
            Some(s) => s,
            None => cfg.default_remote().map_err(|e| {
                anyhow!("no cache remote: give --remote R or set SP_SYNC_CACHE_REMOTE ({e})")
            })?,
        };
        let (_, loc, creds) = cfg.resolve(&name)?;
        (loc, creds)
    } else {
        let s = spec.unwrap_or_default();
        (Location::parse(&s)?, Default::default())
    };
    Ok(remote::open(&loc, &creds, create)?)
}

/// The local store objects pass through: `$SP_SYNC_CACHE_STORE`, else the
/// per-user one.
fn local_store() -> Result<systemprompt_sync::Store> {
    let dir = std::env::var_os("SP_SYNC_CACHE_STORE")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(cache::default_local_dir);
    cache::open_local(&dir).with_context(|| format!("the local cache store {}", dir.display()))
}

fn when(secs: i64) -> String {
    super::output::rfc3339(systemprompt_sync::Timestamp { secs, nanos: 0 })
}

pub(super) fn run(ctx: &Ctx, cmd: CacheCmd) -> Result<i32> {
    match cmd {
        CacheCmd::Save {
            key,
            paths,
            remote,
            exclude,
        } => {
            cache::validate_key(&key)?;
            let r = open_remote(ctx, remote, true)?;
            let local = local_store()?;
            let bar = Bar::new(ctx.quiet);
            let start = std::time::Instant::now();
            let rep = cache::save(
                &local,
                &*r,
                &cache::SaveOptions {
                    key: key.clone(),
                    paths,
                    cwd: ctx.cwd.clone(),
                    excludes: exclude,
                },
                &bar,
            );
            bar.finish();
            let rep = rep.with_context(|| format!("cache save {key} to {}", r.describe()))?;
            if ctx.json {
                ctx.print_json(&serde_json::to_value(&rep)?)?;
            } else if rep.saved {
                ctx.note(format!(
                    "saved {key}: {} files ({}); sent {} objects ({}) to {} in {:.2}s",
                    rep.files,
                    size(rep.bytes),
                    rep.objects_sent,
                    size(rep.bytes_sent),
                    r.describe(),
                    start.elapsed().as_secs_f64()
                ));
            } else {
                ctx.note(format!(
                    "cache entry {key} already exists on {}; left as it is (a key is immutable)",
                    r.describe()
                ));
            }
            Ok(0)
        }
        CacheCmd::Restore {
            key,
            restore_keys,
            remote,
            target,
            fail_on_miss,
        } => {
            cache::validate_key(&key)?;
            for p in &restore_keys {
                cache::validate_prefix(p)?;
            }
            let target = match target {
                Some(t) => ctx.cwd.join(t),
                None => ctx.cwd.clone(),
            };
            let opts = cache::RestoreCacheOptions {
                key: key.clone(),
                restore_keys,
                target,
                github_output: std::env::var_os("GITHUB_OUTPUT")
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from),
                no_record: false,
            };
            let start = std::time::Instant::now();
            // A restore never creates a store: a path or S3 prefix that holds
            // none yet (the first CI run) is a miss.
            let rep = match open_remote(ctx, remote, false) {
                Ok(r) => {
                    let local = local_store()?;
                    let bar = Bar::new(ctx.quiet);
                    let rep = cache::restore(&local, &*r, &opts, &bar);
                    bar.finish();
                    rep.with_context(|| format!("cache restore {key} from {}", r.describe()))?
                }
                Err(e)
                    if matches!(
                        e.downcast_ref::<SyncError>(),
                        Some(SyncError::NotFound(m)) if m.starts_with("no sp-sync store at")
                    ) =>
                {
                    cache::restore_from_empty(&opts)?
                }
                Err(e) => return Err(e),
            };
            if rep.result == Outcome::Miss && fail_on_miss {
                return Err(anyhow!("cache miss: no entry for {key} (--fail-on-miss)"));
            }
            if ctx.json {
                ctx.print_json(&serde_json::to_value(&rep)?)?;
            } else {
                match rep.result {
                    Outcome::Miss => ctx.note(format!("cache miss: no entry for {key}")),
                    o => ctx.note(format!(
                        "cache {}: restored {} ({}: {} files, {}; {} unchanged) in {:.2}s, {} received",
                        if o == Outcome::Hit { "hit" } else { "partial hit" },
                        rep.key,
                        rep.paths.join(", "),
                        rep.files,
                        size(rep.bytes),
                        rep.unchanged,
                        start.elapsed().as_secs_f64(),
                        size(rep.bytes_received),
                    )),
                }
            }
            Ok(0)
        }
        CacheCmd::List { remote } => {
            let r = open_remote(ctx, remote, false)?;
            let entries =
                cache::list(&*r).with_context(|| format!("cache list {}", r.describe()))?;
            if ctx.json {
                ctx.print_json(&serde_json::to_value(&entries)?)?;
            } else {
                let mut out = std::io::stdout().lock();
                for e in &entries {
                    writeln!(
                        out,
                        "{}\t{}\t{} files\tsaved {}\t{}",
                        e.key,
                        size(e.bytes),
                        e.files,
                        when(e.saved),
                        e.restored
                            .map(|t| format!("restored {}", when(t)))
                            .unwrap_or_else(|| "never restored".into())
                    )?;
                }
            }
            Ok(0)
        }
        CacheCmd::Prune {
            max_size,
            older_than,
            dry_run,
            remote,
        } => {
            let rule = match (max_size, older_than) {
                (Some(s), _) => PruneRule::MaxSize(
                    systemprompt_sync::server::parse_size(&s)
                        .ok_or_else(|| anyhow!("--max-size {s:?}: expected a size like 10GiB"))?,
                ),
                (None, Some(d)) => PruneRule::OlderThanDays(d),
                (None, None) => return Err(anyhow!("give --max-size SIZE or --older-than DAYS")),
            };
            let r = open_remote(ctx, remote, false)?;
            let now = systemprompt_sync::snapshot::now().secs;
            let bar = Bar::new(ctx.quiet);
            let rep = cache::prune(&*r, rule, now, dry_run, &bar);
            bar.finish();
            let rep = rep.with_context(|| format!("cache prune {}", r.describe()))?;
            if ctx.json {
                let mut v = serde_json::to_value(&rep)?;
                v["dry_run"] = json!(dry_run);
                ctx.print_json(&v)?;
            } else {
                for e in &rep.removed {
                    ctx.note(format!(
                        "{} {} ({}, last used {})",
                        if dry_run { "would remove" } else { "removed" },
                        e.key,
                        size(e.bytes),
                        when(e.last_used)
                    ));
                }
                for k in &rep.skipped {
                    ctx.note(format!("warning: {k} changed while pruning; left as it is"));
                }
                ctx.note(format!(
                    "{} {} entries ({}); kept {} ({}); the space returns at the remote's next gc",
                    if dry_run { "would remove" } else { "removed" },
                    rep.removed.len(),
                    size(rep.removed_bytes),
                    rep.kept,
                    size(rep.kept_bytes)
                ));
            }
            Ok(0)
        }
    }
}
