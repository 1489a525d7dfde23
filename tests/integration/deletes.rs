//! Deleting is a job with events, scoped to the tenant, and idempotent in its effect.

use std::time::Duration;

use heimdex_tests::TestApp;
use serde_json::{Value, json};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

async fn ingest(app: &TestApp, token: &str, asset: &str, n: usize) -> Vec<String> {
    let segments: Vec<Value> = (0..n)
        .map(|i| json!({"segment_id": format!("s-{i}"), "text": format!("{asset} paragraph {i}")}))
        .collect();
    let body: Value = app
        .post_json(
            token,
            "/vectors/embed/batch",
            &json!({"asset_id": asset, "segments": segments}),
        )
        .await
        .json()
        .await
        .unwrap();
    let jobs: Vec<String> = body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap().to_owned())
        .collect();
    app.wait_for_jobs(token, &jobs, "SUCCEEDED", WAIT).await;
    body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["point_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Runs a delete and returns its finished job.
async fn delete(app: &TestApp, token: &str, path: &str) -> Value {
    let response = app.delete(token, path).await;
    assert_eq!(response.status(), 202, "{path}");
    let accepted: Value = response.json().await.unwrap();
    let job = app
        .wait_for_job(
            token,
            accepted["job_id"].as_str().unwrap(),
            "SUCCEEDED",
            WAIT,
        )
        .await;
    assert_eq!(job["status"], "SUCCEEDED", "{job}");
    job
}

async fn hits(app: &TestApp, token: &str, asset: &str) -> Vec<String> {
    app.search(
        token,
        &json!({"query": format!("{asset} paragraph"), "limit": 100, "filter": {"asset_id": asset}}),
    )
    .await["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["point_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_point_is_gone_and_deleting_again_changes_nothing() {
    let app = TestApp::spawn().await;
    let token = app.token(Uuid::new_v4());
    let points = ingest(&app, &token, "doc", 3).await;
    let gone = &points[1];

    let job = delete(&app, &token, &format!("/vectors/{gone}")).await;
    assert_eq!(job["job_type"], "delete_point");
    assert_eq!(job["result"]["deleted"], 1, "{job}");
    assert_eq!(
        app.get(&token, &format!("/vectors/{gone}")).await.status(),
        404
    );
    let left = hits(&app, &token, "doc").await;
    assert_eq!(left.len(), 2);
    assert!(!left.contains(gone));

    // Again: succeeds, removes nothing, the others stay.
    let job = delete(&app, &token, &format!("/vectors/{gone}")).await;
    assert_eq!(job["result"]["deleted"], 0, "{job}");
    assert_eq!(hits(&app, &token, "doc").await.len(), 2);

    // The events of a delete are on the stream like any job's.
    let kinds = app
        .event_types(&token, job["job_id"].as_str().unwrap())
        .await;
    assert_eq!(
        kinds,
        [
            "heimdex.job.requested.v1",
            "heimdex.job.started.v1",
            "heimdex.job.succeeded.v1"
        ]
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_asset_removes_that_asset_only() {
    let app = TestApp::spawn().await;
    let token = app.token(Uuid::new_v4());
    ingest(&app, &token, "keep", 2).await;
    let doomed = ingest(&app, &token, "drop", 4).await;

    let job = delete(&app, &token, "/assets/drop").await;
    assert_eq!(job["job_type"], "delete_asset");
    assert_eq!(job["result"]["deleted"], 4, "{job}");
    assert!(hits(&app, &token, "drop").await.is_empty());
    assert_eq!(hits(&app, &token, "keep").await.len(), 2);
    for p in &doomed {
        assert_eq!(
            app.get(&token, &format!("/vectors/{p}")).await.status(),
            404
        );
    }
    let job = delete(&app, &token, "/assets/drop").await;
    assert_eq!(job["result"]["deleted"], 0);

    // An Idempotency-Key makes a retried request the same job.
    let send = || {
        app.http
            .delete(app.url("/assets/keep"))
            .bearer_auth(&token)
            .header("Idempotency-Key", "req-42")
            .send()
    };
    let a: Value = send().await.unwrap().json().await.unwrap();
    let b: Value = send().await.unwrap().json().await.unwrap();
    assert_eq!(a["job_id"], b["job_id"]);
    app.stop().await;
}
