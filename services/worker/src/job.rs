//! One batch of `requested` (or `retried`) messages: decode → terminal guard → `started` →
//! vectors → one upsert → `succeeded`/`failed`. Returns what to do with each message; the caller
//! acknowledges.
//!
//! A `retried` message starts round n of a FAILED job: it carries the job's spec, its delivery
//! count starts again at 1, and the events of the round carry `round: n` (and ids of their own,
//! `<job>:<event>:<n>.<attempt>`), so a new round is never taken for a redelivery of an old one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::Message;
use async_nats::jetstream::context::{PublishAckFuture, PublishError};
use async_nats::jetstream::message::PublishMessage;
use futures::future::join_all;
use tracing::Span;
use uuid::Uuid;

use heimdex_domain::events::{self, EventData, Failed, JobEvent, Started, Succeeded};
use heimdex_domain::ids;
use heimdex_domain::jobs::{
    ChunkInfo, DeleteAssetParams, DeletePointParams, EmbedParams, JobError, JobErrorCode,
    JobResult, JobSpec, JobStatus, MockParams,
};
use heimdex_embed::{EmbedError, EmbedQueue, ModelError, Priority};
use heimdex_event_store::jetstream::status_key;
use heimdex_store::{NewPoint, Payload, PointFilter, StoreError};

use crate::backoff::retry_delay;
use crate::{WorkerConfig, WorkerDeps};

/// What to do with a message once its job has been handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    Ack,
    /// NAK with this delay: the job is retried.
    Retry(Duration),
    /// Terminate: the job is over (its `failed` event is stored) or the message is unusable.
    Term,
    /// Do nothing: NATS failed mid-job, so nothing could be recorded; redelivery after
    /// `ack_wait` tries again.
    Abandon,
}

/// How a message's job ended, for the caller (and tests).
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub job_id: Option<Uuid>,
    pub kind: OutcomeKind,
    pub disposition: Disposition,
}

#[derive(Clone, Debug, PartialEq)]
pub enum OutcomeKind {
    Succeeded,
    /// The job's status was already terminal: nothing to do.
    AlreadyTerminal,
    Retrying,
    Failed(JobErrorCode),
    /// Events could not be published; the message will be redelivered.
    Interrupted,
}

/// A decoded delivery.
struct Job {
    index: usize,
    org_id: Uuid,
    job_id: Uuid,
    /// 0 for a `requested` message, n for the n-th `retried`.
    round: u32,
    /// Delivery count of this message: attempts within the round.
    attempt: u32,
    spec: JobSpec,
    span: Span,
}

