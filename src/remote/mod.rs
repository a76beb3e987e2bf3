//! Remotes: where push sends and pull fetches. A remote answers a handful of
//! questions — its refs, which of these ids it has — and moves objects as
//! pack streams. Two implementations: a store reached directly (a local
//! path, `file://`, or `s3://` object storage), and an `sp-sync serve` over
//! HTTP (`http.rs`).

pub mod config;
pub mod http;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::error::{Result, SyncError};
use crate::id::{IdMap, ObjectId, ObjectType};
use crate::pack::StoredObject;
use crate::progress::Progress;
use crate::store::receive::ReceiveStats;
use crate::store::s3::S3Backend;
use crate::store::{LockMode, Store};

/// Bytes on the wire (request bodies, response bodies) and requests made.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Traffic {
    /// Requests made.
    pub requests: u64,
    /// Bytes sent (bodies).
    pub bytes_sent: u64,
    /// Bytes received (bodies).
    pub bytes_received: u64,
}

/// An object stream: objects as stored (compressed), in the order given.
pub type ObjectStream<'a> = Box<dyn Iterator<Item = Result<StoredObject>> + 'a>;

/// A place refs and objects are pushed to and pulled from: a store reached directly, or a server.
pub trait Remote: Send + Sync {
    /// The remote's location, for messages.
    fn describe(&self) -> String;
    /// Every ref, sorted by name.
    fn list_refs(&self) -> Result<Vec<(String, ObjectId)>>;
    /// Moves `name` from `old` to `new` by compare-and-swap. Unless `force`,
    /// `new` must descend from `old` (a fast-forward), checked by the
    /// remote, which has both histories. A lost race is `RefConflict`.
    fn update_ref(
        &self,
        name: &str,
        old: Option<ObjectId>,
        new: ObjectId,
        force: bool,
    ) -> Result<()>;
    /// Deletes ref `name` if it still names `old` (compare-and-swap; a
    /// lost race is `RefConflict`). Objects stay until the remote's gc.
    fn delete_ref(&self, name: &str, old: ObjectId) -> Result<()> {
        let _ = old;
        Err(SyncError::Invalid(format!(
            "{}: this remote cannot delete ref {name}",
            self.describe()
        )))
    }
    /// Which of `ids` the remote holds (and so, everything they reach).
    fn has(&self, ids: &[ObjectId]) -> Result<Vec<bool>>;
    /// Sends objects, children before parents; the remote verifies each
    /// and commits as it goes.
    fn send(
        &self,
        objects: &mut dyn Iterator<Item = Result<StoredObject>>,
        progress: &dyn Progress,
    ) -> Result<ReceiveStats>;
    /// Streams the objects with these ids, in this order.
    fn fetch<'a>(&'a self, ids: &[(ObjectType, ObjectId)]) -> Result<ObjectStream<'a>>;
    /// For a pull from snapshot `old` (which the caller holds) to `new`:
    /// each object of `new` that differs from the object at the same place
    /// in `old`, mapped to that object — the bases the caller may ask
    /// deltas against. Empty when the remote lacks `old` or cannot say.
    fn delta_bases(&self, old: &ObjectId, new: &ObjectId) -> Result<IdMap<ObjectId>> {
        let _ = (old, new);
        Ok(IdMap::default())
    }
    /// [`Remote::fetch`], where an object with an entry in `bases` may come
    /// as a delta (flags 2) against that base, which the caller holds.
    fn fetch_with_bases<'a>(
        &'a self,
        ids: &[(ObjectType, ObjectId)],
        bases: &IdMap<ObjectId>,
    ) -> Result<ObjectStream<'a>> {
        let _ = bases;
        self.fetch(ids)
    }
    /// What was sent and received so far.
    fn traffic(&self) -> Traffic;
    /// The store itself, when the remote is a store in a local directory
    /// (it can then be read directly, without copying objects first).
    fn local_store(&self) -> Option<&Store> {
        None
    }
}

/// Objects are committed on the receiving side every this many bytes.
pub const COMMIT_EVERY: u64 = 16 << 20;

/// A store reached directly: a directory or an S3 prefix.
pub struct StoreRemote {
    store: Store,
    name: String,
    sent: AtomicU64,
    received: AtomicU64,
    requests: AtomicU64,
}

