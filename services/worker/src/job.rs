//! One batch of `requested` (or `retried`) messages, as a pipeline each job goes through on its
//! own: decode → terminal guard → `started` → plan (embed) → store → record its end. Each
//! [`Job`] carries its state ([`Step`]) from one step to the next; a step does its I/O for the
//! whole batch at once (one store write for a run of upserts, one forward pass per model, the
//! events of all jobs in flight together), but what it learns goes back into each job. The
//! batch ends with each message's [`Outcome`], which decides how it is acknowledged.
//!
//! A `retried` message starts round n of a FAILED job: it carries the job's spec, its delivery
//! count starts again at 1, and the events of the round carry `round: n` (and ids of their own,
//! `<job>:<event>:<n>.<attempt>`), so a new round is never taken for a redelivery of an old one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{AckKind, Message};
use chrono::{DateTime, Utc};
use futures::future::join_all;
use tokio_util::sync::CancellationToken;
use tracing::Span;
use uuid::Uuid;

use heimdex_domain::events::{EventData, EventKind, Failed, JobEvent, Started, Succeeded};
use heimdex_domain::ids::Target;
use heimdex_domain::jobs::{
    ChunkInfo, DeleteAssetParams, DeletePointParams, DocumentChunk, DocumentParams, EmbedParams,
    FileSource, JobError, JobErrorCode, JobResult, JobSpec, MockParams, SourceLocation,
};
use heimdex_domain::{AssetId, Metadata, SegmentId, ids};
use heimdex_embed::{EmbedError, EmbedQueue, ModelError, Priority};
use heimdex_event_store::log::{AppendError, PendingAppend};
use heimdex_store::{NewPoint, Payload, PointFilter, StoreError};

use crate::backoff::retry_delay;
use crate::order::{Access, Key};
use crate::{WorkerConfig, WorkerDeps};

/// What a batch works with: the worker's dependencies, and the collection it writes (the live
/// one when the batch began, or the indexer's target). The rest of [`WorkerDeps`] reads
/// through.
pub(crate) struct Deps<'a> {
    pub base: &'a WorkerDeps,
    pub store: std::sync::Arc<dyn heimdex_store::VectorStore>,
    /// The models the collection holds: a job naming a model moved to another is written
    /// with that other model, under its point id, and the point records its id under the
    /// job's own model ([`Payload::moved_from`]).
    pub held: std::sync::Arc<heimdex_domain::index::Models>,
}

impl std::ops::Deref for Deps<'_> {
    type Target = WorkerDeps;

    fn deref(&self) -> &WorkerDeps {
        self.base
    }
}

/// How a message's job ended this time. It decides the message's fate ([`Outcome::ack`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Its `succeeded` event is stored: acknowledged.
    Succeeded,
    /// Its round had already ended (a redelivery after a crash, or a round a retry
    /// superseded): nothing was done; acknowledged.
    AlreadyEnded,
    /// It failed in a way that may pass (the vector store was down, say): delivered again
    /// after this delay.
    Retrying(Duration),
    /// Its `failed` event is stored, so the round is over: terminated, never delivered again.
    Failed(JobErrorCode),
    /// The message is not a job event this worker can read: terminated, since no delivery
    /// could ever succeed.
    Unusable,
    /// Its start or its end could not be recorded: JetStream refused the event for good, or
    /// the worker stopped while the log could not take it (see [`persist`]). Abandoned (left
    /// unacknowledged), it is delivered again after the ack wait, and the redelivery redoes
    /// the idempotent work and records it.
    Unrecorded,
}

impl Outcome {
    /// The acknowledgement this outcome calls for; `None` for [`Outcome::Unrecorded`], whose
    /// message is deliberately left unacknowledged.
    pub fn ack(&self) -> Option<AckKind> {
        match self {
            Outcome::Succeeded | Outcome::AlreadyEnded => Some(AckKind::Ack),
            Outcome::Retrying(delay) => Some(AckKind::Nak(Some(*delay))),
            Outcome::Failed(_) | Outcome::Unusable => Some(AckKind::Term),
            Outcome::Unrecorded => None,
        }
    }
}

/// Where a job is in the pipeline.
enum Step {
    /// Decoded; its round may have ended already (terminal guard next).
    Received,
    /// Its start is recorded (or being recorded); its work is to be planned.
    Started,
    /// Its store operation is known and not yet applied.
    Planned(Work),
    /// Its work is over: the result, or why there is none. Its end is recorded next.
    Done(Result<JobResult, JobFailure>),
    /// Nothing more to do.
    Over(Outcome),
}

/// What one job does to the store.
enum Work {
    Upsert(Box<NewPoint>, JobResult),
    DeletePoint(Uuid, JobResult),
    DeleteAsset(AssetId, JobResult),
    Document(Box<DocumentWork>),
}

/// A document's new version against what is stored: the chunks to write (new or changed), and
/// the stored points the new version lacks.
struct DocumentWork {
    upserts: Vec<NewPoint>,
    stale: Vec<Uuid>,
    result: JobResult,
}

/// Why a job did not succeed this time.
#[derive(Clone, Debug, PartialEq)]
enum JobFailure {
    /// It can never succeed: fail at once, without retries.
    Invalid(String),
    /// It may succeed later: retry, and fail with this code after the last delivery.
    Retryable(JobErrorCode, String),
}

impl From<&StoreError> for JobFailure {
    fn from(err: &StoreError) -> Self {
        match err {
            StoreError::InvalidInput(_) => JobFailure::Invalid(err.to_string()),
            StoreError::Unavailable(_) | StoreError::Internal(_) => {
                JobFailure::Retryable(JobErrorCode::VectorStore, err.to_string())
            }
        }
    }
}

/// One delivery of a job, and everything the pipeline has learnt about it.
struct Job {
    org_id: Uuid,
    job_id: Uuid,
    /// 0 for a `requested` message, n for the n-th `retried`.
    round: u32,
    /// Delivery count of this message: attempts within the round.
    attempt: u32,
    /// When the round was asked for (the `requested` or `retried` event's time): a job's
    /// latency counts from here.
    asked_at: DateTime<Utc>,
    /// The message's stream sequence: the job's place in the log, stored in every point it
    /// writes and compared with deletes' (see [`superseded`]).
    seq: u64,
    spec: JobSpec,
    span: Span,
    /// The `started` event, sent and not yet acknowledged.
    started: Option<Result<PendingAppend, AppendError>>,
    step: Step,
}

