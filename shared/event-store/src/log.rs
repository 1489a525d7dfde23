//! The job log: the stream `HEIMDEX_JOBS`, the source of truth. Events are appended here with
//! the headers that make them idempotent (`Nats-Msg-Id`, an expected last subject sequence) and
//! the caller's trace context, and read back by direct gets (a job's history and its refold, in
//! batches; the last event of a kind, alone) or in one pass over the log from a sequence on (an
//! index rebuild).

use std::collections::HashMap;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::{PublishAckFuture, PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{DirectGetErrorKind, Stream};
use async_nats::jetstream::{self, ErrorCode, consumer};
use uuid::Uuid;

use heimdex_domain::events::{self, DecodeError, EventKind, JobEvent};
use heimdex_domain::ids::Target;
use heimdex_domain::jobs::JobStatus;

use crate::direct::{DirectGetError, batch_get};
use crate::jetstream::{ReadError, StreamRead};

/// Tombstone subjects asked for in one batched read.
const TOMBSTONES_PER_READ: usize = 256;
/// How long a batched read of tombstones waits for its next reply.
const TOMBSTONE_STALL: Duration = Duration::from_secs(5);

/// A job's events asked for in one batched read of its history.
const HISTORY_BATCH: usize = 256;
/// The most subjects a job's history reads: nats-server's cap on a multi-last get's answers.
/// A job has one subject per kind of event.
const SUBJECTS_PER_JOB: usize = 1_024;

/// `{"seq", "next_by_subj", "batch"}`: the messages under a subject filter from a sequence on
/// (ADR-31).
#[derive(serde::Serialize)]
struct NextBatch<'a> {
    seq: u64,
    next_by_subj: &'a str,
    batch: usize,
}

/// `{"multi_last": [..], "batch": ..}`: the last message of each subject (ADR-31).
#[derive(serde::Serialize)]
struct MultiLast<'a> {
    multi_last: Vec<&'a str>,
    batch: usize,
}

