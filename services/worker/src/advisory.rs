//! Jobs that die without a word: when the worker crashes (or hangs past `ack_wait`) on every
//! delivery, JetStream gives up after `max_deliver` and publishes a max-deliveries advisory. This
//! listener turns it into the job's `failed` event, so no job stays RUNNING forever.
//!
//! Every worker process listens; the `failed` event's id is `<job>:failed:<deliveries>` (in a
//! retried round, `<job>:failed:<round>.<deliveries>`), the same id the worker itself uses on
//! its last attempt, so duplicates are de-duplicated. The advisory names the exhausted message:
//! a `requested` event (round 0) or a `retried` one, whose round the `failed` event carries so
//! it ends that round and no other.

use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use futures::StreamExt;
use serde::Deserialize;

use heimdex_domain::events::{EventData, Failed, JobEvent};
use heimdex_domain::jobs::{JobError, JobErrorCode};
use heimdex_event_store::jetstream::{JOBS_STREAM, WORKER_CONSUMER};
use tokio_util::sync::CancellationToken;

/// `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>`
pub fn subject() -> String {
    format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{JOBS_STREAM}.{WORKER_CONSUMER}")
}

#[derive(Debug, Deserialize)]
struct MaxDeliveries {
    stream_seq: u64,
    deliveries: u32,
}

pub async fn run(
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    shutdown: CancellationToken,
) {
    let mut advisories = match client.subscribe(subject()).await {
        Ok(subscription) => subscription,
        Err(err) => {
            tracing::error!(%err, "cannot subscribe to max-deliveries advisories");
            return;
        }
    };
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => break,
            message = advisories.next() => message,
        };
        let Some(message) = message else { break };
        if let Err(err) = handle(&js, &message.payload).await {
            tracing::error!(%err, "cannot record a job that ran out of deliveries");
        }
    }
}

async fn handle(js: &async_nats::jetstream::Context, payload: &[u8]) -> anyhow_like::Result<()> {
    let advisory: MaxDeliveries = serde_json::from_slice(payload)?;
    let stream = js.get_stream(JOBS_STREAM).await?;
    let message = stream.direct_get(advisory.stream_seq).await?;
    let exhausted = JobEvent::decode(&message.payload)?;
    let round = exhausted.data.round();
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
    let ack: PublishAckFuture = js
        .send_publish(
            failed.subject(),
            PublishMessage::build()
                .payload(failed.encode().into())
                .message_id(&failed.id),
        )
        .await?;
    ack.await?;
    Ok(())
}

/// Errors here are only logged: a boxed error keeps the handler short.
mod anyhow_like {
    pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;
}
