//! `heimdex serve` stopped while its embedded store builds an index: first by SIGTERM, which
//! must not wait for the build (Qdrant Edge cannot cancel one, and at a million points it takes
//! minutes: longer than an orchestrator's grace period), then by `kill -9` at several points of
//! later builds, one with deletes of existing points in flight. Each build is seen under way on
//! disk: Edge builds a new segment in `<shard>/temp_segments` and renames it into place when it
//! is complete, so a directory there is a build in progress, and one still there after the
//! process is gone is a build it never finished. The next start must remove it (else every
//! interrupted build keeps its segment's size on disk for good) and lose nothing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use uuid::Uuid;

use crate::common::{scrape, value};
use crate::harness::*;

/// Longest a SIGTERM'd `serve` may take to exit during a build, the burst's jobs still queued.
/// It took 0.24–0.27 s here; before it stopped waiting for the build, the build's remaining
/// seconds on top.
const PROMPT_STOP: Duration = Duration::from_secs(2);

/// Submits `points` mock jobs of `asset`. The stop that follows meets the first build the
/// store starts, during the burst (a due build waits at most 10 s for the writes to pause) or
/// after it, with the jobs not yet done still queued.
async fn burst(client: &Client, asset: &str, points: usize) {
    let accepted = submit_mock_jobs(client, asset, points, 32, 5_000.0).await;
    assert_eq!(accepted, points, "every job accepted");
}

/// Waits until every job accepted so far has ended.
async fn all_done(run: &Standalone) {
    let (statuses, waited) = wait_terminal(&run.js, &run.ledger, Duration::from_secs(240)).await;
    let open = run
        .ledger
        .jobs()
        .iter()
        .filter(|job| !statuses.get(job).is_some_and(|s| s.status.is_terminal()))
        .count();
    assert_eq!(
        open, 0,
        "jobs still open {waited:?} after the cycle's stops"
    );
}

