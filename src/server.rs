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
//! and `GET /healthz`. A missing or unknown token is 401; a token for
//! another tenant gets 404, as does every unknown route, so nothing reveals
//! whether a tenant (or an object in it) exists. Errors are
//! `{"error": "..."}`.

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use futures::TryStreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::error::{IoContext, Result, SyncError};
use crate::id::{ObjectId, ObjectType};
use crate::pack::{PackReader, PackWriter};
use crate::progress::NoProgress;
use crate::remote::{COMMIT_EVERY, update_ref_checked};
use crate::store::s3::S3Backend;
use crate::store::{Backend, LockMode, Store};

/// The tokens file: `[tenants.NAME] tokens = ["..."]`.
#[derive(Debug, Clone, Deserialize)]
pub struct TokensFile {
    #[serde(default)]
    pub tenants: HashMap<String, TenantTokens>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TenantTokens {
    #[serde(default)]
    pub tokens: Vec<String>,
}

/// How `serve` was started.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: String,
    /// A directory, or `s3://BUCKET/PREFIX`.
    pub data: String,
    pub tokens: Option<PathBuf>,
    /// The largest request body accepted for `objects` (others: 64 MiB).
    pub max_body: u64,
}

enum Data {
    Dir(PathBuf),
    S3(String),
}

struct AppState {
    data: Data,
    /// (token, tenant); None: no authentication (every tenant open).
    tokens: Option<Vec<(String, String)>>,
    stores: Mutex<HashMap<String, Arc<Store>>>,
    opening: Mutex<()>,
    max_body: u64,
}

const SMALL_BODY: usize = 64 << 20;

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
        (self.0, Json(self.1)).into_response()
    }
}

fn err(status: StatusCode, msg: impl Into<String>) -> ApiError {
    ApiError(status, json!({"error": msg.into()}))
}

