//! The broker's bound for mock ingest: what the JetStream operations of one job cost, with no
//! HTTP, no embedding and no vector store, measured in the same run as the service.
//!
//! It runs on a scratch nats-server (the same binary and fsync setting `serve` gives its own,
//! a store in a temporary directory), bootstrapped from the same `nats/` definitions, so its
//! streams, bucket and consumers are the service's. On it, per job:
//! - a producer appends the `requested` event as the API does (`JobLog::request`: its
//!   `Nats-Msg-Id`, expected subject sequence 0, waiting for the stored ack), C at a time;
//! - a lean worker takes the worker consumer's deliveries in batches as the worker does (up to
//!   its batch size, four batches in flight), reads the batch's tombstones before and after the
//!   (absent) store write, sends each job's `started` and, once stored, its `succeeded` (with
//!   the result a mock job records), and acks;
//! - the service's own projector folds the events into the status bucket and its listing, so
//!   its writes are batched exactly as in the service.
//!
//! Completion is timed as for the service: to the last SUCCEEDED seen in the bucket. The
//! status writes, listing appends and listing deletes per job are read from the streams'
//! sequences afterwards, not assumed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::Message;
use async_nats::jetstream::consumer::PullConsumer;
use futures::StreamExt;
use futures::future::join_all;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use heimdex_domain::events::{EventData, JobEvent, Requested, Started, Succeeded};
use heimdex_domain::ident::{AssetId, SegmentId};
use heimdex_domain::ids::{self, Target};
use heimdex_domain::jobs::{JobResult, JobSpec, MockParams};
use heimdex_event_store::jetstream::{LISTING_STREAM, STATUS_BUCKET};
use heimdex_event_store::nats_server::{self, NatsServer, NatsServerConfig};
use heimdex_event_store::{EventStore, JobLog};

use super::{await_completions, ms, percentile, watch_bucket};
use crate::settings::Settings;

/// What the bound run measured.
pub struct Bound {
    pub completed_per_s: f64,
    pub ops: Ops,
}

/// The operations every job costs whatever the batching: 3 appends to the job stream
/// (`requested`, `started`, `succeeded`), 4 deliveries (1 to the worker, 3 to the projector)
/// and their 4 acks.
const FIXED_PER_JOB: f64 = 11.0;

/// JetStream operations per job, as counted in the bound run.
pub struct Ops {
    /// Batches the lean worker handled (each reads its org's tombstones twice).
    pub worker_batches: u64,
    pub jobs: u64,
    /// Writes to the status bucket (creates and compare-and-set updates).
    pub status_writes: u64,
    pub listing_appends: u64,
    pub listing_deletes: u64,
}

impl Ops {
    /// One line: every operation, per job.
    pub fn per_job(&self) -> String {
        let per = |count: u64| count as f64 / self.jobs.max(1) as f64;
        let batch = self.jobs as f64 / self.worker_batches.max(1) as f64;
        format!(
            "3 appends to the job stream (1 awaited by the client, 2 by the worker), \
             4 deliveries and 4 acks (1 worker, 3 projector), {:.2} status writes, \
             {:.2} listing appends, {:.2} listing deletes, {:.3} tombstone reads \
             (2 a worker batch of {batch:.0} jobs on average) = {:.2} operations",
            per(self.status_writes),
            per(self.listing_appends),
            per(self.listing_deletes),
            per(2 * self.worker_batches),
            FIXED_PER_JOB
                + per(self.status_writes + self.listing_appends + self.listing_deletes)
                + per(2 * self.worker_batches),
        )
    }
}

/// Runs `n` jobs with `concurrency` appends in flight through the broker alone.
pub async fn measure(settings: &Settings, n: usize, concurrency: usize) -> anyhow::Result<Bound> {
    let store_dir = tempfile::tempdir()?;
    let embedded = &settings.embedded_nats;
    let bin = nats_server::find_binary(embedded.server_bin.as_deref())?;
    let mut config = NatsServerConfig::new(
        bin,
        store_dir.path().join("jetstream"),
        "127.0.0.1:0".parse()?,
    );
    config.sync_interval = Some(embedded.sync_interval);
    let mut server = NatsServer::start(config).await?;
    let stop = CancellationToken::new();
    let result = run(settings, server.url(), n, concurrency, &stop).await;
    stop.cancel();
    server.stop().await;
    result
}

