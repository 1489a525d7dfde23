//! A pass over the log (`JobLog::read_from`, the read a rebuild makes while it writes the
//! store) reads through an ordered consumer, which nats-server deletes once it has had no pull
//! for 30 s (the client's fixed inactivity threshold). A reader that stops for longer, behind
//! a store that stalls, must still get every event after the pause, in order: the client
//! recreates the consumer from the last sequence it delivered.

use std::collections::HashSet;
use std::time::Duration;

use futures::TryStreamExt;
use heimdex_domain::events::{EventData, JobEvent, Started};
use heimdex_event_store::jetstream::JOBS_STREAM;
use heimdex_event_store::log::Stored;
use heimdex_tests::TestApp;
use uuid::Uuid;

use crate::common::append;

/// Several of the client's pulls (200 messages each), so most of the pass comes after the pause.
const EVENTS: u32 = 2_000;
/// Longer than the ordered consumer's inactivity threshold (30 s).
const PAUSE: Duration = Duration::from_secs(40);
const STALL: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_pass_survives_a_reader_pause_longer_than_its_consumer_lives() {
    let app = TestApp::spawn_without_worker(&[]).await;
    let events = crate::common::event_store(&app, "log-pass-test").await;
    let (org, job) = (Uuid::new_v4(), Uuid::new_v4());
    let first = events.log.last_seq().await.unwrap() + 1;
    for attempt in 1..=EVENTS {
        append(
            &events.log,
            org,
            job,
            EventData::Started(Started { attempt, round: 0 }),
        )
        .await;
    }
    let stream = events.js.get_stream(JOBS_STREAM).await.unwrap();
    let consumers = |stream: async_nats::jetstream::stream::Stream| async move {
        stream
            .consumer_names()
            .try_collect::<HashSet<String>>()
            .await
            .unwrap()
    };
    let before = consumers(stream.clone()).await;

    let mut pass = events.log.read_from(first, None, STALL).await.unwrap();
    let mut attempts = Vec::new();
    for _ in 0..10 {
        let event = pass
            .next()
            .await
            .unwrap()
            .expect("an event before the pause");
        attempts.push(attempt_of(event));
    }
    let opened: HashSet<String> = &consumers(stream.clone()).await - &before;
    assert_eq!(opened.len(), 1, "the pass reads through one consumer");

    tokio::time::sleep(PAUSE).await;
    let after_pause = consumers(stream.clone()).await;
    assert!(
        opened.is_disjoint(&after_pause),
        "the server deleted the idle consumer, so what follows tests its recreation"
    );

    while let Some(event) = pass.next().await.unwrap() {
        attempts.push(attempt_of(event));
    }
    assert_eq!(
        attempts,
        (1..=EVENTS).collect::<Vec<_>>(),
        "every event after the pause, once each, in stream order"
    );
}

/// The attempt of one of the test's `started` events.
fn attempt_of(stored: Stored<JobEvent>) -> u32 {
    let EventData::Started(Started { attempt, .. }) = stored.event.data else {
        panic!("only the test's events: {:?}", stored.event.data);
    };
    attempt
}
