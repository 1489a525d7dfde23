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

const WORDS: [&str; 12] = [
    "volcano",
    "harbor",
    "compiler",
    "orchard",
    "glacier",
    "violin",
    "satellite",
    "bakery",
    "cathedral",
    "reef",
    "tournament",
    "telescope",
];

/// A model change under constant search and write load, through the processes an operator
/// runs: texts sent with the default model, `heimdex index rebuild --model
/// paraphrase-minilm-l3-v2`, `switch`, `rollback`. No search fails or comes back empty, the
/// searches after the switch carry the new model's version and those after the rollback the
/// old one, and every write made meanwhile is in both collections.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_model_change_under_load_switches_and_rolls_back_without_a_gap() {
    use futures::StreamExt as _;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    const L3: &str = "paraphrase-minilm-l3-v2";
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let mut deployment =
        Deployment::start(dir.path(), &[("HEIMDEX_ADMIN_TOKEN", ADMIN)], Vec::new()).await;
    let org = deployment.ledger.org;
    let texts = scale(300, 10_000);
    let text = |i: usize| {
        format!(
            "note {i} about a {} near the {}",
            WORDS[i % WORDS.len()],
            WORDS[(i / WORDS.len()) % WORDS.len()]
        )
    };
    let client = Arc::new(deployment.client.clone());
    let accepted = futures::stream::iter(0..texts)
        .map(|i| {
            let (client, body) = (
                client.clone(),
                serde_json::json!({"asset_id": "seed", "segment_id": format!("s-{i}"), "text": text(i)}),
            );
            async move {
                let answer = client.post_until_accepted(i, "/vectors/embed", &body).await?;
                let job: uuid::Uuid = answer["job_id"].as_str()?.parse().ok()?;
                client.ledger.accept(job, Vec::new());
                Some(job)
            }
        })
        .buffer_unordered(16)
        .filter_map(|job| async move { job })
        .count()
        .await;
    assert_eq!(accepted, texts, "every text accepted");
    wait_terminal(&deployment.js, &deployment.ledger, Duration::from_secs(600)).await;

    // The load: searches naming no model (4 a second) and writes (4 a second).
    let stop = Arc::new(AtomicBool::new(false));
    let searching = tokio::spawn({
        let (client, base, stop) = (client.clone(), deployment.base.clone(), stop.clone());
        async move {
            let mut seen: Vec<(Instant, Result<Value, String>)> = Vec::new();
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let body = serde_json::json!({"query": WORDS[i % WORDS.len()], "limit": 5});
                let began = Instant::now();
                let answer = match client
                    .http
                    .post(format!("{base}/vectors/search"))
                    .bearer_auth(&client.token)
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(response) if response.status() == 200 => {
                        response.json().await.map_err(|err| err.to_string())
                    }
                    Ok(response) => Err(format!("{}", response.status())),
                    Err(err) => Err(err.to_string()),
                };
                seen.push((began, answer));
                i += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            seen
        }
    });
    let writing = tokio::spawn({
        let (client, stop) = (client.clone(), stop.clone());
        async move {
            let mut written: Vec<(uuid::Uuid, String)> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let segment = format!("w-{}", written.len());
                let body = serde_json::json!({"asset_id": "meanwhile", "segment_id": segment,
                                              "text": format!("written meanwhile: {segment}")});
                let answer = client
                    .post_until_accepted(written.len(), "/vectors/embed", &body)
                    .await
                    .expect("a write is accepted");
                let job: uuid::Uuid = answer["job_id"].as_str().unwrap().parse().unwrap();
                client.ledger.accept(job, Vec::new());
                written.push((job, segment));
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            written
        }
    });

    let started = Instant::now();
    let said = heimdex_index(&deployment.base, &["rebuild", "--model", L3]).await;
    let built_in = started.elapsed();
    assert!(said.contains("extra 0"), "{said}");
    let requested_switch = Instant::now();
    heimdex_index(&deployment.base, &["switch"]).await;
    let switched = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let requested_rollback = Instant::now();
    heimdex_index(&deployment.base, &["rollback"]).await;
    let rolled_back = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    let seen = searching.await.unwrap();
    let written = writing.await.unwrap();
    let fault_over = Instant::now();

    // Every search answered, none empty, one model each; the model by phase (a process takes
    // up the state's change within a second).
    let margin = Duration::from_secs(1);
    let (mut failed, mut empty, mut wrong) = (Vec::new(), 0usize, Vec::new());
    let mut versions: [std::collections::BTreeSet<String>; 3] = Default::default();
    for (began, answer) in &seen {
        let body = match answer {
            Ok(body) => body,
            Err(err) => {
                failed.push(err.clone());
                continue;
            }
        };
        let results = body["results"].as_array().cloned().unwrap_or_default();
        if results.is_empty() {
            empty += 1;
        }
        let (model, ver) = (
            body["model"].as_str().unwrap_or(""),
            body["model_ver"].as_str().unwrap_or(""),
        );
        if results.iter().any(|hit| hit["payload"]["model_ver"] != ver) {
            wrong.push(body.clone());
        }
        let phase = if *began < requested_switch {
            0
        } else if *began >= switched + margin && *began < requested_rollback {
            1
        } else if *began >= rolled_back + margin {
            2
        } else {
            continue;
        };
        versions[phase].insert(format!("{model} {ver}"));
    }

    // Every write made meanwhile, in both collections.
    let http = reqwest::Client::new();
    for (job, segment) in &written {
        let job = heimdex_tests::wait_for_job(
            &http,
            &deployment.base,
            &client.token,
            &job.to_string(),
            "SUCCEEDED",
            Duration::from_secs(120),
        )
        .await;
        assert_eq!(job["status"], "SUCCEEDED", "write {segment}: {job}");
    }
    let l3_ver = versions[1]
        .iter()
        .next()
        .and_then(|v| v.strip_prefix(&format!("{L3} ")))
        .unwrap_or_default()
        .to_owned();
    let mut outcome = settle(
        "model change under load (`rebuild::a_model_change…`)",
        &deployment.ledger,
        &deployment.js,
        &deployment.watch,
        fault_over,
    )
    .await;
    // The collection left is given what succeeded in the live one once the indexer has
    // followed the log that far.
    heimdex_tests::eventually(Duration::from_secs(60), || async {
        let state = admin_index(&http, &deployment.base).await;
        (state["followed"].as_u64()? >= state["log_seq"].as_u64()?).then_some(())
    })
    .await
    .expect("the indexer follows the log to its end");
    deployment.serve.stop_cleanly().await;
    outcome.attach_logs(&[&deployment.serve]);
    let (old, new) = (
        open_collection(&deployment.data_dir, "embeddings").await,
        open_collection(&deployment.data_dir, "embeddings-1").await,
    );
    // In the new collection by paraphrase-MiniLM; in the old one by the model it was sent
    // with (resolved before the switch, or after it), asked by segment.
    let mut missing = Vec::new();
    for (_, segment) in &written {
        let id = heimdex_domain::ids::point_id(org, "meanwhile", segment, L3, &l3_ver);
        if new.get(org, id, false).await.unwrap().is_none() {
            missing.push(format!("{segment} in embeddings-1"));
        }
        let filter = heimdex_store::PointFilter {
            asset_id: Some("meanwhile".into()),
            segment_id: Some(segment.clone()),
            ..heimdex_store::PointFilter::default()
        };
        if old.count(org, filter).await.unwrap() != 1 {
            missing.push(format!("{segment} in embeddings"));
        }
    }
    outcome.note(format!(
        "{texts} texts by minilm-l6-v2, rebuilt by {L3} in {:.1} s under load, switched, \
         rolled back; {} searches: {} failed, {empty} empty, {} mixing models, by phase \
         {:?}; {} writes meanwhile: {} missing from either collection",
        built_in.as_secs_f64(),
        seen.len(),
        failed.len(),
        wrong.len(),
        versions,
        written.len(),
        missing.len()
    ));
    deployment.nats.stop().await;
    assert!(failed.is_empty(), "searches failed: {failed:?}");
    assert_eq!(empty, 0, "no search came back empty");
    assert!(wrong.is_empty(), "searches mixing models: {wrong:?}");
    assert_eq!(
        versions[0].len(),
        1,
        "one model before the switch: {versions:?}"
    );
    assert_eq!(
        versions[0], versions[2],
        "the rollback brings the old model back: {versions:?}"
    );
    assert_eq!(
        versions[1].len(),
        1,
        "one model after the switch: {versions:?}"
    );
    assert!(
        versions[1].iter().all(|v| v.starts_with(L3)),
        "{versions:?}"
    );
    assert!(written.len() > 10, "steady writes: {}", written.len());
    assert!(missing.is_empty(), "writes missing: {missing:?}");
    outcome.report_and_assert();
}
