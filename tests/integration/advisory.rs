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

    let advisory = serde_json::json!({
        "type": "io.nats.jetstream.advisory.v1.max_deliver",
        "id": "test",
        "timestamp": "2026-01-01T00:00:00Z",
        "stream": "HEIMDEX_JOBS",
        "consumer": "worker",
        "stream_seq": seq,
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
