//! The library API end to end, against a real `sp-sync serve`:
//!
//! 1. makes a services folder (`WORKDIR/origin`) with two markdown files,
//!    a SQLite database and one collection mapping them;
//! 2. `ToDatabase`: the files become rows;
//! 3. `Push`: the folder and the database go to the server;
//! 4. `Pull` into another folder (`WORKDIR/copy`) and another database;
//! 5. `ToDisk` in the copy records that files and rows agree; a row is
//!    edited in the copy's database and `ToDisk` writes it to its markdown
//!    file.
//!
//! It prints every `SyncResult` as JSON and exits 1 if anything is not as
//! expected. Uses only the public API.
//!
//! ```text
//! sp-sync serve --listen 127.0.0.1:8080 --data /srv/sp --tokens tokens.toml &
//! cargo run --example library -- http://127.0.0.1:8080 acme TOKEN /tmp/work
//! ```
//! (or `SP_SYNC_API_URL`, `SP_SYNC_TENANT`, `SP_SYNC_API_TOKEN`, `SP_SYNC_WORKDIR`).

use std::path::{Path, PathBuf};

use systemprompt_sync::{SyncConfig, SyncDirection, SyncError, SyncResult, SyncService};

/// Where the example finds the server.
pub struct Args {
    /// The server's base URL.
    pub api_url: String,
    /// The tenant.
    pub tenant: String,
    /// Its token.
    pub token: String,
    /// An empty folder to work in.
    pub workdir: PathBuf,
}

const PROJECT: &str = r#"[[collection]]
name = "content"
dir = "services/content"
glob = "*.md"
db = "data/app.db"
table = "content"
key = "slug"
body = "body"
"#;

fn io(what: &'static str, p: &Path) -> impl FnOnce(std::io::Error) -> SyncError {
    let p = p.to_path_buf();
    move |e| SyncError::Io {
        op: what,
        path: p.to_path_buf(),
        source: e,
    }
}

fn write(p: &Path, text: &str) -> Result<(), SyncError> {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).map_err(io("creating", d))?;
    }
    std::fs::write(p, text).map_err(io("writing", p))
}

fn check(ok: bool, what: &str) -> Result<(), SyncError> {
    if ok {
        Ok(())
    } else {
        Err(SyncError::CommandFailed {
            command: "library example".into(),
            status: "check failed".into(),
            output: what.into(),
        })
    }
}

fn db_error(e: rusqlite::Error) -> SyncError {
    SyncError::Database(e.to_string())
}

/// Runs the whole example; returns every result, in order.
pub async fn run(args: &Args) -> Result<Vec<SyncResult>, SyncError> {
    let origin = args.workdir.join("origin");
    let copy = args.workdir.join("copy");
    write(&origin.join("sp-sync.toml"), PROJECT)?;
    write(
        &origin.join("services/content/hello.md"),
        "---\nslug: hello\ntitle: Hello\n---\nHello, world.\n",
    )?;
    write(
        &origin.join("services/content/bye.md"),
        "---\nslug: bye\ntitle: Bye\n---\nSee you.\n",
    )?;
    let origin_db = origin.join("data/app.db");
    std::fs::create_dir_all(origin.join("data")).map_err(io("creating", &origin))?;
    rusqlite::Connection::open(&origin_db)
        .and_then(|c| {
            c.execute_batch(
                "CREATE TABLE content(slug TEXT PRIMARY KEY, title TEXT NOT NULL, body TEXT NOT NULL);",
            )
        })
        .map_err(db_error)?;

    let config = |dir: &Path, direction| {
        SyncConfig::builder(&args.tenant, &args.api_url, &args.token, dir)
            .with_direction(direction)
            .with_database(dir.join("data/app.db").to_string_lossy())
            .with_message("library example")
    };
    let mut results = Vec::new();

    // Files to rows, then both to the server.
    let r = SyncService::new(config(&origin, SyncDirection::ToDatabase).build())
        .sync_local()
        .await?;
    check(
        r.rows_inserted == 2,
        "ToDatabase inserts the two files' rows",
    )?;
    results.push(r);
    let pushed = SyncService::new(config(&origin, SyncDirection::Push).build())
        .sync_all()
        .await?;
    check(pushed.len() == 2, "Push moves the files and the database")?;
    check(
        pushed[1].tables.get("content") == Some(&2),
        "two rows pushed",
    )?;
    results.extend(pushed);

    // Everything back, elsewhere.
    let pulled = SyncService::new(config(&copy, SyncDirection::Pull).build())
        .sync_all()
        .await?;
    check(pulled.len() == 2, "Pull brings the files and the database")?;
    check(pulled[1].rows_inserted == 2, "two rows pulled")?;
    results.extend(pulled);
    for f in [
        "sp-sync.toml",
        "services/content/hello.md",
        "services/content/bye.md",
    ] {
        let a = std::fs::read(origin.join(f)).map_err(io("reading", &origin))?;
        let b = std::fs::read(copy.join(f)).map_err(io("reading", &copy))?;
        check(a == b, "pulled files are the pushed files")?;
    }

    // The first local sync of the copy records where files and rows stand
    // (they agree: nothing to write); then an edit in its database goes to
    // its file.
    let r = SyncService::new(config(&copy, SyncDirection::ToDisk).build())
        .sync_local()
        .await?;
    check(r.files == 0, "files and rows agree after the pull")?;
    results.push(r);
    rusqlite::Connection::open(copy.join("data/app.db"))
        .and_then(|c| {
            c.execute(
                "UPDATE content SET body = 'Hello again.\n' WHERE slug = 'hello'",
                [],
            )
        })
        .map_err(db_error)?;
    let r = SyncService::new(config(&copy, SyncDirection::ToDisk).build())
        .sync_local()
        .await?;
    check(r.files == 1, "ToDisk writes the one edited file")?;
    let text = std::fs::read_to_string(copy.join("services/content/hello.md"))
        .map_err(io("reading", &copy))?;
    check(
        text.contains("Hello again."),
        "the file holds the edited body",
    )?;
    results.push(r);
    Ok(results)
}

fn arg(args: &[String], i: usize, env: &str) -> Option<String> {
    args.get(i).cloned().or_else(|| std::env::var(env).ok())
}

#[allow(dead_code)]
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let (Some(api_url), Some(tenant), Some(token), Some(workdir)) = (
        arg(&argv, 0, "SP_SYNC_API_URL"),
        arg(&argv, 1, "SP_SYNC_TENANT"),
        arg(&argv, 2, "SP_SYNC_API_TOKEN"),
        arg(&argv, 3, "SP_SYNC_WORKDIR"),
    ) else {
        eprintln!("usage: library API_URL TENANT TOKEN WORKDIR");
        std::process::exit(2);
    };
    let args = Args {
        api_url,
        tenant,
        token,
        workdir: workdir.into(),
    };
    match run(&args).await {
        Ok(results) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&results).expect("results serialize")
            );
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
