//! `sp-sync cache save|restore|list|prune`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use systemprompt_sync::commands::{self as cmds, Place, Printable};

use super::progress::Bar;

#[derive(Subcommand, Debug)]
pub enum CacheCmd {
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
    },
}

pub fn run(place: Place, cmd: CacheCmd, bar: &Bar) -> Result<Box<dyn Printable>> {
    Ok(match cmd {
        CacheCmd::Save {
            key,
            paths,
            remote,
            exclude,
        } => {
            let o = cmds::CacheSaveOptions {
                place,
                key,
                paths,
                remote,
                excludes: exclude,
            };
            Box::new(cmds::cache_save(&o, bar)?)
        }
        CacheCmd::Restore {
            key,
            restore_keys,
            remote,
            target,
            fail_on_miss,
        } => {
            let o = cmds::CacheRestoreOptions {
                place,
                key,
                restore_keys,
                remote,
                target,
                fail_on_miss,
            };
            Box::new(cmds::cache_restore(&o, bar)?)
        }
        CacheCmd::List { remote } => Box::new(cmds::cache_list(&place, remote.as_deref())?),
        CacheCmd::Prune {
            max_size,
            older_than,
            dry_run,
            remote,
        } => {
            let o = cmds::CachePruneOptions {
                place,
                max_size,
                older_than,
                dry_run,
                remote,
            };
            Box::new(cmds::cache_prune(&o, bar)?)
        }
    })
}