impl StoreRemote {
    /// A remote over an open store.
    pub fn new(store: Store) -> StoreRemote {
        StoreRemote {
            name: store.location_name(),
            store,
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        }
    }

    /// The store it reads and writes.
    pub fn store(&self) -> &Store {
        &self.store
    }
}

impl Remote for StoreRemote {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn list_refs(&self) -> Result<Vec<(String, ObjectId)>> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.store.list_refs()
    }

    fn update_ref(
        &self,
        name: &str,
        old: Option<ObjectId>,
        new: ObjectId,
        force: bool,
    ) -> Result<()> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        update_ref_checked(&self.store, name, old, new, force)
    }

    fn delete_ref(&self, name: &str, old: ObjectId) -> Result<()> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        crate::store::refs::validate_ref_name(name)?;
        self.store.update_ref(name, Some(Some(old)), None)
    }

    fn has(&self, ids: &[ObjectId]) -> Result<Vec<bool>> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut out: Vec<bool> = ids.iter().map(|id| self.store.contains(id)).collect();
        if out.iter().any(|h| !h) {
            self.store.refresh()?;
            for (i, id) in ids.iter().enumerate() {
                out[i] = out[i] || self.store.contains(id);
            }
        }
        Ok(out)
    }

    fn send(
        &self,
        objects: &mut dyn Iterator<Item = Result<StoredObject>>,
        progress: &dyn Progress,
    ) -> Result<ReceiveStats> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let sent = &self.sent;
        let mut counted = objects.inspect(|o| {
            if let Ok(o) = o {
                sent.fetch_add(o.payload.len() as u64 + 45, Ordering::Relaxed);
            }
        });
        self.store.receive(&mut counted, COMMIT_EVERY, progress)
    }

    fn fetch<'a>(&'a self, ids: &[(ObjectType, ObjectId)]) -> Result<ObjectStream<'a>> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let ids = ids.to_vec();
        Ok(Box::new(ids.into_iter().map(move |(tag, id)| {
            let (loc, payload) = self.store.read_raw(&id)?;
            if loc.tag != tag {
                return Err(crate::object::corrupt(
                    tag,
                    &id,
                    format!("the remote holds a {}", loc.tag),
                ));
            }
            self.received
                .fetch_add(payload.len() as u64 + 45, Ordering::Relaxed);
            Ok(StoredObject {
                tag,
                id,
                flags: loc.flags,
                ulen: loc.ulen,
                payload,
            })
        })))
    }

    fn delta_bases(&self, old: &ObjectId, new: &ObjectId) -> Result<IdMap<ObjectId>> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        // Object storage has no server side: a delta made here would cost
        // the whole object and its base in reads, so S3 sends objects whole.
        if self.store.local_dir().is_none()
            || !self.store.contains(old)
            || !self.store.contains(new)
        {
            return Ok(IdMap::default());
        }
        let pairs = crate::transfer::same_place_pairs(&self.store, old, new)?;
        self.received
            .fetch_add(pairs.len() as u64 * 64, Ordering::Relaxed);
        Ok(pairs)
    }

    fn fetch_with_bases<'a>(
        &'a self,
        ids: &[(ObjectType, ObjectId)],
        bases: &IdMap<ObjectId>,
    ) -> Result<ObjectStream<'a>> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let ids: Vec<(ObjectType, ObjectId, Option<ObjectId>)> = ids
            .iter()
            .map(|(t, id)| (*t, *id, bases.get(id).copied()))
            .collect();
        Ok(Box::new(ids.into_iter().map(move |(tag, id, base)| {
            let o = crate::transfer::wire_object(&self.store, tag, &id, base.as_ref())?;
            self.received
                .fetch_add(o.payload.len() as u64 + 45, Ordering::Relaxed);
            Ok(o)
        })))
    }

    fn traffic(&self) -> Traffic {
        Traffic {
            requests: self.requests.load(Ordering::Relaxed),
            bytes_sent: self.sent.load(Ordering::Relaxed),
            bytes_received: self.received.load(Ordering::Relaxed),
        }
    }

    fn local_store(&self) -> Option<&Store> {
        self.store.local_dir().is_some().then_some(&self.store)
    }
}

