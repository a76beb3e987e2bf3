//! `sp-sync deploy`'s arguments.

use systemprompt_sync::commands::{DeployCmdOptions, Place};

/// `sp-sync deploy`'s arguments.
#[derive(clap::Args, Debug)]
pub struct DeployArgs {
    /// The target (`[deploy.TARGET]` in sp-sync.toml); default: every target.
    pub target: Option<String>,
    /// The snapshot to deploy (default: main), reading sp-sync.toml from it.
    #[arg(long, value_name = "SNAP")]
    pub snapshot: Option<String>,
    /// Print the plan and whether each target is due; run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Run even when the watched paths did not change.
    #[arg(long)]
    pub force: bool,
    /// List every target and whether it is due.
    #[arg(long, conflicts_with_all = ["dry_run", "force", "target"])]
    pub list: bool,
}

options!(DeployArgs => DeployCmdOptions { target, snapshot, dry_run, force, list });
