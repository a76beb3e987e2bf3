//! The commands and their arguments (clap), each turned into the options
//! of its `systemprompt_sync::commands` call.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use systemprompt_sync::commands::*;

options!(SnapshotArgs => SnapshotCmdOptions { paths, message, ref_name, excludes, host, no_cache, db, tables, schema, key_by_all_columns });
options!(RestoreArgs => RestoreCmdOptions { spec, target, delete, db, tables, schema, key_by_all_columns, keep_setid });
options!(LogArgs => LogOptions { reference, max_count });
options!(LsArgs => LsOptions { spec, recursive, long });
options!(DiffArgs => DiffCmdOptions { a, b, db, tables, schema, key_by_all_columns, paths, stat, patch, exit_code });
options!(FsckArgs => FsckCmdOptions { read_data, rebuild_index });
options!(PushArgs => PushOptions { remote, refs, force, deploy });
options!(PullArgs => PullOptions { remote, refs, restore });

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Create a store: DIR/.sp-sync (DIR defaults to here), or exactly --store DIR.
    Init { dir: Option<PathBuf> },
    /// Snapshot paths (default: the working tree) and move a ref.
    Snapshot(SnapshotArgs),
    /// Snapshots, newest first.
    Log(LogArgs),
    /// List a tree: SNAP[:PATH].
    Ls(LsArgs),
    /// Write a file's bytes to stdout: SNAP:PATH.
    Cat { spec: String },
    /// What changed between snapshots A and B, or A and now (files and databases; --db: that one).
    Diff(DiffArgs),
    /// Materialize SNAP[:PATH] into TARGET (default: where it was taken from) and/or --db FILE.
    Restore(RestoreArgs),
    /// Check every reachable object.
    Fsck(FsckArgs),
    /// Remove what no ref reaches (--repack: also store objects as deltas against their older versions).
    Gc {
        /// Say what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Write every live object again, storing each file chunk, directory
        /// node and row-map node that has an older version in an earlier
        /// snapshot as a zstd delta against it when that saves enough.
        #[arg(long)]
        repack: bool,
    },
    /// Manage refs.
    Ref {
        #[command(subcommand)]
        cmd: RefArgs,
    },
    /// Print a shell completion script.
    Completions { shell: clap_complete::Shell },
    /// Manage remotes (a path or file://, http(s)://HOST/TENANT, s3://BUCKET/PREFIX).
    Remote {
        #[command(subcommand)]
        cmd: RemoteArgs,
    },
    /// Send what the remote lacks, then move its refs (fast-forward only unless --force).
    Push(PushArgs),
    /// Fetch what is missing, record remotes/REMOTE/REF, fast-forward local refs.
    Pull(PullArgs),
    /// Offline bundles: create, verify, import (a bundle is also a remote for pull).
    Bundle {
        #[command(subcommand)]
        cmd: super::bundle::BundleCmd,
    },
    /// CI artifact cache on a remote: save, restore (with prefix fallback), list, prune.
    Cache {
        #[command(subcommand)]
        cmd: super::cache::CacheCmd,
    },
    /// Keep folders of markdown files ([[collection]] in sp-sync.toml) in step with tables.
    Local {
        #[command(subcommand)]
        cmd: LocalCmd,
    },
    /// Run the HTTP remote.
    Serve(ServeArgs),
    /// Run a deploy target's steps when what it watches changed.
    Deploy(super::deploy::DeployArgs),
}

#[derive(Args, Debug)]
pub struct SnapshotArgs {
    /// What to snapshot; one directory becomes the root, several appear under their names.
    paths: Vec<PathBuf>,
    /// A message recorded with the snapshot.
    #[arg(short, long)]
    message: Option<String>,
    /// The ref to move.
    #[arg(long = "ref", default_value = "main", value_name = "NAME")]
    ref_name: String,
    /// Leave out paths matching this gitignore-style pattern (repeatable).
    #[arg(long = "exclude", value_name = "GLOB")]
    excludes: Vec<String>,
    /// Record this host name instead of the machine's.
    #[arg(long)]
    host: Option<String>,
    /// Read every file and every row of a PostgreSQL table, ignoring the stat and row caches.
    #[arg(long)]
    no_cache: bool,
    /// Also snapshot this database: a SQLite file or postgres://… (default: sp-sync.toml's [[db]]).
    #[arg(long, value_name = "FILE|URL")]
    db: Option<PathBuf>,
    /// Only these tables of --db (repeatable).
    #[arg(long = "table", value_name = "T", requires = "db")]
    tables: Vec<String>,
    /// The PostgreSQL schema of a postgres:// --db (default public).
    #[arg(long, value_name = "NAME", requires = "db")]
    schema: Option<String>,
    /// Key PostgreSQL tables without a primary key by all their columns.
    #[arg(long, requires = "db")]
    key_by_all_columns: bool,
}

