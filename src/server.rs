//! `sp-sync serve`: the HTTP remote. Stateless over its backend (a directory
//! or an S3 prefix), with one store per tenant under it, so several servers
//! can run over one bucket (refs move only by conditional writes).
//!
//! Routes (all under `/v1/{tenant}/`, with `Authorization: Bearer TOKEN`):
//!
//! | method, path | body | answer |
//! | --- | --- | --- |
//! | `GET refs` | | `[{"name", "id"}]` |
//! | `POST refs/{name}` | `{"old": hex or null, "new": hex, "force": bool}` | 200 `{"name","id"}`; 409 `{"error","kind":"conflict","actual"}` or `{"kind":"non-fast-forward"}` |
//! | `POST has` | n × 32-byte ids | n bytes, 1 = present |
//! | `POST objects` | a pack stream, children first | `{"objects","bytes","stored_objects","stored_bytes"}` |
//! | `POST fetch` | n × (type byte, 32-byte id) | a pack stream of those objects, in order |
//!
//! | `POST gc` | | the store's gc report (see below) |
//!
//! and `GET /healthz`. A missing or unknown token is 401; a token for
//! another tenant gets 404, as does every unknown route, so nothing reveals
//! whether a tenant (or an object in it) exists. Errors are
//! `{"error": "..."}`.
//!
//! Hostile clients: the token is checked (a route layer) before any body is
//! read; small bodies (`refs/…`, `has`, `fetch`) are capped at 4 MiB and
//! must arrive within the timeout; a push's body is read asynchronously
//! with a timeout between pieces. Each tenant has a few request slots (503
//! when they are full), pushes and fetches share a global few, and the
//! accept loop keeps connections under the descriptor limit, closing idle
//! connections (no request in progress) first. A tenant's `quota` (bytes its
//! store holds) refuses a push that would pass it with 507 and removes what
//! of it was committed (a tenant with a quota has one push at a time). `POST gc` waits for the tenant's requests in flight, holds
//! off new ones (503), and runs gc with the store's exclusive lock, keeping
//! the objects of packs stored in the last hour (a push's objects arrive
//! before its ref, in another request).

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::extract::{Extension, Path as UrlPath, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::error::{IoContext, Result, SyncError};
use crate::id::{ObjectId, ObjectType};
use crate::pack::{PackReader, PackWriter};
use crate::progress::NoProgress;
use crate::remote::{COMMIT_EVERY, update_ref_checked};
use crate::store::s3::S3Backend;
use crate::store::{Backend, LockMode, Store};

/// The tokens file: `[tenants.NAME] tokens = ["..."]`, optionally
/// `read_tokens = ["..."]` (tokens that may only read: list refs, fetch,
/// negotiate; never push, move or delete a ref, or gc) and
/// `quota = "10GiB"` (or a number of bytes).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensFile {
    /// Each tenant's tokens and quota, by tenant name.
    #[serde(default)]
    pub tenants: HashMap<String, TenantTokens>,
}

/// One tenant's `[tenants.NAME]`. (A key it does not know, `token =`,
/// is an error, not a tenant no token opens.)
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantTokens {
    /// Bearer tokens that may use the tenant.
    #[serde(default)]
    pub tokens: Vec<String>,
    /// Bearer tokens that may only read the tenant (a CI job that restores
    /// a cache, a pull request's runner): no push, ref move or gc.
    #[serde(default)]
    pub read_tokens: Vec<String>,
    /// The most its store may hold (none: no limit).
    #[serde(default)]
    pub quota: Option<Size>,
}

/// A size: a number of bytes, or a string like `"10GiB"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Size {
    /// A number of bytes.
    Bytes(u64),
    /// A size with a unit: `10GiB`, `500MB`.
    Text(String),
}

/// Parses `"512"`, `"64KiB"`, `"10 GiB"`, `"2TB"` (KB, MB… are powers of
/// 1000; KiB, MiB… of 1024; K, M, G, T alone are powers of 1024).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// How `serve` was started.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The address to listen on (`HOST:PORT`; port 0: any free port).
    pub listen: String,
    /// A directory, or `s3://BUCKET/PREFIX`.
    pub data: String,
    /// The tokens file (`[tenants.NAME] tokens = […]`); none: every tenant is open.
    pub tokens: Option<PathBuf>,
    /// The largest request body accepted for `objects` (others: 4 MiB).
    pub max_body: u64,
    /// How long a client may take to send its headers, a small body, or
    /// the next piece of a push; also how long a connection may sit idle.
    pub timeout: Duration,
    /// Requests of one tenant in flight at once (more: 503).
    pub tenant_requests: usize,
    /// When a tenant's `main` moves, run its due deploy targets.
    pub deploy_on_push: bool,
}

impl ServeOptions {
    /// Defaults for everything but where to listen and the data.
    pub fn new(listen: &str, data: &str) -> ServeOptions {
        ServeOptions {
            listen: listen.to_string(),
            data: data.to_string(),
            tokens: None,
            max_body: DEFAULT_MAX_BODY,
            timeout: Duration::from_secs(30),
            tenant_requests: 8,
            deploy_on_push: false,
        }
    }
}

/// The default `--max-body`.
pub const DEFAULT_MAX_BODY: u64 = 4 << 30;

enum Data {
    Dir(PathBuf),
    S3(String),
}

struct AppState {
    data: Data,
    /// (token, tenant); None: no authentication (every tenant open).
    tokens: Option<Vec<Token>>,
    quotas: HashMap<String, u64>,
    stores: Mutex<HashMap<String, Arc<Store>>>,
    opening: Mutex<()>,
    max_body: u64,
    timeout: Duration,
    tenant_requests: usize,
    /// Each tenant's request slots.
    tenants: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Every tenant request in flight (each may hold a blocking thread).
    all: Arc<Semaphore>,
    /// Pushes and fetches in flight (each holds a blocking thread for long).
    heavy: Arc<Semaphore>,
    /// Per tenant with a quota: one push at a time (so that the quota is
    /// checked against what is stored, and a refused push can be removed).
    quota_pushes: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// `--deploy-on-push`: the tenants' deploys.
    deploys: Option<Arc<crate::deploy::DeployQueue>>,
}

/// The largest `refs/…`, `has` or `fetch` body (the client sends at most
/// 2 MiB: 65,536 ids).
pub const SMALL_BODY: usize = 4 << 20;
/// Tenant requests in flight, all tenants together.
const MAX_REQUESTS: usize = 256;
/// Pushes and fetches in flight, all tenants together (well under tokio's
/// 512 blocking threads, so short requests always find one).
const MAX_HEAVY: usize = 64;

