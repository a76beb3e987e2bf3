//! `sp-sync bundle create/verify/import`, and `pull FILE` for a bundle: parse,
//! call `systemprompt_sync::bundle`, print.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::json;

use systemprompt_sync::bundle::{self, CreateOptions, ImportOptions, ImportReport};
use systemprompt_sync::{LockMode, Store, SyncError};

use super::output::size;
use super::progress::Bar;
use super::{Ctx, open_store};

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

/// Adds `what FILE` as context, or just `what` when the error already names FILE.
fn named<T>(r: systemprompt_sync::Result<T>, what: &str, file: &Path) -> Result<T> {
    r.map_err(|e| {
        let shown = file.display().to_string();
        if e.to_string().contains(&shown) {
            anyhow::Error::new(e).context(what.to_string())
        } else {
            anyhow::Error::new(e).context(format!("{what} {shown}"))
        }
    })
}

fn is_std(p: &Path) -> bool {
    p.as_os_str() == "-"
}

pub fn run(ctx: &Ctx, cmd: BundleCmd) -> Result<i32> {
    match cmd {
        BundleCmd::Create { file, refs, since } => create(ctx, &file, refs, since),
        BundleCmd::Verify { file } => verify(ctx, &file),
        BundleCmd::Import { file, force } => {
            let (_, store) = ctx.open(LockMode::Shared)?;
            let opts = ImportOptions {
                force,
                ..Default::default()
            };
            import(ctx, &store, &file, &opts, "imported")
        }
    }
}

fn create(ctx: &Ctx, file: &Path, refs: Vec<String>, since: Vec<String>) -> Result<i32> {
    let (_, store) = ctx.open(LockMode::Shared)?;
    let opts = CreateOptions { refs, since };
    let bar = Bar::new(ctx.quiet);
    let start = std::time::Instant::now();
    let rep = if is_std(file) {
        if ctx.json {
            return Err(SyncError::Invalid(
                "--json needs a FILE: with `-` the bundle itself goes to standard output".into(),
            )
            .into());
        }
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
        let r = bundle::create(&store, &opts, &mut out, Path::new("standard output"), &bar);
        let r = r.and_then(|r| {
            out.flush()
                .map_err(|e| SyncError::io("writing", "standard output", e))?;
            Ok(r)
        });
        bar.finish();
        r.context("bundle create")?
    } else {
        let path = ctx.cwd.join(file);
        let r = bundle::create_file(&store, &opts, &path, &bar);
        bar.finish();
        named(r, "bundle create", file)?
    };
    if ctx.json {
        let mut v = serde_json::to_value(&rep)?;
        v["file"] = json!(file.display().to_string());
        ctx.print_json(&v)?;
    } else {
        for r in &rep.refs {
            ctx.note(format!("{} {}", r.id.short(), r.name));
        }
        ctx.note(format!(
            "bundle {}: {} objects ({}), {} in {:.2}s{}",
            file.display(),
            rep.objects,
            size(rep.object_bytes),
            size(rep.bytes),
            start.elapsed().as_secs_f64(),
            prerequisites_note(&rep.prerequisites)
        ));
    }
    Ok(0)
}

fn objects(n: u64) -> String {
    if n == 1 {
        "1 object".into()
    } else {
        format!("{n} objects")
    }
}

fn prerequisites_note(p: &[systemprompt_sync::ObjectId]) -> String {
    if p.is_empty() {
        String::new()
    } else {
        let ids: Vec<String> = p.iter().map(|i| i.short()).collect();
        format!("; prerequisites: {}", ids.join(", "))
    }
}

