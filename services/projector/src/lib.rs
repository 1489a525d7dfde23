//! The projector folds job events into the `HEIMDEX_JOB_STATUS` KV bucket, and the document
//! requests among them into the `HEIMDEX_DOCUMENTS` bucket (see
//! [`heimdex_event_store::documents`]). It is the buckets' only writer and writes with compare-and-set on the key's revision: on a conflict (another
//! projector instance, or a stale cache) it re-reads and re-applies. Events are applied only
//! when newer than the status's `last_event_seq`, and status never moves backwards (see
//! [`heimdex_domain::jobs::JobStatus::apply`]), so replays and redeliveries are harmless.
//!
//! A durable consumer does not deliver in order after a crash: events the projector had pulled
//! but not acknowledged come back only after the ack wait, while newer events of the same job
//! flow on. So an event older than the status's `last_event_seq` may never have been applied
//! (a `requested` overtaken by its `succeeded`, say). When one arrives, the job is refolded from
//! its events in the stream, in order, and the result replaces the status.
//!
//! That repairs the status, but only once the late event is back, up to the ack wait later, and
//! an end shown meanwhile may be the wrong one: the worker's `succeeded` held back while the
//! max-deliveries advisory's `failed`, stored after it, flows on would show the job FAILED for
//! half a minute, then SUCCEEDED (the first end in the stream wins). So while events may still
//! come back late ([`Late`]: after a start or a reconnect that finds events delivered and not
//! acknowledged, and after this projector NAKs a batch), a job that ends is refolded from the
//! stream before its end is written, unless its `requested` event is newer than every event
//! that may be late.
//!
//! Messages are handled in batches: the events of one job within a batch are folded together
//! and written once, and the revisions of jobs still in progress are cached, so the common case
//! is one CAS write per job per batch and no read.
//!
//! A job in progress is held back: events that leave it QUEUED or RUNNING wait (unacknowledged)
//! for up to [`HOLD`], so that a job that ends within it is written once, with its end, instead
//! of once per event. Each status write also moves the job's listing entry, so a job that goes
//! QUEUED → RUNNING → SUCCEEDED between two writes costs one bucket write and one listing
//! entry instead of three writes, three entries and two deletes. An end (`succeeded`,
//! `failed`) is written at once, with whatever of its job is held, and so is a `retried`
//! event, which takes a job out of FAILED (held, the bucket would show it ended). The price is
//! that a job's QUEUED or RUNNING status reaches the bucket and the listing up to [`HOLD`]
//! later; `GET /jobs/{id}` answers a job the bucket does not have yet from its `requested`
//! event.

pub mod files;
pub mod rebuild;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{AckKind, Message};
use futures::StreamExt;
use futures::future::join_all;

use heimdex_domain::documents::DocumentChange;
use heimdex_domain::events::{self, EventData, EventKind, JobEvent};
use heimdex_domain::jobs::{Applied, JobStatus};
use heimdex_event_store::batching::{Batching, gather};
use heimdex_event_store::documents::DocumentError;
use heimdex_event_store::log::LogReadError;
use heimdex_event_store::status::{Listed, StatusError, WriteError, status_key};
use heimdex_event_store::{DocumentStore, JobLog, StatusStore};
use heimdex_telemetry::ErrorChain;
use tokio_util::sync::CancellationToken;

/// How long events that leave their job in progress wait for its end before they are written
/// (see the module documentation).
pub const HOLD: Duration = Duration::from_millis(200);
/// The cache of in-progress jobs is cleared past this many entries.
const CACHE_LIMIT: usize = 200_000;
/// CAS attempts per key before the batch is retried later.
const CAS_ATTEMPTS: usize = 16;
/// How long a refold waits for the log's next reply before giving up (and retrying the batch
/// later).
const REFOLD_STALL: Duration = Duration::from_secs(5);
/// Reads of a refold that end before an event already applied (a replica behind the leader)
/// are tried this many times, pausing this long times the attempt's number after each.
const REFOLD_ATTEMPTS: u32 = 4;
const REFOLD_BEHIND_PAUSE: Duration = Duration::from_millis(25);