/// Compares in time that depends only on the lengths.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn valid_tenant(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 64
        && !t.starts_with('.')
        && t.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
}

struct ApiError(StatusCode, serde_json::Value);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry = matches!(
            self.0,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        );
        let mut r = (self.0, Json(self.1)).into_response();
        if retry {
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        r
    }
}

fn err(status: StatusCode, msg: impl Into<String>) -> ApiError {
    ApiError(status, json!({"error": msg.into()}))
}

fn not_found() -> ApiError {
    err(StatusCode::NOT_FOUND, "not found")
}

fn busy(msg: &str) -> ApiError {
    err(StatusCode::SERVICE_UNAVAILABLE, msg)
}

/// Maps library errors to answers; internal details stay in the log.
fn from_sync(e: SyncError) -> ApiError {
    match e {
        SyncError::RefConflict { actual, .. } => ApiError(
            StatusCode::CONFLICT,
            json!({"error": "the ref moved", "kind": "conflict", "actual": actual}),
        ),
        SyncError::NonFastForward { .. } => ApiError(
            StatusCode::CONFLICT,
            json!({"error": e.to_string(), "kind": "non-fast-forward"}),
        ),
        SyncError::CorruptObject { .. }
        | SyncError::CorruptFile { .. }
        | SyncError::MissingObject { .. }
        | SyncError::Invalid(_)
        | SyncError::UnsafeName { .. } => err(StatusCode::BAD_REQUEST, e.to_string()),
        SyncError::NotFound(_) | SyncError::NoStore(_) => not_found(),
        other => {
            tracing::error!("{other}");
            err(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

/// A request's slots (its tenant's and the global one), held until the
/// work it started is done.
#[derive(Clone)]
struct Permit(#[allow(dead_code)] Arc<(OwnedSemaphorePermit, OwnedSemaphorePermit)>);

impl AppState {
    /// Checks the request's token against the tenant in its path, and
    /// that it may write when the request does (`write`).
    fn authorize(
        &self,
        headers: &HeaderMap,
        tenant: &str,
        write: bool,
    ) -> std::result::Result<(), ApiError> {
        if !valid_tenant(tenant) {
            return Err(not_found());
        }
        let Some(tokens) = &self.tokens else {
            return Ok(());
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| err(StatusCode::UNAUTHORIZED, "a bearer token is required"))?;
        // Look at every token (no early exit), comparing in constant time.
        let mut owner: Option<&Token> = None;
        for t in tokens {
            if ct_eq(t.token.as_bytes(), given.as_bytes()) {
                owner = Some(t);
            }
        }
        match owner {
            None => Err(err(StatusCode::UNAUTHORIZED, "unknown token")),
            Some(o) if o.tenant != tenant => Err(not_found()),
            Some(o) if write && !o.write => Err(err(
                StatusCode::FORBIDDEN,
                "this token may only read this tenant",
            )),
            Some(_) => Ok(()),
        }
    }

    /// The tenant's request slots.
    fn tenant_slots(&self, tenant: &str) -> Arc<Semaphore> {
        let mut m = match self.tenants.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if m.len() > 4096 {
            // Without tokens, tenant names are unbounded: forget idle ones.
            let full = self.tenant_requests;
            m.retain(|_, s| s.available_permits() < full);
        }
        m.entry(tenant.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.tenant_requests)))
            .clone()
    }

    /// The tenant's store; `create` makes it on first write.
    fn store(&self, tenant: &str, create: bool) -> Result<Option<Arc<Store>>> {
        if let Ok(m) = self.stores.lock()
            && let Some(s) = m.get(tenant)
        {
            return Ok(Some(s.clone()));
        }
        // One opening (or creation) at a time in this process.
        let _guard = self
            .opening
            .lock()
            .map_err(|_| SyncError::Invalid("store cache poisoned".into()))?;
        if let Ok(m) = self.stores.lock()
            && let Some(s) = m.get(tenant)
        {
            return Ok(Some(s.clone()));
        }
        let store = match &self.data {
            Data::Dir(d) => {
                let p = d.join(tenant);
                if !p.join("store.toml").exists() {
                    if !create {
                        return Ok(None);
                    }
                    Store::init(&p)?;
                }
                Store::open(&p, LockMode::Shared)?
            }
            Data::S3(url) => {
                let backend: Arc<dyn Backend> = Arc::new(S3Backend::new(
                    &format!("{}/{tenant}", url.trim_end_matches('/')),
                    &[],
                )?);
                if backend.get("store.toml")?.is_none() {
                    if !create {
                        return Ok(None);
                    }
                    Store::init_backend(&*backend)?;
                }
                Store::open_backend(backend, LockMode::Shared)?
            }
        };
        let store = Arc::new(store);
        let mut m = self
            .stores
            .lock()
            .map_err(|_| SyncError::Invalid("store cache poisoned".into()))?;
        Ok(Some(m.entry(tenant.to_string()).or_insert(store).clone()))
    }

    /// Forgets the tenant's open store (releasing its shared lock once
    /// nothing else holds it).
    fn close_store(&self, tenant: &str) {
        if let Ok(mut m) = self.stores.lock() {
            m.remove(tenant);
        }
    }
}

/// Bytes under a directory (a store's files), not following links.
/// For a tenant with a quota, its lock: one push at a time, and no ref
/// moves during a push, which a push refused past the quota removes the
/// packs of (audit round 18: a ref set meanwhile to a snapshot in such a
/// pack was left naming a missing object). A ref update waiting for it
/// then finds the store as the push left it.
async fn quota_lock(
    st: &AppState,
    tenant: &str,
) -> std::result::Result<Option<tokio::sync::OwnedMutexGuard<()>>, ApiError> {
    if !st.quotas.contains_key(tenant) {
        return Ok(None);
    }
    let m = {
        let mut m = match st.quota_pushes.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        m.entry(tenant.to_string()).or_default().clone()
    };
    match tokio::time::timeout(st.timeout, m.lock_owned()).await {
        Ok(g) => Ok(Some(g)),
        Err(_) => Err(busy(
            "another push to this tenant is in progress; try again",
        )),
    }
}

/// What a tenant's store holds, as its quota counts it: its directory on
/// disk; in a bucket (whose sizes cost requests to list), the objects the
/// store indexes, as stored.
fn held_bytes(data: &Data, tenant: &str, store: &Store) -> Result<u64> {
    match data {
        Data::Dir(d) => dir_size(&d.join(tenant)),
        Data::S3(_) => Ok(store.stored_bytes()),
    }
}

/// Bytes a store directory takes: its files, and a block for each
/// directory (refs with long names make many: audit round 18).
fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0u64;
    crate::store::walk_dir(dir, &mut |_, m| {
        total += if m.is_dir() { 4096 } else { m.len() };
        true
    })?;
    Ok(total)
}

type St = State<Arc<AppState>>;

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, ApiError> + Send + 'static,
) -> std::result::Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("worker failed: {e}");
            Err(err(StatusCode::INTERNAL_SERVER_ERROR, "internal error"))
        }
    }
}

