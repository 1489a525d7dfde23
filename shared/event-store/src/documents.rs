//! The document projection: the KV bucket `HEIMDEX_DOCUMENTS` (key `<org_id>.a-<asset token>`,
//! the [`DocumentRecord`] of the latest request for the asset) and its listing, the stream
//! `HEIMDEX_DOCUMENT_LISTING` (one message per live document on `heimdex.documents.<org_id>`,
//! the key's asset token as payload). The projector is their only writer.
//!
//! Every change of a document appends a new listing entry and deletes the old one, so a listing
//! walks the org's documents in the order their last change was recorded, and a page costs what it holds
//! (see [`crate::listing`]). A deleted document keeps its record (so an older request that
//! arrives late cannot bring it back) but no listing entry.

use std::time::Duration;

use async_nats::jetstream::kv::{self, CreateErrorKind, UpdateErrorKind};
use async_nats::jetstream::{self, consumer::DeliverPolicy};
use bytes::Bytes;
use futures::future::try_join_all;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use heimdex_domain::AssetId;
use heimdex_domain::documents::{DocumentChange, DocumentRecord, document_key};
use heimdex_domain::events::JobEvent;

use crate::jetstream::{DOCUMENT_LISTING_STREAM, JOBS_STREAM, ReadError, StreamRead};
use crate::listing::{Listing, ListingError};

/// The bucket key that records that the projection was built from the stream's history (see
/// [`DocumentStore::backfill`]). No document key looks like it: those start with an org id.
const BACKFILLED_KEY: &str = "backfilled";

