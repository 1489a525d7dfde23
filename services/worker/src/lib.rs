//! The embedding worker: a durable pull consumer of `requested` and `retried` events. For each
//! job it publishes `started`, does the job — computes the vector (the mock vector, or the text
//! embedded by the job's model) and upserts it under its deterministic point id, or deletes the
//! tenant's point or asset — and publishes `succeeded`, or, when the job cannot succeed, `failed`
//! with the reason. A `retried` event runs a FAILED job again, as a new round (module `job`).
//!
//! Messages are handled in batches (whatever the consumer has ready, up to a bound), so one
//! vector-store write and its flush serve many jobs, and the texts of every batch in flight are
//! embedded together ([`embedding`]). Store work runs in stream order within a batch. Input
//! that can never succeed (blank text, unknown model or version, wrong dimension) fails on its
//! first attempt; everything else is retried with backoff until the last delivery.
//! Delivery is at-least-once: a job whose status is already terminal is skipped, point ids are
//! deterministic and event ids are `<job>:<event>:<attempt>`, so a redelivery changes nothing.

pub mod advisory;
mod backoff;
pub mod embedding;
mod job;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{AckKind, Context, kv};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};

use heimdex_core::shutdown::CancellationToken;
use heimdex_store::VectorStore;

pub use backoff::retry_delay;
pub use job::{Disposition, Outcome};

/// Tunables; `from_settings` gives the service defaults.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Messages pulled per batch (and at most in flight per batch).
    pub batch_size: usize,
    /// Batches processed at once.
    pub batches_in_flight: usize,
    /// Deliveries before a job is given up (the consumer's `max_deliver`).
    pub max_deliver: u32,
    /// The consumer's `ack_wait`; progress acks are sent at a third of it.
    pub ack_wait: Duration,
    pub collection: String,
    pub vector_size: usize,
}

impl WorkerConfig {
    pub fn new(
        settings: &heimdex_core::Settings,
        definitions: &heimdex_core::jetstream::Definitions,
    ) -> Self {
        Self {
            batch_size: settings.worker.concurrency.clamp(1, 1_000),
            batches_in_flight: 4,
            max_deliver: definitions.worker_max_deliver(),
            ack_wait: definitions.worker.ack_wait,
            collection: settings.qdrant.collection.clone(),
            vector_size: settings.qdrant.vector_size,
        }
    }
}

#[derive(Clone)]
pub struct WorkerDeps {
    pub js: Context,
    pub status: kv::Store,
    pub consumer: PullConsumer,
    pub store: Arc<dyn VectorStore>,
    /// The models jobs may name.
    pub models: Arc<heimdex_embed::Registry>,
}

#[derive(Clone)]
pub struct Worker {
    config: Arc<WorkerConfig>,
    deps: WorkerDeps,
    /// Whether the collection is known to exist; until then each batch tries to create it.
    collection_ready: Arc<AtomicBool>,
    /// Embeds the texts of every batch in flight, merged.
    embeddings: embedding::EmbedQueue,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("vector store: {0}")]
    Store(#[from] heimdex_store::StoreError),
}

impl Worker {
    /// Creates the collection (idempotently) so the first job does not pay for it. A vector
    /// store that is down is not fatal: jobs retry (with backoff) until it is back, and the
    /// collection is created then. One that refuses the collection (say, it exists with another
    /// vector size) is a configuration error.
    pub async fn build(config: WorkerConfig, deps: WorkerDeps) -> Result<Self, WorkerError> {
        let ready = match deps.store.ensure_collection().await {
            Ok(()) => true,
            Err(err) if err.is_retryable() => {
                tracing::warn!(%err, "vector store unavailable at start-up; jobs will retry");
                false
            }
            Err(err) => return Err(err.into()),
        };
        Ok(Self {
            config: Arc::new(config),
            deps,
            collection_ready: Arc::new(AtomicBool::new(ready)),
            embeddings: embedding::EmbedQueue::start(),
        })
    }

    /// Consumes until `shutdown` is cancelled. Batches in flight finish; messages already
    /// pulled but not started are NAKed so another worker takes them at once.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(batch = self.config.batch_size, "worker consuming");
        while let Some(messages) = heimdex_core::jetstream::pull_stream(
            &self.deps.consumer,
            self.config.batch_size,
            &shutdown,
        )
        .await
        {
            self.consume(messages, &shutdown).await;
        }
        tracing::info!("worker stopped");
    }

    async fn consume(
        &self,
        messages: async_nats::jetstream::consumer::pull::Stream,
        shutdown: &CancellationToken,
    ) {
        let mut batches = messages.ready_chunks(self.config.batch_size);
        let mut in_flight = FuturesUnordered::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                batch = batches.next(), if in_flight.len() < self.config.batches_in_flight => {
                    let Some(batch) = batch else { break };
                    let mut ready = Vec::with_capacity(batch.len());
                    for message in batch {
                        match message {
                            Ok(message) => ready.push(message),
                            Err(err) => tracing::warn!(%err, "worker consumer stream error"),
                        }
                    }
                    if !ready.is_empty() {
                        in_flight.push(self.handle_batch(ready));
                    }
                }
            }
        }
        while in_flight.next().await.is_some() {}
        if shutdown.is_cancelled() {
            // Hand back what was pulled but not started.
            while let Some(Some(batch)) = batches.next().now_or_never() {
                for message in batch.into_iter().flatten() {
                    let _ = message.ack_with(AckKind::Nak(None)).await;
                }
            }
        }
    }

    /// Processes one batch of messages and acknowledges each as its outcome dictates, sending
    /// progress acks while the work runs so nothing is redelivered mid-way.
    pub async fn handle_batch(&self, messages: Vec<async_nats::jetstream::Message>) {
        tracing::debug!(messages = messages.len(), "worker batch");
        let work = job::process(
            &self.config,
            &self.deps,
            &self.embeddings,
            &self.collection_ready,
            &messages,
        );
        tokio::pin!(work);
        let mut progress = tokio::time::interval(self.config.ack_wait / 3);
        progress.tick().await;
        let outcomes = loop {
            tokio::select! {
                outcomes = &mut work => break outcomes,
                _ = progress.tick() => {
                    for message in &messages {
                        let _ = message.ack_with(AckKind::Progress).await;
                    }
                }
            }
        };
        for (message, outcome) in messages.iter().zip(outcomes) {
            let kind = match outcome.disposition {
                Disposition::Ack => AckKind::Ack,
                Disposition::Retry(delay) => AckKind::Nak(Some(delay)),
                Disposition::Term => AckKind::Term,
                // Leave unacknowledged: redelivered after `ack_wait` (used when NATS itself
                // failed mid-job and nothing can be recorded).
                Disposition::Abandon => continue,
            };
            if let Err(err) = message.ack_with(kind).await {
                tracing::warn!(%err, "cannot acknowledge message");
            }
        }
    }
}