/// Why an event was not appended. Nothing was stored in any case.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The client is not connected to NATS right now: nothing was sent.
    #[error("not connected to NATS")]
    Disconnected,
    /// The stream (or the server's storage) is full and refuses new events.
    #[error("the job log is full")]
    Full(#[source] PublishError),
    /// The publish was not acknowledged in time, or the connection broke: try again.
    #[error("the job log did not acknowledge the event")]
    Unavailable(#[source] PublishError),
    /// JetStream refused the event for another reason (a misconfigured stream, say).
    #[error("the job log refused the event")]
    Refused(#[source] PublishError),
}

impl AppendError {
    fn from_publish(err: PublishError) -> Self {
        match err.kind() {
            PublishErrorKind::TimedOut
            | PublishErrorKind::BrokenPipe
            | PublishErrorKind::MaxAckPending => Self::Unavailable(err),
            PublishErrorKind::Other if is_storage_full(&err) => Self::Full(err),
            PublishErrorKind::StreamNotFound
            | PublishErrorKind::WrongLastSequence
            | PublishErrorKind::WrongLastMessageId
            | PublishErrorKind::MaxPayloadExceeded
            | PublishErrorKind::Other => Self::Refused(err),
        }
    }
}

/// Whether JetStream refused a publish for lack of room, by its error code: the stream at its
/// limits with `discard: new` (10077, "maximum bytes/messages exceeded", also used when the
/// disk write fails), or the server or account out of storage (10023, 10047, 10002).
fn is_storage_full(err: &PublishError) -> bool {
    let code = std::error::Error::source(err)
        .and_then(|source| source.downcast_ref::<jetstream::Error>())
        .map(jetstream::Error::error_code);
    matches!(
        code,
        Some(
            ErrorCode::STREAM_STORE_FAILED
                | ErrorCode::INSUFFICIENT_RESOURCES
                | ErrorCode::STORAGE_RESOURCES_EXCEEDED
                | ErrorCode::ACCOUNT_RESOURCES_EXCEEDED
        )
    )
}

/// Whether a `requested` event was stored by this call or was there already.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appended {
    Created,
    /// The job's `requested` event was stored before (a duplicate request).
    Exists,
}

/// A stored event: its stream sequence and the event.
#[derive(Clone, Debug, PartialEq)]
pub struct Stored<T> {
    pub seq: u64,
    pub event: T,
}

/// An event as stored, undecoded: what `GET /jobs/{id}/events` shows.
#[derive(Clone, Debug)]
pub struct RawEvent {
    pub seq: u64,
    pub subject: String,
    pub payload: bytes::Bytes,
}

/// Why the log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LogReadError {
    #[error("cannot read the job log")]
    Read(#[from] ReadError),
    #[error("direct get from the job log failed")]
    DirectGet(#[source] async_nats::jetstream::stream::DirectGetError),
    #[error("cannot read the log's state")]
    Info(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("cannot read the tombstones")]
    Tombstones(#[from] DirectGetError),
    #[error("cannot read the job's events")]
    History(#[source] DirectGetError),
    #[error("tombstone at sequence {seq} does not name a job")]
    BadTombstone { seq: u64 },
    #[error("event at sequence {seq} cannot be decoded")]
    Decode {
        seq: u64,
        #[source]
        source: DecodeError,
    },
}

/// An event sent but not yet acknowledged; see [`JobLog::send`].
pub struct PendingAppend(PublishAckFuture);

impl PendingAppend {
    /// Waits for the stream's acknowledgement.
    pub async fn stored(self) -> Result<(), AppendError> {
        self.0.await.map(|_| ()).map_err(AppendError::from_publish)
    }
}

/// The last delete of a target: the tombstone's sequence (the target's generation) and the
/// delete job it announced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tombstone {
    pub seq: u64,
    pub job_id: Uuid,
}

#[derive(Clone)]
pub struct JobLog {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: Stream,
    /// `HEIMDEX_TOMBSTONES`: the last delete of each target.
    tombstones: Stream,
}

impl JobLog {
    pub fn new(
        client: async_nats::Client,
        js: jetstream::Context,
        stream: Stream,
        tombstones: Stream,
    ) -> Self {
        Self {
            client,
            js,
            stream,
            tombstones,
        }
    }

    /// Records that `job_id` is about to delete `target`, before its `requested` event is
    /// appended: a write requested after this reads a newer generation, so it is a new job
    /// even when its content is identical to what the delete removes. If the delete itself is
    /// then not stored, the only effect is that the next identical write runs again (and
    /// rewrites the same point): harmless.
    pub async fn mark_deleted(
        &self,
        org_id: Uuid,
        target: &Target,
        job_id: Uuid,
    ) -> Result<(), AppendError> {
        self.connected()?;
        self.js
            .publish(tombstone_subject(org_id, target), job_id.to_string().into())
            .await
            .map_err(AppendError::from_publish)?
            .await
            .map(|_| ())
            .map_err(AppendError::from_publish)
    }

    /// The generation of a write to `targets`: the sum of their last tombstones' sequences
    /// (0 when none was ever deleted). It only grows, and grows with every delete.
    pub async fn generation(&self, org_id: Uuid, targets: &[Target]) -> Result<u64, LogReadError> {
        let stones = self.tombstones(org_id, targets).await?;
        Ok(stones.values().map(|t| t.seq).sum())
    }

    /// For each list of targets, the stream sequence of the last delete of any of them (the
    /// `requested` event of the job its tombstone names), or 0: a write at a lower sequence is
    /// undone by it in stream order. A tombstone whose job was never stored counts as no
    /// delete.
    ///
    /// One batched read serves every target of the org ([`JobLog::tombstones`]), then one
    /// direct get each distinct delete job found: a worker batch of writes to never-deleted
    /// points costs one round trip, not two per write.
    pub async fn last_delete_seqs(
        &self,
        org_id: Uuid,
        per_write: &[&[Target]],
    ) -> Result<Vec<u64>, LogReadError> {
        let mut targets: Vec<Target> = per_write.iter().flat_map(|t| t.iter().cloned()).collect();
        targets.sort();
        targets.dedup();
        let stones = self.tombstones(org_id, &targets).await?;
        let mut deletes: Vec<Uuid> = stones.values().map(|stone| stone.job_id).collect();
        deletes.sort();
        deletes.dedup();
        let requested = futures::future::try_join_all(deletes.iter().map(|job_id| async move {
            let stored = self.last(org_id, *job_id, EventKind::Requested).await?;
            Ok::<_, LogReadError>((*job_id, stored.map_or(0, |stored| stored.seq)))
        }))
        .await?;
        let requested: HashMap<Uuid, u64> = requested.into_iter().collect();
        Ok(per_write
            .iter()
            .map(|targets| {
                targets
                    .iter()
                    .filter_map(|target| stones.get(target))
                    .map(|stone| requested.get(&stone.job_id).copied().unwrap_or(0))
                    .max()
                    .unwrap_or(0)
            })
            .collect())
    }

    /// The last tombstone of each of `targets` that was ever deleted, read with batched
    /// direct gets of the last message of each subject ([`crate::direct`]), a few hundred
    /// subjects a request.
    pub async fn tombstones(
        &self,
        org_id: Uuid,
        targets: &[Target],
    ) -> Result<HashMap<Target, Tombstone>, LogReadError> {
        let mut stones = HashMap::new();
        for chunk in targets.chunks(TOMBSTONES_PER_READ) {
            let by_subject: HashMap<String, &Target> = chunk
                .iter()
                .map(|target| (tombstone_subject(org_id, target), target))
                .collect();
            let request = MultiLast {
                multi_last: by_subject.keys().map(String::as_str).collect(),
                batch: chunk.len(),
            };
            let stream = &self.tombstones.cached_info().config.name;
            let (entries, _) = batch_get(&self.client, stream, &request, TOMBSTONE_STALL).await?;
            for entry in entries {
                let Some(target) = by_subject.get(&entry.subject) else {
                    continue;
                };
                let job_id = std::str::from_utf8(&entry.payload)
                    .ok()
                    .and_then(|s| Uuid::parse_str(s).ok())
                    .ok_or(LogReadError::BadTombstone { seq: entry.seq })?;
                stones.insert(
                    (*target).clone(),
                    Tombstone {
                        seq: entry.seq,
                        job_id,
                    },
                );
            }
        }
        Ok(stones)
    }

    /// The stream itself, for the consumers' bootstrap and the backlog probe.
    pub fn stream(&self) -> &Stream {
        &self.stream
    }

    /// Appends a job's `requested` event, exactly once per job: its `Nats-Msg-Id` is the job key
    /// and it expects its subject to be empty, so a duplicate is refused by the server inside
    /// and beyond the duplicate window. Measured on nats-server 2.15.1: the expected-sequence
    /// check runs before de-duplication, so a duplicate comes back as "wrong last sequence"
    /// (10071) rather than a duplicate ack; both mean the job exists.
    pub async fn request(&self, event: &JobEvent) -> Result<Appended, AppendError> {
        self.connected()?;
        let publish = message(event).expected_last_subject_sequence(0);
        match self.publish(event, publish).await {
            Ok(ack) if ack.duplicate => Ok(Appended::Exists),
            Ok(_) => Ok(Appended::Created),
            Err(err) if err.kind() == PublishErrorKind::WrongLastSequence => Ok(Appended::Exists),
            Err(err) => Err(AppendError::from_publish(err)),
        }
    }

    /// Appends a `retried` event, at most once per round: its id is `<job>:retried:<round>` and it
    /// expects `last_retried_seq` (0 before the first retry) as the last sequence on the job's
    /// `retried` subject. `Ok` means the round's event is stored, by this call or a concurrent
    /// one retrying the same failure.
    pub async fn retry(&self, event: &JobEvent, last_retried_seq: u64) -> Result<(), AppendError> {
        self.connected()?;
        let publish = message(event).expected_last_subject_sequence(last_retried_seq);
        match self.publish(event, publish).await {
            Ok(_) => Ok(()),
            Err(err) if err.kind() == PublishErrorKind::WrongLastSequence => Ok(()),
            Err(err) => Err(AppendError::from_publish(err)),
        }
    }

    /// Sends a later event of a job (`started`, `succeeded`, `failed`) without waiting for its
    /// acknowledgement, so that a batch's events share round trips. Its id (`<job>:<event>:...`)
    /// makes a repeat a duplicate.
    pub async fn send(&self, event: &JobEvent) -> Result<PendingAppend, AppendError> {
        self.js
            .send_publish(event.subject(), message(event))
            .await
            .map(PendingAppend)
            .map_err(AppendError::from_publish)
    }

    async fn publish(
        &self,
        event: &JobEvent,
        publish: PublishMessage,
    ) -> Result<jetstream::publish::PublishAck, PublishError> {
        self.js.send_publish(event.subject(), publish).await?.await
    }

    /// A disconnected client would buffer a publish until its timeout: refuse at once instead.
    fn connected(&self) -> Result<(), AppendError> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            async_nats::connection::State::Disconnected
            | async_nats::connection::State::Pending => Err(AppendError::Disconnected),
        }
    }

    /// The last event of `kind` of the job, by direct get; `None` if it has none.
    pub async fn last(
        &self,
        org_id: Uuid,
        job_id: Uuid,
        kind: EventKind,
    ) -> Result<Option<Stored<JobEvent>>, LogReadError> {
        let subject = events::subject(org_id, job_id, kind);
        match self.stream.direct_get_last_for_subject(subject).await {
            Ok(message) => decode(message.sequence, &message.payload).map(Some),
            Err(err) => match err.kind() {
                DirectGetErrorKind::NotFound => Ok(None),
                DirectGetErrorKind::InvalidSubject
                | DirectGetErrorKind::TimedOut
                | DirectGetErrorKind::Request
                | DirectGetErrorKind::ErrorResponse(..)
                | DirectGetErrorKind::Other => Err(LogReadError::DirectGet(err)),
            },
        }
    }

    /// The event stored at `seq`.
    pub async fn at(&self, seq: u64) -> Result<Stored<JobEvent>, LogReadError> {
        let message = self
            .stream
            .direct_get(seq)
            .await
            .map_err(LogReadError::DirectGet)?;
        decode(seq, &message.payload)
    }

    /// The job's events as stored, oldest first, at most `max` of them; a reply that takes
    /// longer than `stall` is an error, never a truncated history.
    ///
    /// Read by batched direct gets (ADR-31), not through a consumer: the projector refolds
    /// every job that ends while events may come back late (after a reconnect, a whole
    /// backlog's worth), and a consumer for each would run into the server's cap on a
    /// stream's consumers (1,000 on nats-server 2.15.1; an ordered consumer outlives its read
    /// by its 30 s inactive threshold), failing every refold after the thousandth.
    ///
    /// One multi-last get names the job's subjects (one per kind of event it has) with the
    /// last event of each, then each subject is read on its own, all at once. One read under
    /// the job's wildcard would be a single request, but nats-server ends a wildcard read by
    /// scanning every message block after the job's last event: it skips blocks by its subject
    /// index only for a literal subject, or for a wildcard while the stream has fewer than
    /// 64Ki subjects, and the job log has three or more a job. With 600,000 events in the log
    /// that read took 4 to 20 ms, holding the stream store's read lock, which appends wait for;
    /// these take about 0.2 ms wherever the job is.
    ///
    /// A direct get may be answered by any replica of the stream, and a replica applies the
    /// log in order but may lag behind the leader: what this returns is always the job's first
    /// events in stream order, with no gap, and may end before the last ones the leader
    /// stored. A caller that must see an event checks the last sequence (as the projector's
    /// refold does). The gets may be answered by different replicas, so the history ends
    /// where the multi-last get's view ends, or sooner where a subject's read falls short of
    /// it ([`merge_subjects`]).
    pub async fn history(
        &self,
        org_id: Uuid,
        job_id: Uuid,
        max: usize,
        stall: Duration,
    ) -> Result<Vec<RawEvent>, LogReadError> {
        let stream = &self.stream.cached_info().config.name;
        let filter = events::job_subjects(org_id, job_id);
        let request = MultiLast {
            multi_last: vec![&filter],
            batch: SUBJECTS_PER_JOB,
        };
        let (lasts, _) = batch_get(&self.client, stream, &request, stall)
            .await
            .map_err(LogReadError::History)?;
        let reads = futures::future::try_join_all(
            lasts
                .iter()
                .map(|last| self.subject_events(stream, &last.subject, max, stall)),
        )
        .await?;
        let seen = lasts.iter().map(|last| last.seq);
        Ok(merge_subjects(seen.zip(reads), max))
    }

    /// The events under one subject, oldest first, at most `max` of them.
    async fn subject_events(
        &self,
        stream: &str,
        subject: &str,
        max: usize,
        stall: Duration,
    ) -> Result<Vec<RawEvent>, LogReadError> {
        let mut events = Vec::new();
        let mut from = 1;
        while events.len() < max {
            let request = NextBatch {
                seq: from,
                next_by_subj: subject,
                batch: (max - events.len()).min(HISTORY_BATCH),
            };
            let (entries, more) = batch_get(&self.client, stream, &request, stall)
                .await
                .map_err(LogReadError::History)?;
            let Some(last) = entries.last() else { break };
            from = last.seq + 1;
            events.extend(entries.into_iter().map(|entry| RawEvent {
                seq: entry.seq,
                subject: entry.subject,
                payload: entry.payload,
            }));
            if !more {
                break;
            }
        }
        Ok(events)
    }

    /// The job's status folded from its events in stream order (`None`: it has none), read as
    /// [`Self::history`] reads them: possibly without the newest events, never with a gap.
    /// Events that cannot be decoded are skipped (and logged), as the projector skips them.
    pub async fn fold(
        &self,
        org_id: Uuid,
        job_id: Uuid,
        stall: Duration,
    ) -> Result<Option<JobStatus>, LogReadError> {
        let mut status: Option<JobStatus> = None;
        for raw in self.history(org_id, job_id, usize::MAX, stall).await? {
            match JobEvent::decode(&raw.payload) {
                Ok(event) => {
                    status
                        .get_or_insert_with(|| JobStatus::empty(org_id, job_id, event.time))
                        .apply(&event, raw.seq);
                }
                Err(err) => {
                    tracing::error!(%err, seq = raw.seq, "undecodable event skipped in a refold");
                }
            }
        }
        Ok(status)
    }
}

/// A pass over the log from a sequence on, in stream order, up to its end when the pass began
/// (and whatever is appended meanwhile; see [`StreamRead`]). Undecodable events are skipped
/// and logged, as the projector skips them.
pub struct LogCursor {
    read: StreamRead,
}

impl LogCursor {
    /// The next event; `None` once the pass has caught up with the log.
    pub async fn next(&mut self) -> Result<Option<Stored<JobEvent>>, LogReadError> {
        while let Some(message) = self.read.next().await? {
            let seq = message.info().map_err(ReadError::Read)?.stream_sequence;
            match JobEvent::decode(&message.payload) {
                Ok(event) => return Ok(Some(Stored { seq, event })),
                Err(err) => tracing::error!(%err, seq, "undecodable event skipped in a log pass"),
            }
        }
        Ok(None)
    }
}

impl JobLog {
    /// Reads the log from sequence `from` on: every event, or those of one `kind`.
    pub async fn read_from(
        &self,
        from: u64,
        kind: Option<EventKind>,
        stall: Duration,
    ) -> Result<LogCursor, LogReadError> {
        let filter = match kind {
            Some(kind) => events::kind_subjects(kind),
            None => format!("{}.>", events::SUBJECT_ROOT),
        };
        let read = StreamRead::open(
            &self.stream,
            filter,
            consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from.max(1),
            },
            stall,
        )
        .await?;
        Ok(LogCursor { read })
    }

    /// The sequence of the log's last event (0 when it is empty).
    pub async fn last_seq(&self) -> Result<u64, LogReadError> {
        let info = self
            .stream
            .get_info()
            .await
            .map_err(|err| LogReadError::Info(Box::new(err)))?;
        Ok(info.state.last_sequence)
    }
}

