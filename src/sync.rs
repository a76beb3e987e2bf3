//! The API of the crate sp-sync descends from: [`SyncConfig`],
//! [`SyncService`] and [`SyncDirection`], on top of the snapshot, transfer,
//! restore and local-sync calls.
//!
//! A service keeps a local store (by default `SERVICES/.sp-sync`) and
//! talks to an `sp-sync serve` at `{api_url}/{tenant}` with a bearer token:
//!
//! - [`SyncDirection::Push`]: the services folder is snapshotted (ref
//!   `files`), the database too (ref `database`), and both are pushed;
//! - [`SyncDirection::Pull`]: both refs are pulled, the files restored into
//!   the services folder (nothing is deleted unless
//!   [`SyncConfigBuilder::with_delete`]), the tables merged into the
//!   database in one transaction;
//! - [`SyncDirection::ToDisk`] / [`SyncDirection::ToDatabase`]: the
//!   markdown collections that `SERVICES/sp-sync.toml` configures are
//!   written from the database to files, or from files to the database.
//!
//! The work is the blocking library code, run on tokio's blocking pool, so
//! the async methods never stall a runtime.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::collection::Direction;
use crate::db::DbSource;
use crate::error::{Result, SyncError};
use crate::id::ObjectId;
use crate::local::{LocalOptions, LocalReport};
use crate::progress::NoProgress;
use crate::remote::{Credentials, Location, Remote};
use crate::restore::RestoreOptions;
use crate::snapshot::SnapshotOptions;
use crate::store::{LockMode, STORE_DIR, Store};

/// The ref a services folder is pushed and pulled under.
pub const FILES_REF: &str = "files";
/// The ref a database is pushed and pulled under.
pub const DATABASE_REF: &str = "database";
/// The environment variable read when no database is configured.
pub const DATABASE_URL: &str = "DATABASE_URL";

/// Which way a sync goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncDirection {
    /// Local to remote: snapshot, then push.
    Push,
    /// Remote to local: pull, then restore.
    Pull,
    /// The database's collections to markdown files.
    ToDisk,
    /// Markdown files to the database's collections.
    ToDatabase,
}

/// Everything a [`SyncService`] needs; made by [`SyncConfig::builder`].
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// The tenant on the server.
    pub tenant: String,
    /// The server's base URL (`https://sync.example.com`).
    pub api_url: String,
    /// The bearer token the server checks.
    pub token: String,
    /// The services folder that is pushed, or pulled into.
    pub services_path: PathBuf,
    /// Which way to sync.
    pub direction: SyncDirection,
    /// Report what would happen; move nothing.
    pub dry_run: bool,
    /// The database: a SQLite path or `sqlite://PATH` URL (`None`: the
    /// `DATABASE_URL` environment variable, if set).
    pub database: Option<String>,
    /// The collections of a local sync (empty: all).
    pub collections: Vec<String>,
    /// The message of the snapshots a push takes.
    pub message: String,
    /// The local store (`None`: `SERVICES/.sp-sync`).
    pub store_path: Option<PathBuf>,
    /// A remote to use instead of `{api_url}/{tenant}`: a store path,
    /// `file://`, `s3://` or `http(s)://HOST/TENANT` URL.
    pub remote: Option<String>,
    /// Pull: delete files the snapshot lacks, and rows it lacks (in its tables).
    pub delete: bool,
    /// Push: move the remote refs even when that drops history. Local
    /// sync: conflicting keys take the source side.
    pub force: bool,
}

/// Builds a [`SyncConfig`].
#[derive(Debug, Clone)]
pub struct SyncConfigBuilder(SyncConfig);

impl SyncConfig {
    /// Starts a configuration: direction `Push`, not a dry run, no database
    /// (but `DATABASE_URL`), every collection.
    pub fn builder(
        tenant: impl Into<String>,
        api_url: impl Into<String>,
        token: impl Into<String>,
        services_path: impl Into<PathBuf>,
    ) -> SyncConfigBuilder {
        SyncConfigBuilder(SyncConfig {
            tenant: tenant.into(),
            api_url: api_url.into(),
            token: token.into(),
            services_path: services_path.into(),
            direction: SyncDirection::Push,
            dry_run: false,
            database: None,
            collections: Vec::new(),
            message: String::new(),
            store_path: None,
            remote: None,
            delete: false,
            force: false,
        })
    }
}

impl SyncConfigBuilder {
    /// Which way to sync.
    pub fn with_direction(mut self, direction: SyncDirection) -> Self {
        self.0.direction = direction;
        self
    }

    /// Report what would happen and move nothing.
    pub fn with_dry_run(mut self, dry_run: bool) -> Self {
        self.0.dry_run = dry_run;
        self
    }

