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

/// Search, get and delete with another org's token touch nothing of the owner's: every route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_get_and_delete_never_cross_tenants() {
    use serde_json::{Value, json};
    let app = TestApp::spawn().await;
    let owner = app.token(Uuid::new_v4());
    let intruder = app.token(Uuid::new_v4());
    let wait = Duration::from_secs(60);

    let text = "Confidential merger plans for the northern division.";
    let accepted: Value = app
        .post_json(
            &owner,
            "/vectors/documents",
            &json!({"asset_id": "secret-doc", "text": text}),
        )
        .await
        .json()
        .await
        .unwrap();
    let chunk = &accepted["chunks"][0];
    let point = chunk["point_id"].as_str().unwrap().to_owned();
    app.wait_for_job(&owner, chunk["job_id"].as_str().unwrap(), "SUCCEEDED", wait)
        .await;
    let vector: Vec<f32> = serde_json::from_value(
        app.get(&owner, &format!("/vectors/{point}?with_vector=true"))
            .await
            .json::<Value>()
            .await
            .unwrap()["vector"]
            .clone(),
    )
    .unwrap();

    // Search: by the exact text, by the exact vector, narrowed to the asset — nothing.
    for body in [
        json!({"query": text, "limit": 100}),
        json!({"vector": vector, "limit": 100}),
        json!({"query": text, "filter": {"asset_id": "secret-doc"}}),
        json!({"query": text, "filter": {"segment_id": "chunk-0"}, "score_threshold": -1.0}),
    ] {
        let results = app.search(&intruder, &body).await;
        assert_eq!(results["results"], json!([]), "{body}");
    }
    // Get: 404.
    assert_eq!(
        app.get(&intruder, &format!("/vectors/{point}"))
            .await
            .status(),
        404
    );

    // Delete the point and the asset: the jobs succeed (they are the intruder's own jobs) and
    // remove nothing; the owner's point is intact.
    for path in [format!("/vectors/{point}"), "/assets/secret-doc".to_owned()] {
        let response = app.delete(&intruder, &path).await;
        assert_eq!(response.status(), 202, "{path}");
        let accepted: Value = response.json().await.unwrap();
        let job_id = accepted["job_id"].as_str().unwrap();
        let job = app.wait_for_job(&intruder, job_id, "SUCCEEDED", wait).await;
        assert_eq!(job["result"]["deleted"], 0, "{path}: {job}");
        // And the owner cannot see the intruder's job either.
        assert_eq!(
            app.get(&owner, &format!("/jobs/{job_id}")).await.status(),
            404
        );
    }
    let still: Value = app
        .get(&owner, &format!("/vectors/{point}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(still["payload"]["text"], text);
    let results = app
        .search(&owner, &json!({"query": text, "limit": 1}))
        .await;
    assert_eq!(results["results"][0]["point_id"], point.as_str());
    app.stop().await;
}
