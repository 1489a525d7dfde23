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
use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};
use chrono::{DateTime, Utc};
use futures::future::join_all;
use tracing::Span;
use uuid::Uuid;

use heimdex_domain::events::{EventData, EventKind, Failed, JobEvent, Started, Succeeded};
use heimdex_domain::jobs::{
    ChunkInfo, DeleteAssetParams, DeletePointParams, EmbedParams, JobError, JobErrorCode,
    JobResult, JobSpec, MockParams,
};
use heimdex_domain::{AssetId, SegmentId, ids};
use heimdex_embed::{EmbedError, EmbedQueue, ModelError, Priority};
use heimdex_event_store::log::{AppendError, PendingAppend};
use heimdex_store::{NewPoint, Payload, PointFilter, StoreError};

use crate::backoff::retry_delay;
use crate::{WorkerConfig, WorkerDeps};

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
    /// NATS failed mid-job, so its start or its end could not be recorded: abandoned (left
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
struct Job<'m> {
    message: &'m Message,
    org_id: Uuid,
    job_id: Uuid,
    /// 0 for a `requested` message, n for the n-th `retried`.
    round: u32,
    /// Delivery count of this message: attempts within the round.
    attempt: u32,
    /// When the round was asked for (the `requested` or `retried` event's time): a job's
    /// latency counts from here.
    asked_at: DateTime<Utc>,
    spec: JobSpec,
    span: Span,
    /// The `started` event, sent and not yet acknowledged.
    started: Option<Result<PendingAppend, AppendError>>,
    step: Step,
}

/// Runs the batch through the pipeline; each message comes back with its outcome, in order.
pub(crate) async fn process<'m>(
    config: &WorkerConfig,
    deps: &WorkerDeps,
    embeddings: &EmbedQueue,
    collection_ready: &AtomicBool,
    messages: &'m [Message],
) -> Vec<(&'m Message, Outcome)> {
    let mut unusable = Vec::new();
    let mut jobs: Vec<Job<'m>> = Vec::with_capacity(messages.len());
    for message in messages {
        match decode(message) {
            Some(job) => jobs.push(job),
            None => unusable.push(message),
        }
    }
    guard(deps, &mut jobs).await;
    start(deps, &mut jobs).await;
    plan(config, deps, embeddings, &mut jobs).await;
    store(config, deps, collection_ready, &mut jobs).await;
    record(config, deps, &mut jobs).await;

    let mut outcomes: Vec<(&Message, Outcome)> = unusable
        .into_iter()
        .map(|message| (message, Outcome::Unusable))
        .collect();
    outcomes.extend(jobs.into_iter().map(|job| {
        let outcome = match job.step {
            Step::Over(outcome) => outcome,
            // Every step moves a job on; one left behind did not get its end recorded.
            Step::Received | Step::Started | Step::Planned(_) | Step::Done(_) => {
                Outcome::Unrecorded
            }
        };
        (job.message, outcome)
    }));
    outcomes
}

