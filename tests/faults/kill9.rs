//! `kill -9` of the worker, and of a whole `heimdex serve`, several times while jobs keep
//! arriving, and of `serve` with a backlog of tens of thousands of jobs queued. A killed
//! worker's unacknowledged jobs are redelivered after the consumer's ack wait
//! (`NATS_WORKER_ACK_WAIT_MS`; the fast CI run shortens it to 5 s, the full run keeps the 30 s
//! default), so the recovery figure is dominated by that wait.

use std::time::{Duration, Instant};

use crate::common::{scrape, value};
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

/// `serve` killed twice with a backlog queued, the second time once its restart has finished
/// some jobs. After each start the projector refolds every job
/// that ends while events it was delivered before may come back (`heimdex_projector`'s `Late`):
/// with a backlog, every job the worker then finishes, each read from the job log. That read
/// once made nats-server scan the stream from the job's last event to its end (a wildcard read,
/// once the log has 64Ki subjects): with 60,000 jobs queued the broker then spent minutes at
/// full CPU in those scans, its publishes timed out, and the jobs ended at about 30 a second.
/// Every job must end within `settle`'s 240 s: with that read, 17,342 of this run's 30,000 had
/// not.
/// Jobs the first restart finishes (and refolds) before it is killed too.
const REFOLDED_BEFORE_THE_KILL: f64 = 1_000.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_killed_with_a_backlog_loses_nothing() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    // One job at a time at first: the jobs queue up as fast as the API takes them.
    let mut run = Standalone::start(
        dir.path(),
        &[
            ("NATS_WORKER_ACK_WAIT_MS", ack_wait_ms()),
            ("HEIMDEX_WORKER_CONCURRENCY", "1"),
        ],
    )
    .await;
    // A subject a job queued, three a job done: past 64Ki subjects once 18,000 have run.
    let jobs = scale(30_000, 60_000);
    let accepted = submit_mock_jobs(&run.client, "backlog", jobs, 32, 50_000.0).await;
    assert_eq!(accepted, jobs, "every job accepted");

    run.serve.kill9().await;
    run.serve.set_env("HEIMDEX_WORKER_CONCURRENCY", "256");
    run.serve.start();
    // Killed again once this start's worker has finished some jobs, each refolded.
    let metrics = format!("{}/metrics", run.base);
    heimdex_tests::eventually(Duration::from_secs(60), || async {
        let scrape = scrape(&run.client.http, &metrics).await?;
        let done = value(&scrape, "heimdex_jobs_succeeded_total", &[])?;
        (done >= REFOLDED_BEFORE_THE_KILL).then_some(())
    })
    .await
    .expect("the restarted serve finishes jobs within 60 s of its start");
    run.serve.kill9().await;
    run.serve.start();
    let fault_over = Instant::now();

    let mut outcome = run.finish("kill -9 serve with a backlog", fault_over).await;
    outcome.note(format!(
        "{jobs} jobs queued with one worker slot; 2 kills, the worker at its default 256 slots after them"
    ));
    outcome.report_and_assert();
}
