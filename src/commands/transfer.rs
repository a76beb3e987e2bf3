//! `sp-sync push`, `pull` and `serve`.

use std::path::PathBuf;
use std::time::Instant;

use serde_json::json;

use super::bundle::{BundleImportReport, import_file};
use super::fmt::{ref_move, size};
use super::{Human, Place, Render, json_via, or_main};
use crate::bundle::ImportOptions;
use crate::deploy::DeployEvents;
use crate::error::{Context, Result};
use crate::progress::Progress;
use crate::remote::config::LocalConfig;
use crate::remote::{Credentials, Location};
use crate::store::{LockMode, Store};
use crate::transfer::TransferReport;

pub use crate::server::{DEFAULT_MAX_BODY, ServeOptions};

/// `sp-sync push [REMOTE] [REF...] [--force] [--deploy]`.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// Where.
    pub place: Place,
    /// A remote name, a path or a URL (default: the only remote, or origin).
    pub remote: Option<String>,
    /// Refs to push (empty: main).
    pub refs: Vec<String>,
    /// Move the remote's refs even when that drops history.
    pub force: bool,
    /// Then run the deploy targets that are due, here.
    pub deploy: bool,
}

/// `sp-sync pull [REMOTE] [REF...] [--restore TARGET]`.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Where.
    pub place: Place,
    /// A remote name, a path, a bundle file or a URL.
    pub remote: Option<String>,
    /// Refs to pull (empty: main).
    pub refs: Vec<String>,
    /// Then restore the pulled snapshot into this directory.
    pub restore: Option<PathBuf>,
}

/// What a push or pull moved. Its JSON: `ref`, `id`, `refs`, `requests`,
/// and `objects_sent`/`bytes_sent`/`object_bytes_sent` (push, with
/// `deploys` under `--deploy`) or the `…_received` counts (pull).
#[derive(Debug)]
pub struct TransferCmdReport {
    /// The library's report.
    pub report: TransferReport,
    /// A push (else a pull).
    pub sent: bool,
    /// The remote, for messages.
    pub remote: String,
    /// Seconds it took.
    pub seconds: f64,
    /// The deploys `push --deploy` ran (as their JSON).
    pub deploys: Option<Vec<serde_json::Value>>,
}

/// Resolves REMOTE (name, path or URL; default: the only remote or origin).
fn resolve_remote(
    store: &Store,
    spec: Option<&str>,
) -> Result<(Option<String>, Location, Credentials)> {
    let cfg = LocalConfig::load(store)?;
    let spec = match spec {
        Some(s) => s.to_string(),
        None => cfg.default_remote()?,
    };
    cfg.resolve(&spec)
}

/// Sends what the remote lacks, then moves its refs; with `deploy`, runs
/// the due deploy targets of the pushed main (else the first ref) here.
pub fn push(
    opts: &PushOptions,
    progress: &dyn Progress,
    events: &mut dyn DeployEvents,
) -> Result<TransferCmdReport> {
    let (ws, store) = opts.place.open(LockMode::Shared)?;
    let (name, loc, creds) = resolve_remote(&store, opts.remote.as_deref())?;
    let r = crate::remote::open(&loc, &creds, true)?;
    let refs = or_main(&opts.refs);
    let start = Instant::now();
    let report = crate::transfer::push(&store, &*r, name.as_deref(), &refs, opts.force, progress)
        .context_with(|| format!("push to {}", r.describe()))?;
    let seconds = start.elapsed().as_secs_f64();
    progress.finish();
    let pushed = report
        .refs
        .iter()
        .find(|u| u.name == "main")
        .or(report.refs.first());
    let deploys = match pushed {
        Some(u) if opts.deploy => Some(super::deploy::after_push(&ws, &store, u.id, events)?),
        _ => None,
    };
    Ok(TransferCmdReport {
        report,
        sent: true,
        remote: r.describe(),
        seconds,
        deploys,
    })
}

/// What `pull` did: a transfer from a remote, or a bundle's import; and
/// the paths `--restore` left as they are.
#[derive(Debug)]
pub struct PullReport {
    /// The transfer or the import.
    pub pulled: Pulled,
    /// Entries `--restore` did not write over (a database, the store):
    /// exit 3, as `restore`.
    pub restore_protected: Vec<PathBuf>,
}

/// Where a pull came from.
#[derive(Debug)]
pub enum Pulled {
    /// From a store or server.
    Remote(TransferCmdReport),
    /// From a bundle file.
    Bundle(BundleImportReport),
}

