//! PostgreSQL tables in snapshots: the same table objects and row maps as
//! SQLite's (`store-format.md` §3.6–3.7), read from and written to a live
//! PostgreSQL database over `tokio-postgres` (blocking, see `pgconn`).
//!
//! A location is a URL, `postgres://USER[:PASSWORD]@HOST:PORT/DBNAME` (or
//! `postgresql://`), with the query parameters `host` (a Unix socket
//! directory), `port`, `user`, `dbname`, `schema` (default `public`) and
//! `key_by_all_columns`. The password comes from the URL, `PGPASSWORD` or
//! `~/.pgpass` (`PGPASSFILE`), and is never written into a snapshot, a log
//! line or an error: what is recorded and shown is [`PgLocation::redacted`].
//!
//! **Reading.** Every table of the schema (or those named) is read in one
//! `REPEATABLE READ, READ ONLY` transaction that holds an `ACCESS SHARE`
//! lock on each from before its snapshot (`TRUNCATE` is not MVCC-safe: see
//! [`begin_locked`]), each with one `COPY (SELECT …
//! ORDER BY key) TO STDOUT` streamed row by row into the row map builder
//! (or, for a table the server's statistics say was only ever inserted
//! into, `COPY table (columns) TO STDOUT` in the order the heap stores the
//! rows, cheaper for the server (no executor, when no column is read
//! through a cast and the table is not partitioned; else `COPY (SELECT …)
//! TO STDOUT`), put in key order on the way by
//! [`super::build_row_map_with`]; a row too far from its place makes it
//! read again in key order, in the same transaction)
//! (in binary format when every column has a binary form read here into
//! the value its text form gives: integers, floats, booleans, `bytea`,
//! text, `uuid`, `numeric`, `date`, `time`, `timestamp`, `timestamptz`,
//! `json`, `jsonb` and enums,
//! printed as the server would by `pgtext`; the server then prints no
//! numbers).
//! Values are the exact text forms PostgreSQL prints (with
//! `extra_float_digits = 3`, `DateStyle = ISO`, `TimeZone = UTC`,
//! `IntervalStyle = postgres`, `bytea_output = hex`, `array_nulls = on`,
//! `lc_monetary = C`, so that `money` reads and writes as its stored
//! amount, `$1,234.56`, whatever the servers' locales; `xmloption =
//! content`, so that an `xml` value that is not a document goes back in;
//! and `row_security = off`, as pg_dump: a table whose row-level security
//! policies would hide rows from the role is an error, never read in part),
//! stored as cells by the
//! column's type: `smallint`/`integer`/`bigint` as INTEGER, `real`/`double
//! precision` as REAL (the exact bits; `real` widened exactly), `boolean`
//! as INTEGER 0/1, `bytea` as BLOB, and every other type (text, numeric,
//! uuid, dates and times, json, arrays, enums, types sp-sync does not know)
//! as TEXT, its exact text form; the column's type name is in the table
//! object. The key order is byte order of the encoded keys: rows are
//! selected ordered by the key columns themselves (numbers, booleans,
//! `bytea`, `uuid`), text `COLLATE "C"`, or the text form `COLLATE "C"`.
//!
//! **Writing.** Into tables the database lacks: the recorded `CREATE`
//! script (each statement checked first: the recorded SQL is hostile input,
//! see `pg_guard`), then the rows by `COPY … FROM STDIN` (the primary key
//! set aside meanwhile when nothing refers to it, `set_key_aside`), then
//! constraints, indexes and sequence values. Onto existing tables (same columns and key, else
//! refused before anything is written): only the rows that differ, in one
//! transaction with deferrable constraints deferred, the tables locked
//! against other writers (`EXCLUSIVE`) before they are read and their own
//! triggers paused while rows are written; a failure rolls back and names
//! the row. New rows go by `COPY` there too, some thousands at a time
//! under a savepoint; a `COPY` that fails is undone and its rows go one
//! statement each (`RowStatements::flush`).
//!
//! The client runs its own tokio runtime and must not be called
//! from inside another: every entry point here runs on a thread of its own.

use std::collections::BTreeMap;

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::pgconn::{Client, ConnectError};

use super::diff::same_structure;
use super::pg_guard::{self, Action};
use super::restore::{DbRestoreOptions, DbRestoreReport};
use super::rowcache::{CacheReader, CacheWriter, Unusable, Usable};
use super::table::{Column, Engine, Extra, ExtraKind, FLAG_WITHOUT_ROWID, TableData, TableObject};
use super::value::{Cell, KeyWriter, Value, decode_key, decode_row, encode_cell};
use super::{DbSource, RowCacheCtx, ScanResult, load_table};
use crate::chunker::Chunker;
use crate::codec::Writer;
use crate::error::{Result, SyncError};
use crate::id::{ObjectId, ObjectType};
use crate::object::{MemStore, ObjectSink, ObjectSource, corrupt};
use crate::pmap::MapIter;
use crate::progress::Progress;

/// Whether a `--db` location is a PostgreSQL URL.
pub fn is_url(location: &str) -> bool {
    location.starts_with("postgres://") || location.starts_with("postgresql://")
}

/// Whether a database path given as a `Path` is a PostgreSQL URL.
pub fn is_url_path(p: &Path) -> bool {
    p.to_str().is_some_and(is_url)
}

/// A URL that keys a table without a primary key by all its columns, for
/// a comparison: `diff` against a live database reads every table of its
/// schema, and a table the snapshot never took may have none (its rows all
/// show as added, whatever their key). Snapshots never see this URL.
pub fn keyed_by_all_for_diff(p: &Path) -> PathBuf {
    match p.to_str().filter(|s| is_url(s)) {
        // (The parser takes the last value of a parameter.)
        Some(s) => {
            let sep = if s.contains('?') { '&' } else { '?' };
            PathBuf::from(format!("{s}{sep}key_by_all_columns=true"))
        }
        None => p.to_path_buf(),
    }
}

/// Where a `--db` argument points: a URL as it is (with `schema` and
/// `key_by_all_columns` added to it when given), a file relative to `cwd`.
pub fn resolve_location(
    cwd: &Path,
    db: &Path,
    schema: Option<&str>,
    key_by_all_columns: bool,
) -> Result<PathBuf> {
    if !is_url_path(db) {
        if schema.is_some() || key_by_all_columns {
            return Err(SyncError::Invalid(
                "--schema and --key-by-all-columns apply to a PostgreSQL --db (postgres://…)"
                    .into(),
            ));
        }
        return Ok(cwd.join(db));
    }
    let mut s = db.to_string_lossy().into_owned();
    let mut add = |k: &str, v: &str| {
        s.push(if s.contains('?') { '&' } else { '?' });
        s.push_str(k);
        s.push('=');
        s.push_str(&percent_encode(v));
    };
    if let Some(schema) = schema {
        add("schema", schema);
    }
    if key_by_all_columns {
        add("key_by_all_columns", "true");
    }
    // Parsed now, so a bad URL is refused before anything else.
    PgLocation::parse(&s)?;
    Ok(PathBuf::from(s))
}

/// A location for people and for the snapshot's record: a URL without its
/// password, a file path as it is.
pub fn display_location(p: &Path) -> String {
    let s = p.to_string_lossy();
    if is_url(&s) {
        match PgLocation::parse(&s) {
            Ok(l) => l.redacted(),
            Err(_) => "postgres://(invalid URL)".into(),
        }
    } else {
        s.into_owned()
    }
}

/// A parsed PostgreSQL URL.
#[derive(Clone, PartialEq, Eq)]
pub struct PgLocation {
    pub user: Option<String>,
    password: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub dbname: Option<String>,
    /// The schema whose tables are read or written (default `public`).
    pub schema: String,
    /// Key tables without a primary key by all their columns.
    pub key_by_all_columns: bool,
    /// `sslmode` as given (`None`: none given, no TLS).
    pub sslmode: Option<String>,
    /// `sslrootcert`: a PEM file of the certificates a server's must chain
    /// to (default: the system's trusted roots).
    pub sslrootcert: Option<String>,
}

impl std::fmt::Debug for PgLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

fn percent_decode(s: &str) -> Result<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| SyncError::Invalid("bad %-escape in a PostgreSQL URL".into()))?;
            out.push(h);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| SyncError::Invalid("a PostgreSQL URL that is not UTF-8".into()))
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &c in s.as_bytes() {
        if c.is_ascii_alphanumeric() || b"-._~/".contains(&c) {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

impl PgLocation {
    /// Parses `postgres://[user[:password]@][host][:port][/dbname][?k=v&…]`.
    /// Errors never repeat the URL (it may hold a password).
    pub fn parse(url: &str) -> Result<PgLocation> {
        let bad = |what: &str| SyncError::Invalid(format!("bad PostgreSQL URL: {what}"));
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or_else(|| bad("it must start with postgres:// or postgresql://"))?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (rest, None),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let mut loc = PgLocation {
            user: None,
            password: None,
            host: None,
            port: None,
            dbname: None,
            schema: "public".into(),
            key_by_all_columns: false,
            sslmode: None,
            sslrootcert: None,
        };
        if let Some(u) = userinfo {
            let (user, pw) = match u.split_once(':') {
                Some((a, b)) => (a, Some(b)),
                None => (u, None),
            };
            if !user.is_empty() {
                loc.user = Some(percent_decode(user)?);
            }
            if let Some(pw) = pw {
                loc.password = Some(percent_decode(pw)?);
            }
        }
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            let (h, after) = h
                .split_once(']')
                .ok_or_else(|| bad("unclosed [ in the host"))?;
            (h, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if !host.is_empty() {
            loc.host = Some(percent_decode(host)?);
        }
        if let Some(p) = port.filter(|p| !p.is_empty()) {
            loc.port = Some(p.parse().map_err(|_| bad("the port is not a number"))?);
        }
        if let Some(p) = path.filter(|p| !p.is_empty()) {
            loc.dbname = Some(percent_decode(p)?);
        }
        for kv in query.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let v = percent_decode(v)?;
            match k {
                "host" => loc.host = Some(v),
                "port" => loc.port = Some(v.parse().map_err(|_| bad("the port is not a number"))?),
                "user" => loc.user = Some(v),
                "password" => loc.password = Some(v),
                "dbname" => loc.dbname = Some(v),
                "schema" => {
                    if v.is_empty() {
                        return Err(bad("an empty schema"));
                    }
                    // Names `search_path` does not take as they are
                    // (`$user` becomes the role's name, `pg_temp` the
                    // session's temporary schema), and the system's own
                    // schemas: sp-sync would read and write elsewhere.
                    if v == "$user" || v.starts_with("pg_") || v == "information_schema" {
                        return Err(bad(&format!(
                            "schema {v:?} is the system's, or a name search_path takes for \
                             another; sp-sync cannot name it safely"
                        )));
                    }
                    loc.schema = v
                }
                "key_by_all_columns" => {
                    loc.key_by_all_columns = match v.as_str() {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        _ => return Err(bad("key_by_all_columns must be true, false, 1 or 0")),
                    }
                }
                "sslmode" => {
                    if !matches!(
                        v.as_str(),
                        "disable" | "allow" | "prefer" | "require" | "verify-ca" | "verify-full"
                    ) {
                        return Err(bad(
                            "sslmode must be disable, allow, prefer, require, verify-ca or verify-full",
                        ));
                    }
                    loc.sslmode = Some(v)
                }
                "sslrootcert" => loc.sslrootcert = Some(v),
                "connect_timeout" | "application_name" => {}
                _ => return Err(bad(&format!("unknown parameter {k:?}"))),
            }
        }
        Ok(loc)
    }

    /// The URL without the password, as recorded in snapshots and shown.
    pub fn redacted(&self) -> String {
        let mut s = String::from("postgres://");
        if let Some(u) = &self.user {
            s.push_str(&percent_encode(u));
            s.push('@');
        }
        let socket = self.host.as_deref().is_some_and(|h| h.starts_with('/'));
        if let Some(h) = self.host.as_deref().filter(|_| !socket) {
            if h.contains(':') {
                s.push_str(&format!("[{h}]"));
            } else {
                s.push_str(h);
            }
        }
        if let Some(p) = self.port {
            s.push_str(&format!(":{p}"));
        }
        s.push('/');
        if let Some(d) = &self.dbname {
            s.push_str(&percent_encode(d));
        }
        let mut q = Vec::new();
        if socket {
            q.push(format!(
                "host={}",
                percent_encode(self.host.as_deref().unwrap_or(""))
            ));
        }
        if self.schema != "public" {
            q.push(format!("schema={}", percent_encode(&self.schema)));
        }
        if self.key_by_all_columns {
            q.push("key_by_all_columns=true".into());
        }
        if let Some(m) = &self.sslmode {
            q.push(format!("sslmode={}", percent_encode(m)));
        }
        if let Some(r) = &self.sslrootcert {
            q.push(format!("sslrootcert={}", percent_encode(r)));
        }
        if !q.is_empty() {
            s.push('?');
            s.push_str(&q.join("&"));
        }
        s
    }

    fn user_name(&self) -> String {
        self.user
            .clone()
            .or_else(|| std::env::var("PGUSER").ok())
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "postgres".into())
    }

    fn host_name(&self) -> String {
        self.host
            .clone()
            .or_else(|| std::env::var("PGHOST").ok())
            .unwrap_or_else(|| "localhost".into())
    }

    fn port_number(&self) -> u16 {
        self.port
            .or_else(|| std::env::var("PGPORT").ok().and_then(|p| p.parse().ok()))
            .unwrap_or(5432)
    }

    fn db_name(&self) -> String {
        self.dbname
            .clone()
            .or_else(|| std::env::var("PGDATABASE").ok())
            .unwrap_or_else(|| self.user_name())
    }

    /// The password: the URL's, else `PGPASSWORD`, else a matching line of
    /// `PGPASSFILE` or `~/.pgpass`.
    fn password(&self) -> Option<String> {
        if let Some(p) = &self.password {
            return Some(p.clone());
        }
        if let Ok(p) = std::env::var("PGPASSWORD") {
            return Some(p);
        }
        let file = std::env::var_os("PGPASSFILE")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pgpass")))?;
        let text = std::fs::read_to_string(file).ok()?;
        let host = self.host_name();
        let host = if host.starts_with('/') {
            "localhost".to_string()
        } else {
            host
        };
        let want = [
            host,
            self.port_number().to_string(),
            self.db_name(),
            self.user_name(),
        ];
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| pgpass_match(l, &want))
    }

    /// Connects (the error names the redacted URL, never the password).
    pub fn connect(&self) -> Result<Client> {
        let mut c = tokio_postgres::Config::new();
        c.user(self.user_name())
            .host(self.host_name())
            .port(self.port_number())
            .dbname(self.db_name())
            .application_name("sp-sync")
            .connect_timeout(Duration::from_secs(10));
        let password = self.password();
        if let Some(p) = &password {
            c.password(p.as_bytes());
        }
        let tls = if self.tls() {
            if self.host_name().starts_with('/') {
                return Err(SyncError::Invalid(format!(
                    "{}: sslmode={} needs a TCP host (PostgreSQL has no TLS on a Unix socket)",
                    self.redacted(),
                    self.sslmode.as_deref().unwrap_or_default()
                )));
            }
            c.ssl_mode(tokio_postgres::config::SslMode::Require);
            Some(tokio_postgres_rustls::MakeRustlsConnect::new(
                self.tls_config()?,
            ))
        } else {
            c.ssl_mode(tokio_postgres::config::SslMode::Disable);
            None
        };
        let mut client = Client::connect(&c, tls).map_err(|e| match e {
            ConnectError::Client(e) => self.error(e),
            ConnectError::Socket(io) => SyncError::Database(format!(
                "{}: error connecting to server: {io}",
                self.redacted()
            )),
        })?;
        let got = client
            .settings(&["server_encoding", "transaction_timeout"])
            .map_err(|e| self.error(e))?;
        let encoding = got.first().cloned().flatten().unwrap_or_default();
        // What the text of values and the scripts depend on, set in
        // every transaction (never for the session: see `set_locals`).
        let mut locals = vec![
            "extra_float_digits = 3",
            "DateStyle = 'ISO, YMD'",
            "TimeZone = 'UTC'",
            "IntervalStyle = 'postgres'",
            "bytea_output = 'hex'",
            "client_encoding = 'UTF8'",
            // (As pg_dump's and pg_restore's: a database or role may
            // set these, and the transaction is idle while sp-sync works
            // between statements.)
            "statement_timeout = 0",
            "lock_timeout = 0",
            "idle_in_transaction_session_timeout = 0",
            "row_security = off",
            "array_nulls = on",
            "lc_monetary = 'C'",
            "xmloption = content",
        ];
        // PostgreSQL 17's limit on a whole transaction, which a hosted
        // server may set for a role: a snapshot of a big table takes long.
        // (Setting it on an older server is an error, so only where it is.)
        if got.get(1).is_some_and(Option::is_some) {
            locals.push("transaction_timeout = 0");
        }
        client.set_locals(&locals);
        client.set_utf8_order(matches!(encoding.as_str(), "UTF8" | "SQL_ASCII" | "LATIN1"));
        Ok(client)
    }

    /// Whether the connection must be TLS: `sslmode=require`, `verify-ca` or
    /// `verify-full`. sp-sync verifies the server's certificate and name in
    /// all three (against `sslrootcert`, or the system's roots); `disable`,
    /// `allow` and `prefer` connect without TLS.
    pub fn tls(&self) -> bool {
        matches!(
            self.sslmode.as_deref(),
            Some("require" | "verify-ca" | "verify-full")
        )
    }

    fn tls_config(&self) -> Result<rustls::ClientConfig> {
        let bad = |what: String| SyncError::Invalid(format!("{}: {what}", self.redacted()));
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(format!("TLS: {e}")))?;
        let config = match self.sslrootcert.as_deref().filter(|r| *r != "system") {
            Some(file) => {
                use rustls::pki_types::pem::PemObject;
                let mut roots = rustls::RootCertStore::empty();
                let certs = rustls::pki_types::CertificateDer::pem_file_iter(file)
                    .map_err(|e| bad(format!("sslrootcert {file}: {e}")))?;
                for cert in certs {
                    let cert = cert.map_err(|e| bad(format!("sslrootcert {file}: {e}")))?;
                    roots
                        .add(cert)
                        .map_err(|e| bad(format!("sslrootcert {file}: {e}")))?;
                }
                if roots.is_empty() {
                    return Err(bad(format!("sslrootcert {file}: no certificate in it")));
                }
                builder.with_root_certificates(roots)
            }
            None => {
                use rustls_platform_verifier::BuilderVerifierExt;
                builder
                    .with_platform_verifier()
                    .map_err(|e| bad(format!("TLS: the system's roots: {e}")))?
            }
        };
        Ok(config.with_no_client_auth())
    }

    /// One line for a client error, naming the redacted URL.
    pub fn error(&self, e: tokio_postgres::Error) -> SyncError {
        let mut msg = match e.as_db_error() {
            Some(d) => {
                let mut m = d.message().to_string();
                if let Some(detail) = d.detail() {
                    m.push_str(&format!(" ({detail})"));
                }
                if let Some(w) = d.where_() {
                    m.push_str(&format!(" [{w}]"));
                }
                m
            }
            None => {
                let mut m = e.to_string();
                let mut lost = e.is_closed();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    let t = s.to_string();
                    if !m.contains(&t) {
                        m.push_str(&format!(": {t}"));
                    }
                    if let Some(io) = s.downcast_ref::<std::io::Error>() {
                        use std::io::ErrorKind as K;
                        lost |= matches!(
                            io.kind(),
                            K::BrokenPipe
                                | K::ConnectionReset
                                | K::ConnectionAborted
                                | K::UnexpectedEof
                        );
                    }
                    src = s.source();
                }
                // (A server that ended the session mid-COPY shows up as a
                // broken pipe or a reset as often as its own message.)
                if lost {
                    m = format!("the connection to the server was lost ({m})");
                }
                m
            }
        };
        if let Some(p) = self.password().filter(|p| !p.is_empty()) {
            msg = msg.replace(&p, "****");
        }
        SyncError::Database(format!(
            "{}: {}",
            self.redacted(),
            msg.replace(['\n', '\r'], " ")
        ))
    }
}

impl PgLocation {
    /// [`error`](Self::error) of a statement that reads or writes `table`:
    /// the message names it (audit 26: a SQL_ASCII database's bytes that
    /// are not UTF-8 failed the snapshot naming no table).
    pub fn table_error(&self, table: &str, e: tokio_postgres::Error) -> SyncError {
        match self.error(e) {
            SyncError::Database(m) => {
                let at = format!("{}: ", self.redacted());
                SyncError::Database(match m.strip_prefix(&at) {
                    Some(rest) => format!("{at}table {table}: {rest}"),
                    None => m,
                })
            }
            other => other,
        }
    }
}

/// The password of a `.pgpass` line if its fields match `want` (host,
/// port, database, user; `*` matches anything; `\:` and `\\` escape).
fn pgpass_match(line: &str, want: &[String; 4]) -> Option<String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ':' if fields.len() < 4 => fields.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    fields.push(cur);
    if fields.len() != 5 {
        return None;
    }
    for (f, w) in fields.iter().zip(want) {
        if f != "*" && f != w {
            return None;
        }
    }
    fields.pop()
}

/// Runs `f` on a thread of its own (outside any tokio runtime).
fn on_own_thread<T: Send>(f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(f)
            .join()
            .map_err(|_| SyncError::Invalid("the PostgreSQL client thread panicked".into()))?
    })
}

/// How a column's values are stored, by its type (`format_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgClass {
    /// `smallint`, `integer`, `bigint`: INTEGER.
    Int,
    /// `real`: REAL, the float widened exactly.
    Float4,
    /// `double precision`: REAL.
    Float8,
    /// `boolean`: INTEGER 0 or 1.
    Bool,
    /// `bytea`: BLOB.
    Bytea,
    /// `text`, `character varying`: TEXT, ordered `COLLATE "C"`.
    Text,
    /// `character(n)`: TEXT without the padding (`::text`).
    Bpchar,
    /// `uuid`: TEXT, ordered as itself.
    Uuid,
    /// `numeric`: TEXT, its exact text form (read by binary `COPY` too).
    Numeric,
    /// `date`: TEXT, its ISO text form (read by binary `COPY` too).
    Date,
    /// `time without time zone`: TEXT (read by binary `COPY` too).
    Time,
    /// `timestamp without time zone`: TEXT (read by binary `COPY` too).
    Timestamp,
    /// `timestamp with time zone`: TEXT, in UTC (read by binary `COPY` too).
    Timestamptz,
    /// `json`: TEXT, as written (read by binary `COPY` too).
    Json,
    /// `jsonb`: TEXT, as `jsonb_out` prints it (read by binary `COPY` too).
    Jsonb,
    /// An enum, when the catalog says so (`PgClass::of` cannot tell one by
    /// its name): TEXT, its label (read by binary `COPY` too).
    Enum,
    /// Any other type: TEXT, its exact text form.
    Other,
}

impl PgClass {
    /// The class of a type as `format_type` prints it.
    pub fn of(decl_type: &str) -> PgClass {
        if decl_type.ends_with(']') {
            return PgClass::Other;
        }
        // The type without its modifier (format_type prints at most one):
        // `timestamp(3) with time zone` is a `timestamp with time zone`.
        let base: std::borrow::Cow<str> = match (decl_type.find('('), decl_type.find(')')) {
            (Some(open), Some(close)) if open < close => {
                let head = decl_type[..open].trim_end();
                match decl_type[close + 1..].trim_start() {
                    "" => head.into(),
                    tail => format!("{head} {tail}").into(),
                }
            }
            _ => decl_type.trim().into(),
        };
        match &*base {
            "smallint" | "integer" | "bigint" => PgClass::Int,
            "real" => PgClass::Float4,
            "double precision" => PgClass::Float8,
            "boolean" => PgClass::Bool,
            "bytea" => PgClass::Bytea,
            "text" | "character varying" => PgClass::Text,
            "character" => PgClass::Bpchar,
            "uuid" => PgClass::Uuid,
            "numeric" => PgClass::Numeric,
            "date" => PgClass::Date,
            "time without time zone" => PgClass::Time,
            "timestamp without time zone" => PgClass::Timestamp,
            "timestamp with time zone" => PgClass::Timestamptz,
            "json" => PgClass::Json,
            "jsonb" => PgClass::Jsonb,
            _ => PgClass::Other,
        }
    }

    fn select(self, col: &str) -> String {
        match self {
            PgClass::Bpchar => format!("{col}::text"),
            _ => col.to_string(),
        }
    }

    /// What a key column is ordered by: its value, or its text's bytes
    /// (as UTF-8: `utf8_order`, whether the server's encoding orders them
    /// so, see [`Client::utf8_order`]).
    fn order(self, col: &str, utf8_order: bool) -> String {
        match self {
            PgClass::Int
            | PgClass::Float4
            | PgClass::Float8
            | PgClass::Bool
            | PgClass::Bytea
            | PgClass::Uuid => col.to_string(),
            PgClass::Text if utf8_order => format!("{col} COLLATE \"C\""),
            PgClass::Text => format!("pg_catalog.convert_to({col}, 'UTF8')"),
            // Every other class is stored as its text form, in its order.
            _ if utf8_order => format!("({col}::text) COLLATE \"C\""),
            _ => format!("pg_catalog.convert_to({col}::text, 'UTF8')"),
        }
    }

    /// A field from its COPY text form (unescaped), which is `arena[start..]`:
    /// numbers and booleans are taken out of the arena, `bytea` is decoded
    /// in place, and text stays where it is.
    fn field(self, arena: &mut Vec<u8>, start: usize) -> std::result::Result<Field, String> {
        let s = &arena[start..];
        let f = match self {
            PgClass::Int => Field::Int(parse_int(s).ok_or("not an integer")?),
            PgClass::Float4 | PgClass::Float8 => match self.parse(s)? {
                Value::Real(r) => Field::Real(r),
                _ => return Err("not a number".into()),
            },
            PgClass::Bool => match s {
                b"t" => Field::Int(1),
                b"f" => Field::Int(0),
                _ => return Err("not a boolean".into()),
            },
            PgClass::Bytea => {
                if !s.starts_with(b"\\x") || !s.len().is_multiple_of(2) {
                    return Err("bytea not in hex".into());
                }
                let n = (s.len() - 2) / 2;
                for i in 0..n {
                    let at = start + 2 + 2 * i;
                    let (hi, lo) = (hex_digit(arena[at]), hex_digit(arena[at + 1]));
                    let (Some(hi), Some(lo)) = (hi, lo) else {
                        return Err("bad hex".into());
                    };
                    arena[start + i] = hi << 4 | lo;
                }
                arena.truncate(start + n);
                return Ok(Field::Blob(start, start + n));
            }
            _ => return Ok(Field::Text(start, arena.len())),
        };
        arena.truncate(start);
        Ok(f)
    }

    /// Whether a binary `COPY` of this class is read (into the value its
    /// text form gives): see [`binary_field`](Self::binary_field).
    fn reads_binary(self) -> bool {
        !matches!(self, PgClass::Bpchar | PgClass::Other)
    }

    /// A field from its binary `COPY` form, for the classes that
    /// [`reads_binary`](Self::reads_binary): the same value its text form
    /// gives (a `uuid` as its text form, lower case).
    fn binary_field(self, b: &[u8], arena: &mut Vec<u8>) -> std::result::Result<Field, String> {
        let mut one = Vec::with_capacity(1);
        self.push_binary_field(b, arena, &mut one)?;
        one.pop().ok_or_else(|| "no field".to_string())
    }

    /// [`binary_field`](Self::binary_field), pushed onto `fields`. (Each
    /// field is written where it goes: returned, a field was stored in two
    /// halves and read back whole, a stall on every field of a snapshot.)
    #[inline(always)]
    fn push_binary_field(
        self,
        b: &[u8],
        arena: &mut Vec<u8>,
        fields: &mut Vec<Field>,
    ) -> std::result::Result<(), String> {
        let wrong = || format!("a binary {self:?} of {} bytes", b.len());
        fields.push(match self {
            PgClass::Int => Field::Int(match *b {
                [x, y] => i64::from(i16::from_be_bytes([x, y])),
                [..] if b.len() == 4 => {
                    i64::from(i32::from_be_bytes(b.try_into().map_err(|_| wrong())?))
                }
                [..] if b.len() == 8 => i64::from_be_bytes(b.try_into().map_err(|_| wrong())?),
                _ => return Err(wrong()),
            }),
            // A NaN prints as `NaN` whatever its sign and payload, and
            // reads back as the one NaN.
            PgClass::Float4 => Field::Real(canonical_nan(f64::from(f32::from_be_bytes(
                b.try_into().map_err(|_| wrong())?,
            )))),
            PgClass::Float8 => Field::Real(canonical_nan(f64::from_be_bytes(
                b.try_into().map_err(|_| wrong())?,
            ))),
            PgClass::Bool => match b {
                [0] => Field::Int(0),
                [1] => Field::Int(1),
                _ => return Err(wrong()),
            },
            PgClass::Bytea | PgClass::Text => {
                let start = arena.len();
                arena.extend_from_slice(b);
                if self == PgClass::Bytea {
                    Field::Blob(start, arena.len())
                } else {
                    Field::Text(start, arena.len())
                }
            }
            // `json_send` sends the text as stored, `jsonb_send` a version
            // byte (1) and then what `jsonb_out` prints.
            // `enum_send` sends the label.
            PgClass::Json | PgClass::Jsonb | PgClass::Enum => {
                let text = match (self, b) {
                    (PgClass::Jsonb, [1, rest @ ..]) => rest,
                    (PgClass::Jsonb, _) => return Err("a binary jsonb not of version 1".into()),
                    _ => b,
                };
                let start = arena.len();
                arena.extend_from_slice(text);
                Field::Text(start, arena.len())
            }
            PgClass::Uuid => {
                if b.len() != 16 {
                    return Err(wrong());
                }
                let start = arena.len();
                const HEX: &[u8; 16] = b"0123456789abcdef";
                for (i, byte) in b.iter().enumerate() {
                    if matches!(i, 4 | 6 | 8 | 10) {
                        arena.push(b'-');
                    }
                    arena.push(HEX[usize::from(byte >> 4)]);
                    arena.push(HEX[usize::from(byte & 15)]);
                }
                Field::Text(start, arena.len())
            }
            PgClass::Numeric
            | PgClass::Date
            | PgClass::Time
            | PgClass::Timestamp
            | PgClass::Timestamptz => {
                let start = arena.len();
                let printed = match self {
                    PgClass::Numeric => super::pgtext::numeric(b, arena),
                    PgClass::Date => super::pgtext::date(b, arena),
                    PgClass::Time => super::pgtext::time(b, arena),
                    _ => super::pgtext::timestamp(b, self == PgClass::Timestamptz, arena),
                };
                if let Err(e) = printed {
                    arena.truncate(start);
                    return Err(e);
                }
                Field::Text(start, arena.len())
            }
            PgClass::Bpchar | PgClass::Other => return Err(wrong()),
        });
        Ok(())
    }

    /// The value a binary `COPY` field of this class reads as, or why it
    /// cannot be read (for the classes that do not read binary, always).
    pub fn parse_binary(self, b: &[u8]) -> std::result::Result<Value, String> {
        if !self.reads_binary() {
            return Err(format!("{self:?} is not read in binary"));
        }
        let mut arena = Vec::new();
        let f = self.binary_field(b, &mut arena)?;
        Ok(Value::from_ref(f.value(&arena)))
    }

    /// A value from its COPY text form (unescaped).
    pub fn parse(self, s: &[u8]) -> std::result::Result<Value, String> {
        let text = || std::str::from_utf8(s).map_err(|_| "not UTF-8".to_string());
        Ok(match self {
            PgClass::Int => Value::Integer(text()?.parse().map_err(|_| "not an integer")?),
            PgClass::Float4 => Value::Real(f64::from(parse_float::<f32>(text()?)?)),
            PgClass::Float8 => Value::Real(parse_float::<f64>(text()?)?),
            PgClass::Bool => match s {
                b"t" => Value::Integer(1),
                b"f" => Value::Integer(0),
                _ => return Err("not a boolean".into()),
            },
            PgClass::Bytea => {
                let h = s.strip_prefix(b"\\x").ok_or("bytea not in hex")?;
                let mut out = Vec::with_capacity(h.len() / 2);
                for p in h.chunks(2) {
                    let p = std::str::from_utf8(p).map_err(|_| "bad hex")?;
                    out.push(u8::from_str_radix(p, 16).map_err(|_| "bad hex")?);
                }
                Value::Blob(out)
            }
            _ => Value::Text(s.to_vec()),
        })
    }

    /// A stored value as PostgreSQL reads it (the text form); None for NULL.
    pub fn text(self, v: &Value) -> std::result::Result<Option<Vec<u8>>, String> {
        Ok(Some(match (self, v) {
            (_, Value::Null) => return Ok(None),
            (PgClass::Bool, Value::Integer(1)) => b"t".to_vec(),
            (PgClass::Bool, Value::Integer(0)) => b"f".to_vec(),
            (PgClass::Int, Value::Integer(i)) => i.to_string().into_bytes(),
            (PgClass::Float4, Value::Real(r)) => float_text(*r as f32, r.is_nan()),
            (PgClass::Float8, Value::Real(r)) => float_text(*r, r.is_nan()),
            (PgClass::Bytea, Value::Blob(b)) => format!("\\x{}", crate::id::hex(b)).into_bytes(),
            (c, Value::Text(t)) if c.stored_as_text() => t.clone(),
            _ => {
                return Err(format!(
                    "a value {} for a column of class {self:?}",
                    v.to_sql()
                ));
            }
        }))
    }

    /// [`text`](Self::text) as a field of `COPY`'s text format, appended to
    /// `out` (`\N` for NULL, escaped as [`escape_copy`] does), without
    /// making the text first. On an error `out` may hold part of it.
    pub fn copy_text_into(self, v: &Value, out: &mut Vec<u8>) -> std::result::Result<(), String> {
        match (self, v) {
            (_, Value::Null) => out.extend_from_slice(b"\\N"),
            (PgClass::Bool, Value::Integer(1)) => out.push(b't'),
            (PgClass::Bool, Value::Integer(0)) => out.push(b'f'),
            (PgClass::Int, Value::Integer(i)) => {
                use std::io::Write;
                // (Writing to a Vec cannot fail.)
                let _ = write!(out, "{i}");
            }
            (PgClass::Bytea, Value::Blob(b)) => {
                out.extend_from_slice(b"\\\\x");
                crate::id::hex_into(out, b);
            }
            (c, Value::Text(t)) if c.stored_as_text() => escape_copy(Some(t), out),
            _ => escape_copy(self.text(v)?.as_deref(), out),
        }
        Ok(())
    }

    /// Whether values of this class are stored as their text form: every
    /// class but integers, floats, booleans and bytea.
    fn stored_as_text(self) -> bool {
        !matches!(
            self,
            PgClass::Int | PgClass::Float4 | PgClass::Float8 | PgClass::Bool | PgClass::Bytea
        )
    }
}

/// A field of a row being parsed; text and blobs are ranges of the
/// parser's arena.
#[derive(Debug, Clone, Copy)]
enum Field {
    Null,
    Int(i64),
    Real(f64),
    Text(usize, usize),
    Blob(usize, usize),
}

impl Field {
    fn value<'a>(self, arena: &'a [u8]) -> rusqlite::types::ValueRef<'a> {
        use rusqlite::types::ValueRef;
        match self {
            Field::Null => ValueRef::Null,
            Field::Int(i) => ValueRef::Integer(i),
            Field::Real(r) => ValueRef::Real(r),
            Field::Text(a, b) => ValueRef::Text(&arena[a..b]),
            Field::Blob(a, b) => ValueRef::Blob(&arena[a..b]),
        }
    }
}

/// The NaN `"NaN".parse()` gives, for any NaN.
fn canonical_nan(r: f64) -> f64 {
    if r.is_nan() { f64::NAN } else { r }
}

/// An integer as PostgreSQL prints one: an optional `-`, then 1 to 19
/// digits, in the range of `i64`.
fn parse_int(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut v: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u64::from(d - b'0');
    }
    if neg {
        (v <= 1 << 63).then(|| (v as i64).wrapping_neg())
    } else {
        i64::try_from(v).ok()
    }
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn parse_float<F: std::str::FromStr>(s: &str) -> std::result::Result<F, String> {
    // PostgreSQL prints NaN, Infinity and -Infinity; Rust reads them too.
    s.parse::<F>().map_err(|_| format!("not a number: {s}"))
}