/// Runs before every tenant route, before any body is read: checks the
/// token, then takes one of the tenant's request slots.
async fn guard(State(st): St, mut req: Request, next: Next) -> Response {
    let tenant = req
        .uri()
        .path()
        .strip_prefix("/v1/")
        .and_then(|r| r.split('/').next())
        .unwrap_or_default()
        .to_string();
    // What changes the tenant's store: a push's objects, a ref's move or
    // removal, gc. The rest reads.
    let write = {
        let rest = req
            .uri()
            .path()
            .strip_prefix("/v1/")
            .and_then(|r| r.split_once('/'))
            .map_or("", |(_, rest)| rest);
        rest == "objects"
            || rest == "gc"
            || (rest.starts_with("refs/") && req.method() != Method::GET)
    };
    if let Err(e) = st.authorize(req.headers(), &tenant, write) {
        return e.into_response();
    }
    let Ok(global) = st.all.clone().try_acquire_owned() else {
        return busy("the server is busy; try again").into_response();
    };
    let Ok(own) = st.tenant_slots(&tenant).try_acquire_owned() else {
        return busy("too many requests of this tenant in flight; try again").into_response();
    };
    req.extensions_mut().insert(Permit(Arc::new((own, global))));
    next.run(req).await
}

/// A body's declared length, if any.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Reads a small body: at most `limit` bytes, all within `timeout`.
async fn read_small(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: Duration,
) -> std::result::Result<Bytes, ApiError> {
    let too_large = || {
        err(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body exceeds {limit} bytes"),
        )
    };
    if content_length(headers).is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut s = body.into_data_stream();
    let mut out: Vec<u8> = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, s.next()).await {
            Err(_) => {
                return Err(err(
                    StatusCode::REQUEST_TIMEOUT,
                    "the request body did not arrive in time",
                ));
            }
            Ok(None) => return Ok(Bytes::from(out)),
            Ok(Some(Err(e))) => {
                return Err(err(
                    StatusCode::BAD_REQUEST,
                    format!("reading the request body: {e}"),
                ));
            }
            Ok(Some(Ok(b))) => {
                if out.len() + b.len() > limit {
                    return Err(too_large());
                }
                out.extend_from_slice(&b);
            }
        }
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn list_refs(
    State(st): St,
    UrlPath(tenant): UrlPath<String>,
    Extension(permit): Extension<Permit>,
) -> Response {
    let r = blocking(move || {
        let _permit = permit;
        let Some(store) = st.store(&tenant, false).map_err(from_sync)? else {
            return Ok(Vec::new());
        };
        store.list_refs().map_err(from_sync)
    })
    .await;
    match r {
        Ok(refs) => Json(
            refs.into_iter()
                .map(|(n, id)| json!({"name": n, "id": id}))
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
struct RefUpdateBody {
    old: Option<String>,
    new: String,
    #[serde(default)]
    force: bool,
}

/// A ref update's body: the old and new ids and the force flag.
pub fn parse_ref_body(
    body: &[u8],
) -> std::result::Result<(Option<ObjectId>, ObjectId, bool), String> {
    let req: RefUpdateBody =
        serde_json::from_slice(body).map_err(|e| format!("bad request body: {e}"))?;
    let parse = |s: &str| ObjectId::from_hex(s).ok_or_else(|| format!("bad id {s:?}"));
    let old = req.old.as_deref().map(parse).transpose()?;
    Ok((old, parse(&req.new)?, req.force))
}

/// A `has` body: 32-byte ids.
pub fn parse_has_body(body: &[u8]) -> std::result::Result<Vec<ObjectId>, String> {
    if !body.len().is_multiple_of(32) {
        return Err("the body must be 32-byte ids".into());
    }
    Ok(body
        .chunks_exact(32)
        .filter_map(ObjectId::from_slice)
        .collect())
}

/// A `fetch` body: (type byte, 32-byte id) pairs.
pub fn parse_fetch_body(body: &[u8]) -> std::result::Result<Vec<FetchEntry>, String> {
    let mut ids = Vec::with_capacity(body.len() / 33);
    let mut rest = body;
    while let Some((&t, tail)) = rest.split_first() {
        // Bit 7 of the type byte: a base id follows (§9.2).
        let with_base = t & 0x80 != 0;
        let n = if with_base { 64 } else { 32 };
        if tail.len() < n {
            return Err("the body must be (type, id[, base]) entries".into());
        }
        let tag = ObjectType::from_u8(t & 0x7f)
            .ok_or_else(|| format!("unknown object type {}", t & 0x7f))?;
        let id = ObjectId::from_slice(&tail[..32]).ok_or("bad id")?;
        let base = if with_base {
            Some(ObjectId::from_slice(&tail[32..64]).ok_or("bad id")?)
        } else {
            None
        };
        ids.push((tag, id, base));
        rest = &tail[n..];
    }
    Ok(ids)
}

/// One object a `fetch` asks for: its type, its id, and a base the client
/// holds that the answer may make it a delta against.
pub type FetchEntry = (ObjectType, ObjectId, Option<ObjectId>);

/// The body of `POST bases`: the old snapshot (the client holds it) and the
/// new one.
pub fn parse_bases_body(body: &[u8]) -> std::result::Result<(ObjectId, ObjectId), String> {
    if body.len() != 64 {
        return Err("the body must be two ids".into());
    }
    let old = ObjectId::from_slice(&body[..32]).ok_or("bad id")?;
    let new = ObjectId::from_slice(&body[32..]).ok_or("bad id")?;
    Ok((old, new))
}

/// Pairs `bases` answers at most (64 bytes each).
const MAX_BASES: usize = 1 << 20;

/// `POST bases`: the objects of snapshot `new` that differ from the
/// object at the same place in `old`, each with that object (n × 64 bytes:
/// new id, old id); empty when the store lacks either snapshot.
async fn bases(
    State(st): St,
    UrlPath(tenant): UrlPath<String>,
    Extension(permit): Extension<Permit>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = async {
        let body = read_small(&headers, body, SMALL_BODY, st.timeout).await?;
        let (old, new) = parse_bases_body(&body).map_err(|e| err(StatusCode::BAD_REQUEST, e))?;
        let Ok(heavy) = st.heavy.clone().try_acquire_owned() else {
            return Err(busy("too many pushes and fetches in flight; try again"));
        };
        let st2 = st.clone();
        blocking(move || {
            let _permits = (permit, heavy);
            let store = st2
                .store(&tenant, false)
                .map_err(from_sync)?
                .ok_or_else(not_found)?;
            let has = |id: &ObjectId| {
                store
                    .location(id)
                    .is_some_and(|l| l.tag == ObjectType::Snapshot)
            };
            if !has(&old) || !has(&new) {
                store.refresh().map_err(from_sync)?;
            }
            let mut out = Vec::new();
            if has(&old) && has(&new) {
                let pairs =
                    crate::transfer::same_place_pairs(&store, &old, &new).map_err(from_sync)?;
                for (n, o) in pairs.iter().take(MAX_BASES) {
                    out.extend_from_slice(&n.0);
                    out.extend_from_slice(&o.0);
                }
            }
            Ok(out)
        })
        .await
    }
    .await;
    match r {
        Ok(b) => ([(header::CONTENT_TYPE, "application/octet-stream")], b).into_response(),
        Err(e) => e.into_response(),
    }
}

/// A ref name that is a directory of an existing ref's, or whose directory
/// is an existing ref (`main/sub` next to `main`), cannot be stored.
fn name_clash<'a>(refs: &'a [(String, ObjectId)], name: &str) -> Option<&'a str> {
    refs.iter().map(|(n, _)| n.as_str()).find(|n| {
        *n != name
            && (name
                .strip_prefix(*n)
                .is_some_and(|rest| rest.starts_with('/'))
                || n.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('/')))
    })
}