/// Fetches what is missing, records `remotes/REMOTE/REF` and fast-forwards
/// local refs; a bundle file is imported (fast-forward only). Then restores
/// the first ref into `opts.restore`.
pub fn pull(opts: &PullOptions, progress: &dyn Progress) -> Result<PullReport> {
    let (ws, store) = opts.place.open(LockMode::Shared)?;
    let (name, loc, creds) = resolve_remote(&store, opts.remote.as_deref())?;
    let refs = or_main(&opts.refs);
    let start = Instant::now();
    let restore = |u: &crate::transfer::RefUpdate| -> Result<Vec<PathBuf>> {
        let Some(target) = &opts.restore else {
            return Ok(Vec::new());
        };
        // A local ref that did not move (it has diverged) is what the
        // working tree follows: the remote's snapshot is not written over it.
        if !u.updated {
            return Err(crate::error::SyncError::Invalid(format!(
                "{} was not moved ({}); nothing restored (restore the remote's snapshot {} by its id to take it)",
                u.name,
                u.warning.as_deref().unwrap_or("not a fast-forward"),
                u.id.short()
            )));
        }
        let id = u.id;
        let target = opts.place.cwd.join(target);
        // As `restore` writes: never over this store or a database.
        let snap = crate::names::load_snapshot(&store, &id)?;
        let mut ropts = crate::checkout::restore_options(&ws, &snap, false, false);
        // (The databases any snapshot of this store names, and those of
        // the working tree the target lies in; audit 26: a database only
        // this store's snapshots named was written over, exit 0.)
        ropts
            .protect
            .extend(crate::sources::named_database_protection(&store, &ws.root));
        ropts
            .protect
            .extend(crate::sources::target_protection(&target, &ws.root));
        let r = crate::restore_snapshot(&store, &id.to_hex(), &target, &ropts, progress)
            .context_with(|| format!("restore into {}", target.display()))?;
        Ok(r.protected)
    };
    if let Location::Path(p) = &loc
        && crate::bundle::is_bundle(&opts.place.cwd.join(p))
    {
        let iopts = ImportOptions {
            force: false,
            refs,
            remote_name: name,
        };
        let report = import_file(&store, &opts.place.cwd, p, &iopts, progress)?;
        let restore_protected = match report.refs.first() {
            Some(u) => restore(u)?,
            None => Vec::new(),
        };
        return Ok(PullReport {
            pulled: Pulled::Bundle(BundleImportReport {
                report,
                file: p.clone(),
                verb: "pulled",
                seconds: start.elapsed().as_secs_f64(),
            }),
            restore_protected,
        });
    }
    let r = crate::remote::open(&loc, &creds, false)?;
    let report = crate::transfer::pull(&store, &*r, name.as_deref(), &refs, progress)
        .context_with(|| format!("pull from {}", r.describe()))?;
    let restore_protected = match report.refs.first() {
        Some(u) => restore(u)?,
        None => Vec::new(),
    };
    Ok(PullReport {
        pulled: Pulled::Remote(TransferCmdReport {
            report,
            sent: false,
            remote: r.describe(),
            seconds: start.elapsed().as_secs_f64(),
            deploys: None,
        }),
        restore_protected,
    })
}

json_via!(TransferCmdReport, |t| {
    let r = &t.report;
    let first = r.refs.first();
    let mut v = json!({
        "ref": first.map(|x| x.name.clone()),
        "id": first.map(|x| x.id),
        "refs": r.refs,
        "requests": r.traffic.requests,
    });
    if t.sent {
        v["objects_sent"] = json!(r.objects);
        v["bytes_sent"] = json!(r.traffic.bytes_sent);
        v["object_bytes_sent"] = json!(r.object_bytes);
    } else {
        v["objects_received"] = json!(r.objects);
        v["bytes_received"] = json!(r.traffic.bytes_received);
        v["object_bytes_received"] = json!(r.object_bytes);
    }
    if let Some(d) = &t.deploys {
        v["deploys"] = json!(d);
    }
    v
});

impl Render for TransferCmdReport {
    fn stderr(&self) -> Vec<String> {
        let refs = self.report.refs.iter().filter(|_| !self.sent);
        refs.filter_map(|u| u.warning.as_ref().map(|w| format!("warning: {w}")))
            .collect()
    }

    fn human(&self, out: &mut Human<'_>) -> Result<()> {
        let r = &self.report;
        if self.sent {
            for u in &r.refs {
                out.note(ref_move(u.old, u.id, &u.name, u.forced));
            }
        }
        let (verb, dir, traffic) = if self.sent {
            ("pushed", "to", r.traffic.bytes_sent)
        } else {
            ("pulled", "from", r.traffic.bytes_received)
        };
        let moved = if self.sent { "sent" } else { "received" };
        out.note(format!(
            "{verb} {} objects ({}) {dir} {} in {:.2}s; {} {moved} in {} requests",
            r.objects,
            size(r.object_bytes),
            self.remote,
            self.seconds,
            size(traffic),
            r.traffic.requests
        ));
        Ok(())
    }
}

json_via!(PullReport, |p| {
    let mut v = match &p.pulled {
        Pulled::Remote(r) => super::val(r),
        Pulled::Bundle(b) => super::val(b),
    };
    if !p.restore_protected.is_empty() {
        v["protected"] = json!(p.restore_protected);
    }
    v
});

impl Render for PullReport {
    fn stderr(&self) -> Vec<String> {
        match &self.pulled {
            Pulled::Remote(r) => r.stderr(),
            Pulled::Bundle(b) => b.stderr(),
        }
    }

    fn human(&self, out: &mut Human<'_>) -> Result<()> {
        match &self.pulled {
            Pulled::Remote(r) => r.human(out),
            Pulled::Bundle(b) => b.human(out),
        }
    }

    /// 3 when `--restore` left entries as they are (a warning names each),
    /// as `restore` does.
    fn status(&self) -> i32 {
        if self.restore_protected.is_empty() {
            0
        } else {
            3
        }
    }
}

/// Runs the HTTP remote until stopped; `on_listen` hears the address.
pub fn serve(opts: &ServeOptions, on_listen: impl FnOnce(std::net::SocketAddr)) -> Result<()> {
    crate::server::serve(opts, on_listen)
}
