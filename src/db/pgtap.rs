//! A tap on a PostgreSQL connection's socket that takes a `COPY … TO
//! STDOUT`'s data off the wire before `tokio-postgres` sees it.
//!
//! The server sends a `COPY`'s data one message per row. Through
//! `tokio-postgres` each message is parsed, split off its read buffer as a
//! reference-counted `Bytes`, queued and polled out of a stream, and
//! dropped: for a 1,000,000-row table that was a tenth of a snapshot's
//! CPU. The tap reads the socket in large pieces and walks the messages
//! itself: while a `COPY`'s data flows it appends each `CopyData`
//! message's body to one buffer, which the reader takes whole, and hands
//! every other message (the `COPY`'s start and end, errors, notices, and
//! all other traffic) on to `tokio-postgres` byte for byte. So
//! `tokio-postgres` sees a `COPY` with no data, and ends it as usual.
//!
//! The tap diverts only when armed ([`Tap::arm`]) and only between the
//! `CopyOutResponse` that starts the copy and the `CopyDone` or
//! `ErrorResponse` that ends it; it holds at most [`FULL`] bytes of data
//! before it stops reading the socket until they are taken. On a TLS
//! connection the tap sits above the TLS ([`TapTls`]), on the plain text.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, TlsConnect, TlsStream};

/// The tap stops reading the socket once it holds this much data.
pub const FULL: usize = 256 << 10;
/// The socket is read this much at a time.
const READ: usize = 64 << 10;

/// A message's type byte: the server starts a `COPY … TO STDOUT`.
const COPY_OUT_RESPONSE: u8 = b'H';
/// A `COPY`'s data.
const COPY_DATA: u8 = b'd';
/// A `COPY`'s end.
const COPY_DONE: u8 = b'c';
/// An error (which ends a `COPY`).
const ERROR_RESPONSE: u8 = b'E';
/// The server is ready for the next query.
const READY_FOR_QUERY: u8 = b'Z';

/// What the socket's reader and the copy's reader share.
struct Shared {
    /// The next `COPY … TO STDOUT` is to be diverted.
    armed: bool,
    /// A copy's data is flowing and being diverted.
    diverting: bool,
    /// The diverted data is kept for the copy's reader (false once it has
    /// gone: the rest of that copy is dropped as it comes, and never held
    /// for the next copy, whose start comes after it).
    keep: bool,
    /// The data diverted and not yet taken.
    data: Vec<u8>,
    /// The socket is not read while `data` holds this many bytes.
    limit: usize,
    /// The copy's reader, waiting for data.
    taker: Option<Waker>,
    /// The socket's reader, waiting for the data to be taken.
    reader: Option<Waker>,
}

impl Shared {
    /// Whether the socket must wait for the data to be taken.
    fn full(&self) -> bool {
        self.diverting && self.keep && self.data.len() >= self.limit
    }
}

/// The copy's reader's end of a tap.
#[derive(Clone)]
pub struct Tap(Arc<Mutex<Shared>>);

impl Default for Tap {
    /// A tap that holds at most [`FULL`] bytes.
    fn default() -> Tap {
        Tap(Arc::new(Mutex::new(Shared {
            armed: false,
            diverting: false,
            keep: false,
            data: Vec::new(),
            limit: FULL,
            taker: None,
            reader: None,
        })))
    }
}

impl Tap {
    /// A tap that holds at most `limit` bytes of data (and one read's
    /// more) before it stops reading the socket (tests).
    fn with_limit(limit: usize) -> Tap {
        let t = Tap::default();
        t.lock().limit = limit;
        t
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // (Nothing panics while holding it; a poisoned lock is still sound.)
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Diverts the data of the next `COPY … TO STDOUT`, until
    /// [`disarm`](Self::disarm).
    pub fn arm(&self) {
        let mut s = self.lock();
        s.armed = true;
        s.data.clear();
    }

    /// Ends the diversion's reader: data still flowing (a copy given up)
    /// is dropped as it comes, and the socket is never held up for it.
    pub fn disarm(&self) {
        let mut s = self.lock();
        s.armed = false;
        s.keep = false;
        s.data = Vec::new();
        s.taker = None;
        if let Some(w) = s.reader.take() {
            w.wake();
        }
    }

    /// Swaps the data diverted so far into `into` (which must be empty),
    /// letting the socket be read again; when there is none, registers
    /// `cx` to be woken when there is.
    pub fn take(&self, into: &mut Vec<u8>, cx: &mut Context<'_>) {
        let mut s = self.lock();
        if s.data.is_empty() {
            if !s.taker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                s.taker = Some(cx.waker().clone());
            }
            return;
        }
        std::mem::swap(into, &mut s.data);
        if let Some(w) = s.reader.take() {
            w.wake();
        }
    }
}

