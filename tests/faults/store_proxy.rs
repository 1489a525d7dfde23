//! The vector store unreachable: `heimdex serve` uses the remote-Qdrant adapter through a TCP
//! proxy of ours, which resets every connection for a while. Jobs sent meanwhile are retried
//! with backoff and end FAILED after the last delivery, with the store's reason; once the
//! store is reachable again, an operator lists the dead letters (`GET /jobs?status=FAILED`)
//! and redrives each (`POST /jobs/{id}/retry`): all then succeed, each with exactly one point.
//!
//! The store is `QDRANT_URL` when set (a real Qdrant server), else the test's Qdrant stand-in
//! (Qdrant's gRPC API over the Qdrant engine; see tests/qdrant-standin).

use std::time::{Duration, Instant};

use heimdex_domain::jobs::Status;
use heimdex_qdrant_standin::Standin;
use heimdex_tests::proxy::{Mode, TcpProxy};
use uuid::Uuid;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unreachable_store_fails_jobs_after_backoff_and_a_redrive_succeeds() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let (_standin, target) = match std::env::var("QDRANT_URL") {
        Ok(url) => (None, url),
        Err(_) => {
            let standin = Standin::start(dir.path().join("qdrant"), "127.0.0.1:0".parse().unwrap())
                .await
                .expect("stand-in starts");
            let url = standin.url();
            (Some(standin), url)
        }
    };
    let target_addr = target
        .trim_start_matches("http://")
        .parse()
        .expect("QDRANT_URL is http://<ip>:<port>");
    let proxy = TcpProxy::start(target_addr).await.unwrap();
    let deployment = Deployment::start(
        dir.path(),
        &[("QDRANT_URL", proxy.url().as_str())],
        Vec::new(),
    )
    .await;

    let (before, during) = scale((200, 100), (2_000, 1_000));
    submit_mock_jobs(&deployment.client, "healthy", before, 16, 500.0).await;
    wait_terminal(&deployment.js, &deployment.ledger, Duration::from_secs(60)).await;

    proxy.set_mode(Mode::Refuse);
    let outage = Instant::now();
    let failing: Vec<Uuid> = {
        let client = deployment.client.clone();
        let mut jobs = Vec::new();
        for i in 0..during {
            jobs.push(
                client
                    .submit_mock(i, "outage", &format!("s-{i}"))
                    .await
                    .expect("accepted while the store is down"),
            );
        }
        jobs
    };
    // Every job of the outage ends FAILED after its last delivery, with the store's reason.
    let failed = heimdex_tests::eventually(Duration::from_secs(120), || async {
        let current = statuses(&deployment.js, deployment.ledger.org).await.ok()?;
        failing
            .iter()
            .all(|job| current.get(job).is_some_and(|s| s.status == Status::Failed))
            .then_some(current)
    })
    .await
    .expect("the outage's jobs end FAILED");
    let all_failed_after = outage.elapsed();
    for job in &failing {
        let status = &failed[job];
        assert_eq!(status.attempts, 4, "every delivery used: {status:?}");
        let error = status.error.as_ref().unwrap();
        assert_eq!(
            serde_json::to_value(error.code).unwrap(),
            "vector_store",
            "{status:?}"
        );
    }

    proxy.set_mode(Mode::Forward);
    let fault_over = Instant::now();
    // The operator's redrive: page through the dead letters, retry each.
    let http = &deployment.client.http;
    let (mut cursor, mut listed) = (None::<String>, Vec::new());
    loop {
        let mut query = vec![("status", "FAILED".to_owned()), ("limit", "100".to_owned())];
        query.extend(cursor.take().map(|c| ("cursor", c)));
        let page: serde_json::Value = http
            .get(format!("{}/jobs", deployment.base))
            .query(&query)
            .bearer_auth(&deployment.client.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for job in page["jobs"].as_array().unwrap() {
            listed.push(job["job_id"].as_str().unwrap().parse::<Uuid>().unwrap());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    listed.sort();
    let mut expected = failing.clone();
    expected.sort();
    assert_eq!(
        listed, expected,
        "the dead letters are exactly the outage's jobs"
    );
    for job in &listed {
        let response = http
            .post(format!("{}/jobs/{job}/retry", deployment.base))
            .bearer_auth(&deployment.client.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    }

    let mut outcome = deployment
        .finish("vector store unreachable", fault_over)
        .await;
    assert_eq!(outcome.failed, 0, "every redriven job succeeded");
    outcome.note(format!(
        "{during} jobs during the outage (connections reset by the proxy, {}), all FAILED \
         after 4 deliveries within {:.1} s; listed and redriven: {} SUCCEEDED",
        if std::env::var("QDRANT_URL").is_ok() {
            "Qdrant server"
        } else {
            "Qdrant stand-in"
        },
        all_failed_after.as_secs_f64(),
        listed.len()
    ));
    outcome.report_and_assert();
}
