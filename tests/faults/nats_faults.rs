//! The event store itself fails: nats-server killed with SIGKILL mid-run and started again on
//! its store, and nats-server stopped for a long outage under load. `heimdex serve` runs on
//! throughout and must recover by itself.

use std::time::{Duration, Instant};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_server_kill_9_and_restart_loses_nothing() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let mut deployment = Deployment::start(dir.path(), &[], Vec::new()).await;

    let (jobs, rate) = scale((2_000, 400.0), (10_000, 700.0));
    let submitting = tokio::spawn({
        let client = deployment.client.clone();
        async move { submit_mock_jobs(&client, "kill-nats", jobs, 32, rate).await }
    });
    let run = Duration::from_secs_f64(jobs as f64 / rate);
    tokio::time::sleep(run * 2 / 5).await;
    deployment.nats.kill().await;
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    deployment
        .nats
        .start_again()
        .await
        .expect("nats-server starts again");
    let down_for = killed.elapsed();
    let fault_over = Instant::now();
    assert_eq!(submitting.await.unwrap(), jobs, "every job accepted");

    let mut outcome = deployment.finish("kill -9 nats-server", fault_over).await;
    outcome.note(format!(
        "killed at 40 % of {jobs} jobs, down {:.1} s",
        down_for.as_secs_f64()
    ));
    outcome.report_and_assert();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_server_down_under_load_answers_503_then_completes_everything() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let mut deployment = Deployment::start(dir.path(), &[], Vec::new()).await;

    let (jobs, rate, outage) = scale(
        (2_000, 300.0, Duration::from_secs(8)),
        (6_000, 300.0, Duration::from_secs(30)),
    );
    let submitting = tokio::spawn({
        let client = deployment.client.clone();
        async move { submit_mock_jobs(&client, "nats-down", jobs, 32, rate).await }
    });
    tokio::time::sleep(Duration::from_secs_f64(jobs as f64 / rate) / 4).await;
    let accepted_before = deployment.ledger.accepted();
    deployment.nats.stop().await;
    let stopped = Instant::now();

    // While it is down, a probe sends fresh requests: each must be refused quickly with 503,
    // `Retry-After` and a problem body, and `/readyz` must say not ready.
    let (mut refused, mut slowest, mut probe) = (0u32, Duration::ZERO, 0u32);
    while stopped.elapsed() < outage {
        let started = Instant::now();
        let response = deployment
            .client
            .http
            .post(format!("{}/vectors/mock", deployment.base))
            .bearer_auth(&deployment.client.token)
            .json(&serde_json::json!({"asset_id": "probe", "segment_id": format!("p-{probe}")}))
            .send()
            .await
            .expect("the API itself stays up");
        probe += 1;
        slowest = slowest.max(started.elapsed());
        assert_eq!(response.status(), 503, "refused while NATS is down");
        assert!(
            response.headers().get("retry-after").is_some_and(|v| v
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
                >= 1)
        );
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        refused += 1;
        let ready = deployment
            .client
            .http
            .get(format!("{}/readyz", deployment.base))
            .send()
            .await
            .unwrap();
        // The first probes may still see the cached ready answer (PROBE_CACHE_SEC=1).
        if stopped.elapsed() > Duration::from_secs(3) {
            assert_eq!(ready.status(), 503, "/readyz while NATS is down");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        slowest < Duration::from_secs(5),
        "a refusal took {slowest:?}"
    );
    deployment
        .nats
        .start_again()
        .await
        .expect("nats-server starts again");
    let fault_over = Instant::now();
    assert_eq!(
        submitting.await.unwrap(),
        jobs,
        "every job accepted in the end"
    );

    let mut outcome = deployment.finish("nats-server down", fault_over).await;
    outcome.note(format!(
        "down {:.0} s with {accepted_before} jobs accepted before; {refused} probe requests \
         during the outage all 503 + Retry-After (slowest {} ms)",
        outage.as_secs_f64(),
        slowest.as_millis()
    ));
    outcome.report_and_assert();
}
