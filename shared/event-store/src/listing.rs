//! A listing: an append-only stream of small entries (an id as payload) on a few literal
//! subjects, read a page at a time with one batched direct get, and pruned by sequence. The job
//! listing ([`crate::status`]) and the document listing ([`crate::documents`]) are both made of
//! one.
//!
//! A page costs what it holds: the direct get reads `limit` entries from the cursor on, and the
//! server's count of what remains (`Nats-Num-Pending`, computed on every batched read) is per
//! subject, so it is cheap as long as entries share a few literal subjects (one per org, or per
//! org and status) instead of one subject each.
//!
//! An entry is live only while the record it points to names its sequence; the writer appends
//! the new entry first, writes the record next and deletes the old entry last (in the
//! background, see [`Listing::unlist`]), so a crash in between leaves an extra entry, which
//! readers skip, never a missing one.

use std::time::Duration;

use async_nats::jetstream::{self, response::Response};
use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;

pub use crate::direct::Entry;
use crate::direct::{BatchGetError, batch_get};

#[derive(Debug, thiserror::Error)]
pub enum ListingError {
    #[error("cannot read the listing")]
    Read(#[from] BatchGetError),
    #[error("listing write failed")]
    Append(#[source] jetstream::context::PublishError),
}

#[derive(Clone)]
pub struct Listing {
    client: async_nats::Client,
    js: jetstream::Context,
    /// The stream's name.
    stream: &'static str,
    /// Stale entries to delete, in the background (see [`spawn_unlister`]).
    unlist: tokio::sync::mpsc::Sender<u64>,
    /// How long a page waits for the next message of its batch.
    stall: Duration,
}

/// `{"seq": .., "next_by_subj": .., "batch": ..}`: ADR-31's batched direct get.
#[derive(Serialize)]
struct BatchGet<'a> {
    seq: u64,
    next_by_subj: &'a str,
    batch: usize,
}

impl Listing {
    /// A listing on `stream` (which must exist, with direct gets allowed).
    pub fn new(
        client: async_nats::Client,
        js: jetstream::Context,
        stream: &'static str,
        stall: Duration,
    ) -> Self {
        Self {
            client,
            unlist: spawn_unlister(js.clone(), stream),
            js,
            stream,
            stall,
        }
    }

    /// Appends an entry; returns its sequence.
    pub async fn append(&self, subject: String, payload: Bytes) -> Result<u64, ListingError> {
        let ack = self
            .js
            .publish(subject, payload)
            .await
            .map_err(ListingError::Append)?
            .await
            .map_err(ListingError::Append)?;
        Ok(ack.sequence)
    }

    /// Queues an entry no record names any more for deletion. A stale entry only costs
    /// listings a read (they skip it), so when the queue is full it is left.
    pub fn unlist(&self, seq: u64) {
        if self.unlist.try_send(seq).is_err() {
            tracing::debug!(
                seq,
                stream = self.stream,
                "stale listing entry left: the delete queue is full"
            );
        }
    }

    /// Up to `limit` entries matching `filter` from sequence `from` on, in stream order, and
    /// where the next page starts (`None` on the last page).
    pub async fn page(
        &self,
        filter: &str,
        from: u64,
        limit: usize,
    ) -> Result<(Vec<Entry>, Option<u64>), ListingError> {
        let (entries, more) = self.batch(filter, from, limit).await?;
        let next = more.then(|| entries.last().map(|e| e.seq + 1)).flatten();
        Ok((entries, next))
    }

    /// A batched direct get: up to `batch` messages matching `filter` from `from` on, and
    /// whether more match after them.
    async fn batch(
        &self,
        filter: &str,
        from: u64,
        batch: usize,
    ) -> Result<(Vec<Entry>, bool), ListingError> {
        let request = BatchGet {
            seq: from.max(1),
            next_by_subj: filter,
            batch,
        };
        Ok(batch_get(&self.client, self.stream, &request, self.stall).await?)
    }
}

/// Stale entries queued for deletion at most; past this, they are left (listings skip them).
const UNLIST_QUEUE: usize = 200_000;
/// Deletes in flight at once.
const UNLIST_IN_FLIGHT: usize = 16;

/// Starts the task that deletes stale entries, a few at a time, off the writer's path: each
/// delete is a JetStream API request, and a burst of thousands (a busy batch) would queue ahead
/// of every other API request of every client of the server (consumer info, stream info) until
/// they time out. Entries still queued when the process stops are left.
fn spawn_unlister(js: jetstream::Context, stream: &'static str) -> tokio::sync::mpsc::Sender<u64> {
    let (sender, receiver) = tokio::sync::mpsc::channel::<u64>(UNLIST_QUEUE);
    let seqs = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|seq| (seq, receiver))
    });
    tokio::spawn(seqs.for_each_concurrent(UNLIST_IN_FLIGHT, move |seq| {
        let js = js.clone();
        async move {
            // Not `Stream::delete_message`: that one also overwrites the message on disk (a
            // secure erase, about 40 times slower here), which a listing entry does not need.
            let deleted: Result<Response<Deleted>, _> = js
                .request(
                    format!("STREAM.MSG.DELETE.{stream}"),
                    &DeleteMessage {
                        seq,
                        no_erase: true,
                    },
                )
                .await;
            match deleted {
                Ok(Response::Ok(_)) => {}
                Ok(Response::Err { error }) => {
                    tracing::debug!(%error, seq, stream, "stale listing entry not deleted; listings skip it")
                }
                Err(err) => {
                    tracing::debug!(%err, seq, stream, "stale listing entry not deleted; listings skip it")
                }
            }
        }
    }));
    sender
}

/// `$JS.API.STREAM.MSG.DELETE.<stream>` request.
#[derive(Serialize)]
struct DeleteMessage {
    seq: u64,
    no_erase: bool,
}

#[derive(serde::Deserialize)]
struct Deleted {}
