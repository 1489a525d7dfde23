//! `heimdex-qdrant-standin`: a **test-only** stand-in for a Qdrant server.
//!
//! # What it is
//!
//! The real Qdrant engine — its segment, index, filter and WAL code, as shipped in the
//! [`qdrant-edge`](https://crates.io/crates/qdrant-edge) crate that Heimdex's embedded adapter
//! also uses — behind Qdrant's real gRPC API (the tonic server traits generated from Qdrant's
//! proto files, shipped in `qdrant-client`). A client such as Heimdex's remote adapter cannot
//! tell it from a server for the RPCs it serves.
//!
//! # Why it exists
//!
//! Heimdex's remote adapter, its fault-injection tests and its scale-out topology (several
//! worker and API processes sharing one vector store) need a Qdrant *server* — a separate
//! process on a TCP port. No package registry reachable from CI (crates.io, PyPI, Debian, npm)
//! carries Qdrant's server binary, and Docker is not available, so the tests start this
//! stand-in instead. When `QDRANT_URL` is set, the tests use that real server and the stand-in
//! is not started. It is never part of a Heimdex deployment.
//!
//! # What it serves
//!
//! Exactly the RPCs Heimdex uses, with Qdrant's semantics: `HealthCheck`; collections `Get`,
//! `List`, `Create` (one unnamed dense vector, plus named sparse vectors with or without the
//! IDF modifier), `Delete`, `CollectionExists`; points `Upsert` (the unnamed vector alone, or
//! named dense and sparse vectors), `UpdateVectors` (with `update_filter`),
//! `CreateVectorName`, `Delete` (by ids or filter), `Get`, `Scroll`, `Count`, `Search`,
//! `Query` and `QueryBatch` (the query API: nearest by a dense or sparse vector with `using`,
//! nested prefetches, RRF with `k` and weights, DBSF, nearest with MMR, or no query = id
//! order), `CreateFieldIndex`, `DeleteFieldIndex`. Filters support `must` / `should` /
//! `must_not` / `min_should`, nested filters, match (keyword, integer, bool, text, any,
//! except), range, `has_id`, `has_vector`, `is_empty`, `is_null`. Every other RPC, and every
//! option of a served RPC that is not translated (multi-dense vectors, geo filters, shard
//! keys, …), answers `Unimplemented` with a message saying so. API keys are not checked.
//!
//! The stand-in runs the same engine as Heimdex's embedded store, so it cannot show that a
//! Qdrant server ranks as the embedded store does; [`real::RealQdrant`] starts a real server
//! for that when one is at hand.
//!
//! # Durability and concurrency
//!
//! Data lives in `<data dir>/collections/<name>/`, one Edge shard per collection. Every write is
//! flushed before it is answered (whatever `wait` says), so a stand-in killed with `kill -9`
//! and restarted on the same data dir still has every acknowledged point. Any number of clients
//! may call concurrently: writes to a collection are serialised, reads run in parallel. Two
//! stand-ins cannot open the same data dir (the engine locks it).

#![forbid(unsafe_code)]

mod convert;
pub mod real;
mod registry;
mod service;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use qdrant_client::qdrant::collections_server::CollectionsServer;
use qdrant_client::qdrant::points_server::PointsServer;
use qdrant_client::qdrant::qdrant_server::QdrantServer;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::registry::Registry;
use crate::service::Service;

/// Largest gRPC message accepted or sent; Qdrant's own limit is far above what Heimdex sends.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// How long [`Standin::stop`] waits for open connections to finish.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Why a stand-in could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot open data dir: {0}")]
    Data(String),
}

/// A running stand-in. Dropping it stops it (and closes its collections); [`Standin::stop`]
/// does the same but waits for open requests to finish first.
pub struct Standin {
    addr: SocketAddr,
    registry: Arc<Registry>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl std::fmt::Debug for Standin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Standin")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Standin {
    /// Opens (or initialises) `data_dir`, binds `listen` (port 0 picks a free port) and serves
    /// on the current tokio runtime. Returns once the port accepts connections.
    pub async fn start(
        data_dir: impl Into<PathBuf>,
        listen: SocketAddr,
    ) -> Result<Self, StartError> {
        let data_dir = data_dir.into();
        let registry = tokio::task::spawn_blocking(move || Registry::open(&data_dir))
            .await
            .map_err(|e| StartError::Data(format!("loading task failed: {e}")))?
            .map_err(StartError::Data)?;
        let registry = Arc::new(registry);
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: listen,
            source,
        })?;

        let service = Service::new(Arc::clone(&registry));
        let (shutdown, stopped) = oneshot::channel::<()>();
        let router = tonic::transport::Server::builder()
            .add_service(QdrantServer::new(service.clone()))
            .add_service(
                CollectionsServer::new(service.clone())
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(
                PointsServer::new(service)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            );
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
            // A dropped sender also means "stop".
            let _ = stopped.await;
        }));
        tracing::info!(%addr, "qdrant stand-in listening");
        Ok(Self {
            addr,
            registry,
            shutdown: Some(shutdown),
            server: Some(server),
        })
    }

    /// `http://<ip>:<port>`, for `QDRANT_URL` / `qdrant_client::Qdrant::from_url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets open connections finish (up to a few seconds), then flushes and
    /// closes every collection.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            match tokio::time::timeout(STOP_GRACE, server).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "stand-in server failed"),
                Ok(Err(e)) => tracing::warn!(error = %e, "stand-in server task failed"),
                Err(_) => tracing::warn!("stand-in connections still open after the grace period"),
            }
        }
        let registry = Arc::clone(&self.registry);
        let _ = tokio::task::spawn_blocking(move || registry.close_all()).await;
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
        // Releases the data dir at once, so a test can restart on it right away.
        self.registry.close_all();
    }
}
