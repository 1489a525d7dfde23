//! `GET /jobs` reads pages by stream sequence (docs: "Job listing"): without `status`, in the
//! order of each job's last change; with `status`, from the listing index the projector keeps.
//! These tests pin what that order promises (nothing missed, a job that changed is listed again,
//! a job that left a status is not listed under it) and that a status bucket made before the
//! index existed gets its index on the projector's next start.

use std::collections::HashSet;
use std::time::Duration;

use heimdex::serve::Roles;
use heimdex_tests::{TestApp, TestNats, eventually, wait_for_job};
use serde_json::Value;
use uuid::Uuid;

use crate::common::{Services, job_id_of, poison_job, walk, walk_from};

const WAIT: Duration = Duration::from_secs(60);

/// One page of `GET /jobs?<query>`: the job ids and the next cursor.
async fn page(app: &TestApp, token: &str, query: &str) -> (Vec<String>, Option<String>) {
    let response = app.get(token, &format!("/jobs?{query}")).await;
    assert_eq!(response.status(), 200, "{query}");
    let page: Value = response.json().await.unwrap();
    let ids = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(job_id_of)
        .collect();
    (ids, page["next_cursor"].as_str().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_changes_during_a_walk_is_listed_again_and_none_is_missed() {
    let app = TestApp::spawn().await;
    let org = Uuid::new_v4();
    let token = app.token(org);
    let js = async_nats::jetstream::new(async_nats::connect(app.nats.url()).await.unwrap());

    // Failures first, then successes: the failures' last changes come first in the listing.
    let mut failed = Vec::new();
    for i in 0..4 {
        failed.push(poison_job(&js, org, &format!("f-{i}")).await);
    }
    app.wait_for_jobs(&token, &failed, "FAILED", WAIT).await;
    let mut succeeded = Vec::new();
    for i in 0..4 {
        succeeded.push(job_id_of(
            &app.post_mock(&token, "doc", &format!("ok-{i}"))
                .await
                .json()
                .await
                .unwrap(),
        ));
    }
    app.wait_for_jobs(&token, &succeeded, "SUCCEEDED", WAIT)
        .await;

    // The first page holds two of the failed jobs.
    let (first, cursor) = page(&app, &token, "limit=2").await;
    assert_eq!(first.len(), 2);
    assert!(first.iter().all(|id| failed.contains(id)), "{first:?}");
    let cursor = cursor.expect("more pages");

    // One of them changes (it is retried, and fails again) while the walk is under way.
    let changed = first[0].clone();
    let retried = app
        .http
        .post(app.url(&format!("/jobs/{changed}/retry")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(retried.status(), 202);
    eventually(WAIT, || async {
        let job: Value = app
            .get(&token, &format!("/jobs/{changed}"))
            .await
            .json()
            .await
            .ok()?;
        (job["retries"] == 1 && job["status"] == "FAILED").then_some(())
    })
    .await
    .expect("the retried job fails again");

    // The rest of the walk: every other job once, and the changed one again, at the end.
    let (rest, _) = walk_from(&app, &token, "limit=2", Some(cursor)).await;
    let mut seen: Vec<String> = first.clone();
    seen.extend(rest.iter().cloned());
    let all: HashSet<&String> = failed.iter().chain(&succeeded).collect();
    assert_eq!(seen.iter().collect::<HashSet<_>>(), all, "none is missed");
    assert_eq!(
        seen.len(),
        all.len() + 1,
        "only the changed job twice: {seen:?}"
    );
    assert_eq!(rest.last(), Some(&changed), "listed again after its change");

    // Under its status it is listed once: a job is in one status at a time.
    let (failed_walk, _) = walk(&app, &token, "status=FAILED&limit=3").await;
    assert_eq!(failed_walk.len(), failed.len(), "{failed_walk:?}");
    assert_eq!(
        failed_walk.iter().collect::<HashSet<_>>(),
        failed.iter().collect::<HashSet<_>>()
    );
    assert!(walk(&app, &token, "status=QUEUED").await.0.is_empty());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_bucket_from_before_the_index_gets_one_on_the_next_start() {
    let nats = TestNats::start().await;
    let services = Services::start(&nats, Roles::ALL, &[]).await;
    let http = reqwest::Client::new();
    let org = Uuid::new_v4();
    let token = services.token(org);
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mut failed = Vec::new();
    for i in 0..3 {
        failed.push(poison_job(&js, org, &format!("f-{i}")).await);
    }
    for job_id in &failed {
        let job = wait_for_job(&http, &services.base, &token, job_id, "FAILED", WAIT).await;
        assert_eq!(job["status"], "FAILED");
    }
    services.stop().await;

    // As a deployment from before the listing: the statuses are there, the listing is empty,
    // and the listing index of the previous release is still there.
    let mut listing = js.get_stream("HEIMDEX_JOB_LISTING").await.unwrap();
    listing.purge().await.unwrap();
    assert_eq!(listing.info().await.unwrap().state.messages, 0);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "HEIMDEX_JOB_INDEX".to_owned(),
        subjects: vec!["heimdex.index.>".to_owned()],
        ..Default::default()
    })
    .await
    .unwrap();

    let services = Services::start(&nats, Roles::ALL, &[]).await;
    let listed = eventually(WAIT, || async {
        let page: Value = http
            .get(format!("{}/jobs?status=FAILED", services.base))
            .bearer_auth(&token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let ids: HashSet<String> = page["jobs"].as_array()?.iter().map(job_id_of).collect();
        (ids.len() == failed.len()).then_some(ids)
    })
    .await
    .expect("the listing is rebuilt from the bucket");
    assert_eq!(listed, failed.iter().cloned().collect::<HashSet<_>>());
    let every: Value = http
        .get(format!("{}/jobs?limit=10", services.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let every: Vec<String> = every["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(job_id_of)
        .collect();
    assert_eq!(every.len(), failed.len(), "each job once: {every:?}");
    assert!(
        js.get_stream("HEIMDEX_JOB_INDEX").await.is_err(),
        "the previous release's index is deleted"
    );
    services.stop().await;
}