/// Runs the batch through the pipeline; each message comes back with its outcome, in order.
pub(crate) async fn process<'m>(
    config: &WorkerConfig,
    deps: &Deps<'_>,
    embeddings: &EmbedQueue,
    collection_ready: &AtomicBool,
    stopping: &CancellationToken,
    messages: &'m [Message],
) -> Vec<(&'m Message, Outcome)> {
    let mut unusable = Vec::new();
    let mut jobs: Vec<Job> = Vec::with_capacity(messages.len());
    let mut delivered: Vec<&Message> = Vec::with_capacity(messages.len());
    for message in messages {
        match decode(message) {
            Some(job) => {
                jobs.push(job);
                delivered.push(message);
            }
            None => unusable.push(message),
        }
    }
    guard(deps, &mut jobs).await;
    start(deps, &mut jobs).await;
    plan(config, deps, embeddings, &mut jobs).await;
    store(config, deps, collection_ready, &mut jobs).await;
    record(config, deps, stopping, &mut jobs).await;

    let mut outcomes: Vec<(&Message, Outcome)> = unusable
        .into_iter()
        .map(|message| (message, Outcome::Unusable))
        .collect();
    outcomes.extend(jobs.into_iter().zip(delivered).map(|(job, message)| {
        let outcome = match job.step {
            Step::Over(outcome) => outcome,
            // Every step moves a job on; one left behind did not get its end recorded.
            Step::Received | Step::Started | Step::Planned(_) | Step::Done(_) => {
                Outcome::Unrecorded
            }
        };
        (message, outcome)
    }));
    outcomes
}

/// A job that succeeded, as the log holds it: the round that succeeded, started by the event
/// at `seq` (its `requested` or `retried` event), to be applied again to another collection
/// (the indexer's work, see `crate::indexer`).
#[derive(Clone, Debug)]
pub struct Replay {
    pub org_id: Uuid,
    pub job_id: Uuid,
    pub round: u32,
    pub seq: u64,
    pub spec: JobSpec,
}

/// Why a replayed job wrote nothing.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ReplayError {
    /// It cannot be written again as it was (its file is no longer stored, its model is not
    /// served here): skipped.
    #[error("{0}")]
    Invalid(String),
    /// It may be written later (the vector store is down, say): the replay tries again.
    #[error("{0}")]
    Retryable(String),
}

/// Runs jobs again through the pipeline's plan and store steps, against `deps.store`
/// (`config.collection`), recording no event: the same reads, embeddings, writes and deletes
/// in the same order as a worker's batch, so a collection given a log's jobs in log order ends
/// as the one the workers wrote. The jobs must not conflict with one another (see
/// [`touched`]): documents are planned together.
pub(crate) async fn apply(
    config: &WorkerConfig,
    deps: &Deps<'_>,
    embeddings: &EmbedQueue,
    replays: Vec<Replay>,
) -> Vec<Result<JobResult, ReplayError>> {
    let mut jobs: Vec<Job> = replays
        .into_iter()
        .map(|replay| Job {
            span: tracing::info_span!("indexer.apply", job_id = %replay.job_id, org_id = %replay.org_id, seq = replay.seq),
            org_id: replay.org_id,
            job_id: replay.job_id,
            round: replay.round,
            attempt: 1,
            asked_at: Utc::now(),
            seq: replay.seq,
            spec: replay.spec,
            started: None,
            step: Step::Started,
        })
        .collect();
    plan(config, deps, embeddings, &mut jobs).await;
    store(config, deps, &AtomicBool::new(true), &mut jobs).await;
    jobs.into_iter()
        .map(|job| match job.step {
            Step::Done(Ok(result)) => Ok(result),
            Step::Done(Err(JobFailure::Invalid(message))) => Err(ReplayError::Invalid(message)),
            Step::Done(Err(JobFailure::Retryable(_, message))) => {
                Err(ReplayError::Retryable(message))
            }
            Step::Received | Step::Started | Step::Planned(_) | Step::Over(_) => {
                Err(ReplayError::Retryable("the job was left unfinished".into()))
            }
        })
        .collect()
}

/// Reads a delivery; `None` (logged) when it is not a job this worker can run.
fn decode(message: &Message) -> Option<Job> {
    let unusable = |reason: &dyn std::fmt::Display| {
        tracing::error!(subject = %message.subject, %reason, "unusable job message; terminating");
    };
    let info = message.info().map_err(|err| unusable(&err)).ok()?;
    let attempt = u32::try_from(info.delivered).unwrap_or(u32::MAX);
    let seq = info.stream_sequence;
    let event = JobEvent::decode(&message.payload)
        .map_err(|err| unusable(&err))
        .ok()?;
    let (round, spec) = match event.data {
        EventData::Requested(requested) => (0, requested.spec),
        EventData::Retried(retried) => (retried.round, retried.spec),
        other @ (EventData::Started(_) | EventData::Succeeded(_) | EventData::Failed(_)) => {
            unusable(&format_args!(
                "expected a requested or retried event, got {:?}",
                other.kind()
            ));
            return None;
        }
    };
    // A consumer span continuing the trace the API's `publish` span put in the headers.
    let span = tracing::info_span!(
        "worker.consume",
        otel.kind = "consumer",
        messaging.system = "nats",
        messaging.destination.name = %message.subject,
        job_id = %event.job_id,
        org_id = %event.org_id,
        round,
        attempt,
    );
    heimdex_telemetry::set_parent_from_headers(&span, message.headers.as_ref());
    Some(Job {
        org_id: event.org_id,
        job_id: event.job_id,
        round,
        attempt,
        asked_at: event.time,
        seq,
        spec,
        span,
        started: None,
        step: Step::Received,
    })
}

/// Terminal guard: a redelivered job whose round already ended (the worker crashed between its
/// last event and its ack, say), or whose round a retry superseded, is over. A first delivery
/// has not run before, so it skips the read; should a consumer ever be reset, re-running is
/// idempotent anyway. A failed read only costs that idempotent re-work, so it does not stop the
/// job. A status of an earlier round (the projection has not seen this round's `retried` yet)
/// is not this round's end. The projection can lag the log (NATS was away, say, and the ack of
/// the earlier attempt was lost with it), so when it shows no end, the log itself is asked for
/// this round's `succeeded` or `failed`.
async fn guard(deps: &Deps<'_>, jobs: &mut [Job]) {
    let ended = join_all(jobs.iter().map(|job| async move {
        if job.attempt <= 1 {
            return false;
        }
        let projected = deps
            .statuses
            .get(job.org_id, job.job_id)
            .await
            .ok()
            .flatten()
            .is_some_and(|status| {
                status.retries > job.round
                    || (status.retries == job.round && status.status.is_terminal())
            });
        projected || round_ended_in_log(deps, job).await
    }))
    .await;
    for (job, ended) in jobs.iter_mut().zip(ended) {
        if ended {
            tracing::debug!(job_id = %job.job_id, "job already ended; skipping");
            job.step = Step::Over(Outcome::AlreadyEnded);
        }
    }
}

