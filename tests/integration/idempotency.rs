use std::collections::HashSet;
use std::time::Duration;

use heimdex_tests::TestApp;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_identical_posts_give_one_job_and_one_requested_event() {
    let app = TestApp::spawn().await;
    let org = Uuid::new_v4();
    let token = app.token(org);

    let posts = (0..50).map(|_| app.post_mock(&token, "doc-dup", "chunk-7"));
    let responses = futures::future::join_all(posts).await;
    let mut job_ids = HashSet::new();
    for response in responses {
        assert_eq!(response.status(), 202);
        let body: serde_json::Value = response.json().await.unwrap();
        job_ids.insert(body["job_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(job_ids.len(), 1, "{job_ids:?}");
    let job_id = job_ids.into_iter().next().unwrap();

    let job = app
        .wait_for_job(&token, &job_id, "SUCCEEDED", Duration::from_secs(20))
        .await;
    assert_eq!(job["status"], "SUCCEEDED");

    // Exactly one `requested` message on the job's subject, counted by the server.
    let client = async_nats::connect(app.nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream("HEIMDEX_JOBS").await.unwrap();
    let subject = format!("heimdex.jobs.{org}.{job_id}.requested");
    let info = stream.info_with_subjects(&subject).await.unwrap();
    let counts: Vec<(String, usize)> = futures::TryStreamExt::try_collect(info).await.unwrap();
    assert_eq!(counts, vec![(subject, 1)]);

    // A later identical request (outside any race) still names the same job.
    let again: serde_json::Value = app
        .post_mock(&token, "doc-dup", "chunk-7")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["job_id"], job_id.as_str());
    assert_eq!(app.store.count(org, Default::default()).await.unwrap(), 1);
    app.stop().await;
}