fn float_text<F: std::fmt::LowerExp + PartialOrd + Default>(r: F, nan: bool) -> Vec<u8> {
    if nan {
        return b"NaN".to_vec();
    }
    let s = format!("{r:e}");
    match s.as_str() {
        "inf" => b"Infinity".to_vec(),
        "-inf" => b"-Infinity".to_vec(),
        _ => s.into_bytes(),
    }
}

/// Quotes an identifier.
pub fn quote(name: &str) -> String {
    super::quote(name)
}

/// Decodes one field of COPY's text format (`\N` is handled by the caller).
#[cfg(test)]
fn unescape_copy(f: &[u8], out: &mut Vec<u8>) {
    out.clear();
    unescape_copy_onto(f, out);
}

/// Decodes one field of COPY's text format onto the end of `out`.
fn unescape_copy_onto(f: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < f.len() {
        // The run up to the next backslash is copied as it is.
        let run = memchr::memchr(b'\\', &f[i..]).unwrap_or(f.len() - i);
        out.extend_from_slice(&f[i..i + run]);
        i += run;
        if i == f.len() {
            break;
        }
        if i + 1 == f.len() {
            out.push(b'\\');
            break;
        }
        let n = f[i + 1];
        i += 2;
        match n {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(n - b'0');
                let mut k = 0;
                while k < 2 && i < f.len() && (b'0'..=b'7').contains(&f[i]) {
                    v = v * 8 + u32::from(f[i] - b'0');
                    i += 1;
                    k += 1;
                }
                out.push(v as u8);
            }
            b'x' => {
                let mut v = 0u32;
                let mut k = 0;
                while k < 2 && i < f.len() && f[i].is_ascii_hexdigit() {
                    v = v * 16 + (f[i] as char).to_digit(16).unwrap_or(0);
                    i += 1;
                    k += 1;
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
}

/// Appends a field in COPY's text format.
fn escape_copy(v: Option<&[u8]>, out: &mut Vec<u8>) {
    let Some(b) = v else {
        out.extend_from_slice(b"\\N");
        return;
    };
    // Most values hold no byte to escape: they go in whole, and the rest
    // between the bytes that need it.
    let special = |c: &u8| matches!(c, b'\\' | b'\t' | b'\n' | b'\r');
    let mut rest = b;
    while let Some(at) = rest.iter().position(special) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(match rest[at] {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            _ => b"\\r",
        });
        rest = &rest[at + 1..];
    }
    out.extend_from_slice(rest);
}

/// A column as the catalog has it.
#[derive(Debug, Clone)]
struct PgColumn {
    attnum: i16,
    name: String,
    decl_type: String,
    not_null: bool,
    default: Option<String>,
    identity: String,
    generated: String,
    /// Whether the column's type is an enum (its binary form is its label).
    is_enum: bool,
    /// Its collation, qualified and quoted, when not its type's default.
    collation: Option<String>,
    /// The name of its `NOT NULL` constraint (PostgreSQL 18 names them;
    /// None before), when the table's own (not only inherited: a restore
    /// makes an inheriting table without its parent, and the parent's
    /// name would be taken from the parent, made after it).
    not_null_name: Option<String>,
    /// Its `NOT NULL` is `NO INHERIT` (PostgreSQL 18).
    no_inherit: bool,
}

/// What the catalog says about one table.
struct PgTable {
    oid: i64,
    name: String,
    view: Option<String>,
    /// A partitioned table (its rows are in its partitions).
    partitioned: bool,
    /// A view's options (`check_option='cascaded', security_barrier='true'`),
    /// if it has any.
    view_with: Option<String>,
    columns: Vec<PgColumn>,
    /// No column is of an enum, composite or domain type, nor an array of
    /// one: the table's script makes no types (the queries for them are
    /// skipped, most tables' case).
    plain_types: bool,
    /// `CREATE EXTENSION IF NOT EXISTS …;` lines for the extensions the
    /// types of its columns come from (directly, as arrays, or under a
    /// domain), if any.
    extensions: Option<String>,
    /// Its primary key: the constraint's name, its columns' numbers, and
    /// its definition (with its index's storage parameters).
    pk: Option<(String, Vec<i16>, String)>,
}

impl PgTable {
    /// For each stored column (generated ones left out): whether it is of
    /// an enum type.
    fn enum_columns(&self) -> Vec<bool> {
        self.columns
            .iter()
            .filter(|c| c.generated.is_empty())
            .map(|c| c.is_enum)
            .collect()
    }
}

fn list_relations(c: &mut Client, loc: &PgLocation) -> Result<Vec<PgTable>> {
    relations(c, loc, None)
}

/// [`list_relations`], or only those of `names` (one query for the tables
/// a restore makes, not a listing of the whole schema).
fn relations(c: &mut Client, loc: &PgLocation, names: Option<&[String]>) -> Result<Vec<PgTable>> {
    // (Two queries, not one with `$2 IS NULL OR …`: that one could not
    // keep a plan. Compared as `name`, the relations are found by
    // pg_class's index.)
    let (by_name, params): (_, &[&(dyn tokio_postgres::types::ToSql + Sync)]) = match &names {
        Some(n) => ("AND c.relname = ANY($2::text[]::name[])", &[&loc.schema, n]),
        None => ("", &[&loc.schema]),
    };
    let rows = c
        .query(
            &format!(
                "SELECT c.oid::int8, c.relname::text, c.relkind::text, \
                        CASE WHEN c.relkind = 'v' THEN pg_catalog.pg_get_viewdef(c.oid, true) END, \
                        CASE WHEN c.relkind = 'v' THEN ( \
                          SELECT string_agg(split_part(o, '=', 1) || '=' \
                                   || pg_catalog.quote_literal(substr(o, strpos(o, '=') + 1)), ', ' \
                                   ORDER BY o COLLATE \"C\") \
                          FROM unnest(c.reloptions) AS o \
                          WHERE split_part(o, '=', 1) IN ('check_option', 'security_barrier', 'security_invoker')) END, \
                        NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a \
                          JOIN pg_catalog.pg_type ty ON ty.oid = a.atttypid \
                          LEFT JOIN pg_catalog.pg_type el ON el.oid = ty.typelem AND ty.typcategory = 'A' \
                          WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                            AND (ty.typtype IN ('e', 'c', 'd') OR el.typtype IN ('e', 'c', 'd'))), \
                        CASE WHEN c.relkind IN ('r', 'p') THEN ( \
                          SELECT string_agg(q.s, '' ORDER BY q.s) FROM ( \
                            SELECT DISTINCT 'CREATE EXTENSION IF NOT EXISTS ' \
                                   || pg_catalog.quote_ident(e.extname::text) \
                                   || CASE WHEN e.extnamespace <> c.relnamespace \
                                           THEN ' WITH SCHEMA ' || pg_catalog.quote_ident(en.nspname::text) \
                                           ELSE '' END || E';\n' AS s \
                            FROM pg_catalog.pg_attribute a \
                            JOIN pg_catalog.pg_type ty ON ty.oid = a.atttypid \
                            LEFT JOIN pg_catalog.pg_type el ON el.oid = ty.typelem AND ty.typcategory = 'A' \
                            JOIN pg_catalog.pg_depend d \
                              ON d.classid = 'pg_catalog.pg_type'::regclass \
                             AND d.objid IN (ty.oid, el.oid, ty.typbasetype) AND d.objsubid = 0 \
                             AND d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.deptype = 'e' \
                            JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid \
                            JOIN pg_catalog.pg_namespace en ON en.oid = e.extnamespace \
                            WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) q) END, \
                        pk.* \
                 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 LEFT JOIN LATERAL (SELECT conname::text, conkey, \
                                           pg_catalog.pg_get_constraintdef(oid, true), {INDEX_OPTIONS} \
                                    FROM pg_catalog.pg_constraint \
                                    WHERE conrelid = c.oid AND contype = 'p') pk ON true \
                 WHERE n.nspname = $1 {by_name} \
                   AND c.relkind IN ('r', 'p', 'v') \
                   AND (NOT c.relispartition OR NOT EXISTS ( \
                     SELECT 1 FROM pg_catalog.pg_inherits i \
                     JOIN pg_catalog.pg_class pc ON pc.oid = i.inhparent \
                     WHERE i.inhrelid = c.oid AND pc.relnamespace = c.relnamespace)) \
                 ORDER BY c.relname COLLATE \"C\""
            ),
            params,
        )
        .map_err(|e| loc.error(e))?;
    // (A partition's rows are read with the table it is a partition of,
    // unless that table is in another schema: then it is a table of its
    // own here.)
    let tables: Vec<i64> = rows
        .iter()
        .filter(|r| r.get::<_, String>(2) != "v")
        .map(|r| r.get(0))
        .collect();
    let mut columns = columns_of(c, loc, &tables)?;
    let mut out = Vec::new();
    for r in rows {
        let oid: i64 = r.get(0);
        let name: String = r.get(1);
        let kind: String = r.get(2);
        let view: Option<String> = r.get(3);
        let view_with: Option<String> = r.get(4);
        let plain_types: bool = r.get(5);
        let extensions: Option<String> = r.get(6);
        // (Its primary key, when it has one: columns 7.. are the
        // constraint's name, columns, definition and INDEX_OPTIONS.)
        let pk = r.get::<_, Option<String>>(7).map(|pk_name| {
            let def = with_index_options(r.get(9), &r, 10, "");
            (pk_name, r.get::<_, Vec<i16>>(8), def)
        });
        let columns = columns.remove(&oid).unwrap_or_default();
        out.push(PgTable {
            oid,
            name,
            view: if kind == "v" {
                Some(view.unwrap_or_default())
            } else {
                None
            },
            partitioned: kind == "p",
            view_with,
            columns,
            plain_types,
            extensions,
            pk,
        });
    }
    Ok(out)
}

/// Refuses names that a relation of `pg_catalog` shadows. sp-sync names
/// tables unqualified under `search_path = <schema>`, and PostgreSQL looks
/// in `pg_catalog` first: `COPY "pg_authid"` would read every role's
/// password hash instead of the user's table, and a restore run by a
/// superuser would write its rows into the catalog.
fn refuse_shadowed(c: &mut Client, loc: &PgLocation, names: &[&str]) -> Result<()> {
    if !names.iter().any(|n| n.starts_with("pg_")) {
        return Ok(());
    }
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let hit: Option<String> = c
        .query_one(
            "SELECT min(c.relname::text COLLATE \"C\") FROM pg_catalog.pg_class c \
             WHERE c.relnamespace = 'pg_catalog'::regnamespace AND c.relname::text = ANY($1)",
            &[&names],
        )
        .map_err(|e| loc.error(e))?
        .get(0);
    match hit {
        Some(name) => Err(SyncError::Database(format!(
            "{}: table {} has the name of the system catalog's pg_catalog.{}, which PostgreSQL \
             finds first: sp-sync cannot name it safely; nothing was read or written (rename it)",
            loc.redacted(),
            quote(&name),
            quote(&name)
        ))),
        None => Ok(()),
    }
}

/// How a statement names a table's own rows: `ONLY t` for a plain table
/// (a table inheriting from it holds rows of its own, read and written as
/// its own table), `t` for a partitioned one (its partitions hold its rows).
fn own_rows(name: &str, partitioned: bool) -> String {
    if partitioned {
        quote(name)
    } else {
        format!("ONLY {}", quote(name))
    }
}

/// The columns of each of the tables `oids`, in their order (one query for
/// all: a schema of many small tables paid a round trip a table).
fn columns_of(
    c: &mut Client,
    loc: &PgLocation,
    oids: &[i64],
) -> Result<std::collections::HashMap<i64, Vec<PgColumn>>> {
    let mut out: std::collections::HashMap<i64, Vec<PgColumn>> = Default::default();
    if oids.is_empty() {
        return Ok(out);
    }
    let rows = c
        .query(
            "SELECT a.attrelid::int8, a.attnum, a.attname::text, \
                    pg_catalog.format_type(a.atttypid, a.atttypmod), \
                    a.attnotnull AND coalesce(nn.convalidated, true), \
                    pg_catalog.pg_get_expr(d.adbin, d.adrelid), \
                    a.attidentity::text, a.attgenerated::text, \
                    COALESCE((SELECT t.typtype = 'e' FROM pg_catalog.pg_type t \
                              WHERE t.oid = a.atttypid), false), \
                    (SELECT pg_catalog.format('%I.%I', cn.nspname, co.collname) \
                     FROM pg_catalog.pg_collation co \
                     JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace \
                     JOIN pg_catalog.pg_type ct ON ct.oid = a.atttypid \
                     WHERE co.oid = a.attcollation AND a.attcollation <> ct.typcollation), \
                    nn.conname::text, coalesce(nn.connoinherit, false) \
             FROM pg_catalog.pg_attribute a \
             LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             LEFT JOIN LATERAL (SELECT CASE WHEN k.conislocal THEN k.conname END AS conname, \
                                       k.convalidated, k.connoinherit \
                                FROM pg_catalog.pg_constraint k \
                                WHERE k.conrelid = a.attrelid AND k.contype = 'n' \
                                  AND k.conkey = ARRAY[a.attnum] LIMIT 1) nn ON true \
             WHERE a.attrelid = ANY($1::int8[]::oid[]) AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attrelid, a.attnum",
            &[&oids],
        )
        .map_err(|e| loc.error(e))?;
    for r in rows {
        out.entry(r.get(0)).or_default().push(PgColumn {
            attnum: r.get(1),
            name: r.get(2),
            decl_type: r.get(3),
            not_null: r.get(4),
            default: r.get(5),
            identity: r.get(6),
            generated: r.get(7),
            is_enum: r.get(8),
            collation: r.get(9),
            not_null_name: r.get(10),
            no_inherit: r.get(11),
        });
    }
    Ok(out)
}

/// The stored columns (generated ones left out) and the primary key.
fn structure(loc: &PgLocation, t: &PgTable) -> Result<(Vec<Column>, Vec<u32>, Option<String>)> {
    let stored: Vec<&PgColumn> = t
        .columns
        .iter()
        .filter(|c| c.generated.is_empty())
        .collect();
    let columns: Vec<Column> = stored
        .iter()
        .map(|c| Column {
            name: c.name.clone(),
            decl_type: c.decl_type.clone(),
        })
        .collect();
    let mut key = Vec::new();
    let mut pk_def = None;
    if let Some((name, attnums, def)) = &t.pk {
        for a in attnums {
            let i = stored.iter().position(|c| c.attnum == *a).ok_or_else(|| {
                SyncError::Database(format!(
                    "{}: table {}: a primary key on a generated column",
                    loc.redacted(),
                    t.name
                ))
            })?;
            key.push(i as u32);
        }
        pk_def = Some(format!("CONSTRAINT {} {def}", quote(name)));
    }
    Ok((columns, key, pk_def))
}

/// Three columns of a `pg_constraint` row: the storage parameters of the
/// index of a primary key or unique constraint (`fillfactor='70'`, in
/// their stored order), `condeferrable` and `condeferred`. See
/// [`with_index_options`].
const INDEX_OPTIONS: &str = "CASE WHEN contype IN ('p', 'u') THEN ( \
       SELECT string_agg(split_part(o, '=', 1) || '=' \
                || pg_catalog.quote_literal(substr(o, strpos(o, '=') + 1)), ', ' ORDER BY n) \
       FROM pg_catalog.pg_class ic, unnest(ic.reloptions) WITH ORDINALITY AS u(o, n) \
       WHERE ic.oid = conindid) END, condeferrable, condeferred";

/// A primary key's or unique constraint's definition as
/// `pg_get_constraintdef` prints it, with its index's storage parameters
/// (columns `at..at + 3` of `r`: [`INDEX_OPTIONS`]) where pg_dump puts
/// them, before `DEFERRABLE` and `INITIALLY DEFERRED` (which that function
/// prints last, as the two flags say), and then `also` (a `USING INDEX
/// TABLESPACE`, or nothing).
fn with_index_options(def: String, r: &tokio_postgres::Row, at: usize, also: &str) -> String {
    let (opts, deferrable, deferred): (Option<String>, bool, bool) =
        (r.get(at), r.get(at + 1), r.get(at + 2));
    let with = opts.map(|o| format!(" WITH ({o})")).unwrap_or_default();
    if with.is_empty() && also.is_empty() {
        return def;
    }
    let tail = format!(
        "{}{}",
        if deferrable { " DEFERRABLE" } else { "" },
        if deferred { " INITIALLY DEFERRED" } else { "" }
    );
    match def.strip_suffix(&tail) {
        Some(head) => format!("{head}{with}{also}{tail}"),
        None => def,
    }
}

/// A `WITH RECURSIVE used(oid)` of the types a table's columns use (the
/// table's oid is `$1`): their own, an array's element type, a composite
/// type's attributes' types and a domain's base type, on down. (Each step
/// looks its types up by oid, `LATERAL`: as a join, the planner scanned all
/// of `pg_type` once per step, and once per table a snapshot reads.)
const USED_TYPES: &str = "WITH RECURSIVE used(oid) AS ( \
       SELECT a.atttypid FROM pg_catalog.pg_attribute a \
       WHERE a.attrelid = $1::int8::oid AND a.attnum > 0 AND NOT a.attisdropped \
       UNION \
       SELECT n.x FROM used u CROSS JOIN LATERAL ( \
         SELECT ty.typelem FROM pg_catalog.pg_type ty \
         WHERE ty.oid = u.oid AND ty.typtype <> 'd' AND ty.typelem <> 0 AND ty.typcategory = 'A' \
         UNION ALL \
         SELECT ty.typbasetype FROM pg_catalog.pg_type ty \
         WHERE ty.oid = u.oid AND ty.typtype = 'd' \
         UNION ALL \
         SELECT ca.atttypid FROM pg_catalog.pg_type ty \
         JOIN pg_catalog.pg_class cc ON cc.oid = ty.typrelid AND cc.relkind = 'c' \
         JOIN pg_catalog.pg_attribute ca \
           ON ca.attrelid = cc.oid AND ca.attnum > 0 AND NOT ca.attisdropped \
         WHERE ty.oid = u.oid AND ty.typtype = 'c') n(x))";

/// The user-made types a table's columns use, directly, as arrays, inside
/// a composite type or under a domain, each after those it uses, else in
/// name order: `CREATE TYPE name AS (attr type, …)` for a composite type
/// (made with `CREATE TYPE … AS`, not a table's row type; an attribute
/// keeps a collation other than its type's) and `CREATE DOMAIN name AS type [COLLATE c]
/// [DEFAULT …] [NOT NULL] [CONSTRAINT c CHECK (…)]…` for a domain.
fn user_types(c: &mut Client, loc: &PgLocation, t: &PgTable) -> Result<String> {
    // (Each row: the type, its name, its statement, the types it uses.)
    let rows = c
        .query(
            &format!(
                "{USED_TYPES} SELECT * FROM ( \
                 SELECT ty.oid::int8, pg_catalog.format_type(ty.oid, NULL) AS name, \
                    'CREATE TYPE ' || pg_catalog.format_type(ty.oid, NULL) || ' AS (' || \
                    (SELECT string_agg(pg_catalog.quote_ident(ca.attname::text) || ' ' \
                              || pg_catalog.format_type(ca.atttypid, ca.atttypmod) \
                              || CASE WHEN ca.attcollation <> 0 AND ca.attcollation <> \
                                        (SELECT at.typcollation FROM pg_catalog.pg_type at \
                                         WHERE at.oid = ca.atttypid) \
                                      THEN ' COLLATE ' || (SELECT pg_catalog.quote_ident(n.nspname::text) \
                                                                  || '.' || pg_catalog.quote_ident(co.collname::text) \
                                                           FROM pg_catalog.pg_collation co \
                                                           JOIN pg_catalog.pg_namespace n ON n.oid = co.collnamespace \
                                                           WHERE co.oid = ca.attcollation) \
                                      ELSE '' END, ', ' \
                              ORDER BY ca.attnum) \
                     FROM pg_catalog.pg_attribute ca \
                     WHERE ca.attrelid = ty.typrelid AND ca.attnum > 0 AND NOT ca.attisdropped) \
                    || ')', \
                    ARRAY(SELECT DISTINCT coalesce(nullif(et.typelem, 0), et.oid)::int8 \
                          FROM pg_catalog.pg_attribute ca \
                          JOIN pg_catalog.pg_type et ON et.oid = ca.atttypid \
                          WHERE ca.attrelid = ty.typrelid AND ca.attnum > 0 \
                            AND NOT ca.attisdropped) \
                 FROM used JOIN pg_catalog.pg_type ty ON ty.oid = used.oid \
                 JOIN pg_catalog.pg_class cc ON cc.oid = ty.typrelid AND cc.relkind = 'c' \
                 WHERE ty.typtype = 'c' \
                 UNION ALL \
                 SELECT ty.oid::int8, pg_catalog.format_type(ty.oid, NULL), \
                    'CREATE DOMAIN ' || pg_catalog.format_type(ty.oid, NULL) || ' AS ' \
                    || pg_catalog.format_type(ty.typbasetype, ty.typtypmod) \
                    || CASE WHEN ty.typcollation <> 0 AND ty.typcollation <> bt.typcollation \
                            THEN ' COLLATE ' || (SELECT pg_catalog.quote_ident(n.nspname::text) || '.' \
                                                        || pg_catalog.quote_ident(co.collname::text) \
                                                 FROM pg_catalog.pg_collation co \
                                                 JOIN pg_catalog.pg_namespace n ON n.oid = co.collnamespace \
                                                 WHERE co.oid = ty.typcollation) \
                            ELSE '' END \
                    || coalesce(' DEFAULT ' || ty.typdefault, '') \
                    || CASE WHEN ty.typnotnull THEN \
                         coalesce((SELECT ' CONSTRAINT ' || pg_catalog.quote_ident(k.conname::text) \
                                   FROM pg_catalog.pg_constraint k \
                                   WHERE k.contypid = ty.oid AND k.contype = 'n' \
                                     AND k.conname::text <> ty.typname::text || '_not_null' \
                                   LIMIT 1), '') || ' NOT NULL' ELSE '' END \
                    || coalesce((SELECT string_agg(' CONSTRAINT ' || pg_catalog.quote_ident(k.conname::text) \
                                                   || ' ' || pg_catalog.pg_get_constraintdef(k.oid, true), '' \
                                                   ORDER BY k.conname COLLATE \"C\") \
                                 FROM pg_catalog.pg_constraint k \
                                 WHERE k.contypid = ty.oid AND k.contype = 'c'), ''), \
                    ARRAY[coalesce(nullif(bt.typelem, 0), bt.oid)::int8] \
                 FROM used JOIN pg_catalog.pg_type ty ON ty.oid = used.oid \
                 JOIN pg_catalog.pg_type bt ON bt.oid = ty.typbasetype \
                 WHERE ty.typtype = 'd') AS types \
                 ORDER BY name COLLATE \"C\""
            ),
            &[&t.oid],
        )
        .map_err(|e| loc.error(e))?;
    let mut left: Vec<(i64, Option<String>, Vec<i64>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(2), r.get(3)))
        .collect();
    let mut out = String::new();
    while !left.is_empty() {
        // The first (by name) that uses none of the ones left; a cycle
        // (which PostgreSQL does not allow) would take them in name order.
        let at = left
            .iter()
            .position(|(_, _, deps)| !left.iter().any(|(o, ..)| deps.contains(o)))
            .unwrap_or(0);
        // (A composite type of no attributes, NULL here, must exist where
        // it is restored, as before.)
        if let (_, Some(sql), _) = left.remove(at) {
            out.push_str(&sql);
            out.push_str(";\n");
        }
    }
    Ok(out)
}

/// The catalog rows [`schema_of`] and [`FactsAsk`] read, for every table
/// a scan reads, asked in one round trip: each query asks for all the
/// tables at once (`= ANY` of their oids) and gives each row's table oid as
/// its last column. (Asked a table at a time, the server's planning and
/// running of some 15 queries a table was most of a snapshot of many small
/// tables.) All in the scan's transaction, so what each table gets is what
/// asking for it alone would have given.
struct Catalog {
    /// The schema's name as `quote_ident` gives it.
    qschema: String,
    /// Per table oid: its rows of each query of [`Catalog::queries`], then
    /// of [`FactsAsk::TYPES`], [`FactsAsk::IDENT`] and, for the tables they
    /// ask about, [`FactsAsk::HEAP`] and the row count, each in the query's
    /// order.
    tables: std::collections::HashMap<i64, Vec<Vec<tokio_postgres::Row>>>,
    /// The tables whose own rows were counted.
    counted: std::collections::HashSet<i64>,
}

/// One table's share of a [`Catalog`].
struct TableCatalog {
    qschema: String,
    /// Its rows of each of [`Catalog::queries`].
    rows: [Vec<tokio_postgres::Row>; Catalog::OWN],
    /// Its rows of the [`FactsAsk`] queries (types, ident, heap when asked).
    facts: Vec<Vec<tokio_postgres::Row>>,
}

impl Catalog {
    /// How many [`queries`](Self::queries) there are.
    const OWN: usize = 11;

    /// The rows of [`schema_of`]: sequences the columns own; storage
    /// settings of the columns and of the table; row-level security;
    /// policies; parents (inheritance); triggers; comments; constraints;
    /// indexes no constraint made; indexes marked for `CLUSTER` or as the
    /// replica identity. `$1`: the tables' oids (`int8[]`).
    fn queries() -> Vec<String> {
        let (storage_cols, storage_rel) = storage_settings_sql();
        vec![
            "SELECT s.relname::text, a.attname::text, d.deptype::text, \
                    pg_catalog.format_type(q.seqtypid, NULL), q.seqstart, q.seqincrement, \
                    q.seqmin, q.seqmax, q.seqcache, q.seqcycle, \
                    CASE WHEN pg_catalog.has_sequence_privilege(s.oid, 'SELECT') \
                         THEN pg_catalog.pg_sequence_last_value(s.oid) END, \
                    d.refobjid::int8 \
             FROM pg_catalog.pg_depend d \
             JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S' \
             JOIN pg_catalog.pg_sequence q ON q.seqrelid = s.oid \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid \
             WHERE d.refclassid = 'pg_catalog.pg_class'::regclass \
               AND d.refobjid = ANY($1::int8[]::oid[]) \
               AND d.classid = 'pg_catalog.pg_class'::regclass \
               AND d.deptype IN ('a', 'i') ORDER BY a.attnum"
                .to_string(),
            storage_cols,
            storage_rel,
            "SELECT c.relrowsecurity, c.relforcerowsecurity, c.oid::int8 FROM pg_catalog.pg_class c \
             WHERE c.oid = ANY($1::int8[]::oid[])"
                .to_string(),
            "SELECT p.polname::text, p.polpermissive, p.polcmd::text, \
                    (SELECT string_agg(CASE WHEN r = 0 THEN 'PUBLIC' \
                                            ELSE quote_ident(pg_catalog.pg_get_userbyid(r)::text) END, \
                                       ', ' ORDER BY r) \
                     FROM unnest(p.polroles) AS r), \
                    pg_catalog.pg_get_expr(p.polqual, p.polrelid), \
                    pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid), p.polrelid::int8 \
             FROM pg_catalog.pg_policy p WHERE p.polrelid = ANY($1::int8[]::oid[]) \
             ORDER BY p.polname COLLATE \"C\""
                .to_string(),
            "SELECT p.oid::regclass::text, i.inhrelid::int8 FROM pg_catalog.pg_inherits i \
             JOIN pg_catalog.pg_class p ON p.oid = i.inhparent \
             JOIN pg_catalog.pg_class k ON k.oid = i.inhrelid \
             WHERE i.inhrelid = ANY($1::int8[]::oid[]) AND NOT k.relispartition \
             ORDER BY i.inhseqno"
                .to_string(),
            "SELECT pg_catalog.pg_get_triggerdef(g.oid, true), g.tgrelid::int8 \
             FROM pg_catalog.pg_trigger g \
             WHERE g.tgrelid = ANY($1::int8[]::oid[]) AND NOT g.tgisinternal \
             ORDER BY g.tgname COLLATE \"C\""
                .to_string(),
            "SELECT a.attname::text, d.description, d.objoid::int8 FROM pg_catalog.pg_description d \
             LEFT JOIN pg_catalog.pg_attribute a \
               ON a.attrelid = d.objoid AND a.attnum = d.objsubid AND d.objsubid > 0 \
             WHERE d.objoid = ANY($1::int8[]::oid[]) \
               AND d.classoid = 'pg_catalog.pg_class'::regclass \
               AND (d.objsubid = 0 OR (a.attnum IS NOT NULL AND NOT a.attisdropped)) \
             ORDER BY d.objsubid"
                .to_string(),
            format!(
                "SELECT conname::text, pg_catalog.pg_get_constraintdef(oid, true), {INDEX_OPTIONS}, \
                        conrelid::int8 \
                 FROM pg_catalog.pg_constraint WHERE conrelid = ANY($1::int8[]::oid[]) \
                   AND {OWN_KINDS} \
                 ORDER BY contype = 'f', conname COLLATE \"C\""
            ),
            "SELECT ic.relname::text, pg_catalog.pg_get_indexdef(i.indexrelid), \
                    pg_catalog.quote_ident(ic.relname), i.indrelid::int8 \
             FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid \
             WHERE i.indrelid = ANY($1::int8[]::oid[]) \
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k \
                 WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid) \
             ORDER BY ic.relname COLLATE \"C\""
                .to_string(),
            // (Any of its indexes, a constraint's too.)
            "SELECT ic.relname::text, pg_catalog.quote_ident(ic.relname), i.indisclustered, \
                    i.indisreplident, i.indrelid::int8 \
             FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid \
             WHERE i.indrelid = ANY($1::int8[]::oid[]) AND (i.indisclustered OR i.indisreplident) \
             ORDER BY ic.relname COLLATE \"C\""
                .to_string(),
        ]
    }

    /// Asks for the catalog rows of `tables` (with their columns and key,
    /// for the heap-order guess, and whether their own rows are counted,
    /// [`FactsAsk::count`]), in one round trip.
    fn ask(
        c: &mut Client,
        loc: &PgLocation,
        tables: &[(&PgTable, &TableData, bool)],
    ) -> Result<Catalog> {
        let oids: Vec<i64> = tables.iter().map(|(rel, _, _)| rel.oid).collect();
        // The heap-order guess's questions, for the tables it applies to.
        let (mut h_oids, mut h_names, mut h_cols) = (Vec::new(), Vec::new(), Vec::new());
        for (rel, t, _) in tables {
            if let Some(first) = heap_guess_column(rel, t) {
                h_oids.push(rel.oid);
                h_names.push(rel.name.clone());
                h_cols.push(first.clone());
            }
        }
        // The row counts asked for, one statement (no rows when none is).
        let counted: std::collections::HashSet<i64> = tables
            .iter()
            .filter(|(_, _, count)| *count)
            .map(|(rel, _, _)| rel.oid)
            .collect();
        let counts = tables
            .iter()
            .filter(|(rel, _, _)| counted.contains(&rel.oid))
            .map(|(rel, _, _)| {
                format!(
                    "SELECT count(*), {}::int8 FROM {}",
                    rel.oid,
                    own_rows(&rel.name, rel.partitioned)
                )
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        let counts = match counts.is_empty() {
            true => "SELECT 0::int8, 0::int8 WHERE false".to_string(),
            false => counts,
        };
        let own = Self::queries();
        let oid: &[&(dyn tokio_postgres::types::ToSql + Sync)] = &[&oids];
        let heap: &[&(dyn tokio_postgres::types::ToSql + Sync)] =
            &[&loc.schema, &h_oids, &h_names, &h_cols];
        let schema: &[&(dyn tokio_postgres::types::ToSql + Sync)] = &[&loc.schema];
        let mut queries: Vec<(&str, &[&(dyn tokio_postgres::types::ToSql + Sync)])> =
            own.iter().map(|q| (q.as_str(), oid)).collect();
        queries.push((FactsAsk::TYPES, oid));
        queries.push((FactsAsk::IDENT, oid));
        queries.push((FactsAsk::HEAP, heap));
        queries.push((&counts, &[]));
        queries.push(("SELECT quote_ident($1)", schema));
        let mut answers = c.query_each(&queries).map_err(|e| loc.error(e))?;
        let qschema: String = answers
            .pop()
            .and_then(|rows| rows.into_iter().next())
            .ok_or_else(|| SyncError::Database(format!("{}: no schema name", loc.redacted())))?
            .get(0);
        let kinds = answers.len();
        let mut rows: std::collections::HashMap<i64, Vec<Vec<tokio_postgres::Row>>> = oids
            .iter()
            .map(|&o| (o, (0..kinds).map(|_| Vec::new()).collect()))
            .collect();
        for (kind, answer) in answers.into_iter().enumerate() {
            for r in answer {
                let oid: i64 = r.try_get(r.len() - 1).map_err(|e| loc.error(e))?;
                if let Some(t) = rows.get_mut(&oid) {
                    t[kind].push(r);
                }
            }
        }
        Ok(Catalog {
            qschema,
            tables: rows,
            counted,
        })
    }

    /// Table `oid`'s share (taken out: each table is read once).
    fn take(&mut self, loc: &PgLocation, rel: &PgTable) -> Result<TableCatalog> {
        let missing = || {
            SyncError::Database(format!(
                "{}: table {}: not in the catalog asked for",
                loc.redacted(),
                shown_name(&rel.name)
            ))
        };
        let mut all = self.tables.remove(&rel.oid).ok_or_else(missing)?;
        let facts = all.split_off(Self::OWN.min(all.len()));
        let rows: [Vec<tokio_postgres::Row>; Self::OWN] = all.try_into().map_err(|_| missing())?;
        Ok(TableCatalog {
            qschema: self.qschema.clone(),
            rows,
            facts,
        })
    }
}

/// The `CREATE` script of a table and its extras (constraints, indexes,
/// sequence values), and its [`TableFacts`], from its catalog rows (`cat`).
fn schema_of(
    c: &mut Client,
    loc: &PgLocation,
    t: &PgTable,
    pk_def: Option<&str>,
    ordinal: &mut u64,
    (facts, cat): (&FactsAsk, TableCatalog),
) -> Result<(String, Vec<Extra>, TableFacts)> {
    let err = |e| loc.error(e);
    // The extensions whose types the columns use (citext, pgvector's
    // vector…): a restore into a new database makes them first, when the
    // server deems them trusted.
    let mut script = t.extensions.clone().unwrap_or_default();
    // Enum types the columns use (directly, as arrays, or inside a
    // composite type they use).
    let enums = if t.plain_types {
        Vec::new()
    } else {
        c.query(
            &format!(
                "{USED_TYPES} SELECT DISTINCT pg_catalog.format_type(t.oid, NULL), \
                    (SELECT string_agg(quote_literal(e.enumlabel), ', ' ORDER BY e.enumsortorder) \
                     FROM pg_catalog.pg_enum e WHERE e.enumtypid = t.oid) \
                 FROM used JOIN pg_catalog.pg_type t ON t.oid = used.oid \
                 WHERE t.typtype = 'e' ORDER BY 1"
            ),
            &[&t.oid],
        )
        .map_err(err)?
    };
    for r in enums {
        let name: String = r.get(0);
        let labels: Option<String> = r.get(1);
        script.push_str(&format!(
            "DO $sp_sync$ BEGIN CREATE TYPE {name} AS ENUM ({}); \
             EXCEPTION WHEN duplicate_object THEN NULL; END $sp_sync$;\n",
            labels.unwrap_or_default()
        ));
    }
    if !t.plain_types {
        script.push_str(&user_types(c, loc, t)?);
    }
    // (What query_one checks: exactly one row.)
    let one = |rows: Vec<tokio_postgres::Row>| -> Result<tokio_postgres::Row> {
        let n = rows.len();
        match <[tokio_postgres::Row; 1]>::try_from(rows) {
            Ok([r]) => Ok(r),
            Err(_) => Err(SyncError::Database(format!(
                "{}: table {}: the catalog gave {n} rows where one was asked for",
                loc.redacted(),
                shown_name(&t.name)
            ))),
        }
    };
    // The table's catalog rows, asked with every other table's (see
    // [`Catalog`]).
    let TableCatalog {
        qschema,
        rows:
            [
                seqs,
                storage_cols,
                storage_rel,
                sec,
                policies,
                parents,
                triggers,
                comments,
                cons,
                idx,
                marked,
            ],
        facts: fact_rows,
    } = cat;
    let facts = facts.answers(fact_rows, loc)?;
    // Sequences the table's columns own (serial: 'a'; identity: 'i').
    let mut owned = String::new();
    let mut seq_values = Vec::new();
    // An identity column's sequence options (a step of 10, counting down):
    // its sequence is made with the column.
    let mut identity_opts: std::collections::HashMap<String, String> = Default::default();
    for r in seqs {
        let seq: String = r.get(0);
        let col: String = r.get(1);
        let deptype: String = r.get(2);
        if deptype == "i" {
            let (start, inc, min, max, cache): (i64, i64, i64, i64, i64) =
                (r.get(4), r.get(5), r.get(6), r.get(7), r.get(8));
            let cycle: bool = r.get(9);
            identity_opts.insert(
                col.clone(),
                format!(
                    " (INCREMENT BY {inc} MINVALUE {min} MAXVALUE {max} START WITH {start} \
                     CACHE {cache}{})",
                    if cycle { " CYCLE" } else { "" }
                ),
            );
        }
        if deptype == "a" {
            let ty: String = r.get(3);
            let (start, inc, min, max, cache): (i64, i64, i64, i64, i64) =
                (r.get(4), r.get(5), r.get(6), r.get(7), r.get(8));
            let cycle: bool = r.get(9);
            script.push_str(&format!(
                "CREATE SEQUENCE IF NOT EXISTS {} AS {ty} INCREMENT BY {inc} MINVALUE {min} \
                 MAXVALUE {max} START WITH {start} CACHE {cache}{};\n",
                quote(&seq),
                if cycle { " CYCLE" } else { "" }
            ));
            owned.push_str(&format!(
                "ALTER SEQUENCE {} OWNED BY {}.{};\n",
                quote(&seq),
                quote(&t.name),
                quote(&col)
            ));
        }
        // A sequence that has given a value: its last one, read with the
        // catalog (`pg_sequence_last_value`). One that has not (NULL), or
        // that the role may not read, is read itself: its `last_value` is
        // then the value it gives next.
        let (last, called): (i64, bool) = match r.get::<_, Option<i64>>(10) {
            Some(last) => (last, true),
            None => {
                let v = c
                    .query_one(
                        &format!("SELECT last_value, is_called FROM {}", quote(&seq)),
                        &[],
                    )
                    .map_err(err)?;
                (v.get(0), v.get(1))
            }
        };
        seq_values.push((seq, col, last, called));
    }
    let mut cols: Vec<String> = Vec::new();
    for col in &t.columns {
        let mut d = format!("{} {}", quote(&col.name), col.decl_type);
        // (A key under a case-insensitive collation keeps it: without it,
        // 'Alice' and 'ALICE' would both go in.)
        if let Some(coll) = &col.collation {
            d.push_str(&format!(" COLLATE {coll}"));
        }
        // (`v`: PostgreSQL 18's virtual generated columns, the default
        // kind there.)
        if col.generated == "s" || col.generated == "v" {
            d.push_str(&format!(
                " GENERATED ALWAYS AS ({}) {}",
                col.default.clone().unwrap_or_default(),
                if col.generated == "s" {
                    "STORED"
                } else {
                    "VIRTUAL"
                }
            ));
        } else if let Some(def) = &col.default {
            d.push_str(&format!(" DEFAULT {def}"));
        }
        let opts = identity_opts.get(&col.name).map_or("", String::as_str);
        match col.identity.as_str() {
            "a" => d.push_str(&format!(" GENERATED ALWAYS AS IDENTITY{opts}")),
            "d" => d.push_str(&format!(" GENERATED BY DEFAULT AS IDENTITY{opts}")),
            _ => {}
        }
        if col.not_null {
            // A name other than the one PostgreSQL 18 would give it, as
            // pg_dump keeps it. (A `NOT VALID` one is not here: it is a
            // constraint of the table's, added after the rows.)
            match &col.not_null_name {
                Some(n) if *n != format!("{}_{}_not_null", t.name, col.name) => {
                    d.push_str(&format!(" CONSTRAINT {} NOT NULL", quote(n)))
                }
                _ => d.push_str(" NOT NULL"),
            }
            if col.no_inherit {
                d.push_str(" NO INHERIT");
            }
        }
        cols.push(d);
    }
    if let Some(pk) = pk_def {
        cols.push(pk.to_string());
    }
    let create = format!(
        "CREATE TABLE {} (\n    {}\n)",
        quote(&t.name),
        cols.join(",\n    ")
    );
    let parts_recorded = match partitions(c, loc, t)? {
        Some((by, parts)) => {
            script.push_str(&format!("{create} PARTITION BY {by};\n{parts}"));
            true
        }
        None => {
            script.push_str(&format!("{create};\n"));
            false
        }
    };
    script.push_str(&owned);
    script.push_str(&storage_settings(t, storage_cols, one(storage_rel)?));
    // Row-level security and the table's policies and triggers (only
    // tables that have them get these statements, so other tables keep
    // their objects' ids). A restore that creates the table turns row
    // security on as it was and names the policies and triggers, which it
    // does not make (see `pg_guard::table_script`).
    let sec = one(sec)?;
    let (rls, force): (bool, bool) = (sec.get(0), sec.get(1));
    if rls {
        script.push_str(&format!(
            "ALTER TABLE {} ENABLE ROW LEVEL SECURITY;\n",
            quote(&t.name)
        ));
    }
    if force {
        script.push_str(&format!(
            "ALTER TABLE {} FORCE ROW LEVEL SECURITY;\n",
            quote(&t.name)
        ));
    }
    for r in policies {
        let name: String = r.get(0);
        let permissive: bool = r.get(1);
        let cmd = match r.get::<_, String>(2).as_str() {
            "r" => "SELECT",
            "a" => "INSERT",
            "w" => "UPDATE",
            "d" => "DELETE",
            _ => "ALL",
        };
        let roles: Option<String> = r.get(3);
        let using: Option<String> = r.get(4);
        let check: Option<String> = r.get(5);
        script.push_str(&format!(
            "CREATE POLICY {} ON {} AS {} FOR {cmd} TO {}{}{};\n",
            quote(&name),
            quote(&t.name),
            if permissive {
                "PERMISSIVE"
            } else {
                "RESTRICTIVE"
            },
            roles.unwrap_or_else(|| "PUBLIC".into()),
            using.map(|u| format!(" USING ({u})")).unwrap_or_default(),
            check
                .map(|u| format!(" WITH CHECK ({u})"))
                .unwrap_or_default(),
        ));
    }
    // Tables it inherits from (INHERITS; not a partition's table): named
    // by a restore that creates it, not made so.
    for r in parents {
        let parent: String = r.get(0);
        script.push_str(&format!(
            "ALTER TABLE {} INHERIT {parent};\n",
            quote(&t.name)
        ));
    }
    for r in triggers {
        // (The table is printed unqualified: it is in the search path, and
        // no catalog relation shadows its name.)
        let def: String = r.get(0);
        script.push_str(&def);
        script.push_str(";\n");
    }
    // Comments on the table and its columns (as pg_dump keeps them: an
    // API's documentation, PostgREST's descriptions), table first, then
    // columns in their order.
    for r in comments {
        let col: Option<String> = r.get(0);
        let text: String = r.get(1);
        match col {
            None => script.push_str(&format!(
                "COMMENT ON TABLE {} IS {};\n",
                quote(&t.name),
                sql_literal(&text)
            )),
            Some(col) => script.push_str(&format!(
                "COMMENT ON COLUMN {}.{} IS {};\n",
                quote(&t.name),
                quote(&col),
                sql_literal(&text)
            )),
        }
    }
    let mut extras = Vec::new();
    // Constraints other than the key: unique, check, exclusion, a
    // `NOT VALID` not-null one (PostgreSQL 18: the rows may hold NULLs),
    // then foreign keys (which need the other tables).
    for r in cons {
        let def = with_index_options(r.get(1), &r, 2, "");
        extras.push(constraint_extra(&t.name, r.get(0), def, ordinal));
    }
    // A partition's own constraints and indexes, before the table's
    // indexes: PostgreSQL names the copies of those it makes on the
    // partitions, and skips a name taken (`m_a_v_idx1`), as it did where
    // the partition's own came first; made after them, an own index named
    // `m_a_v_idx` would find its name taken.
    if parts_recorded {
        extras.extend(partition_extras(c, loc, t, &qschema, ordinal)?);
    }
    for r in idx {
        extras.push(index_extra(
            r.get(0),
            r.get(1),
            &r.get::<_, String>(2),
            &qschema,
            ordinal,
        ));
    }
    // The index `CLUSTER` uses, and the one logical replication sends a
    // changed row's old key by: marks on indexes made above (or by the
    // script), so set after them.
    for r in marked {
        let (index, qindex): (String, String) = (r.get(0), r.get(1));
        let (clustered, replident): (bool, bool) = (r.get(2), r.get(3));
        let marks = [
            (clustered, "CLUSTER ON"),
            (replident, "REPLICA IDENTITY USING INDEX"),
        ];
        for (_, what) in marks.iter().filter(|(on, _)| *on) {
            *ordinal += 1;
            extras.push(Extra {
                kind: ExtraKind::Index,
                sql: format!("ALTER TABLE {} {what} {qindex}", quote(&t.name)),
                name: index.clone(),
                ordinal: *ordinal,
            });
        }
    }
    for (seq, col, last, called) in seq_values {
        *ordinal += 1;
        extras.push(Extra {
            kind: ExtraKind::Sequence,
            sql: format!(
                "SELECT pg_catalog.setval(pg_catalog.pg_get_serial_sequence({}, {}), {last}, {called})",
                sql_literal(&quote(&t.name)),
                sql_literal(&col)
            ),
            name: seq,
            ordinal: *ordinal,
        });
    }
    Ok((script, extras, facts))
}

/// The constraints a table's script records as extras (`pg_constraint`
/// columns unqualified): unique, check, exclusion, foreign key, and
/// PostgreSQL 18's `NOT VALID` not-null one (the rows may hold NULLs).
const OWN_KINDS: &str = "(contype IN ('u', 'c', 'x', 'f') OR (contype = 'n' AND NOT convalidated))";

/// The constraints and indexes a recorded partition of `t` has of its own
/// (not made on it from the partitioned table above it), as extras named
/// on that partition: its own unique, check, exclusion, `NOT VALID`
/// not-null and foreign key constraints, and its indexes that are attached
/// to no index above and back no constraint. A restore into a new database
/// makes them after the rows, as the table's own.
fn partition_extras(
    c: &mut Client,
    loc: &PgLocation,
    t: &PgTable,
    qschema: &str,
    ordinal: &mut u64,
) -> Result<Vec<Extra>> {
    let err = |e| loc.error(e);
    const TREE: &str = "WITH RECURSIVE tree(oid) AS ( \
           SELECT i.inhrelid FROM pg_catalog.pg_inherits i WHERE i.inhparent = $1::int8::oid \
           UNION ALL \
           SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN tree ON i.inhparent = tree.oid)";
    let cons = c
        .query(
            &format!(
                "{TREE} SELECT c.relname::text, k.conname::text, \
                        pg_catalog.pg_get_constraintdef(k.oid, true), {INDEX_OPTIONS} \
                 FROM tree JOIN pg_catalog.pg_class c ON c.oid = tree.oid \
                 JOIN pg_catalog.pg_constraint k ON k.conrelid = c.oid \
                 WHERE k.conparentid = 0 AND k.conislocal AND k.coninhcount = 0 \
                   AND {OWN_KINDS} \
                 ORDER BY k.contype = 'f', c.relname COLLATE \"C\", k.conname COLLATE \"C\""
            ),
            &[&t.oid],
        )
        .map_err(err)?;
    let idx = c
        .query(
            &format!(
                "{TREE} SELECT c.relname::text, ic.relname::text, \
                        pg_catalog.pg_get_indexdef(i.indexrelid), pg_catalog.quote_ident(ic.relname) \
                 FROM tree JOIN pg_catalog.pg_class c ON c.oid = tree.oid \
                 JOIN pg_catalog.pg_index i ON i.indrelid = c.oid \
                 JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid \
                 WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_inherits x WHERE x.inhrelid = i.indexrelid) \
                   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k \
                                   WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid) \
                 ORDER BY c.relname COLLATE \"C\", ic.relname COLLATE \"C\""
            ),
            &[&t.oid],
        )
        .map_err(err)?;
    let mut extras = Vec::new();
    for r in cons {
        let def = with_index_options(r.get(2), &r, 3, "");
        extras.push(constraint_extra(
            &r.get::<_, String>(0),
            r.get(1),
            def,
            ordinal,
        ));
    }
    for r in idx {
        extras.push(index_extra(
            r.get(1),
            r.get(2),
            &r.get::<_, String>(3),
            qschema,
            ordinal,
        ));
    }
    Ok(extras)
}

/// The next extra: constraint `name` of table `table` (a partition's,
/// for a partition's own), `def` as `pg_get_constraintdef` prints it.
fn constraint_extra(table: &str, name: String, def: String, ordinal: &mut u64) -> Extra {
    *ordinal += 1;
    Extra {
        kind: ExtraKind::Constraint,
        sql: format!(
            "ALTER TABLE {} ADD CONSTRAINT {} {def}",
            quote(table),
            quote(&name)
        ),
        name,
        ordinal: *ordinal,
    }
}

/// The next extra: index `name` (`qname` quoted), `def` as
/// `pg_get_indexdef` prints it. Unqualified, so it lands in the schema
/// restored into: the schema is taken off the table after `CREATE
/// [UNIQUE] INDEX name ON [ONLY]`, never out of the index's own name. A
/// partitioned table's (printed `ON ONLY`, only a partitioned table's
/// is) is made on its partitions too, as pg_dump's restore ends up with it.
fn index_extra(name: String, def: String, qname: &str, qschema: &str, ordinal: &mut u64) -> Extra {
    let def = unqualify_index(&def, qname, qschema).unwrap_or(def);
    *ordinal += 1;
    Extra {
        kind: ExtraKind::Index,
        name,
        ordinal: *ordinal,
        sql: on_partitions_too(def, qname),
    }
}

/// An index definition printed `CREATE [UNIQUE] INDEX name ON ONLY t …`
/// (a partitioned table's) as `… ON t …`, so that a restore makes it on
/// the partitions too; any other as it is.
fn on_partitions_too(def: String, qname: &str) -> String {
    ["CREATE INDEX ", "CREATE UNIQUE INDEX "]
        .into_iter()
        .find_map(|head| {
            let rest = def.strip_prefix(head)?.strip_prefix(qname)?;
            let table = rest.strip_prefix(" ON ONLY ")?;
            Some(format!("{head}{qname} ON {table}"))
        })
        .unwrap_or(def)
}

/// A partitioned table's partition key (`RANGE (at)`, as
/// `pg_get_partkeydef` prints it) and the statements that make its
/// partitions, level by level (`CREATE TABLE p PARTITION OF parent FOR
/// VALUES …` and, for a partition partitioned again, its `PARTITION BY`);
/// `None` for a table that is not partitioned, and for one whose
/// partitions a restore could not make as they are (a key with an
/// expression, a partition in another schema or on another server), which
/// a restore into a new database makes one plain table, as before, with a
/// warning at the snapshot.
fn partitions(c: &mut Client, loc: &PgLocation, t: &PgTable) -> Result<Option<(String, String)>> {
    if !t.partitioned {
        return Ok(None);
    }
    let err = |e| loc.error(e);
    let key: String = c
        .query_one(
            "SELECT pg_catalog.pg_get_partkeydef($1::int8::oid)",
            &[&t.oid],
        )
        .map_err(err)?
        .get(0);
    let rows = c
        .query(
            "WITH RECURSIVE tree(oid, parent, depth) AS ( \
               SELECT i.inhrelid, i.inhparent, 1 FROM pg_catalog.pg_inherits i \
               WHERE i.inhparent = $1::int8::oid \
               UNION ALL \
               SELECT i.inhrelid, i.inhparent, tree.depth + 1 FROM pg_catalog.pg_inherits i \
               JOIN tree ON i.inhparent = tree.oid) \
             SELECT c.relname::text, p.relname::text, \
                    pg_catalog.pg_get_expr(c.relpartbound, c.oid, true), \
                    CASE WHEN c.relkind = 'p' THEN pg_catalog.pg_get_partkeydef(c.oid) END, \
                    c.relkind IN ('r', 'p') AND c.relispartition \
                      AND c.relnamespace = (SELECT relnamespace FROM pg_catalog.pg_class \
                                            WHERE oid = $1::int8::oid) \
             FROM tree JOIN pg_catalog.pg_class c ON c.oid = tree.oid \
             JOIN pg_catalog.pg_class p ON p.oid = tree.parent \
             ORDER BY tree.depth, c.relname COLLATE \"C\"",
            &[&t.oid],
        )
        .map_err(err)?;
    let mut parts = String::new();
    let mut here = true;
    for r in rows {
        let (name, parent, bound, by): (String, String, Option<String>, Option<String>) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        here &= r.get::<_, bool>(4);
        parts.push_str(&format!(
            "CREATE TABLE {} PARTITION OF {} {}{};\n",
            quote(&name),
            quote(&parent),
            bound.unwrap_or_default(),
            by.map(|b| format!(" PARTITION BY {b}")).unwrap_or_default()
        ));
    }
    // What a restore would refuse is not recorded (the guard decides).
    let probe = format!(
        "CREATE TABLE {} (\n    k integer\n) PARTITION BY {key};\n{parts}",
        quote(&t.name)
    );
    match super::pg_guard::table_script(&probe, &t.name) {
        Ok(_) if here => Ok(Some((key, parts))),
        _ => {
            tracing::warn!(
                "table {}: its partitions are not recorded (a partition key with an expression, \
                 or a partition in another schema or not a table); a restore into a new \
                 database makes it one table",
                shown_name(&t.name)
            );
            Ok(None)
        }
    }
}

/// The two queries [`storage_settings`] reads (the table's oid is `$1`):
/// its columns' settings, and the table's.
fn storage_settings_sql() -> (String, String) {
    let options = |of: &str, prefix: &str| {
        format!(
            "(SELECT string_agg('{prefix}' || split_part(o, '=', 1) || '=' \
                      || pg_catalog.quote_literal(substr(o, strpos(o, '=') + 1)), ', ' ORDER BY n) \
              FROM unnest({of}) WITH ORDINALITY AS u(o, n))"
        )
    };
    (
        "SELECT a.attname::text, coalesce(a.attstattarget::int4, -1), \
                    CASE WHEN a.attstorage <> ty.typstorage THEN a.attstorage::text END, \
                    a.attrelid::int8 \
             FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type ty ON ty.oid = a.atttypid \
             WHERE a.attrelid = ANY($1::int8[]::oid[]) AND a.attnum > 0 AND NOT a.attisdropped \
               AND (coalesce(a.attstattarget::int4, -1) >= 0 OR a.attstorage <> ty.typstorage) \
             ORDER BY a.attnum"
            .to_string(),
        format!(
            "SELECT c.relpersistence::text = 'u', {}, {}, c.relreplident::text, c.oid::int8 \
                 FROM pg_catalog.pg_class c \
                 LEFT JOIN pg_catalog.pg_class tc ON tc.oid = c.reltoastrelid \
                 WHERE c.oid = ANY($1::int8[]::oid[])",
            options("c.reloptions", ""),
            options("tc.reloptions", "toast.")
        ),
    )
}

/// The statements that give a new table the storage settings pg_dump
/// keeps, where they differ from the defaults (so that other tables keep
/// their scripts): each column's `SET STATISTICS` and `SET STORAGE`, the
/// table's and its TOAST table's storage parameters (`SET (fillfactor =
/// '70', toast.autovacuum_enabled = 'false')`, in their stored order),
/// `SET UNLOGGED`, and `REPLICA IDENTITY FULL` or `NOTHING` (what logical
/// replication sends of a changed row).
/// (`cols` and `r`: the rows of [`storage_settings_sql`]'s queries.)
fn storage_settings(t: &PgTable, cols: Vec<tokio_postgres::Row>, r: tokio_postgres::Row) -> String {
    let mut out = String::new();
    for r in cols {
        let (col, stats, storage): (String, i32, Option<String>) = (r.get(0), r.get(1), r.get(2));
        let alter = format!(
            "ALTER TABLE {} ALTER COLUMN {}",
            quote(&t.name),
            quote(&col)
        );
        if stats >= 0 {
            out.push_str(&format!("{alter} SET STATISTICS {stats};\n"));
        }
        let storage = match storage.as_deref() {
            Some("p") => Some("PLAIN"),
            Some("e") => Some("EXTERNAL"),
            Some("m") => Some("MAIN"),
            Some("x") => Some("EXTENDED"),
            _ => None,
        };
        if let Some(s) = storage {
            out.push_str(&format!("{alter} SET STORAGE {s};\n"));
        }
    }
    let (unlogged, own, toast): (bool, Option<String>, Option<String>) =
        (r.get(0), r.get(1), r.get(2));
    let params: Vec<String> = own.into_iter().chain(toast).collect();
    if !params.is_empty() {
        out.push_str(&format!(
            "ALTER TABLE {} SET ({});\n",
            quote(&t.name),
            params.join(", ")
        ));
    }
    if unlogged {
        out.push_str(&format!("ALTER TABLE {} SET UNLOGGED;\n", quote(&t.name)));
    }
    // (`USING INDEX` names an index made after the rows: an extra of its
    // own, after it; see `schema_of`.)
    let identity = match r.get::<_, String>(3).as_str() {
        "f" => "FULL",
        "n" => "NOTHING",
        _ => "",
    };
    if !identity.is_empty() {
        out.push_str(&format!(
            "ALTER TABLE {} REPLICA IDENTITY {identity};\n",
            quote(&t.name)
        ));
    }
    out
}

/// A name for a message: quoted as SQL, its control characters escaped
/// (`\n`, `\u{1b}`), so that a name cannot start a line of its own or
/// rewrite the terminal's.
fn shown_name(name: &str) -> String {
    crate::commands::fmt::printable(&quote(name))
}

/// `CREATE [UNIQUE] INDEX qname ON [ONLY] qschema.t …` (as
/// `pg_get_indexdef` prints it) without `qschema.`; `None` when `def` does
/// not start so.
fn unqualify_index(def: &str, qname: &str, qschema: &str) -> Option<String> {
    let head = ["CREATE INDEX ", "CREATE UNIQUE INDEX "]
        .into_iter()
        .find(|h| def.starts_with(h))?;
    let after_name = def[head.len()..].strip_prefix(qname)?;
    let (on, rest) = [" ON ONLY ", " ON "]
        .into_iter()
        .find_map(|on| after_name.strip_prefix(on).map(|r| (on, r)))?;
    let table = rest.strip_prefix(qschema)?.strip_prefix('.')?;
    Some(format!("{head}{qname}{on}{table}"))
}

fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The select list of a table's stored columns.
fn select_list(t: &TableData) -> String {
    let cols: Vec<String> = t
        .columns
        .iter()
        .map(|c| PgClass::of(&c.decl_type).select(&quote(&c.name)))
        .collect();
    cols.join(", ")
}

/// A table's stored columns, quoted, joined by commas.
fn column_list(t: &TableData) -> String {
    let cols: Vec<String> = t.columns.iter().map(|c| quote(&c.name)).collect();
    cols.join(", ")
}

/// The key columns, each as `f(class, quoted name)` gives it, joined by commas.
fn key_list(t: &TableData, f: impl Fn(PgClass, &str) -> String) -> String {
    let cols: Vec<String> = t
        .key
        .iter()
        .map(|&k| {
            let c = &t.columns[k as usize];
            f(PgClass::of(&c.decl_type), &quote(&c.name))
        })
        .collect();
    cols.join(", ")
}

/// The `ORDER BY` list that gives a table's rows in key order. A table
/// keyed by all its columns (`by_all`: no primary key) may hold NULLs,
/// which the encoded key puts first, and both 0 and -0 in a float column,
/// which PostgreSQL orders as equal and the encoded key tells apart after
/// every column's value (-0 last). (Neither is added for a primary key:
/// it cannot hold them, and `NULLS FIRST` would keep its index from giving
/// the order.)
fn order_list(t: &TableData, by_all: bool, utf8_order: bool) -> String {
    let cols = key_list(t, |class, col| {
        let o = class.order(col, utf8_order);
        if by_all {
            format!("{o} NULLS FIRST")
        } else {
            o
        }
    });
    if !by_all {
        return cols;
    }
    let signs: Vec<String> = t
        .key
        .iter()
        .map(|&k| &t.columns[k as usize])
        .filter(|c| matches!(PgClass::of(&c.decl_type), PgClass::Float4 | PgClass::Float8))
        .map(|c| format!("({})::text = '-0'", quote(&c.name)))
        .collect();
    if signs.is_empty() {
        cols
    } else {
        format!("{cols}, {}", signs.join(", "))
    }
}

/// The `COPY` statement that reads `cols` (a select list) of a table in
/// key order (see [`order_list`]).
fn copy_out_sql(from: &str, t: &TableData, cols: &str, by_all: bool, utf8_order: bool) -> String {
    format!(
        "COPY (SELECT {cols} FROM {from} ORDER BY {}) TO STDOUT",
        order_list(t, by_all, utf8_order)
    )
}

/// A parsed row: (key, encoded row, the rest of its line).
type ParsedRow<'a, 'l> = (&'a [u8], &'a [u8], &'l [u8]);

/// Turns one line of `COPY` text output into a row map entry: the stored
/// columns give the key and the encoded row; what follows them (fields a
/// query adds after them, tab-separated) is given back as it is.
struct RowParser<'t> {
    t: &'t TableData,
    classes: Vec<PgClass>,
    /// The unescaped text and decoded bytes of the row's fields.
    arena: Vec<u8>,
    fields: Vec<Field>,
    key: KeyWriter,
    w: Writer,
}

impl<'t> RowParser<'t> {
    fn new(t: &'t TableData) -> Self {
        RowParser {
            t,
            classes: column_classes(t),
            arena: Vec::with_capacity(1024),
            fields: Vec::new(),
            key: KeyWriter::new(),
            w: Writer::with_capacity(256),
        }
    }

    /// Whether every key column reads from binary `COPY`.
    /// The parser with the columns `enums` marks (stored columns, in
    /// order; an empty slice marks none) read as enums: by their label in
    /// binary `COPY`.
    fn with_enums(mut self, enums: &[bool]) -> Self {
        for (class, &e) in self.classes.iter_mut().zip(enums) {
            if e && *class == PgClass::Other {
                *class = PgClass::Enum;
            }
        }
        self
    }

    fn keys_read_binary(&self) -> bool {
        self.t
            .key
            .iter()
            .all(|&k| self.classes[k as usize].reads_binary())
    }

    /// Whether every stored column reads from binary `COPY`.
    fn all_read_binary(&self) -> bool {
        self.classes.iter().all(|c| c.reads_binary())
    }

    /// Fills the fields from a binary `COPY` tuple's first fields (all the
    /// stored columns, or the key columns only, `key_only`); gives back the
    /// fields after them.
    fn fields_binary<'a, 'b>(
        &mut self,
        tuple: &'a [Option<&'b [u8]>],
        key_only: bool,
    ) -> std::result::Result<&'a [Option<&'b [u8]>], String> {
        self.fields.clear();
        self.arena.clear();
        let n = if key_only {
            self.t.key.len()
        } else {
            self.classes.len()
        };
        let (vals, rest) = tuple.split_at_checked(n).ok_or("a tuple too short")?;
        for (i, f) in vals.iter().enumerate() {
            let col = if key_only { self.t.key[i] as usize } else { i };
            match f {
                None => self.fields.push(Field::Null),
                Some(b) => self.classes[col]
                    .push_binary_field(b, &mut self.arena, &mut self.fields)
                    .map_err(|e| format!("column {}: {e}", self.t.columns[col].name))?,
            }
        }
        Ok(rest)
    }

    /// The key of a binary `COPY` tuple of the key columns.
    fn key_binary(&mut self, tuple: &[Option<&[u8]>]) -> std::result::Result<&[u8], String> {
        if self.fields_binary(tuple, true)?.is_empty() {
            self.make_key(true).map_err(|e| e.to_string())?;
            Ok(self.key.finish())
        } else {
            Err("a tuple with more fields than key columns".into())
        }
    }

    /// A whole row from a binary `COPY` tuple: (key, encoded row).
    fn row_binary(
        &mut self,
        tuple: &[Option<&[u8]>],
        sink: &dyn ObjectSink,
        chunker: &Chunker,
    ) -> std::result::Result<(&[u8], &[u8]), String> {
        self.fields_binary(tuple, false)?;
        self.encode_row(sink, chunker)?;
        self.make_key(false).map_err(|e| e.to_string())?;
        Ok((self.key.finish(), &self.w.buf))
    }

    /// Encodes the fields as a row (large values spilled to chunks when
    /// the row would be too large for a map entry).
    fn encode_row(
        &mut self,
        sink: &dyn ObjectSink,
        chunker: &Chunker,
    ) -> std::result::Result<(), String> {
        for spilled in [false, true] {
            self.w.buf.clear();
            self.w.varint(self.fields.len() as u64);
            for f in &self.fields {
                encode_cell(&mut self.w, f.value(&self.arena), sink, chunker, spilled)
                    .map_err(|e| e.to_string())?;
            }
            if self.w.buf.len() <= super::value::ROW_SPILL_AT {
                break;
            }
        }
        Ok(())
    }

    /// Parses the first `columns` fields (all the stored columns, or the
    /// key columns only, `key_only`), returning the rest of the line.
    fn fields<'l>(
        &mut self,
        line: &'l [u8],
        key_only: bool,
    ) -> std::result::Result<&'l [u8], String> {
        self.fields.clear();
        self.arena.clear();
        let want = if key_only {
            self.t.key.len()
        } else {
            self.classes.len()
        };
        let mut rest = line;
        while self.fields.len() < want {
            let i = self.fields.len();
            // Fields are short: one pass finds the tab and any backslash.
            let mut end = 0;
            let mut escaped = false;
            while let Some(&b) = rest.get(end) {
                if b == b'\t' {
                    break;
                }
                escaped |= b == b'\\';
                end += 1;
            }
            let raw = &rest[..end];
            rest = match rest.get(end + 1..) {
                Some(more) => more,
                None if i + 1 == want => &rest[rest.len()..],
                None => return Err("COPY gave fewer fields than columns".into()),
            };
            let col = if key_only { self.t.key[i] as usize } else { i };
            if raw == b"\\N" {
                self.fields.push(Field::Null);
                continue;
            }
            let start = self.arena.len();
            if escaped {
                unescape_copy_onto(raw, &mut self.arena);
            } else {
                self.arena.extend_from_slice(raw);
            }
            let f = self.classes[col]
                .field(&mut self.arena, start)
                .map_err(|e| format!("column {}: {e}", self.t.columns[col].name))?;
            self.fields.push(f);
        }
        Ok(rest)
    }

    fn make_key(&mut self, key_only: bool) -> Result<()> {
        self.key.clear();
        for (j, &k) in self.t.key.iter().enumerate() {
            let f = self.fields[if key_only { j } else { k as usize }];
            self.key.push(f.value(&self.arena))?;
        }
        Ok(())
    }

    /// A whole row: (key, encoded row, the rest of the line).
    fn row<'l>(
        &mut self,
        line: &'l [u8],
        sink: &dyn ObjectSink,
        chunker: &Chunker,
    ) -> std::result::Result<ParsedRow<'_, 'l>, String> {
        let rest = self.fields(line, false)?;
        self.encode_row(sink, chunker)?;
        self.make_key(false).map_err(|e| e.to_string())?;
        Ok((self.key.finish(), &self.w.buf, rest))
    }

    /// The key columns only: (key, the rest of the line).
    fn key_only<'l>(&mut self, line: &'l [u8]) -> std::result::Result<(&[u8], &'l [u8]), String> {
        let rest = self.fields(line, true)?;
        self.make_key(true).map_err(|e| e.to_string())?;
        Ok((self.key.finish(), rest))
    }
}

