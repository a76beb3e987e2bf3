//! The command line: parse, call one `systemprompt_sync::commands` function
//! per command, print its report (`--json`: the report itself).

/// `options(place)` for arguments that are the options' fields by name.
macro_rules! options {
    ($args:ident => $opts:ident { $($f:ident),* } $(.. $rest:expr)?) => {
        impl $args {
            /// The options of the library call these arguments make.
            pub fn options(self, place: Place) -> $opts {
                $opts { place, $($f: self.$f),* $(, ..$rest)? }
            }
        }
    };
}

mod args;
mod bundle;
mod cache;
mod deploy;
mod progress;

use std::path::PathBuf;

use anyhow::Result;
use clap::{CommandFactory, Parser};

use systemprompt_sync::SyncError;
use systemprompt_sync::commands::{self as cmds, Console, NoProgress, Place, Printable};

use args::Cmd;
use progress::Bar;

#[derive(Parser, Debug)]
#[command(
    name = "sp-sync",
    version,
    about = "Content-addressed snapshots of a services tree: snapshot, diff, restore, fsck, gc."
)]
struct Cli {
    /// The store directory (default: a `.sp-sync` directory here or above).
    #[arg(long, global = true, env = "SP_SYNC_STORE", value_name = "DIR")]
    store: Option<PathBuf>,
    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// Print nothing but results and errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// More messages on stderr (-v, -vv).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

/// The global options every command sees.
pub struct Ctx {
    json: bool,
    quiet: bool,
    place: Place,
}

pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    init_logging(cli.verbose, cli.quiet);
    // The first SIGINT, SIGTERM or SIGHUP asks long work to stop at the next safe
    // point; a second one exits at once. (serve handles its own signals.)
    if !matches!(cli.cmd, Cmd::Serve { .. })
        && let Err(e) = systemprompt_sync::progress::install_signal_handlers()
    {
        eprintln!("warning: cannot handle signals: {e}");
    }
    let cwd = match std::env::current_dir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: cannot read the current directory: {e}");
            return 1;
        }
    };
    let place = Place {
        store: cli.store.clone(),
        cwd,
    };
    let ctx = Ctx {
        json: cli.json,
        quiet: cli.quiet,
        place,
    };
    match run(&ctx, cli.cmd) {
        Ok(code) => code,
        // A closed stdout (`sp-sync log | head -1`) ends output quietly.
        Err(e) if is_broken_pipe(&e) => 0,
        Err(e) => {
            let interrupted = |c: &(dyn std::error::Error + 'static)| {
                matches!(
                    c.downcast_ref::<SyncError>().map(SyncError::root),
                    Some(SyncError::Interrupted)
                )
            };
            if e.chain().any(interrupted) {
                let sig = systemprompt_sync::progress::stop_signal().unwrap_or(2);
                let name = match sig {
                    1 => "SIGHUP",
                    15 => "SIGTERM",
                    _ => "SIGINT",
                };
                eprintln!("error: interrupted ({name})");
                return 128 + sig;
            }
            eprintln!("error: {}", error_line(&e));
            1
        }
    }
}

