//! The job-status projection: the KV bucket `HEIMDEX_JOB_STATUS` (key `<org_id>.<job_id>`, the
//! job's [`JobStatus`]) and its listing, the stream `HEIMDEX_JOB_LISTING` (one message per job on
//! `heimdex.listing.<org_id>.<STATUS>`, the job id as payload). The projector is their only
//! writer; every read of either goes through [`StatusStore`], so nothing else names a `$KV.`
//! subject.
//!
//! # Listing, and what a page costs
//!
//! A job has one live listing entry, under its current status; the bucket value records the
//! entry's stream sequence (`listing_seq`). When the job moves to another status, a new entry is
//! written first, the status (with the new sequence) next, and the old entry is deleted by its
//! sequence last. A crash in between leaves an extra entry, never a missing one, and a listing
//! shows an entry only if it is the one the job's status names.
//!
//! The listing is a [`Listing`]. A page is up to `limit` entries with a sequence at or after
//! the cursor, on the org's one subject for that status, or on the org's four status subjects
//! (`heimdex.listing.<org_id>.*`) for every status, in stream order: the order in which jobs
//! entered their current status; the first page one batched direct get (ADR-31, nats-server
//! 2.11+), a later one a direct get per entry ([`Listing::page`] says why). Each entry's status
//! is then read from the bucket (concurrently). Nothing is read that the page does not hold,
//! however many jobs the org has or wherever the page starts. Entries share one subject per org
//! and status, not one per job: with a subject per job, the server's count of what remains
//! after a batch walked every job of the org.
//!
//! A job that changes status during a walk moves to the end and is listed again, with its new
//! status, on a later page; no job is missed. The cursor is the stream sequence of the page's
//! last entry, opaque to clients.

use std::time::Duration;

use async_nats::jetstream::kv::{self, CreateErrorKind, UpdateErrorKind};
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use futures::future::try_join_all;
use serde::Serialize;
use uuid::Uuid;

use heimdex_domain::jobs::{JobStatus, Status};

use crate::jetstream::{LEGACY_INDEX_STREAM, LISTING_STREAM, STATUS_BUCKET};
use crate::listing::{Listing, ListingError};

/// KV key of a job's status: `<org_id>.<job_id>`.
pub fn status_key(org_id: Uuid, job_id: Uuid) -> String {
    format!("{org_id}.{job_id}")
}

fn listing_subject(org_id: Uuid, status: Status) -> String {
    format!("heimdex.listing.{org_id}.{}", status_token(status))
}

fn status_of_token(token: &str) -> Option<Status> {
    [
        Status::Queued,
        Status::Running,
        Status::Succeeded,
        Status::Failed,
    ]
    .into_iter()
    .find(|&status| status_token(status) == token)
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
    /// The job's live listing entry, as the stored value records it.
    pub listed: Option<Listed>,
}

/// A job's entry in the listing: under which status, at which stream sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listed {
    pub status: Status,
    pub seq: u64,
}

/// The bucket value: the status, and where the job is listed.
#[derive(Serialize)]
struct StoredRef<'a> {
    #[serde(flatten)]
    status: &'a JobStatus,
    listing_seq: u64,
}

#[derive(serde::Deserialize)]
struct Stored {
    #[serde(flatten)]
    status: JobStatus,
    /// Absent in values written before the listing recorded sequences.
    #[serde(default)]
    listing_seq: Option<u64>,
}

