//! One batch of `requested` messages: decode → terminal guard → `started` → vectors → one upsert
//! → `succeeded`/`failed`. Returns what to do with each message; the caller acknowledges.

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

use heimdex_core::events::{self, EventData, Failed, JobEvent, Started, Succeeded};
use heimdex_core::ids;
use heimdex_core::jetstream::status_key;
use heimdex_core::jobs::{JobError, JobErrorCode, JobResult, JobSpec, JobStatus, MockParams};
use heimdex_store::{NewPoint, Payload, StoreError};

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
    attempt: u32,
    spec: JobSpec,
    span: Span,
}

pub(crate) async fn process(
    config: &WorkerConfig,
    deps: &WorkerDeps,
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

    // Terminal guard: skip redelivered jobs that already ended (the worker crashed between its
    // last event and its ack, say). A first delivery has not run before, so it skips the read;
    // should a consumer ever be reset, re-running is idempotent anyway. A failed read only costs
    // that idempotent re-work, so it does not stop the job.
    let statuses = join_all(jobs.iter().map(|job| async move {
        if job.attempt <= 1 {
            return None;
        }
        deps.status
            .get(status_key(job.org_id, job.job_id))
            .await
            .ok()
            .flatten()
    }))
    .await;
    let mut live = Vec::with_capacity(jobs.len());
    for (job, status) in jobs.into_iter().zip(statuses) {
        let terminal = status
            .and_then(|bytes| serde_json::from_slice::<JobStatus>(&bytes).ok())
            .is_some_and(|status| status.status.is_terminal());
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
            }),
        )
    }))
    .await;

    let mut points = Vec::with_capacity(live.len());
    let mut planned = Vec::with_capacity(live.len());
    for job in live {
        let (point, result) = plan(config, &job);
        points.push(point);
        planned.push((job, result));
    }

    let upsert_spans: Vec<Span> = planned
        .iter()
        .map(|(job, _)| tracing::info_span!(parent: &job.span, "vector_store.upsert", collection = %config.collection))
        .collect();
    let (stored, started_acks) = tokio::join!(
        upsert(deps, collection_ready, points),
        join_all(
            started
                .into_iter()
                .map(|ack| async move { ack?.await.map(|_| ()) })
        )
    );
    drop(upsert_spans);

    let mut finals = Vec::with_capacity(planned.len());
    for ((job, result), started_ack) in planned.into_iter().zip(started_acks) {
        if let Err(err) = started_ack {
            tracing::warn!(%err, job_id = %job.job_id, "cannot record `started`");
            outcomes[job.index] = Some(outcome(
                &job,
                OutcomeKind::Interrupted,
                Disposition::Abandon,
            ));
            continue;
        }
        let (kind, data, disposition) = match stored.get(&job.index) {
            Some(Ok(())) => (
                OutcomeKind::Succeeded,
                Some(EventData::Succeeded(Succeeded {
                    attempt: job.attempt,
                    result,
                })),
                Disposition::Ack,
            ),
            // Input the store refuses (wrong dimension, ...) can never succeed: fail at once.
            // Anything else (unavailable, unexpected) is retried until the last delivery.
            Some(Err(err @ StoreError::InvalidInput(_))) => (
                OutcomeKind::Failed(JobErrorCode::InvalidInput),
                Some(failed(job.attempt, JobErrorCode::InvalidInput, err)),
                Disposition::Term,
            ),
            Some(Err(err)) if job.attempt >= config.max_deliver => (
                OutcomeKind::Failed(JobErrorCode::VectorStore),
                Some(failed(job.attempt, JobErrorCode::VectorStore, err)),
                Disposition::Term,
            ),
            Some(Err(err)) => {
                tracing::warn!(job_id = %job.job_id, attempt = job.attempt, %err, "upsert failed; will retry");
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

fn failed(attempt: u32, code: JobErrorCode, err: &StoreError) -> EventData {
    EventData::Failed(Failed {
        attempt,
        error: JobError::new(code, err.to_string()),
    })
}

/// Reads a delivery; an unusable message is terminated (it can never succeed).
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
    let EventData::Requested(requested) = event.data else {
        return Err(unusable(format!(
            "expected a requested event, got {:?}",
            event.data.kind()
        )));
    };
    let span =
        tracing::info_span!("worker.job", job_id = %event.job_id, org_id = %event.org_id, attempt);
    heimdex_telemetry::set_parent_from_headers(&span, message.headers.as_ref());
    Ok(Job {
        index,
        org_id: event.org_id,
        job_id: event.job_id,
        attempt,
        spec: requested.spec,
        span,
    })
}

/// The point a job writes and the result it will report.
fn plan(config: &WorkerConfig, job: &Job) -> ((usize, NewPoint), JobResult) {
    match &job.spec {
        JobSpec::MockEmbedding(MockParams {
            asset_id,
            segment_id,
            model,
            model_ver,
        }) => {
            let id = ids::point_id(job.org_id, asset_id, segment_id, model, model_ver);
            let vector = ids::mock_vector(job.org_id, asset_id, segment_id, config.vector_size);
            let payload = Payload {
                org_id: job.org_id,
                asset_id: asset_id.clone(),
                segment_id: segment_id.clone(),
                model: model.clone(),
                model_ver: model_ver.clone(),
                text: Some(format!(
                    "Mock embedding for asset {asset_id}, segment {segment_id}"
                )),
                extra: Default::default(),
            };
            let result = JobResult {
                collection: config.collection.clone(),
                point_ids: vec![id],
                vector_size: config.vector_size,
                model: model.clone(),
                model_ver: model_ver.clone(),
            };
            (
                (
                    job.index,
                    NewPoint {
                        id,
                        vector,
                        payload,
                    },
                ),
                result,
            )
        }
    }
}

/// Writes every point in one call; if that fails for bad input, each point is written alone so
/// one bad job cannot sink the batch. Returns each job's result by message index.
async fn upsert(
    deps: &WorkerDeps,
    collection_ready: &AtomicBool,
    points: Vec<(usize, NewPoint)>,
) -> HashMap<usize, Result<(), StoreError>> {
    let indices: Vec<usize> = points.iter().map(|(index, _)| *index).collect();
    if points.is_empty() {
        return HashMap::new();
    }
    if !collection_ready.load(Ordering::Acquire) {
        match deps.store.ensure_collection().await {
            Ok(()) => collection_ready.store(true, Ordering::Release),
            Err(err) => return fail_all(indices, &err),
        }
    }
    let batch: Vec<NewPoint> = points.iter().map(|(_, point)| point.clone()).collect();
    match deps.store.upsert(batch).await {
        Ok(()) => indices.into_iter().map(|index| (index, Ok(()))).collect(),
        Err(StoreError::InvalidInput(_)) if points.len() > 1 => {
            let mut results = HashMap::new();
            for (index, point) in points {
                results.insert(index, deps.store.upsert(vec![point]).await);
            }
            results
        }
        Err(err) => fail_all(indices, &err),
    }
}

/// The same error for every job of a batch (the store's error is not `Clone`; its kind and
/// message are what matter).
fn fail_all(indices: Vec<usize>, err: &StoreError) -> HashMap<usize, Result<(), StoreError>> {
    let reason = err.to_string();
    indices
        .into_iter()
        .map(|index| {
            let err = match err {
                StoreError::Unavailable(_) => StoreError::Unavailable(reason.clone()),
                StoreError::InvalidInput(_) => StoreError::InvalidInput(reason.clone()),
                StoreError::Internal(_) => StoreError::Internal(reason.clone()),
            };
            (index, Err(err))
        })
        .collect()
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