pub(crate) async fn process(
    config: &WorkerConfig,
    deps: &WorkerDeps,
    embeddings: &EmbedQueue,
    collection_ready: &AtomicBool,
    messages: &[Message],
) -> Vec<Outcome> {
    let mut outcomes: Vec<Option<Outcome>> = vec![None; messages.len()];

    let mut jobs = Vec::with_capacity(messages.len());
    for (index, message) in messages.iter().enumerate() {
        match decode(index, message) {
            Ok(job) => jobs.push(job),
            Err(outcome) => outcomes[index] = Some(outcome),
        }
    }

    // Terminal guard: skip redelivered jobs whose round already ended (the worker crashed between
    // its last event and its ack, say), or whose round was superseded by a retry. A first
    // delivery has not run before, so it skips the read; should a consumer ever be reset,
    // re-running is idempotent anyway. A failed read only costs that idempotent re-work, so it
    // does not stop the job. A status of an earlier round (the projection has not seen this
    // round's `retried` yet) is not this round's end: the job runs. The projection can lag the
    // stream (NATS was away, say, and the ack of the earlier attempt was lost with it), so when
    // it shows no end, the stream itself is asked for this round's `succeeded` or `failed`.
    let ended = join_all(jobs.iter().map(|job| async move {
        if job.attempt <= 1 {
            return false;
        }
        let projected = deps
            .status
            .get(status_key(job.org_id, job.job_id))
            .await
            .ok()
            .flatten()
            .and_then(|bytes| serde_json::from_slice::<JobStatus>(&bytes).ok())
            .is_some_and(|status| {
                status.retries > job.round
                    || (status.retries == job.round && status.status.is_terminal())
            });
        projected || round_ended_in_stream(deps, job).await
    }))
    .await;
    let mut live = Vec::with_capacity(jobs.len());
    for (job, terminal) in jobs.into_iter().zip(ended) {
        if terminal {
            tracing::debug!(job_id = %job.job_id, "job already terminal; skipping");
            outcomes[job.index] = Some(outcome(
                &job,
                OutcomeKind::AlreadyTerminal,
                Disposition::Ack,
            ));
        } else {
            live.push(job);
        }
    }

    let started = join_all(live.iter().map(|job| {
        publish(
            deps,
            job,
            EventData::Started(Started {
                attempt: job.attempt,
                round: job.round,
            }),
        )
    }))
    .await;

    // Vectors are computed for the whole batch at once (texts of one model embedded together),
    // so each job's `worker.embed` span covers its batch's work; `batch` says how many shared it.
    let embed_spans: Vec<Span> = live
        .iter()
        .filter_map(|job| {
            let model = match &job.spec {
                JobSpec::MockEmbedding(params) => &params.model,
                JobSpec::Embedding(params) => &params.model,
                JobSpec::DeletePoint(_) | JobSpec::DeleteAsset(_) => return None,
            };
            Some(tracing::info_span!(parent: &job.span, "worker.embed", model = %model, batch = live.len()))
        })
        .collect();
    let planned = plan(config, deps, embeddings, &live).await;
    drop(embed_spans);

    let store_spans: Vec<Span> = live
        .iter()
        .map(|job| match job.spec {
            JobSpec::MockEmbedding(_) | JobSpec::Embedding(_) => tracing::info_span!(parent: &job.span, "vector_store.upsert", collection = %config.collection),
            JobSpec::DeletePoint(_) | JobSpec::DeleteAsset(_) => tracing::info_span!(parent: &job.span, "vector_store.delete", collection = %config.collection),
        })
        .collect();
    let (mut stored, started_acks) = tokio::join!(
        execute(deps, collection_ready, planned),
        join_all(
            started
                .into_iter()
                .map(|ack| async move { ack?.await.map(|_| ()) })
        )
    );
    drop(store_spans);

    let mut finals = Vec::with_capacity(live.len());
    for (job, started_ack) in live.into_iter().zip(started_acks) {
        if let Err(err) = started_ack {
            tracing::warn!(%err, job_id = %job.job_id, "cannot record `started`");
            outcomes[job.index] = Some(outcome(
                &job,
                OutcomeKind::Interrupted,
                Disposition::Abandon,
            ));
            continue;
        }
        let (kind, data, disposition) = match stored.remove(&job.index) {
            Some(Ok(result)) => (
                OutcomeKind::Succeeded,
                Some(EventData::Succeeded(Succeeded {
                    attempt: job.attempt,
                    round: job.round,
                    result,
                })),
                Disposition::Ack,
            ),
            // Input that can never succeed (empty text, unknown model, wrong dimension, ...)
            // fails at once. Anything else is retried until the last delivery.
            Some(Err(JobFailure::Invalid(message))) => (
                OutcomeKind::Failed(JobErrorCode::InvalidInput),
                Some(failed(&job, JobErrorCode::InvalidInput, message)),
                Disposition::Term,
            ),
            Some(Err(JobFailure::Retryable(code, message)))
                if job.attempt >= config.max_deliver =>
            {
                (
                    OutcomeKind::Failed(code),
                    Some(failed(&job, code, message)),
                    Disposition::Term,
                )
            }
            Some(Err(JobFailure::Retryable(_, message))) => {
                tracing::warn!(job_id = %job.job_id, attempt = job.attempt, %message, "job failed; will retry");
                (
                    OutcomeKind::Retrying,
                    None,
                    Disposition::Retry(retry_delay(job.attempt)),
                )
            }
            None => (OutcomeKind::Interrupted, None, Disposition::Abandon),
        };
        let ack = match data {
            Some(data) => Some(publish(deps, &job, data).await),
            None => None,
        };
        finals.push((job, kind, disposition, ack));
    }

    let acks = join_all(finals.iter_mut().map(|(_, _, _, ack)| async move {
        match ack.take() {
            Some(ack) => ack?.await.map(|_| ()),
            None => Ok(()),
        }
    }))
    .await;
    for ((job, kind, disposition, _), ack) in finals.into_iter().zip(acks) {
        outcomes[job.index] = Some(match ack {
            Ok(()) => outcome(&job, kind, disposition),
            Err(err) => {
                tracing::warn!(%err, job_id = %job.job_id, "cannot record the job's end");
                outcome(&job, OutcomeKind::Interrupted, Disposition::Abandon)
            }
        });
    }

    outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or(Outcome {
                job_id: None,
                kind: OutcomeKind::Interrupted,
                disposition: Disposition::Abandon,
            })
        })
        .collect()
}

