//! The job-status projection: the KV bucket `HEIMDEX_JOB_STATUS` (key `<org_id>.<job_id>`, the
//! job's [`JobStatus`]) and its listing index, the stream `HEIMDEX_JOB_INDEX` (one empty message
//! per job on `heimdex.index.<org_id>.<STATUS>.<job_id>`). The projector is their only writer;
//! every read of either goes through [`StatusStore`], so nothing else names a `$KV.` subject.
//!
//! # Listing, and what a page costs
//!
//! A page is one batched direct get (ADR-31, nats-server 2.11+): up to `limit` messages with a
//! sequence at or after the cursor whose subject matches the org (and status), in stream order.
//! Nothing is read that the page does not hold, however many jobs the org has.
//!
//! * All statuses: the bucket's own stream, filtered on `$KV.HEIMDEX_JOB_STATUS.<org_id>.*`. The
//!   bucket keeps one message per key (its latest), so the order is the order of each job's last
//!   change: a job that changes during a walk moves to the end, and is listed again, with its
//!   new status, on a later page. No job is missed.
//! * One status: the index, filtered on `heimdex.index.<org_id>.<STATUS>.*`, in the order jobs
//!   entered the status; each entry is then read from the bucket (concurrently), and one whose
//!   job has since moved on is left out. So a page never shows a job in a status it has left,
//!   and an entry the projector left behind (it crashed between two writes) costs a read, not a
//!   wrong answer.
//!
//! The cursor is the stream sequence of the page's last entry, opaque to clients.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::kv::{self, CreateErrorKind, UpdateErrorKind};
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use futures::StreamExt;
use futures::future::try_join_all;
use serde::Serialize;
use uuid::Uuid;

use heimdex_domain::jobs::{JobStatus, Status};

use crate::jetstream::{INDEX_STREAM, STATUS_BUCKET};

/// KV key of a job's status: `<org_id>.<job_id>`.
pub fn status_key(org_id: Uuid, job_id: Uuid) -> String {
    format!("{org_id}.{job_id}")
}

fn index_subject(org_id: Uuid, status: Status, job_id: Uuid) -> String {
    format!("heimdex.index.{org_id}.{}.{job_id}", status_token(status))
}

fn status_token(status: Status) -> &'static str {
    match status {
        Status::Queued => "QUEUED",
        Status::Running => "RUNNING",
        Status::Succeeded => "SUCCEEDED",
        Status::Failed => "FAILED",
    }
}

/// A status with the bucket revision it was read at (for a compare-and-set write).
#[derive(Clone, Debug, PartialEq)]
pub struct Versioned {
    pub revision: u64,
    /// `None`: the stored value cannot be decoded (logged); a write still compares the revision.
    pub status: Option<JobStatus>,
}

