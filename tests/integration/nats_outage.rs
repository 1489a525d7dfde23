use std::time::{Duration, Instant};

use heimdex_tests::{TestApp, eventually};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_answers_503_fast_and_recovers_without_restart() {
    let mut app = TestApp::spawn().await;
    let token = app.token(Uuid::new_v4());
    let before: serde_json::Value = app
        .post_mock(&token, "doc", "before")
        .await
        .json()
        .await
        .unwrap();
    let before = before["job_id"].as_str().unwrap().to_owned();
    assert_eq!(
        app.wait_for_job(&token, &before, "SUCCEEDED", Duration::from_secs(20))
            .await["status"],
        "SUCCEEDED"
    );

    let port = app.nats.port();
    app.nats.stop().await;

    for i in 0..5 {
        let started = Instant::now();
        let response = app.post_mock(&token, "doc", &format!("during-{i}")).await;
        let elapsed = started.elapsed();
        assert_eq!(response.status(), 503, "attempt {i}");
        assert!(elapsed < Duration::from_secs(5), "answered in {elapsed:?}");
        let retry_after: u64 = response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry_after >= 1);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);

    app.nats.restart(port).await;

    // The same process recovers: publishing, consuming and projecting resume by themselves.
    let job = eventually(Duration::from_secs(30), || async {
        let response = app.post_mock(&token, "doc", "after").await;
        if response.status() == 202 {
            let body: serde_json::Value = response.json().await.ok()?;
            body["job_id"].as_str().map(str::to_owned)
        } else {
            None
        }
    })
    .await
    .expect("POST accepted again after NATS returned");
    let done = app
        .wait_for_job(&token, &job, "SUCCEEDED", Duration::from_secs(30))
        .await;
    assert_eq!(done["status"], "SUCCEEDED", "{done}");
    // Nothing was accepted during the outage.
    for i in 0..5 {
        let status = app
            .get(
                &token,
                &format!("/jobs/{}", job_id_of(&app, &token, i).await),
            )
            .await
            .status();
        assert_eq!(status, 404, "job during-{i} must not exist");
    }
    app.stop().await;
}

/// The job id a `during-i` request would have named (ids are deterministic).
async fn job_id_of(app: &TestApp, token: &str, i: usize) -> Uuid {
    let principal = heimdex_api::auth::Verifier::new(&app.settings.api.jwt)
        .unwrap()
        .verify(token)
        .unwrap();
    let spec = heimdex_domain::jobs::JobSpec::MockEmbedding(heimdex_domain::jobs::MockParams::new(
        "doc",
        format!("during-{i}"),
    ));
    heimdex_domain::ids::job_id(&heimdex_domain::ids::job_key(
        principal.org_id,
        spec.job_type(),
        &spec.params(),
    ))
}
