//! Command-line definitions and the glue from arguments to library calls.

mod bundle;
mod cache;
mod deploy;
mod output;
mod progress;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use clap::{CommandFactory, Parser, Subcommand};
use serde_json::json;

use systemprompt_sync::diff::{ChangeKind, FileChange};
use systemprompt_sync::{
    DbSource, EntryKind, FsckOptions, LockMode, NoProgress, RestoreOptions, SnapshotOptions, Store,
    SyncError, Workspace, fsck, gc, names, rebuild_index,
};

use output::{human_time, mode_string, quote_path, rfc3339, size};
use progress::Bar;

#[derive(Parser, Debug)]
#[command(
    name = "sp-sync",
    version,
    about = "Content-addressed snapshots of a services tree: snapshot, diff, restore, fsck, gc.",
    long_about = None
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

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create a store: DIR/.sp-sync (DIR defaults to here), or exactly --store DIR.
    Init { dir: Option<PathBuf> },
    /// Snapshot paths (default: the working tree) and move a ref.
    Snapshot {
        /// What to snapshot; one directory becomes the root, several appear under their names.
        paths: Vec<PathBuf>,
        /// A message recorded with the snapshot.
        #[arg(short, long)]
        message: Option<String>,
        /// The ref to move.
        #[arg(long = "ref", default_value = "main", value_name = "NAME")]
        ref_name: String,
        /// Leave out paths matching this gitignore-style pattern (repeatable).
        #[arg(long, value_name = "GLOB")]
        exclude: Vec<String>,
        /// Record this host name instead of the machine's.
        #[arg(long)]
        host: Option<String>,
        /// Read every file, ignoring the stat cache.
        #[arg(long)]
        no_cache: bool,
        /// Also snapshot this database's tables: a SQLite file or
        /// postgres://USER@HOST:PORT/DB (default: sp-sync.toml's [[db]]).
        #[arg(long, value_name = "FILE|URL")]
        db: Option<PathBuf>,
        /// Only these tables of --db (repeatable).
        #[arg(long = "table", value_name = "T", requires = "db")]
        tables: Vec<String>,
        /// The PostgreSQL schema of --db postgres://… (default public).
        #[arg(long, value_name = "NAME", requires = "db")]
        schema: Option<String>,
        /// Key PostgreSQL tables without a primary key by all their columns.
        #[arg(long, requires = "db")]
        key_by_all_columns: bool,
    },
    /// Snapshots, newest first.
    Log {
        #[arg(value_name = "REF")]
        reference: Option<String>,
        /// At most this many.
        #[arg(short = 'n', long)]
        max_count: Option<usize>,
    },
    /// List a tree: SNAP[:PATH].
    Ls {
        spec: String,
        /// Descend into subdirectories.
        #[arg(short, long)]
        recursive: bool,
        /// Show mode, size and modification time.
        #[arg(short, long)]
        long: bool,
    },
    /// Write a file's bytes to stdout: SNAP:PATH.
    Cat { spec: String },
    /// What changed between snapshots A and B, or between A and the working tree
    /// and databases now; with --db, between A's tables and that database now.
    Diff {
        a: String,
        b: Option<String>,
        /// Compare A's tables with this database now (a SQLite file or postgres://…).
        #[arg(long, value_name = "FILE|URL", conflicts_with = "b")]
        db: Option<PathBuf>,
        /// The PostgreSQL schema of --db postgres://… (default public).
        #[arg(long, value_name = "NAME", requires = "db")]
        schema: Option<String>,
        /// Key PostgreSQL tables without a primary key by all their columns.
        #[arg(long, requires = "db")]
        key_by_all_columns: bool,
        /// Only these tables (repeatable).
        #[arg(long = "table", value_name = "T")]
        tables: Vec<String>,
        /// A line per changed path with its inserted and deleted lines, and a summary.
        #[arg(long)]
        stat: bool,
        /// Exit with status 1 when there are differences.
        #[arg(long)]
        exit_code: bool,
        /// Show a unified patch of each changed text file.
        #[arg(short = 'p', long = "patch")]
        patch: bool,
        /// Only these paths (and what is below them).
        #[arg(last = true, value_name = "PATH")]
        paths: Vec<String>,
    },
    /// Materialize SNAP[:PATH] into TARGET (without TARGET: back where it was
    /// taken from, files and databases), and/or SNAP's tables into --db FILE.
    Restore {
        spec: String,
        target: Option<PathBuf>,
        /// Also remove what the snapshot lacks (files; rows of its tables).
        #[arg(long)]
        delete: bool,
        /// Restore the snapshot's tables into this database (a SQLite file, new
        /// or existing, or postgres://…), changed in one transaction.
        #[arg(long, value_name = "FILE|URL")]
        db: Option<PathBuf>,
        /// The PostgreSQL schema of --db postgres://… (default public).
        #[arg(long, value_name = "NAME", requires = "db")]
        schema: Option<String>,
        /// Key PostgreSQL tables without a primary key by all their columns.
        #[arg(long, requires = "db")]
        key_by_all_columns: bool,
        /// Only these tables (repeatable).
        #[arg(long = "table", value_name = "T")]
        tables: Vec<String>,
        /// Restore setuid and setgid bits (dropped by default).
        #[arg(long)]
        keep_setid: bool,
    },
    /// Check every reachable object.
    Fsck {
        /// Re-hash every stored chunk and check every pack's checksum.
        #[arg(long)]
        read_data: bool,
        /// Rewrite every pack's index from the pack.
        #[arg(long)]
        rebuild_index: bool,
    },
    /// Remove what no ref reaches.
    Gc {
        /// Say what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Manage refs.
    Ref {
        #[command(subcommand)]
        cmd: RefCmd,
    },
    /// Print a shell completion script.
    Completions { shell: clap_complete::Shell },
    /// Manage remotes (a path or file://, http(s)://HOST/TENANT, s3://BUCKET/PREFIX).
    Remote {
        #[command(subcommand)]
        cmd: RemoteCmd,
    },
    /// Send what the remote lacks, then move its refs (fast-forward only unless --force).
    Push {
        /// A remote name, a path or a URL (default: the only remote, or origin).
        remote: Option<String>,
        /// Refs to push (default: main).
        refs: Vec<String>,
        /// Move the remote's refs even when that drops history.
        #[arg(long)]
        force: bool,
        /// Then run the deploy targets that are due, here.
        #[arg(long)]
        deploy: bool,
    },
    /// Fetch what is missing, record remotes/REMOTE/REF, fast-forward local refs.
    Pull {
        remote: Option<String>,
        /// Refs to pull (default: main).
        refs: Vec<String>,
        /// Then restore the pulled snapshot into TARGET.
        #[arg(long, value_name = "TARGET")]
        restore: Option<PathBuf>,
    },
    /// Offline bundles: create, verify, import (a bundle is also a remote for pull).
    Bundle {
        #[command(subcommand)]
        cmd: bundle::BundleCmd,
    },
    /// CI artifact cache on a remote: save, restore (with prefix fallback), list, prune.
    Cache {
        #[command(subcommand)]
        cmd: cache::CacheCmd,
    },
    /// Keep folders of markdown files ([[collection]] in sp-sync.toml) in step with tables.
    Local {
        #[command(subcommand)]
        cmd: LocalCmd,
    },
    /// Run the HTTP remote.
    Serve {
        /// Address to listen on (port 0: any free port; the address is printed).
        #[arg(long, default_value = "127.0.0.1:8470")]
        listen: String,
        /// Where tenants' stores live: a directory, or s3://BUCKET/PREFIX.
        #[arg(long, value_name = "DIR")]
        data: String,
        /// TOML file: [tenants.NAME] tokens = ["..."]. Without it every tenant is open.
        #[arg(long, value_name = "FILE")]
        tokens: Option<PathBuf>,
        /// Largest push body, in bytes (default 4 GiB).
        #[arg(long, default_value_t = systemprompt_sync::server::DEFAULT_MAX_BODY)]
        max_body: u64,
        /// Seconds a client may take to send headers, a small body or the next
        /// piece of a push, or sit idle.
        #[arg(long, value_name = "SECS", default_value_t = 30)]
        timeout: u64,
        /// Requests of one tenant in flight at once (more are answered 503).
        #[arg(long, value_name = "N", default_value_t = 8)]
        tenant_requests: usize,
        /// When a tenant's main moves, run its due deploy targets (from the
        /// pushed snapshot's sp-sync.toml) on this machine.
        #[arg(long)]
        deploy_on_push: bool,
    },
    /// Run a deploy target's steps when what it watches changed.
    Deploy(deploy::DeployArgs),
}