/// Reads a `COPY … TO STDOUT` line by line into `f`.
fn copy_lines(
    c: &mut Client,
    (loc, table): (&PgLocation, &str),
    sql: &str,
    progress: &dyn Progress,
    mut f: impl FnMut(&[u8]) -> Result<()>,
) -> Result<u64> {
    let mut due = Interrupts::default();
    c.copy_out_lines(
        sql,
        |line| {
            if due.check(line.len(), progress) {
                return Err(SyncError::Interrupted);
            }
            f(line)
        },
        |e| loc.table_error(table, e),
    )
}

/// The order a table's rows are read in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    /// Key order (`ORDER BY` the key: the server reads the key's index).
    Key,
    /// The heap's order (a sequential scan, which costs the server about
    /// a quarter less), for [`super::build_row_map_with`] to put in key
    /// order.
    Heap,
}

/// Streams a table's rows in `order`, calling `f(key, row)`.
#[allow(clippy::too_many_arguments)]
fn read_table(
    c: &mut Client,
    loc: &PgLocation,
    name: &str,
    t: &TableData,
    enums: &[bool],
    (by_all, partitioned, order): (bool, bool, Order),
    sink: &dyn ObjectSink,
    chunker: &Chunker,
    progress: &dyn Progress,
    f: &mut super::RowSink<'_>,
) -> Result<u64> {
    let bad =
        |what: String| SyncError::Database(format!("{}: table {name}: {what}", loc.redacted()));
    let mut p = RowParser::new(t).with_enums(enums);
    let from = own_rows(name, partitioned);
    let sql = match order {
        Order::Key => copy_out_sql(&from, t, &select_list(t), by_all, c.utf8_order()),
        // A plain table's own rows, every column as it is (no cast):
        // `COPY table` reads the heap without a query's executor (a few
        // per cent of the server's time), and copies no child table's
        // rows, as `ONLY`.
        Order::Heap => {
            let (cols, plain) = (select_list(t), column_list(t));
            if !partitioned && cols == plain {
                format!("COPY {} ({plain}) TO STDOUT", quote(name))
            } else {
                format!("COPY (SELECT {cols} FROM {from}) TO STDOUT")
            }
        }
    };
    if !p.all_read_binary() {
        return copy_lines(c, (loc, name), &sql, progress, |line| {
            let (key, row, _) = p.row(line, sink, chunker).map_err(bad)?;
            f(key, row)
        });
    }
    // Every column reads from binary COPY: the server prints no numbers.
    let mut due = Interrupts::default();
    c.copy_out_binary(
        &format!("{sql} (FORMAT binary)"),
        (t.columns.len(), MAX_BINARY_FIELD),
        |tuple| {
            if due.check(tuple.iter().flatten().map(|v| v.len()).sum(), progress) {
                return Err(SyncError::Interrupted);
            }
            let (key, row) = p.row_binary(tuple, sink, chunker).map_err(bad)?;
            f(key, row)
        },
        |e| loc.table_error(name, e),
        bad,
    )
}

/// The longest field a binary `COPY` may give (PostgreSQL's own limit).
const MAX_BINARY_FIELD: usize = 1 << 30;

/// When a `COPY` looks for an interrupt: every 4,096 rows or 1 MiB.
#[derive(Default)]
struct Interrupts {
    rows: u64,
    bytes: usize,
}

impl Interrupts {
    /// Counts a row of `len` bytes; true if an interrupt was asked for.
    fn check(&mut self, len: usize, progress: &dyn Progress) -> bool {
        self.bytes += len;
        let due = self.rows.is_multiple_of(4096) || self.bytes > 1 << 20;
        self.rows += 1;
        if self.bytes > 1 << 20 {
            self.bytes = 0;
        }
        due && progress.interrupted()
    }
}

/// Most rows a re-snapshot fetches or deletes by the row cache before a
/// full read is cheaper (and the edits' memory stays bounded).
const MAX_CACHED_EDITS: usize = 100_000;

/// Why a re-snapshot reads the whole table after all: too many rows changed
/// for the row cache's way.
fn too_many_edits() -> String {
    format!("more than {MAX_CACHED_EDITS} rows changed")
}
/// Most bytes of the keys of deleted rows those edits may hold.
const MAX_CACHED_EDIT_BYTES: usize = 64 << 20;
/// Most bytes of changed rows (encoded, large values spilled to chunks)
/// a re-snapshot holds before it reads the table in full instead.
const MAX_FETCHED_BYTES: usize = 256 << 20;

/// What a re-snapshot by the row cache gave.
enum Incremental {
    /// Rows, and the root of their map.
    Done(u64, ObjectId),
    /// The cache could not be used: read the table in full.
    Fallback(String),
}

/// The range of `age(xmin)` (as the server's `age` gives it in a
/// transaction where `age(now as a 32-bit id)` is `offset`) that holds
/// exactly the row versions made since the cache's snapshot, whose `xmin`
/// was `bound` (the tests hold it to a model, `xid_before`). `age` counts back from a
/// transaction id the server fixes for the whole transaction (at or after
/// `now`, the snapshot's `xmax`), wrapping at 2^31, and gives the special
/// ids below 3 the largest age. (`age` is parallel restricted: only the
/// transaction's own process runs it, so every row's age counts from the
/// same id as `offset`.) None when the range would reach that wrap: the
/// ages then no longer tell.
fn changed_ages(offset: i32, bound: u64, now: u64) -> Option<(i64, i64)> {
    let width = now.checked_sub(bound)?;
    let hi = i64::from(offset).checked_add(i64::try_from(width).ok()?)?;
    (offset >= 0 && (now & 0xFFFF_FFFF) >= 3 && hi < i64::from(i32::MAX))
        .then_some((i64::from(offset), hi))
}