async fn update_ref(
    State(st): St,
    UrlPath((tenant, name)): UrlPath<(String, String)>,
    Extension(permit): Extension<Permit>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = async {
        let body = read_small(&headers, body, SMALL_BODY, st.timeout).await?;
        let (old, new, force) =
            parse_ref_body(&body).map_err(|e| err(StatusCode::BAD_REQUEST, e))?;
        let quota_guard = quota_lock(&st, &tenant).await?;
        blocking(move || {
            let _permits = (permit, quota_guard);
            let store = st
                .store(&tenant, false)
                .map_err(from_sync)?
                .ok_or_else(|| err(StatusCode::BAD_REQUEST, format!("unknown snapshot {new}")))?;
            let refs = store.list_refs().map_err(from_sync)?;
            // A new ref takes room too: none past the quota.
            if let (None, Some(&q)) = (old, st.quotas.get(&tenant)) {
                let mut used = held_bytes(&st.data, &tenant, &store).map_err(from_sync)?;
                // In a bucket, each ref too, as its key and id (in a
                // directory, its file is counted already).
                if let Data::S3(_) = &st.data {
                    used += refs
                        .iter()
                        .map(|(n, _)| (n.len() + "refs/".len() + 64) as u64)
                        .sum::<u64>();
                }
                if used >= q {
                    return Err(err(
                        StatusCode::INSUFFICIENT_STORAGE,
                        format!("the tenant's store holds its quota of {q} bytes: no new ref"),
                    ));
                }
            }
            if let Some(other) = name_clash(&refs, &name) {
                return Err(ApiError(
                    StatusCode::CONFLICT,
                    json!({
                        "error": format!("ref {name} clashes with ref {other} (one names the other's directory)"),
                        "kind": "name-clash",
                    }),
                ));
            }
            update_ref_checked(&store, &name, old, new, force).map_err(from_sync)?;
            if name == "main"
                && let Some(q) = &st.deploys
            {
                q.main_moved(&tenant, store.clone(), new);
            }
            Ok(json!({"name": name, "id": new}))
        })
        .await
    }
    .await;
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
struct RefDeleteBody {
    old: String,
}

/// A ref deletion's body: the id the ref must still name.
pub fn parse_ref_delete_body(body: &[u8]) -> std::result::Result<ObjectId, String> {
    let req: RefDeleteBody =
        serde_json::from_slice(body).map_err(|e| format!("bad request body: {e}"))?;
    ObjectId::from_hex(&req.old).ok_or_else(|| format!("bad id {:?}", req.old))
}

/// `DELETE refs/NAME` with `{"old": ID}`: removes the ref by
/// compare-and-swap (409 when it names something else, 404 when absent).
async fn delete_ref(
    State(st): St,
    UrlPath((tenant, name)): UrlPath<(String, String)>,
    Extension(permit): Extension<Permit>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = async {
        let body = read_small(&headers, body, SMALL_BODY, st.timeout).await?;
        let old = parse_ref_delete_body(&body).map_err(|e| err(StatusCode::BAD_REQUEST, e))?;
        blocking(move || {
            let _permit = permit;
            let store = st
                .store(&tenant, false)
                .map_err(from_sync)?
                .ok_or_else(|| {
                    from_sync(SyncError::RefConflict {
                        name: name.clone(),
                        expected: Some(old),
                        actual: None,
                    })
                })?;
            crate::store::refs::validate_ref_name(&name).map_err(from_sync)?;
            store
                .update_ref(&name, Some(Some(old)), None)
                .map_err(from_sync)?;
            Ok(json!({"name": name, "deleted": old}))
        })
        .await
    }
    .await;
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn has(
    State(st): St,
    UrlPath(tenant): UrlPath<String>,
    Extension(permit): Extension<Permit>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = async {
        let body = read_small(&headers, body, SMALL_BODY, st.timeout).await?;
        let ids = parse_has_body(&body).map_err(|e| err(StatusCode::BAD_REQUEST, e))?;
        blocking(move || {
            let _permit = permit;
            let Some(store) = st.store(&tenant, false).map_err(from_sync)? else {
                return Ok(vec![0u8; ids.len()]);
            };
            let mut out: Vec<u8> = ids.iter().map(|id| u8::from(store.contains(id))).collect();
            if out.contains(&0) {
                store.refresh().map_err(from_sync)?;
                for (i, id) in ids.iter().enumerate() {
                    out[i] |= u8::from(store.contains(id));
                }
            }
            Ok(out)
        })
        .await
    }
    .await;
    match r {
        Ok(v) => ([(header::CONTENT_TYPE, "application/octet-stream")], v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Counts bytes and stops at the limit.
struct Limited<R> {
    inner: R,
    left: u64,
    over: Arc<AtomicBool>,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            self.over.store(true, Ordering::SeqCst);
            return Err(std::io::Error::other("request body too large"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// A body's pieces, each awaited for at most `timeout`; an error ends it.
fn timed_stream(
    body: Body,
    first: Option<Bytes>,
    timeout: Duration,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    let state = (first, Some(body.into_data_stream()));
    futures::stream::unfold(state, move |(first, s)| async move {
        if let Some(b) = first {
            return Some((Ok(b), (None, s)));
        }
        let mut s = s?;
        match tokio::time::timeout(timeout, s.next()).await {
            Err(_) => Some((
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no request body data for {}s", timeout.as_secs()),
                )),
                (None, None),
            )),
            Ok(None) => None,
            Ok(Some(Ok(b))) => Some((Ok(b), (None, Some(s)))),
            Ok(Some(Err(e))) => Some((
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    e,
                )),
                (None, None),
            )),
        }
    })
}

/// What an incoming object may add to the store, at most: its payload, or
/// for a delta the whole object it stands for; plus a record's overhead.
fn stored_cost(o: &crate::pack::StoredObject) -> u64 {
    let body = if o.flags == crate::pack::FLAG_DELTA {
        u64::from(o.ulen) + 64
    } else {
        o.payload.len() as u64
    };
    body + 64
}

async fn objects(
    State(st): St,
    UrlPath(tenant): UrlPath<String>,
    Extension(permit): Extension<Permit>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = async {
        let max = st.max_body;
        if content_length(&headers).is_some_and(|n| n > max) {
            return Err(err(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body exceeds {max} bytes"),
            ));
        }
        let Ok(heavy) = st.heavy.clone().try_acquire_owned() else {
            return Err(busy("too many pushes and fetches in flight; try again"));
        };
        // The first piece is awaited here, without a blocking thread.
        let mut data = body.into_data_stream();
        let first = match tokio::time::timeout(st.timeout, data.next()).await {
            Err(_) => {
                return Err(err(
                    StatusCode::REQUEST_TIMEOUT,
                    "the request body did not arrive in time",
                ));
            }
            Ok(None) => Bytes::new(),
            Ok(Some(Ok(b))) => b,
            Ok(Some(Err(e))) => {
                return Err(err(
                    StatusCode::BAD_REQUEST,
                    format!("reading the request body: {e}"),
                ));
            }
        };
        let stream = timed_stream(Body::from_stream(data), Some(first), st.timeout);
        let reader = SyncIoBridge::new(StreamReader::new(Box::pin(stream)));
        let over = Arc::new(AtomicBool::new(false));
        let mut limited = Limited {
            inner: reader,
            left: max,
            over: over.clone(),
        };
        let quota = st.quotas.get(&tenant).copied();
        let one_push = quota_lock(&st, &tenant).await?;
        blocking(move || {
            let _permits = (permit, heavy, one_push);
            let store = st
                .store(&tenant, true)
                .map_err(from_sync)?
                .ok_or_else(not_found)?;
            let quota_err = |q: u64| {
                err(
                    StatusCode::INSUFFICIENT_STORAGE,
                    format!("the push would exceed the tenant's quota of {q} bytes; nothing of it was stored"),
                )
            };
            // With a quota: what the tenant's store holds, and what is left.
            let budget = match quota {
                Some(q) => {
                    let used = held_bytes(&st.data, &tenant, &store).map_err(from_sync)?;
                    Some((q, q.saturating_sub(used)))
                }
                None => None,
            };
            let over_quota = AtomicBool::new(false);
            let packs_before: std::collections::HashSet<ObjectId> =
                store.packs().iter().map(|p| p.name).collect();
            let r = PackReader::new(&mut limited, "request body").and_then(|pr| {
                let mut counted = 0u64;
                let mut objs = pr.into_objects().map(|o| {
                    let o = o?;
                    if let Some((_, left)) = budget
                        && !store.contains(&o.id)
                    {
                        counted += stored_cost(&o);
                        if counted > left {
                            over_quota.store(true, Ordering::SeqCst);
                            return Err(SyncError::Invalid("quota exceeded".into()));
                        }
                    }
                    Ok(o)
                });
                store.receive(&mut objs, COMMIT_EVERY, &NoProgress)
            });
            match r {
                Ok(stats) => Ok(stats),
                Err(_) if over.load(Ordering::SeqCst) => Err(err(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body exceeds {max} bytes"),
                )),
                Err(_) if over_quota.load(Ordering::SeqCst) => {
                    // The parts committed during the push go too (pushes to
                    // this tenant are one at a time, so they are its own).
                    let new: Vec<ObjectId> = store
                        .packs()
                        .iter()
                        .map(|p| p.name)
                        .filter(|n| !packs_before.contains(n))
                        .collect();
                    if !new.is_empty() {
                        let b = store.backend();
                        let r = (|| -> Result<()> {
                            for n in &new {
                                b.delete(&Store::idx_key(n))?;
                            }
                            b.sync("packs")?;
                            for n in &new {
                                b.delete(&Store::pack_key(n))?;
                            }
                            b.sync("packs")
                        })();
                        if let Err(e) = r {
                            tracing::error!("removing a refused push's packs: {e}");
                        }
                        drop(store);
                        // Reopened (without those packs) by the next request.
                        st.close_store(&tenant);
                    }
                    // Read the rest (bounded by --max-body and the timeouts),
                    // so that the client gets to read the answer.
                    let _ = std::io::copy(&mut limited, &mut std::io::sink());
                    Err(quota_err(budget.map(|b| b.0).unwrap_or_default()))
                }
                Err(SyncError::Io { source, .. }) => Err(err(
                    StatusCode::BAD_REQUEST,
                    format!("reading the request body: {source}"),
                )),
                Err(e) => Err(from_sync(e)),
            }
        })
        .await
    }
    .await;
    match r {
        Ok(stats) => Json(stats).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The most bytes of a response one message of [`ChannelWriter`] holds.
const CHANNEL_PIECE: usize = 256 << 10;

/// Streams pack bytes from a blocking writer into a response body; a
/// client that stops reading for the timeout ends it. Each message holds
/// at most [`CHANNEL_PIECE`] bytes, so a slow reader holds at most the
/// channel's 8 of them, whatever the objects' sizes (a 16 MiB object was
/// one message, and 8 of them queued 128 MiB per reader).
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::result::Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
    rt: tokio::runtime::Handle,
    timeout: Duration,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(CHANNEL_PIECE.saturating_sub(self.buf.len()));
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHANNEL_PIECE {
            self.flush()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let b = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(CHANNEL_PIECE),
        ));
        match self
            .rt
            .block_on(tokio::time::timeout(self.timeout, self.tx.send(Ok(b))))
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "client went away",
            )),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client stopped reading",
            )),
        }
    }
}

