//! Header and read timeouts for the HTTP server, at the connection level.
//!
//! poem 3.1 offers only an idle timeout, which every byte resets: a client trickling one byte of
//! headers every few seconds would hold its connection (and a task) forever. hyper's own
//! `header_read_timeout` is not reachable through poem's `Server`. So [`TimeoutAcceptor`] wraps
//! each accepted connection in a [`RequestDeadline`], which watches the bytes going by:
//!
//! * a request starts with its first byte (or, for the first request, when the connection is
//!   accepted, so a client that connects and sends nothing is dropped too);
//! * its head (request line and headers, up to the blank line) must have arrived within the
//!   header timeout of that start;
//! * the whole request must have been read within the read timeout of that start, unless the
//!   server has begun its answer (the first byte written ends the request's deadlines);
//! * between requests on a keep-alive connection there is no deadline of ours; poem's idle
//!   timeout closes connections that stay silent.
//!
//! When a deadline passes while the server waits for bytes, the read fails with `TimedOut` and
//! hyper closes the connection. hyper keeps watching the socket for a hang-up while a handler
//! works, so the read timeout also bounds the time to the first response byte: a handler slower
//! than it (30 s by default; the API's handlers answer within the publish timeout) loses its
//! connection, and the client's retry is safe because job ids are idempotent. A `100 Continue`
//! interim answer restarts the clock, so a body that follows one must arrive within the header
//! timeout.
//!
//! # Cleartext HTTP/2 is refused
//!
//! poem serves each connection with hyper's automatic HTTP/1-or-HTTP/2 builder, so a client
//! that opens with the HTTP/2 preface ("prior knowledge", h2c) gets HTTP/2. The deadlines above
//! read HTTP/1's framing; HTTP/2 multiplexes requests as frames, and neither poem 3.1 nor hyper
//! 1 offers a header or read deadline for it (hyper's `header_read_timeout` is HTTP/1 only, and
//! poem gives hyper no timer at all), so a client sending the preface and an unfinished header
//! block held its connection and task for as long as it liked. Giving HTTP/2 the same deadlines
//! would mean parsing every frame in both directions here and tracking each stream's state, for
//! a protocol this server never negotiates: it has no TLS, so browsers and ordinary clients
//! speak HTTP/1.1 to it, and TLS terminators in front of it speak HTTP/1.1 to their backends
//! unless told otherwise. So the one deadline for every protocol is had by serving one
//! protocol: a connection that opens with the HTTP/2 preface gets the server preface (an empty
//! SETTINGS frame) and a GOAWAY with the error code `HTTP_1_1_REQUIRED`, which HTTP/2 defines
//! for exactly this, and is closed. The preface's bytes never reach hyper.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use poem::http::uri::Scheme;
use poem::listener::Acceptor;
use poem::web::{LocalAddr, RemoteAddr};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Wraps every connection an inner acceptor yields in a [`RequestDeadline`].
pub struct TimeoutAcceptor<A> {
    inner: A,
    header_timeout: Duration,
    read_timeout: Duration,
}

impl<A> TimeoutAcceptor<A> {
    pub fn new(inner: A, header_timeout: Duration, read_timeout: Duration) -> Self {
        Self {
            inner,
            header_timeout,
            read_timeout,
        }
    }

    pub fn inner(&self) -> &A {
        &self.inner
    }
}

impl<A: Acceptor> Acceptor for TimeoutAcceptor<A> {
    type Io = RequestDeadline<A::Io>;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(&mut self) -> io::Result<(Self::Io, LocalAddr, RemoteAddr, Scheme)> {
        let (io, local, remote, scheme) = self.inner.accept().await?;
        Ok((
            RequestDeadline::new(io, self.header_timeout, self.read_timeout),
            local,
            remote,
            scheme,
        ))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Between requests: no deadline.
    Idle,
    /// Reading a request head. `tail` holds the last bytes seen, to find the blank line.
    Head {
        head_by: Instant,
        request_by: Instant,
        tail: u32,
    },
    /// The head is in; the body (if any) is being read until the server answers.
    Body { request_by: Instant },
}

/// The HTTP/2 connection preface a client sends first (RFC 9113, section 3.4).
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// HTTP/2's error code for "use HTTP/1.1 instead" (RFC 9113, section 7).
pub const HTTP_1_1_REQUIRED: u32 = 0xd;

/// How long a refused HTTP/2 client may keep sending after the refusal, before the connection
/// is dropped whatever it does.
pub const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// What the connection's first bytes say about its protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    /// The first `matched` bytes are a prefix of the HTTP/2 preface: it may still be one.
    Sniffing {
        matched: usize,
    },
    Http1,
    /// The HTTP/2 preface arrived: the refusal has been written up to `written` bytes.
    RefusingHttp2 {
        written: usize,
    },
    /// The refusal is out and the sending side closed; the client's remaining bytes are read
    /// and dropped until it closes too, or [`REFUSAL_LINGER`] passes.
    Lingering,
    /// The refusal is out; every further read fails.
    Refused,
}