#[derive(Subcommand, Debug)]
enum LocalCmd {
    /// One line per key whose file and row differ (as to-db would apply them).
    Diff {
        #[arg(long, value_name = "NAME")]
        collection: Option<String>,
        /// Exit with status 1 when there are differences.
        #[arg(long)]
        exit_code: bool,
    },
    /// Carry the files' edits since the last sync to the database, in one transaction.
    ToDb {
        #[arg(long, value_name = "NAME")]
        collection: Option<String>,
        /// Print the plan; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// On a conflict (or with no record of the last sync), the files win.
        #[arg(long)]
        force: bool,
    },
    /// Carry the database's edits since the last sync to the files.
    ToDisk {
        #[arg(long, value_name = "NAME")]
        collection: Option<String>,
        /// Print the plan; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// On a conflict (or with no record of the last sync), the database wins.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
enum RemoteCmd {
    /// Add a remote.
    Add { name: String, url: String },
    /// List remotes.
    List,
    /// Remove a remote.
    Remove { name: String },
}

#[derive(Subcommand, Debug)]
enum RefCmd {
    /// Every ref and the snapshot it names.
    List,
    /// Point NAME at SNAP (creating or moving it).
    Set { name: String, snap: String },
    /// Remove NAME.
    Delete { name: String },
}

struct Ctx {
    json: bool,
    quiet: bool,
    store: Option<PathBuf>,
    cwd: PathBuf,
}

impl Ctx {
    fn workspace(&self) -> Result<Workspace> {
        Ok(Workspace::locate(self.store.as_deref(), &self.cwd)?)
    }

    fn open(&self, mode: LockMode) -> Result<(Workspace, Store)> {
        let ws = self.workspace()?;
        let store = open_store(&ws.store_dir, mode)?;
        Ok((ws, store))
    }

    fn note(&self, msg: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("{}", msg.as_ref());
        }
    }

    fn print_json(&self, v: &serde_json::Value) -> Result<()> {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, v)?;
        writeln!(out)?;
        Ok(())
    }
}

pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    init_logging(cli.verbose, cli.quiet);
    // The first SIGINT or SIGTERM asks long work to stop at the next safe
    // point (what was written stays unreferenced until gc; no ref moves); a
    // second one exits at once. (serve handles its signals itself, to shut
    // down gracefully.)
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
    let ctx = Ctx {
        json: cli.json,
        quiet: cli.quiet,
        store: cli.store.clone(),
        cwd,
    };
    match run(&ctx, cli.cmd) {
        Ok(code) => code,
        // A closed stdout (`sp-sync log | head -1`) ends output quietly.
        Err(e) if is_broken_pipe(&e) => 0,
        Err(e) => {
            let interrupted = e
                .chain()
                .any(|c| matches!(c.downcast_ref::<SyncError>(), Some(SyncError::Interrupted)));
            if interrupted {
                let sig = systemprompt_sync::progress::stop_signal().unwrap_or(2);
                let name = if sig == 15 { "SIGTERM" } else { "SIGINT" };
                eprintln!("error: interrupted ({name})");
                return 128 + sig;
            }
            eprintln!("error: {}", error_line(&e));
            1
        }
    }
}

