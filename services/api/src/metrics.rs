//! `GET /metrics`: every metric of the process in the Prometheus text format, on the API's port
//! ([`endpoint`], mounted by [`crate::routes`]) or on a listener of its own ([`MetricsServer`])
//! for processes without the API (`heimdex worker`, `heimdex projector`) or that want it apart.
//! Unauthenticated, as scrapers expect: it holds counts by route, job type and error code,
//! never a tenant's data or id.

use std::net::SocketAddr;
use std::time::Duration;

use poem::listener::{Acceptor, Listener, TcpAcceptor, TcpListener};
use poem::{Endpoint, EndpointExt, Response, Route, Server};
use tokio_util::sync::CancellationToken;

use heimdex_telemetry::metrics::{CONTENT_TYPE, render};

/// The `/metrics` handler.
pub fn endpoint() -> impl Endpoint<Output = Response> {
    poem::get(poem::endpoint::make_sync(|_| {
        Response::builder()
            .content_type(CONTENT_TYPE)
            .body(render())
    }))
}

/// The method label of a request: the standard methods by name, anything else `OTHER`, so a
/// client inventing methods cannot mint new series.
pub fn method_label(method: &poem::http::Method) -> &'static str {
    use poem::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "OTHER",
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot bind the metrics listener to {addr} (HEIMDEX_METRICS_ADDR)")]
pub struct MetricsBindError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// A listener that serves `/metrics` (and nothing else: any other path is a 404).
pub struct MetricsServer {
    acceptor: TcpAcceptor,
    addr: SocketAddr,
}

impl MetricsServer {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr) -> Result<Self, MetricsBindError> {
        let acceptor = TcpListener::bind(addr.to_string())
            .into_acceptor()
            .await
            .map_err(|source| MetricsBindError { addr, source })?;
        let addr = acceptor
            .local_addr()
            .first()
            .and_then(|local| local.as_socket_addr().copied())
            .unwrap_or(addr);
        Ok(Self { acceptor, addr })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        tracing::info!(addr = %self.addr, "metrics listening");
        let app = Route::new()
            .at("/metrics", endpoint())
            .catch_all_error(crate::problem::catch_all);
        Server::new_with_acceptor(self.acceptor)
            .idle_timeout(Duration::from_secs(60))
            .run_with_graceful_shutdown(
                app,
                async move { shutdown.cancelled().await },
                Some(Duration::from_secs(1)),
            )
            .await
    }
}