/// The server's answer to the HTTP/2 preface: its own preface (an empty SETTINGS frame), then
/// GOAWAY with `HTTP_1_1_REQUIRED`, last stream 0 (no request was processed) and a reason.
pub fn http2_refusal() -> Vec<u8> {
    const REASON: &[u8] = b"cleartext HTTP/2 is not served here: use HTTP/1.1";
    fn frame(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
        let len = u32::try_from(payload.len()).unwrap_or(0);
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.extend_from_slice(&[kind, 0]);
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(payload);
    }
    let mut goaway = Vec::with_capacity(8 + REASON.len());
    goaway.extend_from_slice(&0u32.to_be_bytes());
    goaway.extend_from_slice(&HTTP_1_1_REQUIRED.to_be_bytes());
    goaway.extend_from_slice(REASON);
    let mut out = Vec::with_capacity(9 + 9 + goaway.len());
    frame(&mut out, 0x4, &[]);
    frame(&mut out, 0x7, &goaway);
    out
}

/// A connection whose requests must arrive within the header and read timeouts, and which
/// speaks HTTP/1 only.
pub struct RequestDeadline<T> {
    inner: T,
    header_timeout: Duration,
    read_timeout: Duration,
    phase: Phase,
    protocol: Protocol,
    timer: Pin<Box<Sleep>>,
    armed: Option<Instant>,
}

impl<T> RequestDeadline<T> {
    pub fn new(inner: T, header_timeout: Duration, read_timeout: Duration) -> Self {
        let now = Instant::now();
        Self {
            inner,
            header_timeout,
            read_timeout,
            phase: Phase::Head {
                head_by: now + header_timeout,
                request_by: now + read_timeout,
                tail: 0,
            },
            protocol: Protocol::Sniffing { matched: 0 },
            timer: Box::pin(tokio::time::sleep_until(now + read_timeout)),
            armed: None,
        }
    }