/// Waits until the store holds some of the deletes sent during `build` until the build ends
/// (`heimdex_vector_store_held_writes` on `/metrics`), or the build has ended, or 10 s have
/// passed; returns how many it holds then.
async fn deletes_held(run: &Standalone, build: &Path) -> f64 {
    let started = Instant::now();
    loop {
        let held = held_writes(run).await.unwrap_or(0.0);
        if held > 0.0 || !build.exists() || started.elapsed() > Duration::from_secs(10) {
            return held;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `heimdex_vector_store_held_writes`, read from the API's `/metrics`.
async fn held_writes(run: &Standalone) -> Option<f64> {
    let scrape = scrape(&run.client.http, &format!("{}/metrics", run.base)).await?;
    value(&scrape, "heimdex_vector_store_held_writes", &[])
}

/// Points each cycle deletes during a build.
const DELETES: usize = 500;

/// Deletes `points`, 32 at a time; returns how many deletes were accepted.
async fn delete_points(client: Client, points: Vec<Uuid>) -> usize {
    futures::stream::iter(points.into_iter().enumerate())
        .map(|(n, point)| client.delete_point(n, point))
        .buffer_unordered(32)
        .filter(|job| std::future::ready(job.is_some()))
        .count()
        .await
}

/// The build directories under way (or left) in the store's shard.
fn builds(shard: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(shard.join("temp_segments")) {
        Ok(entries) => entries.map(|entry| entry.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

/// Waits until a build is under way in `shard`, and returns its directory.
async fn build_under_way(shard: &Path) -> PathBuf {
    let started = Instant::now();
    loop {
        if let Some(build) = builds(shard).pop() {
            return build;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no index build started within 2 minutes in {}",
            shard.display()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// How each `kill -9` of the cycle meets its build.
#[derive(Clone, Copy, Debug)]
enum Moment {
    /// As soon as it is seen.
    AtOnce,
    /// Half a second in.
    Later,
    /// Once the store holds deletes sent during the build: its proxy segments hold them until
    /// it ends, so the store answers them only after it, and they are redelivered after the
    /// kill.
    DuringDeletes,
    /// As soon as its directory is renamed into place: while the build swaps its segment in
    /// and removes the ones it replaces, or just after.
    AtTheSwap,
}

/// Starts the stopped `serve` again, and checks that its open removed `build`, the directory
/// of the build the stop interrupted (`stop` names the stop).
async fn restart_without(run: &mut Standalone, build: &Path, stop: &str) {
    run.restart().await;
    assert!(
        !build.exists(),
        "the open after {stop} left what the interrupted build left: {}",
        build.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_stopped_during_index_builds_loses_nothing() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    // Each stop that meets a job in flight costs it a delivery, and a job fails for good after
    // 4 (`max_deliveries`). A stopped job comes back one ack wait after its delivery, so with
    // 10 s the stops of a cycle (within 10–20 s) can meet one job three times at most.
    let ack_wait = scale("10000", "30000");
    let mut run = Standalone::start(dir.path(), &[("NATS_WORKER_ACK_WAIT_MS", ack_wait)]).await;
    let shard = run.data_dir.join("qdrant").join("embeddings");

    // Builds of seconds: about 4 s for 30,000 points here.
    let (points, cycles) = scale((30_000, 1), (30_000, 3));
    burst(&run.client, "build-0", points).await;

    // SIGTERM during the build.
    let build = build_under_way(&shard).await;
    let stopping = Instant::now();
    let status = run.serve.terminate().await;
    let stopped_in = stopping.elapsed();
    assert!(
        status.success(),
        "serve exited with {status} after SIGTERM\n{}",
        run.serve.log_tail()
    );
    assert!(
        stopped_in < PROMPT_STOP,
        "serve took {stopped_in:?} to stop after SIGTERM during an index build (at most \
         {PROMPT_STOP:?}): it waited for the build\n{}",
        run.serve.log_tail()
    );
    assert!(
        build.exists(),
        "the build ended before serve stopped, so this stop says nothing: make the burst larger"
    );
    restart_without(&mut run, &build, "a SIGTERM").await;

    // `kill -9` during the next builds: each start builds again what the last one did not finish.
    // The cycle ends at the swap, after which there may be nothing left to build: the next
    // cycle starts with a burst of its own.
    let moments = [
        Moment::AtOnce,
        Moment::DuringDeletes,
        Moment::Later,
        Moment::AtTheSwap,
    ];
    let mut interrupted = 1;
    let mut kills = 0;
    let mut held_at_kills = Vec::new();
    for cycle in 0..cycles {
        let asset = format!("build-{cycle}");
        if cycle > 0 {
            // The last cycle's stops left jobs to be redelivered after the ack wait. Each stop
            // that meets a job in flight costs it a delivery, and after 4 it fails for good
            // (`max_deliveries`): let them end before stopping `serve` again.
            all_done(&run).await;
            burst(&run.client, &asset, points).await;
        }
        for moment in moments {
            let build = build_under_way(&shard).await;
            let mut deleting = None;
            match moment {
                Moment::AtOnce => {}
                Moment::Later => tokio::time::sleep(Duration::from_millis(500)).await,
                Moment::DuringDeletes => {
                    let points = (0..DELETES)
                        .map(|i| mock_point(run.ledger.org, &asset, &format!("s-{i}")))
                        .collect();
                    deleting = Some(tokio::spawn(delete_points(run.client.clone(), points)));
                    held_at_kills.push(deletes_held(&run, &build).await);
                }
                Moment::AtTheSwap => {
                    while build.exists() {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
            run.serve.kill9().await;
            kills += 1;
            interrupted += usize::from(build.exists());
            restart_without(&mut run, &build, &format!("a kill ({moment:?})")).await;
            if let Some(deleting) = deleting {
                assert_eq!(deleting.await.unwrap(), DELETES, "every delete accepted");
            }
        }
    }
    let fault_over = Instant::now();
    assert!(
        held_at_kills.iter().any(|&held| held > 0.0),
        "no kill met deletes held by the store: {held_at_kills:?}"
    );
    // Every kill but the one at the swap meets a build that is under way.
    assert!(
        interrupted >= 1 + kills - cycles,
        "{interrupted} of {} stops interrupted a build",
        kills + 1
    );

    let mut outcome = run
        .finish("serve stopped during index builds", fault_over)
        .await;
    outcome.note(format!(
        "{cycles} bursts of {points} points; 1 SIGTERM (stopped in {:.2} s) and {kills} kills -9 \
         during index builds, {interrupted} of the {} builds unfinished; {DELETES} deletes \
         during a build each cycle, held by the store at the kill: {held_at_kills:?}",
        stopped_in.as_secs_f64(),
        kills + 1
    ));
    outcome.report_and_assert();
}
