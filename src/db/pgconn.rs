//! A blocking PostgreSQL client over `tokio-postgres`: the calls `pg` makes
//! (`batch_execute`, `execute`, `query*`, `prepare`, `copy_in`), each run to
//! completion on a current-thread runtime of the client's own, and one the
//! `postgres` crate lacks: [`Client::copy_out_lines`], which reads a whole
//! `COPY … TO STDOUT` inside one `block_on`.
//!
//! Why not the `postgres` crate's client: its `COPY` reader enters its
//! runtime once per message, and the server sends one message per row. On
//! a 1,000,000-row table that was a quarter of a snapshot's reading thread
//! (runtime entry, thread-local context, the clock); read in one `block_on`
//! the same rows cost the client a third of the CPU time. Since then the
//! connection runs over its own socket with a tap on it ([`super::pgtap`]),
//! which takes a `COPY`'s data off the wire in large pieces: the messages
//! never reach `tokio-postgres` (the snapshot of a 1,000,000-row table,
//! 5% less CPU).
//!
//! Two more things a snapshot of many small tables needs, where round
//! trips and planning, not rows, are the cost: catalog queries are kept
//! prepared from their second run ([`keepable`]), and
//! [`Client::query_each`] sends a table's independent catalog queries
//! together, one round trip for all.
//!
//! Like the `postgres` crate's, a client must not be used from inside
//! another tokio runtime: `pg` runs every entry point on a thread of its own.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, Stream};
use tokio::net::{TcpSocket, TcpStream, UnixStream};
use tokio::runtime::Runtime;
use tokio_postgres::config::Host;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Config, Error, NoTls, Row, Statement};

use super::pgtap::{Tap, TapTls, Tapped};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::SyncError;

/// How long a dropped client waits for its connection to end cleanly.
const DROP_WAIT: Duration = Duration::from_millis(200);

/// A connection and the runtime that drives it.
pub struct Client {
    rt: Runtime,
    /// `None` only while dropping.
    client: Option<tokio_postgres::Client>,
    /// The connection task; it ends when the client is dropped.
    task: Option<tokio::task::JoinHandle<()>>,
    /// Why the connection ended, when it failed: a call that finds the
    /// connection closed reports this instead.
    failure: Arc<Mutex<Option<Error>>>,
    /// The tap on the connection's stream (see [`Client::copy_out`]).
    tap: Tap,
    /// The `COPY … FROM STDIN` under way, if any (see [`Client::copy_start`]).
    copy: Option<Pin<Box<tokio_postgres::CopyInSink<Bytes>>>>,
    /// Whether the server's encoding orders text as its UTF-8 form does
    /// (see [`Client::utf8_order`]).
    utf8_order: bool,
    /// Catalog queries prepared once, kept until the transaction ends (see
    /// [`Client::cached`] and [`Client::batch_execute`]).
    statements: HashMap<String, Statement>,
    /// Catalog queries run once so far, by hash.
    seen: HashSet<u64>,
    /// Whether a transaction is open (see [`transaction_edge`]).
    in_tx: bool,
    /// `SET LOCAL …;` statements run at the start of every transaction
    /// (see [`Client::set_locals`]).
    locals: String,
}

/// At most this many statements are kept prepared.
const MAX_STATEMENTS: usize = 256;

/// A runtime for one client.
fn runtime() -> crate::error::Result<Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| SyncError::Database(format!("could not start the PostgreSQL client: {e}")))
}

/// A connection's task, and why it failed once it has.
type Driven = (tokio::task::JoinHandle<()>, Arc<Mutex<Option<Error>>>);

/// Runs a connection on `rt` until it ends, keeping why it failed.
fn drive<C>(rt: &Runtime, connection: C) -> Driven
where
    C: Future<Output = Result<(), Error>> + Send + 'static,
{
    let failure = Arc::new(Mutex::new(None));
    let failed = Arc::clone(&failure);
    let task = rt.spawn(async move {
        if let Err(e) = connection.await
            && let Ok(mut f) = failed.lock()
        {
            *f = Some(e);
        }
    });
    (task, failure)
}