/// `heimdex.tombstones.<org_id>.<target token>`
fn tombstone_subject(org_id: Uuid, target: &Target) -> String {
    format!("heimdex.tombstones.{org_id}.{}", target.token())
}

fn decode(seq: u64, payload: &[u8]) -> Result<Stored<JobEvent>, LogReadError> {
    JobEvent::decode(payload)
        .map(|event| Stored { seq, event })
        .map_err(|source| LogReadError::Decode { seq, source })
}

/// The event's publish message: its payload, its `Nats-Msg-Id`, and the current trace context.
fn message(event: &JobEvent) -> PublishMessage {
    let mut headers = HeaderMap::new();
    heimdex_telemetry::inject_context(&mut headers);
    PublishMessage::build()
        .payload(event.encode().into())
        .headers(headers)
        .message_id(&event.id)
}

/// A job's history from the reads of its subjects, each paired with the last sequence the
/// multi-last get saw under it: every event up to the newest of those, and no further (a
/// subject that appeared after that get was not read, so past it the history could have a
/// gap). A read that ends before its subject's last event there was answered by a replica
/// further behind, and may lack any event after its own last: the history ends there. What
/// remains has no gap; its first `max` events are returned.
fn merge_subjects(
    reads: impl IntoIterator<Item = (u64, Vec<RawEvent>)>,
    max: usize,
) -> Vec<RawEvent> {
    let reads: Vec<_> = reads.into_iter().collect();
    let mut end = reads.iter().map(|(seen, _)| *seen).max().unwrap_or(0);
    for (seen, read) in &reads {
        let reached = read.last().map_or(0, |event| event.seq);
        if reached < *seen {
            end = end.min(reached);
        }
    }
    let mut events: Vec<RawEvent> = reads
        .into_iter()
        .flat_map(|(_, read)| read)
        .filter(|event| event.seq <= end)
        .collect();
    events.sort_unstable_by_key(|event| event.seq);
    events.truncate(max);
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(subject: &str, seqs: &[u64]) -> Vec<RawEvent> {
        seqs.iter()
            .map(|&seq| RawEvent {
                seq,
                subject: subject.to_owned(),
                payload: bytes::Bytes::new(),
            })
            .collect()
    }

    fn seqs(events: &[RawEvent]) -> Vec<u64> {
        events.iter().map(|event| event.seq).collect()
    }

    #[test]
    fn subjects_interleave_in_stream_order() {
        let merged = merge_subjects(
            [
                (1, read("requested", &[1])),
                (9, read("started", &[3, 9])),
                (12, read("succeeded", &[12])),
            ],
            usize::MAX,
        );
        assert_eq!(seqs(&merged), [1, 3, 9, 12]);
        assert_eq!(merged[1].subject, "started");
    }

    #[test]
    fn a_read_from_a_replica_ahead_adds_nothing_past_the_multi_last_view() {
        // The multi-last get saw `started` end at 9 and no `failed`; a replica ahead answered
        // the `started` read with a later attempt too.
        let merged = merge_subjects(
            [
                (1, read("requested", &[1])),
                (9, read("started", &[3, 9, 20])),
            ],
            usize::MAX,
        );
        assert_eq!(seqs(&merged), [1, 3, 9]);
    }

    #[test]
    fn a_read_from_a_replica_behind_ends_the_history_where_it_ends() {
        // `started` at 9 is missing from its read: `succeeded` at 12 must not follow 3 as if
        // nothing came between.
        let merged = merge_subjects(
            [
                (1, read("requested", &[1])),
                (9, read("started", &[3])),
                (12, read("succeeded", &[12])),
            ],
            usize::MAX,
        );
        assert_eq!(seqs(&merged), [1, 3]);
        let empty = merge_subjects([(1, read("requested", &[])), (5, read("started", &[5]))], 9);
        assert!(empty.is_empty());
    }

    #[test]
    fn a_capped_history_is_the_first_events_of_all_subjects() {
        // Each subject's read stops at the cap, short of its last event: the first two events
        // overall are still all there.
        let merged = merge_subjects(
            [(1, read("requested", &[1])), (9, read("started", &[2, 3]))],
            2,
        );
        assert_eq!(seqs(&merged), [1, 2]);
        let merged = merge_subjects(
            [(7, read("started", &[2, 4])), (8, read("failed", &[3, 5]))],
            2,
        );
        assert_eq!(seqs(&merged), [2, 3]);
    }
}
