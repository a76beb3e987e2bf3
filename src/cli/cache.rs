//! `sp-sync cache save|restore|list|prune`.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use systemprompt_sync::commands::*;

use super::progress::Bar;

#[derive(Subcommand, Debug)]
pub enum CacheCmd {
    /// Save PATH... (relative to here) as entry KEY; a key that exists is left as it is.
    Save(SaveArgs),
    /// Restore entry KEY, else the newest entry matching a --restore-key prefix.
    Restore(RestoreArgs),
    /// Every entry: key, size, when saved and last restored.
    List {
        #[arg(long, value_name = "R")]
        remote: Option<String>,
    },
    /// Remove entries, least recently restored (or saved) first.
    Prune(PruneArgs),
}

#[derive(Args, Debug)]
pub struct SaveArgs {
    key: String,
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// The cache remote: a name, a path or a URL (default: $SP_SYNC_CACHE_REMOTE, else the store's).
    #[arg(long, value_name = "R")]
    remote: Option<String>,
    /// Leave out paths matching this gitignore-style pattern (repeatable).
    #[arg(long = "exclude", value_name = "GLOB")]
    excludes: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    key: String,
    /// Take only an entry that saved exactly these paths (as `cache save`
    /// was given them), and write only them; none: any entry.
    #[arg(value_name = "PATH")]
    paths: Vec<PathBuf>,
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
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Remove entries until the rest's file bytes fit (e.g. 10GiB).
    #[arg(long, value_name = "SIZE", required_unless_present = "older_than")]
    #[arg(conflicts_with = "older_than")]
    max_size: Option<String>,
    /// Remove entries not saved or restored for DAYS days.
    #[arg(long, value_name = "DAYS")]
    older_than: Option<u64>,
    /// Say what would be removed; remove nothing.
    #[arg(long)]
    dry_run: bool,
    #[arg(long, value_name = "R")]
    remote: Option<String>,
}

options!(SaveArgs => CacheSaveOptions { key, paths, remote, excludes });
options!(RestoreArgs => CacheRestoreOptions { key, paths, restore_keys, remote, target, fail_on_miss });
options!(PruneArgs => CachePruneOptions { max_size, older_than, dry_run, remote });

pub fn run(place: Place, cmd: CacheCmd, bar: &Bar) -> Result<Box<dyn Printable>> {
    Ok(match cmd {
        CacheCmd::Save(a) => Box::new(cache_save(&a.options(place), bar)?),
        CacheCmd::Restore(a) => Box::new(cache_restore(&a.options(place), bar)?),
        CacheCmd::List { remote } => Box::new(cache_list(&place, remote.as_deref())?),
        CacheCmd::Prune(a) => Box::new(cache_prune(&a.options(place), bar)?),
    })
}
