use std::time::Duration;

use heimdex_tests::TestApp;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_org_gets_404_for_job_events_and_point() {
    let app = TestApp::spawn().await;
    let owner = app.token(Uuid::new_v4());
    let intruder = app.token(Uuid::new_v4());

    let accepted: serde_json::Value = app
        .post_mock(&owner, "secret-doc", "s-0")
        .await
        .json()
        .await
        .unwrap();
    let job_id = accepted["job_id"].as_str().unwrap().to_owned();
    let job = app
        .wait_for_job(&owner, &job_id, "SUCCEEDED", Duration::from_secs(20))
        .await;
    let point_id = job["result"]["point_ids"][0].as_str().unwrap().to_owned();

    for path in [
        format!("/jobs/{job_id}"),
        format!("/jobs/{job_id}/events"),
        format!("/vectors/{point_id}"),
        format!("/vectors/{point_id}?with_vector=true"),
    ] {
        let response = app.get(&intruder, &path).await;
        assert_eq!(response.status(), 404, "{path}");
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "application/problem+json",
            "{path}"
        );
        let body = response.text().await.unwrap();
        assert!(!body.contains("secret-doc"), "{path}: {body}");
        assert!(
            !body.contains(&point_id) || path.starts_with("/vectors"),
            "{path}: {body}"
        );
        // The owner still sees it.
        assert_eq!(app.get(&owner, &path).await.status(), 200, "{path}");
    }

    // The same request from another org is another job with another point.
    let theirs: serde_json::Value = app
        .post_mock(&intruder, "secret-doc", "s-0")
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(theirs["job_id"], job_id.as_str());
    app.stop().await;
}
