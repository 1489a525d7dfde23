//! Documents that stay true to their source: a new version replaces the old one (new chunks
//! written, identical ones kept, stale ones deleted), a delete followed by identical content
//! brings it back, and writes and deletes of the same document or point end as the stream
//! orders them, whichever worker batch they land in.

use std::collections::BTreeSet;
use std::time::Duration;

use heimdex_tests::TestApp;
use serde_json::{Value, json};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

/// `n` sentences of exactly 8 whitespace tokens: with the mock model and `max_tokens: 8`,
/// one chunk each. `changed` replaces the words of sentence `changed`.
fn text(n: usize, changed: Option<usize>) -> String {
    (0..n)
        .map(|i| {
            if Some(i) == changed {
                format!("Sentence {i} was rewritten about oceans and tides.")
            } else {
                format!("Sentence {i} talks about planets and distant stars.")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn body(text: &str) -> Value {
    json!({"text": text, "model": "mock", "chunk": {"max_tokens": 8, "overlap": 0}})
}

async fn put(app: &TestApp, token: &str, asset: &str, text: &str) -> Value {
    let response = app
        .http
        .put(app.url(&format!("/documents/{asset}")))
        .bearer_auth(token)
        .json(&body(text))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    response.json().await.unwrap()
}

async fn finished(app: &TestApp, token: &str, accepted: &Value) -> Value {
    let job = app
        .wait_for_job(
            token,
            accepted["job_id"].as_str().unwrap(),
            "SUCCEEDED",
            WAIT,
        )
        .await;
    assert_eq!(job["status"], "SUCCEEDED", "{job}");
    job
}

fn point_ids(accepted: &Value) -> BTreeSet<String> {
    accepted["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["point_id"].as_str().unwrap().to_owned())
        .collect()
}

/// The asset's points as search sees them.
async fn searched(app: &TestApp, token: &str, asset: &str) -> BTreeSet<String> {
    app.search(
        token,
        &json!({"query": "sentence planets stars oceans", "model": "mock", "mode": "keyword",
                "limit": 100, "filter": {"asset_id": asset}}),
    )
    .await["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["point_id"].as_str().unwrap().to_owned())
        .collect()
}

/// The asset's points as `GET /documents/{asset}` shows them (empty on 404).
async fn got(app: &TestApp, token: &str, asset: &str) -> BTreeSet<String> {
    let response = app.get(token, &format!("/documents/{asset}")).await;
    if response.status() == 404 {
        return BTreeSet::new();
    }
    assert_eq!(response.status(), 200);
    let view: Value = response.json().await.unwrap();
    view["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["point_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn delete_finished(app: &TestApp, token: &str, path: &str) {
    let response = app.delete(token, path).await;
    assert_eq!(response.status(), 202, "{path}");
    let accepted: Value = response.json().await.unwrap();
    finished(app, token, &accepted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_sent_again_shorter_keeps_only_its_new_chunks() {
    let app = TestApp::spawn().await;
    let token = app.token(Uuid::new_v4());

    let v1 = put(&app, &token, "guide", &text(10, None)).await;
    assert_eq!(v1["chunks"].as_array().unwrap().len(), 10, "{v1}");
    let job = finished(&app, &token, &v1).await;
    assert_eq!(job["job_type"], "document");
    assert_eq!(job["result"]["written"], 10, "{job}");
    assert_eq!(job["result"]["deleted"], 0, "{job}");
    assert_eq!(searched(&app, &token, "guide").await, point_ids(&v1));

    // The same version again is the same job.
    let again = put(&app, &token, "guide", &text(10, None)).await;
    assert_eq!(again["job_id"], v1["job_id"]);
    assert_eq!(again["version"], v1["version"]);

    // Four chunks: the first three unchanged, the fourth rewritten.
    let v2 = put(&app, &token, "guide", &text(4, Some(3))).await;
    assert_eq!(v2["chunks"].as_array().unwrap().len(), 4, "{v2}");
    assert_ne!(v2["job_id"], v1["job_id"]);
    assert_ne!(v2["version"], v1["version"]);
    let job = finished(&app, &token, &v2).await;
    assert_eq!(job["result"]["kept"], 3, "{job}");
    assert_eq!(job["result"]["written"], 1, "{job}");
    assert_eq!(job["result"]["deleted"], 6, "{job}");

    let now = point_ids(&v2);
    assert_eq!(searched(&app, &token, "guide").await, now);
    assert_eq!(got(&app, &token, "guide").await, now);
    for stale in point_ids(&v1).difference(&now) {
        assert_eq!(
            app.get(&token, &format!("/vectors/{stale}")).await.status(),
            404
        );
    }
    let view: Value = app
        .get(&token, "/documents/guide")
        .await
        .json()
        .await
        .unwrap();
    let texts: Vec<&str> = view["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts.join(" "), text(4, Some(3)));

    // `POST /vectors/documents` is the same operation.
    let posted: Value = app
        .post_json(
            &token,
            "/vectors/documents",
            &json!({"asset_id": "guide", "text": text(4, Some(3)), "model": "mock",
                    "chunk": {"max_tokens": 8, "overlap": 0}}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(posted["job_id"], v2["job_id"]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_content_sent_after_a_delete_comes_back() {
    let app = TestApp::spawn().await;
    let token = app.token(Uuid::new_v4());

    // A document, through both delete routes.
    let v1 = put(&app, &token, "manual", &text(3, None)).await;
    finished(&app, &token, &v1).await;
    for delete_path in ["/documents/manual", "/assets/manual"] {
        delete_finished(&app, &token, delete_path).await;
        assert!(got(&app, &token, "manual").await.is_empty());
        assert!(searched(&app, &token, "manual").await.is_empty());
        let back = put(&app, &token, "manual", &text(3, None)).await;
        assert_eq!(back["version"], v1["version"]);
        assert_ne!(back["job_id"], v1["job_id"], "a new job after the delete");
        let job = finished(&app, &token, &back).await;
        assert_eq!(job["result"]["written"], 3, "{job}");
        assert_eq!(got(&app, &token, "manual").await, point_ids(&v1));
        assert_eq!(searched(&app, &token, "manual").await, point_ids(&v1));
    }

    // A single segment.
    let segment = json!({"asset_id": "faq", "segment_id": "q1", "model": "mock",
                         "text": "How do I reset my password?"});
    let first: Value = app
        .post_json(&token, "/vectors/embed", &segment)
        .await
        .json()
        .await
        .unwrap();
    finished(&app, &token, &first).await;
    let point = first["point_id"].as_str().unwrap();
    delete_finished(&app, &token, &format!("/vectors/{point}")).await;
    assert_eq!(
        app.get(&token, &format!("/vectors/{point}")).await.status(),
        404
    );
    let again: Value = app
        .post_json(&token, "/vectors/embed", &segment)
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(again["job_id"], first["job_id"]);
    finished(&app, &token, &again).await;
    assert_eq!(
        app.get(&token, &format!("/vectors/{point}")).await.status(),
        200
    );
    // Sent once more with no delete between: the same job, as before.
    let same: Value = app
        .post_json(&token, "/vectors/embed", &segment)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(same["job_id"], again["job_id"]);
    app.stop().await;
}

/// Every job its own batch (`HEIMDEX_WORKER_CONCURRENCY=1`) and four batches in flight: the
/// jobs queued before the worker starts reach the store in whatever order the batches finish,
/// unless something keeps them in stream order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_deletes_apply_in_stream_order_across_batches() {
    let mut app = TestApp::spawn_without_worker(&[("HEIMDEX_WORKER_CONCURRENCY", "1")]).await;
    let token = app.token(Uuid::new_v4());
    let mut jobs = Vec::new();

    // A document: two versions, a delete, a third version.
    for text in [text(10, None), text(4, Some(1))] {
        jobs.push(put(&app, &token, "ordered", &text).await);
    }
    let deleted: Value = app
        .delete(&token, "/documents/ordered")
        .await
        .json()
        .await
        .unwrap();
    jobs.push(deleted);
    let last = put(&app, &token, "ordered", &text(2, None)).await;
    jobs.push(last.clone());

    // A point: written, deleted, written with other text; another written then deleted.
    let embed = |segment: &str, text: &str| json!({"asset_id": "points", "segment_id": segment, "model": "mock", "text": text});
    let mut kept_point = String::new();
    for (segment, text) in [("kept", "first text"), ("gone", "doomed text")] {
        let accepted: Value = app
            .post_json(&token, "/vectors/embed", &embed(segment, text))
            .await
            .json()
            .await
            .unwrap();
        let point = accepted["point_id"].as_str().unwrap().to_owned();
        jobs.push(accepted);
        jobs.push(
            app.delete(&token, &format!("/vectors/{point}"))
                .await
                .json()
                .await
                .unwrap(),
        );
        if segment == "kept" {
            let accepted: Value = app
                .post_json(&token, "/vectors/embed", &embed(segment, "second text"))
                .await
                .json()
                .await
                .unwrap();
            jobs.push(accepted);
            kept_point = point;
        } else {
            jobs.push(json!({"gone": point}));
        }
    }

    app.start_worker().await;
    for accepted in jobs.iter().filter(|a| a.get("job_id").is_some()) {
        finished(&app, &token, accepted).await;
    }

    assert_eq!(got(&app, &token, "ordered").await, point_ids(&last));
    assert_eq!(searched(&app, &token, "ordered").await, point_ids(&last));
    let point: Value = app
        .get(&token, &format!("/vectors/{kept_point}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(point["payload"]["text"], "second text", "{point}");
    let gone = jobs.last().unwrap()["gone"].as_str().unwrap().to_owned();
    assert_eq!(
        app.get(&token, &format!("/vectors/{gone}")).await.status(),
        404
    );
    app.stop().await;
}