async fn fetch(
    State(st): St,
    UrlPath(tenant): UrlPath<String>,
    Extension(permit): Extension<Permit>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = async {
        let body = read_small(&headers, body, SMALL_BODY, st.timeout).await?;
        let ids = parse_fetch_body(&body).map_err(|e| err(StatusCode::BAD_REQUEST, e))?;
        // An object asked for twice is refused: one 16 MiB chunk asked for
        // 4096 times made a 130 KB request cost gigabytes (audit round 18).
        // sp-sync never asks twice.
        let mut asked = std::collections::HashSet::with_capacity(ids.len());
        if let Some((_, id, _)) = ids.iter().find(|(_, id, _)| !asked.insert(*id)) {
            return Err(err(
                StatusCode::BAD_REQUEST,
                format!("{id} is asked for more than once"),
            ));
        }
        let Ok(heavy) = st.heavy.clone().try_acquire_owned() else {
            return Err(busy("too many pushes and fetches in flight; try again"));
        };
        let st2 = st.clone();
        let store = blocking(move || {
            st2.store(&tenant, false)
                .map_err(from_sync)?
                .ok_or_else(not_found)
        })
        .await?;
        // Everything asked for must be here before the answer starts.
        if let Some((t, id, _)) = ids
            .iter()
            .find(|(t, id, _)| store.location(id).is_none_or(|l| l.tag != *t))
        {
            let (t, id) = (*t, *id);
            let s2 = store.clone();
            blocking(move || s2.refresh().map_err(from_sync)).await?;
            if store.location(&id).is_none_or(|l| l.tag != t) {
                return Err(err(StatusCode::NOT_FOUND, format!("no {t} {id}")));
            }
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<std::result::Result<Bytes, std::io::Error>>(8);
        let rt = tokio::runtime::Handle::current();
        let timeout = st.timeout;
        tokio::task::spawn_blocking(move || {
            let _permits = (permit, heavy);
            let out = ChannelWriter {
                tx: tx.clone(),
                buf: Vec::with_capacity(CHANNEL_PIECE),
                rt: rt.clone(),
                timeout,
            };
            let r = (|| -> Result<()> {
                let mut w = PackWriter::new(out).ctx("writing", "response")?;
                for (t, id, base) in &ids {
                    // A delta against the base the client holds when it
                    // is smaller; else the object alone.
                    let o = match base {
                        Some(b) => crate::transfer::wire_object(&store, *t, id, Some(b))?,
                        None => store.read_stored(id)?,
                    };
                    w.add(&o).ctx("writing", "response")?;
                }
                w.finish().ctx("writing", "response")?;
                Ok(())
            })();
            if let Err(e) = r {
                tracing::warn!("fetch: {e}");
                // Break the body: the client sees a truncated stream.
                let _ = rt.block_on(tokio::time::timeout(
                    timeout,
                    tx.send(Err(std::io::Error::other(e.to_string()))),
                ));
            }
        });
        let stream =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
        Ok(Body::from_stream(stream))
    }
    .await;
    match r {
        Ok(body) => (
            [(header::CONTENT_TYPE, crate::remote::http::PACK_TYPE)],
            body,
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

/// What `POST gc` keeps however unreached: packs younger than this.
const SERVER_GC_KEEP_RECENT: std::time::Duration = std::time::Duration::from_secs(3600);

/// `POST gc`: waits for the tenant's other requests to finish, holds off
/// new ones, closes the shared store and runs gc with an exclusive lock.
async fn gc(
    State(st): St,
    UrlPath(tenant): UrlPath<String>,
    Extension(permit): Extension<Permit>,
) -> Response {
    let r = async {
        let Data::Dir(dir) = &st.data else {
            return Err(err(
                StatusCode::BAD_REQUEST,
                "gc runs only on a directory store (object storage has no process lock)",
            ));
        };
        let dir = dir.join(&tenant);
        let slots = st.tenant_slots(&tenant);
        let n = u32::try_from(st.tenant_requests.saturating_sub(1)).unwrap_or(u32::MAX);
        let rest = match tokio::time::timeout(st.timeout, slots.acquire_many_owned(n)).await {
            Ok(Ok(p)) => p,
            _ => {
                return Err(busy(
                    "the tenant's requests did not finish in time for gc; try again",
                ));
            }
        };
        blocking(move || {
            let _permits = (permit, rest);
            if !dir.join("store.toml").exists() {
                return Err(not_found());
            }
            st.close_store(&tenant);
            // Another process using the tenant's store (a second server on
            // the same directory, a local command) is waited for up to the
            // server's timeout, then 503 (audit 22: 600 s, whatever
            // --timeout said).
            let store = Store::open_within(&dir, LockMode::Exclusive, Some(st.timeout)).map_err(
                |e| match e {
                    SyncError::Locked(_) => busy(
                        "other processes are using the tenant's store; gc did not run; try again",
                    ),
                    e => from_sync(e),
                },
            )?;
            // A push is several requests: its objects are stored before the
            // ref that reaches them, and gc may run in between. What came in
            // the last hour stays.
            let rep = crate::store::gc::gc_with(
                &store,
                &crate::store::gc::GcOptions {
                    keep_recent: Some(SERVER_GC_KEEP_RECENT),
                    ..Default::default()
                },
                &NoProgress,
            )
            .map_err(from_sync)?;
            drop(store);
            serde_json::to_value(&rep).map_err(|e| {
                tracing::error!("gc report: {e}");
                err(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            })
        })
        .await
    }
    .await;
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /v1/TENANT/deploys`: the deploys `--deploy-on-push` ran for the
/// tenant (404 when the server does not deploy).
async fn deploys(State(st): St, UrlPath(tenant): UrlPath<String>) -> Response {
    match &st.deploys {
        Some(q) => Json(q.status_json(&tenant)).into_response(),
        None => err(
            StatusCode::NOT_FOUND,
            "this server does not deploy (no --deploy-on-push)",
        )
        .into_response(),
    }
}

/// `GET /v1/TENANT/deploys/ID/log`: a deploy's output (its last MiB).
async fn deploy_log(State(st): St, UrlPath((tenant, id)): UrlPath<(String, String)>) -> Response {
    let found = st
        .deploys
        .as_ref()
        .zip(id.parse::<u64>().ok())
        .and_then(|(q, id)| q.log(&tenant, id, 1 << 20));
    match found {
        Some(b) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], b).into_response(),
        None => not_found().into_response(),
    }
}

async fn fallback() -> ApiError {
    not_found()
}

/// A bearer token: the tenant it opens, and whether it may write.
#[derive(Debug, Clone)]
pub struct Token {
    /// The token itself.
    pub token: String,
    /// The tenant it opens.
    pub tenant: String,
    /// Whether it may push, move or delete refs and gc (else only read).
    pub write: bool,
}

/// Loads the tokens file: every token, its tenant and its access.
pub fn load_tokens(path: &Path) -> Result<Vec<Token>> {
    Ok(load_tokens_file(path)?.0)
}

/// Each tenant's quota, in bytes.
pub type Quotas = HashMap<String, u64>;

/// Loads the tokens file: (token, tenant) pairs and each tenant's quota.
pub fn load_tokens_file(path: &Path) -> Result<(Vec<Token>, Quotas)> {
    let text = std::fs::read_to_string(path).ctx("reading", path)?;
    let f: TokensFile = toml::from_str(&text).map_err(|e| {
        // A value of the wrong type is named by its place, never shown: it
        // may be a token (audit round 18: `tokens = "SECRET…"` was echoed).
        let m = e.message();
        let shows_value = ["invalid type", "invalid value", "invalid length"]
            .iter()
            .any(|w| m.contains(w));
        let line = e
            .span()
            .map(|r| text.get(..r.start).map_or(0, |t| t.matches('\n').count()) + 1);
        let why = if shows_value {
            "a value of the wrong type (not shown: it may be a token); tokens and \
             read_tokens are lists of strings, quota a size such as \"10GiB\""
                .to_string()
        } else {
            m.to_string()
        };
        SyncError::Invalid(match line {
            Some(n) => format!("{}: line {n}: {why}", path.display()),
            None => format!("{}: {why}", path.display()),
        })
    })?;
    let mut out = Vec::new();
    let mut quotas = HashMap::new();
    for (tenant, t) in f.tenants {
        if !valid_tenant(&tenant) {
            return Err(SyncError::Invalid(format!(
                "{}: invalid tenant name {tenant:?}",
                path.display()
            )));
        }
        let all = t
            .tokens
            .into_iter()
            .map(|tok| (tok, true))
            .chain(t.read_tokens.into_iter().map(|tok| (tok, false)));
        for (tok, write) in all {
            if tok.len() < 16 {
                return Err(SyncError::Invalid(format!(
                    "{}: a token of tenant {tenant} is shorter than 16 characters",
                    path.display()
                )));
            }
            if out.iter().any(|o: &Token| o.token == tok) {
                return Err(SyncError::Invalid(format!(
                    "{}: a token of tenant {tenant} is listed twice",
                    path.display()
                )));
            }
            out.push(Token {
                token: tok,
                tenant: tenant.clone(),
                write,
            });
        }
        match t.quota {
            None => {}
            Some(Size::Bytes(n)) => {
                quotas.insert(tenant.clone(), n);
            }
            Some(Size::Text(s)) => {
                let n = parse_size(&s).ok_or_else(|| {
                    SyncError::Invalid(format!(
                        "{}: tenant {tenant}: quota {s:?} is not a size (like \"10GiB\")",
                        path.display()
                    ))
                })?;
                quotas.insert(tenant.clone(), n);
            }
        }
    }
    Ok((out, quotas))
}

/// The application (for tests that run it in-process).
pub fn router(opts: &ServeOptions) -> Result<Router> {
    let data = if opts.data.starts_with("s3://") {
        crate::store::s3::parse_url(&opts.data)?;
        Data::S3(opts.data.clone())
    } else {
        let d = PathBuf::from(&opts.data);
        std::fs::create_dir_all(&d).ctx("creating", &d)?;
        Data::Dir(d)
    };
    let (tokens, quotas) = match &opts.tokens {
        Some(p) => {
            let (t, q) = load_tokens_file(p)?;
            (Some(t), q)
        }
        None => {
            tracing::warn!("no --tokens: every tenant is open to everyone");
            (None, HashMap::new())
        }
    };
    let state = Arc::new(AppState {
        data,
        tokens,
        quotas,
        stores: Mutex::new(HashMap::new()),
        opening: Mutex::new(()),
        max_body: opts.max_body,
        timeout: opts.timeout,
        tenant_requests: opts.tenant_requests.max(1),
        tenants: Mutex::new(HashMap::new()),
        all: Arc::new(Semaphore::new(MAX_REQUESTS)),
        heavy: Arc::new(Semaphore::new(MAX_HEAVY)),
        quota_pushes: Mutex::new(HashMap::new()),
        deploys: opts.deploy_on_push.then(|| {
            // Beside the tenants (a name starting with `.` is no tenant's).
            let logs = match &opts.data {
                d if d.starts_with("s3://") => std::env::temp_dir().join("sp-sync-deploy-logs"),
                d => PathBuf::from(d).join(".deploy-logs"),
            };
            tracing::warn!(
                "--deploy-on-push: pushed sp-sync.toml files run shell commands here; every token holder can run them"
            );
            crate::deploy::DeployQueue::new(logs)
        }),
    });
    let tenant_routes = Router::new()
        .route("/v1/{tenant}/refs", get(list_refs))
        .route(
            "/v1/{tenant}/refs/{*name}",
            post(update_ref).delete(delete_ref),
        )
        .route("/v1/{tenant}/has", post(has))
        .route("/v1/{tenant}/objects", post(objects))
        .route("/v1/{tenant}/fetch", post(fetch))
        .route("/v1/{tenant}/bases", post(bases))
        .route("/v1/{tenant}/gc", post(gc))
        .route("/v1/{tenant}/deploys", get(deploys))
        .route("/v1/{tenant}/deploys/{id}/log", get(deploy_log))
        .route_layer(middleware::from_fn_with_state(state.clone(), guard));
    Ok(Router::new()
        .route("/healthz", get(healthz))
        .merge(tenant_routes)
        .fallback(fallback)
        .with_state(state))
}

/// A connection's requests in flight and its closer.
type Slot = (Arc<AtomicUsize>, Arc<tokio::sync::Notify>);

/// Open connections: each with a count of its requests in flight and a
/// way to close it.
#[derive(Default)]
struct Conns {
    next: AtomicU64,
    map: Mutex<BTreeMap<u64, Slot>>,
}

impl Conns {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Slot>> {
        match self.map.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        }
    }

    fn add(&self) -> (u64, Arc<AtomicUsize>, Arc<tokio::sync::Notify>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let busy = Arc::new(AtomicUsize::new(0));
        let kill = Arc::new(tokio::sync::Notify::new());
        self.lock().insert(id, (busy.clone(), kill.clone()));
        (id, busy, kill)
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    /// Closes the oldest connection with no request in progress (waiting
    /// for its headers, or idle between requests).
    fn evict_idle(&self) -> bool {
        let mut m = self.lock();
        let Some(id) = m
            .iter()
            .find(|(_, (busy, _))| busy.load(Ordering::SeqCst) == 0)
            .map(|(id, _)| *id)
        else {
            return false;
        };
        if let Some((_, kill)) = m.remove(&id) {
            kill.notify_one();
        }
        true
    }
}

/// Marks a connection busy while a request (and its response body) lives.
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn new(b: Arc<AtomicUsize>) -> Busy {
        b.fetch_add(1, Ordering::SeqCst);
        Busy(b)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Connections served at once: half the descriptor limit (raised to the
/// hard limit first), leaving the rest for stores' files.
fn connection_cap() -> usize {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let l = getrlimit(Resource::Nofile);
    let want = l.maximum.unwrap_or(1 << 20).min(1 << 20);
    if l.current.is_some_and(|c| c < want) {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(want),
                maximum: l.maximum,
            },
        );
    }
    let cur = getrlimit(Resource::Nofile).current.unwrap_or(1 << 20);
    usize::try_from(cur.saturating_sub(32) / 2)
        .unwrap_or(usize::MAX)
        .clamp(4, 16_384)
}

/// Runs the server until SIGTERM or SIGINT; finishes requests in flight.
/// `on_listen` learns the bound address (port 0 picks a free one).
pub fn serve(opts: &ServeOptions, on_listen: impl FnOnce(SocketAddr)) -> Result<()> {
    let app = router(opts)?;
    let cap = connection_cap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sp-sync-serve")
        .build()
        .ctx("starting", "the server runtime")?;
    // The router is dropped last, outside the runtime: an S3 backend owns a
    // runtime of its own, which must not be dropped from async code.
    let served = app.clone();
    let r = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&opts.listen)
            .await
            .ctx("listening on", &opts.listen)?;
        let addr = listener.local_addr().ctx("listening on", &opts.listen)?;
        on_listen(addr);
        accept_loop(listener, served, cap, opts.timeout).await;
        Ok(())
    });
    drop(rt);
    drop(app);
    r
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: Router,
    cap: usize,
    timeout: Duration,
) {
    use hyper::server::conn::http1;
    use hyper_util::rt::{TokioIo, TokioTimer};
    let conns = Arc::new(Conns::default());
    let mut tasks = tokio::task::JoinSet::new();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_signal = shutdown();
    tokio::pin!(stop_signal);
    loop {
        while tasks.try_join_next().is_some() {}
        let accepted = tokio::select! {
            _ = &mut stop_signal => break,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors (or a transient error): make room.
                tracing::warn!("accept: {e}");
                conns.evict_idle();
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if conns.len() >= cap && !conns.evict_idle() {
            // Every connection has a request in progress: refuse this one.
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let (id, busy, kill) = conns.add();
        let svc_app = hyper_util::service::TowerToHyperService::new(app.clone());
        let conns2 = conns.clone();
        let mut stop = stop_rx.clone();
        tasks.spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let guard = Busy::new(busy.clone());
                    let fut = hyper::service::Service::call(&svc_app, req);
                    async move {
                        let resp = fut.await?;
                        if resp.body().size_hint().exact().is_some() {
                            return Ok::<_, std::convert::Infallible>(resp);
                        }
                        // A streamed answer keeps the connection busy until it ends.
                        let (parts, body) = resp.into_parts();
                        let s = body.into_data_stream().map(move |x| {
                            let _g = &guard;
                            x
                        });
                        Ok(Response::from_parts(parts, Body::from_stream(s)))
                    }
                });
            let mut b = http1::Builder::new();
            b.timer(TokioTimer::new()).header_read_timeout(timeout);
            let conn = b.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!("connection: {e}");
                    }
                }
                _ = kill.notified() => {}
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
                }
            }
            conns2.remove(id);
        });
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(60), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
}

async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    let mut int = match signal(SignalKind::interrupt()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A response's bytes reach the body in order, in messages of at most
    /// `CHANNEL_PIECE` bytes however large one write is: a reader that
    /// stops reading holds at most the channel's 8 of them. A writer whose
    /// reader stops for the timeout fails, TimedOut.
    #[test]
    fn channel_writer_sends_bounded_pieces_in_order() {
        // (As the server's: the writer runs on a blocking thread of it.)
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .unwrap();
        let (tx, mut rx) =
            tokio::sync::mpsc::channel::<std::result::Result<Bytes, std::io::Error>>(8);
        let handle = rt.handle().clone();
        let big: Vec<u8> = (0..(5 << 20) + 123).map(|i| (i % 251) as u8).collect();
        let want = [&b"head"[..], &big, b"tail"].concat();
        let writer = std::thread::spawn(move || {
            let _in = handle.enter();
            let mut w = ChannelWriter {
                tx,
                buf: Vec::new(),
                rt: handle,
                timeout: Duration::from_secs(30),
            };
            w.write_all(b"head")?;
            w.write_all(&big)?;
            w.write_all(b"tail")?;
            w.flush()
        });
        let got = rt.block_on(async {
            let mut got = Vec::new();
            while let Some(m) = rx.recv().await {
                let m = m.unwrap();
                assert!(m.len() <= CHANNEL_PIECE, "a message of {} bytes", m.len());
                got.extend_from_slice(&m);
            }
            got
        });
        writer.join().unwrap().unwrap();
        assert!(got == want, "{} bytes, want {}", got.len(), want.len());

        // Nobody reads: the 9th message waits for the timeout, then fails.
        let _in = rt.enter();
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let mut w = ChannelWriter {
            tx,
            buf: Vec::new(),
            rt: rt.handle().clone(),
            timeout: Duration::from_millis(100),
        };
        let e = w.write_all(&vec![0u8; 9 * CHANNEL_PIECE]).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        drop(rx);
    }
}
