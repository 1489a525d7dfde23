//! `kill -9` of the worker while documents are being replaced: every document, sent as a
//! 10-chunk version and then as a 4-chunk one, ends holding exactly the 4 chunks of its new
//! version (3 kept from the old one, 1 rewritten), with none of the 7 stale ones left, whatever
//! step of the replace (writes, then deletes of what the version lacks) each kill cut short.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

use heimdex_store::PointFilter;

use crate::harness::*;

/// `n` sentences of 8 whitespace tokens, one chunk each with the mock model and
/// `max_tokens: 8`; sentence `changed`, if any, has other words.
fn text(doc: usize, n: usize, changed: Option<usize>) -> String {
    (0..n)
        .map(|i| {
            if Some(i) == changed {
                format!("Document {doc} sentence {i} was rewritten about tides.")
            } else {
                format!("Document {doc} sentence {i} is about distant stars.")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `PUT /documents/{asset}` until it is accepted (the API may shed load): the accepted body.
async fn put(client: &Client, asset: &str, text: &str) -> Value {
    let body = json!({"text": text, "model": "mock", "chunk": {"max_tokens": 8, "overlap": 0}});
    for _ in 0..100 {
        let response = client
            .http
            .put(format!("{}/documents/{asset}", client.bases[0]))
            .bearer_auth(&client.token)
            .json(&body)
            .send()
            .await;
        match response {
            Ok(response) if response.status() == 202 => return response.json().await.unwrap(),
            Ok(response) => assert!(
                response.status().is_server_error() || response.status() == 429,
                "{asset}: {}",
                response.status()
            ),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{asset} was never accepted");
}

fn job_of(accepted: &Value) -> Uuid {
    accepted["job_id"].as_str().unwrap().parse().unwrap()
}

fn point_ids(accepted: &Value) -> BTreeSet<Uuid> {
    accepted["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["point_id"].as_str().unwrap().parse().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_kill_9_mid_replace_leaves_only_the_new_version() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let ack_wait = scale("5000", "30000");
    let mut split = Split::start(dir.path(), &[("NATS_WORKER_ACK_WAIT_MS", ack_wait)]).await;
    let org = split.ledger.org;
    let (docs, kills) = scale((40, 2), (200, 5));

    // Version 1 of every document: 10 chunks, indexed before any fault.
    for doc in 0..docs {
        let accepted = put(&split.client, &format!("doc-{doc}"), &text(doc, 10, None)).await;
        assert_eq!(point_ids(&accepted).len(), 10);
        split.ledger.accept(job_of(&accepted), Vec::new());
    }
    let (statuses, _) = wait_terminal(&split.js, &split.ledger, Duration::from_secs(120)).await;
    assert!(
        split
            .ledger
            .jobs()
            .iter()
            .all(|job| statuses.get(job).is_some_and(|s| s.status.is_terminal())),
        "version 1 indexed"
    );

    // Version 2, sent while the worker is killed again and again.
    let sending = tokio::spawn({
        let client = split.client.clone();
        async move {
            let mut sent = Vec::new();
            for doc in 0..docs {
                let asset = format!("doc-{doc}");
                let accepted = put(&client, &asset, &text(doc, 4, Some(3))).await;
                sent.push((asset, job_of(&accepted), point_ids(&accepted)));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            sent
        }
    });
    let run = Duration::from_millis(10) * docs as u32;
    for _ in 0..kills {
        tokio::time::sleep(run / (kills + 1)).await;
        split.worker.kill9().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        split.worker.start();
    }
    let fault_over = Instant::now();
    let sent = sending.await.unwrap();
    for (_, job, _) in &sent {
        split.ledger.accept(*job, Vec::new());
    }
    let (statuses, _) = wait_terminal(&split.js, &split.ledger, Duration::from_secs(300)).await;
    let recovery = fault_over.elapsed();
    for (asset, job, _) in &sent {
        let status = statuses.get(job).map(|s| s.status);
        assert_eq!(
            status,
            Some(heimdex_domain::jobs::Status::Succeeded),
            "{asset}: version 2 ({job})"
        );
    }

    // The store, read directly once the worker has stopped: each document is its version 2.
    split.worker.stop_cleanly().await;
    let store = open_embedded_store(&dir.path().join("worker")).await;
    let mut stale = 0;
    let mut wrong = Vec::new();
    for (asset, _, expected) in &sent {
        let filter = PointFilter {
            asset_id: Some(asset.clone()),
            ..Default::default()
        };
        let points = store.scroll_points(org, filter.clone()).await.unwrap();
        let ids: BTreeSet<Uuid> = points.iter().map(|p| p.id).collect();
        stale += ids.difference(expected).count();
        let counted = store.count(org, filter).await.unwrap();
        if &ids != expected || counted != 4 {
            wrong.push(format!(
                "{asset}: {counted} counted, scrolled {ids:?}, expected {expected:?}"
            ));
        }
    }
    // A row of the suite's table (see `Outcome::report_and_assert`): here every accepted job
    // succeeded, and "lost" counts chunks of the old version left behind.
    let line = format!(
        "| kill -9 worker mid-replace | {} | {} | 0 | {stale} | 0 | {:.1} s | none | {docs} documents \
         sent as 10 chunks, then 4 (3 kept, 1 rewritten, 7 deleted); {kills} kills during the \
         second versions; ack wait {ack_wait} ms |",
        2 * docs,
        2 * docs,
        recovery.as_secs_f64()
    );
    println!("RELIABILITY {line}");
    if let Ok(path) = std::env::var("HEIMDEX_FAULTS_REPORT") {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        writeln!(file, "{line}").unwrap();
    }
    assert!(wrong.is_empty(), "documents not at version 2: {wrong:#?}");
    split.api.stop_cleanly().await;
    split.projector.stop_cleanly().await;
    split.nats.stop().await;
}