    /// The database: a SQLite file path or a `sqlite://PATH` URL.
    pub fn with_database(mut self, url_or_path: impl Into<String>) -> Self {
        self.0.database = Some(url_or_path.into());
        self
    }

    /// Only these collections in a local sync.
    pub fn with_collections<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.0.collections = names.into_iter().map(Into::into).collect();
        self
    }

    /// The message of the snapshots a push takes.
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.0.message = message.into();
        self
    }

    /// Where the local store lives (default `SERVICES/.sp-sync`).
    pub fn with_store_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.0.store_path = Some(path.into());
        self
    }

    /// A remote other than `{api_url}/{tenant}` (a store path, `file://`,
    /// `s3://` or `http(s)://HOST/TENANT`), as in tests.
    pub fn with_remote(mut self, remote: impl Into<String>) -> Self {
        self.0.remote = Some(remote.into());
        self
    }

    /// Pull: also delete what the snapshot lacks.
    pub fn with_delete(mut self, delete: bool) -> Self {
        self.0.delete = delete;
        self
    }

    /// Push: allow a ref to move backwards; local sync: take the source
    /// side of conflicting keys.
    pub fn with_force(mut self, force: bool) -> Self {
        self.0.force = force;
        self
    }

    /// The configuration.
    pub fn build(self) -> SyncConfig {
        self.0
    }
}

/// What one sync moved.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncResult {
    /// `files`, `database` or `local`.
    pub kind: &'static str,
    /// The direction.
    pub direction: Option<SyncDirection>,
    /// Whether it was a dry run (nothing moved).
    pub dry_run: bool,
    /// The snapshot pushed, pulled (or that would be).
    pub snapshot: Option<ObjectId>,
    /// The snapshot the remote (push) or local store (pull) had before.
    pub previous: Option<ObjectId>,
    /// Objects sent or received.
    pub objects: u64,
    /// Bytes of objects sent or received (as stored, compressed).
    pub object_bytes: u64,
    /// Files in the snapshot (push), or written by the restore (pull).
    pub files: u64,
    /// Bytes of file contents in the snapshot, or written.
    pub bytes: u64,
    /// Rows per table in the snapshot (push of a database).
    pub tables: std::collections::BTreeMap<String, u64>,
    /// Rows inserted, updated, deleted (pull of a database, local to-db).
    pub rows_inserted: u64,
    /// See `rows_inserted`.
    pub rows_updated: u64,
    /// See `rows_inserted`.
    pub rows_deleted: u64,
    /// Files written, removed (pull with delete, local to-disk).
    pub files_removed: u64,
    /// Push: nothing changed since the last snapshot pushed from here, so
    /// no new snapshot was written (the remote is brought up to date with
    /// that one).
    pub up_to_date: bool,
    /// Local sync: the full report (keys, actions, conflicts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalReport>,
}

/// Runs syncs as a [`SyncConfig`] says.
#[derive(Debug, Clone)]
pub struct SyncService {
    config: Arc<SyncConfig>,
}

