//! The max-deliveries advisory listener: a job whose worker died on every delivery is recorded
//! FAILED (code `max_deliveries`) instead of staying QUEUED/RUNNING forever. No worker runs here,
//! so the job is never processed; the advisory is published in JetStream's documented shape
//! (`io.nats.jetstream.advisory.v1.max_deliver`) for the job's `requested` message, while no
//! listener is running (all workers away, or reconnecting): it must wait in the stream for the
//! listener that starts later.

use std::time::Duration;

use heimdex::serve::{self, Roles};
use heimdex_tests::{TestNats, settings, wait_for_job};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::common::{append, job_id_of, mock_succeeded};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_deliveries_advisory_marks_the_job_failed() {
    let nats = TestNats::start().await;
    let data = tempfile::tempdir().unwrap();
    let s = settings(data.path(), &nats.url(), &[]);
    let shutdown = CancellationToken::new();
    let roles = Roles {
        api: true,
        worker: false,
        projector: true,
    };
    let running = serve::start(&s, roles, &nats.url(), shutdown.clone())
        .await
        .unwrap();
    let base = format!("http://{}", running.api_addr.unwrap());
    let services = tokio::spawn(running.wait());

    let client = async_nats::connect(nats.url()).await.unwrap();
    let events = heimdex::infra::connect_nats(&s, &nats.url(), "t", &shutdown)
        .await
        .unwrap();
    // The advisories' stream and consumer exist (as they do once any worker has started), but
    // no listener consumes them yet.
    let consumer = heimdex_worker::advisory::consumer(&events, &shutdown)
        .await
        .unwrap();

    let http = reqwest::Client::new();
    let token =
        heimdex_api::auth::issue_token(&s.api.jwt, Uuid::new_v4(), "t", Duration::from_secs(600))
            .unwrap();
    let accepted: serde_json::Value = http
        .post(format!("{base}/vectors/mock"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"asset_id": "doomed", "segment_id": "s"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job_id = accepted["job_id"].as_str().unwrap().to_owned();
    let queued = wait_for_job(
        &http,
        &base,
        &token,
        &job_id,
        "QUEUED",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(queued["status"], "QUEUED");
    let seq = queued["last_event_seq"].as_u64().unwrap();

    publish_advisory(&client, seq).await;
    // Nobody listens: the job stays QUEUED, and the advisory waits in its stream.
    let js = async_nats::jetstream::new(client.clone());
    heimdex_tests::eventually(Duration::from_secs(10), || async {
        let mut stream = js.get_stream("HEIMDEX_ADVISORIES").await.ok()?;
        (stream.info().await.ok()?.state.messages == 1).then_some(())
    })
    .await
    .expect("the advisory is kept while no listener runs");
    let job = wait_for_job(
        &http,
        &base,
        &token,
        &job_id,
        "QUEUED",
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(job["status"], "QUEUED");

    let listener = tokio::spawn(heimdex_worker::advisory::run(
        events.log.clone(),
        consumer,
        shutdown.clone(),
    ));
    let failed = wait_for_job(
        &http,
        &base,
        &token,
        &job_id,
        "FAILED",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        failed["status"], "FAILED",
        "job marked FAILED from the advisory"
    );
    assert_eq!(failed["error"]["code"], "max_deliveries");
    assert_eq!(failed["attempts"], 4);

    shutdown.cancel();
    let _ = services.await;
    let _ = listener.await;
}

/// Publishes a max-deliveries advisory for the worker consumer's delivery of stream message
/// `stream_seq`, in JetStream's documented shape, after 4 deliveries.
async fn publish_advisory(client: &async_nats::Client, stream_seq: u64) {
    let advisory = serde_json::json!({
        "type": "io.nats.jetstream.advisory.v1.max_deliver",
        "id": "test",
        "timestamp": "2026-01-01T00:00:00Z",
        "stream": "HEIMDEX_JOBS",
        "consumer": "worker",
        "stream_seq": stream_seq,
        "deliveries": 4
    });
    client
        .publish(
            heimdex_worker::advisory::subject(),
            advisory.to_string().into(),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();
}

/// The worker stored the job's end and died before acknowledging the delivery, which then ran
/// out: the advisory records nothing, since the round is over (a `failed` event would
/// contradict the end the job shows and count it as failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_advisory_for_a_job_that_ended_records_nothing() {
    use heimdex_domain::events::{EventData, EventKind, Started};

    let app = heimdex_tests::TestApp::spawn_without_worker(&[]).await;
    let shutdown = CancellationToken::new();
    let events = heimdex::infra::connect_nats(&app.settings, &app.nats.url(), "t", &shutdown)
        .await
        .unwrap();
    let consumer = heimdex_worker::advisory::consumer(&events, &shutdown)
        .await
        .unwrap();
    let listener = tokio::spawn(heimdex_worker::advisory::run(
        events.log.clone(),
        consumer,
        shutdown.clone(),
    ));

    let org = Uuid::new_v4();
    let token = app.token(org);
    let accepted = app.post_mock(&token, "ended", "s").await;
    let job_id = job_id_of(&accepted.json().await.unwrap());
    let job = Uuid::parse_str(&job_id).unwrap();
    let requested = events.log.last(org, job, EventKind::Requested).await;
    let requested_seq = requested.unwrap().unwrap().seq;
    let started = EventData::Started(Started {
        attempt: 4,
        round: 0,
    });
    append(&events.log, org, job, started).await;
    append(&events.log, org, job, mock_succeeded(4)).await;
    let succeeded = app
        .wait_for_job(&token, &job_id, "SUCCEEDED", Duration::from_secs(10))
        .await;
    assert_eq!(succeeded["status"], "SUCCEEDED");

    let client = async_nats::connect(app.nats.url()).await.unwrap();
    publish_advisory(&client, requested_seq).await;
    // Handled (acknowledged, so gone from its work-queue stream) ...
    let js = async_nats::jetstream::new(client.clone());
    heimdex_tests::eventually(Duration::from_secs(10), || async {
        let mut stream = js.get_stream("HEIMDEX_ADVISORIES").await.ok()?;
        let state = &stream.info().await.ok()?.state;
        (state.last_sequence == 1 && state.messages == 0).then_some(())
    })
    .await
    .expect("the advisory is handled");
    // ... without a `failed` event.
    let failed = events.log.last(org, job, EventKind::Failed).await.unwrap();
    assert!(failed.is_none(), "no failed event: {failed:?}");
    let job = app
        .wait_for_job(&token, &job_id, "SUCCEEDED", Duration::from_secs(1))
        .await;
    assert_eq!(job["status"], "SUCCEEDED");

    shutdown.cancel();
    let _ = listener.await;
    app.stop().await;
}
