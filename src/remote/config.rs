//! `.sp-sync/config.toml`: machine-local settings, never part of a snapshot.
//!
//! ```toml
//! [remote.origin]
//! url = "https://sync.example.com/acme"
//! token_env = "ACME_SYNC_TOKEN"      # or token = "..."; SP_SYNC_TOKEN comes first
//!
//! [remote.backup]
//! url = "s3://bucket/prefix"
//! [remote.backup.s3]                 # object_store S3 settings; override AWS_* variables
//! aws_endpoint_url = "http://127.0.0.1:9000"
//! aws_allow_http = "true"
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Credentials, Location};
use crate::error::{Result, SyncError};
use crate::store::Store;

/// The store's `config.toml`: its remotes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LocalConfig {
    /// Remotes by name.
    #[serde(default)]
    pub remote: BTreeMap<String, RemoteConfig>,
}

/// One remote: where it is and how to reach it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RemoteConfig {
    /// A path, `file://`, `http(s)://HOST/TENANT` or `s3://BUCKET/PREFIX`.
    pub url: String,
    /// A bearer token for an HTTP remote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The environment variable that holds an HTTP remote's token (before
    /// `token`; `SP_SYNC_TOKEN` comes first of all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// S3 settings for an `s3://` remote.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub s3: BTreeMap<String, String>,
}

impl RemoteConfig {
    /// The settings that go with the URL.
    pub fn credentials(&self) -> Credentials {
        Credentials {
            token: self
                .token_env
                .as_deref()
                .and_then(|v| std::env::var(v).ok())
                .filter(|t| !t.is_empty())
                .or_else(|| self.token.clone()),
            s3: self
                .s3
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }
}

/// Whether `s` names a remote (a bare word) rather than a location.
pub fn is_remote_name(s: &str) -> bool {
    !s.contains('/') && !s.contains(':') && !s.is_empty()
}

/// Checks a remote name: a bare word usable in `remotes/NAME/REF`.
pub fn validate_remote_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
        || name.starts_with('.')
    {
        return Err(SyncError::Invalid(format!(
            "invalid remote name {name:?} (letters, digits, `._-`)"
        )));
    }
    Ok(())
}

impl LocalConfig {
    /// Reads the store's remotes (none when the file is absent).
    pub fn load(store: &Store) -> Result<LocalConfig> {
        let Some(b) = store.backend().get("config.toml")? else {
            return Ok(LocalConfig::default());
        };
        let text = String::from_utf8(b)
            .map_err(|_| SyncError::Invalid("config.toml is not UTF-8".into()))?;
        toml::from_str(&text).map_err(|e| {
            SyncError::Invalid(format!(
                "{}/config.toml: {}",
                store.location_name(),
                e.message()
            ))
        })
    }

    /// Writes the store's remotes (`config.toml`).
    pub fn save(&self, store: &Store) -> Result<()> {
        let text = format!(
            "# Machine-local settings of this store (remotes). Not part of any snapshot.\n{}",
            toml::to_string(self).map_err(|e| SyncError::Invalid(format!("config.toml: {e}")))?
        );
        store.backend().put("config.toml", text.as_bytes())
    }

    /// Resolves what the user named: a configured remote (bare word), or a
    /// location. Returns (remote name if named, location, credentials).
    pub fn resolve(&self, spec: &str) -> Result<(Option<String>, Location, Credentials)> {
        if is_remote_name(spec) {
            let r = self.remote.get(spec).ok_or_else(|| {
                SyncError::NotFound(format!(
                    "unknown remote {spec:?} (see `sp-sync remote list`)"
                ))
            })?;
            return Ok((
                Some(spec.to_string()),
                Location::parse(&r.url)?,
                r.credentials(),
            ));
        }
        Ok((None, Location::parse(spec)?, Credentials::default()))
    }

    /// The remote to use when none is named: the only one, or `origin`.
    pub fn default_remote(&self) -> Result<String> {
        if self.remote.len() == 1 {
            return Ok(self.remote.keys().next().cloned().unwrap_or_default());
        }
        if self.remote.contains_key("origin") {
            return Ok("origin".into());
        }
        Err(SyncError::NotFound(if self.remote.is_empty() {
            "no remote configured (sp-sync remote add NAME URL)".into()
        } else {
            "several remotes and none is `origin`: name one".into()
        }))
    }
}
