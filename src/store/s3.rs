//! A store in S3-compatible object storage (`s3://BUCKET/PREFIX`), through
//! `object_store`. The layout under the prefix is the directory layout.
//! Packs are written to a local temporary file and uploaded whole (multipart
//! when large), then their index; refs move by conditional writes
//! (`If-Match` on the ETag read, `If-None-Match: *` to create), so several
//! writers — clients or `sp-sync serve` processes — are safe together.
//!
//! Credentials, region and endpoint come from the standard AWS environment
//! variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
//! `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP=true`) or from explicit settings.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjPath;
use object_store::{
    BackoffConfig, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
    UpdateVersion, WriteMultipart,
};

use super::LockMode;
use super::backend::{Backend, CasResult};
use crate::error::{IoContext, Result, SyncError};
use crate::rt::BlockingRuntime;

/// Uploads above this size go in parts.
const MULTIPART_ABOVE: u64 = 16 << 20;
const PART_SIZE: usize = 8 << 20;

pub struct S3Backend {
    store: Arc<AmazonS3>,
    bucket: String,
    prefix: String,
    rt: BlockingRuntime,
    tmp: tempfile::TempDir,
}

/// Where an S3 store's packs wait for their upload: `$TMPDIR/sp-sync-s3-PID-…`.
const TMP_PREFIX: &str = "sp-sync-s3-";

/// Removes the temporary folders of processes that no longer exist (a push
/// killed outright leaves a pack of up to 32 MiB there). Only folders
/// named `sp-sync-s3-PID-…` whose PID is gone; errors are ignored (another
/// user's folder, a race with another sweep).
fn sweep_dead_tmp_dirs(dir: &std::path::Path, stale: std::time::Duration) {
    crate::store::sweep_dead(dir, "S3 command", true, stale, |n| {
        n.strip_prefix(TMP_PREFIX)?
            .split_once('-')
            .map(|(pid, _)| pid)
    });
}

/// Splits `s3://BUCKET/PREFIX` into (bucket, prefix without slashes).
pub fn parse_url(url: &str) -> Result<(String, String)> {
    if let Some(shown) = crate::remote::with_userinfo(url) {
        return Err(SyncError::Invalid(format!(
            "{shown}: S3 keys do not go in the URL: give them with AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY or under [remote.NAME.s3] in config.toml"
        )));
    }
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| SyncError::Invalid(format!("{url}: not an s3:// URL")))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(SyncError::Invalid(format!("{url}: no bucket name")));
    }
    let prefix = prefix.trim_matches('/');
    // A prefix the object store would write under another name (it drops
    // empty parts and percent-encodes `.`, `..` and characters such as
    // `~ % [ ] { } ^ |`) would be written to and never found again.
    if !prefix.is_empty() && ObjPath::from(prefix).as_ref() != prefix {
        return Err(SyncError::Invalid(format!(
            "{url}: the prefix {prefix:?} would be stored as {:?}; use parts of letters, digits \
             and `-_.+@=, ` without empty, `.` or `..` parts",
            ObjPath::from(prefix).as_ref()
        )));
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

fn s3_err(op: &'static str, key: &str, e: object_store::Error) -> SyncError {
    SyncError::io(op, key, std::io::Error::other(e.to_string()))
}

impl S3Backend {
    /// Connects to `s3://BUCKET/PREFIX`. `settings` are extra
    /// `object_store` S3 settings (`aws_endpoint_url`, `aws_region`, …) that
    /// override the environment.
    pub fn new(url: &str, settings: &[(String, String)]) -> Result<S3Backend> {
        let (bucket, prefix) = parse_url(url)?;
        let mut b = AmazonS3Builder::from_env().with_bucket_name(&bucket);
        for (k, v) in settings {
            let key: AmazonS3ConfigKey = k
                .parse()
                .map_err(|_| SyncError::Invalid(format!("unknown S3 setting {k:?}")))?;
            b = b.with_config(key, v);
        }
        // Without credentials the S3 client would go looking for them on the
        // network (the EC2 metadata address): say what is missing instead.
        let has = |k: AmazonS3ConfigKey| b.get_config_value(&k).is_some_and(|v| !v.is_empty());
        let from_elsewhere = [
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        ]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
        let anonymous = b
            .get_config_value(&AmazonS3ConfigKey::SkipSignature)
            .is_some_and(|v| v == "true");
        let keys = has(AmazonS3ConfigKey::AccessKeyId) && has(AmazonS3ConfigKey::SecretAccessKey);
        if !(keys || from_elsewhere || anonymous) {
            return Err(SyncError::MissingConfig(format!(
                "S3 credentials for {url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
                 (and AWS_REGION, AWS_ENDPOINT_URL for S3-compatible servers), or \
                 aws_access_key_id and aws_secret_access_key under [remote.NAME.s3] in \
                 .sp-sync/config.toml"
            )));
        }
        let retries: usize = std::env::var("SP_SYNC_S3_RETRIES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5);
        b = b.with_retry(RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_secs(5),
                base: 2.0,
            },
            max_retries: retries,
            retry_timeout: Duration::from_secs(60),
        });
        let store = b
            .build()
            .map_err(|e| SyncError::Invalid(format!("{url}: {e}")))?;
        let rt = BlockingRuntime::new("sp-sync-s3")?;
        sweep_dead_tmp_dirs(&std::env::temp_dir(), crate::store::stale_after());
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{TMP_PREFIX}{}-", std::process::id()))
            .tempdir()
            .ctx("creating", "a temporary directory")?;
        Ok(S3Backend {
            store: Arc::new(store),
            bucket,
            prefix,
            rt,
            tmp,
        })
    }

    fn path(&self, key: &str) -> ObjPath {
        if self.prefix.is_empty() {
            ObjPath::from(key)
        } else {
            ObjPath::from(format!("{}/{key}", self.prefix))
        }
    }

    fn get_versioned(&self, key: &str) -> Result<Option<(Vec<u8>, UpdateVersion)>> {
        let store = self.store.clone();
        let path = self.path(key);
        let r = self.rt.run(async move {
            let r = store.get(&path).await?;
            let v = UpdateVersion {
                e_tag: r.meta.e_tag.clone(),
                version: r.meta.version.clone(),
            };
            let b = r.bytes().await?;
            Ok::<_, object_store::Error>((b.to_vec(), v))
        })?;
        match r {
            Ok(x) => Ok(Some(x)),
            // (S3 answers a bucket that does not exist with a 404 too: that
            // is no absent key, and must not read as an empty store.)
            Err(e @ object_store::Error::NotFound { .. }) if no_such_bucket(&e) => Err(
                SyncError::NotFound(format!("s3://{}: no such bucket", self.bucket)),
            ),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(s3_err("reading", key, e)),
        }
    }
}