/// Runs one command: one library call, then its report printed.
fn run(ctx: &Ctx, cmd: Cmd) -> Result<i32> {
    let place = ctx.place.clone();
    let bar = Bar::new(ctx.quiet);
    let mut console = Console {
        json: ctx.json,
        quiet: ctx.quiet,
    };
    let report: Box<dyn Printable> = match cmd {
        Cmd::Init { dir } => Box::new(cmds::init(&place, dir)?),
        Cmd::Snapshot(a) => Box::new(cmds::snapshot(&a.options(place), &bar)?),
        Cmd::Log(a) => Box::new(cmds::log(&a.options(place))?),
        Cmd::Ls(a) => Box::new(cmds::ls(&a.options(place))?),
        Cmd::Cat { spec } => return cat(&place, &spec),
        Cmd::Diff(a) => Box::new(cmds::diff(&a.options(place), &bar)?),
        Cmd::Restore(a) => Box::new(cmds::restore(&a.options(place), &bar)?),
        Cmd::Fsck(a) => Box::new(cmds::fsck(&a.options(place), &bar)?),
        Cmd::Gc { dry_run, repack } => Box::new(cmds::gc(
            &place,
            &cmds::GcCmdOptions { dry_run, repack },
            &bar,
        )?),
        Cmd::Ref { cmd } => Box::new(cmds::refs(&place, &cmd.into())?),
        Cmd::Remote { cmd } => Box::new(cmds::remote(&place, &cmd.into())?),
        Cmd::Push(a) => Box::new(cmds::push(&a.options(place), &bar, &mut console)?),
        Cmd::Pull(a) => Box::new(cmds::pull(&a.options(place), &bar)?),
        Cmd::Local { cmd } => Box::new(cmds::local(&cmd.options(place), &bar)?),
        Cmd::Bundle { cmd } => bundle::run(ctx, cmd, &bar)?,
        Cmd::Cache { cmd } => cache::run(place, cmd, &bar)?,
        Cmd::Deploy(a) => Box::new(cmds::deploy(&a.options(place), &NoProgress, &mut console)?),
        Cmd::Serve(a) => {
            let quiet = ctx.quiet;
            cmds::serve(&a.options(), |addr| {
                if !quiet {
                    eprintln!("sp-sync serve: listening on {addr}");
                }
            })?;
            return Ok(0);
        }
        Cmd::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "sp-sync", &mut std::io::stdout());
            return Ok(0);
        }
    };
    drop(bar);
    Ok(report.print(ctx.json, ctx.quiet)?)
}

/// `sp-sync cat SNAP:PATH`: the file's bytes to stdout.
fn cat(place: &Place, spec: &str) -> Result<i32> {
    use std::io::Write;
    let (_, store) = place.open(systemprompt_sync::LockMode::Shared)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
    systemprompt_sync::cat(&store, spec, &mut out)?;
    out.flush()
        .map_err(|e| SyncError::io("writing", "standard output", e))?;
    Ok(0)
}

/// Whether `e` comes from writing to a closed standard output (not from a
/// connection that broke: that is an error).
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    use std::io::ErrorKind::BrokenPipe;
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        return io.kind() == BrokenPipe;
    }
    matches!(e.downcast_ref::<SyncError>().map(SyncError::root),
        Some(SyncError::Io { source, path, .. })
            if source.kind() == BrokenPipe && path.as_os_str() == "standard output")
}

/// An error and its causes on one line, each cause said once: a cause whose
/// text the line already holds is not repeated.
fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for c in e.chain() {
        let text = c.to_string().replace('\n', " ");
        let text = text.trim();
        if !text.is_empty() && !line.contains(text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(text);
        }
        // A context line already says its cause (the place said once):
        // the rest of the chain is in it.
        if matches!(
            c.downcast_ref::<SyncError>(),
            Some(SyncError::Context { .. })
        ) {
            break;
        }
    }
    line
}

fn init_logging(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        _ => "debug",
    };
    // The TLS verifier logs each failure it also returns (as our one error
    // line), so it stays quiet unless SP_SYNC_LOG asks.
    let filter = tracing_subscriber::EnvFilter::try_from_env("SP_SYNC_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{level},rustls_platform_verifier=off"))
    });
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .event_format(PlainEvents)
        .try_init();
}

/// Log lines in the style of the rest of the output: `warning: …`.
struct PlainEvents;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for PlainEvents
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let label = match *event.metadata().level() {
            tracing::Level::ERROR => "error",
            tracing::Level::WARN => "warning",
            tracing::Level::INFO => "info",
            tracing::Level::DEBUG => "debug",
            tracing::Level::TRACE => "trace",
        };
        write!(writer, "{label}: ")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_line_says_each_part_once() {
        let url = "postgres://app@db:5432/app";
        let cause = SyncError::Database(format!("{url}: duplicate key (row u(1))"));
        let e = anyhow::Error::new(cause.context(format!("restore into {url}")));
        assert_eq!(
            error_line(&e),
            format!("restore into {url}: database: duplicate key (row u(1))")
        );
        let e = anyhow::Error::new(
            SyncError::Unauthorized("http://h/t: refused".into()).context("push to http://h/t"),
        )
        .context("while pushing");
        assert_eq!(
            error_line(&e),
            "while pushing: push to http://h/t: unauthorized: refused"
        );
    }
}