    /// The deadline that applies while waiting for bytes, if any.
    fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Idle => None,
            Phase::Head {
                head_by,
                request_by,
                ..
            } => Some(head_by.min(request_by)),
            Phase::Body { request_by } => Some(request_by),
        }
    }

    /// Advances the phase over bytes just read.
    fn saw(&mut self, bytes: &[u8]) {
        if self.phase == Phase::Idle {
            let now = Instant::now();
            self.phase = Phase::Head {
                head_by: now + self.header_timeout,
                request_by: now + self.read_timeout,
                tail: 0,
            };
        }
        if let Phase::Head {
            request_by,
            mut tail,
            ..
        } = self.phase
        {
            for byte in bytes {
                tail = (tail << 8) | u32::from(*byte);
                if ends_head(tail) {
                    // Bytes after the blank line are body (or a pipelined request, which
                    // hyper reads from its buffer after answering this one).
                    self.phase = Phase::Body { request_by };
                    return;
                }
            }
            if let Phase::Head { tail: t, .. } = &mut self.phase {
                *t = tail;
            }
        }
    }

    /// The server wrote: the current request has been read.
    fn answered(&mut self) {
        self.phase = Phase::Idle;
    }

    /// Follows the connection's first bytes (`new`, just read) against the HTTP/2 preface.
    /// Returns true when the preface is complete: the bytes must then not be handed on.
    fn sniff(&mut self, new: &[u8]) -> bool {
        let Protocol::Sniffing { matched } = self.protocol else {
            return false;
        };
        let rest = &H2_PREFACE[matched..];
        let n = new.len().min(rest.len());
        if new[..n] == rest[..n] {
            if matched + n == H2_PREFACE.len() {
                self.protocol = Protocol::RefusingHttp2 { written: 0 };
                return true;
            }
            self.protocol = Protocol::Sniffing {
                matched: matched + n,
            };
        } else {
            self.protocol = Protocol::Http1;
            // The bytes that looked like the preface were part of this HTTP/1 request's head.
            self.saw(&H2_PREFACE[..matched]);
        }
        false
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> RequestDeadline<T> {
    /// Writes the HTTP/2 refusal and closes the sending side, then reads and discards what the
    /// client still sends (for at most [`REFUSAL_LINGER`]) before failing the read, so that
    /// hyper drops the connection. Closing with the client's frames unread would make the
    /// kernel answer with a reset, which can destroy the refusal before the client reads it.
    fn poll_refuse(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let refusal = http2_refusal();
        loop {
            match self.protocol {
                Protocol::RefusingHttp2 { written } if written < refusal.len() => {
                    match Pin::new(&mut self.inner).poll_write(cx, &refusal[written..]) {
                        Poll::Ready(Ok(n)) if n > 0 => {
                            self.protocol = Protocol::RefusingHttp2 {
                                written: written + n,
                            };
                        }
                        Poll::Ready(_) => self.protocol = Protocol::Refused,
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Protocol::RefusingHttp2 { .. } => {
                    match Pin::new(&mut self.inner).poll_shutdown(cx) {
                        Poll::Ready(_) => {
                            let until = Instant::now() + REFUSAL_LINGER;
                            self.timer.as_mut().reset(until);
                            self.armed = Some(until);
                            self.protocol = Protocol::Lingering;
                        }
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Protocol::Lingering => {
                    let mut scratch = [0u8; 1024];
                    let mut discard = ReadBuf::new(&mut scratch);
                    match Pin::new(&mut self.inner).poll_read(cx, &mut discard) {
                        Poll::Ready(Ok(())) if !discard.filled().is_empty() => continue,
                        Poll::Ready(_) => self.protocol = Protocol::Refused,
                        Poll::Pending => match self.timer.as_mut().poll(cx) {
                            Poll::Ready(()) => self.protocol = Protocol::Refused,
                            Poll::Pending => return Poll::Pending,
                        },
                    }
                }
                Protocol::Refused | Protocol::Sniffing { .. } | Protocol::Http1 => {
                    return Poll::Ready(Err(http2_refused()));
                }
            }
        }
    }
}

/// `\r\n\r\n`, or `\n\n` (which HTTP/1 parsers also accept), ends a request head.
fn ends_head(tail: u32) -> bool {
    tail == u32::from_be_bytes(*b"\r\n\r\n")
        || tail & 0xFFFF == u32::from(u16::from_be_bytes(*b"\n\n"))
}

fn http2_refused() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionRefused,
        "the client opened with the HTTP/2 preface; only HTTP/1.1 is served",
    )
}

fn timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the client did not send its request within the header/read timeout",
    )
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for RequestDeadline<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.protocol {
            Protocol::RefusingHttp2 { .. } | Protocol::Lingering | Protocol::Refused => {
                return self.poll_refuse(cx);
            }
            Protocol::Sniffing { .. } | Protocol::Http1 => {}
        }
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if self.deadline().is_some_and(|d| Instant::now() >= d) {
                    return Poll::Ready(Err(timed_out()));
                }
                let filled = buf.filled().len();
                if filled > before {
                    if self.sniff(&buf.filled()[before..filled]) {
                        buf.set_filled(before);
                        return self.poll_refuse(cx);
                    }
                    if self.protocol == Protocol::Http1 {
                        self.saw(&buf.filled()[before..filled]);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => {
                let Some(deadline) = self.deadline() else {
                    return Poll::Pending;
                };
                if Instant::now() >= deadline {
                    return Poll::Ready(Err(timed_out()));
                }
                if self.armed != Some(deadline) {
                    self.timer.as_mut().reset(deadline);
                    self.armed = Some(deadline);
                }
                match self.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(timed_out())),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for RequestDeadline<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.answered();
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.answered();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const SHORT: Duration = Duration::from_secs(2);
    const LONG: Duration = Duration::from_secs(5);

    async fn read_some(conn: &mut RequestDeadline<tokio::io::DuplexStream>) -> io::Result<usize> {
        let mut buf = [0u8; 64];
        conn.read(&mut buf).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_cut_at_the_header_timeout() {
        let (_client, server) = tokio::io::duplex(1024);
        let mut conn = RequestDeadline::new(server, SHORT, LONG);
        let started = Instant::now();
        let err = read_some(&mut conn).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), SHORT);
    }

    #[tokio::test(start_paused = true)]
    async fn trickled_headers_are_cut_although_bytes_keep_coming() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut conn = RequestDeadline::new(server, SHORT, LONG);
        let started = Instant::now();
        let mut result = Ok(0);
        for byte in b"GET / HTTP/1.1\r\nHost: x\r\n" {
            client.write_all(&[*byte]).await.unwrap();
            result = read_some(&mut conn).await;
            if result.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() <= SHORT + Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_body_is_cut_at_the_read_timeout_and_an_answer_ends_the_clock() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut conn = RequestDeadline::new(server, SHORT, LONG);
        let started = Instant::now();
        client
            .write_all(b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\nab")
            .await
            .unwrap();
        read_some(&mut conn).await.unwrap();
        // Past the header timeout, the body is still allowed…
        tokio::time::sleep(SHORT + Duration::from_millis(500)).await;
        client.write_all(b"c").await.unwrap();
        read_some(&mut conn).await.unwrap();
        // …until the read timeout.
        let err = read_some(&mut conn).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), LONG);

        // A fresh connection: once the server answers, an idle client is not cut.
        let (mut client, server) = tokio::io::duplex(1024);
        let mut conn = RequestDeadline::new(server, SHORT, LONG);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        read_some(&mut conn).await.unwrap();
        conn.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        let idle = tokio::time::timeout(LONG * 3, read_some(&mut conn)).await;
        assert!(idle.is_err(), "no deadline between requests: {idle:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_http2_preface_is_answered_with_goaway_and_never_handed_on() {
        // In pieces, as a slow client might send it, followed by an unfinished header block.
        let (mut client, server) = tokio::io::duplex(1024);
        let mut conn = RequestDeadline::new(server, SHORT, LONG);
        client.write_all(&H2_PREFACE[..10]).await.unwrap();
        let mut buf = [0u8; 64];
        let n = conn.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], &H2_PREFACE[..10], "undecided bytes pass");
        client.write_all(&H2_PREFACE[10..]).await.unwrap();
        // A HEADERS frame on stream 1 without END_HEADERS: its block never ends.
        client
            .write_all(&[0, 0, 4, 0x1, 0x0, 0, 0, 0, 1, 0x82, 0x86, 0x84, 0x41])
            .await
            .unwrap();
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        assert!(conn.read(&mut buf).await.is_err(), "and stays refused");
        drop(conn);

        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, http2_refusal());
        // SETTINGS (empty), then GOAWAY: last stream 0, HTTP_1_1_REQUIRED.
        assert_eq!(&answer[..9], &[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
        assert_eq!(answer[12], 0x7, "GOAWAY");
        assert_eq!(&answer[18..22], &[0, 0, 0, 0]);
        assert_eq!(&answer[22..26], &HTTP_1_1_REQUIRED.to_be_bytes());
        let len = u32::from_be_bytes([0, answer[9], answer[10], answer[11]]) as usize;
        assert_eq!(answer.len(), 18 + len);
    }

    #[tokio::test(start_paused = true)]
    async fn http1_that_starts_like_the_preface_keeps_its_deadline() {
        // `P` (of POST/PUT/PATCH) matches the preface's first byte; the head still counts.
        let (mut client, server) = tokio::io::duplex(1024);
        let mut conn = RequestDeadline::new(server, SHORT, LONG);
        client.write_all(b"P").await.unwrap();
        read_some(&mut conn).await.unwrap();
        client
            .write_all(b"UT /x HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        read_some(&mut conn).await.unwrap();
        assert_eq!(conn.protocol, Protocol::Http1);
        assert!(matches!(conn.phase, Phase::Body { .. }), "{:?}", conn.phase);

        // A partial preface (which contains a blank line) stays under the header deadline.
        let (mut client, server) = tokio::io::duplex(1024);
        let mut conn = RequestDeadline::new(server, SHORT, LONG);
        let started = Instant::now();
        client.write_all(&H2_PREFACE[..20]).await.unwrap();
        read_some(&mut conn).await.unwrap();
        let err = read_some(&mut conn).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), SHORT);
    }
}