/// Whether a 404 is S3's "NoSuchBucket".
fn no_such_bucket(e: &object_store::Error) -> bool {
    let mut text = e.to_string();
    let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = cur {
        text.push_str(&s.to_string());
        cur = s.source();
    }
    text.contains("NoSuchBucket")
}

impl Backend for S3Backend {
    fn enclosing_store(&self) -> Result<Option<String>> {
        let parts: Vec<&str> = self.prefix.split('/').filter(|p| !p.is_empty()).collect();
        for n in (0..parts.len()).rev() {
            let above = parts[..n].join("/");
            let key = if above.is_empty() {
                "store.toml".to_string()
            } else {
                format!("{above}/store.toml")
            };
            let store = self.store.clone();
            let path = ObjPath::from(key.as_str());
            match self.rt.run(async move { store.head(&path).await })? {
                Ok(_) => return Ok(Some(format!("s3://{}/{above}", self.bucket))),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(s3_err("reading", &key, e)),
            }
        }
        Ok(None)
    }

    fn describe(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    fn local_dir(&self) -> Option<&Path> {
        None
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.get_versioned(key)?.map(|(b, _)| b))
    }

    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        let store = self.store.clone();
        let path = self.path(key);
        let payload = PutPayload::from(data.to_vec());
        self.rt
            .run(async move { store.put(&path, payload).await })?
            .map(|_| ())
            .map_err(|e| s3_err("writing", key, e))
    }

    fn put_file(&self, key: &str, local: &Path) -> Result<()> {
        let len = std::fs::metadata(local).ctx("reading", local)?.len();
        let store = self.store.clone();
        let path = self.path(key);
        if len <= MULTIPART_ABOVE {
            let data = std::fs::read(local).ctx("reading", local)?;
            self.rt
                .run(async move { store.put(&path, PutPayload::from(data)).await })?
                .map_err(|e| s3_err("uploading", key, e))?;
        } else {
            let mut f = File::open(local).ctx("opening", local)?;
            let upload = self
                .rt
                .run({
                    let store = store.clone();
                    let path = path.clone();
                    async move { store.put_multipart(&path).await }
                })?
                .map_err(|e| s3_err("uploading", key, e))?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            let mut buf = vec![0u8; PART_SIZE];
            // An upload that fails here is aborted, so that its parts do
            // not stay in the bucket (billed, unseen); `finish` aborts its
            // own failures.
            let abort = |w: WriteMultipart| match self.rt.run(async move { w.abort().await }) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("could not abort the upload of {key}: {e}"),
                Err(e) => tracing::warn!("could not abort the upload of {key}: {e}"),
            };
            loop {
                let n = match f.read(&mut buf) {
                    Ok(n) => n,
                    Err(e) => {
                        abort(w);
                        return Err(SyncError::io("reading", local, e));
                    }
                };
                if n == 0 {
                    break;
                }
                let chunk = buf[..n].to_vec();
                // Bounded: at most a few parts in flight.
                let step = self.rt.run(async move {
                    match w.wait_for_capacity(4).await {
                        Ok(()) => {
                            w.write(&chunk);
                            Ok(w)
                        }
                        Err(e) => Err((w, e)),
                    }
                })?;
                w = match step {
                    Ok(w) => w,
                    Err((w, e)) => {
                        abort(w);
                        return Err(s3_err("uploading", key, e));
                    }
                };
            }
            self.rt
                .run(async move { w.finish().await })?
                .map_err(|e| s3_err("uploading", key, e))?;
        }
        std::fs::remove_file(local).ctx("removing", local)?;
        Ok(())
    }

    fn read_at(&self, key: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        let store = self.store.clone();
        let path = self.path(key);
        // Offsets come from index files, which a hostile store controls.
        let end = offset.checked_add(buf.len() as u64).ok_or_else(|| {
            SyncError::corrupt_file("pack", key, "a read past the largest offset")
        })?;
        let b = self
            .rt
            .run(async move { store.get_range(&path, offset..end).await })?
            .map_err(|e| s3_err("reading", key, e))?;
        if b.len() != buf.len() {
            return Err(SyncError::corrupt_file("pack", key, "truncated"));
        }
        buf.copy_from_slice(&b);
        Ok(())
    }

    fn open_read(&self, key: &str) -> Result<Box<dyn Read + Send>> {
        // Packs are read whole only by fsck and index rebuilds: stream the
        // object into a local temporary file, then read that.
        let store = self.store.clone();
        let path = self.path(key);
        let tmp = tempfile::tempfile_in(self.tmp.path()).ctx("creating", self.tmp.path())?;
        let mut out = tmp.try_clone().ctx("creating", self.tmp.path())?;
        self.rt
            .run(async move {
                let mut s = store.get(&path).await?.into_stream();
                while let Some(c) = s.next().await {
                    // A dedicated runtime: a blocking write here stalls nobody.
                    std::io::Write::write_all(&mut out, &c?).map_err(|e| {
                        object_store::Error::Generic {
                            store: "local temporary file",
                            source: Box::new(e),
                        }
                    })?;
                }
                Ok::<_, object_store::Error>(())
            })?
            .map_err(|e| s3_err("reading", key, e))?;
        use std::io::Seek;
        let mut f = tmp;
        f.seek(std::io::SeekFrom::Start(0))
            .ctx("reading", self.tmp.path())?;
        Ok(Box::new(std::io::BufReader::with_capacity(1 << 20, f)))
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let store = self.store.clone();
        let base = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let path = ObjPath::from(format!("{base}{}", prefix.trim_end_matches('/')));
        let metas = self
            .rt
            .run(async move { store.list(Some(&path)).try_collect::<Vec<_>>().await })?
            .map_err(|e| s3_err("listing", prefix, e))?;
        let mut out: Vec<String> = metas
            .into_iter()
            .filter_map(|m| m.location.as_ref().strip_prefix(&base).map(str::to_string))
            .collect();
        out.sort();
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let store = self.store.clone();
        let path = self.path(key);
        match self.rt.run(async move { store.delete(&path).await })? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(s3_err("removing", key, e)),
        }
    }

    fn sync(&self, _prefix: &str) -> Result<()> {
        // An acknowledged PUT is durable.
        Ok(())
    }

    fn tmp_dir(&self) -> PathBuf {
        self.tmp.path().to_path_buf()
    }

    fn lock(&self, _mode: LockMode) -> Result<Option<File>> {
        Ok(None)
    }

    fn cas(&self, key: &str, expected: Option<&[u8]>, new: Option<&[u8]>) -> Result<CasResult> {
        let current = self.get_versioned(key)?;
        let cur_bytes = current.as_ref().map(|(b, _)| b.as_slice());
        if cur_bytes != expected {
            return Ok(Err(current.map(|(b, _)| b)));
        }
        let store = self.store.clone();
        let path = self.path(key);
        match new {
            Some(data) => {
                let mode = match current {
                    Some((_, v)) => PutMode::Update(v),
                    None => PutMode::Create,
                };
                let payload = PutPayload::from(data.to_vec());
                let opts = PutOptions {
                    mode,
                    ..Default::default()
                };
                match self
                    .rt
                    .run(async move { store.put_opts(&path, payload, opts).await })?
                {
                    Ok(_) => Ok(Ok(())),
                    Err(object_store::Error::Precondition { .. })
                    | Err(object_store::Error::AlreadyExists { .. }) => Ok(Err(self.get(key)?)),
                    Err(e) => Err(s3_err("writing", key, e)),
                }
            }
            None => {
                // S3 has no conditional delete: the compare above and the
                // delete below are not atomic (documented in store-format.md).
                self.delete(key)?;
                Ok(Ok(()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A killed push's temporary folder goes at the next start once it has
    /// not changed for the hour; a living process's, and anything else,
    /// stays.
    #[test]
    fn temporary_folders_of_dead_processes_are_swept() {
        let tmp = tempfile::tempdir().unwrap();
        let dead = tmp.path().join("sp-sync-s3-999999999-abc");
        let alive = tmp
            .path()
            .join(format!("sp-sync-s3-{}-def", std::process::id()));
        let other = tmp.path().join("sp-sync-s3-notapid-x");
        let file = tmp.path().join("sp-sync-s3-999999999-file");
        for d in [&dead, &alive, &other] {
            std::fs::create_dir_all(d.join("sub")).unwrap();
            std::fs::write(d.join("sub/pack"), b"x").unwrap();
        }
        std::fs::write(&file, b"not a folder").unwrap();
        // Changed within the hour (here, the pack inside it): a push in
        // another PID namespace may still be writing it.
        sweep_dead_tmp_dirs(tmp.path(), std::time::Duration::from_secs(3600));
        assert!(
            dead.join("sub/pack").exists(),
            "a folder changed within the hour"
        );
        sweep_dead_tmp_dirs(tmp.path(), std::time::Duration::ZERO);
        assert!(!dead.exists());
        assert!(alive.join("sub/pack").exists() && other.join("sub/pack").exists());
        assert!(file.exists());
    }

    /// A prefix is used byte for byte, or refused: never written under a
    /// name that listing it would not find.
    #[test]
    fn a_prefix_the_store_would_rename_is_refused() {
        for (url, bucket, prefix) in [
            ("s3://b", "b", ""),
            ("s3://b/", "b", ""),
            ("s3://b/ci/cache/", "b", "ci/cache"),
            ("s3://b/a-b_c.d/x+y@z=w,v", "b", "a-b_c.d/x+y@z=w,v"),
            ("s3://b/sp ace", "b", "sp ace"),
        ] {
            assert_eq!(
                parse_url(url).unwrap(),
                (bucket.to_string(), prefix.to_string()),
                "{url}"
            );
        }
        for url in [
            "s3://b/r1~x",
            "s3://b/p//q",
            "s3://b/d/../e",
            "s3://b/./e",
            "s3://b/a%41b",
            "s3://b/x[1]",
            "s3://b/x{1}",
            "s3://b/a|b",
            "s3://b/a^b",
        ] {
            let e = parse_url(url).unwrap_err().to_string();
            assert!(e.contains("would be stored as"), "{url}: {e}");
        }
    }

    /// An index entry's offset comes from a file the store's owner controls:
    /// one near `u64::MAX` is a corrupt-pack error, decided before any request
    /// (the endpoint here accepts no connection), not an overflow panic.
    #[test]
    fn a_read_at_an_offset_that_overflows_is_an_error_not_a_panic() {
        let settings = [
            ("aws_access_key_id", "k"),
            ("aws_secret_access_key", "s"),
            ("aws_region", "us-east-1"),
            ("aws_endpoint", "http://127.0.0.1:9"),
            ("aws_allow_http", "true"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let b = S3Backend::new("s3://bucket/prefix", &settings).unwrap();
        let mut buf = [0u8; 16];
        let err = b
            .read_at("packs/p.pack", u64::MAX - 3, &mut buf)
            .unwrap_err();
        assert!(
            err.to_string().contains("a read past the largest offset"),
            "{err}"
        );
    }
}