/// Where the tap is in the stream of messages.
#[derive(Clone, Copy)]
enum At {
    /// `n` bytes of a message's 5-byte header read.
    Head { hdr: [u8; 5], n: usize },
    /// Handing on a header from `hdr[at..]`, then `body` bytes.
    PassHead {
        hdr: [u8; 5],
        at: usize,
        body: usize,
    },
    /// Handing on `left` more bytes of a message.
    Pass { left: usize },
    /// Diverting `left` more bytes of a `CopyData` body.
    Divert { left: usize },
}

/// A socket with a tap: what `tokio-postgres` connects over.
pub struct Tapped<S> {
    inner: S,
    tap: Tap,
    /// Bytes read from the socket, `buf[start..end]` not yet used.
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    at: At,
}

impl<S> Tapped<S> {
    pub fn new(inner: S, tap: Tap) -> Tapped<S> {
        Tapped {
            inner,
            tap,
            buf: vec![0; READ].into_boxed_slice(),
            start: 0,
            end: 0,
            at: At::Head { hdr: [0; 5], n: 0 },
        }
    }

    /// Uses what the buffer holds: hands on what passes (as much as `out`
    /// takes) and diverts the copy's data (while the tap is not full).
    /// Returns whether the tap is full.
    fn walk(&mut self, out: &mut ReadBuf<'_>) -> bool {
        let mut diverted = false;
        let mut sh = self.tap.lock();
        let full = loop {
            match self.at {
                At::PassHead { hdr, at, body } => {
                    let n = (5 - at).min(out.remaining());
                    if n == 0 {
                        break false;
                    }
                    out.put_slice(&hdr[at..at + n]);
                    self.at = if at + n < 5 {
                        At::PassHead {
                            hdr,
                            at: at + n,
                            body,
                        }
                    } else {
                        At::Pass { left: body }
                    };
                    continue;
                }
                At::Pass { left: 0 } | At::Divert { left: 0 } => {
                    self.at = At::Head { hdr: [0; 5], n: 0 };
                    continue;
                }
                _ => {}
            }
            if self.start == self.end {
                break false;
            }
            let have = &self.buf[self.start..self.end];
            match self.at {
                At::Head { mut hdr, n } => {
                    let k = (5 - n).min(have.len());
                    hdr[n..n + k].copy_from_slice(&have[..k]);
                    self.start += k;
                    if n + k < 5 {
                        self.at = At::Head { hdr, n: n + k };
                        continue;
                    }
                    // (A length under 4 is malformed: handed on as it
                    // is, for tokio-postgres to refuse.)
                    let len = u32::from_be_bytes([hdr[1], hdr[2], hdr[3], hdr[4]]) as usize;
                    let body = len.saturating_sub(4);
                    let kind = hdr[0];
                    if sh.diverting && kind == COPY_DATA {
                        self.at = At::Divert { left: body };
                        continue;
                    }
                    match kind {
                        COPY_OUT_RESPONSE if sh.armed => {
                            sh.armed = false;
                            sh.diverting = true;
                            sh.keep = true;
                        }
                        COPY_DONE | ERROR_RESPONSE | READY_FOR_QUERY => sh.diverting = false,
                        _ => {}
                    }
                    self.at = At::PassHead { hdr, at: 0, body };
                }
                At::Pass { left } => {
                    let n = left.min(have.len()).min(out.remaining());
                    if n == 0 {
                        break false;
                    }
                    out.put_slice(&have[..n]);
                    self.start += n;
                    self.at = At::Pass { left: left - n };
                }
                At::Divert { left } => {
                    if sh.full() {
                        break true;
                    }
                    let n = left.min(have.len());
                    if sh.keep {
                        sh.data.extend_from_slice(&have[..n]);
                        diverted = true;
                    }
                    self.start += n;
                    self.at = At::Divert { left: left - n };
                }
                At::PassHead { .. } => {}
            }
        };
        if diverted && let Some(w) = sh.taker.take() {
            w.wake();
        }
        full
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tapped<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            let before = out.filled().len();
            let full = this.walk(out);
            if out.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
            if full {
                let mut sh = this.tap.lock();
                // (Taken meanwhile? Walk again.)
                if sh.full() {
                    sh.reader = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                continue;
            }
            // Everything read is used: read more.
            this.start = 0;
            this.end = 0;
            let mut rb = ReadBuf::new(&mut this.buf);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        // The end of the stream: tokio-postgres sees it
                        // and fails the copy; its reader is told by that.
                        return Poll::Ready(Ok(()));
                    }
                    this.end = n;
                }
            }
        }
    }
}