/// A re-snapshot of one table by its row cache (written as of the
/// snapshot whose `xmin` is `xids.0`; `xids.1` is this snapshot's `xmax`):
/// reads in full the rows whose version is not older than the cache (a
/// sequential scan that filters by `xmin`), counts the table's rows, and
/// merges the cache's keys with the rows read. Each row the cache had and
/// the read did not give is the cached one, unchanged; if those and the
/// rows read come to fewer than the table holds, some cached rows are
/// gone, and the table's keys are read (in key order) to find which. The
/// map is the cached one with those edits. Writes the new cache to `out`.
#[allow(clippy::too_many_arguments)]
fn read_table_by_cache(
    c: &mut Client,
    loc: &PgLocation,
    name: &str,
    t: &TableData,
    enums: &[bool],
    by_all: bool,
    partitioned: bool,
    cached: (&Path, &[u8; 32]),
    xids: (u64, u64),
    facts: &TableFacts,
    src: &dyn ObjectSource,
    sink: &dyn ObjectSink,
    chunker: &Chunker,
    progress: &dyn Progress,
    out: &mut CacheWriter,
) -> Result<Incremental> {
    let bad =
        |what: String| SyncError::Database(format!("{}: table {name}: {what}", loc.redacted()));
    let from = own_rows(name, partitioned);
    let Some((lo, hi)) = changed_ages(facts.age_of_xmax, xids.0, xids.1) else {
        return Ok(Incremental::Fallback(
            "transaction ids too far apart to compare".into(),
        ));
    };
    let total: i64 = match facts.count {
        Some(n) => n,
        None => c
            .query_one(&format!("SELECT count(*) FROM {from}"), &[])
            .map_err(|e| loc.error(e))?
            .get(0),
    };
    // The rows made since the cache: in full, in the heap's order.
    let mut fetched: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut fetched_bytes = 0usize;
    let mut over: Option<String> = None;
    let mut rp = RowParser::new(t);
    copy_lines(
        c,
        (loc, name),
        &format!(
            "COPY (SELECT {} FROM {from} WHERE pg_catalog.age(xmin) BETWEEN {lo} AND {hi} \
             LIMIT {}) TO STDOUT",
            select_list(t),
            MAX_CACHED_EDITS + 1
        ),
        progress,
        |line| {
            if over.is_some() {
                return Ok(());
            }
            let (key, row, _) = rp.row(line, sink, chunker).map_err(bad)?;
            fetched_bytes += key.len() + row.len();
            if fetched.insert(key.to_vec(), row.to_vec()).is_some() {
                // Rows alike in every column of a table keyed by all of
                // them: a full read reports them.
                over = Some("two rows with one key".into());
            } else if fetched.len() > MAX_CACHED_EDITS {
                over = Some(too_many_edits());
            } else if fetched_bytes > MAX_FETCHED_BYTES {
                over = Some(format!(
                    "the changed rows hold more than {} MiB",
                    MAX_FETCHED_BYTES >> 20
                ));
            }
            Ok(())
        },
    )?;
    if let Some(why) = over {
        return Ok(Incremental::Fallback(why));
    }
    let reopen = || match CacheReader::open(cached.0, cached.1) {
        Ok(Some((r, xid))) if xid == xids.0 => Ok(r),
        Ok(_) => Err(Unusable("changed while in use".into())),
        Err(e) => Err(e),
    };
    // The cache's keys with the rows read merged in: the new cache if no
    // row is gone.
    let merged = (|| -> Usable<(u64, u64, ObjectId)> {
        let mut old = reopen()?;
        let (mut had, mut replaced) = (0u64, 0u64);
        let mut new = fetched.keys().peekable();
        while let Some(k) = old.next_row()? {
            while let Some(f) = new.next_if(|f| f.as_slice() < k) {
                out.row(f);
            }
            if new.next_if(|f| f.as_slice() == k).is_some() {
                replaced += 1;
            }
            out.row(k);
            had += 1;
        }
        for f in new {
            out.row(f);
        }
        Ok((had, replaced, old.finish()?))
    })();
    let (had, replaced, old_root) = match merged {
        Ok(m) => m,
        Err(Unusable(e)) => return Ok(Incremental::Fallback(e)),
    };
    // Rows the table holds that were not read are cached ones, unchanged.
    let kept = u64::try_from(total)
        .ok()
        .and_then(|n| n.checked_sub(fetched.len() as u64));
    let Some(gone_count) = kept.and_then(|k| had.checked_sub(k)?.checked_sub(replaced)) else {
        return Ok(Incremental::Fallback(
            "the table holds rows the cache does not know".into(),
        ));
    };
    if gone_count > MAX_CACHED_EDITS as u64 {
        return Ok(Incremental::Fallback(too_many_edits()));
    }
    let gone = if gone_count == 0 {
        Vec::new()
    } else {
        match find_gone(
            c, loc, name, t, enums, by_all, &from, &fetched, reopen, progress, out,
        )? {
            Ok(gone) if gone.len() as u64 == gone_count => gone,
            Ok(gone) => {
                return Ok(Incremental::Fallback(format!(
                    "{} rows gone where the count said {gone_count}",
                    gone.len()
                )));
            }
            Err(Unusable(e)) => return Ok(Incremental::Fallback(e)),
        }
    };
    let (changed, deleted) = (fetched.len(), gone.len());
    // Edits in key order: the rows read and the deleted keys.
    let mut fetched = fetched.into_iter().peekable();
    let mut gone = gone.into_iter().peekable();
    let edits = std::iter::from_fn(|| {
        let take_fetched = match (fetched.peek(), gone.peek()) {
            (None, None) => return None,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some((f, _)), Some(g)) => f < g,
        };
        Some(Ok(if take_fetched {
            let (k, v) = fetched.next()?;
            (k, Some(v))
        } else {
            (gone.next()?, None)
        }))
    });
    match crate::pmap::apply_edits(src, sink, ObjectType::Rows, &old_root, edits) {
        Ok(root) => {
            tracing::info!(
                "{}: table {name}: {total} rows by the row cache ({changed} read, {deleted} gone)",
                loc.redacted()
            );
            Ok(Incremental::Done(total as u64, root))
        }
        Err(e) => Ok(Incremental::Fallback(e.to_string())),
    }
}

/// The cached keys a table no longer holds, found by reading its keys in
/// key order beside the cache's (from `reopen`); `out` is written anew
/// with the table's keys. A key the table holds that neither the cache nor
/// `fetched` (the rows read since it) has makes the cache unusable.
#[allow(clippy::too_many_arguments)]
fn find_gone(
    c: &mut Client,
    loc: &PgLocation,
    name: &str,
    t: &TableData,
    enums: &[bool],
    by_all: bool,
    from: &str,
    fetched: &BTreeMap<Vec<u8>, Vec<u8>>,
    reopen: impl Fn() -> Usable<CacheReader>,
    progress: &dyn Progress,
    out: &mut CacheWriter,
) -> Result<Usable<Vec<Vec<u8>>>> {
    let bad =
        |what: String| SyncError::Database(format!("{}: table {name}: {what}", loc.redacted()));
    let mut old = match reopen() {
        Ok(r) => r,
        Err(e) => return Ok(Err(e)),
    };
    out.restart();
    let mut gone: Vec<Vec<u8>> = Vec::new();
    let mut held = 0usize;
    let mut unusable: Option<String> = None;
    // The cache's next key, read ahead.
    let mut ahead: Option<Vec<u8>> = None;
    let advance = |old: &mut CacheReader, ahead: &mut Option<Vec<u8>>| -> Usable<()> {
        *ahead = old.next_row()?.map(<[u8]>::to_vec);
        Ok(())
    };
    if let Err(Unusable(e)) = advance(&mut old, &mut ahead) {
        return Ok(Err(Unusable(e)));
    }
    let mut on_key = |key: &[u8]| {
        out.row(key);
        if unusable.is_some() {
            return;
        }
        let step = (|| -> Usable<()> {
            // Cached keys before this one are gone.
            while let Some(k) = ahead.take_if(|k| k.as_slice() < key) {
                held += k.len();
                gone.push(k);
                advance(&mut old, &mut ahead)?;
                if gone.len() > MAX_CACHED_EDITS || held > MAX_CACHED_EDIT_BYTES {
                    return Err(Unusable(too_many_edits()));
                }
            }
            if ahead.as_deref() == Some(key) {
                advance(&mut old, &mut ahead)?;
            } else if !fetched.contains_key(key) {
                return Err(Unusable(
                    "the table holds a row the cache does not know".into(),
                ));
            }
            Ok(())
        })();
        if let Err(Unusable(e)) = step {
            unusable = Some(e);
            gone.clear();
        }
    };
    let sql = copy_out_sql(
        from,
        t,
        &key_list(t, PgClass::select),
        by_all,
        c.utf8_order(),
    );
    let mut p = RowParser::new(t).with_enums(enums);
    if p.keys_read_binary() {
        let mut due = Interrupts::default();
        c.copy_out_binary(
            &format!("{sql} (FORMAT binary)"),
            (t.key.len(), crate::pmap::MAX_KEY),
            |tuple| {
                if due.check(tuple.iter().flatten().map(|v| v.len()).sum(), progress) {
                    return Err(SyncError::Interrupted);
                }
                on_key(p.key_binary(tuple).map_err(bad)?);
                Ok(())
            },
            |e| loc.table_error(name, e),
            bad,
        )?;
    } else {
        copy_lines(c, (loc, name), &sql, progress, |line| {
            on_key(p.key_only(line).map_err(bad)?.0);
            Ok(())
        })?;
    }
    if let Some(e) = unusable {
        return Ok(Err(Unusable(e)));
    }
    let rest = (|| -> Usable<()> {
        while let Some(k) = ahead.take() {
            gone.push(k);
            advance(&mut old, &mut ahead)?;
            if gone.len() > MAX_CACHED_EDITS {
                return Err(Unusable(too_many_edits()));
            }
        }
        old.finish().map(|_| ())
    })();
    Ok(rest.map(|()| gone))
}

/// The definitions of the types a table's columns are made of, each type
/// once, through arrays, domains, composites, ranges and multiranges: each
/// one's catalog row version, an enum's labels, a composite's attributes,
/// from `frontier`, the column types ([`TableFacts`]).
/// None when one holds catalog names (`regclass` …), whose text a rename
/// elsewhere changes: no definition says so. A level of types per query,
/// for the types `memo` does not know yet: after the first tables, most
/// tables' types are all known.
fn type_closure(
    c: &mut Client,
    loc: &PgLocation,
    mut frontier: Vec<i64>,
    memo: &mut TypeMemo,
) -> Result<Option<String>> {
    let mut seen: std::collections::BTreeSet<i64> = frontier.iter().copied().collect();
    let mut parts = Vec::new();
    while !frontier.is_empty() {
        let unknown: Vec<i64> = frontier
            .iter()
            .copied()
            .filter(|o| !memo.contains_key(o))
            .collect();
        if !unknown.is_empty() {
            learn_types(c, loc, &unknown, memo)?;
        }
        let mut next_level = Vec::new();
        for o in &frontier {
            match memo.get(o) {
                Some(TypeSeen::CatalogNames) => return Ok(None),
                Some(TypeSeen::Part(part, next)) => {
                    parts.push(part.clone());
                    next_level.extend(next.iter().copied().filter(|o| seen.insert(*o)));
                }
                Some(TypeSeen::Absent) | None => {}
            }
        }
        frontier = next_level;
    }
    parts.sort();
    Ok(Some(parts.join(";")))
}

/// What [`type_closure`] learned of each type (by oid) within one
/// transaction, so that the types most tables share are looked up once a
/// snapshot, not once a table.
type TypeMemo = std::collections::HashMap<i64, TypeSeen>;

/// A type as [`type_closure`] sees it.
enum TypeSeen {
    /// No such type.
    Absent,
    /// It holds catalog names (`regclass` …).
    CatalogNames,
    /// Its part of a closure (`oid:xmin:labels:attributes`), and the types
    /// it is made of.
    Part(String, Vec<i64>),
}

/// Looks up `oids` for [`type_closure`] into `memo`, each one level deep.
fn learn_types(c: &mut Client, loc: &PgLocation, oids: &[i64], memo: &mut TypeMemo) -> Result<()> {
    let rows = c
        .query(
            "SELECT t.oid::int8, t.xmin::text, \
               coalesce((SELECT string_agg(e.oid::text || '/' || e.xmin::text, ',' ORDER BY e.oid) \
                 FROM pg_catalog.pg_enum e WHERE e.enumtypid = t.oid), ''), \
               coalesce((SELECT string_agg(a.attnum::text || '/' || a.atttypid::text || '/' \
                 || a.xmin::text, ',' ORDER BY a.attnum) FROM pg_catalog.pg_attribute a \
                 WHERE t.typrelid <> 0 AND a.attrelid = t.typrelid AND a.attnum > 0), ''), \
               t.typnamespace = 'pg_catalog'::regnamespace AND t.typname IN \
                 ('regclass', 'regtype', 'regproc', 'regprocedure', 'regoper', 'regoperator', \
                  'regconfig', 'regdictionary', 'regnamespace', 'regrole', 'regcollation'), \
               ARRAY(SELECT x::int8 FROM (SELECT t.typelem UNION ALL SELECT t.typbasetype \
                 UNION ALL SELECT a.atttypid FROM pg_catalog.pg_attribute a \
                   WHERE t.typrelid <> 0 AND a.attrelid = t.typrelid AND a.attnum > 0 \
                     AND NOT a.attisdropped \
                 UNION ALL SELECT r.rngsubtype FROM pg_catalog.pg_range r WHERE r.rngtypid = t.oid \
                 UNION ALL SELECT r.rngtypid FROM pg_catalog.pg_range r \
                   WHERE (pg_catalog.to_jsonb(r) ->> 'rngmultitypid')::oid = t.oid) n(x) \
                 WHERE x <> 0) \
             FROM pg_catalog.pg_type t WHERE t.oid = ANY($1::int8[]::oid[])",
            &[&oids],
        )
        .map_err(|e| loc.error(e))?;
    for &o in oids {
        memo.insert(o, TypeSeen::Absent);
    }
    for r in rows {
        let (oid, xmin, labels, attrs, catalog_names): (i64, String, String, String, bool) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        let seen = if catalog_names {
            TypeSeen::CatalogNames
        } else {
            TypeSeen::Part(format!("{oid}:{xmin}:{labels}:{attrs}"), r.get(5))
        };
        memo.insert(oid, seen);
    }
    Ok(())
}

/// What a table's row cache must match: the database and table, their
/// definitions (and those of the column types and of every type they are
/// made of, through arrays, domains, composites and ranges: an enum's
/// labels, a composite's attributes; None for a table with a column of
/// catalog names, such as `regclass`, whose text a rename changes), the table's
/// storage (a partitioned table's:
/// every partition's), the server's start time, and sp-sync's row
/// encoding. A cache trusts every row version older than its snapshot
/// (see [`changed_ages`]); a database put back in time (a backup restored, a failover to a replica
/// that lagged) would make a version the read never saw look so, and is
/// only ever put back by a server started anew. Also gives the `xmin` and `xmax` (64-bit) of the scan's
/// snapshot.
fn cache_ident(
    c: &mut Client,
    loc: &PgLocation,
    rel: &PgTable,
    t: &TableData,
    sql: &str,
    memo: &mut TypeMemo,
    facts: &TableFacts,
) -> Result<Option<([u8; 32], u64, u64)>> {
    let Some(types) = type_closure(c, loc, facts.types.clone(), memo)? else {
        return Ok(None);
    };
    let row = &facts.ident;
    let db: Option<i64> = row.get(0);
    let system: Option<i64> = row.get(1);
    let relfilenode: i64 = row.get(2);
    let class_xmin: String = row.get(3);
    let started: String = row.get(4);
    let partitions: String = row.get(5);
    let xmin: i64 = row.get(6);
    let xmax: i64 = row.get(7);
    let mut w = Writer::with_capacity(256);
    w.bytes(b"sp-sync row cache: pg rows v3")
        .bytes(env!("CARGO_PKG_VERSION").as_bytes())
        .bytes(loc.redacted().as_bytes())
        .bytes(loc.schema.as_bytes())
        .bytes(rel.name.as_bytes())
        .zigzag(db.unwrap_or(-1))
        .zigzag(system.unwrap_or(-1))
        .zigzag(rel.oid)
        .zigzag(relfilenode)
        .bytes(class_xmin.as_bytes())
        .bytes(types.as_bytes())
        .bytes(started.as_bytes())
        .bytes(partitions.as_bytes())
        .bytes(sql.as_bytes())
        .varint(t.columns.len() as u64);
    for col in &t.columns {
        w.bytes(col.name.as_bytes()).bytes(col.decl_type.as_bytes());
    }
    w.varint(t.key.len() as u64);
    for &k in &t.key {
        w.varint(u64::from(k));
    }
    Ok(Some((
        *blake3::hash(&w.buf).as_bytes(),
        xmin as u64,
        xmax as u64,
    )))
}

/// The model `changed_ages` is tested against: whether a row version
/// whose `xmin` is `raw` (32 bits, as a tuple holds it), seen by a
/// snapshot whose `xmax` is `now` (64 bits), was made by a transaction
/// older than `bound`: the `xmin` of an earlier snapshot. Every
/// transaction below a snapshot's `xmin` had ended when it was taken, so
/// such a version was the row that snapshot saw. (A transaction between a
/// snapshot's `xmin` and `xmax` that is not in its list of running ones may
/// still be a subtransaction of one that is: the list names top-level
/// transactions only, so nothing above `xmin` is trusted.) `raw` is placed
/// in the 2^32 transactions up to `now`, `now` itself included (an id no
/// version seen can hold in this epoch: taken for new), down to before
/// the first when there was no earlier epoch (ids no transaction had yet:
/// taken for old, as no version seen can hold them either); the caller
/// makes sure `bound` is among them. The special ids below 3 (bootstrap,
/// frozen) are older than any snapshot.
#[cfg(test)]
fn xid_before(raw: u32, bound: u64, now: u64) -> bool {
    if raw < 3 {
        return true;
    }
    let back = (now as u32).wrapping_sub(raw);
    i128::from(now) - i128::from(back) < i128::from(bound)
}

/// A row cache older than this many transactions is not trusted: a row
/// version's `xmin` is 32 bits, and must not have come round again.
const MAX_CACHE_XID_AGE: u64 = 1 << 31;

/// Reads the selected tables of one PostgreSQL database in one
/// `REPEATABLE READ, READ ONLY` transaction.
pub fn scan(
    src: &DbSource,
    sink: &dyn ObjectSink,
    chunker: &Chunker,
    progress: &dyn Progress,
    rows_cache: Option<&RowCacheCtx<'_>>,
) -> Result<ScanResult> {
    let loc = PgLocation::parse(&src.path.to_string_lossy())?;
    on_own_thread(|| {
        let mut c = loc.connect()?;
        begin_locked(&mut c, &loc, &src.tables)?;
        let r = scan_in(
            &mut c,
            &loc,
            &src.tables,
            src.missing_ok,
            sink,
            chunker,
            progress,
            rows_cache,
        );
        // After an error the connection may be in the middle of a COPY,
        // which a ROLLBACK would first read to its end: closing the
        // connection ends the transaction too.
        if r.is_ok() {
            let _ = c.batch_execute("ROLLBACK");
        }
        r
    })
}

/// How many times [`begin_locked`] starts over when the schema's tables
/// change between listing and locking them.
const LOCK_ATTEMPTS: u32 = 5;

/// Begins the `REPEATABLE READ, READ ONLY` transaction a scan reads in,
/// holding an `ACCESS SHARE` lock on every table it will read (those
/// `wanted` names, or all of the schema's) from before its snapshot is
/// taken. `TRUNCATE` and the forms of `ALTER TABLE` that rewrite a table
/// are not MVCC-safe: once one commits, a transaction whose snapshot is
/// older sees the table empty. The lock makes such a command wait for the
/// scan to end instead, and one that committed before the lock was granted
/// is older than the snapshot, so its result is what the scan reads. `LOCK`
/// takes no snapshot (the first query after it does), and the tables are
/// listed before the transaction begins; a table that appeared, or went
/// away, in between (it is not among the locks the snapshot sees) starts
/// the transaction over.
fn begin_locked(c: &mut Client, loc: &PgLocation, wanted: &[String]) -> Result<()> {
    let err = |e| loc.error(e);
    for _ in 0..LOCK_ATTEMPTS {
        let names: Vec<String> = c
            .query(
                "SELECT c.relname::text FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition \
                   AND (cardinality($2::text[]) = 0 OR c.relname = ANY ($2::text[]))",
                &[&loc.schema, &wanted],
            )
            .map_err(err)?
            .into_iter()
            .map(|r| r.get(0))
            .collect();
        c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .map_err(err)?;
        let mut locked = true;
        for part in names.chunks(256) {
            let list: Vec<String> = part
                .iter()
                .map(|n| format!("{}.{}", quote(&loc.schema), quote(n)))
                .collect();
            match c.batch_execute(&format!(
                "LOCK TABLE {} IN ACCESS SHARE MODE",
                list.join(", ")
            )) {
                Ok(()) => {}
                // Dropped or renamed since it was listed.
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
                    locked = false;
                    break;
                }
                Err(e) => return Err(err(e)),
            }
        }
        if locked {
            // The transaction's snapshot is taken here, after the locks.
            let missing: i64 = c
                .query_one(
                    "SELECT count(*) FROM pg_catalog.pg_class c \
                     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition \
                       AND (cardinality($2::text[]) = 0 OR c.relname = ANY ($2::text[])) \
                       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_locks l \
                             WHERE l.pid = pg_catalog.pg_backend_pid() \
                               AND l.locktype = 'relation' AND l.relation = c.oid \
                               AND l.mode = 'AccessShareLock' AND l.granted)",
                    &[&loc.schema, &wanted],
                )
                .map_err(err)?
                .get(0);
            if missing == 0 {
                return Ok(());
            }
        }
        c.batch_execute("ROLLBACK").map_err(err)?;
        tracing::debug!(
            "the tables of schema {} changed while locking them; again",
            loc.schema
        );
    }
    Err(SyncError::Database(format!(
        "{}: the tables of schema {} kept changing while they were being locked ({LOCK_ATTEMPTS} attempts); try again",
        loc.redacted(),
        loc.schema
    )))
}

#[allow(clippy::too_many_arguments)]
fn scan_in(
    c: &mut Client,
    loc: &PgLocation,
    wanted: &[String],
    missing_ok: bool,
    sink: &dyn ObjectSink,
    chunker: &Chunker,
    progress: &dyn Progress,
    rows_cache: Option<&RowCacheCtx<'_>>,
) -> Result<ScanResult> {
    // (A sequential scan starts where another one of the table is, unless
    // told not to: a table read in its heap's order must start at its
    // start.)
    c.batch_execute(&format!(
        "SET LOCAL search_path = {}; SET LOCAL synchronize_seqscans = off",
        quote(&loc.schema)
    ))
    .map_err(|e| loc.error(e))?;
    let rels = list_relations(c, loc)?;
    let mut types = TypeMemo::new();
    // A materialized view holds rows a REFRESH makes: not read.
    if wanted.is_empty() {
        let matviews: Option<String> = c
            .query_one(
                "SELECT string_agg(c.relname::text, ', ' ORDER BY c.relname COLLATE \"C\") \
                 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relkind = 'm'",
                &[&loc.schema],
            )
            .map_err(|e| loc.error(e))?
            .get(0);
        if let Some(m) = matviews {
            tracing::warn!(
                "{}: materialized views are not snapshotted (a REFRESH makes their rows): {m}",
                loc.redacted()
            );
        }
    }
    if rels.is_empty() {
        let exists: bool = c
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)",
                &[&loc.schema],
            )
            .map_err(|e| loc.error(e))?
            .get(0);
        if !exists {
            return Err(SyncError::NotFound(format!(
                "{}: no schema {}",
                loc.redacted(),
                loc.schema
            )));
        }
    }
    for t in wanted.iter().filter(|_| !missing_ok) {
        if !rels.iter().any(|r| &r.name == t) {
            return Err(SyncError::NotFound(format!(
                "{}: no table {t} in schema {}",
                loc.redacted(),
                loc.schema
            )));
        }
    }
    let read: Vec<&str> = rels
        .iter()
        .filter(|r| wanted.is_empty() || wanted.contains(&r.name))
        .map(|r| r.name.as_str())
        .collect();
    refuse_shadowed(c, loc, &read)?;
    // Every table's catalog rows at once (the tables whose structure the
    // loop below refuses are left out).
    let mut catalog = {
        let mut asked = Vec::new();
        for rel in rels
            .iter()
            .filter(|r| r.view.is_none() && (wanted.is_empty() || wanted.contains(&r.name)))
        {
            let Ok((columns, key, _)) = structure(loc, rel) else {
                continue;
            };
            // (The row count is asked with the rest when there is a row
            // cache to read by.)
            let count = rows_cache.is_some_and(|rc| row_cache_path(rc, loc, rel).exists());
            asked.push((rel, unread_table(columns, key, true), count));
        }
        let asked: Vec<(&PgTable, &TableData, bool)> =
            asked.iter().map(|(r, t, n)| (*r, t, *n)).collect();
        Catalog::ask(c, loc, &asked)?
    };
    let mut out = ScanResult::default();
    let mut ordinal: u64 = 0;
    for rel in &rels {
        if !wanted.is_empty() && !wanted.contains(&rel.name) {
            continue;
        }
        ordinal += 1;
        let my_ordinal = ordinal;
        let obj = if let Some(def) = &rel.view {
            TableObject {
                engine: Engine::Postgres,
                name: rel.name.clone(),
                // (Its options only when it has some: other views keep
                // their objects' ids.)
                sql: match &rel.view_with {
                    Some(with) => {
                        format!("CREATE VIEW {} WITH ({with}) AS\n{def}", quote(&rel.name))
                    }
                    None => format!("CREATE VIEW {} AS\n{def}", quote(&rel.name)),
                },
                ordinal: my_ordinal,
                table: None,
                extras: Vec::new(),
            }
        } else {
            progress.stage(&format!("table {}", rel.name));
            let (columns, key, pk_def) = structure(loc, rel)?;
            if columns.is_empty() {
                // (A table of no columns holds nothing but a count of
                // empty rows: a whole schema goes on without it, and says
                // so.)
                if wanted.is_empty() {
                    tracing::warn!(
                        "{}: table {} has no stored columns: left out",
                        loc.redacted(),
                        rel.name
                    );
                    continue;
                }
                return Err(SyncError::Database(format!(
                    "{}: table {} has no stored columns",
                    loc.redacted(),
                    rel.name
                )));
            }
            let by_all = key.is_empty();
            if by_all && !loc.key_by_all_columns {
                return Err(SyncError::Database(format!(
                    "{}: table {} has no primary key (PostgreSQL has no stable row id); \
                     add one, or use --key-by-all-columns",
                    loc.redacted(),
                    rel.name
                )));
            }
            let mut t = unread_table(columns, key, true);
            let path = rows_cache.map(|rc| row_cache_path(rc, loc, rel));
            let cat = catalog.take(loc, rel)?;
            let (sql, extras, facts) = {
                let ask = FactsAsk::new(rel, &t, catalog.counted.contains(&rel.oid));
                schema_of(c, loc, rel, pk_def.as_deref(), &mut ordinal, (&ask, cat))?
            };
            let label = format!("{}: table {}", loc.redacted(), rel.name);
            let (n, root) = read_rows(
                c,
                loc,
                rel,
                &t,
                by_all,
                &sql,
                &label,
                sink,
                chunker,
                progress,
                rows_cache,
                &mut types,
                (facts, path),
            )?;
            t.rows = n;
            t.root = root;
            out.rows.insert(rel.name.clone(), n);
            TableObject {
                engine: Engine::Postgres,
                name: rel.name.clone(),
                sql,
                ordinal: my_ordinal,
                table: Some(t),
                extras,
            }
        };
        let bytes = obj.encode_checked().map_err(|why| {
            SyncError::Database(format!(
                "{}: {} {} cannot be snapshotted: {why}",
                loc.redacted(),
                if obj.is_view() { "view" } else { "table" },
                shown_name(&rel.name)
            ))
        })?;
        let id = sink.put(ObjectType::Table, &bytes)?;
        out.objects.insert(rel.name.clone(), id);
    }
    Ok(out)
}

/// A table before its rows are read: its stored columns, keyed by `key`,
/// or, when that is empty (no primary key) and `by_all`, by all of them.
fn unread_table(columns: Vec<Column>, mut key: Vec<u32>, by_all: bool) -> TableData {
    if key.is_empty() && by_all {
        key = (0..columns.len() as u32).collect();
    }
    TableData {
        flags: FLAG_WITHOUT_ROWID,
        columns,
        key,
        sequence: None,
        rows: 0,
        root: ObjectId::default(),
    }
}

/// Where the row cache of table `rel` is.
fn row_cache_path(rc: &RowCacheCtx<'_>, loc: &PgLocation, rel: &PgTable) -> PathBuf {
    super::rowcache::path_for(&rc.dir, &[&loc.redacted(), &loc.schema, &rel.name])
}

/// A table's rows into a row map: by the row cache when there is one for
/// this table (see [`read_table_by_cache`]), else every row; either way the
/// cache is written anew. A cache that cannot be used or written costs a
/// full read or a log line, never the snapshot.
#[allow(clippy::too_many_arguments)]
fn read_rows(
    c: &mut Client,
    loc: &PgLocation,
    rel: &PgTable,
    t: &TableData,
    by_all: bool,
    sql: &str,
    label: &str,
    sink: &dyn ObjectSink,
    chunker: &Chunker,
    progress: &dyn Progress,
    rows_cache: Option<&RowCacheCtx<'_>>,
    types: &mut TypeMemo,
    (facts, path): (TableFacts, Option<PathBuf>),
) -> Result<(u64, ObjectId)> {
    let cache = match (rows_cache, path) {
        (Some(rc), Some(path)) => match cache_ident(c, loc, rel, t, sql, types, &facts)? {
            Some((ident, xmin, xmax)) => Some((rc, ident, xmin, xmax, path)),
            None => {
                tracing::info!(
                    "{label}: no row cache (a column holds catalog names, which a rename \
                     elsewhere changes); reading every row"
                );
                None
            }
        },
        _ => None,
    };
    let create =
        |ident: &[u8; 32], xid: u64, path: &Path| match CacheWriter::create(path, ident, xid) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!("{label}: could not write the row cache: {e}");
                None
            }
        };
    if let Some((rc, ident, xid, xmax, path)) = &cache {
        match CacheReader::open(path, ident) {
            Ok(Some(_))
                if !super::rowcache::trailer_roots(path)
                    .iter()
                    .any(|r| sink.contains(r)) =>
            {
                // (A store made again where one was: scanning the keys
                // would only end in a full read.)
                tracing::info!(
                    "{label}: row cache not used (its map is not in this store); reading every row"
                );
            }
            Ok(Some((_, old_xid))) if *xmax >= old_xid && xmax - old_xid < MAX_CACHE_XID_AGE => {
                if let Some(mut out) = create(ident, *xid, path) {
                    let r = read_table_by_cache(
                        c,
                        loc,
                        &rel.name,
                        t,
                        &rel.enum_columns(),
                        by_all,
                        rel.partitioned,
                        (path, ident),
                        (old_xid, *xmax),
                        &facts,
                        rc.src,
                        sink,
                        chunker,
                        progress,
                        &mut out,
                    )?;
                    match r {
                        Incremental::Done(n, root) => {
                            if let Err(e) = out.finish(&root) {
                                tracing::warn!("{label}: could not write the row cache: {e}");
                            }
                            return Ok((n, root));
                        }
                        Incremental::Fallback(why) => {
                            tracing::info!(
                                "{label}: row cache not used ({why}); reading every row"
                            );
                        }
                    }
                }
            }
            Ok(Some(_)) => tracing::info!("{label}: row cache too old; reading every row"),
            Ok(None) => {}
            Err(Unusable(e)) => {
                tracing::warn!("{label}: ignoring a damaged row cache ({e})");
            }
        }
    }
    // In the heap's order when it likely holds the rows nearly in key
    // order; in key order if that fails, or else.
    let orders: &[Order] = if facts.heap_likely == Some(true) {
        &[Order::Heap, Order::Key]
    } else {
        &[Order::Key]
    };
    for &order in orders {
        if order == Order::Heap {
            tracing::debug!("{label}: reading the rows in the order the table stores them");
        }
        let mut out = cache
            .as_ref()
            .and_then(|(_, ident, xid, _, path)| create(ident, *xid, path));
        let built = {
            // Each row's key goes into the cache: the rows as of the
            // cache's snapshot (see [`changed_ages`]).
            let mut keys = |k: &[u8]| {
                if let Some(w) = out.as_mut() {
                    w.row(k);
                }
            };
            let with = (
                order == Order::Heap,
                Some(&mut keys as &mut super::KeySink<'_>),
            );
            super::build_row_map_with(label, sink, progress, with, |f| {
                read_table(
                    c,
                    loc,
                    &rel.name,
                    t,
                    &rel.enum_columns(),
                    (by_all, rel.partitioned, order),
                    sink,
                    chunker,
                    progress,
                    f,
                )
            })?
        };
        match built {
            Some((n, root)) => {
                if let Some(w) = out
                    && let Err(e) = w.finish(&root)
                {
                    tracing::warn!("{label}: could not write the row cache: {e}");
                }
                return Ok((n, root));
            }
            None => tracing::info!(
                "{label}: the table's storage holds its rows too far out of key order; \
                 reading them in key order"
            ),
        }
    }
    Err(SyncError::Invalid(format!(
        "{label}: rows out of key order"
    )))
}

/// The first key column the heap-order guess ([`TableFacts::heap_likely`])
/// asks the statistics about; None for a table always read in key order
/// (a partitioned one).
fn heap_guess_column<'a>(rel: &PgTable, t: &'a TableData) -> Option<&'a String> {
    let first = t.key.first().and_then(|&k| t.columns.get(k as usize))?;
    (!rel.partitioned).then_some(&first.name)
}

/// What [`read_rows`] asks the catalog about a table, with its schema
/// ([`FactsAsk`]): its column types (the first level of [`type_closure`]),
/// the row of [`cache_ident`], and the statistics of the heap-order guess.
struct TableFacts {
    types: Vec<i64>,
    ident: tokio_postgres::Row,
    /// `age()` of the snapshot's `xmax` (its low 32 bits, the `xid` they
    /// stand for; stable within the transaction), for
    /// [`read_table_by_cache`].
    age_of_xmax: i32,
    /// Whether the table's heap likely holds its rows nearly in key order,
    /// so that reading it in that order (cheaper for the server) and
    /// putting the rows in key order on the way
    /// ([`super::build_row_map_with`]) likely works: the server's
    /// statistics say no row of it was ever updated or deleted (an updated
    /// row moves to the heap's end; a deleted one leaves a gap a later row
    /// fills), and that its first key column follows the heap's order (a
    /// correlation of 0.9 or more). Only a guess: a read that finds the rows
    /// out of reach reads them again in key order, in the same transaction.
    /// None when not asked ([`heap_guess_column`]), or when the statistics
    /// have no correlation.
    heap_likely: Option<bool>,
    /// The table's own rows (what [`read_table_by_cache`] compares the
    /// cache with), when asked: only when the table has a row cache.
    count: Option<i64>,
}

/// The queries of [`TableFacts`] for one table, sent with its schema's
/// ([`schema_of`]).
struct FactsAsk {
    /// Whether the heap-order guess applies to the table (its answer is
    /// among the table's [`Catalog`] rows).
    heap: bool,
    /// Whether the table's own rows are counted (its answer is among the
    /// table's [`Catalog`] rows).
    count: bool,
}