/// A ref update as a remote performs it: the target must be stored, the
/// move must be a fast-forward unless forced, and the swap is atomic.
pub fn update_ref_checked(
    store: &Store,
    name: &str,
    old: Option<ObjectId>,
    new: ObjectId,
    force: bool,
) -> Result<()> {
    crate::store::refs::validate_ref_name(name)?;
    if !store.contains(&new) {
        store.refresh()?;
    }
    let current = store.read_ref(name)?;
    if current != old {
        return Err(SyncError::RefConflict {
            name: name.to_string(),
            expected: old,
            actual: current,
        });
    }
    if !force
        && let Some(old) = old
        && !crate::is_ancestor(store, &old, &new)?
    {
        return Err(SyncError::NonFastForward {
            name: name.to_string(),
            old,
            new,
        });
    }
    // (A snapshot a ref already names was checked when it moved there.)
    if old != Some(new) {
        crate::store::fsck::check_received(store, &[new], &format!("ref {name}"))?;
    }
    store.update_ref(name, Some(old), Some(new))
}

/// How a remote is named on the command line or in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A store directory (or `file://`), or a bundle file.
    Path(PathBuf),
    /// A server: `http(s)://HOST[/PATH]/TENANT`.
    Http {
        /// The server's URL without the tenant.
        base: String,
        /// The tenant.
        tenant: String,
    },
    /// An `s3://BUCKET/PREFIX` store.
    S3(String),
}

impl Location {
    /// Parses a remote URL or path.
    pub fn parse(s: &str) -> Result<Location> {
        // A scheme is case-insensitive (`HTTP://` is http): it was taken
        // for a path, and a push wrote a store in ./HTTP:/… (audit round
        // 18). One sp-sync does not know is refused, not taken for a path.
        let lowered;
        let s = match s.split_once("://") {
            Some((scheme, rest))
                if !scheme.is_empty()
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')) =>
            {
                let scheme = scheme.to_ascii_lowercase();
                if !["file", "s3", "http", "https"].contains(&scheme.as_str()) {
                    return Err(SyncError::Invalid(format!(
                        "{scheme}://…: not a remote sp-sync knows (a path, file://, \
                         http(s)://HOST/TENANT or s3://BUCKET/PREFIX); a path with :// in it: \
                         write it as ./…"
                    )));
                }
                lowered = format!("{scheme}://{rest}");
                lowered.as_str()
            }
            _ => s,
        };
        if let Some(shown) = with_userinfo(s) {
            return Err(SyncError::Invalid(format!(
                "{shown}: credentials do not go in a remote's URL (it is shown in messages and \
                 kept in config.toml as is): give a server's token with SP_SYNC_TOKEN or `token` \
                 under [remote.NAME], S3 keys with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
                 or under [remote.NAME.s3]"
            )));
        }
        if let Some(p) = s.strip_prefix("file://") {
            // file:///PATH, or file://localhost/PATH; another host (or a
            // user part) is no place on this machine.
            let p = p
                .strip_prefix("localhost")
                .filter(|r| r.starts_with('/'))
                .unwrap_or(p);
            if !p.starts_with('/') {
                return Err(SyncError::Invalid(
                    "file://…: names a host; a path on this machine is file:///PATH".into(),
                ));
            }
            return Ok(Location::Path(PathBuf::from(p)));
        }
        if s.starts_with("s3://") {
            crate::store::s3::parse_url(s)?;
            return Ok(Location::S3(s.to_string()));
        }
        if s.starts_with("http://") || s.starts_with("https://") {
            let trimmed = s.trim_end_matches('/');
            let (base, tenant) = trimmed
                .rsplit_once('/')
                .filter(|(b, t)| !t.is_empty() && b.contains("//") && !b.ends_with('/'))
                .ok_or_else(|| {
                    SyncError::Invalid(format!("{s}: expected http(s)://HOST/TENANT"))
                })?;
            if base.ends_with(':')
                || !base
                    .trim_start_matches("https://")
                    .trim_start_matches("http://")
                    .contains(|c: char| c.is_ascii_alphanumeric())
            {
                return Err(SyncError::Invalid(format!(
                    "{s}: expected http(s)://HOST/TENANT"
                )));
            }
            return Ok(Location::Http {
                base: base.to_string(),
                tenant: tenant.to_string(),
            });
        }
        Ok(Location::Path(PathBuf::from(s)))
    }
}

