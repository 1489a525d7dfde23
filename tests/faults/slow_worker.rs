//! Workers slower than the ack wait: two `heimdex worker` processes embed long texts with the
//! real model while the consumer's ack wait is 1 s, far shorter than a job spends queued for and
//! inside a forward pass. The workers' progress acks must keep every message theirs: no job is
//! delivered twice, and no point lands in both workers' stores. Each worker holds at most 64
//! messages (`HEIMDEX_WORKER_CONCURRENCY=16`, four batches), so that even the reduced CI run
//! has many more jobs than the workers hold, the case that once let queued messages expire.

use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn progress_acks_keep_slow_jobs_from_being_redelivered() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let ack_wait = "1000";
    let settings = [
        ("NATS_WORKER_ACK_WAIT_MS", ack_wait),
        ("HEIMDEX_WORKER_CONCURRENCY", "16"),
    ];
    let split = Split::start(root, &settings).await;
    let mut second_env = heimdex_env(&root.join("worker-2"), Some(split.nats.url()));
    for (k, v) in settings {
        set_env(&mut second_env, k, v);
    }
    let mut second = Heimdex::spawn("worker-2", &["worker"], second_env, root);

    // Segments of ~200 words: near the model's 256-token limit, the slowest kind.
    let (calls, per_call) = scale((4, 50), (10, 100));
    let words = [
        "ledger", "harbour", "violet", "engine", "quartz", "meadow", "signal", "copper", "lantern",
        "orbit", "thistle", "canyon",
    ];
    let text = |seed: usize| -> String {
        (0..200)
            .map(|w| words[(seed * 7 + w * 5 + w / 3) % words.len()])
            .collect::<Vec<_>>()
            .join(" ")
    };
    let started = Instant::now();
    let answers: Vec<serde_json::Value> = futures::stream::iter(0..calls)
        .map(|call| {
            let client = split.client.clone();
            let segments: Vec<serde_json::Value> = (0..per_call)
                .map(|i| {
                    serde_json::json!({"segment_id": format!("c{call}-s{i}"), "text": text(call * per_call + i)})
                })
                .collect();
            async move {
                client
                    .post_until_accepted(
                        call,
                        "/vectors/embed/batch",
                        &serde_json::json!({"asset_id": "slow", "segments": segments}),
                    )
                    .await
                    .expect("accepted")
            }
        })
        .buffer_unordered(calls)
        .collect()
        .await;
    for answer in &answers {
        let model_ver = answer["model_ver"].as_str().unwrap();
        for job in answer["jobs"].as_array().unwrap() {
            let segment = job["segment_id"].as_str().unwrap();
            split.ledger.accept(
                job["job_id"].as_str().unwrap().parse().unwrap(),
                vec![heimdex_domain::ids::point_id(
                    split.ledger.org,
                    "slow",
                    segment,
                    "minilm-l6-v2",
                    model_ver,
                )],
            );
        }
    }
    let (statuses, _) = wait_terminal(&split.js, &split.ledger, Duration::from_secs(600)).await;
    let jobs = calls * per_call;
    let redelivered = statuses.values().filter(|s| s.attempts != 1).count();
    let events = event_tally(&split.js, split.ledger.org).await;
    let started_twice = events
        .values()
        .filter(|kinds| kinds.get("started").copied().unwrap_or(0) != 1)
        .count();

    let worker_dir = root.join("worker-2");
    second.stop_cleanly().await;
    let second_store = open_embedded_store(&worker_dir).await;
    let mut outcome = split
        .finish_with("slow worker vs ack wait", started, &[second_store])
        .await;
    outcome.attach_logs(&[&second]);
    outcome.note(format!(
        "{jobs} jobs of ~200 words on 2 workers, ack wait {ack_wait} ms; all done in {:.1} s \
         ({:.0} jobs/s, so each job was in a worker's hands many ack waits long); {redelivered} \
         jobs with more than one attempt, {started_twice} with more than one started event",
        started.elapsed().as_secs_f64(),
        jobs as f64 / started.elapsed().as_secs_f64()
    ));
    assert_eq!(redelivered, 0, "no job delivered twice");
    assert_eq!(started_twice, 0, "no job started twice");
    outcome.report_and_assert();
}
