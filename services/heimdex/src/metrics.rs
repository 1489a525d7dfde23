//! What a process's metrics need besides the counters its services keep: the listener of its
//! own (`HEIMDEX_METRICS_ADDR`, or the default for processes without the API), and the gauges
//! read from outside every few seconds — the worker backlog and the projector lag (from their
//! consumers' info), whether NATS and the vector store answer, and what the store holds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::stream::Stream;
use heimdex_api::metrics::{MetricsBindError, MetricsServer};
use heimdex_event_store::jetstream::{PROJECTOR_CONSUMER, WORKER_CONSUMER};
use heimdex_store::{StoreKind, VectorStore};
use tokio_util::sync::CancellationToken;

use crate::serve::Roles;

/// Where a process without the API serves `/metrics` when `HEIMDEX_METRICS_ADDR` is unset.
pub const DEFAULT_METRICS_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9464);

/// How often the sampled gauges are read. Scrapers come every 15 s or so; a figure at most this
/// old is fresh enough, and the reads cost JetStream next to nothing.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// The address of the process's own metrics listener: the configured one, else
/// [`DEFAULT_METRICS_ADDR`] for a process that does not serve the API (whose port has
/// `/metrics`), else none.
pub fn listener_addr(configured: Option<SocketAddr>, roles: Roles) -> Option<SocketAddr> {
    configured.or((!roles.api).then_some(DEFAULT_METRICS_ADDR))
}

/// Binds the metrics listener.
pub async fn bind(addr: SocketAddr) -> Result<MetricsServer, MetricsBindError> {
    MetricsServer::bind(addr).await
}

/// What the sampler reads.
pub struct Sampler {
    pub stream: Stream,
    pub roles: Roles,
    pub store: Option<Arc<dyn VectorStore>>,
    /// Bound on one read (the readiness probes' timeout).
    pub timeout: Duration,
}

impl Sampler {
    /// Samples every [`SAMPLE_INTERVAL`] until `shutdown`, the first time at once.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => self.sample().await,
            }
        }
    }

    async fn sample(&self) {
        let mut stream = self.stream.clone();
        let nats_up = matches!(
            tokio::time::timeout(self.timeout, stream.info()).await,
            Ok(Ok(_))
        );
        metrics::gauge!("heimdex_nats_up").set(f64::from(u8::from(nats_up)));
        if nats_up {
            if self.roles.worker
                && let Some(backlog) = self.pending(WORKER_CONSUMER).await
            {
                metrics::gauge!("heimdex_worker_backlog_jobs").set(backlog as f64);
            }
            if self.roles.projector
                && let Some(lag) = self.pending(PROJECTOR_CONSUMER).await
            {
                metrics::gauge!("heimdex_projector_lag_events").set(lag as f64);
            }
        }
        if let Some(store) = &self.store {
            let up = matches!(
                tokio::time::timeout(self.timeout, store.probe()).await,
                Ok(Ok(()))
            );
            let backend = match store.kind() {
                StoreKind::Embedded => "embedded",
                StoreKind::Remote => "remote",
            };
            metrics::gauge!("heimdex_vector_store_up", "backend" => backend)
                .set(f64::from(u8::from(up)));
            if up {
                match tokio::time::timeout(self.timeout, store.sample_gauges()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => tracing::debug!(%err, "cannot read the vector store's size"),
                    Err(_) => tracing::debug!("reading the vector store's size timed out"),
                }
            }
        }
        heimdex_telemetry::metrics::run_upkeep();
    }

    /// A consumer's pending plus ack-pending messages; `None` (and the gauge keeps its last
    /// figure) when it cannot be read.
    async fn pending(&self, consumer: &str) -> Option<u64> {
        match tokio::time::timeout(self.timeout, self.stream.consumer_info(consumer)).await {
            Ok(Ok(info)) => Some(info.num_pending + info.num_ack_pending as u64),
            Ok(Err(err)) => {
                tracing::debug!(%err, consumer, "cannot read the consumer's pending count");
                None
            }
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_without_the_api_get_a_listener_of_their_own() {
        let worker = Roles {
            worker: true,
            ..Roles::default()
        };
        assert_eq!(listener_addr(None, worker), Some(DEFAULT_METRICS_ADDR));
        assert_eq!(listener_addr(None, Roles::ALL), None);
        let set = "0.0.0.0:9100".parse().ok();
        assert_eq!(listener_addr(set, Roles::ALL), set);
        assert_eq!(listener_addr(set, worker), set);
    }
}