/// Whether `e` comes from writing to a closed standard output (not from a
/// connection that broke: that is an error).
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    use std::io::ErrorKind::BrokenPipe;
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        return io.kind() == BrokenPipe;
    }
    if let Some(j) = e.downcast_ref::<serde_json::Error>() {
        return j.io_error_kind() == Some(BrokenPipe);
    }
    matches!(e.downcast_ref::<SyncError>(),
        Some(SyncError::Io { source, path, .. })
            if source.kind() == BrokenPipe && path.as_os_str() == "standard output")
}

/// An error and its causes on one line, each cause said once: a cause whose
/// text the line already holds (a `source` that the message also shows)
/// is not repeated.
fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for c in e.chain() {
        let text = c.to_string().replace('\n', " ");
        let mut text = text.trim();
        if text.is_empty() || line.contains(text) {
            continue;
        }
        // "push to URL" then "URL: refused": the place is said once.
        if let Some(last) = line.rsplit(' ').next().filter(|l| l.len() > 3)
            && let Some(rest) = text.strip_prefix(last).and_then(|r| r.strip_prefix(": "))
        {
            text = rest;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(text);
    }
    line
}

fn open_store(dir: &Path, mode: LockMode) -> Result<Store> {
    Ok(systemprompt_sync::open_store(dir, mode)?)
}

fn init_logging(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SP_SYNC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
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

/// `--db` with `--schema` and `--key-by-all-columns` folded into its
/// PostgreSQL URL (refused for a SQLite file).
fn db_arg(db: Option<PathBuf>, schema: Option<String>, all: bool) -> Result<Option<PathBuf>> {
    Ok(db
        .map(|d| {
            systemprompt_sync::db::pg::resolve_location(Path::new(""), &d, schema.as_deref(), all)
        })
        .transpose()?)
}

fn run(ctx: &Ctx, cmd: Cmd) -> Result<i32> {
    match cmd {
        Cmd::Init { dir } => init(ctx, dir),
        Cmd::Snapshot {
            paths,
            message,
            ref_name,
            exclude,
            host,
            no_cache,
            db,
            tables,
            schema,
            key_by_all_columns,
        } => snapshot(
            ctx,
            paths,
            message,
            ref_name,
            exclude,
            host,
            no_cache,
            db_arg(db, schema, key_by_all_columns)?.map(|path| (path, tables)),
        ),
        Cmd::Log {
            reference,
            max_count,
        } => log(ctx, reference, max_count),
        Cmd::Ls {
            spec,
            recursive,
            long,
        } => ls(ctx, &spec, recursive, long),
        Cmd::Cat { spec } => {
            let (_, store) = ctx.open(LockMode::Shared)?;
            let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
            systemprompt_sync::cat(&store, &spec, &mut out)?;
            out.flush().context("writing standard output")?;
            Ok(0)
        }
        Cmd::Diff {
            a,
            b,
            db,
            tables,
            schema,
            key_by_all_columns,
            stat,
            exit_code,
            patch,
            paths,
        } => diff(
            ctx,
            &a,
            b.as_deref(),
            db_arg(db, schema, key_by_all_columns)?.as_deref(),
            &tables,
            DiffView { stat, patch, paths },
            exit_code,
        ),
        Cmd::Restore {
            spec,
            target,
            delete,
            db,
            tables,
            schema,
            key_by_all_columns,
            keep_setid,
        } => restore(
            ctx,
            systemprompt_sync::CheckoutOptions {
                spec,
                target,
                delete,
                database: db_arg(db, schema, key_by_all_columns)?,
                tables,
                keep_setid,
                cwd: ctx.cwd.clone(),
            },
        ),
        Cmd::Local { cmd } => local(ctx, cmd),
        Cmd::Bundle { cmd } => bundle::run(ctx, cmd),
        Cmd::Cache { cmd } => cache::run(ctx, cmd),
        Cmd::Fsck {
            read_data,
            rebuild_index: rebuild,
        } => fsck_cmd(ctx, read_data, rebuild),
        Cmd::Gc { dry_run } => gc_cmd(ctx, dry_run),
        Cmd::Ref { cmd } => refs(ctx, cmd),
        Cmd::Remote { cmd } => remote_cmd(ctx, cmd),
        Cmd::Push {
            remote,
            refs,
            force,
            deploy,
        } => push(ctx, remote, refs, force, deploy),
        Cmd::Deploy(a) => deploy::run(ctx, a),
        Cmd::Pull {
            remote,
            refs,
            restore,
        } => pull(ctx, remote, refs, restore),
        Cmd::Serve {
            listen,
            data,
            tokens,
            max_body,
            timeout,
            tenant_requests,
            deploy_on_push,
        } => {
            let opts = systemprompt_sync::server::ServeOptions {
                listen,
                data,
                tokens,
                max_body,
                timeout: std::time::Duration::from_secs(timeout.max(1)),
                tenant_requests,
                deploy_on_push,
            };
            let quiet = ctx.quiet;
            systemprompt_sync::server::serve(&opts, |addr| {
                if !quiet {
                    eprintln!("sp-sync serve: listening on {addr}");
                }
            })?;
            Ok(0)
        }
        Cmd::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "sp-sync", &mut std::io::stdout());
            Ok(0)
        }
    }
}

fn init(ctx: &Ctx, dir: Option<PathBuf>) -> Result<i32> {
    let target = Workspace::init_dir(ctx.store.as_deref(), dir.as_deref(), &ctx.cwd);
    let created = systemprompt_sync::init_store(&target)?;
    let shown = target.display().to_string();
    if ctx.json {
        ctx.print_json(&json!({"store": shown, "created": created}))?;
    } else if created {
        ctx.note(format!("initialized an empty sp-sync store in {shown}"));
    } else {
        ctx.note(format!("store {shown} already exists; nothing changed"));
    }
    Ok(0)
}