fn outcome(job: &Job, kind: OutcomeKind, disposition: Disposition) -> Outcome {
    Outcome {
        job_id: Some(job.job_id),
        kind,
        disposition,
    }
}

fn failed(job: &Job, code: JobErrorCode, message: String) -> EventData {
    EventData::Failed(Failed {
        attempt: job.attempt,
        round: job.round,
        error: JobError::new(code, message),
    })
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

/// Reads a delivery; an unusable message is terminated (it can never succeed).
/// Whether the stream holds a `succeeded` or `failed` event of the job's current round (the
/// last of each kind is enough: rounds only grow). A failed read counts as "no".
async fn round_ended_in_stream(deps: &WorkerDeps, job: &Job) -> bool {
    let Ok(stream) = deps
        .js
        .get_stream_no_info(heimdex_event_store::jetstream::JOBS_STREAM)
        .await
    else {
        return false;
    };
    for kind in [events::EventKind::Succeeded, events::EventKind::Failed] {
        let subject = events::subject(job.org_id, job.job_id, kind);
        if let Ok(message) = stream.direct_get_last_for_subject(subject).await
            && JobEvent::decode(&message.payload).is_ok_and(|event| event.data.round() == job.round)
        {
            return true;
        }
    }
    false
}

fn decode(index: usize, message: &Message) -> Result<Job, Outcome> {
    let unusable = |reason: String| {
        tracing::error!(subject = %message.subject, %reason, "unusable job message; terminating");
        Outcome {
            job_id: None,
            kind: OutcomeKind::Failed(JobErrorCode::InvalidInput),
            disposition: Disposition::Term,
        }
    };
    let info = message.info().map_err(|err| unusable(err.to_string()))?;
    let attempt = u32::try_from(info.delivered).unwrap_or(u32::MAX);
    let event = JobEvent::decode(&message.payload).map_err(|err| unusable(err.to_string()))?;
    let (round, spec) = match event.data {
        EventData::Requested(requested) => (0, requested.spec),
        EventData::Retried(retried) => (retried.round, retried.spec),
        other @ (EventData::Started(_) | EventData::Succeeded(_) | EventData::Failed(_)) => {
            return Err(unusable(format!(
                "expected a requested or retried event, got {:?}",
                other.kind()
            )));
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
    Ok(Job {
        index,
        org_id: event.org_id,
        job_id: event.job_id,
        round,
        attempt,
        spec,
        span,
    })
}

/// What one job does to the store.
enum Work {
    Upsert(Box<NewPoint>, JobResult),
    DeletePoint(Uuid, Uuid, JobResult),
    DeleteAsset(Uuid, String, JobResult),
    /// Decided without touching the store.
    Done(Result<JobResult, JobFailure>),
}

/// Works out every job's store operation. Texts are embedded together, one call per model, so
/// one forward pass serves many jobs.
async fn plan(
    config: &WorkerConfig,
    deps: &WorkerDeps,
    embeddings: &EmbedQueue,
    jobs: &[Job],
) -> Vec<(usize, Work)> {
    let mut work: Vec<(usize, Work)> = Vec::with_capacity(jobs.len());
    // model name -> (jobs' positions in `work`, texts)
    let mut to_embed: HashMap<&str, (Vec<usize>, Vec<String>)> = HashMap::new();
    for job in jobs {
        let item = match &job.spec {
            JobSpec::MockEmbedding(MockParams {
                asset_id,
                segment_id,
                model,
                model_ver,
            }) => {
                let vector = ids::mock_vector(job.org_id, asset_id, segment_id, config.vector_size);
                let text = format!("Mock embedding for asset {asset_id}, segment {segment_id}");
                let payload = payload(
                    job.org_id, asset_id, segment_id, model, model_ver, text, None,
                );
                upsert_work(config, job.org_id, payload, vector)
            }
            JobSpec::Embedding(params) => {
                if params.text.trim().is_empty() {
                    Work::Done(Err(JobFailure::Invalid(
                        "text is empty or whitespace-only".to_owned(),
                    )))
                } else {
                    to_embed
                        .entry(params.model.as_str())
                        .or_default()
                        .0
                        .push(work.len());
                    // Replaced below once the model's texts are embedded; stays (retryable) only
                    // if the embedder returned too few vectors.
                    Work::Done(Err(JobFailure::Retryable(
                        JobErrorCode::Internal,
                        "not embedded".to_owned(),
                    )))
                }
            }
            JobSpec::DeletePoint(DeletePointParams { point_id, .. }) => Work::DeletePoint(
                job.org_id,
                *point_id,
                delete_result(config, vec![*point_id]),
            ),
            JobSpec::DeleteAsset(DeleteAssetParams { asset_id, .. }) => Work::DeleteAsset(
                job.org_id,
                asset_id.clone(),
                delete_result(config, Vec::new()),
            ),
        };
        work.push((job.index, item));
    }

    for (model, (positions, _)) in to_embed {
        let params: Vec<&EmbedParams> = positions
            .iter()
            .filter_map(|&p| jobs.get(p))
            .filter_map(|job| match &job.spec {
                JobSpec::Embedding(params) => Some(params),
                JobSpec::MockEmbedding(_) | JobSpec::DeletePoint(_) | JobSpec::DeleteAsset(_) => {
                    None
                }
            })
            .collect();
        let embedded = embed(deps, embeddings, model, &params).await;
        for ((&position, params), vector) in positions.iter().zip(&params).zip(embedded) {
            let (Some(job), Some(slot)) = (jobs.get(position), work.get_mut(position)) else {
                continue;
            };
            slot.1 = match vector {
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
                    upsert_work(config, job.org_id, payload, vector)
                }
                Err(failure) => Work::Done(Err(failure)),
            };
        }
    }
    work
}

/// Embeds the texts of `params` (all naming `model`) through the embedding queue, as one
/// request. Returns a vector, or the reason there is none, per input.
async fn embed(
    deps: &WorkerDeps,
    embeddings: &EmbedQueue,
    model: &str,
    params: &[&EmbedParams],
) -> Vec<Result<Vec<f32>, JobFailure>> {
    let all = |failure: JobFailure| vec![Err(failure); params.len()];
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
    let mut texts = Vec::with_capacity(params.len());
    let mut results: Vec<Option<Result<Vec<f32>, JobFailure>>> = Vec::with_capacity(params.len());
    for p in params {
        if p.model_ver == embedder.model_ver() {
            texts.push(p.text.clone());
            results.push(None);
        } else {
            results.push(Some(Err(JobFailure::Invalid(format!(
                "model `{model}` version `{}` is not served here (this worker has `{}`)",
                p.model_ver,
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
    asset_id: &str,
    segment_id: &str,
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
        asset_id: asset_id.to_owned(),
        segment_id: segment_id.to_owned(),
        model: model.to_owned(),
        model_ver: model_ver.to_owned(),
        text: Some(text),
        extra,
    }
}

fn upsert_work(config: &WorkerConfig, org_id: Uuid, payload: Payload, vector: Vec<f32>) -> Work {
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

/// Applies the batch's work in stream order: runs of upserts are written in one call, and a
/// delete waits for the upserts before it (so "write, then delete" in one batch ends deleted,
/// and "delete, then write" ends written). Returns each job's result by message index.
async fn execute(
    deps: &WorkerDeps,
    collection_ready: &AtomicBool,
    work: Vec<(usize, Work)>,
) -> HashMap<usize, Result<JobResult, JobFailure>> {
    let mut results = HashMap::with_capacity(work.len());
    let touches_store = work.iter().any(|(_, w)| !matches!(w, Work::Done(_)));
    if touches_store && !collection_ready.load(Ordering::Acquire) {
        match deps.store.ensure_collection().await {
            Ok(()) => collection_ready.store(true, Ordering::Release),
            Err(err) => {
                let failure = JobFailure::from(&err);
                for (index, w) in work {
                    let result = match w {
                        Work::Done(result) => result,
                        Work::Upsert(..) | Work::DeletePoint(..) | Work::DeleteAsset(..) => {
                            Err(failure.clone())
                        }
                    };
                    results.insert(index, result);
                }
                return results;
            }
        }
    }
    let mut pending: Vec<(usize, NewPoint, JobResult)> = Vec::new();
    for (index, w) in work {
        match w {
            Work::Done(result) => {
                results.insert(index, result);
            }
            Work::Upsert(point, result) => pending.push((index, *point, result)),
            Work::DeletePoint(org_id, id, result) => {
                upsert(deps, std::mem::take(&mut pending), &mut results).await;
                let deleted = deps.store.delete_points(org_id, &[id]).await;
                results.insert(index, finish_delete(result, deleted));
            }
            Work::DeleteAsset(org_id, asset_id, result) => {
                upsert(deps, std::mem::take(&mut pending), &mut results).await;
                let filter = PointFilter {
                    asset_id: Some(asset_id),
                    ..PointFilter::default()
                };
                let deleted = deps.store.delete_by_filter(org_id, filter).await;
                results.insert(index, finish_delete(result, deleted));
            }
        }
    }
    upsert(deps, pending, &mut results).await;
    results
}

fn finish_delete(
    mut result: JobResult,
    deleted: Result<u64, StoreError>,
) -> Result<JobResult, JobFailure> {
    let deleted = deleted.map_err(|err| JobFailure::from(&err))?;
    result.deleted = Some(deleted);
    Ok(result)
}

/// Writes the points in one call; if that fails for bad input, each point is written alone so
/// one bad job cannot sink the others.
async fn upsert(
    deps: &WorkerDeps,
    points: Vec<(usize, NewPoint, JobResult)>,
    results: &mut HashMap<usize, Result<JobResult, JobFailure>>,
) {
    if points.is_empty() {
        return;
    }
    let batch: Vec<NewPoint> = points.iter().map(|(_, point, _)| point.clone()).collect();
    match deps.store.upsert(batch).await {
        Ok(()) => {
            for (index, _, result) in points {
                results.insert(index, Ok(result));
            }
        }
        Err(StoreError::InvalidInput(_)) if points.len() > 1 => {
            for (index, point, result) in points {
                let outcome = match deps.store.upsert(vec![point]).await {
                    Ok(()) => Ok(result),
                    Err(err) => Err(JobFailure::from(&err)),
                };
                results.insert(index, outcome);
            }
        }
        Err(err) => {
            let failure = JobFailure::from(&err);
            for (index, _, _) in points {
                results.insert(index, Err(failure.clone()));
            }
        }
    }
}

/// Publishes a later event of the job, continuing the job's trace.
async fn publish(
    deps: &WorkerDeps,
    job: &Job,
    data: EventData,
) -> Result<PublishAckFuture, PublishError> {
    let event = JobEvent::new(job.org_id, job.job_id, data);
    let mut headers = HeaderMap::new();
    {
        let _entered = job.span.enter();
        heimdex_telemetry::inject_context(&mut headers);
    }
    deps.js
        .send_publish(
            events::subject(job.org_id, job.job_id, event.kind()),
            PublishMessage::build()
                .payload(event.encode().into())
                .headers(headers)
                .message_id(&event.id),
        )
        .await
}