impl FactsAsk {
    // (For the tables of `$1`, as [`Catalog`] asks: each row's last
    // column is its table's oid. A table with no column has no row.)
    const TYPES: &'static str = "SELECT array_agg(DISTINCT a.atttypid::int8), a.attrelid::int8 \
             FROM pg_catalog.pg_attribute a \
             WHERE a.attrelid = ANY($1::int8[]::oid[]) AND a.attnum > 0 AND NOT a.attisdropped \
             GROUP BY a.attrelid";
    const IDENT: &'static str = "SELECT (SELECT d.oid::int8 FROM pg_catalog.pg_database d \
                      WHERE d.datname = current_database()), \
                    CASE WHEN pg_catalog.has_function_privilege('pg_catalog.pg_control_system()', 'EXECUTE') \
                         THEN (SELECT system_identifier FROM pg_catalog.pg_control_system()) END, \
                    c.relfilenode::int8, c.xmin::text, \
                    pg_catalog.pg_postmaster_start_time()::text, \
                    (WITH RECURSIVE tree(oid) AS ( \
                       SELECT c.oid WHERE c.relkind = 'p' \
                       UNION ALL SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN tree ON i.inhparent = tree.oid) \
                     SELECT coalesce(string_agg(l.oid::text || '/' || l.relfilenode::text || '/' || l.xmin::text, ',' ORDER BY l.oid), '') \
                     FROM tree JOIN pg_catalog.pg_class l ON l.oid = tree.oid), \
                    pg_catalog.txid_snapshot_xmin(pg_catalog.txid_current_snapshot()), \
                    pg_catalog.txid_snapshot_xmax(pg_catalog.txid_current_snapshot()), \
                    pg_catalog.age((pg_catalog.txid_snapshot_xmax(pg_catalog.txid_current_snapshot()) \
                                    % 4294967296)::text::xid), \
                    c.oid::int8 \
             FROM pg_catalog.pg_class c WHERE c.oid = ANY($1::int8[]::oid[])";
    // (The statistics functions pg_stat_all_tables reads, called for this
    // table alone: the view joins and groups all of pg_class's tables. The
    // names are compared as `name`, as the view has them, so that
    // pg_class is found by its index: compared as text, it was scanned
    // whole for each table.)
    // (`$1`: the schema; `$2`, `$3`, `$4`: the tables' oids, names and
    // first key columns.)
    const HEAP: &'static str = "SELECT pg_catalog.pg_stat_get_tuples_updated(x.oid::oid) = 0 \
                AND pg_catalog.pg_stat_get_tuples_deleted(x.oid::oid) = 0 \
                AND (SELECT st.correlation >= 0.9 FROM pg_catalog.pg_stats st \
                     WHERE st.schemaname = $1::text::name AND st.tablename = x.tab::name \
                       AND st.attname = x.col::name AND NOT st.inherited), \
                x.oid \
             FROM unnest($2::int8[], $3::text[], $4::text[]) AS x(oid, tab, col)";

    /// The questions for table `rel` (`t`: its columns and key), the row
    /// count too when `count`.
    fn new(rel: &PgTable, t: &TableData, count: bool) -> Self {
        FactsAsk {
            heap: heap_guess_column(rel, t).is_some(),
            count,
        }
    }

    /// The facts out of the table's rows of the [`Catalog`]'s facts
    /// queries (types, ident, heap, count).
    fn answers(
        &self,
        answers: Vec<Vec<tokio_postgres::Row>>,
        loc: &PgLocation,
    ) -> Result<TableFacts> {
        let mut answers = answers.into_iter();
        let mut next = || answers.next().and_then(|rows| rows.into_iter().next());
        let no = |what: &str| SyncError::Database(format!("{}: no {what} row", loc.redacted()));
        let types = next().map(|r| r.get::<_, Vec<i64>>(0)).unwrap_or_default();
        let ident = next().ok_or_else(|| no("table"))?;
        let age_of_xmax = ident.get(8);
        let statistics = next();
        let heap_likely = match self.heap {
            true => statistics.ok_or_else(|| no("statistics"))?.get(0),
            false => None,
        };
        let counted = next();
        let count = match self.count {
            true => Some(counted.ok_or_else(|| no("count"))?.get(0)),
            false => None,
        };
        Ok(TableFacts {
            types,
            ident,
            age_of_xmax,
            heap_likely,
            count,
        })
    }
}

fn bad_row(root: &ObjectId, e: impl std::fmt::Display) -> SyncError {
    corrupt(ObjectType::Rows, root, e.to_string())
}

/// A row's values (large ones loaded), checked against its key.
fn row_values(src: &dyn ObjectSource, t: &TableData, key: &[u8], row: &[u8]) -> Result<Vec<Value>> {
    let cells = decode_row(row).map_err(|e| bad_row(&t.root, e))?;
    if cells.len() != t.columns.len() {
        return Err(bad_row(&t.root, "a row of the wrong width"));
    }
    crate::store::fsck::check_row_key(src, t, key, &cells).map_err(|e| bad_row(&t.root, e))?;
    cells.into_iter().map(|c: Cell| c.into_value(src)).collect()
}

/// Restores `tables` (name → table object) into the PostgreSQL database at
/// `url`, in one transaction.
pub fn restore(
    src: &dyn ObjectSource,
    tables: &BTreeMap<String, ObjectId>,
    url: &str,
    chunker: &Chunker,
    opts: &DbRestoreOptions,
    progress: &dyn Progress,
    rehearse: bool,
) -> Result<DbRestoreReport> {
    let loc = PgLocation::parse(url)?;
    for t in &opts.tables {
        if !tables.contains_key(t) {
            return Err(SyncError::NotFound(format!(
                "the snapshot has no table {t}"
            )));
        }
    }
    let mut objs: Vec<TableObject> = Vec::new();
    for (name, id) in tables {
        if opts.tables.is_empty() || opts.tables.contains(name) {
            let t = load_table(src, id)?;
            if &t.name != name {
                return Err(corrupt(
                    ObjectType::Table,
                    id,
                    format!("table object named {:?} stored as {name:?}", t.name),
                ));
            }
            if t.engine != Engine::Postgres {
                return Err(SyncError::Invalid(format!(
                    "table {name} was read from SQLite; restore it into a SQLite --db FILE"
                )));
            }
            objs.push(t);
        }
    }
    objs.sort_by_key(|t| t.ordinal);
    on_own_thread(|| {
        let _quiet = super::Rehearsal::begin(rehearse);
        let mut c = loc.connect()?;
        c.batch_execute(
            "BEGIN; SET CONSTRAINTS ALL DEFERRED; SET LOCAL standard_conforming_strings = on",
        )
        .map_err(|e| loc.error(e))?;
        let mut undo = Vec::new();
        let r = restore_in(
            &mut c, &loc, src, &objs, chunker, opts, progress, &mut undo, rehearse,
        )
        .and_then(|r| {
            if progress.interrupted() {
                return Err(SyncError::Interrupted);
            }
            let end = if rehearse { "ROLLBACK" } else { "COMMIT" };
            c.batch_execute(end).map_err(|e| loc.error(e))?;
            Ok(r)
        });
        if r.is_err() {
            let _ = c.batch_execute("ROLLBACK");
            // (Best effort: the connection may be what failed.)
            for (seq, last, called) in undo {
                if let Err(e) = c.execute(
                    "SELECT pg_catalog.setval($1::text::regclass, $2, $3)",
                    &[&seq, &last, &called],
                ) {
                    tracing::warn!(
                        "could not put sequence {seq} back to {last}: {}",
                        loc.error(e)
                    );
                }
            }
        }
        r
    })
}

enum Plan<'a> {
    Create(&'a TableObject, &'a TableData),
    /// (whether it is keyed by all its columns; whether it is partitioned)
    Merge(&'a TableObject, &'a TableData, (bool, bool)),
    View(&'a TableObject, bool),
}