async fn run(
    settings: &Settings,
    url: &str,
    n: usize,
    concurrency: usize,
    stop: &CancellationToken,
) -> anyhow::Result<Bound> {
    let nats = EventStore::connect(&settings.nats, url, "heimdex-bench-bound", stop).await?;
    let projector = crate::serve::build_projector(&nats, stop).await?;
    let projector = tokio::spawn(projector.run(stop.clone()));
    let consumer =
        heimdex_event_store::jetstream::ensure_consumer(&nats.stream, &nats.defs.worker).await?;
    let batch_size = settings.worker.concurrency.clamp(1, 1_000);
    let worker = LeanWorker {
        log: nats.log.clone(),
        collection: settings.store.collection.clone(),
        vector_size: settings.store.vector_size,
    };
    let worker = tokio::spawn(worker.run(consumer, batch_size, stop.clone()));

    let org = Uuid::new_v4();
    let (mut done_rx, watcher) = watch_bucket(url, org).await?;
    let started = Instant::now();
    let appends = futures::stream::iter(0..n)
        .map(|i| {
            let log = &nats.log;
            async move {
                let sent = Instant::now();
                let stored = log.request(&requested(org, i)).await;
                (sent.elapsed(), stored.is_ok())
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await;
    let accepted_in = started.elapsed();
    let accepted = appends.iter().filter(|(_, ok)| *ok).count();
    let mut latencies: Vec<Duration> = appends.iter().map(|(latency, _)| *latency).collect();
    latencies.sort();
    let (completed, last) =
        await_completions(&mut done_rx, accepted, started, Duration::from_secs(300)).await;
    watcher.abort();
    stop.cancel();
    let worker_batches = worker.await?;
    // The projector writes what it holds before it stops.
    projector.await?;
    let completed_per_s = completed as f64 / last.duration_since(started).as_secs_f64();
    println!(
        "  bound: {completed}/{n} SUCCEEDED in {:.2} s -> {completed_per_s:.0} jobs/s \
         (appended {:.0} jobs/s; append p50 {} p99 {})",
        last.duration_since(started).as_secs_f64(),
        accepted as f64 / accepted_in.as_secs_f64(),
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.99)),
    );
    anyhow::ensure!(
        completed == n,
        "the bound run completed {completed} of {n} jobs"
    );

    let writes = settled(&nats.js).await?;
    Ok(Bound {
        completed_per_s,
        ops: Ops {
            worker_batches,
            jobs: n as u64,
            status_writes: writes.status,
            listing_appends: writes.appended,
            listing_deletes: writes.appended - writes.live,
        },
    })
}

/// The projector's writes once its stale listing entries, deleted in the background, are
/// gone: two reads 50 ms apart that agree (or what is there after 5 s).
async fn settled(js: &async_nats::jetstream::Context) -> anyhow::Result<Writes> {
    let mut last = Writes::read(js).await?;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = Writes::read(js).await?;
        if now == last {
            break;
        }
        last = now;
    }
    Ok(last)
}

/// The `requested` event of the bound's job `i`, as the API appends it for `POST
/// /vectors/mock`.
fn requested(org_id: Uuid, i: usize) -> JobEvent {
    let spec = JobSpec::MockEmbedding(MockParams::new(
        AssetId::parse("bench-bound").expect("a valid asset id"),
        SegmentId::parse(format!("seg-{i}")).expect("a valid segment id"),
    ));
    let job_key = ids::job_key(org_id, spec.job_type(), &spec.params());
    let job_id = ids::job_id(&job_key);
    JobEvent::new(
        org_id,
        job_id,
        EventData::Requested(Requested {
            job_id,
            job_key,
            user_id: "bench".to_owned(),
            spec,
        }),
    )
}

/// The worker's JetStream operations with nothing in between.
#[derive(Clone)]
struct LeanWorker {
    log: JobLog,
    /// What a mock job's `succeeded` names, as the worker's would.
    collection: String,
    vector_size: usize,
}

impl LeanWorker {
    /// Consumes until `stop`, as the worker does: up to `batch_size` messages a batch, four
    /// batches in flight. Returns how many batches it handled.
    async fn run(self, consumer: PullConsumer, batch_size: usize, stop: CancellationToken) -> u64 {
        const BATCHES_IN_FLIGHT: usize = 4;
        let Ok(messages) = consumer
            .stream()
            .max_messages_per_batch(batch_size * BATCHES_IN_FLIGHT)
            .messages()
            .await
        else {
            return 0;
        };
        messages
            .take_until(stop.cancelled_owned())
            .ready_chunks(batch_size)
            .map(|batch| {
                let worker = self.clone();
                async move {
                    let batch: Vec<Message> = batch.into_iter().filter_map(Result::ok).collect();
                    work(&worker, &batch).await;
                }
            })
            .buffer_unordered(BATCHES_IN_FLIGHT)
            .count()
            .await as u64
    }
}

