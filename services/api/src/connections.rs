//! A bound on open HTTP connections (`HEIMDEX_MAX_CONNECTIONS`).
//!
//! Every connection costs a file descriptor and a task, and poem accepts as many as arrive: past
//! the process's descriptor limit, `accept` fails for everyone, health checks included. So
//! [`ConnectionLimit`] counts the connections it hands to the server and, at the bound, answers
//! the next ones itself and closes them, at once rather than leaving them queued:
//!
//! * `GET /healthz` (or `HEAD`) gets `200 {"status":"ok"}`, as from the API: a saturated server
//!   is alive, and an orchestrator probing liveness must not restart it for being busy;
//! * anything else gets `503` problem+json `too_many_connections` with `Retry-After: 1`.
//!
//! To tell them apart it reads the request line, which a client sends with its connection: at
//! most [`OVERFLOW_READ`] bytes, for at most [`OVERFLOW_WAIT`]. At most [`MAX_OVERFLOW`] such
//! answers are in progress at once; past that, connections are closed without a word.
//!
//! The default bound is 10,000 connections or what the descriptor limit allows after
//! [`FD_HEADROOM`], whichever is lower; [`raise_fd_limit`] first lifts the soft limit to the
//! hard one, as Go's runtime and nats-server do, because the usual soft limit (1,024) would
//! otherwise cap a server below a thousand clients.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use poem::http::uri::Scheme;
use poem::listener::Acceptor;
use poem::web::{LocalAddr, RemoteAddr};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::problem::Problem;

/// The bound when `HEIMDEX_MAX_CONNECTIONS` is unset (and the descriptor limit allows it).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Descriptors kept for everything but HTTP connections: NATS, the vector store's files, logs.
pub const FD_HEADROOM: u64 = 1_024;
/// Most over-the-bound connections being answered at once.
pub const MAX_OVERFLOW: usize = 256;
/// How long an over-the-bound connection may take to send its request line.
pub const OVERFLOW_WAIT: Duration = Duration::from_secs(1);
/// Most bytes read from an over-the-bound connection.
pub const OVERFLOW_READ: usize = 1_024;

#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error(
        "HEIMDEX_MAX_CONNECTIONS={bound} needs {needed} file descriptors, but this process may \
         open {limit} (RLIMIT_NOFILE): raise `ulimit -n` or lower the bound"
    )]
    TooFewDescriptors {
        bound: usize,
        needed: u64,
        limit: u64,
    },
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (once per process is enough; later calls
/// change nothing) and returns the soft limit in force. `None` where it cannot be read.
#[cfg(unix)]
pub fn raise_fd_limit() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Some(hard);
    }
    Some(soft)
}

#[cfg(not(unix))]
pub fn raise_fd_limit() -> Option<u64> {
    None
}

/// The bound to use: the configured one if the descriptors allow it (an error if not), else the
/// default, lowered to what the descriptors allow.
pub fn effective_bound(
    configured: Option<usize>,
    fd_limit: Option<u64>,
) -> Result<usize, LimitError> {
    let allowed = fd_limit.map(|limit| limit.saturating_sub(FD_HEADROOM));
    match (configured, allowed) {
        (Some(bound), Some(allowed)) if bound as u64 > allowed => {
            Err(LimitError::TooFewDescriptors {
                bound,
                needed: bound as u64 + FD_HEADROOM,
                limit: fd_limit.unwrap_or_default(),
            })
        }
        (Some(bound), _) => Ok(bound),
        (None, Some(allowed)) => Ok(DEFAULT_MAX_CONNECTIONS
            .min(usize::try_from(allowed).unwrap_or(usize::MAX))
            .max(1)),
        (None, None) => Ok(DEFAULT_MAX_CONNECTIONS),
    }
}

/// Wraps an acceptor: hands on at most `bound` open connections, answers the rest itself.
pub struct ConnectionLimit<A> {
    inner: A,
    open: Arc<Semaphore>,
    overflow: Arc<Semaphore>,
    bound: usize,
    refusal: Arc<[u8]>,
}

impl<A> ConnectionLimit<A> {
    pub fn new(inner: A, bound: usize) -> Self {
        Self {
            inner,
            open: Arc::new(Semaphore::new(bound)),
            overflow: Arc::new(Semaphore::new(MAX_OVERFLOW)),
            bound,
            refusal: refusal(bound).into(),
        }
    }

    pub fn bound(&self) -> usize {
        self.bound
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.bound - self.open.available_permits()
    }
}

impl<A: Acceptor> Acceptor for ConnectionLimit<A> {
    type Io = Counted<A::Io>;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(&mut self) -> io::Result<(Self::Io, LocalAddr, RemoteAddr, Scheme)> {
        loop {
            let (io, local, remote, scheme) = self.inner.accept().await?;
            if let Ok(permit) = self.open.clone().try_acquire_owned() {
                return Ok((
                    Counted {
                        inner: io,
                        _permit: permit,
                    },
                    local,
                    remote,
                    scheme,
                ));
            }
            match self.overflow.clone().try_acquire_owned() {
                Ok(permit) => {
                    tracing::debug!(%remote, bound = self.bound, "over the connection bound");
                    metrics::counter!("heimdex_http_connections_refused_total").increment(1);
                    tokio::spawn(answer_overflow(io, self.refusal.clone(), permit));
                }
                // Too many being answered already: closing is the cheapest refusal.
                Err(_) => drop(io),
            }
        }
    }
}