/// Whether the log holds a `succeeded` or `failed` event of the job's current round (the last
/// of each kind is enough: rounds only grow). A failed read counts as "no".
async fn round_ended_in_log(deps: &Deps<'_>, job: &Job) -> bool {
    for kind in [EventKind::Succeeded, EventKind::Failed] {
        if let Ok(Some(stored)) = deps.log.last(job.org_id, job.job_id, kind).await
            && stored.event.data.round() == job.round
        {
            return true;
        }
    }
    false
}

/// Sends every live job's `started` event; their acknowledgements are awaited in [`record`],
/// while the work runs.
async fn start(deps: &Deps<'_>, jobs: &mut [Job]) {
    let live: Vec<&mut Job> = jobs
        .iter_mut()
        .filter(|job| matches!(job.step, Step::Received))
        .collect();
    let sent = join_all(live.iter().map(|job| send(deps, job, started_event(job)))).await;
    for (job, sent) in live.into_iter().zip(sent) {
        job.started = Some(sent);
        job.step = Step::Started;
    }
}

/// The job's `started` event for this delivery (its id names the attempt, so sending it again
/// is de-duplicated).
fn started_event(job: &Job) -> JobEvent {
    JobEvent::new(
        job.org_id,
        job.job_id,
        EventData::Started(Started {
            attempt: job.attempt,
            round: job.round,
        }),
    )
}

/// The first wait before an event the log could not take is sent again; it doubles up to
/// [`RESEND_MAX`].
const RESEND_FIRST: Duration = Duration::from_millis(100);
const RESEND_MAX: Duration = Duration::from_secs(5);

