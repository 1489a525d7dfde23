//! The embedding worker: a durable pull consumer of `requested` and `retried` events. For each
//! job it publishes `started`, does the job — computes the vector (the mock vector, or the text
//! embedded by the job's model) and upserts it under its deterministic point id, or deletes the
//! tenant's point or asset — and publishes `succeeded`, or, when the job cannot succeed, `failed`
//! with the reason. A `retried` event runs a FAILED job again, as a new round (module `job`).
//!
//! Messages are handled in batches (whatever the consumer has ready, up to a bound), so one
//! vector-store write and its flush serve many jobs, and the texts of a batch go to the process's
//! one embedding queue ([`heimdex_embed::EmbedQueue`], shared with search), which merges the
//! batches waiting there. Store work runs in stream order within a batch. Input
//! that can never succeed (blank text, unknown model or version, wrong dimension) fails on its
//! first attempt; everything else is retried with backoff until the last delivery.
//! Delivery is at-least-once: a job whose status is already terminal is skipped, point ids are
//! deterministic and event ids are `<job>:<event>:<attempt>`, so a redelivery changes nothing.
//!
//! Beside the worker runs the [`indexer`]: it rebuilds the index from the log into a new
//! collection and keeps the collections the workers do not write given every job.

pub mod advisory;
mod backoff;
pub mod indexer;
mod job;
mod order;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::PullConsumer;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};

use heimdex_store::Collections;
use tokio_util::sync::CancellationToken;

pub use backoff::retry_delay;
pub use job::Outcome;

/// How long one pull waits for messages before it is renewed (when nothing comes).
const PULL_EXPIRES: Duration = Duration::from_secs(2);

/// The messages that have arrived on `pull` (waiting for the first, then taking what is there,
/// at most `max`), and whether the pull has ended. Stream errors are logged and skipped.
async fn next_ready(
    pull: Option<&mut async_nats::jetstream::consumer::pull::Batch>,
    max: usize,
) -> (Vec<async_nats::jetstream::Message>, bool) {
    let Some(pull) = pull else {
        return (Vec::new(), true);
    };
    let mut arrived = Vec::new();
    loop {
        match pull.next().await {
            None => return (arrived, true),
            Some(Ok(message)) => arrived.push(message),
            Some(Err(err)) => {
                tracing::warn!(%err, "worker consumer pull error");
                continue;
            }
        }
        while arrived.len() < max {
            match pull.next().now_or_never() {
                Some(Some(Ok(message))) => arrived.push(message),
                Some(Some(Err(err))) => tracing::warn!(%err, "worker consumer pull error"),
                Some(None) => return (arrived, true),
                None => break,
            }
        }
        return (arrived, false);
    }
}

/// The worker role's configuration; [`WorkerConfig::new`] gives the service defaults.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Messages handled together (one `handle_batch`) at most.
    pub batch_size: usize,
    /// Batches processed at once; `batch_size × batches_in_flight` messages are the most a
    /// worker holds.
    pub batches_in_flight: usize,
    /// Deliveries before a job is given up (the consumer's `max_deliver`).
    pub max_deliver: u32,
    /// The consumer's `ack_wait`; progress acks are sent at a third of it.
    pub ack_wait: Duration,
    pub collection: String,
    pub vector_size: usize,
}

impl WorkerConfig {
    /// `concurrency` messages per batch (`HEIMDEX_WORKER_CONCURRENCY`, clamped to 1..=1000); the
    /// delivery settings come from the worker consumer's definition, the collection and vector
    /// size from the store's configuration.
    pub fn new(
        concurrency: usize,
        definitions: &heimdex_event_store::jetstream::Definitions,
        store: &heimdex_store::StoreConfig,
    ) -> Self {
        Self {
            batch_size: concurrency.clamp(1, 1_000),
            batches_in_flight: 4,
            max_deliver: definitions.worker_max_deliver(),
            ack_wait: definitions.worker.ack_wait,
            collection: store.collection.clone(),
            vector_size: store.vector_size,
        }
    }
}