impl Stored {
    fn listed(&self) -> Option<Listed> {
        self.listing_seq.map(|seq| Listed {
            status: self.status.status,
            seq,
        })
    }
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
    #[error("job listing failed")]
    Listing(#[from] ListingError),
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
    js: jetstream::Context,
    kv: kv::Store,
    /// The listing stream itself, for its message count.
    listing_stream: stream::Stream,
    listing: Listing,
}

impl StatusStore {
    pub fn new(
        client: async_nats::Client,
        js: jetstream::Context,
        kv: kv::Store,
        listing: stream::Stream,
        stall: Duration,
    ) -> Self {
        Self {
            listing: Listing::new(client, js.clone(), LISTING_STREAM, stall),
            js,
            kv,
            listing_stream: listing,
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
        Ok(entry.map(
            |entry| match serde_json::from_slice::<Stored>(&entry.value) {
                Ok(stored) => Versioned {
                    revision: entry.revision,
                    listed: stored.listed(),
                    status: Some(stored.status),
                },
                Err(err) => {
                    tracing::error!(%err, key, "undecodable status in the bucket");
                    Versioned {
                        revision: entry.revision,
                        status: None,
                        listed: None,
                    }
                }
            },
        ))
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
    /// compare-and-set against `revision`. `previous` is where the job is listed now (from the
    /// value at `revision`). Returns the new revision and where the job is listed after.
    ///
    /// The listing follows the status: a job that moves to another status gets its new entry
    /// first, the status naming it next, and its old entry is deleted last, so a crash in
    /// between leaves an extra entry (which listings skip), never a missing one.
    pub async fn write(
        &self,
        status: &JobStatus,
        revision: Option<u64>,
        previous: Option<Listed>,
    ) -> Result<(u64, Listed), WriteError> {
        let listed = match previous {
            Some(listed) if listed.status == status.status => listed,
            _ => Listed {
                status: status.status,
                seq: self
                    .list_entry(status.org_id, status.status, status.job_id)
                    .await?,
            },
        };
        let key = status_key(status.org_id, status.job_id);
        let value = StoredRef {
            status,
            listing_seq: listed.seq,
        };
        let value = Bytes::from(serde_json::to_vec(&value).expect("statuses serialize to JSON"));
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
        };
        let stale = match &written {
            // The entry written for this attempt names nothing.
            Err(_) if Some(listed) != previous => Some(listed.seq),
            Err(_) => None,
            Ok(_) => previous.filter(|p| p.seq != listed.seq).map(|p| p.seq),
        };
        if let Some(seq) = stale {
            self.listing.unlist(seq);
        }
        Ok((written?, listed))
    }

    /// Appends a listing entry; returns its sequence.
    async fn list_entry(
        &self,
        org_id: Uuid,
        status: Status,
        job_id: Uuid,
    ) -> Result<u64, StatusError> {
        Ok(self
            .listing
            .append(
                listing_subject(org_id, status),
                Bytes::from(job_id.to_string()),
            )
            .await?)
    }

    /// Lists every job of the bucket: the one-time migration of a bucket made before the
    /// listing existed, or by a release whose listing had another shape (the projector runs it
    /// when the listing is empty and the bucket is not). Each status is rewritten, with
    /// compare-and-set, to name its new entry; one that changes meanwhile was listed by its
    /// writer. The listing stream of earlier releases is deleted after. Returns how many jobs
    /// were listed.
    pub async fn backfill_listing(
        &self,
        stall: Duration,
    ) -> Result<u64, crate::jetstream::ReadError> {
        use crate::jetstream::ReadError;
        let stream = self
            .js
            .get_stream_no_info(format!("KV_{STATUS_BUCKET}"))
            .await
            .map_err(|err| ReadError::Open(Box::new(err)))?;
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
            let Ok(info) = message.info() else { continue };
            match self.write(&job, Some(info.stream_sequence), None).await {
                Ok(_) => written += 1,
                Err(WriteError::Conflict) => {}
                Err(WriteError::Store(err)) => return Err(ReadError::Read(Box::new(err))),
            }
        }
        match self.js.delete_stream(LEGACY_INDEX_STREAM).await {
            Ok(_) => tracing::info!("the listing index of earlier releases is deleted"),
            Err(err)
                if matches!(
                    err.kind(),
                    jetstream::context::DeleteStreamErrorKind::JetStream(ref js)
                        if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
                ) => {}
            Err(err) => tracing::warn!(%err, "cannot delete the listing index of earlier releases"),
        }
        Ok(written)
    }

    /// Whether the listing is empty while the bucket is not (see
    /// [`StatusStore::backfill_listing`]).
    pub async fn listing_missing(&self) -> Result<bool, StatusError> {
        let mut listing = self.listing_stream.clone();
        let listed = listing
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
        Ok(listed == 0 && statuses > 0)
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
        let filter = match status {
            Some(status) => listing_subject(org_id, status),
            None => format!("heimdex.listing.{org_id}.*"),
        };
        let (messages, next) = self.listing.page(&filter, from, limit).await?;
        let entries = messages.iter().filter_map(|m| {
            let job_id = std::str::from_utf8(&m.payload).ok()?.parse::<Uuid>().ok()?;
            let status = status_of_token(m.subject.rsplit('.').next()?)?;
            Some((m.seq, status, job_id))
        });
        let read = try_join_all(entries.map(|(seq, status, job_id)| async move {
            let entry = self.entry(org_id, job_id).await?;
            Ok::<_, StatusError>(entry.and_then(|entry| {
                let job = entry.status?;
                // The entry the status names; a status from before sequences were recorded
                // (mid-migration) is matched by its status instead.
                let live = match entry.listed {
                    Some(listed) => listed.seq == seq,
                    None => job.status == status,
                };
                live.then_some(job)
            }))
        }))
        .await?;
        Ok(Page {
            jobs: read.into_iter().flatten().collect(),
            next,
        })
    }
}