fn not_found() -> ApiError {
    err(StatusCode::NOT_FOUND, "not found")
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

impl AppState {
    /// Checks the request's token against the tenant in its path.
    fn authorize(&self, headers: &HeaderMap, tenant: &str) -> std::result::Result<(), ApiError> {
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
        let mut owner: Option<&str> = None;
        for (t, ten) in tokens {
            if ct_eq(t.as_bytes(), given.as_bytes()) {
                owner = Some(ten);
            }
        }
        match owner {
            None => Err(err(StatusCode::UNAUTHORIZED, "unknown token")),
            Some(o) if o == tenant => Ok(()),
            Some(_) => Err(not_found()),
        }
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

async fn healthz() -> &'static str {
    "ok\n"
}

async fn list_refs(
    State(st): St,
    UrlPath(tenant): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let r = async {
        st.authorize(&headers, &tenant)?;
        let st2 = st.clone();
        blocking(move || {
            let Some(store) = st2.store(&tenant, false).map_err(from_sync)? else {
                return Ok(Vec::new());
            };
            store.list_refs().map_err(from_sync)
        })
        .await
    }
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

async fn update_ref(
    State(st): St,
    UrlPath((tenant, name)): UrlPath<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = async {
        st.authorize(&headers, &tenant)?;
        let req: RefUpdateBody = serde_json::from_slice(&body)
            .map_err(|e| err(StatusCode::BAD_REQUEST, format!("bad request body: {e}")))?;
        let parse = |s: &str| {
            ObjectId::from_hex(s)
                .ok_or_else(|| err(StatusCode::BAD_REQUEST, format!("bad id {s:?}")))
        };
        let old = req.old.as_deref().map(parse).transpose()?;
        let new = parse(&req.new)?;
        let st2 = st.clone();
        blocking(move || {
            let store = st2
                .store(&tenant, false)
                .map_err(from_sync)?
                .ok_or_else(|| err(StatusCode::BAD_REQUEST, format!("unknown snapshot {new}")))?;
            update_ref_checked(&store, &name, old, new, req.force).map_err(from_sync)?;
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

async fn has(
    State(st): St,
    UrlPath(tenant): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = async {
        st.authorize(&headers, &tenant)?;
        if !body.len().is_multiple_of(32) {
            return Err(err(StatusCode::BAD_REQUEST, "the body must be 32-byte ids"));
        }
        let st2 = st.clone();
        blocking(move || {
            let ids: Vec<ObjectId> = body
                .chunks_exact(32)
                .filter_map(ObjectId::from_slice)
                .collect();
            let Some(store) = st2.store(&tenant, false).map_err(from_sync)? else {
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

async fn objects(
    State(st): St,
    UrlPath(tenant): UrlPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = async {
        st.authorize(&headers, &tenant)?;
        let stream = body
            .into_data_stream()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::ConnectionAborted, e));
        let reader = SyncIoBridge::new(StreamReader::new(stream));
        let over = Arc::new(AtomicBool::new(false));
        let limited = Limited {
            inner: reader,
            left: st.max_body,
            over: over.clone(),
        };
        let st2 = st.clone();
        let max = st.max_body;
        blocking(move || {
            let store = st2
                .store(&tenant, true)
                .map_err(from_sync)?
                .ok_or_else(not_found)?;
            let r = PackReader::new(limited, "request body")
                .and_then(|pr| store.receive(&mut pr.into_objects(), COMMIT_EVERY, &NoProgress));
            match r {
                Ok(stats) => Ok(stats),
                Err(_) if over.load(Ordering::SeqCst) => Err(err(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body exceeds {max} bytes"),
                )),
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

/// Streams pack bytes from a blocking writer into a response body.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::result::Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 256 << 10 {
            self.flush()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let b = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(Ok(b))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}

async fn fetch(
    State(st): St,
    UrlPath(tenant): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = async {
        st.authorize(&headers, &tenant)?;
        if !body.len().is_multiple_of(33) {
            return Err(err(
                StatusCode::BAD_REQUEST,
                "the body must be (type, id) pairs",
            ));
        }
        let mut ids = Vec::with_capacity(body.len() / 33);
        for rec in body.chunks_exact(33) {
            let t = ObjectType::from_u8(rec[0]).ok_or_else(|| {
                err(
                    StatusCode::BAD_REQUEST,
                    format!("unknown object type {}", rec[0]),
                )
            })?;
            ids.push((t, ObjectId::from_slice(&rec[1..]).unwrap_or_default()));
        }
        let st2 = st.clone();
        let store = blocking(move || {
            st2.store(&tenant, false)
                .map_err(from_sync)?
                .ok_or_else(not_found)
        })
        .await?;
        // Everything asked for must be here before the answer starts.
        if let Some((t, id)) = ids
            .iter()
            .find(|(t, id)| store.location(id).is_none_or(|l| l.tag != *t))
        {
            let (t, id) = (*t, *id);
            let s2 = store.clone();
            blocking(move || s2.refresh().map_err(from_sync)).await?;
            if store.location(&id).is_none_or(|l| l.tag != t) {
                return Err(err(StatusCode::NOT_FOUND, format!("no {t} {id}")));
            }
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<std::result::Result<Bytes, std::io::Error>>(8);
        tokio::task::spawn_blocking(move || {
            let out = ChannelWriter {
                tx: tx.clone(),
                buf: Vec::with_capacity(256 << 10),
            };
            let r = (|| -> Result<()> {
                let mut w = PackWriter::new(out).ctx("writing", "response")?;
                for (_, id) in &ids {
                    let o = store.read_stored(id)?;
                    w.add(&o).ctx("writing", "response")?;
                }
                w.finish().ctx("writing", "response")?;
                Ok(())
            })();
            if let Err(e) = r {
                tracing::warn!("fetch: {e}");
                // Break the body: the client sees a truncated stream.
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
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

async fn fallback() -> ApiError {
    not_found()
}

/// Loads the tokens file: token → tenant.
pub fn load_tokens(path: &Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).ctx("reading", path)?;
    let f: TokensFile = toml::from_str(&text)
        .map_err(|e| SyncError::Invalid(format!("{}: {}", path.display(), e.message())))?;
    let mut out = Vec::new();
    for (tenant, t) in f.tenants {
        if !valid_tenant(&tenant) {
            return Err(SyncError::Invalid(format!(
                "{}: invalid tenant name {tenant:?}",
                path.display()
            )));
        }
        for tok in t.tokens {
            if tok.len() < 16 {
                return Err(SyncError::Invalid(format!(
                    "{}: a token of tenant {tenant} is shorter than 16 characters",
                    path.display()
                )));
            }
            out.push((tok, tenant.clone()));
        }
    }
    Ok(out)
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
    let tokens = match &opts.tokens {
        Some(p) => Some(load_tokens(p)?),
        None => {
            tracing::warn!("no --tokens: every tenant is open to everyone");
            None
        }
    };
    let state = Arc::new(AppState {
        data,
        tokens,
        stores: Mutex::new(HashMap::new()),
        opening: Mutex::new(()),
        max_body: opts.max_body,
    });
    Ok(Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/{tenant}/refs", get(list_refs))
        .route("/v1/{tenant}/refs/{*name}", post(update_ref))
        .route("/v1/{tenant}/has", post(has))
        .route(
            "/v1/{tenant}/objects",
            post(objects).layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/{tenant}/fetch", post(fetch))
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(SMALL_BODY))
        .with_state(state))
}

/// Runs the server until SIGTERM or SIGINT; finishes requests in flight.
/// `on_listen` learns the bound address (port 0 picks a free one).
pub fn serve(opts: &ServeOptions, on_listen: impl FnOnce(SocketAddr)) -> Result<()> {
    let app = router(opts)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sp-sync-serve")
        .build()
        .ctx("starting", "the server runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&opts.listen)
            .await
            .ctx("listening on", &opts.listen)?;
        let addr = listener.local_addr().ctx("listening on", &opts.listen)?;
        on_listen(addr);
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown())
            .await
            .ctx("serving on", addr.to_string())
    })
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