/// Reads a delivery; `None` (logged) when it is not a job this worker can run.
fn decode(message: &Message) -> Option<Job<'_>> {
    let unusable = |reason: &dyn std::fmt::Display| {
        tracing::error!(subject = %message.subject, %reason, "unusable job message; terminating");
    };
    let info = message.info().map_err(|err| unusable(&err)).ok()?;
    let attempt = u32::try_from(info.delivered).unwrap_or(u32::MAX);
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
        message,
        org_id: event.org_id,
        job_id: event.job_id,
        round,
        attempt,
        asked_at: event.time,
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
async fn guard(deps: &WorkerDeps, jobs: &mut [Job<'_>]) {
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
async fn round_ended_in_log(deps: &WorkerDeps, job: &Job<'_>) -> bool {
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
async fn start(deps: &WorkerDeps, jobs: &mut [Job<'_>]) {
    let live: Vec<&mut Job<'_>> = jobs
        .iter_mut()
        .filter(|job| matches!(job.step, Step::Received))
        .collect();
    let sent = join_all(live.iter().map(|job| {
        let event = JobEvent::new(
            job.org_id,
            job.job_id,
            EventData::Started(Started {
                attempt: job.attempt,
                round: job.round,
            }),
        );
        send(deps, job, event)
    }))
    .await;
    for (job, sent) in live.into_iter().zip(sent) {
        job.started = Some(sent);
        job.step = Step::Started;
    }
}

/// Sends one of the job's events within its span, so the event carries the job's trace.
async fn send(
    deps: &WorkerDeps,
    job: &Job<'_>,
    event: JobEvent,
) -> Result<PendingAppend, AppendError> {
    use tracing::Instrument as _;
    deps.log.send(&event).instrument(job.span.clone()).await
}

/// Works out every started job's store operation. The texts of the batch are embedded
/// together, one call per model, so one forward pass serves many jobs.
async fn plan(
    config: &WorkerConfig,
    deps: &WorkerDeps,
    embeddings: &EmbedQueue,
    jobs: &mut [Job<'_>],
) {
    let mut to_embed: HashMap<String, Vec<&mut Job<'_>>> = HashMap::new();
    for job in jobs
        .iter_mut()
        .filter(|job| matches!(job.step, Step::Started))
    {
        match plan_without_model(config, job) {
            Some(step) => job.step = step,
            None => {
                if let JobSpec::Embedding(params) = &job.spec {
                    let model = params.model.clone();
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
        let vectors = embed(deps, embeddings, &model, &jobs).await;
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
                        model,
                        model_ver,
                        text,
                        chunk,
                    } = params;
                    let payload = payload(
                        job.org_id,
                        asset_id,
                        segment_id,
                        model,
                        model_ver,
                        text.clone(),
                        *chunk,
                    );
                    Step::Planned(upsert(config, job.org_id, payload, vector))
                }
                Err(failure) => Step::Done(Err(failure)),
            };
        }
    }
}

/// The step a job's work leads to, when no model is needed to work it out; `None` for a text
/// to embed.
fn plan_without_model(config: &WorkerConfig, job: &Job<'_>) -> Option<Step> {
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
                job.org_id, asset_id, segment_id, model, model_ver, text, None,
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
    })
}

/// Embeds the texts of `jobs` (all naming `model`) in one call. Returns a vector, or the reason
/// there is none, per job.
async fn embed(
    deps: &WorkerDeps,
    embeddings: &EmbedQueue,
    model: &str,
    jobs: &[&mut Job<'_>],
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
        if params.model_ver == embedder.model_ver() {
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

fn payload(
    org_id: Uuid,
    asset_id: &AssetId,
    segment_id: &SegmentId,
    model: &str,
    model_ver: &str,
    text: String,
    chunk: Option<ChunkInfo>,
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
        org_id,
        asset_id: asset_id.to_string(),
        segment_id: segment_id.to_string(),
        model: model.to_owned(),
        model_ver: model_ver.to_owned(),
        text: Some(text),
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
    }
}

/// Applies the planned work in stream order: runs of upserts are written in one call, and a
/// delete waits for the upserts before it (so "write, then delete" in one batch ends deleted,
/// and "delete, then write" ends written).
async fn store(
    config: &WorkerConfig,
    deps: &WorkerDeps,
    collection_ready: &AtomicBool,
    jobs: &mut [Job<'_>],
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
            Step::Received | Step::Started | Step::Done(_) | Step::Over(_) => None,
        })
        .collect();
    let mut upserts: Vec<&mut Job<'_>> = Vec::new();
    for job in jobs.iter_mut() {
        let step = std::mem::replace(&mut job.step, Step::Received);
        job.step = match step {
            Step::Planned(Work::DeletePoint(id, result)) => {
                write_upserts(deps, std::mem::take(&mut upserts)).await;
                let deleted = deps.store.delete_points(job.org_id, &[id]).await;
                Step::Done(finish_delete(result, deleted))
            }
            Step::Planned(Work::DeleteAsset(asset_id, result)) => {
                write_upserts(deps, std::mem::take(&mut upserts)).await;
                let filter = PointFilter {
                    asset_id: Some(asset_id.into_inner()),
                    ..PointFilter::default()
                };
                let deleted = deps.store.delete_by_filter(job.org_id, filter).await;
                Step::Done(finish_delete(result, deleted))
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
async fn write_upserts(deps: &WorkerDeps, jobs: Vec<&mut Job<'_>>) {
    let points: Vec<NewPoint> = jobs
        .iter()
        .filter_map(|job| match &job.step {
            Step::Planned(Work::Upsert(point, _)) => Some(point.as_ref().clone()),
            Step::Planned(Work::DeletePoint(..) | Work::DeleteAsset(..))
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
async fn record(config: &WorkerConfig, deps: &WorkerDeps, jobs: &mut [Job<'_>]) {
    let started = join_all(jobs.iter_mut().map(|job| async move {
        match job.started.take() {
            Some(Ok(pending)) => pending.stored().await.is_ok(),
            Some(Err(_)) => false,
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
        let sent = send(deps, job, event).await;
        ends.push((job, outcome, sent));
    }
    let stored = join_all(ends.iter_mut().map(|(_, _, sent)| async move {
        match std::mem::replace(sent, Err(AppendError::Disconnected)) {
            Ok(pending) => pending.stored().await,
            Err(err) => Err(err),
        }
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
fn count_end(job: &Job<'_>, outcome: &Outcome) {
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

fn failed(job: &Job<'_>, code: JobErrorCode, message: String) -> EventData {
    EventData::Failed(Failed {
        attempt: job.attempt,
        round: job.round,
        error: JobError::new(code, message),
    })
}