#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error("status store unavailable")]
    Status(#[from] StatusError),
    #[error("job log unavailable")]
    Log(#[from] LogReadError),
    #[error("the log read for job {job_id}'s refold ends at sequence {last}, before {seen}")]
    Behind {
        job_id: uuid::Uuid,
        seen: u64,
        last: u64,
    },
    #[error("document store unavailable")]
    Documents(#[from] DocumentError),
    #[error("too many revision conflicts on {0}")]
    Contention(String),
}

#[derive(Clone)]
pub struct ProjectorDeps {
    pub statuses: StatusStore,
    pub consumer: PullConsumer,
    /// The job log, read when a job must be refolded from its events.
    pub log: JobLog,
    pub documents: DocumentStore,
}

pub struct Projector {
    deps: ProjectorDeps,
    /// key → the written state of jobs not yet terminal.
    cache: HashMap<String, Written>,
    /// Events of jobs in progress, not yet written (see [`HOLD`]).
    held: Held<Message>,
    batch_size: usize,
    batching: Batching,
    /// Which events may still arrive out of order (see the module documentation).
    late: Late,
}

/// Events at or below a stream sequence that were delivered and not acknowledged, so they may
/// come back after newer ones. Opened from the consumer's state (what an earlier instance, or
/// this one before a reconnect, left unacknowledged) and by this projector's own NAKs; closed
/// once the consumer's ack floor passes the sequence.
#[derive(Debug, Default)]
struct Late {
    /// Events at or below this sequence may still arrive; `None`: none can.
    below: Option<u64>,
    /// The consumer's state is read again (to open or close the window) when this is set.
    check: bool,
    /// When the consumer's state was last read while the window was open.
    checked: Option<Instant>,
}

/// What [`Late`] reads of the consumer's state: stream sequences.
#[derive(Clone, Copy, Debug)]
struct Consumer {
    /// Every event at or below it is acknowledged.
    ack_floor: u64,
    /// The last event delivered.
    delivered: u64,
    /// Events delivered and not acknowledged.
    unacknowledged: usize,
}

impl From<&async_nats::jetstream::consumer::Info> for Consumer {
    fn from(info: &async_nats::jetstream::consumer::Info) -> Self {
        Self {
            ack_floor: info.ack_floor.stream_sequence,
            delivered: info.delivered.stream_sequence,
            unacknowledged: info.num_ack_pending,
        }
    }
}

/// How often the consumer's ack floor is read while events may still arrive late.
const LATE_CHECK: Duration = Duration::from_secs(1);

impl Late {
    fn extend(&mut self, seq: u64) {
        self.below = Some(self.below.map_or(seq, |below| below.max(seq)));
    }

    /// Asks for the consumer's state to be read before the next batch.
    fn recheck(&mut self) {
        self.check = true;
        self.checked = None;
    }

    /// Whether the consumer's state is due to be read: when asked to, or every [`LATE_CHECK`]
    /// while the window is open (and, after a failed read, no sooner than that).
    fn due(&self, now: Instant) -> bool {
        (self.check || self.below.is_some())
            && self
                .checked
                .is_none_or(|checked| now.duration_since(checked) >= LATE_CHECK)
    }

    /// Takes in the consumer's state: an ack floor at or past the window's edge closes it; when
    /// asked to ([`Late::recheck`]), events delivered and not acknowledged open (or widen) it.
    /// (A periodic read does not: this projector's own events in flight would keep it open.)
    fn observe(&mut self, consumer: Consumer, now: Instant) {
        let asked = std::mem::take(&mut self.check);
        self.checked = Some(now);
        if self.below.is_some_and(|below| consumer.ack_floor >= below) {
            tracing::info!(
                below = self.below,
                "no event can arrive out of order any more; ends are written as they come"
            );
            self.below = None;
        }
        if asked && consumer.unacknowledged > 0 && consumer.delivered > consumer.ack_floor {
            let opened = self.below.is_none();
            self.extend(consumer.delivered);
            if opened {
                tracing::info!(
                    below = self.below,
                    unacknowledged = consumer.unacknowledged,
                    "events delivered before may arrive out of order; ends are checked against the stream"
                );
            }
        }
    }
}

impl Projector {
    pub fn new(deps: ProjectorDeps) -> Self {
        Self {
            deps,
            cache: HashMap::new(),
            held: Held::default(),
            batch_size: 1_000,
            // Busy (a chunk of 64+ events): wait up to 5 ms so a job's events share one write.
            batching: Batching {
                max: 1_000,
                busy: 64,
                linger: Duration::from_millis(5),
            },
            late: Late::default(),
        }
    }

    /// Projects until `shutdown` is cancelled; the batch being written finishes first.
    pub async fn run(mut self, shutdown: CancellationToken) {
        self.backfill_listing().await;
        self.backfill_documents().await;
        tracing::info!("projector consuming");
        loop {
            // What an earlier instance (or this one, before NATS went away) was delivered and
            // did not acknowledge comes back only after the ack wait: read before pulling, so
            // that only those count.
            self.late.recheck();
            self.check_late().await;
            let Some(messages) = heimdex_event_store::jetstream::pull_stream(
                &self.deps.consumer,
                self.batch_size,
                &shutdown,
            )
            .await
            else {
                break;
            };
            let mut batches = messages.ready_chunks(self.batch_size);
            loop {
                let due = self.held.due();
                // Only the first chunk is raced against the clocks: taking it is cancel-safe,
                // a batch being gathered is not.
                let first = tokio::select! {
                    () = shutdown.cancelled() => break,
                    first = batches.next() => first,
                    () = sleep_until(due), if due.is_some() => Some(Vec::new()),
                };
                let Some(first) = first else { break };
                let batch = gather(first, &mut batches, self.batching).await;
                let mut messages = Vec::with_capacity(batch.len());
                for message in batch {
                    match message {
                        Ok(message) => messages.push(message),
                        Err(err) => {
                            // A missed heartbeat or a reconnect: acknowledgements may have
                            // been lost with the connection.
                            tracing::warn!(%err, "projector stream error");
                            self.late.recheck();
                        }
                    }
                }
                self.check_late().await;
                let ready = self.held.admit(messages, Instant::now());
                self.handle_batch(ready).await;
            }
        }
        // What is held is written before the projector stops.
        let held = self.held.release_all();
        self.handle_batch(held).await;
        tracing::info!("projector stopped");
    }

    /// Reads the consumer's state when [`Late`] needs it. A failed read (NATS is away, so no
    /// batch arrives either) is logged and tried again [`LATE_CHECK`] later; meanwhile the
    /// window stays as it was.
    async fn check_late(&mut self) {
        let now = Instant::now();
        if !self.late.due(now) {
            return;
        }
        match self.deps.consumer.get_info().await {
            Ok(info) => self.late.observe(Consumer::from(&info), now),
            Err(err) => {
                tracing::warn!(%err, "cannot read the projector consumer's state; will retry");
                self.late.checked = Some(now);
            }
        }
    }

    /// A bucket made before the listing existed (or before its current shape) gets its
    /// entries once (the listing is empty and the bucket is not). A failure is logged:
    /// listings then miss jobs until their next change, and the next start tries again.
    async fn backfill_listing(&self) {
        match self.deps.statuses.listing_missing().await {
            Ok(false) => {}
            Ok(true) => match self.deps.statuses.backfill_listing(REFOLD_STALL).await {
                Ok(written) => tracing::info!(written, "job listing built from the status bucket"),
                Err(err) => tracing::error!(error = %err, "cannot build the job listing"),
            },
            Err(err) => {
                tracing::warn!(error = %err, "cannot tell whether the job listing is complete")
            }
        }
    }

    /// A document bucket made before documents were projected gets them from the stream's
    /// history, once. A failure is logged: listings then miss documents until their next
    /// change, and the next start tries again.
    async fn backfill_documents(&self) {
        match self.deps.documents.backfill().await {
            Ok(None) => {}
            Ok(Some(applied)) => {
                tracing::info!(applied, "document projection built from the job stream")
            }
            Err(err) => {
                tracing::error!(error = %ErrorChain(&err), "cannot build the document projection")
            }
        }
    }

    /// Applies a batch and acknowledges it; on failure the batch is NAKed and comes back.
    ///
    /// One `projector.apply` span serves the whole batch, many jobs of many traces: it has no
    /// parent, and a link to each event's trace instead (from the `traceparent` its producer
    /// put in the headers), so a job's trace leads to the write that folded it.
    pub async fn handle_batch(&mut self, messages: Vec<Message>) {
        use tracing::Instrument as _;
        if messages.is_empty() {
            return;
        }
        let span = tracing::info_span!(parent: None, "projector.apply", events = messages.len());
        if !span.is_disabled() {
            for message in &messages {
                heimdex_telemetry::add_link_from_headers(&span, message.headers.as_ref());
            }
        }
        let applied = self.apply_batch(&messages).instrument(span).await;
        let disposition = match applied {
            Ok(()) => AckKind::Ack,
            Err(err) => {
                tracing::warn!(error = %ErrorChain(&err), events = messages.len(), "projection failed; will retry");
                self.cache.clear();
                // These come back after newer events.
                if let Some(seq) = messages
                    .iter()
                    .filter_map(|m| m.info().ok().map(|info| info.stream_sequence))
                    .max()
                {
                    self.late.extend(seq);
                }
                AckKind::Nak(Some(Duration::from_millis(500)))
            }
        };
        for message in &messages {
            if let Err(err) = message.ack_with(disposition).await {
                tracing::warn!(%err, "cannot acknowledge event");
            }
        }
    }

    /// Folds a batch of events into the bucket: one fold and (at most) one write per job.
    pub async fn apply_batch(&mut self, messages: &[Message]) -> Result<(), ProjectError> {
        let mut order: Vec<String> = Vec::new();
        let mut grouped: HashMap<String, Vec<(u64, JobEvent)>> = HashMap::new();
        // The latest change of each document in the batch: the earlier ones are overtaken.
        let mut changes: HashMap<String, DocumentChange> = HashMap::new();
        for message in messages {
            let Some((seq, event)) = decode(message) else {
                continue;
            };
            if let Some(change) = DocumentChange::of(&event, seq) {
                let key = change.key();
                if changes.get(&key).is_none_or(|kept| kept.seq < change.seq) {
                    changes.insert(key, change);
                }
            }
            let key = status_key(event.org_id, event.job_id);
            grouped
                .entry(key.clone())
                .or_insert_with(|| {
                    order.push(key);
                    Vec::new()
                })
                .push((seq, event));
        }

        let (statuses, log, late) = (&self.deps.statuses, &self.deps.log, self.late.below);
        let jobs: Vec<_> = order
            .into_iter()
            .map(|key| {
                let cached = self.cache.remove(&key);
                let events = grouped.remove(&key).unwrap_or_default();
                (key, cached, events)
            })
            .collect();
        // Documents first: a job that reads SUCCEEDED has its document listed. (Held jobs
        // bring their `requested` event, which carries the document, in the same batch as
        // their end.)
        let documents = &self.deps.documents;
        let documents = join_all(changes.into_values().map(|change| async move {
            match documents.apply(&change, CAS_ATTEMPTS).await {
                Ok(Some(_)) => Ok(()),
                Ok(None) => Err(ProjectError::Contention(change.key())),
                Err(err) => Err(ProjectError::from(err)),
            }
        }))
        .await;
        if let Some(err) = documents.into_iter().find_map(Result::err) {
            return Err(err);
        }
        let results = join_all(jobs.into_iter().map(|(key, cached, events)| async move {
            let result = project(statuses, log, late, &key, cached, &events).await;
            (key, result)
        }))
        .await;

        if self.cache.len() > CACHE_LIMIT {
            self.cache.clear();
        }
        let mut first_error = None;
        for (key, result) in results {
            match result {
                Ok(Some(written)) if !written.status.status.is_terminal() => {
                    self.cache.insert(key, written);
                }
                Ok(_) => {}
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// The events of jobs in progress that wait for their job's end (see [`HOLD`]), by job.
struct Held<M> {
    jobs: HashMap<(uuid::Uuid, uuid::Uuid), HeldJob<M>>,
}

impl<M> Default for Held<M> {
    fn default() -> Self {
        Self {
            jobs: HashMap::new(),
        }
    }
}

struct HeldJob<M> {
    /// When its first held event arrived.
    since: Instant,
    messages: Vec<M>,
}

/// What [`Held`] reads of a message: its subject, which names the job and the event.
trait Subject {
    fn subject(&self) -> &str;
}

impl Subject for Message {
    fn subject(&self) -> &str {
        self.subject.as_str()
    }
}

impl<M: Subject> Held<M> {
    /// Takes `arrived` in and returns, in arrival order, the messages to write now: every
    /// event of a job that has ended or been retried (that event just arrived) or has been
    /// held for [`HOLD`], and anything that names no job (the fold logs and skips it).
    fn admit(&mut self, arrived: Vec<M>, now: Instant) -> Vec<M> {
        let mut ready = Vec::new();
        for message in arrived {
            let Some(parts) = events::parse_subject(message.subject()) else {
                ready.push(message);
                continue;
            };
            let key = (parts.org_id, parts.job_id);
            // An end, or a retry (which takes a job out of FAILED: until it is written, the
            // bucket would still show the job ended), is written at once.
            let now_visible = matches!(
                parts.kind,
                Some(EventKind::Succeeded | EventKind::Failed | EventKind::Retried)
            );
            let mut job = self.jobs.remove(&key).unwrap_or_else(|| HeldJob {
                since: now,
                messages: Vec::new(),
            });
            job.messages.push(message);
            if now_visible {
                ready.append(&mut job.messages);
            } else {
                self.jobs.insert(key, job);
            }
        }
        self.jobs.retain(|_, job| {
            let due = now.duration_since(job.since) >= HOLD;
            if due {
                ready.append(&mut job.messages);
            }
            !due
        });
        ready
    }

    /// When the longest-held job is due.
    fn due(&self) -> Option<Instant> {
        self.jobs.values().map(|job| job.since + HOLD).min()
    }

    fn release_all(&mut self) -> Vec<M> {
        self.jobs
            .drain()
            .flat_map(|(_, job)| job.messages)
            .collect()
    }
}

/// Sleeps until `at` (`None`: never; the caller does not poll it then).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The stream sequence and decoded event of a message; `None` (logged) if unusable, so one
/// malformed event cannot stall the projection.
fn decode(message: &Message) -> Option<(u64, JobEvent)> {
    let seq = match message.info() {
        Ok(info) => info.stream_sequence,
        Err(err) => {
            tracing::error!(%err, subject = %message.subject, "event without JetStream metadata; skipped");
            return None;
        }
    };
    match JobEvent::decode(&message.payload) {
        Ok(event) => {
            let from_subject = events::parse_subject(&message.subject);
            if from_subject.is_some_and(|p| p.org_id != event.org_id || p.job_id != event.job_id) {
                tracing::error!(subject = %message.subject, seq, "event subject and body disagree; skipped");
                return None;
            }
            Some((seq, event))
        }
        Err(err) => {
            tracing::error!(%err, subject = %message.subject, seq, "undecodable event; skipped");
            None
        }
    }
}

/// A job's status as last written: its bucket revision and where it is listed.
#[derive(Clone, Debug)]
struct Written {
    revision: u64,
    status: JobStatus,
    listed: Option<Listed>,
}

/// Which round a status is in and whether that round has ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ending {
    round: u32,
    ended: bool,
}

impl Ending {
    fn of(status: &JobStatus) -> Self {
        Self {
            round: status.retries,
            ended: status.status.is_terminal(),
        }
    }

    /// Whether a round ended between `before` and `self`: an end where there was none, or the
    /// end of a later round (a retried job's batch can take it from FAILED to the end of its
    /// next round).
    fn ends_after(self, before: Self) -> bool {
        self.ended && self != before
    }
}

/// The job folded from the log, up to at least `seen` (the newest of its events applied):
/// every event below it, late ones included. The log may answer from a replica behind the
/// leader, with the job's first events only ([`JobLog::fold`]); such a read is tried again a
/// few times, then the batch fails and comes back.
async fn refold(
    log: &JobLog,
    org_id: uuid::Uuid,
    job_id: uuid::Uuid,
    seen: u64,
) -> Result<JobStatus, ProjectError> {
    let mut last = 0;
    for attempt in 1..=REFOLD_ATTEMPTS {
        match log.fold(org_id, job_id, REFOLD_STALL).await? {
            Some(status) if status.last_event_seq >= seen => return Ok(status),
            read => last = read.map_or(0, |status| status.last_event_seq),
        }
        tokio::time::sleep(REFOLD_BEHIND_PAUSE * attempt).await;
    }
    Err(ProjectError::Behind { job_id, seen, last })
}

/// Folds `events` into the job's status and writes it with compare-and-set. Returns what is
/// written (`None` if nothing changed and nothing was read).
///
/// The job is refolded from the stream when an event older than its status arrives, and when
/// it ends while events at or below `late` may still arrive (unless its `requested` event,
/// in `events`, is newer than those): see the module documentation.
async fn project(
    statuses: &StatusStore,
    log: &JobLog,
    late: Option<u64>,
    key: &str,
    mut cached: Option<Written>,
    events: &[(u64, JobEvent)],
) -> Result<Option<Written>, ProjectError> {
    let Some((_, first)) = events.first() else {
        return Ok(cached);
    };
    // A job's `requested` event is its first: the bucket has the job only if this event was
    // delivered before (a redelivery), so its create is tried without a read, and reads after a
    // conflict.
    let mut new_job = matches!(first.data, EventData::Requested(_));
    let born_after_late = late.is_none_or(|below| new_job && events[0].0 > below);
    for _ in 0..CAS_ATTEMPTS {
        let current = match cached.take() {
            Some(written) => Some((written.revision, Some(written.status), written.listed)),
            None if std::mem::take(&mut new_job) => None,
            None => statuses
                .entry(first.org_id, first.job_id)
                .await?
                .map(|entry| (entry.revision, entry.status, entry.listed)),
        };
        let empty = || JobStatus::empty(first.org_id, first.job_id, first.time);
        let (revision, mut status, listed) = match current {
            Some((revision, status, listed)) => {
                (Some(revision), status.unwrap_or_else(empty), listed)
            }
            None => (None, empty(), None),
        };
        let mut changed = false;
        let mut out_of_order = false;
        let before = Ending::of(&status);
        for (seq, event) in events {
            out_of_order |= *seq < status.last_event_seq;
            changed |= status.apply(event, *seq) == Applied::Changed;
        }
        let ends = Ending::of(&status).ends_after(before);
        if out_of_order || (ends && !born_after_late) {
            let refolded = refold(log, first.org_id, first.job_id, status.last_event_seq).await?;
            changed |= refolded != status;
            status = refolded;
        }
        if let Some(revision) = revision.filter(|_| !changed) {
            return Ok(Some(Written {
                revision,
                status,
                listed,
            }));
        }
        match statuses.write(&status, revision, listed).await {
            Ok((revision, listed)) => {
                return Ok(Some(Written {
                    revision,
                    status,
                    listed: Some(listed),
                }));
            }
            Err(WriteError::Conflict) => continue,
            Err(WriteError::Store(err)) => return Err(err.into()),
        }
    }
    Err(ProjectError::Contention(key.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Event(String);

    impl Subject for Event {
        fn subject(&self) -> &str {
            &self.0
        }
    }

    fn event(job: u128, kind: EventKind) -> Event {
        let org = uuid::Uuid::from_u128(1);
        Event(events::subject(org, uuid::Uuid::from_u128(job), kind))
    }

    fn subjects(events: &[Event]) -> Vec<&str> {
        events.iter().map(|e| e.0.as_str()).collect()
    }

    #[test]
    fn a_round_ends_when_its_end_is_new_or_a_later_rounds() {
        let ending = |round, ended| Ending { round, ended };
        assert!(ending(0, true).ends_after(ending(0, false)));
        assert!(
            !ending(0, true).ends_after(ending(0, true)),
            "already ended"
        );
        assert!(
            !ending(1, false).ends_after(ending(0, true)),
            "retried, not ended"
        );
        assert!(
            ending(1, true).ends_after(ending(0, true)),
            "FAILED, retried and ended in one batch"
        );
    }

    #[test]
    fn late_events_are_expected_from_what_was_left_unacknowledged_until_the_ack_floor_passes() {
        let t0 = Instant::now();
        let consumer = |ack_floor, delivered, unacknowledged| Consumer {
            ack_floor,
            delivered,
            unacknowledged,
        };
        let mut late = Late::default();
        assert!(!late.due(t0), "nothing to read until asked");
        // A start finds events up to 15 delivered and three of them unacknowledged.
        late.recheck();
        assert!(late.due(t0));
        late.observe(consumer(10, 15, 3), t0);
        assert_eq!(late.below, Some(15));
        // While open, the state is read every LATE_CHECK, and events in flight then (this
        // projector's own) do not widen the window.
        assert!(!late.due(t0 + LATE_CHECK / 2));
        assert!(late.due(t0 + LATE_CHECK));
        late.observe(consumer(14, 40, 20), t0 + LATE_CHECK);
        assert_eq!(late.below, Some(15));
        // Once everything at or below 15 is acknowledged, nothing can arrive late.
        late.observe(consumer(15, 60, 30), t0 + 2 * LATE_CHECK);
        assert_eq!(late.below, None);
        assert!(!late.due(t0 + 10 * LATE_CHECK));
        // A NAKed batch opens it again, up to its newest event; a narrower one does not shrink it.
        late.extend(70);
        late.extend(65);
        assert_eq!(late.below, Some(70));
        // A start or reconnect with nothing unacknowledged opens nothing.
        let mut late = Late::default();
        late.recheck();
        late.observe(consumer(80, 80, 0), t0);
        assert_eq!(late.below, None);
    }

    #[test]
    fn a_job_in_progress_waits_for_its_end_or_the_hold_and_nothing_else_waits() {
        let mut held = Held::default();
        let t0 = Instant::now();
        // Job 1 is requested and started, job 2 requested: nothing is written yet.
        let ready = held.admit(
            vec![
                event(1, EventKind::Requested),
                event(2, EventKind::Requested),
                event(1, EventKind::Started),
            ],
            t0,
        );
        assert!(ready.is_empty());
        assert_eq!(held.due(), Some(t0 + HOLD));
        // Job 1 ends: its three events go together, in order; job 2 still waits. A subject
        // that names no job is not held.
        let t1 = t0 + HOLD / 2;
        let ready = held.admit(
            vec![
                Event("heimdex.jobs.not-a-job".to_owned()),
                event(1, EventKind::Succeeded),
            ],
            t1,
        );
        let job1 = [
            event(1, EventKind::Requested),
            event(1, EventKind::Started),
            event(1, EventKind::Succeeded),
        ];
        let mut expected = vec!["heimdex.jobs.not-a-job"];
        expected.extend(subjects(&job1));
        assert_eq!(subjects(&ready), expected);
        // Job 2 is written once held for HOLD, with what arrived for it meanwhile.
        assert!(
            held.admit(vec![event(2, EventKind::Started)], t1)
                .is_empty()
        );
        let ready = held.admit(Vec::new(), t0 + HOLD);
        let job2 = [event(2, EventKind::Requested), event(2, EventKind::Started)];
        assert_eq!(subjects(&ready), subjects(&job2));
        assert_eq!(held.due(), None);
        // A failure ends a job too; a retry is written at once (the bucket shows the job
        // FAILED until then); stopping writes whatever is held.
        assert!(
            held.admit(vec![event(3, EventKind::Started)], t1)
                .is_empty()
        );
        let ready = held.admit(vec![event(3, EventKind::Failed)], t1);
        assert_eq!(ready.len(), 2);
        assert_eq!(held.admit(vec![event(3, EventKind::Retried)], t1).len(), 1);
        assert!(
            held.admit(vec![event(4, EventKind::Requested)], t1)
                .is_empty()
        );
        assert_eq!(held.release_all().len(), 1);
        assert_eq!(held.due(), None);
    }
}