#[derive(Clone)]
pub struct WorkerDeps {
    /// Where the job's events are recorded, and read back by the terminal guard.
    pub log: heimdex_event_store::JobLog,
    /// The job-status projection, read by the terminal guard.
    pub statuses: heimdex_event_store::StatusStore,
    /// The vector collections: jobs are written to the live one (taken once per batch).
    pub collections: Arc<Collections>,
    /// The models jobs may name.
    pub models: Arc<heimdex_embed::Registry>,
    /// The process's embedding queue (shared with search, which goes first).
    pub embeddings: heimdex_embed::EmbedQueue,
    /// Uploaded files, which document jobs of files name.
    pub files: heimdex_event_store::FileStore,
}

#[derive(Clone)]
pub struct Worker {
    config: Arc<WorkerConfig>,
    deps: WorkerDeps,
    /// The durable consumer of `requested` and `retried` events.
    consumer: PullConsumer,
    /// Whether the collection is known to exist; until then each batch tries to create it.
    collection_ready: Arc<AtomicBool>,
    /// Embeds the texts of every batch in flight (`deps.embeddings`).
    embeddings: heimdex_embed::EmbedQueue,
    /// Keeps jobs on the same asset or point in stream order across batches in flight.
    gate: Arc<order::Gate>,
    /// Cancelled when the worker stops: a job held because the log cannot take its events
    /// is abandoned then.
    stopping: CancellationToken,
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
    pub async fn build(
        config: WorkerConfig,
        deps: WorkerDeps,
        consumer: PullConsumer,
    ) -> Result<Self, WorkerError> {
        let ready = match deps.collections.live().store.ensure_collection().await {
            Ok(()) => true,
            Err(err) if err.is_retryable() => {
                tracing::warn!(%err, "vector store unavailable at start-up; jobs will retry");
                false
            }
            Err(err) => return Err(err.into()),
        };
        Ok(Self {
            config: Arc::new(config),
            embeddings: deps.embeddings.clone(),
            deps,
            consumer,
            collection_ready: Arc::new(AtomicBool::new(ready)),
            gate: Arc::new(order::Gate::default()),
            stopping: CancellationToken::new(),
        })
    }

    /// Consumes until `shutdown` is cancelled. Batches in flight finish; messages already
    /// pulled but not started are NAKed so another worker takes them at once.
    ///
    /// Intake is demand-driven and every message in hand is kept alive: a pull asks for no more
    /// than the worker holds at most (`batch_size × batches_in_flight`, minus what it holds),
    /// messages wait for a free batch slot in a queue of the worker's own (so that, under load,
    /// batches fill up), and that queue gets a progress ack every third of the ack wait, as
    /// batches in work do. So however slow the work, no message sits unacknowledged until its
    /// ack wait runs out and is delivered again, to another worker that would do it twice.
    pub async fn run(mut self, shutdown: CancellationToken) {
        self.stopping = shutdown.clone();
        tracing::info!(batch = self.config.batch_size, "worker consuming");
        let capacity = self.config.batch_size * self.config.batches_in_flight;
        let mut in_hand = 0usize;
        let mut queued: VecDeque<async_nats::jetstream::Message> = VecDeque::new();
        let mut in_flight = FuturesUnordered::new();
        let mut pull: Option<async_nats::jetstream::consumer::pull::Batch> = None;
        let mut progress = tokio::time::interval(self.config.ack_wait / 3);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            while in_flight.len() < self.config.batches_in_flight && !queued.is_empty() {
                let take = queued.len().min(self.config.batch_size);
                let batch: Vec<_> = queued.drain(..take).collect();
                // The ticket is taken here, in delivery order, not when the work starts.
                let ticket = self.gate.enter(touched(&batch));
                let work = self.handle_in_turn(batch, ticket);
                in_flight.push(async move {
                    work.await;
                    take
                });
            }
            if pull.is_none() && in_hand < capacity {
                match self
                    .consumer
                    .batch()
                    .max_messages(capacity - in_hand)
                    .expires(PULL_EXPIRES)
                    .messages()
                    .await
                {
                    Ok(batch) => pull = Some(batch),
                    Err(err) => {
                        tracing::warn!(%err, "cannot pull from the worker consumer; retrying");
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                            () = shutdown.cancelled() => break,
                        }
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(done) = in_flight.next(), if !in_flight.is_empty() => in_hand -= done,
                (arrived, ended) = next_ready(pull.as_mut(), capacity), if pull.is_some() => {
                    if ended {
                        pull = None;
                    }
                    in_hand += arrived.len();
                    queued.extend(arrived);
                }
                _ = progress.tick(), if !queued.is_empty() => {
                    for message in &queued {
                        let _ = message.ack_with(AckKind::Progress).await;
                    }
                }
            }
        }
        while in_flight.next().await.is_some() {}
        // Hand back what was pulled but not started.
        if let Some(mut pull) = pull {
            while let Some(Some(Ok(message))) = pull.next().now_or_never() {
                queued.push_back(message);
            }
        }
        for message in queued {
            let _ = message.ack_with(AckKind::Nak(None)).await;
        }
        tracing::info!("worker stopped");
    }

