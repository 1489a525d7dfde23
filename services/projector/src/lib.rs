//! The projector folds job events into the `HEIMDEX_JOB_STATUS` KV bucket, and the document
//! requests among them into the `HEIMDEX_DOCUMENTS` bucket (see
//! [`heimdex_event_store::documents`]). It is the buckets' only writer and writes with compare-and-set on the key's revision: on a conflict (another
//! projector instance, or a stale cache) it re-reads and re-applies. Events are applied only
//! when newer than the status's `last_event_seq`, and status never moves backwards (see
//! [`heimdex_domain::jobs::JobStatus::apply`]), so replays and redeliveries are harmless.
//!
//! A durable consumer does not deliver in order after a crash: events the projector had pulled
//! but not acknowledged come back only after the ack wait, while newer events of the same job
//! flow on. So an event older than the status's `last_event_seq` may never have been applied
//! (a `requested` overtaken by its `succeeded`, say). When one arrives, the job is refolded from
//! its events in the stream, in order, and the result replaces the status.
//!
//! Messages are handled in batches: the events of one job within a batch are folded together
//! and written once, and the revisions of jobs still in progress are cached, so the common case
//! is one CAS write per job per batch and no read.

pub mod files;
pub mod rebuild;

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{AckKind, Message};
use futures::StreamExt;
use futures::future::join_all;

use heimdex_domain::documents::DocumentChange;
use heimdex_domain::events::{self, JobEvent};
use heimdex_domain::jobs::{Applied, JobStatus};
use heimdex_event_store::batching::{Batching, next_batch};
use heimdex_event_store::documents::DocumentError;
use heimdex_event_store::log::LogReadError;
use heimdex_event_store::status::{Listed, StatusError, WriteError, status_key};
use heimdex_event_store::{DocumentStore, JobLog, StatusStore};
use heimdex_telemetry::ErrorChain;
use tokio_util::sync::CancellationToken;