/// Waits until `event`, sent as `sent`, is stored.
///
/// While the log cannot take it (the stream or its disk is full, or NATS is out of reach),
/// the job is held rather than abandoned: the batch's messages keep getting progress acks
/// (`Worker::handle_in_turn`), so the wait costs no delivery, and the event is sent again with
/// backoff (de-duplicated by its id, should an earlier copy have been stored after all) until
/// it is stored, JetStream refuses it for good, or the worker stops. An abandoned job would be
/// delivered again, redo its work and fail to record it each time, until JetStream gave it up
/// as crashed and it were marked failed with its work done.
async fn persist(
    deps: &Deps<'_>,
    stopping: &CancellationToken,
    job: &Job,
    event: &JobEvent,
    sent: Result<PendingAppend, AppendError>,
) -> Result<(), AppendError> {
    let mut sent = sent;
    let mut delay = RESEND_FIRST;
    let mut held_since = None;
    loop {
        let err = match sent {
            Ok(pending) => match pending.stored().await {
                Ok(()) => {
                    if let Some(since) = held_since {
                        let held = Instant::now().duration_since(since);
                        tracing::info!(job_id = %job.job_id, ?held, "event stored after a hold");
                    }
                    return Ok(());
                }
                Err(err) => err,
            },
            Err(err) => err,
        };
        if matches!(err, AppendError::Refused(_)) {
            return Err(err);
        }
        if held_since.is_none() {
            tracing::warn!(error = %err, job_id = %job.job_id, kind = ?event.data.kind(), "the job log cannot take the event; holding the job");
            held_since = Some(Instant::now());
        }
        tokio::select! {
            () = stopping.cancelled() => return Err(err),
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(RESEND_MAX);
        sent = send(deps, job, event.clone()).await;
    }
}

/// Sends one of the job's events within its span, so the event carries the job's trace.
async fn send(deps: &Deps<'_>, job: &Job, event: JobEvent) -> Result<PendingAppend, AppendError> {
    use tracing::Instrument as _;
    deps.log.send(&event).instrument(job.span.clone()).await
}

/// Works out every started job's store operation. The texts of the batch are embedded
/// together, one call per model, so one forward pass serves many jobs.
async fn plan(config: &WorkerConfig, deps: &Deps<'_>, embeddings: &EmbedQueue, jobs: &mut [Job]) {
    let documents = jobs.iter_mut().filter(|job| {
        matches!(job.step, Step::Started) && matches!(job.spec, JobSpec::Document(_))
    });
    join_all(documents.map(|job| async move {
        use tracing::Instrument as _;
        let span = tracing::info_span!(parent: &job.span, "worker.document");
        job.step = match plan_document(config, deps, embeddings, job)
            .instrument(span)
            .await
        {
            Ok(step) => step,
            Err(failure) => Step::Done(Err(failure)),
        };
    }))
    .await;
    let mut to_embed: HashMap<String, Vec<&mut Job>> = HashMap::new();
    for job in jobs
        .iter_mut()
        .filter(|job| matches!(job.step, Step::Started))
    {
        match plan_without_model(config, job) {
            Some(step) => job.step = step,
            None => {
                if let JobSpec::Embedding(params) = &job.spec {
                    let model = deps.held.written_with(&params.model).to_owned();
                    to_embed.entry(model).or_default().push(job);
                }
            }
        }
    }
    for (model, jobs) in to_embed {
        // The texts of one model are embedded together, so each job's `worker.embed` span
        // covers the shared work; `batch` says how many jobs shared it.
        let spans: Vec<Span> = jobs
            .iter()
            .map(|job| {
                tracing::info_span!(parent: &job.span, "worker.embed", model = %model, batch = jobs.len())
            })
            .collect();
        let (vectors, written_ver) = embed(deps, embeddings, &model, &jobs).await;
        drop(spans);
        for (job, vector) in jobs.into_iter().zip(vectors) {
            let JobSpec::Embedding(params) = &job.spec else {
                continue;
            };
            job.step = match vector {
                Ok(vector) => {
                    let EmbedParams {
                        asset_id,
                        segment_id,
                        model: named,
                        model_ver: named_ver,
                        text,
                        chunk,
                        generation: _,
                        metadata,
                    } = params;
                    let moved = *named != model;
                    let mut payload = payload(
                        job,
                        asset_id,
                        segment_id,
                        &model,
                        if moved { &written_ver } else { named_ver },
                        text.clone(),
                        *chunk,
                        metadata.clone(),
                    );
                    if moved {
                        payload.moved_from = Some(ids::point_id(
                            job.org_id,
                            asset_id.as_str(),
                            segment_id.as_str(),
                            named,
                            named_ver,
                        ));
                    }
                    Step::Planned(upsert(config, job.org_id, payload, vector))
                }
                Err(failure) => Step::Done(Err(failure)),
            };
        }
    }
}

/// The step a job's work leads to, when no model is needed to work it out; `None` for a text
/// to embed.
fn plan_without_model(config: &WorkerConfig, job: &Job) -> Option<Step> {
    Some(match &job.spec {
        JobSpec::MockEmbedding(MockParams {
            asset_id,
            segment_id,
            model,
            model_ver,
        }) => {
            // The mock model's "forward pass": a deterministic vector, in the job's own span.
            let _embed =
                tracing::info_span!(parent: &job.span, "worker.embed", model = %model, batch = 1)
                    .entered();
            let vector = ids::mock_vector(
                job.org_id,
                asset_id.as_str(),
                segment_id.as_str(),
                config.vector_size,
            );
            let text = format!("Mock embedding for asset {asset_id}, segment {segment_id}");
            let payload = payload(
                job,
                asset_id,
                segment_id,
                model,
                model_ver,
                text,
                None,
                Metadata::default(),
            );
            Step::Planned(upsert(config, job.org_id, payload, vector))
        }
        JobSpec::Embedding(params) if params.text.trim().is_empty() => Step::Done(Err(
            JobFailure::Invalid("text is empty or whitespace-only".to_owned()),
        )),
        JobSpec::Embedding(_) => return None,
        JobSpec::DeletePoint(DeletePointParams { point_id, .. }) => Step::Planned(
            Work::DeletePoint(*point_id, delete_result(config, vec![*point_id])),
        ),
        JobSpec::DeleteAsset(DeleteAssetParams { asset_id, .. }) => Step::Planned(
            Work::DeleteAsset(asset_id.clone(), delete_result(config, Vec::new())),
        ),
        // Planned in `plan_document`, before any of this.
        JobSpec::Document(_) => return None,
    })
}

/// What a document's new version changes: the stored points of its asset are read back, a
/// chunk whose point holds the same text at the same index (with the same offsets and
/// metadata, so its payload stays true) is kept untouched, the others are embedded to be
/// written, and every stored point of the asset the new version lacks is stale. A version that a later delete
/// of the asset, or a later version already written, supersedes writes nothing.
async fn plan_document(
    config: &WorkerConfig,
    deps: &Deps<'_>,
    embeddings: &EmbedQueue,
    job: &Job,
) -> Result<Step, JobFailure> {
    let JobSpec::Document(params) = &job.spec else {
        return Err(JobFailure::Invalid("not a document job".into()));
    };
    let DocumentParams {
        asset_id,
        model,
        model_ver,
        metadata,
        ..
    } = params;
    // In a collection a model change built, the model the document named may be moved to
    // another: its chunks are embedded by that one, under that one's point ids.
    let written = deps.held.written_with(model).to_owned();
    let moved = written != *model;
    let embedder = match deps.models.get(Some(&written)) {
        Ok(embedder) => embedder,
        Err(err @ ModelError::Unknown { .. }) => return Err(JobFailure::Invalid(err.to_string())),
        Err(err @ ModelError::Unavailable { .. }) => {
            return Err(JobFailure::Retryable(
                JobErrorCode::Internal,
                err.to_string(),
            ));
        }
    };
    if !moved && embedder.model_ver() != model_ver {
        return Err(JobFailure::Invalid(format!(
            "model `{model}` version `{model_ver}` is not served here (this worker has `{}`)",
            embedder.model_ver()
        )));
    }
    let written_ver = embedder.model_ver().to_owned();
    if superseded(deps, job, &[Target::Asset(asset_id.to_string())]).await? {
        return Ok(Step::Done(Ok(superseded_result(
            config, job.org_id, params,
        ))));
    }
    let filter = PointFilter {
        asset_id: Some(asset_id.to_string()),
        ..PointFilter::default()
    };
    let stored = deps
        .store
        .scroll_points(job.org_id, filter)
        .await
        .map_err(|err| JobFailure::from(&err))?;
    if stored.iter().any(|p| p.payload.seq > Some(job.seq)) {
        // A later version is written already: in stream order, this one is replaced.
        return Ok(Step::Done(Ok(superseded_result(
            config, job.org_id, params,
        ))));
    }
    // A file is cut into the chunks the model it named cut it into, while that model is
    // served, so that its chunks keep their places when a model change moves it.
    let chunker = match moved {
        true => deps
            .models
            .get(Some(model))
            .unwrap_or_else(|_| embedder.clone()),
        false => embedder.clone(),
    };
    let (chunks, locations) = match &params.file {
        None => (params.chunks.clone(), Vec::new()),
        Some(file) => read_file(deps, chunker, file).await?,
    };
    let ids: Vec<Uuid> = (0..chunks.len())
        .map(|i| match moved {
            false => params.chunk_point_id(job.org_id, i),
            true => ids::point_id(
                job.org_id,
                asset_id.as_str(),
                DocumentParams::segment_id(i).as_str(),
                &written,
                &written_ver,
            ),
        })
        .collect();
    let mut result = JobResult {
        collection: config.collection.clone(),
        point_ids: ids.clone(),
        vector_size: config.vector_size,
        model: Some(written.clone()),
        model_ver: Some(written_ver.clone()),
        deleted: Some(0),
        written: Some(0),
        kept: Some(0),
        superseded: false,
    };
    let stored: HashMap<Uuid, heimdex_store::Payload> =
        stored.into_iter().map(|p| (p.id, p.payload)).collect();
    let mut to_write = Vec::new();
    let mut kept = 0u64;
    for (index, (chunk, id)) in chunks.iter().zip(&ids).enumerate() {
        let info = ChunkInfo {
            chunk_index: index,
            char_start: chunk.char_start,
            char_end: chunk.char_end,
        };
        let mut payload = payload(
            job,
            asset_id,
            &DocumentParams::segment_id(index),
            &written,
            &written_ver,
            chunk.text.clone(),
            Some(info),
            metadata.clone(),
        );
        if moved {
            payload.moved_from = Some(params.chunk_point_id(job.org_id, index));
        }
        if let Some(location) = locations.get(index) {
            add_location(&mut payload, location);
        }
        let same = stored.get(id).is_some_and(|old| {
            old.text == payload.text
                && old.meta == payload.meta
                && CHUNK_KEYS
                    .iter()
                    .all(|key| old.extra.get(*key) == payload.extra.get(*key))
        });
        if same {
            kept += 1;
        } else {
            to_write.push((*id, payload));
        }
    }
    let stale: Vec<Uuid> = stored
        .keys()
        .filter(|id| !ids.contains(id))
        .copied()
        .collect();
    let texts: Vec<String> = to_write
        .iter()
        .map(|(_, payload)| payload.text.clone().unwrap_or_default())
        .collect();
    let vectors = if texts.is_empty() {
        Vec::new()
    } else {
        match embeddings.embed(embedder, texts, Priority::Bulk).await {
            Ok(vectors) => vectors,
            Err(EmbedError::InvalidInput(message)) => return Err(JobFailure::Invalid(message)),
            Err(err) => {
                return Err(JobFailure::Retryable(
                    JobErrorCode::Internal,
                    err.to_string(),
                ));
            }
        }
    };
    if vectors.len() != to_write.len() {
        return Err(JobFailure::Retryable(
            JobErrorCode::Internal,
            "embedder returned too few vectors".into(),
        ));
    }
    result.written = Some(to_write.len() as u64);
    result.kept = Some(kept);
    let upserts = to_write
        .into_iter()
        .zip(vectors)
        .map(|((id, payload), vector)| NewPoint {
            id,
            vector,
            payload,
        })
        .collect();
    Ok(Step::Planned(Work::Document(Box::new(DocumentWork {
        upserts,
        stale,
        result,
    }))))
}

/// The payload keys that place a chunk: a kept chunk has the same values for all of them.
const CHUNK_KEYS: [&str; 6] = [
    "chunk_index",
    "char_start",
    "char_end",
    "page",
    "page_end",
    "section",
];

/// The most chunks a file may make.
pub const MAX_FILE_CHUNKS: usize = 10_000;

/// The result of a document version that a later delete or version replaces: nothing
/// written. It names the points a text's chunks would have had (a file's are not known
/// without extracting it).
fn superseded_result(config: &WorkerConfig, org_id: Uuid, params: &DocumentParams) -> JobResult {
    JobResult {
        collection: config.collection.clone(),
        point_ids: (0..params.chunks.len())
            .map(|i| params.chunk_point_id(org_id, i))
            .collect(),
        vector_size: config.vector_size,
        model: Some(params.model.clone()),
        model_ver: Some(params.model_ver.clone()),
        deleted: Some(0),
        written: Some(0),
        kept: Some(0),
        superseded: true,
    }
}

/// Reads an uploaded file back, extracts its text and cuts it into chunks, each with where
/// it sits in the file. A file that cannot be read as its format (encrypted, damaged, no text)
/// or that makes more than [`MAX_FILE_CHUNKS`] chunks fails the job at once.
async fn read_file(
    deps: &Deps<'_>,
    embedder: std::sync::Arc<dyn heimdex_embed::Embedder>,
    file: &FileSource,
) -> Result<(Vec<DocumentChunk>, Vec<SourceLocation>), JobFailure> {
    let format = heimdex_extract::Format::ALL
        .into_iter()
        .find(|format| format.as_str() == file.format)
        .ok_or_else(|| JobFailure::Invalid(format!("unknown file format `{}`", file.format)))?;
    let bytes = deps
        .files
        .get(&file.object)
        .await
        .map_err(|err| JobFailure::Retryable(JobErrorCode::Internal, err.to_string()))?
        .ok_or_else(|| {
            JobFailure::Invalid("the uploaded file is no longer stored; send it again".into())
        })?;
    let options = heimdex_embed::ChunkOptions {
        max_tokens: file.max_tokens,
        overlap: file.overlap,
    };
    tokio::task::spawn_blocking(move || {
        let extracted =
            heimdex_extract::extract(format, &bytes, &heimdex_extract::Limits::default()).map_err(
                |err| JobFailure::Invalid(format!("the {format} file cannot be read: {err}")),
            )?;
        let text = extracted.text();
        let spans = embedder
            .token_spans(text)
            .map_err(|err| JobFailure::Invalid(err.to_string()))?;
        let cut = heimdex_embed::chunk(text, &spans, options);
        if cut.len() > MAX_FILE_CHUNKS {
            return Err(JobFailure::Invalid(format!(
                "the file makes {} chunks; a document may have at most {MAX_FILE_CHUNKS}: split \
                 it, or raise max_tokens",
                cut.len()
            )));
        }
        Ok(cut
            .iter()
            .map(|chunk| {
                let at = extracted.location(chunk.char_start, chunk.char_end);
                (
                    DocumentChunk {
                        text: chunk.text(text).to_owned(),
                        char_start: chunk.char_start,
                        char_end: chunk.char_end,
                    },
                    SourceLocation {
                        page: at.page,
                        page_end: at.page_end,
                        section: at.section,
                    },
                )
            })
            .unzip())
    })
    .await
    .map_err(|err| JobFailure::Retryable(JobErrorCode::Internal, err.to_string()))?
}

/// Records where a chunk of a file sits in its payload: `page`, `page_end`, `section`.
fn add_location(payload: &mut Payload, location: &SourceLocation) {
    if let Some(page) = location.page {
        payload.extra.insert("page".into(), page.into());
    }
    if let Some(page_end) = location.page_end {
        payload.extra.insert("page_end".into(), page_end.into());
    }
    if let Some(section) = &location.section {
        payload
            .extra
            .insert("section".into(), section.clone().into());
    }
}

/// Whether a delete of any of `targets` comes after the job in the log: then, in stream order,
/// the job's write is undone, so it writes nothing. The delete's tombstone is stored before
/// the delete is requested, so a delete this misses is requested after this read, and is
/// either applied after the write (and removes it) or seen by [`undo_if_deleted`] after it.
async fn superseded(deps: &Deps<'_>, job: &Job, targets: &[Target]) -> Result<bool, JobFailure> {
    let last = deps
        .log
        .last_delete_seqs(job.org_id, &[targets])
        .await
        .map_err(|err| JobFailure::Retryable(JobErrorCode::Internal, err.to_string()))?;
    Ok(last.first().is_some_and(|last| *last > job.seq))
}

/// For each job of `picked` (indices into `jobs`), the stream sequence of a delete of its
/// write targets that comes after it, if any (see [`superseded`]). The tombstones of all the
/// org's picked jobs are read together; a failed read retries those jobs.
async fn later_deletes(
    deps: &Deps<'_>,
    jobs: &[Job],
    picked: &[usize],
) -> Vec<Result<Option<u64>, JobFailure>> {
    let targets: Vec<Vec<Target>> = picked
        .iter()
        .map(|&i| write_targets(jobs[i].org_id, &jobs[i].spec))
        .collect();
    let mut by_org: HashMap<Uuid, Vec<usize>> = HashMap::new();
    for (n, &i) in picked.iter().enumerate() {
        by_org.entry(jobs[i].org_id).or_default().push(n);
    }
    let read = join_all(by_org.into_iter().map(|(org_id, members)| {
        let targets = &targets;
        async move {
            let lists: Vec<&[Target]> = members.iter().map(|&n| targets[n].as_slice()).collect();
            let last = deps.log.last_delete_seqs(org_id, &lists).await;
            (members, last)
        }
    }))
    .await;
    let mut out: Vec<Result<Option<u64>, JobFailure>> = vec![Ok(None); picked.len()];
    for (members, last) in read {
        match last {
            Ok(seqs) => {
                for (n, last) in members.into_iter().zip(seqs) {
                    let seq = jobs[picked[n]].seq;
                    out[n] = Ok((last > seq).then_some(last));
                }
            }
            Err(err) => {
                let failure = JobFailure::Retryable(JobErrorCode::Internal, err.to_string());
                for n in members {
                    out[n] = Err(failure.clone());
                }
            }
        }
    }
    out
}

/// The targets whose deletes undo a write of `spec`: its asset and, for one segment, its
/// point. (A document's chunks answer to the asset: deleting one chunk's point does not
/// change the document's generation.)
pub(crate) fn write_targets(org_id: Uuid, spec: &JobSpec) -> Vec<Target> {
    match spec {
        JobSpec::MockEmbedding(MockParams {
            asset_id,
            segment_id,
            model,
            model_ver,
        })
        | JobSpec::Embedding(EmbedParams {
            asset_id,
            segment_id,
            model,
            model_ver,
            ..
        }) => vec![
            Target::Asset(asset_id.to_string()),
            Target::Point(ids::point_id(
                org_id,
                asset_id.as_str(),
                segment_id.as_str(),
                model,
                model_ver,
            )),
        ],
        JobSpec::Document(params) => vec![Target::Asset(params.asset_id.to_string())],
        JobSpec::DeletePoint(_) | JobSpec::DeleteAsset(_) => Vec::new(),
    }
}

/// What a job touches, for ordering batches in flight ([`crate::order::Gate`]), and how: the
/// points it writes or deletes and the asset it deletes or replaces change; a write of one
/// segment only needs its asset to stay.
pub(crate) fn touched(org_id: Uuid, spec: &JobSpec) -> Vec<(Key, Access)> {
    let changes = |target| ((org_id, target), Access::Changes);
    match spec {
        JobSpec::DeletePoint(params) => vec![changes(Target::Point(params.point_id))],
        JobSpec::DeleteAsset(params) => vec![changes(Target::Asset(params.asset_id.to_string()))],
        JobSpec::Document(params) => std::iter::once(Target::Asset(params.asset_id.to_string()))
            .chain(
                (0..params.chunks.len()).map(|i| Target::Point(params.chunk_point_id(org_id, i))),
            )
            .map(changes)
            .collect(),
        JobSpec::MockEmbedding(_) | JobSpec::Embedding(_) => write_targets(org_id, spec)
            .into_iter()
            .map(|target| match target {
                Target::Asset(_) => ((org_id, target), Access::Shared),
                Target::Point(_) => changes(target),
            })
            .collect(),
    }
}

/// Embeds the texts of `jobs` (all written with `model`: they named it, or a model moved to
/// it) in one call. Returns a vector, or the reason there is none, per job, and the version of
/// the model that embedded them.
async fn embed(
    deps: &Deps<'_>,
    embeddings: &EmbedQueue,
    model: &str,
    jobs: &[&mut Job],
) -> (Vec<Result<Vec<f32>, JobFailure>>, String) {
    let vectors = embed_with(deps, embeddings, model, jobs).await;
    let version = deps
        .models
        .get(Some(model))
        .map(|embedder| embedder.model_ver().to_owned())
        .unwrap_or_default();
    (vectors, version)
}

async fn embed_with(
    deps: &Deps<'_>,
    embeddings: &EmbedQueue,
    model: &str,
    jobs: &[&mut Job],
) -> Vec<Result<Vec<f32>, JobFailure>> {
    let all = |failure: JobFailure| vec![Err(failure); jobs.len()];
    let embedder = match deps.models.get(Some(model)) {
        Ok(embedder) => embedder,
        Err(err @ ModelError::Unknown { .. }) => return all(JobFailure::Invalid(err.to_string())),
        // Another worker (or this one after a fix) may have the model: retry.
        Err(err @ ModelError::Unavailable { .. }) => {
            return all(JobFailure::Retryable(
                JobErrorCode::Internal,
                err.to_string(),
            ));
        }
    };
    // The point id already names the version; vectors of another version must not land on it.
    let mut texts = Vec::with_capacity(jobs.len());
    let mut results: Vec<Option<Result<Vec<f32>, JobFailure>>> = Vec::with_capacity(jobs.len());
    for job in jobs {
        let JobSpec::Embedding(params) = &job.spec else {
            results.push(Some(Err(JobFailure::Invalid(
                "not an embedding job".into(),
            ))));
            continue;
        };
        // A job of a moved model is embedded by this one whatever version it named.
        if params.model != model || params.model_ver == embedder.model_ver() {
            texts.push(params.text.clone());
            results.push(None);
        } else {
            results.push(Some(Err(JobFailure::Invalid(format!(
                "model `{model}` version `{}` is not served here (this worker has `{}`)",
                params.model_ver,
                embedder.model_ver()
            )))));
        }
    }
    let vectors = match embeddings.embed(embedder, texts, Priority::Bulk).await {
        Ok(vectors) => vectors,
        Err(EmbedError::InvalidInput(message)) => return all(JobFailure::Invalid(message)),
        Err(err) => {
            return all(JobFailure::Retryable(
                JobErrorCode::Internal,
                err.to_string(),
            ));
        }
    };
    let mut vectors = vectors.into_iter();
    results
        .into_iter()
        .map(|r| match r {
            Some(failure) => failure,
            None => vectors.next().ok_or_else(|| {
                JobFailure::Retryable(
                    JobErrorCode::Internal,
                    "embedder returned too few vectors".into(),
                )
            }),
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn payload(
    job: &Job,
    asset_id: &AssetId,
    segment_id: &SegmentId,
    model: &str,
    model_ver: &str,
    text: String,
    chunk: Option<ChunkInfo>,
    meta: Metadata,
) -> Payload {
    let mut extra = serde_json::Map::new();
    if let Some(ChunkInfo {
        chunk_index,
        char_start,
        char_end,
    }) = chunk
    {
        extra.insert("chunk_index".into(), chunk_index.into());
        extra.insert("char_start".into(), char_start.into());
        extra.insert("char_end".into(), char_end.into());
    }
    Payload {
        org_id: job.org_id,
        asset_id: asset_id.to_string(),
        segment_id: segment_id.to_string(),
        model: model.to_owned(),
        model_ver: model_ver.to_owned(),
        text: Some(text),
        seq: Some(job.seq),
        meta,
        moved_from: None,
        extra,
    }
}

fn upsert(config: &WorkerConfig, org_id: Uuid, payload: Payload, vector: Vec<f32>) -> Work {
    let id = ids::point_id(
        org_id,
        &payload.asset_id,
        &payload.segment_id,
        &payload.model,
        &payload.model_ver,
    );
    let result = JobResult {
        collection: config.collection.clone(),
        point_ids: vec![id],
        vector_size: vector.len(),
        model: Some(payload.model.clone()),
        model_ver: Some(payload.model_ver.clone()),
        deleted: None,
        written: None,
        kept: None,
        superseded: false,
    };
    Work::Upsert(
        Box::new(NewPoint {
            id,
            vector,
            payload,
        }),
        result,
    )
}

fn delete_result(config: &WorkerConfig, point_ids: Vec<Uuid>) -> JobResult {
    JobResult {
        collection: config.collection.clone(),
        point_ids,
        vector_size: config.vector_size,
        model: None,
        model_ver: None,
        deleted: Some(0),
        written: None,
        kept: None,
        superseded: false,
    }
}

/// Applies the planned work in stream order: runs of upserts are written in one call, and a
/// delete waits for the upserts before it (so "write, then delete" in one batch ends deleted,
/// and "delete, then write" ends written).
async fn store(
    config: &WorkerConfig,
    deps: &Deps<'_>,
    collection_ready: &AtomicBool,
    jobs: &mut [Job],
) {
    let planned = jobs.iter().any(|job| matches!(job.step, Step::Planned(_)));
    if !planned {
        return;
    }
    if !collection_ready.load(Ordering::Acquire) {
        match deps.store.ensure_collection().await {
            Ok(()) => collection_ready.store(true, Ordering::Release),
            Err(err) => {
                let failure = JobFailure::from(&err);
                for job in jobs.iter_mut() {
                    if matches!(job.step, Step::Planned(_)) {
                        job.step = Step::Done(Err(failure.clone()));
                    }
                }
                return;
            }
        }
    }
    // One span per job for its store operation, children of the job's span, so each job's trace
    // shows the write that served it.
    let _spans: Vec<Span> = jobs
        .iter()
        .filter_map(|job| match &job.step {
            Step::Planned(Work::Upsert(..)) => Some(tracing::info_span!(parent: &job.span, "vector_store.upsert", collection = %config.collection)),
            Step::Planned(Work::DeletePoint(..) | Work::DeleteAsset(..)) => Some(tracing::info_span!(parent: &job.span, "vector_store.delete", collection = %config.collection)),
            Step::Planned(Work::Document(..)) => Some(tracing::info_span!(parent: &job.span, "vector_store.replace", collection = %config.collection)),
            Step::Received | Step::Started | Step::Done(_) | Step::Over(_) => None,
        })
        .collect();
    drop_superseded_upserts(deps, jobs).await;
    let mut upserts: Vec<&mut Job> = Vec::new();
    for job in jobs.iter_mut() {
        let step = std::mem::replace(&mut job.step, Step::Received);
        let seq = job.seq;
        job.step = match step {
            Step::Planned(Work::DeletePoint(id, result)) => {
                write_upserts(deps, std::mem::take(&mut upserts)).await;
                Step::Done(finish_delete(
                    result,
                    delete_point(deps, job.org_id, id, seq).await,
                ))
            }
            Step::Planned(Work::DeleteAsset(asset_id, result)) => {
                write_upserts(deps, std::mem::take(&mut upserts)).await;
                let filter = PointFilter {
                    asset_id: Some(asset_id.into_inner()),
                    before_seq: Some(seq),
                    ..PointFilter::default()
                };
                let deleted = deps.store.delete_by_filter(job.org_id, filter).await;
                Step::Done(finish_delete(result, deleted))
            }
            Step::Planned(Work::Document(work)) => {
                write_upserts(deps, std::mem::take(&mut upserts)).await;
                Step::Done(write_document(deps, job.org_id, *work).await)
            }
            step @ Step::Planned(Work::Upsert(..)) => {
                job.step = step;
                upserts.push(job);
                continue;
            }
            other @ (Step::Received | Step::Started | Step::Done(_) | Step::Over(_)) => other,
        };
    }
    write_upserts(deps, upserts).await;
    undo_if_deleted(deps, jobs).await;
}

/// Deletes one point, unless it was written after the delete in the log (its `seq` is
/// higher): a delete removes what came before it, never what came after.
async fn delete_point(
    deps: &Deps<'_>,
    org_id: Uuid,
    id: Uuid,
    seq: u64,
) -> Result<u64, StoreError> {
    let deleted = match deps.store.get(org_id, id, false).await? {
        Some(point) if point.payload.seq.is_none_or(|written| written < seq) => {
            deps.store.delete_points(org_id, &[id]).await?
        }
        Some(_) | None => 0,
    };
    if deps.held.moved.is_empty() {
        return Ok(deleted);
    }
    // A model change re-embedded the point under another id: it is deleted by the id the
    // client knows, as it would have been before the change.
    let moved = PointFilter {
        moved_from: Some(id),
        before_seq: Some(seq),
        ..PointFilter::default()
    };
    Ok(deleted + deps.store.delete_by_filter(org_id, moved).await?)
}

/// Writes a document's new or changed chunks, then deletes its stale ones.
async fn write_document(
    deps: &Deps<'_>,
    org_id: Uuid,
    work: DocumentWork,
) -> Result<JobResult, JobFailure> {
    let DocumentWork {
        upserts,
        stale,
        mut result,
    } = work;
    if !upserts.is_empty() {
        deps.store
            .upsert(upserts)
            .await
            .map_err(|err| JobFailure::from(&err))?;
    }
    let deleted = deps
        .store
        .delete_points(org_id, &stale)
        .await
        .map_err(|err| JobFailure::from(&err))?;
    result.deleted = Some(deleted);
    Ok(result)
}

/// Single-segment writes that a later delete of their point or asset supersedes write nothing
/// (see [`superseded`]); a failed read retries the job.
async fn drop_superseded_upserts(deps: &Deps<'_>, jobs: &mut [Job]) {
    let upserts: Vec<usize> = jobs
        .iter()
        .enumerate()
        .filter(|(_, job)| matches!(job.step, Step::Planned(Work::Upsert(..))))
        .map(|(i, _)| i)
        .collect();
    let later = later_deletes(deps, jobs, &upserts).await;
    for (i, later) in upserts.into_iter().zip(later) {
        let job = &mut jobs[i];
        match later {
            Ok(None) => {}
            Ok(Some(_)) => {
                if let Step::Planned(Work::Upsert(_, mut result)) =
                    std::mem::replace(&mut job.step, Step::Received)
                {
                    result.superseded = true;
                    job.step = Step::Done(Ok(result));
                }
            }
            Err(failure) => job.step = Step::Done(Err(failure)),
        }
    }
}

/// After the writes: a delete of a written target requested while the job ran (after its
/// [`superseded`] check) may have been applied before the write landed. Its tombstone was
/// stored before it was requested, so it is visible now; the write is undone as that delete
/// would have done it (only what came before the delete in the log).
async fn undo_if_deleted(deps: &Deps<'_>, jobs: &mut [Job]) {
    let writes: Vec<usize> = jobs
        .iter()
        .enumerate()
        .filter(|(_, job)| {
            matches!(&job.step, Step::Done(Ok(result)) if !result.superseded)
                && matches!(
                    job.spec,
                    JobSpec::Embedding(_) | JobSpec::MockEmbedding(_) | JobSpec::Document(_)
                )
        })
        .map(|(i, _)| i)
        .collect();
    let later = later_deletes(deps, jobs, &writes).await;
    let undone = join_all(writes.iter().zip(later).map(|(&i, later)| {
        let job = &jobs[i];
        async move {
            let Some(delete_seq) = later? else {
                return Ok(false);
            };
            let Step::Done(Ok(result)) = &job.step else {
                return Ok(false);
            };
            let asset_id = match &job.spec {
                JobSpec::Document(params) => params.asset_id.to_string(),
                JobSpec::MockEmbedding(_)
                | JobSpec::Embedding(_)
                | JobSpec::DeletePoint(_)
                | JobSpec::DeleteAsset(_) => {
                    for id in &result.point_ids {
                        delete_point(deps, job.org_id, *id, delete_seq)
                            .await
                            .map_err(|err| JobFailure::from(&err))?;
                    }
                    return Ok(true);
                }
            };
            let filter = PointFilter {
                asset_id: Some(asset_id),
                before_seq: Some(delete_seq),
                ..PointFilter::default()
            };
            deps.store
                .delete_by_filter(job.org_id, filter)
                .await
                .map_err(|err| JobFailure::from(&err))?;
            Ok::<_, JobFailure>(true)
        }
    }))
    .await;
    for (i, undone) in writes.into_iter().zip(undone) {
        let job = &mut jobs[i];
        match undone {
            Ok(false) => {}
            Ok(true) => {
                if let Step::Done(Ok(result)) = &mut job.step {
                    result.superseded = true;
                }
            }
            Err(failure) => job.step = Step::Done(Err(failure)),
        }
    }
}

fn finish_delete(
    mut result: JobResult,
    deleted: Result<u64, StoreError>,
) -> Result<JobResult, JobFailure> {
    let deleted = deleted.map_err(|err| JobFailure::from(&err))?;
    result.deleted = Some(deleted);
    Ok(result)
}

/// Writes the jobs' points in one call; if that fails for bad input, each point is written
/// alone so one bad job cannot sink the others.
async fn write_upserts(deps: &Deps<'_>, jobs: Vec<&mut Job>) {
    let points: Vec<NewPoint> = jobs
        .iter()
        .filter_map(|job| match &job.step {
            Step::Planned(Work::Upsert(point, _)) => Some(point.as_ref().clone()),
            Step::Planned(Work::DeletePoint(..) | Work::DeleteAsset(..) | Work::Document(..))
            | Step::Received
            | Step::Started
            | Step::Done(_)
            | Step::Over(_) => None,
        })
        .collect();
    if points.is_empty() {
        return;
    }
    let written = deps.store.upsert(points).await;
    let alone = matches!(written, Err(StoreError::InvalidInput(_))) && jobs.len() > 1;
    for job in jobs {
        let Step::Planned(Work::Upsert(point, result)) =
            std::mem::replace(&mut job.step, Step::Received)
        else {
            continue;
        };
        job.step = Step::Done(match (&written, alone) {
            (Ok(()), _) => Ok(result),
            (Err(_), true) => match deps.store.upsert(vec![*point]).await {
                Ok(()) => Ok(result),
                Err(err) => Err(JobFailure::from(&err)),
            },
            (Err(err), false) => Err(JobFailure::from(err)),
        });
    }
}

/// Records each job's end: waits for its `started` event to be stored, then stores its
/// `succeeded` or `failed` event (or, for a failure that may pass, nothing: it is retried).
async fn record(
    config: &WorkerConfig,
    deps: &Deps<'_>,
    stopping: &CancellationToken,
    jobs: &mut [Job],
) {
    let started = join_all(jobs.iter_mut().map(|job| async move {
        match job.started.take() {
            Some(sent) => {
                let event = started_event(job);
                persist(deps, stopping, job, &event, sent).await.is_ok()
            }
            None => true,
        }
    }))
    .await;
    let mut ends = Vec::new();
    for (job, started) in jobs.iter_mut().zip(started) {
        let Step::Done(result) = std::mem::replace(&mut job.step, Step::Received) else {
            continue;
        };
        if !started {
            tracing::warn!(job_id = %job.job_id, "cannot record `started`");
            job.step = Step::Over(Outcome::Unrecorded);
            continue;
        }
        let (outcome, data) = match result {
            Ok(result) => (
                Outcome::Succeeded,
                EventData::Succeeded(Succeeded {
                    attempt: job.attempt,
                    round: job.round,
                    result,
                }),
            ),
            // Input that can never succeed (empty text, unknown model, wrong dimension, ...)
            // fails at once. Anything else is retried until the last delivery.
            Err(JobFailure::Invalid(message)) => (
                Outcome::Failed(JobErrorCode::InvalidInput),
                failed(job, JobErrorCode::InvalidInput, message),
            ),
            Err(JobFailure::Retryable(code, message)) if job.attempt >= config.max_deliver => {
                (Outcome::Failed(code), failed(job, code, message))
            }
            Err(JobFailure::Retryable(code, message)) => {
                metrics::counter!(
                    "heimdex_job_retries_total",
                    "job_type" => job.spec.job_type(),
                    "code" => code.as_str(),
                )
                .increment(1);
                tracing::warn!(job_id = %job.job_id, attempt = job.attempt, %message, "job failed; will retry");
                job.step = Step::Over(Outcome::Retrying(retry_delay(job.attempt)));
                continue;
            }
        };
        let event = JobEvent::new(job.org_id, job.job_id, data);
        ends.push((job, outcome, event));
    }
    let stored = join_all(ends.iter().map(|(job, _, event)| async move {
        let sent = send(deps, job, event.clone()).await;
        persist(deps, stopping, job, event, sent).await
    }))
    .await;
    for ((job, outcome, _), stored) in ends.into_iter().zip(stored) {
        job.step = Step::Over(match stored {
            Ok(()) => {
                count_end(job, &outcome);
                outcome
            }
            Err(err) => {
                tracing::warn!(error = %err, job_id = %job.job_id, "cannot record the job's end");
                Outcome::Unrecorded
            }
        });
    }
}

/// Counts a job round whose end is stored, and its latency.
fn count_end(job: &Job, outcome: &Outcome) {
    let job_type = job.spec.job_type();
    let ended = match outcome {
        Outcome::Succeeded => {
            metrics::counter!("heimdex_jobs_succeeded_total", "job_type" => job_type).increment(1);
            "succeeded"
        }
        Outcome::Failed(code) => {
            metrics::counter!(
                "heimdex_jobs_failed_total",
                "job_type" => job_type,
                "code" => code.as_str(),
            )
            .increment(1);
            "failed"
        }
        Outcome::AlreadyEnded | Outcome::Retrying(_) | Outcome::Unusable | Outcome::Unrecorded => {
            return;
        }
    };
    // A clock that went backwards (another host's) counts as no wait rather than none at all.
    let latency = (Utc::now() - job.asked_at).to_std().unwrap_or_default();
    metrics::histogram!(
        "heimdex_job_duration_seconds",
        "job_type" => job_type,
        "outcome" => ended,
    )
    .record(latency.as_secs_f64());
}

fn failed(job: &Job, code: JobErrorCode, message: String) -> EventData {
    EventData::Failed(Failed {
        attempt: job.attempt,
        round: job.round,
        error: JobError::new(code, message),
    })
}