/// How a connection failed.
pub enum ConnectError {
    /// Opening its socket.
    Socket(std::io::Error),
    /// After: the start-up, authentication or TLS.
    Client(Error),
}

/// `fut`, failing as a timed out connection would after `limit`.
async fn limited<T>(
    limit: Option<Duration>,
    fut: impl Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    match limit {
        Some(d) => tokio::time::timeout(d, fut).await.unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connection timed out",
            ))
        }),
        None => fut.await,
    }
}

/// A TCP connection to `host`'s first address that answers, as
/// `tokio-postgres` makes one: no delay, keepalives on.
async fn tcp(host: &str, port: u16, limit: Option<Duration>) -> std::io::Result<TcpStream> {
    let mut last = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_keepalive(true)?;
        match limited(limit, socket.connect(addr)).await {
            Ok(s) => {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "could not resolve to any addresses",
        )
    }))
}

/// Starts a session over `stream` (through `tls`), its connection driven
/// on `rt`.
async fn start<S, T>(
    config: &Config,
    rt: &Runtime,
    stream: S,
    tls: T,
) -> Result<(tokio_postgres::Client, Driven), ConnectError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio_postgres::tls::TlsConnect<S>,
    T::Stream: Send + 'static,
{
    let (client, connection) = config
        .connect_raw(stream, tls)
        .await
        .map_err(ConnectError::Client)?;
    Ok((client, drive(rt, connection)))
}

