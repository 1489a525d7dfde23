//! Dead letters and redrive: `GET /jobs?status=FAILED` lists a tenant's failed jobs, paginated
//! with an opaque cursor; `POST /jobs/{id}/retry` records one `retried` event per failure however
//! many requests race, and the job runs again as a new round. Jobs are made to fail for real:
//! poison input (an embedding model no worker serves) or a vector store on a closed port.

use std::collections::HashSet;
use std::time::Duration;

use heimdex::serve::Roles;
use heimdex_domain::ids;
use heimdex_tests::{TestApp, TestNats, eventually, settings, wait_for_job};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::common::{Services, job_id_of, poison_job, walk};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_jobs_are_listed_per_tenant_and_paginated_exactly_once() {
    let app = TestApp::spawn().await;
    let org = Uuid::new_v4();
    let token = app.token(org);
    let other_org = Uuid::new_v4();
    let other = app.token(other_org);
    let js = async_nats::jetstream::new(async_nats::connect(app.nats.url()).await.unwrap());

    let mut failed = Vec::new();
    for i in 0..7 {
        failed.push(poison_job(&js, org, &format!("s-{i}")).await);
    }
    let mut succeeded = Vec::new();
    for i in 0..3 {
        succeeded.push(job_id_of(
            &app.post_mock(&token, "doc", &format!("ok-{i}"))
                .await
                .json()
                .await
                .unwrap(),
        ));
    }
    // The other org has a failure and a success of its own.
    let foreign_failed = poison_job(&js, other_org, "x").await;
    let foreign_ok = job_id_of(
        &app.post_mock(&other, "doc", "ok")
            .await
            .json()
            .await
            .unwrap(),
    );
    app.wait_for_jobs(&token, &failed, "FAILED", WAIT).await;
    app.wait_for_jobs(&token, &succeeded, "SUCCEEDED", WAIT)
        .await;
    app.wait_for_jobs(
        &other,
        std::slice::from_ref(&foreign_failed),
        "FAILED",
        WAIT,
    )
    .await;
    app.wait_for_jobs(&other, std::slice::from_ref(&foreign_ok), "SUCCEEDED", WAIT)
        .await;

    // Every failed job exactly once, across pages of 3. The order is the order the jobs failed
    // (docs: "GET /jobs"), which concurrent workers do not fix, so the ids compare as sets.
    let (mut ids, pages) = walk(&app, &token, "status=FAILED&limit=3").await;
    assert_eq!(pages, 3, "7 jobs in pages of 3");
    assert_eq!(ids.len(), 7, "no job listed twice: {ids:?}");
    ids.sort();
    let mut expected = failed.clone();
    expected.sort();
    assert_eq!(ids, expected);
    let first: Value = app
        .get(&token, "/jobs?status=FAILED&limit=3")
        .await
        .json()
        .await
        .unwrap();
    for job in first["jobs"].as_array().unwrap() {
        assert_eq!(job["status"], "FAILED");
        assert_eq!(job["org_id"], org.to_string());
        assert_eq!(job["error"]["code"], "invalid_input", "{job}");
        assert_eq!(job["retries"], 0);
    }

    // The status filter takes every status; no filter lists them all.
    let (mut ok, _) = walk(&app, &token, "status=SUCCEEDED").await;
    ok.sort();
    let mut expected_ok = succeeded.clone();
    expected_ok.sort();
    assert_eq!(ok, expected_ok);
    assert!(walk(&app, &token, "status=RUNNING").await.0.is_empty());
    let (all, _) = walk(&app, &token, "limit=4").await;
    assert_eq!(all.len(), 10);
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), 10);

    // The other org sees its own jobs only, and none of these.
    let (mut theirs, _) = walk(&app, &other, "").await;
    theirs.sort();
    let mut expected_theirs = vec![foreign_failed.clone(), foreign_ok.clone()];
    expected_theirs.sort();
    assert_eq!(theirs, expected_theirs);
    let (theirs_failed, _) = walk(&app, &other, "status=FAILED").await;
    assert_eq!(theirs_failed, std::slice::from_ref(&foreign_failed));

    // Bad parameters are 400 problem+json, never a partial answer.
    for (query, code) in [
        ("status=DEAD", "bad_request"),
        ("status=failed", "bad_request"),
        ("limit=0", "bad_request"),
        ("limit=1001", "bad_request"),
        ("limit=ten", "bad_request"),
        ("limit=-1", "bad_request"),
        ("cursor=not-a-cursor", "invalid_cursor"),
        ("cursor=", "invalid_cursor"),
    ] {
        let response = app.get(&token, &format!("/jobs?{query}")).await;
        assert_eq!(response.status(), 400, "{query}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{query}"
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["code"], code, "{query}: {problem}");
    }
    assert_eq!(
        app.http
            .get(app.url("/jobs?status=FAILED"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    // Retry: a foreign or unknown job is 404 with nothing about it; a SUCCEEDED job is 409.
    for (token, job) in [
        (&other, &failed[0]),
        (&token, &foreign_failed),
        (&token, &Uuid::new_v4().to_string()),
    ] {
        let response = app
            .post_json(token, &format!("/jobs/{job}/retry"), &json!({}))
            .await;
        assert_eq!(response.status(), 404);
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["code"], "not_found");
        assert!(!problem.to_string().contains("poison"), "{problem}");
    }
    let response = app
        .post_json(&token, &format!("/jobs/{}/retry", succeeded[0]), &json!({}))
        .await;
    assert_eq!(response.status(), 409);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "job_not_failed", "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("SUCCEEDED"),
        "{problem}"
    );

    // A retried poison job fails again, as round 1, with its first failure kept.
    let response = app
        .post_json(&token, &format!("/jobs/{}/retry", failed[0]), &json!({}))
        .await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"job_id": failed[0], "retries": 1}));
    let job = eventually(WAIT, || async {
        let job: Value = app
            .get(&token, &format!("/jobs/{}", failed[0]))
            .await
            .json()
            .await
            .ok()?;
        (job["retries"] == 1 && job["status"] == "FAILED").then_some(job)
    })
    .await
    .expect("round 1 fails too");
    assert_eq!(job["attempts"], 1);
    assert_eq!(job["failures"].as_array().unwrap().len(), 1, "{job}");
    assert_eq!(job["failures"][0]["round"], 0);
    assert_eq!(job["failures"][0]["error"]["code"], "invalid_input");
    app.stop().await;
}

fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_record_one_event_and_the_redrive_succeeds_once() {
    let nats = TestNats::start().await;
    let http = reqwest::Client::new();
    let org = Uuid::new_v4();
    let data = tempfile::tempdir().unwrap();
    let s = settings(data.path(), &nats.url(), &[]);
    let token = heimdex_api::auth::issue_token(&s.api.jwt, org, "ops", Duration::from_secs(600))
        .expect("token");

    // 1. The vector store is down: the job fails after its last delivery.
    let url = format!("http://127.0.0.1:{}", closed_port());
    let down = Services::start(&nats, Roles::ALL, &[("QDRANT_URL", url.as_str())]).await;
    let accepted: Value = http
        .post(format!("{}/vectors/mock", down.base))
        .bearer_auth(&token)
        .json(&json!({"asset_id": "doc", "segment_id": "redrive"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job_id = job_id_of(&accepted);
    let job = wait_for_job(&http, &down.base, &token, &job_id, "FAILED", WAIT).await;
    assert_eq!(job["status"], "FAILED", "{job}");
    assert_eq!(job["error"]["code"], "vector_store");
    down.stop().await;

    // 2. API and projector only (no worker yet): ten concurrent retries, one `retried` event,
    //    the same 202 body for all.
    let api = Services::start(
        &nats,
        Roles {
            api: true,
            worker: false,
            projector: true,
        },
        &[],
    )
    .await;
    let listed: Value = http
        .get(format!("{}/jobs?status=FAILED", api.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["jobs"][0]["job_id"], job_id.as_str(), "{listed}");
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 1);
    let retries = futures::future::join_all((0..10).map(|_| {
        http.post(format!("{}/jobs/{job_id}/retry", api.base))
            .bearer_auth(&token)
            .send()
    }))
    .await;
    let mut bodies = HashSet::new();
    for response in retries {
        let response = response.unwrap();
        assert_eq!(response.status(), 202);
        bodies.insert(response.text().await.unwrap());
    }
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    let body: Value = serde_json::from_str(bodies.iter().next().unwrap()).unwrap();
    assert_eq!(body, json!({"job_id": job_id, "retries": 1}));
    let queued = eventually(WAIT, || async {
        let job: Value = http
            .get(format!("{}/jobs/{job_id}", api.base))
            .bearer_auth(&token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (job["retries"] == 1).then_some(job)
    })
    .await
    .expect("the retry is projected");
    assert_eq!(queued["status"], "QUEUED", "{queued}");
    assert_eq!(queued["stage"], "retried");
    assert_eq!(queued["failures"][0]["error"]["code"], "vector_store");
    assert_eq!(queued["failures"][0]["attempts"], 4);
    // Retried again while queued: the same answer, nothing new recorded.
    let again = http
        .post(format!("{}/jobs/{job_id}/retry", api.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 202);
    assert_eq!(again.text().await.unwrap(), *bodies.iter().next().unwrap());
    api.stop().await;

    // 3. The cause is gone (a working store): the worker runs round 1 to success.
    let up = Services::start(&nats, Roles::ALL, &[]).await;
    let job = wait_for_job(&http, &up.base, &token, &job_id, "SUCCEEDED", WAIT).await;
    assert_eq!(job["status"], "SUCCEEDED", "{job}");
    assert_eq!(job["retries"], 1);
    assert_eq!(job["attempts"], 1);
    assert!(job["error"].is_null(), "{job}");
    assert_eq!(job["failures"].as_array().unwrap().len(), 1);
    let store = up.store.clone().unwrap();
    assert_eq!(store.count(org, Default::default()).await.unwrap(), 1);
    let point = ids::point_id(org, "doc", "redrive", "mock", "v1");
    assert_eq!(
        store.scroll_ids(org, Default::default()).await.unwrap(),
        [point]
    );

    let events: Value = http
        .get(format!("{}/jobs/{job_id}/events", up.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["subject"].as_str().unwrap().rsplit('.').next().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "requested",
            "started",
            "started",
            "started",
            "started",
            "failed",
            "retried",
            "started",
            "succeeded"
        ]
    );
    let retried = &events["events"][6]["event"];
    assert_eq!(retried["type"], "heimdex.job.retried.v1");
    assert_eq!(retried["id"], format!("{job_id}:retried:1"));
    assert_eq!(retried["data"]["user_id"], "ops");
    assert_eq!(
        events["events"][7]["event"]["id"],
        format!("{job_id}:started:1.1")
    );

    // A SUCCEEDED job is not retried.
    let response = http
        .post(format!("{}/jobs/{job_id}/retry", up.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "job_not_failed");

    // The projection rebuilt from the stream says the same.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let defs = heimdex_event_store::jetstream::Definitions::load(&s.nats).unwrap();
    heimdex_projector::rebuild::rebuild(&js, &defs, "REBUILT")
        .await
        .unwrap();
    let live = js.get_key_value("HEIMDEX_JOB_STATUS").await.unwrap();
    let rebuilt = js.get_key_value("REBUILT").await.unwrap();
    assert_eq!(
        heimdex_projector::rebuild::compare(&live, &rebuilt)
            .await
            .unwrap(),
        Vec::<String>::new()
    );
    let rebuilt_job: Value = serde_json::from_slice(
        &rebuilt
            .get(heimdex_event_store::status::status_key(
                org,
                Uuid::parse_str(&job_id).unwrap(),
            ))
            .await
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(rebuilt_job["status"], "SUCCEEDED");
    assert_eq!(rebuilt_job["retries"], 1);
    up.stop().await;
}

/// The max-deliveries advisory of a retried round's message ends that round: FAILED again,
/// with code `max_deliveries`, the first failure kept. No worker runs, so no job is processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_deliveries_advisory_ends_a_retried_round() {
    let nats = TestNats::start().await;
    let api = Services::start(
        &nats,
        Roles {
            api: true,
            worker: false,
            projector: true,
        },
        &[],
    )
    .await;
    let data = tempfile::tempdir().unwrap();
    let s = settings(data.path(), &nats.url(), &[]);
    let org = Uuid::new_v4();
    let token = heimdex_api::auth::issue_token(&s.api.jwt, org, "ops", Duration::from_secs(600))
        .expect("token");
    let http = reqwest::Client::new();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let events = heimdex::infra::connect_nats(&s, &nats.url(), "t", &api.shutdown)
        .await
        .unwrap();
    let consumer = heimdex_worker::advisory::consumer(&events, &api.shutdown)
        .await
        .unwrap();
    let listener = tokio::spawn(heimdex_worker::advisory::run(
        events.log.clone(),
        consumer,
        api.shutdown.clone(),
    ));

    let accepted: Value = http
        .post(format!("{}/vectors/mock", api.base))
        .bearer_auth(&token)
        .json(&json!({"asset_id": "doomed", "segment_id": "s"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job_id = job_id_of(&accepted);

    // Advises that message `seq` ran out of deliveries until the job reaches `retries` FAILED.
    let advise_until_failed = |seq: u64, retries: u32| {
        let (client, http, token, job_id, base) = (
            client.clone(),
            http.clone(),
            token.clone(),
            job_id.clone(),
            api.base.clone(),
        );
        async move {
            client.flush().await.unwrap();
            let advisory = json!({
                "type": "io.nats.jetstream.advisory.v1.max_deliver",
                "id": "test",
                "timestamp": "2026-01-01T00:00:00Z",
                "stream": "HEIMDEX_JOBS",
                "consumer": "worker",
                "stream_seq": seq,
                "deliveries": 4
            });
            eventually(WAIT, || async {
                client
                    .publish(
                        heimdex_worker::advisory::subject(),
                        advisory.to_string().into(),
                    )
                    .await
                    .ok()?;
                tokio::time::sleep(Duration::from_millis(200)).await;
                let job: Value = http
                    .get(format!("{base}/jobs/{job_id}"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                (job["status"] == "FAILED" && job["retries"] == retries).then_some(job)
            })
            .await
            .expect("the advisory marks the round FAILED")
        }
    };

    let queued = wait_for_job(
        &http,
        &api.base,
        &token,
        &job_id,
        "QUEUED",
        Duration::from_secs(10),
    )
    .await;
    let failed = advise_until_failed(queued["last_event_seq"].as_u64().unwrap(), 0).await;
    assert_eq!(failed["error"]["code"], "max_deliveries");

    let response = http
        .post(format!("{}/jobs/{job_id}/retry", api.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let retried = eventually(WAIT, || async {
        let job: Value = http
            .get(format!("{}/jobs/{job_id}", api.base))
            .bearer_auth(&token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (job["retries"] == 1).then_some(job)
    })
    .await
    .expect("retry projected");
    assert_eq!(retried["status"], "QUEUED");

    let failed_again = advise_until_failed(retried["last_event_seq"].as_u64().unwrap(), 1).await;
    assert_eq!(failed_again["error"]["code"], "max_deliveries");
    assert_eq!(failed_again["attempts"], 4);
    assert_eq!(failed_again["failures"][0]["round"], 0);
    assert_eq!(
        failed_again["failures"][0]["error"]["code"],
        "max_deliveries"
    );
    let events: Value = http
        .get(format!("{}/jobs/{job_id}/events", api.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let last = events["events"].as_array().unwrap().last().unwrap();
    assert_eq!(last["event"]["id"], format!("{job_id}:failed:1.4"));
    assert_eq!(last["event"]["data"]["round"], 1);

    api.stop().await;
    let _ = listener.await;
}
