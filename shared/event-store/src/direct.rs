//! Direct gets from `$JS.API.DIRECT.GET.<stream>`, as the listings and the job log need them.
//!
//! ADR-31's batched direct get, which async-nats does not offer: one request, answered by the
//! matching messages one reply each, then an end-of-batch status (`204`, with
//! `Nats-Num-Pending`: how many more match), or `404` when nothing matches. Two requests use
//! it: `{"seq", "next_by_subj", "batch"}` reads the first page of a listing
//! ([`crate::listing`]), `{"multi_last", "batch"}` the last message of each of a list of
//! subjects (the tombstones of a worker batch, [`crate::log`]).
//!
//! [`next_get`]: the plain `{"seq", "next_by_subj"}` get of one message, for a listing's later
//! pages.

use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;

/// Why a direct get failed.
#[derive(Debug, thiserror::Error)]
pub enum DirectGetError {
    #[error("direct get: cannot subscribe to the reply inbox")]
    Subscribe(#[source] async_nats::SubscribeError),
    #[error("direct get: cannot send the request")]
    Publish(#[source] async_nats::PublishError),
    #[error("direct get: the request failed")]
    Request(#[source] async_nats::RequestError),
    #[error("direct get answered without a sequence")]
    NoSequence,
    #[error("direct get answered status {0}")]
    Status(u16),
    #[error("direct get stalled after {0:?}")]
    Stalled(Duration),
}

/// One message of a batch: its stream sequence, its subject and its payload.
#[derive(Clone, Debug)]
pub struct Entry {
    pub seq: u64,
    pub subject: String,
    pub payload: Bytes,
}

/// Sends `request` for `stream` and collects the replies; returns the messages and whether more
/// match after them. A reply that takes longer than `stall` fails the read.
pub(crate) async fn batch_get(
    client: &async_nats::Client,
    stream: &str,
    request: &impl Serialize,
    stall: Duration,
) -> Result<(Vec<Entry>, bool), DirectGetError> {
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(DirectGetError::Subscribe)?;
    let request = serde_json::to_vec(request).expect("a direct get request serializes");
    client
        .publish_with_reply(
            format!("$JS.API.DIRECT.GET.{stream}"),
            inbox,
            request.into(),
        )
        .await
        .map_err(DirectGetError::Publish)?;
    let mut got = Vec::new();
    loop {
        let reply = match tokio::time::timeout(stall, replies.next()).await {
            Ok(Some(reply)) => reply,
            Ok(None) | Err(_) => return Err(DirectGetError::Stalled(stall)),
        };
        match reply.status.map(|s| s.as_u16()) {
            // Nothing matches.
            Some(404) => return Ok((got, false)),
            Some(204) => {
                let pending = header_u64(reply.headers.as_ref(), "Nats-Num-Pending");
                return Ok((got, pending.is_some_and(|n| n > 0)));
            }
            Some(other) => return Err(DirectGetError::Status(other)),
            None => {}
        }
        if let Some(entry) = Entry::of(reply) {
            got.push(entry);
        }
    }
}

/// `{"seq", "next_by_subj"}`: the first message matching `filter` at or after `seq`, or `None`.
/// One message, so the server counts nothing: a batched get counts what matches after the
/// batch, which from the middle of a stream walks a whole message block (tens of thousands of
/// messages) under the stream's lock.
pub(crate) async fn next_get(
    client: &async_nats::Client,
    stream: &str,
    seq: u64,
    filter: &str,
    stall: Duration,
) -> Result<Option<Entry>, DirectGetError> {
    #[derive(Serialize)]
    struct NextGet<'a> {
        seq: u64,
        next_by_subj: &'a str,
    }
    let request = serde_json::to_vec(&NextGet {
        seq,
        next_by_subj: filter,
    })
    .expect("a direct get request serializes");
    let reply = tokio::time::timeout(
        stall,
        client.request(format!("$JS.API.DIRECT.GET.{stream}"), request.into()),
    )
    .await
    .map_err(|_| DirectGetError::Stalled(stall))?
    .map_err(DirectGetError::Request)?;
    match reply.status.map(|s| s.as_u16()) {
        Some(404) => return Ok(None),
        Some(other) => return Err(DirectGetError::Status(other)),
        None => {}
    }
    Entry::of(reply).ok_or(DirectGetError::NoSequence).map(Some)
}

impl Entry {
    /// The message a direct get answered with; `None` without a `Nats-Sequence` header.
    fn of(reply: async_nats::Message) -> Option<Self> {
        let headers = reply.headers.as_ref();
        Some(Self {
            seq: header_u64(headers, "Nats-Sequence")?,
            subject: headers
                .and_then(|h| h.get("Nats-Subject"))
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default(),
            payload: reply.payload,
        })
    }
}

fn header_u64(headers: Option<&HeaderMap>, name: &str) -> Option<u64> {
    headers?.get(name)?.as_str().parse().ok()
}
