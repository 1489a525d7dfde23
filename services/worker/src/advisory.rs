//! Jobs that die without a word: when the worker crashes (or hangs past `ack_wait`) on every
//! delivery, JetStream gives up after `max_deliver` and publishes a max-deliveries advisory. This
//! loop turns it into the job's `failed` event, so no job stays RUNNING forever.
//!
//! The advisories are kept by a stream of their own (`HEIMDEX_ADVISORIES`, work-queue
//! retention; `nats/`) and read through the durable consumer `advisories`, so one that arrives
//! while no worker is connected (all are down, or reconnecting) waits for the next worker
//! instead of being lost, as it would be on a plain subscription. An advisory is acknowledged
//! once the `failed` event is stored; until then it is delivered again.
//!
//! Every worker process consumes; the `failed` event's id is `<job>:failed:<deliveries>` (in a
//! retried round, `<job>:failed:<round>.<deliveries>`), the same id the worker itself uses on
//! its last attempt, so duplicates are de-duplicated. The advisory names the exhausted message:
//! a `requested` event (round 0) or a `retried` one, whose round the `failed` event carries so
//! it ends that round and no other. A round that already has its end (the worker stored it and
//! died before acknowledging the delivery) gets no `failed` event.

use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{AckKind, Message};
use futures::StreamExt;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use heimdex_domain::events::{EventData, EventKind, Failed, JobEvent};
use heimdex_domain::jobs::{JobError, JobErrorCode};
use heimdex_event_store::jetstream::{self, BootstrapError, JOBS_STREAM, WORKER_CONSUMER};
use heimdex_event_store::log::{AppendError, LogReadError};
use heimdex_event_store::{EventStore, JobLog};

/// How long a failed advisory waits before it is delivered again.
const RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, Deserialize)]
struct MaxDeliveries {
    stream_seq: u64,
    deliveries: u32,
}

#[derive(Debug, thiserror::Error)]
enum AdvisoryError {
    #[error("the advisory is not a max-deliveries advisory")]
    Decode(#[source] serde_json::Error),
    #[error("cannot read the exhausted job event")]
    Read(#[source] LogReadError),
    #[error("cannot record the job's failure")]
    Append(#[source] AppendError),
}

/// `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>` of the worker consumer.
pub fn subject() -> String {
    format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{JOBS_STREAM}.{WORKER_CONSUMER}")
}

/// The stream that keeps the advisories, and the workers' durable consumer of it, created (or
/// checked) from their definitions in `nats/`.
pub async fn consumer(
    events: &EventStore,
    shutdown: &CancellationToken,
) -> Result<PullConsumer, BootstrapError> {
    jetstream::until_ready("the advisory consumer", shutdown, || async {
        let stream = jetstream::ensure_advisories(&events.js, &events.defs).await?;
        jetstream::ensure_consumer(&stream, &events.defs.advisory_consumer).await
    })
    .await
}

/// Consumes advisories until `shutdown`.
pub async fn run(log: JobLog, consumer: PullConsumer, shutdown: CancellationToken) {
    while let Some(mut messages) = jetstream::pull_stream(&consumer, 64, &shutdown).await {
        loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => return,
                message = messages.next() => message,
            };
            match message {
                Some(Ok(message)) => settle(&log, &message).await,
                Some(Err(err)) => tracing::warn!(%err, "advisory consumer error"),
                None => break,
            }
        }
    }
}

async fn settle(log: &JobLog, message: &Message) {
    let ack = match handle(log, &message.payload).await {
        Ok(()) => AckKind::Ack,
        // Not an advisory of ours: it can never be handled.
        Err(err @ AdvisoryError::Decode(_)) => {
            tracing::error!(error = %err, "unusable advisory dropped");
            AckKind::Term
        }
        Err(err @ (AdvisoryError::Read(_) | AdvisoryError::Append(_))) => {
            tracing::warn!(error = %err, "cannot record a job that ran out of deliveries; will retry");
            AckKind::Nak(Some(RETRY))
        }
    };
    if let Err(err) = message.ack_with(ack).await {
        tracing::warn!(%err, "cannot acknowledge an advisory");
    }
}

async fn handle(log: &JobLog, payload: &[u8]) -> Result<(), AdvisoryError> {
    let advisory: MaxDeliveries = serde_json::from_slice(payload).map_err(AdvisoryError::Decode)?;
    let exhausted = log
        .at(advisory.stream_seq)
        .await
        .map_err(AdvisoryError::Read)?
        .event;
    let round = exhausted.data.round();
    // The worker may have stored the job's end and died before acknowledging it: the round is
    // over, and a `failed` event would only contradict it (the first end wins) and count a
    // job that succeeded as failed.
    if let Some(end) = ended(log, &exhausted, round).await? {
        tracing::info!(job_id = %exhausted.job_id, round, seq = end, "ran out of deliveries after its end was stored; nothing to record");
        return Ok(());
    }
    let job_type = match &exhausted.data {
        EventData::Requested(requested) => Some(requested.spec.job_type()),
        EventData::Retried(retried) => Some(retried.spec.job_type()),
        EventData::Started(_) | EventData::Succeeded(_) | EventData::Failed(_) => None,
    };
    let reason = format!(
        "no outcome after {} deliveries (the worker crashed or timed out every time)",
        advisory.deliveries
    );
    tracing::warn!(job_id = %exhausted.job_id, round, %reason, "marking job failed");
    let failed = JobEvent::new(
        exhausted.org_id,
        exhausted.job_id,
        EventData::Failed(Failed {
            attempt: advisory.deliveries,
            round,
            error: JobError::new(JobErrorCode::MaxDeliveries, reason),
        }),
    );
    log.send(&failed)
        .await
        .map_err(AdvisoryError::Append)?
        .stored()
        .await
        .map_err(AdvisoryError::Append)?;
    if let Some(job_type) = job_type {
        metrics::counter!(
            "heimdex_jobs_failed_total",
            "job_type" => job_type,
            "code" => JobErrorCode::MaxDeliveries.as_str(),
        )
        .increment(1);
    }
    Ok(())
}

/// The sequence of the job's end (`succeeded` or `failed`) in `round` or a later one, if it
/// has one.
async fn ended(log: &JobLog, job: &JobEvent, round: u32) -> Result<Option<u64>, AdvisoryError> {
    for kind in [EventKind::Succeeded, EventKind::Failed] {
        let last = log
            .last(job.org_id, job.job_id, kind)
            .await
            .map_err(AdvisoryError::Read)?;
        if let Some(end) = last.filter(|end| end.event.data.round() >= round) {
            return Ok(Some(end.seq));
        }
    }
    Ok(None)
}