#[allow(clippy::too_many_arguments)]
fn snapshot(
    ctx: &Ctx,
    paths: Vec<PathBuf>,
    message: Option<String>,
    ref_name: String,
    mut exclude: Vec<String>,
    host: Option<String>,
    no_cache: bool,
    db: Option<(PathBuf, Vec<String>)>,
) -> Result<i32> {
    let (ws, store) = ctx.open(LockMode::Shared)?;
    let defaulted = paths.is_empty();
    let sources = if defaulted {
        let (s, ex) = ws.default_sources()?;
        exclude.extend(ex);
        s
    } else {
        paths.iter().map(|p| ctx.cwd.join(p)).collect()
    };
    let dbs = match db {
        Some((path, tables)) => vec![DbSource {
            path: if systemprompt_sync::db::pg::is_url_path(&path) {
                path
            } else {
                ctx.cwd.join(path)
            },
            tables,
        }],
        None if defaulted => ws.default_dbs()?,
        None => Vec::new(),
    };
    let opts = SnapshotOptions {
        sources,
        excludes: exclude,
        message: message.unwrap_or_default(),
        ref_name,
        host,
        use_stat_cache: !no_cache,
        dbs,
        root: Some(ws.root.clone()),
        ..Default::default()
    };
    let bar = Bar::new(ctx.quiet);
    let start = std::time::Instant::now();
    let r = systemprompt_sync::snapshot(&store, &opts, &bar);
    bar.finish();
    let r = r?;
    for s in &r.skipped {
        eprintln!("warning: skipped {}: {}", s.path, s.error);
    }
    if ctx.json {
        ctx.print_json(&json!({
            "id": r.id, "parent": r.parent, "root": r.root,
            "files": r.files, "dirs": r.dirs, "bytes": r.bytes,
            "new_bytes": r.new_bytes, "new_objects": r.new_objects,
            "tables": r.tables, "skipped": r.skipped,
        }))?;
    } else {
        let rows: u64 = r.tables.values().sum();
        let tables = if r.tables.is_empty() {
            String::new()
        } else {
            format!(
                " and {} ({})",
                plural(r.tables.len() as u64, "table"),
                plural(rows, "row")
            )
        };
        ctx.note(format!(
            "snapshot {} of {} files{tables}, {} ({} new) in {:.2}s; {} moved",
            r.id.short(),
            r.files,
            size(r.bytes),
            size(r.new_bytes),
            start.elapsed().as_secs_f64(),
            opts.ref_name
        ));
        println!("{}", r.id);
    }
    if r.skipped.is_empty() {
        Ok(0)
    } else {
        ctx.note(format!(
            "warning: the snapshot is partial: {} left out",
            plural(r.skipped.len() as u64, "path")
        ));
        Ok(3)
    }
}

/// JSON for a snapshot's recorded sources (null for older snapshots).
fn sources_json(s: &systemprompt_sync::Snapshot) -> serde_json::Value {
    match &s.sources {
        None => serde_json::Value::Null,
        Some(src) => json!({
            "paths": src.paths, "excludes": src.excludes, "dbs": src.dbs,
        }),
    }
}

fn log(ctx: &Ctx, reference: Option<String>, max: Option<usize>) -> Result<i32> {
    let (_, store) = ctx.open(LockMode::Shared)?;
    let name = reference.unwrap_or_else(|| "main".into());
    let id = names::resolve(&store, &name)?;
    let hist = systemprompt_sync::history(&store, id, max)?;
    if ctx.json {
        let v: Vec<_> = hist
            .iter()
            .map(|(id, s)| {
                json!({
                    "id": id, "time": rfc3339(s.time), "message": s.message,
                    "parents": s.parents, "host": s.host, "root": s.root,
                    "files": s.files, "bytes": s.bytes,
                    "sources": sources_json(s), "skipped": s.skipped,
                })
            })
            .collect();
        ctx.print_json(&serde_json::Value::Array(v))?;
        return Ok(0);
    }
    let mut out = std::io::stdout().lock();
    for (i, (id, s)) in hist.iter().enumerate() {
        if i > 0 {
            writeln!(out)?;
        }
        writeln!(out, "snapshot {id}")?;
        writeln!(out, "Date:   {}", human_time(s.time))?;
        writeln!(out, "Host:   {}", printable(&s.host))?;
        writeln!(out, "Files:  {} ({})", s.files, size(s.bytes))?;
        if let Some(src) = &s.sources {
            let paths: Vec<String> = src
                .paths
                .iter()
                .map(|p| {
                    if p.is_empty() {
                        ".".into()
                    } else {
                        printable(p)
                    }
                })
                .collect();
            let dbs: Vec<String> = src.dbs.iter().map(|d| printable(&d.location)).collect();
            writeln!(out, "Paths:  {}", paths.join(" "))?;
            if !dbs.is_empty() {
                writeln!(out, "DBs:    {}", dbs.join(" "))?;
            }
        }
        if !s.skipped.is_empty() {
            writeln!(
                out,
                "Partial: {} left out",
                plural(s.skipped.len() as u64, "path")
            )?;
            for k in &s.skipped {
                writeln!(
                    out,
                    "    skipped {}: {}",
                    printable(&k.path),
                    printable(&k.error)
                )?;
            }
        }
        if !s.message.is_empty() {
            writeln!(out)?;
            for line in s.message.lines() {
                writeln!(out, "    {}", printable(line))?;
            }
        }
    }
    Ok(0)
}

/// `text` with control characters (terminal escape sequences) escaped.
fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let esc: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            esc
        })
        .collect()
}

