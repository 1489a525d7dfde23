//! Rebuilding the projections: the stream is the source of truth, so job status and documents
//! can always be recomputed by replaying it from sequence 1 into fresh buckets. `compare` and
//! `compare_documents` check rebuilt buckets against the live ones.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv};
use futures::{StreamExt, TryStreamExt};

use heimdex_domain::documents::{DocumentChange, DocumentRecord};
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
    /// The bucket the documents were rebuilt into: `<bucket>_DOCUMENTS`.
    pub documents_bucket: String,
    /// Documents, deleted ones included.
    pub documents: usize,
    pub last_seq: u64,
}

/// The bucket a rebuild into `bucket` writes the documents to.
pub fn documents_bucket(bucket: &str) -> String {
    format!("{bucket}_DOCUMENTS")
}

fn nats(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> RebuildError {
    RebuildError::Nats(err.into())
}

/// Replays `HEIMDEX_JOBS` from sequence 1 into a fresh bucket named `bucket` (deleted first if
/// it exists), with the live bucket's settings, and the documents into
/// [`documents_bucket`]`(bucket)` likewise (records only: a listing is derived from them).
pub async fn rebuild(
    js: &jetstream::Context,
    defs: &Definitions,
    bucket: &str,
) -> Result<RebuildReport, RebuildError> {
    let documents_bucket = documents_bucket(bucket);
    for name in [bucket, &documents_bucket] {
        if name == heimdex_event_store::jetstream::STATUS_BUCKET
            || name == heimdex_event_store::jetstream::DOCUMENT_BUCKET
        {
            return Err(RebuildError::LiveBucket(name.to_owned()));
        }
    }
    let mut stream = js.get_stream(JOBS_STREAM).await.map_err(nats)?;
    let last_seq = stream.info().await.map_err(nats)?.state.last_sequence;

    let mut statuses: HashMap<String, JobStatus> = HashMap::new();
    let mut documents: HashMap<String, DocumentRecord> = HashMap::new();
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
                    if let Some(change) = DocumentChange::of(&event, seq) {
                        match documents.get_mut(&change.key()) {
                            Some(record) => {
                                record.apply(&change);
                            }
                            None => {
                                documents.insert(change.key(), DocumentRecord::new(&change));
                            }
                        }
                    }
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

    let jobs = statuses.len();
    write_fresh(js, &defs.status, bucket, statuses).await?;
    let document_count = documents.len();
    write_fresh(js, &defs.documents, &documents_bucket, documents).await?;

    Ok(RebuildReport {
        bucket: bucket.to_owned(),
        events,
        jobs,
        documents_bucket,
        documents: document_count,
        last_seq,
    })
}

/// Creates bucket `name` afresh with the settings of `like`, and writes `values` to it.
async fn write_fresh<T: serde::Serialize + Send + 'static>(
    js: &jetstream::Context,
    like: &async_nats::jetstream::stream::Config,
    name: &str,
    values: HashMap<String, T>,
) -> Result<(), RebuildError> {
    let _ = js.delete_key_value(name).await;
    let mut config = like.clone();
    config.name = format!("KV_{name}");
    config.subjects = vec![format!("$KV.{name}.>")];
    js.create_stream(config).await.map_err(nats)?;
    let store = js.get_key_value(name).await.map_err(nats)?;
    let writes = values.into_iter().map(|(key, value)| {
        let store = store.clone();
        async move {
            let value = serde_json::to_vec(&value).expect("projections serialize to JSON");
            store.put(key, value.into()).await.map(|_| ())
        }
    });
    futures::stream::iter(writes)
        .buffer_unordered(256)
        .try_collect::<Vec<()>>()
        .await
        .map_err(nats)?;
    Ok(())
}

/// Every status of a bucket, by key.
pub async fn snapshot(store: &kv::Store) -> Result<BTreeMap<String, JobStatus>, RebuildError> {
    snapshot_of(store).await
}

/// Every value of a bucket that decodes as `T`, by key (others, like markers, are skipped).
async fn snapshot_of<T: serde::de::DeserializeOwned>(
    store: &kv::Store,
) -> Result<BTreeMap<String, T>, RebuildError> {
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
    Ok(differing(snapshot(a).await?, snapshot(b).await?))
}

/// Keys whose document records differ between two buckets (missing on either side included;
/// where a document is listed is not part of its record).
pub async fn compare_documents(a: &kv::Store, b: &kv::Store) -> Result<Vec<String>, RebuildError> {
    Ok(differing(
        snapshot_of::<DocumentRecord>(a).await?,
        snapshot_of::<DocumentRecord>(b).await?,
    ))
}

fn differing<T: PartialEq>(a: BTreeMap<String, T>, b: BTreeMap<String, T>) -> Vec<String> {
    let mut differing: Vec<String> = a
        .iter()
        .filter(|(key, status)| b.get(*key) != Some(status))
        .map(|(key, _)| key.clone())
        .collect();
    differing.extend(b.keys().filter(|key| !a.contains_key(*key)).cloned());
    differing
}
