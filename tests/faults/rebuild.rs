//! The vector store lost and rebuilt from the stream, with `serve` killed (SIGKILL) in the
//! middle of the rebuild: `heimdex index rebuild` run again watches the resumed build to its
//! end, and after the switch the store holds exactly the points it held before the loss (ids,
//! payloads, vectors).

use std::time::{Duration, Instant};

use heimdex_store::{StoreConfig, VectorStore};
use serde_json::Value;

use crate::common::{differences, snapshot};
use crate::harness::*;

const ADMIN: &str = "faults-admin-token";

async fn open_collection(
    data_dir: &std::path::Path,
    collection: &str,
) -> std::sync::Arc<dyn VectorStore> {
    heimdex_store::open(StoreConfig {
        backend: heimdex_store::Backend::Embedded {
            path: data_dir.join("qdrant"),
        },
        collection: collection.to_owned(),
        vector_size: 384,
    })
    .await
    .expect("open the store")
}

async fn admin_index(http: &reqwest::Client, base: &str) -> Value {
    http.get(format!("{base}/admin/index"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("GET /admin/index")
        .json()
        .await
        .expect("index state")
}

async fn heimdex_index(base: &str, args: &[&str]) -> String {
    let output = tokio::process::Command::new(heimdex_tests::heimdex_bin())
        .args(["index", "--url", base])
        .args(args)
        .env("HEIMDEX_ADMIN_TOKEN", ADMIN)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("heimdex index runs");
    let said = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "heimdex index {args:?}: {said}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    said
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_store_rebuilt_through_a_kill_9_comes_back_exactly() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    // Batches of one job: the replay takes long enough to be killed in the middle.
    let mut deployment = Deployment::start(
        dir.path(),
        &[
            ("HEIMDEX_ADMIN_TOKEN", ADMIN),
            ("HEIMDEX_WORKER_CONCURRENCY", "1"),
        ],
        Vec::new(),
    )
    .await;
    let (jobs, rate) = scale((1_500, 400.0), (10_000, 600.0));
    let accepted = submit_mock_jobs(&deployment.client, "rebuild", jobs, 32, rate).await;
    assert_eq!(accepted, jobs, "every job accepted");
    wait_terminal(&deployment.js, &deployment.ledger, Duration::from_secs(240)).await;
    let org = deployment.ledger.org;

    // The loss: the store's directory deleted while serve is down.
    deployment.serve.stop_cleanly().await;
    let before = {
        let store = open_embedded_store(&deployment.data_dir).await;
        snapshot(store.as_ref(), &[org]).await
    };
    assert_eq!(before.len(), jobs);
    std::fs::remove_dir_all(deployment.data_dir.join("qdrant")).unwrap();
    deployment.serve.start();
    let http = reqwest::Client::new();
    wait_ready(&http, &deployment.base, Duration::from_secs(60)).await;

    // The rebuild, killed with serve in the middle.
    let started = Instant::now();
    heimdex_index(&deployment.base, &["rebuild", "--no-wait"]).await;
    let mut replayed_at_kill = 0;
    while started.elapsed() < Duration::from_secs(120) {
        let state = admin_index(&http, &deployment.base).await;
        replayed_at_kill = state["building"]["replayed"].as_u64().unwrap_or(0);
        if replayed_at_kill > 0 {
            assert_eq!(
                state["building"]["phase"], "replaying",
                "killed mid-way: {state}"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(replayed_at_kill > 0, "the replay recorded progress");
    deployment.serve.kill9().await;
    let fault_over = Instant::now();
    deployment.serve.start();
    wait_ready(&http, &deployment.base, Duration::from_secs(60)).await;

    // Run again: it watches the resumed build (once the killed process's lease lapses) and
    // switches to it.
    let said = heimdex_index(&deployment.base, &["rebuild", "--switch"]).await;
    let rebuilt_in = started.elapsed();
    assert!(said.contains("watching it"), "{said}");
    assert!(said.contains("missing 0"), "{said}");
    let state = admin_index(&http, &deployment.base).await;
    let live = state["live"].as_str().unwrap().to_owned();
    assert_eq!(live, "embeddings-1", "{state}");

    let mut outcome = settle(
        "lost store + rebuild + kill -9",
        &deployment.ledger,
        &deployment.js,
        &deployment.watch,
        fault_over,
    )
    .await;
    deployment.serve.stop_cleanly().await;
    outcome.attach_logs(&[&deployment.serve]);
    let store = open_collection(&deployment.data_dir, &live).await;
    let after = snapshot(store.as_ref(), &[org]).await;
    let diff = differences(&before, &after);
    outcome.count_points(&[store]).await;
    outcome.note(format!(
        "{jobs} points lost with the store's dir; rebuild killed at {replayed_at_kill} jobs \
         replayed, resumed, switched {:.1} s after it began; after: {} points, {} missing, \
         {} extra, {} payloads and {} vectors differ",
        rebuilt_in.as_secs_f64(),
        after.len(),
        diff.missing,
        diff.extra,
        diff.payloads,
        diff.vectors
    ));
    deployment.nats.stop().await;
    assert_eq!(
        diff,
        crate::common::Differences::default(),
        "the store comes back exactly"
    );
    outcome.report_and_assert();
}
