use std::time::Duration;

use heimdex_tests::TestApp;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_from_the_stream_yields_identical_statuses() {
    let app = TestApp::spawn().await;
    let token = app.token(Uuid::new_v4());
    let other = app.token(Uuid::new_v4());
    let mut jobs = Vec::new();
    for i in 0..40 {
        let token = if i % 3 == 0 { &other } else { &token };
        let body: serde_json::Value = app
            .post_mock(token, "doc", &format!("seg-{i}"))
            .await
            .json()
            .await
            .unwrap();
        jobs.push((token.clone(), body["job_id"].as_str().unwrap().to_owned()));
    }
    for (token, job) in &jobs {
        assert_eq!(
            app.wait_for_job(token, job, "SUCCEEDED", Duration::from_secs(20))
                .await["status"],
            "SUCCEEDED"
        );
    }

    let client = async_nats::connect(app.nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let defs = heimdex_event_store::jetstream::Definitions::load(&app.settings.nats).unwrap();
    let report = heimdex_projector::rebuild::rebuild(&js, &defs, "REBUILT")
        .await
        .unwrap();
    assert_eq!(report.jobs, 40);
    assert_eq!(
        report.events, 120,
        "requested + started + succeeded per job"
    );

    let live = js.get_key_value("HEIMDEX_JOB_STATUS").await.unwrap();
    let rebuilt = js.get_key_value("REBUILT").await.unwrap();
    let live_snapshot = heimdex_projector::rebuild::snapshot(&live).await.unwrap();
    assert_eq!(live_snapshot.len(), 40);
    assert_eq!(
        heimdex_projector::rebuild::compare(&live, &rebuilt)
            .await
            .unwrap(),
        Vec::<String>::new()
    );
    // Rebuilding twice is the same.
    heimdex_projector::rebuild::rebuild(&js, &defs, "REBUILT")
        .await
        .unwrap();
    assert!(
        heimdex_projector::rebuild::compare(&live, &rebuilt)
            .await
            .unwrap()
            .is_empty()
    );
    // The live bucket is not a rebuild target.
    assert!(
        heimdex_projector::rebuild::rebuild(&js, &defs, "HEIMDEX_JOB_STATUS")
            .await
            .is_err()
    );
    app.stop().await;
}
