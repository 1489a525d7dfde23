//! A job's history and its refold are read by batched direct gets, not through a consumer:
//! nats-server caps a stream's consumers (1,000 on 2.15.1) and an ordered consumer outlives its
//! read by 30 s, so reading more jobs than that in half a minute (the projector refolds every
//! job that ends after a reconnect) failed with "maximum consumers limit reached" once a
//! consumer was opened for each. Reads here outnumber the cap, span more than one batch, and
//! skip another job's events interleaved with the job's own.

use std::time::Duration;

use heimdex_domain::events::{EventData, EventKind, Started};
use heimdex_domain::jobs::{JobSpec, MockParams, Status};
use heimdex_domain::{AssetId, SegmentId};
use heimdex_event_store::jetstream::JOBS_STREAM;
use heimdex_telemetry::ErrorChain;
use heimdex_tests::TestApp;
use uuid::Uuid;

use crate::common::{append, event_store, mock_succeeded, publish_requested};

/// More reads than nats-server 2.15.1 allows consumers on one stream.
const READS: usize = 1_200;
/// More events than one batched read carries.
const STARTS: u32 = 300;
const STALL: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_are_read_without_a_consumer_each() {
    let app = TestApp::spawn_without_worker(&[]).await;
    let events = event_store(&app, "history-test").await;
    let log = &events.log;
    let org = Uuid::new_v4();
    let mock = |asset: &str| {
        JobSpec::MockEmbedding(MockParams {
            asset_id: AssetId::parse(asset).unwrap(),
            segment_id: SegmentId::parse("s").unwrap(),
            model: heimdex_domain::jobs::MOCK_MODEL.into(),
            model_ver: heimdex_domain::jobs::MOCK_MODEL_VER.into(),
        })
    };
    let job = publish_requested(&events.js, org, "test", mock("a")).await;
    let other = publish_requested(&events.js, org, "test", mock("b")).await;
    for attempt in 1..=STARTS {
        for id in [job, other] {
            append(
                log,
                org,
                id,
                EventData::Started(Started { attempt, round: 0 }),
            )
            .await;
        }
    }
    append(log, org, job, mock_succeeded(STARTS)).await;

    let requested = log
        .last(org, job, EventKind::Requested)
        .await
        .unwrap()
        .unwrap();
    let history = log.history(org, job, usize::MAX, STALL).await.unwrap();
    assert_eq!(history.len(), 2 + STARTS as usize, "every event of the job");
    assert_eq!(history[0].seq, requested.seq, "oldest first");
    assert!(
        history.windows(2).all(|w| w[0].seq < w[1].seq),
        "stream order"
    );
    let prefix = format!("heimdex.jobs.{org}.{job}.");
    assert!(
        history.iter().all(|e| e.subject.starts_with(&prefix)),
        "the job's own events"
    );
    let capped = log.history(org, job, 3, STALL).await.unwrap();
    let seqs = |events: &[heimdex_event_store::log::RawEvent]| {
        events.iter().map(|e| e.seq).collect::<Vec<_>>()
    };
    assert_eq!(
        seqs(&capped),
        seqs(&history[..3]),
        "at most `max`, the oldest"
    );
    assert!(
        log.history(org, Uuid::new_v4(), usize::MAX, STALL)
            .await
            .unwrap()
            .is_empty(),
        "an unknown job has none"
    );

    let consumers = || async {
        let mut stream = events.js.get_stream(JOBS_STREAM).await.unwrap();
        stream.info().await.unwrap().state.consumer_count
    };
    let before = consumers().await;
    for read in 0..READS {
        let status = log
            .fold(org, job, STALL)
            .await
            .unwrap_or_else(|err| panic!("refold {read} failed: {}", ErrorChain(&err)))
            .expect("the job has events");
        assert_eq!(status.status, Status::Succeeded);
        assert_eq!(status.last_event_seq, history.last().unwrap().seq);
    }
    // Not more than before: the projector's start-up reads (the document backfill) opened an
    // ordered consumer of their own, which may expire meanwhile.
    let after = consumers().await;
    assert!(
        after <= before,
        "no consumer left behind by the reads: {before} before, {after} after"
    );
}