/// An accepted connection, counted against the bound until it is dropped.
pub struct Counted<T> {
    inner: T,
    _permit: OwnedSemaphorePermit,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What an over-the-bound connection asked for, from its first bytes.
#[derive(Debug, PartialEq, Eq)]
enum Overflow {
    Liveness,
    Other,
    /// The request line has not arrived yet.
    Unknown,
}

fn classify(head: &[u8]) -> Overflow {
    let Some(end) = head.iter().position(|&b| b == b'\n') else {
        return if head.len() >= OVERFLOW_READ {
            Overflow::Other
        } else {
            Overflow::Unknown
        };
    };
    let mut parts = head[..end].split(|&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    if (method == b"GET" || method == b"HEAD") && path == b"/healthz" {
        Overflow::Liveness
    } else {
        Overflow::Other
    }
}

async fn answer_overflow<T: AsyncRead + AsyncWrite + Unpin>(
    mut io: T,
    refusal: Arc<[u8]>,
    _permit: OwnedSemaphorePermit,
) {
    let mut head = Vec::with_capacity(256);
    let read = tokio::time::timeout(OVERFLOW_WAIT, async {
        let mut chunk = [0u8; 256];
        loop {
            match classify(&head) {
                Overflow::Unknown => {}
                decided @ (Overflow::Liveness | Overflow::Other) => return decided,
            }
            match io.read(&mut chunk).await {
                Ok(0) | Err(_) => return Overflow::Unknown,
                Ok(n) => head.extend_from_slice(&chunk[..n.min(OVERFLOW_READ - head.len())]),
            }
        }
    })
    .await;
    let answer: &[u8] = match read {
        Ok(Overflow::Liveness) => LIVENESS,
        Ok(Overflow::Other) => &refusal,
        // Silent, or gone: nothing to answer.
        Ok(Overflow::Unknown) | Err(_) => return,
    };
    let _ = tokio::time::timeout(OVERFLOW_WAIT, async {
        io.write_all(answer).await?;
        io.shutdown().await
    })
    .await;
}

/// The API's `/healthz` answer, for a connection over the bound.
const LIVENESS: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json; charset=utf-8\r\n\
content-length: 15\r\nconnection: close\r\n\r\n{\"status\":\"ok\"}";

fn refusal(bound: usize) -> Vec<u8> {
    let problem = Problem::new(
        poem::http::StatusCode::SERVICE_UNAVAILABLE,
        "too_many_connections",
        "Too many connections",
        format!(
            "the server holds its maximum of {bound} open connections \
             (HEIMDEX_MAX_CONNECTIONS); retry after the time in Retry-After"
        ),
    );
    let body = serde_json::json!({
        "type": problem.problem_type,
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
        "code": problem.code,
    })
    .to_string();
    let mut response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: {}\r\nretry-after: 1\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        crate::problem::PROBLEM_JSON,
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(body.as_bytes());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_is_told_apart_by_its_request_line() {
        assert_eq!(classify(b"GET /healthz HTTP/1.1\r\n"), Overflow::Liveness);
        assert_eq!(
            classify(b"HEAD /healthz?x=1 HTTP/1.1\r\n"),
            Overflow::Liveness
        );
        assert_eq!(classify(b"GET /readyz HTTP/1.1\r\n"), Overflow::Other);
        assert_eq!(classify(b"POST /healthz HTTP/1.1\r\n"), Overflow::Other);
        assert_eq!(classify(b"GET /healthz/x HTTP/1.1\r\n"), Overflow::Other);
        assert_eq!(classify(b"GET /heal"), Overflow::Unknown);
        assert_eq!(classify(&[b'a'; OVERFLOW_READ]), Overflow::Other);
    }

    #[test]
    fn the_bound_fits_the_descriptors() {
        assert_eq!(
            effective_bound(None, None).unwrap(),
            DEFAULT_MAX_CONNECTIONS
        );
        assert_eq!(
            effective_bound(None, Some(1_048_576)).unwrap(),
            DEFAULT_MAX_CONNECTIONS
        );
        assert_eq!(effective_bound(None, Some(4_096)).unwrap(), 4_096 - 1_024);
        assert_eq!(effective_bound(Some(50), Some(4_096)).unwrap(), 50);
        let err = effective_bound(Some(20_000), Some(4_096)).unwrap_err();
        assert!(
            err.to_string().contains("HEIMDEX_MAX_CONNECTIONS=20000"),
            "{err}"
        );
    }

    #[test]
    fn the_refusal_is_a_complete_problem_response() {
        let text = String::from_utf8(refusal(7)).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
        assert!(head.contains("retry-after: 1"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let problem: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(problem["code"], "too_many_connections");
        assert_eq!(problem["status"], 503);
        let live = std::str::from_utf8(LIVENESS).unwrap();
        let (_, body) = live.split_once("\r\n\r\n").unwrap();
        assert!(live.contains(&format!("content-length: {}", body.len())));
    }

    #[tokio::test]
    async fn over_the_bound_liveness_is_answered_and_the_rest_refused() {
        for (request, status) in [
            (&b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"[..], "200"),
            (
                &b"POST /vectors/mock HTTP/1.1\r\nhost: x\r\n\r\n"[..],
                "503",
            ),
        ] {
            let (mut client, server) = tokio::io::duplex(4096);
            let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
            let answering = tokio::spawn(answer_overflow(server, refusal(1).into(), permit));
            client.write_all(request).await.unwrap();
            let mut answer = String::new();
            client.read_to_string(&mut answer).await.unwrap();
            answering.await.unwrap();
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {status} ")),
                "{answer}"
            );
        }
    }
}