/// The cache of in-progress jobs is cleared past this many entries.
const CACHE_LIMIT: usize = 200_000;
/// CAS attempts per key before the batch is retried later.
const CAS_ATTEMPTS: usize = 16;
/// How long a refold waits for the next event of the job before giving up (and retrying the
/// batch later).
const REFOLD_STALL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error("status store unavailable")]
    Status(#[from] StatusError),
    #[error("job log unavailable")]
    Log(#[from] LogReadError),
    #[error("job {0} has no events to refold")]
    NoEvents(uuid::Uuid),
    #[error("document store unavailable")]
    Documents(#[from] DocumentError),
    #[error("too many revision conflicts on {0}")]
    Contention(String),
}

#[derive(Clone)]
pub struct ProjectorDeps {
    pub statuses: StatusStore,
    pub consumer: PullConsumer,
    /// The job log, read when a job must be refolded from its events.
    pub log: JobLog,
    pub documents: DocumentStore,
}

pub struct Projector {
    deps: ProjectorDeps,
    /// key → the written state of jobs not yet terminal.
    cache: HashMap<String, Written>,
    batch_size: usize,
    batching: Batching,
}

impl Projector {
    pub fn new(deps: ProjectorDeps) -> Self {
        Self {
            deps,
            cache: HashMap::new(),
            batch_size: 1_000,
            // Busy (a chunk of 64+ events): wait up to 5 ms so a job's events share one write.
            batching: Batching {
                max: 1_000,
                busy: 64,
                linger: Duration::from_millis(5),
            },
        }
    }

    /// Projects until `shutdown` is cancelled; the batch being written finishes first.
    pub async fn run(mut self, shutdown: CancellationToken) {
        self.backfill_listing().await;
        self.backfill_documents().await;
        tracing::info!("projector consuming");
        while let Some(messages) = heimdex_event_store::jetstream::pull_stream(
            &self.deps.consumer,
            self.batch_size,
            &shutdown,
        )
        .await
        {
            let mut batches = messages.ready_chunks(self.batch_size);
            loop {
                let batch = tokio::select! {
                    () = shutdown.cancelled() => break,
                    batch = next_batch(&mut batches, self.batching) => batch,
                };
                let Some(batch) = batch else { break };
                let messages: Vec<Message> = batch
                    .into_iter()
                    .filter_map(|m| {
                        m.map_err(|err| tracing::warn!(%err, "projector stream error"))
                            .ok()
                    })
                    .collect();
                self.handle_batch(messages).await;
            }
        }
        tracing::info!("projector stopped");
    }

    /// A bucket made before the listing existed (or before its current shape) gets its
    /// entries once (the listing is empty and the bucket is not). A failure is logged:
    /// listings then miss jobs until their next change, and the next start tries again.
    async fn backfill_listing(&self) {
        match self.deps.statuses.listing_missing().await {
            Ok(false) => {}
            Ok(true) => match self.deps.statuses.backfill_listing(REFOLD_STALL).await {
                Ok(written) => tracing::info!(written, "job listing built from the status bucket"),
                Err(err) => tracing::error!(error = %err, "cannot build the job listing"),
            },
            Err(err) => {
                tracing::warn!(error = %err, "cannot tell whether the job listing is complete")
            }
        }
    }

    /// A document bucket made before documents were projected gets them from the stream's
    /// history, once. A failure is logged: listings then miss documents until their next
    /// change, and the next start tries again.
    async fn backfill_documents(&self) {
        match self.deps.documents.backfill().await {
            Ok(None) => {}
            Ok(Some(applied)) => {
                tracing::info!(applied, "document projection built from the job stream")
            }
            Err(err) => {
                tracing::error!(error = %ErrorChain(&err), "cannot build the document projection")
            }
        }
    }

    /// Applies a batch and acknowledges it; on failure the batch is NAKed and comes back.
    ///
    /// One `projector.apply` span serves the whole batch, many jobs of many traces: it has no
    /// parent, and a link to each event's trace instead (from the `traceparent` its producer
    /// put in the headers), so a job's trace leads to the write that folded it.
    pub async fn handle_batch(&mut self, messages: Vec<Message>) {
        use tracing::Instrument as _;
        if messages.is_empty() {
            return;
        }
        let span = tracing::info_span!(parent: None, "projector.apply", events = messages.len());
        if !span.is_disabled() {
            for message in &messages {
                heimdex_telemetry::add_link_from_headers(&span, message.headers.as_ref());
            }
        }
        let applied = self.apply_batch(&messages).instrument(span).await;
        let disposition = match applied {
            Ok(()) => AckKind::Ack,
            Err(err) => {
                tracing::warn!(error = %ErrorChain(&err), events = messages.len(), "projection failed; will retry");
                self.cache.clear();
                AckKind::Nak(Some(Duration::from_millis(500)))
            }
        };
        for message in &messages {
            if let Err(err) = message.ack_with(disposition).await {
                tracing::warn!(%err, "cannot acknowledge event");
            }
        }
    }

    /// Folds a batch of events into the bucket: one fold and (at most) one write per job.
    pub async fn apply_batch(&mut self, messages: &[Message]) -> Result<(), ProjectError> {
        let mut order: Vec<String> = Vec::new();
        let mut grouped: HashMap<String, Vec<(u64, JobEvent)>> = HashMap::new();
        // The latest change of each document in the batch: the earlier ones are overtaken.
        let mut changes: HashMap<String, DocumentChange> = HashMap::new();
        for message in messages {
            let Some((seq, event)) = decode(message) else {
                continue;
            };
            if let Some(change) = DocumentChange::of(&event, seq) {
                let key = change.key();
                if changes.get(&key).is_none_or(|kept| kept.seq < change.seq) {
                    changes.insert(key, change);
                }
            }
            let key = status_key(event.org_id, event.job_id);
            grouped
                .entry(key.clone())
                .or_insert_with(|| {
                    order.push(key);
                    Vec::new()
                })
                .push((seq, event));
        }

        let (statuses, log) = (&self.deps.statuses, &self.deps.log);
        let jobs: Vec<_> = order
            .into_iter()
            .map(|key| {
                let cached = self.cache.remove(&key);
                let events = grouped.remove(&key).unwrap_or_default();
                (key, cached, events)
            })
            .collect();
        let documents = &self.deps.documents;
        let (results, documents) = futures::join!(
            join_all(jobs.into_iter().map(|(key, cached, events)| async move {
                let result = project(statuses, log, &key, cached, &events).await;
                (key, result)
            })),
            join_all(changes.into_values().map(|change| async move {
                match documents.apply(&change, CAS_ATTEMPTS).await {
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => Err(ProjectError::Contention(change.key())),
                    Err(err) => Err(ProjectError::from(err)),
                }
            }))
        );

        if self.cache.len() > CACHE_LIMIT {
            self.cache.clear();
        }
        let mut first_error = documents.into_iter().find_map(Result::err);
        for (key, result) in results {
            match result {
                Ok(Some(written)) if !written.status.status.is_terminal() => {
                    self.cache.insert(key, written);
                }
                Ok(_) => {}
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// The stream sequence and decoded event of a message; `None` (logged) if unusable, so one
/// malformed event cannot stall the projection.
fn decode(message: &Message) -> Option<(u64, JobEvent)> {
    let seq = match message.info() {
        Ok(info) => info.stream_sequence,
        Err(err) => {
            tracing::error!(%err, subject = %message.subject, "event without JetStream metadata; skipped");
            return None;
        }
    };
    match JobEvent::decode(&message.payload) {
        Ok(event) => {
            let from_subject = events::parse_subject(&message.subject);
            if from_subject.is_some_and(|p| p.org_id != event.org_id || p.job_id != event.job_id) {
                tracing::error!(subject = %message.subject, seq, "event subject and body disagree; skipped");
                return None;
            }
            Some((seq, event))
        }
        Err(err) => {
            tracing::error!(%err, subject = %message.subject, seq, "undecodable event; skipped");
            None
        }
    }
}

/// A job's status as last written: its bucket revision and where it is listed.
#[derive(Clone, Debug)]
struct Written {
    revision: u64,
    status: JobStatus,
    listed: Option<Listed>,
}

/// Folds `events` into the job's status and writes it with compare-and-set. Returns what is
/// written (`None` if nothing changed and nothing was read).
async fn project(
    statuses: &StatusStore,
    log: &JobLog,
    key: &str,
    mut cached: Option<Written>,
    events: &[(u64, JobEvent)],
) -> Result<Option<Written>, ProjectError> {
    let Some((_, first)) = events.first() else {
        return Ok(cached);
    };
    for _ in 0..CAS_ATTEMPTS {
        let current = match cached.take() {
            Some(written) => Some((written.revision, Some(written.status), written.listed)),
            None => statuses
                .entry(first.org_id, first.job_id)
                .await?
                .map(|entry| (entry.revision, entry.status, entry.listed)),
        };
        let empty = || JobStatus::empty(first.org_id, first.job_id, first.time);
        let (revision, mut status, listed) = match current {
            Some((revision, status, listed)) => {
                (Some(revision), status.unwrap_or_else(empty), listed)
            }
            None => (None, empty(), None),
        };
        let mut changed = false;
        let mut out_of_order = false;
        for (seq, event) in events {
            out_of_order |= *seq < status.last_event_seq;
            changed |= status.apply(event, *seq) == Applied::Changed;
        }
        if out_of_order {
            let refolded = log
                .fold(first.org_id, first.job_id, REFOLD_STALL)
                .await?
                .ok_or(ProjectError::NoEvents(first.job_id))?;
            // The log holds at least what was applied; a refold never moves backwards.
            if refolded.last_event_seq >= status.last_event_seq {
                changed |= refolded != status;
                status = refolded;
            }
        }
        if let Some(revision) = revision.filter(|_| !changed) {
            return Ok(Some(Written {
                revision,
                status,
                listed,
            }));
        }
        match statuses.write(&status, revision, listed).await {
            Ok((revision, listed)) => {
                return Ok(Some(Written {
                    revision,
                    status,
                    listed: Some(listed),
                }));
            }
            Err(WriteError::Conflict) => continue,
            Err(WriteError::Store(err)) => return Err(err.into()),
        }
    }
    Err(ProjectError::Contention(key.to_owned()))
}