impl Client {
    /// Connects to `config`'s first host and port (a Unix socket or TCP),
    /// over TLS when `tls` is given, with a [`Tap`] above the TLS, if any,
    /// which reads a `COPY`'s data off the wire (see [`super::pgtap`]).
    pub fn connect(
        config: &Config,
        tls: Option<MakeRustlsConnect>,
    ) -> Result<Client, ConnectError> {
        let rt =
            runtime().map_err(|e| ConnectError::Socket(std::io::Error::other(e.to_string())))?;
        let tap = Tap::default();
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let limit = config.get_connect_timeout().copied();
        let (client, (task, failure)) = rt.block_on(async {
            match (config.get_hosts().first(), tls) {
                (Some(Host::Unix(dir)), None) => {
                    let path = dir.join(format!(".s.PGSQL.{port}"));
                    let s = limited(limit, UnixStream::connect(path))
                        .await
                        .map_err(ConnectError::Socket)?;
                    start(config, &rt, Tapped::new(s, tap.clone()), NoTls).await
                }
                (Some(Host::Tcp(host)), None) => {
                    let s = tcp(host, port, limit).await.map_err(ConnectError::Socket)?;
                    start(config, &rt, Tapped::new(s, tap.clone()), NoTls).await
                }
                (Some(Host::Tcp(host)), Some(mut make)) => {
                    let s = tcp(host, port, limit).await.map_err(ConnectError::Socket)?;
                    let Ok(inner) =
                        <MakeRustlsConnect as MakeTlsConnect<TcpStream>>::make_tls_connect(
                            &mut make, host,
                        );
                    let tls = TapTls {
                        inner,
                        tap: tap.clone(),
                    };
                    start(config, &rt, s, tls).await
                }
                (Some(Host::Unix(_)), Some(_)) => Err(ConnectError::Socket(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "no TLS on a Unix socket",
                ))),
                (None, _) => Err(ConnectError::Socket(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "no host to connect to",
                ))),
            }
        })?;
        Ok(Client {
            rt,
            client: Some(client),
            task: Some(task),
            failure,
            tap,
            copy: None,
            utf8_order: true,
            statements: HashMap::new(),
            seen: HashSet::new(),
            in_tx: false,
            locals: String::new(),
        })
    }

    /// Whether text in the server's encoding sorts byte by byte as its
    /// UTF-8 form does (UTF8, SQL_ASCII, LATIN1): then `COLLATE "C"` gives
    /// the order of the keys sp-sync makes (from the UTF-8 the client
    /// reads); else only `convert_to(…, 'UTF8')` does (audit 26: in a
    /// WIN1251 database `€` sorts before `Ж`, in UTF-8 after).
    pub fn utf8_order(&self) -> bool {
        self.utf8_order
    }

    /// Sets what [`utf8_order`](Self::utf8_order) says (true until set).
    pub fn set_utf8_order(&mut self, v: bool) {
        self.utf8_order = v;
    }

    fn client(&self) -> &tokio_postgres::Client {
        self.client
            .as_ref()
            .expect("the client is present until dropped")
    }

    /// Runs `f` on the runtime; a "connection closed" error becomes the
    /// connection's own failure when there is one.
    fn run<T>(&self, f: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
        self.rt.block_on(f).map_err(|e| self.explain(e))
    }

    /// Ends a `COPY … FROM STDIN` left under way, aborting it, before
    /// another statement: the connection would otherwise wait for the
    /// copy's end before sending it. (The copy fails, and with it the
    /// transaction, or the savepoint it ran under.)
    fn idle(&mut self) {
        if self.copy.take().is_some() {
            tracing::debug!("a COPY left unfinished was aborted");
        }
    }

    fn explain(&self, e: Error) -> Error {
        if !e.is_closed() {
            return e;
        }
        match self.failure.lock().ok().and_then(|mut f| f.take()) {
            Some(why) => why,
            None => e,
        }
    }

    /// Sets what every transaction runs under: `settings` are `name =
    /// value` pairs, each run as `SET LOCAL` at its start (in the same
    /// round trip as its `BEGIN`). Never for the session: behind a pooler
    /// that hands each transaction a server session of its own
    /// (PgBouncer's transaction mode) a session's `SET` lands in one
    /// server session, which the transactions after it may not get, and
    /// which stays set for the pool's other clients.
    pub fn set_locals(&mut self, settings: &[&str]) {
        self.locals = settings
            .iter()
            .map(|s| format!("SET LOCAL {s}; "))
            .collect();
    }

    /// The values of the server's settings `names` (plain identifiers),
    /// None for one this server does not have, by the simple protocol: one
    /// round trip, and one message behind a pooler (no transaction of its
    /// own needed).
    pub fn settings(&mut self, names: &[&str]) -> Result<Vec<Option<String>>, Error> {
        debug_assert!(
            names
                .iter()
                .all(|n| n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        );
        self.idle();
        let list: Vec<String> = names
            .iter()
            .map(|n| format!("pg_catalog.current_setting('{n}', true)"))
            .collect();
        let msgs = self.run(
            self.client()
                .simple_query(&format!("SELECT {}", list.join(", "))),
        )?;
        let row = msgs.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        });
        Ok((0..names.len())
            .map(|i| row.and_then(|r| r.get(i)).map(str::to_string))
            .collect())
    }

    /// Runs `query` (one or more statements, no parameters) by the simple
    /// protocol. A batch that begins or ends a transaction must start
    /// with the statement that does ([`transaction_edge`]); one that
    /// begins one runs the [`set_locals`](Self::set_locals) settings too.
    pub fn batch_execute(&mut self, query: &str) -> Result<(), Error> {
        self.idle();
        let edge = transaction_edge(query);
        if edge.is_some() {
            // Statements are kept within a transaction only: behind a
            // pooler that hands each transaction its own server session,
            // a statement prepared in one would not exist in the next.
            self.statements.clear();
        }
        let r = if edge == Some(true) && !self.locals.is_empty() {
            let batch = format!("{query}; {}", self.locals);
            self.run(self.client().batch_execute(&batch))
        } else {
            self.run(self.client().batch_execute(query))
        };
        if let Some(open) = edge {
            // Whether it failed or not: a failed COMMIT ends the
            // transaction too, and a batch that began one and then failed
            // leaves it open (aborted). Taking a transaction for open when
            // none is only leaves a query unwrapped; the other way, the
            // COMMIT of `in_transaction` would end the caller's.
            self.in_tx = open;
        }
        r
    }

    /// Runs `f` in a transaction of its own when none is open. Outside a
    /// transaction the extended protocol's round trips (Parse, then Bind
    /// and Execute, then Close) are transactions of their own, which a
    /// pooler may send to different server sessions: the statement would
    /// be missing from one and left behind in another, where the next
    /// client to prepare one of the same name fails ("prepared statement
    /// \"s0\" already exists"). Inside one, every message reaches the
    /// same session, and the statement is closed before the transaction
    /// ends.
    fn in_transaction<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, Error>,
    ) -> Result<T, Error> {
        if self.in_tx {
            return f(self);
        }
        self.batch_execute("BEGIN")?;
        let r = f(self);
        let end = self.batch_execute(if r.is_ok() { "COMMIT" } else { "ROLLBACK" });
        let v = r?;
        end.map(|()| v)
    }

    /// Runs a statement; the number of rows it changed. One without
    /// parameters (a restore's `CREATE`, `ALTER` and `COPY` statements) goes
    /// as an unnamed statement, parsed and run in one round trip: prepared
    /// first, each took two.
    pub fn execute(&mut self, query: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, Error> {
        self.idle();
        self.in_transaction(|c| {
            if params.is_empty() {
                c.run(c.client().execute_typed(query, &[]))
            } else {
                c.run(c.client().execute(query, params))
            }
        })
    }

    /// Runs a prepared statement; the number of rows it changed.
    pub fn execute_prepared(
        &mut self,
        st: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, Error> {
        self.idle();
        self.run(self.client().execute(st, params))
    }

    /// The statement kept prepared for `query`, preparing it on its second
    /// run; None for a query run once so far, or one not [`keepable`]. A
    /// snapshot runs the same few dozen catalog queries once per table:
    /// parsing and planning each afresh was most of the time a snapshot of
    /// 200 small tables took. (A statement prepared by the protocol's Parse
    /// survives a rollback to a savepoint, or of the transaction; it is
    /// dropped when the transaction ends all the same.)
    fn cached(&mut self, query: &str) -> Result<Option<Statement>, Error> {
        if let Some(st) = self.statements.get(query) {
            return Ok(Some(st.clone()));
        }
        if !keepable(query) || self.statements.len() >= MAX_STATEMENTS {
            return Ok(None);
        }
        let hash = {
            use std::hash::Hasher;
            let mut h = std::hash::DefaultHasher::new();
            h.write(query.as_bytes());
            h.finish()
        };
        if self.seen.len() >= 4 * MAX_STATEMENTS {
            self.seen.clear();
        }
        if self.seen.insert(hash) {
            return Ok(None);
        }
        let st = self.run(self.client().prepare(query))?;
        self.statements.insert(query.to_owned(), st.clone());
        Ok(Some(st))
    }

    pub fn query(
        &mut self,
        query: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error> {
        self.idle();
        self.in_transaction(|c| match c.cached(query)? {
            Some(st) => c.run(c.client().query(&st, params)),
            // (One round trip, the unnamed statement, not two.)
            None if params.is_empty() => c.run(c.client().query_typed(query, &[])),
            None => c.run(c.client().query(query, params)),
        })
    }

    /// Runs `queries`, each with its parameters, pipelined: sent together
    /// and answered in order, one round trip for all (after the first
    /// runs, which prepare them). Their rows, or the first one's error
    /// (after which, in a transaction, the others fail too).
    pub fn query_each(
        &mut self,
        queries: &[(&str, &[&(dyn ToSql + Sync)])],
    ) -> Result<Vec<Vec<Row>>, Error> {
        self.idle();
        self.in_transaction(|c| {
            let mut kept = Vec::with_capacity(queries.len());
            for (q, _) in queries {
                kept.push(c.cached(q)?);
            }
            let client = c.client();
            let all = futures::future::join_all(queries.iter().zip(&kept).map(
                |((q, params), st)| async move {
                    match st {
                        Some(st) => client.query(st, params).await,
                        // (In the same round trip as the others.)
                        None if params.is_empty() => client.query_typed(q, &[]).await,
                        None => client.query(*q, params).await,
                    }
                },
            ));
            c.rt.block_on(all)
                .into_iter()
                .map(|r| r.map_err(|e| c.explain(e)))
                .collect()
        })
    }

    /// Runs a prepared statement; the rows it returned.
    pub fn query_prepared(
        &mut self,
        st: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error> {
        self.idle();
        self.run(self.client().query(st, params))
    }

    pub fn query_one(&mut self, query: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, Error> {
        self.idle();
        self.in_transaction(|c| match c.cached(query)? {
            Some(st) => c.run(c.client().query_one(&st, params)),
            // (One round trip, the unnamed statement, not two.)
            None if params.is_empty() => c.run(c.client().query_typed_one(query, &[])),
            None => c.run(c.client().query_one(query, params)),
        })
    }

    pub fn query_opt(
        &mut self,
        query: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, Error> {
        self.idle();
        self.in_transaction(|c| match c.cached(query)? {
            Some(st) => c.run(c.client().query_opt(&st, params)),
            // (One round trip, the unnamed statement, not two.)
            None if params.is_empty() => c.run(c.client().query_typed_opt(query, &[])),
            None => c.run(c.client().query_opt(query, params)),
        })
    }

    /// Runs prepared statements back to back (sent together, answered in
    /// order: one round trip for all), each with its parameters; each
    /// gives the rows it returned when `rows`, else the rows it changed.
    /// After one fails, the transaction is aborted and those after it fail
    /// too.
    pub fn pipeline(
        &mut self,
        items: &[(&Statement, Vec<&(dyn ToSql + Sync)>, bool)],
    ) -> Vec<Result<Done, Error>> {
        self.idle();
        let client = self.client();
        let all = futures::future::join_all(items.iter().map(|(st, params, rows)| async move {
            if *rows {
                client.query(*st, params).await.map(Done::Rows)
            } else {
                client.execute(*st, params).await.map(Done::Count)
            }
        }));
        self.rt
            .block_on(all)
            .into_iter()
            .map(|r| r.map_err(|e| self.explain(e)))
            .collect()
    }

    /// Prepares `query` for [`Self::query_prepared`] and the like, within
    /// the transaction that is open (see [`Self::in_transaction`]: a
    /// statement must not outlive it).
    pub fn prepare(&mut self, query: &str) -> Result<Statement, Error> {
        debug_assert!(self.in_tx, "a statement prepared outside a transaction");
        self.idle();
        self.run(self.client().prepare(query))
    }

    /// Starts a `COPY … FROM STDIN`: write the data to the writer, then
    /// [`CopyIn::finish`]; dropped unfinished, the copy is aborted.
    pub fn copy_in(&mut self, query: &str) -> Result<CopyIn<'_>, Error> {
        self.copy_start(query)?;
        Ok(CopyIn { client: self })
    }

    /// Starts a `COPY … FROM STDIN` that stays under way between calls:
    /// [`Self::copy_send`] its data, then [`Self::copy_end`]. Any other
    /// call first aborts it.
    pub fn copy_start(&mut self, query: &str) -> Result<(), Error> {
        debug_assert!(self.in_tx, "a COPY outside a transaction");
        self.idle();
        let sink = self.run(self.client().copy_in(query))?;
        self.copy = Some(Box::pin(sink));
        Ok(())
    }

    /// Sends `data` to the `COPY` under way (nothing when none is), and
    /// lets the connection write it out before returning, so that the
    /// server reads it while the caller makes the next.
    pub fn copy_send(&mut self, data: &[u8]) -> Result<(), Error> {
        let Some(sink) = self.copy.as_mut() else {
            return Ok(());
        };
        let data = Bytes::copy_from_slice(data);
        let sent = self.rt.block_on(async {
            sink.send(data).await?;
            tokio::task::yield_now().await;
            Ok(())
        });
        sent.map_err(|e| self.explain(e))
    }

    /// Ends the `COPY` under way: the number of rows the server took (0
    /// when none was under way).
    pub fn copy_end(&mut self) -> Result<u64, Error> {
        let Some(mut sink) = self.copy.take() else {
            return Ok(0);
        };
        self.run(sink.as_mut().finish())
    }

    /// Aborts the `COPY` under way, if any.
    pub fn copy_abort(&mut self) {
        self.copy = None;
    }

    /// Runs a `COPY … TO STDOUT` (text format), calling `line` with each
    /// line (without its newline), and returns how many there were. The
    /// server sends one message per row, but lines are reassembled across
    /// messages should it split them. An error of `line` stops the copy and
    /// is returned; an error of the client is given to `pg` first.
    pub fn copy_out_lines<E>(
        &mut self,
        query: &str,
        mut line: impl FnMut(&[u8]) -> Result<(), E>,
        pg: impl Fn(Error) -> E,
    ) -> Result<u64, E> {
        let mut lines = Lines::default();
        self.copy_out(query, |msg| lines.feed(msg, &mut line), &pg)?;
        lines.finish(&mut line)?;
        Ok(lines.count)
    }

    /// Runs a `COPY … TO STDOUT (FORMAT binary)` of tuples of `fields`
    /// fields (none longer than `max_field`), calling `tuple` with each;
    /// returns how many there were. A malformed stream is given to `bad`.
    pub fn copy_out_binary<E>(
        &mut self,
        query: &str,
        (fields, max_field): (usize, usize),
        mut tuple: impl FnMut(&[Option<&[u8]>]) -> Result<(), E>,
        pg: impl Fn(Error) -> E,
        bad: impl Fn(String) -> E,
    ) -> Result<u64, E> {
        let mut r = super::pgbinary::BinaryCopy::new(fields, max_field);
        self.copy_out(
            query,
            |msg| {
                r.feed(msg, &mut tuple).map_err(|e| match e {
                    Ok(why) => bad(why),
                    Err(e) => e,
                })
            },
            &pg,
        )?;
        r.finish().map_err(bad)
    }

    /// Runs a `COPY … TO STDOUT`, calling `msg` with each message's data,
    /// all in one runtime entry.
    fn copy_out<E>(
        &mut self,
        query: &str,
        mut msg: impl FnMut(&[u8]) -> Result<(), E>,
        pg: &impl Fn(Error) -> E,
    ) -> Result<(), E> {
        debug_assert!(self.in_tx, "a COPY outside a transaction");
        self.idle();
        let client = self.client.as_ref().expect("present until dropped");
        let tap = &self.tap;
        tap.arm();
        let read = self.rt.block_on(async {
            let stream = client.copy_out(query).await.map_err(Err)?;
            let mut stream = std::pin::pin!(stream);
            // The data comes through the tap; the stream only ends the
            // copy (or fails it), after the tap has diverted all its data.
            let mut chunk = Vec::new();
            let mut ended = false;
            std::future::poll_fn(|cx| {
                loop {
                    chunk.clear();
                    tap.take(&mut chunk, cx);
                    if !chunk.is_empty() {
                        msg(&chunk).map_err(Ok)?;
                        continue;
                    }
                    if ended {
                        return Poll::Ready(Ok(()));
                    }
                    match stream.as_mut().poll_next(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(None) => ended = true,
                        // (Data the tap did not divert: none.)
                        Poll::Ready(Some(Ok(m))) => msg(&m).map_err(Ok)?,
                        Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(Err(e))),
                    }
                }
            })
            .await
        });
        // (Data still coming, of a copy given up, is dropped as it comes.)
        tap.disarm();
        read.map_err(|e| match e {
            Ok(mine) => mine,
            Err(client_error) => pg(self.explain(client_error)),
        })
    }
}

/// Whether a query may be kept prepared: only a query of the catalog, a
/// `SELECT` or `WITH` naming no quoted identifier but the collation `"C"`
/// (sp-sync quotes every name of a table, column or type it puts in SQL),
/// so that a plan kept across a restore's own `CREATE` and `ALTER`
/// statements never outlives the shape of what it reads.
fn keepable(query: &str) -> bool {
    (query.starts_with("SELECT ") || query.starts_with("WITH "))
        && query.split("COLLATE \"C\"").all(|q| !q.contains('"'))
}

/// What a batch does to the transaction, by its first statement:
/// `Some(true)` when it begins one, `Some(false)` when it commits or rolls
/// one back (not to a savepoint), `None` otherwise. (Only the first: a
/// later `END` may be a `DO` block's.)
fn transaction_edge(batch: &str) -> Option<bool> {
    let first = batch.split(';').next()?.trim_start().to_ascii_uppercase();
    let word = first.split_whitespace().next().unwrap_or_default();
    let has = |w: &str| first.split_whitespace().any(|x| x == w);
    match word {
        "BEGIN" | "START" => Some(true),
        // `AND CHAIN` begins the next at once.
        "COMMIT" | "END" | "ABORT" | "ROLLBACK" if has("CHAIN") && !has("NO") => Some(true),
        "COMMIT" | "END" | "ABORT" => Some(false),
        "ROLLBACK" if !has("TO") => Some(false),
        _ => None,
    }
}

/// Lines out of messages that need not end where lines do.
#[derive(Default)]
struct Lines {
    /// The start of a line a message left unfinished.
    partial: Vec<u8>,
    /// Lines given so far.
    count: u64,
}

impl Lines {
    /// Gives `line` every line `msg` finishes.
    fn feed<E>(
        &mut self,
        msg: &[u8],
        line: &mut impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut rest = msg;
        while let Some(end) = memchr::memchr(b'\n', rest) {
            if self.partial.is_empty() {
                line(&rest[..end])?;
            } else {
                self.partial.extend_from_slice(&rest[..end]);
                line(&self.partial)?;
                self.partial.clear();
            }
            self.count += 1;
            rest = &rest[end + 1..];
        }
        self.partial.extend_from_slice(rest);
        Ok(())
    }

    /// Gives `line` what is left after the last newline, if anything.
    fn finish<E>(&mut self, line: &mut impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        if !self.partial.is_empty() {
            line(&self.partial)?;
            self.partial.clear();
            self.count += 1;
        }
        Ok(())
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Dropping the client ends the connection: an idle one says
        // Terminate to the server at once. One still receiving the rest of
        // a COPY given up (an error, an interrupt) would first read all of
        // it; after a moment the socket is closed instead, and the server
        // ends the transaction.
        self.copy = None;
        drop(self.client.take());
        if let Some(task) = self.task.take() {
            let _ = self
                .rt
                .block_on(async { tokio::time::timeout(DROP_WAIT, task).await });
        }
    }
}

/// What a statement of [`Client::pipeline`] gave.
pub enum Done {
    Rows(Vec<Row>),
    Count(u64),
}

/// The writing half of a `COPY … FROM STDIN`; dropped unfinished, it
/// aborts the copy.
pub struct CopyIn<'a> {
    client: &'a mut Client,
}

impl CopyIn<'_> {
    /// Sends `data`.
    pub fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.client
            .copy_send(data)
            .map_err(|e| std::io::Error::other(Box::new(e)))
    }

    /// Ends the copy; the number of rows the server took.
    pub fn finish(self) -> Result<u64, Error> {
        // (Dropped after, it finds no copy left to abort.)
        self.client.copy_end()
    }
}