/// A TLS connector whose streams have a tap above the TLS.
pub struct TapTls<T> {
    pub inner: T,
    pub tap: Tap,
}

impl<S, T> TlsConnect<S> for TapTls<T>
where
    T: TlsConnect<S>,
    T::Future: Send + 'static,
    T::Stream: 'static,
{
    type Stream = Tapped<T::Stream>;
    type Error = T::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Stream, T::Error>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let (tls, tap) = (self.inner.connect(stream), self.tap);
        Box::pin(async move { tls.await.map(|s| Tapped::new(s, tap)) })
    }
}

impl<S: TlsStream + Unpin> TlsStream for Tapped<S> {
    fn channel_binding(&self) -> ChannelBinding {
        self.inner.channel_binding()
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tapped<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A socket that gives `data` in pieces of the sizes given, in turn.
struct Pieces {
    data: Vec<u8>,
    at: usize,
    sizes: Vec<usize>,
    i: usize,
}

impl AsyncRead for Pieces {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let p = self.get_mut();
        let n = p
            .sizes
            .get(p.i % p.sizes.len().max(1))
            .copied()
            .unwrap_or(1)
            .min(p.data.len() - p.at)
            .min(out.remaining());
        p.i += 1;
        out.put_slice(&p.data[p.at..p.at + n]);
        p.at += n;
        Poll::Ready(Ok(()))
    }
}

/// Reads `wire` through an armed tap holding at most `limit` bytes,
/// in reads of the sizes `outs` in turn, the socket giving pieces of
/// `sizes`; the data is taken every `every` reads, and whenever the
/// tap waits for it. (For tests and the fuzz target `pg_tap`; sizes of 0
/// count as 1.)
#[doc(hidden)]
pub fn read_through(
    wire: &[u8],
    sizes: &[usize],
    outs: &[usize],
    every: usize,
    limit: usize,
) -> (Vec<u8>, Vec<u8>) {
    let tap = Tap::with_limit(limit.max(1));
    tap.arm();
    let socket = Pieces {
        data: wire.to_vec(),
        at: 0,
        sizes: sizes.iter().map(|&n| n.max(1)).collect(),
        i: 0,
    };
    let mut t = Tapped::new(socket, tap.clone());
    let mut cx = Context::from_waker(Waker::noop());
    let (mut pass, mut data, mut chunk) = (Vec::new(), Vec::new(), Vec::new());
    let mut take = |data: &mut Vec<u8>, cx: &mut Context<'_>| {
        chunk.clear();
        tap.take(&mut chunk, cx);
        data.extend_from_slice(&chunk);
        !chunk.is_empty()
    };
    for i in 0.. {
        let mut buf = vec![0; outs.get(i % outs.len().max(1)).map_or(1, |&n| n.max(1))];
        let mut rb = ReadBuf::new(&mut buf);
        match Pin::new(&mut t).poll_read(&mut cx, &mut rb) {
            // (The socket never fails.)
            Poll::Ready(r) => {
                if r.is_err() || rb.filled().is_empty() {
                    break;
                }
                pass.extend_from_slice(rb.filled());
            }
            // Only a full tap waits (the socket never does).
            Poll::Pending => assert!(take(&mut data, &mut cx), "waiting, with nothing to take"),
        }
        if i % every.max(1) == 0 {
            take(&mut data, &mut cx);
        }
    }
    take(&mut data, &mut cx);
    (pass, data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    /// What the tap must do with `wire`, armed at its start: (the bytes
    /// handed on, the data diverted), worked out on the whole wire at once.
    fn model(wire: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let (mut pass, mut data) = (Vec::new(), Vec::new());
        let (mut armed, mut diverting) = (true, false);
        let mut at = 0;
        while at < wire.len() {
            let hdr = &wire[at..wire.len().min(at + 5)];
            if hdr.len() < 5 {
                // (A header cut off by the stream's end is held, not
                // handed on: the connection fails there either way.)
                break;
            }
            let len = u32::from_be_bytes([hdr[1], hdr[2], hdr[3], hdr[4]]) as usize;
            let end = wire.len().min(at + 5 + len.saturating_sub(4));
            if diverting && hdr[0] == COPY_DATA {
                data.extend_from_slice(&wire[at + 5..end]);
            } else {
                match hdr[0] {
                    COPY_OUT_RESPONSE if armed => (armed, diverting) = (false, true),
                    COPY_DONE | ERROR_RESPONSE | READY_FOR_QUERY => diverting = false,
                    _ => {}
                }
                pass.extend_from_slice(&wire[at..end]);
            }
            at = end;
        }
        (pass, data)
    }

    fn kinds() -> impl Strategy<Value = u8> {
        prop_oneof![
            Just(COPY_OUT_RESPONSE),
            Just(COPY_DATA),
            Just(COPY_DATA),
            Just(COPY_DATA),
            Just(COPY_DONE),
            Just(ERROR_RESPONSE),
            Just(READY_FOR_QUERY),
            Just(b'N'),
            Just(b'C'),
            Just(b'D'),
        ]
    }

    proptest! {
        #[test]
        fn a_copys_data_is_diverted_and_all_else_handed_on_as_it_came(
            msgs in prop::collection::vec((kinds(), prop::collection::vec(any::<u8>(), 0..40)), 0..40),
            sizes in prop::collection::vec(1usize..70, 1..5),
            outs in prop::collection::vec(1usize..70, 1..5),
            every in 1usize..6,
            limit in 1usize..200,
        ) {
            let wire: Vec<u8> = msgs.iter().flat_map(|(k, b)| message(*k, b)).collect();
            prop_assert_eq!(read_through(&wire, &sizes, &outs, every, limit), model(&wire));
        }

        #[test]
        fn any_bytes_are_handed_on_or_diverted_as_the_messages_they_frame_say(
            wire in prop::collection::vec(any::<u8>(), 0..400),
            sizes in prop::collection::vec(1usize..70, 1..5),
            outs in prop::collection::vec(1usize..70, 1..5),
            limit in 1usize..200,
        ) {
            prop_assert_eq!(read_through(&wire, &sizes, &outs, 3, limit), model(&wire));
        }
    }

    #[test]
    fn a_copy_given_up_is_dropped_as_it_comes_and_never_reaches_the_next() {
        // A copy of 100 rows, then (pipelined after it) the next copy's.
        let copy = |byte: u8, rows: u8| {
            let mut w = message(COPY_OUT_RESPONSE, &[0; 7]);
            for i in 0..rows {
                w.extend(message(COPY_DATA, &[byte.wrapping_add(i); 30]));
            }
            w.extend(message(COPY_DONE, &[]));
            w.extend(message(READY_FOR_QUERY, b"T"));
            w
        };
        let (first, second) = (copy(0, 100), copy(200, 3));
        let tap = Tap::with_limit(50);
        tap.arm();
        let socket = Pieces {
            data: [first.clone(), second.clone()].concat(),
            at: 0,
            sizes: vec![64],
            i: 0,
        };
        let mut t = Tapped::new(socket, tap.clone());
        let mut cx = Context::from_waker(Waker::noop());
        let mut buf = [0u8; 100];
        let mut rb = ReadBuf::new(&mut buf);
        assert!(Pin::new(&mut t).poll_read(&mut cx, &mut rb).is_ready());
        assert_eq!(rb.filled(), &first[..12], "the copy's start is handed on");
        let mut rb = ReadBuf::new(&mut buf);
        assert!(
            Pin::new(&mut t).poll_read(&mut cx, &mut rb).is_pending(),
            "full: it waits"
        );
        // The reader gives up, and the next copy is armed before the rest
        // of this one has come: the rest is dropped, the next one's data
        // is all the tap holds, and everything else is handed on.
        tap.disarm();
        tap.arm();
        let (mut pass, mut data, mut chunk) = (Vec::new(), Vec::new(), Vec::new());
        loop {
            let mut rb = ReadBuf::new(&mut buf);
            match Pin::new(&mut t).poll_read(&mut cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => break,
                Poll::Ready(Ok(())) => pass.extend_from_slice(rb.filled()),
                Poll::Ready(Err(e)) => panic!("{e}"),
                // (The next copy's data filled the tap.)
                Poll::Pending => {}
            }
            chunk.clear();
            tap.take(&mut chunk, &mut cx);
            data.extend_from_slice(&chunk);
        }
        let mut expect = first[first.len() - 11..].to_vec();
        expect.extend_from_slice(&second[..12]);
        expect.extend_from_slice(&second[second.len() - 11..]);
        assert_eq!(pass, expect);
        assert_eq!(data, [[200; 30], [201; 30], [202; 30]].concat());
    }
}
