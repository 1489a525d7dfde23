//! A vector store that is down: the real remote adapter pointed at a port where nothing listens.
//! Jobs are retried with backoff (1 s, 2 s, 4 s) and, after the 4th delivery, end FAILED with the
//! store's reason — never stuck RUNNING. The service starts anyway and says what is wrong.

use std::time::Duration;

use heimdex_tests::TestApp;
use uuid::Uuid;

fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_vector_store_retries_then_fails_with_reason() {
    let url = format!("http://127.0.0.1:{}", closed_port());
    let app = TestApp::spawn_with(&[("QDRANT_URL", url.as_str())]).await;
    let token = app.token(Uuid::new_v4());

    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(ready["deps"]["nats"]["ok"], true);
    assert_eq!(ready["deps"]["qdrant"]["ok"], false, "{ready}");

    let accepted = app.post_mock(&token, "doc", "seg").await;
    assert_eq!(
        accepted.status(),
        202,
        "jobs are accepted while the store is down"
    );
    let job_id = accepted.json::<serde_json::Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let started = std::time::Instant::now();
    let job = app
        .wait_for_job(&token, &job_id, "FAILED", Duration::from_secs(60))
        .await;
    let elapsed = started.elapsed();
    assert_eq!(job["status"], "FAILED", "{job}");
    assert_eq!(job["attempts"], 4);
    assert_eq!(job["error"]["code"], "vector_store");
    assert!(
        job["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unavailable"),
        "{job}"
    );
    // Three NAK delays of 1 s, 2 s and 4 s separate the four deliveries.
    assert!(
        elapsed >= Duration::from_secs(6),
        "retried too fast: {elapsed:?}"
    );

    let events: serde_json::Value = app
        .get(&token, &format!("/jobs/{job_id}/events"))
        .await
        .json()
        .await
        .unwrap();
    let kinds: Vec<String> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e["subject"]
                .as_str()
                .unwrap()
                .rsplit('.')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "requested",
            "started",
            "started",
            "started",
            "started",
            "failed"
        ]
    );
    app.stop().await;
}