impl Drop for CopyIn<'_> {
    fn drop(&mut self) {
        self.client.copy_abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A kept statement is dropped when its transaction ends (the next
    /// may run in another server session, behind a transaction-pooling
    /// pooler), and a query outside one runs in one of its own.
    #[test]
    fn transactions_are_seen_to_start_and_end() {
        for b in [
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
            "BEGIN; SET CONSTRAINTS ALL DEFERRED",
            "begin",
            "START TRANSACTION",
            "COMMIT AND CHAIN",
        ] {
            assert_eq!(transaction_edge(b), Some(true), "{b}");
        }
        for b in [
            "COMMIT",
            "ROLLBACK",
            "rollback;",
            "END",
            "ROLLBACK AND NO CHAIN",
        ] {
            assert_eq!(transaction_edge(b), Some(false), "{b}");
        }
        for b in [
            "SAVEPOINT sp_sync_seq",
            "RELEASE SAVEPOINT sp_sync_seq",
            "ROLLBACK TO SAVEPOINT sp; RELEASE SAVEPOINT sp",
            "rollback to sp",
            "ROLLBACK WORK TO SAVEPOINT sp",
            "SET LOCAL search_path = \"s\"",
            "DO $sp_sync$ BEGIN CREATE TYPE m AS ENUM ('a'); EXCEPTION WHEN \
             duplicate_object THEN NULL; END $sp_sync$",
            "BEGINNING",
            "",
        ] {
            assert_eq!(transaction_edge(b), None, "{b}");
        }
    }

    /// Only catalog queries are kept prepared: a query naming a table,
    /// column or type of the user's (always quoted) could outlive a
    /// restore's `ALTER` of it, and a statement that is not a query could
    /// do anything a second time.
    #[test]
    fn only_catalog_queries_are_kept() {
        for q in [
            "SELECT c.oid FROM pg_catalog.pg_class c WHERE c.oid = $1::int8::oid",
            "WITH RECURSIVE used(oid) AS (SELECT 1) SELECT * FROM used",
            "SELECT c.relname FROM pg_catalog.pg_class c ORDER BY c.relname COLLATE \"C\"",
        ] {
            assert!(keepable(q), "{q}");
        }
        for q in [
            "SELECT count(*) FROM ONLY \"users\"",
            "SELECT last_value, is_called FROM \"t_id_seq\"",
            "SELECT x COLLATE \"C\" FROM \"t\"",
            "SELECT \"C\" FROM pg_catalog.pg_class",
            "INSERT INTO pg_temp.t VALUES ($1)",
            "SAVEPOINT sp_sync",
            "select 1",
        ] {
            assert!(!keepable(q), "{q}");
        }
    }

    proptest! {
        /// However the server cuts its messages, the lines are the text's.
        #[test]
        fn lines_do_not_depend_on_message_boundaries(
            text in proptest::collection::vec(prop_oneof![Just(b'\n'), any::<u8>()], 0..400),
            cuts in proptest::collection::vec(0usize..400, 0..20),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(text.len())).collect();
            cuts.push(0);
            cuts.push(text.len());
            cuts.sort_unstable();
            let mut got: Vec<Vec<u8>> = Vec::new();
            let mut take = |l: &[u8]| -> Result<(), ()> {
                got.push(l.to_vec());
                Ok(())
            };
            let mut lines = Lines::default();
            for w in cuts.windows(2) {
                lines.feed(&text[w[0]..w[1]], &mut take).unwrap();
            }
            lines.finish(&mut take).unwrap();
            let mut want: Vec<Vec<u8>> = text.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
            if text.last().is_none_or(|&b| b == b'\n') {
                want.pop();
            }
            prop_assert_eq!(lines.count, want.len() as u64);
            prop_assert_eq!(got, want);
        }
    }
}
