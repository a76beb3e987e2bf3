//! `sp-sync deploy`, and the deploys of `push --deploy`.

use std::io::Write;

use serde_json::json;

use super::{Human, Place, Render, json_via};
use crate::deploy::{
    ConfigSource, DeployEvents, DeployOptions, DeployReport, StepLine, TargetStatus,
};
use crate::error::{Result, SyncError};
use crate::id::ObjectId;
use crate::progress::Progress;
use crate::store::{LockMode, Store};
use crate::workspace::{PROJECT_FILE, Workspace};

/// Deploy events on the terminal: step output on standard output (standard
/// error under `--json`, which keeps standard output for the report), notes
/// on standard error unless quiet.
#[derive(Debug, Clone, Copy, Default)]
pub struct Console {
    /// Standard output holds the JSON report.
    pub json: bool,
    /// No notes.
    pub quiet: bool,
}

impl DeployEvents for Console {
    fn line(&mut self, l: &StepLine<'_>) {
        let text = format!("[{}/{}] {}\n", l.target, l.step, l.line);
        // A closed stdout must not stop the deploy.
        if self.json {
            let _ = std::io::stderr().lock().write_all(text.as_bytes());
        } else {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        }
    }

    fn step_start(&mut self, target: &str, index: usize, name: &str, command: &str) {
        if !self.json {
            self.note(&format!(
                "deploy {target}: step {index} ({name}): {command}"
            ));
        }
    }

    fn waiting(&mut self, target: &str) {
        self.note(&format!(
            "deploy {target}: another deploy of {target} is running; waiting for it to finish"
        ));
    }

    fn note(&mut self, text: &str) {
        if !self.quiet {
            eprintln!("{text}");
        }
    }
}

/// `sp-sync deploy [TARGET] [--snapshot SNAP] [--dry-run] [--force] [--list]`.
#[derive(Debug, Clone, Default)]
pub struct DeployCmdOptions {
    /// Where.
    pub place: Place,
    /// The target; `None`: every target.
    pub target: Option<String>,
    /// The snapshot to deploy (default: main).
    pub snapshot: Option<String>,
    /// Print the plan; run nothing.
    pub dry_run: bool,
    /// Run even when not due.
    pub force: bool,
    /// List every target and whether it is due.
    pub list: bool,
}

/// What `deploy` found or did. Its JSON: one object per target (an array,
/// or the object alone when one TARGET was named).
#[derive(Debug)]
pub enum DeployCmdReport {
    /// `--list` or `--dry-run`: each target's status.
    Status {
        /// Each target.
        statuses: Vec<TargetStatus>,
        /// Where the targets came from.
        config: ConfigSource,
        /// `--list` (else `--dry-run`).
        list: bool,
        /// `--force`.
        force: bool,
        /// One TARGET was named.
        single: bool,
    },
    /// The deploys run (or found not due).
    Ran {
        /// Each target.
        reports: Vec<DeployReport>,
        /// One TARGET was named.
        single: bool,
    },
}

fn config_note(
    events: &mut dyn DeployEvents,
    ws: &Workspace,
    source: ConfigSource,
    snap: &ObjectId,
) {
    if source == ConfigSource::WorkingTree {
        events.note(&format!(
            "deploy: snapshot {} holds no {PROJECT_FILE}; using {}",
            snap.short(),
            ws.root.join(PROJECT_FILE).display()
        ));
    }
}

fn no_targets(config: &ConfigSource) -> SyncError {
    SyncError::NotFound(format!("no [deploy.NAME] target in {}", config.describe()))
}

/// Runs (or, with `--list`/`--dry-run`, reports on) the deploy targets.
pub fn deploy(
    opts: &DeployCmdOptions,
    progress: &dyn Progress,
    events: &mut dyn DeployEvents,
) -> Result<DeployCmdReport> {
    let (ws, store) = opts.place.open(LockMode::Shared)?;
    let dopts = DeployOptions {
        snapshot: opts.snapshot.clone(),
        targets: opts.target.iter().cloned().collect(),
        dry_run: opts.dry_run,
        force: opts.force,
        fallback_root: Some(ws.root.clone()),
        lock_dir: None,
    };
    let single = opts.target.is_some();
    if opts.list || opts.dry_run {
        let (plan, statuses) = crate::deploy::status(&store, &dopts)?;
        config_note(events, &ws, plan.config, &plan.snapshot);
        if statuses.is_empty() {
            return Err(no_targets(&plan.config));
        }
        return Ok(DeployCmdReport::Status {
            statuses,
            config: plan.config,
            list: opts.list,
            force: opts.force,
            single,
        });
    }
    let (plan, _) = crate::deploy::plan(&store, &dopts)?;
    config_note(events, &ws, plan.config, &plan.snapshot);
    if plan.targets.is_empty() {
        return Err(no_targets(&plan.config));
    }
    let reports = run_deploys(&store, &dopts, progress, events)?;
    Ok(DeployCmdReport::Ran { reports, single })
}

