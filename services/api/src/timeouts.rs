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

/// A connection whose requests must arrive within the header and read timeouts.
pub struct RequestDeadline<T> {
    inner: T,
    header_timeout: Duration,
    read_timeout: Duration,
    phase: Phase,
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
}

/// `\r\n\r\n`, or `\n\n` (which HTTP/1 parsers also accept), ends a request head.
fn ends_head(tail: u32) -> bool {
    tail == u32::from_be_bytes(*b"\r\n\r\n")
        || tail & 0xFFFF == u32::from(u16::from_be_bytes(*b"\n\n"))
}

fn timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the client did not send its request within the header/read timeout",
    )
}

impl<T: AsyncRead + Unpin> AsyncRead for RequestDeadline<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if self.deadline().is_some_and(|d| Instant::now() >= d) {
                    return Poll::Ready(Err(timed_out()));
                }
                let filled = buf.filled().len();
                if filled > before {
                    self.saw(&buf.filled()[before..filled]);
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
}