fn ls(ctx: &Ctx, spec: &str, recursive: bool, long: bool) -> Result<i32> {
    let (_, store) = ctx.open(LockMode::Shared)?;
    let rows = systemprompt_sync::list(&store, spec, recursive)?;
    if ctx.json {
        let v: Vec<_> = rows
            .iter()
            .map(|(p, e)| {
                let mut o = json!({
                    "path": String::from_utf8_lossy(p), "type": e.kind_name(),
                    "mode": format!("{:04o}", e.mode), "size": e.size(), "mtime": rfc3339(e.mtime),
                });
                if let EntryKind::Symlink { target } = &e.kind {
                    o["target"] = json!(String::from_utf8_lossy(target));
                }
                o
            })
            .collect();
        ctx.print_json(&serde_json::Value::Array(v))?;
        return Ok(0);
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (p, e) in &rows {
        let mut shown = quote_path(p);
        if matches!(e.kind, EntryKind::Dir { .. }) {
            shown.push('/');
        }
        if long {
            let k = match e.kind {
                EntryKind::Dir { .. } => 'd',
                EntryKind::Symlink { .. } => 'l',
                EntryKind::File { .. } => '-',
            };
            let mut line = format!(
                "{} {:>12} {} {}",
                mode_string(k, e.mode),
                e.size(),
                human_time(e.mtime),
                shown
            );
            if let EntryKind::Symlink { target } = &e.kind {
                line.push_str(" -> ");
                line.push_str(&quote_path(target));
            }
            writeln!(out, "{line}")?;
        } else {
            writeln!(out, "{shown}")?;
        }
    }
    out.flush()?;
    Ok(0)
}

#[allow(clippy::too_many_arguments)]
fn diff(
    ctx: &Ctx,
    a: &str,
    b: Option<&str>,
    db: Option<&Path>,
    tables: &[String],
    view: DiffView,
    exit_code: bool,
) -> Result<i32> {
    let stat_only = view.stat;
    let (ws, store) = ctx.open(LockMode::Shared)?;
    let opts = systemprompt_sync::compare::DiffOptions {
        from: a.to_string(),
        to: b.map(str::to_string),
        database: db.map(Path::to_path_buf),
        tables: tables.to_vec(),
        paths: view.paths.clone(),
        cwd: ctx.cwd.clone(),
    };
    let bar = Bar::new(ctx.quiet || b.is_some());
    let rep = systemprompt_sync::compare::diff(&ws, &store, &opts, &bar);
    bar.finish();
    let rep = rep?;
    let (changes, rows, table_changes) = (&rep.files, &rep.rows, &rep.tables);
    let (stat, rstat) = (&rep.stat, &rep.row_stat);
    let sa = rep
        .old
        .as_ref()
        .context("the diff names its old snapshot")?;
    let sb_root = rep.new_root;
    let differ = rep.differs();
    if ctx.json {
        let mut v = json!({"files": changes, "rows": rows, "tables": table_changes});
        if stat_only {
            v["stat"] = serde_json::to_value(stat)?;
            v["row_stat"] = serde_json::to_value(rstat)?;
        }
        ctx.print_json(&v)?;
    } else if view.stat || view.patch {
        // Line-level views read both sides: the new side is the snapshot B,
        // or the working tree at the snapshot's recorded sources.
        use systemprompt_sync::patch::{Side, line_stat, unified};
        let old = Side::Tree {
            src: &store,
            root: sa.root,
        };
        let resolve = |p: &str| -> Option<PathBuf> {
            systemprompt_sync::sources::placements(sa, Some(p), &ws.root)
                .ok()
                .and_then(|v| v.into_iter().next())
                .map(|pl| pl.dest)
        };
        let new = match b {
            Some(_) => Side::Tree {
                src: &store,
                root: sb_root,
            },
            None => Side::Disk(&resolve),
        };
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let files: Vec<&FileChange> = changes.iter().filter(|c| !c.path.ends_with('/')).collect();
        if view.stat && (!files.is_empty() || rows.is_empty()) {
            let width = files.iter().map(|c| c.path.len()).max().unwrap_or(0);
            let (mut ins, mut del) = (0u64, 0u64);
            for c in &files {
                let s = line_stat(&old.read(&c.path)?, &new.read(&c.path)?);
                ins += s.insertions;
                del += s.deletions;
                let detail = match s.binary {
                    Some((o, n)) => format!("Bin {o} -> {n} bytes"),
                    None => {
                        let n = s.insertions + s.deletions;
                        let scale = if n > 50 { 50.0 / n as f64 } else { 1.0 };
                        format!(
                            "{n} {}{}",
                            "+".repeat((s.insertions as f64 * scale).ceil() as usize),
                            "-".repeat((s.deletions as f64 * scale).ceil() as usize)
                        )
                    }
                };
                writeln!(out, " {:<width$} | {detail}", quote_path(&c.raw_path))?;
            }
            writeln!(
                out,
                " {} changed, {} insertion{}(+), {} deletion{}(-)",
                plural(files.len() as u64, "file"),
                ins,
                if ins == 1 { "" } else { "s" },
                del,
                if del == 1 { "" } else { "s" }
            )?;
        }
        if view.patch {
            if view.stat && !files.is_empty() {
                writeln!(out)?;
            }
            for c in &files {
                out.write_all(
                    unified(&c.path, &old.read(&c.path)?, &new.read(&c.path)?).as_bytes(),
                )?;
            }
        }
        if !rows.is_empty() {
            writeln!(
                out,
                "{} changed: {} added, {} removed, {} modified",
                plural(rstat.total(), "row"),
                rstat.added,
                rstat.removed,
                rstat.modified
            )?;
        }
        out.flush()?;
    } else {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        if !stat_only {
            for c in changes {
                let mut p = quote_path(&c.raw_path);
                if c.path.ends_with('/') {
                    p.push('/');
                }
                let detail = match c.change {
                    ChangeKind::Added => c.new_size.map(|n| format!(" ({})", size(n))),
                    ChangeKind::Removed => c.old_size.map(|n| format!(" ({})", size(n))),
                    ChangeKind::Modified => match (c.old_size, c.new_size) {
                        (Some(o), Some(n)) if o != n => {
                            Some(format!(" ({} -> {})", size(o), size(n)))
                        }
                        _ => None,
                    },
                    ChangeKind::Type => Some(format!(
                        " ({} -> {})",
                        c.old_type.unwrap_or("?"),
                        c.new_type.unwrap_or("?")
                    )),
                };
                writeln!(
                    out,
                    "{} {}{}",
                    c.change.symbol(),
                    p,
                    detail.unwrap_or_default()
                )?;
            }
            for t in table_changes {
                let what = if t.view { "view" } else { "table" };
                let sym = match t.change {
                    "added" => '+',
                    "removed" => '-',
                    _ => 'S',
                };
                writeln!(
                    out,
                    "{sym} {what} {}{}",
                    t.table,
                    if t.change == "schema" {
                        " (schema changed)"
                    } else {
                        ""
                    }
                )?;
            }
            for r in rows {
                let cols = if r.columns.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", r.columns.join(", "))
                };
                writeln!(out, "{} {}{cols}", r.change.symbol(), r.describe_key())?;
            }
        }
        if stat_only || !changes.is_empty() {
            writeln!(
                out,
                "{} changed: {} added, {} removed, {} modified{}; +{} -{}",
                plural(stat.total(), "path"),
                stat.added,
                stat.removed,
                stat.modified,
                if stat.type_changed > 0 {
                    format!(", {} changed type", stat.type_changed)
                } else {
                    String::new()
                },
                size(stat.bytes_added),
                size(stat.bytes_removed)
            )?;
        }
        if (stat_only && (!sa.tables.is_empty() || !rows.is_empty())) || !rows.is_empty() {
            writeln!(
                out,
                "{} changed: {} added, {} removed, {} modified",
                plural(rstat.total(), "row"),
                rstat.added,
                rstat.removed,
                rstat.modified
            )?;
        }
        out.flush()?;
    }
    Ok(if exit_code && differ { 1 } else { 0 })
}

