//! `sp-sync deploy` (and the deploys of `push --deploy`): parse, call
//! `systemprompt_sync::deploy`, print.

use std::io::Write;

use anyhow::{Result, anyhow};
use serde_json::json;

use systemprompt_sync::deploy::{
    self, ConfigSource, DeployEvents, DeployOptions, DeployReport, StepLine, TargetStatus,
};
use systemprompt_sync::{LockMode, NoProgress, ObjectId, Store, Workspace};

use super::Ctx;

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

/// Prints step output (stdout, or stderr under `--json`) and progress notes.
struct Printer<'a> {
    ctx: &'a Ctx,
}

impl DeployEvents for Printer<'_> {
    fn line(&mut self, l: &StepLine<'_>) {
        let text = format!("[{}/{}] {}\n", l.target, l.step, l.line);
        // A closed stdout must not stop the deploy.
        if self.ctx.json {
            let _ = std::io::stderr().lock().write_all(text.as_bytes());
        } else {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        }
    }

    fn step_start(&mut self, target: &str, index: usize, name: &str, command: &str) {
        if !self.ctx.json {
            self.ctx
                .note(format!("deploy {target}: step {index} ({name}): {command}"));
        }
    }

    fn waiting(&mut self, target: &str) {
        self.ctx.note(format!(
            "deploy {target}: another deploy of {target} is running; waiting for it to finish"
        ));
    }
}

fn config_note(ctx: &Ctx, ws: &Workspace, source: ConfigSource, snap: &ObjectId) {
    if source == ConfigSource::WorkingTree {
        ctx.note(format!(
            "deploy: snapshot {} holds no {}; using {}",
            snap.short(),
            systemprompt_sync::workspace::PROJECT_FILE,
            ws.root
                .join(systemprompt_sync::workspace::PROJECT_FILE)
                .display()
        ));
    }
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

/// `sp-sync deploy`.
pub fn run(ctx: &Ctx, a: DeployArgs) -> Result<i32> {
    let (ws, store) = ctx.open(LockMode::Shared)?;
    let opts = DeployOptions {
        snapshot: a.snapshot,
        targets: a.target.iter().cloned().collect(),
        dry_run: a.dry_run,
        force: a.force,
        fallback_root: Some(ws.root.clone()),
        lock_dir: None,
    };
    let single = a.target.is_some();
    let emit = |v: Vec<serde_json::Value>| -> Result<()> {
        match (single, v.len()) {
            (true, 1) => ctx.print_json(&v[0]),
            _ => ctx.print_json(&serde_json::Value::Array(v)),
        }
    };
    if a.list || a.dry_run {
        let (plan, st) = deploy::status(&store, &opts)?;
        config_note(ctx, &ws, plan.config, &plan.snapshot);
        if st.is_empty() {
            return Err(no_targets(&plan.config));
        }
        if ctx.json {
            emit(st.iter().map(|s| status_json(s, plan.config)).collect())?;
            return Ok(0);
        }
        let mut out = std::io::stdout().lock();
        let width = st.iter().map(|s| s.target.len()).max().unwrap_or(0);
        for s in &st {
            let last = match &s.last {
                Some(l) => format!("last deployed {}", l.snapshot.short()),
                None => "never deployed".into(),
            };
            if a.list {
                writeln!(
                    out,
                    "{:<width$}  {:<10}  watched {}  {last}",
                    s.target,
                    if s.due { "due" } else { "up to date" },
                    s.watched_hash.short(),
                )?;
                continue;
            }
            let verdict = match (s.due, a.force) {
                (true, _) => "due: would run",
                (false, true) => "not due, but --force: would run",
                (false, false) => "not due: would not run",
            };
            writeln!(
                out,
                "deploy {} of snapshot {}: {verdict} (watched {} over {} entries; {last})",
                s.target,
                s.snapshot.short(),
                s.watched_hash.short(),
                s.walk.entries,
            )?;
            for (i, step) in s.steps.iter().enumerate() {
                writeln!(out, "  {}. [{}] {}", i + 1, step.name, step.command)?;
            }
        }
        return Ok(0);
    }
    let (plan, _) = deploy::plan(&store, &opts)?;
    config_note(ctx, &ws, plan.config, &plan.snapshot);
    if plan.targets.is_empty() {
        return Err(no_targets(&plan.config));
    }
    let reports = run_deploys(ctx, &store, &opts)?;
    if ctx.json {
        emit(reports.iter().map(report_json).collect())?;
    }
    Ok(0)
}

fn no_targets(config: &ConfigSource) -> anyhow::Error {
    anyhow!("no [deploy.NAME] target in {}", config.describe())
}

/// Runs the deploys, printing a line per target as it finishes.
fn run_deploys(ctx: &Ctx, store: &Store, opts: &DeployOptions) -> Result<Vec<DeployReport>> {
    let mut printer = Printer { ctx };
    let reports = deploy::deploy(store, opts, &NoProgress, &mut printer)?;
    for r in &reports {
        if r.ran {
            ctx.note(format!(
                "deployed {} (snapshot {}, watched {}): {} steps in {:.1}s; deploy/{} moved",
                r.target,
                r.snapshot.short(),
                r.watched_hash.short(),
                r.steps.len(),
                r.seconds,
                r.target
            ));
        } else {
            ctx.note(format!(
                "deploy {}: not due; what it watches is unchanged since snapshot {} (--force runs it anyway)",
                r.target,
                r.previous
                    .as_ref()
                    .map(|l| l.snapshot.short())
                    .unwrap_or_default()
            ));
        }
    }
    Ok(reports)
}

/// `push --deploy`: after a successful push of `snapshot`, runs the due
/// targets locally. Returns their reports as JSON.
pub fn after_push(
    ctx: &Ctx,
    ws: &Workspace,
    store: &Store,
    snapshot: ObjectId,
) -> Result<Vec<serde_json::Value>> {
    let opts = DeployOptions {
        snapshot: Some(snapshot.to_hex()),
        fallback_root: Some(ws.root.clone()),
        ..Default::default()
    };
    let (plan, _) = deploy::plan(store, &opts)?;
    config_note(ctx, ws, plan.config, &plan.snapshot);
    if plan.targets.is_empty() {
        ctx.note(format!(
            "push --deploy: no [deploy.NAME] target in {}",
            plan.config.describe()
        ));
        return Ok(Vec::new());
    }
    Ok(run_deploys(ctx, store, &opts)?
        .iter()
        .map(report_json)
        .collect())
}
