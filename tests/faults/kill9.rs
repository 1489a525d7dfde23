//! `kill -9` of the worker, and of a whole `heimdex serve`, several times while jobs keep
//! arriving. A killed worker's unacknowledged jobs are redelivered after the consumer's ack wait
//! (`NATS_WORKER_ACK_WAIT_MS`; the fast CI run shortens it to 5 s, the full run keeps the 30 s
//! default), so the recovery figure is dominated by that wait.

use std::time::{Duration, Instant};

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
    let mut run =
        Standalone::start(dir.path(), &[("NATS_WORKER_ACK_WAIT_MS", ack_wait_ms())]).await;

    let (jobs, kills, rate) = scale((2_000, 2, 400.0), (10_000, 5, 700.0));
    let submitting = tokio::spawn({
        let client = run.client.clone();
        async move { submit_mock_jobs(&client, "kill-serve", jobs, 32, rate).await }
    });
    let duration = Duration::from_secs_f64(jobs as f64 / rate);
    for _ in 0..kills {
        tokio::time::sleep(duration / (kills + 1)).await;
        run.serve.kill9().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        run.serve.start();
    }
    let fault_over = Instant::now();
    assert_eq!(submitting.await.unwrap(), jobs, "every job accepted");
    let mut outcome = run.finish("kill -9 serve", fault_over).await;
    outcome.note(format!(
        "{kills} kills (API, worker, projector and their nats-server) over {jobs} jobs"
    ));
    outcome.report_and_assert();
}
