//! `sp-sync bundle create|verify|import`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use systemprompt_sync::SyncError;
use systemprompt_sync::commands::{self as cmds, Printable};

use super::Ctx;
use super::progress::Bar;

#[derive(Subcommand, Debug)]
pub enum BundleCmd {
    /// Write REFs (default: main) and what they reach into one self-verifying file.
    Create {
        /// The bundle to write (`-`: standard output).
        file: PathBuf,
        /// Refs to carry (default: main).
        refs: Vec<String>,
        /// Leave out everything this snapshot reaches: the importing store must hold it (repeatable).
        #[arg(long, value_name = "SNAP")]
        since: Vec<String>,
    },
    /// Check a bundle: structure, every object, trailer, completeness; inside a
    /// store, also that the store holds its prerequisites.
    Verify {
        /// The bundle (`-`: standard input).
        file: PathBuf,
    },
    /// Store a bundle's objects (each verified), then create or fast-forward its refs.
    Import {
        /// The bundle (`-`: standard input).
        file: PathBuf,
        /// Move refs even when that is not a fast-forward.
        #[arg(long)]
        force: bool,
    },
}

pub fn run(ctx: &Ctx, cmd: BundleCmd, bar: &Bar) -> Result<Box<dyn Printable>> {
    let place = ctx.place.clone();
    Ok(match cmd {
        BundleCmd::Create { file, refs, since } => {
            if ctx.json && file.as_os_str() == "-" {
                let why = "--json needs a FILE: with `-` the bundle itself goes to standard output";
                return Err(SyncError::Invalid(why.into()).into());
            }
            let o = cmds::BundleCreateOptions {
                place,
                file,
                refs,
                since,
            };
            Box::new(cmds::bundle_create(&o, bar)?)
        }
        BundleCmd::Verify { file } => Box::new(cmds::bundle_verify(
            &cmds::BundleVerifyOptions { place, file },
            bar,
        )?),
        BundleCmd::Import { file, force } => {
            let o = cmds::BundleImportOptions { place, file, force };
            Box::new(cmds::bundle_import(&o, bar)?)
        }
    })
}