    /// Processes one batch of messages and acknowledges each as its outcome dictates, sending
    /// progress acks while the work runs so nothing is redelivered mid-way.
    pub async fn handle_batch(&self, messages: Vec<async_nats::jetstream::Message>) {
        let ticket = self.gate.enter(touched(&messages));
        self.handle_in_turn(messages, ticket).await;
    }

    /// [`Worker::handle_batch`], once no earlier batch touching the same assets or points is
    /// in work (see [`order`]). Progress acks keep the batch's messages alive while it waits.
    async fn handle_in_turn(
        &self,
        messages: Vec<async_nats::jetstream::Message>,
        ticket: order::Ticket,
    ) {
        {
            let turn = ticket.turn();
            tokio::pin!(turn);
            let mut progress = tokio::time::interval(self.config.ack_wait / 3);
            progress.tick().await;
            loop {
                tokio::select! {
                    () = &mut turn => break,
                    _ = progress.tick() => {
                        for message in &messages {
                            let _ = message.ack_with(AckKind::Progress).await;
                        }
                    }
                }
            }
        }
        tracing::debug!(messages = messages.len(), "worker batch");
        // The batch writes the collection live when it begins, and its results name it.
        let live = self.deps.collections.live();
        let config = WorkerConfig {
            collection: live.name,
            ..(*self.config).clone()
        };
        let deps = job::Deps {
            base: &self.deps,
            store: live.store,
            held: live.models,
        };
        let work = job::process(
            &config,
            &deps,
            &self.embeddings,
            &self.collection_ready,
            &self.stopping,
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
        // The store work is done: later batches on the same things may go.
        drop(ticket);
        for (message, outcome) in outcomes {
            // `None`: abandoned on purpose, redelivered after the ack wait (see `Outcome`).
            let Some(ack) = outcome.ack() else { continue };
            if let Err(err) = message.ack_with(ack).await {
                tracing::warn!(%err, "cannot acknowledge message");
            }
        }
    }
}

/// Everything the batch's jobs touch, each with the strongest access any of them needs
/// (undecodable messages touch nothing).
fn touched(messages: &[async_nats::jetstream::Message]) -> order::Touched {
    use heimdex_domain::events::{EventData, JobEvent};
    let mut touched = order::Touched::new();
    for message in messages {
        let Ok(event) = JobEvent::decode(&message.payload) else {
            continue;
        };
        match &event.data {
            EventData::Requested(requested) => {
                order::add(&mut touched, job::touched(event.org_id, &requested.spec));
            }
            EventData::Retried(retried) => {
                order::add(&mut touched, job::touched(event.org_id, &retried.spec));
            }
            EventData::Started(_) | EventData::Succeeded(_) | EventData::Failed(_) => {}
        }
    }
    touched
}
