//! The job log refuses the worker's events: jobs are queued, then the operator caps the job
//! stream at the messages it holds (`max_msgs`; the stream discards new, so every later publish
//! is refused as full), and a worker with a 1 s ack wait starts on them. Each job's work is
//! done, but neither its `started` nor its end can be stored. The worker must hold the jobs,
//! with progress acks, and send the events again once the cap is lifted: every job SUCCEEDED
//! on its first delivery. Abandoned instead, each would be delivered again every second, run
//! out of its four deliveries while the log stayed full, and end FAILED (`max_deliveries`)
//! with its point written.

use std::time::{Duration, Instant};

use heimdex_event_store::jetstream::JOBS_STREAM;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_job_log_holds_jobs_without_spending_deliveries() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let ack_wait = Duration::from_secs(1);
    let mut split = Split::start(
        dir.path(),
        &[("NATS_WORKER_ACK_WAIT_MS", &ack_wait.as_millis().to_string())],
    )
    .await;
    split.worker.stop_cleanly().await;

    let jobs = scale(40, 200);
    let accepted = submit_mock_jobs(&split.client, "capped", jobs, 8, 1_000.0).await;
    assert_eq!(accepted, jobs);
    wait_consumer_drained(&split.js, "projector", Duration::from_secs(60)).await;

    // The operator caps the stream at what it holds: nothing more fits.
    let held = split
        .js
        .get_stream(JOBS_STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    set_max_messages(&split.js, i64::try_from(held).unwrap()).await;
    split.worker.start();

    // Four ack waits (the consumer's max_deliver) and then some: long enough for every job
    // to have run out of deliveries, had the worker abandoned it.
    let hold = ack_wait * 4 + Duration::from_secs(4);
    tokio::time::sleep(hold).await;
    let refused = split
        .client
        .http
        .post(format!("{}/vectors/mock", split.client.bases[0]))
        .bearer_auth(&split.client.token)
        .json(&serde_json::json!({"asset_id": "capped", "segment_id": "while-full"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.status().as_u16(),
        507,
        "a full log refuses new jobs"
    );
    let statuses = statuses(&split.js, split.ledger.org).await.unwrap();
    let ended = statuses
        .values()
        .filter(|status| status.status.is_terminal())
        .count();
    assert_eq!(ended, 0, "no job can end while the log is full");

    set_max_messages(&split.js, -1).await;
    let fault_over = Instant::now();
    let mut outcome = split.finish("job log full", fault_over).await;
    outcome.note(format!(
        "{jobs} jobs held {hold:?} by a capped job stream, ack wait {ack_wait:?}"
    ));
    let redelivered = outcome.redelivered();
    outcome.report_and_assert();
    assert_eq!(redelivered, 0, "a held job keeps its one delivery");
}

async fn set_max_messages(js: &async_nats::jetstream::Context, max_messages: i64) {
    let mut stream = js.get_stream(JOBS_STREAM).await.unwrap();
    let mut config = stream.info().await.unwrap().config.clone();
    config.max_messages = max_messages;
    js.update_stream(config).await.unwrap();
}