#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("document bucket read failed")]
    Read(#[source] kv::EntryError),
    #[error("document bucket write failed")]
    Create(#[source] kv::CreateError),
    #[error("document bucket write failed")]
    Update(#[source] kv::UpdateError),
    #[error("document bucket write failed")]
    Put(#[source] kv::PutError),
    #[error("document {key} cannot be decoded")]
    Decode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("document listing failed")]
    Listing(#[from] ListingError),
    #[error("replaying the job stream failed")]
    Replay(#[from] ReadError),
}

/// Why a compare-and-set write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum DocumentWriteError {
    /// Another writer changed the key since it was read: read again and re-apply.
    #[error("the document changed since it was read")]
    Conflict,
    #[error(transparent)]
    Store(#[from] DocumentError),
}

/// A record as stored, with the bucket revision it was read at.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredDocument {
    pub revision: u64,
    pub record: DocumentRecord,
    /// The document's live listing entry; `None` once deleted.
    pub listing_seq: Option<u64>,
}

/// The bucket value: the record, and where the document is listed.
#[derive(Serialize, Deserialize)]
struct Value {
    #[serde(flatten)]
    record: DocumentRecord,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    listing_seq: Option<u64>,
}

/// One page of an org's documents.
#[derive(Clone, Debug, PartialEq)]
pub struct DocumentPage {
    pub documents: Vec<DocumentRecord>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<u64>,
}

#[derive(Clone)]
pub struct DocumentStore {
    js: jetstream::Context,
    kv: kv::Store,
    listing: Listing,
    stall: Duration,
}

fn listing_subject(org_id: Uuid) -> String {
    format!("heimdex.documents.{org_id}")
}

impl DocumentStore {
    pub fn new(
        client: async_nats::Client,
        js: jetstream::Context,
        kv: kv::Store,
        stall: Duration,
    ) -> Self {
        Self {
            listing: Listing::new(client, js.clone(), DOCUMENT_LISTING_STREAM, stall),
            js,
            kv,
            stall,
        }
    }

    /// The document's record (a deleted one included), with its revision.
    pub async fn entry(
        &self,
        org_id: Uuid,
        asset_id: &AssetId,
    ) -> Result<Option<StoredDocument>, DocumentError> {
        self.entry_at(document_key(org_id, asset_id)).await
    }

    /// The record under `<org_id>.<token>` (the asset token of [`document_key`]).
    pub async fn entry_by_token(
        &self,
        org_id: Uuid,
        token: &str,
    ) -> Result<Option<StoredDocument>, DocumentError> {
        self.entry_at(format!("{org_id}.{token}")).await
    }

    async fn entry_at(&self, key: String) -> Result<Option<StoredDocument>, DocumentError> {
        let Some(entry) = self.kv.entry(&key).await.map_err(DocumentError::Read)? else {
            return Ok(None);
        };
        // A purge or delete marker has an empty value: nothing stored.
        if entry.value.is_empty() {
            return Ok(None);
        }
        let value: Value = serde_json::from_slice(&entry.value)
            .map_err(|source| DocumentError::Decode { key, source })?;
        Ok(Some(StoredDocument {
            revision: entry.revision,
            record: value.record,
            listing_seq: value.listing_seq,
        }))
    }

    /// Writes a record: a create when `current` is `None` (the key must not exist), else a
    /// compare-and-set against its revision. A live document gets a new listing entry first;
    /// the entry the record named before is deleted after the write.
    pub async fn write(
        &self,
        record: &DocumentRecord,
        current: Option<&StoredDocument>,
    ) -> Result<StoredDocument, DocumentWriteError> {
        let listing_seq = match record.is_deleted() {
            true => None,
            false => Some(
                self.listing
                    .append(
                        listing_subject(record.org_id),
                        Bytes::from(token_of(&document_key(record.org_id, &record.asset_id))),
                    )
                    .await
                    .map_err(DocumentError::from)?,
            ),
        };
        let key = document_key(record.org_id, &record.asset_id);
        let value = serde_json::to_vec(&Value {
            record: record.clone(),
            listing_seq,
        })
        .expect("document records serialize to JSON");
        let written = match current {
            None => self.kv.create(&key, value.into()).await.map_err(|err| {
                if err.kind() == CreateErrorKind::AlreadyExists {
                    DocumentWriteError::Conflict
                } else {
                    DocumentError::Create(err).into()
                }
            }),
            Some(current) => self
                .kv
                .update(&key, value.into(), current.revision)
                .await
                .map_err(|err| {
                    if err.kind() == UpdateErrorKind::WrongLastRevision {
                        DocumentWriteError::Conflict
                    } else {
                        DocumentError::Update(err).into()
                    }
                }),
        };
        // The entry no record names: the old one after a write, the new one after a failure.
        let stale = match &written {
            Ok(_) => current.and_then(|c| c.listing_seq),
            Err(_) => listing_seq,
        };
        if let Some(seq) = stale {
            self.listing.unlist(seq);
        }
        Ok(StoredDocument {
            revision: written?,
            record: record.clone(),
            listing_seq,
        })
    }

    /// Folds one change into the document's record with compare-and-set, re-reading on a
    /// conflict; returns the record as stored. `None`: too many conflicts in a row.
    pub async fn apply(
        &self,
        change: &DocumentChange,
        attempts: usize,
    ) -> Result<Option<StoredDocument>, DocumentError> {
        for _ in 0..attempts {
            let current = self.entry_at(change.key()).await?;
            let record = match &current {
                None => DocumentRecord::new(change),
                Some(stored) => {
                    let mut record = stored.record.clone();
                    match record.apply(change) {
                        heimdex_domain::documents::Folded::Changed => record,
                        heimdex_domain::documents::Folded::Unchanged => {
                            return Ok(current);
                        }
                    }
                }
            };
            match self.write(&record, current.as_ref()).await {
                Ok(stored) => return Ok(Some(stored)),
                Err(DocumentWriteError::Conflict) => continue,
                Err(DocumentWriteError::Store(err)) => return Err(err),
            }
        }
        Ok(None)
    }

    /// Up to `limit` of the org's live documents from stream sequence `from` on (1 for the
    /// first page), in the order their last change was recorded.
    pub async fn list(
        &self,
        org_id: Uuid,
        limit: usize,
        from: u64,
    ) -> Result<DocumentPage, DocumentError> {
        let (entries, next) = self
            .listing
            .page(&listing_subject(org_id), from, limit)
            .await?;
        let read = try_join_all(entries.into_iter().map(|entry| async move {
            let Ok(token) = std::str::from_utf8(&entry.payload) else {
                return Ok(None);
            };
            let stored = self.entry_at(format!("{org_id}.{token}")).await?;
            Ok::<_, DocumentError>(
                stored
                    .filter(|stored| stored.listing_seq == Some(entry.seq))
                    .map(|stored| stored.record),
            )
        }))
        .await?;
        Ok(DocumentPage {
            documents: read.into_iter().flatten().collect(),
            next,
        })
    }

    /// Builds the projection from the job stream's history, once: a bucket made by a release
    /// without documents gets every document that release stored. Runs until the stream's
    /// last event when it started (the projector's consumer applies what comes after, and
    /// applying a change twice is harmless), then records that it ran. Returns how many
    /// changes it applied; `None` if it had run before.
    pub async fn backfill(&self) -> Result<Option<u64>, DocumentError> {
        if self
            .kv
            .get(BACKFILLED_KEY)
            .await
            .map_err(DocumentError::Read)?
            .is_some()
        {
            return Ok(None);
        }
        let stream = self
            .js
            .get_stream_no_info(JOBS_STREAM)
            .await
            .map_err(|err| ReadError::Open(Box::new(err)))?;
        let mut read = StreamRead::open(
            &stream,
            "heimdex.jobs.*.*.requested".to_owned(),
            DeliverPolicy::All,
            self.stall,
        )
        .await?;
        let mut applied = 0;
        while let Some(message) = read.next().await? {
            let Ok(info) = message.info() else { continue };
            let Ok(event) = JobEvent::decode(&message.payload) else {
                continue;
            };
            if let Some(change) = DocumentChange::of(&event, info.stream_sequence) {
                self.apply(&change, 16).await?;
                applied += 1;
            }
        }
        self.kv
            .put(BACKFILLED_KEY, Bytes::from_static(b"1"))
            .await
            .map_err(DocumentError::Put)?;
        Ok(Some(applied))
    }
}

/// The asset token of a key (`<org_id>.<token>`).
fn token_of(key: &str) -> String {
    key.split_once('.')
        .map_or(key, |(_, token)| token)
        .to_owned()
}