/// One page of a listing.
#[derive(Clone, Debug, PartialEq)]
pub struct Page {
    pub jobs: Vec<JobStatus>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("status bucket read failed")]
    Read(#[source] kv::EntryError),
    #[error("status bucket write failed")]
    Create(#[source] kv::CreateError),
    #[error("status bucket write failed")]
    Update(#[source] kv::UpdateError),
    #[error("status of {key} cannot be decoded")]
    Decode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("listing request failed")]
    List(#[source] async_nats::RequestError),
    #[error("listing request failed")]
    Subscribe(#[source] async_nats::SubscribeError),
    #[error("listing request failed")]
    Publish(#[source] async_nats::PublishError),
    #[error("the listing answered status {0}")]
    ListStatus(u16),
    #[error("the listing stalled after {0:?}")]
    ListStalled(Duration),
    #[error("listing index write failed")]
    Index(#[source] jetstream::context::PublishError),
    #[error("listing index purge failed")]
    Purge(#[source] jetstream::stream::PurgeError),
    #[error("stream info failed")]
    Info(#[source] jetstream::context::RequestError),
    #[error("stream lookup failed")]
    Stream(#[source] jetstream::context::GetStreamError),
}

/// Why a compare-and-set write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Another writer changed the key since it was read: read again and re-apply.
    #[error("the status changed since it was read")]
    Conflict,
    #[error(transparent)]
    Store(#[from] StatusError),
}

#[derive(Clone)]
pub struct StatusStore {
    client: async_nats::Client,
    js: jetstream::Context,
    /// The JetStream API prefix (`$JS.API` unless a domain or import changes it).
    api_prefix: String,
    kv: kv::Store,
    index: stream::Stream,
    /// How long a listing waits for the next message of its batch.
    stall: Duration,
}

/// `{"seq": .., "next_by_subj": .., "batch": ..}`: ADR-31's batched direct get.
#[derive(Serialize)]
struct BatchGet<'a> {
    seq: u64,
    next_by_subj: &'a str,
    batch: usize,
}

impl StatusStore {
    pub fn new(
        client: async_nats::Client,
        js: jetstream::Context,
        kv: kv::Store,
        index: stream::Stream,
        stall: Duration,
    ) -> Self {
        Self {
            client,
            js,
            api_prefix: "$JS.API".to_owned(),
            kv,
            index,
            stall,
        }
    }

    /// The job's status, with its revision; `None` if the projection has none.
    pub async fn entry(
        &self,
        org_id: Uuid,
        job_id: Uuid,
    ) -> Result<Option<Versioned>, StatusError> {
        let key = status_key(org_id, job_id);
        let entry = self.kv.entry(&key).await.map_err(StatusError::Read)?;
        Ok(entry.map(|entry| Versioned {
            revision: entry.revision,
            status: match serde_json::from_slice::<JobStatus>(&entry.value) {
                Ok(status) => Some(status),
                Err(err) => {
                    tracing::error!(%err, key, "undecodable status in the bucket");
                    None
                }
            },
        }))
    }

    /// The job's status; `None` if the projection has none (yet).
    pub async fn get(&self, org_id: Uuid, job_id: Uuid) -> Result<Option<JobStatus>, StatusError> {
        let key = status_key(org_id, job_id);
        match self.kv.get(&key).await.map_err(StatusError::Read)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| StatusError::Decode { key, source }),
        }
    }

    /// Writes a status: a create when `revision` is `None` (the key must not exist), else a
    /// compare-and-set against `revision`. Returns the new revision.
    ///
    /// The listing index follows the status: the job's entry under its new status is written
    /// first, and the one under `previous` (its status before this write, if another) is purged
    /// after, so a crash in between leaves an extra entry, which listings skip, never a missing
    /// one.
    pub async fn write(
        &self,
        status: &JobStatus,
        revision: Option<u64>,
        previous: Option<Status>,
    ) -> Result<u64, WriteError> {
        let moved = previous != Some(status.status);
        if moved {
            self.index(status.org_id, status.status, status.job_id)
                .await?;
        }
        let key = status_key(status.org_id, status.job_id);
        let value = Bytes::from(serde_json::to_vec(status).expect("statuses serialize to JSON"));
        let written = match revision {
            None => self.kv.create(&key, value).await.map_err(|err| {
                if err.kind() == CreateErrorKind::AlreadyExists {
                    WriteError::Conflict
                } else {
                    WriteError::Store(StatusError::Create(err))
                }
            }),
            Some(revision) => self.kv.update(&key, value, revision).await.map_err(|err| {
                if err.kind() == UpdateErrorKind::WrongLastRevision {
                    WriteError::Conflict
                } else {
                    WriteError::Store(StatusError::Update(err))
                }
            }),
        }?;
        if let Some(previous) = previous.filter(|_| moved) {
            self.unindex(status.org_id, previous, status.job_id).await?;
        }
        Ok(written)
    }

    async fn index(&self, org_id: Uuid, status: Status, job_id: Uuid) -> Result<(), StatusError> {
        let subject = index_subject(org_id, status, job_id);
        self.js
            .publish(subject, Bytes::new())
            .await
            .map_err(StatusError::Index)?
            .await
            .map_err(StatusError::Index)?;
        Ok(())
    }

    async fn unindex(&self, org_id: Uuid, status: Status, job_id: Uuid) -> Result<(), StatusError> {
        self.index
            .purge()
            .filter(index_subject(org_id, status, job_id))
            .await
            .map_err(StatusError::Purge)?;
        Ok(())
    }

    /// Writes the index entry of every status in the bucket: the one-time migration of a bucket
    /// made before the index existed (the projector runs it when the index is empty and the
    /// bucket is not). Returns how many entries were written.
    pub async fn backfill_index(
        &self,
        stall: Duration,
    ) -> Result<u64, crate::jetstream::ReadError> {
        let stream = self
            .js
            .get_stream_no_info(format!("KV_{STATUS_BUCKET}"))
            .await
            .map_err(|err| crate::jetstream::ReadError::Open(Box::new(err)))?;
        let mut read = crate::jetstream::StreamRead::open(
            &stream,
            format!("$KV.{STATUS_BUCKET}.>"),
            async_nats::jetstream::consumer::DeliverPolicy::LastPerSubject,
            stall,
        )
        .await?;
        let mut written = 0;
        while let Some(message) = read.next().await? {
            let Ok(job) = serde_json::from_slice::<JobStatus>(&message.payload) else {
                continue;
            };
            if let Err(err) = self.index(job.org_id, job.status, job.job_id).await {
                return Err(crate::jetstream::ReadError::Read(Box::new(err)));
            }
            written += 1;
        }
        Ok(written)
    }

    /// Whether the index is empty while the bucket is not (see [`StatusStore::backfill_index`]).
    pub async fn index_missing(&self) -> Result<bool, StatusError> {
        let mut index = self.index.clone();
        let indexed = index
            .info()
            .await
            .map_err(StatusError::Info)?
            .state
            .messages;
        let mut bucket = self
            .js
            .get_stream(format!("KV_{STATUS_BUCKET}"))
            .await
            .map_err(StatusError::Stream)?;
        let statuses = bucket
            .info()
            .await
            .map_err(StatusError::Info)?
            .state
            .messages;
        Ok(indexed == 0 && statuses > 0)
    }

    /// Up to `limit` of the org's jobs (in `status`, when given) from stream sequence `from`
    /// on (1 for the first page). See the module documentation for the order.
    pub async fn list(
        &self,
        org_id: Uuid,
        status: Option<Status>,
        limit: usize,
        from: u64,
    ) -> Result<Page, StatusError> {
        match status {
            None => {
                let filter = format!("$KV.{STATUS_BUCKET}.{org_id}.*");
                let (messages, more) = self
                    .batch(&format!("KV_{STATUS_BUCKET}"), &filter, from, limit)
                    .await?;
                let next = more.then(|| messages.last().map(|m| m.seq + 1)).flatten();
                let jobs = messages
                    .into_iter()
                    .filter(|m| m.is_put())
                    .filter_map(|m| match serde_json::from_slice::<JobStatus>(&m.payload) {
                        Ok(job) if job.org_id == org_id => Some(job),
                        Ok(_) => None,
                        Err(err) => {
                            tracing::error!(%err, subject = m.subject, "undecodable status skipped in a listing");
                            None
                        }
                    })
                    .collect();
                Ok(Page { jobs, next })
            }
            Some(wanted) => {
                let filter = format!("heimdex.index.{org_id}.{}.*", status_token(wanted));
                let (messages, more) = self.batch(INDEX_STREAM, &filter, from, limit).await?;
                let next = more.then(|| messages.last().map(|m| m.seq + 1)).flatten();
                let ids = messages
                    .iter()
                    .filter_map(|m| m.subject.rsplit('.').next())
                    .filter_map(|id| Uuid::parse_str(id).ok());
                let statuses = try_join_all(ids.map(|job_id| self.get(org_id, job_id))).await?;
                let jobs = statuses
                    .into_iter()
                    .flatten()
                    .filter(|job| job.status == wanted)
                    .collect();
                Ok(Page { jobs, next })
            }
        }
    }

    /// A batched direct get: up to `batch` messages of `stream` matching `filter`, from `from`
    /// on, and whether more match after them.
    async fn batch(
        &self,
        stream: &str,
        filter: &str,
        from: u64,
        batch: usize,
    ) -> Result<(Vec<Got>, bool), StatusError> {
        let inbox = self.client.new_inbox();
        let mut replies = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(StatusError::Subscribe)?;
        let request = serde_json::to_vec(&BatchGet {
            seq: from.max(1),
            next_by_subj: filter,
            batch,
        })
        .expect("a batch request serializes");
        self.client
            .publish_with_reply(
                format!("{}.DIRECT.GET.{stream}", self.api_prefix),
                inbox,
                request.into(),
            )
            .await
            .map_err(StatusError::Publish)?;
        let mut got = Vec::with_capacity(batch);
        loop {
            let reply = match tokio::time::timeout(self.stall, replies.next()).await {
                Ok(Some(reply)) => reply,
                Ok(None) | Err(_) => return Err(StatusError::ListStalled(self.stall)),
            };
            match reply.status.map(|s| s.as_u16()) {
                // No message matches: an empty page.
                Some(404) => return Ok((got, false)),
                // End of batch: how many more match decides whether there is a next page.
                Some(204) => {
                    let pending = header_u64(reply.headers.as_ref(), "Nats-Num-Pending");
                    return Ok((got, pending.is_some_and(|n| n > 0)));
                }
                Some(other) => return Err(StatusError::ListStatus(other)),
                None => {}
            }
            let headers = reply.headers.as_ref();
            let Some(seq) = header_u64(headers, "Nats-Sequence") else {
                continue;
            };
            got.push(Got {
                seq,
                subject: headers
                    .and_then(|h| h.get("Nats-Subject"))
                    .map(|v| v.as_str().to_owned())
                    .unwrap_or_default(),
                operation: headers
                    .and_then(|h| h.get("KV-Operation"))
                    .map(|v| v.as_str().to_owned()),
                payload: reply.payload,
            });
        }
    }
}

/// One message of a batched direct get.
struct Got {
    seq: u64,
    subject: String,
    /// `DEL` or `PURGE` for a KV delete marker; absent for a value.
    operation: Option<String>,
    payload: Bytes,
}

impl Got {
    fn is_put(&self) -> bool {
        self.operation.as_deref().is_none_or(|op| op == "PUT")
    }
}

fn header_u64(headers: Option<&HeaderMap>, name: &str) -> Option<u64> {
    headers?.get(name)?.as_str().parse().ok()
}
