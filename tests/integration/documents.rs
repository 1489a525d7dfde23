//! Documents that stay true to their source: a new version replaces the old one (new chunks
//! written, identical ones kept, stale ones deleted), a delete followed by identical content
//! brings it back, and writes and deletes of the same document or point end as the stream
//! orders them, whichever worker batch they land in. `GET /documents` lists what the document
//! projection holds, a page at a time, and a rebuild from the stream reproduces it.

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

/// Every document `GET /documents` lists, walking pages of `limit`; also how many pages.
async fn listed(app: &TestApp, token: &str, limit: usize) -> (Vec<Value>, usize) {
    let mut documents = Vec::new();
    let mut cursor: Option<String> = None;
    for pages in 1.. {
        let path = match &cursor {
            Some(cursor) => format!("/documents?limit={limit}&cursor={cursor}"),
            None => format!("/documents?limit={limit}"),
        };
        let response = app.get(token, &path).await;
        assert_eq!(response.status(), 200, "{path}");
        let page: Value = response.json().await.unwrap();
        let held = page["documents"].as_array().unwrap();
        assert!(held.len() <= limit, "{page}");
        documents.extend(held.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return (documents, pages),
        }
    }
    unreachable!()
}

/// The listed document `asset` (panics unless listed exactly once).
async fn listed_one(app: &TestApp, token: &str, asset: &str) -> Option<Value> {
    let (documents, _) = listed(app, token, 100).await;
    let mut found = documents.into_iter().filter(|d| d["asset_id"] == asset);
    let one = found.next();
    assert!(found.next().is_none(), "{asset} listed twice");
    one
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
    assert_eq!(view["document"]["chunks"], 4, "{view}");
    assert_eq!(view["document"]["version"], v2["version"], "{view}");
    assert_eq!(view["document"]["state"], "indexed", "{view}");
    let listed = listed_one(&app, &token, "guide").await.expect("listed");
    assert_eq!(listed["chunks"], 4, "{listed}");
    assert_eq!(listed["version"], v2["version"], "{listed}");
    assert_eq!(listed["state"], "indexed", "{listed}");
    assert_eq!(listed["job_id"], v2["job_id"], "{listed}");
    assert_eq!(listed["source"], "text", "{listed}");
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
        assert_eq!(listed_one(&app, &token, "manual").await, None);
        assert!(searched(&app, &token, "manual").await.is_empty());
        let back = put(&app, &token, "manual", &text(3, None)).await;
        assert_eq!(back["version"], v1["version"]);
        assert_ne!(back["job_id"], v1["job_id"], "a new job after the delete");
        let job = finished(&app, &token, &back).await;
        assert_eq!(job["result"]["written"], 3, "{job}");
        assert_eq!(got(&app, &token, "manual").await, point_ids(&v1));
        assert_eq!(searched(&app, &token, "manual").await, point_ids(&v1));
        let listed = listed_one(&app, &token, "manual")
            .await
            .expect("listed again");
        assert_eq!(listed["state"], "indexed", "{listed}");
        assert_eq!(listed["job_id"], back["job_id"], "{listed}");
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

/// 25 documents, listed 10 at a time: three pages, each document once, with its state, chunk
/// count and metadata. A document sent again (after the others were recorded) moves to the end, one deleted leaves the listing,
/// another organization sees none of them, and a rebuild of the projections from the stream
/// gives the same records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_are_listed_a_page_at_a_time_and_rebuilt_from_the_stream() {
    let app = TestApp::spawn().await;
    let org = Uuid::new_v4();
    let token = app.token(org);

    let mut accepted = Vec::new();
    for n in 0..25 {
        let mut body = body(&text(1 + n % 3, None));
        body["metadata"] = json!({"team": if n % 2 == 0 { "red" } else { "blue" }, "n": n});
        let response = app
            .http
            .put(app.url(&format!("/documents/doc-{n:02}")))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        accepted.push(response.json::<Value>().await.unwrap());
    }
    for a in &accepted {
        finished(&app, &token, a).await;
    }

    let (mut documents, pages) = listed(&app, &token, 10).await;
    assert_eq!(pages, 3);
    // Documents recorded in one projector batch are listed in the order their writes
    // finished, so only the set is fixed here.
    documents.sort_by_key(|d| d["asset_id"].as_str().unwrap().to_owned());
    let assets: Vec<&str> = documents
        .iter()
        .map(|d| d["asset_id"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..25).map(|n| format!("doc-{n:02}")).collect();
    assert_eq!(assets, expected, "each document once");
    for (n, d) in documents.iter().enumerate() {
        assert_eq!(d["state"], "indexed", "{d}");
        assert_eq!(d["chunks"], 1 + n % 3, "{d}");
        assert_eq!(d["metadata"]["n"], n, "{d}");
        assert_eq!(d["version"], accepted[n]["version"], "{d}");
        assert_eq!(d["model"], "mock", "{d}");
    }

    // Sent again (changed): listed last, with the new version. Deleted: not listed.
    let v2 = put(&app, &token, "doc-03", &text(5, Some(2))).await;
    finished(&app, &token, &v2).await;
    delete_finished(&app, &token, "/documents/doc-07").await;
    let (documents, _) = listed(&app, &token, 10).await;
    assert_eq!(documents.len(), 24);
    let last = documents.last().unwrap();
    assert_eq!(
        (&last["asset_id"], &last["chunks"]),
        (&json!("doc-03"), &json!(5))
    );
    assert_eq!(last["version"], v2["version"]);
    assert!(documents.iter().all(|d| d["asset_id"] != "doc-07"));
    assert_eq!(
        documents
            .iter()
            .filter(|d| d["asset_id"] == "doc-03")
            .count(),
        1
    );

    // Another organization's listing is its own.
    let stranger = app.token(Uuid::new_v4());
    let (theirs, _) = listed(&app, &stranger, 10).await;
    assert!(theirs.is_empty(), "{theirs:?}");
    assert_eq!(app.get(&stranger, "/documents/doc-03").await.status(), 404);

    // A cursor this server did not issue is refused.
    let response = app.get(&token, "/documents?cursor=bm9wZQ").await;
    assert_eq!(response.status(), 400);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "invalid_cursor");

    // The projections rebuilt from the stream equal the live ones.
    let js = async_nats::jetstream::new(async_nats::connect(app.nats.url()).await.unwrap());
    let defs = heimdex_event_store::jetstream::Definitions::load(&app.settings.nats).unwrap();
    let report = heimdex_projector::rebuild::rebuild(&js, &defs, "REBUILT")
        .await
        .unwrap();
    assert_eq!(report.documents, 25, "deleted ones keep their record");
    let live = js.get_key_value("HEIMDEX_DOCUMENTS").await.unwrap();
    let rebuilt = js.get_key_value(&report.documents_bucket).await.unwrap();
    assert_eq!(
        heimdex_projector::rebuild::compare_documents(&live, &rebuilt)
            .await
            .unwrap(),
        Vec::<String>::new()
    );
    app.stop().await;
}
