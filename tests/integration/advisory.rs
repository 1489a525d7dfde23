//! The max-deliveries advisory listener: a job whose worker died on every delivery is recorded
//! FAILED (code `max_deliveries`) instead of staying QUEUED/RUNNING forever. No worker runs here,
//! so the job is never processed; the advisory is published in JetStream's documented shape
//! (`io.nats.jetstream.advisory.v1.max_deliver`) for the job's `requested` message.

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
    let js = async_nats::jetstream::new(client.clone());
    let listener = tokio::spawn(heimdex_worker::advisory::run(
        client.clone(),
        js.clone(),
        shutdown.clone(),
    ));

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

    // Give the listener's subscription a moment to reach the server, then advise.
    client.flush().await.unwrap();
    let advisory = serde_json::json!({
        "type": "io.nats.jetstream.advisory.v1.max_deliver",
        "id": "test",
        "timestamp": "2026-01-01T00:00:00Z",
        "stream": "HEIMDEX_JOBS",
        "consumer": "worker",
        "stream_seq": seq,
        "deliveries": 4
    });
    let failed = heimdex_tests::eventually(Duration::from_secs(10), || async {
        client
            .publish(
                heimdex_worker::advisory::subject(),
                advisory.to_string().into(),
            )
            .await
            .ok()?;
        let job = wait_for_job(
            &http,
            &base,
            &token,
            &job_id,
            "FAILED",
            Duration::from_millis(500),
        )
        .await;
        (job["status"] == "FAILED").then_some(job)
    })
    .await
    .expect("job marked FAILED from the advisory");
    assert_eq!(failed["error"]["code"], "max_deliveries");
    assert_eq!(failed["attempts"], 4);

    shutdown.cancel();
    let _ = services.await;
    let _ = listener.await;
}