impl SyncService {
    /// A service for `config`.
    pub fn new(config: SyncConfig) -> SyncService {
        SyncService {
            config: Arc::new(config),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SyncConfig {
        &self.config
    }

    /// Push or pull the files, and the database when one is configured;
    /// for `ToDisk`/`ToDatabase`, the local sync.
    pub async fn sync_all(&self) -> Result<Vec<SyncResult>> {
        self.blocking(|c| match c.direction {
            SyncDirection::ToDisk | SyncDirection::ToDatabase => Ok(vec![local(c)?]),
            _ => {
                let mut out = vec![files(c)?];
                if database_path(c)?.is_some() {
                    out.push(database(c)?);
                }
                Ok(out)
            }
        })
        .await
    }

    /// Push or pull the services folder.
    pub async fn sync_files(&self) -> Result<SyncResult> {
        self.blocking(files).await
    }

    /// Push or pull the database (`MissingConfig` naming `DATABASE_URL`
    /// when none is configured).
    pub async fn sync_database(&self) -> Result<SyncResult> {
        self.blocking(database).await
    }

    /// Sync the collections between files and database, in the configured
    /// direction (`ToDisk` or `ToDatabase`).
    pub async fn sync_local(&self) -> Result<SyncResult> {
        self.blocking(local).await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&SyncConfig) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let config = Arc::clone(&self.config);
        tokio::task::spawn_blocking(move || f(&config))
            .await
            .map_err(|e| SyncError::CommandFailed {
                command: "sync".into(),
                status: "panicked".into(),
                output: e.to_string(),
            })?
    }
}

fn store_dir(c: &SyncConfig) -> PathBuf {
    c.store_path
        .clone()
        .unwrap_or_else(|| c.services_path.join(STORE_DIR))
}

/// The local store, made on first use.
fn open_store(c: &SyncConfig) -> Result<Store> {
    let dir = store_dir(c);
    if !dir.join("store.toml").exists() {
        Store::init(&dir)?;
    }
    Store::open(&dir, LockMode::Shared)
}

fn open_remote(c: &SyncConfig, create: bool) -> Result<Arc<dyn Remote>> {
    let (loc, token) = match &c.remote {
        Some(r) => (Location::parse(r)?, None),
        None => {
            if c.api_url.is_empty() {
                return Err(SyncError::MissingConfig("api_url".into()));
            }
            if c.tenant.is_empty() {
                return Err(SyncError::MissingConfig("tenant".into()));
            }
            let loc =
                Location::parse(&format!("{}/{}", c.api_url.trim_end_matches('/'), c.tenant))?;
            (loc, Some(c.token.clone()).filter(|t| !t.is_empty()))
        }
    };
    if let Location::Http { base, tenant } = &loc
        && c.remote.is_none()
    {
        // The configured token, never one from the environment.
        let token = token.ok_or_else(|| SyncError::MissingConfig("token".into()))?;
        return Ok(Arc::new(crate::remote::http::HttpRemote::new(
            base,
            tenant,
            Some(token),
        )?));
    }
    crate::remote::open(
        &loc,
        &Credentials {
            token,
            s3: Vec::new(),
        },
        create,
    )
}

/// The database file the configuration names (or `DATABASE_URL`).
fn database_path(c: &SyncConfig) -> Result<Option<PathBuf>> {
    let url = match &c.database {
        Some(u) => u.clone(),
        None => match std::env::var(DATABASE_URL) {
            Ok(u) if !u.is_empty() => u,
            _ => return Ok(None),
        },
    };
    let path = if let Some(p) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .or_else(|| url.strip_prefix("file:"))
    {
        p.to_string()
    } else if url.contains("://") {
        return Err(SyncError::Database(format!(
            "{url}: only SQLite databases (a path or sqlite://PATH) are supported"
        )));
    } else {
        url
    };
    if path.is_empty() {
        return Err(SyncError::MissingConfig(DATABASE_URL.into()));
    }
    Ok(Some(PathBuf::from(path)))
}

fn require_database(c: &SyncConfig) -> Result<PathBuf> {
    database_path(c)?.ok_or_else(|| SyncError::MissingConfig(DATABASE_URL.into()))
}

fn wrong_direction(c: &SyncConfig, what: &str) -> SyncError {
    SyncError::Invalid(format!(
        "{what} syncs Push or Pull, not {:?} (use sync_local)",
        c.direction
    ))
}

fn files(c: &SyncConfig) -> Result<SyncResult> {
    let mut skip = Vec::new();
    if let Some(db) = database_path(c)? {
        skip.push(db);
    }
    match c.direction {
        SyncDirection::Push => {
            std::fs::metadata(&c.services_path)
                .map_err(|e| SyncError::io("reading", &c.services_path, e))?;
            let opts = SnapshotOptions {
                sources: vec![c.services_path.clone()],
                message: c.message.clone(),
                ref_name: FILES_REF.into(),
                skip,
                root: Some(c.services_path.clone()),
                skip_if_unchanged: true,
                ..Default::default()
            };
            push(c, opts, "files")
        }
        SyncDirection::Pull => pull(c, FILES_REF, "files", |store, id, r| {
            // The store, and the database with SQLite's files beside it:
            // the same rule as `sources::protected_paths`.
            let mut protect = vec![canonical(&absolute(&store_dir(c)))];
            for db in &skip {
                protect.extend(with_sidecars(db).map(|p| canonical(&absolute(&p))));
            }
            std::fs::create_dir_all(&c.services_path)
                .map_err(|e| SyncError::io("creating", &c.services_path, e))?;
            let opts = RestoreOptions {
                delete: c.delete,
                protect,
                ..Default::default()
            };
            let rep =
                crate::restore_snapshot(store, &id.to_hex(), &c.services_path, &opts, &NoProgress)?;
            r.files = rep.files;
            r.bytes = rep.bytes;
            r.files_removed = rep.deleted;
            Ok(())
        }),
        _ => Err(wrong_direction(c, "sync_files")),
    }
}

fn database(c: &SyncConfig) -> Result<SyncResult> {
    let path = require_database(c)?;
    match c.direction {
        SyncDirection::Push => {
            if !path.is_file() {
                return Err(SyncError::Database(format!(
                    "{}: no such database file",
                    path.display()
                )));
            }
            // A snapshot of the tables alone: its file tree is an empty folder.
            let empty = tempfile::tempdir()
                .map_err(|e| SyncError::io("creating", "a temporary folder", e))?;
            let opts = SnapshotOptions {
                sources: vec![empty.path().to_path_buf()],
                message: c.message.clone(),
                ref_name: DATABASE_REF.into(),
                use_stat_cache: false,
                dbs: vec![DbSource {
                    path: absolute(&path),
                    tables: Vec::new(),
                    missing_ok: false,
                }],
                skip_if_unchanged: true,
                ..Default::default()
            };
            push(c, opts, "database")
        }
        SyncDirection::Pull => pull(c, DATABASE_REF, "database", |store, id, r| {
            let snap = crate::names::load_snapshot(store, id)?;
            let chunker = crate::chunker::Chunker::new(&store.config().chunker);
            let rep = crate::db::restore::restore_db(
                store,
                &snap.tables,
                &path,
                &chunker,
                &crate::db::restore::DbRestoreOptions {
                    delete: c.delete,
                    tables: Vec::new(),
                    settings: crate::checkout::sqlite_settings_for(&snap, snap.tables.keys()),
                },
                &NoProgress,
            )?;
            r.rows_inserted = rep.inserted;
            r.rows_updated = rep.updated;
            r.rows_deleted = rep.deleted;
            Ok(())
        }),
        _ => Err(wrong_direction(c, "sync_database")),
    }
}

use crate::sources::{canonical, with_sidecars};

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn push(c: &SyncConfig, opts: SnapshotOptions, kind: &'static str) -> Result<SyncResult> {
    let store = open_store(c)?;
    let remote = open_remote(c, !c.dry_run)?;
    let snap = crate::snapshot(&store, &opts, &NoProgress)?;
    let mut r = SyncResult {
        kind,
        direction: Some(SyncDirection::Push),
        dry_run: c.dry_run,
        snapshot: Some(snap.id),
        files: snap.files,
        bytes: snap.bytes,
        tables: snap.tables,
        up_to_date: snap.unchanged,
        ..Default::default()
    };
    if c.dry_run {
        // The snapshot is local; the remote is only asked what it holds.
        r.previous = remote
            .list_refs()?
            .into_iter()
            .find(|(n, _)| n == &opts.ref_name)
            .map(|(_, id)| id);
        return Ok(r);
    }
    let rep = crate::transfer::push(
        &store,
        &*remote,
        None,
        std::slice::from_ref(&opts.ref_name),
        c.force,
        &NoProgress,
    )?;
    r.objects = rep.objects;
    r.object_bytes = rep.object_bytes;
    r.previous = rep.refs.first().and_then(|u| u.old);
    Ok(r)
}

fn pull(
    c: &SyncConfig,
    ref_name: &str,
    kind: &'static str,
    apply: impl FnOnce(&Store, &ObjectId, &mut SyncResult) -> Result<()>,
) -> Result<SyncResult> {
    let store = open_store(c)?;
    let remote = open_remote(c, false)?;
    let mut r = SyncResult {
        kind,
        direction: Some(SyncDirection::Pull),
        dry_run: c.dry_run,
        previous: store.read_ref(ref_name)?,
        ..Default::default()
    };
    if c.dry_run {
        r.snapshot = remote
            .list_refs()?
            .into_iter()
            .find(|(n, _)| n == ref_name)
            .map(|(_, id)| id);
        return Ok(r);
    }
    let rep = crate::transfer::pull(&store, &*remote, None, &[ref_name.to_string()], &NoProgress)?;
    let u = rep
        .refs
        .first()
        .ok_or_else(|| SyncError::NotFound(format!("the remote has no ref {ref_name}")))?;
    r.snapshot = Some(u.id);
    r.objects = rep.objects;
    r.object_bytes = rep.object_bytes;
    apply(&store, &u.id, &mut r)?;
    Ok(r)
}

fn local(c: &SyncConfig) -> Result<SyncResult> {
    let direction = match c.direction {
        SyncDirection::ToDisk => Direction::ToDisk,
        SyncDirection::ToDatabase => Direction::ToDatabase,
        d => {
            return Err(SyncError::Invalid(format!(
                "a local sync goes ToDisk or ToDatabase, not {d:?}"
            )));
        }
    };
    let store = open_store(c)?;
    let opts = LocalOptions {
        collections: c.collections.clone(),
        direction: Some(direction),
        dry_run: c.dry_run,
        force: c.force,
    };
    let rep = crate::local::local(&c.services_path, Some(&store), &opts, &NoProgress)?;
    Ok(SyncResult {
        kind: "local",
        direction: Some(c.direction),
        dry_run: c.dry_run,
        rows_inserted: rep.applied.inserted,
        rows_updated: rep.applied.updated,
        rows_deleted: rep.applied.deleted,
        files: rep.applied.written,
        files_removed: rep.applied.removed_files,
        local: Some(rep),
        ..Default::default()
    })
}