/// A delivered mock job: its message, event and delivery count, and the point it writes.
struct Delivered<'m> {
    message: &'m Message,
    event: JobEvent,
    attempt: u32,
    mock: MockParams,
    point: Uuid,
}

impl<'m> Delivered<'m> {
    fn of(message: &'m Message) -> Option<Self> {
        let attempt = u32::try_from(message.info().ok()?.delivered).ok()?;
        let event = JobEvent::decode(&message.payload).ok()?;
        let EventData::Requested(Requested {
            spec: JobSpec::MockEmbedding(mock),
            ..
        }) = &event.data
        else {
            return None;
        };
        let mock = mock.clone();
        let point = ids::point_id(
            event.org_id,
            mock.asset_id.as_str(),
            mock.segment_id.as_str(),
            &mock.model,
            &mock.model_ver,
        );
        Some(Self {
            message,
            event,
            attempt,
            mock,
            point,
        })
    }

    fn next(&self, data: EventData) -> JobEvent {
        JobEvent::new(self.event.org_id, self.event.job_id, data)
    }
}

/// One batch: `started` sent, the writes' tombstones read before and after the (absent) store
/// write, `started` stored, `succeeded` sent and stored, acks.
async fn work(worker: &LeanWorker, batch: &[Message]) {
    let log = &worker.log;
    let jobs: Vec<Delivered> = batch.iter().filter_map(Delivered::of).collect();
    let mut by_org: HashMap<Uuid, Vec<[Target; 2]>> = HashMap::new();
    for job in &jobs {
        by_org.entry(job.event.org_id).or_default().push([
            Target::Asset(job.mock.asset_id.to_string()),
            Target::Point(job.point),
        ]);
    }
    let tombstones = || {
        join_all(by_org.iter().map(|(org_id, targets)| async move {
            let targets: Vec<&[Target]> = targets.iter().map(|t| t.as_slice()).collect();
            log.last_delete_seqs(*org_id, &targets).await
        }))
    };
    let started = join_all(jobs.iter().map(|job| async move {
        let started = job.next(EventData::Started(Started {
            attempt: job.attempt,
            round: 0,
        }));
        log.send(&started).await
    }))
    .await;
    tombstones().await;
    tombstones().await;
    for pending in started.into_iter().flatten() {
        let _ = pending.stored().await;
    }
    let ended = join_all(jobs.iter().map(|job| async move {
        let succeeded = job.next(EventData::Succeeded(Succeeded {
            attempt: job.attempt,
            round: 0,
            result: JobResult {
                collection: worker.collection.clone(),
                point_ids: vec![job.point],
                vector_size: worker.vector_size,
                model: Some(job.mock.model.clone()),
                model_ver: Some(job.mock.model_ver.clone()),
                deleted: None,
                written: None,
                kept: None,
                superseded: false,
            },
        }));
        match log.send(&succeeded).await {
            Ok(pending) => pending.stored().await.is_ok(),
            Err(_) => false,
        }
    }))
    .await;
    for (job, stored) in jobs.iter().zip(ended) {
        if stored {
            let _ = job.message.ack().await;
        }
    }
}

/// What the projector has stored so far: stream sequences, which deletes and history limits
/// do not lower, and the listing's live entries.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Writes {
    /// Writes to the status bucket.
    pub status: u64,
    /// Entries appended to the job listing.
    pub appended: u64,
    /// Entries in the job listing now.
    pub live: u64,
}

impl Writes {
    pub async fn read(js: &async_nats::jetstream::Context) -> anyhow::Result<Self> {
        let state = |name: String| async move {
            anyhow::Ok(js.get_stream(name).await?.info().await?.state.clone())
        };
        let status = state(format!("KV_{STATUS_BUCKET}")).await?;
        let listing = state(LISTING_STREAM.to_owned()).await?;
        Ok(Self {
            status: status.last_sequence,
            appended: listing.last_sequence,
            live: listing.messages,
        })
    }

    /// What was written after `before`.
    pub fn since(&self, before: &Self) -> Self {
        Self {
            status: self.status - before.status,
            appended: self.appended - before.appended,
            live: self.live.saturating_sub(before.live),
        }
    }
}