/// For an `http(s)://` or `s3://` URL with a user part (`user:secret@`),
/// the URL with that part hidden; None for any other.
pub fn with_userinfo(s: &str) -> Option<String> {
    let (scheme, rest) = ["http://", "https://", "s3://"]
        .iter()
        .find_map(|p| s.strip_prefix(p).map(|r| (*p, r)))?;
    let authority = rest.split('/').next().unwrap_or("");
    let (_, host) = authority.rsplit_once('@')?;
    Some(format!("{scheme}***@{host}{}", &rest[authority.len()..]))
}

/// Settings that come with a remote: a token, S3 settings.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// A bearer token (HTTP remotes).
    pub token: Option<String>,
    /// S3 settings (`endpoint`, `region`, keys…).
    pub s3: Vec<(String, String)>,
}

/// Opens a remote. `create`: a path or S3 store that does not exist yet is
/// created (the first push).
pub fn open(loc: &Location, creds: &Credentials, create: bool) -> Result<Arc<dyn Remote>> {
    match loc {
        Location::Path(p) => {
            if crate::bundle::is_bundle(p) {
                return Err(SyncError::Invalid(if create {
                    format!(
                        "{} is a bundle, which is read-only: push cannot write to it \
                         (sp-sync bundle create writes a new one)",
                        p.display()
                    )
                } else {
                    format!(
                        "{} is a bundle: pull or bundle import reads it",
                        p.display()
                    )
                }));
            }
            if create && !p.join("store.toml").exists() {
                Store::init(p)?;
            }
            let store = Store::open(p, LockMode::Shared).map_err(|e| match e {
                SyncError::NoStore(_) => {
                    SyncError::NotFound(format!("no sp-sync store at {}", p.display()))
                }
                e => e,
            })?;
            Ok(Arc::new(StoreRemote::new(store)))
        }
        Location::S3(url) => {
            let backend: Arc<dyn crate::store::Backend> = Arc::new(S3Backend::new(url, &creds.s3)?);
            if create {
                Store::init_backend(&*backend)?;
            }
            let store = Store::open_backend(backend, LockMode::Shared).map_err(|e| match e {
                SyncError::NoStore(_) => SyncError::NotFound(format!("no sp-sync store at {url}")),
                e => e,
            })?;
            Ok(Arc::new(StoreRemote::new(store)))
        }
        Location::Http { base, tenant } => {
            let token = std::env::var("SP_SYNC_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
                .or_else(|| creds.token.clone());
            Ok(Arc::new(http::HttpRemote::new(base, tenant, token)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A URL holding credentials is refused, and the refusal never shows
    /// them; an `@` after the host (a path or tenant) is not a user part.
    #[test]
    fn credentials_in_a_url_are_refused_unseen() {
        for url in [
            "http://u:UrlSecret99@127.0.0.1:8080/acme",
            "https://UrlSecret99@sync.example.com/acme",
            "s3://AKIAKEY:UrlSecret99@bucket/p",
            "s3://AKIAKEY:UrlSecret99@bucket",
        ] {
            let e = Location::parse(url).unwrap_err().to_string();
            assert!(e.contains("***@") && !e.contains("UrlSecret99"), "{e}");
            if let Err(e) = crate::store::s3::parse_url(url) {
                assert!(!e.to_string().contains("UrlSecret99"), "{e}");
            }
        }
        assert!(with_userinfo("https://sync.example.com/a@b").is_none());
        assert!(with_userinfo("/srv/a@b").is_none());
        assert_eq!(
            with_userinfo("http://a:b@h:1/x/t").as_deref(),
            Some("http://***@h:1/x/t")
        );
    }

    #[test]
    fn locations() {
        assert_eq!(
            Location::parse("/srv/store").unwrap(),
            Location::Path("/srv/store".into())
        );
        assert_eq!(
            Location::parse("file:///srv/store").unwrap(),
            Location::Path("/srv/store".into())
        );
        assert_eq!(
            Location::parse("https://sync.example.com/acme").unwrap(),
            Location::Http {
                base: "https://sync.example.com".into(),
                tenant: "acme".into()
            }
        );
        assert_eq!(
            Location::parse("http://127.0.0.1:8080/prefix/acme/").unwrap(),
            Location::Http {
                base: "http://127.0.0.1:8080/prefix".into(),
                tenant: "acme".into()
            }
        );
        assert!(Location::parse("http://host").is_err());
        assert!(Location::parse("s3://").is_err());
        assert_eq!(
            Location::parse("s3://b/p").unwrap(),
            Location::S3("s3://b/p".into())
        );
    }
}