/// The store we are in, if any (verify works outside one).
fn store_here(ctx: &Ctx) -> Result<Option<Store>> {
    let ws = match ctx.workspace() {
        Ok(ws) => ws,
        Err(e) if matches!(e.downcast_ref::<SyncError>(), Some(SyncError::NoStore(_))) => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    Ok(Some(open_store(&ws.store_dir, LockMode::Shared)?))
}

fn verify(ctx: &Ctx, file: &Path) -> Result<i32> {
    let store = store_here(ctx)?;
    let bar = Bar::new(ctx.quiet);
    let r = if is_std(file) {
        bundle::verify(
            std::io::stdin().lock(),
            "standard input",
            store.as_ref(),
            &bar,
        )
    } else {
        let path = ctx.cwd.join(file);
        match std::fs::File::open(&path) {
            Ok(f) => bundle::verify(f, &file.display().to_string(), store.as_ref(), &bar),
            Err(e) => Err(SyncError::io("opening", file, e)),
        }
    };
    bar.finish();
    let rep = named(r, "bundle verify", file)?;
    if ctx.json {
        ctx.print_json(&serde_json::to_value(&rep)?)?;
        return Ok(0);
    }
    println!(
        "{}: ok, {} objects ({}), {}, trailer {}",
        file.display(),
        rep.objects,
        size(rep.object_bytes),
        size(rep.bytes),
        rep.trailer.short()
    );
    for r in &rep.refs {
        println!("ref {} {}", r.id, r.name);
    }
    for p in &rep.prerequisites {
        println!("prerequisite {p}");
    }
    if rep.prerequisites.is_empty() {
        println!("complete: needs no prerequisites");
    } else if rep.checked_in_store {
        println!(
            "complete given its prerequisites: this store holds them and the {} they must provide",
            objects(rep.external_references)
        );
    } else {
        println!(
            "not inside a store: whether the prerequisites provide the {} the bundle references and does not hold was not checked",
            objects(rep.external_references)
        );
    }
    Ok(0)
}

/// Imports FILE (or standard input) into `store` and prints like pull.
fn import(ctx: &Ctx, store: &Store, file: &Path, opts: &ImportOptions, verb: &str) -> Result<i32> {
    let start = std::time::Instant::now();
    let rep = import_only(ctx, store, file, opts)?;
    report(ctx, &rep, file, verb, start)?;
    Ok(0)
}

fn import_only(
    ctx: &Ctx,
    store: &Store,
    file: &Path,
    opts: &ImportOptions,
) -> Result<ImportReport> {
    let bar = Bar::new(ctx.quiet);
    let r = if is_std(file) {
        bundle::import(store, std::io::stdin().lock(), "standard input", opts, &bar)
    } else {
        let path = ctx.cwd.join(file);
        match std::fs::File::open(&path) {
            Ok(f) => bundle::import(store, f, &file.display().to_string(), opts, &bar),
            Err(e) => Err(SyncError::io("opening", file, e)),
        }
    };
    bar.finish();
    named(r, "bundle import", file)
}

fn report(
    ctx: &Ctx,
    rep: &ImportReport,
    file: &Path,
    verb: &str,
    start: std::time::Instant,
) -> Result<()> {
    for u in &rep.refs {
        if let Some(w) = &u.warning {
            eprintln!("warning: {w}");
        }
    }
    if ctx.json {
        let first = rep.refs.first();
        ctx.print_json(&json!({
            "ref": first.map(|x| x.name.clone()),
            "id": first.map(|x| x.id),
            "refs": rep.refs,
            "objects_received": rep.objects,
            "object_bytes_received": rep.object_bytes,
            "bytes_received": rep.bytes,
            "stored_objects": rep.stored_objects,
            "stored_bytes": rep.stored_bytes,
            "prerequisites": rep.prerequisites,
        }))?;
    } else {
        for u in rep.refs.iter().filter(|u| u.updated) {
            ctx.note(super::output::ref_move(u.old, u.id, &u.name));
        }
        ctx.note(format!(
            "{verb} {} objects ({}, {} new) from {} in {:.2}s",
            rep.objects,
            size(rep.object_bytes),
            rep.stored_objects,
            file.display(),
            start.elapsed().as_secs_f64(),
        ));
    }
    Ok(())
}

/// `pull FILE [REF...] [--restore TARGET]` when FILE is a bundle: an
/// import of those refs (default: main), fast-forward only; `remote_name`
/// when FILE came from a configured remote (then `remotes/NAME/REF` records
/// what it carries).
pub fn pull(
    ctx: &Ctx,
    store: &Store,
    remote_name: Option<String>,
    file: &Path,
    refs: Vec<String>,
    restore: Option<PathBuf>,
) -> Result<i32> {
    let opts = ImportOptions {
        force: false,
        refs: if refs.is_empty() {
            vec!["main".to_string()]
        } else {
            refs
        },
        remote_name,
    };
    let start = std::time::Instant::now();
    let rep = import_only(ctx, store, file, &opts)?;
    if let (Some(target), Some(u)) = (&restore, rep.refs.first()) {
        let target = ctx.cwd.join(target);
        let bar = Bar::new(ctx.quiet);
        let res = systemprompt_sync::restore_snapshot(
            store,
            &u.id.to_hex(),
            &target,
            &systemprompt_sync::RestoreOptions::default(),
            &bar,
        );
        bar.finish();
        res.with_context(|| format!("restore into {}", target.display()))?;
    }
    report(ctx, &rep, file, "pulled", start)?;
    Ok(0)
}
