//! `sp-sync bundle create|verify|import`.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use systemprompt_sync::SyncError;
use systemprompt_sync::commands::*;

use super::Ctx;
use super::progress::Bar;

#[derive(Subcommand, Debug)]
pub enum BundleCmd {
    /// Write REFs (default: main) and what they reach into one self-verifying file.
    Create(CreateArgs),
    /// Check a bundle: structure, objects, trailer, completeness (and prerequisites, in a store).
    Verify(VerifyArgs),
    /// Store a bundle's objects (each verified), then create or fast-forward its refs.
    Import(ImportArgs),
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The bundle to write (`-`: standard output).
    file: PathBuf,
    /// Refs to carry (default: main).
    refs: Vec<String>,
    /// Leave out everything this snapshot reaches: the importing store must hold it (repeatable).
    #[arg(long, value_name = "SNAP")]
    since: Vec<String>,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The bundle (`-`: standard input).
    file: PathBuf,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The bundle (`-`: standard input).
    file: PathBuf,
    /// Move refs even when that is not a fast-forward.
    #[arg(long)]
    force: bool,
}

options!(CreateArgs => BundleCreateOptions { file, refs, since });
options!(VerifyArgs => BundleVerifyOptions { file });
options!(ImportArgs => BundleImportOptions { file, force });

pub fn run(ctx: &Ctx, cmd: BundleCmd, bar: &Bar) -> Result<Box<dyn Printable>> {
    let place = ctx.place.clone();
    Ok(match cmd {
        BundleCmd::Create(a) if ctx.json && a.file.as_os_str() == "-" => {
            let why = "--json needs a FILE: with `-` the bundle itself goes to standard output";
            return Err(SyncError::Invalid(why.into()).into());
        }
        BundleCmd::Create(a) => Box::new(bundle_create(&a.options(place), bar)?),
        BundleCmd::Verify(a) => Box::new(bundle_verify(&a.options(place), bar)?),
        BundleCmd::Import(a) => Box::new(bundle_import(&a.options(place), bar)?),
    })
}
