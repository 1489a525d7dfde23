//! A clean start says nothing alarming: `heimdex serve` with a `JWT_SECRET`, healthy
//! dependencies and a first job and search (which open the embedded engine's segments, where
//! its meaningless warnings came from) logs no line at WARN or above.

use std::time::Duration;

use heimdex_tests::{ServeProcess, wait_for_job};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_serve_start_logs_nothing_at_warn() {
    // RUST_LOG unset: the default `info`, as a new user runs it.
    let mut serve = ServeProcess::start(&[]).await;
    let http = reqwest::Client::new();
    let token = serve.token(Uuid::new_v4());
    let accepted: serde_json::Value = http
        .post(format!("{}/vectors/mock", serve.base))
        .bearer_auth(&token)
        .json(&serde_json::json!({"asset_id": "doc", "segment_id": "s-0"}))
        .send()
        .await
        .expect("POST")
        .json()
        .await
        .expect("202 body");
    let job_id = accepted["job_id"].as_str().expect("job_id");
    let job = wait_for_job(
        &http,
        &serve.base,
        &token,
        job_id,
        "SUCCEEDED",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(job["status"], "SUCCEEDED", "{job}");
    let search = http
        .post(format!("{}/vectors/search", serve.base))
        .bearer_auth(&token)
        .json(&serde_json::json!({"query": "anything", "limit": 3}))
        .send()
        .await
        .expect("search");
    assert_eq!(search.status(), 200);

    let log = serve.log();
    let status = serve.terminate().await;
    assert!(status.success(), "{status}\n{log}");
    assert!(log.contains("heimdex ready"), "not a start-up log:\n{log}");
    let alarming: Vec<&str> = log
        .lines()
        .filter(|line| {
            [" WARN ", " ERROR "]
                .iter()
                .any(|level| line.contains(level))
        })
        .collect();
    assert!(alarming.is_empty(), "{alarming:#?}\nwhole log:\n{log}");
}
