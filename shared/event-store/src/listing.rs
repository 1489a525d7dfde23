//! A listing: an append-only stream of small entries (an id as payload) on a few literal
//! subjects, read a page at a time with direct gets, and pruned by sequence. The job listing
//! ([`crate::status`]) and the document listing ([`crate::documents`]) are both made of one.
//!
//! A page costs what it holds, wherever it starts: the first page is one batched direct get,
//! whose count of what remains (`Nats-Num-Pending`) the server takes from its per-subject totals
//! as long as entries share a few literal subjects (one per org, or per org and status) instead
//! of one subject each; a later page is `limit + 1` plain direct gets, each one lookup in the
//! server's per-block subject index (see [`Listing::page`] for why not a batch).
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
use crate::direct::{DirectGetError, batch_get, next_get};

#[derive(Debug, thiserror::Error)]
pub enum ListingError {
    #[error("cannot read the listing")]
    Read(#[from] DirectGetError),
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
    ///
    /// The first page (`from` 1) is one batched direct get: one round trip, and the server's
    /// count of what matches after it comes from its per-subject totals. A later page is one
    /// plain direct get per entry, and one more to learn whether it is the last, each found
    /// from the server's per-block subject index: a batched get from the middle of the stream
    /// would count what matches after it by walking every message of a block (up to 8 MB of
    /// entries, about 70,000), under the stream's lock, so that a page deep in a large org's
    /// walk cost milliseconds more than in a small org's, and held up the projector's appends
    /// meanwhile.
    pub async fn page(
        &self,
        filter: &str,
        from: u64,
        limit: usize,
    ) -> Result<(Vec<Entry>, Option<u64>), ListingError> {
        if from <= 1 {
            let request = BatchGet {
                seq: 1,
                next_by_subj: filter,
                batch: limit,
            };
            let (entries, more) =
                batch_get(&self.client, self.stream, &request, self.stall).await?;
            let next = more.then(|| entries.last().map(|e| e.seq + 1)).flatten();
            return Ok((entries, next));
        }
        let mut entries = Vec::with_capacity(limit);
        let mut seq = from;
        while let Some(entry) = next_get(&self.client, self.stream, seq, filter, self.stall).await?
        {
            if entries.len() == limit {
                return Ok((entries, Some(seq)));
            }
            seq = entry.seq + 1;
            entries.push(entry);
        }
        Ok((entries, None))
    }
}

/// `{"seq": .., "next_by_subj": .., "batch": ..}`: ADR-31's batched direct get.
#[derive(Serialize)]
struct BatchGet<'a> {
    seq: u64,
    next_by_subj: &'a str,
    batch: usize,
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