/// How `diff` shows what changed.
struct DiffView {
    stat: bool,
    patch: bool,
    paths: Vec<String>,
}

fn plural(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn restore(ctx: &Ctx, opts: systemprompt_sync::CheckoutOptions) -> Result<i32> {
    let (ws, store) = ctx.open(LockMode::Shared)?;
    let bar = Bar::new(ctx.quiet);
    let start = std::time::Instant::now();
    let r = systemprompt_sync::checkout::restore(&ws, &store, &opts, &bar);
    bar.finish();
    let r = r?;
    if ctx.json {
        let mut out = json!({});
        if let Some(first) = r.restored.first() {
            out = serde_json::to_value(first)?;
            out["restored"] = serde_json::to_value(&r.restored)?;
        }
        if let Some(d) = r.dbs.first() {
            out["db"] = json!(d.db);
            out["db_created"] = json!(d.created);
            for k in ["rows_inserted", "rows_updated", "rows_deleted"] {
                out[k] = serde_json::to_value(d)?[k].clone();
            }
            out["dbs"] = serde_json::to_value(&r.dbs)?;
        }
        ctx.print_json(&out)?;
        return Ok(0);
    }
    let secs = start.elapsed().as_secs_f64();
    for p in &r.restored {
        let removed = if opts.delete {
            format!("; removed {}", p.deleted)
        } else {
            String::new()
        };
        ctx.note(format!(
            "restored {} files, {} into {} in {secs:.2}s{removed}",
            p.files,
            size(p.bytes),
            p.target.display(),
        ));
    }
    for d in &r.dbs {
        ctx.note(format!(
            "{} {} in {secs:.2}s: {} inserted, {} updated, {} deleted",
            if d.created { "created" } else { "updated" },
            d.db.display(),
            plural(d.rows_inserted, "row"),
            d.rows_updated,
            d.rows_deleted
        ));
    }
    Ok(0)
}

fn local(ctx: &Ctx, cmd: LocalCmd) -> Result<i32> {
    use systemprompt_sync::collection::{Action, Direction, Side};
    use systemprompt_sync::local::{LocalOptions, find_project_root};
    // The record of each collection's last sync lives in the store; with
    // no store there is none, and every difference that is not a creation
    // is a conflict (see collection::Plan::decide).
    let (root, store) = match ctx.workspace() {
        Ok(ws) => {
            let store = open_store(&ws.store_dir, LockMode::Shared)?;
            (ws.root, Some(store))
        }
        Err(_) => (find_project_root(&ctx.cwd), None),
    };
    let (name, direction, dry_run, exit_code, force) = match cmd {
        LocalCmd::Diff {
            collection,
            exit_code,
        } => (collection, None, true, exit_code, false),
        LocalCmd::ToDb {
            collection,
            dry_run,
            force,
        } => (
            collection,
            Some(Direction::ToDatabase),
            dry_run,
            false,
            force,
        ),
        LocalCmd::ToDisk {
            collection,
            dry_run,
            force,
        } => (collection, Some(Direction::ToDisk), dry_run, false, force),
    };
    let opts = LocalOptions {
        collections: name.into_iter().collect(),
        direction,
        dry_run,
        force,
    };
    let rep = systemprompt_sync::local::local(&root, store.as_ref(), &opts, &NoProgress)?;
    if ctx.json {
        ctx.print_json(&serde_json::to_value(&rep.changes)?)?;
    } else {
        let mut out = std::io::stdout().lock();
        for c in &rep.changes {
            let cols = if c.columns.is_empty() {
                String::new()
            } else {
                format!(" [{}]", c.columns.join(", "))
            };
            let side = match (c.action, c.changed) {
                (Some(Action::Keep), Some(Side::Files)) => " (changed in the files only)",
                (Some(Action::Keep), _) => " (changed in the database only)",
                (Some(Action::Conflict), Some(_)) => " (changed on both sides)",
                (Some(Action::Conflict), None) => " (no record of the last sync)",
                (None, Some(Side::Files)) => " (files changed)",
                (None, Some(Side::Database)) => " (database changed)",
                (None, Some(Side::Both)) => " (both changed)",
                _ => "",
            };
            let what = match c.action {
                Some(a) => a.verb().to_string(),
                None => c.change.symbol().to_string(),
            };
            writeln!(
                out,
                "{what} {}/{} ({}){cols}{side}",
                c.collection,
                c.key_text(),
                c.path
            )?;
        }
    }
    let total = &rep.applied;
    match direction {
        Some(_) if dry_run => ctx.note(format!(
            "dry run: {} would change",
            plural(rep.would_change, "key")
        )),
        Some(Direction::ToDatabase) => ctx.note(format!(
            "database: {} inserted, {} updated, {} deleted",
            plural(total.inserted, "row"),
            total.updated,
            total.deleted
        )),
        Some(Direction::ToDisk) => ctx.note(format!(
            "files: {} written, {} removed",
            total.written, total.removed_files
        )),
        None => {}
    }
    if let Some(d) = direction {
        let (other, source) = match d {
            Direction::ToDatabase => ("to-disk", "the files' side"),
            Direction::ToDisk => ("to-db", "the database's side"),
        };
        if rep.kept > 0 {
            ctx.note(format!(
                "{} changed only on the target side: left as they are (`sp-sync local {other}` carries them)",
                plural(rep.kept, "key")
            ));
        }
        if rep.conflicts > 0 {
            let why = if !rep.has_store {
                "with no record of the last sync (no store: `sp-sync init` makes one), a difference cannot be told from an edit on the target"
            } else {
                "changed on both sides since the last sync (or never synced)"
            };
            eprintln!(
                "error: {} left alone: {why}; --force takes {source}",
                plural(rep.conflicts, "conflicting key")
            );
            return Ok(1);
        }
    }
    Ok(if exit_code && !rep.changes.is_empty() {
        1
    } else {
        0
    })
}

fn fsck_cmd(ctx: &Ctx, read_data: bool, rebuild: bool) -> Result<i32> {
    let ws = ctx.workspace()?;
    let bar = Bar::new(ctx.quiet);
    let mut rebuild_problems = Vec::new();
    if rebuild {
        let store = open_store(&ws.store_dir, LockMode::Shared)?;
        rebuild_problems = rebuild_index(&store, &bar)?;
    }
    let store = open_store(&ws.store_dir, LockMode::Shared)?;
    let r = fsck(&store, &FsckOptions { read_data }, &bar);
    bar.finish();
    let mut r = r?;
    r.errors.splice(0..0, rebuild_problems);
    r.ok = r.errors.is_empty();
    if ctx.json {
        ctx.print_json(&serde_json::to_value(&r)?)?;
    } else {
        let mut out = std::io::stdout().lock();
        for w in &r.warnings {
            writeln!(out, "warning: {w}")?;
        }
        for e in &r.errors {
            writeln!(out, "{e}")?;
        }
        ctx.note(format!(
            "checked {} refs, {} snapshots, {} reachable objects in {} packs{}",
            r.refs,
            r.snapshots,
            r.reachable,
            r.packs,
            if read_data { " (all data read)" } else { "" }
        ));
    }
    if r.ok {
        Ok(0)
    } else {
        Err(anyhow!("fsck found {} problems", r.errors.len()))
    }
}

fn gc_cmd(ctx: &Ctx, dry_run: bool) -> Result<i32> {
    let (_, store) = ctx.open(LockMode::Exclusive)?;
    let bar = Bar::new(ctx.quiet);
    let r = gc(&store, dry_run, &bar);
    bar.finish();
    let r = r?;
    if ctx.json {
        ctx.print_json(&serde_json::to_value(&r)?)?;
    } else {
        let verb = if dry_run { "would remove" } else { "removed" };
        println!(
            "{verb} {} objects ({}); {} packs deleted, {} rewritten; {} leftover files; {} reachable objects kept ({})",
            r.removed_objects,
            size(r.removed_bytes),
            r.packs_deleted,
            r.packs_rewritten,
            r.orphan_files,
            r.reachable_objects,
            size(r.kept_bytes)
        );
    }
    Ok(0)
}

fn refs(ctx: &Ctx, cmd: RefCmd) -> Result<i32> {
    let (_, store) = ctx.open(LockMode::Shared)?;
    match cmd {
        RefCmd::List => {
            let refs = store.list_refs()?;
            if ctx.json {
                let v: Vec<_> = refs
                    .iter()
                    .map(|(n, id)| json!({"name": n, "id": id}))
                    .collect();
                ctx.print_json(&serde_json::Value::Array(v))?;
            } else {
                for (n, id) in refs {
                    println!("{id} {n}");
                }
            }
        }
        RefCmd::Set { name, snap } => {
            let id = names::resolve(&store, &snap)?;
            let old = store.read_ref(&name)?;
            store.update_ref(&name, Some(old), Some(id))?;
            if ctx.json {
                ctx.print_json(&json!({"name": name, "id": id, "old": old}))?;
            } else {
                ctx.note(format!("{name} -> {}", id.short()));
            }
        }
        RefCmd::Delete { name } => {
            let old = store
                .read_ref(&name)?
                .ok_or_else(|| SyncError::NotFound(format!("unknown ref {name}")))?;
            store.update_ref(&name, Some(Some(old)), None)?;
            if ctx.json {
                ctx.print_json(&json!({"name": name, "deleted": old}))?;
            } else {
                ctx.note(format!("deleted ref {name} (was {})", old.short()));
            }
        }
    }
    Ok(0)
}

fn remote_cmd(ctx: &Ctx, cmd: RemoteCmd) -> Result<i32> {
    use systemprompt_sync::remote::Location;
    use systemprompt_sync::remote::config::{LocalConfig, RemoteConfig, validate_remote_name};
    let (_, store) = ctx.open(LockMode::Shared)?;
    let mut cfg = LocalConfig::load(&store)?;
    match cmd {
        RemoteCmd::Add { name, url } => {
            validate_remote_name(&name)?;
            Location::parse(&url)?;
            if cfg.remote.contains_key(&name) {
                return Err(anyhow!("remote {name} already exists"));
            }
            // A path is stored absolute, so it means the same from anywhere.
            let url = match Location::parse(&url)? {
                Location::Path(p) if !url.starts_with("file://") => {
                    ctx.cwd.join(p).display().to_string()
                }
                _ => url,
            };
            cfg.remote.insert(
                name.clone(),
                RemoteConfig {
                    url,
                    ..Default::default()
                },
            );
            cfg.save(&store)?;
            ctx.note(format!("added remote {name}"));
        }
        RemoteCmd::List => {
            if ctx.json {
                let v: Vec<_> = cfg
                    .remote
                    .iter()
                    .map(|(n, r)| json!({"name": n, "url": r.url}))
                    .collect();
                ctx.print_json(&serde_json::Value::Array(v))?;
            } else {
                for (n, r) in &cfg.remote {
                    println!("{n} {}", r.url);
                }
            }
        }
        RemoteCmd::Remove { name } => {
            if cfg.remote.remove(&name).is_none() {
                return Err(SyncError::NotFound(format!("unknown remote {name:?}")).into());
            }
            cfg.save(&store)?;
            for (r, id) in store.list_refs()? {
                if r.starts_with(&format!("remotes/{name}/")) {
                    store.update_ref(&r, Some(Some(id)), None)?;
                }
            }
            ctx.note(format!("removed remote {name}"));
        }
    }
    Ok(0)
}

/// Resolves REMOTE (name, path or URL; default: the only remote or origin).
fn resolve_remote(
    store: &Store,
    spec: Option<String>,
) -> Result<(
    Option<String>,
    systemprompt_sync::remote::Location,
    systemprompt_sync::remote::Credentials,
)> {
    let cfg = systemprompt_sync::remote::config::LocalConfig::load(store)?;
    let spec = match spec {
        Some(s) => s,
        None => cfg.default_remote()?,
    };
    Ok(cfg.resolve(&spec)?)
}

fn transfer_json(r: &systemprompt_sync::transfer::TransferReport, sent: bool) -> serde_json::Value {
    let first = r.refs.first();
    let mut v = json!({
        "ref": first.map(|x| x.name.clone()),
        "id": first.map(|x| x.id),
        "refs": r.refs,
        "requests": r.traffic.requests,
    });
    if sent {
        v["objects_sent"] = json!(r.objects);
        v["bytes_sent"] = json!(r.traffic.bytes_sent);
        v["object_bytes_sent"] = json!(r.object_bytes);
    } else {
        v["objects_received"] = json!(r.objects);
        v["bytes_received"] = json!(r.traffic.bytes_received);
        v["object_bytes_received"] = json!(r.object_bytes);
    }
    v
}

fn push(
    ctx: &Ctx,
    remote: Option<String>,
    refs: Vec<String>,
    force: bool,
    run_deploy: bool,
) -> Result<i32> {
    let (ws, store) = ctx.open(LockMode::Shared)?;
    let (name, loc, creds) = resolve_remote(&store, remote)?;
    let r = systemprompt_sync::remote::open(&loc, &creds, true)?;
    let refs = if refs.is_empty() {
        vec!["main".to_string()]
    } else {
        refs
    };
    let bar = Bar::new(ctx.quiet);
    let start = std::time::Instant::now();
    let rep = systemprompt_sync::transfer::push(&store, &*r, name.as_deref(), &refs, force, &bar);
    bar.finish();
    let rep = rep.with_context(|| format!("push to {}", r.describe()))?;
    if !ctx.json {
        for u in &rep.refs {
            ctx.note(output::ref_move(u.old, u.id, &u.name));
        }
        ctx.note(format!(
            "pushed {} objects ({}) to {} in {:.2}s; {} sent in {} requests",
            rep.objects,
            size(rep.object_bytes),
            r.describe(),
            start.elapsed().as_secs_f64(),
            size(rep.traffic.bytes_sent),
            rep.traffic.requests
        ));
    }
    // The pushed main (else the first ref pushed).
    let pushed = rep
        .refs
        .iter()
        .find(|u| u.name == "main")
        .or(rep.refs.first());
    let deploys = match pushed {
        Some(u) if run_deploy => Some(deploy::after_push(ctx, &ws, &store, u.id)?),
        _ => None,
    };
    if ctx.json {
        let mut v = transfer_json(&rep, true);
        if let Some(d) = deploys {
            v["deploys"] = json!(d);
        }
        ctx.print_json(&v)?;
    }
    Ok(0)
}

fn pull(
    ctx: &Ctx,
    remote: Option<String>,
    refs: Vec<String>,
    restore: Option<PathBuf>,
) -> Result<i32> {
    let (_, store) = ctx.open(LockMode::Shared)?;
    let (name, loc, creds) = resolve_remote(&store, remote)?;
    if let systemprompt_sync::remote::Location::Path(p) = &loc
        && systemprompt_sync::bundle::is_bundle(&ctx.cwd.join(p))
    {
        return bundle::pull(ctx, &store, name, p, refs, restore);
    }
    let r = systemprompt_sync::remote::open(&loc, &creds, false)?;
    let refs = if refs.is_empty() {
        vec!["main".to_string()]
    } else {
        refs
    };
    let bar = Bar::new(ctx.quiet);
    let start = std::time::Instant::now();
    let rep = systemprompt_sync::transfer::pull(&store, &*r, name.as_deref(), &refs, &bar);
    bar.finish();
    let rep = rep.with_context(|| format!("pull from {}", r.describe()))?;
    for u in &rep.refs {
        if let Some(w) = &u.warning {
            eprintln!("warning: {w}");
        }
    }
    if let (Some(target), Some(u)) = (&restore, rep.refs.first()) {
        let target = ctx.cwd.join(target);
        let bar = Bar::new(ctx.quiet);
        let res = systemprompt_sync::restore_snapshot(
            &store,
            &u.id.to_hex(),
            &target,
            &RestoreOptions::default(),
            &bar,
        );
        bar.finish();
        res.with_context(|| format!("restore into {}", target.display()))?;
    }
    if ctx.json {
        ctx.print_json(&transfer_json(&rep, false))?;
    } else {
        ctx.note(format!(
            "pulled {} objects ({}) from {} in {:.2}s; {} received in {} requests",
            rep.objects,
            size(rep.object_bytes),
            r.describe(),
            start.elapsed().as_secs_f64(),
            size(rep.traffic.bytes_received),
            rep.traffic.requests
        ));
    }
    Ok(0)
}
