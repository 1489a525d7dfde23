//! `kill -9` of the worker, and of a whole `heimdex serve`, several times while jobs keep
//! arriving. A killed worker's unacknowledged jobs are redelivered after the consumer's ack wait
//! (`NATS_WORKER_ACK_WAIT_MS`; the fast CI run shortens it to 5 s, the full run keeps the 30 s
//! default), so the recovery figure is dominated by that wait.

use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::harness::*;

fn ack_wait_ms() -> &'static str {
    scale("5000", "30000")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_kill_9_repeatedly_loses_nothing() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let mut split = Split::start(dir.path(), &[("NATS_WORKER_ACK_WAIT_MS", ack_wait_ms())]).await;

    let (jobs, kills, rate) = scale((2_000, 2, 400.0), (10_000, 5, 700.0));
    let submitting = tokio::spawn({
        let client = split.client.clone();
        async move { submit_mock_jobs(&client, "kill-worker", jobs, 32, rate).await }
    });
    let run = Duration::from_secs_f64(jobs as f64 / rate);
    for _ in 0..kills {
        tokio::time::sleep(run / (kills + 1)).await;
        split.worker.kill9().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        split.worker.start();
    }
    let fault_over = Instant::now();
    assert_eq!(submitting.await.unwrap(), jobs, "every job accepted");

    let mut outcome = split.finish("kill -9 worker", fault_over).await;
    outcome.note(format!(
        "{kills} kills over {jobs} jobs; ack wait {} ms",
        ack_wait_ms()
    ));
    outcome.report_and_assert();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_kill_9_repeatedly_loses_nothing() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (api_port, nats_port) = (free_port(), free_port());
    let mut env = heimdex_env(&root.join("data"), None);
    set_env(
        &mut env,
        "HEIMDEX_API_ADDR",
        format!("127.0.0.1:{api_port}"),
    );
    set_env(
        &mut env,
        "HEIMDEX_NATS_LISTEN",
        format!("127.0.0.1:{nats_port}"),
    );
    set_env(&mut env, "NATS_WORKER_ACK_WAIT_MS", ack_wait_ms());
    let mut serve = Heimdex::spawn("serve", &["serve"], env, root);
    let base = format!("http://127.0.0.1:{api_port}");
    let nats_url = format!("nats://127.0.0.1:{nats_port}");
    let ledger = Ledger::new(Uuid::new_v4());
    let client = Client::new(vec![base.clone()], ledger.clone());
    wait_ready(&client.http, &base, Duration::from_secs(60)).await;
    let watch = StatusWatch::start(&nats_url, ledger.org).await;
    let js = jetstream(&nats_url).await;

    let (jobs, kills, rate) = scale((2_000, 2, 400.0), (10_000, 5, 700.0));
    let submitting = tokio::spawn({
        let client = client.clone();
        async move { submit_mock_jobs(&client, "kill-serve", jobs, 32, rate).await }
    });
    let run = Duration::from_secs_f64(jobs as f64 / rate);
    for _ in 0..kills {
        tokio::time::sleep(run / (kills + 1)).await;
        serve.kill9().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        serve.start();
    }
    let fault_over = Instant::now();
    assert_eq!(submitting.await.unwrap(), jobs, "every job accepted");
    let mut outcome = settle("kill -9 serve", &ledger, &js, &watch, fault_over).await;
    serve.stop_cleanly().await;
    outcome
        .count_points(&[open_embedded_store(&root.join("data")).await])
        .await;
    outcome.note(format!(
        "{kills} kills (API, worker, projector and their nats-server) over {jobs} jobs"
    ));
    outcome.attach_logs(&[&serve]);
    outcome.report_and_assert();
}