/// `undo`: the sequences the restore moved back, with their last values
/// before (see [`Step::SetVal`]).
#[allow(clippy::too_many_arguments)]
fn restore_in(
    c: &mut Client,
    loc: &PgLocation,
    src: &dyn ObjectSource,
    objs: &[TableObject],
    chunker: &Chunker,
    opts: &DbRestoreOptions,
    progress: &dyn Progress,
    undo: &mut Vec<(String, i64, bool)>,
    rehearse: bool,
) -> Result<DbRestoreReport> {
    let err = |e| loc.error(e);
    let names: Vec<&str> = objs.iter().map(|o| o.name.as_str()).collect();
    refuse_shadowed(c, loc, &names)?;
    // (A role without CREATE on the database restores into a schema that
    // is there.)
    let have_schema: bool = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)",
            &[&loc.schema],
        )
        .map_err(err)?
        .get(0);
    if !have_schema {
        c.batch_execute(&format!("CREATE SCHEMA {}", quote(&loc.schema)))
            .map_err(err)?;
    }
    c.batch_execute(&format!("SET LOCAL search_path = {}", quote(&loc.schema)))
        .map_err(err)?;
    let mut rels = list_relations(c, loc)?;
    // The tables already there are locked against writers until the
    // transaction ends (readers go on), and listed again under the lock:
    // rows another session wrote between this restore's read of a table and
    // its changes would otherwise stay, and a row it deleted would make an
    // update change nothing, leaving the table unlike the snapshot.
    let existing: Vec<String> = rels
        .iter()
        .filter(|r| r.view.is_none() && objs.iter().any(|o| o.name == r.name && !o.is_view()))
        .map(|r| format!("{}.{}", quote(&loc.schema), quote(&r.name)))
        .collect();
    if !existing.is_empty() {
        for part in existing.chunks(256) {
            c.batch_execute(&format!("LOCK TABLE {} IN EXCLUSIVE MODE", part.join(", ")))
                .map_err(err)?;
        }
        rels = list_relations(c, loc)?;
    }
    // 1. Plan and check, before writing anything.
    let mut plans = Vec::new();
    let mut mismatches = Vec::new();
    for o in objs {
        let have = rels.iter().find(|r| r.name == o.name);
        match (&o.table, have) {
            (None, h) => plans.push(Plan::View(o, h.is_some())),
            (Some(t), None) => plans.push(Plan::Create(o, t)),
            (Some(_), Some(h)) if h.view.is_some() => mismatches.push(format!(
                "{} is a table in the snapshot and a view in the database",
                o.name
            )),
            (Some(t), Some(h)) => {
                let (now, by_all) = live_structure_for(loc, h, o, t)?;
                if same_structure(t, &now) {
                    plans.push(Plan::Merge(o, t, (by_all, h.partitioned)));
                } else {
                    mismatches.push(describe_mismatch(&o.name, t, &now));
                }
            }
        }
    }
    if let Some(first) = mismatches.first() {
        return Err(SyncError::Database(format!(
            "{}: schema does not match the snapshot: {first}{}; nothing was written",
            loc.redacted(),
            if mismatches.len() > 1 {
                format!(" (and {} more)", mismatches.len() - 1)
            } else {
                String::new()
            }
        )));
    }
    // Every recorded statement is checked before anything is written
    // (the snapshot's SQL is hostile input: see `pg_guard`).
    let mut scripts: Vec<(&TableObject, &TableData, Vec<Action>)> = Vec::new();
    let mut later: Vec<(u8, u64, Step)> = Vec::new();
    for p in &plans {
        match p {
            Plan::Create(o, t) => {
                let (acts, parts) = pg_guard::table_script_and_partitions(&o.sql, &o.name)?;
                scripts.push((o, t, acts));
                for e in &o.extras {
                    let (phase, mut step) = extra_step(o, e, &parts)?;
                    if let Step::SetVal { fresh, .. } = &mut step {
                        // (A column's own sequence: the script made it, a
                        // sequence already there being refused.)
                        *fresh = true;
                    }
                    later.push((phase, e.ordinal, step));
                }
            }
            Plan::Merge(o, ..) => {
                for e in o.extras.iter().filter(|e| e.kind == ExtraKind::Sequence) {
                    let mut step = extra_step(o, e, &[])?.1;
                    if let Step::SetVal { never_back, .. } = &mut step {
                        // Without --delete the rows the snapshot lacks stay.
                        *never_back = !opts.delete;
                    }
                    later.push((4, e.ordinal, step));
                }
            }
            Plan::View(o, false) => {
                later.push((3, o.ordinal, Step::Sql(pg_guard::view(&o.sql, &o.name)?)))
            }
            Plan::View(_, true) => {}
        }
    }
    let mut rep = DbRestoreReport {
        created: plans.iter().all(|p| !matches!(p, Plan::Merge(..))),
        tables: objs.iter().filter(|o| !o.is_view()).count(),
        ..Default::default()
    };
    // 2. New tables, then rows. Row-level security goes on after them (see
    // `Action::RowSecurity`); a table's policies and triggers are not made,
    // and a warning names them.
    // Every new table's sequences first: a column default may draw from
    // another table's (an inherited serial, `DEFAULT nextval('b_id_seq')`),
    // and tables are made in name order.
    // None may exist already: a new table does not take over a sequence
    // the database has (asked for all of them at once).
    let sequences: Vec<(&String, &String)> = scripts
        .iter()
        .flat_map(|(_, _, acts)| acts)
        .filter_map(|a| match a {
            Action::Sequence { name, sql } => Some((name, sql)),
            _ => None,
        })
        .collect();
    if !sequences.is_empty() {
        let quoted: Vec<String> = sequences.iter().map(|(name, _)| quote(name)).collect();
        let taken: Vec<String> = c
            .query(
                "SELECT n FROM unnest($1::text[]) WITH ORDINALITY AS u(n, i) \
                 WHERE pg_catalog.to_regclass(n) IS NOT NULL ORDER BY i",
                &[&quoted],
            )
            .map_err(|e| loc.error(e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        // (One named twice would find its first made.)
        let mut seen = std::collections::HashSet::new();
        if let Some((name, _)) = sequences
            .iter()
            .find(|(name, _)| taken.contains(&quote(name)) || !seen.insert(*name))
        {
            return Err(SyncError::Invalid(format!(
                "sequence {name} already exists; a new table does not take over a sequence the database has"
            )));
        }
        for (_, sql) in &sequences {
            c.execute(sql.as_str(), &[]).map_err(|e| loc.error(e))?;
        }
    }
    for (o, _, acts) in &scripts {
        let mut secured = false;
        let mut recorded: Vec<String> = Vec::new();
        for a in acts {
            match a {
                Action::Sequence { .. } => {}
                Action::RowSecurity(sql) => {
                    secured = true;
                    later.push((5, o.ordinal, Step::Sql(sql.clone())));
                }
                Action::Recorded { kind, name } => recorded.push(if *kind == "parent table" {
                    // (A table name as the catalog printed it.)
                    format!("{kind} {}", crate::commands::fmt::printable(name))
                } else {
                    format!("{kind} {}", shown_name(name))
                }),
                _ => create_step(c, loc, a)?,
            }
        }
        if !recorded.is_empty() && !super::rehearsing() {
            tracing::warn!(
                "table {}: created without its {}{}; make them as your schema does",
                shown_name(&o.name),
                recorded.join(", "),
                if secured {
                    " (row-level security is on, as it was, so the roles it applies to read and \
                     write none of its rows until its policies are made)"
                } else {
                    ""
                }
            );
        }
    }
    // The scripts made exactly the recorded tables (read back once, all of
    // them, when every script has run: a table at a time, the catalog
    // query cost a new table two milliseconds).
    if !scripts.is_empty() {
        let names: Vec<String> = scripts.iter().map(|(o, _, _)| o.name.clone()).collect();
        let made: std::collections::HashMap<String, PgTable> = relations(c, loc, Some(&names))?
            .into_iter()
            .filter(|r| r.view.is_none())
            .map(|r| (r.name.clone(), r))
            .collect();
        for (o, t, _) in &scripts {
            let made = made.get(&o.name).ok_or_else(|| {
                SyncError::Invalid(format!(
                    "the snapshot's SQL is refused: its script did not create table {}",
                    o.name
                ))
            })?;
            let (now, _) = live_structure_for(loc, made, o, t)?;
            if !same_structure(t, &now) {
                return Err(SyncError::Invalid(format!(
                    "the snapshot's SQL is refused: its script made a table other than the recorded one: {}",
                    describe_mismatch(&o.name, t, &now)
                )));
            }
        }
    }
    let mut merges = Vec::new();
    let mut extras = Vec::new();
    for p in &plans {
        match p {
            Plan::Create(o, t) => {
                progress.stage(&format!("table {}", o.name));
                let key = if t.rows >= KEY_ASIDE_ROWS {
                    set_key_aside(c, loc, &o.name)?
                } else {
                    None
                };
                rep.inserted += copy_in(c, loc, src, &o.name, t, progress)?;
                if let Some((kname, def)) = key {
                    c.batch_execute(&format!(
                        "ALTER TABLE ONLY {} ADD CONSTRAINT {} {def}",
                        quote(&o.name),
                        quote(&kname)
                    ))
                    .map_err(|e| match loc.error(e) {
                        // One prefix (the location's), the table named once.
                        SyncError::Database(m) => SyncError::Database(format!(
                            "{m} (adding back the primary key {} of table {}); nothing was written",
                            quote(&kname),
                            quote(&o.name)
                        )),
                        other => other,
                    })?;
                }
            }
            Plan::Merge(o, t, shape) => {
                progress.stage(&format!("table {}", o.name));
                let mut kept = Extras::of(c, loc, &o.name, t)?;
                let acts = merge_plan(
                    c,
                    loc,
                    src,
                    &o.name,
                    t,
                    *shape,
                    chunker,
                    opts,
                    progress,
                    Some(&mut kept),
                )?;
                merges.push((*o, *t, *shape, acts));
                extras.push(kept);
            }
            Plan::View(..) => {}
        }
    }
    // Existing tables: deletes from referencing tables before the tables
    // they reference, then updates and inserts the other way round, so that
    // foreign keys that cannot be deferred (the default) hold after every
    // statement.
    let names: Vec<&str> = merges.iter().map(|(o, ..)| o.name.as_str()).collect();
    let order = fk_order(c, loc, &names)?;
    // Restoring rows must not fire the tables' own triggers (one that sets
    // `updated_at` would leave the table unlike the snapshot); foreign keys
    // and other constraints still hold. Their states come back before the
    // commit (and with a rollback).
    // (A table whose foreign keys act on its rows is paused too when the
    // restore writes none of them: a cascade of its deletes may reach them,
    // and they are put back below, with its triggers as quiet.)
    let mut paused = Vec::new();
    let mut firing = Vec::new();
    let mut opened: Vec<bool> = vec![false; merges.len()];
    for (i, (o, t, _, acts)) in merges.iter().enumerate() {
        if !acts.is_empty() || RowStatements::new(c, loc, &o.name, t)?.referring_acts {
            opened[i] = !acts.is_empty();
            let (enable, fires) = pause_triggers(c, loc, &o.name)?;
            paused.extend(enable);
            if opened[i] {
                paused.extend(open_identities(c, loc, &o.name, t, acts)?);
            }
            if let Some(names) = fires {
                firing.push((o.name.clone(), names));
            }
        }
    }
    // Nor the triggers and rules of the tables a foreign key's action
    // reaches from a restored table (directly or on through such tables),
    // which the restore leaves: rows that follow a restored row through
    // `ON UPDATE CASCADE` must change in their keys alone (audit round 17:
    // such a table's trigger changed its other rows, the rows of a restored
    // table the snapshot lacks, and other tables, exit 0).
    if merges.iter().any(|(_, _, _, acts)| !acts.is_empty()) {
        let restored: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let reached: Vec<String> = c
            .query(
                &format!(
                    "WITH RECURSIVE {KEPT}, \
                       acting AS (SELECT f.conrelid, f.confrelid FROM pg_catalog.pg_constraint f \
                         WHERE f.contype = 'f' \
                           AND (f.confdeltype IN ('c', 'n', 'd') OR f.confupdtype IN ('c', 'n', 'd')) \
                           AND f.conrelid NOT IN (SELECT oid FROM kept)), \
                       reach(oid) AS (SELECT a.conrelid FROM acting a WHERE a.confrelid IN (SELECT oid FROM kept) \
                         UNION SELECT a.conrelid FROM acting a, reach w WHERE a.confrelid = w.oid) \
                     SELECT DISTINCT coalesce(pg_catalog.pg_partition_root(w.oid), w.oid)::regclass::text \
                     FROM reach w ORDER BY 1"
                ),
                &[&loc.schema, &restored],
            )
            .map_err(|e| loc.error(e))?
            .into_iter()
            .map(|r| r.get(0))
            .collect();
        for rel in reached {
            let (enable, fires) = pause_triggers_of(c, loc, &rel, &rel)?;
            paused.extend(enable);
            if let Some(names) = fires {
                firing.push((rel, names));
            }
        }
    }
    // (What a statement fires is read with the triggers paused.)
    let mut statements = Vec::new();
    for (o, t, ..) in &merges {
        let mut rows = RowStatements::new(c, loc, &o.name, t)?;
        rows.outside = outside_refs(c, loc, &o.name, &names)?;
        rows.src = Some(src);
        statements.push(rows);
    }
    // Where the server keeps no counts of the rows a transaction writes
    // (`track_counts = off`), or triggers the role cannot pause fired
    // (then those counts are read for deletes only), the final check below
    // also counts, before and after, the rows of each table the restore
    // leaves that a foreign key's action could reach from a restored
    // table (directly or through other such tables), and those of them
    // whose key columns are set.
    let restored_tables: Vec<String> = objs
        .iter()
        .filter(|o| !o.is_view())
        .map(|o| o.name.clone())
        .collect();
    let counts: bool = c
        .query_one(
            "SELECT pg_catalog.current_setting('track_counts')::bool",
            &[],
        )
        .map_err(|e| loc.error(e))?
        .get(0);
    // With the server's counts, only the tables whose rows may follow a
    // restored row are counted so (the server's counts exempt their
    // updates): a row that followed a value an `ON … SET NULL` key set on
    // its way, through another restored table, through one of its keys
    // while another key made it a follower, or as a row moved out of a
    // partition, lost its reference (audit round 15).
    let only_followers = counts && firing.is_empty();
    let watched: Vec<(String, String)> = {
        c.query(
            &format!(
                "WITH RECURSIVE {KEPT}, \
               acting AS (SELECT f.* FROM pg_catalog.pg_constraint f WHERE f.contype = 'f' \
                          AND (f.confdeltype IN ('c', 'n', 'd') OR f.confupdtype IN ('c', 'n', 'd')) \
                          AND f.conrelid NOT IN (SELECT oid FROM kept)), \
               reach(oid) AS (SELECT a.conrelid FROM acting a WHERE a.confrelid IN (SELECT oid FROM kept) \
                              UNION SELECT a.conrelid FROM acting a, reach w WHERE a.confrelid = w.oid), \
               nulling AS (SELECT g.conrelid AS oid FROM pg_catalog.pg_constraint g \
                           WHERE g.contype = 'f' AND (g.confdeltype IN ('n', 'd') OR g.confupdtype IN ('n', 'd'))), \
               follow(oid) AS (SELECT a.conrelid FROM acting a WHERE a.confupdtype = 'c' \
                                 AND a.confrelid IN (SELECT oid FROM kept) \
                                 AND a.confrelid NOT IN (SELECT oid FROM nulling) \
                               UNION SELECT a.conrelid FROM acting a, follow w \
                                 WHERE a.confupdtype = 'c' AND a.confrelid = w.oid) \
             SELECT a.conrelid::regclass::text, \
                    ARRAY(SELECT pg_catalog.quote_ident(t.attname) FROM unnest(a.conkey) WITH ORDINALITY k(n, i) \
                          JOIN pg_catalog.pg_attribute t ON t.attrelid = a.conrelid AND t.attnum = k.n \
                          ORDER BY k.i), \
                    a.conrelid IN (SELECT oid FROM follow) AND a.conrelid NOT IN (SELECT oid FROM nulling), \
                    a.conrelid IN (SELECT oid FROM follow) \
             FROM acting a WHERE a.conparentid = 0 AND a.conrelid IN (SELECT oid FROM reach) \
             ORDER BY 1, 2"
            ),
            &[&loc.schema, &restored_tables],
        )
        .map_err(|e| loc.error(e))?
        .into_iter()
        .filter(|r| !only_followers || r.get::<_, bool>(3))
        .map(|r| {
            let table: String = r.get(0);
            let cols: Vec<String> = r.get(1);
            let follows: bool = r.get(2);
            let sql = outside_count_sql(&table, &cols, !follows);
            (table, sql)
        })
        .collect()
    };
    let mut watched_before = Vec::with_capacity(watched.len());
    for (_, sql) in &watched {
        let v: String = c
            .query_one(sql.as_str(), &[])
            .map_err(|e| loc.error(e))?
            .get(0);
        watched_before.push(v);
    }
    // (See above: the deletes' order, then the updates' and inserts'.)
    let passes = order.iter().rev().map(|&i| (i, true));
    for (i, deletes) in passes.chain(order.iter().map(|&i| (i, false))) {
        let (o, t, n, acts) = &merges[i];
        merge_apply(
            c,
            loc,
            src,
            &o.name,
            t,
            acts,
            *n,
            deletes,
            progress,
            &mut rep,
            &mut statements[i],
        )?;
        // A table's rows kept for later go in before the tables that
        // refer to it get theirs, as far as they can yet.
        if !deletes {
            statements[i].finish(c, loc, &mut rep, false)?;
        }
    }
    for rows in &mut statements {
        rows.finish(c, loc, &mut rep, true)?;
    }
    // Rows of restored tables that the restore's own deletes and updates
    // carried a foreign key's action to (`ON DELETE CASCADE` took them
    // along, `SET NULL` changed them) beyond the rows it wrote itself: put
    // back as the snapshot has them, a round at a time (putting rows back
    // deletes nothing, but an update may act on further tables). They
    // were as the snapshot has them before, so they are not counted.
    if rep.deleted + rep.updated > 0 {
        let counted = (rep.inserted, rep.updated, rep.deleted);
        for round in 0.. {
            let mut again = false;
            for &i in &order {
                if !statements[i].referring_acts {
                    continue;
                }
                let (o, t, shape, _) = &merges[i];
                let mut now = extras[i].empty();
                let acts: Vec<(Vec<u8>, Act)> = merge_plan(
                    c,
                    loc,
                    src,
                    &o.name,
                    t,
                    *shape,
                    chunker,
                    opts,
                    progress,
                    Some(&mut now),
                )?
                .into_iter()
                .filter(|(_, a)| !matches!(a, Act::Delete))
                .collect();
                // Rows the snapshot lacks, which a restore without
                // --delete keeps, are never put back: one that a foreign
                // key's action took along or changed fails the restore.
                if now != extras[i] {
                    return Err(SyncError::Database(format!(
                        "{}: the restore would {} rows of table {} that the snapshot lacks, \
                         which a restore without --delete keeps (its foreign key's ON DELETE or \
                         ON UPDATE action reached them); nothing was written (restore with \
                         --delete, or change those rows first)",
                        loc.redacted(),
                        if now.rows < extras[i].rows {
                            "delete"
                        } else {
                            "change"
                        },
                        shown_name(&o.name)
                    )));
                }
                if acts.is_empty() {
                    continue;
                }
                if round >= MAX_HOPS {
                    return Err(SyncError::Database(format!(
                        "{}: table {}: rows kept changing while the restore put back what its \
                         foreign keys' actions changed; nothing was written",
                        loc.redacted(),
                        o.name
                    )));
                }
                again = true;
                if !opened[i] {
                    // (Its identity columns were left as they were: the
                    // restore planned no row of it.)
                    opened[i] = true;
                    paused.extend(open_identities(c, loc, &o.name, t, &acts)?);
                }
                merge_apply(
                    c,
                    loc,
                    src,
                    &o.name,
                    t,
                    &acts,
                    *shape,
                    false,
                    progress,
                    &mut rep,
                    &mut statements[i],
                )?;
                statements[i].finish(c, loc, &mut rep, true)?;
            }
            if !again {
                break;
            }
        }
        (rep.inserted, rep.updated, rep.deleted) = counted;
    }
    // The deferred constraints are checked now, before anything below that
    // a rollback would not undo (setval), and so that no checks are
    // pending when the triggers are enabled again.
    c.batch_execute("SET CONSTRAINTS ALL IMMEDIATE")
        .map_err(|e| loc.error(e))?;
    // Whatever the checks above did not foresee: an action of a foreign key
    // that reached rows of a table this restore does not restore fails it.
    // The transaction's own counts of rows written say which tables it
    // touched (when the server keeps them: `track_counts`). Rows that an
    // `ON UPDATE CASCADE` key makes follow a restored row are allowed, as
    // above; and where triggers the role cannot pause fired (they may
    // write other tables, as the warning about them says), only deletes
    // count.
    if counts {
        // `follow`: the tables the restore leaves whose rows follow a
        // restored row through `ON UPDATE CASCADE` (from a restored table
        // that no key of its own can set to NULL or a default: a row that
        // followed such a change would not follow the restore's next one),
        // and on through such keys of theirs (never through a restored
        // table, whose own keys decide for the tables following it); of
        // those, the ones no `ON UPDATE SET NULL` or `SET DEFAULT` key (to
        // a restored or following table) could have changed are exempt
        // from counting updates, and from counting a row that moved to
        // another partition of theirs (a delete and an insert).
        let touched: Option<String> = c
            .query_one(
                &format!(
                    "WITH RECURSIVE {KEPT}, \
                      nulling AS ( \
                        SELECT g.conrelid AS oid FROM pg_catalog.pg_constraint g \
                        WHERE g.contype = 'f' AND (g.confdeltype IN ('n', 'd') OR g.confupdtype IN ('n', 'd'))), \
                      follow(oid) AS ( \
                        SELECT f.conrelid FROM pg_catalog.pg_constraint f \
                        WHERE f.contype = 'f' AND f.confupdtype = 'c' \
                          AND f.confrelid IN (SELECT oid FROM kept) \
                          AND f.confrelid NOT IN (SELECT oid FROM nulling) \
                          AND f.conrelid NOT IN (SELECT oid FROM kept) \
                        UNION SELECT f.conrelid FROM pg_catalog.pg_constraint f, follow w \
                        WHERE f.contype = 'f' AND f.confupdtype = 'c' AND f.confrelid = w.oid \
                          AND f.conrelid NOT IN (SELECT oid FROM kept)), \
                      exempt AS ( \
                        SELECT w.oid FROM follow w WHERE NOT EXISTS ( \
                          SELECT 1 FROM pg_catalog.pg_constraint g \
                          WHERE g.contype = 'f' AND g.conrelid = w.oid AND g.confupdtype IN ('n', 'd') \
                            AND (g.confrelid IN (SELECT oid FROM follow) \
                                 OR g.confrelid IN (SELECT oid FROM kept)))), \
                      roots AS ( \
                        SELECT coalesce(pg_catalog.pg_partition_root(s.relid), s.relid) AS root, \
                               sum(s.n_tup_ins) AS ins, sum(s.n_tup_upd) AS upd, sum(s.n_tup_del) AS del, \
                               bool_and(s.relid IN (SELECT oid FROM exempt)) AS exempt \
                        FROM pg_catalog.pg_stat_xact_user_tables s \
                        WHERE s.relid NOT IN (SELECT oid FROM kept) \
                        GROUP BY 1) \
                 SELECT min(root::regclass::text) FROM roots \
                 WHERE NOT (exempt AND del = ins) \
                   AND (del > 0 OR ($3 AND (ins > 0 OR (upd > 0 AND NOT exempt)))) \
                    OR (exempt AND del <> ins)"
                ),
                &[&loc.schema, &restored_tables, &firing.is_empty()],
            )
            .map_err(|e| loc.error(e))?
            .get(0);
        if let Some(table) = touched {
            return Err(SyncError::Database(format!(
                "{}: the restore changed rows of table {table}, which it does not restore (a \
                 foreign key's ON DELETE or ON UPDATE action reached them); nothing was written \
                 (restore that table too, or change those rows first)",
                loc.redacted()
            )));
        }
    }
    for ((table, sql), before) in watched.iter().zip(&watched_before) {
        let now: String = c
            .query_one(sql.as_str(), &[])
            .map_err(|e| loc.error(e))?
            .get(0);
        if &now != before {
            return Err(SyncError::Database(format!(
                "{}: the restore changed rows of table {table}, which it does not restore (a \
                 foreign key's ON DELETE or ON UPDATE action reached them); nothing was \
                 written (restore that table too, or change those rows first)",
                loc.redacted()
            )));
        }
    }
    // A table whose triggers fired may not be as the snapshot has it (one
    // that sets `updated_at`): it is read again, and any row that differs
    // rolls everything back.
    // (Every restored table: such a trigger may write another one.)
    if !firing.is_empty() {
        let fired: Vec<String> = firing
            .iter()
            .map(|(table, names)| format!("{table}'s {names}"))
            .collect();
        for (o, t, shape, _) in &merges {
            let left = merge_plan(
                c, loc, src, &o.name, t, *shape, chunker, opts, progress, None,
            )?;
            if let Some((k, act)) = left.first() {
                let what = match act {
                    Act::Insert(_) => "removed",
                    Act::Delete => "added",
                    Act::Update(_) => "changed",
                };
                return Err(SyncError::Database(format!(
                    "{}: table {}: triggers the restore cannot pause (the role does not own \
                     their tables: {}) {what} {} during the restore; nothing was written \
                     (restore as the tables' owner)",
                    loc.redacted(),
                    o.name,
                    fired.join("; "),
                    describe(&o.name, &t.root, k)
                )));
            }
        }
    }
    for sql in paused {
        c.batch_execute(&sql).map_err(|e| loc.error(e))?;
    }
    // 3. Constraints and indexes of new tables (foreign keys last), views
    // the database lacks, then sequence values.
    later.sort_by_key(|(phase, ordinal, _)| (*phase, *ordinal));
    let mut named = None;
    for (_, _, step) in later {
        run_step(c, loc, step, undo, rehearse, &mut named)?;
    }
    Ok(rep)
}

/// The positions of `names` (tables of the schema) with every table after
/// the tables its foreign keys reference; the given order otherwise, and
/// for tables in a cycle of references.
fn fk_order(c: &mut Client, loc: &PgLocation, names: &[&str]) -> Result<Vec<usize>> {
    let mut order: Vec<usize> = Vec::with_capacity(names.len());
    if names.len() < 2 {
        return Ok((0..names.len()).collect());
    }
    let rows = c
        .query(
            "SELECT cl.relname::text, pl.relname::text FROM pg_catalog.pg_constraint k \
             JOIN pg_catalog.pg_class cl ON cl.oid = k.conrelid \
             JOIN pg_catalog.pg_class pl ON pl.oid = k.confrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = cl.relnamespace AND n.oid = pl.relnamespace \
             WHERE k.contype = 'f' AND n.nspname = $1 AND k.conrelid <> k.confrelid",
            &[&loc.schema],
        )
        .map_err(|e| loc.error(e))?;
    let pos = |n: &str| names.iter().position(|x| *x == n);
    // parents[i]: the tables i references that are still to be placed.
    let mut parents: Vec<Vec<usize>> = vec![Vec::new(); names.len()];
    for r in rows {
        let (child, parent): (String, String) = (r.get(0), r.get(1));
        if let (Some(ci), Some(pi)) = (pos(&child), pos(&parent)) {
            parents[ci].push(pi);
        }
    }
    let mut placed = vec![false; names.len()];
    while order.len() < names.len() {
        let next = (0..names.len())
            .find(|&i| !placed[i] && parents[i].iter().all(|&p| placed[p]))
            // A cycle: the first unplaced table in the given order.
            .or_else(|| (0..names.len()).find(|&i| !placed[i]));
        let Some(i) = next else { break };
        placed[i] = true;
        order.push(i);
    }
    Ok(order)
}

/// A live table's columns and key, to compare with a snapshot's.
/// [`live_structure`] of a table a restore writes the snapshot's `want`
/// into: a table without a primary key is keyed by all its columns when
/// the snapshot's is (it was taken with --key-by-all-columns), without the
/// flag on the restore too.
fn live_structure_for(
    loc: &PgLocation,
    t: &PgTable,
    obj: &TableObject,
    want: &TableData,
) -> Result<(TableData, bool)> {
    let (mut now, by_all) = live_structure(loc, t)?;
    let all: Vec<u32> = (0..now.columns.len() as u32).collect();
    // (The recorded script names a primary key as pg_get_constraintdef
    // prints it.)
    let recorded_pk = obj.sql.contains(" PRIMARY KEY (");
    if by_all && now.key.is_empty() && want.key == all && !recorded_pk {
        now.key = all;
    }
    Ok((now, by_all))
}

/// The table as it is now, and whether it is keyed by all its columns (it
/// has no primary key).
fn live_structure(loc: &PgLocation, t: &PgTable) -> Result<(TableData, bool)> {
    let (columns, key, _) = structure(loc, t)?;
    let by_all = key.is_empty();
    Ok((unread_table(columns, key, loc.key_by_all_columns), by_all))
}

/// A checked statement of a table's extras, or a view, to run after the
/// rows.
enum Step {
    Sql(String),
    Checked(pg_guard::Guarded),
    SetVal {
        table: String,
        column: String,
        value: i64,
        called: bool,
        /// Never move the sequence back (a restore onto a table that keeps
        /// rows the snapshot lacks: a lower value would give their keys out
        /// again).
        never_back: bool,
        /// The sequence is this restore's own (its table's script made it,
        /// in this transaction): `setval` at once, since a rollback drops
        /// the sequence itself, and there is no earlier state to keep.
        fresh: bool,
    },
}

/// The phase (constraints and indexes 1, foreign keys 2, sequences 4) and
/// the checked step of an extra.
fn extra_step(o: &TableObject, e: &Extra, partitions: &[String]) -> Result<(u8, Step)> {
    Ok(match e.kind {
        ExtraKind::Constraint => {
            let g = pg_guard::constraint(&e.sql, &o.name, partitions)?;
            let fk = g.sql.contains(" FOREIGN KEY ");
            (if fk { 2 } else { 1 }, Step::Checked(g))
        }
        ExtraKind::Index => (1, Step::Sql(pg_guard::index(&e.sql, &o.name, partitions)?)),
        ExtraKind::Sequence => {
            let (column, value, called) = pg_guard::sequence_value(&e.sql, &o.name)?;
            (
                4,
                Step::SetVal {
                    table: quote(&o.name),
                    column,
                    value,
                    called,
                    never_back: false,
                    fresh: false,
                },
            )
        }
        _ => {
            return Err(SyncError::Invalid(format!(
                "the snapshot's SQL is refused: table {} records an extra of a kind PostgreSQL tables do not have",
                o.name
            )));
        }
    })
}

/// The relations a statement on table `name` may write (the table and, when
/// it is partitioned, every partition below it), as SQL: a set of oids.
/// `$1` is the table's schema, `$2` its name.
const TABLE_TREE: &str = "(SELECT r.oid FROM pg_catalog.pg_class r \
     JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace \
     WHERE n.nspname = $1 AND r.relname = $2 \
     UNION SELECT p.relid FROM pg_catalog.pg_class r \
     JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace, \
     pg_catalog.pg_partition_tree(r.oid) p \
     WHERE n.nspname = $1 AND r.relname = $2)";

/// Disables the enabled user triggers and rules of table `name` (in the
/// search path's schema) and of its partitions for the rest of the
/// transaction; returns the statements that enable them again as they
/// were, and the triggers that could not be paused, if any. A role that
/// does not own the table cannot pause them: they then fire, a warning
/// says so, and the restore checks the table afterwards; its rules (which
/// can send a write to another table, or nowhere) refuse the restore.
fn pause_triggers(
    c: &mut Client,
    loc: &PgLocation,
    name: &str,
) -> Result<(Vec<String>, Option<String>)> {
    let rel = format!("{}.{}", quote(&loc.schema), quote(name));
    pause_triggers_of(c, loc, name, &rel)
}

/// [`pause_triggers`] of the table `rel` (an SQL name, qualified), named
/// `name` in messages.
fn pause_triggers_of(
    c: &mut Client,
    loc: &PgLocation,
    name: &str,
    rel: &str,
) -> Result<(Vec<String>, Option<String>)> {
    let err = |e| loc.error(e);
    let tree = "(SELECT $1::text::regclass::oid \
                UNION SELECT p.relid FROM pg_catalog.pg_partition_tree($1::text::regclass) p)";
    let rows = c
        .query(
            &format!(
                "SELECT 'RULE', w.ev_class::regclass::text, w.rulename::text, w.ev_enabled::text \
                 FROM pg_catalog.pg_rewrite w \
                 WHERE w.ev_class IN {tree} AND w.rulename <> '_RETURN' \
                   AND w.ev_enabled <> 'D' \
                 UNION ALL \
                 SELECT 'TRIGGER', t.tgrelid::regclass::text, t.tgname::text, t.tgenabled::text \
                 FROM pg_catalog.pg_trigger t \
                 WHERE t.tgrelid IN {tree} AND NOT t.tgisinternal AND t.tgenabled <> 'D' \
                 ORDER BY 1, 2, 3"
            ),
            &[&rel],
        )
        .map_err(err)?;
    let mut enable = Vec::new();
    let mut firing = None;
    for kind in ["RULE", "TRIGGER"] {
        let mut disable = Vec::new();
        let mut names = Vec::new();
        for r in rows.iter().filter(|r| r.get::<_, &str>(0) == kind) {
            // (regclass::text is quoted as needed, and qualified when the
            // relation is not on the search path.)
            let (rel, what, state): (String, String, String) = (r.get(1), r.get(2), r.get(3));
            let what = quote(&what);
            disable.push(format!("ALTER TABLE ONLY {rel} DISABLE {kind} {what}"));
            let how = match state.as_str() {
                "A" => "ENABLE ALWAYS",
                "R" => "ENABLE REPLICA",
                _ => "ENABLE",
            };
            enable.push(format!("ALTER TABLE ONLY {rel} {how} {kind} {what}"));
            names.push(format!("{rel}.{what}"));
        }
        if disable.is_empty() {
            continue;
        }
        c.batch_execute("SAVEPOINT sp_sync_triggers").map_err(err)?;
        match c.batch_execute(&disable.join("; ")) {
            Ok(()) => {
                c.batch_execute("RELEASE SAVEPOINT sp_sync_triggers")
                    .map_err(err)?;
            }
            Err(e) if kind == "RULE" => {
                return Err(SyncError::Database(format!(
                    "table {name} has rules ({}) that the restore cannot disable ({}): a rule may \
                     send the restore's writes elsewhere; nothing was written",
                    names.join(", "),
                    loc.error(e)
                )));
            }
            Err(e) => {
                undo_savepoint(c, "sp_sync_triggers").map_err(err)?;
                // (Only the rules' statements stay in the list.)
                enable.truncate(enable.len() - disable.len());
                if !super::rehearsing() {
                    tracing::warn!(
                        "table {name}: its triggers fire during the restore ({})",
                        loc.error(e)
                    );
                }
                firing = Some(names.join(", "));
            }
        }
    }
    Ok((enable, firing))
}

/// Lets the restore set the `GENERATED ALWAYS AS IDENTITY` columns of
/// table `name` (and of its partitions) that its updates (`acts`) set,
/// which an update cannot otherwise (a snapshot's row holds their values;
/// an insert sets them with `OVERRIDING SYSTEM VALUE`): they are `BY
/// DEFAULT` for the rest of the transaction. That takes the table's
/// `ACCESS EXCLUSIVE` lock, so only where needed. Returns the statements
/// that make them `ALWAYS` again. A role that cannot alter the table
/// leaves them as they are (a warning says so): a row whose identity value
/// changed then fails, named.
fn open_identities(
    c: &mut Client,
    loc: &PgLocation,
    name: &str,
    t: &TableData,
    acts: &[(Vec<u8>, Act)],
) -> Result<Vec<String>> {
    let err = |e| loc.error(e);
    let mut changed = std::collections::HashSet::new();
    for (_, a) in acts {
        if let Act::Update(cols) = a {
            changed.extend(cols.iter().map(|&i| t.columns[i].name.as_str()));
        }
    }
    if changed.is_empty() {
        return Ok(Vec::new());
    }
    // (On a table whose foreign keys act on its rows, an update sets every
    // column: see `merge_apply`.)
    let rows = c
        .query(
            &format!(
                "SELECT a.attrelid::regclass::text, a.attname::text, \
                   EXISTS (SELECT 1 FROM pg_catalog.pg_constraint f \
                     WHERE f.contype = 'f' AND f.conrelid IN {TABLE_TREE} \
                       AND (f.confdeltype IN ('c', 'n', 'd') OR f.confupdtype IN ('c', 'n', 'd'))), \
                   r.relispartition, \
                   pg_catalog.current_setting('server_version_num')::int >= 170000, \
                   r.relkind = 'p' \
                 FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class r ON r.oid = a.attrelid \
                 WHERE a.attrelid IN {TABLE_TREE} AND a.attnum > 0 AND NOT a.attisdropped \
                   AND a.attidentity = 'a' \
                 ORDER BY 1, 2"
            ),
            &[&loc.schema, &name],
        )
        .map_err(err)?;
    let (mut open, mut close) = (Vec::new(), Vec::new());
    for r in &rows {
        // (regclass::text is quoted as needed.)
        let (rel, col, every): (String, String, bool) = (r.get(0), r.get(1), r.get(2));
        let (partition, v17): (bool, bool) = (r.get(3), r.get(4));
        if !every && !changed.contains(col.as_str()) {
            continue;
        }
        // (PostgreSQL 17 keeps a partitioned table's identity on its
        // partitions: it is changed on the table, for all of them, and
        // refused on one alone.)
        if v17 && partition {
            continue;
        }
        let partitioned: bool = r.get(5);
        let only = if v17 && partitioned { "" } else { "ONLY " };
        let alter = format!("ALTER TABLE {only}{rel} ALTER COLUMN {}", quote(&col));
        open.push(format!("{alter} SET GENERATED BY DEFAULT"));
        close.push(format!("{alter} SET GENERATED ALWAYS"));
    }
    if open.is_empty() {
        return Ok(Vec::new());
    }
    c.batch_execute("SAVEPOINT sp_sync_identity").map_err(err)?;
    match c.batch_execute(&open.join("; ")) {
        Ok(()) => {
            c.batch_execute("RELEASE SAVEPOINT sp_sync_identity")
                .map_err(err)?;
            Ok(close)
        }
        Err(e) => {
            undo_savepoint(c, "sp_sync_identity").map_err(err)?;
            if !super::rehearsing() {
                tracing::warn!(
                    "table {name}: its ALWAYS identity columns cannot take the snapshot's values ({})",
                    loc.error(e)
                );
            }
            Ok(Vec::new())
        }
    }
}

/// Refuses `sql` (`what`: "a constraint") when one of `names` (its
/// identifiers) names a volatile function: nothing a constraint or a
/// domain evaluates on the rows may be.
fn refuse_volatile(
    c: &mut Client,
    loc: &PgLocation,
    names: &[String],
    what: &str,
    sql: &str,
) -> Result<()> {
    let volatile: Option<String> = c
        .query_one(
            "SELECT string_agg(DISTINCT proname::text, ', ') FROM pg_catalog.pg_proc \
             WHERE provolatile = 'v' AND proname = ANY($1::text[]::name[])",
            &[&names],
        )
        .map_err(|e| loc.error(e))?
        .get(0);
    match volatile {
        Some(f) => Err(SyncError::Invalid(format!(
            "the snapshot's SQL is refused: {what} calls a volatile function ({f}): {sql}"
        ))),
        None => Ok(()),
    }
}

/// Whether the database has a type of this name (SQL, maybe qualified):
/// one a restore would make (an enum, a composite type, a domain) is then
/// taken as it is.
fn type_exists(c: &mut Client, loc: &PgLocation, name: &str) -> Result<bool> {
    Ok(
        c.query_one("SELECT pg_catalog.to_regtype($1) IS NOT NULL", &[&name])
            .map_err(|e| loc.error(e))?
            .get(0),
    )
}

/// One step of a table's checked `CREATE` script.
fn create_step(c: &mut Client, loc: &PgLocation, a: &Action) -> Result<()> {
    let err = |e| loc.error(e);
    match a {
        Action::Exec(sql) => {
            c.execute(sql.as_str(), &[]).map_err(err)?;
        }
        Action::Enum { name, labels } => {
            if !type_exists(c, loc, name)? {
                let sql = format!("CREATE TYPE {name} AS ENUM ({})", labels.join(", "));
                c.execute(sql.as_str(), &[]).map_err(err)?;
            }
        }
        Action::Domain { name, sql, names } => {
            if !type_exists(c, loc, name)? {
                refuse_volatile(c, loc, names, "a domain", sql)?;
                c.execute(sql.as_str(), &[]).map_err(err)?;
            }
        }
        Action::Extension { name, sql } => {
            let (have, trusted): (bool, Option<bool>) = {
                let r = c
                    .query_one(
                        "SELECT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = $1::text::name), \
                                (SELECT v.trusted FROM pg_catalog.pg_available_extensions a \
                                 JOIN pg_catalog.pg_available_extension_versions v \
                                   ON v.name = a.name AND v.version = a.default_version \
                                 WHERE a.name = $1::text::name)",
                        &[name],
                    )
                    .map_err(err)?;
                (r.get(0), r.get(1))
            };
            match (have, trusted) {
                (true, _) => {}
                (false, Some(true)) => {
                    c.execute(sql.as_str(), &[]).map_err(err)?;
                }
                (false, Some(false)) => {
                    return Err(SyncError::Database(format!(
                        "{}: the tables need extension {name}, which the server does not deem \
                         trusted, so sp-sync does not make it: make it first (CREATE EXTENSION {})",
                        loc.redacted(),
                        quote(name)
                    )));
                }
                (false, None) => {
                    return Err(SyncError::Database(format!(
                        "{}: the tables need extension {name}, which is not installed on the server",
                        loc.redacted()
                    )));
                }
            }
        }
        Action::Composite { name, sql } => {
            // (Another table of this restore may have made it.)
            if !type_exists(c, loc, name)? {
                c.execute(sql.as_str(), &[]).map_err(err)?;
            }
        }
        Action::RowSecurity(_) | Action::Recorded { .. } => {
            return Err(SyncError::Invalid(
                "internal: row security or a recorded policy or trigger run as a create step"
                    .into(),
            ));
        }
        Action::Sequence { .. } => {
            return Err(SyncError::Invalid(
                "internal: a sequence run as a create step (restore_in makes them first)".into(),
            ));
        }
    }
    Ok(())
}

/// The sequences (by oid) whose name a function's source holds, such as a
/// shared id function's (audit round 17): a restore takes them for shared.
/// Asked once a restore, when its first sequence is set (every table is
/// made by then; a restore makes no function): per sequence, the scan of
/// `pg_proc` cost a millisecond a table. (A built-in or C function's
/// source is the name of its C symbol, never SQL.)
fn sequences_named_in_functions(
    c: &mut Client,
    loc: &PgLocation,
) -> Result<std::collections::HashSet<i64>> {
    let rows = c
        .query(
            "WITH src AS MATERIALIZED ( \
               SELECT f.prosrc FROM pg_catalog.pg_proc f \
               WHERE f.prosrc IS NOT NULL \
                 AND f.prolang NOT IN (SELECT l.oid FROM pg_catalog.pg_language l \
                                       WHERE l.lanname IN ('internal', 'c'))) \
             SELECT sc.oid::int8 FROM pg_catalog.pg_class sc WHERE sc.relkind = 'S' \
               AND EXISTS (SELECT 1 FROM src \
                           WHERE pg_catalog.strpos(src.prosrc, sc.relname::text) > 0)",
            &[],
        )
        .map_err(|e| loc.error(e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

fn run_step(
    c: &mut Client,
    loc: &PgLocation,
    step: Step,
    undo: &mut Vec<(String, i64, bool)>,
    rehearse: bool,
    named: &mut Option<std::collections::HashSet<i64>>,
) -> Result<()> {
    let err = |e| loc.error(e);
    match step {
        Step::Sql(sql) => {
            c.execute(sql.as_str(), &[]).map_err(err)?;
        }
        Step::Checked(g) => {
            // Nothing a constraint evaluates may be volatile.
            refuse_volatile(c, loc, &g.names, "a constraint", &g.sql)?;
            c.execute(g.sql.as_str(), &[]).map_err(err)?;
        }
        Step::SetVal {
            table,
            column,
            value,
            called,
            fresh: true,
            ..
        } => {
            c.execute(
                "SELECT pg_catalog.setval(pg_catalog.pg_get_serial_sequence($1, $2), $3, $4)",
                &[&table, &column, &value, &called],
            )
            .map_err(err)?;
        }
        Step::SetVal {
            table,
            column,
            value,
            called,
            never_back,
            fresh: false,
        } => {
            // The sequence (its name qualified: the undo below runs after
            // the rollback has reset the search path), its increment, and
            // whether another table's default takes its values too (or may:
            // a function whose source names it, see
            // sequences_named_in_functions). (`OFFSET 0` keeps the sequence
            // looked up once: pulled up, the lookup ran once per row of
            // pg_class, 12 ms a table.)
            if named.is_none() {
                *named = Some(sequences_named_in_functions(c, loc)?);
            }
            let Some(row) = c
                .query_opt(
                    "SELECT (SELECT pg_catalog.format('%I.%I', sn.nspname, sc.relname) \
                       FROM pg_catalog.pg_class sc \
                       JOIN pg_catalog.pg_namespace sn ON sn.oid = sc.relnamespace \
                       WHERE sc.oid = q.s), \
                       p.seqincrement, \
                       EXISTS (SELECT 1 FROM pg_catalog.pg_depend d \
                         JOIN pg_catalog.pg_attrdef ad ON ad.oid = d.objid \
                         WHERE d.classid = 'pg_catalog.pg_attrdef'::regclass \
                           AND d.refclassid = 'pg_catalog.pg_class'::regclass \
                           AND d.refobjid = q.s AND ad.adrelid <> $1::text::regclass), \
                       p.seqcache, q.s::oid::int8 \
                     FROM (SELECT pg_catalog.pg_get_serial_sequence($1, $2)::regclass AS s \
                           OFFSET 0) q \
                     JOIN pg_catalog.pg_sequence p ON p.seqrelid = q.s",
                    &[&table, &column],
                )
                .map_err(err)?
            else {
                return Ok(());
            };
            let (seq, inc, shared, cache, oid): (String, i64, bool, i64, i64) =
                (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
            let shared = shared || named.as_ref().is_some_and(|n| n.contains(&oid));
            // Its state, read from the sequence itself (also before its
            // first call, or after ALTER SEQUENCE … RESTART: is_called is
            // false, and last_value is the next value). `seq` is quoted.
            // (Under a savepoint: a role that may set the sequence but not
            // read it gets an unknown state, not an aborted transaction.)
            c.batch_execute("SAVEPOINT sp_sync_seq").map_err(err)?;
            let now: Option<(i64, bool)> =
                match c.query_opt(&format!("SELECT last_value, is_called FROM {seq}"), &[]) {
                    Ok(r) => {
                        c.batch_execute("RELEASE SAVEPOINT sp_sync_seq")
                            .map_err(err)?;
                        r.map(|r| (r.get(0), r.get(1)))
                    }
                    Err(_) => {
                        undo_savepoint(c, "sp_sync_seq").map_err(err)?;
                        None
                    }
                };
            // Which way the next value moves: against the increment is
            // back, and a lower value (a higher one, counting down) gives
            // keys out again. A sequence another table draws from never
            // goes back: its rows are not the snapshot's to count.
            let next_of = |v: i64, c: bool| i128::from(v) + if c { i128::from(inc) } else { 0 };
            let back = now.is_some_and(|(last, was_called)| {
                (next_of(value, called) - next_of(last, was_called)) * i128::from(inc.signum()) < 0
            });
            if back && (never_back || shared) {
                return Ok(());
            }
            // A rehearsal sets nothing (setval is not undone by its
            // rollback) but fails as setting it would: a value out of the
            // sequence's bounds, a role that may not set it.
            if rehearse {
                let ok: bool = c
                    .query_one(
                        "SELECT $2 BETWEEN p.seqmin AND p.seqmax \
                           AND pg_catalog.has_sequence_privilege($1::text::regclass, 'UPDATE') \
                         FROM pg_catalog.pg_sequence p WHERE p.seqrelid = $1::text::regclass",
                        &[&seq, &value],
                    )
                    .map_err(err)?
                    .get(0);
                if !ok {
                    return Err(SyncError::Database(format!(
                        "{}: sequence {seq} cannot be set to {value} (out of its bounds, or the role may not set it)",
                        loc.redacted()
                    )));
                }
                return Ok(());
            }
            // `ALTER SEQUENCE … RESTART` is transactional (it writes the
            // sequence anew, a file a rollback or a crash discards, and the
            // `nextval` that marks the value used writes to that file): a
            // restore killed before its commit leaves the sequence as it
            // was. It holds the sequence's lock until the commit. A role
            // that may set the sequence but not alter it (not its owner),
            // or a sequence that caches values (`nextval` would write the
            // end of the cached range), gets `setval`, which a rollback
            // does not undo.
            if cache == 1 {
                c.batch_execute("SAVEPOINT sp_sync_seq").map_err(err)?;
                let restarted = c
                    .batch_execute(&format!("ALTER SEQUENCE {seq} RESTART WITH {value}"))
                    .and_then(|()| {
                        if called {
                            c.execute("SELECT pg_catalog.nextval($1::text::regclass)", &[&seq])?;
                        }
                        Ok(())
                    });
                match restarted {
                    Ok(()) => {
                        c.batch_execute("RELEASE SAVEPOINT sp_sync_seq")
                            .map_err(err)?;
                        return Ok(());
                    }
                    Err(_) => {
                        undo_savepoint(c, "sp_sync_seq").map_err(err)?;
                    }
                }
            }
            c.execute(
                "SELECT pg_catalog.setval($1::text::regclass, $2, $3)",
                &[&seq, &value, &called],
            )
            .map_err(err)?;
            // setval is not undone by a rollback: a restore that fails
            // later puts a sequence it moved back where it was (forward
            // moves only skip values, and another session may have drawn
            // from them since).
            if back && let Some((last, was_called)) = now {
                undo.push((seq, last, was_called));
            }
        }
    }
    Ok(())
}

fn describe_mismatch(name: &str, want: &TableData, have: &TableData) -> String {
    for c in &want.columns {
        match have.columns.iter().find(|h| h.name == c.name) {
            None => return format!("table {name} has no column {}", c.name),
            Some(h) if h.decl_type != c.decl_type => {
                return format!(
                    "column {name}.{} is {:?} in the database, {:?} in the snapshot",
                    c.name, h.decl_type, c.decl_type
                );
            }
            _ => {}
        }
    }
    for h in &have.columns {
        if !want.columns.iter().any(|c| c.name == h.name) {
            return format!("table {name} has a column {} the snapshot lacks", h.name);
        }
    }
    if want.columns != have.columns {
        return format!("the columns of table {name} are in another order");
    }
    format!("table {name} has another primary key")
}

/// Loads all of a table's rows with `COPY … FROM STDIN`.
fn copy_in(
    c: &mut Client,
    loc: &PgLocation,
    src: &dyn ObjectSource,
    name: &str,
    t: &TableData,
    progress: &dyn Progress,
) -> Result<u64> {
    let classes = column_classes(t);
    let mut w = c.copy_in(&copy_in_sql(name, t)).map_err(|e| loc.error(e))?;
    let mut buf: Vec<u8> = Vec::with_capacity(COPY_SEND + (64 << 10));
    let mut n = 0u64;
    let io =
        |e: std::io::Error| SyncError::Database(format!("{}: table {name}: {e}", loc.redacted()));
    for e in MapIter::new(src, ObjectType::Rows, t.root) {
        let (k, v) = e?;
        if n.is_multiple_of(4096) && progress.interrupted() {
            return Err(SyncError::Interrupted);
        }
        let vals = row_values(src, t, &k, &v)?;
        push_copy_line(&mut buf, t, &classes, &vals)?;
        n += 1;
        if buf.len() >= COPY_SEND {
            w.write_all(&buf).map_err(io)?;
            buf.clear();
        }
    }
    w.write_all(&buf).map_err(io)?;
    w.finish().map_err(|e| loc.error(e))?;
    Ok(n)
}

/// A new table of fewer rows keeps its primary key while they go in:
/// dropping and adding it back costs more than it saves (on the server,
/// 50 rows: 2.2–3.3 ms with the key kept, 3.1–3.3 dropped; 500 rows about
/// even; 2,000: 5.6–8.3 against 5.3–7.5).
const KEY_ASIDE_ROWS: u64 = 1000;

/// Drops the primary key of table `name`, which this restore has just
/// created, so that its rows go in without the key's index kept up to date
/// row by row (the index is then built once, by a sort, as `pg_restore`
/// does); returns the key's (name, definition) to add back after the rows.
/// Only a plain table (no partitions, no inheritance) whose key nothing
/// refers to yet (a foreign key, a clustered or replica-identity index)
/// qualifies; any other, or a drop the server refuses, keeps its key.
fn set_key_aside(c: &mut Client, loc: &PgLocation, name: &str) -> Result<Option<(String, String)>> {
    let err = |e| loc.error(e);
    let key = c
        .query_opt(
            &format!(
            "SELECT k.conname::text, pg_catalog.pg_get_constraintdef(k.oid), {INDEX_OPTIONS}, \
                    (SELECT pg_catalog.quote_ident(s.spcname) FROM pg_catalog.pg_class ic \
                     JOIN pg_catalog.pg_tablespace s ON s.oid = ic.reltablespace \
                     WHERE ic.oid = k.conindid) \
             FROM pg_catalog.pg_constraint k \
             JOIN pg_catalog.pg_class t ON t.oid = k.conrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace \
             JOIN pg_catalog.pg_index x ON x.indexrelid = k.conindid \
             WHERE n.nspname = $1 AND t.relname = $2 AND k.contype = 'p' \
               AND t.relkind = 'r' AND NOT t.relispartition \
               AND NOT x.indisclustered AND NOT x.indisreplident \
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i \
                               WHERE i.inhrelid = t.oid OR i.inhparent = t.oid) \
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint f \
                               WHERE f.confrelid = t.oid OR f.conindid = k.conindid AND f.oid <> k.oid) \
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d \
                               WHERE d.refclassid = 'pg_catalog.pg_class'::regclass \
                                 AND d.refobjid = k.conindid \
                                 AND d.classid <> 'pg_catalog.pg_constraint'::regclass)"
            ),
            &[&loc.schema, &name],
        )
        .map_err(err)?;
    let Some(row) = key else {
        return Ok(None);
    };
    // Put back as it was: its index's storage parameters and tablespace
    // too, which `pg_get_constraintdef` leaves out.
    let space: Option<String> = row.get(5);
    let space = space
        .map(|s| format!(" USING INDEX TABLESPACE {s}"))
        .unwrap_or_default();
    let (kname, def): (String, String) =
        (row.get(0), with_index_options(row.get(1), &row, 2, &space));
    c.batch_execute("SAVEPOINT sp_sync_key").map_err(err)?;
    let drop = format!(
        "ALTER TABLE ONLY {} DROP CONSTRAINT {}",
        quote(name),
        quote(&kname)
    );
    match c.batch_execute(&drop) {
        Ok(()) => {
            c.batch_execute("RELEASE SAVEPOINT sp_sync_key")
                .map_err(err)?;
            Ok(Some((kname, def)))
        }
        Err(e) => {
            undo_savepoint(c, "sp_sync_key").map_err(err)?;
            tracing::debug!(
                "table {name}: its key is kept during the COPY ({})",
                loc.error(e)
            );
            Ok(None)
        }
    }
}

/// The `COPY` that loads every stored column of table `name`.
fn copy_in_sql(name: &str, t: &TableData) -> String {
    format!("COPY {} ({}) FROM STDIN", quote(name), column_list(t))
}

/// Undoes what ran since savepoint `name` and releases it. (A savepoint
/// only rolled back to stays open: what runs after would nest inside it,
/// each level holding a transaction id's lock in the server's shared lock
/// table, until it runs out, for other sessions too.)
fn undo_savepoint(c: &mut Client, name: &str) -> std::result::Result<(), tokio_postgres::Error> {
    c.batch_execute(&format!(
        "ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}"
    ))
}

/// Each stored column's class.
fn column_classes(t: &TableData) -> Vec<PgClass> {
    t.columns
        .iter()
        .map(|c| PgClass::of(&c.decl_type))
        .collect()
}

/// Appends a row's values (`classes`: its columns') to `buf` as one line
/// of text `COPY` input; on an error `buf` is left as it was.
fn push_copy_line(
    buf: &mut Vec<u8>,
    t: &TableData,
    classes: &[PgClass],
    vals: &[Value],
) -> Result<()> {
    let start = buf.len();
    for (i, (class, v)) in classes.iter().zip(vals).enumerate() {
        if i > 0 {
            buf.push(b'\t');
        }
        if let Err(e) = class.copy_text_into(v, buf) {
            buf.truncate(start);
            return Err(column_error(t, i, e));
        }
    }
    buf.push(b'\n');
    Ok(())
}

/// A value of column `i` of a table that has no text form.
fn column_error(t: &TableData, i: usize, e: String) -> SyncError {
    bad_row(&t.root, format!("column {}: {e}", t.columns[i].name))
}

/// A row's key for people: `table(42, 'x')`.
fn describe(name: &str, root: &ObjectId, key: &[u8]) -> String {
    super::key_for_people(name, key).unwrap_or_else(|| format!("{name}(a row of {})", root.short()))
}

/// An insert of every row of the snapshot from its key on (see
/// [`Act::Insert`]): the rows after the table's last, which the plan need
/// not read.
const INSERT_REST: u64 = u64::MAX;

/// What a merge does to one row of an existing table (keyed by the row's
/// key in a plan).
enum Act {
    /// Inserts this row and the next `n - 1` rows of the snapshot, in key
    /// order (a plan holds a run of inserts as one act: restoring onto an
    /// empty table plans one act, not a key per row); [`INSERT_REST`],
    /// every row after it.
    Insert(u64),
    Delete,
    Update(Vec<usize>),
}

/// The rows of a restored table that the snapshot lacks, which a restore
/// without `--delete` keeps as they are: how many, and a sum of a hash of
/// each (in constant memory), to tell whether a foreign key's action of
/// the table (`ON DELETE CASCADE` taking them along, `SET NULL` changing
/// them) reached them. Columns whose values may follow a referenced row
/// (`ON UPDATE CASCADE`, and no key of the table nulls them) count only by
/// whether they are set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Extras {
    rows: u64,
    sum: u128,
    /// By column: left out.
    skip: Vec<bool>,
}

impl Extras {
    /// The table's keys decide which columns may follow.
    fn of(c: &mut Client, loc: &PgLocation, name: &str, t: &TableData) -> Result<Extras> {
        let rows = c
            .query(
                &format!(
                    "SELECT f.confupdtype::text, f.confdeltype::text, \
                       ARRAY(SELECT a.attname::text FROM unnest(f.conkey) k(n) \
                         JOIN pg_catalog.pg_attribute a ON a.attrelid = f.conrelid AND a.attnum = k.n) \
                     FROM pg_catalog.pg_constraint f \
                     WHERE f.contype = 'f' AND f.conparentid = 0 AND f.conrelid IN {TABLE_TREE}"
                ),
                &[&loc.schema, &name],
            )
            .map_err(|e| loc.error(e))?;
        let mut follow = vec![false; t.columns.len()];
        let mut nulled = vec![false; t.columns.len()];
        for r in rows {
            let (upd, del, cols): (String, String, Vec<String>) = (r.get(0), r.get(1), r.get(2));
            for col in cols {
                let Some(i) = t.columns.iter().position(|c| c.name == col) else {
                    continue;
                };
                follow[i] |= upd == "c";
                nulled[i] |= matches!(upd.as_str(), "n" | "d") || matches!(del.as_str(), "n" | "d");
            }
        }
        Ok(Extras {
            rows: 0,
            sum: 0,
            skip: follow.iter().zip(&nulled).map(|(f, n)| *f && !*n).collect(),
        })
    }

    /// Counts a row (its encoding).
    fn add(&mut self, row: &[u8]) -> std::result::Result<(), crate::codec::DecodeError> {
        let mut cells = decode_row(row)?;
        // A column that may follow counts by whether it is set: a row that
        // followed a value some key set to NULL on its way lost its
        // reference (audit round 15).
        for (cell, skip) in cells.iter_mut().zip(&self.skip) {
            if *skip {
                let set = !matches!(cell, Cell::Value(Value::Null));
                *cell = Cell::Value(Value::Integer(i64::from(set)));
            }
        }
        let h = blake3::hash(&crate::object::row::encode_row(&cells));
        let mut b = [0u8; 16];
        b.copy_from_slice(&h.as_bytes()[..16]);
        self.rows += 1;
        self.sum = self.sum.wrapping_add(u128::from_le_bytes(b));
        Ok(())
    }

    /// The same count, afresh.
    fn empty(&self) -> Extras {
        Extras {
            rows: 0,
            sum: 0,
            skip: self.skip.clone(),
        }
    }
}

/// The rows of an existing table that differ from the snapshot's, by key:
/// the table streamed in key order beside the snapshot's rows (one pass,
/// nothing of either held but the keys that differ).
#[allow(clippy::too_many_arguments)]
fn merge_plan(
    c: &mut Client,
    loc: &PgLocation,
    src: &dyn ObjectSource,
    name: &str,
    t: &TableData,
    (by_all, partitioned): (bool, bool),
    chunker: &Chunker,
    opts: &DbRestoreOptions,
    progress: &dyn Progress,
    mut extras: Option<&mut Extras>,
) -> Result<Vec<(Vec<u8>, Act)>> {
    // The table now, streamed in key order beside the snapshot's rows (one
    // pass, nothing of either held but the keys that differ). Large values
    // are chunked and hashed only: rows compare by their encodings.
    let scratch = MemStore::new(false);
    let mut acts: Vec<(Vec<u8>, Act)> = Vec::new();
    // The run of inserts the snapshot's next row would extend: its act.
    let mut run: Option<usize> = None;
    let insert = |acts: &mut Vec<(Vec<u8>, Act)>, run: &mut Option<usize>, k: Vec<u8>| {
        if let Some((_, Act::Insert(n))) = run.and_then(|i| acts.get_mut(i)) {
            *n += 1;
        } else {
            *run = Some(acts.len());
            acts.push((k, Act::Insert(1)));
        }
    };
    let mut snap = MapIter::new(src, ObjectType::Rows, t.root).peekable();
    let mut last: Option<Vec<u8>> = None;
    let out_of_order = |k: &[u8]| {
        SyncError::Database(format!(
            "{}: table {name}: rows came out of key order at {}",
            loc.redacted(),
            describe(name, &t.root, k)
        ))
    };
    let mut on_row = |k: &[u8], v: &[u8]| -> Result<()> {
        if last.as_deref().is_some_and(|l| l >= k) {
            return Err(out_of_order(k));
        }
        last = Some(k.to_vec());
        loop {
            // A read error sorts first, so that the next `next()` returns it.
            let ahead = match snap.peek() {
                None => None,
                Some(Ok((sk, _))) => Some(sk.as_slice().cmp(k)),
                Some(Err(_)) => Some(std::cmp::Ordering::Less),
            };
            match ahead {
                Some(std::cmp::Ordering::Less) => {
                    if let Some(r) = snap.next() {
                        insert(&mut acts, &mut run, r?.0);
                    }
                }
                Some(std::cmp::Ordering::Equal) => {
                    run = None;
                    let sv = match snap.next() {
                        Some(r) => r?.1,
                        None => return Ok(()),
                    };
                    if sv != v {
                        let a = decode_row(v).map_err(|e| bad_row(&t.root, e))?;
                        let b = decode_row(&sv).map_err(|e| bad_row(&t.root, e))?;
                        let cols: Vec<usize> = (0..t.columns.len())
                            .filter(|&i| a.get(i) != b.get(i))
                            .collect();
                        if !cols.is_empty() {
                            acts.push((k.to_vec(), Act::Update(cols)));
                        }
                    }
                    return Ok(());
                }
                _ => {
                    if opts.delete {
                        acts.push((k.to_vec(), Act::Delete));
                    } else if let Some(x) = extras.as_deref_mut() {
                        x.add(v).map_err(|e| bad_row(&t.root, e))?;
                    }
                    return Ok(());
                }
            }
        }
    };
    // (The target's enum columns are read as text: the snapshot's table
    // says only their type names.)
    read_table(
        c,
        loc,
        name,
        t,
        &[],
        (by_all, partitioned, Order::Key),
        &scratch,
        chunker,
        progress,
        &mut on_row,
    )?;
    // The rows after the table's last: all inserted, read when applied.
    if let Some(e) = snap.next() {
        insert(&mut acts, &mut run, e?.0);
        if let Some((_, Act::Insert(n))) = run.and_then(|i| acts.get_mut(i)) {
            *n = INSERT_REST;
        }
    }
    Ok(acts)
}

/// Whether a look-alike key may take the snapshot's row by `ON CONFLICT
/// DO UPDATE`: the target table's primary key is exactly the snapshot's
/// key and not deferrable (what `ON CONFLICT` can name), its columns'
/// collations are deterministic (a case-insensitive one the snapshot's
/// table may not have had would merge two of its rows into one), and no
/// column is `GENERATED ALWAYS AS IDENTITY` (which an update cannot set).
/// Otherwise an insert stays plain, and a look-alike fails on the key.
fn key_is_arbiter(c: &mut Client, loc: &PgLocation, name: &str, t: &TableData) -> Result<bool> {
    let row = c
        .query_opt(
            "SELECT k.condeferrable \
                 OR EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a \
                   JOIN pg_catalog.pg_collation l ON l.oid = a.attcollation \
                   WHERE a.attrelid = k.conrelid AND a.attnum = ANY (k.conkey) \
                     AND NOT l.collisdeterministic) \
                 OR EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a \
                   WHERE a.attrelid = k.conrelid AND a.attnum > 0 AND NOT a.attisdropped \
                     AND a.attidentity = 'a'), \
               ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a \
               WHERE a.attrelid = k.conrelid AND a.attnum = ANY (k.conkey) ORDER BY a.attname) \
             FROM pg_catalog.pg_constraint k JOIN pg_catalog.pg_class r ON r.oid = k.conrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace \
             WHERE n.nspname = $1 AND r.relname = $2 AND k.contype = 'p'",
            &[&loc.schema, &name],
        )
        .map_err(|e| loc.error(e))?;
    let Some(row) = row else {
        return Ok(false);
    };
    let unfit: bool = row.get(0);
    let mut cols: Vec<String> = row.get(1);
    cols.sort();
    let mut want: Vec<String> = t
        .key
        .iter()
        .map(|&k| t.columns[k as usize].name.clone())
        .collect();
    want.sort();
    Ok(!unfit && cols == want)
}

/// Applies a merge plan's deletes (`deletes`), or its updates and inserts.
#[allow(clippy::too_many_arguments)]
fn merge_apply(
    c: &mut Client,
    loc: &PgLocation,
    src: &dyn ObjectSource,
    name: &str,
    t: &TableData,
    acts: &[(Vec<u8>, Act)],
    (by_all, partitioned): (bool, bool),
    deletes: bool,
    progress: &dyn Progress,
    rep: &mut DbRestoreReport,
    rows: &mut RowStatements<'_>,
) -> Result<()> {
    if acts.is_empty() {
        return Ok(());
    }
    // A row is matched by its exact value, not by the type's equality,
    // which may be coarser than what the snapshot tells apart (numeric
    // 1.0 = 1.00, float 0 = -0): the column's text form must be the
    // value's too. Where the key's columns cannot be NULL (a primary key)
    // the `=` lets the key's index find the row; a table keyed by all its
    // columns (which may be NULL, and may lack `=`, json) compares the
    // text forms alone.
    let key_where: Vec<String> = t
        .key
        .iter()
        .enumerate()
        .map(|(i, &k)| {
            let col = &t.columns[k as usize];
            let (name, ty, n) = (quote(&col.name), &col.decl_type, i + 1);
            let exact =
                format!("({name})::text IS NOT DISTINCT FROM (CAST(${n}::text AS {ty}))::text");
            if by_all {
                exact
            } else {
                format!("{name} = CAST(${n}::text AS {ty}) AND {exact}")
            }
        })
        .collect();
    if deletes {
        let from = own_rows(name, partitioned);
        merge_deletes(c, loc, &from, t, acts, &key_where, progress, rep, rows)?;
        // (The statements kept go before another table's.)
        return rows.flush(c, loc, rep);
    }
    // Updates and inserts, reading the snapshot's rows in key order.
    let wanted: Vec<usize> = (0..acts.len())
        .filter(|&i| !matches!(acts[i].1, Act::Delete))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let cols: Vec<String> = t.columns.iter().map(|c| quote(&c.name)).collect();
    let casts: Vec<String> = t
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("CAST(${}::text AS {})", i + 1, c.decl_type))
        .collect();
    let ins = format!(
        "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE VALUES ({})",
        quote(name),
        cols.join(", "),
        casts.join(", ")
    );
    let del = format!(
        "DELETE FROM {} WHERE {}",
        own_rows(name, partitioned),
        key_where.join(" AND ")
    );
    // A row the plan inserts may meet one the table's key calls equal,
    // though its text differs (numeric 1.0 and 1.00, -0 and 0, intervals,
    // a case-insensitive collation): that is the same row, and it becomes
    // the snapshot's, key text included (as `--delete` would leave it),
    // instead of failing on the key. Integer and boolean keys have one text
    // per value (and an identity key cannot be set). Not where the update
    // would reach further than the row: a foreign key to the table acting
    // on it (ON UPDATE CASCADE, SET NULL), an insert or delete trigger, a
    // rule.
    let one_text = |c: &crate::object::table::Column| {
        matches!(PgClass::of(&c.decl_type), PgClass::Int | PgClass::Bool)
    };
    // (Nor on a partitioned table, whose rows an insert's RETURNING cannot
    // ask for the system column that tells an update from an insert.)
    let plain = by_all
        || partitioned
        || t.key.is_empty()
        || t.key.iter().all(|&k| one_text(&t.columns[k as usize]))
        || rows.delete_acts
        || !key_is_arbiter(c, loc, name, t)?;
    let ins_row = if plain {
        ins.clone()
    } else {
        let key_names: Vec<String> = t
            .key
            .iter()
            .map(|&k| quote(&t.columns[k as usize].name))
            .collect();
        let sets: Vec<String> = t
            .columns
            .iter()
            .enumerate()
            .filter(|(i, c)| !t.key.iter().any(|&k| k as usize == *i) || !one_text(c))
            .map(|(_, c)| format!("{0} = EXCLUDED.{0}", quote(&c.name)))
            .collect();
        format!(
            "{ins} ON CONFLICT ({}) DO UPDATE SET {}{UPSERT_RETURNING}",
            key_names.join(", "),
            sets.join(", ")
        )
    };
    let insert_op = if plain { RowOp::Insert } else { RowOp::Upsert };
    let mut next = 0usize;
    // Rows of the run of inserts under way still to come after this one,
    // or every row left.
    let mut run_left = 0u64;
    let mut to_end = false;
    for e in MapIter::new(src, ObjectType::Rows, t.root) {
        let (k, v) = e?;
        if progress.interrupted() {
            return Err(SyncError::Interrupted);
        }
        let act = if to_end || run_left > 0 {
            run_left = run_left.saturating_sub(1);
            &Act::Insert(1)
        } else {
            let Some(&i) = wanted.get(next) else { break };
            if k != acts[i].0 {
                continue;
            }
            next += 1;
            match acts[i].1 {
                Act::Insert(INSERT_REST) => to_end = true,
                Act::Insert(n) => run_left = n.saturating_sub(1),
                _ => {}
            }
            &acts[i].1
        };
        let vals = row_values(src, t, &k, &v)?;
        match act {
            Act::Update(changed) => {
                let tx = rows.texts(&vals)?;
                // On a table whose foreign keys act on its rows (SET NULL,
                // SET DEFAULT), a delete or an update of a referenced row
                // earlier in this restore may have changed columns the plan
                // saw equal: every column is set.
                let every: Vec<usize>;
                let ucols: &[usize] = if rows.referring_acts {
                    every = (0..t.columns.len())
                        .filter(|&i| !t.key.iter().any(|&k| k as usize == i))
                        .collect();
                    &every
                } else {
                    changed
                };
                let nkey = t.key.len();
                let sets: Vec<String> = ucols
                    .iter()
                    .enumerate()
                    .map(|(j, &ci)| {
                        let col = &t.columns[ci];
                        format!(
                            "{} = CAST(${}::text AS {})",
                            quote(&col.name),
                            nkey + j + 1,
                            col.decl_type
                        )
                    })
                    .collect();
                let sql = format!(
                    "UPDATE {} SET {} WHERE {}",
                    own_rows(name, partitioned),
                    sets.join(", "),
                    key_where.join(" AND ")
                );
                let mut params: Vec<Option<String>> = Vec::new();
                for &ki in &t.key {
                    params.push(tx[ki as usize].clone());
                }
                let key_params = params.clone();
                // Rows a foreign key's ON UPDATE action would change, in a
                // table this restore leaves as it is, when the update
                // changes the columns it refers to: refused.
                let changed_names: Vec<String> =
                    changed.iter().map(|&i| quote(&t.columns[i].name)).collect();
                let from = own_rows(name, partitioned);
                let acting = |o: &&OutsideRef| {
                    o.on_update.is_some() && o.refs.iter().any(|r| changed_names.contains(r))
                };
                // (Read after the statements kept have run, as the row's
                // own would have.)
                if rows.outside.iter().any(|o| acting(&o)) {
                    rows.flush(c, loc, rep)?;
                }
                for o in rows.outside.iter().filter(acting) {
                    let row = format!("updating row {}", describe(rows.name, &t.root, &k));
                    if o.referred(c, &from, &key_where, &key_params)
                        .map_err(|e| o.check_failed(loc, &row, e))?
                    {
                        return Err(o.refusal(loc, &row, o.on_update.unwrap_or_default()));
                    }
                }
                for &ci in ucols {
                    params.push(tx[ci].clone());
                }
                // Should the update be one of a cycle of rows trading
                // unique values, the row is taken out and put back whole;
                // should its row be gone with a row it referred to (ON
                // DELETE CASCADE), it is put back.
                let reinsert = (rows.unique || rows.referring_acts).then(|| Reinsert {
                    delete: del.clone(),
                    key: key_params,
                    insert: ins.clone(),
                    row: tx,
                });
                rows.run(c, loc, &k, RowOp::Update, &sql, params, reinsert, rep)?;
            }
            Act::Insert(_) if matches!(insert_op, RowOp::Insert) => {
                rows.insert(c, loc, (&k, &v), &ins_row, vals, rep)?;
            }
            Act::Insert(_) => {
                let tx = rows.texts(&vals)?;
                rows.run(c, loc, &k, insert_op, &ins_row, tx, None, rep)?;
            }
            Act::Delete => {}
        }
        if next == wanted.len() && run_left == 0 && !to_end {
            break;
        }
    }
    if next != wanted.len() || run_left > 0 {
        return Err(bad_row(&t.root, "rows changed while restoring"));
    }
    // (The statements kept go before another table's, or anything that
    // reads the table.)
    rows.flush(c, loc, rep)
}

#[allow(clippy::too_many_arguments)]
fn merge_deletes(
    c: &mut Client,
    loc: &PgLocation,
    from: &str,
    t: &TableData,
    acts: &[(Vec<u8>, Act)],
    key_where: &[String],
    progress: &dyn Progress,
    rep: &mut DbRestoreReport,
    rows: &mut RowStatements<'_>,
) -> Result<()> {
    let del = format!("DELETE FROM {from} WHERE {}", key_where.join(" AND "));
    for (k, a) in acts {
        if !matches!(a, Act::Delete) {
            continue;
        }
        if progress.interrupted() {
            return Err(SyncError::Interrupted);
        }
        let kv = decode_key(k).map_err(|e| bad_row(&t.root, e))?;
        let key_cols: Vec<Value> = kv;
        let mut kt: Vec<Option<String>> = Vec::new();
        for (i, &ki) in t.key.iter().enumerate() {
            let class = PgClass::of(&t.columns[ki as usize].decl_type);
            kt.push(
                class
                    .text(&key_cols[i])
                    .map_err(|e| bad_row(&t.root, e))?
                    .map(|b| String::from_utf8_lossy(&b).into_owned()),
            );
        }
        // Rows a foreign key's ON DELETE action would change in a table
        // this restore leaves as it is: refused. (Read after the
        // statements kept have run, as the row's own would have.)
        if rows.outside.iter().any(|o| o.on_delete.is_some()) {
            rows.flush(c, loc, rep)?;
        }
        for o in rows.outside.iter().filter(|o| o.on_delete.is_some()) {
            let row = format!("deleting row {}", describe(rows.name, &t.root, k));
            if o.referred(c, from, key_where, &kt)
                .map_err(|e| o.check_failed(loc, &row, e))?
            {
                return Err(o.refusal(loc, &row, o.on_delete.unwrap_or_default()));
            }
        }
        rows.run(c, loc, k, RowOp::Delete, &del, kt, None, rep)?;
    }
    Ok(())
}

/// What a restore's row statement did: an UPDATE must change its row, a
/// DELETE at most one.
#[derive(Clone, Copy)]
enum RowOp {
    Update,
    Insert,
    Delete,
    /// The insert that puts back a row taken out by its [`Reinsert`]
    /// (counted as the update it stands for).
    Reinsert,
    /// An insert that a look-alike key turns into an update
    /// ([`UPSERT_RETURNING`]: it says which, 1 inserted, 2 updated).
    Upsert,
}

/// Ends an `INSERT … ON CONFLICT DO UPDATE`: whether it updated a row
/// (the row version it returns then carries the transaction that locked
/// the old one), so that the report counts it as what it did.
const UPSERT_RETURNING: &str = " RETURNING (xmax::text <> '0')";

/// What an upsert's returned rows say: 2 when it updated, 1 when it
/// inserted, 0 when it did neither.
fn upsert_count(rows: &[tokio_postgres::Row]) -> u64 {
    match rows.first() {
        None => 0,
        Some(r) if r.get::<_, bool>(0) => 2,
        Some(_) => 1,
    }
}

/// How an update is done when it is one of a cycle of rows trading values
/// of a unique index that cannot be deferred (checked after each
/// statement: `a` takes `b`'s email as `b` takes `a`'s): the row is deleted
/// by its key, the others' updates run, and it is inserted again whole.
/// Used only when nothing but the row is touched: no foreign key acts on
/// a delete or an update of it (`CASCADE`, `SET NULL`, `SET DEFAULT`), and
/// no trigger or rule fires on a delete or an insert (see
/// `RowStatements::delete_acts`); a key that refers to the row and cannot
/// wait fails the delete, and the restore with it.
struct Reinsert {
    delete: String,
    key: Vec<Option<String>>,
    insert: String,
    row: Vec<Option<String>>,
}

/// Runs a restore's row statements on one table. On a table that refers
/// to itself by a foreign key that cannot be deferred (checked after each
/// statement), rows in key order may come before the rows they need: a
/// child before its parent is inserted, a parent before its children are
/// deleted. On a table with a unique index that cannot be deferred, a row
/// may take a value another row gives up only later. There each statement
/// runs under a savepoint, and one that breaks that key or index is tried
/// again after the others, round after round, until none is left. A round
/// that makes no progress breaks a cycle of updates by a [`Reinsert`]
/// when it may; otherwise the first one's error is the restore's.
struct RowStatements<'a> {
    name: &'a str,
    /// The table's stored columns, and each one's class.
    t: &'a TableData,
    classes: Vec<PgClass>,
    self_ref: bool,
    /// The table has a unique index (besides its key) or an exclusion
    /// constraint that cannot be deferred.
    unique: bool,
    /// Taking a row out and putting it back would do more than an update:
    /// a foreign key to the table (or a partition of it, or a table above
    /// it) acts on a delete or an update (`CASCADE`, `SET NULL`, `SET
    /// DEFAULT`: an update would have carried the referring rows along),
    /// or a trigger the restore could not pause fires on a delete or an
    /// insert, or a rule is there. Then no [`Reinsert`].
    delete_acts: bool,
    /// A foreign key of the table acts on its rows when a referenced row
    /// goes or changes (`CASCADE`, `SET NULL`, `SET DEFAULT`).
    referring_acts: bool,
    /// Foreign keys of tables this restore does not restore that act on
    /// their rows when a row of this table goes (see [`outside_refs`]).
    outside: Vec<OutsideRef>,
    pending: Vec<PendingRow>,
    /// Statements prepared on the connection, by their text (at most
    /// [`MAX_PREPARED`]): a statement run by its text is prepared anew
    /// each time, a round trip per row more.
    prepared: std::collections::HashMap<String, tokio_postgres::Statement>,
    /// Inserts may go by `COPY … FROM STDIN` (see [`Self::flush`]): no
    /// rule and no trigger the restore could not pause acts on an insert
    /// into the table (`COPY` runs no rules, and a statement trigger would
    /// fire once for many rows). Cleared when a `COPY` fails.
    copy_ok: bool,
    /// That `COPY` statement.
    copy_sql: String,
    /// The inserts of the `COPY` under way, in order, kept until it ends
    /// should they have to go one by one: each row's key and stored row
    /// (varint-counted, one after another: a row's values, a few
    /// allocations each, held until their `COPY` ended and then freed cold,
    /// cost the restore's thread ~3 ms a `COPY` while the server waited),
    /// and how many; their statement (one text for the table); and the
    /// bytes their values hold.
    inserts: Vec<u8>,
    insert_rows: usize,
    insert_sql: String,
    insert_bytes: usize,
    /// Where the inserts' large values are read again, should their
    /// `COPY` fail (set for the tables whose rows are restored).
    src: Option<&'a dyn ObjectSource>,
    /// That `COPY`'s lines not yet sent.
    copy_buf: Vec<u8>,
    /// Why it cannot succeed, when its start or a send failed (the rest of
    /// its rows are only kept, to go one by one).
    copy_failed: Option<String>,
    /// Other statements may go together (see [`Self::send`]): not on a
    /// table whose rows a foreign key's action may change under the
    /// restore, where an update may have to put its row back at once.
    together: bool,
    /// Statements not yet sent, in order.
    queue: Vec<PendingRow>,
}

/// Most statements sent together.
const PIPELINE_ROWS: usize = 1_000;

/// Most inserts, and most bytes of their values, sent by one `COPY`.
const COPY_ROWS: usize = 10_000;
const COPY_BYTES: usize = 16 << 20;
/// A `COPY`'s lines are sent to the server by this many bytes.
const COPY_SEND: usize = 128 << 10;

/// Most statements a table's restore keeps prepared (an update's text
/// varies with the columns it sets).
const MAX_PREPARED: usize = 64;

/// A foreign key of another table, which a restore leaves as it is, whose
/// `ON DELETE` action changes that table's rows when a row of the table
/// restored goes.
struct OutsideRef {
    /// The referring table (`regclass` text: quoted, qualified as needed).
    table: String,
    /// Its columns, and the referenced columns, quoted, in the key's order.
    cols: Vec<String>,
    refs: Vec<String>,
    /// The restored tables a delete cascades through before it reaches
    /// this table's key (`ON DELETE CASCADE` from each to the one before),
    /// nearest first: empty when the key refers to the restored table
    /// itself.
    via: Vec<Hop>,
    /// What a delete of a referenced row does to its rows, if anything.
    on_delete: Option<&'static str>,
    /// What an update of referenced columns does to them, if anything.
    on_update: Option<&'static str>,
}

impl OutsideRef {
    /// Whether rows of its table refer to the row `key_where` (parameters:
    /// `key`) finds in `from`.
    fn referred(
        &self,
        c: &mut Client,
        from: &str,
        key_where: &[String],
        key: &[Option<String>],
    ) -> std::result::Result<bool, tokio_postgres::Error> {
        // The row, then the rows of each table the delete cascades
        // through, then whether this table has rows referring to them.
        let first_refs = self.via.first().map_or(&self.refs, |h| &h.refs);
        let mut inner = format!(
            "SELECT {} FROM {from} WHERE {}",
            first_refs.join(", "),
            key_where.join(" AND ")
        );
        for (i, h) in self.via.iter().enumerate() {
            let next = self.via.get(i + 1).map_or(&self.refs, |n| &n.refs);
            inner = if h.down {
                // The rows referring to the row, the rows referring to
                // those, and so on (a cycle ends where it comes back).
                let on = |a: &str, cols: &[String]| {
                    cols.iter()
                        .map(|c| format!("{a}.{c}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                format!(
                    "WITH RECURSIVE down{i}(o, t) AS ( \
                       SELECT tableoid, ctid FROM {table} WHERE ({cols}) IN ({inner}) \
                       UNION SELECT c.tableoid, c.ctid FROM {table} c, {table} p, down{i} d \
                         WHERE p.tableoid = d.o AND p.ctid = d.t AND ({c_cols}) = ({p_refs})) \
                     SELECT {next} FROM {table} WHERE (tableoid, ctid) IN (SELECT o, t FROM down{i})",
                    table = h.table,
                    cols = h.cols.join(", "),
                    c_cols = on("c", &h.cols),
                    p_refs = on("p", &h.refs),
                    next = next.join(", "),
                )
            } else {
                format!(
                    "SELECT {} FROM {} WHERE ({}) IN ({inner})",
                    next.join(", "),
                    h.table,
                    h.cols.join(", ")
                )
            };
        }
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM {} WHERE ({}) IN ({inner}))",
            self.table,
            self.cols.join(", ")
        );
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = key
            .iter()
            .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        Ok(c.query_one(sql.as_str(), &refs)?.get(0))
    }

    /// A check's failure: a role that may not read the table cannot tell
    /// (its foreign key's action would run as the table's owner).
    fn check_failed(&self, loc: &PgLocation, row: &str, e: tokio_postgres::Error) -> SyncError {
        SyncError::Database(format!(
            "{}: cannot tell whether {row} would change rows of table {}, whose foreign key \
             acts on it ({}); nothing was written",
            loc.redacted(),
            self.table,
            match loc.error(e) {
                SyncError::Database(m) => m,
                other => other.to_string(),
            }
        ))
    }

    /// The refusal of a restore that would `what` rows of its table.
    fn refusal(&self, loc: &PgLocation, row: &str, what: &str) -> SyncError {
        let through = if self.via.is_empty() {
            String::new()
        } else {
            let names: Vec<&str> = self.via.iter().map(|h| h.table.as_str()).collect();
            format!(
                " (through the rows it deletes in {})",
                names.join(", then ")
            )
        };
        SyncError::Database(format!(
            "{}: {row} would {what} rows of table {}{through}, which this restore does not \
             restore; nothing was written (restore that table too, or change those rows first)",
            loc.redacted(),
            self.table
        ))
    }
}

/// The tables a restore restores, as SQL common table expressions: `r`,
/// each name (`$2`, in schema `$1`) as an oid, and `kept`, those with the
/// partitions below them.
const KEPT: &str = "r AS (SELECT pg_catalog.to_regclass(pg_catalog.quote_ident($1) || '.' \
                       || pg_catalog.quote_ident(nm)) AS oid FROM unnest($2::text[]) AS nm), \
                     kept AS (SELECT r.oid FROM r WHERE r.oid IS NOT NULL \
                       UNION ALL SELECT p.relid FROM r, pg_catalog.pg_partition_tree(r.oid) AS p \
                       WHERE p.relid IS NOT NULL)";

/// What the final check of a restore without the server's counts
/// compares for a key of a table it leaves: its rows, those whose key
/// columns are all set, and (`values`: unless its rows may follow a
/// restored row through `ON UPDATE CASCADE`) the sum of a hash of each
/// row's key values (in constant memory, whatever the table's size), as
/// one text.
fn outside_count_sql(table: &str, cols: &[String], values: bool) -> String {
    let set: Vec<String> = cols.iter().map(|c| format!("{c} IS NOT NULL")).collect();
    let hash = if values {
        format!(
            " || ' ' || coalesce(sum(pg_catalog.hashtextextended(ROW({})::text, 0)::numeric), 0)",
            cols.join(", ")
        )
    } else {
        String::new()
    };
    format!(
        "SELECT count(*) || ' ' || count(*) FILTER (WHERE {}){hash} FROM {table}",
        set.join(" AND ")
    )
}

/// A restored table a delete cascades through: its rows referring to the
/// row deleted (by `cols`, to the referenced `refs`) go with it.
#[derive(Clone)]
struct Hop {
    /// The key refers to its own table (a tree of rows): the delete goes
    /// down every level of it.
    down: bool,
    /// The table (`regclass` text).
    table: String,
    /// Its referring columns, and the columns they refer to, quoted.
    cols: Vec<String>,
    refs: Vec<String>,
}

/// At most this many restored tables between a deleted row and the table
/// whose rows a cascade reaches; and at most this many keys followed.
const MAX_HOPS: usize = 16;
const MAX_OUTSIDE: usize = 1024;

/// The foreign keys that would carry a delete of a row of table `name`, or
/// an update of the columns they refer to, over to rows of a table not
/// among `restored` (the tables of the schema this restore restores):
/// `CASCADE` deletes or changes them, `SET NULL` and `SET DEFAULT` change
/// them.
fn outside_refs(
    c: &mut Client,
    loc: &PgLocation,
    name: &str,
    restored: &[&str],
) -> Result<Vec<OutsideRef>> {
    let mut out = Vec::new();
    outside_refs_via(c, loc, name, restored, &[], &mut out)?;
    Ok(out)
}

/// [`outside_refs`] of the rows of `name` that a delete reaches through
/// `via`: a key of a table the restore leaves is one, and so, when it
/// cascades deletes, is every such key of a restored table that refers to
/// `name`, reached through it (its rows the restore puts back, but the
/// cascade goes on from them).
fn outside_refs_via(
    c: &mut Client,
    loc: &PgLocation,
    name: &str,
    restored: &[&str],
    via: &[Hop],
    out: &mut Vec<OutsideRef>,
) -> Result<()> {
    let rows = c
        .query(
            &format!(
                "SELECT f.conrelid::regclass::text, n.nspname::text, r.relname::text, \
                   ARRAY(SELECT a.attname::text FROM unnest(f.conkey) WITH ORDINALITY k(n, i) \
                     JOIN pg_catalog.pg_attribute a ON a.attrelid = f.conrelid AND a.attnum = k.n \
                     ORDER BY k.i), \
                   ARRAY(SELECT a.attname::text FROM unnest(f.confkey) WITH ORDINALITY k(n, i) \
                     JOIN pg_catalog.pg_attribute a ON a.attrelid = f.confrelid AND a.attnum = k.n \
                     ORDER BY k.i), \
                   f.confdeltype::text, f.confupdtype::text \
                 FROM pg_catalog.pg_constraint f \
                 JOIN pg_catalog.pg_class r \
                   ON r.oid = coalesce(pg_catalog.pg_partition_root(f.conrelid), f.conrelid) \
                 JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace \
                 WHERE f.contype = 'f' AND f.conparentid = 0 \
                   AND (f.confdeltype IN ('c', 'n', 'd') OR f.confupdtype IN ('c', 'n', 'd')) \
                   AND f.confrelid IN {TABLE_TREE} \
                 ORDER BY 1"
            ),
            &[&loc.schema, &name],
        )
        .map_err(|e| loc.error(e))?;
    // (A key declared on a partition belongs to the table the partition
    // is part of: `n`, `r` name the root of its partition tree.)
    for r in rows {
        if out.len() >= MAX_OUTSIDE {
            return Err(SyncError::Database(format!(
                "{}: table {name}: more than {MAX_OUTSIDE} foreign keys a delete could reach; \
                 nothing was written",
                loc.redacted()
            )));
        }
        let (schema, rel): (String, String) = (r.get(1), r.get(2));
        let (del, upd): (String, String) = (r.get(5), r.get(6));
        let (cols, refs): (Vec<String>, Vec<String>) = (r.get(3), r.get(4));
        let table: String = r.get(0);
        let cols: Vec<String> = cols.iter().map(|c| quote(c)).collect();
        let refs: Vec<String> = refs.iter().map(|c| quote(c)).collect();
        if schema == loc.schema && restored.contains(&rel.as_str()) {
            // A restored table whose rows go with the deleted row: the
            // keys on it carry the delete further. (A cycle of cascades
            // ends where it comes back.)
            if del == "c" && !via.iter().any(|h| h.table == table && h.cols == cols) {
                if via.len() >= MAX_HOPS {
                    return Err(SyncError::Database(format!(
                        "{}: table {name}: deletes cascade through more than {MAX_HOPS} tables; \
                         nothing was written",
                        loc.redacted()
                    )));
                }
                let mut next = via.to_vec();
                next.push(Hop {
                    down: rel == name,
                    table,
                    cols,
                    refs,
                });
                outside_refs_via(c, loc, &rel, restored, &next, out)?;
            }
            continue;
        }
        let on_delete = match del.as_str() {
            "c" => Some("delete (ON DELETE CASCADE)"),
            "n" => Some("set to NULL (ON DELETE SET NULL)"),
            "d" => Some("set to their default (ON DELETE SET DEFAULT)"),
            _ => None,
        };
        // (ON UPDATE CASCADE keeps the rows referring to the row: they
        // follow it, as the table's definition asks. Through a cascade of
        // deletes only the delete reaches a table.)
        let on_update = match upd.as_str() {
            "n" if via.is_empty() => Some("set to NULL (ON UPDATE SET NULL)"),
            "d" if via.is_empty() => Some("set to their default (ON UPDATE SET DEFAULT)"),
            _ => None,
        };
        if on_delete.is_none() && on_update.is_none() {
            continue;
        }
        out.push(OutsideRef {
            table,
            cols,
            refs,
            via: via.to_vec(),
            on_delete,
            on_update,
        });
    }
    Ok(())
}

/// A row statement kept for later: the row's key, what it does, the
/// statement and its parameters, and how to take the row out and put it
/// back instead (an update).
type PendingRow = (
    Vec<u8>,
    RowOp,
    String,
    Vec<Option<String>>,
    Option<Reinsert>,
);

impl<'a> RowStatements<'a> {
    fn new(c: &mut Client, loc: &PgLocation, name: &'a str, t: &'a TableData) -> Result<Self> {
        let self_ref: bool = c
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k \
                 JOIN pg_catalog.pg_class r ON r.oid = k.conrelid \
                 JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace \
                 WHERE n.nspname = $1 AND r.relname = $2 AND k.contype = 'f' \
                   AND k.confrelid = k.conrelid AND NOT k.condeferrable)",
                &[&loc.schema, &name],
            )
            .map_err(|e| loc.error(e))?
            .get(0);
        let row = c
            .query_one(
                &format!(
                    "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_index i \
                       LEFT JOIN pg_catalog.pg_constraint k ON k.conindid = i.indexrelid \
                         AND k.conrelid = i.indrelid \
                       WHERE i.indrelid IN {TABLE_TREE} AND i.indisunique \
                         AND NOT i.indisprimary AND NOT coalesce(k.condeferrable, false)) \
                     OR EXISTS (SELECT 1 FROM pg_catalog.pg_constraint x \
                       WHERE x.conrelid IN {TABLE_TREE} AND x.contype = 'x' \
                         AND NOT x.condeferrable), \
                     EXISTS (SELECT 1 FROM pg_catalog.pg_constraint f \
                       WHERE f.contype = 'f' \
                         AND (f.confdeltype IN ('c', 'n', 'd') OR f.confupdtype IN ('c', 'n', 'd')) \
                         AND (f.confrelid IN {TABLE_TREE} \
                           OR f.confrelid IN (SELECT a.relid FROM pg_catalog.pg_class r \
                             JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace, \
                             pg_catalog.pg_partition_ancestors(r.oid) a \
                             WHERE n.nspname = $1 AND r.relname = $2))) \
                     OR EXISTS (SELECT 1 FROM pg_catalog.pg_trigger g \
                       WHERE g.tgrelid IN {TABLE_TREE} AND NOT g.tgisinternal \
                         AND g.tgenabled <> 'D' AND (g.tgtype & 12) <> 0) \
                     OR EXISTS (SELECT 1 FROM pg_catalog.pg_rewrite w \
                       WHERE w.ev_class IN {TABLE_TREE} AND w.rulename <> '_RETURN' \
                         AND w.ev_enabled <> 'D'), \
                     EXISTS (SELECT 1 FROM pg_catalog.pg_constraint f \
                       WHERE f.contype = 'f' AND f.conrelid IN {TABLE_TREE} \
                         AND (f.confdeltype IN ('c', 'n', 'd') OR f.confupdtype IN ('c', 'n', 'd'))), \
                     NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger g \
                       WHERE g.tgrelid IN {TABLE_TREE} AND NOT g.tgisinternal \
                         AND g.tgenabled <> 'D' AND (g.tgtype & 4) <> 0) \
                     AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_rewrite w \
                       WHERE w.ev_class IN {TABLE_TREE} AND w.rulename <> '_RETURN' \
                         AND w.ev_enabled <> 'D')"
                ),
                &[&loc.schema, &name],
            )
            .map_err(|e| loc.error(e))?;
        Ok(RowStatements {
            name,
            t,
            classes: column_classes(t),
            self_ref,
            unique: row.get(0),
            delete_acts: row.get(1),
            referring_acts: row.get(2),
            outside: Vec::new(),
            pending: Vec::new(),
            prepared: std::collections::HashMap::new(),
            copy_ok: row.get(3),
            copy_sql: copy_in_sql(name, t),
            inserts: Vec::new(),
            insert_rows: 0,
            src: None,
            insert_sql: String::new(),
            insert_bytes: 0,
            copy_buf: Vec::new(),
            copy_failed: None,
            together: !row.get::<_, bool>(2),
            queue: Vec::new(),
        })
    }

    /// Inserts row `key` (its values `vals`) by `sql`: sent by the `COPY`
    /// under way, or one started for it, when it may (see
    /// [`Self::flush_copy`]), after the statements kept before it; else
    /// one statement. The server reads a `COPY`'s rows as they come, while
    /// the next are read from the store.
    fn insert(
        &mut self,
        c: &mut Client,
        loc: &PgLocation,
        (key, row): (&[u8], &[u8]),
        sql: &str,
        vals: Vec<Value>,
        rep: &mut DbRestoreReport,
    ) -> Result<()> {
        if !(self.copy_ok && (self.insert_rows == 0 || self.insert_sql == sql)) {
            let tx = self.texts(&vals)?;
            return self.run(c, loc, key, RowOp::Insert, sql, tx, None, rep);
        }
        // (About the bytes its text forms take: a blob's hex twice its own.)
        let bytes = key.len()
            + vals
                .iter()
                .map(|v| match v {
                    Value::Text(t) => t.len(),
                    Value::Blob(b) => 2 * b.len() + 2,
                    _ => 8,
                })
                .sum::<usize>();
        // The row as COPY reads it (an error before anything is sent).
        push_copy_line(&mut self.copy_buf, self.t, &self.classes, &vals)?;
        if self.insert_rows == 0 {
            // (The statements kept go first; then the COPY starts, under a
            // savepoint that undoes it should it fail.)
            self.send(c, loc, rep)?;
            self.insert_sql = sql.to_string();
            self.copy_failed = None;
            c.batch_execute("SAVEPOINT sp_sync_copy")
                .map_err(|e| loc.error(e))?;
            if let Err(e) = c.copy_start(&self.copy_sql) {
                self.copy_failed = Some(e.to_string());
            }
        }
        self.insert_bytes += bytes;
        crate::codec::put_varint(&mut self.inserts, key.len() as u64);
        self.inserts.extend_from_slice(key);
        crate::codec::put_varint(&mut self.inserts, row.len() as u64);
        self.inserts.extend_from_slice(row);
        self.insert_rows += 1;
        if self.copy_buf.len() >= COPY_SEND {
            self.copy_send(c);
        }
        if self.insert_rows >= COPY_ROWS || self.insert_bytes >= COPY_BYTES {
            self.flush_copy(c, loc, rep)?;
        }
        Ok(())
    }

    /// Sends the lines made to the `COPY` under way (or drops them, when
    /// it failed: a send's error ends the copy, and its end reports it).
    fn copy_send(&mut self, c: &mut Client) {
        if self.copy_failed.is_none()
            && let Err(e) = c.copy_send(&self.copy_buf)
        {
            c.copy_abort();
            self.copy_failed = Some(e.to_string());
        }
        self.copy_buf.clear();
    }

    /// A row's values as statement parameters (their text forms).
    fn texts(&self, vals: &[Value]) -> Result<Vec<Option<String>>> {
        self.classes
            .iter()
            .zip(vals)
            .enumerate()
            .map(|(i, (class, v))| {
                class
                    .text(v)
                    .map(|o| o.map(|b| String::from_utf8_lossy(&b).into_owned()))
                    .map_err(|e| column_error(self.t, i, e))
            })
            .collect()
    }

    /// Sends what waits: the inserts kept for `COPY`, or the statements
    /// kept to go together (never both: one kind is sent before the other
    /// is kept).
    fn flush(&mut self, c: &mut Client, loc: &PgLocation, rep: &mut DbRestoreReport) -> Result<()> {
        self.flush_copy(c, loc, rep)?;
        self.send(c, loc, rep)
    }

    /// Sends the statements kept (see [`Self::run`]) back to back, in one
    /// round trip, under one savepoint where a statement may break the
    /// table's own foreign key or a unique index. When all went through,
    /// each is counted as it would have been alone. When one failed, the
    /// group is undone; the statements before it go together again, it
    /// runs alone (what breaks a key waits for a later round, an error
    /// names its row), and the statements after it go together again. So
    /// a table with a few rows out of order costs a round trip and a
    /// savepoint per such row, not one per row after the first.
    /// Without a savepoint, a failure is the restore's.
    fn send(&mut self, c: &mut Client, loc: &PgLocation, rep: &mut DbRestoreReport) -> Result<()> {
        if self.queue.is_empty() {
            return Ok(());
        }
        enum Work {
            Together(Vec<PendingRow>),
            Alone(PendingRow),
        }
        let guarded = self.self_ref || self.unique;
        let err = |e| loc.error(e);
        // In order; each failure takes one statement out of a group, so
        // this ends. The most statements in a group halves at each failure
        // and doubles at each group that goes through: where many rows are
        // out of order, statements soon go alone, and a failed group is
        // never sent again whole.
        let mut span = PIPELINE_ROWS;
        let mut work =
            std::collections::VecDeque::from([Work::Together(std::mem::take(&mut self.queue))]);
        while let Some(w) = work.pop_front() {
            let mut rows = match w {
                Work::Alone(row) => {
                    self.run_alone(c, loc, row, rep)?;
                    continue;
                }
                Work::Together(rows) if rows.is_empty() => continue,
                Work::Together(mut rows) => {
                    if rows.len() > span {
                        work.push_front(Work::Together(rows.split_off(span)));
                    }
                    rows
                }
            };
            let mut stmts = Vec::with_capacity(rows.len());
            for (key, _, sql, ..) in &rows {
                let st = self
                    .statement(c, sql)
                    .map_err(|e| self.row_error(loc, key, e))?;
                stmts.push(st);
            }
            let items: Vec<_> = rows
                .iter()
                .zip(&stmts)
                .map(|((_, _, sql, params, _), st)| {
                    let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                        .iter()
                        .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
                        .collect();
                    (st, refs, sql.ends_with(UPSERT_RETURNING))
                })
                .collect();
            if guarded {
                c.batch_execute("SAVEPOINT sp_sync_rows").map_err(err)?;
            }
            let results = c.pipeline(&items);
            drop(items);
            match results.iter().position(Result::is_err) {
                None => {
                    if guarded {
                        c.batch_execute("RELEASE SAVEPOINT sp_sync_rows")
                            .map_err(err)?;
                    }
                    tracing::debug!(
                        "table {}: {} statements sent together",
                        self.name,
                        rows.len()
                    );
                    for ((key, op, sql, params, re), r) in rows.into_iter().zip(results) {
                        let n = match r {
                            Ok(super::pgconn::Done::Rows(rows)) => upsert_count(&rows),
                            Ok(super::pgconn::Done::Count(n)) => n,
                            Err(e) => return Err(self.row_error(loc, &key, e)),
                        };
                        self.settle(c, loc, &key, (op, n), (&sql, &params), re, rep)?;
                    }
                    span = (span * 2).min(PIPELINE_ROWS);
                }
                Some(i) if guarded => {
                    if let Some(Err(e)) = results.get(i) {
                        tracing::debug!(
                            "table {}: statement {} of {} sent together did not go through \
                             ({e}); it runs alone, the others together again",
                            self.name,
                            i + 1,
                            rows.len()
                        );
                    }
                    undo_savepoint(c, "sp_sync_rows").map_err(err)?;
                    span = (span / 2).max(1);
                    let after = rows.split_off(i + 1);
                    let failed = rows.pop();
                    work.push_front(Work::Together(after));
                    if let Some(f) = failed {
                        work.push_front(Work::Alone(f));
                    }
                    work.push_front(Work::Together(rows));
                }
                Some(i) => {
                    let key = &rows[i].0;
                    return match results.into_iter().nth(i) {
                        Some(Err(e)) => Err(self.row_error(loc, key, e)),
                        _ => Err(SyncError::Database(format!(
                            "{}: a statement's result went missing",
                            loc.redacted()
                        ))),
                    };
                }
            }
        }
        Ok(())
    }

    /// The statement for `sql`, prepared once (see `prepared`).
    fn statement(
        &mut self,
        c: &mut Client,
        sql: &str,
    ) -> std::result::Result<tokio_postgres::Statement, tokio_postgres::Error> {
        if let Some(s) = self.prepared.get(sql) {
            return Ok(s.clone());
        }
        let s = c.prepare(sql)?;
        if self.prepared.len() < MAX_PREPARED {
            self.prepared.insert(sql.to_string(), s.clone());
        }
        Ok(s)
    }

    /// Ends the `COPY` under way (see [`Self::insert`]). One that failed,
    /// or that inserted fewer rows than it was given (a trigger kept one
    /// out), is undone, and its rows go one statement each, as any other
    /// row: what breaks a key then waits for a later round, and an error
    /// names its row. The table's later inserts then go one by one too.
    fn flush_copy(
        &mut self,
        c: &mut Client,
        loc: &PgLocation,
        rep: &mut DbRestoreReport,
    ) -> Result<()> {
        if self.insert_rows == 0 {
            return Ok(());
        }
        let held = std::mem::take(&mut self.inserts);
        let rows = std::mem::replace(&mut self.insert_rows, 0);
        self.insert_bytes = 0;
        self.copy_send(c);
        let err = |e| loc.error(e);
        let copied = match self.copy_failed.take() {
            Some(why) => Err(why),
            None => c.copy_end().map_err(|e| e.to_string()),
        };
        match copied {
            Ok(n) if n == rows as u64 => {
                c.batch_execute("RELEASE SAVEPOINT sp_sync_copy")
                    .map_err(err)?;
                tracing::debug!("table {}: {n} inserts by COPY", self.name);
                rep.inserted += n;
                // (Its room is the next COPY's.)
                self.inserts = held;
                self.inserts.clear();
                Ok(())
            }
            other => {
                tracing::debug!(
                    "table {}: COPY of {} inserts did not go through ({}); inserting them one by one",
                    self.name,
                    rows,
                    match &other {
                        Ok(n) => format!("{n} rows inserted"),
                        Err(e) => e.clone(),
                    }
                );
                undo_savepoint(c, "sp_sync_copy").map_err(err)?;
                self.copy_ok = false;
                let sql = std::mem::take(&mut self.insert_sql);
                let src = self.src.ok_or_else(|| {
                    SyncError::Invalid("internal: inserts kept without their store".into())
                })?;
                let mut r = crate::codec::Reader::new(&held);
                while !r.is_empty() {
                    let (key, row) = match (r.bytes(usize::MAX), r.bytes(usize::MAX)) {
                        (Ok(k), Ok(v)) => (k, v),
                        _ => {
                            return Err(SyncError::Invalid(
                                "internal: inserts kept damaged".into(),
                            ));
                        }
                    };
                    let vals = row_values(src, self.t, key, row)?;
                    let tx = self.texts(&vals)?;
                    self.run(c, loc, key, RowOp::Insert, &sql, tx, None, rep)?;
                }
                Ok(())
            }
        }
    }

    /// A statement's error, naming the row.
    fn row_error(&self, loc: &PgLocation, key: &[u8], e: tokio_postgres::Error) -> SyncError {
        match loc.error(e) {
            SyncError::Database(m) => SyncError::Database(format!(
                "{m} (row {})",
                describe(self.name, &self.t.root, key)
            )),
            other => other,
        }
    }

    /// Runs one row's statement (or keeps it for later, see above).
    #[allow(clippy::too_many_arguments)]
    fn run(
        &mut self,
        c: &mut Client,
        loc: &PgLocation,
        key: &[u8],
        op: RowOp,
        sql: &str,
        params: Vec<Option<String>>,
        reinsert: Option<Reinsert>,
        rep: &mut DbRestoreReport,
    ) -> Result<()> {
        // The inserts kept for COPY go first, so that the server runs
        // every statement in order.
        self.flush_copy(c, loc, rep)?;
        if self.together {
            self.queue
                .push((key.to_vec(), op, sql.to_string(), params, reinsert));
            if self.queue.len() >= PIPELINE_ROWS {
                self.send(c, loc, rep)?;
            }
            return Ok(());
        }
        self.send(c, loc, rep)?;
        let row = (key.to_vec(), op, sql.to_string(), params, reinsert);
        self.run_alone(c, loc, row, rep)
    }

    /// Runs one row's statement now, alone (under a savepoint where it may
    /// break the table's own key or a unique index: then it is kept for a
    /// later round).
    fn run_alone(
        &mut self,
        c: &mut Client,
        loc: &PgLocation,
        row: PendingRow,
        rep: &mut DbRestoreReport,
    ) -> Result<()> {
        let (key, op, sql, params, reinsert) = row;
        match self.try_once(c, &sql, &params, !(self.self_ref || self.unique)) {
            Ok(Some(n)) => self.settle(c, loc, &key, (op, n), (&sql, &params), reinsert, rep),
            Ok(None) => {
                self.pending.push((key, op, sql, params, reinsert));
                Ok(())
            }
            Err(e) => Err(self.row_error(loc, &key, e)),
        }
    }

    /// Counts a statement that ran (see `account`). An update that found
    /// its row gone, on a table whose rows go with the rows they refer to,
    /// lost it to this restore's own delete of such a row (the table is
    /// locked against other writers): the row is inserted again, whole.
    #[allow(clippy::too_many_arguments)]
    fn settle(
        &mut self,
        c: &mut Client,
        loc: &PgLocation,
        key: &[u8],
        (op, n): (RowOp, u64),
        run: (&str, &[Option<String>]),
        reinsert: Option<Reinsert>,
        rep: &mut DbRestoreReport,
    ) -> Result<()> {
        if let (RowOp::Update, 0, true, Some(re)) = (op, n, self.referring_acts, reinsert) {
            return match self.try_once(c, &re.insert, &re.row, !(self.self_ref || self.unique)) {
                Ok(Some(n)) => self.account(c, loc, key, (RowOp::Reinsert, n), run, rep),
                Ok(None) => {
                    self.pending
                        .push((key.to_vec(), RowOp::Reinsert, re.insert, re.row, None));
                    Ok(())
                }
                Err(e) => Err(self.row_error(loc, key, e)),
            };
        }
        self.account(c, loc, key, (op, n), run, rep)
    }

    /// Runs the statement; `None` when it broke the table's own foreign
    /// key or a unique index (under a savepoint, rolled back).
    fn try_once(
        &mut self,
        c: &mut Client,
        sql: &str,
        params: &[Option<String>],
        plain: bool,
    ) -> std::result::Result<Option<u64>, tokio_postgres::Error> {
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let stmt = self.statement(c, sql)?;
        let run = |c: &mut Client| -> std::result::Result<u64, tokio_postgres::Error> {
            if sql.ends_with(UPSERT_RETURNING) {
                Ok(upsert_count(&c.query_prepared(&stmt, &refs)?))
            } else {
                c.execute_prepared(&stmt, &refs)
            }
        };
        if plain {
            return run(c).map(Some);
        }
        c.batch_execute("SAVEPOINT sp_sync_row")?;
        match run(c) {
            Ok(n) => {
                c.batch_execute("RELEASE SAVEPOINT sp_sync_row")?;
                Ok(Some(n))
            }
            Err(e)
                if e.code() == Some(&tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION)
                    || e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
                    || e.code() == Some(&tokio_postgres::error::SqlState::EXCLUSION_VIOLATION) =>
            {
                undo_savepoint(c, "sp_sync_row")?;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Counts what statement `run` (`op`, `n` rows) did, or fails the
    /// restore when it did not do what it was for.
    fn account(
        &self,
        c: &mut Client,
        loc: &PgLocation,
        key: &[u8],
        (op, n): (RowOp, u64),
        run: (&str, &[Option<String>]),
        rep: &mut DbRestoreReport,
    ) -> Result<()> {
        match op {
            // A delete that removed nothing: the row went with another
            // (a foreign key's ON DELETE CASCADE), or something kept it (a
            // row-level security policy, a trigger the restore could not
            // pause). The second leaves the table unlike the snapshot.
            RowOp::Delete if n == 0 => {
                let exists = run.0.replacen("DELETE FROM ", "SELECT 1 FROM ", 1);
                let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = run
                    .1
                    .iter()
                    .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
                    .collect();
                let there = c
                    .query(exists.as_str(), &refs)
                    .map_err(|e| self.row_error(loc, key, e))?;
                if there.is_empty() {
                    Ok(())
                } else {
                    Err(SyncError::Database(format!(
                        "{}: row {} stays after its delete (a row-level security policy or a trigger keeps it); nothing was written",
                        loc.redacted(),
                        describe(self.name, &self.t.root, key)
                    )))
                }
            }
            RowOp::Insert | RowOp::Reinsert | RowOp::Upsert if n == 0 => {
                Err(SyncError::Database(format!(
                    "{}: row {} was not inserted (a trigger or a policy kept it out); nothing was written",
                    loc.redacted(),
                    describe(self.name, &self.t.root, key)
                )))
            }
            // The key matched when the plan was made, and the table is
            // locked against writers since.
            RowOp::Update if n != 1 => Err(SyncError::Database(format!(
                "{}: row {} is no longer in the table; nothing was written",
                loc.redacted(),
                describe(self.name, &self.t.root, key)
            ))),
            // (A table keyed by all its columns holding a row twice: the
            // snapshot may have it once.)
            RowOp::Delete if n > 1 => Err(SyncError::Database(format!(
                "the database holds row {} more than once; nothing was written",
                describe(self.name, &self.t.root, key)
            ))),
            RowOp::Update => {
                rep.updated += 1;
                Ok(())
            }
            RowOp::Reinsert if n != 1 => Err(SyncError::Database(format!(
                "{}: row {} could not be put back; nothing was written",
                loc.redacted(),
                describe(self.name, &self.t.root, key)
            ))),
            RowOp::Reinsert => {
                rep.updated += 1;
                Ok(())
            }
            RowOp::Insert => {
                rep.inserted += n;
                Ok(())
            }
            RowOp::Upsert => {
                if n == 2 {
                    rep.updated += 1;
                } else {
                    rep.inserted += 1;
                }
                Ok(())
            }
            RowOp::Delete => {
                rep.deleted += n;
                Ok(())
            }
        }
    }

    /// Runs the rows kept for later, round after round: after all of the
    /// table's deletes, updates and inserts (a parent's delete may wait for
    /// the update that moves its child away), before the next table's
    /// updates and inserts. Not `last`, rows that cannot go in yet stay
    /// kept (a row of another table may have to move first); `last`, they
    /// fail the restore. Rounds alternate direction,
    /// so that a chain of rows each taking the next one's value (positions
    /// shifted by one) takes two rounds, not one per row.
    fn finish(
        &mut self,
        c: &mut Client,
        loc: &PgLocation,
        rep: &mut DbRestoreReport,
        last: bool,
    ) -> Result<()> {
        self.flush(c, loc, rep)?;
        let mut backwards = false;
        while !self.pending.is_empty() {
            let before = self.pending.len();
            let mut round = std::mem::take(&mut self.pending);
            if backwards {
                round.reverse();
            }
            let mut left = Vec::new();
            for (key, op, sql, params, re) in round {
                match self.try_once(c, &sql, &params, false) {
                    Ok(Some(n)) => self.settle(c, loc, &key, (op, n), (&sql, &params), re, rep)?,
                    Ok(None) => left.push((key, op, sql, params, re)),
                    Err(e) => return Err(self.row_error(loc, &key, e)),
                }
            }
            if backwards {
                left.reverse();
            }
            backwards = !backwards;
            if left.len() == before {
                // No progress: cycles. They are broken by taking the
                // updated rows out, to be put back once the others have
                // run: every one whose delete no foreign key stops, at
                // once (one a round made a round of tries per cycle, each
                // trying every row left: the square of the rows).
                let mut broke = false;
                if self.unique && !self.delete_acts {
                    for p in left.iter_mut() {
                        let Some(re) = p.4.take() else {
                            continue;
                        };
                        match self.try_once(c, &re.delete, &re.key, false) {
                            Ok(Some(1)) => {
                                (p.1, p.2, p.3) = (RowOp::Reinsert, re.insert, re.row);
                                broke = true;
                            }
                            Ok(Some(_)) => {
                                return Err(SyncError::Database(format!(
                                    "{}: row {} is no longer in the table; nothing was written",
                                    loc.redacted(),
                                    describe(self.name, &self.t.root, &p.0)
                                )));
                            }
                            // A foreign key that cannot wait refers to it:
                            // another row, and this one in a later round.
                            Ok(None) => p.4 = Some(re),
                            Err(e) => return Err(self.row_error(loc, &p.0, e)),
                        }
                    }
                }
                if broke {
                    self.pending = left;
                    continue;
                }
                if !last {
                    self.pending = left;
                    return Ok(());
                }
                // The first one's own error.
                let (key, _, sql, params, _) = &left[0];
                let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                    .iter()
                    .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
                    .collect();
                return match c.execute(sql.as_str(), &refs) {
                    Err(e) => Err(self.row_error(loc, key, e)),
                    Ok(_) => Err(SyncError::Database(format!(
                        "{}: table {}: rows refer to each other in a cycle; nothing was written",
                        loc.redacted(),
                        self.name
                    ))),
                };
            }
            self.pending = left;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy;

    /// Every bulk catalog query asks for the tables of `$1` (none for one
    /// table only), and there are as many as a table's share holds. (That
    /// each gives its row's table oid last, as `int8`, every snapshot of
    /// tests/it/pg.rs checks: `Catalog::ask` groups by it.)
    #[test]
    fn every_bulk_catalog_query_asks_for_all_the_tables() {
        let own = Catalog::queries();
        assert_eq!(own.len(), Catalog::OWN);
        for q in own
            .iter()
            .map(String::as_str)
            .chain([FactsAsk::TYPES, FactsAsk::IDENT])
        {
            assert!(q.contains(" = ANY($1::int8[]::oid[])"), "{q}");
            assert!(!q.contains("$1::int8::oid"), "{q}");
        }
    }

    /// The schema comes off the table only, never out of an index's name
    /// that holds ` ON public.` (found by audit round 7).
    #[test]
    fn an_index_definition_loses_its_tables_schema_only() {
        let u = |def: &str, name: &str| unqualify_index(def, name, "public");
        assert_eq!(
            u("CREATE INDEX t_b ON public.t USING btree (b)", "t_b").as_deref(),
            Some("CREATE INDEX t_b ON t USING btree (b)")
        );
        assert_eq!(
            u(
                "CREATE UNIQUE INDEX \"a ON public.b\" ON ONLY public.\"T\" USING btree (x)",
                "\"a ON public.b\""
            )
            .as_deref(),
            Some("CREATE UNIQUE INDEX \"a ON public.b\" ON ONLY \"T\" USING btree (x)")
        );
        assert_eq!(u("CREATE INDEX i ON other.t USING btree (b)", "i"), None);
    }

    #[test]
    fn urls_parse_and_redact() {
        let l = PgLocation::parse("postgres://ann:s%40cret@db.example:6543/app?schema=x").unwrap();
        assert_eq!(l.user.as_deref(), Some("ann"));
        assert_eq!(l.password.as_deref(), Some("s@cret"));
        assert_eq!(l.port, Some(6543));
        assert_eq!(l.dbname.as_deref(), Some("app"));
        assert_eq!(l.schema, "x");
        assert_eq!(l.redacted(), "postgres://ann@db.example:6543/app?schema=x");
        assert!(!format!("{l:?}").contains("cret"));
        let s = PgLocation::parse("postgresql://u@/d?host=/tmp/sock&port=5433").unwrap();
        assert_eq!(s.host.as_deref(), Some("/tmp/sock"));
        assert_eq!(s.redacted(), "postgres://u@:5433/d?host=/tmp/sock");
        assert!(PgLocation::parse("postgres://u@h/d?bogus=1").is_err());
        // (A value it does not know was taken for false; audit 26.)
        for (v, want) in [("true", true), ("1", true), ("false", false), ("0", false)] {
            let l = PgLocation::parse(&format!("postgres://u@h/d?key_by_all_columns={v}"));
            assert_eq!(l.unwrap().key_by_all_columns, want);
        }
        for v in ["yes", "maybe", ""] {
            let e = PgLocation::parse(&format!("postgres://u@h/d?key_by_all_columns={v}"));
            assert!(
                e.unwrap_err()
                    .to_string()
                    .contains("key_by_all_columns must be")
            );
        }
        assert!(PgLocation::parse("postgres://u@h:x/d").is_err());
        let e = PgLocation::parse("postgres://u:pw@h:x/d")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("pw"));
    }

    #[test]
    fn a_row_version_is_older_than_a_snapshot_only_below_its_xmin() {
        // Epoch 0: plain comparisons below the snapshot's xmax.
        assert!(xid_before(99, 100, 150));
        assert!(!xid_before(100, 100, 150));
        assert!(!xid_before(149, 100, 150));
        // An id at `now` is taken for new; one above it is from the epoch
        // before, or (in the first) before the first transaction.
        assert!(!xid_before(150, 100, 150));
        assert!(xid_before(u32::MAX, 100, 150));
        assert!(xid_before(151, 100, 150));
        // Epoch 3: raw ids are placed in the 2^32 ids below `now`.
        let e = 3u64 << 32;
        assert!(xid_before(10, e + 20, e + 50));
        assert!(!xid_before(30, e + 20, e + 50));
        assert!(xid_before(u32::MAX - 5, e + 20, e + 50));
        assert!(!xid_before(u32::MAX - 5, e - 10, e + 50));
        assert!(xid_before(u32::MAX - 5, e - 3, e + 50));
        // Bootstrap and frozen ids are older than any snapshot.
        assert!(xid_before(1, 3, 4));
        assert!(xid_before(2, 3, 4));
    }

    /// The server's `age(xid)`: back from `stable` (the next transaction
    /// id when the transaction first asked, at or after any snapshot's
    /// `xmax`), as a signed 32-bit difference; the special ids below 3
    /// are as old as can be.
    fn server_age(raw: u32, stable: u64) -> i32 {
        if raw < 3 {
            i32::MAX
        } else {
            (stable as u32).wrapping_sub(raw) as i32
        }
    }

    proptest::proptest! {
        /// The range of ages a re-snapshot reads is exactly the row
        /// versions not older than the cache's snapshot, for any raw
        /// `xmin` (near the bound, the snapshot, the wrap, or anywhere).
        #[test]
        fn the_changed_ages_are_the_versions_not_older_than_the_cache(
            now in 3u64..(5u64 << 32),
            width in proptest::prop_oneof![0u64..64, 0u64..(1 << 31)],
            later in proptest::prop_oneof![0u64..8, 0u64..(1 << 30)],
            raws in proptest::collection::vec(proptest::prelude::any::<u32>(), 16),
            near in proptest::collection::vec(-40i64..40, 16),
        ) {
            let bound = now.saturating_sub(width);
            let stable = now + later;
            let offset = server_age(now as u32, stable);
            let Some((lo, hi)) = changed_ages(offset, bound, now) else {
                // Only when the range would reach the wrap, or `now` is
                // a special id.
                proptest::prop_assert!(
                    (now as u32) < 3 || later + width >= (1 << 31) - 1,
                    "{} {} {}", now, width, later
                );
                return Ok(());
            };
            let mut all = raws;
            for d in near {
                for base in [bound, now, stable] {
                    all.push((base as i64 + d) as u32);
                }
            }
            all.extend([0, 1, 2, 3, u32::MAX]);
            for raw in all {
                let age = i64::from(server_age(raw, stable));
                proptest::prop_assert_eq!(
                    (lo..=hi).contains(&age),
                    !xid_before(raw, bound, now),
                    "raw {} bound {} now {} stable {}", raw, bound, now, stable
                );
            }
        }
    }

    #[test]
    fn pgpass_lines() {
        let want = ["h".to_string(), "5432".into(), "d".into(), "u".into()];
        assert_eq!(pgpass_match("h:5432:d:u:pw", &want).as_deref(), Some("pw"));
        assert_eq!(pgpass_match("*:*:*:u:a\\:b", &want).as_deref(), Some("a:b"));
        assert_eq!(pgpass_match("x:5432:d:u:pw", &want), None);
    }

    #[test]
    fn copy_text_escapes_round_trip() {
        let mut out = Vec::new();
        let v = b"a\tb\nc\\d\re\x01";
        escape_copy(Some(v), &mut out);
        let mut back = Vec::new();
        unescape_copy(&out, &mut back);
        assert_eq!(back, v);
        unescape_copy(b"\\101\\x42\\v", &mut back);
        assert_eq!(back, b"AB\x0b");
    }

    /// COPY's unescaping one byte at a time, as the format describes it.
    fn unescape_by_bytes(f: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < f.len() {
            if f[i] != b'\\' || i + 1 == f.len() {
                out.push(f[i]);
                i += 1;
                continue;
            }
            let n = f[i + 1];
            i += 2;
            let digits = |i: &mut usize, radix: u32, first: u32| {
                let mut v = first;
                let mut k = 0;
                while k < 2 && *i < f.len() && (f[*i] as char).is_digit(radix) {
                    v = v * radix + (f[*i] as char).to_digit(radix).unwrap();
                    *i += 1;
                    k += 1;
                }
                v as u8
            };
            out.push(match n {
                b'b' => 8,
                b'f' => 12,
                b'n' => b'\n',
                b'r' => b'\r',
                b't' => b'\t',
                b'v' => 11,
                b'0'..=b'7' => digits(&mut i, 8, u32::from(n - b'0')),
                b'x' => digits(&mut i, 16, 0),
                other => other,
            });
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn unescaping_matches_the_byte_by_byte_reading(
            f in proptest::collection::vec(
                proptest::sample::select(b"\\\\\\x0179abfnNrtv\t\n-".to_vec()), 0..40)
        ) {
            let mut out = Vec::new();
            unescape_copy(&f, &mut out);
            proptest::prop_assert_eq!(out, unescape_by_bytes(&f));
        }

        #[test]
        fn escaped_bytes_unescape_to_themselves(
            v in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)
        ) {
            let mut esc = Vec::new();
            escape_copy(Some(&v), &mut esc);
            let mut back = Vec::new();
            unescape_copy(&esc, &mut back);
            proptest::prop_assert_eq!(back, v);
        }
    }

    #[test]
    fn integers_read_as_postgresql_prints_them() {
        for i in [0, 1, -1, 42, i64::MAX, i64::MIN, i64::MIN + 1] {
            assert_eq!(parse_int(i.to_string().as_bytes()), Some(i));
        }
        for bad in [
            "",
            "-",
            "+1",
            "1a",
            " 1",
            "9223372036854775808",
            "-9223372036854775809",
            "99999999999999999999",
            "--1",
        ] {
            assert_eq!(parse_int(bad.as_bytes()), None, "{bad:?}");
        }
    }

    fn table_of(types: &[&str]) -> TableData {
        TableData {
            flags: FLAG_WITHOUT_ROWID,
            columns: types
                .iter()
                .enumerate()
                .map(|(i, t)| Column {
                    name: format!("c{i}"),
                    decl_type: (*t).to_string(),
                })
                .collect(),
            key: vec![0],
            sequence: None,
            rows: 0,
            root: ObjectId::default(),
        }
    }

    proptest::proptest! {
        /// A row printed as COPY prints it (the text forms, escaped, tab
        /// separated, a stamp after) parses back to its values.
        #[test]
        fn a_copy_line_parses_to_its_values(
            id in proptest::prelude::any::<i64>(),
            blob in proptest::option::of(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)),
            text in proptest::option::of("[a-z\t\n\\\\é ]{0,20}"),
            real in proptest::option::of(proptest::num::f64::ANY.prop_filter("NaN", |r| !r.is_nan())),
            flag in proptest::option::of(proptest::prelude::any::<bool>()),
        ) {
            let t = table_of(&["bigint", "bytea", "text", "double precision", "boolean"]);
            let vals = vec![
                Value::Integer(id),
                blob.map_or(Value::Null, Value::Blob),
                text.map_or(Value::Null, |s| Value::Text(s.into_bytes())),
                real.map_or(Value::Null, Value::Real),
                flag.map_or(Value::Null, |b| Value::Integer(i64::from(b))),
            ];
            let mut line = Vec::new();
            for (i, (c, v)) in t.columns.iter().zip(&vals).enumerate() {
                if i > 0 {
                    line.push(b'\t');
                }
                escape_copy(PgClass::of(&c.decl_type).text(v).unwrap().as_deref(), &mut line);
            }
            line.extend_from_slice(b"\t123\t(0,1)");
            let mut p = RowParser::new(&t);
            let rest = p.fields(&line, false).unwrap();
            proptest::prop_assert_eq!(rest, b"123\t(0,1)");
            let got: Vec<Value> = p.fields.iter().map(|f| Value::from_ref(f.value(&p.arena))).collect();
            proptest::prop_assert_eq!(got, vals);
            let first_tab = line.iter().position(|&b| b == b'\t').unwrap();
            let rest = p.fields(&line, true).unwrap();
            proptest::prop_assert_eq!(rest, &line[first_tab + 1..]);
            proptest::prop_assert!(matches!(p.fields[..], [Field::Int(i)] if i == id));
        }
    }

    proptest::proptest! {
        /// A value goes into a `COPY` line as its escaped text form, made
        /// directly or by way of `text`: the same bytes, or the same
        /// refusal, for every class and every kind of value.
        #[test]
        fn copy_fields_are_the_escaped_text_forms(
            class in proptest::sample::select(vec![
                PgClass::Int, PgClass::Float4, PgClass::Float8, PgClass::Bool, PgClass::Bytea,
                PgClass::Text, PgClass::Numeric, PgClass::Timestamptz, PgClass::Uuid, PgClass::Json,
                PgClass::Other,
            ]),
            v in proptest::prop_oneof![
                proptest::strategy::Just(Value::Null),
                proptest::prelude::any::<i64>().prop_map(Value::Integer),
                (0i64..2).prop_map(Value::Integer),
                proptest::prelude::any::<u64>().prop_map(|b| Value::Real(f64::from_bits(b))),
                "[a-z\t\n\r\\\\é]{0,12}".prop_map(|t| Value::Text(t.into_bytes())),
                proptest::collection::vec(proptest::prelude::any::<u8>(), 0..12).prop_map(Value::Blob),
            ],
        ) {
            let mut direct = b"x\t".to_vec();
            let got = class.copy_text_into(&v, &mut direct).map(|()| direct);
            let want = class.text(&v).map(|t| {
                let mut line = b"x\t".to_vec();
                escape_copy(t.as_deref(), &mut line);
                line
            });
            proptest::prop_assert_eq!(got, want);
        }
    }

    proptest::proptest! {
        /// A binary `COPY` field reads as the same value its text form
        /// does (bit for bit: any NaN is the one NaN), so a table read
        /// either way gives the same rows.
        #[test]
        fn binary_and_text_forms_read_alike(
            i in proptest::prelude::any::<i64>(),
            f4 in proptest::prelude::any::<u32>(),
            f8 in proptest::prelude::any::<u64>(),
            bo in proptest::prelude::any::<bool>(),
            by in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20),
            tx in "[a-z\t\\\\é]{0,10}",
            u in proptest::prelude::any::<[u8; 16]>(),
        ) {
            let f4 = f32::from_bits(f4);
            let f8 = f64::from_bits(f8);
            let cases: Vec<(PgClass, Vec<u8>, Value)> = vec![
                (PgClass::Int, (i as i16).to_be_bytes().to_vec(), Value::Integer(i64::from(i as i16))),
                (PgClass::Int, (i as i32).to_be_bytes().to_vec(), Value::Integer(i64::from(i as i32))),
                (PgClass::Int, i.to_be_bytes().to_vec(), Value::Integer(i)),
                (PgClass::Float4, f4.to_be_bytes().to_vec(), Value::Real(f64::from(f4))),
                (PgClass::Float8, f8.to_be_bytes().to_vec(), Value::Real(f8)),
                (PgClass::Bool, vec![u8::from(bo)], Value::Integer(i64::from(bo))),
                (PgClass::Bytea, by.clone(), Value::Blob(by)),
                (PgClass::Text, tx.clone().into_bytes(), Value::Text(tx.into_bytes())),
            ];
            let mut arena = Vec::new();
            for (class, binary, v) in cases {
                let mut line = Vec::new();
                escape_copy(class.text(&v).unwrap().as_deref(), &mut line);
                let mut a = Vec::new();
                unescape_copy_onto(&line, &mut a);
                let text_value = class.field(&mut a, 0).unwrap();
                let text_value = Value::from_ref(text_value.value(&a));
                arena.clear();
                let bin = class.binary_field(&binary, &mut arena).unwrap();
                let bin_value = Value::from_ref(bin.value(&arena));
                match (&text_value, &bin_value) {
                    (Value::Real(x), Value::Real(y)) => proptest::prop_assert_eq!(x.to_bits(), y.to_bits()),
                    _ => proptest::prop_assert_eq!(&text_value, &bin_value),
                }
            }
            // A uuid: its text form, lower case, as uuid_out prints it.
            arena.clear();
            let bin = PgClass::Uuid.binary_field(&u, &mut arena).unwrap();
            let h = crate::id::hex(&u);
            let want = format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..]);
            proptest::prop_assert_eq!(Value::from_ref(bin.value(&arena)), Value::Text(want.into_bytes()));
        }
    }

    #[test]
    fn malformed_fields_are_refused() {
        let t = table_of(&["bigint", "bytea"]);
        let mut p = RowParser::new(&t);
        // In COPY text a bytea's backslash is doubled: `\\x00ff`.
        for bad in [
            &b"1\t\\\\x0"[..],
            b"1\t\\\\xzz",
            b"1\tab",
            b"x\t\\\\x00",
            b"1",
        ] {
            assert!(
                p.fields(bad, false).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        p.fields(b"1\t\\\\x00ff", false).unwrap();
        assert!(matches!(p.fields[..], [Field::Int(1), Field::Blob(..)]));
        assert_eq!(
            Value::from_ref(p.fields[1].value(&p.arena)),
            Value::Blob(vec![0, 255])
        );
    }

    #[test]
    fn floats_print_exactly() {
        for f in [0.1f64, -0.0, 5e-324, 1e308, f64::MAX, 1.0 / 3.0] {
            let t = PgClass::Float8.text(&Value::Real(f)).unwrap().unwrap();
            let back = PgClass::Float8.parse(&t).unwrap();
            assert_eq!(back, Value::Real(f));
        }
        for f in [0.1f32, -0.0, f32::MIN_POSITIVE, f32::MAX, 1.0 / 3.0] {
            let t = PgClass::Float4
                .text(&Value::Real(f64::from(f)))
                .unwrap()
                .unwrap();
            assert_eq!(
                PgClass::Float4.parse(&t).unwrap(),
                Value::Real(f64::from(f))
            );
        }
        assert_eq!(
            PgClass::Float8.parse(b"-Infinity").unwrap(),
            Value::Real(f64::NEG_INFINITY)
        );
        assert_eq!(
            PgClass::Float8
                .text(&Value::Real(f64::INFINITY))
                .unwrap()
                .unwrap(),
            b"Infinity"
        );
        let nan = PgClass::Float8.parse(b"NaN").unwrap();
        assert_eq!(PgClass::Float8.text(&nan).unwrap().unwrap(), b"NaN");
    }

    #[test]
    fn the_spec_row_example() {
        // store-format.md §3.7: (7, true, 'a', 1.50::numeric).
        let classes = [PgClass::Int, PgClass::Bool, PgClass::Text, PgClass::Other];
        let fields: [&[u8]; 4] = [b"7", b"t", b"a", b"1.50"];
        let cells: Vec<Cell> = classes
            .iter()
            .zip(fields)
            .map(|(c, f)| Cell::Value(c.parse(f).unwrap()))
            .collect();
        assert_eq!(
            crate::object::row::encode_row(&cells),
            [4, 1, 0x0e, 1, 2, 3, 1, b'a', 3, 4, b'1', b'.', b'5', b'0']
        );
    }

    #[test]
    fn classes() {
        assert_eq!(PgClass::of("integer"), PgClass::Int);
        assert_eq!(PgClass::of("integer[]"), PgClass::Other);
        assert_eq!(PgClass::of("character varying(20)"), PgClass::Text);
        assert_eq!(PgClass::of("character(3)"), PgClass::Bpchar);
        assert_eq!(PgClass::of("numeric(10,2)"), PgClass::Numeric);
        assert_eq!(PgClass::of("numeric(10,2)[]"), PgClass::Other);
        assert_eq!(
            PgClass::of("timestamp with time zone"),
            PgClass::Timestamptz
        );
        assert_eq!(
            PgClass::of("timestamp(3) with time zone"),
            PgClass::Timestamptz
        );
        assert_eq!(
            PgClass::of("timestamp(0) without time zone"),
            PgClass::Timestamp
        );
        assert_eq!(PgClass::of("time(6) without time zone"), PgClass::Time);
        assert_eq!(PgClass::of("time with time zone"), PgClass::Other);
        assert_eq!(PgClass::of("date"), PgClass::Date);
        assert_eq!(PgClass::of("interval"), PgClass::Other);
        assert_eq!(PgClass::of("jsonb"), PgClass::Jsonb);
        assert_eq!(PgClass::of("jsonb[]"), PgClass::Other);
    }
}