#[derive(Args, Debug)]
pub struct LogArgs {
    #[arg(value_name = "REF")]
    reference: Option<String>,
    /// At most this many.
    #[arg(short = 'n', long)]
    max_count: Option<usize>,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    spec: String,
    /// Descend into subdirectories.
    #[arg(short, long)]
    recursive: bool,
    /// Show mode, size and modification time.
    #[arg(short, long)]
    long: bool,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    a: String,
    b: Option<String>,
    /// Compare A's tables with this database now (a SQLite file or postgres://…).
    #[arg(long, value_name = "FILE|URL", conflicts_with = "b")]
    db: Option<PathBuf>,
    /// The PostgreSQL schema of a postgres:// --db (default public).
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
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    spec: String,
    target: Option<PathBuf>,
    /// Also remove what the snapshot lacks (files; rows of its tables).
    #[arg(long)]
    delete: bool,
    /// Restore the tables into this database (SQLite file or postgres://…; one transaction).
    #[arg(long, value_name = "FILE|URL")]
    db: Option<PathBuf>,
    /// The PostgreSQL schema of a postgres:// --db (default public).
    #[arg(long, value_name = "NAME", requires = "db")]
    schema: Option<String>,
    /// Key PostgreSQL tables without a primary key by all their columns.
    #[arg(long, requires = "db")]
    key_by_all_columns: bool,
    /// Only these tables (repeatable); without a TARGET (or with one that
    /// holds the store), only tables: no files.
    #[arg(long = "table", value_name = "T")]
    tables: Vec<String>,
    /// Restore setuid and setgid bits (dropped by default).
    #[arg(long)]
    keep_setid: bool,
}

#[derive(Args, Debug)]
pub struct FsckArgs {
    /// Re-hash every stored chunk and check every pack's checksum.
    #[arg(long)]
    read_data: bool,
    /// Rewrite every pack's index from the pack.
    #[arg(long)]
    rebuild_index: bool,
}

#[derive(Subcommand, Debug)]
pub enum RefArgs {
    /// Every ref and the snapshot it names.
    List,
    /// Point NAME at SNAP (creating or moving it).
    Set { name: String, snap: String },
    /// Remove NAME.
    Delete { name: String },
}

impl From<RefArgs> for RefCmd {
    fn from(a: RefArgs) -> RefCmd {
        match a {
            RefArgs::List => RefCmd::List,
            RefArgs::Set { name, snap } => RefCmd::Set { name, snap },
            RefArgs::Delete { name } => RefCmd::Delete { name },
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum RemoteArgs {
    /// Add a remote.
    Add {
        name: String,
        url: String,
        /// Read an HTTP remote's token from this environment variable
        /// (SP_SYNC_TOKEN, when set, still comes first).
        #[arg(long, value_name = "VAR")]
        token_env: Option<String>,
    },
    /// List remotes.
    List,
    /// Remove a remote.
    Remove { name: String },
}

impl From<RemoteArgs> for RemoteCmd {
    fn from(a: RemoteArgs) -> RemoteCmd {
        match a {
            RemoteArgs::Add {
                name,
                url,
                token_env,
            } => RemoteCmd::Add {
                name,
                url,
                token_env,
            },
            RemoteArgs::List => RemoteCmd::List,
            RemoteArgs::Remove { name } => RemoteCmd::Remove { name },
        }
    }
}

#[derive(Args, Debug)]
pub struct PushArgs {
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
}

#[derive(Args, Debug)]
pub struct PullArgs {
    remote: Option<String>,
    /// Refs to pull (default: main).
    refs: Vec<String>,
    /// Then restore the pulled snapshot into TARGET.
    #[arg(long, value_name = "TARGET")]
    restore: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum LocalCmd {
    /// One line per key whose file and row differ (as to-db would apply them).
    Diff(LocalDiffArgs),
    /// Carry the files' edits since the last sync to the database, in one transaction.
    ToDb(LocalSyncArgs),
    /// Carry the database's edits since the last sync to the files.
    ToDisk(LocalSyncArgs),
}

#[derive(Args, Debug)]
pub struct LocalDiffArgs {
    /// Only this collection (repeatable; default: all of them).
    #[arg(long, value_name = "NAME")]
    collection: Vec<String>,
    /// Exit with status 1 when there are differences.
    #[arg(long)]
    exit_code: bool,
}

#[derive(Args, Debug)]
pub struct LocalSyncArgs {
    /// Only this collection (repeatable; default: all of them).
    #[arg(long, value_name = "NAME")]
    collection: Vec<String>,
    /// Print the plan; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// On a conflict (or with no record of the last sync), the source side wins.
    #[arg(long)]
    force: bool,
}

options!(LocalDiffArgs => LocalCmdOptions { collection, exit_code } ..Default::default());
options!(LocalSyncArgs => LocalCmdOptions { collection, dry_run, force } ..Default::default());

impl LocalCmd {
    /// The options of `local`.
    pub fn options(self, place: Place) -> LocalCmdOptions {
        let (mode, o) = match self {
            LocalCmd::Diff(a) => (LocalMode::Diff, a.options(place)),
            LocalCmd::ToDb(a) => (LocalMode::ToDb, a.options(place)),
            LocalCmd::ToDisk(a) => (LocalMode::ToDisk, a.options(place)),
        };
        LocalCmdOptions { mode, ..o }
    }
}

#[derive(Args, Debug)]
pub struct ServeArgs {
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
    #[arg(long, default_value_t = DEFAULT_MAX_BODY)]
    max_body: u64,
    /// Seconds a client may take to send headers, a body or a push's next piece, or sit idle.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    timeout: u64,
    /// Requests of one tenant in flight at once (more are answered 503).
    #[arg(long, value_name = "N", default_value_t = 8)]
    tenant_requests: usize,
    /// When a tenant's main moves, run its due deploy targets here (from its sp-sync.toml).
    #[arg(long)]
    deploy_on_push: bool,
}

impl ServeArgs {
    pub fn options(self) -> ServeOptions {
        let ServeArgs {
            listen,
            data,
            tokens,
            max_body,
            timeout,
            tenant_requests,
            deploy_on_push,
        } = self;
        let timeout = std::time::Duration::from_secs(timeout.max(1));
        ServeOptions {
            listen,
            data,
            tokens,
            max_body,
            timeout,
            tenant_requests,
            deploy_on_push,
        }
    }
}
