use std::time::Duration;

use heimdex_tests::TestApp;
use uuid::Uuid;

const ORG: &str = "550e8400-e29b-41d4-a716-446655440000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_job_succeeds_with_python_point_id_and_chacha_vector() {
    let app = TestApp::spawn().await;
    let org = Uuid::parse_str(ORG).unwrap();
    let token = app.token(org);

    let response = app.post_mock(&token, "doc-123", "chunk-0").await;
    assert_eq!(response.status(), 202);
    let accepted: serde_json::Value = response.json().await.unwrap();
    assert_eq!(accepted["asset_id"], "doc-123");
    assert_eq!(accepted["segment_id"], "chunk-0");
    let job_id = accepted["job_id"].as_str().unwrap().to_owned();

    let job = app
        .wait_for_job(&token, &job_id, "SUCCEEDED", Duration::from_secs(20))
        .await;
    assert_eq!(job["status"], "SUCCEEDED", "{job}");
    assert_eq!(job["attempts"], 1);
    assert_eq!(
        job["result"]["point_ids"][0],
        "cd06127a-af4f-615d-9176-a9d88d136bc9"
    );
    assert_eq!(job["result"]["model"], "mock");
    assert_eq!(job["result"]["model_ver"], "v1");
    assert_eq!(job["result"]["vector_size"], 384);
    assert_eq!(job["result"]["collection"], "embeddings");

    let point: serde_json::Value = app
        .get(
            &token,
            "/vectors/cd06127a-af4f-615d-9176-a9d88d136bc9?with_vector=true",
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(point["payload"]["org_id"], ORG);
    assert_eq!(point["payload"]["asset_id"], "doc-123");
    assert_eq!(point["payload"]["segment_id"], "chunk-0");
    assert_eq!(point["payload"]["model"], "mock");
    // The store keeps cosine vectors normalised: compare with the normalised ChaCha20 vector.
    let expected = heimdex_store::l2_normalized(&heimdex_domain::ids::mock_vector(
        org, "doc-123", "chunk-0", 384,
    ));
    let stored: Vec<f32> = serde_json::from_value(point["vector"].clone()).unwrap();
    assert_eq!(stored.len(), 384);
    for (got, want) in stored.iter().zip(&expected) {
        assert!((got - want).abs() < 1e-6, "{got} != {want}");
    }
    // Without the flag, no vector.
    let bare: serde_json::Value = app
        .get(&token, "/vectors/cd06127a-af4f-615d-9176-a9d88d136bc9")
        .await
        .json()
        .await
        .unwrap();
    assert!(bare.get("vector").is_none());

    let events: serde_json::Value = app
        .get(&token, &format!("/jobs/{job_id}/events"))
        .await
        .json()
        .await
        .unwrap();
    let types: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "heimdex.job.requested.v1",
            "heimdex.job.started.v1",
            "heimdex.job.succeeded.v1"
        ]
    );
    assert_eq!(events["events"][0]["event"]["specversion"], "1.0");
    assert_eq!(events["events"][0]["event"]["orgid"], ORG);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_spec_and_docs() {
    let app = TestApp::spawn().await;
    let health = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(ready["service"], "api");
    assert_eq!(ready["ready"], true);
    for dep in ["nats", "qdrant"] {
        let d = &ready["deps"][dep];
        assert_eq!(d["enabled"], true, "{ready}");
        assert_eq!(d["skipped"], false);
        assert_eq!(d["ok"], true);
        assert!(d["latency_ms"].as_f64().is_some());
    }
    assert_eq!(ready["deps"]["nats"]["url"], app.nats.url());

    let spec: serde_json::Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(spec["paths"]["/vectors/mock"]["post"].is_object());
    assert!(spec["paths"]["/jobs/{job_id}"]["get"].is_object());
    assert!(spec["components"]["securitySchemes"].is_object());
    let docs = app.http.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(docs.status(), 200);
    assert!(
        docs.text()
            .await
            .unwrap()
            .to_lowercase()
            .contains("swagger")
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_reports_disabled_vector_store_as_skipped() {
    let app = TestApp::spawn_with(&[("ENABLE_QDRANT", "false")]).await;
    let ready: serde_json::Value = app
        .http
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        ready["deps"]["qdrant"],
        serde_json::json!({"enabled": false, "skipped": true, "ok": null, "latency_ms": null, "url": "embedded"})
    );
    app.stop().await;
}
