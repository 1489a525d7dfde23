//! The projector killed with SIGKILL mid-stream, several times, while jobs flow; then the whole
//! projection rebuilt from the stream by `heimdex projector rebuild` into a fresh bucket. The
//! rebuilt statuses (one uninterrupted fold) must be identical to the live ones.

use std::time::{Duration, Instant};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn projector_kill_9_then_rebuild_gives_identical_statuses() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let mut split = Split::start(dir.path(), &[]).await;

    let (jobs, kills, rate) = scale((2_000, 3, 400.0), (10_000, 5, 700.0));
    let submitting = tokio::spawn({
        let client = split.client.clone();
        async move { submit_mock_jobs(&client, "kill-projector", jobs, 32, rate).await }
    });
    let run = Duration::from_secs_f64(jobs as f64 / rate);
    for _ in 0..kills {
        tokio::time::sleep(run / (kills + 1)).await;
        split.projector.kill9().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        split.projector.start();
    }
    let fault_over = Instant::now();
    assert_eq!(submitting.await.unwrap(), jobs, "every job accepted");
    wait_terminal(&split.js, &split.ledger, Duration::from_secs(120)).await;
    // Events a killed projector had pulled but not acknowledged come back after the consumer's
    // ack wait (30 s): only then has the projection caught up.
    let caught_up = wait_consumer_drained(
        &split.js,
        heimdex_event_store::jetstream::PROJECTOR_CONSUMER,
        Duration::from_secs(120),
    )
    .await;
    let live = statuses(&split.js, split.ledger.org).await.unwrap();

    let rebuild = tokio::process::Command::new(heimdex_tests::heimdex_bin())
        .args(["projector", "rebuild", "--bucket", "FAULTS_REBUILD"])
        .envs(heimdex_env(
            &dir.path().join("rebuild"),
            Some(split.nats.url()),
        ))
        .env_remove("QDRANT_URL")
        .output()
        .await
        .expect("rebuild runs");
    let said = String::from_utf8_lossy(&rebuild.stdout).into_owned();
    assert!(
        rebuild.status.success(),
        "{said}\n{}",
        String::from_utf8_lossy(&rebuild.stderr)
    );
    // Compare the org's statuses field by field too, not only the command's verdict.
    let rebuilt = split.js.get_key_value("FAULTS_REBUILD").await.unwrap();
    let mut differing = 0;
    for (job, status) in &live {
        let entry = rebuilt
            .get(format!("{}.{job}", split.ledger.org))
            .await
            .unwrap()
            .expect("rebuilt status");
        let rebuilt: heimdex_domain::jobs::JobStatus = serde_json::from_slice(&entry).unwrap();
        if &rebuilt != status {
            differing += 1;
            eprintln!("live:    {status:?}\nrebuilt: {rebuilt:?}");
        }
    }
    assert_eq!(differing, 0, "{said}");
    assert!(said.contains("identical to HEIMDEX_JOB_STATUS"), "{said}");
    assert!(
        said.contains("documents: identical to HEIMDEX_DOCUMENTS"),
        "{said}"
    );

    // A rebuild is a pure function of the stream: a second one gives the same bucket, and the
    // live bucket is never a rebuild target.
    let rebuild = |bucket: &'static str| {
        tokio::process::Command::new(heimdex_tests::heimdex_bin())
            .args(["projector", "rebuild", "--bucket", bucket])
            .envs(heimdex_env(
                &dir.path().join("rebuild"),
                Some(split.nats.url()),
            ))
            .env_remove("QDRANT_URL")
            .output()
    };
    let again = rebuild("FAULTS_REBUILD").await.expect("rebuild runs");
    let said_again = String::from_utf8_lossy(&again.stdout).into_owned();
    assert!(again.status.success(), "{said_again}");
    assert_eq!(
        said_again.lines().next(),
        said.lines().next(),
        "the same events fold into the same statuses"
    );
    assert!(
        said_again.contains("identical to HEIMDEX_JOB_STATUS"),
        "{said_again}"
    );
    let live_target = rebuild("HEIMDEX_JOB_STATUS").await.expect("rebuild runs");
    assert!(
        !live_target.status.success(),
        "the live bucket is refused as a target"
    );

    let mut outcome = split
        .finish("kill -9 projector + rebuild", fault_over)
        .await;
    outcome.note(format!(
        "{kills} kills over {jobs} jobs; projection caught up {:.1} s after the last job \
         finished; rebuild: {}; {differing} of {} statuses differ",
        caught_up.as_secs_f64(),
        said.lines().next().unwrap_or_default(),
        live.len()
    ));
    outcome.report_and_assert();
}