/// Runs the deploys, a note per target as it finishes.
fn run_deploys(
    store: &Store,
    opts: &DeployOptions,
    progress: &dyn Progress,
    events: &mut dyn DeployEvents,
) -> Result<Vec<DeployReport>> {
    let reports = crate::deploy::deploy(store, opts, progress, &mut *events)?;
    for r in &reports {
        if r.ran {
            events.note(&format!(
                "deployed {} (snapshot {}, watched {}): {} steps in {:.1}s; deploy/{} moved",
                r.target,
                r.snapshot.short(),
                r.watched_hash.short(),
                r.steps.len(),
                r.seconds,
                r.target
            ));
        } else {
            let last = r.previous.as_ref().map(|l| l.snapshot.short());
            events.note(&format!(
                "deploy {}: not due; what it watches is unchanged since snapshot {} (--force runs it anyway)",
                r.target,
                last.unwrap_or_default()
            ));
        }
    }
    Ok(reports)
}

/// `push --deploy`: after a successful push of `snapshot`, runs the due
/// targets here. Returns their reports as JSON.
pub(super) fn after_push(
    ws: &Workspace,
    store: &Store,
    snapshot: ObjectId,
    events: &mut dyn DeployEvents,
) -> Result<Vec<serde_json::Value>> {
    let opts = DeployOptions {
        snapshot: Some(snapshot.to_hex()),
        fallback_root: Some(ws.root.clone()),
        ..Default::default()
    };
    let (plan, _) = crate::deploy::plan(store, &opts)?;
    config_note(events, ws, plan.config, &plan.snapshot);
    if plan.targets.is_empty() {
        events.note(&format!(
            "push --deploy: no [deploy.NAME] target in {}",
            plan.config.describe()
        ));
        return Ok(Vec::new());
    }
    let reports = run_deploys(store, &opts, &crate::progress::NoProgress, events)?;
    Ok(reports.iter().map(report_json).collect())
}

fn status_json(s: &TargetStatus, config: ConfigSource) -> serde_json::Value {
    json!({
        "target": s.target, "ran": false, "due": s.due,
        "watched_hash": s.watched_hash, "snapshot": s.snapshot,
        "last_snapshot": s.last.as_ref().map(|l| l.snapshot),
        "last_watched_hash": s.last.as_ref().map(|l| l.watched_hash),
        "config": config, "steps": s.steps, "walk": s.walk,
    })
}

fn report_json(r: &DeployReport) -> serde_json::Value {
    json!({
        "target": r.target, "ran": r.ran, "due": r.due,
        "watched_hash": r.watched_hash, "snapshot": r.snapshot,
        "record": r.record,
        "last_snapshot": r.previous.as_ref().map(|l| l.snapshot),
        "config": r.config, "steps": r.steps, "seconds": r.seconds,
    })
}

json_via!(DeployCmdReport, |r| {
    let (mut v, single): (Vec<serde_json::Value>, bool) = match r {
        DeployCmdReport::Status {
            statuses,
            config,
            single,
            ..
        } => (
            statuses.iter().map(|s| status_json(s, *config)).collect(),
            *single,
        ),
        DeployCmdReport::Ran { reports, single } => {
            (reports.iter().map(report_json).collect(), *single)
        }
    };
    if single && v.len() == 1 {
        v.remove(0)
    } else {
        serde_json::Value::Array(v)
    }
});

impl Render for DeployCmdReport {
    fn human(&self, out: &mut Human<'_>) -> Result<()> {
        let DeployCmdReport::Status {
            statuses,
            list,
            force,
            ..
        } = self
        else {
            return Ok(());
        };
        let width = statuses.iter().map(|s| s.target.len()).max().unwrap_or(0);
        for s in statuses {
            let last = match &s.last {
                Some(l) => format!("last deployed {}", l.snapshot.short()),
                None => "never deployed".into(),
            };
            if *list {
                let due = if s.due { "due" } else { "up to date" };
                let (t, w) = (&s.target, s.watched_hash.short());
                out.line(format_args!("{t:<width$}  {due:<10}  watched {w}  {last}"))?;
                continue;
            }
            let verdict = match (s.due, force) {
                (true, _) => "due: would run",
                (false, true) => "not due, but --force: would run",
                (false, false) => "not due: would not run",
            };
            out.line(format_args!(
                "deploy {} of snapshot {}: {verdict} (watched {} over {} entries; {last})",
                s.target,
                s.snapshot.short(),
                s.watched_hash.short(),
                s.walk.entries,
            ))?;
            for (i, step) in s.steps.iter().enumerate() {
                out.line(format_args!(
                    "  {}. [{}] {}",
                    i + 1,
                    step.name,
                    step.command
                ))?;
            }
        }
        Ok(())
    }
}
