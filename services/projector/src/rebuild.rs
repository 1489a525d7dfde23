//! Rebuilding the projection: the stream is the source of truth, so job status can always be
//! recomputed by replaying it from sequence 1 into a fresh bucket. `compare` checks a rebuilt
//! bucket against the live one.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv};
use futures::{StreamExt, TryStreamExt};

use heimdex_domain::jobs::JobStatus;
use heimdex_event_store::jetstream::{Definitions, JOBS_STREAM};
use heimdex_event_store::status::status_key;

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("NATS request failed")]
    Nats(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the replay stalled: no event for 10 s")]
    Stalled,
    #[error("the replay ended before the stream's last event")]
    Ended,
    #[error("{0} is the live bucket; rebuild into a fresh one")]
    LiveBucket(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RebuildReport {
    pub bucket: String,
    /// Events replayed (up to the stream's last sequence when the rebuild started).
    pub events: u64,
    pub jobs: usize,
    pub last_seq: u64,
}

fn nats(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> RebuildError {
    RebuildError::Nats(err.into())
}

/// Replays `HEIMDEX_JOBS` from sequence 1 into a fresh bucket named `bucket` (deleted first if
/// it exists), with the live bucket's settings.
pub async fn rebuild(
    js: &jetstream::Context,
    defs: &Definitions,
    bucket: &str,
) -> Result<RebuildReport, RebuildError> {
    if bucket == heimdex_event_store::jetstream::STATUS_BUCKET {
        return Err(RebuildError::LiveBucket(bucket.to_owned()));
    }
    let mut stream = js.get_stream(JOBS_STREAM).await.map_err(nats)?;
    let last_seq = stream.info().await.map_err(nats)?.state.last_sequence;

    let mut statuses: HashMap<String, JobStatus> = HashMap::new();
    let mut events = 0u64;
    if last_seq > 0 {
        let replay = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: "heimdex.jobs.>".to_owned(),
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(nats)?;
        let mut messages = replay.messages().await.map_err(nats)?;
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
                .await
                .map_err(|_| RebuildError::Stalled)?
                .ok_or(RebuildError::Ended)?
                .map_err(nats)?;
            let seq = message.info().map_err(nats)?.stream_sequence;
            if seq > last_seq {
                break;
            }
            events += 1;
            match heimdex_domain::events::JobEvent::decode(&message.payload) {
                Ok(event) => {
                    statuses
                        .entry(status_key(event.org_id, event.job_id))
                        .or_insert_with(|| JobStatus::empty(event.org_id, event.job_id, event.time))
                        .apply(&event, seq);
                }
                Err(err) => tracing::error!(%err, seq, "undecodable event skipped in rebuild"),
            }
            if seq >= last_seq {
                break;
            }
        }
    }

    let _ = js.delete_key_value(bucket).await;
    let mut config = defs.status.clone();
    config.name = format!("KV_{bucket}");
    config.subjects = vec![format!("$KV.{bucket}.>")];
    js.create_stream(config).await.map_err(nats)?;
    let store = js.get_key_value(bucket).await.map_err(nats)?;

    let jobs = statuses.len();
    let writes = statuses.into_iter().map(|(key, status)| {
        let store = store.clone();
        async move {
            let value = serde_json::to_vec(&status).expect("job status serializes to JSON");
            store.put(key, value.into()).await.map(|_| ())
        }
    });
    futures::stream::iter(writes)
        .buffer_unordered(256)
        .try_collect::<Vec<()>>()
        .await
        .map_err(nats)?;

    Ok(RebuildReport {
        bucket: bucket.to_owned(),
        events,
        jobs,
        last_seq,
    })
}

/// Every status of a bucket, by key.
pub async fn snapshot(store: &kv::Store) -> Result<BTreeMap<String, JobStatus>, RebuildError> {
    let keys: Vec<String> = store
        .keys()
        .await
        .map_err(nats)?
        .try_collect()
        .await
        .map_err(nats)?;
    let mut out = BTreeMap::new();
    for key in keys {
        if let Some(bytes) = store.get(&key).await.map_err(nats)?
            && let Ok(status) = serde_json::from_slice(&bytes)
        {
            out.insert(key, status);
        }
    }
    Ok(out)
}

/// Keys whose statuses differ between two buckets (missing on either side included).
pub async fn compare(a: &kv::Store, b: &kv::Store) -> Result<Vec<String>, RebuildError> {
    let (a, b) = (snapshot(a).await?, snapshot(b).await?);
    let mut differing: Vec<String> = a
        .iter()
        .filter(|(key, status)| b.get(*key) != Some(status))
        .map(|(key, _)| key.clone())
        .collect();
    differing.extend(b.keys().filter(|key| !a.contains_key(*key)).cloned());
    Ok(differing)
}
